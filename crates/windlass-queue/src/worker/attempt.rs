//! One attempt: run the handler under its hard timeout and cancellation, then decide where
//! the job goes next. The decision is a pure function ([`next_state`]) of the attempt's
//! result, the job's retry schedule and the clock, so it is tested without a database.

use std::time::{Duration, UNIX_EPOCH};

use windlass_policy::{ErrorClass, RetryAt};

use crate::handler::{JobError, JobErrorKind};
use crate::store::{ClaimedJob, NextState};

/// How the handler's run ended, before it is turned into a state.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Ended {
    /// It returned.
    Returned(Result<(), JobError>),
    /// The hard timeout stopped it.
    TimedOut(Duration),
    /// It was stopped because its job was cancelled (after the cancel grace).
    CancelledByUser,
    /// It was stopped because the worker is shutting down: the job is released.
    Released,
    /// It was stopped because the lease was lost: nothing may be written.
    LeaseLost,
}

/// Where the job goes, what to record (`outcome`, error, class), or `None` when nothing may
/// be written (the lease is gone).
pub(crate) fn next_state(
    job: &ClaimedJob,
    ended: &Ended,
    now_ms: i64,
) -> Option<(NextState, &'static str, Option<String>, Option<ErrorClass>)> {
    let retry = |error: String, class: ErrorClass, outcome: &'static str| {
        let now = UNIX_EPOCH + Duration::from_millis(u64::try_from(now_ms).unwrap_or(0));
        let asked = class.retry_after().map(|d| RetryAt::after(now, d));
        let seed = u64::from_ne_bytes(job.lease.job.0.to_ne_bytes());
        let next = match job.retry.next_attempt_at(job.attempt, seed, now, asked) {
            Some(at) => NextState::Retryable {
                run_at_ms: i64::try_from(at.unix_millis()).unwrap_or(i64::MAX),
            },
            None => NextState::Discarded,
        };
        (next, outcome, Some(error), Some(class))
    };
    Some(match ended {
        Ended::Returned(Ok(())) => (NextState::Completed, "completed", None, None),
        Ended::Returned(Err(e)) => match e.kind {
            JobErrorKind::Snooze(d) => (
                NextState::Snoozed {
                    run_at_ms: now_ms.saturating_add(crate::clock::millis(d)),
                },
                "snoozed",
                None,
                None,
            ),
            JobErrorKind::Class(ErrorClass::Cancelled) => (
                NextState::Cancelled,
                "cancelled",
                Some(e.message.clone()),
                Some(ErrorClass::Cancelled),
            ),
            JobErrorKind::Class(c) if !c.is_retryable() => (
                NextState::Discarded,
                "failed",
                Some(e.message.clone()),
                Some(c),
            ),
            JobErrorKind::Class(c) => retry(e.message.clone(), c, "failed"),
        },
        Ended::TimedOut(after) => retry(
            format!("timed out after {after:?}"),
            ErrorClass::Transient,
            "timed_out",
        ),
        Ended::CancelledByUser => (
            NextState::Cancelled,
            "cancelled",
            Some("cancelled while running".into()),
            Some(ErrorClass::Cancelled),
        ),
        Ended::Released => (
            NextState::Snoozed { run_at_ms: now_ms },
            "released",
            Some("released at worker shutdown".into()),
            None,
        ),
        Ended::LeaseLost => return None,
    })
}

/// Seconds since `then_ms`, for latency histograms.
pub(crate) fn secs_since(then_ms: i64, now_ms: i64) -> f64 {
    (now_ms.saturating_sub(then_ms)).max(0) as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobId;
    use crate::store::Lease;
    use windlass_policy::{Backoff, Jitter, RetrySchedule};

    fn job(attempt: u32, max_attempts: u32) -> ClaimedJob {
        ClaimedJob {
            lease: Lease {
                job: JobId(7),
                token: 1,
                worker: "w".into(),
            },
            kind: "k".into(),
            queue: "q".into(),
            payload: serde_json::json!({}),
            attempt,
            retry: RetrySchedule {
                max_attempts,
                backoff: Backoff::Constant(Duration::from_secs(10)),
                jitter: Jitter::None,
                max_delay: Duration::from_secs(3600),
            },
            timeout: Duration::from_secs(1),
            run_at_ms: 0,
            created_at_ms: 0,
            trace_context: None,
        }
    }

    #[test]
    fn a_transient_failure_with_attempts_left_is_retried_after_the_backoff() {
        let (next, outcome, err, class) = next_state(
            &job(1, 3),
            &Ended::Returned(Err(JobError::failed("boom"))),
            1_000,
        )
        .unwrap();
        assert_eq!(next, NextState::Retryable { run_at_ms: 11_000 });
        assert_eq!(outcome, "failed");
        assert_eq!(err.as_deref(), Some("boom"));
        assert_eq!(class, Some(ErrorClass::Transient));
    }

    #[test]
    fn the_last_attempt_is_discarded() {
        let (next, ..) = next_state(
            &job(3, 3),
            &Ended::Returned(Err(JobError::failed("boom"))),
            0,
        )
        .unwrap();
        assert_eq!(next, NextState::Discarded);
        let (next, outcome, ..) =
            next_state(&job(3, 3), &Ended::TimedOut(Duration::from_secs(1)), 0).unwrap();
        assert_eq!((next, outcome), (NextState::Discarded, "timed_out"));
    }

    #[test]
    fn retry_after_waits_at_least_as_asked_and_at_least_the_backoff() {
        let longer = JobError::retry_after(Duration::from_secs(60), "busy");
        let (next, ..) = next_state(&job(1, 3), &Ended::Returned(Err(longer)), 0).unwrap();
        assert_eq!(next, NextState::Retryable { run_at_ms: 60_000 });
        let shorter = JobError::retry_after(Duration::from_secs(2), "busy");
        let (next, ..) = next_state(&job(1, 3), &Ended::Returned(Err(shorter)), 0).unwrap();
        assert_eq!(next, NextState::Retryable { run_at_ms: 10_000 });
    }

    #[test]
    fn permanent_cancel_snooze_and_release_go_where_they_say() {
        let at = |e: Ended| next_state(&job(1, 3), &e, 500).map(|t| (t.0, t.1));
        assert_eq!(
            at(Ended::Returned(Err(JobError::permanent("bad")))),
            Some((NextState::Discarded, "failed"))
        );
        assert_eq!(
            at(Ended::Returned(Err(JobError::cancel("stop")))),
            Some((NextState::Cancelled, "cancelled"))
        );
        assert_eq!(
            at(Ended::Returned(Err(JobError::snooze(Duration::from_secs(
                5
            ))))),
            Some((NextState::Snoozed { run_at_ms: 5_500 }, "snoozed"))
        );
        assert_eq!(
            at(Ended::Released),
            Some((NextState::Snoozed { run_at_ms: 500 }, "released"))
        );
        assert_eq!(
            at(Ended::CancelledByUser),
            Some((NextState::Cancelled, "cancelled"))
        );
        assert_eq!(at(Ended::LeaseLost), None);
        assert_eq!(
            at(Ended::Returned(Ok(()))),
            Some((NextState::Completed, "completed"))
        );
    }
}
