//! `blindrelay demo`: a relay, a host, a service and a player on this machine, in one
//! process, and a file fetched through them, to see blindrelay work before reading
//! how.
//!
//! Each part is the real one: the relay is the `Relay` that `blindrelayd` runs (its
//! certificate kept in the demo's state folder, so its URL and links stay the same
//! from one run to the next), the host and the player are `blindrelay host` and
//! `blindrelay connect` (the same functions), and the service is a small file
//! server on loopback, or the one given with `--forward`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use blindrelay_client::{HostConfig, PlayerConfig, RelayUrl, SecretKey, Ticket};
use blindrelay_relay::{Relay, RelayCertificate, RelayConfig};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tracing::info;

use crate::cli::DemoArgs;
use crate::stop::Stop;

mod files;

/// The film the built-in service serves: twelve seconds of a test picture and a
/// tone (VP9 and Opus in WebM, which every browser plays), made with ffmpeg's
/// `testsrc2` and `sine` sources.
const FILM: &[u8] = include_bytes!("../../../../assets/demo.webm");

/// Its name on the built-in service.
const FILM_NAME: &str = "blindrelay-demo.webm";

/// The built-in service's page: the film, playing.
const PAGE: &str = include_str!("../../../../assets/demo.html");

/// How long the check waits for the host to be reachable and the file to arrive.
const CHECK_PATIENCE: Duration = Duration::from_secs(30);

/// How long a first fetch that fails is tried again: the host is registered by
/// then, so this is only for a session set up while its relay connection settles.
const RETRY_FOR: Duration = Duration::from_secs(5);

/// What the check fetches, and what it must get.
enum Sample {
    /// A file of the served folder: its path on the service and its bytes.
    File { path: String, bytes: Bytes },
    /// A service of the user's own: its front page, whatever it holds.
    FrontPage,
}

pub(crate) async fn demo(args: DemoArgs, stop: Stop) -> Result<()> {
    let state = state_dir(args.state_dir)?;
    // The relay, on loopback, with the certificate kept in the state folder.
    let kept = RelayCertificate::kept_in(&state.join("relay"), &["localhost"])?;
    // The ports of the last run when they are free, so that the links stay the same.
    let mut ports = Ports::load(&state);
    let relay = match Relay::spawn(RelayConfig::new(
        loopback(ports.relay),
        kept.certificate.clone(),
    )) {
        Ok(relay) => relay,
        Err(_) if ports.relay != 0 => Relay::spawn(RelayConfig::new(loopback(0), kept.certificate))
            .context("starting the relay")?,
        Err(err) => return Err(err).context("starting the relay"),
    };
    ports.relay = relay.local_addr().port();
    // Named `localhost`, not by its address: browsers reach each host's web origin
    // as `<host id>.localhost`, which resolves to this machine.
    let url = RelayUrl::new("localhost", relay.url().port(), relay.url().pin().cloned())
        .context("the relay's URL")?;
    println!("relay url: {url}");

    // The service: the built-in file server, a folder of the user's, or theirs.
    let (service, sample, _files) = match (&args.forward, &args.serve) {
        (Some(_), Some(_)) => bail!("give --serve DIR or --forward ADDR, not both"),
        (Some(forward), None) => (forward.clone(), Sample::FrontPage, None),
        (None, serve) => {
            let folder = match serve {
                Some(folder) => folder.clone(),
                None => write_film(&state.join("media"))?,
            };
            let sample = sample_file(&folder)?;
            let files = files::FileServer::start(folder.clone()).await?;
            println!(
                "service: http://{} (the folder {})",
                files.addr(),
                folder.display()
            );
            (files.addr().to_string(), sample, Some(files))
        }
    };

    // The host: `blindrelay host` with a key kept in the state folder and its panel.
    let key = host_key(&state.join("host.key"))?;
    let mut config = HostConfig::new(key, url.clone());
    config.direct = None;
    // Relay, host and player share this machine, where a punch always succeeds:
    // the demo shows the relay's path.
    config.punch = false;
    let (ticket_tx, ticket_rx) = oneshot::channel();
    let run = crate::host::HostRun {
        forward: service,
        has_relay: true,
        token_watch: crate::token::TokenWatch::open(None)?,
        panel: Some(loopback(ports.panel_port())),
        relay_state: Some(state.join("host.relay-state")),
        players: None,
        registered: Some(ticket_tx),
    };
    let (stopping, stopped) = watch::channel(false);
    let host = tokio::spawn(crate::host::host(config, run, Stop::when(stopped.clone())));
    let ticket: Ticket = tokio::time::timeout(CHECK_PATIENCE, ticket_rx)
        .await
        .context("the host did not register with the relay in time")?
        .context("the host stopped before it registered")?;

    // The player: `blindrelay connect`, listening on loopback.
    let listener = match TcpListener::bind(loopback(ports.player)).await {
        Ok(listener) => listener,
        Err(_) => TcpListener::bind(loopback(0)).await?,
    };
    let player_addr = listener.local_addr()?;
    ports.player = player_addr.port();
    if let Err(err) = ports.save() {
        info!(%err, "cannot keep the demo's ports; the next run picks new ones");
    }
    let mut player_config = PlayerConfig::new(SecretKey::generate()?);
    player_config.punch = false;
    let (player_stop, player_stopped) = watch::channel(false);
    let player = tokio::spawn(crate::connect::connect(
        ticket.clone(),
        listener,
        player_config,
        Stop::when(player_stopped),
    ));
    // The built-in film's page, a folder's largest file, or a service's front page.
    let front = match &sample {
        Sample::File { path, .. } if args.serve.is_some() => path.as_str(),
        _ => "/",
    };
    println!("player: http://{player_addr}{front}");
    let checked = check(player_addr, &sample).await;
    match &checked {
        Ok(line) => println!("check: {line}"),
        Err(err) => println!("check: failed: {err:#}"),
    }
    if !args.check {
        if checked.is_ok() {
            println!("demo: running; Ctrl-C stops it");
        }
        stop.await;
    }
    // The player first, then the host, then the relay: each side's sessions end
    // before the side it talks to goes away.
    let _ = player_stop.send(true);
    player.await.context("the player's task")??;
    let _ = stopping.send(true);
    host.await.context("the host's task")??;
    relay.shutdown().await;
    checked.map(|_| ())
}

/// `127.0.0.1:port`.
fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The ports of the demo's relay, player and panel, kept in the state folder
/// (`ports`, `name = port` lines) from one run to the next.
struct Ports {
    path: PathBuf,
    relay: u16,
    player: u16,
    panel: u16,
}

impl Ports {
    /// The ports of the last run; 0 (any) for those it did not keep.
    fn load(state: &Path) -> Self {
        let path = state.join("ports");
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let port = |name: &str| {
            text.lines()
                .filter_map(|line| line.split_once('='))
                .find(|(key, _)| key.trim() == name)
                .and_then(|(_, value)| value.trim().parse().ok())
                .unwrap_or(0)
        };
        Self {
            relay: port("relay"),
            player: port("player"),
            panel: port("panel"),
            path,
        }
    }

    /// The panel's port: the kept one while it is free, else a free one (taken now,
    /// and kept for next time).
    fn panel_port(&mut self) -> u16 {
        let free = |port: u16| {
            std::net::TcpListener::bind(loopback(port))
                .and_then(|listener| listener.local_addr())
                .map(|addr| addr.port())
                .ok()
        };
        self.panel = (self.panel != 0)
            .then(|| free(self.panel))
            .flatten()
            .or_else(|| free(0))
            .unwrap_or(0);
        self.panel
    }

    fn save(&self) -> std::io::Result<()> {
        let text = format!(
            "# The ports of `blindrelay demo`'s last run, taken again while they are free.\n\
             relay = {}\nplayer = {}\npanel = {}\n",
            self.relay, self.player, self.panel
        );
        std::fs::write(&self.path, text)
    }
}

/// The state folder: the one given, else `$XDG_STATE_HOME/blindrelay/demo` or
/// `~/.local/state/blindrelay/demo`.
fn state_dir(given: Option<PathBuf>) -> Result<PathBuf> {
    let dir = match given {
        Some(dir) => dir,
        None => {
            let base = std::env::var_os("XDG_STATE_HOME")
                .map(PathBuf::from)
                .filter(|dir| dir.is_absolute())
                .or_else(|| {
                    std::env::var_os("HOME").map(|home| Path::new(&home).join(".local/state"))
                })
                .context("no HOME to keep the demo's state in: give --state-dir DIR")?;
            base.join("blindrelay").join("demo")
        }
    };
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot make the state folder {}", dir.display()))?;
    println!("state: {}", dir.display());
    Ok(dir)
}

/// The host's key in `path`, made there on the first run.
fn host_key(path: &Path) -> Result<SecretKey> {
    if !path.exists() {
        let key = SecretKey::generate()?;
        crate::keys::write_private(
            path,
            crate::keys::key_file(&key, crate::cli::Role::Host).as_bytes(),
            false,
        )?;
    }
    crate::keys::read_key_as(path, crate::cli::Role::Host)
}

/// Writes the built-in film and its page into `folder`; returns the folder.
fn write_film(folder: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(folder).with_context(|| format!("cannot make {}", folder.display()))?;
    std::fs::write(folder.join(FILM_NAME), FILM)?;
    std::fs::write(folder.join("index.html"), PAGE)?;
    Ok(folder.to_owned())
}

/// What the check fetches from `folder`: the built-in film, or the largest file
/// directly in it.
fn sample_file(folder: &Path) -> Result<Sample> {
    let mut largest: Option<(u64, String)> = None;
    let entries = std::fs::read_dir(folder)
        .with_context(|| format!("cannot read the folder {}", folder.display()))?;
    for entry in entries.flatten() {
        let Ok(meta) = entry.metadata() else { continue };
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        // Names a URL path carries as they are.
        let plain = name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
        let larger = largest.as_ref().is_none_or(|(len, _)| meta.len() > *len);
        if meta.is_file() && plain && !name.starts_with('.') && larger {
            largest = Some((meta.len(), name));
        }
    }
    let (_, name) =
        largest.with_context(|| format!("{} holds no file to fetch", folder.display()))?;
    let bytes = std::fs::read(folder.join(&name))?;
    Ok(Sample::File {
        path: format!("/{name}"),
        bytes: bytes.into(),
    })
}

/// Fetches the sample through the player and says how it went.
async fn check(player: SocketAddr, sample: &Sample) -> Result<String> {
    let path = match sample {
        Sample::File { path, .. } => path.as_str(),
        Sample::FrontPage => "/",
    };
    let started = Instant::now();
    // The host may still be finishing its first registration's round trips: a
    // session refused meanwhile is tried again, within the patience.
    let (status, body) = loop {
        match fetch(player, path).await {
            Ok(answer) => break answer,
            Err(err) if started.elapsed() < RETRY_FOR => {
                info!(%err, "the first fetch failed; trying again");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(err) => return Err(err),
        }
    };
    let took = started.elapsed();
    match sample {
        Sample::File { bytes, .. } => {
            if !status.contains(" 200") {
                bail!("{path}: the service answered {status:?}");
            }
            if body != *bytes {
                bail!(
                    "{path}: {} bytes arrived, not the {} bytes of the file",
                    body.len(),
                    bytes.len()
                );
            }
            let mbit = body.len() as f64 * 8.0 / took.as_secs_f64().max(1e-6) / 1e6;
            Ok(format!(
                "{path} arrived byte-exact through the relay, end-to-end encrypted: {} bytes in {:.2} s ({mbit:.0} Mbit/s)",
                body.len(),
                took.as_secs_f64()
            ))
        }
        Sample::FrontPage => Ok(format!(
            "/ answered through the relay, end-to-end encrypted: {status} ({} bytes in {:.2} s)",
            body.len(),
            took.as_secs_f64()
        )),
    }
}

/// One HTTP/1.1 GET of `path` through the player at `player`: the status line and
/// the body, read to the end of the connection.
async fn fetch(player: SocketAddr, path: &str) -> Result<(String, Bytes)> {
    let mut tcp = TcpStream::connect(player).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(CHECK_PATIENCE, tcp.read_to_end(&mut response))
        .await
        .context("the answer did not arrive in time")??;
    let head_end = response
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .context("no HTTP answer came through the player")?;
    let status = String::from_utf8_lossy(&response[..head_end])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    Ok((status, Bytes::copy_from_slice(&response[head_end + 4..])))
}
