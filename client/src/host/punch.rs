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

use crate::punch::{
    lan_candidate, observe, path_binding, punch, punch_once, read_candidates, send_candidates,
    send_path_check, PUNCH_EVERY, PUNCH_FOR,
};
use crate::stream::SecureStream;

/// What a host needs to answer punch sessions.
pub(super) struct HostPunch {
    /// A second handle on the socket the direct listener and the relay connection
    /// use: punch packets must leave from the mapping the relay observed.
    socket: UdpSocket,
    bound: SocketAddr,
    advertised: Vec<SocketAddr>,
    /// What the relay saw of `socket`, as of the latest registration.
    observed: Mutex<Option<SocketAddr>>,
}

impl HostPunch {
    pub(super) fn new(socket: UdpSocket, bound: SocketAddr, advertised: Vec<SocketAddr>) -> Self {
        Self {
            socket,
            bound,
            advertised,
            observed: Mutex::new(None),
        }
    }

    fn observed(&self) -> Option<SocketAddr> {
        *self
            .observed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Asks the relay on `connection` (a registration's, from this host's socket)
    /// which address it sees, and keeps the answer for the next punch sessions.
    pub(super) async fn observe_on(&self, connection: &quinn::Connection) {
        match observe(connection).await {
            Ok(addr) => {
                let before = self
                    .observed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .replace(addr);
                if before != Some(addr) {
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
        let lan = if self.bound.ip().is_unspecified() {
            relay
                .or(self.observed())
                .and_then(|toward| lan_candidate(toward, self.bound.port()))
        } else {
            Some(self.bound)
        };
        Candidates::new(
            self.observed()
                .into_iter()
                .chain(lan)
                .chain(self.advertised.iter().copied()),
        )
    }

    /// Serves one punch session from a player this host serves: takes the player's
    /// candidates, answers with its own, and punches toward the player's until the
    /// player ends the session or [`crate::punch::PUNCH_FOR`] has passed.
    pub(super) async fn serve(&self, mut stream: SecureStream) {
        let theirs = match read_candidates(&mut stream).await {
            Ok(candidates) => candidates,
            Err(err) => return debug!(%err, "a punch session without candidates"),
        };
        let toward = theirs.addrs.first().copied();
        let ours = self.candidates(toward);
        // A first round before the answer: by the time the player has the host's
        // candidates and dials, this side's NAT already lets its Initial in (one
        // that came first would be dropped, and QUIC sends it again only after
        // about a second).
        punch_once(&self.socket, &theirs.addrs);
        if send_candidates(&mut stream, &ours).await.is_err() {
            return;
        }
        info!(
            player = %stream.peer().short(),
            candidates = theirs.addrs.len(),
            "punching toward a player for a direct path"
        );
        // Until the player is done with its attempt, or the punching is.
        tokio::select! {
            () = punch(&self.socket, &theirs.addrs) => {}
            () = until_end(&mut stream) => {}
        }
        let _ = tokio::time::timeout(PUNCH_EVERY, stream.shutdown()).await;
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
