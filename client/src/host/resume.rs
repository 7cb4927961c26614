//! The host's resumable sessions, by resume id: where a player's resume hello
//! finds the session it continues (PROTOCOL.md 10.8).
//!
//! Every resumable session the host serves is here, alive or down, under its
//! current id, with the player's key it belongs to. A resume hello that names it,
//! from that player, hands the new stream to the session, which takes it at its next
//! read or write; the player decides when a stream has failed, so a session that
//! still looks alive takes it too. The host answers before it knows the player is
//! live (a hello can be replayed), but the session goes on only once the player's
//! count arrives on the new stream: a replayed hello costs the session a resume,
//! not its bytes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use blindrelay_protocol::noise::ResumeId;
use blindrelay_protocol::PublicKey;
use tokio::sync::mpsc;

use crate::linger::{StreamRecv, StreamSend};
use crate::stream::{Rejoin, RejoinRefused, Rejoined};

type Offer = Rejoined<StreamRecv, StreamSend>;

/// New streams offered to one session that it has not taken yet: the newest wins.
const OFFERS: usize = 4;

/// The host's resumable sessions.
#[derive(Default)]
pub(crate) struct ResumeTable {
    sessions: Mutex<HashMap<ResumeId, Entry>>,
}

struct Entry {
    player: PublicKey,
    offers: mpsc::Sender<Offer>,
}

impl ResumeTable {
    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<ResumeId, Entry>> {
        self.sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Lists a new resumable session of `player`'s under `id`.
    pub(crate) fn register(self: &Arc<Self>, id: ResumeId, player: PublicKey) -> HostRejoin {
        let (offers, receiver) = mpsc::channel(OFFERS);
        self.sessions().insert(id, Entry { player, offers });
        HostRejoin {
            table: self.clone(),
            id,
            offers: receiver,
        }
    }

    /// Whether `player` holds a session by `id`: what a resume hello asks.
    pub(crate) fn holds(&self, id: ResumeId, player: &PublicKey) -> bool {
        self.sessions()
            .get(&id)
            .is_some_and(|entry| entry.player == *player)
    }

    /// Hands `offer` to the session `id`; false if it is gone meanwhile, or has
    /// more offers waiting than it takes.
    pub(crate) fn offer(&self, id: ResumeId, offer: Offer) -> bool {
        let sender = self.sessions().get(&id).map(|entry| entry.offers.clone());
        sender.is_some_and(|sender| sender.try_send(offer).is_ok())
    }
}

/// A host session's [`Rejoin`]: takes the streams its player's resumes bring.
pub(crate) struct HostRejoin {
    table: Arc<ResumeTable>,
    id: ResumeId,
    offers: mpsc::Receiver<Offer>,
}

impl Rejoin<StreamRecv, StreamSend> for HostRejoin {
    fn poll_rejoin(
        &mut self,
        cx: &mut Context<'_>,
        _id: ResumeId,
    ) -> Poll<Result<Offer, RejoinRefused>> {
        self.poll_offered(cx).map(Ok)
    }

    fn poll_offered(&mut self, cx: &mut Context<'_>) -> Poll<Offer> {
        match self.offers.poll_recv(cx) {
            Poll::Ready(Some(offer)) => Poll::Ready(offer),
            // The sender lives in the table as long as this does.
            Poll::Ready(None) | Poll::Pending => Poll::Pending,
        }
    }

    fn renamed(&mut self, id: ResumeId) {
        let mut sessions = self.table.sessions();
        if let Some(entry) = sessions.remove(&self.id) {
            sessions.insert(id, entry);
        }
        self.id = id;
    }
}

impl Drop for HostRejoin {
    fn drop(&mut self) {
        self.table.sessions().remove(&self.id);
    }
}
