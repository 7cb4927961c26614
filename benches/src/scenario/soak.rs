//! `soak`: a mix of the other scenarios at once, through the relay, for
//! `--duration`: idle registrations held, bulk sessions at a paced rate each way, a
//! ping-pong session, and sessions opened and closed continuously. Every error is
//! counted (the run passes only with none), and the relay's memory, the bulk rate and
//! the ping p99 are sampled every second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{gbps, Run};
use crate::fixture::{echo, BoxStream, Fixture, Path};
use crate::raw::RegistrationPool;
use crate::report::{cell, Report, Series, Table};
use crate::transport::Transport;

/// Knobs of the soak scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    /// Bulk sessions, each paced to `--session-mbit` in each direction.
    #[arg(long, default_value_t = 4)]
    pub sessions: usize,
    /// Pace of each bulk session and direction, Mbit/s.
    #[arg(long, default_value_t = 100.0)]
    pub session_mbit: f64,
    /// Idle registrations held throughout.
    #[arg(long, default_value_t = 1000)]
    pub registrations: usize,
    /// Ping-pong requests per second (64-byte frames).
    #[arg(long, default_value_t = 200)]
    pub ping_rate: u32,
    /// Sessions opened and closed per second.
    #[arg(long, default_value_t = 20)]
    pub churn_rate: u32,
}

/// Planned time, for the progress bar.
pub fn planned(_args: &SoakArgs, common: &super::Common) -> Duration {
    common.duration
}

/// Runs the scenario.
pub async fn run(run: &Run, args: &SoakArgs) -> Result<Report> {
    let probe = run.target.relay_probe();
    let rss = || probe.and_then(|p| p.rss_bytes().ok());
    let relay_start = rss();
    run.progress.message("registering idle hosts");
    let pool = RegistrationPool::new(run.target.relay_url(), 8).await?;
    let mut held = Vec::new();
    let errors = AtomicU64::new(0);
    for _ in 0..args.registrations {
        match pool.register().await {
            Ok(registration) => held.push(registration),
            Err(_) => {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let fixture = Fixture::start(
        Some(run.target.relay_url()),
        run.target.splice_addr(),
        2,
        2,
        &[Transport::Quic],
        run.common.resume_window,
    )
    .await?;
    let mut bulk = Vec::new();
    for i in 0..args.sessions {
        bulk.push(fixture.open(Path::RELAY_QUIC, i).await?);
    }
    let ping_session = fixture.open(Path::RELAY_QUIC, 0).await?;
    tokio::spawn(echo(ping_session.host));

    let origin = Instant::now();
    let end = run.common.duration;
    let received = AtomicU64::new(0);
    let churned = AtomicU64::new(0);
    let latency = Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?);
    let second = Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?);
    let bytes_per_s = args.session_mbit * 1e6 / 8.0;

    let bulk_tasks = super::throughput::join_all(bulk.into_iter().flat_map(|session| {
        let (player_read, player_write) = tokio::io::split(session.player);
        let (host_read, host_write) = tokio::io::split(session.host);
        [
            paced(
                player_write,
                host_read,
                bytes_per_s,
                origin,
                end,
                &received,
                &errors,
            ),
            paced(
                host_write,
                player_read,
                bytes_per_s,
                origin,
                end,
                &received,
                &errors,
            ),
        ]
    }));
    let ping = async {
        let (mut reader, mut writer) = tokio::io::split(ping_session.player);
        let interval = Duration::from_secs_f64(1.0 / f64::from(args.ping_rate.max(1)));
        let mut ticker = tokio::time::interval(interval);
        let mut frame = [0u8; 64];
        while origin.elapsed() < end {
            ticker.tick().await;
            let sent = Instant::now();
            let ok = async {
                writer.write_all(&frame).await?;
                writer.flush().await?;
                reader.read_exact(&mut frame).await?;
                Ok::<_, std::io::Error>(())
            };
            match tokio::time::timeout(Duration::from_secs(5), ok).await {
                Ok(Ok(())) => {
                    let rtt = sent.elapsed().as_nanos().max(1) as u64;
                    for h in [&latency, &second] {
                        if let Ok(mut h) = h.lock() {
                            let _ = h.record(rtt);
                        }
                    }
                }
                _ => {
                    errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
        let _ = writer.shutdown().await;
    };
    let churn = async {
        let interval = Duration::from_secs_f64(1.0 / f64::from(args.churn_rate.max(1)));
        let mut ticker = tokio::time::interval(interval);
        let mut i = 0;
        while origin.elapsed() < end {
            ticker.tick().await;
            i += 1;
            let opened = tokio::time::timeout(
                Duration::from_secs(15),
                fixture.open_echo(Path::RELAY_QUIC, i),
            )
            .await;
            match opened {
                Ok(Ok(mut stream)) => {
                    let _ = stream.shutdown().await;
                    churned.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    };
    let sampler = async {
        let mut memory = Vec::new();
        let mut rates = Vec::new();
        let mut p99s = Vec::new();
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        ticker.tick().await;
        let mut last = 0;
        while origin.elapsed() < end {
            ticker.tick().await;
            run.progress.advance(Duration::from_secs(1));
            let t = origin.elapsed().as_secs_f64();
            if let Some(bytes) = rss() {
                memory.push((t, bytes as f64 / (1 << 20) as f64));
            }
            let now = received.load(Ordering::Relaxed);
            rates.push((t, gbps(now - last, 1.0)));
            last = now;
            if let Ok(mut h) = second.lock() {
                if !h.is_empty() {
                    p99s.push((t, h.value_at_quantile(0.99) as f64 / 1000.0));
                }
                h.reset();
            }
            run.progress.message(format!(
                "soak: {} errors, relay RSS {} MiB",
                errors.load(Ordering::Relaxed),
                cell(rss().map(|b| b as f64 / (1 << 20) as f64), 1)
            ));
        }
        (memory, rates, p99s)
    };
    let (_, (), (), (memory, rates, p99s)) = tokio::join!(bulk_tasks, ping, churn, sampler);
    let relay_end = rss();
    let seconds = origin.elapsed().as_secs_f64();
    let lost = held.iter().filter(|r| !r.is_alive()).count() as u64;
    errors.fetch_add(lost, Ordering::Relaxed);
    for registration in held.drain(..) {
        registration.close();
    }
    pool.close().await;
    fixture.shutdown().await;

    let params = json!({
        "sessions": args.sessions, "session_mbit": args.session_mbit,
        "registrations": args.registrations, "ping_rate": args.ping_rate,
        "churn_rate": args.churn_rate, "duration_s": run.common.duration.as_secs_f64(),
    });
    let mut report = run.report("soak", params);
    let errors = errors.load(Ordering::Relaxed);
    let latency = latency.into_inner().ok().context("latency lock")?;
    let rss_max = memory.iter().map(|(_, mib)| *mib).reduce(f64::max);
    let mib = |b: Option<u64>| b.map(|b| b as f64 / (1 << 20) as f64);
    let p99 = (!latency.is_empty()).then(|| latency.value_at_quantile(0.99) as f64 / 1000.0);
    let moved = received.load(Ordering::Relaxed);
    report.figure("errors", Some(errors as f64));
    report.figure("relay_rss_start_bytes", relay_start.map(|b| b as f64));
    report.figure("relay_rss_max_bytes", rss_max.map(|m| m * (1 << 20) as f64));
    report.figure("relay_rss_end_bytes", relay_end.map(|b| b as f64));
    report.figure("relay_p99_us", p99);
    report.figure("bulk_gbps", Some(gbps(moved, seconds)));
    report.figure(
        "sessions_churned",
        Some(churned.load(Ordering::Relaxed) as f64),
    );
    let mut table = Table::new(&["figure", "value"]);
    table.row(vec!["errors (must be 0)".into(), errors.to_string()]);
    table.row(vec![
        "relay RSS start / max / end, MiB".into(),
        format!(
            "{} / {} / {}",
            cell(mib(relay_start), 1),
            cell(rss_max, 1),
            cell(mib(relay_end), 1)
        ),
    ]);
    table.row(vec![
        "bulk Gbit/s (all sessions, both ways)".into(),
        cell(Some(gbps(moved, seconds)), 3),
    ]);
    table.row(vec!["ping p99 µs".into(), cell(p99, 1)]);
    table.row(vec![
        "sessions opened and closed".into(),
        churned.load(Ordering::Relaxed).to_string(),
    ]);
    table.row(vec![
        "idle registrations held".into(),
        args.registrations.to_string(),
    ]);
    report.table = table;
    report.series.push(Series {
        name: "relay RSS".into(),
        unit: "MiB".into(),
        points: memory,
    });
    report.series.push(Series {
        name: "bulk".into(),
        unit: "Gbit/s".into(),
        points: rates,
    });
    report.series.push(Series {
        name: "ping p99".into(),
        unit: "µs".into(),
        points: p99s,
    });
    if errors > 0 {
        report.note(format!("{errors} errors: the soak failed"));
    }
    Ok(report)
}

/// One paced direction: writes `rate` bytes per second until `end`, then finishes;
/// the reader counts into `received`.
async fn paced(
    mut writer: tokio::io::WriteHalf<BoxStream>,
    mut reader: tokio::io::ReadHalf<BoxStream>,
    rate: f64,
    origin: Instant,
    end: Duration,
    received: &AtomicU64,
    errors: &AtomicU64,
) {
    let write = async {
        let chunk = vec![0x5au8; 16 * 1024];
        let mut sent = 0f64;
        while origin.elapsed() < end {
            if sent > rate * origin.elapsed().as_secs_f64() {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            if writer.write_all(&chunk).await.is_err() {
                errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
            sent += chunk.len() as f64;
        }
        if writer.shutdown().await.is_err() {
            errors.fetch_add(1, Ordering::Relaxed);
        }
    };
    let read = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    received.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(_) => {
                    errors.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
    };
    tokio::join!(write, read);
}
