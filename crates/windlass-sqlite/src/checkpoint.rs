//! WAL checkpoints on a thread of their own, off the writer's path.
//!
//! In WAL mode a commit appends pages to the `-wal` file; a *checkpoint* copies them back
//! into the database file (and, at `NORMAL` and `FULL`, fsyncs both), so the WAL can start
//! over. SQLite's default runs that checkpoint inside the commit that pushes the WAL past
//! 1,000 pages, on the connection that committed: here, the one writer thread, which every
//! enqueue, claim and completion waits on. Measured in W3 (`windlass bench queue`), the
//! checkpoint and its fsyncs were about 6% of that thread's time.
//!
//! So a file-backed store moves it here. [`install`] replaces SQLite's automatic checkpoint
//! on the writer's connection with a WAL hook: once a commit leaves [`NUDGE_PAGES`] or more
//! in the WAL, the hook nudges this thread, which waits [`PAUSE`] (one checkpoint covers the
//! commits meanwhile) and runs `PRAGMA wal_checkpoint(PASSIVE)` on its own connection. A
//! passive checkpoint takes no lock that writers wait on: it copies what no reader still
//! needs and stops. It changes nothing about what a commit makes durable (the WAL, synced or
//! not per [`crate::Synchronous`], is what a commit writes; a checkpoint only moves
//! committed pages).
//!
//! Only a busy writer hands its checkpoints over: one whose commits each add
//! [`GROUP_PAGES`] or more (group commits under load, where the checkpoint's work sat on the
//! bottleneck thread: W3 +6% at the medians, measured, within a noisy spread). A stream of small commits (one enqueue at a time)
//! keeps SQLite's own checkpoint on the writer: measured, a checkpoint running beside such a
//! stream, with its fsyncs of the file the writer appends to, halved its rate (W1), while an
//! inline checkpoint costs it little. Should the thread fall behind, the hook checkpoints on
//! the writer itself at [`BACKSTOP_PAGES`]. An idle store costs nothing: the thread sleeps
//! until the next nudge. It ends when the writer's connection closes (the hook owns its
//! handle).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, Thread};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

/// How long the thread waits after a nudge before it checkpoints: commits in that time share
/// the checkpoint.
pub(crate) const PAUSE: Duration = Duration::from_millis(10);

/// A commit that leaves this many pages or more in the WAL nudges the thread (SQLite's own
/// automatic checkpoint starts at 1,000 too).
pub(crate) const NUDGE_PAGES: i32 = 1_000;

/// A commit that leaves this many pages or more in the WAL checkpoints on the writer itself.
/// Under steady load the WAL starts over only when a checkpoint has caught up with the
/// writer between two of its transactions; this bound makes sure it does at least every
/// 2,000 pages (8 MB). Measured in W3: 2,000 and 10,000 alike.
pub(crate) const BACKSTOP_PAGES: i32 = 2_000;

/// A commit that adds at least this many pages to the WAL is a busy writer's group commit,
/// whose checkpoints go to the thread. Smaller commits (one enqueue at a time: 1-3 pages)
/// checkpoint on the writer, as SQLite would: measured, a checkpoint thread's fsyncs next to
/// a stream of small commits halved their rate (W1), while a busy writer gained (W3).
pub(crate) const GROUP_PAGES: i32 = 8;

/// The `-wal` file is cut back to this size when the WAL starts over, should a burst (a
/// big bulk enqueue) have grown it past that (`PRAGMA journal_size_limit`).
pub(crate) const WAL_FILE_LIMIT_BYTES: u32 = 16 << 20;

/// Starts the checkpoint thread for the file at `path` and hands its checkpoints over to it
/// from `conn` (the writer's connection), whose automatic checkpoint this replaces. Returns
/// the thread's counters.
pub(crate) fn install(
    conn: &mut Connection,
    path: &Path,
    busy_timeout: Duration,
) -> rusqlite::Result<Arc<Flags>> {
    let checkpointer = Checkpointer::spawn(path, busy_timeout)?;
    let flags = checkpointer.state.clone();
    conn.execute_batch(&format!(
        "PRAGMA journal_size_limit = {WAL_FILE_LIMIT_BYTES}"
    ))?;
    // The WAL's size after the previous commit: what this one added is the difference (or,
    // after the WAL started over, all of it).
    let mut last = 0;
    let mut failing = false;
    // Dropped with the connection: the thread then stops.
    conn.wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, pages: i32| {
        let added = if pages < last { pages } else { pages - last };
        last = pages;
        if pages >= BACKSTOP_PAGES || (pages >= NUDGE_PAGES && added < GROUP_PAGES) {
            // What SQLite's automatic checkpoint does. The commit stands whatever happens
            // here (an error would fail a durable commit): another checkpoint running is no
            // error; anything else is logged once until a checkpoint succeeds again.
            match wal.checkpoint() {
                Ok(()) => failing = false,
                Err(e)
                    if matches!(
                        e.sqlite_error_code(),
                        Some(
                            rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                        )
                    ) => {}
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "a WAL checkpoint on the writer failed");
                    }
                    failing = true;
                }
            }
        } else if pages >= NUDGE_PAGES {
            // The thread checkpoints at most once per pause, however many nudges.
            checkpointer.nudge();
        }
        Ok(())
    }))?;
    Ok(flags)
}

/// The writer's handle on the checkpoint thread.
pub(crate) struct Checkpointer {
    thread: Thread,
    state: Arc<Flags>,
}

/// What the checkpoint thread shares with its handle.
#[derive(Default)]
pub(crate) struct Flags {
    /// A checkpoint was asked for (a nudge) since the last one began.
    pending: AtomicBool,
    /// The writer is gone: stop.
    closed: AtomicBool,
    /// Checkpoints run so far (for tests and the curious).
    pub(crate) runs: AtomicU64,
}

impl Checkpointer {
    /// Opens a second connection to the file at `path` and starts the thread.
    pub(crate) fn spawn(path: &Path, busy_timeout: Duration) -> rusqlite::Result<Checkpointer> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(busy_timeout)?;
        // This connection commits nothing, so the automatic checkpoint never fires on it.
        conn.execute_batch("PRAGMA wal_autocheckpoint = 0")?;
        let state = Arc::new(Flags::default());
        let flags = state.clone();
        let thread = thread::Builder::new()
            .name("windlass-sqlite-checkpoint".into())
            .spawn(move || run(&conn, &flags))
            .map_err(|e| {
                rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                    Some(format!("cannot start the checkpoint thread: {e}")),
                )
            })?
            .thread()
            .clone();
        Ok(Checkpointer { thread, state })
    }

    /// Asks the thread for a checkpoint. Cheap when one is already asked for.
    pub(crate) fn nudge(&self) {
        if !self.state.pending.swap(true, Ordering::AcqRel) {
            self.thread.unpark();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.state.closed.store(true, Ordering::Release);
        self.thread.unpark();
    }
}

fn run(conn: &Connection, flags: &Flags) {
    let mut failing = false;
    loop {
        // `park` may return spuriously: the flags say whether there is work.
        while !flags.pending.load(Ordering::Acquire) && !flags.closed.load(Ordering::Acquire) {
            thread::park();
        }
        if flags.closed.load(Ordering::Acquire) {
            return;
        }
        thread::sleep(PAUSE);
        // Commits from here on ask for the next checkpoint.
        flags.pending.store(false, Ordering::Release);
        flags.runs.fetch_add(1, Ordering::Relaxed);
        match checkpoint(conn) {
            Ok(Done::All) => failing = false,
            Ok(Done::Busy) => {
                // Another checkpoint runs (another process's, or the writer's bound): it
                // may not cover the latest commits. Try again after the pause.
                failing = false;
                flags.pending.store(true, Ordering::Release);
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "a WAL checkpoint failed; the writer's own checkpoint bounds the WAL meanwhile");
                }
                failing = true;
            }
        }
    }
}

/// What a checkpoint did.
enum Done {
    /// Copied what no reader still needs.
    All,
    /// Found another checkpoint running, and did nothing.
    Busy,
}

/// One passive checkpoint.
fn checkpoint(conn: &Connection) -> rusqlite::Result<Done> {
    // The first column is 1 when another connection's checkpoint held the lock.
    let busy: i64 = conn
        .prepare_cached("PRAGMA wal_checkpoint(PASSIVE)")?
        .query_row([], |r| r.get(0))?;
    Ok(if busy == 0 { Done::All } else { Done::Busy })
}

#[cfg(test)]
mod tests {
    use windlass_test_support::ScratchDir;

    use super::*;

    fn file_len(path: &Path) -> u64 {
        std::fs::metadata(path).map_or(0, |m| m.len())
    }

    /// Waits (up to 20 s of real time: the thread really sleeps) until `ok` holds.
    fn until(what: &str, ok: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !ok() {
            assert!(std::time::Instant::now() < deadline, "never: {what}");
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// A new WAL-mode file with one table of blobs `t` (in a directory removed with the
    /// returned guard), and a connection on it that checkpoints by itself only past
    /// `autocheckpoint` pages.
    fn wal_db(name: &str, autocheckpoint: i32) -> (ScratchDir, std::path::PathBuf, Connection) {
        let dir = ScratchDir::new("checkpoint");
        let path = dir.file(name);
        let conn = Connection::open(&path).expect("open");
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
             PRAGMA wal_autocheckpoint = {autocheckpoint}; CREATE TABLE t (x BLOB);"
        ))
        .expect("schema");
        (dir, path, conn)
    }

    /// `n` commits of one blob of `bytes` each.
    fn commit_blobs(conn: &Connection, n: usize, bytes: i64) {
        for _ in 0..n {
            conn.execute("INSERT INTO t VALUES (zeroblob(?1))", [bytes])
                .expect("insert");
        }
    }

    #[test]
    fn a_nudge_copies_committed_pages_into_the_database_file() {
        let (_dir, path, writer) = wal_db("nudge.db", BACKSTOP_PAGES);
        let checkpointer = Checkpointer::spawn(&path, Duration::from_secs(1)).expect("spawn");
        let before = file_len(&path);
        // 2 MB in the WAL: below the writer's own checkpoint, so only the thread moves it.
        commit_blobs(&writer, 32, 65536);
        assert!(
            file_len(&path) < before + 1_000_000,
            "the writer checkpointed by itself: the test proves nothing"
        );
        checkpointer.nudge();
        until("the database file holds the committed pages", || {
            file_len(&path) > before + 2_000_000
        });
        let _ = std::fs::remove_dir_all(path.parent().expect("a directory"));
    }

    /// SQLite before 3.51.3 has the WAL-reset bug: a checkpoint racing a commit on another
    /// connection that restarts the WAL can lose committed transactions. This thread (and
    /// several processes on one file) is that race.
    #[test]
    fn the_bundled_sqlite_has_the_wal_reset_fix() {
        assert!(
            rusqlite::version_number() >= 3_051_003,
            "SQLite {} predates the WAL-reset fix (3.51.3)",
            rusqlite::version()
        );
    }

    /// Small commits keep SQLite's own checkpoint, on the writer, at [`NUDGE_PAGES`];
    /// group-sized commits past it hand the checkpoint to the thread instead.
    #[test]
    fn the_hook_hands_only_group_commits_checkpoints_to_the_thread() {
        let (_dir, path, mut writer) = wal_db("hook.db", 1_000);
        let flags = install(&mut writer, &path, Duration::from_secs(1)).expect("install");
        let before = file_len(&path);
        // Small commits (one page each), past the nudge size: the writer checkpoints.
        commit_blobs(&writer, 1_200, 2000);
        assert!(
            file_len(&path) > before + 1_000_000,
            "small commits past the nudge size were not checkpointed on the writer"
        );
        thread::sleep(PAUSE * 5);
        assert_eq!(
            flags.runs.load(Ordering::Relaxed),
            0,
            "small commits woke the thread"
        );
        // Group-sized commits (16 pages each), 4 MB: past the nudge size again, but with
        // what the first phase left in the WAL (at most a few hundred pages) still below the
        // writer's bound, so only the thread can have copied them.
        let grown = file_len(&path);
        commit_blobs(&writer, 64, 65536);
        until("the thread checkpoints", || {
            flags.runs.load(Ordering::Relaxed) > 0 && file_len(&path) > grown + 2_000_000
        });
        drop(writer);
        until("the thread ends with the connection", || {
            Arc::strong_count(&flags) == 1
        });
        let _ = std::fs::remove_dir_all(path.parent().expect("a directory"));
    }

    #[tokio::test]
    async fn a_file_store_checkpoints_its_commits_on_this_thread() {
        use windlass_queue::{JobOptions, NewJob, Store as _};
        let dir = ScratchDir::new("checkpoint");
        let path = dir.file("store.db");
        let store = crate::SqliteStore::open(&path).await.expect("open");
        let automatic: i64 = store
            .writer
            .call(
                |c| {
                    c.query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
                        .map_err(crate::sql_error)
                },
                None,
            )
            .await
            .expect("the writer's automatic checkpoint");
        assert_eq!(
            automatic, 0,
            "SQLite's automatic checkpoint still runs on the writer"
        );
        let before = file_len(&path);
        // 6 MB of jobs: past the nudge size, below the writer's bound.
        for _ in 0..6 {
            let jobs = (0..16)
                .map(|_| {
                    NewJob::new(
                        "big",
                        serde_json::json!({ "blob": "x".repeat(65_536) }),
                        JobOptions::default(),
                    )
                    .expect("a valid job")
                })
                .collect();
            store.enqueue(jobs).await.expect("enqueue");
        }
        // At least the first nudge's 1,000 pages: the writer checkpoints nothing below its
        // bound of 2,000.
        until("the database file holds the store's commits", || {
            file_len(&path) > before + 3_500_000
        });
        drop(store);
        let _ = std::fs::remove_dir_all(path.parent().expect("a directory"));
    }

    #[test]
    fn without_a_nudge_the_thread_does_nothing_and_a_dropped_handle_stops_it() {
        let (_dir, path, writer) = wal_db("idle.db", BACKSTOP_PAGES);
        let checkpointer = Checkpointer::spawn(&path, Duration::from_secs(1)).expect("spawn");
        let flags = checkpointer.state.clone();
        let before = file_len(&path);
        commit_blobs(&writer, 16, 65536);
        thread::sleep(PAUSE * 5);
        assert!(
            file_len(&path) < before + 500_000,
            "the thread checkpointed without being nudged"
        );
        assert_eq!(flags.runs.load(Ordering::Relaxed), 0);
        drop(checkpointer);
        // The thread has its own reference to the flags until it returns.
        until("the thread ends", || Arc::strong_count(&flags) == 1);
        let _ = std::fs::remove_dir_all(path.parent().expect("a directory"));
    }
}
