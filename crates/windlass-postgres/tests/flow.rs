//! The workflow conformance suite on PostgreSQL. Needs `DATABASE_URL` (`.ci/run` sets it);
//! without it every case says it was skipped and passes. Each case gets a schema of its own;
//! a crashed worker's successor connects to the same schema, as another machine would.
#![allow(clippy::unwrap_used)] // test code

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use windlass_flow::conformance::FlowDb;
use windlass_postgres::PostgresStore;
use windlass_queue::ManualClock;

static NEXT: AtomicUsize = AtomicUsize::new(0);

async fn fresh(clock: ManualClock) -> Option<FlowDb<PostgresStore>> {
    let Some(url) = std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) else {
        eprintln!("windlass-postgres: workflow tests skipped: DATABASE_URL is not set");
        return None;
    };
    let schema = format!(
        "wl_test_flow_{}_{}_{:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst),
        fastrand::u32(..)
    );
    let open = move || {
        let (url, schema, clock) = (url.clone(), schema.clone(), clock.clone());
        Box::pin(async move {
            PostgresStore::builder(url)
                .schema(schema)
                .pool_size(4)
                .clock(clock)
                .open()
                .await
                .unwrap()
        }) as std::pin::Pin<Box<dyn std::future::Future<Output = PostgresStore> + Send>>
    };
    Some(FlowDb {
        store: open().await,
        reopen: Arc::new(open),
    })
}

windlass_flow::flow_conformance_tests!(fresh);
