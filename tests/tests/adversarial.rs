//! Adversaries against a live relay on loopback, each next to an honest session that
//! must keep moving its bytes exactly: slowloris streams, floods of QUIC Initials and
//! of connections that never open a stream, registration proofs made with the wrong
//! key, a player that sends garbage instead of a Noise hello, a host that floods a
//! player who does not read, players probing for host ids, and QUIC clients that do
//! not speak our ALPN or TLS 1.3. Each offender gets an error and goes; the relay's
//! gauges (open connections, reserved buffers, registrations) come back down, which
//! is what bounds its memory.
//!
//! Malformed control messages (truncated, oversize, unknown version or kind) are in
//! `bad_input.rs`; the relay's resident memory under gigabytes pushed at a host that
//! barely reads is measured in `limits.rs`.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blindrelay_client::{HostAgent, HostState, Player, PlayerConfig, SecretKey, Ticket};
use blindrelay_protocol::{codes, ControlMessage, ErrorCode, HostId};
use blindrelay_relay::units::Span;
use blindrelay_relay::{Relay, RelayCertificate, RelayConfig};
use common::*;
use tokio::io::AsyncWriteExt;

/// An echo host and a session to it, running beside an attack: it moves the first
/// half of `len` bytes both ways at once, then stays open until [`finishes`] lets it
/// move the second half, so it is still running (and its host busy) whatever the
/// attack does in between, however fast this machine is.
struct Honest {
    task: tokio::task::JoinHandle<u64>,
    release: tokio::sync::oneshot::Sender<()>,
}

async fn honest_session(relay: &Relay, len: u64) -> Honest {
    let host = start_host(relay.url()).await;
    let ticket = host.ticket().clone();
    let echo_host = spawn_echo_host(host);
    let session = player().connect(&ticket).await.unwrap();
    let (mut read, mut write) = tokio::io::split(session);
    let (release, released) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let _echo_host = echo_host;
        let writes = async {
            // One pattern stream in two halves, so the reader checks it as one.
            let mut pattern = Pattern::new(1234);
            write_pattern_from(&mut write, &mut pattern, len / 2).await?;
            let _ = released.await;
            write_pattern_from(&mut write, &mut pattern, len - len / 2).await?;
            write.shutdown().await
        };
        let (sent, echoed) = tokio::join!(writes, read_pattern(&mut read, 1234));
        sent.unwrap();
        echoed.unwrap()
    });
    Honest { task, release }
}

/// Lets the honest session finish and checks it echoed every byte exactly.
async fn finishes(honest: Honest, len: u64) {
    let _ = honest.release.send(());
    let echoed = tokio::time::timeout(PATIENCE, honest.task)
        .await
        .expect("the honest session finishes in time")
        .unwrap();
    assert_eq!(echoed, len, "the honest session moved every byte exactly");
}

async fn settle(
    relay: &Relay,
    what: &str,
    done: impl Fn(&blindrelay_relay::StatsSnapshot) -> bool,
) {
    let waited = tokio::time::timeout(PATIENCE, async {
        while !done(&relay.stats()) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "{what}: {:?}", relay.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_slowloris_streams_are_cut_at_the_deadline_while_a_session_moves() {
    init_tracing();
    let mut config = relay_config();
    config.limits.connections.first_message_timeout = Span(Duration::from_millis(500));
    let relay = Relay::spawn(config).unwrap();
    let honest = honest_session(&relay, 16 << 20).await;

    const CONNECTIONS: usize = 10;
    const STREAMS: usize = 30;
    let started = Instant::now();
    let mut attackers = tokio::task::JoinSet::new();
    for _ in 0..CONNECTIONS {
        let connection = raw_connection(&relay).await;
        for _ in 0..STREAMS {
            let connection = connection.clone();
            attackers.spawn(async move {
                // One byte of the two-byte length, then nothing: a header that never
                // completes.
                let (mut send, mut recv) = connection.open_bi().await.unwrap();
                send.write_all(&[0]).await.unwrap();
                read_message(&mut recv).await
            });
        }
    }
    while let Some(answer) = attackers.join_next().await {
        match answer.unwrap() {
            Some(ControlMessage::Error { code, .. }) => assert_eq!(code, ErrorCode::BadRequest),
            other => panic!("expected BadRequest, got {other:?}"),
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "cut at the deadline, not later"
    );
    assert!(relay.stats().bad_requests >= (CONNECTIONS * STREAMS) as u64);
    finishes(honest, 16 << 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_of_initials_and_of_idle_connections_stay_within_the_caps() {
    const CAP: u32 = 150;
    const IDLE: usize = 300;
    const INITIALS: usize = 2_000;
    init_tracing();
    let mut config = relay_config();
    config.limits.connections.max = CAP;
    config.limits.connections.unregistered_idle_timeout = Span(Duration::from_secs(1));
    let relay = Relay::spawn(config).unwrap();
    let honest = honest_session(&relay, 16 << 20).await;
    let before = relay.stats();

    // Thousands of datagrams shaped like QUIC v1 Initials (long header, version 1,
    // random connection ids and payload): none decrypts, none leaves state behind.
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..INITIALS {
        let mut datagram = vec![0u8; 1200];
        fastrand_fill(&mut datagram, i as u64);
        datagram[0] = 0xc0;
        datagram[1..5].copy_from_slice(&1u32.to_be_bytes());
        datagram[5] = 8;
        datagram[14] = 8;
        let _ = socket.send_to(&datagram, relay.local_addr()).await;
        if i % 200 == 0 {
            tokio::task::yield_now().await;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after_initials = relay.stats();
    assert_eq!(
        (
            after_initials.connections_accepted,
            after_initials.connections_open,
            after_initials.connections_at_capacity,
            after_initials.connections_rate_limited,
        ),
        (
            before.connections_accepted,
            before.connections_open,
            before.connections_at_capacity,
            before.connections_rate_limited,
        ),
        "no Initial datagram became a connection, or even a refused one"
    );

    // Hundreds of real connections from many loopback addresses that never open a
    // stream: at most CAP are let in, the rest are refused before TLS.
    let mut held = Vec::new();
    let mut refused = 0;
    for i in 0..IDLE {
        let ip = IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            1 + (i / 250) as u8,
            1 + (i % 250) as u8,
        ));
        match blindrelay_client::connect_relay_raw_from(relay.url(), ip).await {
            Ok(connection) => held.push(connection),
            Err(_) => refused += 1,
        }
        let open = relay.stats().connections_open;
        assert!(
            open <= u64::from(CAP),
            "open connections {open} over the cap"
        );
    }
    assert!(refused > 0, "the cap refused the excess");

    // Idle connections are closed by the relay, whose gauges come back down.
    settle(&relay, "idle connections closed", |stats| {
        stats.connections_open <= before.connections_open
    })
    .await;
    let idle = held.len() as u64;
    settle(&relay, "every idle connection counted", |stats| {
        stats.connections_idle_closed >= idle
    })
    .await;
    finishes(honest, 16 << 20).await;
    assert_eq!(relay.stats().registered_hosts, 1);
}

/// xorshift bytes: enough randomness for junk datagrams without a new dependency.
fn fastrand_fill(buf: &mut [u8], seed: u64) {
    Pattern::new(seed).fill(buf);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proofs_made_with_the_wrong_key_are_refused_while_a_session_moves() {
    let relay = start_relay();
    let honest = honest_session(&relay, 16 << 20).await;
    let mut attempts = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let connection = raw_connection(&relay).await;
        attempts.spawn(async move {
            let victim = SecretKey::generate().unwrap();
            let attacker = SecretKey::generate().unwrap();
            let (verdict, _send) =
                register_by_hand(&connection, victim.host_id(), &attacker, &connection).await;
            verdict
        });
    }
    while let Some(verdict) = attempts.join_next().await {
        match verdict.unwrap() {
            ControlMessage::Error { code, .. } => assert_eq!(code, ErrorCode::ProofFailed),
            other => panic!("expected ProofFailed, got {other:?}"),
        }
    }
    assert_eq!(relay.stats().registered_hosts, 1, "only the honest host");
    finishes(honest, 16 << 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_instead_of_a_noise_hello_is_refused_by_the_host_and_nothing_else() {
    let relay = start_relay();
    let host = start_host(relay.url()).await;
    let ticket = host.ticket().clone();
    let host_id = *host.host_id();
    let _echo = spawn_echo_host(host);
    let session = player().connect(&ticket).await.unwrap();
    let (mut read, mut write) = tokio::io::split(session);
    let honest = tokio::spawn(async move {
        let (sent, echoed) = tokio::join!(
            write_pattern(&mut write, 5, 16 << 20),
            read_pattern(&mut read, 5)
        );
        sent.unwrap();
        echoed.unwrap()
    });

    let attacker = raw_connection(&relay).await;
    for garbage in [vec![0x42u8; 96], vec![0u8; 3], vec![0xff; 200]] {
        let (mut send, mut recv) = attacker.open_bi().await.unwrap();
        let mut bytes = ControlMessage::Connect { host_id }.to_frame().to_vec();
        bytes.extend_from_slice(&(garbage.len() as u16).to_be_bytes());
        bytes.extend_from_slice(&garbage);
        send.write_all(&bytes).await.unwrap();
        // The host refuses the hello; the relay passes its reset code through. The
        // reset may overtake `Connected` (QUIC drops unsent data on a reset), so the
        // player sees `Connected` or nothing, then the reset.
        let mut rest = Vec::new();
        let ended = tokio::time::timeout(PATIENCE, async {
            let mut buf = [0u8; 256];
            loop {
                match recv.read(&mut buf).await {
                    Ok(Some(n)) => rest.extend_from_slice(&buf[..n]),
                    Ok(None) => break None,
                    Err(err) => break Some(err),
                }
            }
        })
        .await
        .expect("the host answers the garbage in time");
        let connected = rest.len().min(48);
        if connected > 0 {
            let mut frame = bytes::BytesMut::from(&rest[..connected]);
            assert!(matches!(
                ControlMessage::decode_frame(&mut frame),
                Ok(Some(ControlMessage::Connected { .. }))
            ));
        }
        assert_eq!(
            rest.len(),
            connected,
            "nothing from the host but the refusal"
        );
        assert_eq!(
            ended,
            Some(quinn::ReadError::Reset(codes::stream::REFUSED.into()))
        );
    }
    assert_eq!(relay.stats().registered_hosts, 1);
    let echoed = tokio::time::timeout(PATIENCE, honest)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(echoed, 16 << 20);
    // The host still serves new players.
    drop(player().connect(&ticket).await.expect("host still serves"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_flooding_a_player_that_does_not_read_is_cut_off_while_another_session_moves() {
    init_tracing();
    let mut config = relay_config();
    config.limits.sessions.stall_timeout = Span(Duration::from_secs(1));
    let relay = Relay::spawn(config).unwrap();
    let honest = honest_session(&relay, 16 << 20).await;

    // A host that answers every session with an endless stream of bytes.
    let mut flooder = HostAgent::start(host_config(SecretKey::generate().unwrap(), relay.url()))
        .expect("host agent starts");
    wait_for_state(&flooder, |state| *state == HostState::Registered).await;
    let ticket: Ticket = flooder.ticket().clone();
    let flood = tokio::spawn(async move {
        let session = flooder.accept().await.expect("a session");
        let (_read, mut write) = tokio::io::split(session);
        let chunk = vec![0x5a; 64 << 10];
        let mut sent = 0u64;
        loop {
            if let Err(err) = write.write_all(&chunk).await {
                break (sent, err.to_string());
            }
            sent += chunk.len() as u64;
        }
    });
    // The victim opens the session and never reads.
    let victim = Player::new(PlayerConfig::new(SecretKey::generate().unwrap()));
    let _unread = victim.connect(&ticket).await.unwrap();
    let (sent, err) = tokio::time::timeout(PATIENCE, flood)
        .await
        .expect("the relay cuts the flood off")
        .unwrap();
    assert!(err.contains("unread") || err.contains("stall"), "{err}");
    let limits = blindrelay_relay::Limits::unlimited();
    assert!(
        sent < 64 << 20,
        "the flooder got rid of only what windows hold, not {sent} bytes (window {})",
        limits.sessions.window.0
    );
    settle(&relay, "the stall is counted", |stats| {
        stats.sessions_ended_stalled >= 1
    })
    .await;
    finishes(honest, 16 << 20).await;
    settle(&relay, "the flood's buffers are released", |stats| {
        stats.sessions_active == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn players_cannot_tell_a_never_registered_id_from_a_malformed_one() {
    let relay = start_relay();
    let connection = raw_connection(&relay).await;
    // Plausible ids that can never register (all-zero, other low-order points) and
    // ids nobody registered: the relay must answer all the same way.
    let mut low_order = [0u8; 32];
    low_order[0] = 1;
    let mut minus_one = [0xffu8; 32];
    minus_one[0] = 0xec;
    minus_one[31] = 0x7f;
    let kinds: Vec<(&str, HostId)> = vec![
        ("never registered", SecretKey::generate().unwrap().host_id()),
        ("all zero", HostId::from_bytes([0; 32])),
        ("low order", HostId::from_bytes(low_order)),
        ("p - 1", HostId::from_bytes(minus_one)),
        ("all ones", HostId::from_bytes([0xff; 32])),
    ];
    let mut answers = Vec::new();
    let mut timings: Vec<Vec<Duration>> = vec![Vec::new(); kinds.len()];
    for round in 0..20 {
        for (i, (_, host_id)) in kinds.iter().enumerate() {
            let frame = ControlMessage::Connect { host_id: *host_id }.to_frame();
            let started = Instant::now();
            let answer = raw_exchange(&connection, &frame, false).await;
            timings[i].push(started.elapsed());
            if round == 0 {
                answers.push(answer.map(|message| message.to_frame()));
            }
        }
    }
    for (i, (kind, _)) in kinds.iter().enumerate() {
        assert_eq!(answers[i], answers[0], "{kind}: byte-identical answer");
    }
    assert_eq!(
        answers[0].as_deref(),
        Some(&ControlMessage::error(ErrorCode::HostOffline, "host offline").to_frame()[..])
    );
    assert_eq!(
        relay.stats().sessions_refused_offline,
        20 * kinds.len() as u64
    );
    // Same code path, so the same timing class: no kind's median stands out from the
    // never-registered one by more than scheduling noise on a busy machine.
    let median = |times: &mut Vec<Duration>| {
        times.sort();
        times[times.len() / 2]
    };
    let reference = median(&mut timings[0]);
    for (i, (kind, _)) in kinds.iter().enumerate().skip(1) {
        let m = median(&mut timings[i]);
        assert!(
            m < reference * 3 + Duration::from_millis(5)
                && reference < m * 3 + Duration::from_millis(5),
            "{kind}: median {m:?} vs never registered {reference:?}"
        );
    }
}

/// A rustls client configuration that trusts `cert_pem`, offers `alpn` and TLS 1.3.
fn client_trusting(cert_pem: &str, alpn: &[u8]) -> quinn::rustls::ClientConfig {
    use quinn::rustls;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    tls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_tls_1_3_with_our_alpn_gets_in() {
    use quinn::rustls;
    init_tracing();
    let dir = std::env::temp_dir().join(format!("br-alpn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_pem, key_pem) = RelayCertificate::self_signed_pem(&["localhost"]).unwrap();
    std::fs::write(dir.join("c.pem"), &cert_pem).unwrap();
    std::fs::write(dir.join("k.pem"), &key_pem).unwrap();
    let certificate =
        RelayCertificate::from_pem_files(&dir.join("c.pem"), &dir.join("k.pem")).unwrap();
    let mut config = RelayConfig::new("127.0.0.1:0".parse().unwrap(), certificate);
    config.limits = blindrelay_relay::Limits::unlimited();
    let relay = Relay::spawn(config).unwrap();
    let honest = honest_session(&relay, 4 << 20).await;

    let connect = |tls: rustls::ClientConfig| {
        let addr = relay.local_addr();
        async move {
            let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
            let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
            endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
            endpoint.connect(addr, "localhost").unwrap().await
        }
    };
    // Our ALPN: in.
    let ok = connect(client_trusting(&cert_pem, blindrelay_protocol::ALPN)).await;
    assert!(ok.is_ok(), "{ok:?}");
    // Another ALPN (HTTP/3, or the direct path's): refused in the TLS handshake with
    // no_application_protocol (TLS alert 120, QUIC crypto error 0x178).
    for alpn in [&b"h3"[..], blindrelay_protocol::DIRECT_ALPN] {
        let err = connect(client_trusting(&cert_pem, alpn)).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("no_application_protocol")
                || text.contains("0x178")
                || text.contains("120"),
            "{text}"
        );
    }
    // TLS 1.2 cannot be offered at all: QUIC runs TLS 1.3 only (RFC 9001 section 4.2),
    // the relay's rustls configuration names TLS 1.3 alone, and rustls is built here
    // without its `tls12` feature.
    finishes(honest, 4 << 20).await;
    let _ = std::fs::remove_dir_all(&dir);
}
