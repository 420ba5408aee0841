//! Durable events: choreography beside orchestration.
//!
//! **The problem.** When an order is placed, billing must invoice it, the warehouse must pick
//! it and a loyalty workflow must start — and the service that placed the order should not
//! know any of them. Publishing to a broker after committing the order loses the event if
//! the process dies in between; publishing before commits an event for an order that may
//! roll back. Each subscriber must get the event exactly once, even when the publisher
//! retries.
//!
//! **What this module guarantees.** [`Events::publish`] stores the event **and delivers it**
//! to every subscription of its topic **in one transaction**: a subscription naming a queue
//! job gets one job (payload: the event's payload; tags `event:<id>` and `topic:<topic>`), a
//! subscription naming a workflow gets one run (id `<subscription>:<event id>`, input: the
//! payload). Either all of that is stored or none of it, and the subscriptions it goes to
//! are those of one moment (read in the same transaction). An event id names one event,
//! **whatever its topic**: publishing the same id again ([`Events::publish_with_id`], for a
//! publisher that retries) delivers nothing and reports the duplicate — so derive ids from
//! the topic too (`order-17-placed`, `order-17-shipped`). Run ids of the form
//! `<subscription>:<event id>` belong to event deliveries: a run started by hand with such an
//! id takes the delivery's place (it is not started again, nor counted as delivered). From there the queue's guarantees hold — the job or
//! run survives crashes and is retried until done. On PostgreSQL,
//! `PostgresStore::publish_in` does the same inside the caller's own transaction: the
//! event exists if and only if the business data does (the outbox pattern, with no relay).
//!
//! Subscriptions are stored, not held in memory: any process may publish, and every
//! subscriber is reached whether or not it is running. A subscription made after an event was
//! published does not receive it (there is no replay of the past).
//!
//! **When not to use it.** For one known consumer, enqueue its job directly; for a process
//! with steps and compensations, start a workflow. Events are for fan-out to consumers the
//! publisher should not know.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use windlass_flow::Events;
//! use windlass_queue::{Job, JobContext, JobError, Queue};
//! use windlass_sqlite::SqliteStore;
//!
//! #[derive(Serialize, Deserialize)]
//! struct OrderPlaced { order: u64 }
//!
//! struct Invoice;
//! impl Job for Invoice {
//!     const KIND: &'static str = "invoice";
//!     type Payload = OrderPlaced;
//!     async fn run(&self, _ctx: JobContext, placed: OrderPlaced) -> Result<(), JobError> {
//!         println!("invoicing order {}", placed.order);
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let queue = Queue::new(SqliteStore::in_memory().await.unwrap());
//! let events = Events::new(&queue);
//! events.subscribe_job::<Invoice>("order.placed", "billing", "default").await.unwrap();
//! let sent = events.publish_with_id("order.placed", "order-17", &OrderPlaced { order: 17 }).await.unwrap();
//! assert_eq!((sent.delivered, sent.duplicate), (1, false));
//! // The publisher retries: nothing is delivered twice.
//! let again = events.publish_with_id("order.placed", "order-17", &OrderPlaced { order: 17 }).await.unwrap();
//! assert_eq!((again.delivered, again.duplicate), (0, true));
//! # }
//! ```

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use windlass_queue::{Job, JobOptions, NewJob, Queue, StoreError};

use crate::client::run_start;
use crate::context::ChildJobs;
use crate::driver::RunPayload;
use crate::store::{FlowStore, RunStart};
use crate::{Flows, Workflow};

/// The longest topic, event id or subscription name, in bytes.
pub const MAX_EVENT_NAME_BYTES: usize = 120;

/// What a subscription delivers each event to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// One job of this kind on this queue per event.
    Job {
        /// The job's kind.
        kind: String,
        /// The queue it goes to.
        queue: String,
    },
    /// One run of this workflow per event, driven on this flows queue.
    Workflow {
        /// The workflow's kind.
        kind: String,
        /// The flows queue.
        queue: String,
        /// The longest one resumption of the run may take.
        attempt_timeout: Duration,
    },
}

impl Target {
    /// The target as a backend stores it: `(target, kind, queue, attempt timeout in ms)`,
    /// target being `job` or `workflow`.
    pub fn columns(&self) -> (&'static str, String, String, i64) {
        match self {
            Target::Job { kind, queue } => ("job", kind.clone(), queue.clone(), 0),
            Target::Workflow {
                kind,
                queue,
                attempt_timeout,
            } => (
                "workflow",
                kind.clone(),
                queue.clone(),
                windlass_queue::duration_ms(*attempt_timeout),
            ),
        }
    }

    /// The target stored as [`columns`](Self::columns); `None` for an unknown target name.
    pub fn from_columns(
        target: &str,
        kind: String,
        queue: String,
        attempt_timeout_ms: i64,
    ) -> Option<Target> {
        match target {
            "job" => Some(Target::Job { kind, queue }),
            "workflow" => Some(Target::Workflow {
                kind,
                queue,
                attempt_timeout: Duration::from_millis(
                    u64::try_from(attempt_timeout_ms).unwrap_or(0),
                ),
            }),
            _ => None,
        }
    }
}

/// A stored subscription: every event published to `topic` is delivered to `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The topic.
    pub topic: String,
    /// The subscription's name, unique within its topic (the subscriber, e.g. `billing`).
    pub name: String,
    /// Where each event goes.
    pub target: Target,
}

/// An event, as published.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Its id: unique among all events.
    pub id: String,
    /// Its topic.
    pub topic: String,
    /// Its payload.
    pub payload: Value,
    /// When it was published (ms since the Unix epoch).
    pub published_at_ms: i64,
}

impl Event {
    /// An event to publish at `now_ms`: the topic and id checked, the payload serialised.
    pub fn new<T: Serialize>(
        topic: &str,
        id: &str,
        payload: &T,
        now_ms: i64,
    ) -> Result<Event, EventError> {
        check("topic", topic)?;
        check("event id", id)?;
        let payload = serde_json::to_value(payload).map_err(|e| EventError::Payload {
            topic: topic.into(),
            message: e.to_string(),
        })?;
        Ok(Event {
            id: id.into(),
            topic: topic.into(),
            payload,
            published_at_ms: now_ms,
        })
    }
}

/// One event's delivery to one subscription, stored with the event.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// A job to enqueue.
    Job(NewJob),
    /// A workflow run to start (its id makes it unique).
    Run(RunStart),
}

/// What [`Events::publish`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The event's id.
    pub event: String,
    /// An event with this id had been published before: nothing was stored or delivered.
    pub duplicate: bool,
    /// How many subscriptions it was delivered to.
    pub delivered: usize,
}

/// Why an event operation did nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    /// A topic, event id or subscription name is empty or too long (or a subscription name
    /// holds a `:`).
    #[error(
        "invalid {what} {value:?}: must be 1 to {MAX_EVENT_NAME_BYTES} bytes (and a subscription name has no `:`)"
    )]
    InvalidName {
        /// Which one.
        what: &'static str,
        /// The value given.
        value: String,
    },
    /// The payload does not serialise.
    #[error("the payload of an event on `{topic}` does not serialise: {message}")]
    Payload {
        /// The topic.
        topic: String,
        /// The serialiser's message.
        message: String,
    },
    /// A delivery could not be built (e.g. the payload is too large for a job).
    #[error("delivering to subscription `{subscription}`: {message}")]
    Delivery {
        /// The subscription.
        subscription: String,
        /// What went wrong.
        message: String,
    },
    /// The store failed; nothing was published.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn check(what: &'static str, value: &str) -> Result<(), EventError> {
    // A workflow delivery's run id is `<subscription>:<event id>`: with no `:` in a
    // subscription's name, two deliveries never share one.
    if value.is_empty()
        || value.len() > MAX_EVENT_NAME_BYTES
        || (what == "subscription name" && value.contains(':'))
    {
        return Err(EventError::InvalidName {
            what,
            value: value.to_owned(),
        });
    }
    Ok(())
}

/// The deliveries of `event` to `subscriptions` (those of its topic): one job or one run
/// each. Pure: a backend's transactional publish (`PostgresStore::publish_in`) uses it too.
pub fn deliveries(
    event: &Event,
    subscriptions: &[Subscription],
) -> Result<Vec<Delivery>, EventError> {
    subscriptions
        .iter()
        .filter(|s| s.topic == event.topic)
        .map(|s| {
            let failed = |message: String| EventError::Delivery {
                subscription: s.name.clone(),
                message,
            };
            Ok(match &s.target {
                Target::Job { kind, queue } => {
                    let options = JobOptions {
                        queue: queue.clone(),
                        tags: vec![
                            format!("event:{}", event.id),
                            format!("topic:{}", event.topic),
                        ],
                        ..JobOptions::default()
                    };
                    Delivery::Job(
                        NewJob::new(kind.clone(), event.payload.clone(), options)
                            .map_err(|e| failed(e.to_string()))?,
                    )
                }
                Target::Workflow {
                    kind,
                    queue,
                    attempt_timeout,
                } => {
                    let jobs = ChildJobs {
                        queue: queue.clone(),
                        attempt_timeout: *attempt_timeout,
                    };
                    let payload = RunPayload {
                        run: format!("{}:{}", s.name, event.id),
                        workflow: kind.clone(),
                        input: event.payload.clone(),
                        parent: None,
                        deadline_ms: None,
                    };
                    Delivery::Run(
                        run_start(&jobs, payload, None, None, event.published_at_ms)
                            .map_err(failed)?,
                    )
                }
            })
        })
        .collect()
}

/// Publishes events and manages subscriptions, over one store.
pub struct Events<S> {
    store: Arc<S>,
}

impl<S> Clone for Events<S> {
    fn clone(&self) -> Self {
        Events {
            store: Arc::clone(&self.store),
        }
    }
}

impl<S> std::fmt::Debug for Events<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}

impl<S: FlowStore> Events<S> {
    /// Events over `queue`'s store.
    pub fn new(queue: &Queue<S>) -> Self {
        Events {
            store: Arc::clone(queue.store()),
        }
    }

    /// Subscribes the job `J` to `topic` under `name`: each event becomes one `J` job on
    /// `queue`, its payload the event's (so `J::Payload` must decode it). Subscribing a name
    /// again replaces its target.
    pub async fn subscribe_job<J: Job>(
        &self,
        topic: &str,
        name: &str,
        queue: &str,
    ) -> Result<(), EventError> {
        check("topic", topic)?;
        check("subscription name", name)?;
        check("queue", queue)?;
        self.store
            .subscribe(Subscription {
                topic: topic.into(),
                name: name.into(),
                target: Target::Job {
                    kind: J::KIND.into(),
                    queue: queue.into(),
                },
            })
            .await?;
        Ok(())
    }

    /// Subscribes the workflow `W` to `topic` under `name`: each event starts one run of `W`
    /// (id `<name>:<event id>`, input the event's payload) on `flows`' queue: **a workflow
    /// started by an event**.
    pub async fn subscribe_workflow<W: Workflow>(
        &self,
        topic: &str,
        name: &str,
        flows: &Flows<S>,
    ) -> Result<(), EventError> {
        check("topic", topic)?;
        check("subscription name", name)?;
        self.store
            .subscribe(Subscription {
                topic: topic.into(),
                name: name.into(),
                target: Target::Workflow {
                    kind: W::KIND.into(),
                    queue: flows.queue_name().into(),
                    attempt_timeout: flows.attempt_timeout(),
                },
            })
            .await?;
        Ok(())
    }

    /// Removes a subscription; whether it existed. Deliveries already made stay.
    pub async fn unsubscribe(&self, topic: &str, name: &str) -> Result<bool, EventError> {
        Ok(self.store.unsubscribe(topic.into(), name.into()).await?)
    }

    /// The subscriptions of `topic` (all topics: `None`), by topic and name.
    pub async fn subscriptions(
        &self,
        topic: Option<&str>,
    ) -> Result<Vec<Subscription>, EventError> {
        Ok(self.store.subscriptions(topic.map(str::to_owned)).await?)
    }

    /// Publishes an event with a new, random id (see [`publish_with_id`](Self::publish_with_id)).
    pub async fn publish<T: Serialize>(
        &self,
        topic: &str,
        payload: &T,
    ) -> Result<Published, EventError> {
        let id = format!("{:032x}", fastrand::u128(..));
        self.publish_with_id(topic, &id, payload).await
    }

    /// Publishes an event with id `id`, delivering it to every subscription of `topic` in
    /// the same transaction. An id already published delivers nothing (`duplicate`): a
    /// publisher that is unsure whether its publish landed simply publishes again.
    pub async fn publish_with_id<T: Serialize>(
        &self,
        topic: &str,
        id: &str,
        payload: &T,
    ) -> Result<Published, EventError> {
        let event = Event::new(topic, id, payload, self.store.now_ms())?;
        let delivered = self.store.publish(event).await?;
        let stored = delivered.is_some();
        metrics::counter!("windlass_events_published_total", "topic" => topic.to_owned(), "duplicate" => if stored { "false" } else { "true" })
            .increment(1);
        Ok(Published {
            event: id.into(),
            duplicate: !stored,
            delivered: delivered.unwrap_or(0),
        })
    }
}
