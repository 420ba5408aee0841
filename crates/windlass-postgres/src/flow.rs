//! The workflow layer's tables in the store's schema: runs and their journals
//! ([`FlowStore`]). Every operation is one statement (autocommit), so an entry is durable
//! when `record` returns; the unique `(run_id, key)` makes concurrent writers of one entry
//! agree on the first.

use serde_json::Value;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use windlass_flow::events::{Delivery, Event, Subscription, Target};
use windlass_flow::store::{EndRun, Resumed};
use windlass_flow::{
    EntryKind, FlowStore, JournalEntry, NewRun, RunFilter, RunRecord, RunStart, RunStatus, Started,
};
use windlass_queue::{ClaimedJob, Finish, JobId, JobState, NewJob, StoreError, duration_ms};

use crate::{PostgresStore, pg_error};

fn corrupt(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

const RUN_COLUMNS: &str = "id, kind, input, status, output, error, job_id, created_at, finished_at";

fn run_from(row: &Row) -> Result<RunRecord, StoreError> {
    let status: String = row.try_get(3).map_err(pg_error)?;
    Ok(RunRecord {
        id: row.try_get(0).map_err(pg_error)?,
        kind: row.try_get(1).map_err(pg_error)?,
        input: row.try_get(2).map_err(pg_error)?,
        status: RunStatus::parse(&status).ok_or_else(|| corrupt("a run's status", &status))?,
        output: row.try_get(4).map_err(pg_error)?,
        error: row.try_get(5).map_err(pg_error)?,
        job: JobId(row.try_get(6).map_err(pg_error)?),
        created_at_ms: row.try_get(7).map_err(pg_error)?,
        finished_at_ms: row.try_get(8).map_err(pg_error)?,
    })
}

pub(crate) const ENTRY_COLUMNS: &str =
    "seq, key, kind, output, error, attempts, started_at, finished_at, after_seq";

/// The entry in `row`'s columns from `at` on (in [`ENTRY_COLUMNS`] order).
pub(crate) fn entry_from(row: &Row, at: usize) -> Result<JournalEntry, StoreError> {
    let kind: String = row.try_get(at + 2).map_err(pg_error)?;
    let output: Option<Value> = row.try_get(at + 3).map_err(pg_error)?;
    let error: Option<String> = row.try_get(at + 4).map_err(pg_error)?;
    let attempts: i32 = row.try_get(at + 5).map_err(pg_error)?;
    let outcome = match (output, error) {
        (Some(o), None) => Ok(o),
        (None, Some(e)) => Err(e),
        _ => {
            return Err(corrupt(
                "a journal entry",
                "neither or both of output and error",
            ));
        }
    };
    Ok(JournalEntry {
        seq: row.try_get(at).map_err(pg_error)?,
        key: row.try_get(at + 1).map_err(pg_error)?,
        kind: EntryKind::parse(&kind).ok_or_else(|| corrupt("a journal entry's kind", &kind))?,
        outcome,
        attempts: u32::try_from(attempts).map_err(|e| corrupt("a journal entry's attempts", e))?,
        started_at_ms: row.try_get(at + 6).map_err(pg_error)?,
        finished_at_ms: row.try_get(at + 7).map_err(pg_error)?,
        after: row.try_get(at + 8).map_err(pg_error)?,
    })
}

/// A run and its job in one statement (one commit): the job's id is drawn first so the run
/// row can name it; on a conflict on the run's id neither row is written.
pub(crate) const START_RUN: &str = "WITH jid AS (SELECT nextval('windlass_jobs_id_seq') AS id),
r AS (
    INSERT INTO windlass_flow_runs (id, kind, input, status, job_id, created_at)
    SELECT $1, $2, $3, 'running', jid.id, $4 FROM jid
    ON CONFLICT (id) DO NOTHING
    RETURNING job_id),
j AS (
    INSERT INTO windlass_jobs (id, kind, queue, payload, state, priority, max_attempts, retry,
        timeout_ms, tags, unique_key, created_at, run_at, limit_key, trace_context,
        attempt, lease_token, locked_by, lease_until)
    SELECT r.job_id, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $4, $15, $16, $17,
        $18, $19, $20, $21
    FROM r
    RETURNING id)
SELECT j.id, (SELECT pg_notify($22, '') WHERE $23),
    (SELECT set_config('synchronous_commit', 'off', true) WHERE NOT $23)
FROM j";

/// Runs [`START_RUN`] (prepared as `stmt`) for `start` on `c`: the new job's row, or `None`
/// when the run's id is taken.
pub(crate) async fn start_run_on<C: tokio_postgres::GenericClient>(
    c: &C,
    stmt: &tokio_postgres::Statement,
    start: &RunStart,
    now: i64,
    channel: &str,
) -> Result<Option<Row>, StoreError> {
    let o = start.job.options();
    let cols = crate::ops::JobColumns::of(o, now, start.claim.is_some());
    let unique_key = o.unique.as_ref().map(|u| u.key.as_str());
    let attempt: i32 = i32::from(start.claim.is_some());
    let token: i64 = i64::from(start.claim.is_some());
    let locked_by = start.claim.as_ref().map(|c| c.worker.as_str());
    let lease_until = start
        .claim
        .as_ref()
        .map(|c| now.saturating_add(duration_ms(c.lease_for)));
    let queued = start.claim.is_none();
    c.query_opt(
        stmt,
        &[
            &start.id,
            &start.kind,
            &start.input,
            &start.created_at_ms,
            &start.job.kind(),
            &o.queue,
            start.job.payload(),
            &cols.state,
            &o.priority,
            &cols.max_attempts,
            &cols.retry,
            &cols.timeout_ms,
            &cols.tags,
            &unique_key,
            &cols.run_at,
            &o.limit_key,
            &o.trace_context,
            &attempt,
            &token,
            &locked_by,
            &lease_until,
            &channel,
            &queued,
        ],
    )
    .await
    .map_err(pg_error)
}

/// The subscriptions of `topic` (all: `None`) read through `c`.
pub(crate) async fn subscriptions_on<C: tokio_postgres::GenericClient>(
    c: &C,
    topic: Option<String>,
    share_lock: bool,
) -> Result<Vec<Subscription>, StoreError> {
    let sql = if share_lock {
        "SELECT topic, name, target, kind, queue, attempt_timeout_ms
         FROM windlass_subscriptions WHERE $1::text IS NULL OR topic = $1
         ORDER BY topic, name FOR SHARE"
    } else {
        "SELECT topic, name, target, kind, queue, attempt_timeout_ms
         FROM windlass_subscriptions WHERE $1::text IS NULL OR topic = $1
         ORDER BY topic, name"
    };
    let rows = c.query(sql, &[&topic]).await.map_err(pg_error)?;
    rows.iter()
        .map(|r| {
            let target: String = r.try_get(2).map_err(pg_error)?;
            let target = Target::from_columns(
                &target,
                r.try_get(3).map_err(pg_error)?,
                r.try_get(4).map_err(pg_error)?,
                r.try_get(5).map_err(pg_error)?,
            )
            .ok_or_else(|| corrupt("a subscription's target", &target))?;
            Ok(Subscription {
                topic: r.try_get(0).map_err(pg_error)?,
                name: r.try_get(1).map_err(pg_error)?,
                target,
            })
        })
        .collect()
}

/// Stores `event` through `c` (inside a transaction) and delivers it to the subscriptions of
/// its topic as of that transaction: `None`, writing nothing, when the event's id is taken;
/// otherwise how many subscriptions got it (a run whose id was taken is not delivered again).
pub(crate) async fn publish_on<C: tokio_postgres::GenericClient>(
    c: &C,
    event: &Event,
    now: i64,
    channel: &str,
) -> Result<Option<usize>, StoreError> {
    let inserted = c
        .execute(
            "INSERT INTO windlass_events (id, topic, payload, published_at, delivered)
             VALUES ($1, $2, $3, $4, 0) ON CONFLICT (id) DO NOTHING",
            &[
                &event.id,
                &event.topic,
                &event.payload,
                &event.published_at_ms,
            ],
        )
        .await
        .map_err(pg_error)?;
    if inserted == 0 {
        return Ok(None);
    }
    // Read under a share lock: a subscribe or unsubscribe of this topic waits for this
    // transaction, so the event goes to the subscriptions of one moment.
    let subscriptions = subscriptions_on(c, Some(event.topic.clone()), true).await?;
    let deliveries = windlass_flow::events::deliveries(event, &subscriptions)
        .map_err(|e| StoreError::Invalid(e.to_string()))?;
    let jobs: Vec<NewJob> = deliveries
        .iter()
        .filter_map(|d| match d {
            Delivery::Job(job) => Some(job.clone()),
            Delivery::Run(_) => None,
        })
        .collect();
    let mut delivered = jobs.len();
    if !jobs.is_empty() {
        crate::ops::enqueue(c, &crate::ops::Prep::Plain, &jobs, now, channel).await?;
    }
    let mut stmt = None;
    for delivery in &deliveries {
        if let Delivery::Run(start) = delivery {
            let stmt = match &stmt {
                Some(s) => s,
                None => stmt.insert(c.prepare(START_RUN).await.map_err(pg_error)?),
            };
            if start_run_on(c, stmt, start, now, channel).await?.is_some() {
                delivered += 1;
            } else {
                tracing::warn!(run = %start.id, event = %event.id, "an event's run id was taken: not delivered again");
            }
        }
    }
    let count = i32::try_from(delivered).unwrap_or(i32::MAX);
    c.execute(
        "UPDATE windlass_events SET delivered = $2 WHERE id = $1",
        &[&event.id, &count],
    )
    .await
    .map_err(pg_error)?;
    Ok(Some(delivered))
}

impl FlowStore for PostgresStore {
    async fn start_run(&self, start: RunStart) -> Result<Started, StoreError> {
        let now = self.clock.now_ms();
        let queued = start.claim.is_none();
        let (job, start) = if queued {
            let client = self.client().await?;
            (
                crate::starts::start_one(&client, &self.channel, &start, now).await?,
                start,
            )
        } else {
            // A direct start goes through the group-commit writer (see `starts.rs`), or,
            // with a write slot free and nothing waiting, at once on this task; straight to
            // the database if the writer's runtime is gone.
            let writer = self.starts.get_or_init(|| {
                crate::starts::spawn(self.pool.clone(), std::sync::Arc::clone(&self.channel))
            });
            if let Some(_slot) = writer.alone().await {
                let client = self.client().await?;
                let job = crate::starts::start_one(&client, &self.channel, &start, now).await?;
                (job, start)
            } else {
                let (reply, answer) = tokio::sync::oneshot::channel();
                match writer.send(crate::starts::Pending { start, now, reply }) {
                    Err(p) => {
                        let client = self.client().await?;
                        let job = crate::starts::start_one(&client, &self.channel, &p.start, now);
                        (job.await?, p.start)
                    }
                    Ok(()) => {
                        let (start, job) = answer.await.map_err(|_| {
                            StoreError::Unavailable(
                                "the run-start writer stopped before answering".into(),
                            )
                        })?;
                        (job?, start)
                    }
                }
            }
        };
        let Some(job) = job else {
            // The id is taken (possibly by a start that committed after this statement's
            // snapshot: it waited for it): read the run with a new snapshot.
            let run = self.run(start.id.clone()).await?.ok_or_else(|| {
                StoreError::Unavailable(format!(
                    "run `{}` was being started concurrently; try again",
                    start.id
                ))
            })?;
            return Ok(Started {
                run,
                created: false,
                claimed: None,
            });
        };
        let job = JobId(job);
        if queued {
            self.wake();
        }
        let claimed = start
            .claim
            .as_ref()
            .map(|claim| ClaimedJob::first_attempt(&start.job, job, &claim.worker, now));
        Ok(start.created(job, claimed))
    }

    async fn insert_run(&self, run: NewRun) -> Result<RunRecord, StoreError> {
        let client = self.client().await?;
        // Insert, or read the existing row, in one statement.
        let sql = format!(
            "WITH ins AS (
                INSERT INTO windlass_flow_runs (id, kind, input, status, job_id, created_at)
                VALUES ($1, $2, $3, 'running', $4, $5)
                ON CONFLICT (id) DO NOTHING
                RETURNING {RUN_COLUMNS})
             SELECT {RUN_COLUMNS} FROM ins
             UNION ALL
             SELECT {RUN_COLUMNS} FROM windlass_flow_runs WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM ins)"
        );
        let stmt = client.prepare_cached(&sql).await.map_err(pg_error)?;
        // No row: another insert of this id committed after this statement's snapshot was
        // taken (it waited for that insert, then did nothing). The next statement's snapshot
        // sees it.
        for _ in 0..3 {
            let row = client
                .query_opt(
                    &stmt,
                    &[
                        &run.id,
                        &run.kind,
                        &run.input,
                        &run.job.0,
                        &run.created_at_ms,
                    ],
                )
                .await
                .map_err(pg_error)?;
            if let Some(row) = row {
                return run_from(&row);
            }
        }
        Err(StoreError::Unavailable(format!(
            "run `{}` was being started concurrently; try again",
            run.id
        )))
    }

    async fn run(&self, id: String) -> Result<Option<RunRecord>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {RUN_COLUMNS} FROM windlass_flow_runs WHERE id = $1"
            ))
            .await
            .map_err(pg_error)?;
        client
            .query_opt(&stmt, &[&id])
            .await
            .map_err(pg_error)?
            .map(|row| run_from(&row))
            .transpose()
    }

    async fn run_and_journal(
        &self,
        id: String,
    ) -> Result<Option<(RunRecord, Vec<JournalEntry>)>, StoreError> {
        // One statement: the run's row (its entry columns NULL) first, then its entries in
        // `seq` order (their run columns NULL).
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {RUN_COLUMNS}, NULL::int8 AS seq, NULL::text, NULL::text, NULL::jsonb,
                     NULL::text, NULL::int4, NULL::int8, NULL::int8, NULL::int8
                 FROM windlass_flow_runs WHERE id = $1
                 UNION ALL
                 SELECT NULL::text, NULL::text, NULL::jsonb, NULL::text, NULL::jsonb, NULL::text,
                     NULL::int8, NULL::int8, NULL::int8, {ENTRY_COLUMNS}
                 FROM windlass_flow_journal WHERE run_id = $1
                 ORDER BY seq NULLS FIRST"
            ))
            .await
            .map_err(pg_error)?;
        let rows = client.query(&stmt, &[&id]).await.map_err(pg_error)?;
        let Some((first, entries)) = rows.split_first() else {
            return Ok(None);
        };
        let seq: Option<i64> = first.try_get(9).map_err(pg_error)?;
        if seq.is_some() {
            // Entries of a run whose row is gone: no run, as `run` would say.
            return Ok(None);
        }
        let run = run_from(first)?;
        let journal = entries
            .iter()
            .map(|r| entry_from(r, 9))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some((run, journal)))
    }

    async fn set_run_status(
        &self,
        id: String,
        status: RunStatus,
        output: Option<Value>,
        error: Option<String>,
    ) -> Result<bool, StoreError> {
        // Through the group-commit writer (see `statuses.rs`); straight to the database if
        // the writer's runtime is gone.
        let writer = self
            .statuses
            .get_or_init(|| crate::statuses::spawn(self.pool.clone()));
        let (reply, answer) = tokio::sync::oneshot::channel();
        let pending = crate::statuses::Pending {
            run: id,
            status,
            output,
            error,
            finished: status.is_terminal().then(|| self.clock.now_ms()),
            reply,
        };
        writer
            .write(pending, answer, "run-status", async |p| {
                crate::statuses::set_one(&*self.client().await?, &p).await
            })
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
        // Through the group-commit writer (see `ends.rs`), which locks the run's row before
        // it writes, so a cancel cannot slip between the check that the run may take this
        // end and the writes: the job's end is written only if the run may take it, and the
        // run's only if the job's was. Straight to the database if the writer's runtime is
        // gone.
        //
        // The end waits for its WAL flush: the caller is told the run's outcome once it is
        // returned, and an unflushed end lost to a database crash could be replayed to a
        // different one (its deadline passed, a cancel arrived meanwhile).
        let writer = self
            .ends
            .get_or_init(|| crate::ends::spawn(self.pool.clone()));
        let (reply, answer) = tokio::sync::oneshot::channel();
        let pending = crate::ends::Pending {
            run: id,
            status,
            output,
            error,
            finish,
            now: self.clock.now_ms(),
            reply,
        };
        writer
            .write(pending, answer, "run-end", async |p| {
                crate::ends::end_one(&*self.client().await?, &p).await
            })
            .await
    }

    async fn subscribe(&self, sub: Subscription) -> Result<(), StoreError> {
        let (target, kind, queue, timeout) = sub.target.columns();
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO windlass_subscriptions
                    (topic, name, target, kind, queue, attempt_timeout_ms)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (topic, name) DO UPDATE SET target = excluded.target,
                    kind = excluded.kind, queue = excluded.queue,
                    attempt_timeout_ms = excluded.attempt_timeout_ms",
                &[&sub.topic, &sub.name, &target, &kind, &queue, &timeout],
            )
            .await
            .map_err(pg_error)?;
        Ok(())
    }

    async fn unsubscribe(&self, topic: String, name: String) -> Result<bool, StoreError> {
        let client = self.client().await?;
        Ok(client
            .execute(
                "DELETE FROM windlass_subscriptions WHERE topic = $1 AND name = $2",
                &[&topic, &name],
            )
            .await
            .map_err(pg_error)?
            > 0)
    }

    async fn subscriptions(&self, topic: Option<String>) -> Result<Vec<Subscription>, StoreError> {
        let client = self.client().await?;
        subscriptions_on(&**client, topic, false).await
    }

    async fn publish(&self, event: Event) -> Result<Option<usize>, StoreError> {
        let now = self.clock.now_ms();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let delivered = publish_on(&*tx, &event, now, &self.channel).await?;
        tx.commit().await.map_err(pg_error)?;
        if delivered.is_some() {
            self.wake();
        }
        Ok(delivered)
    }

    async fn cancel_run(
        &self,
        id: String,
        reason: String,
    ) -> Result<Option<(RunRecord, bool)>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "WITH upd AS (
                    UPDATE windlass_flow_runs SET status = 'compensating', error = $2
                    WHERE id = $1 AND status = 'running'
                    RETURNING {RUN_COLUMNS}),
                 w AS (
                    UPDATE windlass_jobs SET
                        run_at = CASE WHEN state = 'running' THEN run_at ELSE LEAST(run_at, $3) END,
                        wake_requested = (state = 'running') OR wake_requested
                    WHERE id IN (SELECT job_id FROM upd)
                      AND state IN ('scheduled', 'available', 'retryable', 'running')
                    RETURNING id)
                 SELECT {RUN_COLUMNS}, true,
                     (SELECT count(pg_notify($4, '')) FROM w) FROM upd
                 UNION ALL
                 SELECT {RUN_COLUMNS}, false, 0 FROM windlass_flow_runs
                 WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM upd)"
            ))
            .await
            .map_err(pg_error)?;
        let now = self.clock.now_ms();
        let row = client
            .query_opt(&stmt, &[&id, &reason, &now, &&*self.channel])
            .await
            .map_err(pg_error)?;
        drop(client);
        // The run's job was woken in the same statement (a sleeping run rolls back now).
        self.wake();
        row.map(|row| Ok((run_from(&row)?, row.try_get(9).map_err(pg_error)?)))
            .transpose()
    }

    async fn resume_run(
        &self,
        id: String,
        renames: Vec<(String, String)>,
        job: NewJob,
    ) -> Result<Option<Resumed>, StoreError> {
        let now = self.clock.now_ms();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error)?;
        let Some(row) = tx
            .query_opt(
                "SELECT status, job_id FROM windlass_flow_runs WHERE id = $1 FOR UPDATE",
                &[&id],
            )
            .await
            .map_err(pg_error)?
        else {
            return Ok(None);
        };
        let status: String = row.try_get(0).map_err(pg_error)?;
        let status = RunStatus::parse(&status).ok_or_else(|| corrupt("a run's status", &status))?;
        let old_job: i64 = row.try_get(1).map_err(pg_error)?;
        let resumable = match status {
            RunStatus::Failed | RunStatus::Halted => true,
            RunStatus::Completed => false,
            RunStatus::Running | RunStatus::Compensating => {
                let state: Option<String> = tx
                    .query_opt("SELECT state FROM windlass_jobs WHERE id = $1", &[&old_job])
                    .await
                    .map_err(pg_error)?
                    .map(|r| r.try_get(0))
                    .transpose()
                    .map_err(pg_error)?;
                state
                    .and_then(|s| JobState::parse(&s))
                    .is_none_or(|s| s.is_terminal())
            }
        };
        if !resumable {
            return Ok(Some(Resumed::NotResumable(status)));
        }
        let mut retired = 0;
        for (from, to) in &renames {
            retired += tx
                .execute(
                    "UPDATE windlass_flow_journal SET key = $3 WHERE run_id = $1 AND key = $2",
                    &[&id, from, to],
                )
                .await
                .map_err(pg_error)?;
        }
        let job = crate::ops::enqueue(&*tx, &crate::ops::Prep::Plain, &[job], now, &self.channel)
            .await?
            .pop()
            .ok_or_else(|| StoreError::Corrupt("resume inserted no job".into()))?
            .id;
        let row = tx
            .query_one(
                &format!(
                    "UPDATE windlass_flow_runs SET
                         status = CASE WHEN status = 'compensating' THEN status ELSE 'running' END,
                         error = CASE WHEN status = 'compensating' THEN error END,
                         output = NULL, finished_at = NULL, job_id = $2
                     WHERE id = $1 RETURNING {RUN_COLUMNS}"
                ),
                &[&id, &job.0],
            )
            .await
            .map_err(pg_error)?;
        let run = run_from(&row)?;
        tx.commit().await.map_err(pg_error)?;
        self.wake();
        Ok(Some(Resumed::Resumed {
            run,
            retired: usize::try_from(retired).unwrap_or(usize::MAX),
        }))
    }

    async fn runs(&self, filter: RunFilter) -> Result<Vec<RunRecord>, StoreError> {
        let client = self.client().await?;
        let statuses: Vec<&str> = filter.statuses.iter().map(|s| s.as_str()).collect();
        let limit =
            i64::try_from(if filter.limit == 0 { 100 } else { filter.limit }).unwrap_or(i64::MAX);
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM windlass_flow_runs
             WHERE ($1::TEXT IS NULL OR kind = $1)
               AND ($2::TEXT IS NULL OR id > $2)
               AND (cardinality($3::TEXT[]) = 0 OR status = ANY($3))
             ORDER BY id LIMIT $4"
        );
        let params: [&(dyn ToSql + Sync); 4] = [&filter.kind, &filter.after, &statuses, &limit];
        let rows = client.query(&sql, &params).await.map_err(pg_error)?;
        rows.iter().map(run_from).collect()
    }

    async fn journal(&self, run: String) -> Result<Vec<JournalEntry>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {ENTRY_COLUMNS} FROM windlass_flow_journal WHERE run_id = $1 ORDER BY seq"
            ))
            .await
            .map_err(pg_error)?;
        let rows = client.query(&stmt, &[&run]).await.map_err(pg_error)?;
        rows.iter().map(|r| entry_from(r, 0)).collect()
    }

    async fn record(&self, run: String, entry: JournalEntry) -> Result<JournalEntry, StoreError> {
        // Through the group-commit writer (see `journal.rs`); straight to the database if
        // the writer's runtime is gone.
        let writer = self
            .journal
            .get_or_init(|| crate::journal::spawn(self.pool.clone()));
        let (reply, answer) = tokio::sync::oneshot::channel();
        let pending = crate::journal::Pending { run, entry, reply };
        writer
            .write(pending, answer, "journal", async |p| {
                record_one(&*self.client().await?, &p.run, &p.entry).await
            })
            .await
    }
}

/// Stores one journal entry unless its key is taken; returns the stored entry.
pub(crate) async fn record_one(
    client: &deadpool_postgres::ClientWrapper,
    run: &str,
    entry: &JournalEntry,
) -> Result<JournalEntry, StoreError> {
    let (output, error) = match &entry.outcome {
        Ok(v) => (Some(v), None),
        Err(e) => (None, Some(e)),
    };
    let attempts = i32::try_from(entry.attempts).unwrap_or(i32::MAX);
    let stmt = client
        .prepare_cached(&format!(
            "WITH ins AS (
                INSERT INTO windlass_flow_journal
                    (run_id, key, kind, output, error, attempts, started_at, finished_at,
                     after_seq)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                ON CONFLICT (run_id, key) DO NOTHING
                RETURNING {ENTRY_COLUMNS})
             SELECT {ENTRY_COLUMNS} FROM ins
             UNION ALL
             SELECT {ENTRY_COLUMNS} FROM windlass_flow_journal
             WHERE run_id = $1 AND key = $2 AND NOT EXISTS (SELECT 1 FROM ins)"
        ))
        .await
        .map_err(pg_error)?;
    // No row: another writer's entry committed after this statement's snapshot (see
    // `insert_run`); the next statement sees it.
    for _ in 0..3 {
        let row = client
            .query_opt(
                &stmt,
                &[
                    &run,
                    &entry.key,
                    &entry.kind.as_str(),
                    &output,
                    &error,
                    &attempts,
                    &entry.started_at_ms,
                    &entry.finished_at_ms,
                    &entry.after,
                ],
            )
            .await
            .map_err(pg_error)?;
        if let Some(row) = row {
            return entry_from(&row, 0);
        }
    }
    Err(StoreError::Unavailable(format!(
        "journal entry `{}` of run `{run}` was being written concurrently; try again",
        entry.key
    )))
}
