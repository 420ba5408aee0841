//! The thumbnail pipeline, four ways: `cargo run --release --example thumbnail_pipeline`.
//!
//! The stages are in `windlass_cli::demo::pipeline`; read that module for the code. This
//! runs them for 1,000 items and prints the comparison.

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let opts = windlass_cli::demo::pipeline::PipelineOptions {
        items: vec![1_000],
        limit: 32,
        cpu_threads: 2,
    };
    let reports = rt.block_on(windlass_cli::demo::pipeline::run(&opts))?;
    print!("{}", windlass_cli::demo::pipeline::table(&reports));
    Ok(())
}
