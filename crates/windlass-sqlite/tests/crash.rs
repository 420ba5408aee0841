//! Crash test with real processes on one SQLite file shared by several worker processes:
//! workers SIGKILLed (and frozen into zombies) at random points while jobs run. Afterwards
//! every job is completed, no side effect happened twice except where a lease truly expired,
//! attempts add up, and zombies' late completions were refused.
//!
//! The worker processes are this test binary again, running `crash_child`. Kills and jobs:
//! `WINDLASS_CRASH_KILLS` (default 10: a short run for CI) and `WINDLASS_CRASH_JOBS`
//! (default 4000; a long run adds that many whenever fewer than a quarter are unstarted).
#![allow(clippy::unwrap_used)] // test code

use std::path::PathBuf;

use windlass_queue::conformance::crash::{self, EFFECTS_ENV};
use windlass_sqlite::SqliteStore;

const DB_ENV: &str = "WINDLASS_CRASH_SQLITE";

fn env_or(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The worker process: runs only when the parent test started this binary as a child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    let Ok(path) = std::env::var(DB_ENV) else {
        return;
    };
    crash::child_main(async move { SqliteStore::open(path).await.unwrap() }).await;
}

#[test]
fn workers_killed_at_random_lose_nothing_and_repeat_nothing_without_cause() {
    if std::env::var(EFFECTS_ENV).is_ok() {
        return; // this is a child: only `crash_child` runs there
    }
    let dir: PathBuf = std::env::temp_dir().join(format!("windlass-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("jobs.db");
    let effects = dir.join("effects.log");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt.block_on(SqliteStore::open(&db)).unwrap();
    let spawn = || {
        crash::spawn_child(
            "crash_child",
            &[(DB_ENV, db.as_os_str()), (EFFECTS_ENV, effects.as_os_str())],
        )
    };
    let report = crash::run(
        &rt,
        &store,
        &effects,
        &spawn,
        env_or("WINDLASS_CRASH_JOBS", 4000),
        env_or("WINDLASS_CRASH_KILLS", 10),
    );
    eprintln!("sqlite crash run: {report:?}");
    assert!(report.kills > 0, "nothing was killed: {report:?}");
    // Every fifth round freezes a worker past its lease (a zombie): a run that reached its
    // kills has frozen some. (Whether a thawed zombie still had a completion to be refused
    // depends on timing; the queue conformance case `worker_late_completion_after_a_lost_lease_is_refused`
    // checks the fencing deterministically.)
    assert!(
        report.freezes > 0,
        "no worker was frozen into a zombie: {report:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
