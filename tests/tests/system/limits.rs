//! Limits, each pushed past: the session buffer budget, per-host and relay-wide caps,
//! per-address rates and counts, bandwidth caps, stalled readers, idle sessions and
//! connections, maximum duration and bytes, and shedding idle registrations. Every
//! test runs against a real relay on loopback; every wait is bounded.
//!
//! The limits on sessions and connections are the relay's, whatever carries them:
//! each such test is written once over the transports of its ends ([`Ends`]) and run
//! on QUIC, on TLS over TCP and on WebSocket, for the player and, where the test is
//! about the host's side, for the host (`limits::<test>::<case>`).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blindrelay_client::{
    BackoffConfig, ConnectError, HostAgent, HostState, Player, SecretKey, SecureStream,
    TransportPreference,
};
use blindrelay_protocol::{codes, ControlMessage, ErrorCode};
use blindrelay_relay::limits::Limits;
use blindrelay_relay::units::{ByteSize, Rate, Span};
use blindrelay_relay::Relay;
use blindrelay_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::raw_tls::RawConnection;

/// The transports a test's ends reach the relay over: the host's registration (and
/// the connections it dials for sessions), and the player's sessions.
#[derive(Debug, Clone, Copy)]
struct Ends {
    host: TransportPreference,
    player: TransportPreference,
}

/// Runs the limit test `$test`, an `async fn(Ends)`, once per case: each case names
/// the host's transport, then the player's. The tests land in a module named after
/// the function, so `limits::$test::$case` is each one's name.
macro_rules! over_transports {
    ($test:ident: $($case:ident = $host:ident / $player:ident),+ $(,)?) => {
        mod $test {
            use blindrelay_client::TransportPreference::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$test(super::Ends { host: $host, player: $player }).await;
                }
            )+
        }
    };
}

/// A relay with no limits but the ones `set` turns on.
fn relay_with(set: impl FnOnce(&mut Limits)) -> Relay {
    init_tracing();
    let mut config = relay_config();
    set(&mut config.limits);
    Relay::spawn(config).expect("relay starts")
}

fn secs(s: f64) -> Span {
    Span(Duration::from_secs_f64(s))
}

/// Waits until `check` holds on the relay's stats.
async fn wait_for_stats(
    relay: &Relay,
    what: &str,
    check: impl Fn(&blindrelay_relay::StatsSnapshot) -> bool,
) {
    let deadline = Instant::now() + PATIENCE;
    while !check(&relay.stats()) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {:?}",
            relay.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn refused_code(result: Result<SecureStream, ConnectError>) -> ErrorCode {
    match result {
        Err(ConnectError::Refused { code, .. }) => code,
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(_) => panic!("expected a refusal, got a session"),
    }
}

/// Reads until the stream fails, and returns the error's text.
async fn read_until_error(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> String {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(PATIENCE, stream.read(&mut buf)).await {
            Ok(Ok(0)) => panic!("the stream ended cleanly instead of failing"),
            Ok(Ok(_)) => continue,
            Ok(Err(err)) => return err.to_string(),
            Err(_) => panic!("the stream neither failed nor ended in time"),
        }
    }
}

/// Writes pattern bytes until the stream fails, and returns the error's text.
async fn write_until_error(stream: &mut (impl tokio::io::AsyncWrite + Unpin)) -> String {
    let buf = vec![7u8; 16 * 1024];
    loop {
        match tokio::time::timeout(PATIENCE, stream.write_all(&buf)).await {
            Ok(Ok(())) => continue,
            Ok(Err(err)) => return err.to_string(),
            Err(_) => panic!("the write neither went through nor failed in time"),
        }
    }
}

/// Echoes and checks `len` pattern bytes through `session`; returns the seconds taken.
async fn echo_round(session: SecureStream, seed: u64, len: u64) -> f64 {
    let start = Instant::now();
    let (mut read, mut write) = tokio::io::split(session);
    let writer = tokio::spawn(async move { write_pattern(&mut write, seed, len).await });
    let got = tokio::time::timeout(PATIENCE, read_pattern(&mut read, seed))
        .await
        .expect("echo in time")
        .expect("echo byte-exact");
    writer.await.unwrap().unwrap();
    assert_eq!(got, len);
    start.elapsed().as_secs_f64()
}

/// Echoes `len` pattern bytes through `session` and checks them, leaving the session
/// open; returns it and the seconds taken.
async fn echo_keep_open(session: SecureStream, seed: u64, len: usize) -> (SecureStream, f64) {
    let start = Instant::now();
    let (mut read, mut write) = tokio::io::split(session);
    const BLOCK: usize = 64 * 1024;
    let writing = async {
        let mut pattern = Pattern::new(seed);
        let mut buf = vec![0u8; BLOCK];
        for _ in 0..len / BLOCK {
            pattern.fill(&mut buf);
            write.write_all(&buf).await.unwrap();
        }
        write.flush().await.unwrap();
    };
    let reading = async {
        let mut pattern = Pattern::new(seed);
        let (mut expected, mut got) = (vec![0u8; BLOCK], vec![0u8; BLOCK]);
        for _ in 0..len / BLOCK {
            pattern.fill(&mut expected);
            read.read_exact(&mut got).await.unwrap();
            assert!(got == expected, "echo is byte-exact");
        }
    };
    tokio::time::timeout(PATIENCE, async { tokio::join!(writing, reading) })
        .await
        .expect("echo in time");
    (read.unsplit(write), start.elapsed().as_secs_f64())
}

over_transports!(the_session_past_the_buffer_budget_is_refused_while_the_others_keep_moving:
    quic = Quic / Quic,
    player_tcp = Quic / Tcp,
    player_websocket = Quic / WebSocket,
    host_tcp = Tcp / Tcp,
);
async fn the_session_past_the_buffer_budget_is_refused_while_the_others_keep_moving(ends: Ends) {
    const N: u64 = 4;
    let relay = relay_with(|limits| {
        limits.sessions.buffer_budget = ByteSize(N * limits.session_buffer());
    });
    let host = host_over(relay.url(), ends.host).await;
    let ticket = host.ticket().clone();
    let _echo = spawn_echo_host(host);
    let player = player_over(ends.player);

    let mut sessions = Vec::new();
    for _ in 0..N {
        sessions.push(player.connect(&ticket).await.expect("within the budget"));
    }
    let session_buffer = Limits::unlimited().session_buffer();
    assert_eq!(relay.stats().buffer_bytes_reserved, N * session_buffer);

    // One session alone sets the baseline speed ...
    let (busy, baseline) = echo_keep_open(sessions.pop().unwrap(), 1, 8 << 20).await;
    // ... then moves the same again while the N+1th is refused, over and over.
    let transfer = tokio::spawn(echo_keep_open(busy, 2, 8 << 20));
    let mut refused = 0;
    while !transfer.is_finished() {
        let code = refused_code(player.connect(&ticket).await);
        assert_eq!(code, ErrorCode::AtCapacity);
        refused += 1;
    }
    let (busy, during) = transfer.await.unwrap();
    assert!(refused >= 1, "the refusals ran while data moved");
    assert!(
        during < baseline * 4.0 + 1.0,
        "refusals slowed a running session: {during:.2} s against {baseline:.2} s alone"
    );
    // Every admitted session still moves data byte-exact.
    sessions.push(busy);
    for (i, session) in sessions.into_iter().enumerate() {
        echo_round(session, 10 + i as u64, 1 << 20).await;
    }
    let stats = relay.stats();
    assert_eq!(stats.sessions_refused_capacity, refused);
    assert_eq!(stats.sessions_refused, refused);
    // Ended sessions give their buffers back.
    wait_for_stats(&relay, "the budget to be free again", |s| {
        s.buffer_bytes_reserved == 0
    })
    .await;
    echo_round(player.connect(&ticket).await.unwrap(), 20, 1024).await;
}

over_transports!(the_session_cap_admits_max_and_not_one_more:
    quic = Quic / Quic,
    player_tcp = Quic / Tcp,
    player_websocket = Quic / WebSocket,
);
async fn the_session_cap_admits_max_and_not_one_more(ends: Ends) {
    let relay = relay_with(|limits| limits.sessions.max = 3);
    let host = host_over(relay.url(), ends.host).await;
    let ticket = host.ticket().clone();
    let _echo = spawn_echo_host(host);
    let player = player_over(ends.player);
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(player.connect(&ticket).await.expect("within the cap"));
    }
    assert_eq!(
        refused_code(player.connect(&ticket).await),
        ErrorCode::AtCapacity
    );
    drop(sessions.pop());
    wait_for_stats(&relay, "the dropped session to end", |s| {
        s.sessions_active == 2
    })
    .await;
    let again = player.connect(&ticket).await.expect("a place was freed");
    echo_round(again, 3, 64 * 1024).await;
}

over_transports!(a_host_with_its_maximum_sessions_is_busy_for_the_next_player:
    quic = Quic / Quic,
    player_tcp = Quic / Tcp,
    host_tcp = Tcp / Quic,
    host_websocket = WebSocket / WebSocket,
);
async fn a_host_with_its_maximum_sessions_is_busy_for_the_next_player(ends: Ends) {
    let relay = relay_with(|limits| limits.hosts.max_sessions = 2);
    let busy = host_over(relay.url(), ends.host).await;
    let busy_ticket = busy.ticket().clone();
    let _busy_echo = spawn_echo_host(busy);
    let other = host_over(relay.url(), ends.host).await;
    let other_ticket = other.ticket().clone();
    let _other_echo = spawn_echo_host(other);
    let player = player_over(ends.player);

    let first = player.connect(&busy_ticket).await.unwrap();
    let second = player.connect(&busy_ticket).await.unwrap();
    match player.connect(&busy_ticket).await {
        Err(ConnectError::Refused { code, reason }) => {
            assert_eq!(code, ErrorCode::HostBusy);
            assert!(reason.contains("sessions"), "{reason}");
        }
        other => panic!("expected HostBusy, got {other:?}"),
    }
    // The cap is per host: another host is not affected.
    echo_round(player.connect(&other_ticket).await.unwrap(), 1, 64 * 1024).await;
    echo_round(first, 2, 64 * 1024).await;
    wait_for_stats(&relay, "a session of the busy host to end", |s| {
        s.sessions_active == 1
    })
    .await;
    echo_round(player.connect(&busy_ticket).await.unwrap(), 3, 64 * 1024).await;
    drop(second);
    assert_eq!(relay.stats().sessions_refused_busy, 1);
}

/// Bytes per second a player receives from a host that writes as fast as it may,
/// measured over `window` after the burst has passed.
async fn measured_rate(session: SecureStream, host_side: SecureStream, window: Duration) -> f64 {
    let (_, mut host_write) = tokio::io::split(host_side);
    let writer = tokio::spawn(async move {
        let buf = vec![1u8; 16 * 1024];
        while host_write.write_all(&buf).await.is_ok() {}
    });
    let (mut read, _write) = tokio::io::split(session);
    let mut buf = vec![0u8; 64 * 1024];
    // Let the burst allowance drain first.
    let warmup = Instant::now() + Duration::from_millis(500);
    while Instant::now() < warmup {
        assert!(
            read.read(&mut buf).await.unwrap() > 0,
            "the host keeps sending"
        );
    }
    let start = Instant::now();
    let mut got = 0u64;
    while start.elapsed() < window {
        got += read.read(&mut buf).await.unwrap() as u64;
    }
    writer.abort();
    got as f64 / start.elapsed().as_secs_f64()
}

/// Accepts the next session on `host` (its agent) after `player` opened it.
async fn open_pair(
    player: &blindrelay_client::Player,
    host: &mut blindrelay_client::HostAgent,
) -> (SecureStream, SecureStream) {
    let ticket = host.ticket().clone();
    let (player_side, host_side) = tokio::join!(player.connect(&ticket), host.accept());
    (player_side.expect("session"), host_side.expect("accepted"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_session_moves_at_its_rate_and_does_not_slow_an_uncapped_one() {
    const RATE: u64 = 2_000_000;
    // Host A is in a "free" tier capped at 16 Mbit/s a session; host B in the default
    // tier, uncapped.
    let key_a = SecretKey::generate().unwrap();
    let relay = relay_with(|limits| {
        let free = limits.tiers.entry("free".to_owned()).or_default();
        free.session_rate = Some(Rate(RATE));
        // A burst that lets a session starved of CPU for a moment catch up, without
        // moving the average over the window by more than a few percent.
        free.session_burst = Some(ByteSize(256 * 1024));
        limits
            .host_tiers
            .insert(key_a.host_id().to_string(), "free".to_owned());
    });
    let mut host_a = HostAgent::start(host_config(key_a, relay.url())).expect("host agent starts");
    wait_for_state(&host_a, |state| *state == HostState::Registered).await;
    let mut host_b = start_host(relay.url()).await;
    let player = player();
    let window = Duration::from_secs(4);

    // B alone sets the baseline.
    let (b, b_host) = open_pair(&player, &mut host_b).await;
    assert_eq!(b.limits().rate, 0, "the default tier is uncapped here");
    let alone = measured_rate(b, b_host, window).await;

    let (a, a_host) = open_pair(&player, &mut host_a).await;
    assert_eq!(a.limits().rate, RATE, "the player is told the cap");
    assert_eq!(a_host.limits().rate, RATE, "the host is told the cap");
    let (b, b_host) = open_pair(&player, &mut host_b).await;
    let (rate_a, rate_b) = tokio::join!(
        measured_rate(a, a_host, window),
        measured_rate(b, b_host, window)
    );
    eprintln!("capped {rate_a:.0} B/s; uncapped {rate_b:.0} B/s beside it, {alone:.0} alone");
    let error = (rate_a - RATE as f64).abs() / RATE as f64;
    assert!(
        error < 0.10,
        "the capped session moved {rate_a:.0} B/s, cap {RATE}"
    );
    // Generous: the machine is shared, but a cap on A must not drag B towards it.
    assert!(
        rate_b > alone * 0.5 && rate_b > RATE as f64 * 5.0,
        "the uncapped session moved {rate_b:.0} B/s beside the capped one, {alone:.0} alone"
    );
}

over_transports!(a_host_cap_is_shared_by_all_its_sessions:
    quic = Quic / Quic,
    player_tcp = Quic / Tcp,
    host_tcp = Tcp / Tcp,
    websocket = WebSocket / WebSocket,
);
async fn a_host_cap_is_shared_by_all_its_sessions(ends: Ends) {
    const RATE: u64 = 2_000_000;
    let relay = relay_with(|limits| {
        limits.hosts.rate = Rate(RATE);
        limits.hosts.burst = ByteSize(256 * 1024);
    });
    let mut host = host_over(relay.url(), ends.host).await;
    let player = player_over(ends.player);
    let (a, a_host) = open_pair(&player, &mut host).await;
    let (b, b_host) = open_pair(&player, &mut host).await;
    assert_eq!(a.limits().host_rate, RATE);
    let window = Duration::from_secs(3);
    let (rate_a, rate_b) = tokio::join!(
        measured_rate(a, a_host, window),
        measured_rate(b, b_host, window)
    );
    let total = rate_a + rate_b;
    let error = (total - RATE as f64).abs() / RATE as f64;
    assert!(
        error < 0.10,
        "the host's sessions moved {total:.0} B/s together, cap {RATE}"
    );
    assert!(
        rate_a > RATE as f64 * 0.2 && rate_b > RATE as f64 * 0.2,
        "both sessions get a share: {rate_a:.0} / {rate_b:.0}"
    );
}

over_transports!(a_connection_flood_from_one_address_is_throttled_while_another_connects:
    quic = Quic / Quic,
    tcp = Quic / Tcp,
    websocket = Quic / WebSocket,
);
async fn a_connection_flood_from_one_address_is_throttled_while_another_connects(ends: Ends) {
    let relay = relay_with(|limits| {
        limits.connections.new_per_ip_per_s = 2;
        limits.connections.new_per_ip_burst = 5;
    });
    let flooder = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let neighbour = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
    let mut admitted = Vec::new();
    let mut refused = 0;
    for _ in 0..30 {
        match RawConnection::open_from(&relay, ends.player, flooder).await {
            Ok(connection) => admitted.push(connection),
            Err(_) => refused += 1,
        }
    }
    // The burst, plus what refilled while the flood ran.
    assert!(refused >= 15, "only {refused} of 30 refused");
    // Meanwhile another address connects and uses the relay normally.
    let host = start_host(relay.url()).await;
    let ticket = host.ticket().clone();
    let _echo = spawn_echo_host(host);
    for _ in 0..3 {
        let connection = RawConnection::open_from(&relay, ends.player, neighbour)
            .await
            .expect("another address is not throttled");
        connection.close();
    }
    let player = player_over(ends.player);
    echo_round(player.connect(&ticket).await.unwrap(), 1, 64 * 1024).await;
    assert_eq!(relay.stats().connections_rate_limited, refused);
    drop(admitted);
}

over_transports!(connections_per_address_stop_at_the_maximum:
    quic = Quic / Quic,
    tcp = Quic / Tcp,
    websocket = Quic / WebSocket,
);
async fn connections_per_address_stop_at_the_maximum(ends: Ends) {
    let relay = relay_with(|limits| limits.connections.per_ip = 3);
    let address = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 4));
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(
            RawConnection::open_from(&relay, ends.player, address)
                .await
                .expect("within the limit"),
        );
    }
    assert!(RawConnection::open_from(&relay, ends.player, address)
        .await
        .is_err());
    assert_eq!(relay.stats().connections_over_address_cap, 1);
    // Another address is not affected.
    let elsewhere = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 5));
    RawConnection::open_from(&relay, ends.player, elsewhere)
        .await
        .expect("another address")
        .close();
    // Closing one frees its place.
    open.pop().unwrap().close();
    wait_for_stats(&relay, "the closed connections to be released", |s| {
        s.connections_open == 2
    })
    .await;
    open.push(
        RawConnection::open_from(&relay, ends.player, address)
            .await
            .expect("a place was freed"),
    );
    assert_eq!(relay.stats().connections_over_address_cap, 1);
}

over_transports!(session_requests_from_one_address_are_rate_limited:
    quic = Quic / Quic,
    player_tcp = Quic / Tcp,
    player_websocket = Quic / WebSocket,
);
async fn session_requests_from_one_address_are_rate_limited(ends: Ends) {
    let relay = relay_with(|limits| {
        limits.sessions.new_per_ip_per_s = 1;
        limits.sessions.new_per_ip_burst = 3;
    });
    let host = host_over(relay.url(), ends.host).await;
    let ticket = host.ticket().clone();
    let _echo = spawn_echo_host(host);
    let player = player_over(ends.player);
    let mut sessions = Vec::new();
    let mut refused = 0;
    for _ in 0..10 {
        match player.connect(&ticket).await {
            Ok(session) => sessions.push(session),
            Err(err) => {
                assert_eq!(refused_code(Err(err)), ErrorCode::RateLimited);
                refused += 1;
            }
        }
    }
    assert!(
        (3..=5).contains(&sessions.len()),
        "{} admitted",
        sessions.len()
    );
    assert_eq!(relay.stats().sessions_refused_rate, refused);
}

over_transports!(sessions_from_one_address_stop_at_the_maximum:
    quic = Quic / Quic,
    player_tcp = Quic / Tcp,
    player_websocket = Quic / WebSocket,
    host_tcp = Tcp / Tcp,
);
async fn sessions_from_one_address_stop_at_the_maximum(ends: Ends) {
    let relay = relay_with(|limits| limits.sessions.per_ip = 2);
    let host = host_over(relay.url(), ends.host).await;
    let ticket = host.ticket().clone();
    let _echo = spawn_echo_host(host);
    let player = player_over(ends.player);
    let mut sessions = Vec::new();
    for _ in 0..2 {
        sessions.push(player.connect(&ticket).await.expect("within the cap"));
    }
    match player.connect(&ticket).await {
        Err(ConnectError::Refused { code, reason }) => {
            assert_eq!(code, ErrorCode::RateLimited);
            assert!(reason.contains("too many sessions"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A session that ends gives its place back; the ones held keep moving.
    drop(sessions.pop());
    wait_for_stats(&relay, "the dropped session to end", |s| {
        s.sessions_active == 1
    })
    .await;
    echo_round(
        player.connect(&ticket).await.expect("a place was freed"),
        1,
        64 * 1024,
    )
    .await;
    echo_round(sessions.pop().unwrap(), 2, 64 * 1024).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_connection_may_open_few_streams_and_a_player_connection_its_maximum() {
    // quinn keeps state for every stream a peer may open, from the start; a host only
    // ever needs its registration stream, so only players get `max_streams`.
    let relay = relay_with(|limits| limits.connections.max_streams = 32);
    let host = SecretKey::generate().unwrap();
    let host_connection = raw_connection(&relay).await;
    let (verdict, _registration) =
        register_by_hand(&host_connection, host.host_id(), &host, &host_connection).await;
    assert_eq!(verdict, ControlMessage::Registered);
    // Seven more fit beside the registration stream; the ninth waits for credit the
    // relay never gives a host.
    let mut held = Vec::new();
    for _ in 0..7 {
        let opened = tokio::time::timeout(PATIENCE, host_connection.open_bi()).await;
        held.push(opened.expect("within the initial count").expect("open"));
    }
    let ninth = tokio::time::timeout(Duration::from_millis(500), host_connection.open_bi()).await;
    assert!(ninth.is_err(), "a ninth stream on a host's connection");

    // A connection whose first stream asks for a session may then hold 32 at once.
    let player = raw_connection(&relay).await;
    let (mut send, mut recv) = player.open_bi().await.unwrap();
    let nobody = SecretKey::generate().unwrap().host_id();
    let mut connect = ControlMessage::connect(nobody).to_frame().to_vec();
    // The hello that follows every Connect (empty: the relay never reads inside it).
    connect.extend_from_slice(&[0, 0]);
    send.write_all(&connect).await.unwrap();
    let answer = tokio::time::timeout(PATIENCE, read_message(&mut recv)).await;
    assert!(
        matches!(
            answer,
            Ok(Some(ControlMessage::Error {
                code: ErrorCode::HostOffline,
                ..
            }))
        ),
        "{answer:?}"
    );
    held.push((send, recv));
    for i in 1..32 {
        let opened = tokio::time::timeout(PATIENCE, player.open_bi()).await;
        held.push(
            opened
                .unwrap_or_else(|_| panic!("stream {} of 32", i + 1))
                .expect("open"),
        );
    }
    let beyond = tokio::time::timeout(Duration::from_millis(500), player.open_bi()).await;
    assert!(beyond.is_err(), "a 33rd stream on a player's connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_registration_proofs_count_double() {
    let relay = relay_with(|limits| {
        limits.registrations.per_ip_per_s = 1;
        limits.registrations.per_ip_burst = 4;
    });
    let victim = SecretKey::generate().unwrap();
    let attacker = SecretKey::generate().unwrap();
    // Two failed guesses use up the whole burst of four.
    for _ in 0..2 {
        let connection = raw_connection(&relay).await;
        let (verdict, _) =
            register_by_hand(&connection, victim.host_id(), &attacker, &connection).await;
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
    }
    let connection = raw_connection(&relay).await;
    let register = ControlMessage::register(victim.host_id());
    let (verdict, _control, _) = register_with(&connection, register, &victim, &connection).await;
    assert!(
        matches!(
            verdict,
            ControlMessage::Error {
                code: ErrorCode::RateLimited,
                ..
            }
        ),
        "{verdict:?}"
    );
    assert_eq!(relay.stats().registrations_rate_limited, 1);
}

over_transports!(a_reader_that_stops_reading_is_cut_off_and_its_writer_told:
    quic = Quic / Quic,
    player_tcp = Quic / Tcp,
    player_websocket = Quic / WebSocket,
    host_tcp = Tcp / Quic,
    host_websocket = WebSocket / Quic,
);
async fn a_reader_that_stops_reading_is_cut_off_and_its_writer_told(ends: Ends) {
    let relay = relay_with(|limits| limits.sessions.stall_timeout = secs(1.0));
    let mut config = host_config(SecretKey::generate().unwrap(), relay.url());
    config.transport = ends.host;
    config.resume_window = Duration::from_secs(2);
    let mut host = HostAgent::start(config).expect("host starts");
    wait_for_state(&host, |state| *state == HostState::Registered).await;
    // A player whose replay window (what it sends unacknowledged) is larger than
    // what the path to a host that never reads can buffer: with a smaller one
    // (the default 4 MiB against a TCP host's socket buffers) the player stops by
    // itself and the relay never holds a byte to stall on (PROTOCOL.md 10.8).
    let mut player_config = blindrelay_tests::player_config(SecretKey::generate().unwrap());
    player_config.transport = ends.player;
    player_config.replay_window = blindrelay_protocol::resume::MAX_REPLAY_WINDOW;
    let player = Player::new(player_config);
    let (mut session, host_side) = open_pair(&player, &mut host).await;
    assert_eq!(session.limits().stall_timeout_secs, 1);
    // The host never reads; the player writes until the relay cuts the session.
    let start = Instant::now();
    let error = write_until_error(&mut session).await;
    assert!(error.contains("stall"), "the player is told why: {error}");
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "not before the stall timeout"
    );
    let (mut host_read, _host_write) = tokio::io::split(host_side);
    let host_error = read_until_error(&mut host_read).await;
    // A host on a stream transport reads the code unless the relay's close of the
    // session's connection overtakes it (a TCP reset drops what was not read yet):
    // then it is told the session could not go on, once its resume window is over.
    let told = host_error.contains("stall")
        || (ends.host != TransportPreference::Quic
            && host_error.contains("could not be reached again within 2s"));
    assert!(told, "the host is told why: {host_error}");
    wait_for_stats(&relay, "the stalled count", |s| {
        s.sessions_ended_stalled == 1
    })
    .await;
    // The relay is fine for everyone else.
    let (fresh, fresh_host) = open_pair(&player, &mut host).await;
    tokio::spawn(echo(fresh_host));
    echo_round(fresh, 1, 1 << 20).await;
}

over_transports!(a_session_moves_at_most_its_maximum_bytes_and_not_one_more:
    quic = Quic / Quic,
    player_tcp = Quic / Tcp,
    player_websocket = Quic / WebSocket,
    host_tcp = Tcp / Tcp,
);
async fn a_session_moves_at_most_its_maximum_bytes_and_not_one_more(ends: Ends) {
    const MAX: u64 = 1 << 20;
    let relay = relay_with(|limits| limits.sessions.max_bytes = ByteSize(MAX));
    let mut config = host_config(SecretKey::generate().unwrap(), relay.url());
    config.transport = ends.host;
    config.resume_window = Duration::from_secs(2);
    let mut host = HostAgent::start(config).expect("host starts");
    wait_for_state(&host, |state| *state == HostState::Registered).await;
    let player = player_over(ends.player);
    let (session, host_side) = open_pair(&player, &mut host).await;
    assert_eq!(session.limits().max_bytes, MAX);
    let (_, mut write) = tokio::io::split(session);
    let writer = tokio::spawn(async move { write_until_error(&mut write).await });
    let (mut host_read, _host_write) = tokio::io::split(host_side);
    let host_error = read_until_error(&mut host_read).await;
    // As in the stall test above: on a stream transport the relay's close of the
    // session's connection can overtake the code (a TCP reset drops what was not
    // read yet), and the host is then told once its resume window is over.
    let told = host_error.contains("maximum bytes")
        || (ends.host != TransportPreference::Quic
            && host_error.contains("could not be reached again within 2s"));
    assert!(told, "{host_error}");
    let player_error = tokio::time::timeout(PATIENCE, writer)
        .await
        .unwrap()
        .unwrap();
    assert!(player_error.contains("maximum bytes"), "{player_error}");
    wait_for_stats(&relay, "the byte-limit count", |s| {
        s.sessions_ended_bytes == 1
    })
    .await;
    // Counted in ciphertext, handshake included: exactly the maximum went through.
    assert_eq!(relay.stats().bytes_player_to_host, MAX);
}

/// Reads raw bytes until the stream ends; returns them and how it ended.
async fn read_raw(recv: &mut quinn::RecvStream) -> (Vec<u8>, Option<quinn::ReadError>) {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let ended = tokio::time::timeout(PATIENCE, async {
        loop {
            match recv.read(&mut buf).await {
                Ok(Some(n)) => got.extend_from_slice(&buf[..n]),
                Ok(None) => break None,
                Err(err) => break Some(err),
            }
        }
    })
    .await
    .expect("the stream ends in time");
    (got, ended)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_byte_limit_counts_what_follows_the_control_messages_and_delivers_at_most_that() {
    // The figure of the report this test answers: a hello and 1019-byte frames.
    const MAX: u64 = 51_000;
    let relay = relay_with(|limits| limits.sessions.max_bytes = ByteSize(MAX));
    let host_key = SecretKey::generate().unwrap();
    let host_id = host_key.host_id();
    let host = raw_connection(&relay).await;
    let (verdict, _registration) = register_by_hand(&host, host_id, &host_key, &host).await;
    assert_eq!(verdict, ControlMessage::Registered);
    let player = raw_connection(&relay).await;
    let connect = ControlMessage::connect(host_id).to_frame();

    // Under the limit: `Connect`, `Incoming` and `Connected` are not counted; every
    // byte after them is, the hello included, and all of it arrives.
    let (mut player_send, mut player_recv) = player.open_bi().await.unwrap();
    // A hello of the reference player's 98 bytes: its 2-byte length, then 96 bytes.
    let mut hello = vec![1u8; 98];
    hello[..2].copy_from_slice(&96u16.to_be_bytes());
    let mut sent = connect.to_vec();
    sent.extend_from_slice(&hello);
    player_send.write_all(&sent).await.unwrap();
    player_send.finish().unwrap();
    let (mut host_send, mut host_recv) = host.accept_bi().await.unwrap();
    assert!(matches!(
        read_message(&mut host_recv).await,
        Some(ControlMessage::Incoming { .. })
    ));
    assert_eq!(read_raw(&mut host_recv).await, (hello.clone(), None));
    host_send.write_all(&[2u8; 70]).await.unwrap();
    host_send.finish().unwrap();
    assert!(matches!(
        read_message(&mut player_recv).await,
        Some(ControlMessage::Connected { .. })
    ));
    assert_eq!(read_raw(&mut player_recv).await, (vec![2u8; 70], None));
    wait_for_stats(&relay, "the bytes of the first session", |s| {
        s.bytes_player_to_host == 98 && s.bytes_host_to_player == 70
    })
    .await;

    // Past the limit: a hello and 1000-byte data frames, 20 frames more than fit.
    let (mut player_send, mut player_recv) = player.open_bi().await.unwrap();
    let mut payload = vec![0u8; 98 + 70 * 1019];
    Pattern::new(14).fill(&mut payload);
    let mut sent = connect.to_vec();
    sent.extend_from_slice(&payload);
    // The relay stops this stream at the limit, so the write may fail.
    let _ = player_send.write_all(&sent).await;
    let (_host_send, mut host_recv) = host.accept_bi().await.unwrap();
    let (got, ended) = read_raw(&mut host_recv).await;
    let byte_limit = quinn::VarInt::from(codes::stream::BYTE_LIMIT);
    assert_eq!(ended, Some(quinn::ReadError::Reset(byte_limit)));
    // At most the limit arrives, and only the first bytes: the reset that follows
    // them lets QUIC discard what the host had not read yet, even `Incoming`.
    const INCOMING: usize = 48;
    if got.len() >= INCOMING {
        let mut frame = bytes::BytesMut::from(&got[..INCOMING]);
        assert!(matches!(
            ControlMessage::decode_frame(&mut frame),
            Ok(Some(ControlMessage::Incoming { .. }))
        ));
    }
    let got = got.get(INCOMING..).unwrap_or_default();
    assert!(got.len() as u64 <= MAX, "{} bytes arrived", got.len());
    assert_eq!(got, &payload[..got.len()]);
    // The relay handed over exactly the limit, counted from the hello.
    wait_for_stats(&relay, "the byte-limit count", |s| {
        s.sessions_ended_bytes == 1
    })
    .await;
    assert_eq!(relay.stats().bytes_player_to_host, 98 + MAX);
    // Both ends hear why, whichever way they look.
    let stopped = tokio::time::timeout(PATIENCE, player_send.stopped()).await;
    assert_eq!(stopped.expect("stopped in time"), Ok(Some(byte_limit)));
    let (_, ended) = read_raw(&mut player_recv).await;
    assert_eq!(ended, Some(quinn::ReadError::Reset(byte_limit)));
}

over_transports!(a_session_ends_at_its_maximum_duration:
    quic = Quic / Quic,
    player_tcp = Quic / Tcp,
    player_websocket = Quic / WebSocket,
    host_tcp = Tcp / Quic,
);
async fn a_session_ends_at_its_maximum_duration(ends: Ends) {
    let relay = relay_with(|limits| limits.sessions.max_duration = secs(1.0));
    let host = host_over(relay.url(), ends.host).await;
    let ticket = host.ticket().clone();
    let _echo = spawn_echo_host(host);
    let mut session = player_over(ends.player).connect(&ticket).await.unwrap();
    assert_eq!(session.limits().max_duration_secs, 1);
    let start = Instant::now();
    session.write_all(b"hello").await.unwrap();
    session.flush().await.unwrap();
    let error = read_until_error(&mut session).await;
    assert!(error.contains("maximum duration"), "{error}");
    assert!(start.elapsed() >= Duration::from_millis(900));
    wait_for_stats(&relay, "the duration count", |s| {
        s.sessions_ended_duration == 1
    })
    .await;
}

over_transports!(an_idle_session_ends_but_a_busy_one_does_not:
    quic = Quic / Quic,
    player_tcp = Quic / Tcp,
    player_websocket = Quic / WebSocket,
    host_tcp = Tcp / Quic,
);
async fn an_idle_session_ends_but_a_busy_one_does_not(ends: Ends) {
    let idle = Duration::from_millis(600);
    let relay = relay_with(|limits| limits.sessions.idle_timeout = Span(idle));
    let host = host_over(relay.url(), ends.host).await;
    let ticket = host.ticket().clone();
    let _echo = spawn_echo_host(host);
    let session = player_over(ends.player).connect(&ticket).await.unwrap();
    let (mut read, mut write) = tokio::io::split(session);
    // Traffic every 200 ms for three idle timeouts keeps the session alive.
    let mut buf = [0u8; 4];
    let busy_until = Instant::now() + idle * 3;
    while Instant::now() < busy_until {
        write.write_all(b"ping").await.unwrap();
        write.flush().await.unwrap();
        read.read_exact(&mut buf).await.expect("alive while busy");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Then silence ends it.
    let error = read_until_error(&mut read).await;
    assert!(error.contains("idle"), "{error}");
    wait_for_stats(&relay, "the idle count", |s| s.sessions_ended_idle == 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_with_neither_registration_nor_session_is_closed_when_idle() {
    let relay = relay_with(|limits| limits.connections.unregistered_idle_timeout = secs(0.5));
    let host = start_host(relay.url()).await;
    let ticket = host.ticket().clone();
    let _echo = spawn_echo_host(host);

    let idle = raw_connection(&relay).await;
    let reason = tokio::time::timeout(PATIENCE, idle.closed())
        .await
        .expect("closed in time");
    match reason {
        quinn::ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, codes::close::IDLE.into())
        }
        other => panic!("expected an idle close, got {other}"),
    }
    // A player's connection goes the same way once its sessions end, and the next
    // connect opens a new one by itself.
    let player = player();
    echo_round(player.connect(&ticket).await.unwrap(), 1, 1024).await;
    wait_for_stats(&relay, "two idle connections closed", |s| {
        s.connections_idle_closed >= 2
    })
    .await;
    echo_round(player.connect(&ticket).await.unwrap(), 2, 1024).await;
    // The registered host outlived several idle timeouts.
    assert_eq!(relay.stats().registered_hosts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_a_new_host_sheds_an_idle_one_and_a_bare_connection_nobody() {
    let relay = relay_with(|limits| {
        limits.connections.max = 3;
        limits.connections.max_handshakes = 2;
        limits.connections.first_message_timeout = secs(1.0);
    });
    // A host with a running session (two connections: host and player) ...
    let mut active = start_host(relay.url()).await;
    let player = player();
    let (session, host_side) = open_pair(&player, &mut active).await;
    tokio::spawn(echo(host_side));
    // ... and an idle host that would come back only much later: the relay is full.
    let mut slow = host_config(SecretKey::generate().unwrap(), relay.url());
    slow.backoff = BackoffConfig {
        initial: Duration::from_secs(60),
        max: Duration::from_secs(60),
    };
    let idle = HostAgent::start(slow).expect("the host starts");
    wait_for_state(&idle, |state| *state == HostState::Registered).await;
    assert_eq!(relay.stats().connections_open, 3);

    // A connection beyond the cap that proves nothing sheds nobody: its session is
    // refused, and it is closed when its time to register is up.
    let bare = raw_connection(&relay).await;
    let mut connect = ControlMessage::connect(*idle.ticket().host_id())
        .to_frame()
        .to_vec();
    connect.extend_from_slice(&[0, 0]);
    match raw_exchange(&bare, &connect, false).await {
        Some(ControlMessage::Error { code, .. }) => assert_eq!(code, ErrorCode::AtCapacity),
        other => panic!("expected AtCapacity, got {other:?}"),
    }
    let closed = tokio::time::timeout(PATIENCE, bare.closed()).await.unwrap();
    assert!(
        matches!(&closed, quinn::ConnectionError::ApplicationClosed(close)
            if close.error_code == codes::close::AT_CAPACITY.into()),
        "{closed}"
    );
    assert_eq!(relay.stats().connections_shed, 0);
    assert_eq!(idle.state(), HostState::Registered);

    // A host that proves its key takes the idle host's place.
    let newcomer = start_host(relay.url()).await;
    assert_eq!(relay.stats().connections_shed, 1);
    // The idle host is gone from the relay (it comes back only after its back-off).
    wait_for_stats(&relay, "the idle host shed", |s| s.registered_hosts == 2).await;
    // The running session never noticed.
    echo_round(session, 1, 4 << 20).await;
    assert_eq!(relay.stats().connections_shed, 1);
    assert_eq!(newcomer.state(), HostState::Registered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_ends_are_told_the_limits_of_their_session() {
    let relay = relay_with(|limits| {
        limits.sessions.rate = Rate(5_000_000);
        limits.hosts.rate = Rate(10_000_000);
        limits.sessions.max_bytes = ByteSize(1 << 30);
        limits.sessions.max_duration = secs(3600.0);
        limits.sessions.idle_timeout = secs(600.0);
        limits.sessions.stall_timeout = secs(120.0);
    });
    let mut host = start_host(relay.url()).await;
    let (player_side, host_side) = open_pair(&player(), &mut host).await;
    let expected = blindrelay_client::SessionLimits {
        rate: 5_000_000,
        host_rate: 10_000_000,
        max_bytes: 1 << 30,
        max_duration_secs: 3600,
        idle_timeout_secs: 600,
        stall_timeout_secs: 120,
    };
    assert_eq!(*player_side.limits(), expected);
    assert_eq!(*host_side.limits(), expected);
    assert_eq!(
        player_side.limits().to_string(),
        "40.0 Mbit/s, 1073741824 bytes each way, 3600 s long, 600 s idle, 120 s stalled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_pushing_gigabytes_at_a_host_that_barely_reads_do_not_grow_the_relay() {
    const SESSIONS: u64 = 16;
    const WINDOW: u64 = 64 * 1024;
    const SEND_WINDOW: u64 = 256 * 1024;
    const PUSH: u64 = 2 << 30;
    let bin = blindrelay_tests::process::binaries();
    let relay = blindrelay_tests::process::Proc::start(
        &bin.join("blindrelayd"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--sessions-window",
            "64KiB",
            "--connections-send-window",
            "256KiB",
            "--sessions-stall-timeout",
            "0",
            "--sessions-idle-timeout",
            "0",
            "--sessions-rate",
            "0",
            "--sessions-new-per-ip-per-s",
            "0",
        ],
    );
    let url: blindrelay_client::RelayUrl = relay.value("relay url").parse().unwrap();
    let mut host = start_host(&url).await;
    let player = player();
    let mut pairs = Vec::new();
    for _ in 0..SESSIONS {
        pairs.push(open_pair(&player, &mut host).await);
    }
    let before = process::rss_bytes(relay.pid());

    // Every host side reads one byte a second; every player pushes 2 GiB.
    let pushed = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for (player_side, host_side) in pairs {
        tasks.spawn(async move {
            let mut host_side = host_side;
            let mut byte = [0u8; 1];
            loop {
                if host_side.read(&mut byte).await.unwrap_or(0) == 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let pushed = pushed.clone();
        tasks.spawn(async move {
            let (_, mut write) = tokio::io::split(player_side);
            let buf = vec![3u8; 64 * 1024];
            let mut left = PUSH;
            while left > 0 {
                if write.write_all(&buf).await.is_err() {
                    return;
                }
                pushed.fetch_add(buf.len() as u64, Ordering::Relaxed);
                left -= buf.len() as u64;
            }
        });
    }

    // Watch until the push has stalled against backpressure for two seconds.
    let deadline = Instant::now() + PATIENCE;
    let mut peak = before;
    let mut last = (0, Instant::now());
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(process::rss_bytes(relay.pid()));
        let now = pushed.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(2) {
            break;
        }
    }
    let accepted = pushed.load(Ordering::Relaxed);
    tasks.shutdown().await;

    // Backpressure reached the players: they got rid of a tiny part of the push.
    assert!(
        accepted < SESSIONS * (32 << 20),
        "players wrote {accepted} bytes: no backpressure"
    );
    // The relay held at most its configured buffers: each session's window and one
    // chunk in hand, and the host connection's send window; plus a fixed overhead
    // for allocator slack and packet buffers.
    let bound = SESSIONS * (WINDOW + 16 * 1024) + SEND_WINDOW;
    let overhead = 8 << 20;
    let growth = peak.saturating_sub(before);
    eprintln!("players wrote {accepted} bytes; relay grew by {growth} bytes (bound {bound})");
    assert!(
        growth <= bound + overhead,
        "relay grew by {growth} bytes, bound {bound} + overhead {overhead}"
    );
}

/// `--workers N` (or `BLINDRELAY_WORKERS`, or `workers` in the file) is how many
/// threads the relay runs on, as its runtime counts them at start; without it, the
/// cores the process may use.
#[test]
fn the_relay_runs_on_as_many_threads_as_workers_says() {
    use blindrelay_tests::process::Proc;
    let bin = blindrelay_tests::process::binaries();
    let dir = std::env::temp_dir().join(format!("blindrelay-workers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("relay.toml");
    std::fs::write(&file, "workers = 5\n").unwrap();
    let file = file.to_str().unwrap();
    let listen = ["--listen", "127.0.0.1:0"];
    // The arguments, the environment, and the threads they make.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], usize);
    let cases: [Case; 3] = [
        (&["--workers", "3"], &[], 3),
        (&[], &[("BLINDRELAY_WORKERS", "1")], 1),
        (&["--config", file], &[], 5),
    ];
    for (args, env, expected) in cases {
        let args: Vec<&str> = listen.iter().chain(args).copied().collect();
        let relay = Proc::start_with_env(&bin.join("blindrelayd"), &args, env);
        let line = relay.wait_log("relay threads");
        assert!(
            line.contains(&format!("workers={expected}")),
            "{args:?} {env:?}: {line}"
        );
        relay.interrupt();
    }
    let cores = std::thread::available_parallelism().unwrap().get();
    let check = std::process::Command::new(bin.join("blindrelayd"))
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(check.status.success());
    let printed = String::from_utf8(check.stdout).unwrap();
    assert!(
        printed.contains(&format!("workers = {cores}\n")),
        "{printed}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_file_and_flags_set_the_limits_and_unknown_keys_are_named() {
    let bin = blindrelay_tests::process::binaries();
    let dir = std::env::temp_dir().join(format!("blindrelay-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("relay.toml");
    std::fs::write(
        &file,
        "[sessions]\nrate = \"2Mbit\"\nmax = 7\n[hosts]\nmax_sessions = 3\n",
    )
    .unwrap();
    let check = std::process::Command::new(bin.join("blindrelayd"))
        .args([
            "--config",
            file.to_str().unwrap(),
            "--hosts-max-sessions",
            "5",
            "--check-config",
        ])
        .output()
        .unwrap();
    assert!(check.status.success());
    let printed = String::from_utf8(check.stdout).unwrap();
    assert!(printed.contains("rate = \"2Mbit\""), "{printed}");
    assert!(printed.contains("max = 7"), "{printed}");
    assert!(
        printed.contains("max_sessions = 5"),
        "the flag wins: {printed}"
    );

    // Every key is an environment variable too.
    let check = std::process::Command::new(bin.join("blindrelayd"))
        .args(["--config", file.to_str().unwrap(), "--check-config"])
        .env("BLINDRELAY_SESSIONS_RATE", "40Mbit")
        .env("BLINDRELAY_HOSTS_MAX_SESSIONS", "9")
        .output()
        .unwrap();
    assert!(check.status.success());
    let printed = String::from_utf8(check.stdout).unwrap();
    assert!(printed.contains("rate = \"40Mbit\""), "{printed}");
    assert!(printed.contains("max_sessions = 9"), "{printed}");

    std::fs::write(&file, "[sessions]\nrat = \"2Mbit\"\n").unwrap();
    let refused = std::process::Command::new(bin.join("blindrelayd"))
        .args(["--config", file.to_str().unwrap(), "--check-config"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8(refused.stderr).unwrap();
    assert!(stderr.contains("rat"), "the unknown key is named: {stderr}");

    let missing = std::process::Command::new(bin.join("blindrelayd"))
        .args(["--config", dir.join("nope.toml").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        !missing.status.success(),
        "a missing file is an error, not defaults"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A phone network's carrier-grade NAT: 80 people behind one address, each with a
/// session to the same host, which the per-address caps alone would refuse (16 per
/// address and host, 64 new connections in a burst). With the address's range in
/// `[shared_addresses]` they are all served, while one connection from the same
/// address still gets no more than `sessions.per_connection`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carrier_nat_range_serves_a_crowd_on_one_address_and_still_caps_each_connection() {
    const PEOPLE: usize = 80;
    const PER_CONNECTION: u32 = 8;
    init_tracing();
    let mut config = relay_config();
    config.limits = Limits::default();
    config.limits.sessions.per_connection = PER_CONNECTION;
    // A family's media server for the whole crowd.
    config.limits.hosts.max_sessions = 256;
    config.limits.shared_addresses.ranges = vec!["127.0.13.0/24".parse().unwrap()];
    let relay = Relay::spawn(config).unwrap();
    let host = start_host(relay.url()).await;
    let host_id = *host.host_id();
    let _echo = spawn_echo_host(host);
    let carrier = IpAddr::V4(Ipv4Addr::new(127, 0, 13, 1));
    let connect = |connection: quinn::Connection| async move {
        let (mut send, mut recv) = connection.open_bi().await.ok()?;
        let mut request = ControlMessage::connect(host_id).to_frame().to_vec();
        request.extend_from_slice(&crate::adversarial::hello_for(&host_id));
        send.write_all(&request).await.ok()?;
        let answer = tokio::time::timeout(PATIENCE, read_message(&mut recv))
            .await
            .ok()??;
        Some((answer, send, recv))
    };
    let mut people = Vec::new();
    for _ in 0..PEOPLE {
        let connection = blindrelay_client::internal::connect_relay_raw_from(relay.url(), carrier)
            .await
            .expect("a connection from the carrier's address");
        let (answer, send, recv) = connect(connection.clone()).await.expect("an answer");
        assert!(
            matches!(answer, ControlMessage::Connected { .. }),
            "person {} was refused: {answer:?}",
            people.len()
        );
        people.push((connection, send, recv));
    }
    // One connection from the same address: its sessions stop at its own cap.
    let greedy = blindrelay_client::internal::connect_relay_raw_from(relay.url(), carrier)
        .await
        .unwrap();
    let mut held = Vec::new();
    let mut refused = None;
    for _ in 0..PER_CONNECTION + 1 {
        let (answer, send, recv) = connect(greedy.clone()).await.expect("an answer");
        match answer {
            ControlMessage::Connected { .. } => held.push((send, recv)),
            other => {
                refused = Some(other);
                break;
            }
        }
    }
    assert_eq!(held.len(), PER_CONNECTION as usize);
    assert!(
        matches!(
            refused,
            Some(ControlMessage::Error { code: ErrorCode::RateLimited, ref reason })
                if reason.contains("this connection")
        ),
        "{refused:?}"
    );
    // Outside the range the address caps hold as ever: the 17th session of one
    // address to one host is refused.
    let outside = IpAddr::V4(Ipv4Addr::new(127, 0, 14, 1));
    let mut outside_held = Vec::new();
    let mut outside_refused = false;
    for _ in 0..17 {
        let connection = blindrelay_client::internal::connect_relay_raw_from(relay.url(), outside)
            .await
            .unwrap();
        match connect(connection.clone()).await.expect("an answer") {
            (ControlMessage::Connected { .. }, send, recv) => {
                outside_held.push((connection, send, recv))
            }
            _ => outside_refused = true,
        }
    }
    assert_eq!(outside_held.len(), 16);
    assert!(outside_refused);
}
