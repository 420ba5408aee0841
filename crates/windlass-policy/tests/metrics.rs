//! Every policy reports through the `metrics` facade: a recorder installed when the policy
//! is built receives its counters and gauges.

#![allow(clippy::unwrap_used)] // a test file: a poisoned lock should fail the test

use std::time::Duration;

use windlass_policy::{
    Backoff, Bulkhead, CircuitBreaker, Compose, Jitter, PolicyExt, RateLimiter, Retry,
};
use windlass_test_support::metrics_capture::Capture;

#[tokio::test(start_paused = true)]
async fn policies_report_attempts_retries_rejections_and_breaker_state() {
    let capture = Capture::default();
    let (retry, breaker, bulkhead, limiter) = metrics::with_local_recorder(&capture, || {
        (
            Retry::builder()
                .name("m-retry")
                .max_attempts(3)
                .backoff(Backoff::Constant(Duration::from_millis(1)))
                .jitter(Jitter::None)
                .build()
                .unwrap(),
            CircuitBreaker::builder()
                .name("m-breaker")
                .count_window(2)
                .minimum_calls(2)
                .build()
                .unwrap(),
            Bulkhead::builder()
                .name("m-bulkhead")
                .max_concurrent(1)
                .build()
                .unwrap(),
            RateLimiter::builder()
                .name("m-rate")
                .every(Duration::from_secs(1))
                .build()
                .unwrap(),
        )
    });
    let policy = retry.then(breaker.clone());
    let _ = policy.call(|| async { Err::<(), _>("503") }).await;

    assert_eq!(
        capture.counter("windlass_retry_attempts_total{name=m-retry}"),
        3
    );
    assert_eq!(
        capture.counter("windlass_retry_retries_total{name=m-retry}"),
        2
    );
    assert_eq!(
        capture.counter("windlass_retry_gave_up_total{name=m-retry,reason=max_attempts}"),
        1
    );
    assert_eq!(
        capture.counter("windlass_breaker_transitions_total{name=m-breaker,to=open}"),
        1
    );
    assert_eq!(
        capture.gauge("windlass_breaker_state{name=m-breaker}"),
        1.0,
        "1 = open"
    );
    assert_eq!(
        capture.counter("windlass_policy_rejections_total{name=m-breaker,reason=circuit_open}"),
        1
    );
    assert_eq!(
        capture.counter("windlass_breaker_calls_total{name=m-breaker,outcome=failure}"),
        2
    );

    let slot = bulkhead.try_acquire().unwrap();
    assert_eq!(
        capture.gauge("windlass_bulkhead_in_use{name=m-bulkhead}"),
        1.0
    );
    assert!(bulkhead.try_acquire().is_err());
    assert_eq!(
        capture.counter("windlass_policy_rejections_total{name=m-bulkhead,reason=bulkhead_full}"),
        1
    );
    drop(slot);
    assert_eq!(
        capture.gauge("windlass_bulkhead_in_use{name=m-bulkhead}"),
        0.0
    );

    limiter.try_acquire().unwrap();
    assert!(limiter.try_acquire().is_err());
    assert_eq!(
        capture.counter("windlass_policy_rejections_total{name=m-rate,reason=rate_limited}"),
        1
    );
}
