//! Which transports the relayed paths run on, and the `--transport` option that
//! picks them.
//!
//! A relayed session has two legs, each on its own transport: the host's (its
//! registration, and the streams the relay opens to it) and the player's. The
//! relayed paths of a run are one per `--transport` with both legs on it, plus with
//! `--mixed` every pair whose legs differ, so one run compares the transports with
//! each other and with the direct path and the TCP splice. A new transport is one
//! more [`Transport`] variant: its key, its label and the client's preference for it.

use blindrelay_client::{RelayTransport, TransportPreference};

/// How a host or a player reaches the relay.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum, serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// QUIC over UDP: one connection, a stream per session.
    Quic,
    /// TLS 1.3 over TCP: a connection per session.
    Tcp,
    /// A WebSocket over TLS over TCP: a connection per session.
    Websocket,
}

impl Transport {
    /// The word in JSON keys and on the command line.
    pub fn key(self) -> &'static str {
        match self {
            Self::Quic => "quic",
            Self::Tcp => "tcp",
            Self::Websocket => "websocket",
        }
    }

    /// The name in tables.
    pub fn label(self) -> &'static str {
        match self {
            Self::Quic => "QUIC",
            Self::Tcp => "TLS/TCP",
            Self::Websocket => "WebSocket",
        }
    }

    /// The client's setting that forces this transport (never `Auto`: a measured
    /// session must not race another transport).
    pub fn preference(self) -> TransportPreference {
        match self {
            Self::Quic => TransportPreference::Quic,
            Self::Tcp => TransportPreference::Tcp,
            Self::Websocket => TransportPreference::WebSocket,
        }
    }

    /// Whether a session says it went over this transport.
    pub fn carried(self, by: Option<RelayTransport>) -> bool {
        matches!(
            (self, by),
            (Self::Quic, Some(RelayTransport::Quic))
                | (Self::Tcp, Some(RelayTransport::Tcp))
                | (Self::Websocket, Some(RelayTransport::WebSocket))
        )
    }
}

/// The transports of the two legs of a relayed session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Legs {
    /// The host's leg.
    pub host: Transport,
    /// The player's leg.
    pub player: Transport,
}

impl Legs {
    /// Both legs on `transport`.
    pub fn both(transport: Transport) -> Self {
        Self {
            host: transport,
            player: transport,
        }
    }

    /// The JSON key of a relayed path on these legs: `relay_quic`, `relay_tcp`, or
    /// `relay_host_quic_player_tcp` for a mixed pair.
    pub fn key(self) -> String {
        if self.host == self.player {
            format!("relay_{}", self.host.key())
        } else {
            format!(
                "relay_host_{}_player_{}",
                self.host.key(),
                self.player.key()
            )
        }
    }

    /// The name of a relayed path on these legs in tables.
    pub fn label(self) -> String {
        if self.host == self.player {
            format!("relay, {}", self.host.label())
        } else {
            format!(
                "relay, {} host + {} player",
                self.host.label(),
                self.player.label()
            )
        }
    }
}

/// The `--transport` and `--mixed` options of a scenario.
#[derive(Debug, Clone, clap::Args)]
pub struct TransportArgs {
    /// Transports of the relayed paths, each measured with host and player on it
    /// (`quic,tcp` measures both in this run). The first one's figures also go under
    /// the plain `relay_*` keys.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Transport::Quic])]
    pub transport: Vec<Transport>,
}

impl TransportArgs {
    /// The legs of each relayed path, in order: one per transport (duplicates
    /// dropped), then with `mixed` every pair of two different ones.
    pub fn legs(&self, mixed: bool) -> Vec<Legs> {
        let mut transports = Vec::new();
        for &transport in &self.transport {
            if !transports.contains(&transport) {
                transports.push(transport);
            }
        }
        if transports.is_empty() {
            transports.push(Transport::Quic);
        }
        let mut legs: Vec<Legs> = transports.iter().copied().map(Legs::both).collect();
        if mixed {
            for &host in &transports {
                for &player in &transports {
                    if host != player {
                        legs.push(Legs { host, player });
                    }
                }
            }
        }
        legs
    }

    /// Every transport a host or player of this run uses, first one first.
    pub fn transports(&self) -> Vec<Transport> {
        let mut transports = Vec::new();
        for legs in self.legs(false) {
            transports.push(legs.host);
        }
        transports
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[Transport]) -> TransportArgs {
        TransportArgs {
            transport: list.to_vec(),
        }
    }

    #[test]
    fn one_path_per_transport_and_mixed_pairs_on_request() {
        let both = args(&[Transport::Quic, Transport::Tcp, Transport::Quic]);
        assert_eq!(
            both.legs(false),
            vec![Legs::both(Transport::Quic), Legs::both(Transport::Tcp)]
        );
        let mixed = both.legs(true);
        assert_eq!(mixed.len(), 4);
        assert!(mixed.contains(&Legs {
            host: Transport::Quic,
            player: Transport::Tcp
        }));
        assert!(mixed.contains(&Legs {
            host: Transport::Tcp,
            player: Transport::Quic
        }));
        // One transport has no mixed pair.
        assert_eq!(args(&[Transport::Tcp]).legs(true).len(), 1);
        assert_eq!(args(&[]).legs(false), vec![Legs::both(Transport::Quic)]);
    }

    #[test]
    fn keys_and_labels_name_both_legs() {
        assert_eq!(Legs::both(Transport::Quic).key(), "relay_quic");
        assert_eq!(Legs::both(Transport::Tcp).key(), "relay_tcp");
        let mixed = Legs {
            host: Transport::Quic,
            player: Transport::Tcp,
        };
        assert_eq!(mixed.key(), "relay_host_quic_player_tcp");
        assert_eq!(mixed.label(), "relay, QUIC host + TLS/TCP player");
    }

    #[test]
    fn each_transport_forces_its_own_client_setting() {
        assert_eq!(Transport::Quic.preference(), TransportPreference::Quic);
        assert_eq!(Transport::Tcp.preference(), TransportPreference::Tcp);
        assert!(Transport::Tcp.carried(Some(RelayTransport::Tcp)));
        assert!(!Transport::Tcp.carried(Some(RelayTransport::Quic)));
        assert!(!Transport::Quic.carried(None));
    }
}
