//! `run_claimed`: one attempt of a job the caller claimed, run in the caller's task, on a real
//! store on a manual clock. Where the attempt's own timer decides (its timeout) tokio's
//! clock is paused. Where a heartbeat must *report* something (a
//! lost lease, a cancel request) the test runs on real time with a 30 ms lease instead: a
//! paused clock jumps to the attempt's timeout whenever the runtime waits for the store's
//! writer thread, so the heartbeat's answer would race it.
#![allow(clippy::unwrap_used)] // test code

use std::time::Duration;

use serde_json::json;
use windlass_queue::conformance::T0;
use windlass_queue::{
    ClaimRequest, ClaimedJob, InlineEnd, JobError, JobOptions, JobState, ManualClock, NewJob,
    NextState, Store, run_claimed,
};
use windlass_sqlite::SqliteStore;

const LEASE: Duration = Duration::from_secs(30);

async fn claimed(timeout: Duration) -> (SqliteStore, ManualClock, ClaimedJob) {
    let clock = ManualClock::new(T0);
    let store = SqliteStore::memory_builder()
        .clock(clock.clone())
        .open()
        .await
        .unwrap();
    let job = NewJob::new(
        "k",
        json!({}),
        JobOptions {
            timeout,
            ..JobOptions::default()
        },
    )
    .unwrap();
    store.enqueue(vec![job]).await.unwrap();
    let mut jobs = store
        .claim(ClaimRequest {
            queues: vec!["default".into()],
            kinds: vec!["k".into()],
            limit: 1,
            worker: "inline-test".into(),
            lease_for: LEASE,
        })
        .await
        .unwrap();
    (store, clock, jobs.remove(0))
}

#[tokio::test(start_paused = true)]
async fn a_finished_attempt_is_stored_with_its_last_progress() {
    let (store, _clock, job) = claimed(Duration::from_secs(60)).await;
    let end = run_claimed(&store, &job, LEASE, Duration::ZERO, |ctx| async move {
        ctx.progress(json!({"done": 3}));
        Ok(())
    })
    .await;
    assert_eq!(end, InlineEnd::Stored(NextState::Completed));
    let record = store.get(job.lease.job).await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Completed);
    assert_eq!(
        record.progress,
        Some(json!({"done": 3})),
        "progress sent just before the end"
    );
    assert_eq!(record.attempts[0].worker, "inline-test");
}

#[tokio::test(start_paused = true)]
async fn an_attempt_past_its_timeout_is_stored_as_timed_out_and_retried() {
    let (store, _clock, job) = claimed(Duration::from_secs(5)).await;
    let end = run_claimed(&store, &job, LEASE, Duration::ZERO, |_ctx| async {
        std::future::pending::<Result<(), JobError>>().await
    })
    .await;
    assert!(
        matches!(end, InlineEnd::Stored(NextState::Retryable { .. })),
        "{end:?}"
    );
    let record = store.get(job.lease.job).await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Retryable);
    assert_eq!(record.attempts[0].outcome, "timed_out");
}

/// Heartbeats every 10 ms of real time.
const SHORT: Duration = Duration::from_millis(30);

#[tokio::test]
async fn a_lost_lease_stops_the_attempt_and_writes_nothing() {
    let (store, clock, job) = claimed(Duration::from_secs(600)).await;
    // The caller stalled: its lease expired and a sweep took the job back.
    clock.advance(LEASE + Duration::from_secs(1));
    store.rescue_expired(3).await.unwrap();
    let end = run_claimed(&store, &job, SHORT, Duration::ZERO, |_ctx| async {
        std::future::pending::<Result<(), JobError>>().await
    })
    .await;
    assert_eq!(end, InlineEnd::LeaseLost);
    let record = store.get(job.lease.job).await.unwrap().unwrap();
    assert_eq!(
        record.state,
        JobState::Available,
        "the zombie wrote nothing"
    );
}

#[tokio::test]
async fn a_cancel_request_reaches_the_attempt_through_its_heartbeat() {
    let (store, _clock, job) = claimed(Duration::from_secs(600)).await;
    store.cancel(job.lease.job).await.unwrap();
    let end = run_claimed(&store, &job, SHORT, Duration::ZERO, |ctx| async move {
        ctx.cancelled().await;
        std::future::pending::<Result<(), JobError>>().await
    })
    .await;
    assert_eq!(end, InlineEnd::Stored(NextState::Cancelled));
    let record = store.get(job.lease.job).await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Cancelled);
}

/// The handler's own completion writer (`JobContext::complete_with`) stores the end in its
/// place: here a cancel instead of the completion, which is what the caller is told.
#[tokio::test(start_paused = true)]
async fn a_handlers_own_writer_stores_the_completion_in_its_place() {
    let (store, _clock, job) = claimed(Duration::from_secs(60)).await;
    let store = std::sync::Arc::new(store);
    let writer = std::sync::Arc::clone(&store);
    let end = run_claimed(&*store, &job, LEASE, Duration::ZERO, |ctx| async move {
        ctx.complete_with(move |mut finish| {
            let store = std::sync::Arc::clone(&writer);
            async move {
                assert_eq!(finish.next, NextState::Completed);
                finish.next = NextState::Cancelled;
                finish.record.outcome = "cancelled".into();
                let fenced = store.finish(vec![finish.clone()]).await?;
                Ok((fenced == [windlass_queue::Fenced::Applied]).then_some(finish))
            }
        });
        Ok(())
    })
    .await;
    assert_eq!(end, InlineEnd::Stored(NextState::Cancelled));
    let record = store.get(job.lease.job).await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Cancelled);
    assert_eq!(record.attempts[0].outcome, "cancelled");
}

/// A handler that asked for its own writer and then fails is stored as any failure: the
/// writer is never called.
#[tokio::test(start_paused = true)]
async fn a_failed_attempt_never_uses_the_handlers_writer() {
    let (store, _clock, job) = claimed(Duration::from_secs(60)).await;
    let called = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = std::sync::Arc::clone(&called);
    let end = run_claimed(&store, &job, LEASE, Duration::ZERO, |ctx| async move {
        ctx.complete_with(move |_finish| {
            seen.store(true, std::sync::atomic::Ordering::SeqCst);
            async { Ok(None) }
        });
        Err(JobError::permanent("no"))
    })
    .await;
    assert_eq!(end, InlineEnd::Stored(NextState::Discarded));
    assert!(!called.load(std::sync::atomic::Ordering::SeqCst));
    let record = store.get(job.lease.job).await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Discarded);
}
