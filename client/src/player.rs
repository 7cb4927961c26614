//! The player: opens end-to-end encrypted sessions to hosts named by tickets.
//!
//! [`Player::connect`] races the paths a ticket offers, happy-eyeballs style: a direct
//! attempt to every address in the ticket starts at once, the relay attempt after
//! [`PlayerConfig::relay_delay`] (or as soon as every direct attempt has failed), and
//! the first attempt to finish its Noise handshake wins. The others are cancelled and
//! their streams reset with [`codes::stream::CANCELLED`].
//!
//! A player connects from one UDP socket per address family (see
//! [`crate::endpoint`]). Through the relay, one QUIC connection per relay is kept and
//! shared by every session to hosts on that relay; it is re-opened on demand when it
//! has gone away, and a relay that does not answer holds up only sessions to itself
//! (see [`crate::connections`]). Each session is one bidirectional stream:
//! `Connect { host id }` and the Noise hello are sent together (one round trip saved),
//! the relay answers `Connected` or an `Error`, and the host's Noise reply follows.
//!
//! Directly, one QUIC connection per host address is kept the same way, with ALPN
//! `blindrelay-direct/1`, and a session stream starts with the hello: there is no
//! relay to address. The host's certificate is not checked: the Noise IK handshake,
//! encrypted to the host id from the ticket, is what authenticates the host (see
//! [`crate::HostAgent`]'s direct listener).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use blindrelay_protocol::noise::{
    ExpectVerdict, NoiseError, PlayerHandshake, Transport, VerdictOpened,
};
use blindrelay_protocol::placement::MAX_REDIRECTS;
use blindrelay_protocol::{
    codes, ControlMessage, ErrorCode, HostId, RelayUrl, SecretKey, StreamCode, Ticket,
};
use bytes::BytesMut;
use tokio::task::JoinSet;
use tracing::debug;

use crate::connections::ConnectionCache;
use crate::endpoint::{
    connect_relay, connect_relay_tcp, connect_relay_websocket, direct_client_config,
    ConnectRelayError, ConnectionProfile, LocalEndpoints, TlsSetupError, DIRECT_SERVER_NAME,
};
use crate::linger::{StreamRecv, StreamSend};
use crate::session::{RelayTransport, SessionEnded, SessionPath};
use crate::stream::SecureStream;
use crate::transports::{race, TransportPreference, UdpHealth};
use crate::wire::{read_control, read_noise_message, WireError};
use tokio::io::AsyncWriteExt;

/// How long a player waits before giving up on a direct address, by default.
const DEFAULT_DIRECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a player whose relay just restarted asks again for a host that is not
/// registered yet: hosts notice the restart at their next keep-alive and register
/// again within a few seconds.
const HOST_RETURN_WAIT: Duration = Duration::from_secs(5);

/// How often it asks in the meantime.
const HOST_RETURN_POLL: Duration = Duration::from_millis(250);

/// Which paths [`Player::connect`] may use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum PathPreference {
    /// Direct first, the relay after a short delay; the first to finish wins.
    #[default]
    Auto,
    /// Only the ticket's direct addresses.
    DirectOnly,
    /// Only the relay.
    RelayOnly,
}

impl std::fmt::Display for PathPreference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::DirectOnly => "direct",
            Self::RelayOnly => "relay",
        })
    }
}

/// A path preference that is none of `auto`, `direct` and `relay`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown path {0:?}: expected auto, direct or relay")]
pub struct UnknownPathPreference(pub String);

impl std::str::FromStr for PathPreference {
    type Err = UnknownPathPreference;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "auto" => Ok(Self::Auto),
            "direct" => Ok(Self::DirectOnly),
            "relay" => Ok(Self::RelayOnly),
            other => Err(UnknownPathPreference(other.to_owned())),
        }
    }
}

/// How a player behaves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PlayerConfig {
    /// The player's static key. Hosts see its public half and may decide by it whom
    /// to serve.
    pub key: SecretKey,
    /// Which paths to use.
    pub path: PathPreference,
    /// In [`PathPreference::Auto`], how long direct attempts run alone before the
    /// relay attempt joins the race.
    pub relay_delay: Duration,
    /// Deadline for one direct attempt: QUIC connection and Noise handshake.
    pub direct_timeout: Duration,
    /// Deadline for a whole session set-up, every path included.
    pub connect_timeout: Duration,
    /// Keep-alive on relay and direct connections.
    pub keep_alive: Duration,
    /// Idle timeout of relay and direct connections.
    pub idle_timeout: Duration,
    /// Which transports reach the relay.
    pub transport: TransportPreference,
    /// In [`TransportPreference::Auto`], how long QUIC runs alone before TLS over
    /// TCP joins the race.
    pub tcp_delay: Duration,
}

impl PlayerConfig {
    /// Defaults with the given key.
    pub fn new(key: SecretKey) -> Self {
        Self {
            key,
            path: PathPreference::Auto,
            relay_delay: Duration::from_millis(250),
            direct_timeout: DEFAULT_DIRECT_TIMEOUT,
            connect_timeout: Duration::from_secs(15),
            keep_alive: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            transport: TransportPreference::Auto,
            tcp_delay: crate::transports::DEFAULT_TCP_DELAY,
        }
    }
}

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The relay could not be reached.
    #[error(transparent)]
    Relay(#[from] ConnectRelayError),
    /// The relay refused the session.
    #[error("{}", refusal_text(*code, reason))]
    Refused {
        /// The relay's error code.
        code: ErrorCode,
        /// The relay's reason.
        reason: String,
    },
    /// A direct attempt failed.
    #[error("direct connection to {addr} failed: {source}")]
    Direct {
        /// The host address tried.
        addr: SocketAddr,
        /// Why.
        source: DirectConnectError,
    },
    /// The ticket offers no path the preference allows.
    #[error("the ticket offers no {preference} path to the host")]
    NoPath {
        /// The preference in force.
        preference: PathPreference,
    },
    /// The host's handshake failed: not the host the ticket names, or an altered
    /// message.
    #[error("end-to-end handshake with the host failed: {0}")]
    Handshake(#[from] NoiseError),
    /// The relay answered a session request with a message out of protocol.
    #[error("session set-up failed: the relay answered with {message}")]
    UnexpectedAnswer {
        /// The name of the message it sent.
        message: &'static str,
    },
    /// The session stream failed during set-up.
    #[error("session set-up failed: {0}")]
    Stream(#[from] SetupStreamError),
    /// An attempt's task ended without an answer (it panicked).
    #[error("a connection attempt stopped unexpectedly: {0}")]
    Attempt(#[from] tokio::task::JoinError),
    /// The relay connection could not open another stream.
    #[error("relay connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Set-up took longer than the configured timeout.
    #[error("no session within {0:?}")]
    Timeout(Duration),
    /// The relay connection went away under this player (the relay restarted or
    /// stopped), and on the new one the host was not back in time: it may be
    /// offline, or still registering again.
    #[error(
        "host not reachable: the connection to the relay was lost, and on a new one the \
         host was not back within {waited:?} (the relay may have restarted; the host may \
         be offline, or still reconnecting: try again in a moment)"
    )]
    HostNotBack {
        /// How long the player waited for it.
        waited: Duration,
    },
    /// The host completed the handshake but does not serve this player's key. The
    /// host's owner can add it to their authorized players.
    #[error("not authorized: the host does not serve player key {player}")]
    NotAuthorized {
        /// This player's static public key, as the host's owner would list it.
        player: blindrelay_protocol::PublicKey,
    },
    /// The relay is a member of a pool and another member holds the host; the
    /// player follows such redirects itself, so this is what is left when none of
    /// the members could be reached (PROTOCOL.md section 18.4).
    #[error("redirected within the relay pool to {}, which could not be reached", members.join(", "))]
    Redirected {
        /// Member names (`host:port`), the owner first.
        members: Vec<String>,
    },
}

/// Why a session stream failed while the session was being set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupStreamError {
    /// The relay's answer could not be read.
    #[error("cannot read the relay's answer: {0}")]
    Answer(#[from] WireError),
    /// A Noise message from the host could not be read.
    #[error("cannot read the host's handshake: {0}")]
    Read(WireError),
    /// The session stream could not be written to.
    #[error("cannot write to the session stream: {0}")]
    Write(std::io::Error),
}

/// Why a direct connection to a host could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DirectConnectError {
    /// The local UDP socket could not be made.
    #[error("cannot open a UDP socket: {0}")]
    Socket(#[from] std::io::Error),
    /// TLS configuration failed.
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    /// The QUIC connection could not be started.
    #[error("cannot connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The connection failed or could not open a session stream.
    #[error("connection failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// No connection and Noise handshake within the direct timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

const HOST_NOT_REACHABLE: &str = "host not reachable: relay disabled or host offline";

fn refusal_text(code: ErrorCode, reason: &str) -> String {
    match code {
        // The plain refusal, or the relay's own words when it says more (a relay
        // that is shutting down says so).
        ErrorCode::HostOffline if reason.is_empty() || reason == "host offline" => {
            HOST_NOT_REACHABLE.to_owned()
        }
        ErrorCode::HostOffline => format!("host not reachable: {reason}"),
        // The registration was still there but the host's connection was going away:
        // typically a host that has just switched its relay off.
        ErrorCode::HostUnreachable => format!("{HOST_NOT_REACHABLE} ({reason})"),
        _ => format!("relay refused the session: {code} ({reason})"),
    }
}

/// Opens sessions to hosts.
pub struct Player {
    connector: Arc<Connector>,
}

/// What every connection attempt of one player shares: its settings, its sockets and
/// its connections.
struct Connector {
    config: PlayerConfig,
    endpoints: LocalEndpoints,
    relays: ConnectionCache<RelayUrl>,
    direct: ConnectionCache<SocketAddr>,
    /// Relays UDP did not reach lately.
    udp: UdpHealth,
}

/// Which path an attempt in the race took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    Direct,
    Relay,
}

impl Player {
    /// A player with `config`.
    pub fn new(config: PlayerConfig) -> Self {
        Self {
            connector: Arc::new(Connector {
                config,
                endpoints: LocalEndpoints::new(),
                relays: ConnectionCache::new(),
                direct: ConnectionCache::new(),
                udp: UdpHealth::default(),
            }),
        }
    }

    /// Opens an end-to-end encrypted session to the host `ticket` names, on the
    /// paths the configured [`PathPreference`] allows.
    pub async fn connect(&self, ticket: &Ticket) -> Result<SecureStream, ConnectError> {
        self.connect_via(ticket, self.connector.config.path).await
    }

    /// Like [`Player::connect`], with the path preference given here.
    pub async fn connect_via(
        &self,
        ticket: &Ticket,
        preference: PathPreference,
    ) -> Result<SecureStream, ConnectError> {
        let timeout = self.connector.config.connect_timeout;
        tokio::time::timeout(timeout, self.race(ticket, preference))
            .await
            .map_err(|_| ConnectError::Timeout(timeout))?
    }

    /// This player's static public key: what a host owner lists to serve it.
    pub fn public_key(&self) -> blindrelay_protocol::PublicKey {
        self.connector.config.key.public_key()
    }

    /// Closes every relay and direct connection; sessions on them end.
    pub async fn close(&self) {
        let relays = self.connector.relays.drain();
        for connection in relays.into_iter().chain(self.connector.direct.drain()) {
            connection.close(codes::close::NORMAL.into(), b"player closing");
        }
    }

    /// Races the allowed paths; see the module documentation.
    async fn race(
        &self,
        ticket: &Ticket,
        preference: PathPreference,
    ) -> Result<SecureStream, ConnectError> {
        let direct = match preference {
            PathPreference::RelayOnly => &[][..],
            _ => ticket.direct_addrs(),
        };
        let mut relay = match preference {
            PathPreference::DirectOnly => None,
            _ => ticket.relay().cloned(),
        };
        if direct.is_empty() && relay.is_none() {
            return Err(ConnectError::NoPath { preference });
        }

        let mut attempts = JoinSet::new();
        for &addr in direct {
            let (connector, host_id) = (self.connector.clone(), *ticket.host_id());
            attempts.spawn(async move {
                let attempt = connector.connect_direct(addr, host_id).await;
                (Attempt::Direct, attempt)
            });
        }
        let relay_delay = if direct.is_empty() {
            Duration::ZERO
        } else {
            self.connector.config.relay_delay
        };
        let relay_timer = tokio::time::sleep(relay_delay);
        tokio::pin!(relay_timer);
        let (mut direct_error, mut relay_error) = (None, None);
        loop {
            // Every direct attempt failed before the delay: the relay starts now.
            if attempts.is_empty() {
                match relay.take() {
                    Some(url) => self.spawn_relay_attempt(&mut attempts, url, ticket),
                    None => break,
                }
            }
            tokio::select! {
                joined = attempts.join_next() => match joined {
                    Some(Ok((path, Ok(stream)))) => {
                        debug!(?path, "path won the race");
                        cancel_losers(attempts).await;
                        return Ok(stream);
                    }
                    Some(Ok((Attempt::Direct, Err(err)))) => {
                        debug!(%err, "direct attempt failed");
                        direct_error.get_or_insert(err);
                    }
                    Some(Ok((Attempt::Relay, Err(err)))) => {
                        debug!(%err, "relay attempt failed");
                        relay_error = Some(err);
                    }
                    Some(Err(err)) => {
                        direct_error.get_or_insert(ConnectError::Attempt(err));
                    }
                    None => {}
                },
                () = &mut relay_timer, if relay.is_some() => {
                    if let Some(url) = relay.take() {
                        self.spawn_relay_attempt(&mut attempts, url, ticket);
                    }
                }
            }
        }
        // The relay's answer is the clearer one ("relay disabled or host offline")
        // when it was tried; otherwise why the first direct address failed.
        Err(relay_error
            .or(direct_error)
            .unwrap_or(ConnectError::NoPath { preference }))
    }

    fn spawn_relay_attempt(
        &self,
        attempts: &mut JoinSet<(Attempt, Result<SecureStream, ConnectError>)>,
        url: RelayUrl,
        ticket: &Ticket,
    ) {
        let (connector, host_id) = (self.connector.clone(), *ticket.host_id());
        attempts.spawn(async move {
            let attempt = connector.connect_pooled(url, host_id).await;
            (Attempt::Relay, attempt)
        });
    }
}

/// Stops the attempts that lost the race. One still running is aborted, and its
/// [`PendingSession`] guard resets its stream; one that finished at the same moment as the
/// winner is reset here, so the host never keeps a session nobody reads.
async fn cancel_losers(mut attempts: JoinSet<(Attempt, Result<SecureStream, ConnectError>)>) {
    attempts.abort_all();
    while let Some(joined) = attempts.join_next().await {
        if let Ok((_, Ok(stream))) = joined {
            let (recv, send) = stream.into_inner();
            send.reset(codes::stream::CANCELLED);
            recv.stop(codes::stream::CANCELLED);
        }
    }
}

/// A session stream being set up. If the set-up is abandoned (the attempt lost the
/// race and was aborted, or failed), the stream is reset with `CANCELLED` rather than
/// finished, so the other end sees a cancelled session, not a truncated one; or with
/// `PROTOCOL_VIOLATION` when the host's verdict broke the session protocol.
struct PendingSession {
    /// Some until [`PendingSession::finish`] hands the halves over.
    halves: Option<(StreamSend, StreamRecv)>,
    code: StreamCode,
}

impl PendingSession {
    fn new((recv, send): (StreamRecv, StreamSend)) -> Self {
        Self {
            halves: Some((send, recv)),
            code: codes::stream::CANCELLED,
        }
    }

    fn streams(&mut self) -> (&mut StreamSend, &mut StreamRecv) {
        // Only `finish` takes the halves out, and it consumes the guard.
        let (send, recv) = self
            .halves
            .as_mut()
            .expect("a pending session's streams are there until it finishes");
        (send, recv)
    }

    /// The set-up succeeded: hand the halves over.
    fn finish(mut self) -> (StreamSend, StreamRecv) {
        self.halves
            .take()
            .expect("a pending session's streams are there until it finishes")
    }
}

impl Drop for PendingSession {
    fn drop(&mut self) {
        if let Some((mut send, mut recv)) = self.halves.take() {
            send.abandon_with(self.code);
            recv.abandon_with(self.code);
        }
    }
}

/// A relayed stream the relay reset with `PEER_GONE` before the host's reply: the
/// host's connection went away between pairing and handshake, typically because it
/// has just switched its relay off. Reported like the relay's own refusal.
fn host_left(err: WireError) -> ConnectError {
    let peer_gone = match &err {
        WireError::Io(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<SessionEnded>())
            .is_some_and(|ended| *ended == SessionEnded::PeerGone),
        _ => false,
    };
    if peer_gone {
        return ConnectError::Refused {
            code: ErrorCode::HostUnreachable,
            reason: "the host left the relay during set-up".to_owned(),
        };
    }
    SetupStreamError::Read(err).into()
}

/// Of the failures of every transport tried, in the order tried, the one that
/// says most: the first that is not a timeout (a timeout only says nothing came).
fn most_telling(errors: Vec<ConnectError>) -> ConnectError {
    let timeout = |err: &ConnectError| {
        matches!(
            err,
            ConnectError::Relay(ConnectRelayError::Timeout(_)) | ConnectError::Timeout(_)
        )
    };
    let first_telling = errors.iter().position(|err| !timeout(err)).unwrap_or(0);
    errors
        .into_iter()
        .nth(first_telling)
        .unwrap_or(ConnectError::NoPath {
            preference: PathPreference::RelayOnly,
        })
}

impl ConnectError {
    /// Whether the attempt failed on the way to the relay (it could not be reached,
    /// or the connection broke), not at the relay's or the host's answer: another
    /// transport may still get through.
    fn is_transport_failure(&self) -> bool {
        matches!(
            self,
            Self::Relay(_) | Self::Connection(_) | Self::Attempt(_) | Self::Stream(_)
        )
    }
}

/// What a player asks a relay for: a session with `host_id`, after following
/// `redirects` pool redirects.
#[derive(Debug, Clone, Copy)]
struct SessionAsk {
    host_id: HostId,
    redirects: u8,
}

impl Connector {
    /// A relayed session through `url`'s relay; when it belongs to a pool of relays
    /// and another member holds the host, through that member (PROTOCOL.md section
    /// 18.4): redirects are followed up to [`MAX_REDIRECTS`], after which the
    /// members named last are asked in turn, each answering for itself.
    async fn connect_pooled(
        self: Arc<Self>,
        url: RelayUrl,
        host_id: HostId,
    ) -> Result<SecureStream, ConnectError> {
        let mut queue = std::collections::VecDeque::from([url]);
        let mut redirects = 0;
        let mut last = None;
        // Members that answered already: none of them holds the host, so a later
        // redirect back to one is not followed.
        let mut asked = std::collections::HashSet::new();
        while let Some(url) = queue.pop_front() {
            if !asked.insert(url.authority()) {
                continue;
            }
            let ask = SessionAsk { host_id, redirects };
            match self.clone().connect_relayed(url.clone(), ask).await {
                Err(ConnectError::Redirected { members }) if redirects < MAX_REDIRECTS => {
                    debug!(from = %url, to = ?members, "redirected within the relay pool");
                    redirects += 1;
                    queue = crate::host::member_urls(&url, &members).into();
                    last = Some(ConnectError::Redirected { members });
                }
                Err(err)
                    if err.is_transport_failure()
                        || matches!(err, ConnectError::Redirected { .. }) =>
                {
                    debug!(relay = %url, %err, "pool member not available; trying the next");
                    last = Some(err);
                }
                // The owner a redirect named does not hold the host: the members
                // ranked after it are asked for themselves, without more redirects
                // (a member whose view of the pool lags may hold it).
                Err(
                    err @ ConnectError::Refused {
                        code: ErrorCode::HostOffline,
                        ..
                    },
                ) if redirects > 0 && !queue.is_empty() => {
                    debug!(relay = %url, "the pool member does not hold the host; asking the fallbacks");
                    redirects = MAX_REDIRECTS;
                    if !matches!(last, Some(ConnectError::Refused { .. })) {
                        last = Some(err);
                    }
                }
                other => return other,
            }
        }
        Err(last.unwrap_or(ConnectError::Timeout(self.config.connect_timeout)))
    }

    /// Reads the host's verdict, its first transport frame, on either path.
    async fn read_verdict(
        &self,
        expect_verdict: ExpectVerdict,
        mut pending: PendingSession,
    ) -> Result<(Transport, StreamSend, StreamRecv), ConnectError> {
        let (send, recv) = pending.streams();
        let frame = read_noise_message(recv)
            .await
            .map_err(SetupStreamError::Read)?;
        let refused = match expect_verdict.open_verdict(&frame) {
            Ok(VerdictOpened::Welcome(transport)) => {
                let (send, recv) = pending.finish();
                return Ok((transport, send, recv));
            }
            Ok(VerdictOpened::NotAuthorized(refused)) => refused,
            Err(err) => {
                // The host broke the session protocol: say so as the guard resets.
                pending.code = codes::stream::PROTOCOL_VIOLATION;
                return Err(err.into());
            }
        };
        // Leave exactly as a served player that leaves at once: its `end` frame,
        // the stream's end, and the same wait for the host's own end. A reset
        // here would tell the relay which players were refused.
        let mut end = BytesMut::new();
        refused.seal_end(&mut end)?;
        send.write_all(&end)
            .await
            .map_err(SetupStreamError::Write)?;
        // Dropping both halves lets them linger as a dropped session's do.
        drop(pending.finish());
        Err(ConnectError::NotAuthorized {
            player: self.config.key.public_key(),
        })
    }

    fn profile(&self) -> ConnectionProfile {
        ConnectionProfile {
            incoming_streams: 0,
            keep_alive: self.config.keep_alive,
            idle_timeout: self.config.idle_timeout,
        }
    }

    async fn connect_direct(
        self: Arc<Self>,
        addr: SocketAddr,
        host_id: HostId,
    ) -> Result<SecureStream, ConnectError> {
        let timeout = self.config.direct_timeout;
        let direct_error = |source: DirectConnectError| ConnectError::Direct { addr, source };
        let attempt = async {
            let connection = self
                .direct
                .get_or_connect(&addr, || self.connect_host(addr))
                .await
                .map_err(direct_error)?;
            let (send, recv) = connection
                .open_bi()
                .await
                .map_err(|err| direct_error(err.into()))?;
            let mut pending = PendingSession::new(crate::linger::halves(send, recv));
            let (send, recv) = pending.streams();
            let mut handshake = PlayerHandshake::new(&self.config.key, &host_id)?;
            let mut out = BytesMut::new();
            handshake.write_hello(&mut out)?;
            send.write_all(&out)
                .await
                .map_err(SetupStreamError::Write)?;
            let reply = read_noise_message(recv)
                .await
                .map_err(SetupStreamError::Read)?;
            let expect_verdict = handshake.read_reply(&reply)?;
            let (transport, writer, reader) = self.read_verdict(expect_verdict, pending).await?;
            debug!(%addr, host = %host_id.short(), "direct session established");
            Ok(SecureStream::new(
                reader,
                writer,
                transport,
                SessionPath::Direct,
                0,
                BytesMut::new(),
            ))
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .unwrap_or_else(|_| Err(direct_error(DirectConnectError::Timeout(timeout))))
    }

    /// Opens a QUIC connection to a host's direct listener.
    async fn connect_host(
        &self,
        addr: SocketAddr,
    ) -> Result<quinn::Connection, DirectConnectError> {
        let endpoint = self.endpoints.for_remote(addr)?;
        let config = direct_client_config(self.profile())?;
        Ok(endpoint
            .connect_with(config, addr, DIRECT_SERVER_NAME)?
            .await?)
    }

    /// A relayed session over the transports the configuration allows. With
    /// [`TransportPreference::Auto`]: QUIC first, TLS over TCP after the fallback
    /// delay (at once when UDP to this relay was found broken lately, or as soon as
    /// QUIC fails), then WebSocket; the first session set up wins and the others are
    /// cancelled. A QUIC connection still being made when another transport wins
    /// goes on in the background, and once it is up new sessions take QUIC again.
    async fn connect_relayed(
        self: Arc<Self>,
        url: RelayUrl,
        host_id: SessionAsk,
    ) -> Result<SecureStream, ConnectError> {
        let auto = self.config.transport == TransportPreference::Auto;
        if auto && self.relays.live(&url).is_some() {
            return self.relayed_quic(&url, host_id).await;
        }
        // A connection that was there and closed: the relay went away under us.
        let relay_went_away = self.relays.went_away(&url);
        let transports: &[RelayTransport] = match self.config.transport {
            TransportPreference::Quic => &[RelayTransport::Quic],
            TransportPreference::Tcp => &[RelayTransport::Tcp],
            TransportPreference::WebSocket => &[RelayTransport::WebSocket],
            _ => &[
                RelayTransport::Quic,
                RelayTransport::Tcp,
                RelayTransport::WebSocket,
            ],
        };
        let step = self.config.tcp_delay;
        let first_step = if self.udp.is_broken(&url) {
            Duration::ZERO
        } else {
            step
        };
        let connector: &Connector = &self;
        let (url, shared) = (&url, &self);
        let attempts = transports
            .iter()
            .map(
                |&transport| -> crate::transports::Attempt<'_, SecureStream, ConnectError> {
                    match transport {
                        RelayTransport::Quic if auto => {
                            Box::pin(Arc::clone(shared).relayed_quic_meanwhile(
                                url.clone(),
                                host_id,
                                relay_went_away,
                            ))
                        }
                        RelayTransport::Quic => Box::pin(connector.relayed_quic(url, host_id)),
                        RelayTransport::Tcp | RelayTransport::WebSocket => {
                            Box::pin(connector.host_returning(relay_went_away, move || {
                                connector.relayed_framed(url, host_id, transport)
                            }))
                        }
                    }
                },
            )
            .collect();
        let raced = race(attempts, &[Duration::ZERO, first_step, step], |err| {
            !err.is_transport_failure()
        })
        .await;
        match raced {
            Ok((_, stream)) => {
                if auto && stream.relay_transport() == Some(RelayTransport::Quic) {
                    self.udp.set_working(url);
                } else if auto {
                    debug!(transport = ?stream.relay_transport(), "QUIC did not get through to the relay");
                    self.udp.set_broken(url);
                }
                Ok(stream)
            }
            Err(errors) => Err(most_telling(errors)),
        }
    }

    /// A relayed session over QUIC whose connection, made in a task of its own,
    /// outlives this attempt when another transport wins: new sessions take QUIC
    /// again as soon as it is up.
    async fn relayed_quic_meanwhile(
        self: Arc<Self>,
        url: RelayUrl,
        host_id: SessionAsk,
        relay_went_away: bool,
    ) -> Result<SecureStream, ConnectError> {
        let connecting = tokio::spawn({
            let (connector, url) = (self.clone(), url.clone());
            async move {
                let profile = connector.profile();
                connector
                    .relays
                    .get_or_connect(&url, || connect_relay(&connector.endpoints, &url, profile))
                    .await
            }
        });
        let connection = connecting.await??;
        self.host_returning(relay_went_away, || self.relayed_on(&connection, host_id))
            .await
    }

    /// A relayed session over QUIC, on the player's shared connection to the relay.
    async fn relayed_quic(
        &self,
        url: &RelayUrl,
        host_id: SessionAsk,
    ) -> Result<SecureStream, ConnectError> {
        let profile = self.profile();
        let connection = self
            .relays
            .get_or_connect(url, || connect_relay(&self.endpoints, url, profile))
            .await?;
        let first = self.relayed_on(&connection, host_id).await;
        if first.is_ok() || connection.close_reason().is_none() {
            return first;
        }
        // The shared connection died under this session, most likely a relay that
        // restarted (its stateless reset ends the old connection at our first
        // packet): once more on a new connection. Its host may still be registering
        // again, so an offline host is asked for again for a few seconds.
        debug!("relay connection lost; trying again on a new one");
        let connection = self
            .relays
            .get_or_connect(url, || connect_relay(&self.endpoints, url, profile))
            .await?;
        self.host_returning(true, || self.relayed_on(&connection, host_id))
            .await
    }

    /// Runs `attempt` once; or, when the relay went away under this player
    /// (restarted, or stopped), again while it says the host is offline, for
    /// [`HOST_RETURN_WAIT`]: the host may still be registering again. Then the host
    /// is reported as not back rather than as plainly offline.
    async fn host_returning<F, Fut>(
        &self,
        relay_went_away: bool,
        mut attempt: F,
    ) -> Result<SecureStream, ConnectError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<SecureStream, ConnectError>>,
    {
        if !relay_went_away {
            return attempt().await;
        }
        let deadline = tokio::time::Instant::now() + HOST_RETURN_WAIT;
        loop {
            match attempt().await {
                Err(ConnectError::Refused {
                    code: ErrorCode::HostOffline,
                    ..
                }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(HOST_RETURN_POLL).await;
                }
                Err(ConnectError::Refused {
                    code: ErrorCode::HostOffline,
                    ..
                }) => {
                    return Err(ConnectError::HostNotBack {
                        waited: HOST_RETURN_WAIT,
                    })
                }
                other => return other,
            }
        }
    }

    /// One relayed session attempt on a new stream of the QUIC `connection`.
    async fn relayed_on(
        &self,
        connection: &quinn::Connection,
        host_id: SessionAsk,
    ) -> Result<SecureStream, ConnectError> {
        let (send, recv) = connection.open_bi().await?;
        let pending = PendingSession::new(crate::linger::halves(send, recv));
        self.session_through_relay(pending, host_id, RelayTransport::Quic)
            .await
    }

    /// A relayed session over a stream transport (TLS over TCP, or WebSocket in
    /// it): a connection of its own, which carries just this session.
    async fn relayed_framed(
        &self,
        url: &RelayUrl,
        host_id: SessionAsk,
        transport: RelayTransport,
    ) -> Result<SecureStream, ConnectError> {
        let config = blindrelay_transport::Config {
            idle_timeout: self.config.idle_timeout,
            keep_alive: Some(self.config.keep_alive),
            ..Default::default()
        };
        let framed = match transport {
            RelayTransport::WebSocket => connect_relay_websocket(url, config).await?,
            _ => connect_relay_tcp(url, config).await?,
        };
        let pending = PendingSession::new(crate::linger::framed_halves(framed.send, framed.recv));
        self.session_through_relay(pending, host_id, transport)
            .await
    }

    /// Asks the relay for a session with `host_id` on a new stream, and runs the
    /// player's side of the Noise handshake through it.
    async fn session_through_relay(
        &self,
        mut pending: PendingSession,
        host_id: SessionAsk,
        carried_by: RelayTransport,
    ) -> Result<SecureStream, ConnectError> {
        let (send, recv) = pending.streams();
        let SessionAsk { host_id, redirects } = host_id;
        let mut handshake = PlayerHandshake::new(&self.config.key, &host_id)?;
        let mut out = BytesMut::new();
        ControlMessage::Connect { host_id, redirects }.encode(&mut out);
        handshake.write_hello(&mut out)?;
        // If the relay refuses, it may stop our stream before the hello is through;
        // its answer is still waiting to be read, so a failed write is not the end.
        let written = send.write_all(&out).await;

        let (session_id, limits) = match read_control(recv).await {
            Ok(ControlMessage::Connected { session_id, limits }) => (session_id, limits),
            Ok(ControlMessage::Error { code, reason }) => {
                return Err(ConnectError::Refused { code, reason })
            }
            Ok(ControlMessage::Redirect { members }) => {
                return Err(ConnectError::Redirected { members })
            }
            Ok(other) => {
                return Err(ConnectError::UnexpectedAnswer {
                    message: other.name(),
                })
            }
            Err(err) => {
                written.map_err(SetupStreamError::Write)?;
                return Err(SetupStreamError::from(err).into());
            }
        };
        let reply = read_noise_message(recv).await.map_err(host_left)?;
        let expect_verdict = handshake.read_reply(&reply)?;
        let (transport, writer, reader) = self.read_verdict(expect_verdict, pending).await?;
        debug!(session_id, host = %host_id.short(), %limits, transport = %carried_by, "relayed session established");
        Ok(SecureStream::new(
            reader,
            writer,
            transport,
            SessionPath::Relayed,
            session_id,
            BytesMut::new(),
        )
        .with_limits(limits)
        .with_relay_transport(carried_by))
    }
}
