//! Crash tests with real processes: worker processes killed with SIGKILL (and frozen with
//! SIGSTOP, to make zombies) at random points while jobs run; afterwards every job must be in
//! a terminal state, no side effect may have happened twice except where a lease truly
//! expired, attempts must add up, and every zombie's late completion must have been refused.
//!
//! A backend's test re-runs its own test binary as the worker process: [`child_main`] runs a
//! worker when the environment names one (and returns at once otherwise), [`drive`] spawns,
//! kills and freezes children, and [`verify`] checks the store and the side-effect log.
#![allow(clippy::unwrap_used, missing_docs)] // test code: a failed step is a failed case

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::{
    Job, JobContext, JobError, JobFilter, JobOptions, JobState, Queue, Store, Worker, WorkerConfig,
};

/// Set in a child's environment: the side-effect log it appends to.
pub const EFFECTS_ENV: &str = "WINDLASS_CRASH_EFFECTS";

#[derive(Serialize, Deserialize)]
pub struct Probe {
    pub n: u32,
}

/// Sleeps a little, then records its side effect: one line `job attempt worker-pid`.
pub struct CrashProbe {
    effects: PathBuf,
}

impl Job for CrashProbe {
    const KIND: &'static str = "crash_probe";
    type Payload = Probe;
    async fn run(&self, ctx: JobContext, _p: Probe) -> Result<(), JobError> {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..40))).await;
        let line = format!("{} {} {}\n", ctx.id().0, ctx.attempt(), std::process::id());
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.effects)
            .map_err(|e| JobError::failed(e.to_string()))?;
        // One write of a short line to an O_APPEND file: lines never interleave.
        f.write_all(line.as_bytes())
            .map_err(|e| JobError::failed(e.to_string()))?;
        Ok(())
    }
}

/// The worker settings of a crash child: short leases so killed workers' jobs come back fast.
pub fn child_config() -> WorkerConfig {
    WorkerConfig {
        concurrency: 4,
        prefetch: 4,
        fetch_batch: 8,
        lease: Duration::from_millis(800),
        heartbeat: Duration::from_millis(150),
        poll: Duration::from_millis(50),
        rescue_every: Duration::from_millis(200),
        quarantine_after: 1_000,
        cancel_grace: Duration::from_millis(100),
        ..WorkerConfig::default()
    }
}

/// In a child (its environment names a side-effect log): runs a worker on `store` until the
/// process is killed (or its parent, the test, is gone). Elsewhere: returns at once.
///
/// Twice a second it writes how many late completions the store has refused it (a thawed
/// zombie's) to `<effects>.fenced.<pid>`, so the count survives the SIGKILL that ends it.
pub async fn child_main<S: Store>(store: impl std::future::Future<Output = S>) {
    let Ok(effects) = std::env::var(EFFECTS_ENV) else {
        return;
    };
    let parent = std::os::unix::process::parent_id();
    let queue = Queue::new(store.await);
    let worker = Worker::builder(&queue)
        .register(CrashProbe {
            effects: effects.clone().into(),
        })
        .config(child_config())
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let fenced_file = format!("{effects}.fenced.{}", std::process::id());
    let mut reported = 0;
    // An orphan (the test died) is re-parented: stop then, rather than run forever.
    while std::os::unix::process::parent_id() == parent {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let fenced = worker.counts().fenced;
        if fenced != reported {
            // Write then rename: a kill mid-write never leaves a torn count.
            let tmp = format!("{fenced_file}.tmp");
            std::fs::write(&tmp, format!("{fenced}\n")).unwrap();
            std::fs::rename(&tmp, &fenced_file).unwrap();
            reported = fenced;
        }
    }
    worker.shutdown(Duration::from_secs(1)).await;
}

/// Every job in the store, read in pages of 1,000.
pub async fn all_jobs<S: Store>(store: &S) -> Vec<crate::JobRecord> {
    let mut jobs = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .list(JobFilter {
                after,
                limit: 1000,
                ..JobFilter::default()
            })
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        jobs.extend(page);
    }
    jobs
}

/// Whether all `jobs` jobs have reached a terminal state (false if the store fails).
///
/// Cheap while work remains: the store's per-state counts (a scan of the whole table, which
/// at hundreds of thousands of jobs holds SQLite's write lock for a while) are read only
/// once the side-effect log names every job, which must happen first.
pub async fn all_finished<S: Store>(store: &S, effects: &Path, jobs: u32) -> bool {
    if distinct_effects(effects) < jobs as usize {
        return false;
    }
    store.stats().await.is_ok_and(|s| {
        s.iter()
            .map(|q| JobState::LIVE.iter().map(|st| q.count(*st)).sum::<u64>())
            .sum::<u64>()
            == 0
    })
}

/// Keeps a long run's backlog from running dry: when fewer than `low` of the `enqueued` jobs
/// are still without a side effect, enqueues `more` and returns the new total.
pub async fn top_up<S: Store>(
    store: &S,
    effects: &Path,
    enqueued: u32,
    low: u32,
    more: u32,
) -> u32 {
    let started = u32::try_from(distinct_effects(effects)).unwrap_or(u32::MAX);
    if enqueued.saturating_sub(started) >= low {
        return enqueued;
    }
    enqueue_probes(store, more).await;
    enqueued + more
}

/// How many distinct jobs the side-effect log names.
fn distinct_effects(effects: &Path) -> usize {
    let log = std::fs::read_to_string(effects).unwrap_or_default();
    log.lines()
        .filter_map(|l| l.split(' ').next())
        .collect::<std::collections::HashSet<_>>()
        .len()
}

/// Starts this test binary again as a worker process running only the test `child_test`,
/// with `env` (which must name the side-effect log under [`EFFECTS_ENV`]).
pub fn spawn_child(child_test: &str, env: &[(&str, &std::ffi::OsStr)]) -> Child {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", child_test, "--nocapture", "--test-threads=1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

/// Enqueues `n` probe jobs (each with up to 1,000 attempts: the test is about crashes).
pub async fn enqueue_probes<S: Store>(store: &S, n: u32) {
    let options = JobOptions {
        retry: windlass_policy::RetrySchedule {
            max_attempts: 1_000,
            ..JobOptions::default().retry
        },
        ..JobOptions::default()
    };
    let jobs = (0..n)
        .map(|n| {
            crate::NewJob::new(
                CrashProbe::KIND,
                serde_json::json!({ "n": n }),
                options.clone(),
            )
            .unwrap()
        })
        .collect();
    store.enqueue(jobs).await.unwrap();
}

/// What the crash run did.
#[derive(Debug, Default, Clone)]
pub struct CrashReport {
    pub kills: u32,
    pub freezes: u32,
    pub jobs: usize,
    pub side_effects: usize,
    pub duplicate_side_effects: usize,
    pub lease_expiries: u64,
    /// Late completions of thawed zombies that the store refused.
    pub fenced: u64,
}

/// Runs until `kills` children have been SIGKILLed: keeps `workers` children alive
/// (spawning replacements), and each round waits a random 50-400 ms, then SIGKILLs a random
/// child — or, every fifth round, freezes one with SIGSTOP for longer than its lease and thaws
/// it (a zombie). Once a second it calls `every_second` (a long run tops up its backlog
/// there) and stops early if `done()` says every job has finished; after the last kill it lets
/// the survivors finish, for as long as the side-effect log keeps growing (a big backlog
/// drains slowly: rescued jobs rejoin the back of the queue).
pub fn drive(
    spawn: &dyn Fn() -> Child,
    workers: usize,
    kills: u32,
    effects: &Path,
    every_second: &dyn Fn(),
    done: &dyn Fn() -> bool,
) -> CrashReport {
    let mut report = CrashReport::default();
    let mut children: Vec<Child> = (0..workers).map(|_| spawn()).collect();
    let mut asked = Instant::now();
    let mut round = 0u32;
    while report.kills < kills {
        std::thread::sleep(Duration::from_millis(fastrand::u64(50..400)));
        if asked.elapsed() >= Duration::from_secs(1) {
            every_second();
            if done() {
                break;
            }
            asked = Instant::now();
        }
        let i = fastrand::usize(..children.len());
        let pid = children[i].id().to_string();
        if round % 5 == 4 {
            // A zombie: frozen past its lease, its jobs rescued and finished elsewhere, then
            // thawed: its late completions must be refused.
            signal("-STOP", &pid);
            std::thread::sleep(child_config().lease * 2);
            signal("-CONT", &pid);
            report.freezes += 1;
        } else {
            let _ = children[i].kill();
            let _ = children[i].wait();
            children[i] = spawn();
            report.kills += 1;
        }
        round += 1;
    }
    // Drain: give up only after 60 s without a new side effect.
    let mut last_len = 0;
    let mut progressed = Instant::now();
    while !done() && progressed.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(500));
        let len = std::fs::metadata(effects).map_or(0, |m| m.len());
        if len != last_len {
            last_len = len;
            progressed = Instant::now();
        }
    }
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    report
}

/// A whole crash run against `store`, blocking on `rt`: enqueues `jobs` probes, [`drive`]s
/// three children from `spawn` until `kills` SIGKILLs — keeping a backlog (`jobs` more
/// whenever fewer than a quarter are unstarted, so a long run never runs dry before its last
/// kill) — then [`verify`]s.
pub fn run<S: Store>(
    rt: &tokio::runtime::Runtime,
    store: &S,
    effects: &Path,
    spawn: &dyn Fn() -> Child,
    jobs: u32,
    kills: u32,
) -> CrashReport {
    rt.block_on(enqueue_probes(store, jobs));
    let enqueued = std::cell::Cell::new(jobs);
    let top_up = || {
        enqueued.set(rt.block_on(top_up(store, effects, enqueued.get(), jobs / 4, jobs)));
    };
    let done = || rt.block_on(all_finished(store, effects, enqueued.get()));
    let mut report = drive(spawn, 3, kills, effects, &top_up, &done);
    rt.block_on(verify(store, effects, &mut report));
    report
}

fn signal(sig: &str, pid: &str) {
    let _ = Command::new("kill").args([sig, pid]).status();
}

/// Checks the store and the side-effect log after a crash run, and fills in the report.
pub async fn verify<S: Store>(store: &S, effects: &Path, report: &mut CrashReport) {
    let jobs = all_jobs(store).await;
    let log = std::fs::read_to_string(effects).unwrap_or_default();
    let mut effects_per_job: HashMap<i64, usize> = HashMap::new();
    for line in log.lines() {
        let id: i64 = line.split(' ').next().unwrap().parse().unwrap();
        *effects_per_job.entry(id).or_default() += 1;
    }
    // Each child's last reported count of refused late completions.
    let prefix = format!("{}.fenced.", effects.file_name().unwrap().to_string_lossy());
    let dir = effects.parent().unwrap();
    report.fenced = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with(&prefix) && !name.ends_with(".tmp")
        })
        .map(|e| {
            std::fs::read_to_string(e.path())
                .unwrap()
                .trim()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    report.jobs = jobs.len();
    report.side_effects = effects_per_job.values().sum();
    for job in &jobs {
        assert_eq!(
            job.state,
            JobState::Completed,
            "job {} ended {:?}: {:?}",
            job.id,
            job.state,
            job.attempts
        );
        let effects = effects_per_job.get(&job.id.0).copied().unwrap_or(0);
        let expired = job
            .attempts
            .iter()
            .filter(|a| a.outcome == "lease_expired")
            .count();
        assert!(
            effects >= 1,
            "job {} completed without its side effect",
            job.id
        );
        assert!(
            effects <= 1 + expired,
            "job {}: {effects} side effects but only {expired} expired leases: it ran twice without cause",
            job.id
        );
        report.duplicate_side_effects += effects - 1;
        report.lease_expiries += u64::from(job.lease_expiries);
        // Attempts add up: one record per counted attempt, numbered 1..=attempt, the last
        // one the completion. (A released or snoozed attempt is recorded without counting.)
        let counted: Vec<u32> = job
            .attempts
            .iter()
            .filter(|a| a.outcome != "released" && a.outcome != "snoozed")
            .map(|a| a.attempt)
            .collect();
        assert_eq!(
            counted,
            (1..=job.attempt).collect::<Vec<_>>(),
            "job {}: {:?}",
            job.id,
            job.attempts
        );
        assert_eq!(
            job.attempts.last().map(|a| a.outcome.as_str()),
            Some("completed")
        );
        assert_eq!(u64::from(job.lease_expiries), expired as u64);
    }
}
