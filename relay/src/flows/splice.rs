//! The splice: forwards a session's bytes between the player's stream and the host's.
//!
//! Each direction is one loop: take the next chunk the transport has received, hand
//! that same chunk to the other stream. No parsing, no copy beyond the transport's
//! own buffers, and at most one chunk (≤ [`MAX_CHUNK`]) in hand per direction: when
//! the receiving side's flow-control window is full, the write waits, this loop stops
//! reading, and flow control pushes back on the sender. A slow reader slows its
//! writer; it never grows the relay.
//!
//! The splice joins any two streams that implement [`SessionRecv`]/[`SessionSend`]
//! (see [`crate::stream::halves`]), whatever transport each came on.
//!
//! Ends travel across: a clean finish becomes a finish, a reset becomes a reset with
//! the same code, a stop-sending becomes a stop-sending with the same code, and a lost
//! connection becomes [`codes::stream::PEER_GONE`] on the other side. Since the session
//! is end-to-end encrypted with an authenticated end of stream, a finish the relay
//! invents is detected by player and host as truncation.
//!
//! Limits end the whole session with a code of their own, told to both ends in both
//! directions (reset towards each reader, stop-sending towards each writer): a side
//! that leaves bytes unread for the stall timeout ([`codes::stream::STALLED`]), no byte
//! either way for the idle timeout, the maximum duration, and the maximum bytes in
//! one direction (exactly that many, counted from the first byte after the control
//! messages, are handed to the other stream, never one more). The reset that follows
//! lets the reader's QUIC discard what it had not read yet, and quinn 0.11 offers no
//! way to wait for the reader to have read it without finishing the stream (which
//! would read as a clean end), so the far end receives at most that many.

use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use blindrelay_protocol::{codes, StreamCode};
use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::policy::bucket::{throttle, TokenBucket};
pub(crate) use crate::policy::limits::MAX_CHUNK;
use crate::stream::halves::{RecvEnd, SendEnd, SessionRecv, SessionSend};

/// How long a finished direction waits for the other side to acknowledge its last
/// bytes when no stall timeout is set.
const DELIVERY_WAIT: Duration = Duration::from_secs(30);

/// The limits one session is spliced under, resolved: `None` is no limit.
pub(crate) struct SpliceLimits<'a> {
    pub stall_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub max_duration: Option<Duration>,
    pub max_bytes: Option<NonZeroU64>,
    /// The session's own bucket and its host's, for bytes towards the host.
    pub player_to_host: [Option<&'a TokenBucket>; 2],
    /// The session's own bucket and its host's, for bytes towards the player.
    pub host_to_player: [Option<&'a TokenBucket>; 2],
}

/// Where the splice counts what it forwards: the relay's byte counters, and in test
/// builds an optional tap that sees every chunk.
pub(crate) struct Meters<'a> {
    pub player_to_host: &'a AtomicU64,
    pub host_to_player: &'a AtomicU64,
    #[cfg(feature = "splice-tap")]
    pub tap: Option<&'a dyn SpliceTap>,
}

/// How a session went.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub player_to_host: u64,
    pub host_to_player: u64,
    /// The code of the limit that ended the session, if one did.
    pub ended_by: Option<StreamCode>,
    /// The player reset its side with `MOVED`: the session went on over a punched
    /// direct path (PROTOCOL.md 10.9).
    pub moved: bool,
}

/// Which way a chunk travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "splice-tap"), allow(unreachable_pub))]
pub enum Direction {
    /// From the player to the host.
    PlayerToHost,
    /// From the host to the player.
    HostToPlayer,
}

/// How one direction of a session ended, as the relay learned it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "splice-tap"), allow(unreachable_pub))]
pub enum StreamEnd {
    /// The sending side finished its stream (FIN), all of it read.
    Finished,
    /// The sending side reset its stream with this code.
    Reset(StreamCode),
    /// The receiving side asked, with this code, to stop sending.
    Stopped(StreamCode),
    /// A side's connection went away.
    Gone,
    /// The relay ended the session at the limit with this code.
    Limit(StreamCode),
}

/// Sees every chunk the splice forwards, and how each direction ends. Exists so
/// tests can prove that what the relay handles is ciphertext, and what it learns
/// about a session; compiled only with the `splice-tap` feature.
#[cfg(feature = "splice-tap")]
pub trait SpliceTap: Send + Sync {
    /// Called with each chunk before it is forwarded.
    fn observe(&self, direction: Direction, chunk: &[u8]);

    /// Called once when a direction has ended, with how it ended.
    fn ended(&self, _direction: Direction, _end: StreamEnd) {}
}

/// Forwards both directions until both have ended or a limit ends the session.
/// `player` and `host` are each side's (receiving, sending) halves.
pub(crate) async fn run<PR, PS, HR, HS>(
    player: (PR, PS),
    host: (HR, HS),
    limits: SpliceLimits<'_>,
    meters: Meters<'_>,
) -> Outcome
where
    PR: SessionRecv,
    PS: SessionSend,
    HR: SessionRecv,
    HS: SessionSend,
{
    let (end, _) = watch::channel(None);
    let activity = Activity::new();
    let forwards = [AtomicU64::new(0), AtomicU64::new(0)];
    let pump = |direction, counter, buckets| Pump {
        direction,
        counter,
        buckets,
        limits: &limits,
        activity: &activity,
        forwards: match direction {
            Direction::PlayerToHost => [&forwards[0], &forwards[1]],
            Direction::HostToPlayer => [&forwards[1], &forwards[0]],
        },
        end: &end,
        #[cfg(feature = "splice-tap")]
        tap: meters.tap,
    };
    let to_host = pump(
        Direction::PlayerToHost,
        meters.player_to_host,
        limits.player_to_host,
    );
    let to_player = pump(
        Direction::HostToPlayer,
        meters.host_to_player,
        limits.host_to_player,
    );
    let pumps = async {
        tokio::join!(
            to_host.run(player.0, host.1),
            to_player.run(host.0, player.1)
        )
    };
    tokio::pin!(pumps);
    let ((player_to_host, from_player), (host_to_player, _)) = tokio::select! {
        totals = &mut pumps => totals,
        code = watchdog(&activity, &limits) => {
            end_session(&end, code);
            pumps.await
        }
    };
    let ended_by = *end.borrow();
    Outcome {
        player_to_host,
        host_to_player,
        ended_by,
        moved: from_player == StreamEnd::Reset(codes::stream::MOVED),
    }
}

/// One direction of the splice.
struct Pump<'a> {
    #[cfg_attr(not(feature = "splice-tap"), allow(dead_code))]
    direction: Direction,
    counter: &'a AtomicU64,
    buckets: [Option<&'a TokenBucket>; 2],
    limits: &'a SpliceLimits<'a>,
    activity: &'a Activity,
    /// Chunks forwarded by this pump and by the other one: a run of tiny chunks
    /// with no answer the other way is a flood, not a conversation (see
    /// [`TINY_STREAK`]).
    forwards: [&'a AtomicU64; 2],
    /// Carries the code of the limit that ended the session, to both pumps.
    end: &'a watch::Sender<Option<StreamCode>>,
    #[cfg(feature = "splice-tap")]
    tap: Option<&'a dyn SpliceTap>,
}

/// What one step of a pump came to.
enum Step {
    Go,
    /// The session ended by a limit, with this code.
    Ended(StreamCode),
    /// This direction is over, as it says; the streams were told.
    Done(StreamEnd),
}

impl Pump<'_> {
    /// Forwards until this direction ends: how many bytes, and how it ended.
    async fn run(self, mut from: impl SessionRecv, to: impl SessionSend) -> (u64, StreamEnd) {
        let mut to = Outgoing::new(to);
        let peer_gone = codes::stream::PEER_GONE;
        let mut ended = self.end.subscribe();
        // The receiver may stop reading while we wait for the sender: pass that on at
        // once instead of at our next write.
        let stopped = to.stream.stopped();
        tokio::pin!(stopped);
        let mut total = 0u64;
        // How the stream ended, met while coalescing small chunks: handled once the
        // bytes before it are forwarded.
        let mut deferred = None;
        // Tiny chunks forwarded since the other direction last forwarded anything.
        let mut streak = 0u32;
        let mut answers = self.forwards[1].load(Ordering::Relaxed);
        let step = loop {
            let batching = streak >= TINY_STREAK;
            // Biased: once a limit has ended the session, what arrives after (a side
            // finishing because it was told) must not be passed on as a clean end.
            let read = tokio::select! {
                biased;
                code = ended_by(&mut ended) => break Step::Ended(code),
                stop = &mut stopped => {
                    let code = stop.unwrap_or(peer_gone);
                    // A stopped stream is answered with a reset of the same code.
                    to.reset(code);
                    from.stop(code);
                    break Step::Done(stop.map_or(StreamEnd::Gone, StreamEnd::Stopped));
                }
                read = async {
                    match deferred.take() {
                        Some(end) => end,
                        None => {
                            if batching {
                                // A flood of tiny chunks: let what follows gather
                                // in the stream's window, and take it at once.
                                tokio::time::sleep_until(next_batch()).await;
                            }
                            from.read_chunk(MAX_CHUNK).await
                        }
                    }
                } => read,
            };
            let first = match &read {
                Ok(Some(bytes)) => bytes.len(),
                _ => 0,
            };
            let tiny = (1..TINY_CHUNK).contains(&first);
            let read = match read {
                Ok(Some(bytes)) if tiny => {
                    let (bytes, end) = coalesce(bytes, &mut from).await;
                    deferred = end;
                    Ok(Some(bytes))
                }
                other => other,
            };
            if read.as_ref().is_ok_and(Option::is_some) {
                // A run of tiny chunks with few answers the other way. Once
                // batching, what gathered meanwhile comes as larger chunks (quinn
                // joins the fragments it holds): only a chunk the size bulk data
                // arrives in ends the run.
                let now = self.forwards[1].load(Ordering::Relaxed);
                let small = tiny || (batching && first < MAX_CHUNK / 2);
                if small {
                    streak = next_streak(streak, now - answers);
                } else {
                    streak = 0;
                }
                answers = now;
                self.forwards[0].fetch_add(1, Ordering::Relaxed);
            }
            let mut bytes = match read {
                Ok(Some(bytes)) => bytes,
                Ok(None) => {
                    to.finish();
                    // The session is over once the other side has everything: a relay
                    // that closes (a drain ending) must not cut bytes still in flight.
                    let wait = self.limits.stall_timeout.unwrap_or(DELIVERY_WAIT);
                    let _ = tokio::time::timeout(wait, &mut stopped).await;
                    break Step::Done(StreamEnd::Finished);
                }
                Err(RecvEnd::Reset(code)) => {
                    to.reset(code);
                    break Step::Done(StreamEnd::Reset(code));
                }
                Err(RecvEnd::Gone) => {
                    to.reset(peer_gone);
                    break Step::Done(StreamEnd::Gone);
                }
            };
            #[cfg(feature = "splice-tap")]
            if let Some(tap) = self.tap {
                tap.observe(self.direction, &bytes);
            }
            let mut over_limit = false;
            if let Some(max) = self.limits.max_bytes {
                let allowed = max.get().saturating_sub(total);
                if bytes.len() as u64 > allowed {
                    bytes.truncate(allowed as usize);
                    over_limit = true;
                }
            }
            tokio::select! {
                biased;
                code = ended_by(&mut ended) => break Step::Ended(code),
                () = throttle(self.buckets, bytes.len() as u64) => {}
            }
            match self
                .write(&mut to, &mut from, bytes, &mut ended, &mut total)
                .await
            {
                Step::Go => {}
                other => break other,
            }
            if over_limit {
                end_session(self.end, codes::stream::BYTE_LIMIT);
                break Step::Ended(codes::stream::BYTE_LIMIT);
            }
        };
        let how = match step {
            Step::Ended(code) => {
                // Whatever ended the session, both ends of this direction hear why.
                to.reset(code);
                from.stop(code);
                StreamEnd::Limit(code)
            }
            Step::Done(how) => how,
            // The loop never stops on `Go`.
            Step::Go => StreamEnd::Gone,
        };
        #[cfg(feature = "splice-tap")]
        if let Some(tap) = self.tap {
            tap.ended(self.direction, how);
        }
        (total, how)
    }

    /// Writes one chunk, passing on stops and watching for a stalled reader.
    async fn write<R: SessionRecv, S: SessionSend>(
        &self,
        to: &mut Outgoing<S>,
        from: &mut R,
        mut bytes: Bytes,
        ended: &mut watch::Receiver<Option<StreamCode>>,
        total: &mut u64,
    ) -> Step {
        while !bytes.is_empty() {
            let write = to.stream.write_some(&mut bytes);
            let written = tokio::select! {
                biased;
                code = ended_by(ended) => return Step::Ended(code),
                written = within(self.limits.stall_timeout, write) => written,
            };
            match written {
                None => {
                    end_session(self.end, codes::stream::STALLED);
                    return Step::Ended(codes::stream::STALLED);
                }
                Some(Ok(written)) => {
                    let len = written as u64;
                    *total += len;
                    self.counter.fetch_add(len, Ordering::Relaxed);
                    self.activity.touch();
                }
                Some(Err(SendEnd::Stopped(code))) => {
                    to.reset(code);
                    from.stop(code);
                    return Step::Done(StreamEnd::Stopped(code));
                }
                Some(Err(SendEnd::Gone)) => {
                    let peer_gone = codes::stream::PEER_GONE;
                    to.reset(peer_gone);
                    from.stop(peer_gone);
                    return Step::Done(StreamEnd::Gone);
                }
            }
        }
        Step::Go
    }
}

/// Chunks smaller than this are joined with whatever else has already arrived
/// before they are forwarded (see [`coalesce`]). Bulk data arrives in chunks of
/// about one packet's payload (over a kilobyte), which go on untouched and uncopied.
const TINY_CHUNK: usize = 512;

/// Tiny chunks a pump forwards in a row, with nothing forwarded the other way,
/// before it takes them in batches: one read every [`TINY_BATCH_WAIT`]. A
/// conversation (requests and answers, however small and fast) never gets there; a
/// peer that sends its bytes in tiny frames one way does, and then costs the relay
/// one wake-up, one chunk and a few packets per batch instead of per frame.
const TINY_STREAK: u32 = 64;

/// What each chunk forwarded the other way takes off a streak: a conversation (an
/// answer every few asks) never builds one, while the rare acknowledgements of a
/// resumable session's receiver (PROTOCOL.md 10.8) do not end a one-way run.
const ANSWER_WEIGHT: u32 = 16;

/// The longest a streak counts: room for a few answers before batching stops.
const STREAK_CAP: u32 = 2 * TINY_STREAK;

/// The streak after one more small chunk, `answers` chunks having gone the other way
/// since the last one.
fn next_streak(streak: u32, answers: u64) -> u32 {
    let taken = u32::try_from(answers)
        .unwrap_or(u32::MAX)
        .saturating_mul(ANSWER_WEIGHT);
    streak
        .saturating_sub(taken)
        .saturating_add(1)
        .min(STREAK_CAP)
}

/// How long a pump that takes tiny chunks in batches waits before each read.
const TINY_BATCH_WAIT: Duration = Duration::from_millis(5);

/// The next instant on the relay's batch clock ([`TINY_BATCH_WAIT`] ticks since the
/// process started): every pump that batches wakes on the same ticks, so that what
/// they forward to one connection leaves in full packets, not one each.
fn next_batch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    next_tick(epoch, Instant::now())
}

/// The first tick of a clock started at `epoch` and ticking every
/// [`TINY_BATCH_WAIT`] that comes after `now`.
fn next_tick(epoch: Instant, now: Instant) -> Instant {
    let tick = TINY_BATCH_WAIT.as_micros().max(1);
    let since = now.saturating_duration_since(epoch).as_micros();
    let ticks = u32::try_from(since / tick + 1).unwrap_or(u32::MAX);
    epoch + TINY_BATCH_WAIT.saturating_mul(ticks)
}

/// How much [`coalesce`] joins at most.
const COALESCE_BELOW: usize = 4096;

/// Joins `first` with the chunks already received behind it, up to
/// [`COALESCE_BELOW`] bytes, without waiting for more: a peer that sends its bytes
/// in tiny STREAM frames costs one forward per wake-up, not one per frame. Returns
/// the joined bytes, and the stream's end if one was met (to be handled after them).
async fn coalesce<R: SessionRecv>(
    first: Bytes,
    from: &mut R,
) -> (Bytes, Option<Result<Option<Bytes>, RecvEnd>>) {
    let mut joined = bytes::BytesMut::from(&first[..]);
    let mut end = None;
    while joined.len() < COALESCE_BELOW {
        // Only what is there now: a read that would wait loses to `ready`. Reading a
        // chunk is cancel-safe, so nothing is lost when it does.
        let next = tokio::select! {
            biased;
            next = from.read_chunk(COALESCE_BELOW - joined.len()) => next,
            () = std::future::ready(()) => break,
        };
        match next {
            Ok(Some(chunk)) => joined.extend_from_slice(&chunk),
            other => {
                end = Some(other);
                break;
            }
        }
    }
    (joined.freeze(), end)
}

/// The send half of a session stream, which says "the other side went away" if its
/// task is torn down before it ended the stream (its connection's task was cancelled,
/// say). Left to itself, a dropped QUIC stream is finished cleanly, which would look
/// like a normal end.
struct Outgoing<S: SessionSend> {
    stream: S,
    ended: bool,
}

impl<S: SessionSend> Outgoing<S> {
    fn new(stream: S) -> Self {
        Self {
            stream,
            ended: false,
        }
    }

    fn finish(&mut self) {
        self.ended = true;
        self.stream.finish();
    }

    fn reset(&mut self, code: StreamCode) {
        self.ended = true;
        self.stream.reset(code);
    }
}

impl<S: SessionSend> Drop for Outgoing<S> {
    fn drop(&mut self) {
        if !self.ended {
            self.stream.reset(codes::stream::PEER_GONE);
        }
    }
}

/// Records the first limit that ended the session; later ones are ignored.
fn end_session(end: &watch::Sender<Option<StreamCode>>, code: StreamCode) {
    end.send_if_modified(|ended| {
        if ended.is_some() {
            return false;
        }
        *ended = Some(code);
        true
    });
}

/// Resolves with the code once the session has been ended by a limit.
async fn ended_by(ended: &mut watch::Receiver<Option<StreamCode>>) -> StreamCode {
    loop {
        if let Some(code) = *ended.borrow_and_update() {
            return code;
        }
        if ended.changed().await.is_err() {
            // The sender lives as long as the session; never reached in practice.
            return std::future::pending().await;
        }
    }
}

/// Runs `future` within `limit`, or without a limit when `None`.
async fn within<F: std::future::Future>(limit: Option<Duration>, future: F) -> Option<F::Output> {
    match limit {
        Some(limit) => tokio::time::timeout(limit, future).await.ok(),
        None => Some(future.await),
    }
}

/// Resolves with the code of the time limit that ends the session first.
async fn watchdog(activity: &Activity, limits: &SpliceLimits<'_>) -> StreamCode {
    let duration = async {
        match limits.max_duration {
            Some(limit) => tokio::time::sleep(limit).await,
            None => std::future::pending().await,
        }
    };
    let idle = async {
        let Some(limit) = limits.idle_timeout else {
            return std::future::pending().await;
        };
        loop {
            let deadline = activity.last() + limit;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    tokio::select! {
        () = duration => codes::stream::DURATION_LIMIT,
        () = idle => codes::stream::SESSION_IDLE,
    }
}

/// When the session last moved a byte.
struct Activity {
    start: Instant,
    /// Milliseconds after `start`.
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    //! The splice over in-memory streams on a paused clock: every limit and every
    //! end, with no socket and no certificate.

    use super::*;
    use crate::stream::halves::memory::{self, MemoryRecv, MemorySend};

    const WINDOW: usize = 64 * 1024;

    /// One end of a session as a test drives it: what it writes to the relay, and
    /// what it reads from the relay.
    struct End {
        send: MemorySend,
        recv: MemoryRecv,
    }

    /// The relay's halves of one side: it reads what the end writes, writes what
    /// the end reads.
    type RelaySide = (MemoryRecv, MemorySend);

    fn side() -> (End, RelaySide) {
        let (up_send, up_recv) = memory::stream(WINDOW);
        let (down_send, down_recv) = memory::stream(WINDOW);
        (
            End {
                send: up_send,
                recv: down_recv,
            },
            (up_recv, down_send),
        )
    }

    fn no_limits() -> SpliceLimits<'static> {
        SpliceLimits {
            stall_timeout: None,
            idle_timeout: None,
            max_duration: None,
            max_bytes: None,
            player_to_host: [None, None],
            host_to_player: [None, None],
        }
    }

    struct Counters {
        player_to_host: AtomicU64,
        host_to_player: AtomicU64,
    }

    /// Starts a splice between a fresh player and host under `limits`.
    fn start(
        limits: SpliceLimits<'static>,
    ) -> (
        End,
        End,
        tokio::task::JoinHandle<Outcome>,
        &'static Counters,
    ) {
        let counters: &'static Counters = Box::leak(Box::new(Counters {
            player_to_host: AtomicU64::new(0),
            host_to_player: AtomicU64::new(0),
        }));
        let (player, player_side) = side();
        let (host, host_side) = side();
        let splice = tokio::spawn(async move {
            let meters = Meters {
                player_to_host: &counters.player_to_host,
                host_to_player: &counters.host_to_player,
                #[cfg(feature = "splice-tap")]
                tap: None,
            };
            run(player_side, host_side, limits, meters).await
        });
        (player, host, splice, counters)
    }

    fn pattern(len: usize, seed: u8) -> Bytes {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_and_clean_ends_cross_both_ways() {
        let (mut player, mut host, splice, counters) = start(no_limits());
        let (up, down) = (pattern(300_000, 1), pattern(200_000, 2));
        let (sent_up, sent_down) = (up.clone(), down.clone());
        let player_writes = tokio::spawn(async move {
            player.send.write_all(sent_up).await.expect("written");
            player.send.finish();
            player.recv.read_to_end().await
        });
        // Both ends write and read at once: either alone would fill the windows.
        let host_writes = async {
            host.send.write_all(sent_down).await.expect("written");
            host.send.finish();
        };
        let ((), at_host) = tokio::join!(host_writes, host.recv.read_to_end());
        let at_player = player_writes.await.expect("player");
        assert_eq!(at_host, (up.to_vec(), Ok(())));
        assert_eq!(at_player, (down.to_vec(), Ok(())));
        let outcome = splice.await.expect("splice");
        assert_eq!(
            outcome,
            Outcome {
                player_to_host: 300_000,
                host_to_player: 200_000,
                ended_by: None,
                moved: false,
            }
        );
        assert_eq!(counters.player_to_host.load(Ordering::Relaxed), 300_000);
        assert_eq!(counters.host_to_player.load(Ordering::Relaxed), 200_000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reset_and_a_stop_cross_with_their_codes() {
        let (mut player, mut host, splice, _) = start(no_limits());
        let theirs = StreamCode::from_u32(0x4242);
        player.send.reset(theirs);
        let (_, end) = host.recv.read_to_end().await;
        assert_eq!(end, Err(RecvEnd::Reset(theirs)));
        // The player stops reading: the host, which sends towards it, is told to stop
        // with the player's code.
        let stop = StreamCode::from_u32(0x77);
        player.recv.stop(stop);
        let refused = host.send.write_all(pattern(10, 0)).await;
        let stopped = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if host.send.stop_code().is_some() {
                    break host.send.stop_code();
                }
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the stop reaches the host");
        assert_eq!(stopped, Some(stop), "{refused:?}");
        let outcome = splice.await.expect("splice");
        assert_eq!(outcome.ended_by, None);
        assert!(!outcome.moved, "another code is no move");
    }

    #[tokio::test(start_paused = true)]
    async fn a_players_moved_reset_is_passed_on_and_counted_as_a_move() {
        let (mut player, mut host, splice, _) = start(no_limits());
        player.send.reset(codes::stream::MOVED);
        let (_, end) = host.recv.read_to_end().await;
        assert_eq!(end, Err(RecvEnd::Reset(codes::stream::MOVED)));
        player.recv.stop(StreamCode::from_u32(0));
        host.send.finish();
        let outcome = splice.await.expect("splice");
        assert!(outcome.moved);
    }

    #[tokio::test(start_paused = true)]
    async fn a_vanished_side_reads_as_peer_gone() {
        let (player, mut host, splice, _) = start(no_limits());
        player.send.vanish();
        let (_, end) = host.recv.read_to_end().await;
        assert_eq!(end, Err(RecvEnd::Reset(codes::stream::PEER_GONE)));
        drop(player);
        host.send.finish();
        splice.await.expect("splice");
    }

    /// A splice that is dropped midway (its task aborted) ends both directions
    /// with `PEER_GONE`, never as if each had finished: a stream dropped unended
    /// would otherwise read as a clean end, and a cut download as a whole one.
    #[tokio::test(start_paused = true)]
    async fn a_splice_dropped_midway_ends_both_ways_as_peer_gone() {
        let (mut player, mut host, splice, _) = start(no_limits());
        host.send
            .write_all(pattern(1000, 3))
            .await
            .expect("written");
        player
            .send
            .write_all(pattern(500, 4))
            .await
            .expect("written");
        tokio::time::sleep(Duration::from_millis(10)).await;
        // The relay drops the splice midway. A reset takes back what was not
        // read yet, as QUIC's does: what counts is how each direction ends.
        splice.abort();
        let _ = splice.await;
        let deadline = Duration::from_secs(5);
        for end in [&mut player.recv, &mut host.recv] {
            let (_, how) = tokio::time::timeout(deadline, end.read_to_end())
                .await
                .expect("the direction ends");
            assert_eq!(how, Err(RecvEnd::Reset(codes::stream::PEER_GONE)));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_reader_that_stalls_ends_the_session_for_both() {
        let limits = SpliceLimits {
            stall_timeout: Some(Duration::from_secs(2)),
            ..no_limits()
        };
        let (mut player, mut host, splice, _) = start(limits);
        // The host never reads: the player fills the relay's window towards the host
        // and the relay's own, then the relay stalls.
        let started = Instant::now();
        let written = player.send.write_all(pattern(4 * WINDOW, 3)).await;
        assert_eq!(written, Err(SendEnd::Stopped(codes::stream::STALLED)));
        let outcome = splice.await.expect("splice");
        assert_eq!(outcome.ended_by, Some(codes::stream::STALLED));
        assert!(started.elapsed() >= Duration::from_secs(2));
        let (_, at_host) = host.recv.read_to_end().await;
        assert_eq!(at_host, Err(RecvEnd::Reset(codes::stream::STALLED)));
        let (_, at_player) = player.recv.read_to_end().await;
        assert_eq!(at_player, Err(RecvEnd::Reset(codes::stream::STALLED)));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_session_ends_and_traffic_keeps_it_alive() {
        let limits = SpliceLimits {
            idle_timeout: Some(Duration::from_secs(10)),
            ..no_limits()
        };
        let (mut player, mut host, splice, _) = start(limits);
        let started = Instant::now();
        // A byte every 6 s for 30 s keeps it open past three idle timeouts.
        for round in 0..5u8 {
            player
                .send
                .write_all(pattern(1, round))
                .await
                .expect("sent");
            let byte = host.recv.read_chunk(1).await.expect("read");
            assert_eq!(byte.map(|b| b.len()), Some(1));
            tokio::time::sleep(Duration::from_secs(6)).await;
        }
        let (_, end) = host.recv.read_to_end().await;
        assert_eq!(end, Err(RecvEnd::Reset(codes::stream::SESSION_IDLE)));
        assert!(started.elapsed() >= Duration::from_secs(30 + 4));
        let outcome = splice.await.expect("splice");
        assert_eq!(outcome.ended_by, Some(codes::stream::SESSION_IDLE));
        let (_, at_player) = player.recv.read_to_end().await;
        assert_eq!(at_player, Err(RecvEnd::Reset(codes::stream::SESSION_IDLE)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_ends_at_its_maximum_duration() {
        let limits = SpliceLimits {
            max_duration: Some(Duration::from_secs(60)),
            ..no_limits()
        };
        let (mut player, mut host, splice, _) = start(limits);
        let started = Instant::now();
        let (_, end) = host.recv.read_to_end().await;
        assert_eq!(end, Err(RecvEnd::Reset(codes::stream::DURATION_LIMIT)));
        assert_eq!(started.elapsed().as_secs(), 60);
        assert_eq!(
            splice.await.expect("splice").ended_by,
            Some(codes::stream::DURATION_LIMIT)
        );
        let (_, at_player) = player.recv.read_to_end().await;
        assert_eq!(
            at_player,
            Err(RecvEnd::Reset(codes::stream::DURATION_LIMIT))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_byte_limit_forwards_exactly_that_many_and_not_one_more() {
        let max = 100_000;
        let limits = SpliceLimits {
            max_bytes: NonZeroU64::new(max),
            ..no_limits()
        };
        let (mut player, mut host, splice, counters) = start(limits);
        let reader = tokio::spawn(async move { host.recv.read_to_end().await });
        let written = player.send.write_all(pattern(3 * max as usize, 4)).await;
        assert_eq!(written, Err(SendEnd::Stopped(codes::stream::BYTE_LIMIT)));
        let outcome = splice.await.expect("splice");
        assert_eq!(outcome.ended_by, Some(codes::stream::BYTE_LIMIT));
        assert_eq!(outcome.player_to_host, max);
        assert_eq!(counters.player_to_host.load(Ordering::Relaxed), max);
        let (received, end) = reader.await.expect("reader");
        assert!(received.len() as u64 <= max);
        assert_eq!(end, Err(RecvEnd::Reset(codes::stream::BYTE_LIMIT)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_that_sends_exactly_its_byte_limit_ends_cleanly() {
        let max = 100_000;
        let limits = SpliceLimits {
            max_bytes: NonZeroU64::new(max),
            ..no_limits()
        };
        let (mut player, mut host, splice, _) = start(limits);
        let reader = tokio::spawn(async move { host.recv.read_to_end().await });
        let sent = pattern(max as usize, 5);
        player.send.write_all(sent.clone()).await.expect("sent");
        player.send.finish();
        let (received, end) = reader.await.expect("reader");
        assert_eq!((received, end), (sent.to_vec(), Ok(())));
        host.send.finish();
        let outcome = splice.await.expect("splice");
        assert_eq!((outcome.ended_by, outcome.player_to_host), (None, max));
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_limit_paces_the_session() {
        let bucket = TokenBucket::new(100_000, 16 * 1024).expect("limited");
        let bucket: &'static TokenBucket = Box::leak(Box::new(bucket));
        let limits = SpliceLimits {
            player_to_host: [Some(bucket), None],
            ..no_limits()
        };
        let (mut player, mut host, splice, _) = start(limits);
        let started = Instant::now();
        let reader = tokio::spawn(async move { host.recv.read_to_end().await });
        player
            .send
            .write_all(pattern(500_000, 5))
            .await
            .expect("sent");
        player.send.finish();
        let (received, end) = reader.await.expect("reader");
        assert_eq!((received.len(), end), (500_000, Ok(())));
        // 500 kB at 100 kB/s after a 16 KiB burst: about 4.8 s of virtual time.
        let took = started.elapsed();
        assert!(
            (Duration::from_secs(4)..Duration::from_secs(6)).contains(&took),
            "{took:?}"
        );
        player.recv.stop(StreamCode::from_u32(0));
        drop(player);
        splice.abort();
    }

    #[test]
    fn the_batch_clock_ticks_within_one_wait() {
        let epoch = Instant::now();
        for (after_ms, tick_ms) in [(0, 5), (1, 5), (4, 5), (5, 10), (7, 10), (12_345, 12_350)] {
            let next = next_tick(epoch, epoch + Duration::from_millis(after_ms));
            assert_eq!(
                next - epoch,
                Duration::from_millis(tick_ms),
                "after {after_ms} ms"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_one_way_flood_of_tiny_chunks_is_taken_in_batches() {
        let (mut player, mut host, splice, _) = start(no_limits());
        // Ten one-byte writes every millisecond for a second of the paused clock,
        // nothing back.
        let writer = tokio::spawn(async move {
            for i in 0..10_000u32 {
                player
                    .send
                    .write_all(pattern(1, i as u8))
                    .await
                    .expect("sent");
                if i % 10 == 9 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            player.send.finish();
            player
        });
        let mut chunks = 0;
        let mut received = Vec::new();
        while let Some(chunk) = host.recv.read_chunk(usize::MAX).await.expect("read") {
            chunks += 1;
            received.extend_from_slice(&chunk);
        }
        let expected: Vec<u8> = (0..10_000u32).map(|i| pattern(1, i as u8)[0]).collect();
        assert_eq!(received, expected, "every byte, in order");
        // The streak one by one, then one chunk per batch wait.
        let most = TINY_STREAK as usize + (1000 / TINY_BATCH_WAIT.as_millis() as usize) + 2;
        assert!(chunks <= most, "{chunks} chunks, at most {most}");
        let _player = writer.await.expect("writer");
        host.send.finish();
        splice.await.expect("splice");
    }

    /// Reads everything the relay forwards to `end`: the bytes, the chunks they came
    /// in, and when the last one came.
    fn collect(mut end: End) -> tokio::task::JoinHandle<(Vec<u8>, usize, Instant)> {
        tokio::spawn(async move {
            let (mut received, mut chunks) = (Vec::new(), 0);
            while let Some(chunk) = end.recv.read_chunk(usize::MAX).await.expect("read") {
                chunks += 1;
                received.extend_from_slice(&chunk);
            }
            (received, chunks, Instant::now())
        })
    }

    /// One-byte writes a millisecond apart, nothing back: by the end the pump
    /// takes them in batches.
    async fn flood_until_batching(player: &mut End) -> Vec<u8> {
        let mut sent = Vec::new();
        for i in 0..2 * TINY_STREAK {
            let byte = pattern(1, i as u8);
            sent.extend_from_slice(&byte);
            player.send.write_all(byte).await.expect("sent");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        sent
    }

    /// What went the other way before a flood began does not keep it from being
    /// batched: only answers since the last chunk wear a streak down.
    #[tokio::test(start_paused = true)]
    async fn an_answer_before_a_flood_does_not_spare_it_the_batching() {
        let (mut player, mut host, _splice, _) = start(no_limits());
        host.send.write_all(pattern(1, 9)).await.expect("answer");
        let answer = player.recv.read_chunk(usize::MAX).await.expect("read");
        assert_eq!(answer.map(|b| b.len()), Some(1));
        let reader = collect(host);
        let mut sent = flood_until_batching(&mut player).await;
        sent.extend(flood_until_batching(&mut player).await);
        player.send.finish();
        let (received, chunks, _) = reader.await.expect("reader");
        assert_eq!(received, sent);
        // The streak one by one, then one chunk per batch wait.
        let flood_ms = sent.len() as u128;
        let most = TINY_STREAK as usize + (flood_ms / TINY_BATCH_WAIT.as_millis()) as usize + 2;
        assert!(chunks <= most, "{chunks} chunks, at most {most}");
    }

    /// Chunks of [`TINY_CHUNK`] bytes and more are not tiny: however many come one
    /// way, none waits for a batch.
    #[tokio::test(start_paused = true)]
    async fn chunks_of_512_bytes_one_way_never_wait_for_a_batch() {
        let (mut player, host, splice, _) = start(no_limits());
        let reader = collect(host);
        let started = Instant::now();
        let mut sent = Vec::new();
        for i in 0..1000u32 {
            let chunk = pattern(TINY_CHUNK, i as u8);
            sent.extend_from_slice(&chunk);
            player.send.write_all(chunk).await.expect("sent");
        }
        player.send.finish();
        let (received, _, done) = reader.await.expect("reader");
        assert_eq!(received, sent);
        // On the paused clock, any wait for a batch would have moved time on.
        assert_eq!(done - started, Duration::ZERO);
        drop(splice);
    }

    /// Once batching, a chunk the size bulk data comes in ends it at once: a flood
    /// of tiny chunks followed by a download does not slow the download.
    #[tokio::test(start_paused = true)]
    async fn bulk_after_a_tiny_flood_ends_the_batching_at_once() {
        let (mut player, host, _splice, _) = start(no_limits());
        let reader = collect(host);
        let mut sent = flood_until_batching(&mut player).await;
        let bulk = Instant::now();
        for i in 0..50u8 {
            let chunk = pattern(MAX_CHUNK / 2, i);
            sent.extend_from_slice(&chunk);
            player.send.write_all(chunk).await.expect("sent");
        }
        player.send.finish();
        let (received, chunks, done) = reader.await.expect("reader");
        assert_eq!(received, sent);
        assert!(
            chunks < sent.len() - 50 * MAX_CHUNK / 2 + 50,
            "the flood was batched: {chunks} chunks"
        );
        // A few ticks while the flood's last bytes go, not one per bulk chunk.
        let took = done - bulk;
        assert!(took <= 5 * TINY_BATCH_WAIT, "the bulk took {took:?}");
    }

    /// While batching, the larger chunks that gather during a wait (QUIC joins the
    /// tiny frames it holds) do not end the run: only bulk-sized ones do.
    #[tokio::test(start_paused = true)]
    async fn while_batching_the_larger_chunks_a_wait_gathers_keep_it_batching() {
        let (mut player, host, _splice, _) = start(no_limits());
        let reader = collect(host);
        let mut sent = flood_until_batching(&mut player).await;
        // The flood's last bytes forwarded (the pump reads all there is on each
        // tick), so that each chunk below is read whole.
        tokio::time::sleep(2 * TINY_BATCH_WAIT).await;
        let gathered = Instant::now();
        for i in 0..40u8 {
            let chunk = pattern(1024, i);
            sent.extend_from_slice(&chunk);
            player.send.write_all(chunk).await.expect("sent");
        }
        player.send.finish();
        let (received, _, done) = reader.await.expect("reader");
        assert_eq!(received, sent);
        // One read per tick: forty chunks take about forty ticks (the first read
        // joins a few to the flood's last bytes).
        let took = done - gathered;
        assert!(took >= 25 * TINY_BATCH_WAIT, "took {took:?}");
    }

    /// Joining stops at [`COALESCE_BELOW`] bytes: a backlog of tiny chunks goes in
    /// pieces of exactly that much.
    #[tokio::test(start_paused = true)]
    async fn tiny_chunks_are_joined_up_to_4_kib() {
        let (mut player, host, _splice, _) = start(no_limits());
        let mut sent = Vec::new();
        for i in 0..3 * COALESCE_BELOW {
            let byte = pattern(1, i as u8);
            sent.extend_from_slice(&byte);
            player.send.write_all(byte).await.expect("sent");
        }
        player.send.finish();
        let mut host = host;
        let mut sizes = Vec::new();
        let mut received = Vec::new();
        while let Some(chunk) = host.recv.read_chunk(usize::MAX).await.expect("read") {
            sizes.push(chunk.len());
            received.extend_from_slice(&chunk);
        }
        assert_eq!(received, sent);
        assert_eq!(sizes, [COALESCE_BELOW; 3]);
    }

    #[test]
    fn answers_wear_a_streak_down_and_rare_ones_do_not_end_it() {
        // One-way: up to the cap.
        let mut streak = 0;
        for _ in 0..1000 {
            streak = next_streak(streak, 0);
        }
        assert_eq!(streak, STREAK_CAP);
        // An acknowledgement every 20 chunks keeps it batching...
        for i in 1..=1000 {
            streak = next_streak(streak, u64::from(i % 20 == 0));
            assert!(streak >= TINY_STREAK, "chunk {i}: {streak}");
        }
        // ...an answer for every ask, or every other, never lets one start.
        for every in [1, 2] {
            let mut streak = 0;
            for i in 1..=1000 {
                streak = next_streak(streak, u64::from(i % every == 0));
                assert!(streak < 4, "one answer per {every}: {streak}");
            }
        }
        // Many answers at once end it.
        assert_eq!(next_streak(STREAK_CAP, 8), 1);
        assert_eq!(next_streak(STREAK_CAP, u64::MAX), 1);
    }

    /// Requests and answers, however small and close together, never wait for a
    /// batch: the streak is worn down whenever the other direction forwards.
    #[tokio::test(start_paused = true)]
    async fn a_conversation_of_tiny_chunks_never_waits() {
        let (mut player, mut host, splice, _) = start(no_limits());
        let started = Instant::now();
        for i in 0..500u32 {
            player
                .send
                .write_all(pattern(1, i as u8))
                .await
                .expect("ask");
            let asked = host.recv.read_chunk(usize::MAX).await.expect("read");
            assert_eq!(asked.map(|b| b.len()), Some(1));
            host.send
                .write_all(pattern(1, i as u8))
                .await
                .expect("answer");
            let answered = player.recv.read_chunk(usize::MAX).await.expect("read");
            assert_eq!(answered.map(|b| b.len()), Some(1));
        }
        // On the paused clock, any wait for a batch would have moved time on.
        assert_eq!(started.elapsed(), Duration::ZERO);
        player.send.finish();
        host.send.finish();
        splice.await.expect("splice");
    }

    #[tokio::test(start_paused = true)]
    async fn tiny_chunks_are_forwarded_together() {
        let (mut player, mut host, splice, _) = start(no_limits());
        // A thousand one-byte writes, all there before the relay reads: forwarded
        // as a few joined chunks, not a thousand.
        for i in 0..1000u32 {
            player
                .send
                .write_all(pattern(1, i as u8))
                .await
                .expect("sent");
        }
        player.send.finish();
        let mut chunks = 0;
        let mut received = Vec::new();
        while let Some(chunk) = host.recv.read_chunk(usize::MAX).await.expect("read") {
            chunks += 1;
            received.extend_from_slice(&chunk);
        }
        let expected: Vec<u8> = (0..1000u32).map(|i| pattern(1, i as u8)[0]).collect();
        assert_eq!(received, expected);
        assert!(chunks < 10, "{chunks} chunks");
        host.send.finish();
        splice.await.expect("splice");
    }
}
