//! The pipeline: any subset of the policies, composed in one documented order.
//!
//! Which goes outside which matters, and confuses the users of every peer library. The
//! [`Pipeline`] builder takes any subset and always composes it in this order, outermost
//! first:
//!
//! ```text
//! fallback → deadline → retry → hedge → circuit breaker → rate limiter → bulkhead
//!          → concurrency limiter → timeout → operation
//! ```
//!
//! - **Fallback outermost**: it sees the final outcome, after every retry.
//! - **Deadline outside retry**: the budget covers every attempt and backoff, and the retry
//!   sees it (it never starts a backoff that would overrun it).
//! - **Retry outside the breaker**: every attempt is counted by the breaker, and an open
//!   breaker's `retry_after` tells the retry how long to wait — or that waiting is pointless.
//!   (Breaker outside retry would count one outcome per retried call and keep retrying into
//!   an open circuit.)
//! - **Hedge inside retry**: each attempt may be hedged; both legs pass the breaker.
//! - **Rate limiter, bulkhead and concurrency limiter inside retry and hedge**: every attempt
//!   is paced and holds a slot only while it runs, never during a backoff sleep.
//! - **Timeout innermost**: it bounds one attempt, not the waits in front of it.
//!
//! For another order, compose the same policies with [`Compose::then`]:
//! same cost, your order. Caching and coalescing are keyed by request, so they wrap a
//! pipeline call rather than sit inside it: `cache.get_or_load(key, || pipeline.call(op))`.
//!
//! ```
//! use std::time::Duration;
//! use windlass_policy::{CircuitBreaker, ErrorClass, Pipeline, Retry, Timeout};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let pipeline = Pipeline::<String, std::io::Error>::builder()
//!     .classify(|e: &std::io::Error| match e.kind() {
//!         std::io::ErrorKind::NotFound => ErrorClass::Permanent,
//!         _ => ErrorClass::Transient,
//!     })
//!     .retry(Retry::builder().max_attempts(3).build().unwrap())
//!     .breaker(CircuitBreaker::builder().build().unwrap())
//!     .timeout(Timeout::new(Duration::from_secs(2)).unwrap())
//!     .build();
//! let out = pipeline.call(|| async { Ok("hello".to_string()) }).await;
//! assert_eq!(out.unwrap(), "hello");
//! # }
//! ```

use crate::time::saturating_add;
use std::future::Future;
use std::sync::Arc;

use crate::breaker::CircuitBreaker;
use crate::bulkhead::Bulkhead;
use crate::classify::{AllTransient, Classify};
use crate::compose::Compose;
use crate::concurrency_limiter::ConcurrencyLimiter;
use crate::context::Context;
use crate::error::PolicyError;
use crate::fallback::Fallback;
use crate::guard::Guard;
use crate::hedge::Hedge;
use crate::policy::{Policy, PolicyExt};
use crate::rate_limit::RateLimiter;
use crate::retry::Retry;
use crate::timeout::{Deadline, Timeout};

/// A shareable classifier for a pipeline's error type.
pub type SharedClassifier<E> = Arc<dyn Classify<E>>;

/// Builds a [`Pipeline`]; every stage is optional.
pub struct PipelineBuilder<T, E> {
    classifier: SharedClassifier<E>,
    fallback: Option<Fallback<T, E>>,
    deadline: Option<Deadline>,
    retry: Option<Retry>,
    hedge: Option<Hedge>,
    breaker: Option<CircuitBreaker>,
    rate_limiter: Option<RateLimiter>,
    bulkhead: Option<Bulkhead>,
    concurrency: Option<ConcurrencyLimiter>,
    timeout: Option<Timeout>,
}

impl<T, E> std::fmt::Debug for PipelineBuilder<T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineBuilder").finish_non_exhaustive()
    }
}

macro_rules! stage {
    ($(#[$doc:meta])* $name:ident: $ty:ty) => {
        $(#[$doc])*
        pub fn $name(mut self, policy: $ty) -> Self {
            self.$name = Some(policy);
            self
        }
    };
}

impl<T: Send + 'static, E: Send + 'static> PipelineBuilder<T, E> {
    /// How the operation's errors are classified (default: all transient).
    pub fn classify(mut self, classifier: impl Classify<E> + 'static) -> Self {
        self.classifier = Arc::new(classifier);
        self
    }
    stage!(/// Falls back on "unavailable" failures (outermost).
        fallback: Fallback<T, E>);
    stage!(/// Bounds the whole call.
        deadline: Deadline);
    stage!(/// Retries failed attempts.
        retry: Retry);
    stage!(/// Hedges slow attempts.
        hedge: Hedge);
    stage!(/// Counts every attempt; rejects when open.
        breaker: CircuitBreaker);
    stage!(/// Paces every attempt.
        rate_limiter: RateLimiter);
    stage!(/// Caps concurrent attempts.
        bulkhead: Bulkhead);
    stage!(/// Sheds attempts over an adaptive limit.
        concurrency: ConcurrencyLimiter);
    stage!(/// Bounds each attempt (innermost).
        timeout: Timeout);

    /// Composes the stages in the documented order.
    pub fn build(self) -> Pipeline<T, E> {
        Pipeline {
            stages: Arc::new(Stages {
                fallback: self.fallback,
                deadline: self.deadline,
                retry: self.retry,
                hedge: self.hedge,
                breaker: self.breaker,
                rate_limiter: self.rate_limiter,
                bulkhead: self.bulkhead,
                concurrency: self.concurrency,
                timeout: self.timeout,
            }),
            classifier: self.classifier,
        }
    }
}

/// The stages. Those that wrap the work (retry, hedge, timeout) nest; those that only admit
/// and observe it (breaker, rate limiter, bulkhead, concurrency limiter) run inline around
/// each attempt, which keeps the future type shallow.
struct Stages<T, E> {
    fallback: Option<Fallback<T, E>>,
    deadline: Option<Deadline>,
    retry: Option<Retry>,
    hedge: Option<Hedge>,
    breaker: Option<CircuitBreaker>,
    rate_limiter: Option<RateLimiter>,
    bulkhead: Option<Bulkhead>,
    concurrency: Option<ConcurrencyLimiter>,
    timeout: Option<Timeout>,
}

impl<T: Send, E: Send> Stages<T, E> {
    /// One attempt: admitted by breaker, rate limiter, bulkhead and concurrency limiter (in
    /// that order, each through [`Guard::try_admit`] and, if it must wait, [`Guard::wait`],
    /// as when each runs alone), bounded by the timeout, and handed back to each guard,
    /// innermost first.
    async fn attempt<Op, Fut>(&self, cx: Context, op: &Op) -> Result<T, PolicyError<E>>
    where
        Op: Fn(Context) -> Fut + Sync,
        Fut: Future<Output = Result<T, PolicyError<E>>> + Send,
    {
        // One clock read for the whole attempt: the breaker's start time, the rate limiter's
        // permit and the timeout's deadline all use it, unless a wait made it stale.
        let mut cx = cx.with_now(cx.now());
        let breaker = crate::guard::admit!(&self.breaker, &mut cx);
        let paced = crate::guard::admit!(&self.rate_limiter, &mut cx);
        let slot = crate::guard::admit!(&self.bulkhead, &mut cx);
        let limit = crate::guard::admit!(&self.concurrency, &mut cx);
        let result = self.timeout.execute(cx, op).await;
        self.concurrency.complete(limit, &result);
        self.bulkhead.complete(slot, &result);
        self.rate_limiter.complete(paced, &result);
        self.breaker.complete(breaker, &result);
        result
    }

    async fn run<Op, Fut>(&self, cx: Context, op: &Op) -> Result<T, PolicyError<E>>
    where
        Op: Fn(Context) -> Fut + Sync,
        Fut: Future<Output = Result<T, PolicyError<E>>> + Send,
    {
        let cx = match &self.deadline {
            Some(d) => cx.with_deadline(saturating_add(cx.now(), d.budget())),
            None => cx,
        };
        let attempt = |cx: Context| self.attempt(cx, op);
        let hedged = |cx: Context| self.hedge.execute(cx, &attempt);
        let work = self.retry.execute(cx, &hedged);
        let result = match (&self.deadline, cx.deadline()) {
            (Some(_), Some(at)) => tokio::time::timeout_at(at, work)
                .await
                .unwrap_or(Err(PolicyError::DeadlineExceeded)),
            _ => work.await,
        };
        match (&self.fallback, result) {
            (Some(f), Err(e)) => f.recover(e),
            (_, result) => result,
        }
    }
}

/// Policies composed in the documented default order, with one classifier. Cheap to clone.
pub struct Pipeline<T, E> {
    stages: Arc<Stages<T, E>>,
    classifier: SharedClassifier<E>,
}

impl<T, E> Clone for Pipeline<T, E> {
    fn clone(&self) -> Self {
        Pipeline {
            stages: self.stages.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<T, E> std::fmt::Debug for Pipeline<T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").finish_non_exhaustive()
    }
}

impl<T: Send + 'static, E: Send + 'static> Pipeline<T, E> {
    /// Starts an empty pipeline.
    pub fn builder() -> PipelineBuilder<T, E> {
        PipelineBuilder {
            classifier: Arc::new(AllTransient),
            fallback: None,
            deadline: None,
            retry: None,
            hedge: None,
            breaker: None,
            rate_limiter: None,
            bulkhead: None,
            concurrency: None,
            timeout: None,
        }
    }

    /// The pipeline's classifier.
    pub fn classifier(&self) -> &SharedClassifier<E> {
        &self.classifier
    }

    /// Calls `op` through the pipeline, classifying its errors with the pipeline's
    /// classifier. The same as [`PolicyExt::call`], here so that no import is needed.
    pub fn call<F, Fut>(&self, op: F) -> impl Future<Output = Result<T, PolicyError<E>>> + Send
    where
        F: Fn() -> Fut + Send + Sync,
        Fut: Future<Output = Result<T, E>> + Send,
    {
        PolicyExt::call(self, op)
    }

    /// Like [`call`](Self::call), starting from `cx` (priority, idempotence, deadline), with
    /// each attempt's context passed to `op`. The same as [`PolicyExt::call_in`].
    pub fn call_in<F, Fut>(
        &self,
        cx: Context,
        op: F,
    ) -> impl Future<Output = Result<T, PolicyError<E>>> + Send
    where
        F: Fn(Context) -> Fut + Send + Sync,
        Fut: Future<Output = Result<T, E>> + Send,
    {
        PolicyExt::call_in(self, cx, op)
    }
}

impl<T, E> Compose for Pipeline<T, E> {}

impl<T: Send, E: Send> Policy<T, E> for Pipeline<T, E> {
    fn execute<Op, Fut>(
        &self,
        cx: Context,
        op: &Op,
    ) -> impl Future<Output = Result<T, PolicyError<E>>> + Send
    where
        Op: Fn(Context) -> Fut + Sync,
        Fut: Future<Output = Result<T, PolicyError<E>>> + Send,
    {
        self.stages.run(cx, op)
    }

    fn class_of(&self, error: &E) -> Option<crate::ErrorClass> {
        Some(self.classifier.classify(error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::ErrorClass;
    use crate::error::{GaveUp, Rejection};
    use crate::retry::{Backoff, Jitter};
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;
    use windlass_test_support::ms;

    #[tokio::test(start_paused = true)]
    async fn empty_pipeline_calls_once() {
        let p = Pipeline::<u32, &str>::builder().build();
        assert_eq!(p.call(|| async { Ok(1) }).await.unwrap(), 1);
        assert!(matches!(
            p.call(|| async { Err("x") }).await,
            Err(PolicyError::Operation { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn breaker_sees_every_attempt_and_stops_the_retry_when_open() {
        let breaker = CircuitBreaker::builder()
            .count_window(4)
            .minimum_calls(4)
            .open_duration(Duration::from_secs(30))
            .build()
            .unwrap();
        let p = Pipeline::<(), &str>::builder()
            .deadline(Deadline::new(Duration::from_secs(5)).unwrap())
            .retry(
                Retry::builder()
                    .max_attempts(10)
                    .backoff(Backoff::Constant(ms(10)))
                    .jitter(Jitter::None)
                    .build()
                    .unwrap(),
            )
            .breaker(breaker.clone())
            .timeout(Timeout::new(ms(100)).unwrap())
            .build();
        let calls = AtomicU32::new(0);
        let out = p
            .call(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err("503")
            })
            .await;
        // Four attempts open the breaker; the fifth is rejected with a 30 s retry-after,
        // which cannot fit the 5 s deadline: the retry gives up at once.
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        assert_eq!(breaker.openings(), 1);
        match out {
            Err(PolicyError::RetriesExhausted {
                attempts: 5,
                reason: GaveUp::Deadline,
                last,
            }) => {
                assert!(matches!(
                    *last,
                    PolicyError::Rejected(Rejection::CircuitOpen { .. })
                ));
            }
            other => panic!("{other:?}"),
        }
    }

    /// Regression: with `PolicyExt` in scope, `Arc<Pipeline>.call` and a pipeline nested
    /// with `then` resolved to a call that treated every error as transient, ignoring the
    /// pipeline's classifier.
    #[tokio::test(start_paused = true)]
    async fn the_pipeline_classifier_applies_however_it_is_called() {
        let calls = AtomicU32::new(0);
        let op = || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), u16>(404) }
        };
        let p = Pipeline::<(), u16>::builder()
            .classify(|c: &u16| {
                if *c >= 500 {
                    ErrorClass::Transient
                } else {
                    ErrorClass::Permanent
                }
            })
            .retry(Retry::builder().max_attempts(3).build().unwrap())
            .build();
        let shared = Arc::new(p.clone());
        let out = PolicyExt::call(&shared, op).await;
        assert!(matches!(
            out,
            Err(PolicyError::Operation {
                class: ErrorClass::Permanent,
                ..
            })
        ));
        let nested = Retry::builder()
            .max_attempts(2)
            .build()
            .unwrap()
            .then(p.clone());
        let out = nested.call(op).await;
        assert!(matches!(
            out,
            Err(PolicyError::Operation {
                class: ErrorClass::Permanent,
                ..
            })
        ));
        let out = PolicyExt::call_in(&p, Context::new(), |_| op()).await;
        assert!(matches!(
            out,
            Err(PolicyError::Operation {
                class: ErrorClass::Permanent,
                ..
            })
        ));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            3,
            "a 404 is never retried, by any path"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn classifier_and_fallback_apply() {
        let p = Pipeline::<&str, u16>::builder()
            .classify(|code: &u16| {
                if *code >= 500 {
                    ErrorClass::Transient
                } else {
                    ErrorClass::Permanent
                }
            })
            .fallback(Fallback::value("stale"))
            .retry(
                Retry::builder()
                    .max_attempts(2)
                    .backoff(Backoff::Constant(ms(1)))
                    .build()
                    .unwrap(),
            )
            .build();
        assert_eq!(p.call(|| async { Err(503) }).await.unwrap(), "stale");
        assert!(matches!(
            p.call(|| async { Err(404) }).await,
            Err(PolicyError::Operation { error: 404, .. })
        ));
    }
}
