//! QUIC from the client's side: the UDP sockets a player or host agent connects from,
//! reaching a relay (DNS, verifying its certificate) and a host's direct listener,
//! and the transport settings of those connections.
//!
//! A player or host agent has one QUIC endpoint (one UDP socket) per address family,
//! made on first use and kept for its life ([`LocalEndpoints`]); every connection it
//! opens leaves from it, and a host's relay connection leaves from the socket its
//! direct listener answers on. A NAT then maps one port for all of them, which is what
//! hole punching will need, and a busy player does not spend a socket and a file
//! descriptor per host.
//!
//! A relay URL with a pin is trusted only if the relay presents exactly the pinned
//! certificate (TLS 1.3 signatures are still checked, so the relay must hold its key).
//! A URL without a pin is verified against the public web PKI for its host name.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use blindrelay_protocol::registration::{EXPORTER_LABEL, EXPORTER_LEN};
use blindrelay_protocol::{CertPin, RelayUrl, ALPN, DIRECT_ALPN};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Why a relay could not be reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectRelayError {
    /// The relay's host name did not resolve.
    #[error("cannot resolve relay {host}: {source}")]
    Resolve {
        /// The host name.
        host: String,
        /// The resolver's reason.
        source: std::io::Error,
    },
    /// The relay's host name resolved to no address.
    #[error("cannot resolve relay {host}: no addresses")]
    NoAddress {
        /// The host name.
        host: String,
    },
    /// The local UDP socket could not be made.
    #[error("cannot open a UDP socket: {0}")]
    Socket(#[from] std::io::Error),
    /// The TCP connection to the relay (TLS over TCP, WebSocket) could not be made.
    #[error("cannot connect to the relay over TCP ({addr}): {error}")]
    TcpConnect {
        /// The relay's address.
        addr: std::net::SocketAddr,
        /// The operating system's reason.
        error: std::io::Error,
    },
    /// TLS configuration failed.
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    /// The QUIC connection could not be started.
    #[error("cannot connect to the relay: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The QUIC or TLS handshake failed (relay down, wrong pin, wrong protocol).
    #[error("relay connection failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The TLS-over-TCP connection, its handshake or its WebSocket upgrade failed
    /// (relay down, wrong pin, a relay that does not speak the protocol).
    #[error("relay connection over TCP failed: {0}")]
    TlsHandshake(std::io::Error),
    /// The relay did not complete the handshake in time (down, or unreachable).
    #[error("relay unreachable: no handshake within {0:?}")]
    Timeout(std::time::Duration),
}

/// Why a QUIC client or server configuration could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsSetupError {
    /// rustls refused the configuration.
    #[error("TLS configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
    /// The configuration offers no cipher suite QUIC can start with.
    #[error("TLS configuration failed: {0}")]
    NoInitialCipherSuite(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
}

/// Server name the host's direct certificate carries and the player asks for; it is
/// not checked (see [`crate::host`]'s direct listener), it only has to be a valid name.
pub(crate) const DIRECT_SERVER_NAME: &str = "blindrelay-host";

/// The QUIC endpoints one player or host agent connects from: one per address
/// family, each made on first use and then shared by every connection of that family.
pub(crate) struct LocalEndpoints {
    v4: Mutex<Option<Local>>,
    v6: Mutex<Option<Local>>,
}

/// One endpoint, and a second handle on its socket where this made it.
struct Local {
    endpoint: quinn::Endpoint,
    socket: Option<Arc<std::net::UdpSocket>>,
}

impl LocalEndpoints {
    /// No endpoint yet: each is bound on an ephemeral port when first needed.
    pub(crate) fn new() -> Self {
        Self {
            v4: Mutex::new(None),
            v6: Mutex::new(None),
        }
    }

    /// Connections of `bound`'s family leave from `listener`, the host's direct
    /// listener; those of the other family get an endpoint of their own.
    pub(crate) fn with_listener(listener: quinn::Endpoint, bound: SocketAddr) -> Self {
        let endpoints = Self::new();
        *endpoints
            .slot(bound)
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Local {
            endpoint: listener,
            socket: None,
        });
        endpoints
    }

    /// The endpoint to reach `remote` from.
    pub(crate) fn for_remote(&self, remote: SocketAddr) -> Result<quinn::Endpoint, std::io::Error> {
        self.local_for(remote, |local| local.endpoint.clone())
    }

    /// A second handle on the socket of [`LocalEndpoints::for_remote`]'s endpoint,
    /// from which a player sends punch packets; `None` for a host's listener.
    pub(crate) fn socket_for(
        &self,
        remote: SocketAddr,
    ) -> Result<Option<Arc<std::net::UdpSocket>>, std::io::Error> {
        self.local_for(remote, |local| local.socket.clone())
    }

    fn local_for<T>(
        &self,
        remote: SocketAddr,
        take: impl FnOnce(&Local) -> T,
    ) -> Result<T, std::io::Error> {
        // Binding is quick and never waits on the network; the lock is held only
        // for it.
        let mut slot = self
            .slot(remote)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(local) = slot.as_ref() {
            return Ok(take(local));
        }
        let any: SocketAddr = if remote.is_ipv6() {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        };
        let socket = bind_udp(any)?;
        let second = Arc::new(socket.try_clone()?);
        let local = Local {
            endpoint: quinn::Endpoint::new(
                quinn::EndpointConfig::default(),
                None,
                socket,
                Arc::new(quinn::TokioRuntime),
            )?,
            socket: Some(second),
        };
        let taken = take(&local);
        *slot = Some(local);
        Ok(taken)
    }

    fn slot(&self, addr: SocketAddr) -> &Mutex<Option<Local>> {
        if addr.is_ipv6() {
            &self.v6
        } else {
            &self.v4
        }
    }
}

/// How a client QUIC connection behaves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionProfile {
    /// Bidirectional streams the relay may open towards us (hosts accept one per
    /// session; players accept none).
    pub incoming_streams: u32,
    /// Keep-alive interval, so NATs and the relay's idle timer keep the connection.
    pub keep_alive: Duration,
    /// Close the connection after this long without any packet from the relay.
    pub idle_timeout: Duration,
}

/// Opens a bare QUIC connection to the relay at `url`, verified as any client
/// verifies it, for tools and tests that speak the protocol themselves (the load
/// generator, conformance tests). Applications use [`crate::HostAgent`] and
/// [`crate::Player`] instead.
pub async fn connect_relay_raw(url: &RelayUrl) -> Result<quinn::Connection, ConnectRelayError> {
    connect_relay(&LocalEndpoints::new(), url, RAW_PROFILE).await
}

/// How the bare connections of tools and tests behave: they may accept as many
/// streams as a host would.
const RAW_PROFILE: ConnectionProfile = ConnectionProfile {
    incoming_streams: 1024,
    keep_alive: Duration::from_secs(10),
    idle_timeout: Duration::from_secs(30),
};

/// Like [`connect_relay_raw`], from the local address `local` (tools and tests that
/// play clients at several addresses of one machine: 127.0.0.2, 127.0.0.3, …).
pub async fn connect_relay_raw_from(
    url: &RelayUrl,
    local: std::net::IpAddr,
) -> Result<quinn::Connection, ConnectRelayError> {
    let (endpoint, addr) = relay_endpoint_raw(url, local).await?;
    Ok(endpoint.connect(addr, url.host())?.await?)
}

/// Like [`connect_relay_raw_from`], with the connection's own QUIC transport
/// settings: for tests and tools that play misbehaving clients (one that grants the
/// relay no flow-control credit, say).
pub async fn connect_relay_raw_with(
    url: &RelayUrl,
    local: std::net::IpAddr,
    transport: quinn::TransportConfig,
) -> Result<quinn::Connection, ConnectRelayError> {
    let (endpoint, addr) = relay_endpoint_raw(url, local).await?;
    let mut config = relay_client_config(url, RAW_PROFILE)?;
    config.transport_config(Arc::new(transport));
    Ok(endpoint.connect_with(config, addr, url.host())?.await?)
}

/// A client endpoint on one UDP socket at `local` (port 0 picks one), set up to reach
/// and verify the relay at `url`, and the relay's resolved address: tools that open
/// very many bare connections (the load generator's idle registrations) call
/// `endpoint.connect(addr, url.host())` on it repeatedly instead of spending a socket
/// and a file descriptor on each connection as [`connect_relay_raw`] does.
pub async fn relay_endpoint_raw(
    url: &RelayUrl,
    local: std::net::IpAddr,
) -> Result<(quinn::Endpoint, SocketAddr), ConnectRelayError> {
    let addr = resolve(url).await?;
    let mut endpoint = endpoint_at((local, 0).into())?;
    endpoint.set_default_client_config(relay_client_config(url, RAW_PROFILE)?);
    Ok((endpoint, addr))
}

/// Opens a QUIC connection to the relay at `url`, from one of `endpoints`.
pub(crate) async fn connect_relay(
    endpoints: &LocalEndpoints,
    url: &RelayUrl,
    profile: ConnectionProfile,
) -> Result<quinn::Connection, ConnectRelayError> {
    let addrs = resolve_all(url).await?;
    let config = relay_client_config(url, profile)?;
    // A name with several addresses (a pool's name lists its members) is tried
    // address by address: one that refuses (a draining relay) gives way at once,
    // one that does not answer after a share of the deadline.
    let share = RELAY_HANDSHAKE_TIMEOUT / addrs.len().clamp(1, 2) as u32;
    let mut last = None;
    for (n, &addr) in addrs.iter().enumerate() {
        let endpoint = endpoints.for_remote(addr)?;
        let connecting = endpoint.connect_with(config.clone(), addr, url.host())?;
        // Not the idle timeout (30 s): a relay that does not answer is found out
        // in a few seconds, and the caller backs off and tries again.
        let deadline = if n + 1 == addrs.len() {
            RELAY_HANDSHAKE_TIMEOUT
        } else {
            share
        };
        match tokio::time::timeout(deadline, connecting).await {
            Ok(Ok(connection)) => return Ok(connection),
            Ok(Err(err)) => last = Some(ConnectRelayError::from(err)),
            Err(_) => last = Some(ConnectRelayError::Timeout(deadline)),
        }
    }
    Err(last.unwrap_or(ConnectRelayError::NoAddress {
        host: url.host().to_owned(),
    }))
}

/// A relay connection over TLS over TCP: its one stream, framed, and what the
/// registration proof binds to.
pub struct FramedRelayConnection {
    /// The stream's sending half.
    pub send: blindrelay_transport::FramedSend,
    /// The stream's receiving half.
    pub recv: blindrelay_transport::FramedRecv,
    /// The connection, to close it or learn how it ended.
    pub connection: blindrelay_transport::Connection,
    /// The TLS exporter value for the registration proof (PROTOCOL.md section 8.2).
    pub exporter: [u8; EXPORTER_LEN],
}

impl FramedRelayConnection {
    /// Registers `key`'s host id on this connection's one stream, as
    /// [`crate::internal::register_on_redirected`] does on a QUIC connection: the
    /// registration lasts while the connection stays open. For tools that hold
    /// registrations by hand (the load generator).
    pub async fn register(
        &mut self,
        key: &crate::SecretKey,
        token: Option<Vec<u8>>,
        redirects: u8,
    ) -> Result<(), crate::host::RegisterError> {
        let exporter = self.exporter;
        crate::host::register_over(
            &mut self.send,
            &mut self.recv,
            &exporter,
            key,
            token,
            redirects,
        )
        .await
    }
}

impl std::fmt::Debug for FramedRelayConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FramedRelayConnection")
            .finish_non_exhaustive()
    }
}

/// Opens a TLS-over-TCP connection to the relay at `url` (the URL's host and port,
/// TCP), verified exactly as the QUIC one is, within the relay handshake timeout (4 s).
pub async fn connect_relay_tcp(
    url: &RelayUrl,
    config: blindrelay_transport::Config,
) -> Result<FramedRelayConnection, ConnectRelayError> {
    connect_relay_stream(url, config, false).await
}

/// The TLS settings of a connection to the relay at `url` offering `alpn`, checked
/// as every relay connection is: for tools that speak the TCP transport's bytes
/// themselves (a load generator writing frames by hand).
pub fn relay_client_tls(
    url: &RelayUrl,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, TlsSetupError> {
    client_tls(relay_check(url), alpn)
}

/// Like [`connect_relay_tcp`], with the frames inside a WebSocket at the relay's
/// WebSocket path (ALPN `http/1.1`): for networks that pass HTTPS and nothing else.
pub async fn connect_relay_websocket(
    url: &RelayUrl,
    config: blindrelay_transport::Config,
) -> Result<FramedRelayConnection, ConnectRelayError> {
    connect_relay_stream(url, config, true).await
}

async fn connect_relay_stream(
    url: &RelayUrl,
    config: blindrelay_transport::Config,
    websocket: bool,
) -> Result<FramedRelayConnection, ConnectRelayError> {
    let alpn = if websocket {
        blindrelay_transport::websocket::HTTP_ALPN
    } else {
        ALPN
    };
    let tls = Arc::new(client_tls(relay_check(url), alpn)?);
    let connect = async {
        let addr = resolve(url).await?;
        let socket = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|error| ConnectRelayError::TcpConnect { addr, error })?;
        // Control messages and Noise handshakes are small: send them at once.
        let _ = socket.set_nodelay(true);
        let name = ServerName::try_from(url.host().to_owned()).map_err(|_| {
            ConnectRelayError::Tls(TlsSetupError::Rustls(rustls::Error::General(
                "the relay URL's host is not a valid TLS server name".into(),
            )))
        })?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, socket)
            .await
            .map_err(ConnectRelayError::TlsHandshake)?;
        let (_, state) = stream.get_ref();
        if state.alpn_protocol() != Some(alpn) {
            return Err(ConnectRelayError::TlsHandshake(std::io::Error::other(
                "the relay did not agree to the blindrelay protocol (ALPN)",
            )));
        }
        let mut exporter = [0u8; EXPORTER_LEN];
        state
            .export_keying_material(&mut exporter, EXPORTER_LABEL, Some(b""))
            .map_err(|err| ConnectRelayError::Tls(TlsSetupError::Rustls(err)))?;
        let (send, recv, connection) = if websocket {
            let host = if url.host().contains(':') {
                format!("[{}]", url.host())
            } else {
                url.host().to_owned()
            };
            let request = format!(
                "wss://{host}:{}{}",
                url.port(),
                blindrelay_transport::websocket::PATH
            );
            let (ws, _) = tokio_tungstenite::client_async_with_config(
                request,
                stream,
                Some(blindrelay_transport::websocket::config()),
            )
            .await
            .map_err(|err| ConnectRelayError::TlsHandshake(std::io::Error::other(err)))?;
            let bytes = blindrelay_transport::websocket::WsBytes::new(ws);
            blindrelay_transport::framed(bytes, config)
        } else {
            blindrelay_transport::framed(stream, config)
        };
        Ok(FramedRelayConnection {
            send,
            recv,
            connection,
            exporter,
        })
    };
    match tokio::time::timeout(RELAY_HANDSHAKE_TIMEOUT, connect).await {
        Ok(result) => result,
        Err(_) => Err(ConnectRelayError::Timeout(RELAY_HANDSHAKE_TIMEOUT)),
    }
}

/// How long a connection to a relay may take to complete its handshake: several of
/// QUIC's first retransmissions (1 s, then 2 s) on a lossy path, far more than a
/// round trip to any relay.
pub(crate) const RELAY_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(4);

/// The client configuration of a player's connection to a host's direct listener.
pub(crate) fn direct_client_config(
    profile: ConnectionProfile,
) -> Result<quinn::ClientConfig, TlsSetupError> {
    client_config(ServerCheck::NoiseAuthenticates, DIRECT_ALPN, profile)
}

pub(crate) async fn resolve(url: &RelayUrl) -> Result<SocketAddr, ConnectRelayError> {
    let host = || url.host().to_owned();
    let mut addrs = tokio::net::lookup_host((url.host(), url.port()))
        .await
        .map_err(|source| ConnectRelayError::Resolve {
            host: host(),
            source,
        })?;
    addrs
        .next()
        .ok_or_else(|| ConnectRelayError::NoAddress { host: host() })
}

/// Every address of `url`'s host, at most [`MAX_RELAY_ADDRESSES`] of them, in the
/// resolver's order.
async fn resolve_all(url: &RelayUrl) -> Result<Vec<SocketAddr>, ConnectRelayError> {
    let host = || url.host().to_owned();
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((url.host(), url.port()))
        .await
        .map_err(|source| ConnectRelayError::Resolve {
            host: host(),
            source,
        })?
        .take(MAX_RELAY_ADDRESSES)
        .collect();
    if addrs.is_empty() {
        return Err(ConnectRelayError::NoAddress { host: host() });
    }
    Ok(addrs)
}

/// How many of a relay name's addresses a QUIC connect tries.
const MAX_RELAY_ADDRESSES: usize = 4;

/// A client-only endpoint bound to `local`.
fn endpoint_at(local: SocketAddr) -> Result<quinn::Endpoint, std::io::Error> {
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        bind_udp(local)?,
        Arc::new(quinn::TokioRuntime),
    )
}

/// A UDP socket bound to `local`, with large kernel buffers where allowed.
pub(crate) fn bind_udp(local: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(local), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort, as on the relay: small kernel buffers drop packets at Gbit/s.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(UDP_BUFFER_BYTES);
    socket.bind(&local.into())?;
    Ok(socket.into())
}

const UDP_BUFFER_BYTES: usize = 8 << 20;

/// How a client checks the certificate of the QUIC endpoint it connects to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ServerCheck {
    /// A relay whose URL pins its certificate: exactly that certificate.
    Pinned(CertPin),
    /// A relay with a certificate a public CA issued for its URL's host name.
    WebPki,
    /// A host's direct listener: any certificate. Safe only because every direct
    /// session starts with the Noise IK handshake, which authenticates the host by
    /// its host id (see [`crate::host`]'s direct listener).
    NoiseAuthenticates,
}

/// A QUIC client configuration: TLS 1.3 only, one ALPN, the given certificate check.
fn client_config(
    check: ServerCheck,
    alpn: &[u8],
    profile: ConnectionProfile,
) -> Result<quinn::ClientConfig, TlsSetupError> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(client_tls(check, alpn)?)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));

    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(profile.keep_alive))
        .max_idle_timeout(profile.idle_timeout.try_into().ok())
        .max_concurrent_bidi_streams(profile.incoming_streams.into())
        .max_concurrent_uni_streams(0u32.into())
        // Nothing travels in QUIC datagrams: none announced, none parked.
        .datagram_receive_buffer_size(None);
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// The TLS settings of every client connection, QUIC or TCP: TLS 1.3 only, one
/// ALPN, the given certificate check.
///
/// One configuration per certificate check and ALPN in the process, so that its
/// connections resume each other's TLS sessions: a TCP host's connection for each
/// session, and a TCP player's, skip the relay's certificate and its signature after
/// the first (rustls resumes only under the very verifier that checked the
/// certificate, and keeps tickets apart by server name). A ticket is so only ever
/// offered to a relay checked the same way as the one that gave it: the same pin, or
/// the web's CAs for the same name. A host's direct listener (any certificate, Noise
/// authenticates) resumes nothing.
pub(crate) fn client_tls(
    check: ServerCheck,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, TlsSetupError> {
    type Shared = std::collections::HashMap<(Option<CertPin>, Vec<u8>), rustls::ClientConfig>;
    static SHARED: std::sync::OnceLock<Mutex<Shared>> = std::sync::OnceLock::new();
    let pin = match check {
        ServerCheck::Pinned(pin) => Some(pin),
        ServerCheck::WebPki => None,
        ServerCheck::NoiseAuthenticates => {
            let mut tls = new_client_tls(check, alpn)?;
            tls.resumption = rustls::client::Resumption::disabled();
            return Ok(tls);
        }
    };
    let mut shared = SHARED
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let key = (pin, alpn.to_vec());
    if let Some(tls) = shared.get(&key) {
        // A clone shares the verifier and the session store.
        return Ok(tls.clone());
    }
    let tls = new_client_tls(check, alpn)?;
    shared.insert(key, tls.clone());
    Ok(tls)
}

/// A new [`client_tls`] configuration.
fn new_client_tls(check: ServerCheck, alpn: &[u8]) -> Result<rustls::ClientConfig, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let custom = |pin| {
        builder
            .clone()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(CertVerifier { pin, provider }))
            .with_no_client_auth()
    };
    let mut tls = match check {
        ServerCheck::Pinned(pin) => custom(Some(pin)),
        ServerCheck::NoiseAuthenticates => custom(None),
        ServerCheck::WebPki => {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    tls.alpn_protocols = vec![alpn.to_vec()];
    Ok(tls)
}

/// How a client checks the relay at `url`.
pub(crate) fn relay_check(url: &RelayUrl) -> ServerCheck {
    match url.pin() {
        Some(pin) => ServerCheck::Pinned(*pin),
        None => ServerCheck::WebPki,
    }
}

/// The relay's client configuration for `url`.
/// The client configuration of a connection to a relay's probe port (see
/// [`crate::punch::maps_per_destination`]): checked as the relay is, and short-lived.
pub(crate) fn probe_client_config(
    url: &RelayUrl,
) -> Result<quinn::ClientConfig, ConnectRelayError> {
    relay_client_config(
        url,
        ConnectionProfile {
            incoming_streams: 0,
            keep_alive: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
        },
    )
}

fn relay_client_config(
    url: &RelayUrl,
    profile: ConnectionProfile,
) -> Result<quinn::ClientConfig, ConnectRelayError> {
    Ok(client_config(relay_check(url), ALPN, profile)?)
}

/// Trusts exactly one certificate, by its SHA-256 digest, whatever its name or
/// issuer; or, without a pin, any certificate. Either way the TLS 1.3 signature is
/// checked, so the peer holds the key of the certificate it shows.
#[derive(Debug)]
struct CertVerifier {
    pin: Option<CertPin>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for CertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.pin.is_none_or(|pin| pin.matches(end_entity)) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "relay certificate does not match the pin in the relay URL".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Only TLS 1.3 is offered, so this is never reached; refuse if it were.
        Err(rustls::Error::General("TLS 1.2 is not supported".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The pin says which certificate; this check proves the peer holds its key.
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
