//! The relay's HTTPS side: what a connection that chose the ALPN `http/1.1` on the
//! TLS listener gets. One request per connection, its head read here with a bound on
//! size and time, then one of:
//!
//! - `GET /blindrelay/1` with a WebSocket upgrade: the WebSocket transport (the
//!   connection goes on as a relay connection, PROTOCOL.md 17.6);
//! - the web player's files under `/.blindrelay/` and the page's WebTransport
//!   settings, only on a host's own origin ([`origin`]);
//! - `GET /` on a host's origin: a redirect to the player, which keeps the URL's
//!   fragment (where a share link carries its ticket);
//! - an error status for everything else, and the connection closes.
//!
//! Nothing a request carries reaches a log line or a metric label: the outcomes are
//! a fixed set ([`HttpOutcome`]).
//!
//! On a pool member, a host's page may also connect to the members a redirect for
//! that host can name ([`Pool::web_members`]): its Content-Security-Policy lists
//! them and `webtransport.json` names them, so the page can follow a `Redirect` to
//! the host's owner without leaving its origin (docs/decisions.md).

mod bundle;
mod head;
mod origin;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use blindrelay_protocol::HostId;
use blindrelay_transport::websocket;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;
use tracing::debug;

use crate::endpoint::short_lived::SharedShortLived;
use crate::ops::stats::HttpOutcome;
use crate::ops::stats::Stats;
use crate::pool::Pool;
use head::{HeadError, RequestHead};
use origin::Origin;

/// How long a client may take to send its request head, at most (the rest of the
/// handshake deadline, when that is shorter).
pub(crate) const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// How long writing an answer may take: a client that does not read the player's
/// files within this is cut.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The certificates whose SHA-256 digests a browser may accept for the relay's
/// WebTransport endpoint (`serverCertificateHashes`); none when the relay's
/// certificate is one browsers trust by themselves (a CA's, for its public name).
pub(crate) type CertificateHashes = Option<SharedShortLived>;

/// What the HTTPS side serves, fixed when the relay starts.
pub(crate) struct WebFront {
    /// Whether the web player is served (`--web`); the WebSocket transport is
    /// served either way.
    player: bool,
    /// The relay's DNS names: a host's origin is `<host id>.<name>`.
    names: Vec<String>,
    hashes: CertificateHashes,
    /// The pool this relay is a member of, if any: where a host's page may follow
    /// a redirect to.
    pool: Option<Arc<Pool>>,
}

impl WebFront {
    pub(crate) fn new(
        player: bool,
        names: Vec<String>,
        hashes: CertificateHashes,
        pool: Option<Arc<Pool>>,
    ) -> Self {
        Self {
            player,
            names,
            hashes,
            pool,
        }
    }

    /// The pool members a page for `host_id` may connect to: those a redirect for
    /// it can name, in rank, as far as a Content-Security-Policy can name them (a
    /// DNS name or IPv4 address and a port: CSP has no syntax for IPv6 literals).
    fn members_for(&self, host_id: &HostId) -> Vec<String> {
        let Some(pool) = &self.pool else {
            return Vec::new();
        };
        pool.web_members(host_id)
            .into_iter()
            .filter(|member| {
                // Canonical member names are lower case; anything else is left out
                // rather than escaped into a header.
                member
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b".-:".contains(&b))
                    && member.bytes().filter(|&b| b == b':').count() == 1
            })
            .collect()
    }
}

/// Reads one request from `stream` and answers it. Returns the WebSocket when the
/// request was the relay's upgrade; `None` once an answer was written (or the
/// client went away), and the connection is then to be closed.
pub(crate) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    front: &WebFront,
    head_timeout: Duration,
    stats: &Stats,
) -> Option<WebSocketStream<S>> {
    let head = match tokio::time::timeout(head_timeout, head::read_head(&mut stream)).await {
        Ok(Ok(head)) => head,
        Ok(Err(HeadError::TooLarge)) => {
            let answer = Answer::error(
                431,
                "Request Header Fields Too Large",
                HttpOutcome::TooLarge,
            );
            answer.write(&mut stream, false, stats).await;
            return None;
        }
        Ok(Err(HeadError::Malformed(err))) => {
            debug!(%err, "malformed HTTP request");
            let answer = Answer::error(400, "Bad Request", HttpOutcome::BadRequest);
            answer.write(&mut stream, false, stats).await;
            return None;
        }
        Ok(Err(err)) => {
            debug!(%err, "no HTTP request");
            return None;
        }
        Err(_) => {
            Stats::bump(&stats.connections_handshake_timed_out);
            let answer = Answer::error(408, "Request Timeout", HttpOutcome::Timeout);
            answer.write(&mut stream, false, stats).await;
            return None;
        }
    };
    match route(&head, front) {
        Route::Answer(answer) => {
            let head_only = head.method == "HEAD";
            answer.write(&mut stream, head_only, stats).await;
            None
        }
        Route::Upgrade { accept } => {
            let switching = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            );
            let written = tokio::time::timeout(WRITE_TIMEOUT, async {
                stream.write_all(switching.as_bytes()).await?;
                stream.flush().await
            });
            if !matches!(written.await, Ok(Ok(()))) {
                Stats::bump(&stats.websocket_upgrades_failed);
                return None;
            }
            stats.http_request(HttpOutcome::WebSocket);
            // Whatever the client sent after its head is the start of its first
            // WebSocket frame.
            let ws = WebSocketStream::from_partially_read(
                stream,
                head.rest,
                Role::Server,
                Some(websocket::config()),
            )
            .await;
            Some(ws)
        }
    }
}

/// What to do with a request.
#[derive(Debug)]
enum Route {
    /// Accept the WebSocket upgrade, answering with this `Sec-WebSocket-Accept`.
    Upgrade { accept: String },
    /// Write this answer, then close.
    Answer(Answer),
}

/// An answer to write before closing.
#[derive(Debug)]
struct Answer {
    status: u16,
    reason: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Cow<'static, [u8]>,
    outcome: HttpOutcome,
    /// A WebSocket upgrade the relay refused.
    upgrade_refused: bool,
}

impl Answer {
    fn error(status: u16, reason: &'static str, outcome: HttpOutcome) -> Self {
        Self {
            status,
            reason,
            headers: vec![("Content-Type", "text/plain; charset=utf-8".to_owned())],
            body: Cow::Owned(format!("{status} {reason}\n").into_bytes()),
            outcome,
            upgrade_refused: false,
        }
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn refused_upgrade(mut self) -> Self {
        self.upgrade_refused = true;
        self
    }

    /// Writes the answer (its head only, for HEAD) and closes the TLS session;
    /// counts it whether or not the client reads it.
    async fn write<S: AsyncWrite + Unpin>(self, stream: &mut S, head_only: bool, stats: &Stats) {
        stats.http_request(self.outcome);
        if self.upgrade_refused {
            Stats::bump(&stats.websocket_upgrades_failed);
        }
        let mut out = format!("HTTP/1.1 {} {}\r\n", self.status, self.reason);
        for (name, value) in self
            .headers
            .iter()
            .map(|(name, value)| (*name, value.as_str()))
            .chain([
                ("Cache-Control", "no-cache"),
                ("X-Content-Type-Options", "nosniff"),
                ("Referrer-Policy", "no-referrer"),
                ("Connection", "close"),
            ])
        {
            out.push_str(name);
            out.push_str(": ");
            out.push_str(value);
            out.push_str("\r\n");
        }
        out.push_str(&format!("Content-Length: {}\r\n\r\n", self.body.len()));
        let body: &[u8] = if head_only { &[] } else { &self.body };
        let written = tokio::time::timeout(WRITE_TIMEOUT, async {
            stream.write_all(out.as_bytes()).await?;
            stream.write_all(body).await?;
            stream.shutdown().await
        });
        if !matches!(written.await, Ok(Ok(()))) {
            debug!("an HTTP answer could not be written in time");
        }
    }
}

/// Decides what a request gets (see the module's comment for the rules).
fn route(head: &RequestHead, front: &WebFront) -> Route {
    if head.method != "GET" && head.method != "HEAD" {
        let answer = Answer::error(405, "Method Not Allowed", HttpOutcome::MethodNotAllowed)
            .header("Allow", "GET, HEAD");
        return Route::Answer(answer);
    }
    let wants_websocket = head.lists("upgrade", "websocket");
    if head.path == websocket::PATH {
        return upgrade(head);
    }
    if wants_websocket {
        // A WebSocket client at the wrong path: the relay's is the only one.
        let answer = Answer::error(404, "Not Found", HttpOutcome::NotFound).refused_upgrade();
        return Route::Answer(answer);
    }
    if !front.player {
        return Route::Answer(Answer::error(404, "Not Found", HttpOutcome::NotFound));
    }
    let authority = match head.unique("host") {
        Ok(Some(host)) => String::from_utf8_lossy(host).into_owned(),
        _ => return Route::Answer(Answer::error(400, "Bad Request", HttpOutcome::BadRequest)),
    };
    let (host_id, authority) = match origin::classify(&authority, &front.names) {
        Origin::Host { host_id, authority } => (host_id, authority),
        Origin::Relay => {
            return Route::Answer(Answer::error(404, "Not Found", HttpOutcome::NotFound));
        }
        Origin::Elsewhere => {
            let answer = Answer::error(421, "Misdirected Request", HttpOutcome::Misdirected);
            return Route::Answer(answer);
        }
    };
    if head.path == "/" {
        let answer =
            Answer::error(302, "Found", HttpOutcome::Redirect).header("Location", bundle::PREFIX);
        return Route::Answer(answer);
    }
    if head.path == bundle::WEBTRANSPORT_INFO {
        let hashes = match &front.hashes {
            Some(short_lived) => short_lived
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .hashes(),
            None => Vec::new(),
        };
        let members = front.members_for(&host_id);
        return Route::Answer(webtransport_info(&authority, &hashes, &members));
    }
    let Some(asset) = bundle::find(&head.path) else {
        return Route::Answer(Answer::error(404, "Not Found", HttpOutcome::NotFound));
    };
    let mut answer = Answer {
        status: 200,
        reason: "OK",
        headers: vec![
            ("Content-Type", asset.content_type.to_owned()),
            (
                "Content-Security-Policy",
                bundle::content_security_policy(&authority, &front.members_for(&host_id)),
            ),
        ],
        body: Cow::Borrowed(asset.body),
        outcome: HttpOutcome::Player,
        upgrade_refused: false,
    };
    if asset.service_worker {
        answer = answer.header("Service-Worker-Allowed", "/");
    }
    Route::Answer(answer)
}

/// The relay's WebSocket upgrade (RFC 6455 section 4.2), or why not.
fn upgrade(head: &RequestHead) -> Route {
    let refuse = |status, reason| {
        Route::Answer(Answer::error(status, reason, HttpOutcome::BadRequest).refused_upgrade())
    };
    if head.method != "GET" || !head.lists("upgrade", "websocket") {
        return match refuse(426, "Upgrade Required") {
            Route::Answer(answer) => Route::Answer(
                answer
                    .header("Upgrade", "websocket")
                    .header("Sec-WebSocket-Version", "13"),
            ),
            route => route,
        };
    }
    if !head.lists("connection", "upgrade") {
        return refuse(400, "Bad Request");
    }
    if head.unique("sec-websocket-version") != Ok(Some(b"13")) {
        return match refuse(426, "Upgrade Required") {
            Route::Answer(answer) => Route::Answer(answer.header("Sec-WebSocket-Version", "13")),
            route => route,
        };
    }
    // The key is the base64 of 16 random bytes: 24 characters.
    match head.unique("sec-websocket-key") {
        Ok(Some(key)) if key.len() == 24 => Route::Upgrade {
            accept: tokio_tungstenite::tungstenite::handshake::derive_accept_key(key),
        },
        _ => refuse(400, "Bad Request"),
    }
}

/// `webtransport.json`: where the page opens its WebTransport session, which
/// certificates it may accept there, and the pool members it may follow a redirect
/// to (none for a relay on its own).
fn webtransport_info(authority: &str, hashes: &[[u8; 32]], members: &[String]) -> Answer {
    let hashes: Vec<String> = hashes
        .iter()
        .map(|hash| {
            format!(
                "{{\"algorithm\":\"sha-256\",\"value\":\"{}\"}}",
                data_encoding::BASE64.encode(hash)
            )
        })
        .collect();
    let members: Vec<String> = members.iter().map(|m| format!("\"{m}\"")).collect();
    // `authority` is a checked host name and port, and the members are canonical
    // names of the same characters ([`WebFront::members_for`]): nothing needs escaping.
    let body = format!(
        "{{\"url\":\"https://{authority}{}\",\"serverCertificateHashes\":[{}],\"members\":[{}]}}\n",
        websocket::PATH,
        hashes.join(","),
        members.join(",")
    );
    Answer {
        status: 200,
        reason: "OK",
        headers: vec![("Content-Type", "application/json".to_owned())],
        body: Cow::Owned(body.into_bytes()),
        outcome: HttpOutcome::WebTransportInfo,
        upgrade_refused: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "z2gtvuomwyz6y63qyf4bjjohn3gqffufaugtir2fxicyodsypvmq";

    fn front(player: bool) -> WebFront {
        WebFront::new(player, vec!["relay.example".to_owned()], None, None)
    }

    fn answer(request: &str, front: &WebFront) -> Answer {
        let head = RequestHead::parse(request.as_bytes()).unwrap().unwrap();
        match route(&head, front) {
            Route::Answer(answer) => answer,
            Route::Upgrade { .. } => panic!("an upgrade for {request}"),
        }
    }

    fn header<'a>(answer: &'a Answer, name: &str) -> Option<&'a str> {
        answer
            .headers
            .iter()
            .find(|(header, _)| *header == name)
            .map(|(_, value)| value.as_str())
    }

    #[test]
    fn the_upgrade_is_accepted_with_the_rfc_key() {
        let head = RequestHead::parse(
            b"GET /blindrelay/1 HTTP/1.1\r\nHost: 127.0.0.1:4433\r\nUpgrade: websocket\r\n\
              Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
              Sec-WebSocket-Version: 13\r\n\r\n",
        )
        .unwrap()
        .unwrap();
        match route(&head, &front(false)) {
            Route::Upgrade { accept } => assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            Route::Answer(answer) => panic!("{answer:?}"),
        }
    }

    #[test]
    fn a_plain_get_of_the_websocket_path_asks_for_an_upgrade() {
        let answer = answer(
            "GET /blindrelay/1 HTTP/1.1\r\nHost: x\r\n\r\n",
            &front(true),
        );
        assert_eq!(answer.status, 426);
        assert!(answer.upgrade_refused);
    }

    #[test]
    fn the_player_is_served_on_a_host_origin_with_its_headers() {
        let request =
            format!("GET /.blindrelay/sw.js HTTP/1.1\r\nHost: {ID}.relay.example:9\r\n\r\n");
        let answer = answer(&request, &front(true));
        assert_eq!(answer.status, 200);
        assert_eq!(header(&answer, "Service-Worker-Allowed"), Some("/"));
        assert!(header(&answer, "Content-Security-Policy")
            .unwrap()
            .contains(&format!("wss://{ID}.relay.example:9")));
    }

    #[test]
    fn the_player_is_not_served_off_a_host_origin_or_when_off() {
        let on_relay = "GET /.blindrelay/ HTTP/1.1\r\nHost: relay.example\r\n\r\n";
        assert_eq!(answer(on_relay, &front(true)).status, 404);
        let elsewhere = "GET /.blindrelay/ HTTP/1.1\r\nHost: evil.example\r\n\r\n";
        assert_eq!(answer(elsewhere, &front(true)).status, 421);
        let no_host = "GET /.blindrelay/ HTTP/1.1\r\n\r\n";
        assert_eq!(answer(no_host, &front(true)).status, 400);
        let on_host = format!("GET /.blindrelay/ HTTP/1.1\r\nHost: {ID}.relay.example\r\n\r\n");
        assert_eq!(answer(&on_host, &front(false)).status, 404);
        let twice = format!(
            "GET /.blindrelay/ HTTP/1.1\r\nHost: {ID}.relay.example\r\nHost: relay.example\r\n\r\n"
        );
        assert_eq!(answer(&twice, &front(true)).status, 400);
    }

    #[test]
    fn the_root_of_a_host_origin_redirects_to_the_player() {
        let request = format!("GET / HTTP/1.1\r\nHost: {ID}.relay.example\r\n\r\n");
        let answer = answer(&request, &front(true));
        assert_eq!(answer.status, 302);
        assert_eq!(header(&answer, "Location"), Some("/.blindrelay/"));
    }

    #[test]
    fn other_methods_are_not_allowed() {
        let request = format!("POST /.blindrelay/ HTTP/1.1\r\nHost: {ID}.relay.example\r\n\r\n");
        let answer = answer(&request, &front(true));
        assert_eq!(answer.status, 405);
        assert_eq!(header(&answer, "Allow"), Some("GET, HEAD"));
    }

    #[test]
    fn a_pool_members_page_may_connect_to_the_members_a_redirect_names() {
        use crate::pool::{MemberSource, PoolConfig};
        let me = "relay-0.relay.example:443";
        let listed = [
            me,
            "relay-1.relay.example:443",
            "127.0.0.1:4433",
            "[::1]:4433",
        ];
        let pool = Pool::new(PoolConfig::new(me, MemberSource::File("unused".into())).unwrap());
        pool.set_view(listed.iter().map(|m| (*m).to_owned()).collect());
        let front = WebFront::new(
            true,
            vec!["relay.example".to_owned()],
            None,
            Some(Arc::new(pool)),
        );
        let csp = |path: &str| {
            let request = format!("GET {path} HTTP/1.1\r\nHost: {ID}.relay.example\r\n\r\n");
            let answer = answer(&request, &front);
            (
                header(&answer, "Content-Security-Policy").map(str::to_owned),
                String::from_utf8(answer.body.to_vec()).unwrap(),
            )
        };
        let (policy, _) = csp("/.blindrelay/sw.js");
        let policy = policy.unwrap();
        for member in [
            "relay-0.relay.example:443",
            "relay-1.relay.example:443",
            "127.0.0.1:4433",
        ] {
            assert!(
                policy.contains(&format!(" https://{member} wss://{member}")),
                "{member}: {policy}"
            );
        }
        // CSP cannot name an IPv6 literal: that member is left out, not mangled.
        assert!(!policy.contains("::1"), "{policy}");
        let (_, info) = csp("/.blindrelay/webtransport.json");
        assert!(info.contains("\"members\":["), "{info}");
        assert!(info.contains("\"127.0.0.1:4433\""), "{info}");
        assert!(!info.contains("::1"), "{info}");
    }

    #[test]
    fn the_webtransport_settings_name_the_origin_and_the_hashes() {
        let request = format!(
            "GET /.blindrelay/webtransport.json HTTP/1.1\r\nHost: {ID}.relay.example:4433\r\n\r\n"
        );
        let body =
            |front: &WebFront| String::from_utf8(answer(&request, front).body.to_vec()).unwrap();
        assert_eq!(
            body(&front(true)),
            format!(
                "{{\"url\":\"https://{ID}.relay.example:4433/blindrelay/1\",\
                 \"serverCertificateHashes\":[],\"members\":[]}}\n"
            )
        );
        let short_lived = crate::endpoint::short_lived::ShortLived::new(
            vec!["localhost".to_owned()],
            std::time::SystemTime::now(),
        )
        .unwrap();
        let hash = data_encoding::BASE64.encode(&short_lived.hashes()[0]);
        let with_hashes = WebFront::new(
            true,
            vec!["relay.example".to_owned()],
            Some(std::sync::Arc::new(std::sync::RwLock::new(short_lived))),
            None,
        );
        assert!(body(&with_hashes).ends_with(&format!(
            "\"serverCertificateHashes\":[{{\"algorithm\":\"sha-256\",\"value\":\"{hash}\"}}],\"members\":[]}}\n"
        )));
    }
}
