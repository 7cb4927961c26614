//! What the relay may say about the people it serves, in logs.
//!
//! Logs never carry payload, keys or full IP addresses. Addresses are cut to their
//! network part (a /24 for IPv4, a /48 for IPv6): enough to spot abuse from a
//! network, not enough to identify a household.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};

static FULL_ADDRESSES: AtomicBool = AtomicBool::new(false);

/// Lets the relay's logs carry full addresses from now on, for an operator who
/// chose that (`--log-full-ip`). Off by default.
pub fn log_full_addresses(full: bool) {
    FULL_ADDRESSES.store(full, Ordering::Relaxed);
}

/// Log targets of the libraries under the relay that log full peer addresses at
/// debug and trace level (quinn's packet traces, for one). Unless full addresses
/// were chosen, their logs are capped at these levels.
pub const CAPPED_LOG_TARGETS: [&str; 4] = [
    "quinn=warn",
    "quinn_proto=warn",
    "quinn_udp=error",
    "rustls=warn",
];

/// A socket address with its host part removed, for logs.
pub(crate) fn redact(addr: SocketAddr) -> String {
    if FULL_ADDRESSES.load(Ordering::Relaxed) {
        return addr.to_string();
    }
    match addr.ip().to_canonical() {
        IpAddr::V4(ip) => {
            let [a, b, c, _] = ip.octets();
            format!("{a}.{b}.{c}.x")
        }
        IpAddr::V6(ip) => {
            let s = ip.segments();
            format!("{:x}:{:x}:{:x}::x", s[0], s[1], s[2])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_lose_their_host_part() {
        assert_eq!(redact("203.0.113.77:5000".parse().unwrap()), "203.0.113.x");
        assert_eq!(
            redact("[2001:db8:abcd:12::99]:443".parse().unwrap()),
            "2001:db8:abcd::x"
        );
        assert_eq!(
            redact("[::ffff:198.51.100.9]:1".parse().unwrap()),
            "198.51.100.x"
        );
    }
}
