//! Resume attempts that are not a session's player resuming it in turn: a recorded
//! resume hello replayed, the session's id with another player's key, and the id
//! after the host's window is over. Each is refused ("unknown session"), and the
//! real session goes on as it was (PROTOCOL.md 10.8, SECURITY.md).

use std::time::Duration;

use blindrelay_client::{internal, HostAgent, HostState, Player, SecureStream};
use blindrelay_protocol::noise::{Hello, PlayerHandshake, ResumeId, VerdictOpened};
use blindrelay_protocol::{ControlMessage, HostId, SecretKey};
use blindrelay_tests::*;
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::tap::start_relay_with_tap;

const MARKER: &[u8] = b"a round trip through the echo host, byte-exact";

/// A round trip through the echo host.
async fn round(session: &mut SecureStream) {
    let mut back = vec![0u8; MARKER.len()];
    session.write_all(MARKER).await.unwrap();
    tokio::time::timeout(PATIENCE, session.read_exact(&mut back))
        .await
        .expect("the echo comes back")
        .unwrap();
    assert_eq!(back, MARKER);
}

/// The messages in `bytes` (each a 2-byte length and that many bytes).
fn messages(mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut messages = Vec::new();
    while let [high, low, rest @ ..] = bytes {
        let len = usize::from(u16::from_be_bytes([*high, *low])).min(rest.len());
        messages.push(rest[..len].to_vec());
        bytes = &rest[len..];
    }
    messages
}

/// A `Connect` for `host_id` with `hello` on a new stream of a connection of its
/// own, which then ends (as a refused player leaves): the messages the host sent
/// back on it, up to the stream's end.
async fn attempt(relay: &blindrelay_relay::Relay, host_id: HostId, hello: &[u8]) -> Vec<Vec<u8>> {
    let connection = raw_connection(relay).await;
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    let mut request = ControlMessage::connect(host_id).to_frame().to_vec();
    request.extend_from_slice(hello);
    send.write_all(&request).await.unwrap();
    send.finish().unwrap();
    match read_message(&mut recv).await {
        Some(ControlMessage::Connected { .. }) => {}
        other => panic!("the relay passes the attempt on: {other:?}"),
    }
    let answer = tokio::time::timeout(PATIENCE, recv.read_to_end(1 << 20))
        .await
        .expect("the host ends the attempt's stream")
        .expect("an answer");
    messages(&answer)
}

/// A resume hello for `id` as `key` would send it, and what opens the host's answer.
fn resume_hello(key: &SecretKey, host_id: &HostId, id: ResumeId) -> (Vec<u8>, PlayerHandshake) {
    let mut handshake = PlayerHandshake::with_hello(key, host_id, Hello::Resume(id)).unwrap();
    let mut wire = BytesMut::new();
    handshake.write_hello(&mut wire).unwrap();
    (wire.to_vec(), handshake)
}

/// Whether the host's answer (a reply, a verdict, and the host's `end` once the
/// attempt ended) refuses the resume as "unknown session".
fn unknown_session(handshake: PlayerHandshake, answer: &[Vec<u8>]) -> bool {
    let [reply, verdict, _end] = answer else {
        panic!("a reply, a verdict and an end: {answer:?}");
    };
    let expect_verdict = handshake.read_reply(reply).unwrap();
    matches!(
        expect_verdict.open_verdict(verdict).unwrap(),
        VerdictOpened::UnknownSession(_)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_by_anyone_but_the_player_in_turn_are_refused_and_the_session_goes_on() {
    let (relay, tap) = start_relay_with_tap();
    let mut host = start_host(relay.url()).await;
    let (ticket, host_id) = (host.ticket().clone(), *host.host_id());
    let player = Player::new(blindrelay_tests::player_config(
        SecretKey::generate().unwrap(),
    ));
    let (session, host_side) = tokio::join!(player.connect(&ticket), host.accept());
    let mut session = session.unwrap();
    tokio::spawn(echo(host_side.unwrap()));
    round(&mut session).await;
    // The player's connection goes away under the session: it resumes.
    player.close().await;
    round(&mut session).await;
    assert_eq!(session.resumes(), 1);
    // The two hellos the relay carried (128 bytes each, PROTOCOL.md 10.8): the
    // session's first, and its resume.
    let recorded: Vec<Vec<u8>> = messages(&tap.player_to_host.lock().unwrap())
        .into_iter()
        .filter(|message| message.len() == 128)
        .collect();
    assert_eq!(recorded.len(), 2, "two hellos");

    // The recorded resume hello, replayed: the name it gave is the session's no
    // longer, so the host refuses it. Its answer cannot be opened without the
    // player's keys, but it is the refusal's: a reply, a verdict and, once the
    // attempt's stream ended, the host's `end` (a resume taken goes on with the
    // host's 25-byte count instead).
    let mut replayed = recorded[1].clone();
    let mut framed = (replayed.len() as u16).to_be_bytes().to_vec();
    framed.append(&mut replayed);
    let answer = attempt(&relay, host_id, &framed).await;
    let sizes: Vec<usize> = answer.iter().map(Vec::len).collect();
    assert_eq!(sizes, [48, 18, 17], "refused, not resumed");

    // The session's name now, with another player's key: refused as unknown.
    let id = internal::resume_id(&session).expect("a resumable session");
    let (hello, handshake) = resume_hello(&SecretKey::generate().unwrap(), &host_id, id);
    let answer = attempt(&relay, host_id, &hello).await;
    assert!(
        unknown_session(handshake, &answer),
        "another key is refused"
    );

    // The real session is as it was: same stream, no resume more.
    round(&mut session).await;
    assert_eq!(session.resumes(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_after_the_hosts_window_is_refused() {
    let (relay, _tap) = start_relay_with_tap();
    let mut config = host_config(SecretKey::generate().unwrap(), relay.url());
    config.resume_window = Duration::from_secs(1);
    let mut host = HostAgent::start(config).expect("host starts");
    wait_for_state(&host, |state| *state == HostState::Registered).await;
    let (ticket, host_id) = (host.ticket().clone(), *host.host_id());
    let key = SecretKey::generate().unwrap();
    let player = Player::new(blindrelay_tests::player_config(key.clone()));
    let (session, host_side) = tokio::join!(player.connect(&ticket), host.accept());
    let (mut session, mut host_side) = (session.unwrap(), host_side.unwrap());
    let id = internal::resume_id(&session).expect("a resumable session");
    session.write_all(MARKER).await.unwrap();
    let mut got = vec![0u8; MARKER.len()];
    host_side.read_exact(&mut got).await.unwrap();
    // The player goes away and does not come back (its session is never polled
    // again): the host keeps the session for its window, then ends it.
    player.close().await;
    let ended = tokio::time::timeout(PATIENCE, host_side.read(&mut got))
        .await
        .expect("the host ends the session")
        .expect_err("with an error");
    assert!(
        ended.to_string().contains("within 1s"),
        "the window ended it: {ended}"
    );
    // The player's own key and the session's last name, too late.
    let (hello, handshake) = resume_hello(&key, &host_id, id);
    let answer = attempt(&relay, host_id, &hello).await;
    assert!(
        unknown_session(handshake, &answer),
        "refused after the window"
    );
    drop(session);
}

/// The error a session's read ended with, as the protocol's session end.
fn session_end(err: &std::io::Error) -> Option<blindrelay_client::SessionEnded> {
    err.get_ref()?
        .downcast_ref::<blindrelay_client::SessionEnded>()
        .copied()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_one_end_drops_unended_is_closed_for_the_other_not_resumed() {
    let (relay, _tap) = start_relay_with_tap();
    let mut host = start_host(relay.url()).await;
    let ticket = host.ticket().clone();
    let player = Player::new(blindrelay_tests::player_config(
        SecretKey::generate().unwrap(),
    ));
    let mut got = vec![0u8; MARKER.len()];
    // Each way round: one end writes, then its application drops the session
    // without ending it (as one does on an error of its own); the other end, that
    // was reading, learns at once that the session was closed. It does not take
    // the stream's end for a truncation and try to resume a session its peer
    // has forgotten.
    for host_drops in [true, false] {
        let (session, host_side) = tokio::join!(player.connect(&ticket), host.accept());
        let (player_side, host_side) = (session.unwrap(), host_side.unwrap());
        let (mut dropping, mut reading) = if host_drops {
            (host_side, player_side)
        } else {
            (player_side, host_side)
        };
        dropping.write_all(MARKER).await.unwrap();
        dropping.flush().await.unwrap();
        reading.read_exact(&mut got).await.unwrap();
        drop(dropping);
        let err = tokio::time::timeout(PATIENCE, reading.read(&mut got))
            .await
            .expect("the session ends")
            .expect_err("abandoned, not ended");
        assert_eq!(
            session_end(&err),
            Some(blindrelay_client::SessionEnded::Closed),
            "host dropped: {host_drops}: {err}"
        );
        assert_eq!(reading.resumes(), 0, "nothing was resumed");
    }
}

/// What a session costs an end besides its windows' bytes (README "When a path
/// breaks"): its buffers (the CLI's two 64 KiB copy buffers, a frame's worth each
/// to seal and to open), its transport's state and the allocator's slack; about
/// 430 KiB measured with 200 sessions.
const SESSION_OVERHEAD: u64 = 768 * 1024;

/// A TCP socket whose buffers stay at 64 KiB (the kernel doubles them).
fn small_buffers() -> tokio::net::TcpSocket {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    socket.set_send_buffer_size(64 * 1024).unwrap();
    socket
}

/// Pushes up to `len` bytes on `tcp` in 64 KiB writes, never reading, adding what
/// went through to `pushed`; stops at the first error (the process was stopped).
async fn push(
    mut tcp: tokio::net::TcpStream,
    len: u64,
    pushed: std::sync::Arc<std::sync::atomic::AtomicU64>,
) -> tokio::net::TcpStream {
    let block = vec![0x5a; 64 * 1024];
    let mut left = len;
    while left > 0 {
        if tcp.write_all(&block).await.is_err() {
            break;
        }
        pushed.fetch_add(block.len() as u64, std::sync::atomic::Ordering::Relaxed);
        left = left.saturating_sub(block.len() as u64);
    }
    tcp
}

/// The ends' memory (README "When a path breaks"): 200 resumable sessions through
/// `blindrelay connect` and `blindrelay host`, each pushed both ways by
/// applications that never read, far past the replay window. Each end's process
/// grows by at most its documented bound per session: three windows (what the
/// peer has not acknowledged, kept for a resume and once more on its way through
/// the transport; and the peer's window, read ahead while looking for
/// acknowledgements) and [`SESSION_OVERHEAD`]. Without the window, each end would
/// take in all that was pushed, less what the kernel holds (about 12 windows a
/// direction).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_sessions_with_full_replay_windows_stay_within_the_ends_bound() {
    let _flood = blindrelay_tests::one_flood_at_a_time().await;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Instant;

    use blindrelay_tests::process::{binaries, keygen, rss_bytes, Proc};

    const SESSIONS: usize = 200;
    const WINDOW: u64 = 256 * 1024;
    const PUSH: u64 = 64 * WINDOW;
    let bin = binaries();
    let relay = Proc::start(
        &bin.join("blindrelayd"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--sessions-per-ip",
            "0",
            "--sessions-per-ip-per-host",
            "0",
            "--sessions-per-connection",
            "0",
            "--hosts-max-sessions",
            "0",
            "--sessions-new-per-ip-per-s",
            "0",
            "--sessions-stall-timeout",
            "0",
            "--sessions-idle-timeout",
            "0",
        ],
    );
    let url = relay.value("relay url");
    // The service behind the host: pushes at every session, never reads.
    let from_service = Arc::new(AtomicU64::new(0));
    // Small buffers on the applications' sockets, so that their kernel takes in
    // little of each push, and the rest waits at the ends.
    let service = small_buffers();
    service.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let service = service.listen(1024).unwrap();
    let service_addr = service.local_addr().unwrap().to_string();
    let serving = tokio::spawn({
        let pushed = from_service.clone();
        async move {
            let mut held = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = service.accept().await {
                held.spawn(push(tcp, PUSH, pushed.clone()));
            }
        }
    });
    let dir = std::env::temp_dir().join(format!("br-replay-{}", fastrand::u64(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("host.key");
    keygen(&bin, &key, "host");
    let window = WINDOW.to_string();
    let host = Proc::start(
        &bin.join("blindrelay"),
        &[
            "host",
            "--key",
            key.to_str().unwrap(),
            "--relay",
            &url,
            "--forward",
            &service_addr,
            "--replay-window",
            &window,
        ],
    );
    host.value("host id");
    let ticket = host.value("ticket");
    host.wait_log("reachable through the relay");
    let player = Proc::start(
        &bin.join("blindrelay"),
        &[
            "connect",
            &ticket,
            "--listen",
            "127.0.0.1:0",
            "--replay-window",
            &window,
        ],
    );
    let listen = player.value("listening on");
    let before = [rss_bytes(host.pid()), rss_bytes(player.pid())];

    // The players' applications: push at every session, never read.
    let from_players = Arc::new(AtomicU64::new(0));
    let mut pushing = tokio::task::JoinSet::new();
    for _ in 0..SESSIONS {
        let tcp = small_buffers()
            .connect(listen.parse().unwrap())
            .await
            .unwrap();
        pushing.spawn(push(tcp, PUSH, from_players.clone()));
    }
    // Watch both processes until the pushes have stood still for two seconds.
    let mut peak = before;
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = (0, Instant::now());
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        for (peak, pid) in peak.iter_mut().zip([host.pid(), player.pid()]) {
            *peak = (*peak).max(rss_bytes(pid));
        }
        let moved = from_service.load(Ordering::Relaxed) + from_players.load(Ordering::Relaxed);
        if moved != last.0 {
            last = (moved, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(2) {
            break;
        }
    }
    let (up, down) = (
        from_players.load(Ordering::Relaxed),
        from_service.load(Ordering::Relaxed),
    );
    let bound = SESSIONS as u64 * (3 * WINDOW + SESSION_OVERHEAD);
    let grown = [peak[0] - before[0], peak[1] - before[1]];
    eprintln!(
        "pushed {} MiB up, {} MiB down; host grew {} MiB, player {} MiB; bound {} MiB each",
        up >> 20,
        down >> 20,
        grown[0] >> 20,
        grown[1] >> 20,
        bound >> 20
    );
    // Every session was pushed past both ends' windows, and held back there.
    let total = SESSIONS as u64 * PUSH;
    assert!(
        up > SESSIONS as u64 * 3 * WINDOW && down > SESSIONS as u64 * 3 * WINDOW,
        "the pushes filled every window"
    );
    assert!(
        up < total && down < total,
        "the windows held the pushes back"
    );
    assert!(grown[0] <= bound, "the host grew {grown:?} past {bound}");
    assert!(grown[1] <= bound, "the player grew {grown:?} past {bound}");
    serving.abort();
    pushing.abort_all();
    drop((host, player, relay));
    let _ = std::fs::remove_dir_all(&dir);
}
