//! The player's side of hole punching (PROTOCOL.md 10.9; see [`crate::punch`]).
//!
//! After a relayed session to a host opens, the player tries, in the background, to
//! punch a direct path to that host: it asks its relay which address it sees, opens
//! a punch session to the host through the relay, swaps candidates in it, and dials
//! every candidate of the host's from the socket its relay connection uses. At most
//! [`ATTEMPTS`] attempts in a row, then at most one a minute. Once a dial gets
//! through, the host's direct address is kept here: new sessions race it first, and
//! running sessions move to it by resuming there ([`Punched::watch`]). When that
//! connection closes (the path died), the address is forgotten and new sessions go
//! back to the relay.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use blindrelay_protocol::noise::Hello;
use blindrelay_protocol::punch::Candidates;
use blindrelay_protocol::{codes, HostId, Ticket};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info};

use super::{ConnectError, Connector, PathPreference, Player};
use crate::punch::{
    lan_candidate, maps_per_destination, observe, path_binding, punch, punch_once, read_candidates,
    read_path_check, send_candidates, send_ready, worth_trying, PUNCH_EVERY, PUNCH_FOR,
};
use crate::session::SessionPath;

/// Attempts in a row before the player waits [`RETRY_AFTER`].
pub(super) const ATTEMPTS: u32 = 3;

/// The pause between two attempts in a row.
const PAUSE: Duration = Duration::from_secs(1);

/// How long after a round of failed attempts a new session may start another.
pub(super) const RETRY_AFTER: Duration = Duration::from_secs(60);

/// Within [`RETRY_AFTER`], how often a new session may ask the relay whether this
/// player's own candidates changed (a phone that moved networks), which starts a
/// round at once.
pub(super) const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Where punching stands for each host this player reached.
#[derive(Default)]
pub(super) struct Punched {
    hosts: Mutex<HashMap<HostId, PunchState>>,
    /// Held while this player's socket accepts a host's dial (roles swapped).
    accepting: tokio::sync::Mutex<()>,
}

/// Where punching stands for one host.
struct PunchState {
    /// The punched address, while its connection lives; what moving sessions watch.
    direct: watch::Sender<Option<SocketAddr>>,
    /// A round of attempts runs.
    running: bool,
    /// When the last round failed, and with which candidates of this player's.
    failed_at: Option<Instant>,
    failed_with: Option<Candidates>,
    /// When a new session last checked whether those candidates changed.
    checked_at: Option<Instant>,
    /// The host answered a punch hello as a host that does not punch.
    refused: bool,
}

impl PunchState {
    fn new() -> Self {
        Self {
            direct: watch::Sender::new(None),
            running: false,
            failed_at: None,
            failed_with: None,
            checked_at: None,
            refused: false,
        }
    }
}

impl Punched {
    fn with<T>(&self, host_id: &HostId, f: impl FnOnce(&mut PunchState) -> T) -> T {
        let mut hosts = self.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        f(hosts.entry(*host_id).or_insert_with(PunchState::new))
    }

    /// The host's punched address, while its connection lives.
    pub(super) fn direct(&self, host_id: &HostId) -> Option<SocketAddr> {
        self.with(host_id, |host| *host.direct.borrow())
    }

    /// The host's punched address as it changes: what a running session watches to
    /// move there.
    pub(super) fn watch(&self, host_id: &HostId) -> watch::Receiver<Option<SocketAddr>> {
        self.with(host_id, |host| host.direct.subscribe())
    }

    /// Whether a round of attempts should start now (then marked running), or a
    /// new session should first check whether this player's candidates changed
    /// since the last round failed ([`Punched::start_round_if_changed`]).
    fn start_round(&self, host_id: &HostId) -> Round {
        self.with(host_id, |host| {
            if host.running || host.refused || host.direct.borrow().is_some() {
                return Round::No;
            }
            let recent = host
                .failed_at
                .filter(|failed| failed.elapsed() < RETRY_AFTER);
            if recent.is_none() {
                host.running = true;
                return Round::Due;
            }
            if host
                .checked_at
                .is_some_and(|checked| checked.elapsed() < CHECK_EVERY)
            {
                return Round::No;
            }
            host.checked_at = Some(Instant::now());
            Round::Check
        })
    }

    /// A round starts within the minute after a failed one only if this player's
    /// candidates are no longer `ours`.
    fn start_round_if_changed(&self, host_id: &HostId, ours: &Candidates) -> bool {
        self.with(host_id, |host| {
            // Unknown before (the round failed before it knew them): no change seen.
            let changed = host
                .failed_with
                .as_ref()
                .is_some_and(|failed| failed.addrs != ours.addrs);
            let due = changed && !host.running && host.direct.borrow().is_none();
            host.running |= due;
            due
        })
    }

    fn end_round(&self, host_id: &HostId, outcome: Outcome) {
        self.with(host_id, |host| {
            host.running = false;
            match outcome {
                Outcome::Direct(addr) => {
                    host.failed_at = None;
                    host.failed_with = None;
                    host.direct.send_replace(Some(addr));
                }
                Outcome::Refused => host.refused = true,
                Outcome::Failed(ours) => {
                    host.failed_at = Some(Instant::now());
                    host.failed_with = ours;
                }
            }
        });
    }

    /// Marks `addr` punched for `host_id`, as a round that succeeded does.
    #[cfg(test)]
    pub(super) fn punched_for_test(&self, host_id: &HostId, addr: SocketAddr) {
        self.end_round(host_id, Outcome::Direct(addr));
    }

    /// The punched connection to `addr` closed: forget it.
    fn lost(&self, host_id: &HostId, addr: SocketAddr) {
        self.with(host_id, |host| {
            host.direct.send_if_modified(|direct| {
                let was = *direct == Some(addr);
                if was {
                    *direct = None;
                }
                was
            });
        });
    }
}

/// Whether a new session starts a round of attempts.
#[derive(Debug, PartialEq, Eq)]
enum Round {
    No,
    Due,
    /// Only if this player's candidates changed since the last failed round.
    Check,
}

/// Who does what in one attempt; they alternate, the player dialling first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Roles {
    /// The host punches toward the player's candidates; the player dials.
    PlayerDials,
    /// The player punches toward the host's candidates; the host dials, and the
    /// player accepts on its relay socket for the attempt.
    HostDials,
}

impl Roles {
    /// The roles of attempt number `attempt` (from 1).
    fn of(attempt: u32) -> Self {
        if attempt % 2 == 1 {
            Self::PlayerDials
        } else {
            Self::HostDials
        }
    }
}

/// How a round of attempts ended.
enum Outcome {
    Direct(SocketAddr),
    /// The host does not punch (it is from before punching, or switched it off).
    Refused,
    /// With this player's candidates, as far as it knew them.
    Failed(Option<Candidates>),
}

/// Why one attempt failed.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("no QUIC connection to a relay to ask which address it sees")]
    NoRelayConnection,
    #[error("the punch session could not be opened: {0}")]
    Session(#[from] ConnectError),
    #[error("the punch session failed: {0}")]
    Io(#[from] std::io::Error),
    /// The attempt ran with these candidates of this player's, and failed.
    #[error("{1}")]
    Failed(Candidates, &'static str),
    /// Both NATs map each destination anew, and not behind one public address:
    /// no attempt can work.
    #[error("both NATs map each destination to a new port")]
    Futile(Candidates),
}

impl Player {
    /// Starts punching a direct path to the host of `ticket` in the background,
    /// unless one exists, a round runs, or the last failed less than a minute ago.
    pub(super) fn punch_in_background(&self, ticket: &Ticket) {
        let connector = &self.connector;
        if !connector.config.punch {
            return;
        }
        let round = connector.punched.start_round(ticket.host_id());
        if round == Round::No {
            return;
        }
        let player = Player {
            connector: connector.clone(),
        };
        let ticket = ticket.clone();
        tokio::spawn(async move {
            let host_id = *ticket.host_id();
            if round == Round::Check {
                let ours = player.our_candidates().await;
                let changed = ours.as_ref().is_ok_and(|ours| {
                    player
                        .connector
                        .punched
                        .start_round_if_changed(&host_id, ours)
                });
                if !changed {
                    return;
                }
                info!(host = %host_id.short(), "this player's addresses changed: punching again");
            }
            let per_destination = player.probe_mapping().await;
            let mut outcome = Outcome::Failed(None);
            let mut futile = false;
            for attempt in 1..=ATTEMPTS {
                let roles = Roles::of(attempt);
                match player.punch_once(&ticket, roles, per_destination).await {
                    Ok(addr) => {
                        info!(host = %host_id.short(), "direct path to the host punched; sessions move to it");
                        outcome = Outcome::Direct(addr);
                        break;
                    }
                    Err(AttemptError::Session(ConnectError::UnknownSession)) => {
                        debug!(host = %host_id.short(), "the host does not punch");
                        outcome = Outcome::Refused;
                        break;
                    }
                    Err(AttemptError::Futile(ours)) => {
                        outcome = Outcome::Failed(Some(ours));
                        futile = true;
                        break;
                    }
                    Err(AttemptError::Failed(ours, err)) => {
                        debug!(host = %host_id.short(), attempt, %err, "punching failed");
                        outcome = Outcome::Failed(Some(ours));
                    }
                    Err(err) => {
                        debug!(host = %host_id.short(), attempt, %err, "punching failed");
                    }
                }
                if attempt < ATTEMPTS {
                    tokio::time::sleep(PAUSE).await;
                }
            }
            if let Outcome::Direct(addr) = outcome {
                player.watch_direct(host_id, addr);
            } else if futile {
                info!(host = %host_id.short(), "no direct path to the host (both NATs map each destination to a new port): sessions stay relayed");
            } else if matches!(outcome, Outcome::Failed(_)) {
                info!(host = %host_id.short(), "no direct path to the host (its NAT or this one maps per destination, or UDP is blocked): sessions stay relayed");
            }
            player.connector.punched.end_round(&host_id, outcome);
        });
    }

    /// This player's candidates: the address the relay sees it from, and its LAN
    /// address, both on the socket its relay connection uses.
    async fn our_candidates(&self) -> Result<Candidates, AttemptError> {
        let connector = &self.connector;
        let relay = connector
            .relays
            .any_live()
            .ok_or(AttemptError::NoRelayConnection)?;
        let observed = observe(&relay).await.ok().map(|seen| seen.addr);
        let port = connector
            .endpoints
            .for_remote(relay.remote_address())?
            .local_addr()?
            .port();
        let lan = lan_candidate(relay.remote_address(), port);
        Ok(Candidates::new(observed.into_iter().chain(lan)))
    }

    /// Whether this player's NAT maps each destination to a new port, as the
    /// relay's probe port tells (`false` where it cannot tell): once a round.
    async fn probe_mapping(&self) -> bool {
        let connector = &self.connector;
        let Some((url, relay)) = connector.relays.any_live_entry() else {
            return false;
        };
        let Ok(endpoint) = connector.endpoints.for_remote(relay.remote_address()) else {
            return false;
        };
        let Ok(seen) = observe(&relay).await else {
            return false;
        };
        let per_destination =
            maps_per_destination(&endpoint, &relay, &url, &seen).await == Some(true);
        if per_destination {
            debug!("this player's NAT maps each destination to a new port");
        }
        per_destination
    }

    /// One attempt: observe, swap candidates, dial or be dialled.
    async fn punch_once(
        &self,
        ticket: &Ticket,
        roles: Roles,
        per_destination: bool,
    ) -> Result<SocketAddr, AttemptError> {
        let ours = self
            .our_candidates()
            .await?
            .mapped_per_destination(per_destination);
        match roles {
            Roles::PlayerDials => self.dial_host(ticket, ours).await,
            Roles::HostDials => self.dialled_by_host(ticket, ours).await,
        }
    }

    /// The host punches toward `ours`; this player dials the host's candidates.
    async fn dial_host(
        &self,
        ticket: &Ticket,
        ours: Candidates,
    ) -> Result<SocketAddr, AttemptError> {
        let connector = &self.connector;
        let mut session = self
            .connect_with(ticket, PathPreference::RelayOnly, Hello::Punch)
            .await?;
        send_candidates(&mut session, &ours).await?;
        let theirs = read_candidates(&mut session).await?;
        let worth = worth_trying(&ours, &theirs);
        if worth.is_empty() {
            let _ = tokio::time::timeout(PUNCH_EVERY, session.shutdown()).await;
            return Err(nothing_to_try(ours, &theirs));
        }
        let host_id = *ticket.host_id();
        let mut dials = JoinSet::new();
        for addr in worth {
            let connector = connector.clone();
            dials.spawn(async move {
                let dial = connector
                    .direct
                    .get_or_connect(&addr, || connector.connect_host(addr));
                let Ok(Ok(connection)) = tokio::time::timeout(PUNCH_FOR, dial).await else {
                    return None;
                };
                // A QUIC handshake proves nothing (the player takes any certificate
                // on a direct path): whoever answered must also answer a Noise
                // handshake to the host id, on this very connection, before the
                // path counts.
                match verify(connector, connection, host_id).await {
                    Ok(()) => Some(addr),
                    Err(err) => {
                        debug!(%err, "a candidate answered QUIC but is not the host");
                        None
                    }
                }
            });
        }
        let mut punched = None;
        while let Some(dialed) = dials.join_next().await {
            if let Ok(Some(addr)) = dialed {
                punched = Some(addr);
                break;
            }
        }
        dials.abort_all();
        // Done: the host stops punching.
        let _ = tokio::time::timeout(PUNCH_EVERY, session.shutdown()).await;
        punched.ok_or(AttemptError::Failed(
            ours,
            "no candidate of the host's answered",
        ))
    }

    /// Roles swapped: this player punches toward the host's candidates from its
    /// relay socket, which accepts QUIC for the attempt, and the host dials `ours`.
    /// Behind a NAT that lets in whatever comes to an open mapping (and before a
    /// host whose NAT maps per destination, whose dial's port no one can know),
    /// this gets through where the other way does not.
    async fn dialled_by_host(
        &self,
        ticket: &Ticket,
        ours: Candidates,
    ) -> Result<SocketAddr, AttemptError> {
        let connector = &self.connector;
        let relay = connector
            .relays
            .any_live()
            .ok_or(AttemptError::NoRelayConnection)?;
        let endpoint = connector.endpoints.for_remote(relay.remote_address())?;
        let Some(socket) = connector.endpoints.socket_for(relay.remote_address())? else {
            return Err(AttemptError::Failed(ours, "no socket to punch from"));
        };
        // The endpoint accepts for one attempt at a time.
        let Ok(_accepting) = connector.punched.accepting.try_lock() else {
            return Err(AttemptError::Failed(
                ours,
                "another host is dialling this player",
            ));
        };
        let server = crate::host::direct_server_config(self.dialled_transport())
            .map_err(|_| AttemptError::Failed(ours.clone(), "no certificate to accept with"))?;
        endpoint.set_server_config(Some(server));
        let accepted = self.accept_dial(ticket, &ours, &endpoint, &socket).await;
        endpoint.set_server_config(None);
        let (addr, connection) = accepted?.ok_or(AttemptError::Failed(
            ours,
            "the host's dial did not get through",
        ))?;
        if !connector.direct.insert(addr, connection) {
            return Err(AttemptError::Failed(
                Candidates::default(),
                "a connection to that address is being made",
            ));
        }
        Ok(addr)
    }

    /// The punch session of [`Player::dialled_by_host`], and the wait for the
    /// host's connection: `None` if none that is the host's arrived in time.
    async fn accept_dial(
        &self,
        ticket: &Ticket,
        ours: &Candidates,
        endpoint: &quinn::Endpoint,
        socket: &std::net::UdpSocket,
    ) -> Result<Option<(SocketAddr, quinn::Connection)>, AttemptError> {
        let mut session = self
            .connect_with(ticket, PathPreference::RelayOnly, Hello::Punch)
            .await?;
        send_candidates(&mut session, &ours.clone().dialled_back()).await?;
        let theirs = read_candidates(&mut session).await?;
        if worth_trying(&theirs, ours).is_empty() {
            // The host has nothing to dial that could get in.
            let _ = tokio::time::timeout(PUNCH_EVERY, session.shutdown()).await;
            return Err(nothing_to_try(ours.clone(), &theirs));
        }
        // This side's NAT opens toward the host before the host is told to dial.
        punch_once(socket, &theirs.addrs);
        send_ready(&mut session).await?;
        let host_id = *ticket.host_id();
        // The host dials from its candidates' addresses, on whatever port its NAT
        // gives that destination: only those addresses are let in.
        let from: Vec<IpAddr> = theirs.addrs.iter().map(SocketAddr::ip).collect();
        let deadline = tokio::time::Instant::now() + PUNCH_FOR;
        let accept = async {
            while let Ok(Some(incoming)) =
                tokio::time::timeout_at(deadline, endpoint.accept()).await
            {
                if !from.contains(&incoming.remote_address().ip()) {
                    incoming.refuse();
                    continue;
                }
                // Its handshake within the same deadline: one that stalls holds
                // this player's socket open no longer than the attempt.
                let Ok(Ok(connection)) = tokio::time::timeout_at(deadline, incoming).await else {
                    continue;
                };
                match verify(self.connector.clone(), connection.clone(), host_id).await {
                    Ok(()) => return Some((connection.remote_address(), connection)),
                    Err(err) => debug!(%err, "a dial answered for the host, but not by it"),
                }
            }
            None
        };
        // Punch packets keep the mapping open while the host's dial comes.
        let keep_open = async {
            punch(socket, &theirs.addrs).await;
            std::future::pending::<()>().await;
        };
        let accepted = tokio::select! {
            accepted = accept => accepted,
            () = keep_open => None,
        };
        // Done: the host stops dialling.
        let _ = tokio::time::timeout(PUNCH_EVERY, session.shutdown()).await;
        Ok(accepted)
    }

    /// The transport of a connection the host dials to this player: the host opens
    /// no stream on it; this player's sessions do.
    fn dialled_transport(&self) -> quinn::TransportConfig {
        let config = &self.connector.config;
        let mut transport = quinn::TransportConfig::default();
        transport
            .keep_alive_interval(Some(config.keep_alive))
            .max_idle_timeout(config.idle_timeout.try_into().ok())
            .max_concurrent_bidi_streams(0u32.into())
            .max_concurrent_uni_streams(0u32.into())
            .datagram_receive_buffer_size(None);
        transport
    }

    /// Forgets the punched address when its connection closes.
    fn watch_direct(&self, host_id: HostId, addr: SocketAddr) {
        let Some(connection) = self.connector.direct.live(&addr) else {
            return;
        };
        let connector = self.connector.clone();
        tokio::spawn(async move {
            let reason = connection.closed().await;
            info!(host = %host_id.short(), %reason, "the punched direct path closed; new sessions go through the relay");
            connector.punched.lost(&host_id, addr);
        });
    }
}

/// Why an attempt found nothing worth trying: with both NATs mapping each
/// destination anew, no attempt can work ([`worth_trying`]); otherwise this one
/// cannot, and the next, with roles swapped, may.
fn nothing_to_try(ours: Candidates, theirs: &Candidates) -> AttemptError {
    if ours.per_destination && theirs.per_destination {
        AttemptError::Futile(ours)
    } else {
        AttemptError::Failed(ours, "no candidate worth trying")
    }
}

/// Proves that the direct `connection` reaches the host itself: a punch session on
/// it, whose Noise handshake only the holder of the host id's key completes,
/// carrying no candidates and answered with the connection's binding (PROTOCOL.md
/// 10.9), which must be the one this end computes. Someone answering at the
/// candidate fails the handshake; someone carrying the session on to the host over
/// a connection of its own (a splice) fails the binding. A connection that fails
/// is closed, so that nothing else takes it for the host's.
async fn verify(
    connector: Arc<Connector>,
    connection: quinn::Connection,
    host_id: HostId,
) -> Result<(), AttemptError> {
    let ours = path_binding(&connection).ok_or(AttemptError::Failed(
        Candidates::default(),
        "the direct connection has no binding",
    ))?;
    let checked = async {
        let mut session = connector
            .connect_on(
                connection.clone(),
                host_id,
                Hello::Punch,
                SessionPath::Punched,
            )
            .await?;
        send_candidates(&mut session, &Candidates::default()).await?;
        let theirs = read_path_check(&mut session).await?;
        let _ = tokio::time::timeout(PUNCH_EVERY, session.shutdown()).await;
        if theirs != ours {
            return Err(AttemptError::Failed(
                Candidates::default(),
                "the host ends another connection than this one (a splice)",
            ));
        }
        Ok(())
    };
    let checked = checked.await;
    if checked.is_err() {
        connection.close(codes::close::NORMAL.into(), b"not the host's connection");
    }
    checked
}

impl Connector {
    /// The host's punched address, if any: raced first by new sessions.
    pub(super) fn punched_addr(&self, host_id: &HostId) -> Option<SocketAddr> {
        self.punched.direct(host_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> HostId {
        HostId::from_bytes([7; 32])
    }

    fn addr() -> SocketAddr {
        "203.0.113.7:40123".parse().unwrap()
    }

    fn ours(port: u16) -> Candidates {
        Candidates::new([SocketAddr::from(([198, 51, 100, 9], port))])
    }

    #[test]
    fn only_two_nats_that_both_map_per_destination_end_the_round() {
        let flagged = |per_destination| ours(1000).mapped_per_destination(per_destination);
        assert!(matches!(
            nothing_to_try(flagged(true), &flagged(true)),
            AttemptError::Futile(_)
        ));
        for (mine, theirs) in [(true, false), (false, true), (false, false)] {
            assert!(
                matches!(
                    nothing_to_try(flagged(mine), &flagged(theirs)),
                    AttemptError::Failed(..)
                ),
                "{mine} {theirs}"
            );
        }
    }

    #[test]
    fn attempts_alternate_roles_the_player_dialling_first() {
        let roles: Vec<Roles> = (1..=ATTEMPTS).map(Roles::of).collect();
        assert_eq!(
            roles,
            [Roles::PlayerDials, Roles::HostDials, Roles::PlayerDials]
        );
    }

    #[test]
    fn one_round_at_a_time_and_none_while_a_path_is_punched() {
        let punched = Punched::default();
        assert_eq!(punched.start_round(&host()), Round::Due);
        assert_eq!(punched.start_round(&host()), Round::No, "a round runs");
        punched.end_round(&host(), Outcome::Direct(addr()));
        assert_eq!(punched.direct(&host()), Some(addr()));
        assert_eq!(punched.start_round(&host()), Round::No, "already direct");
        // Another address closing changes nothing; this one's closing forgets it.
        punched.lost(&host(), "203.0.113.7:1".parse().unwrap());
        assert_eq!(punched.direct(&host()), Some(addr()));
        punched.lost(&host(), addr());
        assert_eq!(punched.direct(&host()), None);
        assert_eq!(
            punched.start_round(&host()),
            Round::Due,
            "lost: punch again"
        );
    }

    #[test]
    fn a_failed_round_waits_a_minute_unless_this_players_candidates_changed() {
        let punched = Punched::default();
        // Failed before it knew its candidates: no change can be seen.
        assert_eq!(punched.start_round(&host()), Round::Due);
        punched.end_round(&host(), Outcome::Failed(None));
        assert_eq!(punched.start_round(&host()), Round::Check);
        assert!(!punched.start_round_if_changed(&host(), &ours(1000)));
        punched.with(&host(), |state| {
            state.failed_at = Instant::now().checked_sub(RETRY_AFTER);
            state.checked_at = None;
        });
        assert_eq!(punched.start_round(&host()), Round::Due);
        punched.end_round(&host(), Outcome::Failed(Some(ours(1000))));
        // Within the minute a session may check its candidates, every 5 s at most.
        assert_eq!(punched.start_round(&host()), Round::Check);
        assert_eq!(punched.start_round(&host()), Round::No, "checked just now");
        assert!(
            !punched.start_round_if_changed(&host(), &ours(1000)),
            "the same"
        );
        punched.with(&host(), |state| {
            state.checked_at = Instant::now().checked_sub(CHECK_EVERY);
        });
        assert_eq!(punched.start_round(&host()), Round::Check);
        assert!(
            punched.start_round_if_changed(&host(), &ours(2000)),
            "moved"
        );
        punched.with(&host(), |state| {
            state.checked_at = Instant::now().checked_sub(CHECK_EVERY);
        });
        assert_eq!(punched.start_round(&host()), Round::No, "that round runs");
        assert!(
            !punched.start_round_if_changed(&host(), &ours(3000)),
            "one at a time"
        );
        punched.end_round(&host(), Outcome::Failed(Some(ours(2000))));
        // A minute on, a round whatever the candidates.
        punched.with(&host(), |state| {
            state.failed_at = Instant::now().checked_sub(RETRY_AFTER);
        });
        assert_eq!(punched.start_round(&host()), Round::Due);
        punched.end_round(&host(), Outcome::Refused);
        punched.with(&host(), |state| state.failed_at = None);
        assert_eq!(
            punched.start_round(&host()),
            Round::No,
            "the host does not punch"
        );
    }

    /// What a host that dials this player back may do on the connection: open no
    /// stream (this player's sessions open them), so a hostile host parks nothing.
    #[tokio::test]
    async fn a_host_that_dials_this_player_may_open_no_stream() {
        let player = Player::new(crate::PlayerConfig::new(
            blindrelay_protocol::SecretKey::generate().unwrap(),
        ));
        let server = crate::host::direct_server_config(player.dialled_transport()).unwrap();
        let accepting = quinn::Endpoint::server(server, "127.0.0.1:0".parse().unwrap()).unwrap();
        let to = accepting.local_addr().unwrap();
        let profile = crate::endpoint::ConnectionProfile {
            incoming_streams: 16,
            keep_alive: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(10),
        };
        let mut dialling = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        dialling.set_default_client_config(crate::endpoint::direct_client_config(profile).unwrap());
        let (dialled, accepted) = tokio::join!(
            async {
                dialling
                    .connect(to, crate::endpoint::DIRECT_SERVER_NAME)
                    .unwrap()
                    .await
                    .unwrap()
            },
            async { accepting.accept().await.unwrap().await.unwrap() }
        );
        // The host's stream waits for credit that never comes; the player's opens.
        let host_opens = tokio::time::timeout(Duration::from_millis(500), dialled.open_bi()).await;
        assert!(host_opens.is_err(), "the host opened a stream");
        let player_opens = tokio::time::timeout(Duration::from_secs(5), accepted.open_bi()).await;
        assert!(
            matches!(player_opens, Ok(Ok(_))),
            "the player opens its sessions"
        );
    }

    #[tokio::test]
    async fn a_running_session_sees_the_punched_address_appear_and_go() {
        let punched = Punched::default();
        let mut watch = punched.watch(&host());
        assert_eq!(punched.start_round(&host()), Round::Due);
        punched.end_round(&host(), Outcome::Direct(addr()));
        watch.changed().await.unwrap();
        assert_eq!(*watch.borrow_and_update(), Some(addr()));
        punched.lost(&host(), addr());
        watch.changed().await.unwrap();
        assert_eq!(*watch.borrow_and_update(), None);
    }
}
