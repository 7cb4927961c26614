//! Admission: who may open a connection, ask for a session or register, and whether
//! the relay has room for one more.
//!
//! Addresses are keyed per IPv4 address and per IPv6 /64 (one home's or one
//! server's allocation), so an attacker with a /64 cannot multiply its allowance by
//! rotating addresses. Rates are GCRA token buckets (`governor`); counts are plain
//! atomics. Every check compares with `>=` against its maximum: `max` may be in use,
//! never `max + 1`.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use blindrelay_protocol::ErrorCode;
use dashmap::DashMap;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::limits::Limits;

/// The part of an address limits are keyed by: a whole IPv4 address or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct IpKey(u128);

impl IpKey {
    pub fn of(addr: SocketAddr) -> Self {
        match addr.ip().to_canonical() {
            IpAddr::V4(v4) => Self(u128::from(u32::from(v4))),
            // Tagged so no IPv6 prefix collides with an IPv4 address.
            IpAddr::V6(v6) => Self((u128::from(v6) & !((1u128 << 64) - 1)) | 1),
        }
    }
}

/// Why the relay turned something away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    /// Too many new connections, sessions or registrations from one address.
    #[error("rate limited: too many requests from your address")]
    RateLimited,
    /// Too many connections open from one address.
    #[error("too many connections from your address")]
    TooManyFromAddress,
    /// The relay's connection or session cap, or its buffer budget, is reached.
    #[error("relay at capacity: try again later")]
    AtCapacity,
}

impl Refusal {
    pub fn code(self) -> ErrorCode {
        match self {
            Self::RateLimited | Self::TooManyFromAddress => ErrorCode::RateLimited,
            Self::AtCapacity => ErrorCode::AtCapacity,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Self::RateLimited => "rate limited: too many requests from your address",
            Self::TooManyFromAddress => "too many connections from your address",
            Self::AtCapacity => "relay at capacity: try again later",
        }
    }
}

/// The relay's admission state, shared by every connection.
pub(crate) struct Admission {
    new_connections: Option<DefaultKeyedRateLimiter<IpKey>>,
    new_sessions: Option<DefaultKeyedRateLimiter<IpKey>>,
    registrations: Option<DefaultKeyedRateLimiter<IpKey>>,
    per_ip: DashMap<IpKey, u32>,
    max_per_ip: u32,
    connections: AtomicU32,
    sessions: AtomicU32,
    max_sessions: u32,
    buffer_used: AtomicU64,
    buffer_budget: u64,
    session_buffer: u64,
}

impl Admission {
    pub fn new(limits: &Limits) -> Self {
        let c = &limits.connections;
        let s = &limits.sessions;
        let r = &limits.registrations;
        Self {
            new_connections: keyed(c.new_per_ip_per_s, c.new_per_ip_burst),
            new_sessions: keyed(s.new_per_ip_per_s, s.new_per_ip_burst),
            registrations: keyed(r.per_ip_per_s, r.per_ip_burst),
            per_ip: DashMap::new(),
            max_per_ip: c.per_ip,
            connections: AtomicU32::new(0),
            sessions: AtomicU32::new(0),
            max_sessions: s.max,
            buffer_used: AtomicU64::new(0),
            buffer_budget: s.buffer_budget.0,
            session_buffer: limits.session_buffer(),
        }
    }

    /// Checks a new connection from `addr` against the per-address limits and counts
    /// it. The relay-wide cap is checked by the caller against
    /// [`Admission::open_connections`], so idle registrations can be shed first.
    pub fn admit_connection(
        self: &Arc<Self>,
        addr: SocketAddr,
    ) -> Result<ConnectionPermit, Refusal> {
        let key = IpKey::of(addr);
        if let Some(limiter) = &self.new_connections {
            limiter.check_key(&key).map_err(|_| Refusal::RateLimited)?;
        }
        {
            let mut count = self.per_ip.entry(key).or_insert(0);
            if self.max_per_ip != 0 && *count >= self.max_per_ip {
                return Err(Refusal::TooManyFromAddress);
            }
            *count += 1;
        }
        self.connections.fetch_add(1, Ordering::Relaxed);
        Ok(ConnectionPermit {
            admission: self.clone(),
            key,
            released: AtomicBool::new(false),
        })
    }

    /// Checks one more session request from `addr` against its rate.
    pub fn check_session_rate(&self, addr: SocketAddr) -> Result<(), Refusal> {
        check_rate(&self.new_sessions, addr, 1)
    }

    /// Checks one more registration attempt from `addr`; `cost` is 2 for an attempt
    /// whose proof failed, so guessing is twice as slow as registering.
    pub fn check_registration_rate(&self, addr: SocketAddr, cost: u32) -> Result<(), Refusal> {
        check_rate(&self.registrations, addr, cost)
    }

    /// Reserves one session's buffers from the budget and one slot of the session cap.
    pub fn reserve_session(self: &Arc<Self>) -> Result<SessionPermit, Refusal> {
        let reserved = self
            .sessions
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (self.max_sessions == 0 || open < self.max_sessions).then_some(open + 1)
            });
        if reserved.is_err() {
            return Err(Refusal::AtCapacity);
        }
        let bytes = self.session_buffer;
        let budgeted = self
            .buffer_used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                let after = used.checked_add(bytes)?;
                (self.buffer_budget == 0 || after <= self.buffer_budget).then_some(after)
            });
        if budgeted.is_err() {
            self.sessions.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::AtCapacity);
        }
        Ok(SessionPermit {
            admission: self.clone(),
        })
    }

    /// Bytes of the buffer budget reserved by running sessions.
    pub fn buffer_in_use(&self) -> u64 {
        self.buffer_used.load(Ordering::Relaxed)
    }

    /// Connections holding a permit.
    pub fn open_connections(&self) -> u32 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Forgets rate-limiter state that has refilled completely, so the maps hold
    /// only addresses seen recently.
    pub fn forget_idle_addresses(&self) {
        for limiter in [
            &self.new_connections,
            &self.new_sessions,
            &self.registrations,
        ]
        .into_iter()
        .flatten()
        {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// Holds one connection's place in the counts until dropped or released.
pub(crate) struct ConnectionPermit {
    admission: Arc<Admission>,
    key: IpKey,
    released: AtomicBool,
}

impl ConnectionPermit {
    /// Gives the place back now (the connection is being shed and will be gone in a
    /// moment); dropping the permit later does nothing more.
    pub fn release(&self) {
        if self.released.swap(true, Ordering::AcqRel) {
            return;
        }
        let admission = &self.admission;
        admission.connections.fetch_sub(1, Ordering::Relaxed);
        admission.per_ip.remove_if_mut(&self.key, |_, count| {
            *count = count.saturating_sub(1);
            *count == 0
        });
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.release();
    }
}

/// Holds one session's buffer reservation until dropped.
pub(crate) struct SessionPermit {
    admission: Arc<Admission>,
}

impl Drop for SessionPermit {
    fn drop(&mut self) {
        let admission = &self.admission;
        admission
            .buffer_used
            .fetch_sub(admission.session_buffer, Ordering::AcqRel);
        admission.sessions.fetch_sub(1, Ordering::AcqRel);
    }
}

fn keyed(per_s: u32, burst: u32) -> Option<DefaultKeyedRateLimiter<IpKey>> {
    let per_s = NonZeroU32::new(per_s)?;
    let burst = NonZeroU32::new(burst).unwrap_or(per_s);
    Some(RateLimiter::keyed(
        Quota::per_second(per_s).allow_burst(burst),
    ))
}

fn check_rate(
    limiter: &Option<DefaultKeyedRateLimiter<IpKey>>,
    addr: SocketAddr,
    cost: u32,
) -> Result<(), Refusal> {
    let (Some(limiter), Some(cost)) = (limiter, NonZeroU32::new(cost)) else {
        return Ok(());
    };
    match limiter.check_key_n(&IpKey::of(addr), cost) {
        Ok(Ok(())) => Ok(()),
        // Over the burst size counts as limited too.
        Ok(Err(_)) | Err(_) => Err(Refusal::RateLimited),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::ByteSize;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("address")
    }

    #[test]
    fn ipv6_addresses_share_their_64() {
        assert_eq!(
            IpKey::of(addr("[2001:db8:1:2::1]:1")),
            IpKey::of(addr("[2001:db8:1:2:ffff::9]:2"))
        );
        assert_ne!(
            IpKey::of(addr("[2001:db8:1:2::1]:1")),
            IpKey::of(addr("[2001:db8:1:3::1]:1"))
        );
        assert_eq!(
            IpKey::of(addr("[::ffff:192.0.2.1]:1")),
            IpKey::of(addr("192.0.2.1:9"))
        );
        assert_ne!(
            IpKey::of(addr("192.0.2.1:1")),
            IpKey::of(addr("192.0.2.2:1"))
        );
    }

    #[test]
    fn connections_per_address_stop_at_the_maximum() {
        let mut limits = Limits::unlimited();
        limits.connections.per_ip = 3;
        let admission = Arc::new(Admission::new(&limits));
        let a = addr("192.0.2.1:1");
        let permits: Vec<_> = (0..3)
            .map(|_| admission.admit_connection(a).expect("within the limit"))
            .collect();
        assert_eq!(
            admission.admit_connection(a).err(),
            Some(Refusal::TooManyFromAddress)
        );
        // Another address is not affected.
        let other = admission.admit_connection(addr("192.0.2.2:1"));
        assert!(other.is_ok());
        // Releasing twice gives back one place, not two.
        permits[0].release();
        permits[0].release();
        let again = admission.admit_connection(a).expect("a place was freed");
        assert_eq!(
            admission.admit_connection(a).err(),
            Some(Refusal::TooManyFromAddress)
        );
        drop(again);
        drop(permits);
        drop(other);
        assert_eq!(admission.open_connections(), 0);
        assert!(admission.per_ip.is_empty(), "no address kept once unused");
    }

    #[test]
    fn connection_rate_is_per_address() {
        let mut limits = Limits::unlimited();
        limits.connections.new_per_ip_per_s = 1;
        limits.connections.new_per_ip_burst = 5;
        let admission = Arc::new(Admission::new(&limits));
        let mut admitted = Vec::new();
        let mut refused = 0;
        for _ in 0..20 {
            match admission.admit_connection(addr("192.0.2.1:1")) {
                Ok(permit) => admitted.push(permit),
                Err(refusal) => {
                    assert_eq!(refusal, Refusal::RateLimited);
                    refused += 1;
                }
            }
        }
        // The burst, perhaps one more if a second ticked by.
        assert!((5..=6).contains(&admitted.len()), "{}", admitted.len());
        assert_eq!(refused, 20 - admitted.len());
        assert!(admission.admit_connection(addr("192.0.2.9:1")).is_ok());
    }

    #[test]
    fn the_budget_admits_exactly_what_fits() {
        let mut limits = Limits::unlimited();
        limits.sessions.buffer_budget = ByteSize(limits.session_buffer() * 4 + 1);
        let admission = Arc::new(Admission::new(&limits));
        let permits: Vec<_> = (0..4)
            .map(|_| admission.reserve_session().expect("fits"))
            .collect();
        assert_eq!(admission.reserve_session().err(), Some(Refusal::AtCapacity));
        assert_eq!(admission.buffer_in_use(), limits.session_buffer() * 4);
        drop(permits);
        assert_eq!(admission.buffer_in_use(), 0);
        assert!(admission.reserve_session().is_ok());
    }

    #[test]
    fn the_session_cap_admits_max_not_max_plus_one() {
        let mut limits = Limits::unlimited();
        limits.sessions.max = 2;
        let admission = Arc::new(Admission::new(&limits));
        let first = admission.reserve_session().expect("1");
        let _second = admission.reserve_session().expect("2");
        assert!(admission.reserve_session().is_err());
        drop(first);
        assert!(admission.reserve_session().is_ok());
    }

    #[test]
    fn failed_proofs_cost_double() {
        let mut limits = Limits::unlimited();
        limits.registrations.per_ip_per_s = 1;
        limits.registrations.per_ip_burst = 4;
        let admission = Admission::new(&limits);
        let a = addr("192.0.2.1:1");
        assert!(admission.check_registration_rate(a, 2).is_ok());
        assert!(admission.check_registration_rate(a, 2).is_ok());
        assert_eq!(
            admission.check_registration_rate(a, 2),
            Err(Refusal::RateLimited)
        );
    }
}
