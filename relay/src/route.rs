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

use std::sync::atomic::Ordering;
use std::sync::Arc;

use blindrelay_protocol::control::ControlMessage;
use blindrelay_protocol::control::DIAL_SECRET_LEN;
use blindrelay_protocol::{ErrorCode, HostId};
use tracing::debug;

use crate::ops::stats::{SessionRefused, Stats};
use crate::policy::admission::Refusal;
use crate::state::RelayState;
use crate::stream::control::{read_message, refuse, refuse_stream, ReadMessageError};
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

/// Serves a stream a door accepted: reads its first message within
/// `connections.first_message_timeout`, then routes it. Returns when whatever it
/// was routed to ends.
pub(crate) async fn serve(mut stream: RoutedStream, arrival: Arrival, state: Arc<RelayState>) {
    let deadline = state.config.limits.connections.first_message_timeout.0;
    let first = tokio::time::timeout(deadline, read_message(&mut stream.recv)).await;
    if arrival == Arrival::Framed {
        // Whatever it said, a dial-back's place is free for the host's next.
        stream.permit.end_dial_back();
    }
    let message = match first {
        Ok(Ok(message)) => message,
        // Refusals boxed: a registration's task lives for hours, and a future is as
        // large as its largest await.
        Ok(Err(err)) => {
            return Box::pin(refuse_stream(&state.stats, stream.send, stream.recv, err)).await
        }
        Err(_) => {
            let timeout = ReadMessageError::Timeout;
            return Box::pin(refuse_stream(
                &state.stats,
                stream.send,
                stream.recv,
                timeout,
            ))
            .await;
        }
    };
    let on_probation = stream.probation.load(Ordering::Acquire);
    Route::from_first(message, arrival, on_probation)
        .apply(stream, arrival, state)
        .await;
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
            ControlMessage::Accept { session_id, secret } if arrival == Arrival::Framed => {
                Self::Accept { session_id, secret }
            }
            other => {
                debug!(kind = other.name(), "unexpected first message");
                refuse(
                    Counted::BadRequest,
                    match arrival {
                        Arrival::Quic { .. } => "a stream must start with Register or Connect",
                        Arrival::Framed => "a stream must start with Register, Connect or Accept",
                        Arrival::WebTransport => "a WebTransport stream must start with Connect",
                    },
                )
            }
        }
    }

    /// Serves the route on `stream`, which arrived as `arrival`.
    async fn apply(self, mut stream: RoutedStream, arrival: Arrival, state: Arc<RelayState>) {
        let answer = match self {
            Self::Register {
                host_id,
                token,
                redirects,
            } => match redirect(&state, &host_id, redirects, Asked::Register) {
                Some(redirect) => redirect,
                // Boxed, like a session below: a stream's task is as large as its
                // largest path, and every host holds its registration task for
                // hours. (Built in its box: a future made first and boxed after
                // would still take its full size in this task.)
                None => {
                    return Box::pin(registration::register_and_hold(
                        host_id, token, stream, state,
                    ))
                    .await
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
                    None => {
                        return Box::pin(session::pair_and_splice(host_id, stream, state)).await
                    }
                }
            }
            Self::Accept { session_id, secret } => {
                let RoutedStream {
                    send,
                    recv,
                    link,
                    permit,
                    ..
                } = stream;
                match state.dials.accept(session_id, &secret, (send, recv)) {
                    Ok(()) => {
                        // The session owns the stream now; the connection keeps its
                        // place in the counts (the permit, held here) until it ends.
                        if let Link::Framed(link) = &link {
                            link.connection.closed().await;
                        }
                        drop(permit);
                        return;
                    }
                    Err((mut send, mut recv)) => {
                        Stats::bump(&state.stats.bad_requests);
                        debug!("an Accept that no session waits for");
                        let answer = ControlMessage::error(
                            ErrorCode::BadRequest,
                            "no session waits for this Accept",
                        );
                        return Box::pin(refuse(&mut send, &mut recv, &answer)).await;
                    }
                }
            }
            Self::Refuse { count, answer } => {
                match count {
                    Counted::Registration => Stats::bump(&state.stats.registrations_refused),
                    Counted::BadRequest => Stats::bump(&state.stats.bad_requests),
                    Counted::AtCapacity => state.stats.session_refused(SessionRefused::AtCapacity),
                }
                answer
            }
        };
        // Boxed: routing is part of every registration's long-lived task.
        Box::pin(refuse(&mut stream.send, &mut stream.recv, &answer)).await;
    }
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
    fn any_other_first_message_is_a_bad_request_that_names_what_the_door_takes() {
        let expected = [
            (QUIC_FIRST, "Register or Connect"),
            (QUIC_LATER, "Register or Connect"),
            (Arrival::Framed, "Register, Connect or Accept"),
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
