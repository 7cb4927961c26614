//! Hosts, players and sessions on each path the harness compares.
//!
//! Every host is a real [`HostAgent`] registered with the relay *and* listening
//! directly on loopback, so the same agent, the same players and the same Noise
//! session serve the direct path and the relayed one; only the path differs. Hosts
//! and players come in one group per transport of the run (each forced to it), so a
//! relayed path picks its host's leg and its player's leg independently. The TCP
//! splice path pairs two plain TCP connections through [`crate::tcp_splice`].
//!
//! [`Fixture::open`] returns both ends of a session: the player opens it, writes an
//! 8-byte tag, and the host's accept loop hands the stream with that tag back to the
//! caller. Tag 0 asks the host to echo instead ([`Fixture::open_echo`]).
//!
//! Against a pool of relays, [`Fixture::start_with`] keeps only host keys that a
//! given member owns, and [`Fixture::enter_pool_at`] gives every host a second
//! ticket naming another member: sessions on [`Path::Redirected`] enter there and
//! are redirected to the owner, the same hosts and players as on [`Path::Relay`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use blindrelay_client::{
    HostAgent, HostConfig, HostId, HostState, PathPreference, Player, PlayerConfig, RelayUrl,
    SecretKey, SecureStream, Ticket,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

use crate::transport::{Legs, Transport};

/// One end of a session, whatever the path.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A boxed end of a session.
pub type BoxStream = Box<dyn Stream>;

/// How long a host may take to register, or a session to reach its host.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// What `--paths` names: the direct path, the TCP splice, or the relay (on each
/// transport of `--transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum PathKind {
    /// Player to host's direct listener: QUIC and Noise, no relay.
    Direct,
    /// Two TCP connections through the TCP splice: no TLS, no Noise.
    Splice,
    /// Through the relay under test, Noise end to end.
    Relay,
}

impl PathKind {
    /// Every kind, in the order phases run.
    pub const ALL: [PathKind; 3] = [PathKind::Direct, PathKind::Splice, PathKind::Relay];

    /// The paths of these kinds, in order, a relay kind once per `legs`.
    pub fn expand(kinds: &[PathKind], legs: &[Legs]) -> Vec<Path> {
        let mut paths = Vec::new();
        for kind in kinds {
            match kind {
                Self::Direct => paths.push(Path::Direct),
                Self::Splice => paths.push(Path::Splice),
                Self::Relay => paths.extend(legs.iter().copied().map(Path::Relay)),
            }
        }
        paths.dedup();
        paths
    }
}

/// The paths compared in one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Path {
    /// Player to host's direct listener: QUIC and Noise, no relay.
    Direct,
    /// Two TCP connections through the TCP splice: no TLS, no Noise.
    Splice,
    /// Through the relay under test, the host and the player each on its transport,
    /// Noise end to end.
    Relay(Legs),
    /// As [`Path::Relay`], but the player enters at a pool member that does not own
    /// the host and follows its redirect to the owner (the relay under test).
    Redirected(Legs),
}

impl Path {
    /// The relayed path on QUIC both ways, as before there was a choice.
    pub const RELAY_QUIC: Path = Path::Relay(Legs {
        host: Transport::Quic,
        player: Transport::Quic,
    });

    /// The prefix of this path's keys in the JSON output.
    pub fn key(self) -> String {
        match self {
            Self::Direct => "direct".to_owned(),
            Self::Splice => "splice".to_owned(),
            Self::Relay(legs) => legs.key(),
            Self::Redirected(legs) => format!("{}_redirected", legs.key()),
        }
    }

    /// The name in tables.
    pub fn label(self) -> String {
        match self {
            Self::Direct => "direct (no relay)".to_owned(),
            Self::Splice => "TCP splice".to_owned(),
            Self::Relay(legs) => legs.label(),
            Self::Redirected(legs) => format!("{}, redirected once", legs.label()),
        }
    }

    /// Whether sessions on this path go through the relay under test.
    pub fn is_relay(self) -> bool {
        matches!(self, Self::Relay(_) | Self::Redirected(_))
    }

    /// The legs of a relayed path.
    pub fn legs(self) -> Option<Legs> {
        match self {
            Self::Relay(legs) | Self::Redirected(legs) => Some(legs),
            Self::Direct | Self::Splice => None,
        }
    }
}

/// Both ends of one session.
pub struct Session {
    /// The player's end.
    pub player: BoxStream,
    /// The host's end.
    pub host: BoxStream,
    /// How often the session resumed on a new stream (a relay restart, a path
    /// lost), as the player's end last saw it.
    pub resumes: Arc<AtomicU32>,
}

/// A player's end that notes its resumes into a counter the scenario reads.
struct Noted {
    inner: SecureStream,
    resumes: Arc<AtomicU32>,
}

impl Noted {
    fn note<T>(&self, polled: Poll<T>) -> Poll<T> {
        if polled.is_ready() {
            self.resumes.store(self.inner.resumes(), Ordering::Relaxed);
        }
        polled
    }
}

impl AsyncRead for Noted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.note(polled)
    }
}

impl AsyncWrite for Noted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note(polled)
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Waiting callers, by tag.
type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<SecureStream>>>>;

/// Hosts and players for a run: a group of each per transport.
pub struct Fixture {
    /// Host tickets by the transport their hosts registered on; the first group's
    /// hosts also serve the direct path.
    tickets: Vec<(Transport, Vec<Ticket>)>,
    /// The same hosts' tickets naming a pool member that redirects to their owner.
    redirected: Vec<(Transport, Vec<Ticket>)>,
    /// Players by the transport they reach the relay on.
    players: Vec<(Transport, Vec<Player>)>,
    splice: SocketAddr,
    pending: Pending,
    next_tag: AtomicU64,
    stop: watch::Sender<bool>,
    hosts: JoinSet<()>,
}

impl Fixture {
    /// Starts, for each of `transports`, `hosts` host agents (registered with
    /// `relay` over that transport when given, each also listening directly on
    /// 127.0.0.1) and `players` players that reach the relay over it.
    pub async fn start(
        relay: Option<&RelayUrl>,
        splice: SocketAddr,
        hosts: usize,
        players: usize,
        transports: &[Transport],
        resume_window: Duration,
    ) -> Result<Self> {
        Self::start_with(
            relay,
            splice,
            hosts,
            players,
            transports,
            resume_window,
            |_| true,
        )
        .await
    }

    /// As [`Fixture::start`], with host keys drawn until `keep` takes their host
    /// id (a pool member's share of host ids, say).
    pub async fn start_with(
        relay: Option<&RelayUrl>,
        splice: SocketAddr,
        hosts: usize,
        players: usize,
        transports: &[Transport],
        resume_window: Duration,
        keep: impl Fn(&HostId) -> bool,
    ) -> Result<Self> {
        let (stop, stop_rx) = watch::channel(false);
        let pending: Pending = Arc::default();
        let mut tickets = Vec::new();
        let mut player_groups = Vec::new();
        let mut tasks = JoinSet::new();
        let direct = SocketAddr::from(([127, 0, 0, 1], 0));
        let transports = if transports.is_empty() {
            &[Transport::Quic][..]
        } else {
            transports
        };
        for &transport in transports {
            let mut group = Vec::new();
            for _ in 0..hosts.max(1) {
                let key = keep_drawing(&keep)?;
                let mut config = match relay {
                    Some(url) => HostConfig::new(key, url.clone()).with_direct(direct),
                    None => HostConfig::direct_only(key, direct),
                };
                config.transport = transport.preference();
                config.max_concurrent_sessions = 4096;
                config.max_direct_connections = 4096;
                config.resume_window = resume_window;
                // What is measured is the path asked for: on one machine every
                // punch would take the relay's sessions direct.
                config.punch = false;
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
                group.push(agent.ticket().clone());
                tasks.spawn(accept_loop(agent, pending.clone(), stop_rx.clone()));
            }
            tickets.push((transport, group));
            let players = (0..players.max(1))
                .map(|_| {
                    let mut config = PlayerConfig::new(SecretKey::generate()?);
                    config.transport = transport.preference();
                    config.resume_window = resume_window;
                    config.punch = false;
                    Ok(Player::new(config))
                })
                .collect::<Result<Vec<_>>>()?;
            player_groups.push((transport, players));
        }
        Ok(Self {
            tickets,
            redirected: Vec::new(),
            players: player_groups,
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
                resumes: Arc::default(),
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
            let resumes = Arc::<AtomicU32>::default();
            let player = Noted {
                inner: player,
                resumes: resumes.clone(),
            };
            Ok(Session {
                player: Box::new(player),
                host: Box::new(host),
                resumes,
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

    /// Gives every host a ticket naming `entry`, a member of the pool the hosts
    /// registered with that does not own them: [`Path::Redirected`] uses those.
    pub fn enter_pool_at(&mut self, entry: &RelayUrl) -> Result<()> {
        self.redirected = self
            .tickets
            .iter()
            .map(|(transport, group)| {
                let group = group
                    .iter()
                    .map(|ticket| Ticket::new(*ticket.host_id(), entry.clone(), Vec::new()))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((*transport, group))
            })
            .collect::<Result<_>>()?;
        Ok(())
    }

    /// The host ids of the hosts on `transport`.
    pub fn host_ids(&self, transport: Transport) -> Vec<HostId> {
        group(&self.tickets, Some(transport))
            .map(|tickets| tickets.iter().map(|t| *t.host_id()).collect())
            .unwrap_or_default()
    }

    /// Number of hosts on each transport.
    pub fn hosts(&self) -> usize {
        self.tickets.first().map_or(0, |(_, group)| group.len())
    }

    /// Stops the host agents cleanly.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for player in self.players.iter().flat_map(|(_, group)| group) {
            player.close().await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while self.hosts.join_next().await.is_some() {}
        })
        .await;
    }

    async fn connect(&self, path: Path, index: usize) -> Result<SecureStream> {
        let (preference, legs) = match path {
            Path::Direct => (PathPreference::DirectOnly, None),
            Path::Relay(legs) | Path::Redirected(legs) => (PathPreference::RelayOnly, Some(legs)),
            Path::Splice => bail!("the TCP splice has no player"),
        };
        // The direct path uses the first group: its hosts listen directly too.
        let first = self.tickets.first().map(|(t, _)| *t);
        let players = group(&self.players, legs.map(|l| l.player).or(first))?;
        let tickets = match path {
            Path::Redirected(_) => &self.redirected,
            _ => &self.tickets,
        };
        let tickets = group(tickets, legs.map(|l| l.host).or(first))?;
        let player = &players[index % players.len()];
        let ticket = &tickets[index % tickets.len()];
        let stream = player.connect_via(ticket, preference).await?;
        if let Some(legs) = legs {
            // The player's transport is forced, so anything else is a harness bug
            // that would put the figures under the wrong name.
            if !legs.player.carried(stream.relay_transport()) {
                bail!(
                    "a session meant for {} went over {}",
                    legs.player.label(),
                    stream.route()
                );
            }
        }
        Ok(stream)
    }
}

/// A fresh host key whose host id `keep` takes. Bounded: a filter that takes
/// almost nothing is a harness bug, not something to wait out.
fn keep_drawing(keep: &impl Fn(&HostId) -> bool) -> Result<SecretKey> {
    for _ in 0..10_000 {
        let key = SecretKey::generate()?;
        if keep(&key.host_id()) {
            return Ok(key);
        }
    }
    bail!("no host key in 10,000 draws fits the relay pool's placement")
}

/// The members of `groups` for `transport`.
fn group<T>(groups: &[(Transport, Vec<T>)], transport: Option<Transport>) -> Result<&[T]> {
    groups
        .iter()
        .find(|(t, members)| Some(*t) == transport && !members.is_empty())
        .map(|(_, members)| members.as_slice())
        .with_context(|| format!("no hosts or players on {transport:?} in this run"))
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
