//! Coalescing (single-flight): concurrent calls for the same key share one execution.
//!
//! A thousand requests for the same cold cache entry should not become a thousand identical
//! database queries (the "thundering herd"). [`Coalesce`] runs the first caller's work and
//! hands every concurrent caller with the same key a clone of the same result — errors
//! included. Callers that arrive after it finished start a new execution.
//!
//! **Cancellation:** a waiter that is dropped leaves; the shared work goes on for the
//! others. When the *last* waiter is dropped, the work is dropped with it (nobody wants the
//! answer any more) and the key is freed.
//!
//! **When not to use it:** for writes, or when callers must each see their own attempt.
//!
//! ```
//! use windlass_policy::Coalesce;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let flights: Coalesce<&str, u64> = Coalesce::new();
//! let (a, b) = tokio::join!(
//!     flights.call("user:7", || async {
//!         tokio::task::yield_now().await; // a real load takes a while
//!         42
//!     }),
//!     flights.call("user:7", || async { unreachable!("shared with the first") }),
//! );
//! assert_eq!((a, b), (42, 42));
//! # }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use futures_util::future::{FutureExt, Shared, WeakShared};

type BoxedWork<V> = Pin<Box<dyn Future<Output = V> + Send>>;
type Flights<K, V> = HashMap<K, (u64, WeakShared<BoxedWork<V>>)>;

/// Shares one in-flight execution per key among concurrent callers.
pub struct Coalesce<K, V> {
    flights: Mutex<Flights<K, V>>,
    executions: AtomicU64,
    joined: AtomicU64,
}

impl<K, V> std::fmt::Debug for Coalesce<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalesce")
            .field("executions", &self.executions.load(Ordering::Relaxed))
            .field("joined", &self.joined.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone + Send, V: Clone + Send + Sync + 'static> Default for Coalesce<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

/// One caller waiting on a flight. Frees the key when the flight finishes, or when the
/// last waiter goes away without it finishing.
struct Waiter<'a, K: Hash + Eq, V> {
    owner: &'a Coalesce<K, V>,
    key: K,
    id: u64,
    flight: Option<Shared<BoxedWork<V>>>,
}

// No field is structurally pinned: the flight is polled through `poll_unpin`.
impl<K: Hash + Eq, V> Unpin for Waiter<'_, K, V> {}

impl<K: Hash + Eq, V: Clone> Future for Waiter<'_, K, V> {
    type Output = V;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<V> {
        let this = self.get_mut();
        let Some(flight) = this.flight.as_mut() else {
            return Poll::Pending;
        };
        let out = std::task::ready!(flight.poll_unpin(cx));
        this.flight = None;
        let mut map = this.owner.lock();
        if map.get(&this.key).is_some_and(|(id, _)| *id == this.id) {
            map.remove(&this.key);
        }
        Poll::Ready(out)
    }
}

impl<K: Hash + Eq, V> Drop for Waiter<'_, K, V> {
    fn drop(&mut self) {
        // Unfinished: let go of our handle first, then free the key if nobody else holds
        // the flight (dropping the last handle has already cancelled the work).
        if self.flight.take().is_some() {
            let mut map = self.owner.lock();
            if map
                .get(&self.key)
                .is_some_and(|(id, w)| *id == self.id && w.upgrade().is_none())
            {
                map.remove(&self.key);
            }
        }
    }
}

impl<K: Hash + Eq, V> Coalesce<K, V> {
    fn lock(&self) -> MutexGuard<'_, Flights<K, V>> {
        self.flights.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<K: Hash + Eq + Clone + Send, V: Clone + Send + Sync + 'static> Coalesce<K, V> {
    /// An empty set of flights.
    pub fn new() -> Self {
        Coalesce {
            flights: Mutex::new(HashMap::new()),
            executions: AtomicU64::new(0),
            joined: AtomicU64::new(0),
        }
    }

    /// Runs `work()` for `key`, or joins the execution already in flight for it.
    pub async fn call<F, Fut>(&self, key: K, work: F) -> V
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V> + Send + 'static,
    {
        let (id, flight) = {
            let mut map = self.lock();
            match map
                .get(&key)
                .and_then(|(id, w)| w.upgrade().map(|s| (*id, s)))
            {
                Some(existing) => {
                    self.joined.fetch_add(1, Ordering::Relaxed);
                    existing
                }
                None => {
                    let id = self.executions.fetch_add(1, Ordering::Relaxed);
                    let fut: BoxedWork<V> = Box::pin(work());
                    let shared = fut.shared();
                    if let Some(weak) = shared.downgrade() {
                        map.insert(key.clone(), (id, weak));
                    }
                    (id, shared)
                }
            }
        };
        Waiter {
            owner: self,
            key,
            id,
            flight: Some(flight),
        }
        .await
    }

    /// Forgets the execution in flight for `key`, if any: callers already waiting on it still
    /// get its result, but the next caller starts a fresh execution (Go's
    /// `singleflight.Forget`). Use it when the data behind the key changed mid-flight.
    /// Returns whether an execution was forgotten.
    pub fn forget(&self, key: &K) -> bool {
        self.lock().remove(key).is_some()
    }

    /// Keys with an execution in flight.
    pub fn in_flight(&self) -> usize {
        self.lock().len()
    }

    /// Executions started, and calls that joined one instead.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.executions.load(Ordering::Relaxed),
            self.joined.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_execution_and_its_error() {
        let c: Coalesce<u32, Result<u32, String>> = Coalesce::new();
        let runs = Arc::new(AtomicU64::new(0));
        let make = || {
            let runs = runs.clone();
            move || async move {
                runs.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
                Err::<u32, _>("boom".to_string())
            }
        };
        let results = futures_util::future::join_all((0..10).map(|_| c.call(1, make()))).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(results.iter().all(|r| r == &Err("boom".to_string())));
        assert_eq!(c.in_flight(), 0);
        // After it finished, a new call runs again.
        let _ = c.call(1, make()).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert_eq!(c.stats(), (2, 9));
    }

    #[tokio::test(start_paused = true)]
    async fn forget_lets_the_next_caller_start_afresh_while_waiters_keep_theirs() {
        let c: Arc<Coalesce<&str, &str>> = Arc::new(Coalesce::new());
        let c2 = c.clone();
        let old = tokio::spawn(async move {
            c2.call("k", || async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                "old"
            })
            .await
        });
        tokio::task::yield_now().await;
        assert_eq!(c.in_flight(), 1);
        assert!(c.forget(&"k"));
        assert!(!c.forget(&"k"), "nothing left to forget");
        let new = c.call("k", || async { "new" }).await;
        assert_eq!(new, "new");
        assert_eq!(old.await.unwrap(), "old");
        assert_eq!(c.stats(), (2, 0));
        assert_eq!(c.in_flight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_waiter_does_not_cancel_the_others_but_the_last_does() {
        let c: Coalesce<&str, u32> = Coalesce::new();
        let finished = Arc::new(AtomicBool::new(false));
        let f = finished.clone();
        let work = move || async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            f.store(true, Ordering::SeqCst);
            7
        };
        // Boxed, so that `drop(first)` drops the waiter itself (not a pinned reference).
        let mut first = Box::pin(c.call("k", work));
        let mut second = Box::pin(c.call("k", || async { unreachable!() }));
        assert!(futures_util::FutureExt::now_or_never(first.as_mut()).is_none());
        assert!(futures_util::FutureExt::now_or_never(second.as_mut()).is_none());
        assert_eq!(c.in_flight(), 1);
        // Drop the leader's own waiter: the work continues for the second.
        drop(first);
        assert_eq!(c.in_flight(), 1, "the flight survives one waiter leaving");
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(second.await, 7);
        assert!(finished.load(Ordering::SeqCst));
        assert_eq!(c.stats(), (1, 1));

        // Now drop every waiter before it finishes: the work is cancelled and the key freed.
        let finished = Arc::new(AtomicBool::new(false));
        let f = finished.clone();
        let lone = c.call("k2", move || async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            f.store(true, Ordering::SeqCst);
            1
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(10), lone)
                .await
                .is_err()
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(
            !finished.load(Ordering::SeqCst),
            "cancelled with its last waiter"
        );
        assert_eq!(c.in_flight(), 0, "no stale key left behind");
    }
}
