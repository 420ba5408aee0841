//! Rate limiting: send no faster than the other side allows.
//!
//! Exceeding a partner's quota earns `429`s, bans or a bill. [`RateLimiter`] admits calls at
//! a steady rate with a burst allowance (GCRA, the token bucket's exact cousin, from the
//! `governor` crate) and either waits for a permit (up to a bound) or rejects at once with
//! [`Rejection::RateLimited`] saying how long until a permit is free. For one limit per host
//! or tenant, put it in a [`Keyed`](crate::Keyed) registry.
//!
//! `governor` is driven here by tokio's clock rather than its own, so the paused clock
//! makes rate-limited code deterministic in tests, like every other policy.
//!
//! **Cancellation:** a waiting call takes its permit only when its wait is over, so a call
//! dropped while waiting has taken nothing from the quota.
//!
//! ```
//! use std::time::Duration;
//! use windlass_policy::{PolicyExt, RateLimiter};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let limiter = RateLimiter::builder()
//!     .per_second(100)
//!     .burst(10)
//!     .max_wait(Duration::from_millis(200))
//!     .build()
//!     .unwrap();
//! let out = limiter.call(|| async { Ok::<_, std::io::Error>(1) }).await;
//! assert_eq!(out.unwrap(), 1);
//! # }
//! ```

use crate::time::saturating_add;
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter as Gcra};
use metrics::{Counter, Histogram};
use tokio::time::Instant;

use crate::config::{ConfigError, ensure};
use crate::context::{Compose, Context, Policy};
use crate::error::{PolicyError, Rejection};
use crate::observe::{self, Inspect, PolicyKind, PolicySnapshot, PolicyState};

/// governor's clock, read from tokio's (pausable) time.
#[derive(Debug, Clone)]
struct TokioClock {
    base: Instant,
}

impl Clock for TokioClock {
    type Instant = Nanos;
    fn now(&self) -> Nanos {
        Nanos::from(self.base.elapsed())
    }
}

type Inner = Gcra<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Nanos>>;

/// Builds a [`RateLimiter`]. There is no default rate: set one with
/// [`per_second`](Self::per_second) or [`every`](Self::every).
#[derive(Debug, Clone)]
pub struct RateLimiterBuilder {
    name: Option<Arc<str>>,
    period: Option<Duration>,
    burst: u32,
    max_wait: Duration,
}

impl RateLimiterBuilder {
    /// Names the limiter.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = Some(name.into());
        self
    }
    /// `n` permits per second, evenly spaced.
    pub fn per_second(mut self, n: u32) -> Self {
        self.period = if n == 0 {
            Some(Duration::ZERO)
        } else {
            Some(Duration::from_secs(1) / n)
        };
        self
    }
    /// One permit every `period`.
    pub fn every(mut self, period: Duration) -> Self {
        self.period = Some(period);
        self
    }
    /// Permits that may be taken at once after a quiet spell (default 1).
    pub fn burst(mut self, n: u32) -> Self {
        self.burst = n;
        self
    }
    /// Wait up to this long for a permit (default zero: reject at once).
    pub fn max_wait(mut self, d: Duration) -> Self {
        self.max_wait = d;
        self
    }

    /// Validates and builds.
    pub fn build(self) -> Result<RateLimiter, ConfigError> {
        const P: &str = "rate limiter";
        let period = self.period.ok_or_else(|| {
            ConfigError::new(P, "rate", "must be set with per_second() or every()")
        })?;
        ensure(period > Duration::ZERO, P, "rate", "must be positive")?;
        let burst = NonZeroU32::new(self.burst)
            .ok_or_else(|| ConfigError::new(P, "burst", "must be at least 1"))?;
        let quota = Quota::with_period(period)
            .ok_or_else(|| ConfigError::new(P, "rate", "must be positive"))?
            .allow_burst(burst);
        let name = self
            .name
            .unwrap_or_else(|| observe::default_name("rate-limiter"));
        let label = name.to_string();
        let clock = TokioClock {
            base: Instant::now(),
        };
        let shared = Arc::new(Shared {
            gcra: Gcra::direct_with_clock(quota, clock.clone()),
            clock,
            max_wait: self.max_wait,
            admitted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            m_rejected: metrics::counter!("windlass_policy_rejections_total", "name" => label.clone(), "reason" => "rate_limited"),
            m_wait: metrics::histogram!("windlass_rate_limit_wait_seconds", "name" => label),
            name,
        });
        observe::register(&shared);
        Ok(RateLimiter { shared })
    }
}

struct Shared {
    name: Arc<str>,
    gcra: Inner,
    clock: TokioClock,
    max_wait: Duration,
    admitted: AtomicU64,
    rejected: AtomicU64,
    m_rejected: Counter,
    m_wait: Histogram,
}

impl Inspect for Shared {
    fn inspect(&self) -> PolicySnapshot {
        PolicySnapshot {
            name: self.name.clone(),
            kind: PolicyKind::RateLimiter,
            state: PolicyState::RateLimiter {
                admitted: self.admitted.load(Ordering::Relaxed),
                rejected: self.rejected.load(Ordering::Relaxed),
            },
        }
    }
}

/// A GCRA rate limiter. Cheap to clone: clones share the rate.
#[derive(Clone)]
pub struct RateLimiter {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("name", &self.shared.name)
            .field("max_wait", &self.shared.max_wait)
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// Starts building a rate limiter.
    pub fn builder() -> RateLimiterBuilder {
        RateLimiterBuilder {
            name: None,
            period: None,
            burst: 1,
            max_wait: Duration::ZERO,
        }
    }

    /// The limiter's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    fn reject(&self, retry_after: Duration) -> Rejection {
        let s = &self.shared;
        s.rejected.fetch_add(1, Ordering::Relaxed);
        s.m_rejected.increment(1);
        Rejection::RateLimited {
            name: s.name.clone(),
            retry_after,
        }
    }

    /// Takes a permit now, or says how long until one is free.
    pub fn try_acquire(&self) -> Result<(), Rejection> {
        let s = &self.shared;
        match s.gcra.check() {
            Ok(()) => {
                s.admitted.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(not_until) => Err(self.reject(not_until.wait_time_from(s.clock.now()))),
        }
    }

    /// Takes a permit, waiting up to the configured maximum wait (and never past
    /// `deadline`).
    pub async fn acquire(&self, deadline: Option<Instant>) -> Result<(), Rejection> {
        let s = &self.shared;
        // The common case reads the clock once (inside governor) and returns.
        if s.gcra.check().is_ok() {
            s.admitted.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let start = Instant::now();
        let mut limit = saturating_add(start, s.max_wait);
        if let Some(d) = deadline {
            limit = limit.min(d);
        }
        loop {
            let wait = match s.gcra.check() {
                Ok(()) => {
                    s.admitted.fetch_add(1, Ordering::Relaxed);
                    s.m_wait.record(start.elapsed().as_secs_f64());
                    return Ok(());
                }
                Err(not_until) => not_until.wait_time_from(s.clock.now()),
            };
            let now = Instant::now();
            if saturating_add(now, wait) > limit {
                return Err(self.reject(wait));
            }
            tokio::time::sleep(wait).await;
        }
    }
}

impl Compose for RateLimiter {}

impl<T: Send, E: Send> Policy<T, E> for RateLimiter {
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
            self.acquire(cx.deadline()).await?;
            op(cx).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::PolicyExt;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_steady_rate() {
        let l = RateLimiter::builder()
            .per_second(10)
            .burst(3)
            .build()
            .unwrap();
        for _ in 0..3 {
            assert!(l.try_acquire().is_ok());
        }
        match l.try_acquire() {
            Err(Rejection::RateLimited { retry_after, .. }) => assert_eq!(retry_after, ms(100)),
            other => panic!("{other:?}"),
        }
        tokio::time::advance(ms(100)).await;
        assert!(l.try_acquire().is_ok());
        assert!(l.try_acquire().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_mode_paces_calls() {
        let l = RateLimiter::builder()
            .per_second(10)
            .burst(1)
            .max_wait(Duration::from_secs(10))
            .build()
            .unwrap();
        let start = Instant::now();
        for _ in 0..5 {
            l.call(|| async { Ok::<_, &str>(()) }).await.unwrap();
        }
        // The first is free; four more at 100 ms spacing.
        assert_eq!(start.elapsed(), ms(400));
    }

    #[tokio::test(start_paused = true)]
    async fn wait_bounded_by_max_wait_and_deadline() {
        let l = RateLimiter::builder()
            .every(Duration::from_secs(1))
            .max_wait(ms(500))
            .build()
            .unwrap();
        l.try_acquire().unwrap();
        let start = Instant::now();
        assert!(matches!(
            l.acquire(None).await,
            Err(Rejection::RateLimited { .. })
        ));
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "a wait that cannot succeed is not started"
        );
        let l = RateLimiter::builder()
            .every(ms(300))
            .max_wait(Duration::from_secs(5))
            .build()
            .unwrap();
        l.try_acquire().unwrap();
        let out = l.acquire(Some(Instant::now() + ms(100))).await;
        assert!(out.is_err(), "the deadline is nearer than the next permit");
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_waiter_takes_nothing() {
        let l = RateLimiter::builder()
            .every(ms(100))
            .max_wait(Duration::from_secs(1))
            .build()
            .unwrap();
        l.try_acquire().unwrap();
        // A waiter gives up (its call was dropped) before its turn.
        assert!(tokio::time::timeout(ms(50), l.acquire(None)).await.is_err());
        tokio::time::advance(ms(50)).await;
        // The permit it was waiting for is still there for the next caller.
        assert!(l.try_acquire().is_ok());
    }

    #[test]
    fn invalid_rates_rejected() {
        assert_eq!(RateLimiter::builder().build().unwrap_err().field(), "rate");
        assert_eq!(
            RateLimiter::builder()
                .per_second(0)
                .build()
                .unwrap_err()
                .field(),
            "rate"
        );
        assert_eq!(
            RateLimiter::builder()
                .per_second(5)
                .burst(0)
                .build()
                .unwrap_err()
                .field(),
            "burst"
        );
    }
}
