//! What each end of a resumable session keeps so that the session outlives the
//! stream that carries it (PROTOCOL.md 10.8): the bytes the peer has not yet
//! acknowledged ([`ReplayBuffer`]), and when to acknowledge what it received
//! ([`AckClock`]).
//!
//! Offsets count application bytes, one count per direction, from the session's
//! first byte: they go on across resumes. Nothing here reads a clock; the driver
//! passes the time in.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};

use crate::noise::NoiseError;

/// Bytes a sender keeps for the peer by default: the most it has in flight
/// unacknowledged, as a flow-control window does.
pub const DEFAULT_REPLAY_WINDOW: usize = 4 * 1024 * 1024;

/// The largest replay window a sender may use. A receiver reads ahead up to twice
/// this for acknowledgements queued behind data (PROTOCOL.md 10.8).
pub const MAX_REPLAY_WINDOW: usize = 16 * 1024 * 1024;

/// How long both ends keep a session whose stream died, by default.
pub const DEFAULT_RESUME_WINDOW: Duration = Duration::from_secs(30);

/// A receiver acknowledges at least every this many delivered bytes...
pub const ACK_EVERY: u64 = 256 * 1024;

/// ...and at most this long after a byte was delivered unacknowledged.
pub const ACK_DELAY: Duration = Duration::from_millis(100);

/// Bytes per chunk the buffer copies small writes into.
const CHUNK: usize = 64 * 1024;

/// Acknowledged chunks kept for the next bytes sent, at most: one acknowledgement's
/// worth, so a busy session takes no new memory (and none of the page faults of
/// fresh memory) for each chunk, and an idle one keeps little. Never so many that
/// the buffer's memory passes its capacity and one chunk ([`ReplayBuffer::footprint`]).
const SPARE: usize = (ACK_EVERY as usize).div_ceil(CHUNK);

/// The bytes this end sent that the peer has not acknowledged, oldest first.
#[derive(Debug)]
pub struct ReplayBuffer {
    chunks: VecDeque<BytesMut>,
    /// Emptied chunks, for reuse.
    spare: Vec<BytesMut>,
    /// The offset of the first byte held: everything before it is acknowledged.
    start: u64,
    held: usize,
    capacity: usize,
}

impl ReplayBuffer {
    /// An empty buffer that holds at most `capacity` bytes (at least one frame's
    /// worth, at most [`MAX_REPLAY_WINDOW`]).
    pub fn new(capacity: usize) -> Self {
        Self {
            chunks: VecDeque::new(),
            spare: Vec::new(),
            start: 0,
            held: 0,
            capacity: capacity.clamp(crate::noise::MAX_PLAINTEXT_LEN, MAX_REPLAY_WINDOW),
        }
    }

    /// The most it holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes held, not yet acknowledged.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Bytes that can be sent before the peer acknowledges some.
    pub fn room(&self) -> usize {
        self.capacity - self.held
    }

    /// Every byte sent so far: the offset the next byte sent will have.
    pub fn sent(&self) -> u64 {
        self.start + self.held as u64
    }

    /// Keeps a copy of as much of `bytes` as there is room for, as sent; returns how
    /// much.
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let mut taken = 0;
        while taken < bytes.len() {
            let n = self.push_with(&bytes[taken..], 0, |_| Ok::<_, ()>(()));
            match n {
                Ok(0) | Err(()) => break,
                Ok(n) => taken += n,
            }
        }
        taken
    }

    /// Keeps a copy of as much of `bytes` as there is room for in one piece of
    /// memory, and hands `seal` that copy with `trailer` after it (a frame's
    /// plaintext, its type byte last), so that what is kept is also what is sealed,
    /// copied once. Returns how much was kept: less than all when the buffer, or the
    /// chunk it is filling, is nearly full (0 only when the buffer is full). When
    /// `seal` fails, nothing is kept.
    pub fn push_with<E>(
        &mut self,
        bytes: &[u8],
        trailer: u8,
        seal: impl FnOnce(&[u8]) -> Result<(), E>,
    ) -> Result<usize, E> {
        if bytes.is_empty() || self.room() == 0 {
            return Ok(0);
        }
        // Each chunk has one byte more than it ever holds, for the trailer; a
        // partly acknowledged chunk has less room than when it was new.
        if self
            .chunks
            .back()
            .is_none_or(|chunk| chunk.capacity() - chunk.len() <= 1)
        {
            let chunk = self
                .spare
                .pop()
                .unwrap_or_else(|| BytesMut::with_capacity(CHUNK + 1));
            self.chunks.push_back(chunk);
        }
        let room = self.room();
        let Some(chunk) = self.chunks.back_mut() else {
            return Ok(0);
        };
        let start = chunk.len();
        let n = (chunk.capacity() - start - 1).min(bytes.len()).min(room);
        chunk.extend_from_slice(&bytes[..n]);
        chunk.extend_from_slice(&[trailer]);
        let sealed = seal(&chunk[start..]);
        chunk.truncate(if sealed.is_ok() { start + n } else { start });
        sealed?;
        self.held += n;
        Ok(n)
    }

    /// The peer has every byte up to `count`: forget them. A count behind an
    /// earlier one, or past what was sent, breaks the session.
    pub fn acknowledge(&mut self, count: u64) -> Result<(), NoiseError> {
        if count > self.sent() {
            return Err(NoiseError::BadAck {
                reason: "it acknowledges bytes never sent",
            });
        }
        if count < self.start {
            return Err(NoiseError::BadAck {
                reason: "it goes back behind an earlier one",
            });
        }
        // count - start <= held, a usize.
        let mut release = (count - self.start) as usize;
        self.start = count;
        self.held -= release;
        while release > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            if front.len() <= release {
                release -= front.len();
                if let Some(mut chunk) = self.chunks.pop_front() {
                    // Spare chunks only while those in use and spare are fewer
                    // than the capacity's worth: a push takes a new chunk only
                    // when none is spare, so never more than one beyond it.
                    let kept = self.chunks.len() + self.spare.len();
                    if self.spare.len() < SPARE && kept < self.capacity.div_ceil(CHUNK) {
                        // Only this buffer holds the chunk: with nothing in it,
                        // `reserve` takes back the whole allocation.
                        chunk.clear();
                        chunk.reserve(CHUNK + 1);
                        self.spare.push(chunk);
                    }
                }
            } else {
                front.advance(release);
                release = 0;
            }
        }
        Ok(())
    }

    /// Every byte held, in order: what to send again after a resume, once
    /// [`ReplayBuffer::acknowledge`] took the peer's count.
    pub fn unacknowledged(&self) -> impl Iterator<Item = &[u8]> {
        self.chunks.iter().map(|chunk| &chunk[..])
    }

    /// The held bytes that start at offset `at`, as far as they lie together in
    /// memory (empty when `at` is not held).
    pub fn bytes_at(&self, at: u64) -> &[u8] {
        let Some(mut skip) = at
            .checked_sub(self.start)
            .and_then(|skip| usize::try_from(skip).ok())
        else {
            return &[];
        };
        for chunk in &self.chunks {
            if skip < chunk.len() {
                return &chunk[skip..];
            }
            skip -= chunk.len();
        }
        &[]
    }

    /// The offset of the first byte held.
    pub fn acknowledged(&self) -> u64 {
        self.start
    }

    /// The memory the buffer holds: its 64 KiB chunks, in use and spare. However
    /// much was pushed through it, at most its capacity in whole chunks and one
    /// chunk more (the oldest in use may be partly acknowledged).
    pub fn footprint(&self) -> usize {
        (self.chunks.len() + self.spare.len()) * CHUNK
    }
}

/// When a receiver acknowledges: every [`ACK_EVERY`] bytes delivered, or
/// [`ACK_DELAY`] after the first byte delivered since the last acknowledgement,
/// whichever comes first; never on an idle session.
#[derive(Debug, Default)]
pub struct AckClock {
    delivered: u64,
    acknowledged: u64,
    due_at: Option<Instant>,
}

impl AckClock {
    /// A clock that starts with `delivered` bytes already delivered and
    /// acknowledged (a resumed session's count).
    pub fn starting_at(delivered: u64) -> Self {
        Self {
            delivered,
            acknowledged: delivered,
            due_at: None,
        }
    }

    /// Bytes delivered to the application so far.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Records `n` more bytes delivered at `now`.
    pub fn deliver(&mut self, n: usize, now: Instant) {
        if n == 0 {
            return;
        }
        self.delivered += n as u64;
        self.due_at.get_or_insert(now + ACK_DELAY);
    }

    /// The count to acknowledge now, if one is due.
    pub fn due(&self, now: Instant) -> Option<u64> {
        // A resume may have acknowledged more than was delivered (what was received).
        let owed = self.delivered.saturating_sub(self.acknowledged);
        let late = self.due_at.is_some_and(|at| at <= now);
        (owed > 0 && (owed >= ACK_EVERY || late)).then_some(self.delivered)
    }

    /// The last count acknowledged.
    pub fn acknowledged_count(&self) -> u64 {
        self.acknowledged
    }

    /// When the next acknowledgement falls due if nothing more is delivered.
    pub fn deadline(&self) -> Option<Instant> {
        self.due_at
    }

    /// Records that `count` was acknowledged (sealed for the peer).
    pub fn acknowledged(&mut self, count: u64) {
        self.acknowledged = self.acknowledged.max(count);
        if self.acknowledged >= self.delivered {
            self.due_at = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_buffer_holds_what_is_unacknowledged_and_no_more_than_its_capacity() {
        let mut replay = ReplayBuffer::new(100_000);
        assert_eq!(replay.push(&[7; 70_000]), 70_000);
        assert_eq!(replay.push(&[8; 70_000]), 30_000, "only the room left");
        assert_eq!(
            (replay.held(), replay.room(), replay.sent()),
            (100_000, 0, 100_000)
        );
        replay.acknowledge(69_999).unwrap();
        assert_eq!(
            replay.bytes_at(69_999).len(),
            30_001,
            "to the end of its chunk"
        );
        assert_eq!(replay.bytes_at(69_999)[0], 7);
        assert_eq!(replay.bytes_at(70_000)[0], 8);
        assert!(replay.bytes_at(69_998).is_empty() && replay.bytes_at(100_000).is_empty());
        let rest: Vec<u8> = replay.unacknowledged().flatten().copied().collect();
        assert_eq!(rest.len(), 30_001);
        assert_eq!((rest[0], rest[1]), (7, 8));
        assert_eq!(replay.room(), 69_999);
        replay.acknowledge(100_000).unwrap();
        assert_eq!((replay.held(), replay.unacknowledged().count()), (0, 0));
    }

    #[test]
    fn acknowledged_chunks_are_reused_whole_and_a_few_kept_at_most() {
        let mut replay = ReplayBuffer::new(1 << 20);
        replay.push(&[1; 3 * CHUNK + 100]);
        let first: Vec<*const u8> = (0..4)
            .map(|i| replay.bytes_at(i * CHUNK as u64).as_ptr())
            .collect();
        // Half a chunk, then the rest of it: the chunk comes back whole.
        replay.acknowledge(CHUNK as u64 / 2).unwrap();
        replay.acknowledge(CHUNK as u64).unwrap();
        assert_eq!(replay.spare.len(), 1);
        assert_eq!(replay.spare[0].as_ptr(), first[0]);
        assert!(replay.spare[0].capacity() >= CHUNK);
        replay.acknowledge(replay.sent()).unwrap();
        // New bytes go into the same memory, whole chunks of them.
        let sent = replay.sent();
        for byte in 2..=5 {
            replay.push(&[byte; CHUNK]);
        }
        for (i, byte) in (2..=5).enumerate() {
            let at = replay.bytes_at(sent + (i * CHUNK) as u64);
            assert_eq!(at, &[byte; CHUNK][..]);
            assert!(first.contains(&at.as_ptr()), "chunk {i} is an old one");
        }
        // Many chunks acknowledged at once: no more than SPARE kept.
        replay.push(&[6; 8 * CHUNK]);
        replay.acknowledge(replay.sent()).unwrap();
        assert_eq!(replay.spare.len(), SPARE);
    }

    #[test]
    fn the_buffer_never_holds_more_than_its_capacity_and_one_chunk() {
        // A window smaller than the spare chunks' worth, filled and acknowledged
        // in steps that leave the oldest chunk partly acknowledged.
        for capacity in [CHUNK, 2 * CHUNK + 1, 3 * CHUNK, 1 << 20] {
            let mut replay = ReplayBuffer::new(capacity);
            let mut most = 0;
            for step in 1..200u64 {
                replay.push(&vec![7; replay.room()]);
                most = most.max(replay.footprint());
                let behind = replay.sent() - replay.acknowledged();
                replay
                    .acknowledge(replay.acknowledged() + behind * (step % 4 + 1) / 5)
                    .unwrap();
                most = most.max(replay.footprint());
            }
            let capacity = replay.capacity();
            let bound = (capacity.div_ceil(CHUNK) + 1) * CHUNK;
            assert!(
                most <= bound,
                "{most} bytes held for a capacity of {capacity}"
            );
        }
    }

    #[test]
    fn each_piece_is_sealed_from_one_piece_of_memory_with_its_trailer() {
        let mut replay = ReplayBuffer::new(1 << 20);
        let mut sealed = Vec::new();
        let mut seal = |replay: &mut ReplayBuffer, bytes: &[u8]| {
            replay.push_with(bytes, 0xee, |plaintext| {
                sealed.push(plaintext.to_vec());
                Ok::<_, ()>(())
            })
        };
        assert_eq!(seal(&mut replay, &[1; 40_000]), Ok(40_000));
        // The chunk has room for the rest of its 64 KiB only: a piece never spans two.
        assert_eq!(seal(&mut replay, &[2; 40_000]), Ok(CHUNK - 40_000));
        assert_eq!(seal(&mut replay, &[3; 10]), Ok(10));
        assert_eq!(sealed[1].len(), CHUNK - 40_000 + 1);
        assert_eq!(sealed[1].last(), Some(&0xee), "the trailer last");
        assert!(sealed
            .iter()
            .all(|p| p[..p.len() - 1].iter().all(|&b| b == p[0])));
        // The trailer is not kept.
        let kept: Vec<u8> = replay.unacknowledged().flatten().copied().collect();
        assert_eq!(kept.len(), CHUNK + 10);
        assert!(!kept.contains(&0xee));
        assert_eq!(replay.bytes_at(CHUNK as u64), &[3; 10]);

        // A seal that fails keeps nothing.
        let failed = replay.push_with(&[4; 100], 0xee, |_| Err("refused"));
        assert_eq!(failed, Err("refused"));
        assert_eq!(replay.sent(), CHUNK as u64 + 10);
        assert_eq!(replay.bytes_at(CHUNK as u64), &[3; 10]);
    }

    #[test]
    fn acknowledgements_that_go_back_or_past_what_was_sent_are_errors() {
        let mut replay = ReplayBuffer::new(1 << 20);
        replay.push(b"hello");
        assert!(matches!(
            replay.acknowledge(6),
            Err(NoiseError::BadAck { .. })
        ));
        replay.acknowledge(3).unwrap();
        assert!(matches!(
            replay.acknowledge(2),
            Err(NoiseError::BadAck { .. })
        ));
        replay.acknowledge(3).unwrap();
        assert_eq!(
            replay
                .unacknowledged()
                .flatten()
                .copied()
                .collect::<Vec<_>>(),
            b"lo"
        );
    }

    #[test]
    fn the_capacity_is_kept_within_the_protocol_s_bounds() {
        assert_eq!(
            ReplayBuffer::new(0).capacity(),
            crate::noise::MAX_PLAINTEXT_LEN
        );
        assert_eq!(ReplayBuffer::new(usize::MAX).capacity(), MAX_REPLAY_WINDOW);
    }

    #[test]
    fn acknowledgements_come_every_256_kib_or_100_ms_and_never_when_idle() {
        let start = Instant::now();
        let mut clock = AckClock::default();
        assert_eq!(clock.due(start + Duration::from_secs(60)), None, "idle");
        clock.deliver(1000, start);
        assert_eq!(clock.due(start), None);
        assert_eq!(clock.deadline(), Some(start + ACK_DELAY));
        assert_eq!(clock.due(start + ACK_DELAY), Some(1000));
        clock.acknowledged(1000);
        assert_eq!(
            (clock.due(start + Duration::from_secs(60)), clock.deadline()),
            (None, None)
        );
        clock.deliver(ACK_EVERY as usize, start);
        assert_eq!(
            clock.due(start),
            Some(1000 + ACK_EVERY),
            "a full 256 KiB at once"
        );
        // Told more than delivered (at a resume): nothing owed until delivery passes it.
        clock.acknowledged(clock.delivered() + 500);
        clock.deliver(400, start);
        assert_eq!(clock.due(start + ACK_DELAY), None);
        clock.deliver(200, start);
        assert!(clock.due(start + ACK_DELAY).is_some());
        let resumed = AckClock::starting_at(5000);
        assert_eq!(
            (resumed.delivered(), resumed.due(start + ACK_DELAY)),
            (5000, None)
        );
    }

    proptest! {
        #[test]
        fn what_is_sent_again_is_exactly_what_was_not_acknowledged(
            writes in proptest::collection::vec(1usize..100_000, 1..20),
            acks in proptest::collection::vec(0.0f64..1.0, 1..10),
        ) {
            let mut replay = ReplayBuffer::new(MAX_REPLAY_WINDOW);
            let mut stream = Vec::new();
            for (i, len) in writes.iter().enumerate() {
                let bytes: Vec<u8> = (0..*len).map(|j| (i * 31 + j) as u8).collect();
                let n = replay.push(&bytes);
                stream.extend_from_slice(&bytes[..n]);
            }
            let mut acked = 0u64;
            for fraction in acks {
                let next = acked + ((replay.sent() - acked) as f64 * fraction) as u64;
                replay.acknowledge(next).unwrap();
                acked = next;
                let rest: Vec<u8> = replay.unacknowledged().flatten().copied().collect();
                prop_assert_eq!(&rest[..], &stream[acked as usize..]);
                prop_assert_eq!(replay.held(), rest.len());
            }
        }
    }
}
