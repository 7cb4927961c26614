//! The certificates of the relay's WebTransport endpoint, for relays that browsers
//! do not trust by a CA.
//!
//! A relay trusted by pin (no public name) has a certificate no browser accepts by
//! itself. WebTransport lets a page accept a certificate by its SHA-256 instead
//! (`serverCertificateHashes`), but only one valid for at most 14 days and with an
//! ECDSA key. So the relay makes such a certificate in memory for the `h3` ALPN
//! (valid [`VALIDITY`]), publishes its hash in `webtransport.json`, and rotates it
//! before it expires:
//!
//! - [`ANNOUNCE_AFTER`] into a certificate's life, the next one is made and its hash
//!   listed beside the current one, so a page that read the list shortly before the
//!   switch still accepts the relay after it;
//! - [`SWITCH_AFTER`], the relay presents the next one; the previous one's hash
//!   stays listed until it expires (a page may hold a list read moments before).
//!
//! Everything here takes the time as an argument, so the rotation is tested on an
//! injected clock.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// How long a certificate is valid: under the 14 days browsers allow, with room
/// for clocks that are a little off.
pub(crate) const VALIDITY: Duration = Duration::from_secs(10 * 24 * 3600);

/// How far before the start of its validity a certificate is dated, for browsers
/// whose clocks run a little behind (counted in the 14 days).
const BACKDATE: Duration = Duration::from_secs(3600);

/// When the next certificate is made and listed, counted from the current one's
/// issue.
pub(crate) const ANNOUNCE_AFTER: Duration = Duration::from_secs(6 * 24 * 3600);

/// When the relay switches to the next certificate.
pub(crate) const SWITCH_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

/// How often the relay checks whether a step is due.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(600);

/// One certificate and what the rotation needs of it.
#[derive(Clone)]
struct Issued {
    key: Arc<CertifiedKey>,
    hash: [u8; 32],
    issued: SystemTime,
    expires: SystemTime,
}

/// The current, next and previous certificates.
pub(crate) struct ShortLived {
    names: Vec<String>,
    current: Issued,
    next: Option<Issued>,
    previous: Option<Issued>,
}

impl ShortLived {
    /// A first certificate for `names`, issued at `now`.
    pub(crate) fn new(names: Vec<String>, now: SystemTime) -> Result<Self, ShortLivedError> {
        let current = issue(&names, now)?;
        Ok(Self {
            names,
            current,
            next: None,
            previous: None,
        })
    }

    /// Takes the steps due at `now`; returns whether anything changed.
    pub(crate) fn rotate(&mut self, now: SystemTime) -> Result<bool, ShortLivedError> {
        let age = now
            .duration_since(self.current.issued)
            .unwrap_or(Duration::ZERO);
        let mut changed = false;
        if self.next.is_none() && age >= ANNOUNCE_AFTER {
            self.next = Some(issue(&self.names, now)?);
            changed = true;
        }
        if age >= SWITCH_AFTER {
            let next = match self.next.take() {
                Some(next) => next,
                // A relay that slept through the announcement (a suspended
                // machine): switch at once.
                None => issue(&self.names, now)?,
            };
            self.previous = Some(std::mem::replace(&mut self.current, next));
            changed = true;
        }
        if self
            .previous
            .as_ref()
            .is_some_and(|previous| now >= previous.expires)
        {
            self.previous = None;
            changed = true;
        }
        Ok(changed)
    }

    /// The certificate the relay presents now.
    pub(crate) fn current(&self) -> Arc<CertifiedKey> {
        self.current.key.clone()
    }

    /// The hashes a page may accept: current, next, and previous while valid.
    pub(crate) fn hashes(&self) -> Vec<[u8; 32]> {
        [
            Some(&self.current),
            self.next.as_ref(),
            self.previous.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(|issued| issued.hash)
        .collect()
    }
}

/// Why a short-lived certificate could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShortLivedError {
    /// The certificate generator failed.
    #[error("cannot make a short-lived WebTransport certificate: {0}")]
    Make(String),
    /// rustls refused its key.
    #[error("the short-lived WebTransport certificate's key was refused: {0}")]
    Key(String),
}

/// A short-lived certificate the TLS resolver and `webtransport.json` share.
pub(crate) type SharedShortLived = Arc<RwLock<ShortLived>>;

/// A fresh ECDSA P-256 certificate for `names`, valid from `now` for [`VALIDITY`].
fn issue(names: &[String], now: SystemTime) -> Result<Issued, ShortLivedError> {
    let failed = |err: rcgen::Error| ShortLivedError::Make(err.to_string());
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let start = rcgen::date_time_ymd(1970, 1, 1) + since_epoch;
    let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(failed)?;
    params.not_before = start - BACKDATE;
    params.not_after = start + VALIDITY;
    let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(failed)?;
    let cert = params.self_signed(&key_pair).map_err(failed)?;
    let der: CertificateDer<'static> = cert.der().clone();
    let hash = ring::digest::digest(&ring::digest::SHA256, &der);
    let mut sha = [0u8; 32];
    sha.copy_from_slice(hash.as_ref());
    let key = PrivateKeyDer::Pkcs8(key_pair.serialize_der().into());
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|err| ShortLivedError::Key(err.to_string()))?;
    Ok(Issued {
        key: Arc::new(CertifiedKey::new(vec![der], signing)),
        hash: sha,
        issued: now,
        expires: now + VALIDITY,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn start() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    #[test]
    fn a_certificate_is_valid_under_fourteen_days_as_browsers_require() {
        assert!(VALIDITY + BACKDATE < 14 * DAY);
        assert!(SWITCH_AFTER < VALIDITY && ANNOUNCE_AFTER < SWITCH_AFTER);
    }

    #[test]
    fn the_next_certificate_is_listed_before_the_switch_and_the_previous_after() {
        let mut certs = ShortLived::new(vec!["localhost".to_owned()], start()).unwrap();
        let first = certs.hashes();
        assert_eq!(first.len(), 1);
        let first_key = certs.current();

        // Nothing is due before the announcement.
        assert!(!certs
            .rotate(start() + ANNOUNCE_AFTER - Duration::from_secs(1))
            .unwrap());
        assert_eq!(certs.hashes(), first);

        // Announced: listed, not yet presented.
        assert!(certs.rotate(start() + ANNOUNCE_AFTER).unwrap());
        let announced = certs.hashes();
        assert_eq!(announced.len(), 2);
        assert_eq!(announced[0], first[0]);
        assert!(Arc::ptr_eq(&certs.current(), &first_key));
        assert!(!certs.rotate(start() + ANNOUNCE_AFTER + DAY / 2).unwrap());

        // Switched: the announced one is presented; the first stays listed.
        assert!(certs.rotate(start() + SWITCH_AFTER).unwrap());
        assert!(!Arc::ptr_eq(&certs.current(), &first_key));
        assert_eq!(certs.hashes(), vec![announced[1], first[0]]);

        // The first expires and leaves the list.
        assert!(certs.rotate(start() + VALIDITY).unwrap());
        assert_eq!(certs.hashes(), vec![announced[1]]);

        // The second's life repeats the first's, counted from its issue (at the
        // announcement).
        let second = start() + ANNOUNCE_AFTER;
        assert!(certs.rotate(second + ANNOUNCE_AFTER).unwrap());
        assert_eq!(certs.hashes().len(), 2);
        assert!(certs.rotate(second + SWITCH_AFTER).unwrap());
        assert_eq!(certs.hashes()[1], announced[1]);
    }

    #[test]
    fn a_relay_that_slept_past_the_switch_switches_at_once() {
        let mut certs = ShortLived::new(vec!["localhost".to_owned()], start()).unwrap();
        let first = certs.hashes()[0];
        // Woken after the first certificate expired: a fresh one is presented at once.
        assert!(certs.rotate(start() + VALIDITY + DAY).unwrap());
        let hashes = certs.hashes();
        assert_eq!(hashes.len(), 1, "the expired one is not listed");
        assert_ne!(hashes[0], first);
    }

    #[test]
    fn the_hash_is_the_sha256_of_the_presented_certificate() {
        let certs = ShortLived::new(vec!["localhost".to_owned()], start()).unwrap();
        let der = &certs.current().cert[0];
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        assert_eq!(certs.hashes()[0].as_slice(), digest.as_ref());
    }
}
