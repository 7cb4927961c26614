//! The blindrelay relay: the public meeting point of hosts and players.
//!
//! A host keeps one QUIC connection to the relay and registers its host id on it
//! ([`registration`](crate::registration)). A player opens a stream naming a host id;
//! the relay opens a stream to that host and splices the two
//! ([`session`](crate::session), [`splice`](crate::splice)). What flows through the
//! splice is a Noise session between player and host: the relay holds no key that
//! decrypts it, parses none of it and writes none of it anywhere.
//!
//! The binary `blindrelayd` is a thin driver around [`Relay`]. This file is the
//! module map: each concern has a file named for it.

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

// The server and what every connection shares.
mod server;
mod state;

// One connection, its streams, and what they ask for.
mod connection;
mod control_stream;
mod dial;
mod link;
mod registration;
mod route;
mod routed_stream;
mod session;
mod session_stream;
mod splice;
mod stream_listener;
mod web;
mod webtransport;
mod webtransport_cert;

// Who is registered, who may come in, and how much each may use.
mod admission;
mod bucket;
pub mod limits;
mod registry;
mod tiers;
mod token_issuers;

// Configuration, transport and TLS settings.
mod config;
mod pool;
mod tls;
mod transport;
pub mod units;

// What the relay tells its operator, and what it must never tell.
mod admin;
mod metrics;
pub mod privacy;
mod stats;

// The real registry for the criterion benchmarks; not part of the API.
#[cfg(feature = "bench")]
#[doc(hidden)]
pub mod bench;

pub use config::{
    ConfigError, ConfigFile, LogFormat, OnOff, PoolFile, RelayConfig, TcpListen, DEFAULT_LISTEN,
};
pub use limits::TiersError;
pub use limits::{Limits, LimitsError};
pub use pool::{
    MemberSource, PoolConfig, PoolConfigError, DEFAULT_MOVE_JITTER, DEFAULT_REFRESH, MAX_MEMBERS,
};
pub use server::{Relay, RelayCloser, RelayError};
#[cfg(feature = "splice-tap")]
pub use splice::{Direction, SpliceTap, StreamEnd};
pub use stats::HttpOutcome;
pub use stats::{HistogramSnapshot, StatsSnapshot, LATENCY_BUCKETS};
pub use tls::{KeptCertificate, RelayCertificate, TlsError, KEPT_CERT_FILE, KEPT_KEY_FILE};
pub use token_issuers::{load_issuer_keys, TokenConfigError};
pub use transport::TransportError;
