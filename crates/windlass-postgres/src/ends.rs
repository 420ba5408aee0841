//! Group commit for the ends of workflow runs ([`FlowStore::end_run`]), direct or driven
//! by a worker (through the queue's `JobContext::complete_with`).
//!
//! A run ends with one write: the run's outcome and its job's fenced completion, in
//! one transaction that waits for its WAL flush (the caller is told the outcome once it is
//! stored). With many runs in flight, one statement per end costs a round trip, a plan and a
//! commit each. Here, as for journal entries (`journal.rs`), the ends that arrive while
//! earlier ones are being written wait together and go out as **one statement** over
//! `unnest`ed arrays; each caller is answered after that commit. A lone end is sent at once.
//!
//! Each end is decided exactly as alone: its run's row is locked first (runs in id order, so
//! two batches never wait on each other in a cycle), its job's completion is written only if
//! the run may still take the end and the attempt's lease holds, and the run's outcome only if
//! the job's was. A run appears at most once in a batch (a second end of the same run waits
//! for the next). A batch the database refuses is written again one end at a time, so one bad
//! end fails only its own caller.
//!
//! [`FlowStore::end_run`]: windlass_flow::FlowStore::end_run

use deadpool_postgres::{ClientWrapper, Pool};
use serde_json::Value;
use tokio::sync::oneshot;
use windlass_flow::RunStatus;
use windlass_flow::store::{EndRun, may_become_sql_of};
use windlass_queue::{Finish, StoreError};

use crate::group_commit::{Answer, GroupWriter, write_batch};
use crate::pg_error;

/// Batches written at once: one, as for journal entries (`journal::IN_FLIGHT`).
const IN_FLIGHT: usize = crate::journal::IN_FLIGHT;

/// The most ends in one statement.
const MAX_BATCH: usize = 256;

/// One run's end, waiting to be written.
pub(crate) struct Pending {
    pub(crate) run: String,
    pub(crate) status: RunStatus,
    pub(crate) output: Option<Value>,
    pub(crate) error: Option<String>,
    pub(crate) finish: Finish,
    /// When the end was asked for: the job's `finished_at` and, if terminal, the run's.
    pub(crate) now: i64,
    pub(crate) reply: oneshot::Sender<Result<EndRun, StoreError>>,
}

/// Starts the writer task on the current runtime (see `group_commit.rs`); a run's ends
/// never share a batch.
pub(crate) fn spawn(pool: Pool) -> GroupWriter<Pending> {
    GroupWriter::spawn(
        MAX_BATCH,
        IN_FLIGHT,
        |p: &Pending| Some(p.run.clone()),
        move |batch| {
            let pool = pool.clone();
            async move { write(&pool, batch).await }
        },
    )
}

impl Answer<EndRun> for Pending {
    fn answer(self, answer: Result<EndRun, StoreError>) {
        let _ = self.reply.send(answer);
    }
}

async fn write(pool: &Pool, batch: Vec<Pending>) {
    write_batch(
        pool,
        batch,
        "run ends",
        &(),
        async |client: &ClientWrapper, (): &(), batch: &[Pending]| end_many(client, batch).await,
        async |client: &ClientWrapper, (): &(), p: &Pending| end_one(client, p).await,
    )
    .await;
}

/// What the database said about one end: whether the job's completion applied, and the
/// run's status before (`None`: no such run).
fn decide(p: &Pending, applied: bool, was: Option<String>) -> Result<EndRun, StoreError> {
    let was = was
        .ok_or_else(|| StoreError::Invalid(format!("end_run: no run `{}`", p.run)))
        .and_then(|s| {
            RunStatus::parse(&s).ok_or_else(|| StoreError::Corrupt(format!("a run's status: {s}")))
        })?;
    Ok(if applied {
        EndRun::Stored
    } else if !was.may_become(p.status) {
        EndRun::RunMoved(was)
    } else {
        EndRun::LeaseLost
    })
}

/// One end, one statement. The run's row is locked first, so a cancel cannot slip between
/// the check that the run may take this end and the writes.
pub(crate) async fn end_one(client: &ClientWrapper, p: &Pending) -> Result<EndRun, StoreError> {
    let stmt = client
        .prepare_cached(&format!(
            "WITH lk AS (SELECT status FROM windlass_flow_runs WHERE id = $6 FOR UPDATE),
             f AS (
                UPDATE windlass_jobs j SET state = 'completed', finished_at = $3,
                    lease_until = NULL, cancel_requested = false,
                    completed_at_ms = $5::int8
                WHERE j.id = $1 AND j.state = 'running' AND j.lease_token = $2
                  AND j.locked_by = $4
                  AND EXISTS (SELECT 1 FROM lk WHERE {})
                RETURNING j.id),
             r AS (
                UPDATE windlass_flow_runs
                SET status = $7, output = COALESCE($8, output), error = COALESCE($9, error),
                    finished_at = COALESCE($10, finished_at)
                WHERE id = $6 AND EXISTS (SELECT 1 FROM f))
             SELECT (SELECT count(*) FROM f), (SELECT status FROM lk)",
            may_become_sql_of("status", "$7")
        ))
        .await
        .map_err(pg_error)?;
    let finished = p.status.is_terminal().then_some(p.now);
    let row = client
        .query_one(
            &stmt,
            &[
                &p.finish.lease.job.0,
                &p.finish.lease.token,
                &p.now,
                &p.finish.lease.worker,
                &p.finish.record.at_ms,
                &p.run,
                &p.status.as_str(),
                &p.output,
                &p.error,
                &finished,
            ],
        )
        .await
        .map_err(pg_error)?;
    let applied: i64 = row.try_get(0).map_err(pg_error)?;
    let was: Option<String> = row.try_get(1).map_err(pg_error)?;
    decide(p, applied == 1, was)
}

/// Several ends (of distinct runs), one statement; answers in `batch`'s order. An error is
/// the statement's: nothing of it was written.
pub(crate) async fn end_many(
    client: &ClientWrapper,
    batch: &[Pending],
) -> Result<Vec<Result<EndRun, StoreError>>, StoreError> {
    // The runs are locked one by one through a lateral lookup by id, not with
    // `WHERE id = ANY($1)`: a connection caches a generic plan after a few executions, and
    // one made while the runs table still fitted in a page or two is a sequential scan with
    // an array filter, kept for the connection's life unless an ANALYZE invalidates it (a
    // 20,000-run WF1 once spent most of its database time re-reading the table). A lookup
    // per id is planned as an index scan at any table size.
    let stmt = client
        .prepare_cached(&format!(
            "WITH e AS (
                SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::text[],
                    $5::int8[], $6::text[], $7::jsonb[], $8::text[], $9::int8[], $10::int8[])
                AS e(run_id, job, token, worker, at_ms, status, output, error, finished, now)),
             lk AS (
                SELECT r.id, r.status
                FROM (SELECT DISTINCT id FROM unnest($1::text[]) AS u(id) ORDER BY id) AS u,
                    LATERAL (SELECT id, status FROM windlass_flow_runs WHERE id = u.id
                             FOR UPDATE) AS r),
             f AS (
                UPDATE windlass_jobs j SET state = 'completed', finished_at = e.now,
                    lease_until = NULL, cancel_requested = false, completed_at_ms = e.at_ms
                FROM e JOIN lk ON lk.id = e.run_id
                WHERE j.id = e.job AND j.state = 'running' AND j.lease_token = e.token
                  AND j.locked_by = e.worker AND {}
                RETURNING j.id),
             r AS (
                UPDATE windlass_flow_runs r
                SET status = e.status, output = COALESCE(e.output, r.output),
                    error = COALESCE(e.error, r.error),
                    finished_at = COALESCE(e.finished, r.finished_at)
                FROM e WHERE r.id = e.run_id AND e.job IN (SELECT id FROM f))
             SELECT e.run_id, e.job IN (SELECT id FROM f), lk.status
             FROM e LEFT JOIN lk ON lk.id = e.run_id",
            may_become_sql_of("lk.status", "e.status")
        ))
        .await
        .map_err(pg_error)?;
    let n = batch.len();
    let mut runs = Vec::with_capacity(n);
    let mut jobs = Vec::with_capacity(n);
    let mut tokens = Vec::with_capacity(n);
    let mut workers = Vec::with_capacity(n);
    let mut at = Vec::with_capacity(n);
    let mut statuses = Vec::with_capacity(n);
    let mut outputs = Vec::with_capacity(n);
    let mut errors = Vec::with_capacity(n);
    let mut finished = Vec::with_capacity(n);
    let mut nows = Vec::with_capacity(n);
    // Jobs in id order, as the queue's batch updates pass them (`ops::lease_arrays`: the
    // order rows are locked in when the plan drives the job updates from `e`); the answers
    // are matched by run.
    let mut sorted: Vec<_> = batch.iter().collect();
    sorted.sort_unstable_by_key(|p| p.finish.lease.job);
    for p in sorted {
        runs.push(p.run.as_str());
        jobs.push(p.finish.lease.job.0);
        tokens.push(p.finish.lease.token);
        workers.push(p.finish.lease.worker.as_str());
        at.push(p.finish.record.at_ms);
        statuses.push(p.status.as_str());
        outputs.push(p.output.as_ref());
        errors.push(p.error.as_deref());
        finished.push(p.status.is_terminal().then_some(p.now));
        nows.push(p.now);
    }
    let rows = client
        .query(
            &stmt,
            &[
                &runs, &jobs, &tokens, &workers, &at, &statuses, &outputs, &errors, &finished,
                &nows,
            ],
        )
        .await
        .map_err(pg_error)?;
    let mut said = std::collections::HashMap::with_capacity(rows.len());
    for row in &rows {
        let run: String = row.try_get(0).map_err(pg_error)?;
        let applied: bool = row.try_get(1).map_err(pg_error)?;
        let was: Option<String> = row.try_get(2).map_err(pg_error)?;
        said.insert(run, (applied, was));
    }
    Ok(batch
        .iter()
        .map(|p| match said.remove(&p.run) {
            Some((applied, was)) => decide(p, applied, was),
            None => Err(StoreError::Corrupt(format!(
                "end_run: the batch statement said nothing of run `{}`",
                p.run
            ))),
        })
        .collect())
}
