//! One trace per run, a span per step: every resumption of a run is a `workflow` span
//! carrying the run's id and its trace context, each step that runs is a `step` span inside
//! it, and each compensation of a rollback a `compensation` span inside it. A global
//! subscriber (this binary's only test) sees the spans of every thread.
#![allow(clippy::unwrap_used)] // test code

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use tracing::Subscriber;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;
use windlass_flow::{FlowContext, FlowError, Flows, RunOptions, Workflow};
use windlass_queue::Queue;
use windlass_sqlite::SqliteStore;

/// A span as opened: its name, its fields, and its parent's name.
#[derive(Debug, Clone)]
struct Opened {
    name: &'static str,
    fields: HashMap<&'static str, String>,
    parent: Option<&'static str>,
}

#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<Opened>>>);

struct Fields<'a>(&'a mut HashMap<&'static str, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name(), value.to_owned());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Spans {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        let parent = ctx
            .span(id)
            .and_then(|span| span.parent())
            .map(|parent| parent.name());
        self.0.lock().unwrap().push(Opened {
            name: attrs.metadata().name(),
            fields,
            parent,
        });
    }
}

/// Reserve (compensated), then charge, which fails.
struct Pay;

impl Workflow for Pay {
    const KIND: &'static str = "pay";
    type Input = ();
    type Output = u32;
    async fn run(&self, ctx: FlowContext, _: ()) -> Result<u32, FlowError> {
        ctx.step("reserve", || async { Ok::<_, String>(1) })
            .compensate_with(|_: u32| async { Ok::<_, String>(()) })
            .await?;
        ctx.step("charge", || async { Err::<u32, _>("declined") })
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_one_workflow_span_with_a_span_per_step_and_compensation() {
    let spans = Spans::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(spans.clone()))
        .unwrap();
    let queue = Queue::new(SqliteStore::in_memory().await.unwrap());
    let flows = Flows::builder(&queue).register(Pay).build().unwrap();
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let options = RunOptions::new().trace_context(traceparent);
    assert!(flows.run_with::<Pay>("pay-1", &(), &options).await.is_err());

    let opened = spans.0.lock().unwrap().clone();
    let of_run: Vec<&Opened> = opened
        .iter()
        .filter(|s| s.fields.get("run").map(String::as_str) == Some("pay-1"))
        .collect();
    let workflow: Vec<&&Opened> = of_run.iter().filter(|s| s.name == "workflow").collect();
    assert!(!workflow.is_empty(), "no workflow span: {opened:?}");
    for w in &workflow {
        assert_eq!(w.fields.get("kind").map(String::as_str), Some("pay"));
        assert_eq!(
            w.fields.get("trace_context").map(String::as_str),
            Some(traceparent),
            "every resumption carries the run's trace context"
        );
    }
    let named = |name: &str| -> Vec<(Option<&str>, Option<&'static str>)> {
        of_run
            .iter()
            .filter(|s| s.name == name)
            .map(|s| (s.fields.get("step").map(String::as_str), s.parent))
            .collect()
    };
    assert_eq!(
        named("step"),
        [
            (Some("reserve"), Some("workflow")),
            (Some("charge"), Some("workflow"))
        ],
        "each step that ran, once, inside its resumption's span"
    );
    assert_eq!(
        named("compensation"),
        [(Some("reserve"), Some("workflow"))],
        "the rollback's compensation inside the run's span"
    );
}
