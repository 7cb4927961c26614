//! Which transports a player or host uses to reach its relay, and what it remembers
//! about them.
//!
//! QUIC is the fast default. On networks that block or break UDP (hotels, offices,
//! some mobile networks, routers that mangle large datagrams) the relay is also
//! reachable over TLS 1.3 on TCP, at the same port number, and over a WebSocket in
//! that TLS where only HTTPS gets through. With [`TransportPreference::Auto`], QUIC
//! starts first, TLS over TCP joins after [`DEFAULT_TCP_DELAY`] and WebSocket after
//! as long again, each at once if the one before fails (happy eyeballs, RFC 8305's
//! idea applied to transports); a relay whose UDP failed lately gets TCP at once,
//! beside QUIC, for [`UDP_BROKEN_MEMORY`].

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use blindrelay_protocol::RelayUrl;
use tokio::time::Instant;

use crate::session::RelayTransport;

/// How long QUIC runs alone before TLS over TCP joins the race: several round
/// trips to any relay, short enough that a blocked UDP costs a person nothing they
/// would notice.
pub const DEFAULT_TCP_DELAY: Duration = Duration::from_millis(250);

/// How long a relay whose UDP did not get through is raced over TCP at once.
pub const UDP_BROKEN_MEMORY: Duration = Duration::from_secs(60);

/// Which transports reach the relay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportPreference {
    /// QUIC first, TLS over TCP when QUIC does not get through.
    #[default]
    Auto,
    /// QUIC only.
    Quic,
    /// TLS over TCP only.
    Tcp,
    /// WebSocket (over TLS over TCP) only.
    WebSocket,
}

impl TransportPreference {
    /// The transports this preference allows, in the order they are tried.
    pub(crate) fn transports(self) -> &'static [RelayTransport] {
        match self {
            Self::Quic => &[RelayTransport::Quic],
            Self::Tcp => &[RelayTransport::Tcp],
            Self::WebSocket => &[RelayTransport::WebSocket],
            Self::Auto => &[
                RelayTransport::Quic,
                RelayTransport::Tcp,
                RelayTransport::WebSocket,
            ],
        }
    }
}

impl std::fmt::Display for TransportPreference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Quic => "quic",
            Self::Tcp => "tcp",
            Self::WebSocket => "websocket",
        })
    }
}

/// A transport preference that is not one of `auto`, `quic`, `tcp`, `websocket`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown transport {0:?}: expected auto, quic, tcp or websocket")]
pub struct UnknownTransport(pub String);

impl std::str::FromStr for TransportPreference {
    type Err = UnknownTransport;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "auto" => Ok(Self::Auto),
            "quic" => Ok(Self::Quic),
            "tcp" => Ok(Self::Tcp),
            "websocket" => Ok(Self::WebSocket),
            other => Err(UnknownTransport(other.to_owned())),
        }
    }
}

/// One attempt in a [`race`].
pub(crate) type Attempt<'a, T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'a>>;

/// Runs `attempts` happy-eyeballs style: the first at once, each next one
/// `delays[i]` after the one before it started, or as soon as that one failed. The
/// first to succeed wins, with its index, and the others are dropped (cancelled).
/// An error that `final_answer` says is an answer, not a failure to get through (a
/// refusal), ends the race at once: another transport would hear the same. When
/// every attempt failed, the errors come back in the attempts' order.
pub(crate) async fn race<T, E>(
    mut attempts: Vec<Attempt<'_, T, E>>,
    delays: &[Duration],
    final_answer: impl Fn(&E) -> bool,
) -> Result<(usize, T), Vec<E>> {
    let count = attempts.len();
    let mut running = vec![false; count];
    let mut errors: Vec<Option<E>> = (0..count).map(|_| None).collect();
    let delay_after = |started: usize| delays.get(started).copied().unwrap_or_default();
    // The first attempt starts at once, not when a timer already due fires: tokio's
    // timers fire on a millisecond tick, which every session set-up would pay.
    let mut started = count.min(1);
    if started == 1 {
        running[0] = true;
    }
    let mut timer = Box::pin(tokio::time::sleep(delay_after(started)));
    let mut start_next = false;
    std::future::poll_fn(|cx| loop {
        let mut moved = false;
        if started < count && timer.as_mut().poll(cx).is_ready() {
            running[started] = true;
            started += 1;
            timer.as_mut().reset(Instant::now() + delay_after(started));
            moved = true;
        }
        for index in 0..started {
            if !running[index] {
                continue;
            }
            let Poll::Ready(result) = attempts[index].as_mut().poll(cx) else {
                continue;
            };
            running[index] = false;
            match result {
                Ok(won) => return Poll::Ready(Ok((index, won))),
                Err(err) if final_answer(&err) => {
                    return Poll::Ready(Err(vec![err]));
                }
                Err(err) => {
                    errors[index] = Some(err);
                    // The last one started failed: the next starts now (not at the
                    // timer's next tick), once this pass over the others is done.
                    start_next |= index + 1 == started && started < count;
                    moved = true;
                }
            }
        }
        if std::mem::take(&mut start_next) {
            running[started] = true;
            started += 1;
            timer.as_mut().reset(Instant::now() + delay_after(started));
        }
        if started == count && !running.contains(&true) {
            return Poll::Ready(Err(errors.iter_mut().filter_map(Option::take).collect()));
        }
        if !moved {
            return Poll::Pending;
        }
    })
    .await
}

/// Relays whose UDP did not get through lately, and until when that is believed.
#[derive(Debug, Default)]
pub(crate) struct UdpHealth {
    broken_until: Mutex<HashMap<RelayUrl, Instant>>,
}

impl UdpHealth {
    /// Whether UDP to `url` failed within the last [`UDP_BROKEN_MEMORY`].
    pub(crate) fn is_broken(&self, url: &RelayUrl) -> bool {
        let mut broken = self.lock();
        match broken.get(url) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                broken.remove(url);
                false
            }
            None => false,
        }
    }

    /// A session to `url` had to take TCP.
    pub(crate) fn set_broken(&self, url: &RelayUrl) {
        self.lock()
            .insert(url.clone(), Instant::now() + UDP_BROKEN_MEMORY);
    }

    /// QUIC to `url` works.
    pub(crate) fn set_working(&self, url: &RelayUrl) {
        self.lock().remove(url);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RelayUrl, Instant>> {
        self.broken_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_tries_quic_then_tcp_then_websocket_and_a_choice_only_itself() {
        use RelayTransport::{Quic, Tcp, WebSocket};
        assert_eq!(
            TransportPreference::Auto.transports(),
            [Quic, Tcp, WebSocket]
        );
        assert_eq!(TransportPreference::Quic.transports(), [Quic]);
        assert_eq!(TransportPreference::Tcp.transports(), [Tcp]);
        assert_eq!(TransportPreference::WebSocket.transports(), [WebSocket]);
    }

    #[test]
    fn preferences_parse_and_print_the_same_words() {
        for preference in [
            TransportPreference::Auto,
            TransportPreference::Quic,
            TransportPreference::Tcp,
            TransportPreference::WebSocket,
        ] {
            assert_eq!(preference.to_string().parse(), Ok(preference));
        }
        assert!("udp".parse::<TransportPreference>().is_err());
    }

    fn attempt<'a>(
        after: u64,
        result: Result<&'static str, &'static str>,
    ) -> Attempt<'a, &'static str, &'static str> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(after)).await;
            result
        })
    }

    const STEP: [Duration; 3] = [
        Duration::ZERO,
        Duration::from_millis(250),
        Duration::from_millis(250),
    ];

    #[tokio::test]
    async fn an_answer_ready_at_once_needs_no_timer_tick() {
        // One poll of the race: the first attempt is started and its answer taken
        // in that poll, not after a timer (which fires a millisecond tick later),
        // and so is the next one when the first fails at once.
        let ready = |result| -> Attempt<'static, &'static str, &'static str> {
            Box::pin(std::future::ready(result))
        };
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        let mut one = Box::pin(race(vec![ready(Ok("quic"))], &STEP, |_| false));
        assert_eq!(
            one.as_mut().poll(&mut context),
            Poll::Ready(Ok((0, "quic")))
        );
        let mut two = Box::pin(race(
            vec![ready(Err("no udp")), ready(Ok("tcp"))],
            &STEP,
            |_| false,
        ));
        assert_eq!(two.as_mut().poll(&mut context), Poll::Ready(Ok((1, "tcp"))));
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_transport_wins_when_it_is_quick() {
        let started = Instant::now();
        let won = race(
            vec![
                attempt(100, Ok("quic")),
                attempt(10, Ok("tcp")),
                attempt(10, Ok("ws")),
            ],
            &STEP,
            |_| false,
        )
        .await;
        assert_eq!(won, Ok((0, "quic")));
        assert_eq!(started.elapsed(), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_first_transport_is_overtaken_after_the_delay() {
        let started = Instant::now();
        let won = race(
            vec![
                attempt(4000, Ok("quic")),
                attempt(10, Ok("tcp")),
                attempt(10, Ok("ws")),
            ],
            &STEP,
            |_| false,
        )
        .await;
        assert_eq!(won, Ok((1, "tcp")));
        assert_eq!(started.elapsed(), Duration::from_millis(260));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_starts_the_next_at_once() {
        let started = Instant::now();
        let won = race(
            vec![
                attempt(20, Err("no udp")),
                attempt(30, Err("no tls")),
                attempt(10, Ok("ws")),
            ],
            &STEP,
            |_| false,
        )
        .await;
        assert_eq!(won, Ok((2, "ws")));
        assert_eq!(started.elapsed(), Duration::from_millis(60));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_ends_the_race_and_all_failures_come_back() {
        let refused = race(
            vec![attempt(20, Err("refused")), attempt(10, Ok("tcp"))],
            &STEP,
            |err| *err == "refused",
        )
        .await;
        assert_eq!(refused, Err(vec!["refused"]));
        let failed = race(
            vec![attempt(20, Err("a")), attempt(10, Err("b"))],
            &STEP,
            |_| false,
        )
        .await;
        assert_eq!(failed, Err(vec!["a", "b"]));
    }

    #[tokio::test(start_paused = true)]
    async fn broken_udp_is_remembered_for_a_while_only() {
        let url: RelayUrl = "blindrelay://relay.example:4433".parse().expect("url");
        let health = UdpHealth::default();
        assert!(!health.is_broken(&url));
        health.set_broken(&url);
        assert!(health.is_broken(&url));
        tokio::time::advance(UDP_BROKEN_MEMORY + Duration::from_secs(1)).await;
        assert!(!health.is_broken(&url));
        health.set_broken(&url);
        health.set_working(&url);
        assert!(!health.is_broken(&url));
    }
}
