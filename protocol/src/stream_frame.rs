//! Stream frames: one QUIC stream's worth of semantics over a byte stream.
//!
//! On the stream transports (TLS 1.3 over TCP, and WebSocket over that), a
//! connection carries exactly one stream: the equivalent of one bidirectional QUIC
//! stream, with its ends, its codes and its connection's close. Everything the QUIC
//! stream would carry (control messages, the Noise session) travels in `DATA`
//! frames; the frames around them say what QUIC says in its own frames:
//!
//! ```text
//! type u8, then:
//! 0x00 DATA   length u16 (1 ..= MAX_DATA_LEN), that many bytes of the stream
//! 0x01 FIN    (empty)             this direction of the stream ends cleanly
//! 0x02 RESET  code u32            this direction ends abruptly (RESET_STREAM)
//! 0x03 STOP   code u32            stop sending to me (STOP_SENDING)
//! 0x04 CLOSE  code u32, reason length u16 (<= MAX_REASON_LEN), reason (UTF-8)
//!                                 the connection ends (CONNECTION_CLOSE)
//! 0x05 PING   opaque [u8; 8]      answer with PONG
//! 0x06 PONG   [u8; 8] from the PING
//! ```
//!
//! Integers are big-endian. Codes are the protocol's ([`crate::codes`]): stream codes
//! in `RESET` and `STOP`, close codes in `CLOSE`. Frame boundaries mean nothing to
//! the stream: a control message may be split across `DATA` frames and one `DATA`
//! frame may hold the end of one message and the start of the next, exactly as QUIC
//! STREAM frames do. PROTOCOL.md section 17 has the rules for each end.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::codes::{CloseCode, StreamCode};
use crate::error::DecodeError;

/// Largest payload of one `DATA` frame: the size of a TLS record's plaintext, so a
/// frame fills a record and never needs two.
pub const MAX_DATA_LEN: usize = 16 * 1024;

/// Longest reason in a `CLOSE` frame, in bytes.
pub const MAX_REASON_LEN: usize = 256;

/// Bytes before a `DATA` frame's payload: its type and length.
pub const DATA_HEADER_LEN: usize = 3;

/// Largest frame of any type, in bytes.
pub const MAX_FRAME_LEN: usize = DATA_HEADER_LEN + MAX_DATA_LEN;

mod kind {
    pub const DATA: u8 = 0x00;
    pub const FIN: u8 = 0x01;
    pub const RESET: u8 = 0x02;
    pub const STOP: u8 = 0x03;
    pub const CLOSE: u8 = 0x04;
    pub const PING: u8 = 0x05;
    pub const PONG: u8 = 0x06;
}

/// One frame of a stream transport (see the module documentation).
#[derive(Clone, PartialEq, Eq)]
pub enum StreamFrame {
    /// Bytes of the stream, in order: 1 to [`MAX_DATA_LEN`] of them.
    Data(Bytes),
    /// The sender's direction of the stream ended cleanly after its data.
    Fin,
    /// The sender's direction ended abruptly; data not yet read may be dropped.
    Reset(StreamCode),
    /// The receiver of this frame should stop sending; what it sends is discarded.
    Stop(StreamCode),
    /// The connection ends: nothing more follows in either direction.
    Close {
        /// Why (a close code: [`crate::codes::close`]).
        code: CloseCode,
        /// Words for a person, at most [`MAX_REASON_LEN`] bytes.
        reason: String,
    },
    /// Asks the other end to answer with [`StreamFrame::Pong`] carrying the same bytes.
    Ping([u8; 8]),
    /// The answer to a [`StreamFrame::Ping`].
    Pong([u8; 8]),
}

impl std::fmt::Debug for StreamFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // Session bytes are ciphertext or control messages: their length only.
            Self::Data(data) => write!(f, "Data(<{} bytes>)", data.len()),
            Self::Fin => f.write_str("Fin"),
            Self::Reset(code) => write!(f, "Reset({code:?})"),
            Self::Stop(code) => write!(f, "Stop({code:?})"),
            Self::Close { code, reason } => write!(f, "Close({code:?}, {reason:?})"),
            Self::Ping(_) => f.write_str("Ping"),
            Self::Pong(_) => f.write_str("Pong"),
        }
    }
}

impl StreamFrame {
    /// The frame's encoded size.
    pub fn encoded_len(&self) -> usize {
        1 + match self {
            Self::Data(data) => 2 + data.len(),
            Self::Fin => 0,
            Self::Reset(_) | Self::Stop(_) => 4,
            Self::Close { reason, .. } => 4 + 2 + truncate_utf8(reason).len(),
            Self::Ping(_) | Self::Pong(_) => 8,
        }
    }

    /// Appends the frame to `out`.
    ///
    /// # Panics
    ///
    /// If a `Data` frame is empty or longer than [`MAX_DATA_LEN`]: a writer splits
    /// what it sends into frames, and an empty one would mean nothing.
    pub fn encode(&self, out: &mut impl BufMut) {
        match self {
            Self::Data(data) => {
                assert!(
                    !data.is_empty() && data.len() <= MAX_DATA_LEN,
                    "a DATA frame holds 1 to {MAX_DATA_LEN} bytes, not {}",
                    data.len()
                );
                out.put_u8(kind::DATA);
                out.put_u16(data.len() as u16);
                out.put_slice(data);
            }
            Self::Fin => out.put_u8(kind::FIN),
            Self::Reset(code) => {
                out.put_u8(kind::RESET);
                out.put_u32(code.to_u32());
            }
            Self::Stop(code) => {
                out.put_u8(kind::STOP);
                out.put_u32(code.to_u32());
            }
            Self::Close { code, reason } => {
                let reason = truncate_utf8(reason);
                out.put_u8(kind::CLOSE);
                out.put_u32(code.to_u32());
                out.put_u16(reason.len() as u16);
                out.put_slice(reason.as_bytes());
            }
            Self::Ping(opaque) => {
                out.put_u8(kind::PING);
                out.put_slice(opaque);
            }
            Self::Pong(opaque) => {
                out.put_u8(kind::PONG);
                out.put_slice(opaque);
            }
        }
    }

    /// The payload length of the `DATA` frame at the front of `buf`, when one is
    /// there whole and valid: for a reader that takes small payloads straight from
    /// its buffer (then advances past [`DATA_HEADER_LEN`] and the payload) instead
    /// of splitting each off with [`StreamFrame::decode`].
    pub fn complete_data_len(buf: &[u8]) -> Option<usize> {
        let [kind::DATA, high, low, ..] = *buf else {
            return None;
        };
        let len = usize::from(u16::from_be_bytes([high, low]));
        ((1..=MAX_DATA_LEN).contains(&len) && buf.len() >= DATA_HEADER_LEN + len).then_some(len)
    }

    /// Decodes one frame from the front of `buf` if it is complete, consuming it;
    /// `Ok(None)` when more bytes are needed. A `DATA` frame's payload is split off
    /// `buf` without a copy. An invalid frame is refused as soon as its first bytes
    /// show it (an unknown type, a length out of range), before the rest arrives.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Self>, DecodeError> {
        let Some(&kind) = buf.first() else {
            return Ok(None);
        };
        let need = |len: usize, buf: &BytesMut| buf.len() >= len;
        let frame = match kind {
            kind::DATA => {
                let Some(prefix) = buf.get(1..3) else {
                    return Ok(None);
                };
                let len = usize::from(u16::from_be_bytes([prefix[0], prefix[1]]));
                if len == 0 || len > MAX_DATA_LEN {
                    return Err(DecodeError::InvalidField {
                        field: "stream DATA frame",
                        reason: "length must be 1 to 16384",
                    });
                }
                if !need(DATA_HEADER_LEN + len, buf) {
                    return Ok(None);
                }
                buf.advance(DATA_HEADER_LEN);
                Self::Data(buf.split_to(len).freeze())
            }
            kind::FIN => {
                buf.advance(1);
                Self::Fin
            }
            kind::RESET | kind::STOP => {
                if !need(5, buf) {
                    return Ok(None);
                }
                buf.advance(1);
                let code = StreamCode::from_u32(buf.get_u32());
                if kind == kind::RESET {
                    Self::Reset(code)
                } else {
                    Self::Stop(code)
                }
            }
            kind::CLOSE => {
                let Some(head) = buf.get(..7) else {
                    return Ok(None);
                };
                let len = usize::from(u16::from_be_bytes([head[5], head[6]]));
                if len > MAX_REASON_LEN {
                    return Err(DecodeError::FieldTooLong {
                        field: "close reason",
                        len,
                        max: MAX_REASON_LEN,
                    });
                }
                if !need(7 + len, buf) {
                    return Ok(None);
                }
                buf.advance(1);
                let code = CloseCode::from_u32(buf.get_u32());
                buf.advance(2);
                let reason = buf.split_to(len);
                let reason =
                    std::str::from_utf8(&reason).map_err(|_| DecodeError::InvalidField {
                        field: "close reason",
                        reason: "not UTF-8",
                    })?;
                Self::Close {
                    code,
                    reason: reason.to_owned(),
                }
            }
            kind::PING | kind::PONG => {
                if !need(9, buf) {
                    return Ok(None);
                }
                buf.advance(1);
                let mut opaque = [0u8; 8];
                buf.copy_to_slice(&mut opaque);
                if kind == kind::PING {
                    Self::Ping(opaque)
                } else {
                    Self::Pong(opaque)
                }
            }
            kind => return Err(DecodeError::UnknownKind { kind }),
        };
        Ok(Some(frame))
    }
}

/// The longest prefix of `text` within [`MAX_REASON_LEN`] bytes, on a character
/// boundary.
fn truncate_utf8(text: &str) -> &str {
    let mut end = text.len().min(MAX_REASON_LEN);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codes::{close, stream};
    use proptest::prelude::*;

    fn hex(frame: &StreamFrame) -> String {
        let mut out = BytesMut::new();
        frame.encode(&mut out);
        assert_eq!(out.len(), frame.encoded_len(), "{frame:?}");
        out.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn wire_format_is_pinned() {
        let cases = [
            (
                StreamFrame::Data(Bytes::from_static(b"abc")),
                "000003616263",
            ),
            (StreamFrame::Fin, "01"),
            (StreamFrame::Reset(stream::PEER_GONE), "0200000100"),
            (StreamFrame::Stop(stream::REFUSED), "0300000101"),
            (
                StreamFrame::Close {
                    code: close::IDLE,
                    reason: "idle".to_owned(),
                },
                &format!("04{:08x}000469646c65", close::IDLE.to_u32()),
            ),
            (
                StreamFrame::Ping([1, 2, 3, 4, 5, 6, 7, 8]),
                "050102030405060708",
            ),
            (StreamFrame::Pong([8; 8]), "060808080808080808"),
        ];
        for (frame, expected) in cases {
            assert_eq!(hex(&frame), expected, "{frame:?}");
        }
    }

    #[test]
    fn bad_frames_are_refused_before_their_body() {
        for (bytes, what) in [
            (&[0x00, 0x00, 0x00][..], "empty DATA"),
            (&[0x00, 0x40, 0x01][..], "DATA over 16 KiB"),
            (&[0x07][..], "unknown type"),
            (&[0x04, 0, 0, 0, 1, 0x01, 0x01][..], "257-byte reason"),
        ] {
            let mut buf = BytesMut::from(bytes);
            assert!(StreamFrame::decode(&mut buf).is_err(), "{what}");
        }
    }

    #[test]
    fn a_close_reason_must_be_utf8() {
        let mut buf = BytesMut::from(&[0x04, 0, 0, 0, 1, 0, 1, 0xff][..]);
        assert!(StreamFrame::decode(&mut buf).is_err());
    }

    #[test]
    fn long_reasons_are_cut_on_a_character_boundary() {
        let frame = StreamFrame::Close {
            code: close::IDLE,
            reason: "é".repeat(200),
        };
        let mut buf = BytesMut::new();
        frame.encode(&mut buf);
        let Ok(Some(StreamFrame::Close { reason, .. })) = StreamFrame::decode(&mut buf) else {
            panic!("a cut reason decodes");
        };
        assert_eq!(reason, "é".repeat(128));
    }

    fn any_frame() -> impl Strategy<Value = StreamFrame> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 1..=MAX_DATA_LEN)
                .prop_map(|data| StreamFrame::Data(data.into())),
            Just(StreamFrame::Fin),
            any::<u32>().prop_map(|code| StreamFrame::Reset(StreamCode::from_u32(code))),
            any::<u32>().prop_map(|code| StreamFrame::Stop(StreamCode::from_u32(code))),
            (any::<u32>(), "\\PC{0,80}").prop_map(|(code, reason)| StreamFrame::Close {
                code: CloseCode::from_u32(code),
                reason
            }),
            any::<[u8; 8]>().prop_map(StreamFrame::Ping),
            any::<[u8; 8]>().prop_map(StreamFrame::Pong),
        ]
    }

    proptest! {
        #[test]
        fn frames_round_trip_whatever_the_split(
            frames in proptest::collection::vec(any_frame(), 1..6),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut wire = BytesMut::new();
            for frame in &frames {
                frame.encode(&mut wire);
            }
            // Delivered in two pieces, cut anywhere: nothing decodes early or wrong.
            let cut = cut.index(wire.len() + 1);
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut decoded = Vec::new();
            while let Some(frame) = StreamFrame::decode(&mut buf).expect("valid frames") {
                decoded.push(frame);
            }
            buf.extend_from_slice(&wire[cut..]);
            while let Some(frame) = StreamFrame::decode(&mut buf).expect("valid frames") {
                decoded.push(frame);
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(decoded, frames);
        }

        /// `complete_data_len` says a DATA frame is there whole exactly when
        /// `decode` would return it, with that many bytes.
        #[test]
        fn complete_data_len_agrees_with_decode(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
            frame in any_frame(),
        ) {
            for candidate in [bytes.clone(), {
                let mut wire = Vec::new();
                frame.encode(&mut wire);
                wire.extend_from_slice(&bytes);
                wire
            }] {
                let peeked = StreamFrame::complete_data_len(&candidate);
                let decoded = StreamFrame::decode(&mut BytesMut::from(&candidate[..]));
                match decoded {
                    Ok(Some(StreamFrame::Data(data))) => prop_assert_eq!(peeked, Some(data.len())),
                    _ => prop_assert_eq!(peeked, None),
                }
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = StreamFrame::decode(&mut buf) {}
        }
    }
}
