//! Store-level cases: concurrent journal writers, the one-transaction start, and the
//! direct start's combined end.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use windlass_queue::conformance::T0;
use windlass_queue::{
    AttemptRecord, Finish, JobOptions, JobState, Lease, ManualClock, NewJob, NextState,
};

use super::FlowDb;
use crate::{
    DRIVER_KIND, EndRun, EntryKind, FlowStore, InlineClaim, JournalEntry, RunStart, RunStatus,
};

fn entry(key: &str, outcome: Result<serde_json::Value, String>) -> JournalEntry {
    // Each writer's entry says what it had seen differently (5 + its number).
    let after = outcome
        .as_ref()
        .ok()
        .and_then(|v| v.get("writer")?.as_i64())
        .map_or(Some(5), |w| Some(5 + w));
    JournalEntry {
        seq: 0,
        key: key.into(),
        kind: EntryKind::Step,
        outcome,
        attempts: 1,
        started_at_ms: T0,
        finished_at_ms: T0 + 1,
        after,
    }
}

/// Case: many runs' journal writes at once (a backend may group them into one commit), two
/// writers per entry with different results: both writers of an entry get the same stored
/// entry, each journal holds exactly its entries, and every entry has its own `seq`.
pub async fn concurrent_writers_of_one_entry_agree<S: FlowStore>(
    db: FlowDb<S>,
    _clock: ManualClock,
) {
    let store = std::sync::Arc::new(db.store);
    let mut writers = tokio::task::JoinSet::new();
    for run in 0..20 {
        for key in ["a", "b"] {
            for writer in 0..2 {
                let store = std::sync::Arc::clone(&store);
                writers.spawn(async move {
                    let stored = store
                        .record(
                            format!("run-{run}"),
                            entry(key, Ok(json!({ "writer": writer }))),
                        )
                        .await
                        .expect("record");
                    ((run, key), stored)
                });
            }
        }
    }
    let mut answers: HashMap<(i32, &str), Vec<JournalEntry>> = HashMap::new();
    while let Some(done) = writers.join_next().await {
        let (at, stored) = done.expect("a writer");
        answers.entry(at).or_default().push(stored);
    }
    let mut seqs = std::collections::HashSet::new();
    for ((run, key), stored) in &answers {
        assert_eq!(stored.len(), 2);
        assert_eq!(
            stored[0], stored[1],
            "both writers of run-{run}/{key} were answered with the entry that stands"
        );
        assert!(seqs.insert(stored[0].seq), "every entry has its own seq");
        let winner = stored[0]
            .outcome
            .as_ref()
            .ok()
            .and_then(|v| v["writer"].as_i64());
        assert_eq!(
            stored[0].after,
            winner.map(|w| 5 + w),
            "the entry that stands keeps its own writer's `after`"
        );
        let journal = store.journal(format!("run-{run}")).await.expect("journal");
        let found: Vec<_> = journal.iter().filter(|e| e.key == *key).collect();
        assert_eq!(
            found,
            [&stored[0]],
            "one entry per key, the one both were told"
        );
    }
    assert_eq!(answers.len(), 40);
}

/// Case: `run_and_journal` reads what `run` and `journal` read apart: a run with entries
/// (one of them an error) gets them all, in stored order, each field intact; a run with
/// none gets an empty journal; an unknown id, and entries under an id with no run, are no
/// run at all.
pub async fn a_run_is_read_with_its_journal<S: FlowStore>(db: FlowDb<S>, _clock: ManualClock) {
    let store = db.store;
    let with = store.start_run(start("with", None)).await.expect("start");
    let without = store
        .start_run(start("without", None))
        .await
        .expect("start");
    for (key, outcome) in [
        ("b", Ok(json!({"n": 2}))),
        ("a", Err("card declined".to_string())),
        ("c", Ok(json!("three"))),
    ] {
        store
            .record("with".into(), entry(key, outcome))
            .await
            .expect("record");
    }
    store
        .record("no-run".into(), entry("a", Ok(json!(1))))
        .await
        .expect("record");

    let (run, journal) = store
        .run_and_journal("with".into())
        .await
        .expect("read")
        .expect("the run");
    assert_eq!(run, with.run);
    assert_eq!(
        journal,
        store.journal("with".into()).await.expect("journal")
    );
    let keys: Vec<&str> = journal.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(
        keys,
        ["b", "a", "c"],
        "entries in the order they were stored"
    );
    assert_eq!(journal[1].outcome, Err("card declined".to_string()));
    assert_eq!(journal[2].outcome, Ok(json!("three")));
    assert_eq!(journal[0].attempts, 1);
    assert_eq!(
        (journal[0].started_at_ms, journal[0].finished_at_ms),
        (T0, T0 + 1)
    );

    let (run, journal) = store
        .run_and_journal("without".into())
        .await
        .expect("read")
        .expect("the run");
    assert_eq!(run, without.run);
    assert!(journal.is_empty());

    assert_eq!(
        store.run_and_journal("unknown".into()).await.expect("read"),
        None
    );
    assert_eq!(
        store.run_and_journal("no-run".into()).await.expect("read"),
        None,
        "journal entries without a run are not a run"
    );
}

/// The claim of an inline (direct) start by worker `inline-test`, leased for 30 s.
pub(super) fn inline_claim() -> InlineClaim {
    InlineClaim {
        worker: "inline-test".into(),
        lease_for: Duration::from_secs(30),
    }
}

/// A completed first attempt of an inline run's job under `lease` (worker `inline-test`).
pub(super) fn completed(lease: Lease) -> Finish {
    Finish {
        lease,
        next: NextState::Completed,
        record: AttemptRecord {
            attempt: 1,
            worker: "inline-test".into(),
            at_ms: T0,
            outcome: "completed".into(),
            error: None,
            class: None,
        },
    }
}

pub(super) fn start(id: &str, claim: Option<InlineClaim>) -> RunStart {
    RunStart {
        id: id.into(),
        kind: "k".into(),
        input: json!({"n": 1}),
        created_at_ms: T0,
        job: NewJob::new(
            DRIVER_KIND,
            json!({"run": id, "workflow": "k", "input": {"n": 1}}),
            JobOptions {
                queue: "flows".into(),
                ..JobOptions::default()
            },
        )
        .expect("a valid job"),
        claim,
    }
}

/// Case: `start_run` stores the run and its job together, once: a second start of the id
/// writes nothing and returns the first run; with a claim the job is `running` under the
/// claimer's lease (attempt 1), otherwise queued. `end_run` is fenced by the lease: a stale
/// lease changes neither the job nor the run; the right one ends both at once.
pub async fn a_run_and_its_job_start_and_end_together<S: FlowStore>(
    db: FlowDb<S>,
    _clock: ManualClock,
) {
    let store = db.store;
    let queued = store.start_run(start("q", None)).await.expect("start");
    assert!(queued.created && queued.claimed.is_none());
    let job = store
        .get(queued.run.job)
        .await
        .expect("get")
        .expect("its job");
    assert_eq!(job.state, JobState::Available);
    assert_eq!(job.kind, DRIVER_KIND);

    let claim = inline_claim();
    let inline = store
        .start_run(start("i", Some(claim.clone())))
        .await
        .expect("start inline");
    assert!(inline.created);
    let claimed = inline.claimed.expect("the claim");
    assert_eq!(claimed.lease.job, inline.run.job);
    assert_eq!(claimed.lease.worker, "inline-test");
    assert_eq!(claimed.attempt, 1);
    let job = store
        .get(inline.run.job)
        .await
        .expect("get")
        .expect("its job");
    assert_eq!(job.state, JobState::Running);
    assert_eq!(job.attempt, 1);

    let again = store
        .start_run(start("i", Some(claim)))
        .await
        .expect("start again");
    assert!(!again.created && again.claimed.is_none());
    assert_eq!(
        again.run.job, inline.run.job,
        "the first run and its job stand"
    );
    let jobs: u64 = store
        .stats()
        .await
        .expect("stats")
        .iter()
        .map(|s| s.counts.iter().sum::<u64>())
        .sum();
    assert_eq!(jobs, 2, "a second start of an id stores no job");

    let finish = completed;
    let stale = Lease {
        token: claimed.lease.token + 1,
        ..claimed.lease.clone()
    };
    let refused = store
        .end_run(
            "i".into(),
            RunStatus::Completed,
            Some(json!("out")),
            None,
            finish(stale),
        )
        .await
        .expect("end with a stale lease");
    assert_eq!(refused, EndRun::LeaseLost);
    let run = store.run("i".into()).await.expect("run").expect("the run");
    assert_eq!(
        run.status,
        RunStatus::Running,
        "a refused end writes nothing"
    );
    let ended = store
        .end_run(
            "i".into(),
            RunStatus::Completed,
            Some(json!("out")),
            None,
            finish(claimed.lease.clone()),
        )
        .await
        .expect("end");
    assert_eq!(ended, EndRun::Stored);
    let run = store.run("i".into()).await.expect("run").expect("the run");
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.output, Some(json!("out")));
    let job = store.get(run.job).await.expect("get").expect("its job");
    assert_eq!(job.state, JobState::Completed);
    assert_eq!(job.attempts.len(), 1);
    assert_eq!(job.attempts[0].outcome, "completed");
}

/// Case: many direct runs end at once (a backend may write their ends as one statement):
/// each end is decided exactly as if it were alone. The runs whose lease holds are stored
/// with their own outputs; a cancelled run refuses its code's end and keeps its job
/// running; a stale lease writes nothing; and of two ends of one run, the stale one is
/// refused and the right one stored, whichever is written first.
pub async fn ends_of_many_runs_at_once_are_each_decided_alone<S: FlowStore>(
    db: FlowDb<S>,
    _clock: ManualClock,
) {
    let store = db.store;
    let claim = inline_claim();
    let mut leases = Vec::new();
    for n in 0..20 {
        let started = store
            .start_run(start(&format!("m{n}"), Some(claim.clone())))
            .await
            .expect("start");
        leases.push(started.claimed.expect("claimed").lease);
    }
    store
        .cancel_run("m3".into(), "cancelled: test".into())
        .await
        .expect("cancel")
        .expect("the run");
    let end = |n: usize, lease: Lease| {
        store.end_run(
            format!("m{n}"),
            RunStatus::Completed,
            Some(json!({ "n": n })),
            None,
            completed(lease),
        )
    };
    let stale = |lease: &Lease| Lease {
        token: lease.token + 1,
        ..lease.clone()
    };
    // All sent before any is answered: polled together, they reach the store together.
    let mut ends: Vec<_> = (0..20)
        .filter(|n| *n != 5)
        .map(|n| end(n, leases[n].clone()))
        .collect();
    ends.push(end(7, stale(&leases[7])));
    ends.push(end(5, stale(&leases[5])));
    let answers = futures_util::future::join_all(ends).await;
    let answers: Vec<EndRun> = answers.into_iter().map(|a| a.expect("end")).collect();
    for (i, n) in (0..20).filter(|n| *n != 5).enumerate() {
        let want = if n == 3 {
            EndRun::RunMoved(RunStatus::Compensating)
        } else {
            EndRun::Stored
        };
        assert_eq!(answers[i], want, "run m{n}");
    }
    // Refused either way: for its stale lease if it is written first, or because m7 has
    // already ended if it is written second.
    assert!(
        matches!(
            answers[19],
            EndRun::LeaseLost | EndRun::RunMoved(RunStatus::Completed)
        ),
        "the stale second end of m7: {:?}",
        answers[19]
    );
    assert_eq!(answers[20], EndRun::LeaseLost, "m5's only end, stale");
    for n in 0..20 {
        let run = store
            .run(format!("m{n}"))
            .await
            .expect("run")
            .expect("the run");
        let job = store.get(run.job).await.expect("get").expect("its job");
        match n {
            3 => {
                assert_eq!(run.status, RunStatus::Compensating, "m3");
                assert_eq!(job.state, JobState::Running, "m3's job still drives it");
            }
            5 => {
                assert_eq!((run.status, run.output), (RunStatus::Running, None), "m5");
                assert_eq!(job.state, JobState::Running, "m5's job");
            }
            _ => {
                assert_eq!(run.status, RunStatus::Completed, "m{n}");
                assert_eq!(run.output, Some(json!({ "n": n })), "m{n}'s own output");
                assert!(run.finished_at_ms.is_some(), "m{n}");
                assert_eq!(job.state, JobState::Completed, "m{n}'s job");
            }
        }
    }
}

/// Case: many direct starts at once (a backend may write them as one statement): each is
/// decided as if alone. Every new id gets its run and its job, running under its own
/// caller's lease; of two starts of one id, one creates the run and the other is told of it;
/// an id that was taken before writes nothing.
pub async fn direct_starts_of_many_runs_at_once_are_each_decided_alone<S: FlowStore>(
    db: FlowDb<S>,
    _clock: ManualClock,
) {
    let store = db.store;
    let claim = inline_claim();
    let before = store
        .start_run(start("s0", None))
        .await
        .expect("the earlier start");
    // All sent before any is answered: polled together, they reach the store together.
    let mut starts: Vec<_> = (0..20)
        .map(|n| store.start_run(start(&format!("s{n}"), Some(claim.clone()))))
        .collect();
    starts.push(store.start_run(start("s7", Some(claim.clone()))));
    let answers: Vec<_> = futures_util::future::join_all(starts)
        .await
        .into_iter()
        .map(|a| a.expect("start"))
        .collect();
    assert!(
        !answers[0].created && answers[0].claimed.is_none(),
        "s0 was taken"
    );
    assert_eq!(answers[0].run.job, before.run.job, "s0's first job stands");
    let s7: Vec<_> = [&answers[7], &answers[20]]
        .iter()
        .map(|a| (a.created, a.claimed.is_some(), a.run.job))
        .collect();
    assert!(
        s7 == [(true, true, s7[0].2), (false, false, s7[0].2)]
            || s7 == [(false, false, s7[1].2), (true, true, s7[1].2)],
        "one start of s7 created it, the other was told of that run: {s7:?}"
    );
    let mut jobs = std::collections::HashSet::new();
    for (n, a) in answers.iter().enumerate().take(20).skip(1) {
        assert_eq!(a.run.id, format!("s{n}"));
        assert_eq!(a.run.status, RunStatus::Running);
        assert!(jobs.insert(a.run.job), "s{n} has a job of its own");
        let job = store.get(a.run.job).await.expect("get").expect("its job");
        assert_eq!(
            (job.state, job.attempt, job.locked_by.as_deref()),
            (JobState::Running, 1, Some("inline-test")),
            "s{n}'s job runs under its caller's lease"
        );
        if n != 7 {
            let claimed = a.claimed.as_ref().expect("claimed");
            assert!(a.created, "s{n}");
            assert_eq!((claimed.lease.job, claimed.attempt), (a.run.job, 1), "s{n}");
        }
    }
    let jobs_stored: u64 = store
        .stats()
        .await
        .expect("stats")
        .iter()
        .map(|s| s.counts.iter().sum::<u64>())
        .sum();
    assert_eq!(jobs_stored, 20, "one job per id (s0's from before)");
}
