//! Admission: who may open a connection, ask for a session or register, and whether
//! the relay has room for one more.
//!
//! Addresses are keyed per IPv4 address and per IPv6 /64 (one home's or one
//! server's allocation), so an attacker with a /64 cannot multiply its allowance by
//! rotating addresses; and the counts of open connections, sessions and
//! registrations are also capped per IPv6 /48, so one with a /48 (65,536 /64s)
//! cannot multiply them by rotating /64s either. Rates are GCRA token buckets (`governor`); counts are plain
//! atomics. Every check compares with `>=` against its maximum: `max` may be in use,
//! never `max + 1`.

use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU32, NonZeroU64};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use blindrelay_protocol::{ErrorCode, HostId};
use dashmap::DashMap;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::policy::limits::{Limits, SharedAddresses};

/// The part of an address limits are keyed by: a whole IPv4 address or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct IpKey(u128);

impl IpKey {
    pub(crate) fn of(addr: SocketAddr) -> Self {
        match addr.ip().to_canonical() {
            IpAddr::V4(v4) => Self(u128::from(u32::from(v4))),
            // Tagged so no IPv6 prefix collides with an IPv4 address.
            IpAddr::V6(v6) => Self((u128::from(v6) & !((1u128 << 64) - 1)) | 1),
        }
    }

    /// The IPv6 /48 of `addr`; `None` for IPv4 (its addresses are keyed whole).
    pub(crate) fn network48(addr: SocketAddr) -> Option<Self> {
        match addr.ip().to_canonical() {
            IpAddr::V4(_) => None,
            // Tagged apart from /64 keys and IPv4 addresses.
            IpAddr::V6(v6) => Some(Self((u128::from(v6) & !((1u128 << 80) - 1)) | 2)),
        }
    }
}

/// Which listener a connection came in through. Each door counts its handshakes in
/// progress apart, so that a flood at one cannot close the other: QUIC's are what
/// its Retry threshold reads, and silent TCP sockets never reach them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Door {
    /// The QUIC endpoint (players, hosts, browsers' WebTransport).
    Quic,
    /// The TCP listener (TLS over TCP, WebSocket, the web player's files).
    Tcp,
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
    /// Too many sessions open from one address, to all hosts or to one.
    #[error("too many sessions from your address")]
    TooManySessionsFromAddress,
    /// Too many registrations held from one address.
    #[error("too many registrations from your address")]
    TooManyRegistrationsFromAddress,
    /// Too many TLS handshakes in progress on the relay.
    #[error("too many handshakes in progress")]
    TooManyHandshakes,
    /// Too many sessions open on one player connection.
    #[error("too many sessions on this connection")]
    TooManySessionsOnConnection,
}

impl Refusal {
    pub(crate) fn code(self) -> ErrorCode {
        match self {
            Self::RateLimited
            | Self::TooManyFromAddress
            | Self::TooManySessionsFromAddress
            | Self::TooManyRegistrationsFromAddress
            | Self::TooManySessionsOnConnection => ErrorCode::RateLimited,
            Self::AtCapacity | Self::TooManyHandshakes => ErrorCode::AtCapacity,
        }
    }

    pub(crate) fn reason(self) -> &'static str {
        match self {
            Self::RateLimited => "rate limited: too many requests from your address",
            Self::TooManyFromAddress => "too many connections from your address",
            Self::AtCapacity => "relay at capacity: try again later",
            Self::TooManySessionsFromAddress => "too many sessions from your address",
            Self::TooManyRegistrationsFromAddress => "too many registrations from your address",
            Self::TooManyHandshakes => "too many handshakes in progress",
            Self::TooManySessionsOnConnection => "too many sessions on this connection",
        }
    }
}

/// The relay's admission state, shared by every connection.
pub(crate) struct Admission {
    new_connections: AddressRate,
    new_sessions: AddressRate,
    registrations: AddressRate,
    /// Ranges many people share, and how much more each of their addresses gets.
    shared_addresses: SharedAddresses,
    /// `sessions.per_connection`.
    max_sessions_per_connection: Option<NonZeroU32>,
    per_ip: DashMap<IpKey, u32>,
    max_per_ip: Option<NonZeroU32>,
    connections: AtomicU32,
    /// Connections whose handshake has completed: what `connections.max` caps.
    established: AtomicU32,
    /// QUIC handshakes in progress, capped by `connections.max_handshakes`.
    handshakes: AtomicU32,
    max_handshakes: Option<NonZeroU32>,
    /// TCP handshakes in progress, capped by `connections.max_tcp_handshakes`...
    tcp_handshakes: AtomicU32,
    max_tcp_handshakes: Option<NonZeroU32>,
    /// ... and per address by `connections.tcp_handshakes_per_ip`.
    tcp_handshakes_per_ip: Arc<HeldPerKey<IpKey>>,
    /// Connections hosts on a stream transport were asked to open (`Dial`), by
    /// the hosts' addresses: see [`Admission::expect_dial_back`].
    dial_backs: Arc<DashMap<IpKey, DialBacks>>,
    /// `connections.max`, counted once a handshake completes.
    max_connections: Option<NonZeroU32>,
    sessions: AtomicU32,
    max_sessions: Option<NonZeroU32>,
    buffer_used: AtomicU64,
    buffer_budget: Option<NonZeroU64>,
    session_buffer: u64,
    sessions_per_ip: Arc<HeldPerKey<IpKey>>,
    sessions_per_ip_and_host: Arc<HeldPerKey<(IpKey, HostId)>>,
    registrations_per_ip: Arc<HeldPerKey<IpKey>>,
    connections_per_48: Arc<HeldPerKey<IpKey>>,
    sessions_per_48: Arc<HeldPerKey<IpKey>>,
    registrations_per_48: Arc<HeldPerKey<IpKey>>,
}

impl Admission {
    pub(crate) fn new(limits: &Limits) -> Self {
        let c = &limits.connections;
        let s = &limits.sessions;
        let r = &limits.registrations;
        let shared = &limits.shared_addresses;
        let rate = |per_s, burst| AddressRate::new(per_s, burst, shared);
        Self {
            new_connections: rate(c.new_per_ip_per_s, c.new_per_ip_burst),
            new_sessions: rate(s.new_per_ip_per_s, s.new_per_ip_burst),
            registrations: rate(r.per_ip_per_s, r.per_ip_burst),
            shared_addresses: shared.clone(),
            max_sessions_per_connection: NonZeroU32::new(s.per_connection),
            per_ip: DashMap::new(),
            max_per_ip: NonZeroU32::new(c.per_ip),
            connections: AtomicU32::new(0),
            established: AtomicU32::new(0),
            handshakes: AtomicU32::new(0),
            max_handshakes: NonZeroU32::new(c.max_handshakes),
            tcp_handshakes: AtomicU32::new(0),
            max_tcp_handshakes: NonZeroU32::new(c.max_tcp_handshakes),
            tcp_handshakes_per_ip: HeldPerKey::new(c.tcp_handshakes_per_ip),
            dial_backs: Arc::new(DashMap::new()),
            max_connections: NonZeroU32::new(c.max),
            sessions: AtomicU32::new(0),
            max_sessions: NonZeroU32::new(s.max),
            buffer_used: AtomicU64::new(0),
            buffer_budget: NonZeroU64::new(s.buffer_budget.0),
            session_buffer: limits.session_buffer(),
            sessions_per_ip: HeldPerKey::new(s.per_ip),
            sessions_per_ip_and_host: HeldPerKey::new(s.per_ip_per_host),
            registrations_per_ip: HeldPerKey::new(r.per_ip),
            connections_per_48: HeldPerKey::new(c.per_48),
            sessions_per_48: HeldPerKey::new(s.per_48),
            registrations_per_48: HeldPerKey::new(r.per_48),
        }
    }

    /// Checks a new connection attempt from `addr` at `door` against the per-address
    /// limits and the door's handshakes in progress, and counts it as a handshake.
    /// The relay-wide cap counts it only once its handshake completes
    /// ([`ConnectionPermit::establish`]): a flood of handshakes that never finish
    /// cannot fill it.
    pub(crate) fn admit_connection(
        self: &Arc<Self>,
        addr: SocketAddr,
        door: Door,
    ) -> Result<ConnectionPermit, Refusal> {
        let key = IpKey::of(addr);
        let factor = self.shared_addresses.factor_for(addr.ip());
        let (counter, max) = self.handshake_count(door);
        let handshakes = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
            under(max, open).then_some(open + 1)
        });
        if handshakes.is_err() {
            return Err(Refusal::TooManyHandshakes);
        }
        // From here on the permit (or this guard) gives the handshake back.
        let handshake = HandshakeGuard(counter);
        // A host answering a `Dial` the relay sent it is let in past its address's
        // rate and caps, as many times as it has `Dial`s outstanding: a player
        // asking for sessions must not spend the host's own allowance.
        let dial_back = match door {
            Door::Quic => None,
            Door::Tcp => self.arriving_dial_back(key),
        };
        let (handshake_of_address, network) = if dial_back.is_some() {
            (None, hold_network(&self.connections_per_48, addr).flatten())
        } else {
            let handshake_of_address = match door {
                Door::Quic => None,
                Door::Tcp => Some(
                    self.tcp_handshakes_per_ip
                        .try_hold(key, factor)
                        .ok_or(Refusal::TooManyFromAddress)?,
                ),
            };
            self.new_connections.check(key, factor, 1)?;
            let network =
                hold_network(&self.connections_per_48, addr).ok_or(Refusal::TooManyFromAddress)?;
            (handshake_of_address, network)
        };
        {
            let mut count = self.per_ip.entry(key).or_insert(0);
            if dial_back.is_none() && !under(scaled(self.max_per_ip, factor), *count) {
                return Err(Refusal::TooManyFromAddress);
            }
            *count += 1;
        }
        self.connections.fetch_add(1, Ordering::Relaxed);
        std::mem::forget(handshake);
        Ok(ConnectionPermit {
            admission: self.clone(),
            key,
            door,
            network: std::sync::Mutex::new(network),
            handshake_of_address: std::sync::Mutex::new(handshake_of_address),
            dial_back: std::sync::Mutex::new(dial_back),
            sessions: Arc::new(AtomicU32::new(0)),
            handshaking: AtomicBool::new(true),
            established: AtomicBool::new(false),
            released: AtomicBool::new(false),
        })
    }

    /// Counts a connection the host at `host` is asked to open for a session (a
    /// `Dial`), until the returned value is dropped: while it lives, one connection
    /// from that address in progress may come in past the address's rate and caps.
    pub(crate) fn expect_dial_back(self: &Arc<Self>, host: SocketAddr) -> ExpectedDialBack {
        let key = IpKey::of(host);
        let refused = {
            let mut entry = self.dial_backs.entry(key).or_default();
            entry.expected += 1;
            entry.refused.clone()
        };
        ExpectedDialBack {
            dial_backs: self.dial_backs.clone(),
            key,
            refused,
        }
    }

    /// A connection from `addr` was refused at the door: if a host there was
    /// asked to open one, one of its waiting sessions learns it now rather than at
    /// its deadline.
    pub(crate) fn refused_at_the_door(&self, addr: SocketAddr) {
        if let Some(entry) = self.dial_backs.get(&IpKey::of(addr)) {
            if entry.expected > 0 {
                entry.refused.notify_one();
            }
        }
    }

    /// One place among the dial-backs expected from `key`, if one is free.
    fn arriving_dial_back(&self, key: IpKey) -> Option<ArrivingDialBack> {
        let mut entry = self.dial_backs.get_mut(&key)?;
        if entry.arriving >= entry.expected {
            return None;
        }
        entry.arriving += 1;
        Some(ArrivingDialBack {
            dial_backs: self.dial_backs.clone(),
            key,
        })
    }

    /// Handshakes in progress now at `door`.
    pub(crate) fn handshakes_in_flight(&self, door: Door) -> u32 {
        self.handshake_count(door).0.load(Ordering::Relaxed)
    }

    /// The count of `door`'s handshakes in progress, and its cap.
    fn handshake_count(&self, door: Door) -> (&AtomicU32, Option<NonZeroU32>) {
        match door {
            Door::Quic => (&self.handshakes, self.max_handshakes),
            Door::Tcp => (&self.tcp_handshakes, self.max_tcp_handshakes),
        }
    }

    /// Counts one more session from the player at `addr` to `host_id` against the
    /// per-address caps; the places are held until the returned value is dropped.
    pub(crate) fn hold_session(
        &self,
        addr: SocketAddr,
        host_id: &HostId,
    ) -> Result<SessionPlaces, Refusal> {
        let key = IpKey::of(addr);
        let factor = self.shared_addresses.factor_for(addr.ip());
        let per_address = self
            .sessions_per_ip
            .try_hold(key, factor)
            .ok_or(Refusal::TooManySessionsFromAddress)?;
        let per_host = self
            .sessions_per_ip_and_host
            .try_hold((key, *host_id), factor)
            .ok_or(Refusal::TooManySessionsFromAddress)?;
        let per_network =
            hold_network(&self.sessions_per_48, addr).ok_or(Refusal::TooManySessionsFromAddress)?;
        Ok(SessionPlaces {
            _per_address: per_address,
            _per_host: per_host,
            _per_network: per_network,
        })
    }

    /// Counts one more registration from `addr` against the per-address caps, held
    /// until the returned value is dropped.
    pub(crate) fn hold_registration(
        &self,
        addr: SocketAddr,
    ) -> Result<RegistrationPlaces, Refusal> {
        let factor = self.shared_addresses.factor_for(addr.ip());
        let per_address = self
            .registrations_per_ip
            .try_hold(IpKey::of(addr), factor)
            .ok_or(Refusal::TooManyRegistrationsFromAddress)?;
        let per_network = hold_network(&self.registrations_per_48, addr)
            .ok_or(Refusal::TooManyRegistrationsFromAddress)?;
        Ok(RegistrationPlaces {
            _per_address: per_address,
            _per_network: per_network,
        })
    }

    /// Checks one more session request from `addr` against its rate.
    pub(crate) fn check_session_rate(&self, addr: SocketAddr) -> Result<(), Refusal> {
        let factor = self.shared_addresses.factor_for(addr.ip());
        self.new_sessions.check(IpKey::of(addr), factor, 1)
    }

    /// Checks one more registration attempt from `addr`; `cost` is 2 for an attempt
    /// whose proof failed, so guessing is twice as slow as registering.
    pub(crate) fn check_registration_rate(
        &self,
        addr: SocketAddr,
        cost: u32,
    ) -> Result<(), Refusal> {
        let factor = self.shared_addresses.factor_for(addr.ip());
        self.registrations.check(IpKey::of(addr), factor, cost)
    }

    /// Reserves one session's buffers from the budget and one slot of the session cap.
    pub(crate) fn reserve_session(self: &Arc<Self>) -> Result<SessionPermit, Refusal> {
        let reserved = self
            .sessions
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                under(self.max_sessions, open).then_some(open + 1)
            });
        if reserved.is_err() {
            return Err(Refusal::AtCapacity);
        }
        let bytes = self.session_buffer;
        let budgeted = self
            .buffer_used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                let after = used.checked_add(bytes)?;
                self.buffer_budget
                    .is_none_or(|budget| after <= budget.get())
                    .then_some(after)
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
    pub(crate) fn buffer_in_use(&self) -> u64 {
        self.buffer_used.load(Ordering::Relaxed)
    }

    /// Connections holding a permit.
    pub(crate) fn open_connections(&self) -> u32 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Forgets rate-limiter state that has refilled completely, so the maps hold
    /// only addresses seen recently.
    pub(crate) fn forget_idle_addresses(&self) {
        for limiter in [
            &self.new_connections,
            &self.new_sessions,
            &self.registrations,
        ]
        .into_iter()
        .flat_map(|rate| [&rate.plain, &rate.shared])
        .flatten()
        {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// `max` times `factor` (no cap stays none).
fn scaled(max: Option<NonZeroU32>, factor: u32) -> Option<NonZeroU32> {
    max.map(|max| max.saturating_mul(NonZeroU32::new(factor).unwrap_or(NonZeroU32::MIN)))
}

/// A per-address rate: one token bucket per address, and one `factor` times as
/// large and fast for addresses in shared ranges.
struct AddressRate {
    plain: Option<DefaultKeyedRateLimiter<IpKey>>,
    shared: Option<DefaultKeyedRateLimiter<IpKey>>,
}

impl AddressRate {
    fn new(per_s: u32, burst: u32, shared: &SharedAddresses) -> Self {
        let factor = shared.factor.max(1);
        Self {
            plain: keyed(per_s, burst),
            shared: (!shared.ranges.is_empty())
                .then(|| keyed(per_s.saturating_mul(factor), burst.saturating_mul(factor)))
                .flatten(),
        }
    }

    /// Takes `cost` tokens for `key`, from the shared buckets when `factor` > 1.
    fn check(&self, key: IpKey, factor: u32, cost: u32) -> Result<(), Refusal> {
        let limiter = if factor > 1 {
            &self.shared
        } else {
            &self.plain
        };
        let (Some(limiter), Some(cost)) = (limiter, NonZeroU32::new(cost)) else {
            return Ok(());
        };
        match limiter.check_key_n(&key, cost) {
            Ok(Ok(())) => Ok(()),
            // Over the burst size counts as limited too.
            Ok(Err(_)) | Err(_) => Err(Refusal::RateLimited),
        }
    }
}

/// Whether `count` is below `max`: one more fits. Every cap compares this way, so
/// each admits exactly its maximum; `None` is no cap.
fn under(max: Option<NonZeroU32>, count: u32) -> bool {
    max.is_none_or(|max| count < max.get())
}

/// How many of something each key holds at once, under a cap (none when the
/// configuration says 0).
pub(crate) struct HeldPerKey<K: Eq + Hash> {
    held: DashMap<K, u32>,
    max: Option<NonZeroU32>,
}

impl<K: Eq + Hash + Clone> HeldPerKey<K> {
    fn new(max: u32) -> Arc<Self> {
        let max = NonZeroU32::new(max);
        Arc::new(Self {
            held: DashMap::new(),
            max,
        })
    }

    /// One more for `key`, unless it holds the most it may: the cap times `factor`
    /// (see [`SharedAddresses`]).
    fn try_hold(self: &Arc<Self>, key: K, factor: u32) -> Option<Held<K>> {
        if self.max.is_none() {
            return Some(Held { from: None, key });
        }
        let mut count = self.held.entry(key.clone()).or_insert(0);
        if !under(scaled(self.max, factor), *count) {
            return None;
        }
        *count += 1;
        Some(Held {
            from: Some(self.clone()),
            key,
        })
    }
}

/// One place held under a [`HeldPerKey`] cap, given back when dropped.
pub(crate) struct Held<K: Eq + Hash> {
    from: Option<Arc<HeldPerKey<K>>>,
    key: K,
}

impl<K: Eq + Hash> Drop for Held<K> {
    fn drop(&mut self) {
        if let Some(from) = &self.from {
            from.held.remove_if_mut(&self.key, |_, count| {
                *count = count.saturating_sub(1);
                *count == 0
            });
        }
    }
}

/// A session's places under the per-address caps.
pub(crate) struct SessionPlaces {
    _per_address: Held<IpKey>,
    _per_host: Held<(IpKey, HostId)>,
    _per_network: Option<Held<IpKey>>,
}

/// A registration's places under the per-address caps.
pub(crate) struct RegistrationPlaces {
    _per_address: Held<IpKey>,
    _per_network: Option<Held<IpKey>>,
}

/// A place for `addr`'s IPv6 /48 under `cap`: `Some(None)` for IPv4 (no such
/// level), `None` when the /48 holds the most it may.
fn hold_network(cap: &Arc<HeldPerKey<IpKey>>, addr: SocketAddr) -> Option<Option<Held<IpKey>>> {
    match IpKey::network48(addr) {
        None => Some(None),
        Some(network) => cap.try_hold(network, 1).map(Some),
    }
}

/// The dial-backs of one address: connections its hosts were asked to open, and
/// those let in for them and not yet past their first message.
#[derive(Default)]
struct DialBacks {
    expected: u32,
    arriving: u32,
    /// Told when a connection from the address is refused at the door.
    refused: Arc<tokio::sync::Notify>,
}

/// Removes `key`'s entry once it counts nothing.
fn forget_if_unused(dial_backs: &DashMap<IpKey, DialBacks>, key: &IpKey) {
    dial_backs.remove_if(key, |_, entry| entry.expected == 0 && entry.arriving == 0);
}

/// A connection a host is expected to open for a session; see
/// [`Admission::expect_dial_back`].
pub(crate) struct ExpectedDialBack {
    dial_backs: Arc<DashMap<IpKey, DialBacks>>,
    key: IpKey,
    refused: Arc<tokio::sync::Notify>,
}

impl ExpectedDialBack {
    /// Resolves when a connection from the host's address is refused at the door
    /// while this one is expected.
    pub(crate) async fn refused(&self) {
        self.refused.notified().await;
    }
}

impl Drop for ExpectedDialBack {
    fn drop(&mut self) {
        if let Some(mut entry) = self.dial_backs.get_mut(&self.key) {
            entry.expected = entry.expected.saturating_sub(1);
        }
        forget_if_unused(&self.dial_backs, &self.key);
    }
}

/// A connection let in as a dial-back, until its first message is read.
pub(crate) struct ArrivingDialBack {
    dial_backs: Arc<DashMap<IpKey, DialBacks>>,
    key: IpKey,
}

impl Drop for ArrivingDialBack {
    fn drop(&mut self) {
        if let Some(mut entry) = self.dial_backs.get_mut(&self.key) {
            entry.arriving = entry.arriving.saturating_sub(1);
        }
        forget_if_unused(&self.dial_backs, &self.key);
    }
}

/// Gives a counted handshake back unless forgotten.
struct HandshakeGuard<'a>(&'a AtomicU32);

impl Drop for HandshakeGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Where an established connection stands against `connections.max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    /// Within the cap.
    Within,
    /// Beyond the cap, within its headroom: it may register, nothing more.
    Probation,
    /// Beyond the cap and its headroom: it is closed.
    Full,
}

/// Holds one connection's place in the counts until dropped or released.
pub(crate) struct ConnectionPermit {
    admission: Arc<Admission>,
    key: IpKey,
    door: Door,
    /// Its place under its IPv6 /48's cap; taken when released.
    network: std::sync::Mutex<Option<Held<IpKey>>>,
    /// Its place among its address's TCP handshakes; taken when the handshake ends.
    handshake_of_address: std::sync::Mutex<Option<Held<IpKey>>>,
    /// Its place among the dial-backs expected from its address, if it came in as
    /// one; taken once its first message is read.
    dial_back: std::sync::Mutex<Option<ArrivingDialBack>>,
    /// Player sessions open on the connection, capped by `sessions.per_connection`.
    sessions: Arc<AtomicU32>,
    handshaking: AtomicBool,
    established: AtomicBool,
    released: AtomicBool,
}

impl ConnectionPermit {
    /// The handshake completed: the connection now counts against `connections.max`
    /// instead of the handshakes in progress. Says where that puts it.
    pub(crate) fn establish(&self) -> Place {
        let admission = &self.admission;
        self.end_handshake();
        let established = if self.established.swap(true, Ordering::AcqRel) {
            admission.established.load(Ordering::Acquire)
        } else {
            admission.established.fetch_add(1, Ordering::AcqRel) + 1
        };
        let Some(max) = admission.max_connections else {
            return Place::Within;
        };
        // Beyond the cap, as many as `connections.max_handshakes` may wait to register.
        let headroom = admission.max_handshakes.map_or(0, NonZeroU32::get);
        match established.checked_sub(max.get()) {
            None | Some(0) => Place::Within,
            Some(over) if over <= headroom => Place::Probation,
            Some(_) => Place::Full,
        }
    }

    /// Gives the place back now (the connection is being shed and will be gone in a
    /// moment); dropping the permit later does nothing more.
    pub(crate) fn release(&self) {
        if self.released.swap(true, Ordering::AcqRel) {
            return;
        }
        let admission = &self.admission;
        self.end_handshake();
        self.end_dial_back();
        if self.established.swap(false, Ordering::AcqRel) {
            admission.established.fetch_sub(1, Ordering::AcqRel);
        }
        admission.connections.fetch_sub(1, Ordering::Relaxed);
        admission.per_ip.remove_if_mut(&self.key, |_, count| {
            *count = count.saturating_sub(1);
            *count == 0
        });
        drop(
            self.network
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take(),
        );
    }
}

impl ConnectionPermit {
    /// Counts one more player session on this connection, until the returned value
    /// is dropped, unless it holds `sessions.per_connection` already.
    pub(crate) fn hold_session(&self) -> Result<ConnectionSession, Refusal> {
        let max = self.admission.max_sessions_per_connection;
        self.sessions
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                under(max, open).then_some(open + 1)
            })
            .map_err(|_| Refusal::TooManySessionsOnConnection)?;
        Ok(ConnectionSession(self.sessions.clone()))
    }

    /// The connection's first message is read: if it came in as a dial-back, its
    /// place among them is free for the next.
    pub(crate) fn end_dial_back(&self) {
        drop(
            self.dial_back
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take(),
        );
    }

    /// Gives the handshake's places back, once.
    fn end_handshake(&self) {
        if self.handshaking.swap(false, Ordering::AcqRel) {
            let (counter, _) = self.admission.handshake_count(self.door);
            counter.fetch_sub(1, Ordering::AcqRel);
            drop(
                self.handshake_of_address
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .take(),
            );
        }
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.release();
    }
}

/// One session's place on its player connection, given back when dropped.
pub(crate) struct ConnectionSession(Arc<AtomicU32>);

impl Drop for ConnectionSession {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::units::ByteSize;
    use std::time::Duration;

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
    fn ipv6_networks_are_their_48_and_ipv4_has_none() {
        assert_eq!(
            IpKey::network48(addr("[2001:db8:1:2::1]:1")),
            IpKey::network48(addr("[2001:db8:1:ffff::9]:2"))
        );
        assert_ne!(
            IpKey::network48(addr("[2001:db8:1::1]:1")),
            IpKey::network48(addr("[2001:db8:2::1]:1"))
        );
        assert_eq!(IpKey::network48(addr("192.0.2.1:1")), None);
        assert_eq!(IpKey::network48(addr("[::ffff:192.0.2.1]:1")), None);
        // A /48 never reads as the /64 at its start.
        assert_ne!(
            IpKey::network48(addr("[2001:db8:1::1]:1")),
            Some(IpKey::of(addr("[2001:db8:1::1]:1")))
        );
    }

    /// Limits with only the per-/64 and per-/48 caps on: `per_ip` each, `per_48` for
    /// the /48.
    fn network_limits(per_ip: u32, per_48: u32) -> Limits {
        let mut limits = Limits::unlimited();
        limits.connections.per_ip = per_ip;
        limits.connections.per_48 = per_48;
        limits.sessions.per_ip = per_ip;
        limits.sessions.per_48 = per_48;
        limits.registrations.per_ip = per_ip;
        limits.registrations.per_48 = per_48;
        limits
    }

    #[test]
    fn rotating_64s_within_one_48_stops_at_the_networks_cap() {
        let admission = Arc::new(Admission::new(&network_limits(2, 5)));
        // Three /64s of one /48, two each: the sixth is one more than the /48 holds,
        // though its own /64 has room.
        let in_48 = |i: u32| addr(&format!("[2001:db8:1:{i:x}::1]:1"));
        let mut held = Vec::new();
        for i in 0..5 {
            held.push(
                admission
                    .admit_connection(in_48(i / 2), Door::Quic)
                    .expect("within both caps"),
            );
        }
        assert!(matches!(
            admission.admit_connection(in_48(2), Door::Quic),
            Err(Refusal::TooManyFromAddress)
        ));
        // Another /48 is not affected, and a place given back is free again.
        assert!(admission
            .admit_connection(addr("[2001:db8:2::1]:1"), Door::Quic)
            .is_ok());
        drop(held.pop());
        assert!(admission.admit_connection(in_48(2), Door::Quic).is_ok());

        let host = HostId::from_bytes([7; 32]);
        let mut sessions = Vec::new();
        for i in 0..5 {
            sessions.push(admission.hold_session(in_48(i / 2), &host).expect("fits"));
        }
        assert!(matches!(
            admission.hold_session(in_48(2), &host),
            Err(Refusal::TooManySessionsFromAddress)
        ));
        let mut registrations = Vec::new();
        for i in 0..5 {
            registrations.push(admission.hold_registration(in_48(i / 2)).expect("fits"));
        }
        assert!(matches!(
            admission.hold_registration(in_48(2)),
            Err(Refusal::TooManyRegistrationsFromAddress)
        ));
        drop(registrations.pop());
        assert!(admission.hold_registration(in_48(2)).is_ok());
    }

    #[test]
    fn ipv4_addresses_meet_no_network_cap() {
        let admission = Arc::new(Admission::new(&network_limits(1, 1)));
        let held: Vec<_> = (1..=4)
            .map(|i| {
                admission
                    .admit_connection(addr(&format!("192.0.2.{i}:1")), Door::Quic)
                    .expect("one each")
            })
            .collect();
        assert_eq!(held.len(), 4);
    }

    #[test]
    fn connections_per_address_stop_at_the_maximum() {
        let mut limits = Limits::unlimited();
        limits.connections.per_ip = 3;
        let admission = Arc::new(Admission::new(&limits));
        let a = addr("192.0.2.1:1");
        let permits: Vec<_> = (0..3)
            .map(|_| {
                admission
                    .admit_connection(a, Door::Quic)
                    .expect("within the limit")
            })
            .collect();
        assert_eq!(
            admission.admit_connection(a, Door::Quic).err(),
            Some(Refusal::TooManyFromAddress)
        );
        // Another address is not affected.
        let other = admission.admit_connection(addr("192.0.2.2:1"), Door::Quic);
        assert!(other.is_ok());
        // Releasing twice gives back one place, not two.
        permits[0].release();
        permits[0].release();
        let again = admission
            .admit_connection(a, Door::Quic)
            .expect("a place was freed");
        assert_eq!(
            admission.admit_connection(a, Door::Quic).err(),
            Some(Refusal::TooManyFromAddress)
        );
        drop(again);
        drop(permits);
        drop(other);
        assert_eq!(admission.open_connections(), 0);
        assert!(admission.per_ip.is_empty(), "no address kept once unused");
    }

    #[test]
    fn each_door_counts_its_own_handshakes() {
        let mut limits = Limits::unlimited();
        limits.connections.max_handshakes = 2;
        limits.connections.max_tcp_handshakes = 3;
        limits.connections.tcp_handshakes_per_ip = 2;
        let admission = Arc::new(Admission::new(&limits));
        let a = addr("192.0.2.1:1");
        // One address holds its two TCP handshakes, not three ...
        let tcp: Vec<_> = (0..2)
            .map(|_| admission.admit_connection(a, Door::Tcp).expect("fits"))
            .collect();
        assert_eq!(
            admission.admit_connection(a, Door::Tcp).err(),
            Some(Refusal::TooManyFromAddress)
        );
        // ... another takes the door's last place ...
        let other = admission
            .admit_connection(addr("192.0.2.2:1"), Door::Tcp)
            .expect("the door's third");
        assert_eq!(
            admission
                .admit_connection(addr("192.0.2.3:1"), Door::Tcp)
                .err(),
            Some(Refusal::TooManyHandshakes)
        );
        // ... and QUIC's door is untouched by all of it.
        let quic: Vec<_> = (0..2)
            .map(|_| {
                admission
                    .admit_connection(a, Door::Quic)
                    .expect("QUIC's own")
            })
            .collect();
        assert_eq!(
            admission.admit_connection(a, Door::Quic).err(),
            Some(Refusal::TooManyHandshakes)
        );
        assert_eq!(admission.handshakes_in_flight(Door::Quic), 2);
        assert_eq!(admission.handshakes_in_flight(Door::Tcp), 3);
        // A completed handshake gives its places back, the address's included.
        assert_eq!(tcp[0].establish(), Place::Within);
        assert_eq!(admission.handshakes_in_flight(Door::Tcp), 2);
        let again = admission
            .admit_connection(a, Door::Tcp)
            .expect("the address's place is free again");
        drop((tcp, other, quic, again));
        assert_eq!(admission.handshakes_in_flight(Door::Tcp), 0);
        assert_eq!(admission.handshakes_in_flight(Door::Quic), 0);
        assert!(admission.tcp_handshakes_per_ip.held.is_empty());
    }

    #[tokio::test]
    async fn a_host_answering_its_dials_comes_in_past_its_addresss_limits() {
        let mut limits = Limits::unlimited();
        limits.connections.per_ip = 1;
        limits.connections.new_per_ip_per_s = 1;
        limits.connections.new_per_ip_burst = 1;
        limits.connections.tcp_handshakes_per_ip = 1;
        let admission = Arc::new(Admission::new(&limits));
        let host = addr("192.0.2.7:1");
        let registration = admission.admit_connection(host, Door::Tcp).expect("first");
        assert!(admission.admit_connection(host, Door::Tcp).is_err());
        // Two dials outstanding: two connections past every per-address limit.
        let dials = [
            admission.expect_dial_back(host),
            admission.expect_dial_back(host),
        ];
        let first = admission.admit_connection(host, Door::Tcp).expect("dial 1");
        let second = admission.admit_connection(host, Door::Tcp).expect("dial 2");
        assert!(
            admission.admit_connection(host, Door::Tcp).is_err(),
            "a third"
        );
        // Another address gets nothing from the host's dials, nor does QUIC.
        assert!(admission
            .admit_connection(addr("192.0.2.8:1"), Door::Tcp)
            .is_ok());
        assert!(admission.admit_connection(host, Door::Quic).is_err());
        // A dial-back past its first message frees its place for the next.
        first.end_dial_back();
        let third = admission.admit_connection(host, Door::Tcp).expect("dial 3");
        // A refusal at the door wakes a session that waits for its dial-back.
        let refused = dials[0].refused();
        admission.refused_at_the_door(host);
        tokio::time::timeout(Duration::from_secs(1), refused)
            .await
            .expect("told at once");
        // A dial-back still on its way keeps its place after the session that
        // expected it gave up: the host's next Dial gets no second one meanwhile.
        drop(dials);
        let next = admission.expect_dial_back(host);
        assert!(
            admission.admit_connection(host, Door::Tcp).is_err(),
            "two on their way for one Dial"
        );
        drop((second, third));
        let fourth = admission
            .admit_connection(host, Door::Tcp)
            .expect("its place");
        drop((next, first, fourth, registration));
        assert!(admission.dial_backs.is_empty(), "nothing kept once unused");
        assert!(
            admission.admit_connection(host, Door::Tcp).is_err(),
            "back to its limits"
        );
    }

    #[test]
    fn shared_ranges_scale_the_address_caps_but_not_the_connections() {
        let mut limits = Limits::unlimited();
        limits.connections.per_ip = 2;
        limits.connections.new_per_ip_per_s = 1;
        limits.connections.new_per_ip_burst = 2;
        limits.sessions.per_ip_per_host = 1;
        limits.sessions.per_connection = 2;
        limits.shared_addresses.ranges = vec!["198.51.100.0/24".parse().expect("range")];
        limits.shared_addresses.factor = 3;
        let admission = Arc::new(Admission::new(&limits));
        let carrier = addr("198.51.100.9:1");
        let home = addr("192.0.2.9:1");
        let at_carrier: Vec<_> = (0..6)
            .map(|_| {
                admission
                    .admit_connection(carrier, Door::Quic)
                    .expect("scaled")
            })
            .collect();
        assert!(
            admission.admit_connection(carrier, Door::Quic).is_err(),
            "a 7th"
        );
        let at_home: Vec<_> = (0..2)
            .map(|_| admission.admit_connection(home, Door::Quic).expect("plain"))
            .collect();
        assert!(
            admission.admit_connection(home, Door::Quic).is_err(),
            "a 3rd"
        );
        let host = HostId::from_bytes([3; 32]);
        let sessions: Vec<_> = (0..3)
            .map(|_| admission.hold_session(carrier, &host).expect("scaled"))
            .collect();
        assert!(admission.hold_session(carrier, &host).is_err());
        assert!(admission.hold_session(home, &host).is_ok());
        // One connection, wherever it is: two sessions, not six.
        let on_one: Vec<_> = (0..2)
            .map(|_| at_carrier[0].hold_session().expect("within"))
            .collect();
        assert_eq!(
            at_carrier[0].hold_session().err(),
            Some(Refusal::TooManySessionsOnConnection)
        );
        drop(on_one);
        assert!(at_carrier[0].hold_session().is_ok());
        drop((at_carrier, at_home, sessions));
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
            match admission.admit_connection(addr("192.0.2.1:1"), Door::Quic) {
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
        assert!(admission
            .admit_connection(addr("192.0.2.9:1"), Door::Quic)
            .is_ok());
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

    /// Past `connections.max`, up to `connections.max_handshakes` more connections
    /// wait on probation (to register and shed an idle host); the next is full.
    /// Establishing a connection again counts it once.
    #[test]
    fn past_the_cap_connections_wait_on_probation_then_are_full() {
        let mut limits = Limits::unlimited();
        limits.connections.max = 2;
        limits.connections.max_handshakes = 2;
        let admission = Arc::new(Admission::new(&limits));
        let places: Vec<_> = (1..=5)
            .map(|i| {
                let permit = admission
                    .admit_connection(addr(&format!("192.0.2.{i}:1")), Door::Quic)
                    .expect("a handshake place");
                let place = permit.establish();
                (permit, place)
            })
            .collect();
        let got: Vec<Place> = places.iter().map(|(_, place)| *place).collect();
        assert_eq!(
            got,
            [
                Place::Within,
                Place::Within,
                Place::Probation,
                Place::Probation,
                Place::Full
            ]
        );
        assert_eq!(admission.open_connections(), 5);
        assert_eq!(places[0].0.establish(), Place::Full, "five, not six");
        drop(places);
        assert_eq!(admission.open_connections(), 0);
    }

    #[test]
    fn session_requests_are_rate_limited_per_address() {
        let mut limits = Limits::unlimited();
        limits.sessions.new_per_ip_per_s = 1;
        limits.sessions.new_per_ip_burst = 2;
        let admission = Admission::new(&limits);
        let a = addr("192.0.2.1:1");
        assert!(admission.check_session_rate(a).is_ok());
        assert!(admission.check_session_rate(a).is_ok());
        assert_eq!(admission.check_session_rate(a), Err(Refusal::RateLimited));
        assert!(admission.check_session_rate(addr("192.0.2.2:1")).is_ok());
    }

    /// An address whose bucket has refilled is forgotten; one still owed is not.
    #[test]
    fn addresses_whose_buckets_refilled_are_forgotten() {
        let mut limits = Limits::unlimited();
        // A session token comes back within a microsecond; a registration's in a second.
        limits.sessions.new_per_ip_per_s = 1_000_000;
        limits.sessions.new_per_ip_burst = 1;
        limits.registrations.per_ip_per_s = 1;
        limits.registrations.per_ip_burst = 10;
        let admission = Admission::new(&limits);
        let a = addr("192.0.2.1:1");
        assert!(admission.check_session_rate(a).is_ok());
        assert!(admission.check_registration_rate(a, 1).is_ok());
        let remembered = |rate: &AddressRate| rate.plain.as_ref().map_or(0, |r| r.len());
        assert_eq!(
            (
                remembered(&admission.new_sessions),
                remembered(&admission.registrations)
            ),
            (1, 1)
        );
        // A thousand times the session bucket's refill, a fiftieth of the other's.
        std::thread::sleep(Duration::from_millis(20));
        admission.forget_idle_addresses();
        assert_eq!(
            (
                remembered(&admission.new_sessions),
                remembered(&admission.registrations)
            ),
            (0, 1)
        );
    }

    /// What a refused peer reads is what the refusal says it is.
    #[test]
    fn each_refusal_tells_its_own_reason() {
        let all = [
            Refusal::RateLimited,
            Refusal::TooManyFromAddress,
            Refusal::AtCapacity,
            Refusal::TooManySessionsFromAddress,
            Refusal::TooManyRegistrationsFromAddress,
            Refusal::TooManyHandshakes,
            Refusal::TooManySessionsOnConnection,
        ];
        for refusal in all {
            assert_eq!(refusal.reason(), refusal.to_string());
        }
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
