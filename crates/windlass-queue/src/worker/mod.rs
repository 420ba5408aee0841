//! The worker runtime: claims jobs from a store, runs their handlers with a bounded
//! concurrency, keeps their leases alive, and stores how each attempt ended.
//!
//! One worker is a handful of tokio tasks around the store:
//! - the **fetcher** claims as many jobs as there are free slots (batched claims, up to
//!   `claims_in_flight` of them on their way at once, so a busy worker is not held to one
//!   claim per commit), and otherwise sleeps until the store says there may be work (or the
//!   poll interval passes);
//! - each job runs in its own task under its hard timeout and a cancellation token;
//! - the **completer** stores finished attempts in batches (one transaction for all that
//!   ended meanwhile), retrying while the store is down — an attempt's end is never dropped;
//! - the **heartbeat** renews every running job's lease, and learns which jobs were cancelled
//!   or lost (a lost lease stops its handler at once: its job may already run elsewhere);
//! - the **rescuer** ends expired leases of crashed workers anywhere, and quarantines jobs that
//!   keep killing their workers.
//!
//! Each worker has a per-boot id, so a restarted process never takes an old lease for its own;
//! every write about a job carries the lease's fencing token, so a zombie's late result is
//! refused by the store.
//!
//! **When not to use it:** to run work that must finish inside a request (use the policy
//! layer in-process), or to run one job synchronously in a test (call the handler).
//!
//! See the `windlass-sqlite` crate for a runnable example with a real store.

mod attempt;
mod fetch;
pub mod inline;
mod run;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::client::Queue;
use crate::handler::{Erased, ErasedJob, Job};
use crate::periodic::Periodic;
use crate::store::Store;

pub use run::{ShutdownReport, WorkerCounts, WorkerHandle};

/// A worker's settings. Every duration must be positive.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerConfig {
    /// The queues it takes jobs from (default `["default"]`).
    pub queues: Vec<String>,
    /// Jobs run at once (default 16).
    pub concurrency: usize,
    /// Jobs claimed ahead of a free handler slot, so a finished handler starts the next job
    /// without a round trip and claims and completions come in batches (default 48, three
    /// times the concurrency: up to 4x the concurrency in flight, as the fastest queues do).
    /// Each claim and each batch of completions is one commit, so this is what lets a
    /// worker go faster than the database commits. A prefetched job holds its lease while it
    /// waits; if the process dies, it is retried after the lease expires. Set it to 0 for
    /// long jobs, where hoarding hurts fairness between workers more than it saves.
    pub prefetch: usize,
    /// At most this many jobs per claim (default 64).
    pub fetch_batch: usize,
    /// Claims a worker keeps in flight at once (default 2). A claim is a round trip and a
    /// commit; while one waits for its commit, the next can already be on its way, so a
    /// busy worker is not held to one claim per commit latency. 1 claims strictly in turn.
    pub claims_in_flight: usize,
    /// How long a claim's lease lasts without a heartbeat (default 30 s).
    pub lease: Duration,
    /// How often leases are renewed (default 10 s; less than `lease`).
    pub heartbeat: Duration,
    /// How long an idle worker waits before looking again when nothing woke it (default 1 s).
    pub poll: Duration,
    /// How often expired leases are swept (default 15 s).
    pub rescue_every: Duration,
    /// How often the depth and lag gauges are refreshed (default 15 s). Their counts read
    /// the whole table, so this stays slow even when leases are swept often.
    pub gauges_every: Duration,
    /// A job whose attempts ended this many times in an expired lease is quarantined
    /// (discarded) instead of retried (default 3; at least 1).
    pub quarantine_after: u32,
    /// How long a cancelled handler may take to notice before it is stopped (default 5 s).
    pub cancel_grace: Duration,
    /// Completed and cancelled jobs are deleted this long after they finished (default 1
    /// day), swept with expired leases, so the table does not grow without bound.
    pub retention: Duration,
    /// Dead letters (discarded jobs) are kept longer, for inspection and replay (default 7
    /// days).
    pub dead_letter_retention: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            queues: vec!["default".into()],
            concurrency: 16,
            prefetch: 48,
            fetch_batch: 64,
            claims_in_flight: 2,
            lease: Duration::from_secs(30),
            heartbeat: Duration::from_secs(10),
            poll: Duration::from_secs(1),
            rescue_every: Duration::from_secs(15),
            gauges_every: Duration::from_secs(15),
            quarantine_after: 3,
            cancel_grace: Duration::from_secs(5),
            retention: Duration::from_secs(24 * 3600),
            dead_letter_retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Why a worker could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// A setting is out of range.
    #[error("invalid worker setting `{field}`: {reason}")]
    InvalidConfig {
        /// The setting.
        field: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// Two handlers were registered for one kind.
    #[error("two handlers registered for job kind `{0}`")]
    DuplicateKind(String),
    /// Two periodic jobs share a name.
    #[error("two periodic jobs named `{0}`")]
    DuplicatePeriodic(String),
    /// No handler was registered.
    #[error("a worker needs at least one handler")]
    NoHandlers,
}

impl WorkerConfig {
    /// Checks every setting, naming the first that is wrong.
    pub fn validate(&self) -> Result<(), WorkerError> {
        let bad = |field, reason| Err(WorkerError::InvalidConfig { field, reason });
        let max = crate::job::MAX_DURATION;
        if self.queues.is_empty() || self.queues.iter().any(String::is_empty) {
            return bad("queues", "must name at least one queue, none empty");
        }
        if self.concurrency == 0 || self.concurrency > 100_000 {
            return bad("concurrency", "must be 1 to 100000");
        }
        if self.prefetch > 100_000 {
            return bad("prefetch", "must be at most 100000");
        }
        if self.fetch_batch == 0 || self.fetch_batch > 10_000 {
            return bad("fetch_batch", "must be 1 to 10000");
        }
        if self.claims_in_flight == 0 || self.claims_in_flight > 64 {
            return bad("claims_in_flight", "must be 1 to 64");
        }
        for (field, d) in [
            ("lease", self.lease),
            ("heartbeat", self.heartbeat),
            ("poll", self.poll),
            ("rescue_every", self.rescue_every),
            ("gauges_every", self.gauges_every),
            ("retention", self.retention),
            ("dead_letter_retention", self.dead_letter_retention),
        ] {
            if d.is_zero() || d > max {
                return bad(field, "must be positive and at most ~100 years");
            }
        }
        if self.cancel_grace > max {
            return bad("cancel_grace", "must be at most ~100 years");
        }
        if self.heartbeat >= self.lease {
            return bad("heartbeat", "must be shorter than the lease");
        }
        if self.quarantine_after == 0 {
            return bad("quarantine_after", "must be at least 1");
        }
        Ok(())
    }
}

/// Builds a [`Worker`].
pub struct WorkerBuilder<S> {
    queue: Queue<S>,
    config: WorkerConfig,
    handlers: HashMap<&'static str, Arc<dyn ErasedJob>>,
    duplicate: Option<String>,
    periodic: Vec<Periodic>,
}

impl<S: Store> WorkerBuilder<S> {
    /// Registers the handler for `J::KIND`.
    pub fn register<J: Job>(mut self, job: J) -> Self {
        if self
            .handlers
            .insert(J::KIND, Arc::new(Erased(Arc::new(job))))
            .is_some()
        {
            self.duplicate.get_or_insert_with(|| J::KIND.to_string());
        }
        self
    }

    /// Schedules a periodic job: this worker enqueues each tick's job unless another process
    /// already did (see [`Periodic`]). Every process may register the same schedule.
    pub fn periodic(mut self, job: Periodic) -> Self {
        self.periodic.push(job);
        self
    }

    /// The queues to take from.
    pub fn queues<I: IntoIterator<Item = impl Into<String>>>(mut self, queues: I) -> Self {
        self.config.queues = queues.into_iter().map(Into::into).collect();
        self
    }

    /// Jobs run at once; also sets the prefetch to three times that and the claim batch to
    /// four times (see [`WorkerConfig::prefetch`]).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.config.concurrency = n;
        self.config.prefetch = n.saturating_mul(3);
        self.config.fetch_batch = n.saturating_mul(4).clamp(1, 10_000);
        self
    }

    /// Jobs claimed ahead of a free handler slot (see [`WorkerConfig::prefetch`]).
    pub fn prefetch(mut self, n: usize) -> Self {
        self.config.prefetch = n;
        self
    }

    /// Replaces every setting.
    pub fn config(mut self, config: WorkerConfig) -> Self {
        self.config = config;
        self
    }

    /// Validates and builds.
    pub fn build(self) -> Result<Worker<S>, WorkerError> {
        if let Some(kind) = self.duplicate {
            return Err(WorkerError::DuplicateKind(kind));
        }
        if self.handlers.is_empty() {
            return Err(WorkerError::NoHandlers);
        }
        self.config.validate()?;
        let mut names: Vec<&str> = self.periodic.iter().map(Periodic::name).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(WorkerError::DuplicatePeriodic(w[0].to_string()));
        }
        Ok(Worker {
            queue: self.queue,
            config: self.config,
            handlers: self.handlers,
            periodic: self.periodic,
        })
    }
}

/// A configured worker; [`start`](Worker::start) runs it.
pub struct Worker<S> {
    pub(crate) queue: Queue<S>,
    pub(crate) config: WorkerConfig,
    pub(crate) handlers: HashMap<&'static str, Arc<dyn ErasedJob>>,
    pub(crate) periodic: Vec<Periodic>,
}

impl<S: Store> Worker<S> {
    /// A builder for a worker on `queue`'s store, sharing its events.
    pub fn builder(queue: &Queue<S>) -> WorkerBuilder<S> {
        WorkerBuilder {
            queue: queue.clone(),
            config: WorkerConfig::default(),
            handlers: HashMap::new(),
            duplicate: None,
            periodic: Vec::new(),
        }
    }

    /// The kinds it has handlers for.
    pub fn kinds(&self) -> Vec<String> {
        let mut k: Vec<String> = self.handlers.keys().map(|k| k.to_string()).collect();
        k.sort();
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bad_setting_names_its_field() {
        let d = WorkerConfig::default;
        let cases = [
            (
                "queues",
                WorkerConfig {
                    queues: vec![],
                    ..d()
                },
            ),
            (
                "concurrency",
                WorkerConfig {
                    concurrency: 0,
                    ..d()
                },
            ),
            (
                "fetch_batch",
                WorkerConfig {
                    fetch_batch: 0,
                    ..d()
                },
            ),
            (
                "claims_in_flight",
                WorkerConfig {
                    claims_in_flight: 0,
                    ..d()
                },
            ),
            (
                "lease",
                WorkerConfig {
                    lease: Duration::ZERO,
                    ..d()
                },
            ),
            (
                "poll",
                WorkerConfig {
                    poll: Duration::MAX,
                    ..d()
                },
            ),
            (
                "heartbeat",
                WorkerConfig {
                    heartbeat: Duration::from_secs(30),
                    ..d()
                },
            ),
            (
                "quarantine_after",
                WorkerConfig {
                    quarantine_after: 0,
                    ..d()
                },
            ),
        ];
        for (field, c) in cases {
            match c.validate() {
                Err(WorkerError::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        assert_eq!(d().validate(), Ok(()));
    }
}
