//! Control messages on a relay's streams: reading the first message of a stream,
//! answering with an error, and refusing a stream that sent nothing readable.

use blindrelay_protocol::control::{self, ControlMessage};
use blindrelay_protocol::{codes, DecodeError, ErrorCode};
use std::time::Duration;

use tracing::debug;

use crate::ops::stats::Stats;
use crate::stream::halves::{SessionRecv, SessionSend, StreamRecv, StreamSend};

/// How long a peer has to take a control message the relay writes (a challenge, a
/// confirmation, a refusal, `GoingAway`) before its stream is reset. A peer that
/// grants no flow-control credit must cost itself a stream, not the relay a task and
/// the buffers behind it for ever.
pub(crate) const CONTROL_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a control message could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WriteControlError {
    /// The peer took nothing within [`CONTROL_WRITE_TIMEOUT`]; the stream was reset.
    #[error("the peer did not take a control message in time")]
    Timeout,
    /// The stream or its connection is gone.
    #[error("the stream is gone")]
    Gone,
}

/// Writes one control message within [`CONTROL_WRITE_TIMEOUT`]. On a timeout the
/// stream is reset with [`codes::stream::STALLED`], so nothing the relay wrote stays
/// queued behind a peer that does not read.
pub(crate) async fn write_control(
    send: &mut StreamSend,
    message: &ControlMessage,
) -> Result<(), WriteControlError> {
    match tokio::time::timeout(CONTROL_WRITE_TIMEOUT, send.write_all(&message.to_frame())).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(WriteControlError::Gone),
        Err(_) => {
            send.reset(codes::stream::STALLED);
            Err(WriteControlError::Timeout)
        }
    }
}

/// Refuses a stream: stops its receive side first (whatever the peer sends after is
/// discarded, not buffered), then writes the error within the write deadline and
/// finishes. Returns once the error is written or the deadline passed.
pub(crate) async fn refuse(send: &mut StreamSend, recv: &mut StreamRecv, error: &ControlMessage) {
    recv.stop(codes::stream::REFUSED);
    if write_control(send, error).await.is_ok() {
        send.finish();
    }
}

/// Answers a stream whose first message was unreadable, then closes that stream only.
pub(crate) async fn refuse_stream(
    stats: &Stats,
    mut send: StreamSend,
    mut recv: StreamRecv,
    err: ReadMessageError,
) {
    Stats::bump(&stats.bad_requests);
    debug!(%err, "refusing stream");
    let code = match &err {
        ReadMessageError::Decode(DecodeError::UnsupportedVersion { .. }) => {
            ErrorCode::UnsupportedVersion
        }
        _ => ErrorCode::BadRequest,
    };
    refuse(
        &mut send,
        &mut recv,
        &ControlMessage::error(code, err.to_string()),
    )
    .await;
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
    recv: &mut StreamRecv,
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
