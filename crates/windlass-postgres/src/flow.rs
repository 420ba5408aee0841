//! The workflow layer's tables in the store's schema: runs and their journals
//! ([`FlowStore`]). Every operation is one statement (autocommit), so an entry is durable
//! when `record` returns; the unique `(run_id, key)` makes concurrent writers of one entry
//! agree on the first.

use serde_json::Value;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use windlass_flow::{EntryKind, FlowStore, JournalEntry, NewRun, RunFilter, RunRecord, RunStatus};
use windlass_queue::{JobId, StoreError};

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

const ENTRY_COLUMNS: &str = "seq, key, kind, output, error, attempts, started_at, finished_at";

fn entry_from(row: &Row) -> Result<JournalEntry, StoreError> {
    let kind: String = row.try_get(2).map_err(pg_error)?;
    let output: Option<Value> = row.try_get(3).map_err(pg_error)?;
    let error: Option<String> = row.try_get(4).map_err(pg_error)?;
    let attempts: i32 = row.try_get(5).map_err(pg_error)?;
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
        seq: row.try_get(0).map_err(pg_error)?,
        key: row.try_get(1).map_err(pg_error)?,
        kind: EntryKind::parse(&kind).ok_or_else(|| corrupt("a journal entry's kind", &kind))?,
        outcome,
        attempts: u32::try_from(attempts).map_err(|e| corrupt("a journal entry's attempts", e))?,
        started_at_ms: row.try_get(6).map_err(pg_error)?,
        finished_at_ms: row.try_get(7).map_err(pg_error)?,
    })
}

impl FlowStore for PostgresStore {
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

    async fn set_run_status(
        &self,
        id: String,
        status: RunStatus,
        output: Option<Value>,
        error: Option<String>,
    ) -> Result<bool, StoreError> {
        let finished = status.is_terminal().then(|| self.clock.now_ms());
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "WITH upd AS (
                    UPDATE windlass_flow_runs
                    SET status = $2, output = COALESCE($3, output), error = COALESCE($4, error),
                        finished_at = COALESCE($5, finished_at)
                    WHERE id = $1 AND status NOT IN ('completed', 'failed', 'halted'))
                 SELECT EXISTS (SELECT 1 FROM windlass_flow_runs WHERE id = $1)",
            )
            .await
            .map_err(pg_error)?;
        let row = client
            .query_one(&stmt, &[&id, &status.as_str(), &output, &error, &finished])
            .await
            .map_err(pg_error)?;
        row.try_get(0).map_err(pg_error)
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
        rows.iter().map(entry_from).collect()
    }

    async fn record(&self, run: String, entry: JournalEntry) -> Result<JournalEntry, StoreError> {
        let (output, error) = match entry.outcome {
            Ok(v) => (Some(v), None),
            Err(e) => (None, Some(e)),
        };
        let attempts = i32::try_from(entry.attempts).unwrap_or(i32::MAX);
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!(
                "WITH ins AS (
                    INSERT INTO windlass_flow_journal
                        (run_id, key, kind, output, error, attempts, started_at, finished_at)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
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
                    ],
                )
                .await
                .map_err(pg_error)?;
            if let Some(row) = row {
                return entry_from(&row);
            }
        }
        Err(StoreError::Unavailable(format!(
            "journal entry `{}` of run `{run}` was being written concurrently; try again",
            entry.key
        )))
    }
}
