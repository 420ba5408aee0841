//! Combinators over many futures: [`all`], [`all_settled`], [`race`], [`any`] — each leg
//! optionally with its own timeout and fallback ([`leg`]).
//!
//! Scatter-gather ("ask ten services, 100 ms each, use the cached answer for the slow ones")
//! is one call:
//!
//! ```
//! use std::time::Duration;
//! use windlass_concurrency::gather::{all, leg};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! async fn price(shop: u64) -> Result<u64, std::io::Error> {
//!     tokio::time::sleep(Duration::from_millis(shop * 60)).await;
//!     Ok(100 + shop)
//! }
//! let legs = (0..4).map(|shop| {
//!     leg(price(shop))
//!         .timeout(Duration::from_millis(100))
//!         .fallback_value(99) // the cached price
//! });
//! let prices = all(legs).await.unwrap();
//! assert_eq!(prices, vec![100, 101, 99, 99]); // shops 2 and 3 were too slow
//! # }
//! ```
//!
//! The legs run concurrently *in the calling task* (nothing is spawned), so cancelling the
//! call — dropping its future — cancels every leg, and a combinator that returns early drops
//! the legs it no longer needs: [`all`] on the first failure, [`race`] and [`any`] once they
//! have their answer. Semantics follow JavaScript's `Promise` combinators.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::time::Sleep;
use windlass_policy::{ClassifiedError, ErrorClass, PolicyError};

/// Why a combinator produced no value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GatherError<E> {
    /// [`race`] or [`any`] was given no futures.
    #[error("no futures were given")]
    Empty,
    /// A leg failed: the first failure for [`all`], the first settled leg for [`race`].
    #[error("leg {index} failed")]
    Failed {
        /// The leg's position in the input.
        index: usize,
        /// Its error.
        error: E,
    },
    /// Every leg of [`any`] failed; their errors in input order.
    #[error("all {} legs failed", .0.len())]
    AllFailed(Vec<E>),
}

/// A failed leg keeps its own class. When every leg of [`any`] failed, the whole is
/// retryable if any leg was (the longest `Retry-After` among them, if they all said when),
/// cancelled if every leg was, and permanent otherwise. No legs at all is a caller's
/// mistake: permanent.
impl<E: ClassifiedError> ClassifiedError for GatherError<E> {
    fn error_class(&self) -> ErrorClass {
        match self {
            GatherError::Empty => ErrorClass::Permanent,
            GatherError::Failed { error, .. } => error.error_class(),
            GatherError::AllFailed(errors) => all_failed_class(errors),
        }
    }
}

fn all_failed_class<E: ClassifiedError>(errors: &[E]) -> ErrorClass {
    let classes: Vec<ErrorClass> = errors.iter().map(E::error_class).collect();
    let retryable: Vec<ErrorClass> = classes
        .iter()
        .copied()
        .filter(|c| c.is_retryable())
        .collect();
    if !retryable.is_empty() {
        let waits: Option<Vec<_>> = retryable.iter().map(|c| c.retry_after()).collect();
        return match waits.and_then(|w| w.into_iter().max()) {
            Some(longest) => ErrorClass::RetryAfter(longest),
            None => ErrorClass::Transient,
        };
    }
    if !classes.is_empty() && classes.iter().all(|c| *c == ErrorClass::Cancelled) {
        ErrorClass::Cancelled
    } else {
        ErrorClass::Permanent
    }
}

/// The legs, each tagged with its input position, ready to run concurrently.
fn indexed<I, F>(legs: I) -> FuturesUnordered<impl Future<Output = (usize, F::Output)>>
where
    I: IntoIterator<Item = F>,
    F: Future,
{
    legs.into_iter()
        .enumerate()
        .map(|(i, f)| async move { (i, f.await) })
        .collect()
}

/// Every leg's value in input order, or the first failure (the other legs are then
/// cancelled). An empty input gives an empty `Vec`.
pub async fn all<I, F, T, E>(legs: I) -> Result<Vec<T>, GatherError<E>>
where
    I: IntoIterator<Item = F>,
    F: Future<Output = Result<T, E>>,
{
    let mut running = indexed(legs);
    let mut out: Vec<Option<T>> = (0..running.len()).map(|_| None).collect();
    while let Some((index, result)) = running.next().await {
        match result {
            Ok(v) => out[index] = Some(v),
            Err(error) => return Err(GatherError::Failed { index, error }),
        }
    }
    Ok(out.into_iter().flatten().collect())
}

/// Every leg's outcome, in input order; waits for all of them.
pub async fn all_settled<I, F, T, E>(legs: I) -> Vec<Result<T, E>>
where
    I: IntoIterator<Item = F>,
    F: Future<Output = Result<T, E>>,
{
    let mut running = indexed(legs);
    let mut out: Vec<Option<Result<T, E>>> = (0..running.len()).map(|_| None).collect();
    while let Some((index, result)) = running.next().await {
        out[index] = Some(result);
    }
    out.into_iter().flatten().collect()
}

/// The first leg to settle, success or failure; the others are cancelled.
pub async fn race<I, F, T, E>(legs: I) -> Result<T, GatherError<E>>
where
    I: IntoIterator<Item = F>,
    F: Future<Output = Result<T, E>>,
{
    let mut running = indexed(legs);
    match running.next().await {
        None => Err(GatherError::Empty),
        Some((_, Ok(v))) => Ok(v),
        Some((index, Err(error))) => Err(GatherError::Failed { index, error }),
    }
}

/// The first leg to succeed (the others are then cancelled); if every leg fails, all
/// their errors in input order.
pub async fn any<I, F, T, E>(legs: I) -> Result<T, GatherError<E>>
where
    I: IntoIterator<Item = F>,
    F: Future<Output = Result<T, E>>,
{
    let mut running = indexed(legs);
    if running.is_empty() {
        return Err(GatherError::Empty);
    }
    let mut errors: Vec<Option<E>> = (0..running.len()).map(|_| None).collect();
    while let Some((index, result)) = running.next().await {
        match result {
            Ok(v) => return Ok(v),
            Err(e) => errors[index] = Some(e),
        }
    }
    Err(GatherError::AllFailed(
        errors.into_iter().flatten().collect(),
    ))
}

/// What a leg does with its failure: recover with a value, or pass it on.
pub trait Recover<T, E> {
    /// Turns a failure into the leg's result.
    fn recover(self, failure: PolicyError<E>) -> Result<T, PolicyError<E>>;
}

/// No fallback: failures pass through.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoFallback;

impl<T, E> Recover<T, E> for NoFallback {
    fn recover(self, failure: PolicyError<E>) -> Result<T, PolicyError<E>> {
        Err(failure)
    }
}

impl<T, E, F> Recover<T, E> for F
where
    F: FnOnce(PolicyError<E>) -> Result<T, PolicyError<E>>,
{
    fn recover(self, failure: PolicyError<E>) -> Result<T, PolicyError<E>> {
        self(failure)
    }
}

/// Wraps a future as a leg; add [`timeout`](Leg::timeout) and a fallback. The leg's
/// output is `Result<T, PolicyError<E>>`: the future's error as
/// [`PolicyError::Operation`], or [`PolicyError::Timeout`].
pub fn leg<F>(future: F) -> Leg<F, NoFallback> {
    Leg {
        future,
        sleep: None,
        after: None,
        fallback: Some(NoFallback),
    }
}

pin_project_lite::pin_project! {
    /// One leg of a combinator: a future with an optional timeout and fallback.
    #[must_use = "a leg does nothing unless awaited or passed to a combinator"]
    pub struct Leg<F, R> {
        #[pin]
        future: F,
        #[pin]
        sleep: Option<Sleep>,
        after: Option<Duration>,
        fallback: Option<R>,
    }
}

impl<F, R> std::fmt::Debug for Leg<F, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leg")
            .field("timeout", &self.after)
            .finish_non_exhaustive()
    }
}

impl<F, R> Leg<F, R> {
    /// Fails the leg with [`PolicyError::Timeout`] if it has not settled this long after
    /// it is first polled.
    pub fn timeout(mut self, after: Duration) -> Self {
        self.after = Some(after);
        self
    }

    /// Recovers from a failure or timeout with `f`.
    pub fn fallback<T, E, R2>(self, f: R2) -> Leg<F, R2>
    where
        R2: FnOnce(PolicyError<E>) -> Result<T, PolicyError<E>>,
    {
        Leg {
            future: self.future,
            sleep: None,
            after: self.after,
            fallback: Some(f),
        }
    }

    /// Recovers from a failure or timeout with `value`.
    pub fn fallback_value<T, E>(
        self,
        value: T,
    ) -> Leg<F, impl FnOnce(PolicyError<E>) -> Result<T, PolicyError<E>>> {
        self.fallback(move |_| Ok(value))
    }
}

impl<F, T, E, R> Future for Leg<F, R>
where
    F: Future<Output = Result<T, E>>,
    R: Recover<T, E>,
{
    type Output = Result<T, PolicyError<E>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let failure = match this.future.poll(cx) {
            Poll::Ready(Ok(v)) => return Poll::Ready(Ok(v)),
            Poll::Ready(Err(error)) => PolicyError::Operation {
                error,
                class: ErrorClass::Transient,
            },
            Poll::Pending => {
                let Some(after) = *this.after else {
                    return Poll::Pending;
                };
                if this.sleep.is_none() {
                    this.sleep.set(Some(tokio::time::sleep(after)));
                }
                match this.sleep.as_pin_mut().map(|s| s.poll(cx)) {
                    Some(Poll::Ready(())) => PolicyError::Timeout(after),
                    _ => return Poll::Pending,
                }
            }
        };
        match this.fallback.take() {
            Some(r) => Poll::Ready(r.recover(failure)),
            None => Poll::Ready(Err(failure)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::time::Instant;
    use windlass_test_support::ms;

    async fn after(d: u64, r: Result<u64, &'static str>) -> Result<u64, &'static str> {
        tokio::time::sleep(ms(d)).await;
        r
    }

    struct DropCount(Arc<AtomicUsize>);
    impl Drop for DropCount {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counted(
        d: u64,
        r: Result<u64, &'static str>,
        drops: &Arc<AtomicUsize>,
    ) -> impl Future<Output = Result<u64, &'static str>> + use<> {
        let guard = DropCount(drops.clone());
        async move {
            let _g = guard;
            after(d, r).await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn all_is_fail_fast_and_in_order() {
        assert_eq!(
            all([after(30, Ok(1)), after(10, Ok(2))]).await.unwrap(),
            vec![1, 2]
        );
        let drops = Arc::new(AtomicUsize::new(0));
        let t0 = Instant::now();
        let out = all([
            counted(100, Ok(1), &drops),
            counted(10, Err("bad"), &drops),
            counted(500, Ok(3), &drops),
        ])
        .await;
        assert_eq!(
            out,
            Err(GatherError::Failed {
                index: 1,
                error: "bad"
            })
        );
        assert_eq!(t0.elapsed(), ms(10), "did not wait for the others");
        assert_eq!(
            drops.load(Ordering::SeqCst),
            3,
            "the rest were cancelled (dropped)"
        );
        let empty: Vec<std::future::Ready<Result<u8, ()>>> = vec![];
        assert_eq!(all(empty).await, Ok(vec![]));
    }

    #[tokio::test(start_paused = true)]
    async fn all_settled_keeps_every_outcome_in_input_order() {
        let out = all_settled([after(20, Err("a")), after(10, Ok(2)), after(5, Err("c"))]).await;
        assert_eq!(out, vec![Err("a"), Ok(2), Err("c")]);
    }

    #[tokio::test(start_paused = true)]
    async fn race_takes_the_first_to_settle_and_cancels_losers() {
        let drops = Arc::new(AtomicUsize::new(0));
        let out = race([
            counted(50, Ok(1), &drops),
            counted(10, Err("fast failure"), &drops),
        ])
        .await;
        assert_eq!(
            out,
            Err(GatherError::Failed {
                index: 1,
                error: "fast failure"
            })
        );
        assert_eq!(drops.load(Ordering::SeqCst), 2);
        assert_eq!(race([after(50, Ok(1)), after(20, Ok(2))]).await, Ok(2));
        let empty: Vec<std::future::Ready<Result<u8, ()>>> = vec![];
        assert_eq!(race(empty).await, Err(GatherError::Empty));
    }

    #[tokio::test(start_paused = true)]
    async fn any_takes_the_first_success_or_every_error_in_order() {
        assert_eq!(
            any([after(5, Err("x")), after(20, Ok(2)), after(30, Ok(3))]).await,
            Ok(2)
        );
        let out = any([after(30, Err("a")), after(10, Err("b"))]).await;
        assert_eq!(out, Err(GatherError::AllFailed(vec!["a", "b"])));
        let empty: Vec<std::future::Ready<Result<u8, ()>>> = vec![];
        assert_eq!(any(empty).await, Err(GatherError::Empty));
    }

    #[tokio::test(start_paused = true)]
    async fn per_leg_timeouts_and_fallbacks() {
        let t0 = Instant::now();
        let out = all_settled([
            leg(after(10, Ok(1))).timeout(ms(50)).fallback_value(0),
            leg(after(80, Ok(2))).timeout(ms(50)).fallback_value(0),
            leg(after(5, Err("down"))).timeout(ms(50)).fallback_value(7),
        ])
        .await;
        assert_eq!(
            out.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
            vec![1, 0, 7]
        );
        assert_eq!(t0.elapsed(), ms(50), "the slow leg was cut at its timeout");
        let out = leg(after(80, Ok(2))).timeout(ms(50)).await;
        assert!(matches!(out, Err(PolicyError::Timeout(d)) if d == ms(50)));
        let out = leg(after(1, Err("e")))
            .fallback(|e: PolicyError<&str>| match e {
                PolicyError::Operation { error: "e", .. } => Ok(42),
                other => Err(other),
            })
            .await;
        assert_eq!(out.unwrap(), 42);
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_combinator_cancels_every_leg() {
        let drops = Arc::new(AtomicUsize::new(0));
        let fut = all([counted(100, Ok(1), &drops), counted(200, Ok(2), &drops)]);
        assert!(tokio::time::timeout(ms(10), fut).await.is_err());
        assert_eq!(drops.load(Ordering::SeqCst), 2);
    }
}
