//! The relay URL: everything a host or player needs to reach a relay and trust it.
//!
//! ```text
//! blindrelay://relay.example.net:4433
//! blindrelay://127.0.0.1:4433?pin=<52 base32 characters>
//! blindrelay://[::1]:4433?pin=<52 base32 characters>
//! ```
//!
//! Without a pin the relay's certificate is verified against the public web PKI for
//! the host name. With a pin the certificate must be exactly the one whose SHA-256
//! digest is pinned (any name, any issuer): that is how a development relay with a
//! self-signed certificate, made in memory at start, is trusted without a CA.

use std::fmt;
use std::str::FromStr;

use crate::encoding::{base32_decode, base32_encode};

/// URL scheme of a relay.
pub const SCHEME: &str = "blindrelay://";

/// Longest relay URL accepted, in bytes (it travels inside tickets).
pub const MAX_URL_LEN: usize = 512;

/// SHA-256 digest of a relay's DER certificate.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CertPin([u8; 32]);

impl CertPin {
    /// The pin of a DER-encoded certificate.
    pub fn of_certificate(der: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let mut pin = [0u8; 32];
        pin.copy_from_slice(digest.as_ref());
        Self(pin)
    }

    /// Whether `der` is the pinned certificate.
    pub fn matches(&self, der: &[u8]) -> bool {
        // Not secret: the pin is public and the certificate was sent in the clear.
        Self::of_certificate(der) == *self
    }
}

impl fmt::Display for CertPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&base32_encode(&self.0))
    }
}

impl fmt::Debug for CertPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CertPin({self})")
    }
}

/// Why a relay URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RelayUrlError {
    /// The URL does not start with `blindrelay://`.
    #[error("relay URL must start with {SCHEME}")]
    Scheme,
    /// The URL is longer than [`MAX_URL_LEN`].
    #[error("relay URL is {len} bytes long, at most {MAX_URL_LEN} allowed")]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// The host part is missing or has characters a host name cannot have.
    #[error("relay URL has no valid host name or address")]
    Host,
    /// The port is missing or not a number from 1 to 65535.
    #[error("relay URL needs a port from 1 to 65535 (host:port)")]
    Port,
    /// The pin is not a base32 SHA-256 digest.
    #[error("relay URL pin must be 52 base32 characters (SHA-256 of the certificate)")]
    Pin,
    /// A query parameter this version does not know.
    #[error("relay URL has an unknown parameter {name:?}")]
    UnknownParameter {
        /// The parameter's name.
        name: String,
    },
}

/// Where a relay is and how to verify it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RelayUrl {
    host: String,
    port: u16,
    pin: Option<CertPin>,
}

impl RelayUrl {
    /// A relay at `host:port`; `host` is a DNS name or an IP address (IPv6 without
    /// brackets).
    pub fn new(host: &str, port: u16, pin: Option<CertPin>) -> Result<Self, RelayUrlError> {
        let url = Self {
            host: host.to_owned(),
            port,
            pin,
        };
        // Round-trip through the parser so both constructors enforce the same rules.
        url.to_string().parse()
    }

    /// The host name or IP address (IPv6 without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The UDP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The certificate pin, when the relay is trusted by pin rather than by CA.
    pub fn pin(&self) -> Option<&CertPin> {
        self.pin.as_ref()
    }

    /// `host:port` in canonical form (an IPv6 address in brackets): how a pool names
    /// its members (PROTOCOL.md section 18.1).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The relay at `authority` (`host:port`, parsed like a URL's), verified the
    /// same way as this one: another member of the same pool.
    pub fn with_authority(&self, authority: &str) -> Result<Self, RelayUrlError> {
        let (host, port) = split_host_port(authority)?;
        Ok(Self {
            host: host.to_ascii_lowercase(),
            port,
            pin: self.pin,
        })
    }
}

impl fmt::Display for RelayUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(SCHEME)?;
        f.write_str(&self.authority())?;
        if let Some(pin) = &self.pin {
            write!(f, "?pin={pin}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for RelayUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RelayUrl({self})")
    }
}

impl FromStr for RelayUrl {
    type Err = RelayUrlError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.len() > MAX_URL_LEN {
            return Err(RelayUrlError::TooLong { len: text.len() });
        }
        let rest = text.strip_prefix(SCHEME).ok_or(RelayUrlError::Scheme)?;
        let (authority, query) = match rest.split_once('?') {
            Some((authority, query)) => (authority, Some(query)),
            None => (rest, None),
        };
        let authority = authority.strip_suffix('/').unwrap_or(authority);
        let (host, port) = split_host_port(authority)?;

        let mut pin = None;
        for param in query.into_iter().flat_map(|q| q.split('&')) {
            if param.is_empty() {
                continue;
            }
            let (name, value) = param.split_once('=').unwrap_or((param, ""));
            match name {
                "pin" => {
                    let bytes = base32_decode(value).ok_or(RelayUrlError::Pin)?;
                    let bytes: [u8; 32] = bytes.try_into().map_err(|_| RelayUrlError::Pin)?;
                    pin = Some(CertPin(bytes));
                }
                other => {
                    return Err(RelayUrlError::UnknownParameter {
                        name: other.chars().take(32).collect(),
                    })
                }
            }
        }
        Ok(Self {
            host: host.to_ascii_lowercase(),
            port,
            pin,
        })
    }
}

/// `authority` (`host:port`, by the rules of a URL's) in canonical form: the host in
/// lower case, an IPv6 address in brackets, the port without leading zeros.
pub fn canonical_authority(authority: &str) -> Result<String, RelayUrlError> {
    let (host, port) = split_host_port(authority)?;
    Ok(RelayUrl {
        host: host.to_ascii_lowercase(),
        port,
        pin: None,
    }
    .authority())
}

fn split_host_port(authority: &str) -> Result<(&str, u16), RelayUrlError> {
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, rest) = bracketed.split_once(']').ok_or(RelayUrlError::Host)?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(RelayUrlError::Host);
        }
        (host, rest.strip_prefix(':').ok_or(RelayUrlError::Port)?)
    } else {
        let (host, port) = authority.rsplit_once(':').ok_or(RelayUrlError::Port)?;
        let valid = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
        if !valid {
            return Err(RelayUrlError::Host);
        }
        (host, port)
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RelayUrlError::Port);
    }
    let port: u16 = port.parse().map_err(|_| RelayUrlError::Port)?;
    if port == 0 {
        return Err(RelayUrlError::Port);
    }
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_every_form() {
        let pin = CertPin::of_certificate(b"certificate");
        for text in [
            "blindrelay://relay.example.net:4433".to_owned(),
            format!("blindrelay://127.0.0.1:4433?pin={pin}"),
            format!("blindrelay://[::1]:9?pin={pin}"),
        ] {
            let url: RelayUrl = text.parse().unwrap();
            assert_eq!(url.to_string(), text);
        }
        let url: RelayUrl = format!("blindrelay://[::1]:9?pin={pin}").parse().unwrap();
        assert_eq!(url.host(), "::1");
        assert_eq!(url.port(), 9);
        assert!(url.pin().unwrap().matches(b"certificate"));
        assert!(!url.pin().unwrap().matches(b"another certificate"));
    }

    #[test]
    fn refuses_malformed_urls_with_a_reason() {
        let cases = [
            ("http://relay:1", RelayUrlError::Scheme),
            ("blindrelay://relay", RelayUrlError::Port),
            ("blindrelay://relay:0", RelayUrlError::Port),
            ("blindrelay://relay:70000", RelayUrlError::Port),
            ("blindrelay://relay:+443", RelayUrlError::Port),
            ("blindrelay://:4433", RelayUrlError::Host),
            ("blindrelay://re lay:4433", RelayUrlError::Host),
            ("blindrelay://[nope]:4433", RelayUrlError::Host),
            ("blindrelay://relay:1?pin=abc", RelayUrlError::Pin),
        ];
        for (text, expected) in cases {
            assert_eq!(text.parse::<RelayUrl>(), Err(expected), "{text}");
        }
        assert!(matches!(
            "blindrelay://relay:1?color=blue".parse::<RelayUrl>(),
            Err(RelayUrlError::UnknownParameter { .. })
        ));
        let long = format!("blindrelay://{}:1", "a".repeat(600));
        assert!(matches!(
            long.parse::<RelayUrl>(),
            Err(RelayUrlError::TooLong { .. })
        ));
    }
}
