//! The player: opens end-to-end encrypted sessions to hosts named by tickets.
//!
//! One QUIC connection per relay is kept and shared by every session to hosts on
//! that relay; it is re-opened on demand when it has gone away. Each session is one
//! bidirectional stream: `Connect { host id }` and the Noise hello are sent together
//! (one round trip saved), the relay answers `Connected` or an `Error`, and the host's
//! Noise reply follows.

use std::collections::HashMap;
use std::time::Duration;

use blindrelay_protocol::noise::{NoiseError, PlayerHandshake};
use blindrelay_protocol::{ControlMessage, ErrorCode, RelayUrl, SecretKey, Ticket};
use bytes::BytesMut;
use tokio::sync::Mutex;
use tracing::debug;

use crate::endpoint::{connect_relay, ConnectRelayError, ConnectionProfile};
use crate::stream::{SecureStream, SessionPath};
use crate::wire::{read_control, read_noise_message, WireError};

/// How a player behaves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PlayerConfig {
    /// The player's static key. Hosts see its public half and may decide by it whom
    /// to serve.
    pub key: SecretKey,
    /// Deadline for a whole session set-up: relay connection, pairing and handshake.
    pub connect_timeout: Duration,
    /// Keep-alive on the relay connection.
    pub keep_alive: Duration,
    /// Idle timeout of the relay connection.
    pub idle_timeout: Duration,
}

impl PlayerConfig {
    /// Defaults with the given key.
    pub fn new(key: SecretKey) -> Self {
        Self {
            key,
            connect_timeout: Duration::from_secs(15),
            keep_alive: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
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
    /// The host's handshake failed: not the host the ticket names, or an altered
    /// message.
    #[error("end-to-end handshake with the host failed: {0}")]
    Handshake(#[from] NoiseError),
    /// The session stream failed or the relay answered out of protocol.
    #[error("session set-up failed: {0}")]
    Protocol(String),
    /// The relay connection could not open another stream.
    #[error("relay connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Set-up took longer than the configured timeout.
    #[error("no session within {0:?}")]
    Timeout(Duration),
}

fn refusal_text(code: ErrorCode, reason: &str) -> String {
    match code {
        ErrorCode::HostOffline => "host not reachable: relay disabled or host offline".to_owned(),
        _ => format!("relay refused the session: {code} ({reason})"),
    }
}

impl From<WireError> for ConnectError {
    fn from(err: WireError) -> Self {
        Self::Protocol(err.to_string())
    }
}

/// Opens sessions to hosts.
pub struct Player {
    config: PlayerConfig,
    relays: Mutex<HashMap<RelayUrl, quinn::Connection>>,
}

impl Player {
    /// A player with `config`.
    pub fn new(config: PlayerConfig) -> Self {
        Self {
            config,
            relays: Mutex::new(HashMap::new()),
        }
    }

    /// Opens an end-to-end encrypted session to the host `ticket` names.
    pub async fn connect(&self, ticket: &Ticket) -> Result<SecureStream, ConnectError> {
        let timeout = self.config.connect_timeout;
        tokio::time::timeout(timeout, self.connect_relayed(ticket))
            .await
            .map_err(|_| ConnectError::Timeout(timeout))?
    }

    /// Closes every relay connection; sessions on them end.
    pub async fn close(&self) {
        for (_, connection) in self.relays.lock().await.drain() {
            connection.close(
                blindrelay_protocol::codes::close::NORMAL.into(),
                b"player closing",
            );
        }
    }

    async fn connect_relayed(&self, ticket: &Ticket) -> Result<SecureStream, ConnectError> {
        let connection = self.relay_connection(ticket.relay()).await?;
        let (mut send, mut recv) = connection.open_bi().await?;

        let mut handshake = PlayerHandshake::new(&self.config.key, ticket.host_id())?;
        let mut out = BytesMut::new();
        ControlMessage::Connect {
            host_id: *ticket.host_id(),
        }
        .encode(&mut out);
        handshake.write_hello(&mut out)?;
        // If the relay refuses, it may stop our stream before the hello is through;
        // its answer is still waiting to be read, so a failed write is not the end.
        let written = send.write_all(&out).await;

        let (session_id, limits) = match read_control(&mut recv).await {
            Ok(ControlMessage::Connected { session_id, limits }) => (session_id, limits),
            Ok(ControlMessage::Error { code, reason }) => {
                return Err(ConnectError::Refused { code, reason })
            }
            Ok(other) => {
                return Err(ConnectError::Protocol(format!(
                    "unexpected answer from the relay: {other:?}"
                )))
            }
            Err(err) => {
                written.map_err(|err| ConnectError::Protocol(err.to_string()))?;
                return Err(err.into());
            }
        };
        let reply = read_noise_message(&mut recv).await?;
        let transport = handshake.read_reply(&reply)?;
        debug!(session_id, host = %ticket.host_id().short(), %limits, "session established");
        Ok(SecureStream::new(
            recv,
            send,
            transport,
            SessionPath::Relayed,
            session_id,
            BytesMut::new(),
        )
        .with_limits(limits))
    }

    async fn relay_connection(&self, url: &RelayUrl) -> Result<quinn::Connection, ConnectError> {
        let mut relays = self.relays.lock().await;
        if let Some(connection) = relays.get(url) {
            if connection.close_reason().is_none() {
                return Ok(connection.clone());
            }
        }
        let profile = ConnectionProfile {
            incoming_streams: 0,
            keep_alive: self.config.keep_alive,
            idle_timeout: self.config.idle_timeout,
        };
        let connection = connect_relay(url, profile).await?;
        relays.insert(url.clone(), connection.clone());
        Ok(connection)
    }
}
