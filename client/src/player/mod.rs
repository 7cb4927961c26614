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

use blindrelay_protocol::noise::{ExpectVerdict, Hello, NoiseError, Transport, VerdictOpened};
use blindrelay_protocol::resume::{DEFAULT_REPLAY_WINDOW, DEFAULT_RESUME_WINDOW};
use blindrelay_protocol::{codes, ErrorCode, RelayUrl, SecretKey, StreamCode, Ticket};
use bytes::BytesMut;

use crate::connections::ConnectionCache;
use crate::endpoint::{ConnectRelayError, ConnectionProfile, LocalEndpoints, TlsSetupError};
use crate::linger::{StreamRecv, StreamSend};
use crate::session::RelayTransport;
use crate::stream::{Resumption, SecureStream};
use crate::transports::{TransportPreference, UdpHealth};
use crate::wire::{read_noise_message, WireError};
use tokio::io::AsyncWriteExt;

mod direct;
mod punch;
mod race;
mod rejoin;
mod relayed;
mod walk;

use relayed::SessionAsk;

/// How long a player waits before giving up on a direct address, by default.
const DEFAULT_DIRECT_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// Idle timeout of relay and direct connections: with
    /// [`PlayerConfig::keep_alive`] under it, the other end answers at least once
    /// in this span, so silence this long means the path is gone (a relay that
    /// died, a network lost) and the player's resumable sessions look for a new
    /// one at once rather than after a long wait.
    pub idle_timeout: Duration,
    /// Which transports reach the relay.
    pub transport: TransportPreference,
    /// In [`TransportPreference::Auto`], how long QUIC runs alone before TLS over
    /// TCP joins the race.
    pub tcp_delay: Duration,
    /// How long a session whose stream failed is kept while the player looks for a
    /// new one (PROTOCOL.md 10.8); zero opens sessions that cannot be resumed.
    pub resume_window: Duration,
    /// The most a resumable session sends before the host acknowledges it: what it
    /// keeps to send again after a resume.
    pub replay_window: usize,
    /// Hole punching (PROTOCOL.md 10.9): after a relayed session opens, try to
    /// punch a direct path to its host in the background; new sessions then go
    /// direct and running resumable ones move there.
    pub punch: bool,
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
            // As a host's: a relay that restarted answers the next packet with a
            // stateless reset, so a session resumes seconds after, well inside the
            // host's resume window, instead of after a 10 s silence.
            keep_alive: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(5),
            transport: TransportPreference::Auto,
            tcp_delay: crate::transports::DEFAULT_TCP_DELAY,
            resume_window: DEFAULT_RESUME_WINDOW,
            replay_window: DEFAULT_REPLAY_WINDOW,
            punch: true,
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
    /// The player asked to resume a session the host does not hold (any more).
    #[error("the host holds no such session to resume")]
    UnknownSession,
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
    /// Direct paths punched to hosts, and attempts under way.
    punched: punch::Punched,
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
                punched: punch::Punched::default(),
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
        let config = &self.connector.config;
        let hello = if config.resume_window.is_zero() {
            Hello::Plain
        } else {
            Hello::Resumable
        };
        let stream = self.connect_with(ticket, preference, hello).await?;
        if punches_after(stream.relay_transport(), preference) {
            self.punch_in_background(ticket);
        }
        if !stream.transport().resumable() {
            return Ok(stream);
        }
        let rejoin = rejoin::PlayerRejoin::new(
            Player {
                connector: self.connector.clone(),
            },
            ticket.clone(),
            preference,
        );
        let resumption =
            Resumption::new(config.replay_window, config.resume_window, Box::new(rejoin));
        Ok(stream.with_resumption(resumption))
    }

    /// One session set-up whose hello asks `hello`, within the connect timeout.
    async fn connect_with(
        &self,
        ticket: &Ticket,
        preference: PathPreference,
        hello: Hello,
    ) -> Result<SecureStream, ConnectError> {
        let timeout = self.connector.config.connect_timeout;
        tokio::time::timeout(timeout, self.race(ticket, preference, hello))
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
}

/// Whether a new session that `relay_transport` carries (`None`: direct) starts
/// punching: only on `auto`, and only from a relay reached over UDP (where UDP does
/// not get through, neither would a punch, and the relay could not observe a UDP
/// mapping).
fn punches_after(relay_transport: Option<RelayTransport>, preference: PathPreference) -> bool {
    relay_transport == Some(RelayTransport::Quic) && preference == PathPreference::Auto
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

impl Connector {
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
        let (refused, unknown) = match expect_verdict.open_verdict(&frame) {
            Ok(VerdictOpened::Welcome(transport) | VerdictOpened::Resumed(transport)) => {
                let (send, recv) = pending.finish();
                return Ok((transport, send, recv));
            }
            Ok(VerdictOpened::NotAuthorized(refused)) => (refused, false),
            Ok(VerdictOpened::UnknownSession(refused)) => (refused, true),
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
        if unknown {
            return Err(ConnectError::UnknownSession);
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a refused player is told: the plain words for a host that is not
    /// there, the relay's own when it says more, and the code otherwise.
    #[test]
    fn a_refusal_is_told_in_the_words_that_fit_it() {
        for plain in ["", "host offline"] {
            assert_eq!(
                refusal_text(ErrorCode::HostOffline, plain),
                HOST_NOT_REACHABLE
            );
        }
        assert_eq!(
            refusal_text(ErrorCode::HostOffline, "relay shutting down"),
            "host not reachable: relay shutting down"
        );
        assert_eq!(
            refusal_text(ErrorCode::HostUnreachable, "host connection closing"),
            format!("{HOST_NOT_REACHABLE} (host connection closing)")
        );
        let other = refusal_text(ErrorCode::RateLimited, "too many sessions");
        assert!(
            other.starts_with("relay refused the session: ")
                && other.ends_with("(too many sessions)"),
            "{other}"
        );
    }

    #[test]
    fn only_a_session_relayed_over_quic_on_auto_starts_punching() {
        assert!(punches_after(
            Some(RelayTransport::Quic),
            PathPreference::Auto
        ));
        for transport in [
            None,
            Some(RelayTransport::Tcp),
            Some(RelayTransport::WebSocket),
        ] {
            assert!(
                !punches_after(transport, PathPreference::Auto),
                "{transport:?}"
            );
        }
        for preference in [PathPreference::RelayOnly, PathPreference::DirectOnly] {
            assert!(
                !punches_after(Some(RelayTransport::Quic), preference),
                "{preference}"
            );
        }
    }
}
