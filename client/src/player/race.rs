//! The race of a ticket's paths, happy-eyeballs style: a direct attempt to every
//! address at once, the relay after the relay delay (or as soon as every direct
//! attempt has failed); the first session set up wins and the others are cancelled.
//! What a race runs and what it reports when nothing won are decided from the ticket
//! and the preference alone ([`RacePlan`]).

use std::net::SocketAddr;
use std::time::Duration;

use blindrelay_protocol::noise::Hello;
use blindrelay_protocol::{codes, RelayUrl, Ticket};
use tokio::task::JoinSet;
use tracing::debug;

use super::{ConnectError, PathPreference, Player};
use crate::session::SessionPath;
use crate::stream::SecureStream;

/// Which path an attempt in the race took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    Direct,
    Relay,
}

/// What a race runs: the direct addresses tried at once, the relay, and how long
/// the direct attempts run alone before the relay joins.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RacePlan {
    direct: Vec<SocketAddr>,
    relay: Option<RelayUrl>,
    relay_delay: Duration,
}

impl RacePlan {
    /// The paths of `ticket` that `preference` allows; an error when it allows
    /// none. The relay waits `relay_delay` only when there is a direct address to
    /// give the head start to.
    fn new(
        ticket: &Ticket,
        preference: PathPreference,
        relay_delay: Duration,
    ) -> Result<Self, ConnectError> {
        let direct = match preference {
            PathPreference::RelayOnly => Vec::new(),
            _ => ticket.direct_addrs().to_vec(),
        };
        let relay = match preference {
            PathPreference::DirectOnly => None,
            _ => ticket.relay().cloned(),
        };
        if direct.is_empty() && relay.is_none() {
            return Err(ConnectError::NoPath { preference });
        }
        let relay_delay = if direct.is_empty() {
            Duration::ZERO
        } else {
            relay_delay
        };
        Ok(Self {
            direct,
            relay,
            relay_delay,
        })
    }
}

/// Puts the punched address first among the direct ones, where `preference` is
/// `auto` and the session is no punch session (which goes through the relay);
/// whether it did, and the relay must then give it its head start.
fn race_punched_first(
    direct: &mut Vec<SocketAddr>,
    punched: Option<SocketAddr>,
    preference: PathPreference,
    hello: Hello,
) -> bool {
    match punched {
        Some(addr)
            if preference == PathPreference::Auto
                && hello != Hello::Punch
                && !direct.contains(&addr) =>
        {
            direct.insert(0, addr);
            true
        }
        _ => false,
    }
}

/// The path a direct attempt to `addr` reports: punched when it is the punched
/// address and not one the ticket offers anyway.
fn attempt_path(addr: SocketAddr, punched: Option<SocketAddr>, ticket: &Ticket) -> SessionPath {
    if Some(addr) == punched && !ticket.direct_addrs().contains(&addr) {
        SessionPath::Punched
    } else {
        SessionPath::Direct
    }
}

/// Why a race that nothing won failed: the relay's answer, the clearer one ("relay
/// disabled or host offline"), when it was tried; otherwise why the first direct
/// address failed.
fn race_error(
    relay_error: Option<ConnectError>,
    direct_error: Option<ConnectError>,
    preference: PathPreference,
) -> ConnectError {
    relay_error
        .or(direct_error)
        .unwrap_or(ConnectError::NoPath { preference })
}

impl Player {
    /// Races the paths `preference` allows; see the module documentation.
    pub(super) async fn race(
        &self,
        ticket: &Ticket,
        preference: PathPreference,
        hello: Hello,
    ) -> Result<SecureStream, ConnectError> {
        let relay_delay = self.connector.config.relay_delay;
        let RacePlan {
            mut direct,
            mut relay,
            mut relay_delay,
        } = RacePlan::new(ticket, preference, relay_delay)?;
        let punched = self.connector.punched_addr(ticket.host_id());
        if race_punched_first(&mut direct, punched, preference, hello) {
            relay_delay = self.connector.config.relay_delay;
        }
        let mut attempts = JoinSet::new();
        for &addr in &direct {
            let (connector, host_id) = (self.connector.clone(), *ticket.host_id());
            let path = attempt_path(addr, punched, ticket);
            attempts.spawn(async move {
                let attempt = connector.connect_direct(addr, host_id, hello, path).await;
                (Attempt::Direct, attempt)
            });
        }
        let relay_timer = tokio::time::sleep(relay_delay);
        tokio::pin!(relay_timer);
        let (mut direct_error, mut relay_error) = (None, None);
        loop {
            // Every direct attempt failed before the delay: the relay starts now.
            if attempts.is_empty() {
                match relay.take() {
                    Some(url) => self.spawn_relay_attempt(&mut attempts, url, ticket, hello),
                    None => break,
                }
            }
            tokio::select! {
                joined = attempts.join_next() => match joined {
                    Some(Ok((path, Ok(stream)))) => {
                        debug!(?path, "path won the race");
                        cancel_losers(attempts).await;
                        return Ok(stream);
                    }
                    Some(Ok((Attempt::Direct, Err(err)))) => {
                        debug!(%err, "direct attempt failed");
                        direct_error.get_or_insert(err);
                    }
                    Some(Ok((Attempt::Relay, Err(err)))) => {
                        debug!(%err, "relay attempt failed");
                        relay_error = Some(err);
                    }
                    Some(Err(err)) => {
                        direct_error.get_or_insert(ConnectError::Attempt(err));
                    }
                    None => {}
                },
                () = &mut relay_timer, if relay.is_some() => {
                    if let Some(url) = relay.take() {
                        self.spawn_relay_attempt(&mut attempts, url, ticket, hello);
                    }
                }
            }
        }
        Err(race_error(relay_error, direct_error, preference))
    }

    fn spawn_relay_attempt(
        &self,
        attempts: &mut JoinSet<(Attempt, Result<SecureStream, ConnectError>)>,
        url: RelayUrl,
        ticket: &Ticket,
        hello: Hello,
    ) {
        let (connector, host_id) = (self.connector.clone(), *ticket.host_id());
        attempts.spawn(async move {
            let attempt = connector.connect_pooled(url, host_id, hello).await;
            (Attempt::Relay, attempt)
        });
    }
}

/// Stops the attempts that lost the race. One still running is aborted, and its
/// [`PendingSession`] guard resets its stream; one that finished at the same moment as the
/// winner is reset here, so the host never keeps a session nobody reads.
async fn cancel_losers(mut attempts: JoinSet<(Attempt, Result<SecureStream, ConnectError>)>) {
    attempts.abort_all();
    while let Some(joined) = attempts.join_next().await {
        if let Ok((_, Ok(stream))) = joined {
            let (recv, send) = stream.into_inner();
            send.reset(codes::stream::CANCELLED);
            recv.stop(codes::stream::CANCELLED);
        }
    }
}

#[cfg(test)]
mod tests {
    use blindrelay_protocol::HostId;

    use super::*;

    const DELAY: Duration = Duration::from_millis(250);

    fn relay() -> RelayUrl {
        "blindrelay://relay.test:443?pin=ptvye4qzy72zbh6tno75x77piefgktj6uc7zm6s55icsc6xm67oa"
            .parse()
            .expect("a relay URL")
    }

    fn ticket(relay: Option<RelayUrl>, direct: &[&str]) -> Ticket {
        let direct = direct
            .iter()
            .map(|addr| addr.parse().expect("an address"))
            .collect();
        Ticket::with_routes(HostId::from_bytes([3; 32]), relay, direct).expect("a ticket")
    }

    fn plan(ticket: &Ticket, preference: PathPreference) -> Result<RacePlan, ConnectError> {
        RacePlan::new(ticket, preference, DELAY)
    }

    #[test]
    fn on_auto_every_direct_address_races_and_the_relay_joins_after_the_delay() {
        let both = ticket(Some(relay()), &["192.0.2.1:5000", "[2001:db8::1]:5000"]);
        let race = plan(&both, PathPreference::Auto).unwrap();
        assert_eq!(race.direct, both.direct_addrs());
        assert_eq!(race.relay, Some(relay()));
        assert_eq!(race.relay_delay, DELAY);
    }

    #[test]
    fn without_a_direct_address_the_relay_starts_at_once() {
        let relay_only = ticket(Some(relay()), &[]);
        let race = plan(&relay_only, PathPreference::Auto).unwrap();
        assert!(race.direct.is_empty());
        assert_eq!(race.relay_delay, Duration::ZERO);
        let both = ticket(Some(relay()), &["192.0.2.1:5000"]);
        let forced = plan(&both, PathPreference::RelayOnly).unwrap();
        assert!(
            forced.direct.is_empty(),
            "relay only leaves the addresses out"
        );
        assert_eq!(
            (forced.relay, forced.relay_delay),
            (Some(relay()), Duration::ZERO)
        );
    }

    #[test]
    fn direct_only_leaves_the_relay_out() {
        let both = ticket(Some(relay()), &["192.0.2.1:5000"]);
        let race = plan(&both, PathPreference::DirectOnly).unwrap();
        assert_eq!(race.relay, None);
        assert_eq!(race.direct.len(), 1);
    }

    #[test]
    fn a_preference_the_ticket_has_no_path_for_is_refused_before_any_attempt() {
        let relay_only = ticket(Some(relay()), &[]);
        let direct_only = ticket(None, &["192.0.2.1:5000"]);
        for (ticket, preference) in [
            (&relay_only, PathPreference::DirectOnly),
            (&direct_only, PathPreference::RelayOnly),
        ] {
            match plan(ticket, preference) {
                Err(ConnectError::NoPath { preference: said }) => assert_eq!(said, preference),
                other => panic!("{preference}: {:?}", other.map(|_| ())),
            }
        }
    }

    #[test]
    fn a_punched_address_races_first_only_on_auto_and_never_for_a_punch_session() {
        let punched: SocketAddr = "203.0.113.7:40123".parse().unwrap();
        let ticket_addr: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let mut direct = vec![ticket_addr];
        assert!(race_punched_first(
            &mut direct,
            Some(punched),
            PathPreference::Auto,
            Hello::Resumable
        ));
        assert_eq!(direct, [punched, ticket_addr]);
        assert!(
            !race_punched_first(
                &mut direct,
                Some(punched),
                PathPreference::Auto,
                Hello::Resumable
            ),
            "not twice"
        );
        assert_eq!(direct.len(), 2);
        for (preference, hello) in [
            (PathPreference::RelayOnly, Hello::Resumable),
            (PathPreference::DirectOnly, Hello::Plain),
            (PathPreference::Auto, Hello::Punch),
        ] {
            let mut direct = vec![ticket_addr];
            assert!(!race_punched_first(
                &mut direct,
                Some(punched),
                preference,
                hello
            ));
            assert_eq!(direct, [ticket_addr], "{preference} {hello:?}");
        }
        let mut none = Vec::new();
        assert!(!race_punched_first(
            &mut none,
            None,
            PathPreference::Auto,
            Hello::Plain
        ));
        assert!(none.is_empty());
    }

    #[test]
    fn only_a_punched_address_the_ticket_does_not_offer_reports_a_punched_path() {
        let with = ticket(Some(relay()), &["192.0.2.1:5000"]);
        let offered: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let punched: SocketAddr = "203.0.113.7:40123".parse().unwrap();
        assert_eq!(
            attempt_path(punched, Some(punched), &with),
            SessionPath::Punched
        );
        assert_eq!(
            attempt_path(offered, Some(offered), &with),
            SessionPath::Direct
        );
        assert_eq!(
            attempt_path(offered, Some(punched), &with),
            SessionPath::Direct
        );
        assert_eq!(attempt_path(punched, None, &with), SessionPath::Direct);
    }

    #[test]
    fn when_nothing_won_the_relays_answer_is_told_before_a_direct_failure() {
        let timeout = |secs| ConnectError::Timeout(Duration::from_secs(secs));
        let told = race_error(Some(timeout(1)), Some(timeout(2)), PathPreference::Auto);
        assert!(matches!(told, ConnectError::Timeout(t) if t == Duration::from_secs(1)));
        let told = race_error(None, Some(timeout(2)), PathPreference::Auto);
        assert!(matches!(told, ConnectError::Timeout(t) if t == Duration::from_secs(2)));
        let told = race_error(None, None, PathPreference::DirectOnly);
        assert!(matches!(
            told,
            ConnectError::NoPath {
                preference: PathPreference::DirectOnly
            }
        ));
    }
}
