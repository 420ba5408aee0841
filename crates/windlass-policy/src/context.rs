//! The per-call [`Context`]: what outer policies tell inner ones.
//!
//! Each attempt of an operation receives a [`Context`] carrying what outer policies
//! decided — the deadline, the [`Priority`], whether the work is idempotent, which attempt
//! this is, and the attempt's clock reading — so an inner policy can respect it (a retry
//! never sleeps past an outer deadline; a limiter sheds low priorities first). It is a
//! small `Copy` value: passing it costs nothing, and no policy can change what an outer
//! one decided except to tighten the deadline.
//!
//! **When not to use it:** it carries only what policies act on. Request data (headers,
//! tenant ids) belongs in the operation's own closure.
//!
//! ```
//! use std::time::Duration;
//! use tokio::time::Instant;
//! use windlass_policy::{Context, Priority};
//!
//! let soon = Instant::now() + Duration::from_secs(1);
//! let cx = Context::new()
//!     .with_priority(Priority::High)
//!     .with_idempotent(false)
//!     .with_deadline(soon);
//! // A later deadline cannot loosen an earlier one.
//! assert_eq!(cx.with_deadline(soon + Duration::from_secs(5)).deadline(), Some(soon));
//! assert!(!cx.is_idempotent());
//! ```

use tokio::time::Instant;

/// How important a call is. Load shedding drops lower priorities first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[non_exhaustive]
pub enum Priority {
    /// Shed first: prefetches, analytics, retries of background work.
    Low = 0,
    /// Ordinary traffic.
    #[default]
    Normal = 1,
    /// User-facing work that should survive moderate overload.
    High = 2,
    /// Never shed before the limit itself is reached: health checks, payments.
    Critical = 3,
}

impl Priority {
    /// Every priority, lowest first.
    pub const ALL: [Priority; 4] = [
        Priority::Low,
        Priority::Normal,
        Priority::High,
        Priority::Critical,
    ];

    /// A short lowercase name, used as a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Critical => "critical",
        }
    }
}

/// What outer policies tell inner ones about the current call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    deadline: Option<Instant>,
    priority: Priority,
    idempotent: bool,
    attempt: u32,
    /// The attempt's start, once a policy has read the clock: the policies of one attempt
    /// share one clock read instead of taking one each.
    now: Option<Instant>,
}

impl Default for Context {
    fn default() -> Self {
        Context::new()
    }
}

impl Context {
    /// A context with no deadline, normal priority, idempotent work, attempt 1.
    pub fn new() -> Self {
        Context {
            deadline: None,
            priority: Priority::Normal,
            idempotent: true,
            attempt: 1,
            now: None,
        }
    }

    /// The current attempt's start time: the clock as first read by a policy for this
    /// attempt, or read now if none has. Policies pass it inward with
    /// [`with_now`](Self::with_now) so that one attempt costs one clock read; a policy that
    /// waits (for a permit or a slot) passes [`without_now`](Self::without_now) instead, and
    /// a new attempt starts without one.
    pub fn now(&self) -> Instant {
        self.now.unwrap_or_else(Instant::now)
    }

    /// This context with the attempt's start time known.
    pub fn with_now(mut self, now: Instant) -> Self {
        self.now = Some(now);
        self
    }

    /// This context with the start time forgotten (after a wait, it is stale).
    pub fn without_now(mut self) -> Self {
        self.now = None;
        self
    }

    /// The instant by which the whole operation must finish, if any.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// This context with the deadline tightened to `deadline` (a later deadline than the
    /// current one is ignored: an inner policy can only shorten the budget).
    pub fn with_deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(match self.deadline {
            Some(current) if current <= deadline => current,
            _ => deadline,
        });
        self
    }

    /// The call's priority.
    pub fn priority(&self) -> Priority {
        self.priority
    }

    /// This context with another priority.
    pub fn with_priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }

    /// Whether running the work twice is safe. Hedging runs only idempotent work, and a
    /// retry of non-idempotent work happens only when the failed attempt never reached the
    /// other side (it was rejected locally).
    pub fn is_idempotent(&self) -> bool {
        self.idempotent
    }

    /// This context marked idempotent or not.
    pub fn with_idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = idempotent;
        self
    }

    /// Which attempt this is, starting at 1 (set by retry and hedge).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// This context for the given attempt number (a new attempt reads the clock afresh).
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self.now = None;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn deadline_only_tightens() {
        let now = Instant::now();
        let cx = Context::new().with_deadline(now + Duration::from_secs(5));
        let tighter = cx.with_deadline(now + Duration::from_secs(1));
        assert_eq!(tighter.deadline(), Some(now + Duration::from_secs(1)));
        let looser = tighter.with_deadline(now + Duration::from_secs(9));
        assert_eq!(looser.deadline(), Some(now + Duration::from_secs(1)));
    }
}
