//! Success-path overhead per call: each Windlass policy against tower-resilience 0.13 and
//! tower's own equivalent, and a bare call, all in one run.
//!
//! Run: `cargo bench -p windlass-bench --bench policies`

#![allow(missing_docs)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use criterion::{Criterion, criterion_group, criterion_main};
use tower::Layer;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
}

/// Times `iters` sequential awaits of `f` inside one `block_on`, so the runtime's own entry
/// cost is not charged to the policy.
fn timed<F, Fut>(rt: &tokio::runtime::Runtime, iters: u64, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    rt.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            f().await;
        }
        start.elapsed()
    })
}

macro_rules! tower_bench {
    ($g:expr, $rt:expr, $name:expr, $svc:expr) => {{
        let mut svc = $svc;
        $g.bench_function($name, |b| {
            b.iter_custom(|n| {
                timed(&$rt, n, || {
                    let mut s = svc.clone();
                    async move { drive(&mut s).await }
                })
            })
        });
        let _ = &mut svc;
    }};
}

fn overhead(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("overhead");
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));

    g.bench_function("bare/call", |b| {
        b.iter_custom(|n| {
            timed(&rt, n, || async {
                let _ = std::hint::black_box(op().await);
            })
        })
    });
    tower_bench!(g, rt, "bare/tower-service", bare_service());

    macro_rules! ours {
        ($name:expr, $p:expr) => {{
            let p = rt.block_on(async { $p });
            g.bench_function($name, |b| b.iter_custom(|n| timed(&rt, n, || call(&p))));
        }};
    }
    ours!("retry/windlass", w_retry());
    tower_bench!(
        g,
        rt,
        "retry/tower-resilience",
        tr::retry().layer(bare_service())
    );
    tower_bench!(g, rt, "retry/tower", tw::retry().layer(bare_service()));

    ours!("timeout/windlass", w_timeout());
    tower_bench!(
        g,
        rt,
        "timeout/tower-resilience",
        tr::timeout().layer(bare_service())
    );
    tower_bench!(g, rt, "timeout/tower", tw::timeout().layer(bare_service()));

    ours!("rate-limiter/windlass", w_rate());
    tower_bench!(
        g,
        rt,
        "rate-limiter/tower-resilience",
        rt.block_on(async { tr::rate().layer(bare_service()) })
    );

    ours!("bulkhead/windlass", w_bulkhead());
    tower_bench!(
        g,
        rt,
        "bulkhead/tower-resilience",
        tr::bulkhead().layer(bare_service())
    );
    tower_bench!(
        g,
        rt,
        "bulkhead/tower-concurrency-limit",
        tw::concurrency().layer(bare_service())
    );

    ours!("breaker/windlass", w_breaker());
    tower_bench!(
        g,
        rt,
        "breaker/tower-resilience",
        tr::breaker().layer(bare_service())
    );

    ours!("pipeline5/windlass", w_pipeline());
    ours!("pipeline5/windlass-builder", w_pipeline_builder());
    tower_bench!(
        g,
        rt,
        "pipeline5/tower-resilience",
        rt.block_on(async { tr::pipeline() })
    );
    g.finish();
}

criterion_group!(benches, overhead);
criterion_main!(benches);
