//! A connection that carries one stream in [`StreamFrame`]s: the stream transports'
//! equivalent of one bidirectional QUIC stream and its connection.
//!
//! [`framed`] splits a byte stream (TLS over TCP, or a WebSocket's bytes) into a
//! receiving half, a sending half and a handle on the connection:
//!
//! - [`FramedRecv`] reads frames on demand, in the caller's task: bytes come out as
//!   chunks, `FIN` as the end, `RESET` as an error with its code; `STOP`, `PING` and
//!   `CLOSE` are handled on the way. Nothing is read ahead beyond one frame, so a
//!   reader that stops reading stops the sender through TCP's own flow control.
//! - [`FramedSend`] queues `DATA` frames for a writer task, up to
//!   [`Config::send_buffer`] bytes; past that a write waits. `finish` and `reset` end
//!   the direction; a `STOP` from the other end fails the next write with its code.
//! - The writer task owns the byte stream's writing side. It batches queued frames
//!   into one write, sends `PING`s when idle if asked to, and gives up on a peer
//!   that takes nothing for [`Config::write_timeout`]. Once every half and handle is
//!   dropped it flushes what is left (within [`LINGER`]) and shuts the stream down.
//!
//! Every wait on the peer has a deadline: reading ends after
//! [`Config::idle_timeout`] with nothing received, writing after
//! [`Config::write_timeout`] with nothing taken.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use blindrelay_protocol::stream_frame::{StreamFrame, MAX_DATA_LEN, MAX_FRAME_LEN};
use blindrelay_protocol::{CloseCode, DecodeError, StreamCode};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

/// How long a connection whose halves and handles are all dropped may take to
/// deliver what was queued before it (a refusal, the last bytes of a session).
pub const LINGER: Duration = Duration::from_secs(5);

/// How many bytes the writer joins into one write: a few TLS records.
const WRITE_BATCH: usize = 64 * 1024;

/// A framed connection's timers and buffer.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// The connection is closed when nothing arrives for this long while it is
    /// being read.
    pub idle_timeout: Duration,
    /// Sends a `PING` after this long without sending anything, so the other end
    /// keeps hearing from this one (its idle timer, NAT bindings). `None`: never.
    pub keep_alive: Option<Duration>,
    /// Bytes queued for the writer beyond which a write waits.
    pub send_buffer: usize,
    /// The connection is given up when the peer takes nothing for this long while
    /// the writer has bytes for it.
    pub write_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(30),
            keep_alive: None,
            send_buffer: 64 * 1024,
            write_timeout: Duration::from_secs(30),
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
    /// The receiving direction ended (`FIN` or `RESET` read, or stopped).
    recv_done: bool,
    /// Set once the connection is over.
    error: Option<ConnectionError>,
    /// The sending half, waiting for room.
    send_waker: Option<Waker>,
    /// Halves and handles alive.
    handles: usize,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the writer: something to send, or every handle gone.
    writer: Notify,
    /// Wakes whoever waits for the connection or the sending direction to end.
    changed: Notify,
    /// Wakes a writer blocked on the peer once every half and handle is gone.
    abandoned: Notify,
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
            if let Some(waker) = state.send_waker.take() {
                waker.wake();
            }
            error
        };
        self.writer.notify_one();
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
        config,
    });
    let send = FramedSend {
        shared: shared.acquire(),
    };
    let recv = FramedRecv {
        shared: shared.acquire(),
        io: Box::pin(read),
        buf: BytesMut::new(),
        pending: None,
        idle: Box::pin(tokio::time::sleep(config.idle_timeout)),
    };
    let connection = Connection {
        shared: shared.acquire(),
    };
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
    io: Pin<Box<dyn AsyncRead + Send>>,
    /// Bytes read and not yet decoded: less than one frame between reads.
    buf: BytesMut,
    /// What is left of a `DATA` frame a read took only part of.
    pending: Option<Bytes>,
    idle: Pin<Box<Sleep>>,
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
        loop {
            let frame = match StreamFrame::decode(&mut self.buf) {
                Ok(frame) => frame,
                Err(err) => {
                    let error = self.shared.fail(ConnectionError::Protocol(err));
                    return Poll::Ready(Err(RecvError::Connection(error)));
                }
            };
            match frame {
                Some(frame) => {
                    if let Some(result) = self.handle(frame, max) {
                        return Poll::Ready(result);
                    }
                }
                None => {
                    if let Some(error) = self.shared.lock().error.clone() {
                        return Poll::Ready(Err(RecvError::Connection(error)));
                    }
                    if self.idle.as_mut().poll(cx).is_ready() {
                        let error = self.shared.fail(ConnectionError::TimedOut);
                        return Poll::Ready(Err(RecvError::Connection(error)));
                    }
                    // Room for one whole frame; nothing is read beyond what a frame
                    // needs to complete, except what one read happens to bring.
                    self.buf.reserve(MAX_FRAME_LEN);
                    match tokio_util::io::poll_read_buf(self.io.as_mut(), cx, &mut self.buf) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(0)) => {
                            let error = self.shared.fail(ConnectionError::Ended);
                            return Poll::Ready(Err(RecvError::Connection(error)));
                        }
                        Poll::Ready(Ok(_)) => {
                            let deadline = Instant::now() + self.shared.config.idle_timeout;
                            self.idle.as_mut().reset(deadline);
                        }
                        Poll::Ready(Err(err)) => {
                            let error = self.shared.fail(ConnectionError::Io(err.kind()));
                            return Poll::Ready(Err(RecvError::Connection(error)));
                        }
                    }
                }
            }
        }
    }

    /// Acts on one frame; `Some` when it ends this read.
    fn handle(
        &mut self,
        frame: StreamFrame,
        max: usize,
    ) -> Option<Result<Option<Bytes>, RecvError>> {
        match frame {
            StreamFrame::Data(mut data) => {
                let state = self.shared.lock();
                if state.recv_done {
                    // Stopped by this end: discarded, as QUIC would.
                    return None;
                }
                drop(state);
                let chunk = data.split_to(max.min(data.len()));
                if !data.is_empty() {
                    self.pending = Some(data);
                }
                Some(Ok(Some(chunk)))
            }
            StreamFrame::Fin => {
                let done = std::mem::replace(&mut self.shared.lock().recv_done, true);
                (!done).then_some(Ok(None))
            }
            StreamFrame::Reset(code) => {
                let done = std::mem::replace(&mut self.shared.lock().recv_done, true);
                (!done).then_some(Err(RecvError::Reset(code)))
            }
            StreamFrame::Stop(code) => {
                self.shared.update(|state| {
                    state.peer_stop.get_or_insert(code);
                    if let Some(waker) = state.send_waker.take() {
                        waker.wake();
                    }
                });
                None
            }
            StreamFrame::Ping(opaque) => {
                self.shared.update(|state| state.pong = Some(opaque));
                None
            }
            StreamFrame::Pong(_) => None,
            StreamFrame::Close { code, reason } => {
                let error = self
                    .shared
                    .fail(ConnectionError::ClosedByPeer { code, reason });
                Some(Err(RecvError::Connection(error)))
            }
        }
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

    /// Asks the peer to stop sending, with `code`; what arrives after is discarded.
    /// Does nothing once the direction has ended.
    pub fn stop(&mut self, code: StreamCode) {
        self.pending = None;
        self.shared.update(|state| {
            if !state.recv_done {
                state.recv_done = true;
                state.stop = Some(code);
            }
        });
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
    let both_done = state.send_done && state.recv_done;
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
    let mut last_write = Instant::now();
    loop {
        let woken = shared.writer.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let next = collect(&mut shared.lock(), &mut out);
        match next {
            Next::Write | Next::WriteAndEnd => {
                if let Err(error) = send(&mut write, &out, &shared).await {
                    shared.fail(error);
                    return;
                }
                out.clear();
                last_write = Instant::now();
                if matches!(next, Next::WriteAndEnd) {
                    break;
                }
                shared.changed.notify_waiters();
            }
            Next::End => break,
            Next::Wait => match config.keep_alive {
                Some(every) => {
                    tokio::select! {
                        () = &mut woken => {}
                        () = tokio::time::sleep_until(last_write + every) => {
                            StreamFrame::Ping(fastrand::u64(..).to_be_bytes()).encode(&mut out);
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
    async fn a_stop_fails_the_peers_writes_with_its_code() {
        let ((mut a_send, mut a_recv, _a), (_b_send, mut b_recv, _b)) = pair(Config::default());
        b_recv.stop(stream::REFUSED);
        let stopped = a_send.stopped();
        // The STOP is read by the sending end's receiving half.
        let read = tokio::spawn(async move { a_recv.read_chunk(10).await.map(|_| a_recv) });
        assert_eq!(stopped.await, Some(stream::REFUSED));
        assert_eq!(
            a_send.write_all(b"x").await,
            Err(SendError::Stopped(stream::REFUSED))
        );
        read.abort();
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
