//! The relay under test as a child process, so its CPU time and memory are its own.
//!
//! The harness runs itself again as `blindrelay-bench serve-relay`: the same
//! [`blindrelay_relay::Relay`] that `blindrelayd` runs, on the same tokio
//! multi-threaded runtime, with [`Limits::unlimited`] or the limits of a config file,
//! plus the TCP splice baseline ([`crate::tcp_splice`]). Re-running its own binary
//! means `cargo run -p blindrelay-bench` needs nothing else built. The child prints
//! `relay url: URL` and `splice addr: ADDR` and runs until its stdin closes, so it
//! never outlives the harness, even one that is killed.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use blindrelay_client::RelayUrl;
use blindrelay_relay::{ConfigFile, Limits, Relay, RelayCertificate, RelayConfig};
use tokio::io::AsyncReadExt;

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
}

/// A running child: relay (unless remote) and TCP splice.
pub struct RelayProcess {
    child: Child,
    relay_url: Option<RelayUrl>,
    splice_addr: SocketAddr,
    probe: ProcessProbe,
}

impl RelayProcess {
    /// Starts the child and waits until it says where it listens.
    pub fn start(args: &ServeArgs) -> Result<Self> {
        let exe = std::env::current_exe().context("locating the harness binary")?;
        let mut command = Command::new(exe);
        command.arg("serve-relay");
        if let Some(config) = &args.config {
            command.arg("--config").arg(config);
        }
        if args.no_relay {
            command.arg("--no-relay");
        }
        command
            .arg("--splice-buffer")
            .arg(args.splice_buffer.to_string());
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the relay process")?;
        let stdout = child.stdout.take().context("relay process stdout")?;
        let lines = read_lines(stdout);
        let mut relay_url = None;
        let mut splice_addr = None;
        loop {
            let line = match lines.recv_timeout(Duration::from_secs(30)) {
                Ok(line) => line,
                Err(_) => {
                    let _ = child.kill();
                    bail!("the relay process did not start within 30 s");
                }
            };
            if let Some(url) = line.strip_prefix("relay url: ") {
                relay_url = Some(url.parse().context("relay url from the relay process")?);
            } else if let Some(addr) = line.strip_prefix("splice addr: ") {
                splice_addr = Some(addr.parse().context("splice addr from the relay process")?);
            } else if line == "ready" {
                break;
            }
        }
        let splice_addr = splice_addr.context("the relay process named no splice address")?;
        if relay_url.is_none() && !args.no_relay {
            bail!("the relay process named no relay url");
        }
        let probe = ProcessProbe::new(child.id());
        Ok(Self {
            child,
            relay_url,
            splice_addr,
            probe,
        })
    }

    /// The relay's URL, unless only the splice runs here.
    pub fn relay_url(&self) -> Option<&RelayUrl> {
        self.relay_url.as_ref()
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
        drop(self.child.stdin.take());
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_lines(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
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
        let certificate = RelayCertificate::self_signed(&["localhost"])?;
        let mut config = RelayConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), certificate);
        config.limits = limits;
        let relay = Relay::spawn(config)?;
        println!("relay url: {}", relay.url());
        Some(relay)
    };
    let (splice_addr, splice) =
        crate::tcp_splice::start(SocketAddr::from(([127, 0, 0, 1], 0)), args.splice_buffer).await?;
    println!("splice addr: {splice_addr}");
    println!("ready");
    // Until the harness closes our stdin (or dies).
    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 64];
    while stdin.read(&mut sink).await.unwrap_or(0) > 0 {}
    splice.abort();
    if let Some(relay) = relay {
        relay.shutdown().await;
    }
    Ok(())
}
