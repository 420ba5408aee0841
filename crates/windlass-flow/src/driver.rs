//! The driver: the queue job that runs (and resumes) workflow runs.
//!
//! Every run has one queue job of kind [`DRIVER_KIND`], unique by run id. A worker that
//! claims it executes the workflow's code with the run's journal; the attempt then ends one
//! of these ways:
//!
//! | the resumption | the run | the job |
//! |---|---|---|
//! | the code returns `Ok` | `completed`, with its output | completed |
//! | the code returns `Err` (or had failed in an earlier attempt) | the failure is journaled (once), `compensating`, compensations run latest first, then `failed` | completed |
//! | the code panics | unchanged | retried with its backoff |
//! | no workflow of the run's kind is registered here | unchanged | retried with its backoff (another worker may have it) |
//! | every branch waits for a timer | unchanged | snoozed until the earliest timer (the attempt is not counted) |
//! | the journal cannot be written, or a compensation keeps failing | unchanged | retried with its backoff: the next attempt resumes where this one stopped |
//! | the code contradicts its journal | `halted`, nothing compensated | completed |
//! | the worker crashes | unchanged | its lease expires; another worker resumes it |
//!
//! So leases, fencing and crash recovery are the queue's; this module adds only the journal.
//!
//! A run's end (`completed`, `failed`) and its job's completion are one transaction
//! ([`FlowStore::end_run`], handed to the worker through
//! [`JobContext::complete_with`]): a run is never over while its job still runs, or the
//! reverse. If a cancel got to the run first, the job is handed back to the workers at once
//! (due now, the attempt not counted) and the run is rolled back. A child run writes its end
//! first, wakes its parent, then completes its job, so that a failed wake is retried.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::Instrument;
use windlass_policy::{Backoff, Jitter, PolicyExt, Retry};
use windlass_queue::{Fenced, Finish, Job, JobContext, JobError, JobId, NextState, StoreError};

use crate::context::{ChildJobs, FlowContext, Halt, Journal, Stop};
use crate::store::{EndRun, EntryKind, FlowStore, JournalEntry, NewRun, RunStatus};
use crate::workflow::{ErasedWorkflow, Failure};

/// The queue job kind that drives workflow runs.
pub const DRIVER_KIND: &str = "windlass.flow";

/// The journal key of a run's failure.
pub const FAILURE_KEY: &str = "$failure";

/// The driver job's payload: enough to re-create the run's row if the starter crashed
/// between enqueuing the job and storing the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunPayload {
    /// The run's id.
    pub run: String,
    /// Its workflow's kind.
    pub workflow: String,
    /// Its input.
    pub input: Value,
    /// The run that started it as a child ([`FlowContext::child`]), woken when it ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// When the run must be over (ms since the Unix epoch, on the store's clock): past it,
    /// the run is cancelled and rolled back ([`RunOptions::deadline`](crate::RunOptions)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<i64>,
}

/// The queue job that runs workflows: register it with a [`Worker`](windlass_queue::Worker)
/// (see [`Flows::driver`](crate::Flows::driver)).
pub struct FlowDriver<S> {
    pub(crate) store: Arc<S>,
    pub(crate) workflows: Arc<HashMap<&'static str, Arc<dyn ErasedWorkflow>>>,
    pub(crate) children: ChildJobs,
    /// How often a resumption whose code is running reads whether its run was cancelled.
    pub(crate) cancel_check: Duration,
}

impl<S> Clone for FlowDriver<S> {
    fn clone(&self) -> Self {
        FlowDriver {
            store: Arc::clone(&self.store),
            workflows: Arc::clone(&self.workflows),
            children: self.children.clone(),
            cancel_check: self.cancel_check,
        }
    }
}

impl<S> std::fmt::Debug for FlowDriver<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowDriver")
            .field("workflows", &self.workflows.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn store_failed(e: impl std::fmt::Display) -> JobError {
    JobError::failed(format!("workflow store: {e}"))
}

/// The retry of each compensation within one resumption.
fn compensation_retry() -> Option<Retry> {
    Retry::builder()
        .name("windlass.flow.compensation")
        .max_attempts(5)
        .backoff(Backoff::exponential(Duration::from_millis(100)))
        .jitter(Jitter::Full)
        .build()
        .ok()
}

impl<S: FlowStore> Job for FlowDriver<S> {
    const KIND: &'static str = DRIVER_KIND;
    type Payload = RunPayload;

    async fn run(&self, job: JobContext, payload: RunPayload) -> Result<(), JobError> {
        let parent = payload.parent.clone();
        let trace = job.trace_context().map(str::to_owned);
        if parent.is_none() {
            // The run's end is stored with the job's completion, in one transaction
            // (`end_run`), as a direct run's is. A child's is not: its parent must be woken
            // after its end is stored and before its job completes, so that a failed wake
            // is retried with the job.
            let (run, kind) = (payload.run.clone(), payload.workflow.clone());
            if let Some(end) = self.drive(job.id(), payload, None, true, trace).await? {
                let store = Arc::clone(&self.store);
                job.complete_with(move |finish| {
                    let (store, run, kind, end) =
                        (Arc::clone(&store), run.clone(), kind.clone(), end.clone());
                    async move { store_end(&*store, run, &kind, &end, finish).await }
                });
            }
            return Ok(());
        }
        let end = self.drive(job.id(), payload, None, false, trace).await?;
        if let (Some(parent), Some(_)) = (parent, end) {
            // The parent waits in `FlowContext::child` for this end: wake it. If this
            // fails, the job is retried, finds the run over, and wakes the parent again.
            if let Some(p) = self.store.run(parent).await.map_err(store_failed)? {
                self.store.wake(p.job).await.map_err(store_failed)?;
            }
        }
        Ok(())
    }
}

/// Stores a run's `end` with its job's completion (`finish`) in one transaction, for the
/// worker ([`JobContext::complete_with`]); answers the job's end as stored, `None` if the
/// lease was lost. If the run may no longer take the end: a run already over (its end was
/// stored before, e.g. by a halt) just completes its job; a run cancelled as its code ended
/// is handed back to the workers at once, to be rolled back.
pub(crate) async fn store_end<S: FlowStore>(
    store: &S,
    run: String,
    kind: &str,
    end: &RunEnd,
    finish: Finish,
) -> Result<Option<Finish>, StoreError> {
    let (status, output, error) = end.parts();
    let stored = match store
        .end_run(run, status, output, error, finish.clone())
        .await?
    {
        EndRun::Stored => {
            count_end(kind, status);
            return Ok(Some(finish));
        }
        EndRun::LeaseLost => return Ok(None),
        EndRun::RunMoved(now) if now.is_terminal() => {
            if finish_one(store, finish.clone()).await? == Fenced::Applied {
                return Ok(Some(finish));
            }
            // Refused: the lease was lost, or this very end was stored by an earlier call
            // whose answer never came back (the writer is retried). The job's row tells.
            if ended_by(store, &finish).await? {
                if now == status {
                    count_end(kind, status);
                }
                return Ok(Some(finish));
            }
            return Ok(None);
        }
        EndRun::RunMoved(_) => hand_over(finish),
    };
    Ok(match finish_one(store, stored.clone()).await? {
        Fenced::Applied => Some(stored),
        Fenced::Rejected if ended_by(store, &stored).await? => Some(stored),
        Fenced::Rejected => None,
    })
}

/// Whether the job of `finish` holds the end `finish` describes: its state is the one it
/// leads to, and its last attempt record is this attempt's (same attempt, worker and time).
async fn ended_by<S: FlowStore>(store: &S, finish: &Finish) -> Result<bool, StoreError> {
    let Some(job) = store.get(finish.lease.job).await? else {
        return Ok(false);
    };
    let state = match finish.next {
        NextState::Completed => windlass_queue::JobState::Completed,
        NextState::Snoozed { .. } => windlass_queue::JobState::Scheduled,
        _ => return Ok(false),
    };
    Ok(job.state == state
        && job.attempts.last().is_some_and(|a| {
            a.attempt == finish.record.attempt
                && a.worker == finish.record.worker
                && a.at_ms == finish.record.at_ms
        }))
}

/// Stores one attempt's end through the queue.
pub(crate) async fn finish_one<S: FlowStore>(
    store: &S,
    finish: Finish,
) -> Result<Fenced, StoreError> {
    Ok(store
        .finish(vec![finish])
        .await?
        .first()
        .copied()
        .unwrap_or(Fenced::Rejected))
}

/// An attempt's end turned into a hand-over: the job is due again at once, for a worker to
/// roll the run back (not counted as a failure).
pub(crate) fn hand_over(mut finish: Finish) -> Finish {
    finish.next = NextState::Snoozed {
        run_at_ms: finish.record.at_ms,
    };
    finish.record.outcome = "snoozed".into();
    finish.record.error =
        Some("cancelled as its code ended: handed to the workers to roll back".into());
    finish
}

/// The run's failure as a journal entry ([`FAILURE_KEY`]), after the entry `after`.
fn failure_entry(message: String, now: i64, after: i64) -> JournalEntry {
    JournalEntry {
        seq: 0,
        key: FAILURE_KEY.into(),
        kind: EntryKind::Failure,
        outcome: Err(message),
        attempts: 0,
        started_at_ms: now,
        finished_at_ms: now,
        after: Some(after),
    }
}

/// Counts a run's end (`windlass_flow_runs_total{workflow, status}`), where it is written.
pub(crate) fn count_end(kind: &str, status: RunStatus) {
    metrics::counter!(
        "windlass_flow_runs_total",
        "workflow" => kind.to_owned(),
        "status" => status.as_str(),
    )
    .increment(1);
}

/// Counts a run cancelled by its deadline.
fn count_deadline(kind: &str) {
    metrics::counter!("windlass_flow_cancels_total", "workflow" => kind.to_owned(), "by" => "deadline")
        .increment(1);
}

/// The failure of a run cancelled by its deadline.
fn deadline_reason(run: &crate::store::RunRecord, deadline_ms: i64) -> String {
    let had = Duration::from_millis(u64::try_from(deadline_ms - run.created_at_ms).unwrap_or(0));
    format!("cancelled: deadline exceeded (the run had {had:?} to finish)")
}

/// What one pass of [`FlowDriver::drive`] did.
enum Driven {
    /// The resumption is over: the run's end, or `None` (left alone).
    Ended(Option<RunEnd>),
    /// The run was cancelled under the code's feet: drive it again, to roll it back.
    Cancelled,
}

/// How a resumption left a run that it finished (or found finished).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RunEnd {
    Completed(Value),
    Failed(String),
    Halted(String),
}

impl RunEnd {
    /// The run's terminal status, output and error.
    pub(crate) fn parts(&self) -> (RunStatus, Option<Value>, Option<String>) {
        match self {
            RunEnd::Completed(v) => (RunStatus::Completed, Some(v.clone()), None),
            RunEnd::Failed(e) => (RunStatus::Failed, None, Some(e.clone())),
            RunEnd::Halted(e) => (RunStatus::Halted, None, Some(e.clone())),
        }
    }

    fn of(run: &crate::store::RunRecord) -> Option<RunEnd> {
        match run.status {
            RunStatus::Completed => {
                Some(RunEnd::Completed(run.output.clone().unwrap_or(Value::Null)))
            }
            RunStatus::Failed => Some(RunEnd::Failed(run.error.clone().unwrap_or_default())),
            RunStatus::Halted => Some(RunEnd::Halted(run.error.clone().unwrap_or_default())),
            RunStatus::Running | RunStatus::Compensating => None,
        }
    }
}

impl<S: FlowStore> FlowDriver<S> {
    /// One resumption of a run by its job `job`: `Ok(Some(end))` when the run is over,
    /// `Ok(None)` when it ended without finishing the run (a second job, a run left alone),
    /// `Err` for the job's fate (snooze, retry). `fresh` is a run this process has just
    /// created (so its journal is empty): it is not read back. With `defer_end`, a run's
    /// terminal status is not written here: the caller writes it with the job's end
    /// ([`FlowStore::end_run`]).
    pub(crate) async fn drive(
        &self,
        job: JobId,
        payload: RunPayload,
        fresh: Option<crate::store::RunRecord>,
        defer_end: bool,
        trace: Option<String>,
    ) -> Result<Option<RunEnd>, JobError> {
        let mut fresh = fresh;
        loop {
            match self
                .drive_once(job, &payload, fresh.take(), defer_end, trace.clone())
                .await?
            {
                Driven::Ended(end) => return Ok(end),
                // The run was cancelled (or passed its deadline) while its code ran, or just
                // as it completed: drive it again from the store, which rolls it back.
                Driven::Cancelled => {}
            }
        }
    }

    async fn drive_once(
        &self,
        job: JobId,
        payload: &RunPayload,
        fresh: Option<crate::store::RunRecord>,
        defer_end: bool,
        trace: Option<String>,
    ) -> Result<Driven, JobError> {
        let store = &self.store;
        // A run this process has just created has an empty journal: nothing is read.
        let stored = match fresh {
            Some(run) => Some((run, Vec::new())),
            None => store
                .run_and_journal(payload.run.clone())
                .await
                .map_err(store_failed)?,
        };
        let (run, mut journal) = match stored {
            Some(stored) => stored,
            None => {
                // The starter crashed between enqueuing the job and storing the run. The
                // run stored now may be another's (a racing start of the id): its journal
                // is read, not assumed empty.
                let run = store
                    .insert_run(NewRun {
                        id: payload.run.clone(),
                        kind: payload.workflow.clone(),
                        input: payload.input.clone(),
                        job,
                        created_at_ms: store.now_ms(),
                    })
                    .await
                    .map_err(store_failed)?;
                let journal = store.journal(run.id.clone()).await.map_err(store_failed)?;
                (run, journal)
            }
        };
        if run.status.is_terminal() {
            return Ok(Driven::Ended(RunEnd::of(&run)));
        }
        if run.job != job {
            // Another job drives this run (a second start of the id through another
            // queue, or a resume): only the run's own job may, so this one ends without
            // touching it.
            tracing::warn!(run = %run.id, job = %job, driver = %run.job, "a second job for a run was ignored");
            return Ok(Driven::Ended(None));
        }
        let Some(workflow) = self.workflows.get(run.kind.as_str()) else {
            // Transient, not permanent: during a rolling deploy another worker (or this
            // one, upgraded) will have it. A permanent failure would strand the run.
            return Err(JobError::failed(format!(
                "workflow `{}` is not registered with this worker's Flows",
                run.kind
            )));
        };
        let mut run = run;
        if run.status == RunStatus::Running
            && let Some(deadline) = payload.deadline_ms
            && store.now_ms() >= deadline
            && let Some((now, moved)) = store
                .cancel_run(run.id.clone(), deadline_reason(&run, deadline))
                .await
                .map_err(store_failed)?
        {
            if moved {
                count_deadline(&run.kind);
            }
            run = now;
        }
        if run.status == RunStatus::Compensating && !journal.iter().any(|e| e.key == FAILURE_KEY) {
            // Cancelled (by a caller or its deadline): the cancel's reason becomes the
            // run's journaled failure, which every later resumption rolls back from.
            let message = run.error.clone().unwrap_or_else(|| "cancelled".into());
            journal.push(
                store
                    .record(
                        run.id.clone(),
                        failure_entry(
                            message,
                            store.now_ms(),
                            journal.iter().map(|e| e.seq).max().unwrap_or(0),
                        ),
                    )
                    .await
                    .map_err(store_failed)?,
            );
        }
        let span = tracing::info_span!(
            "workflow",
            run = %run.id,
            kind = %run.kind,
            job = %job,
            trace_context = trace.as_deref().unwrap_or(""),
        );
        let ctx = FlowContext::new(
            &run,
            trace,
            payload.deadline_ms,
            journal,
            Arc::new(Arc::clone(store)) as Arc<dyn Journal>,
            self.children.clone(),
        );
        let rolling_back = ctx.journaled(FAILURE_KEY);
        // A panic in the workflow's code (or a step) fails this attempt, transiently: the
        // queue retries it with its backoff, and the journal keeps what finished.
        let code = std::panic::AssertUnwindSafe(
            workflow
                .run(ctx.clone(), run.input.clone())
                .instrument(span.clone()),
        )
        .catch_unwind();
        let ended = tokio::select! {
            biased;
            out = code => match (ctx.halted(), out) {
                // The code swallowed a halted step's error: the halt decides.
                (Some(halt), _) => Err(Stop::Halt(halt)),
                (None, Ok(out)) => Ok(out),
                (None, Err(panic)) => {
                    let message = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a non-string panic".into());
                    tracing::error!(run = %run.id, panic = %message, "workflow code panicked");
                    return Err(JobError::failed(format!("the workflow's code panicked: {message}")));
                }
            },
            stop = ctx.stopped() => Err(stop),
            () = self.cancelled(&run, payload.deadline_ms), if rolling_back.is_none() => {
                tracing::info!(run = %run.id, "run cancelled while its code ran; rolling back");
                return Ok(Driven::Cancelled);
            }
        };
        match ended {
            // A run whose failure is journaled rolls back even if its code now succeeds
            // (steps it had not run are refused while rolling back; see `FlowContext`).
            Ok(Ok(_)) if rolling_back.is_some() => {
                let message = rolling_back
                    .and_then(|f| f.outcome.err())
                    .unwrap_or_default();
                self.roll_back(&ctx, &run.id, message, defer_end)
                    .instrument(span.clone())
                    .await
                    .map(Driven::Ended)
            }
            Ok(Ok(output)) => {
                // Completed only if no cancel got there first (one conditional write).
                if !defer_end
                    && !store
                        .set_run_status(
                            run.id.clone(),
                            RunStatus::Completed,
                            Some(output.clone()),
                            None,
                        )
                        .await
                        .map_err(store_failed)?
                {
                    return Ok(Driven::Cancelled);
                }
                if !defer_end {
                    count_end(&run.kind, RunStatus::Completed);
                }
                Ok(Driven::Ended(Some(RunEnd::Completed(output))))
            }
            Ok(Err(failure)) => {
                let message = match failure {
                    Failure::Flow(e) => e.to_string(),
                    Failure::Serde(m) => m,
                };
                self.roll_back(&ctx, &run.id, message, defer_end)
                    .instrument(span.clone())
                    .await
                    .map(Driven::Ended)
            }
            Err(Stop::Suspend { wake_at_ms }) => {
                // A sleeping run wakes at its deadline at the latest, to be rolled back.
                let wake_at_ms = payload
                    .deadline_ms
                    .map_or(wake_at_ms, |d| wake_at_ms.min(d));
                let wait = wake_at_ms.saturating_sub(store.now_ms()).max(0);
                Err(JobError::snooze(Duration::from_millis(
                    u64::try_from(wait).unwrap_or(0),
                )))
            }
            Err(Stop::Halt(Halt::Store(e))) => Err(store_failed(e)),
            Err(Stop::Halt(Halt::Replay(message))) => {
                tracing::error!(run = %run.id, error = %message, "workflow run halted");
                if !defer_end
                    && store
                        .set_run_status(
                            run.id.clone(),
                            RunStatus::Halted,
                            None,
                            Some(message.clone()),
                        )
                        .await
                        .map_err(store_failed)?
                {
                    count_end(&run.kind, RunStatus::Halted);
                }
                Ok(Driven::Ended(Some(RunEnd::Halted(message))))
            }
        }
    }

    /// Resolves when `run` is no longer `running` in the store (a caller cancelled it), or
    /// once its deadline passes (cancelling it then): read every `cancel_check` while the
    /// code runs, and never before the first check is due, so a short resumption reads
    /// nothing. Store errors are retried at the next check.
    async fn cancelled(&self, run: &crate::store::RunRecord, deadline_ms: Option<i64>) {
        let store = &self.store;
        loop {
            let now = store.now_ms();
            if let Some(d) = deadline_ms
                && now >= d
            {
                match store
                    .cancel_run(run.id.clone(), deadline_reason(run, d))
                    .await
                {
                    Ok(Some((stored, _))) if stored.status != RunStatus::Running => return,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(run = %run.id, error = %e, "cancelling a run past its deadline failed; trying again")
                    }
                }
            }
            // Until the deadline, wake at it at the latest; past it (a cancel that failed),
            // try again every `cancel_check`, never in a tight loop.
            let nap = match deadline_ms {
                Some(d) if d > now => self
                    .cancel_check
                    .min(Duration::from_millis(u64::try_from(d - now).unwrap_or(0))),
                _ => self.cancel_check,
            };
            tokio::time::sleep(nap.max(Duration::from_millis(1))).await;
            match store.run(run.id.clone()).await {
                // Cancelled, or no longer this job's to drive (an operator resumed it with a
                // new job): either way this resumption stops, and the next pass decides.
                Ok(Some(stored))
                    if stored.status != RunStatus::Running || stored.job != run.job =>
                {
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(run = %run.id, error = %e, "reading whether a run was cancelled failed")
                }
            }
        }
    }

    /// Journals the failure (the first one stands), then runs every registered compensation
    /// not yet journaled, latest step first.
    async fn roll_back(
        &self,
        ctx: &FlowContext,
        run: &str,
        message: String,
        defer_end: bool,
    ) -> Result<Option<RunEnd>, JobError> {
        let store = &self.store;
        let failure = match ctx.journaled(FAILURE_KEY) {
            Some(entry) => entry,
            None => ctx
                .record(failure_entry(
                    message.clone(),
                    store.now_ms(),
                    ctx.last_seq(),
                ))
                .await
                .map_err(store_failed)?,
        };
        let message = failure.outcome.err().unwrap_or(message);
        store
            .set_run_status(
                run.to_owned(),
                RunStatus::Compensating,
                None,
                Some(message.clone()),
            )
            .await
            .map_err(store_failed)?;
        let retry = compensation_retry();
        for reg in ctx.take_compensations() {
            let key = format!("~undo:{}", reg.key);
            if ctx
                .journaled(&key)
                .is_some_and(|e| e.kind == EntryKind::Compensation && e.outcome.is_ok())
            {
                continue;
            }
            let started = store.now_ms();
            let after = Some(ctx.last_seq());
            let attempts = std::sync::atomic::AtomicU32::new(0);
            let attempt = || {
                attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                (reg.undo)()
            };
            let span = tracing::info_span!("compensation", run, step = %reg.key);
            let result = async {
                match &retry {
                    Some(r) => r.call(attempt).await.map_err(|e| e.to_string()),
                    None => attempt().await,
                }
            }
            .instrument(span)
            .await;
            metrics::counter!(
                "windlass_flow_compensations_total",
                "workflow" => ctx.kind().to_owned(),
                "outcome" => if result.is_ok() { "completed" } else { "failed" },
            )
            .increment(1);
            if let Err(e) = result {
                tracing::warn!(run, step = %reg.key, error = %e, "compensation failed; the rollback resumes with the run's next attempt");
                return Err(JobError::failed(format!(
                    "compensation of step `{}` failed: {e}",
                    reg.key
                )));
            }
            ctx.record(JournalEntry {
                seq: 0,
                key,
                kind: EntryKind::Compensation,
                outcome: Ok(Value::Null),
                attempts: attempts.load(std::sync::atomic::Ordering::Relaxed),
                started_at_ms: started,
                finished_at_ms: store.now_ms(),
                after,
            })
            .await
            .map_err(store_failed)?;
        }
        if !defer_end
            && store
                .set_run_status(
                    run.to_owned(),
                    RunStatus::Failed,
                    None,
                    Some(message.clone()),
                )
                .await
                .map_err(store_failed)?
        {
            count_end(ctx.kind(), RunStatus::Failed);
        }
        Ok(Some(RunEnd::Failed(message)))
    }
}
