use std::time::Duration;

use super::*;
use crate::policy::PolicyExt;
use crate::timeout::Timeout;
use crate::{AllTransient, Compose};
use windlass_test_support::ms;

fn fixed(n: usize) -> ConcurrencyLimiter {
    ConcurrencyLimiter::builder()
        .algorithm(LimitAlgorithm::Fixed(n))
        .build()
        .unwrap()
}

#[test]
fn low_priority_is_shed_first() {
    let l = fixed(10);
    assert_eq!(l.allowed(Priority::Low), 5);
    assert_eq!(l.allowed(Priority::Normal), 8);
    assert_eq!(l.allowed(Priority::High), 9);
    assert_eq!(l.allowed(Priority::Critical), 10);
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(l.try_acquire(Priority::Low).unwrap());
    }
    match l.try_acquire(Priority::Low) {
        Err(Rejection::Shed {
            priority: Priority::Low,
            in_flight: 5,
            limit: 5,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    for _ in 0..3 {
        held.push(l.try_acquire(Priority::Normal).unwrap());
    }
    assert!(l.try_acquire(Priority::Normal).is_err());
    held.push(l.try_acquire(Priority::High).unwrap());
    assert!(l.try_acquire(Priority::High).is_err());
    held.push(l.try_acquire(Priority::Critical).unwrap());
    assert!(
        l.try_acquire(Priority::Critical).is_err(),
        "the limit itself holds"
    );
    drop(held);
    assert_eq!(l.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn never_more_in_flight_than_the_limit_and_excess_is_shed_at_once() {
    let l = fixed(4);
    let peak = std::sync::atomic::AtomicUsize::new(0);
    let running = std::sync::atomic::AtomicUsize::new(0);
    let calls = (0..20).map(|_| {
        l.call_with(
            Context::new().with_priority(Priority::Critical),
            &AllTransient,
            |_| async {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(ms(10)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, &str>(())
            },
        )
    });
    let results = futures_util::future::join_all(calls).await;
    assert_eq!(peak.load(Ordering::SeqCst), 4);
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 4);
    assert_eq!(
        results
            .iter()
            .filter(|r| matches!(r, Err(PolicyError::Rejected(Rejection::Shed { .. }))))
            .count(),
        16
    );
}

#[tokio::test(start_paused = true)]
async fn aimd_backs_off_on_timeouts_and_recovers() {
    let l = ConcurrencyLimiter::builder()
        .algorithm(LimitAlgorithm::Aimd(Aimd {
            initial: 10,
            ..Aimd::default()
        }))
        .build()
        .unwrap();
    let policy = l.clone().then(Timeout::new(ms(50)).unwrap());
    let slow = || async {
        tokio::time::sleep(ms(100)).await;
        Ok::<_, &str>(())
    };
    for _ in 0..5 {
        let _ = policy
            .call_with(
                Context::new().with_priority(Priority::Critical),
                &AllTransient,
                |_| slow(),
            )
            .await;
    }
    // 10 -> 9 -> 8 -> 7 -> 6 -> 5 (x0.9, floored)
    assert_eq!(l.limit(), 5);
    // Saturated, healthy calls grow it again by one each.
    let healthy = futures_util::future::join_all((0..5).map(|_| {
        l.call_with(
            Context::new().with_priority(Priority::Critical),
            &AllTransient,
            |_| async {
                tokio::time::sleep(ms(1)).await;
                Ok::<_, &str>(())
            },
        )
    }))
    .await;
    assert!(healthy.iter().all(Result::is_ok));
    assert!(l.limit() > 5, "grew back: {}", l.limit());
}

#[tokio::test(start_paused = true)]
async fn cancelled_call_frees_its_slot() {
    let l = fixed(1);
    let fut = l.call(|| async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        Ok::<_, &str>(())
    });
    assert!(tokio::time::timeout(ms(1), fut).await.is_err());
    assert_eq!(l.in_flight(), 0);
}

#[test]
fn invalid_configs_rejected() {
    let e = ConcurrencyLimiter::builder()
        .algorithm(LimitAlgorithm::Fixed(0))
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "limit");
    let e = ConcurrencyLimiter::builder()
        .algorithm(LimitAlgorithm::Aimd(Aimd {
            backoff_ratio: 1.5,
            ..Aimd::default()
        }))
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "aimd.backoff_ratio");
    let e = ConcurrencyLimiter::builder()
        .algorithm(LimitAlgorithm::Gradient2(Gradient2 {
            initial: 500,
            ..Gradient2::default()
        }))
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "gradient2.initial");
    let e = ConcurrencyLimiter::builder()
        .priority_share(Priority::Low, 0.0)
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "priority_share");
}

#[test]
fn a_sample_counts_the_call_itself_in_flight() {
    // AIMD grows only when the limit is being used (at least half in flight); the sample
    // must count the call it belongs to (mutation found: it was not checked).
    let limiter = ConcurrencyLimiter::builder()
        .algorithm(LimitAlgorithm::Aimd(Aimd {
            initial: 4,
            min: 1,
            max: 10,
            ..Aimd::default()
        }))
        .build()
        .unwrap();
    let first = limiter.try_acquire(Priority::Critical).unwrap();
    let second = limiter.try_acquire(Priority::Critical).unwrap();
    assert_eq!(limiter.in_flight(), 2);
    second.finish(false); // 2 of 4 in flight: the limit is in use, so it grows
    assert_eq!(limiter.limit(), 5);
    first.finish(false);
    assert_eq!(limiter.in_flight(), 0);
}
