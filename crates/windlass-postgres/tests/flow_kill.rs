//! A workflow's worker **process** killed (SIGKILL) mid-run on PostgreSQL: another process
//! takes the run over once the dead one's lease expires, and the steps that had finished
//! are not run again. (The conformance suite simulates the crash by dropping a worker's
//! runtime; here it is a real process.) Needs `DATABASE_URL` (skipped, saying so, without
//! it).
//!
//! The worker process is this test binary again, running `flow_kill_child`. Each step
//! appends its name to a marks file before it does anything else, so the marks survive the
//! kill: `a` then `b` from the child (which hangs in `b`), then `b` and `c` from the parent.
#![allow(clippy::unwrap_used)] // test code

use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use windlass_flow::{FlowContext, FlowError, Flows, Workflow};
use windlass_postgres::PostgresStore;
use windlass_queue::conformance::crash::{EFFECTS_ENV, child_config, spawn_child};
use windlass_queue::{JobState, Queue, Worker, WorkerConfig, WorkerHandle};

const SCHEMA_ENV: &str = "WINDLASS_FLOW_KILL_SCHEMA";

/// Three steps, each marked; `b` hangs when `hang` is set (in the doomed child).
struct Marked {
    marks: PathBuf,
    hang: bool,
}

fn mark(marks: &PathBuf, what: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(marks)
        .unwrap();
    writeln!(f, "{what}").unwrap();
    f.sync_all().unwrap();
}

impl Workflow for Marked {
    const KIND: &'static str = "marked";
    type Input = ();
    type Output = u32;
    async fn run(&self, ctx: FlowContext, _: ()) -> Result<u32, FlowError> {
        let (marks, hang) = (self.marks.clone(), self.hang);
        let mut sum = 0;
        for (name, value) in [("a", 1u32), ("b", 2), ("c", 3)] {
            let marks = marks.clone();
            sum += ctx
                .step(name, move || {
                    let marks = marks.clone();
                    async move {
                        mark(&marks, name);
                        if hang && name == "b" {
                            std::future::pending::<()>().await;
                        }
                        Ok::<_, String>(value)
                    }
                })
                .await?;
        }
        Ok(sum)
    }
}

async fn open(url: &str, schema: &str) -> PostgresStore {
    PostgresStore::builder(url)
        .schema(schema)
        .pool_size(4)
        .open()
        .await
        .unwrap()
}

/// A worker of the flows queue with the crash tests' short leases.
async fn start_worker(queue: &Queue<PostgresStore>, flows: &Flows<PostgresStore>) -> WorkerHandle {
    Worker::builder(queue)
        .register(flows.driver())
        .config(WorkerConfig {
            queues: vec!["flows".into()],
            ..child_config()
        })
        .build()
        .unwrap()
        .start()
        .await
        .unwrap()
}

/// The doomed worker process: runs only when the parent test started this binary as a child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_kill_child() {
    let (Ok(schema), Ok(url), Ok(marks)) = (
        std::env::var(SCHEMA_ENV),
        std::env::var("DATABASE_URL"),
        std::env::var(EFFECTS_ENV),
    ) else {
        return;
    };
    let queue = Queue::new(open(&url, &schema).await);
    let flows = Flows::builder(&queue)
        .register(Marked {
            marks: marks.into(),
            hang: true,
        })
        .build()
        .unwrap();
    let _worker = start_worker(&queue, &flows).await;
    // Until killed (or orphaned: the test is gone).
    let parent = std::os::unix::process::parent_id();
    while std::os::unix::process::parent_id() == parent {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads the marks, waiting (real time, the other process's pace) until `done` holds.
async fn marks_once(marks: &PathBuf, done: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = std::fs::read_to_string(marks).unwrap_or_default();
        if done(&now) {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out; marks so far: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_process_killed_mid_run_is_resumed_without_rerunning_finished_steps() {
    if std::env::var(SCHEMA_ENV).is_ok() {
        return; // this binary, started as the child: only `flow_kill_child` runs there
    }
    let Some(url) = std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) else {
        eprintln!("windlass-postgres: workflow kill test skipped: DATABASE_URL is not set");
        return;
    };
    let schema = format!(
        "wl_test_flow_kill_{}_{:x}",
        std::process::id(),
        fastrand::u32(..)
    );
    let dir = std::env::temp_dir().join(&schema);
    std::fs::create_dir_all(&dir).unwrap();
    let marks = dir.join("marks");
    let queue = Queue::new(open(&url, &schema).await);
    let flows = Flows::builder(&queue)
        .register(Marked {
            marks: marks.clone(),
            hang: false,
        })
        .build()
        .unwrap();
    let run = flows.start::<Marked>("kill-1", &()).await.unwrap();

    let mut child = spawn_child(
        "flow_kill_child",
        &[
            (SCHEMA_ENV, schema.as_ref()),
            (EFFECTS_ENV, marks.as_os_str()),
        ],
    );
    marks_once(&marks, |m| m == "a\nb\n").await;
    child.kill().unwrap(); // SIGKILL: no shutdown, the lease stays behind
    child.wait().unwrap();

    let worker = start_worker(&queue, &flows).await;
    assert_eq!(
        run.result(Duration::from_secs(30), Duration::from_millis(20))
            .await
            .unwrap(),
        6
    );
    assert_eq!(
        std::fs::read_to_string(&marks).unwrap(),
        "a\nb\nb\nc\n",
        "a ran once (journaled before the kill), b again (it never finished), c once"
    );
    let job = queue
        .get(run.record().await.unwrap().job)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(job.state, JobState::Completed);
    assert_eq!(
        job.attempts.first().map(|a| a.outcome.as_str()),
        Some("lease_expired"),
        "the killed process's attempt ended by its lease"
    );
    worker.shutdown(Duration::from_secs(5)).await;
    let _ = std::fs::remove_dir_all(&dir);
}
