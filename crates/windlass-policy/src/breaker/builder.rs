//! Building a breaker: settings, their defaults and their validation.

use std::sync::Arc;

use crate::sync::{AtomicU64, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::window::{Totals, Window};
use super::{BreakerState, CircuitBreaker, Config, Core, STRIPES, Shared, Stripe};
use crate::classify::ErrorClass;
use crate::config::{ConfigError, ensure, ensure_range};
use crate::observe;

/// The kind of sliding window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WindowKind {
    /// The last `n` calls.
    Count(u32),
    /// The calls of the last `n` seconds.
    Time(u32),
}

/// Decides whether a failure with this class counts against the breaker.
pub type FailurePredicate = fn(ErrorClass) -> bool;

pub(super) fn default_counts(class: ErrorClass) -> bool {
    matches!(class, ErrorClass::Transient | ErrorClass::RetryAfter(_))
}

/// Builds a [`CircuitBreaker`]. Defaults are Resilience4j's (failure rate 50%, count window
/// of 100 calls, minimum 100 calls, open 60 s, 10 calls in half-open, no maximum wait in
/// half-open) except one: slow-call detection is off until
/// [`slow_call_rate_threshold`](Self::slow_call_rate_threshold) is set (Resilience4j's
/// default, 100% slower than 60 s, almost never fires and times every call).
#[derive(Debug, Clone)]
pub struct CircuitBreakerBuilder {
    name: Option<Arc<str>>,
    failure_rate_threshold: f64,
    slow_call_rate_threshold: Option<f64>,
    slow_call_duration: Duration,
    window: WindowKind,
    minimum_calls: u32,
    open_duration: Duration,
    open_duration_multiplier: f64,
    max_open_duration: Option<Duration>,
    permitted_in_half_open: u32,
    max_wait_in_half_open: Duration,
    counts_as_failure: FailurePredicate,
    initial_state: BreakerState,
}

impl CircuitBreakerBuilder {
    /// Names the breaker.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = Some(name.into());
        self
    }
    /// Opens when the failure rate is at least this (0 < rate <= 1).
    pub fn failure_rate_threshold(mut self, rate: f64) -> Self {
        self.failure_rate_threshold = rate;
        self
    }
    /// Turns on slow-call detection: opens when the share of calls slower than
    /// [`slow_call_duration`](Self::slow_call_duration) is at least this (0 < rate <= 1).
    /// Off by default: timing every call costs two clock reads, which dominate a closed
    /// breaker's cost, and a breaker judged on failures alone needs none.
    pub fn slow_call_rate_threshold(mut self, rate: f64) -> Self {
        self.slow_call_rate_threshold = Some(rate);
        self
    }
    /// A call taking at least this long is slow (default 60 s; used once
    /// [`slow_call_rate_threshold`](Self::slow_call_rate_threshold) is set).
    pub fn slow_call_duration(mut self, d: Duration) -> Self {
        self.slow_call_duration = d;
        self
    }
    /// Count-based window of the last `n` calls.
    pub fn count_window(mut self, n: u32) -> Self {
        self.window = WindowKind::Count(n);
        self
    }
    /// Time-based window of the last `seconds` seconds.
    pub fn time_window(mut self, seconds: u32) -> Self {
        self.window = WindowKind::Time(seconds);
        self
    }
    /// Rates are not judged before this many calls are in the window.
    pub fn minimum_calls(mut self, n: u32) -> Self {
        self.minimum_calls = n;
        self
    }
    /// How long the breaker stays open (the first time).
    pub fn open_duration(mut self, d: Duration) -> Self {
        self.open_duration = d;
        self
    }
    /// Grows the open duration by this factor on each consecutive opening (1 = fixed), up
    /// to `max`.
    pub fn open_duration_growth(mut self, multiplier: f64, max: Duration) -> Self {
        self.open_duration_multiplier = multiplier;
        self.max_open_duration = Some(max);
        self
    }
    /// Probe calls admitted in half-open.
    pub fn permitted_in_half_open(mut self, n: u32) -> Self {
        self.permitted_in_half_open = n;
        self
    }
    /// Reopens if half-open lasts longer than this (zero = wait for the probes).
    pub fn max_wait_in_half_open(mut self, d: Duration) -> Self {
        self.max_wait_in_half_open = d;
        self
    }
    /// Which error classes count as failures.
    pub fn counts_as_failure(mut self, predicate: FailurePredicate) -> Self {
        self.counts_as_failure = predicate;
        self
    }
    /// Starts in another state (`Disabled`, `MetricsOnly`, `ForcedOpen`).
    pub fn initial_state(mut self, state: BreakerState) -> Self {
        self.initial_state = state;
        self
    }

    /// Validates and builds.
    pub fn build(self) -> Result<CircuitBreaker, ConfigError> {
        const P: &str = "circuit breaker";
        ensure_range(
            self.failure_rate_threshold,
            f64::MIN_POSITIVE,
            1.0,
            P,
            "failure_rate_threshold",
        )?;
        if let Some(rate) = self.slow_call_rate_threshold {
            ensure_range(rate, f64::MIN_POSITIVE, 1.0, P, "slow_call_rate_threshold")?;
        }
        ensure(
            self.slow_call_duration > Duration::ZERO,
            P,
            "slow_call_duration",
            "must be positive",
        )?;
        let (size, secs) = match self.window {
            WindowKind::Count(n) => (n, 0),
            WindowKind::Time(s) => (0, s),
        };
        ensure(
            matches!(self.window, WindowKind::Time(_)) || size >= 1,
            P,
            "count_window",
            "must be at least 1",
        )?;
        ensure(
            size <= 1_000_000,
            P,
            "count_window",
            "must be at most 1,000,000",
        )?;
        ensure(
            matches!(self.window, WindowKind::Count(_)) || secs >= 1,
            P,
            "time_window",
            "must be at least 1 second",
        )?;
        ensure(
            secs <= 3600,
            P,
            "time_window",
            "must be at most 3600 seconds",
        )?;
        ensure(
            self.minimum_calls >= 1,
            P,
            "minimum_calls",
            "must be at least 1",
        )?;
        ensure(
            self.open_duration > Duration::ZERO,
            P,
            "open_duration",
            "must be positive",
        )?;
        ensure_range(
            self.open_duration_multiplier,
            1.0,
            1000.0,
            P,
            "open_duration_growth.multiplier",
        )?;
        ensure(
            self.max_open_duration
                .is_none_or(|max| max >= self.open_duration),
            P,
            "max_open_duration",
            "must be at least open_duration",
        )?;
        ensure(
            self.permitted_in_half_open >= 1,
            P,
            "permitted_in_half_open",
            "must be at least 1",
        )?;
        ensure(
            !matches!(
                self.initial_state,
                BreakerState::Open | BreakerState::HalfOpen
            ),
            P,
            "initial_state",
            "must be Closed, Disabled, ForcedOpen or MetricsOnly",
        )?;
        let now = Instant::now();
        let window = match self.window {
            WindowKind::Count(n) => Window::count(n as usize),
            WindowKind::Time(s) => Window::time(s as usize, now),
        };
        let name = self
            .name
            .unwrap_or_else(|| observe::default_name("breaker"));
        let label = name.to_string();
        let transitions = [
            BreakerState::Closed,
            BreakerState::Open,
            BreakerState::HalfOpen,
            BreakerState::Disabled,
            BreakerState::ForcedOpen,
            BreakerState::MetricsOnly,
        ]
        .map(|s| metrics::counter!("windlass_breaker_transitions_total", "name" => label.clone(), "to" => s.as_str()));
        let shared = Arc::new(Shared {
            cfg: Config {
                failure_rate_threshold: self.failure_rate_threshold,
                slow_call_rate_threshold: self.slow_call_rate_threshold,
                slow_call_duration: self.slow_call_duration,
                minimum_calls: u64::from(self.minimum_calls),
                open_duration: self.open_duration,
                open_duration_multiplier: self.open_duration_multiplier,
                max_open_duration: self.max_open_duration.unwrap_or(self.open_duration),
                permitted_in_half_open: self.permitted_in_half_open,
                max_wait_in_half_open: self.max_wait_in_half_open,
                counts_as_failure: self.counts_as_failure,
            },
            core: Mutex::new(Core {
                state: self.initial_state,
                generation: 0,
                window,
                since: now,
                open_for: self.open_duration,
                consecutive_openings: 0,
                half_open_left: 0,
                half_open: Totals::default(),
                decided_by: Totals::default(),
            }),
            openings: AtomicU64::new(0),
            fast: AtomicU64::new(self.initial_state.code()),
            stripes: (0..STRIPES).map(|_| Stripe(AtomicU64::new(0))).collect(),
            batchable: matches!(self.window, WindowKind::Count(_)),
            m_state: metrics::gauge!("windlass_breaker_state", "name" => label.clone()),
            m_transitions: transitions,
            m_calls: ["success", "failure", "ignored"]
                .map(|o| metrics::counter!("windlass_breaker_calls_total", "name" => label.clone(), "outcome" => o)),
            m_rejected: metrics::counter!("windlass_policy_rejections_total", "name" => label.clone(), "reason" => "circuit_open"),
            name,
        });
        shared.m_state.set(self.initial_state.gauge_value());
        observe::register(&shared);
        Ok(CircuitBreaker { shared })
    }
}

impl CircuitBreaker {
    /// Starts building a breaker.
    pub fn builder() -> CircuitBreakerBuilder {
        CircuitBreakerBuilder {
            name: None,
            failure_rate_threshold: 0.5,
            slow_call_rate_threshold: None,
            slow_call_duration: Duration::from_secs(60),
            window: WindowKind::Count(100),
            minimum_calls: 100,
            open_duration: Duration::from_secs(60),
            open_duration_multiplier: 1.0,
            max_open_duration: None,
            permitted_in_half_open: 10,
            max_wait_in_half_open: Duration::ZERO,
            counts_as_failure: default_counts,
            initial_state: BreakerState::Closed,
        }
    }
}
