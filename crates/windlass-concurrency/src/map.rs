//! Bounded concurrent map: run a function over many inputs, at most `limit` at a time.
//!
//! Spawning one task per input (`for x in inputs { tokio::spawn(...) }`) is unbounded
//! fan-out: ten thousand inputs become ten thousand sockets. These adapters keep at most
//! `limit` futures in flight and pull the next input only when one finishes
//! (backpressure: a slow consumer slows the producer, nothing piles up). Ordered variants
//! yield results in input order (a finished result waits for earlier ones and keeps its
//! slot meanwhile); unordered ones yield them as they finish.
//!
//! They are thin, validated wrappers over `futures`' `buffered`/`buffer_unordered`, which
//! already do exactly this; the point here is one vocabulary and a checked `limit`.
//!
//! ```
//! use futures_util::StreamExt;
//! use windlass_concurrency::map::{map_bounded, try_map_bounded};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let doubled: Vec<u32> = map_bounded(1..=5, 2, |x| async move { x * 2 }).unwrap().collect().await;
//! assert_eq!(doubled, vec![2, 4, 6, 8, 10]);
//! let all = try_map_bounded(1..=3, 2, |x| async move { Ok::<_, std::io::Error>(x) }).await;
//! assert_eq!(all.unwrap(), vec![1, 2, 3]);
//! # }
//! ```

use std::future::Future;

use futures_util::stream::{self, Stream, StreamExt};
use windlass_policy::ConfigError;
use windlass_policy::{ClassifiedError, ErrorClass};

fn check(limit: usize) -> Result<(), ConfigError> {
    if limit == 0 {
        Err(ConfigError::new(
            "bounded map",
            "limit",
            "must be at least 1",
        ))
    } else {
        Ok(())
    }
}

/// Maps `f` over `input` with at most `limit` calls in flight; results in input order.
pub fn map_bounded<I, F, Fut>(
    input: I,
    limit: usize,
    f: F,
) -> Result<impl Stream<Item = Fut::Output>, ConfigError>
where
    I: IntoIterator,
    F: FnMut(I::Item) -> Fut,
    Fut: Future,
{
    map_stream_bounded(stream::iter(input), limit, f)
}

/// Maps `f` over `input` with at most `limit` calls in flight; results as they finish.
pub fn map_bounded_unordered<I, F, Fut>(
    input: I,
    limit: usize,
    f: F,
) -> Result<impl Stream<Item = Fut::Output>, ConfigError>
where
    I: IntoIterator,
    F: FnMut(I::Item) -> Fut,
    Fut: Future,
{
    map_stream_bounded_unordered(stream::iter(input), limit, f)
}

/// Like [`map_bounded`], over a stream.
pub fn map_stream_bounded<S, F, Fut>(
    input: S,
    limit: usize,
    f: F,
) -> Result<impl Stream<Item = Fut::Output>, ConfigError>
where
    S: Stream,
    F: FnMut(S::Item) -> Fut,
    Fut: Future,
{
    check(limit)?;
    Ok(input.map(f).buffered(limit))
}

/// Like [`map_bounded_unordered`], over a stream.
pub fn map_stream_bounded_unordered<S, F, Fut>(
    input: S,
    limit: usize,
    f: F,
) -> Result<impl Stream<Item = Fut::Output>, ConfigError>
where
    S: Stream,
    F: FnMut(S::Item) -> Fut,
    Fut: Future,
{
    check(limit)?;
    Ok(input.map(f).buffer_unordered(limit))
}

/// Why [`try_map_bounded`] stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MapError<E> {
    /// The settings were invalid; nothing ran.
    #[error(transparent)]
    Config(ConfigError),
    /// A call failed; the calls in flight were cancelled.
    #[error("a mapped call failed")]
    Failed(E),
}

/// Invalid settings are permanent; a failed call keeps its own class.
impl<E: ClassifiedError> ClassifiedError for MapError<E> {
    fn error_class(&self) -> ErrorClass {
        match self {
            MapError::Config(e) => e.error_class(),
            MapError::Failed(e) => e.error_class(),
        }
    }
}

/// Maps `f` over `input` with at most `limit` in flight and collects the results in input
/// order. It fails fast: the first call to *fail* (in completion order, not input order)
/// stops it at once, and the calls still in flight are cancelled (dropped). An earlier call
/// that hangs never hides a later call's error.
pub async fn try_map_bounded<I, F, Fut, T, E>(
    input: I,
    limit: usize,
    f: F,
) -> Result<Vec<T>, MapError<E>>
where
    I: IntoIterator,
    F: FnMut(I::Item) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    check(limit).map_err(MapError::Config)?;
    let mut f = f;
    let mut running = stream::iter(input.into_iter().enumerate())
        .map(|(i, x)| {
            let call = f(x);
            async move { (i, call.await) }
        })
        .buffer_unordered(limit);
    let mut out: Vec<Option<T>> = Vec::new();
    while let Some((i, result)) = running.next().await {
        let value = result.map_err(MapError::Failed)?; // drops `running`: cancels the rest
        if out.len() <= i {
            out.resize_with(i + 1, || None);
        }
        out[i] = Some(value);
    }
    // Every index below the largest one finished (the stream ran dry without an error).
    Ok(out.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use windlass_test_support::ms;

    #[tokio::test(start_paused = true)]
    async fn never_more_than_limit_in_flight_and_input_pulled_only_with_room() {
        let probe = crate::testing::ConcurrencyProbe::new();
        let pulled = Arc::new(AtomicUsize::new(0));
        let p = pulled.clone();
        let input = (0..20u64).inspect(move |_| {
            p.fetch_add(1, Ordering::SeqCst);
        });
        let pr = probe.clone();
        let mut out = Box::pin(
            map_bounded_unordered(input, 3, move |x| {
                let pr = pr.clone();
                async move {
                    pr.track(tokio::time::sleep(ms(10 + (x % 3) * 5))).await;
                    x
                }
            })
            .unwrap(),
        );
        let first = out.next().await;
        assert!(first.is_some());
        assert!(
            pulled.load(Ordering::SeqCst) <= 4,
            "pulled {} with 3 slots",
            pulled.load(Ordering::SeqCst)
        );
        let rest: Vec<u64> = out.collect().await;
        assert_eq!(rest.len() + 1, 20);
        assert_eq!(probe.peak(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn ordered_keeps_input_order() {
        let out: Vec<u64> = map_bounded([30u64, 10, 20], 3, |d| async move {
            tokio::time::sleep(ms(d)).await;
            d
        })
        .unwrap()
        .collect()
        .await;
        assert_eq!(out, vec![30, 10, 20]);
    }

    #[tokio::test(start_paused = true)]
    async fn try_map_stops_at_the_first_error() {
        let started = Arc::new(AtomicUsize::new(0));
        let s = started.clone();
        let out = try_map_bounded(0..100u32, 2, move |x| {
            s.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(ms(1)).await;
                if x == 3 { Err("bad input 3") } else { Ok(x) }
            }
        })
        .await;
        assert_eq!(out, Err(MapError::Failed("bad input 3")));
        assert!(
            started.load(Ordering::SeqCst) <= 6,
            "stopped early: {}",
            started.load(Ordering::SeqCst)
        );
    }

    /// Regression: results were yielded in input order, so a hanging first call hid a later
    /// call's error forever and nothing in flight was cancelled.
    #[tokio::test(start_paused = true)]
    async fn try_map_fails_fast_in_completion_order_and_cancels_the_rest() {
        struct Cancelled(Arc<AtomicUsize>);
        impl Drop for Cancelled {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicUsize::new(0));
        let d = dropped.clone();
        let out = tokio::time::timeout(
            Duration::from_secs(60),
            try_map_bounded(0..3u32, 3, move |x| {
                let guard = Cancelled(d.clone());
                async move {
                    let _guard = guard;
                    match x {
                        1 => {
                            tokio::time::sleep(ms(10)).await;
                            Err::<u32, _>("call 1 failed")
                        }
                        // Calls 0 and 2 hang.
                        _ => std::future::pending().await,
                    }
                }
            }),
        )
        .await;
        assert_eq!(
            out,
            Ok(Err(MapError::Failed("call 1 failed"))),
            "not hidden by call 0"
        );
        assert_eq!(
            dropped.load(Ordering::SeqCst),
            3,
            "the hanging calls were cancelled"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn try_map_keeps_input_order_on_success() {
        let out = try_map_bounded([30u64, 10, 20, 5], 2, |d| async move {
            tokio::time::sleep(ms(d)).await;
            Ok::<_, ()>(d)
        })
        .await;
        assert_eq!(out, Ok(vec![30, 10, 20, 5]));
        let none = try_map_bounded(Vec::<u8>::new(), 2, |x| async move { Ok::<_, ()>(x) }).await;
        assert_eq!(none, Ok(vec![]));
    }

    #[test]
    fn zero_limit_is_an_error() {
        assert_eq!(
            map_bounded(0..1, 0, |x| async move { x })
                .err()
                .map(|e| e.field()),
            Some("limit")
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let out = rt.block_on(try_map_bounded(
            0..1u8,
            0,
            |x| async move { Ok::<_, ()>(x) },
        ));
        assert!(matches!(out, Err(MapError::Config(e)) if e.field() == "limit"));
    }
}
