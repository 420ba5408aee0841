//! The workflow layer reports through the `metrics` facade — steps by outcome (and their
//! durations), replayed steps, compensations, run ends by status, cancels by who — and every
//! run carries one trace context across its resumptions. A global recorder (this binary's
//! only test) receives what is reported from any thread.
#![allow(clippy::unwrap_used)] // test code

use std::sync::{Arc, Mutex};

use windlass_flow::{FlowContext, FlowError, Flows, RunOptions, WaitError, Workflow};
use windlass_queue::{Queue, Store as _};
use windlass_sqlite::SqliteStore;
use windlass_test_support::metrics_capture::Capture;

/// Reserve (compensated), then charge, which fails when the input says so.
struct Pay {
    traces: Arc<Mutex<Vec<Option<String>>>>,
}

impl Workflow for Pay {
    const KIND: &'static str = "pay";
    type Input = bool;
    type Output = u32;
    async fn run(&self, ctx: FlowContext, fail: bool) -> Result<u32, FlowError> {
        self.traces
            .lock()
            .unwrap()
            .push(ctx.trace_context().map(str::to_owned));
        ctx.step("reserve", || async { Ok::<_, String>(1) })
            .compensate_with(|_: u32| async { Ok::<_, String>(()) })
            .await?;
        ctx.step("charge", move || async move {
            if fail {
                Err("declined".to_owned())
            } else {
                Ok(2)
            }
        })
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flow_layer_reports_steps_compensations_ends_and_cancels() {
    let capture: &'static Capture = Box::leak(Box::default());
    metrics::set_global_recorder(capture).unwrap();
    let queue = Queue::new(SqliteStore::in_memory().await.unwrap());
    let traces = Arc::new(Mutex::new(Vec::new()));
    let flows = Flows::builder(&queue)
        .register(Pay {
            traces: Arc::clone(&traces),
        })
        .build()
        .unwrap();

    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let ok = RunOptions::new().trace_context(traceparent);
    assert_eq!(flows.run_with::<Pay>("ok", &false, &ok).await.unwrap(), 2);
    // Run again: both steps are replayed from the journal, none runs.
    assert_eq!(flows.run::<Pay>("ok", &false).await.unwrap(), 2);
    let failed = flows.run::<Pay>("bad", &true).await.unwrap_err();
    assert!(
        matches!(&failed, windlass_flow::RunError::Wait(WaitError::Failed(m)) if m.contains("declined")),
        "{failed:?}"
    );

    let step = |s: &str, outcome: &str| {
        capture.counter(&format!(
            "windlass_flow_steps_total{{outcome={outcome},step={s},workflow=pay}}"
        ))
    };
    assert_eq!(step("reserve", "completed"), 2);
    assert_eq!(step("charge", "completed"), 1);
    assert_eq!(step("charge", "failed"), 1);
    assert_eq!(
        capture.counter("windlass_flow_step_duration_seconds{step=reserve,workflow=pay}"),
        2,
        "one duration sample per step run"
    );
    assert_eq!(
        capture.counter("windlass_flow_compensations_total{outcome=completed,workflow=pay}"),
        1
    );
    assert_eq!(
        capture.counter("windlass_flow_runs_total{status=completed,workflow=pay}"),
        1,
        "the second run of `ok` ended nothing"
    );
    assert_eq!(
        capture.counter("windlass_flow_runs_total{status=failed,workflow=pay}"),
        1
    );

    // A queued run (no worker here) cancelled by a caller.
    let queued = flows.start::<Pay>("queued", &false).await.unwrap();
    queued.cancel("changed my mind").await.unwrap();
    assert_eq!(
        capture.counter("windlass_flow_cancels_total{by=caller,workflow=pay}"),
        1
    );

    // Trace context: the given one reaches the code and the run's job; a run started without
    // one gets a fresh W3C traceparent of its own.
    let seen = traces.lock().unwrap().clone();
    assert_eq!(seen[0].as_deref(), Some(traceparent));
    let mut jobs = Vec::new();
    for id in ["ok", "bad", "queued"] {
        let run = flows.handle(id).await.unwrap().unwrap();
        let job = run.record().await.unwrap().job;
        let job = queue.store().get(job).await.unwrap().unwrap();
        jobs.push(job.trace_context.unwrap());
    }
    assert_eq!(jobs[0], traceparent);
    let fresh = &jobs[1];
    assert_eq!(fresh.len(), 55, "{fresh}");
    assert!(
        fresh.starts_with("00-") && fresh.ends_with("-01"),
        "{fresh}"
    );
    assert_ne!(jobs[1], jobs[2], "each run its own trace");
    assert!(
        flows
            .start_with::<Pay>("t", &false, &RunOptions::new().trace_context(""))
            .await
            .is_err(),
        "an empty trace context is refused"
    );
}
