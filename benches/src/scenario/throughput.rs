//! `throughput`: bulk data each way through S concurrent sessions, on each path in
//! turn (direct, TCP splice, relay on each `--transport`, and with `--mixed` on
//! mixed pairs), in the same run and with the same payload.
//!
//! Each session has a writer and a reader at both ends. Writers send 64 KiB writes
//! until the phase ends, then finish; readers count what arrives. The first
//! `--warmup` of each phase is not counted; the rate is the bytes received by all
//! readers over the measured window. The relay's CPU seconds over the same window,
//! divided by the GiB it forwarded (both directions), is `relay_cpu_s_per_gib`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

use super::{gbps, gib, CpuMeter, Run};
use crate::fixture::{BoxStream, Fixture, Path, PathKind};
use crate::measure::ProcessProbe;
use crate::report::{cell, median, ratio, Report, Series, Table};
use crate::transport::TransportArgs;

/// Knobs of the throughput scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct ThroughputArgs {
    /// Host agents (H); session i goes to host i mod H.
    #[arg(long, default_value_t = 1)]
    pub hosts: usize,
    /// Players (P), each with its own relay connection; session i uses player i mod P.
    #[arg(long, default_value_t = 1)]
    pub players: usize,
    /// Concurrent sessions (S).
    #[arg(long, default_value_t = 1)]
    pub sessions: usize,
    /// Which way bulk data flows: both, up (player to host) or down (host to player).
    #[arg(long, value_enum, default_value_t = Direction::Both)]
    pub direction: Direction,
    /// Size of each application write, bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    pub write_size: usize,
    /// Paths to measure, in order; `relay` once per transport.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = PathKind::ALL)]
    pub paths: Vec<PathKind>,
    #[command(flatten)]
    pub transports: TransportArgs,
    /// Also measure every mixed pair of the transports (with `--transport quic,tcp`:
    /// a QUIC host with a TLS/TCP player, and the other way round).
    #[arg(long)]
    pub mixed: bool,
    /// Rounds over all paths; figures are medians of the rounds.
    #[arg(long, default_value_t = 1)]
    pub rounds: usize,
}

impl ThroughputArgs {
    /// The paths measured, in order.
    pub fn paths(&self) -> Vec<Path> {
        PathKind::expand(&self.paths, &self.transports.legs(self.mixed))
    }
}

/// Which way bulk data flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Both ways at once.
    Both,
    /// Player to host.
    Up,
    /// Host to player.
    Down,
}

/// What one phase measured.
pub(crate) struct Phase {
    pub(crate) bytes: u64,
    pub(crate) seconds: f64,
    pub(crate) per_session_gbps: Vec<f64>,
    pub(crate) process_cpu: Option<f64>,
    pub(crate) ends_cpu: Option<f64>,
    pub(crate) errors: u64,
    /// The first few errors, for the notes.
    pub(crate) first_errors: Vec<String>,
    /// How often its sessions resumed on a new stream, all together.
    pub(crate) resumes: u64,
    pub(crate) series: Vec<(f64, f64)>,
}

/// Planned time, for the progress bar.
pub fn planned(args: &ThroughputArgs, run: &super::Common) -> Duration {
    (run.duration + run.warmup) * (args.paths().len() * args.rounds.max(1)) as u32
}

/// Runs the scenario.
pub async fn run(run: &Run, args: &ThroughputArgs) -> Result<Report> {
    let fixture = Fixture::start(
        Some(run.target.relay_url()),
        run.target.splice_addr(),
        args.hosts,
        args.players,
        &args.transports.transports(),
        run.common.resume_window,
    )
    .await?;
    let paths = args.paths();
    let mut phases: Vec<(Path, Phase)> = Vec::new();
    for round in 0..args.rounds.max(1) {
        for &path in &paths {
            run.progress
                .message(format!("{} round {}", path.label(), round + 1));
            let probe = match path {
                Path::Relay(_) | Path::Redirected(_) => run.target.relay_probe(),
                Path::Splice => Some(run.target.splice_probe()),
                Path::Direct => None,
            };
            let phase = phase(run, &fixture, path, args, probe).await?;
            phases.push((path, phase));
        }
    }
    fixture.shutdown().await;

    let params = json!({
        "hosts": args.hosts, "players": args.players, "sessions": args.sessions,
        "direction": args.direction, "write_size": args.write_size,
        "paths": paths.iter().map(|p| p.key()).collect::<Vec<_>>(),
        "transports": args.transports.transports(), "mixed": args.mixed,
        "rounds": args.rounds, "duration_s": run.common.duration.as_secs_f64(),
        "warmup_s": run.common.warmup.as_secs_f64(),
        "splice_buffer": run.common.splice_buffer,
    });
    let mut report = run.report("throughput", params);
    let mut table = Table::new(&[
        "path",
        "aggregate Gbit/s",
        "per session Gbit/s (min-max)",
        "process CPU s/GiB",
        "ends CPU s/GiB",
        "relay is",
    ]);
    let mut errors = 0;
    let mut resumes = 0;
    let agg = |path: Path| -> Option<f64> {
        let rates: Vec<f64> = phases
            .iter()
            .filter(|(p, _)| *p == path)
            .map(|(_, ph)| gbps(ph.bytes, ph.seconds))
            .collect();
        median(&rates)
    };
    // Process CPU seconds per GiB forwarded: the median of the path's rounds.
    let cpu_per_gib_of = |path: Path| -> Option<f64> {
        median(
            &phases
                .iter()
                .filter(|(p, _)| *p == path)
                .filter_map(|(_, ph)| Some(ph.process_cpu? / gib(ph.bytes)))
                .collect::<Vec<_>>(),
        )
    };
    let (direct, splice) = (agg(Path::Direct), agg(Path::Splice));
    let splice_cpu = cpu_per_gib_of(Path::Splice);
    for &path in &paths {
        let mine: Vec<&Phase> = phases
            .iter()
            .filter(|(p, _)| *p == path)
            .map(|(_, ph)| ph)
            .collect();
        if mine.is_empty() {
            report.figure(&format!("{}_gbps", path.key()), None);
            continue;
        }
        errors += mine.iter().map(|ph| ph.errors).sum::<u64>();
        resumes += mine.iter().map(|ph| ph.resumes).sum::<u64>();
        for ph in &mine {
            for message in &ph.first_errors {
                report.note(format!("{}: {message}", path.label()));
            }
        }
        let aggregate = agg(path);
        let per_session: Vec<f64> = mine
            .iter()
            .flat_map(|ph| ph.per_session_gbps.clone())
            .collect();
        let per_mean = if per_session.is_empty() {
            None
        } else {
            Some(per_session.iter().sum::<f64>() / per_session.len() as f64)
        };
        let min = per_session.iter().copied().reduce(f64::min);
        let max = per_session.iter().copied().reduce(f64::max);
        let cpu_per_gib = cpu_per_gib_of(path);
        let ends_per_gib = median(
            &mine
                .iter()
                .filter_map(|ph| Some(ph.ends_cpu? / gib(ph.bytes)))
                .collect::<Vec<_>>(),
        );
        let key = path.key();
        report.figure(&format!("{key}_gbps"), aggregate);
        report.figure(&format!("{key}_per_session_gbps"), per_mean);
        report.figure(&format!("{key}_per_session_min_gbps"), min);
        report.figure(&format!("{key}_per_session_max_gbps"), max);
        report.figure(&format!("{key}_ends_cpu_s_per_gib"), ends_per_gib);
        if path != Path::Direct {
            report.figure(&format!("{key}_cpu_s_per_gib"), cpu_per_gib);
        }
        let versus = if path.is_relay() {
            let cpu_vs_splice = ratio(cpu_per_gib, splice_cpu);
            report.figure(&format!("{key}_vs_direct"), ratio(aggregate, direct));
            report.figure(&format!("{key}_vs_splice"), ratio(aggregate, splice));
            report.figure(&format!("{key}_cpu_vs_splice"), cpu_vs_splice);
            let mut versus = format!(
                "{} of direct, {} of splice",
                percent(ratio(aggregate, direct)),
                percent(ratio(aggregate, splice))
            );
            if let Some(times) = cpu_vs_splice {
                versus.push_str(&format!(", {times:.1}× splice CPU/GiB"));
            }
            versus
        } else {
            String::new()
        };
        table.row(vec![
            path.label(),
            cell(aggregate, 2),
            format!("{} ({}-{})", cell(per_mean, 3), cell(min, 3), cell(max, 3)),
            cell(
                if path == Path::Direct {
                    None
                } else {
                    cpu_per_gib
                },
                2,
            ),
            cell(ends_per_gib, 2),
            versus,
        ]);
        for (i, ph) in mine.iter().enumerate() {
            report.series.push(Series {
                name: format!("{} round {}", path.key(), i + 1),
                unit: "Gbit/s".to_owned(),
                points: ph.series.clone(),
            });
        }
    }
    // The first relayed path also under the keys of runs before transports.
    if let Some(first) = paths.iter().find(|p| p.is_relay()) {
        report.alias(&first.key(), "relay");
    }
    report.figure("errors", Some(errors as f64));
    if errors > 0 {
        report.note(format!("{errors} session errors"));
    }
    report.figure("resumes", Some(resumes as f64));
    if resumes > 0 {
        report.note(format!(
            "{resumes} session resumes (a stream lost and the session taken on over a new one)"
        ));
    }
    report.note(
        "process CPU: the relay process (relay rows) or the splice process (TCP splice row); \
         ends CPU: the harness process with every host and player",
    );
    report.table = table;
    Ok(report)
}

fn percent(value: Option<f64>) -> String {
    value.map_or("-".to_owned(), |v| format!("{:.0}%", v * 100.0))
}

/// One phase: open the sessions, load them, measure, close them.
pub(crate) async fn phase(
    run: &Run,
    fixture: &Fixture,
    path: Path,
    args: &ThroughputArgs,
    probe: Option<&ProcessProbe>,
) -> Result<Phase> {
    let sessions = args.sessions.max(1);
    // The first session of each player and host pair alone, so that each player
    // opens one direct connection per host: sessions racing to open the first one
    // may each open their own, and such an extra connection is closed abruptly when
    // its last session drops it, cutting off what the host had not yet read.
    let first = sessions.min(args.players.max(args.hosts).max(1));
    let mut opened = Vec::with_capacity(sessions);
    for i in 0..first {
        opened.push(fixture.open(path, i).await?);
    }
    // Then the rest at once.
    for result in join_all((first..sessions).map(|i| fixture.open(path, i))).await {
        opened.push(result?);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let counters: Vec<Arc<AtomicU64>> = (0..sessions).map(|_| Arc::default()).collect();
    let errors = Arc::new(Errors::default());
    let resumes: Vec<Arc<std::sync::atomic::AtomicU32>> = opened
        .iter()
        .map(|session| session.resumes.clone())
        .collect();
    let mut tasks = JoinSet::new();
    let up = args.direction != Direction::Down;
    let down = args.direction != Direction::Up;
    for (session, counter) in opened.into_iter().zip(&counters) {
        let (player_read, player_write) = tokio::io::split(session.player);
        let (host_read, host_write) = tokio::io::split(session.host);
        let size = args.write_size.max(1);
        spawn_pair(
            &mut tasks,
            up,
            player_write,
            host_read,
            size,
            &stop,
            counter,
            &errors,
        );
        spawn_pair(
            &mut tasks,
            down,
            host_write,
            player_read,
            size,
            &stop,
            counter,
            &errors,
        );
    }

    let total = || {
        counters
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let step = Duration::from_millis(100);
    let started = Instant::now();
    let mut last = (0.0, 0u64);
    let mut series = Vec::new();
    let mut ticker = tokio::time::interval(step);
    ticker.tick().await;
    let mut window_start = None;
    let ends = ProcessProbe::this_process();
    loop {
        ticker.tick().await;
        run.progress.advance(step);
        let t = started.elapsed().as_secs_f64();
        let bytes = total();
        let rate = gbps(bytes - last.1, t - last.0);
        series.push((t, rate));
        run.progress
            .message(format!("{}: {rate:.2} Gbit/s", path.label()));
        last = (t, bytes);
        if window_start.is_none() && started.elapsed() >= run.common.warmup {
            let per: Vec<u64> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
            window_start = Some((
                Instant::now(),
                bytes,
                per,
                CpuMeter::start(probe),
                CpuMeter::start(Some(&ends)),
            ));
        }
        if started.elapsed() >= run.common.warmup + run.common.duration {
            break;
        }
    }
    let end_bytes = total();
    let end_per: Vec<u64> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let Some((t0, bytes0, per0, cpu, ends_cpu)) = window_start else {
        anyhow::bail!("the phase ended before its warm-up");
    };
    let seconds = t0.elapsed().as_secs_f64();
    let process_cpu = cpu.elapsed();
    let ends_cpu = ends_cpu.elapsed();
    stop.store(true, Ordering::Relaxed);
    let drained = tokio::time::timeout(Duration::from_secs(30), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        errors.record("sessions did not end within 30 s of the phase".to_owned());
    }
    Ok(Phase {
        bytes: end_bytes - bytes0,
        seconds,
        per_session_gbps: end_per
            .iter()
            .zip(&per0)
            .map(|(end, start)| gbps(end - start, seconds))
            .collect(),
        process_cpu,
        ends_cpu,
        errors: errors.count.load(Ordering::Relaxed),
        first_errors: errors.first.lock().map(|f| f.clone()).unwrap_or_default(),
        resumes: resumes
            .iter()
            .map(|count| u64::from(count.load(Ordering::Relaxed)))
            .sum(),
        series,
    })
}

/// Runs futures concurrently and returns their outputs in order.
pub(crate) async fn join_all<F: std::future::Future>(
    futures: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// A writer that sends until `stop` (when `active`; otherwise it finishes at once)
/// and a reader that counts into `counter` until the end of the stream.
#[allow(clippy::too_many_arguments)]
fn spawn_pair(
    tasks: &mut JoinSet<()>,
    active: bool,
    mut writer: tokio::io::WriteHalf<BoxStream>,
    mut reader: tokio::io::ReadHalf<BoxStream>,
    size: usize,
    stop: &Arc<AtomicBool>,
    counter: &Arc<AtomicU64>,
    errors: &Arc<Errors>,
) {
    let (stop, counter) = (stop.clone(), counter.clone());
    let write_errors = errors.clone();
    tasks.spawn(async move {
        let payload = vec![0x5au8; size];
        while active && !stop.load(Ordering::Relaxed) {
            if let Err(err) = writer.write_all(&payload).await {
                write_errors.record(format!("write: {err}"));
                return;
            }
        }
        if let Err(err) = writer.shutdown().await {
            write_errors.record(format!("finish: {err}"));
        }
    });
    let errors = errors.clone();
    tasks.spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(err) => {
                    errors.record(format!("read: {err}"));
                    break;
                }
            }
        }
    });
}

/// Errors of a phase: how many, and the first few messages.
#[derive(Default)]
struct Errors {
    count: AtomicU64,
    first: std::sync::Mutex<Vec<String>>,
}

impl Errors {
    fn record(&self, message: String) {
        self.count.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = self.first.lock() {
            if first.len() < 3 {
                first.push(message);
            }
        }
    }
}
