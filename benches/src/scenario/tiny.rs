//! `tiny`: what a peer's tiny frames cost the relay per byte it puts on the wire,
//! against bulk data on the same transport, in the same run.
//!
//! For each `--transport`, `--sessions` S sessions go from raw player connections
//! to one host, registered by the raw protocol, that reads and discards whatever
//! arrives (the bytes are not Noise: the relay cannot tell, and a host agent would
//! end such a session). Two phases of `--duration` each, after `--warmup`:
//!
//! - **bulk**: each session writes 16 KiB frames as fast as it can;
//! - **tiny**: one-byte frames, the cheapest way each transport allows: on QUIC one
//!   byte to each of the S streams of one connection in turn, so that packets carry
//!   many one-byte STREAM frames of different streams; on TLS over TCP one-byte
//!   `DATA` frames, 16,384 to a write; on WebSocket a message per one-byte `DATA`
//!   frame.
//!
//! The relay's CPU seconds over a phase divided by the bytes the players put on the
//! wire (UDP payload on QUIC; TCP payload, TLS records included, on the others) is
//! its cost per attacker byte; the report gives both phases and their ratio.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use blindrelay_client::{RelayUrl, SecretKey};
use blindrelay_protocol::stream_frame::{StreamFrame, MAX_DATA_LEN};
use blindrelay_protocol::ControlMessage;
use bytes::Bytes;
use futures_util::SinkExt;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use super::{CpuMeter, Run};
use crate::report::{cell, ratio, Report, Table};
use crate::transport::Transport;

/// Knobs of the tiny scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct TinyArgs {
    /// Sessions per transport (S).
    #[arg(long, default_value_t = 64)]
    pub sessions: usize,
    /// The transports the players use.
    #[arg(long, value_delimiter = ',', default_value = "quic,tcp,websocket")]
    pub transport: Vec<Transport>,
}

/// Planned time, for the progress bar.
pub fn planned(args: &TinyArgs, common: &super::Common) -> Duration {
    (common.duration + common.warmup) * 2 * args.transport.len() as u32
}

/// How one phase writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Bulk,
    Tiny,
}

/// What one phase measured.
struct Phase {
    wire_bytes: u64,
    relay_cpu_s: Option<f64>,
}

impl Phase {
    /// Relay CPU nanoseconds per byte on the wire.
    fn ns_per_byte(&self) -> Option<f64> {
        let cpu = self.relay_cpu_s?;
        (self.wire_bytes > 0).then(|| cpu * 1e9 / self.wire_bytes as f64)
    }
}

/// Runs the scenario.
pub async fn run(run: &Run, args: &TinyArgs) -> Result<Report> {
    let url = run.target.relay_url().clone();
    let host_key = SecretKey::generate()?;
    let host = Host::start(&url, &host_key).await?;
    let mut table = Table::new(&[
        "transport",
        "bulk: relay ns per wire byte",
        "tiny: relay ns per wire byte",
        "tiny / bulk",
        "bulk MB on the wire",
        "tiny MB on the wire",
    ]);
    let params = json!({
        "sessions": args.sessions, "duration_s": run.common.duration.as_secs_f64(),
        "warmup_s": run.common.warmup.as_secs_f64(),
        "transports": args.transport.iter().map(|t| t.key()).collect::<Vec<_>>(),
    });
    let mut report = run.report("tiny", params);
    for &transport in &args.transport {
        let mut phases = Vec::new();
        for shape in [Shape::Bulk, Shape::Tiny] {
            run.progress
                .message(format!("{} {shape:?}", transport.label()));
            let phase = phase(run, &url, host.host_id, transport, shape, args.sessions).await?;
            run.progress
                .advance(run.common.duration + run.common.warmup);
            phases.push(phase);
        }
        let (bulk, tiny) = (&phases[0], &phases[1]);
        let times = ratio(tiny.ns_per_byte(), bulk.ns_per_byte());
        let key = transport.key();
        report.figure(&format!("{key}_bulk_ns_per_byte"), bulk.ns_per_byte());
        report.figure(&format!("{key}_tiny_ns_per_byte"), tiny.ns_per_byte());
        report.figure(&format!("{key}_tiny_over_bulk"), times);
        table.row(vec![
            transport.label().to_owned(),
            cell(bulk.ns_per_byte(), 2),
            cell(tiny.ns_per_byte(), 2),
            cell(times, 1),
            cell(Some(bulk.wire_bytes as f64 / 1e6), 1),
            cell(Some(tiny.wire_bytes as f64 / 1e6), 1),
        ]);
    }
    report.table = table;
    drop(host);
    Ok(report)
}

/// One phase: S fresh sessions on `transport`, written in `shape` for the warm-up
/// and the measured duration.
async fn phase(
    run: &Run,
    url: &RelayUrl,
    host_id: blindrelay_client::HostId,
    transport: Transport,
    shape: Shape,
    sessions: usize,
) -> Result<Phase> {
    let wire = Arc::new(AtomicU64::new(0));
    let warmup = run.common.warmup;
    let until = Instant::now() + warmup + run.common.duration;
    let writing = async {
        match transport {
            Transport::Quic => quic_players(url, host_id, shape, sessions, until, &wire).await,
            Transport::Tcp | Transport::Websocket => {
                let websocket = transport == Transport::Websocket;
                stream_players(url, host_id, shape, sessions, until, websocket, &wire).await
            }
        }
    };
    let measuring = async {
        tokio::time::sleep(warmup).await;
        let cpu = CpuMeter::start(run.target.relay_probe());
        let wire_start = wire.load(Ordering::Relaxed);
        tokio::time::sleep(run.common.duration).await;
        (cpu.elapsed(), wire.load(Ordering::Relaxed) - wire_start)
    };
    let (written, (relay_cpu_s, wire_bytes)) = tokio::join!(writing, measuring);
    written?;
    Ok(Phase {
        wire_bytes,
        relay_cpu_s,
    })
}

/// A `Connect` to `host_id` and a hello-sized message behind it (the relay checks
/// only that a length-prefixed message follows; the host discards it).
fn connect_request(host_id: blindrelay_client::HostId) -> Vec<u8> {
    let mut request = ControlMessage::connect(host_id).to_frame().to_vec();
    request.extend_from_slice(&96u16.to_be_bytes());
    request.extend_from_slice(&[0x42; 96]);
    request
}

/// S sessions as streams of one QUIC connection.
async fn quic_players(
    url: &RelayUrl,
    host_id: blindrelay_client::HostId,
    shape: Shape,
    sessions: usize,
    until: Instant,
    wire: &AtomicU64,
) -> Result<()> {
    let connection = blindrelay_client::internal::connect_relay_raw(url).await?;
    let mut streams = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        let (mut send, mut recv) = connection.open_bi().await?;
        send.write_all(&connect_request(host_id)).await?;
        let answer = blindrelay_client::internal::read_control(&mut recv).await?;
        anyhow::ensure!(
            matches!(answer, ControlMessage::Connected { .. }),
            "the relay answered {answer:?}"
        );
        streams.push((send, recv));
    }
    let start = connection.stats().udp_tx.bytes;
    let counting = async {
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
            wire.store(connection.stats().udp_tx.bytes - start, Ordering::Relaxed);
        }
    };
    let writing = async {
        match shape {
            Shape::Bulk => {
                let chunk = Bytes::from(vec![0x5a; 64 << 10]);
                super::throughput::join_all(streams.iter_mut().map(|(send, _)| {
                    let chunk = chunk.clone();
                    async move {
                        while Instant::now() < until {
                            if send.write_chunk(chunk.clone()).await.is_err() {
                                break;
                            }
                        }
                    }
                }))
                .await;
            }
            Shape::Tiny => {
                'rounds: while Instant::now() < until {
                    for (send, _) in &mut streams {
                        if send.write_all(&[0x5a]).await.is_err() {
                            break 'rounds;
                        }
                    }
                    tokio::task::yield_now().await;
                }
            }
        }
    };
    tokio::join!(counting, writing);
    connection.close(0u32.into(), b"done");
    Ok(())
}

/// S sessions, each its own TLS (or WebSocket) connection.
async fn stream_players(
    url: &RelayUrl,
    host_id: blindrelay_client::HostId,
    shape: Shape,
    sessions: usize,
    until: Instant,
    websocket: bool,
    wire: &Arc<AtomicU64>,
) -> Result<()> {
    let alpn = if websocket {
        blindrelay_transport::websocket::HTTP_ALPN
    } else {
        blindrelay_protocol::ALPN
    };
    let tls = Arc::new(blindrelay_client::internal::relay_client_tls(url, alpn)?);
    let addr = tokio::net::lookup_host((url.host(), url.port()))
        .await?
        .next()
        .context("the relay's name resolves to nothing")?;
    let mut first = Vec::new();
    StreamFrame::Data(connect_request(host_id).into()).encode(&mut first);
    // What each write carries: a write batch of full frames, or 16,384 one-byte
    // frames (one per WebSocket message).
    let mut batch = Vec::new();
    match shape {
        Shape::Bulk => {
            for _ in 0..4 {
                StreamFrame::Data(Bytes::from(vec![0x5a; MAX_DATA_LEN])).encode(&mut batch);
            }
        }
        Shape::Tiny => {
            for _ in 0..16_384 {
                StreamFrame::Data(Bytes::from_static(&[0x5a])).encode(&mut batch);
            }
        }
    }
    let batch = Bytes::from(batch);
    let mut players = Vec::with_capacity(sessions);
    for _ in 0..sessions {
        let tcp = TcpStream::connect(addr).await?;
        let _ = tcp.set_nodelay(true);
        let counted = Counted {
            inner: tcp,
            written: wire.clone(),
        };
        let name = rustls::pki_types::ServerName::try_from(url.host().to_owned())?;
        let stream = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, counted)
            .await?;
        let (batch, first) = (batch.clone(), first.clone());
        let player = async move {
            if websocket {
                let request = format!(
                    "wss://{}:{}{}",
                    url.host(),
                    url.port(),
                    blindrelay_transport::websocket::PATH
                );
                let (mut ws, _) = tokio_tungstenite::client_async_with_config(
                    request,
                    stream,
                    Some(blindrelay_transport::websocket::config()),
                )
                .await?;
                ws.send(Message::binary(first)).await?;
                while Instant::now() < until {
                    match shape {
                        Shape::Bulk => ws.send(Message::binary(batch.clone())).await?,
                        Shape::Tiny => {
                            for frame in batch.chunks(4) {
                                ws.feed(Message::binary(Bytes::copy_from_slice(frame)))
                                    .await?;
                            }
                            ws.flush().await?;
                        }
                    }
                }
            } else {
                let mut stream = stream;
                stream.write_all(&first).await?;
                while Instant::now() < until {
                    stream.write_all(&batch).await?;
                }
            }
            anyhow::Ok(())
        };
        players.push(player);
    }
    for result in super::throughput::join_all(players.into_iter()).await {
        // A session the relay ends (a limit) ends its writer only.
        if let Err(err) = result {
            tracing_warn(&err);
        }
    }
    Ok(())
}

fn tracing_warn(err: &anyhow::Error) {
    eprintln!("a tiny-frame player ended early: {err:#}");
}

/// A TCP stream that counts the bytes written to it.
struct Counted {
    inner: TcpStream,
    written: Arc<AtomicU64>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = std::task::ready!(Pin::new(&mut self.inner).poll_write(cx, buf))?;
        self.written.fetch_add(written as u64, Ordering::Relaxed);
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The host: one QUIC connection, registered, taking every session stream and
/// discarding what arrives on it.
struct Host {
    host_id: blindrelay_client::HostId,
    connection: quinn::Connection,
    _registration: blindrelay_client::internal::RegistrationStream,
    task: tokio::task::JoinHandle<()>,
}

impl Host {
    async fn start(url: &RelayUrl, key: &SecretKey) -> Result<Self> {
        let connection = blindrelay_client::internal::connect_relay_raw(url).await?;
        let registration = blindrelay_client::internal::register_on(&connection, key, None).await?;
        let accepting = connection.clone();
        let task = tokio::spawn(async move {
            while let Ok((_send, mut recv)) = accepting.accept_bi().await {
                tokio::spawn(async move {
                    while let Ok(Some(_)) = recv.read_chunk(usize::MAX, true).await {}
                    drop(_send);
                });
            }
        });
        Ok(Self {
            host_id: key.host_id(),
            connection,
            _registration: registration,
            task,
        })
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.task.abort();
        self.connection.close(0u32.into(), b"done");
    }
}
