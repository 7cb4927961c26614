//! The host's one way of accepting a player's session, whichever path it came by.
//!
//! A session stream from the relay starts with `Incoming` (the relay's session id and
//! limits), one from the direct listener with nothing; after that both carry the
//! player's Noise hello, and the host answers it the same way: the handshake reply
//! and its verdict in one write, then either a [`SecureStream`] for
//! [`crate::HostAgent::accept`] or, for a player it does not serve, the refused
//! session's ending (see [`SessionAcceptor::accept`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use blindrelay_protocol::noise::{
    Hello, HostHandshake, PendingVerdict, Refused, ResumeId, Transport,
};
use blindrelay_protocol::{codes, ControlMessage, SessionLimits};
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tracing::{debug, info};

use super::punch::HostPunch;
use super::resume::ResumeTable;
use super::{HostConfig, HostCounters};
use crate::linger::{StreamRecv, StreamSend};
use crate::session::{RelayTransport, SessionPath};
use crate::stream::{Abandon, Rejoined, Resumption, SecureStream};
use crate::wire::{read_control, read_noise_message, WireError};
use blindrelay_transport::{FramedRecv, FramedSend};

/// What accepting a session needs, cloned into every session stream's task.
#[derive(Clone)]
pub(super) struct SessionAcceptor {
    config: Arc<HostConfig>,
    sessions: mpsc::Sender<SecureStream>,
    counters: Arc<HostCounters>,
    resumes: Arc<ResumeTable>,
    /// Set where the host punches (PROTOCOL.md 10.9).
    punch: Option<Arc<HostPunch>>,
}

/// Why a session stream never reached the handshake.
#[derive(Debug, thiserror::Error)]
enum OpeningError {
    /// The stream failed or carried a malformed frame.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// The relay's first message on a session stream was not `Incoming`.
    #[error("expected Incoming, got {0}")]
    NotIncoming(&'static str),
}

impl SessionAcceptor {
    /// An acceptor that hands sessions to `sessions` and counts them in `counters`.
    pub(super) fn new(
        config: Arc<HostConfig>,
        sessions: mpsc::Sender<SecureStream>,
        counters: Arc<HostCounters>,
        punch: Option<Arc<HostPunch>>,
    ) -> Self {
        Self {
            config,
            sessions,
            counters,
            resumes: Arc::default(),
            punch,
        }
    }

    /// What answers punch sessions, where the host punches.
    pub(super) fn punch(&self) -> Option<&Arc<HostPunch>> {
        self.punch.as_ref()
    }

    /// What the host counts.
    pub(super) fn counters(&self) -> &Arc<HostCounters> {
        &self.counters
    }

    /// Answers the player on a QUIC session stream that the relay opened, and hands
    /// the session to [`crate::HostAgent::accept`] if the host serves that player.
    pub(super) async fn accept(&self, send: quinn::SendStream, recv: quinn::RecvStream) {
        let path = SessionPath::Relayed;
        let carried_by = Some(RelayTransport::Quic);
        self.accept_on(send, recv, path, carried_by, None, crate::linger::halves)
            .await;
    }

    /// Like [`SessionAcceptor::accept`], for a stream a player opened on a direct
    /// `connection` (by `path`): a punch session there checks that connection.
    pub(super) async fn accept_direct(
        &self,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        path: SessionPath,
        connection: quinn::Connection,
    ) {
        self.accept_on(
            send,
            recv,
            path,
            None,
            Some(connection),
            crate::linger::halves,
        )
        .await;
    }

    /// Like [`SessionAcceptor::accept`], for a relayed session on a stream-transport
    /// connection the host opened when its registration was told to (`Dial`).
    pub(super) async fn accept_framed(
        &self,
        send: FramedSend,
        recv: FramedRecv,
        transport: RelayTransport,
    ) {
        let path = SessionPath::Relayed;
        self.accept_on(
            send,
            recv,
            path,
            Some(transport),
            None,
            crate::linger::framed_halves,
        )
        .await;
    }

    async fn accept_on<R, W>(
        &self,
        send: W,
        recv: R,
        path: SessionPath,
        carried_by: Option<RelayTransport>,
        direct: Option<quinn::Connection>,
        halves: fn(W, R) -> (StreamRecv, StreamSend),
    ) where
        R: AsyncRead + Abandon + Unpin,
        W: AsyncWrite + Abandon + Unpin,
    {
        let Some(served) = self.handshake(send, recv, path).await else {
            return;
        };
        // Wrapped only once served: a dropped session lingers until its peer has
        // read it (see `crate::linger`).
        let (reader, writer) = halves(served.send, served.recv);
        if let Some(id) = served.resuming {
            let offer = Rejoined {
                reader,
                writer,
                transport: served.transport,
                path,
                relay_transport: carried_by,
                session_id: served.session_id,
                limits: served.limits,
                first_write: BytesMut::new(),
            };
            // Gone since the hello was answered: the new stream is dropped, which
            // the player reads as cut short, and its next resume is refused.
            if !self.resumes.offer(id, offer) {
                debug!(%path, "a resumed session ended before it took its new stream");
            }
            return;
        }
        let punching = served.transport.punch();
        let mut stream = SecureStream::new(
            reader,
            writer,
            served.transport,
            path,
            served.session_id,
            BytesMut::new(),
        )
        .with_limits(served.limits);
        if punching {
            // Welcomed as one only where the host punches.
            if let Some(punch) = &self.punch {
                match direct {
                    Some(connection) => punch.check(stream, &connection).await,
                    None => punch.serve(stream, self).await,
                }
            }
            return;
        }
        if let Some(carried_by) = carried_by {
            stream = stream.with_relay_transport(carried_by);
        }
        let counter = match path {
            SessionPath::Relayed => &self.counters.sessions_relayed,
            SessionPath::Direct | SessionPath::Punched => &self.counters.sessions_direct,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if stream.transport().resumable() {
            let rejoin = self
                .resumes
                .register(stream.transport().resume_id(), *stream.peer());
            let config = &self.config;
            let resumption =
                Resumption::new(config.replay_window, config.resume_window, Box::new(rejoin));
            stream = stream.with_resumption(resumption);
        }
        debug!(session_id = relay_session_id(path, served.session_id), route = %stream.route(), player = %stream.peer().short(), limits = %served.limits, "session accepted");
        let _ = self.sessions.send(stream).await;
    }

    /// The acceptance itself, over any stream halves: `Some` with the open session if
    /// the host serves the player, `None` otherwise.
    ///
    /// The opening (the relay's `Incoming` and the player's hello) must arrive within
    /// the handshake timeout. A hello that fails the handshake abandons the stream
    /// with `REFUSED`. A player the host does not serve gets "not authorized" and the
    /// ending of a served session whose player leaves at once: the host waits for the
    /// player to end its direction, then ends its own with `end` and the stream's
    /// end, so the relay cannot single refused players out.
    async fn handshake<R, W>(
        &self,
        mut send: W,
        mut recv: R,
        path: SessionPath,
    ) -> Option<Served<R, W>>
    where
        R: AsyncRead + Abandon + Unpin,
        W: AsyncWrite + Abandon + Unpin,
    {
        let timeout = self.config.handshake_timeout;
        let opening = tokio::time::timeout(timeout, read_opening(&mut recv, path)).await;
        let (session_id, limits, hello) = match opening {
            Ok(Ok(opened)) => opened,
            Ok(Err(err)) => {
                debug!(%path, %err, "session stream failed before the handshake");
                return None;
            }
            Err(_) => {
                debug!(%path, "no Noise hello in time");
                return None;
            }
        };
        let mut reply = BytesMut::new();
        let pending = match HostHandshake::respond(&self.config.key, &hello, &mut reply) {
            Ok(pending) => pending,
            Err(err) => {
                debug!(session_id, %path, %err, "refusing a session");
                send.abandon(codes::stream::REFUSED);
                return None;
            }
        };
        if !self.config.players.allows(pending.remote_static()) {
            self.refuse(pending, reply, send, recv, path, session_id)
                .await;
            return None;
        }
        let resuming = match pending.hello() {
            Hello::Resume(id) => Some(id),
            Hello::Plain | Hello::Resumable | Hello::Punch => None,
        };
        let sealed = match pending.hello() {
            Hello::Resume(id) if self.resumes.holds(id, pending.remote_static()) => {
                pending.resumed(&mut reply)
            }
            // Through the relay: the candidates. On a direct path: the player's
            // proof that the path it punched reaches this host (PROTOCOL.md 10.9).
            Hello::Punch if self.punch.is_some() => pending.welcome_punch(&mut reply),
            Hello::Resume(_) | Hello::Punch => {
                debug!(session_id = relay_session_id(path, session_id), %path, "no such session to resume, or no punching here");
                let Ok(refused) = pending.unknown_session(&mut reply) else {
                    send.abandon(codes::stream::REFUSED);
                    return None;
                };
                leave_refused(refused, reply, send, recv, self.config.handshake_timeout).await;
                return None;
            }
            Hello::Resumable if !self.config.resume_window.is_zero() => {
                pending.welcome_resumable(&mut reply)
            }
            Hello::Plain | Hello::Resumable => pending.welcome(&mut reply),
        };
        // Reply and verdict go out in one write, the same bytes either way.
        let Ok(transport) = sealed else {
            send.abandon(codes::stream::REFUSED);
            return None;
        };
        send.write_all(&reply).await.ok()?;
        Some(Served {
            transport,
            send,
            recv,
            session_id,
            limits,
            resuming,
        })
    }

    /// Tells a player the host does not serve it, and ends the session the way a
    /// served one ends when its player leaves at once.
    async fn refuse<R, W>(
        &self,
        pending: PendingVerdict,
        mut reply: BytesMut,
        mut send: W,
        recv: R,
        path: SessionPath,
        session_id: u64,
    ) where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Abandon + Unpin,
    {
        let player = *pending.remote_static();
        let Ok(refused) = pending.refuse(&mut reply) else {
            send.abandon(codes::stream::REFUSED);
            return;
        };
        if send.write_all(&reply).await.is_err() {
            return;
        }
        self.counters
            .players_refused
            .fetch_add(1, Ordering::Relaxed);
        // The whole key, at info: this is the host's own log, and its owner needs the
        // key to add the player to authorized_players.
        info!(session_id = relay_session_id(path, session_id), %path, player = %player, "player not authorized (not in authorized_players)");
        leave_refused(
            refused,
            BytesMut::new(),
            send,
            recv,
            self.config.handshake_timeout,
        )
        .await;
    }
}

/// Sends `reply` (the handshake reply and a refusing verdict, if not sent yet),
/// lets the player end the session, as a served player that leaves at once would,
/// then ends this direction as a served session's host does when its player leaves
/// (`end`, then the stream's end), rather than closing first or differently in a way
/// the relay could single out. A player that lingers is cut off after `timeout`.
/// What it sent is not read: nothing a refused player says is of use.
async fn leave_refused<R, W>(
    refused: Refused,
    reply: BytesMut,
    mut send: W,
    mut recv: R,
    timeout: std::time::Duration,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if !reply.is_empty() && send.write_all(&reply).await.is_err() {
        return;
    }
    let drained = async {
        let mut sink = [0u8; 1024];
        loop {
            match recv.read(&mut sink).await {
                Ok(0) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    };
    let left_cleanly = tokio::time::timeout(timeout, drained)
        .await
        .unwrap_or(false);
    let mut end = BytesMut::new();
    if left_cleanly && refused.seal_end(&mut end).is_ok() {
        let _ = send.write_all(&end).await;
    }
    let _ = send.shutdown().await;
}

/// The relay's session id, for log lines: only relayed sessions have one, and a
/// field left out says so better than `session_id=0` on every direct session.
fn relay_session_id(path: SessionPath, session_id: u64) -> Option<u64> {
    (path == SessionPath::Relayed).then_some(session_id)
}

/// A session the host serves, before it is handed over.
struct Served<R, W> {
    transport: Transport,
    send: W,
    recv: R,
    session_id: u64,
    limits: SessionLimits,
    /// The session a resume hello named, which takes this stream.
    resuming: Option<ResumeId>,
}

/// Reads what comes before the handshake on a session stream of `path`: the relay's
/// `Incoming` (relayed only), then the player's hello.
async fn read_opening(
    recv: &mut (impl AsyncRead + Unpin),
    path: SessionPath,
) -> Result<(u64, SessionLimits, BytesMut), OpeningError> {
    let (session_id, limits) = match path {
        SessionPath::Relayed => match read_control(recv).await? {
            ControlMessage::Incoming { session_id, limits } => (session_id, limits),
            other => return Err(OpeningError::NotIncoming(other.name())),
        },
        // No relay in between: no session id, no relay limits.
        SessionPath::Direct | SessionPath::Punched => (0, SessionLimits::NONE),
    };
    let hello = read_noise_message(recv).await?;
    Ok((session_id, limits, hello))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use blindrelay_protocol::noise::{split_frame, ExpectVerdict, PlayerHandshake, VerdictOpened};
    use blindrelay_protocol::{PublicKey, SecretKey, StreamCode};
    use tokio::io::{DuplexStream, ReadHalf, WriteHalf};

    use super::*;
    use crate::authorized::PlayerAuthorization;

    /// The host's end of an in-memory session stream: its writer records the code
    /// it was abandoned with, as a QUIC reset would carry it.
    struct HostWriter {
        inner: WriteHalf<DuplexStream>,
        abandoned: Arc<std::sync::Mutex<Option<StreamCode>>>,
    }

    impl Abandon for HostWriter {
        fn abandon(&mut self, code: StreamCode) {
            *self.abandoned.lock().unwrap() = Some(code);
        }
    }

    impl AsyncWrite for HostWriter {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.inner).poll_write(cx, data)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    struct Setup {
        acceptor: SessionAcceptor,
        counters: Arc<HostCounters>,
        host_key: SecretKey,
        player_key: SecretKey,
    }

    /// An acceptor for a host that serves every player, or only someone else.
    fn setup(serves_player: bool) -> Setup {
        let host_key = SecretKey::from_bytes([2; 32]);
        let player_key = SecretKey::from_bytes([1; 32]);
        let mut config = HostConfig::direct_only(host_key.clone(), "127.0.0.1:0".parse().unwrap());
        config.handshake_timeout = Duration::from_secs(10);
        if !serves_player {
            let someone_else: HashSet<PublicKey> =
                [SecretKey::from_bytes([3; 32]).public_key()].into();
            config.players = PlayerAuthorization::Keys(Arc::new(someone_else));
        }
        let counters = Arc::new(HostCounters::default());
        let (sessions, _) = mpsc::channel(1);
        Setup {
            acceptor: SessionAcceptor::new(Arc::new(config), sessions, counters.clone(), None),
            counters,
            host_key,
            player_key,
        }
    }

    /// A session stream in memory: the host's halves and the player's end.
    fn stream() -> (
        ReadHalf<DuplexStream>,
        HostWriter,
        DuplexStream,
        Arc<std::sync::Mutex<Option<StreamCode>>>,
    ) {
        let (host, player) = tokio::io::duplex(64 * 1024);
        let (recv, send) = tokio::io::split(host);
        let abandoned = Arc::new(std::sync::Mutex::new(None));
        let writer = HostWriter {
            inner: send,
            abandoned: abandoned.clone(),
        };
        (recv, writer, player, abandoned)
    }

    /// Writes the player's hello (after `Incoming` when relayed) to `player`.
    async fn send_hello(
        setup: &Setup,
        player: &mut DuplexStream,
        incoming: Option<u64>,
    ) -> PlayerHandshake {
        let mut handshake =
            PlayerHandshake::new(&setup.player_key, &setup.host_key.host_id()).unwrap();
        let mut out = BytesMut::new();
        if let Some(session_id) = incoming {
            ControlMessage::Incoming {
                session_id,
                limits: SessionLimits::NONE,
            }
            .encode(&mut out);
        }
        handshake.write_hello(&mut out).unwrap();
        player.write_all(&out).await.unwrap();
        handshake
    }

    /// Reads the host's reply and verdict off `player`.
    async fn read_verdict(player: &mut DuplexStream, handshake: PlayerHandshake) -> VerdictOpened {
        let mut wire = BytesMut::new();
        let expect: ExpectVerdict = loop {
            if let Some(reply) = split_frame(&mut wire) {
                break handshake.read_reply(&reply).unwrap();
            }
            assert_ne!(player.read_buf(&mut wire).await.unwrap(), 0, "a reply");
        };
        loop {
            if let Some(verdict) = split_frame(&mut wire) {
                return expect.open_verdict(&verdict).unwrap();
            }
            assert_ne!(player.read_buf(&mut wire).await.unwrap(), 0, "a verdict");
        }
    }

    #[tokio::test]
    async fn a_relayed_stream_is_served_under_the_relays_session_id() {
        let setup = setup(true);
        let (recv, send, mut player, _) = stream();
        let hello = send_hello(&setup, &mut player, Some(7)).await;
        let served = setup
            .acceptor
            .handshake(send, recv, SessionPath::Relayed)
            .await
            .expect("served");
        assert_eq!(served.session_id, 7);
        assert_eq!(
            served.transport.remote_static(),
            &setup.player_key.public_key()
        );
        assert!(matches!(
            read_verdict(&mut player, hello).await,
            VerdictOpened::Welcome(_)
        ));
    }

    #[tokio::test]
    async fn a_direct_stream_starts_with_the_hello() {
        let setup = setup(true);
        let (recv, send, mut player, _) = stream();
        let hello = send_hello(&setup, &mut player, None).await;
        let served = setup
            .acceptor
            .handshake(send, recv, SessionPath::Direct)
            .await
            .expect("served");
        assert_eq!(served.session_id, 0);
        assert!(matches!(
            read_verdict(&mut player, hello).await,
            VerdictOpened::Welcome(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn a_player_not_served_is_told_so_and_the_host_ends_only_after_it() {
        let setup = setup(false);
        let (recv, send, mut player, abandoned) = stream();
        let hello = send_hello(&setup, &mut player, None).await;
        let acceptor = setup.acceptor.clone();
        let host = tokio::spawn(async move {
            acceptor
                .handshake(send, recv, SessionPath::Direct)
                .await
                .is_none()
        });
        let VerdictOpened::NotAuthorized(refused) = read_verdict(&mut player, hello).await else {
            panic!("the host does not serve this player");
        };
        // The host sends nothing more while the player stays (the paused clock runs
        // ahead only once every task waits).
        let mut early = BytesMut::new();
        let waited =
            tokio::time::timeout(Duration::from_secs(5), player.read_buf(&mut early)).await;
        assert!(waited.is_err(), "the host waits for the player to leave");
        let mut end = BytesMut::new();
        refused.seal_end(&mut end).unwrap();
        player.write_all(&end).await.unwrap();
        player.shutdown().await.unwrap();
        assert!(host.await.unwrap(), "nothing is handed over");
        // Then exactly one end frame and the stream's end, as a served host sends.
        let mut rest = Vec::new();
        player.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest.len(), 2 + 17);
        assert_eq!(setup.counters.players_refused.load(Ordering::Relaxed), 1);
        assert_eq!(*abandoned.lock().unwrap(), None);
    }

    #[tokio::test]
    async fn a_hello_that_fails_the_handshake_is_refused() {
        let setup = setup(true);
        let (recv, send, mut player, abandoned) = stream();
        player.write_all(&[0, 4, 1, 2, 3, 4]).await.unwrap();
        let served = setup
            .acceptor
            .handshake(send, recv, SessionPath::Direct)
            .await;
        assert!(served.is_none());
        assert_eq!(*abandoned.lock().unwrap(), Some(codes::stream::REFUSED));
    }

    #[tokio::test]
    async fn a_relayed_stream_must_open_with_incoming() {
        let setup = setup(true);
        let (recv, send, mut player, _) = stream();
        let mut out = BytesMut::new();
        ControlMessage::Registered.encode(&mut out);
        player.write_all(&out).await.unwrap();
        drop(send_hello(&setup, &mut player, None).await);
        let served = setup
            .acceptor
            .handshake(send, recv, SessionPath::Relayed)
            .await;
        assert!(served.is_none());
        // Nothing was answered: the stream ends without a byte from the host.
        let mut rest = Vec::new();
        player.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_player_that_sends_no_hello_is_dropped_at_the_handshake_timeout() {
        let setup = setup(true);
        let (recv, send, _player, _) = stream();
        let started = tokio::time::Instant::now();
        let served = setup
            .acceptor
            .handshake(send, recv, SessionPath::Direct)
            .await;
        assert!(served.is_none());
        assert_eq!(started.elapsed(), Duration::from_secs(10));
    }
}
