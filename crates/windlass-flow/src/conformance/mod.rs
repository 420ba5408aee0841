//! The workflow conformance suite: the behaviour every [`FlowStore`] backend must show, run
//! by each backend's tests with real workers.
//!
//! A backend's test file supplies an `async fn(ManualClock) -> Option<FlowDb<S>>` that opens
//! a fresh, empty database on that clock and says how to open another store on the same
//! database (`None` skips the suite, after printing why), then invokes
//! [`flow_conformance_tests!`](crate::flow_conformance_tests).
//!
//! A **crash** is a worker whose whole runtime is dropped mid-step: its tasks vanish without
//! a word to the store, its lease stays behind, exactly as when the process is killed. The
//! test then moves the manual clock past the lease, and a second worker, on another store
//! connected to the same database, takes the run over. Cases wait for events (a step
//! entered, a status reached), never for wall-clock time.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use windlass_queue::{ManualClock, Queue, Worker, WorkerConfig, WorkerHandle};
use windlass_test_support::Peak;

use crate::{EntryKind, StartError};
use crate::{FlowContext, FlowError, FlowStore, Flows, RunStatus, WaitError, Workflow};

pub use windlass_queue::conformance::T0;

mod cancel;
mod child;
mod ends;
pub use ends::{
    a_cancel_that_beats_a_workers_end_rolls_the_run_back, a_run_found_over_only_completes_its_job,
    a_workers_end_written_twice_is_stored_once,
};
mod saga;
mod timer;
pub use saga::{
    a_crash_during_compensation_resumes_the_rollback, a_failed_saga_compensates_in_reverse_order,
};
pub use timer::{a_durable_sleep_survives_a_restart, a_timer_waits_for_the_steps_beside_it};
mod events;
mod inline;
mod signal;
pub use cancel::{
    a_cancel_and_a_completion_never_both_win,
    a_cancelled_run_stops_its_running_step_then_compensates,
    a_cancelled_sleeping_run_rolls_back_at_once,
    a_direct_run_cancelled_mid_step_rolls_back_in_its_caller,
    a_failed_run_resumes_from_its_failed_step,
    a_run_past_its_deadline_is_cancelled_and_compensated,
    racing_cancels_and_completions_have_one_winner_each,
};
pub use child::{
    a_cancelled_parent_cancels_its_running_child,
    a_parent_waits_for_its_children_and_reads_their_results,
};
pub use events::a_published_event_reaches_every_subscriber_once;
mod steps;
mod store;
pub use inline::{
    a_cancelled_direct_run_returns_instead_of_hanging, a_direct_run_executes_in_the_caller,
    a_direct_run_keeps_the_queues_limits, a_direct_run_killed_mid_step_is_resumed_by_a_worker,
    a_direct_run_that_sleeps_is_finished_by_the_workers,
};
pub use signal::{
    a_signal_sent_while_the_run_is_busy_is_taken, a_signal_wait_times_out_at_its_deadline,
    a_signal_wakes_a_waiting_run,
};
pub use steps::{
    a_failing_compensation_is_retried, a_step_added_under_a_run_in_flight_runs_and_the_rest_replay,
    a_step_is_retried_by_its_policy_and_stopped_by_its_timeout,
    all_settled_returns_every_steps_result, each_kind_keeps_its_own_concurrency_limit,
    repeated_steps_are_told_apart_by_occurrence_or_key,
};
pub use store::{
    a_run_and_its_job_start_and_end_together, a_run_is_read_with_its_journal,
    concurrent_writers_of_one_entry_agree,
    direct_starts_of_many_runs_at_once_are_each_decided_alone,
    ends_of_many_runs_at_once_are_each_decided_alone,
};

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A fresh database, and how to open another store on it.
pub struct FlowDb<S> {
    /// A store on the database.
    pub store: S,
    /// Opens another store on the same database (another process's view), on the same
    /// clock. Called from inside a tokio runtime.
    pub reopen: Arc<dyn Fn() -> BoxFuture<S> + Send + Sync>,
}

/// Defines one `#[tokio::test]` per case, each on a fresh database from `$fresh`.
#[macro_export]
macro_rules! flow_conformance_tests {
    ($fresh:path) => {
        $crate::flow_conformance_tests!(@cases $fresh;
            a_run_started_twice_returns_the_recorded_result,
            a_crash_between_steps_resumes_without_rerunning_finished_steps,
            a_failed_saga_compensates_in_reverse_order,
            a_crash_during_compensation_resumes_the_rollback,
            a_fan_out_runs_concurrently_within_its_bound,
            a_durable_sleep_survives_a_restart,
            a_replay_that_contradicts_the_journal_halts_the_run,
            the_journal_keeps_the_first_entry,
            a_timer_waits_for_the_steps_beside_it,
            a_panicking_run_is_retried_not_stranded,
            a_direct_run_executes_in_the_caller,
            a_direct_run_killed_mid_step_is_resumed_by_a_worker,
            a_direct_run_that_sleeps_is_finished_by_the_workers,
            a_cancelled_direct_run_returns_instead_of_hanging,
            a_direct_run_keeps_the_queues_limits,
            concurrent_writers_of_one_entry_agree,
            a_run_and_its_job_start_and_end_together,
            a_run_is_read_with_its_journal,
            a_cancel_that_beats_a_workers_end_rolls_the_run_back,
            a_run_found_over_only_completes_its_job,
            a_workers_end_written_twice_is_stored_once,
            ends_of_many_runs_at_once_are_each_decided_alone,
            direct_starts_of_many_runs_at_once_are_each_decided_alone,
            a_signal_wakes_a_waiting_run,
            a_signal_wait_times_out_at_its_deadline,
            a_signal_sent_while_the_run_is_busy_is_taken,
            a_parent_waits_for_its_children_and_reads_their_results,
            a_cancelled_run_stops_its_running_step_then_compensates,
            a_cancelled_sleeping_run_rolls_back_at_once,
            a_run_past_its_deadline_is_cancelled_and_compensated,
            a_direct_run_cancelled_mid_step_rolls_back_in_its_caller,
            a_cancel_and_a_completion_never_both_win,
            a_failed_run_resumes_from_its_failed_step,
            a_published_event_reaches_every_subscriber_once,
            racing_cancels_and_completions_have_one_winner_each,
            a_cancelled_parent_cancels_its_running_child,
            a_step_is_retried_by_its_policy_and_stopped_by_its_timeout,
            all_settled_returns_every_steps_result,
            repeated_steps_are_told_apart_by_occurrence_or_key,
            a_step_added_under_a_run_in_flight_runs_and_the_rest_replay,
            a_failing_compensation_is_retried,
            each_kind_keeps_its_own_concurrency_limit,
        );
    };
    (@cases $fresh:path; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::conformance::run_case($fresh, $crate::conformance::$case);
            }
        )*
    };
}

/// Runs one case on a fresh database, on a multi-threaded runtime of its own (a crashed
/// worker gets another).
pub fn run_case<S, Fr, FrFut, C, CFut>(fresh: Fr, case: C)
where
    S: FlowStore,
    Fr: FnOnce(ManualClock) -> FrFut,
    FrFut: Future<Output = Option<FlowDb<S>>>,
    C: FnOnce(FlowDb<S>, ManualClock) -> CFut,
    CFut: Future<Output = ()>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a test runtime");
    rt.block_on(async {
        let clock = ManualClock::new(T0);
        let Some(db) = fresh(clock.clone()).await else {
            return;
        };
        case(db, clock).await;
    });
}

pub(crate) const WAIT: Duration = Duration::from_secs(30);
pub(crate) const POLL: Duration = Duration::from_millis(5);

fn config() -> WorkerConfig {
    WorkerConfig {
        queues: vec!["flows".into()],
        poll: Duration::from_millis(20),
        rescue_every: Duration::from_millis(20),
        ..WorkerConfig::default()
    }
}

pub(crate) async fn start_worker<S: FlowStore>(queue: &Queue<S>, flows: &Flows<S>) -> WorkerHandle {
    Worker::builder(queue)
        .register(flows.driver())
        .config(config())
        .build()
        .expect("a valid worker")
        .start()
        .await
        .expect("the worker starts")
}

/// Waits until `check` holds, for up to 30 s of real time (the store's clock is manual).
pub(crate) async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the run's job `job` is in `state`, for up to 30 s of real time.
pub(crate) async fn until_job_in<S: FlowStore>(
    queue: &Queue<S>,
    job: windlass_queue::JobId,
    state: windlass_queue::JobState,
    what: &str,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let now = queue.get(job).await.expect("job").map(|j| j.state);
        if now == Some(state) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: the run's job is {now:?}, not {state:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Runs `flows_of(store)`'s worker on a runtime of its own until `crash_when` holds, then
/// drops that runtime: the worker dies mid-run, its lease left behind.
fn crash_worker<S, F>(
    reopen: &Arc<dyn Fn() -> BoxFuture<S> + Send + Sync>,
    flows_of: F,
    crash_when: impl Fn() -> bool + Send + 'static,
) where
    S: FlowStore,
    F: FnOnce(&Queue<S>) -> Flows<S> + Send + 'static,
{
    let reopen = Arc::clone(reopen);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the doomed worker");
        rt.block_on(async {
            let queue = Queue::new(reopen().await);
            let flows = flows_of(&queue);
            let _worker = start_worker(&queue, &flows).await;
            until("the moment to crash", crash_when).await;
        });
        // Dropping the runtime drops every task: nothing more reaches the store.
        drop(rt);
    })
    .join()
    .expect("the doomed worker's thread");
}

/// The keys of a run's journal entries, in the order they were stored.
pub(crate) async fn journal_keys<S: FlowStore, O: serde::de::DeserializeOwned>(
    run: &crate::RunHandle<S, O>,
) -> Vec<String> {
    run.journal()
        .await
        .expect("journal")
        .into_iter()
        .map(|e| e.key)
        .collect()
}

/// How often each step and compensation ran, by name.
#[derive(Clone, Default)]
pub(crate) struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, what: &str) {
        self.0.lock().expect("log").push(what.to_owned());
    }
    fn all(&self) -> Vec<String> {
        self.0.lock().expect("log").clone()
    }
}

/// Three steps, each logged; `b` hangs on its first run when `hang` is set.
pub(crate) struct Three {
    log: Log,
    hang_b_once: bool,
    b_runs: Arc<AtomicU32>,
}

impl Workflow for Three {
    const KIND: &'static str = "three";
    type Input = u32;
    type Output = String;
    async fn run(&self, ctx: FlowContext, n: u32) -> Result<String, FlowError> {
        let log = self.log.clone();
        let a: u32 = ctx
            .step("a", || {
                let log = log.clone();
                async move {
                    log.push("a");
                    Ok::<_, String>(n + 1)
                }
            })
            .await?;
        let (hang, b_runs) = (self.hang_b_once, Arc::clone(&self.b_runs));
        let b: u32 = ctx
            .step("b", || {
                let (log, b_runs) = (log.clone(), Arc::clone(&b_runs));
                async move {
                    log.push("b");
                    if hang && b_runs.fetch_add(1, Ordering::SeqCst) == 0 {
                        std::future::pending::<()>().await;
                    }
                    Ok::<_, String>(a * 10)
                }
            })
            .await?;
        let c: String = ctx
            .step("c", || {
                let log = log.clone();
                async move {
                    log.push("c");
                    Ok::<_, String>(format!("{a}-{b}"))
                }
            })
            .await?;
        Ok(c)
    }
}

/// Another workflow, to be refused a taken id.
struct Other;
impl Workflow for Other {
    const KIND: &'static str = "other";
    type Input = u32;
    type Output = u32;
    async fn run(&self, _ctx: FlowContext, n: u32) -> Result<u32, FlowError> {
        Ok(n)
    }
}

/// Case: starting a run twice with one id returns the recorded result; no step runs again,
/// and another workflow cannot take the id.
pub async fn a_run_started_twice_returns_the_recorded_result<S: FlowStore>(
    db: FlowDb<S>,
    _clock: ManualClock,
) {
    let queue = Queue::new(db.store);
    let log = Log::default();
    let flows = Flows::builder(&queue)
        .register(Three {
            log: log.clone(),
            hang_b_once: false,
            b_runs: Arc::default(),
        })
        .register(Other)
        .build()
        .expect("flows");
    let worker = start_worker(&queue, &flows).await;
    let first = flows.start::<Three>("order-1", &1).await.expect("start");
    assert_eq!(first.result(WAIT, POLL).await.expect("result"), "2-20");
    let again = flows
        .start::<Three>("order-1", &7)
        .await
        .expect("start again");
    assert_eq!(again.id(), "order-1");
    assert_eq!(
        again.result(WAIT, POLL).await.expect("result"),
        "2-20",
        "the first run's result, not a run of the new input"
    );
    let stats = queue.stats().await.expect("stats");
    let jobs: u64 = stats.iter().map(|s| s.counts.iter().sum::<u64>()).sum();
    assert_eq!(jobs, 1, "one job for one run id");
    assert_eq!(log.all(), ["a", "b", "c"], "every step ran exactly once");
    let journal = first.journal().await.expect("journal");
    let keys: Vec<_> = journal.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["a", "b", "c"]);
    assert!(
        journal
            .iter()
            .all(|e| e.kind == EntryKind::Step && e.attempts == 1)
    );
    match flows.start::<Other>("order-1", &1).await {
        Err(StartError::IdTaken { existing, .. }) => assert_eq!(existing, "three"),
        other => panic!("another workflow took a used id: {other:?}"),
    }
    match flows.start::<Three>("", &1).await {
        Err(StartError::InvalidId { .. }) => {}
        other => panic!("an empty id was accepted: {other:?}"),
    }
    worker.shutdown(Duration::from_secs(5)).await;
}

/// Case: a worker killed while step `b` runs; another worker resumes the run: `a` is not run
/// again, `b` (unfinished) is, `c` runs once.
pub async fn a_crash_between_steps_resumes_without_rerunning_finished_steps<S: FlowStore>(
    db: FlowDb<S>,
    clock: ManualClock,
) {
    let log = Log::default();
    let b_runs = Arc::new(AtomicU32::new(0));
    let three = {
        let (log, b_runs) = (log.clone(), Arc::clone(&b_runs));
        move |queue: &Queue<S>| {
            Flows::builder(queue)
                .register(Three {
                    log,
                    hang_b_once: true,
                    b_runs,
                })
                .build()
                .expect("flows")
        }
    };
    let queue = Queue::new(db.store);
    let run = three.clone()(&queue)
        .start::<Three>("crash-1", &4)
        .await
        .expect("start");
    {
        let b_runs = Arc::clone(&b_runs);
        crash_worker(&db.reopen, three.clone(), move || {
            b_runs.load(Ordering::SeqCst) >= 1
        });
    }
    assert_eq!(log.all(), ["a", "b"], "the doomed worker got as far as b");
    assert_eq!(run.status().await.expect("status"), RunStatus::Running);
    clock.advance(config().lease + Duration::from_secs(1));
    let flows = three(&queue);
    let worker = start_worker(&queue, &flows).await;
    assert_eq!(run.result(WAIT, POLL).await.expect("result"), "5-50");
    assert_eq!(
        log.all(),
        ["a", "b", "b", "c"],
        "a not re-run; b re-run (it never finished); c once"
    );
    worker.shutdown(Duration::from_secs(5)).await;
}

/// Eight independent steps, at most three at a time.
struct FanOut {
    probe: Peak,
}

impl Workflow for FanOut {
    const KIND: &'static str = "fan_out";
    type Input = u32;
    type Output = Vec<u32>;
    async fn run(&self, ctx: FlowContext, n: u32) -> Result<Vec<u32>, FlowError> {
        let steps = (0..n).map(|i| {
            let probe = self.probe.clone();
            ctx.step("square", move || {
                let probe = probe.clone();
                async move {
                    let _inside = probe.enter();
                    // Let the other branches in while this one is inside.
                    for _ in 0..3 {
                        tokio::task::yield_now().await;
                    }
                    Ok::<_, String>(i * i)
                }
            })
            .key(i)
        });
        ctx.all(3, steps).await
    }
}

/// Case: a fan-out runs its independent steps concurrently (three inside at once, measured
/// by the probe) and never more than its bound; outputs come back in order.
pub async fn a_fan_out_runs_concurrently_within_its_bound<S: FlowStore>(
    db: FlowDb<S>,
    _clock: ManualClock,
) {
    let queue = Queue::new(db.store);
    let probe = Peak::new();
    let flows = Flows::builder(&queue)
        .register(FanOut {
            probe: probe.clone(),
        })
        .build()
        .expect("flows");
    let worker = start_worker(&queue, &flows).await;
    let run = flows.start::<FanOut>("fan-1", &8).await.expect("start");
    assert_eq!(
        run.result(WAIT, POLL).await.expect("result"),
        [0, 1, 4, 9, 16, 25, 36, 49]
    );
    assert_eq!(probe.max(), 3, "three steps ran at once, never more");
    let journal = run.journal().await.expect("journal");
    assert_eq!(journal.len(), 8);
    assert!(journal.iter().any(|e| e.key == "square[7]"));
    // The recorded graph: the first three ran side by side (no edge between them, though
    // the manual clock gives every entry the same millisecond), and the fourth waited for
    // one of them.
    let edges: Vec<(&str, &str)> = crate::graph::edges(&journal)
        .into_iter()
        .map(|(a, b)| (journal[a].key.as_str(), journal[b].key.as_str()))
        .collect();
    let first = ["square[0]", "square[1]", "square[2]"];
    assert!(
        !edges
            .iter()
            .any(|(a, b)| first.contains(a) && first.contains(b)),
        "{edges:?}"
    );
    assert!(
        edges
            .iter()
            .any(|(a, b)| first.contains(a) && *b == "square[3]"),
        "{edges:?}"
    );
    worker.shutdown(Duration::from_secs(5)).await;
}

/// Version 1 journals `x` as a string; version 2 (same kind) asks for a number.
struct V1;
impl Workflow for V1 {
    const KIND: &'static str = "versioned";
    type Input = ();
    type Output = ();
    async fn run(&self, ctx: FlowContext, _: ()) -> Result<(), FlowError> {
        let _: String = ctx
            .step("x", || async { Ok::<_, String>("text".into()) })
            .await?;
        ctx.sleep("wait", Duration::from_secs(60)).await;
        Ok(())
    }
}
struct V2;
impl Workflow for V2 {
    const KIND: &'static str = "versioned";
    type Input = ();
    type Output = ();
    async fn run(&self, ctx: FlowContext, _: ()) -> Result<(), FlowError> {
        let _: u64 = ctx.step("x", || async { Ok::<_, String>(7) }).await?;
        Ok(())
    }
}

/// Case: code that contradicts its run's journal (a step's type changed under a run in
/// flight) halts the run with an error naming both, without running or compensating.
pub async fn a_replay_that_contradicts_the_journal_halts_the_run<S: FlowStore>(
    db: FlowDb<S>,
    clock: ManualClock,
) {
    let queue = Queue::new(db.store);
    let v1 = Flows::builder(&queue).register(V1).build().expect("flows");
    let worker1 = start_worker(&queue, &v1).await;
    let run = v1.start::<V1>("v-1", &()).await.expect("start");
    let job = run.record().await.expect("record").job;
    until_job_in(
        &queue,
        job,
        windlass_queue::JobState::Scheduled,
        "v1 never went to sleep",
    )
    .await;
    worker1.shutdown(Duration::from_secs(5)).await;
    let v2 = Flows::builder(&queue).register(V2).build().expect("flows");
    let worker2 = start_worker(&queue, &v2).await;
    clock.advance(Duration::from_secs(61));
    match run.result(WAIT, POLL).await {
        Err(WaitError::Halted(message)) => {
            assert!(message.contains("step `x` of type u64"), "{message}");
            assert!(message.contains("\"text\""), "{message}");
        }
        other => panic!("a contradicting replay was not halted: {other:?}"),
    }
    assert_eq!(run.status().await.expect("status"), RunStatus::Halted);
    // The halt and the job's completion are one write: no hand-over, no extra attempt.
    until_job_in(
        &queue,
        job,
        windlass_queue::JobState::Completed,
        "the halted run's job",
    )
    .await;
    let record = queue.get(job).await.expect("get").expect("the job");
    let outcomes: Vec<&str> = record.attempts.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(
        outcomes,
        ["snoozed", "completed"],
        "the sleep, then the halt"
    );
    worker2.shutdown(Duration::from_secs(5)).await;
}

/// Case (store): the journal keeps the first entry under a key and hands it to a later
/// writer; runs are unique by id and listed by kind and status; a finished run's status
/// does not change.
pub async fn the_journal_keeps_the_first_entry<S: FlowStore>(db: FlowDb<S>, _clock: ManualClock) {
    use crate::{JournalEntry, NewRun, RunFilter};
    use serde_json::json;
    let store = db.store;
    let entry = |outcome: Result<serde_json::Value, String>| JournalEntry {
        seq: 0,
        key: "charge".into(),
        kind: EntryKind::Step,
        outcome,
        attempts: 2,
        started_at_ms: T0,
        finished_at_ms: T0 + 5,
        after: Some(3),
    };
    let first = store
        .record("r1".into(), entry(Ok(json!({"receipt": 1}))))
        .await
        .expect("record");
    assert!(first.seq > 0);
    assert_eq!(first.after, Some(3), "what the entry had seen is stored");
    let late = JournalEntry {
        after: Some(4),
        ..entry(Err("a zombie's late result".into()))
    };
    let second = store.record("r1".into(), late).await.expect("record again");
    assert_eq!(second, first, "the first writer's entry stands");
    let other_run = store
        .record("r2".into(), entry(Err("boom".into())))
        .await
        .expect("another run's entry");
    assert_eq!(other_run.outcome, Err("boom".to_string()));
    assert_eq!(store.journal("r1".into()).await.expect("journal"), [first]);

    let new_run = |id: &str, kind: &str| NewRun {
        id: id.into(),
        kind: kind.into(),
        input: json!([1, 2]),
        job: windlass_queue::JobId(7),
        created_at_ms: T0,
    };
    let a = store.insert_run(new_run("a", "k1")).await.expect("insert");
    let again = store
        .insert_run(new_run("a", "k2"))
        .await
        .expect("insert again");
    assert_eq!(again, a, "the first run with an id stands");
    store
        .insert_run(new_run("b", "k2"))
        .await
        .expect("insert b");
    store
        .insert_run(new_run("c", "k1"))
        .await
        .expect("insert c");
    assert!(
        store
            .set_run_status("c".into(), RunStatus::Completed, Some(json!("out")), None)
            .await
            .expect("complete")
    );
    assert!(
        !store
            .set_run_status("nope".into(), RunStatus::Completed, None, None)
            .await
            .expect("missing run")
    );
    store
        .set_run_status("c".into(), RunStatus::Failed, None, Some("late".into()))
        .await
        .expect("late failure");
    let c = store.run("c".into()).await.expect("run").expect("c");
    assert_eq!(
        (c.status, c.output, c.error),
        (RunStatus::Completed, Some(json!("out")), None)
    );
    assert!(c.finished_at_ms.is_some());
    let ids = |runs: Vec<crate::RunRecord>| runs.into_iter().map(|r| r.id).collect::<Vec<_>>();
    let k1 = RunFilter {
        kind: Some("k1".into()),
        ..RunFilter::default()
    };
    assert_eq!(ids(store.runs(k1).await.expect("runs")), ["a", "c"]);
    let running = RunFilter {
        statuses: vec![RunStatus::Running],
        ..RunFilter::default()
    };
    assert_eq!(ids(store.runs(running).await.expect("runs")), ["a", "b"]);
    let page = RunFilter {
        after: Some("a".into()),
        limit: 1,
        ..RunFilter::default()
    };
    assert_eq!(ids(store.runs(page).await.expect("runs")), ["b"]);
}

/// A step, then code that panics on its first execution.
struct Panicky {
    log: Log,
    panics: Arc<AtomicU32>,
}

impl Workflow for Panicky {
    const KIND: &'static str = "panicky";
    type Input = ();
    type Output = u32;
    async fn run(&self, ctx: FlowContext, _: ()) -> Result<u32, FlowError> {
        let log = self.log.clone();
        let n: u32 = ctx
            .step("before", move || {
                let log = log.clone();
                async move {
                    log.push("before");
                    Ok::<_, String>(41)
                }
            })
            .await?;
        if self.panics.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("a bug in the workflow");
        }
        Ok(n + 1)
    }
}

/// Case: a panic in a workflow's code fails that attempt transiently: the run is retried
/// with the job's backoff (not stranded, not compensated) and its journaled steps stand.
pub async fn a_panicking_run_is_retried_not_stranded<S: FlowStore>(
    db: FlowDb<S>,
    clock: ManualClock,
) {
    let log = Log::default();
    let panics = Arc::new(AtomicU32::new(0));
    let queue = Queue::new(db.store);
    let flows = Flows::builder(&queue)
        .register(Panicky {
            log: log.clone(),
            panics: Arc::clone(&panics),
        })
        .build()
        .expect("flows");
    let worker = start_worker(&queue, &flows).await;
    let run = flows.start::<Panicky>("panic-1", &()).await.expect("start");
    let job = run.record().await.expect("record").job;
    until_job_in(
        &queue,
        job,
        windlass_queue::JobState::Retryable,
        "the panic did not fail the attempt",
    )
    .await;
    assert_eq!(run.status().await.expect("status"), RunStatus::Running);
    clock.advance(Duration::from_secs(600)); // past any first backoff
    assert_eq!(run.result(WAIT, POLL).await.expect("result"), 42);
    assert_eq!(
        log.all(),
        ["before"],
        "the journaled step did not run again"
    );
    assert_eq!(panics.load(Ordering::SeqCst), 2);
    worker.shutdown(Duration::from_secs(5)).await;
}
