//! The blindrelay wire protocol and end-to-end session, with no I/O.
//!
//! Everything that crosses the network is defined here: identities ([`HostId`],
//! [`SecretKey`]), how a player finds a host ([`Ticket`], [`RelayUrl`]), the control
//! messages exchanged with the relay ([`control`]), the registration proof of key
//! possession ([`registration`]), the operator's registration tokens ([`token`]) and
//! the Noise session that player and host run over whatever path joins them
//! ([`noise`]). The one duration syntax that both programs' flags and the relay's
//! config file use is here too ([`duration`]), as the one crate both share.
//!
//! Nothing in this crate opens a socket, spawns a task or reads a clock: inputs are
//! byte slices, outputs are byte buffers and typed errors. The relay and the client
//! crates are drivers around it. `PROTOCOL.md` at the repository root describes the
//! same protocol in prose.

#![deny(missing_docs)]

pub mod codes;
pub mod control;
pub mod duration;
mod encoding;
pub mod error;
/// Fuzz target bodies, for the `fuzz/` crate and the stable-toolchain fuzz test; not
/// part of the API.
#[doc(hidden)]
pub mod fuzz;
pub mod keys;
pub mod limits;
pub mod noise;
pub mod placement;
pub mod punch;
pub mod registration;
pub mod relay_url;
pub mod resume;
pub mod stream_frame;
pub mod ticket;
pub mod token;

pub use codes::{CloseCode, StreamCode};
pub use control::ControlMessage;
pub use error::{DecodeError, ErrorCode};
pub use keys::{HostId, KeyError, PublicKey, SecretKey};
pub use limits::SessionLimits;
pub use relay_url::{CertPin, RelayUrl, RelayUrlError};
pub use ticket::{Ticket, TicketError};
pub use token::{Claims, IssuerKeys, IssuerPublicKey, IssuerSecretKey, Token, TokenError};

/// ALPN protocol id every QUIC connection to a relay negotiates.
///
/// The trailing number is the protocol version: a relay that speaks a later version
/// offers a different ALPN, so mismatched peers fail the TLS handshake with a clear
/// `no_application_protocol` alert instead of misparsing each other.
pub const ALPN: &[u8] = b"blindrelay/1";

/// ALPN protocol id of a QUIC connection a player opens straight to a host.
///
/// Distinct from [`ALPN`] so that a host's direct listener and a relay can never be
/// mistaken for each other: each refuses the other's connections during the TLS
/// handshake.
pub const DIRECT_ALPN: &[u8] = b"blindrelay-direct/1";

/// Version byte carried by every control message (see [`control`]).
pub const PROTOCOL_VERSION: u8 = 1;
