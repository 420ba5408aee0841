//! Every builder rejects a meaningless setting with a `ConfigError` that names the component
//! and the field, rather than clamping it silently (the validation audit of issue 6).

#![allow(clippy::unwrap_used)] // a test file

use std::time::Duration;

use windlass_policy::concurrency_limiter::{Aimd, Gradient2};
use windlass_policy::{
    Backoff, Bulkhead, Cache, CircuitBreaker, ConcurrencyLimiter, ConfigError, Deadline, Hedge,
    Jitter, Keyed, LimitAlgorithm, Priority, RateLimiter, Retry, RetryBudget, Timeout,
};

const ZERO: Duration = Duration::ZERO;

fn second() -> Duration {
    Duration::from_secs(1)
}

/// Asserts that `result` is a `ConfigError` naming `field`.
#[track_caller]
fn rejects<T>(result: Result<T, ConfigError>, field: &str) {
    match result {
        Ok(_) => panic!("accepted an invalid `{field}`"),
        Err(e) => {
            assert_eq!(e.field(), field, "{e}");
            assert!(!e.component().is_empty());
            assert!(
                e.to_string().contains(field),
                "the message names the field: {e}"
            );
        }
    }
}

#[test]
fn retry() {
    rejects(Retry::builder().max_attempts(0).build(), "max_attempts");
    // Documented as meaningful: a zero backoff retries at once.
    assert!(
        Retry::builder()
            .backoff(Backoff::Constant(ZERO))
            .build()
            .is_ok()
    );
    rejects(
        Retry::builder().jitter(Jitter::Proportional(1.5)).build(),
        "jitter.factor",
    );
    rejects(
        Retry::builder().jitter(Jitter::Proportional(-0.1)).build(),
        "jitter.factor",
    );
    rejects(Retry::builder().max_delay(ZERO).build(), "max_delay");
    rejects(Retry::builder().deadline(ZERO).build(), "deadline");
    rejects(RetryBudget::new(ZERO, 10, 0.2), "window");
    rejects(RetryBudget::new(second(), 10, 1000.5), "retry_ratio");
    rejects(RetryBudget::new(Duration::from_secs(61), 10, 0.2), "window");
    rejects(RetryBudget::new(second(), 10, -0.5), "retry_ratio");
}

#[test]
fn timeouts() {
    rejects(Timeout::new(ZERO), "after");
    rejects(Deadline::new(ZERO), "budget");
}

#[test]
fn circuit_breaker() {
    let b = CircuitBreaker::builder;
    rejects(
        b().failure_rate_threshold(0.0).build(),
        "failure_rate_threshold",
    );
    rejects(
        b().failure_rate_threshold(1.5).build(),
        "failure_rate_threshold",
    );
    rejects(
        b().failure_rate_threshold(f64::NAN).build(),
        "failure_rate_threshold",
    );
    rejects(
        b().slow_call_rate_threshold(0.0).build(),
        "slow_call_rate_threshold",
    );
    rejects(b().slow_call_duration(ZERO).build(), "slow_call_duration");
    rejects(b().count_window(0).build(), "count_window");
    rejects(b().time_window(0).build(), "time_window");
    rejects(b().minimum_calls(0).build(), "minimum_calls");
    rejects(b().open_duration(ZERO).build(), "open_duration");
    rejects(
        b().permitted_in_half_open(0).build(),
        "permitted_in_half_open",
    );
    rejects(
        b().open_duration_growth(0.5, Duration::from_secs(60))
            .build(),
        "open_duration_growth.multiplier",
    );
    // Documented as meaningful: zero waits for the probes however long they take.
    assert!(b().max_wait_in_half_open(ZERO).build().is_ok());
}

#[test]
fn bulkhead() {
    rejects(
        Bulkhead::builder().max_concurrent(0).build(),
        "max_concurrent",
    );
}

#[test]
fn rate_limiter() {
    let r = RateLimiter::builder;
    rejects(r().per_second(0).build(), "rate");
    rejects(r().every(ZERO).build(), "rate");
    rejects(r().per_second(10).burst(0).build(), "burst");
    rejects(r().fixed_window(0, second()).build(), "fixed_window.limit");
    rejects(r().fixed_window(10, ZERO).build(), "fixed_window.window");
}

#[test]
fn concurrency_limiter() {
    let c = ConcurrencyLimiter::builder;
    rejects(c().algorithm(LimitAlgorithm::Fixed(0)).build(), "limit");
    rejects(
        c().priority_share(Priority::Low, 0.0).build(),
        "priority_share",
    );
    rejects(
        c().priority_share(Priority::Low, 1.5).build(),
        "priority_share",
    );
    let aimd = |f: fn(&mut Aimd)| {
        let mut a = Aimd::default();
        f(&mut a);
        c().algorithm(LimitAlgorithm::Aimd(a)).build()
    };
    rejects(aimd(|a| a.min = 0), "aimd.min");
    rejects(aimd(|a| a.max = a.min - 1), "aimd.initial");
    rejects(aimd(|a| a.initial = a.max + 1), "aimd.initial");
    rejects(aimd(|a| a.backoff_ratio = 1.0), "aimd.backoff_ratio");
    rejects(aimd(|a| a.backoff_ratio = 0.0), "aimd.backoff_ratio");
    rejects(aimd(|a| a.timeout = ZERO), "aimd.timeout");
    let gradient = |f: fn(&mut Gradient2)| {
        let mut g = Gradient2::default();
        f(&mut g);
        c().algorithm(LimitAlgorithm::Gradient2(g)).build()
    };
    rejects(
        gradient(|g| g.rtt_tolerance = 0.5),
        "gradient2.rtt_tolerance",
    );
    rejects(gradient(|g| g.smoothing = 0.0), "gradient2.smoothing");
    rejects(gradient(|g| g.smoothing = 1.5), "gradient2.smoothing");
    rejects(gradient(|g| g.long_window = 0), "gradient2.long_window");
}

#[test]
fn hedge() {
    let h = Hedge::builder;
    // Documented as meaningful: a zero delay starts every attempt at once (a race).
    assert!(h().delay(ZERO).build().is_ok());
    rejects(h().max_hedges(0).build(), "max_hedges");
    rejects(
        h().percentile(1.5, 10, second()).build(),
        "percentile.quantile",
    );
    rejects(
        h().percentile(0.0, 10, second()).build(),
        "percentile.quantile",
    );
    rejects(h().percentile(0.95, 0, second()).build(), "min_samples");
}

#[test]
fn cache_and_keyed() {
    rejects(
        Cache::<(), u32>::builder().max_capacity(0).build::<u32>(),
        "max_capacity",
    );
    rejects(Cache::<(), u32>::builder().ttl(ZERO).build::<u32>(), "ttl");
    let keyed = |b: windlass_policy::KeyedBuilder| {
        b.build(|_: &u32| Bulkhead::builder().max_concurrent(1).build())
    };
    rejects(keyed(Keyed::builder().max_keys(0)), "max_keys");
    rejects(keyed(Keyed::builder().idle_timeout(ZERO)), "idle_timeout");
}
