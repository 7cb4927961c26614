//! The host agent's relay side: while Enable Relay is on, connect to the home relay,
//! prove possession of the host key (see [`blindrelay_protocol::registration`]) and
//! accept the session streams the relay opens, one per player; when the relay goes
//! away, reconnect with exponential backoff and jitter.
//!
//! Switching Enable Relay off closes the relay connection with
//! [`codes::close::RELAY_DISABLED`], which ends every relayed session, and sends
//! nothing more to the relay until it is switched on again. If a newer registration
//! of the same host id replaces this one, the agent stops: two hosts fighting over
//! one id would otherwise evict each other forever. A relay that refuses the
//! registration token, or ends the registration when it expires, leaves the agent in
//! [`HostState::TokenRefused`]: retrying with the same token cannot help, so it waits
//! for a new one ([`crate::HostAgent::set_token`]), and its direct listener goes on.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use blindrelay_protocol::registration::{
    HostRegistration, HostRegistrationError, EXPORTER_LABEL, EXPORTER_LEN,
};
use blindrelay_protocol::{
    codes, CloseCode, ControlMessage, ErrorCode, RelayUrl, SecretKey, Token,
};
use blindrelay_transport::{FramedRecv, FramedSend};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::plan::{member_urls, Ended, Next, RelayPlan, RelaySideEnd};
use super::{AgentChannels, HostConfig, HostCounters, HostState};
use crate::endpoint::{
    connect_relay, connect_relay_tcp, connect_relay_websocket, ConnectRelayError,
    ConnectionProfile, FramedRelayConnection, LocalEndpoints,
};
use crate::session::RelayTransport;
use crate::transports::{race, Attempt, TransportPreference, UdpHealth};
use crate::wire::{read_control, WireError};
use blindrelay_protocol::placement::MAX_REDIRECTS;

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
    Write(std::io::Error),
    /// The registration stream ended or carried a malformed frame.
    #[error("registration stream failed: {0}")]
    Wire(#[from] WireError),
    /// The connection offers no TLS keying material to bind the proof to.
    #[error("cannot bind the registration proof to the connection")]
    KeyingMaterial,
    /// The relay did not complete the registration in time.
    #[error("no answer from the relay within {0:?}")]
    Timeout(Duration),
    /// The relay is a member of a pool and another member owns this host: register
    /// there (PROTOCOL.md section 18.4).
    #[error("redirected to another pool member")]
    Redirected {
        /// Member names (`host:port`), the owner first.
        members: Vec<String>,
    },
}

impl RegisterError {
    /// Whether another member of a pool may do better: the relay could not be
    /// reached or went away mid-registration, rather than refusing this host.
    fn is_relay_failure(&self) -> bool {
        matches!(
            self,
            Self::Relay(_) | Self::Open(_) | Self::Write(_) | Self::Wire(_) | Self::Timeout(_)
        )
    }
}

impl From<HostRegistrationError> for RegisterError {
    fn from(err: HostRegistrationError) -> Self {
        match err {
            HostRegistrationError::Refused { code, reason } => Self::Refused { code, reason },
            other => Self::Exchange(other),
        }
    }
}

/// How a registered connection ended.
enum RegistrationEnd {
    /// A newer registration took the host id: stop.
    Replaced,
    /// The connection was lost: reconnect.
    Lost(String),
    /// The relay is going away: register again after this long. Its running
    /// sessions go on until the relay closes them.
    GoingAway(Duration),
    /// Enable Relay was switched off.
    Disabled,
    /// The relay ended the registration because its token expired (or was refused).
    TokenRefused {
        /// The relay's code.
        code: ErrorCode,
        /// The relay's words.
        reason: String,
    },
    /// The agent was asked to stop.
    Shutdown,
    /// Registered over TCP or WebSocket, the host found QUIC getting through again
    /// and registered on it, which replaced the registration it leaves (whose
    /// running sessions go on, each on its own connection).
    QuicAgain(quinn::Connection, RegistrationStream),
    /// The relay's pool has another owner for this host now (or the relay drains):
    /// register with these members, the first first, and only then let go of the
    /// registration [`Leaving`] holds.
    Move(Vec<String>, Leaving),
}

/// A registration the host is leaving for another pool member: it stays registered
/// (and, over QUIC, answers the sessions its relay still opens) until this is
/// dropped, once the host is registered at the new member.
pub(super) struct Leaving(tokio::task::JoinHandle<()>);

impl Drop for Leaving {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps the host registered with `relay` while Enable Relay is on. What each
/// registration's end leads to is [`RelayPlan`]'s to decide; this loop does what it
/// decides.
pub(super) async fn run_relay(
    config: &Arc<HostConfig>,
    relay: &RelayUrl,
    endpoints: &LocalEndpoints,
    control: &mut AgentChannels,
) -> RelaySideEnd {
    let mut plan = RelayPlan::new(relay.clone(), config.backoff);
    let udp = UdpHealth::default();
    // Relayed sessions over TCP, each on a connection of its own: what closing a
    // QUIC relay connection ends at once, these end one by one.
    let mut tcp_sessions = TcpSessions::default();
    // Connections of relays that are going away, held open until the relay closes
    // them so the sessions on them can finish.
    let mut departing = JoinSet::new();
    // A registration over QUIC already made, by a registration over TCP that found
    // QUIC getting through again.
    let mut quic_again: Option<Registration> = None;
    // The registration being left for the members a pool told the host to move to.
    let mut leaving: Option<Leaving> = None;
    loop {
        while departing.try_join_next().is_some() {}
        if !*control.enabled.borrow_and_update() {
            plan.start_over();
            control.state.send_replace(HostState::Disabled);
            if config.direct.is_some() {
                info!("relay disabled: reachable only directly");
            } else {
                warn!("relay disabled, and no direct listener: unreachable until Enable Relay is on again");
            }
            tokio::select! {
                on = control.enabled.wait_for(|on| *on) => if on.is_err() {
                    return RelaySideEnd::Shutdown;
                },
                _ = control.shutdown.changed() => return RelaySideEnd::Shutdown,
            }
            info!("relay enabled");
            continue;
        }
        // An untrusted certificate is said once and stays said while it lasts, not
        // drowned in "connecting" lines.
        let ready = quic_again.take();
        if says_connecting(&control.state.borrow(), ready.is_some(), leaving.is_some()) {
            control.state.send_replace(HostState::Connecting {
                attempt: plan.attempt(),
            });
        }
        let attempt = tokio::select! {
            attempt = async {
                match ready {
                    Some(registration) => {
                        Ok((registration, CountedRelayConnection::new(&control.counters)))
                    }
                    None => {
                        // Seen: only a token set from now on is a renewal.
                        let token = control.token.borrow_and_update().clone();
                        let place = Place { config, endpoints, udp: &udp, counters: &control.counters };
                        let registered = register_following(place, token, &mut plan).await;
                        registered.map(|(registration, held, at)| {
                            plan.registered(at);
                            (registration, held)
                        })
                    }
                }
            } => attempt,
            _ = control.enabled.wait_for(|on| !*on) => continue,
            _ = control.shutdown.changed() => return RelaySideEnd::Shutdown,
        };
        // Registered at the new member, or not: either way the registration left
        // behind ends now.
        drop(leaving.take());
        let next = match attempt {
            Ok((registration, _held)) => {
                let transport = registration.transport();
                control.transport.send_replace(Some(transport));
                control.state.send_replace(HostState::Registered);
                let current = plan.current().clone();
                info!(relay = %current, %transport, "registered with the relay: reachable through the relay");
                let connection = registration.connection();
                let end = match registration {
                    Registration::Quic { connection, stream } => {
                        let silence = config.relay_idle_timeout;
                        serve_registered(&connection, &current, stream, silence, control).await
                    }
                    Registration::Framed {
                        connection,
                        send,
                        recv,
                        transport,
                    } => {
                        let framed = FramedRegistration {
                            connection: &connection,
                            send,
                            recv,
                            transport,
                        };
                        let side = FramedSide {
                            config,
                            relay: &current,
                            endpoints,
                        };
                        serve_framed(framed, side, &mut tcp_sessions, control).await
                    }
                };
                control.transport.send_replace(None);
                let mut left = None;
                let ended = match end {
                    RegistrationEnd::Replaced => {
                        warn!(
                            "another host registered the same host id (the same key runs \
                             elsewhere): stopping; stop the other one, or give this host its \
                             own key"
                        );
                        Ended::Replaced
                    }
                    RegistrationEnd::Lost(reason) => {
                        warn!(%reason, "lost the relay");
                        Ended::Lost
                    }
                    RegistrationEnd::GoingAway(retry_after) => {
                        // Not closed: its sessions run until the relay closes it. Dropping
                        // the last handle would close it too, so one is held until then.
                        departing.spawn(async move {
                            connection.closed().await;
                        });
                        info!(?retry_after, "the relay is going away: registering again");
                        Ended::GoingAway(retry_after)
                    }
                    RegistrationEnd::Disabled => {
                        let disabled = (codes::close::RELAY_DISABLED, "relay disabled by the host");
                        connection.close(disabled.0, disabled.1);
                        tcp_sessions.close_all(disabled.0, disabled.1);
                        info!("relay switched off: closed the relay connection and its sessions");
                        Ended::Disabled
                    }
                    RegistrationEnd::TokenRefused { code, reason } => {
                        connection.close(codes::close::NORMAL, "registration ended");
                        Ended::TokenRefused(code, reason)
                    }
                    RegistrationEnd::Move(members, leave) => {
                        info!(to = %members[0], "the relay's pool has another owner for this host: moving");
                        // Its sessions go on until they end or the relay closes it.
                        departing.spawn(async move {
                            connection.closed().await;
                        });
                        left = Some(leave);
                        Ended::Move(members)
                    }
                    RegistrationEnd::QuicAgain(quic, stream) => {
                        info!("QUIC gets through to the relay again: moved the registration to it");
                        udp.set_working(&current);
                        quic_again = Some(Registration::Quic {
                            connection: quic,
                            stream,
                        });
                        // The relay replaced it with the new registration.
                        connection.close(codes::close::NORMAL, "registration moved to QUIC");
                        Ended::QuicAgain
                    }
                    RegistrationEnd::Shutdown => {
                        connection.close(codes::close::NORMAL, "host shutting down");
                        tcp_sessions.close_all(codes::close::NORMAL, "host shutting down");
                        Ended::Shutdown
                    }
                };
                let next = plan.after(ended);
                if plan.moving() {
                    // Held until the host is registered at the new member.
                    leaving = left;
                }
                next
            }
            Err(RegisterError::Refused { code, reason }) if code.is_token_refusal() => {
                // The same token cannot succeed: wait for a new one, the direct
                // listener and its sessions untouched.
                plan.after_failure(Some((code, reason)))
            }
            Err(err) => {
                match untrusted_certificate(&err) {
                    Some(reason) => {
                        warn!(
                            %reason,
                            "the relay's certificate is not trusted: use the relay URL with \
                             ?pin=... that blindrelayd printed, or give the relay a certificate \
                             from a CA; retrying"
                        );
                        control
                            .state
                            .send_replace(HostState::RelayUntrusted { reason });
                    }
                    None => warn!(%err, "cannot register with the relay"),
                }
                plan.after_failure(None)
            }
        };
        match next {
            Next::Stop(end) => return end,
            Next::Register => {}
            Next::WaitForToken(code, reason) => {
                if wait_for_new_token(code, reason, control).await.is_err() {
                    return RelaySideEnd::Shutdown;
                }
                plan.start_over();
            }
            Next::ComeBack(wait) => {
                control
                    .state
                    .send_replace(HostState::Connecting { attempt: 1 });
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = control.enabled.wait_for(|on| !*on) => {}
                    _ = control.shutdown.changed() => return RelaySideEnd::Shutdown,
                }
            }
            Next::Retry(delay) => {
                info!(?delay, "reconnecting to the relay");
                control
                    .retry_at
                    .send_replace(Some(std::time::Instant::now() + delay));
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = control.enabled.wait_for(|on| !*on) => {}
                    _ = control.shutdown.changed() => return RelaySideEnd::Shutdown,
                }
                control.retry_at.send_replace(None);
            }
        }
    }
}

/// Whether a new attempt to register is said as [`HostState::Connecting`]: not while
/// the relay's certificate is known to be untrusted (said once, and it stays said
/// while it lasts, not drowned in "connecting" lines), and not when the host stays
/// reachable meanwhile: its registration moved to QUIC (no reconnection), or it is
/// moving within a pool and still registered at the member it leaves.
fn says_connecting(state: &HostState, quic_again: bool, leaving: bool) -> bool {
    !matches!(state, HostState::RelayUntrusted { .. }) && !quic_again && !leaving
}

/// What registering anywhere needs of the agent.
#[derive(Clone, Copy)]
struct Place<'a> {
    config: &'a HostConfig,
    endpoints: &'a LocalEndpoints,
    udp: &'a UdpHealth,
    counters: &'a Arc<HostCounters>,
}

/// Registers with the first of the plan's targets that takes the host, following
/// pool redirects (PROTOCOL.md section 18.4): up to [`MAX_REDIRECTS`] of them, after
/// which the relay asked registers the host where it is. A target that cannot be
/// reached gives way to the next one. The members redirects name are remembered in
/// the plan. Returns the registration and where it is.
async fn register_following(
    place: Place<'_>,
    token: Option<Token>,
    plan: &mut RelayPlan,
) -> Result<(Registration, CountedRelayConnection, RelayUrl), RegisterError> {
    let (targets, mut redirects) = plan.targets();
    let mut queue: std::collections::VecDeque<RelayUrl> = targets.into();
    let mut last = None;
    while let Some(url) = queue.pop_front() {
        let attempt = register(place, token.clone(), &url, redirects).await;
        match attempt {
            Ok((registration, held)) => return Ok((registration, held, url)),
            Err(RegisterError::Redirected { members }) if redirects < MAX_REDIRECTS => {
                debug!(from = %url, to = ?members, "redirected within the relay pool");
                redirects += 1;
                let urls = member_urls(&url, &members);
                plan.remember(&urls);
                queue = urls.into();
                last = Some(RegisterError::Redirected { members });
            }
            Err(err)
                if err.is_relay_failure() || matches!(err, RegisterError::Redirected { .. }) =>
            {
                debug!(relay = %url, %err, "pool member not available; trying the next");
                last = Some(err);
            }
            Err(err) => return Err(err),
        }
    }
    Err(last.unwrap_or(RegisterError::Timeout(place.config.handshake_timeout)))
}

/// Says the token was refused and waits until a new one is set (then `Ok`), or the
/// agent stops (`Err`). Switching Enable Relay off and on again also tries again.
async fn wait_for_new_token(
    code: ErrorCode,
    reason: String,
    control: &mut AgentChannels,
) -> Result<(), ()> {
    warn!(%code, %reason, "the relay refused the registration token: waiting for a new one");
    // The token last seen is the one the relay refused (marked seen when it was
    // registered or renewed with): one set since, even before the state below says
    // a new one is wanted, is taken at once.
    control
        .state
        .send_replace(HostState::TokenRefused { code, reason });
    tokio::select! {
        changed = control.token.changed() => changed.map_err(|_| ()),
        _ = control.enabled.wait_for(|on| !*on) => Ok(()),
        _ = control.shutdown.changed() => Err(()),
    }
}

/// The TLS library's words when `err` is a relay certificate this host does not
/// trust: no retry can fix that by itself, and the owner must be told how to.
fn untrusted_certificate(err: &RegisterError) -> Option<String> {
    let reason = match err {
        RegisterError::Relay(ConnectRelayError::Connection(
            quinn::ConnectionError::TransportError(error),
        )) => error.reason.clone(),
        RegisterError::Relay(ConnectRelayError::TlsHandshake(error)) => error.to_string(),
        _ => return None,
    };
    (reason.contains("invalid peer certificate") || reason.contains(PIN_MISMATCH)).then_some(reason)
}

/// What the relay URL's pin check says when the relay's certificate is another one.
pub(crate) const PIN_MISMATCH: &str = "does not match the pin";

/// Counts a relay connection for as long as the agent holds it.
struct CountedRelayConnection(Arc<HostCounters>);

impl CountedRelayConnection {
    fn new(counters: &Arc<HostCounters>) -> Self {
        counters.relay_connects.fetch_add(1, Ordering::Relaxed);
        counters.relay_connections.fetch_add(1, Ordering::Relaxed);
        Self(counters.clone())
    }
}

impl Drop for CountedRelayConnection {
    fn drop(&mut self) {
        self.0.relay_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A registration's open control stream: the registration lasts while its send half
/// stays open.
pub type RegistrationStream = (quinn::SendStream, quinn::RecvStream);

/// A registered relay connection and its open registration stream.
enum Registration {
    Quic {
        connection: quinn::Connection,
        stream: RegistrationStream,
    },
    /// TLS over TCP, or WebSocket in it: the connection is its one stream.
    Framed {
        connection: blindrelay_transport::Connection,
        send: FramedSend,
        recv: FramedRecv,
        transport: RelayTransport,
    },
}

impl Registration {
    fn transport(&self) -> RelayTransport {
        match self {
            Self::Quic { .. } => RelayTransport::Quic,
            Self::Framed { transport, .. } => *transport,
        }
    }

    fn connection(&self) -> RelayConnection {
        match self {
            Self::Quic { connection, .. } => RelayConnection::Quic(connection.clone()),
            Self::Framed { connection, .. } => RelayConnection::Framed(connection.clone()),
        }
    }
}

/// A handle on a relay connection of either transport.
enum RelayConnection {
    Quic(quinn::Connection),
    Framed(blindrelay_transport::Connection),
}

impl RelayConnection {
    fn close(&self, code: CloseCode, reason: &str) {
        match self {
            Self::Quic(connection) => connection.close(code.into(), reason.as_bytes()),
            Self::Framed(connection) => connection.close(code, reason),
        }
    }

    async fn closed(&self) {
        match self {
            Self::Quic(connection) => {
                connection.closed().await;
            }
            Self::Framed(connection) => {
                connection.closed().await;
            }
        }
    }
}

/// A new connection to the relay, before registration.
enum Connected {
    Quic(quinn::Connection),
    Framed(FramedRelayConnection, RelayTransport),
}

/// Connects and registers; returns the registration and its count.
async fn register(
    place: Place<'_>,
    token: Option<Token>,
    relay: &RelayUrl,
    redirects: u8,
) -> Result<(Registration, CountedRelayConnection), RegisterError> {
    let Place {
        config,
        endpoints,
        udp,
        counters,
    } = place;
    let connected = connect(config, relay, endpoints, udp).await?;
    let held = CountedRelayConnection::new(counters);
    let token = token.as_ref().map(Token::to_bytes);
    let deadline = config.handshake_timeout;
    let (result, connection) = match connected {
        Connected::Quic(connection) => {
            let registered = register_on_redirected(&connection, &config.key, token, redirects);
            let proved = tokio::time::timeout(deadline, registered).await;
            let result = proved.map(|proved| {
                proved.map(|stream| Registration::Quic {
                    connection: connection.clone(),
                    stream,
                })
            });
            (result, RelayConnection::Quic(connection))
        }
        Connected::Framed(framed, transport) => {
            let FramedRelayConnection {
                mut send,
                mut recv,
                connection,
                exporter,
            } = framed;
            let proved = register_over(
                &mut send,
                &mut recv,
                &exporter,
                &config.key,
                token,
                redirects,
            );
            let result = tokio::time::timeout(deadline, proved).await.map(|proved| {
                proved.map(|()| Registration::Framed {
                    connection: connection.clone(),
                    send,
                    recv,
                    transport,
                })
            });
            (result, RelayConnection::Framed(connection))
        }
    };
    match result {
        Ok(Ok(registration)) => Ok((registration, held)),
        Ok(Err(err)) => {
            connection.close(codes::close::NORMAL, "registration failed");
            Err(err)
        }
        Err(_) => {
            connection.close(codes::close::NORMAL, "registration timed out");
            Err(RegisterError::Timeout(deadline))
        }
    }
}

/// A connection to the relay over the transports `config` allows: with
/// [`TransportPreference::Auto`], QUIC first, TLS over TCP after the fallback delay
/// (at once when UDP failed lately, or as soon as QUIC fails), then WebSocket; the
/// first handshake to complete wins and the others are dropped before anything is
/// sent on them, so one registration is ever made.
async fn connect(
    config: &HostConfig,
    relay: &RelayUrl,
    endpoints: &LocalEndpoints,
    udp: &UdpHealth,
) -> Result<Connected, ConnectRelayError> {
    let profile = ConnectionProfile {
        incoming_streams: config.max_concurrent_sessions,
        keep_alive: config.keep_alive,
        idle_timeout: config.relay_idle_timeout,
    };
    let framed = framed_config(config);
    let transports = config.transport.transports();
    let attempts = transports
        .iter()
        .map(|transport| -> Attempt<'_, Connected, ConnectRelayError> {
            match transport {
                RelayTransport::Quic => Box::pin(async move {
                    connect_relay(endpoints, relay, profile)
                        .await
                        .map(Connected::Quic)
                }),
                RelayTransport::WebSocket => Box::pin(async move {
                    let connected = connect_relay_websocket(relay, framed).await?;
                    Ok(Connected::Framed(connected, RelayTransport::WebSocket))
                }),
                _ => Box::pin(async move {
                    let connected = connect_relay_tcp(relay, framed).await?;
                    Ok(Connected::Framed(connected, RelayTransport::Tcp))
                }),
            }
        })
        .collect();
    let step = config.tcp_delay;
    let first_step = if udp.is_broken(relay) {
        Duration::ZERO
    } else {
        step
    };
    match race(attempts, &[Duration::ZERO, first_step, step], |_| false).await {
        Ok((_, connected)) => {
            let transport = match &connected {
                Connected::Quic(_) => RelayTransport::Quic,
                Connected::Framed(_, transport) => *transport,
            };
            note_udp(config.transport, transport, udp, relay);
            Ok(connected)
        }
        Err(errors) => Err(most_telling(errors)),
    }
}

/// What the transport that won the race says about UDP to `relay`: with `auto`,
/// QUIC winning means UDP gets through, and TLS over TCP or WebSocket winning means
/// it did not (the next attempt starts them at once instead of after the TCP
/// delay). A host told to use one transport learns nothing about UDP.
fn note_udp(
    preference: TransportPreference,
    won: RelayTransport,
    udp: &UdpHealth,
    relay: &RelayUrl,
) {
    if preference != TransportPreference::Auto {
        return;
    }
    if won == RelayTransport::Quic {
        udp.set_working(relay);
    } else {
        info!(transport = %won, "QUIC did not get through to the relay: falling back");
        udp.set_broken(relay);
    }
}

/// Of the errors of the transports tried, the one that says most: the first that is
/// not a timeout. Where UDP is blocked and the relay's certificate is not trusted,
/// QUIC times out and TLS over TCP names the certificate: the owner is told that.
fn most_telling(errors: Vec<ConnectRelayError>) -> ConnectRelayError {
    let telling = errors
        .iter()
        .position(|err| !matches!(err, ConnectRelayError::Timeout(_)))
        .unwrap_or(0);
    errors
        .into_iter()
        .nth(telling)
        .unwrap_or(ConnectRelayError::Timeout(
            crate::endpoint::RELAY_HANDSHAKE_TIMEOUT,
        ))
}

/// The framing settings of the host's TLS-over-TCP connections to the relay.
fn framed_config(config: &HostConfig) -> blindrelay_transport::Config {
    blindrelay_transport::Config {
        idle_timeout: config.relay_idle_timeout,
        keep_alive: Some(config.keep_alive),
        ..Default::default()
    }
}

/// Registers `key`'s host id (with `token`, in binary form, where the relay requires
/// one) on a new stream of a bare relay `connection`, driving the host's side of
/// [`blindrelay_protocol::registration`]. Returns the registration stream: the
/// registration lasts while its send half stays open.
///
/// What [`crate::HostAgent`] runs on each relay connection; tools that hold many
/// registrations on a few sockets (the load generator) call it on connections of
/// their own. It has no deadline of its own: callers bound it.
pub async fn register_on(
    connection: &quinn::Connection,
    key: &SecretKey,
    token: Option<Vec<u8>>,
) -> Result<RegistrationStream, RegisterError> {
    register_on_redirected(connection, key, token, 0).await
}

/// [`register_on`] at a pool member reached by `redirects` redirects (PROTOCOL.md
/// section 18.4): the member then answers for itself once the count reaches the
/// limit, so a caller following [`RegisterError::Redirected`] raises it by one.
pub async fn register_on_redirected(
    connection: &quinn::Connection,
    key: &SecretKey,
    token: Option<Vec<u8>>,
    redirects: u8,
) -> Result<RegistrationStream, RegisterError> {
    let (mut send, mut recv) = connection.open_bi().await?;
    let mut exporter = [0u8; EXPORTER_LEN];
    connection
        .export_keying_material(&mut exporter, EXPORTER_LABEL, b"")
        .map_err(|_| RegisterError::KeyingMaterial)?;
    register_over(&mut send, &mut recv, &exporter, key, token, redirects).await?;
    Ok((send, recv))
}

/// The host's side of the registration exchange on a stream of any transport, bound
/// to the connection by its TLS `exporter` value.
pub(crate) async fn register_over(
    send: &mut (impl AsyncWrite + Unpin),
    recv: &mut (impl AsyncRead + Unpin),
    exporter: &[u8; EXPORTER_LEN],
    key: &SecretKey,
    token: Option<Vec<u8>>,
    redirects: u8,
) -> Result<(), RegisterError> {
    let (expect_challenge, register) = HostRegistration::start_redirected(key, token, redirects);
    send.write_all(&register.to_frame())
        .await
        .map_err(RegisterError::Write)?;
    let challenge = match read_control(recv).await? {
        ControlMessage::Redirect { members } => return Err(RegisterError::Redirected { members }),
        challenge => challenge,
    };
    let (expect_registered, proof) = expect_challenge.handle(challenge, exporter)?;
    send.write_all(&proof.to_frame())
        .await
        .map_err(RegisterError::Write)?;
    expect_registered.handle(read_control(recv).await?)?;
    Ok(())
}

/// The relayed sessions a host holds over TCP, so switching the relay off or
/// stopping can end them as closing a QUIC relay connection ends its streams.
#[derive(Default)]
struct TcpSessions(Arc<std::sync::Mutex<Vec<blindrelay_transport::Connection>>>);

impl TcpSessions {
    fn add(&self, connection: blindrelay_transport::Connection) {
        let mut sessions = self.0.lock().unwrap_or_else(|p| p.into_inner());
        sessions.retain(|session| session.close_reason().is_none());
        sessions.push(connection);
    }

    fn close_all(&mut self, code: CloseCode, reason: &str) {
        let sessions = std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()));
        for session in sessions {
            session.close(code, reason);
        }
    }
}

/// A registration over TLS over TCP, while it is served.
struct FramedRegistration<'a> {
    connection: &'a blindrelay_transport::Connection,
    send: FramedSend,
    recv: FramedRecv,
    /// Sessions are answered over the same transport the registration took.
    transport: RelayTransport,
}

/// Serves a registration over TLS over TCP until it ends: each `Dial` the relay
/// sends gets a new connection that answers it (`Accept`), and the session on it
/// goes to the agent's acceptor.
/// What serving a registration over a stream transport needs of the agent.
struct FramedSide<'a> {
    config: &'a HostConfig,
    relay: &'a RelayUrl,
    endpoints: &'a LocalEndpoints,
}

async fn serve_framed(
    registration: FramedRegistration<'_>,
    side: FramedSide<'_>,
    tcp_sessions: &mut TcpSessions,
    control: &mut AgentChannels,
) -> RegistrationEnd {
    let FramedSide {
        config,
        relay,
        endpoints,
    } = side;
    // With `auto`, QUIC is tried again now and then: once it gets through, the
    // host registers on it, which replaces this registration at the relay, and new
    // sessions come over QUIC. This one serves `Dial`s until then, so no session
    // falls between the two.
    let probing = config.transport == TransportPreference::Auto;
    // The token in use when the probe registers, renewed or not.
    let tokens = control.token.clone();
    // Set while the probe registers over QUIC: the relay replaces this registration
    // the moment that one is confirmed, and may close this connection before the
    // probe has read its confirmation.
    let registering = std::sync::atomic::AtomicBool::new(false);
    let quic_probe = async {
        if !probing {
            return std::future::pending().await;
        }
        let profile = ConnectionProfile {
            incoming_streams: config.max_concurrent_sessions,
            keep_alive: config.keep_alive,
            idle_timeout: config.relay_idle_timeout,
        };
        loop {
            tokio::time::sleep(config.quic_probe_interval).await;
            let token = tokens.borrow().as_ref().map(Token::to_bytes);
            let connection = match connect_relay(endpoints, relay, profile).await {
                Ok(connection) => connection,
                Err(err) => {
                    debug!(%err, "QUIC to the relay still does not get through");
                    continue;
                }
            };
            let registered = register_on(&connection, &config.key, token);
            registering.store(true, Ordering::Release);
            let registered = tokio::time::timeout(config.handshake_timeout, registered).await;
            match registered {
                Ok(Ok(stream)) => return (connection, stream),
                _ => {
                    registering.store(false, Ordering::Release);
                    debug!("QUIC got through, but not a registration on it");
                    connection.close(codes::close::NORMAL.into(), b"registration failed");
                }
            }
        }
    };
    tokio::pin!(quic_probe);
    let FramedRegistration {
        connection,
        mut send,
        recv,
        transport,
    } = registration;
    let mut dials = JoinSet::new();
    // One read at a time, polled from the loop: a partly read frame is never dropped
    // when another branch wins.
    let mut reading = Box::pin(next_control(recv));
    let mut renewal = None;
    loop {
        while dials.try_join_next().is_some() {}
        if let Some(renew) = renewal.take() {
            if send
                .write_all(&ControlMessage::to_frame(&renew))
                .await
                .is_err()
            {
                return framed_ended(connection);
            }
        }
        let message = {
            let (recv, message) = tokio::select! {
                read = &mut reading => read,
                Ok(()) = control.token.changed() => {
                    // A renewed token goes to the relay on this registration
                    // (PROTOCOL.md section 8.9), written at the top of the loop.
                    let token = control.token.borrow_and_update().clone();
                    renewal = token.map(|token| ControlMessage::Renew { token: token.to_bytes() });
                    continue;
                }
                _ = control.enabled.wait_for(|on| !*on) => {
                    // Unregister first; the caller closes the connection right after.
                    send.finish();
                    return RegistrationEnd::Disabled;
                }
                _ = control.shutdown.changed() => return RegistrationEnd::Shutdown,
                (quic, stream) = &mut quic_probe => return RegistrationEnd::QuicAgain(quic, stream),
            };
            reading = Box::pin(next_control(recv));
            message
        };
        match message {
            Ok(ControlMessage::Registered) => {
                // The answer to a `Renew`: registered until the new token expires.
                info!("the relay took the renewed token");
            }
            Ok(ControlMessage::Dial { session_id, secret }) => {
                let (acceptor, relay) = (control.acceptor.clone(), relay.clone());
                let (framed, sessions) = (framed_config(config), tcp_sessions.0.clone());
                dials.spawn(async move {
                    let connecting = match transport {
                        RelayTransport::WebSocket => connect_relay_websocket(&relay, framed).await,
                        _ => connect_relay_tcp(&relay, framed).await,
                    };
                    let connected = match connecting {
                        Ok(connected) => connected,
                        Err(err) => {
                            debug!(%err, session_id, "cannot answer the relay's Dial");
                            return;
                        }
                    };
                    let FramedRelayConnection {
                        mut send,
                        recv,
                        connection,
                        ..
                    } = connected;
                    TcpSessions(sessions).add(connection);
                    let accept = ControlMessage::Accept { session_id, secret };
                    if send.write_all(&accept.to_frame()).await.is_ok() {
                        acceptor.accept_framed(send, recv, transport).await;
                    }
                });
            }
            Ok(ControlMessage::GoingAway { retry_after_ms }) => {
                return RegistrationEnd::GoingAway(Duration::from_millis(retry_after_ms.into()));
            }
            Ok(ControlMessage::Move { members }) => {
                // Registered until the host is registered at the new member. Dials
                // that come meanwhile are not answered: the relay gives the player
                // up after its dial deadline, and the player tries again.
                let held = (send, reading);
                let leaving = Leaving(tokio::spawn(async move {
                    let _held = held;
                    std::future::pending::<()>().await;
                }));
                return RegistrationEnd::Move(members, leaving);
            }
            Ok(ControlMessage::Error { code, reason }) if code.is_token_refusal() => {
                return RegistrationEnd::TokenRefused { code, reason };
            }
            Ok(message) => {
                debug!(?message, "relay ended the registration");
                return framed_ended(connection);
            }
            Err(_) => {
                let end = framed_ended(connection);
                if matches!(end, RegistrationEnd::Replaced) && registering.load(Ordering::Acquire) {
                    // Replaced by this host's own registration over QUIC, whose
                    // confirmation is on its way: not another host's.
                    let confirmed = tokio::time::timeout(config.handshake_timeout, &mut quic_probe);
                    if let Ok((quic, stream)) = confirmed.await {
                        return RegistrationEnd::QuicAgain(quic, stream);
                    }
                }
                return end;
            }
        }
    }
}

fn framed_ended(connection: &blindrelay_transport::Connection) -> RegistrationEnd {
    match connection.close_reason() {
        Some(blindrelay_transport::ConnectionError::ClosedByPeer { code, .. })
            if code == codes::close::REPLACED =>
        {
            RegistrationEnd::Replaced
        }
        Some(reason) => RegistrationEnd::Lost(reason.to_string()),
        None => {
            connection.close(codes::close::NORMAL, "registration ended");
            RegistrationEnd::Lost("the relay ended the registration".to_owned())
        }
    }
}

/// Accepts sessions on a registered connection until it ends.
async fn serve_registered(
    connection: &quinn::Connection,
    relay: &RelayUrl,
    registration: RegistrationStream,
    silence: Duration,
    control: &mut AgentChannels,
) -> RegistrationEnd {
    // Keep the send half: finishing it would end the registration.
    let (mut registration_send, registration_recv) = registration;
    // One read at a time, polled from the loop: a partly read frame is never dropped
    // when another branch wins.
    let mut registration_ended = Box::pin(next_control(registration_recv));
    let mut handshakes = JoinSet::new();
    if let Some(punch) = control.acceptor.punch() {
        // What the relay sees of this socket, for the punch sessions to come.
        let (punch, connection, relay) = (punch.clone(), connection.clone(), relay.clone());
        handshakes.spawn(async move { punch.observe_on(&connection, &relay).await });
    }
    let mut watchdog = SilenceWatchdog::new(connection, silence);
    let mut renewal = None;
    loop {
        if let Some(renew) = renewal.take() {
            if registration_send
                .write_all(&ControlMessage::to_frame(&renew))
                .await
                .is_err()
            {
                return ended(connection);
            }
        }
        tokio::select! {
            () = watchdog.silent() => {
                // The relay answers every keep-alive: this long without a packet
                // from it, the path is gone (UDP cut, the relay's machine down). Say
                // so now instead of waiting out QUIC's idle timer, which restarts at
                // each keep-alive sent and so takes up to a keep-alive longer.
                connection.close(codes::close::NORMAL.into(), b"relay silent");
                return RegistrationEnd::Lost(format!(
                    "nothing from the relay for {silence:?}"
                ));
            }
            accepted = connection.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    let acceptor = control.acceptor.clone();
                    handshakes.spawn(async move {
                        acceptor.accept(send, recv).await;
                    });
                }
                Err(_) => return ended(connection),
            },
            (recv, message) = &mut registration_ended => {
                match message {
                    Ok(ControlMessage::Registered) => {
                        // The answer to a `Renew`: registered until the new token
                        // expires.
                        info!("the relay took the renewed token");
                        registration_ended = Box::pin(next_control(recv));
                        continue;
                    }
                    Ok(ControlMessage::GoingAway { retry_after_ms }) => {
                        return RegistrationEnd::GoingAway(Duration::from_millis(retry_after_ms.into()));
                    }
                    Ok(ControlMessage::Move { members }) => {
                        // Still registered here until registered at the new member,
                        // and the sessions this relay opens meanwhile are answered.
                        let (connection, acceptor) = (connection.clone(), control.acceptor.clone());
                        let leaving = Leaving(tokio::spawn(async move {
                            let _registration = registration_send;
                            while let Ok((send, recv)) = connection.accept_bi().await {
                                let acceptor = acceptor.clone();
                                tokio::spawn(async move {
                                    acceptor.accept(send, recv).await;
                                });
                            }
                        }));
                        return RegistrationEnd::Move(members, leaving);
                    }
                    Ok(ControlMessage::Error { code, reason }) if code.is_token_refusal() => {
                        // The token expired under a running registration: only the
                        // relay side waits for a new one.
                        return RegistrationEnd::TokenRefused { code, reason };
                    }
                    Ok(message) => debug!(?message, "relay ended the registration"),
                    Err(_) => {}
                }
                return ended(connection);
            }
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
            Ok(()) = control.token.changed() => {
                // A renewed token goes to the relay on this registration
                // (PROTOCOL.md section 8.9), written at the top of the loop.
                let token = control.token.borrow_and_update().clone();
                renewal = token.map(|token| ControlMessage::Renew { token: token.to_bytes() });
            }
            _ = control.enabled.wait_for(|on| !*on) => {
                // Unregister first; the caller closes the connection right after.
                let _ = registration_send.finish();
                return RegistrationEnd::Disabled;
            }
            _ = control.shutdown.changed() => return RegistrationEnd::Shutdown,
        }
    }
}

/// Reads the next control message of a registration stream, and gives the stream
/// back for the one after.
async fn next_control<R: tokio::io::AsyncRead + Unpin>(
    mut recv: R,
) -> (R, Result<ControlMessage, crate::wire::WireError>) {
    let message = read_control(&mut recv).await;
    (recv, message)
}

/// Watches a QUIC connection for silence: the datagrams received from the relay,
/// every keep-alive's acknowledgement among them, checked a few times a second.
struct SilenceWatchdog<'a> {
    connection: &'a quinn::Connection,
    silence: Duration,
    received: u64,
    since: tokio::time::Instant,
}

impl<'a> SilenceWatchdog<'a> {
    /// How often the count is looked at: a small part of the silence allowed.
    const EVERY: Duration = Duration::from_millis(250);

    fn new(connection: &'a quinn::Connection, silence: Duration) -> Self {
        Self {
            connection,
            silence,
            received: connection.stats().udp_rx.datagrams,
            since: tokio::time::Instant::now(),
        }
    }

    /// Resolves once nothing has arrived for the allowed silence.
    async fn silent(&mut self) {
        loop {
            tokio::time::sleep(Self::EVERY).await;
            let received = self.connection.stats().udp_rx.datagrams;
            if received != self.received {
                self.received = received;
                self.since = tokio::time::Instant::now();
            } else if self.since.elapsed() >= self.silence {
                return;
            }
        }
    }
}

fn ended(connection: &quinn::Connection) -> RegistrationEnd {
    match connection.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(close))
            if close.error_code == codes::close::REPLACED.into() =>
        {
            RegistrationEnd::Replaced
        }
        Some(reason) => RegistrationEnd::Lost(reason.to_string()),
        None => {
            connection.close(codes::close::NORMAL.into(), b"registration ended");
            RegistrationEnd::Lost("the relay ended the registration".to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new attempt is said as connecting only when the host is not reachable
    /// otherwise, and never over an untrusted certificate that is being said.
    #[test]
    fn an_attempt_is_said_as_connecting_unless_the_host_stays_reachable_or_untrusted() {
        let untrusted = HostState::RelayUntrusted {
            reason: "invalid peer certificate: UnknownIssuer".to_owned(),
        };
        for state in [HostState::Connecting { attempt: 2 }, HostState::Registered] {
            assert!(says_connecting(&state, false, false), "{state:?}");
            assert!(!says_connecting(&state, true, false), "moved to QUIC");
            assert!(
                !says_connecting(&state, false, true),
                "leaving for a member"
            );
        }
        assert!(!says_connecting(&untrusted, false, false));
    }

    /// Of the transports' errors, the first that is not a timeout is the one told.
    #[test]
    fn the_error_told_is_the_first_that_is_not_a_timeout() {
        let timeout = || ConnectRelayError::Timeout(Duration::from_secs(3));
        let unresolved = |host: &str| ConnectRelayError::NoAddress {
            host: host.to_owned(),
        };
        let told = most_telling(vec![timeout(), unresolved("a"), unresolved("b")]);
        assert!(
            matches!(&told, ConnectRelayError::NoAddress { host } if host == "a"),
            "{told}"
        );
        let told = most_telling(vec![unresolved("a"), timeout()]);
        assert!(
            matches!(&told, ConnectRelayError::NoAddress { host } if host == "a"),
            "{told}"
        );
        let told = most_telling(vec![timeout(), timeout()]);
        assert!(
            matches!(told, ConnectRelayError::Timeout(t) if t == Duration::from_secs(3)),
            "{told}"
        );
        let told = most_telling(Vec::new());
        assert!(
            matches!(told, ConnectRelayError::Timeout(t) if t == crate::endpoint::RELAY_HANDSHAKE_TIMEOUT),
            "{told}"
        );
    }

    /// A relay connection counts as open while the agent holds it, and as made once.
    #[test]
    fn a_relay_connection_is_counted_open_while_it_is_held() {
        let counters = Arc::new(HostCounters::default());
        let held = CountedRelayConnection::new(&counters);
        let open = |c: &HostCounters| c.relay_connections.load(Ordering::Relaxed);
        assert_eq!(open(&counters), 1);
        drop(held);
        assert_eq!(open(&counters), 0);
        assert_eq!(counters.relay_connects.load(Ordering::Relaxed), 1);
    }

    /// With `auto`, the transport that won says whether UDP to the relay works; a
    /// host told to use one transport learns nothing about UDP from it.
    #[test]
    fn only_an_automatic_choice_says_whether_udp_gets_through() {
        let relay: RelayUrl = "blindrelay://relay.example:4433".parse().unwrap();
        let udp = UdpHealth::default();
        note_udp(TransportPreference::Auto, RelayTransport::Tcp, &udp, &relay);
        assert!(udp.is_broken(&relay), "TCP won the race");
        note_udp(
            TransportPreference::Auto,
            RelayTransport::Quic,
            &udp,
            &relay,
        );
        assert!(!udp.is_broken(&relay), "QUIC won the race");
        for told in [TransportPreference::Tcp, TransportPreference::WebSocket] {
            note_udp(told, RelayTransport::Tcp, &udp, &relay);
            assert!(!udp.is_broken(&relay), "{told:?}");
        }
        udp.set_broken(&relay);
        note_udp(
            TransportPreference::Quic,
            RelayTransport::Quic,
            &udp,
            &relay,
        );
        assert!(udp.is_broken(&relay), "QUIC told, not raced");
    }

    /// A relay that failed (another pool member may do better) is told apart from
    /// one that answered: a refusal, a redirect, a broken exchange.
    #[test]
    fn only_a_relay_that_failed_sends_the_host_to_the_next_member() {
        let failed = [
            handshake_failed("connection refused"),
            RegisterError::Open(quinn::ConnectionError::TimedOut),
            RegisterError::Write(std::io::Error::other("broken pipe")),
            RegisterError::Wire(WireError::Io(std::io::Error::other("reset"))),
            RegisterError::Timeout(Duration::from_secs(5)),
        ];
        for err in failed {
            assert!(err.is_relay_failure(), "{err}");
        }
        let answered = [
            RegisterError::Refused {
                code: ErrorCode::ProofFailed,
                reason: "no".to_owned(),
            },
            RegisterError::Redirected {
                members: vec!["b.example:443".to_owned()],
            },
            RegisterError::KeyingMaterial,
        ];
        for err in answered {
            assert!(!err.is_relay_failure(), "{err}");
        }
    }

    #[test]
    fn the_hosts_tcp_connections_keep_its_idle_timeout_and_keep_alive() {
        let key = blindrelay_protocol::SecretKey::generate().unwrap();
        let relay: RelayUrl = "blindrelay://relay.example:4433".parse().unwrap();
        let mut config = HostConfig::new(key, relay);
        config.relay_idle_timeout = Duration::from_millis(4321);
        config.keep_alive = Duration::from_millis(1234);
        let framed = framed_config(&config);
        assert_eq!(framed.idle_timeout, Duration::from_millis(4321));
        assert_eq!(framed.keep_alive, Some(Duration::from_millis(1234)));
    }

    /// A QUIC connection on loopback whose client keeps alive every `keep_alive`
    /// (none: silent), and the server's side of it.
    async fn quic_pair(keep_alive: Option<Duration>) -> (quinn::Connection, quinn::Connection) {
        let mut transport = quinn::TransportConfig::default();
        transport.max_idle_timeout(Duration::from_secs(30).try_into().ok());
        let server = crate::host::direct_server_config(transport).unwrap();
        let accepting = quinn::Endpoint::server(server, "127.0.0.1:0".parse().unwrap()).unwrap();
        let to = accepting.local_addr().unwrap();
        let profile = crate::endpoint::ConnectionProfile {
            incoming_streams: 0,
            keep_alive: keep_alive.unwrap_or(Duration::from_secs(60)),
            idle_timeout: Duration::from_secs(30),
        };
        let mut dialling = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        dialling.set_default_client_config(crate::endpoint::direct_client_config(profile).unwrap());
        tokio::join!(
            async {
                dialling
                    .connect(to, crate::endpoint::DIRECT_SERVER_NAME)
                    .unwrap()
                    .await
                    .unwrap()
            },
            async { accepting.accept().await.unwrap().await.unwrap() }
        )
    }

    /// The host's watchdog fires once nothing came for the silence it allows, and
    /// not while keep-alives are answered.
    #[tokio::test]
    async fn the_silence_watchdog_fires_after_the_silence_and_not_before() {
        let silence = Duration::from_millis(600);
        let (client, server) = quic_pair(None).await;
        let started = tokio::time::Instant::now();
        let fired = tokio::time::timeout(
            Duration::from_secs(5),
            SilenceWatchdog::new(&client, silence).silent(),
        )
        .await;
        assert!(fired.is_ok(), "never fired on a silent connection");
        let took = started.elapsed();
        assert!(took >= silence, "fired after {took:?}");
        drop(server);

        let (client, _server) = quic_pair(Some(Duration::from_millis(100))).await;
        let fired =
            tokio::time::timeout(4 * silence, SilenceWatchdog::new(&client, silence).silent())
                .await;
        assert!(fired.is_err(), "fired while keep-alives were answered");
    }

    /// A registration connection the relay closed with `REPLACED` (the host
    /// registered again elsewhere) ends as replaced; any other close as lost.
    #[tokio::test]
    async fn a_connection_closed_as_replaced_reads_as_replaced() {
        for (code, replaced) in [
            (codes::close::REPLACED, true),
            (codes::close::NORMAL, false),
        ] {
            let (client, server) = quic_pair(None).await;
            server.close(code.into(), b"bye");
            client.closed().await;
            let end = ended(&client);
            assert_eq!(
                matches!(end, RegistrationEnd::Replaced),
                replaced,
                "closed with {code:?}"
            );
        }
    }

    fn handshake_failed(words: &str) -> RegisterError {
        RegisterError::Relay(ConnectRelayError::TlsHandshake(std::io::Error::other(
            words.to_owned(),
        )))
    }

    #[test]
    fn a_certificate_the_host_does_not_trust_is_told_apart_from_other_failures() {
        for words in [
            "invalid peer certificate: UnknownIssuer",
            "unexpected error: relay certificate does not match the pin in the relay URL",
        ] {
            assert_eq!(
                untrusted_certificate(&handshake_failed(words)).as_deref(),
                Some(words),
                "{words}"
            );
        }
        for words in ["connection refused", "handshake timed out"] {
            assert_eq!(
                untrusted_certificate(&handshake_failed(words)),
                None,
                "{words}"
            );
        }
        // Over QUIC, the same words come as the connection's transport error.
        let over_quic = RegisterError::Relay(ConnectRelayError::Connection(
            quinn::ConnectionError::TransportError(quinn_proto::TransportError {
                code: quinn::TransportErrorCode::crypto(42),
                frame: None,
                reason: "invalid peer certificate: UnknownIssuer".to_owned(),
            }),
        ));
        assert_eq!(
            untrusted_certificate(&over_quic).as_deref(),
            Some("invalid peer certificate: UnknownIssuer")
        );
        let refused = RegisterError::Refused {
            code: ErrorCode::ProofFailed,
            reason: "invalid peer certificate".to_owned(),
        };
        assert_eq!(
            untrusted_certificate(&refused),
            None,
            "a refusal is no TLS failure"
        );
    }
}
