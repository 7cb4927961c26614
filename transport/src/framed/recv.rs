//! The receiving side: the reader task, which reads frames as they come (`DATA` into
//! the queue, the control frames acted on at once) and stops reading while the queue
//! is full, and [`FramedRecv`], which hands the queue out as chunks.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use blindrelay_protocol::stream_frame::{
    StreamFrame, DATA_HEADER_LEN, MAX_DATA_LEN, MAX_FRAME_LEN,
};
use blindrelay_protocol::StreamCode;
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::Instant;

use super::{Connection, ConnectionError, RecvError, Shared, State, JOIN_BELOW, LINGER};

/// The receiving half of a framed connection's stream.
pub struct FramedRecv {
    pub(super) shared: Arc<Shared>,
    /// What is left of a `DATA` frame a read took only part of.
    pub(super) pending: Option<Bytes>,
}

impl std::fmt::Debug for FramedRecv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FramedRecv").finish_non_exhaustive()
    }
}

impl Drop for FramedRecv {
    fn drop(&mut self) {
        // Like a QUIC stream dropped unread: the peer is asked to stop sending.
        self.stop(StreamCode::from_u32(0));
        self.shared.release();
    }
}

impl FramedRecv {
    /// The next chunk of at most `max` bytes (`max` > 0); `Ok(None)` once the peer
    /// finished its direction. Cancel-safe: a chunk is either returned or stays.
    pub fn poll_read_chunk(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<Result<Option<Bytes>, RecvError>> {
        if let Some(pending) = &mut self.pending {
            let chunk = pending.split_to(max.min(pending.len()));
            if pending.is_empty() {
                self.pending = None;
            }
            return Poll::Ready(Ok(Some(chunk)));
        }
        let mut state = self.shared.lock();
        if let Some(mut data) = state.next_data() {
            state.incoming_len -= data.len();
            drop(state);
            self.shared.room.notify_one();
            let chunk = data.split_to(max.min(data.len()));
            if !data.is_empty() {
                self.pending = Some(data);
            }
            return Poll::Ready(Ok(Some(chunk)));
        }
        if !state.recv_done {
            if let Some(end) = state.peer_end {
                state.recv_done = true;
                return Poll::Ready(match end {
                    None => Ok(None),
                    Some(code) => Err(RecvError::Reset(code)),
                });
            }
        } else if state.peer_end == Some(None) {
            // Read to its end already: the end again, as a finished reader says.
            return Poll::Ready(Ok(None));
        }
        if let Some(error) = state.error.clone() {
            return Poll::Ready(Err(RecvError::Connection(error)));
        }
        state.recv_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// [`FramedRecv::poll_read_chunk`] as a future.
    pub async fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>, RecvError> {
        std::future::poll_fn(|cx| self.poll_read_chunk(cx, max)).await
    }

    /// Fills `out` exactly; a clean end before that is [`ConnectionError::Ended`].
    pub async fn read_exact(&mut self, out: &mut [u8]) -> Result<(), RecvError> {
        let mut filled = 0;
        while filled < out.len() {
            match self.read_chunk(out.len() - filled).await? {
                Some(chunk) => {
                    out[filled..filled + chunk.len()].copy_from_slice(&chunk);
                    filled += chunk.len();
                }
                None => return Err(RecvError::Connection(ConnectionError::Ended)),
            }
        }
        Ok(())
    }

    /// Asks the peer to stop sending, with `code`; what arrived and what arrives
    /// after is discarded. Does nothing once the direction has ended.
    pub fn stop(&mut self, code: StreamCode) {
        self.pending = None;
        self.shared.update(|state| {
            if !state.recv_done {
                state.recv_done = true;
                state.clear_incoming();
                if state.peer_end.is_none() {
                    state.stop = Some(code);
                }
            }
        });
        self.shared.room.notify_one();
    }

    /// A handle on this stream's connection.
    pub fn connection(&self) -> Connection {
        Connection {
            shared: self.shared.acquire(),
        }
    }
}

impl AsyncRead for FramedRecv {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        match std::task::ready!(self.poll_read_chunk(cx, buf.remaining())) {
            Ok(Some(chunk)) => buf.put_slice(&chunk),
            Ok(None) => {}
            Err(err) => return Poll::Ready(Err(recv_io_error(err))),
        }
        Poll::Ready(Ok(()))
    }
}

/// A receive error as an `io::Error` that still carries it.
pub fn recv_io_error(err: RecvError) -> io::Error {
    let kind = match &err {
        RecvError::Reset(_) => io::ErrorKind::ConnectionReset,
        RecvError::Connection(_) => io::ErrorKind::ConnectionAborted,
    };
    io::Error::new(kind, err)
}

/// The reader task: reads frames as they come while the queue has room, acts on
/// the ones that concern the connection or the sending direction at once, and
/// queues data for [`FramedRecv`].
pub(super) async fn read_loop<R: AsyncRead + Send>(read: R, shared: Arc<Shared>) {
    let mut read = Box::pin(read);
    let mut buf = BytesMut::new();
    let config = shared.config;
    // One idle timer and one room waiter for the whole connection, moved on only
    // when they fire: making them anew for each read cost a peer's tiny reads (one
    // WebSocket message each) more than everything else the read does.
    let idle = tokio::time::sleep(config.idle_timeout);
    tokio::pin!(idle);
    let mut heard = Instant::now();
    let mut room = Box::pin(shared.room.notified());
    room.as_mut().enable();
    let mut read_at = None;
    loop {
        // Frames already read first; then, if the queue has room, the connection.
        let Some(next) = on_frames(&shared, &mut buf, read_at.take()) else {
            return;
        };
        if next.closing {
            drain(&mut read, &mut buf).await;
        }
        if next.over {
            return;
        }
        if next.full {
            room.as_mut().await;
            room.set(shared.room.notified());
            room.as_mut().enable();
            // Waiting for the receiving half to take its bytes is not the peer's
            // silence.
            heard = Instant::now();
            continue;
        }
        buf.reserve(MAX_FRAME_LEN);
        let read_some = tokio_util::io::read_buf(&mut read, &mut buf);
        tokio::pin!(read_some);
        let result = loop {
            tokio::select! {
                result = &mut read_some => break Ok(result),
                // Every handle gone: nobody will read what comes.
                () = room.as_mut() => {
                    room.set(shared.room.notified());
                    room.as_mut().enable();
                    break Err(None);
                }
                () = &mut idle => {
                    let due = heard + config.idle_timeout;
                    let now = Instant::now();
                    if due > now {
                        idle.as_mut().reset(due);
                        continue;
                    }
                    // Silent for the idle timeout, unless this end's own bytes are
                    // stuck on their way to it meanwhile: then the write timeout
                    // judges.
                    if !shared.lock().writing {
                        break Err(Some(()));
                    }
                    idle.as_mut().reset(now + config.idle_timeout);
                }
            }
        };
        match result {
            Err(None) => {}
            Ok(Ok(0)) => {
                shared.fail(ConnectionError::Ended);
                return;
            }
            Ok(Ok(_)) => {
                heard = Instant::now();
                read_at = Some(heard);
            }
            Ok(Err(err)) => {
                shared.fail(ConnectionError::Io(err.kind()));
                return;
            }
            Err(Some(())) => {
                shared.fail(ConnectionError::TimedOut);
                return;
            }
        }
    }
}

/// Reads and discards until the peer ends its side or [`LINGER`] passes: closing a
/// TCP socket with unread bytes in it resets the connection, and a reset makes the
/// peer's kernel throw away what it had not read yet, the last frames this end sent
/// (a `STOP` or `RESET` with its code, a `CLOSE`) included. So this end keeps
/// reading until the peer, having read them, stops sending.
pub(super) async fn drain<R: AsyncRead>(read: &mut Pin<Box<R>>, buf: &mut BytesMut) {
    let _ = tokio::time::timeout(LINGER, async {
        loop {
            buf.clear();
            buf.reserve(MAX_FRAME_LEN);
            match tokio_util::io::read_buf(read, buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// Acts on every complete frame at the front of `buf`, under one lock of the
/// state; `false` once the connection is over.
pub(super) fn on_frames(
    shared: &Shared,
    buf: &mut BytesMut,
    read_at: Option<Instant>,
) -> Option<ReaderNext> {
    let mut wake = Wake::default();
    let mut state = shared.lock();
    if read_at.is_some() {
        state.last_heard = read_at;
    }
    let over = loop {
        // Small DATA frames go straight from the read buffer into a joined block:
        // no slice, no queue entry, for each of a peer's tiny frames.
        if let Some(len) = small_data(buf) {
            if state.takes_data() {
                state.incoming_len += len;
                state.join(&buf[DATA_HEADER_LEN..DATA_HEADER_LEN + len]);
                wake.reader = true;
            }
            buf.advance(DATA_HEADER_LEN + len);
            continue;
        }
        match StreamFrame::decode(buf) {
            Ok(Some(frame)) => {
                if let Some(error) = on_frame(&mut state, frame, &mut wake) {
                    break Some(error);
                }
            }
            Ok(None) => break None,
            Err(err) => break Some(ConnectionError::Protocol(err)),
        }
    };
    let wakers = [
        wake.reader.then(|| state.recv_waker.take()).flatten(),
        wake.sender.then(|| state.send_waker.take()).flatten(),
    ];
    let closed_here = matches!(state.error, Some(ConnectionError::Closed(_)));
    let next = ReaderNext {
        over: state.error.is_some() || state.handles == 0,
        closing: state.handles == 0 || closed_here,
        full: state.incoming_len >= shared.config.recv_buffer,
    };
    drop(state);
    for waker in wakers.into_iter().flatten() {
        waker.wake();
    }
    if wake.writer {
        shared.writer.notify_one();
    }
    if wake.changed {
        shared.changed.notify_waiters();
    }
    match over {
        Some(error) => {
            shared.fail(error);
            None
        }
        None => Some(next),
    }
}

/// What the reader task does after the frames it has read, as the state says.
pub(super) struct ReaderNext {
    /// The connection is over, or nobody holds it any more: stop reading.
    over: bool,
    /// Read and discard until the peer stops sending, first (see [`drain`]).
    closing: bool,
    /// The queue holds all it may: wait for room before reading on.
    full: bool,
}

/// The length of the `DATA` frame complete at the front of `buf` when it is one
/// to be joined (shorter than [`JOIN_BELOW`]); what else is there is left to
/// [`StreamFrame::decode`].
pub(super) fn small_data(buf: &[u8]) -> Option<usize> {
    StreamFrame::complete_data_len(buf).filter(|len| *len < JOIN_BELOW)
}

/// Who to wake once the state's lock is given back.
#[derive(Default)]
pub(super) struct Wake {
    reader: bool,
    sender: bool,
    writer: bool,
    changed: bool,
}

/// Acts on one frame the peer sent; the error that ends the connection, if it does.
pub(super) fn on_frame(
    state: &mut State,
    frame: StreamFrame,
    wake: &mut Wake,
) -> Option<ConnectionError> {
    match frame {
        StreamFrame::Data(data) => {
            // After the end, or once this end stopped the direction: dropped, as
            // QUIC drops what arrives on a stopped stream.
            if state.takes_data() {
                state.incoming_len += data.len();
                state.queue(data);
                wake.reader = true;
            }
        }
        StreamFrame::Fin | StreamFrame::Reset(_) => {
            let end = match frame {
                StreamFrame::Reset(code) => {
                    // A reset drops what was not read yet, as QUIC's does.
                    state.clear_incoming();
                    Some(code)
                }
                _ => None,
            };
            state.peer_end.get_or_insert(end);
            wake.reader = true;
            // The writer may be done too now.
            wake.writer = true;
        }
        StreamFrame::Stop(code) => {
            state.peer_stop.get_or_insert(code);
            wake.sender = true;
            wake.writer = true;
            wake.changed = true;
        }
        StreamFrame::Ping(opaque) => {
            state.pong = Some(opaque);
            wake.writer = true;
        }
        StreamFrame::Pong(_) => {}
        StreamFrame::Close { code, reason } => {
            return Some(ConnectionError::ClosedByPeer { code, reason });
        }
    }
    None
}

impl State {
    /// Whether `DATA` that arrives now is kept for the reader.
    fn takes_data(&self) -> bool {
        !self.recv_done && self.peer_end.is_none()
    }

    /// Queues a `DATA` frame's payload that [`on_frames`] did not join (one of
    /// [`JOIN_BELOW`] bytes or more), after the block being joined.
    fn queue(&mut self, data: Bytes) {
        self.end_joined();
        self.incoming.push_back(data);
    }

    /// Appends a small frame's payload to the block being joined, starting a new
    /// block when it does not fit.
    fn join(&mut self, data: &[u8]) {
        if self.joining.capacity() - self.joining.len() < data.len() {
            self.end_joined();
            self.joining = BytesMut::with_capacity(MAX_DATA_LEN);
        }
        self.joining.extend_from_slice(data);
    }

    /// Queues the block being joined, so that what arrives next comes after it.
    fn end_joined(&mut self) {
        if !self.joining.is_empty() {
            let joined = self.joining.split().freeze();
            self.incoming.push_back(joined);
        }
    }

    /// The next data for the reader, oldest first.
    fn next_data(&mut self) -> Option<Bytes> {
        self.incoming
            .pop_front()
            .or_else(|| (!self.joining.is_empty()).then(|| self.joining.split().freeze()))
    }

    /// Drops every byte received and not read.
    fn clear_incoming(&mut self) {
        self.incoming.clear();
        self.joining.clear();
        self.incoming_len = 0;
    }
}
