//! Supervision in the Erlang sense: restart failed work, within limits, then escalate.
//!
//! A worker that dies on a transient fault should come back; a worker that dies ten times a
//! second should not be restarted forever (a crash loop hides the fault and burns CPU). A
//! [`Supervisor`] restarts a failed task (an `Err` or a panic) after a backoff — the policy
//! layer's [`Backoff`] and [`Jitter`], so restarts of many workers do not synchronise — and
//! allows at most `max_restarts` within a sliding `within` window. One more failure
//! *escalates*: the supervisor stops restarting, records the failure as a silent error
//! (see [`spawn_detached`](crate::spawn_detached)) and resolves the task's handle with
//! [`Escalated`], for the next level up to act on.
//!
//! What counts as a reason to restart is the task's [`Restart`] type, as in Erlang/OTP:
//! *transient* (the default) restarts after a failure only and is done after a normal exit;
//! *permanent* restarts after a normal exit too (a server loop that must always run);
//! *temporary* never restarts (the failure is still logged, counted and reported). The
//! restart delay follows a [`RetrySchedule`] (its `max_attempts` is not used: the restart
//! window bounds restarts).
//!
//! ```
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::sync::Arc;
//! use windlass_concurrency::Supervisor;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let supervisor = Supervisor::builder().max_restarts(3).build().unwrap();
//! let runs = Arc::new(AtomicU32::new(0));
//! let r = runs.clone();
//! let handle = supervisor.spawn("flaky-worker", move || {
//!     let r = r.clone();
//!     async move {
//!         if r.fetch_add(1, Ordering::SeqCst) < 2 { Err("transient") } else { Ok(()) }
//!     }
//! });
//! handle.await.unwrap().unwrap(); // failed twice, restarted, then finished
//! assert_eq!(runs.load(Ordering::SeqCst), 3);
//! # }
//! ```

use std::collections::VecDeque;
use std::fmt::Display;
use std::future::Future;
use std::panic::Location;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use windlass_policy::{Backoff, ConfigError, Jitter, RetrySchedule};

use crate::detached::{record_failure, run_caught};
use windlass_policy::{ClassifiedError, ErrorClass};

/// A supervised task gave up: it failed more than `max_restarts` times within the window.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "supervised task '{task}' (spawned at {site}) escalated after {restarts} restarts: {last_failure}"
)]
pub struct Escalated {
    /// The task's name.
    pub task: &'static str,
    /// Where it was spawned.
    pub site: &'static Location<'static>,
    /// Restarts made before giving up.
    pub restarts: u32,
    /// The last failure's message.
    pub last_failure: String,
}

/// The supervisor already retried as much as it was allowed to: permanent for the level
/// above.
impl ClassifiedError for Escalated {
    fn error_class(&self) -> ErrorClass {
        ErrorClass::Permanent
    }
}

/// When a supervised task is restarted (Erlang/OTP's restart types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Restart {
    /// Restart after a failure (an `Err` or a panic); a normal exit ends supervision.
    #[default]
    Transient,
    /// Restart after any exit, normal or not: the task must always be running. Its handle
    /// resolves only when it escalates or is aborted.
    Permanent,
    /// Never restart: one run, whose failure is still logged, counted and returned as
    /// [`Escalated`] with zero restarts.
    Temporary,
}

/// Builds a [`Supervisor`]. Defaults: transient restarts, at most 5 within 60 s,
/// exponential backoff from 100 ms with full jitter, capped at 10 s.
#[derive(Debug, Clone)]
pub struct SupervisorBuilder {
    max_restarts: u32,
    within: Duration,
    schedule: RetrySchedule,
    restart: Restart,
}

impl SupervisorBuilder {
    /// Restarts allowed within the window before escalating. Zero is meaningful: the first
    /// failure escalates (as a temporary task would, but with a restart type kept).
    pub fn max_restarts(mut self, n: u32) -> Self {
        self.max_restarts = n;
        self
    }
    /// The sliding window restarts are counted in.
    pub fn within(mut self, window: Duration) -> Self {
        self.within = window;
        self
    }
    /// The wait before each restart.
    pub fn backoff(mut self, backoff: Backoff, jitter: Jitter, max_delay: Duration) -> Self {
        self.schedule.backoff = backoff;
        self.schedule.jitter = jitter;
        self.schedule.max_delay = max_delay;
        self
    }
    /// The wait before each restart, as a stored schedule (its `max_attempts` is ignored).
    pub fn schedule(mut self, schedule: RetrySchedule) -> Self {
        self.schedule = schedule;
        self
    }
    /// When tasks are restarted (default [`Restart::Transient`]).
    pub fn restart(mut self, restart: Restart) -> Self {
        self.restart = restart;
        self
    }

    /// Validates and builds.
    pub fn build(self) -> Result<Supervisor, ConfigError> {
        self.schedule.validate_as("supervisor")?;
        if self.within.is_zero() {
            return Err(ConfigError::new("supervisor", "within", "must be positive"));
        }
        Ok(Supervisor { cfg: self })
    }
}

/// Restarts failed tasks with backoff, at most `max_restarts` within a window. Cheap to
/// clone; one supervisor can watch many tasks (each has its own restart count).
#[derive(Debug, Clone)]
pub struct Supervisor {
    cfg: SupervisorBuilder,
}

impl Supervisor {
    /// Starts building a supervisor.
    pub fn builder() -> SupervisorBuilder {
        SupervisorBuilder {
            max_restarts: 5,
            within: Duration::from_secs(60),
            schedule: RetrySchedule {
                max_attempts: u32::MAX,
                backoff: Backoff::exponential(Duration::from_millis(100)),
                jitter: Jitter::Full,
                max_delay: Duration::from_secs(10),
            },
            restart: Restart::Transient,
        }
    }

    /// Spawns a supervised task: `start()` makes a fresh run of it, again after each
    /// failure. The handle resolves with `Ok` when a run finishes normally, or
    /// [`Escalated`] when the restart limit is exceeded. Aborting the handle stops the task.
    ///
    /// # Panics
    /// Outside a tokio runtime, like `tokio::spawn`.
    #[track_caller]
    pub fn spawn<F, Fut, E>(
        &self,
        task: &'static str,
        start: F,
    ) -> JoinHandle<Result<(), Escalated>>
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Display + Send + 'static,
    {
        let site = Location::caller();
        let cfg = self.cfg.clone();
        tokio::spawn(supervise(cfg, task, site, start))
    }
}

async fn supervise<F, Fut, E>(
    cfg: SupervisorBuilder,
    task: &'static str,
    site: &'static Location<'static>,
    mut start: F,
) -> Result<(), Escalated>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    let mut failures: VecDeque<Instant> = VecDeque::new();
    let mut restarts: u32 = 0;
    let seed = fastrand::u64(..);
    loop {
        let failure = match run_caught(task, site, start()).await {
            Ok(()) if cfg.restart == Restart::Permanent => {
                restarts += 1;
                tracing::info!(task, site = %site, restarts, "restarting permanent task after a normal exit");
                metrics::counter!("windlass_supervisor_restarts_total", "name" => task, "reason" => "exit").increment(1);
                // A permanent task that keeps exiting is a loop, not a failure: yield so
                // that it cannot starve its runtime thread.
                tokio::task::yield_now().await;
                continue;
            }
            Ok(()) => return Ok(()),
            Err(f) => f,
        };
        let now = Instant::now();
        failures.push_back(now);
        while failures
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > cfg.within)
        {
            failures.pop_front();
        }
        // `failures` includes this one: more than max_restarts failures in the window
        // would need a restart beyond the limit.
        if cfg.restart == Restart::Temporary || failures.len() as u64 > u64::from(cfg.max_restarts)
        {
            let escalated = Escalated {
                task,
                site,
                restarts,
                last_failure: failure.message.clone(),
            };
            record_failure(failure);
            tracing::error!(%escalated, "supervisor escalating");
            return Err(escalated);
        }
        restarts += 1;
        let wait = cfg
            .schedule
            .retry_delay(u32::try_from(failures.len()).unwrap_or(u32::MAX), seed);
        tracing::warn!(task, site = %site, restarts, delay_ms = wait.as_millis() as u64, failure = %failure.message, "restarting supervised task");
        metrics::counter!("windlass_supervisor_restarts_total", "name" => task, "reason" => "failure").increment(1);
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};
    use windlass_test_support::ms;

    fn sup(max: u32, within: Duration) -> Supervisor {
        Supervisor::builder()
            .max_restarts(max)
            .within(within)
            .backoff(Backoff::Constant(ms(10)), Jitter::None, ms(10))
            .build()
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn crash_loop_escalates_after_max_restarts_in_window() {
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let start = Instant::now();
        let out = sup(3, Duration::from_secs(60))
            .spawn("crashy", move || {
                let r = r.clone();
                async move {
                    r.fetch_add(1, Ordering::SeqCst);
                    Err::<(), _>("always")
                }
            })
            .await
            .unwrap();
        let esc = out.unwrap_err();
        assert_eq!(esc.restarts, 3);
        assert_eq!(esc.last_failure, "always");
        assert_eq!(runs.load(Ordering::SeqCst), 4, "first run + 3 restarts");
        assert_eq!(start.elapsed(), ms(30), "three 10 ms backoffs");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_spread_out_beyond_the_window_never_escalate() {
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let out = sup(1, ms(100))
            .spawn("slow-failer", move || {
                let r = r.clone();
                async move {
                    let n = r.fetch_add(1, Ordering::SeqCst);
                    // Each run lives 200 ms, longer than the window, then fails; the 6th succeeds.
                    tokio::time::sleep(ms(200)).await;
                    if n < 5 { Err("late") } else { Ok(()) }
                }
            })
            .await
            .unwrap();
        assert!(out.is_ok());
        assert_eq!(runs.load(Ordering::SeqCst), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn panics_are_restarted_too() {
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let out = sup(5, Duration::from_secs(1))
            .spawn("panicky", move || {
                let r = r.clone();
                async move {
                    if r.fetch_add(1, Ordering::SeqCst) == 0 {
                        panic!("first run panics");
                    }
                    Ok::<(), &str>(())
                }
            })
            .await
            .unwrap();
        assert!(out.is_ok());
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn invalid_config_rejected() {
        let e = Supervisor::builder()
            .within(Duration::ZERO)
            .build()
            .unwrap_err();
        assert_eq!(e.field(), "within");
        let e = Supervisor::builder()
            .backoff(Backoff::Constant(ms(1)), Jitter::Proportional(2.0), ms(1))
            .build()
            .unwrap_err();
        assert_eq!((e.component(), e.field()), ("supervisor", "jitter.factor"));
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_tasks_restart_after_a_normal_exit_too() {
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let mut done_tx = Some(done_tx);
        let handle = Supervisor::builder()
            .restart(Restart::Permanent)
            .build()
            .unwrap()
            .spawn("server-loop", move || {
                let n = r.fetch_add(1, Ordering::SeqCst);
                let tx = if n == 4 { done_tx.take() } else { None };
                async move {
                    if let Some(tx) = tx {
                        let _ = tx.send(());
                    }
                    Ok::<(), &str>(())
                }
            });
        done_rx.await.unwrap();
        assert!(
            runs.load(Ordering::SeqCst) >= 5,
            "exited normally and came back"
        );
        assert!(!handle.is_finished(), "a permanent task runs until aborted");
        handle.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn temporary_tasks_never_restart_but_their_failure_is_reported() {
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let out = Supervisor::builder()
            .restart(Restart::Temporary)
            .build()
            .unwrap()
            .spawn("one-shot", move || {
                r.fetch_add(1, Ordering::SeqCst);
                async { Err::<(), _>("failed once") }
            })
            .await
            .unwrap();
        let esc = out.unwrap_err();
        assert_eq!(
            (esc.restarts, esc.last_failure.as_str()),
            (0, "failed once")
        );
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn transient_tasks_stop_after_a_normal_exit() {
        let runs = Arc::new(AtomicU32::new(0));
        let r = runs.clone();
        let out = sup(5, Duration::from_secs(1))
            .spawn("job", move || {
                r.fetch_add(1, Ordering::SeqCst);
                async { Ok::<(), &str>(()) }
            })
            .await
            .unwrap();
        assert!(out.is_ok());
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }
}
