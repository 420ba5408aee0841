use std::collections::VecDeque;
use std::sync::Barrier;
use std::sync::atomic::AtomicUsize;

use proptest::prelude::*;

use super::*;
use crate::policy::Policy;
use crate::policy::PolicyExt;
use windlass_test_support::ms;

fn breaker(window: u32, min: u32, open: Duration, probes: u32) -> CircuitBreaker {
    CircuitBreaker::builder()
        .count_window(window)
        .minimum_calls(min)
        .failure_rate_threshold(0.5)
        .open_duration(open)
        .permitted_in_half_open(probes)
        .build()
        .unwrap()
}

async fn fail(b: &CircuitBreaker) -> Result<(), PolicyError<&'static str>> {
    b.call(|| async { Err("503") }).await
}

async fn succeed(b: &CircuitBreaker) -> Result<(), PolicyError<&'static str>> {
    b.call(|| async { Ok(()) }).await
}

#[tokio::test(start_paused = true)]
async fn opens_at_threshold_after_minimum_calls() {
    let b = breaker(10, 4, ms(1000), 2);
    assert!(fail(&b).await.is_err());
    assert!(succeed(&b).await.is_ok());
    assert!(fail(&b).await.is_err());
    assert_eq!(b.state(), BreakerState::Closed, "3 calls < minimum 4");
    assert!(succeed(&b).await.is_ok());
    // 2 failures of 4 = 50% >= 50%: opens.
    assert_eq!(b.state(), BreakerState::Open);
    match succeed(&b).await {
        Err(PolicyError::Rejected(Rejection::CircuitOpen { retry_after, .. })) => {
            assert_eq!(retry_after, ms(1000));
        }
        other => panic!("{other:?}"),
    }
    tokio::time::advance(ms(400)).await;
    match b.try_acquire() {
        Err(Rejection::CircuitOpen { retry_after, .. }) => assert_eq!(retry_after, ms(600)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn half_open_closes_on_good_probes_and_reopens_on_bad() {
    let b = breaker(4, 4, ms(100), 2);
    for _ in 0..4 {
        let _ = fail(&b).await;
    }
    assert_eq!(b.state(), BreakerState::Open);
    tokio::time::advance(ms(100)).await;
    assert_eq!(b.state(), BreakerState::HalfOpen);
    assert!(succeed(&b).await.is_ok());
    assert!(fail(&b).await.is_err());
    // 1 of 2 probes failed = 50%: reopens.
    assert_eq!(b.state(), BreakerState::Open);
    tokio::time::advance(ms(100)).await;
    assert!(succeed(&b).await.is_ok());
    assert!(succeed(&b).await.is_ok());
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(b.openings(), 2);
}

#[tokio::test(start_paused = true)]
async fn open_duration_grows_across_consecutive_openings() {
    let b = CircuitBreaker::builder()
        .count_window(1)
        .minimum_calls(1)
        .permitted_in_half_open(1)
        .open_duration(ms(100))
        .open_duration_growth(2.0, ms(350))
        .build()
        .unwrap();
    let _ = fail(&b).await;
    let mut seen = Vec::new();
    for _ in 0..4 {
        match b.try_acquire() {
            Err(Rejection::CircuitOpen { retry_after, .. }) => seen.push(retry_after),
            other => panic!("{other:?}"),
        }
        tokio::time::advance(seen[seen.len() - 1]).await;
        let _ = fail(&b).await; // the probe fails: reopen, longer
    }
    assert_eq!(seen, vec![ms(100), ms(200), ms(350), ms(350)]);
    // Closing resets the growth.
    tokio::time::advance(ms(350)).await;
    let _ = succeed(&b).await;
    assert_eq!(b.state(), BreakerState::Closed);
    let _ = fail(&b).await;
    match b.try_acquire() {
        Err(Rejection::CircuitOpen { retry_after, .. }) => assert_eq!(retry_after, ms(100)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn slow_calls_open_the_breaker() {
    let b = CircuitBreaker::builder()
        .count_window(4)
        .minimum_calls(4)
        .slow_call_duration(ms(500))
        .slow_call_rate_threshold(0.75)
        .build()
        .unwrap();
    for d in [ms(10), ms(600), ms(600), ms(600)] {
        succeed_after(&b, d).await;
    }
    assert_eq!(b.state(), BreakerState::Open, "3 of 4 slow = 75%");
}

#[tokio::test(start_paused = true)]
async fn time_window_forgets_old_failures() {
    let b = CircuitBreaker::builder()
        .time_window(10)
        .minimum_calls(4)
        .build()
        .unwrap();
    for _ in 0..3 {
        let _ = fail(&b).await;
    }
    tokio::time::advance(Duration::from_secs(11)).await;
    let _ = fail(&b).await;
    assert_eq!(
        b.state(),
        BreakerState::Closed,
        "the first three left the window"
    );
    for _ in 0..3 {
        let _ = fail(&b).await;
    }
    assert_eq!(b.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn permanent_cancelled_and_rejections_do_not_count() {
    let b = breaker(2, 2, ms(100), 1);
    for class in [ErrorClass::Permanent, ErrorClass::Cancelled] {
        for _ in 0..3 {
            let _: Result<(), _> = b
                .call_with(Context::new(), &move |_: &&str| class, |_| async {
                    Err("x")
                })
                .await;
        }
    }
    for _ in 0..3 {
        let _: Result<(), PolicyError<&str>> = b
            .execute(Context::new(), &|_| async {
                Err(PolicyError::Rejected(Rejection::RateLimited {
                    name: "r".into(),
                    retry_after: ms(1),
                }))
            })
            .await;
    }
    assert_eq!(b.state(), BreakerState::Closed);
    match &crate::observe::snapshot()
        .into_iter()
        .find(|p| p.name.as_ref() == b.name())
        .unwrap()
        .state
    {
        crate::observe::PolicyState::CircuitBreaker {
            calls_in_window, ..
        } => assert_eq!(*calls_in_window, 0),
        s => panic!("{s:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn max_wait_in_half_open_reopens() {
    let b = CircuitBreaker::builder()
        .count_window(1)
        .minimum_calls(1)
        .open_duration(ms(100))
        .permitted_in_half_open(1)
        .max_wait_in_half_open(ms(50))
        .build()
        .unwrap();
    let _ = fail(&b).await;
    tokio::time::advance(ms(100)).await;
    let probe = b.try_acquire().unwrap(); // a probe that hangs
    tokio::time::advance(ms(50)).await;
    assert_eq!(b.state(), BreakerState::Open);
    probe.success(); // too late: from an older state, ignored
    assert_eq!(b.state(), BreakerState::Open);
}

#[tokio::test(start_paused = true)]
async fn cancelled_probe_frees_its_slot() {
    let b = breaker(1, 1, ms(10), 1);
    let _ = fail(&b).await;
    tokio::time::advance(ms(10)).await;
    let fut = b.call(|| async {
        tokio::time::sleep(Duration::from_secs(60)).await;
        Ok::<_, &str>(())
    });
    assert!(
        tokio::time::timeout(ms(5), fut).await.is_err(),
        "probe dropped mid-call"
    );
    assert!(b.try_acquire().is_ok(), "the slot went back");
}

#[tokio::test(start_paused = true)]
async fn manual_states() {
    let b = breaker(1, 1, ms(10), 1);
    b.force_open();
    assert!(b.try_acquire().is_err());
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert_eq!(
        b.state(),
        BreakerState::ForcedOpen,
        "forced open never times out"
    );
    b.disable();
    for _ in 0..5 {
        let _ = fail(&b).await;
    }
    assert_eq!(b.state(), BreakerState::Disabled);
    b.metrics_only();
    for _ in 0..5 {
        let _ = fail(&b).await;
    }
    assert_eq!(
        b.state(),
        BreakerState::MetricsOnly,
        "metrics-only never opens"
    );
    b.reset();
    let _ = fail(&b).await;
    assert_eq!(b.state(), BreakerState::Open);
}

#[test]
fn invalid_configs_rejected() {
    let e = CircuitBreaker::builder()
        .failure_rate_threshold(0.0)
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "failure_rate_threshold");
    let e = CircuitBreaker::builder()
        .failure_rate_threshold(1.5)
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "failure_rate_threshold");
    assert_eq!(
        CircuitBreaker::builder()
            .count_window(0)
            .build()
            .unwrap_err()
            .field(),
        "count_window"
    );
    assert_eq!(
        CircuitBreaker::builder()
            .time_window(0)
            .build()
            .unwrap_err()
            .field(),
        "time_window"
    );
    assert_eq!(
        CircuitBreaker::builder()
            .minimum_calls(0)
            .build()
            .unwrap_err()
            .field(),
        "minimum_calls"
    );
    assert_eq!(
        CircuitBreaker::builder()
            .permitted_in_half_open(0)
            .build()
            .unwrap_err()
            .field(),
        "permitted_in_half_open"
    );
    assert_eq!(
        CircuitBreaker::builder()
            .initial_state(BreakerState::Open)
            .build()
            .unwrap_err()
            .field(),
        "initial_state"
    );
}

/// Exactly N probes are admitted in half-open, however many threads race for them.
#[test]
fn half_open_admits_exactly_n_under_contention() {
    const PROBES: u32 = 3;
    const THREADS: usize = 8;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let b = breaker(1, 1, ms(10), PROBES);
    for round in 0..50 {
        rt.block_on(async {
            b.reset();
            let _ = fail(&b).await;
            tokio::time::advance(ms(10)).await;
        });
        let admitted = AtomicUsize::new(0);
        let barrier = Barrier::new(THREADS);
        std::thread::scope(|s| {
            for _ in 0..THREADS {
                s.spawn(|| {
                    let _guard = rt.handle().enter();
                    barrier.wait();
                    let mut held = Vec::new();
                    for _ in 0..200 {
                        if let Ok(p) = b.try_acquire() {
                            held.push(p);
                        }
                    }
                    admitted.fetch_add(held.len(), Ordering::SeqCst);
                    barrier.wait(); // hold permits until everyone has tried
                });
            }
        });
        assert_eq!(
            admitted.load(Ordering::SeqCst),
            PROBES as usize,
            "round {round}"
        );
    }
}

// ---- reference model ----------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Event {
    Call { fails: bool },
    CancelledCall,
    Advance(u64),
}

#[derive(Debug, PartialEq, Clone, Copy)]
enum MState {
    Closed,
    Open { until: u64 },
    HalfOpen,
}

struct Model {
    window: usize,
    min: usize,
    threshold: f64,
    open_ms: u64,
    probes: usize,
    state: MState,
    outcomes: VecDeque<bool>,
    half_left: usize,
    half_results: Vec<bool>,
    now: u64,
}

impl Model {
    fn rate(v: &[bool]) -> f64 {
        v.iter().filter(|f| **f).count() as f64 / v.len() as f64
    }
    fn refresh(&mut self) {
        if let MState::Open { until } = self.state
            && self.now >= until
        {
            self.state = MState::HalfOpen;
            self.half_left = self.probes;
            self.half_results.clear();
        }
    }
    fn open(&mut self) {
        self.state = MState::Open {
            until: self.now + self.open_ms,
        };
    }
    /// Returns whether the call was admitted.
    fn step(&mut self, e: Event) -> bool {
        match e {
            Event::Advance(d) => {
                self.now += d;
                false
            }
            Event::CancelledCall => {
                self.refresh();
                match self.state {
                    MState::Closed => true,
                    MState::HalfOpen if self.half_left > 0 => true, // taken and given back
                    _ => false,
                }
            }
            Event::Call { fails } => {
                self.refresh();
                match self.state {
                    MState::Closed => {
                        self.outcomes.push_back(fails);
                        if self.outcomes.len() > self.window {
                            self.outcomes.pop_front();
                        }
                        let v: Vec<bool> = self.outcomes.iter().copied().collect();
                        if v.len() >= self.min && Self::rate(&v) >= self.threshold {
                            self.open();
                        }
                        true
                    }
                    MState::HalfOpen if self.half_left > 0 => {
                        self.half_left -= 1;
                        self.half_results.push(fails);
                        if self.half_results.len() >= self.probes {
                            if Self::rate(&self.half_results) >= self.threshold {
                                self.open();
                            } else {
                                self.state = MState::Closed;
                                self.outcomes.clear();
                            }
                        }
                        true
                    }
                    _ => false,
                }
            }
        }
    }
}

fn events() -> impl Strategy<Value = Vec<Event>> {
    prop::collection::vec(
        prop_oneof![
            6 => any::<bool>().prop_map(|fails| Event::Call { fails }),
            1 => Just(Event::CancelledCall),
            2 => (1u64..400).prop_map(Event::Advance),
        ],
        1..200,
    )
}

proptest! {
    #[test]
    fn breaker_matches_reference_model(
        window in 1u32..12,
        min in 1u32..12,
        threshold in 0.1f64..1.0,
        open_ms in 1u64..500,
        probes in 1u32..5,
        evs in events(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        rt.block_on(async {
            let b = CircuitBreaker::builder()
                .count_window(window)
                .minimum_calls(min)
                .failure_rate_threshold(threshold)
                .open_duration(ms(open_ms))
                .permitted_in_half_open(probes)
                .build()
                .unwrap();
            let mut m = Model {
                window: window as usize, min: min as usize, threshold, open_ms,
                probes: probes as usize, state: MState::Closed, outcomes: VecDeque::new(),
                half_left: 0, half_results: Vec::new(), now: 0,
            };
            for (i, e) in evs.iter().enumerate() {
                let expected_admit = m.step(*e);
                let admitted = match *e {
                    Event::Advance(d) => { tokio::time::advance(ms(d)).await; false }
                    Event::CancelledCall => b.try_acquire().is_ok(), // permit dropped at once
                    Event::Call { fails } => {
                        let r = if fails { fail(&b).await } else { succeed(&b).await };
                        !matches!(r, Err(PolicyError::Rejected(_)))
                    }
                };
                prop_assert_eq!(admitted, expected_admit, "event {} {:?}", i, e);
                m.refresh();
                let want = match m.state {
                    MState::Closed => BreakerState::Closed,
                    MState::Open { .. } => BreakerState::Open,
                    MState::HalfOpen => BreakerState::HalfOpen,
                };
                prop_assert_eq!(b.state(), want, "after event {} {:?}", i, e);
            }
            Ok(())
        })?;
    }
}

/// Four threads record through the batched path at once: the window never holds more than
/// its size, healthy traffic keeps it closed, and failing traffic still opens it.
#[test]
fn batched_successes_under_contention() {
    let b = breaker(100, 10, Duration::from_secs(60), 1);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..10_000 {
                    b.try_acquire().unwrap().success();
                }
            });
        }
    });
    assert_eq!(b.state(), BreakerState::Closed);
    match crate::observe::find(b.name())[0].state {
        crate::observe::PolicyState::CircuitBreaker {
            calls_in_window,
            failure_rate,
            ..
        } => {
            assert_eq!(
                calls_in_window, 100,
                "every batched success folded in, window bounded"
            );
            assert_eq!(failure_rate, Some(0.0));
        }
        ref other => panic!("{other:?}"),
    }
    // Now 60% failures from every thread: the breaker must open.
    let rejected = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for i in 0..1_000 {
                    match b.try_acquire() {
                        Ok(p) if i % 5 < 3 => p.failure(),
                        Ok(p) => p.success(),
                        Err(_) => {
                            rejected.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            });
        }
    });
    assert_eq!(b.state(), BreakerState::Open);
    assert!(rejected.load(Ordering::SeqCst) > 0);
    assert_eq!(b.openings(), 1);
}

/// `(failure_rate, calls)` as the observability snapshot reports them.
fn reported(b: &CircuitBreaker) -> (Option<f64>, u64) {
    match crate::observe::find(b.name())[0].state {
        crate::observe::PolicyState::CircuitBreaker {
            failure_rate,
            calls_in_window,
            ..
        } => (failure_rate, calls_in_window),
        ref other => panic!("{other:?}"),
    }
}

/// Regression: before the minimum number of calls the failure rate read 0.0 (a healthy
/// number never measured), and after a half-open decision to re-open, the snapshot showed
/// the closed-state window from before the first opening instead of the probes.
#[tokio::test(start_paused = true)]
async fn snapshot_reports_the_calls_behind_each_decision() {
    let b = breaker(4, 4, Duration::from_secs(10), 2);
    let _ = fail(&b).await;
    assert_eq!(reported(&b), (None, 1), "unknown, not 0 %");
    let _ = succeed(&b).await;
    let _ = succeed(&b).await;
    let _ = fail(&b).await;
    assert_eq!(b.state(), BreakerState::Open);
    assert_eq!(
        reported(&b),
        (Some(0.5), 4),
        "the closed window that opened it"
    );
    tokio::time::advance(Duration::from_secs(4)).await;
    match b.snapshot().state {
        crate::observe::PolicyState::CircuitBreaker { retry_after, .. } => {
            assert_eq!(
                retry_after,
                Some(Duration::from_secs(6)),
                "open: when it admits a probe"
            );
        }
        ref other => panic!("{other:?}"),
    }
    tokio::time::advance(Duration::from_secs(6)).await;
    let _ = fail(&b).await; // the first probe: half-open, one of two probes done
    assert_eq!(b.state(), BreakerState::HalfOpen);
    assert_eq!(
        reported(&b),
        (None, 1),
        "not judged until every probe is back"
    );
    let _ = fail(&b).await;
    assert_eq!(b.state(), BreakerState::Open);
    assert_eq!(reported(&b), (Some(1.0), 2), "the probes that re-opened it");
}

/// A success that takes `d`.
async fn succeed_after(b: &CircuitBreaker, d: Duration) {
    let r: Result<(), PolicyError<&str>> = b
        .call(|| async move {
            tokio::time::sleep(d).await;
            Ok(())
        })
        .await;
    assert!(r.is_ok());
}

#[tokio::test(start_paused = true)]
async fn slow_successes_count_once_the_window_is_warm() {
    // Successes are batched once the window holds the minimum; a slow one must still be
    // judged slow (mutation found: batching it as a fast success).
    let b = CircuitBreaker::builder()
        .count_window(4)
        .minimum_calls(2)
        .slow_call_duration(ms(500))
        .slow_call_rate_threshold(0.5)
        .build()
        .unwrap();
    succeed_after(&b, ms(1)).await;
    succeed_after(&b, ms(1)).await;
    assert_eq!(b.state(), BreakerState::Closed);
    succeed_after(&b, ms(600)).await;
    succeed_after(&b, ms(600)).await;
    assert_eq!(b.state(), BreakerState::Open, "2 slow of 4 = 50%");
}

#[tokio::test(start_paused = true)]
async fn slow_probes_reopen_a_half_open_breaker() {
    let b = CircuitBreaker::builder()
        .count_window(2)
        .minimum_calls(2)
        .open_duration(ms(100))
        .permitted_in_half_open(2)
        .slow_call_duration(ms(500))
        .slow_call_rate_threshold(0.5)
        .build()
        .unwrap();
    let _ = fail(&b).await;
    let _ = fail(&b).await;
    tokio::time::advance(ms(100)).await;
    assert_eq!(b.state(), BreakerState::HalfOpen);
    succeed_after(&b, ms(1)).await;
    succeed_after(&b, ms(600)).await;
    assert_eq!(b.state(), BreakerState::Open, "1 slow probe of 2 = 50%");
}

#[tokio::test(start_paused = true)]
async fn a_permit_from_an_earlier_state_never_counts() {
    let b = breaker(2, 2, ms(100), 1);
    // Taken while closed, reported after the breaker opened and went half-open.
    let stale = b.try_acquire().unwrap();
    let _ = fail(&b).await;
    let _ = fail(&b).await;
    tokio::time::advance(ms(100)).await;
    assert_eq!(b.state(), BreakerState::HalfOpen);
    stale.success();
    assert_eq!(
        b.state(),
        BreakerState::HalfOpen,
        "the stale success did not decide the probe"
    );
    // The probe slot is still there for a real probe.
    assert!(succeed(&b).await.is_ok());
    assert_eq!(b.state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn slow_call_detection_is_off_until_a_threshold_is_set() {
    // No threshold: calls are not timed, slow ones never open it, and no slow-call rate is
    // reported (it was never measured).
    let b = CircuitBreaker::builder()
        .count_window(2)
        .minimum_calls(2)
        .slow_call_duration(ms(10))
        .build()
        .unwrap();
    succeed_after(&b, ms(600)).await;
    succeed_after(&b, ms(600)).await;
    assert_eq!(b.state(), BreakerState::Closed);
    match b.snapshot().state {
        crate::observe::PolicyState::CircuitBreaker {
            slow_call_rate,
            failure_rate,
            ..
        } => assert_eq!((slow_call_rate, failure_rate), (None, Some(0.0))),
        ref other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn batched_successes_count_in_the_next_decision() {
    // After the minimum, successes are batched per thread and folded in before a failure
    // is judged (mutation found: a fold that drops them makes 2 failures of 10 look like
    // 2 of 4).
    let b = breaker(10, 2, ms(1000), 1);
    for _ in 0..8 {
        let _ = succeed(&b).await;
    }
    let _ = fail(&b).await;
    let _ = fail(&b).await;
    assert_eq!(
        b.state(),
        BreakerState::Closed,
        "2 failures of 10 = 20% < 50%"
    );
    assert_eq!(reported(&b), (Some(0.2), 10));
}
