//! Periodic jobs: a job enqueued once per tick of a fixed period, however many worker
//! processes schedule it.
//!
//! **The problem.** Every worker process runs the same code, so every process would enqueue
//! the nightly report. Ticks here are aligned to the Unix epoch (a 1-hour period ticks on the
//! hour), and each tick's job carries the unique key `periodic:<name>:<tick>` in every state:
//! the first process to enqueue a tick creates the job, every other gets its id back. A tick
//! missed while no worker ran is enqueued once when one starts (the latest missed tick only:
//! a queue that was down for a day does not run 24 hourly reports in a burst).
//!
//! **When not to use it:** for calendar schedules that a fixed period cannot express ("9:00 on
//! weekdays"): enqueue from your own scheduler with a unique key per occurrence, which gives
//! the same once-per-occurrence guarantee.
//!
//! ```
//! use std::time::Duration;
//! use serde::{Deserialize, Serialize};
//! use windlass_queue::{Job, JobContext, JobError, Periodic};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Sweep { older_than_days: u32 }
//! struct SweepUploads;
//! impl Job for SweepUploads {
//!     const KIND: &'static str = "sweep_uploads";
//!     type Payload = Sweep;
//!     async fn run(&self, _ctx: JobContext, _p: Sweep) -> Result<(), JobError> { Ok(()) }
//! }
//!
//! let hourly = Periodic::every::<SweepUploads>("sweep", Duration::from_secs(3600), &Sweep { older_than_days: 7 })
//!     .unwrap();
//! assert_eq!(hourly.tick_at(7_250_000), 7_200_000); // the tick an instant belongs to
//! // Register it with `Worker::builder(&queue).periodic(hourly)`.
//! ```

use std::time::Duration;

use crate::Job;
use crate::clock::millis;
use crate::job::{EnqueueError, Enqueued, JobOptions, JobState, NewJob, Unique};
use crate::store::{Store, StoreError};

/// A job enqueued once per period, however many processes schedule it: each tick's job
/// carries the unique key `periodic:<name>:<tick>` in every state, ticks are aligned to the
/// Unix epoch, and only the latest missed tick is caught up.
#[derive(Debug, Clone)]
pub struct Periodic {
    name: String,
    period_ms: i64,
    kind: String,
    payload: serde_json::Value,
    options: JobOptions,
}

impl Periodic {
    /// A job of `J` with `payload`, once every `period` (at least 1 s), named `name` (unique
    /// among periodic jobs: it is part of each tick's key).
    pub fn every<J: Job>(
        name: impl Into<String>,
        period: Duration,
        payload: &J::Payload,
    ) -> Result<Periodic, EnqueueError> {
        let name = name.into();
        let bad = |field, reason: &str| EnqueueError::InvalidOption {
            field,
            reason: reason.into(),
        };
        if name.is_empty() || name.len() > 128 {
            return Err(bad("periodic.name", "must be 1 to 128 bytes"));
        }
        if period < Duration::from_secs(1) || period > crate::job::MAX_DURATION {
            return Err(bad("periodic.period", "must be between 1 s and ~100 years"));
        }
        let payload =
            serde_json::to_value(payload).map_err(|e| EnqueueError::Payload(e.to_string()))?;
        Ok(Periodic {
            name,
            period_ms: millis(period),
            kind: J::KIND.to_string(),
            payload,
            options: JobOptions::default(),
        })
    }

    /// The options of each tick's job (its queue, priority, retries, timeout...). A unique
    /// key or delay given here is replaced by the tick's.
    pub fn options(mut self, options: JobOptions) -> Self {
        self.options = options;
        self
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The queue its jobs go to.
    pub fn queue(&self) -> &str {
        &self.options.queue
    }

    /// The period.
    pub fn period(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.period_ms).unwrap_or(0))
    }

    /// The tick an instant (ms since the Unix epoch) belongs to: the latest multiple of the
    /// period at or before it.
    pub fn tick_at(&self, now_ms: i64) -> i64 {
        now_ms - now_ms.rem_euclid(self.period_ms)
    }

    /// Enqueues the current tick's job unless some process already did; returns it (with
    /// `duplicate: true` when it existed).
    pub async fn enqueue_due<S: Store>(&self, store: &S) -> Result<Enqueued, StoreError> {
        let tick = self.tick_at(store.now_ms());
        let options = JobOptions {
            delay: Duration::ZERO,
            unique: Some(
                Unique::key(format!("periodic:{}:{tick}", self.name)).in_states(JobState::ALL),
            ),
            ..self.options.clone()
        };
        let job = NewJob::new(self.kind.clone(), self.payload.clone(), options)
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let mut out = store.enqueue(vec![job]).await?;
        out.pop()
            .ok_or_else(|| StoreError::Corrupt("enqueue returned nothing".into()))
    }

    /// How long from `now_ms` until the next tick.
    pub fn until_next_tick(&self, now_ms: i64) -> Duration {
        let next = self.tick_at(now_ms) + self.period_ms;
        Duration::from_millis(u64::try_from(next - now_ms).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::JobError;
    use crate::handler::JobContext;

    struct Nothing;
    impl Job for Nothing {
        const KIND: &'static str = "nothing";
        type Payload = ();
        async fn run(&self, _ctx: JobContext, _p: ()) -> Result<(), JobError> {
            Ok(())
        }
    }

    #[test]
    fn ticks_align_to_the_epoch_and_the_next_is_one_period_on() {
        let p = Periodic::every::<Nothing>("p", Duration::from_secs(60), &()).unwrap();
        assert_eq!(p.tick_at(0), 0);
        assert_eq!(p.tick_at(59_999), 0);
        assert_eq!(p.tick_at(60_000), 60_000);
        assert_eq!(p.tick_at(-1), -60_000);
        assert_eq!(p.until_next_tick(59_000), Duration::from_secs(1));
        assert_eq!(p.until_next_tick(60_000), Duration::from_secs(60));
    }

    #[test]
    fn bad_names_and_periods_are_refused() {
        let e = Periodic::every::<Nothing>("", Duration::from_secs(60), &()).unwrap_err();
        assert!(matches!(
            e,
            EnqueueError::InvalidOption {
                field: "periodic.name",
                ..
            }
        ));
        let e = Periodic::every::<Nothing>("p", Duration::from_millis(999), &()).unwrap_err();
        assert!(matches!(
            e,
            EnqueueError::InvalidOption {
                field: "periodic.period",
                ..
            }
        ));
    }
}
