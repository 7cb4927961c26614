//! Registration: only the holder of a host id's key can register it, a proof is
//! bound to its connection, the newest registration wins, and a host comes back by
//! itself when the relay restarts.

use blindrelay_client::{HostAgent, HostState, RelayTransport, TransportPreference};
use blindrelay_protocol::{ControlMessage, ErrorCode, HostId, SecretKey};
use blindrelay_relay::Relay;
use blindrelay_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_holder_registers() {
    let relay = start_relay();
    let key = SecretKey::generate().unwrap();
    let connection = raw_connection(&relay).await;
    let (verdict, _control) = register_by_hand(&connection, key.host_id(), &key, &connection).await;
    assert_eq!(verdict, ControlMessage::Registered);
    assert_eq!(relay.stats().registered_hosts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_vanishes_reads_as_offline() {
    let relay = start_relay();
    let key = SecretKey::generate().unwrap();
    let connection = raw_connection(&relay).await;
    let (verdict, _control) = register_by_hand(&connection, key.host_id(), &key, &connection).await;
    assert_eq!(verdict, ControlMessage::Registered);
    connection.close(0u32.into(), b"gone");

    let ticket =
        blindrelay_client::Ticket::new(key.host_id(), relay.url().clone(), vec![]).unwrap();
    let player = player();
    let err = tokio::time::timeout(PATIENCE, async {
        loop {
            // The relay learns of the close asynchronously; until then a Connect may
            // still be paired and fail the handshake. It must settle on "offline".
            match player.connect(&ticket).await {
                Err(blindrelay_client::ConnectError::Refused {
                    code: ErrorCode::HostOffline,
                    ..
                }) => break ErrorCode::HostOffline,
                _ => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .expect("the relay reports the host offline");
    assert_eq!(err, ErrorCode::HostOffline);
    assert_eq!(relay.stats().registered_hosts, 0);
}

/// A host whose connection ends is taken off the registry by its registration's
/// own end, at once: not only when a player asks for it (a lookup drops a closed
/// host too, which is why the test above cannot tell). The registry's count, and a
/// drain waiting for hosts to leave, depend on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_leaves_is_unregistered_without_anyone_asking_for_it() {
    let relay = start_relay();
    let key = SecretKey::generate().unwrap();
    let connection = raw_connection(&relay).await;
    let (verdict, _control) = register_by_hand(&connection, key.host_id(), &key, &connection).await;
    assert_eq!(verdict, ControlMessage::Registered);
    assert_eq!(relay.stats().registered_hosts, 1);
    connection.close(0u32.into(), b"gone");
    let gone = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while relay.stats().registered_hosts != 0 {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "still registered: {:?}", relay.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_id_cannot_be_registered_without_its_key() {
    let relay = start_relay();
    let victim = SecretKey::generate().unwrap();
    let attacker = SecretKey::generate().unwrap();
    let connection = raw_connection(&relay).await;
    let (verdict, _control) =
        register_by_hand(&connection, victim.host_id(), &attacker, &connection).await;
    let ControlMessage::Error { code, .. } = verdict else {
        panic!("expected a refusal, got {verdict:?}");
    };
    assert_eq!(code, ErrorCode::ProofFailed);
    let stats = relay.stats();
    assert_eq!(stats.registered_hosts, 0);
    assert_eq!(stats.registrations_refused, 1);
    assert_eq!(stats.registrations_accepted, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_made_for_another_connection_is_refused() {
    // The key holder computes a proof with keying material from connection A, and it
    // is presented on connection B: a relayed or replayed proof must not work.
    let relay = start_relay();
    let key = SecretKey::generate().unwrap();
    let a = raw_connection(&relay).await;
    let b = raw_connection(&relay).await;
    let (verdict, _control) = register_by_hand(&b, key.host_id(), &key, &a).await;
    assert!(
        matches!(
            verdict,
            ControlMessage::Error {
                code: ErrorCode::ProofFailed,
                ..
            }
        ),
        "{verdict:?}"
    );
    assert_eq!(relay.stats().registered_hosts, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_low_order_host_id_cannot_register() {
    // With the all-zero key the "shared secret" is zero for everyone; the relay must
    // refuse it even though the attacker can compute a matching MAC.
    let relay = start_relay();
    let connection = raw_connection(&relay).await;
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    let host_id = HostId::from_bytes([0; 32]);
    send.write_all(&ControlMessage::register(host_id).to_frame())
        .await
        .unwrap();
    let Some(ControlMessage::Challenge { .. }) = read_message(&mut recv).await else {
        panic!("expected a challenge");
    };
    send.write_all(&ControlMessage::Proof { mac: [0; 32] }.to_frame())
        .await
        .unwrap();
    let verdict = read_message(&mut recv).await;
    assert!(
        matches!(
            verdict,
            Some(ControlMessage::Error {
                code: ErrorCode::ProofFailed,
                ..
            })
        ),
        "{verdict:?}"
    );
    assert_eq!(relay.stats().registered_hosts, 0);
}

/// The relay closes the old host's connection as `REPLACED`, and the old host stops
/// and says why instead of registering again (which would replace the new one, and
/// so on). Over TLS/TCP and WebSocket too, where the close comes in the framing.
async fn the_newest_registration_wins_and_the_old_host_is_told(transport: TransportPreference) {
    let relay = start_relay();
    let key = SecretKey::generate().unwrap();
    let mut config = host_config(key.clone(), relay.url());
    config.transport = transport;
    let first = HostAgent::start(config).expect("host agent starts");
    wait_for_state(&first, |s| *s == HostState::Registered).await;
    let carried = match transport {
        TransportPreference::Tcp => RelayTransport::Tcp,
        TransportPreference::WebSocket => RelayTransport::WebSocket,
        _ => RelayTransport::Quic,
    };
    assert_eq!(first.relay_transport(), Some(carried));

    let second = HostAgent::start(host_config(key, relay.url())).expect("host agent starts");
    wait_for_state(&second, |s| *s == HostState::Registered).await;
    let stopped = wait_for_state(&first, |s| matches!(s, HostState::Stopped { .. })).await;
    let HostState::Stopped { reason } = stopped else {
        unreachable!()
    };
    assert!(reason.contains("same host id"), "{reason}");

    // Sessions now reach the second host.
    let ticket = second.ticket().clone();
    let _echo = spawn_echo_host(second);
    let session = player()
        .connect(&ticket)
        .await
        .expect("session to the new host");
    let (mut read, mut write) = tokio::io::split(session);
    let (sent, echoed) = tokio::join!(
        write_pattern(&mut write, 9, 4096),
        read_pattern(&mut read, 9)
    );
    sent.unwrap();
    assert_eq!(echoed.unwrap(), 4096);
    let stats = relay.stats();
    assert_eq!(stats.registrations_replaced, 1);
    assert_eq!(stats.registered_hosts, 1);
}

mod the_newest_registration_wins_and_the_old_host_is_told {
    use blindrelay_client::TransportPreference;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn quic() {
        super::the_newest_registration_wins_and_the_old_host_is_told(TransportPreference::Quic)
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tcp() {
        super::the_newest_registration_wins_and_the_old_host_is_told(TransportPreference::Tcp)
            .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn websocket() {
        super::the_newest_registration_wins_and_the_old_host_is_told(
            TransportPreference::WebSocket,
        )
        .await;
    }
}

async fn a_host_comes_back_when_the_relay_restarts(transport: TransportPreference) {
    init_tracing();
    let config = relay_config();
    let relay = Relay::spawn(config.clone()).unwrap();
    let addr = relay.local_addr();
    let url = relay.url().clone();

    // Over TLS/TCP the relay closes the connection as shutting down: lost, not
    // replaced, so the host registers again.
    let mut host_config = host_config(SecretKey::generate().unwrap(), &url);
    host_config.transport = transport;
    let host = HostAgent::start(host_config).expect("host agent starts");
    wait_for_state(&host, |s| *s == HostState::Registered).await;
    let ticket = host.ticket().clone();
    let mut states = host.watch_state();
    let _echo = spawn_echo_host(host);
    let player = player();
    let session = player
        .connect(&ticket)
        .await
        .expect("session before the restart");
    drop(session);

    relay.shutdown().await;
    tokio::time::timeout(
        PATIENCE,
        states.wait_for(|s| matches!(s, HostState::Connecting { .. })),
    )
    .await
    .expect("host notices the relay is gone")
    .unwrap();

    // Same address, same certificate: the URL in the ticket stays valid.
    let relay = respawn_relay(&config, addr).await;
    assert_eq!(relay.url(), &url);
    tokio::time::timeout(PATIENCE, states.wait_for(|s| *s == HostState::Registered))
        .await
        .expect("host registers again by itself")
        .unwrap();

    // The same player object reconnects to the new relay on its own.
    let session = player
        .connect(&ticket)
        .await
        .expect("session after the restart");
    let (mut read, mut write) = tokio::io::split(session);
    let (sent, echoed) = tokio::join!(
        write_pattern(&mut write, 3, 100_000),
        read_pattern(&mut read, 3)
    );
    sent.unwrap();
    assert_eq!(echoed.unwrap(), 100_000);
    assert_eq!(relay.stats().registered_hosts, 1);
}

mod a_host_comes_back_when_the_relay_restarts {
    use blindrelay_client::TransportPreference;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn quic() {
        super::a_host_comes_back_when_the_relay_restarts(TransportPreference::Quic).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tcp() {
        super::a_host_comes_back_when_the_relay_restarts(TransportPreference::Tcp).await;
    }
}

/// One address holds at most `registrations.per_ip` registrations; another address
/// is not affected, and a registration that ends gives its place back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_only_its_share_of_registrations() {
    init_tracing();
    let mut config = relay_config();
    config.limits.registrations.per_ip = 2;
    let relay = Relay::spawn(config).unwrap();
    let register_from = |ip: [u8; 4]| {
        let url = relay.url().clone();
        async move {
            let connection = blindrelay_client::internal::connect_relay_raw_from(&url, ip.into())
                .await
                .unwrap();
            let key = SecretKey::generate().unwrap();
            let (verdict, send) =
                register_by_hand(&connection, key.host_id(), &key, &connection).await;
            (verdict, send, connection)
        }
    };
    let mut held = Vec::new();
    for _ in 0..2 {
        let (verdict, send, connection) = register_from([127, 0, 0, 1]).await;
        assert_eq!(verdict, ControlMessage::Registered);
        held.push((send, connection));
    }
    let (verdict, ..) = register_from([127, 0, 0, 1]).await;
    assert!(
        matches!(&verdict, ControlMessage::Error { code: ErrorCode::RateLimited, reason }
            if reason.contains("too many registrations")),
        "{verdict:?}"
    );
    let (verdict, ..) = register_from([127, 0, 0, 2]).await;
    assert_eq!(verdict, ControlMessage::Registered, "another address");
    // One ends: its place comes back.
    let (_, connection) = held.pop().unwrap();
    connection.close(0u32.into(), b"done");
    let again = tokio::time::timeout(PATIENCE, async {
        loop {
            let (verdict, send, connection) = register_from([127, 0, 0, 1]).await;
            if verdict == ControlMessage::Registered {
                break (send, connection);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(again.is_ok(), "the place came back");
}

/// A relay that never answers is given up on in seconds, not at the 30 s idle
/// timeout: the host's next attempt starts within a few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_gives_up_on_a_silent_relay_in_seconds_and_tries_again() {
    init_tracing();
    // A UDP socket that reads nothing, behind a URL with a pin nobody has.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let url: blindrelay_client::RelayUrl = format!(
        "blindrelay://{}?pin={}",
        silent.local_addr().unwrap(),
        "a".repeat(52)
    )
    .parse()
    .unwrap();
    let agent = HostAgent::start(host_config(SecretKey::generate().unwrap(), &url)).unwrap();
    let started = std::time::Instant::now();
    wait_for_state(
        &agent,
        |state| matches!(state, HostState::Connecting { attempt } if *attempt >= 2),
    )
    .await;
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_secs(10), "{took:?}");
    drop(silent);
}

/// A player whose relay restarted under it waits a few seconds for its host, and
/// when the host does not come back, says the relay restarted rather than only
/// "offline"; a host id that was never there is still plainly offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_tells_a_restarted_relay_from_an_offline_host() {
    init_tracing();
    let config = relay_config();
    let relay = Relay::spawn(config.clone()).expect("relay starts");
    let (addr, url) = (relay.local_addr(), relay.url().clone());
    let host = start_host(&url).await;
    let ticket = host.ticket().clone();
    let echo = spawn_echo_host(host);
    let player = player();
    drop(player.connect(&ticket).await.expect("a session before"));

    // The relay restarts; the host is gone for good.
    echo.abort();
    let _ = echo.await;
    relay.shutdown().await;
    let relay = respawn_relay(&config, addr).await;
    let started = tokio::time::Instant::now();
    let err = player
        .connect(&ticket)
        .await
        .expect_err("the host is not back");
    assert!(
        matches!(err, blindrelay_client::ConnectError::HostNotBack { .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("the connection to the relay was lost"),
        "{err}"
    );
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(4),
        "it waited for the host"
    );

    // On the same, live connection, an unknown host is plainly offline, at once.
    let stranger = blindrelay_protocol::Ticket::new(
        SecretKey::generate().unwrap().host_id(),
        url.clone(),
        vec![],
    )
    .expect("ticket");
    let started = tokio::time::Instant::now();
    let err = player.connect(&stranger).await.expect_err("offline");
    assert!(err.to_string().contains("host not reachable"), "{err}");
    assert!(!err.to_string().contains("restarted"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    drop(relay);
}

/// A host the relay refuses for a reason that passes (its address holds its share of
/// registrations) keeps trying, and registers once a place frees: only a refused
/// token makes a host wait for a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_refused_for_its_addresss_share_registers_once_a_place_frees() {
    init_tracing();
    let mut config = relay_config();
    config.limits.registrations.per_ip = 1;
    let relay = Relay::spawn(config).unwrap();
    let first = start_host(relay.url()).await;
    let second = HostAgent::start(host_config(SecretKey::generate().unwrap(), relay.url()))
        .expect("host agent starts");
    // Refused, and trying again: its state says it is connecting, attempt after
    // attempt, and never that a token was refused.
    let mut states = second.watch_state();
    let retried = tokio::time::timeout(
        PATIENCE,
        states.wait_for(|s| matches!(s, HostState::Connecting { attempt } if *attempt >= 3)),
    )
    .await
    .is_ok_and(|seen| seen.is_ok());
    assert!(
        retried,
        "the refused host did not try again: {:?}",
        second.state()
    );
    assert!(!matches!(second.state(), HostState::TokenRefused { .. }));
    assert_eq!(relay.stats().registered_hosts, 1);
    first.shutdown().await;
    wait_for_state(&second, |s| *s == HostState::Registered).await;
}
