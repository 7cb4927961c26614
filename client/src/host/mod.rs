//! The host agent: keeps a host reachable, through its relay and directly, and
//! accepts sessions from both paths through one [`HostAgent::accept`].
//!
//! The agent owns one background task, and that task owns everything else:
//!
//! - **The relay side** ([`relay`]), run in the task itself: registration with the
//!   home relay while Enable Relay is on, reconnection with backoff, and the session
//!   streams the relay opens.
//! - **The direct listener** ([`direct`], optional), a child task: a QUIC endpoint of
//!   the host's own that players reach without a relay. Enable Relay does not touch
//!   it. When there is one, the relay connection leaves from its socket too.
//!
//! Both hand each session stream to the one [`SessionAcceptor`] ([`accept`]), which
//! runs the Noise responder, decides by the player's static key whether to serve it
//! ([`HostConfig::players`], see [`crate::authorized`]), and hands finished
//! [`SecureStream`]s, marked with their [`SessionPath`], to [`HostAgent::accept`].
//!
//! A relay that requires registration tokens gets [`HostConfig::token`] in
//! `Register`, or the newer one given to [`HostAgent::set_token`].

mod accept;
mod direct;
mod plan;
mod punch;
mod relay;
mod resume;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use blindrelay_protocol::{HostId, RelayUrl, SecretKey, Ticket, TicketError, Token};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::authorized::PlayerAuthorization;
use crate::backoff::BackoffConfig;
use crate::endpoint::LocalEndpoints;
use crate::session::{RelayTransport, SessionPath};
use crate::stream::SecureStream;
use crate::transports::TransportPreference;
use accept::SessionAcceptor;
pub(crate) use direct::direct_server_config;
pub use direct::DirectListenError;
pub(crate) use plan::member_urls;
use plan::RelaySideEnd;
pub(crate) use relay::register_over;
pub use relay::{register_on, register_on_redirected, RegisterError, RegistrationStream};

/// How a host agent behaves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HostConfig {
    /// The host's identity.
    pub key: SecretKey,
    /// The host's home relay; `None` for a host reachable only directly.
    pub relay: Option<RelayUrl>,
    /// Enable Relay: whether the agent registers with `relay` at start. It can be
    /// switched at run time with [`HostAgent::set_relay_enabled`].
    pub enable_relay: bool,
    /// Where to listen for direct connections (QUIC), if anywhere. Port 0 picks a
    /// free port.
    pub direct: Option<SocketAddr>,
    /// Direct addresses to put in the ticket (at most 8), for a host behind a
    /// forwarded port or bound to an unspecified address. Empty: the bound address,
    /// or for `0.0.0.0` / `::` the address this machine uses towards the internet.
    pub advertise: Vec<SocketAddr>,
    /// Reconnection delays.
    pub backoff: BackoffConfig,
    /// Keep-alive on the relay connection: well under the relay's idle timeout, and
    /// short enough that a relay that restarted is noticed within seconds (its
    /// stateless reset answers the first packet the host sends it).
    pub keep_alive: Duration,
    /// Idle timeout of direct connections.
    pub idle_timeout: Duration,
    /// How long the relay may be silent: with [`HostConfig::keep_alive`] under it,
    /// the relay answers at least once in this span, so silence this long means the
    /// path is gone (UDP cut, the relay's machine down) and the agent registers
    /// again, over TCP if UDP no longer gets through. Also the relay connection's
    /// idle timeout.
    pub relay_idle_timeout: Duration,
    /// Which transports reach the relay.
    pub transport: TransportPreference,
    /// In [`TransportPreference::Auto`], how long QUIC runs alone before TLS over
    /// TCP joins the race.
    pub tcp_delay: Duration,
    /// In [`TransportPreference::Auto`], while registered over TCP or WebSocket,
    /// how often QUIC is tried again; once it gets through, the registration moves
    /// back to it.
    pub quic_probe_interval: Duration,
    /// Deadline for the registration exchange with the relay, and for a player's
    /// Noise hello once a session stream is open.
    pub handshake_timeout: Duration,
    /// Sessions open at once on the relay connection, and on each direct connection.
    pub max_concurrent_sessions: u32,
    /// Direct connections open at once; further ones are refused.
    pub max_direct_connections: u32,
    /// The operator's registration token, for a relay that requires one.
    pub token: Option<Token>,
    /// Which players the host serves (every player by default).
    pub players: PlayerAuthorization,
    /// How long a session whose stream failed is kept for its player to resume it
    /// (PROTOCOL.md 10.8); zero serves sessions that cannot be resumed.
    pub resume_window: Duration,
    /// The most a resumable session sends before the player acknowledges it: what
    /// it keeps to send again after a resume.
    pub replay_window: usize,
    /// Hole punching (PROTOCOL.md 10.9): players may ask, through the relay, for a
    /// direct path to this host, and running sessions move to it. A host with a
    /// relay and no direct listener then listens for such connections, unadvertised,
    /// on the socket it reaches the relay from. Off: punch sessions are refused as
    /// a host from before punching refuses them.
    pub punch: bool,
}

impl HostConfig {
    /// Defaults for a host with `key` at home relay `relay`, relay enabled, no
    /// direct listener.
    pub fn new(key: SecretKey, relay: RelayUrl) -> Self {
        Self::with_relay(key, Some(relay))
    }

    /// Defaults for a host with no relay at all, reachable only on `listen`.
    pub fn direct_only(key: SecretKey, listen: SocketAddr) -> Self {
        Self::with_relay(key, None).with_direct(listen)
    }

    fn with_relay(key: SecretKey, relay: Option<RelayUrl>) -> Self {
        Self {
            key,
            enable_relay: relay.is_some(),
            relay,
            direct: None,
            advertise: Vec::new(),
            backoff: BackoffConfig::default(),
            // A PING every 2 s costs a relay with 100,000 idle hosts 50,000 small
            // packets a second, and buys recovery from a relay restart in about
            // 2 s instead of 10.
            keep_alive: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(30),
            relay_idle_timeout: Duration::from_millis(3500),
            transport: TransportPreference::Auto,
            tcp_delay: crate::transports::DEFAULT_TCP_DELAY,
            quic_probe_interval: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            max_concurrent_sessions: 1024,
            max_direct_connections: 256,
            token: None,
            players: PlayerAuthorization::Open,
            resume_window: blindrelay_protocol::resume::DEFAULT_RESUME_WINDOW,
            replay_window: blindrelay_protocol::resume::DEFAULT_REPLAY_WINDOW,
            punch: true,
        }
    }

    /// Also listen directly on `listen`.
    pub fn with_direct(mut self, listen: SocketAddr) -> Self {
        self.direct = Some(listen);
        self
    }
}

/// Where a host that punches and has no direct listener of its own listens: any
/// port, in the relay's address family, since its relay connection leaves from
/// this socket (a relay named by a DNS name is taken to be reached over IPv4).
fn punch_listen_addr(config: &HostConfig) -> SocketAddr {
    let v6 = config.relay.as_ref().is_some_and(|relay| {
        relay
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::Ipv6Addr>()
            .is_ok()
    });
    if v6 {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    }
}

/// Where the agent stands with its relay.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HostState {
    /// Connecting or registering; `attempt` counts since the last success.
    Connecting {
        /// 1 for the first attempt.
        attempt: u32,
    },
    /// Registered: players can reach the host through the relay.
    Registered,
    /// Enable Relay is off, or the host has no relay: nothing is sent to a relay and
    /// players reach the host only directly.
    Disabled,
    /// The relay's certificate is not one this host trusts (a self-signed relay
    /// reached by a URL without its pin, say): it keeps trying, but only a URL with
    /// the pin `blindrelayd` printed, or a CA certificate on the relay, can fix it.
    RelayUntrusted {
        /// The TLS library's words.
        reason: String,
    },
    /// The relay refused the registration token, or it expired: the host is not
    /// reachable through the relay until it gets a new token
    /// ([`HostAgent::set_token`]). Direct sessions go on.
    TokenRefused {
        /// The relay's code (`TokenExpired`, `TokenInvalid`, ...).
        code: blindrelay_protocol::ErrorCode,
        /// The relay's words.
        reason: String,
    },
    /// The agent stopped and will not reconnect.
    Stopped {
        /// Why.
        reason: String,
    },
}

impl std::fmt::Display for HostState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connecting { attempt } => write!(f, "connecting (attempt {attempt})"),
            Self::Registered => f.write_str("registered"),
            Self::Disabled => f.write_str("disabled"),
            Self::RelayUntrusted { reason } if reason.contains(relay::PIN_MISMATCH) => write!(
                f,
                "relay certificate does not match the pin in the relay URL: the relay has \
                 another certificate now (restarted without --state-dir or its certificate \
                 files?); use the URL it prints now, or start it with the certificate it had"
            ),
            Self::RelayUntrusted { reason } => write!(
                f,
                "relay certificate not trusted ({reason}): use the relay URL with ?pin=... \
                 that blindrelayd printed, or give the relay a certificate from a CA"
            ),
            Self::TokenRefused { code, .. }
                if *code == blindrelay_protocol::ErrorCode::TokenExpired =>
            {
                f.write_str("token expired")
            }
            Self::TokenRefused { code, .. }
                if *code == blindrelay_protocol::ErrorCode::TokenRequired =>
            {
                f.write_str(
                    "token required: this relay admits only hosts with a registration \
                     token; ask its operator for one and give it with --token-file FILE \
                     (or --token)",
                )
            }
            Self::TokenRefused { code, reason } => write!(f, "token refused: {code} ({reason})"),
            Self::Stopped { reason } => write!(f, "stopped ({reason})"),
        }
    }
}

/// Why a host agent could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The direct listener could not be set up.
    #[error(transparent)]
    Direct(#[from] DirectListenError),
    /// No ticket can be made: neither a relay nor a direct listener, or too many
    /// advertised addresses.
    #[error("cannot make a ticket for this host: {0}")]
    Ticket(#[from] TicketError),
}

/// Counters of what a host agent has done, and gauges of what it holds now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HostStats {
    /// Relay connections the agent holds now (0 or 1 when nothing leaks).
    pub relay_connections: u64,
    /// Relay connections opened since the start.
    pub relay_connects: u64,
    /// Direct connections open now.
    pub direct_connections: u64,
    /// Direct connections refused at the limit.
    pub direct_refused: u64,
    /// Sessions accepted through the relay.
    pub sessions_relayed: u64,
    /// Sessions accepted directly.
    pub sessions_direct: u64,
    /// Players refused as not authorized, on either path.
    pub players_refused: u64,
}

/// The agent's live counters, shared with its tasks.
#[derive(Debug, Default)]
struct HostCounters {
    relay_connections: AtomicU64,
    relay_connects: AtomicU64,
    direct_connections: AtomicU64,
    direct_refused: AtomicU64,
    sessions_relayed: AtomicU64,
    sessions_direct: AtomicU64,
    players_refused: AtomicU64,
}

impl HostCounters {
    fn snapshot(&self) -> HostStats {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        HostStats {
            relay_connections: get(&self.relay_connections),
            relay_connects: get(&self.relay_connects),
            direct_connections: get(&self.direct_connections),
            direct_refused: get(&self.direct_refused),
            sessions_relayed: get(&self.sessions_relayed),
            sessions_direct: get(&self.sessions_direct),
            players_refused: get(&self.players_refused),
        }
    }
}

/// A running host agent. Dropping it stops the agent abruptly;
/// [`HostAgent::shutdown`] closes its connections cleanly.
pub struct HostAgent {
    host_id: HostId,
    ticket: Ticket,
    direct_addr: Option<SocketAddr>,
    state: watch::Receiver<HostState>,
    sessions: mpsc::Receiver<SecureStream>,
    enable_relay: watch::Sender<bool>,
    token: watch::Sender<Option<Token>>,
    retry_at: watch::Receiver<Option<std::time::Instant>>,
    relay_transport: watch::Receiver<Option<RelayTransport>>,
    counters: Arc<HostCounters>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl HostAgent {
    /// Starts the agent on the current tokio runtime: binds the direct listener, if
    /// configured, and starts registering with the relay, if enabled.
    pub fn start(config: HostConfig) -> Result<Self, StartError> {
        let host_id = config.key.host_id();
        // A host that punches and has no direct listener of its own gets one on an
        // ephemeral port that no ticket names: players reach it only once punched.
        let punch_only = config.punch && config.direct.is_none() && config.relay.is_some();
        let listen_on = config
            .direct
            .or(punch_only.then(|| punch_listen_addr(&config)));
        let mut punch_socket = None;
        let listener = match listen_on {
            Some(addr) => {
                let (endpoint, socket) = direct::listen(&config, addr)?;
                let bound = endpoint
                    .local_addr()
                    .map_err(|source| DirectListenError::Bind { addr, source })?;
                let advertised = if punch_only {
                    Vec::new()
                } else {
                    let advertised = direct::advertised(bound, &config.advertise);
                    direct::log_listening(bound, &advertised);
                    advertised
                };
                punch_socket = Some(punch::PunchFrom {
                    socket,
                    endpoint: endpoint.clone(),
                    bound,
                });
                Some((endpoint, bound, advertised))
            }
            None => None,
        };
        let advertised = listener
            .as_ref()
            .map(|(_, _, advertised)| advertised.clone())
            .unwrap_or_default();
        let ticket = Ticket::with_routes(host_id, config.relay.clone(), advertised)?;
        let direct_addr = listener
            .as_ref()
            .filter(|_| !punch_only)
            .map(|(_, bound, _)| *bound);
        let puncher = match punch_socket {
            Some(from) if config.punch => Some(Arc::new(
                punch::HostPunch::new(from, &config, ticket.direct_addrs().to_vec())
                    .map_err(DirectListenError::Tls)?,
            )),
            _ => None,
        };
        let enabled = config.enable_relay && config.relay.is_some();
        let (state_tx, state) = watch::channel(if enabled {
            HostState::Connecting { attempt: 1 }
        } else {
            HostState::Disabled
        });
        let (sessions_tx, sessions) = mpsc::channel(16);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (enable_relay, enable_rx) = watch::channel(config.enable_relay);
        let (token, token_rx) = watch::channel(config.token.clone());
        let (retry_tx, retry_at) = watch::channel(None);
        let (transport_tx, relay_transport) = watch::channel(None);
        let counters = Arc::new(HostCounters::default());
        let config = Arc::new(config);
        let endpoints = match &listener {
            Some((endpoint, bound, _)) => LocalEndpoints::with_listener(endpoint.clone(), *bound),
            None => LocalEndpoints::new(),
        };
        let task = tokio::spawn(run(
            config.clone(),
            listener.map(|(endpoint, _, _)| endpoint),
            endpoints,
            AgentChannels {
                state: state_tx,
                acceptor: SessionAcceptor::new(config, sessions_tx, counters.clone(), puncher),
                enabled: enable_rx,
                token: token_rx,
                retry_at: retry_tx,
                transport: transport_tx,
                shutdown: shutdown_rx,
                counters: counters.clone(),
            },
        ));
        Ok(Self {
            host_id,
            ticket,
            direct_addr,
            state,
            sessions,
            enable_relay,
            token,
            retry_at,
            relay_transport,
            counters,
            shutdown,
            task,
        })
    }

    /// The host's id.
    pub fn host_id(&self) -> &HostId {
        &self.host_id
    }

    /// The ticket players use to reach this host: its relay, if it has one, and its
    /// direct addresses, if it listens directly.
    pub fn ticket(&self) -> &Ticket {
        &self.ticket
    }

    /// The local address of the direct listener, if there is one.
    pub fn direct_addr(&self) -> Option<SocketAddr> {
        self.direct_addr
    }

    /// Where the agent stands now.
    pub fn state(&self) -> HostState {
        self.state.borrow().clone()
    }

    /// A receiver that sees every change of state.
    pub fn watch_state(&self) -> watch::Receiver<HostState> {
        self.state.clone()
    }

    /// Switches Enable Relay. Off: the agent closes its relay connection (which ends
    /// every relayed session, with [`RELAY_DISABLED`](blindrelay_protocol::codes::close::RELAY_DISABLED)) and stays
    /// [`HostState::Disabled`]; direct sessions go on. On: it registers again. A host
    /// without a relay stays disabled either way.
    pub fn set_relay_enabled(&self, enabled: bool) {
        self.enable_relay.send_if_modified(|current| {
            let changed = *current != enabled;
            *current = enabled;
            changed
        });
    }

    /// Uses `token` for the registrations from now on: a renewed registration token
    /// takes effect without a restart. A host whose token was refused or expired
    /// ([`HostState::TokenRefused`]) registers again with it at once; a registered
    /// host keeps its registration until the relay ends it.
    pub fn set_token(&self, token: Token) {
        self.token.send_replace(Some(token));
    }

    /// When the agent tries its relay again, while it waits between attempts
    /// ([`HostState::Connecting`] after a failure); `None` otherwise. For a status
    /// line such as "retrying in 8 s".
    pub fn watch_retry(&self) -> watch::Receiver<Option<std::time::Instant>> {
        self.retry_at.clone()
    }

    /// What carries the registration with the relay, while the host is registered.
    pub fn relay_transport(&self) -> Option<RelayTransport> {
        *self.relay_transport.borrow()
    }

    /// [`HostAgent::relay_transport`] as it changes.
    pub fn watch_relay_transport(&self) -> watch::Receiver<Option<RelayTransport>> {
        self.relay_transport.clone()
    }

    /// Whether Enable Relay is on.
    pub fn relay_enabled(&self) -> bool {
        *self.enable_relay.borrow()
    }

    /// What the agent has done so far and what it holds now.
    pub fn stats(&self) -> HostStats {
        self.counters.snapshot()
    }

    /// The next session a player opened, through the relay or directly; `None` once
    /// the agent has stopped. [`SecureStream::path`] tells which way it came, and
    /// [`SecureStream::peer`] which player it is.
    pub async fn accept(&mut self) -> Option<SecureStream> {
        self.sessions.recv().await
    }

    /// Closes the relay connection and the direct listener cleanly and stops.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(3), &mut self.task).await;
    }
}

impl Drop for HostAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the agent's task is driven by (Enable Relay, shutdown) and reports to (its
/// state, its counters, and through the acceptor the sessions it accepts).
struct AgentChannels {
    state: watch::Sender<HostState>,
    acceptor: SessionAcceptor,
    enabled: watch::Receiver<bool>,
    /// The registration token in use, replaced by [`HostAgent::set_token`].
    token: watch::Receiver<Option<Token>>,
    /// When the relay side tries again, while it waits between attempts.
    retry_at: watch::Sender<Option<std::time::Instant>>,
    /// What carries the registration, while there is one.
    transport: watch::Sender<Option<RelayTransport>>,
    shutdown: watch::Receiver<bool>,
    counters: Arc<HostCounters>,
}

/// The agent's task: the direct listener as a child task, the relay side in line.
async fn run(
    config: Arc<HostConfig>,
    listener: Option<quinn::Endpoint>,
    endpoints: LocalEndpoints,
    mut control: AgentChannels,
) {
    let mut children = JoinSet::new();
    if let Some(endpoint) = &listener {
        // A listener opened only for punching is reached only through a punch.
        let path = match config.direct {
            Some(_) => SessionPath::Direct,
            None => SessionPath::Punched,
        };
        children.spawn(direct::serve_direct_players(
            endpoint.clone(),
            config.clone(),
            control.acceptor.clone(),
            control.counters.clone(),
            path,
        ));
    }
    let end = match &config.relay {
        Some(relay) => relay::run_relay(&config, relay, &endpoints, &mut control).await,
        None => {
            let _ = control.shutdown.changed().await;
            RelaySideEnd::Shutdown
        }
    };
    if let Some(endpoint) = &listener {
        direct::close(endpoint);
    }
    children.shutdown().await;
    let reason = match end {
        RelaySideEnd::Replaced => "another host registered the same host id: the same \
            key runs elsewhere; stop the other one, or give this host its own key \
            (blindrelay keygen)"
            .to_owned(),
        RelaySideEnd::Shutdown => "shut down".to_owned(),
    };
    control.state.send_replace(HostState::Stopped { reason });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_punches_from_the_family_its_relay_is_reached_in() {
        let key = SecretKey::generate().unwrap();
        let at = |host: &str| {
            let relay = RelayUrl::new(host, 4433, None).unwrap();
            punch_listen_addr(&HostConfig::new(key.clone(), relay))
        };
        assert_eq!(at("203.0.113.7"), SocketAddr::from(([0, 0, 0, 0], 0)));
        assert_eq!(at("relay.example.net"), SocketAddr::from(([0, 0, 0, 0], 0)));
        assert_eq!(
            at("2001:db8::7"),
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
        );
    }
}
