//! Which listed members answer: a QUIC handshake to each, closed at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tracing::debug;

/// How long a member has to answer a probe's handshake.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Checks that members answer: a QUIC handshake, closed at once.
///
/// The probe verifies no certificate. It carries nothing and trusts nothing; all
/// it decides is whether a member is offered to clients, which verify the member
/// themselves (by the pool's pin or CA) before they send a byte.
#[derive(Clone)]
pub(crate) struct Prober {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
}

impl Prober {
    pub(crate) fn new(endpoint: quinn::Endpoint) -> Self {
        Self {
            endpoint,
            config: probe_client_config(),
        }
    }

    /// The members of `names` that completed a handshake in time, probed together.
    pub(crate) async fn alive(&self, names: &[&str]) -> Vec<String> {
        let mut probes = tokio::task::JoinSet::new();
        for name in names {
            let (prober, name) = (self.clone(), (*name).to_owned());
            probes.spawn(async move {
                let alive = tokio::time::timeout(PROBE_TIMEOUT, prober.probe(&name))
                    .await
                    .unwrap_or(false);
                if !alive {
                    debug!(member = %name, "pool member did not answer its probe");
                }
                alive.then_some(name)
            });
        }
        let mut alive = Vec::with_capacity(names.len());
        while let Some(joined) = probes.join_next().await {
            if let Ok(Some(name)) = joined {
                alive.push(name);
            }
        }
        alive
    }

    async fn probe(&self, name: &str) -> bool {
        let Some((host, port)) = name.rsplit_once(':') else {
            return false;
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let Ok(port) = port.parse::<u16>() else {
            return false;
        };
        let local = self.endpoint.local_addr().ok();
        let addrs = match tokio::net::lookup_host((host, port)).await {
            Ok(addrs) => addrs,
            Err(_) => return false,
        };
        // An endpoint bound to one family reaches only that family.
        let same_family = |addr: &SocketAddr| match local {
            Some(local) if local.is_ipv4() => addr.is_ipv4(),
            _ => true,
        };
        for addr in addrs.filter(same_family) {
            let Ok(connecting) =
                self.endpoint
                    .connect_with(self.config.clone(), addr, server_name(host))
            else {
                continue;
            };
            if let Ok(connection) = connecting.await {
                connection.close(0u32.into(), b"pool probe");
                return true;
            }
        }
        false
    }
}

/// The name a probe's handshake presents: the member's DNS name, or a placeholder
/// for an address (the probe checks no certificate either way).
fn server_name(host: &str) -> &str {
    if host.parse::<std::net::IpAddr>().is_ok() {
        "pool-member.invalid"
    } else {
        host
    }
}

/// A QUIC client configuration for probes: the relay's ALPN, no certificate check
/// (see [`Prober`]).
fn probe_client_config() -> quinn::ClientConfig {
    let tls = blindrelay_transport::danger::client_config(blindrelay_protocol::ALPN);
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .expect("a TLS 1.3 configuration suits QUIC");
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(PROBE_TIMEOUT).expect("a small timeout fits"),
    ));
    config.transport_config(Arc::new(transport));
    config
}
