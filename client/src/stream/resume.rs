//! A resumable session (PROTOCOL.md 10.8): what a [`SecureStream`] does beyond the
//! plain one when both ends agreed to resume.
//!
//! Each end counts the application bytes it sends and keeps those the peer has not
//! acknowledged ([`ReplayBuffer`]); each acknowledges what its application has read
//! ([`AckClock`]). A writer whose replay buffer is full waits for acknowledgements, as
//! one whose peer's flow-control window is full waits for credit: it reads ahead for
//! them when the application is not reading, which it always can, because the peer
//! has at most its own window unacknowledged.
//!
//! When the stream under the session fails in a way a new stream can mend (the
//! relay lost the peer, the connection was lost, the stream was cut short), the
//! session goes *down*: reads and writes wait, and [`Rejoin`] finds it a new stream
//! within the resume window: the player opens one with a resume hello on any path
//! it can reach, the host waits for one to arrive. Each end then sends, as its first
//! frame, how many bytes it received, and sends again what the other lacks. The
//! application sees a pause, not an error; after the window it sees the error.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use blindrelay_protocol::codes::StreamCode;
use blindrelay_protocol::noise::{NoiseError, Opened, ResumeId, Transport, MAX_PLAINTEXT_LEN};
use blindrelay_protocol::resume::{AckClock, ReplayBuffer, MAX_REPLAY_WINDOW};
use blindrelay_protocol::SessionLimits;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tracing::{debug, info};

use super::{io_error, Abandon, CiphertextBuf, SecureStream};
use crate::session::{RelayTransport, SessionEnded, SessionPath};

/// What a reader takes in ahead of the application while it looks for
/// acknowledgements: twice the largest window a peer may have unacknowledged.
const READ_AHEAD_LIMIT: usize = 2 * MAX_REPLAY_WINDOW;

/// Wakes both a reading and a writing task: what a resumable session polls (its
/// stream's halves, its timers, a new stream's arrival) is polled for either, and a
/// waker left there by one must not leave the other asleep (a reader that drained
/// an acknowledgement into a stream with no credit would otherwise take over the
/// waker of the writer waiting for that credit).
#[derive(Default)]
struct Wakers {
    read: std::sync::Mutex<Option<Waker>>,
    write: std::sync::Mutex<Option<Waker>>,
}

impl Wakers {
    fn slot(&self, side: Side) -> std::sync::MutexGuard<'_, Option<Waker>> {
        let slot = match side {
            Side::Read => &self.read,
            Side::Write => &self.write,
        };
        slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records `waker` as `side`'s.
    fn register(&self, side: Side, waker: &Waker) {
        let mut slot = self.slot(side);
        if !slot.as_ref().is_some_and(|held| held.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
    }

    /// `side`'s call returned: it waits for nothing until it calls again.
    fn forget(&self, side: Side) {
        self.slot(side).take();
    }
}

impl std::task::Wake for Wakers {
    fn wake(self: std::sync::Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        for side in [Side::Read, Side::Write] {
            if let Some(waker) = self.slot(side).take() {
                waker.wake();
            }
        }
    }
}

/// A new stream for a session, with the handshake that resumed it done.
pub(crate) struct Rejoined<R, W> {
    pub(crate) reader: R,
    pub(crate) writer: W,
    pub(crate) transport: Transport,
    pub(crate) path: SessionPath,
    pub(crate) relay_transport: Option<RelayTransport>,
    pub(crate) session_id: u64,
    pub(crate) limits: SessionLimits,
    /// Bytes to write before anything else (the host's reply and verdict).
    pub(crate) first_write: BytesMut,
}

/// Why a session could not be resumed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResumeError {
    /// No stream came back within the resume window.
    #[error(
        "session lost: the relay and the host could not be reached again within {window:?} \
         (the stream had failed: {cause})"
    )]
    TimedOut {
        /// The resume window.
        window: Duration,
        /// Why the stream failed.
        cause: String,
    },
    /// The other end no longer holds the session.
    #[error("session lost: the host no longer holds it (the stream had failed: {cause})")]
    Unknown {
        /// Why the stream failed.
        cause: String,
    },
}

/// How a session finds a new stream when its stream fails.
pub(crate) trait Rejoin<R, W>: Send {
    /// Goes on looking for a new stream for the session now named `id`. `Err` means
    /// it never will (the other end does not hold the session).
    fn poll_rejoin(
        &mut self,
        cx: &mut Context<'_>,
        id: ResumeId,
    ) -> Poll<Result<Rejoined<R, W>, RejoinRefused>>;

    /// A new stream the other end opened while this one still looked alive: the
    /// host's side, where the player decides. `Pending` on the player's side.
    fn poll_offered(&mut self, _cx: &mut Context<'_>) -> Poll<Rejoined<R, W>> {
        Poll::Pending
    }

    /// A better stream this side found for a session that is up on `path` and
    /// now named `id`, resumed there while the current one still works: the
    /// player's, once a punched direct path to the host exists (PROTOCOL.md 10.9).
    /// `Pending` on the host's side.
    fn poll_move(
        &mut self,
        _cx: &mut Context<'_>,
        _id: ResumeId,
        _path: SessionPath,
    ) -> Poll<Rejoined<R, W>> {
        Poll::Pending
    }

    /// The session took a new stream whose handshake named it `id`: until the
    /// peer's count confirms it, the peer may know the session by either name.
    fn adopted(&mut self, _id: ResumeId) {}

    /// The peer's count arrived on the stream named `id`: the session is known by
    /// `id` alone from now on.
    fn renamed(&mut self, _id: ResumeId) {}

    /// The session failed for good: no resume can find it any more, even while
    /// its application still holds it.
    fn forget(&mut self) {}
}

/// The other end answered a resume with "unknown session".
#[derive(Debug)]
pub(crate) struct RejoinRefused;

/// The resumable part of a [`SecureStream`].
pub(crate) struct Resumption<R, W> {
    replay: ReplayBuffer,
    acks: AckClock,
    ack_timer: Pin<Box<Sleep>>,
    ack_timer_at: Option<Instant>,
    rejoin: Box<dyn Rejoin<R, W>>,
    window: Duration,
    down: Option<Down>,
    /// Set once resuming failed for good: every later call returns it.
    failed: Option<(io::ErrorKind, String)>,
    /// After a resume, until the peer's first frame (its count) arrived: the
    /// new stream is not known to be the peer's (a hello can be replayed), and
    /// the resume window goes on running.
    unconfirmed: Option<Down>,
    /// What to send again after a resume: from this offset up to the end.
    resend: Option<(u64, u64)>,
    /// This side's application ended its direction (its `end` was sealed).
    ended: bool,
    /// The peer ended its direction: no data will come on any stream.
    peer_ended: bool,
    /// This stream ended after the peer's `end`: nothing more comes on it.
    stream_done: bool,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
    /// The waker everything below the session is polled with.
    wakers: std::sync::Arc<Wakers>,
    resumes: u32,
    /// The task of the reader's latest call, and how many calls it made.
    reader_task: Option<Waker>,
    reads: u64,
    /// A writer at its window that leaves the acknowledgements to a reader
    /// waiting in another task: the reader's calls when it began, and when it
    /// reads ahead itself all the same (a reader that stopped calling).
    deferred: Option<u64>,
    defer_timer: Pin<Box<Sleep>>,
}

struct Down {
    since: Instant,
    deadline: Pin<Box<Sleep>>,
    cause: String,
}

impl Down {
    /// Down since now, for at most `window`, because of `cause`.
    fn new(window: Duration, cause: String) -> Self {
        Self {
            since: Instant::now(),
            deadline: Box::pin(tokio::time::sleep(window)),
            cause,
        }
    }
}

impl<R, W> Resumption<R, W> {
    pub(crate) fn new(
        replay_window: usize,
        window: Duration,
        rejoin: Box<dyn Rejoin<R, W>>,
    ) -> Self {
        Self {
            replay: ReplayBuffer::new(replay_window),
            acks: AckClock::default(),
            ack_timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            ack_timer_at: None,
            rejoin,
            window,
            down: None,
            failed: None,
            unconfirmed: None,
            resend: None,
            ended: false,
            peer_ended: false,
            stream_done: false,
            read_waker: None,
            write_waker: None,
            wakers: std::sync::Arc::default(),
            resumes: 0,
            reader_task: None,
            reads: 0,
            deferred: None,
            defer_timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
        }
    }

    /// How many times the session was resumed.
    pub(crate) fn resumes(&self) -> u32 {
        self.resumes
    }

    fn wake_all(&mut self) {
        for waker in [self.read_waker.take(), self.write_waker.take()]
            .into_iter()
            .flatten()
        {
            waker.wake();
        }
    }
}

/// Which call is waiting, so that both a reading and a writing task are woken.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Read,
    Write,
}

/// Whether a stream failure is one a new stream can mend: the stream or its
/// connection was lost, cut short, or reset because the relay lost the other end.
/// Not: what either end or the relay meant by a code (a limit, a cancel, a broken
/// protocol), or a broken session. Code 0 says nothing: it is what QUIC sends for
/// a half dropped unread, which a relay whose other side went away does too.
fn mendable(err: &io::Error) -> bool {
    use blindrelay_transport::{RecvError, SendError};
    if err.kind() == io::ErrorKind::InvalidData {
        return false;
    }
    let Some(inner) = err.get_ref() else {
        return true;
    };
    if let Some(ended) = inner.downcast_ref::<SessionEnded>() {
        return *ended == SessionEnded::PeerGone;
    }
    let code = match (
        inner.downcast_ref::<quinn::WriteError>(),
        inner.downcast_ref::<quinn::ReadError>(),
        inner.downcast_ref::<SendError>(),
        inner.downcast_ref::<RecvError>(),
    ) {
        (Some(quinn::WriteError::Stopped(code)), ..)
        | (_, Some(quinn::ReadError::Reset(code)), ..) => code.into_inner(),
        (_, _, Some(SendError::Stopped(code)), _) | (.., Some(RecvError::Reset(code))) => {
            u64::from(code.to_u32())
        }
        (_, _, Some(SendError::Finished), _) => return false,
        _ => return true,
    };
    // 0 says nothing (see above); `MOVED` says the session went on elsewhere,
    // which a side that has not taken the new stream yet waits for.
    code == 0 || code == u64::from(blindrelay_protocol::codes::stream::MOVED.to_u32())
}

/// What reading one more frame came to.
enum Next {
    /// Application bytes, this many into the caller's buffer (the rest kept).
    Data(usize),
    /// An acknowledgement (or a rekey): nothing for the application.
    Control,
    /// The peer's end of its data.
    End,
    /// The stream failed and the session went down to be resumed.
    Down,
}

impl<R, W> SecureStream<R, W>
where
    R: AsyncRead + Abandon + Unpin,
    W: AsyncWrite + Abandon + Unpin,
{
    fn resumption(&mut self) -> &mut Resumption<R, W> {
        self.resume
            .as_deref_mut()
            .expect("only resumable sessions come here")
    }

    /// Everything a resumable session does besides the caller's read or write:
    /// adopt a new stream, resume a session that is down, send again what the peer
    /// lacks, and acknowledge what is due. `Pending` while the session is down.
    fn poll_upkeep(&mut self, cx: &mut Context<'_>, side: Side) -> Poll<io::Result<()>> {
        let r = self.resumption();
        // A reading and a writing task may share this session, and each may take
        // what the other waits for (read-ahead takes data; a reader takes
        // acknowledgements): each is woken when the other does.
        let waker = match side {
            Side::Read => &mut r.read_waker,
            Side::Write => &mut r.write_waker,
        };
        if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *waker = Some(cx.waker().clone());
        }
        if let Some((kind, message)) = &r.failed {
            return Poll::Ready(Err(io::Error::new(*kind, message.clone())));
        }
        let _ = r;
        while let Poll::Ready(rejoined) = self.resumption().rejoin.poll_offered(cx) {
            self.adopt(rejoined);
        }
        let id = self.transport.resume_id();
        let (path, r) = (self.path, self.resumption());
        let settled = r.down.is_none() && r.unconfirmed.is_none() && !r.stream_done;
        if settled {
            if let Poll::Ready(rejoined) = r.rejoin.poll_move(cx, id, path) {
                // The old stream's reset tells the relay why it ends.
                let moved = blindrelay_protocol::codes::stream::MOVED;
                self.adopt_leaving(rejoined, Some(moved));
            }
        }
        let id = self.transport.resume_id();
        let r = self.resumption();
        if let Some(unconfirmed) = &mut r.unconfirmed {
            // A stream that never brings the peer's count ends the session when
            // the window is over, as a stream that never comes does.
            if unconfirmed.deadline.as_mut().poll(cx).is_ready() {
                let (window, cause) = (r.window, unconfirmed.cause.clone());
                return Poll::Ready(Err(self.fail(ResumeError::TimedOut { window, cause })));
            }
        }
        if let Some(down) = &mut r.down {
            let cause = down.cause.clone();
            if down.deadline.as_mut().poll(cx).is_ready() {
                let window = r.window;
                return Poll::Ready(Err(self.fail(ResumeError::TimedOut { window, cause })));
            }
            match r.rejoin.poll_rejoin(cx, id) {
                Poll::Ready(Ok(rejoined)) => self.adopt(rejoined),
                Poll::Ready(Err(RejoinRefused)) => {
                    return Poll::Ready(Err(self.fail(ResumeError::Unknown { cause })));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        self.poll_resend(cx)?;
        self.poll_ack_due(cx)?;
        if !self.write_buf.is_empty() {
            if let Poll::Ready(Err(err)) = self.poll_drain(cx) {
                self.stream_failed(err, cx)?;
                return self.poll_upkeep(cx, side);
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Resuming failed for good: remember why, and wake whoever waits.
    fn fail(&mut self, err: ResumeError) -> io::Error {
        let kind = io::ErrorKind::ConnectionAborted;
        let message = err.to_string();
        let r = self.resumption();
        r.failed = Some((kind, message));
        r.down = None;
        r.unconfirmed = None;
        r.rejoin.forget();
        r.wake_all();
        io::Error::new(kind, err)
    }

    /// The stream failed with `err`: go down to be resumed if a new stream can mend
    /// it, or return the error.
    ///
    /// A stream transport's connection may close right behind a code that said why
    /// (the relay's limits), and the code reached only the other half: a write of
    /// nothing asks it.
    ///
    /// A new stream that fails before the peer's count came on it was only a
    /// candidate (one of a player's racing attempts that it cancelled, say): its
    /// code says nothing about the session, which waits on for another.
    fn stream_failed(&mut self, err: io::Error, cx: &mut Context<'_>) -> io::Result<()> {
        let candidate = self.resumption().unconfirmed.is_some();
        if !candidate && !mendable(&err) {
            return Err(err);
        }
        let r = self.resumption();
        if r.peer_ended && r.ended && r.replay.held() == 0 {
            // Both ends have everything: nothing is left to resume, nor to send
            // (what waits to go out is acknowledgements the peer has no use for).
            // Callers that retry after a failure find nothing to retry, rather
            // than the same failure again, for ever.
            r.stream_done = true;
            self.write_buf.clear();
            return Ok(());
        }
        if let Poll::Ready(Err(said)) = Pin::new(&mut self.writer).poll_write(cx, &[]) {
            if !candidate && !mendable(&said) {
                return Err(said);
            }
        }
        let r = self.resumption();
        if r.down.is_none() {
            // A new stream lost before the peer's count came on it: the window
            // that began with the first loss goes on.
            let down = match r.unconfirmed.take() {
                Some(down) => down,
                None => Down::new(r.window, err.to_string()),
            };
            self.resumption().down = Some(down);
            info!(session_id = self.session_id, route = %self.route(), cause = %err, "session stream lost; resuming");
        }
        Ok(())
    }

    /// Takes `rejoined` as the session's stream: the old one is dropped (it
    /// finishes, and stops a peer still writing on it with code 0: both read as
    /// a stream lost, which the peer resumes), and this side's count goes out
    /// first. The session goes on once the peer's count comes back.
    fn adopt(&mut self, rejoined: Rejoined<R, W>) {
        self.adopt_leaving(rejoined, None);
    }

    /// Takes `rejoined`'s stream; the old one's sending half, dropped, resets its
    /// direction with `code` (`None`: finishes it, as a lost stream's).
    fn adopt_leaving(&mut self, rejoined: Rejoined<R, W>, code: Option<StreamCode>) {
        let received = self.resumption().acks.delivered() + self.plain.len() as u64;
        // The old stream may still be the peer's, and this one a replayed hello's:
        // the peer must come back, not end.
        self.reader.stop_dropped_with(StreamCode::from_u32(0));
        self.reader = rejoined.reader;
        self.reader
            .stop_dropped_with(blindrelay_protocol::codes::stream::CLOSED);
        // The old stream's writer finishes when dropped, as a lost stream's (the
        // session is not closed), or says it moved.
        self.writer.reset_dropped_with(code);
        self.writer = rejoined.writer;
        let ended = self.resumption().ended;
        self.writer
            .reset_dropped_with((!ended).then_some(blindrelay_protocol::codes::stream::CLOSED));
        self.transport = rejoined.transport;
        self.path = rejoined.path;
        self.relay_transport = rejoined.relay_transport;
        self.session_id = rejoined.session_id;
        self.limits = rejoined.limits;
        self.ciphertext = CiphertextBuf::new(&[]);
        self.write_buf = rejoined.first_write;
        self.writer_closed = false;
        self.resumption().stream_done = false;
        let sealed = self.transport.seal_ack(received, &mut self.write_buf);
        let id = self.transport.resume_id();
        let route = self.route();
        let session_id = self.session_id;
        let r = self.resumption();
        // A fresh transport of a resumed session seals an ack: it cannot fail.
        debug_assert!(sealed.is_ok());
        r.acks.acknowledged(received);
        r.resend = None;
        r.rejoin.adopted(id);
        let unconfirmed = match (r.down.take(), r.unconfirmed.take()) {
            (Some(down), _) | (None, Some(down)) => down,
            (None, None) => Down::new(r.window, "moved to a new stream".into()),
        };
        r.unconfirmed = Some(unconfirmed);
        debug!(session_id, %route, "session took a new stream; awaiting the peer's count");
        r.wake_all();
    }

    /// The peer's first frame after a resume is its count: forget what it has,
    /// and send the rest again.
    fn take_count(&mut self, count: u64) -> Result<(), NoiseError> {
        let id = self.transport.resume_id();
        let route = self.route();
        let session_id = self.session_id;
        let r = self.resumption();
        r.replay.acknowledge(count)?;
        r.resend = Some((r.replay.acknowledged(), r.replay.sent()));
        r.resumes += 1;
        r.rejoin.renamed(id);
        if let Some(down) = r.unconfirmed.take() {
            let after = down.since.elapsed().as_secs_f64();
            info!(session_id, %route, "session resumed after {after:.1} s over {route}");
        }
        r.wake_all();
        Ok(())
    }

    /// Seals what the peer lacks after a resume, a frame at a time as the stream
    /// takes it; then this side's `end` again if it had ended.
    fn poll_resend(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        loop {
            let r = self.resume.as_deref_mut().expect("resumable");
            let Some((from, to)) = r.resend else {
                return Ok(());
            };
            if from == to {
                r.resend = None;
                if r.ended && !self.transport.sent_end() {
                    self.transport
                        .seal_end(&mut self.write_buf)
                        .map_err(io_error)?;
                }
                return Ok(());
            }
            if self.write_buf.len() >= MAX_PLAINTEXT_LEN {
                match self.poll_drain(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(err)) => return self.stream_failed(err, cx),
                    Poll::Pending => return Ok(()),
                }
            }
            let r = self.resume.as_deref_mut().expect("resumable");
            let bytes = r.replay.bytes_at(from);
            let n = bytes.len().min(MAX_PLAINTEXT_LEN).min((to - from) as usize);
            if n == 0 {
                // Acknowledged meanwhile: nothing left to send again.
                r.resend = None;
                continue;
            }
            self.transport
                .seal(&bytes[..n], &mut self.write_buf)
                .map_err(io_error)?;
            r.resend = Some((from + n as u64, to));
        }
    }

    /// Seals an acknowledgement when one is due, and keeps a timer for the next.
    fn poll_ack_due(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let now = Instant::now();
        let r = self.resume.as_deref_mut().expect("resumable");
        if r.unconfirmed.is_some() || r.resend.is_some() {
            return Ok(());
        }
        if let Some(count) = r.acks.due(now.into_std()) {
            self.transport
                .seal_ack(count, &mut self.write_buf)
                .map_err(io_error)?;
            r.acks.acknowledged(count);
        }
        match r.acks.deadline().map(Instant::from_std) {
            Some(at) => {
                if r.ack_timer_at != Some(at) {
                    r.ack_timer.as_mut().reset(at);
                    r.ack_timer_at = Some(at);
                }
                if r.ack_timer.as_mut().poll(cx).is_ready() {
                    r.ack_timer_at = None;
                    cx.waker().wake_by_ref();
                }
            }
            None => r.ack_timer_at = None,
        }
        Ok(())
    }

    /// Reads and opens frames until one means something to the caller. Data goes
    /// into `buf` if there is one, the rest into `plain`.
    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        mut buf: Option<&mut ReadBuf<'_>>,
    ) -> Poll<io::Result<Next>> {
        loop {
            if let Some(frame) = self.ciphertext.next_frame() {
                let opened = match self.transport.open(self.ciphertext.frame(frame)) {
                    Ok(Opened::Data(data)) => {
                        let n = match buf.as_deref_mut() {
                            Some(buf) => {
                                let n = data.len().min(buf.remaining());
                                buf.put_slice(&data[..n]);
                                n
                            }
                            None => 0,
                        };
                        self.plain.extend_from_slice(&data[n..]);
                        Ok(Next::Data(n))
                    }
                    Ok(Opened::Rekeyed) => Ok(Next::Control),
                    Ok(Opened::End) => Ok(Next::End),
                    Ok(Opened::Ack(count)) => Err(Ok(count)),
                    Err(err) => Err(Err(err)),
                };
                let awaiting = self.resumption().unconfirmed.is_some();
                let count = match opened {
                    Ok(_) if awaiting => {
                        let err = NoiseError::OutOfOrder {
                            reason: "a resumed session's first frame must be the peer's count",
                        };
                        return self.broken(err, cx);
                    }
                    Ok(Next::Control) => continue,
                    Ok(Next::End) => {
                        self.resumption().peer_ended = true;
                        // Nothing more comes: acknowledge all of it now, read or not,
                        // so that the peer's shutdown completes whatever this side's
                        // application does next.
                        // Only if something is owed: a player that leaves at once,
                        // having sent nothing, gets what a refused one gets.
                        let received = self.resumption().acks.delivered() + self.plain.len() as u64;
                        if received > self.resumption().acks.acknowledged_count() {
                            self.transport
                                .seal_ack(received, &mut self.write_buf)
                                .map_err(io_error)?;
                            self.resumption().acks.acknowledged(received);
                        }
                        self.poll_drain_acks(cx)?;
                        return Poll::Ready(Ok(Next::End));
                    }
                    Ok(next) => return Poll::Ready(Ok(next)),
                    Err(Err(err)) => return self.broken(err, cx),
                    Err(Ok(count)) => count,
                };
                let result = if awaiting {
                    self.take_count(count)
                } else {
                    let r = self.resumption();
                    r.replay.acknowledge(count).map(|()| {
                        if let Some(waker) = r.write_waker.take() {
                            waker.wake();
                        }
                    })
                };
                if let Err(err) = result {
                    return self.broken(err, cx);
                }
                return Poll::Ready(Ok(Next::Control));
            }
            let mut spare = ReadBuf::new(self.ciphertext.spare());
            let polled = Pin::new(&mut self.reader).poll_read(cx, &mut spare);
            let filled = spare.filled().len();
            self.ciphertext.fill(filled);
            match polled {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(err)) => {
                    self.stream_failed(err, cx)?;
                    return Poll::Ready(Ok(Next::Down));
                }
                Poll::Ready(Ok(())) if filled == 0 => {
                    // The stream ended. After both ends' `end` that is the session's
                    // end; before the peer's, someone cut it short.
                    if self.transport.received_end() {
                        self.resumption().stream_done = true;
                        return Poll::Ready(Ok(Next::End));
                    }
                    let err = io_error(NoiseError::Truncated);
                    self.stream_failed(err, cx)?;
                    return Poll::Ready(Ok(Next::Down));
                }
                Poll::Ready(Ok(())) => {}
            }
        }
    }

    /// What came on the stream broke the session protocol. On a stream the peer's
    /// count has not confirmed yet, that may be a stream the peer never opened (a
    /// replayed hello's): it is abandoned as lost, and the session waits on for
    /// another. Otherwise the session ends.
    fn broken(&mut self, err: NoiseError, cx: &mut Context<'_>) -> Poll<io::Result<Next>> {
        if self.resumption().unconfirmed.is_none() {
            return Poll::Ready(Err(self.reject(err)));
        }
        self.reader
            .abandon(blindrelay_protocol::codes::stream::PROTOCOL_VIOLATION);
        self.writer
            .abandon(blindrelay_protocol::codes::stream::PROTOCOL_VIOLATION);
        self.stream_failed(io_error(err), cx)?;
        Poll::Ready(Ok(Next::Down))
    }

    /// The waker that wakes both a reading and a writing task, with the caller's
    /// recorded as `side`'s.
    fn shared_waker(&mut self, cx: &Context<'_>, side: Side) -> Waker {
        let wakers = self.resumption().wakers.clone();
        wakers.register(side, cx.waker());
        Waker::from(wakers)
    }

    /// A call of `side`'s returned `polled`: once it is ready, that side waits for
    /// nothing, and what wakes the other side (the stream, the timers) need not
    /// wake it too. A task woken for nothing costs a context switch, at every
    /// frame of a busy session.
    fn settled<T>(&mut self, side: Side, polled: Poll<T>) -> Poll<T> {
        if polled.is_ready() {
            let r = self.resumption();
            r.wakers.forget(side);
            match side {
                Side::Read => r.read_waker = None,
                Side::Write => r.write_waker = None,
            }
        }
        polled
    }

    /// [`AsyncRead::poll_read`] of a resumable session.
    pub(super) fn poll_read_resumable(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let r = self.resumption();
        r.reads += 1;
        if !r
            .reader_task
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            r.reader_task = Some(cx.waker().clone());
        }
        let waker = self.shared_waker(cx, Side::Read);
        let polled = self.poll_read_shared(&mut Context::from_waker(&waker), buf);
        self.settled(Side::Read, polled)
    }

    fn poll_read_shared(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            // What is here is read whatever the stream's state: a session that is
            // down still hands over what arrived, and its end.
            if !self.plain.is_empty() {
                let n = self.plain.len().min(buf.remaining());
                buf.put_slice(&self.plain[..n]);
                bytes::Buf::advance(&mut self.plain, n);
                self.delivered(n, cx)?;
                return Poll::Ready(Ok(()));
            }
            if self.resumption().peer_ended {
                if self.resumption().down.is_none() {
                    self.finish_after_both_ends(cx);
                }
                return Poll::Ready(Ok(()));
            }
            ready!(self.poll_upkeep(cx, Side::Read))?;
            match ready!(self.poll_next(cx, Some(buf)))? {
                Next::Data(n) => {
                    self.delivered(n, cx)?;
                    if n > 0 {
                        return Poll::Ready(Ok(()));
                    }
                }
                Next::Control | Next::Down | Next::End => {}
            }
        }
    }

    /// Counts `n` bytes handed to the application, and acknowledges when due.
    fn delivered(&mut self, n: usize, cx: &mut Context<'_>) -> io::Result<()> {
        self.resumption().acks.deliver(n, Instant::now().into_std());
        self.poll_ack_due(cx)?;
        self.poll_drain_acks(cx)
    }

    /// Sends the acknowledgements sealed on the read path. A peer that stopped
    /// reading (it dropped the session after its last byte) has no use for them: that
    /// is no error of the reader's, whose data is all here.
    fn poll_drain_acks(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.write_buf.is_empty() {
            return Ok(());
        }
        match self.poll_drain(cx) {
            Poll::Ready(Err(err)) if mendable(&err) => self.stream_failed(err, cx),
            Poll::Ready(Err(_)) => {
                self.write_buf.clear();
                Ok(())
            }
            Poll::Ready(Ok(())) | Poll::Pending => Ok(()),
        }
    }

    /// Once both ends have ended their data, nothing more is needed from this
    /// stream: finish it (the last acknowledgement goes out first).
    fn finish_after_both_ends(&mut self, cx: &mut Context<'_>) {
        let r = self.resumption();
        if r.ended
            && r.peer_ended
            && !self.writer_closed
            && self.write_buf.is_empty()
            && Pin::new(&mut self.writer).poll_shutdown(cx).is_ready()
        {
            self.writer_closed = true;
        }
    }

    /// [`AsyncWrite::poll_write`] of a resumable session: waits for room in the
    /// replay buffer, reading ahead for acknowledgements when it must.
    pub(super) fn poll_write_resumable(
        &mut self,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = self.resumption();
        let reader_elsewhere = !r
            .reader_task
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()));
        let waker = self.shared_waker(cx, Side::Write);
        let polled =
            self.poll_write_shared(&mut Context::from_waker(&waker), data, reader_elsewhere);
        self.settled(Side::Write, polled)
    }

    fn poll_write_shared(
        &mut self,
        cx: &mut Context<'_>,
        data: &[u8],
        reader_elsewhere: bool,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.poll_upkeep(cx, Side::Write))?;
            let r = self.resumption();
            if r.unconfirmed.is_some() || r.resend.is_some() {
                // The peer's count comes by reading; the resend goes out by upkeep.
                r.write_waker = Some(cx.waker().clone());
                match ready!(self.poll_read_ahead(cx))? {
                    Next::Down | Next::Control | Next::Data(_) | Next::End => continue,
                }
            }
            match self.poll_drain(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(err)) => {
                    self.stream_failed(err, cx)?;
                    continue;
                }
                Poll::Pending => return Poll::Pending,
            }
            let r = self.resumption();
            if r.replay.room() == 0 {
                r.write_waker = Some(cx.waker().clone());
                if reader_elsewhere && self.leave_acks_to_reader(cx) {
                    return Poll::Pending;
                }
                ready!(self.poll_read_ahead(cx))?;
                continue;
            }
            r.deferred = None;
            let r = self
                .resume
                .as_deref_mut()
                .expect("only resumable sessions come here");
            let n = self
                .transport
                .seal_kept(data, &mut r.replay, &mut self.write_buf)
                .map_err(io_error)?;
            if let Poll::Ready(Err(err)) = self.poll_drain(cx) {
                // The bytes are in the replay buffer: they go out after the resume.
                self.stream_failed(err, cx)?;
            }
            return Poll::Ready(Ok(n));
        }
    }

    /// Whether a writer at its window may wait for a reader waiting in another task
    /// to take the peer's acknowledgements (it wakes the writer when one comes),
    /// rather than read ahead itself: data it read ahead would be copied once
    /// more on its way to the application, and both sides busy (a session
    /// written and read at once) would cost that for much of what is read. A
    /// reader that makes no call for [`ACK_DELAY`] (its call was dropped while it
    /// waited, its task does something else) leaves the reading to the writer.
    fn leave_acks_to_reader(&mut self, cx: &mut Context<'_>) -> bool {
        let r = self.resumption();
        if r.read_waker.is_none() {
            r.deferred = None;
            return false;
        }
        if r.deferred != Some(r.reads) {
            r.deferred = Some(r.reads);
            let at = Instant::now() + blindrelay_protocol::resume::ACK_DELAY;
            r.defer_timer.as_mut().reset(at);
        }
        r.defer_timer.as_mut().poll(cx).is_pending()
    }

    /// Reads ahead of the application for what a writer waits on (the peer's
    /// acknowledgements, or its count after a resume), keeping any data for the
    /// application, up to [`READ_AHEAD_LIMIT`].
    fn poll_read_ahead(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Next>> {
        if self.plain.len() >= READ_AHEAD_LIMIT || self.resumption().stream_done {
            return Poll::Pending;
        }
        let next = ready!(self.poll_next(cx, None))?;
        if matches!(next, Next::Data(_) | Next::End) {
            if let Some(waker) = self.resumption().read_waker.take() {
                waker.wake();
            }
        }
        Poll::Ready(Ok(next))
    }

    /// [`AsyncWrite::poll_flush`] of a resumable session.
    pub(super) fn poll_flush_resumable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let waker = self.shared_waker(cx, Side::Write);
        let cx = &mut Context::from_waker(&waker);
        loop {
            ready!(self.poll_upkeep(cx, Side::Write))?;
            match ready!(self.poll_drain(cx)) {
                Ok(()) => {}
                Err(err) => {
                    self.stream_failed(err, cx)?;
                    continue;
                }
            }
            match ready!(Pin::new(&mut self.writer).poll_flush(cx)) {
                Ok(()) => return Poll::Ready(Ok(())),
                Err(err) => {
                    self.stream_failed(err, cx)?;
                    if self.resumption().down.is_none() {
                        // Nothing left to resume: nothing left to flush.
                        return Poll::Ready(Ok(()));
                    }
                }
            }
        }
    }

    /// [`AsyncWrite::poll_shutdown`] of a resumable session: seals `end` once what
    /// the peer lacks has gone out. Like TCP's, it does not wait for the peer to
    /// read. The stream itself is finished once both ends ended, since
    /// acknowledgements flow until then.
    pub(super) fn poll_shutdown_resumable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let waker = self.shared_waker(cx, Side::Write);
        let cx = &mut Context::from_waker(&waker);
        loop {
            ready!(self.poll_upkeep(cx, Side::Write))?;
            let r = self.resumption();
            if r.unconfirmed.is_some() || r.resend.is_some() {
                r.write_waker = Some(cx.waker().clone());
                ready!(self.poll_read_ahead(cx))?;
                continue;
            }
            if !self.transport.sent_end() {
                self.transport
                    .seal_end(&mut self.write_buf)
                    .map_err(io_error)?;
                self.resumption().ended = true;
            }
            match ready!(self.poll_drain(cx)) {
                Ok(()) => {}
                Err(err) => {
                    self.stream_failed(err, cx)?;
                    continue;
                }
            }
            // Ended: dropped now, the session delivers what it wrote and lingers.
            self.writer.reset_dropped_with(None);
            self.finish_after_both_ends(cx);
            return Poll::Ready(Ok(()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use blindrelay_protocol::noise::{
        split_frame, Hello, HostHandshake, PlayerHandshake, VerdictOpened,
    };
    use blindrelay_protocol::SecretKey;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
    use tokio::sync::mpsc;
    use tokio::task::JoinHandle;

    type R = ReadHalf<DuplexStream>;
    type W = WriteHalf<DuplexStream>;
    pub(super) type Session = SecureStream<R, W>;

    /// Streams handed to a session by the test, as a player's dial or a host's
    /// table would: a host takes them as soon as they come (`offered`), a player
    /// only once its stream failed.
    struct Handed {
        streams: mpsc::UnboundedReceiver<Rejoined<R, W>>,
        offered: bool,
    }

    impl Rejoin<R, W> for Handed {
        fn poll_rejoin(
            &mut self,
            cx: &mut Context<'_>,
            _id: ResumeId,
        ) -> Poll<Result<Rejoined<R, W>, RejoinRefused>> {
            match self.streams.poll_recv(cx) {
                Poll::Ready(Some(rejoined)) => Poll::Ready(Ok(rejoined)),
                Poll::Ready(None) => Poll::Ready(Err(RejoinRefused)),
                Poll::Pending => Poll::Pending,
            }
        }

        fn poll_offered(&mut self, cx: &mut Context<'_>) -> Poll<Rejoined<R, W>> {
            match self.offered {
                true => match self.streams.poll_recv(cx) {
                    Poll::Ready(Some(rejoined)) => Poll::Ready(rejoined),
                    Poll::Ready(None) | Poll::Pending => Poll::Pending,
                },
                false => Poll::Pending,
            }
        }
    }

    /// A handshake in memory asking `hello`: the player's and the host's transports.
    fn handshake(hello: Hello) -> (Transport, Transport) {
        let (player_key, host_key) = (
            SecretKey::from_bytes([1; 32]),
            SecretKey::from_bytes([2; 32]),
        );
        let mut player =
            PlayerHandshake::with_hello(&player_key, &host_key.host_id(), hello).unwrap();
        let mut wire = BytesMut::new();
        player.write_hello(&mut wire).unwrap();
        let frame = split_frame(&mut wire).unwrap();
        let host = HostHandshake::respond(&host_key, &frame, &mut wire).unwrap();
        let host = if hello == Hello::Resumable {
            host.welcome_resumable(&mut wire).unwrap()
        } else {
            host.resumed(&mut wire).unwrap()
        };
        let reply = split_frame(&mut wire).unwrap();
        let verdict = split_frame(&mut wire).unwrap();
        match player
            .read_reply(&reply)
            .unwrap()
            .open_verdict(&verdict)
            .unwrap()
        {
            VerdictOpened::Welcome(player) | VerdictOpened::Resumed(player) => (player, host),
            other => panic!("not served: {:?}", other.verdict()),
        }
    }

    /// A stream between the two ends through a "relay" task that copies bytes,
    /// and cuts the stream in the middle once it has copied `cut_after` bytes: the
    /// two ends' halves, and the task, which ends at the cut.
    fn through_relay(cut_after: usize) -> ((R, W), (R, W), JoinHandle<()>) {
        let (player, relay_player) = tokio::io::duplex(1 << 20);
        let (host, relay_host) = tokio::io::duplex(1 << 20);
        let relay = tokio::spawn(async move {
            let budget = std::sync::atomic::AtomicUsize::new(cut_after);
            let cut = tokio::sync::Notify::new();
            // Copies one way; at its end, ends that way as a relay does. Once the
            // budget is spent, cuts both ways at once.
            let copy = |mut from: ReadHalf<DuplexStream>, mut to: WriteHalf<DuplexStream>| {
                let (budget, cut) = (&budget, &cut);
                async move {
                    let mut buf = vec![0; 16 * 1024];
                    loop {
                        let n = match from.read(&mut buf).await {
                            Ok(0) | Err(_) => {
                                let _ = to.shutdown().await;
                                return;
                            }
                            Ok(n) => n,
                        };
                        let left = budget.load(std::sync::atomic::Ordering::Relaxed);
                        let n = n.min(left);
                        budget.fetch_sub(n, std::sync::atomic::Ordering::Relaxed);
                        if to.write_all(&buf[..n]).await.is_err() || n == left {
                            cut.notify_one();
                            return;
                        }
                    }
                }
            };
            let (pr, pw) = tokio::io::split(relay_player);
            let (hr, hw) = tokio::io::split(relay_host);
            tokio::select! {
                _ = async { tokio::join!(copy(pr, hw), copy(hr, pw)) } => {}
                () = cut.notified() => {}
            }
        });
        (tokio::io::split(player), tokio::io::split(host), relay)
    }

    fn rejoined((reader, writer): (R, W), transport: Transport) -> Rejoined<R, W> {
        Rejoined {
            reader,
            writer,
            transport,
            path: SessionPath::Relayed,
            relay_transport: None,
            session_id: 2,
            limits: SessionLimits::NONE,
            first_write: BytesMut::new(),
        }
    }

    /// What the test keeps of a pair of resumable ends once they run in tasks:
    /// the relay task, and where to hand each end a new stream.
    pub(super) struct Middle {
        relay: JoinHandle<()>,
        to_player: mpsc::UnboundedSender<Rejoined<R, W>>,
        to_host: mpsc::UnboundedSender<Rejoined<R, W>>,
    }

    pub(super) fn resumable_pair(
        replay_window: usize,
        window: Duration,
        cut_after: usize,
    ) -> (Session, Session, Middle) {
        let (player_transport, host_transport) = handshake(Hello::Resumable);
        let ((pr, pw), (hr, hw), relay) = through_relay(cut_after);
        let (to_player, player_rx) = mpsc::unbounded_channel();
        let (to_host, host_rx) = mpsc::unbounded_channel();
        let resumption = |streams, offered| {
            Resumption::new(replay_window, window, Box::new(Handed { streams, offered }))
        };
        let player = SecureStream::new(
            pr,
            pw,
            player_transport,
            SessionPath::Relayed,
            1,
            BytesMut::new(),
        )
        .with_resumption(resumption(player_rx, false));
        let host = SecureStream::new(
            hr,
            hw,
            host_transport,
            SessionPath::Relayed,
            1,
            BytesMut::new(),
        )
        .with_resumption(resumption(host_rx, true));
        let middle = Middle {
            relay,
            to_player,
            to_host,
        };
        (player, host, middle)
    }

    impl Middle {
        /// Cuts the stream in the middle now, as a relay that dies does.
        fn cut(&mut self) {
            self.relay.abort();
        }

        /// Waits for the relay to cut the stream.
        async fn cut_by_relay(&mut self) {
            (&mut self.relay).await.expect("the relay task");
        }

        /// Hands both ends a new stream, resumed (the id is the test's to check),
        /// cut in its turn after `cut_after` bytes.
        fn resume(&mut self, cut_after: usize) {
            let id = handshake(Hello::Resumable).0.resume_id();
            let (player_transport, host_transport) = handshake(Hello::Resume(id));
            let (player_halves, host_halves, relay) = through_relay(cut_after);
            self.relay = relay;
            self.to_player
                .send(rejoined(player_halves, player_transport))
                .unwrap();
            self.to_host
                .send(rejoined(host_halves, host_transport))
                .unwrap();
        }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 16) as u8)
            .collect()
    }

    /// Writes `data` and ends, in one task, while another reads everything the
    /// other end sends; returns what it read.
    async fn exchange(session: Session, data: Vec<u8>) -> (Vec<u8>, Session) {
        let (mut reader, mut writer) = tokio::io::split(session);
        let writing = tokio::spawn(async move {
            writer.write_all(&data).await.expect("write");
            writer.shutdown().await.expect("shutdown");
            writer
        });
        let mut received = Vec::new();
        reader.read_to_end(&mut received).await.expect("read");
        let writer = writing.await.expect("writer");
        (received, reader.unsplit(writer))
    }

    #[tokio::test]
    async fn a_session_cut_in_the_middle_goes_on_byte_exact_on_a_new_stream() {
        let (player, host, mut middle) =
            resumable_pair(256 * 1024, Duration::from_secs(30), 1 << 20);
        let (up, down) = (pattern(3 << 20, 1), pattern(5 << 20, 2));
        let player = tokio::spawn(exchange(player, up.clone()));
        let host = tokio::spawn(exchange(host, down.clone()));
        // Cut twice while bytes flow both ways, each time after a few frames.
        middle.cut_by_relay().await;
        middle.resume(3 << 20);
        middle.cut_by_relay().await;
        middle.resume(usize::MAX);
        let ((from_host, player), (from_player, host)) =
            (player.await.unwrap(), host.await.unwrap());
        assert_eq!(from_host.len(), down.len());
        assert!(
            from_host == down,
            "the host's bytes arrived whole and in order"
        );
        assert!(
            from_player == up,
            "the player's bytes arrived whole and in order"
        );
        assert_eq!((player.resumes(), host.resumes()), (2, 2));
    }

    #[tokio::test]
    async fn a_writer_stops_at_its_replay_window_until_the_peer_reads() {
        let window = 128 * 1024;
        let (mut player, mut host, _middle) =
            resumable_pair(window, Duration::from_secs(30), usize::MAX);
        let data = pattern(4 * window, 3);
        let mut written = 0;
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(200), player.write(&data[written..])).await
        {
            written += n;
        }
        assert_eq!(written, window, "no more than the window unacknowledged");
        let writer = tokio::spawn(async move {
            player.write_all(&data[written..]).await.expect("write on");
            player.shutdown().await.expect("shutdown");
            player
        });
        let mut received = Vec::new();
        host.read_to_end(&mut received).await.expect("read");
        assert_eq!(
            received.len(),
            4 * window,
            "the reader's acknowledgements let it go on"
        );
        let player = writer.await.unwrap();
        assert!(player.resume.as_ref().unwrap().replay.held() <= window);
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_sends_past_any_window_fills_no_more_than_the_read_ahead_limit() {
        let (player_transport, mut peer_transport) = handshake(Hello::Resumable);
        let (player_end, mut peer) = tokio::io::duplex(1 << 20);
        let (reader, writer) = tokio::io::split(player_end);
        let (_to_player, streams) = mpsc::unbounded_channel();
        let mut player = SecureStream::new(
            reader,
            writer,
            player_transport,
            SessionPath::Relayed,
            1,
            BytesMut::new(),
        )
        .with_resumption(Resumption::new(
            64 * 1024,
            Duration::from_secs(30),
            Box::new(Handed {
                streams,
                offered: false,
            }),
        ));
        // A peer that never acknowledges and sends on past any window a peer may
        // have (a breach of PROTOCOL.md 10.8), while this end's application writes
        // and does not read: its writer, stopped at its window, reads ahead for
        // acknowledgements that never come.
        let flood = tokio::spawn(async move {
            let block = vec![1; MAX_PLAINTEXT_LEN];
            let mut wire = BytesMut::new();
            let mut sent = 0;
            while sent < READ_AHEAD_LIMIT + (8 << 20) {
                wire.clear();
                peer_transport.seal(&block, &mut wire).unwrap();
                if peer.write_all(&wire).await.is_err() {
                    break;
                }
                sent += block.len();
            }
            peer
        });
        let wrote =
            tokio::time::timeout(Duration::from_secs(10), player.write_all(&vec![2; 1 << 20]))
                .await;
        assert!(wrote.is_err(), "the writer waits at its window");
        // The paused clock moved only once both sides could do no more.
        let held = player.plain.len();
        assert!(
            (READ_AHEAD_LIMIT..READ_AHEAD_LIMIT + MAX_PLAINTEXT_LEN).contains(&held),
            "{held} bytes read ahead"
        );
        assert!(!flood.is_finished(), "the rest waits in the peer's stream");
    }

    #[tokio::test(start_paused = true)]
    async fn a_writer_whose_reader_stopped_calling_finds_the_acknowledgements_itself() {
        let window = 64 * 1024;
        let (player, mut host, _middle) =
            resumable_pair(window, Duration::from_secs(30), usize::MAX);
        let (reader, mut writer) = tokio::io::split(player);
        // A read in a task of its own, given up while it waited: its call is
        // dropped, and that task never reads again. The writer, at its window,
        // first leaves the acknowledgements to it.
        let _reader = tokio::spawn(async move {
            let mut reader = reader;
            let gave_up =
                tokio::time::timeout(Duration::from_millis(10), reader.read(&mut [0; 16])).await;
            assert!(gave_up.is_err(), "nothing to read yet");
            reader
        })
        .await
        .unwrap();
        let data = pattern(8 * window, 11);
        let writing = tokio::spawn(async move {
            writer.write_all(&data).await.expect("write");
            writer.shutdown().await.expect("shutdown");
        });
        let mut received = Vec::new();
        tokio::time::timeout(Duration::from_secs(60), async {
            host.read_to_end(&mut received).await.expect("read");
            writing.await.unwrap();
        })
        .await
        .expect("the writer goes on without its reader");
        assert_eq!(received.len(), 8 * window);
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_with_no_new_stream_in_its_window_fails_with_the_reason() {
        let (mut player, _host, mut middle) =
            resumable_pair(256 * 1024, Duration::from_secs(30), usize::MAX);
        middle.cut();
        let started = Instant::now();
        let err = player
            .read(&mut [0; 16])
            .await
            .expect_err("no stream came back");
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted);
        assert!(
            err.to_string()
                .contains("could not be reached again within 30s"),
            "{err}"
        );
        // And every call after says the same.
        let again = player.write(b"x").await.expect_err("still lost");
        assert_eq!(again.to_string(), err.to_string());
    }

    /// A stream the host takes for the session that its player never opened: what
    /// a replayed resume hello brings. Its other end reads and says nothing.
    fn replayed(middle: &Middle) -> DuplexStream {
        let id = handshake(Hello::Resumable).0.resume_id();
        let (_, host_transport) = handshake(Hello::Resume(id));
        let (host_end, attacker) = tokio::io::duplex(1 << 20);
        let halves = tokio::io::split(host_end);
        middle
            .to_host
            .send(rejoined(halves, host_transport))
            .unwrap();
        attacker
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_stream_that_never_brings_the_peers_count_ends_the_session_at_the_window() {
        let (_player, mut host, middle) =
            resumable_pair(256 * 1024, Duration::from_secs(30), usize::MAX);
        let _attacker = replayed(&middle);
        let started = Instant::now();
        let err = tokio::time::timeout(Duration::from_secs(60), host.read(&mut [0; 16]))
            .await
            .expect("a deadline, not a wait for ever")
            .expect_err("the session ends");
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        assert!(
            err.to_string()
                .contains("could not be reached again within 30s"),
            "{err}"
        );
        assert_eq!(host.resumes(), 0, "a stream never confirmed is no resume");
    }

    #[tokio::test(start_paused = true)]
    async fn a_replayed_hello_costs_the_session_a_resume_not_its_bytes() {
        let (player, host, mut middle) =
            resumable_pair(256 * 1024, Duration::from_secs(30), usize::MAX);
        let (up, down) = (pattern(2 << 20, 4), pattern(3 << 20, 5));
        let player = tokio::spawn(exchange(player, up.clone()));
        let host = tokio::spawn(exchange(host, down.clone()));
        // The host takes the replayed hello's stream (its count arrives there),
        // dropping the player's, which the player sees lost.
        let mut attacker = replayed(&middle);
        let mut count = [0; 16];
        attacker
            .read_exact(&mut count)
            .await
            .expect("the host's count");
        // What it sends back cannot be opened: that stream is dropped, not the
        // session.
        let mut garbage = vec![0, 48];
        garbage.extend(pattern(48, 9));
        attacker.write_all(&garbage).await.expect("garbage");
        // Once every task has done what it can (the paused clock moves only then),
        // the host has read it.
        tokio::time::sleep(Duration::from_millis(1)).await;
        // The player comes back on a stream of its own: the session goes on.
        middle.resume(usize::MAX);
        let both = async { (player.await.unwrap(), host.await.unwrap()) };
        let ((from_host, player), (from_player, host)) =
            tokio::time::timeout(Duration::from_secs(60), both)
                .await
                .expect("both ends finish");
        assert!(from_host == down, "the host's bytes arrived whole");
        assert!(from_player == up, "the player's bytes arrived whole");
        assert_eq!((player.resumes(), host.resumes()), (1, 1));
    }

    #[tokio::test]
    async fn a_stream_lost_once_both_ends_have_everything_leaves_nothing_to_retry() {
        let (player, host, mut middle) =
            resumable_pair(256 * 1024, Duration::from_secs(30), usize::MAX);
        let (player, host) = tokio::join!(
            exchange(player, pattern(1000, 7)),
            exchange(host, pattern(1000, 8))
        );
        let (mut player, _host) = (player.1, host.1);
        // Everything acknowledged, and an acknowledgement still waiting to go out
        // when the stream is lost: the peer has no use for it.
        let r = player.resumption();
        let sent = r.replay.sent();
        r.replay.acknowledge(sent).unwrap();
        assert!(r.ended && r.peer_ended);
        player.write_buf.extend_from_slice(&[0; 27]);
        middle.cut();
        let _ = (&mut middle.relay).await;
        // Retried for ever before (a recursion that overflowed the stack).
        tokio::time::timeout(Duration::from_secs(5), player.flush())
            .await
            .expect("flush returns")
            .expect("nothing left to flush");
        assert!(player.write_buf.is_empty());
        assert_eq!(player.resumes(), 0, "nothing to resume");
    }

    #[tokio::test]
    async fn what_the_relay_or_the_peer_meant_is_not_resumed() {
        assert!(mendable(&io::Error::new(
            io::ErrorKind::ConnectionReset,
            SessionEnded::PeerGone
        )));
        assert!(mendable(&io::Error::from(io::ErrorKind::UnexpectedEof)));
        assert!(mendable(&io::Error::from(io::ErrorKind::ConnectionReset)));
        for ended in [
            SessionEnded::ByteLimit,
            SessionEnded::Stalled,
            SessionEnded::Cancelled,
            SessionEnded::ProtocolViolation,
        ] {
            assert!(
                !mendable(&io::Error::new(io::ErrorKind::ConnectionReset, ended)),
                "{ended}"
            );
        }
        assert!(!mendable(&io::Error::from(io::ErrorKind::InvalidData)));
        // A player that moved its session to a punched path resets the old stream
        // with MOVED: the host waits for the stream it moved to. Another code means
        // what it says.
        let reset = |code: u32| {
            io::Error::new(
                io::ErrorKind::ConnectionReset,
                quinn::ReadError::Reset(code.into()),
            )
        };
        let moved = blindrelay_protocol::codes::stream::MOVED.to_u32();
        assert!(mendable(&reset(moved)));
        assert!(mendable(&reset(0)));
        assert!(!mendable(&reset(0x4242)));
    }
}

#[cfg(test)]
mod echo_tests {
    use super::tests::resumable_pair;

    fn pair(window: usize) -> (super::tests::Session, super::tests::Session, impl Sized) {
        resumable_pair(window, std::time::Duration::from_secs(30), usize::MAX)
    }
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A player that writes until told to stop while it reads an echoing host:
    /// both directions full, then both ends' `end`; every task ends.
    #[tokio::test]
    async fn an_echo_under_full_load_ends_cleanly_when_the_writer_stops() {
        let (player, mut host, _middle) = pair(128 * 1024);
        let echo = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match host.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        host.write_all(&buf[..n]).await.expect("echo");
                        host.flush().await.expect("flush");
                    }
                }
            }
            host.shutdown().await.expect("host shutdown");
        });
        let (mut reader, mut writer) = tokio::io::split(player);
        let stop = Arc::new(AtomicBool::new(false));
        let writing = tokio::spawn({
            let stop = stop.clone();
            async move {
                let payload = vec![0x5a; 16 * 1024];
                let mut sent = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    writer.write_all(&payload).await.expect("write");
                    sent += payload.len() as u64;
                }
                writer.shutdown().await.expect("shutdown");
                sent
            }
        });
        let reading = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = 0u64;
            loop {
                match reader.read(&mut buf).await.expect("read") {
                    0 => return got,
                    n => got += n as u64,
                }
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        stop.store(true, Ordering::Relaxed);
        let ended = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            let sent = writing.await.unwrap();
            let got = reading.await.unwrap();
            echo.await.unwrap();
            (sent, got)
        })
        .await
        .expect("every task ends");
        assert_eq!(ended.0, ended.1, "every byte echoed");
    }

    /// Both ends write until told to stop and read to the end, each in a task of
    /// its own, as the load generator's sessions do: a reader that sends an
    /// acknowledgement into a full stream must not leave the writer waiting on that
    /// stream asleep.
    #[tokio::test]
    async fn both_ends_writing_and_reading_in_tasks_of_their_own_all_end() {
        let (player, host, _middle) = pair(4 << 20);
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = tokio::task::JoinSet::new();
        for session in [player, host] {
            let (mut reader, mut writer) = tokio::io::split(session);
            let stop = stop.clone();
            tasks.spawn(async move {
                let payload = vec![0x5a; 16 * 1024];
                while !stop.load(Ordering::Relaxed) {
                    writer.write_all(&payload).await.expect("write");
                }
                writer.shutdown().await.expect("shutdown");
            });
            tasks.spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while reader.read(&mut buf).await.expect("read") > 0 {}
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        stop.store(true, Ordering::Relaxed);
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while let Some(joined) = tasks.join_next().await {
                joined.expect("task");
            }
        })
        .await
        .expect("every task ends");
    }
}
