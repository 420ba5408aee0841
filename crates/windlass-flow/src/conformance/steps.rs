//! Step cases: a step's own retry and timeout policy, `all_settled`, how repeated steps are
//! told apart (occurrence, explicit key, a key used twice), a step added under a run in
//! flight, and a compensation that fails once and is retried.
//!
//! A step's retries and timeout run on the worker's tokio clock, not the store's manual
//! one: the retries here wait no time (constant zero backoff, no jitter) and the timed-out
//! step never finishes, so their outcome does not depend on how fast the machine is.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use windlass_policy::{Backoff, Jitter, Retry};
use windlass_queue::{JobState, ManualClock, Queue};

use super::inline::{Gated, one_run_per_kind};
use super::{FlowDb, Log, POLL, WAIT, journal_keys, start_worker, until_job_in};
use crate::{EntryKind, FlowContext, FlowError, FlowStore, Flows, RunStatus, WaitError, Workflow};

/// `attempts` attempts, retried at once.
fn at_once(attempts: u32) -> Retry {
    Retry::builder()
        .max_attempts(attempts)
        .backoff(Backoff::Constant(Duration::ZERO))
        .jitter(Jitter::None)
        .build()
        .expect("a valid retry")
}

/// A step that fails twice and then succeeds under a policy of three attempts; then a step
/// that never answers, under a timeout and two attempts.
struct Flaky {
    calls: Arc<AtomicU32>,
    slow_calls: Arc<AtomicU32>,
}

impl Workflow for Flaky {
    const KIND: &'static str = "flaky";
    type Input = ();
    type Output = u32;
    async fn run(&self, ctx: FlowContext, _: ()) -> Result<u32, FlowError> {
        let calls = Arc::clone(&self.calls);
        let got: u32 = ctx
            .step("flaky", move || {
                let calls = Arc::clone(&calls);
                async move {
                    match calls.fetch_add(1, Ordering::SeqCst) {
                        0 | 1 => Err("busy, try again"),
                        n => Ok(n + 1),
                    }
                }
            })
            .retry(at_once(3))
            .await?;
        let slow_calls = Arc::clone(&self.slow_calls);
        let _: u32 = ctx
            .step("slow", move || {
                let slow_calls = Arc::clone(&slow_calls);
                async move {
                    slow_calls.fetch_add(1, Ordering::SeqCst);
                    std::future::pending::<Result<u32, String>>().await
                }
            })
            .retry(at_once(2))
            .timeout(Duration::from_millis(20))
            .await?;
        Ok(got)
    }
}

/// Case: a step is retried by its own policy (its journal entry counts the attempts), and
/// an attempt past the step's timeout is stopped and fails the step once its attempts are
/// spent.
pub async fn a_step_is_retried_by_its_policy_and_stopped_by_its_timeout<S: FlowStore>(
    db: FlowDb<S>,
    _clock: ManualClock,
) {
    let queue = Queue::new(db.store);
    let (calls, slow_calls) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let flows = Flows::builder(&queue)
        .register(Flaky {
            calls: Arc::clone(&calls),
            slow_calls: Arc::clone(&slow_calls),
        })
        .build()
        .expect("flows");
    let worker = start_worker(&queue, &flows).await;
    let run = flows.start::<Flaky>("flaky-1", &()).await.expect("start");
    match run.result(WAIT, POLL).await {
        Err(WaitError::Failed(message)) => {
            assert!(message.contains("`slow`"), "{message}");
            assert!(message.contains("timed out after 20ms"), "{message}");
        }
        other => panic!("the timed-out step did not fail the run: {other:?}"),
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "two failures, then success"
    );
    assert_eq!(slow_calls.load(Ordering::SeqCst), 2, "each attempt stopped");
    let journal = run.journal().await.expect("journal");
    let flaky = journal.iter().find(|e| e.key == "flaky").expect("flaky");
    assert_eq!((flaky.attempts, flaky.outcome.clone()), (3, Ok(3.into())));
    let slow = journal.iter().find(|e| e.key == "slow").expect("slow");
    assert_eq!(slow.attempts, 2);
    assert!(slow.outcome.is_err());
    worker.shutdown(Duration::from_secs(5)).await;
}

/// Three steps at once, the middle one failing.
struct Settled;

impl Workflow for Settled {
    const KIND: &'static str = "settled";
    type Input = ();
    type Output = Vec<String>;
    async fn run(&self, ctx: FlowContext, _: ()) -> Result<Vec<String>, FlowError> {
        let steps = (1..=3u32).map(|i| {
            ctx.step("part", move || async move {
                if i == 2 {
                    Err(format!("part {i} broke"))
                } else {
                    Ok(i * 10)
                }
            })
            .key(i)
        });
        let settled = ctx.all_settled(3, steps).await;
        Ok(settled
            .into_iter()
            .map(|r| match r {
                Ok(v) => format!("ok {v}"),
                Err(FlowError::StepFailed { step, message, .. }) => format!("{step}: {message}"),
                Err(e) => format!("other: {e}"),
            })
            .collect())
    }
}

/// Case: `all_settled` returns every step's result in order, a failure beside the
/// successes, and journals each.
pub async fn all_settled_returns_every_steps_result<S: FlowStore>(
    db: FlowDb<S>,
    _clock: ManualClock,
) {
    let queue = Queue::new(db.store);
    let flows = Flows::builder(&queue)
        .register(Settled)
        .build()
        .expect("flows");
    let worker = start_worker(&queue, &flows).await;
    let run = flows
        .start::<Settled>("settled-1", &())
        .await
        .expect("start");
    assert_eq!(
        run.result(WAIT, POLL).await.expect("result"),
        ["ok 10", "part[2]: part 2 broke", "ok 30"]
    );
    let mut journaled: Vec<(String, bool)> = run
        .journal()
        .await
        .expect("journal")
        .into_iter()
        .map(|e| (e.key, e.outcome.is_ok()))
        .collect();
    journaled.sort();
    assert_eq!(
        journaled,
        [
            ("part[1]".to_owned(), true),
            ("part[2]".to_owned(), false),
            ("part[3]".to_owned(), true)
        ]
    );
    worker.shutdown(Duration::from_secs(5)).await;
}

/// A step called three times in a loop without a key, then twice with keys, then (when
/// asked) one explicit key used twice.
struct Loop {
    reuse_a_key: bool,
}

impl Workflow for Loop {
    const KIND: &'static str = "loop";
    type Input = ();
    type Output = u32;
    async fn run(&self, ctx: FlowContext, _: ()) -> Result<u32, FlowError> {
        let mut sum = 0;
        for i in 1..=3u32 {
            sum += ctx
                .step("tick", move || async move { Ok::<_, String>(i) })
                .await?;
        }
        for sku in ["apple", "pear"] {
            sum += ctx
                .step("item", || async { Ok::<_, String>(100) })
                .key(sku)
                .await?;
        }
        if self.reuse_a_key {
            sum += ctx
                .step("item", || async { Ok::<_, String>(1000) })
                .key("apple")
                .await?;
        }
        Ok(sum)
    }
}

/// Case: a step used again in one run is journaled by occurrence (`tick`, `tick#2`,
/// `tick#3`) or by its explicit key (`item[apple]`); an explicit key used twice in one run
/// halts it with an error naming the key, never reusing the first entry silently.
pub async fn repeated_steps_are_told_apart_by_occurrence_or_key<S: FlowStore>(
    db: FlowDb<S>,
    _clock: ManualClock,
) {
    let queue = Queue::new(db.store);
    let flows = Flows::builder(&queue)
        .register(Loop { reuse_a_key: false })
        .build()
        .expect("flows");
    let worker = start_worker(&queue, &flows).await;
    let run = flows.start::<Loop>("loop-1", &()).await.expect("start");
    assert_eq!(run.result(WAIT, POLL).await.expect("result"), 206);
    let keys = journal_keys(&run).await;
    assert_eq!(
        keys,
        ["tick", "tick#2", "tick#3", "item[apple]", "item[pear]"]
    );
    worker.shutdown(Duration::from_secs(5)).await;

    let flows = Flows::builder(&queue)
        .register(Loop { reuse_a_key: true })
        .build()
        .expect("flows");
    let worker = start_worker(&queue, &flows).await;
    let run = flows.start::<Loop>("loop-2", &()).await.expect("start");
    match run.result(WAIT, POLL).await {
        Err(WaitError::Halted(message)) => {
            assert!(
                message.contains("`item[apple]` was used twice"),
                "{message}"
            );
        }
        other => panic!("a key used twice did not halt the run: {other:?}"),
    }
    assert_eq!(run.status().await.expect("status"), RunStatus::Halted);
    worker.shutdown(Duration::from_secs(5)).await;
}

/// Version 1: `first`, then a minute's sleep, then `last`.
struct Before {
    log: Log,
}

impl Workflow for Before {
    const KIND: &'static str = "evolving";
    type Input = ();
    type Output = u32;
    async fn run(&self, ctx: FlowContext, _: ()) -> Result<u32, FlowError> {
        let log = self.log.clone();
        let first: u32 = ctx
            .step("first", move || {
                let log = log.clone();
                async move {
                    log.push("first");
                    Ok::<_, String>(1)
                }
            })
            .await?;
        ctx.sleep("pause", Duration::from_secs(60)).await;
        let last: u32 = ctx.step("last", || async { Ok::<_, String>(100) }).await?;
        Ok(first + last)
    }
}

/// Version 2 of the same kind: a new step `audit` before `first`.
struct After {
    log: Log,
}

impl Workflow for After {
    const KIND: &'static str = "evolving";
    type Input = ();
    type Output = u32;
    async fn run(&self, ctx: FlowContext, _: ()) -> Result<u32, FlowError> {
        let log = self.log.clone();
        let audit: u32 = ctx
            .step("audit", move || {
                let log = log.clone();
                async move {
                    log.push("audit");
                    Ok::<_, String>(10)
                }
            })
            .await?;
        let log = self.log.clone();
        let first: u32 = ctx
            .step("first", move || {
                let log = log.clone();
                async move {
                    log.push("first again");
                    Ok::<_, String>(2)
                }
            })
            .await?;
        ctx.sleep("pause", Duration::from_secs(60)).await;
        let last: u32 = ctx.step("last", || async { Ok::<_, String>(100) }).await?;
        Ok(audit + first + last)
    }
}

/// Case: a step added to the code while a run is in flight (asleep) runs when the run
/// resumes, and the steps it already finished are matched by name and not run again.
pub async fn a_step_added_under_a_run_in_flight_runs_and_the_rest_replay<S: FlowStore>(
    db: FlowDb<S>,
    clock: ManualClock,
) {
    let queue = Queue::new(db.store);
    let log = Log::default();
    let v1 = Flows::builder(&queue)
        .register(Before { log: log.clone() })
        .build()
        .expect("flows");
    let worker1 = start_worker(&queue, &v1).await;
    let run = v1.start::<Before>("evolve-1", &()).await.expect("start");
    let job = run.record().await.expect("record").job;
    until_job_in(&queue, job, JobState::Scheduled, "version 1 never slept").await;
    worker1.shutdown(Duration::from_secs(5)).await;
    let v2 = Flows::builder(&queue)
        .register(After { log: log.clone() })
        .build()
        .expect("flows");
    let worker2 = start_worker(&queue, &v2).await;
    clock.advance(Duration::from_secs(61));
    // `first` keeps its journaled 1: version 2's body for it never runs.
    assert_eq!(run.result(WAIT, POLL).await.expect("result"), 111);
    assert_eq!(log.all(), ["first", "audit"]);
    worker2.shutdown(Duration::from_secs(5)).await;
}

/// One step whose compensation fails on its first call, then a failing step.
struct Undo {
    undo_calls: Arc<AtomicU32>,
}

impl Workflow for Undo {
    const KIND: &'static str = "undo-retry";
    type Input = ();
    type Output = ();
    async fn run(&self, ctx: FlowContext, _: ()) -> Result<(), FlowError> {
        let undo_calls = Arc::clone(&self.undo_calls);
        let _: u32 = ctx
            .step("reserve", || async { Ok::<_, String>(7) })
            .compensate_with(move |_: u32| {
                let undo_calls = Arc::clone(&undo_calls);
                async move {
                    if undo_calls.fetch_add(1, Ordering::SeqCst) == 0 {
                        Err("the stock service is restarting")
                    } else {
                        Ok(())
                    }
                }
            })
            .await?;
        ctx.step("charge", || async { Err::<(), _>("card declined") })
            .await?;
        Ok(())
    }
}

/// Case: a compensation that fails is retried by its own policy within the rollback, and
/// its journal entry counts the attempts; the run ends `failed`.
pub async fn a_failing_compensation_is_retried<S: FlowStore>(db: FlowDb<S>, _clock: ManualClock) {
    let queue = Queue::new(db.store);
    let undo_calls = Arc::new(AtomicU32::new(0));
    let flows = Flows::builder(&queue)
        .register(Undo {
            undo_calls: Arc::clone(&undo_calls),
        })
        .build()
        .expect("flows");
    let worker = start_worker(&queue, &flows).await;
    let run = flows.start::<Undo>("undo-1", &()).await.expect("start");
    match run.result(WAIT, POLL).await {
        Err(WaitError::Failed(message)) => assert!(message.contains("card declined"), "{message}"),
        other => panic!("the run did not fail: {other:?}"),
    }
    assert_eq!(undo_calls.load(Ordering::SeqCst), 2);
    let journal = run.journal().await.expect("journal");
    let undone = journal
        .iter()
        .find(|e| e.kind == EntryKind::Compensation)
        .expect("the compensation's entry");
    assert_eq!(
        (undone.key.as_str(), undone.attempts, undone.outcome.is_ok()),
        ("~undo:reserve", 2, true)
    );
    assert_eq!(run.status().await.expect("status"), RunStatus::Failed);
    worker.shutdown(Duration::from_secs(5)).await;
}

/// Case: a per-kind limit of one holds for each kind apart: with two runs of each of two
/// kinds waiting, one of each runs at once (the kinds do not share one slot), and never two
/// of one kind.
pub async fn each_kind_keeps_its_own_concurrency_limit<S: FlowStore>(
    db: FlowDb<S>,
    _clock: ManualClock,
) {
    let queue = one_run_per_kind(db.store).await;
    let (a, b) = (
        windlass_test_support::Peak::new(),
        windlass_test_support::Peak::new(),
    );
    let permits = Arc::new(tokio::sync::Semaphore::new(0));
    let flows = Flows::builder(&queue)
        .register(Gated::<false> {
            probe: a.clone(),
            permits: Arc::clone(&permits),
        })
        .register(Gated::<true> {
            probe: b.clone(),
            permits: Arc::clone(&permits),
        })
        .poll(POLL)
        .build()
        .expect("flows");
    let worker = start_worker(&queue, &flows).await;
    let mut runs = Vec::new();
    for n in 0..2 {
        runs.push(
            flows
                .start::<Gated<false>>(format!("a-{n}"), &n)
                .await
                .expect("start")
                .id()
                .to_owned(),
        );
        runs.push(
            flows
                .start::<Gated<true>>(format!("b-{n}"), &n)
                .await
                .expect("start")
                .id()
                .to_owned(),
        );
    }
    super::until("one run of each kind inside", || {
        a.now() == 1 && b.now() == 1
    })
    .await;
    let mut running = 0;
    for id in &runs {
        let run = flows
            .handle(id.clone())
            .await
            .expect("handle")
            .expect("the run");
        let job = run.record().await.expect("record").job;
        if queue.get(job).await.expect("job").expect("the job").state == JobState::Running {
            running += 1;
        }
    }
    assert_eq!(running, 2, "one run of each kind runs; the others wait");
    permits.add_permits(4);
    for id in &runs {
        let run = flows
            .handle(id.clone())
            .await
            .expect("handle")
            .expect("the run");
        run.result(WAIT, POLL).await.expect("every run finishes");
    }
    assert_eq!((a.max(), b.max()), (1, 1), "never two of one kind at once");
    worker.shutdown(Duration::from_secs(5)).await;
}
