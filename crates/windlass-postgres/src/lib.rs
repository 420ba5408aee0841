//! The PostgreSQL backend of the Windlass job queue: many worker processes on many machines.
//!
//! **What it is for.** Jobs shared by workers that do not share a disk. Every claim is one
//! statement (`FOR UPDATE SKIP LOCKED` over the index of due jobs, then `UPDATE … RETURNING`),
//! so any number of workers claim without blocking each other; completions and heartbeats
//! are one statement per batch over arrays; an enqueue is one statement that also
//! `NOTIFY`s, and a store with workers keeps one `LISTEN` connection, so an idle worker hears
//! of new work within a round trip instead of a poll interval.
//!
//! **Transactional enqueue.** [`PostgresStore::enqueue_in`] inserts jobs inside the caller's
//! own transaction: the job exists if and only if the business data it belongs to was
//! committed (the outbox pattern without an outbox).
//!
//! **Durability.** Whatever the server's settings give: with PostgreSQL's defaults (`fsync`
//! and `synchronous_commit` on) an acknowledged enqueue or completion survives a crash of the
//! worker, of the server and a power loss.
//!
//! **Isolation.** Each store lives in a PostgreSQL schema of its own (default `windlass`),
//! created and migrated at [`open`](PostgresStoreBuilder::open); tests give each case its own.
//!
//! **When not to use it:** for a single process that needs no server (use `windlass-sqlite`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), windlass_queue::StoreError> {
//! use windlass_postgres::PostgresStore;
//! let store = PostgresStore::builder("postgres://postgres@127.0.0.1:5432/test")
//!     .schema("jobs")
//!     .pool_size(16)
//!     .open()
//!     .await?;
//! # Ok(()) }
//! ```

#[cfg(test)]
mod batch_tests;
mod ends;
mod flow;
mod group_commit;
mod journal;
mod limits;
mod listen;
mod ops;
mod schema;
mod starts;
mod statuses;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde_json::Value;
use tokio::sync::watch;
use tokio_postgres::NoTls;
use tokio_util::sync::{CancellationToken, DropGuard};
use windlass_queue::{
    ClaimRequest, ClaimedJob, Clock, Enqueued, Fenced, Finish, Heartbeat, JobFilter, JobId,
    JobRecord, JobState, Lease, NewJob, QueueStats, Rescued, Store, StoreError, SystemClock,
    duration_ms,
};

/// Opens a [`PostgresStore`].
#[derive(Debug)]
pub struct PostgresStoreBuilder {
    url: String,
    schema: String,
    pool_size: usize,
    clock: Arc<dyn Clock>,
    migrate: bool,
}

impl PostgresStoreBuilder {
    /// The PostgreSQL schema (namespace) the store's tables live in (default `windlass`):
    /// lowercase letters, digits and `_`, starting with a letter or `_`, at most 63 bytes.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }
    /// Whether [`open`](Self::open) applies the schema's migrations (default `true`). With
    /// `false` it only checks that they were applied, and fails with
    /// [`StoreError::Schema`] naming the versions if not: for deployments whose schema
    /// changes are run apart from the application (`windlass migrate`, or one process with
    /// migrations on), e.g. by a role the workers do not have.
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }
    /// Connections in the pool (default 10; the `LISTEN` connection is extra).
    pub fn pool_size(mut self, n: usize) -> Self {
        self.pool_size = n;
        self
    }
    /// The clock (default the system's). Every process must use a clock that agrees with the
    /// others' to well within the lease duration.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Connects, creates and migrates the schema (or, with [`migrate(false)`](Self::migrate),
    /// checks that it was), and starts listening for new work.
    pub async fn open(self) -> Result<PostgresStore, StoreError> {
        let valid = !self.schema.is_empty()
            && self.schema.len() <= 63
            && self
                .schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && !self.schema.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            return Err(StoreError::Invalid(format!(
                "schema `{}` must be 1-63 bytes of [a-z0-9_], not starting with a digit",
                self.schema
            )));
        }
        if self.pool_size == 0 || self.pool_size > 1000 {
            return Err(StoreError::Invalid("pool_size must be 1 to 1000".into()));
        }
        let mut config: tokio_postgres::Config = self
            .url
            .parse()
            .map_err(|e| StoreError::Invalid(format!("database URL: {e}")))?;
        let (mut client, connection) = config
            .connect(NoTls)
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot connect: {}", describe(&e))))?;
        let setup = tokio::spawn(connection);
        if self.migrate {
            schema::migrate(&mut client, &self.schema).await?;
        } else {
            schema::check(&client, &self.schema).await?;
        }
        drop(client);
        let _ = setup.await;
        config.options(format!("-c search_path={}", self.schema));
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        // Last in, first out: the connections in use stay warm (their backends' caches,
        // their prepared statements) and the rest idle; first-in-first-out rotated every
        // call through all of them.
        let pool = Pool::builder(manager)
            .queue_mode(deadpool_postgres::QueueMode::Lifo)
            .max_size(self.pool_size)
            .build()
            .map_err(|e| StoreError::Invalid(format!("connection pool: {e}")))?;
        let channel = format!("windlass_jobs_{}", self.schema);
        let (signal, _) = watch::channel(0u64);
        Ok(PostgresStore {
            pool,
            clock: self.clock,
            channel: channel.into(),
            schema: self.schema.into(),
            signal: Arc::new(signal),
            listener: Arc::new(Listener {
                config,
                started: OnceLock::new(),
            }),
            limits_cache: Arc::default(),
            journal: Arc::default(),
            ends: Arc::default(),
            starts: Arc::default(),
            statuses: Arc::default(),
        })
    }
}

/// A job store in a PostgreSQL schema. See the [crate docs](crate).
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    clock: Arc<dyn Clock>,
    channel: Arc<str>,
    schema: Arc<str>,
    signal: Arc<watch::Sender<u64>>,
    listener: Arc<Listener>,
    limits_cache: Arc<Mutex<HashMap<String, (std::time::Instant, windlass_queue::QueueLimits)>>>,
    /// The group-commit writer of workflow journal entries, started by the first write.
    journal: Arc<OnceLock<group_commit::GroupWriter<journal::Pending>>>,
    /// The group-commit writer of direct runs' ends, started by the first end.
    ends: Arc<OnceLock<group_commit::GroupWriter<ends::Pending>>>,
    /// The group-commit writer of direct starts, started by the first direct start.
    starts: Arc<OnceLock<group_commit::GroupWriter<starts::Pending>>>,
    /// The group-commit writer of run status moves, started by the first move.
    statuses: Arc<OnceLock<group_commit::GroupWriter<statuses::Pending>>>,
}

/// The `LISTEN` connection, started by the first fetcher that asks for the work signal (a
/// process that only enqueues never opens it: every listener costs the server a delivery per
/// notification), and stopped when the last clone of the store is dropped.
struct Listener {
    config: tokio_postgres::Config,
    started: OnceLock<DropGuard>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.schema)
            .finish()
    }
}

impl PostgresStore {
    /// A builder for a store at `url` (`postgres://user@host:port/db`).
    pub fn builder(url: impl Into<String>) -> PostgresStoreBuilder {
        PostgresStoreBuilder {
            url: url.into(),
            schema: "windlass".into(),
            pool_size: 10,
            clock: Arc::new(SystemClock),
            migrate: true,
        }
    }

    /// Opens the store at `url` with the defaults.
    pub async fn connect(url: impl Into<String>) -> Result<PostgresStore, StoreError> {
        PostgresStore::builder(url).open().await
    }

    /// The schema the store's tables live in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Enqueues jobs inside the caller's transaction (on any connection to the same
    /// database): they exist if and only if the transaction commits, and workers are woken
    /// when it does. Unique keys work as in [`Store::enqueue`].
    pub async fn enqueue_in(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<Enqueued>, StoreError> {
        let old = self.enter_schema(tx).await?;
        let out = ops::enqueue(
            tx,
            &ops::Prep::Plain,
            &jobs,
            self.clock.now_ms(),
            &self.channel,
        )
        .await;
        leave_schema(tx, &old, out).await
    }

    /// Publishes an event inside the caller's transaction (the **outbox**, with no relay):
    /// the event and its deliveries to every subscription of `topic` (jobs, workflow runs)
    /// exist if and only if the transaction commits, and workers are woken when it does. An
    /// event id already published writes nothing (`duplicate`). See
    /// [`windlass_flow::Events`].
    pub async fn publish_in<T: serde::Serialize>(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        topic: &str,
        id: &str,
        payload: &T,
    ) -> Result<windlass_flow::Published, windlass_flow::EventError> {
        let event = windlass_flow::events::Event::new(topic, id, payload, self.clock.now_ms())?;
        let old = self.enter_schema(tx).await?;
        let published = flow::publish_on(tx, &event, event.published_at_ms, &self.channel)
            .await
            .map(|delivered| windlass_flow::Published {
                event: event.id.clone(),
                duplicate: delivered.is_none(),
                delivered: delivered.unwrap_or(0),
            });
        Ok(leave_schema(tx, &old, published).await?)
    }

    /// Points the caller's transaction at this store's schema (local to the transaction);
    /// returns the caller's search path, for [`leave_schema`].
    async fn enter_schema(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
    ) -> Result<String, StoreError> {
        let old: String = tx
            .query_one("SELECT current_setting('search_path')", &[])
            .await
            .map_err(pg_error)?
            .get(0);
        tx.execute(
            "SELECT set_config('search_path', $1, true)",
            &[&self.schema.to_string()],
        )
        .await
        .map_err(pg_error)?;
        Ok(old)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(format!("no database connection: {e}")))
    }

    /// A queue's limits, read from the database at most once a second per queue (a change
    /// made by another process is kept from then on; one made here, at once).
    async fn cached_limits(
        &self,
        client: &deadpool_postgres::Object,
        queue: &str,
    ) -> Result<windlass_queue::QueueLimits, StoreError> {
        let fresh = std::time::Instant::now();
        if let Some((at, l)) = self
            .limits_cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(queue)
            && fresh.duration_since(*at) < Duration::from_secs(1)
        {
            return Ok(*l);
        }
        let l = limits::get(&***client, queue).await?;
        self.limits_cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(queue.to_string(), (fresh, l));
        Ok(l)
    }

    fn wake(&self) {
        self.signal.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// What went wrong: for a server error what the server said (the driver's own message
/// for one is only "db error").
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map_or_else(|| e.to_string(), ToString::to_string)
}

/// A PostgreSQL error as a store error: connection loss, shutdown, overload, serialisation
/// failures and deadlocks are `Unavailable` (try again); anything else is the database
/// refusing the operation.
pub(crate) fn pg_error(e: tokio_postgres::Error) -> StoreError {
    if e.is_closed() {
        return StoreError::Unavailable(e.to_string());
    }
    let message = describe(&e);
    match e.code() {
        Some(code) => {
            let c = code.code();
            if c.starts_with("08")
                || c.starts_with("57P")
                || c.starts_with("53")
                || c == "40001"
                || c == "40P01"
            {
                StoreError::Unavailable(message)
            } else {
                StoreError::Database(message)
            }
        }
        // No SQLSTATE: an I/O or protocol error on the connection.
        None => StoreError::Unavailable(e.to_string()),
    }
}

/// Puts the caller's search path `old` back after the work that gave `out`. After a failed
/// statement the transaction is aborted and the restore fails too: the first error is the
/// one reported.
async fn leave_schema<T>(
    tx: &tokio_postgres::Transaction<'_>,
    old: &str,
    out: Result<T, StoreError>,
) -> Result<T, StoreError> {
    let restored = tx
        .execute("SELECT set_config('search_path', $1, true)", &[&old])
        .await;
    let out = out?;
    restored.map_err(pg_error)?;
    Ok(out)
}

impl Store for PostgresStore {
    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>, StoreError> {
        let now = self.clock.now_ms();
        let mut client = self.client().await?;
        let out = if jobs.iter().any(|j| j.options().unique.is_some()) {
            // Prepared on the connection itself: the transaction borrows it mutably.
            let tx = client.transaction().await.map_err(pg_error)?;
            let out = ops::enqueue(&*tx, &ops::Prep::Plain, &jobs, now, &self.channel).await?;
            tx.commit().await.map_err(pg_error)?;
            out
        } else {
            ops::enqueue(
                &**client,
                &ops::Prep::Cached(&client),
                &jobs,
                now,
                &self.channel,
            )
            .await?
        };
        self.wake();
        Ok(out)
    }

    async fn wake(&self, id: JobId) -> Result<bool, StoreError> {
        let now = self.clock.now_ms();
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "WITH w AS (
                    UPDATE windlass_jobs SET
                        run_at = CASE WHEN state = 'running' THEN run_at ELSE LEAST(run_at, $2) END,
                        wake_requested = (state = 'running') OR wake_requested
                    WHERE id = $1 AND state IN ('scheduled', 'available', 'retryable', 'running')
                    RETURNING id)
                 SELECT count(*), (SELECT pg_notify($3, '')) FROM w",
            )
            .await
            .map_err(pg_error)?;
        let row = client
            .query_one(&stmt, &[&id.0, &now, &&*self.channel])
            .await
            .map_err(pg_error)?;
        drop(client);
        self.wake();
        let n: i64 = row.try_get(0).map_err(pg_error)?;
        Ok(n == 1)
    }

    async fn claim(&self, request: ClaimRequest) -> Result<Vec<ClaimedJob>, StoreError> {
        let now = self.clock.now_ms();
        let mut client = self.client().await?;
        let mut all = Vec::new();
        let mut unreadable = Vec::new();
        if request.kinds.is_empty() {
            return Ok(all);
        }
        for queue in &request.queues {
            let left = request.limit.saturating_sub(all.len());
            if left == 0 {
                break;
            }
            let limits = self.cached_limits(&client, queue).await?;
            let (got, bad) = if limits.is_unlimited() {
                ops::claim_queue(&client, &request, queue, left, now).await?
            } else {
                limits::claim_limited(&mut client, &request, queue, &limits, left, now).await?
            };
            all.extend(got);
            unreadable.extend(bad);
        }
        if !unreadable.is_empty() {
            // Claimed and committed: discard them now, their schedule reset to the default
            // so the dead letter can be read and replayed (the stored value is in the
            // attempt's error). If that fails, their leases expire and the next claim tries
            // again; the readable jobs are handed out either way.
            for u in &unreadable {
                tracing::warn!(job = u.end.lease.job.0, error = ?u.end.record.error, "discarding an unreadable job");
            }
            if let Err(e) = ops::discard_unreadable(&client, &unreadable, now).await {
                tracing::warn!(error = %e, "could not discard unreadable jobs; their leases will expire");
            }
            // Fewer jobs than the rows claimed: the fetcher may take an empty answer for an
            // empty queue, so tell it to look again.
            self.wake();
        }
        Ok(all)
    }

    async fn heartbeat(
        &self,
        leases: Vec<Lease>,
        lease_for: Duration,
    ) -> Result<Vec<Heartbeat>, StoreError> {
        let until = self.clock.now_ms().saturating_add(duration_ms(lease_for));
        let client = self.client().await?;
        ops::heartbeat(&client, &leases, until).await
    }

    async fn finish(&self, finished: Vec<Finish>) -> Result<Vec<Fenced>, StoreError> {
        let now = self.clock.now_ms();
        let client = self.client().await?;
        let out = ops::finish(&client, &finished, now).await?;
        self.wake();
        Ok(out)
    }

    async fn progress(&self, lease: Lease, progress: Value) -> Result<Fenced, StoreError> {
        let client = self.client().await?;
        ops::progress(&client, &lease, &progress).await
    }

    async fn rescue_expired(&self, quarantine_after: u32) -> Result<Rescued, StoreError> {
        let now = self.clock.now_ms();
        let client = self.client().await?;
        let out = ops::rescue(&client, quarantine_after, now).await?;
        if !out.retried.is_empty() {
            self.wake();
        }
        Ok(out)
    }

    async fn cancel(&self, id: JobId) -> Result<Option<JobState>, StoreError> {
        let now = self.clock.now_ms();
        let client = self.client().await?;
        ops::cancel(&**client, id, now).await
    }

    async fn replay(&self, ids: Vec<JobId>) -> Result<Vec<JobId>, StoreError> {
        let now = self.clock.now_ms();
        let client = self.client().await?;
        let out = ops::replay(&client, &ids, now).await?;
        self.wake();
        Ok(out)
    }

    async fn prune(
        &self,
        states: Vec<JobState>,
        finished_before_ms: i64,
    ) -> Result<u64, StoreError> {
        let client = self.client().await?;
        ops::prune(&client, &states, finished_before_ms).await
    }

    async fn get(&self, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        let client = self.client().await?;
        ops::get(&client, id).await
    }

    async fn list(&self, filter: JobFilter) -> Result<Vec<JobRecord>, StoreError> {
        let client = self.client().await?;
        ops::list(&client, &filter).await
    }

    async fn stats(&self) -> Result<Vec<QueueStats>, StoreError> {
        let now = self.clock.now_ms();
        let client = self.client().await?;
        ops::stats(&client, now).await
    }

    async fn unknown_kinds(
        &self,
        queues: Vec<String>,
        kinds: Vec<String>,
    ) -> Result<Vec<String>, StoreError> {
        let client = self.client().await?;
        ops::unknown_kinds(&client, &queues, &kinds).await
    }

    async fn set_limits(
        &self,
        queue: String,
        limits: windlass_queue::QueueLimits,
    ) -> Result<(), StoreError> {
        limits
            .validate()
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let client = self.client().await?;
        limits::set(&**client, &queue, &limits).await?;
        self.limits_cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&queue);
        self.wake();
        Ok(())
    }

    async fn limits(&self, queue: String) -> Result<windlass_queue::QueueLimits, StoreError> {
        let client = self.client().await?;
        limits::get(&**client, &queue).await
    }

    fn work_signal(&self) -> watch::Receiver<u64> {
        self.listener.started.get_or_init(|| {
            let stop = CancellationToken::new();
            tokio::spawn(listen::listen(
                self.listener.config.clone(),
                self.channel.to_string(),
                self.signal.clone(),
                stop.clone(),
            ));
            stop.drop_guard()
        });
        self.signal.subscribe()
    }

    fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }
}
