//! The async golden signals: in-flight work, runtime lag, silent errors, tail latency and
//! stuck operations — from one call.
//!
//! Async services fail in ways CPU and request graphs do not show: an `await` that never
//! returns, a runtime thread blocked by CPU work (every task on it waits), a detached task
//! dying quietly. Wrap an operation in [`instrument`] (one line) and turn on the
//! [`Monitor`] (one call), and [`snapshot`] — or any `metrics` exporter — shows:
//!
//! - **in-flight** operations per name (`windlass_op_in_flight{name}`);
//! - **runtime lag**: how late a periodic probe tick runs (`windlass_runtime_lag_seconds`),
//!   the symptom of blocked runtime threads;
//! - **silent errors**: failed detached tasks ([`spawn_detached`](crate::spawn_detached),
//!   supervisors), with the most recent ones;
//! - **tail latency** per operation: p50, p95, p99 over the last 1,024 completions
//!   (`windlass_op_duration_seconds{name}`);
//! - **stuck operations**: every instrumented operation older than a threshold, with its
//!   name, age, the line that created it and, if it marked its steps with [`stage`], the
//!   await it is parked on (`windlass_op_stuck`);
//! - **slow polls**: while a [`Monitor`] runs, an instrumented operation whose single poll
//!   held the thread longer than [`MonitorConfig::slow_poll`] is named, with its stage —
//!   the task that blocked the runtime, not only the lag it caused
//!   (`windlass_op_slow_polls_total{name}`).
//!
//! ```
//! use std::time::Duration;
//! use windlass_concurrency::signals::{self, Monitor, MonitorConfig, instrument};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let _monitor = Monitor::start(MonitorConfig::default()).unwrap();
//! let rows = instrument("db.query", async {
//!     tokio::time::sleep(Duration::from_millis(5)).await;
//!     3
//! })
//! .await;
//! assert_eq!(rows, 3);
//! let s = signals::snapshot();
//! assert!(s.latency.iter().any(|op| op.name == "db.query" && op.count >= 1));
//! # }
//! ```

use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::panic::Location;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use windlass_policy::ConfigError;

use crate::detached::{DetachedFailure, detached_failures, recent_failures};

const SAMPLES: usize = 1024;
const SLOW_POLLS: usize = 64;

struct LiveOp {
    name: &'static str,
    site: &'static Location<'static>,
    started: Instant,
    stage: Option<Stage>,
}

/// A step an instrumented operation said it entered ([`stage`]): what it is waiting for,
/// and the line that said so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stage {
    /// The label given to [`stage`].
    pub label: &'static str,
    /// Where [`stage`] was called.
    pub site: &'static Location<'static>,
}

/// One poll of an instrumented operation that held its thread too long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlowPoll {
    /// The operation's name.
    pub name: &'static str,
    /// Where it was created.
    pub site: &'static Location<'static>,
    /// The step it was in when the poll ended (set by [`stage`] before or during that poll),
    /// if it marks them.
    pub stage: Option<Stage>,
    /// How long the poll held the thread.
    pub took: Duration,
}

thread_local! {
    /// The instrumented operation being polled on this thread, innermost first.
    static POLLING: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Marks the step the current instrumented operation is entering (`"awaiting inventory"`),
/// so that if it gets stuck, or blocks the runtime, the report names the await and its line
/// rather than only the operation. Call it right before the `.await` it names. Outside an
/// instrumented operation it does nothing. Costs one uncontended lock.
#[track_caller]
pub fn stage(label: &'static str) {
    if let Some(id) = POLLING.with(Cell::get)
        && let Some(op) = lock(&registry().live).get_mut(&id)
    {
        op.stage = Some(Stage {
            label,
            site: Location::caller(),
        });
    }
}

/// Restores the outer operation as "being polled" when a poll ends, even by a panic.
struct Polling(Option<u64>);

impl Drop for Polling {
    fn drop(&mut self) {
        POLLING.with(|c| c.set(self.0));
    }
}

struct OpStats {
    in_flight: u64,
    completed: u64,
    cancelled: u64,
    slow_polls: u64,
    samples: VecDeque<Duration>,
    // Registered once per name: building a labelled key on every call would allocate.
    m_in_flight: metrics::Gauge,
    m_duration: metrics::Histogram,
}

impl OpStats {
    fn new(name: &'static str) -> Self {
        OpStats {
            in_flight: 0,
            completed: 0,
            cancelled: 0,
            slow_polls: 0,
            samples: VecDeque::new(),
            m_in_flight: metrics::gauge!("windlass_op_in_flight", "name" => name),
            m_duration: metrics::histogram!("windlass_op_duration_seconds", "name" => name),
        }
    }
}

#[derive(Default)]
struct Registry {
    live: Mutex<HashMap<u64, LiveOp>>,
    ops: Mutex<HashMap<&'static str, OpStats>>,
    lag: Mutex<LagStats>,
    stuck_after: AtomicU64,
    /// Polls longer than this many nanoseconds are slow; 0 while no monitor runs.
    slow_poll: AtomicU64,
    slow_polls: Mutex<VecDeque<SlowPoll>>,
}

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(|| {
        let r = Registry::default();
        r.stuck_after.store(
            MonitorConfig::default().stuck_after.as_nanos() as u64,
            Ordering::Relaxed,
        );
        r
    })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pin_project_lite::pin_project! {
    /// An operation being watched; see [`instrument`].
    #[must_use = "futures do nothing unless awaited"]
    pub struct Instrumented<F> {
        #[pin]
        inner: F,
        name: &'static str,
        site: &'static Location<'static>,
        id: Option<u64>,
        started: Option<Instant>,
    }

    impl<F> PinnedDrop for Instrumented<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(id) = this.id.take() {
                finish(id, this.name, None);
            } else if this.started.is_none() {
                // Dropped before its first poll: it never ran, but it was an operation that
                // did not complete, so it counts as cancelled.
                let name = *this.name;
                let mut ops = lock(&registry().ops);
                ops.entry(name).or_insert_with(|| OpStats::new(name)).cancelled += 1;
            }
        }
    }
}

/// Watches `future` as operation `name`: counted in flight while it runs, its latency
/// recorded when it completes, listed as stuck if it runs too long. The place this is
/// called is recorded as the operation's origin. A future dropped before completion is
/// counted as cancelled — also one dropped before it was ever polled (it is never counted
/// in flight: it never ran), so every operation is accounted for.
#[track_caller]
pub fn instrument<F: Future>(name: &'static str, future: F) -> Instrumented<F> {
    Instrumented {
        inner: future,
        name,
        site: Location::caller(),
        id: None,
        started: None,
    }
}

fn slow_poll(
    id: Option<u64>,
    name: &'static str,
    site: &'static Location<'static>,
    took: Duration,
) {
    let r = registry();
    let stage = id.and_then(|id| lock(&r.live).get(&id).and_then(|op| op.stage));
    tracing::warn!(op = name, site = %site, stage = ?stage.map(|s| s.label), ?took, "a poll blocked its thread");
    metrics::counter!("windlass_op_slow_polls_total", "name" => name).increment(1);
    lock(&r.ops)
        .entry(name)
        .or_insert_with(|| OpStats::new(name))
        .slow_polls += 1;
    let mut ring = lock(&r.slow_polls);
    if ring.len() == SLOW_POLLS {
        ring.pop_front();
    }
    ring.push_back(SlowPoll {
        name,
        site,
        stage,
        took,
    });
}

fn finish(id: u64, name: &'static str, took: Option<Duration>) {
    let r = registry();
    lock(&r.live).remove(&id);
    let mut ops = lock(&r.ops);
    let stats = ops.entry(name).or_insert_with(|| OpStats::new(name));
    stats.in_flight = stats.in_flight.saturating_sub(1);
    stats.m_in_flight.decrement(1.0);
    match took {
        Some(d) => {
            stats.completed += 1;
            if stats.samples.len() == SAMPLES {
                stats.samples.pop_front();
            }
            stats.samples.push_back(d);
            stats.m_duration.record(d.as_secs_f64());
        }
        None => stats.cancelled += 1,
    }
}

impl<F: Future> Future for Instrumented<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        if this.id.is_none() && this.started.is_none() {
            // Starts counting at the first poll: a future built but never awaited is not
            // in flight.
            let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
            let now = Instant::now();
            *this.id = Some(id);
            *this.started = Some(now);
            let r = registry();
            lock(&r.live).insert(
                id,
                LiveOp {
                    name: this.name,
                    site: this.site,
                    started: now,
                    stage: None,
                },
            );
            let name = *this.name;
            let mut ops = lock(&r.ops);
            let stats = ops.entry(name).or_insert_with(|| OpStats::new(name));
            stats.in_flight += 1;
            stats.m_in_flight.increment(1.0);
        }
        let r = registry();
        let slow_after = r.slow_poll.load(Ordering::Relaxed);
        // Blocking is a real-time matter: measured on the wall clock, not tokio's.
        let began = (slow_after > 0).then(std::time::Instant::now);
        let polled = {
            let _outer = Polling(POLLING.with(|c| c.replace(*this.id)));
            this.inner.poll(cx)
        };
        if let Some(began) = began {
            let took = began.elapsed();
            if took >= Duration::from_nanos(slow_after) {
                slow_poll(*this.id, this.name, this.site, took);
            }
        }
        let out = std::task::ready!(polled);
        if let (Some(id), Some(started)) = (this.id.take(), *this.started) {
            finish(id, this.name, Some(started.elapsed()));
        }
        Poll::Ready(out)
    }
}

/// Runtime scheduling lag, as measured by the monitor's probe.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LagStats {
    /// Probe ticks measured.
    pub ticks: u64,
    /// The latest tick's lag.
    pub last: Duration,
    /// The largest lag seen.
    pub max: Duration,
}

/// One operation name's numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct OpLatency {
    /// The operation's name.
    pub name: &'static str,
    /// Running now.
    pub in_flight: u64,
    /// Completed since the process started.
    pub count: u64,
    /// Dropped before completing.
    pub cancelled: u64,
    /// Polls that held the thread longer than the monitor's `slow_poll`.
    pub slow_polls: u64,
    /// Median of the last 1,024 completions.
    pub p50: Duration,
    /// 95th percentile.
    pub p95: Duration,
    /// 99th percentile.
    pub p99: Duration,
}

/// An instrumented operation running longer than the stuck threshold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StuckOp {
    /// The operation's name.
    pub name: &'static str,
    /// How long it has been running.
    pub age: Duration,
    /// Where it was created.
    pub site: &'static Location<'static>,
    /// The step it last said it entered ([`stage`]): the await it is parked on.
    pub stage: Option<Stage>,
}

/// Every golden signal at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Signals {
    /// In-flight operations per name (names with none are omitted).
    pub in_flight: Vec<(&'static str, u64)>,
    /// Runtime lag (zero until a [`Monitor`] runs).
    pub lag: LagStats,
    /// Failed detached tasks since the process started.
    pub silent_errors: u64,
    /// The most recent of them.
    pub recent_silent_errors: Vec<DetachedFailure>,
    /// Latency per operation name, sorted by name.
    pub latency: Vec<OpLatency>,
    /// Operations older than the stuck threshold, oldest first.
    pub stuck: Vec<StuckOp>,
    /// The most recent slow polls (up to 64), oldest first: who blocked the runtime.
    pub slow_polls: Vec<SlowPoll>,
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Instrumented operations running for at least `older_than`, oldest first.
pub fn stuck_operations(older_than: Duration) -> Vec<StuckOp> {
    let now = Instant::now();
    let mut stuck: Vec<StuckOp> = lock(&registry().live)
        .values()
        .filter_map(|op| {
            let age = now.saturating_duration_since(op.started);
            (age >= older_than).then_some(StuckOp {
                name: op.name,
                age,
                site: op.site,
                stage: op.stage,
            })
        })
        .collect();
    stuck.sort_by_key(|op| std::cmp::Reverse(op.age));
    stuck
}

/// Reads every signal now (stuck operations by the monitor's threshold).
pub fn snapshot() -> Signals {
    let r = registry();
    let stuck = stuck_operations(Duration::from_nanos(r.stuck_after.load(Ordering::Relaxed)));
    let ops = lock(&r.ops);
    let mut latency: Vec<OpLatency> = ops
        .iter()
        .map(|(name, s)| {
            let mut sorted: Vec<Duration> = s.samples.iter().copied().collect();
            sorted.sort_unstable();
            OpLatency {
                name,
                in_flight: s.in_flight,
                count: s.completed,
                cancelled: s.cancelled,
                slow_polls: s.slow_polls,
                p50: percentile(&sorted, 0.50),
                p95: percentile(&sorted, 0.95),
                p99: percentile(&sorted, 0.99),
            }
        })
        .collect();
    latency.sort_by(|a, b| a.name.cmp(b.name));
    let in_flight = latency
        .iter()
        .filter(|l| l.in_flight > 0)
        .map(|l| (l.name, l.in_flight))
        .collect();
    Signals {
        in_flight,
        lag: *lock(&r.lag),
        silent_errors: detached_failures(),
        recent_silent_errors: recent_failures(),
        latency,
        stuck,
        slow_polls: lock(&r.slow_polls).iter().cloned().collect(),
    }
}

/// Settings for the [`Monitor`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MonitorConfig {
    /// How often the lag probe ticks (default 100 ms).
    pub probe_interval: Duration,
    /// An operation running this long is stuck (default 30 s).
    pub stuck_after: Duration,
    /// A single poll of an instrumented operation that holds its thread this long is
    /// reported as a slow poll (default 10 ms). Polls are timed only while a monitor runs.
    pub slow_poll: Duration,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            probe_interval: Duration::from_millis(100),
            stuck_after: Duration::from_secs(30),
            slow_poll: Duration::from_millis(10),
        }
    }
}

/// The running monitor: a probe task that measures runtime lag and publishes the stuck
/// count. Stops when dropped.
#[derive(Debug)]
pub struct Monitor {
    probe: JoinHandle<()>,
    /// The slow-poll threshold this monitor set, in nanoseconds.
    slow_poll: u64,
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.probe.abort();
        // Stop timing polls, unless another monitor has set its own threshold since.
        let _ = registry().slow_poll.compare_exchange(
            self.slow_poll,
            0,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
}

impl Monitor {
    /// Starts the monitor on the current tokio runtime.
    ///
    /// # Panics
    /// Outside a tokio runtime, like `tokio::spawn`.
    pub fn start(cfg: MonitorConfig) -> Result<Monitor, ConfigError> {
        let bad = |field, problem: &str| ConfigError::new("monitor", field, problem);
        if cfg.probe_interval.is_zero() {
            return Err(bad("probe_interval", "must be positive"));
        }
        if cfg.stuck_after.is_zero() {
            return Err(bad("stuck_after", "must be positive"));
        }
        if cfg.slow_poll.is_zero() {
            return Err(bad("slow_poll", "must be positive"));
        }
        let r = registry();
        r.stuck_after
            .store(cfg.stuck_after.as_nanos() as u64, Ordering::Relaxed);
        let slow_poll = u64::try_from(cfg.slow_poll.as_nanos()).unwrap_or(u64::MAX);
        r.slow_poll.store(slow_poll, Ordering::Relaxed);
        let probe = tokio::spawn(async move {
            let lag_hist = metrics::histogram!("windlass_runtime_lag_seconds");
            let stuck_gauge = metrics::gauge!("windlass_op_stuck");
            let mut due = windlass_policy::time::saturating_add(Instant::now(), cfg.probe_interval);
            loop {
                tokio::time::sleep_until(due).await;
                let lag = Instant::now().saturating_duration_since(due);
                lag_hist.record(lag.as_secs_f64());
                {
                    let mut l = lock(&r.lag);
                    l.ticks += 1;
                    l.last = lag;
                    l.max = l.max.max(lag);
                }
                let now = Instant::now();
                let stuck = lock(&r.live)
                    .values()
                    .filter(|op| now.saturating_duration_since(op.started) >= cfg.stuck_after)
                    .count();
                stuck_gauge.set(stuck as f64);
                due = windlass_policy::time::saturating_add(Instant::now(), cfg.probe_interval);
            }
        });
        Ok(Monitor { probe, slow_poll })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use windlass_test_support::ms;

    fn op<'a>(s: &'a Signals, name: &str) -> Option<&'a OpLatency> {
        s.latency.iter().find(|l| l.name == name)
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_and_latency_percentiles() {
        let slow = tokio::spawn(instrument("t.inflight", tokio::time::sleep(ms(1000))));
        tokio::time::sleep(ms(1)).await;
        assert!(snapshot().in_flight.contains(&("t.inflight", 1)));
        slow.await.unwrap();
        assert!(!snapshot().in_flight.iter().any(|(n, _)| *n == "t.inflight"));
        for i in 1..=100u64 {
            instrument("t.lat", tokio::time::sleep(ms(i))).await;
        }
        let s = snapshot();
        let l = op(&s, "t.lat").unwrap();
        assert_eq!(l.count, 100);
        assert_eq!((l.p50, l.p95, l.p99), (ms(51), ms(95), ms(99)));
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_operations_leave_and_are_counted() {
        let fut = instrument("t.cancel", std::future::pending::<()>());
        assert!(tokio::time::timeout(ms(5), fut).await.is_err());
        let s = snapshot();
        let l = op(&s, "t.cancel").unwrap();
        assert_eq!((l.in_flight, l.cancelled, l.count), (0, 1, 0));
    }

    /// Regression: a future dropped before its first poll was never counted anywhere.
    #[tokio::test(start_paused = true)]
    async fn dropped_before_the_first_poll_counts_as_cancelled() {
        drop(instrument("t.never-polled", async { 1 }));
        let s = snapshot();
        let l = op(&s, "t.never-polled").expect("the operation is accounted for");
        assert_eq!((l.in_flight, l.cancelled, l.count), (0, 1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn stuck_operations_are_listed_with_their_origin() {
        let hung = tokio::spawn(instrument("t.stuck", std::future::pending::<()>()));
        tokio::time::sleep(Duration::from_secs(12)).await;
        let all = stuck_operations(Duration::from_secs(10));
        let stuck = all.iter().find(|o| o.name == "t.stuck").unwrap();
        assert!(stuck.age >= Duration::from_secs(11), "{:?}", stuck.age);
        assert!(stuck.site.file().ends_with("signals.rs"));
        assert!(
            stuck_operations(Duration::from_secs(13))
                .iter()
                .all(|o| o.name != "t.stuck")
        );
        hung.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_operation_names_the_await_it_is_parked_on() {
        let hung = tokio::spawn(instrument("t.staged", async {
            stage("loading the cart");
            tokio::task::yield_now().await;
            stage("awaiting inventory");
            std::future::pending::<()>().await;
        }));
        tokio::time::sleep(ms(50)).await;
        let stuck = stuck_operations(ms(10));
        let op = stuck.iter().find(|o| o.name == "t.staged").unwrap();
        let parked = op.stage.unwrap();
        assert_eq!(
            parked.label, "awaiting inventory",
            "the last step, not the first"
        );
        assert_eq!(parked.site.file(), file!());
        hung.abort();
        // Outside an instrumented operation, `stage` changes nothing (and does not panic).
        stage("nowhere");
    }

    #[tokio::test(start_paused = true)]
    async fn lag_probe_sees_a_late_tick() {
        let _m = Monitor::start(MonitorConfig {
            probe_interval: ms(100),
            ..MonitorConfig::default()
        })
        .unwrap();
        tokio::task::yield_now().await; // the probe is now sleeping until t = 100 ms
        // The runtime "stalls": the clock jumps 150 ms before the probe can run.
        tokio::time::advance(ms(150)).await;
        tokio::task::yield_now().await;
        let lag = snapshot().lag;
        assert!(lag.ticks >= 1);
        assert!(lag.max >= ms(50), "lag {:?}", lag.max);
    }

    #[test]
    fn invalid_config_rejected() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let _g = rt.enter();
        let e = Monitor::start(MonitorConfig {
            probe_interval: Duration::ZERO,
            ..MonitorConfig::default()
        })
        .unwrap_err();
        assert_eq!(e.field(), "probe_interval");
    }
}
