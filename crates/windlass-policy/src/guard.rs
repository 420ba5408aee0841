//! Guards: the policies that only admit an attempt and hear how it ended.
//!
//! A circuit breaker, a bulkhead, a rate limiter and a concurrency limiter do not wrap the
//! work the way a retry or a timeout does. Each decides, before an attempt starts, whether
//! it may start ([`Guard::admit`]), holds something while it runs (a permit), and is told
//! the outcome ([`Guard::complete`]). Writing that down once, as a trait, gives two things:
//!
//! - **One code path.** A guard used alone or in a [`Stack`](crate::Stack) runs through
//!   [`Guard::admit`] and [`Guard::complete`], and so does the [`Pipeline`](crate::Pipeline),
//!   which admits through all four inline around each attempt (so its future type stays
//!   shallow). There is no second implementation to drift.
//! - **One verdict per situation.** Every guard refuses with a [`Refusal`], by the same
//!   rules:
//!   1. An attempt whose [`Context::deadline`] has already passed is refused with
//!      [`Refusal::DeadlineExceeded`] before it takes anything: work nobody waits for is
//!      never started.
//!   2. A guard that cannot admit now refuses with its own [`Rejection`] (breaker open,
//!      bulkhead full, rate limited, shed), unless it is allowed to wait.
//!   3. A guard that waits (bulkhead, rate limiter) waits until the earlier of its own
//!      maximum wait and the call's deadline. If its own limit ends the wait, the verdict
//!      is its [`Rejection`]; if the deadline does, it is [`Refusal::DeadlineExceeded`]. A
//!      guard that knows in advance that its turn comes too late (the rate limiter does)
//!      says so at once instead of sleeping first.
//!
//! A [`Rejection`] is transient, local and never reached the other side; a spent deadline
//! is permanent for the whole call (an outer retry stops). `tests/verdicts.rs` checks that
//! each situation gets the same verdict from every guard.
//!
//! **When not to use it:** implement [`Guard`] only for a policy that runs the attempt
//! exactly once and unchanged; anything that repeats, races or replaces the work is a
//! [`Policy`](crate::Policy).
//!
//! ```
//! use windlass_policy::{Bulkhead, Context, Guard, PolicyExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let bulkhead = Bulkhead::builder().max_concurrent(1).max_queued(0).build().unwrap();
//! // Held by hand: the admission the bulkhead's own `Policy` impl makes for each call.
//! let held = bulkhead.admit(&mut Context::new()).await.unwrap();
//! let out = bulkhead.call(|| async { Ok::<_, std::io::Error>(1) }).await;
//! assert_eq!(out.unwrap_err().kind(), "bulkhead_full");
//! drop(held);
//! assert!(bulkhead.call(|| async { Ok::<_, std::io::Error>(1) }).await.is_ok());
//! # }
//! ```

use std::future::Future;

use tokio::time::Instant;

use crate::classify::{ClassifiedError, ErrorClass};
use crate::context::Context;
use crate::error::{PolicyError, Rejection};

/// Why a guard did not admit an attempt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The guard's own limit: breaker open, bulkhead full or its wait over, no rate permit,
    /// shed.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The call's deadline passed, or would pass before the guard could admit it.
    #[error("deadline exceeded before the attempt was admitted")]
    DeadlineExceeded,
}

/// A rejection keeps its class; a spent deadline is permanent, as
/// [`PolicyError::DeadlineExceeded`] is.
impl ClassifiedError for Refusal {
    fn error_class(&self) -> ErrorClass {
        match self {
            Refusal::Rejected(r) => r.error_class(),
            Refusal::DeadlineExceeded => ErrorClass::Permanent,
        }
    }
}

impl<E> From<Refusal> for PolicyError<E> {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Rejected(r) => PolicyError::Rejected(r),
            Refusal::DeadlineExceeded => PolicyError::DeadlineExceeded,
        }
    }
}

/// What a guard decides at once about an attempt.
#[derive(Debug)]
#[must_use = "an admission holds its guard's permit until it is completed or dropped"]
pub enum Admission<P> {
    /// Admitted now, holding this permit.
    Admitted(P),
    /// Refused now.
    Refused(Refusal),
    /// Neither yet: the attempt must wait in [`Guard::wait`] (only guards that wait, the
    /// bulkhead and the rate limiter, answer so).
    Wait,
}

/// A policy that admits an attempt, holds a permit while it runs, and hears its outcome.
/// See the [module docs](self) for the verdict rules every guard follows.
///
/// Admission is split in two so that the common case costs no future: [`try_admit`]
/// decides at once, and only when it answers [`Admission::Wait`] does the caller await
/// [`wait`]. [`admit`] puts the two together.
///
/// [`try_admit`]: Self::try_admit
/// [`wait`]: Self::wait
/// [`admit`]: Self::admit
pub trait Guard: Send + Sync {
    /// What an admitted attempt holds. Dropping it without [`complete`](Self::complete)
    /// (the attempt was cancelled) frees it without counting an outcome.
    type Permit<'a>: Send
    where
        Self: 'a;

    /// Decides at once whether the attempt of `cx` may run. A guard that reads the clock
    /// records the reading in `cx` ([`Context::with_now`]) for the policies inside.
    fn try_admit(&self, cx: &mut Context) -> Admission<Self::Permit<'_>>;

    /// Waits for a permit for the attempt of `cx`, after [`try_admit`](Self::try_admit)
    /// answered [`Admission::Wait`]. The caller then drops `cx`'s clock reading, which the
    /// wait made stale. A guard that never waits decides at once here too.
    fn wait(&self, cx: &Context) -> impl Future<Output = Result<Self::Permit<'_>, Refusal>> + Send;

    /// Hands back an admitted attempt's permit with its outcome.
    fn complete<T, E>(&self, permit: Self::Permit<'_>, result: &Result<T, PolicyError<E>>);

    /// Decides whether the attempt of `cx` may run, waiting if this guard waits; `cx` is
    /// left as the attempt should continue with it.
    fn admit(
        &self,
        cx: &mut Context,
    ) -> impl Future<Output = Result<Self::Permit<'_>, Refusal>> + Send {
        async move { Ok(admit!(self, cx)) }
    }
}

impl<P> Admission<P> {
    /// The admission a guard that never waits gives: admitted or refused.
    #[inline]
    pub(crate) fn decided(decision: Result<P, Refusal>) -> Self {
        match decision {
            Ok(permit) => Admission::Admitted(permit),
            Err(refusal) => Admission::Refused(refusal),
        }
    }

    /// This decision, for a guard that never answers `Wait`.
    #[inline]
    pub(crate) fn into_decided(self) -> Result<P, Refusal> {
        match self {
            Admission::Admitted(permit) => Ok(permit),
            Admission::Refused(refusal) => Err(refusal),
            // Unreachable for such a guard; refusing is the safe answer if it ever is not.
            Admission::Wait => Err(Refusal::DeadlineExceeded),
        }
    }
}

/// Admits the attempt of `$cx` (a `&mut Context`) through `$guard` and evaluates to its
/// permit, returning the refusal from the enclosing function: the synchronous decision
/// inline, a future only when the guard must wait.
macro_rules! admit {
    ($guard:expr, $cx:expr) => {{
        let cx: &mut $crate::context::Context = $cx;
        match $crate::guard::Guard::try_admit($guard, cx) {
            $crate::guard::Admission::Admitted(permit) => permit,
            $crate::guard::Admission::Refused(refusal) => return Err(refusal.into()),
            $crate::guard::Admission::Wait => {
                let permit = $crate::guard::Guard::wait($guard, cx).await?;
                *cx = cx.without_now();
                permit
            }
        }
    }};
}
pub(crate) use admit;

/// Rule 1 of the module docs: refuse an attempt whose deadline has passed. Reads the clock
/// (through [`Context::now`]) only when there is a deadline.
#[inline]
pub(crate) fn check_deadline(cx: &Context) -> Result<(), Refusal> {
    match cx.deadline() {
        Some(deadline) if deadline <= cx.now() => Err(Refusal::DeadlineExceeded),
        _ => Ok(()),
    }
}

/// Rule 3 of the module docs: the verdict when a wait bounded by `own` (the guard's limit,
/// if it has one) and `deadline` (the call's) ran out: the earlier limit names it, and a tie
/// goes to the guard's own.
pub(crate) fn expired_verdict(
    own: Option<Instant>,
    deadline: Option<Instant>,
    rejection: impl FnOnce() -> Rejection,
) -> Refusal {
    match (own, deadline) {
        (Some(o), Some(d)) if d < o => Refusal::DeadlineExceeded,
        (Some(_), _) => Refusal::Rejected(rejection()),
        (None, _) => Refusal::DeadlineExceeded,
    }
}

/// Rule 3 for a guard that knows when its turn comes (`ready_at`): the verdict if that is
/// after the earlier of `own` and `deadline`, or `None` if the wait can end in time.
pub(crate) fn wait_verdict(
    ready_at: Instant,
    own: Instant,
    deadline: Option<Instant>,
    rejection: impl FnOnce() -> Rejection,
) -> Option<Refusal> {
    let limit = deadline.map_or(own, |d| d.min(own));
    (ready_at > limit).then(|| expired_verdict(Some(own), deadline, rejection))
}

/// Runs one attempt under `$guard`, as an inline `async` block: the code path every
/// guard's [`Policy`](crate::Policy) impl shares with the pipeline. (A macro rather than a
/// generic `async fn`: the block nests without an extra future layer, which measurably
/// mattered in deep stacks.)
macro_rules! run {
    ($guard:expr, $cx:expr, $op:expr) => {
        async move {
            let mut cx = $cx;
            let permit = $crate::guard::admit!($guard, &mut cx);
            let result = $op(cx).await;
            $crate::guard::Guard::complete($guard, permit, &result);
            result
        }
    };
}
pub(crate) use run;

/// Implements [`Policy`](crate::Policy) for a guard type through [`run!`]: the one way a
/// guard runs an attempt.
macro_rules! guard_policy {
    ($($ty:ty),*) => {$(
        impl<T: Send, E: Send> $crate::policy::Policy<T, E> for $ty {
            fn execute<Op, Fut>(
                &self,
                cx: $crate::context::Context,
                op: &Op,
            ) -> impl ::std::future::Future<Output = Result<T, $crate::error::PolicyError<E>>> + Send
            where
                Op: Fn($crate::context::Context) -> Fut + Sync,
                Fut: ::std::future::Future<Output = Result<T, $crate::error::PolicyError<E>>> + Send,
            {
                $crate::guard::run!(self, cx, op)
            }
        }
    )*};
}

guard_policy!(
    crate::CircuitBreaker,
    crate::Bulkhead,
    crate::RateLimiter,
    crate::ConcurrencyLimiter
);

/// An optional guard admits everything when absent.
impl<G: Guard> Guard for Option<G> {
    type Permit<'a>
        = Option<G::Permit<'a>>
    where
        Self: 'a;

    #[inline]
    fn try_admit(&self, cx: &mut Context) -> Admission<Self::Permit<'_>> {
        match self {
            Some(guard) => match guard.try_admit(cx) {
                Admission::Admitted(permit) => Admission::Admitted(Some(permit)),
                Admission::Refused(refusal) => Admission::Refused(refusal),
                Admission::Wait => Admission::Wait,
            },
            None => Admission::Admitted(None),
        }
    }

    fn wait(&self, cx: &Context) -> impl Future<Output = Result<Self::Permit<'_>, Refusal>> + Send {
        async move {
            match self {
                Some(guard) => Ok(Some(guard.wait(cx).await?)),
                None => Ok(None),
            }
        }
    }

    #[inline]
    fn complete<T, E>(&self, permit: Self::Permit<'_>, result: &Result<T, PolicyError<E>>) {
        if let (Some(guard), Some(permit)) = (self, permit) {
            guard.complete(permit, result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rejection() -> Rejection {
        Rejection::RateLimited {
            name: "r".into(),
            retry_after: Duration::from_secs(1),
        }
    }

    #[test]
    fn the_earlier_limit_names_the_verdict() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // Ready in time for both limits: no verdict.
        assert_eq!(
            wait_verdict(t0 + s(1), t0 + s(2), Some(t0 + s(3)), rejection),
            None
        );
        // The guard's own limit is earlier and ends the wait: its rejection.
        assert_eq!(
            wait_verdict(t0 + s(5), t0 + s(2), Some(t0 + s(3)), rejection),
            Some(Refusal::Rejected(rejection()))
        );
        // The deadline is earlier and ends the wait: deadline exceeded.
        assert_eq!(
            wait_verdict(t0 + s(5), t0 + s(4), Some(t0 + s(3)), rejection),
            Some(Refusal::DeadlineExceeded)
        );
        // Ready after the deadline but before the own limit, deadline earlier: deadline.
        assert_eq!(
            wait_verdict(
                t0 + s(3) + Duration::from_nanos(1),
                t0 + s(9),
                Some(t0 + s(3)),
                rejection
            ),
            Some(Refusal::DeadlineExceeded)
        );
        // Ready exactly at the limit is in time.
        assert_eq!(
            wait_verdict(t0 + s(3), t0 + s(3), Some(t0 + s(9)), rejection),
            None
        );
        // A tie goes to the guard's own limit.
        assert_eq!(
            wait_verdict(t0 + s(5), t0 + s(3), Some(t0 + s(3)), rejection),
            Some(Refusal::Rejected(rejection()))
        );
        assert_eq!(
            expired_verdict(Some(t0 + s(3)), Some(t0 + s(3)), rejection),
            Refusal::Rejected(rejection())
        );
        // No deadline: only the own limit.
        assert_eq!(wait_verdict(t0 + s(5), t0 + s(9), None, rejection), None);
        assert_eq!(
            wait_verdict(t0 + s(10), t0 + s(9), None, rejection),
            Some(Refusal::Rejected(rejection()))
        );
    }

    #[test]
    fn refusals_classify_as_the_policy_errors_they_become() {
        for refusal in [Refusal::DeadlineExceeded, Refusal::Rejected(rejection())] {
            let class = refusal.error_class();
            let as_policy_error: PolicyError<()> = refusal.into();
            assert_eq!(class, as_policy_error.class());
        }
        assert_eq!(
            Refusal::DeadlineExceeded.error_class(),
            ErrorClass::Permanent
        );
        assert_eq!(
            Refusal::Rejected(rejection()).error_class(),
            ErrorClass::RetryAfter(Duration::from_secs(1))
        );
    }

    #[test]
    fn a_passed_deadline_is_refused_and_a_future_one_is_not() {
        let now = Instant::now();
        let at = |d| Context::new().with_now(now).with_deadline(d);
        assert_eq!(check_deadline(&at(now)), Err(Refusal::DeadlineExceeded));
        assert_eq!(check_deadline(&at(now + Duration::from_nanos(1))), Ok(()));
        assert_eq!(check_deadline(&Context::new().with_now(now)), Ok(()));
    }
}
