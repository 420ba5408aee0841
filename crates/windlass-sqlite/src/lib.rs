//! The embedded SQLite backend of the Windlass job queue: zero setup, a file path or memory.
//!
//! **What it is for.** A service that needs durable background jobs without running a
//! database server: the queue lives in one file beside the service. Several worker tasks in
//! one process share one store; several processes may open the same file (SQLite's lock
//! serialises their writes, and each claim is one atomic statement). An idle worker notices
//! another process's enqueue within [`SqliteStoreBuilder::watch_every`] (20 ms by default): a
//! thread asks SQLite whether another connection committed, instead of waiting for the poll.
//!
//! **How it writes.** One thread owns the connection. Every operation is sent to it; it takes
//! all that are waiting, runs them in one `BEGIN IMMEDIATE` transaction (each in its own
//! savepoint, so one failing operation rolls back only itself), commits once, and only then
//! answers — group commit: under load, many enqueues, claims and completions share a commit.
//!
//! **Durability.** WAL journal. [`Synchronous::Normal`] (the default) survives a process crash
//! with nothing acknowledged lost; a power loss or OS crash may lose the last commits before
//! the WAL is synced. [`Synchronous::Full`] syncs every commit and survives power loss too,
//! at the cost of one fsync per group commit.
//!
//! **When not to use it:** for workers on several machines (use `windlass-postgres`), or on a
//! network file system (SQLite's locking is not reliable there).
//!
//! Enqueue a job and run it:
//!
//! ```
//! use std::time::Duration;
//! use serde::{Deserialize, Serialize};
//! use windlass_queue::{Job, JobContext, JobError, JobOptions, JobState, Queue, Worker};
//! use windlass_sqlite::SqliteStore;
//!
//! #[derive(Serialize, Deserialize)]
//! struct Resize { image: String, width: u32 }
//!
//! struct ResizeImage;
//! impl Job for ResizeImage {
//!     const KIND: &'static str = "resize_image";
//!     type Payload = Resize;
//!     async fn run(&self, _ctx: JobContext, job: Resize) -> Result<(), JobError> {
//!         println!("resizing {} to {} px", job.image, job.width);
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let queue = Queue::new(SqliteStore::in_memory().await?);
//! let worker = Worker::builder(&queue).register(ResizeImage).concurrency(4).build()?.start().await?;
//! let job = queue.enqueue::<ResizeImage>(&Resize { image: "cat.png".into(), width: 128 }, JobOptions::default()).await?;
//! let done = queue.wait(job.id, Duration::from_secs(10), Duration::from_millis(100)).await?;
//! assert_eq!(done.state, JobState::Completed);
//! worker.shutdown(Duration::from_secs(5)).await;
//! # Ok(()) }
//! ```

mod checkpoint;
mod claim;
mod commit_watch;
mod flow;
mod limits;
mod ops;
mod reader;
mod schema;
mod writer;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use serde_json::Value;
use tokio::sync::watch;
use windlass_queue::{
    ClaimRequest, ClaimedJob, Clock, Enqueued, Fenced, Finish, Heartbeat, JobFilter, JobId,
    JobRecord, JobState, Lease, NewJob, QueueStats, Rescued, Store, StoreError, SystemClock,
    duration_ms,
};

use writer::Writer;

/// How hard SQLite syncs a commit to disk (`PRAGMA synchronous`), in WAL mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Synchronous {
    /// Survives a process crash; a power loss may lose the last commits.
    #[default]
    Normal,
    /// Survives power loss: every commit is synced.
    Full,
}

/// Opens a [`SqliteStore`].
#[derive(Debug)]
pub struct SqliteStoreBuilder {
    path: Option<PathBuf>,
    synchronous: Synchronous,
    busy_timeout: Duration,
    clock: Arc<dyn Clock>,
    watch_every: Duration,
}

impl SqliteStoreBuilder {
    /// How often an idle worker's store looks for commits by other processes (default 20 ms;
    /// see [the crate docs](crate)). Files only: an in-memory store has no other process.
    pub fn watch_every(mut self, d: Duration) -> Self {
        self.watch_every = d;
        self
    }
    /// The sync level (default [`Synchronous::Normal`]).
    pub fn synchronous(mut self, s: Synchronous) -> Self {
        self.synchronous = s;
        self
    }
    /// How long a write waits for another process's lock before failing with
    /// [`StoreError::Unavailable`] (default 5 s).
    pub fn busy_timeout(mut self, d: Duration) -> Self {
        self.busy_timeout = d;
        self
    }
    /// The clock (default the system's; a [`ManualClock`](windlass_queue::ManualClock) in
    /// tests).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Opens (creating if needed) the database, applies the schema's migrations, and starts
    /// the writer thread.
    pub async fn open(self) -> Result<SqliteStore, StoreError> {
        if self.busy_timeout > Duration::from_secs(3600) {
            return Err(StoreError::Invalid(
                "busy_timeout must be at most 1 hour".into(),
            ));
        }
        if self.watch_every.is_zero() || self.watch_every > Duration::from_secs(3600) {
            return Err(StoreError::Invalid(
                "watch_every must be positive and at most 1 hour".into(),
            ));
        }
        let mut conn = match &self.path {
            Some(p) => Connection::open_with_flags(
                p,
                OpenFlags::SQLITE_OPEN_READ_WRITE
                    | OpenFlags::SQLITE_OPEN_CREATE
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            ),
            None => Connection::open_in_memory(),
        }
        .map_err(|e| StoreError::Unavailable(format!("cannot open {:?}: {e}", self.path)))?;
        conn.busy_timeout(self.busy_timeout).map_err(sql_error)?;
        // One plan per statement, whatever is bound: SQLite otherwise marks a parameter
        // compared where a plan might use its value (even `queue = ?` against a partial
        // index's condition) and re-compiles the statement on every new binding. Measured on
        // SQLite 3.54: the claim re-prepared on every call, W3 -22%. Every hot statement is
        // written, and tested (`schema.rs`), to plan well without looking at its values.
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
            true,
        )
        .map_err(sql_error)?;
        // Every statement the store runs stays prepared (rusqlite keeps 16 by default; the
        // store has about 25, with the admin queries).
        conn.set_prepared_statement_cache_capacity(64);
        if self.path.is_some() {
            // WAL: readers never block the writer, and a commit is one sequential append.
            let mode: String = conn
                .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
                .map_err(sql_error)?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(StoreError::Unavailable(format!(
                    "cannot switch {:?} to WAL (journal mode is {mode})",
                    self.path
                )));
            }
        }
        let sync = match self.synchronous {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        };
        conn.execute_batch(&format!("PRAGMA synchronous = {sync}"))
            .map_err(sql_error)?;
        if let Some(path) = &self.path
            && let Err(e) = checkpoint::install(&mut conn, path, self.busy_timeout)
        {
            tracing::warn!(error = %e, path = %path.display(), "no checkpoint thread: the writer checkpoints the WAL itself");
        }
        let writer = Writer::spawn(conn)
            .map_err(|e| StoreError::Unavailable(format!("cannot start the writer thread: {e}")))?;
        writer.call(schema::migrate, None).await?;
        let reader = match &self.path {
            Some(path) => Some(reader::Reader::open(path, self.busy_timeout)?),
            None => None,
        };
        let (signal, _) = watch::channel(0);
        Ok(SqliteStore {
            writer,
            reader,
            clock: self.clock,
            signal: Arc::new(signal),
            path: self.path,
            watching: Arc::new(std::sync::Once::new()),
            watch_every: self.watch_every,
        })
    }
}

/// A job store in one SQLite file (or in memory). See the [crate docs](crate).
#[derive(Clone)]
pub struct SqliteStore {
    writer: Writer,
    /// Reads of a file store, off the writer thread (`reader.rs`); `None` in memory.
    reader: Option<reader::Reader>,
    clock: Arc<dyn Clock>,
    signal: Arc<watch::Sender<u64>>,
    path: Option<PathBuf>,
    /// Set once the thread that notices other processes' commits has started.
    watching: Arc<std::sync::Once>,
    watch_every: Duration,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

impl SqliteStore {
    /// Runs the read `f` on the reader (a file store) or the writer (in memory).
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        match &self.reader {
            Some(reader) => reader.call(f).await,
            None => self.writer.call(f, None).await,
        }
    }

    /// A builder for a store in the file at `path`.
    pub fn builder(path: impl AsRef<Path>) -> SqliteStoreBuilder {
        SqliteStoreBuilder {
            path: Some(path.as_ref().to_path_buf()),
            synchronous: Synchronous::default(),
            busy_timeout: Duration::from_secs(5),
            clock: Arc::new(SystemClock),
            watch_every: Duration::from_millis(20),
        }
    }

    /// A builder for a store in memory (gone with the process: for tests and demos).
    pub fn memory_builder() -> SqliteStoreBuilder {
        SqliteStoreBuilder {
            path: None,
            ..SqliteStore::builder("")
        }
    }

    /// Opens the file at `path` with the defaults.
    pub async fn open(path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        SqliteStore::builder(path).open().await
    }

    /// An in-memory store with the defaults.
    pub async fn in_memory() -> Result<SqliteStore, StoreError> {
        SqliteStore::memory_builder().open().await
    }

    /// A hook that wakes this process's fetchers after a commit that added work.
    fn wake(&self) -> Option<Box<dyn FnOnce() + Send>> {
        let signal = self.signal.clone();
        Some(Box::new(move || {
            signal.send_modify(|n| *n = n.wrapping_add(1));
        }))
    }
}

/// A rusqlite error as a store error: a busy or locked database is `Unavailable` (try
/// again); anything else is reported as it is.
pub(crate) fn sql_error(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            StoreError::Unavailable(e.to_string())
        }
        Some(rusqlite::ErrorCode::DiskFull | rusqlite::ErrorCode::SystemIoFailure) => {
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::Database(e.to_string()),
    }
}

impl Store for SqliteStore {
    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>, StoreError> {
        let now = self.clock.now_ms();
        self.writer
            .call(move |c| ops::enqueue(c, jobs, now), self.wake())
            .await
    }

    async fn wake(&self, id: JobId) -> Result<bool, StoreError> {
        let now = self.clock.now_ms();
        self.writer
            .call(move |c| ops::wake(c, id, now), self.wake())
            .await
    }

    async fn claim(&self, request: ClaimRequest) -> Result<Vec<ClaimedJob>, StoreError> {
        let now = self.clock.now_ms();
        let raw = self
            .writer
            .call(move |c| claim::claim(c, &request, now), None)
            .await?;
        // Off the writer thread: the JSON columns are parsed here.
        let (jobs, unreadable) = claim::decode(raw, now);
        if !unreadable.is_empty() {
            let n = unreadable.len();
            let discarded = self
                .writer
                .call(move |c| claim::discard(c, &unreadable, now), None)
                .await;
            if let Err(e) = discarded {
                // They stay claimed until their leases expire, then are claimed and
                // discarded again (`claim.rs` says when the sweep ends them instead):
                // nothing is handed out unread, nothing is lost.
                tracing::warn!(error = %e, jobs = n, "discarding unreadable jobs failed; they are tried again when their leases expire");
            }
            // Fewer jobs than the rows claimed: the fetcher may take an empty answer for an
            // empty queue, so tell it to look again.
            if let Some(wake) = self.wake() {
                wake();
            }
        }
        Ok(jobs)
    }

    async fn heartbeat(
        &self,
        leases: Vec<Lease>,
        lease_for: Duration,
    ) -> Result<Vec<Heartbeat>, StoreError> {
        let until = self.clock.now_ms().saturating_add(duration_ms(lease_for));
        self.writer
            .call(move |c| ops::heartbeat(c, &leases, until), None)
            .await
    }

    async fn finish(&self, finished: Vec<Finish>) -> Result<Vec<Fenced>, StoreError> {
        let now = self.clock.now_ms();
        // A retry or a release may make work due: wake the fetchers.
        self.writer
            .call(move |c| ops::finish(c, &finished, now), self.wake())
            .await
    }

    async fn progress(&self, lease: Lease, progress: Value) -> Result<Fenced, StoreError> {
        self.writer
            .call(move |c| ops::progress(c, &lease, &progress), None)
            .await
    }

    async fn rescue_expired(&self, quarantine_after: u32) -> Result<Rescued, StoreError> {
        let now = self.clock.now_ms();
        self.writer
            .call(move |c| ops::rescue(c, quarantine_after, now), self.wake())
            .await
    }

    async fn cancel(&self, id: JobId) -> Result<Option<JobState>, StoreError> {
        let now = self.clock.now_ms();
        self.writer
            .call(move |c| ops::cancel(c, id, now), None)
            .await
    }

    async fn replay(&self, ids: Vec<JobId>) -> Result<Vec<JobId>, StoreError> {
        let now = self.clock.now_ms();
        self.writer
            .call(move |c| ops::replay(c, &ids, now), self.wake())
            .await
    }

    async fn prune(
        &self,
        states: Vec<JobState>,
        finished_before_ms: i64,
    ) -> Result<u64, StoreError> {
        self.writer
            .call(move |c| ops::prune(c, &states, finished_before_ms), None)
            .await
    }

    async fn get(&self, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        self.read(move |c| ops::get(c, id)).await
    }

    async fn list(&self, filter: JobFilter) -> Result<Vec<JobRecord>, StoreError> {
        self.read(move |c| ops::list(c, &filter)).await
    }

    async fn stats(&self) -> Result<Vec<QueueStats>, StoreError> {
        let now = self.clock.now_ms();
        self.read(move |c| ops::stats(c, now)).await
    }

    async fn unknown_kinds(
        &self,
        queues: Vec<String>,
        kinds: Vec<String>,
    ) -> Result<Vec<String>, StoreError> {
        self.read(move |c| ops::unknown_kinds(c, &queues, &kinds))
            .await
    }

    async fn set_limits(
        &self,
        queue: String,
        limits: windlass_queue::QueueLimits,
    ) -> Result<(), StoreError> {
        limits
            .validate()
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        // New limits may let more work start: wake the fetchers.
        self.writer
            .call(move |c| limits::set(c, &queue, &limits), self.wake())
            .await
    }

    async fn limits(&self, queue: String) -> Result<windlass_queue::QueueLimits, StoreError> {
        self.writer
            .call(move |c| limits::get(c, &queue), None)
            .await
    }

    fn work_signal(&self) -> watch::Receiver<u64> {
        // The first subscriber (a worker) starts the watch for other processes' commits.
        if let Some(path) = &self.path {
            self.watching.call_once(|| {
                let weak = Arc::downgrade(&self.signal);
                if let Err(e) = commit_watch::spawn(path.clone(), self.watch_every, weak) {
                    tracing::warn!(error = %e, "cannot start the commit watcher; idle workers will poll");
                }
            });
        }
        self.signal.subscribe()
    }

    fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }
}
