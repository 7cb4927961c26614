//! The registry: which host id is reachable over which connection, in memory only.
//!
//! A concurrent map, so lookups for new sessions never wait on registrations of other
//! hosts. No entry is held across an `.await`. Each registered host carries what the
//! relay counts per host: its open sessions and its bandwidth buckets.
//!
//! Beside the map, the registrations without a session wait in an idle queue ordered
//! by when they last had none, so shedding, which runs on the accept loop for every
//! connection over the cap, takes the longest-idle one in O(log n) instead of
//! walking every registration. A host joins the queue when its session count falls
//! to zero and leaves it when the count rises again; the queue's lock is taken only
//! at those moments and at registration, never per chunk or per lookup.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use blindrelay_protocol::{codes, HostId};
use dashmap::DashMap;
use tokio::time::Instant;

use crate::policy::admission::ConnectionPermit;
use crate::policy::bucket::TokenBucket;
use crate::policy::tiers::Tier;
use crate::state::dials::DialRequest;
use crate::stream::link::Link;
use crate::stream::window::ReceiveWindow;

/// Session count of a host that was shed: no session may start on it any more.
const SHED: u32 = u32::MAX;

/// A registered host: its connection and its per-host limits.
pub(crate) struct Host {
    pub link: Link,
    /// On a stream transport, where the relay cannot open a stream to the host: asks
    /// the host's registration to send `Dial` for a session.
    pub dial: Option<tokio::sync::mpsc::Sender<DialRequest>>,
    /// The connection's place in the relay's counts, given back when it is shed.
    permit: Arc<ConnectionPermit>,
    /// The QUIC connection's receive window, opened while the host has sessions.
    pub window: Option<Arc<ReceiveWindow>>,
    /// Caps the bytes all of this host's sessions send towards the host.
    pub player_to_host: Option<TokenBucket>,
    /// Caps the bytes all of this host's sessions send towards players.
    pub host_to_player: Option<TokenBucket>,
    /// The limits of this host and its sessions.
    pub tier: Arc<Tier>,
    sessions: AtomicU32,
    max_sessions: Option<std::num::NonZeroU32>,
    /// The host's key in its registry's idle queue while it is queued. The lock also
    /// orders the host's moves in and out of the queue (see [`Host::sync_idle`]).
    idle_key: Mutex<Option<IdleKey>>,
    /// Where the host is registered; set once, when it is.
    place: OnceLock<Place>,
}

/// Orders the idle queue: since when a host has had no session, then its
/// registration number (unique) to tell apart hosts idle since the same instant.
type IdleKey = (Instant, u64);

/// Registrations without a session, longest idle first.
type IdleQueue = Mutex<BTreeMap<IdleKey, HostId>>;

/// A registered host's way back to its registry's idle queue.
struct Place {
    queue: Arc<IdleQueue>,
    host_id: HostId,
    registration: u64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing under these locks can panic midway and leave a broken value.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Host {
    pub(crate) fn new(
        link: Link,
        permit: Arc<ConnectionPermit>,
        window: Option<Arc<ReceiveWindow>>,
        tier: Arc<Tier>,
    ) -> Self {
        let bucket = || TokenBucket::new(tier.host_rate, tier.host_burst);
        Self {
            link,
            dial: None,
            permit,
            window,
            player_to_host: bucket(),
            host_to_player: bucket(),
            sessions: AtomicU32::new(0),
            max_sessions: tier.host_max_sessions,
            tier,
            idle_key: Mutex::new(None),
            place: OnceLock::new(),
        }
    }

    /// Counts one more session of this host, unless it already has the most it may.
    pub(crate) fn start_session(self: &Arc<Self>) -> Option<HostSession> {
        let before = self
            .sessions
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                let room = self.max_sessions.is_none_or(|max| open < max.get());
                (open != SHED && room).then_some(open + 1)
            })
            .ok()?;
        if before == 0 {
            self.sync_idle();
        }
        Some(HostSession { host: self.clone() })
    }

    /// Puts the host in its registry's idle queue or takes it out, as its session
    /// count now says. Called after every move of the count to or from zero: two
    /// such moves can race, but each call reads the count under the host's lock, so
    /// whichever call comes last leaves the queue right.
    fn sync_idle(&self) {
        let Some(place) = self.place.get() else {
            return;
        };
        let mut key = lock(&self.idle_key);
        let idle = self.sessions.load(Ordering::Acquire) == 0;
        match (idle, *key) {
            (true, None) => {
                let new = (Instant::now(), place.registration);
                lock(&place.queue).insert(new, place.host_id);
                *key = Some(new);
            }
            (false, Some(old)) => {
                lock(&place.queue).remove(&old);
                *key = None;
            }
            _ => {}
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let (Some(place), Some(key)) = (self.place.get(), *lock(&self.idle_key)) {
            lock(&place.queue).remove(&key);
        }
    }
}

/// One session counted against its host until dropped.
pub(crate) struct HostSession {
    host: Arc<Host>,
}

impl HostSession {
    pub(crate) fn host(&self) -> &Host {
        &self.host
    }
}

impl Drop for HostSession {
    fn drop(&mut self) {
        if self.host.sessions.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.host.sync_idle();
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
    /// Registrations without a session; may also hold a few stale keys (of hosts
    /// already removed or replaced), which [`Registry::shed_idle`] skips and drops.
    idle: Arc<IdleQueue>,
}

impl Registry {
    /// Registers `host_id`; newest wins. Returns this registration's number and the
    /// entry it replaced, if any.
    pub(crate) fn insert(&self, host_id: HostId, host: Arc<Host>) -> (u64, Option<Entry>) {
        let registration = self.next_registration.fetch_add(1, Ordering::Relaxed);
        let place = Place {
            queue: self.idle.clone(),
            host_id,
            registration,
        };
        if host.place.set(place).is_ok() {
            host.sync_idle();
        }
        let old = self.hosts.insert(host_id, Entry { host, registration });
        (registration, old)
    }

    /// Puts `old` back in place of `registration`, if that is still the entry: used
    /// when a new registration fails before the host learned it succeeded, so the
    /// host it would have replaced stays reachable.
    pub(crate) fn restore(&self, host_id: HostId, registration: u64, old: Entry) {
        if old.host.link.is_closed() {
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
    pub(crate) fn remove(&self, host_id: &HostId, registration: u64) -> bool {
        self.hosts
            .remove_if(host_id, |_, entry| entry.registration == registration)
            .is_some()
    }

    /// The host registered under `host_id`.
    ///
    /// An entry whose connection has already closed is removed here, so a host that
    /// vanished reads as offline even before its registration task has cleaned up.
    pub(crate) fn lookup(&self, host_id: &HostId) -> Option<Arc<Host>> {
        let entry = self.hosts.get(host_id)?;
        if !entry.host.link.is_closed() {
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
    ///
    /// Takes from the front of the idle queue: O(log n) in the registrations, plus
    /// the stale keys met on the way, each of which is dropped and never met again.
    ///
    /// `keep`, the registration that makes room, is never shed itself.
    pub(crate) fn shed_idle(&self, keep: Option<&HostId>) -> bool {
        let mut kept = None;
        let shed = loop {
            // The queue's lock is let go before the map's: `Host::drop` may take the
            // queue's while a map shard is locked.
            let next = lock(&self.idle).pop_first();
            let Some((key, host_id)) = next else {
                break false;
            };
            if Some(&host_id) == keep {
                kept = Some((key, host_id));
                continue;
            }
            let (_, registration) = key;
            // Re-checked under the entry's lock, and marked so no session can start
            // on it from here on: one may have started since it was queued. A key
            // whose registration is gone, or whose host has a session now, is stale
            // (the host leaves the queue again when that session starts) and skipped.
            let removed = self.hosts.remove_if(&host_id, |_, entry| {
                entry.registration == registration
                    && entry
                        .host
                        .sessions
                        .compare_exchange(0, SHED, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
            });
            let Some((_, entry)) = removed else {
                continue;
            };
            entry.host.permit.release();
            entry.host.link.close(
                codes::close::SHED,
                "relay overloaded: idle registration shed, register again later",
            );
            break true;
        };
        if let Some((key, host_id)) = kept {
            lock(&self.idle).insert(key, host_id);
        }
        shed
    }

    pub(crate) fn len(&self) -> usize {
        self.hosts.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::policy::admission::Admission;
    use crate::policy::tiers::Tiers;
    use crate::{Limits, Relay, RelayCertificate, RelayConfig};

    /// A relay on loopback and one connection to it: every test host shares the
    /// connection (a handle), since a registry entry needs a real one.
    async fn connection() -> (Relay, quinn::Endpoint, quinn::Connection) {
        let certificate = RelayCertificate::self_signed(&["localhost"]).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(certificate.leaf().clone()).unwrap();
        let mut config = RelayConfig::new("127.0.0.1:0".parse().unwrap(), certificate);
        config.limits = Limits::unlimited();
        let relay = Relay::spawn(config).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![blindrelay_protocol::ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        let connection = endpoint
            .connect(relay.local_addr(), "localhost")
            .unwrap()
            .await
            .unwrap();
        (relay, endpoint, connection)
    }

    /// `count` hosts on `connection`, registered in order; their host ids.
    fn register(registry: &Registry, connection: &quinn::Connection, count: u32) -> Vec<HostId> {
        let limits = Limits::unlimited();
        let admission = Arc::new(Admission::new(&limits));
        let permit = Arc::new(
            admission
                .admit_connection(
                    connection.remote_address(),
                    crate::policy::admission::Door::Quic,
                )
                .unwrap(),
        );
        let tier = Tiers::new(&limits)
            .unwrap()
            .of(&HostId::from_bytes([0; 32]));
        (0..count)
            .map(|i| {
                let mut bytes = [0u8; 32];
                bytes[..4].copy_from_slice(&i.to_be_bytes());
                let host_id = HostId::from_bytes(bytes);
                let window = ReceiveWindow::new(connection.clone(), &limits);
                let host = Arc::new(Host::new(
                    Link::Quic(connection.clone()),
                    permit.clone(),
                    Some(window),
                    tier.clone(),
                ));
                registry.insert(host_id, host);
                host_id
            })
            .collect()
    }

    fn host(registry: &Registry, host_id: &HostId) -> Arc<Host> {
        registry.hosts.get(host_id).unwrap().host.clone()
    }

    #[tokio::test]
    async fn shedding_takes_the_longest_idle_and_never_a_host_with_a_session() {
        let (_relay, _endpoint, connection) = connection().await;
        let registry = Registry::default();
        let ids = register(&registry, &connection, 6);
        // 0 and 2 are busy; 1 was busy and went idle last of all.
        let _busy = [0, 2].map(|i| host(&registry, &ids[i]).start_session().unwrap());
        tokio::time::sleep(Duration::from_millis(2)).await;
        drop(host(&registry, &ids[1]).start_session().unwrap());
        let mut shed = Vec::new();
        while registry.shed_idle(None) {
            let gone = ids
                .iter()
                .position(|id| !registry.hosts.contains_key(id) && !shed.contains(id));
            shed.push(ids[gone.unwrap()]);
        }
        assert_eq!(shed, [ids[3], ids[4], ids[5], ids[1]]);
        assert_eq!(registry.len(), 2, "the busy hosts stay");
        assert!(lock(&registry.idle).is_empty());
        // A host that ends its last session later joins the queue again.
        drop(_busy);
        assert_eq!(lock(&registry.idle).len(), 2);
        assert!(registry.shed_idle(None) && registry.shed_idle(None) && !registry.shed_idle(None));
    }

    #[tokio::test]
    async fn a_replaced_or_removed_registration_leaves_nothing_to_shed() {
        let (_relay, _endpoint, connection) = connection().await;
        let registry = Registry::default();
        let ids = register(&registry, &connection, 2);
        let first = registry.hosts.get(&ids[0]).unwrap().registration;
        assert!(registry.remove(&ids[0], first));
        // Newest wins: the replaced registration's key is gone with it.
        register(&registry, &connection, 2);
        assert_eq!(registry.len(), 2);
        assert_eq!(lock(&registry.idle).len(), 2);
        assert!(registry.shed_idle(None) && registry.shed_idle(None));
        assert!(!registry.shed_idle(None));
    }

    /// Shedding among 100,000 registrations, timed and printed (not asserted:
    /// timings belong to the machine). Run with `--nocapture` to read it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shedding_among_100_000_registrations_is_cheap() {
        const HOSTS: u32 = 100_000;
        const SHEDS: u32 = 100;
        let (_relay, _endpoint, connection) = connection().await;
        let registry = Registry::default();
        let started = std::time::Instant::now();
        let ids = register(&registry, &connection, HOSTS);
        let registering = started.elapsed();
        // The longest idle are busy now: shedding must pass over them.
        let busy: Vec<_> = ids[..1000]
            .iter()
            .map(|id| host(&registry, id).start_session().unwrap())
            .collect();
        let started = std::time::Instant::now();
        for _ in 0..SHEDS {
            assert!(registry.shed_idle(None));
        }
        let per_shed = started.elapsed() / SHEDS;
        println!("{HOSTS} registrations: {registering:?} to register, {per_shed:?} per shed");
        assert_eq!(registry.len(), (HOSTS - SHEDS) as usize);
        assert!(ids[..1000].iter().all(|id| registry.hosts.contains_key(id)));
        drop(busy);
    }
}
