//! Connect: pairs a player's stream with a new stream to the host it names.
//!
//! The player's stream has sent `Connect { host id }` (read by the connection). The
//! relay looks the host up, opens a stream on the host's connection, writes
//! `Incoming` there and `Connected` to the player, then splices the two streams. Any
//! bytes the player sent after `Connect` (typically its Noise hello, pipelined to save
//! a round trip) are still in its stream and go to the host first.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use blindrelay_protocol::{codes, ControlMessage, ErrorCode, HostId};
use tracing::{debug, info_span, Instrument};

use crate::connection::{send_error, Shared};
use crate::splice;
use crate::stats::Stats;

pub(crate) async fn serve(
    host_id: HostId,
    mut player_send: quinn::SendStream,
    mut player_recv: quinn::RecvStream,
    shared: Arc<Shared>,
) {
    let session_id = shared.new_session_id();
    let span = info_span!("session", id = session_id, host = %host_id.short());
    async move {
        let mut refuse = |code: ErrorCode, reason: &'static str| {
            Stats::bump(&shared.stats.sessions_refused);
            debug!(%code, "session refused");
            let _ = player_recv.stop(codes::stream::REFUSED.into());
            ControlMessage::error(code, reason)
        };
        let Some(host) = shared.registry.lookup(&host_id) else {
            let error = refuse(ErrorCode::HostOffline, "host offline");
            return send_error(&mut player_send, &error).await;
        };
        let opened =
            tokio::time::timeout(shared.config.open_host_stream_timeout, host.open_bi()).await;
        let Ok(Ok((mut host_send, host_recv))) = opened else {
            let error = refuse(
                ErrorCode::HostUnreachable,
                "host did not accept the session",
            );
            return send_error(&mut player_send, &error).await;
        };
        // Both writes wait on flow-control credit; bound them so a peer that grants
        // none cannot pin a stream slot on the host forever.
        let deadline = shared.config.open_host_stream_timeout;
        let incoming = ControlMessage::Incoming { session_id }.to_frame();
        let written = tokio::time::timeout(deadline, host_send.write_all(&incoming)).await;
        if !matches!(written, Ok(Ok(()))) {
            let _ = host_send.reset(codes::stream::PEER_GONE.into());
            let error = refuse(ErrorCode::HostUnreachable, "host went away");
            return send_error(&mut player_send, &error).await;
        }
        let connected = ControlMessage::Connected { session_id }.to_frame();
        let written = tokio::time::timeout(deadline, player_send.write_all(&connected)).await;
        if !matches!(written, Ok(Ok(()))) {
            let _ = host_send.reset(codes::stream::PEER_GONE.into());
            return;
        }

        Stats::bump(&shared.stats.sessions_opened);
        let _active = Active::start(&shared.stats.sessions_active);
        debug!("session spliced");
        let totals = splice::run(
            splice::Side {
                send: player_send,
                recv: player_recv,
            },
            splice::Side {
                send: host_send,
                recv: host_recv,
            },
            &shared,
        )
        .await;
        debug!(
            player_to_host = totals.player_to_host,
            host_to_player = totals.host_to_player,
            "session ended"
        );
    }
    .instrument(span)
    .await
}

/// Counts a session as active until dropped, however the session's task ends.
struct Active<'a>(&'a AtomicU64);

impl<'a> Active<'a> {
    fn start(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Self(gauge)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
