//! Limit algorithms: how a concurrency limit moves with what the limiter observes.
//!
//! Both follow Netflix's concurrency-limits. **AIMD** is TCP's congestion control applied
//! to calls: grow the limit by one while it is being used, cut it by a ratio when a call is
//! dropped (timed out, rejected downstream, or answered "overloaded"). **Gradient2** watches
//! latency instead: it compares a short-term RTT with a slowly moving long-term average,
//! and shrinks the limit as the short-term one rises above it (queueing somewhere), leaving
//! headroom (`queue_size`) to keep probing.

use std::time::Duration;

use crate::config::{ConfigError, ensure, ensure_range};

/// One finished call, as a limit algorithm sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// How long it took.
    pub rtt: Duration,
    /// Calls in flight when it started (itself included).
    pub in_flight: usize,
    /// Whether it was dropped: timed out, or answered with an overload signal.
    pub dropped: bool,
}

/// How the limit is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum LimitAlgorithm {
    /// A fixed limit: plain load shedding.
    Fixed(usize),
    /// Additive increase, multiplicative decrease.
    Aimd(Aimd),
    /// Latency-gradient based.
    Gradient2(Gradient2),
}

/// AIMD settings. Defaults: start 20, range 1..=200, back off to 90%, a call slower than
/// 5 s counts as dropped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Aimd {
    /// The starting limit.
    pub initial: usize,
    /// Never below this.
    pub min: usize,
    /// Never above this.
    pub max: usize,
    /// Multiplier applied on a drop, in (0, 1).
    pub backoff_ratio: f64,
    /// A call at least this slow counts as a drop.
    pub timeout: Duration,
}

impl Default for Aimd {
    fn default() -> Self {
        Aimd {
            initial: 20,
            min: 1,
            max: 200,
            backoff_ratio: 0.9,
            timeout: Duration::from_secs(5),
        }
    }
}

/// Gradient2 settings. Defaults follow Netflix: start 20, range 1..=200, tolerance 1.5,
/// smoothing 0.2, long window 600 samples, queue size 4.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gradient2 {
    /// The starting limit.
    pub initial: usize,
    /// Never below this.
    pub min: usize,
    /// Never above this.
    pub max: usize,
    /// How much the short RTT may exceed the long one before the limit shrinks (>= 1).
    pub rtt_tolerance: f64,
    /// Weight of each new estimate, in (0, 1].
    pub smoothing: f64,
    /// Samples in the long-term exponential average.
    pub long_window: u32,
    /// Headroom added to each estimate so the limit keeps probing upward.
    pub queue_size: usize,
}

impl Default for Gradient2 {
    fn default() -> Self {
        Gradient2 {
            initial: 20,
            min: 1,
            max: 200,
            rtt_tolerance: 1.5,
            smoothing: 0.2,
            long_window: 600,
            queue_size: 4,
        }
    }
}

impl LimitAlgorithm {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        const P: &str = "concurrency limiter";
        match *self {
            LimitAlgorithm::Fixed(n) => ensure(n >= 1, P, "limit", "must be at least 1"),
            LimitAlgorithm::Aimd(a) => {
                ensure(a.min >= 1, P, "aimd.min", "must be at least 1")?;
                ensure(
                    a.min <= a.initial && a.initial <= a.max,
                    P,
                    "aimd.initial",
                    "must be within [min, max]",
                )?;
                ensure_range(a.backoff_ratio, 0.01, 0.99, P, "aimd.backoff_ratio")?;
                ensure(
                    a.timeout > Duration::ZERO,
                    P,
                    "aimd.timeout",
                    "must be positive",
                )
            }
            LimitAlgorithm::Gradient2(g) => {
                ensure(g.min >= 1, P, "gradient2.min", "must be at least 1")?;
                ensure(
                    g.min <= g.initial && g.initial <= g.max,
                    P,
                    "gradient2.initial",
                    "must be within [min, max]",
                )?;
                ensure_range(g.rtt_tolerance, 1.0, 100.0, P, "gradient2.rtt_tolerance")?;
                ensure_range(g.smoothing, 0.01, 1.0, P, "gradient2.smoothing")?;
                ensure(
                    g.long_window >= 1,
                    P,
                    "gradient2.long_window",
                    "must be at least 1",
                )
            }
        }
    }

    pub(crate) fn initial(&self) -> usize {
        match *self {
            LimitAlgorithm::Fixed(n) => n,
            LimitAlgorithm::Aimd(a) => a.initial,
            LimitAlgorithm::Gradient2(g) => g.initial,
        }
    }
}

/// The algorithm plus its running state.
#[derive(Debug, Clone)]
pub(crate) struct LimitState {
    algorithm: LimitAlgorithm,
    /// Gradient2's estimate, kept fractional between samples.
    estimate: f64,
    long_rtt: Option<f64>,
}

impl LimitState {
    pub fn new(algorithm: LimitAlgorithm) -> Self {
        LimitState {
            algorithm,
            estimate: algorithm.initial() as f64,
            long_rtt: None,
        }
    }

    /// Folds in one sample and returns the new limit.
    pub fn update(&mut self, limit: usize, s: Sample) -> usize {
        match self.algorithm {
            LimitAlgorithm::Fixed(n) => n,
            LimitAlgorithm::Aimd(a) => {
                if s.dropped || s.rtt >= a.timeout {
                    ((limit as f64 * a.backoff_ratio).floor() as usize).max(a.min)
                } else if s.in_flight * 2 >= limit {
                    (limit + 1).min(a.max)
                } else {
                    limit
                }
            }
            LimitAlgorithm::Gradient2(g) => {
                let short = s.rtt.as_secs_f64().max(1e-9);
                let long = match self.long_rtt {
                    None => short,
                    Some(prev) => {
                        let k = 2.0 / (f64::from(g.long_window) + 1.0);
                        prev * (1.0 - k) + short * k
                    }
                };
                // If the long average drifted far above recent RTTs (a past slow spell),
                // pull it down so that it can recover (Netflix's drift correction).
                let long = if long / short > 2.0 {
                    long * 0.95
                } else {
                    long
                };
                self.long_rtt = Some(long);
                // App-limited: with fewer than half the slots used, latency says nothing
                // about the limit; do not grow it (the unbounded-growth bug).
                if s.in_flight * 2 < limit {
                    return limit;
                }
                let gradient = (g.rtt_tolerance * long / short).clamp(0.5, 1.0);
                let target = self.estimate * gradient + g.queue_size as f64;
                let next = self.estimate * (1.0 - g.smoothing) + target * g.smoothing;
                self.estimate = next.clamp(g.min as f64, g.max as f64);
                self.estimate as usize
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(rtt_ms: u64, in_flight: usize, dropped: bool) -> Sample {
        Sample {
            rtt: Duration::from_millis(rtt_ms),
            in_flight,
            dropped,
        }
    }

    #[test]
    fn aimd_grows_while_used_and_backs_off_on_drop() {
        let mut st = LimitState::new(LimitAlgorithm::Aimd(Aimd::default()));
        assert_eq!(st.update(20, sample(10, 10, false)), 21, "half used: grow");
        assert_eq!(st.update(20, sample(10, 5, false)), 20, "little used: hold");
        assert_eq!(st.update(20, sample(10, 20, true)), 18, "drop: x0.9");
        assert_eq!(
            st.update(20, sample(6000, 20, false)),
            18,
            "too slow counts as a drop"
        );
        assert_eq!(st.update(1, sample(10, 1, true)), 1, "never below min");
    }

    #[test]
    fn gradient2_shrinks_when_latency_rises_and_grows_when_it_is_steady() {
        let mut st = LimitState::new(LimitAlgorithm::Gradient2(Gradient2::default()));
        let mut limit = 20;
        for _ in 0..50 {
            limit = st.update(limit, sample(10, limit, false));
        }
        assert!(limit > 20, "steady latency with full use grows: {limit}");
        let grown = limit;
        for _ in 0..50 {
            limit = st.update(limit, sample(100, limit, false));
        }
        assert!(limit < grown, "10x latency shrinks: {grown} -> {limit}");
    }

    #[test]
    fn gradient2_does_not_grow_when_app_limited() {
        let mut st = LimitState::new(LimitAlgorithm::Gradient2(Gradient2::default()));
        let mut limit = 20;
        for _ in 0..1000 {
            limit = st.update(limit, sample(10, 2, false));
        }
        assert_eq!(limit, 20);
    }

    proptest! {
        #[test]
        fn limits_stay_within_bounds(
            samples in prop::collection::vec((1u64..10_000, 0usize..300, any::<bool>()), 1..300),
            gradient in any::<bool>(),
        ) {
            let algo = if gradient {
                LimitAlgorithm::Gradient2(Gradient2::default())
            } else {
                LimitAlgorithm::Aimd(Aimd::default())
            };
            let mut st = LimitState::new(algo);
            let mut limit = algo.initial();
            for (rtt, in_flight, dropped) in samples {
                limit = st.update(limit, sample(rtt, in_flight, dropped));
                prop_assert!((1..=200).contains(&limit), "limit {limit}");
            }
        }
    }
}
