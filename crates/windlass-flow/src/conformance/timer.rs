//! Durable timer cases: a sleeping run holds no worker and survives a restart, and a run
//! suspends for a timer only once the steps beside it have finished.

use std::sync::Arc;
use std::time::Duration;

use windlass_queue::{ManualClock, Queue};

use super::{FlowDb, Log, POLL, WAIT, journal_keys, start_worker, until_job_in};
use crate::{EntryKind, FlowContext, FlowError, FlowStore, Flows, RunStatus, WaitError, Workflow};

/// A step, an hour's durable sleep, a step.
pub(crate) struct Nap {
    pub(crate) log: Log,
}

impl Workflow for Nap {
    const KIND: &'static str = "nap";
    type Input = ();
    type Output = i64;
    async fn run(&self, ctx: FlowContext, _: ()) -> Result<i64, FlowError> {
        let log = self.log.clone();
        let before: i64 = ctx
            .step("before", || {
                let (log, ctx) = (log.clone(), ctx.clone());
                async move {
                    log.push("before");
                    Ok::<_, String>(ctx.now_ms())
                }
            })
            .await?;
        ctx.sleep("nap", Duration::from_secs(3600)).await;
        let after: i64 = ctx
            .step("after", || {
                let (log, ctx) = (log.clone(), ctx.clone());
                async move {
                    log.push("after");
                    Ok::<_, String>(ctx.now_ms())
                }
            })
            .await?;
        Ok(after - before)
    }
}

/// Case: a run sleeping for an hour holds no worker, is not resumed early, and survives a
/// restart: a new worker on a new store finishes it once the hour has passed.
pub async fn a_durable_sleep_survives_a_restart<S: FlowStore>(db: FlowDb<S>, clock: ManualClock) {
    let log = Log::default();
    let make = {
        let log = log.clone();
        move |queue: &Queue<S>| {
            Flows::builder(queue)
                .register(Nap { log: log.clone() })
                .build()
                .expect("flows")
        }
    };
    let queue = Queue::new(db.store);
    let flows = make(&queue);
    let worker = start_worker(&queue, &flows).await;
    let run = flows.start::<Nap>("nap-1", &()).await.expect("start");
    let journal_has_timer = || async {
        run.journal()
            .await
            .expect("journal")
            .iter()
            .any(|e| e.kind == EntryKind::Sleep)
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while !journal_has_timer().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the timer was never journaled"
        );
        tokio::time::sleep(POLL).await;
    }
    // The snoozed job holds no worker: it is waiting, not running.
    let job = run.record().await.expect("record").job;
    until_job_in(
        &queue,
        job,
        windlass_queue::JobState::Scheduled,
        "the run's job never went to sleep",
    )
    .await;
    worker.shutdown(Duration::from_secs(5)).await;
    assert_eq!(log.all(), ["before"]);
    assert_eq!(run.status().await.expect("status"), RunStatus::Running);

    // The restart: another store on the same database, another worker.
    let queue = Queue::new((db.reopen)().await);
    let flows = make(&queue);
    let worker = start_worker(&queue, &flows).await;
    clock.advance(Duration::from_secs(1800));
    let run = flows
        .handle("nap-1")
        .await
        .expect("handle")
        .expect("the run");
    assert!(
        matches!(
            run.result(Duration::from_millis(200), POLL).await,
            Err(WaitError::Timeout(_))
        ),
        "half an hour in, the run still sleeps"
    );
    assert_eq!(log.all(), ["before"]);
    clock.advance(Duration::from_secs(1800));
    let slept = run.result(WAIT, POLL).await.expect("result");
    assert_eq!(
        slept.as_i64(),
        Some(3_600_000),
        "resumed exactly when the timer expired"
    );
    assert_eq!(log.all(), ["before", "after"], "nothing ran twice");
    worker.shutdown(Duration::from_secs(5)).await;
}

/// One branch sleeps while the other runs a step.
struct SleepBeside {
    log: Log,
    release: Arc<tokio::sync::Notify>,
}

impl Workflow for SleepBeside {
    const KIND: &'static str = "sleep_beside";
    type Input = ();
    type Output = ();
    async fn run(&self, ctx: FlowContext, _: ()) -> Result<(), FlowError> {
        let (log, release) = (self.log.clone(), Arc::clone(&self.release));
        let work = ctx.step("work", move || {
            let (log, release) = (log.clone(), Arc::clone(&release));
            async move {
                // Still running when the timer is journaled: the test lets it finish.
                release.notified().await;
                log.push("work");
                Ok::<_, String>(())
            }
        });
        let (_, worked) = tokio::join!(ctx.sleep("pause", Duration::from_secs(60)), work);
        worked
    }
}

/// Case: a run suspends for a timer only once no step is running: a step beside the timer
/// finishes and is journaled first, and does not run again when the timer wakes the run.
pub async fn a_timer_waits_for_the_steps_beside_it<S: FlowStore>(
    db: FlowDb<S>,
    clock: ManualClock,
) {
    let log = Log::default();
    let release = Arc::new(tokio::sync::Notify::new());
    let queue = Queue::new(db.store);
    let flows = Flows::builder(&queue)
        .register(SleepBeside {
            log: log.clone(),
            release: Arc::clone(&release),
        })
        .build()
        .expect("flows");
    let worker = start_worker(&queue, &flows).await;
    let run = flows
        .start::<SleepBeside>("beside-1", &())
        .await
        .expect("start");
    let job = run.record().await.expect("record").job;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !run
        .journal()
        .await
        .expect("journal")
        .iter()
        .any(|e| e.key == "pause")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the timer was never journaled"
        );
        tokio::time::sleep(POLL).await;
    }
    // Give a wrongly suspended run time to be snoozed: its job would leave `running`.
    for _ in 0..20 {
        tokio::task::yield_now().await;
        tokio::time::sleep(POLL).await;
    }
    let state = queue.get(job).await.expect("job").map(|j| j.state);
    assert_eq!(
        state,
        Some(windlass_queue::JobState::Running),
        "the run stays on its worker while a step beside the timer runs"
    );
    release.notify_one();
    until_job_in(
        &queue,
        job,
        windlass_queue::JobState::Scheduled,
        "the run never slept",
    )
    .await;
    let keys = journal_keys(&run).await;
    assert!(
        keys.contains(&"work".to_string()),
        "the step beside the timer was journaled before the run slept: {keys:?}"
    );
    clock.advance(Duration::from_secs(61));
    run.result(WAIT, POLL).await.expect("result");
    assert_eq!(log.all(), ["work"], "the step ran once");
    worker.shutdown(Duration::from_secs(5)).await;
}
