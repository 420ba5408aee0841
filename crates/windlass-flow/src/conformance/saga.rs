//! Saga cases: a failed saga compensates its completed steps latest first (never the failed
//! one), and a crash mid-rollback resumes the rollback where it stopped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use windlass_queue::{ManualClock, Queue};

use super::{FlowDb, Log, POLL, WAIT, config, crash_worker, start_worker};
use crate::{EntryKind, FlowContext, FlowError, FlowStore, Flows, RunStatus, WaitError, Workflow};

/// A four-step saga whose last step fails; compensation 2 hangs once when asked.
struct Saga {
    log: Log,
    hang_undo_b_once: bool,
    undo_b_runs: Arc<AtomicU32>,
}

impl Workflow for Saga {
    const KIND: &'static str = "saga";
    type Input = ();
    type Output = ();
    async fn run(&self, ctx: FlowContext, _: ()) -> Result<(), FlowError> {
        let log = self.log.clone();
        for (i, name) in ["reserve", "charge", "ship"].into_iter().enumerate() {
            let (hang, undo_runs) = (
                self.hang_undo_b_once && name == "charge",
                Arc::clone(&self.undo_b_runs),
            );
            let undo_log = log.clone();
            let step_log = log.clone();
            let _: u32 = ctx
                .step(name, move || {
                    let log = step_log.clone();
                    async move {
                        log.push(name);
                        Ok::<_, String>(i as u32 + 1)
                    }
                })
                .compensate_with(move |out: u32| {
                    let (log, undo_runs) = (undo_log.clone(), Arc::clone(&undo_runs));
                    async move {
                        log.push(&format!("undo {name} {out}"));
                        if hang && undo_runs.fetch_add(1, Ordering::SeqCst) == 0 {
                            std::future::pending::<()>().await;
                        }
                        Ok::<_, String>(())
                    }
                })
                .await?;
        }
        let email_log = log.clone();
        ctx.step("email", move || {
            let log = email_log.clone();
            async move {
                log.push("email");
                Err::<(), _>("mail server said no")
            }
        })
        .compensate_with(|_: ()| async { Err::<(), _>("a failed step must never be compensated") })
        .await?;
        Ok(())
    }
}

fn saga_flows<S: FlowStore>(
    log: Log,
    hang: bool,
    undo_b_runs: Arc<AtomicU32>,
) -> impl Fn(&Queue<S>) -> Flows<S> + Clone + Send + 'static {
    move |queue: &Queue<S>| {
        Flows::builder(queue)
            .register(Saga {
                log: log.clone(),
                hang_undo_b_once: hang,
                undo_b_runs: Arc::clone(&undo_b_runs),
            })
            .build()
            .expect("flows")
    }
}

/// Case: a 4-step saga failing at step 4 compensates 3, 2, 1 in that order, never 4, and
/// ends `failed` naming the failed step.
pub async fn a_failed_saga_compensates_in_reverse_order<S: FlowStore>(
    db: FlowDb<S>,
    _clock: ManualClock,
) {
    let log = Log::default();
    let queue = Queue::new(db.store);
    let flows = saga_flows(log.clone(), false, Arc::default())(&queue);
    let worker = start_worker(&queue, &flows).await;
    let run = flows.start::<Saga>("saga-1", &()).await.expect("start");
    match run.result(WAIT, POLL).await {
        Err(WaitError::Failed(message)) => {
            assert!(
                message.contains("`email`") && message.contains("mail server said no"),
                "{message}"
            );
        }
        other => panic!("the saga did not fail: {other:?}"),
    }
    assert_eq!(
        log.all(),
        [
            "reserve",
            "charge",
            "ship",
            "email",
            "undo ship 3",
            "undo charge 2",
            "undo reserve 1"
        ]
    );
    let journal = run.journal().await.expect("journal");
    let undone: Vec<_> = journal
        .iter()
        .filter(|e| e.kind == EntryKind::Compensation)
        .map(|e| e.key.as_str())
        .collect();
    assert_eq!(undone, ["~undo:ship", "~undo:charge", "~undo:reserve"]);
    assert_eq!(run.status().await.expect("status"), RunStatus::Failed);
    worker.shutdown(Duration::from_secs(5)).await;
}

/// Case: a worker killed while compensating step 2; another resumes the rollback: step 3's
/// compensation is not run again, step 2's is, then step 1's.
pub async fn a_crash_during_compensation_resumes_the_rollback<S: FlowStore>(
    db: FlowDb<S>,
    clock: ManualClock,
) {
    let log = Log::default();
    let undo_b_runs = Arc::new(AtomicU32::new(0));
    let make = saga_flows::<S>(log.clone(), true, Arc::clone(&undo_b_runs));
    let queue = Queue::new(db.store);
    let run = make(&queue)
        .start::<Saga>("saga-2", &())
        .await
        .expect("start");
    {
        let undo_b_runs = Arc::clone(&undo_b_runs);
        crash_worker(&db.reopen, make.clone(), move || {
            undo_b_runs.load(Ordering::SeqCst) >= 1
        });
    }
    assert_eq!(run.status().await.expect("status"), RunStatus::Compensating);
    clock.advance(config().lease + Duration::from_secs(1));
    let flows = make(&queue);
    let worker = start_worker(&queue, &flows).await;
    assert!(matches!(
        run.result(WAIT, POLL).await,
        Err(WaitError::Failed(_))
    ));
    assert_eq!(
        log.all(),
        [
            "reserve",
            "charge",
            "ship",
            "email",
            "undo ship 3",
            "undo charge 2",
            "undo charge 2",
            "undo reserve 1"
        ],
        "the rollback resumed at step 2's compensation; no step re-ran"
    );
    worker.shutdown(Duration::from_secs(5)).await;
}
