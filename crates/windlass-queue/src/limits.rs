//! Limits that hold across every worker process: how many jobs of a queue (and of each key
//! within it) may run at once, and how many may start per time window.
//!
//! **The problem.** A worker's own concurrency bounds one process. A partner API that allows
//! 10 calls at once, or 100 per minute, must be protected however many processes run; peers
//! keep this in paid tiers. Limits here are stored in the database
//! ([`Store::set_limits`](crate::Store::set_limits)) and enforced inside the claim: claims on
//! a limited queue are serialised (an advisory lock on PostgreSQL, the writer on SQLite), count what runs, take
//! tokens from buckets kept in the database, and claim only what fits.
//!
//! A job's *limit key* ([`JobOptions::limit_key`](crate::JobOptions::limit_key): a tenant, a
//! customer, a host) is what the per-key limits count by; jobs without one are only subject
//! to the queue's limits.
//!
//! Rate limits are token buckets: a bucket holds at most `count` tokens, refills at
//! `count / window`, and each job start takes one. A queue whose bucket is empty is not
//! claimed from until it refills (a fetcher looks again after its poll interval).
//!
//! **When not to use it:** for limits inside one process on calls a handler makes, use the
//! policy layer's `RateLimiter` and `Bulkhead`; they cost nanoseconds, these a database
//! round trip per claim.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::millis;
use crate::job::EnqueueError;

/// At most `count` starts per `window` (a token bucket of `count` tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    /// Starts per window, and the burst.
    pub count: u32,
    /// The window.
    pub window: Duration,
}

/// The limits of one queue, across all processes. `None` is "no limit".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct QueueLimits {
    /// Jobs of the queue running at once.
    pub max_running: Option<u32>,
    /// Jobs of one limit key running at once.
    pub max_running_per_key: Option<u32>,
    /// Job starts of the queue per window.
    pub rate: Option<Rate>,
    /// Job starts of one limit key per window.
    pub rate_per_key: Option<Rate>,
}

impl QueueLimits {
    /// Checks every limit, naming the first that is wrong.
    pub fn validate(&self) -> Result<(), EnqueueError> {
        let bad = |field, reason: &str| {
            Err(EnqueueError::InvalidOption {
                field,
                reason: reason.into(),
            })
        };
        if self.max_running == Some(0) {
            return bad("limits.max_running", "must be at least 1 (or no limit)");
        }
        if self.max_running_per_key == Some(0) {
            return bad(
                "limits.max_running_per_key",
                "must be at least 1 (or no limit)",
            );
        }
        for (field, rate) in [
            ("limits.rate", self.rate),
            ("limits.rate_per_key", self.rate_per_key),
        ] {
            if let Some(r) = rate
                && (r.count == 0
                    || r.window < Duration::from_millis(1)
                    || r.window > crate::job::MAX_DURATION)
            {
                return bad(
                    field,
                    "needs a count of at least 1 and a window of 1 ms to ~100 years",
                );
            }
        }
        Ok(())
    }

    /// True when nothing is limited: claims take the fast path.
    pub fn is_unlimited(&self) -> bool {
        *self == QueueLimits::default()
    }
}

/// A token bucket as stored: tokens, and when they were counted (ms since the Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    /// Tokens at `at_ms`.
    pub tokens: f64,
    /// When.
    pub at_ms: i64,
}

impl Bucket {
    /// A full bucket at `now_ms`.
    pub fn full(rate: Rate, now_ms: i64) -> Bucket {
        Bucket {
            tokens: f64::from(rate.count),
            at_ms: now_ms,
        }
    }

    /// The bucket refilled up to `now_ms` (never above `count`; a clock that went back
    /// refills nothing).
    pub fn refilled(self, rate: Rate, now_ms: i64) -> Bucket {
        let elapsed = (now_ms - self.at_ms).max(0) as f64;
        let per_ms = f64::from(rate.count) / millis(rate.window).max(1) as f64;
        Bucket {
            tokens: (self.tokens + elapsed * per_ms).min(f64::from(rate.count)),
            at_ms: now_ms.max(self.at_ms),
        }
    }

    /// Whole tokens available.
    pub fn whole(&self) -> u64 {
        if self.tokens <= 0.0 {
            0
        } else {
            self.tokens.floor() as u64
        }
    }
}

/// What a limited claim knows before it chooses: the candidates in claim order (id and
/// limit key) and the state of each limit.
#[derive(Debug, Clone, Default)]
pub struct ClaimBudget {
    /// At most this many in all (the claim's own limit, the queue's free running slots and
    /// its whole tokens, whichever is least).
    pub total: u64,
    /// Running jobs per key (keys of the candidates).
    pub running_per_key: HashMap<String, u64>,
    /// Whole tokens per key (keys of the candidates), when the queue has a per-key rate.
    pub tokens_per_key: Option<HashMap<String, u64>>,
}

/// Chooses, in claim order, the candidates that fit every limit. Pure: both backends call it
/// inside their serialised claim.
pub fn choose<'a>(
    candidates: &'a [(i64, Option<String>)],
    limits: &QueueLimits,
    mut budget: ClaimBudget,
) -> Vec<(i64, Option<&'a str>)> {
    let mut chosen = Vec::new();
    for (id, key) in candidates {
        if chosen.len() as u64 >= budget.total {
            break;
        }
        if let Some(key) = key {
            if let Some(max) = limits.max_running_per_key {
                let running = budget.running_per_key.entry(key.clone()).or_default();
                if *running >= u64::from(max) {
                    continue;
                }
            }
            if let Some(tokens) = budget.tokens_per_key.as_mut() {
                let t = tokens.entry(key.clone()).or_default();
                if *t == 0 {
                    continue;
                }
                *t -= 1;
            }
            *budget.running_per_key.entry(key.clone()).or_default() += 1;
        }
        chosen.push((*id, key.as_deref()));
    }
    chosen
}

/// How many tokens each key's bucket gives for `chosen` (one per chosen job with a key).
pub fn taken_per_key<'a>(chosen: &[(i64, Option<&'a str>)]) -> HashMap<&'a str, f64> {
    let mut taken = HashMap::new();
    for (_, key) in chosen {
        if let Some(k) = key {
            *taken.entry(*k).or_default() += 1.0;
        }
    }
    taken
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rate(count: u32, ms: u64) -> Rate {
        Rate {
            count,
            window: Duration::from_millis(ms),
        }
    }

    #[test]
    fn a_bucket_refills_at_count_per_window_up_to_count() {
        let r = rate(10, 1_000);
        let empty = Bucket {
            tokens: 0.0,
            at_ms: 0,
        };
        assert_eq!(empty.refilled(r, 100).whole(), 1);
        assert_eq!(empty.refilled(r, 550).whole(), 5);
        assert_eq!(empty.refilled(r, 60_000).whole(), 10, "never above count");
        assert_eq!(
            empty.refilled(r, -5_000).whole(),
            0,
            "a clock that went back refills nothing"
        );
    }

    #[test]
    fn per_key_limits_skip_a_full_key_and_take_the_next() {
        let c = vec![
            (1, Some("a".to_string())),
            (2, Some("a".to_string())),
            (3, Some("b".to_string())),
            (4, None),
            (5, Some("a".to_string())),
        ];
        let limits = QueueLimits {
            max_running_per_key: Some(1),
            ..QueueLimits::default()
        };
        let budget = ClaimBudget {
            total: 10,
            running_per_key: HashMap::from([("b".to_string(), 1)]),
            tokens_per_key: None,
        };
        let ids: Vec<i64> = choose(&c, &limits, budget).iter().map(|c| c.0).collect();
        assert_eq!(
            ids,
            vec![1, 4],
            "a: one slot; b: already full; no key: only the queue's limits"
        );
    }

    #[test]
    fn bad_limits_name_their_field() {
        let cases = [
            (
                "limits.max_running",
                QueueLimits {
                    max_running: Some(0),
                    ..Default::default()
                },
            ),
            (
                "limits.max_running_per_key",
                QueueLimits {
                    max_running_per_key: Some(0),
                    ..Default::default()
                },
            ),
            (
                "limits.rate",
                QueueLimits {
                    rate: Some(rate(0, 1000)),
                    ..Default::default()
                },
            ),
            (
                "limits.rate_per_key",
                QueueLimits {
                    rate_per_key: Some(rate(1, 0)),
                    ..Default::default()
                },
            ),
        ];
        for (field, l) in cases {
            match l.validate() {
                Err(EnqueueError::InvalidOption { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    proptest! {
        /// Whatever the candidates and budgets, the choice keeps every limit, keeps claim
        /// order, and takes a candidate whenever every limit still allowed it.
        #[test]
        fn choices_respect_every_limit_and_are_greedy(
            keys in proptest::collection::vec(proptest::option::of(0u8..4), 0..40),
            total in 0u64..50,
            per_key in proptest::option::of(1u32..4),
            running in proptest::collection::vec(0u64..4, 4),
            tokens in proptest::option::of(proptest::collection::vec(0u64..4, 4)),
        ) {
            let candidates: Vec<(i64, Option<String>)> = keys.iter().enumerate()
                .map(|(i, k)| (i as i64, k.map(|k| k.to_string()))).collect();
            let limits = QueueLimits { max_running_per_key: per_key, ..QueueLimits::default() };
            let running_per_key: HashMap<String, u64> = (0..4).map(|k| (k.to_string(), running[k])).collect();
            let tokens_per_key = tokens.as_ref().map(|t| (0..4).map(|k| (k.to_string(), t[k])).collect::<HashMap<_, _>>());
            let budget = ClaimBudget { total, running_per_key: running_per_key.clone(), tokens_per_key: tokens_per_key.clone() };
            let chosen = choose(&candidates, &limits, budget);
            prop_assert!(chosen.len() as u64 <= total);
            prop_assert!(chosen.windows(2).all(|w| w[0].0 < w[1].0), "claim order kept");
            // Reference model: walk the candidates with explicit counters.
            let mut run = running_per_key.clone();
            let mut tok = tokens_per_key.clone();
            let mut expected = Vec::new();
            for (id, key) in &candidates {
                if expected.len() as u64 >= total { break; }
                if let Some(k) = key {
                    let r = run[k];
                    if per_key.is_some_and(|m| r >= u64::from(m)) { continue; }
                    if let Some(t) = tok.as_mut() {
                        if t[k] == 0 { continue; }
                        *t.get_mut(k).unwrap() -= 1;
                    }
                    *run.get_mut(k).unwrap() += 1;
                }
                expected.push(*id);
            }
            let got: Vec<i64> = chosen.iter().map(|c| c.0).collect();
            prop_assert_eq!(got, expected);
        }
    }
}
