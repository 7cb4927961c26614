//! `blindrelay-bench`: the load generator operators run against a relay.
//!
//! `cargo run --release -p blindrelay-bench -- SCENARIO [--duration 10s]
//! [--sessions N] [--json FILE]`; `report` renders JSON files into BENCHMARKS.md.
//! See the crate documentation and BENCHMARKS.md.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use blindrelay_bench::machine::Machine;
use blindrelay_bench::progress::Progress;
use blindrelay_bench::relay_process::{self, ServeArgs};
use blindrelay_bench::report::Report;
use blindrelay_bench::scenario::{
    idle, latency, scale, setup, soak, throughput, tiny, Common, Run, Target,
};
use clap::{Parser, Subcommand};

/// Load generator for a blindrelay relay: throughput, latency, setup rate, idle
/// memory and soak, each compared in the same run with the direct path and a plain
/// TCP splice.
#[derive(Debug, Parser)]
#[command(name = "blindrelay-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Bulk data each way through S sessions: Gbit/s, and relay CPU s per GiB.
    Throughput {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: throughput::ThroughputArgs,
    },
    /// Ping-pong of small frames at a fixed rate: p50 to max, relay minus direct.
    Latency {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: latency::LatencyArgs,
    },
    /// Sessions per second (connect, handshake, first byte) and registrations per second.
    Setup {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: setup::SetupArgs,
    },
    /// N idle registrations: relay memory per registration, time to register.
    Idle {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: idle::IdleArgs,
    },
    /// A mix of the above for --duration: errors (must be 0), memory over time.
    Soak {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: soak::SoakArgs,
    },
    /// Tiny frames against bulk on each transport: relay CPU per attacker wire byte.
    Tiny {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: tiny::TinyArgs,
    },
    /// Throughput through a relay on 1 thread and on N, in one run: speed-up and
    /// efficiency per thread.
    Scale {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        args: scale::ScaleArgs,
    },
    /// Downloads that start relayed between two home NATs in network namespaces it
    /// builds (root): how many move to a punched direct path, and how soon.
    Punch(blindrelay_bench::punch::PunchArgs),
    /// Renders JSON results into BENCHMARKS.md.
    Report {
        /// JSON files written with --json, in the order to show them.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Write here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The relay process the harness starts (internal).
    #[command(hide = true)]
    ServeRelay(ServeArgs),
}

/// The scenario a command runs.
#[derive(Clone, Copy)]
enum Scenario<'a> {
    Throughput(&'a throughput::ThroughputArgs),
    Latency(&'a latency::LatencyArgs),
    Setup(&'a setup::SetupArgs),
    Idle(&'a idle::IdleArgs),
    Soak(&'a soak::SoakArgs),
    Tiny(&'a tiny::TinyArgs),
    Scale(&'a scale::ScaleArgs),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Command::ServeRelay(ServeArgs {
        workers: Some(workers),
        ..
    }) = &cli.command
    {
        // The relay under test on as many threads as asked (`scale`).
        runtime.worker_threads(workers.get());
    }
    runtime
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run_command(cli))
}

async fn run_command(cli: Cli) -> Result<()> {
    let (common, scenario) = match &cli.command {
        Command::Throughput { common, args } => (common, Scenario::Throughput(args)),
        Command::Latency { common, args } => (common, Scenario::Latency(args)),
        Command::Setup { common, args } => (common, Scenario::Setup(args)),
        Command::Idle { common, args } => (common, Scenario::Idle(args)),
        Command::Soak { common, args } => (common, Scenario::Soak(args)),
        Command::Tiny { common, args } => (common, Scenario::Tiny(args)),
        Command::Scale { common, args } => (common, Scenario::Scale(args)),
        Command::Report { files, out } => return report(files, out.as_ref()),
        Command::Punch(args) => return blindrelay_bench::punch::run(args).await,
        Command::ServeRelay(args) => return relay_process::run_child_relay(args.clone()).await,
    };
    let planned = match scenario {
        Scenario::Throughput(args) => throughput::planned(args, common),
        Scenario::Latency(args) => latency::planned(args, common),
        Scenario::Setup(args) => setup::planned(args, common),
        Scenario::Idle(args) => idle::planned(args, common),
        Scenario::Soak(args) => soak::planned(args, common),
        Scenario::Tiny(args) => tiny::planned(args, common),
        Scenario::Scale(args) => scale::planned(args, common),
    };
    let pool = match scenario {
        Scenario::Setup(args) => args.pool,
        _ => 0,
    };
    let run = Run {
        machine: Machine::detect(),
        target: Target::start(common, pool)?,
        common: common.clone(),
        progress: Progress::new(planned),
    };
    let report = match scenario {
        Scenario::Throughput(args) => throughput::run(&run, args).await,
        Scenario::Latency(args) => latency::run(&run, args).await,
        Scenario::Setup(args) => setup::run(&run, args).await,
        Scenario::Idle(args) => idle::run(&run, args).await,
        Scenario::Soak(args) => soak::run(&run, args).await,
        Scenario::Tiny(args) => tiny::run(&run, args).await,
        Scenario::Scale(args) => scale::run(&run, args).await,
    };
    run.progress.finish();
    let report = report?;
    print!("{}", report.to_text());
    if let Some(path) = &run.common.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &run.common.plot {
        std::fs::write(path, blindrelay_bench::plot::svg(&report))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    // Let the relay process see its stdin close before we exit.
    drop(run);
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(())
}

fn report(files: &[PathBuf], out: Option<&PathBuf>) -> Result<()> {
    let mut reports = Vec::new();
    for file in files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let report: Report =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
        reports.push(report);
    }
    let sources: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let text = blindrelay_bench::record::markdown(&reports, &sources);
    match out {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?
        }
        None => print!("{text}"),
    }
    Ok(())
}
