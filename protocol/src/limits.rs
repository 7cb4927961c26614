//! The limits a relay applies to one session, told to both ends when it opens.
//!
//! A player that knows its session is capped at 40 Mbit/s can pick a bitrate that
//! fits instead of stalling mysteriously; a host that knows idle sessions end after
//! ten minutes can send keep-alives. The relay enforces these; the ends only read
//! them. Byte counts and rates apply to each direction separately.
//!
//! Wire format (36 bytes, integers big-endian), inside `Connected` and `Incoming`:
//!
//! ```text
//! rate           u64  bytes per second, this session, each direction (0: none)
//! host_rate      u64  bytes per second, all of the host's sessions together, each direction (0: none)
//! max_bytes      u64  bytes, each direction, before the relay ends the session (0: none)
//! max_duration   u32  seconds before the relay ends the session (0: none)
//! idle_timeout   u32  seconds without a byte either way before the relay ends it (0: none)
//! stall_timeout  u32  seconds a side may leave forwarded bytes unread before the relay ends it (0: none)
//! ```

use bytes::BufMut;

use crate::encoding::Reader;
use crate::error::DecodeError;

/// Encoded length of [`SessionLimits`].
pub const SESSION_LIMITS_LEN: usize = 36;

/// What the relay allows one session (see the module documentation). Zero means
/// "no limit" in every field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SessionLimits {
    /// Bytes per second this session may move in each direction.
    pub rate: u64,
    /// Bytes per second all of the host's sessions together may move in each direction.
    pub host_rate: u64,
    /// Bytes the session may move in each direction before it is ended.
    pub max_bytes: u64,
    /// Seconds the session may last.
    pub max_duration_secs: u32,
    /// Seconds the session may stay without a byte in either direction.
    pub idle_timeout_secs: u32,
    /// Seconds a side may leave bytes forwarded to it unread.
    pub stall_timeout_secs: u32,
}

impl SessionLimits {
    /// No limit at all.
    pub const NONE: Self = Self {
        rate: 0,
        host_rate: 0,
        max_bytes: 0,
        max_duration_secs: 0,
        idle_timeout_secs: 0,
        stall_timeout_secs: 0,
    };

    /// Appends the 36-byte encoding.
    pub fn encode(&self, out: &mut impl BufMut) {
        out.put_u64(self.rate);
        out.put_u64(self.host_rate);
        out.put_u64(self.max_bytes);
        out.put_u32(self.max_duration_secs);
        out.put_u32(self.idle_timeout_secs);
        out.put_u32(self.stall_timeout_secs);
    }

    /// Reads the 36-byte encoding.
    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            rate: r.u64()?,
            host_rate: r.u64()?,
            max_bytes: r.u64()?,
            max_duration_secs: r.u32()?,
            idle_timeout_secs: r.u32()?,
            stall_timeout_secs: r.u32()?,
        })
    }

    /// The rate a session can count on in each direction: the lower of its own cap and
    /// its host's, or `None` when neither is capped.
    pub fn effective_rate(&self) -> Option<u64> {
        match (self.rate, self.host_rate) {
            (0, 0) => None,
            (0, host) => Some(host),
            (own, 0) => Some(own),
            (own, host) => Some(own.min(host)),
        }
    }
}

impl std::fmt::Display for SessionLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(rate) = self.effective_rate() {
            parts.push(format!("{:.1} Mbit/s", rate as f64 * 8.0 / 1e6));
        }
        if self.max_bytes != 0 {
            parts.push(format!("{} bytes each way", self.max_bytes));
        }
        if self.max_duration_secs != 0 {
            parts.push(format!("{} s long", self.max_duration_secs));
        }
        if self.idle_timeout_secs != 0 {
            parts.push(format!("{} s idle", self.idle_timeout_secs));
        }
        if self.stall_timeout_secs != 0 {
            parts.push(format!("{} s stalled", self.stall_timeout_secs));
        }
        if parts.is_empty() {
            f.write_str("no limits")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_is_pinned_and_round_trips() {
        let limits = SessionLimits {
            rate: 0x0102,
            host_rate: 0x0304,
            max_bytes: 0x0506,
            max_duration_secs: 7,
            idle_timeout_secs: 8,
            stall_timeout_secs: 9,
        };
        let mut out = Vec::new();
        limits.encode(&mut out);
        assert_eq!(out.len(), SESSION_LIMITS_LEN);
        let hex: String = out.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "0000000000000102000000000000030400000000000005060000000700000008\
             00000009"
        );
        let mut r = Reader::new(&out);
        assert_eq!(SessionLimits::decode(&mut r), Ok(limits));
        assert_eq!(r.remaining(), 0);
    }

    #[test]
    fn effective_rate_is_the_lower_cap() {
        let mut limits = SessionLimits::NONE;
        assert_eq!(limits.effective_rate(), None);
        limits.host_rate = 10;
        assert_eq!(limits.effective_rate(), Some(10));
        limits.rate = 4;
        assert_eq!(limits.effective_rate(), Some(4));
        limits.host_rate = 0;
        assert_eq!(limits.effective_rate(), Some(4));
        assert_eq!(SessionLimits::NONE.to_string(), "no limits");
    }
}
