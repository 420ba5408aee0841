//! Queue limits on PostgreSQL: a claim from a limited queue runs in a transaction that first
//! takes an advisory lock on the queue, so claims from every process are serialised while they
//! count what runs, take tokens from the buckets and choose what fits.

use std::collections::{BTreeSet, HashMap};

use deadpool_postgres::Object;
use tokio_postgres::GenericClient;
use windlass_queue::limits::{Bucket, ClaimBudget, QueueLimits, Rate, choose, taken_per_key};
use windlass_queue::{ClaimRequest, StoreError, duration_ms};

use crate::ops::{CLAIMED, DUE, claimed};
use crate::pg_error;

pub(crate) async fn get<C: GenericClient>(c: &C, queue: &str) -> Result<QueueLimits, StoreError> {
    let row = c
        .query_opt(
            "SELECT limits FROM windlass_queue_limits WHERE queue = $1",
            &[&queue],
        )
        .await
        .map_err(pg_error)?;
    row.map_or(Ok(QueueLimits::default()), |r| {
        serde_json::from_value(r.get(0))
            .map_err(|e| StoreError::Corrupt(format!("queue limits: {e}")))
    })
}

pub(crate) async fn set<C: GenericClient>(
    c: &C,
    queue: &str,
    limits: &QueueLimits,
) -> Result<(), StoreError> {
    if limits.is_unlimited() {
        c.execute(
            "DELETE FROM windlass_queue_limits WHERE queue = $1",
            &[&queue],
        )
        .await
        .map_err(pg_error)?;
        return Ok(());
    }
    let value = serde_json::to_value(limits).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    c.execute(
        "INSERT INTO windlass_queue_limits (queue, limits) VALUES ($1, $2)
         ON CONFLICT (queue) DO UPDATE SET limits = excluded.limits",
        &[&queue, &value],
    )
    .await
    .map_err(pg_error)?;
    Ok(())
}

async fn bucket<C: GenericClient>(
    c: &C,
    scope: &str,
    rate: Rate,
    now: i64,
) -> Result<Bucket, StoreError> {
    let row = c
        .query_opt(
            "SELECT tokens, at_ms FROM windlass_rate_buckets WHERE scope = $1",
            &[&scope],
        )
        .await
        .map_err(pg_error)?;
    Ok(match row {
        Some(r) => Bucket {
            tokens: r.get(0),
            at_ms: r.get(1),
        }
        .refilled(rate, now),
        None => Bucket::full(rate, now),
    })
}

async fn save<C: GenericClient>(c: &C, scope: &str, b: Bucket) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO windlass_rate_buckets (scope, tokens, at_ms) VALUES ($1, $2, $3)
         ON CONFLICT (scope) DO UPDATE SET tokens = excluded.tokens, at_ms = excluded.at_ms",
        &[&scope, &b.tokens, &b.at_ms],
    )
    .await
    .map_err(pg_error)?;
    Ok(())
}

fn key_scope(queue: &str, key: &str) -> String {
    format!("{queue}\u{1f}{key}")
}

/// Claims up to `left` jobs from a limited queue, in one transaction serialised with every
/// other claim from that queue.
pub(crate) async fn claim_limited(
    client: &mut Object,
    req: &ClaimRequest,
    queue: &str,
    limits: &QueueLimits,
    left: usize,
    now: i64,
) -> Result<crate::ops::Claimed, StoreError> {
    let tx = client.transaction().await.map_err(pg_error)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 7177))",
        &[&format!("windlass-limits:{queue}")],
    )
    .await
    .map_err(pg_error)?;
    let mut total = left as u64;
    if let Some(max) = limits.max_running {
        let running: i64 = tx
            .query_one(
                "SELECT COUNT(*) FROM windlass_jobs WHERE state = 'running' AND queue = $1",
                &[&queue],
            )
            .await
            .map_err(pg_error)?
            .get(0);
        total = total.min(u64::from(max).saturating_sub(u64::try_from(running).unwrap_or(0)));
    }
    let queue_bucket = match limits.rate {
        Some(rate) => {
            let b = bucket(&*tx, queue, rate, now).await?;
            total = total.min(b.whole());
            Some(b)
        }
        None => None,
    };
    if total == 0 {
        tx.commit().await.map_err(pg_error)?;
        return Ok((Vec::new(), Vec::new()));
    }
    // Look past jobs whose key is full, but not forever.
    let window = i64::try_from(total.saturating_mul(4).saturating_add(32)).unwrap_or(i64::MAX);
    let candidates: Vec<(i64, Option<String>)> = tx
        .query(
            &format!(
                "SELECT id, limit_key FROM windlass_jobs
                 WHERE state IN {DUE} AND queue = $1 AND run_at <= $2 AND kind = ANY($3)
                 ORDER BY priority, run_at, id LIMIT $4
                 FOR UPDATE SKIP LOCKED"
            ),
            &[&queue, &now, &req.kinds, &window],
        )
        .await
        .map_err(pg_error)?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let keys: BTreeSet<&str> = candidates.iter().filter_map(|c| c.1.as_deref()).collect();
    let mut running_per_key = HashMap::new();
    let mut key_buckets = HashMap::new();
    for key in &keys {
        if limits.max_running_per_key.is_some() {
            let n: i64 = tx
                .query_one(
                    "SELECT COUNT(*) FROM windlass_jobs
                     WHERE state = 'running' AND queue = $1 AND limit_key = $2",
                    &[&queue, key],
                )
                .await
                .map_err(pg_error)?
                .get(0);
            running_per_key.insert(key.to_string(), u64::try_from(n).unwrap_or(0));
        }
        if let Some(rate) = limits.rate_per_key {
            let b = bucket(&*tx, &key_scope(queue, key), rate, now).await?;
            key_buckets.insert(key.to_string(), b);
        }
    }
    let budget = ClaimBudget {
        total,
        running_per_key,
        tokens_per_key: limits.rate_per_key.map(|_| {
            key_buckets
                .iter()
                .map(|(k, b)| (k.clone(), b.whole()))
                .collect()
        }),
    };
    let chosen = choose(&candidates, limits, budget);
    if let Some(mut b) = queue_bucket {
        b.tokens -= chosen.len() as f64;
        save(&*tx, queue, b).await?;
    }
    for (key, n) in taken_per_key(&chosen) {
        if let Some(b) = key_buckets.get(key) {
            let spent = Bucket {
                tokens: b.tokens - n,
                at_ms: b.at_ms,
            };
            save(&*tx, &key_scope(queue, key), spent).await?;
        }
    }
    let ids: Vec<i64> = chosen.iter().map(|(id, _)| *id).collect();
    let until = now.saturating_add(duration_ms(req.lease_for));
    let rows = tx
        .query(
            &format!(
                "UPDATE windlass_jobs j SET state = 'running', attempt = j.attempt + 1,
                    lease_token = j.lease_token + 1, locked_by = $2, lease_until = $3
                 WHERE j.id = ANY($1)
                 RETURNING {CLAIMED}"
            ),
            &[&ids, &req.worker, &until],
        )
        .await
        .map_err(pg_error)?;
    tx.commit().await.map_err(pg_error)?;
    Ok(claimed(rows, &req.worker, now))
}
