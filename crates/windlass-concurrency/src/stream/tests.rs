use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;

use super::*;
use crate::testing::{marbles, record, record_with_end};
use windlass_test_support::ms;

#[tokio::test(start_paused = true)]
async fn debounce_emits_after_quiet_and_flushes_at_end() {
    let input = marbles(vec![(0, 'a'), (10, 'b'), (40, 'c'), (45, 'd')], 100);
    assert_eq!(
        record(input.debounce(ms(20))).await,
        vec![(30, 'b'), (65, 'd')]
    );
    // The input ends before the quiet period: the pending value is flushed at the end.
    let (out, end) = record_with_end(marbles(vec![(0, 'a'), (3, 'b')], 5).debounce(ms(20))).await;
    assert_eq!((out, end), (vec![(5, 'b')], 5));
}

#[tokio::test(start_paused = true)]
async fn try_debounce_passes_errors_at_once_and_drops_the_pending_value() {
    let input = marbles(vec![(0, Ok(1)), (5, Err("e")), (10, Ok(2))], 50);
    assert_eq!(
        record(input.try_debounce(ms(20))).await,
        vec![(5, Err("e")), (30, Ok(2))]
    );
}

#[tokio::test(start_paused = true)]
async fn throttle_leading() {
    let input = marbles(vec![(0, 'a'), (5, 'b'), (25, 'c'), (30, 'd')], 60);
    let out = record(input.throttle(ms(20), ThrottleMode::Leading)).await;
    assert_eq!(out, vec![(0, 'a'), (25, 'c')]);
}

#[tokio::test(start_paused = true)]
async fn throttle_trailing() {
    let input = marbles(vec![(0, 'a'), (5, 'b'), (25, 'c'), (30, 'd')], 60);
    let out = record(input.throttle(ms(20), ThrottleMode::Trailing)).await;
    assert_eq!(out, vec![(20, 'b'), (40, 'd')]);
}

#[tokio::test(start_paused = true)]
async fn throttle_both() {
    let input = marbles(
        vec![(0, 'a'), (5, 'b'), (25, 'c'), (30, 'd'), (70, 'e')],
        100,
    );
    let out = record(input.throttle(ms(20), ThrottleMode::Both)).await;
    // a leads; b trails at 20 and opens 20-40; d trails at 40 and opens 40-60; e leads at 70.
    assert_eq!(out, vec![(0, 'a'), (20, 'b'), (40, 'd'), (70, 'e')]);
    // A trailing value waiting at the end is emitted.
    let out =
        record(marbles(vec![(0, 'a'), (5, 'b')], 10).throttle(ms(20), ThrottleMode::Both)).await;
    assert_eq!(out, vec![(0, 'a'), (10, 'b')]);
}

#[tokio::test(start_paused = true)]
async fn distinct_until_changed_by_value_and_key() {
    let out: Vec<u8> = futures_util::stream::iter([1, 1, 2, 2, 1])
        .distinct_until_changed()
        .collect()
        .await;
    assert_eq!(out, vec![1, 2, 1]);
    let out: Vec<(&str, u8)> = futures_util::stream::iter([("a", 1), ("a", 2), ("b", 3)])
        .distinct_until_changed_by(|(k, _)| *k)
        .collect()
        .await;
    assert_eq!(out, vec![("a", 1), ("b", 3)]);
}

#[tokio::test(start_paused = true)]
async fn batch_by_size_or_time_whichever_first() {
    let input = marbles(vec![(0, 1), (1, 2), (2, 3), (5, 4), (20, 5)], 22);
    let out = record(input.batch(3, ms(10)).unwrap()).await;
    assert_eq!(out, vec![(2, vec![1, 2, 3]), (15, vec![4]), (22, vec![5])]);
    assert!(futures_util::stream::iter([1]).batch(0, ms(1)).is_err());
}

/// Feeds an always-ready input to an adaptive batcher whose consumer takes
/// `per_item` per value plus `fixed` per batch; returns the batch sizes.
async fn adaptive_sizes(per_item: Duration, fixed: Duration, batches: usize) -> Vec<usize> {
    let cfg = AdaptiveBatch {
        target: ms(50),
        ..AdaptiveBatch::default()
    };
    let mut s = Box::pin(
        futures_util::stream::iter(0..1_000_000u32)
            .adaptive_batch(cfg)
            .unwrap(),
    );
    let mut sizes = Vec::new();
    while let Some(b) = s.next().await {
        sizes.push(b.len());
        tokio::time::sleep(fixed + per_item * b.len() as u32).await;
        if sizes.len() == batches {
            break;
        }
    }
    sizes
}

#[tokio::test(start_paused = true)]
async fn adaptive_batch_converges_toward_the_target_latency() {
    // 2 ms per item against a 50 ms target: about 25 items per batch.
    let sizes = adaptive_sizes(ms(2), ms(0), 60).await;
    let tail = &sizes[40..];
    assert!(tail.iter().all(|n| (10..=40).contains(n)), "sizes {tail:?}");
    // Cheap items: the size grows to the maximum.
    let sizes = adaptive_sizes(Duration::from_micros(10), ms(1), 200).await;
    assert_eq!(*sizes.last().unwrap(), 1024);
    // Expensive items: the size falls to the minimum.
    let sizes = adaptive_sizes(ms(100), ms(0), 10).await;
    assert_eq!(*sizes.last().unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn adaptive_batch_does_not_grow_on_a_shallow_queue() {
    // Values arrive every 5 ms: batches are cut by max_wait (10 ms), never full.
    let events: Vec<(u64, u32)> = (0..100).map(|i| (i * 5, i as u32)).collect();
    let cfg = AdaptiveBatch {
        initial: 16,
        ..AdaptiveBatch::default()
    };
    let mut s = Box::pin(marbles(events, 600).adaptive_batch(cfg).unwrap());
    let mut sizes = Vec::new();
    while let Some(b) = s.next().await {
        sizes.push(b.len());
    }
    assert!(
        sizes.iter().all(|n| *n <= 3),
        "small, time-cut batches: {sizes:?}"
    );
    assert!(
        AdaptiveBatch {
            min: 0,
            ..AdaptiveBatch::default()
        }
        .validate()
        .is_err()
    );
    assert!(
        AdaptiveBatch {
            shrink: 1.0,
            ..AdaptiveBatch::default()
        }
        .validate()
        .is_err()
    );
}

#[tokio::test(start_paused = true)]
async fn switch_latest_cancels_superseded_work() {
    let finished = Arc::new(AtomicUsize::new(0));
    let f = finished.clone();
    let input = marbles(vec![(0, 'a'), (10, 'b'), (50, 'c')], 60);
    let out = record(input.switch_latest(move |x| {
        let f = f.clone();
        async move {
            tokio::time::sleep(ms(20)).await;
            f.fetch_add(1, Ordering::SeqCst);
            x
        }
    }))
    .await;
    assert_eq!(out, vec![(30, 'b'), (70, 'c')]);
    assert_eq!(
        finished.load(Ordering::SeqCst),
        2,
        "the work for 'a' was dropped, not finished"
    );
}

#[tokio::test(start_paused = true)]
async fn a_consumer_exactly_on_target_keeps_growing_full_batches() {
    // Only a consumer slower than the target shrinks the batch; one exactly on it, with full
    // batches, lets it grow.
    let cfg = AdaptiveBatch {
        initial: 8,
        target: ms(50),
        ..AdaptiveBatch::default()
    };
    let mut s = Box::pin(
        futures_util::stream::iter(0..10_000u32)
            .adaptive_batch(cfg)
            .unwrap(),
    );
    assert_eq!(s.next().await.map(|b| b.len()), Some(8));
    assert_eq!(s.current_size(), 8);
    tokio::time::sleep(ms(50)).await;
    let grown = 8 + cfg.growth;
    assert_eq!(s.next().await.map(|b| b.len()), Some(grown));
    assert_eq!(s.current_size(), grown);
}
