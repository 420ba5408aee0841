//! The errors of the workflow layer: what a workflow returns, and what the client reports.

use windlass_queue::{QueueError, StoreError};

/// Why a workflow failed: what its code returns, and what
/// [`RunHandle::result`](crate::RunHandle::result) reports for a failed run.
///
/// A failed run's compensations run (see [`FlowContext::step`](crate::FlowContext::step)).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FlowError {
    /// A step failed after all its attempts (or with a permanent error). Its failure is in
    /// the journal: a replay fails the same way without running it again.
    #[error("step `{step}` failed after {attempts} attempt(s): {message}")]
    StepFailed {
        /// The step's journal key.
        step: String,
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        message: String,
    },
    /// The workflow's own code gave up ([`FlowError::failed`]).
    #[error("{0}")]
    Failed(String),
}

impl FlowError {
    /// A failure of the workflow's own making (a business rule, say).
    pub fn failed(message: impl std::fmt::Display) -> Self {
        FlowError::Failed(message.to_string())
    }
}

/// A workflow's code contradicts its run's journal: it asks for a step in a way the journal
/// cannot answer. Such a run is halted, never silently continued: the message names what the
/// code asked for and what the journal holds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "replay of run `{run}` contradicts its journal: the code asked for {asked}, the journal holds {journaled}"
)]
pub struct ReplayMismatch {
    /// The run.
    pub run: String,
    /// What the code asked for (e.g. ``step `charge` of type Receipt``).
    pub asked: String,
    /// What the journal holds under that key.
    pub journaled: String,
}

/// Why a run could not be started or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The run id is empty or too long.
    #[error("invalid run id {id:?}: {reason}")]
    InvalidId {
        /// The id given.
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A run with this id exists, of another workflow kind.
    #[error("run id `{id}` is taken by a run of workflow `{existing}` (asked to start `{asked}`)")]
    IdTaken {
        /// The id.
        id: String,
        /// The existing run's kind.
        existing: String,
        /// The kind asked for.
        asked: String,
    },
    /// The workflow kind is not registered with these [`Flows`](crate::Flows).
    #[error("workflow `{0}` is not registered")]
    Unregistered(String),
    /// The input could not be serialised.
    #[error("the input of workflow `{kind}` does not serialise: {message}")]
    Input {
        /// The workflow kind.
        kind: String,
        /// The serialiser's message.
        message: String,
    },
    /// An option was out of range.
    #[error("invalid start option `{field}`: {reason}")]
    InvalidOption {
        /// Which option.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The queue refused the run's job.
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// Why waiting for a run's result did not give one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WaitError {
    /// The run failed (its compensations have run).
    #[error("run failed: {0}")]
    Failed(String),
    /// The run was halted: its code contradicts its journal.
    #[error("run halted: {0}")]
    Halted(String),
    /// The run did not finish in time; it goes on.
    #[error("run `{0}` did not finish in time")]
    Timeout(String),
    /// No run has this id.
    #[error("no run `{0}`")]
    NotFound(String),
    /// The run cannot finish: its job ended (cancelled, or discarded after its attempts)
    /// while the run was still unfinished. An operator must look at it.
    #[error("run `{run}` cannot finish: its job is {job_state} while the run is {status}")]
    Stranded {
        /// The run.
        run: String,
        /// Its job's state.
        job_state: &'static str,
        /// The run's status.
        status: &'static str,
    },
    /// The output does not decode into the workflow's output type.
    #[error("the output of run `{run}` does not decode: {message}")]
    Output {
        /// The run.
        run: String,
        /// The decoder's message.
        message: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why [`Flows::run`](crate::Flows::run) returned no output.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The run could not be started.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The run was started (or existed) but did not produce an output.
    #[error(transparent)]
    Wait(#[from] WaitError),
}

/// Why [`Flows::signal`](crate::Flows::signal) delivered nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignalError {
    /// No run has this id.
    #[error("no run `{0}`")]
    NotFound(String),
    /// The run has finished: nothing will ever wait for the signal.
    #[error("run `{run}` is {status}: it takes no more signals")]
    Finished {
        /// The run.
        run: String,
        /// Its status.
        status: &'static str,
    },
    /// The signal's name is not a valid name.
    #[error("invalid signal name: {0}")]
    InvalidName(String),
    /// The payload does not serialise.
    #[error("the payload of signal `{name}` does not serialise: {message}")]
    Payload {
        /// The signal.
        name: String,
        /// The serialiser's message.
        message: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why [`Flows::cancel`](crate::Flows::cancel) cancelled nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CancelError {
    /// No run has this id.
    #[error("no run `{0}`")]
    NotFound(String),
    /// The reason is too long.
    #[error("invalid cancel reason: {0}")]
    InvalidReason(String),
    /// The store failed. The cancel may have been recorded: calling again is safe (it
    /// reports [`CancelOutcome::AlreadyRollingBack`] and wakes the run again).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What [`Flows::cancel`](crate::Flows::cancel) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The run was running: it rolls back now (its running steps are stopped, then the
    /// compensations of its completed steps run, latest first) and ends `failed`.
    Cancelled,
    /// The run was already rolling back (it failed, or was cancelled before): nothing
    /// changed.
    AlreadyRollingBack,
    /// The run is over, in this status: nothing changed.
    Finished(crate::RunStatus),
}

/// Why [`Flows::resume`](crate::Flows::resume) resumed nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResumeError {
    /// No run has this id.
    #[error("no run `{0}`")]
    NotFound(String),
    /// The run is not failed, halted or stranded: it completed, or is still being driven.
    #[error(
        "run `{run}` is {status}: only a failed or halted run, or one whose job is over, can be resumed"
    )]
    NotResumable {
        /// The run.
        run: String,
        /// Its status.
        status: &'static str,
    },
    /// The run's new job could not be built.
    #[error("the run's job: {0}")]
    Job(String),
    /// The store failed; nothing was written.
    #[error(transparent)]
    Store(#[from] StoreError),
}
