//! The client: register workflows, start runs (idempotently, by id), and follow them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use windlass_policy::{Backoff, Jitter, RetrySchedule};
use windlass_queue::{
    Fenced, InlineEnd, JobOptions, MAX_DURATION, NewJob, NextState, Queue, QueueLimits, StoreError,
    Unique, run_claimed_then,
};

use crate::context::ChildJobs;
use crate::driver::{DRIVER_KIND, FlowDriver, RunEnd, RunPayload};
use crate::error::{
    CancelError, CancelOutcome, ResumeError, RunError, SignalError, StartError, WaitError,
};
use crate::handle::RunHandle;
use crate::options::{RunOptions, new_traceparent};
use crate::store::{
    EndRun, FlowStore, InlineClaim, JournalEntry, Resumed, RunRecord, RunStart, RunStatus, Started,
};
use crate::workflow::{Erased, ErasedWorkflow, Workflow};

/// The longest run id, in bytes.
pub const MAX_RUN_ID_BYTES: usize = 256;

/// Sets up [`Flows`]: the workflows, and the queue their runs' jobs go to.
pub struct FlowsBuilder<S> {
    queue: Queue<S>,
    workflows: HashMap<&'static str, Arc<dyn ErasedWorkflow>>,
    duplicate: Option<&'static str>,
    job_queue: String,
    attempt_timeout: Duration,
    inline_lease: Duration,
    poll: Duration,
    cancel_check: Duration,
}

impl<S: FlowStore> FlowsBuilder<S> {
    /// How often a resumption whose code is running reads whether its run was cancelled
    /// (default 1 s): the longest a running step goes on after [`Flows::cancel`]. A
    /// resumption shorter than this reads nothing. A run waiting for a timer, a signal or a
    /// child is woken by the cancel at once.
    pub fn cancel_check(mut self, every: Duration) -> Self {
        self.cancel_check = every;
        self
    }

    /// The lease of a run started with [`Flows::run`] while it executes in the caller
    /// (default 30 s, heartbeated every third of it): how long after this process dies a
    /// worker may take the run over.
    pub fn inline_lease(mut self, lease: Duration) -> Self {
        self.inline_lease = lease;
        self
    }

    /// How often a caller waiting for a run it does not execute reads the run's status
    /// (default 50 ms).
    pub fn poll(mut self, every: Duration) -> Self {
        self.poll = every;
        self
    }

    /// Registers a workflow.
    pub fn register<W: Workflow>(mut self, workflow: W) -> Self {
        if self
            .workflows
            .insert(W::KIND, Arc::new(Erased(Arc::new(workflow))))
            .is_some()
        {
            self.duplicate = Some(W::KIND);
        }
        self
    }

    /// The queue the runs' jobs go to (default `"flows"`): give workers of this queue the
    /// [`driver`](Flows::driver).
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.job_queue = queue.into();
        self
    }

    /// The longest one resumption of a run may take before the queue stops it and tries
    /// again (default 1 hour). Durable sleeps do not count: a sleeping run holds no worker.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// Checks the setup.
    pub fn build(self) -> Result<Flows<S>, StartError> {
        if let Some(kind) = self.duplicate {
            return Err(StartError::InvalidOption {
                field: "register",
                reason: format!("workflow `{kind}` is registered twice"),
            });
        }
        if self.inline_lease < Duration::from_millis(3) || self.inline_lease > MAX_DURATION {
            return Err(StartError::InvalidOption {
                field: "inline_lease",
                reason: format!("must be 3 ms to {MAX_DURATION:?}"),
            });
        }
        for (field, every) in [("poll", self.poll), ("cancel_check", self.cancel_check)] {
            if every < Duration::from_millis(1) || every > MAX_DURATION {
                return Err(StartError::InvalidOption {
                    field,
                    reason: format!("must be 1 ms to {MAX_DURATION:?}"),
                });
            }
        }
        let options = self.job_options(None);
        options.validate().map_err(|e| StartError::InvalidOption {
            field: "queue/attempt_timeout",
            reason: e.to_string(),
        })?;
        Ok(Flows {
            driver: FlowDriver {
                store: Arc::clone(self.queue.store()),
                workflows: Arc::new(self.workflows),
                children: ChildJobs {
                    queue: self.job_queue.clone(),
                    attempt_timeout: self.attempt_timeout,
                },
                cancel_check: self.cancel_check,
            },
            queue: self.queue,
            job_queue: self.job_queue,
            attempt_timeout: self.attempt_timeout,
            inline_worker: Arc::from(format!(
                "inline-{}-{:012x}",
                std::process::id(),
                fastrand::u64(..) >> 16
            )),
            inline_lease: self.inline_lease,
            poll: self.poll,
            limits: Arc::default(),
        })
    }

    fn job_options(&self, unique: Option<Unique>) -> JobOptions {
        job_options(&self.job_queue, self.attempt_timeout, unique, None)
    }
}

fn job_options(
    queue: &str,
    timeout: Duration,
    unique: Option<Unique>,
    limit_key: Option<String>,
) -> JobOptions {
    JobOptions {
        queue: queue.to_owned(),
        // A run's job is retried only for infrastructure failures (the store, a
        // compensation that keeps failing): keep at it, backing off to 5 minutes.
        retry: RetrySchedule {
            max_attempts: 1000,
            backoff: Backoff::exponential(Duration::from_millis(500)),
            jitter: Jitter::Full,
            max_delay: Duration::from_secs(300),
        },
        timeout,
        unique,
        limit_key,
        ..JobOptions::default()
    }
}

/// What starts a run: the run, and the job that drives it (on `jobs.queue`, counted under
/// the limit key `workflow:<kind>`). The run's primary key makes the start idempotent: the
/// run and its job are stored together, in one transaction, or not at all (so the job needs
/// no unique key of its own).
pub(crate) fn run_start(
    jobs: &ChildJobs,
    payload: RunPayload,
    claim: Option<InlineClaim>,
    trace: Option<String>,
    now_ms: i64,
) -> Result<RunStart, String> {
    let id = payload.run.clone();
    if id.is_empty() || id.len() > MAX_RUN_ID_BYTES {
        return Err(format!("invalid run id {id:?}: must be 1 to 256 bytes"));
    }
    let job = driver_job(jobs, &payload, trace)?;
    Ok(RunStart {
        id,
        kind: payload.workflow,
        input: payload.input,
        created_at_ms: now_ms,
        job,
        claim,
    })
}

/// The job that drives a run, carrying the run's trace context (a new one when `None`): every
/// resumption's spans carry it, so one trace follows the run across attempts and workers.
fn driver_job(
    jobs: &ChildJobs,
    payload: &RunPayload,
    trace: Option<String>,
) -> Result<NewJob, String> {
    let kind = &payload.workflow;
    let payload = serde_json::to_value(payload).map_err(|e| e.to_string())?;
    let mut options = job_options(
        &jobs.queue,
        jobs.attempt_timeout,
        None,
        Some(format!("workflow:{kind}")),
    );
    options.trace_context = Some(trace.unwrap_or_else(new_traceparent));
    NewJob::new(DRIVER_KIND, payload, options).map_err(|e| e.to_string())
}

/// Workflows over one store: start runs, follow them, and hand workers the
/// [`driver`](Self::driver) that runs them.
pub struct Flows<S> {
    queue: Queue<S>,
    driver: FlowDriver<S>,
    job_queue: String,
    attempt_timeout: Duration,
    /// The worker id of this `Flows`' inline runs (per boot, like a worker's).
    inline_worker: Arc<str>,
    inline_lease: Duration,
    poll: Duration,
    /// The flows queue's limits as last read, and when (read at most once a second).
    limits: Arc<Mutex<Option<(std::time::Instant, QueueLimits)>>>,
}

impl<S> Clone for Flows<S> {
    fn clone(&self) -> Self {
        Flows {
            queue: self.queue.clone(),
            driver: self.driver.clone(),
            job_queue: self.job_queue.clone(),
            attempt_timeout: self.attempt_timeout,
            inline_worker: Arc::clone(&self.inline_worker),
            inline_lease: self.inline_lease,
            poll: self.poll,
            limits: Arc::clone(&self.limits),
        }
    }
}

impl<S> std::fmt::Debug for Flows<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flows")
            .field("queue", &self.job_queue)
            .field("driver", &self.driver)
            .finish()
    }
}

impl<S: FlowStore> Flows<S> {
    /// A builder over `queue`'s store.
    pub fn builder(queue: &Queue<S>) -> FlowsBuilder<S> {
        FlowsBuilder {
            queue: queue.clone(),
            workflows: HashMap::new(),
            duplicate: None,
            job_queue: "flows".into(),
            attempt_timeout: Duration::from_secs(3600),
            inline_lease: Duration::from_secs(30),
            poll: Duration::from_millis(50),
            cancel_check: Duration::from_secs(1),
        }
    }

    /// The queue job that runs this `Flows`' workflows: register it with the workers of
    /// [`queue_name`](Self::queue_name).
    pub fn driver(&self) -> FlowDriver<S> {
        self.driver.clone()
    }

    /// The queue the runs' jobs go to.
    pub fn queue_name(&self) -> &str {
        &self.job_queue
    }

    /// The longest one resumption of a run may take ([`FlowsBuilder::attempt_timeout`]).
    pub fn attempt_timeout(&self) -> Duration {
        self.attempt_timeout
    }

    /// Starts a run of `W` with this id, or returns the existing run's handle when one has
    /// it (an idempotent start: the input given now is ignored, the run's own kept). Runs
    /// of a workflow kind count against the queue's per-key limits under the key
    /// `workflow:<kind>`, so [`QueueLimits::max_running_per_key`](windlass_queue::QueueLimits)
    /// on the flows queue limits how many runs of each kind execute at once (the same
    /// number for every kind on the queue: kinds that need their own limits go on a flows
    /// queue of their own, [`FlowsBuilder::queue`]).
    pub async fn start<W: Workflow>(
        &self,
        id: impl Into<String>,
        input: &W::Input,
    ) -> Result<RunHandle<S, W::Output>, StartError> {
        self.start_with::<W>(id, input, &RunOptions::default())
            .await
    }

    /// [`start`](Self::start) with options (a deadline). The options of an id that already
    /// has a run are ignored, like its input.
    pub async fn start_with<W: Workflow>(
        &self,
        id: impl Into<String>,
        input: &W::Input,
        options: &RunOptions,
    ) -> Result<RunHandle<S, W::Output>, StartError> {
        let id = id.into();
        self.check::<W>(&id)?;
        let started = self.start_run(W::KIND, id, input, None, options).await?;
        self.existing(started.run, W::KIND)
    }

    fn check<W: Workflow>(&self, id: &str) -> Result<(), StartError> {
        if id.is_empty() || id.len() > MAX_RUN_ID_BYTES {
            return Err(StartError::InvalidId {
                id: id.to_owned(),
                reason: "must be 1 to 256 bytes",
            });
        }
        if !self.driver.workflows.contains_key(W::KIND) {
            return Err(StartError::Unregistered(W::KIND.into()));
        }
        Ok(())
    }

    async fn start_run<I: serde::Serialize>(
        &self,
        kind: &'static str,
        id: String,
        input: &I,
        claim: Option<InlineClaim>,
        options: &RunOptions,
    ) -> Result<Started, StartError> {
        let input = serde_json::to_value(input).map_err(|e| StartError::Input {
            kind: kind.into(),
            message: e.to_string(),
        })?;
        let store = self.queue.store();
        let jobs = ChildJobs {
            queue: self.job_queue.clone(),
            attempt_timeout: self.attempt_timeout,
        };
        let now = store.now_ms();
        let deadline = options.deadline_ms(now)?;
        let payload = RunPayload {
            run: id,
            workflow: kind.into(),
            input,
            parent: None,
            deadline_ms: deadline,
        };
        let trace = options.checked_trace()?;
        let start =
            run_start(&jobs, payload, claim, trace, now).map_err(|message| StartError::Input {
                kind: kind.into(),
                message,
            })?;
        Ok(store.start_run(start).await?)
    }

    /// Runs a workflow **here and now**, in the calling task, and returns its output: the
    /// direct start. The run and its job are stored in one transaction with the job already
    /// claimed by this process (no trip through the queue), then the run executes inline
    /// under that job's lease, heartbeated while it runs. If this process dies mid-run, the
    /// lease expires and any worker of the flows queue resumes the run from its journal;
    /// if the run sleeps or must be retried, the queue's workers take it from there and this
    /// call waits for its result (reading the run every `poll`, see [`FlowsBuilder::poll`]).
    ///
    /// An id that already has a run is not started again: the call waits for that run's
    /// result instead (an idempotent start). If the flows queue has limits
    /// ([`QueueLimits`], e.g. a per-kind concurrency limit), the run is not executed here:
    /// it waits its turn in the queue like a [`start`](Self::start)ed run, and this call
    /// waits for its result, so that the limits hold for every run. The limits are read at
    /// most once a second, so a change takes up to a second to reach direct starts.
    pub async fn run<W: Workflow>(
        &self,
        id: impl Into<String>,
        input: &W::Input,
    ) -> Result<W::Output, RunError> {
        self.run_with::<W>(id, input, &RunOptions::default()).await
    }

    /// [`run`](Self::run) with options (a deadline).
    pub async fn run_with<W: Workflow>(
        &self,
        id: impl Into<String>,
        input: &W::Input,
        options: &RunOptions,
    ) -> Result<W::Output, RunError> {
        let id = id.into();
        self.check::<W>(&id)?;
        // The queue's limits are kept by the workers' claims, which an inline run skips:
        // under limits, the run goes through the queue.
        let claim = (!self.queue_is_limited().await?).then(|| InlineClaim {
            worker: self.inline_worker.to_string(),
            lease_for: self.inline_lease,
        });
        let started = self.start_run(W::KIND, id, input, claim, options).await?;
        let fresh = started.created.then(|| started.run.clone());
        let handle: RunHandle<S, W::Output> = self.existing(started.run, W::KIND)?;
        if let Some(job) = started.claimed {
            let payload =
                serde_json::from_value::<RunPayload>(job.payload.clone()).map_err(|e| {
                    StartError::Input {
                        kind: W::KIND.into(),
                        message: e.to_string(),
                    }
                })?;
            // The run's end, once the code has produced one: written together with the
            // job's end in one transaction (`end_run`) when the attempt is stored.
            let end: std::sync::Mutex<Option<RunEnd>> = std::sync::Mutex::new(None);
            let store = self.queue.store();
            let run_id = handle.id().to_owned();
            let stored = run_claimed_then(
                &**store,
                &job,
                self.inline_lease,
                // The workflow's code does not watch the job's cancellation (cancelling a
                // run with its compensations is the run's own operation): stop at once.
                Duration::ZERO,
                |ctx| {
                    let trace = ctx.trace_context().map(str::to_owned);
                    async {
                        let ended = self
                            .driver
                            .drive(job.lease.job, payload, fresh, true, trace)
                            .await;
                        if let Ok(e) = &ended {
                            end.lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .clone_from(e);
                        }
                        ended.map(|_| ())
                    }
                },
                |finish| {
                    let ending = end.lock().unwrap_or_else(PoisonError::into_inner).clone();
                    let (run_id, end) = (run_id.clone(), &end);
                    async move {
                        let Some(e) = ending else {
                            return crate::driver::finish_one(&**store, finish).await;
                        };
                        let (status, output, error) = e.parts();
                        match store
                            .end_run(run_id, status, output, error, finish.clone())
                            .await?
                        {
                            EndRun::Stored => {
                                crate::driver::count_end(W::KIND, status);
                                Ok(Fenced::Applied)
                            }
                            EndRun::LeaseLost => Ok(Fenced::Rejected),
                            EndRun::RunMoved(now) if now.is_terminal() => {
                                // Over already (its end stored before): the code's end does
                                // not count; the job is simply completed.
                                *end.lock().unwrap_or_else(PoisonError::into_inner) = None;
                                crate::driver::finish_one(&**store, finish).await
                            }
                            EndRun::RunMoved(_) => {
                                // Cancelled just as its code ended: the code's end does not
                                // count. Hand the run to the workers at once; they roll it
                                // back, and this call waits for that.
                                *end.lock().unwrap_or_else(PoisonError::into_inner) = None;
                                crate::driver::finish_one(
                                    &**store,
                                    crate::driver::hand_over(finish),
                                )
                                .await
                            }
                        }
                    }
                },
            )
            .await;
            let end = end.into_inner().unwrap_or_else(PoisonError::into_inner);
            // The code's end counts only if it was stored with the job's (the lease held);
            // otherwise whoever holds the run now finishes it, and this call waits for that.
            let end = match stored {
                InlineEnd::Stored(NextState::Completed) => end,
                _ => None,
            };
            match end {
                Some(RunEnd::Completed(output)) => {
                    return serde_json::from_value(output).map_err(|e| {
                        RunError::Wait(WaitError::Output {
                            run: handle.id().to_owned(),
                            message: e.to_string(),
                        })
                    });
                }
                Some(RunEnd::Failed(message)) => return Err(WaitError::Failed(message).into()),
                Some(RunEnd::Halted(message)) => return Err(WaitError::Halted(message).into()),
                None => {}
            }
        }
        Ok(handle.result(Duration::MAX, self.poll).await?)
    }

    /// Whether the flows queue has any limit, as read at most a second ago.
    async fn queue_is_limited(&self) -> Result<bool, StartError> {
        let fresh = std::time::Instant::now();
        if let Some((at, limits)) = *self.limits.lock().unwrap_or_else(PoisonError::into_inner)
            && fresh.duration_since(at) < Duration::from_secs(1)
        {
            return Ok(limits != QueueLimits::default());
        }
        let limits = self.queue.store().limits(self.job_queue.clone()).await?;
        *self.limits.lock().unwrap_or_else(PoisonError::into_inner) = Some((fresh, limits));
        Ok(limits != QueueLimits::default())
    }

    /// Cancels a run: its running steps are stopped (within
    /// [`cancel_check`](FlowsBuilder::cancel_check)), then the compensations of its
    /// completed steps run, latest first, and it ends `failed` with `cancelled: <reason>`.
    /// A run waiting for a timer, a signal or a child is woken to roll back at once; a child
    /// it is waiting for is cancelled too. The cancel and the run's completion race on one
    /// conditional write of the run's row: exactly one wins, so a run is never both completed
    /// and compensated. A step stopped mid-way is not compensated (like a failed step, it has
    /// no result to undo with): a step whose effect must not be left half-done should be
    /// idempotent or clean up after itself. A stranded run (its job over) is given a new job
    /// to roll back with.
    pub async fn cancel(
        &self,
        run: impl Into<String>,
        reason: impl Into<String>,
    ) -> Result<CancelOutcome, CancelError> {
        cancel(
            &**self.queue.store(),
            &self.driver.children,
            run.into(),
            reason.into(),
        )
        .await
    }

    /// Resumes a failed or halted run — or a stranded one, whose job is over while the run
    /// is not — **from its failed step**: the operator's retry after fixing what failed.
    ///
    /// What is kept and what runs again: every step that completed and was **not**
    /// compensated keeps its journaled result and does not run again; the failed step runs
    /// again; a step whose compensation ran runs again too (its effect was undone); timers
    /// that fired and signals that arrived stay. Retired entries are not deleted but renamed
    /// `~r<n>:<key>` (the `n`th resume), so the run's history stays visible. The run is
    /// driven by a new job on its old job's queue (this `Flows`' queue if that job is gone),
    /// with no deadline. A stranded run that was rolling back goes on rolling back. Returns
    /// how many journal entries were retired.
    pub async fn resume(&self, run: impl Into<String>) -> Result<usize, ResumeError> {
        resume(&**self.queue.store(), &self.driver.children, run.into()).await
    }

    fn existing<O>(&self, run: RunRecord, kind: &str) -> Result<RunHandle<S, O>, StartError> {
        if run.kind != kind {
            return Err(StartError::IdTaken {
                id: run.id,
                existing: run.kind,
                asked: kind.into(),
            });
        }
        Ok(RunHandle::new(
            Arc::clone(self.queue.store()),
            self.driver.children.clone(),
            run.id,
        ))
    }

    /// Delivers a signal named `name` to a run: the run's next
    /// [`wait_for(name, ..)`](crate::FlowContext::wait_for) takes it (one already waiting is
    /// woken at once, wherever it sleeps). Signals are journaled in the run when sent, so none
    /// is lost to a crash; each is taken by one wait, in the order sent. A finished run
    /// takes no signals.
    pub async fn signal<T: serde::Serialize>(
        &self,
        run: impl Into<String>,
        name: impl Into<String>,
        payload: &T,
    ) -> Result<(), SignalError> {
        let (run, name) = (run.into(), name.into());
        crate::context::valid_name(&name).map_err(SignalError::InvalidName)?;
        let payload = serde_json::to_value(payload).map_err(|e| SignalError::Payload {
            name: name.clone(),
            message: e.to_string(),
        })?;
        let store = self.queue.store();
        let record = store
            .run(run.clone())
            .await?
            .ok_or_else(|| SignalError::NotFound(run.clone()))?;
        if record.status.is_terminal() {
            return Err(SignalError::Finished {
                run,
                status: record.status.as_str(),
            });
        }
        let now = store.now_ms();
        let key = format!(
            "{}{now}-{:016x}",
            crate::context::signal_prefix(&name),
            fastrand::u64(..)
        );
        store
            .record(
                run,
                JournalEntry {
                    seq: 0,
                    key,
                    kind: crate::EntryKind::Signal,
                    outcome: Ok(payload),
                    attempts: 0,
                    started_at_ms: now,
                    finished_at_ms: now,
                    // Sent from outside the run: its code saw nothing of it.
                    after: None,
                },
            )
            .await?;
        store.wake(record.job).await?;
        Ok(())
    }

    /// A handle on an existing run, whatever its kind (its output read as JSON).
    pub async fn handle(
        &self,
        id: impl Into<String>,
    ) -> Result<Option<RunHandle<S, serde_json::Value>>, StartError> {
        let id = id.into();
        Ok(self.queue.store().run(id.clone()).await?.map(|run| {
            RunHandle::new(
                Arc::clone(self.queue.store()),
                self.driver.children.clone(),
                run.id,
            )
        }))
    }
}

/// [`Flows::resume`], and the new job of a stranded run that a cancel found.
async fn resume<S: FlowStore>(
    store: &S,
    jobs: &ChildJobs,
    run: String,
) -> Result<usize, ResumeError> {
    let record = store
        .run(run.clone())
        .await?
        .ok_or_else(|| ResumeError::NotFound(run.clone()))?;
    // A run rolling back goes on rolling back: nothing is retired.
    let renames = if record.status == RunStatus::Compensating {
        Vec::new()
    } else {
        crate::resume::retirements(&store.journal(run.clone()).await?)
    };
    // The parent (if this run is a child) and the trace are read from its old job when
    // it still exists.
    let old = store.get(record.job).await?;
    let trace = old.as_ref().and_then(|j| j.trace_context.clone());
    let old_queue = old.as_ref().map(|j| (j.queue.clone(), j.timeout));
    let parent = old
        .and_then(|j| serde_json::from_value::<RunPayload>(j.payload).ok())
        .and_then(|p| p.parent);
    let payload = RunPayload {
        run: record.id.clone(),
        workflow: record.kind.clone(),
        input: record.input.clone(),
        parent,
        deadline_ms: None,
    };
    // Its new job goes where its old one was, when that is known.
    let jobs = match &old_queue {
        Some((queue, attempt_timeout)) => ChildJobs {
            queue: queue.clone(),
            attempt_timeout: *attempt_timeout,
        },
        None => jobs.clone(),
    };
    let job = driver_job(&jobs, &payload, trace).map_err(ResumeError::Job)?;
    match store.resume_run(run.clone(), renames, job).await? {
        None => Err(ResumeError::NotFound(run)),
        Some(Resumed::Resumed { retired, .. }) => Ok(retired),
        Some(Resumed::NotResumable(status)) => Err(ResumeError::NotResumable {
            run,
            status: status.as_str(),
        }),
    }
}

/// [`Flows::cancel`] and [`RunHandle::cancel`].
pub(crate) async fn cancel<S: FlowStore>(
    store: &S,
    jobs: &ChildJobs,
    run: String,
    reason: String,
) -> Result<CancelOutcome, CancelError> {
    if reason.len() > MAX_REASON_BYTES {
        return Err(CancelError::InvalidReason(format!(
            "{} bytes; at most {MAX_REASON_BYTES}",
            reason.len()
        )));
    }
    let message = if reason.is_empty() {
        "cancelled".to_owned()
    } else {
        format!("cancelled: {reason}")
    };
    for _ in 0..3 {
        let Some((stored, moved)) = store.cancel_run(run.clone(), message.clone()).await? else {
            return Err(CancelError::NotFound(run));
        };
        let outcome = match (moved, stored.status) {
            (true, _) => {
                metrics::counter!("windlass_flow_cancels_total", "workflow" => stored.kind.clone(), "by" => "caller")
                    .increment(1);
                CancelOutcome::Cancelled
            }
            (false, RunStatus::Compensating) => CancelOutcome::AlreadyRollingBack,
            // A snapshot that lost a race with a concurrent write (PostgreSQL's
            // `UNION ALL` branch reads the statement's snapshot): ask again.
            (false, RunStatus::Running) => continue,
            (false, status) => return Ok(CancelOutcome::Finished(status)),
        };
        if !moved {
            // Already rolling back: wake it again, wherever it waits (a first cancel woke
            // it in its own transaction).
            store.wake(stored.job).await?;
        }
        // A stranded run (its job over or gone) has no driver to roll it back: give it one.
        let alive = store
            .get(stored.job)
            .await?
            .is_some_and(|j| !j.state.is_terminal());
        if !alive {
            match resume(store, jobs, run.clone()).await {
                Ok(_) | Err(ResumeError::NotResumable { .. }) => {}
                Err(ResumeError::Store(e)) => return Err(CancelError::Store(e)),
                Err(e) => {
                    return Err(CancelError::Store(StoreError::Invalid(e.to_string())));
                }
            }
        }
        return Ok(outcome);
    }
    Err(CancelError::Store(StoreError::Unavailable(format!(
        "run `{run}` kept changing while being cancelled; try again"
    ))))
}

/// The longest reason [`Flows::cancel`] takes, in bytes.
pub const MAX_REASON_BYTES: usize = 1024;
