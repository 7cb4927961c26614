//! A pool of relays that acts as one (PROTOCOL.md section 18).
//!
//! Every member computes the same owner for a host id from the member list alone
//! (rendezvous hashing, [`blindrelay_protocol::placement`]), so the pool needs no
//! consensus and no shared database: the list comes from the orchestrator the
//! operator runs anyway (DNS SRV records of a headless Service) or from a file.
//!
//! A relay that does not hold a host answers `Connect` and `Register` for it with a
//! `Redirect` to the owner and the next two in rank, the same bytes whether the host
//! exists or not; a request that already followed [`MAX_REDIRECTS`] is served where
//! it lands, so views that briefly disagree still converge. When the view changes,
//! each registration whose owner is now another member is told to `Move` there,
//! spread over a jitter; a draining relay tells all of its hosts.
//!
//! The view is the listed members that answer a QUIC handshake (a draining relay
//! refuses new connections, so it drops out after two refreshes), this relay included while it is
//! listed and not draining. When the list cannot be read, the last view stays.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use blindrelay_protocol::placement::{self, MAX_REDIRECTS, MAX_REDIRECT_MEMBERS};
use blindrelay_protocol::relay_url::canonical_authority;
use blindrelay_protocol::{ControlMessage, HostId};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::state::RelayState;
use crate::stats::Stats;

/// How often a pool member reads the member list by default.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(5);

/// Over how long hosts told to move are spread by default.
pub const DEFAULT_MOVE_JITTER: Duration = Duration::from_secs(3);

/// How many refreshes a member that holds a host it does not own waits before it
/// checks again whether the host should move.
const RECHECK_REFRESHES: u32 = 3;

/// How many probes in a row a member may miss before it leaves the view.
const PROBES_MISSED: u32 = 2;

/// How long a member has to answer a probe's handshake.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The most members a list may name: far above any real pool, so a broken file
/// or DNS answer cannot make every refresh probe thousands of addresses.
pub const MAX_MEMBERS: usize = 1024;

/// This relay's place in a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolConfig {
    /// This relay's member name: `host:port` as clients reach it, canonical.
    pub member: String,
    /// Where the member list comes from.
    pub members: MemberSource,
    /// How often the list is read and the members probed.
    pub refresh: Duration,
    /// Hosts told to move (after a change of membership) are spread over this long.
    pub move_jitter: Duration,
}

impl PoolConfig {
    /// A pool member named `member` (`host:port`), reading its members from
    /// `members`, with the default refresh and jitter.
    pub fn new(member: &str, members: MemberSource) -> Result<Self, PoolConfigError> {
        Ok(Self {
            member: member_name(member)?,
            members,
            refresh: DEFAULT_REFRESH,
            move_jitter: DEFAULT_MOVE_JITTER,
        })
    }
}

/// Where a pool's member list comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemberSource {
    /// A file of member names (`host:port`), one per line; `#` starts a comment.
    File(PathBuf),
    /// DNS SRV records: each record is a member, named by its target and port.
    Dns {
        /// The name whose SRV records list the members, e.g.
        /// `_blindrelay._udp.relay.default.svc.cluster.local`.
        name: String,
        /// The DNS server to ask; `None` uses the system's resolver configuration.
        server: Option<SocketAddr>,
        /// When set, a member is named by its SRV target's first label followed by
        /// this domain (`relay-0` + `relay.example.net`): how a headless Service's
        /// pod names map to the public names clients reach.
        member_domain: Option<String>,
    },
}

/// A pool setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolConfigError {
    /// A member name is not `host:port`.
    #[error("pool member {name:?} is not host:port (a DNS name or IP address, and a port)")]
    MemberName {
        /// The name as given.
        name: String,
    },
}

/// `name` as a canonical member name, or why not.
fn member_name(name: &str) -> Result<String, PoolConfigError> {
    let refused = || PoolConfigError::MemberName {
        name: name.chars().take(300).collect(),
    };
    let canonical = canonical_authority(name.trim()).map_err(|_| refused())?;
    placement::check_member_name(&canonical).map_err(|_| refused())?;
    Ok(canonical)
}

/// A pool member's live view and the decisions it makes from it.
pub(crate) struct Pool {
    config: PoolConfig,
    /// The members believed alive, sorted, this relay included while it is not
    /// draining.
    view: watch::Sender<Arc<[String]>>,
}

impl Pool {
    pub(crate) fn new(config: PoolConfig) -> Self {
        let alone: Arc<[String]> = Arc::from(vec![config.member.clone()]);
        Self {
            config,
            view: watch::channel(alone).0,
        }
    }

    /// This relay's member name.
    pub(crate) fn me(&self) -> &str {
        &self.config.member
    }

    /// The current view.
    pub(crate) fn members(&self) -> Arc<[String]> {
        self.view.borrow().clone()
    }

    /// Where to send a `Connect` or `Register` for `host_id` that followed
    /// `redirects` redirects: `Some(members)` when another member owns the host and
    /// the request may still be redirected; `None` to serve it here. The answer
    /// depends on the host id and the view only, never on whether the host exists.
    pub(crate) fn redirect(&self, host_id: &HostId, redirects: u8) -> Option<Vec<String>> {
        if redirects >= MAX_REDIRECTS {
            return None;
        }
        let members = self.members();
        let ranked = ranked(host_id, &members, None);
        match ranked.first() {
            Some(owner) if owner != self.me() => Some(ranked),
            _ => None,
        }
    }

    /// Where to send a player that asked this member, the host's owner, directly
    /// (no redirect yet) for a host it does not hold: the members ranked after it,
    /// one of which may hold the host while views disagree. `None` past the first
    /// hop, or alone: then the host is offline. Like [`Pool::redirect`], the
    /// answer depends on the host id and the view only.
    pub(crate) fn fallbacks(&self, host_id: &HostId, redirects: u8) -> Option<Vec<String>> {
        if redirects > 0 {
            return None;
        }
        let members = ranked(host_id, &self.members(), Some(self.me()));
        (!members.is_empty()).then_some(members)
    }

    /// The members a host of this relay moves to when this relay leaves the pool
    /// (it drains): the host's ranking without this relay. Empty when this relay is
    /// the only member it knows.
    pub(crate) fn successors(&self, host_id: &HostId) -> Vec<String> {
        ranked(host_id, &self.members(), Some(self.me()))
    }

    /// Resolves when the view says another member owns `host_id` and still says so
    /// after a random wait of up to the move jitter: to the members to move to.
    ///
    /// Checked at every change of the view; and, while this member is not the
    /// host's owner (it took the host past the redirect limit, while views
    /// disagreed), every few refreshes too, so a host taken in during a change
    /// still ends at its owner once the views agree.
    pub(crate) async fn moved_away(&self, host_id: HostId) -> Vec<String> {
        let mut view = self.view.subscribe();
        let recheck = self.config.refresh * RECHECK_REFRESHES;
        loop {
            let owner = self.redirect(&host_id, 0).is_none();
            let changed = async {
                if view.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            if owner {
                changed.await;
            } else {
                tokio::select! {
                    () = changed => {}
                    () = tokio::time::sleep(recheck) => {}
                }
            }
            if self.redirect(&host_id, 0).is_none() {
                continue;
            }
            tokio::time::sleep(self.jitter()).await;
            if let Some(members) = self.redirect(&host_id, 0) {
                return members;
            }
        }
    }

    /// A random wait of up to the move jitter: what spreads the hosts of one change
    /// (or one drain) over time, so the members taking them in are not swamped.
    pub(crate) fn jitter(&self) -> std::time::Duration {
        self.config.move_jitter.mul_f64(fastrand::f64())
    }

    /// Replaces the view; true when it changed.
    fn set_view(&self, mut members: Vec<String>) -> bool {
        members.sort_unstable();
        members.dedup();
        self.view.send_if_modified(|view| {
            if view[..] == members[..] {
                return false;
            }
            *view = Arc::from(members);
            true
        })
    }
}

/// The `Redirect` that answers a `Connect` (`register` false) or a `Register` for
/// `host_id` that followed `redirects` redirects, when this relay is a pool member
/// that should not serve it; counted. A host registered here is served here,
/// whoever owns it. Otherwise a member that does not own the host redirects to its
/// owner, and the owner sends a player that came to it directly on to the members
/// ranked after it, which may hold the host while views disagree: the same
/// answers whether the host exists or not.
pub(crate) fn redirect_for(
    shared: &RelayState,
    host_id: &HostId,
    redirects: u8,
    register: bool,
) -> Option<ControlMessage> {
    let pool = shared.pool.as_ref()?;
    if !register && shared.registry.lookup(host_id).is_some() {
        return None;
    }
    let members = match pool.redirect(host_id, redirects) {
        Some(members) => members,
        None if register => return None,
        None => pool.fallbacks(host_id, redirects)?,
    };
    let counter = if register {
        &shared.stats.pool_redirects_register
    } else {
        &shared.stats.pool_redirects_connect
    };
    Stats::bump(counter);
    Some(ControlMessage::Redirect { members })
}

/// `host_id`'s ranking over `members` (without `except`), cut to the members a
/// `Redirect` names.
fn ranked(host_id: &HostId, members: &[String], except: Option<&str>) -> Vec<String> {
    let names: Vec<&str> = members
        .iter()
        .map(String::as_str)
        .filter(|name| Some(*name) != except)
        .collect();
    // Every name in a view passed `member_name`, so it can be scored.
    let ranked = placement::rank(host_id, &names).unwrap_or_default();
    ranked
        .into_iter()
        .take(MAX_REDIRECT_MEMBERS)
        .map(str::to_owned)
        .collect()
}

/// Reads the member list every refresh, probes the members and updates the view,
/// until the relay stops (the task is aborted with it). A draining relay takes
/// itself out of its view at once.
pub(crate) async fn keep_view(pool: Arc<Pool>, endpoint: quinn::Endpoint, shared: Arc<RelayState>) {
    let mut draining = shared.draining_watch();
    let stats = &shared.stats;
    let prober = Prober::new(endpoint);
    let source = Source::new(&pool.config.members);
    let mut listed: Option<Vec<String>> = None;
    let mut first = true;
    // Probes each listed member has missed in a row.
    let mut missed: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
    loop {
        match source.read().await {
            Ok(members) => listed = Some(members),
            Err(err) => warn!(%err, "cannot read the pool's member list; keeping the last view"),
        }
        if let Some(listed) = &listed {
            let me = pool.me();
            let others: Vec<&str> = listed
                .iter()
                .map(String::as_str)
                .filter(|name| *name != me)
                .collect();
            // At start the listed members are taken as they are: a relay that
            // starts with its pool must not hold every host until it has probed.
            let mut alive: Vec<String> = if first {
                others.iter().map(|name| (*name).to_owned()).collect()
            } else {
                let answered = prober.alive(&others).await;
                // One missed probe is not enough to leave the view (a busy member,
                // a lost packet): moving its hosts away and back costs more than
                // a refresh of patience. Two in a row are.
                missed.retain(|name, _| others.contains(&name.as_str()));
                others
                    .iter()
                    .filter(|name| {
                        let count = missed.entry((**name).to_owned()).or_insert(0);
                        *count = if answered.iter().any(|a| a == **name) {
                            0
                        } else {
                            count.saturating_add(1)
                        };
                        *count < PROBES_MISSED
                    })
                    .map(|name| (*name).to_owned())
                    .collect()
            };
            // A member that is no longer listed is out of the pool: it hands its
            // hosts over as a draining one does.
            if listed.iter().any(|name| name == me) && !*draining.borrow() {
                alive.push(me.to_owned());
            }
            let count = alive.len();
            if pool.set_view(alive) {
                info!(members = count, "pool view changed");
            }
            stats.pool_members.store(count as u64, Ordering::Relaxed);
            first = false;
        }
        tokio::select! {
            () = tokio::time::sleep(pool.config.refresh) => {}
            Ok(()) = draining.changed() => {
                if *draining.borrow() {
                    let without_me: Vec<String> = pool
                        .members()
                        .iter()
                        .filter(|name| *name != pool.me())
                        .cloned()
                        .collect();
                    stats.pool_members.store(without_me.len() as u64, Ordering::Relaxed);
                    pool.set_view(without_me);
                }
            }
        }
    }
}

/// Why the member list could not be read.
#[derive(Debug, thiserror::Error)]
enum SourceError {
    #[error("member file: {0}")]
    File(#[from] std::io::Error),
    #[error("DNS: {0}")]
    Dns(#[from] hickory_resolver::ResolveError),
    #[error("the list names {0} members, more than {MAX_MEMBERS}")]
    TooMany(usize),
}

enum Source {
    File(PathBuf),
    Dns {
        name: String,
        resolver: Box<hickory_resolver::TokioResolver>,
        member_domain: Option<String>,
    },
}

impl Source {
    fn new(source: &MemberSource) -> Self {
        match source {
            MemberSource::File(path) => Self::File(path.clone()),
            MemberSource::Dns {
                name,
                server,
                member_domain,
            } => Self::Dns {
                name: name.clone(),
                resolver: Box::new(resolver(*server)),
                member_domain: member_domain.clone(),
            },
        }
    }

    /// The listed member names, canonical; names that are not `host:port` are
    /// skipped with a warning.
    async fn read(&self) -> Result<Vec<String>, SourceError> {
        let names: Vec<String> = match self {
            Self::File(path) => {
                // A small file, read at each refresh: blocking briefly is cheaper than a
                // thread hop.
                let text = std::fs::read_to_string(path)?;
                text.lines()
                    .map(|line| line.split('#').next().unwrap_or("").trim())
                    .filter(|line| !line.is_empty())
                    .map(str::to_owned)
                    .collect()
            }
            Self::Dns {
                name,
                resolver,
                member_domain,
            } => {
                let records = resolver.srv_lookup(name.as_str()).await?;
                records
                    .iter()
                    .map(|srv| {
                        let target = srv.target().to_ascii();
                        let target = target.trim_end_matches('.');
                        let host = match member_domain {
                            Some(domain) => {
                                let label = target.split('.').next().unwrap_or(target);
                                format!("{label}.{}", domain.trim_matches('.'))
                            }
                            None => target.to_owned(),
                        };
                        format!("{host}:{}", srv.port())
                    })
                    .collect()
            }
        };
        if names.len() > MAX_MEMBERS {
            return Err(SourceError::TooMany(names.len()));
        }
        let mut members = Vec::with_capacity(names.len());
        for name in names {
            match member_name(&name) {
                Ok(member) => members.push(member),
                Err(err) => warn!(%err, "skipping a pool member"),
            }
        }
        Ok(members)
    }
}

/// A resolver that asks `server` (or the system's servers) and caches nothing: the
/// list must follow membership, not a TTL.
fn resolver(server: Option<SocketAddr>) -> hickory_resolver::TokioResolver {
    use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
    use hickory_resolver::name_server::TokioConnectionProvider;
    let provider = TokioConnectionProvider::default();
    let mut builder = match server {
        Some(server) => {
            let servers =
                NameServerConfigGroup::from_ips_clear(&[server.ip()], server.port(), true);
            hickory_resolver::Resolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], servers),
                provider,
            )
        }
        None => hickory_resolver::Resolver::builder_tokio().unwrap_or_else(|err| {
            warn!(%err, "cannot read the system's resolver configuration; using its defaults");
            hickory_resolver::Resolver::builder_with_config(ResolverConfig::default(), provider)
        }),
    };
    builder.options_mut().cache_size = 0;
    builder.options_mut().timeout = Duration::from_secs(2);
    builder.options_mut().attempts = 2;
    builder.build()
}

/// Checks that members answer: a QUIC handshake, closed at once.
///
/// The probe verifies no certificate. It carries nothing and trusts nothing; all
/// it decides is whether a member is offered to clients, which verify the member
/// themselves (by the pool's pin or CA) before they send a byte.
#[derive(Clone)]
struct Prober {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
}

impl Prober {
    fn new(endpoint: quinn::Endpoint) -> Self {
        Self {
            endpoint,
            config: probe_client_config(),
        }
    }

    /// The members of `names` that completed a handshake in time, probed together.
    async fn alive(&self, names: &[&str]) -> Vec<String> {
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
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3 is supported by ring")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![blindrelay_protocol::ALPN.to_vec()];
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

/// Accepts any certificate whose handshake signature verifies: a probe's check of
/// liveness, never of identity (see [`Prober`]).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(i: u32) -> HostId {
        let mut bytes = [0u8; 32];
        bytes[..4].copy_from_slice(&i.to_be_bytes());
        HostId::from_bytes(bytes)
    }

    fn pool(me: &str, members: &[&str]) -> Pool {
        let pool = Pool::new(PoolConfig::new(me, MemberSource::File("unused".into())).unwrap());
        pool.set_view(members.iter().map(|m| (*m).to_owned()).collect());
        pool
    }

    #[test]
    fn member_names_are_canonical_host_and_port() {
        assert_eq!(
            member_name("Relay-0.Example.NET:0443").unwrap(),
            "relay-0.example.net:443"
        );
        assert_eq!(member_name("[::1]:4433").unwrap(), "[::1]:4433");
        for bad in ["relay.example.net", "relay example:1", ":1", "a:0", ""] {
            assert!(member_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_the_owner_serves_and_the_limit_stops_redirects() {
        let members = ["a.test:1", "b.test:1", "c.test:1"];
        let pools: Vec<Pool> = members.iter().map(|me| pool(me, &members)).collect();
        for i in 0..200 {
            let id = host(i);
            let serving: Vec<&Pool> = pools
                .iter()
                .filter(|p| p.redirect(&id, 0).is_none())
                .collect();
            assert_eq!(serving.len(), 1, "exactly one member owns each host");
            let owner = serving[0].me();
            for p in &pools {
                if let Some(members) = p.redirect(&id, 1) {
                    assert_eq!(members[0], owner, "a redirect names the owner first");
                    assert_eq!(members.len(), 3);
                }
                assert_eq!(
                    p.redirect(&id, MAX_REDIRECTS),
                    None,
                    "past the limit: served here"
                );
            }
        }
    }

    #[test]
    fn a_draining_member_hands_its_hosts_to_the_next_in_rank() {
        let members = ["a.test:1", "b.test:1", "c.test:1"];
        let a = pool("a.test:1", &members);
        for i in 0..50 {
            let id = host(i);
            let successors = a.successors(&id);
            assert!(!successors.contains(&"a.test:1".to_owned()));
            let full = ranked(&id, &a.members(), None);
            let expected: Vec<String> = full.into_iter().filter(|m| m != "a.test:1").collect();
            assert_eq!(successors, expected);
        }
        assert!(pool("a.test:1", &["a.test:1"])
            .successors(&host(1))
            .is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn hosts_are_moved_after_a_change_that_gives_them_away() {
        let a = Arc::new(pool("a.test:1", &["a.test:1"]));
        // Alone, `a` owns everything; find a host that `b` takes when it joins.
        let joined = ["a.test:1", "b.test:1"];
        let id = (0..)
            .map(host)
            .find(|id| ranked(id, &joined.map(str::to_owned), None)[0] == "b.test:1")
            .unwrap();
        let kept = (0..)
            .map(host)
            .find(|id| ranked(id, &joined.map(str::to_owned), None)[0] == "a.test:1")
            .unwrap();
        let moved = tokio::spawn({
            let a = a.clone();
            async move { a.moved_away(id).await }
        });
        let stays = tokio::spawn({
            let a = a.clone();
            async move { a.moved_away(kept).await }
        });
        tokio::task::yield_now().await;
        assert!(a.set_view(joined.map(str::to_owned).to_vec()));
        tokio::time::sleep(DEFAULT_MOVE_JITTER + Duration::from_millis(10)).await;
        let members = moved.await.unwrap();
        assert_eq!(members[0], "b.test:1");
        assert!(
            !stays.is_finished(),
            "a host whose owner did not change is not moved"
        );
        stays.abort();
    }
}
