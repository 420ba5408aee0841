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
