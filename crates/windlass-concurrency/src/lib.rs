//! # windlass-concurrency
//!
//! Structured concurrency for tokio: the tools for the shape of async work, so that fan-out
//! is bounded, nothing is orphaned and no error is silent.
//!
//! | problem | tool |
//! |---|---|
//! | tasks outliving their spawner, errors lost in them | [`Scope`] |
//! | an error vanishing in a fire-and-forget task | [`spawn_detached`] |
//! | a worker that must come back after a crash, but not crash-loop | [`Supervisor`] |
//! | shared state behind locks | supervised actors: [`spawn_actor`], bounded mailbox |
//! | scatter-gather with per-call timeouts and fallbacks | [`gather::all`], [`gather::all_settled`], [`gather::race`], [`gather::any`], [`gather::leg`] |
//! | unbounded fan-out | [`map::map_bounded`] and friends (at most N in flight, backpressure) |
//! | CPU work stalling the runtime | [`Offload`]: bounded pool, bounded queue, dropped jobs never run |
//! | bursty input: debounce, throttle, dedupe, batch, switch | [`stream::StreamOps`] |
//! | nobody sees stuck awaits, blocked runtimes, silent errors | [`signals`]: `instrument` + `Monitor` |

pub mod actor;
pub mod detached;
pub mod gather;
pub mod map;
pub mod observe;
pub mod offload;
pub mod scope;
pub mod signals;
pub mod stream;
pub mod supervisor;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use actor::{Actor, ActorRef, ActorStopped, AskError, TrySendError, spawn_actor};
pub use detached::{DetachedFailure, detached_failures, recent_failures, spawn_detached};
pub use offload::{Offload, OffloadError, OffloadStats};
pub use scope::{PanicPayload, Scope, ScopeError};
pub use supervisor::{Escalated, Restart, Supervisor, SupervisorBuilder};

#[cfg(test)]
mod error_classes;
