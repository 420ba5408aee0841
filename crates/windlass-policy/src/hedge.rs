//! Hedging: when an attempt is slow, start another and take whichever answers first.
//!
//! Tail latency is often one slow replica, one GC pause, one lost packet. [`Hedge`] starts
//! the first attempt, and if it has not answered after a *hedging delay* — fixed, or a
//! percentile of recent latencies so that only the slowest few percent hedge — starts
//! another, up to `max_hedges` extra attempts. The first success wins and the others are
//! cancelled. A transient failure launches the next attempt at once; a permanent one ends
//! the call. A delay of zero runs all attempts in parallel.
//!
//! **Only idempotent work hedges:** a call whose [`Context`] is marked non-idempotent runs
//! once. Hedging multiplies load by up to `1 + max_hedges` for the calls it touches; with a
//! p95 delay that is about 5% extra.
//!
//! **Cancellation:** dropping the call drops every attempt in flight; nothing is spawned.
//!
//! ```
//! use std::time::Duration;
//! use windlass_policy::{Hedge, PolicyExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let hedge = Hedge::builder().delay(Duration::from_millis(50)).max_hedges(1).build().unwrap();
//! let n = std::sync::atomic::AtomicU32::new(0);
//! let out = hedge
//!     .call(|| {
//!         let first = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
//!         async move {
//!             // The first attempt hangs; the hedge answers.
//!             if first { std::future::pending::<()>().await }
//!             Ok::<_, &str>("hedged")
//!         }
//!     })
//!     .await;
//! assert_eq!(out.unwrap(), "hedged");
//! # }
//! ```

use crate::time::saturating_add;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use metrics::Counter;
use tokio::time::Instant;

use crate::compose::Compose;
use crate::config::{ConfigError, ensure};
use crate::context::Context;
use crate::error::PolicyError;
use crate::observe::{self, Inspect, PolicyKind, PolicySnapshot, PolicyState};
use crate::policy::Policy;

/// When to start the next attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum HedgeDelay {
    /// After a fixed delay (zero: all at once).
    Fixed(Duration),
    /// After the given percentile (0..1) of recent successful latencies; `initial` until
    /// `min_samples` have been seen.
    Percentile {
        /// For example 0.95.
        quantile: f64,
        /// Samples needed before the percentile is trusted.
        min_samples: usize,
        /// The delay used until then.
        initial: Duration,
    },
}

/// Builds a [`Hedge`]. Defaults: fixed 100 ms delay, 1 extra attempt.
#[derive(Debug, Clone)]
pub struct HedgeBuilder {
    name: Option<Arc<str>>,
    delay: HedgeDelay,
    max_hedges: u32,
}

impl HedgeBuilder {
    /// Names the policy.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = Some(name.into());
        self
    }
    /// A fixed hedging delay.
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = HedgeDelay::Fixed(d);
        self
    }
    /// Hedge after the `quantile` of recent latencies.
    pub fn percentile(mut self, quantile: f64, min_samples: usize, initial: Duration) -> Self {
        self.delay = HedgeDelay::Percentile {
            quantile,
            min_samples,
            initial,
        };
        self
    }
    /// Extra attempts allowed (1 to 10).
    pub fn max_hedges(mut self, n: u32) -> Self {
        self.max_hedges = n;
        self
    }

    /// Validates and builds.
    pub fn build(self) -> Result<Hedge, ConfigError> {
        const P: &str = "hedge";
        ensure(
            (1..=10).contains(&self.max_hedges),
            P,
            "max_hedges",
            "must be between 1 and 10",
        )?;
        if let HedgeDelay::Percentile {
            quantile,
            min_samples,
            ..
        } = self.delay
        {
            ensure(
                quantile > 0.0 && quantile <= 1.0,
                P,
                "percentile.quantile",
                "must be within (0, 1]",
            )?;
            ensure(min_samples >= 1, P, "min_samples", "must be at least 1")?;
        }
        let name = self.name.unwrap_or_else(|| observe::default_name("hedge"));
        let label = name.to_string();
        let shared = Arc::new(Shared {
            delay: self.delay,
            max_hedges: self.max_hedges,
            latencies: Mutex::new(Latencies::default()),
            hedges: AtomicU64::new(0),
            wins: AtomicU64::new(0),
            m_hedges: metrics::counter!("windlass_hedge_attempts_total", "name" => label.clone()),
            m_wins: metrics::counter!("windlass_hedge_wins_total", "name" => label),
            name,
        });
        observe::register(&shared);
        Ok(Hedge { shared })
    }
}

const RING: usize = 256;

#[derive(Debug)]
struct Latencies {
    ring: Vec<Duration>,
    next: usize,
    seen: usize,
    cached: Option<Duration>,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            ring: Vec::with_capacity(RING),
            next: 0,
            seen: 0,
            cached: None,
        }
    }
}

impl Latencies {
    fn record(&mut self, d: Duration, quantile: f64) {
        if self.ring.len() < RING {
            self.ring.push(d);
        } else {
            self.ring[self.next] = d;
        }
        self.next = (self.next + 1) % RING;
        self.seen += 1;
        // Recompute on every sample while few are known, then every 16th: the sort is
        // O(256 log 256), too much for every call of a busy service.
        if self.seen <= 64 || self.seen.is_multiple_of(16) {
            let mut sorted = self.ring.clone();
            sorted.sort_unstable();
            let idx = ((sorted.len() as f64 - 1.0) * quantile).round() as usize;
            self.cached = sorted.get(idx).copied();
        }
    }
}

struct Shared {
    name: Arc<str>,
    delay: HedgeDelay,
    max_hedges: u32,
    latencies: Mutex<Latencies>,
    hedges: AtomicU64,
    wins: AtomicU64,
    m_hedges: Counter,
    m_wins: Counter,
}

impl Inspect for Shared {
    fn inspect(&self) -> PolicySnapshot {
        PolicySnapshot {
            name: self.name.clone(),
            kind: PolicyKind::Hedge,
            state: PolicyState::Hedge {
                hedges: self.hedges.load(Ordering::Relaxed),
                hedge_wins: self.wins.load(Ordering::Relaxed),
            },
        }
    }
}

/// Starts extra attempts for slow calls; first success wins. Cheap to clone.
#[derive(Clone)]
pub struct Hedge {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Hedge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hedge")
            .field("name", &self.shared.name)
            .field("delay", &self.shared.delay)
            .field("max_hedges", &self.shared.max_hedges)
            .finish()
    }
}

impl Hedge {
    /// This policy's live state: the same entry [`crate::observe::snapshot`]
    /// lists for it, without going through the process-wide list.
    pub fn snapshot(&self) -> crate::observe::PolicySnapshot {
        crate::observe::Inspect::inspect(&*self.shared)
    }

    /// Starts building a hedge policy.
    pub fn builder() -> HedgeBuilder {
        HedgeBuilder {
            name: None,
            delay: HedgeDelay::Fixed(Duration::from_millis(100)),
            max_hedges: 1,
        }
    }

    /// The delay the next call would use.
    pub fn current_delay(&self) -> Duration {
        match self.shared.delay {
            HedgeDelay::Fixed(d) => d,
            HedgeDelay::Percentile {
                min_samples,
                initial,
                ..
            } => {
                let l = self
                    .shared
                    .latencies
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if l.seen >= min_samples {
                    l.cached.unwrap_or(initial)
                } else {
                    initial
                }
            }
        }
    }

    fn record(&self, latency: Duration) {
        if let HedgeDelay::Percentile { quantile, .. } = self.shared.delay {
            self.shared
                .latencies
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .record(latency, quantile);
        }
    }
}

impl Compose for Hedge {}

impl<T: Send, E: Send> Policy<T, E> for Hedge {
    fn execute<Op, Fut>(
        &self,
        cx: Context,
        op: &Op,
    ) -> impl Future<Output = Result<T, PolicyError<E>>> + Send
    where
        Op: Fn(Context) -> Fut + Sync,
        Fut: Future<Output = Result<T, PolicyError<E>>> + Send,
    {
        async move {
            if !cx.is_idempotent() {
                return op(cx).await;
            }
            let s = &*self.shared;
            let delay = self.current_delay();
            let started = Instant::now();
            let mut primary = pin!(op(cx.with_attempt(1)));
            let mut primary_done = false;
            // Created on the first hedge only: the common, fast path allocates nothing.
            let mut extras: Option<FuturesUnordered<Fut>> = None;
            let mut launched: u32 = 1;
            let mut last_err: Option<PolicyError<E>> = None;
            let mut launch_now = delay.is_zero();
            let mut timer = pin!(tokio::time::sleep(delay));
            let total = 1 + s.max_hedges;
            std::future::poll_fn(|task| {
                loop {
                    let mut progressed = false;
                    if !primary_done && let Poll::Ready(r) = primary.as_mut().poll(task) {
                        primary_done = true;
                        progressed = true;
                        match r {
                            Ok(v) => {
                                self.record(started.elapsed());
                                return Poll::Ready(Ok(v));
                            }
                            Err(e) if !e.class().is_retryable() => return Poll::Ready(Err(e)),
                            Err(e) => {
                                last_err = Some(e);
                                launch_now = true;
                            }
                        }
                    }
                    while let Some(Poll::Ready(Some(r))) =
                        extras.as_mut().map(|x| x.poll_next_unpin(task))
                    {
                        progressed = true;
                        match r {
                            Ok(v) => {
                                self.record(started.elapsed());
                                s.wins.fetch_add(1, Ordering::Relaxed);
                                s.m_wins.increment(1);
                                return Poll::Ready(Ok(v));
                            }
                            Err(e) if !e.class().is_retryable() => return Poll::Ready(Err(e)),
                            Err(e) => {
                                last_err = Some(e);
                                launch_now = true;
                            }
                        }
                    }
                    if launched < total {
                        if !launch_now && timer.as_mut().poll(task).is_ready() {
                            launch_now = true;
                        }
                        if launch_now {
                            launched += 1;
                            launch_now = delay.is_zero();
                            s.hedges.fetch_add(1, Ordering::Relaxed);
                            s.m_hedges.increment(1);
                            extras
                                .get_or_insert_with(FuturesUnordered::new)
                                .push(op(cx.with_attempt(launched)));
                            timer.as_mut().reset(saturating_add(Instant::now(), delay));
                            continue;
                        }
                    } else if primary_done && extras.as_ref().is_none_or(|x| x.is_empty()) {
                        return Poll::Ready(Err(last_err
                            .take()
                            .unwrap_or(PolicyError::DeadlineExceeded)));
                    }
                    if !progressed {
                        return Poll::Pending;
                    }
                }
            })
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::ErrorClass;
    use crate::policy::PolicyExt;
    use std::sync::atomic::AtomicU32;
    use windlass_test_support::ms;

    type Attempt =
        std::pin::Pin<Box<dyn Future<Output = Result<u32, PolicyError<&'static str>>> + Send>>;

    /// Attempt `n` (1-based) takes `lat[n-1]` and then returns `res[n-1]`.
    fn scripted<'a>(
        lat: &'static [u64],
        ok: &'static [bool],
        starts: &'a Mutex<Vec<Duration>>,
        t0: Instant,
    ) -> impl Fn(Context) -> Attempt + Sync + 'a {
        move |cx| {
            let i = (cx.attempt() - 1) as usize;
            starts.lock().unwrap().push(t0.elapsed());
            Box::pin(async move {
                tokio::time::sleep(ms(lat[i])).await;
                if ok[i] {
                    Ok(cx.attempt())
                } else {
                    Err(PolicyError::operation("fail", ErrorClass::Transient))
                }
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn hedge_after_delay_and_first_success_wins() {
        let h = Hedge::builder()
            .delay(ms(50))
            .max_hedges(2)
            .build()
            .unwrap();
        let starts = Mutex::new(Vec::new());
        let t0 = Instant::now();
        let out = h
            .execute(
                Context::new(),
                &scripted(&[1000, 30, 5], &[true, true, true], &starts, t0),
            )
            .await;
        assert_eq!(out.unwrap(), 2, "the first hedge answered first");
        assert_eq!(t0.elapsed(), ms(80));
        assert_eq!(
            *starts.lock().unwrap(),
            vec![ms(0), ms(50)],
            "the third never started"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn zero_delay_runs_in_parallel() {
        let h = Hedge::builder()
            .delay(Duration::ZERO)
            .max_hedges(2)
            .build()
            .unwrap();
        let starts = Mutex::new(Vec::new());
        let t0 = Instant::now();
        let out = h
            .execute(
                Context::new(),
                &scripted(&[300, 200, 100], &[true, true, true], &starts, t0),
            )
            .await;
        assert_eq!(out.unwrap(), 3);
        assert_eq!(*starts.lock().unwrap(), vec![ms(0), ms(0), ms(0)]);
        assert_eq!(t0.elapsed(), ms(100));
    }

    #[tokio::test(start_paused = true)]
    async fn failure_launches_next_at_once_and_all_failing_returns_last_error() {
        let h = Hedge::builder()
            .delay(ms(500))
            .max_hedges(1)
            .build()
            .unwrap();
        let starts = Mutex::new(Vec::new());
        let t0 = Instant::now();
        let out = h
            .execute(
                Context::new(),
                &scripted(&[10, 10], &[false, false], &starts, t0),
            )
            .await;
        assert!(matches!(out, Err(PolicyError::Operation { .. })));
        assert_eq!(*starts.lock().unwrap(), vec![ms(0), ms(10)]);
    }

    #[tokio::test(start_paused = true)]
    async fn losers_are_cancelled_and_non_idempotent_work_is_not_hedged() {
        let h = Hedge::builder()
            .delay(ms(10))
            .max_hedges(1)
            .build()
            .unwrap();
        let finished = Arc::new(AtomicU32::new(0));
        let f = finished.clone();
        let out = h
            .call(|| {
                let f = f.clone();
                async move {
                    tokio::time::sleep(ms(100)).await;
                    f.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, &str>(())
                }
            })
            .await;
        assert!(out.is_ok());
        tokio::time::advance(ms(1000)).await;
        assert_eq!(
            finished.load(Ordering::SeqCst),
            1,
            "the slower attempt was dropped"
        );

        let calls = AtomicU32::new(0);
        let cx = Context::new().with_idempotent(false);
        let _ = h
            .call_with(cx, &crate::AllTransient, |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                async {
                    tokio::time::sleep(ms(100)).await;
                    Ok::<_, &str>(())
                }
            })
            .await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn percentile_delay_follows_observed_latency() {
        let h = Hedge::builder()
            .percentile(0.9, 10, ms(500))
            .max_hedges(1)
            .build()
            .unwrap();
        assert_eq!(h.current_delay(), ms(500));
        for i in 1..=20u64 {
            let _ = h
                .call(|| async move {
                    tokio::time::sleep(ms(i * 10)).await;
                    Ok::<_, &str>(())
                })
                .await;
        }
        let d = h.current_delay();
        assert!(d >= ms(170) && d <= ms(200), "p90 of 10..200 ms, got {d:?}");
    }

    #[test]
    fn invalid_configs_rejected() {
        assert_eq!(
            Hedge::builder().max_hedges(0).build().unwrap_err().field(),
            "max_hedges"
        );
        assert_eq!(
            Hedge::builder()
                .percentile(1.5, 10, ms(1))
                .build()
                .unwrap_err()
                .field(),
            "percentile.quantile"
        );
    }
}
