//! `windlass bench queue`: the standard workloads of `../shared/peer-bench` (W1-W4), run on
//! Windlass's own queue so the figures sit beside the peers' and the raw-SQL floor's.
//!
//! - W1: `n` jobs enqueued one call at a time, each awaited: jobs/s.
//! - W2: `n` jobs enqueued in batches of `batch` (one call per batch): jobs/s.
//! - W3: `n` jobs already queued (inserted in bulk, not timed); a worker with concurrency `c`
//!   starts; the clock stops when the store has confirmed all `n` completed: jobs/s.
//! - W4: an idle worker (1 s warm-up); `lat_n` jobs enqueued one at a time every 5 ms;
//!   latency from the enqueue call's start to the handler's start: p50 / p99 ms.
//!
//! Handlers are no-ops; payload `{"i": n}` (W4 adds `"t"`). Every workload starts on an
//! empty store: a new SQLite file, or the PostgreSQL schema dropped and re-created.

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use windlass_queue::{
    Job, JobContext, JobError, JobOptions, JobState, Queue, Store, Worker, WorkerConfig,
};

/// The workload sizes.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Jobs in W1-W3.
    pub n: usize,
    /// Worker concurrency in W3/W4.
    pub concurrency: usize,
    /// Jobs per bulk call in W2.
    pub batch: usize,
    /// Samples in W4.
    pub lat_n: usize,
    /// Which workloads (`w1`..`w4`).
    pub workloads: Vec<String>,
}

/// Jobs per second.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// Jobs per second.
    pub jobs_per_s: f64,
    /// Wall time of the timed part.
    pub secs: f64,
}

/// Latency percentiles.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Maximum, ms.
    pub max_ms: f64,
}

/// One run of the workloads on one backend (the `--json` output).
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// `sqlite` or `postgres`.
    pub backend: String,
    /// Jobs per workload.
    pub n: usize,
    /// Worker concurrency.
    pub concurrency: usize,
    /// What a crash can lose with these settings.
    pub durability: String,
    /// W1.
    pub w1: Option<Throughput>,
    /// W2.
    pub w2: Option<Throughput>,
    /// W3.
    pub w3: Option<Throughput>,
    /// W4.
    pub w4: Option<Latency>,
}

#[derive(Serialize, Deserialize)]
struct Payload {
    i: u64,
    #[serde(default)]
    t: u64,
}

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn nanos_since_base() -> u64 {
    u64::try_from(base().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The no-op handler; in W4 it records how long after the enqueue call it started.
struct Noop {
    latencies: Option<Arc<Mutex<Vec<f64>>>>,
}

impl Job for Noop {
    const KIND: &'static str = "bench_noop";
    type Payload = Payload;
    async fn run(&self, _ctx: JobContext, p: Payload) -> Result<(), JobError> {
        if let Some(l) = &self.latencies {
            let ms = nanos_since_base().saturating_sub(p.t) as f64 / 1e6;
            l.lock().unwrap_or_else(PoisonError::into_inner).push(ms);
        }
        Ok(())
    }
}

/// What a user gets from `Worker::builder(..).concurrency(c)`: `c` handlers, `3c` jobs
/// prefetched, claims of up to `4c`.
pub(crate) fn worker_config(c: usize) -> WorkerConfig {
    WorkerConfig {
        concurrency: c,
        prefetch: 3 * c,
        fetch_batch: 4 * c,
        ..WorkerConfig::default()
    }
}

/// Runs the chosen workloads, each on a fresh store from `fresh`.
pub async fn run<S, F, Fut>(
    backend: &str,
    durability: &str,
    fresh: F,
    opts: &BenchOptions,
) -> anyhow::Result<BenchReport>
where
    S: Store,
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<S>>,
{
    if opts.n == 0 || opts.concurrency == 0 || opts.batch == 0 || opts.lat_n == 0 {
        bail!("--n, --c, --batch and --lat-n must be positive");
    }
    let wants = |w: &str| opts.workloads.iter().any(|x| x == w);
    let mut report = BenchReport {
        backend: backend.into(),
        n: opts.n,
        concurrency: opts.concurrency,
        durability: durability.into(),
        w1: None,
        w2: None,
        w3: None,
        w4: None,
    };
    let payload = |i: usize| Payload { i: i as u64, t: 0 };
    if wants("w1") {
        let queue = Queue::new(fresh().await?);
        let start = Instant::now();
        for i in 0..opts.n {
            queue
                .enqueue::<Noop>(&payload(i), JobOptions::default())
                .await?;
        }
        report.w1 = Some(throughput(opts.n, start.elapsed()));
    }
    if wants("w2") {
        let queue = Queue::new(fresh().await?);
        let start = Instant::now();
        bulk(&queue, opts).await?;
        report.w2 = Some(throughput(opts.n, start.elapsed()));
    }
    if wants("w3") {
        let queue = Queue::new(fresh().await?);
        bulk(&queue, opts).await?;
        let start = Instant::now();
        let worker = Worker::builder(&queue)
            .register(Noop { latencies: None })
            .config(worker_config(opts.concurrency))
            .build()?
            .start()
            .await?;
        let n = opts.n as u64;
        while worker.counts().completed < n {
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        let secs = start.elapsed();
        worker.shutdown(Duration::from_secs(10)).await;
        let completed: u64 = queue
            .stats()
            .await?
            .iter()
            .map(|s| s.count(JobState::Completed))
            .sum();
        if completed != n {
            bail!("W3: the store holds {completed} completed jobs, expected {n}");
        }
        report.w3 = Some(throughput(opts.n, secs));
    }
    if wants("w4") {
        let queue = Queue::new(fresh().await?);
        let latencies = Arc::new(Mutex::new(Vec::with_capacity(opts.lat_n)));
        let worker = Worker::builder(&queue)
            .register(Noop {
                latencies: Some(latencies.clone()),
            })
            .config(worker_config(opts.concurrency))
            .build()?
            .start()
            .await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        for i in 0..opts.lat_n {
            tick.tick().await;
            let p = Payload {
                i: i as u64,
                t: nanos_since_base(),
            };
            queue.enqueue::<Noop>(&p, JobOptions::default()).await?;
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while latencies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
            < opts.lat_n
        {
            if Instant::now() > deadline {
                bail!("W4: not every job started within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        worker.shutdown(Duration::from_secs(10)).await;
        let mut l = latencies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        l.sort_by(f64::total_cmp);
        let pct = |q: f64| l[((l.len() as f64 - 1.0) * q).round() as usize];
        report.w4 = Some(Latency {
            p50_ms: pct(0.5),
            p99_ms: pct(0.99),
            max_ms: pct(1.0),
        });
    }
    Ok(report)
}

async fn bulk<S: Store>(queue: &Queue<S>, opts: &BenchOptions) -> anyhow::Result<()> {
    let mut i = 0;
    while i < opts.n {
        let end = (i + opts.batch).min(opts.n);
        let batch: Vec<Payload> = (i..end).map(|i| Payload { i: i as u64, t: 0 }).collect();
        queue
            .enqueue_many::<Noop>(&batch, JobOptions::default())
            .await?;
        i = end;
    }
    Ok(())
}

fn throughput(n: usize, d: Duration) -> Throughput {
    Throughput {
        jobs_per_s: n as f64 / d.as_secs_f64(),
        secs: d.as_secs_f64(),
    }
}

/// A fresh SQLite file for each workload, in `dir`. The previous workload's file (whose
/// store is gone by then) is removed, so a run leaves only its last file behind to inspect,
/// not one per workload (a W3 file of 100,000 jobs is ~35 MB).
pub async fn fresh_sqlite(dir: &std::path::Path) -> anyhow::Result<windlass_sqlite::SqliteStore> {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::fs::create_dir_all(dir)?;
    let file = |n: usize| dir.join(format!("bench-{}-{n}.db", std::process::id()));
    let path = file(n);
    let stale = n.checked_sub(1).map(file).into_iter().chain([path.clone()]);
    for p in stale {
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", p.display()));
        }
    }
    windlass_sqlite::SqliteStore::open(&path)
        .await
        .with_context(|| format!("opening {}", path.display()))
}

/// A fresh PostgreSQL schema `windlass_bench` for each workload.
pub async fn fresh_postgres(url: &str) -> anyhow::Result<windlass_postgres::PostgresStore> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .context("connecting to PostgreSQL")?;
    let driver = tokio::spawn(conn);
    client
        .batch_execute(
            "SET client_min_messages = warning; DROP SCHEMA IF EXISTS windlass_bench CASCADE",
        )
        .await?;
    drop(client);
    let _ = driver.await;
    Ok(windlass_postgres::PostgresStore::builder(url)
        .schema("windlass_bench")
        .pool_size(16)
        .open()
        .await?)
}

/// The table printed without `--json`.
pub fn table(r: &BenchReport) -> String {
    let t = |x: &Option<Throughput>| {
        x.as_ref()
            .map_or("-".into(), |t| format!("{:.0}", t.jobs_per_s))
    };
    let l =
        r.w4.as_ref()
            .map_or("-".into(), |l| format!("{:.2} / {:.2}", l.p50_ms, l.p99_ms));
    format!(
        "backend {} (n = {}, c = {}); {}\n  W1 enqueue 1-by-1   {:>10} jobs/s\n  W2 bulk enqueue     {:>10} jobs/s\n  W3 process          {:>10} jobs/s\n  W4 latency p50/p99  {:>10} ms\n",
        r.backend,
        r.n,
        r.concurrency,
        r.durability,
        t(&r.w1),
        t(&r.w2),
        t(&r.w3),
        l
    )
}
