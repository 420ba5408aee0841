//! The queue's conformance suite on SQLite: in memory, and in a WAL file.
#![allow(clippy::unwrap_used)] // test code

use windlass_queue::ManualClock;
use windlass_sqlite::SqliteStore;

/// A fresh in-memory store on the test's clock.
async fn fresh(clock: ManualClock) -> Option<SqliteStore> {
    Some(
        SqliteStore::memory_builder()
            .clock(clock)
            .open()
            .await
            .unwrap(),
    )
}

windlass_queue::conformance_tests!(fresh);

/// The same suite on a WAL file: what a real deployment uses.
mod file {
    use super::*;

    async fn fresh(clock: ManualClock) -> Option<SqliteStore> {
        let dir = std::env::temp_dir().join(format!(
            "windlass-conformance-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("jobs.db");
        let _ = std::fs::remove_file(&path);
        Some(
            SqliteStore::builder(&path)
                .clock(clock)
                .open()
                .await
                .unwrap(),
        )
    }
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    windlass_queue::conformance_tests!(fresh);
}

/// A job's retry schedule is stored packed (a JSON array, a third of the object form:
/// `windlass_policy::PackedSchedule`), and a row holding the object form, as versions
/// before it wrote (and may still write, sharing the file), is claimed with the same
/// schedule.
#[tokio::test]
async fn a_retry_schedule_is_stored_packed_and_the_object_form_still_reads() {
    use windlass_queue::{JobOptions, NewJob, Store};
    let dir = std::env::temp_dir().join(format!("windlass-packed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("jobs.db");
    let _ = std::fs::remove_file(&path);
    let store = SqliteStore::builder(&path).open().await.unwrap();
    let mut options = JobOptions::default();
    options.retry.max_attempts = 7;
    options.retry.jitter = windlass_policy::Jitter::Proportional(0.5);
    let new = |n: i64| NewJob::new("k", serde_json::json!({ "n": n }), options.clone()).unwrap();
    let ids: Vec<i64> = store
        .enqueue(vec![new(1), new(2)])
        .await
        .unwrap()
        .iter()
        .map(|e| e.id.0)
        .collect();
    let raw = rusqlite::Connection::open(&path).unwrap();
    let stored: String = raw
        .query_row(
            "SELECT retry FROM windlass_jobs WHERE id = ?1",
            [ids[0]],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        stored,
        serde_json::to_string(&options.retry.packed()).unwrap()
    );
    assert!(stored.starts_with('['), "{stored}");
    // The second job as an older version stored it.
    let object = serde_json::to_string(&options.retry).unwrap();
    assert!(object.starts_with('{'));
    raw.execute(
        "UPDATE windlass_jobs SET retry = ?1 WHERE id = ?2",
        rusqlite::params![object, ids[1]],
    )
    .unwrap();
    let claimed = store
        .claim(windlass_queue::conformance::claim_req("w", 2))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    for c in &claimed {
        assert_eq!(c.retry, options.retry, "job {:?}", c.lease.job);
    }
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A job whose stored payload or retry schedule cannot be read is discarded, not handed
/// out, and the jobs claimed beside it are.
#[tokio::test]
async fn an_unreadable_job_is_discarded_not_claimed() {
    // JSON that does not parse, a schedule that does not parse, and bytes that are not
    // text (a BLOB, as only another program could store).
    let spoils = [
        ("payload", "payload = '{oops'"),
        ("retry", "retry = '{oops'"),
        ("blob", "payload = x'fffe00'"),
    ];
    for (name, set) in spoils {
        let dir =
            std::env::temp_dir().join(format!("windlass-unreadable-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("jobs.db");
        let _ = std::fs::remove_file(&path);
        // No watcher of other connections' commits: its wake-up could pass for the claim's.
        let store = SqliteStore::builder(&path)
            .watch_every(std::time::Duration::from_secs(3600))
            .open()
            .await
            .unwrap();
        let raw = path.clone();
        windlass_queue::conformance::unreadable_jobs_are_discarded_not_claimed(
            store,
            |id| async move {
                let c = rusqlite::Connection::open(&raw).unwrap();
                let sql = format!("UPDATE windlass_jobs SET {set} WHERE id = ?1");
                assert_eq!(c.execute(&sql, [id.0]).unwrap(), 1);
            },
        )
        .await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
