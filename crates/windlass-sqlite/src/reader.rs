//! Reads that take no write lock, on a connection of their own.
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
//! copying frames committed after it began, so the WAL cannot start over until it ends:
//! reads here are single queries, short next to the checkpoint's 10 ms pace.
//!
//! Not for writes (the connection is `query_only`), nor for an in-memory store, whose
//! database only its one connection can see: there, reads go to the writer as before.
//! Reads take turns on the one connection, each on a blocking-pool thread.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use windlass_queue::StoreError;

use crate::sql_error;

/// A read connection, used by one blocking task at a time.
#[derive(Clone)]
pub(crate) struct Reader {
    conn: Arc<Mutex<Connection>>,
}

impl Reader {
    /// Opens a read connection to the (already migrated) database at `path`.
    pub(crate) fn open(path: &Path, busy_timeout: Duration) -> Result<Reader, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| StoreError::Unavailable(format!("cannot open {path:?} to read: {e}")))?;
        conn.busy_timeout(busy_timeout).map_err(sql_error)?;
        conn.execute_batch("PRAGMA query_only = 1")
            .map_err(sql_error)?;
        Ok(Reader {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` in one read transaction (one snapshot for all its statements), on a
    /// blocking task.
    pub(crate) async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
            // A read that panicked left its transaction open (and its snapshot held).
            if !conn.is_autocommit() {
                conn.execute_batch("ROLLBACK").map_err(sql_error)?;
            }
            conn.execute_batch("BEGIN").map_err(sql_error)?;
            let out = f(&conn);
            // Nothing was written: ending the transaction either way only lets the snapshot go.
            let end = conn.execute_batch("COMMIT").map_err(sql_error);
            if end.is_err() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            let out = out?;
            end?;
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("the read task failed: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code

    use windlass_queue::conformance::job;
    use windlass_queue::{JobFilter, JobState, Store};

    use crate::SqliteStore;

    /// A file store's reads go on while its writer is busy: they neither queue behind the
    /// writes nor hold them up. (Sent to the writer, each would wait for the held write.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_do_not_wait_for_the_writer() {
        let dir = windlass_test_support::ScratchDir::new("reader");
        let store = SqliteStore::builder(dir.file("jobs.db"))
            .open()
            .await
            .unwrap();
        let id = store.enqueue(vec![job(1)]).await.unwrap()[0].id;
        // Hold the writer thread inside an operation until told to go on.
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let (held_tx, held_rx) = tokio::sync::oneshot::channel::<()>();
        let writer = store.writer.clone();
        let held = tokio::spawn(async move {
            writer
                .call(
                    move |_| {
                        let _ = held_tx.send(());
                        let _ = go_rx.recv();
                        Ok(())
                    },
                    None,
                )
                .await
        });
        held_rx.await.unwrap();
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
            store.get(id).await.unwrap().unwrap().state,
            JobState::Available
        );
    }
}
