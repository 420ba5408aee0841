//! The workloads shared by the criterion, allocation and contention benches: each builds one
//! policy (ours, tower-resilience's, tower's) around the same trivial operation, so the
//! numbers are pure per-call overhead.

#![allow(dead_code, missing_docs)]

use std::convert::Infallible;
use std::hint::black_box;
use std::time::Duration;

use tower::{Service, ServiceBuilder, ServiceExt};
use windlass_policy::{
    Bulkhead, CircuitBreaker, Compose, PolicyExt, RateLimiter, Retry, Stack, Timeout,
};

pub type Req = u64;

/// The operation every policy wraps: returns at once.
pub async fn op() -> Result<u64, std::io::Error> {
    Ok(black_box(7))
}

pub fn bare_service()
-> impl Service<Req, Response = u64, Error = std::io::Error, Future: Send> + Clone + Send {
    tower::service_fn(|r: Req| async move { Ok::<_, std::io::Error>(black_box(r)) })
}

pub async fn drive<S: Service<Req> + Clone>(svc: &mut S) {
    if let Ok(ready) = svc.ready().await {
        let _ = black_box(ready.call(black_box(1)).await);
    }
}

// ---- Windlass ----
pub fn w_retry() -> Retry {
    Retry::builder().max_attempts(3).build().expect("valid")
}
pub fn w_timeout() -> Timeout {
    Timeout::new(Duration::from_secs(10)).expect("valid")
}
pub fn w_breaker() -> CircuitBreaker {
    CircuitBreaker::builder().build().expect("valid")
}
pub fn w_bulkhead() -> Bulkhead {
    Bulkhead::builder()
        .max_concurrent(1_000)
        .build()
        .expect("valid")
}
pub fn w_rate() -> RateLimiter {
    RateLimiter::builder()
        .per_second(1_000_000_000)
        .burst(1_000_000_000)
        .build()
        .expect("valid")
}
pub type WPipeline =
    Stack<Retry, Stack<CircuitBreaker, Stack<RateLimiter, Stack<Bulkhead, Timeout>>>>;
pub fn w_pipeline() -> WPipeline {
    w_retry().then(w_breaker().then(w_rate().then(w_bulkhead().then(w_timeout()))))
}

/// The same five policies through the `Pipeline` builder (its documented order).
pub fn w_pipeline_builder() -> windlass_policy::Pipeline<u64, std::io::Error> {
    windlass_policy::Pipeline::builder()
        .retry(w_retry())
        .breaker(w_breaker())
        .rate_limiter(w_rate())
        .bulkhead(w_bulkhead())
        .timeout(w_timeout())
        .build()
}

pub async fn call<P: windlass_policy::Policy<u64, std::io::Error>>(p: &P) {
    let _ = black_box(p.call(op).await);
}

// ---- tower-resilience ----
pub mod tr {
    use super::*;
    use tower_resilience::bulkhead::BulkheadLayer;
    use tower_resilience::circuitbreaker::CircuitBreakerLayer;
    use tower_resilience::ratelimiter::RateLimiterLayer;
    use tower_resilience::retry::RetryLayer;
    use tower_resilience::timelimiter::TimeLimiterLayer;

    pub fn retry() -> RetryLayer<Req, u64, std::io::Error> {
        RetryLayer::<Req, u64, std::io::Error>::builder()
            .max_attempts(3)
            .build()
    }
    pub fn timeout() -> TimeLimiterLayer {
        TimeLimiterLayer::builder()
            .timeout_duration(Duration::from_secs(10))
            .build()
    }
    pub fn breaker() -> CircuitBreakerLayer {
        CircuitBreakerLayer::builder().build().expect("valid")
    }
    pub fn bulkhead() -> BulkheadLayer {
        BulkheadLayer::builder()
            .max_concurrent_calls(1_000)
            .build()
            .expect("valid")
    }
    pub fn rate() -> RateLimiterLayer {
        RateLimiterLayer::builder()
            .limit_for_period(1_000_000_000)
            .refresh_period(Duration::from_secs(1))
            .build()
            .expect("valid")
    }
    /// Retry over breaker over rate limiter over bulkhead over time limiter. Each layer has
    /// its own error type, so the retry is typed by what the stack below it returns.
    pub fn pipeline() -> impl Service<Req> + Clone + Send {
        let inner = ServiceBuilder::new()
            .layer(breaker())
            .layer(rate())
            .layer(bulkhead())
            .layer(timeout())
            .service(bare_service());
        with_retry(inner)
    }

    fn with_retry<S>(inner: S) -> S::Service2
    where
        S: RetryTarget,
    {
        inner.with_retry()
    }

    pub trait RetryTarget {
        type Service2: Service<Req> + Clone + Send;
        fn with_retry(self) -> Self::Service2;
    }

    impl<S> RetryTarget for S
    where
        S: Service<Req, Response = u64> + Clone + Send + 'static,
        S::Error: Send + 'static,
        S::Future: Send + 'static,
        tower_resilience::retry::Retry<S, Req, u64, S::Error>: Service<Req> + Clone + Send,
    {
        type Service2 = tower_resilience::retry::Retry<S, Req, u64, S::Error>;
        fn with_retry(self) -> Self::Service2 {
            use tower::Layer;
            RetryLayer::<Req, u64, S::Error>::builder()
                .max_attempts(3)
                .build()
                .layer(self)
        }
    }
}

// ---- tower ----
pub mod tw {
    use super::*;

    #[derive(Clone)]
    pub struct Attempts(pub usize);

    impl<E> tower::retry::Policy<Req, u64, E> for Attempts {
        type Future = std::future::Ready<()>;
        fn retry(&mut self, _: &mut Req, result: &mut Result<u64, E>) -> Option<Self::Future> {
            match result {
                Ok(_) => None,
                Err(_) if self.0 > 1 => {
                    self.0 -= 1;
                    Some(std::future::ready(()))
                }
                Err(_) => None,
            }
        }
        fn clone_request(&mut self, req: &Req) -> Option<Req> {
            Some(*req)
        }
    }

    pub fn retry() -> tower::retry::RetryLayer<Attempts> {
        tower::retry::RetryLayer::new(Attempts(3))
    }
    pub fn timeout() -> tower::timeout::TimeoutLayer {
        tower::timeout::TimeoutLayer::new(Duration::from_secs(10))
    }
    pub fn concurrency() -> tower::limit::ConcurrencyLimitLayer {
        tower::limit::ConcurrencyLimitLayer::new(1_000)
    }
    pub fn rate() -> tower::limit::RateLimitLayer {
        tower::limit::RateLimitLayer::new(1_000_000_000, Duration::from_secs(1))
    }
}

pub fn unused(_: Infallible) {}
