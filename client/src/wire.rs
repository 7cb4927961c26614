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

/// Reads one control message.
pub(crate) async fn read_control(
    recv: &mut (impl AsyncRead + Unpin),
) -> Result<ControlMessage, WireError> {
    let mut prefix = [0u8; 2];
    recv.read_exact(&mut prefix).await?;
    let len = control::frame_len(prefix)?;
    let mut body = [0u8; control::MAX_FRAME_LEN];
    recv.read_exact(&mut body[..len]).await?;
    Ok(ControlMessage::decode(&body[..len])?)
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
