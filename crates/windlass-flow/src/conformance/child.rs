//! Child workflow cases: a parent starts children, holds no worker while they run, is woken
//! by their ends, and reads their results (or their failure).

use std::time::Duration;

use windlass_queue::{ManualClock, Queue};

use super::{FlowDb, Log, POLL, WAIT, start_worker};
use crate::{EntryKind, FlowContext, FlowError, FlowStore, Flows, RunStatus, WaitError, Workflow};

/// Doubles its input in a step; fails for 13.
struct Double {
    log: Log,
}

impl Workflow for Double {
    const KIND: &'static str = "double";
    type Input = u64;
    type Output = u64;
    async fn run(&self, ctx: FlowContext, n: u64) -> Result<u64, FlowError> {
        let log = self.log.clone();
        ctx.step("double", || {
            let log = log.clone();
            async move {
                log.push(&format!("double {n}"));
                if n == 13 {
                    return Err(format!("{n} is unlucky"));
                }
                Ok(2 * n)
            }
        })
        .await
    }
}

/// Starts two children at once and adds their results.
struct Parent;

impl Workflow for Parent {
    const KIND: &'static str = "parent";
    type Input = (u64, u64);
    type Output = u64;
    async fn run(&self, ctx: FlowContext, (a, b): (u64, u64)) -> Result<u64, FlowError> {
        let id = ctx.run_id().to_owned();
        let (x, y) = tokio::join!(
            ctx.child::<Double>(format!("{id}-a"), &a),
            ctx.child::<Double>(format!("{id}-b"), &b),
        );
        Ok(x? + y?)
    }
}

/// Case: a parent starts two children, waits for both without holding a worker (the clock
/// never moves: their ends wake it), and reads their results; each child ran once, and the
/// parent's journal holds both outcomes. A child that fails fails its parent, naming it.
pub async fn a_parent_waits_for_its_children_and_reads_their_results<S: FlowStore>(
    db: FlowDb<S>,
    _clock: ManualClock,
) {
    let queue = Queue::new(db.store);
    let log = Log::default();
    let flows = Flows::builder(&queue)
        .register(Parent)
        .register(Double { log: log.clone() })
        .poll(POLL)
        .build()
        .expect("flows");
    let worker = start_worker(&queue, &flows).await;
    let run = flows.start::<Parent>("p1", &(3, 4)).await.expect("start");
    // The clock never moves: only the children's ends can wake the parent (its safety
    // timer is a minute away on the store's clock).
    assert_eq!(run.result(WAIT, POLL).await.expect("result"), 14);
    let mut ran = log.all();
    ran.sort();
    assert_eq!(ran, ["double 3", "double 4"], "each child ran once");
    let keys: Vec<_> = run
        .journal()
        .await
        .expect("journal")
        .into_iter()
        .filter(|e| e.kind == EntryKind::Step)
        .map(|e| e.key)
        .collect();
    assert_eq!(keys.len(), 2);
    assert!(keys.contains(&"child[p1-a]".to_owned()) && keys.contains(&"child[p1-b]".to_owned()));
    let child = flows
        .handle("p1-a")
        .await
        .expect("handle")
        .expect("the child");
    assert_eq!(child.status().await.expect("status"), RunStatus::Completed);

    let failing = flows.start::<Parent>("p2", &(5, 13)).await.expect("start");
    match failing.result(WAIT, POLL).await {
        Err(WaitError::Failed(message)) => {
            assert!(
                message.contains("p2-b") && message.contains("unlucky"),
                "{message}"
            );
        }
        other => panic!("a parent of a failed child ended as {other:?}"),
    }
    worker.shutdown(Duration::from_secs(5)).await;
}

/// Holds something (compensated), then sleeps a day.
struct Slow {
    log: Log,
}

impl Workflow for Slow {
    const KIND: &'static str = "slow";
    type Input = ();
    type Output = ();
    async fn run(&self, ctx: FlowContext, _: ()) -> Result<(), FlowError> {
        let (log, undo_log) = (self.log.clone(), self.log.clone());
        ctx.step("hold", move || {
            let log = log.clone();
            async move {
                log.push("hold");
                Ok::<_, String>(())
            }
        })
        .compensate_with(move |_: ()| {
            let log = undo_log.clone();
            async move {
                log.push("undo hold");
                Ok::<_, String>(())
            }
        })
        .await?;
        ctx.sleep("a-day", Duration::from_secs(86_400)).await;
        Ok(())
    }
}

/// Books (compensated), then waits for a `Slow` child.
struct Booker {
    log: Log,
}

impl Workflow for Booker {
    const KIND: &'static str = "booker";
    type Input = ();
    type Output = ();
    async fn run(&self, ctx: FlowContext, _: ()) -> Result<(), FlowError> {
        let (log, undo_log) = (self.log.clone(), self.log.clone());
        ctx.step("book", move || {
            let log = log.clone();
            async move {
                log.push("book");
                Ok::<_, String>(())
            }
        })
        .compensate_with(move |_: ()| {
            let log = undo_log.clone();
            async move {
                log.push("undo book");
                Ok::<_, String>(())
            }
        })
        .await?;
        let child = format!("{}-child", ctx.run_id());
        ctx.child::<Slow>(child, &()).await
    }
}

/// Case: cancelling a parent that waits for a running child cancels the child too: both roll
/// back their own completed steps and end `failed`, the child naming its parent; the child
/// inherited its parent's deadline. The clock never moves.
pub async fn a_cancelled_parent_cancels_its_running_child<S: FlowStore>(
    db: FlowDb<S>,
    _clock: ManualClock,
) {
    let queue = Queue::new(db.store);
    let log = Log::default();
    let flows = Flows::builder(&queue)
        .register(Slow { log: log.clone() })
        .register(Booker { log: log.clone() })
        .poll(POLL)
        .build()
        .expect("flows");
    let worker = start_worker(&queue, &flows).await;
    let parent = flows
        .start_with::<Booker>(
            "trip",
            &(),
            &crate::RunOptions::new().deadline(Duration::from_secs(3600)),
        )
        .await
        .expect("start");
    let parent_job = parent.record().await.expect("record").job;
    super::until_job_in(
        &queue,
        parent_job,
        windlass_queue::JobState::Scheduled,
        "the parent never waited",
    )
    .await;
    let child = flows
        .handle("trip-child")
        .await
        .expect("handle")
        .expect("the child was started");
    let child_job = child.record().await.expect("record").job;
    super::until_job_in(
        &queue,
        child_job,
        windlass_queue::JobState::Scheduled,
        "the child never slept",
    )
    .await;
    let payload = queue
        .get(child_job)
        .await
        .expect("get")
        .expect("job")
        .payload;
    assert_eq!(
        payload["deadline_ms"],
        serde_json::json!(super::T0 + 3_600_000),
        "the child inherits its parent's deadline"
    );
    parent.cancel("trip called off").await.expect("cancel");
    assert!(matches!(
        parent.result(WAIT, POLL).await,
        Err(WaitError::Failed(m)) if m == "cancelled: trip called off"
    ));
    match child.result(WAIT, POLL).await {
        Err(WaitError::Failed(m)) => assert!(m.contains("parent `trip`"), "{m}"),
        other => panic!("the child ended as {other:?}"),
    }
    let mut all = log.all();
    all.sort();
    assert_eq!(all, ["book", "hold", "undo book", "undo hold"]);
    worker.shutdown(Duration::from_secs(5)).await;
}
