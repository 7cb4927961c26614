//! The connection a stream came on, whatever carries it: QUIC, one of the stream
//! transports (TLS over TCP), where a connection carries one stream, or a browser's
//! WebTransport session.
//!
//! Registration and sessions need a few things of a connection: the peer's address
//! (for per-address limits), the TLS exporter (the registration proof binds to it),
//! closing it with a code, and, for a host, a way to start a session's stream to it.
//! [`Link`] says those for every transport.

use std::net::SocketAddr;
use std::sync::Arc;

use blindrelay_protocol::registration::{EXPORTER_LABEL, EXPORTER_LEN};
use blindrelay_protocol::CloseCode;

/// Which transport carries a connection, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum TransportKind {
    /// QUIC over UDP.
    Quic,
    /// TLS 1.3 over TCP, one stream per connection.
    Tcp,
    /// WebSocket over TLS over TCP, one stream per connection.
    WebSocket,
    /// WebTransport (HTTP/3) on the QUIC endpoint: browsers' players.
    WebTransport,
}

impl TransportKind {
    /// The name in metric labels and logs.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Quic => "quic",
            Self::Tcp => "tcp",
            Self::WebSocket => "websocket",
            Self::WebTransport => "webtransport",
        }
    }
}

/// A connection to a host or player.
#[derive(Clone)]
pub(crate) enum Link {
    /// A QUIC connection: the relay opens a host's session streams on it.
    Quic(quinn::Connection),
    /// A stream-transport connection: one stream; a host's sessions come on new
    /// connections it opens when told to (`Dial`).
    Framed(Arc<FramedLink>),
    /// A WebTransport session: a browser's player connection, whose streams are
    /// sessions only (a browser cannot prove a registration: it has no TLS
    /// exporter to bind it to).
    WebTransport(Arc<web_transport_quinn::Session>),
}

/// What the relay keeps of a stream-transport connection beside its stream.
pub(crate) struct FramedLink {
    pub connection: blindrelay_transport::Connection,
    pub remote: SocketAddr,
    /// The TLS exporter for the registration proof, taken at the handshake.
    pub exporter: [u8; EXPORTER_LEN],
    pub kind: TransportKind,
}

/// The TLS exporter could not be computed for this connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NoKeyingMaterial;

impl Link {
    pub(crate) fn remote_address(&self) -> SocketAddr {
        match self {
            Self::Quic(connection) => connection.remote_address(),
            Self::Framed(link) => link.remote,
            Self::WebTransport(session) => session.remote_address(),
        }
    }

    pub(crate) fn kind(&self) -> TransportKind {
        match self {
            Self::Quic(_) => TransportKind::Quic,
            Self::Framed(link) => link.kind,
            Self::WebTransport(_) => TransportKind::WebTransport,
        }
    }

    /// The registration proof's TLS exporter value for this connection.
    pub(crate) fn exporter(&self) -> Result<[u8; EXPORTER_LEN], NoKeyingMaterial> {
        match self {
            Self::Quic(connection) => {
                let mut exporter = [0u8; EXPORTER_LEN];
                connection
                    .export_keying_material(&mut exporter, EXPORTER_LABEL, b"")
                    .map_err(|_| NoKeyingMaterial)?;
                Ok(exporter)
            }
            Self::Framed(link) => Ok(link.exporter),
            Self::WebTransport(_) => Err(NoKeyingMaterial),
        }
    }

    /// Closes the connection with `code`; its streams end with it.
    pub(crate) fn close(&self, code: CloseCode, reason: &str) {
        match self {
            Self::Quic(connection) => connection.close(code.into(), reason.as_bytes()),
            Self::Framed(link) => link.connection.close(code, reason),
            Self::WebTransport(session) => session.close(code.to_u32(), reason.as_bytes()),
        }
    }

    /// Whether the connection is over.
    pub(crate) fn is_closed(&self) -> bool {
        match self {
            Self::Quic(connection) => connection.close_reason().is_some(),
            Self::Framed(link) => link.connection.close_reason().is_some(),
            Self::WebTransport(session) => session.close_reason().is_some(),
        }
    }
}
