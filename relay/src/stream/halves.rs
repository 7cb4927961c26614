//! The two halves of a session stream, as the splice sees them.
//!
//! The splice forwards chunks from one side's receiving half to the other side's
//! sending half and passes ends across: a clean finish, a reset with a code, a
//! stop-sending with a code. [`SessionRecv`] and [`SessionSend`] are exactly that
//! much, so the splice joins any two streams that can say it: QUIC streams (below),
//! and whatever other transport carries sessions, without a second splice.
//!
//! Codes are QUIC application error codes ([`blindrelay_protocol::codes::stream`]);
//! a transport without per-stream codes carries them in its own framing.

use std::future::Future;

use blindrelay_protocol::StreamCode;
use bytes::Bytes;
use quinn::{ReadError, VarInt, WriteError};

/// How a receiving half ended, other than cleanly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecvEnd {
    /// The sender reset the stream with this code.
    Reset(StreamCode),
    /// The stream's connection is gone.
    Gone,
}

/// How a sending half refused a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendEnd {
    /// The reader asked the relay to stop sending, with this code.
    Stopped(StreamCode),
    /// The stream's connection is gone, or the stream is closed.
    Gone,
}

/// The receiving half of one side's session stream.
pub(crate) trait SessionRecv: Send {
    /// The next chunk of at most `max` bytes, as it arrived; `Ok(None)` once the
    /// sender finished cleanly. Cancel-safe: a chunk is either returned or stays.
    fn read_chunk(
        &mut self,
        max: usize,
    ) -> impl Future<Output = Result<Option<Bytes>, RecvEnd>> + Send;

    /// Asks the sender to stop sending, with `code`; what it sent is discarded.
    fn stop(&mut self, code: StreamCode);
}

/// The sending half of one side's session stream.
pub(crate) trait SessionSend: Send {
    /// Writes a prefix of `bytes` (at least one byte of a non-empty chunk) and takes
    /// it off the front; waits while the reader's flow-control window is full.
    /// Cancel-safe: bytes are either written and taken, or left in `bytes`.
    fn write_some(
        &mut self,
        bytes: &mut Bytes,
    ) -> impl Future<Output = Result<usize, SendEnd>> + Send;

    /// Resolves with the reader's code once it asks the relay to stop sending, or
    /// with `None` once the stream is over otherwise (finished and every byte
    /// acknowledged, or the connection gone). Owns what it needs, so a pump can hold
    /// it across its writes.
    fn stopped(&self) -> impl Future<Output = Option<StreamCode>> + Send + 'static;

    /// Ends the stream cleanly after what was written.
    fn finish(&mut self);

    /// Ends the stream at once with `code`; what was not yet delivered is dropped.
    fn reset(&mut self, code: StreamCode);
}

impl SessionRecv for quinn::RecvStream {
    async fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>, RecvEnd> {
        match quinn::RecvStream::read_chunk(self, max, true).await {
            Ok(chunk) => Ok(chunk.map(|chunk| chunk.bytes)),
            Err(ReadError::Reset(code)) => Err(RecvEnd::Reset(varint_code(code))),
            Err(_) => Err(RecvEnd::Gone),
        }
    }

    fn stop(&mut self, code: StreamCode) {
        let _ = quinn::RecvStream::stop(self, VarInt::from(code));
    }
}

impl SessionSend for quinn::SendStream {
    async fn write_some(&mut self, bytes: &mut Bytes) -> Result<usize, SendEnd> {
        // `write_chunks` is cancel-safe: it either takes bytes or waits for room.
        match self.write_chunks(std::slice::from_mut(bytes)).await {
            Ok(written) => Ok(written.bytes),
            Err(WriteError::Stopped(code)) => Err(SendEnd::Stopped(varint_code(code))),
            Err(_) => Err(SendEnd::Gone),
        }
    }

    fn stopped(&self) -> impl Future<Output = Option<StreamCode>> + Send + 'static {
        let stopped = quinn::SendStream::stopped(self);
        async move { stopped.await.ok().flatten().map(varint_code) }
    }

    fn finish(&mut self) {
        let _ = quinn::SendStream::finish(self);
    }

    fn reset(&mut self, code: StreamCode) {
        let _ = quinn::SendStream::reset(self, VarInt::from(code));
    }
}

/// A session or control stream's receiving half, on any transport.
pub(crate) enum StreamRecv {
    Quic(quinn::RecvStream),
    Framed(blindrelay_transport::FramedRecv),
    /// A WebTransport stream: a QUIC stream whose codes are carried in HTTP/3's
    /// code space ([`crate::listen::webtransport`]).
    WebTransport(quinn::RecvStream),
}

/// A session or control stream's sending half, on any transport.
pub(crate) enum StreamSend {
    Quic(quinn::SendStream),
    Framed(blindrelay_transport::FramedSend),
    /// A WebTransport stream (see [`StreamRecv::WebTransport`]).
    WebTransport(quinn::SendStream),
}

impl StreamRecv {
    /// Fills `out` exactly; the stream ending first is [`RecvEnd::Gone`].
    pub(crate) async fn read_exact(&mut self, out: &mut [u8]) -> Result<(), RecvEnd> {
        match self {
            Self::Quic(recv) => recv.read_exact(out).await.map_err(|err| match err {
                quinn::ReadExactError::ReadError(ReadError::Reset(code)) => {
                    RecvEnd::Reset(varint_code(code))
                }
                _ => RecvEnd::Gone,
            }),
            Self::Framed(recv) => recv.read_exact(out).await.map_err(framed_recv_end),
            Self::WebTransport(recv) => recv.read_exact(out).await.map_err(|err| match err {
                quinn::ReadExactError::ReadError(ReadError::Reset(code)) => {
                    RecvEnd::Reset(webtransport_code(code))
                }
                _ => RecvEnd::Gone,
            }),
        }
    }
}

impl StreamSend {
    /// Writes all of `bytes`, waiting for flow-control credit as long as it takes
    /// (callers put a deadline around it).
    pub(crate) async fn write_all(&mut self, bytes: &[u8]) -> Result<(), SendEnd> {
        match self {
            Self::Quic(send) => send.write_all(bytes).await.map_err(|err| match err {
                WriteError::Stopped(code) => SendEnd::Stopped(varint_code(code)),
                _ => SendEnd::Gone,
            }),
            Self::Framed(send) => send.write_all(bytes).await.map_err(framed_send_end),
            Self::WebTransport(send) => send.write_all(bytes).await.map_err(|err| match err {
                WriteError::Stopped(code) => SendEnd::Stopped(webtransport_code(code)),
                _ => SendEnd::Gone,
            }),
        }
    }
}

fn framed_recv_end(err: blindrelay_transport::RecvError) -> RecvEnd {
    match err {
        blindrelay_transport::RecvError::Reset(code) => RecvEnd::Reset(code),
        blindrelay_transport::RecvError::Connection(_) => RecvEnd::Gone,
    }
}

fn framed_send_end(err: blindrelay_transport::SendError) -> SendEnd {
    match err {
        blindrelay_transport::SendError::Stopped(code) => SendEnd::Stopped(code),
        _ => SendEnd::Gone,
    }
}

impl SessionRecv for StreamRecv {
    async fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>, RecvEnd> {
        match self {
            Self::Quic(recv) => SessionRecv::read_chunk(recv, max).await,
            Self::Framed(recv) => recv.read_chunk(max).await.map_err(framed_recv_end),
            Self::WebTransport(recv) => {
                match quinn::RecvStream::read_chunk(recv, max, true).await {
                    Ok(chunk) => Ok(chunk.map(|chunk| chunk.bytes)),
                    Err(ReadError::Reset(code)) => Err(RecvEnd::Reset(webtransport_code(code))),
                    Err(_) => Err(RecvEnd::Gone),
                }
            }
        }
    }

    fn stop(&mut self, code: StreamCode) {
        match self {
            Self::Quic(recv) => SessionRecv::stop(recv, code),
            Self::Framed(recv) => recv.stop(code),
            Self::WebTransport(recv) => {
                let _ = recv.stop(http3_code(code));
            }
        }
    }
}

impl SessionSend for StreamSend {
    async fn write_some(&mut self, bytes: &mut Bytes) -> Result<usize, SendEnd> {
        match self {
            Self::Quic(send) => SessionSend::write_some(send, bytes).await,
            Self::Framed(send) => send.write_some(bytes).await.map_err(framed_send_end),
            Self::WebTransport(send) => {
                match send.write_chunks(std::slice::from_mut(bytes)).await {
                    Ok(written) => Ok(written.bytes),
                    Err(WriteError::Stopped(code)) => {
                        Err(SendEnd::Stopped(webtransport_code(code)))
                    }
                    Err(_) => Err(SendEnd::Gone),
                }
            }
        }
    }

    fn stopped(&self) -> impl Future<Output = Option<StreamCode>> + Send + 'static {
        let stopped: std::pin::Pin<Box<dyn Future<Output = Option<StreamCode>> + Send>> = match self
        {
            Self::Quic(send) => Box::pin(SessionSend::stopped(send)),
            Self::Framed(send) => Box::pin(send.stopped()),
            Self::WebTransport(send) => {
                let stopped = quinn::SendStream::stopped(send);
                Box::pin(async move { stopped.await.ok().flatten().map(webtransport_code) })
            }
        };
        stopped
    }

    fn finish(&mut self) {
        match self {
            Self::Quic(send) => SessionSend::finish(send),
            Self::Framed(send) => send.finish(),
            Self::WebTransport(send) => {
                let _ = send.finish();
            }
        }
    }

    fn reset(&mut self, code: StreamCode) {
        match self {
            Self::Quic(send) => SessionSend::reset(send, code),
            Self::Framed(send) => send.reset(code),
            Self::WebTransport(send) => {
                let _ = send.reset(http3_code(code));
            }
        }
    }
}

/// A receiving half with bytes the relay already read from it in front: the
/// player's Noise hello, which the relay reads before it pairs the session, goes to
/// the host first, through the splice like every other byte.
pub(crate) struct Prefixed<R> {
    first: Option<Bytes>,
    rest: R,
}

impl<R> Prefixed<R> {
    pub(crate) fn new(first: Bytes, rest: R) -> Self {
        Self {
            first: (!first.is_empty()).then_some(first),
            rest,
        }
    }
}

impl<R: SessionRecv> SessionRecv for Prefixed<R> {
    async fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>, RecvEnd> {
        if let Some(first) = &mut self.first {
            let chunk = first.split_to(max.min(first.len()));
            if first.is_empty() {
                self.first = None;
            }
            return Ok(Some(chunk));
        }
        self.rest.read_chunk(max).await
    }

    fn stop(&mut self, code: StreamCode) {
        self.first = None;
        self.rest.stop(code);
    }
}

/// A peer's code as the relay passes it on. Codes beyond `u32` are not ours; they
/// travel on as the largest `u32`, still a reset, never a clean end.
fn varint_code(code: VarInt) -> StreamCode {
    StreamCode::try_from(code).unwrap_or(StreamCode::from_u32(u32::MAX))
}

/// A WebTransport peer's stream code: WebTransport carries an application's 32-bit
/// codes in a range of HTTP/3's code space (RFC 9297's mapping, as the browser's
/// `WebTransportError.streamErrorCode` reads them). A code outside that range is
/// not one a WebTransport peer can mean; it travels on as the largest `u32`.
fn webtransport_code(code: VarInt) -> StreamCode {
    let code = web_transport_quinn::proto::error_from_http3(code.into_inner());
    StreamCode::from_u32(code.unwrap_or(u32::MAX))
}

/// `code` in HTTP/3's code space, as a WebTransport peer reads it.
fn http3_code(code: StreamCode) -> VarInt {
    let code = web_transport_quinn::proto::error_to_http3(code.to_u32());
    // The mapping of any `u32` stays far below QUIC's largest code (2^62 - 1).
    VarInt::from_u64(code).unwrap_or(VarInt::MAX)
}

/// An in-memory session stream with QUIC's semantics (a flow-control window, finish,
/// reset and stop-sending with codes), for testing the splice on a paused clock with
/// no socket.
#[cfg(test)]
pub(crate) mod memory {
    use std::sync::{Arc, Mutex};

    use std::collections::VecDeque;

    use blindrelay_protocol::StreamCode;
    use bytes::Bytes;
    use tokio::sync::Notify;

    use super::{RecvEnd, SendEnd, SessionRecv, SessionSend};

    /// The state both halves of one stream share.
    #[derive(Default)]
    struct Shared {
        /// What was written and not yet read, in the writes' own pieces (as QUIC
        /// keeps them in its STREAM frames).
        buffered: VecDeque<Bytes>,
        buffered_len: usize,
        window: usize,
        finished: bool,
        reset: Option<StreamCode>,
        stopped: Option<StreamCode>,
        gone: bool,
    }

    #[derive(Clone)]
    struct Pipe {
        state: Arc<Mutex<Shared>>,
        changed: Arc<Notify>,
    }

    impl Pipe {
        fn with<T>(&self, f: impl FnOnce(&mut Shared) -> T) -> T {
            let result = f(&mut self.state.lock().expect("pipe state"));
            self.changed.notify_waiters();
            result
        }

        /// Waits until `ready` returns something, re-checking on every change.
        async fn until<T>(&self, mut ready: impl FnMut(&mut Shared) -> Option<T>) -> T {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if let Some(value) = ready(&mut self.state.lock().expect("pipe state")) {
                    self.changed.notify_waiters();
                    return value;
                }
                changed.await;
            }
        }
    }

    /// A stream whose receiver buffers at most `window` unread bytes.
    pub(crate) fn stream(window: usize) -> (MemorySend, MemoryRecv) {
        let pipe = Pipe {
            state: Arc::new(Mutex::new(Shared {
                window,
                ..Shared::default()
            })),
            changed: Arc::new(Notify::new()),
        };
        (MemorySend(pipe.clone()), MemoryRecv(pipe))
    }

    /// The sending half.
    pub(crate) struct MemorySend(Pipe);

    /// The receiving half.
    pub(crate) struct MemoryRecv(Pipe);

    impl MemorySend {
        /// Writes all of `bytes`, waiting for room.
        pub(crate) async fn write_all(&mut self, mut bytes: Bytes) -> Result<(), SendEnd> {
            while !bytes.is_empty() {
                self.write_some(&mut bytes).await?;
            }
            Ok(())
        }

        /// The code the reader stopped the stream with, if it did.
        pub(crate) fn stop_code(&self) -> Option<StreamCode> {
            self.0.with(|state| state.stopped)
        }

        /// The connection under this stream is lost.
        pub(crate) fn vanish(&self) {
            self.0.with(|state| state.gone = true);
        }
    }

    impl MemoryRecv {
        /// Reads until the end: the bytes, and how the stream ended.
        pub(crate) async fn read_to_end(&mut self) -> (Vec<u8>, Result<(), RecvEnd>) {
            let mut all = Vec::new();
            loop {
                match self.read_chunk(usize::MAX).await {
                    Ok(Some(chunk)) => all.extend_from_slice(&chunk),
                    Ok(None) => return (all, Ok(())),
                    Err(end) => return (all, Err(end)),
                }
            }
        }
    }

    impl SessionSend for MemorySend {
        async fn write_some(&mut self, bytes: &mut Bytes) -> Result<usize, SendEnd> {
            self.0
                .until(|state| {
                    if let Some(code) = state.stopped {
                        return Some(Err(SendEnd::Stopped(code)));
                    }
                    if state.gone || state.reset.is_some() || state.finished {
                        return Some(Err(SendEnd::Gone));
                    }
                    let room = state.window.saturating_sub(state.buffered_len);
                    if room == 0 && !bytes.is_empty() {
                        return None;
                    }
                    let taken = bytes.split_to(room.min(bytes.len()));
                    let len = taken.len();
                    state.buffered_len += len;
                    state.buffered.push_back(taken);
                    Some(Ok(len))
                })
                .await
        }

        fn stopped(
            &self,
        ) -> impl std::future::Future<Output = Option<StreamCode>> + Send + 'static {
            let pipe = self.0.clone();
            async move {
                pipe.until(|state| {
                    if state.stopped.is_some() {
                        return Some(state.stopped);
                    }
                    let delivered = state.finished && state.buffered_len == 0;
                    (delivered || state.gone || state.reset.is_some()).then_some(None)
                })
                .await
            }
        }

        fn finish(&mut self) {
            self.0.with(|state| state.finished = true);
        }

        fn reset(&mut self, code: StreamCode) {
            self.0.with(|state| {
                if state.reset.is_none() && !(state.finished && state.buffered_len == 0) {
                    state.reset = Some(code);
                }
            });
        }
    }

    impl SessionRecv for MemoryRecv {
        async fn read_chunk(&mut self, max: usize) -> Result<Option<Bytes>, RecvEnd> {
            self.0
                .until(|state| {
                    if let Some(code) = state.reset {
                        return Some(Err(RecvEnd::Reset(code)));
                    }
                    if state.gone {
                        return Some(Err(RecvEnd::Gone));
                    }
                    if let Some(front) = state.buffered.front_mut() {
                        let chunk = if front.len() > max {
                            front.split_to(max)
                        } else {
                            state.buffered.pop_front().unwrap_or_default()
                        };
                        state.buffered_len -= chunk.len();
                        return Some(Ok(Some(chunk)));
                    }
                    state.finished.then_some(Ok(None))
                })
                .await
        }

        fn stop(&mut self, code: StreamCode) {
            self.0.with(|state| {
                state.stopped.get_or_insert(code);
                state.buffered.clear();
                state.buffered_len = 0;
            });
        }
    }
}
