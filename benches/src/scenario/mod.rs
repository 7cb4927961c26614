//! The scenarios, and what they share: the relay under test, the run's common
//! options, and measuring a phase of load.

pub mod idle;
pub mod latency;
pub mod setup;
pub mod soak;
pub mod throughput;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use blindrelay_client::RelayUrl;

use crate::machine::Machine;
use crate::measure::ProcessProbe;
use crate::progress::Progress;
use crate::relay_process::{RelayProcess, ServeArgs};
use crate::report::Report;

/// Options every scenario takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// How long each measured phase runs (after its warm-up).
    #[arg(long, default_value = "10s", value_parser = blindrelay_protocol::duration::parse_duration)]
    pub duration: Duration,
    /// Load before each phase's measurement starts, not counted.
    #[arg(long, default_value = "1s", value_parser = blindrelay_protocol::duration::parse_duration)]
    pub warmup: Duration,
    /// A remote relay to test (its URL as `blindrelayd` prints it). Without it the
    /// harness starts one as a child process, and only then reports the relay's CPU
    /// time and memory.
    #[arg(long, value_name = "URL")]
    pub relay: Option<RelayUrl>,
    /// Limits for the relay the harness starts, from a blindrelayd TOML config file
    /// (default: every limit off, as `Limits::unlimited()`).
    #[arg(long, value_name = "FILE")]
    pub relay_config: Option<PathBuf>,
    /// Buffer of each direction of the TCP splice baseline, bytes.
    #[arg(long, default_value_t = crate::tcp_splice::DEFAULT_BUFFER)]
    pub splice_buffer: usize,
    /// Write every figure, the parameters and the machine to this JSON file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Draw throughput and latency over time to this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
}

/// The relay under test and the TCP splice baseline.
pub struct Target {
    process: RelayProcess,
    relay_url: RelayUrl,
    /// Whether the relay runs in `process` (so its CPU and memory are ours to read).
    local_relay: bool,
}

impl Target {
    /// Starts the child process: relay and splice, or the splice alone when the
    /// relay is remote.
    pub fn start(common: &Common) -> Result<Self> {
        let process = RelayProcess::start(&ServeArgs {
            config: common.relay_config.clone(),
            no_relay: common.relay.is_some(),
            splice_buffer: common.splice_buffer,
        })?;
        let relay_url = match &common.relay {
            Some(url) => url.clone(),
            None => process
                .relay_url()
                .cloned()
                .context("the relay process gave no URL")?,
        };
        Ok(Self {
            local_relay: common.relay.is_none(),
            process,
            relay_url,
        })
    }

    /// The relay's URL.
    pub fn relay_url(&self) -> &RelayUrl {
        &self.relay_url
    }

    /// The TCP splice's address.
    pub fn splice_addr(&self) -> SocketAddr {
        self.process.splice_addr()
    }

    /// The relay process, when the harness started it.
    pub fn relay_probe(&self) -> Option<&ProcessProbe> {
        self.local_relay.then(|| self.process.probe())
    }

    /// The process running the TCP splice.
    pub fn splice_probe(&self) -> &ProcessProbe {
        self.process.probe()
    }

    /// Says where the relay runs, for reports.
    pub fn describe(&self) -> String {
        if self.local_relay {
            format!(
                "child process (blindrelay-bench serve-relay, pid {}), {}",
                self.process.probe().pid(),
                if self.process.relay_url().is_some() {
                    "limits off unless --relay-config"
                } else {
                    ""
                }
            )
        } else {
            format!(
                "remote {}: relay CPU and memory not measured",
                self.relay_url
            )
        }
    }
}

/// Everything a scenario needs to run.
pub struct Run {
    /// Options shared by every scenario.
    pub common: Common,
    /// The relay under test.
    pub target: Target,
    /// The machine.
    pub machine: Machine,
    /// The progress bar.
    pub progress: Progress,
}

impl Run {
    /// A report for `scenario` with `params`, remarks on remote mode included.
    pub fn report(&self, scenario: &str, params: serde_json::Value) -> Report {
        let mut report = Report::new(
            scenario,
            self.machine.clone(),
            self.target.describe(),
            params,
        );
        if !self.target.local_relay {
            report.note("the relay is remote: its CPU time and memory are not available (null)");
        }
        report
    }
}

/// CPU seconds of a process between two points, when it can be read.
pub struct CpuMeter<'a> {
    probe: Option<&'a ProcessProbe>,
    start: Option<f64>,
}

impl<'a> CpuMeter<'a> {
    /// Starts counting `probe`'s CPU time now.
    pub fn start(probe: Option<&'a ProcessProbe>) -> Self {
        Self {
            start: probe.and_then(|p| p.cpu_seconds().ok()),
            probe,
        }
    }

    /// CPU seconds since [`CpuMeter::start`].
    pub fn elapsed(&self) -> Option<f64> {
        let now = self.probe?.cpu_seconds().ok()?;
        Some(now - self.start?)
    }
}

/// Bits per second in Gbit/s.
pub fn gbps(bytes: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        bytes as f64 * 8.0 / seconds / 1e9
    } else {
        0.0
    }
}

/// Bytes in GiB.
pub fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}
