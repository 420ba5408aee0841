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

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use deadpool_postgres::{ClientWrapper, Pool};
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use windlass_flow::RunStart;
use windlass_queue::{StoreError, duration_ms};

use crate::flow::{START_RUN, start_run_on};
use crate::ops::JobColumns;
use crate::pg_error;

/// Batches written at once, each on its own connection (as for journal entries).
const IN_FLIGHT: usize = 2;

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

/// The sending side of the writer.
pub(crate) struct Writer {
    tx: mpsc::UnboundedSender<Pending>,
    /// The writes in flight: `IN_FLIGHT` permits, shared by the writer's batches and the
    /// callers who write alone.
    slots: Arc<Semaphore>,
    /// Starts sent and not yet taken by the writer.
    queued: Arc<AtomicUsize>,
}

impl Writer {
    /// A write slot for a start to be written at once on the caller's own task, if nothing
    /// waits for the writer and a slot is free: a lone start then costs no hop through the
    /// writer task (WF3, start to first step, is this path). `None`: send it.
    pub(crate) fn alone(&self) -> Option<OwnedSemaphorePermit> {
        if self.queued.load(Ordering::Acquire) > 0 {
            return None;
        }
        Arc::clone(&self.slots).try_acquire_owned().ok()
    }

    /// Hands `p` to the writer; `Err` gives it back if the writer's runtime is gone.
    pub(crate) fn send(&self, p: Pending) -> Result<(), Box<Pending>> {
        self.queued.fetch_add(1, Ordering::AcqRel);
        self.tx.send(p).map_err(|e| {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            Box::new(e.0)
        })
    }
}

/// Starts the writer task on the current runtime; it ends when every sender is dropped.
pub(crate) fn spawn(pool: Pool, channel: Arc<str>) -> Writer {
    let (tx, mut rx) = mpsc::unbounded_channel::<Pending>();
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let queued = Arc::new(AtomicUsize::new(0));
    let writer = Writer {
        tx,
        slots: Arc::clone(&slots),
        queued: Arc::clone(&queued),
    };
    tokio::spawn(async move {
        // Starts put off because their id was already in the batch being built.
        let mut later: Vec<Pending> = Vec::new();
        loop {
            let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            let first = if later.is_empty() {
                match rx.recv().await {
                    Some(p) => {
                        queued.fetch_sub(1, Ordering::AcqRel);
                        p
                    }
                    None => return,
                }
            } else {
                later.remove(0)
            };
            let mut ids: HashSet<String> = HashSet::from([first.start.id.clone()]);
            let mut batch = vec![first];
            let mut kept = Vec::new();
            for p in later.drain(..) {
                if batch.len() < MAX_BATCH && ids.insert(p.start.id.clone()) {
                    batch.push(p);
                } else {
                    kept.push(p);
                }
            }
            later = kept;
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(p) => {
                        queued.fetch_sub(1, Ordering::AcqRel);
                        if ids.insert(p.start.id.clone()) {
                            batch.push(p);
                        } else {
                            later.push(p);
                        }
                    }
                    Err(_) => break,
                }
            }
            let (pool, channel) = (pool.clone(), Arc::clone(&channel));
            tokio::spawn(async move {
                write(&pool, &channel, batch).await;
                drop(slot);
            });
        }
    });
    writer
}

async fn write(pool: &Pool, channel: &str, batch: Vec<Pending>) {
    let client = match pool.get().await {
        Ok(c) => c,
        Err(e) => {
            let e = StoreError::Unavailable(format!("no database connection: {e}"));
            for p in batch {
                let _ = p.reply.send((p.start, Err(e.clone())));
            }
            return;
        }
    };
    if batch.len() > 1 {
        match start_many(&client, &batch).await {
            Ok(mut jobs) => {
                for p in batch {
                    let job = jobs.remove(&p.start.id);
                    let _ = p.reply.send((p.start, Ok(job)));
                }
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, starts = batch.len(), "a batch of direct starts failed; writing them one by one");
            }
        }
    }
    for p in batch {
        let job = start_one(&client, channel, &p.start, p.now).await;
        let _ = p.reply.send((p.start, job));
    }
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
