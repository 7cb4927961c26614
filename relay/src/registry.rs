//! The registry: which host id is reachable over which connection, in memory only.
//!
//! A concurrent map, so lookups for new sessions never wait on registrations of other
//! hosts. No entry is held across an `.await`. Each registered host carries what the
//! relay counts per host: its open sessions and its bandwidth buckets.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use blindrelay_protocol::{codes, HostId};
use dashmap::DashMap;
use tokio::time::Instant;

use crate::admission::ConnectionPermit;
use crate::bucket::TokenBucket;
use crate::tiers::Tier;

/// Session count of a host that was shed: no session may start on it any more.
const SHED: u32 = u32::MAX;

/// A registered host: its connection and its per-host limits.
pub(crate) struct Host {
    pub connection: quinn::Connection,
    /// The connection's place in the relay's counts, given back when it is shed.
    permit: Arc<ConnectionPermit>,
    /// Caps the bytes all of this host's sessions send towards the host.
    pub player_to_host: Option<TokenBucket>,
    /// Caps the bytes all of this host's sessions send towards players.
    pub host_to_player: Option<TokenBucket>,
    /// The limits of this host and its sessions.
    pub tier: Arc<Tier>,
    sessions: AtomicU32,
    max_sessions: u32,
    /// When the host last had no session (for shedding the longest idle first).
    idle_since: Mutex<Instant>,
}

impl Host {
    pub fn new(
        connection: quinn::Connection,
        permit: Arc<ConnectionPermit>,
        tier: Arc<Tier>,
    ) -> Self {
        let bucket = || TokenBucket::new(tier.host_rate, tier.host_burst);
        Self {
            connection,
            permit,
            player_to_host: bucket(),
            host_to_player: bucket(),
            sessions: AtomicU32::new(0),
            max_sessions: tier.host_max_sessions,
            tier,
            idle_since: Mutex::new(Instant::now()),
        }
    }

    /// Counts one more session of this host, unless it already has the most it may.
    pub fn start_session(self: &Arc<Self>) -> Option<HostSession> {
        self.sessions
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                let room = self.max_sessions == 0 || open < self.max_sessions;
                (open != SHED && room).then_some(open + 1)
            })
            .ok()?;
        Some(HostSession { host: self.clone() })
    }

    fn idle_for(&self, now: Instant) -> Option<std::time::Duration> {
        if self.sessions.load(Ordering::Acquire) != 0 {
            return None;
        }
        let since = *self.idle_since.lock().unwrap_or_else(|p| p.into_inner());
        Some(now.saturating_duration_since(since))
    }
}

/// One session counted against its host until dropped.
pub(crate) struct HostSession {
    host: Arc<Host>,
}

impl HostSession {
    pub fn host(&self) -> &Host {
        &self.host
    }
}

impl Drop for HostSession {
    fn drop(&mut self) {
        if self.host.sessions.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self
                .host
                .idle_since
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Instant::now();
        }
    }
}

/// One live registration.
#[derive(Clone)]
pub(crate) struct Entry {
    pub host: Arc<Host>,
    /// Tells this registration apart from an older or newer one of the same host id.
    pub registration: u64,
}

#[derive(Default)]
pub(crate) struct Registry {
    hosts: DashMap<HostId, Entry>,
    next_registration: AtomicU64,
}

impl Registry {
    /// Registers `host_id`; newest wins. Returns this registration's number and the
    /// entry it replaced, if any.
    pub fn insert(&self, host_id: HostId, host: Arc<Host>) -> (u64, Option<Entry>) {
        let registration = self.next_registration.fetch_add(1, Ordering::Relaxed);
        let old = self.hosts.insert(host_id, Entry { host, registration });
        (registration, old)
    }

    /// Puts `old` back in place of `registration`, if that is still the entry: used
    /// when a new registration fails before the host learned it succeeded, so the
    /// host it would have replaced stays reachable.
    pub fn restore(&self, host_id: HostId, registration: u64, old: Entry) {
        if old.host.connection.close_reason().is_some() {
            // Its owner is gone and will not remove it again.
            self.remove(&host_id, registration);
            return;
        }
        if let Some(mut entry) = self.hosts.get_mut(&host_id) {
            if entry.registration == registration {
                *entry = old;
            }
        }
    }

    /// Removes `host_id` if it is still held by `registration` (a newer registration
    /// of the same id must not be removed by the old one's cleanup).
    pub fn remove(&self, host_id: &HostId, registration: u64) -> bool {
        self.hosts
            .remove_if(host_id, |_, entry| entry.registration == registration)
            .is_some()
    }

    /// The host registered under `host_id`.
    ///
    /// An entry whose connection has already closed is removed here, so a host that
    /// vanished reads as offline even before its registration task has cleaned up.
    pub fn lookup(&self, host_id: &HostId) -> Option<Arc<Host>> {
        let entry = self.hosts.get(host_id)?;
        if entry.host.connection.close_reason().is_none() {
            return Some(entry.host.clone());
        }
        let registration = entry.registration;
        drop(entry);
        self.remove(host_id, registration);
        None
    }

    /// Closes the registration that has been without a session the longest, to make
    /// room for a new connection. Hosts with sessions are never touched. Returns
    /// whether one was shed.
    pub fn shed_idle(&self) -> bool {
        let now = Instant::now();
        let mut idlest: Option<(HostId, u64, std::time::Duration)> = None;
        for entry in self.hosts.iter() {
            let Some(idle) = entry.host.idle_for(now) else {
                continue;
            };
            if idlest
                .as_ref()
                .is_none_or(|(_, _, longest)| idle > *longest)
            {
                idlest = Some((*entry.key(), entry.registration, idle));
            }
        }
        let Some((host_id, registration, _)) = idlest else {
            return false;
        };
        // Re-checked under the entry's lock, and marked so no session can start on it
        // from here on: one may have started since the scan.
        let removed = self.hosts.remove_if(&host_id, |_, entry| {
            entry.registration == registration
                && entry
                    .host
                    .sessions
                    .compare_exchange(0, SHED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
        });
        let Some((_, entry)) = removed else {
            return false;
        };
        entry.host.permit.release();
        entry.host.connection.close(
            codes::close::SHED.into(),
            b"relay overloaded: idle registration shed, register again later",
        );
        true
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }
}
