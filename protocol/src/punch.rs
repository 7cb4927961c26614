//! What a punch session carries (PROTOCOL.md 10.9): the two ends' direct-path
//! candidates, inside Noise, so the relay learns no address it did not already see.
//!
//! A punch session is a Noise session like any other, opened through the relay with
//! a [`Hello::Punch`](crate::noise::Hello::Punch) and welcomed with the punch verdict;
//! its data frames carry these messages instead of application bytes. Each message
//! is a 2-byte big-endian length and that many bytes: a kind byte, then its fields.
//!
//! ```text
//! player -> host   Candidates { the player's addresses }
//! host -> player   Candidates { the host's addresses }      (the host starts punching)
//! player -> host   end                                       (after its attempt)
//! ```
//!
//! Attempts alternate roles: in every second one the player asks the host to dial
//! instead (candidates of kind `dial back`), opens its own NAT toward the host's
//! candidates, and says when:
//!
//! ```text
//! player -> host   Candidates { the player's addresses, dial back }
//! host -> player   Candidates { the host's addresses }
//! player -> host   Ready                                     (its punch packets left)
//! host             dials the player's addresses over QUIC
//! ```
//!
//! On a punched direct connection, the player checks it reached the host itself
//! with one more punch session there:
//!
//! ```text
//! player -> host   Candidates { }                            (none: a check)
//! host -> player   PathCheck { the connection's TLS exporter, as the host sees it }
//! ```

use std::net::SocketAddr;

use bytes::{BufMut, BytesMut};

use crate::encoding::{put_socket_addr, Reader};
use crate::error::DecodeError;

/// Most addresses in one [`Candidates`] message.
pub const MAX_CANDIDATES: usize = 8;

/// Longest message body: a kind byte, a count and eight IPv6 addresses.
pub const MAX_MESSAGE_LEN: usize = 2 + MAX_CANDIDATES * 19;

/// Bytes of a [`PathCheck`]'s binding.
pub const BINDING_LEN: usize = 32;

/// The TLS exporter label of a [`PathCheck`]'s binding (RFC 8446 7.5; context
/// empty).
pub const BINDING_LABEL: &[u8] = b"EXPORTER-blindrelay/1 punched path";

mod kind {
    /// Candidates are the odd kinds: `0x01`, with [`DIAL_BACK`] and
    /// [`PER_DESTINATION`] set as they say.
    pub const CANDIDATES: u8 = 0x01;
    pub const DIAL_BACK: u8 = 0x02;
    pub const PER_DESTINATION: u8 = 0x04;
    pub const PATH_CHECK: u8 = 0x02;
    pub const READY: u8 = 0x04;
}

/// Where one end may be reached directly: the address the relay observed for it
/// (its NAT's public mapping), its own LAN addresses, and (the host's) the
/// addresses it advertises. The order is the sender's preference.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Candidates {
    /// At most [`MAX_CANDIDATES`], without repeats.
    pub addrs: Vec<SocketAddr>,
    /// The player asks the host to dial it this time (roles swapped), instead of
    /// punching toward it; only a player sends it.
    pub dial_back: bool,
    /// The sender's NAT maps each destination to a new public port (it was seen
    /// from two ports by the relay's two ports): its observed address is of no
    /// use to anyone else.
    pub per_destination: bool,
}

impl Candidates {
    /// Candidates from `addrs`, repeats dropped and cut to [`MAX_CANDIDATES`] in
    /// order.
    pub fn new(addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        let mut kept = Vec::new();
        for addr in addrs {
            if kept.len() < MAX_CANDIDATES && !kept.contains(&addr) {
                kept.push(addr);
            }
        }
        Self {
            addrs: kept,
            dial_back: false,
            per_destination: false,
        }
    }

    /// The same addresses, from behind a NAT that maps each destination anew.
    #[must_use]
    pub fn mapped_per_destination(mut self, per_destination: bool) -> Self {
        self.per_destination = per_destination;
        self
    }

    /// The same addresses, asking the host to dial them.
    #[must_use]
    pub fn dialled_back(mut self) -> Self {
        self.dial_back = true;
        self
    }

    /// Appends the message, length prefix included.
    pub fn encode(&self, out: &mut impl BufMut) {
        let mut body = BytesMut::with_capacity(MAX_MESSAGE_LEN);
        let mut kind = kind::CANDIDATES;
        if self.dial_back {
            kind |= kind::DIAL_BACK;
        }
        if self.per_destination {
            kind |= kind::PER_DESTINATION;
        }
        body.put_u8(kind);
        let addrs = &self.addrs[..self.addrs.len().min(MAX_CANDIDATES)];
        body.put_u8(addrs.len() as u8);
        for addr in addrs {
            put_socket_addr(&mut body, *addr);
        }
        out.put_u16(body.len() as u16);
        out.put_slice(&body);
    }

    /// Decodes one message's body (after its length prefix).
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        let kind = r.u8()?;
        if kind & !(kind::DIAL_BACK | kind::PER_DESTINATION) != kind::CANDIDATES {
            return Err(DecodeError::UnknownKind { kind });
        }
        let dial_back = kind & kind::DIAL_BACK != 0;
        let per_destination = kind & kind::PER_DESTINATION != 0;
        let count = usize::from(r.u8()?);
        if count > MAX_CANDIDATES {
            return Err(DecodeError::InvalidField {
                field: "candidates",
                reason: "more than 8",
            });
        }
        let mut addrs = Vec::with_capacity(count);
        for _ in 0..count {
            let addr = r.socket_addr()?;
            if addrs.contains(&addr) {
                return Err(DecodeError::InvalidField {
                    field: "candidates",
                    reason: "an address given twice",
                });
            }
            addrs.push(addr);
        }
        r.finish()?;
        Ok(Self {
            addrs,
            dial_back,
            per_destination,
        })
    }

    /// Decodes one message from the front of `buf` if it is whole, consuming it;
    /// `Ok(None)` when more bytes are needed. A length over [`MAX_MESSAGE_LEN`] is
    /// refused before its body arrives.
    pub fn decode_frame(buf: &mut BytesMut) -> Result<Option<Self>, DecodeError> {
        split_frame(buf)?
            .map(|body| Self::decode(&body))
            .transpose()
    }
}

/// What the host answers on a punched direct connection's punch session: the TLS
/// exporter ([`BINDING_LABEL`]) of the QUIC connection the session runs on, as the
/// host sees it. Inside Noise to the host id, it tells the player that the host
/// itself ends the very connection the player dialled: someone who answered the
/// dial and carried the session on to the host over a connection of its own (a
/// splice) cannot make the two ends' exporters agree, nor forge this message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathCheck {
    /// The connection's TLS exporter under [`BINDING_LABEL`].
    pub binding: [u8; BINDING_LEN],
}

impl PathCheck {
    /// Appends the message, length prefix included.
    pub fn encode(&self, out: &mut impl BufMut) {
        out.put_u16(1 + BINDING_LEN as u16);
        out.put_u8(kind::PATH_CHECK);
        out.put_slice(&self.binding);
    }

    /// Decodes one message's body (after its length prefix).
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(body);
        match r.u8()? {
            kind::PATH_CHECK => {}
            kind => return Err(DecodeError::UnknownKind { kind }),
        }
        let binding = r.array::<BINDING_LEN>()?;
        r.finish()?;
        Ok(Self { binding })
    }

    /// Like [`Candidates::decode_frame`].
    pub fn decode_frame(buf: &mut BytesMut) -> Result<Option<Self>, DecodeError> {
        split_frame(buf)?
            .map(|body| Self::decode(&body))
            .transpose()
    }
}

/// What a player that asked the host to dial it sends once its own punch packets
/// have left: its NAT now lets the host's dial in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ready;

impl Ready {
    /// Appends the message, length prefix included.
    pub fn encode(self, out: &mut impl BufMut) {
        out.put_u16(1);
        out.put_u8(kind::READY);
    }

    /// Like [`Candidates::decode_frame`].
    pub fn decode_frame(buf: &mut BytesMut) -> Result<Option<Self>, DecodeError> {
        let Some(body) = split_frame(buf)? else {
            return Ok(None);
        };
        let mut r = Reader::new(&body);
        match r.u8()? {
            kind::READY => {}
            kind => return Err(DecodeError::UnknownKind { kind }),
        }
        r.finish()?;
        Ok(Some(Self))
    }
}

/// Takes one whole message from the front of `buf`, prefix stripped; `Ok(None)`
/// when more bytes are needed, an error as soon as the prefix says too long.
fn split_frame(buf: &mut BytesMut) -> Result<Option<BytesMut>, DecodeError> {
    let Some(prefix) = buf.get(..2) else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([prefix[0], prefix[1]]));
    if len > MAX_MESSAGE_LEN {
        return Err(DecodeError::FieldTooLong {
            field: "punch message",
            len,
            max: MAX_MESSAGE_LEN,
        });
    }
    if buf.len() < 2 + len {
        return Ok(None);
    }
    let mut frame = buf.split_to(2 + len);
    Ok(Some(frame.split_off(2)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn candidates_round_trip_in_both_families() {
        let candidates = Candidates::new([
            addr("203.0.113.7:40123"),
            addr("192.168.1.20:5000"),
            addr("[2001:db8::7]:443"),
        ]);
        let mut wire = BytesMut::new();
        candidates.encode(&mut wire);
        assert_eq!(wire.len(), 2 + 2 + 7 + 7 + 19);
        assert_eq!(
            Candidates::decode_frame(&mut wire).unwrap(),
            Some(candidates)
        );
        assert!(wire.is_empty());
    }

    #[test]
    fn new_drops_repeats_and_keeps_at_most_eight_in_order() {
        let many = (0..12).map(|i| addr(&format!("10.0.0.{i}:1")));
        let repeated = [addr("10.0.0.0:1")].into_iter().chain(many);
        let candidates = Candidates::new(repeated);
        assert_eq!(candidates.addrs.len(), MAX_CANDIDATES);
        assert_eq!(candidates.addrs[0], addr("10.0.0.0:1"));
        assert_eq!(candidates.addrs[7], addr("10.0.0.7:1"));
    }

    #[test]
    fn a_partial_message_waits_and_an_oversize_length_is_refused_at_once() {
        let mut wire = BytesMut::new();
        Candidates::new([addr("203.0.113.7:40123")]).encode(&mut wire);
        let mut partial = BytesMut::from(&wire[..wire.len() - 1]);
        assert_eq!(Candidates::decode_frame(&mut partial).unwrap(), None);
        let mut oversize = BytesMut::from(&[0xff, 0xff][..]);
        assert!(matches!(
            Candidates::decode_frame(&mut oversize),
            Err(DecodeError::FieldTooLong { .. })
        ));
    }

    #[test]
    fn malformed_candidates_are_refused() {
        // Nine addresses, an unknown family, a repeat, trailing bytes, another kind.
        let mut nine = vec![kind::CANDIDATES, 9];
        for _ in 0..9 {
            nine.extend_from_slice(&[4, 10, 0, 0, 1, 0, 1]);
        }
        assert!(Candidates::decode(&nine).is_err());
        assert!(Candidates::decode(&[kind::CANDIDATES, 1, 5, 0, 0]).is_err());
        let twice = [
            kind::CANDIDATES,
            2,
            4,
            10,
            0,
            0,
            1,
            0,
            1,
            4,
            10,
            0,
            0,
            1,
            0,
            1,
        ];
        assert!(Candidates::decode(&twice).is_err());
        assert!(Candidates::decode(&[kind::CANDIDATES, 0, 0]).is_err());
        assert!(Candidates::decode(&[0x02, 0]).is_err());
        assert!(Candidates::decode(&[kind::READY]).is_err());
        assert_eq!(
            Candidates::decode(&[kind::CANDIDATES, 0]).unwrap(),
            Candidates::default()
        );
    }

    /// The bytes a player or host of the first punching release sent (kind `0x01`,
    /// no flags) read the same now, and a side without flags still writes them.
    #[test]
    fn the_first_releases_candidates_read_the_same() {
        let old = [
            0x00, 0x09, 0x01, 0x01, 0x04, 0xcb, 0x00, 0x71, 0x07, 0x9c, 0x7b,
        ];
        let mut wire = BytesMut::from(&old[..]);
        let candidates = Candidates::decode_frame(&mut wire).unwrap().unwrap();
        assert_eq!(candidates.addrs, [addr("203.0.113.7:40059")]);
        assert!(!candidates.dial_back && !candidates.per_destination);
        let mut again = BytesMut::new();
        candidates.encode(&mut again);
        assert_eq!(&again[..], &old[..], "and are written the same");
    }

    #[test]
    fn dial_back_candidates_and_ready_round_trip() {
        let candidates = Candidates::new([addr("203.0.113.7:40123")]).dialled_back();
        let mut wire = BytesMut::new();
        candidates.encode(&mut wire);
        assert_eq!(wire[2], 0x03);
        let decoded = Candidates::decode_frame(&mut wire).unwrap().unwrap();
        assert!(decoded.dial_back && !decoded.per_destination);
        assert_eq!(decoded, candidates);
        // Each flag its own bit: 0x05 from behind a NAT that maps per destination,
        // 0x07 with dial back too.
        for (dial_back, per_destination, kind) in [
            (false, true, 0x05),
            (true, true, 0x07),
            (false, false, 0x01),
        ] {
            let mut candidates =
                Candidates::new([addr("203.0.113.7:1")]).mapped_per_destination(per_destination);
            candidates.dial_back = dial_back;
            let mut wire = BytesMut::new();
            candidates.encode(&mut wire);
            assert_eq!(wire[2], kind);
            assert_eq!(
                Candidates::decode_frame(&mut wire).unwrap(),
                Some(candidates)
            );
        }
        // Even kinds, and bits beyond the two, are not candidates.
        for kind in [0x09, 0x11, 0x81, 0x06] {
            assert!(matches!(
                Candidates::decode(&[kind, 0]),
                Err(DecodeError::UnknownKind { .. })
            ));
        }
        let mut wire = BytesMut::new();
        Ready.encode(&mut wire);
        assert_eq!(&wire[..], &[0, 1, kind::READY]);
        let mut partial = BytesMut::from(&wire[..2]);
        assert_eq!(Ready::decode_frame(&mut partial).unwrap(), None);
        assert_eq!(Ready::decode_frame(&mut wire).unwrap(), Some(Ready));
        for wrong in [
            &[0u8, 2, kind::READY, 0][..],
            &[0, 1, kind::CANDIDATES],
            &[0, 0],
        ] {
            assert!(Ready::decode_frame(&mut BytesMut::from(wrong)).is_err());
        }
    }

    #[test]
    fn a_path_check_round_trips_and_nothing_else_passes_for_one() {
        let check = PathCheck {
            binding: [0xa5; BINDING_LEN],
        };
        let mut wire = BytesMut::new();
        check.encode(&mut wire);
        assert_eq!(wire.len(), 2 + 1 + BINDING_LEN);
        let mut partial = BytesMut::from(&wire[..wire.len() - 1]);
        assert_eq!(PathCheck::decode_frame(&mut partial).unwrap(), None);
        assert_eq!(PathCheck::decode_frame(&mut wire).unwrap(), Some(check));
        assert!(wire.is_empty());
        // Short, long, or candidates where a check is due.
        let mut body = vec![kind::PATH_CHECK];
        body.extend_from_slice(&[1; BINDING_LEN - 1]);
        assert!(PathCheck::decode(&body).is_err());
        body.extend_from_slice(&[1; 2]);
        assert!(PathCheck::decode(&body).is_err());
        assert!(matches!(
            PathCheck::decode(&[kind::CANDIDATES, 0]),
            Err(DecodeError::UnknownKind { kind: 0x01 })
        ));
        // And a check where candidates are due.
        let mut wire = BytesMut::new();
        check.encode(&mut wire);
        assert!(Candidates::decode_frame(&mut wire).is_err());
    }

    proptest::proptest! {
        #[test]
        fn decoded_candidates_re_encode_to_the_same_bytes(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80)) {
            if let Ok(candidates) = Candidates::decode(&body) {
                let mut wire = BytesMut::new();
                candidates.encode(&mut wire);
                proptest::prop_assert_eq!(&wire[2..], &body[..]);
            }
        }
    }
}
