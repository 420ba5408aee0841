//! PostgreSQL restarted under load: producers and a worker keep going through the restart;
//! workers back off and reconnect, the `LISTEN` connection comes back, and nothing is lost:
//! every job enqueued (an enqueue that failed during the restart is retried by its caller,
//! who was told) ends completed.
//!
//! Restarting a server is not something a test may do to a server it does not own, so this
//! runs only with `WINDLASS_TEST_PG_RESTART=1` (and `DATABASE_URL`) — `.ci/run` sets both,
//! on the machine's own server — and restarts it with `pg_ctlcluster`.
#![allow(clippy::unwrap_used)] // test code

use std::collections::HashSet;
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use windlass_postgres::PostgresStore;
use windlass_queue::{
    Job, JobContext, JobError, JobOptions, JobState, Queue, Worker, WorkerConfig,
};

#[derive(Serialize, Deserialize)]
struct Item {
    n: u32,
}

struct Record(Arc<Mutex<HashSet<u32>>>);

impl Job for Record {
    const KIND: &'static str = "restart_probe";
    type Payload = Item;
    async fn run(&self, _ctx: JobContext, item: Item) -> Result<(), JobError> {
        tokio::time::sleep(Duration::from_millis(2)).await;
        self.0.lock().unwrap().insert(item.n);
        Ok(())
    }
}

fn restart_postgres() {
    let version = std::fs::read_dir("/etc/postgresql")
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name();
    let status = std::process::Command::new("pg_ctlcluster")
        .args([
            "--skip-systemctl-redirect",
            version.to_str().unwrap(),
            "main",
            "restart",
        ])
        .status()
        .unwrap();
    assert!(status.success(), "pg_ctlcluster restart failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_under_load_loses_nothing() {
    let (Ok(url), Ok("1")) = (
        std::env::var("DATABASE_URL"),
        std::env::var("WINDLASS_TEST_PG_RESTART").as_deref(),
    ) else {
        let _ = writeln!(
            std::io::stderr(),
            "windlass-postgres restart test skipped: needs DATABASE_URL and WINDLASS_TEST_PG_RESTART=1 (it restarts the server)"
        );
        return;
    };
    let schema = format!("wl_test_restart_{}", std::process::id());
    let store = PostgresStore::builder(&url)
        .schema(&schema)
        .pool_size(6)
        .open()
        .await
        .unwrap();
    let queue = Queue::new(store);
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let config = WorkerConfig {
        concurrency: 8,
        lease: Duration::from_secs(5),
        heartbeat: Duration::from_millis(500),
        poll: Duration::from_millis(200),
        rescue_every: Duration::from_secs(1),
        ..WorkerConfig::default()
    };
    let worker = Worker::builder(&queue)
        .register(Record(seen.clone()))
        .config(config)
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    // A producer that enqueues one job at a time and retries what the store refused.
    let producer = {
        let queue = queue.clone();
        tokio::spawn(async move {
            let mut refused = 0;
            for n in 0..1500u32 {
                loop {
                    match queue
                        .enqueue::<Record>(&Item { n }, JobOptions::default())
                        .await
                    {
                        Ok(_) => break,
                        Err(_) => {
                            refused += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                if n % 4 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            refused
        })
    };
    // Restart once the worker is busy.
    while seen.lock().unwrap().len() < 200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::task::spawn_blocking(restart_postgres).await.unwrap();
    let refused = producer.await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let completed = match queue.stats().await {
            Ok(s) => s.iter().map(|q| q.count(JobState::Completed)).sum::<u64>(),
            Err(_) => 0,
        };
        if completed == 1500 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {completed} of 1500 completed after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    worker.shutdown(Duration::from_secs(10)).await;
    let all = windlass_queue::conformance::crash::all_jobs(&**queue.store()).await;
    assert_eq!(
        all.len(),
        1500,
        "every enqueue that returned Ok is a job, once"
    );
    assert!(all.iter().all(|j| j.state == JobState::Completed));
    assert_eq!(seen.lock().unwrap().len(), 1500, "every job's handler ran");
    eprintln!(
        "restart under load: {refused} enqueues refused during the restart and retried by the caller"
    );
}
