//! WebSocket as a byte stream, for the stream transport's frames where only HTTPS
//! gets through (HTTP proxies, middleboxes that pass nothing else) and in browsers.
//!
//! The relay answers a WebSocket upgrade (`GET` [`PATH`], RFC 6455, over the same TLS
//! listener as TLS over TCP, chosen by the ALPN `http/1.1`). After it, the two
//! directions carry the same frames as TLS over TCP ([`crate::framed`]) inside
//! **binary** messages: the concatenation of the messages' payloads is the frame
//! stream, and message boundaries mean nothing. A text message is a protocol error;
//! WebSocket's own pings and pongs are answered by the WebSocket layer and carry
//! nothing for the stream; a close ends the stream like the end of a TCP connection.
//! [`WsBytes`] turns a WebSocket into the byte stream [`crate::framed()`] takes.
//!
//! What a peer can make this end hold is bounded whether or not it reads: the
//! write buffer has a ceiling ([`MAX_WRITE_BUFFER`]), so the pongs owed to a peer
//! that never reads wait in one slot (a newer ping replaces the older pong) instead
//! of piling up, and a peer that pings faster than [`CONTROL_PER_S`] a second, beyond
//! a burst of [`CONTROL_BURST`], is cut off: answering pings is not a service the
//! stream offers, and nothing a real client does needs more.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The path of the relay's WebSocket endpoint.
pub const PATH: &str = "/blindrelay/1";

/// The ALPN a WebSocket client offers and the relay accepts beside `blindrelay/1`.
pub const HTTP_ALPN: &[u8] = b"http/1.1";

/// The largest WebSocket message (and frame) either end accepts. A writer sends at
/// most a write batch of stream frames per message (64 KiB and one frame); a peer
/// that sends more is cut off before the relay buffers it.
pub const MAX_MESSAGE: usize = 128 * 1024;

/// What the WebSocket layer buffers before it writes to the socket (tungstenite's
/// default).
const WRITE_BUFFER: usize = 128 * 1024;

/// The most the WebSocket layer may hold for a peer that does not read: its write
/// buffer, one message of ours and a pong or a close. Our own messages are only
/// started once the buffer has been flushed, so they never meet this ceiling; the
/// answers the reading side owes do, and then wait in their one slot.
pub const MAX_WRITE_BUFFER: usize = WRITE_BUFFER + MAX_MESSAGE + 1024;

/// Control frames (pings, unasked pongs) a peer may send at once.
pub const CONTROL_BURST: u32 = 16;

/// Control frames a peer may send per second after its burst.
pub const CONTROL_PER_S: u32 = 4;

/// The WebSocket settings of both ends: bounded messages, frames and write buffer.
pub fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
}

/// The peer's allowance of control frames: a token bucket of [`CONTROL_BURST`]
/// refilled at [`CONTROL_PER_S`].
#[derive(Debug)]
struct ControlAllowance {
    tokens: u32,
    refilled: Instant,
}

impl ControlAllowance {
    fn new() -> Self {
        Self {
            tokens: CONTROL_BURST,
            refilled: Instant::now(),
        }
    }

    /// Takes one token; `false` when the peer has none left.
    fn take(&mut self) -> bool {
        let every = Duration::from_secs(1) / CONTROL_PER_S;
        let now = Instant::now();
        let earned = (now - self.refilled).as_nanos() / every.as_nanos();
        if earned > 0 {
            let earned = u32::try_from(earned).unwrap_or(u32::MAX);
            self.tokens = self.tokens.saturating_add(earned).min(CONTROL_BURST);
            self.refilled = if self.tokens == CONTROL_BURST {
                now
            } else {
                self.refilled + every * earned
            };
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// A WebSocket's binary messages as one byte stream in each direction.
pub struct WsBytes<S> {
    ws: WebSocketStream<S>,
    /// What is left of the message being read.
    message: Bytes,
    /// What is left of the peer's allowance of pings and pongs.
    control: ControlAllowance,
}

impl<S> WsBytes<S> {
    /// The byte stream of `ws`.
    pub fn new(ws: WebSocketStream<S>) -> Self {
        Self {
            ws,
            message: Bytes::new(),
            control: ControlAllowance::new(),
        }
    }
}

impl<S> std::fmt::Debug for WsBytes<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsBytes").finish_non_exhaustive()
    }
}

fn ws_error(err: tokio_tungstenite::tungstenite::Error) -> io::Error {
    use tokio_tungstenite::tungstenite::Error;
    match err {
        Error::Io(err) => err,
        Error::ConnectionClosed | Error::AlreadyClosed => io::ErrorKind::BrokenPipe.into(),
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsBytes<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // One message per read. Reading on while messages are there would cost a
        // peer's tiny messages less, but tungstenite takes a Close as soon as it
        // reads one, and would then refuse this end's writes before the frames
        // ahead of the Close (a STOP with its code) have been acted on.
        loop {
            if !self.message.is_empty() {
                let n = self.message.len().min(buf.remaining());
                buf.put_slice(&self.message[..n]);
                self.message.advance(n);
                return Poll::Ready(Ok(()));
            }
            let next = std::task::ready!(Pin::new(&mut self.ws).poll_next(cx));
            match next {
                Some(Ok(Message::Binary(data))) => self.message = data,
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "a text message where the stream's binary frames belong",
                    )))
                }
                // Answered (pings) or ignored (pongs) by the WebSocket layer, within
                // the peer's allowance.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                    if !self.control.take() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "WebSocket pings faster than the stream allows",
                        )));
                    }
                }
                Some(Ok(Message::Frame(_))) => {}
                // The end of the byte stream, as a TCP FIN is.
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Err(err)) => return Poll::Ready(Err(ws_error(err))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsBytes<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let ws = Pin::new(&mut self.ws);
        std::task::ready!(Sink::<Message>::poll_ready(ws, cx)).map_err(ws_error)?;
        // One message per write: the framed writer writes whole batches of frames.
        let len = buf.len().min(MAX_MESSAGE);
        let message = Message::Binary(Bytes::copy_from_slice(&buf[..len]));
        Pin::new(&mut self.ws)
            .start_send(message)
            .map_err(ws_error)?;
        Poll::Ready(Ok(len))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Sink::<Message>::poll_flush(Pin::new(&mut self.ws), cx).map_err(ws_error)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Sink::<Message>::poll_close(Pin::new(&mut self.ws), cx).map_err(ws_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framed::{framed, Config};
    use tokio_tungstenite::tungstenite::protocol::Role;

    async fn pair() -> (
        WsBytes<tokio::io::DuplexStream>,
        WsBytes<tokio::io::DuplexStream>,
    ) {
        let (a, b) = tokio::io::duplex(256 * 1024);
        let a = WebSocketStream::from_raw_socket(a, Role::Client, Some(config())).await;
        let b = WebSocketStream::from_raw_socket(b, Role::Server, Some(config())).await;
        (WsBytes::new(a), WsBytes::new(b))
    }

    #[tokio::test]
    async fn framed_streams_cross_a_websocket_intact() {
        let (a, b) = pair().await;
        let (mut a_send, _a_recv, _a) = framed(a, Config::default());
        let (_b_send, mut b_recv, _b) = framed(b, Config::default());
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        let sent = data.clone();
        tokio::spawn(async move {
            a_send.write_all(&sent).await.expect("write");
            a_send.finish();
            a_send
        });
        let mut got = Vec::new();
        while let Some(chunk) = b_recv.read_chunk(100_000).await.expect("read") {
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got, data);
    }

    /// A peer that pings and never reads: the owed pongs cannot leave, and after
    /// its burst (and what the rate adds meanwhile) the stream fails.
    #[tokio::test(start_paused = true)]
    async fn pings_beyond_the_allowance_end_the_stream() {
        use futures_util::SinkExt;
        let (a, b) = tokio::io::duplex(1 << 20);
        let mut a = WebSocketStream::from_raw_socket(a, Role::Client, Some(config())).await;
        let b = WebSocketStream::from_raw_socket(b, Role::Server, Some(config())).await;
        let mut b = WsBytes::new(b);
        // The burst, then one a refill period for a while: all taken.
        for i in 0..CONTROL_BURST + 8 {
            if i >= CONTROL_BURST {
                tokio::time::advance(Duration::from_secs(1) / CONTROL_PER_S).await;
            }
            a.send(Message::Ping(vec![1; 125].into()))
                .await
                .expect("ping");
            a.send(Message::binary(vec![i as u8])).await.expect("data");
            let mut byte = [0u8; 1];
            tokio::io::AsyncReadExt::read_exact(&mut b, &mut byte)
                .await
                .expect("within the allowance");
            assert_eq!(byte[0], i as u8);
        }
        // Two at once with no time between: the second is one too many.
        a.send(Message::Ping(vec![1; 125].into()))
            .await
            .expect("ping");
        a.send(Message::Ping(vec![1; 125].into()))
            .await
            .expect("ping");
        let mut byte = [0u8; 1];
        let err = tokio::io::AsyncReadExt::read_exact(&mut b, &mut byte)
            .await
            .expect_err("cut off");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }

    #[tokio::test]
    async fn a_text_message_is_refused() {
        use futures_util::SinkExt;
        let (a, b) = tokio::io::duplex(4096);
        let mut a = WebSocketStream::from_raw_socket(a, Role::Client, Some(config())).await;
        let b = WebSocketStream::from_raw_socket(b, Role::Server, Some(config())).await;
        let (_send, mut recv, _connection) = framed(WsBytes::new(b), Config::default());
        a.send(Message::text("hello")).await.expect("send");
        let err = recv.read_chunk(10).await.expect_err("refused");
        assert!(
            matches!(
                err,
                crate::RecvError::Connection(crate::ConnectionError::Io(_))
            ),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn an_oversize_message_is_refused_before_it_is_buffered() {
        use futures_util::SinkExt;
        let (a, b) = tokio::io::duplex(1 << 20);
        // The sender's own limits are off; the receiver's are the protocol's.
        let loose = WebSocketConfig::default()
            .max_message_size(None)
            .max_frame_size(None);
        let mut a = WebSocketStream::from_raw_socket(a, Role::Client, Some(loose)).await;
        let b = WebSocketStream::from_raw_socket(b, Role::Server, Some(config())).await;
        let (_send, mut recv, _connection) = framed(WsBytes::new(b), Config::default());
        let sending = tokio::spawn(async move {
            let _ = a.send(Message::binary(vec![0u8; MAX_MESSAGE + 1])).await;
            a
        });
        let err = recv.read_chunk(10).await.expect_err("refused");
        assert!(matches!(err, crate::RecvError::Connection(_)), "{err:?}");
        drop(sending);
    }
}
