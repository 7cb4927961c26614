//! `blindrelayd`: the relay daemon.
//!
//! With no arguments it starts a development relay on 127.0.0.1:4433 with a
//! self-signed certificate made in memory, and prints `relay url: URL` on stdout.
//! `--config FILE` reads a TOML file; every limit in it can also be given as a flag
//! (`[sessions] rate` is `--sessions-rate`), and flags win. Logs go to stderr
//! (`RUST_LOG` filters them).
//!
//! The [flags](flags), the [settings](settings) they make with the config file,
//! the [signals](signals) that stop the relay, and the certificate's
//! [reload](reload) each have a file; this one runs them in order.

use anyhow::{Context, Result};
use blindrelay_relay::{ConfigFile, Relay};
use tracing::info;

mod flags;
mod reload;
mod settings;
mod signals;

use reload::{FileWatch, CERTIFICATE_POLL};
use settings::Settings;
use signals::StopSignals;

/// Runs the command; an error is printed as its chain of causes, one line, without
/// a backtrace even where `RUST_BACKTRACE` is set (a developer's machine often has
/// it): what went wrong and what to do, not where in the code.
fn main() -> std::process::ExitCode {
    match settle().and_then(|(settings, check_config)| {
        // The runtime's threads are a setting, so the settings come first.
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(settings.workers)
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        runtime.block_on(run(settings, check_config))
    }) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("Error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The settings from the flags and the config file, and whether only to check them.
fn settle() -> Result<(Settings, bool)> {
    let args = flags::parse_args();
    let file = match &args.config {
        Some(path) => ConfigFile::load(path)?,
        None => ConfigFile::default(),
    };
    let settings = Settings::merge(&args, file)?;
    Ok((settings, args.check_config))
}

async fn run(settings: Settings, check_config: bool) -> Result<()> {
    settings::init_logging(settings.log_format, settings.log_full_ip)?;
    settings.limits.validate()?;
    let token_issuers = settings.token_issuers()?;
    if check_config {
        return settings.print_check(token_issuers.as_ref());
    }
    let (cert_files, drain_timeout) = (settings.cert_files.clone(), settings.drain_timeout);
    let config = settings.relay_config(token_issuers)?;

    // Listening for the stop signals before the URL is printed: whoever reads the
    // URL may signal at once, and a signal before the handlers would kill the relay
    // instead of draining it.
    let mut stop_signals = StopSignals::listen()?;
    let mut relay = Relay::spawn(config).context("starting the relay")?;
    // What the runtime runs on, as it counts its threads (not as asked).
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    info!(workers, "relay threads");
    println!("relay url: {}", relay.url());
    if let Some(addr) = relay.admin_addr() {
        println!("admin: {addr}");
    }

    // Until asked to stop: reload the certificate on SIGHUP or when its files change.
    let mut watch = cert_files
        .as_ref()
        .map(|(cert, key)| FileWatch::new(cert, key));
    let mut poll = tokio::time::interval(CERTIFICATE_POLL);
    let mut hangup = reload::hangup_signal()?;
    loop {
        tokio::select! {
            () = stop_signals.next() => break,
            () = hangup.next() => {
                match &cert_files {
                    Some(files) => reload::reload_certificate(&mut relay, files),
                    None => info!("SIGHUP: no certificate files to reload"),
                }
            }
            _ = poll.tick() => {
                if let (Some(watch), Some(files)) = (watch.as_mut(), &cert_files) {
                    if watch.changed() {
                        info!("certificate files changed");
                        reload::reload_certificate(&mut relay, files);
                    }
                }
            }
        }
    }
    info!("draining: press Ctrl-C again (or send SIGTERM again) to stop at once");
    let closer = relay.closer();
    tokio::select! {
        () = relay.drain(drain_timeout) => {}
        () = stop_signals.next() => {
            info!("stopping at once");
            closer.close_now().await;
        }
    }
    Ok(())
}
