//! The relay under test as a child process, so its CPU time and memory are its own.
//!
//! The harness runs itself again as `blindrelay-bench serve-relay`: the same
//! [`blindrelay_relay::Relay`] that `blindrelayd` runs, on the same tokio
//! multi-threaded runtime, with [`Limits::unlimited`] or the limits of a config file,
//! plus the TCP splice baseline ([`crate::tcp_splice`]). Re-running its own binary
//! means `cargo run -p blindrelay-bench` needs nothing else built. The child prints
//! `relay url: URL` and `splice addr: ADDR` and runs until its stdin closes, so it
//! never outlives the harness, even one that is killed.
//!
//! For a pool (`setup --pool N`) the harness starts one child per member, all with
//! the same certificate (PEM files it wrote) and the same member file. Each child
//! picks a free loopback port, names itself `127.0.0.1:PORT` (also printed, as
//! `pool member: NAME`), and answers lines on its stdin: `members N` once its view
//! holds N members (or `members timeout` after 30 s), and `stats` with its pool
//! counters ([`PoolStats`]), which is how the harness counts the redirects of a
//! phase without a metrics listener.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use blindrelay_client::RelayUrl;
use blindrelay_harness::{Process, Stderr};
use blindrelay_relay::{
    ConfigFile, Limits, MemberSource, PoolConfig, Relay, RelayCertificate, RelayConfig,
};
use tokio::io::AsyncBufReadExt;

use crate::measure::ProcessProbe;

/// How to start the child.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeArgs {
    /// Relay limits from this TOML file (docs/configuration.md) instead of none.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Run only the TCP splice (the relay under test is remote).
    #[arg(long)]
    pub no_relay: bool,
    /// Buffer size of each direction of the TCP splice.
    #[arg(long, default_value_t = crate::tcp_splice::DEFAULT_BUFFER)]
    pub splice_buffer: usize,
    /// The relay's certificate (PEM) instead of a fresh self-signed one: the
    /// members of a pool share one. Needs `--private-key`.
    #[arg(long, value_name = "FILE", requires = "private_key")]
    pub certificate: Option<PathBuf>,
    /// The private key (PEM) of `--certificate`.
    #[arg(long, value_name = "FILE", requires = "certificate")]
    pub private_key: Option<PathBuf>,
    /// Run the relay as a member of the pool this file lists (on a free loopback
    /// port, named `127.0.0.1:PORT`).
    #[arg(long, value_name = "FILE")]
    pub pool_members_file: Option<PathBuf>,
    /// How often a pool member reads the member file and probes the others.
    #[arg(long, default_value = "200ms", value_parser = blindrelay_protocol::duration::parse_duration)]
    pub pool_refresh: Duration,
    /// Threads the child's runtime (the relay and the splice) runs on, as
    /// `blindrelayd --workers` [default: the cores it may use].
    #[arg(long, value_name = "N")]
    pub workers: Option<std::num::NonZeroUsize>,
    /// Pin the child to these CPUs (`taskset -c LIST`), away from the harness.
    #[arg(long, value_name = "LIST")]
    pub cpus: Option<String>,
}

/// A pool member's counters, as the child reports them on `stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Members in the child's view of the pool.
    pub members: u64,
    /// `Connect`s it answered with a `Redirect`.
    pub redirects_connect: u64,
    /// `Register`s it answered with a `Redirect`.
    pub redirects_register: u64,
}

impl PoolStats {
    /// The reply line: `stats members=3 redirects_connect=10 redirects_register=2`.
    pub fn to_line(self) -> String {
        format!(
            "stats members={} redirects_connect={} redirects_register={}",
            self.members, self.redirects_connect, self.redirects_register
        )
    }

    /// Reads a reply line; `None` unless it is one [`PoolStats::to_line`] wrote.
    pub fn parse(line: &str) -> Option<Self> {
        let mut fields = [None; 3];
        for field in line.strip_prefix("stats ")?.split_whitespace() {
            let (key, value) = field.split_once('=')?;
            let slot = match key {
                "members" => 0,
                "redirects_connect" => 1,
                "redirects_register" => 2,
                _ => return None,
            };
            // Each key once: a repeated one is not a line we wrote.
            if fields[slot].replace(value.parse::<u64>().ok()?).is_some() {
                return None;
            }
        }
        let [Some(members), Some(redirects_connect), Some(redirects_register)] = fields else {
            return None;
        };
        Some(Self {
            members,
            redirects_connect,
            redirects_register,
        })
    }

    /// What was counted between `earlier` and `self` (the view as of now).
    pub fn since(self, earlier: Self) -> Self {
        Self {
            members: self.members,
            redirects_connect: self
                .redirects_connect
                .saturating_sub(earlier.redirects_connect),
            redirects_register: self
                .redirects_register
                .saturating_sub(earlier.redirects_register),
        }
    }
}

/// A running child: relay (unless remote) and TCP splice.
pub struct RelayProcess {
    /// The child; behind a lock because its output arrives on a channel, which is
    /// not `Sync`.
    process: Mutex<Process>,
    relay_url: Option<RelayUrl>,
    pool_member: Option<String>,
    splice_addr: SocketAddr,
    /// The threads of the child's runtime, as it counts them.
    workers: Option<usize>,
    probe: ProcessProbe,
    /// Where commands go; `None` once closed, which stops the child.
    stdin: Mutex<Option<ChildStdin>>,
}

impl RelayProcess {
    /// Starts the child and waits until it says where it listens.
    pub fn start(args: &ServeArgs) -> Result<Self> {
        let exe = std::env::current_exe().context("locating the harness binary")?;
        let mut command = match &args.cpus {
            Some(cpus) => {
                let mut taskset = Command::new("taskset");
                taskset.arg("-c").arg(cpus).arg(exe);
                taskset
            }
            None => Command::new(exe),
        };
        command.arg("serve-relay");
        if let Some(workers) = args.workers {
            command.arg("--workers").arg(workers.to_string());
        }
        if let Some(config) = &args.config {
            command.arg("--config").arg(config);
        }
        if args.no_relay {
            command.arg("--no-relay");
        }
        command
            .arg("--splice-buffer")
            .arg(args.splice_buffer.to_string());
        if let (Some(certificate), Some(key)) = (&args.certificate, &args.private_key) {
            command
                .arg("--certificate")
                .arg(certificate)
                .arg("--private-key")
                .arg(key);
        }
        if let Some(file) = &args.pool_members_file {
            command
                .arg("--pool-members-file")
                .arg(file)
                .arg("--pool-refresh")
                .arg(format!("{}ms", args.pool_refresh.as_millis().max(1)));
        }
        command.stdin(Stdio::piped());
        let mut process =
            Process::spawn(&mut command, Stderr::Inherit).context("starting the relay process")?;
        let mut relay_url = None;
        let mut pool_member = None;
        let mut splice_addr = None;
        let mut workers = None;
        loop {
            let Some(line) = process.stdout_line(Duration::from_secs(30)) else {
                bail!("the relay process did not start within 30 s");
            };
            if let Some(url) = line.strip_prefix("relay url: ") {
                relay_url = Some(url.parse().context("relay url from the relay process")?);
            } else if let Some(name) = line.strip_prefix("pool member: ") {
                pool_member = Some(name.to_owned());
            } else if let Some(addr) = line.strip_prefix("splice addr: ") {
                splice_addr = Some(addr.parse().context("splice addr from the relay process")?);
            } else if let Some(count) = line.strip_prefix("workers: ") {
                workers = count.parse().ok();
            } else if line == "ready" {
                break;
            }
        }
        let splice_addr = splice_addr.context("the relay process named no splice address")?;
        if relay_url.is_none() && !args.no_relay {
            bail!("the relay process named no relay url");
        }
        if pool_member.is_none() && args.pool_members_file.is_some() {
            bail!("the relay process named no pool member");
        }
        let probe = ProcessProbe::new(process.id());
        let stdin = process.take_stdin();
        Ok(Self {
            process: Mutex::new(process),
            relay_url,
            pool_member,
            splice_addr,
            workers,
            probe,
            stdin: Mutex::new(stdin),
        })
    }

    /// The member name of a pool member.
    pub fn pool_member(&self) -> Option<&str> {
        self.pool_member.as_deref()
    }

    /// Waits until the pool member's view holds `members` members (the child gives
    /// up after 30 s).
    pub fn wait_pool_members(&self, members: usize) -> Result<()> {
        let reply = self.command(&format!("members {members}"), Duration::from_secs(35))?;
        if reply != format!("members {members}") {
            bail!(
                "pool member {} did not see {members} members: {reply}",
                self.pool_member().unwrap_or("?")
            );
        }
        Ok(())
    }

    /// The pool member's counters now.
    pub fn pool_stats(&self) -> Result<PoolStats> {
        let reply = self.command("stats", Duration::from_secs(5))?;
        PoolStats::parse(&reply).with_context(|| format!("unexpected stats reply {reply:?}"))
    }

    /// Sends one command line and waits up to `patience` for the reply line. Blocks
    /// the calling thread briefly, outside any measured window.
    fn command(&self, line: &str, patience: Duration) -> Result<String> {
        let process = self
            .process
            .lock()
            .map_err(|_| anyhow!("relay process lock poisoned"))?;
        {
            let mut stdin = self
                .stdin
                .lock()
                .map_err(|_| anyhow!("relay process stdin lock poisoned"))?;
            let stdin = stdin.as_mut().context("the relay process was stopped")?;
            writeln!(stdin, "{line}").context("writing to the relay process")?;
            stdin.flush().context("writing to the relay process")?;
        }
        process
            .stdout_line(patience)
            .with_context(|| format!("no reply to {line:?} from the relay process"))
    }

    /// The relay's URL, unless only the splice runs here.
    pub fn relay_url(&self) -> Option<&RelayUrl> {
        self.relay_url.as_ref()
    }

    /// The threads the child's runtime runs on, as it said at start.
    pub fn workers(&self) -> Option<usize> {
        self.workers
    }

    /// The TCP splice's address.
    pub fn splice_addr(&self) -> SocketAddr {
        self.splice_addr
    }

    /// Reads the child's CPU time and memory.
    pub fn probe(&self) -> &ProcessProbe {
        &self.probe
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        // Closing stdin asks the child to stop; kill in case it does not.
        if let Ok(mut stdin) = self.stdin.lock() {
            drop(stdin.take());
        }
        if let Ok(process) = self.process.get_mut() {
            // Dropped with `self` after this: killed if it still runs.
            let _ = process.wait_within(Duration::from_secs(1));
        }
    }
}

/// The child's side: runs the relay and the splice until stdin closes.
pub async fn run_child_relay(args: ServeArgs) -> Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let relay = if args.no_relay {
        None
    } else {
        let limits = match &args.config {
            Some(path) => ConfigFile::load(path)?.limits(),
            None => Limits::unlimited(),
        };
        let certificate = match (&args.certificate, &args.private_key) {
            (Some(cert), Some(key)) => RelayCertificate::from_pem_files(cert, key)?,
            _ => RelayCertificate::self_signed(&["localhost"])?,
        };
        let mut config = RelayConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), certificate);
        config.limits = limits;
        let relay = match &args.pool_members_file {
            Some(file) => {
                let (relay, name) = spawn_pool_member(config, file, args.pool_refresh)?;
                println!("pool member: {name}");
                relay
            }
            None => Relay::spawn(config)?,
        };
        println!("relay url: {}", relay.url());
        Some(relay)
    };
    let (splice_addr, splice) =
        crate::tcp_splice::start(SocketAddr::from(([127, 0, 0, 1], 0)), args.splice_buffer).await?;
    println!("splice addr: {splice_addr}");
    println!(
        "workers: {}",
        tokio::runtime::Handle::current().metrics().num_workers()
    );
    println!("ready");
    // Commands, one a line, until the harness closes our stdin (or dies).
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let reply = match (relay.as_ref(), line.split_once(' ')) {
            (Some(relay), Some(("members", n))) => match n.trim().parse::<u64>() {
                Ok(n) => wait_members(relay, n).await,
                Err(_) => format!("error: bad member count {n:?}"),
            },
            (Some(relay), None) if line.trim() == "stats" => {
                let stats = relay.stats();
                PoolStats {
                    members: stats.pool_members,
                    redirects_connect: stats.pool_redirects_connect,
                    redirects_register: stats.pool_redirects_register,
                }
                .to_line()
            }
            _ => format!("error: unknown command {line:?}"),
        };
        println!("{reply}");
    }
    splice.abort();
    if let Some(relay) = relay {
        relay.shutdown().await;
    }
    Ok(())
}

/// Starts a pool member on a free loopback port; its member name is that address.
fn spawn_pool_member(
    config: RelayConfig,
    members_file: &std::path::Path,
    refresh: Duration,
) -> Result<(Relay, String)> {
    let mut last = None;
    // The port is free when asked and taken by the relay a moment later: another
    // process may take it in between, so a few tries.
    for _ in 0..20 {
        let port = std::net::UdpSocket::bind(("127.0.0.1", 0))?
            .local_addr()?
            .port();
        let name = format!("127.0.0.1:{port}");
        let mut config = config.clone();
        config.listen = SocketAddr::from(([127, 0, 0, 1], port));
        let mut pool = PoolConfig::new(&name, MemberSource::File(members_file.to_owned()))?;
        pool.refresh = refresh;
        config.pool = Some(pool);
        match Relay::spawn(config) {
            Ok(relay) => return Ok((relay, name)),
            Err(err) => last = Some(err),
        }
    }
    Err(anyhow!(
        "no free loopback port for a pool member: {}",
        last.map(|e| e.to_string()).unwrap_or_default()
    ))
}

/// `members N` once `relay`'s pool view holds `n` members, or after 30 s `members
/// timeout` with what it holds.
async fn wait_members(relay: &Relay, n: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = relay.stats().pool_members;
        if seen == n {
            return format!("members {n}");
        }
        if Instant::now() >= deadline {
            return format!("members timeout: {seen} seen");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_stats_lines_round_trip_and_garbage_is_refused() {
        let stats = PoolStats {
            members: 3,
            redirects_connect: 1234,
            redirects_register: 7,
        };
        assert_eq!(PoolStats::parse(&stats.to_line()), Some(stats));
        for bad in [
            "",
            "stats",
            "members 3",
            "stats members=3 redirects_connect=1",
            "stats members=3 redirects_connect=x redirects_register=0",
            "stats members=3 redirects_connect=1 redirects_register=0 extra=1",
            "stats members=-1 redirects_connect=1 redirects_register=0",
            "stats members=3 members=3 redirects_connect=1",
            "error: unknown command \"stats\"",
        ] {
            assert_eq!(PoolStats::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_counts_of_a_phase_are_the_difference() {
        let before = PoolStats {
            members: 3,
            redirects_connect: 100,
            redirects_register: 5,
        };
        let after = PoolStats {
            members: 2,
            redirects_connect: 160,
            redirects_register: 5,
        };
        assert_eq!(
            after.since(before),
            PoolStats {
                members: 2,
                redirects_connect: 60,
                redirects_register: 0
            }
        );
        // A restarted counter does not go negative.
        assert_eq!(before.since(after).redirects_connect, 0);
    }
}
