//! `windlass demo`: the unstable-network showdown.
//!
//! Starts a fault-injecting upstream on loopback and sends it the same workload three ways —
//! no controls, naive retries, and a Windlass pipeline — then prints what each achieved.

pub mod checkout;
pub mod client;
pub mod measure;
pub mod pipeline;
pub mod thumbnails;
pub mod upstream;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use client::{HttpClient, WindlassClient};
use upstream::{FaultProfile, Upstream};

/// Settings for one showdown.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Requests per mode.
    pub requests: usize,
    /// Concurrent callers.
    pub concurrency: usize,
    /// Request arrivals per second.
    pub rate: f64,
    /// How unreliable the upstream is.
    pub profile: FaultProfile,
    /// Seed for the faults and the workload.
    pub seed: u64,
    /// Show progress bars.
    pub progress: bool,
}

/// What one mode achieved.
#[derive(Debug, Clone, Serialize)]
pub struct ModeReport {
    /// `no-controls`, `naive-retry` or `windlass`.
    pub name: &'static str,
    /// Requests that succeeded, 0..1.
    pub success_rate: f64,
    /// Median latency of a request, in milliseconds (failures included).
    pub p50_ms: f64,
    /// 95th percentile latency.
    pub p95_ms: f64,
    /// 99th percentile latency.
    pub p99_ms: f64,
    /// Peak resident memory of the process during the mode, in bytes (0 without `/proc`).
    pub peak_memory_bytes: u64,
    /// Requests the upstream received.
    pub upstream_calls: u64,
    /// Retries the client made.
    pub retries: u64,
    /// Times the circuit breaker opened.
    pub breaker_openings: u64,
    /// Wall time of the mode, in milliseconds.
    pub wall_ms: f64,
}

/// The whole showdown's result.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// Requests per mode.
    pub requests: usize,
    /// Concurrent callers.
    pub concurrency: usize,
    /// Request arrivals per second.
    pub rate: f64,
    /// The fault profile.
    pub profile: FaultProfile,
    /// The seed.
    pub seed: u64,
    /// One entry per mode, in the order run.
    pub modes: Vec<ModeReport>,
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    NoControls,
    NaiveRetry,
    Windlass,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::NoControls => "no-controls",
            Mode::NaiveRetry => "naive-retry",
            Mode::Windlass => "windlass",
        }
    }
}

/// The workload: which key each request asks for. A skewed mix, so some keys repeat (as
/// hot items do) and coalescing and caching have something to do.
fn workload(n: usize, seed: u64) -> Vec<u64> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let distinct = (n as u64 / 2).max(1);
    (0..n)
        .map(|_| {
            if rng.f64() < 0.3 {
                rng.u64(0..(distinct / 50).max(1)) // a hot 2% of keys gets 30% of requests
            } else {
                rng.u64(0..distinct)
            }
        })
        .collect()
}

/// Runs the showdown.
pub async fn run(opts: &DemoOptions) -> anyhow::Result<DemoReport> {
    anyhow::ensure!(opts.requests >= 1, "--requests must be at least 1");
    anyhow::ensure!(opts.concurrency >= 1, "--concurrency must be at least 1");
    anyhow::ensure!(
        opts.rate.is_finite() && opts.rate > 0.0,
        "--rate must be a positive number of requests per second"
    );
    let upstream = Upstream::start(opts.profile, opts.seed).await?;
    let keys = Arc::new(workload(opts.requests, opts.seed));
    let bars = MultiProgress::with_draw_target(if opts.progress {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let style =
        ProgressStyle::with_template("{prefix:>12} [{bar:32}] {pos:>6}/{len} {msg} ({elapsed})")?
            .progress_chars("=> ");
    let mut modes = Vec::new();
    for mode in [Mode::NoControls, Mode::NaiveRetry, Mode::Windlass] {
        let bar = bars.add(ProgressBar::new(opts.requests as u64));
        bar.set_style(style.clone());
        bar.set_prefix(mode.name());
        let report = run_mode(mode, &upstream, opts, keys.clone(), bar.clone()).await?;
        bar.finish_with_message(format!(
            "ok {:.1}%  p95 {:.0} ms",
            report.success_rate * 100.0,
            report.p95_ms
        ));
        modes.push(report);
    }
    Ok(DemoReport {
        requests: opts.requests,
        concurrency: opts.concurrency,
        rate: opts.rate,
        profile: opts.profile,
        seed: opts.seed,
        modes,
    })
}

async fn run_mode(
    mode: Mode,
    upstream: &Upstream,
    opts: &DemoOptions,
    keys: Arc<Vec<u64>>,
    bar: ProgressBar,
) -> anyhow::Result<ModeReport> {
    // A fresh client per mode: no warm pool or cache carries over.
    let http = client::http_client();
    let windlass = Arc::new(WindlassClient::new(opts.concurrency, opts.seed)?);
    let naive_retries = Arc::new(AtomicU64::new(0));
    // The callers: a request that arrives while all are busy waits for one, and that wait
    // is part of its latency (as it is for a real service's users).
    let callers = Arc::new(Semaphore::new(opts.concurrency));
    let base = format!("http://{}/item/", upstream.addr);
    upstream.begin_phase().await;
    measure::reset_peak();
    let started = Instant::now();
    let spacing = Duration::from_secs_f64(1.0 / opts.rate);
    let mut requests = tokio::task::JoinSet::new();
    let mut latencies = Vec::with_capacity(opts.requests);
    let mut ok = 0u64;
    let mut record = |(latency, success): (Duration, bool)| {
        latencies.push(latency);
        ok += u64::from(success);
    };
    for (i, &key) in keys.iter().enumerate() {
        // Open loop: requests arrive on schedule whether or not the client keeps up.
        tokio::time::sleep_until(started + spacing.mul_f64(i as f64)).await;
        let uri: hyper::Uri = format!("{base}{key}").parse()?;
        let (http, windlass, naive_retries, callers, bar) = (
            http.clone(),
            windlass.clone(),
            naive_retries.clone(),
            callers.clone(),
            bar.clone(),
        );
        requests.spawn(async move {
            let arrived = Instant::now();
            let success = match callers.acquire_owned().await {
                Ok(_caller) => call(mode, &http, &windlass, &naive_retries, key, uri).await,
                Err(_) => false,
            };
            bar.inc(1);
            (arrived.elapsed(), success)
        });
        while let Some(done) = requests.try_join_next() {
            record(done?);
        }
    }
    while let Some(done) = requests.join_next().await {
        record(done?);
    }
    let wall = started.elapsed();
    latencies.sort_unstable();
    let pct = |q: f64| -> f64 {
        let idx = ((latencies.len() as f64 - 1.0) * q).round() as usize;
        latencies.get(idx).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    Ok(ModeReport {
        name: mode.name(),
        success_rate: ok as f64 / opts.requests as f64,
        p50_ms: pct(0.50),
        p95_ms: pct(0.95),
        p99_ms: pct(0.99),
        peak_memory_bytes: measure::peak_resident_bytes(),
        upstream_calls: upstream.calls(),
        retries: match mode {
            Mode::NoControls => 0,
            Mode::NaiveRetry => naive_retries.load(Ordering::Relaxed),
            Mode::Windlass => windlass.retries(),
        },
        breaker_openings: if mode == Mode::Windlass {
            windlass.breaker_openings()
        } else {
            0
        },
        wall_ms: wall.as_secs_f64() * 1000.0,
    })
}

async fn call(
    mode: Mode,
    http: &HttpClient,
    windlass: &WindlassClient,
    naive_retries: &AtomicU64,
    key: u64,
    uri: hyper::Uri,
) -> bool {
    match mode {
        Mode::NoControls => client::get(http, &uri).await.is_ok(),
        Mode::NaiveRetry => client::naive(http, &uri, naive_retries).await.is_ok(),
        Mode::Windlass => windlass.fetch(http, key, uri).await.is_ok(),
    }
}

/// Renders the human-readable table.
pub fn table(r: &DemoReport) -> String {
    let mut out = format!(
        "\nWindlass demo: {} requests x 3 modes arriving at {}/s, {} callers, profile {:?}, seed {}\n\n",
        r.requests, r.rate, r.concurrency, r.profile, r.seed
    );
    out.push_str(&format!(
        "{:<12} {:>8} {:>9} {:>9} {:>9} {:>10} {:>9} {:>9} {:>9} {:>8}\n",
        "mode",
        "success",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "peak MiB",
        "upstream",
        "calls/ok",
        "retries",
        "opened"
    ));
    for m in &r.modes {
        let ok = (m.success_rate * r.requests as f64).round().max(1.0);
        out.push_str(&format!(
            "{:<12} {:>7.1}% {:>9.1} {:>9.1} {:>9.1} {:>10.1} {:>9} {:>9.2} {:>9} {:>8}\n",
            m.name,
            m.success_rate * 100.0,
            m.p50_ms,
            m.p95_ms,
            m.p99_ms,
            m.peak_memory_bytes as f64 / (1024.0 * 1024.0),
            m.upstream_calls,
            m.upstream_calls as f64 / ok,
            m.retries,
            m.breaker_openings,
        ));
    }
    out
}

/// A fresh SQLite file for a demo's runs, in a directory of its own under the temporary
/// directory.
pub(crate) fn temp_db(name: &str) -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context as _;
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "windlass-{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{name}.db"));
    let _ = std::fs::remove_file(&path);
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_repeats_hot_keys_and_is_seeded() {
        let w = workload(2000, 1);
        assert_eq!(w, workload(2000, 1));
        let distinct: std::collections::HashSet<_> = w.iter().collect();
        assert!(
            distinct.len() < 1500,
            "duplicates exist: {}",
            distinct.len()
        );
        assert!(distinct.len() > 500);
    }

    #[test]
    fn table_has_a_row_per_mode_and_json_has_the_documented_fields() {
        let m = |name| ModeReport {
            name,
            success_rate: 0.5,
            p50_ms: 1.0,
            p95_ms: 2.0,
            p99_ms: 3.0,
            peak_memory_bytes: 1 << 20,
            upstream_calls: 10,
            retries: 2,
            breaker_openings: 1,
            wall_ms: 5.0,
        };
        let r = DemoReport {
            requests: 10,
            concurrency: 2,
            rate: 100.0,
            profile: FaultProfile::Calm,
            seed: 3,
            modes: vec![m("no-controls"), m("naive-retry"), m("windlass")],
        };
        let t = table(&r);
        assert_eq!(t.lines().filter(|l| l.contains(" 50.0%")).count(), 3);
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        for key in [
            "name",
            "success_rate",
            "p50_ms",
            "p95_ms",
            "p99_ms",
            "peak_memory_bytes",
            "upstream_calls",
            "retries",
            "breaker_openings",
        ] {
            assert!(v["modes"][0].get(key).is_some(), "missing {key}");
        }
    }

    #[test]
    fn http_failures_are_classified() {
        use client::{CallError, classify};
        use windlass::policy::ErrorClass;
        let after = Duration::from_secs(1);
        assert_eq!(
            classify(&CallError::Status(429, Some(after))),
            ErrorClass::RetryAfter(after)
        );
        assert_eq!(
            classify(&CallError::Status(503, None)),
            ErrorClass::Transient
        );
        assert_eq!(
            classify(&CallError::Status(404, None)),
            ErrorClass::Permanent
        );
        assert_eq!(
            classify(&CallError::Transport("reset".into())),
            ErrorClass::Transient
        );
    }
}
