//! Errors of the wire codecs (the error codes the relay sends on the wire are in
//! [`codes`](crate::codes)).

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

/// The control-message error codes live with the other code spaces; this path is
/// kept for the code that names them here.
pub use crate::codes::ErrorCode;
