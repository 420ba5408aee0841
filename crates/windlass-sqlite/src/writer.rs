//! The one thread that owns the SQLite connection, and its group commit.
//!
//! SQLite allows one writer at a time, and a commit costs a WAL write (and, at
//! `synchronous=FULL`, an fsync). So every operation is sent to one thread, which takes all
//! operations waiting at that moment, runs each in its own savepoint inside one
//! `BEGIN IMMEDIATE` transaction, commits once, and only then answers each caller. A caller
//! is never told "done" before its change is committed; an operation that fails rolls back
//! only its own savepoint. An operation alone in its group needs no savepoint: if it fails,
//! the whole transaction is rolled back instead (under load most groups hold one claim or
//! one batch of completions, so this saves two statements per commit).

use std::sync::mpsc;
use std::thread;

use rusqlite::Connection;
use tokio::sync::oneshot;
use windlass_queue::StoreError;

/// What an operation leaves behind: the answer to send once the commit's fate is known.
type Reply = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// An operation on the connection (`None`: the transaction could not start; run nothing),
/// told whether it is alone in its transaction. It returns whether it succeeded, and its reply.
type Op = Box<dyn FnOnce(Option<(&Connection, Alone)>) -> (bool, Reply) + Send>;

/// Whether an operation is the only one in its transaction (then it needs no savepoint).
#[derive(Clone, Copy)]
struct Alone(bool);

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
        let op: Op = Box::new(move |conn: Option<(&Connection, Alone)>| {
            // Without a transaction the commit's error is what the caller gets.
            let result = match conn {
                Some((conn, Alone(true))) => f(conn),
                Some((conn, Alone(false))) => in_savepoint(conn, f),
                None => Err(StoreError::Closed),
            };
            let ok = result.is_ok();
            let reply: Reply = Box::new(move |commit: Result<(), StoreError>| {
                let out = commit.and(result);
                if out.is_ok()
                    && let Some(hook) = after_commit
                {
                    hook();
                }
                let _ = tx.send(out);
            });
            (ok, reply)
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
                op(None).1(Err(e.clone()));
            }
            continue;
        }
        let alone = Alone(ops.len() == 1);
        let mut all_ok = true;
        let replies: Vec<Reply> = ops
            .into_iter()
            .map(|op| {
                let (ok, reply) = op(Some((&conn, alone)));
                all_ok &= ok;
                reply
            })
            .collect();
        let commit = if alone.0 && !all_ok {
            // The lone operation failed without a savepoint: undo all it did. Its reply
            // carries its own error.
            exec(&conn, "ROLLBACK")
        } else {
            let commit = exec(&conn, "COMMIT");
            if commit.is_err() {
                let _ = exec(&conn, "ROLLBACK");
            }
            commit
        };
        for reply in replies {
            reply(commit.clone());
        }
    }
}

/// Holds `w`'s thread inside an operation until the returned sender is sent to (or
/// dropped); returns once the thread is held, with the held operation's task.
#[cfg(test)]
pub(crate) async fn hold(
    w: &Writer,
) -> (
    mpsc::Sender<()>,
    tokio::task::JoinHandle<Result<(), StoreError>>,
) {
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (held_tx, held_rx) = oneshot::channel::<()>();
    let w = w.clone();
    let held = tokio::spawn(async move {
        w.call(
            move |_| {
                let _ = held_tx.send(());
                let _ = go_rx.recv();
                Ok(())
            },
            None,
        )
        .await
    });
    let _ = held_rx.await;
    (go_tx, held)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer() -> Writer {
        let conn = Connection::open_in_memory().expect("in-memory database");
        conn.execute_batch("CREATE TABLE t (v INTEGER NOT NULL)")
            .expect("table");
        Writer::spawn(conn).expect("writer thread")
    }

    fn insert_then(v: i64, fail: bool) -> impl FnOnce(&Connection) -> Result<(), StoreError> {
        move |c| {
            c.execute("INSERT INTO t (v) VALUES (?1)", [v])
                .map_err(crate::sql_error)?;
            if fail {
                return Err(StoreError::Corrupt(format!(
                    "op {v} failed after its insert"
                )));
            }
            Ok(())
        }
    }

    async fn values(w: &Writer) -> Vec<i64> {
        w.call(
            |c| {
                let mut s = c
                    .prepare("SELECT v FROM t ORDER BY v")
                    .map_err(crate::sql_error)?;
                let rows = s.query_map([], |r| r.get(0)).map_err(crate::sql_error)?;
                rows.collect::<Result<Vec<i64>, _>>()
                    .map_err(crate::sql_error)
            },
            None,
        )
        .await
        .expect("read")
    }

    #[tokio::test]
    async fn a_lone_operation_that_fails_leaves_nothing_behind() {
        let w = writer();
        let err = w.call(insert_then(1, true), None).await;
        assert!(matches!(err, Err(StoreError::Corrupt(_))), "{err:?}");
        w.call(insert_then(2, false), None).await.expect("insert");
        assert_eq!(
            values(&w).await,
            vec![2],
            "the failed op's insert was rolled back"
        );
    }

    #[tokio::test]
    async fn a_failing_operation_in_a_group_rolls_back_only_itself() {
        let w = writer();
        // Hold the writer so the next three operations queue up and share one transaction.
        let (hold_tx, blocker) = hold(&w).await;
        let (a, b, c) = (w.clone(), w.clone(), w.clone());
        let ops = tokio::spawn(async move {
            tokio::join!(
                a.call(insert_then(1, false), None),
                b.call(insert_then(2, true), None),
                c.call(insert_then(3, false), None),
            )
        });
        // On this current-thread runtime one yield runs `ops` until all three calls have
        // sent their operation and wait; then release the writer: they form one group.
        tokio::task::yield_now().await;
        let _ = hold_tx.send(());
        blocker.await.expect("blocker").expect("blocker op");
        let (r1, r2, r3) = ops.await.expect("ops");
        assert!(r1.is_ok() && r3.is_ok(), "{r1:?} {r3:?}");
        assert!(r2.is_err());
        assert_eq!(values(&w).await, vec![1, 3]);
    }
}
