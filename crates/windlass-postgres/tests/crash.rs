//! Crash test with real processes on PostgreSQL: worker processes SIGKILLed (and frozen into
//! zombies) at random points while jobs run. Afterwards every job is completed, no side
//! effect happened twice except where a lease truly expired, attempts add up, and zombies'
//! late completions were refused. Needs `DATABASE_URL` (skipped, saying so, without it).
//!
//! The worker processes are this test binary again, running `crash_child`. Kills and jobs:
//! `WINDLASS_CRASH_KILLS` (default 10: a short run for CI) and `WINDLASS_CRASH_JOBS`
//! (default 4000; a long run adds that many whenever fewer than a quarter are unstarted).
#![allow(clippy::unwrap_used)] // test code

use std::io::Write as _;

use windlass_postgres::PostgresStore;
use windlass_queue::conformance::crash::{self, EFFECTS_ENV};

const SCHEMA_ENV: &str = "WINDLASS_CRASH_SCHEMA";

fn env_or(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn open(url: &str, schema: &str) -> PostgresStore {
    PostgresStore::builder(url)
        .schema(schema)
        .pool_size(4)
        .open()
        .await
        .unwrap()
}

/// The worker process: runs only when the parent test started this binary as a child.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    let (Ok(schema), Ok(url)) = (std::env::var(SCHEMA_ENV), std::env::var("DATABASE_URL")) else {
        return;
    };
    crash::child_main(async move { open(&url, &schema).await }).await;
}

#[test]
fn workers_killed_at_random_lose_nothing_and_repeat_nothing_without_cause() {
    if std::env::var(EFFECTS_ENV).is_ok() {
        return; // this is a child: only `crash_child` runs there
    }
    let Ok(url) = std::env::var("DATABASE_URL") else {
        let _ = writeln!(
            std::io::stderr(),
            "windlass-postgres crash test skipped: DATABASE_URL is not set"
        );
        return;
    };
    let schema = format!("wl_test_crash_{}", std::process::id());
    let dir = std::env::temp_dir().join(format!("windlass-pg-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let effects = dir.join("effects.log");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt.block_on(open(&url, &schema));
    let spawn = || {
        crash::spawn_child(
            "crash_child",
            &[
                (SCHEMA_ENV, std::ffi::OsStr::new(&schema)),
                (EFFECTS_ENV, effects.as_os_str()),
            ],
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
    eprintln!("postgres crash run: {report:?}");
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
