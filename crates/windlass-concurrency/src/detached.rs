//! Detached tasks that never fail silently.
//!
//! A `tokio::spawn`ed task that returns `Err` or panics just ends: nobody awaits its handle,
//! so nobody hears of it. [`spawn_detached`] runs fire-and-forget work whose every error and
//! panic is logged (`tracing::error!`) with the task's name and the place it was spawned
//! (`#[track_caller]`), counted in `windlass_detached_failures_total{name, kind}`, and kept
//! in a short list of recent failures ([`recent_failures`]) that the golden-signals monitor
//! reports as *silent errors*.
//!
//! **When not to use it:** when the spawner must react to the failure — use a
//! [`Scope`](crate::Scope) — or when the work should be restarted — use a
//! [`Supervisor`](crate::Supervisor).
//!
//! ```
//! use windlass_concurrency::{detached_failures, spawn_detached};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let before = detached_failures();
//! let handle = spawn_detached("flush-metrics", async { Err::<(), _>("disk full") });
//! handle.await.unwrap();
//! assert_eq!(detached_failures(), before + 1);
//! # }
//! ```

use std::collections::VecDeque;
use std::fmt::Display;
use std::future::Future;
use std::panic::{AssertUnwindSafe, Location};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use futures_util::FutureExt;
use tokio::task::JoinHandle;

use crate::scope::panic_message;

/// One failed detached task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetachedFailure {
    /// The task's name.
    pub task: &'static str,
    /// Where it was spawned.
    pub site: &'static Location<'static>,
    /// `"error"` or `"panic"`.
    pub kind: &'static str,
    /// The error's `Display`, or the panic message.
    pub message: String,
}

const RECENT: usize = 64;

static FAILURES: AtomicU64 = AtomicU64::new(0);
static RECENT_FAILURES: Mutex<VecDeque<DetachedFailure>> = Mutex::new(VecDeque::new());

/// Detached tasks that have failed since the process started.
pub fn detached_failures() -> u64 {
    FAILURES.load(Ordering::Relaxed)
}

/// The most recent detached-task failures (up to 64), oldest first.
pub fn recent_failures() -> Vec<DetachedFailure> {
    RECENT_FAILURES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .cloned()
        .collect()
}

pub(crate) fn record_failure(failure: DetachedFailure) {
    FAILURES.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("windlass_detached_failures_total", "name" => failure.task, "kind" => failure.kind)
        .increment(1);
    tracing::error!(
        task = failure.task,
        site = %failure.site,
        kind = failure.kind,
        message = %failure.message,
        "detached task failed"
    );
    let mut recent = RECENT_FAILURES
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if recent.len() == RECENT {
        recent.pop_front();
    }
    recent.push_back(failure);
}

/// Runs `work` to completion, catching a panic; a failure becomes a [`DetachedFailure`].
pub(crate) async fn run_caught<F, T, E>(
    task: &'static str,
    site: &'static Location<'static>,
    work: F,
) -> Result<T, DetachedFailure>
where
    F: Future<Output = Result<T, E>>,
    E: Display,
{
    match AssertUnwindSafe(work).catch_unwind().await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(DetachedFailure {
            task,
            site,
            kind: "error",
            message: e.to_string(),
        }),
        Err(panic) => Err(DetachedFailure {
            task,
            site,
            kind: "panic",
            message: panic_message(&*panic),
        }),
    }
}

/// Spawns fire-and-forget work whose errors and panics are always logged and counted.
///
/// The returned handle resolves when the task ends (it never carries the error: that has
/// been reported already). Dropping the handle detaches the task, as with `tokio::spawn`.
///
/// # Panics
/// Outside a tokio runtime, like `tokio::spawn`.
#[track_caller]
pub fn spawn_detached<F, T, E>(task: &'static str, work: F) -> JoinHandle<()>
where
    F: Future<Output = Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: Display + Send + 'static,
{
    let site = Location::caller();
    tokio::spawn(async move {
        if let Err(failure) = run_caught(task, site, work).await {
            record_failure(failure);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn errors_and_panics_are_recorded_with_their_spawn_site() {
        spawn_detached("t-error", async { Err::<(), _>("nope") })
            .await
            .unwrap();
        spawn_detached("t-panic", async {
            if true {
                panic!("kaboom");
            }
            Ok::<(), &str>(())
        })
        .await
        .unwrap();
        spawn_detached("t-ok", async { Ok::<_, &str>(()) })
            .await
            .unwrap();
        let recent = recent_failures();
        let err = recent.iter().find(|f| f.task == "t-error").unwrap();
        assert_eq!((err.kind, err.message.as_str()), ("error", "nope"));
        assert!(err.site.file().ends_with("detached.rs"));
        let panic = recent.iter().find(|f| f.task == "t-panic").unwrap();
        assert_eq!((panic.kind, panic.message.as_str()), ("panic", "kaboom"));
        assert!(!recent.iter().any(|f| f.task == "t-ok"));
    }
}
