//! Store cases: the [`Store`] trait driven directly, on a manual clock.
#![allow(clippy::unwrap_used, missing_docs)] // test code: a failed step is a failed case

use std::collections::HashSet;
use std::time::Duration;

use super::{T0, claim_req, job, job_with, put};
use crate::store::{Finish, NextState};
use crate::{
    AttemptRecord, ClaimRequest, Fenced, JobFilter, JobId, JobOptions, JobState, ManualClock,
    NewJob, Store, Unique,
};

fn record(attempt: u32, outcome: &str) -> AttemptRecord {
    AttemptRecord {
        attempt,
        worker: "w1".into(),
        at_ms: T0,
        outcome: outcome.into(),
        error: (outcome != "completed").then(|| format!("{outcome} error")),
        class: None,
    }
}

fn done(lease: crate::Lease, next: NextState, attempt: u32, outcome: &str) -> Finish {
    Finish {
        lease,
        next,
        record: record(attempt, outcome),
    }
}

async fn state<S: Store>(store: &S, id: JobId) -> JobState {
    store.get(id).await.unwrap().unwrap().state
}

pub async fn enqueue_and_claim_round_trip<S: Store>(store: S, _clock: ManualClock) {
    let ids = put(&store, vec![job(1)]).await;
    let rec = store.get(ids[0]).await.unwrap().unwrap();
    assert_eq!(
        (
            rec.state,
            rec.attempt,
            rec.kind.as_str(),
            rec.queue.as_str()
        ),
        (JobState::Available, 0, "k", "default")
    );
    assert_eq!(rec.created_at_ms, T0);
    let claimed = store.claim(claim_req("w1", 10)).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let c = &claimed[0];
    assert_eq!(c.lease.job, ids[0]);
    assert_eq!(c.attempt, 1);
    assert_eq!(c.payload, serde_json::json!({"n": 1}));
    assert_eq!(c.lease.worker, "w1");
    let rec = store.get(ids[0]).await.unwrap().unwrap();
    assert_eq!((rec.state, rec.attempt), (JobState::Running, 1));
    assert_eq!(rec.locked_by.as_deref(), Some("w1"));
    assert!(
        store.claim(claim_req("w2", 10)).await.unwrap().is_empty(),
        "claimed twice"
    );
}

pub async fn claims_take_priority_then_fifo<S: Store>(store: S, _clock: ManualClock) {
    let p = |priority| JobOptions {
        priority,
        ..JobOptions::default()
    };
    let ids = put(
        &store,
        vec![
            job_with(0, p(5)),
            job_with(1, p(0)),
            job_with(2, p(5)),
            job_with(3, p(0)),
            job_with(4, p(-1)),
        ],
    )
    .await;
    let first = store.claim(claim_req("w", 2)).await.unwrap();
    let order: Vec<JobId> = first.iter().map(|c| c.lease.job).collect();
    assert_eq!(order, vec![ids[4], ids[1]]);
    let rest: Vec<JobId> = store
        .claim(claim_req("w", 10))
        .await
        .unwrap()
        .iter()
        .map(|c| c.lease.job)
        .collect();
    assert_eq!(
        rest,
        vec![ids[3], ids[0], ids[2]],
        "lower priority first, FIFO within one"
    );
}

pub async fn delayed_jobs_wait_for_their_time<S: Store>(store: S, clock: ManualClock) {
    let later = JobOptions {
        delay: Duration::from_secs(60),
        ..JobOptions::default()
    };
    let ids = put(&store, vec![job_with(1, later)]).await;
    assert_eq!(state(&store, ids[0]).await, JobState::Scheduled);
    assert!(store.claim(claim_req("w", 10)).await.unwrap().is_empty());
    clock.advance(Duration::from_millis(59_999));
    assert!(
        store.claim(claim_req("w", 10)).await.unwrap().is_empty(),
        "ran early"
    );
    clock.advance(Duration::from_millis(1));
    let claimed = store.claim(claim_req("w", 10)).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].run_at_ms, T0 + 60_000);
}

pub async fn claims_take_only_named_queues_and_kinds<S: Store>(store: S, _clock: ManualClock) {
    let other_queue = JobOptions {
        queue: "mail".into(),
        ..JobOptions::default()
    };
    let other_kind = NewJob::new("other", serde_json::json!({}), JobOptions::default()).unwrap();
    let ids = put(&store, vec![job_with(1, other_queue), other_kind, job(3)]).await;
    let got: Vec<JobId> = store
        .claim(claim_req("w", 10))
        .await
        .unwrap()
        .iter()
        .map(|c| c.lease.job)
        .collect();
    assert_eq!(got, vec![ids[2]]);
    let mail = ClaimRequest {
        queues: vec!["mail".into()],
        ..claim_req("w", 10)
    };
    let got: Vec<JobId> = store
        .claim(mail)
        .await
        .unwrap()
        .iter()
        .map(|c| c.lease.job)
        .collect();
    assert_eq!(got, vec![ids[0]]);
    assert_eq!(
        state(&store, ids[1]).await,
        JobState::Available,
        "a kind without a handler was taken"
    );
}

pub async fn concurrent_claims_never_share_a_job<S: Store>(store: S, _clock: ManualClock) {
    let store = std::sync::Arc::new(store);
    put(&*store, (0..200).map(job).collect()).await;
    let mut tasks = Vec::new();
    for w in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = store.claim(claim_req(&format!("w{w}"), 7)).await.unwrap();
                if got.is_empty() {
                    return mine;
                }
                mine.extend(got.into_iter().map(|c| c.lease.job));
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let unique: HashSet<JobId> = all.iter().copied().collect();
    assert_eq!(all.len(), 200, "every job claimed once");
    assert_eq!(unique.len(), 200, "no job claimed twice");
}

pub async fn completion_records_the_attempt<S: Store>(store: S, clock: ManualClock) {
    let ids = put(&store, vec![job(1)]).await;
    let c = store.claim(claim_req("w1", 1)).await.unwrap().remove(0);
    clock.advance(Duration::from_secs(2));
    let r = store
        .finish(vec![done(c.lease, NextState::Completed, 1, "completed")])
        .await
        .unwrap();
    assert_eq!(r, vec![Fenced::Applied]);
    let rec = store.get(ids[0]).await.unwrap().unwrap();
    assert_eq!(rec.state, JobState::Completed);
    assert_eq!(rec.finished_at_ms, Some(T0 + 2_000));
    assert_eq!(rec.locked_by, None);
    assert_eq!(rec.attempts, vec![record(1, "completed")]);
    // Replayed, it keeps the completed attempt in its history, and a second run adds one.
    assert_eq!(store.replay(vec![ids[0]]).await.unwrap(), vec![ids[0]]);
    let rec = store.get(ids[0]).await.unwrap().unwrap();
    assert_eq!((rec.state, rec.locked_by), (JobState::Available, None));
    assert_eq!(rec.attempts, vec![record(1, "completed")]);
    let c = store.claim(claim_req("w1", 1)).await.unwrap().remove(0);
    let r = store
        .finish(vec![done(c.lease, NextState::Completed, 1, "completed")])
        .await
        .unwrap();
    assert_eq!(r, vec![Fenced::Applied]);
    let rec = store.get(ids[0]).await.unwrap().unwrap();
    assert_eq!(
        rec.attempts,
        vec![record(1, "completed"), record(1, "completed")]
    );
}

/// One batch that ends attempts in different ways: each job gets its own state and its own
/// attempt record (a completion's record included, however the store keeps it).
pub async fn a_mixed_batch_records_each_attempt<S: Store>(store: S, clock: ManualClock) {
    let ids = put(&store, vec![job(1), job(2), job(3)]).await;
    let mut claimed = store.claim(claim_req("w1", 3)).await.unwrap();
    claimed.sort_by_key(|c| c.lease.job);
    clock.advance(Duration::from_secs(1));
    let retry_at = T0 + 60_000;
    let fin = vec![
        done(
            claimed[0].lease.clone(),
            NextState::Completed,
            1,
            "completed",
        ),
        done(
            claimed[1].lease.clone(),
            NextState::Retryable {
                run_at_ms: retry_at,
            },
            1,
            "failed",
        ),
        done(claimed[2].lease.clone(), NextState::Discarded, 1, "failed"),
    ];
    assert_eq!(store.finish(fin).await.unwrap(), vec![Fenced::Applied; 3]);
    let recs: Vec<_> = futures_util::future::join_all(ids.iter().map(|id| store.get(*id)))
        .await
        .into_iter()
        .map(|r| r.unwrap().unwrap())
        .collect();
    assert_eq!(
        recs.iter()
            .map(|r| (r.state, r.locked_by.clone()))
            .collect::<Vec<_>>(),
        vec![
            (JobState::Completed, None),
            (JobState::Retryable, None),
            (JobState::Discarded, None)
        ]
    );
    assert_eq!(recs[0].attempts, vec![record(1, "completed")]);
    assert_eq!(recs[1].attempts, vec![record(1, "failed")]);
    assert_eq!(recs[1].run_at_ms, retry_at);
    assert_eq!(recs[2].attempts, vec![record(1, "failed")]);
    assert_eq!(
        recs.iter().map(|r| r.finished_at_ms).collect::<Vec<_>>(),
        vec![Some(T0 + 1_000), None, Some(T0 + 1_000)]
    );
}

pub async fn fencing_refuses_a_zombies_writes<S: Store>(store: S, clock: ManualClock) {
    let ids = put(&store, vec![job(1)]).await;
    let zombie = store.claim(claim_req("w1", 1)).await.unwrap().remove(0);
    clock.advance(Duration::from_secs(11));
    let rescued = store.rescue_expired(10).await.unwrap();
    assert_eq!(rescued.retried, vec![ids[0]]);
    // Between the rescue and the next claim, the zombie is refused too.
    let early = done(zombie.lease.clone(), NextState::Completed, 1, "completed");
    assert_eq!(
        store.finish(vec![early]).await.unwrap(),
        vec![Fenced::Rejected]
    );
    let fresh = store.claim(claim_req("w2", 1)).await.unwrap().remove(0);
    assert!(fresh.lease.token > zombie.lease.token, "tokens increase");
    assert_eq!(fresh.attempt, 2, "an expired lease counts as an attempt");
    let late = done(zombie.lease.clone(), NextState::Completed, 1, "completed");
    assert_eq!(
        store.finish(vec![late]).await.unwrap(),
        vec![Fenced::Rejected]
    );
    let beat = store
        .heartbeat(vec![zombie.lease.clone()], Duration::from_secs(10))
        .await
        .unwrap();
    assert!(!beat[0].held);
    assert_eq!(
        store
            .progress(zombie.lease, serde_json::json!(50))
            .await
            .unwrap(),
        Fenced::Rejected
    );
    // The same worker id with an old token is a zombie too (a restarted process would have
    // a new id; a stale task of the same process has an old token).
    let stale_token = crate::Lease {
        token: fresh.lease.token - 1,
        ..fresh.lease.clone()
    };
    let stale = done(stale_token, NextState::Completed, 2, "completed");
    assert_eq!(
        store.finish(vec![stale]).await.unwrap(),
        vec![Fenced::Rejected]
    );
    let other_worker = crate::Lease {
        worker: "w1".into(),
        ..fresh.lease.clone()
    };
    let wrong = done(other_worker, NextState::Completed, 2, "completed");
    assert_eq!(
        store.finish(vec![wrong]).await.unwrap(),
        vec![Fenced::Rejected]
    );
    let ok = done(fresh.lease, NextState::Completed, 2, "completed");
    assert_eq!(store.finish(vec![ok]).await.unwrap(), vec![Fenced::Applied]);
    let rec = store.get(ids[0]).await.unwrap().unwrap();
    assert_eq!(rec.state, JobState::Completed);
    let outcomes: Vec<&str> = rec.attempts.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, vec!["lease_expired", "completed"]);
    assert_eq!(rec.attempts[0].worker, "w1");
}

pub async fn expired_leases_are_retried_then_discarded<S: Store>(store: S, clock: ManualClock) {
    let two = JobOptions {
        retry: windlass_policy::RetrySchedule {
            max_attempts: 2,
            ..JobOptions::default().retry
        },
        ..JobOptions::default()
    };
    let ids = put(&store, vec![job_with(1, two)]).await;
    store.claim(claim_req("w1", 1)).await.unwrap();
    clock.advance(Duration::from_millis(10_000));
    assert_eq!(
        store.rescue_expired(10).await.unwrap().retried,
        vec![],
        "expired exactly at its end"
    );
    clock.advance(Duration::from_millis(1));
    assert_eq!(
        store.rescue_expired(10).await.unwrap().retried,
        vec![ids[0]]
    );
    assert_eq!(state(&store, ids[0]).await, JobState::Available);
    store.claim(claim_req("w2", 1)).await.unwrap();
    clock.advance(Duration::from_secs(11));
    let r = store.rescue_expired(10).await.unwrap();
    assert_eq!(
        (r.retried.len(), r.discarded.clone(), r.quarantined.len()),
        (0, vec![ids[0]], 0)
    );
    let rec = store.get(ids[0]).await.unwrap().unwrap();
    assert_eq!(
        (rec.state, rec.attempt, rec.lease_expiries),
        (JobState::Discarded, 2, 2)
    );
    assert!(rec.finished_at_ms.is_some());
    assert_eq!(rec.attempts.len(), 2);
}

pub async fn poison_jobs_are_quarantined<S: Store>(store: S, clock: ManualClock) {
    let ids = put(&store, vec![job(1), job(2)]).await;
    for round in 1..=3 {
        let claimed = store.claim(claim_req("w", 10)).await.unwrap();
        // Job 2 completes each time it runs; job 1 keeps killing its worker.
        for c in claimed {
            if c.lease.job == ids[1] {
                store
                    .finish(vec![done(
                        c.lease,
                        NextState::Completed,
                        c.attempt,
                        "completed",
                    )])
                    .await
                    .unwrap();
            }
        }
        clock.advance(Duration::from_secs(11));
        let r = store.rescue_expired(3).await.unwrap();
        if round < 3 {
            assert_eq!(r.retried, vec![ids[0]], "round {round}");
        } else {
            assert_eq!(r.quarantined, vec![ids[0]]);
            assert!(r.retried.is_empty());
        }
    }
    let rec = store.get(ids[0]).await.unwrap().unwrap();
    assert_eq!((rec.state, rec.lease_expiries), (JobState::Discarded, 3));
    assert_eq!(state(&store, ids[1]).await, JobState::Completed);
    assert!(store.claim(claim_req("w", 10)).await.unwrap().is_empty());
}

pub async fn heartbeats_keep_a_lease<S: Store>(store: S, clock: ManualClock) {
    let ids = put(&store, vec![job(1)]).await;
    let c = store.claim(claim_req("w1", 1)).await.unwrap().remove(0);
    for _ in 0..5 {
        clock.advance(Duration::from_secs(8));
        let beat = store
            .heartbeat(vec![c.lease.clone()], Duration::from_secs(10))
            .await
            .unwrap();
        assert!(beat[0].held);
        assert!(!beat[0].cancel_requested);
        assert_eq!(
            store.rescue_expired(3).await.unwrap(),
            crate::Rescued::default()
        );
    }
    clock.advance(Duration::from_secs(11));
    assert_eq!(store.rescue_expired(3).await.unwrap().retried, vec![ids[0]]);
}

/// Batched heartbeats and ends answer each lease in the order given, whatever the order of
/// the job ids (a store may reorder a batch internally, e.g. to lock rows in id order).
pub async fn batches_are_answered_in_the_order_given<S: Store>(store: S, _clock: ManualClock) {
    let ids = put(&store, vec![job(1), job(2), job(3), job(4)]).await;
    let mut claimed = store.claim(claim_req("w1", 4)).await.unwrap();
    claimed.sort_by_key(|c| c.lease.job);
    let lease = |i: usize| claimed[i].lease.clone();
    let mut stale = lease(1);
    stale.token += 1;
    let beats = store
        .heartbeat(
            vec![stale.clone(), lease(3), lease(0), lease(2), lease(1)],
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let held: Vec<bool> = beats.iter().map(|b| b.held).collect();
    // A stale lease is not held, even beside its job's current lease.
    assert_eq!(held, vec![false, true, true, true, true]);
    let retry = NextState::Retryable {
        run_at_ms: T0 + 5_000,
    };
    let fenced = store
        .finish(vec![
            done(stale, NextState::Completed, 1, "completed"),
            done(lease(3), NextState::Completed, 1, "completed"),
            done(lease(0), retry, 1, "failed"),
        ])
        .await
        .unwrap();
    assert_eq!(
        fenced,
        vec![Fenced::Rejected, Fenced::Applied, Fenced::Applied]
    );
    let states = [
        state(&store, ids[0]).await,
        state(&store, ids[1]).await,
        state(&store, ids[2]).await,
        state(&store, ids[3]).await,
    ];
    assert_eq!(
        states,
        [
            JobState::Retryable,
            JobState::Running,
            JobState::Running,
            JobState::Completed
        ]
    );
    // An all-completed batch (a store may take a faster path for it), out of id order: each
    // job keeps its own attempt's end.
    let at = |lease: crate::Lease, at_ms: i64| Finish {
        lease,
        next: NextState::Completed,
        record: AttemptRecord {
            at_ms,
            ..record(1, "completed")
        },
    };
    // The same lease given twice is applied once.
    let fenced = store
        .finish(vec![
            at(lease(2), T0 + 2),
            at(lease(1), T0 + 1),
            at(lease(2), T0 + 3),
        ])
        .await
        .unwrap();
    assert_eq!(
        fenced,
        vec![Fenced::Applied, Fenced::Applied, Fenced::Rejected]
    );
    for (i, want) in [(1, T0 + 1), (2, T0 + 2)] {
        let rec = store.get(ids[i]).await.unwrap().unwrap();
        assert_eq!(rec.state, JobState::Completed);
        let last = rec.attempts.last().map(|a| a.at_ms);
        assert_eq!(last, Some(want), "job {i}");
    }
}

pub async fn retryable_jobs_wait_for_their_backoff<S: Store>(store: S, clock: ManualClock) {
    let ids = put(&store, vec![job(1)]).await;
    let c = store.claim(claim_req("w1", 1)).await.unwrap().remove(0);
    let next = NextState::Retryable {
        run_at_ms: T0 + 5_000,
    };
    store
        .finish(vec![done(c.lease, next, 1, "failed")])
        .await
        .unwrap();
    let rec = store.get(ids[0]).await.unwrap().unwrap();
    assert_eq!(
        (rec.state, rec.run_at_ms),
        (JobState::Retryable, T0 + 5_000)
    );
    assert_eq!(rec.attempts[0].error.as_deref(), Some("failed error"));
    clock.advance(Duration::from_millis(4_999));
    assert!(store.claim(claim_req("w", 1)).await.unwrap().is_empty());
    clock.advance(Duration::from_millis(1));
    let again = store.claim(claim_req("w", 1)).await.unwrap();
    assert_eq!(again[0].attempt, 2);
}

pub async fn snoozing_does_not_count_an_attempt<S: Store>(store: S, clock: ManualClock) {
    let ids = put(&store, vec![job(1)]).await;
    let c = store.claim(claim_req("w1", 1)).await.unwrap().remove(0);
    let next = NextState::Snoozed {
        run_at_ms: T0 + 1_000,
    };
    store
        .finish(vec![done(c.lease.clone(), next, 1, "snoozed")])
        .await
        .unwrap();
    let rec = store.get(ids[0]).await.unwrap().unwrap();
    assert_eq!((rec.state, rec.attempt), (JobState::Scheduled, 0));
    clock.advance(Duration::from_secs(1));
    let again = store.claim(claim_req("w1", 1)).await.unwrap().remove(0);
    assert_eq!(again.attempt, 1);
    // Same worker, same attempt number: the token still tells the two leases apart.
    assert!(again.lease.token > c.lease.token);
    let stale = done(c.lease, NextState::Completed, 1, "completed");
    assert_eq!(
        store.finish(vec![stale]).await.unwrap(),
        vec![Fenced::Rejected]
    );
}

pub async fn unique_keys_return_the_existing_job<S: Store>(store: S, clock: ManualClock) {
    let u = |key: &str| JobOptions {
        unique: Some(Unique::key(key)),
        ..JobOptions::default()
    };
    let first = store.enqueue(vec![job_with(1, u("a"))]).await.unwrap()[0];
    assert!(!first.duplicate);
    // A duplicate in a later call, and two in one batch.
    let again = store
        .enqueue(vec![
            job_with(2, u("a")),
            job_with(3, u("b")),
            job_with(4, u("b")),
        ])
        .await
        .unwrap();
    assert_eq!((again[0].id, again[0].duplicate), (first.id, true));
    assert!(!again[1].duplicate);
    assert_eq!((again[2].id, again[2].duplicate), (again[1].id, true));
    assert_eq!(
        store.get(first.id).await.unwrap().unwrap().payload,
        serde_json::json!({"n": 1})
    );
    // Once the first is finished (not live), the key is free again.
    let c = store.claim(claim_req("w", 1)).await.unwrap().remove(0);
    assert_eq!(c.lease.job, first.id);
    store
        .finish(vec![done(c.lease, NextState::Completed, 1, "completed")])
        .await
        .unwrap();
    let later = store.enqueue(vec![job_with(5, u("a"))]).await.unwrap()[0];
    assert!(!later.duplicate);
    // A window: duplicates only within 10 s of the existing job's creation, in any state.
    let w = JobOptions {
        unique: Some(
            Unique::key("w")
                .within(Duration::from_secs(10))
                .in_states(JobState::ALL),
        ),
        ..JobOptions::default()
    };
    let a = store.enqueue(vec![job_with(6, w.clone())]).await.unwrap()[0];
    clock.advance(Duration::from_secs(10));
    assert_eq!(
        store.enqueue(vec![job_with(7, w.clone())]).await.unwrap()[0].id,
        a.id
    );
    clock.advance(Duration::from_millis(1));
    let b = store.enqueue(vec![job_with(8, w)]).await.unwrap()[0];
    assert!(!b.duplicate && b.id != a.id);
    // Keys are per queue.
    let other = JobOptions {
        queue: "other".into(),
        ..u("b")
    };
    assert!(!store.enqueue(vec![job_with(9, other)]).await.unwrap()[0].duplicate);
}

pub async fn concurrent_unique_inserts_leave_one_job<S: Store>(store: S, _clock: ManualClock) {
    let store = std::sync::Arc::new(store);
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let o = JobOptions {
                unique: Some(Unique::key("once")),
                ..JobOptions::default()
            };
            store.enqueue(vec![job_with(i, o)]).await.unwrap()[0]
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let ids: HashSet<JobId> = results.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), 1, "one job for one key: {results:?}");
    assert_eq!(results.iter().filter(|e| !e.duplicate).count(), 1);
    let all = store.list(JobFilter::default()).await.unwrap();
    assert_eq!(all.len(), 1);
}

pub async fn cancellation_before_and_during_a_run<S: Store>(store: S, _clock: ManualClock) {
    let ids = put(&store, vec![job(1), job(2)]).await;
    let c = store.claim(claim_req("w", 1)).await.unwrap().remove(0);
    assert_eq!(c.lease.job, ids[0]);
    assert_eq!(
        store.cancel(ids[1]).await.unwrap(),
        Some(JobState::Cancelled)
    );
    assert!(
        store.claim(claim_req("w", 10)).await.unwrap().is_empty(),
        "a cancelled job ran"
    );
    assert_eq!(store.cancel(ids[0]).await.unwrap(), Some(JobState::Running));
    let beat = store
        .heartbeat(vec![c.lease.clone()], Duration::from_secs(10))
        .await
        .unwrap();
    assert!(beat[0].held && beat[0].cancel_requested);
    store
        .finish(vec![done(c.lease, NextState::Cancelled, 1, "cancelled")])
        .await
        .unwrap();
    assert_eq!(state(&store, ids[0]).await, JobState::Cancelled);
    assert_eq!(
        store.cancel(ids[0]).await.unwrap(),
        Some(JobState::Cancelled),
        "terminal stays"
    );
    assert_eq!(store.cancel(JobId(999_999)).await.unwrap(), None);
    // A cancel that lands after the last heartbeat is not undone by the attempt's end: a
    // retry, a snooze or a release becomes the cancellation.
    for next in [
        NextState::Retryable { run_at_ms: T0 },
        NextState::Snoozed { run_at_ms: T0 },
    ] {
        let id = put(&store, vec![job(3)]).await[0];
        let c = store.claim(claim_req("w", 1)).await.unwrap().remove(0);
        assert_eq!(store.cancel(id).await.unwrap(), Some(JobState::Running));
        store
            .finish(vec![done(c.lease, next.clone(), 1, "failed")])
            .await
            .unwrap();
        let rec = store.get(id).await.unwrap().unwrap();
        assert_eq!(rec.state, JobState::Cancelled, "{next:?} undid a cancel");
        assert!(rec.finished_at_ms.is_some());
    }
}

pub async fn dead_letters_replay_with_fresh_attempts<S: Store>(store: S, _clock: ManualClock) {
    let ids = put(&store, vec![job(1), job(2)]).await;
    let claimed = store.claim(claim_req("w", 2)).await.unwrap();
    let fin: Vec<Finish> = claimed
        .into_iter()
        .map(|c| done(c.lease, NextState::Discarded, 1, "failed"))
        .collect();
    store.finish(fin).await.unwrap();
    let dlq = store
        .list(JobFilter {
            states: vec![JobState::Discarded],
            ..JobFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(dlq.len(), 2);
    assert_eq!(dlq[0].attempts[0].error.as_deref(), Some("failed error"));
    let replayed = store.replay(vec![ids[0], JobId(424_242)]).await.unwrap();
    assert_eq!(replayed, vec![ids[0]]);
    let rec = store.get(ids[0]).await.unwrap().unwrap();
    assert_eq!(
        (rec.state, rec.attempt, rec.finished_at_ms),
        (JobState::Available, 0, None)
    );
    assert_eq!(rec.attempts.len(), 1, "history kept");
    let again = store.claim(claim_req("w", 10)).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].lease.job, again[0].attempt), (ids[0], 1));
    // A live job is not "replayed".
    assert!(store.replay(vec![ids[0]]).await.unwrap().is_empty());
}

pub async fn pruning_deletes_only_old_finished_jobs<S: Store>(store: S, clock: ManualClock) {
    let ids = put(&store, vec![job(1), job(2), job(3)]).await;
    let claimed = store.claim(claim_req("w", 2)).await.unwrap();
    let fin: Vec<Finish> = claimed
        .into_iter()
        .map(|c| done(c.lease, NextState::Completed, 1, "completed"))
        .collect();
    store.finish(fin).await.unwrap();
    clock.advance(Duration::from_secs(100));
    assert_eq!(
        store.prune(vec![JobState::Completed], T0).await.unwrap(),
        0,
        "finished at T0, not before"
    );
    assert_eq!(
        store
            .prune(vec![JobState::Discarded], T0 + 1)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .prune(vec![JobState::Completed, JobState::Available], T0 + 1)
            .await
            .unwrap(),
        2
    );
    assert!(store.get(ids[0]).await.unwrap().is_none());
    assert_eq!(
        state(&store, ids[2]).await,
        JobState::Available,
        "a live job is never pruned"
    );
}

pub async fn stats_count_states_and_lag<S: Store>(store: S, clock: ManualClock) {
    let later = JobOptions {
        delay: Duration::from_secs(60),
        ..JobOptions::default()
    };
    let mail = JobOptions {
        queue: "mail".into(),
        ..JobOptions::default()
    };
    put(
        &store,
        vec![job(1), job(2), job_with(3, later), job_with(4, mail)],
    )
    .await;
    clock.advance(Duration::from_secs(5));
    put(&store, vec![job(5)]).await;
    store.claim(claim_req("w", 1)).await.unwrap();
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.len(), 2, "one entry per queue: {stats:?}");
    let d = stats.iter().find(|s| s.queue == "default").unwrap();
    assert_eq!(d.count(JobState::Available), 2);
    assert_eq!(d.count(JobState::Running), 1);
    assert_eq!(d.count(JobState::Scheduled), 1);
    assert_eq!(
        d.oldest_due_ms,
        Some(T0),
        "the longest-waiting due job, not the scheduled one"
    );
    assert_eq!(d.completed_last_minute, 0);
    let m = stats.iter().find(|s| s.queue == "mail").unwrap();
    assert_eq!(m.count(JobState::Available), 1);
    // Throughput: completions of the last minute, not older ones.
    let c = store.claim(claim_req("w", 1)).await.unwrap().remove(0);
    store
        .finish(vec![done(c.lease, NextState::Completed, 1, "completed")])
        .await
        .unwrap();
    let recent = |s: Vec<crate::QueueStats>| {
        s.into_iter()
            .find(|s| s.queue == "default")
            .unwrap()
            .completed_last_minute
    };
    let after = store.stats().await.unwrap();
    let d = after.iter().find(|s| s.queue == "default").unwrap();
    assert_eq!(
        [
            JobState::Available,
            JobState::Running,
            JobState::Completed,
            JobState::Scheduled
        ]
        .map(|s| d.count(s)),
        [1, 1, 1, 1],
        "{d:?}"
    );
    assert_eq!(recent(after), 1);
    clock.advance(Duration::from_millis(60_001));
    assert_eq!(recent(store.stats().await.unwrap()), 0);
}

pub async fn list_filters_and_pages<S: Store>(store: S, _clock: ManualClock) {
    let mail = JobOptions {
        queue: "mail".into(),
        ..JobOptions::default()
    };
    let ids = put(&store, vec![job(1), job_with(2, mail), job(3), job(4)]).await;
    let page = |after, limit| JobFilter {
        queue: Some("default".into()),
        after,
        limit,
        ..JobFilter::default()
    };
    let first: Vec<JobId> = store
        .list(page(None, 2))
        .await
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(first, vec![ids[0], ids[2]]);
    let next: Vec<JobId> = store
        .list(page(Some(ids[2]), 2))
        .await
        .unwrap()
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(next, vec![ids[3]]);
    let by_kind = JobFilter {
        kind: Some("nope".into()),
        ..JobFilter::default()
    };
    assert!(store.list(by_kind).await.unwrap().is_empty());
}

pub async fn progress_is_fenced<S: Store>(store: S, _clock: ManualClock) {
    let ids = put(&store, vec![job(1)]).await;
    let c = store.claim(claim_req("w", 1)).await.unwrap().remove(0);
    let p = serde_json::json!({"done": 3, "of": 10});
    assert_eq!(
        store.progress(c.lease.clone(), p.clone()).await.unwrap(),
        Fenced::Applied
    );
    assert_eq!(store.get(ids[0]).await.unwrap().unwrap().progress, Some(p));
    store
        .finish(vec![done(
            c.lease.clone(),
            NextState::Completed,
            1,
            "completed",
        )])
        .await
        .unwrap();
    assert_eq!(
        store
            .progress(c.lease, serde_json::json!(99))
            .await
            .unwrap(),
        Fenced::Rejected
    );
}

pub async fn unknown_kinds_are_reported<S: Store>(store: S, _clock: ManualClock) {
    let x = NewJob::new("x", serde_json::json!({}), JobOptions::default()).unwrap();
    let y = NewJob::new(
        "y",
        serde_json::json!({}),
        JobOptions {
            queue: "elsewhere".into(),
            ..JobOptions::default()
        },
    )
    .unwrap();
    put(&store, vec![job(1), x, y]).await;
    let unknown = store
        .unknown_kinds(vec!["default".into()], vec!["k".into()])
        .await
        .unwrap();
    assert_eq!(unknown, vec!["x".to_string()]);
}

pub async fn payloads_round_trip_exactly<S: Store>(store: S, _clock: ManualClock) {
    let payload = serde_json::json!({
        "text": "zürich ☃ \u{1F600} \"quoted\" \\ back",
        "nested": {"list": [1, 2.5, -3, null, true], "empty": {}},
        "big": 9_007_199_254_740_991_i64,
    });
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let opts = |key: &str| JobOptions {
        tags: vec!["a".into(), "b".into()],
        limit_key: Some(key.into()),
        trace_context: Some(traceparent.into()),
        ..JobOptions::default()
    };
    let one = |key: &str| NewJob::new("k", payload.clone(), opts(key)).unwrap();
    // One job; a batch whose options differ; a batch that shares them (backends may take a
    // different statement for each).
    let mut ids = put(&store, vec![one("t1")]).await;
    ids.extend(put(&store, vec![one("t2"), one("t3")]).await);
    ids.extend(put(&store, vec![one("t4"), one("t4")]).await);
    for (i, id) in ids.iter().enumerate() {
        let rec = store.get(*id).await.unwrap().unwrap();
        assert_eq!(rec.payload, payload);
        assert_eq!(rec.tags, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(rec.retry, JobOptions::default().retry);
        let key = ["t1", "t2", "t3", "t4", "t4"][i];
        assert_eq!(rec.limit_key.as_deref(), Some(key));
        assert_eq!(rec.trace_context.as_deref(), Some(traceparent));
    }
    let claimed = store.claim(claim_req("w", 10)).await.unwrap();
    assert_eq!(claimed.len(), 5);
    for c in claimed {
        assert_eq!(c.payload, payload);
        assert_eq!(c.timeout, JobOptions::default().timeout);
        assert_eq!(c.trace_context.as_deref(), Some(traceparent));
    }
}

pub async fn enqueue_wakes_the_work_signal<S: Store>(store: S, _clock: ManualClock) {
    let mut signal = store.work_signal();
    signal.borrow_and_update();
    put(&store, vec![job(1)]).await;
    assert!(
        signal.has_changed().unwrap(),
        "an enqueue must wake idle fetchers"
    );
}

pub async fn periodic_jobs_are_enqueued_once_per_tick<S: Store>(store: S, clock: ManualClock) {
    struct Tick;
    impl crate::Job for Tick {
        const KIND: &'static str = "k";
        type Payload = u32;
        async fn run(&self, _: crate::JobContext, _: u32) -> Result<(), crate::JobError> {
            Ok(())
        }
    }
    let p = crate::Periodic::every::<Tick>("report", Duration::from_secs(60), &7).unwrap();
    // Two processes schedule the same tick: one job.
    let a = p.enqueue_due(&store).await.unwrap();
    let b = p.enqueue_due(&store).await.unwrap();
    assert!(!a.duplicate);
    assert_eq!((b.id, b.duplicate), (a.id, true));
    // Finished, it still counts for its tick.
    let c = store.claim(claim_req("w", 1)).await.unwrap().remove(0);
    store
        .finish(vec![done(c.lease, NextState::Completed, 1, "completed")])
        .await
        .unwrap();
    assert!(p.enqueue_due(&store).await.unwrap().duplicate);
    // The next tick is a new job; three missed ticks make one job, not three.
    clock.advance(p.until_next_tick(T0));
    let next = p.enqueue_due(&store).await.unwrap();
    assert!(!next.duplicate && next.id != a.id);
    clock.advance(Duration::from_secs(180));
    let caught_up = p.enqueue_due(&store).await.unwrap();
    assert!(!caught_up.duplicate);
    let all = store.list(JobFilter::default()).await.unwrap();
    assert_eq!(all.len(), 3);
    assert!(all.iter().all(|j| j.payload == serde_json::json!(7)));
}

/// A claimed job whose stored row cannot be read (`corrupt` spoils the stored row of the
/// job it is given, as only a hand edit or another program could) is discarded into the
/// dead-letter queue with the reason, not handed out, and does not fail the claim of the
/// jobs beside it, nor any later claim. Not in [`conformance_tests!`](crate::conformance_tests):
/// spoiling a row takes the backend's own SQL, so each backend calls it.
pub async fn unreadable_jobs_are_discarded_not_claimed<S, F, Fut>(store: S, corrupt: F)
where
    S: Store,
    F: FnOnce(JobId) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut four = JobOptions::default();
    four.retry.max_attempts = 4;
    let ids = put(&store, vec![job(1), job_with(2, four), job(3)]).await;
    corrupt(ids[1]).await;
    let mut signal = store.work_signal();
    signal.borrow_and_update();
    let claimed = store.claim(claim_req("w1", 3)).await.unwrap();
    let got: Vec<JobId> = claimed.iter().map(|c| c.lease.job).collect();
    assert_eq!(got, vec![ids[0], ids[2]]);
    // Fewer jobs than rows claimed: a fetcher must not take it for an empty queue.
    assert!(signal.has_changed().unwrap(), "the discard signals work");
    let rec = store.get(ids[1]).await.unwrap().unwrap();
    assert_eq!(rec.state, JobState::Discarded);
    let last = rec.attempts.last().expect("the discard is recorded");
    assert_eq!(
        (last.outcome.as_str(), last.class.as_deref()),
        ("failed", Some("permanent"))
    );
    let error = last.error.clone().unwrap_or_default();
    assert!(
        error.contains("cannot be read") && error.contains("stored:"),
        "{error}"
    );
    assert!(store.claim(claim_req("w1", 3)).await.unwrap().is_empty());
    // Nothing is lost: the dead letter reads, and a replay hands it out again.
    assert_eq!(store.replay(vec![ids[1]]).await.unwrap(), vec![ids[1]]);
    let again = store.claim(claim_req("w1", 3)).await.unwrap();
    assert_eq!(
        again.iter().map(|c| c.lease.job).collect::<Vec<_>>(),
        vec![ids[1]]
    );
    // A schedule made readable keeps the job's own number of attempts.
    assert_eq!(again[0].retry.max_attempts, 4);
}
