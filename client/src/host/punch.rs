//! The host's side of hole punching (PROTOCOL.md 10.9; see [`crate::punch`]): what
//! it tells a player in a punch session, and the packets it sends the player's way.
//!
//! The host's candidates are the address its relay observed for its socket (asked
//! again on every registration), its LAN address on that socket's port, and the
//! direct addresses its ticket advertises. The player's candidates come only inside
//! the punch session, from a player the host serves: the host sends packets to
//! addresses a served player named, never to one a stranger did.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Mutex;

use blindrelay_protocol::punch::Candidates;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info};

use std::sync::atomic::Ordering;

use blindrelay_protocol::{codes, RelayUrl};
use tokio::task::JoinSet;

use super::accept::SessionAcceptor;
use super::{direct, HostConfig};
use crate::endpoint::{direct_client_config, ConnectionProfile, TlsSetupError, DIRECT_SERVER_NAME};
use crate::punch::{
    lan_candidate, maps_per_destination, observe, path_binding, punch, punch_once, read_candidates,
    read_ready, send_candidates, send_path_check, worth_trying, PUNCH_EVERY, PUNCH_FOR,
};
use crate::stream::SecureStream;

/// What a host needs to answer punch sessions.
pub(super) struct HostPunch {
    /// A second handle on the socket the direct listener and the relay connection
    /// use: punch packets must leave from the mapping the relay observed.
    socket: UdpSocket,
    /// The direct listener on that socket, from which the host dials a player
    /// that asks it to (roles swapped), with `dial`.
    endpoint: quinn::Endpoint,
    dial: quinn::ClientConfig,
    /// Direct connections the host holds at most, dialled ones included.
    max_direct: u32,
    bound: SocketAddr,
    advertised: Vec<SocketAddr>,
    /// What the relay saw of `socket`, as of the latest registration, and whether
    /// the NAT maps each destination anew (as far as the relay's probe port told).
    observed: Mutex<Option<(SocketAddr, bool)>>,
}

/// Where a [`HostPunch`] punches from.
pub(super) struct PunchFrom {
    /// A second handle on the direct listener's socket.
    pub socket: UdpSocket,
    /// The direct listener.
    pub endpoint: quinn::Endpoint,
    /// Where it is bound.
    pub bound: SocketAddr,
}

impl HostPunch {
    pub(super) fn new(
        from: PunchFrom,
        config: &HostConfig,
        advertised: Vec<SocketAddr>,
    ) -> Result<Self, TlsSetupError> {
        let profile = ConnectionProfile {
            incoming_streams: config.max_concurrent_sessions,
            keep_alive: config.keep_alive,
            idle_timeout: config.idle_timeout,
        };
        Ok(Self {
            socket: from.socket,
            endpoint: from.endpoint,
            dial: direct_client_config(profile)?,
            max_direct: config.max_direct_connections,
            bound: from.bound,
            advertised,
            observed: Mutex::new(None),
        })
    }

    fn observed(&self) -> Option<(SocketAddr, bool)> {
        *self
            .observed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Asks the relay at `url` on `connection` (a registration's, from this host's
    /// socket) which address it sees, and at its probe port whether this host's NAT
    /// maps each destination anew; keeps both for the next punch sessions.
    pub(super) async fn observe_on(&self, connection: &quinn::Connection, url: &RelayUrl) {
        match observe(connection).await {
            Ok(seen) => {
                // Only from the socket the registration uses.
                let same_socket = self.bound.is_ipv4() == connection.remote_address().is_ipv4();
                let per_destination = match same_socket {
                    true => maps_per_destination(&self.endpoint, connection, url, &seen).await,
                    false => None,
                };
                if per_destination == Some(true) {
                    info!("this host's NAT maps each destination to a new port: players dial it only where their own NAT lets it in");
                }
                let now = (seen.addr, per_destination == Some(true));
                let before = self
                    .observed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .replace(now);
                if before != Some(now) {
                    debug!("the relay observed this host's address (kept for punching)");
                }
            }
            // A relay from before punching: players still get the LAN and
            // advertised candidates.
            Err(err) => debug!(%err, "the relay did not say which address it sees"),
        }
    }

    /// This host's candidates, the public one first.
    fn candidates(&self, relay: Option<SocketAddr>) -> Candidates {
        let observed = self.observed();
        let public = observed.map(|(addr, _)| addr);
        let lan = if self.bound.ip().is_unspecified() {
            relay
                .or(public)
                .and_then(|toward| lan_candidate(toward, self.bound.port()))
        } else {
            Some(self.bound)
        };
        Candidates::new(
            public
                .into_iter()
                .chain(lan)
                .chain(self.advertised.iter().copied()),
        )
        .mapped_per_destination(observed.is_some_and(|(_, per_destination)| per_destination))
    }

    /// Serves one punch session from a player this host serves: takes the player's
    /// candidates, answers with its own, and punches toward the player's until the
    /// player ends the session or [`crate::punch::PUNCH_FOR`] has passed.
    pub(super) async fn serve(&self, mut stream: SecureStream, acceptor: &SessionAcceptor) {
        let theirs = match read_candidates(&mut stream).await {
            Ok(candidates) => candidates,
            Err(err) => return debug!(%err, "a punch session without candidates"),
        };
        let toward = theirs.addrs.first().copied();
        let ours = self.candidates(toward);
        if theirs.dial_back {
            return self.dial_back(stream, &theirs, &ours, acceptor).await;
        }
        // Not toward an address the player's NAT gave the relay alone: its dial
        // leaves from a port no one knows.
        let targets = worth_trying(&ours, &theirs);
        // A first round before the answer: by the time the player has the host's
        // candidates and dials, this side's NAT already lets its Initial in (one
        // that came first would be dropped, and QUIC sends it again only after
        // about a second).
        punch_once(&self.socket, &targets);
        if send_candidates(&mut stream, &ours).await.is_err() {
            return;
        }
        if targets.is_empty() {
            debug!(player = %stream.peer().short(), "nothing of the player's worth a punch packet");
            let _ = tokio::time::timeout(PUNCH_FOR, until_end(&mut stream)).await;
            let _ = tokio::time::timeout(PUNCH_EVERY, stream.shutdown()).await;
            return;
        }
        info!(
            player = %stream.peer().short(),
            candidates = targets.len(),
            "punching toward a player for a direct path"
        );
        // Until the player is done with its attempt, or the punching is.
        tokio::select! {
            () = punch(&self.socket, &targets) => {}
            () = until_end(&mut stream) => {}
        }
        let _ = tokio::time::timeout(PUNCH_EVERY, stream.shutdown()).await;
    }

    /// Serves one punch session whose player asked to be dialled (roles swapped):
    /// answers with this host's candidates, waits until the player says its NAT is
    /// open toward them, then dials the player's candidates from the direct
    /// listener's socket. The first connection made is served as a direct
    /// connection, which the player checks as it checks any punched path.
    async fn dial_back(
        &self,
        mut stream: SecureStream,
        theirs: &Candidates,
        ours: &Candidates,
        acceptor: &SessionAcceptor,
    ) {
        if send_candidates(&mut stream, ours).await.is_err() {
            return;
        }
        if let Err(err) = read_ready(&mut stream).await {
            return debug!(%err, "a player asked to be dialled and never said when");
        }
        info!(
            player = %stream.peer().short(),
            candidates = theirs.addrs.len(),
            "dialling a player for a direct path (roles swapped)"
        );
        let mut dials = JoinSet::new();
        for addr in &worth_trying(ours, theirs) {
            let Ok(connecting) =
                self.endpoint
                    .connect_with(self.dial.clone(), *addr, DIRECT_SERVER_NAME)
            else {
                continue;
            };
            dials.spawn(async move {
                match tokio::time::timeout(PUNCH_FOR, connecting).await {
                    Ok(Ok(connection)) => Some(connection),
                    _ => None,
                }
            });
        }
        let first = async {
            while let Some(dialled) = dials.join_next().await {
                if let Ok(Some(connection)) = dialled {
                    return Some(connection);
                }
            }
            None
        };
        // Until a dial gets through, the dials give up, or the player ends.
        let connection = tokio::select! {
            connection = first => connection,
            () = until_end(&mut stream) => None,
        };
        dials.abort_all();
        if let Some(connection) = connection {
            let open = acceptor
                .counters()
                .direct_connections
                .load(Ordering::Relaxed);
            if open >= u64::from(self.max_direct) {
                connection.close(
                    codes::close::NORMAL.into(),
                    b"at the direct connection limit",
                );
            } else {
                tokio::spawn(direct::serve_dialled(connection, acceptor.clone()));
            }
        }
        let end = async {
            until_end(&mut stream).await;
            let _ = stream.shutdown().await;
        };
        let _ = tokio::time::timeout(PUNCH_FOR, end).await;
    }

    /// Serves one punch session that arrived on a direct `connection`: a player
    /// checking that a path it punched reaches this host, over that very
    /// connection. It sends no candidates; the answer is the connection's binding
    /// (PROTOCOL.md 10.9), which a splice between the two cannot make agree.
    pub(super) async fn check(&self, mut stream: SecureStream, connection: &quinn::Connection) {
        if let Err(err) = read_candidates(&mut stream).await {
            return debug!(%err, "a punched path's check without its opening");
        }
        let Some(binding) = path_binding(connection) else {
            return debug!("no binding for a direct connection");
        };
        if send_path_check(&mut stream, binding).await.is_err() {
            return;
        }
        debug!(player = %stream.peer().short(), "a punched path checked");
        // A player that never ends it costs this task no longer than a punch.
        let end = async {
            until_end(&mut stream).await;
            let _ = stream.shutdown().await;
        };
        let _ = tokio::time::timeout(PUNCH_FOR, end).await;
    }
}

/// Reads, and drops, until the player ends the punch session (within the wait a
/// QUIC idle timeout puts on the connection under it).
async fn until_end(stream: &mut SecureStream) {
    let mut sink = [0u8; 64];
    while let Ok(n) = stream.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
}
