//! The pool's view: the members believed alive, and what this member decides from
//! it for a host id. No I/O: the view is set by the task that keeps it.

use std::sync::Arc;

use blindrelay_protocol::placement::{self, MAX_REDIRECTS, MAX_REDIRECT_MEMBERS};
use blindrelay_protocol::HostId;
use tokio::sync::watch;

use super::PoolConfig;

/// How many refreshes a member that holds a host it does not own waits before it
/// checks again whether the host should move.
const RECHECK_REFRESHES: u32 = 3;

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

    /// The settings the pool runs with.
    pub(crate) fn config(&self) -> &PoolConfig {
        &self.config
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

    /// Where to send a player's `Connect` for `host_id` that followed `redirects`
    /// redirects: `None` to serve it here. A host registered here (`held_here`) is
    /// served here, whoever owns it. Otherwise a member that does not own the host
    /// redirects to its owner, and the owner sends a player that came to it
    /// directly on to the members ranked after it, which may hold the host while
    /// views disagree: the same answers whether the host exists or not.
    pub(crate) fn redirect_player(
        &self,
        host_id: &HostId,
        redirects: u8,
        held_here: bool,
    ) -> Option<Vec<String>> {
        if held_here {
            return None;
        }
        self.redirect(host_id, redirects)
            .or_else(|| self.fallbacks(host_id, redirects))
    }

    /// Where to send a player that asked this member, the host's owner, directly
    /// (no redirect yet) for a host it does not hold: the members ranked after it,
    /// one of which may hold the host while views disagree. `None` past the first
    /// hop, or alone: then the host is offline. Like [`Pool::redirect`], the
    /// answer depends on the host id and the view only.
    fn fallbacks(&self, host_id: &HostId, redirects: u8) -> Option<Vec<String>> {
        if redirects > 0 {
            return None;
        }
        let members = ranked(host_id, &self.members(), Some(self.me()));
        (!members.is_empty()).then_some(members)
    }

    /// The members a browser's page for `host_id` may be sent to from this relay:
    /// every member a `Redirect` for the host can name while the views agree (its
    /// ranking, and the one after, which this member's fallbacks reach when it is
    /// the owner itself), this member included. The relay lets the page connect to
    /// these and no other member (its Content-Security-Policy), so the list is cut
    /// as the redirects are, whatever the size of the pool.
    pub(crate) fn web_members(&self, host_id: &HostId) -> Vec<String> {
        let members = self.members();
        let names: Vec<&str> = members.iter().map(String::as_str).collect();
        placement::rank(host_id, &names)
            .unwrap_or_default()
            .into_iter()
            .take(MAX_REDIRECT_MEMBERS + 1)
            .map(str::to_owned)
            .collect()
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
    pub(crate) fn set_view(&self, mut members: Vec<String>) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::{MemberSource, DEFAULT_MOVE_JITTER};
    use std::time::Duration;

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
    fn a_page_may_reach_every_member_a_redirect_names_and_no_more() {
        let members = [
            "a.test:1", "b.test:1", "c.test:1", "d.test:1", "e.test:1", "f.test:1",
        ];
        let pools: Vec<Pool> = members.iter().map(|me| pool(me, &members)).collect();
        for i in 0..200 {
            let id = host(i);
            for p in &pools {
                let allowed = p.web_members(&id);
                assert_eq!(
                    allowed.len(),
                    MAX_REDIRECT_MEMBERS + 1,
                    "cut as redirects are"
                );
                for redirects in [0, 1] {
                    for held_here in [false, true] {
                        for named in p
                            .redirect_player(&id, redirects, held_here)
                            .unwrap_or_default()
                        {
                            assert!(allowed.contains(&named), "{named} is not in {allowed:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_player_is_served_where_its_host_is_held_and_sent_on_otherwise() {
        let members = ["a.test:1", "b.test:1", "c.test:1"];
        let a = pool("a.test:1", &members);
        let owned = (0..)
            .map(host)
            .find(|id| a.redirect(id, 0).is_none())
            .unwrap();
        let other = (0..)
            .map(host)
            .find(|id| a.redirect(id, 0).is_some())
            .unwrap();
        // Held here: served here, owner or not.
        assert_eq!(a.redirect_player(&other, 0, true), None);
        assert_eq!(a.redirect_player(&owned, 0, true), None);
        // Not held, owned by another member: to the owner first.
        let to = a.redirect_player(&other, 0, false).unwrap();
        assert_eq!(to, a.redirect(&other, 0).unwrap());
        // Not held, owned here, asked directly: on to the members ranked after this
        // one, which may hold it while views disagree; after a redirect, offline.
        let on = a.redirect_player(&owned, 0, false).unwrap();
        assert_eq!(on, a.successors(&owned));
        assert!(!on.contains(&"a.test:1".to_owned()));
        assert_eq!(a.redirect_player(&owned, 1, false), None);
        // Alone, a member has nowhere to send anyone.
        let alone = pool("a.test:1", &["a.test:1"]);
        assert_eq!(alone.redirect_player(&owned, 0, false), None);
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
