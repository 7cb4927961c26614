//! The relay cannot decrypt: what it forwards is ciphertext. And it does not tell:
//! its logs name no one.
//!
//! The relay is built with its test-only splice tap, which records every chunk the
//! splice handles. A player sends a known plaintext marker; the host receives it; the
//! marker never appears in what the relay saw, in either direction. A relay process
//! logging at trace level carries a whole session and a host that sends a second
//! `Register` with a token, and its log holds neither the marker, nor any host id or
//! its prefix, nor the token, nor the player's address.

use blindrelay_protocol::{Claims, ControlMessage, ErrorCode, IssuerSecretKey, SecretKey};
use blindrelay_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::tap::start_relay_with_tap;

const MARKER: &[u8] = b"PLAINTEXT-MARKER-the-relay-must-never-see-this";

/// `bytes` in every text encoding a log line could show them in: base32 (how
/// host ids are written), hex, base64 and a debug print of the bytes.
fn encodings(bytes: &[u8]) -> Vec<(&'static str, String)> {
    use data_encoding::{BASE32_NOPAD, BASE64, BASE64URL_NOPAD, HEXLOWER, HEXUPPER};
    vec![
        ("base32", BASE32_NOPAD.encode(bytes)),
        (
            "lower-case base32",
            BASE32_NOPAD.encode(bytes).to_lowercase(),
        ),
        ("hex", HEXLOWER.encode(bytes)),
        ("upper-case hex", HEXUPPER.encode(bytes)),
        ("base64", BASE64.encode(bytes)),
        ("base64url", BASE64URL_NOPAD.encode(bytes)),
        (
            "a debug print",
            format!("{bytes:?}").trim_start_matches('[').to_owned(),
        ),
    ]
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_only_ever_sees_ciphertext() {
    let (relay, tap) = start_relay_with_tap();
    let mut host = start_host(relay.url()).await;
    let ticket = host.ticket().clone();
    let player = player();

    let (player_side, host_side) = tokio::join!(player.connect(&ticket), host.accept());
    let (mut player_side, mut host_side) = (player_side.unwrap(), host_side.unwrap());

    let message: Vec<u8> = MARKER.repeat(1000);
    player_side.write_all(&message).await.unwrap();
    player_side.shutdown().await.unwrap();
    let mut received = Vec::new();
    host_side.read_to_end(&mut received).await.unwrap();
    assert_eq!(received, message, "the host gets the plaintext");

    host_side.write_all(MARKER).await.unwrap();
    host_side.shutdown().await.unwrap();
    let mut answer = Vec::new();
    player_side.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, MARKER);

    let up = tap.player_to_host.lock().unwrap().clone();
    let down = tap.host_to_player.lock().unwrap().clone();
    // The tap really saw the session: at least as many bytes as were sent.
    assert!(up.len() >= message.len(), "tap saw {} bytes", up.len());
    assert!(down.len() >= MARKER.len());
    assert!(
        !contains(&up, MARKER),
        "marker visible to the relay, player to host"
    );
    assert!(
        !contains(&down, MARKER),
        "marker visible to the relay, host to player"
    );
    // Not even a fragment long enough to recognise.
    assert!(!contains(&up, &MARKER[..16]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_level_log_of_a_whole_session_names_no_one() {
    let bin = blindrelay_tests::process::binaries();
    // The relay listens on 127.0.0.3, so the only "127.0.0.1" it could log is the
    // address host and player come from.
    let relay = blindrelay_tests::process::Proc::start_with_env(
        &bin.join("blindrelayd"),
        &["--listen", "127.0.0.3:0"],
        &[("RUST_LOG", "trace")],
    );
    let url: blindrelay_client::RelayUrl = relay.value("relay url").parse().unwrap();
    let mut host = start_host(&url).await;
    let ticket = host.ticket().clone();
    let host_id = *ticket.host_id();
    let player = player();
    let (player_side, host_side) = tokio::join!(player.connect(&ticket), host.accept());
    let (mut player_side, mut host_side) = (player_side.unwrap(), host_side.unwrap());
    player_side.write_all(MARKER).await.unwrap();
    player_side.shutdown().await.unwrap();
    let mut got = Vec::new();
    host_side.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, MARKER);
    host_side.shutdown().await.unwrap();
    // The session is over for both: a resumable session's streams finish once each
    // side has both ends, or its application lets it go (PROTOCOL.md 10.8).
    drop((player_side, host_side));
    drop(host);

    // A registered host sends a second Register, with a token, on its registration
    // stream: the relay refuses it and says so in its log, without the message.
    let raw = blindrelay_client::internal::connect_relay_raw(&url)
        .await
        .unwrap();
    let key = SecretKey::generate().unwrap();
    let raw_id = key.host_id();
    let register = ControlMessage::register(key.host_id());
    let (verdict, mut send, mut recv) = register_with(&raw, register, &key, &raw).await;
    assert_eq!(verdict, ControlMessage::Registered);
    let claims = Claims {
        host_id: key.host_id(),
        expires: u64::from(u32::MAX),
        tier: "default".to_owned(),
    };
    let token = IssuerSecretKey::generate().unwrap().issue(claims).unwrap();
    let token_bytes = token.to_bytes();
    let again = ControlMessage::Register {
        host_id: key.host_id(),
        token: Some(token_bytes.clone()),
        redirects: 0,
    };
    send.write_all(&again.to_frame()).await.unwrap();
    let answer = tokio::time::timeout(PATIENCE, read_message(&mut recv))
        .await
        .expect("an answer in time");
    assert!(
        matches!(
            answer,
            Some(ControlMessage::Error {
                code: ErrorCode::BadRequest,
                ..
            })
        ),
        "{answer:?}"
    );
    drop((send, recv, raw));

    let log = relay.interrupt().join("\n");
    assert!(
        log.contains("session spliced"),
        "the log covers the session:\n{log}"
    );
    assert!(log.contains(" DEBUG "), "a log below info level");
    let marker = String::from_utf8_lossy(MARKER);
    assert!(!log.contains(marker.as_ref()), "payload in the log");
    for id in [&host_id, &raw_id] {
        for (encoding, shown) in encodings(id.as_bytes()) {
            assert!(!log.contains(&shown), "a host id in {encoding} in the log");
            assert!(
                !log.contains(&shown[..12]),
                "a host id's prefix in {encoding} in the log"
            );
        }
        assert!(
            !contains(log.as_bytes(), &id.as_bytes()[..12]),
            "a host id's raw bytes in the log"
        );
    }
    // The relay logs (to stderr, as it goes) before it answers.
    assert!(
        log.contains("unexpected message on the registration stream"),
        "the second Register was logged:\n{log}"
    );
    assert!(
        log.contains("registration{host="),
        "lines about a host carry its tag:\n{log}"
    );
    assert!(!log.contains(&token.to_string()), "token text in the log");
    // Nor any run of the token's bytes, as a debug print of them would show.
    for run in token_bytes.chunks_exact(8) {
        let shown = format!("{run:?}");
        let shown = shown.trim_matches(['[', ']']);
        assert!(!log.contains(shown), "token bytes in the log: {shown}");
    }
    assert!(
        !log.contains("127.0.0.1"),
        "a full client address in the log"
    );
    assert!(
        log.contains("127.0.0.x"),
        "addresses appear, cut to their network"
    );
}

/// The lengths of the Noise messages in what the relay forwarded one way (each a
/// 2-byte length and that many bytes, PROTOCOL.md 10.3).
fn message_lengths(mut forwarded: &[u8]) -> Vec<usize> {
    let mut lengths = Vec::new();
    while let [high, low, rest @ ..] = forwarded {
        let len = usize::from(u16::from_be_bytes([*high, *low]));
        lengths.push(len);
        forwarded = &rest[len.min(rest.len())..];
    }
    lengths
}

/// A resumed session's new stream is, to the relay, a new session: the same hello,
/// reply and verdict sizes, counted as one more session, and nothing it could link
/// to the old one but timing (PROTOCOL.md 10.8, SECURITY.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_looks_to_the_relay_like_a_new_session() {
    let (relay, tap) = start_relay_with_tap();
    let mut host = start_host(relay.url()).await;
    let ticket = host.ticket().clone();
    let player = player();
    let (player_side, host_side) = tokio::join!(player.connect(&ticket), host.accept());
    let (mut session, host_side) = (player_side.unwrap(), host_side.unwrap());
    assert!(session.resumable());
    let _echo = tokio::spawn(echo(host_side));
    let mut back = vec![0u8; MARKER.len()];
    session.write_all(MARKER).await.unwrap();
    session.read_exact(&mut back).await.unwrap();
    let opened = relay.stats().sessions_opened;

    // The player's connection to the relay goes away under the session; the
    // session resumes on a new one, and goes on.
    player.close().await;
    session.write_all(MARKER).await.unwrap();
    session.read_exact(&mut back).await.unwrap();
    assert_eq!(back, MARKER);
    assert_eq!(session.resumes(), 1);
    assert_eq!(
        relay.stats().sessions_opened,
        opened + 1,
        "one more session, no other count"
    );

    let up = message_lengths(&tap.player_to_host.lock().unwrap());
    let down = message_lengths(&tap.host_to_player.lock().unwrap());
    // Both streams open alike: a 128-byte hello one way, a 48-byte reply and an
    // 18-byte verdict the other.
    let hellos: Vec<usize> = (0..up.len()).filter(|&i| up[i] == 128).collect();
    assert_eq!(hellos.len(), 2, "two hellos of one size: {up:?}");
    let replies: Vec<usize> = (0..down.len().saturating_sub(1))
        .filter(|&i| down[i] == 48 && down[i + 1] == 18)
        .collect();
    assert_eq!(
        replies.len(),
        2,
        "two replies and verdicts of one size: {down:?}"
    );
    // What follows on the resumed stream is each side's count (a 25-byte ack),
    // then data: what timing shows, and nothing names the old session.
    assert_eq!(up.get(hellos[1] + 1), Some(&25), "{up:?}");
    assert_eq!(down.get(replies[1] + 2), Some(&25), "{down:?}");
    let forwarded = tap.player_to_host.lock().unwrap().clone();
    assert!(!contains(&forwarded, MARKER));
}
