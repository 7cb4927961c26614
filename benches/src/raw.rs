//! Registrations by the raw protocol, many per UDP socket.
//!
//! A [`HostAgent`](blindrelay_client::HostAgent) per registration would spend a UDP
//! socket, a task tree and a file descriptor on each; for tens of thousands of idle
//! registrations the harness instead shares a few client endpoints, opens one QUIC
//! connection per host id on them, and runs the registration flow (PROTOCOL.md,
//! section 8) on each with the client's own [`blindrelay_client::internal::register_on`]:
//! `Register`, the relay's `Challenge`, the `Proof` over the connection's exported
//! keying material, `Registered`.
//!
//! The relay named may be one member of a pool (PROTOCOL.md section 18) that owns
//! only some of the host ids: a `Redirect` is followed to the owner it names, with
//! the redirect count raised as a host agent would, and counted, so a run through a
//! pool's entry member measures registrations as hosts make them there.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use blindrelay_client::{RelayUrl, SecretKey};
use blindrelay_protocol::placement::MAX_REDIRECTS;
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
    /// A pool member redirected the registration to members none of which
    /// resolves to an address.
    #[error("redirected to pool members that do not resolve: {}", members.join(", "))]
    NoMember {
        /// The member names the redirect gave.
        members: Vec<String>,
    },
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

/// A registration held over TLS over TCP (its own connection, its one stream): it
/// lasts while this value lives. Pool redirects are not followed here.
pub struct TcpRegistration {
    connected: blindrelay_client::internal::FramedRelayConnection,
}

impl TcpRegistration {
    /// Registers a fresh host id on a new TLS-over-TCP connection to `url`.
    pub async fn register(url: &RelayUrl) -> Result<Self, RegisterError> {
        let key = SecretKey::generate()?;
        let mut connected =
            blindrelay_client::internal::connect_relay_tcp(url, Default::default()).await?;
        connected.register(&key, None, 0).await?;
        Ok(Self { connected })
    }

    /// Whether the connection is still open.
    pub fn is_alive(&self) -> bool {
        self.connected.connection.close_reason().is_none()
    }

    /// Ends the registration and closes its connection.
    pub fn close(self) {
        self.connected
            .connection
            .close(blindrelay_protocol::codes::close::NORMAL, "done");
    }
}

/// Client endpoints shared by many registrations.
pub struct RegistrationPool {
    endpoints: Vec<quinn::Endpoint>,
    url: RelayUrl,
    relay: SocketAddr,
    server_name: String,
    next: AtomicUsize,
    redirects: AtomicU64,
}

impl RegistrationPool {
    /// `endpoints` client endpoints (one UDP socket each) on 127.0.0.1 towards `url`.
    pub async fn new(url: &RelayUrl, endpoints: usize) -> Result<Self, RegisterError> {
        let mut list = Vec::new();
        let mut relay = None;
        for _ in 0..endpoints.max(1) {
            let (endpoint, addr) = blindrelay_client::internal::relay_endpoint_raw(
                url,
                IpAddr::V4(Ipv4Addr::LOCALHOST),
            )
            .await?;
            relay = Some(addr);
            list.push(endpoint);
        }
        Ok(Self {
            endpoints: list,
            url: url.clone(),
            relay: relay.ok_or(RegisterError::NoEndpoint)?,
            server_name: url.host().to_owned(),
            next: AtomicUsize::new(0),
            redirects: AtomicU64::new(0),
        })
    }

    /// Registers a fresh host id on a new connection, following pool redirects
    /// (each on a new connection to the member named first that resolves).
    pub async fn register(&self) -> Result<Registration, RegisterError> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.endpoints.len();
        let endpoint = &self.endpoints[index];
        let key = SecretKey::generate()?;
        let (mut addr, mut server_name) = (self.relay, self.server_name.clone());
        let mut redirects = 0;
        loop {
            let connection = endpoint.connect(addr, &server_name)?.await?;
            match blindrelay_client::internal::register_on_redirected(
                &connection,
                &key,
                None,
                redirects,
            )
            .await
            {
                Ok((send, recv)) => {
                    return Ok(Registration {
                        host_id: key.host_id(),
                        connection,
                        _send: send,
                        _recv: recv,
                    })
                }
                Err(blindrelay_client::RegisterError::Redirected { members })
                    if redirects < MAX_REDIRECTS =>
                {
                    connection.close(0u32.into(), b"redirected");
                    self.redirects.fetch_add(1, Ordering::Relaxed);
                    redirects += 1;
                    (addr, server_name) = self.member(members).await?;
                }
                Err(err) => {
                    connection.close(0u32.into(), b"failed");
                    return Err(err.into());
                }
            }
        }
    }

    /// Redirects followed so far, by every registration of this pool.
    pub fn redirects(&self) -> u64 {
        self.redirects.load(Ordering::Relaxed)
    }

    /// The address and TLS server name of the first of `members` that resolves.
    async fn member(&self, members: Vec<String>) -> Result<(SocketAddr, String), RegisterError> {
        for member in &members {
            let Ok(url) = self.url.with_authority(member) else {
                continue;
            };
            let resolved = tokio::net::lookup_host((url.host(), url.port())).await;
            if let Some(addr) = resolved.ok().and_then(|mut addrs| addrs.next()) {
                return Ok((addr, url.host().to_owned()));
            }
        }
        Err(RegisterError::NoMember { members })
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
