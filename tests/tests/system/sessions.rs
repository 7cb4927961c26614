//! Sessions end to end: bytes cross the relay intact, both ways, small and large,
//! one at a time and many at once; unknown hosts are reported as offline.

use blindrelay_client::{ConnectError, SessionPath, Ticket};
use blindrelay_protocol::{ErrorCode, SecretKey};
use blindrelay_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_messages_cross_both_ways_and_end_cleanly() {
    let relay = start_relay();
    let mut host = start_host(relay.url()).await;
    let host_key = *host.host_id();
    let ticket = host.ticket().clone();
    let player = player();

    let (player_side, host_side) = tokio::join!(player.connect(&ticket), host.accept());
    let mut player_side = player_side.expect("player connects");
    let mut host_side = host_side.expect("host accepts");
    assert_eq!(player_side.path(), SessionPath::Relayed);
    assert_eq!(player_side.peer(), host_key.public_key());
    assert_eq!(player_side.session_id(), host_side.session_id());

    player_side.write_all(b"GET /movie.mkv").await.unwrap();
    player_side.shutdown().await.unwrap();
    let mut request = Vec::new();
    host_side.read_to_end(&mut request).await.unwrap();
    assert_eq!(request, b"GET /movie.mkv");

    // Half-closed: the host can still answer after the player's end.
    host_side.write_all(b"200 OK").await.unwrap();
    host_side.shutdown().await.unwrap();
    let mut response = Vec::new();
    player_side.read_to_end(&mut response).await.unwrap();
    assert_eq!(response, b"200 OK");

    let stats = relay.stats();
    assert_eq!(stats.sessions_opened, 1);
    assert!(stats.bytes_player_to_host > request.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gibibyte_streams_through_intact() {
    const HOST_TO_PLAYER: u64 = 1 << 30;
    const PLAYER_TO_HOST: u64 = 64 << 20;
    let relay = start_relay();
    let mut host = start_host(relay.url()).await;
    let ticket = host.ticket().clone();
    let player = player();

    let (player_side, host_side) = tokio::join!(player.connect(&ticket), host.accept());
    let (mut player_read, mut player_write) = tokio::io::split(player_side.unwrap());
    let (mut host_read, mut host_write) = tokio::io::split(host_side.unwrap());

    // Both directions at once, streamed: neither side ever holds more than 64 KiB.
    let (down, up, sent_down, sent_up) = tokio::join!(
        read_pattern(&mut player_read, 1),
        read_pattern(&mut host_read, 2),
        write_pattern(&mut host_write, 1, HOST_TO_PLAYER),
        write_pattern(&mut player_write, 2, PLAYER_TO_HOST),
    );
    sent_down.unwrap();
    sent_up.unwrap();
    assert_eq!(down.unwrap(), HOST_TO_PLAYER);
    assert_eq!(up.unwrap(), PLAYER_TO_HOST);
    assert!(relay.stats().bytes_host_to_player > HOST_TO_PLAYER);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sessions_at_once_stay_separate() {
    const SESSIONS: u64 = 48;
    const BYTES: u64 = 1 << 20;
    let relay = start_relay();
    let host = start_host(relay.url()).await;
    let ticket = host.ticket().clone();
    let _echo = spawn_echo_host(host);
    let player = std::sync::Arc::new(player());

    let mut sessions = tokio::task::JoinSet::new();
    for seed in 0..SESSIONS {
        let (player, ticket) = (player.clone(), ticket.clone());
        sessions.spawn(async move {
            let session = player.connect(&ticket).await.expect("session opens");
            let (mut read, mut write) = tokio::io::split(session);
            let (sent, echoed) = tokio::join!(
                write_pattern(&mut write, seed, BYTES),
                read_pattern(&mut read, seed)
            );
            sent.unwrap();
            echoed.unwrap()
        });
    }
    let mut done = 0;
    while let Some(result) = sessions.join_next().await {
        assert_eq!(
            result.unwrap(),
            BYTES,
            "each session gets its own bytes back"
        );
        done += 1;
    }
    assert_eq!(done, SESSIONS);
    assert_eq!(relay.stats().sessions_opened, SESSIONS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_host_is_reported_offline() {
    let relay = start_relay();
    let stranger = SecretKey::generate().unwrap().host_id();
    let ticket = Ticket::new(stranger, relay.url().clone(), vec![]).unwrap();
    let err = player().connect(&ticket).await.unwrap_err();
    match &err {
        ConnectError::Refused { code, .. } => assert_eq!(*code, ErrorCode::HostOffline),
        other => panic!("expected host offline, got {other:?}"),
    }
    assert!(err.to_string().contains("host offline"), "{err}");
    assert_eq!(relay.stats().sessions_refused, 1);
}

/// quinn closes a connection as soon as its last handle goes, and a closed
/// connection's streams can no longer be read: a dropped session keeps its stream,
/// and so its connection, until the peer has read it to the end. An application may
/// drop its session and its `Player` or `HostAgent` right after the last write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_bytes_arrive_when_the_writer_drops_everything_right_after_them() {
    const LEN: u64 = 8 << 20;
    let relay = start_relay();
    let mut host = start_host(relay.url()).await;
    let ticket = host.ticket().clone();

    // Player to host; the player's session and its Player are gone at once.
    let player = player();
    let (player_side, host_side) = tokio::join!(player.connect(&ticket), host.accept());
    let (player_side, host_side) = (player_side.unwrap(), host_side.unwrap());
    assert_eq!(
        write_and_drop(player_side, host_side, player, 7, LEN).await,
        LEN
    );

    // Host to player; the host's session and its HostAgent are gone at once.
    let player = blindrelay_tests::player();
    let (player_side, host_side) = tokio::join!(player.connect(&ticket), host.accept());
    let (player_side, host_side) = (player_side.unwrap(), host_side.unwrap());
    assert_eq!(
        write_and_drop(host_side, player_side, host, 8, LEN).await,
        LEN
    );
}

/// A dropped session lingers only for a peer that is finishing: one still sending
/// (a host streaming a film to a player that closed) is told to stop at once, as
/// before, not ten seconds later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_still_sending_to_a_dropped_session_is_stopped_at_once() {
    let relay = start_relay();
    let mut host = start_host(relay.url()).await;
    let ticket = host.ticket().clone();
    let player = player();
    let (player_side, host_side) = tokio::join!(player.connect(&ticket), host.accept());
    let (mut player_side, mut host_side) = (player_side.unwrap(), host_side.unwrap());
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let chunk = vec![7u8; 64 * 1024];
        while host_side.write_all(&chunk).await.is_ok() {}
        let _ = stopped_tx.send(std::time::Instant::now());
    });
    let mut some = vec![0u8; 256 * 1024];
    player_side.read_exact(&mut some).await.unwrap();
    let dropped = std::time::Instant::now();
    drop(player_side);
    let stopped = tokio::time::timeout(PATIENCE, stopped_rx)
        .await
        .expect("the host's writes fail")
        .unwrap();
    let after = stopped.duration_since(dropped);
    assert!(
        after < blindrelay_client::internal::LINGER / 2,
        "the host was stopped {after:?} after the player dropped the session"
    );
}

/// A player made by hand: opens a session to `host_id` over a bare relay connection
/// and completes the handshake; returns its streams and its transport.
async fn hand_made_player(
    connection: &quinn::Connection,
    host_id: blindrelay_protocol::HostId,
) -> (
    quinn::SendStream,
    quinn::RecvStream,
    blindrelay_protocol::noise::Transport,
) {
    use blindrelay_protocol::noise::{PlayerHandshake, VerdictOpened};
    use blindrelay_protocol::ControlMessage;

    let key = SecretKey::generate().unwrap();
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    let mut handshake = PlayerHandshake::new(&key, &host_id).unwrap();
    let mut out = bytes::BytesMut::new();
    ControlMessage::connect(host_id).encode(&mut out);
    handshake.write_hello(&mut out).unwrap();
    send.write_all(&out).await.unwrap();
    let connected = read_message(&mut recv).await;
    assert!(
        matches!(connected, Some(ControlMessage::Connected { .. })),
        "{connected:?}"
    );
    async fn read_frame(recv: &mut quinn::RecvStream) -> Vec<u8> {
        let mut len = [0u8; 2];
        recv.read_exact(&mut len).await.unwrap();
        let mut frame = vec![0u8; u16::from_be_bytes(len).into()];
        recv.read_exact(&mut frame).await.unwrap();
        frame
    }
    let reply = read_frame(&mut recv).await;
    let expect_verdict = handshake.read_reply(&reply).unwrap();
    let verdict = read_frame(&mut recv).await;
    let Ok(VerdictOpened::Welcome(transport)) = expect_verdict.open_verdict(&verdict) else {
        panic!("the host welcomes every player");
    };
    (send, recv, transport)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_rejects_what_a_player_sent_says_so_instead_of_finishing() {
    use blindrelay_client::SessionEnded;
    use blindrelay_protocol::codes;

    let relay = start_relay();
    let mut host = start_host(relay.url()).await;
    let host_id = *host.host_id();
    let connection = raw_connection(&relay).await;
    // A frame that fails authentication, and a direction that ends without `end`.
    for truncate in [false, true] {
        let ((mut send, recv, mut transport), host_side) =
            tokio::join!(hand_made_player(&connection, host_id), host.accept());
        let mut host_side = host_side.expect("accepted");
        let mut out = bytes::BytesMut::new();
        transport.seal(b"some data", &mut out).unwrap();
        if truncate {
            send.write_all(&out).await.unwrap();
            send.finish().unwrap();
        } else {
            // The same frame, altered.
            let last = out.len() - 1;
            out[last] ^= 1;
            send.write_all(&out).await.unwrap();
        }
        let mut got = Vec::new();
        let err = tokio::time::timeout(PATIENCE, host_side.read_to_end(&mut got))
            .await
            .expect("the host reads in time")
            .unwrap_err();
        let expected = if truncate {
            std::io::ErrorKind::UnexpectedEof
        } else {
            std::io::ErrorKind::InvalidData
        };
        assert_eq!(err.kind(), expected, "the host's own report: {err}");

        // The player hears the host's rejection both ways, as its own code.
        let violation = quinn::VarInt::from(codes::stream::PROTOCOL_VIOLATION);
        if !truncate {
            let stopped = tokio::time::timeout(PATIENCE, send.stopped())
                .await
                .expect("stopped in time");
            assert_eq!(stopped, Ok(Some(violation)));
        }
        // Read through a SecureStream: the application is told what happened.
        let (recv, send) = blindrelay_client::internal::quic_halves(send, recv);
        let mut player_side = blindrelay_client::SecureStream::new(
            recv,
            send,
            transport,
            blindrelay_client::SessionPath::Relayed,
            0,
            bytes::BytesMut::new(),
        );
        let err = tokio::time::timeout(PATIENCE, player_side.read_to_end(&mut Vec::new()))
            .await
            .expect("the player reads in time")
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
        let ended = err
            .into_inner()
            .unwrap()
            .downcast::<SessionEnded>()
            .unwrap();
        assert_eq!(*ended, SessionEnded::ProtocolViolation);
    }
}

/// A relay that never answers must not hold up sessions through another relay: the
/// player keeps no lock over all its relays while one of them is being reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_relay_does_not_hold_up_a_session_through_another() {
    let relay = start_relay();
    let mut host = start_host(relay.url()).await;
    let ticket = host.ticket().clone();
    // A UDP socket that reads nothing: QUIC Initials to it go unanswered.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent_url = blindrelay_client::RelayUrl::new(
        "127.0.0.1",
        silent.local_addr().unwrap().port(),
        relay.url().pin().copied(),
    )
    .unwrap();
    let stranded = Ticket::new(*host.host_id(), silent_url, Vec::new()).unwrap();
    let player = std::sync::Arc::new(player());

    let pending = tokio::spawn({
        let player = player.clone();
        async move { player.connect(&stranded).await }
    });
    // Wait until the silent relay's first packet has arrived: that attempt is now
    // waiting on its handshake. Peeking leaves it unanswered.
    let silent = tokio::task::spawn_blocking(move || {
        silent.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut buf = [0u8; 1500];
        silent
            .peek_from(&mut buf)
            .expect("the player tries the silent relay");
        silent
    })
    .await
    .unwrap();

    // The host and its side of the session stay: dropped, they would close the
    // session before the player has read the host's answer.
    let accepted = tokio::spawn(async move {
        let session = host.accept().await;
        (session.is_some(), session, host)
    });
    let player_side =
        tokio::time::timeout(std::time::Duration::from_secs(1), player.connect(&ticket))
            .await
            .expect("a session through the working relay within a second")
            .expect("player connects");
    assert_eq!(player_side.path(), SessionPath::Relayed);
    let accepted = tokio::time::timeout(PATIENCE, accepted).await;
    assert!(
        matches!(accepted, Ok(Ok((true, _, _)))),
        "the host accepts the session"
    );
    assert!(
        !pending.is_finished(),
        "the silent relay is still being tried"
    );
    pending.abort();
    drop(silent);
}
