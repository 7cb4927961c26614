//! A player's way through a pool of relays (PROTOCOL.md section 18.4), decided with
//! no I/O: which member to ask next and with how many redirects, and what each
//! member's failure leads to. Redirects are followed up to [`MAX_REDIRECTS`]; after
//! that, and when the owner a redirect named does not hold the host, the members
//! named last are asked in turn, each answering for itself.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use blindrelay_protocol::placement::MAX_REDIRECTS;
use blindrelay_protocol::{ErrorCode, HostId, RelayUrl};
use tracing::debug;

use super::{ConnectError, SessionAsk};
use crate::host::member_urls;
use blindrelay_protocol::noise::Hello;

/// Where a player asks for a session next, and what it learned so far.
#[derive(Debug)]
pub(super) struct PoolWalk {
    /// The members to ask, the first first.
    queue: VecDeque<RelayUrl>,
    /// Redirects followed so far.
    redirects: u8,
    /// What the last member that did not serve the session said.
    last: Option<ConnectError>,
    /// Members that answered already (by authority): none of them holds the host,
    /// so a later redirect back to one is not followed.
    asked: HashSet<String>,
}

impl PoolWalk {
    /// A walk that starts at `url`: the ticket's relay.
    pub(super) fn new(url: RelayUrl) -> Self {
        Self {
            queue: VecDeque::from([url]),
            redirects: 0,
            last: None,
            asked: HashSet::new(),
        }
    }

    /// The next member to ask for a session with `host_id`, and what to ask it;
    /// `None` once every member named has been asked.
    pub(super) fn next(&mut self, host_id: HostId, hello: Hello) -> Option<(RelayUrl, SessionAsk)> {
        while let Some(url) = self.queue.pop_front() {
            if self.asked.insert(url.authority()) {
                let redirects = self.redirects;
                let ask = SessionAsk {
                    host_id,
                    hello,
                    redirects,
                };
                return Some((url, ask));
            }
        }
        None
    }

    /// What `url`'s failure leads to: `None` to ask the next member, or the error
    /// the walk ends with.
    pub(super) fn failed(&mut self, url: &RelayUrl, err: ConnectError) -> Option<ConnectError> {
        match err {
            ConnectError::Redirected { members } if self.redirects < MAX_REDIRECTS => {
                debug!(from = %url, to = ?members, "redirected within the relay pool");
                self.redirects += 1;
                self.queue = member_urls(url, &members).into();
                self.last = Some(ConnectError::Redirected { members });
                None
            }
            err if err.is_transport_failure() || matches!(err, ConnectError::Redirected { .. }) => {
                debug!(relay = %url, %err, "pool member not available; trying the next");
                self.last = Some(err);
                None
            }
            // The owner a redirect named does not hold the host: the members ranked
            // after it are asked for themselves, without more redirects (a member
            // whose view of the pool lags may hold it). Only a redirect queues
            // members, so at the ticket's relay the queue is empty and its answer
            // stands.
            err @ ConnectError::Refused {
                code: ErrorCode::HostOffline,
                ..
            } if !self.queue.is_empty() => {
                debug!(relay = %url, "the pool member does not hold the host; asking the fallbacks");
                self.redirects = MAX_REDIRECTS;
                if !matches!(self.last, Some(ConnectError::Refused { .. })) {
                    self.last = Some(err);
                }
                None
            }
            other => Some(other),
        }
    }

    /// Why the walk ended without a session, once no member is left: what the
    /// last member said, or a timeout of `connect_timeout` when none said anything.
    pub(super) fn end(self, connect_timeout: Duration) -> ConnectError {
        self.last.unwrap_or(ConnectError::Timeout(connect_timeout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::ConnectRelayError;

    const PIN: &str = "ptvye4qzy72zbh6tno75x77piefgktj6uc7zm6s55icsc6xm67oa";

    fn url(authority: &str) -> RelayUrl {
        format!("blindrelay://{authority}?pin={PIN}")
            .parse()
            .expect("a relay URL")
    }

    fn host() -> HostId {
        HostId::from_bytes([5; 32])
    }

    fn redirected(members: &[&str]) -> ConnectError {
        ConnectError::Redirected {
            members: members.iter().map(|m| (*m).to_owned()).collect(),
        }
    }

    fn offline() -> ConnectError {
        ConnectError::Refused {
            code: ErrorCode::HostOffline,
            reason: "host offline".to_owned(),
        }
    }

    fn unreachable() -> ConnectError {
        ConnectError::Relay(ConnectRelayError::Timeout(Duration::from_secs(1)))
    }

    /// The next member's authority and redirects.
    fn next(walk: &mut PoolWalk) -> Option<(String, u8)> {
        walk.next(host(), Hello::Plain)
            .map(|(url, ask)| (url.authority(), ask.redirects))
    }

    #[test]
    fn the_walk_starts_at_the_tickets_relay_and_follows_a_redirect_to_the_owner_first() {
        let mut walk = PoolWalk::new(url("pool.test:443"));
        assert_eq!(next(&mut walk), Some(("pool.test:443".into(), 0)));
        let members = ["b.test:443", "c.test:443"];
        assert!(walk
            .failed(&url("pool.test:443"), redirected(&members))
            .is_none());
        assert_eq!(next(&mut walk), Some(("b.test:443".into(), 1)));
        // The owner cannot be reached: the next member named.
        assert!(walk.failed(&url("b.test:443"), unreachable()).is_none());
        assert_eq!(next(&mut walk), Some(("c.test:443".into(), 1)));
        assert!(walk.failed(&url("c.test:443"), unreachable()).is_none());
        assert_eq!(next(&mut walk), None);
        assert!(matches!(
            walk.end(Duration::from_secs(9)),
            ConnectError::Relay(ConnectRelayError::Timeout(_))
        ));
    }

    #[test]
    fn redirects_are_followed_up_to_the_limit_and_the_one_past_it_ends_the_walk() {
        let member = |hop: u8| format!("m{hop}.test:443");
        let mut walk = PoolWalk::new(url(&member(0)));
        for hop in 0..=MAX_REDIRECTS {
            assert_eq!(next(&mut walk), Some((member(hop), hop)));
            let onward = redirected(&[&member(hop + 1)]);
            assert!(walk.failed(&url(&member(hop)), onward).is_none());
        }
        assert_eq!(
            next(&mut walk),
            None,
            "a redirect past the limit is not followed"
        );
        assert!(matches!(
            walk.end(Duration::from_secs(9)),
            ConnectError::Redirected { .. }
        ));
    }

    #[test]
    fn a_member_that_answered_is_not_asked_again() {
        let mut walk = PoolWalk::new(url("a.test:443"));
        next(&mut walk);
        walk.failed(
            &url("a.test:443"),
            redirected(&["a.test:443", "b.test:443"]),
        );
        assert_eq!(next(&mut walk), Some(("b.test:443".into(), 1)));
    }

    #[test]
    fn an_owner_without_the_host_sends_the_player_on_to_the_members_after_it() {
        let mut walk = PoolWalk::new(url("pool.test:443"));
        next(&mut walk);
        walk.failed(
            &url("pool.test:443"),
            redirected(&["b.test:443", "c.test:443"]),
        );
        assert_eq!(next(&mut walk), Some(("b.test:443".into(), 1)));
        assert!(walk.failed(&url("b.test:443"), offline()).is_none());
        // Asked for itself: no more redirects are followed from here.
        assert_eq!(next(&mut walk), Some(("c.test:443".into(), MAX_REDIRECTS)));
        // The last member offline too: that is the answer, not a timeout.
        let last = walk.failed(&url("c.test:443"), offline());
        assert!(matches!(
            last,
            Some(ConnectError::Refused {
                code: ErrorCode::HostOffline,
                ..
            })
        ));
    }

    #[test]
    fn an_offline_host_at_the_tickets_relay_is_the_answer_at_once() {
        let mut walk = PoolWalk::new(url("relay.test:443"));
        next(&mut walk);
        assert!(matches!(
            walk.failed(&url("relay.test:443"), offline()),
            Some(ConnectError::Refused {
                code: ErrorCode::HostOffline,
                ..
            })
        ));
    }

    #[test]
    fn the_first_owners_refusal_is_the_answer_when_the_rest_were_asked_already() {
        let mut walk = PoolWalk::new(url("pool.test:443"));
        next(&mut walk);
        // The redirect names the relay asked first among the members.
        walk.failed(
            &url("pool.test:443"),
            redirected(&["b.test:443", "c.test:443", "pool.test:443"]),
        );
        let refused = |member: &str| ConnectError::Refused {
            code: ErrorCode::HostOffline,
            reason: format!("not at {member}"),
        };
        assert_eq!(next(&mut walk), Some(("b.test:443".into(), 1)));
        assert!(walk.failed(&url("b.test:443"), refused("b")).is_none());
        assert_eq!(next(&mut walk), Some(("c.test:443".into(), MAX_REDIRECTS)));
        assert!(walk.failed(&url("c.test:443"), refused("c")).is_none());
        assert_eq!(next(&mut walk), None, "pool.test was asked already");
        match walk.end(Duration::from_secs(9)) {
            ConnectError::Refused { reason, .. } => assert_eq!(reason, "not at b"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_walk_that_asked_nobody_ends_in_a_timeout() {
        let walk = PoolWalk::new(url("relay.test:443"));
        assert!(matches!(
            walk.end(Duration::from_secs(3)),
            ConnectError::Timeout(t) if t == Duration::from_secs(3)
        ));
    }

    #[test]
    fn any_other_error_ends_the_walk_with_it() {
        let mut walk = PoolWalk::new(url("relay.test:443"));
        next(&mut walk);
        let refused = ConnectError::Refused {
            code: ErrorCode::RateLimited,
            reason: "slow down".to_owned(),
        };
        assert!(matches!(
            walk.failed(&url("relay.test:443"), refused),
            Some(ConnectError::Refused {
                code: ErrorCode::RateLimited,
                ..
            })
        ));
    }
}
