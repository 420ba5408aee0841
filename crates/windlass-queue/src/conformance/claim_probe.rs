//! A store that counts its claims in flight: the probe behind the worker's
//! `claims_in_flight` case. Every other call goes straight to the wrapped store.

#![allow(missing_docs)] // test code

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{Semaphore, mpsc, watch};

use crate::store::{ClaimRequest, ClaimedJob, Fenced, Finish, Heartbeat, Lease, Rescued, Store};
use crate::{Enqueued, JobFilter, JobId, JobRecord, JobState, NewJob, QueueStats, StoreError};

/// Wraps a store; each claim is counted from its call to its answer, and the highest
/// count is kept. A claim first yields `yields` times, so that a worker able to issue
/// another claim meanwhile has every chance to.
pub struct ClaimProbe<S> {
    inner: Arc<S>,
    yields: usize,
    claiming: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    claims: Arc<AtomicUsize>,
    /// If set, each claim's answer is held back (after the store has claimed) until a
    /// permit is given, and the number of jobs it took is reported first.
    hold: Option<(Arc<Semaphore>, mpsc::UnboundedSender<usize>)>,
    /// If set, the first claim never reaches the store: it waits for a permit, then answers
    /// that nothing was due (as a claim sent just before an enqueue would).
    first_finds_nothing: Option<Arc<Semaphore>>,
    /// If set, the worker's work signal: one that never changes (no enqueue, commit or
    /// notification wakes the worker; only its poll interval does).
    quiet: Option<watch::Sender<u64>>,
}

impl<S> ClaimProbe<S> {
    pub fn new(inner: Arc<S>, yields: usize) -> Self {
        ClaimProbe {
            inner,
            yields,
            claiming: Arc::default(),
            peak: Arc::default(),
            claims: Arc::default(),
            hold: None,
            first_finds_nothing: None,
            quiet: None,
        }
    }
    /// Gives workers a work signal that never changes.
    pub fn quiet_signal(mut self) -> Self {
        self.quiet = Some(watch::channel(0).0);
        self
    }
    /// The first claim answers "nothing due" once `permits` gives one, without reaching
    /// the store.
    pub fn first_claim_finds_nothing(mut self, permits: Arc<Semaphore>) -> Self {
        self.first_finds_nothing = Some(permits);
        self
    }
    /// Holds each claim's answer until `permits` gives one; reports on `claimed` how many
    /// jobs the store gave the claim as soon as it has.
    pub fn holding_answers(
        mut self,
        permits: Arc<Semaphore>,
        claimed: mpsc::UnboundedSender<usize>,
    ) -> Self {
        self.hold = Some((permits, claimed));
        self
    }
    /// The most claims that were in flight at once.
    pub fn peak(&self) -> Arc<AtomicUsize> {
        self.peak.clone()
    }
    /// Claims made so far.
    pub fn claims(&self) -> Arc<AtomicUsize> {
        self.claims.clone()
    }
}

/// Decrements the in-flight count when the claim ends, answered or dropped.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<S: Store> Store for ClaimProbe<S> {
    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>, StoreError> {
        self.inner.enqueue(jobs).await
    }
    async fn wake(&self, id: JobId) -> Result<bool, StoreError> {
        self.inner.wake(id).await
    }
    async fn claim(&self, request: ClaimRequest) -> Result<Vec<ClaimedJob>, StoreError> {
        let now = self.claiming.fetch_add(1, Ordering::SeqCst) + 1;
        let _in_flight = InFlight(self.claiming.clone());
        let number = self.claims.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        if number == 1
            && let Some(permits) = &self.first_finds_nothing
        {
            if let Ok(p) = permits.acquire().await {
                p.forget();
            }
            return Ok(Vec::new());
        }
        for _ in 0..self.yields {
            tokio::task::yield_now().await;
        }
        let answer = self.inner.claim(request).await;
        if let Some((permits, claimed)) = &self.hold {
            let _ = claimed.send(answer.as_ref().map_or(0, Vec::len));
            if let Ok(p) = permits.acquire().await {
                p.forget();
            }
        }
        answer
    }
    async fn heartbeat(
        &self,
        leases: Vec<Lease>,
        lease_for: Duration,
    ) -> Result<Vec<Heartbeat>, StoreError> {
        self.inner.heartbeat(leases, lease_for).await
    }
    async fn finish(&self, finished: Vec<Finish>) -> Result<Vec<Fenced>, StoreError> {
        self.inner.finish(finished).await
    }
    async fn progress(&self, lease: Lease, progress: Value) -> Result<Fenced, StoreError> {
        self.inner.progress(lease, progress).await
    }
    async fn rescue_expired(&self, quarantine_after: u32) -> Result<Rescued, StoreError> {
        self.inner.rescue_expired(quarantine_after).await
    }
    async fn cancel(&self, id: JobId) -> Result<Option<JobState>, StoreError> {
        self.inner.cancel(id).await
    }
    async fn replay(&self, ids: Vec<JobId>) -> Result<Vec<JobId>, StoreError> {
        self.inner.replay(ids).await
    }
    async fn prune(&self, states: Vec<JobState>, before: i64) -> Result<u64, StoreError> {
        self.inner.prune(states, before).await
    }
    async fn get(&self, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        self.inner.get(id).await
    }
    async fn list(&self, filter: JobFilter) -> Result<Vec<JobRecord>, StoreError> {
        self.inner.list(filter).await
    }
    async fn stats(&self) -> Result<Vec<QueueStats>, StoreError> {
        self.inner.stats().await
    }
    async fn unknown_kinds(
        &self,
        queues: Vec<String>,
        kinds: Vec<String>,
    ) -> Result<Vec<String>, StoreError> {
        self.inner.unknown_kinds(queues, kinds).await
    }
    async fn set_limits(
        &self,
        queue: String,
        limits: crate::QueueLimits,
    ) -> Result<(), StoreError> {
        self.inner.set_limits(queue, limits).await
    }
    async fn limits(&self, queue: String) -> Result<crate::QueueLimits, StoreError> {
        self.inner.limits(queue).await
    }
    fn work_signal(&self) -> tokio::sync::watch::Receiver<u64> {
        match &self.quiet {
            Some(quiet) => quiet.subscribe(),
            None => self.inner.work_signal(),
        }
    }
    fn now_ms(&self) -> i64 {
        self.inner.now_ms()
    }
}
