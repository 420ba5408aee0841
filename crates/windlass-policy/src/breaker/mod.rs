//! Circuit breaker: stop calling a service that is failing, and find out when it recovers.
//!
//! Retrying a dead service wastes the caller's time and keeps the service down. A breaker
//! watches the outcomes of calls in a sliding window; when the failure rate (or, if you turn
//! slow-call detection on, the share of slow calls) reaches its threshold, it *opens* and rejects calls at once, with
//! [`Rejection::CircuitOpen`] saying how long until it may admit again. After the open
//! duration it goes *half-open* and admits exactly `permitted_in_half_open` probe calls —
//! exactly, however many tasks race for them — and closes again if they succeed, or reopens,
//! for longer each time if configured so.
//!
//! Semantics follow Resilience4j: states [`BreakerState::Closed`], `Open`, `HalfOpen` plus
//! `Disabled`, `ForcedOpen` and `MetricsOnly`; count- or time-based windows with O(1)
//! updates; thresholds are reached when a rate is `>=` its threshold after the minimum number
//! of calls. One difference: slow-call detection is off until `slow_call_rate_threshold` is
//! set, so that a breaker judged on failures alone never reads the clock while closed.
//! Which errors count is decided by their [`ErrorClass`]: by default transient
//! failures and timeouts count, permanent and cancelled ones are ignored (a `404` says
//! nothing about the service's health), and rejections by other policies are ignored.
//!
//! **Cancellation:** dropping a call's future releases its permit without counting it; in
//! half-open its probe slot goes to the next caller.
//!
//! ```
//! use std::time::Duration;
//! use windlass_policy::{CircuitBreaker, PolicyError, PolicyExt, Rejection};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let breaker = CircuitBreaker::builder()
//!     .count_window(10)
//!     .minimum_calls(4)
//!     .failure_rate_threshold(0.5)
//!     .open_duration(Duration::from_secs(30))
//!     .build()
//!     .unwrap();
//! for _ in 0..4 {
//!     let _ = breaker.call(|| async { Err::<(), _>("503") }).await;
//! }
//! let rejected = breaker.call(|| async { Ok::<_, &str>(()) }).await;
//! assert!(matches!(rejected, Err(PolicyError::Rejected(Rejection::CircuitOpen { .. }))));
//! # }
//! ```

mod builder;
mod state;
mod window;

use crate::time::saturating_add;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use crate::sync::{AtomicU64, Mutex, MutexGuard};
use std::time::Duration;

use metrics::{Counter, Gauge};
use tokio::time::Instant;

use crate::classify::ErrorClass;
use crate::context::Context;
use crate::error::{PolicyError, Rejection};
use crate::guard::{Admission, Guard, Refusal, check_deadline};
use crate::observe::{Inspect, PolicyKind, PolicySnapshot, PolicyState};
pub use builder::{CircuitBreakerBuilder, FailurePredicate, WindowKind};
pub use state::BreakerState;
use window::{Outcome, Totals, Window};

const STATE_MASK: u64 = 0x7;
/// Set in `fast` while a closed (or metrics-only) count window holds at least the minimum
/// number of calls.
const WARM: u64 = 0x80;
const STRIPES: usize = 8;
/// Batched successes are folded into the window after this many per stripe.
const BATCH: u64 = 32;

#[repr(align(128))]
struct Stripe(AtomicU64);

/// The stripe this thread counts its successes in.
fn stripe_index() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    INDEX.with(|i| *i)
}

#[derive(Debug)]
struct Config {
    failure_rate_threshold: f64,
    /// `None`: slow-call detection is off, and the breaker reads no clock on the success
    /// path of a closed count window.
    slow_call_rate_threshold: Option<f64>,
    slow_call_duration: Duration,
    minimum_calls: u64,
    open_duration: Duration,
    open_duration_multiplier: f64,
    max_open_duration: Duration,
    permitted_in_half_open: u32,
    max_wait_in_half_open: Duration,
    counts_as_failure: FailurePredicate,
}

#[derive(Debug)]
struct Core {
    state: BreakerState,
    /// Bumped on every transition; a permit from an older generation counts for nothing.
    generation: u64,
    window: Window,
    /// When the current state began.
    since: Instant,
    /// How long the current (or last) opening lasts.
    open_for: Duration,
    consecutive_openings: u32,
    /// Probe slots still free in half-open.
    half_open_left: u32,
    /// Outcomes of the finished half-open probes.
    half_open: Totals,
    /// The calls that made the last decision to open: the closed window, or the half-open
    /// probes. Reported while open, so a dashboard shows why it opened.
    decided_by: Totals,
}

struct Shared {
    name: Arc<str>,
    cfg: Config,
    core: Mutex<Core>,
    openings: AtomicU64,
    /// `(generation << 8) | WARM? | state code`, written under the lock, read without it:
    /// states with nothing time-driven (closed, metrics-only, disabled) admit calls without
    /// taking the lock, and a warm window takes successes without it too.
    fast: AtomicU64,
    /// Successes not yet folded into the window, one cache line per stripe of threads, each
    /// tagged with the generation it belongs to: `(generation << 32) | count`.
    stripes: Box<[Stripe]>,
    /// Count-based window: successes may be batched (see `on_result`).
    batchable: bool,
    m_state: Gauge,
    m_transitions: [Counter; 6],
    m_calls: [Counter; 3],
    m_rejected: Counter,
}

/// A circuit breaker. Cheap to clone: clones share one state.
#[derive(Clone)]
pub struct CircuitBreaker {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.shared.name)
            .field("state", &self.state())
            .finish()
    }
}

/// The right to make one call through a breaker. Report its outcome with
/// [`success`](Self::success), [`failure`](Self::failure) or [`ignore`](Self::ignore);
/// dropping it unreported is the same as `ignore` (the call was cancelled).
#[must_use = "report the call's outcome, or drop the permit to release it"]
#[derive(Debug)]
pub struct BreakerPermit<'a> {
    breaker: &'a CircuitBreaker,
    generation: u64,
    /// When the call started, if slow-call detection needs it.
    started: Option<Instant>,
    state: BreakerState,
    done: bool,
}

enum Report {
    Success,
    Failure,
    Ignored,
}

impl BreakerPermit<'_> {
    /// The call succeeded.
    pub fn success(mut self) {
        self.report(Report::Success);
    }
    /// The call failed in a way that counts.
    pub fn failure(mut self) {
        self.report(Report::Failure);
    }
    /// The call's outcome says nothing about the service's health.
    pub fn ignore(mut self) {
        self.report(Report::Ignored);
    }

    fn report(&mut self, r: Report) {
        self.done = true;
        self.breaker
            .on_result(self.generation, self.state, r, self.started);
    }
}

impl Drop for BreakerPermit<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.report(Report::Ignored);
        }
    }
}

impl CircuitBreaker {
    /// This policy's live state: the same entry [`crate::observe::snapshot`]
    /// lists for it, without going through the process-wide list.
    pub fn snapshot(&self) -> crate::observe::PolicySnapshot {
        crate::observe::Inspect::inspect(&*self.shared)
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        self.shared
            .core
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The current state (an open breaker whose time is up reports `HalfOpen`).
    pub fn state(&self) -> BreakerState {
        let mut core = self.lock();
        self.refresh(&mut core, Instant::now());
        core.state
    }

    /// Asks to make one call. `Err` carries how long until the breaker may admit again.
    pub fn try_acquire(&self) -> Result<BreakerPermit<'_>, Rejection> {
        self.try_acquire_at(Instant::now())
    }

    /// [`try_acquire`](Self::try_acquire) for a call starting at `now` (a clock reading the
    /// caller already has, e.g. [`Context::now`]).
    #[inline]
    pub fn try_acquire_at(&self, now: Instant) -> Result<BreakerPermit<'_>, Rejection> {
        self.try_acquire_with(|| now)
    }

    /// [`try_acquire_at`](Self::try_acquire_at) reading the clock through `now` only if it
    /// must: a closed breaker without slow-call detection needs no time at all.
    #[inline]
    pub(crate) fn try_acquire_with(
        &self,
        now: impl FnOnce() -> Instant,
    ) -> Result<BreakerPermit<'_>, Rejection> {
        let fast = self.shared.fast.load(Ordering::Acquire);
        let state = BreakerState::from_code(fast & STATE_MASK);
        if matches!(
            state,
            BreakerState::Closed | BreakerState::MetricsOnly | BreakerState::Disabled
        ) {
            return Ok(BreakerPermit {
                breaker: self,
                generation: fast >> 8,
                started: self.tracks_slow().then(now),
                state,
                done: false,
            });
        }
        let now = now();
        let mut core = self.lock();
        self.refresh(&mut core, now);
        let admitted = match core.state {
            BreakerState::Closed | BreakerState::MetricsOnly | BreakerState::Disabled => true,
            BreakerState::HalfOpen if core.half_open_left > 0 => {
                core.half_open_left -= 1;
                true
            }
            BreakerState::HalfOpen | BreakerState::Open | BreakerState::ForcedOpen => false,
        };
        if admitted {
            return Ok(BreakerPermit {
                breaker: self,
                generation: core.generation,
                started: self.tracks_slow().then_some(now),
                state: core.state,
                done: false,
            });
        }
        let retry_after = match core.state {
            BreakerState::Open => {
                saturating_add(core.since, core.open_for).saturating_duration_since(now)
            }
            // Half-open with every probe taken, or forced open: no time is known; suggest
            // the base open duration so that callers back off rather than spin.
            _ => self.shared.cfg.open_duration,
        };
        drop(core);
        self.shared.m_rejected.increment(1);
        Err(Rejection::CircuitOpen {
            name: self.shared.name.clone(),
            retry_after,
        })
    }

    /// Applies the time-driven transitions: open → half-open, half-open → open on max wait.
    fn refresh(&self, core: &mut Core, now: Instant) {
        match core.state {
            BreakerState::Open if now >= saturating_add(core.since, core.open_for) => {
                self.transition(core, BreakerState::HalfOpen, now);
            }
            BreakerState::HalfOpen
                if self.shared.cfg.max_wait_in_half_open > Duration::ZERO
                    && now >= saturating_add(core.since, self.shared.cfg.max_wait_in_half_open) =>
            {
                self.open(core, now);
                self.refresh(core, now);
            }
            _ => {}
        }
    }

    fn open(&self, core: &mut Core, now: Instant) {
        let cfg = &self.shared.cfg;
        let factor = cfg
            .open_duration_multiplier
            .powi(i32::try_from(core.consecutive_openings).unwrap_or(i32::MAX));
        let secs = cfg.open_duration.as_secs_f64() * factor;
        core.open_for = if secs.is_finite() && secs < cfg.max_open_duration.as_secs_f64() {
            Duration::from_secs_f64(secs)
        } else {
            cfg.max_open_duration
        };
        core.consecutive_openings = core.consecutive_openings.saturating_add(1);
        self.shared.openings.fetch_add(1, Ordering::Relaxed);
        self.transition(core, BreakerState::Open, now);
    }

    fn transition(&self, core: &mut Core, to: BreakerState, now: Instant) {
        let from = core.state;
        if to == BreakerState::Open {
            core.decided_by = match from {
                BreakerState::HalfOpen => core.half_open,
                _ => core.window.totals(now),
            };
        }
        core.state = to;
        core.since = now;
        core.generation += 1;
        match to {
            BreakerState::HalfOpen => {
                core.half_open_left = self.shared.cfg.permitted_in_half_open;
                core.half_open = Totals::default();
            }
            BreakerState::Closed | BreakerState::Disabled | BreakerState::MetricsOnly => {
                core.window.reset(now);
                if to == BreakerState::Closed {
                    core.consecutive_openings = 0;
                }
            }
            BreakerState::Open | BreakerState::ForcedOpen => {}
        }
        let s = &self.shared;
        s.fast
            .store((core.generation << 8) | to.code(), Ordering::Release);
        s.m_state.set(to.gauge_value());
        s.m_transitions[to.gauge_value() as usize].increment(1);
        tracing::info!(breaker = %s.name, from = from.as_str(), to = to.as_str(), "circuit breaker transition");
    }

    /// Whether calls are timed to find slow ones.
    #[inline]
    fn tracks_slow(&self) -> bool {
        self.shared.cfg.slow_call_rate_threshold.is_some()
    }

    fn on_result(
        &self,
        generation: u64,
        state: BreakerState,
        report: Report,
        started: Option<Instant>,
    ) {
        let s = &self.shared;
        let idx = match report {
            Report::Success => 0,
            Report::Failure => 1,
            Report::Ignored => 2,
        };
        s.m_calls[idx].increment(1);
        if state == BreakerState::Disabled {
            return;
        }
        // The end of the call is read only to time it, or, below, when the lock is taken.
        let ended = started.map(|started| (started, Instant::now()));
        let slow = ended.is_some_and(|(started, now)| {
            now.saturating_duration_since(started) >= s.cfg.slow_call_duration
        });
        if matches!(report, Report::Success) && !slow && self.batch_success(generation) {
            return;
        }
        let now = ended.map_or_else(Instant::now, |(_, now)| now);
        let mut core = self.lock();
        if core.generation != generation {
            // The breaker changed state while this call ran; its outcome belongs to a state
            // that no longer exists.
            return;
        }
        let outcome = match report {
            Report::Ignored => {
                if core.state == BreakerState::HalfOpen {
                    core.half_open_left += 1;
                }
                return;
            }
            Report::Success => Outcome {
                failed: false,
                slow,
            },
            Report::Failure => Outcome { failed: true, slow },
        };
        match core.state {
            BreakerState::Closed | BreakerState::MetricsOnly => {
                // Successes batched by other threads happened before this outcome was
                // reported: fold them in first, so the window is what a sequential record
                // would have made it.
                self.shared.flush(&mut core, now);
                core.window.record(outcome, now);
                let t = core.window.totals(now);
                if core.state == BreakerState::Closed && self.exceeds(&t) {
                    self.open(&mut core, now);
                } else if s.batchable && t.calls >= s.cfg.minimum_calls {
                    s.fast.store(
                        (core.generation << 8) | WARM | core.state.code(),
                        Ordering::Release,
                    );
                }
            }
            BreakerState::HalfOpen => {
                core.half_open.calls += 1;
                core.half_open.failures += u64::from(outcome.failed);
                core.half_open.slow += u64::from(outcome.slow);
                if core.half_open.calls >= u64::from(s.cfg.permitted_in_half_open) {
                    let t = core.half_open;
                    if self.rate_exceeded(&t) {
                        self.open(&mut core, now);
                    } else {
                        self.transition(&mut core, BreakerState::Closed, now);
                    }
                }
            }
            BreakerState::Open | BreakerState::ForcedOpen | BreakerState::Disabled => {}
        }
    }

    /// Counts a fast, successful call without the lock, when that cannot change any
    /// decision: the breaker is closed (or metrics-only) with a count window that already
    /// holds the minimum number of calls. Past that point a success can only lower the
    /// failure and slow-call rates, and rates are only judged when a failure or slow call
    /// is recorded, which first folds every batched success in. Returns false when the
    /// caller must take the locked path.
    fn batch_success(&self, generation: u64) -> bool {
        let s = &self.shared;
        if !s.batchable {
            return false;
        }
        let fast = s.fast.load(Ordering::Acquire);
        let state = BreakerState::from_code(fast & STATE_MASK);
        if fast >> 8 != generation
            || fast & WARM == 0
            || !matches!(state, BreakerState::Closed | BreakerState::MetricsOnly)
        {
            return false;
        }
        let tag = generation & 0xffff_ffff;
        let stripe = &s.stripes[stripe_index()].0;
        let mut current = stripe.load(Ordering::Relaxed);
        let pending = loop {
            let next = if current >> 32 == tag {
                current + 1
            } else {
                (tag << 32) | 1
            };
            match stripe.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => break next & 0xffff_ffff,
                Err(actual) => current = actual,
            }
        };
        if pending >= BATCH {
            let mut core = self.lock();
            if core.generation == generation {
                s.flush(&mut core, Instant::now());
            }
        }
        true
    }

    fn exceeds(&self, t: &Totals) -> bool {
        t.calls >= self.shared.cfg.minimum_calls && self.rate_exceeded(t)
    }

    fn rate_exceeded(&self, t: &Totals) -> bool {
        t.failure_rate() >= self.shared.cfg.failure_rate_threshold
            || self
                .shared
                .cfg
                .slow_call_rate_threshold
                .is_some_and(|threshold| t.slow_rate() >= threshold)
    }

    /// Rejects every call until another manual transition.
    pub fn force_open(&self) {
        let mut core = self.lock();
        self.transition(&mut core, BreakerState::ForcedOpen, Instant::now());
    }
    /// Admits every call and counts nothing.
    pub fn disable(&self) {
        let mut core = self.lock();
        self.transition(&mut core, BreakerState::Disabled, Instant::now());
    }
    /// Admits every call and counts them, but never opens.
    pub fn metrics_only(&self) {
        let mut core = self.lock();
        self.transition(&mut core, BreakerState::MetricsOnly, Instant::now());
    }
    /// Closes the breaker and forgets its window.
    pub fn reset(&self) {
        let mut core = self.lock();
        self.transition(&mut core, BreakerState::Closed, Instant::now());
    }

    /// How many times the breaker has opened.
    pub fn openings(&self) -> u64 {
        self.shared.openings.load(Ordering::Relaxed)
    }

    /// Whether a failure of this class counts against the breaker.
    pub fn counts(&self, class: ErrorClass) -> bool {
        (self.shared.cfg.counts_as_failure)(class)
    }

    /// Reports a finished call's result on its permit.
    pub fn report<T, E>(&self, permit: BreakerPermit<'_>, result: &Result<T, PolicyError<E>>) {
        match result {
            Ok(_) => permit.success(),
            Err(PolicyError::Rejected(_)) => permit.ignore(),
            Err(e) if self.counts(e.class()) => permit.failure(),
            Err(_) => permit.ignore(),
        }
    }
}

impl Shared {
    /// Folds every stripe's batched successes of the current generation into the window.
    fn flush(&self, core: &mut Core, now: Instant) {
        if !self.batchable {
            return;
        }
        let tag = core.generation & 0xffff_ffff;
        for stripe in self.stripes.iter() {
            if stripe.0.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let v = stripe.0.swap(0, Ordering::AcqRel);
            if v >> 32 == tag {
                for _ in 0..(v & 0xffff_ffff) {
                    core.window.record(
                        Outcome {
                            failed: false,
                            slow: false,
                        },
                        now,
                    );
                }
            }
        }
    }
}

impl Inspect for Shared {
    fn inspect(&self) -> PolicySnapshot {
        let now = Instant::now();
        let mut core = self.core.lock().unwrap_or_else(PoisonError::into_inner);
        if matches!(core.state, BreakerState::Closed | BreakerState::MetricsOnly) {
            self.flush(&mut core, now);
        }
        // The calls that the current state's decision rests on, and how many it needs before
        // a rate means anything.
        let (t, needed) = match core.state {
            BreakerState::HalfOpen => (core.half_open, u64::from(self.cfg.permitted_in_half_open)),
            BreakerState::Open | BreakerState::ForcedOpen => (core.decided_by, 1),
            _ => (core.window.totals(now), self.cfg.minimum_calls),
        };
        let known = t.calls >= needed;
        let retry_after = match core.state {
            BreakerState::Open => {
                Some(saturating_add(core.since, core.open_for).saturating_duration_since(now))
            }
            _ => None,
        };
        PolicySnapshot {
            name: self.name.clone(),
            kind: PolicyKind::CircuitBreaker,
            state: PolicyState::CircuitBreaker {
                state: core.state,
                failure_rate: known.then(|| t.failure_rate()),
                slow_call_rate: (known && self.cfg.slow_call_rate_threshold.is_some())
                    .then(|| t.slow_rate()),
                calls_in_window: t.calls,
                openings: self.openings.load(Ordering::Relaxed),
                retry_after,
            },
        }
    }
}

impl crate::compose::Compose for CircuitBreaker {}

impl Guard for CircuitBreaker {
    type Permit<'a> = BreakerPermit<'a>;

    #[inline]
    fn try_admit(&self, cx: &mut Context) -> Admission<Self::Permit<'_>> {
        if let Err(refusal) = check_deadline(cx) {
            return Admission::Refused(refusal);
        }
        // The clock is read only if the breaker needs the time; the reading is then shared
        // with the policies inside.
        Admission::decided(
            self.try_acquire_with(|| {
                let now = cx.now();
                *cx = cx.with_now(now);
                now
            })
            .map_err(Refusal::from),
        )
    }

    /// A breaker never waits: it decides at once.
    fn wait(&self, cx: &Context) -> impl Future<Output = Result<Self::Permit<'_>, Refusal>> + Send {
        std::future::ready(self.try_admit(&mut cx.clone()).into_decided())
    }

    #[inline]
    fn complete<T, E>(&self, permit: BreakerPermit<'_>, result: &Result<T, PolicyError<E>>) {
        self.report(permit, result);
    }
}

#[cfg(test)]
mod tests;
