//! The direct path and Enable Relay: a host reachable without a relay, players that
//! race direct against relayed and report which won, and a host that switches its
//! relay off and on while sessions run; and the one socket each of them connects from.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blindrelay_client::{
    ConnectError, HostAgent, HostConfig, HostState, PathPreference, Player, SecureStream,
    SessionPath, Ticket,
};
use blindrelay_protocol::{ErrorCode, SecretKey};
use blindrelay_relay::Relay;
use blindrelay_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LOOPBACK: &str = "127.0.0.1:0";

/// A player with its own key and the given race settings.
fn player_with(key: &SecretKey, relay_delay: Duration) -> Player {
    let mut config = blindrelay_tests::player_config(key.clone());
    config.relay_delay = relay_delay;
    config.resume_window = RESUME_WINDOW;
    Player::new(config)
}

/// How long these tests' players and hosts keep a session whose path went away.
const RESUME_WINDOW: Duration = Duration::from_secs(2);

/// A host with the relay enabled and a direct listener on loopback, registered.
async fn start_dual_host(relay: &Relay) -> HostAgent {
    let mut config = host_config(SecretKey::generate().unwrap(), relay.url())
        .with_direct(LOOPBACK.parse().unwrap());
    config.resume_window = RESUME_WINDOW;
    let agent = HostAgent::start(config).expect("host starts");
    wait_for_state(&agent, |state| *state == HostState::Registered).await;
    agent
}

/// Opens a session from `player` and accepts it on `host`.
async fn open(
    player: &Player,
    host: &mut HostAgent,
    ticket: &Ticket,
    preference: PathPreference,
) -> (SecureStream, SecureStream) {
    let (player_side, host_side) = tokio::time::timeout(PATIENCE, async {
        tokio::join!(player.connect_via(ticket, preference), host.accept())
    })
    .await
    .expect("session opens in time");
    (
        player_side.expect("player connects"),
        host_side.expect("host accepts"),
    )
}

/// One request and one answer across a session, both checked.
async fn round_trip(player_side: &mut SecureStream, host_side: &mut SecureStream) {
    player_side.write_all(b"GET /movie.mkv").await.unwrap();
    player_side.flush().await.unwrap();
    let mut request = [0u8; 14];
    host_side.read_exact(&mut request).await.unwrap();
    assert_eq!(&request, b"GET /movie.mkv");
    host_side.write_all(b"206 Partial").await.unwrap();
    host_side.flush().await.unwrap();
    let mut response = [0u8; 11];
    player_side.read_exact(&mut response).await.unwrap();
    assert_eq!(&response, b"206 Partial");
}

/// Polls `check` until it holds; for state that offers no channel to wait on (the
/// relay's counters, the runtime's task count).
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_session_works_with_no_relay_at_all() {
    init_tracing();
    let host_key = SecretKey::generate().unwrap();
    let mut host = HostAgent::start(HostConfig::direct_only(
        host_key.clone(),
        LOOPBACK.parse().unwrap(),
    ))
    .expect("host starts");
    assert_eq!(host.state(), HostState::Disabled);
    let ticket = host.ticket().clone();
    assert_eq!(ticket.relay(), None, "a direct-only ticket names no relay");
    assert_eq!(ticket.direct_addrs(), [host.direct_addr().unwrap()]);
    // The ticket survives its text form.
    let ticket: Ticket = ticket.to_string().parse().unwrap();

    let player_key = SecretKey::generate().unwrap();
    let player = player_with(&player_key, Duration::from_millis(250));
    let (mut player_side, mut host_side) =
        open(&player, &mut host, &ticket, PathPreference::Auto).await;
    assert_eq!(player_side.path(), SessionPath::Direct);
    assert_eq!(host_side.path(), SessionPath::Direct);
    assert_eq!(player_side.peer(), host_key.host_id().public_key());
    assert_eq!(*host_side.peer(), player_key.public_key());
    round_trip(&mut player_side, &mut host_side).await;

    // A megabyte each way, checked byte for byte, then a clean end.
    let (mut pr, mut pw) = tokio::io::split(player_side);
    let (mut hr, mut hw) = tokio::io::split(host_side);
    let (up, down, sent_up, sent_down) = tokio::join!(
        read_pattern(&mut hr, 1),
        read_pattern(&mut pr, 2),
        write_pattern(&mut pw, 1, 1 << 20),
        write_pattern(&mut hw, 2, 1 << 20),
    );
    sent_up.unwrap();
    sent_down.unwrap();
    assert_eq!(up.unwrap(), 1 << 20);
    assert_eq!(down.unwrap(), 1 << 20);

    // Without a relay there is nothing to fall back to or to force.
    let err = player
        .connect_via(&ticket, PathPreference::RelayOnly)
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::NoPath { .. }), "{err:?}");
    assert_eq!(host.stats().sessions_direct, 1);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_prefers_direct_and_reports_it() {
    let relay = start_relay();
    let mut host = start_dual_host(&relay).await;
    let ticket = host.ticket().clone();
    assert_eq!(ticket.relay(), Some(relay.url()));
    assert_eq!(ticket.direct_addrs().len(), 1);

    // A generous head start for direct, so a busy machine cannot make the relay win.
    let player = player_with(&SecretKey::generate().unwrap(), Duration::from_secs(5));
    let (mut player_side, mut host_side) =
        open(&player, &mut host, &ticket, PathPreference::Auto).await;
    assert_eq!(player_side.path(), SessionPath::Direct);
    assert_eq!(host_side.path(), SessionPath::Direct);
    assert_eq!(player_side.session_id(), 0);
    round_trip(&mut player_side, &mut host_side).await;
    assert_eq!(relay.stats().sessions_opened, 0, "the relay was not used");
    let stats = host.stats();
    assert_eq!((stats.sessions_direct, stats.sessions_relayed), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_paths_are_honoured_and_reported() {
    let relay = start_relay();
    let mut host = start_dual_host(&relay).await;
    let ticket = host.ticket().clone();
    let player = player_with(&SecretKey::generate().unwrap(), Duration::ZERO);

    let (mut player_side, mut host_side) =
        open(&player, &mut host, &ticket, PathPreference::RelayOnly).await;
    assert_eq!(player_side.path(), SessionPath::Relayed);
    assert_eq!(host_side.path(), SessionPath::Relayed);
    assert_ne!(player_side.session_id(), 0);
    assert_eq!(player_side.session_id(), host_side.session_id());
    round_trip(&mut player_side, &mut host_side).await;
    assert_eq!(relay.stats().sessions_opened, 1);

    let (mut player_side, mut host_side) =
        open(&player, &mut host, &ticket, PathPreference::DirectOnly).await;
    assert_eq!(player_side.path(), SessionPath::Direct);
    round_trip(&mut player_side, &mut host_side).await;
    assert_eq!(
        relay.stats().sessions_opened,
        1,
        "direct-only left the relay alone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_direct_address_falls_back_to_the_relay() {
    let relay = start_relay();
    let mut host = start_host(relay.url()).await;
    // A UDP port that is bound but never answers: packets vanish, as behind a
    // firewall that drops them.
    let black_hole = std::net::UdpSocket::bind(LOOPBACK).unwrap();
    let ticket = Ticket::new(
        *host.host_id(),
        relay.url().clone(),
        vec![black_hole.local_addr().unwrap()],
    )
    .unwrap();

    let mut config = blindrelay_tests::player_config(SecretKey::generate().unwrap());
    config.relay_delay = Duration::from_millis(100);
    config.direct_timeout = Duration::from_secs(60);
    config.connect_timeout = Duration::from_secs(120);
    let player = Player::new(config);
    let started = Instant::now();
    let (mut player_side, mut host_side) =
        open(&player, &mut host, &ticket, PathPreference::Auto).await;
    let took = started.elapsed();
    assert_eq!(player_side.path(), SessionPath::Relayed);
    assert!(
        took < Duration::from_secs(20),
        "fell back after the relay delay, not the direct timeout: {took:?}"
    );
    round_trip(&mut player_side, &mut host_side).await;

    // Forced direct to the same ticket fails, within its own timeout.
    let mut config = blindrelay_tests::player_config(SecretKey::generate().unwrap());
    config.direct_timeout = Duration::from_millis(500);
    let err = Player::new(config)
        .connect_via(&ticket, PathPreference::DirectOnly)
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::Direct { .. }), "{err:?}");
}

/// Echoes `session` until told to stop writing: `written` counts what the writer
/// has sent, `checked` what the reader has verified against the pattern.
struct Flow {
    stop: Arc<AtomicBool>,
    checked: Arc<AtomicU64>,
    writer: tokio::task::JoinHandle<u64>,
    reader: tokio::task::JoinHandle<std::io::Result<u64>>,
}

fn start_flow(session: SecureStream, seed: u64) -> Flow {
    let (mut reader, mut writer) = tokio::io::split(session);
    let stop = Arc::new(AtomicBool::new(false));
    let checked = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut pattern = Pattern::new(seed);
            let mut buf = vec![0u8; 16 * 1024];
            let mut written = 0u64;
            while !stop.load(Ordering::Relaxed) {
                pattern.fill(&mut buf);
                writer.write_all(&buf).await.unwrap();
                written += buf.len() as u64;
            }
            writer.shutdown().await.unwrap();
            written
        }
    });
    let reader = tokio::spawn({
        let checked = checked.clone();
        async move {
            let mut pattern = Pattern::new(seed);
            let mut expected = vec![0u8; 16 * 1024];
            let mut buf = vec![0u8; 16 * 1024];
            let mut total = 0u64;
            loop {
                // The writer's blocks are 16 KiB, so reading exactly one block at a
                // time lines the pattern up.
                let mut filled = 0;
                while filled < buf.len() {
                    let n = reader.read(&mut buf[filled..]).await?;
                    if n == 0 {
                        assert_eq!(filled, 0, "stream ended inside a block");
                        return Ok(total);
                    }
                    filled += n;
                }
                pattern.fill(&mut expected);
                assert!(buf == expected, "byte mismatch near offset {total}");
                total += buf.len() as u64;
                checked.store(total, Ordering::Relaxed);
            }
        }
    });
    Flow {
        stop,
        checked,
        writer,
        reader,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_the_relay_off_ends_relayed_sessions_only() {
    let relay = start_relay();
    let mut host = start_dual_host(&relay).await;
    let ticket = host.ticket().clone();
    let player = player_with(&SecretKey::generate().unwrap(), Duration::ZERO);

    let (mut relayed, mut host_relayed) =
        open(&player, &mut host, &ticket, PathPreference::RelayOnly).await;
    round_trip(&mut relayed, &mut host_relayed).await;
    let (direct, host_direct) = open(&player, &mut host, &ticket, PathPreference::DirectOnly).await;
    assert_eq!(direct.path(), SessionPath::Direct);
    let echo = tokio::spawn(echo(host_direct));
    let flow = start_flow(direct, 9);
    let checked = flow.checked.clone();
    eventually("data flowing on the direct session", || {
        checked.load(Ordering::Relaxed) >= 1 << 20
    })
    .await;

    // Enable Relay off.
    host.set_relay_enabled(false);
    assert!(!host.relay_enabled());
    wait_for_state(&host, |state| *state == HostState::Disabled).await;

    // The relayed session ends, on both sides, and the player is told why: a
    // relay-only player cannot resume it elsewhere, so once its resume window is
    // over (PROTOCOL.md 10.8).
    let mut buf = [0u8; 64];
    let err = tokio::time::timeout(PATIENCE, relayed.read(&mut buf))
        .await
        .expect("the relayed session ends, it does not hang")
        .expect_err("the relayed session ends with an error");
    let words = err.to_string();
    assert!(
        words.contains("could not be reached again within 2s"),
        "{words}"
    );
    assert!(words.contains("Enable Relay switched off"), "{words}");
    tokio::time::timeout(PATIENCE, host_relayed.read(&mut buf))
        .await
        .expect("the host's side of the relayed session ends too")
        .expect_err("with an error");

    // The relay forgets the host; a relay-only player is told promptly and clearly.
    eventually("the relay dropped the registration", || {
        relay.stats().registered_hosts == 0
    })
    .await;
    assert_eq!(host.stats().relay_connections, 0);
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        player.connect_via(&ticket, PathPreference::RelayOnly),
    )
    .await
    .expect("a refusal, not a hang")
    .unwrap_err();
    assert!(
        matches!(
            err,
            ConnectError::Refused {
                code: ErrorCode::HostOffline,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "host not reachable: relay disabled or host offline"
    );

    // Meanwhile the direct session kept moving, and still does.
    let before = checked.load(Ordering::Relaxed);
    eventually("the direct session still moving", || {
        checked.load(Ordering::Relaxed) >= before + (1 << 20)
    })
    .await;
    flow.stop.store(true, Ordering::Relaxed);
    let written = flow.writer.await.unwrap();
    let read = flow
        .reader
        .await
        .unwrap()
        .expect("byte-exact to a clean end");
    assert_eq!(read, written);
    echo.await.unwrap();

    // Enable Relay on again: registered again, relayed sessions work again.
    host.set_relay_enabled(true);
    wait_for_state(&host, |state| *state == HostState::Registered).await;
    eventually("registered at the relay again", || {
        relay.stats().registered_hosts == 1
    })
    .await;
    let (mut relayed, mut host_relayed) =
        open(&player, &mut host, &ticket, PathPreference::RelayOnly).await;
    assert_eq!(relayed.path(), SessionPath::Relayed);
    round_trip(&mut relayed, &mut host_relayed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipping_enable_relay_fast_leaks_nothing() {
    const FLIPS: u64 = 50;
    // The relay runs on a runtime of its own, so that the task count below is the
    // host's (and this test's) alone.
    let relay_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let relay = {
        let _relay_runtime = relay_runtime.enter();
        start_relay()
    };
    let mut host = start_dual_host(&relay).await;
    let ticket = host.ticket().clone();
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    eventually("registered at the relay", || {
        relay.stats().registered_hosts == 1
    })
    .await;
    let baseline = tasks();

    for flip in 0..FLIPS {
        host.set_relay_enabled(false);
        // Catch the agent at different points: registered, connecting, disabled, and
        // in between.
        if flip % 2 == 0 {
            wait_for_state(&host, |state| *state == HostState::Disabled).await;
        }
        host.set_relay_enabled(true);
        if flip % 5 == 0 {
            wait_for_state(&host, |state| *state == HostState::Registered).await;
        } else if flip % 3 == 0 {
            wait_for_state(&host, |state| *state != HostState::Disabled).await;
        }
    }
    wait_for_state(&host, |state| *state == HostState::Registered).await;
    eventually("exactly one registration at the relay", || {
        relay.stats().registered_hosts == 1
    })
    .await;
    let stats = host.stats();
    assert_eq!(stats.relay_connections, 1, "{stats:?}");
    assert!(stats.relay_connects <= FLIPS + 1, "{stats:?}");
    let accepted = relay.stats().connections_accepted;
    assert!(accepted <= FLIPS + 1, "relay saw {accepted} connections");
    // Closed connections drain and their tasks end; nothing is left behind.
    eventually("tasks back to where they were", || tasks() <= baseline + 2).await;

    // And the host still works both ways.
    let player = player_with(&SecretKey::generate().unwrap(), Duration::ZERO);
    for preference in [PathPreference::RelayOnly, PathPreference::DirectOnly] {
        let (mut player_side, mut host_side) = open(&player, &mut host, &ticket, preference).await;
        round_trip(&mut player_side, &mut host_side).await;
    }
    drop(relay);
    relay_runtime.shutdown_background();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_started_at_once_on_a_fresh_player_all_arrive_whole() {
    // Every session of a new player races to open the first direct connection; a
    // connection that lost the race must not take a session's last bytes with it
    // when the player drops the session right after sending them.
    const SESSIONS: u64 = 16;
    const LEN: u64 = 256 << 10;
    init_tracing();
    let mut host = HostAgent::start(HostConfig::direct_only(
        SecretKey::generate().unwrap(),
        LOOPBACK.parse().unwrap(),
    ))
    .expect("host starts");
    let ticket = host.ticket().clone();
    let receiver = tokio::spawn(async move {
        let mut reads = tokio::task::JoinSet::new();
        for _ in 0..SESSIONS {
            let mut session = host.accept().await.expect("a session");
            reads.spawn(async move {
                let mut seed = [0u8; 8];
                session.read_exact(&mut seed).await?;
                read_pattern(&mut session, u64::from_le_bytes(seed)).await
            });
        }
        let mut received = Vec::new();
        while let Some(read) = reads.join_next().await {
            received.push(read.unwrap());
        }
        received
    });
    let player = Arc::new(player_with(
        &SecretKey::generate().unwrap(),
        Duration::from_millis(250),
    ));
    let mut senders = tokio::task::JoinSet::new();
    for seed in 0..SESSIONS {
        let (player, ticket) = (player.clone(), ticket.clone());
        senders.spawn(async move {
            let mut session = player
                .connect_via(&ticket, PathPreference::DirectOnly)
                .await
                .expect("a direct session");
            session.write_all(&seed.to_le_bytes()).await.unwrap();
            write_pattern(&mut session, seed, LEN).await.unwrap();
            // Dropped at once: nothing waits for the host to read.
        });
    }
    while let Some(sent) = senders.join_next().await {
        sent.unwrap();
    }
    let received = tokio::time::timeout(PATIENCE, receiver)
        .await
        .expect("the host reads every session in time")
        .unwrap();
    for read in received {
        assert_eq!(read.expect("a whole session, byte-exact"), LEN);
    }
    drop(player);
}

/// As `sessions.rs` checks through the relay: a session dropped right after its last
/// write, with its `Player` or `HostAgent`, still delivers it, here on the direct path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_bytes_arrive_directly_when_the_writer_drops_everything_right_after_them() {
    const LEN: u64 = 8 << 20;
    let relay = start_relay();
    let mut host = start_dual_host(&relay).await;
    let ticket = host.ticket().clone();

    let player = player_with(&SecretKey::generate().unwrap(), Duration::from_secs(5));
    let (player_side, host_side) =
        open(&player, &mut host, &ticket, PathPreference::DirectOnly).await;
    assert_eq!(
        write_and_drop(player_side, host_side, player, 7, LEN).await,
        LEN
    );

    let player = player_with(&SecretKey::generate().unwrap(), Duration::from_secs(5));
    let (player_side, host_side) =
        open(&player, &mut host, &ticket, PathPreference::DirectOnly).await;
    assert_eq!(
        write_and_drop(host_side, player_side, host, 8, LEN).await,
        LEN
    );
}

/// A UDP socket on loopback that reads QUIC packets and never answers, and a relay
/// URL naming it.
fn silent_relay() -> (std::net::UdpSocket, blindrelay_client::RelayUrl) {
    let socket = std::net::UdpSocket::bind(LOOPBACK).unwrap();
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    let pin = blindrelay_protocol::CertPin::of_certificate(b"no certificate is ever shown");
    let url = blindrelay_client::RelayUrl::new(
        "127.0.0.1",
        socket.local_addr().unwrap().port(),
        Some(pin),
    )
    .unwrap();
    (socket, url)
}

/// Where the first packet to `socket` came from.
async fn first_sender(socket: std::net::UdpSocket) -> std::net::SocketAddr {
    tokio::task::spawn_blocking(move || {
        let mut buf = [0u8; 1500];
        socket.recv_from(&mut buf).expect("a packet arrives").1
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_reaches_its_relay_from_its_direct_listeners_socket() {
    init_tracing();
    let (socket, url) = silent_relay();
    let config =
        host_config(SecretKey::generate().unwrap(), &url).with_direct(LOOPBACK.parse().unwrap());
    let host = HostAgent::start(config).expect("host starts");
    // One socket for both paths: the NAT mapping players reach is the relay's too.
    assert_eq!(Some(first_sender(socket).await), host.direct_addr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_reaches_every_relay_from_one_socket() {
    init_tracing();
    let player = Arc::new(player());
    let mut senders = Vec::new();
    let mut attempts = tokio::task::JoinSet::new();
    for _ in 0..3 {
        let (socket, url) = silent_relay();
        let ticket =
            Ticket::new(SecretKey::generate().unwrap().host_id(), url, Vec::new()).unwrap();
        let player = player.clone();
        attempts.spawn(async move { player.connect(&ticket).await });
        senders.push(first_sender(socket).await);
    }
    attempts.abort_all();
    assert!(
        senders.iter().all(|sender| *sender == senders[0]),
        "{senders:?}"
    );
}
