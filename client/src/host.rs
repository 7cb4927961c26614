//! The host agent: keeps a host registered with its relay and accepts sessions.
//!
//! The agent owns one background task. It connects to the relay, proves possession
//! of the host key (see [`blindrelay_protocol::registration`]), and then accepts the
//! streams the relay opens, one per player session, running the Noise responder on
//! each and handing the finished [`SecureStream`]s to [`HostAgent::accept`]. When the
//! relay goes away it reconnects with exponential backoff and jitter. If a newer
//! registration of the same host id replaces it, it stops: two hosts fighting over
//! one id would otherwise evict each other forever.

use std::sync::Arc;
use std::time::Duration;

use blindrelay_protocol::noise::HostHandshake;
use blindrelay_protocol::registration::{self, EXPORTER_LABEL, EXPORTER_LEN};
use blindrelay_protocol::{codes, ControlMessage, ErrorCode, HostId, RelayUrl, SecretKey, Ticket};
use bytes::BytesMut;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::backoff::{Backoff, BackoffConfig};
use crate::endpoint::{connect_relay, ConnectRelayError, ConnectionProfile};
use crate::stream::{SecureStream, SessionPath};
use crate::wire::{read_control, read_noise_message, WireError};

/// How a host agent behaves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HostConfig {
    /// The host's identity.
    pub key: SecretKey,
    /// The host's home relay.
    pub relay: RelayUrl,
    /// Reconnection delays.
    pub backoff: BackoffConfig,
    /// Keep-alive on the relay connection (well under the relay's idle timeout).
    pub keep_alive: Duration,
    /// Idle timeout of the relay connection.
    pub idle_timeout: Duration,
    /// Deadline for the registration exchange with the relay, and for a player's
    /// Noise hello once the relay announced a session.
    pub handshake_timeout: Duration,
    /// Sessions the relay may open at once on this host's connection.
    pub max_concurrent_sessions: u32,
}

impl HostConfig {
    /// Defaults for a host with `key` at home relay `relay`.
    pub fn new(key: SecretKey, relay: RelayUrl) -> Self {
        Self {
            key,
            relay,
            backoff: BackoffConfig::default(),
            keep_alive: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            max_concurrent_sessions: 1024,
        }
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
    /// The agent stopped and will not reconnect.
    Stopped {
        /// Why.
        reason: String,
    },
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
    /// The exchange broke off or went out of protocol.
    #[error("registration failed: {0}")]
    Protocol(String),
}

impl From<WireError> for RegisterError {
    fn from(err: WireError) -> Self {
        Self::Protocol(err.to_string())
    }
}

/// A running host agent. Dropping it stops the agent and closes its relay
/// connection; sessions already accepted end with it.
pub struct HostAgent {
    host_id: HostId,
    ticket: Ticket,
    state: watch::Receiver<HostState>,
    sessions: mpsc::Receiver<SecureStream>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl HostAgent {
    /// Starts the agent on the current tokio runtime.
    pub fn spawn(config: HostConfig) -> Self {
        let host_id = config.key.host_id();
        // No direct addresses yet; the URL was validated when it was parsed.
        let ticket = Ticket::new(host_id, config.relay.clone(), Vec::new())
            .expect("a ticket with no direct addresses is always valid");
        let (state_tx, state) = watch::channel(HostState::Connecting { attempt: 1 });
        let (sessions_tx, sessions) = mpsc::channel(16);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let task = tokio::spawn(run(Arc::new(config), state_tx, sessions_tx, shutdown_rx));
        Self {
            host_id,
            ticket,
            state,
            sessions,
            shutdown,
            task,
        }
    }

    /// The host's id.
    pub fn host_id(&self) -> &HostId {
        &self.host_id
    }

    /// The ticket players use to reach this host.
    pub fn ticket(&self) -> &Ticket {
        &self.ticket
    }

    /// Where the agent stands now.
    pub fn state(&self) -> HostState {
        self.state.borrow().clone()
    }

    /// A receiver that sees every change of state.
    pub fn watch_state(&self) -> watch::Receiver<HostState> {
        self.state.clone()
    }

    /// The next session a player opened; `None` once the agent has stopped.
    pub async fn accept(&mut self) -> Option<SecureStream> {
        self.sessions.recv().await
    }

    /// Closes the relay connection cleanly and stops.
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

/// How a registered connection ended.
enum Ended {
    /// A newer registration took the host id: stop.
    Replaced,
    /// The connection was lost: reconnect.
    Lost(String),
    /// The agent was asked to stop.
    Shutdown,
}

async fn run(
    config: Arc<HostConfig>,
    state: watch::Sender<HostState>,
    sessions: mpsc::Sender<SecureStream>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new(config.backoff);
    loop {
        state.send_replace(HostState::Connecting {
            attempt: backoff.attempts() + 1,
        });
        let attempt = tokio::select! {
            attempt = register(&config) => attempt,
            _ = shutdown.changed() => break,
        };
        match attempt {
            Ok((connection, control)) => {
                backoff.reset();
                state.send_replace(HostState::Registered);
                info!(relay = %config.relay, "registered with the relay");
                match serve(&config, &connection, control, &sessions, &mut shutdown).await {
                    Ended::Replaced => {
                        let reason = "another host registered the same host id".to_owned();
                        warn!("{reason}; stopping");
                        state.send_replace(HostState::Stopped { reason });
                        return;
                    }
                    Ended::Lost(reason) => warn!(%reason, "lost the relay"),
                    Ended::Shutdown => {
                        connection.close(codes::close::NORMAL.into(), b"host shutting down");
                        break;
                    }
                }
            }
            Err(err) => warn!(%err, "cannot register with the relay"),
        }
        let delay = backoff.next_delay();
        info!(?delay, "reconnecting to the relay");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => break,
        }
    }
    state.send_replace(HostState::Stopped {
        reason: "shut down".to_owned(),
    });
}

/// Connects and registers; returns the connection and its open control stream.
async fn register(
    config: &HostConfig,
) -> Result<(quinn::Connection, (quinn::SendStream, quinn::RecvStream)), RegisterError> {
    let profile = ConnectionProfile {
        incoming_streams: config.max_concurrent_sessions,
        keep_alive: config.keep_alive,
        idle_timeout: config.idle_timeout,
    };
    let connection = connect_relay(&config.relay, profile).await?;
    let result = tokio::time::timeout(config.handshake_timeout, prove(config, &connection)).await;
    match result {
        Ok(Ok(control)) => Ok((connection, control)),
        Ok(Err(err)) => {
            connection.close(codes::close::NORMAL.into(), b"registration failed");
            Err(err)
        }
        Err(_) => {
            connection.close(codes::close::NORMAL.into(), b"registration timed out");
            Err(RegisterError::Protocol(
                "no answer from the relay in time".into(),
            ))
        }
    }
}

async fn prove(
    config: &HostConfig,
    connection: &quinn::Connection,
) -> Result<(quinn::SendStream, quinn::RecvStream), RegisterError> {
    let protocol = |err: &dyn std::fmt::Display| RegisterError::Protocol(err.to_string());
    let (mut send, mut recv) = connection.open_bi().await.map_err(|e| protocol(&e))?;
    let register = ControlMessage::Register {
        host_id: config.key.host_id(),
    };
    send.write_all(&register.to_frame())
        .await
        .map_err(|e| protocol(&e))?;
    let relay_ephemeral = match read_control(&mut recv).await? {
        ControlMessage::Challenge { relay_ephemeral } => relay_ephemeral,
        ControlMessage::Error { code, reason } => {
            return Err(RegisterError::Refused { code, reason })
        }
        other => return Err(protocol(&format!("expected a challenge, got {other:?}"))),
    };
    let mut exporter = [0u8; EXPORTER_LEN];
    connection
        .export_keying_material(&mut exporter, EXPORTER_LABEL, b"")
        .map_err(|_| protocol(&"cannot export keying material"))?;
    let mac =
        registration::prove(&config.key, &relay_ephemeral, &exporter).map_err(|e| protocol(&e))?;
    send.write_all(&ControlMessage::Proof { mac }.to_frame())
        .await
        .map_err(|e| protocol(&e))?;
    match read_control(&mut recv).await? {
        ControlMessage::Registered => Ok((send, recv)),
        ControlMessage::Error { code, reason } => Err(RegisterError::Refused { code, reason }),
        other => Err(protocol(&format!("expected Registered, got {other:?}"))),
    }
}

/// Accepts sessions on a registered connection until it ends.
async fn serve(
    config: &Arc<HostConfig>,
    connection: &quinn::Connection,
    control: (quinn::SendStream, quinn::RecvStream),
    sessions: &mpsc::Sender<SecureStream>,
    shutdown: &mut watch::Receiver<bool>,
) -> Ended {
    // Keep the send half: finishing it would end the registration.
    let (_control_send, mut control_recv) = control;
    // One read for the life of the registration, polled from the loop: a partly read
    // frame is never dropped when another branch wins.
    let control_ended = read_control(&mut control_recv);
    tokio::pin!(control_ended);
    let mut handshakes = JoinSet::new();
    loop {
        tokio::select! {
            accepted = connection.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    handshakes.spawn(accept_session(config.clone(), send, recv, sessions.clone()));
                }
                Err(_) => return ended(connection),
            },
            message = &mut control_ended => {
                if let Ok(message) = message {
                    debug!(?message, "relay ended the registration");
                }
                return ended(connection);
            }
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
            _ = shutdown.changed() => return Ended::Shutdown,
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
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    sessions: mpsc::Sender<SecureStream>,
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
    let mut reply = BytesMut::new();
    let transport = match HostHandshake::respond(&config.key, &hello, &mut reply) {
        Ok(transport) => transport,
        Err(err) => {
            debug!(session_id, %err, "refusing a session");
            let _ = send.reset(codes::stream::REFUSED.into());
            return;
        }
    };
    if send.write_all(&reply).await.is_err() {
        return;
    }
    let stream = SecureStream::new(
        recv,
        send,
        transport,
        SessionPath::Relayed,
        session_id,
        BytesMut::new(),
    )
    .with_limits(limits);
    debug!(session_id, player = %stream.peer().short(), %limits, "session accepted");
    let _ = sessions.send(stream).await;
}
