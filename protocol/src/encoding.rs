//! Small helpers shared by the codecs: the text encoding of keys and tickets, and a
//! bounds-checked reader for binary messages.
//!
//! Text forms use RFC 4648 base32 without padding, written in lower case and read in
//! either case: no characters that URLs, shells or chat clients mangle, and easy to
//! read aloud.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::error::DecodeError;

/// Encodes bytes as lower-case unpadded base32.
pub fn base32_encode(bytes: &[u8]) -> String {
    data_encoding::BASE32_NOPAD
        .encode(bytes)
        .to_ascii_lowercase()
}

/// Decodes unpadded base32 in either case; `None` when the text is not base32.
pub fn base32_decode(text: &str) -> Option<Vec<u8>> {
    data_encoding::BASE32_NOPAD_NOCASE
        .decode(text.as_bytes())
        .ok()
}

/// A reader over a received message that never reads past its end.
///
/// Every accessor returns [`DecodeError::Truncated`] instead of panicking when the
/// message is shorter than the field it asks for.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Starts reading at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Takes the next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated {
                needed: n,
                available: self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Takes a fixed-size array.
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// Takes one byte.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    /// Takes a big-endian `u16`.
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    /// Takes a big-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// Takes a big-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    /// Takes a `u16`-length-prefixed byte string of at most `max` bytes.
    pub fn bytes16(&mut self, field: &'static str, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = usize::from(self.u16()?);
        if len > max {
            return Err(DecodeError::FieldTooLong { field, len, max });
        }
        self.take(len)
    }

    /// Takes a `u16`-length-prefixed UTF-8 string of at most `max` bytes.
    pub fn string16(&mut self, field: &'static str, max: usize) -> Result<&'a str, DecodeError> {
        let bytes = self.bytes16(field, max)?;
        std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8 { field })
    }

    /// Takes a socket address: a family byte (4 or 6), the address's 4 or 16
    /// bytes, and the port, big-endian ([`put_socket_addr`]).
    pub fn socket_addr(&mut self) -> Result<SocketAddr, DecodeError> {
        let ip = match self.u8()? {
            4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>()?)),
            6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>()?)),
            _ => {
                return Err(DecodeError::InvalidField {
                    field: "address family",
                    reason: "must be 4 or 6",
                })
            }
        };
        Ok(SocketAddr::new(ip, self.u16()?))
    }

    /// Fails unless every byte has been read: trailing garbage is an error, not padding.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                count: self.buf.len(),
            })
        }
    }
}

/// Appends `addr` as [`Reader::socket_addr`] reads it: 7 bytes for IPv4, 19 for IPv6.
pub fn put_socket_addr(out: &mut impl bytes::BufMut, addr: SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.put_u8(4);
            out.put_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.put_u8(6);
            out.put_slice(&ip.octets());
        }
    }
    out.put_u16(addr.port());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_round_trips_and_reads_either_case() {
        let bytes = [0u8, 1, 2, 250, 251, 255];
        let text = base32_encode(&bytes);
        assert_eq!(text, text.to_ascii_lowercase());
        assert_eq!(base32_decode(&text).as_deref(), Some(&bytes[..]));
        assert_eq!(
            base32_decode(&text.to_ascii_uppercase()).as_deref(),
            Some(&bytes[..])
        );
        assert_eq!(base32_decode("not base32!"), None);
    }

    #[test]
    fn reader_refuses_to_read_past_the_end() {
        let mut r = Reader::new(&[0, 5, 1, 2]);
        assert_eq!(
            r.bytes16("x", 100),
            Err(DecodeError::Truncated {
                needed: 5,
                available: 2
            })
        );
        let mut r = Reader::new(&[0, 5, 1, 2, 3, 4, 5]);
        assert_eq!(
            r.bytes16("x", 4),
            Err(DecodeError::FieldTooLong {
                field: "x",
                len: 5,
                max: 4
            })
        );
        let r = Reader::new(&[1]);
        assert_eq!(r.finish(), Err(DecodeError::TrailingBytes { count: 1 }));
    }

    #[test]
    fn socket_addresses_round_trip_and_an_unknown_family_is_refused() {
        for text in ["203.0.113.7:40123", "[2001:db8::7]:443"] {
            let addr: SocketAddr = text.parse().unwrap();
            let mut out = Vec::new();
            put_socket_addr(&mut out, addr);
            assert_eq!(out.len(), if addr.is_ipv4() { 7 } else { 19 });
            let mut r = Reader::new(&out);
            assert_eq!(r.socket_addr().unwrap(), addr);
            r.finish().unwrap();
        }
        let mut r = Reader::new(&[5, 0, 0]);
        assert!(matches!(
            r.socket_addr(),
            Err(DecodeError::InvalidField { .. })
        ));
    }
}
