//! `windlass queues`, `windlass jobs …`, `windlass dlq …`, `windlass limits …`: look at and act
//! on stored jobs.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::bail;
use windlass_queue::{JobFilter, JobId, JobRecord, JobState, Queue, QueueStats, Store};

/// One admin action.
#[derive(Debug, Clone)]
pub enum Action {
    /// Depth per state, throughput and lag per queue.
    Queues,
    /// Jobs matching a filter.
    List(JobFilter),
    /// One job with its attempts.
    Show(JobId),
    /// Cancel jobs.
    Cancel(Vec<JobId>),
    /// Replay finished jobs with fresh attempts.
    Retry(Vec<JobId>),
    /// The dead-letter queue.
    DlqList {
        /// Only this queue.
        queue: Option<String>,
        /// At most this many.
        limit: usize,
    },
    /// Replay dead letters (all of a queue's, or the ids given).
    DlqReplay {
        /// These ids; empty: every dead letter (of `queue`, if given).
        ids: Vec<JobId>,
        /// Only this queue.
        queue: Option<String>,
    },
    /// Delete dead letters older than this.
    DlqPurge {
        /// Age.
        older_than: Duration,
    },
    /// Show a queue's limits, after changing them if a change is given.
    Limits {
        /// The queue.
        queue: String,
        /// What to change first.
        change: Option<crate::queue::limits::LimitsChange>,
    },
}

/// Runs `action` and returns what to print.
pub async fn run<S: Store>(queue: &Queue<S>, action: Action, json: bool) -> anyhow::Result<String> {
    let now = queue.store().now_ms();
    Ok(match action {
        Action::Queues => {
            let stats = queue.stats().await?;
            if json {
                serde_json::to_string_pretty(
                    &stats.iter().map(|s| stats_json(s, now)).collect::<Vec<_>>(),
                )?
            } else {
                queues_table(&stats, now)
            }
        }
        Action::List(filter) => jobs_out(&queue.list(filter).await?, json)?,
        Action::Show(id) => match queue.get(id).await? {
            Some(job) if json => serde_json::to_string_pretty(&job_json(&job))?,
            Some(job) => show(&job),
            None => bail!("no job {id}"),
        },
        Action::Cancel(ids) => {
            let mut out = String::new();
            for id in ids {
                let state = queue.cancel(id).await?;
                let said = match state {
                    None => "no such job".to_string(),
                    Some(JobState::Running) => "running: its worker was told to stop".to_string(),
                    Some(JobState::Cancelled) => "cancelled".to_string(),
                    Some(s) => format!("already {s}"),
                };
                let _ = writeln!(out, "job {id}: {said}");
            }
            out
        }
        Action::Retry(ids) => {
            let done = queue.replay(ids.clone()).await?;
            replayed(&ids, &done)
        }
        Action::DlqList { queue: q, limit } => {
            jobs_out(&queue.dead_letters(q, limit).await?, json)?
        }
        Action::DlqReplay { ids, queue: q } => {
            let ids = if ids.is_empty() {
                let mut all = Vec::new();
                let mut after = None;
                loop {
                    let page = queue
                        .list(JobFilter {
                            queue: q.clone(),
                            states: vec![JobState::Discarded],
                            after,
                            limit: 1000,
                            ..JobFilter::default()
                        })
                        .await?;
                    let Some(last) = page.last() else { break };
                    after = Some(last.id);
                    all.extend(page.iter().map(|j| j.id));
                }
                all
            } else {
                ids
            };
            let done = queue.replay(ids.clone()).await?;
            replayed(&ids, &done)
        }
        Action::DlqPurge { older_than } => {
            let n = queue.purge_dead_letters(older_than).await?;
            format!("purged {n} dead letters older than {older_than:?}\n")
        }
        Action::Limits {
            queue: name,
            change,
        } => crate::queue::limits::run(queue, name, change, json).await?,
    })
}

fn replayed(asked: &[JobId], done: &[JobId]) -> String {
    let mut out = format!("replayed {} of {} jobs\n", done.len(), asked.len());
    for id in asked.iter().filter(|id| !done.contains(id)) {
        let _ = writeln!(out, "job {id}: not finished (or not found), left as it is");
    }
    out
}

fn stats_json(s: &QueueStats, now: i64) -> serde_json::Value {
    let mut counts = serde_json::Map::new();
    for st in JobState::ALL {
        counts.insert(st.as_str().into(), s.count(st).into());
    }
    serde_json::json!({
        "queue": s.queue,
        "counts": counts,
        "lag_ms": s.oldest_due_ms.map(|t| (now - t).max(0)),
        "completed_last_minute": s.completed_last_minute,
    })
}

fn queues_table(stats: &[QueueStats], now: i64) -> String {
    let mut out = format!(
        "{:<20} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9} {:>9} {:>10} {:>8}\n",
        "queue",
        "scheduled",
        "available",
        "running",
        "retryable",
        "completed",
        "cancelled",
        "discarded",
        "lag",
        "done/min"
    );
    for s in stats {
        let lag = s.oldest_due_ms.map_or("-".to_string(), |t| {
            format!("{:.1}s", (now - t).max(0) as f64 / 1000.0)
        });
        let _ = writeln!(
            out,
            "{:<20} {:>9} {:>9} {:>9} {:>9} {:>10} {:>9} {:>9} {:>10} {:>8}",
            s.queue,
            s.count(JobState::Scheduled),
            s.count(JobState::Available),
            s.count(JobState::Running),
            s.count(JobState::Retryable),
            s.count(JobState::Completed),
            s.count(JobState::Cancelled),
            s.count(JobState::Discarded),
            lag,
            s.completed_last_minute
        );
    }
    if stats.is_empty() {
        out.push_str("(no jobs)\n");
    }
    out
}

fn job_json(j: &JobRecord) -> serde_json::Value {
    serde_json::json!({
        "id": j.id, "kind": j.kind, "queue": j.queue, "state": j.state, "priority": j.priority,
        "attempt": j.attempt, "max_attempts": j.retry.max_attempts, "payload": j.payload,
        "tags": j.tags, "unique_key": j.unique_key, "created_at_ms": j.created_at_ms,
        "run_at_ms": j.run_at_ms, "finished_at_ms": j.finished_at_ms, "locked_by": j.locked_by,
        "lease_expiries": j.lease_expiries, "cancel_requested": j.cancel_requested,
        "progress": j.progress, "attempts": j.attempts,
    })
}

fn jobs_out(jobs: &[JobRecord], json: bool) -> anyhow::Result<String> {
    if json {
        return Ok(serde_json::to_string_pretty(
            &jobs.iter().map(job_json).collect::<Vec<_>>(),
        )?);
    }
    let mut out = format!(
        "{:>10} {:<24} {:<16} {:<10} {:>8} {}\n",
        "id", "kind", "queue", "state", "attempt", "last error"
    );
    for j in jobs {
        let last = j
            .attempts
            .last()
            .and_then(|a| a.error.clone())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{:>10} {:<24} {:<16} {:<10} {:>4}/{:<3} {}",
            j.id, j.kind, j.queue, j.state, j.attempt, j.retry.max_attempts, last
        );
    }
    Ok(out)
}

fn show(j: &JobRecord) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "job {} ({}) in queue {}: {}",
        j.id, j.kind, j.queue, j.state
    );
    let _ = writeln!(
        out,
        "attempt {}/{}, priority {}, lease expiries {}",
        j.attempt, j.retry.max_attempts, j.priority, j.lease_expiries
    );
    let _ = writeln!(out, "payload: {}", j.payload);
    if let Some(p) = &j.progress {
        let _ = writeln!(out, "progress: {p}");
    }
    for a in &j.attempts {
        let _ = writeln!(
            out,
            "  attempt {} on {} at {}: {}{}",
            a.attempt,
            a.worker,
            a.at_ms,
            a.outcome,
            a.error
                .as_ref()
                .map(|e| format!(" — {e}"))
                .unwrap_or_default()
        );
    }
    out
}
