//! [`RunOptions`]: what a run may be started with besides its input (a deadline, the trace
//! it belongs to), checked when the run starts.

use std::time::Duration;

use windlass_queue::MAX_DURATION;

use crate::error::StartError;

/// A new W3C `traceparent` (version 00, sampled) with random trace and parent ids.
pub(crate) fn new_traceparent() -> String {
    let trace = fastrand::u128(1..);
    let parent = fastrand::u64(1..);
    format!("00-{trace:032x}-{parent:016x}-01")
}

/// Options of one run, for [`Flows::start_with`](crate::Flows::start_with) and
/// [`Flows::run_with`](crate::Flows::run_with).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOptions {
    deadline: Option<Duration>,
    trace_context: Option<String>,
}

impl RunOptions {
    /// The defaults: no deadline.
    pub fn new() -> Self {
        RunOptions::default()
    }

    /// The run must be over within `deadline` of its start: past it, the run is cancelled
    /// as by [`Flows::cancel`](crate::Flows::cancel) (its running steps stopped, its completed steps compensated)
    /// and ends `failed` with "deadline exceeded". A run sleeping past its deadline is woken
    /// at it; one whose code is running notices within
    /// [`cancel_check`](crate::FlowsBuilder::cancel_check); one waiting in the queue (behind the
    /// flows queue's limits, or in a retry's backoff) is cancelled when it is next resumed.
    /// Children inherit it. Measured on the store's clock.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// The trace context the run belongs to (a W3C `traceparent`, 1 to 512 bytes), e.g. the
    /// starting request's: stored with the run's job, it is on every span of every
    /// resumption of the run (the `workflow` span's `trace_context` field) and inherited by
    /// its children, so one trace follows the run across attempts, workers and crashes.
    /// Without one, a new trace is started for the run.
    pub fn trace_context(mut self, trace_context: impl Into<String>) -> Self {
        self.trace_context = Some(trace_context.into());
        self
    }

    pub(crate) fn checked_trace(&self) -> Result<Option<String>, StartError> {
        match &self.trace_context {
            Some(t) if t.is_empty() || t.len() > 512 => Err(StartError::InvalidOption {
                field: "trace_context",
                reason: format!("must be 1 to 512 bytes, got {}", t.len()),
            }),
            other => Ok(other.clone()),
        }
    }

    pub(crate) fn deadline_ms(&self, now_ms: i64) -> Result<Option<i64>, StartError> {
        match self.deadline {
            None => Ok(None),
            Some(d) if d.is_zero() || d > MAX_DURATION => Err(StartError::InvalidOption {
                field: "deadline",
                reason: format!("must be more than zero and at most {MAX_DURATION:?}"),
            }),
            Some(d) => Ok(Some(now_ms.saturating_add(windlass_queue::duration_ms(d)))),
        }
    }
}
