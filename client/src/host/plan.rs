//! What the host's relay side does next, decided without I/O: where it registers,
//! how long it waits, and what each end of a registration (or each failed attempt)
//! leads to. The relay loop (`relay.rs`) does the I/O these decisions ask for, so
//! every branch of it is a unit test here (as quinn-proto decides and quinn does).

use std::time::Duration;

use blindrelay_protocol::{ErrorCode, RelayUrl};

use crate::backoff::{Backoff, BackoffConfig};

/// How many pool members a host remembers as places to register again.
const KNOWN_MEMBERS: usize = 8;

/// Why the relay side returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RelaySideEnd {
    /// Another host registered the same host id.
    Replaced,
    /// The agent was asked to stop.
    Shutdown,
}

/// How a registration ended, as far as what comes next goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Ended {
    /// A newer registration took the host id.
    Replaced,
    /// The connection was lost.
    Lost,
    /// The relay is going away: register again after about this long.
    GoingAway(Duration),
    /// Enable Relay was switched off.
    Disabled,
    /// The relay ended the registration because its token expired or was refused,
    /// with its code and words.
    TokenRefused(ErrorCode, String),
    /// The agent was asked to stop.
    Shutdown,
    /// Registered over TCP or WebSocket, the host registered over QUIC again.
    QuicAgain,
    /// The relay's pool has another owner for the host: these members, the first
    /// first.
    Move(Vec<String>),
}

/// What the relay side does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Next {
    /// Return.
    Stop(RelaySideEnd),
    /// Register again now (once Enable Relay is on).
    Register,
    /// Register again after this long: the backoff after a failure or a loss.
    Retry(Duration),
    /// Register again after this long, which the relay asked for (it is going
    /// away); the host is not failing meanwhile.
    ComeBack(Duration),
    /// Say that the relay refused the token (its code and words), wait for a new
    /// one, then register.
    WaitForToken(ErrorCode, String),
}

/// The relay side's plan: the backoff, where the host is registered, the pool
/// members it knows, and where it was told to move.
#[derive(Debug)]
pub(super) struct RelayPlan {
    backoff: Backoff,
    /// The ticket's relay: a pool's name, or one relay.
    ticket: RelayUrl,
    /// The relay the host is registered with, or was last.
    current: RelayUrl,
    /// Pool members this host has been sent to, newest first: where it registers
    /// again when the ticket's relay cannot be reached (a pool member that is gone
    /// for good, named in the ticket).
    known: Vec<RelayUrl>,
    /// The members a pool told the host to move to, and the redirects that took it
    /// there.
    move_to: Option<(Vec<RelayUrl>, u8)>,
}

impl RelayPlan {
    pub(super) fn new(ticket: RelayUrl, backoff: BackoffConfig) -> Self {
        Self::with_backoff(ticket, Backoff::new(backoff))
    }

    fn with_backoff(ticket: RelayUrl, backoff: Backoff) -> Self {
        Self {
            backoff,
            current: ticket.clone(),
            ticket,
            known: Vec::new(),
            move_to: None,
        }
    }

    /// Where to register next, and how many redirects led there: the members a
    /// pool told the host to move to; else the ticket's relay, then the members it
    /// has been sent to before, newest first.
    pub(super) fn targets(&mut self) -> (Vec<RelayUrl>, u8) {
        self.move_to.take().unwrap_or_else(|| {
            let mut targets = vec![self.ticket.clone()];
            targets.extend(
                self.known
                    .iter()
                    .filter(|url| **url != self.ticket)
                    .cloned(),
            );
            (targets, 0)
        })
    }

    /// The attempt the next registration is, counting from 1 after a success.
    pub(super) fn attempt(&self) -> u32 {
        self.backoff.attempts() + 1
    }

    /// The relay the host is registered with, or was last.
    pub(super) fn current(&self) -> &RelayUrl {
        &self.current
    }

    /// Remembers pool members a redirect or a move named (the first given ends
    /// first), as places to register again.
    pub(super) fn remember(&mut self, members: &[RelayUrl]) {
        for url in members.iter().rev() {
            self.known.retain(|seen| seen != url);
            self.known.insert(0, url.clone());
        }
        self.known.truncate(KNOWN_MEMBERS);
    }

    /// The host registered at `at`.
    pub(super) fn registered(&mut self, at: RelayUrl) {
        self.backoff.reset();
        if at != self.ticket {
            self.remember(std::slice::from_ref(&at));
        }
        self.current = at;
    }

    /// Enable Relay was switched off, or a new token came: the next attempt is a
    /// first one.
    pub(super) fn start_over(&mut self) {
        self.backoff.reset();
    }

    /// What the end of a registration leads to.
    pub(super) fn after(&mut self, end: Ended) -> Next {
        match end {
            Ended::Replaced => Next::Stop(RelaySideEnd::Replaced),
            Ended::Shutdown => Next::Stop(RelaySideEnd::Shutdown),
            Ended::Lost => Next::Retry(self.backoff.next_delay()),
            Ended::GoingAway(retry_after) => {
                self.backoff.reset();
                Next::ComeBack(jittered(retry_after, fastrand::f64()))
            }
            Ended::Disabled | Ended::QuicAgain => Next::Register,
            Ended::TokenRefused(code, reason) => Next::WaitForToken(code, reason),
            Ended::Move(members) => {
                let targets = member_urls(&self.current, &members);
                if !targets.is_empty() {
                    self.remember(&targets);
                    self.move_to = Some((targets, 1));
                    self.backoff.reset();
                }
                Next::Register
            }
        }
    }

    /// What a failed registration leads to: a token the relay refused (its code and
    /// words) waits for a new one; anything else is retried after the backoff.
    pub(super) fn after_failure(&mut self, refused_token: Option<(ErrorCode, String)>) -> Next {
        match refused_token {
            Some((code, reason)) => Next::WaitForToken(code, reason),
            None => Next::Retry(self.backoff.next_delay()),
        }
    }

    /// Whether the host is on its way to the members a pool told it to move to.
    pub(super) fn moving(&self) -> bool {
        self.move_to.is_some()
    }
}

/// The relays `members` name (`host:port`), verified like `like`: members of the
/// same pool share its pin or CA. Names that do not parse are left out.
pub(crate) fn member_urls(like: &RelayUrl, members: &[String]) -> Vec<RelayUrl> {
    members
        .iter()
        .filter_map(|member| like.with_authority(member).ok())
        .collect()
}

/// `delay` give or take a fifth (`random` in 0..1 picks where), so hosts told to
/// come back at the same moment do not.
fn jittered(delay: Duration, random: f64) -> Duration {
    delay.mul_f64(0.8 + 0.4 * random)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(authority: &str) -> RelayUrl {
        format!("blindrelay://{authority}?pin=ptvye4qzy72zbh6tno75x77piefgktj6uc7zm6s55icsc6xm67oa")
            .parse()
            .expect("a relay URL")
    }

    fn config() -> BackoffConfig {
        BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
        }
    }

    fn plan() -> RelayPlan {
        RelayPlan::with_backoff(
            url("pool.test:443"),
            Backoff::with_rng(config(), fastrand::Rng::with_seed(7)),
        )
    }

    fn retry(next: Next) -> Duration {
        match next {
            Next::Retry(delay) => delay,
            other => panic!("not a retry: {other:?}"),
        }
    }

    #[test]
    fn a_replaced_or_stopped_registration_stops_the_relay_side() {
        let mut plan = plan();
        assert_eq!(
            plan.after(Ended::Replaced),
            Next::Stop(RelaySideEnd::Replaced)
        );
        assert_eq!(
            plan.after(Ended::Shutdown),
            Next::Stop(RelaySideEnd::Shutdown)
        );
    }

    #[test]
    fn losses_and_failures_back_off_further_each_time_and_a_registration_starts_over() {
        let mut plan = plan();
        let first = retry(plan.after(Ended::Lost));
        assert_eq!(plan.attempt(), 2);
        let second = retry(plan.after_failure(None));
        let third = retry(plan.after_failure(None));
        assert_eq!(plan.attempt(), 4);
        assert!(first <= config().initial, "{first:?}");
        assert!(third > first, "{first:?} then {third:?}");
        assert!(second <= config().max && third <= config().max);
        plan.registered(url("pool.test:443"));
        assert_eq!(plan.attempt(), 1);
        assert!(retry(plan.after(Ended::Lost)) <= config().initial);
        plan.start_over();
        assert_eq!(plan.attempt(), 1);
    }

    #[test]
    fn a_relay_going_away_is_come_back_to_near_when_it_said_without_counting_a_failure() {
        let mut plan = plan();
        retry(plan.after_failure(None));
        let asked = Duration::from_secs(10);
        let Next::ComeBack(wait) = plan.after(Ended::GoingAway(asked)) else {
            panic!("not a come-back");
        };
        assert!(
            wait >= asked.mul_f64(0.8) && wait <= asked.mul_f64(1.2),
            "{wait:?}"
        );
        assert_eq!(plan.attempt(), 1, "going away is no failure");
        assert_eq!(jittered(asked, 0.0), asked.mul_f64(0.8));
        assert_eq!(jittered(asked, 1.0), asked.mul_f64(1.2));
    }

    #[test]
    fn a_refused_token_waits_for_a_new_one_whether_at_registration_or_later() {
        let mut plan = plan();
        let expired = (ErrorCode::TokenExpired, "expired".to_owned());
        assert_eq!(
            plan.after(Ended::TokenRefused(expired.0, expired.1.clone())),
            Next::WaitForToken(expired.0, expired.1.clone())
        );
        assert_eq!(
            plan.after_failure(Some(expired.clone())),
            Next::WaitForToken(expired.0, expired.1)
        );
        assert_eq!(plan.attempt(), 1, "a refused token is not retried as is");
    }

    #[test]
    fn switched_off_or_back_on_quic_registers_again_at_once() {
        let mut plan = plan();
        assert_eq!(plan.after(Ended::Disabled), Next::Register);
        assert_eq!(plan.after(Ended::QuicAgain), Next::Register);
        assert_eq!(plan.targets(), (vec![url("pool.test:443")], 0));
    }

    #[test]
    fn a_move_registers_with_the_named_members_then_remembers_them_after_the_ticket() {
        let mut plan = plan();
        retry(plan.after_failure(None));
        let members = vec!["b.pool.test:443".to_owned(), "c.pool.test:443".to_owned()];
        assert_eq!(plan.after(Ended::Move(members)), Next::Register);
        assert!(plan.moving());
        assert_eq!(plan.attempt(), 1, "a move is no failure");
        // The move's members once, first first, as the first redirect.
        assert_eq!(
            plan.targets(),
            (vec![url("b.pool.test:443"), url("c.pool.test:443")], 1)
        );
        plan.registered(url("b.pool.test:443"));
        assert_eq!(plan.current(), &url("b.pool.test:443"));
        // After that, the ticket's relay first, then the members known, newest first.
        assert_eq!(
            plan.targets(),
            (
                vec![
                    url("pool.test:443"),
                    url("b.pool.test:443"),
                    url("c.pool.test:443")
                ],
                0
            )
        );
    }

    #[test]
    fn where_the_host_registered_is_remembered_unless_it_is_the_tickets_relay() {
        let mut plan = plan();
        plan.registered(url("d.pool.test:443"));
        assert_eq!(plan.current(), &url("d.pool.test:443"));
        let both = vec![url("pool.test:443"), url("d.pool.test:443")];
        assert_eq!(plan.targets(), (both.clone(), 0));
        plan.registered(url("pool.test:443"));
        assert_eq!(plan.current(), &url("pool.test:443"));
        assert_eq!(plan.targets(), (both, 0));
    }

    #[test]
    fn a_move_naming_nothing_usable_registers_where_the_ticket_says() {
        let mut plan = plan();
        assert_eq!(
            plan.after(Ended::Move(vec!["not a member".to_owned()])),
            Next::Register
        );
        assert!(!plan.moving());
        assert_eq!(plan.targets(), (vec![url("pool.test:443")], 0));
    }

    #[test]
    fn members_keep_the_pin_of_the_relay_that_named_them_and_few_are_remembered() {
        let like = url("a.pool.test:443");
        let urls = member_urls(
            &like,
            &["b.pool.test:4433".to_owned(), "no port".to_owned()],
        );
        assert_eq!(urls, vec![url("b.pool.test:4433")]);
        let mut plan = plan();
        let many: Vec<RelayUrl> = (0..20).map(|i| url(&format!("m{i}.test:1"))).collect();
        plan.remember(&many);
        plan.remember(&[url("m19.test:1")]);
        let (targets, _) = plan.targets();
        assert_eq!(targets.len(), 1 + KNOWN_MEMBERS);
        assert_eq!(targets[1], url("m19.test:1"), "the newest first, once");
        assert_eq!(targets[2], url("m0.test:1"));
    }
}
