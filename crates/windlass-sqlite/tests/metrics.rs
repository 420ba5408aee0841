//! The queue reports through the `metrics` facade: enqueues, attempts by outcome, kind and
//! class, wait and run time, depth per state and lag, lease expiries, quarantined and pruned
//! jobs. A global recorder (this binary's only
//! test) receives what the worker's tasks report from any thread.
#![allow(clippy::unwrap_used)] // test code

use std::time::Duration;

use serde::{Deserialize, Serialize};
use windlass_queue::{
    AttemptRecord, ClaimRequest, Clock, Finish, Job, JobContext, JobError, JobOptions, JobState,
    ManualClock, NextState, Queue, Store, Worker, WorkerConfig,
};
use windlass_sqlite::SqliteStore;
use windlass_test_support::metrics_capture::Capture;

#[derive(Serialize, Deserialize)]
struct Work {
    fail: bool,
}

struct Maybe;
impl Job for Maybe {
    const KIND: &'static str = "maybe";
    type Payload = Work;
    async fn run(&self, _ctx: JobContext, w: Work) -> Result<(), JobError> {
        if w.fail {
            Err(JobError::permanent("no"))
        } else {
            Ok(())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_reports_enqueues_attempts_latency_depth_and_lag() {
    let capture: &'static Capture = Box::leak(Box::default());
    metrics::set_global_recorder(capture).unwrap();
    let clock = ManualClock::new(1_000_000);
    let queue = Queue::new(
        SqliteStore::memory_builder()
            .clock(clock.clone())
            .open()
            .await
            .unwrap(),
    );
    let mail = JobOptions {
        queue: "mail".into(),
        ..JobOptions::default()
    };
    let ok = queue
        .enqueue::<Maybe>(&Work { fail: false }, mail.clone())
        .await
        .unwrap()
        .id;
    let bad = queue
        .enqueue::<Maybe>(&Work { fail: true }, mail.clone())
        .await
        .unwrap()
        .id;
    // A job nobody runs: it waits, and the lag gauge shows how long.
    let waiting = JobOptions {
        queue: "idle".into(),
        ..JobOptions::default()
    };
    queue
        .enqueue_many::<Maybe>(&[Work { fail: false }, Work { fail: false }], waiting)
        .await
        .unwrap();
    // A job claimed by a worker that then vanished: its lease expires, and (quarantine after
    // one expiry) it is parked. And a job that finished long ago: retention prunes it.
    let stuck = queue
        .enqueue::<Maybe>(
            &Work { fail: false },
            JobOptions {
                queue: "stuck".into(),
                ..JobOptions::default()
            },
        )
        .await
        .unwrap()
        .id;
    let old = queue
        .enqueue::<Maybe>(
            &Work { fail: false },
            JobOptions {
                queue: "old".into(),
                ..JobOptions::default()
            },
        )
        .await
        .unwrap()
        .id;
    let claim = |q: &str| ClaimRequest {
        queues: vec![q.into()],
        kinds: vec!["maybe".into()],
        limit: 1,
        worker: "vanished".into(),
        lease_for: Duration::from_secs(1),
    };
    assert_eq!(queue.store().claim(claim("stuck")).await.unwrap().len(), 1);
    let done = queue.store().claim(claim("old")).await.unwrap().remove(0);
    queue
        .store()
        .finish(vec![Finish {
            lease: done.lease,
            next: NextState::Completed,
            record: AttemptRecord {
                attempt: 1,
                worker: "vanished".into(),
                at_ms: clock.now_ms(),
                outcome: "completed".into(),
                error: None,
                class: None,
            },
        }])
        .await
        .unwrap();
    clock.advance(Duration::from_secs(42));
    let config = WorkerConfig {
        queues: vec!["mail".into()],
        rescue_every: Duration::from_millis(20),
        gauges_every: Duration::from_millis(20),
        quarantine_after: 1,
        retention: Duration::from_secs(10),
        ..WorkerConfig::default()
    };
    let worker = Worker::builder(&queue)
        .register(Maybe)
        .config(config)
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    assert_eq!(
        queue
            .wait(ok, Duration::from_secs(30), Duration::from_millis(10))
            .await
            .unwrap()
            .state,
        JobState::Completed
    );
    assert_eq!(
        queue
            .wait(bad, Duration::from_secs(30), Duration::from_millis(10))
            .await
            .unwrap()
            .state,
        JobState::Discarded
    );
    // The depth gauges come with the sweep: wait for one that saw both ends.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    // A sweep may have read the store between the two ends: wait for one after both.
    while capture.gauge("windlass_queue_depth{queue=mail,state=discarded}") < 1.0
        || capture.gauge("windlass_queue_depth{queue=mail,state=completed}") < 1.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no depth gauges: {:?}",
            capture.names()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    worker.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        capture.counter("windlass_jobs_enqueued_total{queue=mail}"),
        2
    );
    assert_eq!(
        capture.counter("windlass_jobs_enqueued_total{queue=idle}"),
        2
    );
    assert_eq!(
        capture.counter(
            "windlass_job_attempts_total{class=none,kind=maybe,outcome=completed,queue=mail}"
        ),
        1
    );
    assert_eq!(
        capture.counter(
            "windlass_job_attempts_total{class=permanent,kind=maybe,outcome=failed,queue=mail}"
        ),
        1
    );
    assert_eq!(
        capture.counter("windlass_job_wait_seconds{queue=mail}"),
        2,
        "one wait sample per attempt"
    );
    assert_eq!(capture.counter("windlass_job_run_seconds{queue=mail}"), 2);
    assert_eq!(
        capture.gauge("windlass_queue_depth{queue=mail,state=completed}"),
        1.0
    );
    assert_eq!(
        capture.gauge("windlass_queue_depth{queue=idle,state=available}"),
        2.0
    );
    assert_eq!(
        capture.gauge("windlass_queue_lag_seconds{queue=idle}"),
        42.0
    );
    // The vanished worker's job: one expired lease, quarantined; the old job: pruned.
    assert_eq!(capture.counter("windlass_job_lease_expiries_total{}"), 1);
    assert_eq!(capture.counter("windlass_jobs_quarantined_total{}"), 1);
    assert_eq!(
        queue.get(stuck).await.unwrap().unwrap().state,
        JobState::Discarded
    );
    assert_eq!(capture.counter("windlass_jobs_pruned_total{}"), 1);
    assert!(queue.get(old).await.unwrap().is_none());
}
