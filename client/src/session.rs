//! What a session is to the application, whatever carries it: the path it took
//! ([`SessionPath`]), what carried a relayed one ([`RelayTransport`]), and why one
//! was cut from outside the Noise session ([`SessionEnded`]).

use blindrelay_protocol::{codes, StreamCode};

/// Which way a session reached its peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionPath {
    /// Straight from player to host over QUIC, no relay in between.
    Direct,
    /// Through the host's home relay (Plex calls this "Indirect").
    Relayed,
    /// Straight from player to host over a path the two punched through their NATs
    /// after a relayed session (PROTOCOL.md 10.9): seen by the player, and by a host
    /// on the listener it opens only for punching.
    Punched,
}

impl SessionPath {
    /// Whether no relay is in between: [`SessionPath::Direct`] or
    /// [`SessionPath::Punched`].
    pub fn is_direct(self) -> bool {
        self != Self::Relayed
    }
}

impl std::fmt::Display for SessionPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Direct => "direct",
            Self::Relayed => "relayed",
            Self::Punched => "direct (punched)",
        })
    }
}

/// What carried a relayed session between this end and the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RelayTransport {
    /// QUIC over UDP: the fast default.
    Quic,
    /// TLS 1.3 over TCP, for networks that block or break UDP.
    Tcp,
    /// A WebSocket over TLS over TCP, for networks that pass HTTPS only.
    WebSocket,
}

impl std::fmt::Display for RelayTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Quic => "quic",
            Self::Tcp => "tcp",
            Self::WebSocket => "websocket",
        })
    }
}

/// Why a session's stream was cut from outside the Noise session: the error inside
/// the `io::Error` a read or write returns in those cases.
///
/// Each one is a stream code of the protocol's table ([`codes::stream`]); its message
/// is that code's words, so the relay's counters, the specification and this error
/// say the same thing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionEnded {
    /// The relay reset the stream because the other side's connection to it ended.
    #[error("session ended: {}", Self::PeerGone.words())]
    PeerGone,
    /// The other side abandoned the session while setting it up (another path won).
    #[error("session ended: {}", Self::Cancelled.words())]
    Cancelled,
    /// The relay ended the session: one side left the bytes sent to it unread for the
    /// relay's stall timeout.
    #[error("session ended by the relay: {}", Self::Stalled.words())]
    Stalled,
    /// The relay ended the session: nothing moved for its session idle timeout.
    #[error("session ended by the relay: {}", Self::Idle.words())]
    Idle,
    /// The relay ended the session at its maximum duration.
    #[error("session ended by the relay: {}", Self::DurationLimit.words())]
    DurationLimit,
    /// The relay ended the session at its maximum bytes in one direction.
    #[error("session ended by the relay: {}", Self::ByteLimit.words())]
    ByteLimit,
    /// The other side rejected what this side sent as a breach of the session
    /// protocol, and abandoned the session.
    #[error("session ended: {}", Self::ProtocolViolation.words())]
    ProtocolViolation,
    /// The host accepted the session but could not reach the service it forwards
    /// sessions to.
    #[error("session ended: {}", Self::ServiceUnavailable.words())]
    ServiceUnavailable,
    /// The other side's application dropped the (resumable) session.
    #[error("session ended: {}", Self::Closed.words())]
    Closed,
}

impl SessionEnded {
    const ALL: [Self; 9] = [
        Self::PeerGone,
        Self::Cancelled,
        Self::Stalled,
        Self::Idle,
        Self::DurationLimit,
        Self::ByteLimit,
        Self::ProtocolViolation,
        Self::ServiceUnavailable,
        Self::Closed,
    ];

    /// The stream code that carries this end.
    pub fn code(self) -> StreamCode {
        match self {
            Self::PeerGone => codes::stream::PEER_GONE,
            Self::Cancelled => codes::stream::CANCELLED,
            Self::Stalled => codes::stream::STALLED,
            Self::Idle => codes::stream::SESSION_IDLE,
            Self::DurationLimit => codes::stream::DURATION_LIMIT,
            Self::ByteLimit => codes::stream::BYTE_LIMIT,
            Self::ProtocolViolation => codes::stream::PROTOCOL_VIOLATION,
            Self::ServiceUnavailable => codes::stream::SERVICE_UNAVAILABLE,
            Self::Closed => codes::stream::CLOSED,
        }
    }

    /// The end a reset or stop code says, if it is one of these.
    pub fn from_code(code: StreamCode) -> Option<Self> {
        Self::ALL.into_iter().find(|ended| ended.code() == code)
    }

    fn words(self) -> &'static str {
        // Every code above is in the table; the fallback is never shown.
        self.code().words().unwrap_or("unknown")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_session_end_is_a_stream_code_and_reads_its_words() {
        for ended in SessionEnded::ALL {
            assert_eq!(SessionEnded::from_code(ended.code()), Some(ended));
            let words = ended.code().words().expect("a code of the table");
            assert!(ended.to_string().ends_with(words), "{ended}");
        }
        assert_eq!(SessionEnded::from_code(codes::stream::REFUSED), None);
        assert_eq!(SessionEnded::from_code(StreamCode::from_u32(0x4242)), None);
    }
}
