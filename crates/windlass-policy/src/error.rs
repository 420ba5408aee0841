//! The one error type every policy returns.
//!
//! [`PolicyError`] keeps the operation's own error untouched in
//! [`PolicyError::Operation`] (with the [`ErrorClass`] it was given), and adds the ways a
//! policy itself can end a call: retries exhausted, a timeout, a spent deadline, or a
//! [`Rejection`] (breaker open, bulkhead full, rate limited, shed). Because every policy
//! returns the same type, policies nest without wrapping errors in errors.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::classify::{ClassifiedError, ErrorClass};
use crate::context::Priority;

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorClass::RetryAfter(d) => write!(f, "retry after {d:?}"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// How a call through one or more policies failed.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum PolicyError<E> {
    /// The operation itself failed. `error` is exactly what it returned.
    Operation {
        /// The operation's error, unchanged.
        error: E,
        /// What the classifier said of it.
        class: ErrorClass,
    },
    /// A retry policy gave up. `last` is the final attempt's error.
    RetriesExhausted {
        /// How many attempts were made in all (the first call included).
        attempts: u32,
        /// Why no further attempt was made.
        reason: GaveUp,
        /// The last attempt's error.
        last: Box<PolicyError<E>>,
    },
    /// One attempt ran longer than its timeout and was cancelled.
    Timeout(Duration),
    /// The whole operation's deadline passed; the pending work was cancelled.
    DeadlineExceeded,
    /// A policy refused to start the work at all; the operation was not called.
    Rejected(Rejection),
}

impl<E> From<Rejection> for PolicyError<E> {
    fn from(r: Rejection) -> Self {
        PolicyError::Rejected(r)
    }
}

impl<E: fmt::Display> fmt::Display for PolicyError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyError::Operation { error, class } => {
                write!(f, "operation failed ({class}): {error}")
            }
            PolicyError::RetriesExhausted {
                attempts,
                reason,
                last,
            } => write!(f, "gave up after {attempts} attempt(s), {reason}: {last}"),
            PolicyError::Timeout(d) => write!(f, "attempt timed out after {d:?}"),
            PolicyError::DeadlineExceeded => f.write_str("deadline exceeded"),
            PolicyError::Rejected(r) => fmt::Display::fmt(r, f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for PolicyError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            PolicyError::Operation { error, .. } => Some(error),
            PolicyError::RetriesExhausted { last, .. } => Some(&**last),
            PolicyError::Rejected(r) => Some(r),
            PolicyError::Timeout(_) | PolicyError::DeadlineExceeded => None,
        }
    }
}

/// Why a retry policy stopped trying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GaveUp {
    /// The configured maximum number of attempts was reached.
    MaxAttempts,
    /// The next backoff would have run past the deadline.
    Deadline,
    /// The retry budget had no retries left: the service is failing too often for retries
    /// to help.
    Budget,
    /// The operation is not idempotent and the failed attempt may have reached the
    /// other side.
    NotIdempotent,
}

impl fmt::Display for GaveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GaveUp::MaxAttempts => "max attempts reached",
            GaveUp::Deadline => "next backoff would overrun the deadline",
            GaveUp::Budget => "retry budget exhausted",
            GaveUp::NotIdempotent => "operation is not idempotent",
        })
    }
}

/// A policy refused the call before the operation ran.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// The circuit breaker is open (or half-open with every probe slot taken).
    #[error("circuit breaker '{name}' is open; may admit again in {retry_after:?}")]
    CircuitOpen {
        /// The breaker's name.
        name: Arc<str>,
        /// How long until the breaker may admit a call again.
        retry_after: Duration,
    },
    /// The bulkhead's concurrent slots and its waiting queue are both full.
    #[error("bulkhead '{name}' is full ({max_concurrent} running, {max_queued} waiting)")]
    BulkheadFull {
        /// The bulkhead's name.
        name: Arc<str>,
        /// Its concurrency limit.
        max_concurrent: usize,
        /// Its waiting-queue limit.
        max_queued: usize,
    },
    /// The call waited for a bulkhead slot longer than the bulkhead's maximum wait.
    #[error("bulkhead '{name}': no slot within {max_wait:?}")]
    BulkheadTimeout {
        /// The bulkhead's name.
        name: Arc<str>,
        /// The maximum wait that ran out.
        max_wait: Duration,
    },
    /// The rate limiter has no permit now, and waiting for one was not allowed or would
    /// take too long.
    #[error("rate limiter '{name}': no permit for {retry_after:?}")]
    RateLimited {
        /// The limiter's name.
        name: Arc<str>,
        /// How long until a permit is available.
        retry_after: Duration,
    },
    /// Load shedding: the concurrency limiter is at its limit for this priority.
    #[error("shed by '{name}': {in_flight} in flight at limit {limit} for {priority:?} priority")]
    Shed {
        /// The limiter's name.
        name: Arc<str>,
        /// The call's priority.
        priority: Priority,
        /// Calls in flight when it was shed.
        in_flight: usize,
        /// The limit that applied to this priority.
        limit: usize,
    },
}

impl Rejection {
    /// A short lowercase reason, used as a metrics label.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::CircuitOpen { .. } => "circuit_open",
            Rejection::BulkheadFull { .. } => "bulkhead_full",
            Rejection::BulkheadTimeout { .. } => "bulkhead_timeout",
            Rejection::RateLimited { .. } => "rate_limited",
            Rejection::Shed { .. } => "shed",
        }
    }
}

/// An open breaker or an empty rate limiter says when to come back; a full bulkhead or a
/// shed call is transient. A rejection never reached the other side.
impl ClassifiedError for Rejection {
    fn error_class(&self) -> ErrorClass {
        match self {
            Rejection::CircuitOpen { retry_after, .. }
            | Rejection::RateLimited { retry_after, .. } => ErrorClass::RetryAfter(*retry_after),
            Rejection::BulkheadFull { .. }
            | Rejection::BulkheadTimeout { .. }
            | Rejection::Shed { .. } => ErrorClass::Transient,
        }
    }
}

/// The same as [`PolicyError::class`].
impl<E> ClassifiedError for PolicyError<E> {
    fn error_class(&self) -> ErrorClass {
        self.class()
    }
}

impl<E> PolicyError<E> {
    /// Wraps an operation's error with its class.
    pub fn operation(error: E, class: ErrorClass) -> Self {
        PolicyError::Operation { error, class }
    }

    /// The class of this failure as every policy sees it.
    ///
    /// Operation errors keep their classifier's answer. A timeout is transient. A spent
    /// deadline and exhausted retries are permanent (an outer retry must not multiply an
    /// inner one's attempts). An open breaker or an empty rate limiter says when to come
    /// back; a full bulkhead or a shed call is transient.
    pub fn class(&self) -> ErrorClass {
        match self {
            PolicyError::Operation { class, .. } => *class,
            PolicyError::RetriesExhausted { .. } | PolicyError::DeadlineExceeded => {
                ErrorClass::Permanent
            }
            PolicyError::Timeout(_) => ErrorClass::Transient,
            PolicyError::Rejected(r) => r.error_class(),
        }
    }

    /// True when the work may have reached the other side (the operation was called).
    /// Rejections never reach it.
    pub fn may_have_reached_upstream(&self) -> bool {
        match self {
            PolicyError::Rejected(_) => false,
            PolicyError::RetriesExhausted { last, .. } => last.may_have_reached_upstream(),
            _ => true,
        }
    }

    /// The operation's own error, if this failure is one (looking through exhausted retries).
    pub fn operation_error(&self) -> Option<&E> {
        match self {
            PolicyError::Operation { error, .. } => Some(error),
            PolicyError::RetriesExhausted { last, .. } => last.operation_error(),
            _ => None,
        }
    }

    /// Consumes the error and returns the operation's own error, if it is one (looking
    /// through exhausted retries).
    pub fn into_operation_error(self) -> Option<E> {
        match self {
            PolicyError::Operation { error, .. } => Some(error),
            PolicyError::RetriesExhausted { last, .. } => last.into_operation_error(),
            _ => None,
        }
    }

    /// The rejection, if a policy refused the call.
    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            PolicyError::Rejected(r) => Some(r),
            _ => None,
        }
    }

    /// A short lowercase kind, used as a metrics label.
    pub fn kind(&self) -> &'static str {
        match self {
            PolicyError::Operation { .. } => "operation",
            PolicyError::RetriesExhausted { .. } => "retries_exhausted",
            PolicyError::Timeout(_) => "timeout",
            PolicyError::DeadlineExceeded => "deadline_exceeded",
            PolicyError::Rejected(r) => r.reason(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_of_policy_failures() {
        let e: PolicyError<&str> = PolicyError::Timeout(Duration::from_secs(1));
        assert_eq!(e.class(), ErrorClass::Transient);
        let e: PolicyError<&str> = PolicyError::DeadlineExceeded;
        assert_eq!(e.class(), ErrorClass::Permanent);
        let e: PolicyError<&str> = Rejection::CircuitOpen {
            name: "b".into(),
            retry_after: Duration::from_secs(3),
        }
        .into();
        assert_eq!(e.class(), ErrorClass::RetryAfter(Duration::from_secs(3)));
        assert!(!e.may_have_reached_upstream());
        let e = PolicyError::RetriesExhausted {
            attempts: 3,
            reason: GaveUp::MaxAttempts,
            last: Box::new(PolicyError::operation(
                std::io::Error::other("boom"),
                ErrorClass::Transient,
            )),
        };
        assert_eq!(e.class(), ErrorClass::Permanent);
        assert_eq!(
            e.operation_error().map(|e| e.to_string()).as_deref(),
            Some("boom")
        );
        assert!(std::error::Error::source(&e).is_some());
        assert!(e.may_have_reached_upstream());
        assert_eq!(
            e.to_string(),
            "gave up after 3 attempt(s), max attempts reached: operation failed (transient): boom"
        );
    }
}
