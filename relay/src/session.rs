//! Connect: pairs a player's stream with a new stream to the host it names.
//!
//! The player's stream has sent `Connect { host id }` (read by the connection). The
//! relay checks the player's request rate, looks the host up, counts the session
//! against the host's cap and reserves its buffers from the relay's budget, opens a
//! stream on the host's connection, writes `Incoming` there and `Connected` to the
//! player (both carrying the session's limits), then splices the two streams. Any
//! bytes the player sent after `Connect` (typically its Noise hello, pipelined to
//! save a round trip) are still in its stream and go to the host first.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use blindrelay_protocol::{codes, ControlMessage, ErrorCode, HostId};
use tracing::{debug, info_span, Instrument};

use crate::bucket::TokenBucket;
use crate::control_stream::send_error;
use crate::splice::{self, Meters, SpliceLimits};
use crate::state::RelayState;
use crate::stats::{SessionRefused, Stats};

pub(crate) async fn serve(
    host_id: HostId,
    mut player_send: quinn::SendStream,
    mut player_recv: quinn::RecvStream,
    player: std::net::SocketAddr,
    shared: Arc<RelayState>,
) {
    let started = tokio::time::Instant::now();
    let session_id = shared.new_session_id();
    let span = info_span!("session", id = session_id, host = %crate::privacy::host_tag(&host_id));
    async move {
        let mut refuse = |why: SessionRefused, code: ErrorCode, reason: &'static str| {
            shared.stats.session_refused(why);
            debug!(%code, "session refused");
            let _ = player_recv.stop(codes::stream::REFUSED.into());
            ControlMessage::error(code, reason)
        };
        if let Err(refusal) = shared.admission.check_session_rate(player) {
            let error = refuse(
                SessionRefused::RateLimited,
                refusal.code(),
                refusal.reason(),
            );
            return send_error(&mut player_send, &error).await;
        }
        let Some(host) = shared.registry.lookup(&host_id) else {
            let error = refuse(
                SessionRefused::HostOffline,
                ErrorCode::HostOffline,
                "host offline",
            );
            return send_error(&mut player_send, &error).await;
        };
        let Some(host_session) = host.start_session() else {
            let error = refuse(
                SessionRefused::HostBusy,
                ErrorCode::HostBusy,
                "host has as many sessions as the relay allows",
            );
            return send_error(&mut player_send, &error).await;
        };
        let _buffers = match shared.admission.reserve_session() {
            Ok(permit) => permit,
            Err(refusal) => {
                let error = refuse(SessionRefused::AtCapacity, refusal.code(), refusal.reason());
                return send_error(&mut player_send, &error).await;
            }
        };
        let limits = &shared.config.limits;
        let deadline = limits.sessions.open_host_stream_timeout.0;
        let opened = tokio::time::timeout(deadline, host.connection.open_bi()).await;
        let Ok(Ok((mut host_send, host_recv))) = opened else {
            let error = refuse(
                SessionRefused::HostUnreachable,
                ErrorCode::HostUnreachable,
                "host did not accept the session",
            );
            return send_error(&mut player_send, &error).await;
        };
        // Both writes wait on flow-control credit; bound them so a peer that grants
        // none cannot pin a stream slot on the host forever.
        let tier = &host_session.host().tier;
        let announced = tier.announced();
        let incoming = ControlMessage::Incoming {
            session_id,
            limits: announced,
        }
        .to_frame();
        let written = tokio::time::timeout(deadline, host_send.write_all(&incoming)).await;
        if !matches!(written, Ok(Ok(()))) {
            let _ = host_send.reset(codes::stream::PEER_GONE.into());
            let error = refuse(
                SessionRefused::HostUnreachable,
                ErrorCode::HostUnreachable,
                "host went away",
            );
            return send_error(&mut player_send, &error).await;
        }
        let connected = ControlMessage::Connected {
            session_id,
            limits: announced,
        }
        .to_frame();
        let written = tokio::time::timeout(deadline, player_send.write_all(&connected)).await;
        if !matches!(written, Ok(Ok(()))) {
            let _ = host_send.reset(codes::stream::PEER_GONE.into());
            return;
        }

        Stats::bump(&shared.stats.sessions_opened);
        shared.stats.pairing.record(started.elapsed());
        let _active = Active::start(&shared);
        debug!("session spliced");
        let bucket = || TokenBucket::new(tier.session_rate, tier.session_burst);
        let (to_host, to_player) = (bucket(), bucket());
        let host = host_session.host();
        let limits = SpliceLimits {
            stall_timeout: tier.stall_timeout,
            idle_timeout: tier.idle_timeout,
            max_duration: tier.max_duration,
            max_bytes: tier.max_bytes,
            player_to_host: [to_host.as_ref(), host.player_to_host.as_ref()],
            host_to_player: [to_player.as_ref(), host.host_to_player.as_ref()],
        };
        let meters = Meters {
            player_to_host: &shared.stats.bytes_player_to_host,
            host_to_player: &shared.stats.bytes_host_to_player,
            #[cfg(feature = "splice-tap")]
            tap: shared.splice_tap.get().map(|tap| &**tap),
        };
        let outcome = splice::run(
            (player_recv, player_send),
            (host_recv, host_send),
            limits,
            meters,
        )
        .await;
        if let Some(code) = outcome.ended_by {
            shared.stats.session_ended_by(code);
        }
        debug!(
            player_to_host = outcome.player_to_host,
            host_to_player = outcome.host_to_player,
            ended_by = outcome.ended_by.and_then(|code| code.name()),
            "session ended"
        );
    }
    .instrument(span)
    .await
}

/// Counts a session as active until dropped, however the session's task ends.
struct Active<'a>(&'a RelayState);

impl<'a> Active<'a> {
    fn start(shared: &'a RelayState) -> Self {
        shared.stats.sessions_active.fetch_add(1, Ordering::AcqRel);
        Self(shared)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        if self.0.stats.sessions_active.fetch_sub(1, Ordering::AcqRel) == 1 {
            // A draining relay waits for this.
            self.0.drain_progress.notify_waiters();
        }
    }
}
