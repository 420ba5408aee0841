//! The embedded, versioned schema, in the store's own PostgreSQL schema (namespace).
//!
//! Migrations only add (tables, columns with defaults, indexes), so workers of an older
//! version keep running against a newer schema during a rolling deploy. They run under an
//! advisory lock on the schema's name, so processes that start together apply each migration
//! exactly once; the others wait, then see it recorded.
//!
//! Most migrations ([`Migration::Sql`]) run in one transaction. An index on the jobs table
//! cannot: a plain `CREATE INDEX` holds a lock that stops every write to the table for as long
//! as it scans it, and older workers are writing. So an [`Migration::Index`] is built
//! `CONCURRENTLY`, outside any transaction, before the indexes it replaces are dropped (also
//! concurrently): the workers never lose an index to read, nor the right to write. On a new
//! schema, whose table nobody else can see yet, it is a plain statement in the transaction.

use tokio_postgres::Client;
use windlass_queue::StoreError;

use crate::{describe, pg_error};

/// One step of the schema's history.
pub(crate) enum Migration {
    /// Statements run in the migration transaction.
    Sql(&'static str),
    /// An index that replaces others on a table that may be in use (the module's doc).
    Index(IndexSwap),
}

/// A new index of `table`, and the indexes it makes redundant.
pub(crate) struct IndexSwap {
    pub(crate) name: &'static str,
    /// What follows `ON`: the table, the columns and any condition.
    pub(crate) on: &'static str,
    /// Dropped once `name` is built and valid.
    pub(crate) replaces: &'static [&'static str],
}

/// `(version, migration)`, in order. Never edit a released entry: add one.
pub(crate) const MIGRATIONS: &[(i32, Migration)] = &[
    (
        1,
        Migration::Sql(
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
    ),
    (
        2,
        Migration::Sql(
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
    ),
    (
        3,
        Migration::Sql(
            "-- A wake-up (`Store::wake`) that arrives while the job runs: if the attempt ends by
    -- waiting again (a snooze or a retry), the job is due at once instead.
    ALTER TABLE windlass_jobs ADD COLUMN wake_requested BOOLEAN NOT NULL DEFAULT false;",
        ),
    ),
    (
        4,
        Migration::Sql(
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
    ),
    // Version 5 is retired: for an hour on 2026-11-24 it merged the two indexes of running
    // jobs, then was withdrawn (a plain CREATE INDEX in the migration's transaction blocks
    // every write to the jobs table, while older workers still run, for as long as it scans
    // the table). A database may have applied it; the code reads no index by name, so both
    // layouts work. The next migration is 6, never 5.
    (
        6,
        Migration::Sql(
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
    ),
    (
        7,
        Migration::Sql(
            "-- Each journal entry keeps the seq of the latest entry its run's code had seen when
    -- it started, so the recorded graph orders entries exactly, below the clock's
    -- millisecond. Entries of older versions (and their writes during a rollout) read
    -- NULL: placed by their times. A nullable column only changes the catalog (no
    -- rewrite); the lock is bounded as in migration 6.
    SET LOCAL lock_timeout = '5s';
    ALTER TABLE windlass_flow_journal ADD COLUMN after_seq BIGINT;",
        ),
    ),
    // One index of running jobs instead of two, as SQLite's: the lease sweep reads it for
    // expired leases, limited claims for what runs per queue and key. Every claim enters a
    // job in each index of running jobs, so one less is one index insert less per job
    // (BENCHMARKS.md, session 11). Migration 5 made the same change in its transaction.
    (
        8,
        Migration::Index(IndexSwap {
            name: "windlass_jobs_running",
            on: "windlass_jobs (queue, limit_key, lease_until) WHERE state = 'running'",
            replaces: &["windlass_jobs_leases", "windlass_jobs_running_keys"],
        }),
    ),
];

/// Creates the schema if needed and applies every migration newer than its version.
pub(crate) async fn migrate(client: &mut Client, schema: &str) -> Result<i32, StoreError> {
    migrate_to(client, schema, i32::MAX).await
}

/// The version this code needs: its newest migration's.
pub(crate) fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.0)
}

/// Checks, without changing anything, that `schema` has every migration this code has;
/// returns its version. A schema newer than the code is accepted, as [`migrate`] does.
pub(crate) async fn check(client: &Client, schema: &str) -> Result<i32, StoreError> {
    let table = format!("{schema}.windlass_migrations");
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .map_err(pg_error)?
        .get(0);
    let version = if exists {
        recorded_version(client, schema).await?
    } else {
        0
    };
    if version < latest() {
        return Err(StoreError::Schema(format!(
            "schema `{schema}` is at version {version} and this code needs version {}: apply \
             the migrations first (`windlass migrate`, or open one store with migrations on)",
            latest()
        )));
    }
    Ok(version)
}

/// The newest migration recorded in `schema` (0 if none); its table must exist.
async fn recorded_version(client: &Client, schema: &str) -> Result<i32, StoreError> {
    Ok(client
        .query_one(
            &format!("SELECT COALESCE(MAX(version), 0) FROM {schema}.windlass_migrations"),
            &[],
        )
        .await
        .map_err(pg_error)?
        .get(0))
}

/// [`migrate`], up to version `target` only (tests build older schemas with it).
///
/// Two session locks, each taken by trying, never by waiting inside a statement. The
/// migration lock (whose key older versions take inside their migration transaction)
/// covers the transactional migrations; a concurrent build runs under a lock of its own,
/// with the migration lock released. A concurrent build waits for every transaction open
/// in the database to end, so under the migration lock it and an older process waiting
/// for that lock inside its transaction would wait for each other, until PostgreSQL
/// cancelled one of them. Under its own lock, an older process that opens meanwhile finds
/// nothing to do (its migrations are all recorded) and goes on; a newer one waits for the
/// build, then finds it recorded.
pub(crate) async fn migrate_to(
    client: &mut Client,
    schema: &str,
    target: i32,
) -> Result<i32, StoreError> {
    let migrations = format!("windlass-migrate:{schema}");
    let builds = format!("windlass-migrate-index:{schema}");
    let latest = latest().min(target);
    loop {
        lock(client, &migrations, schema).await?;
        let applied = apply(client, schema, target).await;
        unlock(client, &migrations).await;
        let (version, build) = applied?;
        let Some((build_version, swap)) = build else {
            if version > latest {
                tracing::warn!(
                    database = version,
                    code = latest,
                    "the job store's schema is newer than this code; running against it (its migrations keep older code working)"
                );
            }
            return Ok(version.max(latest));
        };
        lock(client, &builds, schema).await?;
        let built = build_concurrently(client, schema, build_version, swap).await;
        unlock(client, &builds).await;
        built?;
    }
}

/// Takes session advisory lock `key`, trying every few milliseconds (up to 200 ms apart),
/// and says so in the log if another process holds it for long.
async fn lock(client: &Client, key: &str, schema: &str) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(5);
    let mut said = false;
    loop {
        let locked: bool = client
            .query_one(
                "SELECT pg_try_advisory_lock(hashtextextended($1, 7175))",
                &[&key],
            )
            .await
            .map_err(pg_error)?
            .get(0);
        if locked {
            return Ok(());
        }
        if !said && started.elapsed() > std::time::Duration::from_secs(5) {
            said = true;
            tracing::info!(
                schema,
                lock = key,
                "waiting for another process to finish migrating the job store's schema"
            );
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(std::time::Duration::from_millis(200));
    }
}

/// Releases session advisory lock `key` (it is also released when the connection closes).
async fn unlock(client: &Client, key: &str) {
    let released = client
        .query_one(
            "SELECT pg_advisory_unlock(hashtextextended($1, 7175))",
            &[&key],
        )
        .await
        .map(|r| r.get::<_, bool>(0));
    match released {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            lock = key,
            "the migration lock was not held at release: is the store opened through a pooler in transaction mode? Its migration needs one session (a direct connection)"
        ),
        Err(e) => {
            tracing::warn!(lock = key, error = %describe(&e), "releasing the migration lock failed; it is released when the connection closes")
        }
    }
}

/// Applies the migrations newer than the schema's version, in one transaction, up to the
/// first index that must be built concurrently. Returns the version reached and that
/// build, if any.
async fn apply(
    client: &mut Client,
    schema: &str,
    target: i32,
) -> Result<(i32, Option<(i32, &'static IndexSwap)>), StoreError> {
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {schema}.windlass_migrations (
                version INTEGER PRIMARY KEY,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
             );"
        ))
        .await
        .map_err(pg_error)?;
    let current = recorded_version(client, schema).await?;
    // A new schema's tables are created in the transaction below: nobody else can write to
    // them before it commits, so its indexes need no concurrent build.
    let new = current == 0;
    let mut reached = current;
    let mut build = None;
    let tx = client.transaction().await.map_err(pg_error)?;
    tx.batch_execute(&format!("SET LOCAL search_path TO {schema}"))
        .await
        .map_err(pg_error)?;
    for (version, migration) in MIGRATIONS {
        if *version <= current || *version > target {
            continue;
        }
        let sql = match migration {
            Migration::Sql(sql) => (*sql).to_string(),
            Migration::Index(swap) if new => swap.in_transaction(),
            Migration::Index(swap) => {
                build = Some((*version, swap));
                break;
            }
        };
        tx.batch_execute(&sql).await.map_err(|e| {
            StoreError::Schema(format!("migration {version} failed: {}", describe(&e)))
        })?;
        tx.execute(
            "INSERT INTO windlass_migrations (version) VALUES ($1)",
            &[version],
        )
        .await
        .map_err(pg_error)?;
        reached = *version;
    }
    tx.commit().await.map_err(pg_error)?;
    Ok((reached, build))
}

impl IndexSwap {
    /// The swap as statements for a migration transaction (a new schema's).
    fn in_transaction(&self) -> String {
        let mut sql = format!("CREATE INDEX {} ON {};", self.name, self.on);
        for old in self.replaces {
            sql.push_str(&format!(" DROP INDEX IF EXISTS {old};"));
        }
        sql
    }
}

/// Builds `swap`'s index `CONCURRENTLY` (no lock that stops writes), then drops the
/// indexes it replaces the same way, and records `version`. Each step is one statement
/// outside any transaction, and each can be repeated, so a build cut short (its process
/// killed, its connection lost) is finished by the next process to open the store. Such a
/// build leaves its index behind marked invalid (PostgreSQL keeps it, but reads nothing
/// from it); `IF NOT EXISTS` would take that for done, so an invalid one is dropped first.
/// A concurrent build waits for the transactions already writing to the table to end.
async fn build_concurrently(
    client: &Client,
    schema: &str,
    version: i32,
    swap: &IndexSwap,
) -> Result<(), StoreError> {
    // Interrupted (a lost connection, a deadlock, a cancel): worth opening again, which
    // finishes the build. Anything else is the schema's problem.
    let failed = |e: tokio_postgres::Error| {
        let what = format!(
            "migration {version} (index {} built concurrently)",
            swap.name
        );
        let cancelled = e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED);
        match pg_error(e) {
            StoreError::Database(m) if cancelled => {
                StoreError::Unavailable(format!("{what} was cancelled: {m}"))
            }
            StoreError::Database(m) => StoreError::Schema(format!("{what} failed: {m}")),
            StoreError::Unavailable(m) => {
                StoreError::Unavailable(format!("{what} was interrupted: {m}"))
            }
            other => other,
        }
    };
    let recorded: bool = client
        .query_one(
            &format!(
                "SELECT EXISTS (SELECT 1 FROM {schema}.windlass_migrations WHERE version = $1)"
            ),
            &[&version],
        )
        .await
        .map_err(pg_error)?
        .get(0);
    if recorded {
        // Another process built it while this one waited for the lock.
        return Ok(());
    }
    // The build blocks no one, so no timeout of the session's role may cut it short
    // (each cut leaves an invalid index to build again).
    client
        .batch_execute("SET statement_timeout = 0; SET lock_timeout = 0")
        .await
        .map_err(pg_error)?;
    tracing::info!(
        schema,
        version,
        index = swap.name,
        "building an index concurrently: it waits for transactions already writing to the table, and blocks none"
    );
    let valid: Option<bool> = client
        .query_opt(
            "SELECT i.indisvalid FROM pg_index i
             JOIN pg_class c ON c.oid = i.indexrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relname = $2",
            &[&schema, &swap.name],
        )
        .await
        .map_err(pg_error)?
        .map(|r| r.get(0));
    if valid == Some(false) {
        tracing::warn!(
            schema,
            index = swap.name,
            "an earlier build of this index did not finish; building it again"
        );
        client
            .batch_execute(&format!(
                "DROP INDEX CONCURRENTLY IF EXISTS {schema}.{}",
                swap.name
            ))
            .await
            .map_err(failed)?;
    }
    client
        .batch_execute(&format!(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS {} ON {schema}.{}",
            swap.name, swap.on
        ))
        .await
        .map_err(failed)?;
    for old in swap.replaces {
        client
            .batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {schema}.{old}"))
            .await
            .map_err(failed)?;
    }
    client
        .batch_execute("RESET statement_timeout; RESET lock_timeout")
        .await
        .map_err(pg_error)?;
    client
        .execute(
            &format!("INSERT INTO {schema}.windlass_migrations (version) VALUES ($1)"),
            &[&version],
        )
        .await
        .map_err(pg_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Needs `DATABASE_URL`; without it each case returns at once (the conformance tests
    //! say why). Each case migrates a schema of its own.
    #![allow(clippy::unwrap_used)] // test code

    use super::*;
    use windlass_queue::Store as _;

    async fn connect() -> Option<Client> {
        let url = std::env::var("DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty())?;
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        Some(client)
    }

    fn schema_name() -> String {
        format!("wl_schema_{}_{:x}", std::process::id(), fastrand::u64(..))
    }

    /// The jobs table's indexes in `schema`: name and whether it is valid.
    async fn indexes(c: &Client, schema: &str) -> Vec<(String, bool)> {
        c.query(
            "SELECT ci.relname::text, i.indisvalid FROM pg_index i
             JOIN pg_class ci ON ci.oid = i.indexrelid
             JOIN pg_class ct ON ct.oid = i.indrelid
             JOIN pg_namespace n ON n.oid = ct.relnamespace
             WHERE n.nspname = $1 AND ct.relname = 'windlass_jobs' ORDER BY 1",
            &[&schema],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
    }

    /// The index layout every migrated schema ends with.
    fn final_layout() -> Vec<(String, bool)> {
        [
            "windlass_jobs_due",
            "windlass_jobs_finished",
            "windlass_jobs_pkey",
            "windlass_jobs_running",
            "windlass_jobs_unique",
        ]
        .iter()
        .map(|n| (n.to_string(), true))
        .collect()
    }

    async fn versions(c: &Client, schema: &str) -> Vec<i32> {
        c.query(
            &format!("SELECT version FROM {schema}.windlass_migrations ORDER BY 1"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    }

    async fn insert_job(c: &Client, schema: &str) {
        c.execute(
            &format!(
                "INSERT INTO {schema}.windlass_jobs (kind, queue, payload, state, priority,
                    max_attempts, retry, timeout_ms, created_at, run_at)
                 VALUES ('k', 'default', '{{}}', 'available', 0, 3, '[]', 1000, 1, 1)"
            ),
            &[],
        )
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn a_new_schema_gets_its_indexes_in_its_first_transaction() {
        let Some(mut c) = connect().await else { return };
        let schema = schema_name();
        assert_eq!(migrate(&mut c, &schema).await.unwrap(), 8);
        assert_eq!(indexes(&c, &schema).await, final_layout());
        assert_eq!(versions(&c, &schema).await, vec![1, 2, 3, 4, 6, 7, 8]);
        // Opening again changes nothing.
        assert_eq!(migrate(&mut c, &schema).await.unwrap(), 8);
        assert_eq!(indexes(&c, &schema).await, final_layout());
    }

    /// An older worker is in the middle of a write when a newer process opens the store:
    /// the index is built concurrently, so other writers go on meanwhile (a plain `CREATE
    /// INDEX` would queue them behind its lock until the older transaction ended).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_existing_schema_builds_its_index_without_stopping_writers() {
        let Some(mut migrator) = connect().await else {
            return;
        };
        let schema = schema_name();
        assert_eq!(migrate_to(&mut migrator, &schema, 7).await.unwrap(), 7);
        let mut older = connect().await.unwrap();
        insert_job(&older, &schema).await;
        let writing = older.transaction().await.unwrap();
        writing
            .execute(
                &format!("UPDATE {schema}.windlass_jobs SET lease_until = 5"),
                &[],
            )
            .await
            .unwrap();
        let schema2 = schema.clone();
        let migrating =
            tokio::spawn(async move { migrate(&mut migrator, &schema2).await.unwrap() });
        // Wait until the build is under way and waiting for the older transaction.
        let mut watcher = connect().await.unwrap();
        let mut seen = false;
        for _ in 0..500 {
            let n: i64 = watcher
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE query LIKE 'CREATE INDEX CONCURRENTLY%' AND query LIKE $1
                       AND wait_event_type = 'Lock'",
                    &[&format!("%{schema}.windlass_jobs%")],
                )
                .await
                .unwrap()
                .get(0);
            if n == 1 {
                seen = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(seen, "the index build never waited for the older writer");
        // Another writer is not held up: with a plain build it would wait for the lock and
        // give up after the timeout.
        watcher
            .batch_execute("SET lock_timeout = '2s'")
            .await
            .unwrap();
        insert_job(&watcher, &schema).await;
        // Nor is a process of version 7 that opens the store meanwhile: its migration
        // transaction takes the migration lock, which the build does not hold.
        let opened = watcher.transaction().await.unwrap();
        opened
            .execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 7175))",
                &[&format!("windlass-migrate:{schema}")],
            )
            .await
            .unwrap();
        opened.commit().await.unwrap();
        assert!(
            !migrating.is_finished(),
            "the build waits for the older writer"
        );
        writing.commit().await.unwrap();
        assert_eq!(migrating.await.unwrap(), 8);
        assert_eq!(indexes(&watcher, &schema).await, final_layout());
        assert_eq!(versions(&watcher, &schema).await, vec![1, 2, 3, 4, 6, 7, 8]);
    }

    /// A build cut short leaves its index invalid; the next open builds it again instead of
    /// taking its name for done.
    #[tokio::test]
    async fn an_index_left_invalid_by_a_build_cut_short_is_built_again() {
        let Some(mut c) = connect().await else { return };
        let superuser: bool = c
            .query_one(
                "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if !superuser {
            eprintln!("skipped: marking an index invalid needs a superuser");
            return;
        }
        let schema = schema_name();
        migrate_to(&mut c, &schema, 7).await.unwrap();
        insert_job(&c, &schema).await;
        // What an interrupted CREATE INDEX CONCURRENTLY leaves behind (needs a superuser,
        // as the local test server's `postgres` is).
        c.batch_execute(&format!(
            "CREATE INDEX windlass_jobs_running ON {schema}.windlass_jobs (queue);
             UPDATE pg_index SET indisvalid = false
              WHERE indexrelid = '{schema}.windlass_jobs_running'::regclass;"
        ))
        .await
        .unwrap();
        assert!(
            indexes(&c, &schema)
                .await
                .contains(&("windlass_jobs_running".into(), false))
        );
        assert_eq!(migrate(&mut c, &schema).await.unwrap(), 8);
        assert_eq!(indexes(&c, &schema).await, final_layout());
        let def: String = c
            .query_one(
                "SELECT pg_get_indexdef(($1 || '.windlass_jobs_running')::regclass)",
                &[&schema],
            )
            .await
            .unwrap()
            .get(0);
        assert!(
            def.ends_with("(queue, limit_key, lease_until) WHERE (state = 'running'::text)"),
            "{def}"
        );
    }

    #[tokio::test]
    async fn a_server_error_says_what_the_server_said() {
        let Some(c) = connect().await else { return };
        let e = pg_error(c.batch_execute("SELEC 1").await.unwrap_err());
        assert!(
            matches!(&e, StoreError::Database(m) if m.contains("syntax error")),
            "{e:?}"
        );
    }

    /// With migrations off, opening checks the version and changes nothing: a schema
    /// that is missing or behind is refused with both versions named; a current one opens.
    #[tokio::test]
    async fn a_store_opened_without_migrations_refuses_a_schema_behind_the_code() {
        let Some(mut c) = connect().await else { return };
        let url = std::env::var("DATABASE_URL").unwrap();
        let schema = schema_name();
        let open = || {
            crate::PostgresStore::builder(url.clone())
                .schema(schema.clone())
                .pool_size(1)
                .migrate(false)
                .open()
        };
        let refused = open().await.unwrap_err();
        assert!(
            matches!(&refused, StoreError::Schema(m)
                if m.contains("at version 0") && m.contains("needs version 8")),
            "{refused:?}"
        );
        let created: bool = c
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)",
                &[&schema],
            )
            .await
            .unwrap()
            .get(0);
        assert!(!created, "the check created the schema");
        migrate_to(&mut c, &schema, 7).await.unwrap();
        let refused = open().await.unwrap_err();
        assert!(
            matches!(&refused, StoreError::Schema(m) if m.contains("at version 7")),
            "{refused:?}"
        );
        assert_eq!(versions(&c, &schema).await, vec![1, 2, 3, 4, 6, 7]);
        migrate(&mut c, &schema).await.unwrap();
        let store = open().await.unwrap();
        let n = store
            .enqueue(vec![windlass_queue::conformance::job(1)])
            .await
            .unwrap();
        assert_eq!(n.len(), 1);
    }

    /// Processes that open an existing store together build the index once: the others
    /// wait on the lock, then find it recorded.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn processes_opening_together_apply_a_concurrent_build_once() {
        let Some(mut a) = connect().await else { return };
        let schema = schema_name();
        migrate_to(&mut a, &schema, 7).await.unwrap();
        let mut b = connect().await.unwrap();
        let (ra, rb) = tokio::join!(migrate(&mut a, &schema), migrate(&mut b, &schema));
        assert_eq!((ra.unwrap(), rb.unwrap()), (8, 8));
        assert_eq!(versions(&a, &schema).await, vec![1, 2, 3, 4, 6, 7, 8]);
        assert_eq!(indexes(&a, &schema).await, final_layout());
    }
}
