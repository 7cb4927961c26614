//! The doors: where connections come in, and what each does before it hands a
//! stream to the [router](crate::route).
//!
//! - [`quic`]: the QUIC endpoint's connections, hosts' and players';
//! - [`webtransport`]: browsers' WebTransport sessions on that endpoint;
//! - [`tcp`]: TLS over TCP, and HTTPS ([`web`]) with its WebSocket, for networks
//!   that block UDP;
//! - [`admin`]: the operator's metrics and health, on a port of its own;
//! - [`probe`]: a second UDP port that only tells a client its address.

pub(crate) mod admin;
pub(crate) mod probe;
pub(crate) mod quic;
pub(crate) mod tcp;
pub(crate) mod web;
pub(crate) mod webtransport;
