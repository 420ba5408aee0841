//! Timeouts: a bound on one attempt ([`Timeout`]) and on a whole operation ([`Deadline`]).
//!
//! A call that never settles holds its caller, its memory and often a connection forever.
//! [`Timeout`] cancels an attempt that runs too long and fails it with
//! [`PolicyError::Timeout`], a *transient* failure that an outer retry may retry.
//! [`Deadline`] bounds everything inside it — attempts, backoff sleeps, waits for permits —
//! and tells inner policies through the [`Context`], so a retry never starts a backoff that
//! would overrun it. A spent deadline is permanent: nothing retries it.
//!
//! Both cancel by dropping the inner future, so the timed-out work really stops (provided
//! it is cancel-safe at its await points, as tokio's I/O is). Both also respect an outer,
//! earlier deadline.
//!
//! ```
//! use std::time::Duration;
//! use windlass_policy::{PolicyError, PolicyExt, Timeout};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let timeout = Timeout::new(Duration::from_millis(100)).unwrap();
//! let out: Result<(), PolicyError<&str>> = timeout.call(std::future::pending).await;
//! assert!(matches!(out, Err(PolicyError::Timeout(_))));
//! # }
//! ```

use crate::time::saturating_add;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{ConfigError, ensure};
use crate::context::Context;
use crate::error::PolicyError;
use crate::policy::Policy;

/// Cancels any single attempt that runs longer than a fixed duration.
#[derive(Debug, Clone, Copy)]
pub struct Timeout {
    after: Duration,
}

impl Timeout {
    /// A timeout of `after` (must be positive).
    pub fn new(after: Duration) -> Result<Self, ConfigError> {
        ensure(
            after > Duration::ZERO,
            "timeout",
            "after",
            "must be positive",
        )?;
        Ok(Timeout { after })
    }

    /// The configured duration.
    pub fn duration(&self) -> Duration {
        self.after
    }
}

impl crate::compose::Compose for Timeout {}
impl crate::compose::Compose for Deadline {}

impl<T: Send, E: Send> Policy<T, E> for Timeout {
    fn execute<Op, Fut>(
        &self,
        cx: Context,
        op: &Op,
    ) -> impl Future<Output = Result<T, PolicyError<E>>> + Send
    where
        Op: Fn(Context) -> Fut + Sync,
        Fut: Future<Output = Result<T, PolicyError<E>>> + Send,
    {
        let now = cx.now();
        let own = saturating_add(now, self.after);
        // If an outer deadline comes first, it is the one that fires, and the failure is
        // the permanent DeadlineExceeded rather than a retryable timeout.
        let (at, err) = match cx.deadline() {
            Some(d) if d <= own => (d, PolicyError::DeadlineExceeded),
            _ => (own, PolicyError::Timeout(self.after)),
        };
        BoundedBy {
            inner: op(cx.with_deadline(at).with_now(now)),
            at,
            sleep: None,
            err: Some(err),
        }
    }
}

pin_project_lite::pin_project! {
    /// `inner`, failing with `err` at `at`. The timer is created only if `inner` does not
    /// finish on its first poll: an operation that completes at once never touches the
    /// runtime's timer (the common case on a fast path, and the cost of a timeout there).
    struct BoundedBy<F, Err> {
        #[pin]
        inner: F,
        at: Instant,
        #[pin]
        sleep: Option<tokio::time::Sleep>,
        err: Option<Err>,
    }
}

impl<T, E, F> Future for BoundedBy<F, PolicyError<E>>
where
    F: Future<Output = Result<T, PolicyError<E>>>,
{
    type Output = Result<T, PolicyError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(out) = this.inner.poll(cx) {
            return Poll::Ready(out);
        }
        if this.sleep.as_ref().as_pin_ref().is_none() {
            this.sleep.set(Some(tokio::time::sleep_until(*this.at)));
        }
        match this.sleep.as_pin_mut() {
            Some(sleep) => {
                std::task::ready!(sleep.poll(cx));
                Poll::Ready(Err(this
                    .err
                    .take()
                    .unwrap_or(PolicyError::DeadlineExceeded)))
            }
            None => Poll::Pending,
        }
    }
}

/// Bounds a whole operation — every attempt, sleep and wait inside it.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    budget: Duration,
}

impl Deadline {
    /// A deadline `budget` after each call starts (must be positive).
    pub fn new(budget: Duration) -> Result<Self, ConfigError> {
        ensure(
            budget > Duration::ZERO,
            "deadline",
            "budget",
            "must be positive",
        )?;
        Ok(Deadline { budget })
    }

    /// The configured budget.
    pub fn budget(&self) -> Duration {
        self.budget
    }
}

impl<T: Send, E: Send> Policy<T, E> for Deadline {
    fn execute<Op, Fut>(
        &self,
        cx: Context,
        op: &Op,
    ) -> impl Future<Output = Result<T, PolicyError<E>>> + Send
    where
        Op: Fn(Context) -> Fut + Sync,
        Fut: Future<Output = Result<T, PolicyError<E>>> + Send,
    {
        let now = cx.now();
        let cx = cx.with_deadline(saturating_add(now, self.budget));
        let at = cx.deadline().unwrap_or(now);
        BoundedBy {
            inner: op(cx.with_now(now)),
            at,
            sleep: None,
            err: Some(PolicyError::DeadlineExceeded),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::Compose;
    use crate::policy::PolicyExt;
    use crate::retry::{Backoff, Jitter, Retry};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use windlass_test_support::ms;

    #[tokio::test(start_paused = true)]
    async fn timeout_cancels_the_attempt() {
        let finished = Arc::new(AtomicBool::new(false));
        let f = finished.clone();
        let start = Instant::now();
        let out: Result<(), PolicyError<&str>> = Timeout::new(ms(100))
            .unwrap()
            .call(|| {
                let f = f.clone();
                async move {
                    tokio::time::sleep(ms(1000)).await;
                    f.store(true, Ordering::SeqCst);
                    Ok(())
                }
            })
            .await;
        assert!(matches!(out, Err(PolicyError::Timeout(d)) if d == ms(100)));
        assert_eq!(start.elapsed(), ms(100));
        tokio::time::advance(ms(5000)).await;
        assert!(
            !finished.load(Ordering::SeqCst),
            "the attempt was dropped, not detached"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn fast_calls_pass() {
        let out = Timeout::new(ms(100))
            .unwrap()
            .call(|| async {
                tokio::time::sleep(ms(99)).await;
                Ok::<_, &str>(5)
            })
            .await;
        assert_eq!(out.unwrap(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn timeouts_are_retried_but_a_deadline_is_not() {
        let calls = AtomicU32::new(0);
        let policy = Deadline::new(ms(250))
            .unwrap()
            .then(
                Retry::builder()
                    .max_attempts(10)
                    .backoff(Backoff::Constant(ms(10)))
                    .jitter(Jitter::None)
                    .build()
                    .unwrap(),
            )
            .then(Timeout::new(ms(100)).unwrap());
        let start = Instant::now();
        let out: Result<(), PolicyError<&str>> = policy
            .call(|| {
                calls.fetch_add(1, Ordering::SeqCst);
                std::future::pending()
            })
            .await;
        // Attempt 1: 0-100 timeout; wait 10; attempt 2: 110-210 timeout; wait 10; attempt 3
        // starts at 220 and is cut by the deadline at 250.
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(start.elapsed(), ms(250));
        assert!(matches!(out, Err(PolicyError::DeadlineExceeded)), "{out:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn inner_timeout_reports_an_outer_deadline_as_such() {
        let cx = Context::new().with_deadline(Instant::now() + ms(50));
        let out: Result<(), PolicyError<&str>> = Timeout::new(ms(100))
            .unwrap()
            .call_with(cx, &crate::AllTransient, |cx| {
                assert_eq!(cx.deadline(), Some(Instant::now() + ms(50)));
                std::future::pending()
            })
            .await;
        assert!(matches!(out, Err(PolicyError::DeadlineExceeded)));
    }

    #[test]
    fn zero_durations_rejected() {
        assert_eq!(Timeout::new(Duration::ZERO).unwrap_err().field(), "after");
        assert_eq!(Deadline::new(Duration::ZERO).unwrap_err().field(), "budget");
    }
}
