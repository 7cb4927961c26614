//! The host's resumable sessions, by resume id: where a player's resume hello
//! finds the session it continues (PROTOCOL.md 10.8).
//!
//! Every resumable session the host serves is here, alive or down, under its
//! current id, with the player's key it belongs to. A resume hello that names it,
//! from that player, hands the new stream to the session, which takes it at its next
//! read or write; the player decides when a stream has failed, so a session that
//! still looks alive takes it too. The host answers before it knows the player is
//! live (a hello can be replayed), but the session goes on only once the player's
//! count arrives on the new stream, and until then it keeps its old name beside
//! the new one: a replayed hello costs the session a resume (the player comes
//! back under the name it knows), not its bytes and not the session.

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

/// The most names one session is listed under while new streams await the
/// player's count: its confirmed name and the newest streams' (older ones go).
const NAMES: usize = 4;

/// The host's resumable sessions.
#[derive(Default)]
pub(crate) struct ResumeTable {
    sessions: Mutex<HashMap<ResumeId, Entry>>,
}

#[derive(Clone)]
struct Entry {
    player: PublicKey,
    /// New streams, each with the name its hello asked for.
    offers: mpsc::Sender<(ResumeId, Offer)>,
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
        let entry = Entry { player, offers };
        self.sessions().insert(id, entry.clone());
        HostRejoin {
            table: self.clone(),
            names: vec![id],
            entry,
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
        sender.is_some_and(|sender| sender.try_send((id, offer)).is_ok())
    }
}

/// A host session's [`Rejoin`]: takes the streams its player's resumes bring.
pub(crate) struct HostRejoin {
    table: Arc<ResumeTable>,
    /// The names the session is listed under: the one the player's count last
    /// confirmed first, then those of streams taken since, oldest first.
    names: Vec<ResumeId>,
    entry: Entry,
    offers: mpsc::Receiver<(ResumeId, Offer)>,
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
        loop {
            match self.offers.poll_recv(cx) {
                // Asked for by a name the session has had since: the player's
                // count came on another stream meanwhile (it races its paths),
                // and this one is a loser it cancels. Dropped, it costs nothing.
                Poll::Ready(Some((id, _stale))) if !self.names.contains(&id) => {}
                Poll::Ready(Some((_, offer))) => return Poll::Ready(offer),
                // The sender lives in the table as long as this does.
                Poll::Ready(None) | Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn adopted(&mut self, id: ResumeId) {
        let mut sessions = self.table.sessions();
        if self.names.len() == NAMES {
            sessions.remove(&self.names.remove(1));
        }
        sessions.insert(id, self.entry.clone());
        self.names.push(id);
    }

    fn renamed(&mut self, id: ResumeId) {
        let mut sessions = self.table.sessions();
        for name in self.names.drain(..).filter(|name| *name != id) {
            sessions.remove(&name);
        }
        sessions.insert(id, self.entry.clone());
        self.names.push(id);
    }

    fn forget(&mut self) {
        let mut sessions = self.table.sessions();
        for name in self.names.drain(..) {
            sessions.remove(&name);
        }
    }
}

impl Drop for HostRejoin {
    fn drop(&mut self) {
        self.forget();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use blindrelay_protocol::noise::{split_frame, Hello, HostHandshake, PlayerHandshake};
    use blindrelay_protocol::SecretKey;
    use bytes::BytesMut;

    /// The id a real resumable handshake gives its session.
    fn fresh_id() -> ResumeId {
        let (player, host) = (
            SecretKey::generate().unwrap(),
            SecretKey::generate().unwrap(),
        );
        let mut handshake =
            PlayerHandshake::with_hello(&player, &host.host_id(), Hello::Resumable).unwrap();
        let mut wire = BytesMut::new();
        handshake.write_hello(&mut wire).unwrap();
        let hello = split_frame(&mut wire).unwrap();
        let pending = HostHandshake::respond(&host, &hello, &mut wire).unwrap();
        pending.welcome_resumable(&mut wire).unwrap().resume_id()
    }

    #[test]
    fn a_session_keeps_its_old_name_until_the_players_count_confirms_a_new_one() {
        let table = Arc::new(ResumeTable::default());
        let player = SecretKey::generate().unwrap().public_key();
        let first = fresh_id();
        let mut session = table.register(first, player);
        assert!(table.holds(first, &player));
        assert!(!table.holds(first, &SecretKey::generate().unwrap().public_key()));
        // Streams taken, not confirmed (replayed hellos, or the player's own):
        // the player may come back under any of the names, the newest kept.
        let taken: Vec<ResumeId> = (0..NAMES).map(|_| fresh_id()).collect();
        for id in &taken {
            session.adopted(*id);
        }
        assert!(table.holds(first, &player), "the confirmed name stays");
        assert!(!table.holds(taken[0], &player), "the oldest taken one went");
        for id in &taken[1..] {
            assert!(table.holds(*id, &player));
        }
        // The player's count on one of them: that name alone from now on.
        session.renamed(taken[2]);
        let held: Vec<bool> = [first, taken[1], taken[2], taken[3]]
            .iter()
            .map(|id| table.holds(*id, &player))
            .collect();
        assert_eq!(held, [false, false, true, false]);
        assert_eq!(table.sessions().len(), 1);
        drop(session);
        assert!(
            table.sessions().is_empty(),
            "an ended session leaves no name"
        );
    }
}
