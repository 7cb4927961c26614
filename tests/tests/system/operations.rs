//! Running a relay: the admin listener's metrics and probes, and a graceful drain
//! that a running session survives while its host moves to the relay's successor.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use blindrelay_client::HostState;
use blindrelay_relay::{Relay, RelayConfig};
use blindrelay_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.1 GET against the admin listener: the status code and the body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nhost: relay\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(PATIENCE, stream.read_to_string(&mut response))
        .await
        .expect("an answer in time")
        .unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of an unlabelled or labelled series in a metrics page.
fn metric(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in\n{page}"))
}

fn admin_config() -> RelayConfig {
    let mut config = relay_config();
    config.admin = Some("127.0.0.1:0".parse().unwrap());
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened_and_name_no_one() {
    init_tracing();
    let relay = Relay::spawn(admin_config()).unwrap();
    let admin = relay.admin_addr().expect("admin listener");
    let host = start_host(relay.url()).await;
    let ticket = host.ticket().clone();
    let host_id = ticket.host_id().to_string();
    let _echo = spawn_echo_host(host);
    let player = player();
    let mut session = player.connect(&ticket).await.unwrap();
    session.write_all(b"0123456789").await.unwrap();
    session.flush().await.unwrap();
    let mut echoed = [0u8; 10];
    session.read_exact(&mut echoed).await.unwrap();

    let (status, page) = get(admin, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(metric(&page, "blindrelay_registered_hosts"), 1.0);
    assert_eq!(metric(&page, "blindrelay_sessions_active"), 1.0);
    assert_eq!(metric(&page, "blindrelay_sessions_opened_total"), 1.0);
    assert!(
        metric(
            &page,
            "blindrelay_bytes_relayed_total{direction=\"player_to_host\"}"
        ) >= 10.0
    );
    assert_eq!(metric(&page, "blindrelay_pairing_seconds_count"), 1.0);
    assert!(metric(&page, "blindrelay_handshake_seconds_count") >= 2.0);
    assert_eq!(metric(&page, "blindrelay_ready"), 1.0);
    // Aggregates only: no host id, no address, in any form.
    assert!(!page.contains(&host_id));
    assert!(!page.contains(&host_id[..10]));
    assert!(!page.contains("127.0.0"));

    assert_eq!(get(admin, "/healthz").await.0, 200);
    assert_eq!(get(admin, "/readyz").await.0, 200);
    assert_eq!(get(admin, "/nothing").await.0, 404);
    drop(session);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_survives_bad_clients() {
    init_tracing();
    let relay = Relay::spawn(admin_config()).unwrap();
    let admin = relay.admin_addr().unwrap();
    // Oversized head, garbage, and a client that says nothing: each gets an answer or
    // is dropped, and the listener keeps serving.
    let mut big = tokio::net::TcpStream::connect(admin).await.unwrap();
    let _ = big.write_all(&vec![b'a'; 64 * 1024]).await;
    let mut garbage = tokio::net::TcpStream::connect(admin).await.unwrap();
    garbage.write_all(b"\x00\x01\x02\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    let _ = garbage.read_to_string(&mut answer).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let _silent = tokio::net::TcpStream::connect(admin).await.unwrap();
    let mut post = tokio::net::TcpStream::connect(admin).await.unwrap();
    post.write_all(b"POST /metrics HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    post.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert_eq!(get(admin, "/healthz").await.0, 200);
}

/// Connections a test holds open on the admin port without a word: far more than the
/// listener holds at once.
const IDLE_ADMIN_CONNECTIONS: usize = 200;

/// How soon a probe must be answered beside them: the probes' timeout in the
/// Kubernetes manifest. The relay answers in milliseconds; a listener that lets idle
/// connections queue a probe answers only after their deadlines, many seconds on.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_are_answered_at_once_beside_hundreds_of_idle_admin_connections() {
    init_tracing();
    let relay = Relay::spawn(admin_config()).unwrap();
    let admin = relay.admin_addr().unwrap();
    let mut idle = Vec::with_capacity(IDLE_ADMIN_CONNECTIONS);
    for _ in 0..IDLE_ADMIN_CONNECTIONS {
        let stream = tokio::time::timeout(PATIENCE, tokio::net::TcpStream::connect(admin))
            .await
            .expect("the admin port takes connections")
            .unwrap();
        idle.push(stream);
    }
    let opened = Instant::now();

    for (path, want) in [("/healthz", "ok"), ("/readyz", "ready")] {
        let (status, body) = tokio::time::timeout(PROBE_TIMEOUT, get(admin, path))
            .await
            .unwrap_or_else(|_| panic!("{path} unanswered after {PROBE_TIMEOUT:?}"));
        assert_eq!((status, body.trim()), (200, want), "{path}");
    }
    let (status, page) = tokio::time::timeout(PROBE_TIMEOUT, get(admin, "/metrics"))
        .await
        .expect("/metrics answered in time");
    assert_eq!(status, 200);
    assert_eq!(metric(&page, "blindrelay_ready"), 1.0);
    assert!(
        metric(&page, "blindrelay_admin_connections_dropped_total") >= 1.0,
        "displaced idle connections are counted"
    );

    // The idle connections themselves are cut: displaced by newer ones, or at the
    // one-second deadline, so none is held much longer than that.
    for mut stream in idle {
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(PATIENCE, stream.read(&mut byte))
            .await
            .expect("the relay closes an idle admin connection");
        assert!(matches!(read, Ok(0) | Err(_)), "nothing is sent unasked");
    }
    assert!(
        opened.elapsed() < Duration::from_secs(5),
        "idle admin connections held for {:?}",
        opened.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_runs_across_a_drain_and_the_host_moves_to_the_next_relay() {
    init_tracing();
    let config = admin_config();
    let relay = Relay::spawn(config.clone()).unwrap();
    let addr = relay.local_addr();
    let admin = relay.admin_addr().unwrap();
    let url = relay.url().clone();
    let host = blindrelay_client::HostAgent::start(host_config(
        blindrelay_client::SecretKey::generate().unwrap(),
        &url,
    ))
    .expect("host agent starts");
    wait_for_state(&host, |s| *s == HostState::Registered).await;
    let ticket = host.ticket().clone();
    let mut states = host.watch_state();
    let _echo = spawn_echo_host(host);
    let player = player();

    // A session moves half its data before the drain and half during it.
    const HALF: u64 = 4 << 20;
    let session = player.connect(&ticket).await.unwrap();
    let (mut read, mut write) = tokio::io::split(session);
    let (half_sent, half_written) = tokio::sync::oneshot::channel();
    let (go_on, may_go_on) = tokio::sync::oneshot::channel::<()>();
    let writer = tokio::spawn(async move {
        let mut pattern = Pattern::new(9);
        let mut buf = vec![0u8; 64 * 1024];
        let blocks = HALF / buf.len() as u64;
        for _ in 0..blocks {
            pattern.fill(&mut buf);
            write.write_all(&buf).await.unwrap();
        }
        write.flush().await.unwrap();
        half_sent.send(()).unwrap();
        may_go_on.await.unwrap();
        for _ in 0..blocks {
            pattern.fill(&mut buf);
            write.write_all(&buf).await.unwrap();
        }
        write.shutdown().await.unwrap();
    });
    let reader = tokio::spawn(async move { read_pattern(&mut read, 9).await });
    half_written.await.unwrap();

    let drain = tokio::spawn(relay.drain(PATIENCE));
    // The host hears the relay is going away, and the relay is no longer ready.
    tokio::time::timeout(
        PATIENCE,
        states.wait_for(|s| matches!(s, HostState::Connecting { .. })),
    )
    .await
    .expect("the host is told in time")
    .unwrap();
    assert_eq!(get(admin, "/readyz").await.0, 503);
    assert_eq!(get(admin, "/healthz").await.0, 200);
    // The relay removes the registration once the host has acknowledged
    // `GoingAway`, a moment after the host acted on it.
    let told = tokio::time::timeout(PATIENCE, async {
        loop {
            let (_, page) = get(admin, "/metrics").await;
            if metric(&page, "blindrelay_registered_hosts") == 0.0 {
                break page;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the registration ends during the drain");
    assert_eq!(metric(&told, "blindrelay_hosts_told_going_away_total"), 1.0);
    // New connections are turned away while the old session carries on; a new
    // session on the player's open connection is refused, saying why.
    assert!(blindrelay_client::internal::connect_relay_raw(&url)
        .await
        .is_err());
    let refused = player
        .connect(&ticket)
        .await
        .expect_err("the host has gone");
    assert!(
        refused.to_string().contains("this relay is shutting down"),
        "{refused}"
    );

    go_on.send(()).unwrap();
    writer.await.unwrap();
    let moved = tokio::time::timeout(PATIENCE, reader)
        .await
        .expect("the session finishes during the drain")
        .unwrap()
        .expect("byte-exact across the drain");
    assert_eq!(moved, 2 * HALF);
    // The drain ends as soon as the last session has.
    tokio::time::timeout(PATIENCE, drain)
        .await
        .expect("the drain ends with its last session")
        .unwrap();

    // The successor on the same address and certificate: the host is back within
    // seconds, by itself.
    let restarted = Instant::now();
    let relay = respawn_relay(&config, addr).await;
    tokio::time::timeout(PATIENCE, states.wait_for(|s| *s == HostState::Registered))
        .await
        .expect("the host registers with the successor")
        .unwrap();
    assert!(
        restarted.elapsed() < Duration::from_secs(10),
        "back after {:?}",
        restarted.elapsed()
    );
    // The same player reaches the host through the successor.
    let mut session = player
        .connect(&ticket)
        .await
        .expect("a session through the successor");
    session.write_all(b"again").await.unwrap();
    session.flush().await.unwrap();
    let mut echoed = [0u8; 5];
    session.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"again");
    assert_eq!(relay.stats().registered_hosts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_certificate_serves_new_connections_and_leaves_open_ones_alone() {
    init_tracing();
    let dir = std::env::temp_dir().join(format!("blindrelay-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("tls.crt"), dir.join("tls.key"));
    let write_certificate = || {
        let (pem_cert, pem_key) =
            blindrelay_relay::RelayCertificate::self_signed_pem(&["localhost"]).unwrap();
        std::fs::write(&cert, pem_cert).unwrap();
        std::fs::write(&key, pem_key).unwrap();
    };
    write_certificate();
    let bin = blindrelay_tests::process::binaries();
    let relay = blindrelay_tests::process::Proc::start(
        &bin.join("blindrelayd"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ],
    );
    let old_url: blindrelay_client::RelayUrl = relay.value("relay url").parse().unwrap();
    let host = start_host(&old_url).await;
    let ticket = host.ticket().clone();
    let _echo = spawn_echo_host(host);
    let player = player();
    let mut session = player.connect(&ticket).await.unwrap();

    // A new certificate in the same files, and SIGHUP.
    write_certificate();
    relay.signal("HUP");
    let new_url: blindrelay_client::RelayUrl = relay.value("relay url").parse().unwrap();
    assert_ne!(new_url, old_url, "a pinned URL follows its certificate");
    assert_eq!(new_url.port(), old_url.port());

    // The open session, and the host's registration, did not notice.
    session.write_all(b"still here").await.unwrap();
    session.flush().await.unwrap();
    let mut echoed = [0u8; 10];
    session.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"still here");
    let again = player.connect(&ticket).await;
    assert!(
        again.is_ok(),
        "the player's open connection still pairs sessions"
    );
    // New connections get the new certificate: the new pin verifies, the old fails.
    assert!(blindrelay_client::internal::connect_relay_raw(&new_url)
        .await
        .is_ok());
    assert!(blindrelay_client::internal::connect_relay_raw(&old_url)
        .await
        .is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// What kubelet does while someone floods the admin port from other addresses: 200
/// idle connections, then new ones as fast as the flooders can open them, each left
/// silent. Every probe is answered, even one whose request head comes 200 ms after
/// its connection (a loaded node, a slow network): a listener that made room by
/// ending its oldest connection, whoever held it, ended such probes too, since the
/// flood opens hundreds of connections in that time. The slowest answer is printed
/// against kubelet's one-second timeout; the test allows 5 s, so that a machine
/// shared with other tests does not fail it for being slow, while a probe that is
/// cut fails it all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_probes_are_answered_through_a_connection_flood_from_other_addresses() {
    let _flood = blindrelay_tests::one_flood_at_a_time().await;
    use std::net::{IpAddr, Ipv4Addr};
    const FLOODERS: u8 = 4;
    const IDLE: usize = 200;
    const PROBES: usize = 20;
    init_tracing();
    let relay = Relay::spawn(admin_config()).unwrap();
    let admin = relay.admin_addr().unwrap();
    let connect_from = move |from: IpAddr| async move {
        let socket = tokio::net::TcpSocket::new_v4().ok()?;
        socket.bind((from, 0).into()).ok()?;
        socket.connect(admin).await.ok()
    };
    let flooder =
        |i: usize| IpAddr::V4(Ipv4Addr::new(127, 0, 10, 1 + (i % FLOODERS as usize) as u8));
    let mut idle = Vec::new();
    for i in 0..IDLE {
        idle.extend(connect_from(flooder(i)).await);
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut flood = tokio::task::JoinSet::new();
    for f in 0..FLOODERS as usize * 2 {
        let stop = stop.clone();
        flood.spawn(async move {
            let mut opened = 0u64;
            let mut held = std::collections::VecDeque::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(stream) = connect_from(flooder(f)).await {
                    opened += 1;
                    held.push_back(stream);
                    // Keep a few hundred open; the relay closes the rest anyway.
                    if held.len() > 256 {
                        held.pop_front();
                    }
                }
            }
            opened
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut answered, mut slowest) = (0, Duration::ZERO);
    for i in 0..PROBES {
        let asked = std::time::Instant::now();
        let probe = tokio::time::timeout(Duration::from_secs(5), async {
            if i % 2 == 1 {
                return Some(get(admin, "/healthz").await.0 == 200);
            }
            let mut stream = tokio::net::TcpStream::connect(admin).await.ok()?;
            tokio::time::sleep(Duration::from_millis(200)).await;
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nhost: relay\r\n\r\n")
                .await
                .ok()?;
            let mut response = String::new();
            stream.read_to_string(&mut response).await.ok()?;
            Some(response.starts_with("HTTP/1.1 200"))
        })
        .await;
        if matches!(probe, Ok(Some(true))) {
            answered += 1;
            slowest = slowest.max(asked.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut opened = 0;
    while let Some(count) = flood.join_next().await {
        opened += count.unwrap();
    }
    eprintln!(
        "{answered} of {PROBES} probes answered, the slowest in {slowest:?}, while the flood \
         opened {opened} connections"
    );
    assert!(opened > 1000, "the flood opened only {opened} connections");
    assert_eq!(answered, PROBES, "probes answered during the flood");
    drop(idle);
}
