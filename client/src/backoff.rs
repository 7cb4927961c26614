//! Exponential backoff with jitter, for reconnecting to a relay.
//!
//! Each delay is drawn uniformly from the upper half of an exponentially growing
//! ceiling ("equal jitter"): hosts that lost the same relay at the same moment spread
//! their reconnections out instead of arriving together, and no host retries
//! immediately in a tight loop.

use std::time::Duration;

/// Backoff bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// Ceiling of the first delay.
    pub initial: Duration,
    /// Largest ceiling.
    pub max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

/// The delay sequence of one reconnection episode.
#[derive(Debug)]
pub(crate) struct Backoff {
    config: BackoffConfig,
    attempt: u32,
    rng: fastrand::Rng,
}

impl Backoff {
    /// A backoff that has made no attempt yet.
    pub(crate) fn new(config: BackoffConfig) -> Self {
        Self::with_rng(config, fastrand::Rng::new())
    }

    /// A backoff drawing its jitter from `rng` (seeded, in tests).
    pub(crate) fn with_rng(config: BackoffConfig, rng: fastrand::Rng) -> Self {
        Self {
            config,
            attempt: 0,
            rng,
        }
    }

    /// The delay before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let factor = 1u32 << self.attempt.min(20);
        let ceiling = self
            .config
            .initial
            .saturating_mul(factor)
            .min(self.config.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        let jitter = half.mul_f64(self.rng.f64());
        half + jitter
    }

    /// Attempts made since the last reset.
    pub(crate) fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Starts over after a success.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_ceiling_and_stay_within_bounds() {
        let config = BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
        };
        let mut backoff = Backoff::with_rng(config, fastrand::Rng::with_seed(7));
        let mut ceiling = Duration::from_millis(100);
        for _ in 0..12 {
            let delay = backoff.next_delay();
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} vs {ceiling:?}"
            );
            ceiling = (ceiling * 2).min(config.max);
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn delays_are_jittered() {
        let config = BackoffConfig::default();
        let delays: Vec<_> = (0..20)
            .map(|seed| Backoff::with_rng(config, fastrand::Rng::with_seed(seed)).next_delay())
            .collect();
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(
            distinct.len() > 15,
            "jitter should spread delays: {delays:?}"
        );
    }
}
