//! The relay over TLS/TCP beside QUIC: every pair of transports (a host on one, its
//! player on the other) moves data byte-exact with the same ends and codes; a player
//! or host whose UDP does not get through falls back to TCP by itself; and a
//! stream-transport connection is held to the same deadlines as a QUIC one.

use std::time::Duration;

use blindrelay_client::{
    HostAgent, HostState, Player, RelayTransport, SecureStream, SessionPath, TransportPreference,
};
use blindrelay_protocol::{ControlMessage, ErrorCode, RelayUrl, SecretKey};
use blindrelay_relay::units::Span;
use blindrelay_relay::{Limits, Relay};
use blindrelay_tests::*;
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::raw_tls::tls_to;

/// Bytes each way in the pair tests: enough to cross many TLS records, frames and
/// splice chunks, and to fill every window on the way.
const BULK: u64 = 64 << 20;

fn relay_with(set: impl FnOnce(&mut Limits)) -> Relay {
    init_tracing();
    let mut config = relay_config();
    set(&mut config.limits);
    Relay::spawn(config).expect("relay starts")
}

fn carried_by(preference: TransportPreference) -> RelayTransport {
    match preference {
        TransportPreference::Tcp => RelayTransport::Tcp,
        TransportPreference::WebSocket => RelayTransport::WebSocket,
        _ => RelayTransport::Quic,
    }
}

async fn open(player: &Player, host: &mut HostAgent) -> (SecureStream, SecureStream) {
    let ticket = host.ticket().clone();
    let (player_side, host_side) = tokio::join!(player.connect(&ticket), host.accept());
    (
        player_side.expect("player connects"),
        host_side.expect("host accepts"),
    )
}

/// Moves `len` pattern bytes each way at once and checks them.
async fn both_ways(player_side: SecureStream, host_side: SecureStream, len: u64) {
    let (mut player_read, mut player_write) = tokio::io::split(player_side);
    let (mut host_read, mut host_write) = tokio::io::split(host_side);
    let (down, up, sent_down, sent_up) = tokio::time::timeout(Duration::from_secs(120), async {
        tokio::join!(
            read_pattern(&mut player_read, 1),
            read_pattern(&mut host_read, 2),
            write_pattern(&mut host_write, 1, len),
            write_pattern(&mut player_write, 2, len),
        )
    })
    .await
    .expect("both directions within two minutes");
    sent_down.expect("host writes");
    sent_up.expect("player writes");
    assert_eq!(down.expect("player reads a clean end"), len);
    assert_eq!(up.expect("host reads a clean end"), len);
}

/// A host on `host` and a player on `player`: one session, [`BULK`] bytes each way
/// at once, byte-exact, clean ends both ways, counted by transport.
async fn pair_moves_data(host: TransportPreference, player: TransportPreference) {
    let relay = start_relay();
    let mut agent = host_over(relay.url(), host).await;
    assert_eq!(agent.relay_transport(), Some(carried_by(host)));
    let (player_side, host_side) = open(&player_over(player), &mut agent).await;
    assert_eq!(player_side.path(), SessionPath::Relayed);
    assert_eq!(player_side.relay_transport(), Some(carried_by(player)));
    assert_eq!(host_side.relay_transport(), Some(carried_by(host)));
    assert_eq!(player_side.session_id(), host_side.session_id());
    assert_eq!(
        player_side.route(),
        format!("relayed/{}", carried_by(player))
    );
    both_ways(player_side, host_side, BULK).await;

    let stats = relay.stats();
    assert_eq!(stats.sessions_opened, 1);
    let on = |preference, transport| u64::from(carried_by(preference) == transport);
    assert_eq!(stats.sessions_player_tcp, on(player, RelayTransport::Tcp));
    assert_eq!(stats.sessions_host_tcp, on(host, RelayTransport::Tcp));
    assert_eq!(
        stats.sessions_player_ws,
        on(player, RelayTransport::WebSocket)
    );
    assert_eq!(stats.sessions_host_ws, on(host, RelayTransport::WebSocket));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_on_tcp_reaches_a_host_on_quic() {
    pair_moves_data(TransportPreference::Quic, TransportPreference::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_on_quic_reaches_a_host_on_tcp() {
    pair_moves_data(TransportPreference::Tcp, TransportPreference::Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_on_tcp_reaches_a_host_on_tcp() {
    pair_moves_data(TransportPreference::Tcp, TransportPreference::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_on_websocket_reaches_a_host_on_quic() {
    pair_moves_data(TransportPreference::Quic, TransportPreference::WebSocket).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_on_quic_reaches_a_host_on_websocket() {
    pair_moves_data(TransportPreference::WebSocket, TransportPreference::Quic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_on_websocket_reaches_a_host_on_tcp() {
    pair_moves_data(TransportPreference::Tcp, TransportPreference::WebSocket).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sessions_to_a_host_on_tcp_run_at_once() {
    let relay = start_relay();
    let agent = host_over(relay.url(), TransportPreference::Tcp).await;
    let ticket = agent.ticket().clone();
    let _echo = spawn_echo_host(agent);
    let player = std::sync::Arc::new(player_over(TransportPreference::Tcp));
    let mut sessions = tokio::task::JoinSet::new();
    for seed in 0..8u64 {
        let (player, ticket) = (player.clone(), ticket.clone());
        sessions.spawn(async move {
            let session = player.connect(&ticket).await.expect("session");
            let (mut read, mut write) = tokio::io::split(session);
            let writer =
                tokio::spawn(async move { write_pattern(&mut write, seed, 1 << 20).await });
            let got = read_pattern(&mut read, seed)
                .await
                .expect("echo byte-exact");
            writer.await.unwrap().unwrap();
            got
        });
    }
    while let Some(got) = sessions.join_next().await {
        assert_eq!(got.unwrap(), 1 << 20);
    }
    assert_eq!(relay.stats().sessions_host_tcp, 8);
}

/// Over TLS/TCP every session is two new connections (the player's, and the one
/// its host dials): after the first, both resume their TLS session (no certificate,
/// no signature), and a ticket never stands in for the pin: the same address under
/// another pin is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_after_the_first_resume_their_tls_session_and_keep_the_pin() {
    let relay = start_relay();
    let agent = host_over(relay.url(), TransportPreference::Tcp).await;
    let ticket = agent.ticket().clone();
    let _echo = spawn_echo_host(agent);
    let player = player_over(TransportPreference::Tcp);
    const SESSIONS: u64 = 4;
    for seed in 0..SESSIONS {
        let session = player.connect(&ticket).await.expect("session");
        let (mut read, mut write) = tokio::io::split(session);
        let writer = tokio::spawn(async move { write_pattern(&mut write, seed, 64 << 10).await });
        assert_eq!(read_pattern(&mut read, seed).await.expect("echo"), 64 << 10);
        writer.await.unwrap().unwrap();
    }
    let stats = relay.stats();
    assert_eq!(stats.sessions_host_tcp, SESSIONS);
    assert_eq!(stats.sessions_player_tcp, SESSIONS);
    // The registration's and the first player connection's handshakes may be full;
    // every session after the first opens two connections that resume.
    assert!(
        stats.tls_handshakes_resumed >= 2 * (SESSIONS - 1),
        "{} of {} TLS handshakes resumed",
        stats.tls_handshakes_resumed,
        stats.connections_accepted_tcp
    );

    let url = relay.url();
    let other_pin = blindrelay_protocol::CertPin::of_certificate(b"another relay's certificate");
    let elsewhere = RelayUrl::new(url.host(), url.port(), Some(other_pin)).unwrap();
    let refused =
        blindrelay_client::internal::connect_relay_tcp(&elsewhere, Default::default()).await;
    assert!(
        refused.is_err(),
        "a relay that does not hold the pinned certificate"
    );
}

/// Switching Enable Relay off ends the relayed sessions at once, whatever the
/// transport: over QUIC by closing the relay connection they run on, over TLS/TCP
/// by closing each session's own connection.
async fn a_host_that_switches_its_relay_off_ends_its_relayed_sessions(
    transport: TransportPreference,
) {
    let relay = start_relay();
    let mut host = host_over(relay.url(), transport).await;
    // A player that could resume the session only through the relay: it ends
    // once the player's resume window is over (PROTOCOL.md 10.8), told why.
    let mut config = blindrelay_tests::player_config(SecretKey::generate().unwrap());
    config.transport = TransportPreference::Quic;
    config.resume_window = Duration::from_secs(2);
    let player = Player::new(config);
    let (mut session, _host_side) = open(&player, &mut host).await;
    host.set_relay_enabled(false);
    wait_for_state(&host, |state| *state == HostState::Disabled).await;
    let mut buf = [0u8; 64];
    let err = tokio::time::timeout(PATIENCE, session.read(&mut buf))
        .await
        .expect("the session ends, it does not hang")
        .expect_err("the session ends with an error");
    let words = err.to_string();
    assert!(
        words.contains("could not be reached again within 2s"),
        "{words}"
    );
    assert!(words.contains("Enable Relay switched off"), "{words}");
    // And a new player is refused: the registration is gone.
    let ticket = host.ticket().clone();
    let refused = player.connect(&ticket).await.expect_err("refused");
    assert!(
        refused.to_string().contains("host not reachable"),
        "{refused}"
    );
}

mod a_host_that_switches_its_relay_off_ends_its_relayed_sessions {
    use blindrelay_client::TransportPreference;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn quic() {
        super::a_host_that_switches_its_relay_off_ends_its_relayed_sessions(
            TransportPreference::Quic,
        )
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tcp() {
        super::a_host_that_switches_its_relay_off_ends_its_relayed_sessions(
            TransportPreference::Tcp,
        )
        .await;
    }
}

/// A UDP socket and a TCP listener on one loopback port number, as a relay URL has
/// one port for both.
async fn one_port_for_udp_and_tcp() -> (tokio::net::UdpSocket, tokio::net::TcpListener) {
    loop {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = udp.local_addr().unwrap().port();
        if let Ok(tcp) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            return (udp, tcp);
        }
    }
}

/// A stand-in for a network that blocks UDP: a UDP socket that swallows every
/// datagram, and a TCP port that forwards to the relay's. A relay URL naming this
/// port (with the relay's pin) is reachable over TCP only.
struct UdpBlackhole {
    url: RelayUrl,
    _tasks: tokio::task::JoinSet<()>,
}

impl UdpBlackhole {
    async fn in_front_of(relay: &Relay) -> Self {
        let tcp_target = relay.tcp_addr().expect("the relay listens on TCP");
        let (udp, tcp) = one_port_for_udp_and_tcp().await;
        let port = udp.local_addr().unwrap().port();
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(async move {
            let mut buf = vec![0u8; 2048];
            while udp.recv_from(&mut buf).await.is_ok() {}
        });
        tasks.spawn(async move {
            let mut forwards = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = tcp.accept().await {
                forwards.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(tcp_target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        let relay_url = relay.url();
        let url = RelayUrl::new("127.0.0.1", port, relay_url.pin().copied()).expect("url");
        Self { url, _tasks: tasks }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_udp_is_blackholed_a_player_falls_back_to_tcp_at_once() {
    let relay = start_relay();
    let mut agent = start_host(relay.url()).await;
    let blocked = UdpBlackhole::in_front_of(&relay).await;
    let ticket = blindrelay_protocol::Ticket::new(*agent.host_id(), blocked.url.clone(), vec![])
        .expect("ticket");
    let player = player_over(TransportPreference::Auto);
    let started = Instant::now();
    let (player_side, host_side) = tokio::join!(player.connect(&ticket), agent.accept());
    let (player_side, host_side) = (player_side.expect("connects"), host_side.expect("accepts"));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the fallback takes {:?}",
        started.elapsed()
    );
    assert_eq!(player_side.relay_transport(), Some(RelayTransport::Tcp));
    assert_eq!(host_side.relay_transport(), Some(RelayTransport::Quic));
    both_ways(player_side, host_side, BULK).await;
    // The next session remembers: TCP at once, well under the QUIC handshake timeout.
    let started = Instant::now();
    let (again, host_again) = tokio::join!(player.connect(&ticket), agent.accept());
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        again.expect("again").relay_transport(),
        Some(RelayTransport::Tcp)
    );
    drop(host_again);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_udp_is_blackholed_a_host_registers_over_tcp_and_quic_players_reach_it() {
    let relay = start_relay();
    let blocked = UdpBlackhole::in_front_of(&relay).await;
    let started = Instant::now();
    let mut agent = host_over(&blocked.url, TransportPreference::Auto).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "registered in {:?}",
        started.elapsed()
    );
    assert_eq!(agent.relay_transport(), Some(RelayTransport::Tcp));
    // A player on an open network, through the relay's own URL, over QUIC.
    let ticket = blindrelay_protocol::Ticket::new(*agent.host_id(), relay.url().clone(), vec![])
        .expect("ticket");
    let player = player_over(TransportPreference::Auto);
    let (player_side, host_side) = tokio::join!(player.connect(&ticket), agent.accept());
    let (player_side, host_side) = (player_side.expect("connects"), host_side.expect("accepts"));
    assert_eq!(player_side.relay_transport(), Some(RelayTransport::Quic));
    assert_eq!(host_side.relay_transport(), Some(RelayTransport::Tcp));
    both_ways(player_side, host_side, 4 << 20).await;
}

/// In front of a relay, a UDP port that swallows every datagram until switched to
/// forward them to the relay (and its answers back), and a TCP port that forwards:
/// a network whose UDP comes back.
struct UdpComesBack {
    url: RelayUrl,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    _tasks: tokio::task::JoinSet<()>,
}

impl UdpComesBack {
    async fn in_front_of(relay: &Relay) -> Self {
        let (udp, tcp) = one_port_for_udp_and_tcp().await;
        let port = udp.local_addr().unwrap().port();
        let udp = std::sync::Arc::new(udp);
        let (udp_target, tcp_target) = (relay.local_addr(), relay.tcp_addr().unwrap());
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let upstream =
            std::sync::Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        upstream.connect(udp_target).await.unwrap();
        let client = std::sync::Arc::new(std::sync::Mutex::new(None));
        let mut tasks = tokio::task::JoinSet::new();
        {
            let (udp, upstream, open, client) =
                (udp.clone(), upstream.clone(), open.clone(), client.clone());
            tasks.spawn(async move {
                let mut buf = vec![0u8; 2048];
                while let Ok((n, from)) = udp.recv_from(&mut buf).await {
                    if open.load(std::sync::atomic::Ordering::Acquire) {
                        *client.lock().unwrap() = Some(from);
                        let _ = upstream.send(&buf[..n]).await;
                    }
                }
            });
        }
        {
            let (udp, upstream, open) = (udp.clone(), upstream.clone(), open.clone());
            tasks.spawn(async move {
                let mut buf = vec![0u8; 2048];
                while let Ok(n) = upstream.recv(&mut buf).await {
                    let to = *client.lock().unwrap();
                    if let (true, Some(to)) = (open.load(std::sync::atomic::Ordering::Acquire), to)
                    {
                        let _ = udp.send_to(&buf[..n], to).await;
                    }
                }
            });
        }
        tasks.spawn(async move {
            let mut forwards = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = tcp.accept().await {
                forwards.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(tcp_target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        let url = RelayUrl::new("127.0.0.1", port, relay.url().pin().copied()).expect("url");
        Self {
            url,
            open,
            _tasks: tasks,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_on_tcp_moves_back_to_quic_once_udp_gets_through_and_keeps_its_sessions() {
    let relay = start_relay();
    let network = UdpComesBack::in_front_of(&relay).await;
    let mut config = host_config(SecretKey::generate().unwrap(), &network.url);
    config.quic_probe_interval = Duration::from_millis(300);
    let mut agent = HostAgent::start(config).expect("host agent starts");
    wait_for_state(&agent, |state| *state == HostState::Registered).await;
    assert_eq!(agent.relay_transport(), Some(RelayTransport::Tcp));
    // Beside it, a host told to use TCP: it never probes for QUIC.
    let mut config = host_config(SecretKey::generate().unwrap(), &network.url);
    config.quic_probe_interval = Duration::from_millis(300);
    config.transport = TransportPreference::Tcp;
    let on_tcp = HostAgent::start(config).expect("host agent starts");
    wait_for_state(&on_tcp, |state| *state == HostState::Registered).await;
    let mut stays = on_tcp.watch_relay_transport();
    stays.borrow_and_update();
    let player = player_over(TransportPreference::Quic);
    let direct_ticket =
        blindrelay_protocol::Ticket::new(*agent.host_id(), relay.url().clone(), vec![])
            .expect("ticket");
    let (before, before_host) = tokio::join!(player.connect(&direct_ticket), agent.accept());
    let (before, before_host) = (before.expect("connects"), before_host.expect("accepts"));
    assert_eq!(before_host.relay_transport(), Some(RelayTransport::Tcp));

    // UDP gets through again: the registration moves to QUIC by itself.
    network
        .open
        .store(true, std::sync::atomic::Ordering::Release);
    let mut transport = agent.watch_relay_transport();
    tokio::time::timeout(
        PATIENCE,
        transport.wait_for(|t| *t == Some(RelayTransport::Quic)),
    )
    .await
    .expect("moved to QUIC in time")
    .expect("agent running");
    assert_eq!(agent.state(), HostState::Registered);
    // Three more probe intervals: the host told to use TCP is still on it.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(
        !stays.has_changed().unwrap(),
        "the TCP host's transport changed"
    );
    assert_eq!(on_tcp.relay_transport(), Some(RelayTransport::Tcp));
    let (after, after_host) = tokio::join!(player.connect(&direct_ticket), agent.accept());
    let (after, after_host) = (after.expect("connects"), after_host.expect("accepts"));
    assert_eq!(after_host.relay_transport(), Some(RelayTransport::Quic));
    // The session from before the move goes on, byte-exact, on its own connection.
    both_ways(before, before_host, 4 << 20).await;
    both_ways(after, after_host, 1 << 20).await;
    assert_eq!(relay.stats().registered_hosts, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_udp_open_auto_takes_quic() {
    let relay = start_relay();
    let mut agent = host_over(relay.url(), TransportPreference::Auto).await;
    assert_eq!(agent.relay_transport(), Some(RelayTransport::Quic));
    let (player_side, _host_side) = open(&player_over(TransportPreference::Auto), &mut agent).await;
    assert_eq!(player_side.relay_transport(), Some(RelayTransport::Quic));
    assert_eq!(relay.stats().connections_accepted_tcp, 0);
}

/// A stand-in for a network that passes HTTPS only, through a middlebox that looks
/// at TLS: UDP is swallowed, and a TCP connection whose TLS ClientHello offers the
/// ALPN `blindrelay/1` is cut, while one that offers `http/1.1` is forwarded to the
/// relay.
struct HttpsOnly {
    url: RelayUrl,
    _tasks: tokio::task::JoinSet<()>,
}

impl HttpsOnly {
    async fn in_front_of(relay: &Relay) -> Self {
        let tcp_target = relay.tcp_addr().expect("the relay listens on TCP");
        let (udp, tcp) = one_port_for_udp_and_tcp().await;
        let port = udp.local_addr().unwrap().port();
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(async move {
            let mut buf = vec![0u8; 2048];
            while udp.recv_from(&mut buf).await.is_ok() {}
        });
        tasks.spawn(async move {
            let mut forwards = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = tcp.accept().await {
                forwards.spawn(async move {
                    // The ClientHello fits the first read on loopback.
                    let mut hello = vec![0u8; 4096];
                    let Ok(n) = inbound.read(&mut hello).await else {
                        return;
                    };
                    let hello = &hello[..n];
                    if hello.windows(12).any(|w| w == blindrelay_protocol::ALPN) {
                        return; // cut: not HTTPS as this middlebox knows it
                    }
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(tcp_target).await {
                        if outbound.write_all(hello).await.is_ok() {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    }
                });
            }
        });
        let url = RelayUrl::new("127.0.0.1", port, relay.url().pin().copied()).expect("url");
        Self { url, _tasks: tasks }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_only_https_passes_players_and_hosts_fall_back_to_websocket() {
    let relay = start_relay();
    let https_only = HttpsOnly::in_front_of(&relay).await;
    let started = Instant::now();
    let mut agent = host_over(&https_only.url, TransportPreference::Auto).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "registered in {:?}",
        started.elapsed()
    );
    assert_eq!(agent.relay_transport(), Some(RelayTransport::WebSocket));
    let player = player_over(TransportPreference::Auto);
    let started = Instant::now();
    let (player_side, host_side) = open(&player, &mut agent).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        player_side.relay_transport(),
        Some(RelayTransport::WebSocket)
    );
    assert_eq!(host_side.relay_transport(), Some(RelayTransport::WebSocket));
    both_ways(player_side, host_side, 8 << 20).await;
    assert!(relay.stats().connections_accepted_ws >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_request_that_never_finishes_is_cut_at_the_handshake_deadline() {
    let relay = relay_with(|limits| {
        limits.connections.handshake_timeout = Span(Duration::from_secs(1));
    });
    let tcp = tokio::net::TcpStream::connect(relay.tcp_addr().unwrap())
        .await
        .unwrap();
    let mut tls = tls_to(tcp, b"http/1.1").await;
    // Slowloris: the start of an upgrade request, then nothing.
    tls.write_all(b"GET /blindrelay/1 HTTP/1.1\r\nHost: relay\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, tls.read_to_end(&mut rest))
        .await
        .expect("the relay closes it");
    assert!(started.elapsed() < Duration::from_secs(5));
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.starts_with("HTTP/1.1 408"), "{rest}");
    assert_eq!(
        relay
            .stats()
            .http_requests(blindrelay_relay::HttpOutcome::Timeout),
        1
    );
    assert_eq!(relay.stats().connections_handshake_timed_out, 1);
    assert_eq!(relay.stats().connections_open, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_to_another_path_is_refused() {
    let relay = start_relay();
    let tcp = tokio::net::TcpStream::connect(relay.tcp_addr().unwrap())
        .await
        .unwrap();
    let mut tls = tls_to(tcp, b"http/1.1").await;
    tls.write_all(
        b"GET /admin HTTP/1.1\r\nHost: relay\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, tls.read_to_end(&mut answer))
        .await
        .expect("an answer, then the end");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert_eq!(relay.stats().websocket_upgrades_failed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_and_oversize_websocket_messages_end_that_connection_only() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let relay = start_relay();
    let mut agent = start_host(relay.url()).await;
    let (session, host_side) = open(&player_over(TransportPreference::WebSocket), &mut agent).await;
    tokio::spawn(echo(host_side));
    for bad in [
        Message::text("hello"),
        Message::binary(vec![0u8; blindrelay_transport::websocket::MAX_MESSAGE + 1]),
    ] {
        let tcp = tokio::net::TcpStream::connect(relay.tcp_addr().unwrap())
            .await
            .unwrap();
        let tls = tls_to(tcp, b"http/1.1").await;
        let loose = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(None)
            .max_frame_size(None);
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(
            "wss://localhost/blindrelay/1",
            tls,
            Some(loose),
        )
        .await
        .expect("upgraded");
        let started = Instant::now();
        let _ = ws.send(bad).await;
        let closed = tokio::time::timeout(PATIENCE, async {
            use futures_util::StreamExt;
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
        assert!(closed.is_ok(), "the relay ends the connection");
        // Ended by what it sent, not by the 10 s first-message deadline.
        let took = started.elapsed();
        assert!(took < Duration::from_secs(3), "ended after {took:?}");
    }
    // The honest session goes on, byte-exact.
    let (mut read, mut write) = tokio::io::split(session);
    let writer = tokio::spawn(async move { write_pattern(&mut write, 5, 4 << 20).await });
    assert_eq!(read_pattern(&mut read, 5).await.expect("echo"), 4 << 20);
    writer.await.unwrap().unwrap();
}

/// A raw TLS-over-TCP connection to the relay, framed, for speaking the protocol by
/// hand.
async fn raw_tcp(relay: &Relay) -> blindrelay_client::internal::FramedRelayConnection {
    blindrelay_client::internal::connect_relay_tcp(relay.url(), Default::default())
        .await
        .expect("TLS over TCP to the relay")
}

async fn read_answer(recv: &mut blindrelay_transport::FramedRecv) -> ControlMessage {
    tokio::time::timeout(PATIENCE, blindrelay_client::internal::read_control(recv))
        .await
        .expect("an answer in time")
        .expect("a control message")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accept_nobody_dialed_is_refused() {
    let relay = start_relay();
    let mut raw = raw_tcp(&relay).await;
    let accept = ControlMessage::Accept {
        session_id: 42,
        secret: [7; 16],
    };
    raw.send.write_all(&accept.to_frame()).await.unwrap();
    match read_answer(&mut raw.recv).await {
        ControlMessage::Error { code, .. } => assert_eq!(code, ErrorCode::BadRequest),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_over_tcp_for_an_unknown_host_is_refused_as_offline() {
    let relay = start_relay();
    let mut raw = raw_tcp(&relay).await;
    let connect = ControlMessage::connect(SecretKey::generate().unwrap().host_id());
    let mut out = BytesMut::new();
    connect.encode(&mut out);
    // A hello of the right shape: the relay reads it before looking the host up.
    out.extend_from_slice(&[0, 4, 1, 2, 3, 4]);
    raw.send.write_all(&out).await.unwrap();
    match read_answer(&mut raw.recv).await {
        ControlMessage::Error { code, .. } => assert_eq!(code, ErrorCode::HostOffline),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_framing_ends_that_connection_only() {
    let relay = start_relay();
    let mut agent = start_host(relay.url()).await;
    let player = player_over(TransportPreference::Tcp);
    let (session, host_side) = open(&player, &mut agent).await;
    tokio::spawn(echo(host_side));
    // Garbage inside TLS, where a frame should be: an unknown frame type.
    let tcp = tokio::net::TcpStream::connect(relay.tcp_addr().unwrap())
        .await
        .unwrap();
    let mut tls = tls_to(tcp, blindrelay_protocol::ALPN).await;
    let started = Instant::now();
    tls.write_all(&[0x09, 0xff, 0xff, 0xff]).await.unwrap();
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(PATIENCE, tls.read_to_end(&mut rest)).await;
    assert!(ended.is_ok(), "the relay closes the broken connection");
    // Ended by the garbage, not by the 10 s first-message deadline.
    let took = started.elapsed();
    assert!(took < Duration::from_secs(3), "ended after {took:?}");
    // The honest session goes on, byte-exact.
    let (mut read, mut write) = tokio::io::split(session);
    let writer = tokio::spawn(async move { write_pattern(&mut write, 9, 4 << 20).await });
    assert_eq!(read_pattern(&mut read, 9).await.expect("echo"), 4 << 20);
    writer.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_handshake_that_never_comes_is_cut_at_the_deadline() {
    let relay = relay_with(|limits| {
        limits.connections.handshake_timeout = Span(Duration::from_secs(1));
    });
    let mut silent = tokio::net::TcpStream::connect(relay.tcp_addr().unwrap())
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(PATIENCE, silent.read(&mut buf))
        .await
        .expect("the relay closes it");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "cut after {took:?}, deadline 1 s"
    );
    assert_eq!(relay.stats().connections_handshake_timed_out, 1);
    assert_eq!(relay.stats().handshakes_in_progress, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_no_first_message_is_cut_at_the_deadline() {
    let relay = relay_with(|limits| {
        limits.connections.first_message_timeout = Span(Duration::from_secs(1));
    });
    let mut raw = raw_tcp(&relay).await;
    let started = Instant::now();
    match read_answer(&mut raw.recv).await {
        ControlMessage::Error { code, .. } => assert_eq!(code, ErrorCode::BadRequest),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "refused after {took:?}, deadline 1 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_costs_the_relay_one_buffer_and_is_cut() {
    // A player over TCP that asks for a session and then reads nothing while the
    // host sends: the relay stops reading the host at its buffer, and the stall
    // timeout ends the session for both.
    let relay = relay_with(|limits| limits.sessions.stall_timeout = Span(Duration::from_secs(1)));
    // A host that does not hold itself back: its sessions cannot be resumed, so
    // no replay window stops it once the player stops acknowledging. A resumable
    // host stops by itself after 4 MiB, which the sockets on the way may hold
    // without the relay ever stalling (PROTOCOL.md 10.8).
    let mut config = host_config(SecretKey::generate().unwrap(), relay.url());
    config.transport = TransportPreference::Quic;
    config.resume_window = Duration::ZERO;
    let mut agent = HostAgent::start(config).expect("host agent starts");
    wait_for_state(&agent, |state| *state == HostState::Registered).await;
    let player = player_over(TransportPreference::Tcp);
    let (session, host_side) = open(&player, &mut agent).await;
    assert!(!session.resumable(), "the host declined to resume");
    let (_host_read, mut host_write) = tokio::io::split(host_side);
    let buf = vec![3u8; 64 * 1024];
    let mut written = 0u64;
    let error = loop {
        match tokio::time::timeout(PATIENCE, host_write.write_all(&buf)).await {
            Ok(Ok(())) => written += buf.len() as u64,
            Ok(Err(err)) => break err.to_string(),
            Err(_) => panic!("the write neither went through nor failed in time"),
        }
    };
    assert!(error.contains("stall"), "{error}");
    // What the host got rid of: the kernel's socket buffers, the relay's frames in
    // flight and QUIC's windows; tens of MiB at most, never the stream.
    assert!(written < 64 << 20, "{written} bytes went somewhere");
    drop(session);
}
