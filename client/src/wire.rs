//! Reading and writing the protocol's frames on async byte streams.

use blindrelay_protocol::control::{self, ControlMessage};
use blindrelay_protocol::DecodeError;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The stream ended or failed before a whole frame arrived.
    #[error("stream ended before a whole frame: {0}")]
    Io(#[from] std::io::Error),
    /// The frame was malformed.
    #[error("malformed control message: {0}")]
    Decode(#[from] DecodeError),
}

/// Reads one control message from any byte stream: the one reader of control frames
/// for hosts, players, the load generator and the tests.
///
/// An oversize length is refused before its body is read. The body's buffer is made
/// only once its length is known, on the heap: a registration waits in this function
/// for hours, and a buffer of the largest frame kept in its future would cost every
/// host a kilobyte.
pub async fn read_control(
    recv: &mut (impl AsyncRead + Unpin),
) -> Result<ControlMessage, WireError> {
    let mut prefix = [0u8; 2];
    recv.read_exact(&mut prefix).await?;
    let len = control::frame_len(prefix)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await?;
    Ok(ControlMessage::decode(&body)?)
}

/// Reads one length-prefixed Noise message (without its prefix).
pub(crate) async fn read_noise_message(
    recv: &mut (impl AsyncRead + Unpin),
) -> Result<BytesMut, WireError> {
    let mut prefix = [0u8; 2];
    recv.read_exact(&mut prefix).await?;
    let len = usize::from(u16::from_be_bytes(prefix));
    let mut message = BytesMut::zeroed(len);
    recv.read_exact(&mut message).await?;
    Ok(message)
}
