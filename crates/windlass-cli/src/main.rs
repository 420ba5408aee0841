//! The `windlass` binary: `windlass demo` runs the unstable-network showdown.

use std::io::IsTerminal;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use windlass_cli::demo;

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
}

#[derive(Subcommand)]
enum OtherDemo {
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
    }
    // Hung upstream connections may still be parked; do not wait for them.
    runtime.shutdown_background();
    Ok(())
}
