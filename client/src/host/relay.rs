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
use blindrelay_protocol::{codes, ControlMessage, ErrorCode, RelayUrl, SecretKey, Token};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::{AgentChannels, HostConfig, HostCounters, HostState};
use crate::backoff::Backoff;
use crate::endpoint::{connect_relay, ConnectRelayError, ConnectionProfile, LocalEndpoints};
use crate::stream::SessionPath;
use crate::wire::{read_control, WireError};

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
}

/// Why the relay side returned.
pub(super) enum RelaySideEnd {
    Replaced,
    Shutdown,
}

/// Keeps the host registered with `relay` while Enable Relay is on.
pub(super) async fn run_relay(
    config: &Arc<HostConfig>,
    relay: &RelayUrl,
    endpoints: &LocalEndpoints,
    control: &mut AgentChannels,
) -> RelaySideEnd {
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
                    return RelaySideEnd::Shutdown;
                },
                _ = control.shutdown.changed() => return RelaySideEnd::Shutdown,
            }
            info!("relay enabled");
            continue;
        }
        // An untrusted certificate is said once and stays said while it lasts, not
        // drowned in "connecting" lines.
        let untrusted = matches!(*control.state.borrow(), HostState::RelayUntrusted { .. });
        if !untrusted {
            control.state.send_replace(HostState::Connecting {
                attempt: backoff.attempts() + 1,
            });
        }
        let attempt = tokio::select! {
            attempt = register(
                config,
                control.token.borrow().clone(),
                relay,
                endpoints,
                &control.counters,
            ) => attempt,
            _ = control.enabled.wait_for(|on| !*on) => continue,
            _ = control.shutdown.changed() => return RelaySideEnd::Shutdown,
        };
        match attempt {
            Ok((connection, registration, _held)) => {
                backoff.reset();
                control.state.send_replace(HostState::Registered);
                info!(%relay, "registered with the relay: reachable through the relay");
                match serve_registered(&connection, registration, control).await {
                    RegistrationEnd::Replaced => {
                        warn!(
                            "another host registered the same host id (the same key runs \
                             elsewhere): stopping; stop the other one, or give this host its \
                             own key"
                        );
                        return RelaySideEnd::Replaced;
                    }
                    RegistrationEnd::Lost(reason) => warn!(%reason, "lost the relay"),
                    RegistrationEnd::GoingAway(retry_after) => {
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
                            _ = control.shutdown.changed() => return RelaySideEnd::Shutdown,
                        }
                        continue;
                    }
                    RegistrationEnd::Disabled => {
                        connection.close(
                            codes::close::RELAY_DISABLED.into(),
                            b"relay disabled by the host",
                        );
                        info!("relay switched off: closed the relay connection and its sessions");
                        continue;
                    }
                    RegistrationEnd::TokenRefused { code, reason } => {
                        connection.close(codes::close::NORMAL.into(), b"registration ended");
                        if wait_for_new_token(code, reason, control).await.is_err() {
                            return RelaySideEnd::Shutdown;
                        }
                        backoff.reset();
                        continue;
                    }
                    RegistrationEnd::Shutdown => {
                        connection.close(codes::close::NORMAL.into(), b"host shutting down");
                        return RelaySideEnd::Shutdown;
                    }
                }
            }
            Err(RegisterError::Refused { code, reason }) if code.is_token_refusal() => {
                // The same token cannot succeed: wait for a new one, the direct
                // listener and its sessions untouched.
                if wait_for_new_token(code, reason, control).await.is_err() {
                    return RelaySideEnd::Shutdown;
                }
                backoff.reset();
                continue;
            }
            Err(err) => match untrusted_certificate(&err) {
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
            },
        }
        let delay = backoff.next_delay();
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

/// Says the token was refused and waits until a new one is set (then `Ok`), or the
/// agent stops (`Err`). Switching Enable Relay off and on again also tries again.
async fn wait_for_new_token(
    code: ErrorCode,
    reason: String,
    control: &mut AgentChannels,
) -> Result<(), ()> {
    warn!(%code, %reason, "the relay refused the registration token: waiting for a new one");
    control
        .state
        .send_replace(HostState::TokenRefused { code, reason });
    control.token.borrow_and_update();
    tokio::select! {
        changed = control.token.changed() => changed.map_err(|_| ()),
        _ = control.enabled.wait_for(|on| !*on) => Ok(()),
        _ = control.shutdown.changed() => Err(()),
    }
}

/// The TLS library's words when `err` is a relay certificate this host does not
/// trust: no retry can fix that by itself, and the owner must be told how to.
fn untrusted_certificate(err: &RegisterError) -> Option<String> {
    let RegisterError::Relay(ConnectRelayError::Connection(
        quinn::ConnectionError::TransportError(error),
    )) = err
    else {
        return None;
    };
    error
        .reason
        .contains("invalid peer certificate")
        .then(|| error.reason.clone())
}

/// `delay` give or take a fifth, so hosts told to come back at the same moment do not.
fn jittered(delay: Duration) -> Duration {
    delay.mul_f64(0.8 + 0.4 * fastrand::f64())
}

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

/// A registered connection's open registration stream.
/// A registration's open control stream: the registration lasts while its send half
/// stays open.
pub type RegistrationStream = (quinn::SendStream, quinn::RecvStream);

/// Connects and registers; returns the connection and its open registration stream.
async fn register(
    config: &HostConfig,
    token: Option<Token>,
    relay: &RelayUrl,
    endpoints: &LocalEndpoints,
    counters: &Arc<HostCounters>,
) -> Result<
    (
        quinn::Connection,
        RegistrationStream,
        CountedRelayConnection,
    ),
    RegisterError,
> {
    let profile = ConnectionProfile {
        incoming_streams: config.max_concurrent_sessions,
        keep_alive: config.keep_alive,
        idle_timeout: config.idle_timeout,
    };
    let connection = connect_relay(endpoints, relay, profile).await?;
    let held = CountedRelayConnection::new(counters);
    let proved = prove(config, token, &connection);
    let result = tokio::time::timeout(config.handshake_timeout, proved).await;
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
    token: Option<Token>,
    connection: &quinn::Connection,
) -> Result<RegistrationStream, RegisterError> {
    let token = token.as_ref().map(Token::to_bytes);
    register_on(connection, &config.key, token).await
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
    let (mut send, mut recv) = connection.open_bi().await?;
    let (expect_challenge, register) = HostRegistration::start(key, token);
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
async fn serve_registered(
    connection: &quinn::Connection,
    registration: RegistrationStream,
    control: &mut AgentChannels,
) -> RegistrationEnd {
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
                    let acceptor = control.acceptor.clone();
                    handshakes.spawn(async move {
                        acceptor.accept(send, recv, SessionPath::Relayed).await;
                    });
                }
                Err(_) => return ended(connection),
            },
            message = &mut registration_ended => {
                match message {
                    Ok(ControlMessage::GoingAway { retry_after_ms }) => {
                        return RegistrationEnd::GoingAway(Duration::from_millis(retry_after_ms.into()));
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
            _ = control.enabled.wait_for(|on| !*on) => {
                // Unregister first; the caller closes the connection right after.
                let _ = registration_send.finish();
                return RegistrationEnd::Disabled;
            }
            _ = control.shutdown.changed() => return RegistrationEnd::Shutdown,
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
