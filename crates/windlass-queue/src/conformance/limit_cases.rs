//! Limit cases: queue and per-key concurrency and rate limits, enforced by the store's claim
//! for every claimer.
#![allow(clippy::unwrap_used, missing_docs)] // test code: a failed step is a failed case

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::{claim_req, job_with, put};
use crate::store::{Finish, NextState};
use crate::{AttemptRecord, JobOptions, ManualClock, QueueLimits, Rate, Store};

fn keyed(n: i64, key: Option<&str>) -> crate::NewJob {
    job_with(
        n,
        JobOptions {
            limit_key: key.map(str::to_string),
            ..JobOptions::default()
        },
    )
}

async fn complete<S: Store>(store: &S, c: &crate::ClaimedJob) {
    let f = Finish {
        lease: c.lease.clone(),
        next: NextState::Completed,
        record: AttemptRecord {
            attempt: c.attempt,
            worker: c.lease.worker.clone(),
            at_ms: 0,
            outcome: "completed".into(),
            error: None,
            class: None,
        },
    };
    assert_eq!(
        store.finish(vec![f]).await.unwrap(),
        vec![crate::Fenced::Applied]
    );
}

fn rate(count: u32, ms: u64) -> Option<Rate> {
    Some(Rate {
        count,
        window: Duration::from_millis(ms),
    })
}

pub async fn limits_are_stored_and_removed<S: Store>(store: S, _clock: ManualClock) {
    assert_eq!(
        store.limits("default".into()).await.unwrap(),
        QueueLimits::default()
    );
    let l = QueueLimits {
        max_running: Some(3),
        rate_per_key: rate(5, 1_000),
        ..QueueLimits::default()
    };
    store.set_limits("default".into(), l).await.unwrap();
    assert_eq!(store.limits("default".into()).await.unwrap(), l);
    assert_eq!(
        store.limits("other".into()).await.unwrap(),
        QueueLimits::default()
    );
    store
        .set_limits("default".into(), QueueLimits::default())
        .await
        .unwrap();
    assert_eq!(
        store.limits("default".into()).await.unwrap(),
        QueueLimits::default()
    );
    let bad = QueueLimits {
        max_running: Some(0),
        ..QueueLimits::default()
    };
    assert!(matches!(
        store.set_limits("default".into(), bad).await,
        Err(crate::StoreError::Invalid(_))
    ));
}

pub async fn queue_concurrency_limit_holds_across_claimers<S: Store>(
    store: S,
    _clock: ManualClock,
) {
    store
        .set_limits(
            "default".into(),
            QueueLimits {
                max_running: Some(3),
                ..QueueLimits::default()
            },
        )
        .await
        .unwrap();
    put(&store, (0..10).map(|n| keyed(n, None)).collect()).await;
    let a = store.claim(claim_req("w1", 10)).await.unwrap();
    assert_eq!(a.len(), 3);
    assert!(
        store.claim(claim_req("w2", 10)).await.unwrap().is_empty(),
        "a second worker went past the limit"
    );
    complete(&store, &a[0]).await;
    assert_eq!(store.claim(claim_req("w2", 10)).await.unwrap().len(), 1);
    // Removing the limit frees the rest.
    store
        .set_limits("default".into(), QueueLimits::default())
        .await
        .unwrap();
    assert_eq!(store.claim(claim_req("w2", 10)).await.unwrap().len(), 6);
}

pub async fn concurrent_claimers_never_exceed_the_queue_limit<S: Store>(
    store: S,
    _clock: ManualClock,
) {
    let store = Arc::new(store);
    store
        .set_limits(
            "default".into(),
            QueueLimits {
                max_running: Some(3),
                ..QueueLimits::default()
            },
        )
        .await
        .unwrap();
    put(&*store, (0..300).map(|n| keyed(n, None)).collect()).await;
    let inside = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (store, inside, peak, done) =
            (store.clone(), inside.clone(), peak.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while done.load(Ordering::SeqCst) < 300 {
                let got = store.claim(claim_req(&format!("w{w}"), 2)).await.unwrap();
                let now = inside.fetch_add(got.len(), Ordering::SeqCst) + got.len();
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::task::yield_now().await;
                // Leave before the store hears of the end: the count here never exceeds the
                // store's own.
                inside.fetch_sub(got.len(), Ordering::SeqCst);
                for c in &got {
                    complete(&*store, c).await;
                }
                done.fetch_add(got.len(), Ordering::SeqCst);
                if got.is_empty() {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(done.load(Ordering::SeqCst), 300);
    assert!(
        peak.load(Ordering::SeqCst) <= 3,
        "peak {} running under a limit of 3",
        peak.load(Ordering::SeqCst)
    );
}

pub async fn per_key_concurrency_limits_skip_a_full_key<S: Store>(store: S, _clock: ManualClock) {
    store
        .set_limits(
            "default".into(),
            QueueLimits {
                max_running_per_key: Some(1),
                ..QueueLimits::default()
            },
        )
        .await
        .unwrap();
    let ids = put(
        &store,
        vec![
            keyed(0, Some("a")),
            keyed(1, Some("a")),
            keyed(2, Some("b")),
            keyed(3, None),
        ],
    )
    .await;
    let first = store.claim(claim_req("w", 10)).await.unwrap();
    let got: Vec<_> = first.iter().map(|c| c.lease.job).collect();
    assert_eq!(
        got,
        vec![ids[0], ids[2], ids[3]],
        "the second `a` waits; others go"
    );
    assert!(store.claim(claim_req("w", 10)).await.unwrap().is_empty());
    complete(&store, &first[0]).await;
    let next: Vec<_> = store
        .claim(claim_req("w", 10))
        .await
        .unwrap()
        .iter()
        .map(|c| c.lease.job)
        .collect();
    assert_eq!(next, vec![ids[1]]);
}

pub async fn queue_rate_limits_refill_over_time<S: Store>(store: S, clock: ManualClock) {
    store
        .set_limits(
            "default".into(),
            QueueLimits {
                rate: rate(2, 1_000),
                ..QueueLimits::default()
            },
        )
        .await
        .unwrap();
    put(&store, (0..6).map(|n| keyed(n, None)).collect()).await;
    assert_eq!(
        store.claim(claim_req("w1", 10)).await.unwrap().len(),
        2,
        "the burst"
    );
    assert!(
        store.claim(claim_req("w2", 10)).await.unwrap().is_empty(),
        "the bucket is shared"
    );
    clock.advance(Duration::from_millis(499));
    assert!(store.claim(claim_req("w2", 10)).await.unwrap().is_empty());
    clock.advance(Duration::from_millis(1));
    assert_eq!(
        store.claim(claim_req("w2", 10)).await.unwrap().len(),
        1,
        "one token per 500 ms"
    );
    clock.advance(Duration::from_secs(60));
    assert_eq!(
        store.claim(claim_req("w1", 10)).await.unwrap().len(),
        2,
        "refills only up to the burst"
    );
}

pub async fn per_key_rate_limits_hold_each_key_apart<S: Store>(store: S, clock: ManualClock) {
    store
        .set_limits(
            "default".into(),
            QueueLimits {
                rate_per_key: rate(1, 1_000),
                ..QueueLimits::default()
            },
        )
        .await
        .unwrap();
    let ids = put(
        &store,
        vec![
            keyed(0, Some("a")),
            keyed(1, Some("a")),
            keyed(2, Some("b")),
            keyed(3, Some("b")),
        ],
    )
    .await;
    let got: Vec<_> = store
        .claim(claim_req("w", 10))
        .await
        .unwrap()
        .iter()
        .map(|c| c.lease.job)
        .collect();
    assert_eq!(got, vec![ids[0], ids[2]]);
    assert!(store.claim(claim_req("w", 10)).await.unwrap().is_empty());
    clock.advance(Duration::from_secs(1));
    let got: Vec<_> = store
        .claim(claim_req("w", 10))
        .await
        .unwrap()
        .iter()
        .map(|c| c.lease.job)
        .collect();
    assert_eq!(got, vec![ids[1], ids[3]]);
}
