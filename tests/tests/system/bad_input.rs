//! Hostile and malformed input: each bad stream gets a clear error and is closed on
//! its own; a session running beside it on the same relay is not disturbed.

use std::time::Duration;

use blindrelay_protocol::{ControlMessage, ErrorCode, HostId};
use blindrelay_relay::units::Span;
use blindrelay_relay::Relay;
use blindrelay_tests::*;

fn expect_error(answer: Option<ControlMessage>, want: ErrorCode, case: &str) {
    match answer {
        Some(ControlMessage::Error { code, reason }) => {
            assert_eq!(code, want, "{case}: {reason}");
            assert!(!reason.is_empty(), "{case}: the reason says what was wrong");
        }
        other => panic!("{case}: expected error {want}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_streams_are_refused_one_by_one_without_disturbing_others() {
    let mut config = relay_config();
    config.limits.connections.first_message_timeout = Span(Duration::from_millis(500));
    init_tracing();
    let relay = Relay::spawn(config).unwrap();

    // A healthy session that runs through the whole attack.
    let host = start_host(relay.url()).await;
    let ticket = host.ticket().clone();
    let _echo = spawn_echo_host(host);
    let session = player().connect(&ticket).await.unwrap();
    let (mut read, mut write) = tokio::io::split(session);
    let healthy = tokio::spawn(async move {
        let (sent, echoed) = tokio::join!(
            write_pattern(&mut write, 77, 32 << 20),
            read_pattern(&mut read, 77)
        );
        sent.unwrap();
        echoed.unwrap()
    });

    let attacker = raw_connection(&relay).await;
    let register = ControlMessage::register(HostId::from_bytes([1; 32])).to_frame();
    let cases: Vec<(&str, Vec<u8>, bool, ErrorCode)> = vec![
        (
            "oversize length",
            vec![0xff, 0xff, 1, 0x10],
            false,
            ErrorCode::BadRequest,
        ),
        (
            "unknown version",
            vec![0, 2, 9, 0x10],
            false,
            ErrorCode::UnsupportedVersion,
        ),
        (
            "unknown kind",
            vec![0, 2, 1, 0x55],
            false,
            ErrorCode::BadRequest,
        ),
        (
            "truncated body",
            vec![0, 34, 1, 0x10, 1, 2, 3],
            true,
            ErrorCode::BadRequest,
        ),
        ("empty stream", vec![], true, ErrorCode::BadRequest),
        (
            "trailing bytes",
            vec![0, 3, 1, 0x04, 0],
            false,
            ErrorCode::BadRequest,
        ),
        (
            "wrong first message",
            ControlMessage::Registered.to_frame().to_vec(),
            false,
            ErrorCode::BadRequest,
        ),
        (
            "length too small",
            vec![0, 1, 1],
            false,
            ErrorCode::BadRequest,
        ),
        ("silent stream", vec![0], false, ErrorCode::BadRequest),
        // Not the first stream of the connection any more: registering is refused.
        (
            "late register",
            register.to_vec(),
            false,
            ErrorCode::BadRequest,
        ),
    ];
    let count = cases.len() as u64;
    for (case, bytes, finish, want) in cases {
        let answer = raw_exchange(&attacker, &bytes, finish).await;
        expect_error(answer, want, case);
    }

    // The attacker's connection itself is still usable: it can ask for a host.
    let mut connect = ControlMessage::connect(HostId::from_bytes([5; 32]))
        .to_frame()
        .to_vec();
    // Every Connect is followed at once by the player's hello (an empty Noise
    // message stands in for it: the relay never reads inside it).
    connect.extend_from_slice(&[0, 0]);
    expect_error(
        raw_exchange(&attacker, &connect, false).await,
        ErrorCode::HostOffline,
        "connect",
    );

    assert_eq!(
        tokio::time::timeout(PATIENCE, healthy)
            .await
            .unwrap()
            .unwrap(),
        32 << 20,
        "the healthy session moved all its bytes"
    );
    let stats = relay.stats();
    assert!(
        stats.bad_requests + stats.registrations_refused >= count,
        "{stats:?}"
    );

    // And the relay still serves new sessions.
    let session = player().connect(&ticket).await.expect("relay still serves");
    drop(session);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_registration_stream_ends_only_that_registration() {
    let relay = start_relay();
    let other = start_host(relay.url()).await;
    let attacker = raw_connection(&relay).await;
    let (mut send, mut recv) = attacker.open_bi().await.unwrap();
    send.write_all(&ControlMessage::register(HostId::from_bytes([3; 32])).to_frame())
        .await
        .unwrap();
    assert!(matches!(
        read_message(&mut recv).await,
        Some(ControlMessage::Challenge { .. })
    ));
    send.write_all(&[0xde, 0xad, 0xbe, 0xef]).await.unwrap();
    let answer = tokio::time::timeout(PATIENCE, read_message(&mut recv))
        .await
        .unwrap();
    expect_error(answer, ErrorCode::BadRequest, "garbage instead of a proof");
    let stats = relay.stats();
    assert_eq!(
        stats.registered_hosts, 1,
        "the other host is still registered"
    );
    assert_eq!(other.state(), blindrelay_client::HostState::Registered);
}
