//! One QUIC connection to the relay: accepts its streams and routes each by its first
//! control message.
//!
//! Any connection may open session streams (`Connect`); the first stream that sends
//! `Register` makes it a host connection too. Each stream is served by its own task,
//! owned by this connection's `JoinSet`, so nothing outlives the connection.

use std::sync::Arc;

use blindrelay_protocol::control::{self, ControlMessage};
use blindrelay_protocol::{codes, DecodeError, ErrorCode};
use tokio::task::JoinSet;
use tracing::{debug, info_span, Instrument};

use crate::config::RelayConfig;
use crate::privacy::redact;
use crate::registry::Registry;
use crate::stats::{Stats, StatsSnapshot};
use crate::{registration, session};

/// State every connection task shares.
pub(crate) struct Shared {
    pub config: RelayConfig,
    pub registry: Registry,
    pub stats: Stats,
}

impl Shared {
    pub fn new(config: RelayConfig) -> Self {
        Self {
            config,
            registry: Registry::default(),
            stats: Stats::default(),
        }
    }

    /// A random id for a new session. Random, not counted, so the ids a host or
    /// player sees tell nothing about how many sessions the relay carries.
    pub fn new_session_id(&self) -> u64 {
        fastrand::u64(1..)
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        self.stats.snapshot(self.registry.len())
    }
}

/// Serves one connection until it closes.
pub(crate) async fn handle(incoming: quinn::Incoming, shared: Arc<Shared>) {
    let span = info_span!("conn", peer = %redact(incoming.remote_address()));
    async move {
        let connection = match incoming.await {
            Ok(connection) => connection,
            Err(err) => {
                debug!(%err, "handshake failed");
                return;
            }
        };
        Stats::bump(&shared.stats.connections_accepted);
        debug!("connected");
        serve(connection, shared).await;
    }
    .instrument(span)
    .await
}

async fn serve(connection: quinn::Connection, shared: Arc<Shared>) {
    let mut streams = JoinSet::new();
    let mut registered = false;
    loop {
        tokio::select! {
            accepted = connection.accept_bi() => {
                let (send, mut recv) = match accepted {
                    Ok(stream) => stream,
                    Err(err) => {
                        debug!(reason = %err, "connection closed");
                        break;
                    }
                };
                // Reading the first message happens inside the stream's task, so a
                // slow stream never holds up the next one.
                let shared = shared.clone();
                let connection = connection.clone();
                let may_register = !registered;
                streams.spawn(async move {
                    let first = tokio::time::timeout(
                        shared.config.first_message_timeout,
                        read_message(&mut recv),
                    );
                    let message = match first.await {
                        Ok(Ok(message)) => message,
                        Ok(Err(err)) => return refuse_stream(&shared, send, recv, err).await,
                        Err(_) => {
                            return refuse_stream(&shared, send, recv, ReadMessageError::Timeout).await
                        }
                    };
                    route(message, may_register, send, recv, connection, shared).await
                });
                // Only the first stream may register; later `Register`s are refused
                // even if the first stream turned out to be a session.
                registered = true;
            }
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
        }
    }
    streams.shutdown().await;
}

async fn route(
    message: ControlMessage,
    may_register: bool,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
    connection: quinn::Connection,
    shared: Arc<Shared>,
) {
    match message {
        ControlMessage::Register { host_id } if may_register => {
            registration::serve(host_id, send, recv, connection, shared).await
        }
        ControlMessage::Register { .. } => {
            Stats::bump(&shared.stats.registrations_refused);
            let error = ControlMessage::error(
                ErrorCode::BadRequest,
                "register only on the first stream of a connection",
            );
            send_error(&mut send, &error).await;
        }
        ControlMessage::Connect { host_id } => session::serve(host_id, send, recv, shared).await,
        other => {
            Stats::bump(&shared.stats.bad_requests);
            debug!(?other, "unexpected first message");
            let error = ControlMessage::error(
                ErrorCode::BadRequest,
                "a stream must start with Register or Connect",
            );
            send_error(&mut send, &error).await;
        }
    }
}

/// Answers a stream whose first message was unreadable, then closes that stream only.
async fn refuse_stream(
    shared: &Shared,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    err: ReadMessageError,
) {
    Stats::bump(&shared.stats.bad_requests);
    debug!(%err, "refusing stream");
    let code = match &err {
        ReadMessageError::Decode(DecodeError::UnsupportedVersion { .. }) => {
            ErrorCode::UnsupportedVersion
        }
        _ => ErrorCode::BadRequest,
    };
    let _ = recv.stop(codes::stream::REFUSED.into());
    send_error(&mut send, &ControlMessage::error(code, err.to_string())).await;
}

/// Writes an error message and finishes the stream.
pub(crate) async fn send_error(send: &mut quinn::SendStream, error: &ControlMessage) {
    if send.write_all(&error.to_frame()).await.is_ok() {
        let _ = send.finish();
    }
}

/// Why a control message could not be read from a stream.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadMessageError {
    #[error("stream ended before a whole control message")]
    Closed,
    #[error("malformed control message: {0}")]
    Decode(#[from] DecodeError),
    #[error("no control message within the deadline")]
    Timeout,
}

/// Reads one length-prefixed control message, refusing oversize lengths before
/// reading their body.
pub(crate) async fn read_message(
    recv: &mut quinn::RecvStream,
) -> Result<ControlMessage, ReadMessageError> {
    let mut prefix = [0u8; 2];
    recv.read_exact(&mut prefix)
        .await
        .map_err(|_| ReadMessageError::Closed)?;
    let len = control::frame_len(prefix)?;
    let mut body = [0u8; control::MAX_FRAME_LEN];
    recv.read_exact(&mut body[..len])
        .await
        .map_err(|_| ReadMessageError::Closed)?;
    Ok(ControlMessage::decode(&body[..len])?)
}
