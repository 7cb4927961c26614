//! The host agent: keeps a host reachable, through its relay and directly, and
//! accepts sessions from both paths through one [`HostAgent::accept`].
//!
//! The agent owns one background task, and that task owns everything else:
//!
//! - **The relay side**, run in the task itself. While Enable Relay is on it connects
//!   to the relay, proves possession of the host key (see
//!   [`blindrelay_protocol::registration`]) and accepts the streams the relay opens,
//!   one per player session. When the relay goes away it reconnects with exponential
//!   backoff and jitter. Switching Enable Relay off closes the relay connection with
//!   [`codes::close::RELAY_DISABLED`], which ends every relayed session, and sends
//!   nothing more to the relay until it is switched on again. If a newer registration
//!   of the same host id replaces it, the agent stops: two hosts fighting over one id
//!   would otherwise evict each other forever.
//! - **The direct listener** (optional), a child task: a QUIC endpoint of the host's
//!   own that players reach without a relay (see [`crate::direct`]). Enable Relay
//!   does not touch it.
//!
//! Both run the same Noise responder, decide by the player's static key whether to
//! serve it ([`HostConfig::players`], see [`crate::authorized`]), and hand finished
//! [`SecureStream`]s, marked with their [`SessionPath`], to [`HostAgent::accept`].
//!
//! A relay that requires registration tokens gets [`HostConfig::token`] in
//! `Register`. When the relay refuses the token (missing, expired, for another host,
//! invalid or malformed) the agent stops: retrying with the same token cannot help.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use blindrelay_protocol::noise::HostHandshake;
use blindrelay_protocol::registration::{
    HostRegistration, HostRegistrationError, EXPORTER_LABEL, EXPORTER_LEN,
};
use blindrelay_protocol::{
    codes, ControlMessage, ErrorCode, HostId, RelayUrl, SecretKey, Ticket, TicketError, Token,
};
use bytes::BytesMut;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::authorized::PlayerAuthorization;
use crate::backoff::{Backoff, BackoffConfig};
use crate::direct::{self, DirectListenError};
use crate::endpoint::{connect_relay, ConnectRelayError, ConnectionProfile};
use crate::stream::{SecureStream, SessionPath};
use crate::wire::{read_control, read_noise_message, WireError};

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
    /// Keep-alive on the relay connection (well under the relay's idle timeout).
    pub keep_alive: Duration,
    /// Idle timeout of the relay connection and of direct connections.
    pub idle_timeout: Duration,
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
            keep_alive: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            max_concurrent_sessions: 1024,
            max_direct_connections: 256,
            token: None,
            players: PlayerAuthorization::Open,
        }
    }

    /// Also listen directly on `listen`.
    pub fn with_direct(mut self, listen: SocketAddr) -> Self {
        self.direct = Some(listen);
        self
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
            Self::Stopped { reason } => write!(f, "stopped ({reason})"),
        }
    }
}

/// Why one registration attempt failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// The relay could not be reached.
    #[error(transparent)]
    Relay(#[from] ConnectRelayError),
    /// The relay refused the registration.
    #[error("relay refused the registration: {code} ({reason})")]
    Refused {
        /// The relay's code.
        code: ErrorCode,
        /// The relay's reason.
        reason: String,
    },
    /// The relay answered out of the registration flow, or with a challenge the
    /// host cannot answer.
    #[error("registration failed: {0}")]
    Exchange(HostRegistrationError),
    /// The registration stream could not be opened: the connection is gone.
    #[error("cannot open the registration stream: {0}")]
    Open(#[from] quinn::ConnectionError),
    /// A registration message could not be written.
    #[error("cannot write to the registration stream: {0}")]
    Write(#[from] quinn::WriteError),
    /// The registration stream ended or carried a malformed frame.
    #[error("registration stream failed: {0}")]
    Wire(#[from] WireError),
    /// The connection offers no TLS keying material to bind the proof to.
    #[error("cannot bind the registration proof to the connection")]
    KeyingMaterial,
    /// The relay did not complete the registration in time.
    #[error("no answer from the relay within {0:?}")]
    Timeout(Duration),
}

impl From<HostRegistrationError> for RegisterError {
    fn from(err: HostRegistrationError) -> Self {
        match err {
            HostRegistrationError::Refused { code, reason } => Self::Refused { code, reason },
            other => Self::Exchange(other),
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
pub(crate) struct HostCounters {
    pub relay_connections: AtomicU64,
    pub relay_connects: AtomicU64,
    pub direct_connections: AtomicU64,
    pub direct_refused: AtomicU64,
    pub sessions_relayed: AtomicU64,
    pub sessions_direct: AtomicU64,
    pub players_refused: AtomicU64,
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
    counters: Arc<HostCounters>,
    shutdown: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl HostAgent {
    /// Starts the agent on the current tokio runtime: binds the direct listener, if
    /// configured, and starts registering with the relay, if enabled.
    pub fn start(config: HostConfig) -> Result<Self, StartError> {
        let host_id = config.key.host_id();
        let listener = match config.direct {
            Some(addr) => {
                let endpoint = direct::listen(&config, addr)?;
                let bound = endpoint
                    .local_addr()
                    .map_err(|source| DirectListenError::Bind { addr, source })?;
                let advertised = direct::advertised(bound, &config.advertise);
                direct::log_listening(bound, &advertised);
                Some((endpoint, bound, advertised))
            }
            None => None,
        };
        let advertised = listener
            .as_ref()
            .map(|(_, _, advertised)| advertised.clone())
            .unwrap_or_default();
        let ticket = Ticket::with_routes(host_id, config.relay.clone(), advertised)?;
        let direct_addr = listener.as_ref().map(|(_, bound, _)| *bound);
        let enabled = config.enable_relay && config.relay.is_some();
        let (state_tx, state) = watch::channel(if enabled {
            HostState::Connecting { attempt: 1 }
        } else {
            HostState::Disabled
        });
        let (sessions_tx, sessions) = mpsc::channel(16);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (enable_relay, enable_rx) = watch::channel(config.enable_relay);
        let counters = Arc::new(HostCounters::default());
        let task = tokio::spawn(run(
            Arc::new(config),
            listener.map(|(endpoint, _, _)| endpoint),
            Control {
                state: state_tx,
                sessions: sessions_tx,
                enabled: enable_rx,
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
            counters,
            shutdown,
            task: Some(task),
        })
    }

    /// Starts the agent like [`HostAgent::start`], for callers that follow the state
    /// rather than handle a start error: an agent that cannot start is returned
    /// already [`HostState::Stopped`] with the reason, and yields no sessions.
    pub fn spawn(config: HostConfig) -> Self {
        let fallback = (
            config.key.host_id(),
            config.relay.clone(),
            config.direct.into_iter().collect::<Vec<_>>(),
        );
        match Self::start(config) {
            Ok(agent) => agent,
            Err(err) => {
                warn!(%err, "host agent cannot start");
                let (host_id, relay, direct) = fallback;
                let ticket = Ticket::with_routes(host_id, relay.clone(), direct.clone())
                    .or_else(|_| {
                        // Neither route exists; name an address nobody listens on so
                        // the agent still has a ticket to show next to its state.
                        Ticket::with_routes(host_id, relay, vec![(Ipv4Addr::UNSPECIFIED, 0).into()])
                    })
                    .unwrap_or_else(|_| {
                        unreachable!("a ticket with one address and no relay is valid")
                    });
                let (_, state) = watch::channel(HostState::Stopped {
                    reason: err.to_string(),
                });
                let (_, sessions) = mpsc::channel(1);
                let (enable_relay, _) = watch::channel(false);
                let (shutdown, _) = watch::channel(true);
                Self {
                    host_id,
                    ticket,
                    direct_addr: None,
                    state,
                    sessions,
                    enable_relay,
                    counters: Arc::default(),
                    shutdown,
                    task: None,
                }
            }
        }
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
    /// every relayed session, with [`codes::close::RELAY_DISABLED`]) and stays
    /// [`HostState::Disabled`]; direct sessions go on. On: it registers again. A host
    /// without a relay stays disabled either way.
    pub fn set_relay_enabled(&self, enabled: bool) {
        self.enable_relay.send_if_modified(|current| {
            let changed = *current != enabled;
            *current = enabled;
            changed
        });
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
        if let Some(task) = self.task.as_mut() {
            let _ = tokio::time::timeout(Duration::from_secs(3), task).await;
        }
    }
}

impl Drop for HostAgent {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// What the agent's task is driven by and reports to.
struct Control {
    state: watch::Sender<HostState>,
    sessions: mpsc::Sender<SecureStream>,
    enabled: watch::Receiver<bool>,
    shutdown: watch::Receiver<bool>,
    counters: Arc<HostCounters>,
}

/// How a registered connection ended.
enum Ended {
    /// A newer registration took the host id: stop.
    Replaced,
    /// The connection was lost: reconnect.
    Lost(String),
    /// The relay is going away: register again after this long. Its running
    /// sessions go on until the relay closes them.
    GoingAway(Duration),
    /// Enable Relay was switched off.
    Disabled,
    /// The agent was asked to stop.
    Shutdown,
}

/// Why the relay side returned.
enum RelayEnd {
    Replaced,
    Shutdown,
    /// The relay refused the registration token.
    TokenRefused(String),
}

/// The agent's task: the direct listener as a child task, the relay side in line.
async fn run(config: Arc<HostConfig>, listener: Option<quinn::Endpoint>, mut control: Control) {
    let mut children = JoinSet::new();
    if let Some(endpoint) = &listener {
        children.spawn(direct::serve(
            endpoint.clone(),
            config.clone(),
            control.sessions.clone(),
            control.counters.clone(),
        ));
    }
    let end = match &config.relay {
        Some(relay) => run_relay(&config, relay, &mut control).await,
        None => {
            let _ = control.shutdown.changed().await;
            RelayEnd::Shutdown
        }
    };
    if let Some(endpoint) = &listener {
        direct::close(endpoint);
    }
    children.shutdown().await;
    let reason = match end {
        RelayEnd::Replaced => "another host registered the same host id".to_owned(),
        RelayEnd::Shutdown => "shut down".to_owned(),
        RelayEnd::TokenRefused(reason) => reason,
    };
    control.state.send_replace(HostState::Stopped { reason });
}

/// Keeps the host registered with `relay` while Enable Relay is on.
async fn run_relay(config: &Arc<HostConfig>, relay: &RelayUrl, control: &mut Control) -> RelayEnd {
    let mut backoff = Backoff::new(config.backoff);
    // Connections of relays that are going away, held open until the relay closes
    // them so the sessions on them can finish.
    let mut departing = JoinSet::new();
    loop {
        while departing.try_join_next().is_some() {}
        if !*control.enabled.borrow_and_update() {
            backoff.reset();
            control.state.send_replace(HostState::Disabled);
            info!("relay disabled: reachable only directly");
            tokio::select! {
                on = control.enabled.wait_for(|on| *on) => if on.is_err() {
                    return RelayEnd::Shutdown;
                },
                _ = control.shutdown.changed() => return RelayEnd::Shutdown,
            }
            info!("relay enabled");
            continue;
        }
        control.state.send_replace(HostState::Connecting {
            attempt: backoff.attempts() + 1,
        });
        let attempt = tokio::select! {
            attempt = register(config, relay, &control.counters) => attempt,
            _ = control.enabled.wait_for(|on| !*on) => continue,
            _ = control.shutdown.changed() => return RelayEnd::Shutdown,
        };
        match attempt {
            Ok((connection, registration, _held)) => {
                backoff.reset();
                control.state.send_replace(HostState::Registered);
                info!(%relay, "registered with the relay: reachable through the relay");
                match serve(config, &connection, registration, control).await {
                    Ended::Replaced => {
                        warn!("another host registered the same host id; stopping");
                        return RelayEnd::Replaced;
                    }
                    Ended::Lost(reason) => warn!(%reason, "lost the relay"),
                    Ended::GoingAway(retry_after) => {
                        // Not closed: its sessions run until the relay closes it. Dropping
                        // the last handle would close it too, so one is held until then.
                        departing.spawn(async move {
                            connection.closed().await;
                        });
                        info!(?retry_after, "the relay is going away: registering again");
                        backoff.reset();
                        control
                            .state
                            .send_replace(HostState::Connecting { attempt: 1 });
                        let wait = jittered(retry_after);
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = control.enabled.wait_for(|on| !*on) => {}
                            _ = control.shutdown.changed() => return RelayEnd::Shutdown,
                        }
                        continue;
                    }
                    Ended::Disabled => {
                        connection.close(
                            codes::close::RELAY_DISABLED.into(),
                            b"relay disabled by the host",
                        );
                        info!("relay switched off: closed the relay connection and its sessions");
                        continue;
                    }
                    Ended::Shutdown => {
                        connection.close(codes::close::NORMAL.into(), b"host shutting down");
                        return RelayEnd::Shutdown;
                    }
                }
            }
            Err(RegisterError::Refused { code, reason }) if code.is_token_refusal() => {
                warn!(%code, %reason, "the relay refused the registration token; stopping");
                return RelayEnd::TokenRefused(format!(
                    "relay refused the registration token: {code} ({reason})"
                ));
            }
            Err(err) => warn!(%err, "cannot register with the relay"),
        }
        let delay = backoff.next_delay();
        info!(?delay, "reconnecting to the relay");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = control.enabled.wait_for(|on| !*on) => {}
            _ = control.shutdown.changed() => return RelayEnd::Shutdown,
        }
    }
}

/// `delay` give or take a fifth, so hosts told to come back at the same moment do not.
fn jittered(delay: Duration) -> Duration {
    delay.mul_f64(0.8 + 0.4 * fastrand::f64())
}

/// Counts a relay connection for as long as the agent holds it.
pub(crate) struct HeldConnection(Arc<HostCounters>);

impl HeldConnection {
    fn new(counters: &Arc<HostCounters>) -> Self {
        counters.relay_connects.fetch_add(1, Ordering::Relaxed);
        counters.relay_connections.fetch_add(1, Ordering::Relaxed);
        Self(counters.clone())
    }
}

impl Drop for HeldConnection {
    fn drop(&mut self) {
        self.0.relay_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A registered connection's open registration stream.
type Registration = (quinn::SendStream, quinn::RecvStream);

/// Connects and registers; returns the connection and its open registration stream.
async fn register(
    config: &HostConfig,
    relay: &RelayUrl,
    counters: &Arc<HostCounters>,
) -> Result<(quinn::Connection, Registration, HeldConnection), RegisterError> {
    let profile = ConnectionProfile {
        incoming_streams: config.max_concurrent_sessions,
        keep_alive: config.keep_alive,
        idle_timeout: config.idle_timeout,
    };
    let connection = connect_relay(relay, profile).await?;
    let held = HeldConnection::new(counters);
    let result = tokio::time::timeout(config.handshake_timeout, prove(config, &connection)).await;
    match result {
        Ok(Ok(control)) => Ok((connection, control, held)),
        Ok(Err(err)) => {
            connection.close(codes::close::NORMAL.into(), b"registration failed");
            Err(err)
        }
        Err(_) => {
            connection.close(codes::close::NORMAL.into(), b"registration timed out");
            Err(RegisterError::Timeout(config.handshake_timeout))
        }
    }
}

/// Runs the host's side of the registration machine on a new stream of `connection`.
async fn prove(
    config: &HostConfig,
    connection: &quinn::Connection,
) -> Result<(quinn::SendStream, quinn::RecvStream), RegisterError> {
    let (mut send, mut recv) = connection.open_bi().await?;
    let token = config.token.as_ref().map(Token::to_bytes);
    let (expect_challenge, register) = HostRegistration::start(&config.key, token);
    send.write_all(&register.to_frame()).await?;
    let challenge = read_control(&mut recv).await?;
    let mut exporter = [0u8; EXPORTER_LEN];
    connection
        .export_keying_material(&mut exporter, EXPORTER_LABEL, b"")
        .map_err(|_| RegisterError::KeyingMaterial)?;
    let (expect_registered, proof) = expect_challenge.handle(challenge, &exporter)?;
    send.write_all(&proof.to_frame()).await?;
    expect_registered.handle(read_control(&mut recv).await?)?;
    Ok((send, recv))
}

/// Accepts sessions on a registered connection until it ends.
async fn serve(
    config: &Arc<HostConfig>,
    connection: &quinn::Connection,
    registration: Registration,
    control: &mut Control,
) -> Ended {
    // Keep the send half: finishing it would end the registration.
    let (mut registration_send, mut registration_recv) = registration;
    // One read for the life of the registration, polled from the loop: a partly read
    // frame is never dropped when another branch wins.
    let registration_ended = read_control(&mut registration_recv);
    tokio::pin!(registration_ended);
    let mut handshakes = JoinSet::new();
    loop {
        tokio::select! {
            accepted = connection.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    handshakes.spawn(accept_session(
                        config.clone(),
                        send,
                        recv,
                        control.sessions.clone(),
                        control.counters.clone(),
                    ));
                }
                Err(_) => return ended(connection),
            },
            message = &mut registration_ended => {
                match message {
                    Ok(ControlMessage::GoingAway { retry_after_ms }) => {
                        return Ended::GoingAway(Duration::from_millis(retry_after_ms.into()));
                    }
                    Ok(message) => debug!(?message, "relay ended the registration"),
                    Err(_) => {}
                }
                return ended(connection);
            }
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
            _ = control.enabled.wait_for(|on| !*on) => {
                // Unregister first; the caller closes the connection right after.
                let _ = registration_send.finish();
                return Ended::Disabled;
            }
            _ = control.shutdown.changed() => return Ended::Shutdown,
        }
    }
}

fn ended(connection: &quinn::Connection) -> Ended {
    match connection.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(close))
            if close.error_code == codes::close::REPLACED.into() =>
        {
            Ended::Replaced
        }
        Some(reason) => Ended::Lost(reason.to_string()),
        None => {
            connection.close(codes::close::NORMAL.into(), b"registration ended");
            Ended::Lost("the relay ended the registration".to_owned())
        }
    }
}

/// Runs the Noise responder on a stream the relay opened and hands the session over.
async fn accept_session(
    config: Arc<HostConfig>,
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    sessions: mpsc::Sender<SecureStream>,
    counters: Arc<HostCounters>,
) {
    let handshake = async {
        let (session_id, limits) = match read_control(&mut recv).await? {
            ControlMessage::Incoming { session_id, limits } => (session_id, limits),
            other => {
                return Err(WireError::Io(std::io::Error::other(format!(
                    "expected Incoming, got {other:?}"
                ))))
            }
        };
        let hello = read_noise_message(&mut recv).await?;
        Ok((session_id, limits, hello))
    };
    let (session_id, limits, hello) =
        match tokio::time::timeout(config.handshake_timeout, handshake).await {
            Ok(Ok(opened)) => opened,
            Ok(Err(err)) => return debug!(%err, "session stream failed before the handshake"),
            Err(_) => return debug!("no Noise hello in time"),
        };
    let path = SessionPath::Relayed;
    if let Some(stream) = respond(&config, &counters, send, recv, &hello, path, session_id).await {
        let stream = stream.with_limits(limits);
        counters.sessions_relayed.fetch_add(1, Ordering::Relaxed);
        debug!(session_id, player = %stream.peer().short(), %limits, "session accepted");
        let _ = sessions.send(stream).await;
    }
}

/// Answers a player's Noise hello on a session stream of either path; `None` if the
/// hello is refused (the stream is then reset), the player is not authorized, or the
/// stream fails.
pub(crate) async fn respond(
    config: &HostConfig,
    counters: &HostCounters,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    hello: &[u8],
    path: SessionPath,
    session_id: u64,
) -> Option<SecureStream> {
    let mut reply = BytesMut::new();
    let pending = match HostHandshake::respond(&config.key, hello, &mut reply) {
        Ok(pending) => pending,
        Err(err) => {
            debug!(session_id, %path, %err, "refusing a session");
            let _ = send.reset(codes::stream::REFUSED.into());
            return None;
        }
    };
    let player = *pending.remote_static();
    if config.players.allows(&player) {
        // Reply and verdict go out in one write, the same bytes either way.
        let Ok(transport) = pending.welcome(&mut reply) else {
            let _ = send.reset(codes::stream::REFUSED.into());
            return None;
        };
        send.write_all(&reply).await.ok()?;
        let (reader, writer) = crate::linger::halves(send, recv);
        return Some(SecureStream::new(
            reader,
            writer,
            transport,
            path,
            session_id,
            BytesMut::new(),
        ));
    }
    let Ok(refused) = pending.refuse(&mut reply) else {
        let _ = send.reset(codes::stream::REFUSED.into());
        return None;
    };
    send.write_all(&reply).await.ok()?;
    counters.players_refused.fetch_add(1, Ordering::Relaxed);
    debug!(session_id, %path, player = %player.short(), "player not authorized");
    // Let the player end the session, as a served player that leaves at once
    // would, then end this direction as a served session's host does when its
    // player leaves (`end`, then the stream's end), rather than closing first or
    // differently in a way the relay could single out. A player that lingers is
    // cut off after the handshake timeout.
    let drained = async {
        let mut sink = [0u8; 1024];
        loop {
            match recv.read(&mut sink).await {
                Ok(Some(_)) => {}
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    };
    let left_cleanly = tokio::time::timeout(config.handshake_timeout, drained)
        .await
        .unwrap_or(false);
    let mut end = BytesMut::new();
    if left_cleanly && refused.seal_end(&mut end).is_ok() {
        let _ = send.write_all(&end).await;
    }
    let _ = send.finish();
    None
}
