//! The queue's client: enqueue typed jobs, look them up, cancel them, replay the dead-letter
//! queue, and wait for a job's result.
//!
//! A [`Queue`] is cheap to clone (an `Arc` around the store and the event channel) and is
//! what producers hold; a [`Worker`](crate::Worker) is built from one and shares its events,
//! so [`Queue::wait`] in the same process hears a result the moment it is stored. Across
//! processes, `wait` reads the store at a bounded interval, so it works with workers anywhere.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use crate::handler::Job;
use crate::job::{EnqueueError, Enqueued, JobId, JobOptions, JobRecord, JobState, NewJob};
use crate::store::{JobFilter, QueueStats, Store, StoreError};

/// Something that happened to a job, as workers in this process report it.
#[derive(Debug, Clone, PartialEq)]
pub struct JobEvent {
    /// The job.
    pub id: JobId,
    /// What happened.
    pub kind: JobEventKind,
}

/// The kinds of [`JobEvent`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum JobEventKind {
    /// An attempt started.
    Started {
        /// Its number.
        attempt: u32,
    },
    /// The handler reported progress.
    Progress(serde_json::Value),
    /// The job completed.
    Completed,
    /// An attempt failed and another is scheduled.
    Retrying {
        /// The error.
        error: String,
        /// When the next attempt is due (ms since the Unix epoch).
        run_at_ms: i64,
    },
    /// The job was put back without counting the attempt (snooze, or released at shutdown).
    Snoozed {
        /// When it is due again.
        run_at_ms: i64,
    },
    /// The job was discarded (dead letter).
    Discarded {
        /// The last error.
        error: String,
    },
    /// The job was cancelled.
    Cancelled,
}

/// Why an enqueue or a lookup failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The job was invalid; nothing was stored.
    #[error(transparent)]
    Enqueue(#[from] EnqueueError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `wait` gave up.
    #[error("job {id} did not finish within {waited:?}")]
    WaitTimedOut {
        /// The job.
        id: JobId,
        /// How long it waited.
        waited: Duration,
    },
    /// `wait` was asked about a job that does not exist (or was pruned).
    #[error("no job {0}")]
    NotFound(JobId),
}

impl windlass_policy::ClassifiedError for QueueError {
    fn error_class(&self) -> windlass_policy::ErrorClass {
        match self {
            QueueError::Store(e) => e.error_class(),
            QueueError::WaitTimedOut { .. } => windlass_policy::ErrorClass::Transient,
            _ => windlass_policy::ErrorClass::Permanent,
        }
    }
}

/// A handle on a job store: the producer's side of the queue.
#[derive(Debug)]
pub struct Queue<S> {
    pub(crate) store: Arc<S>,
    pub(crate) events: broadcast::Sender<JobEvent>,
}

impl<S> Clone for Queue<S> {
    fn clone(&self) -> Self {
        Queue {
            store: self.store.clone(),
            events: self.events.clone(),
        }
    }
}

impl<S: Store> Queue<S> {
    /// A queue over `store`.
    pub fn new(store: S) -> Self {
        let (events, _) = broadcast::channel(1024);
        Queue {
            store: Arc::new(store),
            events,
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// Enqueues one typed job. Returns the existing job's id (with `duplicate: true`) when
    /// its unique key matches a job that already exists.
    pub async fn enqueue<J: Job>(
        &self,
        payload: &J::Payload,
        options: JobOptions,
    ) -> Result<Enqueued, QueueError> {
        let job = typed::<J>(payload, options)?;
        count_enqueued(std::slice::from_ref(&job));
        let mut out = self.store.enqueue(vec![job]).await?;
        out.pop().ok_or_else(|| {
            QueueError::Store(StoreError::Corrupt("enqueue returned nothing".into()))
        })
    }

    /// Enqueues many typed jobs of one kind in one transaction: all or none.
    pub async fn enqueue_many<J: Job>(
        &self,
        payloads: impl IntoIterator<Item = &J::Payload>,
        options: JobOptions,
    ) -> Result<Vec<Enqueued>, QueueError> {
        let jobs = payloads
            .into_iter()
            .map(|p| typed::<J>(p, options.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        count_enqueued(&jobs);
        Ok(self.store.enqueue(jobs).await?)
    }

    /// Enqueues raw jobs (already validated by [`NewJob::new`]) in one transaction.
    pub async fn enqueue_raw(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>, QueueError> {
        count_enqueued(&jobs);
        Ok(self.store.enqueue(jobs).await?)
    }

    /// One job, with every attempt's record.
    pub async fn get(&self, id: JobId) -> Result<Option<JobRecord>, QueueError> {
        Ok(self.store.get(id).await?)
    }

    /// Jobs matching `filter`.
    pub async fn list(&self, filter: JobFilter) -> Result<Vec<JobRecord>, QueueError> {
        Ok(self.store.list(filter).await?)
    }

    /// Cancels a job (see [`Store::cancel`]).
    pub async fn cancel(&self, id: JobId) -> Result<Option<JobState>, QueueError> {
        let state = self.store.cancel(id).await?;
        if state == Some(JobState::Cancelled) {
            let _ = self.events.send(JobEvent {
                id,
                kind: JobEventKind::Cancelled,
            });
        }
        Ok(state)
    }

    /// The dead-letter queue: discarded jobs, oldest first.
    pub async fn dead_letters(
        &self,
        queue: Option<String>,
        limit: usize,
    ) -> Result<Vec<JobRecord>, QueueError> {
        Ok(self
            .store
            .list(JobFilter {
                queue,
                states: vec![JobState::Discarded],
                limit,
                ..JobFilter::default()
            })
            .await?)
    }

    /// Replays finished jobs with fresh attempts (see [`Store::replay`]).
    pub async fn replay(&self, ids: Vec<JobId>) -> Result<Vec<JobId>, QueueError> {
        Ok(self.store.replay(ids).await?)
    }

    /// Deletes dead letters older than `older_than`.
    pub async fn purge_dead_letters(&self, older_than: Duration) -> Result<u64, QueueError> {
        let before = self.store.now_ms() - crate::clock::millis(older_than);
        Ok(self.store.prune(vec![JobState::Discarded], before).await?)
    }

    /// Retention: deletes completed and cancelled jobs finished more than `older_than` ago.
    pub async fn prune_finished(&self, older_than: Duration) -> Result<u64, QueueError> {
        let before = self.store.now_ms() - crate::clock::millis(older_than);
        Ok(self
            .store
            .prune(vec![JobState::Completed, JobState::Cancelled], before)
            .await?)
    }

    /// Sets `queue`'s limits for every process (see [`QueueLimits`](crate::QueueLimits)).
    pub async fn set_limits(
        &self,
        queue: impl Into<String>,
        limits: crate::QueueLimits,
    ) -> Result<(), QueueError> {
        limits.validate()?;
        Ok(self.store.set_limits(queue.into(), limits).await?)
    }

    /// Depth per state and consumer lag, per queue.
    pub async fn stats(&self) -> Result<Vec<QueueStats>, QueueError> {
        Ok(self.store.stats().await?)
    }

    /// Subscribes to the events of workers in this process.
    pub fn subscribe(&self) -> broadcast::Receiver<JobEvent> {
        self.events.subscribe()
    }

    /// Waits until the job reaches a terminal state (completed, cancelled or discarded) and
    /// returns it, or gives up after `timeout`. Hears in-process workers at once and reads
    /// the store at least every `poll` for workers elsewhere.
    pub async fn wait(
        &self,
        id: JobId,
        timeout: Duration,
        poll: Duration,
    ) -> Result<JobRecord, QueueError> {
        let mut events = self.events.subscribe();
        let deadline = tokio::time::Instant::now() + timeout.min(crate::job::MAX_DURATION);
        loop {
            match self.store.get(id).await? {
                None => return Err(QueueError::NotFound(id)),
                Some(job) if job.state.is_terminal() => return Ok(job),
                Some(_) => {}
            }
            let next = (tokio::time::Instant::now() + poll).min(deadline);
            loop {
                tokio::select! {
                    ev = events.recv() => match ev {
                        Ok(JobEvent { id: got, kind: JobEventKind::Completed | JobEventKind::Cancelled | JobEventKind::Discarded { .. } }) if got == id => break,
                        Ok(_) => continue,
                        // Missed events or a closed channel: fall back to the store.
                        Err(_) => break,
                    },
                    _ = tokio::time::sleep_until(next) => break,
                }
            }
            if tokio::time::Instant::now() >= deadline {
                if let Some(job) = self.store.get(id).await?
                    && job.state.is_terminal()
                {
                    return Ok(job);
                }
                return Err(QueueError::WaitTimedOut {
                    id,
                    waited: timeout,
                });
            }
        }
    }
}

/// `windlass_jobs_enqueued_total{queue}`: enqueue calls' jobs (duplicates included).
fn count_enqueued(jobs: &[NewJob]) {
    if let Some(first) = jobs.first() {
        let queue = first.options().queue.clone();
        if jobs.iter().all(|j| j.options().queue == queue) {
            metrics::counter!("windlass_jobs_enqueued_total", "queue" => queue)
                .increment(jobs.len() as u64);
        } else {
            for j in jobs {
                metrics::counter!("windlass_jobs_enqueued_total", "queue" => j.options().queue.clone())
                    .increment(1);
            }
        }
    }
}

fn typed<J: Job>(payload: &J::Payload, options: JobOptions) -> Result<NewJob, EnqueueError> {
    let value = serde_json::to_value(payload).map_err(|e| EnqueueError::Payload(e.to_string()))?;
    NewJob::new(J::KIND, value, options)
}
