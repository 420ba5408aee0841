//! Stream operators with time in them: debounce, throttle, distinct-until-changed, batch
//! (by size or time, or adaptively sized), and switch-to-latest.
//!
//! `futures` and `tokio-stream` leave these out (tokio-stream has `throttle` and
//! `chunks_timeout` only), so every project writes its own, usually with a bug at the edges:
//! the value pending when the stream ends, the trailing value of a throttle window, the work
//! left running by a superseded request. These follow RxJS's marble-tested semantics and are
//! tested the same way, on tokio's paused clock, to the millisecond. All of them apply
//! backpressure: they poll their input only when polled themselves.
//!
//! ```
//! use std::time::Duration;
//! use futures_util::StreamExt;
//! use windlass_concurrency::stream::StreamOps;
//! use windlass_concurrency::testing::{marbles, record};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! // Search-as-you-type: wait for a 20 ms pause in typing, skip repeats.
//! let keys = marbles(vec![(0, "r"), (5, "ru"), (10, "rus"), (60, "rus"), (70, "rust")], 100);
//! let queries = record(keys.debounce(Duration::from_millis(20)).distinct_until_changed()).await;
//! assert_eq!(queries, vec![(30, "rus"), (90, "rust")]);
//! # }
//! ```

mod batch;
mod debounce;
mod distinct;
mod switch;
mod throttle;

use std::future::Future;
use std::time::Duration;

use futures_util::Stream;
use windlass_policy::ConfigError;

pub use batch::{AdaptiveBatch, Batch};
pub use debounce::Debounce;
pub use distinct::DistinctUntilChanged;
pub use switch::SwitchLatest;
pub use throttle::{Throttle, ThrottleMode};

/// [`StreamOps::distinct_until_changed`]'s stream: the key is the value itself.
pub type DistinctByValue<S> =
    DistinctUntilChanged<S, fn(&<S as Stream>::Item) -> <S as Stream>::Item, <S as Stream>::Item>;

/// The operators, on every `Stream`.
pub trait StreamOps: Stream + Sized {
    /// Trailing debounce: emits a value once no newer one has arrived for `quiet`. The value
    /// pending when the input ends is emitted; nothing else is lost but superseded values.
    /// A zero `quiet` is meaningful: of the values that arrive together (ready in one
    /// poll), only the last is emitted.
    fn debounce(self, quiet: Duration) -> Debounce<Self> {
        Debounce::new(self, quiet, |_| false)
    }

    /// Throttle: at most one value per `window`; see [`ThrottleMode`]. A trailing value
    /// waiting when the input ends is emitted. A zero `window` throttles nothing.
    fn throttle(self, window: Duration, mode: ThrottleMode) -> Throttle<Self> {
        Throttle::new(self, window, mode)
    }

    /// Drops a value equal to the one emitted before it.
    fn distinct_until_changed(self) -> DistinctByValue<Self>
    where
        Self::Item: Clone + PartialEq,
    {
        DistinctUntilChanged::new(self, Clone::clone)
    }

    /// Drops a value whose key equals the key of the one emitted before it.
    fn distinct_until_changed_by<K, F>(self, key: F) -> DistinctUntilChanged<Self, F, K>
    where
        F: FnMut(&Self::Item) -> K,
        K: PartialEq,
    {
        DistinctUntilChanged::new(self, key)
    }

    /// Groups values into batches of `size`, or fewer when `max_wait` has passed since the
    /// batch's first value; the remainder is emitted when the input ends. A zero
    /// `max_wait` is meaningful: a batch holds what is ready at once, never waiting for more.
    fn batch(self, size: usize, max_wait: Duration) -> Result<Batch<Self>, ConfigError> {
        if size == 0 {
            return Err(ConfigError::new("batch", "size", "must be at least 1"));
        }
        Ok(Batch::fixed(self, size, max_wait))
    }

    /// Like [`batch`](Self::batch), with the size tuned toward a target processing time
    /// from how long the consumer takes per batch and how full batches are (see
    /// [`AdaptiveBatch`]).
    fn adaptive_batch(self, cfg: AdaptiveBatch) -> Result<Batch<Self>, ConfigError> {
        cfg.validate()?;
        Ok(Batch::adaptive(self, cfg))
    }

    /// For each value, runs `f(value)`; a newer value cancels (drops) the work for the
    /// previous one. Emits each completed work's output. Ends when the input has ended and
    /// the last work has finished.
    fn switch_latest<F, Fut>(self, f: F) -> SwitchLatest<Self, F, Fut>
    where
        F: FnMut(Self::Item) -> Fut,
        Fut: Future,
    {
        SwitchLatest::new(self, f)
    }
}

impl<S: Stream> StreamOps for S {}

/// Operators for streams of `Result`s.
pub trait TryStreamOps<T, E>: Stream<Item = Result<T, E>> + Sized {
    /// Debounce where an error passes at once and drops the value it interrupted.
    fn try_debounce(self, quiet: Duration) -> Debounce<Self> {
        Debounce::new(self, quiet, Result::is_err)
    }
}

impl<T, E, S: Stream<Item = Result<T, E>>> TryStreamOps<T, E> for S {}

#[cfg(test)]
mod tests;
