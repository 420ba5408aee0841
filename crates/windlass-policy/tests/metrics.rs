//! Every policy reports through the `metrics` facade: a recorder installed when the policy
//! is built receives its counters and gauges.

#![allow(clippy::unwrap_used)] // a test file: a poisoned lock should fail the test

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use windlass_policy::{
    Backoff, Bulkhead, CircuitBreaker, Compose, Jitter, PolicyExt, RateLimiter, Retry,
};

#[derive(Default)]
struct Cell(AtomicU64);

impl CounterFn for Cell {
    fn increment(&self, v: u64) {
        self.0.fetch_add(v, Ordering::SeqCst);
    }
    fn absolute(&self, v: u64) {
        self.0.store(v, Ordering::SeqCst);
    }
}

impl GaugeFn for Cell {
    fn increment(&self, v: f64) {
        let _ = self
            .0
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| {
                Some((f64::from_bits(c) + v).to_bits())
            });
    }
    fn decrement(&self, v: f64) {
        GaugeFn::increment(self, -v);
    }
    fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::SeqCst);
    }
}

impl HistogramFn for Cell {
    fn record(&self, _: f64) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[derive(Default)]
struct Capture {
    cells: Mutex<HashMap<String, Arc<Cell>>>,
}

impl Capture {
    fn cell(&self, key: &Key) -> Arc<Cell> {
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        self.cells.lock().unwrap().entry(name).or_default().clone()
    }
    fn counter(&self, name: &str) -> u64 {
        self.cells
            .lock()
            .unwrap()
            .get(name)
            .map_or(0, |c| c.0.load(Ordering::SeqCst))
    }
    fn gauge(&self, name: &str) -> f64 {
        f64::from_bits(self.counter(name))
    }
}

impl Recorder for Capture {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.cell(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.cell(key))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.cell(key))
    }
}

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
