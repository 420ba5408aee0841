//! Backoff schedules and jitter: how long to wait before retry number *n*.
//!
//! The schedule ([`Backoff`]) gives a base delay for each retry; jitter ([`Jitter`]) spreads
//! the delays of many clients so that they do not retry in lockstep and hit a recovering
//! service all at once. AWS's simulations found full and decorrelated jitter cut total calls
//! the most; no jitter is the clear loser. Every delay is capped.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The base delay schedule. Retry numbers start at 1 (the wait before the second attempt).
///
/// Serialised with a `kind` tag (`{"kind": "exponential", "initial": ..., "factor": 2.0}`),
/// so that a job can store its schedule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Backoff {
    /// The same delay before every retry. Zero is meaningful: retry at once.
    Constant(Duration),
    /// `initial + step * (n - 1)`.
    Linear {
        /// Delay before the first retry.
        initial: Duration,
        /// Added for each further retry.
        step: Duration,
    },
    /// `initial * factor^(n - 1)`.
    Exponential {
        /// Delay before the first retry.
        initial: Duration,
        /// Growth factor, at least 1.
        factor: f64,
    },
}

impl Backoff {
    /// Exponential backoff doubling from `initial`.
    pub fn exponential(initial: Duration) -> Self {
        Backoff::Exponential {
            initial,
            factor: 2.0,
        }
    }

    /// The first delay of the schedule.
    pub fn initial(&self) -> Duration {
        match *self {
            Backoff::Constant(d) => d,
            Backoff::Linear { initial, .. } | Backoff::Exponential { initial, .. } => initial,
        }
    }

    /// The base delay before retry `n` (1-based), before jitter, capped at `cap`.
    pub(crate) fn base(&self, n: u32, cap: Duration) -> Duration {
        let n = n.max(1);
        let secs = match *self {
            Backoff::Constant(d) => d.as_secs_f64(),
            Backoff::Linear { initial, step } => {
                initial.as_secs_f64() + step.as_secs_f64() * f64::from(n - 1)
            }
            Backoff::Exponential { initial, factor } => {
                // powi saturates to +inf, which the clamp below turns into the cap.
                let exp = i32::try_from(n - 1).unwrap_or(i32::MAX);
                initial.as_secs_f64() * factor.powi(exp)
            }
        };
        clamp_secs(secs, cap)
    }
}

/// How a base delay is randomised.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "factor", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Jitter {
    /// No jitter: every client waits exactly the base delay.
    None,
    /// Full jitter (AWS): uniform in `[0, base]`.
    Full,
    /// Equal jitter (AWS): `base/2 + uniform[0, base/2]`.
    Equal,
    /// Proportional jitter: `base * (1 ± factor)`, factor in `[0, 1]` (Polly uses 0.25 for
    /// constant and linear schedules).
    Proportional(f64),
    /// Decorrelated jitter (AWS): `min(cap, uniform[initial, 3 * previous])`. Ignores the
    /// schedule's growth; it grows by itself.
    Decorrelated,
    /// Polly's decorrelated jitter "V2": a smooth exponential curve with jitter whose median
    /// first delay is the schedule's initial delay, without the clustering of AWS's version.
    DecorrelatedV2,
}

/// Per-call state a jitter needs between retries.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct JitterState {
    prev_delay: Option<Duration>,
    prev_v2: f64,
}

/// Computes the delay before retry `n` (1-based). `rand` returns uniform values in `[0, 1)`.
pub(crate) fn delay(
    backoff: &Backoff,
    jitter: Jitter,
    cap: Duration,
    n: u32,
    state: &mut JitterState,
    mut rand: impl FnMut() -> f64,
) -> Duration {
    let base = backoff.base(n, cap);
    let out = match jitter {
        Jitter::None => base,
        Jitter::Full => clamp_secs(base.as_secs_f64() * rand(), cap),
        Jitter::Equal => {
            let half = base.as_secs_f64() / 2.0;
            clamp_secs(half + half * rand(), cap)
        }
        Jitter::Proportional(f) => {
            let spread = (rand() * 2.0 - 1.0) * f;
            clamp_secs(base.as_secs_f64() * (1.0 + spread), cap)
        }
        Jitter::Decorrelated => {
            let initial = backoff.initial().min(cap).as_secs_f64();
            let prev = state.prev_delay.map_or(initial, |d| d.as_secs_f64());
            let hi = (prev * 3.0).max(initial);
            clamp_secs(initial + (hi - initial) * rand(), cap)
        }
        Jitter::DecorrelatedV2 => {
            const P_FACTOR: f64 = 4.0;
            const SCALING: f64 = 1.0 / 1.4;
            let t = f64::from(n - 1) + rand();
            let next = 2f64.powf(t) * (P_FACTOR * t).sqrt().tanh();
            let intrinsic = next - state.prev_v2;
            state.prev_v2 = next;
            clamp_secs(intrinsic * SCALING * backoff.initial().as_secs_f64(), cap)
        }
    };
    state.prev_delay = Some(out);
    out
}

fn clamp_secs(secs: f64, cap: Duration) -> Duration {
    if !secs.is_finite() || secs >= cap.as_secs_f64() {
        cap
    } else if secs <= 0.0 {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use windlass_test_support::ms;

    const CAP: Duration = Duration::from_secs(30);

    #[test]
    fn schedules_without_jitter() {
        let mut st = JitterState::default();
        let exp = Backoff::exponential(ms(100));
        let seq: Vec<_> = (1..=5)
            .map(|n| delay(&exp, Jitter::None, ms(1000), n, &mut st, || 0.5))
            .collect();
        assert_eq!(seq, vec![ms(100), ms(200), ms(400), ms(800), ms(1000)]);
        let lin = Backoff::Linear {
            initial: ms(100),
            step: ms(50),
        };
        assert_eq!(lin.base(3, CAP), ms(200));
        assert_eq!(Backoff::Constant(ms(7)).base(99, CAP), ms(7));
        // Huge retry numbers saturate at the cap instead of overflowing.
        assert_eq!(exp.base(u32::MAX, CAP), CAP);
    }

    #[test]
    fn jitter_extremes() {
        let b = Backoff::Constant(ms(100));
        let mut st = JitterState::default();
        assert_eq!(delay(&b, Jitter::Full, CAP, 1, &mut st, || 0.0), ms(0));
        assert_eq!(delay(&b, Jitter::Equal, CAP, 1, &mut st, || 0.0), ms(50));
        assert_eq!(
            delay(&b, Jitter::Proportional(0.25), CAP, 1, &mut st, || 0.0),
            ms(75)
        );
    }

    #[test]
    fn decorrelated_v2_median_first_delay_is_initial() {
        // Over many samples the median first delay is close to the configured initial delay.
        let b = Backoff::exponential(ms(1000));
        let mut rng = fastrand::Rng::with_seed(7);
        let mut firsts: Vec<f64> = (0..2001)
            .map(|_| {
                let mut st = JitterState::default();
                delay(&b, Jitter::DecorrelatedV2, CAP, 1, &mut st, || rng.f64()).as_secs_f64()
            })
            .collect();
        firsts.sort_by(f64::total_cmp);
        let median = firsts[1000];
        assert!((0.8..1.2).contains(&median), "median first delay {median}");
    }

    fn backoffs() -> impl Strategy<Value = Backoff> {
        prop_oneof![
            (0u64..5_000).prop_map(|v| Backoff::Constant(ms(v))),
            (0u64..5_000, 0u64..5_000).prop_map(|(i, s)| Backoff::Linear {
                initial: ms(i),
                step: ms(s)
            }),
            (0u64..5_000, 1.0f64..4.0).prop_map(|(i, f)| Backoff::Exponential {
                initial: ms(i),
                factor: f
            }),
        ]
    }

    proptest! {
        #[test]
        fn every_delay_within_bounds(
            b in backoffs(),
            cap_ms in 1u64..60_000,
            seed in any::<u64>(),
            retries in 1u32..40,
        ) {
            let cap = ms(cap_ms);
            let mut rng = fastrand::Rng::with_seed(seed);
            for jitter in [Jitter::None, Jitter::Full, Jitter::Equal, Jitter::Proportional(0.3),
                           Jitter::Decorrelated, Jitter::DecorrelatedV2] {
                let mut st = JitterState::default();
                let mut prev: Option<Duration> = None;
                for n in 1..=retries {
                    let base = b.base(n, cap);
                    let d = delay(&b, jitter, cap, n, &mut st, || rng.f64());
                    prop_assert!(d <= cap, "{jitter:?} gave {d:?} over cap {cap:?}");
                    match jitter {
                        Jitter::None => prop_assert_eq!(d, base),
                        Jitter::Full => prop_assert!(d <= base),
                        Jitter::Equal => prop_assert!(d <= base && d + ms(1) >= base / 2),
                        Jitter::Proportional(f) => {
                            let lo = base.as_secs_f64() * (1.0 - f) - 1e-6;
                            prop_assert!(d.as_secs_f64() >= lo);
                        }
                        Jitter::Decorrelated => {
                            let init = b.initial().min(cap);
                            let hi = (prev.unwrap_or(init) * 3).max(init).min(cap);
                            prop_assert!(d + Duration::from_nanos(1) >= init.min(cap) && d <= hi + Duration::from_nanos(1),
                                "decorrelated {d:?} outside [{init:?}, {hi:?}]");
                        }
                        Jitter::DecorrelatedV2 => {}
                    }
                    prev = Some(d);
                }
            }
        }

        /// Polly's V2 delays telescope: uncapped, the first `n` delays add up to the curve
        /// `2^t * tanh(sqrt(4t)) / 1.4 * initial` at some `t` in `[n-1, n)`, so the total
        /// wait grows exponentially and never falls behind or races ahead of the curve.
        #[test]
        fn decorrelated_v2_total_follows_the_exponential_curve(
            initial_ms in 1u64..2_000,
            seed in any::<u64>(),
            retries in 1u32..20,
        ) {
            let b = Backoff::exponential(ms(initial_ms));
            let cap = Duration::from_secs(1 << 40);
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut st = JitterState::default();
            let mut total = 0.0;
            for n in 1..=retries {
                let d = delay(&b, Jitter::DecorrelatedV2, cap, n, &mut st, || rng.f64());
                total += d.as_secs_f64();
                let curve = |t: f64| 2f64.powf(t) * (4.0 * t).sqrt().tanh() / 1.4 * b.initial().as_secs_f64();
                let (lo, hi) = (curve(f64::from(n - 1)), curve(f64::from(n)));
                prop_assert!(total >= lo * (1.0 - 1e-9) - 1e-9 && total <= hi * (1.0 + 1e-9) + 1e-9,
                    "after {n} retries the total {total} s is outside [{lo}, {hi}]");
            }
        }

        #[test]
        fn base_schedule_never_shrinks(b in backoffs(), n in 1u32..60) {
            prop_assert!(b.base(n + 1, CAP) >= b.base(n, CAP));
        }
    }
}
