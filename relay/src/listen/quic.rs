//! One QUIC connection to the relay: accepts its streams and hands each to the
//! [router](crate::route).
//!
//! Any connection may open session streams (`Connect`); the first stream that sends
//! `Register` makes it a host connection too. Each stream is served by its own task,
//! owned by this connection's `JoinSet`, so nothing outlives the connection.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use blindrelay_protocol::codes;
use tokio::task::JoinSet;
use tracing::{debug, info_span, Instrument};

use crate::listen::webtransport;
use crate::ops::privacy::redact;
use crate::ops::stats::Stats;
use crate::policy::admission::{ConnectionPermit, Place};
use crate::route::{self, Arrival};
use crate::state::RelayState;
use crate::stream::halves::{StreamRecv, StreamSend};
use crate::stream::link::Link;
use crate::stream::routed::RoutedStream;
use crate::stream::window::ReceiveWindow;

/// Serves one connection until it closes. `permit` holds the connection's place in
/// the relay's counts for as long as it lives.
///
/// A plain function returning the future, not an `async fn`: every connection's
/// task is sized for this future's largest state and keeps that size for the
/// connection's life, and an idle host's connection lives for hours. So what only
/// the handshake needs (the `Incoming`, its timer) is boxed here and freed when the
/// handshake ends, the permit is moved behind its `Arc` before the task starts, and
/// a browser's larger WebTransport future gets a box of its own: what stays inline
/// is the wait of [`serve_connection`].
pub(crate) fn handle(
    incoming: quinn::Incoming,
    permit: ConnectionPermit,
    state: Arc<RelayState>,
) -> impl std::future::Future<Output = ()> {
    let span = info_span!("conn", peer = %redact(incoming.remote_address()));
    let started = tokio::time::Instant::now();
    let handshake_timeout = state.config.limits.connections.handshake_timeout.0;
    let handshake = Box::pin(tokio::time::timeout(handshake_timeout, incoming));
    let permit = Arc::new(permit);
    async move {
        let connection = match handshake.await {
            Ok(Ok(connection)) => connection,
            Ok(Err(err)) => {
                debug!(%err, "handshake failed");
                return;
            }
            Err(_) => {
                // Dropping the handshake abandons the connection.
                Stats::bump(&state.stats.connections_handshake_timed_out);
                debug!("handshake timed out");
                return;
            }
        };
        state.stats.handshake.record(started.elapsed());
        Stats::bump(&state.stats.connections_accepted);
        // Only now does the connection count against `connections.max`.
        let place = permit.establish();
        let on_probation = place == Place::Probation;
        if place == Place::Full {
            Stats::bump(&state.stats.connections_at_capacity);
            connection.close(
                codes::close::AT_CAPACITY.into(),
                b"relay at capacity: try again later",
            );
            return;
        }
        debug!(on_probation, "connected");
        if webtransport::is_h3(&connection) {
            // A browser: its WebTransport handshake gets what is left of the
            // handshake deadline.
            let left = handshake_timeout.saturating_sub(started.elapsed());
            let browser = webtransport::serve(connection, permit, on_probation, left, state);
            return Box::pin(browser).await;
        }
        serve_connection(connection, permit, on_probation, state).await;
    }
    .instrument(span)
}

/// Serves an established connection. One `on_probation` came in beyond
/// `connections.max`: it may stay only to register (and so shed an idle
/// registration), within `first_message_timeout`; its sessions are refused.
async fn serve_connection(
    connection: quinn::Connection,
    permit: Arc<ConnectionPermit>,
    on_probation: bool,
    state: Arc<RelayState>,
) {
    let probation = Arc::new(AtomicBool::new(on_probation));
    let mut streams = JoinSet::new();
    let mut had_stream = false;
    let window = ReceiveWindow::new(connection.clone(), &state.config.limits);
    // Set by a successful registration. A host's sessions run on streams the relay
    // opened, which `streams` does not hold, so a host connection is never closed
    // for having no streams of its own.
    let is_host = Arc::new(AtomicBool::new(false));
    // A connection with no stream at all (no registration, no session) is closed
    // after this long: otherwise idle connections would hold places for free.
    let idle_limit = Some(state.config.limits.connections.unregistered_idle_timeout.0)
        .filter(|limit| !limit.is_zero());
    let idle = tokio::time::sleep(idle_limit.unwrap_or_default());
    tokio::pin!(idle);
    // Only a connection beyond the cap has a probation to end: a timer in every
    // connection's task would cost every idle host its size.
    let first_message = state.config.limits.connections.first_message_timeout.0;
    let mut probation_ends = on_probation.then(|| Box::pin(tokio::time::sleep(first_message)));
    let draining = state.draining();
    tokio::pin!(draining);
    let mut drained = false;
    // Unidirectional streams are for browsers' HTTP/3 only (see `transport`): none
    // beyond those the transport parameters allowed, and those are stopped unread.
    connection.set_max_concurrent_uni_streams(0u32.into());
    loop {
        let idle_player = streams.is_empty() && !is_host.load(Ordering::Acquire);
        if drained && idle_player {
            // A draining relay lets players go as soon as their sessions end, so
            // they reconnect (to its successor) at their next session.
            connection.close(codes::close::RELAY_SHUTDOWN.into(), b"relay going away");
            break;
        }
        tokio::select! {
            () = &mut draining, if !drained => drained = true,
            () = async { if let Some(ends) = probation_ends.as_mut() { ends.await } },
                if probation_ends.is_some() && probation.load(Ordering::Acquire) => {
                Stats::bump(&state.stats.connections_at_capacity);
                debug!("closing a connection beyond the cap that did not register in time");
                connection.close(
                    codes::close::AT_CAPACITY.into(),
                    b"relay at capacity: try again later",
                );
                break;
            }
            () = &mut idle, if idle_limit.is_some() && idle_player => {
                Stats::bump(&state.stats.connections_idle_closed);
                debug!("closing a connection with neither registration nor session");
                connection.close(
                    codes::close::IDLE.into(),
                    b"no registration and no session: idle connection closed",
                );
                break;
            }
            Ok(mut stray) = connection.accept_uni() => {
                let _ = stray.stop(codes::stream::PROTOCOL_VIOLATION.into());
            }
            accepted = connection.accept_bi() => {
                let (send, recv) = match accepted {
                    Ok(stream) => stream,
                    Err(err) => {
                        debug!(reason = %err, "connection closed");
                        break;
                    }
                };
                // Reading the first message happens inside the stream's task, so a
                // slow stream never holds up the next one.
                let stream = RoutedStream {
                    send: StreamSend::Quic(send),
                    recv: StreamRecv::Quic(recv),
                    link: Link::Quic(connection.clone()),
                    permit: permit.clone(),
                    window: Some(window.clone()),
                    probation: probation.clone(),
                    is_host: is_host.clone(),
                };
                let arrival = Arrival::Quic { first_stream: !had_stream };
                streams.spawn(route::serve(stream, arrival, state.clone()));
                // Only the first stream may register; later `Register`s are refused
                // even if the first stream turned out to be a session.
                had_stream = true;
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
