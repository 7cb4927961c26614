//! `latency`: request/response ping-pong of small frames at a fixed rate, on each
//! path in turn, in the same run.
//!
//! The player sends a frame of `--size` bytes every 1/`--rate` seconds, carrying
//! its send time; the host echoes it; the player records the round trip in an HDR
//! histogram (nanosecond precision, 3 significant digits). Sends are paced by the
//! clock and never wait for answers, so a slow answer does not delay the next
//! request. The time is taken just before each write rather than at its scheduled
//! instant: tokio's timer has millisecond granularity, which would otherwise add up
//! to a millisecond of timer lateness to every sample. The added latency of the
//! relay is its p99 minus the direct path's p99, both from this run.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{CpuMeter, Run};
use crate::fixture::{echo, Fixture, Path, PathKind};
use crate::report::{cell, ratio, Report, Series, Table};
use crate::transport::TransportArgs;

/// Knobs of the latency scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct LatencyArgs {
    /// Requests per second, per session.
    #[arg(long, default_value_t = 1000)]
    pub rate: u32,
    /// Frame size, bytes (at least 16: sequence number and send time).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Concurrent ping-pong sessions.
    #[arg(long, default_value_t = 1)]
    pub sessions: usize,
    /// Paths to measure, in order; `relay` once per transport.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = PathKind::ALL)]
    pub paths: Vec<PathKind>,
    #[command(flatten)]
    pub transports: TransportArgs,
}

impl LatencyArgs {
    /// The paths measured, in order.
    pub fn paths(&self) -> Vec<Path> {
        PathKind::expand(&self.paths, &self.transports.legs(false))
    }
}

/// Planned time, for the progress bar.
pub fn planned(args: &LatencyArgs, common: &super::Common) -> Duration {
    (common.duration + common.warmup) * args.paths().len() as u32
}

/// What one path measured.
struct Measured {
    histogram: Histogram<u64>,
    per_second_p99_us: Vec<(f64, f64)>,
    errors: u64,
    /// Through the relay the harness started: the relay process's CPU time over the
    /// whole phase divided by the requests sent, in µs.
    relay_cpu_us_per_request: Option<f64>,
}

/// Runs the scenario.
pub async fn run(run: &Run, args: &LatencyArgs) -> Result<Report> {
    if args.size < 16 {
        bail!("--size must be at least 16 bytes");
    }
    let fixture = Fixture::start(
        Some(run.target.relay_url()),
        run.target.splice_addr(),
        1,
        1,
        &args.transports.transports(),
        run.common.resume_window,
    )
    .await?;
    let paths = args.paths();
    let mut results = Vec::new();
    for &path in &paths {
        run.progress.message(path.label());
        results.push((path, measure(run, &fixture, path, args).await?));
    }
    fixture.shutdown().await;

    let params = json!({
        "rate": args.rate, "size": args.size, "sessions": args.sessions,
        "paths": paths.iter().map(|p| p.key()).collect::<Vec<_>>(),
        "transports": args.transports.transports(),
        "duration_s": run.common.duration.as_secs_f64(),
        "warmup_s": run.common.warmup.as_secs_f64(),
    });
    let mut report = run.report("latency", params);
    let mut table = Table::new(&[
        "path",
        "samples",
        "p50 µs",
        "p90 µs",
        "p99 µs",
        "p99.9 µs",
        "max µs",
    ]);
    let mut errors = 0;
    let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    for (path, measured) in &results {
        let h = &measured.histogram;
        errors += measured.errors;
        let key = path.key();
        let some = |v| (!h.is_empty()).then_some(v);
        report.figure(&format!("{key}_samples"), Some(h.len() as f64));
        report.figure(&format!("{key}_p50_us"), some(us(h, 0.5)));
        report.figure(&format!("{key}_p90_us"), some(us(h, 0.9)));
        report.figure(&format!("{key}_p99_us"), some(us(h, 0.99)));
        report.figure(&format!("{key}_p999_us"), some(us(h, 0.999)));
        report.figure(&format!("{key}_max_us"), some(h.max() as f64 / 1000.0));
        if let Some(cpu) = measured.relay_cpu_us_per_request {
            report.figure(&format!("{key}_cpu_us_per_request"), Some(cpu));
            report.note(format!(
                "{}: the relay process spent {cpu:.1} µs of CPU per request (two forwarded \
                 messages), over warm-up and measurement",
                path.label()
            ));
        }
        table.row(vec![
            path.label(),
            h.len().to_string(),
            cell(some(us(h, 0.5)), 1),
            cell(some(us(h, 0.9)), 1),
            cell(some(us(h, 0.99)), 1),
            cell(some(us(h, 0.999)), 1),
            cell(some(h.max() as f64 / 1000.0), 1),
        ]);
        report.series.push(Series {
            name: format!("{key} p99 per second"),
            unit: "µs".to_owned(),
            points: measured.per_second_p99_us.clone(),
        });
    }
    let direct = report.number("direct_p99_us");
    let splice = report.number("splice_p99_us");
    for path in paths.iter().filter(|p| p.is_relay()) {
        let key = path.key();
        let relay = report.number(&format!("{key}_p99_us"));
        let added = relay.zip(direct).map(|(r, d)| r - d);
        report.figure(&format!("{key}_added_p99_us"), added);
        report.figure(&format!("{key}_vs_direct_p99"), ratio(relay, direct));
        report.figure(&format!("{key}_vs_splice_p99"), ratio(relay, splice));
        table.row(vec![
            format!("{} p99 - direct p99", path.label()),
            String::new(),
            String::new(),
            String::new(),
            cell(added, 1),
            String::new(),
            String::new(),
        ]);
    }
    // The first relayed path also under the keys of runs before transports.
    if let Some(first) = paths.iter().find(|p| p.is_relay()) {
        report.alias(&first.key(), "relay");
        let added = report.number("relay_added_p99_us");
        report.figure("added_p99_us", added);
    }
    report.figure("errors", Some(errors as f64));
    if errors > 0 {
        report.note(format!("{errors} errors (lost or failed requests)"));
    }
    report.table = table;
    Ok(report)
}

/// Measures one path with `args.sessions` sessions for warm-up plus duration.
async fn measure(run: &Run, fixture: &Fixture, path: Path, args: &LatencyArgs) -> Result<Measured> {
    let mut sessions = Vec::new();
    for i in 0..args.sessions.max(1) {
        let session = fixture.open(path, i).await?;
        tokio::spawn(echo(session.host));
        sessions.push(session.player);
    }
    let total = run.common.warmup + run.common.duration;
    let requests = args.sessions.max(1) as f64 * requests_per_session(total, args) as f64;
    let probe = path.is_relay().then(|| run.target.relay_probe()).flatten();
    let relay_cpu = CpuMeter::start(probe);
    let origin = Instant::now();
    let progress = async {
        let step = Duration::from_millis(100);
        let mut ticker = tokio::time::interval(step);
        ticker.tick().await;
        while origin.elapsed() < total {
            ticker.tick().await;
            run.progress.advance(step);
        }
    };
    let pingers = super::throughput::join_all(
        sessions
            .into_iter()
            .map(|player| ping(player, origin, run.common.warmup, total, args)),
    );
    let (results, ()) = tokio::join!(pingers, progress);
    let relay_cpu_us_per_request = relay_cpu.elapsed().map(|cpu| cpu * 1e6 / requests);
    let mut histogram = new_histogram()?;
    let mut seconds: Vec<Histogram<u64>> = Vec::new();
    let mut errors = 0;
    for result in results {
        let (h, per_second, errs) = result?;
        histogram.add(&h).context("merging histograms")?;
        for (i, h) in per_second.into_iter().enumerate() {
            if seconds.len() <= i {
                seconds.push(new_histogram()?);
            }
            seconds[i].add(&h).context("merging histograms")?;
        }
        errors += errs;
    }
    let per_second_p99_us = seconds
        .iter()
        .enumerate()
        .filter(|(_, h)| !h.is_empty())
        .map(|(i, h)| (i as f64 + 1.0, h.value_at_quantile(0.99) as f64 / 1000.0))
        .collect();
    Ok(Measured {
        histogram,
        per_second_p99_us,
        errors,
        relay_cpu_us_per_request,
    })
}

/// Requests each session sends over warm-up and measurement (`total`).
fn requests_per_session(total: Duration, args: &LatencyArgs) -> u64 {
    (total.as_secs_f64() * f64::from(args.rate.max(1))) as u64
}

fn new_histogram() -> Result<Histogram<u64>> {
    // 1 ns to 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).context("histogram bounds")
}

/// One session's ping-pong: (histogram after warm-up, histogram per second of the
/// whole phase, errors).
async fn ping(
    player: crate::fixture::BoxStream,
    origin: Instant,
    warmup: Duration,
    total: Duration,
    args: &LatencyArgs,
) -> Result<(Histogram<u64>, Vec<Histogram<u64>>, u64)> {
    let (mut reader, mut writer) = tokio::io::split(player);
    let size = args.size;
    let count = requests_per_session(total, args);
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1)));
    let sender = async move {
        let mut frame = vec![0u8; size];
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        for seq in 0..count {
            ticker.tick().await;
            let sent = origin.elapsed().as_nanos() as u64;
            frame[..8].copy_from_slice(&seq.to_le_bytes());
            frame[8..16].copy_from_slice(&sent.to_le_bytes());
            writer.write_all(&frame).await?;
            writer.flush().await?;
        }
        writer.shutdown().await?;
        Ok::<_, std::io::Error>(())
    };
    let receiver = async move {
        let mut histogram = new_histogram()?;
        let mut per_second: Vec<Histogram<u64>> = Vec::new();
        let mut frame = vec![0u8; size];
        let mut received = 0u64;
        let mut expected_seq = 0u64;
        let mut errors = 0u64;
        while received < count {
            match tokio::time::timeout(Duration::from_secs(10), reader.read_exact(&mut frame)).await
            {
                Ok(Ok(_)) => {}
                _ => {
                    errors += count - received;
                    break;
                }
            }
            let now = origin.elapsed().as_nanos() as u64;
            let seq = u64::from_le_bytes(frame[..8].try_into().unwrap_or_default());
            let sent = u64::from_le_bytes(frame[8..16].try_into().unwrap_or_default());
            if seq != expected_seq {
                errors += 1;
            }
            expected_seq = seq + 1;
            received += 1;
            let rtt = now.saturating_sub(sent).max(1);
            let second = (sent / 1_000_000_000) as usize;
            while per_second.len() <= second {
                per_second.push(new_histogram()?);
            }
            let _ = per_second[second].record(rtt);
            if Duration::from_nanos(sent) >= warmup {
                let _ = histogram.record(rtt);
            }
        }
        Ok::<_, anyhow::Error>((histogram, per_second, errors))
    };
    let (sent, received) = tokio::join!(sender, receiver);
    let (histogram, per_second, mut errors) = received?;
    if sent.is_err() {
        errors += 1;
    }
    Ok((histogram, per_second, errors))
}
