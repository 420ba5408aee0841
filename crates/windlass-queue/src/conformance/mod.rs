//! The conformance suite: the behaviour every [`Store`](crate::Store) backend must show,
//! written once and run by each backend's tests.
//!
//! A backend's test file supplies an `async fn(ManualClock) -> Option<S>` that opens a fresh,
//! empty store on that clock (`None` skips the suite, e.g. PostgreSQL without
//! `DATABASE_URL`, after printing why), and invokes [`conformance_tests!`](crate::conformance_tests):
//!
//! ```ignore
//! async fn fresh(clock: ManualClock) -> Option<SqliteStore> {
//!     Some(SqliteStore::memory_builder().clock(clock).open().await.unwrap())
//! }
//! windlass_queue::conformance_tests!(fresh);
//! ```
//!
//! Store cases drive the [`Store`](crate::Store) trait directly, with a manual clock, so
//! delays, backoff and lease expiry are exact. Worker cases run a real [`Worker`](crate::Worker)
//! against the store and wait for events, never for wall-clock time.

mod claim_probe;
pub mod crash;
mod limit_cases;
mod store_cases;
mod worker_cases;

pub use claim_probe::ClaimProbe;
pub use limit_cases::*;
pub use store_cases::*;
pub use worker_cases::*;

use std::time::Duration;

use crate::{ClaimRequest, JobOptions, NewJob, Store};

/// The manual clock's start: 2023-11-14T22:13:20Z.
pub const T0: i64 = 1_700_000_000_000;

/// Defines one `#[tokio::test]` per conformance case, each on a fresh store from `$fresh`.
#[macro_export]
macro_rules! conformance_tests {
    ($fresh:path) => {
        $crate::conformance_tests!(@cases $fresh;
            enqueue_and_claim_round_trip,
            claims_take_priority_then_fifo,
            delayed_jobs_wait_for_their_time,
            claims_take_only_named_queues_and_kinds,
            concurrent_claims_never_share_a_job,
            completion_records_the_attempt,
            a_mixed_batch_records_each_attempt,
            fencing_refuses_a_zombies_writes,
            expired_leases_are_retried_then_discarded,
            poison_jobs_are_quarantined,
            heartbeats_keep_a_lease,
            batches_are_answered_in_the_order_given,
            retryable_jobs_wait_for_their_backoff,
            snoozing_does_not_count_an_attempt,
            unique_keys_return_the_existing_job,
            concurrent_unique_inserts_leave_one_job,
            cancellation_before_and_during_a_run,
            dead_letters_replay_with_fresh_attempts,
            pruning_deletes_only_old_finished_jobs,
            stats_count_states_and_lag,
            list_filters_and_pages,
            progress_is_fenced,
            unknown_kinds_are_reported,
            payloads_round_trip_exactly,
            enqueue_wakes_the_work_signal,
            periodic_jobs_are_enqueued_once_per_tick,
            limits_are_stored_and_removed,
            queue_concurrency_limit_holds_across_claimers,
            concurrent_claimers_never_exceed_the_queue_limit,
            per_key_concurrency_limits_skip_a_full_key,
            queue_rate_limits_refill_over_time,
            per_key_rate_limits_hold_each_key_apart,
            worker_runs_jobs_to_completion,
            worker_stores_a_completion_through_the_handlers_writer,
            worker_retries_transient_failures,
            worker_discards_malformed_payloads_and_goes_on,
            worker_hard_timeout_stops_the_handler,
            worker_cancellation_reaches_the_handler,
            worker_shutdown_releases_unfinished_jobs,
            worker_respects_its_concurrency,
            worker_keeps_up_to_its_claims_in_flight,
            worker_shutdown_settles_claims_in_flight,
            worker_is_not_idled_by_an_older_empty_claim,
            worker_reports_unknown_kinds,
            worker_prunes_finished_jobs_after_their_retention,
            worker_schedules_periodic_jobs,
            worker_late_completion_after_a_lost_lease_is_refused
        );
    };
    (@cases $fresh:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let clock = $crate::ManualClock::new($crate::conformance::T0);
                let Some(store) = $fresh(clock.clone()).await else { return };
                $crate::conformance::$name(store, clock).await;
            }
        )*
    };
}

/// A job of kind `k` in queue `default` with `{"n": n}`.
pub fn job(n: i64) -> NewJob {
    job_with(n, JobOptions::default())
}

/// A job of kind `k` with options.
pub fn job_with(n: i64, options: JobOptions) -> NewJob {
    #[allow(clippy::unwrap_used)] // the suite's own fixed, valid input
    NewJob::new("k", serde_json::json!({ "n": n }), options).unwrap()
}

/// A claim of up to `limit` jobs of kind `k` from `default`, by `worker`, with a 10 s lease.
pub fn claim_req(worker: &str, limit: usize) -> ClaimRequest {
    ClaimRequest {
        queues: vec!["default".into()],
        kinds: vec!["k".into()],
        limit,
        worker: worker.into(),
        lease_for: Duration::from_secs(10),
    }
}

/// Enqueues and returns the ids, panicking on a store error (test code).
pub async fn put<S: Store>(store: &S, jobs: Vec<NewJob>) -> Vec<crate::JobId> {
    match store.enqueue(jobs).await {
        Ok(v) => v.into_iter().map(|e| e.id).collect(),
        Err(e) => panic!("enqueue failed: {e}"),
    }
}
