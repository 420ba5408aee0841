//! Worker cases: a real [`Worker`] on the store; the tests wait for events, never for
//! wall-clock time (the hard-timeout case gives the handler a short timeout and waits for the
//! job's end, whatever the machine's speed).
#![allow(clippy::unwrap_used, missing_docs)] // test code: a failed step is a failed case

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore, mpsc};

use crate::{
    Job, JobContext, JobError, JobOptions, JobState, ManualClock, NewJob, Queue, Store, Worker,
    WorkerConfig,
};

const WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(20);

#[derive(Serialize, Deserialize)]
struct Work {
    n: u32,
}

/// Fails `fail_first` times per job, then succeeds; counts runs and the peak of concurrent runs.
struct Flaky {
    runs: Arc<AtomicUsize>,
    fail_first: u32,
    inside: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    /// If set, each run reports that it is inside, then waits for a permit.
    hold: Option<(Arc<Semaphore>, mpsc::UnboundedSender<()>)>,
}

impl Flaky {
    fn new(fail_first: u32) -> Self {
        Flaky {
            runs: Arc::default(),
            fail_first,
            inside: Arc::default(),
            peak: Arc::default(),
            hold: None,
        }
    }
}

impl Job for Flaky {
    const KIND: &'static str = "k";
    type Payload = Work;
    async fn run(&self, ctx: JobContext, _work: Work) -> Result<(), JobError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        let now = self.inside.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        if let Some((permits, entered)) = &self.hold {
            let _ = entered.send(());
            permits.acquire().await.unwrap().forget();
        }
        self.inside.fetch_sub(1, Ordering::SeqCst);
        if ctx.attempt() <= self.fail_first {
            return Err(JobError::failed(format!(
                "attempt {} failed",
                ctx.attempt()
            )));
        }
        Ok(())
    }
}

/// Never returns by itself; obeys cancellation if `obey`.
struct Stuck {
    obey: bool,
    started: Arc<Notify>,
    /// Counts handler futures dropped: a stopped handler is dropped, not left running.
    dropped: Arc<AtomicUsize>,
}

struct CountDrop(Arc<AtomicUsize>);
impl Drop for CountDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Job for Stuck {
    const KIND: &'static str = "k";
    type Payload = Work;
    async fn run(&self, ctx: JobContext, _work: Work) -> Result<(), JobError> {
        let _dropped = CountDrop(self.dropped.clone());
        self.started.notify_one();
        if self.obey {
            ctx.cancelled().await;
            return Err(JobError::cancel("told to stop"));
        }
        std::future::pending::<()>().await;
        Ok(())
    }
}

fn fast() -> WorkerConfig {
    WorkerConfig {
        heartbeat: Duration::from_millis(20),
        poll: Duration::from_millis(50),
        cancel_grace: Duration::from_millis(50),
        ..WorkerConfig::default()
    }
}

/// Enqueues one `Flaky` job per number, in one batch; their ids in order.
async fn works<S: Store>(queue: &Queue<S>, numbers: std::ops::Range<u32>) -> Vec<crate::JobId> {
    let work: Vec<Work> = numbers.map(|n| Work { n }).collect();
    queue
        .enqueue_many::<Flaky>(&work, JobOptions::default())
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect()
}

/// Starts a worker on `queue` with one handler.
async fn start<S: Store, J: Job>(
    queue: &Queue<S>,
    handler: J,
    config: WorkerConfig,
) -> crate::WorkerHandle {
    Worker::builder(queue)
        .register(handler)
        .config(config)
        .build()
        .unwrap()
        .start()
        .await
        .unwrap()
}

fn retry_at_once(attempts: u32) -> JobOptions {
    JobOptions {
        retry: windlass_policy::RetrySchedule {
            max_attempts: attempts,
            backoff: windlass_policy::Backoff::Constant(Duration::ZERO),
            jitter: windlass_policy::Jitter::None,
            max_delay: Duration::from_secs(1),
        },
        ..JobOptions::default()
    }
}

pub async fn worker_runs_jobs_to_completion<S: Store>(store: S, _clock: ManualClock) {
    let queue = Queue::new(store);
    let flaky = Flaky::new(0);
    let runs = flaky.runs.clone();
    let worker = start(&queue, flaky, fast()).await;
    let mut ids = Vec::new();
    for n in 0..20 {
        ids.push(
            queue
                .enqueue::<Flaky>(&Work { n }, JobOptions::default())
                .await
                .unwrap()
                .id,
        );
    }
    for id in &ids {
        let done = queue.wait(*id, WAIT, POLL).await.unwrap();
        assert_eq!(done.state, JobState::Completed);
        assert_eq!(done.attempts.len(), 1);
        assert_eq!(done.attempts[0].worker, worker.worker_id());
    }
    assert_eq!(runs.load(Ordering::SeqCst), 20, "each job ran exactly once");
    assert_eq!(worker.shutdown(Duration::from_secs(5)).await.released, 0);
}

/// Asks for its own completion writer ([`JobContext::complete_with`]), which stores the
/// job's completion as given (`n` = 0), stores a cancel instead (`n` = 1), is never used
/// because the handler fails (`n` = 2), answers that the lease was lost (`n` = 3), or fails
/// as unavailable five times before it stores the completion (`n` = 4); counts the
/// writer's calls per `n`.
struct OwnCompletion<S> {
    store: Arc<S>,
    writes: Arc<[AtomicUsize; 5]>,
}

impl<S: Store> Job for OwnCompletion<S> {
    const KIND: &'static str = "own";
    type Payload = Work;

    async fn run(&self, ctx: JobContext, work: Work) -> Result<(), JobError> {
        let (store, writes, n) = (Arc::clone(&self.store), Arc::clone(&self.writes), work.n);
        ctx.complete_with(move |mut finish| {
            let (store, writes) = (Arc::clone(&store), Arc::clone(&writes));
            async move {
                let calls = writes[n as usize].fetch_add(1, Ordering::SeqCst) + 1;
                assert_eq!(finish.next, crate::NextState::Completed);
                if n == 3 {
                    return Ok(None);
                }
                if n == 4 && calls <= 5 {
                    return Err(crate::StoreError::Unavailable("down for a moment".into()));
                }
                if n == 1 {
                    finish.next = crate::NextState::Cancelled;
                    finish.record.outcome = "cancelled".into();
                }
                let fenced = store.finish(vec![finish.clone()]).await?;
                Ok((fenced == [crate::Fenced::Applied]).then_some(finish))
            }
        });
        if n == 2 {
            return Err(JobError::permanent("failed after asking"));
        }
        Ok(())
    }
}

pub async fn worker_stores_a_completion_through_the_handlers_writer<S: Store>(
    store: S,
    _clock: ManualClock,
) {
    let queue = Queue::new(store);
    let writes: Arc<[AtomicUsize; 5]> = Arc::default();
    let handler = OwnCompletion {
        store: Arc::clone(queue.store()),
        writes: Arc::clone(&writes),
    };
    let worker = start(&queue, handler, fast()).await;
    let mut events = queue.subscribe();
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(
            queue
                .enqueue::<OwnCompletion<S>>(&Work { n }, JobOptions::default())
                .await
                .unwrap()
                .id,
        );
    }
    let done = queue.wait(ids[0], WAIT, POLL).await.unwrap();
    assert_eq!((done.state, done.attempt), (JobState::Completed, 1));
    assert_eq!(done.attempts[0].worker, worker.worker_id());
    let cancelled = queue.wait(ids[1], WAIT, POLL).await.unwrap();
    assert_eq!(
        cancelled.state,
        JobState::Cancelled,
        "the writer's own end is the one stored"
    );
    let failed = queue.wait(ids[2], WAIT, POLL).await.unwrap();
    assert_eq!(
        (failed.state, failed.attempts[0].error.as_deref()),
        (JobState::Discarded, Some("failed after asking"))
    );
    let retried = queue.wait(ids[4], WAIT, POLL).await.unwrap();
    assert_eq!(
        (retried.state, retried.attempt),
        (JobState::Completed, 1),
        "a writer that fails transiently is tried until it stores the end"
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while worker.counts().fenced < 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
    }
    let calls: Vec<usize> = writes.iter().map(|w| w.load(Ordering::SeqCst)).collect();
    assert_eq!(
        calls,
        [1, 1, 0, 1, 6],
        "each completion written by its writer, again only after a failure; a failed \
         attempt never by it"
    );
    let lost = queue.get(ids[3]).await.unwrap().unwrap();
    assert_eq!(
        lost.state,
        JobState::Running,
        "a writer that answers a lost lease stores nothing"
    );
    // The events follow what was stored, not what the handler returned.
    let mut seen = std::collections::HashMap::new();
    while seen.len() < 4 {
        let e = tokio::time::timeout(WAIT, events.recv())
            .await
            .unwrap()
            .unwrap();
        if ids.contains(&e.id)
            && !matches!(
                e.kind,
                crate::JobEventKind::Started { .. } | crate::JobEventKind::Progress(_)
            )
        {
            seen.insert(e.id, e.kind);
        }
    }
    assert_eq!(seen[&ids[0]], crate::JobEventKind::Completed);
    assert_eq!(seen[&ids[1]], crate::JobEventKind::Cancelled);
    assert!(matches!(
        seen[&ids[2]],
        crate::JobEventKind::Discarded { .. }
    ));
    assert_eq!(seen[&ids[4]], crate::JobEventKind::Completed);
    assert!(
        !seen.contains_key(&ids[3]),
        "no event for an end that was not stored"
    );
    let counts = worker.counts();
    assert_eq!(
        (
            counts.completed,
            counts.cancelled,
            counts.discarded,
            counts.fenced
        ),
        (2, 1, 1, 1)
    );
    worker.shutdown(Duration::from_secs(5)).await;
}

pub async fn worker_retries_transient_failures<S: Store>(store: S, _clock: ManualClock) {
    let queue = Queue::new(store);
    let worker = start(&queue, Flaky::new(2), fast()).await;
    let ok = queue
        .enqueue::<Flaky>(&Work { n: 1 }, retry_at_once(3))
        .await
        .unwrap()
        .id;
    let gives_up = queue
        .enqueue::<Flaky>(&Work { n: 2 }, retry_at_once(2))
        .await
        .unwrap()
        .id;
    let done = queue.wait(ok, WAIT, POLL).await.unwrap();
    assert_eq!((done.state, done.attempt), (JobState::Completed, 3));
    let outcomes: Vec<&str> = done.attempts.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, vec!["failed", "failed", "completed"]);
    assert_eq!(done.attempts[1].error.as_deref(), Some("attempt 2 failed"));
    assert_eq!(done.attempts[1].class.as_deref(), Some("transient"));
    let dead = queue.wait(gives_up, WAIT, POLL).await.unwrap();
    assert_eq!((dead.state, dead.attempt), (JobState::Discarded, 2));
    worker.shutdown(Duration::from_secs(5)).await;
}

pub async fn worker_discards_malformed_payloads_and_goes_on<S: Store>(
    store: S,
    _clock: ManualClock,
) {
    let queue = Queue::new(store);
    let worker = start(&queue, Flaky::new(0), fast()).await;
    let bad = NewJob::new(
        "k",
        serde_json::json!({"n": "not a number"}),
        JobOptions::default(),
    )
    .unwrap();
    let bad = queue.enqueue_raw(vec![bad]).await.unwrap()[0].id;
    let good = queue
        .enqueue::<Flaky>(&Work { n: 1 }, JobOptions::default())
        .await
        .unwrap()
        .id;
    let dead = queue.wait(bad, WAIT, POLL).await.unwrap();
    assert_eq!(
        (dead.state, dead.attempt),
        (JobState::Discarded, 1),
        "no retry of a payload that cannot decode"
    );
    let msg = dead.attempts[0].error.clone().unwrap();
    assert!(msg.contains("malformed payload for kind `k`"), "{msg}");
    assert_eq!(dead.attempts[0].class.as_deref(), Some("permanent"));
    assert_eq!(
        queue.wait(good, WAIT, POLL).await.unwrap().state,
        JobState::Completed
    );
    worker.shutdown(Duration::from_secs(5)).await;
}

pub async fn worker_hard_timeout_stops_the_handler<S: Store>(store: S, _clock: ManualClock) {
    let queue = Queue::new(store);
    let started = Arc::new(Notify::new());
    let dropped = Arc::new(AtomicUsize::new(0));
    let stuck = Stuck {
        obey: false,
        started: started.clone(),
        dropped: dropped.clone(),
    };
    let worker = start(&queue, stuck, fast()).await;
    let opts = JobOptions {
        timeout: Duration::from_millis(50),
        ..retry_at_once(2)
    };
    let id = queue
        .enqueue::<Stuck>(&Work { n: 1 }, opts)
        .await
        .unwrap()
        .id;
    let dead = queue.wait(id, WAIT, POLL).await.unwrap();
    assert_eq!((dead.state, dead.attempt), (JobState::Discarded, 2));
    let outcomes: Vec<&str> = dead.attempts.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, vec!["timed_out", "timed_out"]);
    worker.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        dropped.load(Ordering::SeqCst),
        2,
        "each timed-out handler was stopped (dropped), not left running"
    );
}

pub async fn worker_cancellation_reaches_the_handler<S: Store>(store: S, _clock: ManualClock) {
    let queue = Queue::new(store);
    for obey in [true, false] {
        let started = Arc::new(Notify::new());
        let stuck = Stuck {
            obey,
            started: started.clone(),
            dropped: Arc::default(),
        };
        let worker = start(&queue, stuck, fast()).await;
        let id = queue
            .enqueue::<Stuck>(&Work { n: 1 }, JobOptions::default())
            .await
            .unwrap()
            .id;
        started.notified().await;
        assert_eq!(queue.cancel(id).await.unwrap(), Some(JobState::Running));
        let done = queue.wait(id, WAIT, POLL).await.unwrap();
        assert_eq!(done.state, JobState::Cancelled, "obey = {obey}");
        let expected = if obey {
            "told to stop"
        } else {
            "cancelled while running"
        };
        assert_eq!(done.attempts[0].error.as_deref(), Some(expected));
        worker.shutdown(Duration::ZERO).await;
    }
}

pub async fn worker_shutdown_releases_unfinished_jobs<S: Store>(store: S, _clock: ManualClock) {
    let queue = Queue::new(store);
    let started = Arc::new(Notify::new());
    let stuck = Stuck {
        obey: false,
        started: started.clone(),
        dropped: Arc::default(),
    };
    let worker = start(&queue, stuck, fast()).await;
    let id = queue
        .enqueue::<Stuck>(&Work { n: 1 }, JobOptions::default())
        .await
        .unwrap()
        .id;
    started.notified().await;
    let report = worker.shutdown(Duration::from_millis(10)).await;
    assert_eq!(report.released, 1);
    let rec = queue.get(id).await.unwrap().unwrap();
    assert_eq!(rec.state, JobState::Scheduled, "released back to its queue");
    assert_eq!(rec.attempt, 0, "a released attempt does not count");
    assert_eq!(rec.attempts[0].outcome, "released");
    // Another worker picks it up.
    let flaky = Flaky::new(0);
    let worker = start(&queue, flaky, fast()).await;
    assert_eq!(
        queue.wait(id, WAIT, POLL).await.unwrap().state,
        JobState::Completed
    );
    worker.shutdown(Duration::from_secs(5)).await;
}

pub async fn worker_respects_its_concurrency<S: Store>(store: S, _clock: ManualClock) {
    let queue = Queue::new(store);
    let permits = Arc::new(Semaphore::new(0));
    let (entered_tx, mut entered) = mpsc::unbounded_channel();
    let flaky = Flaky {
        hold: Some((permits.clone(), entered_tx)),
        ..Flaky::new(0)
    };
    let (runs, peak) = (flaky.runs.clone(), flaky.peak.clone());
    let config = WorkerConfig {
        concurrency: 3,
        fetch_batch: 2,
        ..fast()
    };
    let worker = start(&queue, flaky, config).await;
    let mut ids = Vec::new();
    for n in 0..10 {
        ids.push(
            queue
                .enqueue::<Flaky>(&Work { n }, JobOptions::default())
                .await
                .unwrap()
                .id,
        );
    }
    // Three runs are inside and held: the worker is full.
    for _ in 0..3 {
        entered.recv().await.unwrap();
    }
    assert_eq!(peak.load(Ordering::SeqCst), 3);
    permits.add_permits(10);
    for id in ids {
        assert_eq!(
            queue.wait(id, WAIT, POLL).await.unwrap().state,
            JobState::Completed
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 10);
    assert_eq!(
        peak.load(Ordering::SeqCst),
        3,
        "never more than the concurrency at once"
    );
    worker.shutdown(Duration::from_secs(5)).await;
}

/// A busy worker keeps up to `claims_in_flight` claims on their way at once, never more,
/// and each job still runs exactly once. Each claim yields a few times before it reaches
/// the store (the probe), so a worker able to send the next claim meanwhile does.
pub async fn worker_keeps_up_to_its_claims_in_flight<S: Store>(store: S, _clock: ManualClock) {
    let store = Arc::new(store);
    for (round, in_flight) in [1usize, 3].into_iter().enumerate() {
        let probe = crate::conformance::ClaimProbe::new(store.clone(), 8);
        let (peak, claims) = (probe.peak(), probe.claims());
        let queue = Queue::new(probe);
        let base = u32::try_from(round).unwrap() * 100;
        let ids = works(&queue, base..base + 40).await;
        let flaky = Flaky::new(0);
        let runs = flaky.runs.clone();
        // Room for many claims of 4: only `claims_in_flight` bounds them.
        let config = WorkerConfig {
            concurrency: 2,
            prefetch: 62,
            fetch_batch: 4,
            claims_in_flight: in_flight,
            ..fast()
        };
        let worker = start(&queue, flaky, config).await;
        for id in ids {
            assert_eq!(
                queue.wait(id, WAIT, POLL).await.unwrap().state,
                JobState::Completed
            );
        }
        worker.shutdown(Duration::from_secs(5)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 40, "each job ran exactly once");
        assert!(
            claims.load(Ordering::SeqCst) >= 10,
            "40 jobs, claims of at most 4"
        );
        assert_eq!(
            peak.load(Ordering::SeqCst),
            in_flight,
            "claims in flight at once, with claims_in_flight = {in_flight}"
        );
    }
}

/// A worker shut down while a claim is on its way still takes that claim's answer: the
/// jobs the store gave it run (or are released) within the shutdown, never left `running`
/// under a lease nobody holds until it expires.
pub async fn worker_shutdown_settles_claims_in_flight<S: Store>(store: S, _clock: ManualClock) {
    let answers = Arc::new(Semaphore::new(0));
    let (claimed_tx, mut claimed) = mpsc::unbounded_channel();
    let probe = crate::conformance::ClaimProbe::new(Arc::new(store), 0)
        .holding_answers(answers.clone(), claimed_tx);
    let queue = Queue::new(probe);
    let ids = works(&queue, 0..4).await;
    let flaky = Flaky::new(0);
    let runs = flaky.runs.clone();
    let worker = start(
        &queue,
        flaky,
        WorkerConfig {
            claims_in_flight: 1,
            ..fast()
        },
    )
    .await;
    // The store has claimed all four; the answer is held back.
    assert_eq!(
        tokio::time::timeout(WAIT, claimed.recv()).await.unwrap(),
        Some(4)
    );
    // Shutdown starts (its first poll stops the fetcher) while the answer is on its way.
    let shutdown = worker.shutdown(Duration::from_secs(10));
    tokio::pin!(shutdown);
    tokio::select! {
        biased;
        _ = &mut shutdown => panic!("shutdown ended with a claim unanswered"),
        () = std::future::ready(()) => {}
    }
    answers.add_permits(100);
    let report = tokio::time::timeout(WAIT, shutdown).await.unwrap();
    assert_eq!(report.released, 0);
    assert_eq!(runs.load(Ordering::SeqCst), 4, "the claimed jobs ran");
    for id in ids {
        assert_eq!(
            queue.get(id).await.unwrap().unwrap().state,
            JobState::Completed,
            "job {id:?}"
        );
    }
}

/// An empty answer from an older claim, arriving after a newer claim found work, does not
/// put the worker to sleep: only the newest claim's answer says that nothing is due. (Here
/// nothing signals work and the poll interval is an hour, so a worker wrongly asleep never
/// finishes the jobs.)
pub async fn worker_is_not_idled_by_an_older_empty_claim<S: Store>(store: S, _clock: ManualClock) {
    let first_answer = Arc::new(Semaphore::new(0));
    let probe = crate::conformance::ClaimProbe::new(Arc::new(store), 0)
        .first_claim_finds_nothing(first_answer.clone())
        .quiet_signal();
    let queue = Queue::new(probe);
    let ids = works(&queue, 0..6).await;
    let permits = Arc::new(Semaphore::new(0));
    let (entered_tx, mut entered) = mpsc::unbounded_channel();
    let flaky = Flaky {
        hold: Some((permits.clone(), entered_tx)),
        ..Flaky::new(0)
    };
    // Two jobs in flight at most, one per claim: claim 1 (held, will find nothing) and
    // claim 2 (a job, whose handler is held) take both.
    let worker = start(
        &queue,
        flaky,
        WorkerConfig {
            concurrency: 1,
            prefetch: 1,
            fetch_batch: 1,
            claims_in_flight: 2,
            poll: Duration::from_secs(3600),
            ..fast()
        },
    )
    .await;
    tokio::time::timeout(WAIT, entered.recv()).await.unwrap();
    // Claim 1 answers after claim 2 brought work: the worker must go on claiming.
    first_answer.add_permits(1);
    permits.add_permits(100);
    for id in ids {
        assert_eq!(
            queue.wait(id, WAIT, POLL).await.unwrap().state,
            JobState::Completed
        );
    }
    worker.shutdown(Duration::from_secs(5)).await;
}

pub async fn worker_reports_unknown_kinds<S: Store>(store: S, _clock: ManualClock) {
    let queue = Queue::new(store);
    let stray = NewJob::new(
        "nobody_handles_me",
        serde_json::json!({}),
        JobOptions::default(),
    )
    .unwrap();
    let stray = queue.enqueue_raw(vec![stray]).await.unwrap()[0].id;
    let worker = start(&queue, Flaky::new(0), fast()).await;
    assert_eq!(worker.unknown_kinds(), ["nobody_handles_me".to_string()]);
    let id = queue
        .enqueue::<Flaky>(&Work { n: 1 }, JobOptions::default())
        .await
        .unwrap()
        .id;
    assert_eq!(
        queue.wait(id, WAIT, POLL).await.unwrap().state,
        JobState::Completed
    );
    assert_eq!(
        queue.get(stray).await.unwrap().unwrap().state,
        JobState::Available,
        "left for a worker that has the handler"
    );
    worker.shutdown(Duration::from_secs(5)).await;
}

pub async fn worker_prunes_finished_jobs_after_their_retention<S: Store>(
    store: S,
    clock: ManualClock,
) {
    let queue = Queue::new(store);
    let config = WorkerConfig {
        rescue_every: Duration::from_millis(20),
        retention: Duration::from_secs(60),
        dead_letter_retention: Duration::from_secs(600),
        ..fast()
    };
    let worker = start(&queue, Flaky::new(0), config).await;
    let done = queue
        .enqueue::<Flaky>(&Work { n: 1 }, JobOptions::default())
        .await
        .unwrap()
        .id;
    let bad = NewJob::new("k", serde_json::json!({"n": "bad"}), JobOptions::default()).unwrap();
    let dead = queue.enqueue_raw(vec![bad]).await.unwrap()[0].id;
    assert_eq!(
        queue.wait(done, WAIT, POLL).await.unwrap().state,
        JobState::Completed
    );
    assert_eq!(
        queue.wait(dead, WAIT, POLL).await.unwrap().state,
        JobState::Discarded
    );
    clock.advance(Duration::from_secs(61));
    let deadline = tokio::time::Instant::now() + WAIT;
    while queue.get(done).await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the completed job was never pruned"
        );
        tokio::time::sleep(POLL).await;
    }
    assert!(
        queue.get(dead).await.unwrap().is_some(),
        "a dead letter went with the completed jobs"
    );
    clock.advance(Duration::from_secs(600));
    while queue.get(dead).await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dead letter was never pruned"
        );
        tokio::time::sleep(POLL).await;
    }
    worker.shutdown(Duration::from_secs(5)).await;
}

pub async fn worker_schedules_periodic_jobs<S: Store>(store: S, _clock: ManualClock) {
    let queue = Queue::new(store);
    let p =
        crate::Periodic::every::<Flaky>("tick", Duration::from_secs(3600), &Work { n: 9 }).unwrap();
    // Two workers (as two processes would) schedule the same periodic job.
    let mut events = queue.subscribe();
    let a = Worker::builder(&queue)
        .register(Flaky::new(0))
        .config(fast())
        .periodic(p.clone())
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let b = Worker::builder(&queue)
        .register(Flaky::new(0))
        .config(fast())
        .periodic(p)
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    loop {
        let e = tokio::time::timeout(WAIT, events.recv())
            .await
            .unwrap()
            .unwrap();
        if e.kind == crate::JobEventKind::Completed {
            break;
        }
    }
    a.shutdown(Duration::from_secs(5)).await;
    b.shutdown(Duration::from_secs(5)).await;
    let jobs = queue.list(crate::JobFilter::default()).await.unwrap();
    assert_eq!(jobs.len(), 1, "one job for the tick: {jobs:?}");
    assert_eq!(jobs[0].state, JobState::Completed);
    assert_eq!(jobs[0].payload, serde_json::json!({"n": 9}));
}

pub async fn worker_late_completion_after_a_lost_lease_is_refused<S: Store>(
    store: S,
    clock: ManualClock,
) {
    let queue = Queue::new(store);
    let permits = Arc::new(Semaphore::new(0));
    let (entered_tx, mut entered) = mpsc::unbounded_channel();
    let mut flaky = Flaky::new(0);
    flaky.hold = Some((permits.clone(), entered_tx));
    let lease = Duration::from_secs(30);
    let worker = start(
        &queue,
        flaky,
        WorkerConfig {
            lease,
            // No heartbeat of this worker's own may run during the case (the first comes one
            // period after start), nor a sweep (the first comes at start, before the claim).
            heartbeat: Duration::from_secs(29),
            // No room to claim the job again itself while its handler hangs.
            concurrency: 1,
            prefetch: 0,
            rescue_every: Duration::from_secs(3600),
            gauges_every: Duration::from_secs(3600),
            ..fast()
        },
    )
    .await;
    let id = queue
        .enqueue::<Flaky>(&Work { n: 1 }, JobOptions::default())
        .await
        .unwrap()
        .id;
    entered.recv().await.unwrap();
    // The worker hangs past its lease (by the store's clock); a sweep retries the job and it
    // is claimed again under the same worker id (as its own fetcher would): only the lease
    // token tells the two attempts apart.
    clock.advance(lease + Duration::from_secs(1));
    queue.store().rescue_expired(10).await.unwrap();
    // (Or the worker's own first sweep did it, had it run late.)
    assert_eq!(
        queue.get(id).await.unwrap().unwrap().state,
        JobState::Available
    );
    let other = queue
        .store()
        .claim(crate::ClaimRequest {
            queues: vec!["default".into()],
            kinds: vec![Flaky::KIND.into()],
            limit: 1,
            worker: worker.worker_id().into(),
            lease_for: lease,
        })
        .await
        .unwrap();
    assert_eq!(other.len(), 1);
    // The zombie's handler returns now: its completion must be refused, and counted.
    permits.add_permits(1);
    let deadline = tokio::time::Instant::now() + WAIT;
    while worker.counts().fenced == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no refused completion: {:?} {:?}",
            worker.counts(),
            queue.get(id).await.unwrap()
        );
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(worker.counts().completed, 0);
    let rec = queue.get(id).await.unwrap().unwrap();
    assert_eq!(
        (rec.state, rec.attempt, rec.locked_by.as_deref()),
        (JobState::Running, 2, Some(worker.worker_id())),
        "the second attempt stands"
    );
    worker.shutdown(Duration::from_secs(5)).await;
}
