//! The relay's configuration.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
#[cfg(feature = "splice-tap")]
use std::sync::Arc;
use std::time::Duration;

use blindrelay_protocol::RelayUrl;

use crate::tls::{RelayCertificate, TlsError};

/// Default address of a development relay.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 4433);

/// Everything a relay needs to start.
#[derive(Clone)]
#[non_exhaustive]
pub struct RelayConfig {
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// The TLS certificate and key.
    pub certificate: RelayCertificate,
    /// DNS name clients reach the relay by, when its certificate is issued by a public
    /// CA for that name. Without it, the relay's URL pins its certificate instead.
    pub public_name: Option<String>,
    /// A connection with no traffic for this long is closed (hosts send keep-alives
    /// well within it).
    pub idle_timeout: Duration,
    /// A new stream must deliver its first control message within this time.
    pub first_message_timeout: Duration,
    /// How long the relay waits for a host to accept one more session stream before
    /// telling the player the host is unreachable.
    pub open_host_stream_timeout: Duration,
    /// Streams a peer may have open at once on one connection.
    pub max_streams_per_connection: u32,
    /// Observes every chunk the splice forwards (tests only).
    #[cfg(feature = "splice-tap")]
    pub tap: Option<Arc<dyn crate::splice::SpliceTap>>,
}

impl RelayConfig {
    /// A configuration with default limits, listening on `listen` with `certificate`.
    pub fn new(listen: SocketAddr, certificate: RelayCertificate) -> Self {
        Self {
            listen,
            certificate,
            public_name: None,
            idle_timeout: Duration::from_secs(30),
            first_message_timeout: Duration::from_secs(10),
            open_host_stream_timeout: Duration::from_secs(5),
            max_streams_per_connection: 1024,
            #[cfg(feature = "splice-tap")]
            tap: None,
        }
    }

    /// The URL that reaches a relay with this configuration bound at `local_addr`.
    pub(crate) fn url(&self, local_addr: SocketAddr) -> Result<RelayUrl, TlsError> {
        let url = match &self.public_name {
            Some(name) => RelayUrl::new(name, local_addr.port(), None),
            None => {
                // An unspecified address is not something a client can dial; on one
                // machine, loopback reaches it.
                let ip = match local_addr.ip() {
                    ip if !ip.is_unspecified() => ip,
                    IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
                };
                RelayUrl::new(
                    &ip.to_string(),
                    local_addr.port(),
                    Some(self.certificate.pin()),
                )
            }
        };
        url.map_err(|err| TlsError::PublicName(err.to_string()))
    }
}
