//! Per-key policies: one breaker per host, one rate limiter per tenant — without the leak.
//!
//! Keeping a policy per key in a plain map grows forever: every host ever seen keeps its
//! breaker, every tenant its limiter (a memory leak reported against most peer libraries).
//! [`Keyed`] creates each key's policy on first use from a factory, holds at most
//! `max_keys` of them, and evicts keys idle for longer than `idle_timeout` (on tokio's
//! clock, so tests can pause it). Eviction only
//! drops the registry's reference: a call in flight keeps its policy alive to the end, and
//! the key's next call starts with a fresh policy.
//!
//! Policies are cheap handles (`Clone` shares state), so `get` returns one by value.
//!
//! ```
//! use std::time::Duration;
//! use windlass_policy::{CircuitBreaker, Keyed};
//!
//! let breakers = Keyed::builder()
//!     .max_keys(10_000)
//!     .idle_timeout(Duration::from_secs(600))
//!     .build(|host: &String| {
//!         CircuitBreaker::builder().name(format!("upstream:{host}")).build()
//!     })
//!     .unwrap();
//! let a = breakers.get(&"api.example.com".to_string()).unwrap();
//! let b = breakers.get(&"api.example.com".to_string()).unwrap();
//! assert_eq!(a.name(), b.name()); // the same breaker
//! ```

use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{ConfigError, ensure};

/// Builds a [`Keyed`] registry. Defaults: 10,000 keys, evicted after 10 minutes idle.
#[derive(Debug, Clone)]
pub struct KeyedBuilder {
    max_keys: u64,
    idle_timeout: Duration,
}

type Factory<K, P> = dyn Fn(&K) -> Result<P, ConfigError> + Send + Sync;

struct Entry<P> {
    policy: P,
    /// Nanoseconds since the registry's `base`, on tokio's clock.
    last_used: AtomicU64,
}

/// A bounded, idle-evicting map from keys to policies.
pub struct Keyed<K, P> {
    map: moka::sync::Cache<K, Arc<Entry<P>>>,
    factory: Arc<Factory<K, P>>,
    base: Instant,
    idle_nanos: u64,
    last_sweep: AtomicU64,
}

impl<K, P> std::fmt::Debug for Keyed<K, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyed").finish_non_exhaustive()
    }
}

impl KeyedBuilder {
    /// The most keys held at once (least recently and frequently used go first).
    pub fn max_keys(mut self, n: u64) -> Self {
        self.max_keys = n;
        self
    }

    /// Keys unused for this long are evicted.
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }

    /// Builds the registry; `factory` makes the policy for a new key.
    pub fn build<K, P>(
        self,
        factory: impl Fn(&K) -> Result<P, ConfigError> + Send + Sync + 'static,
    ) -> Result<Keyed<K, P>, ConfigError>
    where
        K: Hash + Eq + Send + Sync + 'static,
        P: Clone + Send + Sync + 'static,
    {
        ensure(
            self.max_keys >= 1,
            "keyed registry",
            "max_keys",
            "must be at least 1",
        )?;
        ensure(
            self.idle_timeout > Duration::ZERO,
            "keyed registry",
            "idle_timeout",
            "must be positive",
        )?;
        Ok(Keyed {
            map: moka::sync::Cache::new(self.max_keys),
            factory: Arc::new(factory),
            base: Instant::now(),
            idle_nanos: u64::try_from(self.idle_timeout.as_nanos()).unwrap_or(u64::MAX),
            last_sweep: AtomicU64::new(0),
        })
    }
}

impl Keyed<(), ()> {
    /// Starts building a registry.
    pub fn builder() -> KeyedBuilder {
        KeyedBuilder {
            max_keys: 10_000,
            idle_timeout: Duration::from_secs(600),
        }
    }
}

impl<K, P> Keyed<K, P>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    P: Clone + Send + Sync + 'static,
{
    /// The policy for `key`, created on first use. Fails only if the factory does.
    pub fn get(&self, key: &K) -> Result<P, ConfigError> {
        let now = self.now();
        self.sweep_if_due(now);
        if let Some(e) = self.map.get(key) {
            if now.saturating_sub(e.last_used.load(Ordering::Relaxed)) <= self.idle_nanos {
                e.last_used.store(now, Ordering::Relaxed);
                return Ok(e.policy.clone());
            }
            self.map.invalidate(key);
        }
        let entry = self
            .map
            .try_get_with_by_ref(key, || {
                (self.factory)(key).map(|policy| {
                    Arc::new(Entry {
                        policy,
                        last_used: AtomicU64::new(now),
                    })
                })
            })
            .map_err(|e| (*e).clone())?;
        Ok(entry.policy.clone())
    }

    fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// At most twice per idle timeout, drops every key idle for longer than it, so keys
    /// that are never asked for again do not stay until capacity pushes them out.
    fn sweep_if_due(&self, now: u64) {
        let last = self.last_sweep.load(Ordering::Relaxed);
        if now.saturating_sub(last) < self.idle_nanos / 2
            || self
                .last_sweep
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        for (key, entry) in self.map.iter() {
            if now.saturating_sub(entry.last_used.load(Ordering::Relaxed)) > self.idle_nanos {
                self.map.invalidate(&*key);
            }
        }
    }

    /// Keys currently held.
    pub fn len(&self) -> u64 {
        self.map.run_pending_tasks();
        self.map.entry_count()
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the policy of one key (its next call gets a fresh one).
    pub fn remove(&self, key: &K) {
        self.map.invalidate(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Bulkhead, CircuitBreaker};

    #[test]
    fn one_policy_per_key_and_bounded() {
        let reg = Keyed::builder()
            .max_keys(100)
            .build(|k: &u32| {
                Bulkhead::builder()
                    .name(format!("b{k}"))
                    .max_concurrent(1)
                    .build()
            })
            .unwrap();
        let a = reg.get(&1).unwrap();
        let _slot = a.try_acquire().unwrap();
        // The same key shares state: its only slot is taken.
        assert!(reg.get(&1).unwrap().try_acquire().is_err());
        assert!(reg.get(&2).unwrap().try_acquire().is_ok());
        for k in 0..10_000 {
            reg.get(&k).unwrap();
        }
        assert!(reg.len() <= 100, "bounded: {}", reg.len());
    }

    #[tokio::test(start_paused = true)]
    async fn per_tenant_rate_limits_are_independent() {
        let limits = Keyed::builder()
            .build(|tenant: &&str| {
                crate::RateLimiter::builder()
                    .name(format!("tenant:{tenant}"))
                    .per_second(2)
                    .burst(2)
                    .build()
            })
            .unwrap();
        let noisy = limits.get(&"noisy").unwrap();
        assert!(noisy.try_acquire().is_ok() && noisy.try_acquire().is_ok());
        assert!(
            limits.get(&"noisy").unwrap().try_acquire().is_err(),
            "noisy is throttled"
        );
        let quiet = limits.get(&"quiet").unwrap();
        assert!(quiet.try_acquire().is_ok(), "another tenant is not");
    }

    #[test]
    fn factory_errors_surface() {
        let reg = Keyed::builder()
            .build(|_: &u8| CircuitBreaker::builder().count_window(0).build())
            .unwrap();
        assert_eq!(reg.get(&1).unwrap_err().field(), "count_window");
        assert!(Keyed::builder().max_keys(0).build(|_: &u8| Ok(())).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn idle_keys_are_evicted_and_busy_ones_kept() {
        let reg = Keyed::builder()
            .idle_timeout(Duration::from_secs(60))
            .build(|k: &u32| CircuitBreaker::builder().name(format!("k{k}")).build())
            .unwrap();
        let first = reg.get(&1).unwrap();
        reg.get(&2).unwrap();
        for _ in 0..3 {
            tokio::time::advance(Duration::from_secs(40)).await;
            reg.get(&2).unwrap(); // key 2 stays busy
        }
        assert_eq!(reg.len(), 1, "key 1 idled out, key 2 did not");
        // Key 1 comes back with a fresh policy; the old handle still works for its holder.
        first.force_open();
        assert!(reg.get(&1).unwrap().try_acquire().is_ok());
    }
}
