//! The workflow layer's tables in the same file: runs and their journals
//! ([`FlowStore`]). Each operation goes through the writer thread like the queue's, so a
//! journal write shares a group commit with other runs' writes and with the jobs' claims and
//! completions, and is acknowledged only once committed.

use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};
use serde_json::Value;
use windlass_flow::events::{Delivery, Event, Subscription, Target};
use windlass_flow::store::{EndRun, Resumed};
use windlass_flow::{
    EntryKind, FlowStore, JournalEntry, NewRun, RunFilter, RunRecord, RunStart, RunStatus, Started,
};
use windlass_queue::{Fenced, Finish, NewJob, duration_ms};
use windlass_queue::{JobId, StoreError};

use crate::{SqliteStore, sql_error};

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

fn to_text(v: &Value) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| corrupt("a value to store", e))
}

fn from_text(what: &str, s: &str) -> Result<Value, StoreError> {
    serde_json::from_str(s).map_err(|e| corrupt(what, e))
}

const RUN_COLUMNS: &str = "id, kind, input, status, output, error, job_id, created_at, finished_at";

fn run_from(row: &Row<'_>) -> rusqlite::Result<Result<RunRecord, StoreError>> {
    let id: String = row.get(0)?;
    let input: String = row.get(2)?;
    let status: String = row.get(3)?;
    let output: Option<String> = row.get(4)?;
    Ok((|| {
        Ok(RunRecord {
            kind: row.get(1).map_err(sql_error)?,
            input: from_text("a run's input", &input)?,
            status: RunStatus::parse(&status).ok_or_else(|| corrupt("a run's status", &status))?,
            output: output
                .map(|o| from_text("a run's output", &o))
                .transpose()?,
            error: row.get(5).map_err(sql_error)?,
            job: JobId(row.get(6).map_err(sql_error)?),
            created_at_ms: row.get(7).map_err(sql_error)?,
            finished_at_ms: row.get(8).map_err(sql_error)?,
            id,
        })
    })())
}

fn get_run(conn: &Connection, id: &str) -> Result<Option<RunRecord>, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT {RUN_COLUMNS} FROM windlass_flow_runs WHERE id = ?1"
    ))
    .map_err(sql_error)?
    .query_row([id], run_from)
    .optional()
    .map_err(sql_error)?
    .transpose()
}

fn entry_from(row: &Row<'_>) -> rusqlite::Result<Result<JournalEntry, StoreError>> {
    let kind: String = row.get(2)?;
    let output: Option<String> = row.get(3)?;
    let error: Option<String> = row.get(4)?;
    let seq: i64 = row.get(0)?;
    let key: String = row.get(1)?;
    let attempts: u32 = row.get(5)?;
    let started_at_ms: i64 = row.get(6)?;
    let finished_at_ms: i64 = row.get(7)?;
    let after: Option<i64> = row.get(8)?;
    Ok((|| {
        let outcome = match (output, error) {
            (Some(o), None) => Ok(from_text("a journal entry's output", &o)?),
            (None, Some(e)) => Err(e),
            _ => {
                return Err(corrupt(
                    "a journal entry",
                    "neither or both of output and error",
                ));
            }
        };
        Ok(JournalEntry {
            seq,
            key,
            kind: EntryKind::parse(&kind)
                .ok_or_else(|| corrupt("a journal entry's kind", &kind))?,
            outcome,
            attempts,
            started_at_ms,
            finished_at_ms,
            after,
        })
    })())
}

/// Moves a run to `status` unless it is already terminal.
/// Moves a run to `status` if its status may become that one; returns whether it did.
fn update_status(
    c: &Connection,
    id: &str,
    status: RunStatus,
    output: Option<String>,
    error: Option<String>,
    finished: Option<i64>,
) -> Result<bool, StoreError> {
    let changed = c
        .prepare_cached(&format!(
            "UPDATE windlass_flow_runs
             SET status = ?2, output = COALESCE(?3, output), error = COALESCE(?4, error),
                 finished_at = COALESCE(?5, finished_at)
             WHERE id = ?1 AND {}",
            windlass_flow::store::may_become_sql("?2")
        ))
        .map_err(sql_error)?
        .execute(params![id, status.as_str(), output, error, finished])
        .map_err(sql_error)?;
    Ok(changed > 0)
}

/// Whether the job `id` is over or gone (a run it drove is stranded).
fn job_over(c: &Connection, id: JobId) -> Result<bool, StoreError> {
    let state: Option<String> = c
        .prepare_cached("SELECT state FROM windlass_jobs WHERE id = ?1")
        .map_err(sql_error)?
        .query_row([id.0], |r| r.get(0))
        .optional()
        .map_err(sql_error)?;
    Ok(state
        .and_then(|s| windlass_queue::JobState::parse(&s))
        .is_none_or(|s| s.is_terminal()))
}

/// Starts a run inside the writer's transaction (see [`FlowStore::start_run`]).
fn start_run_in(
    c: &Connection,
    start: &RunStart,
    input: &str,
    now: i64,
) -> Result<Started, StoreError> {
    let inserted = c
        .prepare_cached(
            "INSERT INTO windlass_flow_runs (id, kind, input, status, job_id, created_at)
             VALUES (?1, ?2, ?3, 'running', 0, ?4) ON CONFLICT (id) DO NOTHING",
        )
        .map_err(sql_error)?
        .execute(params![start.id, start.kind, input, start.created_at_ms])
        .map_err(sql_error)?;
    if inserted == 0 {
        let run = get_run(c, &start.id)?.ok_or_else(|| {
            StoreError::Database(format!("run `{}` vanished on insert", start.id))
        })?;
        return Ok(Started {
            run,
            created: false,
            claimed: None,
        });
    }
    let claim = start.claim.as_ref().map(|claim| {
        (
            claim.worker.as_str(),
            now.saturating_add(duration_ms(claim.lease_for)),
        )
    });
    let (job, claimed) = crate::ops::insert_job(c, &start.job, now, claim)?;
    c.prepare_cached("UPDATE windlass_flow_runs SET job_id = ?2 WHERE id = ?1")
        .map_err(sql_error)?
        .execute(params![start.id, job.0])
        .map_err(sql_error)?;
    Ok(start.clone().created(job, claimed))
}

/// The subscriptions of `topic` (all: `None`), by topic and name.
fn subscriptions_in(c: &Connection, topic: Option<&str>) -> Result<Vec<Subscription>, StoreError> {
    let mut stmt = c
        .prepare_cached(
            "SELECT topic, name, target, kind, queue, attempt_timeout_ms
             FROM windlass_subscriptions WHERE ?1 IS NULL OR topic = ?1
             ORDER BY topic, name",
        )
        .map_err(sql_error)?;
    let rows = stmt
        .query_map(params![topic], subscription_from)
        .map_err(sql_error)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row.map_err(sql_error)??);
    }
    Ok(out)
}

fn subscription_from(row: &Row<'_>) -> rusqlite::Result<Result<Subscription, StoreError>> {
    let topic: String = row.get(0)?;
    let name: String = row.get(1)?;
    let target: String = row.get(2)?;
    let kind: String = row.get(3)?;
    let queue: String = row.get(4)?;
    let timeout: i64 = row.get(5)?;
    Ok(Target::from_columns(&target, kind, queue, timeout)
        .map(|target| Subscription {
            topic,
            name,
            target,
        })
        .ok_or_else(|| corrupt("a subscription's target", &target)))
}

const ENTRY_COLUMNS: &str =
    "seq, key, kind, output, error, attempts, started_at, finished_at, after_seq";

impl FlowStore for SqliteStore {
    async fn start_run(&self, start: RunStart) -> Result<Started, StoreError> {
        let input = to_text(&start.input)?;
        let now = self.clock.now_ms();
        let queued = start.claim.is_none();
        self.writer
            .call(
                move |c| start_run_in(c, &start, &input, now),
                if queued { self.wake() } else { None },
            )
            .await
    }

    async fn insert_run(&self, run: NewRun) -> Result<RunRecord, StoreError> {
        let input = to_text(&run.input)?;
        self.writer
            .call(
                move |c| {
                    c.prepare_cached(
                        "INSERT INTO windlass_flow_runs (id, kind, input, status, job_id, created_at)
                         VALUES (?1, ?2, ?3, 'running', ?4, ?5) ON CONFLICT (id) DO NOTHING",
                    )
                    .map_err(sql_error)?
                    .execute(params![run.id, run.kind, input, run.job.0, run.created_at_ms])
                    .map_err(sql_error)?;
                    get_run(c, &run.id)?.ok_or_else(|| {
                        StoreError::Database(format!("run `{}` vanished on insert", run.id))
                    })
                },
                None,
            )
            .await
    }

    async fn end_run(
        &self,
        id: String,
        status: RunStatus,
        output: Option<Value>,
        error: Option<String>,
        finish: Finish,
    ) -> Result<EndRun, StoreError> {
        windlass_flow::store::check_end(&finish)?;
        let output = output.as_ref().map(to_text).transpose()?;
        let now = self.clock.now_ms();
        let finished = status.is_terminal().then_some(now);
        self.writer
            .call(
                move |c| {
                    let run = get_run(c, &id)?
                        .ok_or_else(|| StoreError::Invalid(format!("end_run: no run `{id}`")))?;
                    if !run.status.may_become(status) {
                        return Ok(EndRun::RunMoved(run.status));
                    }
                    let fenced = crate::ops::finish(c, std::slice::from_ref(&finish), now)?
                        .first()
                        .copied()
                        .unwrap_or(Fenced::Rejected);
                    if fenced == Fenced::Rejected {
                        return Ok(EndRun::LeaseLost);
                    }
                    update_status(c, &id, status, output, error, finished)?;
                    Ok(EndRun::Stored)
                },
                None,
            )
            .await
    }

    async fn subscribe(&self, sub: Subscription) -> Result<(), StoreError> {
        let (target, kind, queue, timeout) = sub.target.columns();
        self.writer
            .call(
                move |c| {
                    c.prepare_cached(
                        "INSERT INTO windlass_subscriptions
                            (topic, name, target, kind, queue, attempt_timeout_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                         ON CONFLICT (topic, name) DO UPDATE SET target = excluded.target,
                            kind = excluded.kind, queue = excluded.queue,
                            attempt_timeout_ms = excluded.attempt_timeout_ms",
                    )
                    .map_err(sql_error)?
                    .execute(params![sub.topic, sub.name, target, kind, queue, timeout])
                    .map_err(sql_error)?;
                    Ok(())
                },
                None,
            )
            .await
    }

    async fn unsubscribe(&self, topic: String, name: String) -> Result<bool, StoreError> {
        self.writer
            .call(
                move |c| {
                    Ok(c.prepare_cached(
                        "DELETE FROM windlass_subscriptions WHERE topic = ?1 AND name = ?2",
                    )
                    .map_err(sql_error)?
                    .execute(params![topic, name])
                    .map_err(sql_error)?
                        > 0)
                },
                None,
            )
            .await
    }

    async fn subscriptions(&self, topic: Option<String>) -> Result<Vec<Subscription>, StoreError> {
        self.writer
            .call(move |c| subscriptions_in(c, topic.as_deref()), None)
            .await
    }

    async fn publish(&self, event: Event) -> Result<Option<usize>, StoreError> {
        let payload = to_text(&event.payload)?;
        let now = self.clock.now_ms();
        self.writer
            .call(
                move |c| {
                    let inserted = c
                        .prepare_cached(
                            "INSERT INTO windlass_events (id, topic, payload, published_at, delivered)
                             VALUES (?1, ?2, ?3, ?4, 0) ON CONFLICT (id) DO NOTHING",
                        )
                        .map_err(sql_error)?
                        .execute(params![event.id, event.topic, payload, event.published_at_ms])
                        .map_err(sql_error)?;
                    if inserted == 0 {
                        return Ok(None);
                    }
                    // The subscriptions as of this transaction: a subscribe or unsubscribe
                    // commits before or after it, never half-way.
                    let subscriptions = subscriptions_in(c, Some(&event.topic))?;
                    let deliveries = windlass_flow::events::deliveries(&event, &subscriptions)
                        .map_err(|e| StoreError::Invalid(e.to_string()))?;
                    let mut delivered = 0i64;
                    for delivery in &deliveries {
                        match delivery {
                            Delivery::Job(job) => {
                                crate::ops::insert_job(c, job, now, None)?;
                                delivered += 1;
                            }
                            Delivery::Run(start) => {
                                if start_run_in(c, start, &to_text(&start.input)?, now)?.created {
                                    delivered += 1;
                                } else {
                                    tracing::warn!(run = %start.id, event = %event.id, "an event's run id was taken: not delivered again");
                                }
                            }
                        }
                    }
                    c.prepare_cached("UPDATE windlass_events SET delivered = ?2 WHERE id = ?1")
                        .map_err(sql_error)?
                        .execute(params![event.id, delivered])
                        .map_err(sql_error)?;
                    Ok(Some(usize::try_from(delivered).unwrap_or(0)))
                },
                self.wake(),
            )
            .await
    }

    async fn cancel_run(
        &self,
        id: String,
        reason: String,
    ) -> Result<Option<(RunRecord, bool)>, StoreError> {
        let now = self.clock.now_ms();
        self.writer
            .call(
                move |c| {
                    let moved = c
                        .prepare_cached(
                            "UPDATE windlass_flow_runs SET status = 'compensating', error = ?2
                             WHERE id = ?1 AND status = 'running'",
                        )
                        .map_err(sql_error)?
                        .execute(params![id, reason])
                        .map_err(sql_error)?;
                    let run = get_run(c, &id)?;
                    if moved > 0
                        && let Some(run) = &run
                    {
                        // Woken in the same transaction: a sleeping run rolls back now.
                        crate::ops::wake(c, run.job, now)?;
                    }
                    Ok(run.map(|run| (run, moved > 0)))
                },
                self.wake(),
            )
            .await
    }

    async fn resume_run(
        &self,
        id: String,
        renames: Vec<(String, String)>,
        job: NewJob,
    ) -> Result<Option<Resumed>, StoreError> {
        let now = self.clock.now_ms();
        self.writer
            .call(
                move |c| {
                    let Some(run) = get_run(c, &id)? else {
                        return Ok(None);
                    };
                    let resumable = match run.status {
                        RunStatus::Failed | RunStatus::Halted => true,
                        RunStatus::Completed => false,
                        RunStatus::Running | RunStatus::Compensating => job_over(c, run.job)?,
                    };
                    if !resumable {
                        return Ok(Some(Resumed::NotResumable(run.status)));
                    }
                    let mut retired = 0;
                    for (from, to) in &renames {
                        retired += c
                            .prepare_cached(
                                "UPDATE windlass_flow_journal SET key = ?3
                                 WHERE run_id = ?1 AND key = ?2",
                            )
                            .map_err(sql_error)?
                            .execute(params![id, from, to])
                            .map_err(sql_error)?;
                    }
                    let (job, _) = crate::ops::insert_job(c, &job, now, None)?;
                    c.prepare_cached(
                        "UPDATE windlass_flow_runs SET
                             status = CASE WHEN status = 'compensating' THEN status ELSE 'running' END,
                             error = CASE WHEN status = 'compensating' THEN error END,
                             output = NULL, finished_at = NULL, job_id = ?2
                         WHERE id = ?1",
                    )
                    .map_err(sql_error)?
                    .execute(params![id, job.0])
                    .map_err(sql_error)?;
                    let run = get_run(c, &id)?.ok_or_else(|| {
                        StoreError::Database(format!("run `{id}` vanished on resume"))
                    })?;
                    Ok(Some(Resumed::Resumed { run, retired }))
                },
                self.wake(),
            )
            .await
    }

    async fn run(&self, id: String) -> Result<Option<RunRecord>, StoreError> {
        self.writer.call(move |c| get_run(c, &id), None).await
    }

    async fn set_run_status(
        &self,
        id: String,
        status: RunStatus,
        output: Option<Value>,
        error: Option<String>,
    ) -> Result<bool, StoreError> {
        let output = output.as_ref().map(to_text).transpose()?;
        let now = self.clock.now_ms();
        let finished = status.is_terminal().then_some(now);
        self.writer
            .call(
                move |c| update_status(c, &id, status, output, error, finished),
                None,
            )
            .await
    }

    async fn runs(&self, filter: RunFilter) -> Result<Vec<RunRecord>, StoreError> {
        self.writer
            .call(
                move |c| {
                    let mut sql = format!("SELECT {RUN_COLUMNS} FROM windlass_flow_runs WHERE 1=1");
                    let mut args: Vec<String> = Vec::new();
                    if let Some(kind) = &filter.kind {
                        args.push(kind.clone());
                        sql.push_str(&format!(" AND kind = ?{}", args.len()));
                    }
                    if let Some(after) = &filter.after {
                        args.push(after.clone());
                        sql.push_str(&format!(" AND id > ?{}", args.len()));
                    }
                    if !filter.statuses.is_empty() {
                        let first = args.len() + 1;
                        args.extend(filter.statuses.iter().map(|s| s.as_str().to_owned()));
                        sql.push_str(&format!(
                            " AND status IN ({})",
                            crate::ops::placeholders(filter.statuses.len(), first)
                        ));
                    }
                    let limit = if filter.limit == 0 { 100 } else { filter.limit };
                    sql.push_str(&format!(" ORDER BY id LIMIT {limit}"));
                    let mut stmt = c.prepare(&sql).map_err(sql_error)?;
                    let rows = stmt
                        .query_map(params_from_iter(args.iter()), run_from)
                        .map_err(sql_error)?;
                    let mut out = Vec::new();
                    for row in rows {
                        out.push(row.map_err(sql_error)??);
                    }
                    Ok(out)
                },
                None,
            )
            .await
    }

    async fn journal(&self, run: String) -> Result<Vec<JournalEntry>, StoreError> {
        self.writer
            .call(
                move |c| {
                    let mut stmt = c
                        .prepare_cached(&format!(
                            "SELECT {ENTRY_COLUMNS} FROM windlass_flow_journal WHERE run_id = ?1 ORDER BY seq"
                        ))
                        .map_err(sql_error)?;
                    let rows = stmt.query_map([&run], entry_from).map_err(sql_error)?;
                    let mut out = Vec::new();
                    for row in rows {
                        out.push(row.map_err(sql_error)??);
                    }
                    Ok(out)
                },
                None,
            )
            .await
    }

    async fn record(&self, run: String, entry: JournalEntry) -> Result<JournalEntry, StoreError> {
        let (output, error) = match &entry.outcome {
            Ok(v) => (Some(to_text(v)?), None),
            Err(e) => (None, Some(e.clone())),
        };
        self.writer
            .call(
                move |c| {
                    c.prepare_cached(
                        "INSERT INTO windlass_flow_journal
                            (run_id, key, kind, output, error, attempts, started_at, finished_at,
                             after_seq)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                         ON CONFLICT (run_id, key) DO NOTHING",
                    )
                    .map_err(sql_error)?
                    .execute(params![
                        run,
                        entry.key,
                        entry.kind.as_str(),
                        output,
                        error,
                        entry.attempts,
                        entry.started_at_ms,
                        entry.finished_at_ms,
                        entry.after
                    ])
                    .map_err(sql_error)?;
                    c.prepare_cached(&format!(
                        "SELECT {ENTRY_COLUMNS} FROM windlass_flow_journal WHERE run_id = ?1 AND key = ?2"
                    ))
                    .map_err(sql_error)?
                    .query_row(params![run, entry.key], entry_from)
                    .map_err(sql_error)?
                },
                None,
            )
            .await
    }
}
