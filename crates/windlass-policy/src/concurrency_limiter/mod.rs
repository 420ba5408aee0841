//! Load shedding and adaptive concurrency limits.
//!
//! A service past its capacity gets slower for everyone until it falls over; the only
//! winning move is to refuse some work early and fast. [`ConcurrencyLimiter`] caps calls in
//! flight and sheds the rest with [`Rejection::Shed`] — lowest [`Priority`] first: each
//! priority may use only its share of the limit (by default low 50%, normal 75%, high 90%,
//! critical 100%), so when load rises, background work is refused while user-facing and
//! critical calls still get through.
//!
//! The limit itself can be fixed, or adapt ([`LimitAlgorithm`]): AIMD backs off when calls
//! are dropped (timeouts, overload answers); Gradient2 shrinks the limit as latency rises
//! above its long-term average. Either finds the concurrency the dependency can actually
//! take, instead of a number someone guessed a year ago.
//!
//! **Cancellation:** a dropped call frees its slot and contributes no sample.
//!
//! ```
//! use windlass_policy::{ConcurrencyLimiter, LimitAlgorithm, PolicyExt, Priority, Context, AllTransient};
//! use windlass_policy::concurrency_limiter::Aimd;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let limiter = ConcurrencyLimiter::builder()
//!     .algorithm(LimitAlgorithm::Aimd(Aimd::default()))
//!     .build()
//!     .unwrap();
//! let cx = Context::new().with_priority(Priority::Low);
//! let out = limiter.call_with(cx, &AllTransient, |_| async { Ok::<_, std::io::Error>(1) }).await;
//! assert_eq!(out.unwrap(), 1);
//! # }
//! ```

mod algorithm;

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use metrics::{Counter, Gauge};
use tokio::time::Instant;

use algorithm::LimitState;
pub use algorithm::{Aimd, Gradient2, LimitAlgorithm, Sample};

use crate::classify::ErrorClass;
use crate::compose::Compose;
use crate::config::{ConfigError, ensure_range};
use crate::context::{Context, Priority};
use crate::error::{PolicyError, Rejection};
use crate::guard::{Admission, Guard, Refusal, check_deadline};
use crate::observe::{self, Inspect, PolicyKind, PolicySnapshot, PolicyState};

/// Builds a [`ConcurrencyLimiter`]. Default: AIMD with its defaults, shares low 0.5,
/// normal 0.75, high 0.9, critical 1.0.
#[derive(Debug, Clone)]
pub struct ConcurrencyLimiterBuilder {
    name: Option<Arc<str>>,
    algorithm: LimitAlgorithm,
    shares: [f64; 4],
}

impl ConcurrencyLimiterBuilder {
    /// Names the limiter.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = Some(name.into());
        self
    }
    /// How the limit is chosen.
    pub fn algorithm(mut self, algorithm: LimitAlgorithm) -> Self {
        self.algorithm = algorithm;
        self
    }
    /// The share of the limit that calls of `priority` may fill, in (0, 1]. Critical is
    /// always 1.
    pub fn priority_share(mut self, priority: Priority, share: f64) -> Self {
        self.shares[priority as usize] = share;
        self
    }

    /// Validates and builds.
    pub fn build(self) -> Result<ConcurrencyLimiter, ConfigError> {
        self.algorithm.validate()?;
        for p in [Priority::Low, Priority::Normal, Priority::High] {
            ensure_range(
                self.shares[p as usize],
                0.01,
                1.0,
                "concurrency limiter",
                "priority_share",
            )?;
        }
        let mut shares = self.shares;
        shares[Priority::Critical as usize] = 1.0;
        let name = self
            .name
            .unwrap_or_else(|| observe::default_name("concurrency-limiter"));
        let label = name.to_string();
        let initial = self.algorithm.initial();
        let shared = Arc::new(Shared {
            limit: AtomicUsize::new(initial),
            in_flight: AtomicUsize::new(0),
            adaptive: match self.algorithm {
                LimitAlgorithm::Fixed(_) => None,
                other => Some(Mutex::new(LimitState::new(other))),
            },
            shares,
            shed: AtomicU64::new(0),
            m_shed: Priority::ALL.map(|p| {
                metrics::counter!("windlass_policy_rejections_total", "name" => label.clone(), "reason" => "shed", "priority" => p.as_str())
            }),
            m_limit: metrics::gauge!("windlass_concurrency_limit", "name" => label.clone()),
            m_in_flight: metrics::gauge!("windlass_concurrency_in_flight", "name" => label),
            name,
        });
        shared.m_limit.set(initial as f64);
        observe::register(&shared);
        Ok(ConcurrencyLimiter { shared })
    }
}

struct Shared {
    name: Arc<str>,
    limit: AtomicUsize,
    in_flight: AtomicUsize,
    adaptive: Option<Mutex<LimitState>>,
    shares: [f64; 4],
    shed: AtomicU64,
    m_shed: [Counter; 4],
    m_limit: Gauge,
    m_in_flight: Gauge,
}

impl Inspect for Shared {
    fn inspect(&self) -> PolicySnapshot {
        PolicySnapshot {
            name: self.name.clone(),
            kind: PolicyKind::ConcurrencyLimiter,
            state: PolicyState::ConcurrencyLimiter {
                limit: self.limit.load(Ordering::Relaxed),
                in_flight: self.in_flight.load(Ordering::Relaxed),
                shed: self.shed.load(Ordering::Relaxed),
            },
        }
    }
}

/// Caps calls in flight (fixed or adaptive), shedding low priorities first. Cheap to clone.
#[derive(Clone)]
pub struct ConcurrencyLimiter {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ConcurrencyLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConcurrencyLimiter")
            .field("name", &self.shared.name)
            .field("limit", &self.limit())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

/// A slot in a [`ConcurrencyLimiter`]. Report with [`finish`](Self::finish); dropping it
/// unreported frees the slot without a sample.
#[must_use = "finish the permit with the call's outcome, or drop it to release the slot"]
#[derive(Debug)]
pub struct LimitPermit<'a> {
    limiter: &'a ConcurrencyLimiter,
    started: Option<Instant>,
    in_flight: usize,
}

impl LimitPermit<'_> {
    /// Frees the slot and feeds the adaptive algorithm one sample.
    pub fn finish(mut self, dropped: bool) {
        let s = &self.limiter.shared;
        if let (Some(state), Some(started)) = (&s.adaptive, self.started.take()) {
            let sample = Sample {
                rtt: started.elapsed(),
                in_flight: self.in_flight,
                dropped,
            };
            let current = s.limit.load(Ordering::Relaxed);
            let next = state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .update(current, sample);
            if next != current {
                s.limit.store(next, Ordering::Relaxed);
                s.m_limit.set(next as f64);
            }
        }
    }
}

impl Drop for LimitPermit<'_> {
    fn drop(&mut self) {
        let s = &self.limiter.shared;
        s.in_flight.fetch_sub(1, Ordering::AcqRel);
        s.m_in_flight.decrement(1.0);
    }
}

impl ConcurrencyLimiter {
    /// This policy's live state: the same entry [`crate::observe::snapshot`]
    /// lists for it, without going through the process-wide list.
    pub fn snapshot(&self) -> crate::observe::PolicySnapshot {
        crate::observe::Inspect::inspect(&*self.shared)
    }

    /// Starts building a limiter.
    pub fn builder() -> ConcurrencyLimiterBuilder {
        ConcurrencyLimiterBuilder {
            name: None,
            algorithm: LimitAlgorithm::Aimd(Aimd::default()),
            shares: [0.5, 0.75, 0.9, 1.0],
        }
    }

    /// The limit now in force.
    pub fn limit(&self) -> usize {
        self.shared.limit.load(Ordering::Relaxed)
    }

    /// Calls in flight.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Relaxed)
    }

    /// The most calls of `priority` that may be in flight at the current limit.
    pub fn allowed(&self, priority: Priority) -> usize {
        let limit = self.limit();
        ((limit as f64 * self.shared.shares[priority as usize]).ceil() as usize)
            .clamp(1, limit.max(1))
    }

    /// Takes a slot for a call of `priority`, or sheds it.
    pub fn try_acquire(&self, priority: Priority) -> Result<LimitPermit<'_>, Rejection> {
        self.try_acquire_at(priority, Instant::now)
    }

    /// [`try_acquire`](Self::try_acquire) whose start time (read only by adaptive limits) is
    /// `now`.
    fn try_acquire_at(
        &self,
        priority: Priority,
        now: impl FnOnce() -> Instant,
    ) -> Result<LimitPermit<'_>, Rejection> {
        let s = &self.shared;
        let allowed = self.allowed(priority);
        let mut current = s.in_flight.load(Ordering::Acquire);
        loop {
            if current >= allowed {
                s.shed.fetch_add(1, Ordering::Relaxed);
                s.m_shed[priority as usize].increment(1);
                return Err(Rejection::Shed {
                    name: s.name.clone(),
                    priority,
                    in_flight: current,
                    limit: allowed,
                });
            }
            match s.in_flight.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
        s.m_in_flight.increment(1.0);
        Ok(LimitPermit {
            limiter: self,
            started: s.adaptive.as_ref().map(|_| now()),
            in_flight: current + 1,
        })
    }
}

/// Whether a result tells an adaptive limit that the dependency is overloaded.
fn is_drop<T, E>(r: &Result<T, PolicyError<E>>) -> bool {
    match r {
        Ok(_) => false,
        Err(PolicyError::Timeout(_) | PolicyError::DeadlineExceeded | PolicyError::Rejected(_)) => {
            true
        }
        Err(e) => matches!(e.class(), ErrorClass::RetryAfter(_)),
    }
}

impl Compose for ConcurrencyLimiter {}

impl Guard for ConcurrencyLimiter {
    type Permit<'a> = LimitPermit<'a>;

    #[inline]
    fn try_admit(&self, cx: &mut Context) -> Admission<Self::Permit<'_>> {
        let cx = &*cx;
        Admission::decided(
            check_deadline(cx).and_then(|()| Ok(self.try_acquire_at(cx.priority(), || cx.now())?)),
        )
    }

    /// A limiter never waits: it sheds at once.
    fn wait(&self, cx: &Context) -> impl Future<Output = Result<Self::Permit<'_>, Refusal>> + Send {
        std::future::ready(self.try_admit(&mut cx.clone()).into_decided())
    }

    #[inline]
    fn complete<T, E>(&self, permit: LimitPermit<'_>, result: &Result<T, PolicyError<E>>) {
        permit.finish(is_drop(result));
    }
}

#[cfg(test)]
mod tests;
