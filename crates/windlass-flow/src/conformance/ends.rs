//! How a run driven by a worker ends: its end and its job's completion are one write
//! (`end_run`, through the queue's `JobContext::complete_with`), and the two ways that write
//! can find the run moved — cancelled as the code ended, or over already.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::Semaphore;
use windlass_queue::{JobState, ManualClock, Queue};

use super::{FlowDb, Log, POLL, WAIT, start_worker, until, until_job_in};
use crate::{
    CancelOutcome, FlowContext, FlowError, FlowStore, Flows, RunStatus, WaitError, Workflow,
};

/// Step `a` (compensated), then step `b`, which waits for a permit of `gate`.
struct Gated {
    log: Log,
    gate: Arc<Semaphore>,
}

impl Workflow for Gated {
    const KIND: &'static str = "gated";
    type Input = ();
    type Output = String;
    async fn run(&self, ctx: FlowContext, (): ()) -> Result<String, FlowError> {
        let (log, undo) = (self.log.clone(), self.log.clone());
        ctx.step("a", move || {
            let log = log.clone();
            async move {
                log.push("a");
                Ok::<_, String>(())
            }
        })
        .compensate_with(move |()| {
            let log = undo.clone();
            async move {
                log.push("undo a");
                Ok::<_, String>(())
            }
        })
        .await?;
        let (log, gate) = (self.log.clone(), Arc::clone(&self.gate));
        ctx.step("b", move || {
            let (log, gate) = (log.clone(), Arc::clone(&gate));
            async move {
                log.push("b");
                let _ = gate.acquire().await.map(|p| p.forget());
                Ok::<_, String>("done".to_owned())
            }
        })
        .await
    }
}

/// `Gated` over `store`; the driver never looks for a cancel while the code runs (it checks
/// once an hour), so a cancel is met only by the run's end.
fn gated<S: FlowStore>(store: S) -> (Queue<S>, Flows<S>, Log, Arc<Semaphore>) {
    let queue = Queue::new(store);
    let (log, gate) = (Log::default(), Arc::new(Semaphore::new(0)));
    let flows = Flows::builder(&queue)
        .register(Gated {
            log: log.clone(),
            gate: Arc::clone(&gate),
        })
        .cancel_check(Duration::from_secs(3600))
        .poll(POLL)
        .build()
        .expect("flows");
    (queue, flows, log, gate)
}

/// Case: a cancel that reaches a worker's run just before its code ends wins the race on
/// the run's row: the code's end is not stored; the job is handed back to the workers at
/// once (an attempt ending `snoozed`, not counted as a failure), and the next attempt rolls
/// the run back. The run ends `failed` with the cancel's reason; its completed step is
/// compensated once.
pub async fn a_cancel_that_beats_a_workers_end_rolls_the_run_back<S: FlowStore>(
    db: FlowDb<S>,
    _clock: ManualClock,
) {
    let (queue, flows, log, gate) = gated(db.store);
    let worker = start_worker(&queue, &flows).await;
    let run = flows.start::<Gated>("gated-1", &()).await.expect("start");
    let seen = log.clone();
    until("step b to start", || seen.all().contains(&"b".to_owned())).await;
    assert_eq!(
        run.cancel("race").await.expect("cancel"),
        CancelOutcome::Cancelled
    );
    gate.add_permits(1);
    match run.result(WAIT, POLL).await {
        Err(WaitError::Failed(message)) => assert_eq!(message, "cancelled: race"),
        other => panic!("the run ended as {other:?}"),
    }
    assert_eq!(log.all(), ["a", "b", "undo a"]);
    let job = queue
        .get(run.record().await.expect("run").job)
        .await
        .expect("get")
        .expect("the run's job");
    assert_eq!(job.state, JobState::Completed);
    let outcomes: Vec<&str> = job.attempts.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["snoozed", "completed"]);
    assert!(
        job.attempts[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("handed to the workers")),
        "the hand-over says why: {:?}",
        job.attempts[0].error
    );
    let counts = worker.counts();
    assert_eq!((counts.snoozed, counts.completed, counts.fenced), (1, 1, 0));
    worker.shutdown(Duration::from_secs(5)).await;
}

/// Case: a run found over when its job runs (its end was stored before, by whatever means)
/// is left as it is, and its job simply completes: one attempt, no hand-over.
pub async fn a_run_found_over_only_completes_its_job<S: FlowStore>(
    db: FlowDb<S>,
    _clock: ManualClock,
) {
    let (queue, flows, log, _gate) = gated(db.store);
    let run = flows.start::<Gated>("gated-2", &()).await.expect("start");
    assert!(
        queue
            .store()
            .set_run_status(
                "gated-2".into(),
                RunStatus::Completed,
                Some(json!("earlier")),
                None
            )
            .await
            .expect("set")
    );
    let worker = start_worker(&queue, &flows).await;
    let record = run.record().await.expect("run");
    until_job_in(&queue, record.job, JobState::Completed, "the run's job").await;
    assert_eq!(record.output, Some(json!("earlier")));
    assert_eq!(
        run.record().await.expect("run"),
        record,
        "the run is untouched"
    );
    assert!(log.all().is_empty(), "no step ran");
    let job = queue.get(record.job).await.expect("get").expect("the job");
    let outcomes: Vec<&str> = job.attempts.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["completed"]);
    let counts = worker.counts();
    assert_eq!((counts.snoozed, counts.completed, counts.fenced), (0, 1, 0));
    worker.shutdown(Duration::from_secs(5)).await;
}

/// Case: the worker's end writer called again for an end it already stored (as when the
/// first answer was lost and the queue retries the writer) answers that same stored end,
/// and nothing is written twice; with a stale lease it stores nothing and says so.
pub async fn a_workers_end_written_twice_is_stored_once<S: FlowStore>(
    db: FlowDb<S>,
    _clock: ManualClock,
) {
    let store = db.store;
    let started = store
        .start_run(super::store::start(
            "twice",
            Some(super::store::inline_claim()),
        ))
        .await
        .expect("start");
    let lease = started.claimed.expect("claimed").lease;
    let end = crate::driver::RunEnd::Completed(json!(1));
    let mut stale = super::store::completed(lease.clone());
    stale.lease.token += 1;
    assert!(
        crate::driver::store_end(&store, "twice".into(), "k", &end, stale)
            .await
            .expect("write")
            .is_none(),
        "a stale lease stores nothing"
    );
    assert_eq!(
        store
            .run("twice".into())
            .await
            .expect("run")
            .expect("run")
            .status,
        RunStatus::Running
    );
    let finish = super::store::completed(lease);
    for call in ["first", "second"] {
        let stored = crate::driver::store_end(&store, "twice".into(), "k", &end, finish.clone())
            .await
            .expect("write");
        let stored = stored.map(|f| (f.next, f.lease.token, f.record.at_ms));
        assert_eq!(
            stored,
            Some((finish.next.clone(), finish.lease.token, finish.record.at_ms)),
            "the {call} call answers the stored end"
        );
    }
    let run = store.run("twice".into()).await.expect("run").expect("run");
    assert_eq!(
        (run.status, run.output),
        (RunStatus::Completed, Some(json!(1)))
    );
    let job = store.get(run.job).await.expect("get").expect("job");
    assert_eq!(job.state, JobState::Completed);
    assert_eq!(job.attempts.len(), 1, "one attempt, stored once");
}
