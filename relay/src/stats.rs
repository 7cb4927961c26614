//! Counters of what the relay did: every acceptance, refusal and byte forwarded.
//!
//! Counters are plain atomics, cheap enough to bump on every chunk. They carry no
//! labels at all, so they cannot leak who used the relay.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub connections_accepted: AtomicU64,
    pub registrations_accepted: AtomicU64,
    pub registrations_refused: AtomicU64,
    pub registrations_replaced: AtomicU64,
    pub sessions_opened: AtomicU64,
    pub sessions_refused: AtomicU64,
    pub sessions_active: AtomicU64,
    pub bad_requests: AtomicU64,
    pub bytes_player_to_host: AtomicU64,
    pub bytes_host_to_player: AtomicU64,
}

impl Stats {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A copy of the relay's counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// QUIC connections that completed their handshake.
    pub connections_accepted: u64,
    /// Host ids registered now.
    pub registered_hosts: u64,
    /// Registrations accepted.
    pub registrations_accepted: u64,
    /// Registrations refused (failed proof, malformed, or out of order).
    pub registrations_refused: u64,
    /// Registrations closed because a newer one took their host id.
    pub registrations_replaced: u64,
    /// Sessions spliced.
    pub sessions_opened: u64,
    /// Sessions refused after a valid `Connect` (host offline or unreachable).
    pub sessions_refused: u64,
    /// Sessions being forwarded now.
    pub sessions_active: u64,
    /// Streams whose first message could not be decoded or came too late.
    pub bad_requests: u64,
    /// Ciphertext bytes forwarded from players to hosts.
    pub bytes_player_to_host: u64,
    /// Ciphertext bytes forwarded from hosts to players.
    pub bytes_host_to_player: u64,
}

impl Stats {
    pub fn snapshot(&self, registered_hosts: usize) -> StatsSnapshot {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        StatsSnapshot {
            connections_accepted: get(&self.connections_accepted),
            registered_hosts: registered_hosts as u64,
            registrations_accepted: get(&self.registrations_accepted),
            registrations_refused: get(&self.registrations_refused),
            registrations_replaced: get(&self.registrations_replaced),
            sessions_opened: get(&self.sessions_opened),
            sessions_refused: get(&self.sessions_refused),
            sessions_active: get(&self.sessions_active),
            bad_requests: get(&self.bad_requests),
            bytes_player_to_host: get(&self.bytes_player_to_host),
            bytes_host_to_player: get(&self.bytes_host_to_player),
        }
    }
}
