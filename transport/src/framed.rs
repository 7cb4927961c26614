//! A connection that carries one stream in [`StreamFrame`]s: the stream transports'
//! equivalent of one bidirectional QUIC stream and its connection.
//!
//! [`framed`] splits a byte stream (TLS over TCP, or a WebSocket's bytes) into a
//! receiving half, a sending half and a handle on the connection:
//!
//! - A reader task reads frames as they come: `DATA` into a queue of at most
//!   [`Config::recv_buffer`] bytes for [`FramedRecv`], which hands them out as
//!   chunks, then `FIN` as the end and `RESET` as an error with its code. `STOP`,
//!   `PING` and `CLOSE` act at once, whether or not the application is reading, as
//!   QUIC's own frames do. A full queue stops the reading, so an application that
//!   stops reading stops the sender through TCP's own flow control (and a `STOP`
//!   behind that much unread data waits its turn).
//! - [`FramedSend`] queues `DATA` frames for a writer task, up to
//!   [`Config::send_buffer`] bytes; past that a write waits. `finish` and `reset` end
//!   the direction; a `STOP` from the other end fails the next write with its code.
//! - The writer task owns the byte stream's writing side. It batches queued frames
//!   into one write, sends `PING`s when idle if asked to, and gives up on a peer
//!   that takes nothing for [`Config::write_timeout`]. Once every half and handle is
//!   dropped it flushes what is left (within [`LINGER`]) and shuts the stream down.
//!
//! Every wait on the peer has a deadline: reading ends after
//! [`Config::idle_timeout`] with nothing received (while the queue has room),
//! writing after [`Config::write_timeout`] with nothing taken.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use blindrelay_protocol::stream_frame::{
    StreamFrame, DATA_HEADER_LEN, MAX_DATA_LEN, MAX_FRAME_LEN,
};
use blindrelay_protocol::{CloseCode, DecodeError, StreamCode};
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// How long a connection whose halves and handles are all dropped may take to
/// deliver what was queued before it (a refusal, the last bytes of a session).
pub const LINGER: Duration = Duration::from_secs(5);

/// How many bytes the writer joins into one write: a few TLS records.
const WRITE_BATCH: usize = 64 * 1024;

/// `DATA` frames shorter than this are copied together into blocks of
/// [`MAX_DATA_LEN`] as they arrive; longer ones are kept as slices of the buffer
/// they were read into. What read-ahead holds is then bounded by what it counts: a
/// slice keeps its whole read buffer (at most two frames' size) alive, so a kept
/// frame holds at most 4 times its length, and a queue entry of a few bytes, which
/// would keep a read buffer and an entry's overhead for each byte of a peer's tiny
/// frames, never exists. Writers send full frames when they have the bytes; the
/// copying is for the few that do not (and costs them one copy).
const JOIN_BELOW: usize = MAX_DATA_LEN / 2;

/// A framed connection's timers and buffer.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// The connection is closed when nothing arrives for this long while it is
    /// being read.
    pub idle_timeout: Duration,
    /// Sends a `PING` after this long without hearing from the peer, and again as
    /// long as it stays silent: its `PONG` shows it is there (well within the idle
    /// timeout, if this is well under it), and both ends' idle timers and NAT
    /// bindings stay fresh. `None`: never.
    pub keep_alive: Option<Duration>,
    /// Bytes queued for the writer beyond which a write waits.
    pub send_buffer: usize,
    /// Bytes received and not yet read beyond which the reader task stops reading
    /// the connection.
    pub recv_buffer: usize,
    /// The connection is given up when the peer takes nothing for this long while
    /// the writer has bytes for it. Longer than any pause an application may make
    /// in reading (a paused film): the relay's stall timeout, which ends a session
    /// with a code that says why, must come first.
    pub write_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(30),
            keep_alive: None,
            send_buffer: 64 * 1024,
            recv_buffer: 64 * 1024,
            write_timeout: Duration::from_secs(600),
        }
    }
}

/// Why a framed connection is over.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The peer closed it with a `CLOSE` frame.
    #[error("closed by the peer: {code} ({reason})")]
    ClosedByPeer {
        /// The peer's close code.
        code: CloseCode,
        /// The peer's words.
        reason: String,
    },
    /// This end closed it.
    #[error("closed by this end: {0}")]
    Closed(CloseCode),
    /// Nothing arrived for the idle timeout.
    #[error("nothing arrived within the idle timeout")]
    TimedOut,
    /// The peer took nothing for the write timeout.
    #[error("the peer took nothing within the write timeout")]
    WriteStalled,
    /// The byte stream ended without a `CLOSE` frame.
    #[error("the connection ended without a close")]
    Ended,
    /// Reading or writing the byte stream failed.
    #[error("transport error: {0}")]
    Io(io::ErrorKind),
    /// The peer sent something that is not a valid frame.
    #[error("the peer broke the stream framing: {0}")]
    Protocol(DecodeError),
}

/// How a read ended, other than with bytes or a clean end.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecvError {
    /// The peer reset its direction with this code.
    #[error("stream reset by the peer: {0}")]
    Reset(StreamCode),
    /// The connection is over.
    #[error(transparent)]
    Connection(ConnectionError),
}

/// How a write failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The peer asked this end to stop sending, with this code.
    #[error("the peer stopped the stream: {0}")]
    Stopped(StreamCode),
    /// This direction was already finished or reset.
    #[error("the stream was already finished or reset")]
    Finished,
    /// The connection is over.
    #[error(transparent)]
    Connection(ConnectionError),
}

/// What the halves, the handle and the writer share.
#[derive(Default)]
struct State {
    /// `DATA` frames waiting for the writer, and their bytes.
    queued: VecDeque<Bytes>,
    queued_len: usize,
    /// The sending direction is over for writers: finished or reset.
    send_closed: bool,
    /// A `FIN` goes after the queued data.
    fin: bool,
    /// A `RESET` goes instead of the queued data.
    reset: Option<StreamCode>,
    /// A `STOP` to send.
    stop: Option<StreamCode>,
    /// The answer to the last `PING`.
    pong: Option<[u8; 8]>,
    /// A `CLOSE` to send; nothing else is sent once it is set.
    close: Option<(CloseCode, String)>,
    /// The writer wrote the `FIN` or `RESET`.
    send_done: bool,
    /// The peer's `STOP`, if it sent one.
    peer_stop: Option<StreamCode>,
    /// `DATA` received and not yet read, and its bytes (those of `joining`
    /// included).
    incoming: VecDeque<Bytes>,
    incoming_len: usize,
    /// Small `DATA` frames copied together, read after `incoming` (see
    /// [`JOIN_BELOW`]).
    joining: BytesMut,
    /// How the peer's direction ended, once it did: `FIN` (`None`) or `RESET`.
    peer_end: Option<Option<StreamCode>>,
    /// The receiving half has taken the end, or stopped the direction: what
    /// arrives now is discarded.
    recv_done: bool,
    /// The receiving half, waiting for data.
    recv_waker: Option<Waker>,
    /// Set once the connection is over.
    error: Option<ConnectionError>,
    /// The sending half, waiting for room.
    send_waker: Option<Waker>,
    /// Halves and handles alive.
    handles: usize,
    /// A write is on its way to the peer now: while it is, the peer's silence is
    /// the write timeout's to judge, not the idle timeout's (a peer whose
    /// application pauses stops reading, and its `PONG`s wait behind our bytes).
    writing: bool,
    /// When the last bytes from the peer arrived.
    last_heard: Option<Instant>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the writer: something to send, or every handle gone.
    writer: Notify,
    /// Wakes whoever waits for the connection or the sending direction to end.
    changed: Notify,
    /// Wakes a writer blocked on the peer once every half and handle is gone.
    abandoned: Notify,
    /// Wakes the reader task: room in the queue, or every handle gone.
    room: Notify,
    config: Config,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; a poisoned one still holds a
        // consistent state.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Ends the connection with `error` (the first one set stays), waking everyone.
    fn fail(&self, error: ConnectionError) -> ConnectionError {
        let error = {
            let mut state = self.lock();
            let error = state.error.get_or_insert(error).clone();
            for waker in [state.send_waker.take(), state.recv_waker.take()]
                .into_iter()
                .flatten()
            {
                waker.wake();
            }
            error
        };
        self.writer.notify_one();
        self.room.notify_one();
        self.changed.notify_waiters();
        error
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.lock());
        self.writer.notify_one();
        self.changed.notify_waiters();
    }

    fn acquire(self: &Arc<Self>) -> Arc<Self> {
        self.lock().handles += 1;
        self.clone()
    }

    fn release(&self) {
        let last = {
            let mut state = self.lock();
            state.handles -= 1;
            state.handles == 0
        };
        if last {
            self.writer.notify_one();
            self.abandoned.notify_one();
            self.room.notify_one();
        }
    }
}

/// Splits `io` into the halves of its one stream and a handle on the connection,
/// and spawns the writer task on the current tokio runtime.
pub fn framed<IO>(io: IO, config: Config) -> (FramedSend, FramedRecv, Connection)
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read, write) = tokio::io::split(io);
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        writer: Notify::new(),
        changed: Notify::new(),
        abandoned: Notify::new(),
        room: Notify::new(),
        config,
    });
    let send = FramedSend {
        shared: shared.acquire(),
    };
    let recv = FramedRecv {
        shared: shared.acquire(),
        pending: None,
    };
    let connection = Connection {
        shared: shared.acquire(),
    };
    tokio::spawn(read_loop(read, shared.clone()));
    tokio::spawn(write_loop(write, shared));
    (send, recv, connection)
}

/// A handle on a framed connection: close it, or learn how it ended.
pub struct Connection {
    shared: Arc<Shared>,
}

impl Clone for Connection {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.acquire(),
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.shared.release();
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").finish_non_exhaustive()
    }
}

impl Connection {
    /// Closes the connection: a `CLOSE` frame with `code` and `reason` is the last
    /// thing sent; queued data is dropped, and both halves fail from now on.
    pub fn close(&self, code: CloseCode, reason: &str) {
        {
            let mut state = self.shared.lock();
            if state.error.is_some() {
                return;
            }
            state.close = Some((code, reason.to_owned()));
        }
        self.shared.fail(ConnectionError::Closed(code));
    }

    /// Resolves once the connection is over, with why.
    pub async fn closed(&self) -> ConnectionError {
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(error) = self.shared.lock().error.clone() {
                return error;
            }
            changed.await;
        }
    }

    /// Why the connection is over, if it is.
    pub fn close_reason(&self) -> Option<ConnectionError> {
        self.shared.lock().error.clone()
    }
}

/// The sending half of a framed connection's stream.
pub struct FramedSend {
    shared: Arc<Shared>,
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
fn writable(state: &State) -> Result<(), SendError> {
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

/// The receiving half of a framed connection's stream.
pub struct FramedRecv {
    shared: Arc<Shared>,
    /// What is left of a `DATA` frame a read took only part of.
    pending: Option<Bytes>,
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
async fn read_loop<R: AsyncRead + Send>(read: R, shared: Arc<Shared>) {
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
async fn drain<R: AsyncRead>(read: &mut Pin<Box<R>>, buf: &mut BytesMut) {
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
fn on_frames(shared: &Shared, buf: &mut BytesMut, read_at: Option<Instant>) -> Option<ReaderNext> {
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
struct ReaderNext {
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
fn small_data(buf: &[u8]) -> Option<usize> {
    StreamFrame::complete_data_len(buf).filter(|len| *len < JOIN_BELOW)
}

/// Who to wake once the state's lock is given back.
#[derive(Default)]
struct Wake {
    reader: bool,
    sender: bool,
    writer: bool,
    changed: bool,
}

/// Acts on one frame the peer sent; the error that ends the connection, if it does.
fn on_frame(state: &mut State, frame: StreamFrame, wake: &mut Wake) -> Option<ConnectionError> {
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

/// What the writer does next.
enum Next {
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
fn collect(state: &mut State, out: &mut BytesMut) -> Next {
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
async fn write_loop<W: AsyncWrite + Send>(write: W, shared: Arc<Shared>) {
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
async fn send<W: AsyncWrite + Send>(
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

#[cfg(test)]
mod tests {
    use super::*;
    use blindrelay_protocol::codes::{close, stream};
    use tokio::io::{AsyncReadExt, DuplexStream};

    fn pair(
        config: Config,
    ) -> (
        (FramedSend, FramedRecv, Connection),
        (FramedSend, FramedRecv, Connection),
    ) {
        let (a, b) = tokio::io::duplex(256 * 1024);
        (framed(a, config), framed(b, config))
    }

    async fn read_to_end(recv: &mut FramedRecv) -> Result<Vec<u8>, RecvError> {
        let mut all = Vec::new();
        while let Some(chunk) = recv.read_chunk(100_000).await? {
            all.extend_from_slice(&chunk);
        }
        Ok(all)
    }

    /// A peer that sends its bytes one per `DATA` frame, to a reader that reads
    /// nothing: the read-ahead stops at its buffer, held in a few joined blocks
    /// rather than one entry (and one pinned read buffer) per byte; then every byte
    /// arrives, in order, with larger frames between the tiny ones.
    #[tokio::test]
    async fn tiny_frames_are_joined_and_their_read_ahead_stays_bounded() {
        let config = Config::default();
        let (raw, io) = tokio::io::duplex(1 << 20);
        let (_send, mut recv, _connection) = framed(io, config);
        let (_raw_read, mut raw_write) = tokio::io::split(raw);
        let mut wire = BytesMut::new();
        let mut expected = Vec::new();
        for i in 0..200_000u32 {
            let byte = (i % 253) as u8;
            expected.push(byte);
            StreamFrame::Data(Bytes::from(vec![byte])).encode(&mut wire);
            if i % 50_000 == 0 {
                // A frame long enough to be kept as it is, between tiny ones.
                let long: Vec<u8> = (0..JOIN_BELOW as u32).map(|j| (j % 7) as u8).collect();
                expected.extend_from_slice(&long);
                StreamFrame::Data(Bytes::from(long)).encode(&mut wire);
            }
        }
        StreamFrame::Fin.encode(&mut wire);
        let writing = tokio::spawn(async move {
            raw_write.write_all(&wire).await.expect("raw write");
            raw_write
        });
        // Read-ahead fills to its buffer (and at most one read beyond) and stops.
        let held = |recv: &FramedRecv| {
            let state = recv.shared.lock();
            (state.incoming_len, state.incoming.len())
        };
        let filled = tokio::time::timeout(Duration::from_secs(5), async {
            while held(&recv).0 < config.recv_buffer {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(filled.is_ok(), "read-ahead reached {:?}", held(&recv));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (bytes, entries) = held(&recv);
        assert!(
            bytes <= config.recv_buffer + MAX_FRAME_LEN,
            "read ahead {bytes} bytes"
        );
        assert!(
            entries <= bytes / (MAX_DATA_LEN / 4) + 2,
            "{bytes} bytes held in {entries} entries"
        );
        assert_eq!(read_to_end(&mut recv).await.expect("read"), expected);
        drop(writing.await);
    }

    /// The bytes the read-ahead really holds (its entries and the block being
    /// joined, counted from themselves), and what it counts.
    fn held(recv: &FramedRecv) -> (usize, usize) {
        let state = recv.shared.lock();
        let held = state.incoming.iter().map(Bytes::len).sum::<usize>() + state.joining.len();
        (held, state.incoming_len)
    }

    /// Waits (at most 5 s) until `what` holds of `recv`.
    async fn until(recv: &FramedRecv, what: impl Fn((usize, usize)) -> bool) {
        let reached = tokio::time::timeout(Duration::from_secs(5), async {
            while !what(held(recv)) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(reached.is_ok(), "read-ahead at {:?}", held(recv));
    }

    /// `count` one-byte DATA frames.
    fn tiny_frames(count: usize) -> Vec<u8> {
        let mut wire = BytesMut::new();
        for _ in 0..count {
            StreamFrame::Data(Bytes::from_static(&[7])).encode(&mut wire);
        }
        wire.to_vec()
    }

    /// What the reader takes leaves the count, and the read-ahead fills up to its
    /// bound again, no further: the count stays what is really held.
    #[tokio::test]
    async fn the_read_ahead_counts_what_it_holds_as_it_is_read() {
        let config = Config::default();
        let (raw, io) = tokio::io::duplex(1 << 20);
        let (_send, mut recv, _connection) = framed(io, config);
        let (_raw_read, mut raw_write) = tokio::io::split(raw);
        let writing = tokio::spawn(async move {
            let _ = raw_write.write_all(&tiny_frames(200_000)).await;
            raw_write
        });
        until(&recv, |(held, _)| held >= config.recv_buffer).await;
        for _ in 0..3 {
            let mut taken = 0;
            while taken < config.recv_buffer / 2 {
                taken += recv
                    .read_chunk(4096)
                    .await
                    .expect("read")
                    .expect("bytes")
                    .len();
            }
            until(&recv, |(held, _)| held >= config.recv_buffer).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            let (held, counted) = held(&recv);
            assert_eq!(held, counted, "the count is what is held");
            assert!(
                held <= config.recv_buffer + MAX_FRAME_LEN,
                "read ahead {held}"
            );
        }
        writing.abort();
    }

    /// Stopping the direction drops what was read ahead, and what arrives after
    /// is not kept either.
    #[tokio::test]
    async fn a_stopped_direction_holds_nothing() {
        let (raw, io) = tokio::io::duplex(1 << 20);
        let (_send, mut recv, _connection) = framed(io, Config::default());
        let (mut raw_read, mut raw_write) = tokio::io::split(raw);
        raw_write.write_all(&tiny_frames(1000)).await.expect("raw");
        until(&recv, |(held, _)| held == 1000).await;
        recv.stop(StreamCode::from_u32(9));
        assert_eq!(held(&recv), (0, 0), "dropped at the stop");
        raw_write.write_all(&tiny_frames(1000)).await.expect("raw");
        // A PING behind them: once its PONG is back, they were all read.
        let mut ping = BytesMut::new();
        StreamFrame::Ping([5; 8]).encode(&mut ping);
        raw_write.write_all(&ping).await.expect("raw");
        let mut back = BytesMut::new();
        let pong = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match StreamFrame::decode(&mut back).expect("frames") {
                    Some(StreamFrame::Pong(opaque)) => break opaque,
                    Some(_) => {}
                    None => {
                        let mut buf = [0u8; 256];
                        let n = tokio::io::AsyncReadExt::read(&mut raw_read, &mut buf)
                            .await
                            .expect("raw read");
                        assert!(n > 0, "the connection stays up");
                        back.extend_from_slice(&buf[..n]);
                    }
                }
            }
        })
        .await
        .expect("the PONG");
        assert_eq!(pong, [5; 8]);
        assert_eq!(held(&recv), (0, 0), "nothing kept after the stop");
    }

    /// A stream read to its end says so again, and reads as an `AsyncRead` too.
    #[tokio::test]
    async fn an_ended_stream_reads_as_ended_and_as_an_async_read() {
        let ((mut a_send, _a_recv, _a), (_b_send, mut b_recv, _b)) = pair(Config::default());
        a_send.write_all(b"every byte").await.expect("write");
        a_send.finish();
        let mut all = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut b_recv, &mut all)
            .await
            .expect("read");
        assert_eq!(all, b"every byte");
        assert_eq!(b_recv.read_chunk(10).await.expect("again"), None);
        let mut none = [0u8; 0];
        assert_eq!(
            tokio::io::AsyncReadExt::read(&mut b_recv, &mut none)
                .await
                .expect("empty"),
            0
        );
    }

    #[tokio::test]
    async fn bytes_and_a_clean_end_cross_in_both_directions() {
        let ((mut a_send, mut a_recv, _a), (mut b_send, mut b_recv, _b)) = pair(Config::default());
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            a_send.write_all(&sent).await.expect("write");
            a_send.finish();
            a_send
        });
        assert_eq!(read_to_end(&mut b_recv).await.expect("read"), data);
        b_send.write_all(b"back").await.expect("write back");
        b_send.finish();
        assert_eq!(read_to_end(&mut a_recv).await.expect("read back"), b"back");
        let a_send = writer.await.expect("writer");
        // Both ends written and read: the sending side's end is delivered.
        assert_eq!(a_send.stopped().await, None);
    }

    #[tokio::test]
    async fn a_reset_arrives_with_its_code_and_drops_what_was_queued() {
        let ((mut a_send, _a_recv, _a), (_b_send, mut b_recv, _b)) = pair(Config::default());
        a_send.write_all(b"hello").await.expect("write");
        assert_eq!(
            b_recv.read_chunk(100).await,
            Ok(Some(Bytes::from_static(b"hello")))
        );
        a_send.reset(stream::BYTE_LIMIT);
        assert_eq!(
            b_recv.read_chunk(100).await,
            Err(RecvError::Reset(stream::BYTE_LIMIT))
        );
        assert_eq!(a_send.write_all(b"more").await, Err(SendError::Finished));
    }

    #[tokio::test]
    async fn a_stop_fails_the_peers_writes_with_its_code_without_any_read() {
        // The sending end never reads: its STOP still arrives, as QUIC's does.
        let ((mut a_send, _a_recv, _a), (_b_send, mut b_recv, _b)) = pair(Config::default());
        b_recv.stop(stream::REFUSED);
        assert_eq!(a_send.stopped().await, Some(stream::REFUSED));
        assert_eq!(
            a_send.write_all(b"x").await,
            Err(SendError::Stopped(stream::REFUSED))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_application_that_does_not_read_holds_one_receive_buffer() {
        let config = Config {
            recv_buffer: 32 * 1024,
            idle_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(600),
            ..Config::default()
        };
        let ((mut a_send, _a_recv, _a), (_b_send, mut b_recv, _b)) = pair(config);
        // The writer pushes until everything between is full: what it got rid of is
        // the receive queue, the pipe and the writer's own buffers, never more.
        let mut accepted = 0usize;
        let chunk = Bytes::from(vec![1u8; 1000]);
        let fill = async {
            loop {
                let mut bytes = chunk.clone();
                if a_send.write_some(&mut bytes).await.is_err() {
                    break;
                }
                accepted += 1000;
            }
        };
        // Long past the idle timeout: a full queue is the application's slowness,
        // not the peer's silence, and nothing is cut.
        let _ = tokio::time::timeout(Duration::from_secs(60), fill).await;
        let bound = 32 * 1024 + 256 * 1024 + WRITE_BATCH + 64 * 1024 + 2 * MAX_FRAME_LEN;
        assert!(accepted <= bound, "{accepted} > {bound}");
        // Everything still arrives, in order, once the application reads.
        drop(a_send);
        let got = read_to_end(&mut b_recv)
            .await
            .expect("read after the stall");
        assert_eq!(got.len(), accepted);
    }

    #[tokio::test]
    async fn a_close_reaches_the_peer_with_its_code_and_words() {
        let ((_a_send, _a_recv, a), (_b_send, mut b_recv, b)) = pair(Config::default());
        a.close(close::REPLACED, "replaced");
        let expected = ConnectionError::ClosedByPeer {
            code: close::REPLACED,
            reason: "replaced".into(),
        };
        assert_eq!(
            b_recv.read_chunk(10).await,
            Err(RecvError::Connection(expected.clone()))
        );
        assert_eq!(b.closed().await, expected);
        assert_eq!(a.closed().await, ConnectionError::Closed(close::REPLACED));
    }

    #[tokio::test]
    async fn garbage_ends_the_connection_as_a_protocol_error() {
        let (mut raw, other) = tokio::io::duplex(1024);
        let (_send, mut recv, connection) = framed(other, Config::default());
        use tokio::io::AsyncWriteExt as _;
        raw.write_all(&[0x07, 1, 2, 3])
            .await
            .expect("write garbage");
        let err = recv.read_chunk(10).await.expect_err("garbage refused");
        assert!(
            matches!(err, RecvError::Connection(ConnectionError::Protocol(_))),
            "{err:?}"
        );
        assert!(matches!(
            connection.closed().await,
            ConnectionError::Protocol(_)
        ));
        // Over: this end lets go of the socket, though every handle is still held.
        use tokio::io::AsyncReadExt as _;
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut rest))
            .await
            .expect("the connection is let go")
            .expect("read to its end");
    }

    /// A connection that failed on this end's side (here: its writes timed out) stops
    /// reading at once, though every handle is still held: what the peer sends then
    /// finds nobody, instead of filling a queue nobody will read.
    #[tokio::test]
    async fn a_connection_whose_writes_failed_stops_reading() {
        use tokio::io::AsyncWriteExt as _;
        let (mut raw, other) = tokio::io::duplex(1024);
        let config = Config {
            write_timeout: Duration::from_millis(100),
            ..Config::default()
        };
        let (mut send, _recv, connection) = framed(other, config);
        // The peer reads nothing: the write times out and fails the connection.
        let _ = send.write_all(&[0x55; 64 << 10]).await;
        assert!(
            matches!(connection.closed().await, ConnectionError::WriteStalled),
            "{:?}",
            connection.close_reason()
        );
        let mut data = BytesMut::new();
        for _ in 0..64 {
            StreamFrame::Data(Bytes::from_static(&[0x42; 1024])).encode(&mut data);
        }
        let sent = tokio::time::timeout(Duration::from_secs(5), raw.write_all(&data)).await;
        assert!(
            matches!(sent, Ok(Err(_))),
            "the peer's bytes should find the connection let go, got {sent:?}"
        );
    }

    /// What the peer still sends once this end is done is read and discarded until
    /// the peer stops (a TCP socket closed with unread bytes resets, and the peer
    /// loses this end's last frames): after every handle is dropped, and after a
    /// close of this end's own while handles remain.
    #[tokio::test]
    async fn a_connection_this_end_is_done_with_reads_on_until_its_peer_stops() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        for how in ["dropped", "closed"] {
            let (mut raw, other) = tokio::io::duplex(1024);
            let (send, recv, connection) = framed(other, Config::default());
            let held = match how {
                "dropped" => {
                    drop((send, recv, connection));
                    None
                }
                _ => {
                    connection.close(CloseCode::from_u32(7), "done");
                    Some((send, recv, connection))
                }
            };
            // 64 KiB through a 1 KiB pipe: only a reader that drains takes it.
            let flood = async {
                for _ in 0..16 {
                    raw.write_all(&[0u8; 4096]).await?;
                }
                raw.shutdown().await
            };
            tokio::time::timeout(Duration::from_secs(5), flood)
                .await
                .unwrap_or_else(|_| panic!("{how}: the reader stopped taking bytes"))
                .unwrap_or_else(|err| panic!("{how}: the connection was let go early: {err}"));
            let mut rest = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut rest))
                .await
                .unwrap_or_else(|_| panic!("{how}: let go once the peer stopped"))
                .expect("read to its end");
            drop(held);
        }
    }

    #[tokio::test]
    async fn a_ping_is_answered() {
        let (mut raw, other) = tokio::io::duplex(1024);
        let (_send, mut recv, _connection) = framed(other, Config::default());
        let mut ping = BytesMut::new();
        StreamFrame::Ping(*b"12345678").encode(&mut ping);
        StreamFrame::Data(Bytes::from_static(b"x")).encode(&mut ping);
        use tokio::io::AsyncWriteExt as _;
        raw.write_all(&ping).await.expect("write ping");
        assert_eq!(
            recv.read_chunk(10).await,
            Ok(Some(Bytes::from_static(b"x")))
        );
        let mut pong = [0u8; 9];
        raw.read_exact(&mut pong).await.expect("pong");
        assert_eq!(pong, *b"\x0612345678");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_is_cut_at_the_idle_timeout() {
        let (_raw, other): (DuplexStream, _) = tokio::io::duplex(1024);
        let config = Config {
            idle_timeout: Duration::from_secs(30),
            ..Config::default()
        };
        let (_send, mut recv, _connection) = framed(other, config);
        let started = Instant::now();
        let err = recv.read_chunk(10).await.expect_err("cut");
        assert_eq!(err, RecvError::Connection(ConnectionError::TimedOut));
        assert!(started.elapsed() >= Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_reads_nothing_holds_one_buffer_then_is_given_up() {
        // A small pipe, never read: the writer fills it, the queue fills behind it,
        // and writes wait instead of buffering more.
        let (_raw, other): (DuplexStream, _) = tokio::io::duplex(4096);
        let config = Config {
            send_buffer: 32 * 1024,
            write_timeout: Duration::from_secs(10),
            ..Config::default()
        };
        let (mut send, _recv, connection) = framed(other, config);
        let mut accepted = 0usize;
        let chunk = Bytes::from(vec![7u8; 1000]);
        let fill = async {
            loop {
                let mut bytes = chunk.clone();
                send.write_some(&mut bytes).await?;
                accepted += 1000;
            }
        };
        let result: Result<(), SendError> = fill.await;
        // Queue (32 KiB) + one write batch (64 KiB + a frame) + the pipe (4 KiB).
        assert!(
            accepted <= 32 * 1024 + WRITE_BATCH + MAX_FRAME_LEN + 4096 + 1000,
            "{accepted}"
        );
        assert_eq!(
            result,
            Err(SendError::Connection(ConnectionError::WriteStalled))
        );
        assert_eq!(connection.closed().await, ConnectionError::WriteStalled);
    }

    #[tokio::test(start_paused = true)]
    async fn a_one_way_stream_stays_up_on_keep_alives() {
        // The receiver's application says nothing for a minute, twice the idle
        // timeout, while the sender's bytes go through: the sender's pings, which
        // the receiver answers, keep both ends from being idle.
        let config = Config {
            idle_timeout: Duration::from_secs(30),
            keep_alive: Some(Duration::from_secs(10)),
            ..Config::default()
        };
        let ((mut a_send, _a_recv, a), (_b_send, mut b_recv, _b)) = pair(config);
        let reader = tokio::spawn(async move { read_to_end(&mut b_recv).await });
        for _ in 0..60 {
            a_send.write_all(&[5u8; 1000]).await.expect("write");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert_eq!(a.close_reason(), None);
        a_send.finish();
        assert_eq!(reader.await.unwrap().expect("clean end").len(), 60_000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_answering_is_found_out_within_the_idle_timeout() {
        // A dead path: bytes go out, nothing comes back. Pings go unanswered, and
        // the idle timeout ends the connection, however busy this end's own writes.
        let (raw, other) = tokio::io::duplex(1 << 20);
        let config = Config {
            idle_timeout: Duration::from_secs(4),
            keep_alive: Some(Duration::from_secs(2)),
            ..Config::default()
        };
        let (mut send, _recv, connection) = framed(other, config);
        let started = Instant::now();
        send.write_all(b"into the void").await.expect("queued");
        assert_eq!(connection.closed().await, ConnectionError::TimedOut);
        assert!(
            started.elapsed() <= Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        drop(raw);
    }

    #[tokio::test(start_paused = true)]
    async fn keep_alive_pings_an_idle_connection() {
        let (mut raw, other) = tokio::io::duplex(1024);
        let config = Config {
            keep_alive: Some(Duration::from_secs(2)),
            ..Config::default()
        };
        let (_send, _recv, _connection) = framed(other, config);
        let mut ping = [0u8; 9];
        let started = Instant::now();
        raw.read_exact(&mut ping).await.expect("ping");
        assert_eq!(ping[0], 0x05);
        assert!(started.elapsed() >= Duration::from_secs(2));
    }

    #[tokio::test]
    async fn dropping_everything_delivers_what_was_written_then_ends() {
        let ((mut a_send, a_recv, a), (_b_send, mut b_recv, _b)) = pair(Config::default());
        a_send.write_all(b"last words").await.expect("write");
        drop((a_send, a_recv, a));
        assert_eq!(read_to_end(&mut b_recv).await.expect("read"), b"last words");
    }
}
