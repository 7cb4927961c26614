//! The stream transports of blindrelay: what carries the protocol where QUIC cannot
//! go (networks that block or break UDP).
//!
//! A stream-transport connection (TLS 1.3 over TCP, or a WebSocket over that) carries
//! exactly one stream, framed as [`blindrelay_protocol::stream_frame`] describes.
//! [`framed`] turns such a byte stream into the halves the relay and the client use
//! as they use a QUIC stream's: the same ends, the same codes, the same deadlines.
//! Relay and client share this crate so both ends of a connection follow the same
//! rules. So do the small HTTP listeners beside the protocol (the relay's admin
//! port, the host's panel): [`listener`] is the accept loop that keeps one client
//! from locking the others out of them. [`danger`] is a TLS client that checks no
//! identity, for liveness probes and tests.

#![deny(missing_docs)]

pub mod danger;
pub mod framed;
pub mod listener;
pub mod websocket;

pub use framed::{
    framed, Config, Connection, ConnectionError, FramedRecv, FramedSend, RecvError, SendError,
};
