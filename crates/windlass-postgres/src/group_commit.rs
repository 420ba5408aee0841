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
//! next, but makes smaller batches (the workflow writers use one). Writes whose keys are equal never share a batch (the later waits for the next one),
//! so a batch statement never meets one row twice.
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
    /// Writes sent and not yet taken by the writer.
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
                let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                    return;
                };
                let first = match later.pop_front() {
                    Some(t) => t,
                    None => match rx.recv().await {
                        Some(t) => {
                            queued.fetch_sub(1, Ordering::AcqRel);
                            t
                        }
                        None => return,
                    },
                };
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
                            queued.fetch_sub(1, Ordering::AcqRel);
                            if fits(&t) {
                                batch.push(t);
                            } else {
                                later.push_back(t);
                            }
                        }
                        Err(_) => break,
                    }
                }
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
    pub(crate) fn alone(&self) -> Option<OwnedSemaphorePermit> {
        if self.queued.load(Ordering::Acquire) > 0 {
            return None;
        }
        Arc::clone(&self.slots).try_acquire_owned().ok()
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
