//! Identities: X25519 static keys and the host id derived from them.
//!
//! A host's identity *is* its X25519 static public key: the [`HostId`] a player asks
//! the relay for is the same key the player's Noise handshake encrypts to, so a relay
//! that pairs the player with anyone else gets a handshake nobody can answer. Players
//! have static keys too ([`PublicKey`]), which a host may use to decide whom to serve.

use std::fmt;
use std::str::FromStr;

use ring::rand::{SecureRandom, SystemRandom};

use crate::encoding::{base32_decode, base32_encode};

/// Length of every X25519 key, public or secret.
pub const KEY_LEN: usize = 32;

/// Why a key could not be read or made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The text is not base32 of exactly 32 bytes.
    #[error("not a key: expected {expected} base32 characters encoding 32 bytes")]
    Malformed {
        /// How many characters a key has in text form.
        expected: usize,
    },
    /// The key file does not have the expected shape.
    #[error("not a blindrelay key file: {reason}")]
    BadKeyFile {
        /// What was wrong.
        reason: &'static str,
    },
    /// The file is a blindrelay file of another kind (an issuer key, say).
    #[error("this file is {}, not {}: {}", found.what(), want.what(), want.which_file())]
    WrongKind {
        /// What the file holds.
        found: KeyFileKind,
        /// What was asked for.
        want: KeyFileKind,
    },
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed")]
    Random,
}

/// First line of a host's or player's secret key file.
pub const IDENTITY_KEY_FILE_HEADER: &str =
    "# blindrelay secret key (X25519); keep this file private";

/// First line of a token issuer's secret key file.
pub const ISSUER_KEY_FILE_HEADER: &str =
    "# blindrelay token issuer key (Ed25519 seed); keep this file private";

/// First line of a token issuer's public key file, the one relays read.
pub const ISSUER_PUBLIC_KEY_FILE_HEADER: &str = "# blindrelay token issuer public key";

/// The kinds of key file people hand to blindrelay's commands. All three blindrelay
/// kinds hold 32 bytes in base32, so only their first line tells them apart: each
/// reader looks at it to refuse a file of another kind with a message that names the
/// right one, instead of, say, a relay that starts with a secret key as its issuer
/// list and then refuses every token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyFileKind {
    /// A host's or player's secret key (`blindrelay keygen`).
    Identity,
    /// A token issuer's secret signing key (`blindrelay token keygen`, FILE).
    IssuerSecret,
    /// A token issuer's public key file (`blindrelay token keygen`, FILE.pub).
    IssuerPublic,
    /// A PEM file: a TLS certificate or private key, such as the relay's.
    Pem,
}

impl KeyFileKind {
    /// What the file is, by its header line; `None` for a file without one (a
    /// hand-written list, or a file that is no key at all).
    pub fn of(text: &str) -> Option<Self> {
        text.lines().map(str::trim).find_map(|line| match line {
            IDENTITY_KEY_FILE_HEADER => Some(Self::Identity),
            ISSUER_KEY_FILE_HEADER => Some(Self::IssuerSecret),
            ISSUER_PUBLIC_KEY_FILE_HEADER => Some(Self::IssuerPublic),
            _ if line.starts_with("-----BEGIN ") => Some(Self::Pem),
            _ => None,
        })
    }

    /// `Err` when `text` is a key file of another kind than `want`.
    pub fn expect(text: &str, want: Self) -> Result<(), KeyError> {
        match Self::of(text) {
            Some(found) if found != want => Err(KeyError::WrongKind { found, want }),
            _ => Ok(()),
        }
    }

    /// What a file of this kind is, for messages.
    pub fn what(self) -> &'static str {
        match self {
            Self::Identity => "a host or player secret key (from `blindrelay keygen`)",
            Self::IssuerSecret => {
                "a token issuer's secret signing key (from `blindrelay token keygen`)"
            }
            Self::IssuerPublic => {
                "a token issuer's public key file (the .pub file from `blindrelay token keygen`)"
            }
            Self::Pem => "a PEM file (a TLS certificate or key)",
        }
    }

    /// Which file to give instead, for messages.
    pub fn which_file(self) -> &'static str {
        match self {
            Self::Identity => "give the key file that `blindrelay keygen --out FILE` wrote",
            Self::IssuerSecret => {
                "give the secret key file that `blindrelay token keygen --out FILE` wrote \
                 (FILE itself, not FILE.pub)"
            }
            Self::IssuerPublic => {
                "give FILE.pub, the public key file that `blindrelay token keygen --out FILE` \
                 wrote beside the secret key (the secret key never goes on a relay)"
            }
            Self::Pem => "give a PEM certificate or key",
        }
    }
}

/// Characters of a key in text form (base32 of 32 bytes, unpadded).
pub const KEY_TEXT_LEN: usize = 52;

/// An X25519 public key, shown as 52 lower-case base32 characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; KEY_LEN]);

impl PublicKey {
    /// Wraps raw key bytes.
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw key bytes.
    pub const fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// A short prefix for logs: enough to tell keys apart, not the whole identity.
    pub fn short(&self) -> String {
        let mut text = self.to_string();
        text.truncate(10);
        text
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&base32_encode(&self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.short())
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let malformed = KeyError::Malformed {
            expected: KEY_TEXT_LEN,
        };
        let bytes = base32_decode(text.trim()).ok_or(malformed.clone())?;
        let bytes: [u8; KEY_LEN] = bytes.try_into().map_err(|_| malformed)?;
        Ok(Self(bytes))
    }
}

/// The identity under which a host is reachable: its X25519 static public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostId(PublicKey);

impl HostId {
    /// The host id of the host whose static public key is `key`.
    pub const fn from_public_key(key: PublicKey) -> Self {
        Self(key)
    }

    /// Wraps raw key bytes.
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(PublicKey::from_bytes(bytes))
    }

    /// The host's static public key.
    pub const fn public_key(&self) -> &PublicKey {
        &self.0
    }

    /// The raw key bytes.
    pub const fn as_bytes(&self) -> &[u8; KEY_LEN] {
        self.0.as_bytes()
    }

    /// A short prefix for logs (see [`PublicKey::short`]).
    pub fn short(&self) -> String {
        self.0.short()
    }
}

impl fmt::Display for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for HostId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostId({})", self.short())
    }
}

impl FromStr for HostId {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.parse().map(Self)
    }
}

/// An X25519 static secret key (a host's identity, or a player's).
///
/// The bytes are wiped from memory when the key is dropped. `Debug` never shows them.
#[derive(Clone)]
pub struct SecretKey(x25519_dalek::StaticSecret);

impl SecretKey {
    /// Makes a fresh key from the operating system's random number generator.
    pub fn generate() -> Result<Self, KeyError> {
        let mut bytes = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| KeyError::Random)?;
        Ok(Self::from_bytes(bytes))
    }

    /// Wraps raw secret bytes (X25519 clamps them when used).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(x25519_dalek::StaticSecret::from(bytes))
    }

    /// The raw secret bytes, for handing to the Noise library.
    pub fn to_bytes(&self) -> [u8; KEY_LEN] {
        self.0.to_bytes()
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519_dalek::PublicKey::from(&self.0).to_bytes())
    }

    /// The host id of a host that uses this key.
    pub fn host_id(&self) -> HostId {
        HostId(self.public_key())
    }

    /// X25519 with a peer's public key. `None` when the result is all zeros, which
    /// happens only for a low-order peer key: such a "shared secret" is known to
    /// everyone and must never be used as a key.
    pub fn diffie_hellman(&self, peer: &PublicKey) -> Option<[u8; KEY_LEN]> {
        let shared = self
            .0
            .diffie_hellman(&x25519_dalek::PublicKey::from(peer.0));
        shared.was_contributory().then(|| shared.to_bytes())
    }

    /// The text written to a key file: a comment line, then the key in base32.
    pub fn to_key_file(&self) -> String {
        format!(
            "{IDENTITY_KEY_FILE_HEADER}\n{}\n",
            base32_encode(self.0.as_bytes())
        )
    }

    /// Reads a key file written by [`SecretKey::to_key_file`]. Lines starting with `#`
    /// and blank lines are ignored; exactly one key line must remain. A file whose
    /// header says it is another kind of key is refused ([`KeyError::WrongKind`]).
    pub fn from_key_file(text: &str) -> Result<Self, KeyError> {
        KeyFileKind::expect(text, KeyFileKind::Identity)?;
        let mut lines = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'));
        let line = lines.next().ok_or(KeyError::BadKeyFile {
            reason: "no key line",
        })?;
        if lines.next().is_some() {
            return Err(KeyError::BadKeyFile {
                reason: "more than one key line",
            });
        }
        let bytes = base32_decode(line).ok_or(KeyError::BadKeyFile {
            reason: "key line is not base32",
        })?;
        let bytes: [u8; KEY_LEN] = bytes.try_into().map_err(|_| KeyError::BadKeyFile {
            reason: "key line is not 32 bytes",
        })?;
        Ok(Self::from_bytes(bytes))
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(public {})", self.public_key().short())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7748_public_key_vector() {
        // RFC 7748, section 6.1: Alice's private and public keys.
        let secret = hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        let public = hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
        let key = SecretKey::from_bytes(secret.try_into().unwrap());
        assert_eq!(key.public_key().as_bytes()[..], public[..]);
    }

    #[test]
    fn host_id_text_round_trips() {
        let key = SecretKey::generate().unwrap();
        let text = key.host_id().to_string();
        assert_eq!(text.len(), KEY_TEXT_LEN);
        assert_eq!(text.parse::<HostId>().unwrap(), key.host_id());
        assert_eq!(
            text.to_ascii_uppercase().parse::<HostId>().unwrap(),
            key.host_id()
        );
        assert!(text[1..].parse::<HostId>().is_err());
        assert!("hello".parse::<HostId>().is_err());
    }

    #[test]
    fn key_file_round_trips_and_rejects_junk() {
        let key = SecretKey::generate().unwrap();
        let file = key.to_key_file();
        let back = SecretKey::from_key_file(&file).unwrap();
        assert_eq!(back.to_bytes(), key.to_bytes());
        assert!(SecretKey::from_key_file("").is_err());
        assert!(SecretKey::from_key_file("# only a comment\n").is_err());
        assert!(SecretKey::from_key_file(&format!("{file}{file}")).is_err());
        assert!(SecretKey::from_key_file("abc\n").is_err());
    }

    #[test]
    fn key_files_of_other_kinds_are_refused_naming_the_right_file() {
        let key = SecretKey::generate().unwrap();
        let line = base32_encode(&key.to_bytes());
        for (header, found) in [
            (ISSUER_KEY_FILE_HEADER, KeyFileKind::IssuerSecret),
            (ISSUER_PUBLIC_KEY_FILE_HEADER, KeyFileKind::IssuerPublic),
        ] {
            let err = SecretKey::from_key_file(&format!("{header}\n{line}\n")).unwrap_err();
            assert_eq!(
                err,
                KeyError::WrongKind {
                    found,
                    want: KeyFileKind::Identity
                }
            );
            assert!(err.to_string().contains("blindrelay keygen --out"), "{err}");
        }
        let pem = "-----BEGIN PRIVATE KEY-----\nMIGHAgEA\n-----END PRIVATE KEY-----\n";
        let err = SecretKey::from_key_file(pem).unwrap_err();
        assert!(err.to_string().contains("PEM"), "{err}");
        // A bare key line, without any header, is still read.
        assert!(SecretKey::from_key_file(&format!("{line}\n")).is_ok());
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let key = SecretKey::from_bytes([7; 32]);
        let shown = format!("{key:?}");
        assert!(!shown.contains(&base32_encode(&[7; 32])));
    }

    #[test]
    fn low_order_peer_keys_give_no_shared_secret() {
        let key = SecretKey::generate().unwrap();
        assert!(key
            .diffie_hellman(&PublicKey::from_bytes([0; 32]))
            .is_none());
        let mut one = [0u8; 32];
        one[0] = 1;
        assert!(key.diffie_hellman(&PublicKey::from_bytes(one)).is_none());
        let other = SecretKey::generate().unwrap();
        assert_eq!(
            key.diffie_hellman(&other.public_key()),
            other.diffie_hellman(&key.public_key())
        );
    }

    pub(crate) fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }
}
