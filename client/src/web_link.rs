//! The share link for browsers: `https://<host id>.<relay name>:<port>/.blindrelay/`,
//! where the relay serves the web player on an origin of the host's own, with the
//! ticket added after `#` by whoever prints it (a URL's fragment never leaves the
//! browser, so the relay's web server never sees the ticket).
//!
//! [`web_link`] checks that the relay really serves the player there before anyone
//! is told the link: one HTTPS request, with the relay's certificate checked as on
//! every other connection to it (its pin, or the web's CAs for the per-host name,
//! which a CA certificate must then cover as `*.<relay name>`). A relay trusted by
//! pin has a certificate of its own that no browser trusts: for it, the link comes
//! with the Chromium command that trusts that certificate's key
//! ([`WebLink::chromium_command`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use blindrelay_protocol::{HostId, RelayUrl, Ticket};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::endpoint::{client_tls, relay_check, resolve, ConnectRelayError, TlsSetupError};

/// The player's path on a host's origin.
const PLAYER_PATH: &str = "/.blindrelay/";

/// How long the check may take, all of it.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest answer head the check reads.
const MAX_ANSWER_HEAD: usize = 8 * 1024;

/// Why there is no share link for browsers.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebLinkError {
    /// The relay URL names an IP address: a browser player needs one origin per
    /// host, `<host id>.<relay name>`, which only a DNS name has.
    #[error(
        "the relay URL names an IP address ({0}); browsers need the relay's DNS name \
         for a per-host origin (on one machine: the relay URL with localhost)"
    )]
    IpLiteral(String),
    /// The relay could not be reached, or its certificate did not verify for the
    /// host's origin.
    #[error("cannot reach the relay's web player: {0}")]
    Connect(#[from] ConnectRelayError),
    /// The relay answered, but not with the player (`--web off`, or an older relay).
    #[error("the relay does not serve the web player there (HTTP status {0})")]
    NotServed(u16),
    /// The relay's answer was not HTTP.
    #[error("the relay's answer was not an HTTP response")]
    BadAnswer,
    /// The check did not complete in time.
    #[error("no answer from the relay's web player within {0:?}")]
    Timeout(Duration),
}

/// A share link for browsers, checked: the relay serves the player there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebLink {
    url: String,
    /// Where the relay's name led, for Chromium's resolver when it is `localhost`.
    relay_addr: SocketAddr,
    /// The base64 SHA-256 of the relay certificate's public key, when the relay is
    /// trusted by pin.
    pinned_key: Option<String>,
}

impl WebLink {
    /// The player's URL on the host's origin, without the ticket.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The link with `ticket` in its fragment, which browsers never send anywhere.
    pub fn with_ticket(&self, ticket: &Ticket) -> String {
        format!("{}#{ticket}", self.url)
    }

    /// The base64 SHA-256 of the pinned relay certificate's public key, as
    /// Chromium's `--ignore-certificate-errors-spki-list` takes it; `None` for a
    /// relay with a CA's certificate, which browsers trust as it is.
    pub fn pinned_key(&self) -> Option<&str> {
        self.pinned_key.as_deref()
    }

    /// For a relay trusted by pin, the Chromium command that opens the link
    /// trusting the relay's key (and, on `localhost`, reaching every host origin
    /// at the relay's address, where Chromium would try ::1 for WebTransport).
    /// `None` for a relay with a CA's certificate.
    pub fn chromium_command(&self, ticket: &Ticket) -> Option<String> {
        let key = self.pinned_key.as_deref()?;
        let mut command = format!("chromium --ignore-certificate-errors-spki-list={key}");
        let origin = self.url.strip_prefix("https://").unwrap_or(&self.url);
        let host = origin.split([':', '/']).next().unwrap_or_default();
        if host.ends_with(".localhost") {
            let ip = match self.relay_addr.ip() {
                IpAddr::V4(ip) => ip.to_string(),
                IpAddr::V6(ip) => format!("[{ip}]"),
            };
            command.push_str(&format!(" --host-resolver-rules='MAP *.localhost {ip}'"));
        }
        command.push_str(&format!(" '{}'", self.with_ticket(ticket)));
        Some(command)
    }
}

/// The web player's link for `host_id` at the relay `url`, once a request to it
/// shows that the relay serves the player there.
pub async fn web_link(url: &RelayUrl, host_id: &HostId) -> Result<WebLink, WebLinkError> {
    if url.host().parse::<IpAddr>().is_ok() {
        return Err(WebLinkError::IpLiteral(url.host().to_owned()));
    }
    let origin = format!("{host_id}.{}", url.host().to_ascii_lowercase());
    let authority = format!("{origin}:{}", url.port());
    let check = async {
        let tls =
            Arc::new(client_tls(relay_check(url), b"http/1.1").map_err(ConnectRelayError::Tls)?);
        // The relay's own address: a resolver outside browsers need not know the
        // per-host names (`*.localhost` resolves in browsers, not everywhere).
        let addr = resolve(url).await?;
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(ConnectRelayError::TlsHandshake)?;
        let name = ServerName::try_from(origin.clone()).map_err(|_| {
            ConnectRelayError::Tls(TlsSetupError::Rustls(rustls::Error::General(
                "the host's origin is not a valid TLS server name".into(),
            )))
        })?;
        let mut stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(ConnectRelayError::TlsHandshake)?;
        let request = format!(
            "HEAD {PLAYER_PATH} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(ConnectRelayError::TlsHandshake)?;
        // Verified by its pin: the key it holds is what a browser must be told.
        let pinned_key = url
            .pin()
            .and_then(|_| stream.get_ref().1.peer_certificates()?.first().cloned())
            .and_then(|certificate| key_hash(&certificate));
        let status = read_status(&mut stream).await?;
        if status != 200 {
            return Err(WebLinkError::NotServed(status));
        }
        Ok(WebLink {
            url: format!("https://{authority}{PLAYER_PATH}"),
            relay_addr: addr,
            pinned_key,
        })
    };
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(result) => result,
        Err(_) => Err(WebLinkError::Timeout(CHECK_TIMEOUT)),
    }
}

/// The base64 SHA-256 of `certificate`'s public key (its DER SubjectPublicKeyInfo).
fn key_hash(certificate: &rustls::pki_types::CertificateDer<'_>) -> Option<String> {
    let parsed = webpki::EndEntityCert::try_from(certificate).ok()?;
    let spki = parsed.subject_public_key_info();
    let digest = ring::digest::digest(&ring::digest::SHA256, spki.as_ref());
    Some(data_encoding::BASE64.encode(digest.as_ref()))
}

/// The status code of the answer's first line.
async fn read_status<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Result<u16, WebLinkError> {
    let mut head = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    while !head.windows(2).any(|pair| pair == b"\r\n") {
        if head.len() >= MAX_ANSWER_HEAD {
            return Err(WebLinkError::BadAnswer);
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(ConnectRelayError::TlsHandshake)?;
        if n == 0 {
            return Err(WebLinkError::BadAnswer);
        }
        head.extend_from_slice(&chunk[..n]);
    }
    parse_status(&head).ok_or(WebLinkError::BadAnswer)
}

/// `HTTP/1.1 200 OK\r\n…` → 200.
fn parse_status(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split_whitespace();
    if !words.next()?.starts_with("HTTP/1.") {
        return None;
    }
    words.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_is_read_from_the_first_line() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\nX: y\r\n"), Some(200));
        assert_eq!(
            parse_status(b"HTTP/1.1 421 Misdirected Request\r\n"),
            Some(421)
        );
        assert_eq!(parse_status(b"SSH-2.0-x\r\n"), None);
        assert_eq!(parse_status(b"HTTP/1.1 abc\r\n"), None);
    }

    fn ticket() -> Ticket {
        let relay: RelayUrl = "blindrelay://localhost:4433".parse().unwrap();
        Ticket::new(HostId::from_bytes([4; 32]), relay, Vec::new()).unwrap()
    }

    fn link(host: &str, addr: &str, pinned_key: Option<&str>) -> WebLink {
        WebLink {
            url: format!("https://{host}:4433/.blindrelay/"),
            relay_addr: addr.parse().unwrap(),
            pinned_key: pinned_key.map(str::to_owned),
        }
    }

    #[test]
    fn a_pinned_relay_on_localhost_gets_the_whole_chromium_command() {
        let local = link("abc.localhost", "127.0.0.1:4433", Some("S2V5"));
        assert_eq!(
            local.chromium_command(&ticket()).unwrap(),
            format!(
                "chromium --ignore-certificate-errors-spki-list=S2V5 \
                 --host-resolver-rules='MAP *.localhost 127.0.0.1' \
                 'https://abc.localhost:4433/.blindrelay/#{}'",
                ticket()
            )
        );
        let six = link("abc.localhost", "[::1]:4433", Some("S2V5"));
        assert!(six
            .chromium_command(&ticket())
            .unwrap()
            .contains("'MAP *.localhost [::1]'"));
        // A relay elsewhere is reached by its name, as any site.
        let named = link("abc.relay.example.net", "192.0.2.1:4433", Some("S2V5"));
        let command = named.chromium_command(&ticket()).unwrap();
        assert!(!command.contains("host-resolver-rules"), "{command}");
        // A CA's certificate needs no command at all.
        assert_eq!(
            link("abc.relay.example.net", "192.0.2.1:4433", None).chromium_command(&ticket()),
            None
        );
    }

    #[test]
    fn the_key_hash_is_that_of_the_certificates_public_key() {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let certificate = params.self_signed(&key).unwrap();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        let expected = ring::digest::digest(&ring::digest::SHA256, &spki);
        assert_eq!(
            key_hash(certificate.der()),
            Some(data_encoding::BASE64.encode(expected.as_ref()))
        );
        let garbage = rustls::pki_types::CertificateDer::from(vec![1, 2, 3]);
        assert_eq!(key_hash(&garbage), None);
    }

    #[tokio::test]
    async fn an_ip_literal_relay_has_no_link() {
        let url: RelayUrl = "blindrelay://127.0.0.1:4433".parse().unwrap();
        let host_id = HostId::from_bytes([2; 32]);
        assert!(matches!(
            web_link(&url, &host_id).await,
            Err(WebLinkError::IpLiteral(_))
        ));
    }
}
