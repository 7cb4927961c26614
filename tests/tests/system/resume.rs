//! Resume attempts that are not a session's player resuming it in turn: a recorded
//! resume hello replayed, the session's id with another player's key, and the id
//! after the host's window is over. Each is refused ("unknown session"), and the
//! real session goes on as it was (PROTOCOL.md 10.8, SECURITY.md).

use std::time::Duration;

use blindrelay_client::{internal, HostAgent, HostState, Player, PlayerConfig, SecureStream};
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
    let player = Player::new(PlayerConfig::new(SecretKey::generate().unwrap()));
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
    let player = Player::new(PlayerConfig::new(key.clone()));
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
