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
//! (QUIC only, whatever `--transport` says). When the relay is one member of a pool
//! (`--relay` naming any member, or `--pool`), a registration whose host id another
//! member owns follows the redirect there, and the redirects per registration are
//! reported.
//!
//! Pools (`--pool N`): the harness starts N relays as one pool on loopback; the
//! relay under test is member 0 and every host is one it owns (keys are drawn until
//! placement gives member 0). Each relayed path is then measured twice in the same
//! run: entering at the owner (the plain `relay_*` keys), and entering at member 1,
//! which redirects to the owner (`*_redirected`). The members' own counters say how
//! many redirects each session took, each member's CPU is read apart (owner and
//! redirecting member), and one `Connect` answered by a `Redirect` is timed alone
//! over an open QUIC connection: the round trip a redirect adds at the least.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use blindrelay_client::{HostId, RelayUrl};
use blindrelay_protocol::{placement, ControlMessage};
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use super::{CpuMeter, Run};
use crate::fixture::{Fixture, Path, PathKind};
use crate::measure::ProcessProbe;
use crate::raw::RegistrationPool;
use crate::relay_process::PoolStats;
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
    /// Start this many relays (2 or more) as one pool on loopback, and measure each
    /// relayed path also entering at a member that redirects to the host's owner.
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = pool_size)]
    pub pool: usize,
}

/// `--pool`: 0 (no pool) or 2 to [`MAX_POOL`] members.
fn pool_size(text: &str) -> Result<usize, String> {
    let n: usize = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    match n {
        0 | 2..=MAX_POOL => Ok(n),
        _ => Err(format!("a pool has 2 to {MAX_POOL} members (0: no pool)")),
    }
}

/// The most relay processes `--pool` starts on one machine.
pub const MAX_POOL: usize = 8;

/// How many times one `Connect` answered by a `Redirect` is timed alone.
const EXCHANGE_SAMPLES: usize = 200;

impl SetupArgs {
    /// The paths measured, in order; with `--pool`, each relayed path is followed by
    /// the same path entering at a member that redirects.
    pub fn paths(&self) -> Vec<Path> {
        let mut paths = Vec::new();
        for path in PathKind::expand(&self.paths, &self.transports.legs(false)) {
            paths.push(path);
            if let (Path::Relay(legs), true) = (path, self.pool >= 2) {
                paths.push(Path::Redirected(legs));
            }
        }
        paths
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
    /// Set-ups started, inside the measured window or not.
    attempts: u64,
    /// CPU seconds of the relay under test in the measured window.
    relay_cpu: Option<f64>,
    /// CPU seconds of the pool member sessions entered at, when it is another.
    entry_cpu: Option<f64>,
    /// `Connect`s the pool's members redirected during the phase.
    redirects: Option<u64>,
    histogram: Histogram<u64>,
    errors: u64,
}

/// Runs the scenario.
pub async fn run(run: &Run, args: &SetupArgs) -> Result<Report> {
    let pool = run.target.pool();
    let names: Vec<&str> = pool
        .map(|p| p.names().iter().map(String::as_str).collect())
        .unwrap_or_default();
    let owner = names.first().copied();
    // With a pool, every host is one the relay under test owns, so a session that
    // enters elsewhere is redirected there.
    let mut fixture = Fixture::start_with(
        Some(run.target.relay_url()),
        run.target.splice_addr(),
        args.hosts,
        args.players,
        &args.transports.transports(),
        run.common.resume_window,
        |host_id| owner.is_none() || placement::owner(host_id, &names).ok().flatten() == owner,
    )
    .await?;
    let entry = pool.and_then(|p| p.url(1)).cloned();
    if let Some(entry) = &entry {
        fixture.enter_pool_at(entry)?;
    }
    let entry_probe = pool.and_then(|p| p.probe(1));
    let paths = args.paths();
    // Rounds go over all paths in turn, so a noisy moment hits every path alike.
    let mut rounds: Vec<Vec<Counted>> = paths.iter().map(|_| Vec::new()).collect();
    for round in 0..args.rounds.max(1) {
        for (&path, counted) in paths.iter().zip(&mut rounds) {
            run.progress
                .message(format!("sessions, {}, round {}", path.label(), round + 1));
            let probe = path.is_relay().then(|| run.target.relay_probe()).flatten();
            let entry_probe = entry_probe.filter(|_| path.is_relay());
            let fixture = &fixture;
            let before = pool_stats(run)?;
            let mut phase = count(run, [probe, entry_probe], args.sessions, |i| async move {
                let mut stream = fixture.open_echo(path, i).await?;
                let _ = stream.shutdown().await;
                Ok(())
            })
            .await?;
            phase.redirects = redirects_between(before.as_deref(), pool_stats(run)?.as_deref());
            counted.push(phase);
        }
    }
    // One redirect alone, over a connection already open: the least it can add.
    // (Over QUIC whatever `--transport` says; any host id: member 1 owns none.)
    let host_id = args
        .transports
        .transports()
        .first()
        .and_then(|&t| fixture.host_ids(t).first().copied());
    let exchange = match (&entry, host_id) {
        (Some(entry), Some(host_id)) => {
            run.progress.message("one redirect alone");
            Some(redirect_exchange(entry, &host_id, EXCHANGE_SAMPLES).await?)
        }
        _ => None,
    };
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
        let mut counted = count(
            run,
            [run.target.relay_probe(), None],
            args.sessions,
            |_| async move {
                pool.register().await?.close();
                Ok(())
            },
        )
        .await?;
        counted.redirects = Some(pool.redirects());
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
        "pool": args.pool,
    });
    let mut report = run.report("setup", params);
    let mut headers = vec![
        "what",
        "per second",
        "p50 ms",
        "p99 ms",
        "relay CPU ms each",
        "per relay CPU s",
    ];
    if pool.is_some() {
        headers.extend(["redirects each", "entry member CPU ms each"]);
    }
    let mut table = Table::new(&headers);
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
        let cpu_each = per_each_ms(c.relay_cpu, c.count);
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
        let redirects_each = c.redirects.map(|n| n as f64 / c.attempts.max(1) as f64);
        if c.redirects.is_some() {
            report.figure(&format!("{prefix}_redirects_each"), redirects_each);
        }
        let mut cells = vec![
            label,
            cell(Some(c.per_s), 0),
            cell(ms(&c.histogram, 0.5), 2),
            cell(ms(&c.histogram, 0.99), 2),
            cell(cpu_each, 3),
            cell(per_cpu, 0),
        ];
        if pool.is_some() {
            cells.push(cell(redirects_each, 2));
            cells.push(cell(per_each_ms(c.entry_cpu, c.count), 3));
        }
        table.row(cells);
    }
    if pool.is_some() {
        for (path, redirected) in &sessions {
            let Path::Redirected(legs) = *path else {
                continue;
            };
            let Some((_, owner)) = sessions.iter().find(|(p, _)| *p == Path::Relay(legs)) else {
                continue;
            };
            let cost = RedirectCost::of(
                &phase_summary(owner),
                &phase_summary(redirected),
                exchange.as_ref().and_then(|h| ms(h, 0.5)),
            );
            cost.file(&mut report, &path.key());
        }
        if let Some(h) = &exchange {
            report.figure("redirect_exchange_p50_ms", ms(h, 0.5));
            report.figure("redirect_exchange_p99_ms", ms(h, 0.99));
        }
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
    if let Some(pool) = pool {
        report.note(format!(
            "pool of {} relays: 'relay' rows enter at the hosts' owner (the relay under test, \
             whose CPU is 'relay CPU'); 'redirected once' rows enter at another member, which \
             answers Redirect ('entry member CPU'), then go to the owner on the player's \
             connection to it; 'redirects each' is what the members counted per set-up started",
            pool.names().len()
        ));
        if let Some(h) = &exchange {
            report.note(format!(
                "one Connect answered by Redirect, timed alone over an open QUIC connection \
                 ({} samples): p50 {} ms; added round trips = redirected minus owner p50, \
                 divided by it",
                h.len(),
                cell(ms(h, 0.5), 3)
            ));
        }
    }
    if let Some(redirects) = registrations.as_ref().and_then(|c| c.redirects) {
        if redirects > 0 {
            report.note(
                "registrations entered at one pool member; those whose host id another \
                 member owns followed its redirect (new connection each)",
            );
        }
    }
    report.table = table;
    Ok(report)
}

/// Milliseconds each of `count` took of `total` seconds.
fn per_each_ms(total: Option<f64>, count: u64) -> Option<f64> {
    total
        .filter(|_| count > 0)
        .map(|total| total * 1000.0 / count as f64)
}

/// A histogram's value at quantile `q`, in milliseconds.
fn ms(h: &Histogram<u64>, q: f64) -> Option<f64> {
    (!h.is_empty()).then(|| h.value_at_quantile(q) as f64 / 1e6)
}

/// The figures of one phase a redirect's cost is worked out from.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct PhaseSummary {
    per_s: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    /// Relay CPU ms per set-up: the owner's, and the member entered at's.
    owner_cpu_ms: Option<f64>,
    entry_cpu_ms: Option<f64>,
    /// Redirects the members counted per set-up started.
    redirects_each: Option<f64>,
}

fn phase_summary(c: &Counted) -> PhaseSummary {
    PhaseSummary {
        per_s: c.per_s,
        p50_ms: ms(&c.histogram, 0.5),
        p99_ms: ms(&c.histogram, 0.99),
        owner_cpu_ms: per_each_ms(c.relay_cpu, c.count),
        entry_cpu_ms: per_each_ms(c.entry_cpu, c.count),
        redirects_each: c.redirects.map(|n| n as f64 / c.attempts.max(1) as f64),
    }
}

/// What entering a pool at a member that redirects costs, against entering at the
/// owner, from two phases of the same run.
#[derive(Debug, Clone, Copy, PartialEq)]
struct RedirectCost {
    /// Redirected set-ups per second over those at the owner.
    vs_owner: Option<f64>,
    /// Latency added by the redirect, p50 and p99.
    added_p50_ms: Option<f64>,
    added_p99_ms: Option<f64>,
    /// `added_p50_ms` in units of one Connect-Redirect exchange timed alone.
    added_round_trips: Option<f64>,
    /// Redirects per set-up, as the members counted them.
    redirects_each: Option<f64>,
    /// Relay CPU ms per set-up: the redirecting member's, and the owner's with and
    /// without a redirect before it.
    entry_cpu_ms: Option<f64>,
    owner_cpu_ms: Option<f64>,
    owner_cpu_ms_direct_entry: Option<f64>,
}

impl RedirectCost {
    fn of(owner: &PhaseSummary, redirected: &PhaseSummary, exchange_ms: Option<f64>) -> Self {
        let diff = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a - b);
        let added_p50_ms = diff(redirected.p50_ms, owner.p50_ms);
        Self {
            vs_owner: ratio(Some(redirected.per_s), Some(owner.per_s)),
            added_p50_ms,
            added_p99_ms: diff(redirected.p99_ms, owner.p99_ms),
            added_round_trips: ratio(added_p50_ms, exchange_ms.filter(|ms| *ms > 0.0)),
            redirects_each: redirected.redirects_each,
            entry_cpu_ms: redirected.entry_cpu_ms,
            owner_cpu_ms: redirected.owner_cpu_ms,
            owner_cpu_ms_direct_entry: owner.owner_cpu_ms,
        }
    }

    /// Files the figures under `key` (a redirected path's, `relay_quic_redirected`).
    fn file(&self, report: &mut Report, key: &str) {
        report.figure(&format!("{key}_vs_owner_sessions"), self.vs_owner);
        report.figure(&format!("{key}_added_p50_ms"), self.added_p50_ms);
        report.figure(&format!("{key}_added_p99_ms"), self.added_p99_ms);
        report.figure(&format!("{key}_added_round_trips"), self.added_round_trips);
        report.figure(&format!("{key}_entry_cpu_ms_each"), self.entry_cpu_ms);
        report.figure(&format!("{key}_owner_cpu_ms_each"), self.owner_cpu_ms);
        report.figure(
            &format!("{key}_owner_cpu_ms_each_without_redirect"),
            self.owner_cpu_ms_direct_entry,
        );
    }
}

/// Every pool member's counters, when the harness runs a pool. Blocks this worker
/// thread for the child's reply, between phases.
fn pool_stats(run: &Run) -> Result<Option<Vec<PoolStats>>> {
    match run.target.pool() {
        Some(pool) => tokio::task::block_in_place(|| pool.stats(&run.target)).map(Some),
        None => Ok(None),
    }
}

/// `Connect`s all members redirected between two readings of their counters.
fn redirects_between(before: Option<&[PoolStats]>, after: Option<&[PoolStats]>) -> Option<u64> {
    let (before, after) = (before?, after?);
    if before.len() != after.len() {
        return None;
    }
    Some(
        after
            .iter()
            .zip(before)
            .map(|(after, before)| after.since(*before).redirects_connect)
            .sum(),
    )
}

/// Times `samples` `Connect`s for `host_id` that the pool member at `entry` answers
/// with a `Redirect`, one at a time over one QUIC connection opened beforehand
/// (and warmed by a tenth as many untimed): a redirect's round trip, relay work
/// included, without the load of the set-up phases. Bounded by 10 s in all.
async fn redirect_exchange(
    entry: &RelayUrl,
    host_id: &HostId,
    samples: usize,
) -> Result<Histogram<u64>> {
    let connection = blindrelay_client::internal::connect_relay_raw(entry).await?;
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let frame = ControlMessage::Connect {
        host_id: *host_id,
        redirects: 0,
    }
    .to_frame();
    let measured = tokio::time::timeout(Duration::from_secs(10), async {
        for i in 0..samples + samples / 10 {
            let started = Instant::now();
            let (mut send, mut recv) = connection.open_bi().await?;
            send.write_all(&frame).await?;
            let answer = blindrelay_client::internal::read_control(&mut recv).await?;
            let took = started.elapsed();
            if !matches!(answer, ControlMessage::Redirect { .. }) {
                bail!("the pool member answered {answer:?}, not a Redirect");
            }
            let _ = send.finish();
            if i >= samples / 10 {
                histogram.record(took.as_nanos().max(1) as u64)?;
            }
        }
        Ok(())
    })
    .await;
    connection.close(0u32.into(), b"done");
    measured.context("timing redirects took over 10 s")??;
    Ok(histogram)
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
    probes: [Option<&ProcessProbe>; 2],
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
    let cpu_at_warmup: Mutex<Option<[CpuMeter; 2]>> = Mutex::new(None);
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
                        *cpu = Some(probes.map(CpuMeter::start));
                    }
                }
            }
        }
    };
    let ((), _) = tokio::join!(
        progress,
        super::throughput::join_all((0..workers.max(1)).map(worker))
    );
    let [relay_cpu, entry_cpu] = cpu_at_warmup
        .lock()
        .ok()
        .and_then(|cpu| {
            cpu.as_ref()
                .map(|meters| meters.each_ref().map(CpuMeter::elapsed))
        })
        .unwrap_or_default();
    let count = counted.load(Ordering::Relaxed);
    let histogram = histogram
        .into_inner()
        .ok()
        .context("histogram lock poisoned")?;
    Ok(Counted {
        per_s: count as f64 / run.common.duration.as_secs_f64(),
        count,
        attempts: next.load(Ordering::Relaxed),
        relay_cpu,
        entry_cpu,
        redirects: None,
        histogram,
        errors: errors.load(Ordering::Relaxed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{Legs, Transport};
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SetupArgs,
    }

    fn parse(args: &[&str]) -> Result<SetupArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("setup").chain(args.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn a_pool_adds_a_redirected_path_after_each_relayed_one() {
        let quic = Legs::both(Transport::Quic);
        let tcp = Legs::both(Transport::Tcp);
        let plain = parse(&["--transport", "quic,tcp"]).unwrap();
        assert_eq!(
            plain.paths(),
            vec![
                Path::Direct,
                Path::Splice,
                Path::Relay(quic),
                Path::Relay(tcp)
            ]
        );
        let pooled =
            parse(&["--pool", "3", "--transport", "quic,tcp", "--paths", "relay"]).unwrap();
        assert_eq!(
            pooled.paths(),
            vec![
                Path::Relay(quic),
                Path::Redirected(quic),
                Path::Relay(tcp),
                Path::Redirected(tcp)
            ]
        );
        assert_eq!(Path::Redirected(quic).key(), "relay_quic_redirected");
        assert!(Path::Redirected(tcp).is_relay());
    }

    #[test]
    fn a_pool_has_two_to_eight_members() {
        assert_eq!(parse(&["--pool", "2"]).unwrap().pool, 2);
        assert_eq!(parse(&["--pool", "8"]).unwrap().pool, 8);
        assert_eq!(parse(&[]).unwrap().pool, 0);
        for bad in ["1", "9", "-1", "three"] {
            assert!(parse(&["--pool", bad]).is_err(), "--pool {bad}");
        }
    }

    #[test]
    fn redirects_of_a_phase_are_summed_over_the_members() {
        let stats = |connect: &[u64]| -> Vec<PoolStats> {
            connect
                .iter()
                .map(|&redirects_connect| PoolStats {
                    members: 3,
                    redirects_connect,
                    redirects_register: 9,
                })
                .collect()
        };
        let before = stats(&[5, 100, 0]);
        let after = stats(&[5, 160, 2]);
        assert_eq!(redirects_between(Some(&before), Some(&after)), Some(62));
        assert_eq!(redirects_between(None, Some(&after)), None);
        // A member missing from one reading: no figure rather than a wrong one.
        assert_eq!(redirects_between(Some(&before[..2]), Some(&after)), None);
    }

    #[test]
    fn a_redirect_costs_the_difference_between_the_two_entries() {
        let owner = PhaseSummary {
            per_s: 2000.0,
            p50_ms: Some(4.0),
            p99_ms: Some(9.0),
            owner_cpu_ms: Some(0.20),
            entry_cpu_ms: Some(0.0),
            redirects_each: Some(0.0),
        };
        let redirected = PhaseSummary {
            per_s: 1600.0,
            p50_ms: Some(4.5),
            p99_ms: Some(10.0),
            owner_cpu_ms: Some(0.21),
            entry_cpu_ms: Some(0.05),
            redirects_each: Some(1.0),
        };
        let cost = RedirectCost::of(&owner, &redirected, Some(0.25));
        assert_eq!(cost.vs_owner, Some(0.8));
        assert_eq!(cost.added_p50_ms, Some(0.5));
        assert_eq!(cost.added_p99_ms, Some(1.0));
        assert_eq!(cost.added_round_trips, Some(2.0));
        assert_eq!(cost.redirects_each, Some(1.0));
        assert_eq!(cost.entry_cpu_ms, Some(0.05));
        assert_eq!(cost.owner_cpu_ms, Some(0.21));
        assert_eq!(cost.owner_cpu_ms_direct_entry, Some(0.20));
        // Nothing timed alone, or nothing measured: no figure, not a division by 0.
        let unknown = RedirectCost::of(&owner, &redirected, Some(0.0));
        assert_eq!(unknown.added_round_trips, None);
        let empty = RedirectCost::of(&PhaseSummary::default(), &redirected, None);
        assert_eq!(empty.vs_owner, None);
        assert_eq!(empty.added_p50_ms, None);
    }

    #[test]
    fn cpu_per_set_up_needs_set_ups() {
        assert_eq!(per_each_ms(Some(0.5), 1000), Some(0.5));
        assert_eq!(per_each_ms(Some(0.5), 0), None);
        assert_eq!(per_each_ms(None, 10), None);
    }
}
