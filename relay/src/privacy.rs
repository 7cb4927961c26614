//! What the relay may say about the people it serves, in logs.
//!
//! Logs never carry payload, keys or full IP addresses. Addresses are cut to their
//! network part (a /24 for IPv4, a /48 for IPv6): enough to spot abuse from a
//! network, not enough to identify a household.

use std::net::{IpAddr, SocketAddr};

/// A socket address with its host part removed, for logs.
pub(crate) fn redact(addr: SocketAddr) -> String {
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
