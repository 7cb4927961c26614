//! The registry: which host id is reachable over which connection, in memory only.
//!
//! A concurrent map, so lookups for new sessions never wait on registrations of other
//! hosts. No entry is held across an `.await`.

use std::sync::atomic::{AtomicU64, Ordering};

use blindrelay_protocol::HostId;
use dashmap::DashMap;

/// One live registration.
#[derive(Clone)]
pub(crate) struct Entry {
    pub connection: quinn::Connection,
    /// Tells this registration apart from an older or newer one of the same host id.
    pub registration: u64,
}

#[derive(Default)]
pub(crate) struct Registry {
    hosts: DashMap<HostId, Entry>,
    next_registration: AtomicU64,
}

impl Registry {
    /// Registers `host_id` on `connection`; newest wins. Returns this registration's
    /// number and the entry it replaced, if any.
    pub fn insert(&self, host_id: HostId, connection: quinn::Connection) -> (u64, Option<Entry>) {
        let registration = self.next_registration.fetch_add(1, Ordering::Relaxed);
        let old = self.hosts.insert(
            host_id,
            Entry {
                connection,
                registration,
            },
        );
        (registration, old)
    }

    /// Puts `old` back in place of `registration`, if that is still the entry: used
    /// when a new registration fails before the host learned it succeeded, so the
    /// host it would have replaced stays reachable.
    pub fn restore(&self, host_id: HostId, registration: u64, old: Entry) {
        if old.connection.close_reason().is_some() {
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

    /// The connection of the host registered under `host_id`.
    ///
    /// An entry whose connection has already closed is removed here, so a host that
    /// vanished reads as offline even before its registration task has cleaned up.
    pub fn lookup(&self, host_id: &HostId) -> Option<quinn::Connection> {
        let entry = self.hosts.get(host_id)?;
        if entry.connection.close_reason().is_none() {
            return Some(entry.connection.clone());
        }
        let registration = entry.registration;
        drop(entry);
        self.remove(host_id, registration);
        None
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }
}
