//! The admin listener: Prometheus metrics and health probes over plain HTTP/1.1, for
//! operators only. Bind it to loopback or a private network; it serves nothing but
//! aggregates.
//!
//! - `GET /metrics`: the counters (see [`crate::ops::metrics`]).
//! - `GET /healthz`: 200 while the process runs.
//! - `GET /readyz`: 200 while the relay accepts new connections, 503 while draining.
//!
//! Each request gets one response and the connection is closed. A liveness probe
//! that goes unanswered gets the relay restarted, ending every session on it, so
//! nobody who can open TCP connections to this port may keep probes waiting:
//!
//! - requests are served by hyper, and a client has [`DEADLINE`] from its accept to
//!   send its request head and take the answer; probes and scrapers send the head
//!   at once;
//! - the listener never stops accepting, and holds at most [`CAPS`]: at most
//!   `per_address` connections from one address, `max` in all. A connection beyond
//!   a cap ends an older one of its own address, or of the address that holds the
//!   most ([`blindrelay_transport::listener`]), so a flood of idle connections
//!   displaces its own connections and not a probe from another address (kubelet
//!   probes from its node).
//!
//! Every connection dropped unanswered (displaced or past its deadline) is counted.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use blindrelay_transport::listener::{self, Caps};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::debug;

use crate::ops::metrics;
use crate::ops::stats::Stats;
use crate::state::RelayState;

/// Largest request head read (hyper's smallest buffer limit).
const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has, from its accept, to send its request and read the answer:
/// what kubelet and Prometheus need is milliseconds on a cluster network, and a
/// probe's own timeout (see the Kubernetes manifest) is longer than this.
const DEADLINE: Duration = Duration::from_secs(1);
/// Admin connections held at once, in all and from one address.
const CAPS: Caps = Caps {
    max: 256,
    per_address: 16,
};

/// Answers admin requests (`/metrics`, `/healthz`, `/readyz`) until `shutdown` turns
/// true.
pub(crate) async fn serve_admin_requests(
    listener: TcpListener,
    state: Arc<RelayState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let stop = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    let stats = state.clone();
    listener::serve_within(
        listener,
        CAPS,
        stop,
        |stream, _| answer(stream, state.clone()),
        || Stats::bump(&stats.stats.admin_connections_dropped),
    )
    .await;
}

/// Serves one connection: one request, its answer, within [`DEADLINE`].
async fn answer(stream: TcpStream, state: Arc<RelayState>) {
    let service_state = state.clone();
    let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
        let response = respond(request.method(), request.uri().path(), &service_state);
        async move { Ok::<_, Infallible>(response) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(DEADLINE)
        .keep_alive(false)
        .max_buf_size(MAX_REQUEST)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    match tokio::time::timeout(DEADLINE, connection).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            debug!(%err, "admin request failed");
            if err.is_timeout() {
                Stats::bump(&state.stats.admin_connections_dropped);
            }
        }
        Err(_) => Stats::bump(&state.stats.admin_connections_dropped),
    }
}

fn respond(method: &Method, path: &str, state: &RelayState) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".to_owned(),
        );
    }
    let ready = !state.is_draining();
    match path {
        "/metrics" => text(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics::render(&state.snapshot(), ready),
        ),
        "/healthz" => text(StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/readyz" if ready => text(StatusCode::OK, "text/plain", "ready\n".to_owned()),
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "draining\n".to_owned(),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    }
}

/// An answer with `body`, never cached, after which the connection closes.
fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    headers.insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    response
}
