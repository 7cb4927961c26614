//! The relay's certificate and TLS/QUIC server configuration.
//!
//! A development relay makes a self-signed certificate in memory at start (nothing
//! touches the disk) and publishes its SHA-256 pin in its URL. A production relay
//! loads a certificate chain and key from PEM files.

use std::path::Path;
use std::sync::Arc;

use blindrelay_protocol::{CertPin, ALPN};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::endpoint::short_lived::SharedShortLived;

/// Why the relay's TLS setup failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("cannot read {what} from {path}: {reason}")]
    Pem {
        /// "certificate" or "private key".
        what: &'static str,
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The certificate file holds no certificate.
    #[error("{path} holds no certificate")]
    NoCertificate {
        /// The file.
        path: String,
    },
    /// The self-signed certificate could not be made.
    #[error("cannot make a self-signed certificate: {0}")]
    SelfSigned(String),
    /// rustls or quinn refused the certificate and key.
    #[error("TLS configuration refused: {0}")]
    Config(String),
    /// The public name cannot go in a relay URL.
    #[error("invalid public name: {0}")]
    PublicName(String),
    /// WebTransport's short-lived certificate could not be made.
    #[error(transparent)]
    ShortLived(#[from] crate::endpoint::short_lived::ShortLivedError),
    /// The state folder cannot hold the relay's certificate.
    #[error("cannot keep the certificate in {path}: {reason}")]
    StateDir {
        /// The folder.
        path: String,
        /// What failed.
        reason: String,
    },
}

/// The certificate a relay keeps in its state folder (`--state-dir`), and whether
/// this start made it.
pub struct KeptCertificate {
    /// The certificate, the same at every start.
    pub certificate: RelayCertificate,
    /// Made and written now (the folder held none).
    pub made: bool,
}

/// File name of the kept certificate chain in a state folder.
pub const KEPT_CERT_FILE: &str = "relay-cert.pem";

/// File name of the kept private key in a state folder.
pub const KEPT_KEY_FILE: &str = "relay-key.pem";

/// The ALPN of HTTP/3, which WebTransport runs on.
pub(crate) const H3_ALPN: &[u8] = b"h3";

/// Domain separation for the stateless-reset key derived from the TLS key.
const STATELESS_RESET_LABEL: &[u8] = b"blindrelay/1 QUIC stateless reset key";

/// A certificate chain and its private key.
pub struct RelayCertificate {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for RelayCertificate {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl std::fmt::Debug for RelayCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayCertificate")
            .field("pin", &self.pin())
            .finish_non_exhaustive()
    }
}

impl RelayCertificate {
    /// A fresh self-signed certificate (ECDSA P-256) for `names`, made in memory.
    /// Each DNS name is also covered as `*.<name>`: a host's web origin is
    /// `<host id>.<name>` (see [`with_wildcards`]).
    pub fn self_signed(names: &[&str]) -> Result<Self, TlsError> {
        let certified = rcgen::generate_simple_self_signed(with_wildcards(names))
            .map_err(|err| TlsError::SelfSigned(err.to_string()))?;
        Ok(Self {
            chain: vec![certified.cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into()),
        })
    }

    /// Loads a PEM certificate chain (leaf first) and a PEM private key.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let pem_error = |what, path: &Path, err: rustls::pki_types::pem::Error| TlsError::Pem {
            what,
            path: path.display().to_string(),
            reason: err.to_string(),
        };
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(|err| pem_error("certificate", cert, err))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| pem_error("certificate", cert, err))?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate {
                path: cert.display().to_string(),
            });
        }
        let key =
            PrivateKeyDer::from_pem_file(key).map_err(|err| pem_error("private key", key, err))?;
        Ok(Self { chain, key })
    }

    /// The self-signed certificate kept in `dir`: loaded when the folder holds one,
    /// made for `names` and written there otherwise (the folder with mode 0700, the
    /// key 0600, each file written whole before it takes its name), so that the
    /// relay's pin, and with it its URL, stays the same across restarts. It is the
    /// only thing the relay writes.
    pub fn kept_in(dir: &Path, names: &[&str]) -> Result<KeptCertificate, TlsError> {
        let (cert, key) = (dir.join(KEPT_CERT_FILE), dir.join(KEPT_KEY_FILE));
        if cert.exists() || key.exists() {
            let certificate = Self::from_pem_files(&cert, &key)?;
            return Ok(KeptCertificate {
                certificate,
                made: false,
            });
        }
        let failed = |err: std::io::Error| TlsError::StateDir {
            path: dir.display().to_string(),
            reason: err.to_string(),
        };
        create_private_dir(dir).map_err(failed)?;
        let (cert_pem, key_pem) = Self::self_signed_pem(names)?;
        write_whole(&key, key_pem.as_bytes(), 0o600).map_err(failed)?;
        write_whole(&cert, cert_pem.as_bytes(), 0o644).map_err(failed)?;
        let certificate = Self::from_pem_files(&cert, &key)?;
        Ok(KeptCertificate {
            certificate,
            made: true,
        })
    }

    /// The certificate and key in PEM, for writing files in tests and tooling.
    pub fn self_signed_pem(names: &[&str]) -> Result<(String, String), TlsError> {
        let certified = rcgen::generate_simple_self_signed(with_wildcards(names))
            .map_err(|err| TlsError::SelfSigned(err.to_string()))?;
        Ok((certified.cert.pem(), certified.signing_key.serialize_pem()))
    }

    /// The leaf certificate, for test clients that trust it alone.
    #[cfg(any(test, feature = "bench"))]
    pub(crate) fn leaf(&self) -> &CertificateDer<'static> {
        &self.chain[0]
    }

    /// The key of the relay's QUIC stateless resets, derived from the certificate's
    /// private key: a relay restarted with the same key answers packets of the
    /// connections its predecessor held with a reset those peers recognise, so they
    /// notice at their next packet instead of at their idle timeout.
    pub(crate) fn stateless_reset_key(&self) -> ring::hmac::Key {
        let label = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, STATELESS_RESET_LABEL);
        let derived = ring::hmac::sign(&label, self.key.secret_der());
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, derived.as_ref())
    }

    /// The pin of the leaf certificate (what a relay URL carries).
    pub fn pin(&self) -> CertPin {
        // `chain` is never empty: both constructors guarantee a leaf.
        CertPin::of_certificate(&self.chain[0])
    }
}

/// `names`, each DNS name followed by its wildcard `*.<name>`, which covers every
/// host's web origin `<host id>.<name>` (the web player is served there, one origin
/// per host). IP addresses have no subdomains and stay as they are.
fn with_wildcards(names: &[&str]) -> Vec<String> {
    let mut all = Vec::with_capacity(names.len() * 2);
    for name in names {
        if !all.iter().any(|known| known == name) {
            all.push(name.to_string());
        }
        let wildcard = format!("*.{name}");
        if name.parse::<std::net::IpAddr>().is_err()
            && !name.starts_with("*.")
            && !all.contains(&wildcard)
        {
            all.push(wildcard);
        }
    }
    all
}

/// The TLS side of the relay's QUIC server configuration: TLS 1.3 only, our ALPN
/// and HTTP/3's only, no 0-RTT (early data is replayable, and nothing here is worth
/// the risk). With `short_lived`, a browser (a client that offers `h3` and not our
/// ALPN) gets the short-lived certificate its page accepts by hash.
pub(crate) fn server_crypto(
    certificate: &RelayCertificate,
    short_lived: Option<SharedShortLived>,
) -> Result<Arc<quinn::crypto::rustls::QuicServerConfig>, TlsError> {
    // `h3`: WebTransport for browsers' players (see the `webtransport` module).
    let alpn = [ALPN, H3_ALPN];
    let mut tls = server_tls(certificate, &alpn)?;
    if let Some(short_lived) = short_lived {
        let main = rustls::crypto::ring::sign::any_supported_type(&certificate.key)
            .map_err(|err| TlsError::Config(err.to_string()))?;
        tls.cert_resolver = Arc::new(AlpnResolver {
            main: Arc::new(CertifiedKey::new(certificate.chain.clone(), main)),
            short_lived,
        });
    }
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|err| TlsError::Config(err.to_string()))?;
    Ok(Arc::new(crypto))
}

/// Chooses the certificate by the client's ALPN (see [`server_crypto`]).
struct AlpnResolver {
    main: Arc<CertifiedKey>,
    short_lived: SharedShortLived,
}

impl std::fmt::Debug for AlpnResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlpnResolver").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for AlpnResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let offers = |wanted: &[u8]| {
            hello
                .alpn()
                .is_some_and(|mut offered| offered.any(|alpn| alpn == wanted))
        };
        if offers(H3_ALPN) && !offers(ALPN) {
            let short_lived = self.short_lived.read().unwrap_or_else(|p| p.into_inner());
            return Some(short_lived.current());
        }
        Some(self.main.clone())
    }
}

/// The TLS settings of every transport: TLS 1.3 only, the given ALPNs only (QUIC:
/// `blindrelay/1`; TCP: that, and `http/1.1` for WebSocket), no early data, no client
/// certificates. Over TCP these are the whole handshake; QUIC wraps them.
pub(crate) fn server_tls(
    certificate: &RelayCertificate,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|err| TlsError::Config(err.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certificate.chain.clone(), certificate.key.clone_key())
        .map_err(|err| TlsError::Config(err.to_string()))?;
    tls.alpn_protocols = alpn.iter().map(|alpn| alpn.to_vec()).collect();
    tls.max_early_data_size = 0;
    // Resumption for clients that come back (a TCP host's connection for each
    // session, a TCP player's): a ticket sealed with a key that lives in memory only
    // and changes every 6 hours, so the relay keeps nothing per client, and a
    // resumed handshake skips the certificate and its signature (docs/performance.md).
    // One ticket a handshake: each resumed connection brings the next one.
    tls.ticketer =
        rustls::crypto::ring::Ticketer::new().map_err(|err| TlsError::Config(err.to_string()))?;
    tls.send_tls13_tickets = 1;
    Ok(tls)
}

/// Creates `dir` (and its parents) if missing, the last one readable by its owner
/// only.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Writes `bytes` to a temporary file beside `path` with `mode`, then renames it to
/// `path`: a relay stopped halfway leaves no half-written file under the name.
fn write_whole(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    let temporary = path.with_extension("pem.new");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_certificate_is_made_once_and_the_same_at_every_start() {
        let dir = std::env::temp_dir().join(format!("blindrelay-kept-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let state = dir.join("state");
        let first = RelayCertificate::kept_in(&state, &["localhost"]).unwrap();
        assert!(first.made);
        let again = RelayCertificate::kept_in(&state, &["other.example"]).unwrap();
        assert!(
            !again.made,
            "the folder's certificate is reused, whatever the names"
        );
        assert_eq!(first.certificate.leaf(), again.certificate.leaf());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&state.join(KEPT_KEY_FILE)), 0o600);
            assert_eq!(mode(&state), 0o700);
        }
        // Half a pair is an error to fix, not a reason to make a new identity.
        std::fs::remove_file(state.join(KEPT_KEY_FILE)).unwrap();
        assert!(RelayCertificate::kept_in(&state, &["localhost"]).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
