//! The admin listener: Prometheus metrics and health probes over plain HTTP/1.1, for
//! operators only. Bind it to loopback or a private network; it serves nothing but
//! aggregates.
//!
//! - `GET /metrics`: the counters (see [`crate::metrics`]).
//! - `GET /healthz`: 200 while the process runs.
//! - `GET /readyz`: 200 while the relay accepts new connections, 503 while draining.
//!
//! Each request gets one response and the connection is closed. A liveness probe
//! that goes unanswered gets the relay restarted, ending every session on it, so
//! nobody who can open TCP connections to this port may keep probes waiting:
//!
//! - a client has [`DEADLINE`] from its accept to send its request head and take the
//!   answer; probes and scrapers send the head at once;
//! - the listener never stops accepting. At most [`MAX_CLIENTS`] connections are
//!   held; at the cap, each new one displaces the oldest held. Idle connections
//!   therefore cost their opener a place that the next connection takes away, and
//!   a probe, which sends its head within moments of connecting, is answered unless
//!   [`MAX_CLIENTS`] connections arrive in those moments.
//!
//! Every connection dropped unanswered (displaced or past its deadline) is counted.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};
use tracing::debug;

use crate::metrics;
use crate::state::RelayState;
use crate::stats::Stats;

/// Largest request head read.
const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has, from its accept, to send its request and read the answer:
/// what kubelet and Prometheus need is milliseconds on a cluster network, and a
/// probe's own timeout (see the Kubernetes manifest) is longer than this.
const DEADLINE: Duration = Duration::from_secs(1);
/// Admin connections held at once; at the cap the oldest makes room.
const MAX_CLIENTS: usize = 64;

/// Answers admin requests (`/metrics`, `/healthz`, `/readyz`) until `shutdown` turns
/// true.
pub(crate) async fn serve_admin_requests(
    listener: TcpListener,
    shared: Arc<RelayState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut clients = JoinSet::new();
    // Held connections, oldest first. Entries of finished tasks are pruned lazily.
    let mut held: VecDeque<AbortHandle> = VecDeque::new();
    loop {
        tokio::select! {
            biased;
            () = async { let _ = shutdown.wait_for(|stop| *stop).await; } => break,
            Some(_) = clients.join_next(), if !clients.is_empty() => {}
            accepted = listener.accept() => {
                match accepted {
                    Ok((stream, _)) => {
                        if clients.len() >= MAX_CLIENTS && displace_oldest(&mut held) {
                            Stats::bump(&shared.stats.admin_connections_dropped);
                        }
                        held.push_back(clients.spawn(answer(stream, shared.clone())));
                        // Bounds the queue when many finish out of order.
                        if held.len() > 2 * MAX_CLIENTS {
                            held.retain(|client| !client.is_finished());
                        }
                    }
                    Err(err) => {
                        debug!(%err, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    }
}

/// Ends the oldest connection still held; whether there was one.
fn displace_oldest(held: &mut VecDeque<AbortHandle>) -> bool {
    while let Some(oldest) = held.pop_front() {
        if !oldest.is_finished() {
            oldest.abort();
            return true;
        }
    }
    false
}

async fn answer(mut stream: TcpStream, shared: Arc<RelayState>) {
    let exchange = tokio::time::timeout(DEADLINE, async {
        let (status, content_type, body) = match read_request(&mut stream).await {
            Some(request) => respond(&request, &shared),
            None => (400, "text/plain", "bad request\n".to_owned()),
        };
        let head = format!(
            "HTTP/1.1 {status} {}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
             cache-control: no-store\r\nconnection: close\r\n\r\n",
            reason(status),
            body.len()
        );
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.write_all(body.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
    if exchange.is_err() {
        Stats::bump(&shared.stats.admin_connections_dropped);
    }
}

/// The request line's method and path, once the whole head has arrived.
struct Request {
    method: String,
    path: String,
}

async fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        if head.len() >= MAX_REQUEST {
            return None;
        }
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|byte| *byte == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    let method = parts.next()?.to_owned();
    let target = parts.next()?;
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let path = target.split('?').next().unwrap_or(target).to_owned();
    Some(Request { method, path })
}

fn respond(request: &Request, shared: &RelayState) -> (u16, &'static str, String) {
    if request.method != "GET" && request.method != "HEAD" {
        return (405, "text/plain", "only GET\n".to_owned());
    }
    let ready = !shared.is_draining();
    match request.path.as_str() {
        "/metrics" => (
            200,
            "text/plain; version=0.0.4",
            metrics::render(&shared.snapshot(), ready),
        ),
        "/healthz" => (200, "text/plain", "ok\n".to_owned()),
        "/readyz" if ready => (200, "text/plain", "ready\n".to_owned()),
        "/readyz" => (503, "text/plain", "draining\n".to_owned()),
        _ => (404, "text/plain", "not found\n".to_owned()),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "",
    }
}
