//! `windlass flows …`: look at workflow runs — list them, show one run's steps (status,
//! attempts, durations, errors), export its recorded graph (Mermaid or DOT) — and act on
//! them: cancel a run (its compensations run), resume a failed one from its failed step.

pub mod bench;

use std::fmt::Write as _;

use anyhow::{Context as _, bail};
use serde_json::json;
use windlass_flow::{
    CancelOutcome, EntryKind, FlowStore, Flows, JournalEntry, RunFilter, RunRecord, RunStatus,
};

/// One action on runs.
#[derive(Debug, Clone)]
pub enum FlowAction {
    /// Runs matching a filter.
    List(RunFilter),
    /// One run with its journal.
    Show(String),
    /// One run's graph.
    Graph {
        /// The run.
        id: String,
        /// `mermaid` or `dot`.
        format: GraphFormat,
    },
    /// Cancel a run: its running steps stop, its completed steps are compensated.
    Cancel {
        /// The run.
        id: String,
        /// Why (stored in the run's error as `cancelled: <reason>`).
        reason: String,
    },
    /// Resume a failed, halted or stranded run from its failed step, on the workers of
    /// `queue`.
    Resume {
        /// The run.
        id: String,
        /// The flows queue its new job goes to.
        queue: String,
    },
}

/// How to draw a graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GraphFormat {
    /// Mermaid `flowchart`.
    Mermaid,
    /// Graphviz DOT.
    Dot,
}

/// Parses a comma-separated list of run statuses, naming a wrong one.
pub fn parse_statuses(s: &str) -> anyhow::Result<Vec<RunStatus>> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| {
            RunStatus::parse(p).with_context(|| {
                let all: Vec<_> = RunStatus::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown run status `{p}` (one of {})", all.join(", "))
            })
        })
        .collect()
}

fn run_json(r: &RunRecord) -> serde_json::Value {
    json!({
        "id": r.id, "kind": r.kind, "status": r.status.as_str(), "input": r.input,
        "output": r.output, "error": r.error, "job": r.job.0,
        "created_at_ms": r.created_at_ms, "finished_at_ms": r.finished_at_ms,
    })
}

fn entry_json(e: &JournalEntry) -> serde_json::Value {
    json!({
        "seq": e.seq, "key": e.key, "kind": e.kind.as_str(),
        "output": e.outcome.as_ref().ok(), "error": e.outcome.as_ref().err(),
        "attempts": e.attempts, "started_at_ms": e.started_at_ms,
        "duration_ms": e.finished_at_ms - e.started_at_ms,
    })
}

/// Runs `action` against `store` and returns what to print.
pub async fn run<S: FlowStore + Clone>(
    store: &S,
    action: FlowAction,
    json: bool,
) -> anyhow::Result<String> {
    Ok(match action {
        FlowAction::Cancel { id, reason } => {
            let queue = windlass_queue::Queue::new(store.clone());
            let flows = Flows::builder(&queue).build()?;
            let (outcome, said) = match flows.cancel(id.clone(), reason).await? {
                CancelOutcome::Cancelled => (
                    "cancelled",
                    format!(
                        "run `{id}` cancelled: its running steps stop and its completed steps \
                         are compensated by the flows workers\n"
                    ),
                ),
                CancelOutcome::AlreadyRollingBack => (
                    "already_rolling_back",
                    format!("run `{id}` was already rolling back\n"),
                ),
                CancelOutcome::Finished(status) => (
                    status.as_str(),
                    format!(
                        "run `{id}` is already {}: nothing to cancel\n",
                        status.as_str()
                    ),
                ),
            };
            if json {
                serde_json::to_string_pretty(&json!({ "id": id, "outcome": outcome }))?
            } else {
                said
            }
        }
        FlowAction::Resume { id, queue: name } => {
            let queue = windlass_queue::Queue::new(store.clone());
            let flows = Flows::builder(&queue).queue(name).build()?;
            let retired = flows.resume(id.clone()).await?;
            if json {
                serde_json::to_string_pretty(&json!({ "id": id, "retired": retired }))?
            } else {
                format!(
                    "run `{id}` resumed from its failed step ({retired} journal entries retired); \
                     a worker of queue `{}` drives it\n",
                    flows.queue_name()
                )
            }
        }
        FlowAction::List(filter) => {
            let runs = store.runs(filter).await?;
            if json {
                serde_json::to_string_pretty(&runs.iter().map(run_json).collect::<Vec<_>>())?
            } else {
                let mut s = format!("{:<32} {:<20} {:<13} {}\n", "ID", "KIND", "STATUS", "ERROR");
                for r in &runs {
                    let _ = writeln!(
                        s,
                        "{:<32} {:<20} {:<13} {}",
                        r.id,
                        r.kind,
                        r.status.as_str(),
                        r.error.as_deref().unwrap_or("")
                    );
                }
                s
            }
        }
        FlowAction::Show(id) => {
            let Some(run) = store.run(id.clone()).await? else {
                bail!("no run `{id}`");
            };
            let journal = store.journal(id).await?;
            if json {
                let mut v = run_json(&run);
                v["journal"] = journal.iter().map(entry_json).collect();
                serde_json::to_string_pretty(&v)?
            } else {
                show_text(&run, &journal)
            }
        }
        FlowAction::Graph { id, format } => {
            if store.run(id.clone()).await?.is_none() {
                bail!("no run `{id}`");
            }
            let journal = store.journal(id).await?;
            match format {
                GraphFormat::Mermaid => windlass_flow::graph::mermaid(&journal),
                GraphFormat::Dot => windlass_flow::graph::dot(&journal),
            }
        }
    })
}

fn show_text(run: &RunRecord, journal: &[JournalEntry]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "run {} ({}): {}", run.id, run.kind, run.status.as_str());
    let _ = writeln!(s, "  input:  {}", run.input);
    if let Some(out) = &run.output {
        let _ = writeln!(s, "  output: {out}");
    }
    if let Some(err) = &run.error {
        let _ = writeln!(s, "  error:  {err}");
    }
    let _ = writeln!(s, "  job:    {}", run.job.0);
    let _ = writeln!(
        s,
        "\n  {:<28} {:<13} {:>8} {:>9}  RESULT",
        "STEP", "KIND", "ATTEMPTS", "TOOK(ms)"
    );
    for e in journal {
        let result = match (&e.kind, &e.outcome) {
            (EntryKind::Sleep, Ok(v)) => format!("wakes at {v} ms"),
            (EntryKind::Signal, Err(m)) => format!("timed out: {m}"),
            (_, Ok(v)) => format!("ok {v}"),
            (_, Err(m)) => format!("FAILED {m}"),
        };
        let _ = writeln!(
            s,
            "  {:<28} {:<13} {:>8} {:>9}  {}",
            e.key,
            e.kind.as_str(),
            e.attempts,
            e.finished_at_ms - e.started_at_ms,
            result
        );
    }
    // The graph of what ran, as `flows graph` draws it (Mermaid: paste it where Markdown
    // renders it).
    let _ = write!(s, "\n  graph (mermaid):\n");
    for line in windlass_flow::graph::mermaid(journal).lines() {
        let _ = writeln!(s, "    {line}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use windlass_flow::NewRun;
    use windlass_queue::{JobId, Store as _};
    use windlass_sqlite::SqliteStore;

    #[test]
    fn statuses_parse_or_name_the_wrong_one() {
        assert_eq!(
            parse_statuses("running,failed").unwrap(),
            [RunStatus::Running, RunStatus::Failed]
        );
        let e = parse_statuses("running,done").unwrap_err().to_string();
        assert!(e.contains("`done`") && e.contains("halted"), "{e}");
    }

    #[tokio::test]
    async fn show_lists_the_steps_and_graph_draws_them() {
        let store = SqliteStore::in_memory().await.unwrap();
        store
            .insert_run(NewRun {
                id: "r1".into(),
                kind: "checkout".into(),
                input: Value::Null,
                job: JobId(1),
                created_at_ms: 0,
            })
            .await
            .unwrap();
        for (key, start, end, outcome) in [
            ("reserve", 0, 5, Ok(Value::from("r"))),
            ("charge", 5, 9, Err("declined".to_string())),
        ] {
            store
                .record(
                    "r1".into(),
                    JournalEntry {
                        seq: 0,
                        key: key.into(),
                        kind: EntryKind::Step,
                        outcome,
                        attempts: 2,
                        started_at_ms: start,
                        finished_at_ms: end,
                        after: None,
                    },
                )
                .await
                .unwrap();
        }
        let shown = run(&store, FlowAction::Show("r1".into()), false)
            .await
            .unwrap();
        assert!(shown.contains("run r1 (checkout): running"), "{shown}");
        assert!(
            shown.contains("charge") && shown.contains("FAILED declined"),
            "{shown}"
        );
        assert!(
            shown.contains("graph (mermaid):") && shown.contains("    n0 --> n1"),
            "show draws the run's graph too: {shown}"
        );
        let json: Value = serde_json::from_str(
            &run(&store, FlowAction::Show("r1".into()), true)
                .await
                .unwrap(),
        )
        .unwrap();
        assert_eq!(json["journal"][1]["error"], "declined");
        assert_eq!(json["journal"][0]["duration_ms"], 5);
        let graph = run(
            &store,
            FlowAction::Graph {
                id: "r1".into(),
                format: GraphFormat::Mermaid,
            },
            false,
        )
        .await
        .unwrap();
        assert!(graph.contains("n0 --> n1"), "{graph}");
        let e = run(&store, FlowAction::Show("nope".into()), false)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("no run `nope`"), "{e}");
        let listed = run(&store, FlowAction::List(RunFilter::default()), false)
            .await
            .unwrap();
        assert!(
            listed.contains("r1") && listed.contains("checkout"),
            "{listed}"
        );
    }

    #[tokio::test]
    async fn cancel_gives_a_stranded_run_a_driver_and_resume_reopens_a_failed_one() {
        let store = SqliteStore::in_memory().await.unwrap();
        let new_run = |id: &str| NewRun {
            id: id.into(),
            kind: "checkout".into(),
            input: Value::Null,
            job: JobId(999),
            created_at_ms: 0,
        };
        store.insert_run(new_run("r1")).await.unwrap();
        let cancel = |reason: &str| FlowAction::Cancel {
            id: "r1".into(),
            reason: reason.into(),
        };
        let said = run(&store, cancel("fraud"), false).await.unwrap();
        assert!(said.contains("run `r1` cancelled"), "{said}");
        let run_now = store.run("r1".into()).await.unwrap().unwrap();
        assert_eq!(run_now.status, RunStatus::Compensating);
        assert_eq!(run_now.error.as_deref(), Some("cancelled: fraud"));
        // Its job (999) does not exist: the cancel gave the run a new one, which rolls it
        // back on the flows queue's workers.
        assert_ne!(run_now.job, JobId(999));
        let job = store.get(run_now.job).await.unwrap().unwrap();
        assert_eq!(job.queue, "flows");
        assert_eq!(job.state, windlass_queue::JobState::Available);
        let again: Value =
            serde_json::from_str(&run(&store, cancel("twice"), true).await.unwrap()).unwrap();
        assert_eq!(again["outcome"], "already_rolling_back");
        let e = run(
            &store,
            FlowAction::Resume {
                id: "r1".into(),
                queue: "flows".into(),
            },
            false,
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("is compensating"), "{e}");

        // A failed run (its old job gone) is reopened on the queue named.
        store.insert_run(new_run("r2")).await.unwrap();
        store
            .set_run_status("r2".into(), RunStatus::Failed, None, Some("boom".into()))
            .await
            .unwrap();
        let resumed: Value = serde_json::from_str(
            &run(
                &store,
                FlowAction::Resume {
                    id: "r2".into(),
                    queue: "flows-2".into(),
                },
                true,
            )
            .await
            .unwrap(),
        )
        .unwrap();
        assert_eq!(resumed["retired"], 0);
        let run_now = store.run("r2".into()).await.unwrap().unwrap();
        assert_eq!(run_now.status, RunStatus::Running);
        assert_eq!(run_now.error, None);
        assert_eq!(
            store.get(run_now.job).await.unwrap().unwrap().queue,
            "flows-2"
        );
    }
}
