//! Scopes: a set of tasks that ends together.
//!
//! `tokio::spawn` hands a future to the runtime and forgets it: if the spawner returns, is
//! cancelled or fails, the task runs on, orphaned, and its error goes nowhere. A [`Scope`]
//! owns the tasks spawned in it. Its [`join`](Scope::join) completes only when every child
//! has; a failing child cancels its siblings (fail-fast) and its error is returned, or, with
//! [`join_settled`](Scope::join_settled), every child runs to its own end and every outcome
//! is returned (collect-all). A child's panic reaches the owner as
//! [`ScopeError::Panicked`], with the place the child was spawned. Dropping the scope
//! cancels every child.
//!
//! **Guarantee:** when `join`, `join_settled` or [`cancel`](Scope::cancel) returns, no child
//! is running any more — cancelled children have been dropped, not just asked to stop.
//! Dropping a scope without awaiting one of these asks every child to stop; on a multi-thread
//! runtime a child being polled at that instant finishes that poll first.
//!
//! **When not to use it:** for a task that must outlive its spawner (a background flusher),
//! use [`spawn_detached`](crate::spawn_detached) or a [`Supervisor`](crate::Supervisor).
//!
//! ```
//! use windlass_concurrency::Scope;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let mut scope = Scope::new();
//! for id in [1u32, 2, 3] {
//!     scope.spawn(async move { Ok::<_, std::io::Error>(id * 10) });
//! }
//! let results = scope.join().await.unwrap();
//! assert_eq!(results, vec![10, 20, 30]); // in spawn order
//! # }
//! ```

use std::any::Any;
use std::future::Future;
use std::panic::Location;

use tokio::task::{AbortHandle, JoinSet};
use windlass_policy::{ClassifiedError, ErrorClass};

/// Why a scope ended without every child succeeding.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScopeError<E> {
    /// A child returned an error; under fail-fast its siblings were cancelled.
    #[error("child {index} (spawned at {site}) failed")]
    Failed {
        /// The child's position in spawn order.
        index: usize,
        /// Where it was spawned.
        site: &'static Location<'static>,
        /// Its error.
        #[source]
        error: E,
        /// Under fail-fast: the siblings that also failed or panicked before they could be
        /// cancelled (the first failure wins; these are kept, logged and counted, never
        /// dropped without a trace).
        suppressed: Vec<ScopeError<E>>,
    },
    /// A child panicked; under fail-fast its siblings were cancelled.
    #[error("child {index} (spawned at {site}) panicked: {message}")]
    Panicked {
        /// The child's position in spawn order.
        index: usize,
        /// Where it was spawned.
        site: &'static Location<'static>,
        /// The panic message, when it was a string.
        message: String,
        /// The panic payload, to re-raise with [`ScopeError::resume_unwind`].
        payload: PanicPayload,
        /// Under fail-fast: siblings that also failed or panicked (see `Failed`).
        suppressed: Vec<ScopeError<E>>,
    },
    /// The child was cancelled (by a failing sibling, or by [`Scope::cancel`]), or was
    /// spawned into a scope that had already been cancelled and never ran.
    #[error("child {index} (spawned at {site}) was cancelled")]
    Cancelled {
        /// The child's position in spawn order.
        index: usize,
        /// Where it was spawned.
        site: &'static Location<'static>,
    },
}

/// A failed child's error keeps its own class; a panic is permanent; a cancelled child is
/// cancelled.
impl<E: ClassifiedError> ClassifiedError for ScopeError<E> {
    fn error_class(&self) -> ErrorClass {
        match self {
            ScopeError::Failed { error, .. } => error.error_class(),
            ScopeError::Panicked { .. } => ErrorClass::Permanent,
            ScopeError::Cancelled { .. } => ErrorClass::Cancelled,
        }
    }
}

/// A panic's payload, kept so the owner can re-raise it.
pub struct PanicPayload(pub Box<dyn Any + Send + 'static>);

impl std::fmt::Debug for PanicPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PanicPayload(..)")
    }
}

impl<E> ScopeError<E> {
    /// Re-raises a child's panic on the current task; returns any other error unchanged.
    pub fn resume_unwind(self) -> Self {
        match self {
            ScopeError::Panicked { payload, .. } => std::panic::resume_unwind(payload.0),
            other => other,
        }
    }

    /// The child's position in spawn order.
    pub fn index(&self) -> usize {
        match self {
            ScopeError::Failed { index, .. }
            | ScopeError::Panicked { index, .. }
            | ScopeError::Cancelled { index, .. } => *index,
        }
    }

    /// Other children's failures that this one won over under fail-fast.
    pub fn suppressed(&self) -> &[ScopeError<E>] {
        match self {
            ScopeError::Failed { suppressed, .. } | ScopeError::Panicked { suppressed, .. } => {
                suppressed
            }
            ScopeError::Cancelled { .. } => &[],
        }
    }

    fn set_suppressed(&mut self, others: Vec<ScopeError<E>>) {
        if let ScopeError::Failed { suppressed, .. } | ScopeError::Panicked { suppressed, .. } =
            self
        {
            *suppressed = others;
        }
    }

    /// The failing child's own error, if it returned one.
    pub fn into_error(self) -> Option<E> {
        match self {
            ScopeError::Failed { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// The message of a panic payload, when it is a string.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// A set of child tasks owned by one parent. See the [module docs](self).
pub struct Scope<T, E> {
    set: JoinSet<(usize, Result<T, E>)>,
    children: Vec<Child>,
    cancelled: bool,
}

struct Child {
    site: &'static Location<'static>,
    /// `None` for a child spawned after the scope was cancelled: it never ran.
    abort: Option<AbortHandle>,
}

impl<T, E> std::fmt::Debug for Scope<T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scope")
            .field("spawned", &self.children.len())
            .field("running", &self.set.len())
            .finish()
    }
}

impl<T: Send + 'static, E: Send + 'static> Default for Scope<T, E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Send + 'static, E: Send + 'static> Scope<T, E> {
    /// An empty scope.
    pub fn new() -> Self {
        Scope {
            set: JoinSet::new(),
            children: Vec::new(),
            cancelled: false,
        }
    }

    /// Spawns a child on the current tokio runtime. Its result is reported at its index
    /// (the order of `spawn` calls).
    ///
    /// In a scope that was [cancelled](Self::cancel), the child is cancelled at once: it is
    /// dropped without ever being polled and reported as [`ScopeError::Cancelled`] (as in
    /// Trio, Kotlin and Swift: a cancelled scope starts no new work).
    ///
    /// # Panics
    /// Outside a tokio runtime, like `tokio::spawn`.
    #[track_caller]
    pub fn spawn<F>(&mut self, child: F) -> usize
    where
        F: Future<Output = Result<T, E>> + Send + 'static,
    {
        let index = self.children.len();
        let site = Location::caller();
        let abort = if self.cancelled {
            drop(child);
            None
        } else {
            Some(self.set.spawn(async move { (index, child.await) }))
        };
        self.children.push(Child { site, abort });
        index
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled
    }

    /// Children still running.
    pub fn running(&self) -> usize {
        self.set.len()
    }

    /// Children spawned so far.
    pub fn spawned(&self) -> usize {
        self.children.len()
    }

    /// Cancels every child and waits until all have stopped. The scope stays cancelled:
    /// children spawned into it later never run.
    pub async fn cancel(&mut self) {
        self.cancelled = true;
        self.set.abort_all();
        while self.set.join_next().await.is_some() {}
    }

    /// Cancels the children still running after a fail-fast failure, and returns those that
    /// failed or panicked on their own before the cancellation reached them.
    async fn cancel_collecting_failures(&mut self) -> Vec<ScopeError<E>> {
        self.cancelled = true;
        self.set.abort_all();
        let mut others = Vec::new();
        while let Some(joined) = self.set.join_next_with_id().await {
            let other = match joined {
                Ok((_, (_, Ok(_)))) => continue,
                Ok((_, (index, Err(error)))) => self.failed(index, error),
                Err(e) if e.is_cancelled() => continue,
                Err(e) => self.child_error(e),
            };
            others.push(other);
        }
        others
    }

    fn failed(&self, index: usize, error: E) -> ScopeError<E> {
        ScopeError::Failed {
            index,
            site: self.site(index),
            error,
            suppressed: Vec::new(),
        }
    }

    /// The error of a child that has no result: it never ran or was cancelled.
    fn never_finished(&self, index: usize) -> ScopeError<E> {
        ScopeError::Cancelled {
            index,
            site: self.site(index),
        }
    }

    fn index_of(&self, id: tokio::task::Id) -> usize {
        self.children
            .iter()
            .position(|c| c.abort.as_ref().is_some_and(|a| a.id() == id))
            .unwrap_or(usize::MAX)
    }

    fn site(&self, index: usize) -> &'static Location<'static> {
        self.children
            .get(index)
            .map_or(Location::caller(), |c| c.site)
    }

    /// A child that ended without returning: it panicked or was cancelled.
    fn child_error(&self, e: tokio::task::JoinError) -> ScopeError<E> {
        let index = self.index_of(e.id());
        let site = self.site(index);
        if e.is_panic() {
            let payload = e.into_panic();
            ScopeError::Panicked {
                index,
                site,
                message: panic_message(&*payload),
                payload: PanicPayload(payload),
                suppressed: Vec::new(),
            }
        } else {
            ScopeError::Cancelled { index, site }
        }
    }

    /// Waits for every child. Fail-fast: the first child to fail or panic cancels the
    /// others, which are awaited until they have stopped, and its error is returned.
    /// On success, the results come back in spawn order.
    pub async fn join(mut self) -> Result<Vec<T>, ScopeError<E>> {
        let mut results: Vec<Option<T>> = (0..self.children.len()).map(|_| None).collect();
        while let Some(joined) = self.set.join_next_with_id().await {
            let failure = match joined {
                Ok((_, (index, Ok(value)))) => {
                    if let Some(slot) = results.get_mut(index) {
                        *slot = Some(value);
                    }
                    continue;
                }
                Ok((_, (index, Err(error)))) => self.failed(index, error),
                Err(e) => self.child_error(e),
            };
            return Err(self.fail_fast(failure).await);
        }
        // A child with no result never ran (spawned after `cancel`) or was cancelled.
        if let Some(index) = results.iter().position(Option::is_none) {
            return Err(self.never_finished(index));
        }
        Ok(results.into_iter().flatten().collect())
    }

    /// Cancels the siblings of the first failure and attaches theirs to it.
    async fn fail_fast(&mut self, mut failure: ScopeError<E>) -> ScopeError<E> {
        tracing::debug!(error = %failure_kind(&failure), index = failure.index(), "scope child failed; cancelling siblings");
        let others = self.cancel_collecting_failures().await;
        for other in &others {
            tracing::warn!(kind = failure_kind(other), index = other.index(), site = %self.site(other.index()), "scope child also failed (suppressed by the first failure)");
        }
        if !others.is_empty() {
            metrics::counter!("windlass_scope_suppressed_errors_total")
                .increment(others.len() as u64);
        }
        failure.set_suppressed(others);
        failure
    }

    /// Waits for every child to end by itself and returns every outcome, in spawn order.
    pub async fn join_settled(mut self) -> Vec<Result<T, ScopeError<E>>> {
        let mut results: Vec<Option<Result<T, ScopeError<E>>>> =
            (0..self.children.len()).map(|_| None).collect();
        while let Some(joined) = self.set.join_next_with_id().await {
            let (index, outcome) = match joined {
                Ok((_, (index, Ok(v)))) => (index, Ok(v)),
                Ok((_, (index, Err(error)))) => (index, Err(self.failed(index, error))),
                Err(e) => {
                    let err = self.child_error(e);
                    (err.index(), Err(err))
                }
            };
            if let Some(slot) = results.get_mut(index) {
                *slot = Some(outcome);
            }
        }
        results
            .into_iter()
            .enumerate()
            .map(|(index, r)| r.unwrap_or_else(|| Err(self.never_finished(index))))
            .collect()
    }
}

fn failure_kind<E>(e: &ScopeError<E>) -> &'static str {
    match e {
        ScopeError::Failed { .. } => "failed",
        ScopeError::Panicked { .. } => "panicked",
        ScopeError::Cancelled { .. } => "cancelled",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use windlass_test_support::ms;

    /// Counts live children: +1 when a child starts, -1 when it is dropped (however it ends).
    #[derive(Clone, Default)]
    struct Live(Arc<AtomicUsize>);

    struct Alive(Arc<AtomicUsize>);

    impl Drop for Alive {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl Live {
        fn enter(&self) -> Alive {
            self.0.fetch_add(1, Ordering::SeqCst);
            Alive(self.0.clone())
        }
        fn count(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn join_waits_for_every_child_and_keeps_spawn_order() {
        let live = Live::default();
        let mut s = Scope::new();
        for (i, d) in [30u64, 10, 20].into_iter().enumerate() {
            let live = live.clone();
            s.spawn(async move {
                let _alive = live.enter();
                tokio::time::sleep(ms(d)).await;
                Ok::<_, &str>(i)
            });
        }
        let start = tokio::time::Instant::now();
        assert_eq!(s.join().await.unwrap(), vec![0, 1, 2]);
        assert_eq!(start.elapsed(), ms(30));
        assert_eq!(live.count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn fail_fast_cancels_siblings_and_none_is_left_running() {
        let live = Live::default();
        let finished = Arc::new(AtomicUsize::new(0));
        let mut s = Scope::new();
        for i in 0..5u64 {
            let (live, finished) = (live.clone(), finished.clone());
            s.spawn(async move {
                let _alive = live.enter();
                tokio::time::sleep(ms(10 + i * 100)).await;
                if i == 0 {
                    return Err("boom");
                }
                finished.fetch_add(1, Ordering::SeqCst);
                Ok(())
            });
        }
        let err = s.join().await.unwrap_err();
        assert!(
            matches!(
                err,
                ScopeError::Failed {
                    index: 0,
                    error: "boom",
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            live.count(),
            0,
            "every sibling was dropped before join returned"
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(finished.load(Ordering::SeqCst), 0, "no sibling ran on");
    }

    #[tokio::test(start_paused = true)]
    async fn a_scope_reports_its_children_and_the_failing_childs_own_error() {
        let mut s: Scope<u32, &str> = Scope::new();
        assert_eq!((s.spawned(), s.running(), s.is_cancelled()), (0, 0, false));
        s.spawn(async { Err("bad input") });
        s.spawn(std::future::pending());
        assert_eq!((s.spawned(), s.running()), (2, 2));
        let err = s.join().await.unwrap_err();
        assert_eq!(err.into_error(), Some("bad input"));
        let mut s: Scope<u32, &str> = Scope::new();
        s.spawn(std::future::pending());
        s.cancel().await;
        assert!(s.is_cancelled());
        assert_eq!(s.running(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn collect_all_keeps_every_outcome_in_order() {
        let mut s = Scope::new();
        s.spawn(async { Err::<u32, _>("first") });
        s.spawn(async {
            tokio::time::sleep(ms(5)).await;
            Ok(2)
        });
        s.spawn(async { panic!("third") });
        let out = s.join_settled().await;
        assert!(matches!(
            out[0],
            Err(ScopeError::Failed { error: "first", .. })
        ));
        assert_eq!(*out[1].as_ref().unwrap(), 2);
        match &out[2] {
            Err(ScopeError::Panicked {
                index: 2,
                message,
                site,
                ..
            }) => {
                assert_eq!(message, "third");
                assert!(site.file().ends_with("scope.rs"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn panic_reaches_the_owner_and_can_be_re_raised() {
        let mut s: Scope<(), &str> = Scope::new();
        s.spawn(async { panic!("child blew up") });
        let err = s.join().await.unwrap_err();
        assert!(matches!(&err, ScopeError::Panicked { message, .. } if message == "child blew up"));
        let caught =
            futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(async move {
                err.resume_unwind();
            }))
            .await;
        assert!(caught.is_err(), "resume_unwind re-raised the panic");
    }

    /// Regression: after `cancel`, `spawn` started children normally and `join` waited for
    /// them.
    #[tokio::test(start_paused = true)]
    async fn a_child_spawned_into_a_cancelled_scope_never_runs() {
        let live = Live::default();
        let mut s = pending_children(&live, 2);
        s.cancel().await;
        assert!(s.is_cancelled());
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        let index = s.spawn(async move {
            r.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<()>().await;
            Ok(())
        });
        assert_eq!(index, 2);
        assert_eq!(s.running(), 0);
        let out = tokio::time::timeout(Duration::from_secs(1), s.join())
            .await
            .expect("join does not wait for a child of a cancelled scope");
        assert!(matches!(out, Err(ScopeError::Cancelled { .. })), "{out:?}");
        assert_eq!(ran.load(Ordering::SeqCst), 0, "never polled");

        let mut s: Scope<u8, ()> = Scope::new();
        s.cancel().await;
        s.spawn(async { Ok(1) });
        let settled = s.join_settled().await;
        assert!(matches!(
            settled[..],
            [Err(ScopeError::Cancelled { index: 0, .. })]
        ));
    }

    /// Regression: under fail-fast the errors after the first were dropped without a trace.
    #[tokio::test(start_paused = true)]
    async fn fail_fast_keeps_the_other_failures_as_suppressed() {
        let mut s: Scope<(), String> = Scope::new();
        for i in 0..3 {
            s.spawn(async move {
                tokio::time::sleep(ms(10)).await;
                Err(format!("child {i}"))
            });
        }
        s.spawn(async {
            tokio::time::sleep(ms(10)).await;
            panic!("child 3 panicked")
        });
        s.spawn(async {
            std::future::pending::<()>().await;
            Ok(())
        });
        let err = s.join().await.unwrap_err();
        let mut all: Vec<usize> = std::iter::once(err.index())
            .chain(err.suppressed().iter().map(ScopeError::index))
            .collect();
        all.sort_unstable();
        assert_eq!(
            all,
            vec![0, 1, 2, 3],
            "every failure kept; the pending child was cancelled"
        );
        assert!(err.suppressed().iter().chain(std::iter::once(&err)).any(
            |e| matches!(e, ScopeError::Panicked { message, .. } if message == "child 3 panicked")
        ));
    }

    /// A scope with `n` children that never finish, each counted by `live`.
    fn pending_children(live: &Live, n: usize) -> Scope<(), ()> {
        let mut s = Scope::new();
        for _ in 0..n {
            let live = live.clone();
            s.spawn(async move {
                let _alive = live.enter();
                std::future::pending::<()>().await;
                Ok(())
            });
        }
        s
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_or_cancelling_the_scope_stops_every_child() {
        let live = Live::default();
        let mut s = pending_children(&live, 3);
        tokio::task::yield_now().await;
        assert_eq!(live.count(), 3);
        s.cancel().await;
        assert_eq!(live.count(), 0, "cancel waits until every child is gone");

        let s = pending_children(&live, 3);
        tokio::task::yield_now().await;
        assert_eq!(live.count(), 3);
        drop(s);
        // Aborted tasks are dropped when the runtime next runs them.
        tokio::task::yield_now().await;
        assert_eq!(live.count(), 0, "dropping the scope cancelled every child");
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_owner_cancels_its_children() {
        let live = Live::default();
        let l = live.clone();
        let owner = tokio::spawn(async move { pending_children(&l, 4).join().await });
        tokio::time::sleep(ms(1)).await;
        assert_eq!(live.count(), 4);
        owner.abort();
        let _ = owner.await;
        tokio::task::yield_now().await;
        assert_eq!(live.count(), 0);
    }
}
