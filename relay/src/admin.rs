//! The admin listener: Prometheus metrics and health probes over plain HTTP/1.1, for
//! operators only. Bind it to loopback or a private network; it serves nothing but
//! aggregates.
//!
//! - `GET /metrics`: the counters (see [`crate::metrics`]).
//! - `GET /healthz`: 200 while the process runs.
//! - `GET /readyz`: 200 while the relay accepts new connections, 503 while draining.
//!
//! Each request gets one response and the connection is closed. Requests are read
//! with a size limit and a deadline, so a slow or oversized client costs one task
//! for a few seconds at most.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::debug;

use crate::metrics;
use crate::state::RelayState;

/// Largest request head read.
const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has to send its request and read the answer.
const DEADLINE: Duration = Duration::from_secs(5);
/// Admin requests served at once; more wait in the kernel's backlog.
const MAX_CLIENTS: usize = 64;

/// Serves admin requests until `shutdown` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<RelayState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut clients = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept(), if clients.len() < MAX_CLIENTS => {
                match accepted {
                    Ok((stream, _)) => {
                        clients.spawn(answer(stream, shared.clone()));
                    }
                    Err(err) => {
                        debug!(%err, "admin accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            Some(_) = clients.join_next(), if !clients.is_empty() => {}
            () = async { let _ = shutdown.wait_for(|stop| *stop).await; } => break,
        }
    }
}

async fn answer(mut stream: TcpStream, shared: Arc<RelayState>) {
    let _ = tokio::time::timeout(DEADLINE, async {
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
