//! Queue limits on SQLite: read, written, and applied inside a claim. The writer's
//! `BEGIN IMMEDIATE` transaction already serialises every claim on the file, from this process
//! or another, so counting and taking tokens here cannot race.

use std::collections::{BTreeSet, HashMap};

use rusqlite::{Connection, OptionalExtension, params, params_from_iter};
use windlass_queue::limits::{Bucket, ClaimBudget, QueueLimits, Rate, choose, taken_per_key};
use windlass_queue::{ClaimRequest, StoreError};

use crate::ops::{DUE, placeholders};
use crate::sql_error;

/// A queue's limits, if it has any.
pub(crate) const GET: &str = "SELECT limits FROM windlass_queue_limits WHERE queue = ?1";

pub(crate) fn get(conn: &Connection, queue: &str) -> Result<QueueLimits, StoreError> {
    let text: Option<String> = conn
        .prepare_cached(GET)
        .map_err(sql_error)?
        .query_row([queue], |r| r.get(0))
        .optional()
        .map_err(sql_error)?;
    text.map_or(Ok(QueueLimits::default()), |t| {
        serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(format!("queue limits: {e}")))
    })
}

pub(crate) fn set(conn: &Connection, queue: &str, limits: &QueueLimits) -> Result<(), StoreError> {
    if limits.is_unlimited() {
        conn.execute(
            "DELETE FROM windlass_queue_limits WHERE queue = ?1",
            [queue],
        )
        .map_err(sql_error)?;
        return Ok(());
    }
    let text = serde_json::to_string(limits).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    conn.execute(
        "INSERT INTO windlass_queue_limits (queue, limits) VALUES (?1, ?2)
         ON CONFLICT (queue) DO UPDATE SET limits = excluded.limits",
        params![queue, text],
    )
    .map_err(sql_error)?;
    Ok(())
}

fn bucket(conn: &Connection, scope: &str, rate: Rate, now: i64) -> Result<Bucket, StoreError> {
    let stored: Option<(f64, i64)> = conn
        .prepare_cached("SELECT tokens, at_ms FROM windlass_rate_buckets WHERE scope = ?1")
        .map_err(sql_error)?
        .query_row([scope], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
        .map_err(sql_error)?;
    Ok(match stored {
        Some((tokens, at_ms)) => Bucket { tokens, at_ms }.refilled(rate, now),
        None => Bucket::full(rate, now),
    })
}

fn save(conn: &Connection, scope: &str, b: Bucket) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO windlass_rate_buckets (scope, tokens, at_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT (scope) DO UPDATE SET tokens = excluded.tokens, at_ms = excluded.at_ms",
    )
    .map_err(sql_error)?
    .execute(params![scope, b.tokens, b.at_ms])
    .map_err(sql_error)?;
    Ok(())
}

fn key_scope(queue: &str, key: &str) -> String {
    format!("{queue}\u{1f}{key}")
}

/// The due jobs of `kinds` kinds a limited queue's claim looks through, in claim order:
/// `?1` queue, `?2` now, `?3` how many, then the kinds.
pub(crate) fn candidates_sql(kinds: usize) -> String {
    let k = placeholders(kinds, 4);
    format!(
        "SELECT id, limit_key FROM windlass_jobs
         WHERE {DUE} AND queue = ?1 AND run_at <= ?2 AND kind IN ({k})
         ORDER BY priority, run_at, id LIMIT ?3 + 0"
    )
}

/// The ids a claim of up to `left` jobs from a limited `queue` may take, in claim order,
/// with the buckets already charged for them.
pub(crate) fn choose_ids(
    conn: &Connection,
    req: &ClaimRequest,
    queue: &str,
    limits: &QueueLimits,
    left: usize,
    now: i64,
) -> Result<Vec<i64>, StoreError> {
    let mut total = left as u64;
    if let Some(max) = limits.max_running {
        let running: i64 = conn
            .prepare_cached(
                "SELECT COUNT(*) FROM windlass_jobs WHERE state = 'running' AND queue = ?1",
            )
            .map_err(sql_error)?
            .query_row([queue], |r| r.get(0))
            .map_err(sql_error)?;
        total = total.min(u64::from(max).saturating_sub(u64::try_from(running).unwrap_or(0)));
    }
    let queue_bucket = match limits.rate {
        Some(rate) => {
            let b = bucket(conn, queue, rate, now)?;
            total = total.min(b.whole());
            Some((rate, b))
        }
        None => None,
    };
    if total == 0 {
        return Ok(Vec::new());
    }
    // Look past jobs whose key is full, but not forever.
    let window = total.saturating_mul(4).saturating_add(32);
    let sql = candidates_sql(req.kinds.len());
    let mut args: Vec<rusqlite::types::Value> = vec![
        queue.to_string().into(),
        now.into(),
        i64::try_from(window).unwrap_or(i64::MAX).into(),
    ];
    args.extend(
        req.kinds
            .iter()
            .map(|s| rusqlite::types::Value::from(s.clone())),
    );
    let candidates: Vec<(i64, Option<String>)> = conn
        .prepare_cached(&sql)
        .map_err(sql_error)?
        .query_map(params_from_iter(args), |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(sql_error)?
        .collect::<Result<_, _>>()
        .map_err(sql_error)?;
    let keys: BTreeSet<&str> = candidates.iter().filter_map(|c| c.1.as_deref()).collect();
    let mut running_per_key = HashMap::new();
    let mut key_buckets = HashMap::new();
    for key in &keys {
        if limits.max_running_per_key.is_some() {
            let n: i64 = conn
                .prepare_cached(
                    "SELECT COUNT(*) FROM windlass_jobs
                     WHERE state = 'running' AND queue = ?1 AND limit_key = ?2",
                )
                .map_err(sql_error)?
                .query_row(params![queue, key], |r| r.get(0))
                .map_err(sql_error)?;
            running_per_key.insert(key.to_string(), u64::try_from(n).unwrap_or(0));
        }
        if let Some(rate) = limits.rate_per_key {
            key_buckets.insert(
                key.to_string(),
                bucket(conn, &key_scope(queue, key), rate, now)?,
            );
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
    if let Some((_, mut b)) = queue_bucket {
        b.tokens -= chosen.len() as f64;
        save(conn, queue, b)?;
    }
    if limits.rate_per_key.is_some() {
        for (key, n) in taken_per_key(&chosen) {
            if let Some(b) = key_buckets.get(key) {
                save(
                    conn,
                    &key_scope(queue, key),
                    Bucket {
                        tokens: b.tokens - n,
                        at_ms: b.at_ms,
                    },
                )?;
            }
        }
    }
    Ok(chosen.into_iter().map(|(id, _)| id).collect())
}
