//! The embedded, versioned schema.
//!
//! Migrations add tables and columns (with defaults) and change indexes, never what a
//! statement of an older version names, so a worker of an older version keeps working against
//! a newer schema while a rolling deploy runs. Each applies in
//! the writer's `BEGIN IMMEDIATE` transaction, so two processes starting together apply it
//! once: the second sees the version the first recorded.

use rusqlite::Connection;
use windlass_queue::StoreError;

/// `(version, sql)`, in order. Never edit a released entry: add one.
pub(crate) const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE windlass_jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        queue TEXT NOT NULL,
        payload TEXT NOT NULL,
        state TEXT NOT NULL,
        priority INTEGER NOT NULL,
        attempt INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL,
        retry TEXT NOT NULL,
        timeout_ms INTEGER NOT NULL,
        tags TEXT NOT NULL DEFAULT '[]',
        unique_key TEXT,
        limit_key TEXT,
        trace_context TEXT,
        created_at INTEGER NOT NULL,
        run_at INTEGER NOT NULL,
        finished_at INTEGER,
        locked_by TEXT,
        lease_token INTEGER NOT NULL DEFAULT 0,
        lease_until INTEGER,
        lease_expiries INTEGER NOT NULL DEFAULT 0,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        progress TEXT,
        attempts TEXT NOT NULL DEFAULT '[]'
    );
    -- The claim reads only due jobs, in claim order (queue, priority, run_at, id).
    CREATE INDEX windlass_jobs_due ON windlass_jobs (queue, priority, run_at, id)
        WHERE state IN ('scheduled', 'available', 'retryable');
    CREATE INDEX windlass_jobs_leases ON windlass_jobs (lease_until) WHERE state = 'running';
    CREATE INDEX windlass_jobs_unique ON windlass_jobs (queue, kind, unique_key)
        WHERE unique_key IS NOT NULL;
    CREATE INDEX windlass_jobs_finished ON windlass_jobs (state, finished_at)
        WHERE finished_at IS NOT NULL;
    -- Limited queues count what runs, per queue and per key.
    CREATE INDEX windlass_jobs_running_keys ON windlass_jobs (queue, limit_key)
        WHERE state = 'running';
    CREATE TABLE windlass_queue_limits (queue TEXT PRIMARY KEY, limits TEXT NOT NULL);
    CREATE TABLE windlass_rate_buckets (
        scope TEXT PRIMARY KEY,
        tokens REAL NOT NULL,
        at_ms INTEGER NOT NULL
    );",
    ),
    (
        2,
        "-- A completed job's last attempt is kept in columns, not appended to `attempts`:
    -- its worker stays in locked_by and its end goes here. Completing is the hot path, and
    -- appending to the JSON array rewrites it. A worker of version 1 still appends (and
    -- leaves this NULL); readers accept both.
    ALTER TABLE windlass_jobs ADD COLUMN completed_at_ms INTEGER;
    -- The claim filters on kind too: with it in the index, no candidate needs its row read.
    DROP INDEX windlass_jobs_due;
    CREATE INDEX windlass_jobs_due ON windlass_jobs (queue, priority, run_at, id, kind)
        WHERE state IN ('scheduled', 'available', 'retryable');
    -- One index of running jobs instead of two: limited claims count by (queue, limit_key),
    -- and the rescuer scans it for expired leases (running jobs are few: what is in flight).
    -- Each claim and each completion now maintains one index entry fewer.
    DROP INDEX windlass_jobs_leases;
    DROP INDEX windlass_jobs_running_keys;
    CREATE INDEX windlass_jobs_running ON windlass_jobs (queue, limit_key, lease_until)
        WHERE state = 'running';",
    ),
    (
        3,
        "-- Durable workflows (windlass-flow): one row per run, and each run's journal of
    -- finished steps, timers and compensations. The journal is insert-only; (run_id, key)
    -- is unique, so the first writer of an entry wins.
    CREATE TABLE windlass_flow_runs (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        input TEXT NOT NULL,
        status TEXT NOT NULL,
        output TEXT,
        error TEXT,
        job_id INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        finished_at INTEGER
    );
    CREATE INDEX windlass_flow_runs_kind ON windlass_flow_runs (kind, id);
    CREATE TABLE windlass_flow_journal (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id TEXT NOT NULL,
        key TEXT NOT NULL,
        kind TEXT NOT NULL,
        output TEXT,
        error TEXT,
        attempts INTEGER NOT NULL,
        started_at INTEGER NOT NULL,
        finished_at INTEGER NOT NULL,
        UNIQUE (run_id, key)
    );",
    ),
    (
        4,
        "-- A wake-up (`Store::wake`) that arrives while the job runs: if the attempt ends by
    -- waiting again (a snooze or a retry), the job is due at once instead.
    ALTER TABLE windlass_jobs ADD COLUMN wake_requested INTEGER NOT NULL DEFAULT 0;",
    ),
    (
        5,
        "-- Durable events (windlass-flow `Events`): each published event once (its id is
    -- unique, so a publisher's retry delivers nothing twice), and the stored subscriptions
    -- it is delivered to, in the same transaction, as jobs or workflow runs.
    CREATE TABLE windlass_events (
        id TEXT PRIMARY KEY,
        topic TEXT NOT NULL,
        payload TEXT NOT NULL,
        published_at INTEGER NOT NULL,
        delivered INTEGER NOT NULL
    );
    CREATE INDEX windlass_events_topic ON windlass_events (topic, published_at);
    CREATE TABLE windlass_subscriptions (
        topic TEXT NOT NULL,
        name TEXT NOT NULL,
        target TEXT NOT NULL,
        kind TEXT NOT NULL,
        queue TEXT NOT NULL,
        attempt_timeout_ms INTEGER NOT NULL,
        PRIMARY KEY (topic, name)
    );",
    ),
    (
        6,
        "-- The index of due jobs, keyed as before, with its condition written as equalities.
    -- SQLite tests a partial index's condition on both the old and the new row of every
    -- write to the table (each claim, completion and enqueue), and `state IN` a list of
    -- three builds a temporary b-tree of the list each time: measured, about a seventh of
    -- the writer thread's time in W3. Equalities are plain comparisons. A claim must repeat
    -- the condition exactly to use the index (`ops::DUE`); a claim of an older version,
    -- still written with `IN`, stays correct on another plan until its worker is upgraded.
    DROP INDEX windlass_jobs_due;
    CREATE INDEX windlass_jobs_due ON windlass_jobs (queue, priority, run_at, id, kind)
        WHERE state = 'scheduled' OR state = 'available' OR state = 'retryable';",
    ),
    (
        7,
        "-- Each journal entry keeps the seq of the latest entry its run's code had seen when
    -- it started, so the recorded graph orders entries exactly, below the clock's
    -- millisecond. Entries of older versions read NULL: placed by their times.
    ALTER TABLE windlass_flow_journal ADD COLUMN after_seq INTEGER;",
    ),
];

/// Applies every migration newer than the database's version. Returns the version after.
pub(crate) fn migrate(conn: &Connection) -> Result<i64, StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS windlass_migrations (
            version INTEGER PRIMARY KEY,
            applied_at INTEGER NOT NULL
        )",
    )
    .map_err(crate::sql_error)?;
    let current: i64 = conn
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM windlass_migrations",
            [],
            |r| r.get(0),
        )
        .map_err(crate::sql_error)?;
    for (version, sql) in MIGRATIONS {
        if *version <= current {
            continue;
        }
        conn.execute_batch(sql)
            .map_err(|e| StoreError::Schema(format!("migration {version} failed: {e}")))?;
        conn.execute(
            "INSERT INTO windlass_migrations (version, applied_at) VALUES (?1, strftime('%s','now'))",
            [version],
        )
        .map_err(crate::sql_error)?;
    }
    let latest = MIGRATIONS.last().map_or(0, |m| m.0);
    if current > latest {
        tracing::warn!(
            database = current,
            code = latest,
            "the job store's schema is newer than this code; running against it (migrations only add)"
        );
    }
    Ok(current.max(latest))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code
    use super::*;
    use crate::SqliteStore;
    use windlass_queue::conformance::{claim_req, job};
    use windlass_queue::{
        AttemptRecord, Finish, JobId, JobState, ManualClock, NextState, Store, conformance::T0,
    };

    fn completed(worker: &str, at_ms: i64) -> AttemptRecord {
        AttemptRecord {
            attempt: 1,
            worker: worker.into(),
            at_ms,
            outcome: "completed".into(),
            error: None,
            class: None,
        }
    }

    /// A store's file, migrated, opened beside the store as a plain connection.
    async fn migrated(name: &str) -> (SqliteStore, Connection, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("windlass-plan-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("plan.db");
        let _ = std::fs::remove_file(&path);
        let store = SqliteStore::builder(&path).open().await.unwrap();
        let conn = Connection::open(&path).unwrap();
        (store, conn, dir)
    }

    /// Column `col` of every row `EXPLAIN {how} sql` gives (its parameters left unbound).
    fn explain(conn: &Connection, how: &str, sql: &str, col: usize) -> Vec<String> {
        let mut stmt = conn.prepare(&format!("EXPLAIN {how} {sql}")).unwrap();
        let mut rows = stmt.raw_query();
        let mut out = Vec::new();
        while let Some(r) = rows.next().unwrap() {
            out.push(r.get::<_, String>(col).unwrap());
        }
        out
    }

    /// The opcodes SQLite compiles `sql` to.
    fn opcodes(conn: &Connection, sql: &str) -> Vec<String> {
        explain(conn, "", sql, 1)
    }

    /// The query plan of `sql`, one line per step.
    fn plan(conn: &Connection, sql: &str) -> String {
        explain(conn, "QUERY PLAN", sql, 3).join("\n")
    }

    /// SQLite tests every partial index's condition on the old and the new row of each write
    /// to the jobs table; a condition written `state IN (three states)` built a temporary
    /// b-tree of the list every time (a seventh of the writer's time in W3). Writing a job's
    /// state, as every claim, completion and enqueue does, must build none.
    #[tokio::test]
    async fn writing_a_jobs_state_builds_no_temporary_btree() {
        let (_store, conn, dir) = migrated("writes").await;
        for sql in [
            "UPDATE windlass_jobs SET state = ?1, run_at = ?2, finished_at = ?3,
                lease_until = ?4, kind = ?5, queue = ?6, priority = ?7 WHERE id = ?8",
            "INSERT INTO windlass_jobs (kind, queue, payload, state, priority, max_attempts,
                retry, timeout_ms, created_at, run_at) VALUES (?1, ?2, ?3, ?4, 0, 3, ?5, 0, 0, 0)",
            "DELETE FROM windlass_jobs WHERE id = ?1",
        ] {
            let ops = opcodes(&conn, sql);
            assert!(
                ops.iter().any(|o| o == "IdxInsert" || o == "IdxDelete"),
                "{ops:?}"
            );
            assert!(!ops.iter().any(|o| o == "OpenEphemeral"), "{sql}: {ops:?}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The claims (plain and limited) and the queries of due jobs repeat the index's
    /// condition exactly (`DUE`), so they are planned on the index of due jobs, in claim
    /// order, with no sort.
    #[tokio::test]
    async fn the_claims_are_planned_on_the_index_of_due_jobs() {
        let (_store, conn, dir) = migrated("claims").await;
        for sql in [
            crate::claim::claim_sql(1),
            crate::claim::claim_sql(3),
            crate::limits::candidates_sql(2),
        ] {
            let plan = plan(&conn, &sql);
            assert!(
                plan.contains("USING INDEX windlass_jobs_due (queue=?)"),
                "{plan}"
            );
            assert!(!plan.contains("TEMP B-TREE"), "{plan}");
            assert!(!plan.contains("SCAN windlass_jobs"), "{plan}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Every hot statement is prepared once: a statement whose plan depends on a bound value
    /// (a bare `LIMIT ?` did, once) is re-compiled by SQLite whenever that value changes,
    /// which cost a sixth of the writer's time. Enqueues, claims of changing sizes at
    /// changing times, heartbeats and completions, over and over: no statement re-prepared.
    #[tokio::test]
    async fn the_hot_statements_are_never_re_prepared() {
        let (store, _conn, dir) = migrated("reprepare").await;
        // On the store's own connection, as its writer thread runs them.
        let reprepared = store
            .writer
            .call(
                |conn| {
                    for round in 0..6_i64 {
                        let now = T0 + round * 1_000;
                        let jobs = (0..round + 2).map(job).collect();
                        crate::ops::enqueue(conn, jobs, now)?;
                        let limit = usize::try_from(round + 1).unwrap();
                        let raw = crate::claim::claim(conn, &claim_req("w", limit), now + 1)?;
                        let (claimed, _) = crate::claim::decode(raw, now + 1);
                        assert_eq!(claimed.len(), limit);
                        let leases: Vec<_> = claimed.iter().map(|c| c.lease.clone()).collect();
                        crate::ops::heartbeat(conn, &leases, now + 5_000 + round)?;
                        let ends: Vec<Finish> = claimed
                            .iter()
                            .map(|c| Finish {
                                record: completed("w", now + 2),
                                lease: c.lease.clone(),
                                next: NextState::Completed,
                            })
                            .collect();
                        crate::ops::finish(conn, &ends, now + 2)?;
                    }
                    let counts = [
                        crate::ops::INSERT.to_string(),
                        crate::claim::claim_sql(1),
                        crate::ops::HEARTBEAT.to_string(),
                        crate::ops::FINISH.to_string(),
                        crate::limits::GET.to_string(),
                    ]
                    .into_iter()
                    .map(|sql| {
                        let stmt = conn.prepare_cached(&sql).map_err(crate::sql_error)?;
                        Ok((sql, stmt.get_status(rusqlite::StatementStatus::RePrepare)))
                    })
                    .collect::<Result<Vec<_>, StoreError>>()?;
                    Ok(counts)
                },
                None,
            )
            .await
            .unwrap();
        for (sql, n) in reprepared {
            assert_eq!(n, 0, "re-prepared {n} times: {sql}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A file left by version 1 (and a version-1 worker's completion, appended to the JSON
    /// array with `locked_by` cleared) reads the same after migration 2, and new
    /// completions on the upgraded file read the same way.
    #[tokio::test]
    async fn a_version_1_file_upgrades_and_both_kinds_of_completion_read_alike() {
        let dir = std::env::temp_dir().join(format!("windlass-schema-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v1.db");
        let _ = std::fs::remove_file(&path);
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE windlass_migrations (version INTEGER PRIMARY KEY,
                    applied_at INTEGER NOT NULL);
                 INSERT INTO windlass_migrations VALUES (1, 0);",
            )
            .unwrap();
            conn.execute_batch(MIGRATIONS[0].1).unwrap();
            let old = serde_json::to_string(&vec![completed("old-worker", T0)]).unwrap();
            let retry =
                serde_json::to_string(&windlass_queue::JobOptions::default().retry).unwrap();
            conn.execute(
                "INSERT INTO windlass_jobs (kind, queue, payload, state, priority, attempt,
                    max_attempts, retry, timeout_ms, created_at, run_at, finished_at, attempts)
                 SELECT 'k', 'default', '{}', 'completed', 0, 1, 3, ?3, 0, ?1, ?1, ?1, ?2",
                rusqlite::params![T0, old, retry],
            )
            .unwrap();
        }
        let clock = ManualClock::new(T0);
        let store = SqliteStore::builder(&path)
            .clock(clock.clone())
            .open()
            .await
            .unwrap();
        let v1 = store.get(JobId(1)).await.unwrap().unwrap();
        assert_eq!(v1.state, JobState::Completed);
        assert_eq!(v1.attempts, vec![completed("old-worker", T0)]);
        assert_eq!(v1.locked_by, None);
        // Replayed, it keeps its one completion (already in the JSON history).
        assert_eq!(store.replay(vec![JobId(1)]).await.unwrap(), vec![JobId(1)]);
        let v1 = store.get(JobId(1)).await.unwrap().unwrap();
        assert_eq!(v1.state, JobState::Available);
        assert_eq!(v1.attempts, vec![completed("old-worker", T0)]);
        store.cancel(JobId(1)).await.unwrap();

        let id = store.enqueue(vec![job(7)]).await.unwrap()[0].id;
        let c = store.claim(claim_req("w1", 1)).await.unwrap().remove(0);
        assert_eq!(c.lease.job, id);
        store
            .finish(vec![Finish {
                lease: c.lease,
                next: NextState::Completed,
                record: completed("w1", T0 + 5),
            }])
            .await
            .unwrap();
        let v2 = store.get(id).await.unwrap().unwrap();
        assert_eq!(v2.attempts, vec![completed("w1", T0 + 5)]);
        assert_eq!(v2.locked_by, None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
