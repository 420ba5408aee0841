//! The batch statements of `starts.rs`, `ends.rs` and `statuses.rs` called directly: their writers fall back
//! to one statement per item when a batch fails, so a broken batch statement would pass every
//! test that goes through the writer. Each case here fails if its statement does.
//!
//! Needs `DATABASE_URL`; without it each case returns at once (the conformance tests say why).
#![allow(clippy::unwrap_used)] // test code

use std::time::Duration;

use serde_json::json;
use tokio::sync::oneshot;
use windlass_flow::store::EndRun;
use windlass_flow::{DRIVER_KIND, FlowStore, InlineClaim, RunStart, RunStatus};
use windlass_queue::{
    AttemptRecord, Finish, JobOptions, Lease, NewJob, NextState, Store, StoreError,
};

use crate::PostgresStore;

async fn fresh() -> Option<PostgresStore> {
    let url = std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())?;
    let schema = format!("wl_batch_{}_{:x}", std::process::id(), fastrand::u64(..));
    Some(
        PostgresStore::builder(url)
            .schema(schema)
            .pool_size(2)
            .open()
            .await
            .unwrap(),
    )
}

fn claim() -> InlineClaim {
    InlineClaim {
        worker: "batch-test".into(),
        lease_for: Duration::from_secs(30),
    }
}

/// A direct start of run `id` whose job's options all differ with `n`.
fn start(id: &str, n: i64) -> RunStart {
    let options = JobOptions {
        queue: format!("q{n}"),
        priority: i16::try_from(n).unwrap(),
        timeout: Duration::from_secs(60 + u64::try_from(n).unwrap()),
        tags: vec![format!("t{n}")],
        limit_key: Some(format!("l{n}")),
        trace_context: Some(format!("00-{n:032x}-{n:016x}-01")),
        ..JobOptions::default()
    };
    RunStart {
        id: id.into(),
        kind: format!("k{n}"),
        input: json!({ "n": n }),
        created_at_ms: 1_000 + n,
        job: NewJob::new(DRIVER_KIND, json!({ "run": id, "n": n }), options).unwrap(),
        claim: Some(claim()),
    }
}

fn pending_start(start: RunStart, now: i64) -> crate::starts::Pending {
    crate::starts::Pending {
        start,
        now,
        reply: oneshot::channel().0,
    }
}

#[tokio::test]
async fn a_batch_of_direct_starts_writes_each_run_and_job_as_its_own() {
    let Some(store) = fresh().await else { return };
    let taken = store.start_run(start("taken", 9)).await.unwrap();
    let batch = vec![
        pending_start(start("a", 1), 5_000),
        pending_start(start("taken", 2), 5_000),
        pending_start(start("b", 3), 6_000),
    ];
    let client = store.pool.get().await.unwrap();
    let jobs = crate::starts::start_many(&client, &batch).await.unwrap();
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    assert!(!jobs.contains_key("taken"), "a taken id writes nothing");
    let run = store.run("taken".into()).await.unwrap().unwrap();
    assert_eq!((run.job, run.kind.as_str()), (taken.run.job, "k9"));
    for (id, n, now) in [("a", 1_i64, 5_000_i64), ("b", 3, 6_000)] {
        let run = store.run(id.into()).await.unwrap().unwrap();
        assert_eq!(run.job.0, jobs[id], "run {id} names its job");
        assert_eq!(
            (
                run.kind.clone(),
                run.input.clone(),
                run.status,
                run.created_at_ms
            ),
            (
                format!("k{n}"),
                json!({ "n": n }),
                RunStatus::Running,
                1_000 + n
            ),
            "run {id}"
        );
        let job = store.get(run.job).await.unwrap().unwrap();
        let want = start(id, n);
        let o = want.job.options();
        assert_eq!(
            (
                job.kind.as_str(),
                &job.queue,
                job.priority,
                job.timeout,
                &job.tags
            ),
            (DRIVER_KIND, &o.queue, o.priority, o.timeout, &o.tags),
            "job of {id}"
        );
        assert_eq!(
            (&job.limit_key, &job.trace_context, &job.payload),
            (&o.limit_key, &o.trace_context, want.job.payload()),
            "job of {id}"
        );
        assert_eq!(
            (
                job.state,
                job.attempt,
                job.locked_by.as_deref(),
                job.created_at_ms
            ),
            (
                windlass_queue::JobState::Running,
                1,
                Some("batch-test"),
                1_000 + n
            ),
            "job of {id}"
        );
        assert_eq!(job.run_at_ms, now, "job of {id}: due when started");
        assert_eq!(job.retry, o.retry, "job of {id}");
    }
}

fn finish(lease: Lease) -> Finish {
    Finish {
        lease,
        next: NextState::Completed,
        record: AttemptRecord {
            attempt: 1,
            worker: "batch-test".into(),
            at_ms: 7_000,
            outcome: "completed".into(),
            error: None,
            class: None,
        },
    }
}

fn pending_end(
    run: &str,
    status: RunStatus,
    output: Option<serde_json::Value>,
    error: Option<&str>,
    lease: Lease,
) -> crate::ends::Pending {
    crate::ends::Pending {
        run: run.into(),
        status,
        output,
        error: error.map(str::to_owned),
        finish: finish(lease),
        now: 8_000,
        reply: oneshot::channel().0,
    }
}

#[tokio::test]
async fn a_batch_of_ends_decides_each_as_alone() {
    let Some(store) = fresh().await else { return };
    let mut leases = std::collections::HashMap::new();
    for (n, id) in ["done", "failed", "rolling", "cancelled"]
        .iter()
        .enumerate()
    {
        let n = i64::try_from(n).unwrap();
        let started = store.start_run(start(id, n)).await.unwrap();
        leases.insert(*id, started.claimed.unwrap().lease);
    }
    // What a run held before its end stays where the end says nothing (NULL).
    store
        .set_run_status(
            "done".into(),
            RunStatus::Running,
            None,
            Some("earlier".into()),
        )
        .await
        .unwrap();
    store
        .set_run_status(
            "failed".into(),
            RunStatus::Running,
            Some(json!("partial")),
            None,
        )
        .await
        .unwrap();
    store
        .cancel_run("cancelled".into(), "cancelled: test".into())
        .await
        .unwrap()
        .unwrap();
    let batch = vec![
        pending_end(
            "done",
            RunStatus::Completed,
            Some(json!(1)),
            None,
            leases["done"].clone(),
        ),
        pending_end(
            "failed",
            RunStatus::Failed,
            None,
            Some("boom"),
            leases["failed"].clone(),
        ),
        pending_end(
            "rolling",
            RunStatus::Compensating,
            None,
            Some("rolling back"),
            leases["rolling"].clone(),
        ),
        pending_end(
            "cancelled",
            RunStatus::Completed,
            Some(json!(2)),
            None,
            leases["cancelled"].clone(),
        ),
        pending_end(
            "nobody",
            RunStatus::Completed,
            None,
            None,
            leases["done"].clone(),
        ),
    ];
    let client = store.pool.get().await.unwrap();
    let answers = crate::ends::end_many(&client, &batch).await.unwrap();
    let decided: Vec<Option<EndRun>> = answers.iter().map(|a| a.as_ref().ok().copied()).collect();
    assert_eq!(
        decided,
        vec![
            Some(EndRun::Stored),
            Some(EndRun::Stored),
            Some(EndRun::Stored),
            Some(EndRun::RunMoved(RunStatus::Compensating)),
            None
        ]
    );
    assert!(
        matches!(&answers[4], Err(StoreError::Invalid(m)) if m.contains("nobody")),
        "{:?}",
        answers[4]
    );
    let run = |id: &str| store.run(id.into());
    let done = run("done").await.unwrap().unwrap();
    assert_eq!(
        (done.status, done.output, done.error, done.finished_at_ms),
        (
            RunStatus::Completed,
            Some(json!(1)),
            Some("earlier".into()),
            Some(8_000)
        )
    );
    let failed = run("failed").await.unwrap().unwrap();
    assert_eq!(
        (
            failed.status,
            failed.output,
            failed.error,
            failed.finished_at_ms
        ),
        (
            RunStatus::Failed,
            Some(json!("partial")),
            Some("boom".into()),
            Some(8_000)
        )
    );
    let rolling = run("rolling").await.unwrap().unwrap();
    assert_eq!(
        (rolling.status, rolling.error, rolling.finished_at_ms),
        (RunStatus::Compensating, Some("rolling back".into()), None),
        "a status that is not an end leaves finished_at alone"
    );
    let cancelled = run("cancelled").await.unwrap().unwrap();
    assert_eq!(
        (cancelled.status, cancelled.output),
        (RunStatus::Compensating, None)
    );
    for (id, state) in [
        ("done", windlass_queue::JobState::Completed),
        ("failed", windlass_queue::JobState::Completed),
        ("rolling", windlass_queue::JobState::Completed),
        ("cancelled", windlass_queue::JobState::Running),
    ] {
        let job = store.get(leases[id].job).await.unwrap().unwrap();
        assert_eq!(job.state, state, "job of {id}");
        if state == windlass_queue::JobState::Completed {
            assert_eq!(job.finished_at_ms, Some(8_000), "job of {id}");
            assert_eq!(job.attempts.len(), 1, "job of {id}");
            assert_eq!(job.attempts[0].at_ms, 7_000, "job of {id}");
        }
    }
}

fn pending_move(
    run: &str,
    status: RunStatus,
    output: Option<serde_json::Value>,
    error: Option<&str>,
    finished: Option<i64>,
) -> crate::statuses::Pending {
    crate::statuses::Pending {
        run: run.into(),
        status,
        output,
        error: error.map(str::to_owned),
        finished,
        reply: oneshot::channel().0,
    }
}

#[tokio::test]
async fn a_batch_of_status_moves_decides_each_as_alone() {
    let Some(store) = fresh().await else { return };
    for (n, id) in ["done", "failed", "rolling", "cancelled", "over"]
        .iter()
        .enumerate()
    {
        store
            .start_run(start(id, i64::try_from(n).unwrap()))
            .await
            .unwrap();
    }
    // What a run held before stays where the move says nothing (NULL).
    for (id, output, error) in [
        ("done", None, Some("earlier")),
        ("failed", Some(json!("partial")), None),
    ] {
        assert!(
            store
                .set_run_status(id.into(), RunStatus::Running, output, error.map(Into::into))
                .await
                .unwrap()
        );
    }
    store
        .cancel_run("cancelled".into(), "cancelled: test".into())
        .await
        .unwrap()
        .unwrap();
    assert!(
        store
            .set_run_status("over".into(), RunStatus::Halted, None, Some("halt".into()))
            .await
            .unwrap()
    );
    let batch = vec![
        pending_move("done", RunStatus::Completed, Some(json!(1)), None, Some(9)),
        pending_move("failed", RunStatus::Failed, None, Some("boom"), Some(8)),
        pending_move("rolling", RunStatus::Compensating, None, Some("undo"), None),
        // A cancelled run (compensating) may not complete; a halted one may not move.
        pending_move(
            "cancelled",
            RunStatus::Completed,
            Some(json!(2)),
            None,
            Some(7),
        ),
        pending_move("over", RunStatus::Failed, None, Some("late"), Some(6)),
        pending_move("nobody", RunStatus::Completed, None, None, Some(5)),
    ];
    let client = store.pool.get().await.unwrap();
    let answers = crate::statuses::set_many(&client, &batch).await.unwrap();
    assert_eq!(answers, vec![true, true, true, false, false, false]);
    let run = |id: &str| {
        let store = &store;
        let id = id.to_owned();
        async move { store.run(id).await.unwrap().unwrap() }
    };
    let done = run("done").await;
    assert_eq!(
        (done.status, done.output, done.error, done.finished_at_ms),
        (
            RunStatus::Completed,
            Some(json!(1)),
            Some("earlier".into()),
            Some(9)
        )
    );
    let failed = run("failed").await;
    assert_eq!(
        (
            failed.status,
            failed.output,
            failed.error,
            failed.finished_at_ms
        ),
        (
            RunStatus::Failed,
            Some(json!("partial")),
            Some("boom".into()),
            Some(8)
        )
    );
    let rolling = run("rolling").await;
    assert_eq!(
        (rolling.status, rolling.error, rolling.finished_at_ms),
        (RunStatus::Compensating, Some("undo".into()), None)
    );
    let cancelled = run("cancelled").await;
    assert_eq!(
        (cancelled.status, cancelled.output, cancelled.finished_at_ms),
        (RunStatus::Compensating, None, None)
    );
    let over = run("over").await;
    assert_eq!(
        (over.status, over.error),
        (RunStatus::Halted, Some("halt".into()))
    );
}
