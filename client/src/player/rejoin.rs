//! How a player's resumable session finds a new stream: the same race a new
//! session runs, over every path the ticket offers, with a resume hello; tried
//! again until it works, the host says it holds no such session, or the session's
//! resume window ends (which the session itself keeps).

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use blindrelay_protocol::noise::{Hello, ResumeId};
use blindrelay_protocol::Ticket;
use tracing::debug;

use super::{ConnectError, PathPreference, Player};
use crate::linger::{StreamRecv, StreamSend};
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
}

impl PlayerRejoin {
    pub(super) fn new(player: Player, ticket: Ticket, preference: PathPreference) -> Self {
        Self {
            player,
            ticket,
            preference,
            attempt: None,
            retry: None,
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
}
