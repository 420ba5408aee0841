//! Wake-ups across processes: a thread that notices other connections' commits.
//!
//! An enqueue in this process wakes this process's idle fetchers directly, after its commit.
//! Another process's enqueue cannot: SQLite has no notifications. So once a worker subscribes
//! to the store's work signal, a thread with its own read-only connection asks
//! `PRAGMA data_version` every `every` (a read of the WAL index in shared memory: no table
//! access, no lock) and bumps the signal when it changed — a commit by any other connection,
//! in this process or another. An idle worker then starts another process's job within about
//! `every` instead of its poll interval. The thread ends within `every` of the store's drop.
//!
//! A bump may be spurious (the commit added no work, or was this process's own): the fetcher
//! then claims nothing and waits again.

use std::path::PathBuf;
use std::sync::Weak;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use tokio::sync::watch;

/// Starts the watcher thread on the file at `path`. The watch's first reading of
/// `data_version` happens before this returns, so a commit made right after the
/// subscription is seen (a thread left to read it later would take that commit as its
/// starting point and miss it).
pub(crate) fn spawn(
    path: PathBuf,
    every: Duration,
    signal: Weak<watch::Sender<u64>>,
) -> std::io::Result<()> {
    let first = open(&path).and_then(|conn| {
        let version = data_version(&conn)?;
        Ok((conn, version))
    });
    std::thread::Builder::new()
        .name("windlass-sqlite-watch".into())
        .spawn(move || run(&path, every, &signal, first))
        .map(|_| ())
}

fn open(path: &PathBuf) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(1))?;
    Ok(conn)
}

fn data_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.prepare_cached("PRAGMA data_version")?
        .query_row([], |r| r.get(0))
}

/// Watches until the store is gone. A failure (the file busy while SQLite recovers from a
/// killed process, say) is logged once and the connection opened again a second later;
/// meanwhile idle workers still poll. After a failure, commits may have gone unseen: the
/// watch wakes the workers once on reconnecting.
fn run(
    path: &PathBuf,
    every: Duration,
    signal: &Weak<watch::Sender<u64>>,
    first: rusqlite::Result<(Connection, i64)>,
) {
    let mut next = Some(first);
    let mut failing = false;
    while signal.strong_count() > 0 {
        let attempt = next.take().unwrap_or_else(|| {
            open(path).and_then(|conn| {
                let version = data_version(&conn)?;
                Ok((conn, version))
            })
        });
        let outcome = attempt.and_then(|(conn, version)| {
            if failing && let Some(signal) = signal.upgrade() {
                signal.send_modify(|n| *n = n.wrapping_add(1));
            }
            watch_until_error(&conn, version, every, signal)
        });
        match outcome {
            Ok(()) => return, // the store is gone
            Err(e) => {
                if !failing {
                    tracing::warn!(
                        error = %e,
                        path = %path.display(),
                        "watching the job store for other processes' commits failed; retrying (idle workers poll meanwhile)"
                    );
                }
                failing = true;
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

fn watch_until_error(
    conn: &Connection,
    mut last: i64,
    every: Duration,
    signal: &Weak<watch::Sender<u64>>,
) -> rusqlite::Result<()> {
    loop {
        std::thread::sleep(every);
        let Some(signal) = signal.upgrade() else {
            return Ok(()); // the store is gone
        };
        let now = data_version(conn)?;
        if now != last {
            last = now;
            signal.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// Waits (up to 20 s of real time: the retry sleeps a real second) until the signal is
    /// past `seen`.
    fn until_bumped(rx: &watch::Receiver<u64>, seen: u64) -> u64 {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let now = *rx.borrow();
            if now != seen {
                return now;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the watch never woke the workers"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_watch_that_cannot_open_the_file_retries_wakes_once_it_can_then_sees_commits() {
        let dir = std::env::temp_dir().join(format!(
            "windlass-watch-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        ));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let path = dir.join("late.db");
        let (tx, rx) = watch::channel(0u64);
        let tx = Arc::new(tx);
        // No file yet: the first open fails, and the watch retries a second later.
        spawn(path.clone(), Duration::from_millis(5), Arc::downgrade(&tx)).expect("spawn");
        let writer = Connection::open(&path).expect("create the file");
        writer
            .execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (x INTEGER);")
            .expect("a table");
        // Reconnecting, it cannot know what it missed: it wakes the workers once.
        let after_reconnect = until_bumped(&rx, 0);
        // From then on, another connection's commit wakes them.
        writer
            .execute("INSERT INTO t VALUES (1)", [])
            .expect("a commit");
        until_bumped(&rx, after_reconnect);
        drop(tx);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
