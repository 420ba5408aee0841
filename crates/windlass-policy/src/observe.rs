//! Seeing every policy: a process-wide list of named policies and their live state.
//!
//! Each policy built with a name registers itself here (weakly: the list never keeps a
//! policy alive). [`snapshot`] answers "which breakers exist and which are open?" without
//! the application keeping its own list. Numbers go to the `metrics` facade (handles are
//! registered once, when the policy is built, so the hot path only bumps an atomic), and
//! events to `tracing`.
//!
//! ```
//! use windlass_policy::{observe, CircuitBreaker};
//!
//! let breaker = CircuitBreaker::builder().name("payments").build().unwrap();
//! let all = observe::snapshot();
//! assert!(all.iter().any(|p| p.name.as_ref() == "payments"));
//! # drop(breaker);
//! ```

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

pub use crate::breaker::BreakerState;

/// What kind of policy a snapshot describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PolicyKind {
    /// [`Retry`](crate::Retry).
    Retry,
    /// [`CircuitBreaker`](crate::CircuitBreaker).
    CircuitBreaker,
    /// [`Bulkhead`](crate::Bulkhead).
    Bulkhead,
    /// [`RateLimiter`](crate::RateLimiter).
    RateLimiter,
    /// [`ConcurrencyLimiter`](crate::ConcurrencyLimiter).
    ConcurrencyLimiter,
    /// [`Hedge`](crate::Hedge).
    Hedge,
}

/// The live state of one policy.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum PolicyState {
    /// A retry policy's counters.
    Retry {
        /// Calls made through it.
        calls: u64,
        /// Retries it made (attempts beyond the first).
        retries: u64,
        /// Calls on which it gave up.
        gave_up: u64,
    },
    /// A circuit breaker's state and window.
    CircuitBreaker {
        /// The current state.
        state: BreakerState,
        /// Failure rate, 0..=1, over the calls the current state judges: the sliding window
        /// when closed, the probes when half-open, and, when open, the calls that opened it.
        /// `None` while too few calls were seen to judge (below `minimum_calls`, or before
        /// every half-open probe finished): never a healthy-looking 0 that was not measured.
        failure_rate: Option<f64>,
        /// Slow-call rate over the same calls, 0..=1; `None` as for `failure_rate`.
        slow_call_rate: Option<f64>,
        /// How many calls those are.
        calls_in_window: u64,
        /// How many times it has opened since it was built.
        openings: u64,
        /// When open: time until it admits a probe.
        retry_after: Option<Duration>,
    },
    /// A bulkhead's usage.
    Bulkhead {
        /// Slots in use.
        in_use: usize,
        /// Calls waiting for a slot.
        queued: usize,
        /// The concurrency limit.
        max_concurrent: usize,
    },
    /// A rate limiter's counters.
    RateLimiter {
        /// Calls admitted.
        admitted: u64,
        /// Calls rejected.
        rejected: u64,
    },
    /// A concurrency limiter's current limit.
    ConcurrencyLimiter {
        /// The limit now in force.
        limit: usize,
        /// Calls in flight.
        in_flight: usize,
        /// Calls shed so far.
        shed: u64,
    },
    /// A hedge policy's counters.
    Hedge {
        /// Extra attempts started.
        hedges: u64,
        /// Calls won by an extra attempt rather than the first.
        hedge_wins: u64,
    },
}

/// One registered policy.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicySnapshot {
    /// The name it was built with.
    pub name: Arc<str>,
    /// Its kind.
    pub kind: PolicyKind,
    /// Its live state.
    pub state: PolicyState,
}

/// Implemented by each policy's shared state.
pub(crate) trait Inspect: Send + Sync {
    fn inspect(&self) -> PolicySnapshot;
}

static REGISTRY: Mutex<Vec<Weak<dyn Inspect>>> = Mutex::new(Vec::new());

/// Adds a policy's shared state to the registry (weakly: the registry never keeps it alive).
pub(crate) fn register<T: Inspect + 'static>(policy: &Arc<T>) {
    let weak: Weak<dyn Inspect> = Arc::downgrade(policy) as Weak<dyn Inspect>;
    let mut list = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
    list.retain(|w| w.strong_count() > 0);
    list.push(weak);
}

/// The live state of every policy that is still alive, in the order they were built.
pub fn snapshot() -> Vec<PolicySnapshot> {
    let live: Vec<Arc<dyn Inspect>> = {
        let mut list = REGISTRY.lock().unwrap_or_else(PoisonError::into_inner);
        list.retain(|w| w.strong_count() > 0);
        list.iter().filter_map(Weak::upgrade).collect()
    };
    live.iter().map(|p| p.inspect()).collect()
}

/// The live state of the policies with this name.
pub fn find(name: &str) -> Vec<PolicySnapshot> {
    snapshot()
        .into_iter()
        .filter(|p| p.name.as_ref() == name)
        .collect()
}

/// Makes an unnamed policy's default name, unique in the process (`retry-3`).
pub(crate) fn default_name(kind: &str) -> Arc<str> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("{kind}-{}", NEXT.fetch_add(1, Ordering::Relaxed)).into()
}
