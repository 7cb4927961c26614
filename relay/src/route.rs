//! The one router: what a stream's first message asks for, and who serves it,
//! whichever door the stream came through.
//!
//! Every door (a QUIC connection's streams, a TLS or WebSocket connection's one
//! stream, a browser's WebTransport streams) hands its accepted stream to
//! [`serve`], which reads the first message within its deadline and routes it. The
//! decision is [`Route::from_first`]: from the message and how the stream arrived
//! alone, with no I/O, so every branch has a unit test. [`Route::apply`] then
//! serves it: a registration, a player's session, a host's side of a session it was
//! told to dial, a pool's `Redirect`, or a refusal.
//!
//! What differs between the doors is only what each can do: a host registers on
//! the first stream of a QUIC connection or on a stream transport's one stream,
//! never from a browser (it has no TLS exporter to bind the proof to); `Accept`
//! comes only on a stream transport (a QUIC host gets its sessions' streams opened
//! to it instead); and a connection admitted beyond the cap may register but not
//! open sessions.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use blindrelay_protocol::control::ControlMessage;
use blindrelay_protocol::control::DIAL_SECRET_LEN;
use blindrelay_protocol::{ErrorCode, HostId};
use tracing::debug;

use crate::ops::stats::{SessionRefused, Stats};
use crate::policy::admission::Refusal;
use crate::state::RelayState;
use crate::stream::control::{
    read_message, refuse, refuse_stream, write_control, ReadMessageError,
};
use crate::stream::link::Link;
use crate::stream::routed::RoutedStream;
use crate::{flows::registration, flows::session};

/// How a stream reached the router: what it may ask for depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// A stream of a native QUIC connection. Only its first stream may register.
    Quic {
        /// Whether it is the first stream the connection opened.
        first_stream: bool,
    },
    /// The one stream of a TLS-over-TCP or WebSocket connection.
    Framed,
    /// A stream of a browser's WebTransport session: sessions only.
    WebTransport,
}

/// What a stream's first message is routed to. (No `Debug`: it holds a token or a
/// dial's secret.)
pub(crate) enum Route {
    /// A host's registration, held for as long as the stream lives.
    Register {
        host_id: HostId,
        token: Option<Vec<u8>>,
        redirects: u8,
    },
    /// A player's session with a host.
    Connect { host_id: HostId, redirects: u8 },
    /// A stream-transport host's side of a session it was told to dial.
    Accept {
        session_id: u64,
        secret: [u8; DIAL_SECRET_LEN],
    },
    /// A client asks which address the relay sees it come from (PROTOCOL.md 10.9):
    /// answered with it, on any stream of any door but a browser's.
    Observe,
    /// Refused with `answer`, counted as `count`.
    Refuse {
        count: Counted,
        answer: ControlMessage,
    },
}

/// Which counter a refusal at the router adds to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counted {
    /// `registrations_refused`.
    Registration,
    /// `sessions_refused{reason="at_capacity"}`.
    AtCapacity,
    /// `bad_requests`.
    BadRequest,
}

/// What a routed stream runs until it ends: a registration, a session, a refusal.
pub(crate) type Routed = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Serves a stream a door accepted: reads its first message within
/// `connections.first_message_timeout`, then routes it. Returns when whatever it
/// was routed to ends.
///
/// A plain function returning the future: a stream's task is sized for its future's
/// largest state for as long as it lives, and a host's registration stream lives for
/// hours. So reading and routing the first message runs in a box of its own, freed
/// once routed, and the task then holds only the box of what the stream was routed
/// to ([`Route::apply`]).
pub(crate) fn serve(
    stream: RoutedStream,
    arrival: Arrival,
    state: Arc<RelayState>,
) -> impl Future<Output = ()> + Send {
    let first = Box::pin(route_first(stream, arrival, state));
    async move {
        if let Some(routed) = first.await {
            routed.await;
        }
    }
}

/// Reads `stream`'s first message and routes it; `None` when there was none to
/// route (the stream was refused already).
async fn route_first(
    mut stream: RoutedStream,
    arrival: Arrival,
    state: Arc<RelayState>,
) -> Option<Routed> {
    let deadline = state.config.limits.connections.first_message_timeout.0;
    let first = tokio::time::timeout(deadline, read_message(&mut stream.recv))
        .await
        .unwrap_or(Err(ReadMessageError::Timeout));
    if arrival == Arrival::Framed {
        // Whatever it said, a dial-back's place is free for the host's next.
        stream.permit.end_dial_back();
    }
    let message = match first {
        Ok(message) => message,
        Err(err) => {
            refuse_stream(&state.stats, stream.send, stream.recv, err).await;
            return None;
        }
    };
    let on_probation = stream.probation.load(Ordering::Acquire);
    Some(Route::from_first(message, arrival, on_probation).apply(stream, arrival, state))
}

impl Route {
    /// Routes a stream's first `message`, which arrived as `arrival`, on a
    /// connection that is `on_probation` (admitted beyond `connections.max`) or not.
    pub(crate) fn from_first(
        message: ControlMessage,
        arrival: Arrival,
        on_probation: bool,
    ) -> Self {
        let refuse = |count, reason: &str| Self::Refuse {
            count,
            answer: ControlMessage::error(ErrorCode::BadRequest, reason),
        };
        match message {
            ControlMessage::Register { .. } if arrival == Arrival::WebTransport => refuse(
                Counted::Registration,
                "a host registers over QUIC, TLS or WebSocket, not WebTransport",
            ),
            ControlMessage::Register { .. }
                if arrival
                    == (Arrival::Quic {
                        first_stream: false,
                    }) =>
            {
                refuse(
                    Counted::Registration,
                    "register only on the first stream of a connection",
                )
            }
            ControlMessage::Register {
                host_id,
                token,
                redirects,
            } => Self::Register {
                host_id,
                token,
                redirects,
            },
            ControlMessage::Connect { .. } if on_probation => {
                let refusal = Refusal::AtCapacity;
                Self::Refuse {
                    count: Counted::AtCapacity,
                    answer: ControlMessage::error(refusal.code(), refusal.reason()),
                }
            }
            ControlMessage::Connect { host_id, redirects } => Self::Connect { host_id, redirects },
            ControlMessage::Observe if on_probation => {
                let refusal = Refusal::AtCapacity;
                Self::Refuse {
                    count: Counted::AtCapacity,
                    answer: ControlMessage::error(refusal.code(), refusal.reason()),
                }
            }
            ControlMessage::Observe if arrival != Arrival::WebTransport => Self::Observe,
            ControlMessage::Accept { session_id, secret } if arrival == Arrival::Framed => {
                Self::Accept { session_id, secret }
            }
            other => {
                debug!(kind = other.name(), "unexpected first message");
                refuse(
                    Counted::BadRequest,
                    match arrival {
                        Arrival::Quic { .. } => {
                            "a stream must start with Register, Connect or Observe"
                        }
                        Arrival::Framed => {
                            "a stream must start with Register, Connect, Accept or Observe"
                        }
                        Arrival::WebTransport => "a WebTransport stream must start with Connect",
                    },
                )
            }
        }
    }

    /// What serves the route on `stream`, which arrived as `arrival`: each route
    /// in a box of its own size, so a registration's task does not carry a
    /// session's state, nor a session's a refusal's.
    fn apply(self, mut stream: RoutedStream, arrival: Arrival, state: Arc<RelayState>) -> Routed {
        let answer = match self {
            Self::Register {
                host_id,
                token,
                redirects,
            } => match redirect(&state, &host_id, redirects, Asked::Register) {
                Some(redirect) => redirect,
                None => {
                    return Box::pin(registration::register_and_hold(
                        host_id, token, stream, state,
                    ))
                }
            },
            Self::Connect { host_id, redirects } => {
                if let (Arrival::Quic { first_stream: true }, Link::Quic(connection)) =
                    (arrival, &stream.link)
                {
                    // The first stream asks for a session: a player, which may now
                    // open as many streams as the configuration allows (one that a
                    // pool member only redirects is a player too).
                    let streams = state.config.limits.connections.max_streams;
                    connection.set_max_concurrent_bi_streams(streams.into());
                }
                match redirect(&state, &host_id, redirects, Asked::Connect) {
                    Some(redirect) => redirect,
                    None => return Box::pin(session::pair_and_splice(host_id, stream, state)),
                }
            }
            Self::Accept { session_id, secret } => {
                return Box::pin(accept(session_id, secret, stream, state))
            }
            // The address the connection's packets come from, which the relay sees
            // anyway: told to the client, never logged.
            Self::Observe => return Box::pin(observe(stream, state)),
            Self::Refuse { count, answer } => {
                match count {
                    Counted::Registration => Stats::bump(&state.stats.registrations_refused),
                    Counted::BadRequest => Stats::bump(&state.stats.bad_requests),
                    Counted::AtCapacity => state.stats.session_refused(SessionRefused::AtCapacity),
                }
                answer
            }
        };
        Box::pin(async move { refuse(&mut stream.send, &mut stream.recv, &answer).await })
    }
}

/// A stream-transport host's side of the session `session_id` it was told to dial.
async fn accept(
    session_id: u64,
    secret: [u8; DIAL_SECRET_LEN],
    stream: RoutedStream,
    state: Arc<RelayState>,
) {
    let RoutedStream {
        send,
        recv,
        link,
        permit,
        ..
    } = stream;
    match state.dials.accept(session_id, &secret, (send, recv)) {
        Ok(()) => {
            // The session owns the stream now; the connection keeps its place in the
            // counts (the permit, held here) until it ends.
            if let Link::Framed(link) = &link {
                link.connection.closed().await;
            }
            drop(permit);
        }
        Err((mut send, mut recv)) => {
            Stats::bump(&state.stats.bad_requests);
            debug!("an Accept that no session waits for");
            let answer =
                ControlMessage::error(ErrorCode::BadRequest, "no session waits for this Accept");
            refuse(&mut send, &mut recv, &answer).await;
        }
    }
}

/// Tells a client the address its packets come from (PROTOCOL.md 10.9), and where
/// the relay's probe port is when it has one; then the stream ends.
async fn observe(mut stream: RoutedStream, state: Arc<RelayState>) {
    Stats::bump(&state.stats.addresses_observed);
    let observed = ControlMessage::Observed {
        addr: stream.link.remote_address(),
    };
    let last = match state.config.probe_port {
        Some(port) => {
            if write_control(&mut stream.send, &observed).await.is_err() {
                return;
            }
            ControlMessage::ProbePort { port }
        }
        None => observed,
    };
    refuse(&mut stream.send, &mut stream.recv, &last).await;
}

/// What a `Redirect` would answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    Register,
    Connect,
}

/// The `Redirect` that answers a request for `host_id` that followed `redirects`
/// redirects, when this relay is a pool member that should not serve it; counted.
/// A host is registered with its owner; a player is sent where its host is held
/// ([`Pool::redirect_player`](crate::pool::Pool::redirect_player)).
fn redirect(
    state: &RelayState,
    host_id: &HostId,
    redirects: u8,
    asked: Asked,
) -> Option<ControlMessage> {
    let pool = state.pool.as_ref()?;
    let (members, counter) = match asked {
        Asked::Register => (
            pool.redirect(host_id, redirects)?,
            &state.stats.pool_redirects_register,
        ),
        Asked::Connect => {
            let held_here = state.registry.lookup(host_id).is_some();
            (
                pool.redirect_player(host_id, redirects, held_here)?,
                &state.stats.pool_redirects_connect,
            )
        }
    };
    Stats::bump(counter);
    Some(ControlMessage::Redirect { members })
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUIC_FIRST: Arrival = Arrival::Quic { first_stream: true };
    const QUIC_LATER: Arrival = Arrival::Quic {
        first_stream: false,
    };
    const ARRIVALS: [Arrival; 4] = [
        QUIC_FIRST,
        QUIC_LATER,
        Arrival::Framed,
        Arrival::WebTransport,
    ];

    fn host_id() -> HostId {
        HostId::from_bytes([7; 32])
    }

    fn register() -> ControlMessage {
        ControlMessage::Register {
            host_id: host_id(),
            token: Some(b"token".to_vec()),
            redirects: 1,
        }
    }

    fn connect() -> ControlMessage {
        ControlMessage::Connect {
            host_id: host_id(),
            redirects: 2,
        }
    }

    fn accept() -> ControlMessage {
        ControlMessage::Accept {
            session_id: 9,
            secret: [3; DIAL_SECRET_LEN],
        }
    }

    /// The refusal's counter, code and reason; panics on any other route.
    fn refused(route: Route) -> (Counted, ErrorCode, String) {
        match route {
            Route::Refuse {
                count,
                answer: ControlMessage::Error { code, reason },
            } => (count, code, reason),
            Route::Refuse { answer, .. } => panic!("refused with {answer:?}"),
            _ => panic!("not refused"),
        }
    }

    #[test]
    fn a_host_registers_on_a_first_quic_stream_or_a_stream_transport_even_on_probation() {
        for arrival in [QUIC_FIRST, Arrival::Framed] {
            for on_probation in [false, true] {
                let route = Route::from_first(register(), arrival, on_probation);
                let Route::Register {
                    host_id: id,
                    token,
                    redirects,
                } = route
                else {
                    panic!("{arrival:?} on probation {on_probation}: not a registration");
                };
                assert_eq!(
                    (id, token.as_deref(), redirects),
                    (host_id(), Some(&b"token"[..]), 1)
                );
            }
        }
    }

    #[test]
    fn a_registration_on_a_later_quic_stream_or_from_a_browser_is_refused() {
        let (count, code, reason) = refused(Route::from_first(register(), QUIC_LATER, false));
        assert_eq!(
            (count, code),
            (Counted::Registration, ErrorCode::BadRequest)
        );
        assert!(reason.contains("first stream"), "{reason}");
        let (count, code, reason) =
            refused(Route::from_first(register(), Arrival::WebTransport, false));
        assert_eq!(
            (count, code),
            (Counted::Registration, ErrorCode::BadRequest)
        );
        assert!(reason.contains("not WebTransport"), "{reason}");
    }

    #[test]
    fn a_player_connects_through_every_door_unless_on_probation() {
        for arrival in ARRIVALS {
            let Route::Connect {
                host_id: id,
                redirects,
            } = Route::from_first(connect(), arrival, false)
            else {
                panic!("{arrival:?}: not a session");
            };
            assert_eq!((id, redirects), (host_id(), 2));
            let (count, code, reason) = refused(Route::from_first(connect(), arrival, true));
            assert_eq!(count, Counted::AtCapacity, "{arrival:?}");
            assert_eq!(code, Refusal::AtCapacity.code());
            assert_eq!(reason, Refusal::AtCapacity.reason());
        }
    }

    #[test]
    fn only_a_stream_transport_may_accept_a_dial() {
        let Route::Accept { session_id, secret } =
            Route::from_first(accept(), Arrival::Framed, false)
        else {
            panic!("not an Accept");
        };
        assert_eq!((session_id, secret), (9, [3; DIAL_SECRET_LEN]));
        for arrival in [QUIC_FIRST, QUIC_LATER, Arrival::WebTransport] {
            let (count, code, _) = refused(Route::from_first(accept(), arrival, false));
            assert_eq!((count, code), (Counted::BadRequest, ErrorCode::BadRequest));
        }
    }

    #[test]
    fn an_address_is_observed_through_every_door_but_a_browsers_and_not_on_probation() {
        for arrival in [QUIC_FIRST, QUIC_LATER, Arrival::Framed] {
            assert!(
                matches!(
                    Route::from_first(ControlMessage::Observe, arrival, false),
                    Route::Observe
                ),
                "{arrival:?}"
            );
            let (count, code, _) =
                refused(Route::from_first(ControlMessage::Observe, arrival, true));
            assert_eq!(
                (count, code),
                (Counted::AtCapacity, Refusal::AtCapacity.code())
            );
        }
        let (count, code, _) = refused(Route::from_first(
            ControlMessage::Observe,
            Arrival::WebTransport,
            false,
        ));
        assert_eq!((count, code), (Counted::BadRequest, ErrorCode::BadRequest));
    }

    #[test]
    fn any_other_first_message_is_a_bad_request_that_names_what_the_door_takes() {
        let expected = [
            (QUIC_FIRST, "Register, Connect or Observe"),
            (QUIC_LATER, "Register, Connect or Observe"),
            (Arrival::Framed, "Register, Connect, Accept or Observe"),
            (Arrival::WebTransport, "must start with Connect"),
        ];
        let others = [
            ControlMessage::Renew { token: vec![1] },
            ControlMessage::Redirect {
                members: vec!["a.test:1".into()],
            },
            ControlMessage::error(ErrorCode::BadRequest, "no"),
        ];
        for (arrival, names) in expected {
            for other in others.clone() {
                let (count, code, reason) = refused(Route::from_first(other, arrival, false));
                assert_eq!((count, code), (Counted::BadRequest, ErrorCode::BadRequest));
                assert!(reason.contains(names), "{arrival:?}: {reason}");
            }
        }
    }
}

#[cfg(test)]
mod served {
    //! The router's I/O over in-memory stream transports: what a peer reads back
    //! for each refusal, and what is counted.

    use std::sync::atomic::{AtomicBool, Ordering};

    use blindrelay_protocol::registration::EXPORTER_LEN;
    use blindrelay_protocol::PROTOCOL_VERSION;

    use super::*;
    use crate::policy::limits::Limits;
    use crate::pool::{MemberSource, PoolConfig};
    use crate::stream::link::{FramedLink, TransportKind};
    use crate::testing::{admitted, pipe, read_control, state, state_with, Peer, PLAYER};

    /// A stream from `PLAYER` on a stream transport, as its door hands it over.
    fn routed(state: &RelayState, on_probation: bool) -> (RoutedStream, Peer) {
        let (send, recv, connection, peer) = pipe();
        let link = Link::Framed(Arc::new(FramedLink {
            connection,
            remote: PLAYER.parse().expect("an address"),
            exporter: [0; EXPORTER_LEN],
            kind: TransportKind::Tcp,
        }));
        let stream = RoutedStream {
            send,
            recv,
            link,
            permit: admitted(state, PLAYER),
            window: None,
            probation: Arc::new(AtomicBool::new(on_probation)),
            is_host: Arc::new(AtomicBool::new(false)),
        };
        (stream, peer)
    }

    /// Serves a stream whose peer sent `first`, and returns what the peer reads.
    async fn answer_to(
        state: &Arc<RelayState>,
        first: &[u8],
        on_probation: bool,
    ) -> ControlMessage {
        let (stream, mut peer) = routed(state, on_probation);
        peer.0.write_all(first).await.expect("written");
        serve(stream, Arrival::Framed, state.clone()).await;
        read_control(&mut peer.1).await
    }

    fn error_of(message: ControlMessage) -> (ErrorCode, String) {
        match message {
            ControlMessage::Error { code, reason } => (code, reason),
            other => panic!("not an error: {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_unreadable_first_message_is_answered_bad_request_and_counted() {
        let state = state(Limits::default());
        // A frame of three bytes that are no message.
        let (code, _) =
            error_of(answer_to(&state, &[0, 3, PROTOCOL_VERSION, 0xee, 0], false).await);
        assert_eq!(code, ErrorCode::BadRequest);
        assert_eq!(state.stats.bad_requests.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn an_observe_is_answered_with_the_address_the_relay_sees_and_counted() {
        let state = state(Limits::default());
        let answer = answer_to(&state, &ControlMessage::Observe.to_frame(), false).await;
        let ControlMessage::Observed { addr } = answer else {
            panic!("not Observed: {answer:?}");
        };
        assert_eq!(addr, PLAYER.parse().unwrap());
        assert_eq!(state.stats.addresses_observed.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_message_of_another_protocol_version_is_answered_with_that_code() {
        let state = state(Limits::default());
        let (code, reason) = error_of(answer_to(&state, &[0, 2, 9, 1], false).await);
        assert_eq!(code, ErrorCode::UnsupportedVersion, "{reason}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_says_nothing_is_refused_at_the_first_message_deadline() {
        let state = state(Limits::default());
        let started = tokio::time::Instant::now();
        let (code, reason) = error_of(answer_to(&state, &[], false).await);
        assert_eq!(code, ErrorCode::BadRequest);
        assert!(reason.contains("deadline"), "{reason}");
        let deadline = state.config.limits.connections.first_message_timeout.0;
        assert!(started.elapsed() >= deadline, "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn an_accept_that_no_session_waits_for_is_refused() {
        let state = state(Limits::default());
        let accept = ControlMessage::Accept {
            session_id: 7,
            secret: [1; DIAL_SECRET_LEN],
        };
        let (code, reason) = error_of(answer_to(&state, &accept.to_frame(), false).await);
        assert_eq!(code, ErrorCode::BadRequest);
        assert!(reason.contains("no session waits"), "{reason}");
        assert_eq!(state.stats.bad_requests.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn a_connect_on_probation_is_refused_at_capacity_and_counted() {
        let state = state(Limits::default());
        let connect = ControlMessage::Connect {
            host_id: HostId::from_bytes([2; 32]),
            redirects: 0,
        };
        let (code, _) = error_of(answer_to(&state, &connect.to_frame(), true).await);
        assert_eq!(code, ErrorCode::AtCapacity);
        assert_eq!(
            state
                .stats
                .sessions_refused_capacity
                .load(Ordering::Relaxed),
            1
        );
    }

    #[tokio::test]
    async fn a_pool_member_sends_a_registration_to_the_hosts_owner() {
        let state = state_with(Limits::default(), |config| {
            let members = MemberSource::File("members".into());
            config.pool = Some(PoolConfig::new("a.test:1", members).expect("a member name"));
        });
        let pool = state.pool.as_ref().expect("a pool");
        pool.set_view(vec!["a.test:1".to_owned(), "b.test:1".to_owned()]);
        let host_id = (0u8..)
            .map(|i| HostId::from_bytes([i; 32]))
            .find(|id| pool.redirect(id, 0).is_some())
            .expect("a host b owns");
        let register = ControlMessage::Register {
            host_id,
            token: None,
            redirects: 0,
        };
        match answer_to(&state, &register.to_frame(), false).await {
            ControlMessage::Redirect { members } => assert_eq!(members[0], "b.test:1"),
            other => panic!("not redirected: {other:?}"),
        }
        assert_eq!(
            state.stats.pool_redirects_register.load(Ordering::Relaxed),
            1
        );
    }

    #[tokio::test]
    async fn a_dial_back_gives_its_place_back_as_soon_as_its_first_message_is_read() {
        let mut limits = Limits::default();
        limits.connections.per_ip = 1;
        let state = state(limits);
        // A host at PLAYER's address is asked to dial back for one session.
        let (dial, mut waiting) = state.dials.expect(7);
        let _expected = state
            .admission
            .expect_dial_back(PLAYER.parse().expect("an address"));
        // Its connection comes in on the dial-back's place, past the address's cap.
        let (stream, mut peer) = routed(&state, false);
        let accept = ControlMessage::Accept {
            session_id: dial.session_id,
            secret: dial.secret,
        };
        peer.0.write_all(&accept.to_frame()).await.expect("written");
        let served = tokio::spawn(serve(stream, Arrival::Framed, state.clone()));
        // The session has the host's stream: the router read the Accept, and holds
        // the connection's permit until it ends.
        assert!(waiting.arrival().await.is_some());
        // The place is free for the host's next dial-back already: one more
        // connection from the address comes in past its cap of one.
        let next = state.admission.admit_connection(
            PLAYER.parse().expect("an address"),
            crate::policy::admission::Door::Tcp,
        );
        assert!(next.is_ok(), "{:?}", next.err());
        served.abort();
    }
}
