//! Typed jobs: a handler for one kind of job, over a serde payload type.
//!
//! Implement [`Job`] for a handler: its `KIND` names the jobs it runs, its `Payload` is what
//! they carry, and [`run`](Job::run) does the work, returning how the attempt ended. The
//! worker decodes the payload (a payload that does not decode is a permanent failure, sent to
//! the dead-letter queue with the decoder's message — it never blocks the queue) and turns the
//! result into the job's next state:
//!
//! | `run` returns | the job |
//! |---|---|
//! | `Ok(())` | completed |
//! | [`JobError::failed`] of a transient error | retryable per its [`RetrySchedule`](windlass_policy::RetrySchedule), or discarded when out of attempts |
//! | [`JobError::retry_after`] | retryable no sooner than asked (and no sooner than the backoff) |
//! | [`JobError::snooze`] | back to scheduled, the attempt not counted |
//! | [`JobError::cancel`] | cancelled |
//! | [`JobError::permanent`] (or a permanent error's class) | discarded at once |
//!
//! Errors are classified by the policy layer's [`ErrorClass`], so an error type that already
//! implements [`ClassifiedError`] carries its class into the queue with
//! [`JobError::classified`].
//!
//! **When not to use it:** for work that must finish before the caller's response (run it
//! in-process, with the policy layer), or for CPU-bound work without an await (a hard timeout
//! cannot stop it: offload it, or check [`JobContext::is_cancelled`]).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use windlass_policy::{ClassifiedError, ErrorClass};

use crate::job::JobId;
use crate::store::{Finish, StoreError};

/// A handler for one kind of job.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use windlass_queue::{Job, JobContext, JobError};
///
/// #[derive(Serialize, Deserialize)]
/// struct Email { to: String }
///
/// struct SendEmail;
///
/// impl Job for SendEmail {
///     const KIND: &'static str = "send_email";
///     type Payload = Email;
///     async fn run(&self, _ctx: JobContext, email: Email) -> Result<(), JobError> {
///         if email.to.is_empty() {
///             return Err(JobError::permanent("no recipient"));
///         }
///         Ok(())
///     }
/// }
/// ```
pub trait Job: Send + Sync + 'static {
    /// The kind name stored with each job; unique among a worker's handlers.
    const KIND: &'static str;
    /// The payload type.
    type Payload: Serialize + DeserializeOwned + Send + 'static;
    /// Runs one attempt.
    fn run(
        &self,
        ctx: JobContext,
        payload: Self::Payload,
    ) -> impl Future<Output = Result<(), JobError>> + Send;
}

/// How an attempt failed.
#[derive(Debug, Clone, PartialEq)]
pub struct JobError {
    pub(crate) message: String,
    pub(crate) kind: JobErrorKind,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum JobErrorKind {
    Class(ErrorClass),
    Snooze(Duration),
}

impl JobError {
    /// A failure that may pass if tried again: retried per the job's schedule.
    pub fn failed(message: impl fmt::Display) -> Self {
        JobError {
            message: message.to_string(),
            kind: JobErrorKind::Class(ErrorClass::Transient),
        }
    }
    /// A failure that will happen again: the job is discarded at once.
    pub fn permanent(message: impl fmt::Display) -> Self {
        JobError {
            message: message.to_string(),
            kind: JobErrorKind::Class(ErrorClass::Permanent),
        }
    }
    /// A transient failure whose other side asked to wait at least `after`.
    pub fn retry_after(after: Duration, message: impl fmt::Display) -> Self {
        JobError {
            message: message.to_string(),
            kind: JobErrorKind::Class(ErrorClass::RetryAfter(after)),
        }
    }
    /// Not now: run again after `after`, without counting this attempt.
    pub fn snooze(after: Duration) -> Self {
        JobError {
            message: format!("snoozed for {after:?}"),
            kind: JobErrorKind::Snooze(after),
        }
    }
    /// Stop: the job is cancelled.
    pub fn cancel(reason: impl fmt::Display) -> Self {
        JobError {
            message: reason.to_string(),
            kind: JobErrorKind::Class(ErrorClass::Cancelled),
        }
    }
    /// Any classified error (the policy layer's, or your own that implements
    /// [`ClassifiedError`]) as a job error of its own class: a `RetryAfter` keeps its wait,
    /// a permanent error is not retried.
    pub fn classified<E: ClassifiedError + fmt::Display + ?Sized>(e: &E) -> Self {
        JobError {
            message: e.to_string(),
            kind: JobErrorKind::Class(e.error_class()),
        }
    }
    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for JobError {}

impl ClassifiedError for JobError {
    fn error_class(&self) -> ErrorClass {
        match self.kind {
            JobErrorKind::Class(c) => c,
            JobErrorKind::Snooze(d) => ErrorClass::RetryAfter(d),
        }
    }
}

/// What a handler knows about the attempt it runs, and how it talks back.
#[derive(Debug, Clone)]
pub struct JobContext {
    pub(crate) id: JobId,
    pub(crate) attempt: u32,
    pub(crate) queue: Arc<str>,
    pub(crate) cancel: CancellationToken,
    pub(crate) progress: mpsc::UnboundedSender<(JobId, serde_json::Value)>,
    pub(crate) trace_context: Option<Arc<str>>,
    /// How this attempt's completion is to be stored, if the handler asked
    /// ([`complete_with`](JobContext::complete_with)).
    pub(crate) completion: CompletionSlot,
}

/// Stores an attempt's completion in a handler's own way: see
/// [`JobContext::complete_with`].
pub type CompletionWriter = Arc<
    dyn Fn(Finish) -> Pin<Box<dyn Future<Output = Result<Option<Finish>, StoreError>> + Send>>
        + Send
        + Sync,
>;

/// Where a handler leaves its [`CompletionWriter`] for the worker to take.
#[derive(Clone, Default)]
pub(crate) struct CompletionSlot(Arc<std::sync::Mutex<Option<CompletionWriter>>>);

impl CompletionSlot {
    fn put(&self, write: CompletionWriter) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(write);
    }
}

impl fmt::Debug for CompletionSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = self.0.lock().is_ok_and(|w| w.is_some());
        f.debug_struct("CompletionSlot").field("set", &set).finish()
    }
}

/// The writer a handler left in `slot`, if any.
pub(crate) fn take_completion(slot: &CompletionSlot) -> Option<CompletionWriter> {
    slot.0
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
}

impl JobContext {
    /// The job's id.
    pub fn id(&self) -> JobId {
        self.id
    }
    /// This attempt's number (1 for the first).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
    /// The job's queue.
    pub fn queue(&self) -> &str {
        &self.queue
    }
    /// The enqueuer's trace context (e.g. a W3C `traceparent`), to continue its trace.
    pub fn trace_context(&self) -> Option<&str> {
        self.trace_context.as_deref()
    }
    /// Fires when the job is cancelled, its worker shuts down past its grace, or its lease is
    /// lost. A handler that awaits should select on it; the worker stops the handler anyway
    /// after the cancel grace.
    pub fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }
    /// Whether [`cancelled`](Self::cancelled) has fired.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
    /// Asks that this attempt's completion be stored by `write` instead of the worker's
    /// batched completion, so that the handler's last write and the job's completion are
    /// **one transaction**: the workflow driver stores a run's end with its job's this way.
    ///
    /// `write` is used only if the handler then returns `Ok(())`: it gets the attempt's end
    /// (a [`Finish`] whose next state is completed, under the attempt's lease) and must store
    /// it, or another end it decides on instead (a snooze, say), fenced exactly as
    /// [`Store::finish`](crate::Store::finish) does. It answers the end it stored, or `None`
    /// if the lease was lost (nothing stored). The worker then counts the attempt and sends
    /// its event by the stored end, as for any attempt. A write that fails transiently is
    /// tried again with backoff until it is stored, the job running under its heartbeated
    /// lease meanwhile (so `write` may be called more than once and must be idempotent in
    /// effect); in an attempt run by [`run_claimed_then`](crate::run_claimed_then), a few
    /// times, as that path tries its own ends. A write the store refuses outright, or a
    /// writer that panics, lets the lease go, and its expiry runs the job again: nothing is
    /// lost. Any other ending (an error, a timeout, a lost lease) is stored as usual and
    /// `write` is dropped. Call it before the handler returns (a later call, from a clone of
    /// the context, is ignored); the last call wins.
    pub fn complete_with<F, Fut>(&self, write: F)
    where
        F: Fn(Finish) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Option<Finish>, StoreError>> + Send + 'static,
    {
        self.completion.put(Arc::new(move |f| Box::pin(write(f))));
    }
    /// Reports progress (any JSON): stored on the job and sent to subscribers. Best effort,
    /// never blocks; the latest value wins.
    pub fn progress(&self, value: impl Serialize) {
        if let Ok(v) = serde_json::to_value(value) {
            let _ = self.progress.send((self.id, v));
        }
    }
}

/// A handler with its payload type erased, as the worker holds it.
pub(crate) type BoxedRun = Pin<Box<dyn Future<Output = Result<(), JobError>> + Send + 'static>>;

pub(crate) trait ErasedJob: Send + Sync + 'static {
    fn run(&self, ctx: JobContext, payload: serde_json::Value) -> BoxedRun;
}

pub(crate) struct Erased<J>(pub(crate) Arc<J>);

impl<J: Job> ErasedJob for Erased<J> {
    fn run(&self, ctx: JobContext, payload: serde_json::Value) -> BoxedRun {
        let job = self.0.clone();
        Box::pin(async move {
            let payload: J::Payload = serde_json::from_value(payload).map_err(|e| {
                JobError::permanent(format!("malformed payload for kind `{}`: {e}", J::KIND))
            })?;
            job.run(ctx, payload).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Unavailable;
    impl fmt::Display for Unavailable {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("503")
        }
    }
    impl ClassifiedError for Unavailable {
        fn error_class(&self) -> ErrorClass {
            ErrorClass::RetryAfter(Duration::from_secs(7))
        }
    }

    #[test]
    fn a_classified_error_keeps_its_class_and_message() {
        let e = JobError::classified(&Unavailable);
        assert_eq!(
            e.error_class(),
            ErrorClass::RetryAfter(Duration::from_secs(7))
        );
        assert_eq!(e.message(), "503");
    }

    #[test]
    fn constructors_carry_their_classes() {
        assert_eq!(JobError::failed("x").error_class(), ErrorClass::Transient);
        assert_eq!(
            JobError::permanent("x").error_class(),
            ErrorClass::Permanent
        );
        assert_eq!(JobError::cancel("x").error_class(), ErrorClass::Cancelled);
        assert_eq!(
            JobError::snooze(Duration::from_secs(3)).kind,
            JobErrorKind::Snooze(Duration::from_secs(3))
        );
    }
}
