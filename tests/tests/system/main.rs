//! Whole-system tests: a real relay, real hosts and real players talking QUIC over
//! loopback, and the real binaries run as a user would. One test binary with a
//! module per area, so the helpers (the `blindrelay-tests` library) and the
//! workspace are linked once, not once per area.

mod adversarial;
mod adversarial_tcp;
mod authorized;
mod bad_input;
mod cli;
mod direct;
mod limits;
mod networks;
mod operations;
mod panel;
mod pool;
mod privacy;
mod punch;
mod raw_tls;
mod recovery;
mod registration;
mod resume;
mod sessions;
mod tap;
mod tokens;
mod transports;
mod web;
mod webtransport;
