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
//!
//! The pool lives in three parts: the [`view`](Pool) and the decisions made from
//! it, the [source](source) of the member list, and the [prober](prober) that
//! checks which listed members answer. The task that keeps the view runs them
//! from the server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use blindrelay_protocol::placement;
use blindrelay_protocol::relay_url::canonical_authority;

mod prober;
mod source;
mod view;

pub(crate) use prober::Prober;
pub(crate) use source::Source;
pub(crate) use view::Pool;

/// How often a pool member reads the member list by default.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(5);

/// Over how long hosts told to move are spread by default.
pub const DEFAULT_MOVE_JITTER: Duration = Duration::from_secs(3);

/// How many probes in a row a member may miss before it leaves the view.
pub(crate) const PROBES_MISSED: u32 = 2;

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
pub(crate) fn member_name(name: &str) -> Result<String, PoolConfigError> {
    let refused = || PoolConfigError::MemberName {
        name: name.chars().take(300).collect(),
    };
    let canonical = canonical_authority(name.trim()).map_err(|_| refused())?;
    placement::check_member_name(&canonical).map_err(|_| refused())?;
    Ok(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
