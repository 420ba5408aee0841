//! The fetcher: claims jobs for free in-flight slots, in batches, with up to
//! `claims_in_flight` claims on their way at once, and sleeps on the store's work signal
//! when a claim finds nothing.

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::run::{Shared, backoff, start_job};
use crate::store::{ClaimRequest, ClaimedJob, Store};

pub(super) async fn fetch_loop<S: Store>(shared: Arc<Shared<S>>, stop: CancellationToken) {
    let cfg = &shared.config;
    let kinds: Vec<String> = shared.handlers.keys().map(|k| k.to_string()).collect();
    let mut retry_in = Duration::ZERO;
    let mut signal = shared.store.work_signal();
    // While plenty of claimed jobs still wait for a handler, wait for room for a real batch
    // instead of claiming each freed slot alone: fewer, larger claims (and commits), and the
    // handlers do not notice, since the waiting jobs cover the claim. When few wait (an idle or
    // lightly loaded worker), claim as soon as one slot is free: latency first.
    let batch_at = (cfg.prefetch / 3).clamp(1, cfg.fetch_batch);
    let total = cfg.concurrency + cfg.prefetch;
    // Up to `claims_in_flight` claims at once, each holding the permits of the jobs it may
    // bring (`room`), numbered as sent. The newest claim finding nothing makes the worker
    // idle: no new claim until the store signals work, or `poll` passes with no claim left in
    // flight. An older claim's answer cannot: the newest was sent later, after the signal was
    // last marked seen, so only its answer says that nothing was due since.
    let mut claims = futures_util::stream::FuturesUnordered::new();
    let mut claiming = 0usize;
    let mut sent = 0u64;
    let mut idle = false;
    // After a failed claim (or with no work signal), no claim until then; answers of claims
    // in flight are still taken meanwhile.
    let mut paused_until: Option<Instant> = None;
    loop {
        let running = cfg.concurrency - shared.run_slots.available_permits().min(cfg.concurrency);
        let held = total - shared.in_flight.available_permits().min(total);
        let waiting = held.saturating_sub(running);
        let first = if waiting >= 2 * batch_at { batch_at } else { 1 };
        let may_claim = !idle && paused_until.is_none() && claims.len() < cfg.claims_in_flight;
        tokio::select! {
            biased;
            _ = stop.cancelled() => {
                wind_down(&shared, &mut claims, claiming).await;
                return;
            }
            Some((seq, room, claimed)) = futures_util::StreamExt::next(&mut claims), if !claims.is_empty() => {
                claiming -= room;
                match settle_claim(&shared, room, claimed) {
                    Ok(got) => {
                        retry_in = Duration::ZERO;
                        if got > 0 {
                            idle = false;
                        } else if seq == sent {
                            idle = true;
                        }
                    }
                    Err(e) => {
                        retry_in = backoff(retry_in);
                        tracing::warn!(error = %e, retry_in = ?retry_in, "claim failed; backing off");
                        metrics::counter!("windlass_queue_store_errors_total", "op" => "claim")
                            .increment(1);
                        idle = false;
                        paused_until = Some(Instant::now() + retry_in);
                    }
                }
            }
            _ = tokio::time::sleep_until(paused_until.unwrap_or_else(Instant::now)), if paused_until.is_some() => {
                paused_until = None;
            }
            woke = tokio::time::timeout(cfg.poll, signal.changed()), if idle && claims.is_empty() && paused_until.is_none() => {
                idle = false;
                if let Ok(Err(_)) = woke {
                    // The store dropped its signal: poll.
                    paused_until = Some(Instant::now() + cfg.poll);
                }
            }
            p = shared.in_flight.acquire_many(u32::try_from(first).unwrap_or(1)), if may_claim => {
                let Ok(p) = p else {
                    wind_down(&shared, &mut claims, claiming).await;
                    return;
                };
                p.forget();
                let mut room = first;
                while room < cfg.fetch_batch {
                    match shared.in_flight.try_acquire() {
                        Ok(p) => {
                            p.forget();
                            room += 1;
                        }
                        Err(_) => break,
                    }
                }
                let request = ClaimRequest {
                    queues: cfg.queues.clone(),
                    kinds: kinds.clone(),
                    limit: room,
                    worker: shared.worker_id.clone(),
                    lease_for: cfg.lease,
                };
                // Work signalled from here on is seen after this claim (the newest).
                signal.borrow_and_update();
                claiming += room;
                sent += 1;
                let seq = sent;
                let store = shared.store.clone();
                claims.push(async move { (seq, room, store.claim(request).await) });
            }
        }
    }
}

/// Starts the jobs a claim brought and gives back the permits it took for jobs it did not
/// bring; returns how many it brought.
fn settle_claim<S: Store>(
    shared: &Arc<Shared<S>>,
    room: usize,
    claimed: Result<Vec<ClaimedJob>, crate::StoreError>,
) -> Result<usize, crate::StoreError> {
    match claimed {
        Ok(jobs) => {
            let got = jobs.len().min(room);
            shared.in_flight.add_permits(room - got);
            for job in jobs.into_iter().take(room) {
                start_job(shared, job);
            }
            Ok(got)
        }
        Err(e) => {
            shared.in_flight.add_permits(room);
            Err(e)
        }
    }
}

/// The fetcher stops: claims already sent may have taken jobs at the store, so their
/// answers are awaited and their jobs started, for the shutdown to run or release them
/// instead of leaving them to lease expiry. Answers are awaited until the shutdown's
/// deadline (at most one lease): a claim unanswered by then is left, and any jobs it took
/// wait for their leases to expire, as with any claim whose answer is lost.
async fn wind_down<S, F>(
    shared: &Arc<Shared<S>>,
    claims: &mut futures_util::stream::FuturesUnordered<F>,
    mut claiming: usize,
) where
    S: Store,
    F: std::future::Future<Output = (u64, usize, Result<Vec<ClaimedJob>, crate::StoreError>)>,
{
    let at_most = Instant::now() + shared.config.lease.min(crate::job::MAX_DURATION);
    let deadline = shared
        .stop_deadline
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .map_or(at_most, |d| d.min(at_most));
    let answers = async {
        while let Some((_, room, claimed)) = futures_util::StreamExt::next(claims).await {
            claiming -= room;
            let _ = settle_claim(shared, room, claimed);
        }
    };
    let _ = tokio::time::timeout_at(deadline, answers).await;
    shared.in_flight.add_permits(claiming);
}
