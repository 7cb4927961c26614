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
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::Duration;

use blindrelay_protocol::stream_frame::MAX_DATA_LEN;
use blindrelay_protocol::{CloseCode, DecodeError, StreamCode};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio::time::Instant;

mod recv;
mod send;

use recv::read_loop;
pub use recv::{recv_io_error, FramedRecv};
use send::write_loop;
pub use send::{send_io_error, FramedSend};

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

#[cfg(test)]
mod tests {
    use super::*;
    use blindrelay_protocol::codes::{close, stream};
    use blindrelay_protocol::stream_frame::{StreamFrame, MAX_FRAME_LEN};
    use tokio::io::AsyncWriteExt;
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

    /// Closing says why, on this side and on the peer's: what a host reads to tell
    /// "registered elsewhere" (`REPLACED`) from a connection that was lost.
    #[tokio::test]
    async fn the_close_reason_says_who_closed_and_with_which_code() {
        let ((_s1, _r1, a), (_s2, _r2, b)) = pair(Config::default());
        assert!(a.close_reason().is_none());
        a.close(close::REPLACED, "registered elsewhere");
        assert!(
            matches!(a.close_reason(), Some(ConnectionError::Closed(code)) if code == close::REPLACED),
            "{:?}",
            a.close_reason()
        );
        let seen = tokio::time::timeout(Duration::from_secs(5), b.closed())
            .await
            .expect("the peer sees the close");
        assert!(
            matches!(seen, ConnectionError::ClosedByPeer { code, .. } if code == close::REPLACED),
            "{seen:?}"
        );
        assert!(matches!(
            b.close_reason(),
            Some(ConnectionError::ClosedByPeer { code, .. }) if code == close::REPLACED
        ));
    }

    /// A connection whose halves and handle are all dropped, with nothing queued,
    /// ends at once.
    #[tokio::test]
    async fn dropping_every_handle_ends_the_connection() {
        let ((s1, r1, a), (_s2, _r2, b)) = pair(Config::default());
        drop((s1, r1, a));
        let ended = tokio::time::timeout(LINGER / 2, b.closed()).await;
        assert!(ended.is_ok(), "the peer never saw the connection end");
    }

    /// A connection whose halves and handles are all dropped while its peer reads
    /// nothing gives up on what is queued after [`LINGER`], not after the write
    /// timeout: a peer that never reads holds a dropped connection 5 s at most.
    #[tokio::test(start_paused = true)]
    async fn a_dropped_connection_waits_for_a_peer_that_never_reads_no_longer_than_linger() {
        let config = Config {
            write_timeout: Duration::from_secs(600),
            ..Config::default()
        };
        let (io, _peer) = tokio::io::duplex(16 * 1024);
        let (mut send, recv, connection) = framed(io, config);
        // More than the pipe takes: the writer is stuck in a write.
        for _ in 0..4 {
            send.write_all(&[7; MAX_DATA_LEN]).await.expect("queued");
        }
        tokio::task::yield_now().await;
        let shared = Arc::downgrade(&send.shared);
        let dropped = Instant::now();
        drop((send, recv, connection));
        // The tasks let go of the connection once the writer gives up.
        let gone = async {
            while shared.strong_count() > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(LINGER * 2, gone)
            .await
            .expect("the dropped connection let go of its peer");
        let held = dropped.elapsed();
        assert!(
            held >= LINGER && held < LINGER + Duration::from_secs(1),
            "held {held:?} against a linger of {LINGER:?}"
        );
    }

    /// Both directions ended: the connection is over and its transport closed,
    /// though every handle is still held. The peer's end counts once it arrives, read
    /// or not, and what arrived before it stays readable.
    #[tokio::test]
    async fn a_connection_whose_both_directions_ended_is_over_while_its_handles_live() {
        let ((mut s1, mut r1, a), (mut s2, mut r2, b)) = pair(Config::default());
        s1.write_all(b"ping").await.expect("sent");
        s1.finish();
        s2.write_all(b"pong").await.expect("sent");
        s2.finish();
        for side in [&a, &b] {
            let ended = tokio::time::timeout(LINGER / 2, side.closed()).await;
            assert!(ended.is_ok(), "a connection done both ways stayed open");
        }
        assert_eq!(read_to_end(&mut r2).await.expect("read"), b"ping");
        assert_eq!(read_to_end(&mut r1).await.expect("read"), b"pong");
        drop((s1, s2));
    }

    /// A side that stopped the peer's direction and ended its own is done with the
    /// connection: it is over without waiting for the peer's end.
    #[tokio::test]
    async fn a_side_that_stopped_the_peer_and_ended_its_own_direction_is_over() {
        let ((mut s1, mut r1, a), (_s2, mut r2, _b)) = pair(Config::default());
        r1.stop(StreamCode::from(7));
        s1.write_all(b"last").await.expect("sent");
        s1.finish();
        let ended = tokio::time::timeout(LINGER / 2, a.closed()).await;
        assert!(ended.is_ok(), "a side done both ways stayed open");
        assert_eq!(read_to_end(&mut r2).await.expect("read"), b"last");
    }

    /// A peer that never reads: the sending half queues its send buffer's worth
    /// (and at most one chunk more) beyond what the transport took, then waits.
    #[tokio::test]
    async fn a_writer_to_a_peer_that_never_reads_queues_no_more_than_its_send_buffer() {
        let config = Config::default();
        let (io, _peer) = tokio::io::duplex(64 * 1024);
        let (mut send, _recv, _connection) = framed(io, config);
        let chunk = vec![7; MAX_DATA_LEN];
        let wrote = tokio::time::timeout(Duration::from_secs(2), async {
            for _ in 0..(20 * config.send_buffer).div_ceil(MAX_DATA_LEN) {
                send.write_all(&chunk).await.expect("written");
            }
        })
        .await;
        assert!(
            wrote.is_err(),
            "wrote 20 send buffers to a peer that reads nothing"
        );
        let queued: usize = send.shared.lock().queued.iter().map(Bytes::len).sum();
        assert!(
            queued <= config.send_buffer + MAX_DATA_LEN,
            "{queued} bytes queued for a send buffer of {}",
            config.send_buffer
        );
    }

    /// A peer that reads, slowly: however many batches the writer takes from the
    /// queue, what stays queued never passes the send buffer, the default one or one
    /// several times the writer's batch (so the count of what is queued, not the
    /// batch, is what holds it).
    #[tokio::test]
    async fn a_writer_to_a_slow_reader_keeps_its_queue_within_its_send_buffer() {
        for send_buffer in [Config::default().send_buffer, 4 * WRITE_BATCH] {
            let config = Config {
                send_buffer,
                ..Config::default()
            };
            let (io, mut peer) = tokio::io::duplex(64 * 1024);
            let (mut send, _recv, _connection) = framed(io, config);
            let reading = tokio::spawn(async move {
                let mut buf = vec![0; 64 * 1024];
                while peer.read(&mut buf).await.is_ok_and(|n| n > 0) {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            });
            let chunk = vec![7; MAX_DATA_LEN];
            let mut most = 0;
            for _ in 0..(8 * send_buffer).div_ceil(MAX_DATA_LEN) {
                send.write_all(&chunk).await.expect("written");
                let queued: usize = send.shared.lock().queued.iter().map(Bytes::len).sum();
                most = most.max(queued);
            }
            assert!(
                most <= send_buffer + MAX_DATA_LEN,
                "{most} bytes queued for a send buffer of {send_buffer}"
            );
            reading.abort();
        }
    }

    /// The sending half as an `AsyncWrite`: what `copy` and `write_all` write
    /// arrives whole, and `shutdown` ends the direction cleanly.
    #[tokio::test]
    async fn the_sending_half_writes_and_shuts_down_as_an_async_write() {
        let ((mut s1, _r1, _a), (_s2, mut r2, _b)) = pair(Config::default());
        let sent: Vec<u8> = (0..100_000u32).map(|i| (i % 249) as u8).collect();
        AsyncWriteExt::write_all(&mut s1, &sent)
            .await
            .expect("written");
        AsyncWriteExt::flush(&mut s1).await.expect("flushed");
        AsyncWriteExt::shutdown(&mut s1).await.expect("shut down");
        let received = tokio::time::timeout(Duration::from_secs(5), read_to_end(&mut r2))
            .await
            .expect("the end arrives");
        assert_eq!(received.expect("read"), sent);
    }

    /// `stopped` resolves with nothing once the direction ended without a stop;
    /// a reset while the end is still queued wins over it.
    #[tokio::test]
    async fn a_direction_ended_is_not_stopped_and_a_reset_overtakes_a_queued_end() {
        let ((mut s1, _r1, _a), (_s2, mut r2, _b)) = pair(Config::default());
        s1.write_all(b"done").await.expect("sent");
        s1.finish();
        assert_eq!(read_to_end(&mut r2).await.expect("read"), b"done");
        let stopped = tokio::time::timeout(Duration::from_secs(5), s1.stopped()).await;
        assert_eq!(stopped, Ok(None));

        let ((mut s1, _r1, _a), (_s2, mut r2, _b)) = pair(Config::default());
        s1.finish();
        s1.reset(stream::CANCELLED);
        assert!(
            matches!(read_to_end(&mut r2).await, Err(RecvError::Reset(code)) if code == stream::CANCELLED)
        );
    }

    /// `read_exact` fills its buffer across frames, in order, and says a clean end
    /// that comes first is one.
    #[tokio::test]
    async fn read_exact_fills_across_frames_and_tells_an_early_end() {
        let ((mut s1, _r1, _a), (_s2, mut r2, _b)) = pair(Config::default());
        // Frames long enough to be kept as they come, not joined: a read ends
        // where a frame does.
        let sent: Vec<u8> = (0..30_000u32).map(|i| (i % 251) as u8).collect();
        for piece in sent.chunks(10_000) {
            assert!(piece.len() >= JOIN_BELOW && piece.len() <= MAX_DATA_LEN);
            s1.write_all(piece).await.expect("sent");
        }
        s1.finish();
        let mut first = vec![0; 15_000];
        r2.read_exact(&mut first).await.expect("read");
        let mut rest = vec![0; 15_000];
        r2.read_exact(&mut rest).await.expect("read");
        assert_eq!([first, rest].concat(), sent);
        let mut more = [0; 1];
        assert!(matches!(
            r2.read_exact(&mut more).await,
            Err(RecvError::Connection(ConnectionError::Ended))
        ));
    }

    #[tokio::test]
    async fn handles_print_nothing_of_what_they_carry() {
        let ((s1, r1, a), _) = pair(Config::default());
        assert_eq!(format!("{a:?}"), "Connection { .. }");
        assert_eq!(format!("{s1:?}"), "FramedSend { .. }");
        assert_eq!(format!("{r1:?}"), "FramedRecv { .. }");
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
