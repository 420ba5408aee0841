//! A retry schedule as a value: what a durable job stores to know when to try again.
//!
//! An in-process [`Retry`](crate::Retry) keeps its backoff state in memory; a job that is
//! retried by a queue must survive a restart between attempts. [`RetrySchedule`] is the
//! whole retry rule — maximum attempts, [`Backoff`], [`Jitter`] and the cap — as one
//! serialisable, validated value, and the delay before attempt *n* is a pure function of
//! `(schedule, n, seed)`: a worker that restarts recomputes exactly the delay that the
//! crashed one would have used. [`RetryAt`] is the stored form of `Retry-After`: an absolute
//! wall-clock time rather than a duration that means nothing once the process is gone.
//!
//! [`Retry`](crate::Retry) and the concurrency layer's supervisor run on this type, so a
//! schedule behaves the same in-process and in the queue.
//!
//! **When not to use it:** to decide *whether* to retry (that is the error's
//! [`ErrorClass`](crate::ErrorClass)), or to sleep (this type only computes).
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use windlass_policy::{Backoff, Jitter, RetryAt, RetrySchedule};
//!
//! let schedule = RetrySchedule {
//!     max_attempts: 5,
//!     backoff: Backoff::exponential(Duration::from_secs(1)),
//!     jitter: Jitter::Full,
//!     max_delay: Duration::from_secs(60),
//! };
//! schedule.validate().unwrap();
//! // Stored as JSON on the job; read back after a restart, it gives the same delays.
//! let stored = serde_json::to_string(&schedule).unwrap();
//! let back: RetrySchedule = serde_json::from_str(&stored).unwrap();
//! assert_eq!(back.delay_before(3, 42), schedule.delay_before(3, 42));
//! assert_eq!(schedule.delay_before(1, 42), Some(Duration::ZERO));
//! assert_eq!(schedule.delay_before(6, 42), None); // there is no sixth attempt
//!
//! // Attempt 2 failed with "retry after 90 s": attempt 3 waits for that, not the backoff.
//! let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
//! let asked = RetryAt::after(now, Duration::from_secs(90));
//! let next = schedule.next_attempt_at(2, 42, now, Some(asked)).unwrap();
//! assert_eq!(next, asked);
//! ```

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::backoff::{self, Backoff, Jitter, JitterState};
use crate::config::{ConfigError, ensure, ensure_range};

/// Maximum attempts, backoff, jitter and cap: the whole rule for when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySchedule {
    /// Attempts in all, the first one included (at least 1; 1 means "never retry").
    pub max_attempts: u32,
    /// The base delay before each retry.
    pub backoff: Backoff,
    /// How the base delay is randomised.
    pub jitter: Jitter,
    /// No delay is longer than this (positive; `Duration::MAX` means no cap).
    pub max_delay: Duration,
}

impl Default for RetrySchedule {
    /// Three attempts, exponential backoff from 100 ms with full jitter, capped at 30 s.
    fn default() -> Self {
        RetrySchedule {
            max_attempts: 3,
            backoff: Backoff::exponential(Duration::from_millis(100)),
            jitter: Jitter::Full,
            max_delay: Duration::from_secs(30),
        }
    }
}

impl RetrySchedule {
    /// Checks every field, naming the first that is wrong.
    ///
    /// Rejected: zero attempts; an exponential factor outside `[1, 1e6]`; a zero initial
    /// delay for linear or exponential backoff (it would never grow: use
    /// `Backoff::Constant(Duration::ZERO)` to retry at once); a proportional jitter factor
    /// outside `[0, 1]`; a zero cap.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_as("retry schedule")
    }

    /// [`validate`](Self::validate), naming `component` in the error.
    pub fn validate_as(&self, component: &'static str) -> Result<(), ConfigError> {
        let c = component;
        ensure(
            self.max_attempts >= 1,
            c,
            "max_attempts",
            "must be at least 1",
        )?;
        match self.backoff {
            Backoff::Exponential { initial, factor } => {
                ensure_range(factor, 1.0, 1e6, c, "backoff.factor")?;
                ensure(
                    initial > Duration::ZERO,
                    c,
                    "backoff.initial",
                    "must be positive",
                )?;
            }
            Backoff::Linear { initial, step } => ensure(
                initial > Duration::ZERO || step > Duration::ZERO,
                c,
                "backoff.initial",
                "and step cannot both be zero (use a constant zero backoff to retry at once)",
            )?,
            Backoff::Constant(_) => {}
        }
        if let Jitter::Proportional(f) = self.jitter {
            ensure_range(f, 0.0, 1.0, c, "jitter.factor")?;
        }
        ensure(
            self.max_delay > Duration::ZERO,
            c,
            "max_delay",
            "must be positive",
        )
    }

    /// The delay before attempt `attempt` (attempts start at 1; the first has no delay),
    /// for the given jitter `seed`. `None` when there is no such attempt: `attempt` is 0 or
    /// beyond `max_attempts`.
    ///
    /// Deterministic: the same schedule, attempt and seed always give the same delay, in any
    /// process.
    pub fn delay_before(&self, attempt: u32, seed: u64) -> Option<Duration> {
        match attempt {
            0 => None,
            1 => Some(Duration::ZERO),
            n if n > self.max_attempts => None,
            n => Some(self.retry_delay(n - 1, seed)),
        }
    }

    /// The delay before retry `retry` (retry 1 comes before attempt 2), ignoring
    /// `max_attempts`: for restart loops that are bounded another way. Retry 0 is treated as
    /// retry 1.
    pub fn retry_delay(&self, retry: u32, seed: u64) -> Duration {
        let retry = retry.max(1);
        let mut cursor = Cursor::new(seed);
        if matches!(self.jitter, Jitter::Decorrelated | Jitter::DecorrelatedV2) {
            // These jitters depend on the previous delay: replay the chain.
            for k in 1..retry {
                cursor.next(self, k);
            }
        }
        cursor.next(self, retry)
    }

    /// When attempt `failed_attempt + 1` may start, given that attempt `failed_attempt`
    /// failed at `now` and the other side may have asked for `retry_after`: the later of the
    /// backoff and the request. `None` when `failed_attempt` was the last attempt.
    pub fn next_attempt_at(
        &self,
        failed_attempt: u32,
        seed: u64,
        now: SystemTime,
        retry_after: Option<RetryAt>,
    ) -> Option<RetryAt> {
        let delay = self.delay_before(failed_attempt.checked_add(1)?, seed)?;
        let backoff = RetryAt::after(now, delay);
        Some(match retry_after {
            Some(asked) if asked > backoff => asked,
            _ => backoff,
        })
    }
}

/// Walks a schedule's delays in order, carrying the jitter state between them. The random
/// number for retry `k` is a pure function of `(seed, k)`, so a cursor and a replay from
/// scratch agree exactly.
#[derive(Debug, Clone)]
pub(crate) struct Cursor {
    seed: u64,
    state: JitterState,
}

impl Cursor {
    pub(crate) fn new(seed: u64) -> Self {
        Cursor {
            seed,
            state: JitterState::default(),
        }
    }

    /// The delay before retry `k` (1-based); call with `k = 1, 2, ...` in order.
    pub(crate) fn next(&mut self, schedule: &RetrySchedule, k: u32) -> Duration {
        let mut draw = 0u64;
        let seed = self.seed;
        backoff::delay(
            &schedule.backoff,
            schedule.jitter,
            schedule.max_delay,
            k,
            &mut self.state,
            || {
                draw += 1;
                unit(splitmix(seed ^ splitmix(u64::from(k)) ^ draw))
            },
        )
    }
}

/// SplitMix64: a fast, well-mixed 64-bit hash (Steele, Lea and Flood, 2014).
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The top 53 bits as a float in `[0, 1)`.
fn unit(bits: u64) -> f64 {
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// `Retry-After` in a form that can be stored: an absolute wall-clock time, kept as
/// milliseconds since the Unix epoch (serialised as that number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RetryAt {
    unix_millis: u64,
}

impl RetryAt {
    /// `delay` after `now` (saturating far in the future for "forever").
    pub fn after(now: SystemTime, delay: Duration) -> Self {
        let base = Self::at(now).unix_millis;
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        RetryAt {
            unix_millis: base.saturating_add(delay_ms),
        }
    }

    /// The given wall-clock time (times before the epoch become the epoch).
    pub fn at(time: SystemTime) -> Self {
        let ms = time
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        RetryAt { unix_millis: ms }
    }

    /// From milliseconds since the Unix epoch.
    pub fn from_unix_millis(unix_millis: u64) -> Self {
        RetryAt { unix_millis }
    }

    /// Milliseconds since the Unix epoch.
    pub fn unix_millis(self) -> u64 {
        self.unix_millis
    }

    /// As a wall-clock time (saturating at the largest time the platform can hold).
    pub fn system_time(self) -> SystemTime {
        SystemTime::UNIX_EPOCH
            .checked_add(Duration::from_millis(self.unix_millis))
            .unwrap_or(SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(u32::MAX) * 64))
    }

    /// How long from `now` until this time (zero if it has passed).
    pub fn remaining(self, now: SystemTime) -> Duration {
        Duration::from_millis(self.unix_millis.saturating_sub(Self::at(now).unix_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use windlass_test_support::ms;

    fn schedule(jitter: Jitter) -> RetrySchedule {
        RetrySchedule {
            max_attempts: 8,
            backoff: Backoff::exponential(ms(100)),
            jitter,
            max_delay: Duration::from_secs(10),
        }
    }

    const JITTERS: [Jitter; 6] = [
        Jitter::None,
        Jitter::Full,
        Jitter::Equal,
        Jitter::Proportional(0.25),
        Jitter::Decorrelated,
        Jitter::DecorrelatedV2,
    ];

    #[test]
    fn no_jitter_gives_the_plain_exponential_curve() {
        let s = schedule(Jitter::None);
        let d: Vec<_> = (1..=5).map(|n| s.delay_before(n, 0).unwrap()).collect();
        assert_eq!(d, vec![ms(0), ms(100), ms(200), ms(400), ms(800)]);
        assert_eq!(s.delay_before(0, 0), None);
        assert_eq!(s.delay_before(9, 0), None);
    }

    #[test]
    fn every_field_is_validated_by_name() {
        let bad = |f: fn(&mut RetrySchedule)| {
            let mut s = RetrySchedule::default();
            f(&mut s);
            s.validate().unwrap_err().field()
        };
        assert_eq!(bad(|s| s.max_attempts = 0), "max_attempts");
        assert_eq!(bad(|s| s.max_delay = Duration::ZERO), "max_delay");
        assert_eq!(
            bad(|s| s.jitter = Jitter::Proportional(1.5)),
            "jitter.factor"
        );
        assert_eq!(
            bad(|s| s.jitter = Jitter::Proportional(-0.1)),
            "jitter.factor"
        );
        assert_eq!(
            bad(|s| s.backoff = Backoff::Exponential {
                initial: ms(1),
                factor: 0.5
            }),
            "backoff.factor"
        );
        assert_eq!(
            bad(|s| s.backoff = Backoff::Exponential {
                initial: ms(1),
                factor: f64::NAN
            }),
            "backoff.factor"
        );
        assert_eq!(
            bad(|s| s.backoff = Backoff::exponential(Duration::ZERO)),
            "backoff.initial"
        );
        assert_eq!(
            bad(|s| s.backoff = Backoff::Linear {
                initial: Duration::ZERO,
                step: Duration::ZERO
            }),
            "backoff.initial"
        );
        let ok = RetrySchedule {
            backoff: Backoff::Constant(Duration::ZERO),
            max_delay: Duration::MAX,
            ..RetrySchedule::default()
        };
        assert_eq!(
            ok.validate(),
            Ok(()),
            "retry at once, no cap: both meaningful"
        );
    }

    #[test]
    fn serde_round_trip_and_unknown_fields_rejected() {
        for jitter in JITTERS {
            let s = schedule(jitter);
            let json = serde_json::to_string(&s).unwrap();
            let back: RetrySchedule = serde_json::from_str(&json).unwrap();
            assert_eq!(back, s, "{json}");
        }
        let json = r#"{"max_attempts":3,"backoff":{"kind":"constant","secs":1,"nanos":0},
            "jitter":{"kind":"none"},"max_delay":{"secs":5,"nanos":0},"typo":1}"#;
        assert!(serde_json::from_str::<RetrySchedule>(json).is_err());
        let json = json.replace(r#","typo":1"#, "");
        let s: RetrySchedule = serde_json::from_str(&json).unwrap();
        assert_eq!(s.delay_before(2, 0), Some(Duration::from_secs(1)));
    }

    #[test]
    fn retry_at_is_absolute_and_saturates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10);
        let at = RetryAt::after(now, ms(1500));
        assert_eq!(at.unix_millis(), 11_500);
        assert_eq!(at.remaining(now), ms(1500));
        assert_eq!(at.remaining(now + Duration::from_secs(60)), Duration::ZERO);
        assert_eq!(RetryAt::after(now, Duration::MAX).unix_millis(), u64::MAX);
        assert_eq!(serde_json::to_string(&at).unwrap(), "11500");
        let s = schedule(Jitter::None);
        assert_eq!(
            s.next_attempt_at(1, 0, now, None),
            Some(RetryAt::after(now, ms(100)))
        );
        assert_eq!(
            s.next_attempt_at(1, 0, now, Some(RetryAt::after(now, ms(50)))),
            Some(RetryAt::after(now, ms(100))),
            "an earlier Retry-After does not shorten the backoff"
        );
        assert_eq!(
            s.next_attempt_at(8, 0, now, None),
            None,
            "8 was the last attempt"
        );
        assert_eq!(s.next_attempt_at(u32::MAX, 0, now, None), None);
    }

    proptest! {
        /// A worker that restarts between attempts recomputes the same delay as the cursor
        /// that ran without a restart.
        #[test]
        fn replay_from_any_attempt_matches_the_live_cursor(seed in any::<u64>(), j in 0usize..6) {
            let s = schedule(JITTERS[j]);
            let mut cursor = Cursor::new(seed);
            for attempt in 2..=s.max_attempts {
                let live = cursor.next(&s, attempt - 1);
                prop_assert_eq!(s.delay_before(attempt, seed), Some(live));
                prop_assert!(live <= s.max_delay);
            }
        }

        /// Different seeds spread the delays: jitter is not a constant.
        #[test]
        fn seeds_decorrelate(seed in any::<u64>()) {
            let s = schedule(Jitter::Full);
            let a: Vec<_> = (2..=8).map(|n| s.delay_before(n, seed)).collect();
            let b: Vec<_> = (2..=8).map(|n| s.delay_before(n, seed.wrapping_add(1))).collect();
            prop_assert_ne!(a, b);
        }
    }
}
