//! Hosts, players and sessions on each path the harness compares.
//!
//! Every host is a real [`HostAgent`] registered with the relay *and* listening
//! directly on loopback, so the same agent, the same players and the same Noise
//! session serve the direct path and the relayed one; only the path differs. The TCP
//! splice path pairs two plain TCP connections through [`crate::tcp_splice`].
//!
//! [`Fixture::open`] returns both ends of a session: the player opens it, writes an
//! 8-byte tag, and the host's accept loop hands the stream with that tag back to the
//! caller. Tag 0 asks the host to echo instead ([`Fixture::open_echo`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use blindrelay_client::{
    HostAgent, HostConfig, HostState, PathPreference, Player, PlayerConfig, RelayUrl, SecretKey,
    SecureStream, Ticket,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

/// One end of a session, whatever the path.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A boxed end of a session.
pub type BoxStream = Box<dyn Stream>;

/// How long a host may take to register, or a session to reach its host.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The paths compared in one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Path {
    /// Player to host's direct listener: QUIC and Noise, no relay.
    Direct,
    /// Two TCP connections through the TCP splice: no QUIC, no Noise.
    Splice,
    /// Through the relay under test: QUIC to the relay and on to the host, Noise end
    /// to end.
    Relay,
}

impl Path {
    /// Every path, in the order phases run.
    pub const ALL: [Path; 3] = [Path::Direct, Path::Splice, Path::Relay];

    /// The prefix of this path's keys in the JSON output.
    pub fn key(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Splice => "splice",
            Self::Relay => "relay",
        }
    }

    /// The name in tables.
    pub fn label(self) -> &'static str {
        match self {
            Self::Direct => "direct (no relay)",
            Self::Splice => "TCP splice",
            Self::Relay => "relay",
        }
    }
}

/// Both ends of one session.
pub struct Session {
    /// The player's end.
    pub player: BoxStream,
    /// The host's end.
    pub host: BoxStream,
}

/// Waiting callers, by tag.
type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<SecureStream>>>>;

/// Hosts and players for a run.
pub struct Fixture {
    tickets: Vec<Ticket>,
    players: Vec<Player>,
    splice: SocketAddr,
    pending: Pending,
    next_tag: AtomicU64,
    stop: watch::Sender<bool>,
    hosts: JoinSet<()>,
}

impl Fixture {
    /// Starts `hosts` host agents (registered with `relay` when given, each also
    /// listening directly on 127.0.0.1) and `players` players.
    pub async fn start(
        relay: Option<&RelayUrl>,
        splice: SocketAddr,
        hosts: usize,
        players: usize,
    ) -> Result<Self> {
        let (stop, stop_rx) = watch::channel(false);
        let pending: Pending = Arc::default();
        let mut tickets = Vec::new();
        let mut tasks = JoinSet::new();
        let direct = SocketAddr::from(([127, 0, 0, 1], 0));
        for _ in 0..hosts.max(1) {
            let key = SecretKey::generate()?;
            let mut config = match relay {
                Some(url) => HostConfig::new(key, url.clone()).with_direct(direct),
                None => HostConfig::direct_only(key, direct),
            };
            config.max_concurrent_sessions = 4096;
            config.max_direct_connections = 4096;
            let agent = HostAgent::start(config).context("starting a host agent")?;
            if relay.is_some() {
                let mut states = agent.watch_state();
                tokio::time::timeout(
                    PATIENCE,
                    states.wait_for(|state| {
                        matches!(state, HostState::Registered | HostState::Stopped { .. })
                    }),
                )
                .await
                .context("a host did not register in time")??;
                if agent.state() != HostState::Registered {
                    bail!("a host could not register: {:?}", agent.state());
                }
            }
            tickets.push(agent.ticket().clone());
            tasks.spawn(accept_loop(agent, pending.clone(), stop_rx.clone()));
        }
        let players = (0..players.max(1))
            .map(|_| Ok(Player::new(PlayerConfig::new(SecretKey::generate()?))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            tickets,
            players,
            splice,
            pending,
            next_tag: AtomicU64::new(1),
            stop,
            hosts: tasks,
        })
    }

    /// Opens session number `index` on `path` (player `index % players`, host
    /// `index % hosts`) and returns both ends.
    pub async fn open(&self, path: Path, index: usize) -> Result<Session> {
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        if path == Path::Splice {
            let (player, host) = crate::tcp_splice::connect_pair(self.splice, tag).await?;
            return Ok(Session {
                player: Box::new(player),
                host: Box::new(host),
            });
        }
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .map_err(|_| anyhow!("pending sessions lock poisoned"))?
            .insert(tag, tx);
        let result = async {
            let mut player = self.connect(path, index).await?;
            player.write_all(&tag.to_le_bytes()).await?;
            player.flush().await?;
            let host = tokio::time::timeout(PATIENCE, rx)
                .await
                .context("the host did not get the session in time")?
                .context("the host stopped")?;
            Ok(Session {
                player: Box::new(player),
                host: Box::new(host),
            })
        }
        .await;
        if result.is_err() {
            if let Ok(mut pending) = self.pending.lock() {
                pending.remove(&tag);
            }
        }
        result
    }

    /// Opens a session on `path` whose host echoes every byte; returns the player's
    /// end after the host has echoed one byte: connect, Noise handshake and first
    /// byte, as the `setup` scenario counts a session.
    pub async fn open_echo(&self, path: Path, index: usize) -> Result<BoxStream> {
        let mut player: BoxStream = if path == Path::Splice {
            let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
            let (player, host) = crate::tcp_splice::connect_pair(self.splice, tag).await?;
            tokio::spawn(echo(Box::new(host)));
            Box::new(player)
        } else {
            let mut player = self.connect(path, index).await?;
            player.write_all(&0u64.to_le_bytes()).await?;
            Box::new(player)
        };
        player.write_all(&[1]).await?;
        player.flush().await?;
        let mut first = [0u8; 1];
        player.read_exact(&mut first).await?;
        Ok(player)
    }

    /// Number of hosts.
    pub fn hosts(&self) -> usize {
        self.tickets.len()
    }

    /// Stops the host agents cleanly.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for player in &self.players {
            player.close().await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while self.hosts.join_next().await.is_some() {}
        })
        .await;
    }

    async fn connect(&self, path: Path, index: usize) -> Result<SecureStream> {
        let preference = match path {
            Path::Direct => PathPreference::DirectOnly,
            _ => PathPreference::RelayOnly,
        };
        let player = &self.players[index % self.players.len()];
        let ticket = &self.tickets[index % self.tickets.len()];
        Ok(player.connect_via(ticket, preference).await?)
    }
}

/// Accepts the host's sessions and routes each by its tag.
async fn accept_loop(mut agent: HostAgent, pending: Pending, mut stop: watch::Receiver<bool>) {
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            session = agent.accept() => {
                let Some(session) = session else { break };
                sessions.spawn(route(session, pending.clone()));
            }
            _ = stop.changed() => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
    agent.shutdown().await;
}

async fn route(mut session: SecureStream, pending: Pending) {
    let mut tag = [0u8; 8];
    if tokio::time::timeout(PATIENCE, session.read_exact(&mut tag))
        .await
        .is_err()
    {
        return;
    }
    match u64::from_le_bytes(tag) {
        0 => echo(Box::new(session)).await,
        tag => {
            let waiter = pending.lock().ok().and_then(|mut map| map.remove(&tag));
            if let Some(waiter) = waiter {
                let _ = waiter.send(session);
            }
        }
    }
}

/// Echoes everything back, flushing after each read so small frames go out at once.
pub async fn echo(mut stream: BoxStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() || stream.flush().await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = stream.shutdown().await;
}
