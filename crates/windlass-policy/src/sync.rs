//! The atomics and the lock that the lock-free parts (the breaker's batched-success
//! stripes, the bulkhead's slot count) are built on: std's, or loom's under `--cfg loom`,
//! so that the model checker explores every interleaving of them (`tests/loom.rs`; run
//! with `RUSTFLAGS="--cfg loom" cargo test -p windlass-policy --test loom --release`).

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU64, AtomicUsize};
#[cfg(not(loom))]
pub(crate) use std::sync::{Mutex, MutexGuard};

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, AtomicUsize};
#[cfg(loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard};
