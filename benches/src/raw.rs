//! Registrations by the raw protocol, many per UDP socket.
//!
//! A [`HostAgent`](blindrelay_client::HostAgent) per registration would spend a UDP
//! socket, a task tree and a file descriptor on each; for tens of thousands of idle
//! registrations the harness instead shares a few client endpoints, opens one QUIC
//! connection per host id on them, and runs the registration flow (PROTOCOL.md,
//! section 8) on each with the client's own [`blindrelay_client::register_on`]:
//! `Register`, the relay's `Challenge`, the `Proof` over the connection's exported
//! keying material, `Registered`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};

use blindrelay_client::{RelayUrl, SecretKey};
use blindrelay_protocol::KeyError;

/// Why a registration failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// The relay could not be reached.
    #[error(transparent)]
    Relay(#[from] blindrelay_client::ConnectRelayError),
    /// The connection could not be started.
    #[error("cannot connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The connection failed.
    #[error("connection failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The registration exchange failed or was refused.
    #[error(transparent)]
    Register(#[from] blindrelay_client::RegisterError),
    /// No key could be made for the host id.
    #[error("cannot make a host key: {0}")]
    Key(#[from] KeyError),
    /// The pool was asked for no endpoint at all.
    #[error("a registration pool needs at least one endpoint")]
    NoEndpoint,
}

/// A held registration: it lasts while this value lives.
pub struct Registration {
    host_id: blindrelay_client::HostId,
    connection: quinn::Connection,
    _send: quinn::SendStream,
    _recv: quinn::RecvStream,
}

impl Registration {
    /// The registered host id.
    pub fn host_id(&self) -> &blindrelay_client::HostId {
        &self.host_id
    }

    /// The host's connection, on which the relay opens session streams.
    pub fn connection(&self) -> &quinn::Connection {
        &self.connection
    }

    /// Whether the connection is still open.
    pub fn is_alive(&self) -> bool {
        self.connection.close_reason().is_none()
    }

    /// Ends the registration and closes its connection.
    pub fn close(self) {
        self.connection.close(0u32.into(), b"done");
    }
}

/// Client endpoints shared by many registrations.
pub struct RegistrationPool {
    endpoints: Vec<quinn::Endpoint>,
    relay: SocketAddr,
    server_name: String,
    next: AtomicUsize,
}

impl RegistrationPool {
    /// `endpoints` client endpoints (one UDP socket each) on 127.0.0.1 towards `url`.
    pub async fn new(url: &RelayUrl, endpoints: usize) -> Result<Self, RegisterError> {
        let mut list = Vec::new();
        let mut relay = None;
        for _ in 0..endpoints.max(1) {
            let (endpoint, addr) =
                blindrelay_client::relay_endpoint_raw(url, IpAddr::V4(Ipv4Addr::LOCALHOST)).await?;
            relay = Some(addr);
            list.push(endpoint);
        }
        Ok(Self {
            endpoints: list,
            relay: relay.ok_or(RegisterError::NoEndpoint)?,
            server_name: url.host().to_owned(),
            next: AtomicUsize::new(0),
        })
    }

    /// Registers a fresh host id on a new connection.
    pub async fn register(&self) -> Result<Registration, RegisterError> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.endpoints.len();
        let connection = self.endpoints[index]
            .connect(self.relay, &self.server_name)?
            .await?;
        let key = SecretKey::generate()?;
        let (send, recv) = blindrelay_client::register_on(&connection, &key, None).await?;
        Ok(Registration {
            host_id: key.host_id(),
            connection,
            _send: send,
            _recv: recv,
        })
    }

    /// Closes every endpoint (and so every connection on them) and waits briefly
    /// for the closes to go out.
    pub async fn close(&self) {
        for endpoint in &self.endpoints {
            endpoint.close(0u32.into(), b"done");
        }
        for endpoint in &self.endpoints {
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(3), endpoint.wait_idle()).await;
        }
    }
}
