//! Errors of the wire codecs, and the error codes the relay sends on the wire.

/// Why a received message could not be decoded.
///
/// Every decoder in this crate returns one of these for malformed input; none panics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The message ended before a field it must contain.
    #[error("message truncated: needed {needed} more bytes, {available} available")]
    Truncated {
        /// Bytes the next field needs.
        needed: usize,
        /// Bytes that were left.
        available: usize,
    },
    /// A length prefix announced more than the protocol allows.
    #[error("{field} is {len} bytes long, at most {max} allowed")]
    FieldTooLong {
        /// The field whose length was refused.
        field: &'static str,
        /// The announced length.
        len: usize,
        /// The protocol's limit for that field.
        max: usize,
    },
    /// The message was longer than its fields.
    #[error("{count} unexpected bytes after the end of the message")]
    TrailingBytes {
        /// How many bytes were left over.
        count: usize,
    },
    /// The version byte names a protocol version this code does not speak.
    #[error("unsupported protocol version {version} (this side speaks {supported})")]
    UnsupportedVersion {
        /// The version received.
        version: u8,
        /// The version this implementation speaks.
        supported: u8,
    },
    /// The message kind byte is not one the protocol defines.
    #[error("unknown message kind {kind:#04x}")]
    UnknownKind {
        /// The kind received.
        kind: u8,
    },
    /// A text field was not valid UTF-8.
    #[error("{field} is not valid UTF-8")]
    InvalidUtf8 {
        /// The field that was refused.
        field: &'static str,
    },
    /// A field held a value the protocol does not allow.
    #[error("invalid {field}: {reason}")]
    InvalidField {
        /// The field that was refused.
        field: &'static str,
        /// What was wrong with it.
        reason: &'static str,
    },
}

/// Error codes the relay puts in [`ControlMessage::Error`](crate::ControlMessage::Error).
///
/// Codes are stable numbers on the wire; the human-readable reason travels beside
/// them. Codes this version does not know decode as [`ErrorCode::Unknown`], so an
/// older player still reports a newer relay's refusal instead of failing to parse it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The request could not be decoded or was not allowed at this point of the flow.
    BadRequest,
    /// The request used a protocol version the relay does not speak.
    UnsupportedVersion,
    /// No host is registered under the requested host id.
    HostOffline,
    /// The host could not prove it holds the private key of the host id it claimed.
    ProofFailed,
    /// The relay could not open a session stream to the host.
    HostUnreachable,
    /// The relay hit an unexpected internal failure.
    Internal,
    /// The relay is at capacity (its session buffer budget, session or connection
    /// cap): try again later or another relay.
    AtCapacity,
    /// Too many requests from this address in too short a time: slow down.
    RateLimited,
    /// The host already has as many sessions as the relay allows one host.
    HostBusy,
    /// The relay admits only hosts with a registration token, and none was sent.
    TokenRequired,
    /// The registration token has expired.
    TokenExpired,
    /// The registration token was issued for another host id.
    TokenWrongHost,
    /// The registration token's signature does not verify, its issuer is not one the
    /// relay trusts, or it names a tier the relay does not have.
    TokenInvalid,
    /// The registration token could not be decoded.
    TokenMalformed,
    /// A code this implementation does not know.
    Unknown(u16),
}

impl ErrorCode {
    /// The code that tells a host why its registration token was refused.
    pub fn for_token_error(err: &crate::token::TokenError) -> Self {
        use crate::token::TokenError;
        match err {
            TokenError::Malformed(_) | TokenError::NotAToken => Self::TokenMalformed,
            TokenError::Expired { .. } => Self::TokenExpired,
            TokenError::WrongHost => Self::TokenWrongHost,
            TokenError::UnknownIssuer | TokenError::BadSignature => Self::TokenInvalid,
        }
    }

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

    /// The number sent on the wire.
    pub fn to_u16(self) -> u16 {
        match self {
            Self::BadRequest => 1,
            Self::UnsupportedVersion => 2,
            Self::HostOffline => 3,
            Self::ProofFailed => 4,
            Self::HostUnreachable => 5,
            Self::Internal => 6,
            Self::AtCapacity => 7,
            Self::RateLimited => 8,
            Self::HostBusy => 9,
            Self::TokenRequired => 10,
            Self::TokenExpired => 11,
            Self::TokenWrongHost => 12,
            Self::TokenInvalid => 13,
            Self::TokenMalformed => 14,
            Self::Unknown(code) => code,
        }
    }

    /// The code for a number received on the wire.
    pub fn from_u16(code: u16) -> Self {
        match code {
            1 => Self::BadRequest,
            2 => Self::UnsupportedVersion,
            3 => Self::HostOffline,
            4 => Self::ProofFailed,
            5 => Self::HostUnreachable,
            6 => Self::Internal,
            7 => Self::AtCapacity,
            8 => Self::RateLimited,
            9 => Self::HostBusy,
            10 => Self::TokenRequired,
            11 => Self::TokenExpired,
            12 => Self::TokenWrongHost,
            13 => Self::TokenInvalid,
            14 => Self::TokenMalformed,
            other => Self::Unknown(other),
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Self::BadRequest => "bad request",
            Self::UnsupportedVersion => "unsupported version",
            Self::HostOffline => "host offline",
            Self::ProofFailed => "proof of key possession failed",
            Self::HostUnreachable => "host unreachable",
            Self::Internal => "internal relay error",
            Self::AtCapacity => "relay at capacity",
            Self::RateLimited => "rate limited",
            Self::HostBusy => "host has too many sessions",
            Self::TokenRequired => "registration token required",
            Self::TokenExpired => "registration token expired",
            Self::TokenWrongHost => "registration token is for another host id",
            Self::TokenInvalid => "registration token invalid",
            Self::TokenMalformed => "registration token malformed",
            Self::Unknown(code) => return write!(f, "unknown error code {code}"),
        };
        f.write_str(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_codes_survive() {
        for n in 0..=20u16 {
            assert_eq!(ErrorCode::from_u16(n).to_u16(), n);
        }
        assert_eq!(ErrorCode::from_u16(3), ErrorCode::HostOffline);
        assert_eq!(ErrorCode::from_u16(999), ErrorCode::Unknown(999));
        assert_eq!(ErrorCode::from_u16(10), ErrorCode::TokenRequired);
        assert_eq!(ErrorCode::from_u16(14), ErrorCode::TokenMalformed);
    }
}
