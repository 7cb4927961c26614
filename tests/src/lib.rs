//! Whole-system tests live in `tests/`: a real relay, real hosts and real players
//! talking QUIC over loopback. Shared helpers are in `tests/common/mod.rs`.
