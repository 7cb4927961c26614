//! Who may talk to the panel: requests that name the panel by its own address
//! (the Host header: a DNS-rebinding page names the attacker's host), that come
//! from the panel's own page when a browser says where they come from (the Origin
//! header: another site's form or script is refused), and, for every API call,
//! that carry the access token printed at start (a process that can reach the port
//! but did not see the token learns nothing and changes nothing).
//!
//! The token is 256 random bits; it is compared in constant time so that timing
//! answers do not reveal it byte by byte.

use std::net::{IpAddr, SocketAddr};

use axum::http::{header, HeaderMap};
use subtle::ConstantTimeEq;

/// Why a request was refused before reaching a handler.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// No Host header, or one that does not name the panel.
    #[error("the Host header must name this panel (such as 127.0.0.1:PORT or localhost:PORT)")]
    Host,
    /// An Origin header of another site (or `null`).
    #[error("requests from other web origins are refused")]
    Origin,
    /// No access token, or the wrong one.
    #[error("missing or wrong access token: send `Authorization: Bearer TOKEN` with the token the host printed")]
    Token,
}

/// The panel's checks, for the address it is bound to.
pub(crate) struct Guard {
    token: String,
    bound: SocketAddr,
}

impl Guard {
    /// A guard with a fresh random token.
    pub(crate) fn new(bound: SocketAddr) -> Result<Self, ring::error::Unspecified> {
        use ring::rand::SecureRandom;
        let mut bytes = [0u8; 32];
        ring::rand::SystemRandom::new().fill(&mut bytes)?;
        let token = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Ok(Self { token, bound })
    }

    /// The access token.
    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    /// Checks the Host header, and the Origin header if there is one.
    pub(crate) fn check_site(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let host = headers
            .get(header::HOST)
            .and_then(|value| value.to_str().ok())
            .ok_or(Refusal::Host)?;
        if !self.names_panel(host) {
            return Err(Refusal::Host);
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().map_err(|_| Refusal::Origin)?;
            let same = origin
                .strip_prefix("http://")
                .is_some_and(|authority| self.names_panel(authority));
            if !same {
                return Err(Refusal::Origin);
            }
        }
        Ok(())
    }

    /// Checks `Authorization: Bearer TOKEN`.
    pub(crate) fn check_token(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or(Refusal::Token)?;
        // The length is no secret (always 64); only the bytes are compared in
        // constant time.
        if bool::from(given.trim().as_bytes().ct_eq(self.token.as_bytes())) {
            Ok(())
        } else {
            Err(Refusal::Token)
        }
    }

    /// Whether `authority` (`host[:port]`) names this panel: its port, and either
    /// `localhost` (on a loopback or unspecified binding) or an IP address literal
    /// it is reachable at. A DNS name other than localhost never does: that is what
    /// a rebinding attack sends.
    fn names_panel(&self, authority: &str) -> bool {
        let (host, port) = split_authority(authority);
        if port != Some(self.bound.port()) && !(port.is_none() && self.bound.port() == 80) {
            return false;
        }
        let bound = self.bound.ip();
        if host.eq_ignore_ascii_case("localhost") {
            return bound.is_loopback() || bound.is_unspecified();
        }
        let literal = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        match literal.parse::<IpAddr>() {
            Ok(_) if bound.is_unspecified() => true,
            Ok(ip) => ip == bound,
            Err(_) => false,
        }
    }
}

/// Splits `host:port`, `[v6]:port` or a bare host.
fn split_authority(authority: &str) -> (&str, Option<u16>) {
    let authority = authority.trim();
    let port_at = if authority.starts_with('[') {
        authority.rfind("]:").map(|at| at + 1)
    } else if authority.matches(':').count() == 1 {
        authority.rfind(':')
    } else {
        None
    };
    match port_at {
        Some(at) => match authority[at + 1..].parse() {
            Ok(port) => (&authority[..at], Some(port)),
            // A port that is not a number names nothing we serve.
            Err(_) => ("", None),
        },
        None => (authority, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(name.clone(), HeaderValue::from_str(value).expect("value"));
        }
        map
    }

    #[test]
    fn only_the_panels_own_names_pass_the_host_check() {
        let guard = Guard::new("127.0.0.1:7070".parse().expect("addr")).expect("token");
        for ok in ["127.0.0.1:7070", "localhost:7070", "LOCALHOST:7070"] {
            assert_eq!(
                guard.check_site(&headers(&[(header::HOST, ok)])),
                Ok(()),
                "{ok}"
            );
        }
        for bad in [
            "evil.example:7070",
            "127.0.0.1:7071",
            "127.0.0.1",
            "127.0.0.2:7070",
            "localhost.evil.example:7070",
            "127.0.0.1:x",
        ] {
            assert_eq!(
                guard.check_site(&headers(&[(header::HOST, bad)])),
                Err(Refusal::Host),
                "{bad}"
            );
        }
        assert_eq!(guard.check_site(&HeaderMap::new()), Err(Refusal::Host));

        let v6 = Guard::new("[::1]:7070".parse().expect("addr")).expect("token");
        assert_eq!(
            v6.check_site(&headers(&[(header::HOST, "[::1]:7070")])),
            Ok(())
        );
        assert_eq!(
            v6.check_site(&headers(&[(header::HOST, "127.0.0.1:7070")])),
            Err(Refusal::Host)
        );
        let any = Guard::new("0.0.0.0:7070".parse().expect("addr")).expect("token");
        assert_eq!(
            any.check_site(&headers(&[(header::HOST, "192.0.2.7:7070")])),
            Ok(())
        );
        assert_eq!(
            any.check_site(&headers(&[(header::HOST, "media.example:7070")])),
            Err(Refusal::Host),
            "a name could be rebound"
        );
    }

    #[test]
    fn an_origin_must_be_the_panel_itself() {
        let guard = Guard::new("127.0.0.1:7070".parse().expect("addr")).expect("token");
        let host = (header::HOST, "127.0.0.1:7070");
        assert_eq!(
            guard.check_site(&headers(&[
                host.clone(),
                (header::ORIGIN, "http://127.0.0.1:7070")
            ])),
            Ok(())
        );
        for bad in [
            "http://evil.example",
            "null",
            "https://127.0.0.1:7070",
            "http://127.0.0.1:8080",
        ] {
            assert_eq!(
                guard.check_site(&headers(&[host.clone(), (header::ORIGIN, bad)])),
                Err(Refusal::Origin),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_token_is_random_and_required_exactly() {
        let guard = Guard::new("127.0.0.1:7070".parse().expect("addr")).expect("token");
        let other = Guard::new("127.0.0.1:7070".parse().expect("addr")).expect("token");
        assert_eq!(guard.token().len(), 64);
        assert_ne!(guard.token(), other.token());
        let bearer = format!("Bearer {}", guard.token());
        assert_eq!(
            guard.check_token(&headers(&[(header::AUTHORIZATION, &bearer)])),
            Ok(())
        );
        let wrong = format!("Bearer {}", other.token());
        for bad in [wrong.as_str(), guard.token(), "Bearer ", "Basic abc"] {
            assert_eq!(
                guard.check_token(&headers(&[(header::AUTHORIZATION, bad)])),
                Err(Refusal::Token),
                "{bad}"
            );
        }
        assert_eq!(guard.check_token(&HeaderMap::new()), Err(Refusal::Token));
    }
}
