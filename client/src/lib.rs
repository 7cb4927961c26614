//! The blindrelay client library: what a media server (host) or a remote app (player)
//! embeds to reach the other end through a relay that cannot read their traffic.
//!
//! - [`HostAgent`] keeps a host registered with its home relay and yields one
//!   [`SecureStream`] per player session.
//! - [`Player`] opens a [`SecureStream`] to the host a [`Ticket`] names.
//!
//! Both ends run Noise IK end to end (see [`blindrelay_protocol::noise`]); the relay
//! forwards ciphertext only. The `blindrelay` binary (keygen, host, connect) is built
//! on this library.

#![forbid(unsafe_code)]

mod backoff;
mod endpoint;
mod host;
mod player;
mod stream;
mod wire;

pub use backoff::BackoffConfig;
pub use blindrelay_protocol::{HostId, PublicKey, RelayUrl, SecretKey, SessionLimits, Ticket};
pub use endpoint::{connect_relay_raw, connect_relay_raw_from, ConnectRelayError};
pub use host::{HostAgent, HostConfig, HostState, RegisterError};
pub use player::{ConnectError, Player, PlayerConfig};
pub use stream::{SecureStream, SessionPath};
pub use wire::WireError;
