//! How a player's resumable session finds a new stream: the same race a new
//! session runs, over every path the ticket offers, with a resume hello; tried
//! again until it works, the host says it holds no such session, or the session's
//! resume window ends (which the session itself keeps).

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use std::net::SocketAddr;

use blindrelay_protocol::noise::{Hello, ResumeId};
use blindrelay_protocol::Ticket;
use tokio::sync::watch;
use tracing::debug;

use super::{ConnectError, PathPreference, Player};
use crate::linger::{StreamRecv, StreamSend};
use crate::session::SessionPath;
use crate::stream::{Rejoin, RejoinRefused, Rejoined, SecureStream};

/// How long a player waits between two resume attempts that failed.
const RETRY: Duration = Duration::from_millis(500);

type Attempt = Pin<Box<dyn Future<Output = Result<SecureStream, ConnectError>> + Send>>;

/// A player's [`Rejoin`]: dials the host again, as [`Player::connect`] does.
pub(super) struct PlayerRejoin {
    player: Player,
    ticket: Ticket,
    preference: PathPreference,
    attempt: Option<Attempt>,
    retry: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The host's punched address as it changes (PROTOCOL.md 10.9).
    punched: watch::Receiver<Option<SocketAddr>>,
    /// Waits for the next change of `punched`.
    punched_changed: Option<Changed>,
    /// A resume over the punched path, while the session runs on another.
    moving: Option<Attempt>,
}

/// Whether a session on `path`, opened with `preference`, moves to a punched path:
/// a relayed one on `auto`.
fn may_move(path: SessionPath, preference: PathPreference) -> bool {
    !path.is_direct() && preference == PathPreference::Auto
}

type Changed = Pin<Box<dyn Future<Output = watch::Receiver<Option<SocketAddr>>> + Send>>;

impl PlayerRejoin {
    pub(super) fn new(player: Player, ticket: Ticket, preference: PathPreference) -> Self {
        let mut punched = player.connector.punched.watch(ticket.host_id());
        // A path punched before this session opened counts as a change: a session
        // that won the race over the relay all the same moves too.
        punched.mark_changed();
        Self {
            player,
            ticket,
            preference,
            attempt: None,
            retry: None,
            punched,
            punched_changed: None,
            moving: None,
        }
    }

    /// A punched path that appeared since the last call, if any.
    fn poll_punched(&mut self, cx: &mut Context<'_>) -> Poll<Option<SocketAddr>> {
        loop {
            let changed = self.punched_changed.get_or_insert_with(|| {
                let mut punched = self.punched.clone();
                Box::pin(async move {
                    // The sender lives as long as the player: a closed channel
                    // just never changes again.
                    if punched.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                    punched
                })
            });
            let mut punched = ready!(changed.as_mut().poll(cx));
            self.punched_changed = None;
            let addr = *punched.borrow_and_update();
            self.punched = punched;
            if addr.is_some() {
                return Poll::Ready(addr);
            }
        }
    }
}

impl Rejoin<StreamRecv, StreamSend> for PlayerRejoin {
    fn poll_rejoin(
        &mut self,
        cx: &mut Context<'_>,
        id: ResumeId,
    ) -> Poll<Result<Rejoined<StreamRecv, StreamSend>, RejoinRefused>> {
        loop {
            if let Some(retry) = &mut self.retry {
                ready!(retry.as_mut().poll(cx));
                self.retry = None;
            }
            let attempt = self.attempt.get_or_insert_with(|| {
                let player = Player {
                    connector: self.player.connector.clone(),
                };
                let (ticket, preference) = (self.ticket.clone(), self.preference);
                Box::pin(async move {
                    player
                        .connect_with(&ticket, preference, Hello::Resume(id))
                        .await
                })
            });
            let result = ready!(attempt.as_mut().poll(cx));
            self.attempt = None;
            match result {
                Ok(stream) => return Poll::Ready(Ok(stream.into_rejoined())),
                Err(ConnectError::UnknownSession | ConnectError::NotAuthorized { .. }) => {
                    return Poll::Ready(Err(RejoinRefused))
                }
                Err(err) => {
                    debug!(%err, "resume attempt failed; trying again");
                    self.retry = Some(Box::pin(tokio::time::sleep(RETRY)));
                }
            }
        }
    }

    /// A session that runs relayed moves to a punched direct path by resuming
    /// there; the relayed stream goes on meanwhile, and stays if the move fails.
    fn poll_move(
        &mut self,
        cx: &mut Context<'_>,
        id: ResumeId,
        path: SessionPath,
    ) -> Poll<Rejoined<StreamRecv, StreamSend>> {
        if !may_move(path, self.preference) {
            self.moving = None;
            return Poll::Pending;
        }
        loop {
            if let Some(moving) = &mut self.moving {
                let moved = ready!(moving.as_mut().poll(cx));
                self.moving = None;
                match moved {
                    Ok(stream) => return Poll::Ready(stream.into_rejoined()),
                    Err(err) => debug!(%err, "moving to the punched path failed; staying"),
                }
            }
            let Some(addr) = ready!(self.poll_punched(cx)) else {
                continue;
            };
            let connector = self.player.connector.clone();
            let host_id = *self.ticket.host_id();
            self.moving = Some(Box::pin(async move {
                connector
                    .connect_direct(addr, host_id, Hello::Resume(id), SessionPath::Punched)
                    .await
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_sees_a_punched_path_once_it_appears() {
        use blindrelay_protocol::{HostId, SecretKey};
        let player = Player::new(crate::PlayerConfig::new(SecretKey::generate().unwrap()));
        let host_id = HostId::from_bytes([7; 32]);
        let ticket =
            Ticket::with_routes(host_id, None, vec!["192.0.2.1:5000".parse().unwrap()]).unwrap();
        let connector = player.connector.clone();
        let mut rejoin = PlayerRejoin::new(player, ticket, PathPreference::Auto);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(
            rejoin.poll_punched(&mut cx).is_pending(),
            "none punched yet"
        );
        let addr: SocketAddr = "203.0.113.7:40123".parse().unwrap();
        connector.punched.punched_for_test(&host_id, addr);
        assert_eq!(rejoin.poll_punched(&mut cx), Poll::Ready(Some(addr)));
        assert!(rejoin.poll_punched(&mut cx).is_pending(), "told once");
    }

    #[test]
    fn only_a_relayed_session_on_auto_moves_to_a_punched_path() {
        assert!(may_move(SessionPath::Relayed, PathPreference::Auto));
        assert!(!may_move(SessionPath::Direct, PathPreference::Auto));
        assert!(!may_move(SessionPath::Punched, PathPreference::Auto));
        assert!(!may_move(SessionPath::Relayed, PathPreference::RelayOnly));
        assert!(!may_move(SessionPath::Relayed, PathPreference::DirectOnly));
    }
}
