//! The blindrelay relay: the public meeting point of hosts and players.
//!
//! A host keeps one QUIC connection to the relay and registers its host id on it
//! ([`registration`](crate::flows::registration)). A player opens a stream naming a host id;
//! the relay opens a stream to that host and splices the two
//! ([`session`](crate::flows::session), [`splice`](crate::flows::splice)). What flows through the
//! splice is a Noise session between player and host: the relay holds no key that
//! decrypts it, parses none of it and writes none of it anywhere.
//!
//! The binary `blindrelayd` is a thin driver around [`Relay`]. This file is the
//! module map. Read from the bottom up, each room needs only the rooms above it
//! in this list, and none needs a door:
//!
//! - [`server`]: binds the endpoints, admits connections, stops and drains;
//! - [`listen`]: the doors (QUIC, WebTransport, TLS over TCP and HTTPS, admin),
//!   each of which hands its accepted streams to
//! - [`route`]: the one router, which reads a stream's first message and starts
//! - [`flows`]: a registration, a session's pairing, the splice;
//! - [`state`]: what every connection shares: the registry of hosts, the pending
//!   dial-backs, the drain;
//! - [`pool`]: a pool member's view of the other relays;
//! - [`stream`]: streams and connections whatever carries them;
//! - [`endpoint`]: TLS, certificates and QUIC settings;
//! - [`policy`]: admission, limits, tiers, token issuers;
//! - [`ops`]: counters, metrics, and what logs must never say;
//! - [`config`]: the configuration everything above runs with.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

mod config;
mod endpoint;
mod flows;
mod listen;
mod ops;
mod policy;
mod pool;
mod route;
mod server;
mod state;
mod stream;

// In-memory streams and state for the unit tests.
#[cfg(test)]
mod testing;

// The real registry for the criterion benchmarks; not part of the API.
#[cfg(feature = "bench")]
#[doc(hidden)]
pub mod bench;

pub use config::{
    ConfigError, ConfigFile, LogFormat, OnOff, PoolFile, RelayConfig, TcpListen, DEFAULT_LISTEN,
};
pub use endpoint::quic::TransportError;
pub use endpoint::tls::{
    KeptCertificate, RelayCertificate, TlsError, KEPT_CERT_FILE, KEPT_KEY_FILE,
};
#[cfg(feature = "splice-tap")]
pub use flows::splice::{Direction, SpliceTap, StreamEnd};
pub use ops::privacy;
pub use ops::stats::{HistogramSnapshot, HttpOutcome, StatsSnapshot, LATENCY_BUCKETS};
pub use policy::limits::{Limits, LimitsError, TiersError};
pub use policy::token_issuers::{load_issuer_keys, TokenConfigError};
pub use policy::{limits, units};
pub use pool::{
    MemberSource, PoolConfig, PoolConfigError, DEFAULT_MOVE_JITTER, DEFAULT_REFRESH, MAX_MEMBERS,
};
pub use server::{Relay, RelayCloser, RelayError};
