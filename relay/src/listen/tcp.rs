//! The relay over TCP: TLS 1.3 with ALPN `blindrelay/1`, for hosts and players on
//! networks that block or break UDP; and, chosen by the ALPN `http/1.1`, HTTPS
//! ([`crate::listen::web`]): a WebSocket at [`websocket::PATH`] over the same TLS, for
//! networks that pass only HTTPS and for browsers, and the web player's files.
//!
//! A TCP connection carries one stream, framed as `blindrelay_transport` does it,
//! and that stream is what a QUIC stream would be: its first message routes it to a
//! registration (`Register`), a player's session (`Connect`), or a host's side of
//! a session it was told to dial (`Accept`, see [`crate::state::dials`]). From there the
//! registration, the session and the splice are the QUIC ones.
//!
//! Admission is the QUIC one too: per-address rate and count and a cap on
//! handshakes in progress before the TLS handshake (a refused connection costs no
//! crypto), the connection cap once it completes, and a deadline on each step: the
//! ClientHello, the TLS handshake, the first message, and every read and write after
//! that. The handshakes in progress are this door's own (`max_tcp_handshakes`, and
//! `tcp_handshakes_per_ip` per address), apart from QUIC's: silent sockets cannot
//! lock QUIC clients out, nor a QUIC flood TCP ones.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use blindrelay_protocol::registration::{EXPORTER_LABEL, EXPORTER_LEN};
use blindrelay_protocol::{codes, ALPN};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info_span, warn, Instrument};

use crate::endpoint::tls::{self, RelayCertificate, TlsError};
use crate::listen::web::WebFront;
use crate::ops::privacy::redact;
use crate::ops::stats::Stats;
use crate::policy::admission::{ConnectionPermit, Door, Place};
use crate::route::{self, Arrival};
use crate::state::RelayState;
use crate::stream::halves::{StreamRecv, StreamSend};
use crate::stream::link::{FramedLink, Link, TransportKind};
use crate::stream::routed::RoutedStream;
use blindrelay_transport::websocket;

/// The TLS settings new TCP connections get; replaced when the certificate is.
pub(crate) type TlsSettings = Arc<RwLock<Arc<rustls::ServerConfig>>>;

/// How much a framed connection queues towards its peer before writes wait. The
/// splice forwards one chunk at a time; this lets a few be on their way to the
/// kernel while the next is read.
const SEND_BUFFER: usize = 64 * 1024;

/// How much a framed connection reads ahead of the splice: what QUIC's stream window
/// is to a QUIC connection (the relay's memory per TCP connection is this, the send
/// buffer and the kernel's socket buffers).
const RECV_BUFFER: usize = 64 * 1024;

/// How much longer than the stall timeout a framed connection's writes may wait.
const WRITE_TIMEOUT_MARGIN: Duration = Duration::from_secs(60);

/// Accepts TCP connections until `shutdown`, serving each in its own task.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    tls: TlsSettings,
    web: Arc<WebFront>,
    state: Arc<RelayState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (socket, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Out of file descriptors, mostly: back off instead of spinning.
                        warn!(%err, "cannot accept a TCP connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if state.is_draining() {
                    Stats::bump(&state.stats.connections_refused_draining);
                    continue;
                }
                match state.admission.admit_connection(peer, Door::Tcp) {
                    Ok(permit) => {
                        let tls = tls.read().unwrap_or_else(|p| p.into_inner()).clone();
                        let shutdown = shutdown.clone();
                        connections.spawn(handle(socket, peer, tls, web.clone(), permit, state.clone(), shutdown));
                    }
                    Err(refusal) => {
                        // Closed before the TLS handshake: a flood costs no crypto.
                        state.stats.connection_refused(refusal);
                        state.admission.refused_at_the_door(peer);
                        debug!(peer = %redact(peer), ?refusal, "TCP connection refused");
                    }
                }
            }
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
    // Each connection task closes its connection with RELAY_SHUTDOWN when it sees
    // the shutdown; give them a moment, then drop what is left.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.shutdown().await;
}

/// Serves one TCP connection: the TLS handshake, then its one stream.
///
/// A plain function returning the future: the connection's task is sized for this
/// future's largest state for the connection's life (hours, for an idle host). So
/// the handshake (TLS, and a WebSocket's HTTP request) runs in a box of its own,
/// freed when it ends, and the permit is behind its `Arc` before the task starts.
pub(super) fn handle(
    socket: TcpStream,
    peer: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    web: Arc<WebFront>,
    permit: ConnectionPermit,
    state: Arc<RelayState>,
    mut shutdown: watch::Receiver<bool>,
) -> impl std::future::Future<Output = ()> {
    let span = info_span!("conn", peer = %redact(peer), transport = tracing::field::Empty);
    let started = tokio::time::Instant::now();
    let handshake = Box::pin(handshake(socket, tls, web, state.clone(), started));
    let permit = Arc::new(permit);
    async move {
        let Some(Handshaken {
            framing,
            kind,
            exporter,
        }) = handshake.await
        else {
            return;
        };
        tracing::Span::current().record("transport", kind.name());
        state.stats.handshake.record(started.elapsed());
        Stats::bump(&state.stats.connections_accepted);
        Stats::bump(match kind {
            TransportKind::WebSocket => &state.stats.connections_accepted_ws,
            _ => &state.stats.connections_accepted_tcp,
        });
        let place = permit.establish();
        let limits = &state.config.limits;
        let idle = limits.connections.idle_timeout.0;
        let config = blindrelay_transport::Config {
            idle_timeout: idle,
            // Hosts and players ping a silent relay; the relay pings a peer that has
            // been silent a third of its idle timeout (one that only receives, say),
            // so that a peer which is there is never cut as idle.
            keep_alive: Some(idle / 3).filter(|every| !every.is_zero()),
            send_buffer: SEND_BUFFER,
            recv_buffer: RECV_BUFFER,
            // A backstop only: a session's stalls are the splice's to end, with
            // STALLED, and every control message has its own deadline.
            write_timeout: limits
                .sessions
                .stall_timeout
                .0
                .max(limits.connections.idle_timeout.0)
                + WRITE_TIMEOUT_MARGIN,
        };
        let (send, recv, connection) = match framing {
            Framing::Tls(stream) => blindrelay_transport::framed(*stream, config),
            Framing::WebSocket(ws) => blindrelay_transport::framed(*ws, config),
        };
        if place == Place::Full {
            Stats::bump(&state.stats.connections_at_capacity);
            connection.close(
                codes::close::AT_CAPACITY,
                "relay at capacity: try again later",
            );
            return;
        }
        let link = Arc::new(FramedLink {
            connection: connection.clone(),
            remote: peer,
            exporter,
            kind,
        });
        let stream = RoutedStream {
            send: StreamSend::Framed(send),
            recv: StreamRecv::Framed(recv),
            link: Link::Framed(link),
            permit,
            window: None,
            probation: Arc::new(AtomicBool::new(place == Place::Probation)),
            is_host: Arc::new(AtomicBool::new(false)),
        };
        let serve = route::serve(stream, Arrival::Framed, state.clone());
        tokio::select! {
            () = serve => {}
            _ = shutdown.wait_for(|stop| *stop) => {
                connection.close(codes::close::RELAY_SHUTDOWN, "relay shutting down");
            }
        }
    }
    .instrument(span)
}

/// A TCP connection once its handshake is over.
struct Handshaken {
    framing: Framing,
    kind: TransportKind,
    /// The TLS exporter a registration's proof is bound to.
    exporter: [u8; EXPORTER_LEN],
}

/// The TLS handshake (the ClientHello within `hello_timeout`, all of it within
/// `handshake_timeout` from `started`), and for WebSocket the HTTP request within
/// what is left of it; `None` when the connection ends there.
async fn handshake(
    socket: TcpStream,
    tls: Arc<rustls::ServerConfig>,
    web: Arc<WebFront>,
    state: Arc<RelayState>,
    started: tokio::time::Instant,
) -> Option<Handshaken> {
    let _ = socket.set_nodelay(true);
    let limits = &state.config.limits.connections;
    // The ClientHello first, within its own short deadline: a socket that says
    // nothing (or half a hello) holds its handshake place for that long only.
    let hello = rustls::server::Acceptor::default();
    let hello = tokio_rustls::LazyConfigAcceptor::new(hello, socket);
    let handshake = async {
        let start = match tokio::time::timeout(limits.hello_timeout.0, hello).await {
            Ok(start) => start?,
            Err(_) => return Ok(None),
        };
        start.into_stream(tls).await.map(Some)
    };
    let stream = match tokio::time::timeout(limits.handshake_timeout.0, handshake).await {
        Ok(Ok(Some(stream))) => stream,
        Ok(Ok(None)) | Err(_) => {
            Stats::bump(&state.stats.connections_handshake_timed_out);
            debug!("TLS handshake timed out");
            return None;
        }
        Ok(Err(err)) => {
            debug!(%err, "TLS handshake failed");
            return None;
        }
    };
    let (_, tls_state) = stream.get_ref();
    if tls_state.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
        Stats::bump(&state.stats.tls_handshakes_resumed);
    }
    let kind = match tls_state.alpn_protocol() {
        Some(ALPN) => TransportKind::Tcp,
        Some(websocket::HTTP_ALPN) => TransportKind::WebSocket,
        // rustls refuses a client that offers other protocols only; one that offers
        // none gets here.
        _ => {
            debug!("TLS client offered no ALPN the relay speaks");
            return None;
        }
    };
    let mut exporter = [0u8; EXPORTER_LEN];
    tls_state
        .export_keying_material(&mut exporter, EXPORTER_LABEL, Some(b""))
        .ok()?;
    let framing = if kind == TransportKind::WebSocket {
        // The request is part of the handshake: its head, however slowly it trickles
        // in, gets what is left of the handshake deadline (and at most a few
        // seconds). A request for anything but the relay's WebSocket is answered
        // there, and the connection ends with it.
        let left = limits.handshake_timeout.0.saturating_sub(started.elapsed());
        let head_timeout = left.min(crate::listen::web::HEAD_TIMEOUT);
        let ws = crate::listen::web::serve(stream, &web, head_timeout, &state.stats).await?;
        Framing::WebSocket(Box::new(websocket::WsBytes::new(ws)))
    } else {
        Framing::Tls(Box::new(stream))
    };
    Some(Handshaken {
        framing,
        kind,
        exporter,
    })
}

/// The TLS settings of the TCP listener: `blindrelay/1`, and `http/1.1` for
/// WebSocket.
pub(crate) fn tls(certificate: &RelayCertificate) -> Result<rustls::ServerConfig, TlsError> {
    tls::server_tls(certificate, &[ALPN, websocket::HTTP_ALPN])
}

/// What frames a TCP connection's stream: TLS itself, or a WebSocket inside it.
enum Framing {
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    WebSocket(Box<websocket::WsBytes<tokio_rustls::server::TlsStream<TcpStream>>>),
}
