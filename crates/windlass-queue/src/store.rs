//! The storage trait: everything the queue asks of a database, in a handful of batched,
//! fenced operations that every backend implements the same way.
//!
//! A backend (`windlass-sqlite`, `windlass-postgres`) implements [`Store`]; the worker
//! runtime and the [`Queue`](crate::Queue) client are written only against it, and the
//! [`conformance`](crate::conformance) suite holds every backend to the same behaviour.
//!
//! The invariants a backend keeps are on [`Store`].
//!
//! **When not to use it directly:** to enqueue and run jobs, use [`Queue`](crate::Queue)
//! and [`Worker`](crate::Worker); this trait is for backend authors and tools.

use std::future::Future;
use std::time::Duration;

use serde_json::Value;
use windlass_policy::{ClassifiedError, ErrorClass, RetrySchedule};

use crate::job::{AttemptRecord, Enqueued, JobId, JobRecord, JobState, NewJob};

/// A worker's hold on a running job. Presented with every write about that job.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lease {
    /// The job.
    pub job: JobId,
    /// The fencing token: increases with every claim of the job.
    pub token: i64,
    /// The claiming worker's per-boot id.
    pub worker: String,
}

impl ClaimedJob {
    /// The first attempt of `job`, stored as `id` already claimed by `worker` at `now_ms`
    /// (lease token 1): for a backend that inserts a job claimed by its caller.
    pub fn first_attempt(job: &NewJob, id: JobId, worker: &str, now_ms: i64) -> ClaimedJob {
        let o = job.options();
        ClaimedJob {
            lease: Lease {
                job: id,
                token: 1,
                worker: worker.to_owned(),
            },
            kind: job.kind().to_owned(),
            queue: o.queue.clone(),
            payload: job.payload().clone(),
            attempt: 1,
            retry: o.retry,
            timeout: o.timeout,
            run_at_ms: now_ms.saturating_add(crate::clock::millis(o.delay)),
            created_at_ms: now_ms,
            trace_context: o.trace_context.clone(),
        }
    }
}

/// What a worker asks for when it claims.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    /// Queues to take from, in this order: a claim fills up from the first queue before it
    /// looks at the next (strict order between queues; priority and FIFO within each).
    pub queues: Vec<String>,
    /// Kinds this worker has handlers for; jobs of other kinds are left for other workers.
    pub kinds: Vec<String>,
    /// At most this many jobs.
    pub limit: usize,
    /// The claiming worker's per-boot id.
    pub worker: String,
    /// How long the lease lasts unless renewed by a heartbeat.
    pub lease_for: Duration,
}

/// A job handed to a worker.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    /// The lease to present with every write.
    pub lease: Lease,
    /// Its kind.
    pub kind: String,
    /// Its queue.
    pub queue: String,
    /// Its payload.
    pub payload: Value,
    /// This attempt's number (1 for the first).
    pub attempt: u32,
    /// Its retry schedule.
    pub retry: RetrySchedule,
    /// Its hard timeout.
    pub timeout: Duration,
    /// When it became due (ms since the Unix epoch): the start of its wait.
    pub run_at_ms: i64,
    /// When it was enqueued.
    pub created_at_ms: i64,
    /// The enqueuer's trace context, if any.
    pub trace_context: Option<String>,
}

/// Where a finished attempt sends the job.
#[derive(Debug, Clone, PartialEq)]
pub enum NextState {
    /// Done.
    Completed,
    /// Another attempt at `run_at_ms`.
    Retryable {
        /// When.
        run_at_ms: i64,
    },
    /// Put back for later without counting the attempt ("snooze").
    Snoozed {
        /// When.
        run_at_ms: i64,
    },
    /// Given up: the dead-letter queue.
    Discarded,
    /// Cancelled.
    Cancelled,
}

/// One attempt's end, fenced by its lease.
#[derive(Debug, Clone)]
pub struct Finish {
    /// The lease the attempt ran under.
    pub lease: Lease,
    /// Where the job goes.
    pub next: NextState,
    /// What is recorded about the attempt.
    pub record: AttemptRecord,
}

impl Finish {
    /// The end a store gives a job it has just claimed but whose stored row it cannot read
    /// (its payload or retry schedule does not parse: written by hand, or by a newer
    /// version): discarded into the dead-letter queue with `problem` as a permanent error,
    /// instead of failing the whole claim and so every later claim of its queue.
    pub fn unreadable(lease: Lease, attempt: u32, at_ms: i64, problem: String) -> Finish {
        let worker = lease.worker.clone();
        Finish {
            lease,
            next: NextState::Discarded,
            record: AttemptRecord {
                attempt,
                worker,
                at_ms,
                outcome: "failed".into(),
                error: Some(format!("the stored job cannot be read: {problem}")),
                class: Some("permanent".into()),
            },
        }
    }
}

/// Whether a fenced write was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fenced {
    /// Applied: the lease was still the job's.
    Applied,
    /// Refused: the lease had expired or was replaced (a zombie's write).
    Rejected,
}

/// The answer to one lease's heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// Whether the lease is still held (and now extended).
    pub held: bool,
    /// Whether someone asked to cancel the job.
    pub cancel_requested: bool,
}

/// What a sweep of expired leases did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rescued {
    /// Made available for another attempt.
    pub retried: Vec<JobId>,
    /// Out of attempts: discarded.
    pub discarded: Vec<JobId>,
    /// Discarded because too many of their attempts ended in an expired lease.
    pub quarantined: Vec<JobId>,
}

impl Rescued {
    /// Files one rescued job by the state the sweep left it in (`available`, `discarded` or
    /// `cancelled`) and its count of expired leases: the same reading for every backend.
    pub fn record(&mut self, id: JobId, state: &str, lease_expiries: u32, quarantine_after: u32) {
        match state {
            "discarded" if lease_expiries >= quarantine_after => self.quarantined.push(id),
            "discarded" | "cancelled" => self.discarded.push(id),
            _ => self.retried.push(id),
        }
    }

    /// Each list in id order.
    pub fn sorted(mut self) -> Self {
        self.retried.sort();
        self.discarded.sort();
        self.quarantined.sort();
        self
    }
}

/// Which jobs to list.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only this queue.
    pub queue: Option<String>,
    /// Only these states (empty: all).
    pub states: Vec<JobState>,
    /// Only this kind.
    pub kind: Option<String>,
    /// Only ids greater than this (paging).
    pub after: Option<JobId>,
    /// At most this many (0: 100).
    pub limit: usize,
}

/// Depth and age of one queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// The queue.
    pub queue: String,
    /// Jobs per state, in [`JobState::ALL`] order.
    pub counts: [u64; 7],
    /// When the longest-waiting due job (not running) became due: now minus this is the
    /// consumer lag.
    pub oldest_due_ms: Option<i64>,
    /// Jobs completed in the last minute: throughput.
    pub completed_last_minute: u64,
}

impl QueueStats {
    /// How many jobs are in `state`.
    pub fn count(&self, state: JobState) -> u64 {
        JobState::ALL
            .iter()
            .position(|s| *s == state)
            .map_or(0, |i| self.counts[i])
    }
}

/// A storage failure.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database could not be reached or was busy; trying again may help.
    #[error("job store unavailable: {0}")]
    Unavailable(String),
    /// A stored row could not be read back (a bug or a schema from a newer version).
    #[error("job store holds a row it cannot read: {0}")]
    Corrupt(String),
    /// The database refused the operation (a constraint, a missing table, a bad query).
    #[error("job store refused the operation: {0}")]
    Database(String),
    /// The schema is missing or newer than this code understands.
    #[error("job store schema: {0}")]
    Schema(String),
    /// A request was invalid (an empty queue list, a bad filter).
    #[error("invalid store request: {0}")]
    Invalid(String),
    /// The store was closed.
    #[error("job store is closed")]
    Closed,
}

impl ClassifiedError for StoreError {
    fn error_class(&self) -> ErrorClass {
        match self {
            StoreError::Unavailable(_) => ErrorClass::Transient,
            _ => ErrorClass::Permanent,
        }
    }
}

/// A database that stores jobs.
///
/// The invariants a backend keeps:
/// - **Claims are exclusive.** A job is handed to one claimer at a time; a claim moves it to
///   `running`, counts an attempt, and gives it a new [`Lease`] whose `token` is larger than
///   any earlier lease's on that job.
/// - **Fencing.** [`finish`](Store::finish), [`heartbeat`](Store::heartbeat) and
///   [`progress`](Store::progress) change a job only if it is still `running` under the very
///   lease presented (job, token and worker). A zombie whose lease expired — and whose job
///   may have been claimed again — is refused ([`Fenced`]), never obeyed.
/// - **Nothing is acknowledged before it is durable.** A call returns `Ok` only after its
///   transaction committed.
/// - **Order.** A claim takes the lowest priority first, then the earliest `run_at`, then the
///   lowest id (FIFO within a priority).
/// - **Limits hold across processes.** A claim from a queue with [`QueueLimits`](crate::QueueLimits)
///   is serialised with every other claim from it and takes no more than its running
///   slots, its keys' running slots and its buckets' tokens allow.
/// - **Unique inserts do not race.** Two enqueues with one unique key, from any processes,
///   leave one job, and both get its id.
///
/// All times are read from the store's own [`Clock`](crate::Clock).
pub trait Store: Send + Sync + 'static {
    /// Inserts jobs in one transaction, in order. A job with the unique key of an existing
    /// job (per its [`Unique`](crate::Unique)) is not inserted: its entry carries the
    /// existing id and `duplicate: true`.
    fn enqueue(
        &self,
        jobs: Vec<NewJob>,
    ) -> impl Future<Output = Result<Vec<Enqueued>, StoreError>> + Send;

    /// Makes a job that waits (scheduled, retryable) due now. A running job is marked
    /// instead, so that if its attempt ends by waiting again (a snooze or a retry) it is due
    /// at once: a wake-up that arrives while the job runs is not lost. Returns whether the
    /// job exists and has not finished.
    fn wake(&self, id: JobId) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Claims up to `limit` due jobs (see the ordering invariant), moving each to `running`
    /// under a new lease.
    fn claim(
        &self,
        request: ClaimRequest,
    ) -> impl Future<Output = Result<Vec<ClaimedJob>, StoreError>> + Send;

    /// Extends leases by `lease_for` from now, if still held.
    fn heartbeat(
        &self,
        leases: Vec<Lease>,
        lease_for: Duration,
    ) -> impl Future<Output = Result<Vec<Heartbeat>, StoreError>> + Send;

    /// Records attempts' ends, each fenced by its lease, in one transaction.
    fn finish(
        &self,
        finished: Vec<Finish>,
    ) -> impl Future<Output = Result<Vec<Fenced>, StoreError>> + Send;

    /// Stores a running job's progress, fenced by its lease.
    fn progress(
        &self,
        lease: Lease,
        progress: Value,
    ) -> impl Future<Output = Result<Fenced, StoreError>> + Send;

    /// Ends every expired lease: the attempt is recorded as `lease_expired`; the job is
    /// retried at once, discarded when out of attempts, or quarantined (discarded) when
    /// `quarantine_after` of its attempts have now ended this way.
    fn rescue_expired(
        &self,
        quarantine_after: u32,
    ) -> impl Future<Output = Result<Rescued, StoreError>> + Send;

    /// Cancels a job: a job that has not started is cancelled at once; a running one is
    /// flagged, and its worker learns it at the next heartbeat. Returns the state after the
    /// call (`Running` for a flagged job), or `None` if there is no such job.
    fn cancel(
        &self,
        id: JobId,
    ) -> impl Future<Output = Result<Option<JobState>, StoreError>> + Send;

    /// Puts finished jobs (discarded, cancelled or completed) back to `available` with fresh
    /// attempts, keeping their history: the dead-letter replay. Returns the ids replayed.
    fn replay(
        &self,
        ids: Vec<JobId>,
    ) -> impl Future<Output = Result<Vec<JobId>, StoreError>> + Send;

    /// Deletes terminal jobs in `states` that finished before `finished_before_ms`.
    /// Returns how many were deleted.
    fn prune(
        &self,
        states: Vec<JobState>,
        finished_before_ms: i64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// One job, with its attempts.
    fn get(&self, id: JobId) -> impl Future<Output = Result<Option<JobRecord>, StoreError>> + Send;

    /// Jobs matching a filter, by id.
    fn list(
        &self,
        filter: JobFilter,
    ) -> impl Future<Output = Result<Vec<JobRecord>, StoreError>> + Send;

    /// Depth per state and consumer lag, per queue.
    fn stats(&self) -> impl Future<Output = Result<Vec<QueueStats>, StoreError>> + Send;

    /// Kinds of due jobs in `queues` that none of `kinds` covers: work that no handler of
    /// this worker will ever take.
    fn unknown_kinds(
        &self,
        queues: Vec<String>,
        kinds: Vec<String>,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// Stores `queue`'s limits, which every claim from any process then keeps (see
    /// [`QueueLimits`](crate::QueueLimits)); `QueueLimits::default()` removes them.
    fn set_limits(
        &self,
        queue: String,
        limits: crate::QueueLimits,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// `queue`'s limits (the default when none are set).
    fn limits(
        &self,
        queue: String,
    ) -> impl Future<Output = Result<crate::QueueLimits, StoreError>> + Send;

    /// A signal that changes whenever new work may be available (an enqueue in this process,
    /// a notification from another). A fetcher marks it seen *before* it claims, and after an
    /// empty claim waits for a change (or its poll interval): no wake-up falls between the two.
    fn work_signal(&self) -> tokio::sync::watch::Receiver<u64>;

    /// The current time of the store's clock (ms since the Unix epoch).
    fn now_ms(&self) -> i64;
}
