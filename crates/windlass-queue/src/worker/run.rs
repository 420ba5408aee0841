//! The worker's tasks (the fetcher is in `fetch.rs`): job tasks, completer, heartbeat,
//! rescuer, progress.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use windlass_policy::ClassifiedError;

use super::Worker;
use super::attempt::{Ended, next_state, secs_since};
use crate::client::{JobEvent, JobEventKind};
use crate::handler::{CompletionSlot, CompletionWriter, ErasedJob, JobContext, take_completion};
use crate::job::{AttemptRecord, JobId};
use crate::store::{ClaimedJob, Fenced, Finish, Lease, NextState, Store};

const STOP_NONE: u8 = 0;
const STOP_CANCELLED: u8 = 1;
const STOP_RELEASED: u8 = 2;
const STOP_LEASE_LOST: u8 = 3;
/// The handler ended by itself: a later stop changes nothing.
const STOP_ENDED: u8 = 4;

/// A job this worker runs: its lease and how to stop it.
struct Running {
    lease: Lease,
    /// Cooperative: the handler's [`JobContext::cancelled`].
    cancel: CancellationToken,
    /// Hard: drops the handler's future.
    abort: CancellationToken,
    /// Why it was stopped (`STOP_*`), first reason wins.
    stop: Arc<AtomicU8>,
}

impl Running {
    /// Stops the handler for `why`; true if this call decided the reason (the handler had
    /// neither ended nor been stopped before).
    fn stop(&self, why: u8, hard: bool) -> bool {
        let decided = self
            .stop
            .compare_exchange(STOP_NONE, why, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        self.cancel.cancel();
        if hard {
            self.abort.cancel();
        }
        decided
    }
}

pub(super) struct Shared<S> {
    pub(super) store: Arc<S>,
    events: broadcast::Sender<JobEvent>,
    pub(super) config: super::WorkerConfig,
    pub(super) handlers: HashMap<&'static str, Arc<dyn ErasedJob>>,
    pub(super) worker_id: String,
    running: Mutex<HashMap<JobId, Running>>,
    /// Signalled whenever a job leaves `running`.
    drained: Notify,
    finishes: mpsc::UnboundedSender<(Finish, JobEventKind)>,
    progress: mpsc::UnboundedSender<(JobId, serde_json::Value)>,
    counters: Arc<Counters>,
    /// Claimed jobs whose handler has not ended: `concurrency + prefetch` permits, taken by
    /// the fetcher (and forgotten) and given back as each handler ends.
    pub(super) in_flight: Arc<Semaphore>,
    /// Handlers running: `concurrency` permits.
    pub(super) run_slots: Arc<Semaphore>,
    /// When a shutdown must be over (set before the fetcher is told to stop).
    pub(super) stop_deadline: Arc<Mutex<Option<tokio::time::Instant>>>,
}

/// What a worker has done since it started, counted when the store confirmed it.
#[derive(Debug, Default)]
struct Counters {
    claimed: AtomicU64,
    completed: AtomicU64,
    retried: AtomicU64,
    snoozed: AtomicU64,
    discarded: AtomicU64,
    cancelled: AtomicU64,
    fenced: AtomicU64,
}

impl Counters {
    fn record(&self, next: &NextState) {
        let c = match next {
            NextState::Completed => &self.completed,
            NextState::Retryable { .. } => &self.retried,
            NextState::Snoozed { .. } => &self.snoozed,
            NextState::Discarded => &self.discarded,
            NextState::Cancelled => &self.cancelled,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// A worker's counts since it started; each is counted once the store has confirmed it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerCounts {
    /// Attempts started.
    pub claimed: u64,
    /// Jobs completed.
    pub completed: u64,
    /// Attempts that failed and were scheduled again.
    pub retried: u64,
    /// Attempts snoozed or released without counting.
    pub snoozed: u64,
    /// Jobs discarded (dead letter).
    pub discarded: u64,
    /// Jobs cancelled.
    pub cancelled: u64,
    /// Attempt ends the store refused because the lease was lost.
    pub fenced: u64,
}

impl<S> Shared<S> {
    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Running>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }
    /// Forgets the attempt held under `lease` — and only that one: once its end is stored,
    /// the same job may already have been claimed again by this worker, under a new lease
    /// that must stay (it is heartbeated, and cancelled on shutdown).
    fn forget(&self, lease: &Lease) {
        let mut running = self.running();
        if running
            .get(&lease.job)
            .is_some_and(|r| r.lease.token == lease.token)
        {
            running.remove(&lease.job);
        }
        drop(running);
        self.drained.notify_waiters();
    }
    fn emit(&self, id: JobId, kind: JobEventKind) {
        let _ = self.events.send(JobEvent { id, kind });
    }
}

/// A running worker. Dropping it does not stop the worker: call
/// [`shutdown`](WorkerHandle::shutdown).
pub struct WorkerHandle {
    worker_id: String,
    counters: Arc<Counters>,
    unknown_kinds: Vec<String>,
    stop_fetching: CancellationToken,
    stop_deadline: Arc<Mutex<Option<tokio::time::Instant>>>,
    stop_background: CancellationToken,
    fetcher: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
    drain: Box<
        dyn Fn(tokio::time::Instant) -> futures_util::future::BoxFuture<'static, ShutdownReport>
            + Send,
    >,
}

/// What a graceful shutdown did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Jobs still running at the deadline, stopped and released back to their queue
    /// (their attempt not counted).
    pub released: usize,
}

impl WorkerHandle {
    /// This worker's per-boot id (recorded on every attempt it runs).
    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    /// What this worker has done so far (each count confirmed by the store).
    pub fn counts(&self) -> WorkerCounts {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WorkerCounts {
            claimed: get(&c.claimed),
            completed: get(&c.completed),
            retried: get(&c.retried),
            snoozed: get(&c.snoozed),
            discarded: get(&c.discarded),
            cancelled: get(&c.cancelled),
            fenced: get(&c.fenced),
        }
    }

    /// Kinds of due jobs in this worker's queues that it has no handler for, found at start.
    /// They are left in place for a worker that has one (and logged).
    pub fn unknown_kinds(&self) -> &[String] {
        &self.unknown_kinds
    }

    /// Stops fetching, lets running jobs finish for up to `grace`, then stops the rest and
    /// releases them to their queue; returns once every attempt's end is stored.
    ///
    /// Claims already on their way when it is called are answered first, and the jobs they
    /// took join the running ones, within the same `grace` (counted from the call). A claim
    /// still unanswered when `grace` ends (the database unreachable) is left: if it did take
    /// jobs, they wait for their leases to expire, as with any claim whose answer is lost.
    pub async fn shutdown(self, grace: Duration) -> ShutdownReport {
        let deadline = tokio::time::Instant::now() + grace.min(crate::job::MAX_DURATION);
        *self
            .stop_deadline
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(deadline);
        self.stop_fetching.cancel();
        let _ = self.fetcher.await;
        let report = (self.drain)(deadline).await;
        self.stop_background.cancel();
        for t in self.background {
            let _ = t.await;
        }
        report
    }
}

impl<S: Store> Worker<S> {
    /// Starts the worker's tasks on the current tokio runtime. Reports (and logs) kinds of
    /// due jobs in its queues that it has no handler for.
    pub async fn start(self) -> Result<WorkerHandle, crate::StoreError> {
        let kinds = self.kinds();
        let unknown_kinds = self
            .queue
            .store
            .unknown_kinds(self.config.queues.clone(), kinds)
            .await?;
        for kind in &unknown_kinds {
            tracing::warn!(kind, queues = ?self.config.queues, "due jobs of a kind this worker has no handler for");
        }
        let (finish_tx, finish_rx) = mpsc::unbounded_channel();
        let (progress_tx, progress_rx) = mpsc::unbounded_channel();
        let worker_id = format!("{}-{:012x}", std::process::id(), fastrand::u64(..) >> 16);
        let shared = Arc::new(Shared {
            store: self.queue.store.clone(),
            events: self.queue.events.clone(),
            config: self.config.clone(),
            handlers: self.handlers,
            worker_id: worker_id.clone(),
            running: Mutex::new(HashMap::new()),
            drained: Notify::new(),
            finishes: finish_tx,
            progress: progress_tx,
            counters: Arc::default(),
            in_flight: Arc::new(Semaphore::new(
                self.config.concurrency + self.config.prefetch,
            )),
            run_slots: Arc::new(Semaphore::new(self.config.concurrency)),
            stop_deadline: Arc::default(),
        });
        let counters = shared.counters.clone();
        let stop_deadline = shared.stop_deadline.clone();
        let stop_fetching = CancellationToken::new();
        let stop_background = CancellationToken::new();
        let fetcher = tokio::spawn(super::fetch::fetch_loop(
            shared.clone(),
            stop_fetching.clone(),
        ));
        let mut background = vec![
            tokio::spawn(complete_loop(
                shared.clone(),
                finish_rx,
                stop_background.clone(),
            )),
            tokio::spawn(heartbeat_loop(shared.clone(), stop_background.clone())),
            tokio::spawn(rescue_loop(shared.clone(), stop_background.clone())),
            tokio::spawn(progress_loop(
                shared.clone(),
                progress_rx,
                stop_background.clone(),
            )),
        ];
        for p in self.periodic {
            background.push(tokio::spawn(periodic_loop(
                shared.clone(),
                p,
                stop_background.clone(),
            )));
        }
        let drain_shared = shared.clone();
        let drain = Box::new(move |deadline: tokio::time::Instant| {
            let shared = drain_shared.clone();
            Box::pin(drain(shared, deadline))
                as futures_util::future::BoxFuture<'static, ShutdownReport>
        });
        Ok(WorkerHandle {
            worker_id,
            counters,
            unknown_kinds,
            stop_fetching,
            stop_deadline,
            stop_background,
            fetcher,
            background,
            drain,
        })
    }
}

/// Waits for running jobs up to `grace`, then releases the rest and waits for their ends to
/// be stored.
async fn drain<S: Store>(shared: Arc<Shared<S>>, deadline: tokio::time::Instant) -> ShutdownReport {
    let mut released = 0;
    let mut stopped = false;
    loop {
        let notified = shared.drained.notified();
        let left = shared.running().len();
        if left == 0 {
            return ShutdownReport { released };
        }
        if tokio::time::Instant::now() >= deadline && !stopped {
            // Count only handlers still running: an attempt whose handler ended and whose end
            // is being stored is not released.
            released = shared
                .running()
                .values()
                .filter(|r| r.stop(STOP_RELEASED, true))
                .count();
            stopped = true;
            continue;
        }
        tokio::select! {
            _ = notified => {}
            _ = tokio::time::sleep_until(deadline), if !stopped => {}
        }
    }
}

/// Doubles a back-off delay, from 50 ms up to 5 s.
pub(super) fn backoff(d: Duration) -> Duration {
    (d * 2).clamp(Duration::from_millis(50), Duration::from_secs(5))
}

pub(super) fn start_job<S: Store>(shared: &Arc<Shared<S>>, job: ClaimedJob) {
    let cancel = CancellationToken::new();
    let abort = CancellationToken::new();
    let stop = Arc::new(AtomicU8::new(STOP_NONE));
    shared.running().insert(
        job.lease.job,
        Running {
            lease: job.lease.clone(),
            cancel: cancel.clone(),
            abort: abort.clone(),
            stop: stop.clone(),
        },
    );
    shared.counters.claimed.fetch_add(1, Ordering::Relaxed);
    let now = shared.store.now_ms();
    metrics::histogram!("windlass_job_wait_seconds", "queue" => job.queue.clone())
        .record(secs_since(job.run_at_ms, now));
    shared.emit(
        job.lease.job,
        JobEventKind::Started {
            attempt: job.attempt,
        },
    );
    let shared = shared.clone();
    tokio::spawn(async move {
        let completion = CompletionSlot::default();
        let ended = run_attempt(&shared, &job, cancel, &abort, &stop, &completion).await;
        let _ = stop.compare_exchange(STOP_NONE, STOP_ENDED, Ordering::AcqRel, Ordering::Acquire);
        // The handler is done: its slot goes to the next claim now, while its end is stored
        // in the background (claims and completions overlap instead of taking turns).
        shared.in_flight.add_permits(1);
        let started = now;
        let now = shared.store.now_ms();
        metrics::histogram!("windlass_job_run_seconds", "queue" => job.queue.clone())
            .record(secs_since(started, now));
        let Some((next, outcome, error, class)) = next_state(&job, &ended, now) else {
            metrics::counter!("windlass_job_leases_lost_total", "queue" => job.queue.clone())
                .increment(1);
            shared.forget(&job.lease);
            return;
        };
        let event = event_of(&next, error.as_deref());
        let finish = Finish {
            record: AttemptRecord {
                attempt: job.attempt,
                worker: shared.worker_id.clone(),
                at_ms: now,
                outcome: outcome.to_string(),
                error,
                class: class.map(|c| c.as_str().to_string()),
            },
            lease: job.lease.clone(),
            next,
        };
        if finish.next == NextState::Completed
            && let Some(write) = take_completion(&completion)
        {
            // Counted by the end the writer stores (it may store another).
            complete_own(&shared, &job, &write, finish).await;
            return;
        }
        count_attempt(&job, outcome, class.map(|c| c.as_str()));
        if shared.finishes.send((finish, event)).is_err() {
            // The completer is gone (the runtime is shutting down): the lease will expire
            // and the job will be retried elsewhere. Nothing is lost, only delayed.
            tracing::warn!(
                "completer stopped; the attempt's end will be recovered by lease expiry"
            );
        }
    });
}

async fn run_attempt<S: Store>(
    shared: &Arc<Shared<S>>,
    job: &ClaimedJob,
    cancel: CancellationToken,
    abort: &CancellationToken,
    stop: &AtomicU8,
    completion: &CompletionSlot,
) -> Ended {
    let Some(handler) = shared.handlers.get(job.kind.as_str()) else {
        // Claims name only this worker's kinds; if one slips through, put it back.
        tracing::error!(kind = %job.kind, "claimed a job of a kind without a handler");
        return Ended::Released;
    };
    let ctx = JobContext {
        id: job.lease.job,
        attempt: job.attempt,
        queue: job.queue.as_str().into(),
        cancel,
        progress: shared.progress.clone(),
        trace_context: job.trace_context.as_deref().map(Arc::from),
        completion: completion.clone(),
    };
    let stopped = |stop: &AtomicU8| match stop.load(Ordering::Acquire) {
        STOP_CANCELLED => Ended::CancelledByUser,
        STOP_RELEASED => Ended::Released,
        _ => Ended::LeaseLost,
    };
    // A prefetched job waits here for a handler slot; it can be stopped while it waits.
    let _slot = tokio::select! {
        biased;
        _ = abort.cancelled() => return stopped(stop),
        slot = shared.run_slots.clone().acquire_owned() => match slot {
            Ok(slot) => slot,
            Err(_) => return Ended::Released,
        },
    };
    let span = tracing::info_span!(
        "job",
        id = job.lease.job.0,
        kind = %job.kind,
        attempt = job.attempt,
        trace_context = job.trace_context.as_deref().unwrap_or(""),
    );
    let run = handler.run(ctx, job.payload.clone()).instrument(span);
    tokio::select! {
        biased;
        _ = abort.cancelled() => stopped(stop),
        r = tokio::time::timeout(job.timeout.min(crate::job::MAX_DURATION), run) => match r {
            Ok(result) => Ended::Returned(result),
            Err(_) => Ended::TimedOut(job.timeout),
        },
    }
}

/// The event of an attempt that ended in `next` (with `error`, if it failed).
fn event_of(next: &NextState, error: Option<&str>) -> JobEventKind {
    match next {
        NextState::Completed => JobEventKind::Completed,
        NextState::Retryable { run_at_ms } => JobEventKind::Retrying {
            error: error.unwrap_or_default().to_owned(),
            run_at_ms: *run_at_ms,
        },
        NextState::Snoozed { run_at_ms } => JobEventKind::Snoozed {
            run_at_ms: *run_at_ms,
        },
        NextState::Discarded => JobEventKind::Discarded {
            error: error.unwrap_or_default().to_owned(),
        },
        NextState::Cancelled => JobEventKind::Cancelled,
    }
}

/// Counts an attempt's end (`windlass_job_attempts_total`).
pub(super) fn count_attempt(job: &ClaimedJob, outcome: &str, class: Option<&str>) {
    metrics::counter!(
        "windlass_job_attempts_total",
        "queue" => job.queue.clone(),
        "kind" => job.kind.clone(),
        "outcome" => outcome.to_owned(),
        "class" => class.unwrap_or("none").to_owned(),
    )
    .increment(1);
}

/// Stores a completion through the handler's own writer ([`JobContext::complete_with`]),
/// then counts it and sends its event by the end the writer stored, as the completer does.
/// A write that fails transiently is tried again, with backoff, until it is stored (as the
/// completer retries): the job stays running under its heartbeated lease meanwhile, and a
/// graceful shutdown waits for it. A write the store refuses outright, or a writer that
/// panics, lets the lease go: its expiry runs the job again.
async fn complete_own<S: Store>(
    shared: &Arc<Shared<S>>,
    job: &ClaimedJob,
    write: &CompletionWriter,
    finish: Finish,
) {
    use futures_util::FutureExt as _;
    let id = finish.lease.job;
    let mut wait = Duration::from_millis(10);
    loop {
        let written = std::panic::AssertUnwindSafe(write(finish.clone()))
            .catch_unwind()
            .await;
        match written {
            Ok(Ok(Some(stored))) => {
                count_attempt(job, &stored.record.outcome, stored.record.class.as_deref());
                shared.counters.record(&stored.next);
                shared.emit(id, event_of(&stored.next, stored.record.error.as_deref()));
                shared.forget(&finish.lease);
                return;
            }
            Ok(Ok(None)) => {
                count_attempt(job, &finish.record.outcome, finish.record.class.as_deref());
                shared.counters.fenced.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("windlass_job_fenced_total").increment(1);
                tracing::warn!(job = id.0, "attempt's end refused: its lease was lost");
                shared.forget(&finish.lease);
                return;
            }
            Ok(Err(e)) if e.error_class().is_retryable() => {
                metrics::counter!("windlass_queue_store_errors_total", "op" => "finish")
                    .increment(1);
                tracing::warn!(job = id.0, error = %e, retry_in = ?wait, "storing an attempt's completion failed; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Ok(Err(e)) => {
                metrics::counter!("windlass_queue_store_errors_total", "op" => "finish")
                    .increment(1);
                tracing::error!(job = id.0, error = %e, "the store refused an attempt's completion; its lease will expire");
                break;
            }
            Err(_) => {
                tracing::error!(
                    job = id.0,
                    "an attempt's completion writer panicked; its lease will expire"
                );
                break;
            }
        }
    }
    shared.forget(&finish.lease);
}

/// Stores ended attempts in batches. A write that failed because the store was unavailable
/// is retried until it succeeds; one the store refuses outright is logged and left to lease
/// expiry, which retries the jobs: an attempt's end is never silently dropped.
async fn complete_loop<S: Store>(
    shared: Arc<Shared<S>>,
    mut rx: mpsc::UnboundedReceiver<(Finish, JobEventKind)>,
    stop: CancellationToken,
) {
    // `stop` fires only after shutdown saw every running job forgotten, i.e. every end stored.
    while let Some(first) = tokio::select! {
        biased;
        f = rx.recv() => f,
        _ = stop.cancelled() => None,
    } {
        let mut batch = vec![first];
        while batch.len() < 1000 {
            match rx.try_recv() {
                Ok(f) => batch.push(f),
                Err(_) => break,
            }
        }
        let finishes: Vec<Finish> = batch.iter().map(|(f, _)| f.clone()).collect();
        let mut retry_in = Duration::ZERO;
        let results = loop {
            match shared.store.finish(finishes.clone()).await {
                Ok(r) => break Some(r),
                Err(e) if e.error_class().is_retryable() => {
                    retry_in = backoff(retry_in);
                    tracing::warn!(error = %e, retry_in = ?retry_in, "storing finished attempts failed; retrying");
                    metrics::counter!("windlass_queue_store_errors_total", "op" => "finish")
                        .increment(1);
                    tokio::time::sleep(retry_in).await;
                }
                Err(e) => {
                    // The database refuses the write itself: retrying cannot help. The jobs'
                    // leases will expire and they will be retried, so nothing is lost.
                    tracing::error!(error = %e, jobs = finishes.len(), "the store refused finished attempts; their leases will expire");
                    metrics::counter!("windlass_queue_store_errors_total", "op" => "finish")
                        .increment(1);
                    break None;
                }
            }
        };
        let Some(results) = results else {
            for (finish, _) in batch {
                shared.forget(&finish.lease);
            }
            continue;
        };
        for ((finish, event), fenced) in batch.into_iter().zip(results) {
            let id = finish.lease.job;
            match fenced {
                Fenced::Applied => {
                    shared.counters.record(&finish.next);
                    shared.emit(id, event);
                }
                Fenced::Rejected => {
                    shared.counters.fenced.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("windlass_job_fenced_total").increment(1);
                    tracing::warn!(job = id.0, "attempt's end refused: its lease was lost");
                }
            }
            shared.forget(&finish.lease);
        }
    }
}

async fn heartbeat_loop<S: Store>(shared: Arc<Shared<S>>, stop: CancellationToken) {
    // The first beat one period after start: a new worker holds no lease yet.
    let every = shared.config.heartbeat;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let leases: Vec<Lease> = shared.running().values().map(|r| r.lease.clone()).collect();
        if leases.is_empty() {
            continue;
        }
        match shared
            .store
            .heartbeat(leases.clone(), shared.config.lease)
            .await
        {
            Ok(beats) => {
                let running = shared.running();
                for (lease, beat) in leases.iter().zip(beats) {
                    // The same job may have been claimed again since: only this lease's attempt.
                    let Some(r) = running
                        .get(&lease.job)
                        .filter(|r| r.lease.token == lease.token)
                    else {
                        continue;
                    };
                    if !beat.held {
                        let _ = r.stop(STOP_LEASE_LOST, true);
                    } else if beat.cancel_requested && !r.cancel.is_cancelled() {
                        let _ = r.stop(STOP_CANCELLED, false);
                        let abort = r.abort.clone();
                        let grace = shared.config.cancel_grace;
                        tokio::spawn(async move {
                            tokio::time::sleep(grace).await;
                            abort.cancel();
                        });
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "heartbeat failed");
                metrics::counter!("windlass_queue_store_errors_total", "op" => "heartbeat")
                    .increment(1);
            }
        }
    }
}

async fn rescue_loop<S: Store>(shared: Arc<Shared<S>>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(shared.config.rescue_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut gauges_due = tokio::time::Instant::now();
    loop {
        tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match shared
            .store
            .rescue_expired(shared.config.quarantine_after)
            .await
        {
            Ok(r) => {
                let expired = r.retried.len() + r.discarded.len() + r.quarantined.len();
                metrics::counter!("windlass_job_lease_expiries_total").increment(expired as u64);
                metrics::counter!("windlass_jobs_quarantined_total")
                    .increment(r.quarantined.len() as u64);
                for id in r.quarantined {
                    tracing::warn!(
                        job = id.0,
                        "job quarantined: its attempts keep ending in lease expiry"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "rescuing expired leases failed"),
        }
        // Depth per queue and state, and consumer lag, as gauges (on their own, slower
        // interval: the counts read the whole table).
        let now_instant = tokio::time::Instant::now();
        let gauges = if now_instant >= gauges_due {
            gauges_due = now_instant + shared.config.gauges_every;
            shared.store.stats().await.ok()
        } else {
            None
        };
        if let Some(stats) = gauges {
            let now = shared.store.now_ms();
            for q in stats {
                for state in crate::JobState::ALL {
                    metrics::gauge!(
                        "windlass_queue_depth",
                        "queue" => q.queue.clone(),
                        "state" => state.as_str(),
                    )
                    .set(q.count(state) as f64);
                }
                let lag = q
                    .oldest_due_ms
                    .map_or(0.0, |t| (now - t).max(0) as f64 / 1000.0);
                metrics::gauge!("windlass_queue_lag_seconds", "queue" => q.queue.clone()).set(lag);
            }
        }
        // Retention: finished jobs go after `retention`, dead letters after their own.
        let now = shared.store.now_ms();
        let cfg = &shared.config;
        let pruned = async {
            let a = shared
                .store
                .prune(
                    vec![crate::JobState::Completed, crate::JobState::Cancelled],
                    now - crate::clock::millis(cfg.retention),
                )
                .await?;
            let b = shared
                .store
                .prune(
                    vec![crate::JobState::Discarded],
                    now - crate::clock::millis(cfg.dead_letter_retention),
                )
                .await?;
            Ok::<u64, crate::StoreError>(a + b)
        };
        match pruned.await {
            Ok(n) => metrics::counter!("windlass_jobs_pruned_total").increment(n),
            Err(e) => tracing::warn!(error = %e, "pruning finished jobs failed"),
        }
    }
}

/// Enqueues each tick's job of one periodic schedule (once across processes: the tick's
/// unique key), then sleeps until the next tick.
async fn periodic_loop<S: Store>(
    shared: Arc<Shared<S>>,
    periodic: crate::Periodic,
    stop: CancellationToken,
) {
    let mut retry_in = Duration::ZERO;
    loop {
        let wait = match periodic.enqueue_due(&*shared.store).await {
            Ok(_) => {
                retry_in = Duration::ZERO;
                periodic.until_next_tick(shared.store.now_ms())
            }
            Err(e) => {
                retry_in = backoff(retry_in);
                tracing::warn!(periodic = periodic.name(), error = %e, "enqueueing a periodic job failed");
                retry_in
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn progress_loop<S: Store>(
    shared: Arc<Shared<S>>,
    mut rx: mpsc::UnboundedReceiver<(JobId, serde_json::Value)>,
    stop: CancellationToken,
) {
    while let Some(first) = tokio::select! {
        f = rx.recv() => f,
        _ = stop.cancelled() => None,
    } {
        let mut latest: HashMap<JobId, serde_json::Value> = HashMap::from([first]);
        while let Ok((id, v)) = rx.try_recv() {
            latest.insert(id, v);
        }
        for (id, value) in latest {
            let lease = shared.running().get(&id).map(|r| r.lease.clone());
            let Some(lease) = lease else { continue };
            if let Ok(Fenced::Applied) = shared.store.progress(lease, value.clone()).await {
                shared.emit(id, JobEventKind::Progress(value));
            }
        }
    }
}
