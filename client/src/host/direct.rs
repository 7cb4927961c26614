//! The host's direct listener: its own QUIC endpoint, which players reach without a
//! relay.
//!
//! A host that can be reached directly binds a QUIC endpoint with ALPN
//! `blindrelay-direct/1` ([`DIRECT_ALPN`]). Each bidirectional stream a player opens on
//! it is one session, and it starts with the Noise hello straight away: there is no
//! relay to address, so no control message comes first. The host answers with the
//! Noise reply and from then on the stream carries Noise transport frames, exactly as
//! a relayed session stream does after `Connected` / `Incoming`.
//!
//! The host's TLS certificate is self-signed and made in memory at every start, and
//! the player accepts any certificate on a direct connection. That is safe because
//! TLS is not what authenticates the host here: the Noise IK handshake on every
//! session is encrypted to the host id from the ticket, and only the holder of that
//! key can answer it. Someone in the middle who terminates QUIC with a certificate of
//! their own gets a hello they cannot answer, and only ciphertext afterwards. TLS still
//! hides which streams and how many sessions a connection carries.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use blindrelay_protocol::{codes, DIRECT_ALPN};
use rustls::pki_types::PrivateKeyDer;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::accept::SessionAcceptor;
use super::{HostConfig, HostCounters};
use crate::endpoint::{bind_udp, TlsSetupError, DIRECT_SERVER_NAME};
use crate::session::SessionPath;

/// Why the direct listener could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DirectListenError {
    /// The UDP socket could not be bound.
    #[error("cannot listen directly on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The self-signed certificate could not be made.
    #[error("cannot make the direct listener's certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// The TLS configuration failed.
    #[error("cannot set up TLS for the direct listener: {0}")]
    Tls(#[from] TlsSetupError),
}

/// Binds the host's direct QUIC endpoint; with it, a second handle on its socket,
/// from which punch packets leave (see [`crate::punch`]).
pub(super) fn listen(
    config: &HostConfig,
    addr: SocketAddr,
) -> Result<(quinn::Endpoint, UdpSocket), DirectListenError> {
    let server = server_config(config)?;
    let bind_error = |source| DirectListenError::Bind { addr, source };
    let socket = bind_udp(addr).map_err(bind_error)?;
    let punch_socket = socket.try_clone().map_err(bind_error)?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(bind_error)?;
    Ok((endpoint, punch_socket))
}

/// The addresses a ticket should carry for a listener bound to `bound`: the
/// configured ones (a port of 0 taking the bound port), else the bound address, or,
/// for an unspecified address, the local address the operating system would use to
/// reach the internet.
pub(super) fn advertised(bound: SocketAddr, configured: &[SocketAddr]) -> Vec<SocketAddr> {
    if !configured.is_empty() {
        return configured
            .iter()
            .map(|addr| match addr.port() {
                0 => SocketAddr::new(addr.ip(), bound.port()),
                _ => *addr,
            })
            .collect();
    }
    if !bound.ip().is_unspecified() {
        return vec![bound];
    }
    match routed_local_ip(bound.is_ipv6()) {
        Some(ip) => vec![SocketAddr::new(ip, bound.port())],
        None => {
            let loopback: IpAddr = match bound {
                SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
            };
            warn!(
                "no route to the internet to find this machine's address; the ticket \
                 names {loopback} only (give the address players should use explicitly)"
            );
            vec![SocketAddr::new(loopback, bound.port())]
        }
    }
}

/// The source address the kernel picks for a packet to a documentation address:
/// "connecting" a UDP socket only does a route lookup, nothing is sent.
fn routed_local_ip(v6: bool) -> Option<IpAddr> {
    let (local, remote): (SocketAddr, SocketAddr) = if v6 {
        (
            (Ipv6Addr::UNSPECIFIED, 0).into(),
            (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), 9).into(),
        )
    } else {
        (
            (Ipv4Addr::UNSPECIFIED, 0).into(),
            (Ipv4Addr::new(192, 0, 2, 1), 9).into(),
        )
    };
    let socket = UdpSocket::bind(local).ok()?;
    socket.connect(remote).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

/// Accepts direct connections until the endpoint is closed; every connection, and
/// every session handshake on it, is a task owned by this one.
pub(super) async fn serve_direct_players(
    endpoint: quinn::Endpoint,
    config: Arc<HostConfig>,
    acceptor: SessionAcceptor,
    counters: Arc<HostCounters>,
    path: SessionPath,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let open = counters.direct_connections.load(Ordering::Relaxed);
                if open >= u64::from(config.max_direct_connections) {
                    debug!(open, "refusing a direct connection: at the limit");
                    counters.direct_refused.fetch_add(1, Ordering::Relaxed);
                    incoming.refuse();
                    continue;
                }
                connections.spawn(serve_connection(
                    incoming,
                    acceptor.clone(),
                    counters.clone(),
                    path,
                ));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Counts a direct connection while it is open.
struct CountedDirectConnection(Arc<HostCounters>);

impl CountedDirectConnection {
    fn new(counters: Arc<HostCounters>) -> Self {
        counters.direct_connections.fetch_add(1, Ordering::Relaxed);
        Self(counters)
    }
}

impl Drop for CountedDirectConnection {
    fn drop(&mut self) {
        self.0.direct_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve_connection(
    incoming: quinn::Incoming,
    acceptor: SessionAcceptor,
    counters: Arc<HostCounters>,
    path: SessionPath,
) {
    let _open = CountedDirectConnection::new(counters);
    let connection = match incoming.await {
        Ok(connection) => connection,
        Err(err) => return debug!(%err, "direct connection failed during its handshake"),
    };
    debug!("direct connection from a player");
    serve_sessions(connection, acceptor, path).await;
}

/// Serves a direct connection this host dialled to a player that asked it to
/// (roles swapped in a punch, see [`super::punch`]), counted like an accepted one.
/// Boxed: serving it is what leads to dialling in the first place, and a future
/// cannot contain itself.
pub(super) fn serve_dialled(
    connection: quinn::Connection,
    acceptor: SessionAcceptor,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        let _open = CountedDirectConnection::new(acceptor.counters().clone());
        debug!("direct connection to a player, dialled for a punch");
        serve_sessions(connection, acceptor, SessionPath::Punched).await;
    })
}

/// Serves every session a player opens on a direct `connection`, until it ends.
async fn serve_sessions(
    connection: quinn::Connection,
    acceptor: SessionAcceptor,
    path: SessionPath,
) {
    let mut handshakes = JoinSet::new();
    loop {
        tokio::select! {
            accepted = connection.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    let acceptor = acceptor.clone();
                    let connection = connection.clone();
                    handshakes.spawn(async move {
                        acceptor.accept_direct(send, recv, path, connection).await;
                    });
                }
                Err(err) => return debug!(%err, "direct connection ended"),
            },
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
        }
    }
}

/// Logs how a direct listener was set up.
pub(super) fn log_listening(bound: SocketAddr, advertised: &[SocketAddr]) {
    info!(%bound, ?advertised, "listening directly");
}

fn server_config(config: &HostConfig) -> Result<quinn::ServerConfig, DirectListenError> {
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(config.idle_timeout.try_into().ok())
        .max_concurrent_bidi_streams(config.max_concurrent_sessions.into())
        .max_concurrent_uni_streams(0u32.into())
        // The protocol carries nothing in QUIC datagrams: none announced, so a
        // player that sends one anyway breaks QUIC and is closed, instead of
        // parking up to quinn's default 1.25 MB of them in the host.
        .datagram_receive_buffer_size(None);
    direct_server_config(transport)
}

/// The server configuration of a direct endpoint, with `transport`: a certificate
/// self-signed now (Noise, not TLS, authenticates the host; see above), TLS 1.3,
/// ALPN [`DIRECT_ALPN`], no 0-RTT. A player that a punching host dials back
/// accepts with one too.
pub(crate) fn direct_server_config(
    transport: quinn::TransportConfig,
) -> Result<quinn::ServerConfig, DirectListenError> {
    let certified = rcgen::generate_simple_self_signed(vec![DIRECT_SERVER_NAME.to_owned()])?;
    let chain = vec![certified.cert.der().clone()];
    let key = PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .and_then(|builder| builder.with_no_client_auth().with_single_cert(chain, key))
        .map_err(TlsSetupError::from)?;
    tls.alpn_protocols = vec![DIRECT_ALPN.to_vec()];
    // No 0-RTT: early data is replayable.
    tls.max_early_data_size = 0;
    let crypto =
        quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(TlsSetupError::from)?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport));
    Ok(server)
}

/// Close code and reason of a direct endpoint when its host shuts down.
pub(super) fn close(endpoint: &quinn::Endpoint) {
    endpoint.close(codes::close::NORMAL.into(), b"host shutting down");
}
