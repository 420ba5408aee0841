//! Testing toolkit (feature `testing`): helpers for deterministic async tests.
//!
//! Everything here runs on tokio's paused clock (`#[tokio::test(start_paused = true)]`):
//! time only moves when every task is idle, so a test that "waits 10 minutes" takes
//! microseconds and always sees the same interleaving.
//!
//! - [`marbles`] / [`record`]: drive a stream with values at exact millisecond offsets and
//!   record what comes out and when (the RxJS "marble test" idea, in plain vectors).
//! - [`FaultInjector`]: chaos for any async function or tower service — errors, latency and
//!   hangs at seeded rates, so a failing run can be replayed exactly.
//! - [`ConcurrencyProbe`]: records how many calls overlapped, to assert "ran in parallel"
//!   or "never more than N at once".
//!
//! ```
//! use futures_util::StreamExt;
//! use windlass_concurrency::testing::{marbles, record};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let input = marbles(vec![(0, 'a'), (30, 'b')], 50);
//! let out = record(input.map(|c| c.to_ascii_uppercase())).await;
//! assert_eq!(out, vec![(0, 'A'), (30, 'B')]);
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::{self, Stream, StreamExt};
use tokio::time::Instant;
use windlass_policy::ConfigError;

/// A stream that yields each `(ms, value)` at `ms` milliseconds after its first poll (in
/// order; offsets must not decrease), then ends at `end_ms`.
pub fn marbles<T>(events: Vec<(u64, T)>, end_ms: u64) -> impl Stream<Item = T> {
    stream::unfold(
        (events.into_iter(), None::<Instant>),
        move |(mut events, start)| async move {
            let t0 = start.unwrap_or_else(Instant::now);
            match events.next() {
                Some((at, v)) => {
                    tokio::time::sleep_until(t0 + Duration::from_millis(at)).await;
                    Some((v, (events, Some(t0))))
                }
                None => {
                    tokio::time::sleep_until(t0 + Duration::from_millis(end_ms)).await;
                    None
                }
            }
        },
    )
}

/// Collects a stream's items with the millisecond (since the first poll) each came out.
pub async fn record<S: Stream>(s: S) -> Vec<(u64, S::Item)> {
    let start = Instant::now();
    s.map(|v| (start.elapsed().as_millis() as u64, v))
        .collect()
        .await
}

/// Like [`record`], also returning when the stream ended.
pub async fn record_with_end<S: Stream>(s: S) -> (Vec<(u64, S::Item)>, u64) {
    let start = Instant::now();
    let items = s
        .map(|v| (start.elapsed().as_millis() as u64, v))
        .collect()
        .await;
    (items, start.elapsed().as_millis() as u64)
}

/// The fault an injector chose for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Run the call (after the injected latency, if any).
    None,
    /// Fail with [`InjectedFault`] instead of calling.
    Error,
    /// Never answer.
    Hang,
}

/// The error an injected failure produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("injected fault")]
pub struct InjectedFault;

/// Injects seeded faults into calls. Cheap to clone (clones share the random sequence).
#[derive(Debug, Clone)]
pub struct FaultInjector {
    error_rate: f64,
    hang_rate: f64,
    latency: (Duration, Duration),
    rng: Arc<Mutex<fastrand::Rng>>,
    calls: Arc<AtomicU64>,
    injected: Arc<AtomicU64>,
}

/// Builds a [`FaultInjector`]. Defaults: no faults, no latency, seed 0.
#[derive(Debug, Clone)]
pub struct FaultInjectorBuilder {
    seed: u64,
    error_rate: f64,
    hang_rate: f64,
    latency: (Duration, Duration),
}

impl FaultInjectorBuilder {
    /// The seed: the same seed gives the same faults in the same call order.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
    /// Share of calls that fail (0 to 1).
    pub fn error_rate(mut self, rate: f64) -> Self {
        self.error_rate = rate;
        self
    }
    /// Share of calls that never answer (0 to 1).
    pub fn hang_rate(mut self, rate: f64) -> Self {
        self.hang_rate = rate;
        self
    }
    /// Extra latency before each call, uniform in `[min, max]`.
    pub fn latency(mut self, min: Duration, max: Duration) -> Self {
        self.latency = (min, max);
        self
    }
    /// Validates and builds.
    pub fn build(self) -> Result<FaultInjector, ConfigError> {
        let bad = |field, problem: &str| ConfigError::new("fault injector", field, problem);
        for (field, r) in [
            ("error_rate", self.error_rate),
            ("hang_rate", self.hang_rate),
        ] {
            if !(0.0..=1.0).contains(&r) {
                return Err(bad(field, "must be within [0, 1]"));
            }
        }
        if self.error_rate + self.hang_rate > 1.0 {
            return Err(bad("hang_rate", "error_rate + hang_rate must be at most 1"));
        }
        if self.latency.0 > self.latency.1 {
            return Err(bad("latency", "min must not exceed max"));
        }
        Ok(FaultInjector {
            error_rate: self.error_rate,
            hang_rate: self.hang_rate,
            latency: self.latency,
            rng: Arc::new(Mutex::new(fastrand::Rng::with_seed(self.seed))),
            calls: Arc::new(AtomicU64::new(0)),
            injected: Arc::new(AtomicU64::new(0)),
        })
    }
}

impl FaultInjector {
    /// Starts building an injector.
    pub fn builder() -> FaultInjectorBuilder {
        FaultInjectorBuilder {
            seed: 0,
            error_rate: 0.0,
            hang_rate: 0.0,
            latency: (Duration::ZERO, Duration::ZERO),
        }
    }

    /// Draws the next call's fault and latency.
    pub fn next_fault(&self) -> (Fault, Duration) {
        let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
        let u = rng.f64();
        let (lo, hi) = self.latency;
        let latency = lo + (hi - lo).mul_f64(rng.f64());
        let fault = if u < self.hang_rate {
            Fault::Hang
        } else if u < self.hang_rate + self.error_rate {
            Fault::Error
        } else {
            Fault::None
        };
        (fault, latency)
    }

    /// Calls made through the injector, and how many got a fault.
    pub fn stats(&self) -> (u64, u64) {
        (
            self.calls.load(Ordering::Relaxed),
            self.injected.load(Ordering::Relaxed),
        )
    }

    /// Runs `call` with an injected fault: the latency first, then a hang, an error
    /// (`E::from(InjectedFault)`) or the real call.
    pub async fn inject<F, T, E>(&self, call: F) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>>,
        E: From<InjectedFault>,
    {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let (fault, latency) = self.next_fault();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        match fault {
            Fault::None => call.await,
            Fault::Error => {
                self.injected.fetch_add(1, Ordering::Relaxed);
                Err(E::from(InjectedFault))
            }
            Fault::Hang => {
                self.injected.fetch_add(1, Ordering::Relaxed);
                std::future::pending().await
            }
        }
    }
}

impl<S> tower_layer::Layer<S> for FaultInjector {
    type Service = FaultService<S>;
    fn layer(&self, inner: S) -> FaultService<S> {
        FaultService {
            inner,
            faults: self.clone(),
        }
    }
}

/// A tower service with faults injected in front of it; see [`FaultInjector`].
#[derive(Debug, Clone)]
pub struct FaultService<S> {
    inner: S,
    faults: FaultInjector,
}

impl<S, Req> tower_service::Service<Req> for FaultService<S>
where
    S: tower_service::Service<Req> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: From<InjectedFault> + Send + 'static,
    S::Response: Send + 'static,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // The service the caller readied is the one that takes the request.
        let ready = self.inner.clone();
        let mut svc = std::mem::replace(&mut self.inner, ready);
        let faults = self.faults.clone();
        Box::pin(async move { faults.inject(svc.call(req)).await })
    }
}

/// Records how many calls overlapped. Cheap to clone (clones share the counts).
#[derive(Debug, Clone, Default)]
pub struct ConcurrencyProbe {
    current: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    total: Arc<AtomicU64>,
}

/// Marks one call as running until dropped.
#[derive(Debug)]
pub struct ProbeGuard(Arc<AtomicUsize>);

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ConcurrencyProbe {
    /// A probe with no calls recorded.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks a call as running until the guard is dropped.
    pub fn enter(&self) -> ProbeGuard {
        let now = self.current.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        self.total.fetch_add(1, Ordering::SeqCst);
        ProbeGuard(self.current.clone())
    }

    /// Runs `fut` as one call.
    pub async fn track<F: Future>(&self, fut: F) -> F::Output {
        let _guard = self.enter();
        fut.await
    }

    /// Calls running now.
    pub fn current(&self) -> usize {
        self.current.load(Ordering::SeqCst)
    }

    /// The most calls that ever ran at once.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    /// Calls recorded in all.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn injector_is_seeded_and_hits_its_rates() {
        let f = FaultInjector::builder()
            .seed(9)
            .error_rate(0.3)
            .hang_rate(0.1)
            .build()
            .unwrap();
        let g = FaultInjector::builder()
            .seed(9)
            .error_rate(0.3)
            .hang_rate(0.1)
            .build()
            .unwrap();
        let a: Vec<Fault> = (0..10_000).map(|_| f.next_fault().0).collect();
        let b: Vec<Fault> = (0..10_000).map(|_| g.next_fault().0).collect();
        assert_eq!(a, b, "same seed, same faults");
        let share = |k| a.iter().filter(|x| **x == k).count() as f64 / 10_000.0;
        assert!((share(Fault::Error) - 0.3).abs() < 0.02);
        assert!((share(Fault::Hang) - 0.1).abs() < 0.02);
    }

    #[tokio::test(start_paused = true)]
    async fn inject_adds_latency_errors_and_hangs() {
        let slow = FaultInjector::builder()
            .latency(Duration::from_millis(20), Duration::from_millis(20))
            .build()
            .unwrap();
        let t0 = Instant::now();
        let out: Result<u8, InjectedFault> = slow.inject(async { Ok(1) }).await;
        assert_eq!((out, t0.elapsed()), (Ok(1), Duration::from_millis(20)));
        let failing = FaultInjector::builder().error_rate(1.0).build().unwrap();
        assert_eq!(
            failing.inject(async { Ok::<u8, InjectedFault>(1) }).await,
            Err(InjectedFault)
        );
        let hanging = FaultInjector::builder().hang_rate(1.0).build().unwrap();
        let hung = tokio::time::timeout(
            Duration::from_secs(3600),
            hanging.inject(async { Ok::<u8, InjectedFault>(1) }),
        )
        .await;
        assert!(hung.is_err());
        assert!(
            FaultInjector::builder()
                .error_rate(0.8)
                .hang_rate(0.8)
                .build()
                .is_err()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn injector_as_a_tower_layer() {
        use tower::{ServiceBuilder, ServiceExt};
        type BoxError = Box<dyn std::error::Error + Send + Sync>;
        let svc = ServiceBuilder::new()
            .layer(FaultInjector::builder().error_rate(1.0).build().unwrap())
            .service(tower::service_fn(
                |x: u8| async move { Ok::<_, BoxError>(x) },
            ));
        let err = svc.oneshot(1).await.unwrap_err();
        assert!(err.is::<InjectedFault>());
    }

    #[tokio::test(start_paused = true)]
    async fn probe_sees_overlap() {
        let probe = ConcurrencyProbe::new();
        let work = (0..5).map(|_| probe.track(tokio::time::sleep(Duration::from_millis(10))));
        futures_util::future::join_all(work).await;
        assert_eq!((probe.peak(), probe.current(), probe.total()), (5, 0, 5));
    }
}
