//! `scale`: the relay's throughput on 1 thread and on N, in one run.
//!
//! For each count in `--workers` (default: 1, then the cores this machine has) the
//! harness starts a relay process of its own whose runtime has that many threads,
//! and measures the relayed paths of `throughput` through it: the same sessions,
//! hosts and players each time. Each count is reported with its aggregate Gbit/s,
//! the relay's CPU per GiB and how many of its cores it kept busy, and against the
//! first count: the speed-up, and the efficiency (speed-up per thread added).
//!
//! Where the machine has at least twice the largest count of cores, each relay is
//! pinned (`taskset`) to the first cores and the harness, with every host and
//! player, to the rest, so the load generator does not take the relay's cores. On
//! a smaller machine nothing is pinned, and the report says so: there the hosts and
//! players share the relay's cores, and the figures say how the relay behaves
//! beside its load, not how it scales.

use std::num::NonZeroUsize;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;

use super::throughput::{phase, Phase, ThroughputArgs};
use super::{gbps, gib, Run};
use crate::fixture::{Fixture, Path};
use crate::relay_process::{RelayProcess, ServeArgs};
use crate::report::{cell, ratio, Report, Table};

/// Knobs of the scale scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct ScaleArgs {
    /// Relay threads to measure, in order; the first is the baseline [default: 1
    /// and the cores of this machine].
    #[arg(long, value_delimiter = ',')]
    pub workers: Vec<NonZeroUsize>,
    #[command(flatten)]
    pub throughput: ThroughputArgs,
}

impl ScaleArgs {
    /// The thread counts measured, in order.
    pub fn counts(&self) -> Vec<usize> {
        if !self.workers.is_empty() {
            return self.workers.iter().map(|n| n.get()).collect();
        }
        let cores = cores();
        if cores > 1 {
            vec![1, cores]
        } else {
            vec![1]
        }
    }

    /// The relayed paths of `--transport`.
    fn paths(&self) -> Vec<Path> {
        let mut paths = self.throughput.paths();
        paths.retain(|path| path.is_relay());
        paths
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

/// Planned time, for the progress bar.
pub fn planned(args: &ScaleArgs, run: &super::Common) -> Duration {
    let phases = args.counts().len() * args.paths().len() * args.throughput.rounds.max(1);
    (run.duration + run.warmup) * phases as u32
}

/// Runs the scenario.
pub async fn run(run: &Run, args: &ScaleArgs) -> Result<Report> {
    if run.common.relay.is_some() {
        anyhow::bail!("scale starts relays of its own: it cannot measure a remote one");
    }
    let counts = args.counts();
    let paths = args.paths();
    if paths.is_empty() {
        anyhow::bail!("scale measures relayed paths: add `relay` to --paths");
    }
    let cores = cores();
    let largest = counts.iter().copied().max().unwrap_or(1);
    // Relay on the first `largest` cores, the harness on the rest.
    let pinned = cores >= 2 * largest;
    if pinned {
        pin_self(&format!("{largest}-{}", cores - 1))?;
    }
    let mut measured: Vec<(usize, Path, Phase)> = Vec::new();
    let mut threads = Vec::new();
    for &workers in &counts {
        let process = RelayProcess::start(&ServeArgs {
            config: run.common.relay_config.clone(),
            splice_buffer: run.common.splice_buffer,
            workers: NonZeroUsize::new(workers),
            cpus: pinned.then(|| format!("0-{}", workers - 1)),
            ..ServeArgs::default()
        })?;
        let url = process
            .relay_url()
            .cloned()
            .context("the relay process gave no URL")?;
        threads.push((workers, process.workers()));
        let fixture = Fixture::start(
            Some(&url),
            process.splice_addr(),
            args.throughput.hosts,
            args.throughput.players,
            &args.throughput.transports.transports(),
            run.common.resume_window,
        )
        .await?;
        for round in 0..args.throughput.rounds.max(1) {
            for &path in &paths {
                run.progress.message(format!(
                    "{} on {workers} threads, round {}",
                    path.label(),
                    round + 1
                ));
                let measured_phase =
                    phase(run, &fixture, path, &args.throughput, Some(process.probe())).await?;
                measured.push((workers, path, measured_phase));
            }
        }
        fixture.shutdown().await;
    }

    let params = json!({
        "workers": counts, "pinned": pinned, "cores": cores,
        "hosts": args.throughput.hosts, "players": args.throughput.players,
        "sessions": args.throughput.sessions, "direction": args.throughput.direction,
        "write_size": args.throughput.write_size,
        "paths": paths.iter().map(|p| p.key()).collect::<Vec<_>>(),
        "rounds": args.throughput.rounds, "duration_s": run.common.duration.as_secs_f64(),
        "warmup_s": run.common.warmup.as_secs_f64(),
    });
    let mut report = run.report("scale", params);
    report.relay = format!(
        "a child process (blindrelay-bench serve-relay) for each thread count, in turn; \
         limits off unless --relay-config{}",
        if pinned { "; pinned" } else { "" }
    );
    for (workers, counted) in threads {
        // What each relay's runtime counted, beside what it was asked for.
        report.figure(
            &format!("relay_w{workers}_threads"),
            counted.map(|n| n as f64),
        );
    }
    let mut table = Table::new(&[
        "path",
        "relay threads",
        "aggregate Gbit/s",
        "relay CPU s/GiB",
        "relay cores busy",
        "speed-up",
        "efficiency",
    ]);
    let mut errors = 0;
    for &path in &paths {
        let mut baseline: Option<(usize, f64)> = None;
        for &workers in &counts {
            let mine: Vec<&Phase> = measured
                .iter()
                .filter(|(w, p, _)| *w == workers && *p == path)
                .map(|(_, _, phase)| phase)
                .collect();
            errors += mine.iter().map(|phase| phase.errors).sum::<u64>();
            let aggregate = crate::report::median(
                &mine
                    .iter()
                    .map(|phase| gbps(phase.bytes, phase.seconds))
                    .collect::<Vec<_>>(),
            );
            let cpu_per_gib = crate::report::median(
                &mine
                    .iter()
                    .filter_map(|phase| Some(phase.process_cpu? / gib(phase.bytes)))
                    .collect::<Vec<_>>(),
            );
            let busy = crate::report::median(
                &mine
                    .iter()
                    .filter_map(|phase| Some(phase.process_cpu? / phase.seconds))
                    .collect::<Vec<_>>(),
            );
            if baseline.is_none() {
                baseline = aggregate.map(|gbps| (workers, gbps));
            }
            let speedup = baseline.and_then(|(_, first)| ratio(aggregate, Some(first)));
            let efficiency = baseline.and_then(|(first_workers, _)| {
                let added = workers as f64 / first_workers as f64;
                Some(speedup? / added)
            });
            let key = format!("{}_w{workers}", path.key());
            report.figure(&format!("{key}_gbps"), aggregate);
            report.figure(&format!("{key}_cpu_s_per_gib"), cpu_per_gib);
            report.figure(&format!("{key}_cores_busy"), busy);
            report.figure(&format!("{key}_speedup"), speedup);
            report.figure(&format!("{key}_efficiency"), efficiency);
            table.row(vec![
                path.label(),
                workers.to_string(),
                cell(aggregate, 2),
                cell(cpu_per_gib, 2),
                cell(busy, 2),
                cell(speedup, 2),
                cell(efficiency, 2),
            ]);
        }
    }
    report.figure("errors", Some(errors as f64));
    if errors > 0 {
        report.note(format!("{errors} session errors"));
    }
    report.note(if pinned {
        format!(
            "each relay pinned to its first cores (taskset), the harness with every host \
             and player to cores {largest}-{}",
            cores - 1
        )
    } else {
        format!(
            "not pinned: {cores} cores are fewer than twice the largest thread count \
             ({largest}), so the hosts and players share the relay's cores"
        )
    });
    report.note(
        "efficiency: the speed-up over the first row divided by how many times its \
         threads the row has; relay cores busy: the relay process's CPU seconds per second",
    );
    report.table = table;
    Ok(report)
}

/// Pins this process, every thread of it, to `cpus` (`taskset -a -p -c`).
fn pin_self(cpus: &str) -> Result<()> {
    let status = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &std::process::id().to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .context("running taskset to pin the harness")?;
    anyhow::ensure!(
        status.success(),
        "taskset could not pin the harness to {cpus}"
    );
    Ok(())
}
