//! Durable workflows: multi-step processes whose finished steps never run again after a
//! crash, whose independent steps run in parallel, and whose failure undoes what was done.
//!
//! **The problem.** A checkout reserves stock, charges a card, books a shipment and sends an
//! email. If the process dies after the charge, a plain retry charges the card twice; if the
//! shipment fails, the reservation and the charge must be undone, and a crash in the middle of
//! undoing must not leave half of it done. Hand-written, this is a state machine per process,
//! a status column per step, and a recovery job nobody tests.
//!
//! **What this crate guarantees.** A workflow is ordinary async Rust given a
//! [`FlowContext`]. Each [`step`](FlowContext::step) runs its closure and journals the
//! result before the code sees it; when the run is resumed — after a crash, on any worker —
//! a finished step returns its journaled result without running. A step's effect can repeat
//! only if the process dies after the effect and before its journal write commits (or a
//! worker loses its lease while running it): steps are at-least-once, their *results* exactly
//! once. When the code fails, the compensations of its completed steps
//! ([`compensate_with`](Step::compensate_with)) run latest first, each journaled, so a crash
//! mid-rollback resumes the rollback. [`sleep`](FlowContext::sleep) is a durable timer that
//! holds no worker. Starting a run with an id that exists returns the existing run
//! ([`Flows::start`]).
//!
//! **How it runs.** A run is driven by one job of the durable queue (`windlass-queue`), so
//! leases, fencing, retries and crash recovery are the queue's: any worker with the
//! [`FlowDriver`] registered resumes any run. State lives beside the jobs, in the same
//! SQLite file or PostgreSQL schema ([`FlowStore`]).
//!
//! **When not to use it.** For one call that needs retries or a timeout, use the policy layer;
//! for independent background work, a plain queue job. A workflow pays a journal write per
//! step: it is for processes whose steps have effects worth not repeating.
//!
//! ```
//! use std::time::Duration;
//! use serde::{Deserialize, Serialize};
//! use windlass_flow::{FlowContext, FlowError, Flows, Workflow};
//! use windlass_queue::{Queue, Worker, WorkerConfig};
//! use windlass_sqlite::SqliteStore;
//!
//! struct Greet;
//! impl Workflow for Greet {
//!     const KIND: &'static str = "greet";
//!     type Input = String;
//!     type Output = String;
//!     async fn run(&self, ctx: FlowContext, name: String) -> Result<String, FlowError> {
//!         let greeting: String = ctx
//!             .step("compose", || async { Ok::<_, std::io::Error>(format!("hello, {name}")) })
//!             .await?;
//!         Ok(greeting)
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let queue = Queue::new(SqliteStore::in_memory().await.unwrap());
//! let flows = Flows::builder(&queue).register(Greet).build().unwrap();
//! let worker = Worker::builder(&queue)
//!     .register(flows.driver())
//!     .config(WorkerConfig { queues: vec!["flows".into()], ..WorkerConfig::default() })
//!     .build()
//!     .unwrap()
//!     .start()
//!     .await
//!     .unwrap();
//! let run = flows.start::<Greet>("greet-ada", &"Ada".to_string()).await.unwrap();
//! let out = run.result(Duration::from_secs(10), Duration::from_millis(5)).await.unwrap();
//! assert_eq!(out, "hello, Ada");
//! // Starting it again returns the same run, and runs nothing.
//! let again = flows.start::<Greet>("greet-ada", &"Grace".to_string()).await.unwrap();
//! assert_eq!(again.result(Duration::from_secs(1), Duration::from_millis(5)).await.unwrap(), "hello, Ada");
//! worker.shutdown(Duration::from_secs(5)).await;
//! # }
//! ```

mod client;
mod context;
pub mod driver;
mod error;
pub mod events;
pub mod graph;
mod handle;
mod options;
mod resume;
pub mod store;
mod workflow;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use client::{Flows, FlowsBuilder, MAX_REASON_BYTES, MAX_RUN_ID_BYTES};
pub use context::{FlowContext, MAX_NAME_BYTES, Step};
pub use driver::{DRIVER_KIND, FlowDriver, RunPayload};
pub use error::{
    CancelError, CancelOutcome, FlowError, ReplayMismatch, ResumeError, RunError, SignalError,
    StartError, WaitError,
};
pub use events::{EventError, Events, Published};
pub use handle::RunHandle;
pub use options::RunOptions;
pub use store::{
    EndRun, EntryKind, FlowStore, InlineClaim, JournalEntry, NewRun, Resumed, RunFilter, RunRecord,
    RunStart, RunStatus, Started,
};
pub use workflow::Workflow;
