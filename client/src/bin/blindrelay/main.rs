//! `blindrelay`: make a host or player identity, run a host, connect to one as a
//! player, for a relay operator make an issuer key and registration tokens, or see
//! it all work on one machine (`demo`).
//!
//! Results that scripts read go to stdout as `name: value` lines; logs go to stderr
//! (`RUST_LOG` filters them).

mod cli;
mod connect;
mod demo;
mod host;
mod host_file;
mod host_settings;
mod keys;
mod panel;
mod splice;
mod stop;
mod token;

use anyhow::Result;
use clap::Parser;

use crate::cli::{Cli, Command};
use crate::stop::Stop;

/// Runs the command; an error is printed as its chain of causes, one line, without
/// a backtrace even where `RUST_BACKTRACE` is set (a developer's machine often has
/// it): what went wrong and what to do, not where in the code.
fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("Error: cannot start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("Error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, then runs the command asked for.
async fn run() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only where a person reads them, not in files or journals.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match Cli::parse().command {
        Command::Keygen { out, force, role } => keys::keygen(&out, force, role),
        Command::Token { command } => token::token(command),
        Command::Host(args) => host::run(args).await,
        Command::Connect(args) => connect::run(args).await,
        Command::Demo(args) => demo::demo(args, Stop::interrupt()?).await,
    }
}
