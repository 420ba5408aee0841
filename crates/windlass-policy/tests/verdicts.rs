//! One situation, one verdict: every guard (breaker, bulkhead, rate limiter, concurrency
//! limiter), alone or inside a pipeline, refuses the same situation the same way (the rules
//! are in `windlass_policy::guard`).
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::time::Instant;
use windlass_policy::{
    Bulkhead, CircuitBreaker, ConcurrencyLimiter, Context, Guard, LimitAlgorithm, Pipeline,
    PolicyError, PolicyExt, RateLimiter,
};
use windlass_test_support::ms;

type Out = Result<(), PolicyError<&'static str>>;

/// A fresh guard of each kind, each with one free admission.
struct Guards {
    breaker: CircuitBreaker,
    bulkhead: Bulkhead,
    rate: RateLimiter,
    limiter: ConcurrencyLimiter,
}

fn guards(bulkhead_wait: Duration, rate_wait: Duration) -> Guards {
    Guards {
        breaker: CircuitBreaker::builder().build().unwrap(),
        bulkhead: Bulkhead::builder()
            .max_concurrent(1)
            .max_queued(4)
            .max_wait(bulkhead_wait)
            .build()
            .unwrap(),
        rate: RateLimiter::builder()
            .every(Duration::from_secs(1))
            .max_wait(rate_wait)
            .build()
            .unwrap(),
        limiter: ConcurrencyLimiter::builder()
            .algorithm(LimitAlgorithm::Fixed(1))
            .build()
            .unwrap(),
    }
}

/// Calls through `policy` from `cx`, counting the operation's runs.
async fn call<P: windlass_policy::Policy<(), &'static str>>(
    policy: &P,
    cx: Context,
    runs: &AtomicU32,
) -> Out {
    policy
        .call_in(cx, |_| async {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .await
}

fn alone_and_piped(g: &Guards) -> Vec<(&'static str, Pipeline<(), &'static str>)> {
    let b = || Pipeline::<(), &'static str>::builder();
    vec![
        ("breaker", b().breaker(g.breaker.clone()).build()),
        ("bulkhead", b().bulkhead(g.bulkhead.clone()).build()),
        ("rate limiter", b().rate_limiter(g.rate.clone()).build()),
        ("limiter", b().concurrency(g.limiter.clone()).build()),
    ]
}

#[tokio::test(start_paused = true)]
async fn a_passed_deadline_gets_deadline_exceeded_from_every_guard_and_takes_nothing() {
    let g = guards(Duration::from_secs(1), Duration::from_secs(1));
    let runs = AtomicU32::new(0);
    let now = Instant::now();
    let late = Context::new().with_deadline(now);
    let outs = [
        ("breaker", call(&g.breaker, late, &runs).await),
        ("bulkhead", call(&g.bulkhead, late, &runs).await),
        ("rate limiter", call(&g.rate, late, &runs).await),
        ("limiter", call(&g.limiter, late, &runs).await),
    ];
    for (name, p) in alone_and_piped(&g) {
        let out = call(&p, late, &runs).await;
        assert!(
            matches!(out, Err(PolicyError::DeadlineExceeded)),
            "{name} in a pipeline: {out:?}"
        );
    }
    for (name, out) in outs {
        assert!(
            matches!(out, Err(PolicyError::DeadlineExceeded)),
            "{name} alone: {out:?}"
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0, "no refused work ran");
    // Nothing was taken: each guard still has its one admission.
    assert_eq!(g.bulkhead.available(), 1);
    assert_eq!(g.limiter.in_flight(), 0);
    assert!(
        g.rate.try_acquire().is_ok(),
        "the rate permit was not spent"
    );
    assert!(g.breaker.try_acquire().is_ok());
}

/// Occupies each waiting guard (bulkhead slot held, rate permit spent).
async fn occupy(g: &Guards) -> windlass_policy::BulkheadPermit<'_> {
    g.rate.try_acquire().unwrap();
    g.bulkhead.admit(&mut Context::new()).await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_deadline_nearer_than_the_guards_own_wait_gets_deadline_exceeded() {
    // Own limits (5 s) are later than the deadline (100 ms) and than the next rate permit
    // (1 s): the deadline ends the wait.
    let g = guards(Duration::from_secs(5), Duration::from_secs(5));
    let _held = occupy(&g).await;
    let runs = AtomicU32::new(0);
    let pipes = alone_and_piped(&g);
    for (name, policy) in [
        ("bulkhead alone", &pipes[1].1),
        ("rate limiter alone", &pipes[2].1),
    ] {
        let cx = Context::new().with_deadline(Instant::now() + ms(100));
        let out = call(policy, cx, &runs).await;
        assert!(
            matches!(out, Err(PolicyError::DeadlineExceeded)),
            "{name}: {out:?}"
        );
    }
    for (name, out) in [
        (
            "bulkhead",
            call(
                &g.bulkhead,
                Context::new().with_deadline(Instant::now() + ms(100)),
                &runs,
            )
            .await,
        ),
        (
            "rate limiter",
            call(
                &g.rate,
                Context::new().with_deadline(Instant::now() + ms(100)),
                &runs,
            )
            .await,
        ),
    ] {
        assert!(
            matches!(out, Err(PolicyError::DeadlineExceeded)),
            "{name}: {out:?}"
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn the_guards_own_wait_nearer_than_the_deadline_gets_its_rejection() {
    // Own limits (50 ms) are earlier than the deadline (10 s): the guard's own verdict.
    let g = guards(ms(50), ms(50));
    let _held = occupy(&g).await;
    let runs = AtomicU32::new(0);
    let far = || Context::new().with_deadline(Instant::now() + Duration::from_secs(10));
    let pipes = alone_and_piped(&g);
    let outs = [
        ("bulkhead alone", call(&g.bulkhead, far(), &runs).await),
        ("bulkhead piped", call(&pipes[1].1, far(), &runs).await),
        ("rate alone", call(&g.rate, far(), &runs).await),
        ("rate piped", call(&pipes[2].1, far(), &runs).await),
    ];
    for (name, out) in &outs[..2] {
        assert_eq!(
            out.as_ref().map_err(PolicyError::kind),
            Err("bulkhead_timeout"),
            "{name}"
        );
    }
    for (name, out) in &outs[2..] {
        assert_eq!(
            out.as_ref().map_err(PolicyError::kind),
            Err("rate_limited"),
            "{name}"
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn a_guard_that_does_not_wait_rejects_whatever_the_deadline() {
    let g = guards(ms(50), ms(50));
    g.breaker.force_open();
    let _slot = g.limiter.try_acquire(Default::default()).unwrap();
    let runs = AtomicU32::new(0);
    let pipes = alone_and_piped(&g);
    for cx in [
        Context::new(),
        Context::new().with_deadline(Instant::now() + Duration::from_secs(10)),
    ] {
        let outs = [
            (
                "breaker alone",
                call(&g.breaker, cx, &runs).await,
                "circuit_open",
            ),
            (
                "breaker piped",
                call(&pipes[0].1, cx, &runs).await,
                "circuit_open",
            ),
            ("limiter alone", call(&g.limiter, cx, &runs).await, "shed"),
            ("limiter piped", call(&pipes[3].1, cx, &runs).await, "shed"),
        ];
        for (name, out, kind) in outs {
            assert_eq!(out.as_ref().map_err(PolicyError::kind), Err(kind), "{name}");
        }
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}
