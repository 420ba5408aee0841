//! The job model: what is stored for a job, the options it is enqueued with, and the states
//! it moves through.
//!
//! A job is a row: a kind (which handler runs it), a JSON payload, the options below, and
//! what happened to it — its [`JobState`], attempt count, and one [`AttemptRecord`] per
//! attempt that ended (its error, time and worker). Options are validated when the job is
//! built ([`JobOptions::validate`]), so a bad value is an [`EnqueueError`] at the caller, never
//! a job that poisons its queue.
//!
//! ```text
//!   enqueue ──► scheduled ──(run_at passes)──► available ──claim──► running ──ok──► completed
//!                                   ▲             ▲                   │
//!                                   │             └── lease expired ──┤ (attempt counted)
//!                         retryable ◄──── transient error, attempts left ┤
//!                 discarded (dead letter) ◄── permanent / out of attempts / quarantined
//!                 cancelled ◄── cancel (any state before it ends; a running handler is told)
//! ```

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use windlass_policy::{Backoff, Jitter, RetrySchedule};

/// A job's id: unique in its store, assigned at enqueue, increasing in enqueue order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub i64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where a job is in its life. The first four are "live"; the last three are terminal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum JobState {
    /// Waiting for its `run_at` (enqueued with a delay).
    Scheduled,
    /// Ready to be claimed by a worker.
    Available,
    /// Claimed: a worker holds its lease.
    Running,
    /// An attempt failed and another is due at `run_at`.
    Retryable,
    /// Its handler succeeded.
    Completed,
    /// Cancelled before it finished.
    Cancelled,
    /// Gave up: a permanent error, no attempts left, or quarantined. The dead-letter queue.
    Discarded,
}

impl JobState {
    /// Every state, in lifecycle order.
    pub const ALL: [JobState; 7] = [
        JobState::Scheduled,
        JobState::Available,
        JobState::Running,
        JobState::Retryable,
        JobState::Completed,
        JobState::Cancelled,
        JobState::Discarded,
    ];

    /// The live states: the job may still run.
    pub const LIVE: [JobState; 4] = [
        JobState::Scheduled,
        JobState::Available,
        JobState::Running,
        JobState::Retryable,
    ];

    /// The name stored in the database and shown by the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Scheduled => "scheduled",
            JobState::Available => "available",
            JobState::Running => "running",
            JobState::Retryable => "retryable",
            JobState::Completed => "completed",
            JobState::Cancelled => "cancelled",
            JobState::Discarded => "discarded",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// True for completed, cancelled and discarded.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Cancelled | JobState::Discarded
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// De-duplication: a job enqueued with the key of a job that already exists (in one of
/// `states`, created within `window`) is not inserted; the enqueue returns the existing id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unique {
    /// The key; compared within the job's queue and kind.
    pub key: String,
    /// The states in which an existing job counts as a duplicate (default: the live ones,
    /// i.e. "at most one pending job per key").
    pub states: BTreeSet<JobState>,
    /// Only jobs created at most this long ago count (default: no limit).
    pub window: Option<Duration>,
}

impl Unique {
    /// A key that is unique among live jobs, without a time window.
    pub fn key(key: impl Into<String>) -> Self {
        Unique {
            key: key.into(),
            states: JobState::LIVE.into_iter().collect(),
            window: None,
        }
    }

    /// Duplicates only within `window` of the existing job's creation.
    pub fn within(mut self, window: Duration) -> Self {
        self.window = Some(window);
        self
    }

    /// Duplicates only of jobs in these states.
    pub fn in_states(mut self, states: impl IntoIterator<Item = JobState>) -> Self {
        self.states = states.into_iter().collect();
        self
    }
}

/// Everything about a job except its kind and payload.
#[derive(Debug, Clone, PartialEq)]
pub struct JobOptions {
    /// The queue (default `"default"`): workers fetch from named queues.
    pub queue: String,
    /// Lower runs first; FIFO within a priority. Default 0.
    pub priority: i16,
    /// Not before this delay from enqueue (default: at once).
    pub delay: Duration,
    /// When to retry and how often (attempts, backoff, jitter, cap): the policy layer's
    /// serialisable schedule, stored with the job.
    pub retry: RetrySchedule,
    /// The handler is stopped after this long (default 5 minutes); the attempt fails as
    /// transient.
    pub timeout: Duration,
    /// Free-form labels, for filtering.
    pub tags: Vec<String>,
    /// De-duplication, if any.
    pub unique: Option<Unique>,
    /// What the queue's per-key limits count this job by (a tenant, a customer, a host);
    /// see [`QueueLimits`](crate::QueueLimits).
    pub limit_key: Option<String>,
    /// The enqueuer's trace context (e.g. a W3C `traceparent`), stored with the job and
    /// handed to each attempt (its span's `trace_context` field and
    /// [`JobContext::trace_context`](crate::JobContext::trace_context)), so one trace can
    /// follow a request across the queue.
    pub trace_context: Option<String>,
}

impl Default for JobOptions {
    /// Queue `default`, priority 0, at once, 25 attempts with exponential backoff from 1 s
    /// (full jitter, capped at 1 h), a 5-minute timeout.
    fn default() -> Self {
        JobOptions {
            queue: "default".into(),
            priority: 0,
            delay: Duration::ZERO,
            retry: RetrySchedule {
                max_attempts: 25,
                backoff: Backoff::exponential(Duration::from_secs(1)),
                jitter: Jitter::Full,
                max_delay: Duration::from_secs(3600),
            },
            timeout: Duration::from_secs(300),
            tags: Vec::new(),
            unique: None,
            limit_key: None,
            trace_context: None,
        }
    }
}

/// The largest payload accepted, as serialised JSON (1 MiB). Bigger data belongs in blob
/// storage with its key in the payload.
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;

/// The deepest nesting of arrays and objects a payload may have: serde_json, which reads
/// every stored payload back, refuses deeper input (its recursion limit), so a deeper
/// payload would be stored and then never read.
pub const MAX_PAYLOAD_DEPTH: usize = 127;

/// How deeply `v` nests arrays and objects (a scalar is 0), without recursion.
fn nesting(v: &serde_json::Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &serde_json::Value>> = match v {
            serde_json::Value::Array(a) => Box::new(a.iter()),
            serde_json::Value::Object(o) => Box::new(o.values()),
            _ => continue,
        };
        deepest = deepest.max(depth + 1);
        stack.extend(children.map(|c| (c, depth + 1)));
    }
    deepest
}
/// The longest a delay, timeout or unique window may be (about 100 years).
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

impl JobOptions {
    /// Checks every option, naming the first that is wrong.
    pub fn validate(&self) -> Result<(), EnqueueError> {
        let bad = |field: &'static str, reason: String| {
            Err(EnqueueError::InvalidOption { field, reason })
        };
        if self.queue.is_empty() || self.queue.len() > 128 {
            return bad("queue", "must be 1 to 128 bytes".into());
        }
        if self.delay > MAX_DURATION {
            return bad("delay", format!("must be at most {MAX_DURATION:?}"));
        }
        if self.timeout.is_zero() || self.timeout > MAX_DURATION {
            return bad("timeout", "must be positive and at most ~100 years".into());
        }
        if let Err(e) = self.retry.validate_as("job retry") {
            return bad("retry", e.to_string());
        }
        if self.tags.iter().any(|t| t.is_empty() || t.len() > 128) {
            return bad("tags", "each tag must be 1 to 128 bytes".into());
        }
        if self
            .limit_key
            .as_ref()
            .is_some_and(|k| k.is_empty() || k.len() > 512)
        {
            return bad("limit_key", "must be 1 to 512 bytes".into());
        }
        if self
            .trace_context
            .as_ref()
            .is_some_and(|t| t.is_empty() || t.len() > 512)
        {
            return bad("trace_context", "must be 1 to 512 bytes".into());
        }
        if let Some(u) = &self.unique {
            if u.key.is_empty() || u.key.len() > 512 {
                return bad("unique.key", "must be 1 to 512 bytes".into());
            }
            if u.states.is_empty() {
                return bad("unique.states", "must name at least one state".into());
            }
            if u.window.is_some_and(|w| w.is_zero() || w > MAX_DURATION) {
                return bad(
                    "unique.window",
                    "must be positive and at most ~100 years".into(),
                );
            }
        }
        Ok(())
    }
}

/// A job ready to be stored: kind, payload and options, already validated.
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    pub(crate) kind: String,
    pub(crate) payload: serde_json::Value,
    pub(crate) options: JobOptions,
}

/// Counts the bytes written to it (a payload's serialised size, without storing it).
struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 = self.0.saturating_add(buf.len());
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl NewJob {
    /// A job of `kind` with a JSON payload. Use [`Queue::enqueue`](crate::Queue::enqueue)
    /// for typed jobs; this is for callers that hold raw JSON (the CLI, an HTTP API).
    pub fn new(
        kind: impl Into<String>,
        payload: serde_json::Value,
        options: JobOptions,
    ) -> Result<Self, EnqueueError> {
        let kind = kind.into();
        if kind.is_empty() || kind.len() > 128 {
            return Err(EnqueueError::InvalidOption {
                field: "kind",
                reason: "must be 1 to 128 bytes".into(),
            });
        }
        options.validate()?;
        let depth = nesting(&payload);
        if depth > MAX_PAYLOAD_DEPTH {
            return Err(EnqueueError::Payload(format!(
                "nested {depth} levels deep; at most {MAX_PAYLOAD_DEPTH} can be read back"
            )));
        }
        // Measured by writing it to a counter: no copy of the payload is made for this.
        let mut counter = ByteCounter(0);
        serde_json::to_writer(&mut counter, &payload)
            .map_err(|e| EnqueueError::Payload(e.to_string()))?;
        let size = counter.0;
        if size > MAX_PAYLOAD_BYTES {
            return Err(EnqueueError::PayloadTooLarge {
                size,
                max: MAX_PAYLOAD_BYTES,
            });
        }
        Ok(NewJob {
            kind,
            payload,
            options,
        })
    }

    /// The kind (which handler runs it).
    pub fn kind(&self) -> &str {
        &self.kind
    }
    /// The payload.
    pub fn payload(&self) -> &serde_json::Value {
        &self.payload
    }
    /// The options.
    pub fn options(&self) -> &JobOptions {
        &self.options
    }
}

/// Why a job could not be enqueued. Nothing was stored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum EnqueueError {
    /// An option (or the kind) is out of range.
    #[error("invalid job option `{field}`: {reason}")]
    InvalidOption {
        /// The option's name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The payload could not be serialised.
    #[error("job payload cannot be serialised: {0}")]
    Payload(String),
    /// The serialised payload is larger than [`MAX_PAYLOAD_BYTES`].
    #[error("job payload is {size} bytes, more than the {max} allowed")]
    PayloadTooLarge {
        /// Its size in bytes.
        size: usize,
        /// The limit.
        max: usize,
    },
}

/// What an enqueue did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    /// The job's id: the new job's, or the existing one's for a duplicate.
    pub id: JobId,
    /// True when a job with the same unique key already existed and nothing was inserted.
    pub duplicate: bool,
}

/// One attempt that ended, as recorded on the job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The worker (its per-boot id) that ran it.
    pub worker: String,
    /// When it ended, in milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// How it ended: `completed`, `failed`, `timed_out`, `lease_expired`, `cancelled`,
    /// `snoozed`.
    pub outcome: String,
    /// The error's message, if it failed.
    pub error: Option<String>,
    /// The error's class (`transient`, `permanent`, `retry_after`, `cancelled`), if it failed.
    pub class: Option<String>,
}

/// A stored job, as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    /// Its id.
    pub id: JobId,
    /// Its kind.
    pub kind: String,
    /// Its queue.
    pub queue: String,
    /// Its payload.
    pub payload: serde_json::Value,
    /// Where it is now.
    pub state: JobState,
    /// Its priority (lower first).
    pub priority: i16,
    /// Attempts started so far (a claim counts one).
    pub attempt: u32,
    /// Its retry schedule.
    pub retry: RetrySchedule,
    /// Its hard timeout.
    pub timeout: Duration,
    /// Its tags.
    pub tags: Vec<String>,
    /// Its unique key, if any.
    pub unique_key: Option<String>,
    /// Its limit key, if any.
    pub limit_key: Option<String>,
    /// The enqueuer's trace context, if any.
    pub trace_context: Option<String>,
    /// When it was enqueued (ms since the Unix epoch).
    pub created_at_ms: i64,
    /// When it may run next (ms since the Unix epoch).
    pub run_at_ms: i64,
    /// When it reached a terminal state.
    pub finished_at_ms: Option<i64>,
    /// The worker holding its lease, while running.
    pub locked_by: Option<String>,
    /// How many of its attempts ended in an expired lease.
    pub lease_expiries: u32,
    /// True once a cancellation was requested while it ran.
    pub cancel_requested: bool,
    /// The last progress its handler reported.
    pub progress: Option<serde_json::Value>,
    /// Every attempt that ended, oldest first.
    pub attempts: Vec<AttemptRecord>,
}

#[cfg(test)]
mod tests {
    /// A payload nested `depth` levels deep.
    fn nested(depth: usize) -> serde_json::Value {
        let mut v = serde_json::json!(1);
        for i in 0..depth {
            v = if i % 2 == 0 {
                serde_json::json!([v])
            } else {
                serde_json::json!({ "k": v })
            };
        }
        v
    }

    #[test]
    fn payloads_nested_deeper_than_serde_json_reads_back_are_refused() {
        use super::*;
        for depth in [0, 1, 5, MAX_PAYLOAD_DEPTH] {
            let p = nested(depth);
            let text = serde_json::to_string(&p).unwrap();
            assert!(
                serde_json::from_str::<serde_json::Value>(&text).is_ok(),
                "{depth}"
            );
            assert!(
                NewJob::new("k", p, JobOptions::default()).is_ok(),
                "{depth}"
            );
        }
        // One level more is what serde_json refuses to read back: the limit is exact.
        let p = nested(MAX_PAYLOAD_DEPTH + 1);
        let text = serde_json::to_string(&p).unwrap();
        assert!(serde_json::from_str::<serde_json::Value>(&text).is_err());
        let err = NewJob::new("k", p, JobOptions::default()).unwrap_err();
        assert!(
            matches!(&err, EnqueueError::Payload(m) if m.contains("nested 128 levels deep")),
            "{err}"
        );
    }

    use super::*;

    fn opts() -> JobOptions {
        JobOptions::default()
    }

    #[test]
    fn states_round_trip_their_names() {
        for s in JobState::ALL {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
        }
        assert_eq!(JobState::parse("done"), None);
        assert!(JobState::LIVE.iter().all(|s| !s.is_terminal()));
        assert_eq!(JobState::ALL.iter().filter(|s| s.is_terminal()).count(), 3);
    }

    #[test]
    fn every_bad_option_names_its_field() {
        let cases: Vec<(&str, JobOptions)> = vec![
            (
                "queue",
                JobOptions {
                    queue: String::new(),
                    ..opts()
                },
            ),
            (
                "delay",
                JobOptions {
                    delay: Duration::MAX,
                    ..opts()
                },
            ),
            (
                "timeout",
                JobOptions {
                    timeout: Duration::ZERO,
                    ..opts()
                },
            ),
            (
                "retry",
                JobOptions {
                    retry: RetrySchedule {
                        max_attempts: 0,
                        ..opts().retry
                    },
                    ..opts()
                },
            ),
            (
                "tags",
                JobOptions {
                    tags: vec![String::new()],
                    ..opts()
                },
            ),
            (
                "limit_key",
                JobOptions {
                    limit_key: Some(String::new()),
                    ..opts()
                },
            ),
            (
                "trace_context",
                JobOptions {
                    trace_context: Some("x".repeat(513)),
                    ..opts()
                },
            ),
            (
                "unique.key",
                JobOptions {
                    unique: Some(Unique::key("")),
                    ..opts()
                },
            ),
            (
                "unique.states",
                JobOptions {
                    unique: Some(Unique::key("k").in_states([])),
                    ..opts()
                },
            ),
            (
                "unique.window",
                JobOptions {
                    unique: Some(Unique::key("k").within(Duration::ZERO)),
                    ..opts()
                },
            ),
        ];
        for (field, o) in cases {
            match o.validate() {
                Err(EnqueueError::InvalidOption { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: expected InvalidOption, got {other:?}"),
            }
        }
        assert_eq!(opts().validate(), Ok(()));
    }

    #[test]
    fn zero_attempts_is_rejected_with_the_schedules_reason() {
        let o = JobOptions {
            retry: RetrySchedule {
                max_attempts: 0,
                ..opts().retry
            },
            ..opts()
        };
        let msg = o.validate().unwrap_err().to_string();
        assert!(msg.contains("max_attempts"), "{msg}");
    }

    #[test]
    fn huge_payloads_and_empty_kinds_are_refused() {
        let big = serde_json::Value::String("x".repeat(MAX_PAYLOAD_BYTES));
        assert!(matches!(
            NewJob::new("k", big, opts()),
            Err(EnqueueError::PayloadTooLarge {
                max: MAX_PAYLOAD_BYTES,
                size,
            }) if size == MAX_PAYLOAD_BYTES + 2
        ));
        assert!(matches!(
            NewJob::new("", serde_json::json!({}), opts()),
            Err(EnqueueError::InvalidOption { field: "kind", .. })
        ));
        let just_fits = serde_json::Value::String("x".repeat(MAX_PAYLOAD_BYTES - 2));
        assert!(NewJob::new("k", just_fits, opts()).is_ok());
    }
}
