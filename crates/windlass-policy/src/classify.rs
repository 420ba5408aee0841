//! One vocabulary for failure: every policy asks the same question of an error.
//!
//! A retry must not repeat a `400 Bad Request`, a circuit breaker must not open because a
//! caller sent bad input, and a rate-limited upstream's `Retry-After` should be honoured by
//! whoever waits next. [`Classify`] answers "what kind of failure is this?" once, when the
//! operation fails; the answer ([`ErrorClass`]) travels with the error inside
//! [`PolicyError`](crate::PolicyError), so every policy in a pipeline agrees.
//!
//! ```
//! use std::time::Duration;
//! use windlass_policy::{Classify, ErrorClass};
//!
//! #[derive(Debug)]
//! enum HttpError { Status(u16, Option<u64>), Io }
//!
//! let classify = |e: &HttpError| match e {
//!     HttpError::Status(429 | 503, Some(secs)) => ErrorClass::RetryAfter(Duration::from_secs(*secs)),
//!     HttpError::Status(s, _) if *s >= 500 => ErrorClass::Transient,
//!     HttpError::Status(_, _) => ErrorClass::Permanent,
//!     HttpError::Io => ErrorClass::Transient,
//! };
//! assert_eq!(classify.classify(&HttpError::Status(404, None)), ErrorClass::Permanent);
//! assert_eq!(
//!     classify.classify(&HttpError::Status(429, Some(2))),
//!     ErrorClass::RetryAfter(Duration::from_secs(2)),
//! );
//! ```

use std::time::Duration;

/// What kind of failure an error is. Decides whether it is retried, hedged, counted by a
/// circuit breaker, or handed to a fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorClass {
    /// May succeed if tried again (a 503, a reset connection). Retried, and counted as a
    /// failure by circuit breakers.
    Transient,
    /// Will fail the same way again (a 404, invalid input). Never retried or hedged, returned
    /// to the caller as it is, and not counted by circuit breakers by default.
    Permanent,
    /// Transient, and the other side said when to come back (`Retry-After`). A retry waits at
    /// least this long.
    RetryAfter(Duration),
    /// The work was cancelled (a cancellation token fired). Never retried, hedged, or counted
    /// as a failure.
    Cancelled,
}

impl ErrorClass {
    /// True when trying again may help: [`Transient`](Self::Transient) or
    /// [`RetryAfter`](Self::RetryAfter).
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorClass::Transient | ErrorClass::RetryAfter(_))
    }

    /// The wait the other side asked for, if any.
    pub fn retry_after(self) -> Option<Duration> {
        match self {
            ErrorClass::RetryAfter(d) => Some(d),
            _ => None,
        }
    }

    /// A short lowercase name, used as a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
            ErrorClass::RetryAfter(_) => "retry_after",
            ErrorClass::Cancelled => "cancelled",
        }
    }
}

/// An error that knows its own [`ErrorClass`]: one failure vocabulary across layers.
///
/// Every Windlass error implements it — [`PolicyError`](crate::PolicyError),
/// [`Rejection`](crate::Rejection), [`Refusal`](crate::Refusal),
/// [`ConfigError`](crate::ConfigError), and the concurrency layer's offload, scope,
/// supervisor, map, gather and actor errors — so a policy verdict, an offloaded job's
/// failure and a job handler's own error are read the same way by a retry, a breaker and the
/// durable queue. Implement it for your own error type and classify with
/// [`SelfClassified`] to let the error speak for itself:
///
/// ```
/// use windlass_policy::{ClassifiedError, ErrorClass, Pipeline, Retry, SelfClassified};
///
/// #[derive(Debug)]
/// enum PaymentError { Declined, Unavailable }
///
/// impl ClassifiedError for PaymentError {
///     fn error_class(&self) -> ErrorClass {
///         match self {
///             PaymentError::Declined => ErrorClass::Permanent,
///             PaymentError::Unavailable => ErrorClass::Transient,
///         }
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let pipeline = Pipeline::<(), PaymentError>::builder()
///     .classify(SelfClassified)
///     .retry(Retry::builder().max_attempts(3).build().unwrap())
///     .build();
/// let out = pipeline.call(|| async { Err(PaymentError::Declined) }).await;
/// // A declined payment is permanent: one attempt, and the error keeps its class.
/// assert_eq!(out.unwrap_err().error_class(), ErrorClass::Permanent);
/// # }
/// ```
pub trait ClassifiedError {
    /// What kind of failure this is.
    fn error_class(&self) -> ErrorClass;
}

/// The classifier that asks the error itself ([`ClassifiedError`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct SelfClassified;

impl<E: ClassifiedError> Classify<E> for SelfClassified {
    fn classify(&self, error: &E) -> ErrorClass {
        error.error_class()
    }
}

/// Decides the [`ErrorClass`] of an operation's error.
///
/// Implemented for every `Fn(&E) -> ErrorClass` closure, and by [`AllTransient`], the default.
pub trait Classify<E>: Send + Sync {
    /// Classifies one error.
    fn classify(&self, error: &E) -> ErrorClass;
}

impl<E, F> Classify<E> for F
where
    F: Fn(&E) -> ErrorClass + Send + Sync,
{
    fn classify(&self, error: &E) -> ErrorClass {
        self(error)
    }
}

/// The default classifier: every error is [`ErrorClass::Transient`].
///
/// Right for operations whose errors carry no more information (a bare `io::Error` from a
/// socket). Give a real classifier as soon as some errors are permanent.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllTransient;

impl<E> Classify<E> for AllTransient {
    fn classify(&self, _error: &E) -> ErrorClass {
        ErrorClass::Transient
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_classes() {
        assert!(ErrorClass::Transient.is_retryable());
        assert!(ErrorClass::RetryAfter(Duration::from_secs(1)).is_retryable());
        assert!(!ErrorClass::Permanent.is_retryable());
        assert!(!ErrorClass::Cancelled.is_retryable());
        assert_eq!(
            ErrorClass::RetryAfter(Duration::from_millis(5)).retry_after(),
            Some(Duration::from_millis(5))
        );
        assert_eq!(ErrorClass::Transient.retry_after(), None);
    }

    #[test]
    fn default_classifier_is_transient() {
        assert_eq!(AllTransient.classify(&"x"), ErrorClass::Transient);
    }
}
