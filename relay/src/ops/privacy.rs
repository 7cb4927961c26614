//! What the relay may say about the people it serves, in logs.
//!
//! Logs never carry payload, keys or full IP addresses. Addresses are cut to their
//! network part (a /24 for IPv4, a /48 for IPv6): enough to spot abuse from a
//! network, not enough to identify a household.
//!
//! Host ids never appear, not even a prefix: among any realistic number of hosts a
//! prefix is as good as the whole id to anyone holding a ticket. Lines about one host
//! carry its [`host_tag`] instead, a keyed hash under a key that this process makes
//! at start and never writes anywhere, so the lines of one host can be followed
//! within one run of the relay and linked to no host id by anyone, the operator
//! included, nor across restarts.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::LazyLock;

use blindrelay_protocol::HostId;
use ring::hmac;
use ring::rand::SystemRandom;

/// Bytes of the keyed hash a host tag shows: 40 bits, 8 base32 characters. Enough
/// that two hosts of one relay rarely share a tag (about one pair in 20 among a
/// million hosts); more would not help an outsider, who lacks the key either way.
const TAG_BYTES: usize = 5;

/// This process's key for host tags. `None` if the system's random number
/// generator failed: then tags show nothing rather than something guessable.
static TAG_KEY: LazyLock<Option<hmac::Key>> =
    LazyLock::new(|| hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new()).ok());

/// How a host appears in the relay's logs: see the module documentation.
pub(crate) struct HostTag(Option<[u8; TAG_BYTES]>);

/// The tag of `host_id` in this process's logs.
pub(crate) fn host_tag(host_id: &HostId) -> HostTag {
    HostTag(TAG_KEY.as_ref().map(|key| {
        let mac = hmac::sign(key, host_id.as_bytes());
        let mut tag = [0u8; TAG_BYTES];
        tag.copy_from_slice(&mac.as_ref()[..TAG_BYTES]);
        tag
    }))
}

impl fmt::Display for HostTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(tag) => f.write_str(&base32_encode(tag)),
            None => f.write_str("-"),
        }
    }
}

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

/// Lower-case unpadded base32, as host ids and tickets are written.
fn base32_encode(bytes: &[u8]) -> String {
    data_encoding::BASE32_NOPAD
        .encode(bytes)
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_tags_follow_one_host_and_show_nothing_of_its_id() {
        let host = HostId::from_bytes([0x42; 32]);
        let other = HostId::from_bytes([0x43; 32]);
        let tag = host_tag(&host).to_string();
        assert_eq!(tag.len(), 8);
        assert_eq!(tag, host_tag(&host).to_string(), "stable within a process");
        assert_ne!(tag, host_tag(&other).to_string());
        let id = host.to_string();
        assert!(!id.contains(&tag), "{tag} vs {id}");
        // Keyed: not the unkeyed hash of the id either.
        let plain = ring::digest::digest(&ring::digest::SHA256, host.as_bytes());
        assert_ne!(tag, base32_encode(&plain.as_ref()[..TAG_BYTES]));
    }

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
