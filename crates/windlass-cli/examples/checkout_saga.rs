//! The checkout saga: `cargo run --release --example checkout_saga [reserve|charge|ship|email]`.
//!
//! Four steps — reserve stock, charge the card, create the shipment, send the email — each
//! with its compensation (release, refund, cancel). One order goes through; another fails at
//! the step you name (default `ship`) and is rolled back, latest step first, every
//! compensation journaled so a crash mid-rollback resumes it. The workflow itself is in
//! `windlass_cli::demo::checkout`; read that module for the code. Runs on an embedded SQLite
//! file in a temporary directory: no setup.

fn main() -> anyhow::Result<()> {
    let fail_at = match std::env::args().nth(1).as_deref() {
        None | Some("ship") => windlass_cli::demo::checkout::FailAt::Ship,
        Some("reserve") => windlass_cli::demo::checkout::FailAt::Reserve,
        Some("charge") => windlass_cli::demo::checkout::FailAt::Charge,
        Some("email") => windlass_cli::demo::checkout::FailAt::Email,
        Some(other) => anyhow::bail!("unknown step `{other}`: use reserve, charge, ship or email"),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(windlass_cli::demo::checkout::run(None, fail_at))?;
    print!("{}", windlass_cli::demo::checkout::table(&report));
    Ok(())
}
