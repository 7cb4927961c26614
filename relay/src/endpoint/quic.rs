//! QUIC transport settings: what the relay lets each connection hold.
//!
//! The windows here are the relay's memory bound for sessions (see
//! `docs/configuration.md`): a stream may have at most `sessions.window` bytes in
//! flight to the relay, a connection at most [`CONNECTION_WINDOW_STREAMS`] times that,
//! and the relay at most `connections.send_window` unacknowledged per connection.

use std::sync::Arc;

use crate::policy::limits::Limits;

/// Why the transport settings cannot be built from the limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// A value exceeds what QUIC can carry.
    #[error("{key} is too large for QUIC")]
    TooLarge {
        /// The configuration key.
        key: &'static str,
    },
}

/// A connection's full receive window, in session windows: enough for this many of its
/// sessions to move at full speed at once.
pub(crate) const CONNECTION_WINDOW_STREAMS: u64 = 16;

/// Streams a connection may open before it shows what it is. A host only ever opens
/// its registration stream, and quinn keeps state for every stream a peer may open,
/// from the start (about 80 bytes each), so the full `connections.max_streams` is
/// granted only to connections whose first stream asks for a session (see
/// `connection::route`): a host's connection stays about 20 KiB smaller.
pub(crate) const INITIAL_STREAMS: u32 = 8;

/// What a connection may park in the relay before it has a session: its first
/// control messages (a `Register`, or `Connect`s and their hellos on a few streams)
/// fit many times over. A peer that opens streams and sends more than it is asked
/// for, or grants no credit for the answer, parks at most this much.
pub(crate) const INITIAL_CONNECTION_WINDOW: u32 = 16 * 1024;

/// What a connection may park in the relay as QUIC DATAGRAM frames: the protocol
/// carries nothing in them, and the relay never reads them. Support has to be
/// announced all the same (a browser's WebTransport requires HTTP/3 datagrams, and
/// the transport parameters go out before the ALPN tells a browser from a player),
/// so the window is one tiny datagram: a newer one replaces it, and one larger than
/// the window is a protocol violation that closes the connection. quinn counts a
/// datagram's payload and a fixed overhead (32 bytes) against this; what one parked
/// datagram really keeps is the packet buffer it arrived in, so at most one such
/// buffer per connection, instead of quinn's default of 1.25 MB of datagrams, each
/// keeping its packet.
pub(crate) const DATAGRAM_WINDOW: usize = 64;

/// Connection ids of 8 bytes from the operating system's random number generator.
pub(crate) struct RandomConnectionIds;

impl quinn::ConnectionIdGenerator for RandomConnectionIds {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        let mut id = [0u8; CONNECTION_ID_LEN];
        if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id).is_err() {
            // The system's generator does not fail once it has been seeded; should it,
            // a weaker id is still unique with overwhelming odds.
            id = fastrand::u64(..).to_le_bytes();
        }
        quinn::ConnectionId::new(&id)
    }

    fn cid_len(&self) -> usize {
        CONNECTION_ID_LEN
    }

    fn cid_lifetime(&self) -> Option<std::time::Duration> {
        None
    }
}

/// Bytes in a connection id the relay issues.
const CONNECTION_ID_LEN: usize = 8;

/// The transport settings every connection to the relay starts with.
/// Unidirectional streams a browser may open: HTTP/3's control stream and QPACK's
/// encoder and decoder streams. The relay opens none but its own control stream,
/// and reads only the peer's control stream (its settings).
pub(crate) const H3_UNI_STREAMS: u32 = 3;

pub(crate) fn transport_config(
    limits: &Limits,
) -> Result<Arc<quinn::TransportConfig>, TransportError> {
    let window = limits.sessions.window.0;
    let varint = |value: u64, key: &'static str| {
        quinn::VarInt::from_u64(value).map_err(|_| TransportError::TooLarge { key })
    };
    let idle_timeout =
        limits
            .connections
            .idle_timeout
            .0
            .try_into()
            .map_err(|_| TransportError::TooLarge {
                key: "connections.idle_timeout",
            })?;
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(idle_timeout))
        .max_concurrent_bidi_streams(limits.connections.max_streams.min(INITIAL_STREAMS).into())
        // None for QUIC players and hosts (a connection on `blindrelay/1` takes the
        // credit back and stops any it gets); browsers' HTTP/3 needs a few, and
        // must find them in the transport parameters from the first packet: a
        // browser that resumes a connection refuses a lower limit than it was
        // given before.
        .max_concurrent_uni_streams(H3_UNI_STREAMS.into())
        // The relay's buffer per session and direction: what a sender may have in
        // flight to the relay before the relay has passed it on.
        .stream_receive_window(varint(window, "sessions.window")?)
        // All streams of one connection together: small until the connection
        // carries a session (see `ReceiveWindow`), which bounds what a peer can park
        // in streams that have not yet named their purpose or wait for an answer.
        .receive_window(INITIAL_CONNECTION_WINDOW.into())
        // What the relay has written but the peer has not acknowledged, per connection.
        .send_window(limits.connections.send_window.0)
        .datagram_receive_buffer_size(Some(DATAGRAM_WINDOW))
        .datagram_send_buffer_size(0);
    Ok(Arc::new(transport))
}

/// The quinn server configuration: the TLS side from [`crate::endpoint::tls`] and the
/// transport settings above.
pub(crate) fn server_config(
    crypto: Arc<quinn::crypto::rustls::QuicServerConfig>,
    transport: Arc<quinn::TransportConfig>,
) -> quinn::ServerConfig {
    let mut server = quinn::ServerConfig::with_crypto(crypto);
    server.transport_config(transport);
    server
}
