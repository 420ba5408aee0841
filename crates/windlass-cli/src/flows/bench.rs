//! `windlass bench flow`: the workflow workloads of `../shared/peer-bench` ("Workflows"),
//! run on Windlass's own workflow layer so the figures sit beside DBOS's.
//!
//! The workflow: three durable no-op steps, each returning a small integer; the workflow
//! returns their sum (checked).
//!
//! - WF1: `n` workflows started directly ([`Flows::run`]: executed in the starter, no queue)
//!   from `c` concurrent starters, each starting its next one when its previous one has
//!   returned: workflows/s.
//! - WF2: the same `n` workflows started onto the flows queue first (not timed); then a worker
//!   with concurrency `c` starts; the clock stops when the store has every run's job
//!   completed: workflows/s.
//! - WF3: one direct start at a time (each awaited, then a 5 ms pause), `lat_n` samples after
//!   5 unsampled warm-ups: start call → the first step's body begins, p50 / p99 ms.
//!
//! Every workload starts on an empty store: a new SQLite file, or the PostgreSQL schema
//! dropped and re-created.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::Serialize;
use windlass_flow::{FlowContext, FlowError, FlowStore, Flows, Workflow};
use windlass_queue::{JobState, Queue, Worker};

use crate::queue::bench::worker_config;

/// The workload sizes.
#[derive(Debug, Clone)]
pub struct FlowBenchOptions {
    /// Workflows in WF1 and WF2.
    pub n: usize,
    /// Starters in flight (WF1), worker concurrency (WF2).
    pub concurrency: usize,
    /// Samples in WF3.
    pub lat_n: usize,
    /// Which workloads (`wf1`..`wf3`).
    pub workloads: Vec<String>,
}

/// Workflows per second.
#[derive(Debug, Clone, Serialize)]
pub struct FlowThroughput {
    /// Workflows per second.
    pub workflows_per_s: f64,
    /// Steps per second (3 per workflow).
    pub steps_per_s: f64,
    /// Wall time of the timed part.
    pub secs: f64,
}

/// Start-to-first-step latency.
#[derive(Debug, Clone, Serialize)]
pub struct FlowLatency {
    /// Median, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Maximum, ms.
    pub max_ms: f64,
}

/// One run of the workloads on one backend (the `--json` output).
#[derive(Debug, Clone, Serialize)]
pub struct FlowBenchReport {
    /// `sqlite` or `postgres`.
    pub backend: String,
    /// Workflows in WF1/WF2.
    pub n: usize,
    /// Starters in flight / worker concurrency.
    pub concurrency: usize,
    /// When a step's result is durable with these settings.
    pub durability: String,
    /// WF1.
    pub wf1: Option<FlowThroughput>,
    /// WF2.
    pub wf2: Option<FlowThroughput>,
    /// WF3.
    pub wf3: Option<FlowLatency>,
}

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn nanos_since_base() -> u64 {
    u64::try_from(base().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Three durable no-op steps; the first records when its body began (for WF3).
struct ThreeSteps {
    first_step_at: Arc<AtomicU64>,
}

impl Workflow for ThreeSteps {
    const KIND: &'static str = "bench_three_steps";
    type Input = u64;
    type Output = u64;

    async fn run(&self, ctx: FlowContext, i: u64) -> Result<u64, FlowError> {
        let at = Arc::clone(&self.first_step_at);
        let a: u64 = ctx
            .step("one", || {
                let at = Arc::clone(&at);
                async move {
                    at.store(nanos_since_base(), Ordering::Release);
                    Ok::<_, String>(1)
                }
            })
            .await?;
        let b: u64 = ctx.step("two", || async { Ok::<_, String>(2) }).await?;
        let c: u64 = ctx
            .step("three", || async move { Ok::<_, String>(i % 7) })
            .await?;
        Ok(a + b + c)
    }
}

fn flows_on<S: FlowStore>(
    queue: &Queue<S>,
    first_step_at: &Arc<AtomicU64>,
) -> anyhow::Result<Flows<S>> {
    Ok(Flows::builder(queue)
        .register(ThreeSteps {
            first_step_at: Arc::clone(first_step_at),
        })
        .build()?)
}

fn throughput(n: usize, d: Duration) -> FlowThroughput {
    let secs = d.as_secs_f64();
    FlowThroughput {
        workflows_per_s: n as f64 / secs,
        steps_per_s: 3.0 * n as f64 / secs,
        secs,
    }
}

/// Runs the chosen workloads, each on a fresh store from `fresh`.
pub async fn run<S, F, Fut>(
    backend: &str,
    durability: &str,
    fresh: F,
    opts: &FlowBenchOptions,
) -> anyhow::Result<FlowBenchReport>
where
    S: FlowStore,
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<S>>,
{
    if opts.n == 0 || opts.concurrency == 0 || opts.lat_n == 0 {
        bail!("--n, --c and --lat-n must be positive");
    }
    if let Some(w) = opts
        .workloads
        .iter()
        .find(|w| !["wf1", "wf2", "wf3"].contains(&w.as_str()))
    {
        bail!("unknown workload `{w}`: use wf1, wf2 or wf3");
    }
    let wants = |w: &str| opts.workloads.iter().any(|x| x == w);
    let mut report = FlowBenchReport {
        backend: backend.into(),
        n: opts.n,
        concurrency: opts.concurrency,
        durability: durability.into(),
        wf1: None,
        wf2: None,
        wf3: None,
    };
    let stamp = Arc::new(AtomicU64::new(0));
    if wants("wf1") {
        let queue = Queue::new(fresh().await?);
        let flows = flows_on(&queue, &stamp)?;
        let next = Arc::new(AtomicU64::new(0));
        let n = opts.n as u64;
        let start = Instant::now();
        let mut starters = tokio::task::JoinSet::new();
        for _ in 0..opts.concurrency {
            let (flows, next) = (flows.clone(), Arc::clone(&next));
            starters.spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return Ok::<_, anyhow::Error>(());
                    }
                    let sum = flows
                        .run::<ThreeSteps>(format!("wf1-{i}"), &i)
                        .await
                        .with_context(|| format!("WF1 workflow {i}"))?;
                    if sum != 3 + i % 7 {
                        bail!("WF1 workflow {i} returned {sum}, expected {}", 3 + i % 7);
                    }
                }
            });
        }
        while let Some(done) = starters.join_next().await {
            done??;
        }
        report.wf1 = Some(throughput(opts.n, start.elapsed()));
    }
    if wants("wf2") {
        let queue = Queue::new(fresh().await?);
        let flows = flows_on(&queue, &stamp)?;
        let next = Arc::new(AtomicU64::new(0));
        let n = opts.n as u64;
        let mut starters = tokio::task::JoinSet::new();
        for _ in 0..opts.concurrency {
            let (flows, next) = (flows.clone(), Arc::clone(&next));
            starters.spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return Ok::<_, anyhow::Error>(());
                    }
                    flows.start::<ThreeSteps>(format!("wf2-{i}"), &i).await?;
                }
            });
        }
        while let Some(done) = starters.join_next().await {
            done??;
        }
        let start = Instant::now();
        let mut config = worker_config(opts.concurrency);
        config.queues = vec![flows.queue_name().to_owned()];
        let worker = Worker::builder(&queue)
            .register(flows.driver())
            .config(config)
            .build()?
            .start()
            .await?;
        let completed = || async {
            Ok::<u64, anyhow::Error>(
                queue
                    .stats()
                    .await?
                    .iter()
                    .map(|s| s.count(JobState::Completed))
                    .sum(),
            )
        };
        // The worker's own count first (no database load while it works), then the store's.
        while worker.counts().completed < n {
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        while completed().await? < n {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let secs = start.elapsed();
        worker.shutdown(Duration::from_secs(10)).await;
        report.wf2 = Some(throughput(opts.n, secs));
    }
    if wants("wf3") {
        let queue = Queue::new(fresh().await?);
        let flows = flows_on(&queue, &stamp)?;
        let mut samples = Vec::with_capacity(opts.lat_n);
        for i in 0..(5 + opts.lat_n) {
            let t0 = nanos_since_base();
            let i = i as u64;
            flows
                .run::<ThreeSteps>(format!("wf3-{i}"), &i)
                .await
                .with_context(|| format!("WF3 workflow {i}"))?;
            let began = stamp.load(Ordering::Acquire);
            if i >= 5 {
                samples.push(began.saturating_sub(t0) as f64 / 1e6);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        samples.sort_by(f64::total_cmp);
        let pct = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
        report.wf3 = Some(FlowLatency {
            p50_ms: pct(0.5),
            p99_ms: pct(0.99),
            max_ms: pct(1.0),
        });
    }
    Ok(report)
}

/// The table printed without `--json`.
pub fn table(r: &FlowBenchReport) -> String {
    let t = |x: &Option<FlowThroughput>| {
        x.as_ref()
            .map_or("-".into(), |t| format!("{:.0}", t.workflows_per_s))
    };
    let l = r
        .wf3
        .as_ref()
        .map_or("-".into(), |l| format!("{:.2} / {:.2}", l.p50_ms, l.p99_ms));
    format!(
        "backend {} (n = {}, c = {}); {}\n  WF1 direct start        {:>10} workflows/s\n  WF2 queued, by workers  {:>10} workflows/s\n  WF3 start → step p50/p99 {:>9} ms\n",
        r.backend,
        r.n,
        r.concurrency,
        r.durability,
        t(&r.wf1),
        t(&r.wf2),
        l
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_workloads_run_and_report_on_a_small_sqlite_store() {
        let dir = std::env::temp_dir().join(format!("windlass-flow-bench-{}", std::process::id()));
        let opts = FlowBenchOptions {
            n: 40,
            concurrency: 4,
            lat_n: 3,
            workloads: vec!["wf1".into(), "wf2".into(), "wf3".into()],
        };
        let report = run(
            "sqlite",
            "test",
            || crate::queue::bench::fresh_sqlite(&dir),
            &opts,
        )
        .await
        .expect("the workloads run");
        let wf1 = report.wf1.expect("wf1");
        let wf2 = report.wf2.expect("wf2");
        let wf3 = report.wf3.expect("wf3");
        assert!(
            wf1.workflows_per_s > 0.0 && (wf1.steps_per_s / wf1.workflows_per_s - 3.0).abs() < 1e-9
        );
        assert!(wf2.workflows_per_s > 0.0);
        assert!(wf3.p50_ms > 0.0 && wf3.p50_ms <= wf3.p99_ms && wf3.p99_ms <= wf3.max_ms);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn an_unknown_workload_is_named() {
        let opts = FlowBenchOptions {
            n: 1,
            concurrency: 1,
            lat_n: 1,
            workloads: vec!["wf9".into()],
        };
        let err = run(
            "sqlite",
            "test",
            || async {
                anyhow::bail!("no store needed") as anyhow::Result<windlass_sqlite::SqliteStore>
            },
            &opts,
        )
        .await
        .expect_err("refused");
        assert!(err.to_string().contains("wf9"), "{err}");
    }
}
