//! A session's QUIC stream halves, which let the session end before the connection
//! goes.
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

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use blindrelay_protocol::StreamCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::stream::SessionEnded;

/// The longest a dropped session keeps its connection for the peer to finish.
pub const LINGER: Duration = Duration::from_secs(10);

/// Bytes a lingering session takes from the peer before deciding it is still
/// sending: room for its Noise end frame and a little more.
const TAIL: usize = 256;

/// Where the first of a pair's halves to be dropped waits for the other.
#[derive(Debug, Default)]
struct Rendezvous(Mutex<Option<Parked>>);

#[derive(Debug)]
enum Parked {
    Send(quinn::SendStream),
    Recv(quinn::RecvStream),
}

impl Rendezvous {
    /// Parks a dropped `half` until its other half is dropped too, then lingers with
    /// both.
    fn leave(&self, half: Parked) {
        let mut parked = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match (parked.take(), half) {
            (Some(Parked::Send(send)), Parked::Recv(recv))
            | (Some(Parked::Recv(recv)), Parked::Send(send)) => linger(send, recv),
            (_, half) => *parked = Some(half),
        }
    }
}

/// Splits a session's QUIC stream into halves that linger together when dropped.
pub fn halves(send: quinn::SendStream, recv: quinn::RecvStream) -> (QuicRecv, QuicSend) {
    let rendezvous = Arc::new(Rendezvous::default());
    (
        QuicRecv {
            recv: Some(recv),
            rendezvous: rendezvous.clone(),
        },
        QuicSend {
            send: Some(send),
            rendezvous,
        },
    )
}

/// Finishes `send`, waits for the peer to end its half, and for the peer to
/// acknowledge everything sent, for at most [`LINGER`]. If the peer sends more than
/// a short tail instead (nobody is left to read it), it is told to stop at once, as a
/// dropped stream would tell it, rather than sending on for nothing.
fn linger(mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    // Outside a runtime nothing could drive the wait: quinn's own drop finishes the
    // stream, as it always did.
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        // Already finished or reset is fine.
        let _ = send.finish();
        let over = async {
            // The peer's own end may still be on its way (its Noise end frame, then
            // the stream's end): a short tail is read; more means it is still sending.
            let mut tail = [0u8; TAIL];
            let mut read = 0;
            while let Ok(Some(n)) = recv.read(&mut tail[read..]).await {
                read += n;
                if read == TAIL {
                    let _ = recv.stop(0u32.into());
                    break;
                }
            }
            let _ = send.stopped().await;
        };
        let _ = tokio::time::timeout(LINGER, over).await;
    });
}

/// The sending half of a session's QUIC stream (see the module documentation).
#[derive(Debug)]
pub struct QuicSend {
    /// Taken only when dropped or reset.
    send: Option<quinn::SendStream>,
    rendezvous: Arc<Rendezvous>,
}

impl QuicSend {
    /// Abandons the stream: the peer's read fails with `code`, and nothing lingers.
    pub fn reset(mut self, code: quinn::VarInt) {
        self.abandon_with(code);
    }

    /// Like [`QuicSend::reset`], keeping the handle: later writes fail.
    pub(crate) fn abandon_with(&mut self, code: quinn::VarInt) {
        if let Some(mut send) = self.send.take() {
            let _ = send.reset(code);
        }
    }

    fn stream(&mut self) -> io::Result<&mut quinn::SendStream> {
        self.send
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

impl AsyncWrite for QuicSend {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // quinn's own, typed poll: a stop code becomes a `SessionEnded` here, where
        // its type is known, rather than being fished out of an `io::Error` later.
        let stream = Pin::new(self.get_mut().stream()?);
        quinn::SendStream::poll_write(stream, cx, buf).map_err(|err| match &err {
            quinn::WriteError::Stopped(code) => ended_or(*code, err),
            _ => io::Error::from(err),
        })
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(self.get_mut().stream()?), cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_shutdown(Pin::new(self.get_mut().stream()?), cx)
    }
}

impl Drop for QuicSend {
    fn drop(&mut self) {
        if let Some(send) = self.send.take() {
            self.rendezvous.leave(Parked::Send(send));
        }
    }
}

/// The receiving half of a session's QUIC stream (see the module documentation).
#[derive(Debug)]
pub struct QuicRecv {
    /// Taken only when dropped or stopped.
    recv: Option<quinn::RecvStream>,
    rendezvous: Arc<Rendezvous>,
}

impl QuicRecv {
    /// Abandons the stream: the peer's writes fail with `code`, and nothing lingers.
    pub fn stop(mut self, code: quinn::VarInt) {
        self.abandon_with(code);
    }

    /// Like [`QuicRecv::stop`], keeping the handle: later reads fail.
    pub(crate) fn abandon_with(&mut self, code: quinn::VarInt) {
        if let Some(mut recv) = self.recv.take() {
            let _ = recv.stop(code);
        }
    }
}

impl AsyncRead for QuicRecv {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().recv.as_mut() {
            // quinn's own, typed poll: see `QuicSend::poll_write`.
            Some(recv) => recv.poll_read_buf(cx, buf).map_err(|err| match &err {
                quinn::ReadError::Reset(code) => ended_or(*code, err),
                _ => io::Error::from(err),
            }),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

/// The error a read or write returns for a stream ended with `code`: a
/// [`SessionEnded`] that says what happened when the code is one of the protocol's
/// session ends, else quinn's own error.
fn ended_or(code: quinn::VarInt, err: impl Into<io::Error>) -> io::Error {
    let ended = u32::try_from(code.into_inner())
        .ok()
        .map(StreamCode::from_u32)
        .and_then(SessionEnded::from_code);
    match ended {
        Some(ended) => io::Error::new(io::ErrorKind::ConnectionReset, ended),
        None => err.into(),
    }
}

impl Drop for QuicRecv {
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
    fn a_session_end_code_reads_as_its_session_end_and_others_as_quinn_says() {
        let stalled = quinn::VarInt::from(codes::stream::STALLED.to_u32());
        let err = ended_or(stalled, quinn::ReadError::Reset(stalled));
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert_eq!(
            err.get_ref().and_then(|e| e.downcast_ref::<SessionEnded>()),
            Some(&SessionEnded::Stalled)
        );
        // A code of the application's own passes through as quinn's error.
        let own = quinn::VarInt::from_u32(0x4242);
        let err = ended_or(own, quinn::ReadError::Reset(own));
        assert!(err
            .get_ref()
            .and_then(|e| e.downcast_ref::<SessionEnded>())
            .is_none());
    }
}
