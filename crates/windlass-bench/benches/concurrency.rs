//! Windlass's concurrency tools against the hand-written tokio/futures equivalents, in one
//! run: scope vs `JoinSet`, `gather::all` vs `try_join_all`, bounded map vs
//! `buffer_unordered`, `throttle` vs tokio-stream's, `batch` vs tokio-stream's
//! `chunks_timeout`; and the cost of `signals::instrument` over a plain await. Allocations
//! per operation are printed first.
//!
//! Run: `cargo bench -p windlass-bench --bench concurrency`

#![allow(missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use futures_util::StreamExt;
use windlass_bench::alloc::{CountingAlloc, allocations};
use windlass_concurrency::Scope;
use windlass_concurrency::gather;
use windlass_concurrency::map::map_bounded_unordered;
use windlass_concurrency::stream::{StreamOps, ThrottleMode};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const TASKS: usize = 100;
const ITEMS: u64 = 1_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
}

async fn scope_100() {
    let mut s = Scope::new();
    for i in 0..TASKS {
        s.spawn(async move { Ok::<_, ()>(black_box(i)) });
    }
    black_box(s.join().await.ok());
}

async fn joinset_100() {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..TASKS {
        set.spawn(async move { Ok::<_, ()>(black_box(i)) });
    }
    // Hand-written equivalent of `join`: results back in spawn order.
    let mut out = vec![0; TASKS];
    let mut idx = 0;
    while let Some(r) = set.join_next().await {
        if let Ok(Ok(v)) = r {
            out[idx] = v;
            idx += 1;
        }
    }
    black_box(out);
}

async fn all_100() {
    black_box(
        gather::all((0..TASKS).map(|i| async move { Ok::<_, ()>(black_box(i)) }))
            .await
            .ok(),
    );
}

async fn try_join_all_100() {
    black_box(
        futures_util::future::try_join_all(
            (0..TASKS).map(|i| async move { Ok::<_, ()>(black_box(i)) }),
        )
        .await
        .ok(),
    );
}

async fn bounded_map() {
    let n = map_bounded_unordered(0..ITEMS, 16, |x| async move { black_box(x) })
        .expect("valid")
        .count()
        .await;
    black_box(n);
}

async fn buffer_unordered() {
    let n = futures_util::stream::iter(0..ITEMS)
        .map(|x| async move { black_box(x) })
        .buffer_unordered(16)
        .count()
        .await;
    black_box(n);
}

async fn throttle_ours() {
    let n = futures_util::stream::iter(0..ITEMS)
        .throttle(Duration::ZERO, ThrottleMode::Leading)
        .count()
        .await;
    black_box(n);
}

async fn throttle_tokio_stream() {
    let n = tokio_stream::StreamExt::throttle(futures_util::stream::iter(0..ITEMS), Duration::ZERO)
        .count()
        .await;
    black_box(n);
}

async fn batch_ours() {
    let n = futures_util::stream::iter(0..ITEMS * 10)
        .batch(100, Duration::from_millis(10))
        .expect("valid")
        .count()
        .await;
    black_box(n);
}

async fn chunks_timeout() {
    let n = tokio_stream::StreamExt::chunks_timeout(
        futures_util::stream::iter(0..ITEMS * 10),
        100,
        Duration::from_millis(10),
    )
    .count()
    .await;
    black_box(n);
}

async fn instrumented_100() {
    for i in 0..TASKS {
        black_box(
            windlass_concurrency::signals::instrument("bench.op", async move { black_box(i) })
                .await,
        );
    }
}

async fn plain_100() {
    for i in 0..TASKS {
        black_box(async move { black_box(i) }.await);
    }
}

type Case = (
    &'static str,
    &'static str,
    fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>,
);

fn cases() -> Vec<Case> {
    vec![
        (
            "scope join, 100 tasks",
            "windlass",
            || Box::pin(scope_100()),
        ),
        ("scope join, 100 tasks", "JoinSet", || {
            Box::pin(joinset_100())
        }),
        ("all, 100 futures", "windlass", || Box::pin(all_100())),
        ("all, 100 futures", "try_join_all", || {
            Box::pin(try_join_all_100())
        }),
        ("bounded map, 1000 items", "windlass", || {
            Box::pin(bounded_map())
        }),
        ("bounded map, 1000 items", "buffer_unordered", || {
            Box::pin(buffer_unordered())
        }),
        ("throttle, 1000 items", "windlass", || {
            Box::pin(throttle_ours())
        }),
        ("throttle, 1000 items", "tokio-stream", || {
            Box::pin(throttle_tokio_stream())
        }),
        ("batch 100, 10000 items", "windlass", || {
            Box::pin(batch_ours())
        }),
        (
            "batch 100, 10000 items",
            "tokio-stream chunks_timeout",
            || Box::pin(chunks_timeout()),
        ),
        ("100 awaited operations", "signals::instrument", || {
            Box::pin(instrumented_100())
        }),
        ("100 awaited operations", "plain await", || {
            Box::pin(plain_100())
        }),
    ]
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = runtime();
    // Allocations per operation (the boxing of the case itself is subtracted).
    println!("| operation | implementation | allocations per operation |\n|---|---|---|");
    for (op, who, make) in cases() {
        rt.block_on(make());
        let before = allocations();
        for _ in 0..100 {
            rt.block_on(make());
        }
        let per = (allocations() - before) as f64 / 100.0 - 1.0;
        println!("| {op} | {who} | {per:.1} |");
    }
    let mut c = Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .configure_from_args();
    let mut group = c.benchmark_group("concurrency");
    for (op, who, make) in cases() {
        group.bench_function(format!("{op}/{who}"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        make().await;
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();
    c.final_summary();
}
