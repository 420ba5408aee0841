//! The embedded, versioned schema.
//!
//! Migrations only add (tables, columns with defaults, indexes), so a worker of an older
//! version keeps working against a newer schema while a rolling deploy runs. Each applies in
//! the writer's `BEGIN IMMEDIATE` transaction, so two processes starting together apply it
//! once: the second sees the version the first recorded.

use rusqlite::Connection;
use windlass_queue::StoreError;

/// `(version, sql)`, in order. Never edit a released entry: add one.
pub(crate) const MIGRATIONS: &[(i64, &str)] = &[(
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
)];

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
