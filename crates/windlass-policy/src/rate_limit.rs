//! Rate limiting: send no faster than the other side allows.
//!
//! Exceeding a partner's quota earns `429`s, bans or a bill. [`RateLimiter`] admits calls
//! and either waits for a permit (up to a bound) or rejects at once with
//! [`Rejection::RateLimited`] saying how long until a permit is free. Two ways to count:
//!
//! - **smooth** (the default, [`per_second`](RateLimiterBuilder::per_second) /
//!   [`every`](RateLimiterBuilder::every)): GCRA, the token bucket's exact cousin — permits
//!   evenly spaced, with [`burst`](RateLimiterBuilder::burst) allowed at once after a quiet
//!   spell. One atomic compare-and-swap per permit.
//! - **fixed window** ([`fixed_window`](RateLimiterBuilder::fixed_window)): at most `limit`
//!   permits per window, all of which may go at the window's start — what many APIs
//!   actually enforce ("1,000 requests per minute"), and burstier than GCRA.
//!
//! For one limit per host or tenant, put it in a [`Keyed`](crate::Keyed) registry. Time is
//! tokio's (the paused clock makes rate-limited code deterministic in tests), and a call
//! takes the clock reading its [`Context`] already has, so a pipeline reads the clock once
//! per attempt, not once per policy.
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
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::{Counter, Histogram};
use tokio::time::Instant;

use crate::compose::Compose;
use crate::config::{ConfigError, ensure};
use crate::context::Context;
use crate::error::{PolicyError, Rejection};
use crate::guard::{self, Admission, Guard, Refusal, check_deadline};
use crate::observe::{self, Inspect, PolicyKind, PolicySnapshot, PolicyState};

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The permit arithmetic, in nanoseconds since the limiter was built.
#[derive(Debug)]
enum Meter {
    /// GCRA: `tat` is the theoretical arrival time of the next permit; a call at `now` is
    /// admitted when `max(tat, now) - now <= tolerance`, and pushes `tat` one interval on.
    Gcra {
        tat: AtomicU64,
        interval: u64,
        tolerance: u64,
    },
    /// `(window number << 32) | permits taken in it`.
    Window {
        state: AtomicU64,
        limit: u32,
        length: u64,
    },
}

impl Meter {
    /// Takes a permit at `now`, or returns how many nanoseconds until one is free.
    fn check(&self, now: u64) -> Result<(), u64> {
        match self {
            Meter::Gcra {
                tat,
                interval,
                tolerance,
            } => {
                let mut current = tat.load(Ordering::Acquire);
                loop {
                    let start = current.max(now);
                    let ahead = start - now;
                    if ahead > *tolerance {
                        return Err(ahead - tolerance);
                    }
                    match tat.compare_exchange_weak(
                        current,
                        start.saturating_add(*interval),
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => return Ok(()),
                        Err(seen) => current = seen,
                    }
                }
            }
            Meter::Window {
                state,
                limit,
                length,
            } => {
                let window = now / length;
                let tag = window & 0xffff_ffff;
                let mut current = state.load(Ordering::Acquire);
                loop {
                    let taken = if current >> 32 == tag {
                        current & 0xffff_ffff
                    } else {
                        0
                    };
                    if taken >= u64::from(*limit) {
                        return Err((window + 1).saturating_mul(*length).saturating_sub(now));
                    }
                    match state.compare_exchange_weak(
                        current,
                        (tag << 32) | (taken + 1),
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => return Ok(()),
                        Err(seen) => current = seen,
                    }
                }
            }
        }
    }
}

/// Builds a [`RateLimiter`]. There is no default rate: set one with
/// [`per_second`](Self::per_second) or [`every`](Self::every).
#[derive(Debug, Clone)]
pub struct RateLimiterBuilder {
    name: Option<Arc<str>>,
    period: Option<Duration>,
    burst: u32,
    window: Option<(u32, Duration)>,
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
    /// Fixed-window counting instead of GCRA: at most `limit` permits per `window`, all of
    /// which may be taken at the window's start. Replaces `per_second`/`every`/`burst`.
    pub fn fixed_window(mut self, limit: u32, window: Duration) -> Self {
        self.window = Some((limit, window));
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
        let meter = match (self.window, self.period) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    P,
                    "rate",
                    "set either a rate (per_second/every) or a fixed window, not both",
                ));
            }
            (Some((limit, window)), None) => {
                ensure(limit >= 1, P, "fixed_window.limit", "must be at least 1")?;
                ensure(
                    window > Duration::ZERO,
                    P,
                    "fixed_window.window",
                    "must be positive",
                )?;
                Meter::Window {
                    state: AtomicU64::new(0),
                    limit,
                    length: nanos(window),
                }
            }
            (None, period) => {
                let period = period.ok_or_else(|| {
                    ConfigError::new(
                        P,
                        "rate",
                        "must be set with per_second(), every() or fixed_window()",
                    )
                })?;
                ensure(period > Duration::ZERO, P, "rate", "must be positive")?;
                ensure(self.burst >= 1, P, "burst", "must be at least 1")?;
                let interval = nanos(period);
                Meter::Gcra {
                    tat: AtomicU64::new(0),
                    interval,
                    tolerance: interval.saturating_mul(u64::from(self.burst - 1)),
                }
            }
        };
        let name = self
            .name
            .unwrap_or_else(|| observe::default_name("rate-limiter"));
        let label = name.to_string();
        let shared = Arc::new(Shared {
            meter,
            base: Instant::now(),
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
    meter: Meter,
    /// Time zero of the meter's arithmetic.
    base: Instant,
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

/// A rate limiter (GCRA or fixed window). Cheap to clone: clones share the rate.
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
    /// This policy's live state: the same entry [`crate::observe::snapshot`]
    /// lists for it, without going through the process-wide list.
    pub fn snapshot(&self) -> crate::observe::PolicySnapshot {
        crate::observe::Inspect::inspect(&*self.shared)
    }

    /// Starts building a rate limiter.
    pub fn builder() -> RateLimiterBuilder {
        RateLimiterBuilder {
            name: None,
            period: None,
            burst: 1,
            window: None,
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

    /// One permit at `now`, or how long until one is free.
    #[inline]
    fn check_at(&self, now: Instant) -> Result<(), Duration> {
        let s = &self.shared;
        let at = nanos(now.saturating_duration_since(s.base));
        match s.meter.check(at) {
            Ok(()) => {
                s.admitted.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(wait) => Err(Duration::from_nanos(wait)),
        }
    }

    /// Takes a permit now, or says how long until one is free.
    pub fn try_acquire(&self) -> Result<(), Rejection> {
        self.check_at(Instant::now())
            .map_err(|wait| self.reject(wait))
    }

    /// Takes a permit, waiting up to the configured maximum wait and never past `deadline`.
    /// When the next permit comes after either, it refuses at once rather than sleeping
    /// first: with [`Rejection::RateLimited`] if its own maximum wait is the earlier limit,
    /// with [`Refusal::DeadlineExceeded`] if the deadline is, as for every
    /// guard ([`crate::guard`]).
    pub async fn acquire(&self, deadline: Option<Instant>) -> Result<(), Refusal> {
        self.acquire_at(Instant::now(), deadline).await.map(|_| ())
    }

    /// [`acquire`](Self::acquire) for a call whose clock reading is `now`. Returns whether
    /// it waited (after a wait, `now` is stale).
    async fn acquire_at(&self, now: Instant, deadline: Option<Instant>) -> Result<bool, Refusal> {
        let s = &self.shared;
        let mut wait = match self.check_at(now) {
            Ok(()) => return Ok(false),
            Err(wait) => wait,
        };
        let own = saturating_add(now, s.max_wait);
        let mut t = now;
        loop {
            let ready_at = saturating_add(t, wait);
            if let Some(verdict) =
                guard::wait_verdict(ready_at, own, deadline, || self.reject(wait))
            {
                return Err(verdict);
            }
            tokio::time::sleep(wait).await;
            t = Instant::now();
            match self.check_at(t) {
                Ok(()) => {
                    s.m_wait
                        .record(t.saturating_duration_since(now).as_secs_f64());
                    return Ok(true);
                }
                Err(w) => wait = w,
            }
        }
    }
}

impl Compose for RateLimiter {}

impl Guard for RateLimiter {
    type Permit<'a> = ();

    #[inline]
    fn try_admit(&self, cx: &mut Context) -> Admission<()> {
        let now = cx.now();
        *cx = cx.with_now(now);
        if let Err(refusal) = check_deadline(cx) {
            return Admission::Refused(refusal);
        }
        match self.check_at(now) {
            Ok(()) => Admission::Admitted(()),
            Err(_) => Admission::Wait,
        }
    }

    fn wait(&self, cx: &Context) -> impl Future<Output = Result<(), Refusal>> + Send {
        let (now, deadline) = (cx.now(), cx.deadline());
        async move { self.acquire_at(now, deadline).await.map(|_| ()) }
    }

    #[inline]
    fn complete<T, E>(&self, _permit: (), _result: &Result<T, PolicyError<E>>) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicyExt;
    use windlass_test_support::ms;

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
    async fn fixed_window_allows_the_whole_limit_at_once_then_waits_for_the_next_window() {
        let l = RateLimiter::builder()
            .fixed_window(3, ms(1000))
            .build()
            .unwrap();
        tokio::time::advance(ms(400)).await;
        for _ in 0..3 {
            assert!(l.try_acquire().is_ok(), "bursty: all three at once");
        }
        match l.try_acquire() {
            Err(Rejection::RateLimited { retry_after, .. }) => {
                assert_eq!(retry_after, ms(600), "until the window ends")
            }
            other => panic!("{other:?}"),
        }
        tokio::time::advance(ms(600)).await;
        for _ in 0..3 {
            assert!(l.try_acquire().is_ok(), "a fresh window");
        }
        assert!(l.try_acquire().is_err());
    }

    #[test]
    fn rate_settings_are_validated_by_name() {
        let field = |b: RateLimiterBuilder| b.build().unwrap_err().field();
        assert_eq!(field(RateLimiter::builder()), "rate");
        assert_eq!(field(RateLimiter::builder().per_second(0)), "rate");
        assert_eq!(
            field(RateLimiter::builder().per_second(5).burst(0)),
            "burst"
        );
        assert_eq!(
            field(RateLimiter::builder().fixed_window(0, ms(10))),
            "fixed_window.limit"
        );
        assert_eq!(
            field(RateLimiter::builder().fixed_window(1, Duration::ZERO)),
            "fixed_window.window"
        );
        assert_eq!(
            field(RateLimiter::builder().per_second(1).fixed_window(1, ms(1))),
            "rate"
        );
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

    #[test]
    fn a_limiter_keeps_its_name() {
        let l = RateLimiter::builder()
            .name("partner-api")
            .per_second(5)
            .build()
            .unwrap();
        assert_eq!(l.name(), "partner-api");
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
            Err(Refusal::Rejected(Rejection::RateLimited { .. }))
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
        assert_eq!(
            out,
            Err(Refusal::DeadlineExceeded),
            "the deadline is nearer than the next permit and the nearer limit"
        );
        assert_eq!(start.elapsed(), Duration::ZERO, "refused without sleeping");
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
