//! Heap allocations per call, and throughput of a breaker and a bulkhead shared by two
//! threads compared with one, for Windlass and tower-resilience in the same run.
//!
//! Run: `cargo bench -p windlass-bench --bench alloc_contention`
//! Prints two markdown tables (also written to `target/alloc_contention.md`).

#![allow(missing_docs)]

mod common;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::*;
use tower::{Layer, Service};
use windlass_bench::alloc::{CountingAlloc, allocations};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

const CALLS: u64 = 20_000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime")
}

fn per_call<F, Fut>(rt: &tokio::runtime::Runtime, mut f: F) -> f64
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    rt.block_on(async {
        for _ in 0..1_000 {
            f().await;
        }
        let before = allocations();
        for _ in 0..CALLS {
            f().await;
        }
        (allocations() - before) as f64 / CALLS as f64
    })
}

fn tower_per_call<S>(rt: &tokio::runtime::Runtime, svc: S) -> f64
where
    S: Service<Req> + Clone,
{
    per_call(rt, || {
        let mut s = svc.clone();
        async move { drive(&mut s).await }
    })
}

/// Calls per second over `secs`, with `threads` threads each running its own
/// current-thread runtime and calling `f` in a loop.
fn throughput<F, Fut>(threads: usize, f: F) -> f64
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()>,
{
    let f = Arc::new(f);
    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (f, stop, start) = (f.clone(), stop.clone(), start.clone());
            std::thread::spawn(move || {
                let rt = runtime();
                start.wait();
                rt.block_on(async {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..256 {
                            f().await;
                        }
                        n += 256;
                    }
                    n
                })
            })
        })
        .collect();
    start.wait();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    let total: u64 = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
    total as f64 / t0.elapsed().as_secs_f64()
}

/// One row of the two-thread table: `ours` shared by one then two threads, and the
/// tower-resilience service likewise.
///
/// Our policy is leaked to a `&'static` so that no per-call `Arc` clone (a refcount both
/// threads would write) is charged to it; the tower service is cloned per call, as tower's
/// calling convention requires.
fn contention_row<P, S>(name: &str, ours: P, theirs: S) -> String
where
    P: windlass_policy::Policy<u64, std::io::Error> + Send + 'static,
    S: Service<Req> + Clone + Send + Sync + 'static,
{
    let p: &'static P = Box::leak(Box::new(ours));
    let w1 = throughput(1, move || call(p));
    let w2 = throughput(2, move || call(p));
    let (s1, s2) = (theirs.clone(), theirs);
    let t1 = throughput(1, move || {
        let mut s = s1.clone();
        async move { drive(&mut s).await }
    });
    let t2 = throughput(2, move || {
        let mut s = s2.clone();
        async move { drive(&mut s).await }
    });
    let m = |v: f64| format!("{:.2} M/s", v / 1e6);
    format!(
        "| {name} | {} | {} | {:.2} | {} | {} | {:.2} |\n",
        m(w1),
        m(w2),
        w2 / w1,
        m(t1),
        m(t2),
        t2 / t1
    )
}

fn main() {
    // `cargo bench` passes `--bench`; a plain `cargo test --benches` passes nothing and
    // should not spend seconds here.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = runtime();
    let mut out = String::new();
    out.push_str("| workload | windlass allocs/call | tower-resilience allocs/call | tower allocs/call |\n|---|---|---|---|\n");
    let row = |name: &str, w: f64, tr: Option<f64>, tw: Option<f64>| {
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        format!("| {name} | {w:.2} | {} | {} |\n", f(tr), f(tw))
    };
    let bare = rt.block_on(async { bare_service() });
    out.push_str(&row(
        "bare call",
        per_call(&rt, || async {
            let _ = std::hint::black_box(op().await);
        }),
        None,
        Some(tower_per_call(&rt, bare.clone())),
    ));
    macro_rules! ours {
        ($p:expr) => {{
            let p = rt.block_on(async { $p });
            per_call(&rt, || call(&p))
        }};
    }
    out.push_str(&row(
        "retry",
        ours!(w_retry()),
        Some(tower_per_call(&rt, tr::retry().layer(bare.clone()))),
        Some(tower_per_call(&rt, tw::retry().layer(bare.clone()))),
    ));
    out.push_str(&row(
        "timeout",
        ours!(w_timeout()),
        Some(tower_per_call(&rt, tr::timeout().layer(bare.clone()))),
        Some(tower_per_call(&rt, tw::timeout().layer(bare.clone()))),
    ));
    let tr_rate = rt.block_on(async { tr::rate().layer(bare_service()) });
    out.push_str(&row(
        "rate limiter",
        ours!(w_rate()),
        Some(tower_per_call(&rt, tr_rate)),
        None,
    ));
    out.push_str(&row(
        "bulkhead",
        ours!(w_bulkhead()),
        Some(tower_per_call(&rt, tr::bulkhead().layer(bare.clone()))),
        Some(tower_per_call(&rt, tw::concurrency().layer(bare.clone()))),
    ));
    out.push_str(&row(
        "circuit breaker",
        ours!(w_breaker()),
        Some(tower_per_call(&rt, tr::breaker().layer(bare.clone()))),
        None,
    ));
    out.push_str(&row(
        "5-policy Pipeline builder",
        ours!(w_pipeline_builder()),
        None,
        None,
    ));
    let tr_pipe = rt.block_on(async { tr::pipeline() });
    out.push_str(&row(
        "5-policy pipeline",
        ours!(w_pipeline()),
        Some(tower_per_call(&rt, tr_pipe)),
        None,
    ));

    out.push_str("\n| shared by | windlass 1 thread | windlass 2 threads | ratio | tower-resilience 1 thread | tower-resilience 2 threads | ratio |\n|---|---|---|---|---|---|---|\n");
    out.push_str(&contention_row(
        "circuit breaker",
        w_breaker(),
        tr::breaker().layer(bare_service()),
    ));
    out.push_str(&contention_row(
        "bulkhead",
        w_bulkhead(),
        tr::bulkhead().layer(bare_service()),
    ));
    print!("{out}");
    let _ = std::fs::create_dir_all("target");
    let _ = std::fs::write("target/alloc_contention.md", &out);
}
