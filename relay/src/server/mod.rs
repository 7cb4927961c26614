//! The server: binds the relay's endpoint, admits or refuses each new connection,
//! hands admitted ones to their task, and stops (abruptly, or by draining).

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use blindrelay_protocol::codes;
use blindrelay_protocol::RelayUrl;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::config::{RelayConfig, TcpListen};
use crate::endpoint;
use crate::endpoint::quic::TransportError;
use crate::endpoint::short_lived::{self, SharedShortLived, ShortLived};
use crate::endpoint::tls::{self, RelayCertificate, TlsError};
use crate::listen::tcp::{self, TlsSettings};
use crate::listen::web::WebFront;
use crate::listen::{self, admin, probe};
use crate::ops::privacy;
use crate::ops::stats::{self, StatsSnapshot};
use crate::policy::admission;
use crate::policy::admission::Door;
use crate::policy::limits::LimitsError;
use crate::state::RelayState;

mod pool_view;

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The UDP socket or the TCP listener could not be bound.
    #[error("cannot listen on {addr} ({protocol}): {error}{}", bind_hint(.protocol, error))]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// `UDP` (QUIC) or `TCP` (TLS over TCP, WebSocket, the web side).
        protocol: &'static str,
        /// The operating system's reason (in the message: not a source, so that an
        /// error chain says it once).
        error: std::io::Error,
    },
    /// The TLS configuration was refused.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A limit cannot be expressed in QUIC's transport parameters.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The tiers do not resolve.
    #[error("invalid limits: {0}")]
    Tiers(#[from] crate::policy::limits::TiersError),
    /// A limit has a value the relay cannot run with.
    #[error("invalid limits: {0}")]
    Limits(#[from] LimitsError),
    /// The admin listener's TCP address could not be bound.
    #[error("cannot listen for admin requests on {addr}: {source}")]
    Admin {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
}

/// A running relay. Dropping it stops the relay abruptly; [`Relay::shutdown`] stops
/// it gracefully.
pub struct Relay {
    url: RelayUrl,
    endpoint: quinn::Endpoint,
    /// The transport settings, kept for certificate reloads.
    transport: Arc<quinn::TransportConfig>,
    local_addr: SocketAddr,
    /// The TLS-over-TCP listener's address, if it listens.
    tcp_addr: Option<SocketAddr>,
    /// The TLS settings new TCP connections get.
    tcp_tls: TlsSettings,
    tcp_task: Option<tokio::task::JoinHandle<()>>,
    /// The WebTransport endpoint's short-lived certificates, when browsers accept
    /// the relay by hash, and the task that rotates them.
    short_lived: Option<SharedShortLived>,
    rotation: Option<tokio::task::JoinHandle<()>>,
    admin_addr: Option<SocketAddr>,
    admin: Option<tokio::task::JoinHandle<()>>,
    /// Keeps the pool's view, when the relay is a member of one.
    pool_task: Option<tokio::task::JoinHandle<()>>,
    probe: Option<Probe>,
    state: Arc<RelayState>,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// The probe port's endpoint, its address and its task.
struct Probe {
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Binds the relay's endpoint and starts accepting connections on the current
    /// tokio runtime.
    pub fn spawn(mut config: RelayConfig) -> Result<Self, RelayError> {
        config.limits.validate()?;
        let transport = endpoint::quic::transport_config(&config.limits)?;
        // A relay trusted by pin (no public name) is one browsers do not trust: its
        // WebTransport endpoint presents a short-lived certificate pages accept by
        // hash. One with a public name has a CA's certificate, which they trust.
        let short_lived = match config.public_name {
            Some(_) => None,
            None => Some(Arc::new(RwLock::new(
                ShortLived::new(config.web_names(), SystemTime::now()).map_err(TlsError::from)?,
            ))),
        };
        let server_config = endpoint::quic::server_config(
            tls::server_crypto(&config.certificate, short_lived.clone())?,
            transport.clone(),
        );
        let (socket, tcp_listener) = bind_sockets(&config)?;
        let mut endpoint_config =
            quinn::EndpointConfig::new(Arc::new(config.certificate.stateless_reset_key()));
        // After a restart every peer of the old process meets a reset at its next
        // packet; quinn's default of one reset per 20 ms would take minutes to reach
        // a large fleet. A reset is always smaller than the packet that caused it, so
        // a faster pace amplifies nothing.
        endpoint_config.min_reset_interval(STATELESS_RESET_INTERVAL);
        // quinn's default connection ids carry a checksum under a key made at start,
        // and a packet whose id fails it is dropped before a reset is considered:
        // the relay's ids are plain random, so a restarted relay resets them too.
        endpoint_config.cid_generator(|| Box::new(endpoint::quic::RandomConnectionIds));
        let endpoint = quinn::Endpoint::new(
            endpoint_config.clone(),
            Some(server_config.clone()),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|error| RelayError::Bind {
            addr: config.listen,
            protocol: "UDP",
            error,
        })?;
        let local_addr = endpoint.local_addr().map_err(|error| RelayError::Bind {
            addr: config.listen,
            protocol: "UDP",
            error,
        })?;
        let url = config.url(local_addr)?;
        let probe = match config.probe_port {
            Some(port) => {
                let addr = SocketAddr::new(local_addr.ip(), port);
                let bind_error = |error| RelayError::Bind {
                    addr,
                    protocol: "UDP",
                    error,
                };
                let probe = quinn::Endpoint::new(
                    endpoint_config,
                    Some(server_config),
                    bind_udp(addr)?,
                    Arc::new(quinn::TokioRuntime),
                )
                .map_err(bind_error)?;
                let bound = probe.local_addr().map_err(bind_error)?;
                // What `Observe` answers name: the port bound, when any would do.
                config.probe_port = Some(bound.port());
                Some((probe, bound))
            }
            None => None,
        };
        let admin_listener = match config.admin {
            Some(addr) => Some(bind_admin(addr)?),
            None => None,
        };
        let state = Arc::new(RelayState::new(config)?);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (admin_addr, admin) = match admin_listener {
            Some(listener) => {
                let addr = listener.local_addr().ok();
                let task = tokio::spawn(admin::serve_admin_requests(
                    listener,
                    state.clone(),
                    shutdown_rx.clone(),
                ));
                info!(addr = ?addr, "admin listener (metrics, health) listening");
                (addr, Some(task))
            }
            None => (None, None),
        };
        let tcp_tls: TlsSettings =
            Arc::new(RwLock::new(Arc::new(tcp::tls(&state.config.certificate)?)));
        let tcp_addr = tcp_listener.as_ref().and_then(|l| l.local_addr().ok());
        let web = Arc::new(WebFront::new(
            state.config.web,
            state.config.web_names(),
            short_lived.clone(),
            state.pool.clone(),
        ));
        let rotation = short_lived
            .clone()
            .map(|short_lived| tokio::spawn(rotate_short_lived(short_lived, shutdown_rx.clone())));
        let tcp_task = tcp_listener.map(|listener| {
            tokio::spawn(tcp::accept_loop(
                listener,
                tcp_tls.clone(),
                web,
                state.clone(),
                shutdown_rx.clone(),
            ))
        });
        let pool_task = state.pool.clone().map(|pool| {
            info!(member = pool.me(), "pool member");
            tokio::spawn(pool_view::keep_view(pool, endpoint.clone(), state.clone()))
        });
        let probe = probe.map(|(probe, bound)| {
            let task = tokio::spawn(probe::serve(
                probe.clone(),
                state.clone(),
                shutdown_rx.clone(),
            ));
            info!(addr = %bound, "probe port listening");
            Probe {
                endpoint: probe,
                addr: bound,
                task,
            }
        });
        let task = tokio::spawn(accept_loop(endpoint.clone(), state.clone(), shutdown_rx));
        info!(addr = %local_addr, tcp = ?tcp_addr, "relay listening");
        Ok(Self {
            url,
            endpoint,
            transport,
            local_addr,
            tcp_addr,
            tcp_tls,
            tcp_task,
            short_lived,
            rotation,
            admin_addr,
            admin,
            pool_task,
            probe,
            state,
            shutdown,
            task,
        })
    }

    /// The URL hosts and players use to reach and verify this relay.
    pub fn url(&self) -> &RelayUrl {
        &self.url
    }

    /// The UDP address the relay listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The probe port's UDP address, if the relay has one.
    pub fn probe_addr(&self) -> Option<SocketAddr> {
        self.probe.as_ref().map(|probe| probe.addr)
    }

    /// The TCP address the relay listens on for TLS over TCP, if it does.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// Serves new connections with `certificate` from now on; connections already
    /// open keep theirs and are not touched. Returns the relay's URL under the new
    /// certificate, which differs when the URL pins the certificate (no public
    /// name): hosts and players holding the old URL then no longer reach it.
    pub fn reload_certificate(
        &mut self,
        certificate: RelayCertificate,
    ) -> Result<&RelayUrl, TlsError> {
        let server_config = endpoint::quic::server_config(
            tls::server_crypto(&certificate, self.short_lived.clone())?,
            self.transport.clone(),
        );
        let certificate_for_tcp = certificate.clone();
        let mut config = self.state.config.clone();
        config.certificate = certificate;
        let url = config.url(self.local_addr)?;
        let tcp_tls = Arc::new(tcp::tls(&certificate_for_tcp)?);
        if let Some(probe) = &self.probe {
            probe
                .endpoint
                .set_server_config(Some(server_config.clone()));
        }
        self.endpoint.set_server_config(Some(server_config));
        *self.tcp_tls.write().unwrap_or_else(|p| p.into_inner()) = tcp_tls;
        if url != self.url {
            warn!(%url, "the new certificate changes the relay URL's pin");
        }
        info!("certificate reloaded for new connections");
        self.url = url;
        Ok(&self.url)
    }

    /// The TCP address of the admin listener (`/metrics`, `/healthz`, `/readyz`), if
    /// the configuration asked for one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Shows `tap` every chunk the splice forwards from now on, so a test can prove
    /// that what the relay handles is ciphertext. Test builds only (the `splice-tap`
    /// feature); a second tap is refused (returned).
    #[cfg(feature = "splice-tap")]
    pub fn install_splice_tap(
        &self,
        tap: Arc<dyn crate::flows::splice::SpliceTap>,
    ) -> Result<(), Arc<dyn crate::flows::splice::SpliceTap>> {
        self.state.splice_tap.set(tap)
    }

    /// Counters and gauges of what the relay has done so far.
    pub fn stats(&self) -> StatsSnapshot {
        self.state.snapshot()
    }

    /// Stops the relay gracefully: refuses new connections at once (`/readyz` turns
    /// 503), tells every registered host it is going away so it registers again
    /// (here after a restart, or elsewhere), lets players go as their sessions end,
    /// waits up to `timeout` for running sessions to finish, then shuts down.
    pub async fn drain(self, timeout: Duration) {
        self.state.start_draining();
        info!(
            ?timeout,
            sessions = self.state.active_sessions(),
            "draining"
        );
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let done = self.state.drain_progress.notified();
            tokio::pin!(done);
            // Registered before the check, so an end between the two is not missed.
            done.as_mut().enable();
            // Hosts hear `GoingAway` before anything closes: each registration ends
            // once its host has the message.
            let registrations = self.state.registry.len();
            if self.state.active_sessions() == 0 && registrations == 0 {
                info!("drained: no session or registration left");
                break;
            }
            tokio::select! {
                () = done => {}
                () = tokio::time::sleep_until(deadline) => {
                    warn!(
                        sessions = self.state.active_sessions(),
                        "drain timeout: closing running sessions"
                    );
                    break;
                }
            }
        }
        self.shutdown().await;
    }

    /// A handle that can close every connection at once, for a stop that cannot wait
    /// for [`Relay::drain`] (a second signal): taken before the drain, which owns the
    /// relay.
    pub fn closer(&self) -> RelayCloser {
        RelayCloser(self.endpoint.clone())
    }

    /// Tells every connection the relay is going away, waits briefly for them to
    /// close, and stops.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        let stopped = async {
            let _ = (&mut self.task).await;
            if let Some(tcp) = &mut self.tcp_task {
                let _ = tcp.await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(5), stopped)
            .await
            .is_err()
        {
            warn!("relay did not stop within 5 s; aborting its tasks");
        }
        // Dropping `self` aborts whatever is left.
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Every task of the relay is owned by this one: aborting it drops the endpoint
        // and the JoinSet of connection tasks, which aborts them in turn.
        self.task.abort();
        if let Some(tcp) = &self.tcp_task {
            tcp.abort();
        }
        if let Some(admin) = &self.admin {
            admin.abort();
        }
        if let Some(pool) = &self.pool_task {
            pool.abort();
        }
        if let Some(probe) = &self.probe {
            probe.task.abort();
        }
        if let Some(rotation) = &self.rotation {
            rotation.abort();
        }
    }
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    state: Arc<RelayState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    let mut forget = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                if state.is_draining() {
                    stats::Stats::bump(&state.stats.connections_refused_draining);
                    incoming.refuse();
                    continue;
                }
                // Under load, a client must first prove it can receive at its
                // address (QUIC Retry): a Retry keeps no state on the relay, and a
                // flood from spoofed addresses never gets past it.
                let validate = state.config.limits.connections.retry_threshold;
                if !incoming.remote_address_validated()
                    && state.admission.handshakes_in_flight(Door::Quic) >= validate
                    && incoming.may_retry()
                {
                    stats::Stats::bump(&state.stats.connections_retried);
                    let _ = incoming.retry();
                    continue;
                }
                match state.admission.admit_connection(incoming.remote_address(), Door::Quic) {
                    Ok(permit) => {
                        connections.spawn(listen::quic::handle(incoming, permit, state.clone()));
                    }
                    Err(refusal) => {
                        state.stats.connection_refused(refusal);
                        debug!(peer = %privacy::redact(incoming.remote_address()), ?refusal, "connection refused");
                        if refusal == admission::Refusal::TooManyHandshakes {
                            // Dropped unanswered: an answer to a flood of Initials
                            // would be reflected at whoever's address they carry.
                            incoming.ignore();
                        } else {
                            // Refused before the TLS handshake: a flood costs the
                            // relay no crypto. The client sees CONNECTION_REFUSED.
                            incoming.refuse();
                        }
                    }
                }
            }
            _ = forget.tick() => state.admission.forget_idle_addresses(),
            Some(result) = connections.join_next(), if !connections.is_empty() => {
                if let Err(err) = result {
                    if err.is_panic() {
                        warn!("a connection task panicked; other connections are unaffected");
                    }
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    debug!("relay closing all connections");
    endpoint.close(codes::close::RELAY_SHUTDOWN.into(), b"relay shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(3), endpoint.wait_idle()).await;
    connections.shutdown().await;
    info!("relay stopped");
}

/// Rotates the WebTransport certificates until shutdown (see
/// [`crate::endpoint::short_lived`]); the TLS resolver and `webtransport.json` read
/// the same store, so both change together.
async fn rotate_short_lived(short_lived: SharedShortLived, mut shutdown: watch::Receiver<bool>) {
    let mut check = tokio::time::interval(short_lived::CHECK_EVERY);
    loop {
        tokio::select! {
            _ = check.tick() => {
                let mut certs = short_lived.write().unwrap_or_else(|p| p.into_inner());
                match certs.rotate(SystemTime::now()) {
                    Ok(true) => info!("WebTransport certificate rotated"),
                    Ok(false) => {}
                    Err(err) => warn!(%err, "cannot make the next WebTransport certificate"),
                }
            }
            _ = shutdown.changed() => break,
        }
    }
}

/// Closes a relay's connections at once (see [`Relay::closer`]).
pub struct RelayCloser(quinn::Endpoint);

impl RelayCloser {
    /// Closes every connection with `RELAY_SHUTDOWN` and waits up to a second for the
    /// closes to be sent: a process that exits without them leaves every host and
    /// player waiting for its idle timeout.
    pub async fn close_now(self) {
        self.0
            .close(codes::close::RELAY_SHUTDOWN.into(), b"relay stopping now");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.0.wait_idle()).await;
    }
}

/// What to do when a port is taken: the TCP listener shares the QUIC port's number
/// by default, and another program (a web server, say) may hold it for TCP only.
fn bind_hint(protocol: &str, error: &std::io::Error) -> &'static str {
    match (protocol, error.kind()) {
        ("TCP", std::io::ErrorKind::AddrInUse) => {
            "; another program holds that TCP port: give the TCP listener another \
             one (--listen-tcp ADDR) or turn it off (--listen-tcp off)"
        }
        ("UDP", std::io::ErrorKind::AddrInUse) => {
            "; another program (another relay?) holds that UDP port: give --listen \
             another address"
        }
        _ => "",
    }
}

/// Binds the admin listener's TCP socket.
fn bind_admin(addr: SocketAddr) -> Result<tokio::net::TcpListener, RelayError> {
    let admin_error = |source| RelayError::Admin { addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(admin_error)?;
    listener.set_nonblocking(true).map_err(admin_error)?;
    tokio::net::TcpListener::from_std(listener).map_err(admin_error)
}

/// Binds the UDP socket and, unless the configuration turns it off, the TCP
/// listener. On the default (the same port number for both) with port 0, a free UDP
/// port whose number is also free for TCP is searched for.
fn bind_sockets(
    config: &RelayConfig,
) -> Result<(std::net::UdpSocket, Option<tokio::net::TcpListener>), RelayError> {
    let tcp_addr = match config.tcp {
        TcpListen::Off => return Ok((bind_udp(config.listen)?, None)),
        TcpListen::At(addr) => {
            let udp = bind_udp(config.listen)?;
            return Ok((udp, Some(bind_tcp(addr)?)));
        }
        TcpListen::SamePort => config.listen,
    };
    let mut attempts = 0;
    loop {
        let udp = bind_udp(config.listen)?;
        let port = udp
            .local_addr()
            .map_err(|error| RelayError::Bind {
                addr: config.listen,
                protocol: "UDP",
                error,
            })?
            .port();
        match bind_tcp(SocketAddr::new(tcp_addr.ip(), port)) {
            Ok(tcp) => return Ok((udp, Some(tcp))),
            // Another process holds that TCP port: try another free UDP port, when
            // any port will do.
            Err(_) if config.listen.port() == 0 && attempts < 20 => attempts += 1,
            Err(err) => return Err(err),
        }
    }
}

/// Binds the TLS-over-TCP listener.
fn bind_tcp(addr: SocketAddr) -> Result<tokio::net::TcpListener, RelayError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let bind_error = |error| RelayError::Bind {
        addr,
        protocol: "TCP",
        error,
    };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(bind_error)?;
    if addr.is_ipv6() {
        let _ = socket.set_only_v6(false);
    }
    // A restarted relay binds again at once, whatever its old connections' state.
    socket.set_reuse_address(true).map_err(bind_error)?;
    socket.set_nonblocking(true).map_err(bind_error)?;
    socket.bind(&addr.into()).map_err(bind_error)?;
    socket.listen(TCP_BACKLOG).map_err(bind_error)?;
    tokio::net::TcpListener::from_std(socket.into()).map_err(bind_error)
}

/// Connections the kernel may hold for the relay to accept: enough for a burst of
/// hosts coming back after a restart.
const TCP_BACKLOG: i32 = 1024;

/// Binds the UDP socket with large kernel buffers: QUIC at Gbit/s loses packets to
/// the default ~208 KiB receive buffer, and every loss costs a congestion back-off.
fn bind_udp(addr: SocketAddr) -> Result<std::net::UdpSocket, RelayError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let bind_error = |error| RelayError::Bind {
        addr,
        protocol: "UDP",
        error,
    };
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(bind_error)?;
    if addr.is_ipv6() {
        // Accept IPv4-mapped addresses too when bound to [::].
        let _ = socket.set_only_v6(false);
    }
    // Best effort: the kernel caps these at net.core.{r,w}mem_max.
    let _ = socket.set_recv_buffer_size(UDP_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(UDP_BUFFER_BYTES);
    socket.bind(&addr.into()).map_err(bind_error)?;
    Ok(socket.into())
}

const UDP_BUFFER_BYTES: usize = 8 << 20;

/// The least time between two stateless resets.
const STATELESS_RESET_INTERVAL: Duration = Duration::from_micros(100);
