//! Sessions to hosts on a stream transport.
//!
//! A stream-transport connection carries one stream, so the relay cannot open a
//! session's stream on a host's connection as it does on QUIC. It asks instead: the
//! host's registration stream gets `Dial { session id, secret }`, and the host opens
//! a new connection whose first message is `Accept` with the same two. The relay
//! hands that connection's stream to the session waiting for it, which writes
//! `Incoming` there and goes on exactly as on QUIC.
//!
//! The secret is random per session and travels only inside the host's TLS
//! connection, so only the registered host can answer a `Dial`; a wrong secret, an
//! unknown id, or an answer after the session gave up (its host-stream deadline)
//! finds nothing. A waiting session holds one entry, removed however it ends.

use std::sync::Arc;

use blindrelay_protocol::control::DIAL_SECRET_LEN;
use dashmap::DashMap;
use tokio::sync::oneshot;

use crate::stream::halves::{StreamRecv, StreamSend};

/// A session waiting for its host's connection: what the registration writes as
/// `Dial`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DialRequest {
    pub session_id: u64,
    pub secret: [u8; DIAL_SECRET_LEN],
}

/// A host's new connection for a session, handed to the session.
pub(crate) type HostStream = (StreamSend, StreamRecv);

struct Pending {
    secret: [u8; DIAL_SECRET_LEN],
    deliver: oneshot::Sender<HostStream>,
}

/// The sessions waiting for their host's connection, by session id.
#[derive(Default)]
pub(crate) struct PendingDials {
    pending: DashMap<u64, Pending>,
}

/// One session's wait; dropping it withdraws the entry.
pub(crate) struct Waiting {
    dials: Arc<PendingDials>,
    session_id: u64,
    arrives: oneshot::Receiver<HostStream>,
}

impl Waiting {
    /// Resolves with the host's stream once it has answered.
    pub(crate) async fn arrival(&mut self) -> Option<HostStream> {
        (&mut self.arrives).await.ok()
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.dials.pending.remove(&self.session_id);
    }
}

impl PendingDials {
    /// Registers a session as waiting for its host; returns the `Dial` to send and
    /// the wait.
    pub(crate) fn expect(self: &Arc<Self>, session_id: u64) -> (DialRequest, Waiting) {
        let mut secret = [0u8; DIAL_SECRET_LEN];
        random_fill(&mut secret);
        let (deliver, arrives) = oneshot::channel();
        self.pending.insert(session_id, Pending { secret, deliver });
        let waiting = Waiting {
            dials: self.clone(),
            session_id,
            arrives,
        };
        (DialRequest { session_id, secret }, waiting)
    }

    /// Hands an `Accept`ing connection's stream to the session that waits for it,
    /// if the id and secret match one; otherwise gives the stream back.
    pub(crate) fn accept(
        &self,
        session_id: u64,
        secret: &[u8; DIAL_SECRET_LEN],
        stream: HostStream,
    ) -> Result<(), HostStream> {
        let matched = self
            .pending
            .remove_if(&session_id, |_, pending| same(&pending.secret, secret));
        match matched {
            Some((_, pending)) => pending.deliver.send(stream),
            None => Err(stream),
        }
    }

    /// Sessions waiting now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }
}

/// Compares two secrets in time that does not depend on where they differ.
fn same(a: &[u8; DIAL_SECRET_LEN], b: &[u8; DIAL_SECRET_LEN]) -> bool {
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Fills `out` from the operating system's random number generator.
fn random_fill(out: &mut [u8]) {
    use ring::rand::SecureRandom;
    // The system generator does not fail on the platforms the relay runs on; if it
    // did, a secret that no host knows only makes the session unreachable.
    let _ = ring::rand::SystemRandom::new().fill(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> HostStream {
        let (a, _b) = tokio::io::duplex(64);
        let (send, recv, _) = blindrelay_transport::framed(a, Default::default());
        (StreamSend::Framed(send), StreamRecv::Framed(recv))
    }

    #[tokio::test]
    async fn only_the_right_secret_reaches_the_waiting_session() {
        let dials = Arc::new(PendingDials::default());
        let (dial, mut waiting) = dials.expect(7);
        let mut wrong = dial.secret;
        wrong[15] ^= 1;
        assert!(dials.accept(7, &wrong, stream()).is_err(), "wrong secret");
        assert!(dials.accept(8, &dial.secret, stream()).is_err(), "wrong id");
        assert!(dials.accept(7, &dial.secret, stream()).is_ok());
        assert!(waiting.arrival().await.is_some());
        // Answered once: a second answer finds nothing.
        assert!(dials.accept(7, &dial.secret, stream()).is_err());
    }

    #[tokio::test]
    async fn a_session_that_gives_up_leaves_nothing_behind() {
        let dials = Arc::new(PendingDials::default());
        let (dial, waiting) = dials.expect(9);
        assert_eq!(dials.len(), 1);
        drop(waiting);
        assert_eq!(dials.len(), 0);
        assert!(dials.accept(9, &dial.secret, stream()).is_err());
    }

    #[test]
    fn secrets_differ() {
        let dials = Arc::new(PendingDials::default());
        let (a, _wa) = dials.expect(1);
        let (b, _wb) = dials.expect(2);
        assert_ne!(a.secret, b.secret);
    }
}
