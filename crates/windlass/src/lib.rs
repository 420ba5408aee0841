//! # Windlass
//!
//! The structured control plane for async work that must not fail silently, must not melt
//! down under load, and must not lose a job. This crate is the facade: it re-exports each
//! layer behind a feature.
//!
//! - [`policy`] (feature `policy`, on by default): retry, timeouts, circuit breakers,
//!   bulkheads, rate limits, coalescing, caching, fallback, hedging, adaptive concurrency.
//! - [`concurrency`] (feature `concurrency`, on by default): scopes, never-silent detached
//!   tasks, supervision and actors, gather/race combinators, bounded map, CPU offload.

#[cfg(feature = "policy")]
pub use windlass_policy as policy;

#[cfg(feature = "concurrency")]
pub use windlass_concurrency as concurrency;
