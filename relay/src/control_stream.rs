//! Control messages on a relay's streams: reading the first message of a stream,
//! answering with an error, and refusing a stream that sent nothing readable.

use blindrelay_protocol::control::{self, ControlMessage};
use blindrelay_protocol::{codes, DecodeError, ErrorCode};
use tracing::debug;

use crate::state::RelayState;
use crate::stats::Stats;

/// Answers a stream whose first message was unreadable, then closes that stream only.
pub(crate) async fn refuse_stream(
    shared: &RelayState,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    err: ReadMessageError,
) {
    Stats::bump(&shared.stats.bad_requests);
    debug!(%err, "refusing stream");
    let code = match &err {
        ReadMessageError::Decode(DecodeError::UnsupportedVersion { .. }) => {
            ErrorCode::UnsupportedVersion
        }
        _ => ErrorCode::BadRequest,
    };
    let _ = recv.stop(codes::stream::REFUSED.into());
    send_error(&mut send, &ControlMessage::error(code, err.to_string())).await;
}

/// Writes an error message and finishes the stream.
pub(crate) async fn send_error(send: &mut quinn::SendStream, error: &ControlMessage) {
    if send.write_all(&error.to_frame()).await.is_ok() {
        let _ = send.finish();
    }
}

/// Why a control message could not be read from a stream.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadMessageError {
    #[error("stream ended before a whole control message")]
    Closed,
    #[error("malformed control message: {0}")]
    Decode(#[from] DecodeError),
    #[error("no control message within the deadline")]
    Timeout,
}

/// Reads one length-prefixed control message, refusing oversize lengths before
/// reading their body.
pub(crate) async fn read_message(
    recv: &mut quinn::RecvStream,
) -> Result<ControlMessage, ReadMessageError> {
    let mut prefix = [0u8; 2];
    recv.read_exact(&mut prefix)
        .await
        .map_err(|_| ReadMessageError::Closed)?;
    let len = control::frame_len(prefix)?;
    // On the heap, and only once a message is arriving: a registration waits in
    // this function for hours, and a buffer of the largest frame in its state would
    // cost every host a kilobyte.
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body)
        .await
        .map_err(|_| ReadMessageError::Closed)?;
    Ok(ControlMessage::decode(&body)?)
}
