//! The workflow conformance suite on SQLite, in a WAL file (a crashed worker's successor
//! opens the same file, as another process would).
#![allow(clippy::unwrap_used)] // test code

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use windlass_flow::conformance::FlowDb;
use windlass_queue::ManualClock;
use windlass_sqlite::SqliteStore;

static NEXT: AtomicUsize = AtomicUsize::new(0);

async fn fresh(clock: ManualClock) -> Option<FlowDb<SqliteStore>> {
    let dir = std::env::temp_dir().join(format!(
        "windlass-flow-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("flows.db");
    let open = move || {
        let (path, clock) = (path.clone(), clock.clone());
        Box::pin(async move {
            SqliteStore::builder(&path)
                .clock(clock)
                .open()
                .await
                .unwrap()
        }) as std::pin::Pin<Box<dyn std::future::Future<Output = SqliteStore> + Send>>
    };
    Some(FlowDb {
        store: open().await,
        reopen: Arc::new(open),
    })
}

windlass_flow::flow_conformance_tests!(fresh);
