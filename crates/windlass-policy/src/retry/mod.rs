//! Retry: try a failed operation again, politely.
//!
//! Retries turn a transient failure into a success, and, done carelessly, turn a struggling
//! service into a dead one. [`Retry`] retries only what its [`ErrorClass`] says may succeed,
//! waits a jittered backoff between attempts, honours `Retry-After`, never sleeps after the
//! last attempt, never starts a backoff that would overrun the deadline, and can draw from a
//! shared [`RetryBudget`] so retries stay a bounded share of traffic.
//!
//! When it gives up it says why and how many attempts it made
//! ([`PolicyError::RetriesExhausted`]); a permanent error is returned as it is, after one
//! attempt.
//!
//! **Cancellation:** dropping the call's future cancels the running attempt or the pending
//! backoff sleep; nothing is retried afterwards. An error classified
//! [`Cancelled`](ErrorClass::Cancelled) is never retried.
//!
//! **When not to use it:** for non-idempotent work that may have reached the other side.
//! Mark such calls with [`Context::with_idempotent`]`(false)`: they are then retried only
//! when a policy rejected them locally before they were sent.
//!
//! ```
//! use std::time::Duration;
//! use windlass_policy::{Backoff, Jitter, PolicyExt, Retry};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let retry = Retry::builder()
//!     .max_attempts(4)
//!     .backoff(Backoff::exponential(Duration::from_millis(100)))
//!     .jitter(Jitter::Full)
//!     .deadline(Duration::from_secs(5))
//!     .build()
//!     .unwrap();
//! let calls = std::sync::atomic::AtomicU32::new(0);
//! let out = retry
//!     .call(|| async {
//!         let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
//!         if n < 2 { Err("flaky") } else { Ok(n) }
//!     })
//!     .await;
//! assert_eq!(out.unwrap(), 2);
//! # }
//! ```

pub mod backoff;
mod budget;
pub mod packed;
pub mod schedule;

use crate::time::saturating_add;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::Counter;
use tokio::time::Instant;

pub use backoff::{Backoff, Jitter};
pub use budget::RetryBudget;
pub use packed::PackedSchedule;
pub use schedule::{RetryAt, RetrySchedule};

use crate::classify::ErrorClass;
use crate::config::{ConfigError, ensure};
use crate::context::Context;
use crate::error::{GaveUp, PolicyError};
use crate::observe::{self, Inspect, PolicyKind, PolicySnapshot, PolicyState};
use crate::policy::Policy;

/// What a retry hook is told before each backoff sleep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryEvent<'a> {
    /// The retry policy's name.
    pub policy: &'a str,
    /// The attempt that just failed (1 = the first call).
    pub attempt: u32,
    /// How long the policy will wait before the next attempt.
    pub delay: Duration,
    /// The failed attempt's error class.
    pub class: ErrorClass,
    /// The failed attempt's error kind (`"operation"`, `"timeout"`, `"circuit_open"`, ...).
    pub error_kind: &'static str,
}

type RetryHook = Arc<dyn Fn(&RetryEvent<'_>) + Send + Sync>;

/// Builds a [`Retry`]. Defaults: 3 attempts, exponential backoff from 100 ms doubling, full
/// jitter, delays capped at 30 s, no deadline, no budget.
#[derive(Clone)]
pub struct RetryBuilder {
    name: Option<Arc<str>>,
    schedule: RetrySchedule,
    deadline: Option<Duration>,
    budget: Option<Arc<RetryBudget>>,
    hook: Option<RetryHook>,
    seed: Option<u64>,
}

impl std::fmt::Debug for RetryBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryBuilder")
            .field("name", &self.name)
            .field("schedule", &self.schedule)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl RetryBuilder {
    /// Names the policy (for metrics, tracing and [`observe::snapshot`]).
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Total attempts, the first call included (at least 1).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.schedule.max_attempts = n;
        self
    }

    /// The whole schedule at once (attempts, backoff, jitter, cap), e.g. one read from a
    /// job's stored options. The setters below change one field of it.
    pub fn schedule(mut self, schedule: RetrySchedule) -> Self {
        self.schedule = schedule;
        self
    }

    /// The backoff schedule.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.schedule.backoff = backoff;
        self
    }

    /// The jitter applied to each delay.
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.schedule.jitter = jitter;
        self
    }

    /// The cap on any single backoff delay (a `Retry-After` hint may ask for longer).
    pub fn max_delay(mut self, cap: Duration) -> Self {
        self.schedule.max_delay = cap;
        self
    }

    /// An overall budget for the call, all attempts and waits included. An outer deadline
    /// (from the [`Context`]) applies too; the earlier one wins.
    pub fn deadline(mut self, budget: Duration) -> Self {
        self.deadline = Some(budget);
        self
    }

    /// Draws every retry from this budget (share it between policies that call the same
    /// service).
    pub fn budget(mut self, budget: Arc<RetryBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Calls `hook` before each backoff sleep.
    pub fn on_retry(mut self, hook: impl Fn(&RetryEvent<'_>) + Send + Sync + 'static) -> Self {
        self.hook = Some(Arc::new(hook));
        self
    }

    /// Makes the jitter deterministic (for tests and simulations).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Validates the settings and builds the policy.
    pub fn build(self) -> Result<Retry, ConfigError> {
        const P: &str = "retry";
        self.schedule.validate_as(P)?;
        if let Some(d) = self.deadline {
            ensure(d > Duration::ZERO, P, "deadline", "must be positive")?;
        }
        let name = self.name.unwrap_or_else(|| observe::default_name("retry"));
        let label = name.to_string();
        let shared = Arc::new(RetryShared {
            schedule: self.schedule,
            deadline: self.deadline,
            budget: self.budget,
            hook: self.hook,
            seed: self.seed,
            seq: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            gave_up: AtomicU64::new(0),
            m_attempts: metrics::counter!("windlass_retry_attempts_total", "name" => label.clone()),
            m_retries: metrics::counter!("windlass_retry_retries_total", "name" => label.clone()),
            m_gave_up: [GaveUp::MaxAttempts, GaveUp::Deadline, GaveUp::Budget, GaveUp::NotIdempotent]
                .map(|r| metrics::counter!("windlass_retry_gave_up_total", "name" => label.clone(), "reason" => gave_up_label(r))),
            name,
        });
        observe::register(&shared);
        Ok(Retry { shared })
    }
}

fn gave_up_label(r: GaveUp) -> &'static str {
    match r {
        GaveUp::MaxAttempts => "max_attempts",
        GaveUp::Deadline => "deadline",
        GaveUp::Budget => "budget",
        GaveUp::NotIdempotent => "not_idempotent",
    }
}

/// Retries failed attempts with backoff and jitter. Cheap to clone: clones share counters.
#[derive(Clone)]
pub struct Retry {
    shared: Arc<RetryShared>,
}

impl std::fmt::Debug for Retry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retry")
            .field("name", &self.shared.name)
            .field("schedule", &self.shared.schedule)
            .finish_non_exhaustive()
    }
}

struct RetryShared {
    name: Arc<str>,
    schedule: RetrySchedule,
    deadline: Option<Duration>,
    budget: Option<Arc<RetryBudget>>,
    hook: Option<RetryHook>,
    seed: Option<u64>,
    seq: AtomicU64,
    calls: AtomicU64,
    retries: AtomicU64,
    gave_up: AtomicU64,
    m_attempts: Counter,
    m_retries: Counter,
    m_gave_up: [Counter; 4],
}

impl Inspect for RetryShared {
    fn inspect(&self) -> PolicySnapshot {
        PolicySnapshot {
            name: self.name.clone(),
            kind: PolicyKind::Retry,
            state: PolicyState::Retry {
                calls: self.calls.load(Ordering::Relaxed),
                retries: self.retries.load(Ordering::Relaxed),
                gave_up: self.gave_up.load(Ordering::Relaxed),
            },
        }
    }
}

impl Retry {
    /// This policy's live state: the same entry [`crate::observe::snapshot`]
    /// lists for it, without going through the process-wide list.
    pub fn snapshot(&self) -> crate::observe::PolicySnapshot {
        crate::observe::Inspect::inspect(&*self.shared)
    }

    /// Starts building a retry policy.
    pub fn builder() -> RetryBuilder {
        RetryBuilder {
            name: None,
            schedule: RetrySchedule::default(),
            deadline: None,
            budget: None,
            hook: None,
            seed: None,
        }
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The schedule this policy follows.
    pub fn schedule(&self) -> &RetrySchedule {
        &self.shared.schedule
    }

    fn give_up<E>(&self, attempts: u32, reason: GaveUp, last: PolicyError<E>) -> PolicyError<E> {
        let s = &self.shared;
        s.gave_up.fetch_add(1, Ordering::Relaxed);
        s.m_gave_up[reason as usize].increment(1);
        tracing::debug!(policy = %s.name, attempts, %reason, error = last.kind(), "retry gave up");
        PolicyError::RetriesExhausted {
            attempts,
            reason,
            last: Box::new(last),
        }
    }
}

impl crate::compose::Compose for Retry {}

impl<T: Send, E: Send> Policy<T, E> for Retry {
    fn execute<Op, Fut>(
        &self,
        cx: Context,
        op: &Op,
    ) -> impl Future<Output = Result<T, PolicyError<E>>> + Send
    where
        Op: Fn(Context) -> Fut + Sync,
        Fut: Future<Output = Result<T, PolicyError<E>>> + Send,
    {
        async move {
            let s = &*self.shared;
            s.calls.fetch_add(1, Ordering::Relaxed);
            if let Some(b) = &s.budget {
                b.deposit();
            }
            let cx = match s.deadline {
                Some(d) => cx.with_deadline(saturating_add(Instant::now(), d)),
                None => cx,
            };
            let mut cursor: Option<schedule::Cursor> = None;
            let mut attempt: u32 = 1;
            loop {
                s.m_attempts.increment(1);
                let acx = cx.with_attempt(attempt);
                let result = match cx.deadline() {
                    Some(deadline) => tokio::time::timeout_at(deadline, op(acx))
                        .await
                        .unwrap_or(Err(PolicyError::DeadlineExceeded)),
                    None => op(acx).await,
                };
                let err = match result {
                    Ok(v) => return Ok(v),
                    Err(e) => e,
                };
                let class = err.class();
                if !class.is_retryable() {
                    // Permanent and cancelled failures go back exactly as they came.
                    return Err(err);
                }
                if !cx.is_idempotent() && err.may_have_reached_upstream() {
                    return Err(self.give_up(attempt, GaveUp::NotIdempotent, err));
                }
                if attempt >= s.schedule.max_attempts {
                    return Err(self.give_up(attempt, GaveUp::MaxAttempts, err));
                }
                let cursor = cursor.get_or_insert_with(|| {
                    schedule::Cursor::new(match s.seed {
                        Some(seed) => seed.wrapping_add(s.seq.fetch_add(1, Ordering::Relaxed)),
                        None => fastrand::u64(..),
                    })
                });
                let mut wait = cursor.next(&s.schedule, attempt);
                if let Some(after) = class.retry_after() {
                    wait = wait.max(after);
                }
                if let Some(deadline) = cx.deadline()
                    && saturating_add(Instant::now(), wait) >= deadline
                {
                    return Err(self.give_up(attempt, GaveUp::Deadline, err));
                }
                if let Some(b) = &s.budget
                    && !b.withdraw()
                {
                    return Err(self.give_up(attempt, GaveUp::Budget, err));
                }
                s.retries.fetch_add(1, Ordering::Relaxed);
                s.m_retries.increment(1);
                if let Some(hook) = &s.hook {
                    hook(&RetryEvent {
                        policy: &s.name,
                        attempt,
                        delay: wait,
                        class,
                        error_kind: err.kind(),
                    });
                }
                tracing::debug!(policy = %s.name, attempt, delay_ms = wait.as_millis() as u64, %class, "retrying");
                drop(err);
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests;
