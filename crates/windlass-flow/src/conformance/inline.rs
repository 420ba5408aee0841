//! Cases of the direct start ([`Flows::run`]): the run executes in the caller under a lease
//! its job was stored with, and the queue's workers take over when the caller dies or the
//! run must wait.

use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use windlass_queue::{JobState, ManualClock, Queue};

use super::timer::Nap;
use super::{FlowDb, Log, POLL, Three, WAIT, start_worker, until, until_job_in};
use crate::{FlowStore, Flows, RunError, RunStatus, WaitError};

const LEASE: Duration = Duration::from_secs(30);

fn three<S: FlowStore>(
    queue: &Queue<S>,
    log: &Log,
    b_runs: &Arc<AtomicU32>,
    hang: bool,
) -> Flows<S> {
    Flows::builder(queue)
        .register(Three {
            log: log.clone(),
            hang_b_once: hang,
            b_runs: Arc::clone(b_runs),
        })
        .inline_lease(LEASE)
        .poll(POLL)
        .build()
        .expect("flows")
}

/// Case: `run` executes the workflow in the caller, with no worker anywhere: its job is
/// stored claimed (one attempt, by this process's inline id, never queued) and completed;
/// a second `run` of the id returns the recorded output without running a step again.
pub async fn a_direct_run_executes_in_the_caller<S: FlowStore>(db: FlowDb<S>, _clock: ManualClock) {
    let queue = Queue::new(db.store);
    let log = Log::default();
    let flows = three(&queue, &log, &Arc::default(), false);
    let out = flows
        .run::<super::Three>("direct-1", &1)
        .await
        .expect("run");
    assert_eq!(out, "2-20");
    assert_eq!(log.all(), ["a", "b", "c"]);
    let run = flows
        .handle("direct-1")
        .await
        .expect("handle")
        .expect("the run");
    let record = run.record().await.expect("record");
    assert_eq!(record.status, RunStatus::Completed);
    let job = queue
        .get(record.job)
        .await
        .expect("job")
        .expect("the run's job");
    assert_eq!(job.state, JobState::Completed);
    assert_eq!(job.attempts.len(), 1, "one attempt: the caller's");
    assert!(
        job.attempts[0].worker.starts_with("inline-"),
        "the attempt was the caller's, not a worker's: {:?}",
        job.attempts[0]
    );
    assert_eq!(job.attempts[0].outcome, "completed");

    let again = flows
        .run::<super::Three>("direct-1", &9)
        .await
        .expect("run again");
    assert_eq!(
        again, "2-20",
        "the recorded output, not a run of the new input"
    );
    assert_eq!(log.all(), ["a", "b", "c"], "no step ran again");
    match flows.run::<super::Three>("", &1).await {
        Err(RunError::Start(crate::StartError::InvalidId { .. })) => {}
        other => panic!("an empty id was accepted: {other:?}"),
    }
}

/// Case: the caller dies while step `b` runs (its runtime dropped mid-step, its lease left
/// behind); once the lease has expired a worker resumes the run: `a` is not run again,
/// `b` is (it never finished), `c` runs once.
pub async fn a_direct_run_killed_mid_step_is_resumed_by_a_worker<S: FlowStore>(
    db: FlowDb<S>,
    clock: ManualClock,
) {
    let log = Log::default();
    let b_runs = Arc::new(AtomicU32::new(0));
    {
        let (log, b_runs, reopen) = (log.clone(), Arc::clone(&b_runs), Arc::clone(&db.reopen));
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("a runtime for the doomed caller");
            rt.block_on(async {
                let queue = Queue::new(reopen().await);
                let flows = three(&queue, &log, &b_runs, true);
                let caller = tokio::spawn(async move {
                    let _ = flows.run::<super::Three>("direct-2", &5).await;
                });
                until("step b to start in the caller", || {
                    b_runs.load(std::sync::atomic::Ordering::SeqCst) == 1
                })
                .await;
                // The caller dies with the runtime; this handle goes with it.
                drop(caller);
            });
            drop(rt);
        })
        .join()
        .expect("the doomed caller's thread");
    }
    assert_eq!(log.all(), ["a", "b"]);
    let queue = Queue::new(db.store);
    let flows = three(&queue, &log, &b_runs, true);
    let run = flows
        .handle("direct-2")
        .await
        .expect("handle")
        .expect("the run was stored before it ran");
    let job = run.record().await.expect("record").job;
    let worker = start_worker(&queue, &flows).await;
    // Within the lease, no worker may touch the run: it is the caller's.
    assert!(matches!(
        run.result(Duration::from_millis(200), POLL).await,
        Err(WaitError::Timeout(_))
    ));
    assert_eq!(log.all(), ["a", "b"], "nothing ran while the lease held");
    clock.advance(LEASE + Duration::from_secs(1));
    let out = run.result(WAIT, POLL).await.expect("result");
    assert_eq!(out, serde_json::json!("6-60"));
    assert_eq!(
        log.all(),
        ["a", "b", "b", "c"],
        "only the unfinished step ran again"
    );
    // The run's status is stored before its job's end: wait for the job.
    until_job_in(
        &queue,
        job,
        JobState::Completed,
        "the run's job never completed",
    )
    .await;
    let record = queue.get(job).await.expect("job").expect("the job");
    let outcomes: Vec<_> = record.attempts.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["lease_expired", "completed"]);
    worker.shutdown(Duration::from_secs(5)).await;
}

/// Case: a direct run reaching a durable sleep gives its job to the queue (snoozed: the
/// caller holds nothing while it sleeps); the workers finish it when the timer is due, and
/// the caller's `run` returns the output.
pub async fn a_direct_run_that_sleeps_is_finished_by_the_workers<S: FlowStore>(
    db: FlowDb<S>,
    clock: ManualClock,
) {
    let queue = Queue::new(db.store);
    let log = Log::default();
    let flows = Flows::builder(&queue)
        .register(Nap { log: log.clone() })
        .poll(POLL)
        .build()
        .expect("flows");
    let caller = {
        let flows = flows.clone();
        tokio::spawn(async move { flows.run::<Nap>("direct-nap", &()).await })
    };
    let handle = loop {
        if let Some(h) = flows.handle("direct-nap").await.expect("handle") {
            break h;
        }
        tokio::time::sleep(POLL).await;
    };
    let job = handle.record().await.expect("record").job;
    until_job_in(
        &queue,
        job,
        JobState::Scheduled,
        "the run never went to sleep",
    )
    .await;
    assert_eq!(log.all(), ["before"]);
    assert!(
        !caller.is_finished(),
        "the caller waits for the run's result"
    );
    let worker = start_worker(&queue, &flows).await;
    clock.advance(Duration::from_secs(3600));
    let slept = tokio::time::timeout(WAIT, caller)
        .await
        .expect("the caller got its result")
        .expect("the caller's task")
        .expect("the run's output");
    assert_eq!(slept, 3_600_000);
    assert_eq!(log.all(), ["before", "after"]);
    worker.shutdown(Duration::from_secs(5)).await;
}

/// Case: cancelling a direct run's job (the queue's cancel, relayed by the run's own
/// heartbeat) stops the run in its caller, and `run` returns an error naming the stranded
/// run instead of waiting forever.
pub async fn a_cancelled_direct_run_returns_instead_of_hanging<S: FlowStore>(
    db: FlowDb<S>,
    _clock: ManualClock,
) {
    let queue = Queue::new(db.store);
    let log = Log::default();
    let b_runs = Arc::new(AtomicU32::new(0));
    let flows = Flows::builder(&queue)
        .register(Three {
            log: log.clone(),
            hang_b_once: true,
            b_runs: Arc::clone(&b_runs),
        })
        // Heartbeats every 20 ms of real time: the cancel request reaches the caller fast.
        .inline_lease(Duration::from_millis(60))
        .poll(POLL)
        .build()
        .expect("flows");
    let caller = {
        let flows = flows.clone();
        tokio::spawn(async move { flows.run::<Three>("direct-cancel", &1).await })
    };
    until("step b to start in the caller", || {
        b_runs.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    let run = flows
        .handle("direct-cancel")
        .await
        .expect("handle")
        .expect("the run");
    let job = run.record().await.expect("record").job;
    queue.cancel(job).await.expect("cancel");
    let ended = tokio::time::timeout(WAIT, caller)
        .await
        .expect("the caller returned")
        .expect("the caller's task");
    match ended {
        Err(RunError::Wait(WaitError::Stranded { job_state, .. })) => {
            assert_eq!(job_state, "cancelled");
        }
        other => panic!("a cancelled direct run ended as {other:?}"),
    }
    assert_eq!(log.all(), ["a", "b"], "nothing ran after the cancel");
}

/// A queue on `store` whose flows queue runs at most one run of each kind at once.
pub(super) async fn one_run_per_kind<S: FlowStore>(store: S) -> Queue<S> {
    let queue = Queue::new(store);
    queue
        .set_limits(
            "flows",
            windlass_queue::QueueLimits {
                max_running_per_key: Some(1),
                ..windlass_queue::QueueLimits::default()
            },
        )
        .await
        .expect("limits");
    queue
}

/// Holds each run inside its one step until a permit is given; the probe counts runs inside.
/// Of kind `gated`, or `gated-b` (a second kind, for limits per kind).
pub(super) struct Gated<const B: bool = false> {
    pub(super) probe: windlass_test_support::Peak,
    pub(super) permits: Arc<tokio::sync::Semaphore>,
}

impl<const B: bool> crate::Workflow for Gated<B> {
    const KIND: &'static str = if B { "gated-b" } else { "gated" };
    type Input = u32;
    type Output = u32;
    async fn run(&self, ctx: crate::FlowContext, n: u32) -> Result<u32, crate::FlowError> {
        let (probe, permits) = (self.probe.clone(), Arc::clone(&self.permits));
        ctx.step("hold", move || {
            let (probe, permits) = (probe.clone(), Arc::clone(&permits));
            async move {
                let _inside = probe.enter();
                permits.acquire().await.map_err(|e| e.to_string())?.forget();
                Ok::<_, String>(n)
            }
        })
        .await
    }
}

/// Case: with a per-kind concurrency limit of one on the flows queue, direct runs (`run`)
/// keep it like started ones: three direct runs and one started run of one kind, and while
/// the first is held inside its step, the others' jobs wait in the queue (not running);
/// all four finish, never two inside at once.
pub async fn a_direct_run_keeps_the_queues_limits<S: FlowStore>(
    db: FlowDb<S>,
    _clock: ManualClock,
) {
    let queue = one_run_per_kind(db.store).await;
    let probe = windlass_test_support::Peak::new();
    let permits = Arc::new(tokio::sync::Semaphore::new(0));
    let flows = Flows::builder(&queue)
        .register(Gated::<false> {
            probe: probe.clone(),
            permits: Arc::clone(&permits),
        })
        .inline_lease(LEASE)
        .poll(POLL)
        .build()
        .expect("flows");
    let worker = start_worker(&queue, &flows).await;
    let direct: Vec<_> = (0..3u32)
        .map(|n| {
            let flows = flows.clone();
            tokio::spawn(async move { flows.run::<Gated>(format!("gated-{n}"), &n).await })
        })
        .collect();
    let started = flows.start::<Gated>("gated-3", &3).await.expect("start");
    // Every run is stored and one is inside its step.
    let mut jobs = Vec::new();
    for n in 0..4 {
        let id = format!("gated-{n}");
        let deadline = tokio::time::Instant::now() + WAIT;
        let run = loop {
            if let Some(run) = flows.handle(id.clone()).await.expect("handle") {
                break run;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "run {id} never stored"
            );
            tokio::time::sleep(POLL).await;
        };
        jobs.push(run.record().await.expect("record").job);
    }
    until("a run inside its step", || probe.now() >= 1).await;
    let mut running = 0;
    for job in &jobs {
        if queue.get(*job).await.expect("job").expect("the job").state == JobState::Running {
            running += 1;
        }
    }
    assert_eq!(
        running, 1,
        "one run's job runs; the others wait in the queue"
    );
    permits.add_permits(100);
    for (n, run) in direct.into_iter().enumerate() {
        let out = run.await.expect("the task").expect("run");
        assert_eq!(out, u32::try_from(n).expect("small"));
    }
    assert_eq!(started.result(WAIT, POLL).await.expect("result"), 3);
    assert_eq!(probe.max(), 1, "never two runs of the kind inside at once");
    worker.shutdown(Duration::from_secs(5)).await;
}
