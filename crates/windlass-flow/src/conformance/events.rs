//! Event cases: a published event is delivered once to every subscription of its topic — a
//! job, and a workflow run started by the event — and a publisher's retry delivers nothing.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use windlass_queue::{
    Job, JobContext, JobError, JobFilter, ManualClock, Queue, Worker, WorkerConfig,
};

use super::{FlowDb, Log, POLL, WAIT, until};
use crate::events::{EventError, Events, Target};
use crate::{FlowContext, FlowError, FlowStore, Flows, Workflow};

#[derive(Debug, Serialize, Deserialize)]
struct Placed {
    order: u64,
}

/// Logs `invoice <order>`.
struct Invoice(Log);

impl Job for Invoice {
    const KIND: &'static str = "invoice";
    type Payload = Placed;
    async fn run(&self, _ctx: JobContext, placed: Placed) -> Result<(), JobError> {
        self.0.push(&format!("invoice {}", placed.order));
        Ok(())
    }
}

/// One step: `welcome <order>`.
struct Welcome;

impl Workflow for Welcome {
    const KIND: &'static str = "welcome";
    type Input = Placed;
    type Output = String;
    async fn run(&self, ctx: FlowContext, placed: Placed) -> Result<String, FlowError> {
        ctx.step("greet", || async move {
            Ok::<_, String>(format!("welcome {}", placed.order))
        })
        .await
    }
}

/// The `invoice` jobs in the store.
async fn invoice_jobs<S: FlowStore>(queue: &Queue<S>) -> Vec<windlass_queue::JobRecord> {
    queue
        .store()
        .list(JobFilter {
            kind: Some("invoice".into()),
            ..JobFilter::default()
        })
        .await
        .expect("list")
}

/// Case: an event is delivered in its publish's transaction to every subscription of its
/// topic — one `invoice` job (tagged with the event) and one `welcome` run (id
/// `<subscription>:<event>`, input the payload) — and to nothing else; publishing its id
/// again delivers nothing; an unsubscribed target gets no more; bad names are refused.
pub async fn a_published_event_reaches_every_subscriber_once<S: FlowStore>(
    db: FlowDb<S>,
    _clock: ManualClock,
) {
    let queue = Queue::new(db.store);
    let log = Log::default();
    let flows = Flows::builder(&queue)
        .register(Welcome)
        .poll(POLL)
        .build()
        .expect("flows");
    let worker = Worker::builder(&queue)
        .register(flows.driver())
        .register(Invoice(log.clone()))
        .config(WorkerConfig {
            queues: vec!["flows".into(), "billing".into()],
            poll: Duration::from_millis(20),
            ..WorkerConfig::default()
        })
        .build()
        .expect("a worker")
        .start()
        .await
        .expect("the worker starts");
    let events = Events::new(&queue);
    events
        .subscribe_job::<Invoice>("order.placed", "billing", "billing")
        .await
        .expect("subscribe billing");
    events
        .subscribe_workflow::<Welcome>("order.placed", "welcome", &flows)
        .await
        .expect("subscribe welcome");
    let subs = events
        .subscriptions(Some("order.placed"))
        .await
        .expect("subscriptions");
    assert_eq!(
        subs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["billing", "welcome"]
    );
    assert!(
        matches!(&subs[1].target, Target::Workflow { kind, queue, .. } if kind == "welcome" && queue == "flows")
    );

    let sent = events
        .publish_with_id("order.placed", "o-1", &Placed { order: 1 })
        .await
        .expect("publish");
    assert_eq!((sent.delivered, sent.duplicate), (2, false));
    let again = events
        .publish_with_id("order.placed", "o-1", &Placed { order: 1 })
        .await
        .expect("publish again");
    assert_eq!((again.delivered, again.duplicate), (0, true));
    let elsewhere = events
        .publish("order.shipped", &Placed { order: 1 })
        .await
        .expect("publish elsewhere");
    assert_eq!(elsewhere.delivered, 0);

    let run = flows
        .handle("welcome:o-1")
        .await
        .expect("handle")
        .expect("the event started a run");
    assert_eq!(run.result(WAIT, POLL).await.expect("run"), "welcome 1");
    until("the invoice job", || log.all() == ["invoice 1"]).await;
    let invoices = invoice_jobs(&queue).await;
    assert_eq!(invoices.len(), 1, "one job per event, retry or not");
    assert!(invoices[0].tags.contains(&"event:o-1".to_owned()));
    assert!(invoices[0].tags.contains(&"topic:order.placed".to_owned()));

    assert!(
        events
            .unsubscribe("order.placed", "billing")
            .await
            .expect("unsubscribe")
    );
    let after = events
        .publish_with_id("order.placed", "o-2", &Placed { order: 2 })
        .await
        .expect("publish after");
    assert_eq!(after.delivered, 1, "only the workflow is still subscribed");
    // Delivered in the publish's own transaction: the jobs are there (or not) already.
    let invoices = invoice_jobs(&queue).await;
    assert_eq!(
        invoices.len(),
        1,
        "no invoice for an event after the unsubscribe"
    );
    let run = flows
        .handle("welcome:o-2")
        .await
        .expect("handle")
        .expect("the second run");
    assert_eq!(run.result(WAIT, POLL).await.expect("run"), "welcome 2");
    assert!(matches!(
        events.publish("", &1).await,
        Err(EventError::InvalidName { what: "topic", .. })
    ));
    assert!(matches!(
        events.subscribe_job::<Invoice>("t", "a:b", "q").await,
        Err(EventError::InvalidName {
            what: "subscription name",
            ..
        })
    ));
    assert!(matches!(
        events
            .subscribe_job::<Invoice>("t", &"n".repeat(121), "q")
            .await,
        Err(EventError::InvalidName {
            what: "subscription name",
            ..
        })
    ));
    worker.shutdown(Duration::from_secs(5)).await;
}
