//! Counters of what the relay did: every acceptance, refusal, eviction and byte
//! forwarded.
//!
//! Counters are plain atomics, cheap enough to bump on every chunk. They carry no
//! labels at all, so they cannot leak who used the relay.

use std::sync::atomic::{AtomicU64, Ordering};

use blindrelay_protocol::codes;

use crate::admission::{Admission, Refusal};

#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub connections_accepted: AtomicU64,
    pub connections_rate_limited: AtomicU64,
    pub connections_over_address_cap: AtomicU64,
    pub connections_at_capacity: AtomicU64,
    pub connections_shed: AtomicU64,
    pub connections_idle_closed: AtomicU64,
    pub registrations_accepted: AtomicU64,
    pub registrations_refused: AtomicU64,
    pub registrations_rate_limited: AtomicU64,
    pub registrations_replaced: AtomicU64,
    pub sessions_opened: AtomicU64,
    pub sessions_active: AtomicU64,
    pub sessions_refused_offline: AtomicU64,
    pub sessions_refused_unreachable: AtomicU64,
    pub sessions_refused_busy: AtomicU64,
    pub sessions_refused_capacity: AtomicU64,
    pub sessions_refused_rate: AtomicU64,
    pub sessions_ended_stalled: AtomicU64,
    pub sessions_ended_idle: AtomicU64,
    pub sessions_ended_duration: AtomicU64,
    pub sessions_ended_bytes: AtomicU64,
    pub bad_requests: AtomicU64,
    pub bytes_player_to_host: AtomicU64,
    pub bytes_host_to_player: AtomicU64,
}

/// Why a session was refused after a readable `Connect`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SessionRefused {
    HostOffline,
    HostUnreachable,
    HostBusy,
    AtCapacity,
    RateLimited,
}

impl Stats {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connection_refused(&self, refusal: Refusal) {
        Self::bump(match refusal {
            Refusal::RateLimited => &self.connections_rate_limited,
            Refusal::TooManyFromAddress => &self.connections_over_address_cap,
            Refusal::AtCapacity => &self.connections_at_capacity,
        });
    }

    pub fn session_refused(&self, why: SessionRefused) {
        Self::bump(match why {
            SessionRefused::HostOffline => &self.sessions_refused_offline,
            SessionRefused::HostUnreachable => &self.sessions_refused_unreachable,
            SessionRefused::HostBusy => &self.sessions_refused_busy,
            SessionRefused::AtCapacity => &self.sessions_refused_capacity,
            SessionRefused::RateLimited => &self.sessions_refused_rate,
        });
    }

    pub fn session_ended_by(&self, code: u32) {
        let counter = match code {
            codes::stream::STALLED => &self.sessions_ended_stalled,
            codes::stream::SESSION_IDLE => &self.sessions_ended_idle,
            codes::stream::DURATION_LIMIT => &self.sessions_ended_duration,
            codes::stream::BYTE_LIMIT => &self.sessions_ended_bytes,
            _ => return,
        };
        Self::bump(counter);
    }
}

/// A copy of the relay's counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// QUIC connections that completed their handshake.
    pub connections_accepted: u64,
    /// Connections open now (holding a place in the connection cap).
    pub connections_open: u64,
    /// New connections refused: too many per second from one address.
    pub connections_rate_limited: u64,
    /// New connections refused: too many open from one address.
    pub connections_over_address_cap: u64,
    /// New connections refused: the relay's connection cap, with no idle
    /// registration left to shed.
    pub connections_at_capacity: u64,
    /// Idle registrations closed to make room for new connections.
    pub connections_shed: u64,
    /// Connections closed for having neither registration nor session too long.
    pub connections_idle_closed: u64,
    /// Host ids registered now.
    pub registered_hosts: u64,
    /// Registrations accepted.
    pub registrations_accepted: u64,
    /// Registrations refused (failed proof, malformed, out of order, rate limited).
    pub registrations_refused: u64,
    /// Of those, refused for too many attempts from one address.
    pub registrations_rate_limited: u64,
    /// Registrations closed because a newer one took their host id.
    pub registrations_replaced: u64,
    /// Sessions spliced.
    pub sessions_opened: u64,
    /// Sessions refused after a valid `Connect`, all reasons together.
    pub sessions_refused: u64,
    /// Refused: host offline.
    pub sessions_refused_offline: u64,
    /// Refused: the host did not take the session stream.
    pub sessions_refused_unreachable: u64,
    /// Refused: the host has as many sessions as allowed.
    pub sessions_refused_busy: u64,
    /// Refused: the relay's session cap or buffer budget.
    pub sessions_refused_capacity: u64,
    /// Refused: too many session requests from one address.
    pub sessions_refused_rate: u64,
    /// Sessions being forwarded now.
    pub sessions_active: u64,
    /// Sessions ended because one side left its bytes unread too long.
    pub sessions_ended_stalled: u64,
    /// Sessions ended for moving no byte too long.
    pub sessions_ended_idle: u64,
    /// Sessions ended at their maximum duration.
    pub sessions_ended_duration: u64,
    /// Sessions ended at their maximum bytes.
    pub sessions_ended_bytes: u64,
    /// Bytes of the session buffer budget reserved by running sessions.
    pub buffer_bytes_reserved: u64,
    /// Streams whose first message could not be decoded or came too late.
    pub bad_requests: u64,
    /// Ciphertext bytes forwarded from players to hosts.
    pub bytes_player_to_host: u64,
    /// Ciphertext bytes forwarded from hosts to players.
    pub bytes_host_to_player: u64,
}

impl Stats {
    pub fn snapshot(&self, registered_hosts: usize, admission: &Admission) -> StatsSnapshot {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let refused = [
            &self.sessions_refused_offline,
            &self.sessions_refused_unreachable,
            &self.sessions_refused_busy,
            &self.sessions_refused_capacity,
            &self.sessions_refused_rate,
        ];
        StatsSnapshot {
            connections_accepted: get(&self.connections_accepted),
            connections_open: u64::from(admission.open_connections()),
            connections_rate_limited: get(&self.connections_rate_limited),
            connections_over_address_cap: get(&self.connections_over_address_cap),
            connections_at_capacity: get(&self.connections_at_capacity),
            connections_shed: get(&self.connections_shed),
            connections_idle_closed: get(&self.connections_idle_closed),
            registered_hosts: registered_hosts as u64,
            registrations_accepted: get(&self.registrations_accepted),
            registrations_refused: get(&self.registrations_refused),
            registrations_rate_limited: get(&self.registrations_rate_limited),
            registrations_replaced: get(&self.registrations_replaced),
            sessions_opened: get(&self.sessions_opened),
            sessions_refused: refused.into_iter().map(get).sum(),
            sessions_refused_offline: get(&self.sessions_refused_offline),
            sessions_refused_unreachable: get(&self.sessions_refused_unreachable),
            sessions_refused_busy: get(&self.sessions_refused_busy),
            sessions_refused_capacity: get(&self.sessions_refused_capacity),
            sessions_refused_rate: get(&self.sessions_refused_rate),
            sessions_active: get(&self.sessions_active),
            sessions_ended_stalled: get(&self.sessions_ended_stalled),
            sessions_ended_idle: get(&self.sessions_ended_idle),
            sessions_ended_duration: get(&self.sessions_ended_duration),
            sessions_ended_bytes: get(&self.sessions_ended_bytes),
            buffer_bytes_reserved: admission.buffer_in_use(),
            bad_requests: get(&self.bad_requests),
            bytes_player_to_host: get(&self.bytes_player_to_host),
            bytes_host_to_player: get(&self.bytes_host_to_player),
        }
    }
}
