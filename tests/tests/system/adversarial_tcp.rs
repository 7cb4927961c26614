//! Adversaries on the relay's TCP port (TLS over TCP and WebSocket), each next to
//! honest sessions on QUIC and on a stream transport that must keep moving their
//! bytes exactly: a flood of half-open TCP connections, a player that never reads
//! its socket, and garbage stream frames inside WebSocket messages. Each offender
//! is cut with its own count, and the relay's gauges come back down.
//!
//! Slowloris on the TLS handshake and on the HTTP upgrade, text and oversize
//! WebSocket messages and broken framing over plain TLS are in `transports.rs`.

use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use blindrelay_client::{HostAgent, HostState, SecretKey, TransportPreference};
use blindrelay_protocol::stream_frame::StreamFrame;
use blindrelay_protocol::ControlMessage;
use blindrelay_relay::units::Span;
use blindrelay_relay::{Limits, Relay};
use blindrelay_tests::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_tungstenite::tungstenite::Message;

use crate::adversarial::{finishes, hello_for, honest_session_over, settle};
use crate::raw_tls::{client_hello, tcp_from, tls_to, upgrade};

/// Bytes each honest session echoes.
const HONEST: u64 = 8 << 20;

fn relay_with(set: impl FnOnce(&mut Limits)) -> Relay {
    init_tracing();
    let mut config = relay_config();
    set(&mut config.limits);
    Relay::spawn(config).expect("relay starts")
}

/// Opens `count` TCP connections to the relay from `address_of(i)`; every other one
/// sends the first half of a real ClientHello, the rest nothing. Returns a task per
/// connection that yields when, after the flood started, the relay ended it.
async fn half_open_flood(
    relay: &Relay,
    count: usize,
    address_of: impl Fn(usize) -> IpAddr,
) -> tokio::task::JoinSet<Duration> {
    let hello = client_hello(blindrelay_protocol::ALPN);
    let half = hello[..hello.len() / 2].to_vec();
    let started = Instant::now();
    let mut ends = tokio::task::JoinSet::new();
    for i in 0..count {
        // The kernel completes a TCP handshake before the relay accepts it, so the
        // connect succeeds even where the relay then refuses the connection.
        let mut tcp = tcp_from(relay.tcp_addr().unwrap(), address_of(i))
            .await
            .expect("the kernel takes the connection");
        if i % 2 == 0 {
            tcp.write_all(&half).await.expect("half a ClientHello");
        }
        ends.spawn(async move {
            let mut buf = [0u8; 1024];
            let read = tokio::time::timeout(PATIENCE, tcp.read(&mut buf))
                .await
                .expect("a half-open connection outlived the deadline");
            // Closed or reset: the relay never answers half a ClientHello.
            assert!(
                matches!(read, Ok(0) | Err(_)),
                "the relay answered {read:?}"
            );
            started.elapsed()
        });
    }
    ends
}

/// Waits for every connection of a flood to end and returns when the last did.
async fn last_end(mut ends: tokio::task::JoinSet<Duration>) -> Duration {
    let mut last = Duration::ZERO;
    while let Some(ended) = ends.join_next().await {
        last = last.max(ended.unwrap());
    }
    last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_tcp_floods_hit_the_address_and_handshake_caps_and_are_cut_at_the_deadline() {
    const PER_IP: u32 = 8;
    const HANDSHAKES: u32 = 12;
    const FLOOD: usize = 40;
    let deadline = Duration::from_secs(2);
    let relay = relay_with(|limits| {
        limits.connections.per_ip = PER_IP;
        limits.connections.max_tcp_handshakes = HANDSHAKES;
        limits.connections.handshake_timeout = Span(deadline);
    });
    let quic = honest_session_over(
        &relay,
        TransportPreference::Quic,
        TransportPreference::Quic,
        HONEST,
    )
    .await;
    let tcp = honest_session_over(
        &relay,
        TransportPreference::Tcp,
        TransportPreference::Tcp,
        HONEST,
    )
    .await;
    let before = relay.stats();
    assert_eq!(before.handshakes_in_progress, 0);

    // From one address: the first PER_IP are let in to handshake, the rest are
    // closed at once, before any TLS; the ones let in are cut at the deadline.
    let flooder = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9));
    let last = last_end(half_open_flood(&relay, FLOOD, |_| flooder).await).await;
    assert!(
        last >= deadline - Duration::from_millis(100) && last < deadline * 3,
        "the last half-open connection ended after {last:?}, deadline {deadline:?}"
    );
    // The client sees its connection end a moment before the relay's task that cut
    // it has counted it: the counts are waited for, and must then be exact.
    settle(&relay, "the per-address flood counted", |s| {
        s.connections_handshake_timed_out - before.connections_handshake_timed_out
            >= u64::from(PER_IP)
    })
    .await;
    let stats = relay.stats();
    assert_eq!(
        stats.connections_over_address_cap - before.connections_over_address_cap,
        (FLOOD - PER_IP as usize) as u64
    );
    assert_eq!(
        stats.connections_handshake_timed_out - before.connections_handshake_timed_out,
        u64::from(PER_IP)
    );

    // From many addresses: the handshakes in progress stop at their cap.
    settle(&relay, "the handshakes given back", |s| {
        s.handshakes_in_progress == 0
    })
    .await;
    let before = relay.stats();
    let many = |i: usize| IpAddr::V4(Ipv4Addr::new(127, 0, 3, 1 + i as u8));
    let last = last_end(half_open_flood(&relay, FLOOD, many).await).await;
    assert!(last < deadline * 3, "the last ended after {last:?}");
    settle(&relay, "the many-address flood counted", |s| {
        s.connections_handshake_timed_out - before.connections_handshake_timed_out
            >= u64::from(HANDSHAKES)
    })
    .await;
    let stats = relay.stats();
    assert_eq!(
        stats.connections_at_capacity - before.connections_at_capacity,
        (FLOOD - HANDSHAKES as usize) as u64
    );
    assert_eq!(
        stats.connections_handshake_timed_out - before.connections_handshake_timed_out,
        u64::from(HANDSHAKES)
    );
    settle(&relay, "the flood's places given back", |s| {
        s.handshakes_in_progress == 0 && s.connections_open == before.connections_open
    })
    .await;

    // The honest sessions moved every byte exactly, and a new one gets in.
    finishes(quic, HONEST).await;
    finishes(tcp, HONEST).await;
    let fresh = honest_session_over(
        &relay,
        TransportPreference::Tcp,
        TransportPreference::Tcp,
        1 << 20,
    )
    .await;
    finishes(fresh, 1 << 20).await;
}

/// A byte stream whose reads never complete: a peer that has stopped reading its
/// socket, so that its kernel's receive buffer fills and its TCP window closes.
struct NeverReads<S>(S);

impl<S: Unpin> AsyncRead for NeverReads<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Pending
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for NeverReads<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_on_tcp_that_never_reads_costs_one_buffer_and_is_cut_at_the_stall_timeout() {
    let relay = relay_with(|limits| limits.sessions.stall_timeout = Span(Duration::from_secs(1)));
    let session_buffer = Limits::unlimited().session_buffer();
    let quic = honest_session_over(
        &relay,
        TransportPreference::Quic,
        TransportPreference::Quic,
        HONEST,
    )
    .await;
    let tcp = honest_session_over(
        &relay,
        TransportPreference::Tcp,
        TransportPreference::Tcp,
        HONEST,
    )
    .await;
    assert_eq!(relay.stats().buffer_bytes_reserved, 2 * session_buffer);

    // A host that answers its session with an endless stream of bytes.
    let mut flooder = HostAgent::start(host_config(SecretKey::generate().unwrap(), relay.url()))
        .expect("host agent starts");
    wait_for_state(&flooder, |state| *state == HostState::Registered).await;
    let host_id = *flooder.host_id();
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

    // A player that asks for the session over TLS and never reads a byte after its
    // handshake, not even the relay's answer.
    let tcp_socket = tcp_from(relay.tcp_addr().unwrap(), IpAddr::V4(Ipv4Addr::LOCALHOST))
        .await
        .unwrap();
    let tls = tls_to(tcp_socket, blindrelay_protocol::ALPN).await;
    let config = blindrelay_transport::Config {
        // Its own timers must not end the connection first.
        idle_timeout: PATIENCE * 2,
        ..Default::default()
    };
    let (mut send, _recv, _connection) = blindrelay_transport::framed(NeverReads(tls), config);
    let mut request = ControlMessage::connect(host_id).to_frame().to_vec();
    request.extend_from_slice(&hello_for(&host_id));
    send.write_all(&request).await.unwrap();

    settle(&relay, "the session opened", |s| s.sessions_active == 3).await;
    // Its one session's buffer, and nothing more, while the flood is stuck.
    assert_eq!(relay.stats().buffer_bytes_reserved, 3 * session_buffer);
    let (sent, err) = tokio::time::timeout(PATIENCE, flood)
        .await
        .expect("the relay cuts the flood off")
        .unwrap();
    assert!(err.contains("stall"), "the host is told why: {err}");
    // What the host got rid of: the windows on its way and the sockets' buffers,
    // never the stream.
    assert!(sent < 32 << 20, "the flooder got rid of {sent} bytes");
    let stats = relay.stats();
    assert!(
        stats.bytes_host_to_player < 32 << 20,
        "the relay forwarded {} bytes to a player that reads nothing",
        stats.bytes_host_to_player
    );
    settle(&relay, "the stall counted and its buffer given back", |s| {
        s.sessions_ended_stalled == 1 && s.buffer_bytes_reserved == 2 * session_buffer
    })
    .await;
    finishes(quic, HONEST).await;
    finishes(tcp, HONEST).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_frames_inside_websocket_messages_end_that_connection_only() {
    // Longer than the test waits for a bad connection to end: a relay that skipped
    // garbage would end these connections only at this deadline, and fail the test.
    let first_message = Duration::from_secs(20);
    let relay = relay_with(|limits| {
        limits.connections.first_message_timeout = Span(first_message);
    });
    let quic = honest_session_over(
        &relay,
        TransportPreference::Quic,
        TransportPreference::Quic,
        HONEST,
    )
    .await;
    let ws = honest_session_over(
        &relay,
        TransportPreference::WebSocket,
        TransportPreference::WebSocket,
        HONEST,
    )
    .await;
    let target = start_host(relay.url()).await;
    let host_id = *target.host_id();
    let _target_echo = spawn_echo_host(target);
    let before = relay.stats();

    // A Connect and its hello in one DATA frame, then an unknown frame.
    let mut request = ControlMessage::connect(host_id).to_frame().to_vec();
    request.extend_from_slice(&hello_for(&host_id));
    let mut after_connect = Vec::new();
    StreamFrame::Data(request.into()).encode(&mut after_connect);
    after_connect.extend_from_slice(&[0x09, 0xff, 0xff, 0xff]);
    for garbage in [
        // An unknown stream-frame type, first thing.
        vec![0x09, 0xff, 0xff, 0xff],
        // A DATA frame of length zero, which no writer sends.
        vec![0x00, 0x00, 0x00],
        // An unknown frame behind a valid Connect, in the same message.
        after_connect,
    ] {
        let tcp = tcp_from(relay.tcp_addr().unwrap(), IpAddr::V4(Ipv4Addr::LOCALHOST))
            .await
            .unwrap();
        let tls = tls_to(tcp, blindrelay_transport::websocket::HTTP_ALPN).await;
        let mut socket = upgrade(tls).await.expect("upgraded");
        let started = Instant::now();
        socket
            .send(Message::binary(garbage))
            .await
            .expect("the message goes out");
        let ended = tokio::time::timeout(PATIENCE, async {
            while let Some(Ok(message)) = socket.next().await {
                if message.is_close() {
                    break;
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "the relay ends the connection");
        assert!(
            started.elapsed() < first_message / 4,
            "ended by the garbage, not by a deadline: {:?}",
            started.elapsed()
        );
    }
    settle(&relay, "the bad connections released", |s| {
        s.connections_open == before.connections_open && s.sessions_active <= 2
    })
    .await;
    // The honest sessions moved every byte exactly; every host is still there.
    finishes(quic, HONEST).await;
    finishes(ws, HONEST).await;
    assert_eq!(relay.stats().registered_hosts, 3);
}

/// A relay process on loopback, for the tests that measure its resident memory.
fn relay_process(args: &[&str]) -> (process::Proc, blindrelay_client::RelayUrl) {
    let bin = process::binaries();
    let mut all = vec!["--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let relay = process::Proc::start(&bin.join("blindrelayd"), &all);
    let url = relay.value("relay url").parse().unwrap();
    (relay, url)
}

/// The relay's resident memory at its highest while `work` runs, sampled every
/// 50 ms, and what `work` returned.
async fn peak_rss_during<T>(pid: u32, work: impl std::future::Future<Output = T>) -> (u64, T) {
    let mut peak = process::rss_bytes(pid);
    tokio::pin!(work);
    let mut every = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            done = &mut work => return (peak.max(process::rss_bytes(pid)), done),
            _ = every.tick() => peak = peak.max(process::rss_bytes(pid)),
        }
    }
}

/// WebSocket clients that never read their socket and send nothing but pings: each
/// ping the relay reads owes a pong that cannot leave. The owed pongs wait in one
/// slot and the pinger is cut off after its allowance, so the relay stays flat
/// (before, one such client grew it by gigabytes) while an honest session moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_pings_whose_pongs_are_never_read_do_not_grow_the_relay() {
    const PINGERS: usize = 8;
    let (relay, url) = relay_process(&[]);
    let honest = crate::adversarial::honest_session_at(
        &url,
        TransportPreference::WebSocket,
        TransportPreference::WebSocket,
        HONEST,
    )
    .await;
    let relay_addr = std::net::SocketAddr::new(url.host().parse().unwrap(), url.port());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = process::rss_bytes(relay.pid());

    let mut pingers = tokio::task::JoinSet::new();
    for i in 0..PINGERS {
        let local = IpAddr::V4(Ipv4Addr::new(127, 0, 5, 1 + i as u8));
        let tcp = tcp_from(relay_addr, local).await.unwrap();
        let tls = tls_to(tcp, blindrelay_transport::websocket::HTTP_ALPN).await;
        let socket = upgrade(tls).await.expect("upgraded");
        pingers.spawn(async move {
            // Never read: only the writing half is used, and the reading half is
            // kept so that the socket stays open.
            let (mut write, _read) = socket.split();
            let started = Instant::now();
            let mut sent = 0u64;
            let ping = Message::Ping(vec![0x77; 125].into());
            // Batches of pings, for at most 4 s or until the relay cuts it off.
            while started.elapsed() < Duration::from_secs(4) {
                let mut batch =
                    futures_util::stream::iter(std::iter::repeat_n(ping.clone(), 256).map(Ok));
                if write.send_all(&mut batch).await.is_err() {
                    return (sent, Some(started.elapsed()));
                }
                sent += 256 * 125;
            }
            (sent, None)
        });
    }
    let (peak, ends) = peak_rss_during(relay.pid(), async {
        let mut ends = Vec::new();
        while let Some(end) = pingers.join_next().await {
            ends.push(end.unwrap());
        }
        ends
    })
    .await;
    let growth = peak.saturating_sub(before);
    let pinged: u64 = ends.iter().map(|(sent, _)| sent).sum();
    eprintln!("relay grew by {growth} bytes while {PINGERS} clients pinged {pinged} bytes");
    // Each pinger may make the relay hold its WebSocket buffers (a write buffer of
    // at most MAX_WRITE_BUFFER and a read buffer) until it is cut; plus a fixed
    // overhead for allocator slack.
    let bound =
        PINGERS as u64 * (blindrelay_transport::websocket::MAX_WRITE_BUFFER as u64 + (256 << 10));
    let overhead = 8 << 20;
    assert!(
        growth <= bound + overhead,
        "relay grew by {growth} bytes, bound {bound} + overhead {overhead}"
    );
    for (sent, cut) in &ends {
        let cut = cut.unwrap_or_else(|| panic!("a pinger sent {sent} bytes and was never cut"));
        assert!(
            cut < Duration::from_secs(3),
            "a pinger was cut after {cut:?}"
        );
    }
    finishes(honest, HONEST).await;
}

/// Silent TCP sockets from many addresses, kept open and opened again as the relay
/// cuts them: they hold the TCP door's handshakes at most per address
/// (`tcp_handshakes_per_ip`) and each for the ClientHello deadline only, and never
/// QUIC's, so that fresh QUIC and TLS clients from other addresses all get in
/// while honest sessions on both move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_tcp_sockets_lock_out_neither_quic_nor_tls_clients() {
    const ATTACKERS: u8 = 12;
    const SOCKETS_PER_ATTACKER: usize = 24;
    const PER_IP: u32 = 4;
    const FRESH: usize = 12;
    let hello = Duration::from_secs(2);
    let relay = relay_with(|limits| {
        // The attackers' silent sockets alone would fill a shared cap many times:
        // ATTACKERS x SOCKETS_PER_ATTACKER = 288 against 32 QUIC handshakes.
        limits.connections.max_handshakes = 32;
        limits.connections.max_tcp_handshakes = 64;
        limits.connections.tcp_handshakes_per_ip = PER_IP;
        limits.connections.hello_timeout = Span(hello);
        // Far longer than the test: only the ClientHello deadline cuts the silent.
        limits.connections.handshake_timeout = Span(Duration::from_secs(60));
    });
    let quic = honest_session_over(
        &relay,
        TransportPreference::Quic,
        TransportPreference::Quic,
        HONEST,
    )
    .await;
    let tcp = honest_session_over(
        &relay,
        TransportPreference::Tcp,
        TransportPreference::Tcp,
        HONEST,
    )
    .await;
    let to = relay.tcp_addr().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut attackers = tokio::task::JoinSet::new();
    for a in 0..ATTACKERS {
        let local = IpAddr::V4(Ipv4Addr::new(127, 0, 7, 1 + a));
        for _ in 0..SOCKETS_PER_ATTACKER {
            let stop = stop.clone();
            // Each keeps one silent socket open, and opens another when the relay
            // ends it; returns the longest the relay let one stay.
            attackers.spawn(async move {
                let mut longest = Duration::ZERO;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let Ok(mut socket) = tcp_from(to, local).await else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    let opened = Instant::now();
                    let mut buf = [0u8; 64];
                    let ended = tokio::time::timeout(PATIENCE, socket.read(&mut buf)).await;
                    assert!(
                        matches!(ended, Ok(Ok(0) | Err(_))),
                        "a silent socket got {ended:?}"
                    );
                    longest = longest.max(opened.elapsed());
                    // A refused one ends at once: do not spin on it.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                longest
            });
        }
    }
    // Let the silent sockets pile up to every cap they can reach.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = relay.stats();
    assert!(
        during.handshakes_in_progress <= u64::from(ATTACKERS as u32 * PER_IP),
        "silent sockets hold {} handshakes",
        during.handshakes_in_progress
    );

    // Fresh clients from addresses of their own, one after another, while the
    // attack goes on.
    let (mut quic_in, mut tls_in) = (0, 0);
    for i in 0..FRESH {
        let local = IpAddr::V4(Ipv4Addr::new(127, 0, 8, 1 + i as u8));
        if crate::raw_tls::RawConnection::open_from(&relay, TransportPreference::Quic, local)
            .await
            .is_ok()
        {
            quic_in += 1;
        }
        if crate::raw_tls::RawConnection::open_from(&relay, TransportPreference::Tcp, local)
            .await
            .is_ok()
        {
            tls_in += 1;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut longest = Duration::ZERO;
    while let Some(one) = attackers.join_next().await {
        longest = longest.max(one.unwrap());
    }
    assert_eq!((quic_in, tls_in), (FRESH, FRESH), "fresh clients got in");
    assert!(
        longest >= hello - Duration::from_millis(200) && longest < hello * 3,
        "a silent socket stayed {longest:?}, ClientHello deadline {hello:?}"
    );
    finishes(quic, HONEST).await;
    finishes(tcp, HONEST).await;
}

/// Players on TLS over TCP that send their session's bytes one per DATA frame to a
/// host that reads nothing: the relay's read-ahead from each is joined into a few
/// blocks, so what each session makes the relay hold stays within the buffer it
/// reserves (before, one-byte frames held about five times that: a queue entry and
/// a pinned read buffer per byte), while an honest session moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_data_frames_on_tcp_hold_no_more_than_their_sessions_reserve() {
    const ADDRESSES: u8 = 4;
    const PER_ADDRESS: usize = 8;
    const SESSIONS: u64 = ADDRESSES as u64 * PER_ADDRESS as u64;
    init_tracing();
    let (relay, url) = relay_process(&[]);
    let relay_addr = std::net::SocketAddr::new(url.host().parse().unwrap(), url.port());
    let honest = crate::adversarial::honest_session_at(
        &url,
        TransportPreference::Tcp,
        TransportPreference::Tcp,
        HONEST,
    )
    .await;
    // A host, registered by hand, that takes every session stream and never reads a
    // byte of it (a host agent would read, and end a session that is not Noise).
    let key = SecretKey::generate().unwrap();
    let host_id = key.host_id();
    let mut small_windows = quinn::TransportConfig::default();
    small_windows.stream_receive_window((64u32 << 10).into());
    let host = blindrelay_client::internal::connect_relay_raw_with(
        &url,
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        small_windows,
    )
    .await
    .unwrap();
    let (verdict, _registration) = register_by_hand(&host, host_id, &key, &host).await;
    assert!(matches!(verdict, ControlMessage::Registered), "{verdict:?}");
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok(stream) = host.accept_bi().await {
            held.push(stream);
        }
        held.len()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = process::rss_bytes(relay.pid());

    let mut players = tokio::task::JoinSet::new();
    for i in 0..SESSIONS {
        let local = IpAddr::V4(Ipv4Addr::new(127, 0, 11, 1 + (i % ADDRESSES as u64) as u8));
        let tcp = tcp_from(relay_addr, local).await.unwrap();
        let mut tls = tls_to(tcp, blindrelay_protocol::ALPN).await;
        players.spawn(async move {
            let mut request = ControlMessage::connect(host_id).to_frame().to_vec();
            request.extend_from_slice(&hello_for(&host_id));
            let mut wire = Vec::new();
            StreamFrame::Data(request.into()).encode(&mut wire);
            // Then bytes one per frame, more than every buffer on the way holds
            // (the relay's, the host's window, the sockets'), until the relay stops
            // taking them.
            wire.extend(std::iter::repeat_n([0x00, 0x00, 0x01, 0x5a], 2 << 20).flatten());
            let sent = tokio::time::timeout(Duration::from_secs(3), tls.write_all(&wire)).await;
            (sent.is_err(), tls)
        });
    }
    let (peak, ends) = peak_rss_during(relay.pid(), async {
        let mut ends = Vec::new();
        while let Some(end) = players.join_next().await {
            ends.push(end.unwrap());
        }
        // Whatever was still arriving has landed.
        tokio::time::sleep(Duration::from_millis(300)).await;
        ends
    })
    .await;
    let stalled = ends.iter().filter(|(stalled, _)| *stalled).count();
    let growth = peak.saturating_sub(before);
    eprintln!("relay grew by {growth} bytes under {SESSIONS} sessions of one-byte frames ({stalled} stalled)");
    assert!(
        stalled > 0,
        "the relay took every byte: nothing was held up"
    );
    let bound = SESSIONS * Limits::default().session_buffer();
    let overhead = 8 << 20;
    assert!(
        growth <= bound + overhead,
        "relay grew by {growth} bytes, bound {bound} + overhead {overhead}"
    );
    drop(ends);
    holder.abort();
    finishes(honest, HONEST).await;
}

/// A ticket holder on ten addresses asks a host on TCP for sessions with garbage
/// hellos, each within its own addresses' limits: every one makes the host open an
/// `Accept` connection from its address. Those come in on the host's own allowance
/// (one per `Dial` outstanding), not on its address's connection rate, so an
/// authorized player beside the attack gets every session it asks for (before, 2 of
/// 12: the host's connections were refused at its rate, and its session slots held
/// until their deadline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_connects_cannot_spend_a_tcp_hosts_own_connection_allowance() {
    const ATTACKERS: u8 = 10;
    const HONEST_SESSIONS: usize = 12;
    // A public relay's limits: every address, the host's included, at its rates.
    let relay = relay_with(|limits| *limits = Limits::default());
    let host = host_over(relay.url(), TransportPreference::Tcp).await;
    let ticket = host.ticket().clone();
    let host_id = *host.host_id();
    let _echo = spawn_echo_host(host);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut attackers = tokio::task::JoinSet::new();
    for a in 0..ATTACKERS {
        let local = IpAddr::V4(Ipv4Addr::new(127, 0, 12, 1 + a));
        let connection = blindrelay_client::internal::connect_relay_raw_from(relay.url(), local)
            .await
            .unwrap();
        for _ in 0..4 {
            let (connection, stop) = (connection.clone(), stop.clone());
            attackers.spawn(async move {
                let mut asked = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let Ok((mut send, mut recv)) = connection.open_bi().await else {
                        break;
                    };
                    let mut bytes = ControlMessage::connect(host_id).to_frame().to_vec();
                    bytes.extend_from_slice(&96u16.to_be_bytes());
                    bytes.extend_from_slice(&[0x42; 96]);
                    let _ = send.write_all(&bytes).await;
                    asked += 1;
                    // Until the relay or the host ends it.
                    let _ = tokio::time::timeout(PATIENCE, recv.read_to_end(1 << 16)).await;
                }
                asked
            });
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut served = 0;
    let player = player_over(TransportPreference::Quic);
    for _ in 0..HONEST_SESSIONS {
        if let Ok(Ok(mut session)) = tokio::time::timeout(PATIENCE, player.connect(&ticket)).await {
            session.write_all(b"honest").await.unwrap();
            let mut back = [0u8; 6];
            if session.read_exact(&mut back).await.is_ok() && &back == b"honest" {
                served += 1;
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut asked = 0;
    while let Some(count) = attackers.join_next().await {
        asked += count.unwrap();
    }
    let stats = relay.stats();
    eprintln!(
        "{served} of {HONEST_SESSIONS} honest sessions beside {asked} garbage Connects; \
         host connections rate limited: {}",
        stats.connections_rate_limited
    );
    assert!(asked > 200, "the attack asked for only {asked} sessions");
    assert_eq!(served, HONEST_SESSIONS, "the authorized player's sessions");
}
