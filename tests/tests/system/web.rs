//! The relay's HTTPS side for browsers: the web player is served, with its security
//! headers, only on a host's own origin `<host id>.<relay name>`; every other request
//! is refused with its status and counted; the WebSocket transport still works on the
//! same listener; the certificate covers the per-host names; and `blindrelay host`
//! prints a share link whose page the relay serves.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use blindrelay_protocol::{HostId, RelayUrl, SecretKey};
use blindrelay_relay::{HttpOutcome, Relay, RelayCertificate};
use blindrelay_tests::process::{binaries, keygen, relay_by_name, Proc};
use blindrelay_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::raw_tls::tls_to;

/// A host id for origins; the relay needs no registration to serve the player.
fn some_host_id() -> HostId {
    HostId::from_public_key(SecretKey::generate().unwrap().public_key())
}

/// The bundle file `name` as the relay was built with it.
fn bundle_file(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../web/dist")
        .join(name);
    std::fs::read(path).unwrap()
}

/// One answer, split at its head.
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// Sends `request` (bytes as given) over TLS with ALPN `http/1.1` and reads the
/// answer to the end of the connection.
async fn exchange(relay: &Relay, request: &[u8]) -> Answer {
    let tcp = TcpStream::connect(relay.tcp_addr().unwrap()).await.unwrap();
    let mut tls = tls_to(tcp, b"http/1.1").await;
    tls.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, tls.read_to_end(&mut answer))
        .await
        .expect("an answer, then the end");
    split(&answer)
}

fn split(answer: &[u8]) -> Answer {
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {:?}", String::from_utf8_lossy(answer)));
    let head = String::from_utf8(answer[..end].to_vec()).unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    Answer {
        status,
        head,
        body: answer[end + 4..].to_vec(),
    }
}

/// `method path` with `Host: host`.
async fn request(relay: &Relay, method: &str, path: &str, host: &str) -> Answer {
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    exchange(relay, request.as_bytes()).await
}

fn origin(relay: &Relay, host_id: &HostId) -> String {
    format!("{host_id}.localhost:{}", relay.tcp_addr().unwrap().port())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_player_is_served_with_its_headers_on_a_host_origin() {
    let relay = start_relay();
    let host = origin(&relay, &some_host_id());
    for (path, file, content_type) in [
        ("/.blindrelay/", "index.html", "text/html; charset=utf-8"),
        (
            "/.blindrelay/index.html",
            "index.html",
            "text/html; charset=utf-8",
        ),
        (
            "/.blindrelay/player.css",
            "player.css",
            "text/css; charset=utf-8",
        ),
        (
            "/.blindrelay/player.js",
            "player.js",
            "text/javascript; charset=utf-8",
        ),
        (
            "/.blindrelay/sw.js",
            "sw.js",
            "text/javascript; charset=utf-8",
        ),
        (
            "/.blindrelay/ws.js",
            "ws.js",
            "text/javascript; charset=utf-8",
        ),
    ] {
        let answer = request(&relay, "GET", path, &host).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.head);
        assert_eq!(answer.body, bundle_file(file), "{path}");
        assert_eq!(answer.header("content-type"), Some(content_type), "{path}");
        assert_eq!(answer.header("cache-control"), Some("no-cache"));
        assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(answer.header("referrer-policy"), Some("no-referrer"));
        let csp = answer.header("content-security-policy").expect("a CSP");
        assert!(csp.starts_with("default-src 'self';"), "{csp}");
        assert!(
            csp.contains(&format!("connect-src 'self' https://{host} wss://{host};")),
            "{csp}"
        );
        assert!(!csp.contains("unsafe") && !csp.contains('*'), "{csp}");
        for directive in [
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "object-src 'none'",
        ] {
            assert!(csp.contains(directive), "{csp}");
        }
        let worker_scope = answer.header("service-worker-allowed");
        assert_eq!(worker_scope, (file == "sw.js").then_some("/"), "{path}");
    }

    // HEAD: the same head, no body.
    let answer = request(&relay, "HEAD", "/.blindrelay/", &host).await;
    assert_eq!(answer.status, 200);
    assert!(answer.body.is_empty());
    let length = bundle_file("index.html").len().to_string();
    assert_eq!(answer.header("content-length"), Some(length.as_str()));

    // DNS names are case-insensitive.
    let answer = request(&relay, "GET", "/.blindrelay/", &host.to_uppercase()).await;
    assert_eq!(answer.status, 200);

    // The root of a host's origin leads to the player (browsers keep the fragment).
    let answer = request(&relay, "GET", "/", &host).await;
    assert_eq!(answer.status, 302);
    assert_eq!(answer.header("location"), Some("/.blindrelay/"));

    let stats = relay.stats();
    assert_eq!(stats.http_requests(HttpOutcome::Player), 8);
    assert_eq!(stats.http_requests(HttpOutcome::Redirect), 1);
    assert_eq!(
        stats.connections_accepted, 0,
        "HTTP requests are not relay connections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_player_is_refused_off_a_host_origin() {
    let relay = start_relay();
    let port = relay.tcp_addr().unwrap().port();
    let id = some_host_id().to_string();
    let cases = [
        // The relay's own name serves no page.
        (format!("localhost:{port}"), 404),
        (format!("127.0.0.1:{port}"), 421),
        (format!("{id}.example.com:{port}"), 421),
        // Not a host id: one character short, one label too many.
        (format!("{}.localhost:{port}", &id[..51]), 421),
        (format!("x.{id}.localhost:{port}"), 421),
    ];
    for (host, status) in &cases {
        let answer = request(&relay, "GET", "/.blindrelay/", host).await;
        assert_eq!(answer.status, *status, "{host}: {}", answer.head);
        assert!(answer.header("content-security-policy").is_none());
        assert_ne!(answer.body, bundle_file("index.html"));
    }
    let stats = relay.stats();
    assert_eq!(stats.http_requests(HttpOutcome::NotFound), 1);
    assert_eq!(stats.http_requests(HttpOutcome::Misdirected), 4);
    assert_eq!(stats.http_requests(HttpOutcome::Player), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_paths_methods_and_bad_heads_are_refused() {
    let relay = start_relay();
    let host = origin(&relay, &some_host_id());
    let answer = request(&relay, "GET", "/.blindrelay/secret.txt", &host).await;
    assert_eq!(answer.status, 404);
    let answer = request(&relay, "GET", "/.blindrelay/../Cargo.toml", &host).await;
    assert_eq!(answer.status, 404);
    let answer = request(&relay, "POST", "/.blindrelay/", &host).await;
    assert_eq!(answer.status, 405);
    assert_eq!(answer.header("allow"), Some("GET, HEAD"));
    let answer = exchange(&relay, b"GARBAGE\x01\r\n\r\n").await;
    assert_eq!(answer.status, 400);
    let no_host = exchange(&relay, b"GET /.blindrelay/ HTTP/1.1\r\n\r\n").await;
    assert_eq!(no_host.status, 400);

    // A head past 8 KiB is refused before it is all read.
    let mut huge = format!("GET /.blindrelay/ HTTP/1.1\r\nHost: {host}\r\nX-Filler: ").into_bytes();
    huge.extend(std::iter::repeat_n(b'a', 16 * 1024));
    huge.extend_from_slice(b"\r\n\r\n");
    let tcp = TcpStream::connect(relay.tcp_addr().unwrap()).await.unwrap();
    let mut tls = tls_to(tcp, b"http/1.1").await;
    // The relay may close while the rest is still being written.
    let _ = tls.write_all(&huge).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, tls.read_to_end(&mut answer))
        .await
        .expect("an answer, then the end");
    assert_eq!(split(&answer).status, 431);

    let stats = relay.stats();
    assert_eq!(stats.http_requests(HttpOutcome::NotFound), 2);
    assert_eq!(stats.http_requests(HttpOutcome::MethodNotAllowed), 1);
    assert_eq!(stats.http_requests(HttpOutcome::BadRequest), 2);
    assert_eq!(stats.http_requests(HttpOutcome::TooLarge), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_web_off_no_player_is_served_and_websocket_still_works() {
    init_tracing();
    let mut config = relay_config();
    config.web = false;
    let relay = Relay::spawn(config).expect("relay starts");
    let host = origin(&relay, &some_host_id());
    for path in ["/", "/.blindrelay/", "/.blindrelay/webtransport.json"] {
        let answer = request(&relay, "GET", path, &host).await;
        assert_eq!(answer.status, 404, "{path}");
    }
    let tcp = TcpStream::connect(relay.tcp_addr().unwrap()).await.unwrap();
    let tls = tls_to(tcp, b"http/1.1").await;
    crate::raw_tls::upgrade(tls)
        .await
        .expect("the WebSocket upgrade");
    assert_eq!(relay.stats().http_requests(HttpOutcome::WebSocket), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_player_on_the_web_listener_reaches_its_host() {
    let relay = start_relay();
    let mut agent = start_host(relay.url()).await;
    let player = player_over(blindrelay_client::TransportPreference::WebSocket);
    let ticket = agent.ticket().clone();
    let (mut player_side, host_side) = tokio::join!(
        async { player.connect(&ticket).await.expect("session") },
        async { agent.accept().await.expect("session") }
    );
    let mut host_side = host_side;
    player_side.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    host_side.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"ping");
    assert_eq!(relay.stats().http_requests(HttpOutcome::WebSocket), 1);
    assert_eq!(relay.stats().sessions_player_ws, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webtransport_settings_name_the_requests_origin() {
    let relay = start_relay();
    let host = origin(&relay, &some_host_id());
    let answer = request(&relay, "GET", "/.blindrelay/webtransport.json", &host).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    let info: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
    assert_eq!(info["url"], format!("https://{host}/blindrelay/1"));
    assert!(info["serverCertificateHashes"].is_array());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_that_never_ends_is_answered_408_and_cut() {
    let relay = start_relay();
    let tcp = TcpStream::connect(relay.tcp_addr().unwrap()).await.unwrap();
    let mut tls = tls_to(tcp, b"http/1.1").await;
    tls.write_all(b"GET /.blindrelay/ HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, tls.read_to_end(&mut answer))
        .await
        .expect("the relay closes it");
    // The head's deadline is a few seconds, well under the handshake's 10.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(split(&answer).status, 408);
    assert_eq!(relay.stats().http_requests(HttpOutcome::Timeout), 1);
}

/// A client that trusts exactly `certificate_pem` as its root, checking names as
/// browsers do.
fn verifying_client(certificate_pem: &str) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(certificate_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Checked by name as browsers check a CA certificate. (Certificate checkers, rustls's
/// and browsers', take no wildcard directly over a one-label name: `*.localhost`
/// is in the certificate, but a browser on a development relay trusts it by its
/// hash, name unchecked; a relay name of two labels or more is checked here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_self_signed_certificate_covers_every_hosts_origin() {
    init_tracing();
    let (cert, key) = RelayCertificate::self_signed_pem(&["relay.example"]).unwrap();
    let dir = std::env::temp_dir().join(format!("br-web-cert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("relay.crt"), &cert).unwrap();
    std::fs::write(dir.join("relay.key"), &key).unwrap();
    let certificate =
        RelayCertificate::from_pem_files(&dir.join("relay.crt"), &dir.join("relay.key")).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = relay_config();
    config.certificate = certificate;
    let relay = Relay::spawn(config).expect("relay starts");
    let connector = verifying_client(&cert);
    let name = format!("{}.relay.example", some_host_id());
    for (name, covered) in [
        (name.as_str(), true),
        ("relay.example", true),
        ("a.b.relay.example", false),
        ("other.example", false),
    ] {
        let tcp = TcpStream::connect(relay.tcp_addr().unwrap()).await.unwrap();
        let server_name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
        let verified = connector.connect(server_name, tcp).await;
        assert_eq!(verified.is_ok(), covered, "{name}: {verified:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_share_link_is_checked_against_the_relay() {
    let relay = start_relay();
    let host_id = some_host_id();
    let by_name =
        RelayUrl::new("localhost", relay.url().port(), relay.url().pin().copied()).unwrap();
    let link = blindrelay_client::web_link(&by_name, &host_id)
        .await
        .expect("a link");
    assert_eq!(
        link.url(),
        format!(
            "https://{host_id}.localhost:{}/.blindrelay/",
            relay.url().port()
        )
    );
    // An IP address has no per-host names.
    let by_ip = blindrelay_client::web_link(relay.url(), &host_id).await;
    assert!(
        matches!(by_ip, Err(blindrelay_client::WebLinkError::IpLiteral(_))),
        "{by_ip:?}"
    );

    // A relay that does not serve the player gives no link.
    init_tracing();
    let mut config = relay_config();
    config.web = false;
    let off = Relay::spawn(config).expect("relay starts");
    let by_name = RelayUrl::new("localhost", off.url().port(), off.url().pin().copied()).unwrap();
    let refused = blindrelay_client::web_link(&by_name, &host_id).await;
    assert!(
        matches!(
            refused,
            Err(blindrelay_client::WebLinkError::NotServed(404))
        ),
        "{refused:?}"
    );

    // Nor does one whose certificate is not the pinned one.
    let other_pin = off.url().pin().copied();
    let wrong = RelayUrl::new("localhost", relay.url().port(), other_pin).unwrap();
    let refused = blindrelay_client::web_link(&wrong, &host_id).await;
    assert!(
        matches!(refused, Err(blindrelay_client::WebLinkError::Connect(_))),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blindrelay_host_prints_a_share_link_whose_page_the_relay_serves() {
    let bin = binaries();
    let dir = std::env::temp_dir().join(format!("br-web-link-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("host.key");
    keygen(&bin, &key, "host");
    let (_relay, by_name) = relay_by_name(&bin);
    let url = &by_name;
    let service = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let forward = service.local_addr().unwrap().to_string();
    let host = Proc::start(
        &bin.join("blindrelay"),
        &[
            "host",
            "--key",
            key.to_str().unwrap(),
            "--relay",
            &by_name.to_string(),
            "--forward",
            &forward,
        ],
    );
    let host_id = host.value("host id");
    let ticket = host.value("ticket");
    let link = host.value("web");
    // The relay is trusted by pin: its certificate is one no browser trusts, so the
    // host says how to open the link in Chromium trusting that certificate's key.
    let browser = host.value("browser");
    let _ = std::fs::remove_dir_all(&dir);
    let tcp = TcpStream::connect(("127.0.0.1", url.port())).await.unwrap();
    let tls = tls_to(tcp, b"http/1.1").await;
    let certificate = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let spki = webpki::EndEntityCert::try_from(&certificate)
        .unwrap()
        .subject_public_key_info();
    let key = data_encoding::BASE64
        .encode(ring::digest::digest(&ring::digest::SHA256, spki.as_ref()).as_ref());
    assert_eq!(
        browser,
        format!(
            "chromium --ignore-certificate-errors-spki-list={key} \
             --host-resolver-rules='MAP *.localhost 127.0.0.1' '{link}'"
        )
    );
    let expected = format!(
        "https://{host_id}.localhost:{}/.blindrelay/#{ticket}",
        url.port()
    );
    assert_eq!(link, expected);

    // What a browser does with the link: the fragment stays in the browser; the
    // request names the origin and the path.
    let (without_fragment, fragment) = link.split_once('#').unwrap();
    assert_eq!(fragment, ticket);
    let rest = without_fragment.strip_prefix("https://").unwrap();
    let (authority, path) = rest.split_once('/').unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", url.port())).await.unwrap();
    let mut tls = tls_to(tcp, b"http/1.1").await;
    let request = format!("GET /{path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, tls.read_to_end(&mut answer))
        .await
        .expect("an answer");
    let answer = split(&answer);
    assert_eq!(answer.status, 200, "{}", answer.head);
    assert_eq!(answer.body, bundle_file("index.html"));
}
