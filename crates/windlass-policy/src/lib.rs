//! # windlass-policy
//!
//! In-process resilience and flow-control policies for async Rust: the first layer of
//! Windlass. Each policy answers one way that calls to another service go wrong:
//!
//! | problem | policy |
//! |---|---|
//! | a transient failure | [`Retry`] (backoff, jitter, `Retry-After`, deadline, budget) |
//! | a call that never returns | [`Timeout`] per attempt, [`Deadline`] for the whole call |
//! | hammering a service that is down | [`CircuitBreaker`] |
//! | one slow dependency eating every task | [`Bulkhead`] |
//! | sending faster than the other side allows | [`RateLimiter`] |
//!
//! Every policy implements [`Policy`], returns [`PolicyError`], reads failures through one
//! [`ErrorClass`], and composes with [`Compose::then`]. Nothing here spawns a task: dropping
//! a call's future cancels everything it started.

pub mod classify;
pub mod config;
pub mod context;
pub mod error;
pub mod observe;
pub mod retry;

pub use classify::{AllTransient, Classify, ErrorClass};
pub use config::ConfigError;
pub use context::{Compose, Context, Identity, Policy, PolicyExt, Priority, Stack};
pub use error::{GaveUp, PolicyError, Rejection};
pub use retry::{Backoff, Jitter, Retry, RetryBudget, RetryBuilder, RetryEvent};
pub mod breaker;
pub use breaker::{BreakerPermit, BreakerState, CircuitBreaker, CircuitBreakerBuilder, WindowKind};
pub mod timeout;
pub use timeout::{Deadline, Timeout};
pub mod bulkhead;
pub use bulkhead::{Bulkhead, BulkheadBuilder, BulkheadPermit};
pub mod rate_limit;
pub use rate_limit::{RateLimiter, RateLimiterBuilder};
pub mod fallback;
pub mod hedge;
pub use fallback::Fallback;
pub use hedge::{Hedge, HedgeBuilder, HedgeDelay};
pub mod cache;
pub mod coalesce;
pub use cache::{Cache, CacheBuilder};
pub use coalesce::Coalesce;
