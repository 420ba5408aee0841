//! One attempt of a job that the caller claimed itself, run in the caller's task.
//!
//! **The problem.** Some work should start *now*, in the process that asked for it (no trip
//! through a queue and a worker's claim), yet must not be lost if that process dies half-way.
//! The answer is to store the job already `running` under a lease held by the caller (a
//! backend does that, e.g. `FlowStore::start_run` with a claim) and then run the attempt
//! here: while it runs its lease is kept alive by heartbeats; when it ends, its end is stored
//! exactly as a worker would store it (fenced by the lease). If the process dies, the lease
//! expires and any worker of the job's queue takes the job over: leases, fencing and crash
//! recovery stay the queue's.
//!
//! **When not to use it:** for work that can wait for a worker, enqueue it; an inline attempt
//! bypasses the queue's limits and priorities (it was never queued), and its retries (if the
//! attempt fails) go through the queue as usual.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use windlass_policy::ClassifiedError as _;

use super::attempt::{Ended, next_state};
use super::run::count_attempt;
use crate::handler::{CompletionSlot, JobContext, JobError, take_completion};
use crate::job::AttemptRecord;
use crate::store::{ClaimedJob, Fenced, Finish, NextState, Store};

/// How an inline attempt ended.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum InlineEnd {
    /// The attempt's end was stored: the job went to this state.
    Stored(NextState),
    /// The lease was lost while the attempt ran (it was stopped) or before its end was stored
    /// (the store refused it): another attempt owns the job now.
    LeaseLost,
    /// The attempt's end could not be stored (the store kept failing): the lease will expire
    /// and the job will be retried by a worker, so nothing is lost, only delayed.
    NotStored,
}

/// Runs one attempt of `job`, which the caller claimed (it is `running` under `job.lease`),
/// in the calling task: `run` gets the job's context; the lease is extended every third of
/// `lease_for` while it runs; the attempt is stopped by the job's hard timeout, by a lost
/// lease, or (after `cancel_grace`) by a cancellation request; then its end is stored as a
/// worker's would be.
pub async fn run_claimed<S, F, Fut>(
    store: &S,
    job: &ClaimedJob,
    lease_for: Duration,
    cancel_grace: Duration,
    run: F,
) -> InlineEnd
where
    S: Store,
    F: FnOnce(JobContext) -> Fut,
    Fut: Future<Output = Result<(), JobError>>,
{
    run_claimed_then(
        store,
        job,
        lease_for,
        cancel_grace,
        run,
        |finish| async move {
            store
                .finish(vec![finish])
                .await
                .map(|f| f.first().copied().unwrap_or(Fenced::Rejected))
        },
    )
    .await
}

/// [`run_claimed`], storing the attempt's end with `store_end` instead of
/// [`Store::finish`]: for a caller that writes the end together with its own state in one
/// transaction. `store_end` must apply the finish exactly as `Store::finish` does (fenced by
/// its lease) and say whether it was applied.
pub async fn run_claimed_then<S, F, Fut, E, EFut>(
    store: &S,
    job: &ClaimedJob,
    lease_for: Duration,
    cancel_grace: Duration,
    run: F,
    store_end: E,
) -> InlineEnd
where
    S: Store,
    F: FnOnce(JobContext) -> Fut,
    Fut: Future<Output = Result<(), JobError>>,
    E: Fn(Finish) -> EFut,
    EFut: Future<Output = Result<Fenced, crate::store::StoreError>>,
{
    let cancel = CancellationToken::new();
    let (progress_tx, mut progress_rx) = mpsc::unbounded_channel();
    let completion = CompletionSlot::default();
    let ctx = JobContext {
        id: job.lease.job,
        attempt: job.attempt,
        queue: Arc::from(job.queue.as_str()),
        cancel: cancel.clone(),
        progress: progress_tx,
        trace_context: job.trace_context.as_deref().map(Arc::from),
        completion: completion.clone(),
    };
    let attempt = tokio::time::timeout(job.timeout.min(crate::job::MAX_DURATION), run(ctx));
    tokio::pin!(attempt);
    let every = (lease_for / 3).max(Duration::from_millis(1));
    // The lease keeper runs beside the attempt (polled in the same task, never blocking it):
    // heartbeats, progress, and the cancellation request with its grace.
    let keeper = async {
        let progress_rx = &mut progress_rx;
        let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut abort_at: Option<tokio::time::Instant> = None;
        loop {
            let abort = async {
                match abort_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = abort => return Ended::CancelledByUser,
                Some((_, p)) = progress_rx.recv() => {
                    if let Err(e) = store.progress(job.lease.clone(), p).await {
                        tracing::warn!(job = job.lease.job.0, error = %e, "storing an inline attempt's progress failed");
                    }
                }
                _ = beat.tick() => match store.heartbeat(vec![job.lease.clone()], lease_for).await {
                    Ok(beats) => match beats.first() {
                        Some(b) if !b.held => return Ended::LeaseLost,
                        Some(b) if b.cancel_requested && !cancel.is_cancelled() => {
                            cancel.cancel();
                            abort_at = Some(tokio::time::Instant::now() + cancel_grace);
                        }
                        _ => {}
                    },
                    Err(e) => {
                        tracing::warn!(job = job.lease.job.0, error = %e, "an inline attempt's heartbeat failed");
                    }
                },
            }
        }
    };
    let ended = {
        tokio::pin!(keeper);
        tokio::select! {
            biased;
            r = &mut attempt => match r {
                Ok(result) => Ended::Returned(result),
                Err(_) => Ended::TimedOut(job.timeout),
            },
            stopped = &mut keeper => stopped,
        }
    };
    // Progress reported just before the attempt ended is not lost: the latest one is stored.
    let mut last = None;
    while let Ok((_, p)) = progress_rx.try_recv() {
        last = Some(p);
    }
    if let Some(p) = last
        && ended != Ended::LeaseLost
        && let Err(e) = store.progress(job.lease.clone(), p).await
    {
        tracing::warn!(job = job.lease.job.0, error = %e, "storing an inline attempt's progress failed");
    }
    let now = store.now_ms();
    let Some((next, outcome, error, class)) = next_state(job, &ended, now) else {
        return InlineEnd::LeaseLost;
    };
    let finish = Finish {
        lease: job.lease.clone(),
        next: next.clone(),
        record: AttemptRecord {
            attempt: job.attempt,
            worker: job.lease.worker.clone(),
            at_ms: now,
            outcome: outcome.to_owned(),
            error,
            class: class.map(|c| c.as_str().to_owned()),
        },
    };
    let count = |outcome: &str, class: Option<&str>| count_attempt(job, outcome, class);
    // The handler's own writer, if it asked for one (`JobContext::complete_with`), stores
    // a completion instead of `store_end`; the attempt is counted by the end it stored.
    let own = (next == NextState::Completed)
        .then(|| take_completion(&completion))
        .flatten();
    if own.is_none() {
        count(outcome, class.map(|c| c.as_str()));
    }
    // A few quick tries; after that the lease's expiry is the retry (nothing is lost).
    let mut wait = Duration::from_millis(10);
    for _ in 0..5 {
        let stored = match &own {
            Some(write) => write(finish.clone()).await.map(|stored| match stored {
                Some(f) => {
                    count(&f.record.outcome, f.record.class.as_deref());
                    (Fenced::Applied, f.next)
                }
                None => {
                    count(outcome, class.map(|c| c.as_str()));
                    (Fenced::Rejected, next.clone())
                }
            }),
            None => store_end(finish.clone())
                .await
                .map(|fenced| (fenced, next.clone())),
        };
        match stored {
            Ok((Fenced::Applied, stored)) => return InlineEnd::Stored(stored),
            Ok((Fenced::Rejected, _)) => return InlineEnd::LeaseLost,
            Err(e) => {
                tracing::warn!(job = job.lease.job.0, error = %e, "storing an inline attempt's end failed");
                if !e.error_class().is_retryable() {
                    break;
                }
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        }
    }
    InlineEnd::NotStored
}
