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
