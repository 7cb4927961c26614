//! A token bucket for bytes: the bandwidth cap of a session or of a host.
//!
//! Tokens are bytes. A taker takes what it is about to forward even if the bucket
//! runs into debt, and then waits until the debt is paid back at the bucket's rate:
//! a chunk is never split, and several sessions sharing one host bucket each pay for
//! their own bytes in the order they took them. The clock is tokio's, so tests can
//! pause it.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Bytes per second with a burst allowance.
#[derive(Debug)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Bytes available now; negative while in debt.
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket refilled at `rate` bytes per second up to `burst` bytes, or
    /// `None` when `rate` is zero (no limit).
    pub(crate) fn new(rate: u64, burst: u64) -> Option<Self> {
        if rate == 0 {
            return None;
        }
        // A burst smaller than one chunk would only add latency, not precision.
        let burst = burst.max(crate::policy::limits::MAX_CHUNK as u64) as f64;
        Some(Self {
            rate: rate as f64,
            burst,
            state: Mutex::new(State {
                tokens: burst,
                updated: Instant::now(),
            }),
        })
    }

    /// Takes `bytes` tokens and returns how long the caller must wait before it may
    /// forward them (zero when the bucket had them).
    pub(crate) fn take(&self, bytes: u64, now: Instant) -> Duration {
        // The lock is held for a few arithmetic operations, never across an await.
        let mut state = match self.state.lock() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        };
        let elapsed = now.saturating_duration_since(state.updated).as_secs_f64();
        state.tokens = (state.tokens + elapsed * self.rate).min(self.burst);
        state.updated = now;
        state.tokens -= bytes as f64;
        if state.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-state.tokens / self.rate)
        }
    }
}

/// The least a chunk costs, whatever its size. Forwarding a chunk costs the relay
/// about the same CPU whether it holds one byte or a thousand: a peer that sends
/// its bytes one STREAM frame at a time pays for the work it causes, not only for
/// its bytes (about 21 times more relay CPU per byte for 1-byte frames, measured).
pub(crate) const MIN_CHARGE: u64 = 1024;

/// Waits until every bucket in `buckets` has let a chunk of `bytes` through,
/// charged at least [`MIN_CHARGE`].
pub(crate) async fn throttle(buckets: [Option<&TokenBucket>; 2], bytes: u64) {
    let bytes = bytes.max(MIN_CHARGE);
    let now = Instant::now();
    let wait = buckets
        .into_iter()
        .flatten()
        .map(|bucket| bucket.take(bytes, now))
        .max()
        .unwrap_or_default();
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_rate_means_no_bucket() {
        assert!(TokenBucket::new(0, 100).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_burst_passes_then_the_rate_holds() {
        let bucket = TokenBucket::new(100_000, 50_000).expect("limited");
        let start = Instant::now();
        // The burst goes through at once.
        assert_eq!(bucket.take(50_000, start), Duration::ZERO);
        // Then 100 KB costs one second.
        assert_eq!(bucket.take(100_000, start), Duration::from_secs(1));
        // Time that passes pays the debt back.
        let later = start + Duration::from_secs(1);
        assert_eq!(bucket.take(0, later), Duration::ZERO);
        // Idle time refills only up to the burst.
        let much_later = later + Duration::from_secs(60);
        assert_eq!(bucket.take(50_000, much_later), Duration::ZERO);
        assert!(bucket.take(1_000, much_later) > Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn throttled_takers_move_at_the_rate() {
        let bucket = TokenBucket::new(1_000_000, 16 * 1024).expect("limited");
        let start = Instant::now();
        let mut moved = 0u64;
        while Instant::now() < start + Duration::from_secs(10) {
            throttle([Some(&bucket), None], 16 * 1024).await;
            moved += 16 * 1024;
        }
        let expected = 10_000_000.0 + 16.0 * 1024.0;
        let error = (moved as f64 - expected).abs() / expected;
        assert!(error < 0.01, "moved {moved} bytes in 10 s");
    }

    #[tokio::test(start_paused = true)]
    async fn the_stricter_of_two_buckets_wins() {
        let session = TokenBucket::new(1_000_000, 16 * 1024).expect("limited");
        let host = TokenBucket::new(250_000, 16 * 1024).expect("limited");
        let start = Instant::now();
        let mut moved = 0u64;
        while Instant::now() < start + Duration::from_secs(4) {
            throttle([Some(&session), Some(&host)], 16 * 1024).await;
            moved += 16 * 1024;
        }
        let expected = 1_000_000.0 + 16.0 * 1024.0;
        assert!((moved as f64 - expected).abs() / expected < 0.02, "{moved}");
    }

    #[tokio::test(start_paused = true)]
    async fn tiny_chunks_pay_the_minimum_charge() {
        // 1,000 one-byte chunks at 100 kB/s after a 16 KiB burst: charged as 1 KiB
        // each, they take about ten seconds, not a moment.
        let bucket = TokenBucket::new(100_000, 16 * 1024).expect("limited");
        let started = Instant::now();
        for _ in 0..1000 {
            throttle([Some(&bucket), None], 1).await;
        }
        let took = started.elapsed();
        let expected = (1000 * MIN_CHARGE - 16 * 1024) as f64 / 100_000.0;
        assert!(
            (took.as_secs_f64() - expected).abs() < 0.1,
            "{took:?} vs {expected} s"
        );
    }
}
