//! Bulkhead: a cap on how many calls to one dependency run at once.
//!
//! When one dependency slows down, calls to it pile up until they hold every task,
//! connection and byte of memory, and the whole service stalls with it. A [`Bulkhead`] gives
//! the dependency a fixed number of slots (`max_concurrent`), a bounded waiting line
//! (`max_queued`) and a bounded wait (`max_wait`); everything beyond is rejected at once
//! with [`Rejection::BulkheadFull`] or [`Rejection::BulkheadTimeout`], so the damage stays
//! in its compartment.
//!
//! Waiters are woken in arrival order, and a newcomer never takes a slot while others
//! wait (a woken waiter may still lose a freed slot to a waiter arriving at that instant). An outer deadline also bounds the wait. Taking and returning a slot is two
//! atomic operations; nothing is locked unless someone is waiting.
//!
//! **Cancellation:** dropping a waiting call leaves the line; dropping a running call frees
//! its slot.
//!
//! ```
//! use std::time::Duration;
//! use windlass_policy::{Bulkhead, PolicyExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let bulkhead = Bulkhead::builder()
//!     .max_concurrent(8)
//!     .max_queued(16)
//!     .max_wait(Duration::from_millis(50))
//!     .build()
//!     .unwrap();
//! let out = bulkhead.call(|| async { Ok::<_, std::io::Error>("done") }).await;
//! assert_eq!(out.unwrap(), "done");
//! # }
//! ```

use crate::time::saturating_add;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::sync::AtomicUsize;
use std::time::Duration;

use metrics::{Counter, Gauge};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::compose::Compose;
use crate::config::{ConfigError, ensure};
use crate::context::Context;
use crate::error::{PolicyError, Rejection};
use crate::guard::{self, Admission, Guard, Refusal, check_deadline};
use crate::observe::{self, Inspect, PolicyKind, PolicySnapshot, PolicyState};

/// Builds a [`Bulkhead`]. Defaults: 25 concurrent, no queue.
#[derive(Debug, Clone)]
pub struct BulkheadBuilder {
    name: Option<Arc<str>>,
    max_concurrent: usize,
    max_queued: usize,
    max_wait: Option<Duration>,
}

impl BulkheadBuilder {
    /// Names the bulkhead.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = Some(name.into());
        self
    }
    /// Calls that may run at once (at least 1).
    pub fn max_concurrent(mut self, n: usize) -> Self {
        self.max_concurrent = n;
        self
    }
    /// Calls that may wait for a slot (0 = reject at once when full).
    pub fn max_queued(mut self, n: usize) -> Self {
        self.max_queued = n;
        self
    }
    /// The longest a call waits for a slot (default: as long as it takes).
    pub fn max_wait(mut self, d: Duration) -> Self {
        self.max_wait = Some(d);
        self
    }

    /// Validates and builds.
    pub fn build(self) -> Result<Bulkhead, ConfigError> {
        const P: &str = "bulkhead";
        ensure(
            self.max_concurrent >= 1,
            P,
            "max_concurrent",
            "must be at least 1",
        )?;
        ensure(
            self.max_concurrent <= usize::MAX / 2,
            P,
            "max_concurrent",
            "is unreasonably large",
        )?;
        let name = self
            .name
            .unwrap_or_else(|| observe::default_name("bulkhead"));
        let label = name.to_string();
        let shared = Arc::new(Shared {
            in_use: AtomicUsize::new(0),
            freed: Notify::new(),
            max_concurrent: self.max_concurrent,
            max_queued: self.max_queued,
            max_wait: self.max_wait,
            queued: AtomicUsize::new(0),
            m_in_use: metrics::gauge!("windlass_bulkhead_in_use", "name" => label.clone()),
            m_queued: metrics::gauge!("windlass_bulkhead_queued", "name" => label.clone()),
            m_full: metrics::counter!("windlass_policy_rejections_total", "name" => label.clone(), "reason" => "bulkhead_full"),
            m_timeout: metrics::counter!("windlass_policy_rejections_total", "name" => label.clone(), "reason" => "bulkhead_timeout"),
            m_wait: metrics::histogram!("windlass_bulkhead_wait_seconds", "name" => label),
            name,
        });
        observe::register(&shared);
        Ok(Bulkhead { shared })
    }
}

struct Shared {
    name: Arc<str>,
    /// Slots taken. Taken and given back with atomics: no lock on the common path.
    in_use: AtomicUsize,
    /// Wakes the longest waiter (tokio's `Notify` is FIFO) when a slot is given back.
    freed: Notify,
    max_concurrent: usize,
    max_queued: usize,
    max_wait: Option<Duration>,
    queued: AtomicUsize,
    m_in_use: Gauge,
    m_queued: Gauge,
    m_full: Counter,
    m_timeout: Counter,
    m_wait: metrics::Histogram,
}

impl Inspect for Shared {
    fn inspect(&self) -> PolicySnapshot {
        PolicySnapshot {
            name: self.name.clone(),
            kind: PolicyKind::Bulkhead,
            state: PolicyState::Bulkhead {
                in_use: self.in_use.load(Ordering::Relaxed),
                queued: self.queued.load(Ordering::Relaxed),
                max_concurrent: self.max_concurrent,
            },
        }
    }
}

/// Limits concurrent calls, with a bounded waiting line. Cheap to clone: clones share slots.
#[derive(Clone)]
pub struct Bulkhead {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Bulkhead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bulkhead")
            .field("name", &self.shared.name)
            .field("max_concurrent", &self.shared.max_concurrent)
            .field("max_queued", &self.shared.max_queued)
            .finish()
    }
}

/// A bulkhead slot; freed on drop.
#[derive(Debug)]
pub struct BulkheadPermit<'a> {
    shared: &'a Shared,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

impl Drop for BulkheadPermit<'_> {
    fn drop(&mut self) {
        let s = self.shared;
        s.in_use.fetch_sub(1, Ordering::SeqCst);
        // A waiter that has counted itself into `queued` either sees this slot when it
        // retries, or is woken here (it registered for wake-ups before retrying).
        if s.queued.load(Ordering::SeqCst) > 0 {
            s.freed.notify_one();
        }
        s.m_in_use.decrement(1.0);
    }
}

impl Shared {
    /// Takes a free slot, if there is one.
    fn take(&self) -> bool {
        let mut current = self.in_use.load(Ordering::Relaxed);
        while current < self.max_concurrent {
            match self.in_use.compare_exchange_weak(
                current,
                current + 1,
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
        false
    }

    /// Waits in line for a slot; the caller has already counted itself into `queued`.
    async fn wait_for_slot(&self) {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.take() {
                return;
            }
            freed.await;
        }
    }
}

/// Leaves the waiting line however the wait ends (a slot, a timeout, or a dropped call).
struct QueueSlot<'a>(&'a Shared);

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        let s = self.0;
        s.queued.fetch_sub(1, Ordering::SeqCst);
        s.m_queued.decrement(1.0);
        // Leaving the line (served, timed out or dropped) may leave a free slot that the
        // fast path will not take while others wait: pass the turn on.
        if s.queued.load(Ordering::SeqCst) > 0 && s.in_use.load(Ordering::SeqCst) < s.max_concurrent
        {
            s.freed.notify_one();
        }
    }
}

impl Bulkhead {
    /// This policy's live state: the same entry [`crate::observe::snapshot`]
    /// lists for it, without going through the process-wide list.
    pub fn snapshot(&self) -> crate::observe::PolicySnapshot {
        crate::observe::Inspect::inspect(&*self.shared)
    }

    /// Starts building a bulkhead.
    pub fn builder() -> BulkheadBuilder {
        BulkheadBuilder {
            name: None,
            max_concurrent: 25,
            max_queued: 0,
            max_wait: None,
        }
    }

    /// The bulkhead's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Free slots right now.
    pub fn available(&self) -> usize {
        self.shared
            .max_concurrent
            .saturating_sub(self.shared.in_use.load(Ordering::Relaxed))
    }

    fn full(&self) -> Rejection {
        self.shared.m_full.increment(1);
        Rejection::BulkheadFull {
            name: self.shared.name.clone(),
            max_concurrent: self.shared.max_concurrent,
            max_queued: self.shared.max_queued,
        }
    }

    #[inline]
    fn granted(&self) -> BulkheadPermit<'_> {
        self.shared.m_in_use.increment(1.0);
        BulkheadPermit {
            shared: &self.shared,
        }
    }

    /// A free slot now, if nobody is waiting for one (no rejection is counted).
    #[inline]
    pub(crate) fn take_now(&self) -> Option<BulkheadPermit<'_>> {
        (self.shared.queued.load(Ordering::SeqCst) == 0 && self.shared.take())
            .then(|| self.granted())
    }

    /// Takes a slot now, or fails with [`Rejection::BulkheadFull`].
    pub fn try_acquire(&self) -> Result<BulkheadPermit<'_>, Rejection> {
        // Nobody jumps the line: with callers waiting, a free slot is theirs.
        if self.shared.queued.load(Ordering::SeqCst) == 0 && self.shared.take() {
            Ok(self.granted())
        } else {
            Err(self.full())
        }
    }

    /// Takes a slot, waiting in line if allowed. `deadline` (from the context) also bounds
    /// the wait: whichever of it and the bulkhead's own maximum wait ends first names the
    /// verdict ([`Refusal::DeadlineExceeded`] or [`Rejection::BulkheadTimeout`]), as for
    /// every guard ([`crate::guard`]).
    pub async fn acquire(&self, deadline: Option<Instant>) -> Result<BulkheadPermit<'_>, Refusal> {
        let s = &*self.shared;
        if s.queued.load(Ordering::SeqCst) == 0 && s.take() {
            return Ok(self.granted());
        }
        if s.max_wait == Some(Duration::ZERO)
            || s.queued.fetch_add(1, Ordering::SeqCst) >= s.max_queued
        {
            if s.max_wait != Some(Duration::ZERO) {
                s.queued.fetch_sub(1, Ordering::SeqCst);
            }
            return Err(self.full().into());
        }
        s.m_queued.increment(1.0);
        let _in_line = QueueSlot(s);
        let start = Instant::now();
        let own = s.max_wait.map(|w| saturating_add(start, w));
        let limit = match (own, deadline) {
            (Some(o), Some(d)) => Some(o.min(d)),
            (o, d) => o.or(d),
        };
        if let Some(at) = limit {
            if tokio::time::timeout_at(at, s.wait_for_slot())
                .await
                .is_err()
            {
                let verdict =
                    guard::expired_verdict(own, deadline, || Rejection::BulkheadTimeout {
                        name: s.name.clone(),
                        max_wait: s.max_wait.unwrap_or_default(),
                    });
                if matches!(verdict, Refusal::Rejected(_)) {
                    s.m_timeout.increment(1);
                }
                return Err(verdict);
            }
        } else {
            s.wait_for_slot().await;
        }
        s.m_wait.record(start.elapsed().as_secs_f64());
        Ok(self.granted())
    }
}

impl Compose for Bulkhead {}

impl Guard for Bulkhead {
    type Permit<'a> = BulkheadPermit<'a>;

    #[inline]
    fn try_admit(&self, cx: &mut Context) -> Admission<Self::Permit<'_>> {
        if let Err(refusal) = check_deadline(cx) {
            return Admission::Refused(refusal);
        }
        match self.take_now() {
            Some(permit) => Admission::Admitted(permit),
            None => Admission::Wait,
        }
    }

    fn wait(&self, cx: &Context) -> impl Future<Output = Result<Self::Permit<'_>, Refusal>> + Send {
        self.acquire(cx.deadline())
    }

    #[inline]
    fn complete<T, E>(&self, permit: BulkheadPermit<'_>, _result: &Result<T, PolicyError<E>>) {
        drop(permit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicyExt;
    use windlass_test_support::ms;

    #[tokio::test(start_paused = true)]
    async fn never_more_than_max_concurrent() {
        let b = Bulkhead::builder()
            .max_concurrent(3)
            .max_queued(100)
            .build()
            .unwrap();
        let peak = windlass_test_support::Peak::new();
        let calls = (0..20).map(|_| {
            b.call(|| async {
                let _inside = peak.enter();
                tokio::time::sleep(ms(10)).await;
                Ok::<_, &str>(())
            })
        });
        let results = futures_util::future::join_all(calls).await;
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(peak.max(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_newcomer_does_not_take_a_slot_freed_for_a_waiter() {
        let b = Bulkhead::builder()
            .name("fair")
            .max_concurrent(1)
            .max_queued(4)
            .build()
            .unwrap();
        assert_eq!(b.name(), "fair");
        let held = b.try_acquire().unwrap();
        let waiter = b.acquire(None);
        tokio::pin!(waiter);
        assert!(
            futures_util::FutureExt::now_or_never(waiter.as_mut()).is_none(),
            "in line"
        );
        drop(held); // the slot is free, and the waiter's
        let mut cx = Context::new();
        assert!(
            matches!(b.try_admit(&mut cx), Admission::Wait),
            "a newcomer waits behind the line instead of taking the freed slot"
        );
        assert!(waiter.await.is_ok(), "the waiter gets it");
    }

    #[tokio::test(start_paused = true)]
    async fn rejects_when_slots_and_queue_are_full() {
        let b = Bulkhead::builder()
            .max_concurrent(1)
            .max_queued(1)
            .build()
            .unwrap();
        let hold = b.try_acquire().unwrap();
        let waiting = b.acquire(None);
        tokio::pin!(waiting);
        assert!(
            futures_util::FutureExt::now_or_never(waiting.as_mut()).is_none(),
            "first waiter queues"
        );
        match b.acquire(None).await {
            Err(Refusal::Rejected(Rejection::BulkheadFull {
                max_concurrent: 1,
                max_queued: 1,
                ..
            })) => {}
            other => panic!("{other:?}"),
        }
        drop(hold);
        assert!(waiting.await.is_ok(), "the queued waiter gets the slot");
    }

    #[tokio::test(start_paused = true)]
    async fn max_wait_times_out() {
        let b = Bulkhead::builder()
            .max_concurrent(1)
            .max_queued(5)
            .max_wait(ms(30))
            .build()
            .unwrap();
        let _hold = b.try_acquire().unwrap();
        let start = Instant::now();
        assert!(matches!(
            b.acquire(None).await,
            Err(Refusal::Rejected(Rejection::BulkheadTimeout { .. }))
        ));
        assert_eq!(start.elapsed(), ms(30));
        assert_eq!(b.shared.queued.load(Ordering::SeqCst), 0, "left the line");
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_waiter_leaves_the_line() {
        let b = Bulkhead::builder()
            .max_concurrent(1)
            .max_queued(1)
            .build()
            .unwrap();
        let _hold = b.try_acquire().unwrap();
        assert!(tokio::time::timeout(ms(5), b.acquire(None)).await.is_err());
        assert_eq!(b.shared.queued.load(Ordering::SeqCst), 0);
        // The line has room again.
        let again = b.acquire(None);
        tokio::pin!(again);
        assert!(futures_util::FutureExt::now_or_never(again.as_mut()).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_bounds_the_wait() {
        let b = Bulkhead::builder()
            .max_concurrent(1)
            .max_queued(1)
            .build()
            .unwrap();
        let _hold = b.try_acquire().unwrap();
        let out = b.acquire(Some(Instant::now() + ms(20))).await;
        assert!(matches!(out, Err(Refusal::DeadlineExceeded)));
    }

    /// Many threads, a small bulkhead, a deep queue: never more than the limit inside, and
    /// every call gets through (no lost wake-up leaves a caller waiting forever).
    #[test]
    fn stress_no_lost_wakeups_and_limit_holds() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .build()
            .unwrap();
        let b = Bulkhead::builder()
            .max_concurrent(3)
            .max_queued(10_000)
            .build()
            .unwrap();
        let inside = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let done = rt.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..2_000 {
                let (b, inside, peak) = (b.clone(), inside.clone(), peak.clone());
                tasks.spawn(async move {
                    b.call(|| async {
                        let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(n, Ordering::SeqCst);
                        tokio::task::yield_now().await;
                        inside.fetch_sub(1, Ordering::SeqCst);
                        Ok::<_, &str>(())
                    })
                    .await
                    .is_ok()
                });
            }
            let mut ok = 0;
            while let Some(r) = tasks.join_next().await {
                ok += usize::from(r.unwrap());
            }
            ok
        });
        assert_eq!(done, 2_000);
        assert!(peak.load(Ordering::SeqCst) <= 3);
        assert_eq!(b.available(), 3);
    }

    #[test]
    fn zero_slots_rejected() {
        assert_eq!(
            Bulkhead::builder()
                .max_concurrent(0)
                .build()
                .unwrap_err()
                .field(),
            "max_concurrent"
        );
    }
}
