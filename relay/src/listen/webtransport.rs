//! WebTransport over HTTP/3 on the relay's QUIC endpoint: how browsers' players
//! come in where they can use UDP.
//!
//! A QUIC connection whose client chose the ALPN `h3` (instead of `blindrelay/1`)
//! is a browser's: the relay exchanges HTTP/3 settings, reads the extended CONNECT
//! request, and accepts a WebTransport session at [`PATH`] only (another path gets
//! 404, and the connection ends). From there a WebTransport session is a player's
//! QUIC connection: each bidirectional stream the browser opens is one control
//! stream, exactly as on native QUIC (`Connect`, `Connected` or an `Error` with its
//! code, then the Noise session), with the same admission, limits, splice and
//! accounting. Only the framing differs, and only at the edges:
//!
//! - each stream starts with WebTransport's header (the frame type `0x41` and the
//!   session id), which the relay reads and checks before the first message;
//! - stream resets and stop-sendings carry the protocol's codes in HTTP/3's code
//!   space ([`crate::stream::halves`] maps them both ways), so the page reads the
//!   same numbers a native player would.
//!
//! A browser cannot register: it has no TLS exporter for the proof to bind to. A
//! `Register` on a WebTransport stream is refused.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tracing::debug;

use crate::ops::stats::Stats;
use crate::policy::admission::ConnectionPermit;
use crate::route::{self, Arrival};
use crate::state::RelayState;
use crate::stream::halves::{StreamRecv, StreamSend};
use crate::stream::link::Link;
use crate::stream::routed::RoutedStream;
use crate::stream::window::ReceiveWindow;

/// The path of the relay's WebTransport endpoint (the WebSocket's too).
pub(crate) const PATH: &str = "/blindrelay/1";

/// WebTransport's frame type at the start of a bidirectional stream.
const WEBTRANSPORT_STREAM: u64 = 0x41;

/// The session id every stream of the connection's one session names: the id of
/// the stream that carried the CONNECT request, which is the first bidirectional
/// stream the client opened (quinn hands streams over in order), stream 0.
const SESSION_ID: u64 = 0;

/// How long the relay lets a refused CONNECT's answer reach the browser before it
/// closes the connection.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// How long the relay waits for the `200` that opens a session to be written.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether `connection`'s client chose HTTP/3.
pub(crate) fn is_h3(connection: &quinn::Connection) -> bool {
    connection
        .handshake_data()
        .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|data| data.protocol)
        .is_some_and(|alpn| alpn == crate::endpoint::tls::H3_ALPN)
}

/// Serves a browser's connection until it closes: the WebTransport handshake
/// (within `handshake_left`), then its streams. A connection `on_probation` (beyond
/// `connections.max`) may only register, which a browser cannot: it is refused.
pub(crate) async fn serve(
    connection: quinn::Connection,
    permit: Arc<ConnectionPermit>,
    on_probation: bool,
    handshake_left: Duration,
    state: Arc<RelayState>,
) {
    let request = match tokio::time::timeout(
        handshake_left,
        web_transport_quinn::Request::accept(connection.clone()),
    )
    .await
    {
        Ok(Ok(request)) => request,
        Ok(Err(err)) => {
            debug!(%err, "WebTransport handshake failed");
            return;
        }
        Err(_) => {
            Stats::bump(&state.stats.connections_handshake_timed_out);
            debug!("WebTransport handshake timed out");
            return;
        }
    };
    let refusal = if request.url.path() != PATH {
        Some(web_transport_quinn::http::StatusCode::NOT_FOUND)
    } else if on_probation {
        Stats::bump(&state.stats.connections_at_capacity);
        Some(web_transport_quinn::http::StatusCode::SERVICE_UNAVAILABLE)
    } else {
        None
    };
    // The answers are small, but a peer that grants no flow-control credit could
    // hold them (and this task) forever: each has a deadline.
    if let Some(status) = refusal {
        debug!(%status, "WebTransport session refused");
        let rejected = tokio::time::timeout(REFUSAL_LINGER, request.reject(status)).await;
        if matches!(rejected, Ok(Ok(()))) {
            let _ = tokio::time::timeout(REFUSAL_LINGER, connection.closed()).await;
        }
        connection.close(0u32.into(), b"");
        return;
    }
    let session = match tokio::time::timeout(ANSWER_TIMEOUT, request.ok()).await {
        Ok(Ok(session)) => session,
        Ok(Err(err)) => {
            debug!(%err, "WebTransport session not accepted");
            return;
        }
        Err(_) => {
            debug!("WebTransport session's answer not taken in time");
            return;
        }
    };
    Stats::bump(&state.stats.connections_accepted_wt);
    // Shared by every stream's link; large, so behind one pointer.
    serve_session(connection, Arc::new(session), permit, state).await;
}

/// Serves an accepted session's streams, each in its own task owned here.
async fn serve_session(
    connection: quinn::Connection,
    session: Arc<web_transport_quinn::Session>,
    permit: Arc<ConnectionPermit>,
    state: Arc<RelayState>,
) {
    let window = ReceiveWindow::new(connection.clone(), &state.config.limits);
    let mut streams = JoinSet::new();
    let mut had_session = false;
    let draining = state.draining();
    tokio::pin!(draining);
    let mut drained = false;
    // A session with no stream open is closed after this long, as a QUIC
    // connection with neither registration nor session: an idle session would hold
    // a place in the connection counts for free.
    let idle_limit = Some(state.config.limits.connections.unregistered_idle_timeout.0)
        .filter(|limit| !limit.is_zero());
    let idle = tokio::time::sleep(idle_limit.unwrap_or_default());
    tokio::pin!(idle);
    loop {
        if drained && streams.is_empty() {
            // As for QUIC players: gone as soon as their sessions end.
            session.close(
                blindrelay_protocol::codes::close::RELAY_SHUTDOWN.to_u32(),
                b"relay going away",
            );
            break;
        }
        tokio::select! {
            () = &mut draining, if !drained => drained = true,
            () = &mut idle, if idle_limit.is_some() && streams.is_empty() => {
                Stats::bump(&state.stats.connections_idle_closed);
                debug!("closing a WebTransport session without streams");
                session.close(
                    blindrelay_protocol::codes::close::IDLE.to_u32(),
                    b"no session: idle connection closed",
                );
                break;
            }
            accepted = connection.accept_bi() => {
                let Ok((send, recv)) = accepted else { break };
                if !had_session {
                    // A browser's streams are all sessions: the full stream count
                    // from its first one on, as for a QUIC player's first Connect.
                    let max = state.config.limits.connections.max_streams;
                    connection.set_max_concurrent_bi_streams(max.into());
                    had_session = true;
                }
                streams.spawn(serve_stream(
                    send,
                    recv,
                    session.clone(),
                    permit.clone(),
                    window.clone(),
                    state.clone(),
                ));
            }
            Some(_) = streams.join_next(), if !streams.is_empty() => {
                if let (true, Some(limit)) = (streams.is_empty(), idle_limit) {
                    idle.as_mut().reset(tokio::time::Instant::now() + limit);
                }
            }
        }
    }
    streams.shutdown().await;
}

/// One stream of a browser's session: its WebTransport header, then a control
/// stream as on QUIC.
async fn serve_stream(
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    session: Arc<web_transport_quinn::Session>,
    permit: Arc<ConnectionPermit>,
    window: Arc<ReceiveWindow>,
    state: Arc<RelayState>,
) {
    let first_message_timeout = state.config.limits.connections.first_message_timeout.0;
    let header = tokio::time::timeout(first_message_timeout, read_header(&mut recv)).await;
    if !matches!(header, Ok(Some(true))) {
        // Not a stream of this session (or not in time): HTTP/3 says to reset it
        // (H3_STREAM_CREATION_ERROR), as nothing of it is ours to read.
        Stats::bump(&state.stats.bad_requests);
        let mut send = send;
        let _ = recv.stop(H3_STREAM_CREATION_ERROR.into());
        let _ = send.reset(H3_STREAM_CREATION_ERROR.into());
        return;
    }
    let stream = RoutedStream {
        send: StreamSend::WebTransport(send),
        recv: StreamRecv::WebTransport(recv),
        link: Link::WebTransport(session),
        permit,
        window: Some(window),
        probation: Arc::new(AtomicBool::new(false)),
        is_host: Arc::new(AtomicBool::new(false)),
    };
    route::serve(stream, Arrival::WebTransport, state).await;
}

/// HTTP/3's code for a stream that should not have been opened (RFC 9114 8.1).
const H3_STREAM_CREATION_ERROR: u32 = 0x0103;

/// Reads the WebTransport stream header: `Some(true)` when it names this
/// connection's session, `Some(false)` when it is another frame or session, `None`
/// when the stream ends first.
async fn read_header(recv: &mut quinn::RecvStream) -> Option<bool> {
    let kind = read_varint(recv).await?;
    if kind != WEBTRANSPORT_STREAM {
        return Some(false);
    }
    Some(read_varint(recv).await? == SESSION_ID)
}

/// A QUIC variable-length integer (RFC 9000 16): its first two bits give its
/// length.
async fn read_varint(recv: &mut quinn::RecvStream) -> Option<u64> {
    let mut first = [0u8; 1];
    recv.read_exact(&mut first).await.ok()?;
    let len = 1usize << (first[0] >> 6);
    let mut bytes = [0u8; 8];
    bytes[8 - len] = first[0] & 0x3f;
    recv.read_exact(&mut bytes[9 - len..]).await.ok()?;
    Some(u64::from_be_bytes(bytes))
}
