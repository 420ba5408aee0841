//! Reads that take no write lock, on connections of their own.
//!
//! The writer thread is SQLite's one writer and the store's ceiling under load, and a
//! read sent to it waits its turn and then holds every write up while it runs. The queue
//! counts that feed the depth gauges read the whole table (a worker reads them as it starts,
//! then every `gauges_every`): on the writer thread they took about 8% of its time during a
//! 50,000-job W3 run (`perf`, half of it the bench's own final count), and an operator's
//! `windlass jobs list` ran inside the writer's `BEGIN IMMEDIATE`, holding the file's write
//! lock. So a file store runs its reads here instead (`get`, `list`, `stats`,
//! `unknown_kinds`): in WAL mode a reader does not block the writer, nor wait for it (short
//! of WAL recovery after a crash), and it sees every commit made before it starts, so a
//! caller reads its own writes. While a read runs, its snapshot keeps checkpoints from
//! copying frames committed after it began, so the WAL cannot start over until it ends.
//! Reads here are short (a few queries; the queue counts scan the table, tens of
//! milliseconds at 100,000 jobs), but reads that overlap without a break (a dashboard
//! polling hard, several at once) can keep the WAL growing until they pause.
//!
//! Reads run side by side, each on a blocking-pool thread with a connection of its own from
//! a small pool ([`MAX_READERS`], opened as needed and kept): a long `list` for a dashboard
//! does not hold up the worker's counts or an operator's `get`. Past that many at once, a
//! read waits for a connection.
//!
//! Not for writes (the connections are `query_only`), nor for an in-memory store, whose
//! database only its one connection can see: there, reads go to the writer as before.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::Semaphore;
use windlass_queue::StoreError;

use crate::sql_error;

/// The most reads that run at once, each on its own connection.
pub(crate) const MAX_READERS: usize = 4;

/// The read connections of one file store; cloning shares them.
#[derive(Clone)]
pub(crate) struct Reader {
    pool: Arc<Pool>,
}

struct Pool {
    path: PathBuf,
    busy_timeout: Duration,
    /// Connections not in use. A read takes one (or opens one) and puts it back after.
    idle: Mutex<Vec<Connection>>,
    /// One permit per read that may run: at most [`MAX_READERS`] connections exist.
    slots: Arc<Semaphore>,
}

impl Reader {
    /// Opens the first read connection to the (already migrated) database at `path`, so
    /// that a path that cannot be read fails here; the others open as reads need them, by
    /// the path made absolute now (a later change of directory cannot point them at
    /// another file).
    pub(crate) fn open(path: &Path, busy_timeout: Duration) -> Result<Reader, StoreError> {
        let path = std::path::absolute(path)
            .map_err(|e| StoreError::Unavailable(format!("cannot resolve {path:?}: {e}")))?;
        let first = connect(&path, busy_timeout)?;
        Ok(Reader {
            pool: Arc::new(Pool {
                path,
                busy_timeout,
                idle: Mutex::new(vec![first]),
                slots: Arc::new(Semaphore::new(MAX_READERS)),
            }),
        })
    }

    /// Runs `f` in one read transaction (one snapshot for all its statements), on a
    /// blocking task, on a connection no other read is using.
    pub(crate) async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let slot = Arc::clone(&self.pool.slots)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Closed)?;
        let pool = Arc::clone(&self.pool);
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let taken = pool.idle().pop();
            let conn = match taken {
                Some(conn) => conn,
                None => connect(&pool.path, pool.busy_timeout)?,
            };
            // Should `f` panic, `conn` is dropped with its transaction, never put back.
            conn.execute_batch("BEGIN").map_err(sql_error)?;
            let out = f(&conn);
            // Nothing was written: ending the transaction either way only lets the snapshot go.
            let end = conn.execute_batch("COMMIT").map_err(sql_error);
            if end.is_err() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            if conn.is_autocommit() {
                pool.idle().push(conn);
            }
            let out = out?;
            end?;
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("the read task failed: {e}")))?
    }
}

impl Pool {
    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One read-only connection.
fn connect(path: &Path, busy_timeout: Duration) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| StoreError::Unavailable(format!("cannot open {path:?} to read: {e}")))?;
    conn.busy_timeout(busy_timeout).map_err(sql_error)?;
    conn.execute_batch("PRAGMA query_only = 1")
        .map_err(sql_error)?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code

    use windlass_queue::conformance::job;
    use windlass_queue::{JobFilter, JobState, Store};

    use crate::SqliteStore;

    /// A store in a file of its own (removed with the `ScratchDir`) holding one job.
    async fn file_store_with_a_job(
        name: &str,
    ) -> (
        windlass_test_support::ScratchDir,
        SqliteStore,
        windlass_queue::JobId,
    ) {
        let dir = windlass_test_support::ScratchDir::new(name);
        let store = SqliteStore::builder(dir.file("jobs.db"))
            .open()
            .await
            .unwrap();
        let id = store.enqueue(vec![job(1)]).await.unwrap()[0].id;
        (dir, store, id)
    }

    /// Reads run side by side: one held inside its transaction does not keep the next
    /// from running (on one shared connection, the next would wait for it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_run_side_by_side() {
        let (_dir, store, id) = file_store_with_a_job("reader-pool").await;
        let reader = store.reader.clone().unwrap();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let (held_tx, held_rx) = tokio::sync::oneshot::channel::<i64>();
        let held = tokio::spawn(async move {
            reader
                .call(move |c| {
                    let n: i64 = c
                        .query_row("SELECT count(*) FROM windlass_jobs", [], |r| r.get(0))
                        .map_err(crate::sql_error)?;
                    let _ = held_tx.send(n);
                    let _ = go_rx.recv();
                    Ok(n)
                })
                .await
        });
        assert_eq!(held_rx.await.unwrap(), 1, "the held read runs");
        let other = tokio::time::timeout(std::time::Duration::from_secs(10), store.get(id)).await;
        go_tx.send(()).unwrap();
        assert_eq!(held.await.unwrap().unwrap(), 1);
        let record = other
            .expect("the second read waited for the first")
            .unwrap();
        assert_eq!(record.unwrap().state, JobState::Available);
        // Both connections stay for the next reads.
        assert_eq!(store.reader.as_ref().unwrap().pool.idle().len(), 2);
    }

    /// A file store's reads go on while its writer is busy: they neither queue behind the
    /// writes nor hold them up. (Sent to the writer, each would wait for the held write.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_do_not_wait_for_the_writer() {
        let (_dir, store, id) = file_store_with_a_job("reader").await;
        // Hold the writer thread inside an operation until told to go on.
        let (go_tx, held) = crate::writer::hold(&store.writer).await;
        let reads = async {
            let record = store.get(id).await.unwrap().unwrap();
            let listed = store.list(JobFilter::default()).await.unwrap();
            let stats = store.stats().await.unwrap();
            let unknown = store
                .unknown_kinds(vec!["default".into()], vec![])
                .await
                .unwrap();
            (
                record.state,
                listed.len(),
                stats[0].count(JobState::Available),
                unknown,
            )
        };
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), reads).await;
        go_tx.send(()).unwrap();
        held.await.unwrap().unwrap();
        let (state, listed, available, unknown) = read.expect("the reads waited for the writer");
        assert_eq!(state, JobState::Available);
        assert_eq!((listed, available), (1, 1));
        assert_eq!(unknown, vec![job(1).kind().to_string()]);
        // The reader's connection reads only.
        let write = store
            .reader
            .as_ref()
            .unwrap()
            .call(|c| {
                c.execute("DELETE FROM windlass_jobs", [])
                    .map_err(crate::sql_error)
            })
            .await;
        assert!(write.is_err(), "{write:?}");
        // A read that panics mid-transaction fails alone; the next read starts afresh.
        let reader = store.reader.as_ref().unwrap();
        let panicked = reader
            .call(|c| -> Result<(), crate::StoreError> {
                c.query_row("SELECT count(*) FROM windlass_jobs", [], |r| {
                    r.get::<_, i64>(0)
                })
                .map_err(crate::sql_error)?;
                panic!("a read that panics")
            })
            .await;
        assert!(panicked.is_err());
        assert_eq!(
            reader.pool.slots.available_permits(),
            super::MAX_READERS,
            "the panicked read gave its slot back"
        );
        assert_eq!(
            store.get(id).await.unwrap().unwrap().state,
            JobState::Available
        );
    }
}
