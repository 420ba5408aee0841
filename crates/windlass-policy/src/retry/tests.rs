use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::error::Rejection;
use crate::policy::PolicyExt;
use windlass_test_support::ms;

fn constant(attempts: u32, delay: Duration) -> Retry {
    Retry::builder()
        .max_attempts(attempts)
        .backoff(Backoff::Constant(delay))
        .jitter(Jitter::None)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn succeeds_after_transient_failures() {
    let calls = AtomicU32::new(0);
    let r = constant(5, ms(10));
    let out = r
        .call(|| async {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            if n < 3 { Err("flaky") } else { Ok(n) }
        })
        .await;
    assert_eq!(out.unwrap(), 3);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn permanent_error_returned_unwrapped_after_one_attempt() {
    let calls = AtomicU32::new(0);
    let r = constant(5, ms(10));
    let start = Instant::now();
    let out: Result<(), _> = r
        .call_with(
            Context::new(),
            &|_: &&str| ErrorClass::Permanent,
            |_| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err("bad request")
            },
        )
        .await;
    match out {
        Err(PolicyError::Operation { error, class }) => {
            assert_eq!(error, "bad request");
            assert_eq!(class, ErrorClass::Permanent);
        }
        other => panic!("expected the operation error, got {other:?}"),
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "no sleep for a permanent error"
    );
}

#[tokio::test(start_paused = true)]
async fn exhaustion_reports_attempts_and_never_sleeps_after_last() {
    let r = constant(4, ms(100));
    let start = Instant::now();
    let out: Result<(), _> = r.call(|| async { Err("down") }).await;
    match out {
        Err(PolicyError::RetriesExhausted {
            attempts,
            reason,
            last,
        }) => {
            assert_eq!(attempts, 4);
            assert_eq!(reason, GaveUp::MaxAttempts);
            assert_eq!(last.operation_error(), Some(&"down"));
        }
        other => panic!("{other:?}"),
    }
    // Three sleeps between four attempts, none after the last.
    assert_eq!(start.elapsed(), ms(300));
}

#[tokio::test(start_paused = true)]
async fn deadline_stops_before_a_backoff_that_would_overrun() {
    let calls = AtomicU32::new(0);
    let r = Retry::builder()
        .max_attempts(100)
        .backoff(Backoff::exponential(ms(100)))
        .jitter(Jitter::None)
        .deadline(ms(1000))
        .build()
        .unwrap();
    let start = Instant::now();
    let out: Result<(), _> = r
        .call(|| async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err("down")
        })
        .await;
    // Waits 100, 200, 400 (t=700); the next 800 would end at 1500 > 1000: give up at 700.
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert_eq!(start.elapsed(), ms(700));
    assert!(matches!(
        out,
        Err(PolicyError::RetriesExhausted {
            reason: GaveUp::Deadline,
            attempts: 4,
            ..
        })
    ));
}

#[tokio::test(start_paused = true)]
async fn deadline_cuts_a_hung_attempt() {
    let r = Retry::builder().deadline(ms(500)).build().unwrap();
    let start = Instant::now();
    let out: Result<(), PolicyError<&str>> = r.call(std::future::pending).await;
    assert!(matches!(out, Err(PolicyError::DeadlineExceeded)), "{out:?}");
    assert_eq!(start.elapsed(), ms(500));
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured() {
    let r = constant(3, ms(10));
    let times = Mutex::new(Vec::new());
    let start = Instant::now();
    let out = r
        .call_with(
            Context::new(),
            &|_: &&str| ErrorClass::RetryAfter(Duration::from_secs(2)),
            |_| async {
                let mut t = times.lock().unwrap();
                t.push(start.elapsed());
                if t.len() < 2 { Err("429") } else { Ok(()) }
            },
        )
        .await;
    assert!(out.is_ok());
    assert_eq!(*times.lock().unwrap(), vec![ms(0), ms(2000)]);
}

#[tokio::test(start_paused = true)]
async fn budget_stops_a_retry_storm() {
    let budget = Arc::new(RetryBudget::new(Duration::from_secs(10), 0, 0.5).unwrap());
    let r = Retry::builder()
        .max_attempts(10)
        .backoff(Backoff::Constant(ms(1)))
        .jitter(Jitter::None)
        .budget(budget.clone())
        .build()
        .unwrap();
    let calls = AtomicU32::new(0);
    let mut budget_stops = 0;
    for _ in 0..10 {
        let out: Result<(), _> = r
            .call(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err("down")
            })
            .await;
        if matches!(
            out,
            Err(PolicyError::RetriesExhausted {
                reason: GaveUp::Budget,
                ..
            })
        ) {
            budget_stops += 1;
        }
    }
    // 10 calls deposit 10; at 50% that buys 5 retries in all: 15 attempts, not 100.
    assert_eq!(calls.load(Ordering::SeqCst), 15);
    assert_eq!(budget_stops, 10);
}

#[tokio::test(start_paused = true)]
async fn hooks_see_each_retry() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let r = Retry::builder()
        .name("hooked")
        .max_attempts(3)
        .backoff(Backoff::Linear {
            initial: ms(10),
            step: ms(10),
        })
        .jitter(Jitter::None)
        .on_retry(move |e| {
            seen2
                .lock()
                .unwrap()
                .push((e.attempt, e.delay, e.policy.to_string()))
        })
        .build()
        .unwrap();
    let _ = r.call(|| async { Err::<(), _>("x") }).await;
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            (1, ms(10), "hooked".to_string()),
            (2, ms(20), "hooked".to_string())
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_the_call_cancels_the_backoff_and_never_retries() {
    let calls = Arc::new(AtomicU32::new(0));
    let r = constant(5, ms(1000));
    let c = calls.clone();
    let fut = async move {
        r.call(|| {
            let c = c.clone();
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>("x")
            }
        })
        .await
    };
    // Run until the first attempt failed and the policy is sleeping, then drop the call.
    let outcome = tokio::time::timeout(ms(500), fut).await;
    assert!(outcome.is_err(), "still backing off");
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "no attempt after the drop");
}

#[tokio::test(start_paused = true)]
async fn cancelled_errors_are_never_retried() {
    let calls = AtomicU32::new(0);
    let r = constant(5, ms(1));
    let out: Result<(), _> = r
        .call_with(
            Context::new(),
            &|_: &&str| ErrorClass::Cancelled,
            |_| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err("cancelled")
            },
        )
        .await;
    assert!(matches!(
        out,
        Err(PolicyError::Operation {
            class: ErrorClass::Cancelled,
            ..
        })
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn non_idempotent_work_retried_only_when_rejected_locally() {
    let r = constant(3, ms(1));
    let cx = Context::new().with_idempotent(false);
    let calls = AtomicU32::new(0);
    let out: Result<(), PolicyError<&str>> = r
        .execute(cx, &|_| async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(PolicyError::operation("sent", ErrorClass::Transient))
        })
        .await;
    assert!(matches!(
        out,
        Err(PolicyError::RetriesExhausted {
            reason: GaveUp::NotIdempotent,
            attempts: 1,
            ..
        })
    ));
    let rejected = AtomicU32::new(0);
    let out: Result<(), PolicyError<&str>> = r
        .execute(cx, &|_| async {
            rejected.fetch_add(1, Ordering::SeqCst);
            Err(PolicyError::Rejected(Rejection::BulkheadFull {
                name: "b".into(),
                max_concurrent: 1,
                max_queued: 0,
            }))
        })
        .await;
    assert!(out.is_err());
    assert_eq!(
        rejected.load(Ordering::SeqCst),
        3,
        "local rejections are safe to retry"
    );
}

#[tokio::test(start_paused = true)]
async fn attempt_numbers_reach_the_operation() {
    let seen = Mutex::new(Vec::new());
    let _ = constant(3, ms(1))
        .call_with(Context::new(), &crate::AllTransient, |cx| {
            seen.lock().unwrap().push(cx.attempt());
            async { Err::<(), _>("x") }
        })
        .await;
    assert_eq!(*seen.lock().unwrap(), vec![1, 2, 3]);
}

#[test]
fn invalid_configs_are_rejected_with_a_clear_error() {
    let e = Retry::builder().max_attempts(0).build().unwrap_err();
    assert_eq!(e.field(), "max_attempts");
    assert!(e.to_string().contains("at least 1"), "{e}");
    let e = Retry::builder()
        .jitter(Jitter::Proportional(1.5))
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "jitter.factor");
    let e = Retry::builder()
        .backoff(Backoff::Exponential {
            initial: ms(1),
            factor: 0.5,
        })
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "backoff.factor");
    let e = Retry::builder()
        .max_delay(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "max_delay");
    let e = Retry::builder()
        .deadline(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "deadline");
}

#[tokio::test(start_paused = true)]
async fn snapshot_counts_retries() {
    let r = Retry::builder()
        .name("snap-retry")
        .backoff(Backoff::Constant(ms(1)))
        .build()
        .unwrap();
    let _ = r.call(|| async { Err::<(), _>("x") }).await;
    let snap = crate::observe::find("snap-retry");
    assert_eq!(
        snap[0].state,
        crate::observe::PolicyState::Retry {
            calls: 1,
            retries: 2,
            gave_up: 1
        }
    );
}
