//! The one thread that owns the SQLite connection, and its group commit.
//!
//! SQLite allows one writer at a time, and a commit costs a WAL write (and, at
//! `synchronous=FULL`, an fsync). So every operation is sent to one thread, which takes all
//! operations waiting at that moment, runs each in its own savepoint inside one
//! `BEGIN IMMEDIATE` transaction, commits once, and only then answers each caller. A caller
//! is never told "done" before its change is committed; an operation that fails rolls back
//! only its own savepoint.

use std::sync::mpsc;
use std::thread;

use rusqlite::Connection;
use tokio::sync::oneshot;
use windlass_queue::StoreError;

/// What an operation leaves behind: the answer to send once the commit's fate is known.
type Reply = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// An operation on the connection (`None`: the transaction could not start; run nothing).
type Op = Box<dyn FnOnce(Option<&Connection>) -> Reply + Send>;

/// The most operations folded into one transaction.
const MAX_GROUP: usize = 1024;

/// The sending side; cloning is cheap.
#[derive(Clone)]
pub(crate) struct Writer {
    ops: mpsc::Sender<Op>,
}

impl Writer {
    /// Starts the thread that owns `conn`.
    pub(crate) fn spawn(conn: Connection) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::channel::<Op>();
        thread::Builder::new()
            .name("windlass-sqlite".into())
            .spawn(move || run(conn, rx))?;
        Ok(Writer { ops: tx })
    }

    /// Runs `f` in the next group transaction and returns its result once committed.
    /// `after_commit` runs on the writer thread after a successful commit (wake-ups).
    pub(crate) async fn call<T, F>(
        &self,
        f: F,
        after_commit: Option<Box<dyn FnOnce() + Send>>,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let op: Op = Box::new(move |conn: Option<&Connection>| {
            // Without a transaction the commit's error is what the caller gets.
            let result = match conn {
                Some(conn) => in_savepoint(conn, f),
                None => Err(StoreError::Closed),
            };
            Box::new(move |commit: Result<(), StoreError>| {
                let out = commit.and(result);
                if out.is_ok()
                    && let Some(hook) = after_commit
                {
                    hook();
                }
                let _ = tx.send(out);
            }) as Reply
        });
        self.ops.send(op).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

fn in_savepoint<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    // Prepared once and cached: `execute_batch` would parse the text on every call.
    exec(conn, "SAVEPOINT op")?;
    let r = f(conn);
    if r.is_err() {
        exec(conn, "ROLLBACK TO op")?;
    }
    exec(conn, "RELEASE op")?;
    r
}

fn exec(conn: &Connection, sql: &str) -> Result<(), StoreError> {
    conn.prepare_cached(sql)
        .and_then(|mut s| s.execute([]))
        .map(|_| ())
        .map_err(crate::sql_error)
}

fn run(conn: Connection, rx: mpsc::Receiver<Op>) {
    while let Ok(first) = rx.recv() {
        let mut ops = vec![first];
        while ops.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        if let Err(e) = exec(&conn, "BEGIN IMMEDIATE") {
            // Busy past the busy timeout (another process holds the write lock) or worse:
            // run nothing, and tell every caller why.
            for op in ops {
                op(None)(Err(e.clone()));
            }
            continue;
        }
        let replies: Vec<Reply> = ops.into_iter().map(|op| op(Some(&conn))).collect();
        let commit = exec(&conn, "COMMIT");
        if commit.is_err() {
            let _ = exec(&conn, "ROLLBACK");
        }
        for reply in replies {
            reply(commit.clone());
        }
    }
}
