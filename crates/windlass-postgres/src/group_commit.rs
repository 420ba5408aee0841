//! The group-commit writer that journal entries (`journal.rs`), direct starts (`starts.rs`)
//! and run ends (`ends.rs`) share.
//!
//! Each of those writes is one statement (a commit), and its caller waits for it. With many
//! runs in flight, one statement per write makes the database's statement and commit rate
//! the ceiling. Here the writes that arrive while earlier ones are being written wait
//! together and go out as one batch (its statement over `unnest`ed arrays is the caller's
//! business: `write` gets the batch); a write that arrives with a slot free goes at once.
//! Up to `in_flight` batches are written at once, each on its own connection: more than one
//! keeps a write that arrives just after a batch left from waiting a whole commit for the
//! next, but makes smaller batches (the workflow writers use one). Writes whose keys are
//! equal never share a batch (the later waits for the next one), so a batch statement never
//! meets one row twice.
//!
//! **Writes woken together go together.** One batch's answers wake several callers at once,
//! and their next writes follow at once; but the first of them wakes the writer, and on
//! tokio's multi-thread scheduler a task just woken runs next (its "LIFO slot"), so the
//! writer used to cut a batch of that first write alone and make the others wait a whole
//! commit for the next. So before it cuts a batch the writer yields once, and a caller
//! about to write alone (`alone`) yields once and joins the others if any sent meanwhile.
//! Measured on WF1 (PostgreSQL, 5,000 workflows, 16 in flight): 2,613 statements instead of
//! 4,284 for 3,000 workflows, and 30-40% more workflows per second (BENCHMARKS.md).
//!
//! The writer task runs on the runtime of the first write; if that runtime is gone, `send`
//! gives the write back and the caller writes it straight to the database.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use deadpool_postgres::{ClientWrapper, Pool};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use windlass_queue::StoreError;

/// The sending side of a group-commit writer of `T`s.
pub(crate) struct GroupWriter<T> {
    tx: mpsc::UnboundedSender<T>,
    /// The writes in flight: `in_flight` permits, shared by the writer's batches and the
    /// callers who write alone.
    slots: Arc<Semaphore>,
    /// Writes sent and not yet in a batch.
    queued: Arc<AtomicUsize>,
}

impl<T: Send + 'static> GroupWriter<T> {
    /// Starts the writer task on the current runtime: batches of at most `max_batch`, up to
    /// `in_flight` of them written at once by `write` (which answers each write's caller),
    /// no two writes with the same `key` in one batch. It ends when the writer is dropped.
    pub(crate) fn spawn<K, W, F>(max_batch: usize, in_flight: usize, key: K, write: W) -> Self
    where
        K: Fn(&T) -> Option<String> + Send + 'static,
        W: Fn(Vec<T>) -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<T>();
        let slots = Arc::new(Semaphore::new(in_flight));
        let queued = Arc::new(AtomicUsize::new(0));
        let writer = GroupWriter {
            tx,
            slots: Arc::clone(&slots),
            queued: Arc::clone(&queued),
        };
        tokio::spawn(async move {
            // Writes put off because their key was already in the batch being built.
            let mut later: std::collections::VecDeque<T> = std::collections::VecDeque::new();
            loop {
                let first = match later.pop_front() {
                    Some(t) => t,
                    None => match rx.recv().await {
                        Some(t) => t,
                        None => return,
                    },
                };
                // The slot is taken only once there is a write: an idle writer holds none, so
                // a lone caller can take it and write at once on its own task (`alone`).
                let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                    return;
                };
                // Callers are often woken together (one batch's answers wake several runs,
                // whose next writes then arrive at once): let those already woken run and
                // send before the batch is cut, so they join it instead of each going out
                // nearly alone.
                tokio::task::yield_now().await;
                let mut keys: HashSet<String> = HashSet::new();
                let mut fits = |t: &T| key(t).is_none_or(|k| keys.insert(k));
                fits(&first);
                let mut batch = vec![first];
                for _ in 0..later.len() {
                    match later.pop_front() {
                        Some(t) if batch.len() < max_batch && fits(&t) => batch.push(t),
                        Some(t) => later.push_back(t),
                        None => break,
                    }
                }
                while batch.len() < max_batch {
                    match rx.try_recv() {
                        Ok(t) => {
                            if fits(&t) {
                                batch.push(t);
                            } else {
                                later.push_back(t);
                            }
                        }
                        Err(_) => break,
                    }
                }
                // Writes that wait (for a slot, or in `later`) count as queued until batched.
                queued.fetch_sub(batch.len(), Ordering::AcqRel);
                let written = write(batch);
                tokio::spawn(async move {
                    written.await;
                    drop(slot);
                });
            }
        });
        writer
    }

    /// A write slot for a write to be done at once on the caller's own task, if nothing
    /// waits for the writer and a slot is free: a lone write then costs no hop through the
    /// writer task. `None`: send it.
    pub(crate) async fn alone(&self) -> Option<OwnedSemaphorePermit> {
        if self.queued.load(Ordering::Acquire) > 0 {
            return None;
        }
        let slot = Arc::clone(&self.slots).try_acquire_owned().ok()?;
        // As the writer does before cutting a batch: callers woken with this one get to send
        // first; if any did, this write joins their batch instead of going alone.
        tokio::task::yield_now().await;
        (self.queued.load(Ordering::Acquire) == 0).then_some(slot)
    }

    /// Hands `t` to the writer and waits for `answer` (the receiving end of `t`'s reply);
    /// if the writer's runtime is gone, `alone` writes `t` straight to the database instead.
    /// `what` names the writer if it stops before answering.
    pub(crate) async fn write<A, F, Fut>(
        &self,
        t: T,
        answer: tokio::sync::oneshot::Receiver<Result<A, StoreError>>,
        what: &str,
        alone: F,
    ) -> Result<A, StoreError>
    where
        F: FnOnce(T) -> Fut,
        Fut: Future<Output = Result<A, StoreError>>,
    {
        if let Err(t) = self.send(t) {
            return alone(*t).await;
        }
        answer.await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(format!(
                "the {what} writer stopped before answering"
            )))
        })
    }

    /// Hands `t` to the writer; `Err` gives it back if the writer's runtime is gone.
    pub(crate) fn send(&self, t: T) -> Result<(), Box<T>> {
        self.queued.fetch_add(1, Ordering::AcqRel);
        self.tx.send(t).map_err(|e| {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            Box::new(e.0)
        })
    }
}

/// A write waiting in a group-commit writer, answered with an `A` once stored (or failed).
pub(crate) trait Answer<A> {
    /// Tells the write's caller how it went.
    fn answer(self, answer: Result<A, StoreError>);
}

/// Writes `batch` on a connection from `pool`, answering each write: several with `many` (one
/// statement, answered in `batch`'s order); if that statement fails, or for a lone write,
/// each with `one`, so one bad write fails only its own caller. Both get `with` (what the
/// writer's statements need besides the writes); `what` names the writes in the log.
pub(crate) async fn write_batch<T, A, C, M, O>(
    pool: &Pool,
    batch: Vec<T>,
    what: &str,
    with: &C,
    many: M,
    one: O,
) where
    T: Answer<A>,
    C: ?Sized,
    M: AsyncFn(&ClientWrapper, &C, &[T]) -> Result<Vec<Result<A, StoreError>>, StoreError>,
    O: AsyncFn(&ClientWrapper, &C, &T) -> Result<A, StoreError>,
{
    let client = match pool.get().await {
        Ok(c) => c,
        Err(e) => {
            let e = StoreError::Unavailable(format!("no database connection: {e}"));
            for t in batch {
                t.answer(Err(e.clone()));
            }
            return;
        }
    };
    if batch.len() > 1 {
        match many(&client, with, &batch).await {
            Ok(answers) => {
                for (t, answer) in batch.into_iter().zip(answers) {
                    t.answer(answer);
                }
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, writes = batch.len(), what, "a batch failed; writing its writes one by one");
            }
        }
    }
    for t in batch {
        let answer = one(&client, with, &t).await;
        t.answer(answer);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::sync::oneshot;

    use super::GroupWriter;

    /// The batches a writer was given, each as its writes' numbers.
    type Batches = Arc<Mutex<Vec<Vec<u32>>>>;

    /// A writer whose batches are recorded, not written.
    fn recording() -> (GroupWriter<u32>, Batches) {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&batches);
        let writer = GroupWriter::spawn(
            64,
            1,
            |_| None,
            move |batch: Vec<u32>| {
                seen.lock().unwrap().push(batch);
                async {}
            },
        );
        (writer, batches)
    }

    /// Callers woken at the moment a write arrives share its batch: the writer lets them run
    /// before it cuts the batch. The writer is woken first here (the first write is sent,
    /// then five callers are woken), so without that it would write the first write alone.
    #[tokio::test]
    async fn callers_woken_with_a_write_join_its_batch() {
        let (writer, batches) = recording();
        let writer = Arc::new(writer);
        let mut wakes = Vec::new();
        let mut callers = Vec::new();
        for n in 1..=5 {
            let (wake, woken) = oneshot::channel::<()>();
            let writer = Arc::clone(&writer);
            wakes.push(wake);
            callers.push(tokio::spawn(async move {
                woken.await.unwrap();
                assert!(writer.send(n).is_ok());
            }));
        }
        // Let the callers start waiting, and the writer take its write slot.
        tokio::task::yield_now().await;
        assert!(writer.send(0).is_ok());
        for wake in wakes {
            wake.send(()).unwrap();
        }
        for caller in callers {
            caller.await.unwrap();
        }
        while batches.lock().unwrap().iter().map(Vec::len).sum::<usize>() < 6 {
            tokio::task::yield_now().await;
        }
        assert_eq!(*batches.lock().unwrap(), vec![vec![0, 1, 2, 3, 4, 5]]);
    }

    /// A lone write goes alone only if no caller woken with it sends meanwhile; otherwise
    /// it gives its slot back and is sent to join their batch.
    #[tokio::test]
    async fn a_lone_write_joins_callers_woken_with_it() {
        let (writer, _batches) = recording();
        let writer = Arc::new(writer);
        // Nobody else: the write may go alone.
        assert!(writer.alone().await.is_some());
        let (wake, woken) = oneshot::channel::<()>();
        let other = Arc::clone(&writer);
        let caller = tokio::spawn(async move {
            woken.await.unwrap();
            assert!(other.send(1).is_ok());
        });
        tokio::task::yield_now().await;
        wake.send(()).unwrap();
        // The caller woken just now sends while this write waits: it must not go alone.
        assert!(writer.alone().await.is_none());
        caller.await.unwrap();
    }
}
