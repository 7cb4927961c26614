//! The relay's registry, reachable from the criterion benchmarks (feature `bench`;
//! not part of the API).
//!
//! A registry entry holds the host's `quinn::Connection`, and a connection handle
//! exists only for a real connection, so [`LoopbackRegistry`] opens real ones: a
//! relay on loopback with a certificate made in memory, and `connections` client
//! connections to it that the registered hosts share round-robin. Lookups then run
//! through the relay's own [`Registry`] code, the connection's closed check included.
//! Real hosts each have a connection of their own; sharing a few makes the closed
//! check contend on fewer connection locks than in a real relay, which the benchmark
//! says in its output.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use blindrelay_protocol::HostId;

use crate::policy::admission::Admission;
use crate::policy::tiers::Tiers;
use crate::state::registry::{Host, HostSession, Registry};
use crate::stream::window::ReceiveWindow;
use crate::{Limits, Relay, RelayCertificate, RelayConfig};

/// The relay's registry with hosts registered on loopback connections.
pub struct LoopbackRegistry {
    registry: Registry,
    registered: AtomicUsize,
    connections: Vec<quinn::Connection>,
    admission: Arc<Admission>,
    tiers: Tiers,
    limits: Limits,
    _endpoint: quinn::Endpoint,
    _relay: Relay,
}

impl LoopbackRegistry {
    /// Starts a relay on loopback and opens `connections` connections to it. Call
    /// from inside a tokio runtime, which must outlive the registry.
    pub async fn new(connections: usize) -> anyhow::Result<Self> {
        let certificate = RelayCertificate::self_signed(&["localhost"])?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(certificate.leaf().clone())?;
        let limits = Limits::unlimited();
        let mut config = RelayConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), certificate);
        config.limits = limits.clone();
        let relay = Relay::spawn(config)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![blindrelay_protocol::ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
        let mut endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        // Keep-alives, so the relay's idle timeout never closes a connection (and so
        // never turns lookups into removals) however long a benchmark runs.
        let mut transport = quinn::TransportConfig::default();
        transport.keep_alive_interval(Some(Duration::from_secs(5)));
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        client.transport_config(Arc::new(transport));
        endpoint.set_default_client_config(client);
        let mut opened = Vec::with_capacity(connections);
        for _ in 0..connections.max(1) {
            opened.push(endpoint.connect(relay.local_addr(), "localhost")?.await?);
        }
        Ok(Self {
            registry: Registry::default(),
            registered: AtomicUsize::new(0),
            connections: opened,
            admission: Arc::new(Admission::new(&limits)),
            tiers: Tiers::new(&limits)?,
            limits,
            _endpoint: endpoint,
            _relay: relay,
        })
    }

    /// Registers `host_id` as the relay does after a valid proof (newest wins), on
    /// the next connection in turn; returns the registration's number.
    pub fn register(&self, host_id: HostId) -> anyhow::Result<u64> {
        let turn = self.registered.fetch_add(1, Ordering::Relaxed);
        let connection = &self.connections[turn % self.connections.len()];
        let permit = self
            .admission
            .admit_connection(
                connection.remote_address(),
                crate::policy::admission::Door::Quic,
            )
            .map_err(|refusal| anyhow::anyhow!("admission refused: {refusal:?}"))?;
        // Registered hosts have completed their handshake.
        permit.establish();
        let window = ReceiveWindow::new(connection.clone(), &self.limits);
        let host = Arc::new(Host::new(
            crate::stream::link::Link::Quic(connection.clone()),
            Arc::new(permit),
            Some(window),
            self.tiers.of(&host_id),
        ));
        Ok(self.registry.insert(host_id, host).0)
    }

    /// The relay's lookup for a new session: whether `host_id` is registered on an
    /// open connection.
    pub fn lookup(&self, host_id: &HostId) -> bool {
        self.registry.lookup(host_id).is_some()
    }

    /// A lookup and a session counted against the host, as pairing does; the
    /// session ends when the returned value is dropped.
    pub fn start_session(&self, host_id: &HostId) -> Option<BenchSession> {
        let host = self.registry.lookup(host_id)?;
        let session = host.start_session()?;
        Some(BenchSession { _session: session })
    }

    /// Removes `host_id`'s registration `registration`, as the relay does when a
    /// host's connection ends.
    pub fn remove(&self, host_id: &HostId, registration: u64) -> bool {
        self.registry.remove(host_id, registration)
    }

    /// Why each closed connection closed, for a benchmark to check it measured live
    /// registrations only.
    pub fn closed_connections(&self) -> Vec<String> {
        self.connections
            .iter()
            .filter_map(|connection| connection.close_reason())
            .map(|reason| reason.to_string())
            .collect()
    }

    /// Host ids registered now.
    pub fn len(&self) -> usize {
        self.registry.len()
    }

    /// Whether no host id is registered.
    pub fn is_empty(&self) -> bool {
        self.registry.len() == 0
    }
}

/// A session counted against its host until dropped.
pub struct BenchSession {
    _session: HostSession,
}
