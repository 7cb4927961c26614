//! Every code space of the protocol, each defined once with its number, name and
//! words:
//!
//! - [`CloseCode`]: why a QUIC connection was closed (`CONNECTION_CLOSE`), constants
//!   in [`close`];
//! - [`StreamCode`]: why a session stream was reset or told to stop (`RESET_STREAM`,
//!   `STOP_SENDING`), constants in [`stream`];
//! - [`ErrorCode`]: why the relay refused a request, in a
//!   [`ControlMessage::Error`](crate::ControlMessage::Error) inside a stream.
//!
//! Each table is one [`code_space!`] invocation. The relay's counters and metric
//! labels, the client's explanations and `PROTOCOL.md` (checked by a test) read the
//! number, the name and the words from here, so a code cannot mean one thing in one
//! place and another elsewhere.
//!
//! The *name* is the code's identifier as `PROTOCOL.md` spells it (`PEER_GONE`,
//! `HostOffline`); the *words* say what happened, for a person reading a log line or
//! an error message.

/// Defines one code space: a type for its numbers, the known codes with their names
/// and words, and the conversions from and to the wire integer.
///
/// Two shapes:
///
/// - `newtype Name(u32) in module { CONST = number, "words"; ... }`: a newtype that
///   holds any number (codes the relay passes on unchanged included), with one
///   constant per known code in `module`;
/// - `enum Name(u16) { Variant = number, "words"; ... }`: an enum with one variant per
///   known code and `Unknown(u16)` for the rest, so a newer peer's code still decodes.
macro_rules! code_space {
    (
        $(#[$meta:meta])*
        newtype $Type:ident(u32) in $module:ident, $what:literal {
            $(
                $(#[doc = $doc:literal])*
                $NAME:ident = $value:literal, $words:literal;
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $Type(u32);

        #[doc = concat!("The known [`", stringify!($Type), "`]s, one constant each.")]
        pub mod $module {
            use super::$Type;
            $(
                $(#[doc = $doc])*
                pub const $NAME: $Type = $Type($value);
            )*
        }

        impl $Type {
            /// Every known code, in the order of the table.
            pub const ALL: &'static [$Type] = &[$($module::$NAME),*];

            /// The code for a number received on the wire (known or not).
            pub const fn from_u32(code: u32) -> Self {
                Self(code)
            }

            /// The number sent on the wire.
            pub const fn to_u32(self) -> u32 {
                self.0
            }

            /// The code's name as `PROTOCOL.md` spells it, if this version knows it.
            pub const fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($value => Some(stringify!($NAME)),)*
                    _ => None,
                }
            }

            /// What the code says happened, if this version knows it.
            pub const fn words(self) -> Option<&'static str> {
                match self.0 {
                    $($value => Some($words),)*
                    _ => None,
                }
            }
        }

        impl From<u32> for $Type {
            fn from(code: u32) -> Self {
                Self(code)
            }
        }

        impl From<$Type> for u32 {
            fn from(code: $Type) -> u32 {
                code.0
            }
        }

        impl std::fmt::Debug for $Type {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match self.name() {
                    Some(name) => write!(f, "{name} ({:#x})", self.0),
                    None => write!(f, "{}({:#x})", stringify!($Type), self.0),
                }
            }
        }

        /// The words of a known code; an unknown one by its number.
        impl std::fmt::Display for $Type {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match self.words() {
                    Some(words) => f.write_str(words),
                    None => write!(f, concat!("unknown ", $what, " {:#x}"), self.0),
                }
            }
        }

        // QUIC carries these codes as variable-length integers; these let a driver on
        // quinn pass a code without spelling out its number.
        #[cfg(feature = "quinn")]
        impl From<$Type> for quinn_proto::VarInt {
            fn from(code: $Type) -> Self {
                quinn_proto::VarInt::from_u32(code.0)
            }
        }

        /// Fails for numbers over `u32::MAX`, which no side of this protocol sends.
        #[cfg(feature = "quinn")]
        impl TryFrom<quinn_proto::VarInt> for $Type {
            type Error = std::num::TryFromIntError;

            fn try_from(code: quinn_proto::VarInt) -> Result<Self, Self::Error> {
                u32::try_from(code.into_inner()).map(Self)
            }
        }
    };

    (
        $(#[$meta:meta])*
        enum $Type:ident(u16), $what:literal {
            $(
                $(#[doc = $doc:literal])*
                $Variant:ident = $value:literal, $words:literal;
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum $Type {
            $(
                $(#[doc = $doc])*
                $Variant,
            )*
            /// A code this implementation does not know.
            Unknown(u16),
        }

        impl $Type {
            /// Every known code, in the order of the table.
            pub const ALL: &'static [$Type] = &[$($Type::$Variant),*];

            /// The code for a number received on the wire.
            pub const fn from_u16(code: u16) -> Self {
                match code {
                    $($value => Self::$Variant,)*
                    other => Self::Unknown(other),
                }
            }

            /// The number sent on the wire.
            pub const fn to_u16(self) -> u16 {
                match self {
                    $(Self::$Variant => $value,)*
                    Self::Unknown(code) => code,
                }
            }

            /// The code's name as `PROTOCOL.md` spells it, if this version knows it.
            pub const fn name(self) -> Option<&'static str> {
                match self {
                    $(Self::$Variant => Some(stringify!($Variant)),)*
                    Self::Unknown(_) => None,
                }
            }

            /// What the code says happened, if this version knows it.
            pub const fn words(self) -> Option<&'static str> {
                match self {
                    $(Self::$Variant => Some($words),)*
                    Self::Unknown(_) => None,
                }
            }
        }

        impl From<u16> for $Type {
            fn from(code: u16) -> Self {
                Self::from_u16(code)
            }
        }

        impl From<$Type> for u16 {
            fn from(code: $Type) -> u16 {
                code.to_u16()
            }
        }

        /// The words of a known code; an unknown one by its number.
        impl std::fmt::Display for $Type {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match self.words() {
                    Some(words) => f.write_str(words),
                    None => write!(f, concat!("unknown ", $what, " {}"), self.to_u16()),
                }
            }
        }
    };
}

code_space! {
    /// An application error code in a QUIC `CONNECTION_CLOSE` frame: why a
    /// connection was closed. Constants in [`close`].
    newtype CloseCode(u32) in close, "close code" {
        /// Closed on purpose with nothing wrong (a host or player shutting down).
        NORMAL = 0, "closed normally";
        /// The relay closed a host's connection because a newer registration of the
        /// same host id replaced it.
        REPLACED = 1, "replaced by a newer registration of this host id";
        /// The relay is shutting down; reconnect later (to it or another relay).
        RELAY_SHUTDOWN = 2, "the relay is shutting down";
        /// The relay closed a connection that had neither a registration nor a
        /// session for its idle timeout.
        IDLE = 3, "closed by the relay: no registration and no session for its idle timeout";
        /// The relay, near its connection cap, closed an idle registration (one with
        /// no session) to make room. The host may register again after a back-off.
        SHED = 4, "closed by the relay at its connection cap: idle registration shed";
        /// A host closed its connection to the relay because its owner switched Enable
        /// Relay off; its relayed sessions end with it. Direct sessions are not
        /// affected.
        RELAY_DISABLED = 5, "the host switched Enable Relay off";
        /// The relay is at its connection cap and its headroom: try again later or
        /// another relay. Sent right after the handshake, or when a connection beyond
        /// the cap did not register in time.
        AT_CAPACITY = 6, "the relay is at capacity: try again later";
    }
}

code_space! {
    /// An application error code in a `RESET_STREAM` or `STOP_SENDING` frame on a
    /// session stream. Constants in [`stream`].
    ///
    /// On a spliced session the relay passes a reset or stop code from one side to the
    /// other unchanged, so player and host can use codes of their own; the constants
    /// are the codes the protocol defines.
    newtype StreamCode(u32) in stream, "stream code" {
        /// The other side of the session went away without closing it cleanly (its
        /// connection was lost or closed).
        PEER_GONE = 0x100, "the other side's relay connection went away (Enable Relay switched off, or it went offline)";
        /// The session was refused (see the `Error` message on the stream).
        REFUSED = 0x101, "the session was refused";
        /// One side left the bytes forwarded to it unread for the relay's stall
        /// timeout.
        STALLED = 0x102, "one side left the bytes sent to it unread past the stall timeout";
        /// No byte moved either way for the relay's session idle timeout.
        SESSION_IDLE = 0x103, "no data moved within the session idle timeout";
        /// The session reached its maximum duration.
        DURATION_LIMIT = 0x104, "the session reached its maximum duration";
        /// The session moved its maximum number of bytes in one direction.
        BYTE_LIMIT = 0x105, "the session reached its maximum bytes in one direction";
        /// A player gave up a session set-up because another path to the same host
        /// finished first (see the player's direct-first race).
        CANCELLED = 0x106, "the other side cancelled the session while setting it up";
        /// Sent by a player or host, with both RESET_STREAM and STOP_SENDING, when
        /// what the other side sent broke the session protocol (a frame that fails to
        /// open or breaks the framing rules, or a direction that ends without its
        /// `end` frame). Distinct from a truncation, so the side that broke the
        /// protocol learns that the other side rejected it, rather than blaming the
        /// relay.
        PROTOCOL_VIOLATION = 0x107, "the other side rejected what this side sent as a protocol violation";
        /// Sent by a host, with both RESET_STREAM and STOP_SENDING, on a session it
        /// accepted but cannot serve because the service it forwards sessions to
        /// (the media server) does not answer. Tells the player why, instead of a
        /// session that ends with nothing in it.
        SERVICE_UNAVAILABLE = 0x108, "the host could not reach the service it forwards to (is the media server running?)";
        /// Sent by a player or host (STOP_SENDING) when its application dropped a
        /// resumable session while the other side still sent: the session is over
        /// and will not be resumed (PROTOCOL.md 10.8).
        CLOSED = 0x109, "the other side closed the session";
        /// Sent by a player (RESET_STREAM) on a relayed session's stream once the
        /// session moved to a punched direct path (PROTOCOL.md 10.9): it goes on
        /// there. The relay counts such sessions; a host reads it as a lost stream.
        MOVED = 0x10a, "the session moved to a direct path";
    }
}

impl StreamCode {
    /// Whether the relay sends this code when it ends a session at one of its
    /// limits (stall, idle, duration, bytes), as opposed to passing one on.
    pub const fn is_limit(self) -> bool {
        matches!(
            self,
            stream::STALLED | stream::SESSION_IDLE | stream::DURATION_LIMIT | stream::BYTE_LIMIT
        )
    }
}

code_space! {
    /// Error codes the relay puts in [`ControlMessage::Error`](crate::ControlMessage::Error).
    ///
    /// Codes are stable numbers on the wire; the human-readable reason travels beside
    /// them. Codes this version does not know decode as [`ErrorCode::Unknown`], so an
    /// older player still reports a newer relay's refusal instead of failing to parse
    /// it.
    enum ErrorCode(u16), "error code" {
        /// The request could not be decoded or was not allowed at this point of the flow.
        BadRequest = 1, "bad request";
        /// The request used a protocol version the relay does not speak.
        UnsupportedVersion = 2, "unsupported version";
        /// No host is registered under the requested host id.
        HostOffline = 3, "host offline";
        /// The host could not prove it holds the private key of the host id it claimed.
        ProofFailed = 4, "proof of key possession failed";
        /// The relay could not open a session stream to the host.
        HostUnreachable = 5, "host unreachable";
        /// The relay hit an unexpected internal failure.
        Internal = 6, "internal relay error";
        /// The relay is at capacity (its session buffer budget, session or connection
        /// cap): try again later or another relay.
        AtCapacity = 7, "relay at capacity";
        /// Too many requests from this address in too short a time: slow down.
        RateLimited = 8, "rate limited";
        /// The host already has as many sessions as the relay allows one host.
        HostBusy = 9, "host has too many sessions";
        /// The relay admits only hosts with a registration token, and none was sent.
        TokenRequired = 10, "registration token required";
        /// The registration token has expired.
        TokenExpired = 11, "registration token expired";
        /// The registration token was issued for another host id.
        TokenWrongHost = 12, "registration token is for another host id";
        /// The registration token's signature does not verify, its issuer is not one
        /// the relay trusts, or it names a tier the relay does not have.
        TokenInvalid = 13, "registration token invalid";
        /// The registration token could not be decoded.
        TokenMalformed = 14, "registration token malformed";
    }
}

impl ErrorCode {
    /// Whether this code refuses a registration token: retrying with the same token
    /// cannot succeed.
    pub fn is_token_refusal(self) -> bool {
        matches!(
            self,
            Self::TokenRequired
                | Self::TokenExpired
                | Self::TokenWrongHost
                | Self::TokenInvalid
                | Self::TokenMalformed
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn error_codes_round_trip_and_unknown_codes_survive() {
        for n in 0..=20u16 {
            assert_eq!(ErrorCode::from_u16(n).to_u16(), n);
        }
        assert_eq!(ErrorCode::from_u16(3), ErrorCode::HostOffline);
        assert_eq!(ErrorCode::from_u16(999), ErrorCode::Unknown(999));
        assert_eq!(ErrorCode::from_u16(10), ErrorCode::TokenRequired);
        assert_eq!(ErrorCode::from_u16(14), ErrorCode::TokenMalformed);
        assert_eq!(
            ErrorCode::Unknown(999).to_string(),
            "unknown error code 999"
        );
        assert_eq!(ErrorCode::HostOffline.to_string(), "host offline");
        assert_eq!(ErrorCode::HostOffline.name(), Some("HostOffline"));
        assert_eq!(ErrorCode::Unknown(0).name(), None);
    }

    /// The wire numbers are part of the protocol: pinned here, apart from the table.
    #[test]
    fn wire_numbers_are_pinned() {
        let close: Vec<u32> = CloseCode::ALL.iter().map(|c| c.to_u32()).collect();
        assert_eq!(close, [0, 1, 2, 3, 4, 5, 6]);
        let stream: Vec<u32> = StreamCode::ALL.iter().map(|c| c.to_u32()).collect();
        assert_eq!(
            stream,
            [0x100, 0x101, 0x102, 0x103, 0x104, 0x105, 0x106, 0x107, 0x108, 0x109, 0x10a]
        );
        let error: Vec<u16> = ErrorCode::ALL.iter().map(|c| c.to_u16()).collect();
        assert_eq!(error, (1..=14).collect::<Vec<u16>>());
        assert_eq!(close::REPLACED.to_u32(), 1);
        assert_eq!(stream::PROTOCOL_VIOLATION.to_u32(), 0x107);
        assert_eq!(stream::SERVICE_UNAVAILABLE.to_u32(), 0x108);
    }

    #[test]
    fn every_known_code_has_a_distinct_number_name_and_words() {
        fn check<T: Copy>(
            all: &[T],
            number: impl Fn(T) -> u32,
            name: impl Fn(T) -> Option<&'static str>,
            words: impl Fn(T) -> Option<&'static str>,
        ) {
            let numbers: HashSet<u32> = all.iter().map(|&c| number(c)).collect();
            let names: HashSet<&str> = all.iter().filter_map(|&c| name(c)).collect();
            let words: HashSet<&str> = all.iter().filter_map(|&c| words(c)).collect();
            assert_eq!(numbers.len(), all.len());
            assert_eq!(names.len(), all.len());
            assert_eq!(words.len(), all.len());
        }
        check(
            CloseCode::ALL,
            CloseCode::to_u32,
            CloseCode::name,
            CloseCode::words,
        );
        check(
            StreamCode::ALL,
            StreamCode::to_u32,
            StreamCode::name,
            StreamCode::words,
        );
        check(
            ErrorCode::ALL,
            |c| u32::from(c.to_u16()),
            ErrorCode::name,
            ErrorCode::words,
        );
    }

    #[test]
    fn unknown_codes_keep_their_number_and_say_so() {
        let theirs = StreamCode::from_u32(0x4242);
        assert_eq!(theirs.to_u32(), 0x4242);
        assert_eq!(theirs.name(), None);
        assert_eq!(theirs.to_string(), "unknown stream code 0x4242");
        assert_eq!(format!("{theirs:?}"), "StreamCode(0x4242)");
        assert_eq!(format!("{:?}", stream::STALLED), "STALLED (0x102)");
        assert_eq!(CloseCode::from_u32(9).to_string(), "unknown close code 0x9");
    }

    #[test]
    fn only_the_relays_own_limits_are_limits() {
        let limits: Vec<&str> = StreamCode::ALL
            .iter()
            .filter(|code| code.is_limit())
            .filter_map(|code| code.name())
            .collect();
        assert_eq!(
            limits,
            ["STALLED", "SESSION_IDLE", "DURATION_LIMIT", "BYTE_LIMIT"]
        );
    }

    #[cfg(feature = "quinn")]
    #[test]
    fn codes_convert_to_and_from_quinn_varints() {
        let varint = quinn_proto::VarInt::from(stream::BYTE_LIMIT);
        assert_eq!(varint.into_inner(), 0x105);
        assert_eq!(StreamCode::try_from(varint), Ok(stream::BYTE_LIMIT));
        let huge = quinn_proto::VarInt::from_u64(1 << 40).expect("a varint");
        assert!(StreamCode::try_from(huge).is_err());
    }
}
