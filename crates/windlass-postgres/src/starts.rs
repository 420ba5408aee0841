//! Group commit for direct starts of workflow runs ([`FlowStore::start_run`] with a claim).
//!
//! A direct start writes the run and its job, already claimed by the caller, in one
//! statement. With many runs started at once, one statement each costs a round trip, a plan
//! and a transaction each. Here, as for journal entries (`journal.rs`) and run ends
//! (`ends.rs`), the direct starts that arrive while earlier ones are being written wait
//! together and go out as **one statement** over `unnest`ed arrays. A lone start, with a
//! write slot free and nothing waiting, is written at once on its caller's own task.
//!
//! Each start is decided exactly as alone: a run whose id is taken writes neither its row
//! nor its job (`ON CONFLICT DO NOTHING`, runs inserted in id order, so two batches never
//! wait on each other in a cycle), and its caller reads the run that stands. An id appears
//! at most once in a batch (a second start of the same id waits for the next). Like a lone
//! direct start, the batch commits without waiting for its WAL flush: every run in it is
//! acknowledged to its caller only by its end, a synchronous commit later in the same WAL
//! (see `flow.rs`). A batch the database refuses is written again one start at a time, so
//! one bad start fails only its own caller.
//!
//! [`FlowStore::start_run`]: windlass_flow::FlowStore::start_run

use std::collections::HashMap;
use std::sync::Arc;

use deadpool_postgres::{ClientWrapper, Pool};
use tokio::sync::oneshot;
use windlass_flow::RunStart;
use windlass_queue::{StoreError, duration_ms};

use crate::flow::{START_RUN, start_run_on};
use crate::group_commit::{Answer, GroupWriter, write_batch};
use crate::ops::JobColumns;
use crate::pg_error;

/// Batches written at once: one, as for journal entries (`journal::IN_FLIGHT`).
const IN_FLIGHT: usize = crate::journal::IN_FLIGHT;

/// The most starts in one statement.
const MAX_BATCH: usize = 256;

/// One direct start (its `claim` is set), waiting to be written.
pub(crate) struct Pending {
    pub(crate) start: RunStart,
    /// When the start was asked for: the job's lease runs from here.
    pub(crate) now: i64,
    /// The start back, with the new job's id, or `None` when the run's id is taken.
    pub(crate) reply: oneshot::Sender<(RunStart, Result<Option<i64>, StoreError>)>,
}

/// Starts the writer task on the current runtime (see `group_commit.rs`); two starts of
/// one id never share a batch.
pub(crate) fn spawn(pool: Pool, channel: Arc<str>) -> GroupWriter<Pending> {
    GroupWriter::spawn(
        MAX_BATCH,
        IN_FLIGHT,
        |p: &Pending| Some(p.start.id.clone()),
        move |batch| {
            let (pool, channel) = (pool.clone(), Arc::clone(&channel));
            async move { write(&pool, &channel, batch).await }
        },
    )
}

impl Answer<Option<i64>> for Pending {
    fn answer(self, answer: Result<Option<i64>, StoreError>) {
        let _ = self.reply.send((self.start, answer));
    }
}

async fn write(pool: &Pool, channel: &str, batch: Vec<Pending>) {
    write_batch(
        pool,
        batch,
        "direct starts",
        channel,
        start_all,
        start_alone,
    )
    .await;
}

async fn start_all(
    client: &ClientWrapper,
    _channel: &str,
    batch: &[Pending],
) -> Result<Vec<Result<Option<i64>, StoreError>>, StoreError> {
    let mut jobs = start_many(client, batch).await?;
    Ok(batch.iter().map(|p| Ok(jobs.remove(&p.start.id))).collect())
}

async fn start_alone(
    client: &ClientWrapper,
    channel: &str,
    p: &Pending,
) -> Result<Option<i64>, StoreError> {
    start_one(client, channel, &p.start, p.now).await
}

/// One start, one statement ([`START_RUN`]).
pub(crate) async fn start_one(
    client: &ClientWrapper,
    channel: &str,
    start: &RunStart,
    now: i64,
) -> Result<Option<i64>, StoreError> {
    let stmt = client.prepare_cached(START_RUN).await.map_err(pg_error)?;
    let row = start_run_on(&**client, &stmt, start, now, channel).await?;
    row.map(|r| r.try_get(0).map_err(pg_error)).transpose()
}

/// Several direct starts (of distinct ids), one statement: the new job of each run that was
/// created, by run id. An error is the statement's: nothing of it was written.
pub(crate) async fn start_many(
    client: &ClientWrapper,
    batch: &[Pending],
) -> Result<HashMap<String, i64>, StoreError> {
    let stmt = client
        .prepare_cached(
            "WITH s AS (
                SELECT * FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::int8[],
                    $5::text[], $6::text[], $7::jsonb[], $8::int2[], $9::int4[], $10::jsonb[],
                    $11::int8[], $12::jsonb[], $13::text[], $14::int8[], $15::text[],
                    $16::text[], $17::text[], $18::int8[])
                AS s(id, kind, input, created_at, job_kind, queue, payload, priority,
                    max_attempts, retry, timeout_ms, tags, unique_key, run_at, limit_key,
                    trace_context, locked_by, lease_until)),
             r AS (
                INSERT INTO windlass_flow_runs (id, kind, input, status, job_id, created_at)
                SELECT id, kind, input, 'running', nextval('windlass_jobs_id_seq'), created_at
                FROM s ORDER BY id
                ON CONFLICT (id) DO NOTHING
                RETURNING id, job_id),
             j AS (
                INSERT INTO windlass_jobs (id, kind, queue, payload, state, priority,
                    max_attempts, retry, timeout_ms, tags, unique_key, created_at, run_at,
                    limit_key, trace_context, attempt, lease_token, locked_by, lease_until)
                SELECT r.job_id, s.job_kind, s.queue, s.payload, 'running', s.priority,
                    s.max_attempts, s.retry, s.timeout_ms, s.tags, s.unique_key, s.created_at,
                    s.run_at, s.limit_key, s.trace_context, 1, 1, s.locked_by, s.lease_until
                FROM r JOIN s ON s.id = r.id
                RETURNING id)
             SELECT r.id, r.job_id, (SELECT set_config('synchronous_commit', 'off', true))
             FROM r WHERE r.job_id IN (SELECT id FROM j)",
        )
        .await
        .map_err(pg_error)?;
    let n = batch.len();
    let mut ids = Vec::with_capacity(n);
    let mut kinds = Vec::with_capacity(n);
    let mut inputs = Vec::with_capacity(n);
    let mut created = Vec::with_capacity(n);
    let mut job_kinds = Vec::with_capacity(n);
    let mut queues = Vec::with_capacity(n);
    let mut payloads = Vec::with_capacity(n);
    let mut priorities = Vec::with_capacity(n);
    let mut max_attempts = Vec::with_capacity(n);
    let mut retries = Vec::with_capacity(n);
    let mut timeouts = Vec::with_capacity(n);
    let mut tags = Vec::with_capacity(n);
    let mut unique_keys = Vec::with_capacity(n);
    let mut run_ats = Vec::with_capacity(n);
    let mut limit_keys = Vec::with_capacity(n);
    let mut traces = Vec::with_capacity(n);
    let mut workers = Vec::with_capacity(n);
    let mut lease_untils = Vec::with_capacity(n);
    for p in batch {
        let start = &p.start;
        let claim = start.claim.as_ref().ok_or_else(|| {
            StoreError::Invalid(format!(
                "start_run: run `{}` has no claim, so it is not a direct start",
                start.id
            ))
        })?;
        let o = start.job.options();
        let cols = JobColumns::of(o, p.now, true);
        ids.push(start.id.as_str());
        kinds.push(start.kind.as_str());
        inputs.push(&start.input);
        created.push(start.created_at_ms);
        job_kinds.push(start.job.kind());
        queues.push(o.queue.as_str());
        payloads.push(start.job.payload());
        priorities.push(o.priority);
        max_attempts.push(cols.max_attempts);
        retries.push(cols.retry);
        timeouts.push(cols.timeout_ms);
        tags.push(cols.tags);
        unique_keys.push(o.unique.as_ref().map(|u| u.key.as_str()));
        run_ats.push(cols.run_at);
        limit_keys.push(o.limit_key.as_deref());
        traces.push(o.trace_context.as_deref());
        workers.push(claim.worker.as_str());
        lease_untils.push(p.now.saturating_add(duration_ms(claim.lease_for)));
    }
    let rows = client
        .query(
            &stmt,
            &[
                &ids,
                &kinds,
                &inputs,
                &created,
                &job_kinds,
                &queues,
                &payloads,
                &priorities,
                &max_attempts,
                &retries,
                &timeouts,
                &tags,
                &unique_keys,
                &run_ats,
                &limit_keys,
                &traces,
                &workers,
                &lease_untils,
            ],
        )
        .await
        .map_err(pg_error)?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get(0).map_err(pg_error)?,
                r.try_get(1).map_err(pg_error)?,
            ))
        })
        .collect()
}
