//! Group commit for run status moves ([`FlowStore::set_run_status`]).
//!
//! A run's status moves on its own, apart from its job's end, when it is cancelled
//! (`running → compensating`), and when a child run ends (its end is written, its parent
//! woken, then its job completed). Other ends go with the job's completion (`ends.rs`). With
//! many runs moving together, one statement per move costs a round trip, a plan and a
//! commit each. Here, as for journal
//! entries (`journal.rs`) and direct runs' ends (`ends.rs`), the moves that arrive while a
//! batch is being written wait together and go out as **one statement** over `unnest`ed
//! arrays; each caller is answered after that commit, which waits for its WAL flush. A lone
//! move is sent at once.
//!
//! Each move is decided exactly as alone: its run's row is locked (runs in id order, so two
//! batches never wait on each other in a cycle), and the move is written only if the
//! run's status [may become](windlass_flow::RunStatus::may_become) the new one, checked on
//! the locked row. A run appears at most once in a batch (a second move of the same run
//! waits for the next). A batch the database refuses is written again one move at a time,
//! so one bad move fails only its own caller.
//!
//! [`FlowStore::set_run_status`]: windlass_flow::FlowStore::set_run_status

use deadpool_postgres::{ClientWrapper, Pool};
use serde_json::Value;
use tokio::sync::oneshot;
use windlass_flow::RunStatus;
use windlass_flow::store::{may_become_sql, may_become_sql_of};
use windlass_queue::StoreError;

use crate::group_commit::{Answer, GroupWriter, write_batch};
use crate::pg_error;

/// Batches written at once: one, as for journal entries (`journal::IN_FLIGHT`).
const IN_FLIGHT: usize = crate::journal::IN_FLIGHT;

/// The most moves in one statement.
const MAX_BATCH: usize = 256;

/// One run's status move, waiting to be written.
pub(crate) struct Pending {
    pub(crate) run: String,
    pub(crate) status: RunStatus,
    pub(crate) output: Option<Value>,
    pub(crate) error: Option<String>,
    /// The run's finish time, for a terminal status.
    pub(crate) finished: Option<i64>,
    /// Whether the move was written.
    pub(crate) reply: oneshot::Sender<Result<bool, StoreError>>,
}

/// Starts the writer task on the current runtime (see `group_commit.rs`); a run's moves
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

impl Answer<bool> for Pending {
    fn answer(self, answer: Result<bool, StoreError>) {
        let _ = self.reply.send(answer);
    }
}

async fn write(pool: &Pool, batch: Vec<Pending>) {
    write_batch(pool, batch, "run status moves", &(), set_all, set_alone).await;
}

async fn set_all(
    client: &ClientWrapper,
    (): &(),
    batch: &[Pending],
) -> Result<Vec<Result<bool, StoreError>>, StoreError> {
    Ok(set_many(client, batch).await?.into_iter().map(Ok).collect())
}

async fn set_alone(client: &ClientWrapper, (): &(), p: &Pending) -> Result<bool, StoreError> {
    set_one(client, p).await
}

/// One move, one statement: whether it was written.
pub(crate) async fn set_one(client: &ClientWrapper, p: &Pending) -> Result<bool, StoreError> {
    let stmt = client
        .prepare_cached(&format!(
            "UPDATE windlass_flow_runs
             SET status = $2, output = COALESCE($3, output), error = COALESCE($4, error),
                 finished_at = COALESCE($5, finished_at)
             WHERE id = $1 AND {}",
            may_become_sql("$2")
        ))
        .await
        .map_err(pg_error)?;
    let changed = client
        .execute(
            &stmt,
            &[&p.run, &p.status.as_str(), &p.output, &p.error, &p.finished],
        )
        .await
        .map_err(pg_error)?;
    Ok(changed > 0)
}

/// Several moves (of distinct runs), one statement: whether each was written, in `batch`'s
/// order. An error is the statement's: nothing of it was written.
pub(crate) async fn set_many(
    client: &ClientWrapper,
    batch: &[Pending],
) -> Result<Vec<bool>, StoreError> {
    // The runs are locked one by one through a lateral lookup by id (an index scan at any
    // table size, unlike `id = ANY($1)`: see `ends.rs`), in id order, and each is updated
    // from its locked row.
    let stmt = client
        .prepare_cached(&format!(
            "WITH m AS (
                SELECT * FROM unnest($1::text[], $2::text[], $3::jsonb[], $4::text[],
                    $5::int8[]) AS m(run_id, status, output, error, finished)),
             lk AS (
                SELECT r.id, r.status
                FROM (SELECT DISTINCT run_id FROM m ORDER BY run_id) AS u,
                    LATERAL (SELECT id, status FROM windlass_flow_runs WHERE id = u.run_id
                             FOR UPDATE) AS r),
             up AS (
                UPDATE windlass_flow_runs r
                SET status = m.status, output = COALESCE(m.output, r.output),
                    error = COALESCE(m.error, r.error),
                    finished_at = COALESCE(m.finished, r.finished_at)
                FROM m JOIN lk ON lk.id = m.run_id
                WHERE r.id = m.run_id AND {}
                RETURNING r.id)
             SELECT id FROM up",
            may_become_sql_of("lk.status", "m.status")
        ))
        .await
        .map_err(pg_error)?;
    let n = batch.len();
    let mut runs = Vec::with_capacity(n);
    let mut statuses = Vec::with_capacity(n);
    let mut outputs = Vec::with_capacity(n);
    let mut errors = Vec::with_capacity(n);
    let mut finished = Vec::with_capacity(n);
    for p in batch {
        runs.push(p.run.as_str());
        statuses.push(p.status.as_str());
        outputs.push(p.output.as_ref());
        errors.push(p.error.as_deref());
        finished.push(p.finished);
    }
    let rows = client
        .query(&stmt, &[&runs, &statuses, &outputs, &errors, &finished])
        .await
        .map_err(pg_error)?;
    let mut written = std::collections::HashSet::with_capacity(rows.len());
    for row in &rows {
        let run: String = row.try_get(0).map_err(pg_error)?;
        written.insert(run);
    }
    Ok(batch.iter().map(|p| written.contains(&p.run)).collect())
}
