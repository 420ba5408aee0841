//! The store's operations as SQL on the writer's connection. Each runs inside the writer's
//! group transaction (in its own savepoint), so each is atomic and serialised with every
//! other write to the file, from this process or another.

use rusqlite::{Connection, OptionalExtension, Row, params, params_from_iter};
use serde_json::Value;
use windlass_policy::RetrySchedule;
use windlass_queue::{
    AttemptRecord, ClaimedJob, Enqueued, Fenced, Finish, Heartbeat, JobFilter, JobId, JobRecord,
    JobState, Lease, NewJob, NextState, QueueStats, Rescued, StoreError, duration_ms,
};

use crate::sql_error;

pub(crate) fn json_text(v: &impl serde::Serialize) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(crate) fn placeholders(n: usize, first: usize) -> String {
    (0..n)
        .map(|i| format!("?{}", first + i))
        .collect::<Vec<_>>()
        .join(",")
}

/// The states a claim takes jobs from, as a condition on `state`: exactly the condition of
/// the index of due jobs (migration 6), which a query must repeat to be planned on it.
pub(crate) const DUE: &str = "(state = 'scheduled' OR state = 'available' OR state = 'retryable')";

/// An enqueue's insert of one job.
pub(crate) const INSERT: &str =
    "INSERT INTO windlass_jobs (kind, queue, payload, state, priority, max_attempts, retry,
        timeout_ms, tags, unique_key, created_at, run_at, limit_key, trace_context)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)";

/// A heartbeat of one lease: renewed if still held; says whether cancellation was asked.
pub(crate) const HEARTBEAT: &str = "UPDATE windlass_jobs SET lease_until = ?1
     WHERE id = ?2 AND state = 'running' AND lease_token = ?3 AND locked_by = ?4
     RETURNING cancel_requested";

/// An attempt's end, fenced by its lease.
pub(crate) const FINISH: &str = "UPDATE windlass_jobs SET
        state = CASE WHEN cancel_requested = 1 AND ?1 IN ('retryable', 'scheduled')
            THEN 'cancelled' ELSE ?1 END,
        run_at = CASE WHEN wake_requested = 1 AND ?2 IS NOT NULL THEN MIN(?2, ?9)
            ELSE COALESCE(?2, run_at) END,
        wake_requested = 0,
        finished_at = CASE WHEN cancel_requested = 1 AND ?1 IN ('retryable', 'scheduled')
            THEN ?9 ELSE ?3 END,
        attempt = attempt - ?4, lease_until = NULL, cancel_requested = 0,
        -- A completion keeps its record in columns (see the schema); the rest append.
        locked_by = CASE WHEN ?1 = 'completed' THEN locked_by END,
        completed_at_ms = ?10,
        attempts = CASE WHEN ?1 = 'completed' THEN attempts
            ELSE json_insert(attempts, '$[#]', json(?5)) END
     WHERE id = ?6 AND state = 'running' AND lease_token = ?7 AND locked_by = ?8";

pub(crate) fn enqueue(
    conn: &Connection,
    jobs: Vec<NewJob>,
    now: i64,
) -> Result<Vec<Enqueued>, StoreError> {
    let mut out = Vec::with_capacity(jobs.len());
    let mut insert = conn.prepare_cached(INSERT).map_err(sql_error)?;
    for job in jobs {
        let o = job.options();
        if let Some(u) = &o.unique {
            let states: Vec<&str> = u.states.iter().map(|s| s.as_str()).collect();
            let since = u.window.map_or(i64::MIN, |w| now - duration_ms(w));
            let sql = format!(
                "SELECT id FROM windlass_jobs WHERE queue = ?1 AND kind = ?2 AND unique_key = ?3
                   AND created_at >= ?4 AND state IN ({}) ORDER BY id LIMIT 1",
                placeholders(states.len(), 5)
            );
            let mut stmt = conn.prepare_cached(&sql).map_err(sql_error)?;
            let mut args: Vec<rusqlite::types::Value> = vec![
                o.queue.clone().into(),
                job.kind().to_string().into(),
                u.key.clone().into(),
                since.into(),
            ];
            args.extend(
                states
                    .iter()
                    .map(|s| rusqlite::types::Value::from(s.to_string())),
            );
            let existing: Option<i64> = stmt
                .query_row(params_from_iter(args), |r| r.get(0))
                .optional()
                .map_err(sql_error)?;
            if let Some(id) = existing {
                out.push(Enqueued {
                    id: JobId(id),
                    duplicate: true,
                });
                continue;
            }
        }
        let delay = duration_ms(o.delay);
        let state = if delay > 0 {
            JobState::Scheduled
        } else {
            JobState::Available
        };
        insert
            .execute(params![
                job.kind(),
                o.queue,
                json_text(job.payload())?,
                state.as_str(),
                o.priority,
                o.retry.max_attempts,
                json_text(&o.retry.packed())?,
                duration_ms(o.timeout),
                json_text(&o.tags)?,
                o.unique.as_ref().map(|u| u.key.as_str()),
                now,
                now.saturating_add(delay),
                o.limit_key,
                o.trace_context,
            ])
            .map_err(sql_error)?;
        out.push(Enqueued {
            id: JobId(conn.last_insert_rowid()),
            duplicate: false,
        });
    }
    Ok(out)
}

/// Inserts one job without its unique-key check (the caller guarantees uniqueness, e.g. a
/// workflow run's primary key). With `claim = Some((worker, lease_until))` the job is
/// stored `running`, attempt 1, under lease token 1 for `worker`, and the claim is
/// returned; otherwise it is queued like any enqueue.
pub(crate) fn insert_job(
    conn: &Connection,
    job: &NewJob,
    now: i64,
    claim: Option<(&str, i64)>,
) -> Result<(JobId, Option<ClaimedJob>), StoreError> {
    let o = job.options();
    let delay = duration_ms(o.delay);
    let state = match (claim, delay > 0) {
        (Some(_), _) => JobState::Running,
        (None, true) => JobState::Scheduled,
        (None, false) => JobState::Available,
    };
    let run_at = now.saturating_add(delay);
    conn.prepare_cached(
        "INSERT INTO windlass_jobs (kind, queue, payload, state, priority, max_attempts, retry,
            timeout_ms, tags, unique_key, created_at, run_at, limit_key, trace_context,
            attempt, lease_token, locked_by, lease_until)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?15, ?16, ?17)",
    )
    .map_err(sql_error)?
    .execute(params![
        job.kind(),
        o.queue,
        json_text(job.payload())?,
        state.as_str(),
        o.priority,
        o.retry.max_attempts,
        json_text(&o.retry.packed())?,
        duration_ms(o.timeout),
        json_text(&o.tags)?,
        o.unique.as_ref().map(|u| u.key.as_str()),
        now,
        run_at,
        o.limit_key,
        o.trace_context,
        i64::from(claim.is_some()),
        claim.map(|(w, _)| w),
        claim.map(|(_, until)| until),
    ])
    .map_err(sql_error)?;
    let id = JobId(conn.last_insert_rowid());
    let claimed = claim.map(|(worker, _)| ClaimedJob::first_attempt(job, id, worker, now));
    Ok((id, claimed))
}

/// Makes a waiting job due now, or marks a running one (see `Store::wake`).
pub(crate) fn wake(conn: &Connection, id: JobId, now: i64) -> Result<bool, StoreError> {
    let n = conn
        .prepare_cached(
            "UPDATE windlass_jobs SET
                run_at = CASE WHEN state = 'running' THEN run_at ELSE MIN(run_at, ?2) END,
                wake_requested = CASE WHEN state = 'running' THEN 1 ELSE wake_requested END
             WHERE id = ?1 AND state IN ('scheduled', 'available', 'retryable', 'running')",
        )
        .map_err(sql_error)?
        .execute(params![id.0, now])
        .map_err(sql_error)?;
    Ok(n == 1)
}

pub(crate) fn heartbeat(
    conn: &Connection,
    leases: &[Lease],
    until: i64,
) -> Result<Vec<Heartbeat>, StoreError> {
    let mut stmt = conn.prepare_cached(HEARTBEAT).map_err(sql_error)?;
    leases
        .iter()
        .map(|l| {
            let cancel: Option<bool> = stmt
                .query_row(params![until, l.job.0, l.token, l.worker], |r| r.get(0))
                .optional()
                .map_err(sql_error)?;
            Ok(Heartbeat {
                held: cancel.is_some(),
                cancel_requested: cancel.unwrap_or(false),
            })
        })
        .collect()
}

pub(crate) fn finish(
    conn: &Connection,
    finished: &[Finish],
    now: i64,
) -> Result<Vec<Fenced>, StoreError> {
    let mut stmt = conn.prepare_cached(FINISH).map_err(sql_error)?;
    finished
        .iter()
        .map(|f| {
            let (state, run_at, uncount) = match f.next {
                NextState::Completed => (JobState::Completed, None, 0),
                NextState::Retryable { run_at_ms } => (JobState::Retryable, Some(run_at_ms), 0),
                NextState::Snoozed { run_at_ms } => (JobState::Scheduled, Some(run_at_ms), 1),
                NextState::Discarded => (JobState::Discarded, None, 0),
                NextState::Cancelled => (JobState::Cancelled, None, 0),
            };
            let finished_at = state.is_terminal().then_some(now);
            let completed = state == JobState::Completed;
            let record = if completed {
                None
            } else {
                Some(json_text(&f.record)?)
            };
            let n = stmt
                .execute(params![
                    state.as_str(),
                    run_at,
                    finished_at,
                    uncount,
                    record,
                    f.lease.job.0,
                    f.lease.token,
                    f.lease.worker,
                    now,
                    completed.then_some(f.record.at_ms),
                ])
                .map_err(sql_error)?;
            Ok(if n == 1 {
                Fenced::Applied
            } else {
                Fenced::Rejected
            })
        })
        .collect()
}

pub(crate) fn progress(
    conn: &Connection,
    lease: &Lease,
    value: &Value,
) -> Result<Fenced, StoreError> {
    let n = conn
        .prepare_cached(
            "UPDATE windlass_jobs SET progress = ?1
             WHERE id = ?2 AND state = 'running' AND lease_token = ?3 AND locked_by = ?4",
        )
        .map_err(sql_error)?
        .execute(params![
            json_text(value)?,
            lease.job.0,
            lease.token,
            lease.worker
        ])
        .map_err(sql_error)?;
    Ok(if n == 1 {
        Fenced::Applied
    } else {
        Fenced::Rejected
    })
}

pub(crate) fn rescue(
    conn: &Connection,
    quarantine_after: u32,
    now: i64,
) -> Result<Rescued, StoreError> {
    // SET expressions read the row as it was before the update.
    let mut stmt = conn
        .prepare_cached(
            // The index of running jobs, scanned: never the whole table.
            "UPDATE windlass_jobs INDEXED BY windlass_jobs_running SET
                lease_expiries = lease_expiries + 1,
                state = CASE
                    WHEN cancel_requested = 1 THEN 'cancelled'
                    WHEN lease_expiries + 1 >= ?1 OR attempt >= max_attempts THEN 'discarded'
                    ELSE 'available' END,
                finished_at = CASE
                    WHEN cancel_requested = 1 OR lease_expiries + 1 >= ?1
                        OR attempt >= max_attempts THEN ?2 ELSE NULL END,
                run_at = ?2, locked_by = NULL, lease_until = NULL,
                attempts = json_insert(attempts, '$[#]', json_object(
                    'attempt', attempt, 'worker', locked_by, 'at_ms', ?2,
                    'outcome', 'lease_expired',
                    'error', 'lease expired: the worker crashed, hung or lost the database',
                    'class', 'transient'))
             WHERE state = 'running' AND lease_until < ?2
             RETURNING id, state, lease_expiries",
        )
        .map_err(sql_error)?;
    let mut rows = stmt
        .query(params![quarantine_after, now])
        .map_err(sql_error)?;
    let mut out = Rescued::default();
    while let Some(r) = rows.next().map_err(sql_error)? {
        let id = JobId(r.get(0).map_err(sql_error)?);
        let state: String = r.get(1).map_err(sql_error)?;
        let expiries: u32 = r.get(2).map_err(sql_error)?;
        out.record(id, &state, expiries, quarantine_after);
    }
    Ok(out.sorted())
}

pub(crate) fn cancel(
    conn: &Connection,
    id: JobId,
    now: i64,
) -> Result<Option<JobState>, StoreError> {
    let state: Option<String> = conn
        .query_row(
            "SELECT state FROM windlass_jobs WHERE id = ?1",
            [id.0],
            |r| r.get(0),
        )
        .optional()
        .map_err(sql_error)?;
    let Some(state) = state else { return Ok(None) };
    let state = parse_state(&state)?;
    Ok(Some(match state {
        JobState::Running => {
            conn.execute(
                "UPDATE windlass_jobs SET cancel_requested = 1 WHERE id = ?1",
                [id.0],
            )
            .map_err(sql_error)?;
            JobState::Running
        }
        s if s.is_terminal() => s,
        _ => {
            conn.execute(
                "UPDATE windlass_jobs SET state = 'cancelled', finished_at = ?2 WHERE id = ?1",
                params![id.0, now],
            )
            .map_err(sql_error)?;
            JobState::Cancelled
        }
    }))
}

pub(crate) fn replay(conn: &Connection, ids: &[JobId], now: i64) -> Result<Vec<JobId>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "UPDATE windlass_jobs SET state = 'available', attempt = 0, lease_expiries = 0,
                run_at = ?2, finished_at = NULL, cancel_requested = 0,
                -- A completion kept in columns joins the history (one stored by a version-1
                -- worker is already in it).
                attempts = CASE WHEN state = 'completed' AND completed_at_ms IS NOT NULL
                    THEN json_insert(attempts, '$[#]',
                    json_object('attempt', attempt, 'worker', locked_by,
                        'at_ms', completed_at_ms, 'outcome', 'completed',
                        'error', NULL, 'class', NULL))
                    ELSE attempts END,
                locked_by = NULL, completed_at_ms = NULL
             WHERE id = ?1 AND state IN ('discarded', 'cancelled', 'completed')",
        )
        .map_err(sql_error)?;
    let mut out = Vec::new();
    for id in ids {
        if stmt.execute(params![id.0, now]).map_err(sql_error)? == 1 {
            out.push(*id);
        }
    }
    Ok(out)
}

pub(crate) fn prune(
    conn: &Connection,
    states: &[JobState],
    before: i64,
) -> Result<u64, StoreError> {
    let states: Vec<JobState> = states.iter().copied().filter(|s| s.is_terminal()).collect();
    if states.is_empty() {
        return Ok(0);
    }
    let sql = format!(
        "DELETE FROM windlass_jobs WHERE finished_at < ?1 AND state IN ({})",
        placeholders(states.len(), 2)
    );
    let mut args: Vec<rusqlite::types::Value> = vec![before.into()];
    args.extend(
        states
            .iter()
            .map(|s| rusqlite::types::Value::from(s.as_str().to_string())),
    );
    let n = conn
        .prepare_cached(&sql)
        .map_err(sql_error)?
        .execute(params_from_iter(args))
        .map_err(sql_error)?;
    Ok(n as u64)
}

const RECORD_COLUMNS: &str =
    "id, kind, queue, payload, state, priority, attempt, retry, timeout_ms,
    tags, unique_key, created_at, run_at, finished_at, locked_by, lease_expiries,
    cancel_requested, progress, attempts, limit_key, trace_context, completed_at_ms";

fn record(r: &Row<'_>) -> Result<JobRecord, StoreError> {
    let e = sql_error;
    let payload: String = r.get(3).map_err(e)?;
    let state: String = r.get(4).map_err(e)?;
    let retry: String = r.get(7).map_err(e)?;
    let timeout_ms: i64 = r.get(8).map_err(e)?;
    let tags: String = r.get(9).map_err(e)?;
    let progress: Option<String> = r.get(17).map_err(e)?;
    let attempts: String = r.get(18).map_err(e)?;
    let mut attempts = serde_json::from_str::<Vec<AttemptRecord>>(&attempts)
        .map_err(|x| StoreError::Corrupt(format!("attempts: {x}")))?;
    let mut locked_by: Option<String> = r.get(14).map_err(e)?;
    let attempt: u32 = r.get(6).map_err(e)?;
    let state = parse_state(&state)?;
    if state == JobState::Completed {
        // The completing attempt lives in columns (see the schema).
        let at_ms: Option<i64> = r.get(21).map_err(e)?;
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
        id: JobId(r.get(0).map_err(e)?),
        kind: r.get(1).map_err(e)?,
        queue: r.get(2).map_err(e)?,
        payload: parse_json(&payload)?,
        state,
        priority: r.get(5).map_err(e)?,
        attempt,
        retry: parse_retry(&retry)?,
        timeout: std::time::Duration::from_millis(u64::try_from(timeout_ms).unwrap_or(0)),
        tags: serde_json::from_str(&tags).map_err(|x| StoreError::Corrupt(x.to_string()))?,
        unique_key: r.get(10).map_err(e)?,
        created_at_ms: r.get(11).map_err(e)?,
        run_at_ms: r.get(12).map_err(e)?,
        finished_at_ms: r.get(13).map_err(e)?,
        locked_by,
        lease_expiries: r.get(15).map_err(e)?,
        cancel_requested: r.get(16).map_err(e)?,
        progress: progress.map(|p| parse_json(&p)).transpose()?,
        attempts,
        limit_key: r.get(19).map_err(e)?,
        trace_context: r.get(20).map_err(e)?,
    })
}

pub(crate) fn get(conn: &Connection, id: JobId) -> Result<Option<JobRecord>, StoreError> {
    let sql = format!("SELECT {RECORD_COLUMNS} FROM windlass_jobs WHERE id = ?1");
    let mut stmt = conn.prepare_cached(&sql).map_err(sql_error)?;
    let mut rows = stmt.query([id.0]).map_err(sql_error)?;
    match rows.next().map_err(sql_error)? {
        Some(r) => record(r).map(Some),
        None => Ok(None),
    }
}

pub(crate) fn list(conn: &Connection, f: &JobFilter) -> Result<Vec<JobRecord>, StoreError> {
    let mut sql = format!("SELECT {RECORD_COLUMNS} FROM windlass_jobs WHERE id > ?1");
    let mut args: Vec<rusqlite::types::Value> = vec![f.after.map_or(0, |a| a.0).into()];
    if let Some(q) = &f.queue {
        args.push(q.clone().into());
        sql += &format!(" AND queue = ?{}", args.len());
    }
    if let Some(k) = &f.kind {
        args.push(k.clone().into());
        sql += &format!(" AND kind = ?{}", args.len());
    }
    if !f.states.is_empty() {
        let first = args.len() + 1;
        args.extend(
            f.states
                .iter()
                .map(|s| rusqlite::types::Value::from(s.as_str().to_string())),
        );
        sql += &format!(" AND state IN ({})", placeholders(f.states.len(), first));
    }
    let limit = if f.limit == 0 {
        100
    } else {
        f.limit.min(10_000)
    };
    sql += &format!(" ORDER BY id LIMIT {limit}");
    let mut stmt = conn.prepare_cached(&sql).map_err(sql_error)?;
    let mut rows = stmt.query(params_from_iter(args)).map_err(sql_error)?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().map_err(sql_error)? {
        out.push(record(r)?);
    }
    Ok(out)
}

pub(crate) fn stats(conn: &Connection, now: i64) -> Result<Vec<QueueStats>, StoreError> {
    let mut by_queue: std::collections::BTreeMap<String, QueueStats> = Default::default();
    // Counted here in one pass over the table, not with `GROUP BY queue, state`: no index
    // leads with both, so SQLite would copy every row into a temporary b-tree and sort it
    // first (measured at 100,000 jobs: see BENCHMARKS.md, "Session 12"). Each row is read
    // in place: no allocation unless its queue is new.
    let mut stmt = conn
        .prepare_cached("SELECT queue, state FROM windlass_jobs")
        .map_err(sql_error)?;
    let mut rows = stmt.query([]).map_err(sql_error)?;
    while let Some(r) = rows.next().map_err(sql_error)? {
        let text = |i: usize| -> Result<&str, StoreError> {
            let v = r.get_ref(i).map_err(sql_error)?;
            v.as_str().map_err(|_| {
                let column = if i == 0 { "queue" } else { "state" };
                StoreError::Corrupt(format!(
                    "a job's {column} is not text (stored: {:?})",
                    v.data_type()
                ))
            })
        };
        let (queue, state) = (text(0)?, parse_state(text(1)?)?);
        let entry = match by_queue.get_mut(queue) {
            Some(entry) => entry,
            None => by_queue
                .entry(queue.to_string())
                .or_insert_with(|| QueueStats {
                    queue: queue.to_string(),
                    ..QueueStats::default()
                }),
        };
        if let Some(i) = JobState::ALL.iter().position(|s| *s == state) {
            entry.counts[i] += 1;
        }
    }
    let sql = format!(
        "SELECT queue, MIN(run_at) FROM windlass_jobs WHERE {DUE} AND run_at <= ?1 GROUP BY queue"
    );
    let mut stmt = conn.prepare_cached(&sql).map_err(sql_error)?;
    let mut rows = stmt.query([now]).map_err(sql_error)?;
    while let Some(r) = rows.next().map_err(sql_error)? {
        let queue: String = r.get(0).map_err(sql_error)?;
        if let Some(s) = by_queue.get_mut(&queue) {
            s.oldest_due_ms = r.get(1).map_err(sql_error)?;
        }
    }
    let mut stmt = conn
        .prepare_cached(
            "SELECT queue, COUNT(*) FROM windlass_jobs
             WHERE state = 'completed' AND finished_at >= ?1 GROUP BY queue",
        )
        .map_err(sql_error)?;
    let mut rows = stmt.query([now - 60_000]).map_err(sql_error)?;
    while let Some(r) = rows.next().map_err(sql_error)? {
        let queue: String = r.get(0).map_err(sql_error)?;
        let n: i64 = r.get(1).map_err(sql_error)?;
        if let Some(s) = by_queue.get_mut(&queue) {
            s.completed_last_minute = u64::try_from(n).unwrap_or(0);
        }
    }
    Ok(by_queue.into_values().collect())
}

pub(crate) fn unknown_kinds(
    conn: &Connection,
    queues: &[String],
    kinds: &[String],
) -> Result<Vec<String>, StoreError> {
    if queues.is_empty() {
        return Ok(Vec::new());
    }
    let q = placeholders(queues.len(), 1);
    let mut sql = format!("SELECT DISTINCT kind FROM windlass_jobs WHERE {DUE} AND queue IN ({q})");
    if !kinds.is_empty() {
        sql += &format!(
            " AND kind NOT IN ({})",
            placeholders(kinds.len(), 1 + queues.len())
        );
    }
    sql += " ORDER BY kind";
    let args: Vec<rusqlite::types::Value> = queues
        .iter()
        .chain(kinds)
        .map(|s| rusqlite::types::Value::from(s.clone()))
        .collect();
    let mut stmt = conn.prepare_cached(&sql).map_err(sql_error)?;
    let rows = stmt
        .query_map(params_from_iter(args), |r| r.get::<_, String>(0))
        .map_err(sql_error)?;
    rows.map(|r| r.map_err(sql_error)).collect()
}

pub(crate) fn parse_json(s: &str) -> Result<Value, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("payload: {e}")))
}

pub(crate) fn parse_retry(s: &str) -> Result<RetrySchedule, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("retry schedule: {e}")))
}

fn parse_state(s: &str) -> Result<JobState, StoreError> {
    JobState::parse(s).ok_or_else(|| StoreError::Corrupt(format!("unknown job state `{s}`")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code

    use windlass_queue::conformance::job;
    use windlass_queue::{Store, StoreError};

    use crate::SqliteStore;

    /// A row another program spoiled (a state that is not text) makes the queue counts fail
    /// with an error that says which column, not with a count that skips it.
    #[tokio::test]
    async fn counts_refuse_a_state_that_is_not_text() {
        let store = SqliteStore::in_memory().await.unwrap();
        store.enqueue(vec![job(1), job(2)]).await.unwrap();
        assert_eq!(store.stats().await.unwrap().len(), 1);
        store
            .writer
            .call(
                |c| {
                    c.execute("UPDATE windlass_jobs SET state = x'00' WHERE id = 2", [])
                        .map_err(crate::sql_error)
                },
                None,
            )
            .await
            .unwrap();
        let err = store.stats().await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Corrupt(m) if m.contains("state is not text")),
            "{err:?}"
        );
    }
}
