//! The queue's conformance suite on PostgreSQL, plus what only PostgreSQL offers
//! (transactional enqueue, wake-ups across processes).
//!
//! Needs `DATABASE_URL` (e.g. `postgres://postgres@127.0.0.1:5432/test`); without it every
//! case prints that it was skipped and why, and passes. `.ci/run` always sets it. Each case
//! gets a schema of its own, so cases run in parallel.
#![allow(clippy::unwrap_used)] // test code

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use windlass_postgres::PostgresStore;
use windlass_queue::{JobOptions, JobState, ManualClock, NewJob, Store};

static NEXT: AtomicUsize = AtomicUsize::new(0);

fn database_url() -> Option<String> {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            // Written past the test harness's capture, once per run, so it is seen.
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "windlass-postgres: PostgreSQL tests skipped: DATABASE_URL is not set \
                     (e.g. DATABASE_URL=postgres://postgres@127.0.0.1:5432/test; .ci/run sets it)"
                );
            });
            None
        }
    }
}

fn schema_name() -> String {
    format!(
        "wl_test_{}_{}_{:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst),
        fastrand::u32(..)
    )
}

/// A fresh store in a schema of its own, on the test's clock.
async fn fresh(clock: ManualClock) -> Option<PostgresStore> {
    let url = database_url()?;
    Some(
        PostgresStore::builder(url)
            .schema(schema_name())
            .pool_size(4)
            .clock(clock)
            .open()
            .await
            .unwrap(),
    )
}

windlass_queue::conformance_tests!(fresh);

/// A store of two connections in schema `schema` (on the system clock).
async fn open(url: &str, schema: &str) -> PostgresStore {
    PostgresStore::builder(url)
        .schema(schema)
        .pool_size(2)
        .open()
        .await
        .unwrap()
}

/// The transaction's search path, as the caller sees it.
async fn search_path(tx: &tokio_postgres::Transaction<'_>) -> String {
    tx.query_one("SELECT current_setting('search_path')", &[])
        .await
        .unwrap()
        .get(0)
}

fn job(n: i64) -> NewJob {
    NewJob::new("k", serde_json::json!({ "n": n }), JobOptions::default()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_in_the_callers_transaction_exists_iff_it_commits() {
    let Some(url) = database_url() else { return };
    let store = open(&url, &schema_name()).await;
    let (mut client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute("CREATE TEMP TABLE orders (id int)")
        .await
        .unwrap();

    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO orders VALUES (1)", &[])
        .await
        .unwrap();
    let before = search_path(&tx).await;
    let rolled_back = store.enqueue_in(&tx, vec![job(1)]).await.unwrap()[0].id;
    let after = search_path(&tx).await;
    assert_eq!(after, before, "the caller's search path is theirs again");
    tx.rollback().await.unwrap();
    assert!(
        store.get(rolled_back).await.unwrap().is_none(),
        "a job outlived its rolled-back transaction"
    );

    let mut signal = store.work_signal();
    // The LISTEN connection bumps the signal once it is listening: wait for that first, so
    // the change awaited below can only be the commit's NOTIFY.
    tokio::time::timeout(Duration::from_secs(10), signal.changed())
        .await
        .unwrap()
        .unwrap();
    signal.borrow_and_update();
    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO orders VALUES (3)", &[])
        .await
        .unwrap();
    let committed = store.enqueue_in(&tx, vec![job(2)]).await.unwrap()[0].id;
    tx.commit().await.unwrap();
    let rec = store.get(committed).await.unwrap().unwrap();
    assert_eq!(rec.state, JobState::Available);
    let orders: i64 = client
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(orders, 1);
    // The commit's NOTIFY reaches the store's LISTEN connection.
    tokio::time::timeout(Duration::from_secs(10), signal.changed())
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueue_in_one_process_wakes_the_listener_of_another() {
    let Some(url) = database_url() else { return };
    let schema = schema_name();
    let a = open(&url, &schema).await;
    let b = open(&url, &schema).await;
    let mut signal = b.work_signal();
    // Wait for b's LISTEN to be in place (it bumps the signal once listening).
    tokio::time::timeout(Duration::from_secs(10), signal.changed())
        .await
        .unwrap()
        .unwrap();
    signal.borrow_and_update();
    let id = a.enqueue(vec![job(1)]).await.unwrap()[0].id;
    tokio::time::timeout(Duration::from_secs(10), signal.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.get(id).await.unwrap().unwrap().state, JobState::Available);
}

#[tokio::test]
async fn bad_settings_are_refused_before_connecting() {
    for schema in ["", "Upper", "1st", "semi;colon", &"x".repeat(64)] {
        let e = PostgresStore::builder("postgres://nobody@127.0.0.1:1/none")
            .schema(schema)
            .open()
            .await
            .unwrap_err();
        assert!(
            matches!(e, windlass_queue::StoreError::Invalid(_)),
            "{schema}: {e}"
        );
    }
    let e = PostgresStore::builder("postgres://nobody@127.0.0.1:1/none")
        .pool_size(0)
        .open()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("pool_size"), "{e}");
    let e = PostgresStore::builder("not a url")
        .open()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("database URL"), "{e}");
    let e = PostgresStore::builder("postgres://nobody@127.0.0.1:1/none")
        .open()
        .await
        .unwrap_err();
    assert!(
        matches!(e, windlass_queue::StoreError::Unavailable(_)),
        "{e}"
    );
}

/// A subscriber of `order.placed` (only its kind matters here: nothing runs it).
struct Ship;
impl windlass_queue::Job for Ship {
    const KIND: &'static str = "ship";
    type Payload = serde_json::Value;
    async fn run(
        &self,
        _ctx: windlass_queue::JobContext,
        _p: serde_json::Value,
    ) -> Result<(), windlass_queue::JobError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_in_the_callers_transaction_delivers_iff_it_commits() {
    let Some(url) = database_url() else { return };
    let store = open(&url, &schema_name()).await;
    let queue = windlass_queue::Queue::new(store.clone());
    let events = windlass_flow::Events::new(&queue);
    events
        .subscribe_job::<Ship>("order.placed", "warehouse", "ship")
        .await
        .unwrap();
    let ships = || async {
        store
            .list(windlass_queue::JobFilter {
                kind: Some("ship".into()),
                ..windlass_queue::JobFilter::default()
            })
            .await
            .unwrap()
    };
    let (mut client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .batch_execute("CREATE TEMP TABLE orders (id int)")
        .await
        .unwrap();

    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO orders VALUES (1)", &[])
        .await
        .unwrap();
    let before = search_path(&tx).await;
    let sent = store
        .publish_in(&tx, "order.placed", "o-1", &serde_json::json!({"order": 1}))
        .await
        .unwrap();
    assert_eq!((sent.delivered, sent.duplicate), (1, false));
    let after = search_path(&tx).await;
    assert_eq!(after, before, "the caller's search path is theirs again");
    tx.rollback().await.unwrap();
    assert!(ships().await.is_empty(), "a delivery outlived its rollback");

    let tx = client.transaction().await.unwrap();
    tx.execute("INSERT INTO orders VALUES (3)", &[])
        .await
        .unwrap();
    let sent = store
        .publish_in(&tx, "order.placed", "o-1", &serde_json::json!({"order": 1}))
        .await
        .unwrap();
    assert!(!sent.duplicate, "the rolled-back event was never stored");
    tx.commit().await.unwrap();
    let delivered = ships().await;
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].payload, serde_json::json!({"order": 1}));
    // The publisher retries outside any transaction: nothing is delivered twice.
    let again = events
        .publish_with_id("order.placed", "o-1", &serde_json::json!({"order": 1}))
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(ships().await.len(), 1);
}

/// Since migration 6 a completion keeps its attempt in columns; a worker of an older version
/// still appends it to `attempts` and clears `locked_by`. Both read as the same history, and
/// a replay does not count the older worker's completion twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_stored_by_an_older_worker_reads_the_same() {
    let Some(url) = database_url() else { return };
    let store = open(&url, &schema_name()).await;
    let id = store.enqueue(vec![job(1)]).await.unwrap()[0].id;
    let claimed = store
        .claim(windlass_queue::ClaimRequest {
            queues: vec!["default".into()],
            kinds: vec!["k".into()],
            limit: 1,
            worker: "old-worker".into(),
            lease_for: Duration::from_secs(30),
        })
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    // The completion statement of a version-5 worker.
    let n = client
        .execute(
            &format!(
                "UPDATE {}.windlass_jobs j SET state = 'completed', finished_at = 7,
                    locked_by = NULL, lease_until = NULL, cancel_requested = false,
                    attempts = j.attempts || jsonb_build_array(jsonb_build_object(
                        'attempt', j.attempt, 'worker', 'old-worker', 'at_ms', 7::int8,
                        'outcome', 'completed', 'error', NULL, 'class', NULL))
                 WHERE j.id = $1 AND j.state = 'running'",
                store.schema()
            ),
            &[&id.0],
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    let want = vec![windlass_queue::AttemptRecord {
        attempt: 1,
        worker: "old-worker".into(),
        at_ms: 7,
        outcome: "completed".into(),
        error: None,
        class: None,
    }];
    let rec = store.get(id).await.unwrap().unwrap();
    assert_eq!(
        (rec.state, rec.locked_by.clone()),
        (JobState::Completed, None)
    );
    assert_eq!(rec.attempts, want);
    assert_eq!(store.replay(vec![id]).await.unwrap(), vec![id]);
    let rec = store.get(id).await.unwrap().unwrap();
    assert_eq!(rec.attempts, want, "the replay kept the history as it was");

    // The other way round: this version completes, an older one replays (leaving
    // completed_at_ms and locked_by as they are), claims and completes again (appending).
    let claim = || windlass_queue::ClaimRequest {
        queues: vec!["default".into()],
        kinds: vec!["k".into()],
        limit: 1,
        worker: "new-worker".into(),
        lease_for: Duration::from_secs(30),
    };
    let c = store.claim(claim()).await.unwrap().remove(0);
    let record = windlass_queue::AttemptRecord {
        attempt: 1,
        worker: "new-worker".into(),
        at_ms: 8,
        outcome: "completed".into(),
        error: None,
        class: None,
    };
    let done = windlass_queue::Finish {
        lease: c.lease,
        next: windlass_queue::NextState::Completed,
        record: record.clone(),
    };
    assert_eq!(
        store.finish(vec![done]).await.unwrap(),
        vec![windlass_queue::Fenced::Applied]
    );
    let schema = store.schema();
    for sql in [
        // A version-5 replay, claim and completion.
        "UPDATE {s}.windlass_jobs SET state = 'available', attempt = 0, lease_expiries = 0,
            run_at = 0, finished_at = NULL, cancel_requested = false WHERE id = $1",
        "UPDATE {s}.windlass_jobs SET state = 'running', attempt = attempt + 1,
            lease_token = lease_token + 1, locked_by = 'old-worker', lease_until = 99
         WHERE id = $1",
        "UPDATE {s}.windlass_jobs j SET state = 'completed', finished_at = 9,
            locked_by = NULL, lease_until = NULL, cancel_requested = false,
            attempts = j.attempts || jsonb_build_array(jsonb_build_object(
                'attempt', j.attempt, 'worker', 'old-worker', 'at_ms', 9::int8,
                'outcome', 'completed', 'error', NULL, 'class', NULL))
         WHERE j.id = $1",
    ] {
        let n = client
            .execute(&sql.replace("{s}", schema), &[&id.0])
            .await
            .unwrap();
        assert_eq!(n, 1);
    }
    assert_eq!(store.replay(vec![id]).await.unwrap(), vec![id]);
    let rec = store.get(id).await.unwrap().unwrap();
    let old = windlass_queue::AttemptRecord {
        at_ms: 9,
        ..want[0].clone()
    };
    // The older replay dropped this version's completion from the history (it knows
    // nothing of the columns); the stale columns are not read as a second completion.
    assert_eq!(rec.attempts, vec![want[0].clone(), old]);
}

/// A job's retry schedule is stored packed (a JSON array, a third of the object form:
/// `windlass_policy::PackedSchedule`), and a row holding the object form, as versions
/// before it wrote, is claimed with the same schedule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_schedule_is_stored_packed_and_the_object_form_still_reads() {
    let Some(url) = database_url() else { return };
    let store = open(&url, &schema_name()).await;
    let mut options = JobOptions::default();
    options.retry.max_attempts = 7;
    options.retry.jitter = windlass_policy::Jitter::Proportional(0.5);
    let new = |n: i64| NewJob::new("k", serde_json::json!({ "n": n }), options.clone()).unwrap();
    let ids: Vec<_> = store
        .enqueue(vec![new(1), new(2)])
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let table = format!("{}.windlass_jobs", store.schema());
    let stored: serde_json::Value = client
        .query_one(
            &format!("SELECT retry FROM {table} WHERE id = $1"),
            &[&ids[0].0],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        stored,
        serde_json::to_value(options.retry.packed()).unwrap(),
        "stored packed"
    );
    assert!(stored.is_array(), "{stored}");
    // The second job as an older version stored it.
    let object = serde_json::to_value(options.retry).unwrap();
    assert!(object.is_object());
    client
        .execute(
            &format!("UPDATE {table} SET retry = $1 WHERE id = $2"),
            &[&object, &ids[1].0],
        )
        .await
        .unwrap();
    let claimed = store
        .claim(windlass_queue::conformance::claim_req("w", 2))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    for c in &claimed {
        assert_eq!(c.retry, options.retry, "job {:?}", c.lease.job);
    }
}

/// The lease sweep skips a job row another transaction holds (a heartbeat or completion
/// racing it) instead of waiting for it, and sweeps it on a later pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_sweep_skips_a_row_held_by_another_writer() {
    let clock = ManualClock::new(1_700_000_000_000);
    let Some(store) = fresh(clock.clone()).await else {
        return;
    };
    let url = database_url().unwrap();
    let ids: Vec<_> = store
        .enqueue(vec![job(1), job(2)])
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    let claimed = store
        .claim(windlass_queue::conformance::claim_req("w", 2))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    clock.advance(Duration::from_secs(11));
    let (mut client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let tx = client.transaction().await.unwrap();
    tx.execute(
        &format!(
            "SELECT 1 FROM {}.windlass_jobs WHERE id = $1 FOR UPDATE",
            store.schema()
        ),
        &[&ids[0].0],
    )
    .await
    .unwrap();
    // Without SKIP LOCKED the sweep would wait for `tx`: the guard turns a hang into a
    // failure.
    let swept = tokio::time::timeout(Duration::from_secs(20), store.rescue_expired(3))
        .await
        .expect("the sweep waited for a row another transaction held")
        .unwrap();
    assert_eq!(swept.retried, vec![ids[1]]);
    tx.rollback().await.unwrap();
    let swept = store.rescue_expired(3).await.unwrap();
    assert_eq!(swept.retried, vec![ids[0]]);
    let rec = store.get(ids[0]).await.unwrap().unwrap();
    assert_eq!((rec.state, rec.lease_expiries), (JobState::Available, 1));
}

/// A job whose stored payload or retry schedule cannot be read is discarded, not handed
/// out, and the jobs claimed beside it are. JSONB holds what serde_json refuses (a number
/// past f64), and a schedule can be edited by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_job_is_discarded_not_claimed() {
    let url = match database_url() {
        Some(url) => url,
        None => return,
    };
    for (set, reason) in [
        (
            r#"retry = '{"nonsense": 1}'"#,
            "retry schedule: unknown field `nonsense`",
        ),
        ("payload = '[1e400]'", "payload: number out of range"),
    ] {
        let store = fresh(ManualClock::new(1_700_000_000_000)).await.unwrap();
        let reader = store.clone();
        let table = format!("{}.windlass_jobs", store.schema());
        let url = url.clone();
        windlass_queue::conformance::unreadable_jobs_are_discarded_not_claimed(
            store,
            |id| async move {
                let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                tokio::spawn(conn);
                let sql = format!("UPDATE {table} SET {set} WHERE id = $1");
                assert_eq!(client.execute(&sql, &[&id.0]).await.unwrap(), 1);
            },
        )
        .await;
        // The reason says what serde found wrong.
        let jobs = reader.list(Default::default()).await.unwrap();
        let error = jobs
            .iter()
            .flat_map(|j| j.attempts.iter())
            .find_map(|a| a.error.clone().filter(|e| e.contains("cannot be read")))
            .expect("the discard's attempt is in the job's history");
        assert!(error.contains(reason), "{error}");
    }
}
