//! # Windlass
//!
//! The structured control plane for async work that must not fail silently, must not melt
//! down under load, and must not lose a job. This crate is the facade: it re-exports each
//! layer behind a feature.
//!
//! - [`policy`] (feature `policy`, on by default): retry, timeouts, circuit breakers,
//!   bulkheads, rate limits, coalescing, caching, fallback, hedging, adaptive concurrency.

#[cfg(feature = "policy")]
pub use windlass_policy as policy;
