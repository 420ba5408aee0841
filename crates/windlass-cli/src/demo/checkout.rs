//! `windlass demo checkout`: the checkout saga, run twice on an embedded SQLite file — once
//! through, once with a failure injected at one step — showing the rollback undo what was
//! done, latest first, and leave the shop's books as they were.
//!
//! The shop (stock, card balances, shipments, emails) is in memory, standing in for other
//! services; the runs, their journals and the jobs that drive them are in the SQLite file
//! (a fresh temporary one unless `--db` names one; with `--db`, finished runs are not run
//! again: their ids are taken).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use windlass_flow::{FlowContext, FlowError, Flows, JournalEntry, RunStatus, WaitError, Workflow};
use windlass_queue::{Queue, Worker, WorkerConfig};
use windlass_sqlite::SqliteStore;

/// Where the failure goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailAt {
    /// Stock cannot be reserved.
    Reserve,
    /// The card is declined.
    Charge,
    /// The carrier refuses the shipment (the default).
    Ship,
    /// The email server is down (after every effect that compensation would undo).
    Email,
}

impl FailAt {
    fn step(self) -> &'static str {
        match self {
            FailAt::Reserve => "reserve_stock",
            FailAt::Charge => "charge_card",
            FailAt::Ship => "create_shipment",
            FailAt::Email => "send_email",
        }
    }
}

/// The shop's books: what the saga changes and its compensations restore.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct Books {
    /// Units in stock, by item.
    pub stock: BTreeMap<String, u32>,
    /// Cents charged, by card.
    pub charged: BTreeMap<String, u64>,
    /// Shipments booked, by order.
    pub shipments: BTreeMap<String, String>,
    /// Emails sent.
    pub emails: Vec<String>,
}

/// An order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Order {
    /// Its id.
    pub id: String,
    /// The item.
    pub item: String,
    /// How many.
    pub quantity: u32,
    /// The card.
    pub card: String,
    /// The price, in cents.
    pub cents: u64,
}

/// The shop's side: its books, the failure to inject, and what was said. Cheap to clone,
/// so compensations (which outlive the run's code) can own one.
#[derive(Clone)]
struct Shop {
    books: Arc<Mutex<Books>>,
    fail: Option<(String, &'static str)>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Shop {
    fn act(&self, order: &str, step: &'static str) -> Result<(), String> {
        self.say(format!("  {order}: {step}"));
        match &self.fail {
            Some((o, s)) if o == order && *s == step => {
                self.say(format!("  {order}: {step} FAILED (injected)"));
                Err(format!("{step} refused (injected failure)"))
            }
            _ => Ok(()),
        }
    }
    fn say(&self, line: String) {
        if let Ok(mut log) = self.log.lock() {
            log.push(line);
        }
    }
    fn books(&self) -> std::sync::MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The checkout saga.
struct Checkout(Shop);

impl Workflow for Checkout {
    const KIND: &'static str = "checkout";
    type Input = Order;
    type Output = String;

    async fn run(&self, ctx: FlowContext, order: Order) -> Result<String, FlowError> {
        let (shop, o) = (&self.0, &order);
        // Compensations run after this code has returned, so they own their data.
        let undo = || (shop.clone(), order.clone());
        let reservation: String = ctx
            .step("reserve_stock", || async move {
                shop.act(&o.id, "reserve_stock")?;
                let mut books = shop.books();
                let stock = books.stock.entry(o.item.clone()).or_insert(0);
                *stock = stock
                    .checked_sub(o.quantity)
                    .ok_or_else(|| format!("only {stock} {} in stock", o.item))?;
                Ok::<_, String>(format!("{}x{}", o.quantity, o.item))
            })
            .compensate_with({
                let (shop, o) = undo();
                move |reservation: String| {
                    let (shop, o) = (shop.clone(), o.clone());
                    async move {
                        shop.say(format!(
                            "  {}: undo reserve_stock: release {reservation}",
                            o.id
                        ));
                        *shop.books().stock.entry(o.item.clone()).or_insert(0) += o.quantity;
                        Ok::<_, String>(())
                    }
                }
            })
            .await?;
        let receipt: u64 = ctx
            .step("charge_card", || async move {
                shop.act(&o.id, "charge_card")?;
                *shop.books().charged.entry(o.card.clone()).or_insert(0) += o.cents;
                Ok::<_, String>(o.cents)
            })
            .compensate_with({
                let (shop, o) = undo();
                move |cents: u64| {
                    let (shop, o) = (shop.clone(), o.clone());
                    async move {
                        shop.say(format!(
                            "  {}: undo charge_card: refund {cents} cents",
                            o.id
                        ));
                        if let Some(c) = shop.books().charged.get_mut(&o.card) {
                            *c = c.saturating_sub(cents);
                        }
                        Ok::<_, String>(())
                    }
                }
            })
            .await?;
        let tracking: String = ctx
            .step("create_shipment", || async move {
                shop.act(&o.id, "create_shipment")?;
                let tracking = format!("TRK-{}", o.id);
                shop.books()
                    .shipments
                    .insert(o.id.clone(), tracking.clone());
                Ok::<_, String>(tracking)
            })
            .compensate_with({
                let (shop, o) = undo();
                move |tracking: String| {
                    let (shop, o) = (shop.clone(), o.clone());
                    async move {
                        shop.say(format!(
                            "  {}: undo create_shipment: cancel {tracking}",
                            o.id
                        ));
                        shop.books().shipments.remove(&o.id);
                        Ok::<_, String>(())
                    }
                }
            })
            .await?;
        ctx.step("send_email", || async move {
            shop.act(&o.id, "send_email")?;
            shop.books().emails.push(format!("{}: shipped", o.id));
            Ok::<_, String>(())
        })
        .await?;
        Ok(format!(
            "{reservation} reserved, {receipt} cents charged, {tracking}"
        ))
    }
}

/// What the demo did.
#[derive(Debug, Serialize)]
pub struct CheckoutReport {
    /// The SQLite file holding the runs.
    pub database: String,
    /// The books before.
    pub before: Books,
    /// The books after.
    pub after: Books,
    /// Each run: id, status, result or error, and its journal (key, kind, attempts).
    pub runs: Vec<RunReport>,
    /// The lines printed as the saga ran.
    pub log: Vec<String>,
    /// The failed run's graph, in Mermaid.
    pub failed_graph: Option<String>,
}

/// One run's outcome.
#[derive(Debug, Serialize)]
pub struct RunReport {
    /// The run's id.
    pub id: String,
    /// Its final status.
    pub status: String,
    /// Its output or error.
    pub outcome: String,
    /// Its journal, as `key (kind)`.
    pub journal: Vec<String>,
}

fn journal_lines(journal: &[JournalEntry]) -> Vec<String> {
    journal
        .iter()
        .map(|e| match &e.outcome {
            Ok(v) => format!("{} ({}) -> {v}", e.key, e.kind.as_str()),
            Err(m) => format!("{} ({}) failed: {m}", e.key, e.kind.as_str()),
        })
        .collect()
}

/// Runs the demo: one order through, one failing at `fail_at`.
pub async fn run(
    db: Option<std::path::PathBuf>,
    fail_at: FailAt,
) -> anyhow::Result<CheckoutReport> {
    let path = match db {
        Some(p) => p,
        None => super::temp_db("checkout")?,
    };
    let store = SqliteStore::open(&path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let queue = Queue::new(store);
    let mut initial = Books::default();
    initial.stock.insert("widget".into(), 10);
    let books = Arc::new(Mutex::new(initial.clone()));
    let log = Arc::new(Mutex::new(Vec::new()));
    let orders = [
        Order {
            id: "order-1".into(),
            item: "widget".into(),
            quantity: 2,
            card: "card-a".into(),
            cents: 4200,
        },
        Order {
            id: "order-2".into(),
            item: "widget".into(),
            quantity: 3,
            card: "card-b".into(),
            cents: 6300,
        },
    ];
    let flows = Flows::builder(&queue)
        .register(Checkout(Shop {
            books: Arc::clone(&books),
            fail: Some((orders[1].id.clone(), fail_at.step())),
            log: Arc::clone(&log),
        }))
        .build()?;
    let worker = Worker::builder(&queue)
        .register(flows.driver())
        .config(WorkerConfig {
            queues: vec![flows.queue_name().into()],
            concurrency: 1, // one order at a time, so the story reads in order
            prefetch: 0,
            ..WorkerConfig::default()
        })
        .build()?
        .start()
        .await?;
    let mut runs = Vec::new();
    let mut failed_graph = None;
    for order in &orders {
        let handle = flows.start::<Checkout>(order.id.clone(), order).await?;
        let outcome = match handle
            .result(Duration::from_secs(60), Duration::from_millis(5))
            .await
        {
            Ok(s) => s,
            Err(WaitError::Failed(e)) => format!("rolled back: {e}"),
            Err(e) => return Err(e).context("waiting for the checkout"),
        };
        let record = handle.record().await?;
        let journal = handle.journal().await?;
        if record.status == RunStatus::Failed {
            failed_graph = Some(windlass_flow::graph::mermaid(&journal));
        }
        runs.push(RunReport {
            id: order.id.clone(),
            status: record.status.as_str().into(),
            outcome,
            journal: journal_lines(&journal),
        });
    }
    worker.shutdown(Duration::from_secs(5)).await;
    let after = books.lock().map(|b| b.clone()).unwrap_or_default();
    let log = log.lock().map(|l| l.clone()).unwrap_or_default();
    Ok(CheckoutReport {
        database: path.display().to_string(),
        before: initial,
        after,
        runs,
        log,
        failed_graph,
    })
}

/// The report as text.
pub fn table(r: &CheckoutReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "The checkout saga (runs and journals in {})\n",
        r.database
    );
    let _ = writeln!(s, "What ran:");
    for line in &r.log {
        let _ = writeln!(s, "{line}");
    }
    for run in &r.runs {
        let _ = writeln!(s, "\n{}: {} — {}", run.id, run.status, run.outcome);
        let _ = writeln!(s, "  journal:");
        for line in &run.journal {
            let _ = writeln!(s, "    {line}");
        }
    }
    let _ = writeln!(
        s,
        "\nBooks before: stock {:?}, charged {:?}",
        r.before.stock, r.before.charged
    );
    let _ = writeln!(
        s,
        "Books after:  stock {:?}, charged {:?}, shipments {:?}, emails {:?}",
        r.after.stock, r.after.charged, r.after.shipments, r.after.emails
    );
    let _ = writeln!(
        s,
        "\nThe failed order's effects were undone latest first; the completed order's stand."
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failure_at_the_shipment_refunds_and_releases_in_that_order() {
        let report = run(None, FailAt::Ship).await.expect("demo");
        let undo: Vec<_> = report
            .log
            .iter()
            .filter(|l| l.contains("undo"))
            .cloned()
            .collect();
        assert_eq!(
            undo,
            [
                "  order-2: undo charge_card: refund 6300 cents",
                "  order-2: undo reserve_stock: release 3xwidget"
            ]
        );
        assert_eq!(report.runs[0].status, "completed");
        assert_eq!(report.runs[1].status, "failed");
        // Only order-1's effects remain.
        assert_eq!(report.after.stock["widget"], 8);
        assert_eq!(report.after.charged.get("card-b"), Some(&0));
        assert_eq!(report.after.charged["card-a"], 4200);
        assert_eq!(report.after.shipments.len(), 1);
        assert!(report.failed_graph.is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failure_at_the_email_undoes_all_three_effects() {
        let report = run(None, FailAt::Email).await.expect("demo");
        let undone = report
            .log
            .iter()
            .filter(|l| l.contains("order-2: undo"))
            .count();
        assert_eq!(undone, 3, "{:?}", report.log);
        assert!(!report.after.shipments.contains_key("order-2"));
        assert_eq!(report.after.stock["widget"], 8);
    }
}
