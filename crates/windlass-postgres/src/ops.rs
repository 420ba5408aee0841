//! The store's operations as SQL. Hot paths (enqueue, claim, finish, heartbeat) are one
//! statement each over arrays, whatever the batch size, with the statement prepared once per
//! connection.

use deadpool_postgres::ClientWrapper;
use serde_json::Value;
use tokio_postgres::GenericClient;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Statement};
use windlass_policy::RetrySchedule;
use windlass_queue::{
    AttemptRecord, ClaimRequest, ClaimedJob, Enqueued, Fenced, Finish, Heartbeat, JobFilter, JobId,
    JobRecord, JobState, Lease, NewJob, NextState, QueueStats, Rescued, StoreError, duration_ms,
};

use crate::pg_error;

pub(crate) const DUE: &str = "('scheduled','available','retryable')";

/// Inserts the rows of `jobs` (none unique) in one statement and notifies `channel`.
pub(crate) const INSERT: &str = "WITH ins AS (
    INSERT INTO windlass_jobs (kind, queue, payload, state, priority, max_attempts, retry,
        timeout_ms, tags, unique_key, created_at, run_at, limit_key, trace_context)
    SELECT kind, queue, payload, state, priority, max_attempts, retry, timeout_ms, tags,
        unique_key, $11, run_at, limit_key, trace_context
    FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::text[], $5::int2[], $6::int4[],
        $7::jsonb[], $8::int8[], $9::jsonb[], $10::text[], $12::int8[], $14::text[],
        $15::text[])
        WITH ORDINALITY AS t(kind, queue, payload, state, priority, max_attempts, retry,
            timeout_ms, tags, unique_key, run_at, limit_key, trace_context, ord)
    ORDER BY ord
    RETURNING id)
SELECT ins.id FROM ins, (SELECT pg_notify($13, '')) AS n";

/// One job: a plain `VALUES` row (W1, the most common enqueue).
pub(crate) const INSERT_ONE: &str = "WITH ins AS (
    INSERT INTO windlass_jobs (kind, queue, payload, state, priority, max_attempts, retry,
        timeout_ms, tags, unique_key, created_at, run_at, limit_key, trace_context)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $14, $15)
    RETURNING id)
SELECT ins.id FROM ins, (SELECT pg_notify($13, '')) AS n";

/// Many jobs of one kind with the same options (`enqueue_many`): only the payloads vary.
pub(crate) const INSERT_SHARED: &str = "WITH ins AS (
    INSERT INTO windlass_jobs (kind, queue, payload, state, priority, max_attempts, retry,
        timeout_ms, tags, unique_key, created_at, run_at, limit_key, trace_context)
    SELECT $1, $2, payload, $4, $5, $6, $7, $8, $9, NULL, $10, $11, $13, $14
    FROM unnest($3::jsonb[]) WITH ORDINALITY AS t(payload, ord)
    ORDER BY ord
    RETURNING id)
SELECT ins.id FROM ins, (SELECT pg_notify($12, '')) AS n";

/// Prepares the insert statements: cached on a pooled connection, or once per call on a
/// caller's transaction.
pub(crate) enum Prep<'a> {
    /// A pooled connection's statement cache.
    Cached(&'a ClientWrapper),
    /// Prepare on the connection being used.
    Plain,
}

async fn prepare<C: GenericClient>(
    c: &C,
    prep: &Prep<'_>,
    sql: &str,
) -> Result<Statement, StoreError> {
    match prep {
        Prep::Cached(w) => w.prepare_cached(sql).await.map_err(pg_error),
        Prep::Plain => c.prepare(sql).await.map_err(pg_error),
    }
}

struct Rows {
    kind: Vec<String>,
    queue: Vec<String>,
    payload: Vec<Value>,
    state: Vec<String>,
    priority: Vec<i16>,
    max_attempts: Vec<i32>,
    retry: Vec<Value>,
    timeout_ms: Vec<i64>,
    tags: Vec<Value>,
    unique_key: Vec<Option<String>>,
    run_at: Vec<i64>,
    limit_key: Vec<Option<String>>,
    trace_context: Vec<Option<String>>,
}

fn rows(jobs: &[&NewJob], now: i64) -> Result<Rows, StoreError> {
    let mut r = Rows {
        kind: vec![],
        queue: vec![],
        payload: vec![],
        state: vec![],
        priority: vec![],
        max_attempts: vec![],
        retry: vec![],
        timeout_ms: vec![],
        tags: vec![],
        unique_key: vec![],
        run_at: vec![],
        limit_key: vec![],
        trace_context: vec![],
    };
    for job in jobs {
        let o = job.options();
        let delay = duration_ms(o.delay);
        r.kind.push(job.kind().to_string());
        r.queue.push(o.queue.clone());
        r.payload.push(job.payload().clone());
        r.state.push(
            if delay > 0 {
                JobState::Scheduled
            } else {
                JobState::Available
            }
            .as_str()
            .to_string(),
        );
        r.priority.push(o.priority);
        r.max_attempts
            .push(i32::try_from(o.retry.max_attempts).unwrap_or(i32::MAX));
        r.retry.push(to_json(&o.retry.packed())?);
        r.timeout_ms.push(duration_ms(o.timeout));
        r.tags.push(to_json(&o.tags)?);
        r.unique_key.push(o.unique.as_ref().map(|u| u.key.clone()));
        r.run_at.push(now.saturating_add(delay));
        r.limit_key.push(o.limit_key.clone());
        r.trace_context.push(o.trace_context.clone());
    }
    Ok(r)
}

fn to_json(v: &impl serde::Serialize) -> Result<Value, StoreError> {
    serde_json::to_value(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The columns of a new job that follow from its options, as statement parameters.
pub(crate) struct JobColumns<'a> {
    pub(crate) state: &'static str,
    pub(crate) run_at: i64,
    pub(crate) max_attempts: i32,
    /// Serialised straight into the statement's parameters, without a `Value` between.
    pub(crate) retry: tokio_postgres::types::Json<windlass_policy::PackedSchedule<'a>>,
    pub(crate) timeout_ms: i64,
    pub(crate) tags: tokio_postgres::types::Json<&'a Vec<String>>,
}

impl<'a> JobColumns<'a> {
    /// A job with options `o` created at `now`: running at once if `claimed` (a direct
    /// start), else scheduled after its delay or available now.
    pub(crate) fn of(o: &'a windlass_queue::JobOptions, now: i64, claimed: bool) -> Self {
        let delay = duration_ms(o.delay);
        let state = if claimed {
            JobState::Running
        } else if delay > 0 {
            JobState::Scheduled
        } else {
            JobState::Available
        };
        JobColumns {
            state: state.as_str(),
            run_at: now.saturating_add(delay),
            max_attempts: i32::try_from(o.retry.max_attempts).unwrap_or(i32::MAX),
            retry: tokio_postgres::types::Json(o.retry.packed()),
            timeout_ms: duration_ms(o.timeout),
            tags: tokio_postgres::types::Json(&o.tags),
        }
    }
}

/// Inserts `jobs` (none unique) with one statement; ids in input order.
async fn insert_plain<C: GenericClient>(
    c: &C,
    prep: &Prep<'_>,
    jobs: &[&NewJob],
    now: i64,
    channel: &str,
) -> Result<Vec<JobId>, StoreError> {
    let Some(first) = jobs.first() else {
        return Ok(Vec::new());
    };
    let shared = jobs
        .iter()
        .all(|j| j.kind() == first.kind() && j.options() == first.options());
    let rows = if jobs.len() == 1 || shared {
        let o = first.options();
        let cols = JobColumns::of(o, now, false);
        if jobs.len() == 1 {
            let unique_key = o.unique.as_ref().map(|u| u.key.as_str());
            let stmt = prepare(c, prep, INSERT_ONE).await?;
            c.query(
                &stmt,
                &[
                    &first.kind(),
                    &o.queue,
                    first.payload(),
                    &cols.state,
                    &o.priority,
                    &cols.max_attempts,
                    &cols.retry,
                    &cols.timeout_ms,
                    &cols.tags,
                    &unique_key,
                    &now,
                    &cols.run_at,
                    &channel,
                    &o.limit_key,
                    &o.trace_context,
                ],
            )
            .await
            .map_err(pg_error)?
        } else {
            let payloads: Vec<&Value> = jobs.iter().map(|j| j.payload()).collect();
            let stmt = prepare(c, prep, INSERT_SHARED).await?;
            c.query(
                &stmt,
                &[
                    &first.kind(),
                    &o.queue,
                    &payloads,
                    &cols.state,
                    &o.priority,
                    &cols.max_attempts,
                    &cols.retry,
                    &cols.timeout_ms,
                    &cols.tags,
                    &now,
                    &cols.run_at,
                    &channel,
                    &o.limit_key,
                    &o.trace_context,
                ],
            )
            .await
            .map_err(pg_error)?
        }
    } else {
        let r = rows(jobs, now)?;
        let params: [&(dyn ToSql + Sync); 15] = [
            &r.kind,
            &r.queue,
            &r.payload,
            &r.state,
            &r.priority,
            &r.max_attempts,
            &r.retry,
            &r.timeout_ms,
            &r.tags,
            &r.unique_key,
            &now,
            &r.run_at,
            &channel,
            &r.limit_key,
            &r.trace_context,
        ];
        let stmt = prepare(c, prep, INSERT).await?;
        c.query(&stmt, &params).await.map_err(pg_error)?
    };
    // Ids come from one sequence in insertion order (ORDER BY ord): sorted, they are the
    // input order.
    let mut ids: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    ids.sort_unstable();
    Ok(ids.into_iter().map(JobId).collect())
}

/// Enqueues `jobs` through `c`, preparing statements as `prep` says. Unique jobs need a
/// transaction: each takes an advisory lock on its key for the rest of the transaction, so
/// concurrent inserts of one key are serialised and the second sees the first's row.
pub(crate) async fn enqueue<C: GenericClient>(
    c: &C,
    prep: &Prep<'_>,
    jobs: &[NewJob],
    now: i64,
    channel: &str,
) -> Result<Vec<Enqueued>, StoreError> {
    let mut out: Vec<Option<Enqueued>> = vec![None; jobs.len()];
    let plain: Vec<usize> = (0..jobs.len())
        .filter(|i| jobs[*i].options().unique.is_none())
        .collect();
    let plain_jobs: Vec<&NewJob> = plain.iter().map(|i| &jobs[*i]).collect();
    for (i, id) in plain
        .iter()
        .zip(insert_plain(c, prep, &plain_jobs, now, channel).await?)
    {
        out[*i] = Some(Enqueued {
            id,
            duplicate: false,
        });
    }
    for (i, job) in jobs.iter().enumerate() {
        let Some(u) = &job.options().unique else {
            continue;
        };
        let o = job.options();
        let lock_key = format!("{}\u{1f}{}\u{1f}{}", o.queue, job.kind(), u.key);
        c.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 7176))",
            &[&lock_key],
        )
        .await
        .map_err(pg_error)?;
        let states: Vec<String> = u.states.iter().map(|s| s.as_str().to_string()).collect();
        let since = u.window.map_or(i64::MIN, |w| now - duration_ms(w));
        let existing = c
            .query_opt(
                "SELECT id FROM windlass_jobs WHERE queue = $1 AND kind = $2 AND unique_key = $3
                   AND created_at >= $4 AND state = ANY($5) ORDER BY id LIMIT 1",
                &[&o.queue, &job.kind(), &u.key, &since, &states],
            )
            .await
            .map_err(pg_error)?;
        out[i] = Some(match existing {
            Some(row) => Enqueued {
                id: JobId(row.get(0)),
                duplicate: true,
            },
            None => Enqueued {
                id: insert_plain(c, prep, &[job], now, channel)
                    .await?
                    .pop()
                    .ok_or_else(|| StoreError::Corrupt("insert returned no id".into()))?,
                duplicate: false,
            },
        });
    }
    out.into_iter()
        .map(|e| {
            e.ok_or_else(|| StoreError::Corrupt("a job was neither inserted nor found".into()))
        })
        .collect()
}

/// The columns a claim returns, in [`claimed`]'s order.
pub(crate) const CLAIMED: &str =
    "j.id, j.kind, j.queue, j.payload, j.attempt, j.retry, j.timeout_ms,
    j.run_at, j.created_at, j.lease_token, j.priority, j.trace_context";

/// What a claim took: the jobs, in claim order, and the claimed rows that could not be read
/// (discarded by the caller: [`discard_unreadable`]).
pub(crate) type Claimed = (Vec<ClaimedJob>, Vec<Unreadable>);

/// A claimed row that could not be read: its end (`Finish::unreadable`) and which columns
/// failed.
#[derive(Debug, Clone)]
pub(crate) struct Unreadable {
    pub(crate) end: Finish,
    pub(crate) payload: bool,
    pub(crate) retry: bool,
}

/// Claimed rows as jobs, in claim order, and the unreadable ones' ends (at `now`).
pub(crate) fn claimed(rows: Vec<Row>, worker: &str, now: i64) -> Claimed {
    let mut out = Vec::with_capacity(rows.len());
    let mut unreadable = Vec::new();
    for r in rows {
        let attempt = u32::try_from(r.get::<_, i32>(4)).unwrap_or(0);
        let timeout_ms: i64 = r.get(6);
        let priority: i16 = r.get(10);
        let lease = Lease {
            job: JobId(r.get(0)),
            token: r.get(9),
            worker: worker.to_string(),
        };
        // Straight from the column's bytes to the schedule, without a `Value` between.
        let retry = r.try_get::<_, tokio_postgres::types::Json<RetrySchedule>>(5);
        let payload = r.try_get::<_, Value>(3);
        let (payload, retry) = match (payload, retry) {
            (Ok(p), Ok(r)) => (p, r.0),
            (p, rt) => {
                let mut problems = Vec::new();
                if let Err(e) = &p {
                    problems.push(unreadable_column(&r, 3, "payload", e));
                }
                if let Err(e) = &rt {
                    problems.push(unreadable_column(&r, 5, "retry schedule", e));
                }
                let problem = problems.join("; ");
                unreadable.push(Unreadable {
                    end: Finish::unreadable(lease, attempt, now, problem),
                    payload: p.is_err(),
                    retry: rt.is_err(),
                });
                continue;
            }
        };
        out.push((
            priority,
            ClaimedJob {
                lease,
                kind: r.get(1),
                queue: r.get(2),
                payload,
                attempt,
                retry,
                timeout: std::time::Duration::from_millis(u64::try_from(timeout_ms).unwrap_or(0)),
                run_at_ms: r.get(7),
                created_at_ms: r.get(8),
                trace_context: r.get(11),
            },
        ));
    }
    out.sort_by_key(|(p, j)| (*p, j.run_at_ms, j.lease.job));
    (out.into_iter().map(|(_, j)| j).collect(), unreadable)
}

/// Why a column did not decode: the driver's own message names only the column, its
/// source (serde's) says what is wrong.
fn decode_reason(e: &tokio_postgres::Error) -> String {
    std::error::Error::source(e).map_or_else(|| e.to_string(), |s| s.to_string())
}

/// What serde found wrong with column `at` of claimed row `r`, and (up to 200 characters
/// of) what is stored there, if serde_json can read it as a plain value.
fn unreadable_column(r: &Row, at: usize, what: &str, e: &tokio_postgres::Error) -> String {
    let why = decode_reason(e);
    let stored: String = r.try_get::<_, Value>(at).map_or_else(
        |_| "a value serde_json cannot read, e.g. nested past 128 levels".into(),
        |v| v.to_string(),
    );
    let stored = match stored.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &stored[..cut]),
        None => stored,
    };
    format!("{what}: {why} (stored: {stored})")
}

/// Discards claimed jobs that could not be read (`claimed`), in one statement (all or
/// nothing), fenced by their leases: each becomes a dead letter with its attempt recorded,
/// and each unreadable column readable again, so the dead letter lists and replays. A
/// payload becomes its JSON text as a string; a schedule the default job schedule with the
/// job's own `max_attempts` (the stored value is quoted in the attempt's error).
pub(crate) async fn discard_unreadable(
    c: &ClientWrapper,
    unreadable: &[Unreadable],
    now: i64,
) -> Result<Vec<Fenced>, StoreError> {
    let mut sorted: Vec<&Unreadable> = unreadable.iter().collect();
    sorted.sort_unstable_by_key(|u| u.end.lease.job);
    let refs: Vec<&Lease> = sorted.iter().map(|u| &u.end.lease).collect();
    let (ids, tokens, workers) = lease_arrays(&refs);
    let records = sorted
        .iter()
        .map(|u| to_json(&u.end.record))
        .collect::<Result<Vec<_>, _>>()?;
    let bad_payload: Vec<bool> = sorted.iter().map(|u| u.payload).collect();
    let bad_retry: Vec<bool> = sorted.iter().map(|u| u.retry).collect();
    let default = windlass_queue::JobOptions::default().retry;
    let rows = c
        .query(
            "UPDATE windlass_jobs j SET state = 'discarded', finished_at = $7,
                lease_until = NULL, cancel_requested = false,
                payload = CASE WHEN f.bad_payload THEN to_jsonb(j.payload::text)
                    ELSE j.payload END,
                retry = CASE WHEN f.bad_retry
                    THEN jsonb_set($8::jsonb, '{0}', to_jsonb(j.max_attempts)) ELSE j.retry END,
                attempts = j.attempts || jsonb_build_array(f.record)
             FROM unnest($1::int8[], $2::int8[], $3::text[], $4::jsonb[], $5::bool[],
                $6::bool[]) AS f(id, token, worker, record, bad_payload, bad_retry)
             WHERE j.id = f.id AND j.state = 'running' AND j.lease_token = f.token
               AND j.locked_by = f.worker
             RETURNING j.id, j.lease_token",
            &[
                &ids,
                &tokens,
                &workers,
                &records,
                &bad_payload,
                &bad_retry,
                &now,
                &tokio_postgres::types::Json(default.packed()),
            ],
        )
        .await
        .map_err(pg_error)?;
    let ends: Vec<Finish> = unreadable.iter().map(|u| u.end.clone()).collect();
    Ok(fenced(&ends, &rows))
}

/// Claims up to `left` due jobs from one queue without limits: one statement. `queue = $1`
/// lets it walk the index of due jobs in claim order (with `queue = ANY(..)` the planner
/// scans and sorts every due row).
pub(crate) async fn claim_queue(
    c: &ClientWrapper,
    req: &ClaimRequest,
    queue: &str,
    left: usize,
    now: i64,
) -> Result<Claimed, StoreError> {
    let stmt = c
        .prepare_cached(&format!(
            "WITH picked AS (
                SELECT id FROM windlass_jobs
                WHERE state IN {DUE} AND queue = $1 AND run_at <= $2 AND kind = ANY($3)
                ORDER BY priority, run_at, id LIMIT $4
                FOR UPDATE SKIP LOCKED)
             UPDATE windlass_jobs j SET state = 'running', attempt = j.attempt + 1,
                lease_token = j.lease_token + 1, locked_by = $5, lease_until = $6
             FROM picked WHERE j.id = picked.id
             RETURNING {CLAIMED}"
        ))
        .await
        .map_err(pg_error)?;
    let until = now.saturating_add(duration_ms(req.lease_for));
    let limit = i64::try_from(left).unwrap_or(i64::MAX);
    let rows = c
        .query(
            &stmt,
            &[&queue, &now, &req.kinds, &limit, &req.worker, &until],
        )
        .await
        .map_err(pg_error)?;
    Ok(claimed(rows, &req.worker, now))
}

/// The leases' ids, tokens and workers as three arrays. Callers pass them in job-id order.
/// On a jobs table past a few pages the batch updates below are planned as a nested loop
/// over the arrays with a primary-key lookup inside (checked with `EXPLAIN`), so they lock
/// job rows in array order, and two such batches cannot deadlock each other (a worker's
/// heartbeat, in map order, used to be able to meet its own completions, in arrival
/// order; the lease sweep, `rescue`, locks in id order too and skips rows others hold).
/// This is the plan's order, not a guarantee: on a tiny table a hash join may lock in
/// another order. A deadlock that remains is broken by PostgreSQL after
/// `deadlock_timeout`, and both writers retry.
fn lease_arrays(leases: &[&Lease]) -> (Vec<i64>, Vec<i64>, Vec<String>) {
    (
        leases.iter().map(|l| l.job.0).collect(),
        leases.iter().map(|l| l.token).collect(),
        leases.iter().map(|l| l.worker.clone()).collect(),
    )
}

pub(crate) async fn heartbeat(
    c: &ClientWrapper,
    leases: &[Lease],
    until: i64,
) -> Result<Vec<Heartbeat>, StoreError> {
    let mut refs: Vec<&Lease> = leases.iter().collect();
    refs.sort_unstable_by_key(|l| l.job);
    let (ids, tokens, workers) = lease_arrays(&refs);
    let stmt = c
        .prepare_cached(
            "UPDATE windlass_jobs j SET lease_until = $4
             FROM unnest($1::int8[], $2::int8[], $3::text[]) AS l(id, token, worker)
             WHERE j.id = l.id AND j.state = 'running' AND j.lease_token = l.token
               AND j.locked_by = l.worker
             RETURNING j.id, j.lease_token, j.cancel_requested",
        )
        .await
        .map_err(pg_error)?;
    let rows = c
        .query(&stmt, &[&ids, &tokens, &workers, &until])
        .await
        .map_err(pg_error)?;
    // Keyed by lease, not by job: a stale lease of a job is not held because the job's
    // current lease is.
    let held: std::collections::HashMap<(i64, i64), bool> = rows
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
    Ok(leases
        .iter()
        .map(|l| {
            let cancel = held.get(&(l.job.0, l.token));
            Heartbeat {
                held: cancel.is_some(),
                cancel_requested: cancel.copied().unwrap_or(false),
            }
        })
        .collect())
}

pub(crate) async fn finish(
    c: &ClientWrapper,
    finished: &[Finish],
    now: i64,
) -> Result<Vec<Fenced>, StoreError> {
    // In job-id order (see `lease_arrays`); the answers are matched by id and token.
    let mut sorted: Vec<&Finish> = finished.iter().collect();
    sorted.sort_unstable_by_key(|f| f.lease.job);
    let refs: Vec<&Lease> = sorted.iter().map(|f| &f.lease).collect();
    let (ids, tokens, workers) = lease_arrays(&refs);
    // The common batch: every attempt completed, all from one worker. Its statement carries
    // three arrays, and the server builds each completion's attempt record itself.
    if let Some(first) = finished.first()
        && finished
            .iter()
            .all(|f| f.next == NextState::Completed && f.lease.worker == first.lease.worker)
    {
        let stmt = c
            .prepare_cached(
                // The completing attempt stays in columns (migration 6): its worker in
                // locked_by, its end in completed_at_ms.
                "UPDATE windlass_jobs j SET state = 'completed', finished_at = $3,
                    lease_until = NULL, cancel_requested = false, completed_at_ms = f.at_ms
                 FROM unnest($1::int8[], $2::int8[], $5::int8[]) AS f(id, token, at_ms)
                 WHERE j.id = f.id AND j.state = 'running' AND j.lease_token = f.token
                   AND j.locked_by = $4
                 RETURNING j.id, j.lease_token",
            )
            .await
            .map_err(pg_error)?;
        let at: Vec<i64> = sorted.iter().map(|f| f.record.at_ms).collect();
        let rows = c
            .query(&stmt, &[&ids, &tokens, &now, &first.lease.worker, &at])
            .await
            .map_err(pg_error)?;
        return Ok(fenced(finished, &rows));
    }
    let mut states = Vec::new();
    let mut run_ats: Vec<Option<i64>> = Vec::new();
    let mut finished_ats: Vec<Option<i64>> = Vec::new();
    let mut uncount: Vec<i32> = Vec::new();
    let mut records = Vec::new();
    let mut at: Vec<i64> = Vec::new();
    for f in sorted {
        let (state, run_at, u) = match f.next {
            NextState::Completed => (JobState::Completed, None, 0),
            NextState::Retryable { run_at_ms } => (JobState::Retryable, Some(run_at_ms), 0),
            NextState::Snoozed { run_at_ms } => (JobState::Scheduled, Some(run_at_ms), 1),
            NextState::Discarded => (JobState::Discarded, None, 0),
            NextState::Cancelled => (JobState::Cancelled, None, 0),
        };
        states.push(state.as_str().to_string());
        run_ats.push(run_at);
        finished_ats.push(state.is_terminal().then_some(now));
        uncount.push(u);
        records.push(to_json(&f.record)?);
        at.push(f.record.at_ms);
    }
    let stmt = c
        .prepare_cached(
            "UPDATE windlass_jobs j SET
                state = CASE WHEN j.cancel_requested AND f.state IN ('retryable', 'scheduled')
                    THEN 'cancelled' ELSE f.state END,
                run_at = CASE WHEN j.wake_requested AND f.run_at IS NOT NULL
                    THEN LEAST(f.run_at, $9) ELSE COALESCE(f.run_at, j.run_at) END,
                wake_requested = false,
                finished_at = CASE WHEN j.cancel_requested
                    AND f.state IN ('retryable', 'scheduled') THEN $9 ELSE f.finished_at END,
                attempt = j.attempt - f.uncount, lease_until = NULL, cancel_requested = false,
                -- A completion keeps its record in columns (migration 6); the rest append.
                locked_by = CASE WHEN f.state = 'completed' THEN j.locked_by END,
                completed_at_ms = CASE WHEN f.state = 'completed' THEN f.at_ms END,
                attempts = CASE WHEN f.state = 'completed' THEN j.attempts
                    ELSE j.attempts || jsonb_build_array(f.record) END
             FROM unnest($1::int8[], $2::int8[], $3::text[], $4::text[], $5::int8[], $6::int8[],
                $7::int4[], $8::jsonb[], $10::int8[])
                AS f(id, token, worker, state, run_at, finished_at, uncount, record, at_ms)
             WHERE j.id = f.id AND j.state = 'running' AND j.lease_token = f.token
               AND j.locked_by = f.worker
             RETURNING j.id, j.lease_token",
        )
        .await
        .map_err(pg_error)?;
    let rows = c
        .query(
            &stmt,
            &[
                &ids,
                &tokens,
                &workers,
                &states,
                &run_ats,
                &finished_ats,
                &uncount,
                &records,
                &now,
                &at,
            ],
        )
        .await
        .map_err(pg_error)?;
    Ok(fenced(finished, &rows))
}

/// Which of `finished` the update applied (it returned their id and token).
/// A lease given twice is applied once (the update writes a row once): the first answer is
/// `Applied`, the repeats `Rejected`, as when they are written one by one.
fn fenced(finished: &[Finish], rows: &[Row]) -> Vec<Fenced> {
    let mut applied: std::collections::HashSet<(i64, i64)> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    finished
        .iter()
        .map(|f| {
            if applied.remove(&(f.lease.job.0, f.lease.token)) {
                Fenced::Applied
            } else {
                Fenced::Rejected
            }
        })
        .collect()
}

pub(crate) async fn progress(
    c: &ClientWrapper,
    lease: &Lease,
    value: &Value,
) -> Result<Fenced, StoreError> {
    let n = c
        .execute(
            "UPDATE windlass_jobs SET progress = $1
             WHERE id = $2 AND state = 'running' AND lease_token = $3 AND locked_by = $4",
            &[value, &lease.job.0, &lease.token, &lease.worker],
        )
        .await
        .map_err(pg_error)?;
    Ok(if n == 1 {
        Fenced::Applied
    } else {
        Fenced::Rejected
    })
}

pub(crate) async fn rescue(
    c: &ClientWrapper,
    quarantine_after: u32,
    now: i64,
) -> Result<Rescued, StoreError> {
    let q = i32::try_from(quarantine_after).unwrap_or(i32::MAX);
    // The expired rows are locked in id order, as the batch writes lock theirs
    // (`lease_arrays`), and a row another transaction holds is skipped, not waited for: a
    // heartbeat or completion racing the sweep wins, and a lease still expired when it
    // commits is swept next time. SET expressions read the row as it was before the update.
    let rows = c
        .query(
            "WITH x AS (
                SELECT id FROM windlass_jobs WHERE state = 'running' AND lease_until < $2
                ORDER BY id FOR UPDATE SKIP LOCKED)
             UPDATE windlass_jobs j SET
                lease_expiries = j.lease_expiries + 1,
                state = CASE
                    WHEN j.cancel_requested THEN 'cancelled'
                    WHEN j.lease_expiries + 1 >= $1 OR j.attempt >= j.max_attempts
                        THEN 'discarded'
                    ELSE 'available' END,
                finished_at = CASE
                    WHEN j.cancel_requested OR j.lease_expiries + 1 >= $1
                        OR j.attempt >= j.max_attempts THEN $2 ELSE NULL END,
                run_at = $2, locked_by = NULL, lease_until = NULL,
                attempts = j.attempts || jsonb_build_array(jsonb_build_object(
                    'attempt', j.attempt, 'worker', j.locked_by, 'at_ms', $2::int8,
                    'outcome', 'lease_expired',
                    'error', 'lease expired: the worker crashed, hung or lost the database',
                    'class', 'transient'))
             FROM x
             WHERE j.id = x.id AND j.state = 'running' AND j.lease_until < $2
             RETURNING j.id, j.state, j.lease_expiries",
            &[&q, &now],
        )
        .await
        .map_err(pg_error)?;
    let mut out = Rescued::default();
    for r in rows {
        let id = JobId(r.get(0));
        let state: String = r.get(1);
        let expiries: i32 = r.get(2);
        out.record(
            id,
            &state,
            u32::try_from(expiries).unwrap_or(0),
            quarantine_after,
        );
    }
    Ok(out.sorted())
}

pub(crate) async fn cancel<C: GenericClient>(
    c: &C,
    id: JobId,
    now: i64,
) -> Result<Option<JobState>, StoreError> {
    // One statement: a running job is flagged, a live one cancelled, a finished one left.
    let row = c
        .query_opt(
            "WITH old AS (SELECT id, state FROM windlass_jobs WHERE id = $1 FOR UPDATE),
             upd AS (
                UPDATE windlass_jobs j SET
                    state = CASE WHEN old.state IN ('scheduled','available','retryable')
                                 THEN 'cancelled' ELSE j.state END,
                    finished_at = CASE WHEN old.state IN ('scheduled','available','retryable')
                                 THEN $2 ELSE j.finished_at END,
                    cancel_requested = (old.state = 'running')
                FROM old WHERE j.id = old.id
                RETURNING j.state)
             SELECT state FROM upd",
            &[&id.0, &now],
        )
        .await
        .map_err(pg_error)?;
    row.map(|r| parse_state(r.get(0))).transpose()
}

pub(crate) async fn replay(
    c: &ClientWrapper,
    ids: &[JobId],
    now: i64,
) -> Result<Vec<JobId>, StoreError> {
    let ids: Vec<i64> = ids.iter().map(|i| i.0).collect();
    let rows = c
        .query(
            "UPDATE windlass_jobs SET state = 'available', attempt = 0, lease_expiries = 0,
                run_at = $2, finished_at = NULL, cancel_requested = false,
                -- A completion kept in columns joins the history (one stored by an older
                -- worker is already in it, and left locked_by NULL: the same test as the
                -- reader's, so a stale completed_at_ms an older replay left is ignored).
                attempts = CASE WHEN state = 'completed' AND completed_at_ms IS NOT NULL
                    AND locked_by IS NOT NULL
                    THEN attempts || jsonb_build_array(jsonb_build_object(
                        'attempt', attempt, 'worker', locked_by, 'at_ms', completed_at_ms,
                        'outcome', 'completed', 'error', NULL, 'class', NULL))
                    ELSE attempts END,
                locked_by = NULL, completed_at_ms = NULL
             WHERE id = ANY($1) AND state IN ('discarded', 'cancelled', 'completed')
             RETURNING id",
            &[&ids, &now],
        )
        .await
        .map_err(pg_error)?;
    let mut out: Vec<JobId> = rows.iter().map(|r| JobId(r.get(0))).collect();
    out.sort();
    Ok(out)
}

pub(crate) async fn prune(
    c: &ClientWrapper,
    states: &[JobState],
    before: i64,
) -> Result<u64, StoreError> {
    let states: Vec<String> = states
        .iter()
        .filter(|s| s.is_terminal())
        .map(|s| s.as_str().to_string())
        .collect();
    if states.is_empty() {
        return Ok(0);
    }
    c.execute(
        "DELETE FROM windlass_jobs WHERE finished_at < $1 AND state = ANY($2)",
        &[&before, &states],
    )
    .await
    .map_err(pg_error)
}

const RECORD_COLUMNS: &str = "id, kind, queue, payload, state, priority, attempt, retry,
    timeout_ms, tags, unique_key, created_at, run_at, finished_at, locked_by, lease_expiries,
    cancel_requested, progress, attempts, limit_key, trace_context, completed_at_ms";

/// A JSONB column as a value. JSONB holds what serde_json refuses to read (numbers past
/// f64, nesting deeper than 128): that is a typed error here, never a panic.
fn json_column<T: for<'a> tokio_postgres::types::FromSql<'a>>(
    r: &Row,
    at: usize,
    what: &str,
) -> Result<T, StoreError> {
    r.try_get(at).map_err(|e| {
        let why = decode_reason(&e);
        StoreError::Corrupt(format!("job {}: {what}: {why}", r.get::<_, i64>(0)))
    })
}

fn record(r: &Row) -> Result<JobRecord, StoreError> {
    let attempt: i32 = r.get(6);
    let timeout_ms: i64 = r.get(8);
    let expiries: i32 = r.get(15);
    let attempt = u32::try_from(attempt).unwrap_or(0);
    let state = parse_state(r.get(4))?;
    let mut attempts = serde_json::from_value::<Vec<AttemptRecord>>(r.get(18))
        .map_err(|e| StoreError::Corrupt(format!("attempts: {e}")))?;
    let mut locked_by: Option<String> = r.get(14);
    if state == JobState::Completed {
        // The completing attempt lives in columns (migration 6); an older worker's
        // completion left completed_at_ms NULL and is already in `attempts`.
        let at_ms: Option<i64> = r.get(21);
        if let (Some(worker), Some(at_ms)) = (locked_by.take(), at_ms) {
            attempts.push(AttemptRecord {
                attempt,
                worker,
                at_ms,
                outcome: "completed".into(),
                error: None,
                class: None,
            });
        }
    }
    Ok(JobRecord {
        id: JobId(r.get(0)),
        kind: r.get(1),
        queue: r.get(2),
        payload: json_column(r, 3, "payload")?,
        state,
        priority: r.get(5),
        attempt,
        retry: parse_retry(r.get(7))?,
        timeout: std::time::Duration::from_millis(u64::try_from(timeout_ms).unwrap_or(0)),
        tags: serde_json::from_value(r.get(9)).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        unique_key: r.get(10),
        created_at_ms: r.get(11),
        run_at_ms: r.get(12),
        finished_at_ms: r.get(13),
        locked_by,
        lease_expiries: u32::try_from(expiries).unwrap_or(0),
        cancel_requested: r.get(16),
        progress: json_column(r, 17, "progress")?,
        attempts,
        limit_key: r.get(19),
        trace_context: r.get(20),
    })
}

pub(crate) async fn get(c: &ClientWrapper, id: JobId) -> Result<Option<JobRecord>, StoreError> {
    let sql = format!("SELECT {RECORD_COLUMNS} FROM windlass_jobs WHERE id = $1");
    let row = c.query_opt(&sql, &[&id.0]).await.map_err(pg_error)?;
    row.as_ref().map(record).transpose()
}

pub(crate) async fn list(c: &ClientWrapper, f: &JobFilter) -> Result<Vec<JobRecord>, StoreError> {
    let states: Vec<String> = f.states.iter().map(|s| s.as_str().to_string()).collect();
    let limit = i64::try_from(if f.limit == 0 {
        100
    } else {
        f.limit.min(10_000)
    })
    .unwrap_or(100);
    let sql = format!(
        "SELECT {RECORD_COLUMNS} FROM windlass_jobs
         WHERE id > $1 AND ($2::text IS NULL OR queue = $2) AND ($3::text IS NULL OR kind = $3)
           AND (cardinality($4::text[]) = 0 OR state = ANY($4))
         ORDER BY id LIMIT $5"
    );
    let rows = c
        .query(
            &sql,
            &[
                &f.after.map_or(0, |a| a.0),
                &f.queue,
                &f.kind,
                &states,
                &limit,
            ],
        )
        .await
        .map_err(pg_error)?;
    rows.iter().map(record).collect()
}

pub(crate) async fn stats(c: &ClientWrapper, now: i64) -> Result<Vec<QueueStats>, StoreError> {
    let mut by_queue: std::collections::BTreeMap<String, QueueStats> = Default::default();
    let rows = c
        .query(
            "SELECT queue, state, COUNT(*) FROM windlass_jobs GROUP BY queue, state",
            &[],
        )
        .await
        .map_err(pg_error)?;
    for r in rows {
        let queue: String = r.get(0);
        let state = parse_state(r.get(1))?;
        let n: i64 = r.get(2);
        let entry = by_queue.entry(queue.clone()).or_insert_with(|| QueueStats {
            queue,
            ..QueueStats::default()
        });
        if let Some(i) = JobState::ALL.iter().position(|s| *s == state) {
            entry.counts[i] = u64::try_from(n).unwrap_or(0);
        }
    }
    let sql = format!(
        "SELECT queue, MIN(run_at) FROM windlass_jobs WHERE state IN {DUE} AND run_at <= $1 GROUP BY queue"
    );
    for r in c.query(&sql, &[&now]).await.map_err(pg_error)? {
        let queue: String = r.get(0);
        if let Some(s) = by_queue.get_mut(&queue) {
            s.oldest_due_ms = r.get(1);
        }
    }
    let since = now - 60_000;
    for r in c
        .query(
            "SELECT queue, COUNT(*) FROM windlass_jobs
             WHERE state = 'completed' AND finished_at >= $1 GROUP BY queue",
            &[&since],
        )
        .await
        .map_err(pg_error)?
    {
        let queue: String = r.get(0);
        let n: i64 = r.get(1);
        if let Some(s) = by_queue.get_mut(&queue) {
            s.completed_last_minute = u64::try_from(n).unwrap_or(0);
        }
    }
    Ok(by_queue.into_values().collect())
}

pub(crate) async fn unknown_kinds(
    c: &ClientWrapper,
    queues: &[String],
    kinds: &[String],
) -> Result<Vec<String>, StoreError> {
    let sql = format!(
        "SELECT DISTINCT kind FROM windlass_jobs
         WHERE state IN {DUE} AND queue = ANY($1) AND NOT (kind = ANY($2)) ORDER BY kind"
    );
    let rows = c.query(&sql, &[&queues, &kinds]).await.map_err(pg_error)?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

fn parse_retry(v: Value) -> Result<RetrySchedule, StoreError> {
    serde_json::from_value(v).map_err(|e| StoreError::Corrupt(format!("retry schedule: {e}")))
}

fn parse_state(s: &str) -> Result<JobState, StoreError> {
    JobState::parse(s).ok_or_else(|| StoreError::Corrupt(format!("unknown job state `{s}`")))
}
