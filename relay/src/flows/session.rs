//! Connect: pairs a player's stream with a new stream to the host it names.
//!
//! The player's stream has sent `Connect { host id }` (read by the connection), and
//! right behind it its Noise hello (PROTOCOL.md section 9.1). The relay checks the
//! player's request rate and how many sessions its address holds, reads the hello
//! (within [`HELLO_TIMEOUT`]: a Connect without one never reaches the host, so it
//! cannot hold the host's session slots), looks the host up, counts the session
//! against the host's cap and reserves its buffers from the relay's budget, opens a
//! stream on the host's connection, writes `Incoming` there and `Connected` to the
//! player (both carrying the session's limits), then splices the two streams, the
//! hello first.
//!
//! Whatever refuses a session gives back what the session held (its host slot, its
//! budget reservation, its places under the per-address caps) *before* the refusal is
//! written, and the refusal is written within a deadline: a player that grants no
//! flow-control credit cannot pin any of them.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use blindrelay_protocol::{codes, ControlMessage, ErrorCode, HostId};
use bytes::Bytes;
use tracing::{debug, info_span, Instrument};

use crate::flows::splice::{self, Meters, SpliceLimits};
use crate::ops::stats::{SessionRefused, Stats};
use crate::policy::admission::{
    self, ConnectionPermit, ConnectionSession, SessionPermit, SessionPlaces,
};
use crate::policy::bucket::TokenBucket;
use crate::state::dials::HostStream;
use crate::state::registry::{Host, HostSession};
use crate::state::RelayState;
use crate::stream::control::{refuse, write_control};
use crate::stream::halves::{Prefixed, SessionSend, StreamRecv, StreamSend};
use crate::stream::link::{Link, TransportKind};
use crate::stream::routed::RoutedStream;
use crate::stream::window::WindowGrant;

/// How long the relay waits for the player's Noise hello after its `Connect`. The
/// reference player sends both in one write; a second implementation must too.
pub(crate) const HELLO_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves a player's session stream whose first message was `Connect { host_id }`.
/// Why a host is offline while the relay drains: its hosts were told to go and
/// register again (elsewhere, or with this relay's successor).
pub(crate) const DRAINING_REASON: &str =
    "host offline here: this relay is shutting down, and its hosts register again \
     elsewhere or when it is back";

pub(crate) async fn pair_and_splice(host_id: HostId, stream: RoutedStream, state: Arc<RelayState>) {
    let started = tokio::time::Instant::now();
    let session_id = state.new_session_id();
    let span = info_span!(
        "session",
        id = session_id,
        host = %crate::ops::privacy::host_tag(&host_id),
        player_transport = stream.link.kind().name(),
    );
    async move {
        let RoutedStream {
            mut send,
            mut recv,
            link,
            window,
            permit,
            ..
        } = stream;
        let player = link.remote_address();
        let paired = pair(host_id, session_id, player, &permit, &mut recv, &state).await;
        let paired = match paired {
            Ok(paired) => paired,
            Err(refused) => {
                // What the session held is already given back (dropped with `pair`'s
                // state); the refusal itself is written within a deadline.
                state.stats.session_refused(refused.why);
                debug!(code = %refused.message_code(), "session refused");
                return refuse(&mut send, &mut recv, &refused.message).await;
            }
        };
        let Paired {
            host_session,
            host_send,
            host_recv,
            hello,
            _places,
            _on_connection,
            _buffers,
            host_window,
        } = paired;
        let tier = &host_session.host().tier;
        let connected = ControlMessage::Connected {
            session_id,
            limits: tier.announced(),
        };
        // Both connections may now receive at full speed (see `transport`).
        let _player_window = window.map(|window| window.open_session());
        if write_control(&mut send, &connected).await.is_err() {
            let mut host_send = host_send;
            host_send.reset(codes::stream::PEER_GONE);
            return;
        }

        Stats::bump(&state.stats.sessions_opened);
        match link.kind() {
            TransportKind::Quic => {}
            TransportKind::Tcp => Stats::bump(&state.stats.sessions_player_tcp),
            TransportKind::WebSocket => Stats::bump(&state.stats.sessions_player_ws),
            TransportKind::WebTransport => Stats::bump(&state.stats.sessions_player_wt),
        }
        match host_session.host().link.kind() {
            TransportKind::Quic => {}
            TransportKind::Tcp => Stats::bump(&state.stats.sessions_host_tcp),
            TransportKind::WebSocket => Stats::bump(&state.stats.sessions_host_ws),
            // A WebTransport link never registers (it has no exporter to prove with).
            TransportKind::WebTransport => {}
        }
        state.stats.pairing.record(started.elapsed());
        let _active = Active::start(&state);
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
            player_to_host: &state.stats.bytes_player_to_host,
            host_to_player: &state.stats.bytes_host_to_player,
            #[cfg(feature = "splice-tap")]
            tap: state.splice_tap.get().map(|tap| &**tap),
        };
        let outcome = splice::run(
            (Prefixed::new(hello, recv), send),
            (host_recv, host_send),
            limits,
            meters,
        )
        .await;
        drop(host_window);
        if let Some(code) = outcome.ended_by {
            state.stats.session_ended_by(code);
        }
        if outcome.moved {
            Stats::bump(&state.stats.sessions_moved_direct);
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

/// A session paired with its host, and everything it holds while it runs.
struct Paired {
    host_session: HostSession,
    host_send: StreamSend,
    host_recv: StreamRecv,
    /// The player's Noise hello, with its length prefix, for the host.
    hello: Bytes,
    _places: SessionPlaces,
    _on_connection: ConnectionSession,
    _buffers: SessionPermit,
    host_window: Option<WindowGrant>,
}

/// Why a session was refused: the counter it bumps and the message the player gets.
struct Refused {
    why: SessionRefused,
    message: ControlMessage,
}

impl Refused {
    fn new(why: SessionRefused, code: ErrorCode, reason: &str) -> Self {
        Self {
            why,
            message: ControlMessage::error(code, reason),
        }
    }

    fn admission(why: SessionRefused, refusal: admission::Refusal) -> Self {
        Self::new(why, refusal.code(), refusal.reason())
    }

    fn message_code(&self) -> ErrorCode {
        match &self.message {
            ControlMessage::Error { code, .. } => *code,
            _ => ErrorCode::Internal,
        }
    }
}

/// Everything up to the host's `Incoming`: rate and per-address caps, the hello, the
/// host, its slot, the budget, the host's stream. On a refusal, everything taken so
/// far is dropped on return, before the caller writes the refusal.
async fn pair(
    host_id: HostId,
    session_id: u64,
    player: SocketAddr,
    connection: &ConnectionPermit,
    recv: &mut StreamRecv,
    state: &RelayState,
) -> Result<Paired, Refused> {
    let rate_limited = |refusal| Refused::admission(SessionRefused::RateLimited, refusal);
    state
        .admission
        .check_session_rate(player)
        .map_err(rate_limited)?;
    let on_connection = connection.hold_session().map_err(rate_limited)?;
    let places = state
        .admission
        .hold_session(player, &host_id)
        .map_err(rate_limited)?;
    let hello = read_hello(recv).await.ok_or_else(|| {
        Refused::new(
            SessionRefused::NoHello,
            ErrorCode::BadRequest,
            "the Noise hello must follow Connect at once",
        )
    })?;
    let host = state.registry.lookup(&host_id).ok_or_else(|| {
        // The same words for every host id: they say what the relay is doing, not
        // whether this host exists.
        let reason = if state.is_draining() {
            DRAINING_REASON
        } else {
            "host offline"
        };
        Refused::new(SessionRefused::HostOffline, ErrorCode::HostOffline, reason)
    })?;
    let host_session = host.start_session().ok_or_else(|| {
        Refused::new(
            SessionRefused::HostBusy,
            ErrorCode::HostBusy,
            "host has as many sessions as the relay allows",
        )
    })?;
    let buffers = state
        .admission
        .reserve_session()
        .map_err(|refusal| Refused::admission(SessionRefused::AtCapacity, refusal))?;
    let unreachable = |reason| {
        Refused::new(
            SessionRefused::HostUnreachable,
            ErrorCode::HostUnreachable,
            reason,
        )
    };
    let deadline = state.config.limits.sessions.open_host_stream_timeout.0;
    let opened = tokio::time::timeout(deadline, open_host_stream(&host, session_id, state)).await;
    let Ok(Some((mut host_send, host_recv))) = opened else {
        return Err(unreachable("host did not accept the session"));
    };
    // The host's connection receives at full speed while it has a session.
    let host_window = host.window.as_ref().map(|window| window.open_session());
    let incoming = ControlMessage::Incoming {
        session_id,
        limits: host.tier.announced(),
    };
    if write_control(&mut host_send, &incoming).await.is_err() {
        host_send.reset(codes::stream::PEER_GONE);
        return Err(unreachable("host went away"));
    }
    Ok(Paired {
        host_session,
        host_send,
        host_recv,
        hello,
        _places: places,
        _on_connection: on_connection,
        _buffers: buffers,
        host_window,
    })
}

/// A new stream to the host for a session: on QUIC, opened on the host's connection;
/// on a stream transport, the connection the host opens when its registration tells
/// it to (`Dial`, see [`crate::state::dials`]). The caller holds the deadline.
async fn open_host_stream(host: &Host, session_id: u64, state: &RelayState) -> Option<HostStream> {
    match &host.link {
        Link::Quic(connection) => {
            let (send, recv) = connection.open_bi().await.ok()?;
            Some((StreamSend::Quic(send), StreamRecv::Quic(recv)))
        }
        Link::Framed(link) => {
            let ask = host.dial.as_ref()?;
            let (dial, mut waiting) = state.dials.expect(session_id);
            // The host's connection for it comes in on its own allowance, and a
            // refusal at the door ends the wait at once.
            let expected = state.admission.expect_dial_back(link.remote);
            ask.send(dial).await.ok()?;
            tokio::select! {
                arrived = waiting.arrival() => arrived,
                () = expected.refused() => None,
            }
        }
        // Never a host's link: a browser cannot register.
        Link::WebTransport(_) => None,
    }
}

/// Reads the player's Noise hello (one length-prefixed Noise message) within
/// [`HELLO_TIMEOUT`], prefix included; `None` if it does not come whole in time.
async fn read_hello(recv: &mut StreamRecv) -> Option<Bytes> {
    let read = async {
        let mut prefix = [0u8; 2];
        recv.read_exact(&mut prefix).await.ok()?;
        let len = usize::from(u16::from_be_bytes(prefix));
        let mut hello = vec![0u8; 2 + len];
        hello[..2].copy_from_slice(&prefix);
        recv.read_exact(&mut hello[2..]).await.ok()?;
        Some(Bytes::from(hello))
    };
    tokio::time::timeout(HELLO_TIMEOUT, read)
        .await
        .ok()
        .flatten()
}

/// Counts a session as active until dropped, however the session's task ends.
struct Active<'a>(&'a RelayState);

impl<'a> Active<'a> {
    fn start(state: &'a RelayState) -> Self {
        state.stats.sessions_active.fetch_add(1, Ordering::AcqRel);
        Self(state)
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

#[cfg(test)]
mod tests {
    //! Session pairing over in-memory stream transports: a player's stream and a
    //! registered host's connection are framed pipes, so every refusal and the
    //! dial-back are exercised without a socket.

    use blindrelay_protocol::registration::EXPORTER_LEN;
    use tokio::sync::mpsc;

    use super::*;
    use crate::policy::admission::ConnectionPermit;
    use crate::policy::limits::Limits;
    use crate::state::dials::DialRequest;
    use crate::stream::link::FramedLink;
    use crate::testing::{admitted, pipe, read_control, state, Peer, HOST, PLAYER};

    fn host_id() -> HostId {
        HostId::from_bytes([9; 32])
    }

    /// The relay's halves of a host's registration stream and its far end, kept
    /// while the host is registered.
    type Registered = (StreamSend, StreamRecv, Peer);

    /// Registers a host on a stream transport; returns the `Dial`s the relay sends
    /// it, and its registration stream.
    fn register_host(state: &RelayState) -> (mpsc::Receiver<DialRequest>, Registered) {
        let (send, recv, connection, peer) = pipe();
        let link = Link::Framed(Arc::new(FramedLink {
            connection,
            remote: HOST.parse().expect("an address"),
            exporter: [0; EXPORTER_LEN],
            kind: TransportKind::Tcp,
        }));
        let mut host = Host::new(
            link,
            admitted(state, HOST),
            None,
            state.tiers.of(&host_id()),
        );
        let (dials, dialled) = mpsc::channel(4);
        host.dial = Some(dials);
        state.registry.insert(host_id(), Arc::new(host));
        (dialled, (send, recv, peer))
    }

    /// A Noise hello as the relay sees it: a length prefix and that many bytes.
    fn hello() -> Vec<u8> {
        let mut hello = vec![0, 96];
        hello.extend([7u8; 96]);
        hello
    }

    /// A player's stream that has sent its hello (or not), as `pair` reads it.
    async fn player(with_hello: bool) -> (StreamRecv, Peer) {
        let (_, recv, _, mut peer) = pipe();
        if with_hello {
            peer.0.write_all(&hello()).await.expect("written");
        }
        (recv, peer)
    }

    async fn pair_as_player(
        state: &RelayState,
        permit: &ConnectionPermit,
        recv: &mut StreamRecv,
    ) -> Result<Paired, Refused> {
        let player = PLAYER.parse().expect("an address");
        pair(host_id(), 42, player, permit, recv, state).await
    }

    #[tokio::test]
    async fn a_session_for_a_host_not_here_is_refused_and_gives_its_places_back() {
        let mut limits = Limits::default();
        limits.sessions.per_ip = 1;
        let state = state(limits);
        let permit = admitted(&state, PLAYER);
        // One session per address: a place not given back would make the second
        // and third rate-limited instead.
        for _ in 0..3 {
            let (mut recv, _peer) = player(true).await;
            let refused = pair_as_player(&state, &permit, &mut recv).await.err();
            let refused = refused.expect("refused");
            assert!(
                matches!(refused.why, SessionRefused::HostOffline),
                "{:?}",
                refused.why
            );
            assert_eq!(refused.message_code(), ErrorCode::HostOffline);
        }
        assert_eq!(state.admission.buffer_in_use(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connect_whose_hello_does_not_follow_is_refused_at_the_hello_deadline() {
        let state = state(Limits::default());
        let (_dials, _host) = register_host(&state);
        let permit = admitted(&state, PLAYER);
        let (mut recv, _peer) = player(false).await;
        let started = tokio::time::Instant::now();
        let refused = pair_as_player(&state, &permit, &mut recv).await.err();
        assert!(matches!(
            refused.expect("refused").why,
            SessionRefused::NoHello
        ));
        let waited = started.elapsed();
        assert!(
            waited >= HELLO_TIMEOUT && waited < HELLO_TIMEOUT * 2,
            "{waited:?}"
        );
    }

    #[tokio::test]
    async fn a_host_at_its_session_cap_is_busy_and_the_refusal_holds_no_budget() {
        let mut limits = Limits::default();
        limits.hosts.max_sessions = 1;
        let state = state(limits);
        let (_dials, _host) = register_host(&state);
        let running = state.registry.lookup(&host_id()).expect("registered");
        let _running = running.start_session().expect("the host's one session");
        let permit = admitted(&state, PLAYER);
        let (mut recv, _peer) = player(true).await;
        let refused = pair_as_player(&state, &permit, &mut recv).await.err();
        let why = refused.expect("refused").why;
        assert!(matches!(why, SessionRefused::HostBusy), "{why:?}");
        assert_eq!(state.admission.buffer_in_use(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_host_that_never_answers_its_dial_is_unreachable_and_leaves_no_wait_behind() {
        let state = state(Limits::default());
        let (mut dials, _host) = register_host(&state);
        let permit = admitted(&state, PLAYER);
        let (mut recv, _peer) = player(true).await;
        let started = tokio::time::Instant::now();
        let refused = pair_as_player(&state, &permit, &mut recv).await.err();
        let refused = refused.expect("refused");
        assert!(matches!(refused.why, SessionRefused::HostUnreachable));
        let deadline = state.config.limits.sessions.open_host_stream_timeout.0;
        assert!(started.elapsed() >= deadline, "{:?}", started.elapsed());
        assert!(dials.try_recv().is_ok(), "the host was asked to dial");
        assert_eq!(state.dials.len(), 0);
        assert_eq!(state.admission.buffer_in_use(), 0);
    }

    #[tokio::test]
    async fn a_host_that_dials_back_gets_incoming_and_the_session_holds_its_budget_until_it_ends() {
        let state = state(Limits::default());
        let (mut dials, _host) = register_host(&state);
        let permit = admitted(&state, PLAYER);
        let (mut recv, _peer) = player(true).await;
        // The host answers its `Dial` on a new connection, as `Accept` does.
        let host = tokio::spawn({
            let state = state.clone();
            async move {
                let dial = dials.recv().await.expect("a Dial");
                let (send, recv, _connection, mut far) = pipe();
                assert!(state
                    .dials
                    .accept(dial.session_id, &dial.secret, (send, recv))
                    .is_ok());
                let incoming = read_control(&mut far.1).await;
                (dial.session_id, incoming, far, _connection)
            }
        });
        let paired = pair_as_player(&state, &permit, &mut recv).await;
        let paired = paired.ok().expect("paired with the host");
        assert_eq!(paired.hello, Bytes::from(hello()));
        let (session_id, incoming, _far, _connection) = host.await.expect("the host's side");
        assert_eq!(session_id, 42);
        assert!(
            matches!(incoming, ControlMessage::Incoming { session_id: 42, .. }),
            "{incoming:?}"
        );
        let reserved = state.config.limits.session_buffer();
        assert_eq!(state.admission.buffer_in_use(), reserved);
        drop(paired);
        assert_eq!(state.admission.buffer_in_use(), 0);
    }
}
