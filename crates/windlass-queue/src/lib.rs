//! Durable background jobs: typed handlers, a worker runtime, and the storage trait that the
//! SQLite and PostgreSQL backends implement.
//!
//! **The problem.** Work handed to a detached task is lost when the process dies, retried by
//! hand (or not at all) when it fails, and invisible while it runs. A durable queue stores each
//! job before the enqueue returns, runs it on a worker under a lease, retries it on the job's
//! own [`RetrySchedule`](windlass_policy::RetrySchedule), and keeps every attempt's error.
//!
//! **The guarantees.**
//! - An acknowledged enqueue survives a process crash (see the backend for power loss).
//! - A job runs again only if its attempt ended in a retryable error or its lease truly
//!   expired (the worker died or hung); a zombie worker's late result is refused by the
//!   lease's fencing token.
//! - A job that keeps killing its workers is quarantined after `quarantine_after` lease
//!   expiries instead of being retried forever.
//! - A malformed payload, an unknown kind or a bad option is a typed error (or a discarded
//!   job with the decoder's message), never a stuck queue.
//!
//! **The pieces.** [`Job`] (a handler for one kind, over a serde payload), [`Queue`] (enqueue,
//! look up, cancel, replay, wait for a result), [`Worker`] (claims and runs jobs), [`Store`]
//! (the database, implemented by `windlass-sqlite` and `windlass-postgres`), and — behind
//! the `conformance` feature — the suite every backend passes.
//!
//! **When not to use it:** for work that must finish inside the caller's request, use the
//! policy layer in-process; for multi-step processes whose finished steps must not re-run,
//! use the workflow layer built on this one.
//!
//! A runnable "enqueue and run a job" example with a real store is in the `windlass-sqlite`
//! crate's documentation and the README.

mod client;
mod clock;
mod handler;
mod job;
pub mod limits;
mod periodic;
mod store;
mod worker;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use client::{JobEvent, JobEventKind, Queue, QueueError};
pub use clock::{Clock, ManualClock, SystemClock};
pub use handler::{CompletionWriter, Job, JobContext, JobError};
pub use job::{
    AttemptRecord, EnqueueError, Enqueued, JobId, JobOptions, JobRecord, JobState, MAX_DURATION,
    MAX_PAYLOAD_BYTES, NewJob, Unique,
};
pub use limits::{QueueLimits, Rate};
pub use periodic::Periodic;
pub use store::{
    ClaimRequest, ClaimedJob, Fenced, Finish, Heartbeat, JobFilter, Lease, NextState, QueueStats,
    Rescued, Store, StoreError,
};
pub use worker::inline::{InlineEnd, run_claimed, run_claimed_then};
pub use worker::{
    ShutdownReport, Worker, WorkerBuilder, WorkerConfig, WorkerCounts, WorkerError, WorkerHandle,
};

/// Milliseconds in a duration, saturating; for backends converting options to columns.
pub fn duration_ms(d: std::time::Duration) -> i64 {
    clock::millis(d)
}
