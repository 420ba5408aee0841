//! The claim: due jobs taken under a new lease on the writer thread, then decoded off it.
//!
//! The writer thread is SQLite's one writer, and under load it is the store's ceiling. So it
//! does only what must be done under the write lock: pick the jobs, update their rows, copy
//! out the columns. Parsing the payload and the retry schedule (JSON) is left to the caller's
//! task ([`decode`]); that was a fifth of a claim's time on the writer thread (`perf`, W3).
//!
//! A claimed row that cannot be read (another program wrote a payload that is not JSON, or
//! a schedule this version cannot read) is not handed out: [`discard`] makes it a dead letter
//! with its stored text kept, fenced by the lease the claim took, so it can be listed,
//! inspected and replayed. That is a second transaction after the claim's: if it is lost (a
//! crash between the two, or the discard fails), the job is claimed again once its lease
//! expires and discarded then; unless that expiry ends its last attempt (or quarantines it),
//! when the lease sweep makes it a dead letter as it stands, columns unrepaired: reading it
//! then fails as reading any job another program spoiled does, and a replay brings it back
//! to be claimed and discarded with its repair.

use rusqlite::{Connection, Row, params, params_from_iter};
use windlass_queue::{ClaimRequest, ClaimedJob, Finish, JobId, Lease, StoreError, duration_ms};

use crate::ops::{DUE, finish, json_text, parse_json, parse_retry, placeholders};
use crate::sql_error;

/// A claimed row as copied out on the writer thread, its JSON columns still text.
pub(crate) struct RawClaim {
    lease: Lease,
    attempt: u32,
    kind: String,
    queue: String,
    /// The payload's text, or what is stored instead.
    payload: Result<String, String>,
    /// Whether the payload column holds text at all (a repair keeps other bytes as hex).
    payload_is_text: bool,
    retry: Result<String, String>,
    timeout_ms: i64,
    run_at_ms: i64,
    created_at_ms: i64,
    trace_context: Option<String>,
}

/// A claimed job that could not be read: its end (a dead letter) and the columns to repair.
pub(crate) struct Unreadable {
    pub(crate) end: Finish,
    repairs: Vec<Repair>,
}

/// How an unreadable column is made readable, so the dead letter lists and replays.
#[derive(Clone, Copy)]
enum Repair {
    /// The payload's text becomes a JSON string.
    PayloadText,
    /// Bytes that are not text become a JSON string of their hex.
    PayloadHex,
    /// The default schedule, with the job's own number of attempts.
    Retry,
}

/// Claims up to `req.limit` due jobs, in claim order (queue by queue as requested; within
/// a queue by priority, run-at and id). Runs on the writer thread.
pub(crate) fn claim(
    conn: &Connection,
    req: &ClaimRequest,
    now: i64,
) -> Result<Vec<RawClaim>, StoreError> {
    if req.kinds.is_empty() {
        return Ok(Vec::new());
    }
    let sql = claim_sql(req.kinds.len());
    let mut all = Vec::new();
    for queue in &req.queues {
        let left = req.limit.saturating_sub(all.len());
        if left == 0 {
            break;
        }
        let limits = crate::limits::get(conn, queue)?;
        let ids = if limits.is_unlimited() {
            None
        } else {
            let ids = crate::limits::choose_ids(conn, req, queue, &limits, left, now)?;
            if ids.is_empty() {
                continue;
            }
            Some(ids)
        };
        let mut args: Vec<rusqlite::types::Value> = vec![
            req.worker.clone().into(),
            now.saturating_add(duration_ms(req.lease_for)).into(),
            now.into(),
            i64::try_from(left).unwrap_or(i64::MAX).into(),
            queue.clone().into(),
        ];
        let mut stmt = match &ids {
            None => {
                args.extend(
                    req.kinds
                        .iter()
                        .map(|s| rusqlite::types::Value::from(s.clone())),
                );
                conn.prepare_cached(&sql).map_err(sql_error)?
            }
            Some(ids) => {
                // The limited path chose exactly which jobs: claim those.
                args.truncate(2);
                args.extend(ids.iter().map(|id| rusqlite::types::Value::from(*id)));
                conn.prepare_cached(&format!(
                    "UPDATE windlass_jobs SET state = 'running', attempt = attempt + 1,
                        lease_token = lease_token + 1, locked_by = ?1, lease_until = ?2
                     WHERE id IN ({})
                     RETURNING id, kind, queue, payload, attempt, retry, timeout_ms, run_at,
                        created_at, lease_token, priority, trace_context",
                    placeholders(ids.len(), 3)
                ))
                .map_err(sql_error)?
            }
        };
        let mut rows = stmt.query(params_from_iter(args)).map_err(sql_error)?;
        let mut out: Vec<(i64, RawClaim)> = Vec::new();
        while let Some(r) = rows.next().map_err(sql_error)? {
            let priority: i64 = r.get(10).map_err(sql_error)?;
            out.push((
                priority,
                RawClaim {
                    lease: Lease {
                        job: JobId(r.get(0).map_err(sql_error)?),
                        token: r.get(9).map_err(sql_error)?,
                        worker: req.worker.clone(),
                    },
                    attempt: r.get(4).map_err(sql_error)?,
                    kind: r.get(1).map_err(sql_error)?,
                    queue: r.get(2).map_err(sql_error)?,
                    payload_is_text: matches!(
                        r.get_ref(3),
                        Ok(rusqlite::types::ValueRef::Text(b)) if std::str::from_utf8(b).is_ok()
                    ),
                    payload: stored_text(r, 3),
                    retry: stored_text(r, 5),
                    timeout_ms: r.get(6).map_err(sql_error)?,
                    run_at_ms: r.get(7).map_err(sql_error)?,
                    created_at_ms: r.get(8).map_err(sql_error)?,
                    trace_context: r.get(11).map_err(sql_error)?,
                },
            ));
        }
        // RETURNING has no defined order: restore the claim order.
        out.sort_by_key(|(p, c)| (*p, c.run_at_ms, c.lease.job));
        all.extend(out.into_iter().map(|(_, c)| c));
    }
    Ok(all)
}

/// The claim of one queue's due jobs of `kinds` kinds: `?1` worker, `?2` lease end, `?3` now,
/// `?4` limit, `?5` queue, then the kinds. One queue per statement, so the claim walks the
/// index of due jobs in claim order. `LIMIT ?4 + 0`, not `LIMIT ?4`: SQLite reads a bare
/// bound LIMIT while planning, so every new value would re-prepare the statement (measured:
/// once per claim, ~6% of W3; the writer's connection also keeps one plan per statement
/// since, see `schema.rs`).
pub(crate) fn claim_sql(kinds: usize) -> String {
    let k = placeholders(kinds, 6);
    format!(
        "UPDATE windlass_jobs SET state = 'running', attempt = attempt + 1,
            lease_token = lease_token + 1, locked_by = ?1, lease_until = ?2
         WHERE id IN (
            SELECT id FROM windlass_jobs
            WHERE {DUE} AND queue = ?5 AND run_at <= ?3 AND kind IN ({k})
            ORDER BY priority, run_at, id LIMIT ?4 + 0)
         RETURNING id, kind, queue, payload, attempt, retry, timeout_ms, run_at, created_at,
            lease_token, priority, trace_context"
    )
}

/// The claimed rows as jobs, in claim order, and those that could not be read, each ended
/// (at `now`) as a dead letter whose error says what is wrong and quotes what is stored.
/// Runs on the caller's task, off the writer thread.
pub(crate) fn decode(raw: Vec<RawClaim>, now: i64) -> (Vec<ClaimedJob>, Vec<Unreadable>) {
    let mut jobs = Vec::with_capacity(raw.len());
    let mut unreadable = Vec::new();
    for c in raw {
        let payload = c
            .payload
            .and_then(|t| parse_json(&t).map_err(|e| format!("{e} (stored: {})", clip(&t))));
        let retry = c
            .retry
            .and_then(|t| parse_retry(&t).map_err(|e| format!("{e} (stored: {})", clip(&t))));
        match (payload, retry) {
            (Ok(payload), Ok(retry)) => jobs.push(ClaimedJob {
                lease: c.lease,
                kind: c.kind,
                queue: c.queue,
                payload,
                attempt: c.attempt,
                retry,
                timeout: std::time::Duration::from_millis(u64::try_from(c.timeout_ms).unwrap_or(0)),
                run_at_ms: c.run_at_ms,
                created_at_ms: c.created_at_ms,
                trace_context: c.trace_context,
            }),
            (payload, retry) => {
                let mut problems = Vec::new();
                let mut repairs = Vec::new();
                if let Err(e) = payload {
                    problems.push(format!("payload: {e}"));
                    repairs.push(if c.payload_is_text {
                        Repair::PayloadText
                    } else {
                        Repair::PayloadHex
                    });
                }
                if let Err(e) = retry {
                    problems.push(format!("retry schedule: {e}"));
                    repairs.push(Repair::Retry);
                }
                unreadable.push(Unreadable {
                    end: Finish::unreadable(c.lease, c.attempt, now, problems.join("; ")),
                    repairs,
                });
            }
        }
    }
    (jobs, unreadable)
}

/// Makes each unreadable job a dead letter (at `now`), its unreadable columns repaired,
/// if the claim's lease on it still holds. Runs on the writer thread.
pub(crate) fn discard(
    conn: &Connection,
    unreadable: &[Unreadable],
    now: i64,
) -> Result<(), StoreError> {
    // Only under the lease the claim took: a job whose lease was lost meanwhile is another
    // worker's now, and it is left alone.
    const FENCE: &str = "AND state = 'running' AND lease_token = ?2 AND locked_by = ?3";
    for u in unreadable {
        tracing::warn!(job = u.end.lease.job.0, error = ?u.end.record.error, "discarding an unreadable job");
        let lease = &u.end.lease;
        for repair in &u.repairs {
            let sql = match repair {
                Repair::PayloadText => {
                    format!(
                        "UPDATE windlass_jobs SET payload = json_quote(payload) WHERE id = ?1 {FENCE}"
                    )
                }
                Repair::PayloadHex => format!(
                    "UPDATE windlass_jobs SET payload = json_quote('hex:' || hex(payload))
                     WHERE id = ?1 {FENCE}"
                ),
                Repair::Retry => format!(
                    "UPDATE windlass_jobs SET retry = json_set(?4, '$[0]', max_attempts)
                     WHERE id = ?1 {FENCE}"
                ),
            };
            let mut stmt = conn.prepare_cached(&sql).map_err(sql_error)?;
            if let Repair::Retry = repair {
                let default = json_text(&windlass_queue::JobOptions::default().retry.packed())?;
                stmt.execute(params![lease.job.0, lease.token, lease.worker, default])
            } else {
                stmt.execute(params![lease.job.0, lease.token, lease.worker])
            }
            .map_err(sql_error)?;
        }
    }
    let ends: Vec<Finish> = unreadable.iter().map(|u| u.end.clone()).collect();
    finish(conn, &ends, now)?;
    Ok(())
}

/// Column `at` as the text it should hold, or what it holds instead (only another program
/// can store a BLOB, a number or bytes that are not UTF-8 there).
fn stored_text(r: &Row<'_>, at: usize) -> Result<String, String> {
    use rusqlite::types::ValueRef;
    // Up to 100 bytes, as SQL's hex literal.
    let hex = |b: &[u8]| -> String {
        let shown: String = b.iter().take(100).map(|x| format!("{x:02x}")).collect();
        let more = if b.len() > 100 { "…" } else { "" };
        format!("(stored: x'{shown}'{more})")
    };
    match r.get_ref(at).map_err(|e| e.to_string())? {
        ValueRef::Text(b) => std::str::from_utf8(b)
            .map(str::to_string)
            .map_err(|e| format!("stored text is not UTF-8: {e} {}", hex(b))),
        ValueRef::Blob(b) => Err(format!(
            "stored as a BLOB of {} bytes, not text {}",
            b.len(),
            hex(b)
        )),
        ValueRef::Null => Err("stored as NULL, not text".into()),
        ValueRef::Integer(i) => Err(format!("stored as the integer {i}, not text")),
        ValueRef::Real(x) => Err(format!("stored as the number {x}, not text")),
    }
}

/// At most 200 characters of `s`, for an error message.
fn clip(s: &str) -> String {
    match s.char_indices().nth(200) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code

    use windlass_queue::conformance::{claim_req, job};
    use windlass_queue::{JobState, Store};

    use crate::SqliteStore;

    /// The discard of an unreadable job is a transaction of its own, after the claim's: if
    /// the claim's lease was lost meanwhile (it expired and another worker claimed the
    /// job), the discard leaves the job, its columns and its new lease alone.
    #[tokio::test]
    async fn a_discard_after_the_lease_was_lost_changes_nothing() {
        let dir = windlass_test_support::ScratchDir::new("discard");
        let path = dir.file("jobs.db");
        let store = SqliteStore::builder(&path).open().await.unwrap();
        let id = store.enqueue(vec![job(1)]).await.unwrap()[0].id;
        let raw = rusqlite::Connection::open(&path).unwrap();
        let spoil = "UPDATE windlass_jobs SET payload = '{oops', retry = '{oops' WHERE id = ?1";
        assert_eq!(raw.execute(spoil, [id.0]).unwrap(), 1);
        let now = store.clock.now_ms();
        let claimed = store
            .writer
            .call(move |c| super::claim(c, &claim_req("w1", 1), now), None)
            .await
            .unwrap();
        let (jobs, unreadable) = super::decode(claimed, now);
        assert!(jobs.is_empty());
        assert_eq!(unreadable.len(), 1);
        // Another worker holds the job now.
        let stolen = "UPDATE windlass_jobs SET lease_token = lease_token + 1, locked_by = 'w2'";
        assert_eq!(raw.execute(stolen, []).unwrap(), 1);
        store
            .writer
            .call(move |c| super::discard(c, &unreadable, now), None)
            .await
            .unwrap();
        let (state, payload, retry, by): (String, String, String, String) = raw
            .query_row(
                "SELECT state, payload, retry, locked_by FROM windlass_jobs WHERE id = ?1",
                [id.0],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        assert_eq!(
            (
                state.as_str(),
                payload.as_str(),
                retry.as_str(),
                by.as_str()
            ),
            (JobState::Running.as_str(), "{oops", "{oops", "w2")
        );
    }
}
