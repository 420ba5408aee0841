//! CPU offload: run computing work off the async runtime, on a bounded pool.
//!
//! The rule: **async for waiting, threads for computing**. A closure that computes for
//! milliseconds (resizing an image, hashing a password, parsing a large document) blocks
//! the runtime thread it runs on, and every task scheduled there waits behind it. [`Offload`]
//! runs such closures on tokio's blocking threads, at most `threads` at a time, with at most
//! `queue` more waiting; past that, [`Offload::run`] waits for room (backpressure) and
//! [`Offload::try_run`] refuses at once. A job whose awaiting future is dropped before the
//! job starts never runs (it is counted as abandoned); a job that has started keeps its
//! thread and queue slot until it finishes, even if its caller stopped waiting, so the
//! bounds hold exactly when callers time out under overload. Queue depth, running jobs and run time are measured
//! (`windlass_offload_queued`, `windlass_offload_running`, `windlass_offload_run_seconds`).
//!
//! **When not to use it:** for blocking *I/O* (use the async API, or plain
//! `spawn_blocking`), or for work under ~100 µs, where the hand-off costs more than it saves.
//!
//! ```
//! use windlass_concurrency::Offload;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let pool = Offload::new("thumbnails", 2, 16).unwrap();
//! let sum = pool.run(|| (0..1_000_000u64).sum::<u64>()).await.unwrap();
//! assert_eq!(sum, 499_999_500_000);
//! # }
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use windlass_policy::ConfigError;

use crate::scope::panic_message;
use windlass_policy::{ClassifiedError, ErrorClass};

/// Why an offloaded job produced no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OffloadError {
    /// [`Offload::try_run`]: every thread is busy and the queue is full.
    #[error("offload pool '{0}' is full")]
    Full(Arc<str>),
    /// The job panicked; the message is kept.
    #[error("offloaded job panicked: {0}")]
    Panicked(String),
    /// The runtime is shutting down and did not run the job.
    #[error("the runtime is shutting down")]
    Shutdown,
}

/// A full pool is transient (try again later); a panic is a bug that will recur
/// (permanent); a shutdown never ran the job, so it is cancelled, not failed.
impl ClassifiedError for OffloadError {
    fn error_class(&self) -> ErrorClass {
        match self {
            OffloadError::Full(_) => ErrorClass::Transient,
            OffloadError::Panicked(_) => ErrorClass::Permanent,
            OffloadError::Shutdown => ErrorClass::Cancelled,
        }
    }
}

/// Counters of an [`Offload`] pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OffloadStats {
    /// Jobs waiting for a thread.
    pub queued: u64,
    /// Jobs running.
    pub running: u64,
    /// Jobs finished (including panicked ones).
    pub completed: u64,
    /// Jobs refused by `try_run`.
    pub rejected: u64,
    /// Jobs whose caller went away before they started (never run).
    pub abandoned: u64,
}

struct Shared {
    name: Arc<str>,
    admitted: Arc<Semaphore>,
    threads: Arc<Semaphore>,
    queued: AtomicU64,
    running: AtomicU64,
    completed: AtomicU64,
    rejected: AtomicU64,
    abandoned: AtomicU64,
    m_queued: metrics::Gauge,
    m_running: metrics::Gauge,
    m_run: metrics::Histogram,
}

/// A bounded pool for CPU-bound closures. Cheap to clone.
#[derive(Clone)]
pub struct Offload {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Offload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Offload")
            .field("name", &self.shared.name)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Leaves the queue however the wait ends; a wait that ends without a thread (the caller
/// went away) abandons the job.
struct Waiting<'a> {
    shared: &'a Shared,
    got_thread: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.shared.queued.fetch_sub(1, Ordering::Relaxed);
        self.shared.m_queued.decrement(1.0);
        if !self.got_thread {
            self.shared.abandoned.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Offload {
    /// A pool named `name` running at most `threads` jobs at once (at least 1) with at most
    /// `queue` more waiting.
    pub fn new(
        name: impl Into<Arc<str>>,
        threads: usize,
        queue: usize,
    ) -> Result<Self, ConfigError> {
        let invalid = |field, problem: &str| ConfigError::new("offload", field, problem);
        if threads == 0 {
            return Err(invalid("threads", "must be at least 1"));
        }
        let admitted = threads
            .checked_add(queue)
            .filter(|n| *n <= Semaphore::MAX_PERMITS)
            .ok_or_else(|| invalid("queue", "is too large"))?;
        let name: Arc<str> = name.into();
        let label = name.to_string();
        Ok(Offload {
            shared: Arc::new(Shared {
                admitted: Arc::new(Semaphore::new(admitted)),
                threads: Arc::new(Semaphore::new(threads)),
                queued: AtomicU64::new(0),
                running: AtomicU64::new(0),
                completed: AtomicU64::new(0),
                rejected: AtomicU64::new(0),
                abandoned: AtomicU64::new(0),
                m_queued: metrics::gauge!("windlass_offload_queued", "name" => label.clone()),
                m_running: metrics::gauge!("windlass_offload_running", "name" => label.clone()),
                m_run: metrics::histogram!("windlass_offload_run_seconds", "name" => label),
                name,
            }),
        })
    }

    /// The pool's counters.
    pub fn stats(&self) -> OffloadStats {
        let s = &self.shared;
        OffloadStats {
            queued: s.queued.load(Ordering::Relaxed),
            running: s.running.load(Ordering::Relaxed),
            completed: s.completed.load(Ordering::Relaxed),
            rejected: s.rejected.load(Ordering::Relaxed),
            abandoned: s.abandoned.load(Ordering::Relaxed),
        }
    }

    /// Runs `job` on the pool, waiting for room in the queue if it is full.
    pub async fn run<F, R>(&self, job: F) -> Result<R, OffloadError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let admitted = self
            .shared
            .admitted
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| OffloadError::Shutdown)?;
        self.execute(admitted, job).await
    }

    /// Runs `job` on the pool, or fails at once with [`OffloadError::Full`].
    pub async fn try_run<F, R>(&self, job: F) -> Result<R, OffloadError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let Ok(admitted) = self.shared.admitted.clone().try_acquire_owned() else {
            self.shared.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(OffloadError::Full(self.shared.name.clone()));
        };
        self.execute(admitted, job).await
    }

    async fn execute<F, R>(&self, admitted: OwnedSemaphorePermit, job: F) -> Result<R, OffloadError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let s = &*self.shared;
        s.queued.fetch_add(1, Ordering::Relaxed);
        s.m_queued.increment(1.0);
        let mut waiting = Waiting {
            shared: s,
            got_thread: false,
        };
        let thread = s
            .threads
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| OffloadError::Shutdown)?;
        waiting.got_thread = true;
        drop(waiting);
        // Set when this future is dropped: a job whose caller left before it started on
        // its thread is skipped.
        let abandoned = Arc::new(AtomicBool::new(false));
        struct Abandon(Arc<AtomicBool>, bool);
        impl Drop for Abandon {
            fn drop(&mut self) {
                if !self.1 {
                    self.0.store(true, Ordering::SeqCst);
                }
            }
        }
        let mut guard = Abandon(abandoned.clone(), false);
        let shared = self.shared.clone();
        let handle = tokio::task::spawn_blocking(move || {
            // Both permits live as long as the job, not as long as its caller: a caller that
            // stops waiting (a timeout, a cancelled request) does not free a slot whose job
            // is still computing.
            let _permits = (admitted, thread);
            if abandoned.load(Ordering::SeqCst) {
                shared.abandoned.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            shared.running.fetch_add(1, Ordering::Relaxed);
            shared.m_running.increment(1.0);
            let started = Instant::now();
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            shared.m_run.record(started.elapsed().as_secs_f64());
            shared.running.fetch_sub(1, Ordering::Relaxed);
            shared.m_running.decrement(1.0);
            shared.completed.fetch_add(1, Ordering::Relaxed);
            Some(out)
        });
        let joined = handle.await;
        guard.1 = true;
        match joined {
            Ok(Some(Ok(v))) => Ok(v),
            Ok(Some(Err(panic))) => Err(OffloadError::Panicked(panic_message(&*panic))),
            Ok(None) | Err(_) => Err(OffloadError::Shutdown),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn runs_jobs_and_reports_panics() {
        let pool = Offload::new("t", 2, 4).unwrap();
        assert_eq!(pool.run(|| 6 * 7).await, Ok(42));
        let out = pool.run(|| -> u8 { panic!("bad pixel") }).await;
        assert_eq!(out, Err(OffloadError::Panicked("bad pixel".into())));
        assert_eq!(pool.stats().completed, 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn never_more_than_threads_running_and_full_queue_rejects() {
        let pool = Offload::new("t2", 1, 1).unwrap();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let p = pool.clone();
        // Job 1 holds the only thread until released.
        let first = tokio::spawn(async move {
            p.run(move || {
                let _ = started_tx.send(());
                let _ = release_rx.recv();
                1
            })
            .await
        });
        started_rx.await.unwrap();
        // Job 2 waits in the queue (its one place).
        let p = pool.clone();
        let second = tokio::spawn(async move { p.run(|| 2).await });
        while pool.stats().queued < 1 {
            tokio::task::yield_now().await;
        }
        // Job 3 finds thread and queue full.
        assert!(matches!(
            pool.try_run(|| 3).await,
            Err(OffloadError::Full(_))
        ));
        assert_eq!(pool.stats().running, 1);
        release_tx.send(()).unwrap();
        assert_eq!(first.await.unwrap(), Ok(1));
        assert_eq!(second.await.unwrap(), Ok(2));
        assert_eq!(pool.stats().rejected, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn job_dropped_before_it_starts_never_runs() {
        let pool = Offload::new("t3", 1, 4).unwrap();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let p = pool.clone();
        let blocker = tokio::spawn(async move {
            p.run(move || {
                let _ = started_tx.send(());
                let _ = release_rx.recv();
            })
            .await
        });
        started_rx.await.unwrap();
        let ran = Arc::new(AtomicBool::new(false));
        let r = ran.clone();
        let p = pool.clone();
        let waiting =
            tokio::spawn(async move { p.run(move || r.store(true, Ordering::SeqCst)).await });
        while pool.stats().queued < 1 {
            tokio::task::yield_now().await;
        }
        waiting.abort();
        let _ = waiting.await;
        release_tx.send(()).unwrap();
        blocker.await.unwrap().unwrap();
        // Give the pool a chance to (wrongly) run it.
        assert_eq!(pool.run(|| ()).await, Ok(()));
        assert!(!ran.load(Ordering::SeqCst), "the abandoned job never ran");
        assert_eq!(pool.stats().queued, 0);
        assert_eq!(pool.stats().abandoned, 1);
        assert_eq!(pool.stats().completed, 2, "the blocker and the probe");
    }

    #[test]
    fn job_whose_caller_leaves_before_its_thread_starts_it_never_runs() {
        // The caller got a pool thread, but tokio's blocking pool (one thread here) is busy,
        // so the job is queued there when the caller goes away: it must be skipped.
        let rt = tokio::runtime::Builder::new_current_thread()
            .max_blocking_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
            let hog = tokio::task::spawn_blocking(move || release_rx.recv());
            let pool = Offload::new("t-late", 2, 0).unwrap();
            let ran = Arc::new(AtomicBool::new(false));
            let r = ran.clone();
            let mut caller = Box::pin(pool.run(move || r.store(true, Ordering::SeqCst)));
            assert!(
                futures_util::FutureExt::now_or_never(caller.as_mut()).is_none(),
                "the job is handed to the busy blocking pool"
            );
            drop(caller);
            release_tx.send(()).unwrap();
            hog.await.unwrap().unwrap();
            // One blocking thread runs jobs in order: once this one is done, the abandoned
            // job has had its turn.
            tokio::task::spawn_blocking(|| ()).await.unwrap();
            assert!(!ran.load(Ordering::SeqCst), "the abandoned job never ran");
            assert_eq!(pool.stats().abandoned, 1);
            assert_eq!(pool.stats().completed, 0);
        });
    }

    /// Regression: both permits lived in the caller's future, so a caller that timed out
    /// freed the slot of a job that was still computing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_that_stops_waiting_does_not_free_its_running_jobs_slot() {
        let pool = Offload::new("t4", 1, 0).unwrap();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let p = pool.clone();
        let caller = tokio::spawn(async move {
            p.run(move || {
                let _ = started_tx.send(());
                let _ = release_rx.recv();
            })
            .await
        });
        started_rx.await.unwrap();
        caller.abort();
        assert!(caller.await.unwrap_err().is_cancelled());
        assert_eq!(pool.stats().running, 1, "the job computes on");
        assert!(
            matches!(pool.try_run(|| ()).await, Err(OffloadError::Full(_))),
            "its slot is still taken"
        );
        release_tx.send(()).unwrap();
        // Once the job ends, its slot comes back: `run` waits for it and gets it.
        assert_eq!(pool.run(|| 7).await, Ok(7));
        assert_eq!(pool.stats().running, 0);
    }

    #[test]
    fn invalid_sizes_rejected() {
        assert_eq!(Offload::new("x", 0, 1).unwrap_err().field(), "threads");
        assert_eq!(
            Offload::new("x", 1, usize::MAX).unwrap_err().field(),
            "queue"
        );
    }
}
