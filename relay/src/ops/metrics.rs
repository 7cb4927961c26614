//! The Prometheus text exposition of the relay's counters.
//!
//! Aggregates only: every label is one of a fixed set of reasons or directions, so no
//! host id, address or key can ever appear in a metric.

use std::fmt::Write;

use crate::ops::stats::HttpOutcome;
use crate::ops::stats::{HistogramSnapshot, StatsSnapshot, LATENCY_BUCKETS};

/// Renders `stats` in the Prometheus text format (version 0.0.4).
pub(crate) fn render(stats: &StatsSnapshot, ready: bool) -> String {
    let mut out = Metrics(String::with_capacity(8 * 1024));
    let s = stats;
    out.gauge(
        "connections_open",
        "Connections open now, every transport.",
        &[("", s.connections_open)],
    );
    out.gauge(
        "handshakes_in_progress",
        "TLS handshakes in progress now.",
        &[("", s.handshakes_in_progress)],
    );
    out.counter(
        "connections_accepted_total",
        "Connections that completed their handshake, by transport.",
        &[
            (
                "transport=\"quic\"",
                s.connections_accepted
                    - s.connections_accepted_tcp
                    - s.connections_accepted_ws
                    - s.connections_accepted_wt,
            ),
            ("transport=\"tcp\"", s.connections_accepted_tcp),
            ("transport=\"websocket\"", s.connections_accepted_ws),
            ("transport=\"webtransport\"", s.connections_accepted_wt),
        ],
    );
    out.counter(
        "tls_handshakes_resumed_total",
        "TLS-over-TCP handshakes (TCP and WebSocket) that resumed a client's earlier session.",
        &[("", s.tls_handshakes_resumed)],
    );
    out.counter(
        "websocket_upgrades_failed_total",
        "WebSocket upgrade requests on the TCP listener that did not become the relay's WebSocket.",
        &[("", s.websocket_upgrades_failed)],
    );
    let http: Vec<(String, u64)> = HttpOutcome::ALL
        .iter()
        .map(|&outcome| {
            (
                format!("outcome=\"{}\"", outcome.name()),
                s.http_requests(outcome),
            )
        })
        .collect();
    let http: Vec<(&str, u64)> = http.iter().map(|(l, c)| (l.as_str(), *c)).collect();
    out.counter(
        "http_requests_total",
        "HTTP requests on the TLS listener (web player, WebSocket upgrades), by outcome.",
        &http,
    );
    out.counter(
        "connections_refused_total",
        "New connections refused before the handshake, by reason.",
        &[
            ("reason=\"rate_limited\"", s.connections_rate_limited),
            ("reason=\"address_cap\"", s.connections_over_address_cap),
            ("reason=\"at_capacity\"", s.connections_at_capacity),
            ("reason=\"draining\"", s.connections_refused_draining),
        ],
    );
    out.counter(
        "connections_retried_total",
        "Connection attempts answered with a QUIC Retry to validate the client's address.",
        &[("", s.connections_retried)],
    );
    out.counter(
        "connections_closed_total",
        "Connections the relay closed itself, by reason.",
        &[
            ("reason=\"shed\"", s.connections_shed),
            ("reason=\"idle\"", s.connections_idle_closed),
            (
                "reason=\"handshake_timeout\"",
                s.connections_handshake_timed_out,
            ),
        ],
    );
    out.counter(
        "admin_connections_dropped_total",
        "Admin connections closed unanswered: displaced by newer ones at the cap, or past their deadline.",
        &[("", s.admin_connections_dropped)],
    );
    out.gauge(
        "registered_hosts",
        "Host ids registered now.",
        &[("", s.registered_hosts)],
    );
    out.counter(
        "registrations_total",
        "Registrations, by result.",
        &[
            ("result=\"accepted\"", s.registrations_accepted),
            ("result=\"refused\"", s.registrations_refused),
        ],
    );
    out.counter(
        "registrations_rate_limited_total",
        "Registrations refused for too many attempts from one address (also counted as refused).",
        &[("", s.registrations_rate_limited)],
    );
    out.counter(
        "registrations_replaced_total",
        "Registrations closed because a newer one took their host id.",
        &[("", s.registrations_replaced)],
    );
    out.counter(
        "tokens_renewed_total",
        "Renewed registration tokens taken on running registrations.",
        &[("", s.tokens_renewed)],
    );
    out.counter(
        "hosts_told_going_away_total",
        "Registered hosts told the relay is going away.",
        &[("", s.hosts_told_going_away)],
    );
    out.gauge(
        "pool_members",
        "Members of the relay's pool as it sees them now, itself included while not draining (0: not in a pool).",
        &[("", s.pool_members)],
    );
    out.counter(
        "pool_redirects_total",
        "Requests for a host another pool member owns, answered with a redirect, by request.",
        &[
            ("reason=\"connect\"", s.pool_redirects_connect),
            ("reason=\"register\"", s.pool_redirects_register),
        ],
    );
    out.counter(
        "pool_hosts_moved_total",
        "Registered hosts told to move to another pool member, by reason.",
        &[
            ("reason=\"membership\"", s.pool_moved_membership),
            ("reason=\"drain\"", s.pool_moved_drain),
        ],
    );
    out.gauge(
        "sessions_active",
        "Sessions being forwarded now.",
        &[("", s.sessions_active)],
    );
    out.counter(
        "sessions_opened_total",
        "Sessions spliced.",
        &[("", s.sessions_opened)],
    );
    out.counter(
        "session_sides_total",
        "Sides of spliced sessions, by side and the transport it came over.",
        &[
            (
                "side=\"player\",transport=\"quic\"",
                s.sessions_opened
                    - s.sessions_player_tcp
                    - s.sessions_player_ws
                    - s.sessions_player_wt,
            ),
            ("side=\"player\",transport=\"tcp\"", s.sessions_player_tcp),
            (
                "side=\"player\",transport=\"websocket\"",
                s.sessions_player_ws,
            ),
            (
                "side=\"player\",transport=\"webtransport\"",
                s.sessions_player_wt,
            ),
            (
                "side=\"host\",transport=\"quic\"",
                s.sessions_opened - s.sessions_host_tcp - s.sessions_host_ws,
            ),
            ("side=\"host\",transport=\"tcp\"", s.sessions_host_tcp),
            ("side=\"host\",transport=\"websocket\"", s.sessions_host_ws),
        ],
    );
    out.counter(
        "sessions_refused_total",
        "Sessions refused after a valid Connect, by reason.",
        &[
            ("reason=\"host_offline\"", s.sessions_refused_offline),
            (
                "reason=\"host_unreachable\"",
                s.sessions_refused_unreachable,
            ),
            ("reason=\"host_busy\"", s.sessions_refused_busy),
            ("reason=\"at_capacity\"", s.sessions_refused_capacity),
            ("reason=\"rate_limited\"", s.sessions_refused_rate),
            ("reason=\"no_hello\"", s.sessions_refused_no_hello),
        ],
    );
    // One series per limit code of the protocol's table, labelled with its name
    // (`STALLED` becomes `limit="stalled"`), so a new limit appears here by itself.
    let ended: Vec<(String, u64)> = s
        .sessions_ended_by_limit
        .iter()
        .map(|(code, count)| {
            let name = code.name().unwrap_or("unknown").to_ascii_lowercase();
            (format!("limit=\"{name}\""), *count)
        })
        .collect();
    let ended: Vec<(&str, u64)> = ended.iter().map(|(l, c)| (l.as_str(), *c)).collect();
    out.counter(
        "sessions_ended_by_limit_total",
        "Sessions the relay ended at a limit, by the limit's stream code.",
        &ended,
    );
    out.counter(
        "bytes_relayed_total",
        "Ciphertext bytes forwarded, by direction.",
        &[
            ("direction=\"player_to_host\"", s.bytes_player_to_host),
            ("direction=\"host_to_player\"", s.bytes_host_to_player),
        ],
    );
    out.gauge(
        "buffer_reserved_bytes",
        "Bytes of the session buffer budget reserved by running sessions.",
        &[("", s.buffer_bytes_reserved)],
    );
    out.gauge(
        "buffer_budget_bytes",
        "The session buffer budget (0: none).",
        &[("", s.buffer_budget)],
    );
    out.counter(
        "bad_requests_total",
        "Streams whose first message was malformed or late.",
        &[("", s.bad_requests)],
    );
    out.counter(
        "addresses_observed_total",
        "Observe requests answered: clients told the address the relay sees them from.",
        &[("", s.addresses_observed)],
    );
    out.counter(
        "sessions_moved_direct_total",
        "Sessions whose ends went on over a direct path they punched (the player reset its stream with MOVED).",
        &[("", s.sessions_moved_direct)],
    );
    out.histogram(
        "handshake_seconds",
        "QUIC handshake latency, first packet to established connection.",
        &s.handshake,
    );
    out.histogram(
        "pairing_seconds",
        "Pairing latency, Connect read to splice started.",
        &s.pairing,
    );
    out.gauge(
        "ready",
        "1 while the relay accepts new connections, 0 while draining.",
        &[("", u64::from(ready))],
    );
    out.gauge(
        "draining",
        "1 while the relay drains, 0 otherwise.",
        &[("", u64::from(!ready))],
    );
    out.0
}

struct Metrics(String);

impl Metrics {
    fn gauge(&mut self, name: &str, help: &str, values: &[(&str, u64)]) {
        self.family(name, help, "gauge", values);
    }

    fn counter(&mut self, name: &str, help: &str, values: &[(&str, u64)]) {
        self.family(name, help, "counter", values);
    }

    fn family(&mut self, name: &str, help: &str, kind: &str, values: &[(&str, u64)]) {
        // Writing to a String cannot fail.
        let _ = writeln!(self.0, "# HELP blindrelay_{name} {help}");
        let _ = writeln!(self.0, "# TYPE blindrelay_{name} {kind}");
        for (labels, value) in values {
            if labels.is_empty() {
                let _ = writeln!(self.0, "blindrelay_{name} {value}");
            } else {
                let _ = writeln!(self.0, "blindrelay_{name}{{{labels}}} {value}");
            }
        }
    }

    fn histogram(&mut self, name: &str, help: &str, histogram: &HistogramSnapshot) {
        let _ = writeln!(self.0, "# HELP blindrelay_{name} {help}");
        let _ = writeln!(self.0, "# TYPE blindrelay_{name} histogram");
        for (bound, count) in LATENCY_BUCKETS.iter().zip(&histogram.cumulative) {
            let _ = writeln!(self.0, "blindrelay_{name}_bucket{{le=\"{bound}\"}} {count}");
        }
        let count = histogram.count;
        let _ = writeln!(self.0, "blindrelay_{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(self.0, "blindrelay_{name}_sum {}", histogram.sum_secs);
        let _ = writeln!(self.0, "blindrelay_{name}_count {count}");
    }
}

#[cfg(test)]
mod tests {
    use blindrelay_protocol::codes;

    use super::*;

    #[test]
    fn every_line_is_well_formed_and_prefixed() {
        let mut stats = StatsSnapshot {
            bytes_host_to_player: 42,
            ..StatsSnapshot::default()
        };
        stats.handshake.cumulative = vec![1; LATENCY_BUCKETS.len()];
        stats.handshake.count = 2;
        let text = render(&stats, true);
        for line in text.lines() {
            if line.starts_with('#') {
                assert!(
                    line.starts_with("# HELP blindrelay_")
                        || line.starts_with("# TYPE blindrelay_"),
                    "{line}"
                );
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("series and value");
            assert!(series.starts_with("blindrelay_"), "{line}");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
        assert!(text.contains("blindrelay_bytes_relayed_total{direction=\"host_to_player\"} 42"));
        assert!(text.contains("blindrelay_handshake_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("blindrelay_ready 1"));
    }

    #[test]
    fn sessions_ended_by_limit_are_labelled_from_the_code_table() {
        let stats = StatsSnapshot {
            sessions_ended_by_limit: vec![
                (codes::stream::STALLED, 3),
                (codes::stream::BYTE_LIMIT, 1),
            ],
            ..StatsSnapshot::default()
        };
        let text = render(&stats, true);
        assert!(text.contains("blindrelay_sessions_ended_by_limit_total{limit=\"stalled\"} 3"));
        assert!(text.contains("blindrelay_sessions_ended_by_limit_total{limit=\"byte_limit\"} 1"));
    }
}
