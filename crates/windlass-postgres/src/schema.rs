//! The embedded, versioned schema, in the store's own PostgreSQL schema (namespace).
//!
//! Migrations only add (tables, columns with defaults, indexes), so workers of an older
//! version keep running against a newer schema during a rolling deploy. They run in one
//! transaction under an advisory lock on the schema's name, so processes that start together
//! apply each migration exactly once; the others wait, then see it recorded.

use tokio_postgres::Client;
use windlass_queue::StoreError;

use crate::pg_error;

/// `(version, sql)`, in order. Never edit a released entry: add one.
pub(crate) const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "CREATE TABLE windlass_jobs (
        id BIGSERIAL PRIMARY KEY,
        kind TEXT NOT NULL,
        queue TEXT NOT NULL,
        payload JSONB NOT NULL,
        state TEXT NOT NULL,
        priority SMALLINT NOT NULL,
        attempt INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL,
        retry JSONB NOT NULL,
        timeout_ms BIGINT NOT NULL,
        tags JSONB NOT NULL DEFAULT '[]',
        unique_key TEXT,
        limit_key TEXT,
        trace_context TEXT,
        created_at BIGINT NOT NULL,
        run_at BIGINT NOT NULL,
        finished_at BIGINT,
        locked_by TEXT,
        lease_token BIGINT NOT NULL DEFAULT 0,
        lease_until BIGINT,
        lease_expiries INTEGER NOT NULL DEFAULT 0,
        cancel_requested BOOLEAN NOT NULL DEFAULT false,
        progress JSONB,
        attempts JSONB NOT NULL DEFAULT '[]'
    );
    -- The claim reads only due jobs, in claim order: never a walk past claimed rows.
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
    CREATE TABLE windlass_queue_limits (queue TEXT PRIMARY KEY, limits JSONB NOT NULL);
    CREATE TABLE windlass_rate_buckets (
        scope TEXT PRIMARY KEY,
        tokens DOUBLE PRECISION NOT NULL,
        at_ms BIGINT NOT NULL
    );",
    ),
    (
        2,
        "-- Durable workflows (windlass-flow): one row per run, and each run's journal of
    -- finished steps, timers and compensations. The journal is insert-only; (run_id, key)
    -- is unique, so the first writer of an entry wins.
    CREATE TABLE windlass_flow_runs (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        input JSONB NOT NULL,
        status TEXT NOT NULL,
        output JSONB,
        error TEXT,
        job_id BIGINT NOT NULL,
        created_at BIGINT NOT NULL,
        finished_at BIGINT
    );
    CREATE INDEX windlass_flow_runs_kind ON windlass_flow_runs (kind, id);
    CREATE TABLE windlass_flow_journal (
        seq BIGSERIAL PRIMARY KEY,
        run_id TEXT NOT NULL,
        key TEXT NOT NULL,
        kind TEXT NOT NULL,
        output JSONB,
        error TEXT,
        attempts INTEGER NOT NULL,
        started_at BIGINT NOT NULL,
        finished_at BIGINT NOT NULL,
        UNIQUE (run_id, key)
    );",
    ),
    (
        3,
        "-- A wake-up (`Store::wake`) that arrives while the job runs: if the attempt ends by
    -- waiting again (a snooze or a retry), the job is due at once instead.
    ALTER TABLE windlass_jobs ADD COLUMN wake_requested BOOLEAN NOT NULL DEFAULT false;",
    ),
    (
        4,
        "-- Durable events (windlass-flow `Events`): each published event once (its id is
    -- unique, so a publisher's retry delivers nothing twice), and the stored subscriptions
    -- it is delivered to, in the same transaction, as jobs or workflow runs.
    CREATE TABLE windlass_events (
        id TEXT PRIMARY KEY,
        topic TEXT NOT NULL,
        payload JSONB NOT NULL,
        published_at BIGINT NOT NULL,
        delivered INTEGER NOT NULL
    );
    CREATE INDEX windlass_events_topic ON windlass_events (topic, published_at);
    CREATE TABLE windlass_subscriptions (
        topic TEXT NOT NULL,
        name TEXT NOT NULL,
        target TEXT NOT NULL,
        kind TEXT NOT NULL,
        queue TEXT NOT NULL,
        attempt_timeout_ms BIGINT NOT NULL,
        PRIMARY KEY (topic, name)
    );",
    ),
    // Version 5 is retired: for an hour on 2026-11-24 it merged the two indexes of running
    // jobs, then was withdrawn (a plain CREATE INDEX in the migration's transaction blocks
    // every write to the jobs table, while older workers still run, for as long as it scans
    // the table). A database may have applied it; the code reads no index by name, so both
    // layouts work. The next migration is 6, never 5.
    (
        6,
        "-- A completed job's last attempt is kept in columns, not appended to `attempts`:
    -- its worker stays in locked_by and its end goes here. Completing is the hot path, and
    -- appending to the JSON array rewrites and widens the row (every completion's new row
    -- version is written to the WAL whole). A worker of an older version still appends (and
    -- leaves this NULL); readers accept both. During the rollout an older worker's replay
    -- leaves this version's completion out of the history, and an older reader shows
    -- locked_by on completed jobs. Adding a nullable column without a default only changes
    -- the catalog: no rewrite, and the lock is held for an instant once granted. Queued
    -- behind a long transaction on the table, though, it would stop every job write behind
    -- it: past the lock timeout the migration fails instead (and is retried at the next open).
    SET LOCAL lock_timeout = '5s';
    ALTER TABLE windlass_jobs ADD COLUMN completed_at_ms BIGINT;",
    ),
    (
        7,
        "-- Each journal entry keeps the seq of the latest entry its run's code had seen when
    -- it started, so the recorded graph orders entries exactly, below the clock's
    -- millisecond. Entries of older versions (and their writes during a rollout) read
    -- NULL: placed by their times. A nullable column only changes the catalog (no
    -- rewrite); the lock is bounded as in migration 6.
    SET LOCAL lock_timeout = '5s';
    ALTER TABLE windlass_flow_journal ADD COLUMN after_seq BIGINT;",
    ),
];

/// Creates the schema if needed and applies every migration newer than its version.
pub(crate) async fn migrate(client: &mut Client, schema: &str) -> Result<i32, StoreError> {
    let tx = client.transaction().await.map_err(pg_error)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 7175))",
        &[&format!("windlass-migrate:{schema}")],
    )
    .await
    .map_err(pg_error)?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.windlass_migrations (
            version INTEGER PRIMARY KEY,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         );"
    ))
    .await
    .map_err(pg_error)?;
    let current: i32 = tx
        .query_one(
            &format!("SELECT COALESCE(MAX(version), 0) FROM {schema}.windlass_migrations"),
            &[],
        )
        .await
        .map_err(pg_error)?
        .get(0);
    tx.batch_execute(&format!("SET LOCAL search_path TO {schema}"))
        .await
        .map_err(pg_error)?;
    for (version, sql) in MIGRATIONS {
        if *version <= current {
            continue;
        }
        tx.batch_execute(sql)
            .await
            .map_err(|e| StoreError::Schema(format!("migration {version} failed: {e}")))?;
        tx.execute(
            "INSERT INTO windlass_migrations (version) VALUES ($1)",
            &[version],
        )
        .await
        .map_err(pg_error)?;
    }
    tx.commit().await.map_err(pg_error)?;
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
