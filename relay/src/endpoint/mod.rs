//! How the relay's endpoints are set up: [TLS](tls) and its certificates, the
//! [QUIC transport settings](quic) that bound what each connection holds, and the
//! [short-lived certificates](short_lived) browsers accept by hash.

pub(crate) mod quic;
pub(crate) mod short_lived;
pub(crate) mod tls;
