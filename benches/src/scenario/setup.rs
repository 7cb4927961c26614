//! `setup`: how fast sessions and registrations are set up.
//!
//! Sessions: `--sessions` workers each open a session (player stream, relay
//! pairing, Noise IK handshake with the host), send one byte, wait for the host's
//! echo of it, and close; then the next. Counted per second over the measured
//! window, per path (direct and TCP splice in the same run), with the time each
//! set-up took in an HDR histogram. Through the relay, the count is also divided by
//! the relay process's CPU seconds: sessions per second per core of relay CPU, the
//! figure that does not depend on how much CPU the hosts and players in this same
//! machine take.
//!
//! The relayed path is measured once per `--transport`: on TLS/TCP each session is
//! two new connections (the player's, and the one its host dials for it), each with
//! its own TLS handshake, where on QUIC it is a new stream on connections that exist.
//!
//! Registrations: the same number of workers each open a fresh QUIC connection to
//! the relay, register a fresh host id with its proof, and close the connection
//! (QUIC only, whatever `--transport` says).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use super::{CpuMeter, Run};
use crate::fixture::{Fixture, Path, PathKind};
use crate::raw::RegistrationPool;
use crate::report::{cell, ratio, Report, Table};
use crate::transport::TransportArgs;

/// Knobs of the setup scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct SetupArgs {
    /// Concurrent workers setting up sessions (and registrations).
    #[arg(long, default_value_t = 16)]
    pub sessions: usize,
    /// Host agents sessions go to.
    #[arg(long, default_value_t = 2)]
    pub hosts: usize,
    /// Players (each with its own relay connection).
    #[arg(long, default_value_t = 4)]
    pub players: usize,
    /// Paths to measure session set-up on, in order; `relay` once per transport.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = PathKind::ALL)]
    pub paths: Vec<PathKind>,
    #[command(flatten)]
    pub transports: TransportArgs,
    /// Skip the registration phase.
    #[arg(long)]
    pub no_registrations: bool,
    /// Rounds over all session paths; each path's figures are those of its median
    /// round by sessions per second (this machine's noise moves single runs by 20%).
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
}

impl SetupArgs {
    /// The paths measured, in order.
    pub fn paths(&self) -> Vec<Path> {
        PathKind::expand(&self.paths, &self.transports.legs(false))
    }
}

/// Planned time, for the progress bar.
pub fn planned(args: &SetupArgs, common: &super::Common) -> Duration {
    let phases = args.paths().len() * args.rounds.max(1) + usize::from(!args.no_registrations);
    (common.duration + common.warmup) * phases as u32
}

/// What one phase counted.
struct Counted {
    per_s: f64,
    count: u64,
    relay_cpu: Option<f64>,
    histogram: Histogram<u64>,
    errors: u64,
}

/// Runs the scenario.
pub async fn run(run: &Run, args: &SetupArgs) -> Result<Report> {
    let fixture = Fixture::start(
        Some(run.target.relay_url()),
        run.target.splice_addr(),
        args.hosts,
        args.players,
        &args.transports.transports(),
    )
    .await?;
    let paths = args.paths();
    // Rounds go over all paths in turn, so a noisy moment hits every path alike.
    let mut rounds: Vec<Vec<Counted>> = paths.iter().map(|_| Vec::new()).collect();
    for round in 0..args.rounds.max(1) {
        for (&path, counted) in paths.iter().zip(&mut rounds) {
            run.progress
                .message(format!("sessions, {}, round {}", path.label(), round + 1));
            let probe = path.is_relay().then(|| run.target.relay_probe()).flatten();
            let fixture = &fixture;
            counted.push(
                count(run, probe, args.sessions, |i| async move {
                    let mut stream = fixture.open_echo(path, i).await?;
                    let _ = stream.shutdown().await;
                    Ok(())
                })
                .await?,
            );
        }
    }
    fixture.shutdown().await;
    let sessions: Vec<(Path, Counted)> = paths
        .iter()
        .copied()
        .zip(rounds.into_iter().map(median_round))
        .collect();

    let registrations = if args.no_registrations {
        None
    } else {
        run.progress.message("registrations");
        let pool = RegistrationPool::new(run.target.relay_url(), 4).await?;
        let pool = &pool;
        let counted = count(
            run,
            run.target.relay_probe(),
            args.sessions,
            |_| async move {
                pool.register().await?.close();
                Ok(())
            },
        )
        .await?;
        pool.close().await;
        Some(counted)
    };

    let params = json!({
        "sessions": args.sessions, "hosts": args.hosts, "players": args.players,
        "rounds": args.rounds,
        "paths": paths.iter().map(|p| p.key()).collect::<Vec<_>>(),
        "transports": args.transports.transports(),
        "duration_s": run.common.duration.as_secs_f64(),
        "warmup_s": run.common.warmup.as_secs_f64(),
    });
    let mut report = run.report("setup", params);
    let mut table = Table::new(&[
        "what",
        "per second",
        "p50 ms",
        "p99 ms",
        "relay CPU ms each",
        "per relay CPU s",
    ]);
    let ms =
        |h: &Histogram<u64>, q: f64| (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1e6);
    let mut errors = 0;
    let mut rows = sessions
        .iter()
        .map(|(path, c)| (format!("sessions, {}", path.label()), path.key(), c))
        .collect::<Vec<_>>();
    if let Some(c) = &registrations {
        rows.push((
            "registrations over QUIC (new connection each)".to_owned(),
            "registrations".to_owned(),
            c,
        ));
    }
    for (label, key, c) in rows {
        errors += c.errors;
        let per_cpu = c.relay_cpu.map(|cpu| c.count as f64 / cpu);
        let cpu_each = c.relay_cpu.map(|cpu| cpu * 1000.0 / c.count.max(1) as f64);
        let prefix = if key == "registrations" {
            "registrations".to_owned()
        } else {
            format!("{key}_sessions")
        };
        report.figure(&format!("{prefix}_per_s"), Some(c.per_s));
        report.figure(&format!("{prefix}_p50_ms"), ms(&c.histogram, 0.5));
        report.figure(&format!("{prefix}_p99_ms"), ms(&c.histogram, 0.99));
        if key.starts_with("relay") || key == "registrations" {
            report.figure(&format!("{prefix}_per_relay_cpu_s"), per_cpu);
        }
        table.row(vec![
            label,
            cell(Some(c.per_s), 0),
            cell(ms(&c.histogram, 0.5), 2),
            cell(ms(&c.histogram, 0.99), 2),
            cell(cpu_each, 3),
            cell(per_cpu, 0),
        ]);
    }
    let direct = report.number("direct_sessions_per_s");
    let splice = report.number("splice_sessions_per_s");
    for path in paths.iter().filter(|p| p.is_relay()) {
        let key = path.key();
        let relay = report.number(&format!("{key}_sessions_per_s"));
        report.figure(&format!("{key}_vs_direct_sessions"), ratio(relay, direct));
        report.figure(&format!("{key}_vs_splice_sessions"), ratio(relay, splice));
    }
    // The first relayed path also under the keys of runs before transports.
    if let Some(first) = paths.iter().find(|p| p.is_relay()) {
        report.alias(&first.key(), "relay");
        let relay = report.number("relay_sessions_per_s");
        report.figure("sessions_per_s", relay);
    }
    report.figure("errors", Some(errors as f64));
    if errors > 0 {
        report.note(format!("{errors} set-ups failed"));
    }
    if args.rounds > 1 {
        report.note(format!(
            "each path's figures are those of its median round of {} by sessions per second",
            args.rounds
        ));
    }
    report.note(
        "a session is counted once the host's echo of the first byte is back; \
         hosts and players share this machine's cores with the relay, so \
         'per relay CPU s' is the relay's own cost",
    );
    report.table = table;
    Ok(report)
}

/// The round with the median sessions per second (the upper one of an even count),
/// with the errors of every round.
fn median_round(mut rounds: Vec<Counted>) -> Counted {
    let errors = rounds.iter().map(|c| c.errors).sum();
    rounds.sort_by(|a, b| a.per_s.total_cmp(&b.per_s));
    let mut median = rounds.swap_remove(rounds.len() / 2);
    median.errors = errors;
    median
}

/// Runs `run.common.warmup + duration` of `workers` workers calling `one(i)` in a loop and
/// counts those that finished inside the measured window.
async fn count<F, Fut>(
    run: &Run,
    probe: Option<&crate::measure::ProcessProbe>,
    workers: usize,
    one: F,
) -> Result<Counted>
where
    F: Fn(usize) -> Fut + Copy,
    Fut: std::future::Future<Output = Result<()>>,
{
    let origin = Instant::now();
    let warmup = run.common.warmup;
    let end = warmup + run.common.duration;
    let counted = AtomicU64::new(0);
    let errors = AtomicU64::new(0);
    let histogram = Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?);
    let next = AtomicU64::new(0);
    let cpu_at_warmup: Mutex<Option<CpuMeter>> = Mutex::new(None);
    let worker = |_: usize| async {
        while origin.elapsed() < end {
            let i = next.fetch_add(1, Ordering::Relaxed) as usize;
            let started = Instant::now();
            let result = tokio::time::timeout(Duration::from_secs(15), one(i)).await;
            let done = origin.elapsed();
            match result {
                Ok(Ok(())) if done >= warmup && done < end => {
                    counted.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut h) = histogram.lock() {
                        let _ = h.record(started.elapsed().as_nanos().max(1) as u64);
                    }
                }
                Ok(Ok(())) => {}
                _ if done < end => {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
    };
    let progress = async {
        let step = Duration::from_millis(100);
        let mut ticker = tokio::time::interval(step);
        ticker.tick().await;
        while origin.elapsed() < end {
            ticker.tick().await;
            run.progress.advance(step);
            if origin.elapsed() >= warmup {
                if let Ok(mut cpu) = cpu_at_warmup.lock() {
                    if cpu.is_none() {
                        *cpu = Some(CpuMeter::start(probe));
                    }
                }
            }
        }
    };
    let ((), _) = tokio::join!(
        progress,
        super::throughput::join_all((0..workers.max(1)).map(worker))
    );
    let relay_cpu = cpu_at_warmup
        .lock()
        .ok()
        .and_then(|cpu| cpu.as_ref().and_then(CpuMeter::elapsed));
    let count = counted.load(Ordering::Relaxed);
    let histogram = histogram
        .into_inner()
        .ok()
        .context("histogram lock poisoned")?;
    Ok(Counted {
        per_s: count as f64 / run.common.duration.as_secs_f64(),
        count,
        relay_cpu,
        histogram,
        errors: errors.load(Ordering::Relaxed),
    })
}
