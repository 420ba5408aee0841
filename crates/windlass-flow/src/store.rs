//! The storage trait: runs and their journals, beside the job queue's tables.
//!
//! A backend (`windlass-sqlite`, `windlass-postgres`) implements [`FlowStore`] on the same
//! store that implements the queue's [`Store`]: a workflow run is driven by a queue job, so
//! its leases, fencing and crash recovery are the queue's. What this trait adds is two
//! tables — one row per run, and the run's **journal**, one entry per finished step, timer
//! or compensation.
//!
//! The journal is **insert-only, first writer wins**: [`record`](FlowStore::record) stores an
//! entry unless the run already has one under that key, and returns whichever is stored. Two
//! workers that both ran a step (a zombie whose lease expired, and the worker that took the
//! run over) therefore agree on one result, and every later replay reads that one.
//!
//! **When not to use it directly:** to start and run workflows, use
//! [`Flows`](crate::Flows); this trait is for backend authors and tools.

use std::future::Future;

use serde_json::Value;
use std::time::Duration;

use windlass_queue::{ClaimedJob, Finish, JobId, NewJob, Store, StoreError};

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunStatus {
    /// Started, not finished (running, sleeping or waiting to be resumed).
    Running,
    /// Failed; its compensations are running (or will resume after a crash).
    Compensating,
    /// Finished with an output.
    Completed,
    /// Failed, and every compensation of its completed steps has run.
    Failed,
    /// Stopped without compensation because its code contradicts its journal (a replay
    /// mismatch): an operator must look at it.
    Halted,
}

impl RunStatus {
    /// Every status, in declaration order.
    pub const ALL: [RunStatus; 5] = [
        RunStatus::Running,
        RunStatus::Compensating,
        RunStatus::Completed,
        RunStatus::Failed,
        RunStatus::Halted,
    ];

    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Compensating => "compensating",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Halted => "halted",
        }
    }

    /// The status named `s`, if any.
    pub fn parse(s: &str) -> Option<RunStatus> {
        RunStatus::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether the run is over.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Completed | RunStatus::Failed | RunStatus::Halted
        )
    }

    /// Whether a run in this status may be moved to `next`: the rule every backend's status
    /// writes keep ([`FlowStore::set_run_status`], [`FlowStore::end_run`],
    /// [`FlowStore::cancel_run`]). A running run may become anything; a compensating run
    /// only compensating, failed or halted — so a run cancelled while its code was finishing
    /// is never completed afterwards; a finished run nothing (only
    /// [`FlowStore::resume_run`] reopens one).
    pub fn may_become(self, next: RunStatus) -> bool {
        match self {
            RunStatus::Running => true,
            RunStatus::Compensating => matches!(
                next,
                RunStatus::Compensating | RunStatus::Failed | RunStatus::Halted
            ),
            RunStatus::Completed | RunStatus::Failed | RunStatus::Halted => false,
        }
    }
}

/// [`RunStatus::may_become`] as an SQL condition on a row's `status` column, for backends:
/// `next` is the placeholder of the new status (`?2`, `$7`).
pub fn may_become_sql(next: &str) -> String {
    may_become_sql_of("status", next)
}

/// [`may_become_sql`] on any expression of the current status (`lk.status`), for statements
/// that join several tables with a `status` column.
pub fn may_become_sql_of(current: &str, next: &str) -> String {
    format!(
        "({current} = 'running' OR ({current} = 'compensating' AND {next} IN ('compensating', 'failed', 'halted')))"
    )
}

/// What [`FlowStore::end_run`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndRun {
    /// The run's end and its job's end were both stored.
    Stored,
    /// The job's lease was no longer the attempt's (a zombie's end): nothing was written.
    LeaseLost,
    /// The run may no longer become the asked status (it was cancelled, or it is over):
    /// nothing was written, and the job is still running under the attempt's lease.
    RunMoved(RunStatus),
}

/// What [`FlowStore::resume_run`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Resumed {
    /// The run is `running` again, driven by a new job; the journal entries asked for were
    /// retired (renamed, kept as history).
    Resumed {
        /// The run as stored now.
        run: RunRecord,
        /// How many entries were renamed.
        retired: usize,
    },
    /// The run was not in a status that can be resumed (completed, or running or
    /// compensating with its job alive): nothing was written.
    NotResumable(RunStatus),
}

/// One run of a workflow.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    /// Its id: chosen by the starter, unique among all runs.
    pub id: String,
    /// The workflow's kind ([`Workflow::KIND`](crate::Workflow::KIND)).
    pub kind: String,
    /// Its input.
    pub input: Value,
    /// Where it is.
    pub status: RunStatus,
    /// Its output, once completed.
    pub output: Option<Value>,
    /// Why it failed, once failed or halted.
    pub error: Option<String>,
    /// The queue job that drives it.
    pub job: JobId,
    /// When it was started (ms since the Unix epoch).
    pub created_at_ms: i64,
    /// When it finished.
    pub finished_at_ms: Option<i64>,
}

/// A run to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRun {
    /// Its id.
    pub id: String,
    /// Its workflow's kind.
    pub kind: String,
    /// Its input.
    pub input: Value,
    /// The queue job that drives it.
    pub job: JobId,
    /// When it was started.
    pub created_at_ms: i64,
}

/// A run to start together with the queue job that drives it (see
/// [`FlowStore::start_run`]).
#[derive(Debug, Clone)]
pub struct RunStart {
    /// Its id.
    pub id: String,
    /// Its workflow's kind.
    pub kind: String,
    /// Its input.
    pub input: Value,
    /// When it was started.
    pub created_at_ms: i64,
    /// The job that drives it (kind [`DRIVER_KIND`](crate::DRIVER_KIND)).
    pub job: NewJob,
    /// Store the job already `running` under a lease for this caller, who runs its first
    /// attempt itself ([`windlass_queue::run_claimed`]); `None` leaves it for the workers.
    pub claim: Option<InlineClaim>,
}

impl RunStart {
    /// What a backend returns when it created this run with its job `job` (claimed or not).
    pub fn created(self, job: JobId, claimed: Option<ClaimedJob>) -> Started {
        Started {
            run: RunRecord {
                id: self.id,
                kind: self.kind,
                input: self.input,
                status: RunStatus::Running,
                output: None,
                error: None,
                job,
                created_at_ms: self.created_at_ms,
                finished_at_ms: None,
            },
            created: true,
            claimed,
        }
    }
}

/// The check every backend's [`FlowStore::end_run`] makes first: only a completed attempt
/// may be stored with a run's end.
pub fn check_end(finish: &Finish) -> Result<(), StoreError> {
    if finish.next == windlass_queue::NextState::Completed {
        Ok(())
    } else {
        Err(StoreError::Invalid(
            "end_run stores a completed attempt only (a run's end completes its job)".into(),
        ))
    }
}

/// Who holds the lease of an inline-started run's job, and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InlineClaim {
    /// The caller's per-boot worker id.
    pub worker: String,
    /// The lease's length (the caller heartbeats it while the attempt runs).
    pub lease_for: Duration,
}

/// What [`FlowStore::start_run`] did.
#[derive(Debug, Clone)]
pub struct Started {
    /// The run as stored: the new one, or the one that already had the id.
    pub run: RunRecord,
    /// Whether this call created it (and its job).
    pub created: bool,
    /// The job's claim, when this call created the run with an [`InlineClaim`].
    pub claimed: Option<ClaimedJob>,
}

/// What a journal entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A step's result.
    Step,
    /// A durable timer: its output is the wake-up time (ms since the Unix epoch).
    Sleep,
    /// A completed step's compensation, done.
    Compensation,
    /// The run's failure, recorded once before its compensations start.
    Failure,
    /// A signal: one delivered to the run (key `~signal:<name>:<id>`, output its payload),
    /// or a wait that took one (output `{"signal": <its key>, "payload": ...}`) or timed out
    /// (an error).
    Signal,
}

impl EntryKind {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Step => "step",
            EntryKind::Sleep => "sleep",
            EntryKind::Compensation => "compensation",
            EntryKind::Failure => "failure",
            EntryKind::Signal => "signal",
        }
    }

    /// The kind named `s`, if any.
    pub fn parse(s: &str) -> Option<EntryKind> {
        [
            EntryKind::Step,
            EntryKind::Sleep,
            EntryKind::Compensation,
            EntryKind::Failure,
            EntryKind::Signal,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// One finished thing in a run's journal.
#[derive(Debug, Clone, PartialEq)]
pub struct JournalEntry {
    /// The order in which entries were stored (set by the store; ignored on insert).
    pub seq: i64,
    /// Unique within the run: a step's name, with its occurrence or explicit key (see
    /// [`FlowContext::step`](crate::FlowContext::step)).
    pub key: String,
    /// What it records.
    pub kind: EntryKind,
    /// Its output (`Ok`) or error message (`Err`).
    pub outcome: Result<Value, String>,
    /// Attempts made (0 for a timer).
    pub attempts: u32,
    /// When its first attempt started (ms since the Unix epoch).
    pub started_at_ms: i64,
    /// When it finished.
    pub finished_at_ms: i64,
    /// The `seq` of the run's latest entry journaled when this one started, as known to the
    /// resumption that ran it (0: none): after a resume, every entry journaled before it.
    /// The recorded graph draws this entry after exactly those (see
    /// [`graph`](crate::graph)), whatever the clock's resolution. `None`: not known (a
    /// child's end, a signal sent from outside the run, an entry of an older version), so
    /// the graph places it by its times, at millisecond resolution.
    pub after: Option<i64>,
}

/// Which runs to list.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Only this kind.
    pub kind: Option<String>,
    /// Only these statuses (empty: all).
    pub statuses: Vec<RunStatus>,
    /// Only ids after this one (paging, in id order).
    pub after: Option<String>,
    /// At most this many (0: 100).
    pub limit: usize,
}

/// A database that stores workflow runs, beside the queue's jobs.
///
/// The invariants a backend keeps:
/// - **Runs are unique by id.** [`insert_run`](FlowStore::insert_run) stores a run only if no
///   run has its id, and returns the stored one either way.
/// - **The journal is insert-only, first writer wins.** [`record`](FlowStore::record) never
///   overwrites an entry; it returns the stored entry, which a caller must use instead of
///   its own.
/// - **Nothing is acknowledged before it is durable.**
/// - [`journal`](FlowStore::journal) returns entries in the order they were stored.
/// - **Status moves follow [`RunStatus::may_become`]**, checked in the same write that makes
///   them.
pub trait FlowStore: Store {
    /// Stores `run` unless a run with its id exists; returns the stored run.
    fn insert_run(&self, run: NewRun)
    -> impl Future<Output = Result<RunRecord, StoreError>> + Send;

    /// Starts a run **in one transaction**: stores the run and the job that drives it
    /// (whose id the run row names), unless a run with this id exists, in which case nothing
    /// is written and the existing run is returned (`created: false`). With a claim, the job
    /// is stored `running` (attempt 1, a lease for the claimer) and never queued.
    fn start_run(
        &self,
        start: RunStart,
    ) -> impl Future<Output = Result<Started, StoreError>> + Send;

    /// The run with this id.
    fn run(&self, id: String)
    -> impl Future<Output = Result<Option<RunRecord>, StoreError>> + Send;

    /// The run with this id and its journal (as [`journal`](FlowStore::journal) gives it),
    /// read together: what a resumption reads first. A backend may read both in one
    /// statement (one round trip, one snapshot); by default they are two reads.
    fn run_and_journal(
        &self,
        id: String,
    ) -> impl Future<Output = Result<Option<(RunRecord, Vec<JournalEntry>)>, StoreError>> + Send
    {
        async move {
            let Some(run) = self.run(id.clone()).await? else {
                return Ok(None);
            };
            let journal = self.journal(id).await?;
            Ok(Some((run, journal)))
        }
    }

    /// Moves a run to `status`, with its output or error, if its current status
    /// [may become](RunStatus::may_become) that one; a terminal status also sets its finish
    /// time. Returns whether it was written (`false`: no such run, or a move the rule
    /// refuses, such as completing a cancelled run).
    fn set_run_status(
        &self,
        id: String,
        status: RunStatus,
        output: Option<Value>,
        error: Option<String>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Ends a run (a terminal `status`, with its output or error) **and** stores its job's
    /// attempt end in one transaction: the finish is fenced by its lease exactly as
    /// [`Store::finish`] fences it, and the run's status is written only if the finish was
    /// applied. Every run's last write, in a direct start ([`Flows::run`](crate::Flows::run))
    /// or by a worker (except a child's, whose parent is woken in between): one commit
    /// instead of two, and never a run over while its job runs. Only a finish whose next state is `Completed` is accepted
    /// (a run's end completes its job); any other is `StoreError::Invalid`. If the run may
    /// not become `status` (it was cancelled meanwhile), **neither** is written
    /// ([`EndRun::RunMoved`]): the job stays running, so that its attempt can end it another
    /// way and the run is never left without a driver.
    fn end_run(
        &self,
        id: String,
        status: RunStatus,
        output: Option<Value>,
        error: Option<String>,
        finish: Finish,
    ) -> impl Future<Output = Result<EndRun, StoreError>> + Send;

    /// Cancels a `running` run: moves it to `compensating` with `reason` as its error, so
    /// that its driver stops its code and rolls it back, and wakes its job as
    /// [`Store::wake`] does, in the same transaction. One conditional write of the run, so a
    /// cancel and the run's completion race on the run's row and exactly one wins. Returns the run
    /// as stored afterwards and whether this call moved it (`false`: it was no longer
    /// running), or `None` when no run has the id.
    fn cancel_run(
        &self,
        id: String,
        reason: String,
    ) -> impl Future<Output = Result<Option<(RunRecord, bool)>, StoreError>> + Send;

    /// Reopens a run for an operator, **in one transaction**: if the run is failed or
    /// halted, or is running or compensating while its job is over or gone (a stranded
    /// run), each journal entry `from` in `renames` is renamed `to` (retired, kept as
    /// history), the run becomes `running` with no output, error or finish time — a
    /// `compensating` run stays `compensating`, with its error: its rollback goes on — and a
    /// new job (`job`) drives it. Otherwise nothing is written. `None` when no run has the id.
    fn resume_run(
        &self,
        id: String,
        renames: Vec<(String, String)>,
        job: NewJob,
    ) -> impl Future<Output = Result<Option<Resumed>, StoreError>> + Send;

    /// Runs matching a filter, in id order.
    fn runs(
        &self,
        filter: RunFilter,
    ) -> impl Future<Output = Result<Vec<RunRecord>, StoreError>> + Send;

    /// A run's journal, in the order its entries were stored.
    fn journal(
        &self,
        run: String,
    ) -> impl Future<Output = Result<Vec<JournalEntry>, StoreError>> + Send;

    /// Stores a subscription, replacing the one with its topic and name.
    fn subscribe(
        &self,
        subscription: crate::events::Subscription,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Removes a subscription; whether it existed.
    fn unsubscribe(
        &self,
        topic: String,
        name: String,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The subscriptions of `topic` (every topic: `None`), by topic and name.
    fn subscriptions(
        &self,
        topic: Option<String>,
    ) -> impl Future<Output = Result<Vec<crate::events::Subscription>, StoreError>> + Send;

    /// Stores `event` and delivers it — one job or run per subscription of its topic, built
    /// by [`deliveries`](crate::events::deliveries) from the subscriptions read in the same
    /// transaction — **in one transaction**, unless an event with its id exists: then nothing
    /// is written and the answer is `None`. Otherwise, how many subscriptions got it: a run
    /// delivery whose id is taken is not started again, and not counted.
    fn publish(
        &self,
        event: crate::events::Event,
    ) -> impl Future<Output = Result<Option<usize>, StoreError>> + Send;

    /// Stores `entry` in `run`'s journal unless it already has one under the same key;
    /// returns the stored entry (with its `seq`).
    fn record(
        &self,
        run: String,
        entry: JournalEntry,
    ) -> impl Future<Output = Result<JournalEntry, StoreError>> + Send;
}
