//! Another process's enqueue wakes an idle worker: two stores on one file stand for two
//! processes (each has its own connections; SQLite tells them apart the same way).
#![allow(clippy::unwrap_used)] // test code

use std::time::Duration;

use serde::{Deserialize, Serialize};
use windlass_queue::{Job, JobContext, JobError, JobOptions, JobState, Queue, Store, Worker};
use windlass_sqlite::SqliteStore;

#[derive(Serialize, Deserialize)]
struct Ping;

struct Pong;
impl Job for Pong {
    const KIND: &'static str = "pong";
    type Payload = Ping;
    async fn run(&self, _ctx: JobContext, _p: Ping) -> Result<(), JobError> {
        Ok(())
    }
}

fn path(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("windlass-wakeups-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("jobs.db")
}

#[tokio::test]
async fn another_connections_commit_changes_the_work_signal() {
    let db = path("signal");
    let other = SqliteStore::open(&db).await.unwrap();
    let mine = SqliteStore::builder(&db)
        .watch_every(Duration::from_millis(5))
        .open()
        .await
        .unwrap();
    let mut signal = mine.work_signal();
    signal.borrow_and_update();
    Queue::new(other)
        .enqueue::<Pong>(&Ping, JobOptions::default())
        .await
        .unwrap();
    // Nothing in `mine` enqueued: only the watcher can change its signal.
    tokio::time::timeout(Duration::from_secs(10), signal.changed())
        .await
        .expect("the other connection's commit woke this store")
        .unwrap();
}

#[tokio::test]
async fn an_idle_worker_starts_another_processs_job_without_waiting_for_its_poll() {
    let db = path("worker");
    let worker_side = Queue::new(SqliteStore::open(&db).await.unwrap());
    let producer = Queue::new(SqliteStore::open(&db).await.unwrap());
    let worker = Worker::builder(&worker_side)
        .register(Pong)
        .config(windlass_queue::WorkerConfig {
            // Polling (or the wake-up after a lease sweep) would not find the job within
            // the test's patience.
            poll: Duration::from_secs(3600),
            rescue_every: Duration::from_secs(3600),
            gauges_every: Duration::from_secs(3600),
            ..windlass_queue::WorkerConfig::default()
        })
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    // Let the worker find the queue empty and go idle first.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let job = producer
        .enqueue::<Pong>(&Ping, JobOptions::default())
        .await
        .unwrap();
    let done = worker_side
        .wait(job.id, Duration::from_secs(30), Duration::from_millis(10))
        .await
        .unwrap();
    assert_eq!(done.state, JobState::Completed);
    worker.shutdown(Duration::from_secs(5)).await;
}
