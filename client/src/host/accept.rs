//! The host's one way of accepting a player's session, whichever path it came by.
//!
//! A session stream from the relay starts with `Incoming` (the relay's session id and
//! limits), one from the direct listener with nothing; after that both carry the
//! player's Noise hello, and the host answers it the same way: the handshake reply
//! and its verdict in one write, then either a [`SecureStream`] for
//! [`crate::HostAgent::accept`] or, for a player it does not serve, the refused
//! session's ending (see [`SessionAcceptor::accept`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use blindrelay_protocol::noise::{HostHandshake, PendingVerdict};
use blindrelay_protocol::{codes, ControlMessage, SessionLimits};
use bytes::BytesMut;
use tokio::sync::mpsc;
use tracing::debug;

use super::{HostConfig, HostCounters};
use crate::stream::{SecureStream, SessionPath};
use crate::wire::{read_control, read_noise_message, WireError};

/// What accepting a session needs, cloned into every session stream's task.
#[derive(Clone)]
pub(super) struct SessionAcceptor {
    config: Arc<HostConfig>,
    sessions: mpsc::Sender<SecureStream>,
    counters: Arc<HostCounters>,
}

/// Why a session stream never reached the handshake.
#[derive(Debug, thiserror::Error)]
enum OpeningError {
    /// The stream failed or carried a malformed frame.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The relay's first message on a session stream was not `Incoming`.
    #[error("expected Incoming, got {0}")]
    NotIncoming(&'static str),
}

impl SessionAcceptor {
    /// An acceptor that hands sessions to `sessions` and counts them in `counters`.
    pub(super) fn new(
        config: Arc<HostConfig>,
        sessions: mpsc::Sender<SecureStream>,
        counters: Arc<HostCounters>,
    ) -> Self {
        Self {
            config,
            sessions,
            counters,
        }
    }

    /// Answers the player on a session stream that arrived by `path`, and hands the
    /// session over if the host serves that player.
    ///
    /// The opening (the relay's `Incoming` and the player's hello) must arrive within
    /// the handshake timeout. A hello that fails the handshake resets the stream with
    /// `REFUSED`. A player the host does not serve gets "not authorized" and the
    /// ending of a served session whose player leaves at once: the host waits for the
    /// player to end its direction, then ends its own with `end` and the stream's
    /// end, so the relay cannot single refused players out.
    pub(super) async fn accept(
        &self,
        send: quinn::SendStream,
        mut recv: quinn::RecvStream,
        path: SessionPath,
    ) {
        let timeout = self.config.handshake_timeout;
        let opening = tokio::time::timeout(timeout, read_opening(&mut recv, path)).await;
        let (session_id, limits, hello) = match opening {
            Ok(Ok(opened)) => opened,
            Ok(Err(err)) => {
                return debug!(%path, %err, "session stream failed before the handshake")
            }
            Err(_) => return debug!(%path, "no Noise hello in time"),
        };
        let Some(stream) = self.respond(send, recv, &hello, path, session_id).await else {
            return;
        };
        let stream = stream.with_limits(limits);
        let counter = match path {
            SessionPath::Relayed => &self.counters.sessions_relayed,
            SessionPath::Direct => &self.counters.sessions_direct,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        debug!(session_id, %path, player = %stream.peer().short(), %limits, "session accepted");
        let _ = self.sessions.send(stream).await;
    }

    /// Runs the Noise responder on `hello`; `None` unless the player is served.
    async fn respond(
        &self,
        mut send: quinn::SendStream,
        recv: quinn::RecvStream,
        hello: &[u8],
        path: SessionPath,
        session_id: u64,
    ) -> Option<SecureStream> {
        let mut reply = BytesMut::new();
        let pending = match HostHandshake::respond(&self.config.key, hello, &mut reply) {
            Ok(pending) => pending,
            Err(err) => {
                debug!(session_id, %path, %err, "refusing a session");
                let _ = send.reset(codes::stream::REFUSED.into());
                return None;
            }
        };
        if !self.config.players.allows(pending.remote_static()) {
            self.refuse(pending, reply, send, recv, path, session_id)
                .await;
            return None;
        }
        // Reply and verdict go out in one write, the same bytes either way.
        let Ok(transport) = pending.welcome(&mut reply) else {
            let _ = send.reset(codes::stream::REFUSED.into());
            return None;
        };
        send.write_all(&reply).await.ok()?;
        let (reader, writer) = crate::linger::halves(send, recv);
        Some(SecureStream::new(
            reader,
            writer,
            transport,
            path,
            session_id,
            BytesMut::new(),
        ))
    }

    /// Tells a player the host does not serve it, and ends the session the way a
    /// served one ends when its player leaves at once.
    async fn refuse(
        &self,
        pending: PendingVerdict,
        mut reply: BytesMut,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
        path: SessionPath,
        session_id: u64,
    ) {
        let player = *pending.remote_static();
        let Ok(refused) = pending.refuse(&mut reply) else {
            let _ = send.reset(codes::stream::REFUSED.into());
            return;
        };
        if send.write_all(&reply).await.is_err() {
            return;
        }
        self.counters
            .players_refused
            .fetch_add(1, Ordering::Relaxed);
        debug!(session_id, %path, player = %player.short(), "player not authorized");
        // Let the player end the session, as a served player that leaves at once
        // would, then end this direction as a served session's host does when its
        // player leaves (`end`, then the stream's end), rather than closing first or
        // differently in a way the relay could single out. A player that lingers is
        // cut off after the handshake timeout. What it sent is not read: nothing a
        // refused player says is of use.
        let drained = async {
            let mut sink = [0u8; 1024];
            loop {
                match recv.read(&mut sink).await {
                    Ok(Some(_)) => {}
                    Ok(None) => return true,
                    Err(_) => return false,
                }
            }
        };
        let left_cleanly = tokio::time::timeout(self.config.handshake_timeout, drained)
            .await
            .unwrap_or(false);
        let mut end = BytesMut::new();
        if left_cleanly && refused.seal_end(&mut end).is_ok() {
            let _ = send.write_all(&end).await;
        }
        let _ = send.finish();
    }
}

/// Reads what comes before the handshake on a session stream of `path`: the relay's
/// `Incoming` (relayed only), then the player's hello.
async fn read_opening(
    recv: &mut quinn::RecvStream,
    path: SessionPath,
) -> Result<(u64, SessionLimits, BytesMut), OpeningError> {
    let (session_id, limits) = match path {
        SessionPath::Relayed => match read_control(recv).await? {
            ControlMessage::Incoming { session_id, limits } => (session_id, limits),
            other => return Err(OpeningError::NotIncoming(other.name())),
        },
        // No relay in between: no session id, no relay limits.
        SessionPath::Direct => (0, SessionLimits::NONE),
    };
    let hello = read_noise_message(recv).await?;
    Ok((session_id, limits, hello))
}
