//! `idle`: N registered hosts holding idle connections.
//!
//! Registrations are made by the raw protocol, many connections per client UDP
//! socket ([`crate::raw`]), `--concurrency` at a time. The relay process's resident
//! memory is read before the first and after the last (plus a settling pause), and
//! `bytes_per_registration` is the difference divided by N. The registrations are
//! then held for `--duration` (keep-alives flowing), with memory sampled every
//! second, and the figure is taken again at the end.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde_json::json;

use super::Run;
use crate::measure::ProcessProbe;
use crate::raw::{Registration, RegistrationPool, TcpRegistration};
use crate::report::{cell, Report, Series, Table};
use crate::transport::Transport;

/// Knobs of the idle scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct IdleArgs {
    /// Registrations to hold (N).
    #[arg(long, alias = "sessions", default_value_t = 10_000)]
    pub registrations: usize,
    /// Registrations in flight at once.
    #[arg(long, default_value_t = 128)]
    pub concurrency: usize,
    /// Client UDP sockets the registrations share (QUIC).
    #[arg(long, default_value_t = 64)]
    pub endpoints: usize,
    /// How the hosts register: `quic` (connections sharing `--endpoints` sockets)
    /// or `tcp` (a TLS-over-TCP connection each: a file descriptor each, in the
    /// harness and in the relay).
    #[arg(long, value_enum, default_value_t = Transport::Quic)]
    pub transport: Transport,
}

/// A registration held, on either transport.
enum Held {
    Quic(Registration),
    Tcp(TcpRegistration),
}

impl Held {
    fn is_alive(&self) -> bool {
        match self {
            Self::Quic(registration) => registration.is_alive(),
            Self::Tcp(registration) => registration.is_alive(),
        }
    }

    fn close(self) {
        match self {
            Self::Quic(registration) => registration.close(),
            Self::Tcp(registration) => registration.close(),
        }
    }
}

/// Planned time, for the progress bar (registration time is not known ahead).
pub fn planned(_args: &IdleArgs, common: &super::Common) -> Duration {
    common.duration + Duration::from_secs(4)
}

/// Runs the scenario.
pub async fn run(run: &Run, args: &IdleArgs) -> Result<Report> {
    let probe = run.target.relay_probe();
    let harness = ProcessProbe::this_process();
    let pool = RegistrationPool::new(run.target.relay_url(), args.endpoints).await?;
    // Let the relay settle before the baseline reading.
    tokio::time::sleep(Duration::from_secs(1)).await;
    run.progress.advance(Duration::from_secs(1));
    let rss = |p: Option<&ProcessProbe>| p.and_then(|p| p.rss_bytes().ok());
    let relay_before = rss(probe);
    let harness_before = rss(Some(&harness));

    run.progress
        .message(format!("registering {}", args.registrations));
    if args.transport == Transport::Websocket {
        bail!("idle registers over quic or tcp");
    }
    let held: Mutex<Vec<Held>> = Mutex::new(Vec::with_capacity(args.registrations));
    let next = AtomicUsize::new(0);
    let errors = AtomicU64::new(0);
    let started = Instant::now();
    let worker = |_: usize| async {
        while next.fetch_add(1, Ordering::Relaxed) < args.registrations {
            let register = async {
                Ok::<_, crate::raw::RegisterError>(match args.transport {
                    Transport::Tcp => {
                        Held::Tcp(TcpRegistration::register(run.target.relay_url()).await?)
                    }
                    _ => Held::Quic(pool.register().await?),
                })
            };
            match tokio::time::timeout(Duration::from_secs(30), register).await {
                Ok(Ok(registration)) => {
                    if let Ok(mut held) = held.lock() {
                        held.push(registration);
                    }
                }
                _ => {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    };
    let watch = async {
        let mut ticker = tokio::time::interval(Duration::from_millis(500));
        loop {
            ticker.tick().await;
            let done = held.lock().map(|h| h.len()).unwrap_or(0);
            let failed = errors.load(Ordering::Relaxed) as usize;
            run.progress.message(format!(
                "registered {done}/{} ({failed} failed)",
                args.registrations
            ));
            if done + failed >= args.registrations {
                break;
            }
        }
    };
    let (_, ()) = tokio::join!(
        super::throughput::join_all((0..args.concurrency.max(1)).map(worker)),
        watch
    );
    let register_seconds = started.elapsed().as_secs_f64();
    let registered = held.lock().map(|h| h.len()).unwrap_or(0);
    if registered == 0 {
        bail!("no registration succeeded");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    run.progress.advance(Duration::from_secs(2));
    let relay_after = rss(probe);
    let harness_after = rss(Some(&harness));

    run.progress
        .message(format!("holding {registered} registrations"));
    let mut memory = Vec::new();
    let hold = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    while hold.elapsed() < run.common.duration {
        ticker.tick().await;
        run.progress.advance(Duration::from_secs(1));
        if let Some(bytes) = rss(probe) {
            memory.push((
                hold.elapsed().as_secs_f64(),
                bytes as f64 / (1 << 20) as f64,
            ));
        }
    }
    let relay_end = rss(probe);
    let alive = held
        .lock()
        .map(|h| h.iter().filter(|r| r.is_alive()).count())
        .unwrap_or(0);
    let lost = registered - alive;
    run.progress.message("closing");
    if let Ok(mut held) = held.lock() {
        for registration in held.drain(..) {
            registration.close();
        }
    }
    pool.close().await;

    let per = |after: Option<u64>, before: Option<u64>| {
        Some(after?.saturating_sub(before?) as f64 / registered as f64)
    };
    let params = json!({
        "registrations": args.registrations, "concurrency": args.concurrency,
        "endpoints": args.endpoints, "transport": args.transport, "hold_s": run.common.duration.as_secs_f64(),
    });
    let mut report = run.report("idle", params);
    let errors = errors.load(Ordering::Relaxed) + lost as u64;
    let bytes_per = per(relay_after, relay_before);
    let bytes_per_end = per(relay_end, relay_before);
    report.figure("registered", Some(registered as f64));
    report.figure("bytes_per_registration", bytes_per);
    report.figure("bytes_per_registration_after_hold", bytes_per_end);
    report.figure("relay_rss_before_bytes", relay_before.map(|b| b as f64));
    report.figure("relay_rss_after_bytes", relay_after.map(|b| b as f64));
    report.figure(
        "harness_bytes_per_registration",
        per(harness_after, harness_before),
    );
    report.figure("register_seconds", Some(register_seconds));
    report.figure(
        "registrations_per_s",
        Some(registered as f64 / register_seconds),
    );
    report.figure("errors", Some(errors as f64));
    let mut table = Table::new(&["figure", "value"]);
    let kib = |v: Option<f64>| cell(v.map(|v| v / 1024.0), 1);
    table.row(vec!["registrations held".into(), registered.to_string()]);
    table.row(vec![
        "time to register them".into(),
        format!(
            "{register_seconds:.1} s ({:.0}/s)",
            registered as f64 / register_seconds
        ),
    ]);
    table.row(vec![
        "relay memory per registration, KiB".into(),
        kib(bytes_per),
    ]);
    table.row(vec![
        format!("... after holding {:?}, KiB", run.common.duration),
        kib(bytes_per_end),
    ]);
    table.row(vec![
        "relay RSS before / after, MiB".into(),
        format!(
            "{} / {}",
            cell(relay_before.map(|b| b as f64 / (1 << 20) as f64), 1),
            cell(relay_after.map(|b| b as f64 / (1 << 20) as f64), 1)
        ),
    ]);
    table.row(vec![
        "harness (client side) memory per registration, KiB".into(),
        kib(per(harness_after, harness_before)),
    ]);
    table.row(vec!["errors (failed or lost)".into(), errors.to_string()]);
    report.table = table;
    report.series.push(Series {
        name: "relay RSS".to_owned(),
        unit: "MiB".to_owned(),
        points: memory,
    });
    if errors > 0 {
        report.note(format!(
            "{errors} registrations failed or were lost while held"
        ));
    }
    Ok(report)
}
