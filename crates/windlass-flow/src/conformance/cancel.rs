//! Cancel, deadline and resume cases: a cancelled run stops its running step and
//! compensates what completed, wherever it was (running, sleeping, in its caller); a
//! deadline cancels the same way; a cancel and a completion never both win; an operator
//! resumes a failed run from its failed step.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::json;
use tokio::sync::Semaphore;
use windlass_queue::conformance::T0;
use windlass_queue::{JobState, Lease, ManualClock, Queue};

use super::{FlowDb, Log, POLL, WAIT, journal_keys, start_worker, until, until_job_in};
use crate::{
    CancelError, CancelOutcome, EndRun, FlowContext, FlowError, FlowStore, Flows, NewRun,
    ResumeError, Resumed, RunError, RunOptions, RunStatus, WaitError, Workflow,
};

/// Sets its flag when dropped unfinished: the step's future was stopped mid-way.
struct StoppedFlag(Arc<AtomicBool>, bool);

impl Drop for StoppedFlag {
    fn drop(&mut self) {
        if self.1 {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

/// Reserve and charge (each compensated), a day's sleep if the input says so, then ship,
/// which waits for a permit of `gate`.
struct Order {
    log: Log,
    gate: Arc<Semaphore>,
    ship_stopped: Arc<AtomicBool>,
}

impl Workflow for Order {
    const KIND: &'static str = "order";
    type Input = bool;
    type Output = String;
    async fn run(&self, ctx: FlowContext, sleep_first: bool) -> Result<String, FlowError> {
        for name in ["reserve", "charge"] {
            let (log, undo_log) = (self.log.clone(), self.log.clone());
            ctx.step(name, move || {
                let log = log.clone();
                async move {
                    log.push(name);
                    Ok::<_, String>(())
                }
            })
            .compensate_with(move |_: ()| {
                let log = undo_log.clone();
                async move {
                    log.push(&format!("undo {name}"));
                    Ok::<_, String>(())
                }
            })
            .await?;
        }
        if sleep_first {
            ctx.sleep("cool-off", Duration::from_secs(86_400)).await;
        }
        let (log, gate, stopped) = (
            self.log.clone(),
            Arc::clone(&self.gate),
            Arc::clone(&self.ship_stopped),
        );
        ctx.step("ship", move || {
            let (log, gate, stopped) = (log.clone(), Arc::clone(&gate), Arc::clone(&stopped));
            async move {
                log.push("ship");
                let mut flag = StoppedFlag(stopped, true);
                if !gate.is_closed() {
                    let _ = gate.acquire().await.map(|p| p.forget());
                }
                flag.1 = false;
                Ok::<_, String>("shipped".to_owned())
            }
        })
        .compensate_with(|_: String| async { Err::<(), _>("ship never completes in these cases") })
        .await
    }
}

struct Setup<S> {
    queue: Queue<S>,
    flows: Flows<S>,
    log: Log,
    ship_stopped: Arc<AtomicBool>,
}

/// `Order` over `store`, checking for cancels every 20 ms; `ship` blocks until cancelled
/// unless `ship_passes`.
fn order<S: FlowStore>(store: S, ship_passes: bool) -> Setup<S> {
    let queue = Queue::new(store);
    let gate = Arc::new(Semaphore::new(0));
    if ship_passes {
        gate.close();
    }
    let (log, ship_stopped) = (Log::default(), Arc::new(AtomicBool::new(false)));
    let flows = Flows::builder(&queue)
        .register(Order {
            log: log.clone(),
            gate,
            ship_stopped: Arc::clone(&ship_stopped),
        })
        .cancel_check(Duration::from_millis(20))
        .poll(POLL)
        .build()
        .expect("flows");
    Setup {
        queue,
        flows,
        log,
        ship_stopped,
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Case: cancelling a run busy in a step stops that step (its future is dropped, it is
/// never journaled nor compensated), then compensates the completed steps latest first; the
/// run ends `failed` with the reason. Cancelling again, an unknown run, or with an
/// oversized reason says so.
pub async fn a_cancelled_run_stops_its_running_step_then_compensates<S: FlowStore>(
    db: FlowDb<S>,
    _clock: ManualClock,
) {
    let s = order(db.store, false);
    let worker = start_worker(&s.queue, &s.flows).await;
    let run = s
        .flows
        .start::<Order>("order-1", &false)
        .await
        .expect("start");
    let log = s.log.clone();
    until("ship to start", || log.all().contains(&"ship".to_owned())).await;
    assert_eq!(
        run.cancel("changed my mind").await.expect("cancel"),
        CancelOutcome::Cancelled
    );
    match run.result(WAIT, POLL).await {
        Err(WaitError::Failed(message)) => assert_eq!(message, "cancelled: changed my mind"),
        other => panic!("a cancelled run ended as {other:?}"),
    }
    assert_eq!(
        s.log.all(),
        ["reserve", "charge", "ship", "undo charge", "undo reserve"]
    );
    assert!(
        s.ship_stopped.load(Ordering::SeqCst),
        "the running step was stopped"
    );
    let keys = journal_keys(&run).await;
    assert_eq!(
        keys,
        [
            "reserve",
            "charge",
            "$failure",
            "~undo:charge",
            "~undo:reserve"
        ]
    );
    assert_eq!(
        run.cancel("again").await.expect("cancel again"),
        CancelOutcome::Finished(RunStatus::Failed)
    );
    assert!(matches!(
        s.flows.cancel("no-such-run", "").await,
        Err(CancelError::NotFound(id)) if id == "no-such-run"
    ));
    assert!(matches!(
        s.flows.cancel("order-1", "x".repeat(1025)).await,
        Err(CancelError::InvalidReason(_))
    ));
    worker.shutdown(Duration::from_secs(5)).await;
}

/// Case: cancelling a run that sleeps (for a day) wakes it at once to roll back — the clock
/// never moves — and the steps after the sleep never run.
pub async fn a_cancelled_sleeping_run_rolls_back_at_once<S: FlowStore>(
    db: FlowDb<S>,
    _clock: ManualClock,
) {
    let s = order(db.store, true);
    let worker = start_worker(&s.queue, &s.flows).await;
    let run = s
        .flows
        .start::<Order>("order-2", &true)
        .await
        .expect("start");
    let job = run.record().await.expect("record").job;
    until_job_in(&s.queue, job, JobState::Scheduled, "the run never slept").await;
    assert_eq!(
        s.flows.cancel("order-2", "").await.expect("cancel"),
        CancelOutcome::Cancelled
    );
    match run.result(WAIT, POLL).await {
        Err(WaitError::Failed(message)) => assert_eq!(message, "cancelled"),
        other => panic!("a cancelled sleeping run ended as {other:?}"),
    }
    assert_eq!(
        s.log.all(),
        ["reserve", "charge", "undo charge", "undo reserve"]
    );
    worker.shutdown(Duration::from_secs(5)).await;
}

/// Case: a run's deadline cancels it like a caller's cancel — one busy in a step (stopped),
/// one sleeping past its deadline (its job woken at the deadline, not after the day) — both
/// compensate and end `failed`, naming the deadline.
pub async fn a_run_past_its_deadline_is_cancelled_and_compensated<S: FlowStore>(
    db: FlowDb<S>,
    clock: ManualClock,
) {
    let s = order(db.store, false);
    let worker = start_worker(&s.queue, &s.flows).await;
    // Shorter than the worker's lease: moving the clock past the deadline must not also
    // expire the busy run's lease (which would hand it to a second attempt).
    let ten_s = RunOptions::new().deadline(Duration::from_secs(10));
    let busy = s
        .flows
        .start_with::<Order>("busy", &false, &ten_s)
        .await
        .expect("start busy");
    let log = s.log.clone();
    until("ship to start", || log.all().contains(&"ship".to_owned())).await;
    let sleepy = s
        .flows
        .start_with::<Order>("sleepy", &true, &ten_s)
        .await
        .expect("start sleepy");
    let job = sleepy.record().await.expect("record").job;
    until_job_in(&s.queue, job, JobState::Scheduled, "the run never slept").await;
    let slept = s.queue.get(job).await.expect("get").expect("the job");
    assert_eq!(slept.run_at_ms, T0 + 10_000, "woken at the deadline");
    clock.advance(Duration::from_secs(11));
    for run in [&busy, &sleepy] {
        match run.result(WAIT, POLL).await {
            Err(WaitError::Failed(message)) => {
                assert!(message.contains("deadline exceeded"), "{message}");
            }
            other => panic!("a run past its deadline ended as {other:?}"),
        }
    }
    assert!(s.ship_stopped.load(Ordering::SeqCst));
    assert_eq!(
        sorted(s.log.all()),
        sorted(
            [
                "reserve",
                "charge",
                "ship",
                "undo charge",
                "undo reserve",
                "reserve",
                "charge",
                "undo charge",
                "undo reserve"
            ]
            .map(String::from)
            .to_vec()
        )
    );
    assert!(matches!(
        s.flows
            .start_with::<Order>("zero", &false, &RunOptions::new().deadline(Duration::ZERO))
            .await,
        Err(crate::StartError::InvalidOption {
            field: "deadline",
            ..
        })
    ));
    worker.shutdown(Duration::from_secs(5)).await;
}

/// Case: a direct run cancelled mid-step rolls back in its caller (no worker runs): the
/// caller gets the cancel's failure, and the run's job has one attempt, completed.
pub async fn a_direct_run_cancelled_mid_step_rolls_back_in_its_caller<S: FlowStore>(
    db: FlowDb<S>,
    _clock: ManualClock,
) {
    let s = order(db.store, false);
    let caller = {
        let flows = s.flows.clone();
        tokio::spawn(async move { flows.run::<Order>("direct", &false).await })
    };
    let log = s.log.clone();
    until("ship to start in the caller", || {
        log.all().contains(&"ship".to_owned())
    })
    .await;
    assert_eq!(
        s.flows.cancel("direct", "stop").await.expect("cancel"),
        CancelOutcome::Cancelled
    );
    let ended = tokio::time::timeout(WAIT, caller)
        .await
        .expect("the caller returned")
        .expect("the caller's task");
    match ended {
        Err(RunError::Wait(WaitError::Failed(message))) => assert_eq!(message, "cancelled: stop"),
        other => panic!("a cancelled direct run ended as {other:?}"),
    }
    assert_eq!(
        s.log.all(),
        ["reserve", "charge", "ship", "undo charge", "undo reserve"]
    );
    let handle = s
        .flows
        .handle("direct")
        .await
        .expect("handle")
        .expect("run");
    let job = s
        .queue
        .get(handle.record().await.expect("record").job)
        .await
        .expect("get")
        .expect("the job");
    assert_eq!(job.state, JobState::Completed);
    assert_eq!(job.attempts.len(), 1, "rolled back in the caller's attempt");
    assert!(job.attempts[0].worker.starts_with("inline-"));
}

/// Case: the status rule ([`RunStatus::may_become`]) holds in the store for every pair of
/// statuses; a cancel moves only a running run; a direct run's end after a cancel writes
/// neither the run nor the job (its job stays running, so the run is never left without a
/// driver), while its failure is stored; a resume reopens only what is over or stranded.
pub async fn a_cancel_and_a_completion_never_both_win<S: FlowStore>(
    db: FlowDb<S>,
    _clock: ManualClock,
) {
    let store = db.store;
    let new_run = |id: String| NewRun {
        id,
        kind: "k".into(),
        input: json!(null),
        job: windlass_queue::JobId(1),
        created_at_ms: T0,
    };
    for from in RunStatus::ALL {
        for to in RunStatus::ALL {
            let id = format!("{}-{}", from.as_str(), to.as_str());
            store.insert_run(new_run(id.clone())).await.expect("insert");
            if from != RunStatus::Running {
                assert!(
                    store
                        .set_run_status(id.clone(), from, None, None)
                        .await
                        .expect("set"),
                    "a running run may become {from:?}"
                );
            }
            let applied = store
                .set_run_status(id.clone(), to, Some(json!(1)), None)
                .await
                .expect("set");
            assert_eq!(applied, from.may_become(to), "{from:?} -> {to:?}");
            let now = store.run(id).await.expect("run").expect("the run").status;
            assert_eq!(now, if applied { to } else { from }, "{from:?} -> {to:?}");
        }
        let id = format!("cancel-{}", from.as_str());
        store.insert_run(new_run(id.clone())).await.expect("insert");
        if from != RunStatus::Running {
            store
                .set_run_status(id.clone(), from, None, Some("before".into()))
                .await
                .expect("set");
        }
        let (run, moved) = store
            .cancel_run(id, "cancelled: test".into())
            .await
            .expect("cancel")
            .expect("the run");
        assert_eq!(moved, from == RunStatus::Running, "cancel from {from:?}");
        if moved {
            assert_eq!(run.status, RunStatus::Compensating);
            assert_eq!(run.error.as_deref(), Some("cancelled: test"));
        } else {
            assert_eq!(run.status, from);
        }
    }
    assert!(
        store
            .cancel_run("nope".into(), "x".into())
            .await
            .expect("cancel")
            .is_none()
    );

    let claim = super::store::inline_claim();
    let started = store
        .start_run(super::store::start("e", Some(claim)))
        .await
        .expect("start");
    let lease: Lease = started.claimed.expect("claimed").lease;
    store
        .cancel_run("e".into(), "cancelled: late".into())
        .await
        .expect("cancel")
        .expect("the run");
    let finish = || super::store::completed(lease.clone());
    let late = store
        .end_run(
            "e".into(),
            RunStatus::Completed,
            Some(json!(1)),
            None,
            finish(),
        )
        .await
        .expect("end");
    assert_eq!(late, EndRun::RunMoved(RunStatus::Compensating));
    let job = store.get(started.run.job).await.expect("get").expect("job");
    assert_eq!(job.state, JobState::Running, "the job still drives the run");
    let failed = store
        .end_run(
            "e".into(),
            RunStatus::Failed,
            None,
            Some("cancelled: late".into()),
            finish(),
        )
        .await
        .expect("end");
    assert_eq!(failed, EndRun::Stored);
    let run = store.run("e".into()).await.expect("run").expect("the run");
    assert_eq!(run.status, RunStatus::Failed);
    let job = store.get(run.job).await.expect("get").expect("job");
    assert_eq!(job.state, JobState::Completed);

    // Resume: a queued run's job is alive, so it is not resumable; once that job is
    // cancelled the run is stranded, and resuming it gives it a new job.
    let queued = store
        .start_run(super::store::start("q", None))
        .await
        .expect("start");
    let job = super::store::start("q", None).job;
    let refused = store
        .resume_run("q".into(), Vec::new(), job.clone())
        .await
        .expect("resume");
    assert_eq!(refused, Some(Resumed::NotResumable(RunStatus::Running)));
    store.cancel(queued.run.job).await.expect("cancel its job");
    let Some(Resumed::Resumed { run, retired }) = store
        .resume_run("q".into(), vec![("none".into(), "~r1:none".into())], job)
        .await
        .expect("resume")
    else {
        panic!("a stranded run was not resumed");
    };
    assert_eq!(retired, 0);
    assert_eq!(run.status, RunStatus::Running);
    assert_ne!(run.job, queued.run.job, "a new job drives it");
    let new_job = store.get(run.job).await.expect("get").expect("new job");
    assert_eq!(new_job.state, JobState::Available);
}

/// Fails its step `c` while `fail` is set.
struct Flaky {
    log: Log,
    fail: Arc<AtomicBool>,
}

impl Workflow for Flaky {
    const KIND: &'static str = "flaky";
    type Input = ();
    type Output = String;
    async fn run(&self, ctx: FlowContext, _: ()) -> Result<String, FlowError> {
        let mut out = String::new();
        for name in ["a", "b", "c", "d"] {
            let (log, undo_log, fail) =
                (self.log.clone(), self.log.clone(), Arc::clone(&self.fail));
            let step = ctx.step(name, move || {
                let (log, fail) = (log.clone(), Arc::clone(&fail));
                async move {
                    log.push(name);
                    if name == "c" && fail.load(Ordering::SeqCst) {
                        return Err("the card service is down".to_owned());
                    }
                    Ok(name.to_owned())
                }
            });
            // Only `b` has an effect to undo.
            let got: String = if name == "b" {
                step.compensate_with(move |_: String| {
                    let log = undo_log.clone();
                    async move {
                        log.push("undo b");
                        Ok::<_, String>(())
                    }
                })
                .await?
            } else {
                step.await?
            };
            out.push_str(&got);
        }
        Ok(out)
    }
}

/// Case: an operator resumes a failed saga from its failed step: the completed,
/// uncompensated step keeps its result (not run again), the compensated step and the failed
/// step run again, and the run completes; the retired entries stay as history. A completed
/// or unknown run is not resumed.
pub async fn a_failed_run_resumes_from_its_failed_step<S: FlowStore>(
    db: FlowDb<S>,
    _clock: ManualClock,
) {
    let queue = Queue::new(db.store);
    let (log, fail) = (Log::default(), Arc::new(AtomicBool::new(true)));
    let flows = Flows::builder(&queue)
        .register(Flaky {
            log: log.clone(),
            fail: Arc::clone(&fail),
        })
        .poll(POLL)
        .build()
        .expect("flows");
    let worker = start_worker(&queue, &flows).await;
    let run = flows.start::<Flaky>("flaky", &()).await.expect("start");
    assert!(matches!(
        run.result(WAIT, POLL).await,
        Err(WaitError::Failed(_))
    ));
    assert_eq!(log.all(), ["a", "b", "c", "undo b"]);
    fail.store(false, Ordering::SeqCst);
    assert_eq!(flows.resume("flaky").await.expect("resume"), 4);
    assert_eq!(run.result(WAIT, POLL).await.expect("resumed"), "abcd");
    assert_eq!(
        log.all(),
        ["a", "b", "c", "undo b", "b", "c", "d"],
        "a kept its result; b (compensated) and c (failed) ran again"
    );
    let keys = journal_keys(&run).await;
    for kept in [
        "a",
        "b",
        "c",
        "d",
        "~r1:b",
        "~r1:c",
        "~r1:$failure",
        "~r1:~undo:b",
    ] {
        assert!(keys.contains(&kept.to_owned()), "{kept} in {keys:?}");
    }
    assert!(!keys.contains(&"$failure".to_owned()));
    assert!(matches!(
        flows.resume("flaky").await,
        Err(ResumeError::NotResumable {
            status: "completed",
            ..
        })
    ));
    assert!(matches!(
        flows.resume("nope").await,
        Err(ResumeError::NotFound(_))
    ));
    worker.shutdown(Duration::from_secs(5)).await;
}

/// Case: cancels and completions racing on many runs, from two stores on one database (two
/// processes): for every run exactly one wins — the cancel (the run is compensating, and a
/// direct run's combined end wrote neither the run nor its job) or the completion (the run
/// is completed, and the cancel says it was not running).
pub async fn racing_cancels_and_completions_have_one_winner_each<S: FlowStore>(
    db: FlowDb<S>,
    _clock: ManualClock,
) {
    let (ours, theirs) = (Arc::new(db.store), Arc::new((db.reopen)().await));
    let claim = super::store::inline_claim();
    let mut leases = Vec::new();
    for i in 0..24 {
        let id = format!("race-{i}");
        let started = ours
            .start_run(super::store::start(&id, Some(claim.clone())))
            .await
            .expect("start");
        leases.push((id, started.claimed.expect("claimed").lease));
    }
    let mut racers = tokio::task::JoinSet::new();
    for (i, (id, lease)) in leases.into_iter().enumerate() {
        let (ours, theirs) = (Arc::clone(&ours), Arc::clone(&theirs));
        racers.spawn(async move {
            let cancel = {
                let (theirs, id) = (Arc::clone(&theirs), id.clone());
                tokio::spawn(async move {
                    theirs
                        .cancel_run(id, "cancelled: race".into())
                        .await
                        .expect("cancel")
                        .expect("the run")
                        .1
                })
            };
            // Half the runs complete through the direct start's combined end, half through
            // the driver's conditional status write.
            let completed = if i % 2 == 0 {
                let finish = super::store::completed(lease);
                let end = ours
                    .end_run(
                        id.clone(),
                        RunStatus::Completed,
                        Some(json!(1)),
                        None,
                        finish,
                    )
                    .await
                    .expect("end");
                assert_ne!(end, EndRun::LeaseLost, "{id}");
                end == EndRun::Stored
            } else {
                ours.set_run_status(id.clone(), RunStatus::Completed, Some(json!(1)), None)
                    .await
                    .expect("complete")
            };
            let cancelled = cancel.await.expect("the cancel's task");
            (id, cancelled, completed, i % 2 == 0)
        });
    }
    let (mut cancels, mut completions) = (0, 0);
    while let Some(done) = racers.join_next().await {
        let (id, cancelled, completed, inline) = done.expect("a racer");
        assert!(
            cancelled != completed,
            "{id}: exactly one of cancel ({cancelled}) and completion ({completed}) wins"
        );
        let run = ours.run(id.clone()).await.expect("run").expect("the run");
        let job = ours.get(run.job).await.expect("get").expect("job");
        if cancelled {
            cancels += 1;
            assert_eq!(run.status, RunStatus::Compensating, "{id}");
            if inline {
                assert_eq!(
                    job.state,
                    JobState::Running,
                    "{id}: the job still drives it"
                );
            }
        } else {
            completions += 1;
            assert_eq!(run.status, RunStatus::Completed, "{id}");
            if inline {
                assert_eq!(job.state, JobState::Completed, "{id}");
            }
        }
    }
    assert_eq!(cancels + completions, 24);
}
