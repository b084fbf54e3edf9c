//! `cargo run -p bench -- …`: measures the handler and prints a Markdown table (see bench/run.sh and
//! docs/performance.md).

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// Measure the handler against its targets.
#[derive(Parser)]
struct Args {
    /// The handler executable to measure.
    #[arg(long, default_value = "target/release/handler")]
    handler: PathBuf,
    /// The static musl build, to report its size.
    #[arg(long)]
    musl: Option<PathBuf>,
    /// A few seconds: check the harness, quote nothing.
    #[arg(long)]
    smoke: bool,
    /// A Python with the `openai` package, to measure the original app's check side by side.
    #[arg(long)]
    python: Option<PathBuf>,
    /// Measure only these parts (repeat, or separate with commas); all of them by default.
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<bench::Part>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let root =
        devstack::azurite::project_root(&std::env::current_dir()?).context("run the bench from inside the checkout")?;
    let work = root.join("target/bench");
    let handler =
        args.handler.canonicalize().with_context(|| format!("{} (build it first)", args.handler.display()))?;
    let mut options = if args.smoke {
        bench::BenchOptions::smoke(handler, root.clone(), work)
    } else {
        bench::BenchOptions::full(handler, root.clone(), work)
    };
    options.musl_binary = args.musl;
    options.python = args.python;
    options.only = args.only;
    let report = bench::run(&options)?;
    println!("{}", report.markdown());
    Ok(())
}
