//! A session's stream halves, on QUIC or a stream transport, which let the session
//! end before the connection goes.
//!
//! quinn closes a connection as soon as its last handle is dropped, and a closed
//! connection's streams can no longer be read, even data the peer already received
//! and acknowledged. An application that drops its session, its `Player` or its
//! `HostAgent` right after the last write would lose those bytes. So when both
//! halves of a session's stream are dropped, a background task keeps them, and with
//! them the connection, until the session is over: our end is finished (as quinn
//! would finish it), the peer has ended its half, and it has acknowledged everything
//! we sent. The peer ends its half once it has read ours (a `SecureStream` dropped on
//! that side lingers the same way), so the last reader decides when the connection
//! may go. A peer that sends more than a short tail (room for its own Noise end
//! frame) is told to stop at once instead, as TCP resets a connection closed while
//! data still arrives. The wait is bounded by [`LINGER`].
//!
//! A stream-transport connection (TLS over TCP) carries one stream and its writer
//! delivers what was queued on its own, but its halves linger the same way, so the
//! peer's end frame is read rather than refused with a stop.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use blindrelay_protocol::StreamCode;
use blindrelay_transport::{FramedRecv, FramedSend, RecvError, SendError};
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::session::SessionEnded;

/// The longest a dropped session keeps its connection for the peer to finish.
pub const LINGER: Duration = Duration::from_secs(10);

/// Bytes a lingering session takes from the peer before deciding it is still
/// sending: room for its Noise end frame, and for the acknowledgements of a
/// resumable session's last window read (PROTOCOL.md 10.8: one 27-byte frame per
/// 256 KiB of a window of at most 16 MiB).
const TAIL: usize = 2048;

/// A sending half on one of the transports.
#[derive(Debug)]
enum Send {
    Quic(quinn::SendStream),
    Framed(FramedSend),
}

/// A receiving half on one of the transports.
#[derive(Debug)]
enum Recv {
    Quic(quinn::RecvStream),
    Framed(FramedRecv),
}

impl Send {
    fn finish(&mut self) {
        match self {
            Self::Quic(send) => {
                let _ = send.finish();
            }
            Self::Framed(send) => send.finish(),
        }
    }

    fn reset(&mut self, code: StreamCode) {
        match self {
            Self::Quic(send) => {
                let _ = send.reset(code.into());
            }
            Self::Framed(send) => send.reset(code),
        }
    }

    /// Waits until the peer has everything sent, or stopped the stream.
    async fn delivered(&mut self) {
        match self {
            Self::Quic(send) => {
                let _ = send.stopped().await;
            }
            Self::Framed(send) => {
                send.stopped().await;
            }
        }
    }
}

impl Recv {
    fn stop(&mut self, code: StreamCode) {
        match self {
            Self::Quic(recv) => {
                let _ = recv.stop(code.into());
            }
            Self::Framed(recv) => recv.stop(code),
        }
    }

    /// Bytes of the tail, `None` once the peer's half is over.
    async fn read_tail(&mut self, max: usize) -> Option<usize> {
        match self {
            Self::Quic(recv) => recv
                .read_chunk(max, true)
                .await
                .ok()?
                .map(|c| c.bytes.len()),
            Self::Framed(recv) => recv.read_chunk(max).await.ok()?.map(|chunk| chunk.len()),
        }
    }
}

/// Where the first of a pair's halves to be dropped waits for the other; the code
/// a lingering pair stops a peer still sending with; and the code the pair's own
/// direction is reset with instead of lingering, if one was set.
#[derive(Debug)]
struct Rendezvous {
    parked: Mutex<Option<Parked>>,
    stop: AtomicU32,
    reset: AtomicU64,
}

/// `Rendezvous::reset` when the dropped pair lingers.
const LINGERS: u64 = u64::MAX;

impl Default for Rendezvous {
    fn default() -> Self {
        Self {
            parked: Mutex::default(),
            stop: AtomicU32::new(0),
            reset: AtomicU64::new(LINGERS),
        }
    }
}

#[derive(Debug)]
enum Parked {
    Send(Send),
    Recv(Recv),
}

impl Rendezvous {
    /// Parks a dropped `half` until its other half is dropped too, then lingers with
    /// both.
    fn leave(&self, half: Parked) {
        let mut parked = self
            .parked
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match (parked.take(), half) {
            (Some(Parked::Send(mut send)), Parked::Recv(mut recv))
            | (Some(Parked::Recv(mut recv)), Parked::Send(mut send)) => {
                let stop = StreamCode::from_u32(self.stop.load(Ordering::Relaxed));
                match self.reset.load(Ordering::Relaxed) {
                    LINGERS => linger(send, recv, stop),
                    reset => {
                        // A `u32` was stored (`StreamSend::reset_dropped_with`).
                        send.reset(StreamCode::from_u32(reset as u32));
                        recv.stop(stop);
                    }
                }
            }
            (_, half) => *parked = Some(half),
        }
    }
}

/// Splits a session's QUIC stream into halves that linger together when dropped.
pub fn halves(send: quinn::SendStream, recv: quinn::RecvStream) -> (StreamRecv, StreamSend) {
    pair(Send::Quic(send), Recv::Quic(recv))
}

/// Splits a session's stream-transport stream into halves that linger together
/// when dropped.
pub fn framed_halves(send: FramedSend, recv: FramedRecv) -> (StreamRecv, StreamSend) {
    pair(Send::Framed(send), Recv::Framed(recv))
}

fn pair(send: Send, recv: Recv) -> (StreamRecv, StreamSend) {
    let rendezvous = Arc::new(Rendezvous::default());
    (
        StreamRecv {
            recv: Some(recv),
            rendezvous: rendezvous.clone(),
        },
        StreamSend {
            send: Some(send),
            rendezvous,
        },
    )
}

/// Finishes `send`, waits for the peer to end its half, and for the peer to
/// acknowledge everything sent, for at most [`LINGER`]. If the peer sends more than
/// a short tail instead (nobody is left to read it), it is told to stop at once, as a
/// dropped stream would tell it, rather than sending on for nothing.
fn linger(mut send: Send, mut recv: Recv, stop: StreamCode) {
    // Outside a runtime nothing could drive the wait: the transport's own drop
    // finishes the stream, as it always did.
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        // Already finished or reset is fine.
        send.finish();
        let over = async {
            // The peer's own end may still be on its way (its Noise end frame, then
            // the stream's end): a short tail is read; more means it is still sending.
            let mut read = 0;
            while let Some(n) = recv.read_tail(TAIL - read).await {
                read += n;
                if read >= TAIL {
                    recv.stop(stop);
                    break;
                }
            }
            send.delivered().await;
        };
        let _ = tokio::time::timeout(LINGER, over).await;
    });
}

/// The sending half of a session's stream (see the module documentation).
#[derive(Debug)]
pub struct StreamSend {
    /// Taken only when dropped or reset.
    send: Option<Send>,
    rendezvous: Arc<Rendezvous>,
}

impl StreamSend {
    /// Abandons the stream: the peer's read fails with `code`, and nothing lingers.
    pub fn reset(mut self, code: StreamCode) {
        self.abandon_with(code);
    }

    /// Makes this half, once it and its other are dropped, reset its direction with
    /// `code` rather than finish it and linger (`None`: finish and linger again).
    /// A resumable session dropped before its application ended it says so: the
    /// peer reads `code` at once, rather than a truncation it would try to resume.
    pub(crate) fn reset_dropped_with(&mut self, code: Option<StreamCode>) {
        let stored = code.map_or(LINGERS, |code| u64::from(code.to_u32()));
        self.rendezvous.reset.store(stored, Ordering::Relaxed);
    }

    /// Like [`StreamSend::reset`], keeping the handle: later writes fail.
    pub(crate) fn abandon_with(&mut self, code: StreamCode) {
        if let Some(mut send) = self.send.take() {
            send.reset(code);
        }
    }

    fn stream(&mut self) -> io::Result<&mut Send> {
        self.send
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl AsyncWrite for StreamSend {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // The transports' own, typed polls: a stop code becomes a `SessionEnded`
        // here, where its type is known, rather than being fished out of an
        // `io::Error` later.
        match self.get_mut().stream()? {
            Send::Quic(send) => {
                quinn::SendStream::poll_write(Pin::new(send), cx, buf).map_err(|err| match &err {
                    quinn::WriteError::Stopped(code) => ended_or(quic_code(*code), err),
                    _ => io::Error::from(err),
                })
            }
            Send::Framed(send) => {
                let mut bytes = Bytes::copy_from_slice(
                    &buf[..buf
                        .len()
                        .min(blindrelay_protocol::stream_frame::MAX_DATA_LEN)],
                );
                send.poll_write_bytes(cx, &mut bytes)
                    .map_err(|err| match err {
                        SendError::Stopped(code) => {
                            ended_or(code, blindrelay_transport::framed::send_io_error(err))
                        }
                        other => blindrelay_transport::framed::send_io_error(other),
                    })
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream()? {
            Send::Quic(send) => AsyncWrite::poll_flush(Pin::new(send), cx),
            Send::Framed(send) => AsyncWrite::poll_flush(Pin::new(send), cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream()? {
            Send::Quic(send) => AsyncWrite::poll_shutdown(Pin::new(send), cx),
            Send::Framed(send) => AsyncWrite::poll_shutdown(Pin::new(send), cx),
        }
    }
}

impl Drop for StreamSend {
    fn drop(&mut self) {
        if let Some(send) = self.send.take() {
            self.rendezvous.leave(Parked::Send(send));
        }
    }
}

/// The receiving half of a session's stream (see the module documentation).
#[derive(Debug)]
pub struct StreamRecv {
    /// Taken only when dropped or stopped.
    recv: Option<Recv>,
    rendezvous: Arc<Rendezvous>,
}

impl StreamRecv {
    /// Makes a peer that still sends once this half and its other are dropped
    /// stopped with `code` rather than 0: a resumable session says it is closed, so
    /// the other side does not wait to resume it.
    pub(crate) fn stop_lingering_with(&mut self, code: StreamCode) {
        self.rendezvous.stop.store(code.to_u32(), Ordering::Relaxed);
    }

    /// Abandons the stream: the peer's writes fail with `code`, and nothing lingers.
    pub fn stop(mut self, code: StreamCode) {
        self.abandon_with(code);
    }

    /// Like [`StreamRecv::stop`], keeping the handle: later reads fail.
    pub(crate) fn abandon_with(&mut self, code: StreamCode) {
        if let Some(mut recv) = self.recv.take() {
            recv.stop(code);
        }
    }
}

impl AsyncRead for StreamRecv {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().recv.as_mut() {
            // The transports' own, typed polls: see `StreamSend::poll_write`.
            Some(Recv::Quic(recv)) => recv.poll_read_buf(cx, buf).map_err(|err| match &err {
                quinn::ReadError::Reset(code) => ended_or(quic_code(*code), err),
                _ => io::Error::from(err),
            }),
            Some(Recv::Framed(recv)) => {
                if buf.remaining() == 0 {
                    return Poll::Ready(Ok(()));
                }
                match std::task::ready!(recv.poll_read_chunk(cx, buf.remaining())) {
                    Ok(Some(chunk)) => buf.put_slice(&chunk),
                    Ok(None) => {}
                    Err(RecvError::Reset(code)) => {
                        let err =
                            blindrelay_transport::framed::recv_io_error(RecvError::Reset(code));
                        return Poll::Ready(Err(ended_or(code, err)));
                    }
                    Err(other) => {
                        return Poll::Ready(Err(blindrelay_transport::framed::recv_io_error(other)))
                    }
                }
                Poll::Ready(Ok(()))
            }
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

/// A QUIC code as the protocol's; codes beyond `u32` are nobody's and stay unknown.
fn quic_code(code: quinn::VarInt) -> StreamCode {
    StreamCode::from_u32(u32::try_from(code.into_inner()).unwrap_or(u32::MAX))
}

/// The error a read or write returns for a stream ended with `code`: a
/// [`SessionEnded`] that says what happened when the code is one of the protocol's
/// session ends, else the transport's own error.
fn ended_or(code: StreamCode, err: impl Into<io::Error>) -> io::Error {
    match SessionEnded::from_code(code) {
        Some(ended) => io::Error::new(io::ErrorKind::ConnectionReset, ended),
        None => err.into(),
    }
}

impl Drop for StreamRecv {
    fn drop(&mut self) {
        if let Some(recv) = self.recv.take() {
            self.rendezvous.leave(Parked::Recv(recv));
        }
    }
}

#[cfg(test)]
mod tests {
    use blindrelay_protocol::codes;

    use super::*;

    #[test]
    fn a_session_end_code_reads_as_its_session_end_and_others_as_the_transport_says() {
        let stalled = quinn::VarInt::from(codes::stream::STALLED.to_u32());
        let err = ended_or(quic_code(stalled), quinn::ReadError::Reset(stalled));
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(
            err.get_ref().and_then(|e| e.downcast_ref::<SessionEnded>()),
            Some(&SessionEnded::Stalled)
        );
        // A code of the application's own passes through as quinn's error.
        let own = quinn::VarInt::from_u32(0x4242);
        let err = ended_or(quic_code(own), quinn::ReadError::Reset(own));
        assert!(err
            .get_ref()
            .and_then(|e| e.downcast_ref::<SessionEnded>())
            .is_none());
    }

    #[tokio::test]
    async fn a_framed_reset_reads_as_its_session_end() {
        use tokio::io::AsyncReadExt;
        let (a, b) = tokio::io::duplex(4096);
        let (mut a_send, _a_recv, _a) = blindrelay_transport::framed(a, Default::default());
        let (b_send, b_recv, _b) = blindrelay_transport::framed(b, Default::default());
        let (mut reader, _writer) = framed_halves(b_send, b_recv);
        a_send.reset(codes::stream::BYTE_LIMIT);
        let err = reader.read(&mut [0u8; 16]).await.expect_err("reset");
        assert_eq!(
            err.get_ref().and_then(|e| e.downcast_ref::<SessionEnded>()),
            Some(&SessionEnded::ByteLimit)
        );
    }
}
