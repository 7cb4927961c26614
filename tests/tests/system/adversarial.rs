//! Adversaries against a live relay on loopback, each next to an honest session that
//! must keep moving its bytes exactly: slowloris streams, floods of QUIC Initials and
//! of connections that never open a stream, registration proofs made with the wrong
//! key, a player that sends garbage instead of a Noise hello, a host that floods a
//! player who does not read, players probing for host ids, and QUIC clients that do
//! not speak our ALPN or TLS 1.3. Each offender gets an error and goes; the relay's
//! gauges (open connections, reserved buffers, registrations) come back down, which
//! is what bounds its memory.
//!
//! The same adversaries on the relay's TCP port are in `adversarial_tcp.rs`.
//! Malformed control messages (truncated, oversize, unknown version or kind) are in
//! `bad_input.rs`; the relay's resident memory under gigabytes pushed at a host that
//! barely reads is measured in `limits.rs`.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blindrelay_client::{HostAgent, HostState, Player, SecretKey, Ticket, TransportPreference};
use blindrelay_protocol::{codes, ControlMessage, ErrorCode, HostId};
use blindrelay_relay::units::Span;
use blindrelay_relay::{Relay, RelayCertificate, RelayConfig};
use blindrelay_tests::*;
use tokio::io::AsyncWriteExt;

/// An echo host and a session to it, running beside an attack: it moves the first
/// half of `len` bytes both ways at once, then stays open until [`finishes`] lets it
/// move the second half, so it is still running (and its host busy) whatever the
/// attack does in between, however fast this machine is.
pub(crate) struct Honest {
    task: tokio::task::JoinHandle<u64>,
    release: tokio::sync::oneshot::Sender<()>,
}

async fn honest_session(relay: &Relay, len: u64) -> Honest {
    let default = TransportPreference::default();
    honest_session_over(relay, default, default, len).await
}

/// Like [`honest_session`], with the host registered over `host` and the player's
/// session over `player`.
pub(crate) async fn honest_session_over(
    relay: &Relay,
    host: TransportPreference,
    player: TransportPreference,
    len: u64,
) -> Honest {
    honest_session_at(relay.url(), host, player, len).await
}

/// Like [`honest_session_over`], through the relay at `url` (a relay process).
pub(crate) async fn honest_session_at(
    url: &blindrelay_client::RelayUrl,
    host: TransportPreference,
    player: TransportPreference,
    len: u64,
) -> Honest {
    let host = host_over(url, host).await;
    let ticket = host.ticket().clone();
    let echo_host = spawn_echo_host(host);
    let session = player_over(player).connect(&ticket).await.unwrap();
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
pub(crate) async fn finishes(honest: Honest, len: u64) {
    let _ = honest.release.send(());
    let echoed = tokio::time::timeout(PATIENCE, honest.task)
        .await
        .expect("the honest session finishes in time")
        .unwrap();
    assert_eq!(echoed, len, "the honest session moved every byte exactly");
}

pub(crate) async fn settle(
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
    let _flood = blindrelay_tests::one_flood_at_a_time().await;
    const CAP: u32 = 150;
    const HEADROOM: u32 = 30;
    const IDLE: usize = 300;
    const INITIALS: usize = 2_000;
    init_tracing();
    let mut config = relay_config();
    config.limits.connections.max = CAP;
    config.limits.connections.max_handshakes = HEADROOM;
    config.limits.connections.first_message_timeout = Span(Duration::from_secs(1));
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
    // stream: CAP are let in, HEADROOM more may stay a moment to register, and the
    // rest are closed with AT_CAPACITY as soon as their handshake completes.
    let mut held = Vec::new();
    for i in 0..IDLE {
        let ip = IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            1 + (i / 250) as u8,
            1 + (i % 250) as u8,
        ));
        if let Ok(connection) =
            blindrelay_client::internal::connect_relay_raw_from(relay.url(), ip).await
        {
            held.push(connection);
        }
        // Established ones only (a handshake in progress counts apart), plus at most
        // two whose handshakes have just completed beyond the headroom, which the
        // relay is closing: a client's handshake completes a moment before the
        // relay's side, so the next one may overlap it.
        let stats = relay.stats();
        let open = stats
            .connections_open
            .saturating_sub(stats.handshakes_in_progress);
        assert!(
            open <= u64::from(CAP + HEADROOM + 2),
            "open connections {open} over the cap and its headroom"
        );
    }
    let at_capacity = |connection: &quinn::Connection| {
        matches!(
            connection.close_reason(),
            Some(quinn::ConnectionError::ApplicationClosed(close))
                if close.error_code == codes::close::AT_CAPACITY.into()
        )
    };
    // Idle connections are closed by the relay, whose gauges come back down: those
    // it let in as idle, those beyond the cap at the end of their probation.
    settle(&relay, "idle connections closed", |stats| {
        stats.connections_open <= before.connections_open
    })
    .await;
    let refused = held
        .iter()
        .filter(|connection| at_capacity(connection))
        .count();
    assert!(refused > 0, "the cap refused the excess");
    let idle = (held.len() - refused) as u64;
    // Every place the honest session left was taken, but for attempts that never
    // completed their handshake on a loaded machine (the client gave up first).
    let never_connected = (IDLE - held.len()) as u64;
    let places = u64::from(CAP) - before.connections_open;
    assert!(
        idle + never_connected >= places,
        "{idle} let in, {never_connected} never connected, {places} places free"
    );
    settle(&relay, "every idle connection counted", |stats| {
        stats.connections_idle_closed >= idle.min(u64::from(CAP))
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
        let mut bytes = ControlMessage::connect(host_id).to_frame().to_vec();
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

    // A host that answers every session with an endless stream of bytes, not held
    // back by a replay window: its sessions cannot be resumed (PROTOCOL.md 10.8).
    let mut flooder_config = host_config(SecretKey::generate().unwrap(), relay.url());
    flooder_config.resume_window = Duration::ZERO;
    let mut flooder = HostAgent::start(flooder_config).expect("host agent starts");
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
    let victim = Player::new(blindrelay_tests::player_config(
        SecretKey::generate().unwrap(),
    ));
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
            // With a hello behind it, as every player sends: the relay asks for it
            // before it looks the host up.
            let mut frame = ControlMessage::connect(*host_id).to_frame().to_vec();
            frame.extend_from_slice(&ANY_HELLO);
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
    // Another ALPN (the TCP listener's `http/1.1`, or the direct path's; HTTP/3 is
    // the browsers' way in, PROTOCOL.md 19.1): refused in the TLS handshake with
    // no_application_protocol (TLS alert 120, QUIC crypto error 0x178).
    for alpn in [&b"http/1.1"[..], blindrelay_protocol::DIRECT_ALPN] {
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

/// Stands in for a Noise hello where the test never gets as far as a host: the
/// relay reads one length-prefixed message and forwards it unread.
const ANY_HELLO: [u8; 98] = {
    let mut hello = [0x42u8; 98];
    hello[0] = 0;
    hello[1] = 96;
    hello
};

/// A player's Noise hello for `host_id`, with its length prefix: what follows a
/// `Connect` on the wire.
pub(crate) fn hello_for(host_id: &HostId) -> Vec<u8> {
    let key = SecretKey::generate().unwrap();
    let mut player = blindrelay_protocol::noise::PlayerHandshake::new(&key, host_id).unwrap();
    let mut wire = bytes::BytesMut::new();
    player.write_hello(&mut wire).unwrap();
    wire.to_vec()
}

/// Transport settings of a peer that never gives the relay a byte of credit.
fn no_credit() -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport
        .stream_receive_window(0u32.into())
        .receive_window(0u32.into());
    transport
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_a_player_never_takes_pin_neither_the_budget_nor_the_host() {
    init_tracing();
    let mut config = relay_config();
    config.limits.sessions.open_host_stream_timeout = Span(Duration::from_millis(500));
    let relay = Relay::spawn(config).unwrap();
    let honest = honest_session(&relay, 16 << 20).await;
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);

    // The attacker's own host: registered, but its connection takes no stream from
    // the relay, so every session to it is refused with HostUnreachable after the
    // relay reserved its buffers and took a host slot.
    let mut takes_no_stream = quinn::TransportConfig::default();
    takes_no_stream.max_concurrent_bidi_streams(0u32.into());
    let host = blindrelay_client::internal::connect_relay_raw_with(
        relay.url(),
        localhost,
        takes_no_stream,
    )
    .await
    .unwrap();
    let key = SecretKey::generate().unwrap();
    let (verdict, _registration) = register_by_hand(&host, key.host_id(), &key, &host).await;
    assert_eq!(verdict, ControlMessage::Registered);

    // Its player grants the relay no credit: no refusal can be written to it.
    const CONNECTS: u64 = 20;
    let player =
        blindrelay_client::internal::connect_relay_raw_with(relay.url(), localhost, no_credit())
            .await
            .unwrap();
    let mut request = ControlMessage::connect(key.host_id()).to_frame().to_vec();
    request.extend_from_slice(&hello_for(&key.host_id()));
    let mut streams = Vec::new();
    for _ in 0..CONNECTS {
        let (mut send, recv) = player.open_bi().await.unwrap();
        send.write_all(&request).await.unwrap();
        streams.push((send, recv));
    }
    settle(&relay, "every session refused", |stats| {
        stats.sessions_refused_unreachable >= CONNECTS
    })
    .await;
    let refused = Instant::now();
    // Everything those sessions held is back, though the player still reads nothing
    // and its connection is open: at once, not when the refusals' writes give up
    // (5 s later). (The honest session's own reservation stays while it runs.)
    let per_session = relay_config().limits.session_buffer();
    settle(&relay, "reservations given back", |stats| {
        stats.buffer_bytes_reserved == stats.sessions_active * per_session
    })
    .await;
    let released = refused.elapsed();
    assert!(
        released < Duration::from_secs(2),
        "the refusals' reservations came back {released:?} after they were counted"
    );
    assert!(
        player.close_reason().is_none(),
        "the attacker is still connected"
    );
    finishes(honest, 16 << 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_whose_challenge_is_never_taken_ends_with_its_connection() {
    init_tracing();
    let mut config = relay_config();
    config.limits.connections.unregistered_idle_timeout = Span(Duration::from_secs(1));
    let relay = Relay::spawn(config).unwrap();
    let honest = honest_session(&relay, 16 << 20).await;

    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut attackers = Vec::new();
    for _ in 0..8 {
        let connection = blindrelay_client::internal::connect_relay_raw_with(
            relay.url(),
            localhost,
            no_credit(),
        )
        .await
        .unwrap();
        let (mut send, recv) = connection.open_bi().await.unwrap();
        let key = SecretKey::generate().unwrap();
        send.write_all(&ControlMessage::register(key.host_id()).to_frame())
            .await
            .unwrap();
        // More than the relay asked for, parked behind the challenge it cannot write.
        let junk = tokio::spawn(async move {
            let _ = send.write_all(&vec![0x55; 1 << 20]).await;
            send
        });
        attackers.push((connection, recv, junk));
    }
    // The challenge write gives up at its deadline (5 s); the connection, with
    // nothing left on it, is closed as idle (1 s later).
    let started = Instant::now();
    for (connection, _recv, junk) in &attackers {
        let closed = tokio::time::timeout(PATIENCE, connection.closed())
            .await
            .expect("the relay closes a connection that never takes its challenge");
        match closed {
            quinn::ConnectionError::ApplicationClosed(close) => {
                assert_eq!(close.error_code, codes::close::IDLE.into());
            }
            other => panic!("expected an idle close, got {other}"),
        }
        junk.abort();
    }
    let closed = started.elapsed();
    assert!(
        closed < Duration::from_secs(9),
        "closed after {closed:?}: the 5 s write deadline and the 1 s idle timeout"
    );
    finishes(honest, 16 << 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_without_a_hello_never_reach_the_host() {
    init_tracing();
    let mut config = relay_config();
    config.limits.hosts.max_sessions = 4;
    let relay = Relay::spawn(config).unwrap();
    let host = start_host(relay.url()).await;
    let ticket = host.ticket().clone();
    let echo_host = spawn_echo_host(host);

    // Ten Connects for the host with no hello behind them, held open: before the
    // relay asked for the hello, each took one of the host's four slots while the
    // host waited for a hello that never came.
    let attacker = raw_connection(&relay).await;
    let connect = ControlMessage::connect(*ticket.host_id()).to_frame();
    let sent = Instant::now();
    let mut held = Vec::new();
    for _ in 0..10 {
        let (mut send, recv) = attacker.open_bi().await.unwrap();
        send.write_all(&connect).await.unwrap();
        held.push((send, recv));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // An honest player gets through at once, and moves its bytes exactly.
    let session = tokio::time::timeout(Duration::from_secs(2), player().connect(&ticket))
        .await
        .expect("the honest player is not held up")
        .expect("the honest player is served");
    let (mut read, mut write) = tokio::io::split(session);
    let (written, echoed) = tokio::join!(
        write_pattern(&mut write, 77, 1 << 20),
        read_pattern(&mut read, 77)
    );
    written.unwrap();
    assert_eq!(echoed.unwrap(), 1 << 20);
    settle(&relay, "hello-less Connects refused", |stats| {
        stats.sessions_refused_no_hello >= 10
    })
    .await;
    let refused = sent.elapsed();
    assert!(
        refused < Duration::from_secs(4),
        "refused {refused:?} after the Connects: the hello deadline is 2 s"
    );
    for (_, mut recv) in held {
        let answer = read_message(&mut recv).await;
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
    }
    echo_host.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_only_its_share_of_sessions() {
    init_tracing();
    let mut config = relay_config();
    config.limits.sessions.per_ip = 3;
    config.limits.sessions.per_ip_per_host = 2;
    let relay = Relay::spawn(config).unwrap();
    let hosts = [start_host(relay.url()).await, start_host(relay.url()).await];
    let ids: Vec<HostId> = hosts.iter().map(|host| *host.ticket().host_id()).collect();
    let _echo_hosts: Vec<_> = hosts.into_iter().map(spawn_echo_host).collect();

    let open = |connection: quinn::Connection, host_id: HostId| async move {
        let (mut send, mut recv) = connection.open_bi().await.unwrap();
        let mut request = ControlMessage::connect(host_id).to_frame().to_vec();
        request.extend_from_slice(&hello_for(&host_id));
        send.write_all(&request).await.unwrap();
        let answer = tokio::time::timeout(PATIENCE, read_message(&mut recv))
            .await
            .expect("an answer in time");
        (answer, send, recv)
    };
    let from = |ip: [u8; 4]| {
        let url = relay.url().clone();
        async move {
            blindrelay_client::internal::connect_relay_raw_from(&url, IpAddr::from(ip))
                .await
                .unwrap()
        }
    };
    let first = from([127, 0, 0, 1]).await;
    let mut held = Vec::new();
    // Two to the first host, then the third to it is one too many for that host...
    for _ in 0..2 {
        let (answer, send, recv) = open(first.clone(), ids[0]).await;
        assert!(
            matches!(answer, Some(ControlMessage::Connected { .. })),
            "{answer:?}"
        );
        held.push((send, recv));
    }
    let (answer, ..) = open(first.clone(), ids[0]).await;
    assert!(
        matches!(&answer, Some(ControlMessage::Error { code: ErrorCode::RateLimited, reason }) if reason.contains("too many sessions")),
        "{answer:?}"
    );
    // ... one to the second host fits the address's three, a fourth does not.
    let (answer, send, recv) = open(first.clone(), ids[1]).await;
    assert!(
        matches!(answer, Some(ControlMessage::Connected { .. })),
        "{answer:?}"
    );
    held.push((send, recv));
    let (answer, ..) = open(first.clone(), ids[1]).await;
    assert!(
        matches!(
            answer,
            Some(ControlMessage::Error {
                code: ErrorCode::RateLimited,
                ..
            })
        ),
        "{answer:?}"
    );
    // Another address is not affected.
    let second = from([127, 0, 0, 2]).await;
    let (answer, ..) = open(second, ids[0]).await;
    assert!(
        matches!(answer, Some(ControlMessage::Connected { .. })),
        "{answer:?}"
    );
    // A session that ends gives its place back.
    let (mut send, _recv) = held.pop().unwrap();
    send.reset(0u32.into()).unwrap();
    let again = tokio::time::timeout(PATIENCE, async {
        loop {
            let (answer, send, recv) = open(first.clone(), ids[1]).await;
            if matches!(answer, Some(ControlMessage::Connected { .. })) {
                break (send, recv);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(again.is_ok(), "the place came back");
}

/// `count` real QUIC Initials for `relay`, captured from real clients by a socket
/// that stands in for the relay: the socket (which reads nothing the relay answers
/// when they are sent from it), the Initials, and the clients, kept waiting.
async fn capture_initials(
    relay: &Relay,
    count: usize,
) -> (tokio::net::UdpSocket, Vec<Vec<u8>>, Vec<quinn::Connecting>) {
    let capture = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (endpoint, _) = blindrelay_client::internal::relay_endpoint_raw(
        relay.url(),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
    )
    .await
    .unwrap();
    let mut pending = Vec::new();
    let mut initials = Vec::new();
    let mut buf = vec![0u8; 2048];
    for _ in 0..count {
        pending.push(
            endpoint
                .connect(capture.local_addr().unwrap(), relay.url().host())
                .unwrap(),
        );
        let (len, _) = tokio::time::timeout(PATIENCE, capture.recv_from(&mut buf))
            .await
            .expect("a client's Initial")
            .unwrap();
        initials.push(buf[..len].to_vec());
    }
    (capture, initials, pending)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_handshakes_never_finished_sheds_no_host_and_locks_nobody_out() {
    let _flood = blindrelay_tests::one_flood_at_a_time().await;
    const CAP: u32 = 20;
    const HOSTS: usize = 10;
    const HALF_OPEN: usize = 300;
    init_tracing();
    let mut config = relay_config();
    config.limits.connections.max = CAP;
    config.limits.connections.max_handshakes = 64;
    config.limits.connections.retry_threshold = 16;
    config.limits.connections.handshake_timeout = Span(Duration::from_secs(1));
    let relay = Relay::spawn(config).unwrap();
    // Idle hosts, registered before the flood: the cap's own occupants.
    let mut hosts = Vec::new();
    for _ in 0..HOSTS {
        hosts.push(start_host(relay.url()).await);
    }
    let ticket = hosts[0].ticket().clone();
    let echo_host = spawn_echo_host(hosts.remove(0));

    // Real Initials that are never followed up: captured from real clients by a
    // socket that stands in for the relay, then sent to the relay from that socket,
    // which reads nothing the relay answers.
    let (trap, initials, pending) = capture_initials(&relay, HALF_OPEN).await;
    for initial in &initials {
        trap.send_to(initial, relay.local_addr()).await.unwrap();
    }
    settle(&relay, "the flood arrived", |stats| {
        stats.connections_retried > 0
    })
    .await;
    // Nobody who proved anything was shed for it, and abandoned handshakes go.
    settle(&relay, "abandoned handshakes dropped", |stats| {
        stats.handshakes_in_progress == 0
    })
    .await;
    let stats = relay.stats();
    assert_eq!(stats.connections_shed, 0, "{stats:?}");
    assert_eq!(stats.registered_hosts, HOSTS as u64, "{stats:?}");
    for host in &hosts {
        assert_eq!(host.state(), HostState::Registered);
    }
    // And an honest player still gets its session, byte-exact.
    let session = player().connect(&ticket).await.unwrap();
    let (mut read, mut write) = tokio::io::split(session);
    let (written, echoed) = tokio::join!(
        write_pattern(&mut write, 9, 1 << 20),
        read_pattern(&mut read, 9)
    );
    written.unwrap();
    assert_eq!(echoed.unwrap(), 1 << 20);
    drop(pending);
    echo_host.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_peers_that_grant_no_credit_send_does_not_grow_the_relay() {
    const ADDRESSES: u8 = 4;
    const PER_ADDRESS: u64 = 60;
    const CONNECTIONS: u64 = ADDRESSES as u64 * PER_ADDRESS;
    const JUNK: usize = 256 * 1024;
    let bin = blindrelay_tests::process::binaries();
    let relay = blindrelay_tests::process::Proc::start(
        &bin.join("blindrelayd"),
        &["--listen", "127.0.0.1:0"],
    );
    let url: blindrelay_client::RelayUrl = relay.value("relay url").parse().unwrap();

    // The connections first (their QUIC state is the relay's fixed cost per
    // connection, counted by `connections.max`), then what they send.
    let mut connections = Vec::new();
    for address in 0..ADDRESSES {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 2, 1 + address));
        for _ in 0..PER_ADDRESS {
            let connection =
                blindrelay_client::internal::connect_relay_raw_with(&url, ip, no_credit())
                    .await
                    .unwrap();
            connections.push(connection);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = process::rss_bytes(relay.pid());

    // Each connection registers on its first stream and asks for a session with an
    // offline host on two more, then sends far more than it was asked for on each,
    // and never lets the relay answer.
    let mut writers = tokio::task::JoinSet::new();
    for connection in &connections {
        for stream in 0..3 {
            let connection = connection.clone();
            writers.spawn(async move {
                let (mut send, _recv) = connection.open_bi().await.ok()?;
                let host_id = SecretKey::generate().unwrap().host_id();
                let mut first = if stream == 0 {
                    ControlMessage::register(host_id).to_frame().to_vec()
                } else {
                    let mut connect = ControlMessage::connect(host_id).to_frame().to_vec();
                    connect.extend_from_slice(&ANY_HELLO);
                    connect
                };
                first.extend_from_slice(&vec![0x55; JUNK]);
                let _ = tokio::time::timeout(PATIENCE, send.write_all(&first)).await;
                Some(())
            });
        }
    }
    // Watch the relay while they push.
    let mut peak = before;
    let deadline = Instant::now() + Duration::from_secs(6);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(process::rss_bytes(relay.pid()));
    }
    writers.shutdown().await;
    // A connection that has not paired a session may park at most its first receive
    // window (16 KiB); plus a fixed overhead for allocator slack and packet buffers.
    let bound = CONNECTIONS * (16 << 10);
    let overhead = 8 << 20;
    let growth = peak.saturating_sub(before);
    eprintln!("relay grew by {growth} bytes under {CONNECTIONS} connections (bound {bound})");
    assert!(
        growth <= bound + overhead,
        "relay grew by {growth} bytes, bound {bound} + overhead {overhead}"
    );
    drop(connections);
}

/// A host that takes its registration and then grants the relay no more credit on
/// its registration stream cannot be told `GoingAway`: a draining relay must not
/// wait for it (the write has its deadline), so SIGTERM to exit stays short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_cannot_be_told_does_not_hold_a_drain() {
    init_tracing();
    let relay = Relay::spawn(relay_config()).unwrap();
    let honest = honest_session(&relay, 1 << 20).await;
    // Just enough stream credit, read as it comes, to take the challenge and the
    // confirmation a few bytes at a time; after those, fewer bytes than a
    // `GoingAway` frame (8) fit.
    let mut tight = quinn::TransportConfig::default();
    tight.stream_receive_window(7u32.into());
    let connection = blindrelay_client::internal::connect_relay_raw_with(
        relay.url(),
        IpAddr::from([127, 0, 0, 1]),
        tight,
    )
    .await
    .expect("connects");
    let key = SecretKey::generate().unwrap();
    let (verdict, _send, _recv) = register_with(
        &connection,
        ControlMessage::register(key.host_id()),
        &key,
        &connection,
    )
    .await;
    assert!(matches!(verdict, ControlMessage::Registered), "{verdict:?}");
    // The honest session finishes, so nothing but the stuck host holds the drain.
    finishes(honest, 1 << 20).await;
    settle(&relay, "the honest session ends", |stats| {
        stats.sessions_active == 0
    })
    .await;

    let started = tokio::time::Instant::now();
    tokio::time::timeout(
        Duration::from_secs(60),
        relay.drain(Duration::from_secs(40)),
    )
    .await
    .expect("the drain returns");
    let took = started.elapsed();
    // The write deadline (5 s) and the wait for its acknowledgement (2 s), not the
    // 40 s drain timeout.
    assert!(took < Duration::from_secs(9), "the drain took {took:?}");
    drop(connection);
}

/// Counts the chunks the relay forwards towards hosts, and their bytes.
#[derive(Default)]
struct Chunks {
    count: std::sync::atomic::AtomicU64,
    bytes: std::sync::atomic::AtomicU64,
}

impl blindrelay_relay::SpliceTap for Chunks {
    fn observe(&self, direction: blindrelay_relay::Direction, chunk: &[u8]) {
        if direction == blindrelay_relay::Direction::PlayerToHost {
            self.count
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.bytes
                .fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Tiny writes, one Noise frame of a few bytes each, cost the relay a chunk of work
/// each unless they are joined: under a rate cap, tiny frames that arrive while the
/// bucket refills are forwarded together, and each chunk is charged at least 1 KiB,
/// so the relay handles at most about `rate / 1 KiB` chunks a second however small
/// the frames, while a session beside moves its bytes exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_frames_cost_the_relay_a_bounded_number_of_chunks_while_a_session_moves() {
    init_tracing();
    const RATE: u64 = 64 * 1024;
    let mut config = relay_config();
    config.limits.sessions.rate = blindrelay_relay::units::Rate(RATE);
    config.limits.sessions.burst = blindrelay_relay::units::ByteSize(4 * 1024);
    let relay = Relay::spawn(config).unwrap();
    let chunks = Arc::new(Chunks::default());
    assert!(relay.install_splice_tap(chunks.clone()).is_ok());
    // Beside it, a session under the same cap, moving 64 KiB each way.
    let honest = honest_session(&relay, 64 * 1024).await;

    let mut host = start_host(relay.url()).await;
    let ticket = host.ticket().clone();
    let sender = player();
    let (tiny, host_side) = tokio::join!(sender.connect(&ticket), host.accept());
    let (mut tiny, host_side) = (tiny.unwrap(), host_side.unwrap());
    let reader = tokio::spawn(async move {
        let (mut read, _write) = tokio::io::split(host_side);
        let mut buf = [0u8; 4096];
        while let Ok(n) = tokio::io::AsyncReadExt::read(&mut read, &mut buf).await {
            if n == 0 {
                break;
            }
        }
    });
    let before = chunks.count.load(std::sync::atomic::Ordering::Relaxed);
    // One byte a write, each flushed into a Noise frame of its own (about 21 bytes
    // on the wire), a few hundred a second for 3 s: some 4 KB/s, far under the cap
    // in bytes, so only the per-chunk charge can slow them, and nothing joins them
    // but the wait it imposes.
    let window = Duration::from_secs(3);
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < window {
        if tiny.write_all(b"x").await.is_err() || tiny.flush().await.is_err() {
            break;
        }
        sent += 1;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let forwarded = chunks.count.load(std::sync::atomic::Ordering::Relaxed) - before;
    // At 1 KiB a chunk the cap passes 64 chunks a second, plus the burst's 4 and the
    // honest session's own chunks (its 64 KiB are at least 16 more).
    let bound = 3 * (RATE / 1024) + 4 + 64 + 16;
    eprintln!("{sent} one-byte frames sent; {forwarded} chunks forwarded towards hosts");
    assert!(
        sent > bound * 3 / 2,
        "the sender wrote many more frames ({sent}) than the bound"
    );
    assert!(
        forwarded <= bound,
        "{forwarded} chunks forwarded, bound {bound}"
    );
    drop(tiny);
    reader.abort();
    finishes(honest, 64 * 1024).await;
}

/// Refusals nobody takes, hello-less Connects and one address asking for more
/// sessions than it may hold, all at once against a real `blindrelayd`: what the
/// relay holds for them stays within the session budget the admitted ones reserve
/// plus a fixed overhead, and an honest session beside moves its bytes exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_hello_less_connects_and_greedy_addresses_stay_within_the_budget() {
    const PER_ADDRESS_SESSIONS: u64 = 64; // sessions.per_ip, the default
    const SESSION_BUFFER: u64 = 2 * ((256 << 10) + (16 << 10)); // sessions.window + a chunk, each way
    let bin = blindrelay_tests::process::binaries();
    let relay = blindrelay_tests::process::Proc::start(
        &bin.join("blindrelayd"),
        &["--listen", "127.0.0.1:0", "--hosts-max-sessions", "200"],
    );
    let url: blindrelay_client::RelayUrl = relay.value("relay url").parse().unwrap();
    // The victim: a host that serves everyone, and an honest session to it.
    let victim = host_over(&url, TransportPreference::Quic).await;
    let victim_id = *victim.host_id();
    let ticket = victim.ticket().clone();
    let _echo = spawn_echo_host(victim);
    let honest = player().connect(&ticket).await.expect("honest session");
    let (mut honest_read, mut honest_write) = tokio::io::split(honest);
    let honest_task = tokio::spawn(async move {
        let (sent, echoed) = tokio::join!(
            write_pattern(&mut honest_write, 77, 4 << 20),
            read_pattern(&mut honest_read, 77)
        );
        sent.unwrap();
        echoed.unwrap()
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = process::rss_bytes(relay.pid());

    let mut held = Vec::new();
    let mut tasks = tokio::task::JoinSet::new();
    // Refusals nobody takes: Connects for hosts that are not there, from
    // connections that grant the relay no credit for the answer.
    for address in 0..4u8 {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 3, 1 + address));
        for _ in 0..10 {
            let connection =
                blindrelay_client::internal::connect_relay_raw_with(&url, ip, no_credit())
                    .await
                    .unwrap();
            for _ in 0..3 {
                let connection = connection.clone();
                tasks.spawn(async move {
                    let (mut send, recv) = connection.open_bi().await.ok()?;
                    let host_id = SecretKey::generate().unwrap().host_id();
                    let mut connect = ControlMessage::connect(host_id).to_frame().to_vec();
                    connect.extend_from_slice(&ANY_HELLO);
                    let _ = send.write_all(&connect).await;
                    Some((send, recv))
                });
            }
            held.push(connection);
        }
    }
    // Connects to the victim with no hello behind them, held open.
    let silent =
        blindrelay_client::internal::connect_relay_raw_from(&url, IpAddr::from([127, 0, 3, 9]))
            .await
            .unwrap();
    for _ in 0..40 {
        let connection = silent.clone();
        tasks.spawn(async move {
            let (mut send, recv) = connection.open_bi().await.ok()?;
            let _ = send
                .write_all(&ControlMessage::connect(victim_id).to_frame())
                .await;
            Some((send, recv))
        });
    }
    // The refusals and the hello-less Connects alone, before any session is
    // admitted: nothing but their connections' first windows (16 KiB each, 41
    // connections) and a fixed overhead, so that the budget the admitted sessions
    // reserve below cannot hide what these hold.
    let mut alone = before;
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        alone = alone.max(process::rss_bytes(relay.pid()));
    }
    let growth = alone.saturating_sub(before);
    let (bound, overhead) = (41 * (16 << 10), 8 << 20);
    eprintln!("refusals and hello-less Connects grew the relay by {growth} bytes");
    assert!(
        growth <= bound + overhead,
        "refusals and hello-less Connects grew the relay by {growth} bytes, \
         bound {bound} + overhead {overhead}"
    );
    // One address asking for twice the sessions it may hold, each with a hello, and
    // reading nothing: the first 64 are admitted (and reserve their buffers), the
    // rest refused.
    let greedy =
        blindrelay_client::internal::connect_relay_raw_from(&url, IpAddr::from([127, 0, 3, 10]))
            .await
            .unwrap();
    for _ in 0..2 * PER_ADDRESS_SESSIONS {
        let connection = greedy.clone();
        tasks.spawn(async move {
            let (mut send, recv) = connection.open_bi().await.ok()?;
            let mut connect = ControlMessage::connect(victim_id).to_frame().to_vec();
            connect.extend_from_slice(&hello_for(&victim_id));
            let _ = send.write_all(&connect).await;
            Some((send, recv))
        });
    }
    let mut peak = before;
    let deadline = Instant::now() + Duration::from_secs(6);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(process::rss_bytes(relay.pid()));
    }
    // The greedy address's admitted sessions reserve their buffers from the budget;
    // the refused and the hello-less ones hold nothing but their connections' first
    // windows (16 KiB each); a fixed overhead covers allocator slack, packet
    // buffers and the tasks.
    let bound = PER_ADDRESS_SESSIONS * SESSION_BUFFER + 42 * (16 << 10);
    let overhead = 16 << 20;
    let growth = peak.saturating_sub(before);
    eprintln!("relay grew by {growth} bytes (bound {bound} + overhead {overhead})");
    assert!(
        growth <= bound + overhead,
        "relay grew by {growth} bytes, bound {bound} + overhead {overhead}"
    );
    let echoed = tokio::time::timeout(PATIENCE, honest_task)
        .await
        .expect("the honest session finishes")
        .unwrap();
    assert_eq!(
        echoed,
        4 << 20,
        "the honest session moved every byte exactly"
    );
    tasks.shutdown().await;
    drop((held, silent, greedy));
}

/// A flood of handshakes that are started and then abandoned (each client gone
/// after its first packet), against a real `blindrelayd`: the relay's memory grows
/// by a fixed overhead at most, whatever the flood's size, since it holds state for
/// at most `retry_threshold` of them (beyond, a stateless Retry) and drops each at
/// its handshake deadline; and a host registers meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_abandoned_handshakes_costs_the_relay_a_fixed_overhead() {
    let _flood = blindrelay_tests::one_flood_at_a_time().await;
    const FLOOD: usize = 600;
    let bin = blindrelay_tests::process::binaries();
    let relay = blindrelay_tests::process::Proc::start(
        &bin.join("blindrelayd"),
        &["--listen", "127.0.0.1:0"],
    );
    let url: blindrelay_client::RelayUrl = relay.value("relay url").parse().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = process::rss_bytes(relay.pid());
    let mut peak = before;
    // Batches of clients from a few addresses (the per-address rate would refuse
    // one address's flood before the handshake; this floods the handshakes).
    for batch in 0..(FLOOD / 50) {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 4, 1 + (batch % 8) as u8));
        let mut abandoned = Vec::new();
        for _ in 0..50 {
            let (endpoint, addr) = blindrelay_client::internal::relay_endpoint_raw(&url, ip)
                .await
                .unwrap();
            let connecting = endpoint.connect(addr, url.host()).unwrap();
            abandoned.push((endpoint, connecting));
        }
        // Long enough for every Initial to leave, then every client vanishes.
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(abandoned);
        peak = peak.max(process::rss_bytes(relay.pid()));
    }
    // A host still gets in while the handshakes are held.
    let host = host_over(&url, TransportPreference::Quic).await;
    assert_eq!(host.state(), blindrelay_client::HostState::Registered);
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(process::rss_bytes(relay.pid()));
    }
    let growth = peak.saturating_sub(before);
    let overhead = 16 << 20;
    eprintln!("relay grew by {growth} bytes under {FLOOD} abandoned handshakes");
    assert!(
        growth <= overhead,
        "relay grew by {growth} bytes, overhead {overhead}"
    );
    drop(host);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unidirectional_streams_from_a_quic_client_are_stopped_unread() {
    // The transport parameters allow browsers' HTTP/3 a few unidirectional streams;
    // on the relay's own protocol each is stopped at once and no more are granted.
    let relay = start_relay();
    let connection = raw_connection(&relay).await;
    let mut stray = connection
        .open_uni()
        .await
        .expect("the first few are allowed");
    stray.write_all(b"not HTTP/3").await.unwrap();
    let stopped = tokio::time::timeout(PATIENCE, stray.stopped())
        .await
        .expect("stopped in time");
    assert_eq!(
        stopped.expect("stopped, not lost"),
        Some(blindrelay_protocol::codes::stream::PROTOCOL_VIOLATION.into())
    );
    // Beyond the initial credit, none is granted: opening waits forever.
    for _ in 0..2 {
        let mut more = connection.open_uni().await.unwrap();
        let _ = more.write_all(b"x").await;
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(500), connection.open_uni())
            .await
            .is_err(),
        "no further unidirectional stream is granted"
    );
    // The connection still serves its purpose.
    let host = start_host(relay.url()).await;
    let answer = raw_exchange(
        &connection,
        &ControlMessage::connect(*host.host_id()).to_frame(),
        true,
    )
    .await;
    assert!(answer.is_some(), "the connection still answers");
}

/// QUIC clients that send DATAGRAM frames as fast as the relay lets them, which the
/// protocol never reads: the relay announces a window of one tiny datagram, so each
/// connection parks at most one (and the packet buffer it came in) instead of
/// quinn's default 1.25 MB, while an honest session moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_datagrams_nobody_reads_do_not_grow_the_relay() {
    const ADDRESSES: u8 = 4;
    const PER_ADDRESS: usize = 16;
    // One of them is closed first, for a datagram larger than the relay parks.
    const CONNECTIONS: u64 = ADDRESSES as u64 * PER_ADDRESS as u64 - 1;
    let bin = blindrelay_tests::process::binaries();
    let relay = blindrelay_tests::process::Proc::start(
        &bin.join("blindrelayd"),
        &["--listen", "127.0.0.1:0"],
    );
    let url: blindrelay_client::RelayUrl = relay.value("relay url").parse().unwrap();
    let honest = honest_session_at(
        &url,
        TransportPreference::Quic,
        TransportPreference::Quic,
        8 << 20,
    )
    .await;
    let mut connections = Vec::new();
    for address in 0..ADDRESSES {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 6, 1 + address));
        for _ in 0..PER_ADDRESS {
            let connection = blindrelay_client::internal::connect_relay_raw_with(
                &url,
                ip,
                quinn::TransportConfig::default(),
            )
            .await
            .unwrap();
            connections.push(connection);
        }
    }
    // The relay announces datagrams of a few bytes (quinn's default would be the
    // largest the path carries), and closes a connection that sends one larger than
    // it parks.
    let largest = connections[0].max_datagram_size().expect("announced");
    assert!(
        largest <= 64,
        "the relay announces datagrams of {largest} bytes"
    );
    let oversize = connections.pop().unwrap();
    oversize.send_datagram(vec![0x44; largest].into()).unwrap();
    let closed = tokio::time::timeout(PATIENCE, oversize.closed()).await;
    assert!(
        matches!(closed, Ok(quinn::ConnectionError::ConnectionClosed(ref close))
            if close.error_code == quinn::TransportErrorCode::PROTOCOL_VIOLATION),
        "{closed:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = process::rss_bytes(relay.pid());

    let mut senders = tokio::task::JoinSet::new();
    for connection in &connections {
        let connection = connection.clone();
        senders.spawn(async move {
            // Small enough to be parked (quinn counts 32 bytes more for each).
            let datagram = bytes::Bytes::from(vec![0x44; 16]);
            let started = Instant::now();
            let mut sent = 0u64;
            while started.elapsed() < Duration::from_secs(3) {
                if connection
                    .send_datagram_wait(datagram.clone())
                    .await
                    .is_err()
                {
                    break;
                }
                sent += 1;
            }
            sent
        });
    }
    let mut peak = before;
    let mut sent = 0;
    loop {
        tokio::select! {
            done = senders.join_next() => match done {
                Some(count) => sent += count.unwrap(),
                None => break,
            },
            () = tokio::time::sleep(Duration::from_millis(50)) => {
                peak = peak.max(process::rss_bytes(relay.pid()));
            }
        }
    }
    peak = peak.max(process::rss_bytes(relay.pid()));
    let growth = peak.saturating_sub(before);
    eprintln!("relay grew by {growth} bytes while {CONNECTIONS} connections sent {sent} datagrams");
    // At most one parked datagram per connection, and the packet buffer (at most
    // one receive batch, 64 KiB) it keeps; plus a fixed overhead.
    let bound = CONNECTIONS * (64 << 10);
    let overhead = 8 << 20;
    assert!(
        growth <= bound + overhead,
        "relay grew by {growth} bytes, bound {bound} + overhead {overhead}"
    );
    // The attack went through the connections the whole time: none was closed.
    assert!(connections.iter().all(|c| c.close_reason().is_none()));
    finishes(honest, 8 << 20).await;
    drop(connections);
}

/// The QUIC door's cap on handshakes in progress, reached for real: Initials that
/// are answered and never followed up hold `max_handshakes`; beyond it, a flood of
/// Initials from another socket gets nothing back at all (an answer would be
/// reflected at whoever's address they carry), each counted, while a client that
/// completes its handshake once the cap has room again gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initials_beyond_the_handshake_cap_are_dropped_unanswered() {
    const CAP: u32 = 12;
    const FLOOD: usize = 30;
    init_tracing();
    let mut config = relay_config();
    config.limits.connections.max_handshakes = CAP;
    // No Retry: the cap itself is what this test reaches.
    config.limits.connections.retry_threshold = u32::MAX;
    config.limits.connections.handshake_timeout = Span(Duration::from_secs(4));
    let relay = Relay::spawn(config).unwrap();

    // Real Initials, captured from real clients by a socket standing in for the relay.
    let (_capture, initials, pending) = capture_initials(&relay, CAP as usize + FLOOD).await;
    let mut buf = vec![0u8; 2048];
    // The first CAP from one socket: answered, never followed up.
    let filler = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for initial in &initials[..CAP as usize] {
        filler.send_to(initial, relay.local_addr()).await.unwrap();
    }
    settle(&relay, "the cap filled", |stats| {
        stats.handshakes_in_progress == u64::from(CAP)
    })
    .await;
    let before = relay.stats();
    // The rest from another socket: not one datagram comes back to it.
    let flooder = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for initial in &initials[CAP as usize..] {
        flooder.send_to(initial, relay.local_addr()).await.unwrap();
    }
    settle(&relay, "the flood counted", |stats| {
        stats.connections_at_capacity - before.connections_at_capacity >= FLOOD as u64
    })
    .await;
    let answer =
        tokio::time::timeout(Duration::from_millis(500), flooder.recv_from(&mut buf)).await;
    assert!(answer.is_err(), "the relay answered the flood: {answer:?}");
    let stats = relay.stats();
    assert_eq!(stats.handshakes_in_progress, u64::from(CAP));
    assert_eq!(stats.connections_accepted, before.connections_accepted);
    // The held handshakes are abandoned at their deadline, and a real client gets in.
    settle(&relay, "abandoned handshakes dropped", |stats| {
        stats.handshakes_in_progress == 0
    })
    .await;
    let host = start_host(relay.url()).await;
    assert_eq!(host.state(), HostState::Registered);
    drop(pending);
}

/// A player that sends its bytes one per Noise frame, one way, with no rate cap to
/// slow it: the relay forwards them whole, but in few chunks, since what a one-way
/// run of tiny frames leaves in the stream is taken together (every 5 ms once the
/// run is long), and every byte reaches the host in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_way_run_of_tiny_frames_reaches_the_host_whole_in_few_chunks() {
    init_tracing();
    let relay = Relay::spawn(relay_config()).unwrap();
    let chunks = Arc::new(Chunks::default());
    assert!(relay.install_splice_tap(chunks.clone()).is_ok());
    let mut host = start_host(relay.url()).await;
    let ticket = host.ticket().clone();
    let sender = player();
    let (tiny, host_side) = tokio::join!(sender.connect(&ticket), host.accept());
    let (mut tiny, host_side) = (tiny.unwrap(), host_side.unwrap());
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = received.clone();
    let reader = tokio::spawn(async move {
        let (mut read, _write) = tokio::io::split(host_side);
        let mut buf = [0u8; 4096];
        let mut next = 0u8;
        while let Ok(n) = tokio::io::AsyncReadExt::read(&mut read, &mut buf).await {
            if n == 0 {
                break;
            }
            for byte in &buf[..n] {
                assert_eq!(*byte, next, "the bytes arrive in order");
                next = next.wrapping_add(1);
            }
            counted.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let window = Duration::from_secs(3);
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < window {
        if tiny.write_all(&[sent as u8]).await.is_err() || tiny.flush().await.is_err() {
            break;
        }
        sent += 1;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Every byte arrives: a batch waits 5 ms, not more.
    let arrived = tokio::time::timeout(Duration::from_secs(2), async {
        while received.load(std::sync::atomic::Ordering::Relaxed) < sent {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let got = received.load(std::sync::atomic::Ordering::Relaxed);
    assert!(arrived.is_ok(), "{got} of {sent} bytes reached the host");
    let forwarded = chunks.count.load(std::sync::atomic::Ordering::Relaxed);
    let bytes = chunks.bytes.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("{sent} one-byte frames ({bytes} bytes of ciphertext) in {forwarded} chunks");
    // Each frame is its byte, a 16-byte tag and a 2-byte length on the wire.
    assert!(
        bytes >= sent * 19,
        "{bytes} bytes forwarded for {sent} frames"
    );
    // The run's first 64 one at a time, then a batch per 5 ms of the run (and a
    // few the timings of a loaded machine may add).
    let elapsed = started.elapsed().as_millis() as u64;
    let bound = 64 + elapsed / 5 + 32;
    assert!(
        sent > bound * 3 / 2,
        "the sender wrote many more frames ({sent}) than the bound"
    );
    assert!(
        forwarded <= bound,
        "{forwarded} chunks forwarded, bound {bound}"
    );
    drop(tiny);
    reader.abort();
}
