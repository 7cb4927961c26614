//! Control messages between hosts, players and the relay, and their binary codec.
//!
//! Every control message travels in one frame:
//!
//! ```text
//! length   u16 big-endian: bytes that follow (2 ..= MAX_FRAME_LEN)
//! version  u8  = PROTOCOL_VERSION
//! kind     u8
//! body     depends on kind (all integers big-endian)
//! ```
//!
//! | kind | message      | direction        | body                                   |
//! |------|--------------|------------------|----------------------------------------|
//! | 0x01 | `Register`   | host → relay     | host id `[u8; 32]`, then optionally a registration token: `u16` length (1 ..= 256) + bytes |
//! | 0x02 | `Challenge`  | relay → host     | relay ephemeral X25519 key `[u8; 32]`  |
//! | 0x03 | `Proof`      | host → relay     | HMAC-SHA256 `[u8; 32]`                 |
//! | 0x04 | `Registered` | relay → host     | (empty)                                |
//! | 0x05 | `GoingAway`  | relay → host     | retry after (ms) `u32`                 |
//! | 0x06 | `Dial`       | relay → host     | session id `u64`, secret `[u8; 16]`    |
//! | 0x09 | `Renew`      | host → relay     | registration token: `u16` length (1 ..= 256) + bytes |
//! | 0x10 | `Connect`    | player → relay   | host id `[u8; 32]`                     |
//! | 0x11 | `Connected`  | relay → player   | session id `u64`, [`SessionLimits`] (36 B) |
//! | 0x12 | `Incoming`   | relay → host     | session id `u64`, [`SessionLimits`] (36 B) |
//! | 0x13 | `Accept`     | host → relay     | session id `u64`, secret `[u8; 16]`    |
//! | 0x7f | `Error`      | relay → anyone   | code `u16`, reason `u16` len + UTF-8 (<= 256) |
//!
//! The registration flow is `Register`, `Challenge`, `Proof`, `Registered` on the
//! first stream a host opens (see [`crate::registration`]). A session starts with
//! `Connect` on a stream the player opens and `Connected` back; the relay opens a
//! stream to the host and writes `Incoming`. After `Connected`/`Incoming` the stream
//! carries only the Noise session (see [`crate::noise`]), which the relay forwards
//! without parsing.
//!
//! On a stream transport (TLS over TCP, WebSocket: [`crate::stream_frame`]) a
//! connection carries one stream, so the relay cannot open one to a host: it sends
//! `Dial` on the host's registration stream instead, and the host opens a new
//! connection whose first message is `Accept` with the same session id and secret.
//! The relay answers `Incoming` there, and the stream goes on as on QUIC.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

use crate::encoding::{put_socket_addr, Reader};
use crate::error::{DecodeError, ErrorCode};
use crate::keys::{HostId, PublicKey};
use crate::limits::SessionLimits;
use crate::placement::{check_member_name, MAX_MEMBER_NAME_LEN, MAX_REDIRECT_MEMBERS};
use crate::PROTOCOL_VERSION;

/// Largest value of a control frame's length prefix.
pub const MAX_FRAME_LEN: usize = 1024;

/// Longest reason text in an [`ControlMessage::Error`], in bytes.
pub const MAX_REASON_LEN: usize = 256;

/// Length of a registration proof.
pub const PROOF_LEN: usize = 32;

/// Longest registration token a `Register` may carry, in bytes. Larger than any token
/// this version issues ([`crate::token::MAX_TOKEN_LEN`]), so a later token version
/// has room, and small enough that the frame stays far below [`MAX_FRAME_LEN`].
pub const MAX_REGISTER_TOKEN_LEN: usize = 256;

/// Length of the secret in [`ControlMessage::Dial`] and [`ControlMessage::Accept`].
pub const DIAL_SECRET_LEN: usize = 16;

/// A control message (see the module documentation for the wire format).
///
/// Its `Debug` names the message kind and shows host ids, keys, proofs and tokens as
/// lengths only: a token embeds the whole host id and is the operator's credential,
/// and a debug line is no place for either.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ControlMessage {
    /// A host asks to be reachable under `host_id`.
    Register {
        /// The host id the host claims.
        host_id: HostId,
        /// The operator's registration token in binary form (see [`crate::token`]),
        /// for relays that require one. `None` leaves the field out of the frame.
        token: Option<Vec<u8>>,
        /// How many `Redirect`s the host followed to get here (PROTOCOL.md section
        /// 18.4); 0 leaves the field out of the frame.
        redirects: u8,
    },
    /// The relay's challenge: prove you hold the host id's private key.
    Challenge {
        /// A fresh X25519 key the relay made for this registration only.
        relay_ephemeral: PublicKey,
    },
    /// The host's answer to a [`ControlMessage::Challenge`].
    Proof {
        /// See [`crate::registration`].
        mac: [u8; PROOF_LEN],
    },
    /// The relay accepted the registration.
    Registered,
    /// On the registration stream: the relay is shutting down. The registration has
    /// ended; running sessions go on until the relay closes. Register again, after
    /// `retry_after_ms`, on this relay's URL (a restarted relay) or another.
    GoingAway {
        /// How long to wait before registering again, in milliseconds.
        retry_after_ms: u32,
    },
    /// On the registration stream of a host on a stream transport: a player asks for
    /// a session; open a new connection to the relay and send
    /// [`ControlMessage::Accept`] with this id and secret on it.
    Dial {
        /// The session's id, as `Incoming` will carry it.
        session_id: u64,
        /// Proves to the relay that the new connection comes from this registration's
        /// host: random, made for this session only.
        secret: [u8; DIAL_SECRET_LEN],
    },
    /// On the registration stream, after `Registered`: the host's registration token,
    /// renewed. The relay checks it as it checks a `Register`'s and answers
    /// `Registered`, after which the registration lasts until the new token expires;
    /// a token it refuses ends the registration with that `Error` (PROTOCOL.md
    /// section 8.4).
    Renew {
        /// The new token in binary form (see [`crate::token`]).
        token: Vec<u8>,
    },
    /// A player asks for a session with `host_id`.
    Connect {
        /// The host the player wants.
        host_id: HostId,
        /// How many `Redirect`s the player followed to get here (PROTOCOL.md section
        /// 18.4); 0 leaves the field out of the frame.
        redirects: u8,
    },
    /// The answer to a `Register` or `Connect` from a member of a relay pool that does
    /// not hold the host: ask these members instead, the first first (PROTOCOL.md
    /// section 18.4). The relay finishes its side of the stream afterwards.
    Redirect {
        /// Member names (`host:port`), the host's owner first; 1 to 3 of them.
        members: Vec<String>,
    },
    /// On the registration stream: the host's owner in the pool is now another
    /// member; register there (these members, the first first) and then end this
    /// registration. Running sessions stay where they are (PROTOCOL.md section 18.5).
    Move {
        /// Member names (`host:port`), the host's new owner first; 1 to 3 of them.
        members: Vec<String>,
    },
    /// The relay paired the player's stream with the host: what follows is the
    /// host's side of the session.
    Connected {
        /// Identifies the session in both ends' logs and the relay's.
        session_id: u64,
        /// What the relay allows this session.
        limits: SessionLimits,
    },
    /// On a stream the relay opened to a host: a player's session follows.
    Incoming {
        /// Same id the player got in [`ControlMessage::Connected`].
        session_id: u64,
        /// What the relay allows this session (the same the player was told).
        limits: SessionLimits,
    },
    /// The first message of a host's new connection on a stream transport: the
    /// answer to a [`ControlMessage::Dial`]. The relay answers `Incoming`, and the
    /// connection carries the session's host side.
    Accept {
        /// The session id from the `Dial`.
        session_id: u64,
        /// The secret from the `Dial`.
        secret: [u8; DIAL_SECRET_LEN],
    },
    /// A client asks which address the relay sees it connect from (PROTOCOL.md
    /// 10.9), as the first and only message of its own stream. Any connection may ask,
    /// a registered host's too; the relay answers `Observed` and finishes.
    Observe,
    /// The answer to `Observe`: the address and port the relay sees the asking
    /// connection come from (after every NAT on the way).
    Observed {
        /// The connection's remote address, as the relay sees it.
        addr: std::net::SocketAddr,
    },
    /// Sent after `Observed` on the same stream by a relay with a probe port: it
    /// answers `Observe` on that UDP port of the same address too (and nothing
    /// else there). A client that asks there from the same socket and is seen from
    /// another address is behind a NAT that maps each destination anew.
    ProbePort {
        /// The probe port.
        port: u16,
    },
    /// The relay refuses a request; it finishes its side of the stream afterwards.
    Error {
        /// Machine-readable reason.
        code: ErrorCode,
        /// Human-readable reason, at most [`MAX_REASON_LEN`] bytes.
        reason: String,
    },
}

impl fmt::Debug for ControlMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct(self.name());
        match self {
            Self::Register {
                host_id,
                token,
                redirects,
            } => {
                out.field("host_id", &Redacted(host_id.as_bytes().len()));
                out.field("token", &token.as_ref().map(|token| Redacted(token.len())));
                if *redirects > 0 {
                    out.field("redirects", redirects);
                }
            }
            Self::Challenge { relay_ephemeral } => {
                out.field(
                    "relay_ephemeral",
                    &Redacted(relay_ephemeral.as_bytes().len()),
                );
            }
            Self::Proof { mac } => {
                out.field("mac", &Redacted(mac.len()));
            }
            Self::Registered | Self::Observe => {}
            // The asker's own address, which it already knows: shown only as its
            // family, as the relay's logs show addresses.
            Self::Observed { addr } => {
                out.field("addr", &Redacted(if addr.is_ipv4() { 4 } else { 16 }));
            }
            Self::ProbePort { port } => {
                out.field("port", port);
            }
            Self::Renew { token } => {
                out.field("token", &Redacted(token.len()));
            }
            Self::GoingAway { retry_after_ms } => {
                out.field("retry_after_ms", retry_after_ms);
            }
            Self::Connect { host_id, redirects } => {
                out.field("host_id", &Redacted(host_id.as_bytes().len()));
                if *redirects > 0 {
                    out.field("redirects", redirects);
                }
            }
            Self::Redirect { members } | Self::Move { members } => {
                out.field("members", members);
            }
            Self::Dial { session_id, secret } | Self::Accept { session_id, secret } => {
                out.field("session_id", session_id);
                out.field("secret", &Redacted(secret.len()));
            }
            Self::Connected { session_id, limits } | Self::Incoming { session_id, limits } => {
                out.field("session_id", session_id);
                out.field("limits", limits);
            }
            Self::Error { code, reason } => {
                out.field("code", code);
                out.field("reason", reason);
            }
        }
        out.finish()
    }
}

/// Stands in for a secret or identifying field in `Debug` output: its length only.
struct Redacted(usize);

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes>", self.0)
    }
}

mod kind {
    pub const REGISTER: u8 = 0x01;
    pub const CHALLENGE: u8 = 0x02;
    pub const PROOF: u8 = 0x03;
    pub const REGISTERED: u8 = 0x04;
    pub const GOING_AWAY: u8 = 0x05;
    pub const DIAL: u8 = 0x06;
    pub const REDIRECT: u8 = 0x07;
    pub const MOVE: u8 = 0x08;
    pub const RENEW: u8 = 0x09;
    pub const CONNECT: u8 = 0x10;
    pub const CONNECTED: u8 = 0x11;
    pub const INCOMING: u8 = 0x12;
    pub const ACCEPT: u8 = 0x13;
    pub const OBSERVE: u8 = 0x14;
    pub const OBSERVED: u8 = 0x15;
    pub const PROBE_PORT: u8 = 0x16;
    pub const ERROR: u8 = 0x7f;
}

impl ControlMessage {
    /// A `Register` without a token.
    pub fn register(host_id: HostId) -> Self {
        Self::Register {
            host_id,
            token: None,
            redirects: 0,
        }
    }

    /// A `Connect` from a player that followed no redirect.
    pub fn connect(host_id: HostId) -> Self {
        Self::Connect {
            host_id,
            redirects: 0,
        }
    }

    /// The message's name, for errors and logs that must not show its fields (a
    /// `Register` carries a token, which is a credential).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Register { .. } => "Register",
            Self::Challenge { .. } => "Challenge",
            Self::Proof { .. } => "Proof",
            Self::Registered => "Registered",
            Self::Renew { .. } => "Renew",
            Self::GoingAway { .. } => "GoingAway",
            Self::Dial { .. } => "Dial",
            Self::Redirect { .. } => "Redirect",
            Self::Move { .. } => "Move",
            Self::Accept { .. } => "Accept",
            Self::Connect { .. } => "Connect",
            Self::Connected { .. } => "Connected",
            Self::Incoming { .. } => "Incoming",
            Self::Observe => "Observe",
            Self::Observed { .. } => "Observed",
            Self::ProbePort { .. } => "ProbePort",
            Self::Error { .. } => "Error",
        }
    }

    /// An [`ControlMessage::Error`]; the reason is cut to [`MAX_REASON_LEN`] bytes on a
    /// character boundary.
    pub fn error(code: ErrorCode, reason: impl Into<String>) -> Self {
        let mut reason = reason.into();
        let len = truncate_utf8(&reason, MAX_REASON_LEN).len();
        reason.truncate(len);
        Self::Error { code, reason }
    }

    /// Appends the whole frame, length prefix included, to `out`.
    pub fn encode(&self, out: &mut impl BufMut) {
        let mut body = BytesMut::with_capacity(64);
        body.put_u8(PROTOCOL_VERSION);
        match self {
            Self::Register {
                host_id,
                token,
                redirects,
            } => {
                body.put_u8(kind::REGISTER);
                body.put_slice(host_id.as_bytes());
                if let Some(token) = token {
                    // A token built by hand that is too long is cut here, so the frame
                    // stays within its limit; the relay will refuse it as malformed.
                    let token = &token[..token.len().min(MAX_REGISTER_TOKEN_LEN)];
                    body.put_u16(token.len() as u16);
                    body.put_slice(token);
                }
                if *redirects > 0 {
                    body.put_u8(*redirects);
                }
            }
            Self::Challenge { relay_ephemeral } => {
                body.put_u8(kind::CHALLENGE);
                body.put_slice(relay_ephemeral.as_bytes());
            }
            Self::Proof { mac } => {
                body.put_u8(kind::PROOF);
                body.put_slice(mac);
            }
            Self::Registered => body.put_u8(kind::REGISTERED),
            Self::Renew { token } => {
                body.put_u8(kind::RENEW);
                // Cut like a `Register`'s token: the relay refuses it as malformed.
                let token = &token[..token.len().min(MAX_REGISTER_TOKEN_LEN)];
                body.put_u16(token.len() as u16);
                body.put_slice(token);
            }
            Self::GoingAway { retry_after_ms } => {
                body.put_u8(kind::GOING_AWAY);
                body.put_u32(*retry_after_ms);
            }
            Self::Dial { session_id, secret } => {
                body.put_u8(kind::DIAL);
                body.put_u64(*session_id);
                body.put_slice(secret);
            }
            Self::Accept { session_id, secret } => {
                body.put_u8(kind::ACCEPT);
                body.put_u64(*session_id);
                body.put_slice(secret);
            }
            Self::Connect { host_id, redirects } => {
                body.put_u8(kind::CONNECT);
                body.put_slice(host_id.as_bytes());
                if *redirects > 0 {
                    body.put_u8(*redirects);
                }
            }
            Self::Redirect { members } => {
                body.put_u8(kind::REDIRECT);
                put_members(&mut body, members);
            }
            Self::Move { members } => {
                body.put_u8(kind::MOVE);
                put_members(&mut body, members);
            }
            Self::Connected { session_id, limits } => {
                body.put_u8(kind::CONNECTED);
                body.put_u64(*session_id);
                limits.encode(&mut body);
            }
            Self::Incoming { session_id, limits } => {
                body.put_u8(kind::INCOMING);
                body.put_u64(*session_id);
                limits.encode(&mut body);
            }
            Self::Observe => body.put_u8(kind::OBSERVE),
            Self::Observed { addr } => {
                body.put_u8(kind::OBSERVED);
                put_socket_addr(&mut body, *addr);
            }
            Self::ProbePort { port } => {
                body.put_u8(kind::PROBE_PORT);
                body.put_u16(*port);
            }
            Self::Error { code, reason } => {
                body.put_u8(kind::ERROR);
                body.put_u16(code.to_u16());
                // A reason built by `ControlMessage::error` is already short enough;
                // one built by hand is cut here so the frame stays within its limit.
                let reason = truncate_utf8(reason, MAX_REASON_LEN);
                body.put_u16(reason.len() as u16);
                body.put_slice(reason.as_bytes());
            }
        }
        // Every body above is at most 2 + 32 + 2 + MAX_REGISTER_TOKEN_LEN + 1 bytes,
        // or 3 + 3 × (1 + MAX_MEMBER_NAME_LEN) for a member list: within u16 and
        // MAX_FRAME_LEN.
        out.put_u16(body.len() as u16);
        out.put_slice(&body);
    }

    /// The whole frame, length prefix included.
    pub fn to_frame(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        out.freeze()
    }

    /// Decodes a frame's content: everything after the length prefix.
    pub fn decode(frame: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(frame);
        let version = r.u8()?;
        if version != PROTOCOL_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                version,
                supported: PROTOCOL_VERSION,
            });
        }
        let message = match r.u8()? {
            kind::REGISTER => {
                let host_id = HostId::from_bytes(r.array()?);
                // After the host id: nothing, a lone redirect count, or a token
                // (a length of at least 1 and its bytes) and then perhaps the count.
                let token = if r.remaining() <= 1 {
                    None
                } else {
                    let token = r.bytes16("registration token", MAX_REGISTER_TOKEN_LEN)?;
                    // One encoding per message: "no token" is the absent field, never
                    // a zero length.
                    if token.is_empty() {
                        return Err(DecodeError::InvalidField {
                            field: "registration token",
                            reason: "empty; leave the field out instead",
                        });
                    }
                    Some(token.to_vec())
                };
                let redirects = redirect_count(&mut r)?;
                Self::Register {
                    host_id,
                    token,
                    redirects,
                }
            }
            kind::CHALLENGE => Self::Challenge {
                relay_ephemeral: PublicKey::from_bytes(r.array()?),
            },
            kind::PROOF => Self::Proof { mac: r.array()? },
            kind::REGISTERED => Self::Registered,
            kind::RENEW => {
                let token = r.bytes16("registration token", MAX_REGISTER_TOKEN_LEN)?;
                if token.is_empty() {
                    return Err(DecodeError::InvalidField {
                        field: "registration token",
                        reason: "empty",
                    });
                }
                Self::Renew {
                    token: token.to_vec(),
                }
            }
            kind::GOING_AWAY => Self::GoingAway {
                retry_after_ms: r.u32()?,
            },
            kind::DIAL => Self::Dial {
                session_id: r.u64()?,
                secret: r.array()?,
            },
            kind::ACCEPT => Self::Accept {
                session_id: r.u64()?,
                secret: r.array()?,
            },
            kind::CONNECT => Self::Connect {
                host_id: HostId::from_bytes(r.array()?),
                redirects: redirect_count(&mut r)?,
            },
            kind::REDIRECT => Self::Redirect {
                members: members(&mut r)?,
            },
            kind::MOVE => Self::Move {
                members: members(&mut r)?,
            },
            kind::CONNECTED => Self::Connected {
                session_id: r.u64()?,
                limits: SessionLimits::decode(&mut r)?,
            },
            kind::INCOMING => Self::Incoming {
                session_id: r.u64()?,
                limits: SessionLimits::decode(&mut r)?,
            },
            kind::OBSERVE => Self::Observe,
            kind::OBSERVED => Self::Observed {
                addr: r.socket_addr()?,
            },
            kind::PROBE_PORT => Self::ProbePort { port: r.u16()? },
            kind::ERROR => Self::Error {
                code: ErrorCode::from_u16(r.u16()?),
                reason: r.string16("error reason", MAX_REASON_LEN)?.to_owned(),
            },
            kind => return Err(DecodeError::UnknownKind { kind }),
        };
        r.finish()?;
        Ok(message)
    }

    /// Decodes one frame from the front of `buf` if it is complete, consuming it.
    ///
    /// Returns `Ok(None)` when more bytes are needed. An announced length over
    /// [`MAX_FRAME_LEN`] is refused at once, before its body arrives.
    pub fn decode_frame(buf: &mut BytesMut) -> Result<Option<Self>, DecodeError> {
        let Some(prefix) = buf.get(..2) else {
            return Ok(None);
        };
        let len = frame_len([prefix[0], prefix[1]])?;
        if buf.len() < 2 + len {
            return Ok(None);
        }
        let frame = buf.split_to(2 + len);
        Self::decode(&frame[2..]).map(Some)
    }
}

/// Writes a member list: a count, then each name with a one-byte length. A list
/// built by hand beyond the limits is cut here, so the frame stays within its
/// limit.
fn put_members(body: &mut BytesMut, members: &[String]) {
    let members = &members[..members.len().min(MAX_REDIRECT_MEMBERS)];
    body.put_u8(members.len() as u8);
    for member in members {
        let name = &member.as_bytes()[..member.len().min(MAX_MEMBER_NAME_LEN)];
        body.put_u8(name.len() as u8);
        body.put_slice(name);
    }
}

/// Reads a member list: 1 to [`MAX_REDIRECT_MEMBERS`] names, each a canonical
/// `host:port`, no name twice.
fn members(r: &mut Reader<'_>) -> Result<Vec<String>, DecodeError> {
    let count = usize::from(r.u8()?);
    if count == 0 || count > MAX_REDIRECT_MEMBERS {
        return Err(DecodeError::InvalidField {
            field: "member list",
            reason: "must name 1 to 3 members",
        });
    }
    let mut members = Vec::with_capacity(count);
    for _ in 0..count {
        let len = usize::from(r.u8()?);
        let name = std::str::from_utf8(r.take(len)?).map_err(|_| DecodeError::InvalidField {
            field: "member name",
            reason: "not host:port",
        })?;
        if check_member_name(name).is_err() {
            return Err(DecodeError::InvalidField {
                field: "member name",
                reason: "not host:port in canonical form",
            });
        }
        if members.iter().any(|seen| seen == name) {
            return Err(DecodeError::InvalidField {
                field: "member list",
                reason: "names a member twice",
            });
        }
        members.push(name.to_owned());
    }
    Ok(members)
}

/// Reads the optional redirect count at the end of a `Register` or `Connect`: absent
/// means 0, and one encoding per message means a present count is never 0.
fn redirect_count(r: &mut Reader<'_>) -> Result<u8, DecodeError> {
    if r.remaining() == 0 {
        return Ok(0);
    }
    match r.u8()? {
        0 => Err(DecodeError::InvalidField {
            field: "redirect count",
            reason: "zero; leave the field out instead",
        }),
        count => Ok(count),
    }
}

/// The longest prefix of `text` that is at most `max` bytes and ends on a character
/// boundary.
fn truncate_utf8(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Checks a frame's length prefix and returns the length of the content that follows.
pub fn frame_len(prefix: [u8; 2]) -> Result<usize, DecodeError> {
    let len = usize::from(u16::from_be_bytes(prefix));
    if len > MAX_FRAME_LEN {
        return Err(DecodeError::FieldTooLong {
            field: "control frame",
            len,
            max: MAX_FRAME_LEN,
        });
    }
    if len < 2 {
        return Err(DecodeError::Truncated {
            needed: 2,
            available: len,
        });
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn all_messages() -> Vec<ControlMessage> {
        vec![
            ControlMessage::register(HostId::from_bytes([0x11; 32])),
            ControlMessage::Register {
                host_id: HostId::from_bytes([0x11; 32]),
                token: Some(vec![0xaa, 0xbb, 0xcc]),
                redirects: 0,
            },
            ControlMessage::Challenge {
                relay_ephemeral: PublicKey::from_bytes([0x22; 32]),
            },
            ControlMessage::Proof { mac: [0x33; 32] },
            ControlMessage::Registered,
            ControlMessage::GoingAway {
                retry_after_ms: 1500,
            },
            ControlMessage::connect(HostId::from_bytes([0x44; 32])),
            ControlMessage::Connected {
                session_id: 0x0102030405060708,
                limits: SessionLimits::NONE,
            },
            ControlMessage::Incoming {
                session_id: 7,
                limits: SessionLimits {
                    rate: 1_250_000,
                    ..SessionLimits::NONE
                },
            },
            ControlMessage::error(ErrorCode::HostOffline, "host offline"),
            ControlMessage::Dial {
                session_id: 9,
                secret: [0x55; 16],
            },
            ControlMessage::Accept {
                session_id: 9,
                secret: [0x55; 16],
            },
            ControlMessage::Connect {
                host_id: HostId::from_bytes([0x44; 32]),
                redirects: 2,
            },
            ControlMessage::Register {
                host_id: HostId::from_bytes([0x11; 32]),
                token: Some(vec![0xaa, 0xbb, 0xcc]),
                redirects: 1,
            },
            ControlMessage::Redirect {
                members: vec!["r0.example:443".to_owned(), "[::1]:4433".to_owned()],
            },
            ControlMessage::Move {
                members: vec!["10.0.0.7:443".to_owned()],
            },
            ControlMessage::Renew {
                token: vec![0xaa, 0xbb, 0xcc],
            },
            ControlMessage::Observe,
            ControlMessage::Observed {
                addr: "203.0.113.7:40123".parse().unwrap(),
            },
            ControlMessage::Observed {
                addr: "[2001:db8::7]:443".parse().unwrap(),
            },
            ControlMessage::ProbePort { port: 4434 },
        ]
    }

    #[test]
    fn wire_format_is_pinned() {
        let expected = [
            format!("00220101{}", "11".repeat(32)),
            format!("00270101{}0003aabbcc", "11".repeat(32)),
            format!("00220102{}", "22".repeat(32)),
            format!("00220103{}", "33".repeat(32)),
            "00020104".to_owned(),
            "00060105000005dc".to_owned(),
            format!("00220110{}", "44".repeat(32)),
            format!("002e01110102030405060708{}", "00".repeat(36)),
            format!(
                "002e01120000000000000007{}{}",
                "00000000001312d0",
                "00".repeat(28)
            ),
            "0012017f0003000c686f7374206f66666c696e65".to_owned(),
            format!("001a01060000000000000009{}", "55".repeat(16)),
            format!("001a01130000000000000009{}", "55".repeat(16)),
            format!("00230110{}02", "44".repeat(32)),
            format!("00280101{}0003aabbcc01", "11".repeat(32)),
            "001d0107020e72302e6578616d706c653a3434330a5b3a3a315d3a34343333".to_owned(),
            "00100108010c31302e302e302e373a343433".to_owned(),
            "000701090003aabbcc".to_owned(),
            "00020114".to_owned(),
            "0009011504cb0071079cbb".to_owned(),
            "001501150620010db800000000000000000000000701bb".to_owned(),
            "000401161152".to_owned(),
        ];
        for (message, expected) in all_messages().iter().zip(expected) {
            assert_eq!(hex(&message.to_frame()), expected, "{message:?}");
        }
    }

    #[test]
    fn every_message_round_trips() {
        for message in all_messages() {
            let mut buf = BytesMut::from(&message.to_frame()[..]);
            assert_eq!(ControlMessage::decode_frame(&mut buf), Ok(Some(message)));
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let frame = ControlMessage::Connected {
            session_id: 1,
            limits: SessionLimits::NONE,
        }
        .to_frame();
        for cut in 0..frame.len() {
            let mut buf = BytesMut::from(&frame[..cut]);
            assert_eq!(ControlMessage::decode_frame(&mut buf), Ok(None));
        }
    }

    #[test]
    fn malformed_frames_get_typed_errors() {
        // Oversize length prefix: refused before the body arrives.
        let mut buf = BytesMut::from(&[0x04, 0x01][..]);
        assert!(matches!(
            ControlMessage::decode_frame(&mut buf),
            Err(DecodeError::FieldTooLong { len: 1025, .. })
        ));
        // Unknown version.
        assert_eq!(
            ControlMessage::decode(&[2, 0x04]),
            Err(DecodeError::UnsupportedVersion {
                version: 2,
                supported: 1
            })
        );
        // Unknown kind.
        assert_eq!(
            ControlMessage::decode(&[1, 0x55]),
            Err(DecodeError::UnknownKind { kind: 0x55 })
        );
        // Truncated body.
        assert!(matches!(
            ControlMessage::decode(&[1, 0x10, 1, 2, 3]),
            Err(DecodeError::Truncated { .. })
        ));
        // Trailing bytes.
        assert_eq!(
            ControlMessage::decode(&[1, 0x04, 0]),
            Err(DecodeError::TrailingBytes { count: 1 })
        );
        // Reason not UTF-8.
        assert!(matches!(
            ControlMessage::decode(&[1, 0x7f, 0, 1, 0, 1, 0xff]),
            Err(DecodeError::InvalidUtf8 { .. })
        ));
        // Length prefix too small to hold version and kind.
        assert!(frame_len([0, 1]).is_err());
        // Register: a zero-length token field, a token over the cap, a token cut short.
        let mut register = vec![1, 0x01];
        register.extend_from_slice(&[0x11; 32]);
        let mut empty = register.clone();
        empty.extend_from_slice(&[0, 0]);
        assert!(matches!(
            ControlMessage::decode(&empty),
            Err(DecodeError::InvalidField { .. })
        ));
        let mut oversize = register.clone();
        oversize.extend_from_slice(&[1, 1]);
        oversize.extend_from_slice(&[0; 257]);
        assert!(matches!(
            ControlMessage::decode(&oversize),
            Err(DecodeError::FieldTooLong { len: 257, .. })
        ));
        let mut short = register.clone();
        short.extend_from_slice(&[0, 5, 1, 2]);
        assert!(matches!(
            ControlMessage::decode(&short),
            Err(DecodeError::Truncated { .. })
        ));
        let mut lone_byte = register;
        lone_byte.push(0);
        assert!(ControlMessage::decode(&lone_byte).is_err());
    }

    #[test]
    fn debug_shows_kinds_and_lengths_but_no_token_key_or_host_id() {
        let host_id = HostId::from_bytes([0x5a; 32]);
        let token: Vec<u8> = (0..120u8).map(|i| i.wrapping_mul(37)).collect();
        let register = ControlMessage::Register {
            host_id,
            token: Some(token.clone()),
            redirects: 0,
        };
        let text = format!("{register:?}");
        assert_eq!(
            text,
            "Register { host_id: <32 bytes>, token: Some(<120 bytes>) }"
        );
        let pretty = format!("{register:#?}");
        for shown in [&text, &pretty] {
            // Neither the host id's text (or its prefix) nor any run of token bytes.
            assert!(!shown.contains(&host_id.short()), "{shown}");
            let run = format!("{:?}", &token[10..14]);
            assert!(!shown.contains(run.trim_matches(['[', ']'])), "{shown}");
        }
        let secrets = [
            ControlMessage::Challenge {
                relay_ephemeral: PublicKey::from_bytes([0x22; 32]),
            },
            ControlMessage::Proof { mac: [0x33; 32] },
            ControlMessage::connect(host_id),
        ];
        for message in secrets {
            let text = format!("{message:?}");
            assert!(text.starts_with(message.name()), "{text}");
            assert!(text.contains("<32 bytes>"), "{text}");
            assert!(!text.contains("34") && !text.contains("51"), "{text}");
            assert!(!text.contains(&host_id.short()), "{text}");
        }
        // What is neither secret nor identifying stays readable.
        assert_eq!(
            format!(
                "{:?}",
                ControlMessage::error(ErrorCode::HostOffline, "gone")
            ),
            "Error { code: HostOffline, reason: \"gone\" }"
        );
        assert_eq!(format!("{:?}", ControlMessage::Registered), "Registered");
    }

    #[test]
    fn pool_fields_have_one_encoding_and_checked_member_names() {
        let host = [0x44; 32];
        let mut connect = vec![1, 0x10];
        connect.extend_from_slice(&host);
        // An explicit zero count is refused: "no redirect" is the absent field.
        let mut zero = connect.clone();
        zero.push(0);
        assert!(matches!(
            ControlMessage::decode(&zero),
            Err(DecodeError::InvalidField {
                field: "redirect count",
                ..
            })
        ));
        // A lone count after a Register's host id is the count, not a token.
        let mut register = vec![1, 0x01];
        register.extend_from_slice(&[0x11; 32]);
        register.push(2);
        assert_eq!(
            ControlMessage::decode(&register),
            Ok(ControlMessage::Register {
                host_id: HostId::from_bytes([0x11; 32]),
                token: None,
                redirects: 2,
            })
        );
        let list = |names: &[&str]| {
            let mut body = vec![1, 0x07, names.len() as u8];
            for name in names {
                body.push(name.len() as u8);
                body.extend_from_slice(name.as_bytes());
            }
            body
        };
        assert!(ControlMessage::decode(&list(&["a.example:1"])).is_ok());
        for bad in [
            &[][..],
            &["a:1", "b:1", "c:1", "d:1"][..],
            &["A.example:1"][..],
            &["a.example:01"][..],
            &["a.example"][..],
            &["::1:443"][..],
            &["a:1", "a:1"][..],
            &["a b:1"][..],
        ] {
            assert!(
                ControlMessage::decode(&list(bad)).is_err(),
                "{bad:?} must be refused"
            );
        }
    }

    #[test]
    fn long_reasons_are_cut_on_a_character_boundary() {
        let message = ControlMessage::error(ErrorCode::Internal, "é".repeat(200));
        let ControlMessage::Error { reason, .. } = &message else {
            unreachable!()
        };
        assert!(reason.len() <= MAX_REASON_LEN);
        let mut buf = BytesMut::from(&message.to_frame()[..]);
        assert_eq!(ControlMessage::decode_frame(&mut buf), Ok(Some(message)));

        // Built by hand, too long: encoding still cuts on a character boundary.
        let by_hand = ControlMessage::Error {
            code: ErrorCode::Internal,
            reason: "é".repeat(200),
        };
        let mut buf = BytesMut::from(&by_hand.to_frame()[..]);
        let Ok(Some(ControlMessage::Error { reason, .. })) = ControlMessage::decode_frame(&mut buf)
        else {
            panic!("a hand-built long reason must still decode");
        };
        assert_eq!(reason, "é".repeat(128));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1100)) {
            let _ = ControlMessage::decode(&bytes);
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = ControlMessage::decode_frame(&mut buf) {}
        }

        #[test]
        fn decoded_messages_re_encode_to_the_same_bytes(bytes in proptest::collection::vec(any::<u8>(), 2..80)) {
            if let Ok(message) = ControlMessage::decode(&bytes) {
                prop_assert_eq!(&message.to_frame()[2..], &bytes[..]);
            }
        }
    }
}
