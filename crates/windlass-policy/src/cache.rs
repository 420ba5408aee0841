//! Caching: answer repeated calls from memory, with coalesced loads.
//!
//! [`Cache`] keeps results by key with a time-to-live — chosen per result, so that errors
//! can be cached briefly (negative caching protects a failing dependency) or not at all —
//! and a bounded capacity (the `moka` crate's TinyLFU eviction). A miss loads through a
//! [`Coalesce`], so a hot key that expires causes one load, not a stampede.
//!
//! **Invalidation is exact:** a read that starts after `invalidate(key)` (or `insert`)
//! returns never sees a value from before it, on any thread. A load in flight at the time
//! hands its result to the callers already waiting on it, but it is not stored, and later
//! readers do not join it: they start a fresh load.
//!
//! Expiry is measured on tokio's clock (paused in tests), not moka's own.
//!
//! **Cancellation:** a caller dropped while a load is in flight leaves it to the others; the
//! load is dropped when its last waiter is (see [`Coalesce`]), and nothing is stored.
//!
//! Hits and misses are counted (`windlass_cache_requests_total{name, result}`) when the
//! cache is built with a [`name`](CacheBuilder::name).
//!
//! ```
//! use std::time::Duration;
//! use windlass_policy::Cache;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let cache: Cache<u32, Result<String, String>> = Cache::builder()
//!     .max_capacity(10_000)
//!     .ttl_for(|r: &Result<String, String>| match r {
//!         Ok(_) => Some(Duration::from_secs(60)),
//!         Err(_) => Some(Duration::from_secs(1)), // brief negative caching
//!     })
//!     .build()
//!     .unwrap();
//! let v = cache.get_or_load(7, || async { Ok("seven".to_string()) }).await;
//! assert_eq!(v, Ok("seven".to_string()));
//! assert_eq!(cache.get(&7), Some(Ok("seven".to_string())));
//! # }
//! ```

use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::coalesce::Coalesce;
use crate::config::{ConfigError, ensure};
use crate::time::saturating_add;

const STRIPES: usize = 64;

type TtlFn<V> = dyn Fn(&V) -> Option<Duration> + Send + Sync;

/// Builds a [`Cache`]. Defaults: 10,000 entries, every value cached for 60 s.
pub struct CacheBuilder<V> {
    name: Option<Arc<str>>,
    max_capacity: u64,
    ttl_for: Arc<TtlFn<V>>,
    /// The single TTL given to [`ttl`](CacheBuilder::ttl), checked at build time.
    ttl: Option<Duration>,
}

impl<V> std::fmt::Debug for CacheBuilder<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheBuilder")
            .field("max_capacity", &self.max_capacity)
            .finish_non_exhaustive()
    }
}

impl<V: 'static> CacheBuilder<V> {
    /// Names the cache, for its metrics.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The most entries kept.
    pub fn max_capacity(mut self, n: u64) -> Self {
        self.max_capacity = n;
        self
    }
    /// The same time-to-live for every value (positive: a zero TTL would cache nothing;
    /// to skip caching some values, return `None` from [`ttl_for`](Self::ttl_for)).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl_for = Arc::new(move |_| Some(ttl));
        self.ttl = Some(ttl);
        self
    }
    /// A time-to-live chosen per value; `None` means "do not cache this one".
    pub fn ttl_for(mut self, f: impl Fn(&V) -> Option<Duration> + Send + Sync + 'static) -> Self {
        self.ttl_for = Arc::new(f);
        self.ttl = None;
        self
    }

    /// Validates and builds.
    pub fn build<K>(self) -> Result<Cache<K, V>, ConfigError>
    where
        K: Hash + Eq + Clone + Send + Sync + 'static,
        V: Clone + Send + Sync,
    {
        ensure(
            self.max_capacity >= 1,
            "cache",
            "max_capacity",
            "must be at least 1",
        )?;
        ensure(
            self.ttl != Some(Duration::ZERO),
            "cache",
            "ttl",
            "must be positive (a zero TTL caches nothing)",
        )?;
        let label = self
            .name
            .unwrap_or_else(|| crate::observe::default_name("cache"))
            .to_string();
        Ok(Cache {
            m_hit: metrics::counter!("windlass_cache_requests_total", "name" => label.clone(), "result" => "hit"),
            m_miss: metrics::counter!("windlass_cache_requests_total", "name" => label, "result" => "miss"),
            store: moka::sync::Cache::new(self.max_capacity),
            loads: Coalesce::new(),
            ttl_for: self.ttl_for,
            stripes: std::array::from_fn(|_| Mutex::new(0)),
            hasher: std::collections::hash_map::RandomState::new(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }
}

/// A bounded, TTL-expiring cache with coalesced loads.
pub struct Cache<K, V> {
    store: moka::sync::Cache<K, (V, Instant)>,
    /// Loads in flight, keyed by the key *and* its stripe's generation when the load began:
    /// a reader that arrives after an invalidation never joins a load from before it.
    loads: Coalesce<(K, u64), V>,
    ttl_for: Arc<TtlFn<V>>,
    /// Write generations by key hash. Every write and invalidation bumps its key's stripe
    /// under the stripe's lock, and a load stores its result only if, under the same lock,
    /// the stripe is still at the generation the load began with. (A collision only skips
    /// caching one load.)
    stripes: [Mutex<u64>; STRIPES],
    hasher: std::collections::hash_map::RandomState,
    hits: AtomicU64,
    misses: AtomicU64,
    m_hit: metrics::Counter,
    m_miss: metrics::Counter,
}

impl<K, V> std::fmt::Debug for Cache<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("hits", &self.hits.load(Ordering::Relaxed))
            .field("misses", &self.misses.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<V: 'static> Cache<(), V> {
    /// Starts building a cache.
    pub fn builder() -> CacheBuilder<V> {
        CacheBuilder {
            name: None,
            max_capacity: 10_000,
            ttl_for: Arc::new(|_| Some(Duration::from_secs(60))),
            ttl: None,
        }
    }
}

impl<K, V> Cache<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn stripe(&self, key: &K) -> MutexGuard<'_, u64> {
        let h = self.hasher.hash_one(key);
        self.stripes[(h as usize) % STRIPES]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The cached value, if present and fresh.
    pub fn get(&self, key: &K) -> Option<V> {
        match self.store.get(key) {
            Some((v, expires)) if Instant::now() < expires => Some(v),
            _ => None,
        }
    }

    /// Stores `value` under the TTL its rule gives (a `None` TTL stores nothing). Loads in
    /// flight for this key will not overwrite it.
    pub fn insert(&self, key: K, value: V) {
        let mut generation = self.stripe(&key);
        *generation += 1;
        self.store_entry(key, value);
    }

    /// Writes to the store; the caller holds the key's stripe lock.
    fn store_entry(&self, key: K, value: V) {
        match (self.ttl_for)(&value) {
            // `Duration::MAX` (or any TTL past the far future) means "until evicted".
            Some(ttl) => {
                let expires = saturating_add(Instant::now(), ttl);
                self.store.insert(key, (value, expires));
            }
            None => self.store.invalidate(&key),
        }
    }

    /// The cached value, or the result of `load()` (shared with concurrent misses), which is
    /// then cached — unless the key was written or invalidated while it loaded.
    pub async fn get_or_load<F, Fut>(&self, key: K, load: F) -> V
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V> + Send + 'static,
    {
        if let Some(v) = self.get(&key) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            self.m_hit.increment(1);
            return v;
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        self.m_miss.increment(1);
        let generation = *self.stripe(&key);
        let value = self.loads.call((key.clone(), generation), load).await;
        let current = self.stripe(&key);
        if *current == generation {
            self.store_entry(key, value.clone());
        }
        drop(current);
        value
    }

    /// Removes a key. A load in flight for it will not store its result, and a read that
    /// starts after this returns does not join that load: it loads afresh.
    pub fn invalidate(&self, key: &K) {
        let mut generation = self.stripe(key);
        *generation += 1;
        self.store.invalidate(key);
    }

    /// Removes every key; no load in flight will store its result, and no later read joins
    /// one of them.
    pub fn invalidate_all(&self) {
        let mut guards: Vec<_> = self
            .stripes
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner))
            .collect();
        for g in &mut guards {
            **g += 1;
        }
        self.store.invalidate_all();
    }

    /// Hits and misses so far.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use windlass_test_support::ms;

    #[tokio::test(start_paused = true)]
    async fn hit_until_ttl_then_reload() {
        let cache: Cache<u32, u32> = Cache::builder().ttl(ms(100)).build().unwrap();
        let loads = Arc::new(AtomicU32::new(0));
        let load =
            |loads: Arc<AtomicU32>| move || async move { loads.fetch_add(1, Ordering::SeqCst) };
        assert_eq!(cache.get_or_load(1, load(loads.clone())).await, 0);
        assert_eq!(cache.get_or_load(1, load(loads.clone())).await, 0);
        tokio::time::advance(ms(100)).await;
        assert_eq!(cache.get_or_load(1, load(loads.clone())).await, 1);
        assert_eq!(cache.stats(), (1, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn errors_cached_shorter_or_not_at_all() {
        let cache: Cache<u32, Result<u32, &str>> = Cache::builder()
            .ttl_for(|r: &Result<u32, &str>| match r {
                Ok(_) => Some(Duration::from_secs(60)),
                Err("retryable") => None,
                Err(_) => Some(ms(10)),
            })
            .build()
            .unwrap();
        cache
            .get_or_load(1, || async { Err("retryable") })
            .await
            .unwrap_err();
        assert_eq!(cache.get(&1), None);
        cache
            .get_or_load(2, || async { Err("not found") })
            .await
            .unwrap_err();
        assert_eq!(cache.get(&2), Some(Err("not found")));
        tokio::time::advance(ms(10)).await;
        assert_eq!(cache.get(&2), None);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_misses_load_once() {
        let cache: Cache<&str, u32> = Cache::builder().build().unwrap();
        let loads = Arc::new(AtomicU32::new(0));
        let all = futures_util::future::join_all((0..50).map(|_| {
            let loads = loads.clone();
            cache.get_or_load("hot", move || async move {
                tokio::time::sleep(ms(5)).await;
                loads.fetch_add(1, Ordering::SeqCst) + 100
            })
        }))
        .await;
        assert!(all.iter().all(|v| *v == 100));
        assert_eq!(loads.load(Ordering::SeqCst), 1);
    }

    /// Starts a 50 ms load of `value` for key "k" in a task of its own.
    fn slow_load(
        cache: &Arc<Cache<&'static str, &'static str>>,
        value: &'static str,
    ) -> tokio::task::JoinHandle<&'static str> {
        let c = cache.clone();
        tokio::spawn(async move {
            c.get_or_load("k", move || async move {
                tokio::time::sleep(ms(50)).await;
                value
            })
            .await
        })
    }

    #[tokio::test(start_paused = true)]
    async fn invalidate_during_load_does_not_store_stale_value() {
        let cache: Arc<Cache<&str, &str>> = Arc::new(Cache::builder().build().unwrap());
        let load = slow_load(&cache, "stale");
        tokio::time::sleep(ms(10)).await;
        cache.invalidate(&"k");
        assert_eq!(
            load.await.unwrap(),
            "stale",
            "the waiter still gets its answer"
        );
        assert_eq!(cache.get(&"k"), None, "but it is not cached");
    }

    /// Regression: a read that starts after `invalidate` returned used to join the load that
    /// was in flight before it, and store its stale value for the full TTL.
    #[tokio::test(start_paused = true)]
    async fn read_after_invalidate_does_not_join_the_older_load() {
        let cache: Arc<Cache<&str, &str>> = Arc::new(Cache::builder().build().unwrap());
        let old = slow_load(&cache, "stale");
        tokio::time::sleep(ms(10)).await;
        cache.invalidate(&"k");
        let fresh = cache
            .get_or_load("k", || async {
                tokio::time::sleep(ms(100)).await;
                "fresh"
            })
            .await;
        assert_eq!(fresh, "fresh", "a read after the invalidation loads afresh");
        assert_eq!(
            old.await.unwrap(),
            "stale",
            "the older waiter keeps its answer"
        );
        assert_eq!(cache.get(&"k"), Some("fresh"));
    }

    #[tokio::test(start_paused = true)]
    async fn invalidate_all_drops_values_and_loads_in_flight() {
        let cache: Arc<Cache<&str, &str>> = Arc::new(Cache::builder().build().unwrap());
        cache.insert("other", "value");
        let load = slow_load(&cache, "stale");
        tokio::time::sleep(ms(10)).await;
        cache.invalidate_all();
        assert_eq!(cache.get(&"other"), None, "stored values are gone");
        assert_eq!(
            load.await.unwrap(),
            "stale",
            "the waiter still gets its answer"
        );
        assert_eq!(
            cache.get(&"k"),
            None,
            "but the load in flight stored nothing"
        );
    }

    /// Regression: `insert` during a load used to be overwritten by the load's older value.
    #[tokio::test(start_paused = true)]
    async fn a_write_during_a_load_is_not_overwritten_by_it() {
        let cache: Arc<Cache<&str, &str>> = Arc::new(Cache::builder().build().unwrap());
        let load = slow_load(&cache, "loaded before the write");
        tokio::time::sleep(ms(10)).await;
        cache.insert("k", "written");
        load.await.unwrap();
        assert_eq!(cache.get(&"k"), Some("written"));
    }

    /// Write, invalidate, read on several threads: every read that starts after an
    /// invalidation returned sees the database's value from after the write.
    #[test]
    fn write_invalidate_read_is_exact_across_threads() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .build()
            .unwrap();
        rt.block_on(async {
            let cache: Arc<Cache<u8, u64>> = Arc::new(Cache::builder().build().unwrap());
            let db = Arc::new(AtomicU64::new(0));
            let invalidated = Arc::new(AtomicU64::new(0));
            let readers: Vec<_> = (0..3)
                .map(|_| {
                    let (cache, db, invalidated) = (cache.clone(), db.clone(), invalidated.clone());
                    tokio::spawn(async move {
                        for _ in 0..2_000 {
                            let floor = invalidated.load(Ordering::SeqCst);
                            let db = db.clone();
                            let seen = cache
                                .get_or_load(1, move || async move {
                                    let v = db.load(Ordering::SeqCst);
                                    tokio::task::yield_now().await;
                                    v
                                })
                                .await;
                            assert!(seen >= floor, "read {seen} after invalidation of {floor}");
                        }
                    })
                })
                .collect();
            for v in 1..=2_000u64 {
                db.store(v, Ordering::SeqCst);
                cache.invalidate(&1);
                invalidated.store(v, Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
            for r in readers {
                r.await.unwrap();
            }
        });
    }

    /// `Duration::MAX` is "until evicted", not a panic.
    #[tokio::test(start_paused = true)]
    async fn forever_ttl_keeps_the_value() {
        let cache: Cache<u32, u32> = Cache::builder().ttl(Duration::MAX).build().unwrap();
        assert_eq!(cache.get_or_load(1, || async { 5 }).await, 5);
        tokio::time::advance(Duration::from_secs(86_400 * 365)).await;
        assert_eq!(cache.get(&1), Some(5));
    }

    #[tokio::test]
    async fn capacity_is_bounded() {
        let cache: Cache<u32, u32> = Cache::builder().max_capacity(100).build().unwrap();
        for i in 0..10_000 {
            cache.insert(i, i);
        }
        cache.store.run_pending_tasks();
        assert!(
            cache.store.entry_count() <= 100,
            "{}",
            cache.store.entry_count()
        );
        assert!(
            Cache::<(), u32>::builder()
                .max_capacity(0)
                .build::<u32>()
                .is_err()
        );
    }
}
