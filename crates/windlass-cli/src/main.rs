//! The `windlass` binary: `windlass demo` runs the unstable-network showdown; `queues`, `jobs`,
//! `dlq` and `limits` operate a job store; `bench queue` runs the queue's standard workloads.

use std::io::IsTerminal;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use windlass_cli::demo;
use windlass_cli::flows::FlowAction;
use windlass_cli::flows::bench::{self as flow_bench, FlowBenchOptions};
use windlass_cli::queue::admin::Action;
use windlass_cli::queue::bench::{self, BenchOptions};
use windlass_cli::queue::limits;
use windlass_cli::queue::{AnyStore, Database};
use windlass_flow::RunFilter;
use windlass_queue::{JobFilter, JobId, JobState};

/// Runs an admin action against the store `db` names and prints its output.
fn admin(runtime: &tokio::runtime::Runtime, db: &DbArgs, action: Action) -> anyhow::Result<()> {
    let database = Database::parse(&db.database_url)?;
    let out = runtime.block_on(async {
        let store = AnyStore::open(&database, &db.schema).await?;
        windlass_cli::with_queue!(store, |q| windlass_cli::queue::admin::run(
            &q, action, db.json
        )
        .await)
    })?;
    print!("{out}");
    if db.json {
        println!();
    }
    Ok(())
}

#[derive(Parser)]
#[command(
    name = "windlass",
    version,
    about = "Reliable async workflows: policies, concurrency, durable jobs."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The unstable-network showdown: the same requests with no controls, naive retries,
    /// and a Windlass pipeline, against a local fault-injecting upstream.
    Demo {
        /// Another demo instead of the showdown.
        #[command(subcommand)]
        other: Option<OtherDemo>,
        /// Requests per mode.
        #[arg(long, default_value_t = 2000)]
        requests: usize,
        /// Concurrent callers.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Request arrivals per second (open loop: they arrive whether or not the client
        /// keeps up).
        #[arg(long, default_value_t = 500.0)]
        rate: f64,
        /// How unreliable the upstream is.
        #[arg(long, value_enum, default_value_t = demo::upstream::FaultProfile::Flaky)]
        profile: demo::upstream::FaultProfile,
        /// Seed for the faults and the workload.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Applies the job store's schema migrations, for workers that open it with migrations
    /// off.
    Migrate {
        #[command(flatten)]
        db: DbArgs,
    },
    /// Depth per state, throughput and lag of each job queue.
    Queues {
        #[command(flatten)]
        db: DbArgs,
    },
    /// List, show, cancel or retry jobs.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
        #[command(flatten)]
        db: DbArgs,
    },
    /// The dead-letter queue: list, replay, purge.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
        #[command(flatten)]
        db: DbArgs,
    },
    /// The limits a queue's claims obey in every process: show, set, clear.
    Limits {
        #[command(subcommand)]
        command: LimitsCommand,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Workflow runs: list, show one run's steps, export its graph.
    Flows {
        #[command(subcommand)]
        command: FlowsCommand,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

/// Where the jobs are: `sqlite:PATH` or `postgres://user@host:port/db`.
#[derive(clap::Args, Clone)]
struct DbArgs {
    /// The job store's URL (`sqlite:PATH` or `postgres://…`).
    #[arg(
        long,
        global = true,
        env = "DATABASE_URL",
        default_value = "sqlite:windlass.db"
    )]
    database_url: String,
    /// The PostgreSQL schema the jobs live in.
    #[arg(long, global = true, default_value = "windlass")]
    schema: String,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum JobsCommand {
    /// Jobs, filtered.
    List {
        /// Only this queue.
        #[arg(long)]
        queue: Option<String>,
        /// Only these states (comma-separated: scheduled, available, running, retryable,
        /// completed, cancelled, discarded).
        #[arg(long, value_delimiter = ',')]
        state: Vec<String>,
        /// Only this kind.
        #[arg(long)]
        kind: Option<String>,
        /// Only ids greater than this.
        #[arg(long)]
        after: Option<i64>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One job with every attempt.
    Show {
        /// The job's id.
        id: i64,
    },
    /// Cancel jobs (a running one is told through its cancellation token).
    Cancel {
        /// Job ids.
        #[arg(required = true)]
        ids: Vec<i64>,
    },
    /// Run finished jobs again with fresh attempts.
    Retry {
        /// Job ids.
        #[arg(required = true)]
        ids: Vec<i64>,
    },
}

#[derive(Subcommand)]
enum FlowsCommand {
    /// Runs, by id.
    List {
        /// Only runs of this workflow kind.
        #[arg(long)]
        kind: Option<String>,
        /// Only runs in these statuses (comma-separated: running, compensating, completed,
        /// failed, halted).
        #[arg(long)]
        status: Option<String>,
        /// Only ids after this one (paging).
        #[arg(long)]
        after: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One run: its input, status, result, and every step with its attempts, duration and
    /// error.
    Show {
        /// The run's id.
        id: String,
    },
    /// One run's recorded dependency graph.
    Graph {
        /// The run's id.
        id: String,
        /// Mermaid or Graphviz DOT.
        #[arg(long, value_enum, default_value_t = windlass_cli::flows::GraphFormat::Mermaid)]
        format: windlass_cli::flows::GraphFormat,
    },
    /// Cancel a run: its running steps stop, then the compensations of its completed steps
    /// run, latest first, and it ends failed.
    Cancel {
        /// The run's id.
        id: String,
        /// Why (kept in the run's error).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Resume a failed, halted or stranded run from its failed step: completed steps that
    /// were not compensated keep their results; the failed and compensated steps run again.
    Resume {
        /// The run's id.
        id: String,
        /// The flows queue whose workers will drive it, if its old job is gone (otherwise
        /// the old job's queue).
        #[arg(long, default_value = "flows")]
        queue: String,
    },
}

#[derive(Subcommand)]
enum LimitsCommand {
    /// A queue's limits.
    Show {
        /// The queue.
        queue: String,
    },
    /// Change the limits named (the others stay); `none` removes one.
    Set {
        /// The queue.
        queue: String,
        /// Jobs of the queue running at once, across all processes (or `none`).
        #[arg(long, value_parser = limits::parse_count)]
        max_running: Option<limits::Change<u32>>,
        /// Jobs of one limit key running at once (or `none`).
        #[arg(long, value_parser = limits::parse_count)]
        max_running_per_key: Option<limits::Change<u32>>,
        /// Job starts of the queue per window: `100/s`, `600/10m` (or `none`).
        #[arg(long, value_parser = limits::parse_rate)]
        rate: Option<limits::Change<windlass_queue::Rate>>,
        /// Job starts of one limit key per window (or `none`).
        #[arg(long, value_parser = limits::parse_rate)]
        rate_per_key: Option<limits::Change<windlass_queue::Rate>>,
    },
    /// Remove every limit of a queue.
    Clear {
        /// The queue.
        queue: String,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Dead letters (discarded jobs), with their last error.
    List {
        /// Only this queue.
        #[arg(long)]
        queue: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Replay dead letters: the ids given, or all (of `--queue`).
    Replay {
        /// Job ids (none: all).
        ids: Vec<i64>,
        /// Only this queue (when no ids are given).
        #[arg(long)]
        queue: Option<String>,
    },
    /// Delete dead letters older than an age (`30s`, `15m`, `12h`, `7d`).
    Purge {
        /// The age.
        #[arg(long, value_parser = parse_age)]
        older_than: std::time::Duration,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// The job queue's standard workloads (W1-W4 of ../shared/peer-bench).
    Queue {
        /// `sqlite` or `postgres`.
        #[arg(long, default_value = "sqlite")]
        backend: String,
        /// PostgreSQL URL (for `--backend postgres`).
        #[arg(long, env = "DATABASE_URL")]
        database_url: Option<String>,
        /// Directory for the SQLite files.
        #[arg(long, default_value = "target/windlass-bench")]
        dir: std::path::PathBuf,
        /// Jobs per workload (W1-W3).
        #[arg(long, default_value_t = 20_000)]
        n: usize,
        /// Worker concurrency (W3, W4).
        #[arg(long, default_value_t = 16)]
        c: usize,
        /// Jobs per bulk call (W2).
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// Samples in W4.
        #[arg(long, default_value_t = 500)]
        lat_n: usize,
        /// Workloads to run (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "w1,w2,w3,w4")]
        workloads: Vec<String>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// The workflow layer's standard workloads (WF1-WF3 of ../shared/peer-bench).
    Flow {
        /// `sqlite` or `postgres`.
        #[arg(long, default_value = "sqlite")]
        backend: String,
        /// PostgreSQL URL (for `--backend postgres`).
        #[arg(long, env = "DATABASE_URL")]
        database_url: Option<String>,
        /// Directory for the SQLite files.
        #[arg(long, default_value = "target/windlass-bench")]
        dir: std::path::PathBuf,
        /// Workflows per workload (WF1, WF2).
        #[arg(long, default_value_t = 5_000)]
        n: usize,
        /// Starters in flight (WF1) and worker concurrency (WF2).
        #[arg(long, default_value_t = 16)]
        c: usize,
        /// Samples in WF3.
        #[arg(long, default_value_t = 200)]
        lat_n: usize,
        /// Workloads to run (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "wf1,wf2,wf3")]
        workloads: Vec<String>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

fn parse_age(s: &str) -> Result<std::time::Duration, String> {
    limits::parse_duration(s)
}

#[derive(Subcommand)]
enum OtherDemo {
    /// The checkout saga on durable workflows (embedded SQLite): reserve stock, charge the
    /// card, create the shipment, send the email; one order goes through, one fails at an
    /// injected step and is rolled back (release, refund, cancel — latest first).
    Checkout {
        /// The step at which the second order fails.
        #[arg(long, value_enum, default_value_t = demo::checkout::FailAt::Ship)]
        fail_at: demo::checkout::FailAt,
        /// Keep the runs in this SQLite file (default: a fresh temporary file).
        #[arg(long)]
        db: Option<std::path::PathBuf>,
        /// Print JSON instead of the story.
        #[arg(long)]
        json: bool,
    },
    /// The thumbnail pipeline as a durable workflow (embedded SQLite): a step per image,
    /// bounded fan-out; a worker process drives it and is killed mid-run (SIGKILL), and a
    /// worker here resumes the run from its journal.
    Thumbnails {
        /// Images to process.
        #[arg(long, default_value_t = 300)]
        items: usize,
        /// Images in flight at once.
        #[arg(long, default_value_t = 8)]
        limit: usize,
        /// Kill the worker process once this many images are uploaded (0: no kill).
        #[arg(long, default_value_t = 100)]
        kill_after: usize,
        /// Keep the run in this SQLite file (default: a fresh temporary file).
        #[arg(long)]
        db: Option<std::path::PathBuf>,
        /// Print JSON instead of the story.
        #[arg(long)]
        json: bool,
        /// Internal: be the worker process for this SQLite file.
        #[arg(long, hide = true)]
        worker_for: Option<std::path::PathBuf>,
    },
    /// The thumbnail pipeline — fetch, thumbnail (CPU), upload — sequential, unbounded,
    /// bounded, and streaming with CPU offload.
    Pipeline {
        /// Item counts to run (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "1000")]
        items: Vec<usize>,
        /// The in-flight limit of the bounded stages.
        #[arg(long, default_value_t = 32)]
        limit: usize,
        /// Threads for the CPU offload pool.
        #[arg(long, default_value_t = 2)]
        cpu_threads: usize,
        /// Print JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    match cli.command {
        Command::Demo {
            other: Some(OtherDemo::Checkout { fail_at, db, json }),
            ..
        } => {
            let report = runtime.block_on(demo::checkout::run(db, fail_at))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", demo::checkout::table(&report));
            }
        }
        Command::Demo {
            other:
                Some(OtherDemo::Thumbnails {
                    items,
                    limit,
                    kill_after,
                    db,
                    json,
                    worker_for,
                }),
            ..
        } => {
            if let Some(db) = worker_for {
                runtime.block_on(demo::thumbnails::serve_worker(&db))?;
                return Ok(());
            }
            let opts = demo::thumbnails::ThumbnailOptions {
                items,
                limit,
                kill_after,
                db,
            };
            let report = runtime.block_on(demo::thumbnails::run(&opts))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", demo::thumbnails::story(&report));
            }
        }
        Command::Demo {
            other:
                Some(OtherDemo::Pipeline {
                    items,
                    limit,
                    cpu_threads,
                    json,
                }),
            ..
        } => {
            let opts = demo::pipeline::PipelineOptions {
                items,
                limit,
                cpu_threads,
            };
            let reports = runtime.block_on(demo::pipeline::run(&opts))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&reports)?);
            } else {
                print!("{}", demo::pipeline::table(&reports));
            }
        }
        Command::Demo {
            other: None,
            requests,
            concurrency,
            rate,
            profile,
            seed,
            json,
        } => {
            let opts = demo::DemoOptions {
                requests,
                concurrency,
                rate,
                profile,
                seed,
                progress: !json && std::io::stderr().is_terminal(),
            };
            let report = runtime.block_on(demo::run(&opts))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", demo::table(&report));
            }
        }
        Command::Migrate { db } => {
            let database = Database::parse(&db.database_url)?;
            let said = runtime.block_on(windlass_cli::queue::migrate(&database, &db.schema))?;
            println!("{said}");
        }
        Command::Queues { db } => admin(&runtime, &db, Action::Queues)?,
        Command::Jobs { command, db } => {
            let action = match command {
                JobsCommand::List {
                    queue,
                    state,
                    kind,
                    after,
                    limit,
                } => {
                    let states = state
                        .iter()
                        .map(|s| {
                            JobState::parse(s).ok_or_else(|| anyhow::anyhow!("unknown state `{s}`"))
                        })
                        .collect::<anyhow::Result<Vec<_>>>()?;
                    Action::List(JobFilter {
                        queue,
                        states,
                        kind,
                        after: after.map(JobId),
                        limit,
                    })
                }
                JobsCommand::Show { id } => Action::Show(JobId(id)),
                JobsCommand::Cancel { ids } => Action::Cancel(ids.into_iter().map(JobId).collect()),
                JobsCommand::Retry { ids } => Action::Retry(ids.into_iter().map(JobId).collect()),
            };
            admin(&runtime, &db, action)?
        }
        Command::Flows { command, db } => {
            let action = match command {
                FlowsCommand::List {
                    kind,
                    status,
                    after,
                    limit,
                } => FlowAction::List(RunFilter {
                    kind,
                    statuses: status
                        .as_deref()
                        .map(windlass_cli::flows::parse_statuses)
                        .transpose()?
                        .unwrap_or_default(),
                    after,
                    limit,
                }),
                FlowsCommand::Show { id } => FlowAction::Show(id),
                FlowsCommand::Graph { id, format } => FlowAction::Graph { id, format },
                FlowsCommand::Cancel { id, reason } => FlowAction::Cancel { id, reason },
                FlowsCommand::Resume { id, queue } => FlowAction::Resume { id, queue },
            };
            let database = Database::parse(&db.database_url)?;
            let out = runtime.block_on(async {
                match AnyStore::open(&database, &db.schema).await? {
                    AnyStore::Sqlite(s) => windlass_cli::flows::run(&s, action, db.json).await,
                    AnyStore::Postgres(s) => windlass_cli::flows::run(&s, action, db.json).await,
                }
            })?;
            print!("{out}");
            if db.json {
                println!();
            }
        }
        Command::Limits { command, db } => {
            let (queue, change) = match command {
                LimitsCommand::Show { queue } => (queue, None),
                LimitsCommand::Set {
                    queue,
                    max_running,
                    max_running_per_key,
                    rate,
                    rate_per_key,
                } => (
                    queue,
                    Some(limits::LimitsChange {
                        max_running: max_running.unwrap_or_default(),
                        max_running_per_key: max_running_per_key.unwrap_or_default(),
                        rate: rate.unwrap_or_default(),
                        rate_per_key: rate_per_key.unwrap_or_default(),
                    }),
                ),
                LimitsCommand::Clear { queue } => (
                    queue,
                    Some(limits::LimitsChange {
                        max_running: limits::Change::Remove,
                        max_running_per_key: limits::Change::Remove,
                        rate: limits::Change::Remove,
                        rate_per_key: limits::Change::Remove,
                    }),
                ),
            };
            admin(&runtime, &db, Action::Limits { queue, change })?
        }
        Command::Dlq { command, db } => {
            let action = match command {
                DlqCommand::List { queue, limit } => Action::DlqList { queue, limit },
                DlqCommand::Replay { ids, queue } => Action::DlqReplay {
                    ids: ids.into_iter().map(JobId).collect(),
                    queue,
                },
                DlqCommand::Purge { older_than } => Action::DlqPurge { older_than },
            };
            admin(&runtime, &db, action)?
        }
        Command::Bench {
            command:
                BenchCommand::Queue {
                    backend,
                    database_url,
                    dir,
                    n,
                    c,
                    batch,
                    lat_n,
                    workloads,
                    json,
                },
        } => {
            let opts = BenchOptions {
                n,
                concurrency: c,
                batch,
                lat_n,
                workloads,
            };
            let report = runtime.block_on(async {
                match backend.as_str() {
                    "sqlite" => {
                        bench::run(
                            "sqlite",
                            "SQLite WAL, synchronous=NORMAL: a process crash loses nothing acknowledged; a power loss may lose the last commits",
                            || bench::fresh_sqlite(&dir),
                            &opts,
                        )
                        .await
                    }
                    "postgres" => {
                        let url = database_url.ok_or_else(|| {
                            anyhow::anyhow!("--backend postgres needs --database-url or DATABASE_URL")
                        })?;
                        bench::run(
                            "postgres",
                            "PostgreSQL with its server settings (stock: fsync and synchronous_commit on): nothing acknowledged is lost",
                            || bench::fresh_postgres(&url),
                            &opts,
                        )
                        .await
                    }
                    other => anyhow::bail!("unknown backend `{other}`: use sqlite or postgres"),
                }
            })?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", bench::table(&report));
            }
        }
        Command::Bench {
            command:
                BenchCommand::Flow {
                    backend,
                    database_url,
                    dir,
                    n,
                    c,
                    lat_n,
                    workloads,
                    json,
                },
        } => {
            let opts = FlowBenchOptions {
                n,
                concurrency: c,
                lat_n,
                workloads,
            };
            let report = runtime.block_on(async {
                match backend.as_str() {
                    "sqlite" => {
                        flow_bench::run(
                            "sqlite",
                            "SQLite WAL, synchronous=NORMAL: a step's result is durable against a process crash once its step returns (the journal write committed); a power loss may lose the last commits",
                            || bench::fresh_sqlite(&dir),
                            &opts,
                        )
                        .await
                    }
                    "postgres" => {
                        let url = database_url.ok_or_else(|| {
                            anyhow::anyhow!("--backend postgres needs --database-url or DATABASE_URL")
                        })?;
                        flow_bench::run(
                            "postgres",
                            "PostgreSQL with its server settings (stock: fsync and synchronous_commit on): a step's result is durable once its step returns",
                            || bench::fresh_postgres(&url),
                            &opts,
                        )
                        .await
                    }
                    other => anyhow::bail!("unknown backend `{other}`: use sqlite or postgres"),
                }
            })?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{}", flow_bench::table(&report));
            }
        }
    }
    // Hung upstream connections may still be parked; do not wait for them.
    runtime.shutdown_background();
    Ok(())
}
