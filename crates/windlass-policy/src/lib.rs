//! # windlass-policy
//!
//! In-process resilience and flow-control policies for async Rust: the first layer of
//! Windlass. Each policy answers one way that calls to another service go wrong:
//!
//! | problem | policy |
//! |---|---|
//! | a transient failure | [`Retry`]: backoff, jitter, `Retry-After`, deadline, [`RetryBudget`] |
//! | a call that never returns | [`Timeout`] per attempt, [`Deadline`] for the whole call |
//! | hammering a service that is down | [`CircuitBreaker`] |
//! | one slow dependency eating every task | [`Bulkhead`] |
//! | sending faster than the other side allows | [`RateLimiter`] |
//! | overload: everything slow for everyone | [`ConcurrencyLimiter`] (fixed, AIMD, Gradient2; sheds low priorities first) |
//! | a thundering herd on one key | [`Coalesce`], [`Cache`] |
//! | an error page where stale data would do | [`Fallback`] |
//! | tail latency | [`Hedge`] |
//! | one breaker or limiter per host/tenant, without a leak | [`Keyed`] |
//!
//! Every policy implements [`Policy`], returns [`PolicyError`], reads failures through one
//! [`ErrorClass`] (decided once by a [`Classify`]), and composes statically with
//! [`Compose::then`] — or all at once, in the documented order, with [`Pipeline`]. Every
//! policy, stack and pipeline is also a `tower::Layer` ([`layer`]). Nothing here spawns a
//! task: dropping a call's future cancels everything it started, and a cancelled call is
//! never retried, hedged or counted as a failure. Live state is listed by
//! [`observe::snapshot`]; numbers go to the `metrics` facade, events to `tracing`.
//!
//! **When not to use it:** these policies are in-process. They protect one process's calls;
//! a limit shared by many machines needs a shared store (the durable job layer).
//!
//! ```
//! use std::time::Duration;
//! use windlass_policy::{Backoff, CircuitBreaker, ErrorClass, Jitter, Pipeline, Retry, Timeout};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! #[derive(Debug)]
//! struct Status(u16);
//!
//! let pipeline = Pipeline::<&str, Status>::builder()
//!     .classify(|e: &Status| if e.0 >= 500 { ErrorClass::Transient } else { ErrorClass::Permanent })
//!     .retry(
//!         Retry::builder()
//!             .max_attempts(3)
//!             .backoff(Backoff::exponential(Duration::from_millis(50)))
//!             .jitter(Jitter::Full)
//!             .build()
//!             .unwrap(),
//!     )
//!     .breaker(CircuitBreaker::builder().name("inventory").build().unwrap())
//!     .timeout(Timeout::new(Duration::from_secs(1)).unwrap())
//!     .build();
//! let out = pipeline.call(|| async { Ok("in stock") }).await;
//! assert_eq!(out.unwrap(), "in stock");
//! # }
//! ```

pub mod breaker;
pub mod bulkhead;
pub mod cache;
pub mod classify;
pub mod coalesce;
pub mod compose;
pub mod concurrency_limiter;
pub mod config;
pub mod context;
pub mod error;
pub mod fallback;
pub mod guard;
pub mod hedge;
pub mod keyed;
pub mod layer;
pub mod observe;
pub mod pipeline;
pub mod policy;
pub mod rate_limit;
pub mod retry;
mod sync;
pub mod time;
pub mod timeout;

pub use breaker::{BreakerPermit, BreakerState, CircuitBreaker, CircuitBreakerBuilder, WindowKind};
pub use bulkhead::{Bulkhead, BulkheadBuilder, BulkheadPermit};
pub use cache::{Cache, CacheBuilder};
pub use classify::{AllTransient, ClassifiedError, Classify, ErrorClass, SelfClassified};
pub use coalesce::Coalesce;
pub use compose::{Classified, Compose, Identity, Stack};
pub use concurrency_limiter::{
    ConcurrencyLimiter, ConcurrencyLimiterBuilder, LimitAlgorithm, LimitPermit,
};
pub use config::ConfigError;
pub use context::{Context, Priority};
pub use error::{GaveUp, PolicyError, Rejection};
pub use fallback::Fallback;
pub use guard::{Admission, Guard, Refusal};
pub use hedge::{Hedge, HedgeBuilder, HedgeDelay};
pub use keyed::{Keyed, KeyedBuilder};
pub use layer::{FreshContext, PolicyLayer, PolicyService, RequestContext};
pub use pipeline::{Pipeline, PipelineBuilder};
pub use policy::{Policy, PolicyExt};
pub use rate_limit::{RateLimiter, RateLimiterBuilder};
pub use retry::{
    Backoff, Jitter, PackedSchedule, Retry, RetryAt, RetryBudget, RetryBuilder, RetryEvent,
    RetrySchedule,
};
pub use timeout::{Deadline, Timeout};
