//! Counters of what the relay did: every acceptance, refusal, eviction and byte
//! forwarded.
//!
//! Counters are plain atomics, cheap enough to bump on every chunk. They carry no
//! labels at all, so they cannot leak who used the relay.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use blindrelay_protocol::{codes, StreamCode};

use crate::policy::admission::{Admission, Door, Refusal};

#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub connections_accepted: AtomicU64,
    /// Of those, over TLS/TCP.
    pub connections_accepted_tcp: AtomicU64,
    /// Of those, over WebSocket.
    pub connections_accepted_ws: AtomicU64,
    /// TLS-over-TCP handshakes (TCP and WebSocket) that resumed an earlier session.
    pub tls_handshakes_resumed: AtomicU64,
    /// Of those, WebTransport sessions (counted once the session is accepted).
    pub connections_accepted_wt: AtomicU64,
    /// WebSocket upgrades refused, or not written in time.
    pub websocket_upgrades_failed: AtomicU64,
    /// HTTP requests on the TLS listener, one counter per [`HttpOutcome::ALL`].
    pub http_requests: [AtomicU64; HttpOutcome::ALL.len()],
    pub connections_rate_limited: AtomicU64,
    pub connections_over_address_cap: AtomicU64,
    pub connections_at_capacity: AtomicU64,
    pub connections_refused_draining: AtomicU64,
    pub connections_shed: AtomicU64,
    pub connections_retried: AtomicU64,
    pub connections_handshake_timed_out: AtomicU64,
    pub connections_idle_closed: AtomicU64,
    pub registrations_accepted: AtomicU64,
    pub registrations_refused: AtomicU64,
    pub registrations_rate_limited: AtomicU64,
    pub registrations_replaced: AtomicU64,
    pub tokens_renewed: AtomicU64,
    pub sessions_opened: AtomicU64,
    /// Sessions opened whose player side came over TLS/TCP.
    pub sessions_player_tcp: AtomicU64,
    /// Sessions opened whose host side came over TLS/TCP.
    pub sessions_host_tcp: AtomicU64,
    /// Sessions opened whose player came over WebSocket.
    pub sessions_player_ws: AtomicU64,
    /// Sessions opened whose player came over WebTransport.
    pub sessions_player_wt: AtomicU64,
    /// Sessions opened whose host side came over WebSocket.
    pub sessions_host_ws: AtomicU64,
    pub sessions_active: AtomicU64,
    pub sessions_refused_offline: AtomicU64,
    pub sessions_refused_unreachable: AtomicU64,
    pub sessions_refused_busy: AtomicU64,
    pub sessions_refused_capacity: AtomicU64,
    pub sessions_refused_rate: AtomicU64,
    pub sessions_refused_no_hello: AtomicU64,
    /// Sessions the relay ended at a limit, one counter per code of
    /// [`StreamCode::ALL`] (only the limits' are ever bumped).
    pub sessions_ended: [AtomicU64; StreamCode::ALL.len()],
    pub bad_requests: AtomicU64,
    pub addresses_observed: AtomicU64,
    pub sessions_moved_direct: AtomicU64,
    pub bytes_player_to_host: AtomicU64,
    pub bytes_host_to_player: AtomicU64,
    pub hosts_told_going_away: AtomicU64,
    pub admin_connections_dropped: AtomicU64,
    /// Members in this relay's pool view (itself included while not draining).
    pub pool_members: AtomicU64,
    /// `Connect`s answered with a pool `Redirect`.
    pub pool_redirects_connect: AtomicU64,
    /// `Register`s answered with a pool `Redirect`.
    pub pool_redirects_register: AtomicU64,
    /// Hosts told to `Move` because the pool's membership changed.
    pub pool_moved_membership: AtomicU64,
    /// Hosts told to `Move` because this relay drains.
    pub pool_moved_drain: AtomicU64,
    /// QUIC handshakes, from the first packet to an established connection.
    pub handshake: Histogram,
    /// Pairing, from a readable `Connect` to the start of the splice.
    pub pairing: Histogram,
}

/// Upper bounds, in seconds, of the latency histograms' buckets.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram with fixed buckets, as Prometheus exposes them.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    /// Count per bucket (not cumulative); the last one counts values over every bound.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    pub(crate) fn record(&self, value: Duration) {
        let secs = value.as_secs_f64();
        let index = LATENCY_BUCKETS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let mut counts = Vec::with_capacity(LATENCY_BUCKETS.len());
        for bucket in &self.buckets[..LATENCY_BUCKETS.len()] {
            cumulative += bucket.load(Ordering::Relaxed);
            counts.push(cumulative);
        }
        let count = cumulative + self.buckets[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
        HistogramSnapshot {
            cumulative: counts,
            count,
            sum_secs: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

/// A copy of a latency histogram: cumulative counts for each bound of
/// [`LATENCY_BUCKETS`], the total count and the sum of all values.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct HistogramSnapshot {
    /// Values at or under each bound of [`LATENCY_BUCKETS`], in order.
    pub cumulative: Vec<u64>,
    /// All values recorded.
    pub count: u64,
    /// Their sum, in seconds.
    pub sum_secs: f64,
}

/// Why a session was refused after a readable `Connect`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SessionRefused {
    HostOffline,
    HostUnreachable,
    HostBusy,
    AtCapacity,
    RateLimited,
    NoHello,
}

impl Stats {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn http_request(&self, outcome: HttpOutcome) {
        Self::bump(&self.http_requests[outcome.index()]);
    }

    pub(crate) fn connection_refused(&self, refusal: Refusal) {
        Self::bump(match refusal {
            Refusal::RateLimited => &self.connections_rate_limited,
            Refusal::TooManyFromAddress => &self.connections_over_address_cap,
            Refusal::AtCapacity | Refusal::TooManyHandshakes => &self.connections_at_capacity,
            // Not connection refusals; counted where sessions and registrations are.
            Refusal::TooManySessionsFromAddress | Refusal::TooManySessionsOnConnection => {
                &self.sessions_refused_rate
            }
            Refusal::TooManyRegistrationsFromAddress => &self.registrations_rate_limited,
        });
    }

    pub(crate) fn session_refused(&self, why: SessionRefused) {
        Self::bump(match why {
            SessionRefused::HostOffline => &self.sessions_refused_offline,
            SessionRefused::HostUnreachable => &self.sessions_refused_unreachable,
            SessionRefused::HostBusy => &self.sessions_refused_busy,
            SessionRefused::AtCapacity => &self.sessions_refused_capacity,
            SessionRefused::RateLimited => &self.sessions_refused_rate,
            SessionRefused::NoHello => &self.sessions_refused_no_hello,
        });
    }

    /// Counts a session the relay ended at one of its limits; other codes (passed on
    /// from a side) are not the relay's doing and are not counted here.
    pub(crate) fn session_ended_by(&self, code: StreamCode) {
        if !code.is_limit() {
            return;
        }
        if let Some(index) = StreamCode::ALL.iter().position(|known| *known == code) {
            Self::bump(&self.sessions_ended[index]);
        }
    }

    fn sessions_ended_by(&self, code: StreamCode) -> u64 {
        StreamCode::ALL
            .iter()
            .position(|known| *known == code)
            .map_or(0, |index| {
                self.sessions_ended[index].load(Ordering::Relaxed)
            })
    }
}

/// A copy of the relay's counters at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Connections that completed their handshake, every transport.
    pub connections_accepted: u64,
    /// Of those, over TLS/TCP.
    pub connections_accepted_tcp: u64,
    /// Of those, over WebSocket.
    pub connections_accepted_ws: u64,
    /// TLS-over-TCP handshakes (TCP and WebSocket) that resumed an earlier session:
    /// no certificate, no signature.
    pub tls_handshakes_resumed: u64,
    /// Of those, WebTransport sessions.
    pub connections_accepted_wt: u64,
    /// WebSocket upgrades refused, or not written in time.
    pub websocket_upgrades_failed: u64,
    /// HTTP requests on the TLS listener, by outcome, in the order of
    /// [`HttpOutcome::ALL`] (see [`StatsSnapshot::http_requests`]).
    pub http_requests_by_outcome: [u64; HttpOutcome::ALL.len()],
    /// Connections open now (holding a place in the connection cap).
    pub connections_open: u64,
    /// TLS handshakes in progress now, on both doors (counted against
    /// `connections.max_handshakes` on QUIC and `connections.max_tcp_handshakes` on
    /// TCP, not yet against `connections.max`).
    pub handshakes_in_progress: u64,
    /// New connections refused: too many per second from one address.
    pub connections_rate_limited: u64,
    /// New connections refused: too many open from one address.
    pub connections_over_address_cap: u64,
    /// New connections refused: too many handshakes in progress, or the relay's
    /// connection cap and its headroom are full.
    pub connections_at_capacity: u64,
    /// Connection attempts answered with a QUIC Retry (address validation).
    pub connections_retried: u64,
    /// Handshakes abandoned at `connections.handshake_timeout`.
    pub connections_handshake_timed_out: u64,
    /// New connections refused because the relay is draining.
    pub connections_refused_draining: u64,
    /// Idle registrations closed to make room for new connections.
    pub connections_shed: u64,
    /// Connections closed for having neither registration nor session too long.
    pub connections_idle_closed: u64,
    /// Host ids registered now.
    pub registered_hosts: u64,
    /// Registrations accepted.
    pub registrations_accepted: u64,
    /// Registrations refused (failed proof, malformed, out of order, rate limited).
    pub registrations_refused: u64,
    /// Of those, refused for too many attempts from one address.
    pub registrations_rate_limited: u64,
    /// Registrations closed because a newer one took their host id.
    pub registrations_replaced: u64,
    /// Renewed tokens taken on running registrations (PROTOCOL.md section 8.9).
    pub tokens_renewed: u64,
    /// Sessions spliced.
    pub sessions_opened: u64,
    /// Of those, sessions whose player came over TLS/TCP.
    pub sessions_player_tcp: u64,
    /// Of those, sessions whose host side came over TLS/TCP.
    pub sessions_host_tcp: u64,
    /// Of those, sessions whose player came over WebSocket.
    pub sessions_player_ws: u64,
    /// Of those, sessions whose player came over WebTransport.
    pub sessions_player_wt: u64,
    /// Of those, sessions whose host side came over WebSocket.
    pub sessions_host_ws: u64,
    /// Sessions refused after a valid `Connect`, all reasons together.
    pub sessions_refused: u64,
    /// Refused: host offline.
    pub sessions_refused_offline: u64,
    /// Refused: the host did not take the session stream.
    pub sessions_refused_unreachable: u64,
    /// Refused: the host has as many sessions as allowed.
    pub sessions_refused_busy: u64,
    /// Refused: the relay's session cap or buffer budget.
    pub sessions_refused_capacity: u64,
    /// Refused: too many session requests from one address, or too many sessions
    /// open from it (to all hosts, or to one host).
    pub sessions_refused_rate: u64,
    /// Refused: the player's Noise hello did not follow its `Connect` in time.
    pub sessions_refused_no_hello: u64,
    /// Sessions being forwarded now.
    pub sessions_active: u64,
    /// Sessions ended because one side left its bytes unread too long.
    pub sessions_ended_stalled: u64,
    /// Sessions ended for moving no byte too long.
    pub sessions_ended_idle: u64,
    /// Sessions ended at their maximum duration.
    pub sessions_ended_duration: u64,
    /// Sessions ended at their maximum bytes.
    pub sessions_ended_bytes: u64,
    /// Sessions the relay ended at a limit, by the code it ended them with: every
    /// limit code of [`StreamCode::ALL`], in its order (the four counts above, by
    /// code).
    pub sessions_ended_by_limit: Vec<(StreamCode, u64)>,
    /// Bytes of the session buffer budget reserved by running sessions.
    pub buffer_bytes_reserved: u64,
    /// Streams whose first message could not be decoded or came too late.
    pub bad_requests: u64,
    /// `Observe` requests answered (PROTOCOL.md 10.9).
    pub addresses_observed: u64,
    /// Sessions whose player moved them to a punched direct path (PROTOCOL.md 10.9).
    pub sessions_moved_direct: u64,
    /// Ciphertext bytes forwarded from players to hosts.
    pub bytes_player_to_host: u64,
    /// Ciphertext bytes forwarded from hosts to players.
    pub bytes_host_to_player: u64,
    /// Registered hosts told the relay is going away (at the start of a drain).
    pub hosts_told_going_away: u64,
    /// Members in this relay's pool view, itself included while not draining (0 for
    /// a relay on its own).
    pub pool_members: u64,
    /// `Connect`s answered with a pool `Redirect`.
    pub pool_redirects_connect: u64,
    /// `Register`s answered with a pool `Redirect`.
    pub pool_redirects_register: u64,
    /// Hosts told to move because the pool's membership changed.
    pub pool_moved_membership: u64,
    /// Hosts told to move because this relay drains.
    pub pool_moved_drain: u64,
    /// Admin connections closed unanswered: displaced by newer ones at the cap, or
    /// past their deadline.
    pub admin_connections_dropped: u64,
    /// The session buffer budget, in bytes (0: none).
    pub buffer_budget: u64,
    /// QUIC handshake latency.
    pub handshake: HistogramSnapshot,
    /// Pairing latency: `Connect` read to splice started.
    pub pairing: HistogramSnapshot,
}

impl StatsSnapshot {
    /// HTTP requests on the TLS listener that ended with `outcome`.
    pub fn http_requests(&self, outcome: HttpOutcome) -> u64 {
        self.http_requests_by_outcome[outcome.index()]
    }
}

impl Stats {
    pub(crate) fn snapshot(
        &self,
        registered_hosts: usize,
        admission: &Admission,
        buffer_budget: u64,
    ) -> StatsSnapshot {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let refused = [
            &self.sessions_refused_offline,
            &self.sessions_refused_unreachable,
            &self.sessions_refused_busy,
            &self.sessions_refused_capacity,
            &self.sessions_refused_rate,
            &self.sessions_refused_no_hello,
        ];
        StatsSnapshot {
            connections_accepted: get(&self.connections_accepted),
            connections_accepted_tcp: get(&self.connections_accepted_tcp),
            tls_handshakes_resumed: get(&self.tls_handshakes_resumed),
            connections_accepted_ws: get(&self.connections_accepted_ws),
            connections_accepted_wt: get(&self.connections_accepted_wt),
            websocket_upgrades_failed: get(&self.websocket_upgrades_failed),
            http_requests_by_outcome: std::array::from_fn(|index| get(&self.http_requests[index])),
            connections_open: u64::from(admission.open_connections()),
            handshakes_in_progress: u64::from(admission.handshakes_in_flight(Door::Quic))
                + u64::from(admission.handshakes_in_flight(Door::Tcp)),
            connections_rate_limited: get(&self.connections_rate_limited),
            connections_over_address_cap: get(&self.connections_over_address_cap),
            connections_at_capacity: get(&self.connections_at_capacity),
            connections_refused_draining: get(&self.connections_refused_draining),
            connections_shed: get(&self.connections_shed),
            connections_retried: get(&self.connections_retried),
            connections_handshake_timed_out: get(&self.connections_handshake_timed_out),
            connections_idle_closed: get(&self.connections_idle_closed),
            registered_hosts: registered_hosts as u64,
            registrations_accepted: get(&self.registrations_accepted),
            registrations_refused: get(&self.registrations_refused),
            registrations_rate_limited: get(&self.registrations_rate_limited),
            registrations_replaced: get(&self.registrations_replaced),
            tokens_renewed: get(&self.tokens_renewed),
            sessions_opened: get(&self.sessions_opened),
            sessions_player_tcp: get(&self.sessions_player_tcp),
            sessions_host_tcp: get(&self.sessions_host_tcp),
            sessions_player_ws: get(&self.sessions_player_ws),
            sessions_player_wt: get(&self.sessions_player_wt),
            sessions_host_ws: get(&self.sessions_host_ws),
            sessions_refused: refused.into_iter().map(get).sum(),
            sessions_refused_offline: get(&self.sessions_refused_offline),
            sessions_refused_unreachable: get(&self.sessions_refused_unreachable),
            sessions_refused_busy: get(&self.sessions_refused_busy),
            sessions_refused_capacity: get(&self.sessions_refused_capacity),
            sessions_refused_rate: get(&self.sessions_refused_rate),
            sessions_refused_no_hello: get(&self.sessions_refused_no_hello),
            sessions_active: get(&self.sessions_active),
            sessions_ended_stalled: self.sessions_ended_by(codes::stream::STALLED),
            sessions_ended_idle: self.sessions_ended_by(codes::stream::SESSION_IDLE),
            sessions_ended_duration: self.sessions_ended_by(codes::stream::DURATION_LIMIT),
            sessions_ended_bytes: self.sessions_ended_by(codes::stream::BYTE_LIMIT),
            sessions_ended_by_limit: StreamCode::ALL
                .iter()
                .filter(|code| code.is_limit())
                .map(|&code| (code, self.sessions_ended_by(code)))
                .collect(),
            buffer_bytes_reserved: admission.buffer_in_use(),
            bad_requests: get(&self.bad_requests),
            addresses_observed: get(&self.addresses_observed),
            sessions_moved_direct: get(&self.sessions_moved_direct),
            bytes_player_to_host: get(&self.bytes_player_to_host),
            bytes_host_to_player: get(&self.bytes_host_to_player),
            hosts_told_going_away: get(&self.hosts_told_going_away),
            pool_members: get(&self.pool_members),
            pool_redirects_connect: get(&self.pool_redirects_connect),
            pool_redirects_register: get(&self.pool_redirects_register),
            pool_moved_membership: get(&self.pool_moved_membership),
            pool_moved_drain: get(&self.pool_moved_drain),
            admin_connections_dropped: get(&self.admin_connections_dropped),
            buffer_budget,
            handshake: self.handshake.snapshot(),
            pairing: self.pairing.snapshot(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_counted_by_the_limit_code_that_ended_them() {
        let stats = Stats::default();
        stats.session_ended_by(codes::stream::STALLED);
        stats.session_ended_by(codes::stream::BYTE_LIMIT);
        stats.session_ended_by(codes::stream::BYTE_LIMIT);
        // Codes the relay passed on from a side are not the relay's limits.
        stats.session_ended_by(codes::stream::PEER_GONE);
        stats.session_ended_by(StreamCode::from_u32(0x4242));
        let snapshot = stats.snapshot(0, &Admission::new(&Default::default()), 0);
        assert_eq!(snapshot.sessions_ended_stalled, 1);
        assert_eq!(snapshot.sessions_ended_bytes, 2);
        assert_eq!(snapshot.sessions_ended_idle, 0);
        assert_eq!(
            snapshot.sessions_ended_by_limit,
            [
                (codes::stream::STALLED, 1),
                (codes::stream::SESSION_IDLE, 0),
                (codes::stream::DURATION_LIMIT, 0),
                (codes::stream::BYTE_LIMIT, 2),
            ]
        );
    }

    #[test]
    fn histograms_count_cumulatively_and_keep_the_sum() {
        let histogram = Histogram::default();
        histogram.record(Duration::from_micros(300));
        histogram.record(Duration::from_millis(3));
        histogram.record(Duration::from_secs(60));
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count, 3);
        assert_eq!(snapshot.cumulative[0], 1, "<= 0.5 ms");
        assert_eq!(snapshot.cumulative[3], 2, "<= 5 ms");
        assert_eq!(
            *snapshot.cumulative.last().unwrap(),
            2,
            "60 s is over every bound"
        );
        assert!((snapshot.sum_secs - 60.0033).abs() < 1e-9);
    }
}

/// What became of one HTTP request, for the relay's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HttpOutcome {
    /// A file of the web player was served.
    Player,
    /// The page's WebTransport settings were served.
    WebTransportInfo,
    /// `/` on a host's origin, redirected to the player.
    Redirect,
    /// The request became a WebSocket (a relay connection).
    WebSocket,
    /// Nothing there, or a name that serves no player (404).
    NotFound,
    /// A `Host` that is not this relay's (421).
    Misdirected,
    /// A method other than GET and HEAD (405).
    MethodNotAllowed,
    /// A malformed head or a broken WebSocket upgrade (400, 426).
    BadRequest,
    /// A head over the size bound (431).
    TooLarge,
    /// A head not complete in time (408).
    Timeout,
}

impl HttpOutcome {
    /// Every outcome, in the order of the relay's counters.
    pub const ALL: [Self; 10] = [
        Self::Player,
        Self::WebTransportInfo,
        Self::Redirect,
        Self::WebSocket,
        Self::NotFound,
        Self::Misdirected,
        Self::MethodNotAllowed,
        Self::BadRequest,
        Self::TooLarge,
        Self::Timeout,
    ];

    /// The value of the `outcome` label.
    pub fn name(self) -> &'static str {
        match self {
            Self::Player => "player",
            Self::WebTransportInfo => "webtransport_info",
            Self::Redirect => "redirect",
            Self::WebSocket => "websocket",
            Self::NotFound => "not_found",
            Self::Misdirected => "misdirected",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::BadRequest => "bad_request",
            Self::TooLarge => "too_large",
            Self::Timeout => "timeout",
        }
    }

    pub(crate) fn index(self) -> usize {
        Self::ALL
            .iter()
            .position(|outcome| *outcome == self)
            .unwrap_or_default()
    }
}
