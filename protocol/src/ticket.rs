//! Tickets: one copy-pasteable string that tells a player how to reach a host.
//!
//! A ticket holds the host id, the URL of the host's home relay and the addresses
//! where the host listens directly; either of the last two may be missing, not both.
//! In text it is `brt` followed by lower-case base32 of this binary form:
//!
//! ```text
//! version      u8      = 1
//! host id      [u8; 32]
//! relay URL    u16 length (<= 512) + UTF-8; length 0 = no relay
//! direct       u8 count (<= 8), then per address:
//!                u8 family (4 or 6) + 4 or 16 address bytes + u16 port
//! checksum     [u8; 4] = first 4 bytes of SHA-256 over everything above
//! ```
//!
//! The checksum catches a ticket mangled in copy and paste before the player tries a
//! wrong host id. It is not a security measure: the host id itself is what the Noise
//! handshake authenticates.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use bytes::BufMut;

use crate::encoding::{base32_decode, base32_encode, put_socket_addr, Reader};
use crate::error::DecodeError;
use crate::keys::HostId;
use crate::relay_url::{RelayUrl, RelayUrlError, MAX_URL_LEN};

/// Prefix of a ticket in text form.
pub const TICKET_PREFIX: &str = "brt";

/// Version byte of the ticket encoding.
pub const TICKET_VERSION: u8 = 1;

/// Most direct addresses a ticket carries.
pub const MAX_DIRECT_ADDRS: usize = 8;

const CHECKSUM_LEN: usize = 4;

/// Why a ticket was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TicketError {
    /// The text does not start with `brt`.
    #[error("not a blindrelay ticket (tickets start with {TICKET_PREFIX})")]
    NotATicket,
    /// The text starts with `brt` but the rest is not base32 of a whole number of
    /// bytes: a character is missing or mistyped.
    #[error("ticket is damaged (cut short or mistyped: not valid base32): copy it again whole")]
    Damaged,
    /// The checksum does not match: the ticket was cut or altered.
    #[error("ticket is damaged (checksum mismatch): copy it again")]
    Checksum,
    /// The ticket's binary form is malformed.
    #[error("ticket is malformed: {0}")]
    Decode(#[from] DecodeError),
    /// The relay URL inside the ticket is invalid.
    #[error("ticket holds an invalid relay URL: {0}")]
    RelayUrl(#[from] RelayUrlError),
    /// More direct addresses than [`MAX_DIRECT_ADDRS`].
    #[error("a ticket holds at most {MAX_DIRECT_ADDRS} direct addresses")]
    TooManyAddrs,
    /// Neither a relay nor a direct address: nothing a player could try.
    #[error("a ticket needs a relay URL or at least one direct address")]
    NoRoute,
}

/// Everything a player needs to reach one host.
#[derive(Clone, PartialEq, Eq)]
pub struct Ticket {
    host_id: HostId,
    relay: Option<RelayUrl>,
    direct: Vec<SocketAddr>,
}

impl Ticket {
    /// A ticket for `host_id` at home relay `relay`, with optional direct addresses.
    pub fn new(
        host_id: HostId,
        relay: RelayUrl,
        direct: Vec<SocketAddr>,
    ) -> Result<Self, TicketError> {
        Self::with_routes(host_id, Some(relay), direct)
    }

    /// A ticket with any combination of a relay and direct addresses, as long as
    /// there is at least one of them.
    pub fn with_routes(
        host_id: HostId,
        relay: Option<RelayUrl>,
        direct: Vec<SocketAddr>,
    ) -> Result<Self, TicketError> {
        if direct.len() > MAX_DIRECT_ADDRS {
            return Err(TicketError::TooManyAddrs);
        }
        if relay.is_none() && direct.is_empty() {
            return Err(TicketError::NoRoute);
        }
        Ok(Self {
            host_id,
            relay,
            direct,
        })
    }

    /// The host this ticket reaches.
    pub fn host_id(&self) -> &HostId {
        &self.host_id
    }

    /// The host's home relay; `None` for a host reachable only directly.
    pub fn relay(&self) -> Option<&RelayUrl> {
        self.relay.as_ref()
    }

    /// Addresses where the host listens directly, if any.
    pub fn direct_addrs(&self) -> &[SocketAddr] {
        &self.direct
    }

    /// The binary form (see the module documentation).
    pub fn to_bytes(&self) -> Vec<u8> {
        let url = self
            .relay
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default();
        let mut out = Vec::with_capacity(64 + url.len() + 19 * self.direct.len());
        out.put_u8(TICKET_VERSION);
        out.put_slice(self.host_id.as_bytes());
        // Both lengths were bounded when the ticket was built: RelayUrl refuses more
        // than MAX_URL_LEN bytes and Ticket::new more than MAX_DIRECT_ADDRS addresses.
        out.put_u16(url.len() as u16);
        out.put_slice(url.as_bytes());
        out.put_u8(self.direct.len() as u8);
        for addr in &self.direct {
            put_socket_addr(&mut out, *addr);
        }
        let checksum = checksum(&out);
        out.put_slice(&checksum);
        out
    }

    /// Parses the binary form.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TicketError> {
        if bytes.len() < CHECKSUM_LEN {
            return Err(DecodeError::Truncated {
                needed: CHECKSUM_LEN,
                available: bytes.len(),
            }
            .into());
        }
        let (body, sum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
        if checksum(body) != sum {
            return Err(TicketError::Checksum);
        }
        let mut r = Reader::new(body);
        let version = r.u8()?;
        if version != TICKET_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                version,
                supported: TICKET_VERSION,
            }
            .into());
        }
        let host_id = HostId::from_bytes(r.array()?);
        let url = r.string16("relay URL", MAX_URL_LEN)?;
        let relay: Option<RelayUrl> = match url {
            "" => None,
            url => Some(url.parse()?),
        };
        let count = usize::from(r.u8()?);
        if count > MAX_DIRECT_ADDRS {
            return Err(TicketError::TooManyAddrs);
        }
        let mut direct = Vec::with_capacity(count);
        for _ in 0..count {
            direct.push(r.socket_addr()?);
        }
        r.finish()?;
        Self::with_routes(host_id, relay, direct)
    }
}

fn checksum(body: &[u8]) -> [u8; CHECKSUM_LEN] {
    let digest = ring::digest::digest(&ring::digest::SHA256, body);
    let mut out = [0u8; CHECKSUM_LEN];
    out.copy_from_slice(&digest.as_ref()[..CHECKSUM_LEN]);
    out
}

impl fmt::Display for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{TICKET_PREFIX}{}", base32_encode(&self.to_bytes()))
    }
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ticket")
            .field("host_id", &self.host_id)
            .field("relay", &self.relay)
            .field("direct", &self.direct)
            .finish()
    }
}

impl FromStr for Ticket {
    type Err = TicketError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let rest = text
            .get(..TICKET_PREFIX.len())
            .filter(|prefix| prefix.eq_ignore_ascii_case(TICKET_PREFIX))
            .map(|_| &text[TICKET_PREFIX.len()..])
            .ok_or(TicketError::NotATicket)?;
        // It does start like a ticket: a failure from here on is damage, and saying
        // "tickets start with brt" would send the user looking in the wrong place.
        let body = base32_decode(rest).ok_or(TicketError::Damaged)?;
        Self::from_bytes(&body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay_url::CertPin;
    use proptest::prelude::*;

    fn sample() -> Ticket {
        let relay = RelayUrl::new(
            "127.0.0.1",
            4433,
            Some(CertPin::of_certificate(b"certificate")),
        )
        .unwrap();
        Ticket::new(
            HostId::from_bytes([9; 32]),
            relay,
            vec![
                "192.0.2.7:8443".parse().unwrap(),
                "[2001:db8::1]:8443".parse().unwrap(),
            ],
        )
        .unwrap()
    }

    #[test]
    fn text_round_trips() {
        let ticket = sample();
        let text = ticket.to_string();
        assert!(text.starts_with("brt"));
        assert_eq!(text.parse::<Ticket>().unwrap(), ticket);
        assert_eq!(text.to_ascii_uppercase().parse::<Ticket>().unwrap(), ticket);
    }

    #[test]
    fn binary_form_is_pinned() {
        let ticket = Ticket::new(
            HostId::from_bytes([0xab; 32]),
            "blindrelay://r.example:7".parse().unwrap(),
            vec!["10.0.0.1:80".parse().unwrap()],
        )
        .unwrap();
        let expected = concat!(
            "01",
            "abababababababababababababababababababababababababababababababab",
            "0018",
            "626c696e6472656c61793a2f2f722e6578616d706c653a37",
            "01",
            "040a0000010050",
        );
        let bytes = ticket.to_bytes();
        let hex: String = bytes[..bytes.len() - 4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(hex, expected);
    }

    #[test]
    fn damaged_tickets_are_refused() {
        let text = sample().to_string();
        assert_eq!("hello".parse::<Ticket>(), Err(TicketError::NotATicket));
        assert_eq!("brt!!".parse::<Ticket>(), Err(TicketError::Damaged));
        // Change one character in the middle: the checksum catches it.
        let mut chars: Vec<char> = text.chars().collect();
        let i = chars.len() / 2;
        chars[i] = if chars[i] == 'a' { 'b' } else { 'a' };
        let altered: String = chars.into_iter().collect();
        assert_eq!(altered.parse::<Ticket>(), Err(TicketError::Checksum));
        // Cut it short.
        assert!(text[..text.len() - 8].parse::<Ticket>().is_err());
    }

    #[test]
    fn a_ticket_missing_characters_is_called_damaged_not_a_non_ticket() {
        let text = sample().to_string();
        for cut in 1..=8 {
            let err = text[..text.len() - cut].parse::<Ticket>().unwrap_err();
            assert_ne!(err, TicketError::NotATicket, "cut {cut}");
            assert!(!err.to_string().contains("start with"), "cut {cut}: {err}");
            assert!(err.to_string().contains("damaged"), "cut {cut}: {err}");
        }
    }

    #[test]
    fn a_ticket_without_a_relay_round_trips() {
        let direct = vec!["192.0.2.7:8443".parse().unwrap()];
        let ticket = Ticket::with_routes(HostId::from_bytes([5; 32]), None, direct).unwrap();
        let bytes = ticket.to_bytes();
        // Version, host id, then a zero URL length.
        assert_eq!(bytes[33..35], [0, 0]);
        let parsed: Ticket = ticket.to_string().parse().unwrap();
        assert_eq!(parsed, ticket);
        assert_eq!(parsed.relay(), None);
        assert_eq!(parsed.direct_addrs(), ticket.direct_addrs());
    }

    #[test]
    fn a_ticket_needs_a_route() {
        let host_id = HostId::from_bytes([5; 32]);
        assert_eq!(
            Ticket::with_routes(host_id, None, vec![]),
            Err(TicketError::NoRoute)
        );
        // Hand-made bytes with neither: refused by the decoder too.
        let mut body = vec![TICKET_VERSION];
        body.extend_from_slice(&[5; 32]);
        body.extend_from_slice(&[0, 0, 0]);
        let sum = checksum(&body);
        body.extend_from_slice(&sum);
        assert_eq!(Ticket::from_bytes(&body), Err(TicketError::NoRoute));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            let _ = Ticket::from_bytes(&bytes);
        }

        #[test]
        fn decoding_arbitrary_text_never_panics(text in ".{0,300}") {
            let _ = text.parse::<Ticket>();
            let _ = format!("brt{text}").parse::<Ticket>();
        }
    }
}
