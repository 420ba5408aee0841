//! Testing toolkit (feature `testing`): helpers for deterministic async tests.
//!
//! Everything here runs on tokio's paused clock (`#[tokio::test(start_paused = true)]`):
//! time only moves when every task is idle, so a test that "waits 10 minutes" takes
//! microseconds and always sees the same interleaving.
//!
//! - [`marbles`] / [`record`]: drive a stream with values at exact millisecond offsets and
//!   record what comes out and when (the RxJS "marble test" idea, in plain vectors).
//!
//! ```
//! use futures_util::StreamExt;
//! use windlass_concurrency::testing::{marbles, record};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let input = marbles(vec![(0, 'a'), (30, 'b')], 50);
//! let out = record(input.map(|c| c.to_ascii_uppercase())).await;
//! assert_eq!(out, vec![(0, 'A'), (30, 'B')]);
//! # }
//! ```

use std::time::Duration;

use futures_util::stream::{self, Stream, StreamExt};
use tokio::time::Instant;

/// A stream that yields each `(ms, value)` at `ms` milliseconds after its first poll (in
/// order; offsets must not decrease), then ends at `end_ms`.
pub fn marbles<T>(events: Vec<(u64, T)>, end_ms: u64) -> impl Stream<Item = T> {
    stream::unfold(
        (events.into_iter(), None::<Instant>),
        move |(mut events, start)| async move {
            let t0 = start.unwrap_or_else(Instant::now);
            match events.next() {
                Some((at, v)) => {
                    tokio::time::sleep_until(t0 + Duration::from_millis(at)).await;
                    Some((v, (events, Some(t0))))
                }
                None => {
                    tokio::time::sleep_until(t0 + Duration::from_millis(end_ms)).await;
                    None
                }
            }
        },
    )
}

/// Collects a stream's items with the millisecond (since the first poll) each came out.
pub async fn record<S: Stream>(s: S) -> Vec<(u64, S::Item)> {
    let start = Instant::now();
    s.map(|v| (start.elapsed().as_millis() as u64, v))
        .collect()
        .await
}

/// Like [`record`], also returning when the stream ended.
pub async fn record_with_end<S: Stream>(s: S) -> (Vec<(u64, S::Item)>, u64) {
    let start = Instant::now();
    let items = s
        .map(|v| (start.elapsed().as_millis() as u64, v))
        .collect()
        .await;
    (items, start.elapsed().as_millis() as u64)
}
