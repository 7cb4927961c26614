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
//! on this library, and `examples/` holds a host and a player of a few dozen lines.
//!
//! ```no_run
//! use blindrelay_client::{HostAgent, HostConfig, Player, PlayerConfig, SecretKey};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # async fn run() -> anyhow::Result<()> {
//! // The host: registered with its relay while Enable Relay is on; its ticket is
//! // what a player needs, and carries no secret.
//! let relay = "blindrelay://relay.example.net:4433".parse()?;
//! let mut host = HostAgent::start(HostConfig::new(SecretKey::generate()?, relay))?;
//! let ticket = host.ticket().clone();
//! tokio::spawn(async move {
//!     while let Some(mut session) = host.accept().await {
//!         // Plaintext here, ciphertext everywhere between the two ends.
//!         let _ = session.write_all(b"hello from home").await;
//!         let _ = session.shutdown().await;
//!     }
//! });
//!
//! // The player: directly when it can, through the relay otherwise.
//! let player = Player::new(PlayerConfig::new(SecretKey::generate()?));
//! let mut session = player.connect(&ticket).await?;
//! let mut greeting = String::new();
//! session.read_to_string(&mut greeting).await?;
//! println!("{greeting} ({})", session.path());
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod authorized;
mod backoff;
mod connections;
mod endpoint;
mod host;
mod linger;
mod player;
mod punch;
mod session;
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
pub use endpoint::{ConnectRelayError, TlsSetupError};
pub use host::{
    DirectListenError, HostAgent, HostConfig, HostState, HostStats, RegisterError, StartError,
};
pub use linger::{StreamRecv, StreamSend};
pub use player::{
    ConnectError, DirectConnectError, PathPreference, Player, PlayerConfig, SetupStreamError,
    UnknownPathPreference,
};
pub use session::{RelayTransport, SessionEnded, SessionPath};
pub use stream::{Abandon, ResumeError, SecureStream};
pub use transports::{TransportPreference, UnknownTransport, DEFAULT_TCP_DELAY, UDP_BROKEN_MEMORY};
pub use web_link::{web_link, WebLink, WebLinkError};
pub use wire::WireError;

/// Plumbing for the load generator and the whole-system tests: raw connections to a
/// relay, a registration made by hand, a control message read off a stream, a
/// stream's halves. Nothing here is needed to host or to play, and none of it is a
/// stable interface, so it is left out of the documentation (as rustls's).
#[doc(hidden)]
pub mod internal {
    pub use crate::endpoint::{
        connect_relay_raw, connect_relay_raw_from, connect_relay_raw_with, connect_relay_tcp,
        connect_relay_websocket, relay_client_tls, relay_endpoint_raw, FramedRelayConnection,
    };
    pub use crate::host::{register_on, register_on_redirected, RegistrationStream};
    pub use crate::linger::{framed_halves, halves as quic_halves, LINGER};
    pub use crate::wire::read_control;

    /// The secret name a resume of `session` gives its host now (PROTOCOL.md
    /// 10.8), if the session is resumable: for tests that try resuming it as
    /// someone else, or too late.
    pub fn resume_id(
        session: &crate::SecureStream,
    ) -> Option<blindrelay_protocol::noise::ResumeId> {
        session.resume_id()
    }
}
