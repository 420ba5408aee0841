//! tower integration: every policy, a stack of them and a [`Pipeline`] are `tower::Layer`s,
//! and [`PolicyLayer`] sets each request's [`Context`].
//!
//! A server knows things about a request that the policies must respect: a `POST` must not
//! be retried once it may have reached the other side, a client's deadline header bounds
//! every attempt, a health check must not be shed. [`PolicyLayer::context`] takes a
//! function of the request that returns its [`Context`] (idempotence, deadline, priority);
//! by default every request gets [`Context::new`] (idempotent, no deadline, normal priority).
//!
//! ```
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt};
//! use windlass_policy::{Compose, Context, ErrorClass, PolicyLayer, Retry};
//!
//! #[derive(Clone)]
//! struct Request { method: &'static str, path: &'static str }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let retry = Retry::builder().max_attempts(3).build().unwrap()
//!     .classified_by(|_: &std::io::Error| ErrorClass::Transient);
//! let svc = ServiceBuilder::new()
//!     .layer(PolicyLayer::new(retry).context(|req: &Request| {
//!         Context::new().with_idempotent(req.method != "POST")
//!     }))
//!     .service_fn(|req: Request| async move { Ok::<_, std::io::Error>(format!("{} {}", req.method, req.path)) });
//! assert_eq!(svc.oneshot(Request { method: "GET", path: "/a" }).await.unwrap(), "GET /a");
//! # }
//! ```
//!
//! Errors are classified by the policy's own classifier ([`Policy::class_of`]): a
//! pipeline's, or one attached with [`Compose::classified_by`]; a policy without one treats
//! every error as transient.
//!
//! Each call clones the inner service and the request for every attempt (retries and hedges
//! need a fresh copy), waits for the clone to be ready, then calls it; so the request must be
//! `Clone`, as with tower's own `Retry`. The service's future is boxed: one allocation per
//! call, the price of tower's `'static` futures. Errors come back as
//! [`PolicyError<S::Error>`](crate::PolicyError), the service's own error untouched inside.
//!
//! [`Compose::classified_by`]: crate::Compose::classified_by

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;

use tower_layer::Layer;
use tower_service::Service;

use crate::compose::Stack;
use crate::context::Context;
use crate::error::PolicyError;
use crate::pipeline::Pipeline;
use crate::policy::{Policy, PolicyExt};

/// How a [`PolicyLayer`] derives a request's [`Context`]. Implemented for every
/// `Fn(&Req) -> Context` closure and by [`FreshContext`], the default.
pub trait RequestContext<Req>: Send + Sync {
    /// The context for `req`'s call.
    fn context(&self, req: &Req) -> Context;
}

impl<Req, F> RequestContext<Req> for F
where
    F: Fn(&Req) -> Context + Send + Sync,
{
    fn context(&self, req: &Req) -> Context {
        self(req)
    }
}

/// The default: every request gets [`Context::new`].
#[derive(Debug, Clone, Copy, Default)]
pub struct FreshContext;

impl<Req> RequestContext<Req> for FreshContext {
    fn context(&self, _req: &Req) -> Context {
        Context::new()
    }
}

/// A tower layer applying policy `P`, with each request's context from `X`.
#[derive(Debug)]
pub struct PolicyLayer<P, X = FreshContext> {
    policy: Arc<P>,
    context: Arc<X>,
}

impl<P, X> Clone for PolicyLayer<P, X> {
    fn clone(&self) -> Self {
        PolicyLayer {
            policy: self.policy.clone(),
            context: self.context.clone(),
        }
    }
}

impl<P> PolicyLayer<P, FreshContext> {
    /// A layer for `policy`; each request gets a fresh [`Context`] until
    /// [`context`](Self::context).
    pub fn new(policy: P) -> Self {
        PolicyLayer {
            policy: Arc::new(policy),
            context: Arc::new(FreshContext),
        }
    }
}

impl<P, X> PolicyLayer<P, X> {
    /// Derives each request's [`Context`] with `context` (e.g. not idempotent for a
    /// `POST`, a deadline from a header, a priority from the route).
    pub fn context<X2>(self, context: X2) -> PolicyLayer<P, X2> {
        PolicyLayer {
            policy: self.policy,
            context: Arc::new(context),
        }
    }
}

impl<S, P, X> Layer<S> for PolicyLayer<P, X> {
    type Service = PolicyService<S, P, X>;
    fn layer(&self, inner: S) -> Self::Service {
        PolicyService {
            inner: Arc::new(Mutex::new(inner)),
            policy: self.policy.clone(),
            context: self.context.clone(),
        }
    }
}

/// The service a [`PolicyLayer`] builds.
#[derive(Debug)]
pub struct PolicyService<S, P, X = FreshContext> {
    // Behind a mutex only so that the service need not be `Sync`: it is locked just long
    // enough to clone it for an attempt.
    inner: Arc<Mutex<S>>,
    policy: Arc<P>,
    context: Arc<X>,
}

impl<S, P, X> Clone for PolicyService<S, P, X> {
    fn clone(&self) -> Self {
        PolicyService {
            inner: self.inner.clone(),
            policy: self.policy.clone(),
            context: self.context.clone(),
        }
    }
}

impl<S, P, X, Req> Service<Req> for PolicyService<S, P, X>
where
    Req: Clone + Send + 'static,
    S: Service<Req> + Clone + Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    S::Future: Send + 'static,
    P: Policy<S::Response, S::Error> + Send + 'static,
    X: RequestContext<Req> + 'static,
{
    type Response = S::Response;
    type Error = PolicyError<S::Error>;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is awaited per attempt, on the clone that makes it.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let cx = self.context.context(&req);
        let (inner, policy) = (self.inner.clone(), self.policy.clone());
        let req = Mutex::new(req);
        Box::pin(async move {
            let attempt = move |_: Context| {
                let mut svc = inner.lock().unwrap_or_else(PoisonError::into_inner).clone();
                let req = req.lock().unwrap_or_else(PoisonError::into_inner).clone();
                async move {
                    std::future::poll_fn(|cx| svc.poll_ready(cx)).await?;
                    svc.call(req).await
                }
            };
            policy.call_in(cx, attempt).await
        })
    }
}

macro_rules! direct_layer {
    ($($ty:ty),*) => {$(
        impl<S> Layer<S> for $ty {
            type Service = PolicyService<S, $ty>;
            fn layer(&self, inner: S) -> Self::Service {
                PolicyLayer::new(self.clone()).layer(inner)
            }
        }
    )*};
}

direct_layer!(
    crate::Retry,
    crate::Timeout,
    crate::Deadline,
    crate::CircuitBreaker,
    crate::Bulkhead,
    crate::RateLimiter,
    crate::ConcurrencyLimiter,
    crate::Hedge
);

impl<S, A: Clone, B: Clone> Layer<S> for Stack<A, B> {
    type Service = PolicyService<S, Stack<A, B>>;
    fn layer(&self, inner: S) -> Self::Service {
        PolicyLayer::new(self.clone()).layer(inner)
    }
}

impl<S, P: Clone, C: Clone> Layer<S> for crate::compose::Classified<P, C> {
    type Service = PolicyService<S, crate::compose::Classified<P, C>>;
    fn layer(&self, inner: S) -> Self::Service {
        PolicyLayer::new(self.clone()).layer(inner)
    }
}

impl<S, T: Send + 'static, E: Send + 'static> Layer<S> for Pipeline<T, E> {
    type Service = PolicyService<S, Pipeline<T, E>>;
    fn layer(&self, inner: S) -> Self::Service {
        PolicyLayer::new(self.clone()).layer(inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        Backoff, CircuitBreaker, Compose, ConcurrencyLimiter, ErrorClass, Jitter, LimitAlgorithm,
        Priority, Rejection, Retry, Timeout,
    };
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;
    use tower::{ServiceBuilder, ServiceExt};

    fn flaky(
        fail_first: u32,
    ) -> (
        Arc<AtomicU32>,
        impl Service<u32, Response = u32, Error = &'static str, Future: Send> + Clone + Send,
    ) {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let svc = tower::service_fn(move |x: u32| {
            let n = c.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < fail_first {
                    Err("503")
                } else {
                    Ok(x * 2)
                }
            }
        });
        (calls, svc)
    }

    fn retry() -> Retry {
        Retry::builder()
            .max_attempts(3)
            .backoff(Backoff::Constant(Duration::from_millis(1)))
            .jitter(Jitter::None)
            .build()
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn policy_as_a_layer_retries_a_service() {
        let (calls, svc) = flaky(2);
        let svc = ServiceBuilder::new().layer(retry()).service(svc);
        assert_eq!(svc.oneshot(21).await.unwrap(), 42);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn classified_layer_does_not_retry_permanent_errors() {
        let (calls, svc) = flaky(10);
        let layer = PolicyLayer::new(retry().classified_by(|_: &&str| ErrorClass::Permanent));
        let out = ServiceBuilder::new()
            .layer(layer)
            .service(svc)
            .oneshot(1)
            .await;
        assert!(matches!(
            out,
            Err(PolicyError::Operation { error: "503", .. })
        ));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn stacks_and_pipelines_are_layers() {
        let breaker = CircuitBreaker::builder()
            .count_window(2)
            .minimum_calls(2)
            .build()
            .unwrap();
        let (_, svc) = flaky(100);
        let mut svc = ServiceBuilder::new()
            .layer(
                breaker
                    .clone()
                    .then(Timeout::new(Duration::from_secs(1)).unwrap()),
            )
            .service(svc);
        for _ in 0..2 {
            let _ = svc.ready().await.unwrap().call(1).await;
        }
        let out = svc.ready().await.unwrap().call(1).await;
        assert!(matches!(
            out,
            Err(PolicyError::Rejected(Rejection::CircuitOpen { .. }))
        ));

        let pipeline = Pipeline::<u32, &'static str>::builder()
            .classify(|_: &&str| ErrorClass::Transient)
            .retry(retry())
            .build();
        let (calls, svc) = flaky(1);
        let svc = ServiceBuilder::new().layer(pipeline).service(svc);
        assert_eq!(svc.oneshot(5).await.unwrap(), 10);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    /// A request as a server sees it.
    #[derive(Debug, Clone)]
    struct Req {
        method: &'static str,
        deadline_ms: Option<u64>,
        health: bool,
    }

    fn req(method: &'static str) -> Req {
        Req {
            method,
            deadline_ms: None,
            health: false,
        }
    }

    /// The context a server would derive: POSTs not idempotent, a deadline header, health
    /// checks critical and everything else low priority.
    fn context_of(r: &Req) -> Context {
        let mut cx = Context::new()
            .with_idempotent(r.method != "POST")
            .with_priority(if r.health {
                Priority::Critical
            } else {
                Priority::Low
            });
        if let Some(ms) = r.deadline_ms {
            cx = cx.with_deadline(tokio::time::Instant::now() + Duration::from_millis(ms));
        }
        cx
    }

    /// A service that always fails after reaching "upstream", counting calls.
    fn failing() -> (
        Arc<AtomicU32>,
        impl Service<Req, Response = u32, Error = &'static str, Future: Send> + Clone + Send,
    ) {
        let calls = Arc::new(AtomicU32::new(0));
        let c = calls.clone();
        let svc = tower::service_fn(move |_: Req| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Err::<u32, _>("503") }
        });
        (calls, svc)
    }

    #[tokio::test(start_paused = true)]
    async fn a_post_is_not_retried_and_a_get_is() {
        let (calls, svc) = failing();
        let svc = ServiceBuilder::new()
            .layer(PolicyLayer::new(retry()).context(context_of))
            .service(svc);
        let out = svc.clone().oneshot(req("POST")).await;
        assert_eq!(calls.load(Ordering::SeqCst), 1, "a POST runs once");
        assert!(matches!(
            out,
            Err(PolicyError::RetriesExhausted {
                reason: crate::GaveUp::NotIdempotent,
                ..
            })
        ));
        let _ = svc.oneshot(req("GET")).await;
        assert_eq!(calls.load(Ordering::SeqCst), 4, "a GET is retried (1 + 3)");
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_from_the_request_bounds_the_retries() {
        let (calls, svc) = failing();
        let slow_retry = Retry::builder()
            .max_attempts(10)
            .backoff(Backoff::Constant(Duration::from_millis(40)))
            .jitter(Jitter::None)
            .build()
            .unwrap();
        let svc = ServiceBuilder::new()
            .layer(PolicyLayer::new(slow_retry).context(context_of))
            .service(svc);
        let mut r = req("GET");
        r.deadline_ms = Some(100);
        let out = svc.oneshot(r).await;
        // Attempts at 0, 40 and 80 ms; the next backoff would end past 100 ms.
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert!(matches!(
            out,
            Err(PolicyError::RetriesExhausted {
                reason: crate::GaveUp::Deadline,
                ..
            })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn priority_from_the_request_decides_who_is_shed() {
        let limiter = ConcurrencyLimiter::builder()
            .algorithm(LimitAlgorithm::Fixed(4))
            .build()
            .unwrap();
        // Three of four slots taken: above a low-priority call's share, within a critical one's.
        let _held: Vec<_> = (0..3)
            .map(|_| limiter.try_acquire(Priority::Critical).unwrap())
            .collect();
        let (calls, svc) = failing();
        let svc = ServiceBuilder::new()
            .layer(PolicyLayer::new(limiter.clone()).context(context_of))
            .service(svc);
        let low = svc.clone().oneshot(req("GET")).await;
        assert!(matches!(
            low,
            Err(PolicyError::Rejected(Rejection::Shed { .. }))
        ));
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        let mut health = req("GET");
        health.health = true;
        let critical = svc.oneshot(health).await;
        assert!(
            matches!(critical, Err(PolicyError::Operation { .. })),
            "admitted"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_layer_classifies_with_the_policys_own_classifier() {
        // A pipeline wrapped in PolicyLayer (not only used as a layer directly) keeps its
        // classifier: a permanent error is not retried.
        let pipeline = Pipeline::<u32, &'static str>::builder()
            .classify(|_: &&str| ErrorClass::Permanent)
            .retry(retry())
            .build();
        let (calls, svc) = failing();
        let out = ServiceBuilder::new()
            .layer(PolicyLayer::new(pipeline).context(context_of))
            .service(svc)
            .oneshot(req("GET"))
            .await;
        assert!(matches!(out, Err(PolicyError::Operation { .. })));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
