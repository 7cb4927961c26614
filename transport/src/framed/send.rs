//! The sending side: [`FramedSend`], which queues `DATA` for the writer task, and the
//! writer task, which batches what is queued into writes, sends `PING`s when idle,
//! and gives up on a peer that takes nothing for the write timeout.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use blindrelay_protocol::stream_frame::{StreamFrame, MAX_DATA_LEN, MAX_FRAME_LEN};
use blindrelay_protocol::StreamCode;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::{Connection, ConnectionError, SendError, Shared, State, LINGER, WRITE_BATCH};

/// The sending half of a framed connection's stream.
pub struct FramedSend {
    pub(super) shared: Arc<Shared>,
}

impl std::fmt::Debug for FramedSend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FramedSend").finish_non_exhaustive()
    }
}

impl Drop for FramedSend {
    fn drop(&mut self) {
        // Like a QUIC stream dropped unfinished: what was written still goes, then
        // the end.
        self.finish();
        self.shared.release();
    }
}

impl FramedSend {
    /// Queues up to [`MAX_DATA_LEN`] bytes from the front of `bytes` as one frame,
    /// taking them off, once there is room; returns how many. Cancel-safe: the bytes
    /// are either queued and taken, or left in `bytes`.
    pub fn poll_write_bytes(
        &mut self,
        cx: &mut Context<'_>,
        bytes: &mut Bytes,
    ) -> Poll<Result<usize, SendError>> {
        let mut state = self.shared.lock();
        if let Err(err) = writable(&state) {
            return Poll::Ready(Err(err));
        }
        if bytes.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if state.queued_len >= self.shared.config.send_buffer {
            state.send_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let chunk = bytes.split_to(bytes.len().min(MAX_DATA_LEN));
        let len = chunk.len();
        state.queued_len += len;
        state.queued.push_back(chunk);
        drop(state);
        self.shared.writer.notify_one();
        Poll::Ready(Ok(len))
    }

    /// [`FramedSend::poll_write_bytes`] as a future.
    pub async fn write_some(&mut self, bytes: &mut Bytes) -> Result<usize, SendError> {
        std::future::poll_fn(|cx| self.poll_write_bytes(cx, bytes)).await
    }

    /// Writes all of `bytes`. A message of at most [`MAX_DATA_LEN`] bytes goes in one
    /// frame.
    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<(), SendError> {
        let mut bytes = Bytes::copy_from_slice(bytes);
        while !bytes.is_empty() {
            self.write_some(&mut bytes).await?;
        }
        Ok(())
    }

    /// Ends the direction cleanly after what was written. Idempotent.
    pub fn finish(&mut self) {
        self.shared.update(|state| {
            if !state.send_closed {
                state.send_closed = true;
                state.fin = true;
            }
        });
    }

    /// Ends the direction at once with `code`; what is still queued is dropped.
    pub fn reset(&mut self, code: StreamCode) {
        self.shared.update(|state| {
            if !state.send_closed || (state.fin && !state.send_done) {
                state.send_closed = true;
                state.fin = false;
                state.reset = Some(code);
                state.queued.clear();
                state.queued_len = 0;
            }
        });
    }

    /// Resolves with the peer's code once it asks this end to stop sending (seen
    /// when the receiving half reads it), or with `None` once the direction is over
    /// otherwise (its end written, or the connection over). Owns what it needs.
    pub fn stopped(&self) -> impl Future<Output = Option<StreamCode>> + Send + 'static {
        let shared = self.shared.clone();
        async move {
            loop {
                let changed = shared.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                {
                    let state = shared.lock();
                    if let Some(code) = state.peer_stop {
                        return Some(code);
                    }
                    if state.send_done || state.error.is_some() {
                        return None;
                    }
                }
                changed.await;
            }
        }
    }

    /// A handle on this stream's connection.
    pub fn connection(&self) -> Connection {
        Connection {
            shared: self.shared.acquire(),
        }
    }
}

/// Whether a writer may still write.
pub(super) fn writable(state: &State) -> Result<(), SendError> {
    if let Some(code) = state.peer_stop {
        return Err(SendError::Stopped(code));
    }
    if let Some(error) = &state.error {
        return Err(SendError::Connection(error.clone()));
    }
    if state.send_closed {
        return Err(SendError::Finished);
    }
    Ok(())
}

impl AsyncWrite for FramedSend {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut bytes = Bytes::copy_from_slice(&buf[..buf.len().min(MAX_DATA_LEN)]);
        self.poll_write_bytes(cx, &mut bytes).map_err(send_io_error)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The writer task sends whatever is queued as soon as it can.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.finish();
        Poll::Ready(Ok(()))
    }
}

/// A send error as an `io::Error` that still carries it.
pub fn send_io_error(err: SendError) -> io::Error {
    let kind = match &err {
        SendError::Stopped(_) | SendError::Finished => io::ErrorKind::BrokenPipe,
        SendError::Connection(_) => io::ErrorKind::ConnectionAborted,
    };
    io::Error::new(kind, err)
}

/// What the writer does next.
pub(super) enum Next {
    /// Write these bytes.
    Write,
    /// Write these bytes, then shut the connection down.
    WriteAndEnd,
    /// Nothing to do now.
    Wait,
    /// Nothing more will ever be sent.
    End,
}

/// Moves what is due into `out`: a `CLOSE` alone, else `STOP`, `PONG`, then the
/// `RESET` or the data and its `FIN`.
pub(super) fn collect(state: &mut State, out: &mut BytesMut) -> Next {
    if let Some((code, reason)) = state.close.take() {
        StreamFrame::Close { code, reason }.encode(out);
        return Next::WriteAndEnd;
    }
    if state.error.is_some() {
        return Next::End;
    }
    if let Some(code) = state.stop.take() {
        StreamFrame::Stop(code).encode(out);
    }
    if let Some(opaque) = state.pong.take() {
        StreamFrame::Pong(opaque).encode(out);
    }
    if !state.send_done {
        if let Some(code) = state.reset.take() {
            StreamFrame::Reset(code).encode(out);
            state.send_done = true;
        } else {
            while out.len() < WRITE_BATCH {
                let Some(chunk) = state.queued.pop_front() else {
                    break;
                };
                state.queued_len -= chunk.len();
                StreamFrame::Data(chunk).encode(out);
            }
            if state.fin && state.queued.is_empty() {
                StreamFrame::Fin.encode(out);
                state.send_done = true;
            }
        }
        if let Some(waker) = state.send_waker.take() {
            waker.wake();
        }
    }
    if !out.is_empty() {
        return Next::Write;
    }
    let both_done = state.send_done && (state.recv_done || state.peer_end.is_some());
    if state.handles == 0 || both_done {
        Next::End
    } else {
        Next::Wait
    }
}

/// The writer task: sends what the halves queue, until the connection is over.
pub(super) async fn write_loop<W: AsyncWrite + Send>(write: W, shared: Arc<Shared>) {
    let mut write = Box::pin(write);
    let config = shared.config;
    let mut out = BytesMut::with_capacity(WRITE_BATCH + MAX_FRAME_LEN);
    let mut last_ping = Instant::now();
    loop {
        let woken = shared.writer.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let next = collect(&mut shared.lock(), &mut out);
        match next {
            Next::Write | Next::WriteAndEnd => {
                shared.lock().writing = true;
                let sent = send(&mut write, &out, &shared).await;
                shared.lock().writing = false;
                if let Err(error) = sent {
                    shared.fail(error);
                    return;
                }
                out.clear();
                if matches!(next, Next::WriteAndEnd) {
                    break;
                }
                shared.changed.notify_waiters();
            }
            Next::End => break,
            Next::Wait => match config.keep_alive {
                Some(every) => {
                    // Due `every` after the later of the last word from the peer and
                    // the last ping.
                    let heard = shared.lock().last_heard.unwrap_or(last_ping);
                    let due = heard.max(last_ping) + every;
                    tokio::select! {
                        () = &mut woken => {}
                        () = tokio::time::sleep_until(due) => {
                            let heard = shared.lock().last_heard.unwrap_or(last_ping);
                            if heard.max(last_ping) + every <= Instant::now() {
                                StreamFrame::Ping(fastrand::u64(..).to_be_bytes()).encode(&mut out);
                                last_ping = Instant::now();
                            }
                        }
                    }
                }
                None => woken.await,
            },
        }
    }
    // Both directions are over, or every handle is gone: so is the connection.
    shared.fail(ConnectionError::Ended);
    // A clean end of the byte stream (TLS close_notify, then TCP FIN), within the
    // linger time.
    let _ = tokio::time::timeout(LINGER, write.shutdown()).await;
}

/// Writes `out` and flushes it, within the write timeout, cut to [`LINGER`] once
/// every half and handle is gone.
pub(super) async fn send<W: AsyncWrite + Send>(
    write: &mut Pin<Box<W>>,
    out: &[u8],
    shared: &Shared,
) -> Result<(), ConnectionError> {
    let io = async {
        write.write_all(out).await?;
        write.flush().await
    };
    tokio::pin!(io);
    let deadline = tokio::time::sleep(shared.config.write_timeout);
    tokio::pin!(deadline);
    let mut lingering = false;
    loop {
        if !lingering && shared.lock().handles == 0 {
            lingering = true;
            let linger = Instant::now() + LINGER;
            if linger < deadline.deadline() {
                deadline.as_mut().reset(linger);
            }
        }
        tokio::select! {
            result = &mut io => return result.map_err(|err| ConnectionError::Io(err.kind())),
            () = &mut deadline => return Err(ConnectionError::WriteStalled),
            () = shared.abandoned.notified(), if !lingering => {}
        }
    }
}
