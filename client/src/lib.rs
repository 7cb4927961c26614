//! The blindrelay client library: what a media server (host) or a remote app (player)
//! embeds to reach the other end through a relay that cannot read their traffic.
//!
//! - [`HostAgent`] keeps a host reachable, registered with its home relay while
//!   Enable Relay is on and listening directly if asked to, and yields one
//!   [`SecureStream`] per player session from either path.
//! - [`Player`] opens a [`SecureStream`] to the host a [`Ticket`] names: directly when
//!   it can, through the relay otherwise, and says which ([`SessionPath`]).
//!
//! Both ends run Noise IK end to end (see [`blindrelay_protocol::noise`]); the relay
//! forwards ciphertext only. The `blindrelay` binary (keygen, host, connect) is built
//! on this library.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod authorized;
mod backoff;
mod connections;
mod endpoint;
mod host;
mod linger;
mod player;
mod stream;
mod transports;
mod web_link;
mod wire;

pub use authorized::{
    parse_authorized_players, AuthorizedPlayers, AuthorizedPlayersError, PlayerAuthorization,
};
pub use backoff::BackoffConfig;
pub use blindrelay_protocol::{
    HostId, PublicKey, RelayUrl, SecretKey, SessionLimits, Ticket, Token,
};
pub use endpoint::{
    connect_relay_raw, connect_relay_raw_from, connect_relay_raw_with, connect_relay_tcp,
    connect_relay_websocket, relay_client_tls, relay_endpoint_raw, ConnectRelayError,
    FramedRelayConnection, TlsSetupError,
};
pub use host::{
    register_on, register_on_redirected, DirectListenError, HostAgent, HostConfig, HostState,
    HostStats, RegisterError, RegistrationStream, StartError,
};
pub use linger::{framed_halves, halves as quic_halves, StreamRecv, StreamSend, LINGER};
pub use player::{
    ConnectError, DirectConnectError, PathPreference, Player, PlayerConfig, SetupStreamError,
    UnknownPathPreference,
};
pub use stream::{Abandon, RelayTransport, SecureStream, SessionEnded, SessionPath};
pub use transports::{TransportPreference, UnknownTransport, DEFAULT_TCP_DELAY, UDP_BROKEN_MEMORY};
pub use web_link::{web_link, WebLinkError};
pub use wire::{read_control, WireError};
