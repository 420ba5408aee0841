//! Signal cases: a run waiting for a signal holds no worker, is woken by one at once, times
//! out on its journaled deadline, and takes a signal sent while it was busy elsewhere.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use windlass_queue::{JobState, ManualClock, Queue};

use super::{FlowDb, Log, POLL, WAIT, start_worker, until_job_in};
use crate::{EntryKind, FlowContext, FlowError, FlowStore, Flows, SignalError, Workflow};

/// Asks, waits an hour for `approved`, then decides.
struct Approval {
    log: Log,
    /// Permits for the `ask` step to finish (closed: it finishes at once).
    gate: Arc<Semaphore>,
}

impl Workflow for Approval {
    const KIND: &'static str = "approval";
    type Input = ();
    type Output = String;
    async fn run(&self, ctx: FlowContext, _: ()) -> Result<String, FlowError> {
        let (log, gate) = (self.log.clone(), Arc::clone(&self.gate));
        ctx.step("ask", || {
            let (log, gate) = (log.clone(), Arc::clone(&gate));
            async move {
                log.push("ask");
                if !gate.is_closed() {
                    let _ = gate.acquire().await.map(|p| p.forget());
                }
                Ok::<_, String>(())
            }
        })
        .await?;
        let answer: Option<bool> = ctx.wait_for("approved", Duration::from_secs(3600)).await?;
        let decided = match answer {
            Some(yes) => format!("approved:{yes}"),
            None => "timed out".to_owned(),
        };
        let log = self.log.clone();
        ctx.step("decide", || {
            let (log, decided) = (log.clone(), decided.clone());
            async move {
                log.push("decide");
                Ok::<_, String>(decided)
            }
        })
        .await
    }
}

fn open_gate() -> Arc<Semaphore> {
    let gate = Arc::new(Semaphore::new(0));
    gate.close();
    gate
}

fn approval<S: FlowStore>(queue: &Queue<S>, log: &Log, gate: Arc<Semaphore>) -> Flows<S> {
    Flows::builder(queue)
        .register(Approval {
            log: log.clone(),
            gate,
        })
        .poll(POLL)
        .build()
        .expect("flows")
}

/// Case: a run waiting for a signal sleeps (its job snoozed, holding no worker) and a
/// signal wakes it at once — the clock never moves; the wait's outcome is journaled.
pub async fn a_signal_wakes_a_waiting_run<S: FlowStore>(db: FlowDb<S>, _clock: ManualClock) {
    let queue = Queue::new(db.store);
    let log = Log::default();
    let flows = approval(&queue, &log, open_gate());
    let worker = start_worker(&queue, &flows).await;
    let run = flows.start::<Approval>("sig-1", &()).await.expect("start");
    let job = run.record().await.expect("record").job;
    until_job_in(&queue, job, JobState::Scheduled, "the run never waited").await;
    flows
        .signal("sig-1", "approved", &true)
        .await
        .expect("signal");
    assert_eq!(
        run.result(WAIT, POLL).await.expect("result"),
        "approved:true"
    );
    assert_eq!(log.all(), ["ask", "decide"], "nothing ran twice");
    let journal = run.journal().await.expect("journal");
    let signals: Vec<_> = journal
        .iter()
        .filter(|e| e.kind == EntryKind::Signal)
        .map(|e| e.key.split(':').take(2).collect::<Vec<_>>().join(":"))
        .collect();
    assert_eq!(
        signals,
        ["~signal:approved", "approved"],
        "sent, then taken"
    );
    // The recorded graph draws the wait after the signal it took.
    let at = |prefix: &str| {
        journal
            .iter()
            .position(|e| e.kind == EntryKind::Signal && e.key.starts_with(prefix))
            .expect("the entry")
    };
    let (sent, taken) = (at("~signal:approved"), at("approved"));
    assert!(
        crate::graph::edges(&journal).contains(&(sent, taken)),
        "{:?}",
        crate::graph::edges(&journal)
    );
    match flows.signal("sig-1", "approved", &false).await {
        Err(SignalError::Finished { status, .. }) => assert_eq!(status, "completed"),
        other => panic!("a finished run took a signal: {other:?}"),
    }
    match flows.signal("nobody", "approved", &true).await {
        Err(SignalError::NotFound(_)) => {}
        other => panic!("a signal to no run: {other:?}"),
    }
    match flows.signal("sig-1", "#bad", &true).await {
        Err(SignalError::InvalidName(_)) => {}
        other => panic!("a bad signal name: {other:?}"),
    }
    worker.shutdown(Duration::from_secs(5)).await;
}

/// Case: without a signal, the wait ends exactly at its journaled deadline (an hour on the
/// store's clock, not before), and the run goes on with `None`.
pub async fn a_signal_wait_times_out_at_its_deadline<S: FlowStore>(
    db: FlowDb<S>,
    clock: ManualClock,
) {
    let queue = Queue::new(db.store);
    let log = Log::default();
    let flows = approval(&queue, &log, open_gate());
    let worker = start_worker(&queue, &flows).await;
    let run = flows.start::<Approval>("sig-2", &()).await.expect("start");
    let job = run.record().await.expect("record").job;
    until_job_in(&queue, job, JobState::Scheduled, "the run never waited").await;
    clock.advance(Duration::from_secs(3599));
    assert!(
        matches!(
            run.result(Duration::from_millis(200), POLL).await,
            Err(crate::WaitError::Timeout(_))
        ),
        "a second before the deadline, the run still waits"
    );
    clock.advance(Duration::from_secs(1));
    assert_eq!(run.result(WAIT, POLL).await.expect("result"), "timed out");
    worker.shutdown(Duration::from_secs(5)).await;
}

/// Case: a signal sent while the run is busy in a step (its journal already read, its job
/// running) is not lost: when the run then waits, its job is due at once instead of at the
/// deadline, and the next resumption takes the signal — the clock never moves.
pub async fn a_signal_sent_while_the_run_is_busy_is_taken<S: FlowStore>(
    db: FlowDb<S>,
    _clock: ManualClock,
) {
    let queue = Queue::new(db.store);
    let log = Log::default();
    let gate = Arc::new(Semaphore::new(0));
    let flows = approval(&queue, &log, Arc::clone(&gate));
    let worker = start_worker(&queue, &flows).await;
    let run = flows.start::<Approval>("sig-3", &()).await.expect("start");
    super::until("the run to be busy in `ask`", || log.all() == ["ask"]).await;
    flows
        .signal("sig-3", "approved", &false)
        .await
        .expect("signal");
    gate.close();
    assert_eq!(
        run.result(WAIT, POLL).await.expect("result"),
        "approved:false"
    );
    assert_eq!(log.all(), ["ask", "decide"]);
    worker.shutdown(Duration::from_secs(5)).await;
}
