//! tower integration: every policy, a stack of them and a [`Pipeline`] are `tower::Layer`s.
//!
//! ```
//! use tower::{ServiceBuilder, ServiceExt};
//! use windlass_policy::{ErrorClass, PolicyLayer, Retry};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let retry = Retry::builder().max_attempts(3).build().unwrap();
//! let svc = ServiceBuilder::new()
//!     .layer(PolicyLayer::new(retry).classify(|_: &std::io::Error| ErrorClass::Transient))
//!     .service_fn(|name: &'static str| async move { Ok::<_, std::io::Error>(format!("hi {name}")) });
//! assert_eq!(svc.oneshot("ann").await.unwrap(), "hi ann");
//! # }
//! ```
//!
//! Each call clones the inner service and the request for every attempt (retries and hedges
//! need a fresh copy), waits for the clone to be ready, then calls it; so the request must be
//! `Clone`, as with tower's own `Retry`. The service's future is boxed: one allocation per
//! call, the price of tower's `'static` futures. Errors come back as
//! [`PolicyError<S::Error>`](crate::PolicyError), the service's own error untouched inside.
//!
//! A policy used directly as a layer (`.layer(retry)`) treats every error as transient;
//! wrap it in [`PolicyLayer`] to classify, as above. A pipeline layer uses the pipeline's
//! classifier.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;

use tower_layer::Layer;
use tower_service::Service;

use crate::classify::{AllTransient, Classify, ErrorClass};
use crate::compose::Stack;
use crate::context::Context;
use crate::error::PolicyError;
use crate::pipeline::{Pipeline, SharedClassifier};
use crate::policy::{Policy, PolicyExt};

/// A tower layer applying policy `P`, classifying errors with `C`.
#[derive(Debug)]
pub struct PolicyLayer<P, C = AllTransient> {
    policy: Arc<P>,
    classifier: Arc<C>,
}

impl<P, C> Clone for PolicyLayer<P, C> {
    fn clone(&self) -> Self {
        PolicyLayer {
            policy: self.policy.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<P> PolicyLayer<P, AllTransient> {
    /// A layer for `policy`; every error transient until [`classify`](Self::classify).
    pub fn new(policy: P) -> Self {
        PolicyLayer {
            policy: Arc::new(policy),
            classifier: Arc::new(AllTransient),
        }
    }
}

impl<P, C> PolicyLayer<P, C> {
    /// Classifies the inner service's errors with `classifier`.
    pub fn classify<C2>(self, classifier: C2) -> PolicyLayer<P, C2> {
        PolicyLayer {
            policy: self.policy,
            classifier: Arc::new(classifier),
        }
    }
}

impl<S, P, C> Layer<S> for PolicyLayer<P, C> {
    type Service = PolicyService<S, P, C>;
    fn layer(&self, inner: S) -> Self::Service {
        PolicyService {
            inner: Arc::new(Mutex::new(inner)),
            policy: self.policy.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

/// The service a [`PolicyLayer`] builds.
#[derive(Debug)]
pub struct PolicyService<S, P, C> {
    // Behind a mutex only so that the service need not be `Sync`: it is locked just long
    // enough to clone it for an attempt.
    inner: Arc<Mutex<S>>,
    policy: Arc<P>,
    classifier: Arc<C>,
}

impl<S, P, C> Clone for PolicyService<S, P, C> {
    fn clone(&self) -> Self {
        PolicyService {
            inner: self.inner.clone(),
            policy: self.policy.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

impl<S, P, C, Req> Service<Req> for PolicyService<S, P, C>
where
    Req: Clone + Send + 'static,
    S: Service<Req> + Clone + Send + 'static,
    S::Response: Send + 'static,
    S::Error: Send + 'static,
    S::Future: Send + 'static,
    P: Policy<S::Response, S::Error> + Send + 'static,
    C: Classify<S::Error> + 'static,
{
    type Response = S::Response;
    type Error = PolicyError<S::Error>;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is awaited per attempt, on the clone that makes it.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let (inner, policy, classifier) = (
            self.inner.clone(),
            self.policy.clone(),
            self.classifier.clone(),
        );
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
            policy
                .call_with(Context::new(), &*classifier, attempt)
                .await
        })
    }
}

macro_rules! direct_layer {
    ($($ty:ty),*) => {$(
        impl<S> Layer<S> for $ty {
            type Service = PolicyService<S, $ty, AllTransient>;
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
    type Service = PolicyService<S, Stack<A, B>, AllTransient>;
    fn layer(&self, inner: S) -> Self::Service {
        PolicyLayer::new(self.clone()).layer(inner)
    }
}

/// A pipeline's classifier, as a layer's classifier.
#[derive(Clone)]
pub struct PipelineClassifier<E>(SharedClassifier<E>);

impl<E> std::fmt::Debug for PipelineClassifier<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PipelineClassifier")
    }
}

impl<E> Classify<E> for PipelineClassifier<E> {
    fn classify(&self, error: &E) -> ErrorClass {
        self.0.classify(error)
    }
}

impl<S, T: Send + 'static, E: Send + 'static> Layer<S> for Pipeline<T, E> {
    type Service = PolicyService<S, Pipeline<T, E>, PipelineClassifier<E>>;
    fn layer(&self, inner: S) -> Self::Service {
        PolicyLayer::new(self.clone())
            .classify(PipelineClassifier(self.classifier().clone()))
            .layer(inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Backoff, CircuitBreaker, Compose, Jitter, Rejection, Retry, Timeout};
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
        let layer = PolicyLayer::new(retry()).classify(|_: &&str| ErrorClass::Permanent);
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
}
