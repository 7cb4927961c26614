//! A cache of QUIC connections by destination, shared by every session to it.
//!
//! Each destination (a relay URL, a host's direct address) has a slot of its own,
//! and only that slot is held while its connection is being made: a session to one
//! relay never waits behind a connect to another that does not answer. Sessions to
//! the same destination wait for the one connect in flight and then share it, rather
//! than each opening a connection of its own.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Mutex as SlotLock;

/// One destination's connection, if it has one that was made.
type Slot = Arc<SlotLock<Option<quinn::Connection>>>;

/// Live connections by destination.
pub(crate) struct ConnectionCache<K> {
    slots: Mutex<HashMap<K, Slot>>,
}

impl<K: Eq + Hash + Clone> ConnectionCache<K> {
    /// An empty cache.
    pub(crate) fn new() -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// The live connection to `key`, or a new one from `connect`. Only `key`'s slot
    /// is held across `connect`.
    pub(crate) async fn get_or_connect<E, F, Fut>(
        &self,
        key: &K,
        connect: F,
    ) -> Result<quinn::Connection, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<quinn::Connection, E>>,
    {
        let slot = self
            .slots
            .lock()
            // A panic elsewhere cannot leave the map half-updated: every change
            // is one insert.
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.clone())
            .or_default()
            .clone();
        let mut held = slot.lock().await;
        if let Some(connection) = held.as_ref() {
            if connection.close_reason().is_none() {
                return Ok(connection.clone());
            }
        }
        let connection = connect().await?;
        *held = Some(connection.clone());
        Ok(connection)
    }

    /// Keeps `connection` as `key`'s, in place of any it had: one made another way
    /// (a host's dial that a punch asked for). `false`, and nothing kept, while a
    /// connect to `key` is in flight.
    pub(crate) fn insert(&self, key: K, connection: quinn::Connection) -> bool {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key)
            .or_default()
            .clone();
        let Ok(mut held) = slot.try_lock() else {
            return false;
        };
        *held = Some(connection);
        true
    }

    /// Any live connection in the cache.
    pub(crate) fn any_live(&self) -> Option<quinn::Connection> {
        self.any_live_entry().map(|(_, connection)| connection)
    }

    /// Any live connection in the cache, with its key.
    pub(crate) fn any_live_entry(&self) -> Option<(K, quinn::Connection)> {
        let slots: Vec<(K, Slot)> = self
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(key, slot)| (key.clone(), slot.clone()))
            .collect();
        slots.iter().find_map(|(key, slot)| {
            let held = slot.try_lock().ok()?;
            held.as_ref()
                .filter(|connection| connection.close_reason().is_none())
                .map(|connection| (key.clone(), connection.clone()))
        })
    }

    /// The live connection to `key`, if there is one now (none while one is being
    /// made).
    pub(crate) fn live(&self, key: &K) -> Option<quinn::Connection> {
        let slot = self
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)?
            .clone();
        let held = slot.try_lock().ok()?;
        held.as_ref()
            .filter(|connection| connection.close_reason().is_none())
            .cloned()
    }

    /// Whether `key` had a connection that has closed since: the destination went
    /// away under it (a relay that restarted or stopped).
    pub(crate) fn went_away(&self, key: &K) -> bool {
        let Some(slot) = self
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
        else {
            return false;
        };
        let held = slot.try_lock();
        held.ok()
            .and_then(|held| held.as_ref().map(|c| c.close_reason().is_some()))
            .unwrap_or(false)
    }

    /// Takes every connection out of the cache. A connect still in flight keeps its
    /// slot and is not returned.
    pub(crate) fn drain(&self) -> Vec<quinn::Connection> {
        let slots: Vec<Slot> = self
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .map(|(_, slot)| slot)
            .collect();
        slots
            .iter()
            .filter_map(|slot| slot.try_lock().ok()?.take())
            .collect()
    }
}
