//! Browsers' players over WebTransport on the relay's QUIC endpoint, played from
//! Rust as a page would: read `webtransport.json` on the host's origin, connect
//! with the certificate hashes it lists, and open one stream per session. The
//! session is an ordinary player session (Connect, Noise, splice, accounting), and
//! a refusal arrives as on QUIC, with its code.

use blindrelay_client::{SecureStream, SessionPath};
use blindrelay_protocol::noise::{PlayerHandshake, VerdictOpened};
use blindrelay_protocol::{ControlMessage, ErrorCode, HostId, SecretKey};
use blindrelay_relay::{HttpOutcome, Relay};
use blindrelay_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::raw_tls::tls_to;

/// What the page reads at `https://<host id>.localhost:PORT/.blindrelay/webtransport.json`.
async fn webtransport_info(relay: &Relay, host_id: &HostId) -> serde_json::Value {
    let port = relay.tcp_addr().unwrap().port();
    let tcp = TcpStream::connect(relay.tcp_addr().unwrap()).await.unwrap();
    let mut tls = tls_to(tcp, b"http/1.1").await;
    let request = format!(
        "GET /.blindrelay/webtransport.json HTTP/1.1\r\nHost: {host_id}.localhost:{port}\r\n\r\n"
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, tls.read_to_end(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    let start = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    serde_json::from_slice(&answer[start..]).unwrap()
}

/// A WebTransport session to the relay at `path`, trusting exactly the hashes the
/// relay lists, as a browser does.
async fn webtransport_to(
    relay: &Relay,
    host_id: &HostId,
    path: &str,
) -> Result<web_transport_quinn::Session, web_transport_quinn::ClientError> {
    let info = webtransport_info(relay, host_id).await;
    let hashes: Vec<Vec<u8>> = info["serverCertificateHashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|hash| {
            assert_eq!(hash["algorithm"], "sha-256");
            let value = hash["value"].as_str().unwrap();
            data_encoding::BASE64.decode(value.as_bytes()).unwrap()
        })
        .collect();
    assert!(!hashes.is_empty(), "a self-signed relay lists its hashes");
    let client = web_transport_quinn::ClientBuilder::new()
        .with_server_certificate_hashes(hashes)
        .unwrap();
    // The page's URL names the host's origin, which only browsers resolve to
    // loopback: the same relay at `localhost`.
    let port = relay.local_addr().port();
    let url = url::Url::parse(&format!("https://localhost:{port}{path}")).unwrap();
    tokio::time::timeout(PATIENCE, client.connect(url))
        .await
        .expect("an answer in time")
}

/// A WebTransport stream's receiving half as a session's: its stop-sending code is
/// the protocol's, which the WebTransport library carries in HTTP/3's code space.
struct WtRecv(web_transport_quinn::RecvStream);

/// The sending half (see [`WtRecv`]).
struct WtSend(web_transport_quinn::SendStream);

impl blindrelay_client::Abandon for WtRecv {
    fn abandon(&mut self, code: blindrelay_protocol::StreamCode) {
        let _ = self.0.stop(code.to_u32());
    }
}

impl blindrelay_client::Abandon for WtSend {
    fn abandon(&mut self, code: blindrelay_protocol::StreamCode) {
        let _ = self.0.reset(code.to_u32());
    }
}

impl tokio::io::AsyncRead for WtRecv {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for WtSend {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A player session over one WebTransport stream: Connect, the Noise handshake,
/// then a `SecureStream` over the stream.
async fn webtransport_player(
    session: &web_transport_quinn::Session,
    host_id: HostId,
) -> Result<SecureStream<WtRecv, WtSend>, ControlMessage> {
    let key = SecretKey::generate().unwrap();
    let (mut send, mut recv) = session.open_bi().await.unwrap();
    let mut handshake = PlayerHandshake::new(&key, &host_id).unwrap();
    let mut out = bytes::BytesMut::new();
    ControlMessage::connect(host_id).encode(&mut out);
    handshake.write_hello(&mut out).unwrap();
    send.write_all(&out).await.unwrap();
    let answer = blindrelay_client::internal::read_control(&mut recv)
        .await
        .unwrap();
    if !matches!(answer, ControlMessage::Connected { .. }) {
        return Err(answer);
    }
    async fn read_frame(recv: &mut web_transport_quinn::RecvStream) -> Vec<u8> {
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
    Ok(SecureStream::new(
        WtRecv(recv),
        WtSend(send),
        transport,
        SessionPath::Relayed,
        0,
        bytes::BytesMut::new(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webtransport_player_moves_16_mib_each_way_through_a_real_host() {
    const LEN: u64 = 16 << 20;
    let relay = start_relay();
    let mut agent = start_host(relay.url()).await;
    let host_id = *agent.host_id();
    let session = webtransport_to(&relay, &host_id, "/blindrelay/1")
        .await
        .expect("the relay accepts the session");
    let (player_side, host_side) =
        tokio::join!(webtransport_player(&session, host_id), agent.accept());
    let player_side = player_side.expect("connected");
    let host_side = host_side.expect("accepted");

    let (mut player_read, mut player_write) = tokio::io::split(player_side);
    let (mut host_read, mut host_write) = tokio::io::split(host_side);
    let moved = tokio::time::timeout(PATIENCE * 4, async {
        tokio::try_join!(
            write_pattern(&mut player_write, 1, LEN),
            write_pattern(&mut host_write, 2, LEN),
            read_pattern(&mut host_read, 1),
            read_pattern(&mut player_read, 2),
        )
    })
    .await
    .expect("in time")
    .expect("byte-exact both ways");
    assert_eq!((moved.2, moved.3), (LEN, LEN));

    let stats = relay.stats();
    assert_eq!(stats.connections_accepted_wt, 1);
    assert_eq!(stats.sessions_player_wt, 1);
    assert!(stats.bytes_player_to_host >= LEN && stats.bytes_host_to_player >= LEN);
    assert_eq!(stats.http_requests(HttpOutcome::WebTransportInfo), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webtransport_player_is_refused_with_the_code_a_quic_player_gets() {
    let relay = start_relay();
    let offline = HostId::from_public_key(SecretKey::generate().unwrap().public_key());
    let session = webtransport_to(&relay, &offline, "/blindrelay/1")
        .await
        .expect("the relay accepts the session");
    let refusal = webtransport_player(&session, offline)
        .await
        .expect_err("refused");
    match refusal {
        ControlMessage::Error { code, .. } => assert_eq!(code, ErrorCode::HostOffline),
        other => panic!("{other:?}"),
    }
    // A second stream on the same session is a session of its own.
    let refusal = webtransport_player(&session, offline)
        .await
        .expect_err("refused");
    assert!(matches!(
        refusal,
        ControlMessage::Error {
            code: ErrorCode::HostOffline,
            ..
        }
    ));
    assert_eq!(relay.stats().sessions_refused_offline, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webtransport_session_elsewhere_than_the_relays_path_is_refused() {
    let relay = start_relay();
    let host_id = HostId::from_public_key(SecretKey::generate().unwrap().public_key());
    let refused = webtransport_to(&relay, &host_id, "/admin").await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(relay.stats().connections_accepted_wt, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_cannot_register() {
    let relay = start_relay();
    let host_key = SecretKey::generate().unwrap();
    let host_id = HostId::from_public_key(host_key.public_key());
    let session = webtransport_to(&relay, &host_id, "/blindrelay/1")
        .await
        .expect("the relay accepts the session");
    let (mut send, mut recv) = session.open_bi().await.unwrap();
    let mut out = bytes::BytesMut::new();
    ControlMessage::register(host_id).encode(&mut out);
    send.write_all(&out).await.unwrap();
    let answer = blindrelay_client::internal::read_control(&mut recv)
        .await
        .unwrap();
    assert!(
        matches!(
            answer,
            ControlMessage::Error {
                code: ErrorCode::BadRequest,
                ..
            }
        ),
        "{answer:?}"
    );
    assert_eq!(relay.stats().registered_hosts, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_with_a_public_name_lists_no_hashes() {
    init_tracing();
    // A public name means a CA's certificate, which browsers trust by themselves:
    // WebTransport presents it, and no hash is listed.
    let mut config = relay_config();
    config.public_name = Some("localhost".to_owned());
    let relay = Relay::spawn(config).expect("relay starts");
    let host_id = HostId::from_public_key(SecretKey::generate().unwrap().public_key());
    let info = webtransport_info(&relay, &host_id).await;
    assert_eq!(info["serverCertificateHashes"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_codes_cross_between_webtransport_and_quic_as_the_protocols_codes() {
    use blindrelay_protocol::codes;

    let relay = start_relay();
    let mut agent = start_host(relay.url()).await;
    let host_id = *agent.host_id();
    let session = webtransport_to(&relay, &host_id, "/blindrelay/1")
        .await
        .expect("the relay accepts the session");

    // Browser to host: a reset the page sends with PROTOCOL_VIOLATION reaches the
    // host (on QUIC) as that code, not as HTTP/3's number for it.
    let (player_side, host_side) =
        tokio::join!(webtransport_player(&session, host_id), agent.accept());
    let (_, mut player_send) = player_side.expect("connected").into_inner();
    let mut host_side = host_side.expect("accepted");
    player_send
        .0
        .reset(codes::stream::PROTOCOL_VIOLATION.to_u32())
        .unwrap();
    let err = tokio::time::timeout(PATIENCE, host_side.read_to_end(&mut Vec::new()))
        .await
        .expect("the host reads in time")
        .unwrap_err();
    let ended = err
        .into_inner()
        .unwrap()
        .downcast::<blindrelay_client::SessionEnded>();
    assert_eq!(
        *ended.unwrap(),
        blindrelay_client::SessionEnded::ProtocolViolation
    );

    // Host to browser: the host resets its side with SERVICE_UNAVAILABLE; the page
    // reads that code.
    let (player_side, host_side) =
        tokio::join!(webtransport_player(&session, host_id), agent.accept());
    let (mut player_recv, _player_send) = player_side.expect("connected").into_inner();
    let (_host_recv, host_send) = host_side.expect("accepted").into_inner();
    host_send.reset(codes::stream::SERVICE_UNAVAILABLE);
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(PATIENCE, async {
        loop {
            match player_recv.0.read(&mut buf).await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the end in time");
    match read {
        Err(web_transport_quinn::ReadError::Reset(code)) => {
            assert_eq!(code, codes::stream::SERVICE_UNAVAILABLE.to_u32())
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webtransport_session_without_streams_is_closed_as_idle() {
    init_tracing();
    let mut config = relay_config();
    config.limits.connections.unregistered_idle_timeout =
        blindrelay_relay::units::Span(std::time::Duration::from_secs(1));
    let relay = Relay::spawn(config).expect("relay starts");
    let host_id = HostId::from_public_key(SecretKey::generate().unwrap().public_key());
    let session = webtransport_to(&relay, &host_id, "/blindrelay/1")
        .await
        .expect("the relay accepts the session");
    let closed = tokio::time::timeout(PATIENCE, session.closed())
        .await
        .expect("closed in time");
    match closed {
        web_transport_quinn::SessionError::WebTransportError(
            web_transport_quinn::WebTransportError::Closed(code, _),
        ) => assert_eq!(code, blindrelay_protocol::codes::close::IDLE.to_u32()),
        other => panic!("{other:?}"),
    }
    assert_eq!(relay.stats().connections_idle_closed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_sees_only_ciphertext_of_a_browser_transport_session() {
    // What a page sends, through the relay's splice tap: the same Noise frames as a
    // native player's, so a plaintext marker written either way never shows.
    const MARKER: &[u8] = b"browser-plaintext-marker:0123456789abcdef";
    let (relay, tap) = crate::tap::start_relay_with_tap();
    let mut agent = start_host(relay.url()).await;
    let host_id = *agent.host_id();
    let session = webtransport_to(&relay, &host_id, "/blindrelay/1")
        .await
        .expect("the relay accepts the session");
    let (player_side, host_side) =
        tokio::join!(webtransport_player(&session, host_id), agent.accept());
    let (mut player_side, mut host_side) = (player_side.expect("connected"), host_side.unwrap());

    let message = MARKER.repeat(1000);
    player_side.write_all(&message).await.unwrap();
    player_side.shutdown().await.unwrap();
    let mut received = Vec::new();
    host_side.read_to_end(&mut received).await.unwrap();
    assert_eq!(received, message, "the host gets the plaintext");
    host_side.write_all(&message).await.unwrap();
    host_side.shutdown().await.unwrap();
    let mut answer = Vec::new();
    player_side.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, message);

    let up = tap.player_to_host.lock().unwrap().clone();
    let down = tap.host_to_player.lock().unwrap().clone();
    assert!(up.len() >= message.len() && down.len() >= message.len());
    for (seen, way) in [(&up, "player to host"), (&down, "host to player")] {
        assert!(
            !seen.windows(16).any(|window| window == &MARKER[..16]),
            "plaintext visible to the relay, {way}"
        );
    }
}
