//! Group commit for workflow journal writes.
//!
//! Every finished step writes one journal entry, and a step's result may be returned only
//! once its entry is committed: with many runs in flight, one commit per entry makes the
//! database's commit rate (one WAL flush each) the ceiling on steps per second. Here the
//! entries that arrive while earlier ones are being written wait together and go out as
//! **one statement** (one commit) over `unnest`ed arrays; each writer is answered only after
//! that commit. A lone writer waits for nobody: its entry is sent at once.
//!
//! Insert-only, first writer wins, as [`FlowStore::record`](windlass_flow::FlowStore::record)
//! requires: `ON CONFLICT DO NOTHING`, and an entry that was not inserted is read back. An
//! entry another transaction committed after this statement's snapshot is invisible to its
//! read, so it is retried alone with a new snapshot. Rows are inserted in `(run, key)` order,
//! so two batches in flight that share keys take their locks in the same order (no deadlock);
//! a batch the database refuses is written again one entry at a time, so one bad entry fails
//! only its own writer.
//!
//! The writer task runs on the runtime of the store's first journal write; if that runtime
//! is gone, writes go straight to the database.

use std::collections::HashMap;

use deadpool_postgres::Pool;
use tokio::sync::oneshot;
use windlass_flow::JournalEntry;
use windlass_queue::StoreError;

use crate::flow::{entry_from, record_one};
use crate::group_commit::GroupWriter;
use crate::pg_error;

/// Batches written at once. One: a write that arrives while a batch is being written waits
/// for that commit, and so joins the next batch instead of going out nearly alone. Two in
/// flight measured 15-25% fewer workflows/s in WF1 than one (the database is CPU-bound there, and
/// each statement costs a plan, an executor start-up and a commit; see BENCHMARKS.md). A
/// lone write still goes at once.
pub(crate) const IN_FLIGHT: usize = 1;

/// The most entries in one statement.
const MAX_BATCH: usize = 512;

/// One entry waiting to be written.
pub(crate) struct Pending {
    pub(crate) run: String,
    pub(crate) entry: JournalEntry,
    pub(crate) reply: oneshot::Sender<Result<JournalEntry, StoreError>>,
}

/// Starts the writer task on the current runtime (see `group_commit.rs`).
pub(crate) fn spawn(pool: Pool) -> GroupWriter<Pending> {
    // Entries of one key may share a batch: the statement inserts in (run, key) order and
    // the first of them wins, as two writers of one entry require.
    GroupWriter::spawn(
        MAX_BATCH,
        IN_FLIGHT,
        |_| None,
        move |batch| {
            let pool = pool.clone();
            async move { write(&pool, batch).await }
        },
    )
}

const BATCH: &str = "WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[], $5::text[],
        $6::int4[], $7::int8[], $8::int8[], $9::int8[])
        WITH ORDINALITY AS t(run_id, key, kind, output, error, attempts, started_at,
            finished_at, after_seq, ord)),
ins AS (
    INSERT INTO windlass_flow_journal
        (run_id, key, kind, output, error, attempts, started_at, finished_at, after_seq)
    SELECT run_id, key, kind, output, error, attempts, started_at, finished_at, after_seq
    FROM input ORDER BY run_id, key
    ON CONFLICT (run_id, key) DO NOTHING
    RETURNING run_id, seq, key, kind, output, error, attempts, started_at, finished_at,
        after_seq)
SELECT run_id, seq, key, kind, output, error, attempts, started_at, finished_at, after_seq
FROM ins
UNION ALL
SELECT j.run_id, j.seq, j.key, j.kind, j.output, j.error, j.attempts, j.started_at,
    j.finished_at, j.after_seq
FROM windlass_flow_journal j JOIN input i ON j.run_id = i.run_id AND j.key = i.key
WHERE NOT EXISTS (SELECT 1 FROM ins WHERE ins.run_id = i.run_id AND ins.key = i.key)";

async fn write(pool: &Pool, batch: Vec<Pending>) {
    let client = match pool.get().await {
        Ok(c) => c,
        Err(e) => {
            let e = StoreError::Unavailable(format!("no database connection: {e}"));
            for p in batch {
                let _ = p.reply.send(Err(e.clone()));
            }
            return;
        }
    };
    if let [_] = batch.as_slice() {
        // One entry: the single-row statement (no arrays to build or unnest).
        for p in batch {
            let stored = record_one(&client, &p.run, &p.entry).await;
            let _ = p.reply.send(stored);
        }
        return;
    }
    let mut runs = Vec::with_capacity(batch.len());
    let mut keys = Vec::with_capacity(batch.len());
    let mut kinds = Vec::with_capacity(batch.len());
    let mut outputs = Vec::with_capacity(batch.len());
    let mut errors = Vec::with_capacity(batch.len());
    let mut attempts = Vec::with_capacity(batch.len());
    let mut started = Vec::with_capacity(batch.len());
    let mut finished = Vec::with_capacity(batch.len());
    let mut after = Vec::with_capacity(batch.len());
    for p in &batch {
        let (output, error) = match &p.entry.outcome {
            Ok(v) => (Some(v.clone()), None),
            Err(e) => (None, Some(e.clone())),
        };
        runs.push(p.run.clone());
        keys.push(p.entry.key.clone());
        kinds.push(p.entry.kind.as_str());
        outputs.push(output);
        errors.push(error);
        attempts.push(i32::try_from(p.entry.attempts).unwrap_or(i32::MAX));
        started.push(p.entry.started_at_ms);
        finished.push(p.entry.finished_at_ms);
        after.push(p.entry.after);
    }
    let rows = match client.prepare_cached(BATCH).await {
        Ok(stmt) => client
            .query(
                &stmt,
                &[
                    &runs, &keys, &kinds, &outputs, &errors, &attempts, &started, &finished, &after,
                ],
            )
            .await
            .map_err(pg_error),
        Err(e) => Err(pg_error(e)),
    };
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => {
            // One entry the database refuses must not fail the others: each alone.
            tracing::warn!(error = %e, entries = batch.len(), "a journal batch failed; writing its entries one by one");
            for p in batch {
                let stored = record_one(&client, &p.run, &p.entry).await;
                let _ = p.reply.send(stored);
            }
            return;
        }
    };
    let mut stored: HashMap<(String, String), Result<JournalEntry, StoreError>> = HashMap::new();
    for row in &rows {
        let run: Result<String, _> = row.try_get(0);
        let key: Result<String, _> = row.try_get(2);
        if let (Ok(run), Ok(key)) = (run, key) {
            stored.insert((run, key), entry_from(row, 1));
        }
    }
    for p in batch {
        let reply = match stored.get(&(p.run.clone(), p.entry.key.clone())) {
            Some(entry) => entry.clone(),
            // Committed by another writer after this statement's snapshot: read it anew.
            None => record_one(&client, &p.run, &p.entry).await,
        };
        let _ = p.reply.send(reply);
    }
}
