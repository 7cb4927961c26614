//! Which transports a player or host uses to reach its relay, and what it remembers
//! about them.
//!
//! QUIC is the fast default. On networks that block or break UDP (hotels, offices,
//! some mobile networks, routers that mangle large datagrams) the relay is also
//! reachable over TLS 1.3 on TCP, at the same port number. With
//! [`TransportPreference::Auto`], QUIC starts first and TLS over TCP joins after
//! [`DEFAULT_TCP_DELAY`] (happy eyeballs, RFC 8305's idea applied to transports);
//! a relay whose UDP failed lately gets both at once for [`UDP_BROKEN_MEMORY`].

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use blindrelay_protocol::RelayUrl;
use tokio::time::Instant;

/// How long QUIC runs alone before TLS over TCP joins the race: several round
/// trips to any relay, short enough that a blocked UDP costs a person nothing they
/// would notice.
pub const DEFAULT_TCP_DELAY: Duration = Duration::from_millis(250);

/// How long a relay whose UDP did not get through is raced over TCP at once.
pub const UDP_BROKEN_MEMORY: Duration = Duration::from_secs(60);

/// Which transports reach the relay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportPreference {
    /// QUIC first, TLS over TCP when QUIC does not get through.
    #[default]
    Auto,
    /// QUIC only.
    Quic,
    /// TLS over TCP only.
    Tcp,
}

impl std::fmt::Display for TransportPreference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Quic => "quic",
            Self::Tcp => "tcp",
        })
    }
}

/// A transport preference that is not one of `auto`, `quic`, `tcp`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown transport {0:?}: expected auto, quic or tcp")]
pub struct UnknownTransport(pub String);

impl std::str::FromStr for TransportPreference {
    type Err = UnknownTransport;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "auto" => Ok(Self::Auto),
            "quic" => Ok(Self::Quic),
            "tcp" => Ok(Self::Tcp),
            other => Err(UnknownTransport(other.to_owned())),
        }
    }
}

/// Relays whose UDP did not get through lately, and until when that is believed.
#[derive(Debug, Default)]
pub(crate) struct UdpHealth {
    broken_until: Mutex<HashMap<RelayUrl, Instant>>,
}

impl UdpHealth {
    /// Whether UDP to `url` failed within the last [`UDP_BROKEN_MEMORY`].
    pub(crate) fn is_broken(&self, url: &RelayUrl) -> bool {
        let mut broken = self.lock();
        match broken.get(url) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                broken.remove(url);
                false
            }
            None => false,
        }
    }

    /// A session to `url` had to take TCP.
    pub(crate) fn set_broken(&self, url: &RelayUrl) {
        self.lock()
            .insert(url.clone(), Instant::now() + UDP_BROKEN_MEMORY);
    }

    /// QUIC to `url` works.
    pub(crate) fn set_working(&self, url: &RelayUrl) {
        self.lock().remove(url);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RelayUrl, Instant>> {
        self.broken_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preferences_parse_and_print_the_same_words() {
        for preference in [
            TransportPreference::Auto,
            TransportPreference::Quic,
            TransportPreference::Tcp,
        ] {
            assert_eq!(preference.to_string().parse(), Ok(preference));
        }
        assert!("udp".parse::<TransportPreference>().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn broken_udp_is_remembered_for_a_while_only() {
        let url: RelayUrl = "blindrelay://relay.example:4433".parse().expect("url");
        let health = UdpHealth::default();
        assert!(!health.is_broken(&url));
        health.set_broken(&url);
        assert!(health.is_broken(&url));
        tokio::time::advance(UDP_BROKEN_MEMORY + Duration::from_secs(1)).await;
        assert!(!health.is_broken(&url));
        health.set_broken(&url);
        health.set_working(&url);
        assert!(!health.is_broken(&url));
    }
}
