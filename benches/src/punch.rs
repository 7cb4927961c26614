//! `punch`: how many relayed sessions move to a punched direct path, and how soon,
//! between two homes behind NATs that this harness builds in network namespaces
//! (as the system tests do: root, `ip` and `nft` needed; PROTOCOL.md 10.9).
//!
//! A relay runs in the "internet" namespace, in this process; `blindrelay host` and
//! `blindrelay connect` run behind their routers, as users run them, punching. The
//! harness opens `--sessions` downloads at once through the player, each of
//! `--bytes`, read at `--rate` each, and reads from the player's log when the path
//! was punched and which sessions moved; the relay's counters say how much of the
//! whole crossed it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use blindrelay_relay::{Limits, Relay, RelayCertificate, RelayConfig};
use blindrelay_tests::netns::{HomeNets, Nat, Net, Player};
use blindrelay_tests::process::Proc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Knobs of the punch scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct PunchArgs {
    /// Downloads running at once when the path is punched.
    #[arg(long, default_value_t = 8)]
    pub sessions: usize,
    /// Bytes of each download.
    #[arg(long, default_value = "32MiB", value_parser = parse_size)]
    pub bytes: u64,
    /// How fast each download is read, bytes a second (a player watching a film
    /// reads at its bit rate).
    #[arg(long, default_value = "8MiB", value_parser = parse_size)]
    pub rate: u64,
    /// The player's router: `home` (endpoint-independent mapping) or `symmetric`.
    #[arg(long, default_value = "home", value_parser = parse_nat)]
    pub player_nat: Nat,
}

fn parse_size(text: &str) -> Result<u64, String> {
    text.parse::<blindrelay_relay::units::ByteSize>()
        .map(|size| size.0)
        .map_err(|err| err.to_string())
}

fn parse_nat(text: &str) -> Result<Nat, String> {
    match text {
        "home" => Ok(Nat::Home),
        "symmetric" => Ok(Nat::Symmetric),
        other => Err(format!("unknown NAT {other:?}: home or symmetric")),
    }
}

/// Runs the scenario and prints what it found.
pub async fn run(args: &PunchArgs) -> Result<()> {
    let blindrelay = std::env::current_exe()?.with_file_name("blindrelay");
    if !blindrelay.exists() {
        bail!(
            "{} not found: build it beside the harness (cargo build --release --bin blindrelay)",
            blindrelay.display()
        );
    }
    let Some(mut net) = Net::try_new() else {
        bail!("network namespaces cannot be built here (root, ip and nft are needed)");
    };
    let HomeNets {
        inet,
        relay_ip,
        host_ns,
        player_ns,
        ..
    } = net.homes(Nat::Home, Player::Behind(args.player_nat));
    let certificate = RelayCertificate::self_signed(&["localhost"])?;
    let mut config = RelayConfig::new(format!("{relay_ip}:0").parse()?, certificate);
    config.limits = Limits::unlimited();
    let handle = tokio::runtime::Handle::current();
    let relay = net.enter(&inet, || {
        let _runtime = handle.enter();
        Relay::spawn(config)
    })?;
    let service = net.pattern_service(&host_ns);
    let key = net.dir().join("host.key");
    keygen(&blindrelay, &key)?;
    let (url, forward) = (relay.url().to_string(), service.to_string());
    let host = net.start(
        &host_ns,
        &blindrelay,
        &[
            "host",
            "--key",
            key.to_str().context("a key path")?,
            "--relay",
            &url,
            "--forward",
            &forward,
            "--transport",
            "quic",
            "--no-punch=false",
        ],
    );
    host.value("host id");
    let ticket = host.value("ticket");
    host.wait_log("relay state: registered");
    let player = net.start(
        &player_ns,
        &blindrelay,
        &[
            "connect",
            &ticket,
            "--listen",
            "127.0.0.1:0",
            "--transport",
            "quic",
            "--no-punch=false",
        ],
    );
    let listen: std::net::SocketAddr = player.value("listening on").parse()?;

    let started = Instant::now();
    let mut downloads = tokio::task::JoinSet::new();
    for seed in 0..args.sessions as u64 {
        let tcp = net.enter(&player_ns, || std::net::TcpStream::connect(listen))?;
        tcp.set_nonblocking(true)?;
        let tcp = tokio::net::TcpStream::from_std(tcp)?;
        downloads.spawn(download(tcp, args.bytes, seed, args.rate));
    }
    // The player says when the path was punched (or that it gave up), and then one
    // line per session that moved.
    let deadline = Duration::from_secs(60);
    let verdict = wait_for(
        &player,
        &["direct path to the host punched", "no direct path"],
        deadline,
    );
    let punched_after = started.elapsed();
    let punched = verdict
        .as_deref()
        .is_some_and(|line| line.contains("punched;"));
    let mut moves = Vec::new();
    if punched {
        while moves.len() < args.sessions {
            let left = deadline.saturating_sub(started.elapsed());
            let Some(line) = player.wait_log_within("session resumed after", left) else {
                break;
            };
            moves.push(resumed_after(&line));
        }
    }
    let relayed_at_switch = relay.stats().bytes_host_to_player;
    let mut total = 0;
    while let Some(done) = downloads.join_next().await {
        total += done??;
    }
    let stats = relay.stats();
    let moved = moves.len();
    let slowest = moves.iter().copied().fold(0.0_f64, f64::max);
    println!(
        "punch: {} sessions of {} bytes, player behind a {:?} NAT",
        args.sessions, args.bytes, args.player_nat
    );
    println!(
        "  path punched: {}",
        if punched {
            format!(
                "yes, {:.0} ms after the downloads started",
                punched_after.as_secs_f64() * 1000.0
            )
        } else {
            "no".to_owned()
        }
    );
    println!("  sessions moved to it: {moved} of {} (relay counted {}), each paused at most {slowest:.2} s", args.sessions, stats.sessions_moved_direct);
    println!(
        "  bytes through the relay: {} of {} ({:.1} %; {} before the last move)",
        stats.bytes_host_to_player,
        total,
        100.0 * stats.bytes_host_to_player as f64 / total.max(1) as f64,
        relayed_at_switch
    );
    drop((player, host, relay));
    Ok(())
}

/// Reads `len` pattern bytes of `seed` at about `rate` bytes a second, checking
/// them; how many arrived.
async fn download(mut tcp: tokio::net::TcpStream, len: u64, seed: u64, rate: u64) -> Result<u64> {
    let mut request = [0u8; 16];
    request[..8].copy_from_slice(&len.to_be_bytes());
    request[8..].copy_from_slice(&seed.to_be_bytes());
    tcp.write_all(&request).await?;
    let mut plus = [0u8; 1];
    tcp.read_exact(&mut plus).await?;
    let paced = Paced {
        inner: tcp,
        rate,
        started: Instant::now(),
        read: 0,
    };
    let mut paced = paced;
    let total = paced.read_checked(seed).await?;
    if total != len {
        bail!("a download ended after {total} of {len} bytes");
    }
    Ok(total)
}

/// A reader that keeps to a rate.
struct Paced {
    inner: tokio::net::TcpStream,
    rate: u64,
    started: Instant,
    read: u64,
}

impl Paced {
    async fn read_checked(&mut self, seed: u64) -> Result<u64> {
        let mut pattern = blindrelay_tests::Pattern::new(seed);
        let mut expected = vec![0u8; 64 * 1024];
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let due = Duration::from_secs_f64(self.read as f64 / self.rate.max(1) as f64);
            if let Some(wait) = due.checked_sub(self.started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
            // Whole chunks, so the pattern is compared a chunk at a time.
            let n = read_full(&mut self.inner, &mut chunk).await?;
            if n == 0 {
                return Ok(self.read);
            }
            pattern.fill(&mut expected[..n]);
            if chunk[..n] != expected[..n] {
                bail!("a download's bytes differ near offset {}", self.read);
            }
            self.read += n as u64;
            if n < chunk.len() {
                return Ok(self.read);
            }
        }
    }
}

/// Fills `buf` unless the stream ends first; how much it got.
async fn read_full(tcp: &mut tokio::net::TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        let n = tcp.read(&mut buf[got..]).await?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got)
}

/// The first of the player's log lines that holds one of `texts`, within `patience`.
fn wait_for(player: &Proc, texts: &[&str], patience: Duration) -> Option<String> {
    let deadline = Instant::now() + patience;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = player.wait_log_within("", left)?;
        if texts.iter().any(|text| line.contains(text)) {
            return Some(line);
        }
    }
}

/// The pause a "session resumed after X s" line names, in seconds.
fn resumed_after(line: &str) -> f64 {
    line.split("resumed after ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|secs| secs.parse().ok())
        .unwrap_or(0.0)
}

fn keygen(blindrelay: &PathBuf, out: &std::path::Path) -> Result<()> {
    let made = std::process::Command::new(blindrelay)
        .args(["keygen", "--out"])
        .arg(out)
        .output()?;
    if !made.status.success() {
        bail!(
            "blindrelay keygen failed: {}",
            String::from_utf8_lossy(&made.stderr)
        );
    }
    Ok(())
}
