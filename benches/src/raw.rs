//! Registrations by the raw protocol, many per UDP socket.
//!
//! A [`HostAgent`](blindrelay_client::HostAgent) per registration would spend a UDP
//! socket, a task tree and a file descriptor on each; for tens of thousands of idle
//! registrations the harness instead shares a few client endpoints, opens one QUIC
//! connection per host id on them, and runs the registration flow (PROTOCOL.md,
//! section 8) itself: `Register`, the relay's `Challenge`, the `Proof` over the
//! connection's exported keying material, `Registered`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};

use blindrelay_client::{read_control, RelayUrl, SecretKey, WireError};
use blindrelay_protocol::registration::{
    HostRegistration, HostRegistrationError, EXPORTER_LABEL, EXPORTER_LEN,
};
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
    /// Writing the registration stream failed.
    #[error("write failed: {0}")]
    Write(#[from] quinn::WriteError),
    /// Reading the relay's answer failed.
    #[error("reading the relay's answer failed: {0}")]
    Read(#[from] WireError),
    /// The relay refused, answered out of protocol, or sent a challenge no proof
    /// can answer.
    #[error(transparent)]
    Exchange(#[from] HostRegistrationError),
    /// No key could be made for the host id.
    #[error("cannot make a host key: {0}")]
    Key(#[from] KeyError),
    /// The connection offers no TLS keying material to bind the proof to.
    #[error("cannot bind the registration proof to the connection")]
    KeyingMaterial,
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
        let (mut send, mut recv) = connection.open_bi().await?;
        let (expect_challenge, register) = HostRegistration::start(&key, None);
        send.write_all(&register.to_frame()).await?;
        let challenge = read_control(&mut recv).await?;
        let mut exporter = [0u8; EXPORTER_LEN];
        connection
            .export_keying_material(&mut exporter, EXPORTER_LABEL, b"")
            .map_err(|_| RegisterError::KeyingMaterial)?;
        let (expect_registered, proof) = expect_challenge.handle(challenge, &exporter)?;
        send.write_all(&proof.to_frame()).await?;
        expect_registered.handle(read_control(&mut recv).await?)?;
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
