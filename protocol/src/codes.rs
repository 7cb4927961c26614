//! QUIC application error codes: why a connection was closed or a stream reset.
//!
//! These travel in QUIC `CONNECTION_CLOSE`, `RESET_STREAM` and `STOP_SENDING` frames,
//! beside the [`ControlMessage::Error`](crate::ControlMessage::Error) codes that travel
//! inside streams.

/// Codes in a QUIC `CONNECTION_CLOSE` (application) frame.
pub mod close {
    /// Closed on purpose with nothing wrong (a host or player shutting down).
    pub const NORMAL: u32 = 0;
    /// The relay closed a host's connection because a newer registration of the same
    /// host id replaced it.
    pub const REPLACED: u32 = 1;
    /// The relay is shutting down; reconnect later (to it or another relay).
    pub const RELAY_SHUTDOWN: u32 = 2;
    /// The relay closed a connection that had neither a registration nor a session
    /// for its idle timeout.
    pub const IDLE: u32 = 3;
    /// The relay, near its connection cap, closed an idle registration (one with no
    /// session) to make room. The host may register again after a back-off.
    pub const SHED: u32 = 4;
    /// A host closed its connection to the relay because its owner switched Enable
    /// Relay off; its relayed sessions end with it. Direct sessions are not affected.
    pub const RELAY_DISABLED: u32 = 5;
    /// The relay is at its connection cap and its headroom: try again later or
    /// another relay. Sent right after the handshake, before anything else.
    pub const AT_CAPACITY: u32 = 6;
}

/// Codes in `RESET_STREAM` / `STOP_SENDING` frames on session streams.
///
/// On a spliced session the relay passes a reset or stop code from one side to the
/// other unchanged, so player and host can use codes of their own; these are the
/// codes the relay itself originates.
pub mod stream {
    /// The other side of the session went away without closing it cleanly (its
    /// connection was lost or closed).
    pub const PEER_GONE: u32 = 0x100;
    /// The session was refused (see the `Error` message on the stream).
    pub const REFUSED: u32 = 0x101;
    /// One side left the bytes forwarded to it unread for the relay's stall timeout.
    pub const STALLED: u32 = 0x102;
    /// No byte moved either way for the relay's session idle timeout.
    pub const SESSION_IDLE: u32 = 0x103;
    /// The session reached its maximum duration.
    pub const DURATION_LIMIT: u32 = 0x104;
    /// The session moved its maximum number of bytes in one direction.
    pub const BYTE_LIMIT: u32 = 0x105;

    /// A player gave up a session set-up because another path to the same host
    /// finished first (see the player's direct-first race).
    pub const CANCELLED: u32 = 0x106;
    /// Sent by a player or host, with both RESET_STREAM and STOP_SENDING, when what
    /// the other side sent broke the session protocol (a frame that fails to open or
    /// breaks the framing rules, or a direction that ends without its `end` frame).
    /// Distinct from a truncation, so the side that broke the protocol learns that
    /// the other side rejected it, rather than blaming the relay.
    pub const PROTOCOL_VIOLATION: u32 = 0x107;
}
