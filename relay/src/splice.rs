//! The splice: forwards a session's bytes between the player's stream and the host's.
//!
//! Each direction is one loop: take the next chunk quinn has received, hand that same
//! chunk to the other stream. No parsing, no copy beyond quinn's own buffers, and at
//! most one chunk (≤ [`MAX_CHUNK`]) in hand per direction: when the receiving side's
//! flow-control window is full, the write waits, this loop stops reading, and QUIC
//! flow control pushes back on the sender. A slow reader slows its writer; it never
//! grows the relay.
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

use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(feature = "splice-tap")]
use std::sync::Arc;
use std::time::Duration;

use blindrelay_protocol::codes;
use quinn::{ReadError, VarInt, WriteError};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::bucket::{throttle, TokenBucket};
use crate::connection::Shared;
pub(crate) use crate::limits::MAX_CHUNK;

/// How long a finished direction waits for the other side to acknowledge its last
/// bytes when no stall timeout is set.
const DELIVERY_WAIT: Duration = Duration::from_secs(30);

/// One side of a session: the two halves of its QUIC stream.
pub(crate) struct Side {
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
}

/// The limits one session runs under; `None` and zero mean no limit.
pub(crate) struct Rules<'a> {
    pub stall_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub max_duration: Option<Duration>,
    pub max_bytes: u64,
    /// The session's own bucket and its host's, for bytes towards the host.
    pub player_to_host: [Option<&'a TokenBucket>; 2],
    /// The session's own bucket and its host's, for bytes towards the player.
    pub host_to_player: [Option<&'a TokenBucket>; 2],
}

/// How a session went.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Outcome {
    pub player_to_host: u64,
    pub host_to_player: u64,
    /// The code of the limit that ended the session, if one did.
    pub ended_by: Option<u32>,
}

/// Which way a chunk travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the player to the host.
    PlayerToHost,
    /// From the host to the player.
    HostToPlayer,
}

/// How one direction of a session ended, as the relay learned it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// The sending side finished its stream (FIN), all of it read.
    Finished,
    /// The sending side reset its stream with this code.
    Reset(u64),
    /// The receiving side asked, with this code, to stop sending.
    Stopped(u64),
    /// A side's connection went away.
    Gone,
    /// The relay ended the session at the limit with this code.
    Limit(u32),
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
pub(crate) async fn run(player: Side, host: Side, rules: Rules<'_>, shared: &Shared) -> Outcome {
    let stats = &shared.stats;
    let (end, _) = watch::channel(None);
    let activity = Activity::new();
    let pumps = async {
        tokio::join!(
            Pump {
                direction: Direction::PlayerToHost,
                counter: &stats.bytes_player_to_host,
                buckets: rules.player_to_host,
                rules: &rules,
                activity: &activity,
                end: &end,
                shared,
            }
            .run(player.recv, host.send),
            Pump {
                direction: Direction::HostToPlayer,
                counter: &stats.bytes_host_to_player,
                buckets: rules.host_to_player,
                rules: &rules,
                activity: &activity,
                end: &end,
                shared,
            }
            .run(host.recv, player.send),
        )
    };
    tokio::pin!(pumps);
    let (player_to_host, host_to_player) = tokio::select! {
        totals = &mut pumps => totals,
        code = watchdog(&activity, &rules) => {
            end_session(&end, code);
            pumps.await
        }
    };
    let ended_by = *end.borrow();
    Outcome {
        player_to_host,
        host_to_player,
        ended_by,
    }
}

/// One direction of the splice.
struct Pump<'a> {
    direction: Direction,
    counter: &'a AtomicU64,
    buckets: [Option<&'a TokenBucket>; 2],
    rules: &'a Rules<'a>,
    activity: &'a Activity,
    /// Carries the code of the limit that ended the session, to both pumps.
    end: &'a watch::Sender<Option<u32>>,
    shared: &'a Shared,
}

/// What one step of a pump came to.
enum Step {
    Go,
    /// The session ended by a limit, with this code.
    Ended(u32),
    /// This direction is over, as it says; the streams were told.
    Done(StreamEnd),
}

impl Pump<'_> {
    async fn run(self, mut from: quinn::RecvStream, to: quinn::SendStream) -> u64 {
        let mut to = Outgoing::new(to);
        #[cfg(feature = "splice-tap")]
        let tap: Option<Arc<dyn SpliceTap>> = self.shared.config.tap.clone();
        #[cfg(not(feature = "splice-tap"))]
        let _ = (self.shared, self.direction);

        let peer_gone = VarInt::from_u32(codes::stream::PEER_GONE);
        let mut ended = self.end.subscribe();
        // The receiver may stop reading while we wait for the sender: pass that on at
        // once instead of at our next write.
        let stopped = to.stream.stopped();
        tokio::pin!(stopped);
        let mut total = 0u64;
        let step = loop {
            // Biased: once a limit has ended the session, what arrives after (a side
            // finishing because it was told) must not be passed on as a clean end.
            let read = tokio::select! {
                biased;
                code = ended_by(&mut ended) => break Step::Ended(code),
                stop = &mut stopped => {
                    let stop = stop.ok().flatten();
                    let code = stop.unwrap_or(peer_gone);
                    // A stopped stream is answered with a reset of the same code.
                    to.reset(code);
                    let _ = from.stop(code);
                    let how = stop.map_or(StreamEnd::Gone, |c| StreamEnd::Stopped(c.into_inner()));
                    break Step::Done(how);
                }
                read = from.read_chunk(MAX_CHUNK, true) => read,
            };
            let mut bytes = match read {
                Ok(Some(chunk)) => chunk.bytes,
                Ok(None) => {
                    to.finish();
                    // The session is over once the other side has everything: a relay
                    // that closes (a drain ending) must not cut bytes still in flight.
                    let _ = within(
                        Some(self.rules.stall_timeout.unwrap_or(DELIVERY_WAIT)),
                        &mut stopped,
                    )
                    .await;
                    break Step::Done(StreamEnd::Finished);
                }
                Err(ReadError::Reset(code)) => {
                    to.reset(code);
                    break Step::Done(StreamEnd::Reset(code.into_inner()));
                }
                Err(_) => {
                    to.reset(peer_gone);
                    break Step::Done(StreamEnd::Gone);
                }
            };
            #[cfg(feature = "splice-tap")]
            if let Some(tap) = &tap {
                tap.observe(self.direction, &bytes);
            }
            let mut over_limit = false;
            if self.rules.max_bytes != 0 {
                let allowed = self.rules.max_bytes.saturating_sub(total);
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
                to.reset(VarInt::from_u32(code));
                let _ = from.stop(VarInt::from_u32(code));
                StreamEnd::Limit(code)
            }
            Step::Done(how) => how,
            // The loop never stops on `Go`.
            Step::Go => StreamEnd::Gone,
        };
        #[cfg(feature = "splice-tap")]
        if let Some(tap) = &tap {
            tap.ended(self.direction, how);
        }
        #[cfg(not(feature = "splice-tap"))]
        let _ = how;
        total
    }

    /// Writes one chunk, passing on stops and watching for a stalled reader.
    async fn write(
        &self,
        to: &mut Outgoing,
        from: &mut quinn::RecvStream,
        mut bytes: bytes::Bytes,
        ended: &mut watch::Receiver<Option<u32>>,
        total: &mut u64,
    ) -> Step {
        while !bytes.is_empty() {
            // `write_chunks` is cancel-safe: it either takes bytes or waits for room.
            let write = to.stream.write_chunks(std::slice::from_mut(&mut bytes));
            let written = tokio::select! {
                biased;
                code = ended_by(ended) => return Step::Ended(code),
                written = within(self.rules.stall_timeout, write) => written,
            };
            match written {
                None => {
                    end_session(self.end, codes::stream::STALLED);
                    return Step::Ended(codes::stream::STALLED);
                }
                Some(Ok(written)) => {
                    let len = written.bytes as u64;
                    *total += len;
                    self.counter.fetch_add(len, Ordering::Relaxed);
                    self.activity.touch();
                }
                Some(Err(WriteError::Stopped(code))) => {
                    to.reset(code);
                    let _ = from.stop(code);
                    return Step::Done(StreamEnd::Stopped(code.into_inner()));
                }
                Some(Err(_)) => {
                    let peer_gone = VarInt::from_u32(codes::stream::PEER_GONE);
                    to.reset(peer_gone);
                    let _ = from.stop(peer_gone);
                    return Step::Done(StreamEnd::Gone);
                }
            }
        }
        Step::Go
    }
}

/// The send half of a session stream, which says "the other side went away" if its
/// task is torn down before it ended the stream (its connection's task was cancelled,
/// say). Left to itself, quinn finishes a dropped stream cleanly, which would look
/// like a normal end.
struct Outgoing {
    stream: quinn::SendStream,
    ended: bool,
}

impl Outgoing {
    fn new(stream: quinn::SendStream) -> Self {
        Self {
            stream,
            ended: false,
        }
    }

    fn finish(&mut self) {
        self.ended = true;
        let _ = self.stream.finish();
    }

    fn reset(&mut self, code: VarInt) {
        self.ended = true;
        let _ = self.stream.reset(code);
    }
}

impl Drop for Outgoing {
    fn drop(&mut self) {
        if !self.ended {
            let _ = self
                .stream
                .reset(VarInt::from_u32(codes::stream::PEER_GONE));
        }
    }
}

/// Records the first limit that ended the session; later ones are ignored.
fn end_session(end: &watch::Sender<Option<u32>>, code: u32) {
    end.send_if_modified(|ended| {
        if ended.is_some() {
            return false;
        }
        *ended = Some(code);
        true
    });
}

/// Resolves with the code once the session has been ended by a limit.
async fn ended_by(ended: &mut watch::Receiver<Option<u32>>) -> u32 {
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
async fn watchdog(activity: &Activity, rules: &Rules<'_>) -> u32 {
    let duration = async {
        match rules.max_duration {
            Some(limit) => tokio::time::sleep(limit).await,
            None => std::future::pending().await,
        }
    };
    let idle = async {
        let Some(limit) = rules.idle_timeout else {
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
