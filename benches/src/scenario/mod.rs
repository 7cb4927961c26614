//! The scenarios, and what they share: the relay under test, the run's common
//! options, and measuring a phase of load.

pub mod idle;
pub mod latency;
pub mod scale;
pub mod setup;
pub mod soak;
pub mod throughput;
pub mod tiny;

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
    /// How long the hosts and players keep a session whose stream failed, to
    /// resume it; `0s` opens sessions that cannot be resumed (no acknowledgements,
    /// no replay buffer), to measure what resuming costs.
    #[arg(long, default_value = "30s", value_parser = blindrelay_protocol::duration::parse_duration)]
    pub resume_window: Duration,
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
    /// With `pool` members: the pool the relay under test (member 0) belongs to.
    pool: Option<Pool>,
}

/// The other members of a pool the harness started on loopback, and the folder
/// holding their shared certificate and member file.
pub struct Pool {
    /// Member names, the relay under test's first.
    names: Vec<String>,
    /// Relay URLs, in the same order.
    urls: Vec<RelayUrl>,
    /// Members 1.., each its own child process (member 0 is the target's).
    others: Vec<RelayProcess>,
    dir: PathBuf,
}

impl Drop for Pool {
    fn drop(&mut self) {
        // The children go first: they read the member file until they stop.
        self.others.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How often the members of a harness pool read their member file.
const POOL_REFRESH: Duration = Duration::from_millis(200);

impl Target {
    /// Starts the child process: relay and splice, or the splice alone when the
    /// relay is remote. With `pool` of 2 or more, the relay under test is the first
    /// of that many relay processes serving as one pool.
    pub fn start(common: &Common, pool: usize) -> Result<Self> {
        if pool >= 2 {
            if common.relay.is_some() {
                anyhow::bail!(
                    "--pool starts a pool of its own; a remote pool is tested by --relay \
                     with any member's URL"
                );
            }
            return Self::start_pool(common, pool);
        }
        let process = RelayProcess::start(&ServeArgs {
            config: common.relay_config.clone(),
            no_relay: common.relay.is_some(),
            splice_buffer: common.splice_buffer,
            ..ServeArgs::default()
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
            pool: None,
        })
    }

    /// `n` relay processes as one pool on loopback: one certificate (PEM files in a
    /// fresh folder), one member file listing them all, read every
    /// [`POOL_REFRESH`]; returns once every member sees all `n`.
    fn start_pool(common: &Common, n: usize) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "blindrelay-bench-pool-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut pool = Pool {
            names: Vec::new(),
            urls: Vec::new(),
            others: Vec::new(),
            dir,
        };
        let (cert, key) = blindrelay_relay::RelayCertificate::self_signed_pem(&["localhost"])?;
        let (cert_file, key_file) = (pool.dir.join("cert.pem"), pool.dir.join("key.pem"));
        std::fs::write(&cert_file, cert)?;
        std::fs::write(&key_file, key)?;
        let members_file = pool.dir.join("members");
        let args = ServeArgs {
            config: common.relay_config.clone(),
            no_relay: false,
            splice_buffer: common.splice_buffer,
            certificate: Some(cert_file),
            private_key: Some(key_file),
            pool_members_file: Some(members_file.clone()),
            pool_refresh: POOL_REFRESH,
            ..ServeArgs::default()
        };
        let mut processes = Vec::new();
        for _ in 0..n {
            let process = RelayProcess::start(&args)?;
            pool.names.push(
                process
                    .pool_member()
                    .context("a pool member without a name")?
                    .to_owned(),
            );
            pool.urls.push(
                process
                    .relay_url()
                    .cloned()
                    .context("the relay process gave no URL")?,
            );
            processes.push(process);
        }
        // Written whole and renamed, so no member reads half a list.
        let partial = pool.dir.join("members.partial");
        std::fs::write(&partial, pool.names.join("\n") + "\n")?;
        std::fs::rename(&partial, &members_file)?;
        for process in &processes {
            process.wait_pool_members(n)?;
        }
        let mut processes = processes.into_iter();
        let process = processes.next().context("a pool of no member")?;
        pool.others = processes.collect();
        Ok(Self {
            local_relay: true,
            relay_url: pool.urls[0].clone(),
            process,
            pool: Some(pool),
        })
    }

    /// The pool the harness started, if it did.
    pub fn pool(&self) -> Option<&Pool> {
        self.pool.as_ref()
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
        if let Some(pool) = &self.pool {
            let mut pids = vec![self.process.probe().pid().to_string()];
            pids.extend(pool.others.iter().map(|p| p.probe().pid().to_string()));
            format!(
                "pool of {} child processes (blindrelay-bench serve-relay, pids {}) on loopback, \
                 one certificate, member file read every {} ms; limits off unless --relay-config",
                pool.names.len(),
                pids.join(", "),
                POOL_REFRESH.as_millis()
            )
        } else if self.local_relay {
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

impl Pool {
    /// Member names, the relay under test's first.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Member `i`'s relay URL.
    pub fn url(&self, i: usize) -> Option<&RelayUrl> {
        self.urls.get(i)
    }

    /// Member `i`'s process (1..; member 0 is [`Target::relay_probe`]).
    fn other(&self, i: usize) -> Option<&RelayProcess> {
        i.checked_sub(1).and_then(|i| self.others.get(i))
    }

    /// Member `i`'s CPU time and memory, for `i` of 1 or more.
    pub fn probe(&self, i: usize) -> Option<&ProcessProbe> {
        self.other(i).map(RelayProcess::probe)
    }

    /// Every member's pool counters now, in member order (`target` is member 0).
    pub fn stats(&self, target: &Target) -> Result<Vec<crate::relay_process::PoolStats>> {
        std::iter::once(&target.process)
            .chain(&self.others)
            .map(RelayProcess::pool_stats)
            .collect()
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
