//! Every limit the relay enforces, grouped as in the config file, with the defaults
//! of a public relay. Each limit is off when set to zero.
//!
//! Memory: a session holds at most `sessions.window` bytes in the relay's QUIC
//! receive buffer plus one chunk of at most [`MAX_CHUNK`] bytes in hand, per
//! direction; what the relay has written but the peer has not yet acknowledged is
//! bounded per connection by `connections.send_window`. Each session reserves
//! [`Limits::session_buffer`] bytes of `sessions.buffer_budget` while it runs; when
//! the reservation does not fit, the session is refused "at capacity" and running
//! sessions keep their throughput.
//!
//! A session's limits go by four names, one per stage:
//! - [`Limits`] is the file: [`ConnectionLimits`], [`RegistrationLimits`],
//!   [`SessionLimitsConfig`] (`[sessions]`; named apart from the protocol's
//!   `SessionLimits`), [`HostLimits`] and the tiers. Zero turns a limit off here,
//!   and only here.
//! - A `Tier` (`tiers.rs`) is what one host and its sessions run under, resolved
//!   from the file: a limit that is off is `None`.
//! - `blindrelay_protocol::SessionLimits` is what both ends of a session are told in
//!   `Connected` and `Incoming` (PROTOCOL.md section 7.5).
//! - `SpliceLimits` (`splice.rs`) is what the splice enforces for one session.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::policy::units::{ByteSize, Rate, Span};

/// Largest chunk the splice takes from quinn at once, and so the most a session
/// holds in hand per direction beyond its receive window.
pub const MAX_CHUNK: usize = 16 * 1024;

/// All limits (see the module documentation).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Limits {
    /// Connections of every kind.
    pub connections: ConnectionLimits,
    /// Host registrations.
    pub registrations: RegistrationLimits,
    /// Sessions, their buffers and their bandwidth.
    pub sessions: SessionLimitsConfig,
    /// Limits per registered host, over all of its sessions.
    pub hosts: HostLimits,
    /// `[shared_addresses]`: address ranges many people share (carrier-grade NAT),
    /// whose per-address caps and rates are scaled up.
    pub shared_addresses: SharedAddresses,
    /// `[tiers.NAME]`: named sets of per-session and per-host limits that differ
    /// from `[sessions]` and `[hosts]`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tiers: BTreeMap<String, TierConfig>,
    /// `[host_tiers]`: host id → tier name. Hosts not listed are in the default tier.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub host_tiers: BTreeMap<String, String>,
}

/// `[connections]`: limits on QUIC connections.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ConnectionLimits {
    /// Connections open at once. Near it, idle registrations are shed first.
    pub max: u32,
    /// Connections open at once from one IPv4 address or IPv6 /64.
    pub per_ip: u32,
    /// Connections open at once from one IPv6 /48: whoever holds a /48 holds 65,536
    /// /64s, and this keeps it from multiplying `per_ip` by that.
    pub per_48: u32,
    /// New connections per second from one IPv4 address or IPv6 /64.
    pub new_per_ip_per_s: u32,
    /// How many new connections one address may open in a burst.
    pub new_per_ip_burst: u32,
    /// A connection with no packets for this long is closed.
    pub idle_timeout: Span,
    /// A connection with neither a registration nor a session for this long is closed.
    pub unregistered_idle_timeout: Span,
    /// A new stream must deliver its first control message within this time.
    pub first_message_timeout: Span,
    /// Streams a player may have open at once on one connection. A connection gets
    /// this many once its first stream asks for a session; until then (and so for
    /// hosts, which only open their registration stream) at most 8.
    pub max_streams: u32,
    /// Bytes the relay may have sent on one connection without acknowledgement.
    pub send_window: ByteSize,
    /// TLS handshakes in progress at once; attempts beyond are dropped unanswered.
    /// Connections beyond `max` whose handshake completed may also stay this many,
    /// for `first_message_timeout`, to register (and shed an idle registration).
    pub max_handshakes: u32,
    /// A handshake not complete after this long is abandoned.
    pub handshake_timeout: Span,
    /// TLS handshakes (and, for WebSocket, the HTTP requests after them) in progress
    /// at once on the TCP listener. Apart from `max_handshakes`, which is QUIC's, so
    /// that sockets that stay silent cannot close the QUIC door, nor QUIC's flood the
    /// TCP one; connections beyond it are closed before any TLS.
    pub max_tcp_handshakes: u32,
    /// TLS handshakes in progress at once on the TCP listener from one IPv4 address
    /// or IPv6 /64: a few addresses must not hold `max_tcp_handshakes`.
    pub tcp_handshakes_per_ip: u32,
    /// A TCP connection must have sent its whole TLS ClientHello within this long.
    pub hello_timeout: Span,
    /// Handshakes in progress above which a client must first prove its address
    /// (QUIC Retry: one more round trip, no state on the relay). 0: always.
    pub retry_threshold: u32,
}

/// `[shared_addresses]`: ranges the operator knows to be carrier-grade NAT, where a
/// whole mobile network may share one IPv4 address. Their per-address caps and
/// rates (connections, handshakes, sessions, registrations) are `factor` times the
/// others'; the per-connection cap on sessions (`sessions.per_connection`) is not,
/// so one client behind such an address still gets no more than anyone else, and
/// an attacker there pays per connection. See docs/operations.md.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct SharedAddresses {
    /// The ranges, as CIDR prefixes (`"100.64.0.0/10"`, `"2001:db8::/32"`).
    pub ranges: Vec<ipnet::IpNet>,
    /// How many times the per-address caps and rates an address in them gets.
    pub factor: u32,
}

impl Default for SharedAddresses {
    fn default() -> Self {
        Self {
            ranges: Vec::new(),
            factor: 16,
        }
    }
}

impl SharedAddresses {
    /// The factor `ip`'s per-address limits are scaled by: 1 outside the ranges.
    pub(crate) fn factor_for(&self, ip: std::net::IpAddr) -> u32 {
        let ip = ip.to_canonical();
        if self.ranges.iter().any(|range| range.contains(&ip)) {
            self.factor.max(1)
        } else {
            1
        }
    }
}

/// `[registrations]`: limits on host registrations.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RegistrationLimits {
    /// Registration attempts per second from one address (a failed proof costs two).
    pub per_ip_per_s: u32,
    /// How many attempts one address may make in a burst.
    pub per_ip_burst: u32,
    /// Registrations held at once from one address: on an open relay anyone can
    /// make host ids, and each idle registration holds a connection.
    pub per_ip: u32,
    /// Registrations held at once from one IPv6 /48.
    pub per_48: u32,
}

/// `[sessions]`: limits on sessions.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct SessionLimitsConfig {
    /// Sessions open at once on the whole relay.
    pub max: u32,
    /// Bytes all session buffers together may hold.
    pub buffer_budget: ByteSize,
    /// QUIC receive window of each session stream: the relay's buffer per direction.
    pub window: ByteSize,
    /// New sessions per second asked for from one address.
    pub new_per_ip_per_s: u32,
    /// How many sessions one address may ask for in a burst.
    pub new_per_ip_burst: u32,
    /// Sessions one player address may hold open at once, to all hosts together:
    /// a few addresses must not hold the whole budget.
    pub per_ip: u32,
    /// Sessions one player address may hold open at once to one host: one address
    /// must not hold all of a host's `hosts.max_sessions`.
    pub per_ip_per_host: u32,
    /// Sessions one IPv6 /48 may hold open at once, to all hosts together.
    pub per_48: u32,
    /// Sessions one player connection (QUIC, or a WebTransport session) may hold
    /// open at once: what an address behind carrier-grade NAT, whose per-address
    /// caps are scaled up, still pays per client.
    pub per_connection: u32,
    /// Bandwidth of one session, each direction.
    pub rate: Rate,
    /// Bytes a session may send at once beyond its rate.
    pub burst: ByteSize,
    /// A session with no byte either way for this long is ended.
    pub idle_timeout: Span,
    /// A side that leaves the bytes forwarded to it unread this long ends the session.
    pub stall_timeout: Span,
    /// Longest a session may last.
    pub max_duration: Span,
    /// Most bytes a session may move in each direction.
    pub max_bytes: ByteSize,
    /// How long the relay waits for a host to take a new session stream.
    pub open_host_stream_timeout: Span,
}

/// `[hosts]`: limits per registered host.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct HostLimits {
    /// Sessions one host may have open at once.
    pub max_sessions: u32,
    /// Bandwidth of all of one host's sessions together, each direction.
    pub rate: Rate,
    /// Bytes a host's sessions may send at once beyond its rate.
    pub burst: ByteSize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max: 50_000,
            per_ip: 64,
            // Four /64s' worth: a home or an office network, not a provider's block.
            per_48: 256,
            new_per_ip_per_s: 20,
            new_per_ip_burst: 64,
            idle_timeout: Span(Duration::from_secs(30)),
            unregistered_idle_timeout: Span(Duration::from_secs(60)),
            first_message_timeout: Span(Duration::from_secs(10)),
            max_streams: 256,
            send_window: ByteSize(1 << 20),
            max_handshakes: 1024,
            handshake_timeout: Span(Duration::from_secs(10)),
            max_tcp_handshakes: 1024,
            tcp_handshakes_per_ip: 16,
            // A ClientHello is one or two packets: a client that has not sent it
            // within this has nothing to say.
            hello_timeout: Span(Duration::from_secs(2)),
            retry_threshold: 64,
        }
    }
}

impl Default for RegistrationLimits {
    fn default() -> Self {
        Self {
            per_ip_per_s: 2,
            per_ip_burst: 20,
            per_ip: 16,
            per_48: 64,
        }
    }
}

impl Default for SessionLimitsConfig {
    fn default() -> Self {
        Self {
            max: 10_000,
            buffer_budget: ByteSize(2 << 30),
            // 256 KiB per hop carries about 100 Mbit/s at 20 ms round trip between
            // relay and each end (4K remuxes), and on loopback it is where a
            // session's throughput stops growing with the window (64 KiB moved
            // about 25% less). Relays sized for far more sessions than bandwidth
            // set it lower: 16 KiB makes 100,000 sessions fit in 6.1 GiB.
            window: ByteSize(256 << 10),
            new_per_ip_per_s: 20,
            new_per_ip_burst: 64,
            per_ip: 64,
            per_ip_per_host: 16,
            per_48: 256,
            per_connection: 32,
            // Above Blu-ray remux bitrates; a free-tier cap would be "2Mbit".
            rate: Rate(100_000_000 / 8),
            burst: ByteSize(16 << 20),
            idle_timeout: Span(Duration::from_secs(600)),
            // Long enough for a paused player, short enough to free the slot.
            stall_timeout: Span(Duration::from_secs(300)),
            max_duration: Span(Duration::ZERO),
            max_bytes: ByteSize(0),
            open_host_stream_timeout: Span(Duration::from_secs(5)),
        }
    }
}

impl Default for HostLimits {
    fn default() -> Self {
        Self {
            max_sessions: 64,
            rate: Rate(0),
            burst: ByteSize(16 << 20),
        }
    }
}

impl Limits {
    /// No limits at all except the timeouts a relay cannot do without; for tests and
    /// benchmarks that need to see the relay's raw speed.
    pub fn unlimited() -> Self {
        let mut limits = Self::default();
        let c = &mut limits.connections;
        c.max = 0;
        c.per_ip = 0;
        c.per_48 = 0;
        c.new_per_ip_per_s = 0;
        c.unregistered_idle_timeout = Span(Duration::ZERO);
        c.max_handshakes = 0;
        c.max_tcp_handshakes = 0;
        c.tcp_handshakes_per_ip = 0;
        // No Retry round trip: tests and benchmarks measure the relay, not it.
        c.retry_threshold = u32::MAX;
        limits.registrations.per_ip_per_s = 0;
        limits.registrations.per_ip = 0;
        limits.registrations.per_48 = 0;
        let s = &mut limits.sessions;
        s.max = 0;
        s.buffer_budget = ByteSize(0);
        s.new_per_ip_per_s = 0;
        s.per_ip = 0;
        s.per_ip_per_host = 0;
        s.per_48 = 0;
        s.per_connection = 0;
        s.rate = Rate(0);
        s.idle_timeout = Span(Duration::ZERO);
        s.stall_timeout = Span(Duration::ZERO);
        limits.hosts.max_sessions = 0;
        limits
    }

    /// Bytes one session reserves from the buffer budget: its receive window and one
    /// chunk in hand, in each direction.
    pub fn session_buffer(&self) -> u64 {
        2 * (self.sessions.window.0 + MAX_CHUNK as u64)
    }

    /// Checks values that would make the relay unusable rather than merely strict.
    pub fn validate(&self) -> Result<(), LimitsError> {
        let window = self.sessions.window;
        if !(1024..=(1 << 30)).contains(&window.0) {
            return Err(LimitsError::WindowOutOfRange { window });
        }
        if self.connections.send_window.0 < 1024 {
            return Err(LimitsError::SendWindowTooSmall {
                send_window: self.connections.send_window,
            });
        }
        for (key, value) in [
            ("connections.idle_timeout", self.connections.idle_timeout),
            (
                "connections.handshake_timeout",
                self.connections.handshake_timeout,
            ),
            ("connections.hello_timeout", self.connections.hello_timeout),
            (
                "connections.first_message_timeout",
                self.connections.first_message_timeout,
            ),
            (
                "sessions.open_host_stream_timeout",
                self.sessions.open_host_stream_timeout,
            ),
        ] {
            if value.0.is_zero() {
                return Err(LimitsError::ZeroTimeout { key });
            }
        }
        if self.connections.max_streams == 0 {
            return Err(LimitsError::ZeroMaxStreams);
        }
        self.host_tiers()?;
        let budget = self.sessions.buffer_budget;
        if budget.0 != 0 && budget.0 < self.session_buffer() {
            return Err(LimitsError::BudgetBelowOneSession {
                budget,
                session: ByteSize(self.session_buffer()),
            });
        }
        Ok(())
    }
}

/// Why a set of limits cannot be run with. Each names the configuration key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitsError {
    /// `sessions.window` is outside 1 KiB ..= 1 GiB.
    #[error("sessions.window must be between 1KiB and 1GiB, not {window}")]
    WindowOutOfRange {
        /// The window configured.
        window: ByteSize,
    },
    /// `connections.send_window` is below 1 KiB.
    #[error("connections.send_window must be at least 1KiB, not {send_window}")]
    SendWindowTooSmall {
        /// The send window configured.
        send_window: ByteSize,
    },
    /// A timeout that cannot be turned off is zero.
    #[error("{key} must not be zero")]
    ZeroTimeout {
        /// The configuration key.
        key: &'static str,
    },
    /// `connections.max_streams` is zero: no player could open a session.
    #[error("connections.max_streams must not be zero")]
    ZeroMaxStreams,
    /// The tiers do not resolve.
    #[error(transparent)]
    Tiers(#[from] TiersError),
    /// The buffer budget could not hold even one session.
    #[error("sessions.buffer_budget ({budget}) is smaller than one session's buffer ({session})")]
    BudgetBelowOneSession {
        /// The budget configured.
        budget: ByteSize,
        /// What one session reserves.
        session: ByteSize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_fit_the_promise() {
        let limits = Limits::default();
        limits.validate().expect("defaults are valid");
        // 544 KiB per session: the default budget holds 3,855 sessions.
        assert_eq!(limits.session_buffer(), 544 * 1024);
        assert_eq!(
            limits.sessions.buffer_budget.0 / limits.session_buffer(),
            3_855
        );
        // The sizing for 100,000 sessions the documentation gives.
        let mut small = Limits::default();
        small.sessions.window = ByteSize(16 << 10);
        assert!(100_000 * small.session_buffer() < 6_600_000_000);
        Limits::unlimited().validate().expect("unlimited is valid");
    }

    #[test]
    fn sections_parse_and_unknown_keys_are_named() {
        let limits: Limits = toml::from_str(
            "[sessions]\nrate = \"2Mbit\"\nwindow = \"32KiB\"\n[hosts]\nmax_sessions = 3\n",
        )
        .expect("valid");
        assert_eq!(limits.sessions.rate, Rate(250_000));
        assert_eq!(limits.sessions.window, ByteSize(32 * 1024));
        assert_eq!(limits.hosts.max_sessions, 3);
        assert_eq!(limits.connections, ConnectionLimits::default());
        let err = toml::from_str::<Limits>("[sessions]\nrat = 1\n").expect_err("refused");
        assert!(err.to_string().contains("unknown field `rat`"), "{err}");
    }

    #[test]
    fn limits_print_as_the_config_file_reads_them() {
        let mut limits = Limits::default();
        limits.sessions.rate = Rate(250_000);
        let text = toml::to_string(&limits).expect("serializable");
        assert!(text.contains("rate = \"2Mbit\""), "{text}");
        let read: Limits = toml::from_str(&text).expect("reads back");
        assert_eq!(read, limits);
    }

    #[test]
    fn validation_names_the_problem() {
        let mut limits = Limits::default();
        limits.sessions.buffer_budget = ByteSize(1000);
        let err = limits.validate().expect_err("too small");
        assert!(
            matches!(err, LimitsError::BudgetBelowOneSession { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("buffer_budget"), "{err}");
        let mut limits = Limits::default();
        limits.sessions.window = ByteSize(10);
        assert_eq!(
            limits.validate(),
            Err(LimitsError::WindowOutOfRange {
                window: ByteSize(10)
            })
        );
        let mut limits = Limits::default();
        limits.connections.first_message_timeout = Span(Duration::ZERO);
        assert_eq!(
            limits.validate(),
            Err(LimitsError::ZeroTimeout {
                key: "connections.first_message_timeout"
            })
        );
    }
}

/// Name of the tier the `[sessions]` and `[hosts]` sections define.
pub const DEFAULT_TIER: &str = "default";

/// `[tiers.NAME]`: what a tier changes from the default tier. Keys left out keep
/// the default tier's value.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct TierConfig {
    /// `[sessions] rate` for this tier's hosts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_rate: Option<Rate>,
    /// `[sessions] burst`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_burst: Option<ByteSize>,
    /// `[sessions] max_duration`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_duration: Option<Span>,
    /// `[sessions] max_bytes`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<ByteSize>,
    /// `[hosts] rate`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_rate: Option<Rate>,
    /// `[hosts] burst`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_burst: Option<ByteSize>,
    /// `[hosts] max_sessions`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_max_sessions: Option<u32>,
}

/// Why the tiers of a configuration cannot be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TiersError {
    /// A `[host_tiers]` key is not a host id.
    #[error("host_tiers: {host:?} is not a host id: {source}")]
    NotAHostId {
        /// The key as written.
        host: String,
        /// Why it does not parse.
        source: blindrelay_protocol::KeyError,
    },
    /// A `[host_tiers]` entry names a tier that no `[tiers.NAME]` section defines.
    #[error("host_tiers: no tier named {tier:?}")]
    UnknownTier {
        /// The tier named.
        tier: String,
    },
}

impl Limits {
    /// `[host_tiers]`, checked: each key a host id, each tier one that `[tiers.NAME]`
    /// defines or the default tier.
    pub(crate) fn host_tiers(
        &self,
    ) -> Result<Vec<(blindrelay_protocol::HostId, &str)>, TiersError> {
        self.host_tiers
            .iter()
            .map(|(host, tier)| {
                let host_id = host.parse().map_err(|source| TiersError::NotAHostId {
                    host: host.clone(),
                    source,
                })?;
                if tier != DEFAULT_TIER && !self.tiers.contains_key(tier) {
                    return Err(TiersError::UnknownTier { tier: tier.clone() });
                }
                Ok((host_id, tier.as_str()))
            })
            .collect()
    }
}
