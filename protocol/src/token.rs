//! Registration tokens: an operator's permission for one host id to register, checked
//! by the relay with nothing but the issuer's public key.
//!
//! The operator's account service holds an Ed25519 signing key (the *issuer key*) and
//! signs a token for each host it lets in: which host id, until when, and in which
//! bandwidth tier. A relay holds only the issuer's public keys (one per line in its
//! issuer file, so keys can rotate), so a compromised relay cannot mint tokens, and it
//! needs no database: [`verify`] is a pure function of the token, the keys, the host
//! id that proved possession of its key, and the time.
//!
//! Binary form (all integers big-endian):
//!
//! ```text
//! version     u8       = 1
//! issuer      [u8; 8]  key id: first 8 bytes of SHA-256(issuer public key)
//! host id     [u8; 32]
//! expires     u64      unix seconds; the token is valid while now < expires
//! tier        u8 length (1 ..= 32) + UTF-8 tier name
//! signature   [u8; 64] Ed25519 over TOKEN_CONTEXT || every byte above
//! ```
//!
//! In text it is `brk` followed by lower-case base32 of the binary form. The key id
//! lets the relay pick the one key to try instead of trying every key it holds; it is
//! not trusted for anything else (the signature is checked with the key it names).
//! The signature covers a domain-separation prefix, so an issuer key used by mistake
//! for something else cannot produce a valid token, and vice versa.

use std::fmt;
use std::str::FromStr;

use bytes::BufMut;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};

use crate::encoding::{base32_decode, base32_encode, Reader};
use crate::error::DecodeError;
use crate::keys::{
    HostId, KeyError, KeyFileKind, ISSUER_KEY_FILE_HEADER, ISSUER_PUBLIC_KEY_FILE_HEADER,
};

/// Prefix of a token in text form.
pub const TOKEN_PREFIX: &str = "brk";

/// Version byte of the token encoding.
pub const TOKEN_VERSION: u8 = 1;

/// Domain separation for the issuer's signature.
pub const TOKEN_CONTEXT: &[u8] = b"blindrelay/1 registration token";

/// Longest tier name in a token, in bytes.
pub const MAX_TIER_LEN: usize = 32;

/// Length of an issuer key id.
pub const KEY_ID_LEN: usize = 8;

/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// Length of an Ed25519 public key or seed.
pub const ISSUER_KEY_LEN: usize = 32;

/// Longest token in binary form that this version makes.
pub const MAX_TOKEN_LEN: usize = 1 + KEY_ID_LEN + 32 + 8 + 1 + MAX_TIER_LEN + SIGNATURE_LEN;

/// Why a token was refused. Each variant maps to its own wire error code, so a host
/// owner learns exactly what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The bytes are not a token of this version.
    #[error("registration token is malformed: {0}")]
    Malformed(#[from] DecodeError),
    /// The text does not start with `brk`.
    #[error("not a registration token (tokens start with {TOKEN_PREFIX})")]
    NotAToken,
    /// The text starts with `brk` but is not a whole token: a character is missing
    /// or mistyped.
    #[error("registration token is damaged (cut short or mistyped): copy it again whole")]
    Damaged,
    /// No key of the relay's issuer file has the token's key id.
    #[error("registration token was signed by an issuer this relay does not trust")]
    UnknownIssuer,
    /// The signature does not verify: the token was altered or forged.
    #[error("registration token signature does not verify (altered or forged)")]
    BadSignature,
    /// The token's expiry has passed.
    #[error("registration token expired at {expires} (unix seconds; now {now})")]
    Expired {
        /// When it expired.
        expires: u64,
        /// The verifier's clock.
        now: u64,
    },
    /// The token was issued for another host id.
    #[error("registration token was issued for another host id")]
    WrongHost,
}

impl TokenError {
    /// The error code that tells a host why its registration token was refused.
    pub fn code(&self) -> crate::ErrorCode {
        use crate::ErrorCode;
        match self {
            Self::Malformed(_) | Self::NotAToken | Self::Damaged => ErrorCode::TokenMalformed,
            Self::Expired { .. } => ErrorCode::TokenExpired,
            Self::WrongHost => ErrorCode::TokenWrongHost,
            Self::UnknownIssuer | Self::BadSignature => ErrorCode::TokenInvalid,
        }
    }
}

/// What a valid token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The host id allowed to register.
    pub host_id: HostId,
    /// Unix seconds; valid while the clock reads less.
    pub expires: u64,
    /// The bandwidth tier the host gets (a `[tiers.NAME]` of the relay's config, or
    /// `default`).
    pub tier: String,
}

/// An issuer key id: the first 8 bytes of SHA-256 of the public key.
pub type KeyId = [u8; KEY_ID_LEN];

/// A parsed, not yet verified token.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    issuer: KeyId,
    claims: Claims,
    signature: [u8; SIGNATURE_LEN],
}

impl Token {
    /// The claims, unverified: use [`verify`] before trusting them.
    pub fn claims_unverified(&self) -> &Claims {
        &self.claims
    }

    /// The key id of the issuer that signed it.
    pub fn issuer(&self) -> &KeyId {
        &self.issuer
    }

    /// The binary form (see the module documentation).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = body(&self.issuer, &self.claims);
        out.put_slice(&self.signature);
        out
    }

    /// Parses the binary form; checks the shape only, not the signature.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TokenError> {
        let mut r = Reader::new(bytes);
        let version = r.u8()?;
        if version != TOKEN_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                version,
                supported: TOKEN_VERSION,
            }
            .into());
        }
        let issuer = r.array()?;
        let host_id = HostId::from_bytes(r.array()?);
        let expires = r.u64()?;
        let tier_len = usize::from(r.u8()?);
        if tier_len == 0 || tier_len > MAX_TIER_LEN {
            return Err(DecodeError::FieldTooLong {
                field: "tier name (1 to 32 bytes)",
                len: tier_len,
                max: MAX_TIER_LEN,
            }
            .into());
        }
        let tier = std::str::from_utf8(r.take(tier_len)?)
            .map_err(|_| DecodeError::InvalidUtf8 { field: "tier name" })?
            .to_owned();
        let signature = r.array()?;
        r.finish()?;
        Ok(Self {
            issuer,
            claims: Claims {
                host_id,
                expires,
                tier,
            },
            signature,
        })
    }
}

/// The signed part of a token: everything but the signature.
fn body(issuer: &KeyId, claims: &Claims) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAX_TOKEN_LEN);
    out.put_u8(TOKEN_VERSION);
    out.put_slice(issuer);
    out.put_slice(claims.host_id.as_bytes());
    out.put_u64(claims.expires);
    // Issuers refuse longer names (IssuerSecretKey::issue), so this fits a u8.
    out.put_u8(claims.tier.len() as u8);
    out.put_slice(claims.tier.as_bytes());
    out
}

fn signed_message(body: &[u8]) -> Vec<u8> {
    [TOKEN_CONTEXT, body].concat()
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{TOKEN_PREFIX}{}", base32_encode(&self.to_bytes()))
    }
}

/// Shows what a token grants but not whom: no host id (a token is meant for one
/// host's owner and the relay's logs name no host), and no signature.
impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("len", &self.to_bytes().len())
            .field("expires", &self.claims.expires)
            .field("tier", &self.claims.tier)
            .finish_non_exhaustive()
    }
}

impl FromStr for Token {
    type Err = TokenError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let rest = text
            .get(..TOKEN_PREFIX.len())
            .filter(|prefix| prefix.eq_ignore_ascii_case(TOKEN_PREFIX))
            .map(|_| &text[TOKEN_PREFIX.len()..])
            .ok_or(TokenError::NotAToken)?;
        // It does start like a token: bad base32 or too few bytes is damage in
        // copying, which is what the user has to fix.
        let body = base32_decode(rest).ok_or(TokenError::Damaged)?;
        Self::from_bytes(&body).map_err(|err| match err {
            TokenError::Malformed(DecodeError::Truncated { .. }) => TokenError::Damaged,
            other => other,
        })
    }
}

/// An issuer's Ed25519 public key, as a relay holds it.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuerPublicKey {
    bytes: [u8; ISSUER_KEY_LEN],
    id: KeyId,
}

impl IssuerPublicKey {
    /// Wraps raw Ed25519 public key bytes.
    pub fn from_bytes(bytes: [u8; ISSUER_KEY_LEN]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, &bytes);
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&digest.as_ref()[..KEY_ID_LEN]);
        Self { bytes, id }
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; ISSUER_KEY_LEN] {
        &self.bytes
    }

    /// The key id tokens signed by this key carry.
    pub fn id(&self) -> &KeyId {
        &self.id
    }
}

impl IssuerPublicKey {
    /// The text of a public key file for relays: a comment line, then the key. More
    /// keys may be appended, one per line, to rotate.
    pub fn to_key_file(&self) -> String {
        format!("{ISSUER_PUBLIC_KEY_FILE_HEADER}\n{self}\n")
    }
}

impl fmt::Display for IssuerPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&base32_encode(&self.bytes))
    }
}

impl fmt::Debug for IssuerPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = self.to_string();
        text.truncate(10);
        write!(f, "IssuerPublicKey({text})")
    }
}

impl FromStr for IssuerPublicKey {
    type Err = IssuerKeyError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bytes = base32_decode(text.trim()).ok_or(IssuerKeyError::Malformed)?;
        let bytes: [u8; ISSUER_KEY_LEN] =
            bytes.try_into().map_err(|_| IssuerKeyError::Malformed)?;
        Ok(Self::from_bytes(bytes))
    }
}

/// Why an issuer key or key file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IssuerKeyError {
    /// A key is not base32 of exactly 32 bytes.
    #[error("not an issuer key: expected 52 base32 characters encoding 32 bytes")]
    Malformed,
    /// A line of an issuer public key file is not a key.
    #[error("line {line}: not an issuer public key (52 base32 characters)")]
    BadLine {
        /// 1-based line number.
        line: usize,
    },
    /// The public key file lists no key at all.
    #[error("the issuer file lists no public key")]
    Empty,
    /// The signing key file does not have the expected shape.
    #[error("not a blindrelay issuer key file: {reason}")]
    BadKeyFile {
        /// What was wrong.
        reason: &'static str,
    },
    /// The file is a blindrelay key file of another kind (say, the issuer's secret
    /// key given where its public key file belongs).
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
    /// A tier name that does not fit a token.
    #[error("tier name must be 1 to {MAX_TIER_LEN} bytes, got {len}")]
    TierName {
        /// Its length.
        len: usize,
    },
}

/// Every issuer public key a relay trusts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IssuerKeys {
    keys: Vec<IssuerPublicKey>,
}

impl IssuerKeys {
    /// A set of keys.
    pub fn new(keys: Vec<IssuerPublicKey>) -> Self {
        Self { keys }
    }

    /// Parses an issuer file: one base32 public key per line; blank lines and lines
    /// starting with `#` are ignored. At least one key must remain. A file whose header
    /// says it is another kind of key (the issuer's *secret* key, a host key) is
    /// refused: its key line would parse, and the relay would refuse every token.
    pub fn parse(text: &str) -> Result<Self, IssuerKeyError> {
        expect_kind(text, KeyFileKind::IssuerPublic)?;
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = line
                .parse()
                .map_err(|_| IssuerKeyError::BadLine { line: i + 1 })?;
            keys.push(key);
        }
        if keys.is_empty() {
            return Err(IssuerKeyError::Empty);
        }
        Ok(Self { keys })
    }

    /// The keys, in file order.
    pub fn keys(&self) -> &[IssuerPublicKey] {
        &self.keys
    }

    fn find(&self, id: &KeyId) -> Option<&IssuerPublicKey> {
        self.keys.iter().find(|key| key.id() == id)
    }
}

/// Checks a token in binary form for `host_id` at unix time `now`.
///
/// The checks run in this order, and the first that fails is the answer: shape
/// ([`TokenError::Malformed`]), issuer ([`TokenError::UnknownIssuer`]), signature
/// ([`TokenError::BadSignature`]), host id ([`TokenError::WrongHost`]), expiry
/// ([`TokenError::Expired`]). Claims are compared only once the signature holds, so
/// an unsigned field never decides anything.
pub fn verify(
    token: &[u8],
    issuers: &IssuerKeys,
    host_id: &HostId,
    now: u64,
) -> Result<Claims, TokenError> {
    let token = Token::from_bytes(token)?;
    let key = issuers
        .find(&token.issuer)
        .ok_or(TokenError::UnknownIssuer)?;
    let message = signed_message(&body(&token.issuer, &token.claims));
    UnparsedPublicKey::new(&ED25519, key.as_bytes())
        .verify(&message, &token.signature)
        .map_err(|_| TokenError::BadSignature)?;
    if token.claims.host_id != *host_id {
        return Err(TokenError::WrongHost);
    }
    if now >= token.claims.expires {
        return Err(TokenError::Expired {
            expires: token.claims.expires,
            now,
        });
    }
    Ok(token.claims)
}

/// [`KeyFileKind::expect`] with this module's error.
fn expect_kind(text: &str, want: KeyFileKind) -> Result<(), IssuerKeyError> {
    KeyFileKind::expect(text, want).map_err(|err| match err {
        KeyError::WrongKind { found, want } => IssuerKeyError::WrongKind { found, want },
        _ => IssuerKeyError::BadKeyFile {
            reason: "unreadable header",
        },
    })
}

/// The operator's signing key. Lives with the account service, never on a relay.
///
/// `Debug` never shows the secret.
pub struct IssuerSecretKey {
    seed: [u8; ISSUER_KEY_LEN],
    pair: Ed25519KeyPair,
}

impl IssuerSecretKey {
    /// A fresh key from the operating system's random number generator.
    pub fn generate() -> Result<Self, IssuerKeyError> {
        let mut seed = [0u8; ISSUER_KEY_LEN];
        SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| IssuerKeyError::Random)?;
        Self::from_seed(seed)
    }

    /// The key with this 32-byte Ed25519 seed.
    pub fn from_seed(seed: [u8; ISSUER_KEY_LEN]) -> Result<Self, IssuerKeyError> {
        let pair =
            Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|_| IssuerKeyError::BadKeyFile {
                reason: "seed refused",
            })?;
        Ok(Self { seed, pair })
    }

    /// The public key relays put in their issuer file.
    pub fn public_key(&self) -> IssuerPublicKey {
        let mut bytes = [0u8; ISSUER_KEY_LEN];
        bytes.copy_from_slice(self.pair.public_key().as_ref());
        IssuerPublicKey::from_bytes(bytes)
    }

    /// Signs a token granting `claims`.
    pub fn issue(&self, claims: Claims) -> Result<Token, IssuerKeyError> {
        if claims.tier.is_empty() || claims.tier.len() > MAX_TIER_LEN {
            return Err(IssuerKeyError::TierName {
                len: claims.tier.len(),
            });
        }
        let issuer = *self.public_key().id();
        let signature = self.pair.sign(&signed_message(&body(&issuer, &claims)));
        let mut bytes = [0u8; SIGNATURE_LEN];
        bytes.copy_from_slice(signature.as_ref());
        Ok(Token {
            issuer,
            claims,
            signature: bytes,
        })
    }

    /// The text of a key file: a comment line, then the seed in base32.
    pub fn to_key_file(&self) -> String {
        format!("{ISSUER_KEY_FILE_HEADER}\n{}\n", base32_encode(&self.seed))
    }

    /// Reads a key file written by [`IssuerSecretKey::to_key_file`]; refuses a key
    /// file of another kind, such as the public key file beside it.
    pub fn from_key_file(text: &str) -> Result<Self, IssuerKeyError> {
        expect_kind(text, KeyFileKind::IssuerSecret)?;
        let mut lines = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'));
        let bad = |reason| IssuerKeyError::BadKeyFile { reason };
        let line = lines.next().ok_or(bad("no key line"))?;
        if lines.next().is_some() {
            return Err(bad("more than one key line"));
        }
        let seed = base32_decode(line).ok_or(bad("key line is not base32"))?;
        let seed: [u8; ISSUER_KEY_LEN] = seed
            .try_into()
            .map_err(|_| bad("key line is not 32 bytes"))?;
        Self::from_seed(seed)
    }
}

impl fmt::Debug for IssuerSecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IssuerSecretKey(public {:?})", self.public_key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn issuer() -> IssuerSecretKey {
        IssuerSecretKey::from_seed([7; 32]).unwrap()
    }

    fn claims() -> Claims {
        Claims {
            host_id: HostId::from_bytes([0xab; 32]),
            expires: 1_800_000_000,
            tier: "free".to_owned(),
        }
    }

    fn keys() -> IssuerKeys {
        IssuerKeys::new(vec![issuer().public_key()])
    }

    #[test]
    fn binary_form_and_signature_are_pinned() {
        // Ed25519 is deterministic: the same seed and claims always give these bytes.
        let token = issuer().issue(claims()).unwrap();
        let bytes = token.to_bytes();
        let expected_body = concat!(
            "01",
            "KEYID",
            "abababababababababababababababababababababababababababababababab",
            "000000006b49d200",
            "04",
            "66726565",
        )
        .replace("KEYID", &hex(issuer().public_key().id()));
        assert_eq!(hex(&bytes[..bytes.len() - SIGNATURE_LEN]), expected_body);
        assert_eq!(
            hex(issuer().public_key().as_bytes()),
            "ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c"
        );
        assert_eq!(hex(issuer().public_key().id()), "fe812c12f3ab4ce6");
        assert_eq!(hex(&bytes[bytes.len() - SIGNATURE_LEN..]), "2ecb287a086d7253a7341274453b7373b8de70762436b39615f3fc0d37165a637d37f8b91be6bcda770eb121d5d1e59d0c91a27dd5e3a08a0172745a3f3e110d");
    }

    #[test]
    fn a_valid_token_verifies_and_text_round_trips() {
        let token = issuer().issue(claims()).unwrap();
        let text = token.to_string();
        assert!(text.starts_with(TOKEN_PREFIX));
        let parsed: Token = text.parse().unwrap();
        assert_eq!(parsed, token);
        assert_eq!(text.to_ascii_uppercase().parse::<Token>().unwrap(), token);
        let host = claims().host_id;
        assert_eq!(
            verify(&parsed.to_bytes(), &keys(), &host, 1_700_000_000),
            Ok(claims())
        );
    }

    #[test]
    fn debug_names_neither_the_host_nor_the_token() {
        let token = issuer().issue(claims()).unwrap();
        let shown = format!("{token:?}");
        assert_eq!(
            shown,
            format!(
                "Token {{ len: {}, expires: 1800000000, tier: \"free\", .. }}",
                token.to_bytes().len()
            )
        );
        assert!(!shown.contains(&claims().host_id.short()));
        assert!(!shown.contains(&token.to_string()[TOKEN_PREFIX.len()..][..16]));
    }

    #[test]
    fn each_failure_has_its_own_error() {
        let host = claims().host_id;
        let token = issuer().issue(claims()).unwrap().to_bytes();
        let now = 1_700_000_000;

        // Expired: at and after the expiry.
        assert_eq!(
            verify(&token, &keys(), &host, 1_800_000_000),
            Err(TokenError::Expired {
                expires: 1_800_000_000,
                now: 1_800_000_000
            })
        );
        // Wrong host.
        let other = HostId::from_bytes([0xcd; 32]);
        assert_eq!(
            verify(&token, &keys(), &other, now),
            Err(TokenError::WrongHost)
        );
        // Tampered: every single-byte change of the signed part or the signature.
        for i in KEY_ID_LEN + 1..token.len() {
            let mut altered = token.clone();
            altered[i] ^= 0x01;
            let result = verify(&altered, &keys(), &host, now);
            assert!(
                matches!(
                    result,
                    Err(TokenError::BadSignature | TokenError::Malformed(_))
                ),
                "byte {i}: {result:?}"
            );
        }
        let mut altered = token.clone();
        altered[KEY_ID_LEN + 1 + 32 + 7] ^= 0xff; // the expiry's last byte
        assert_eq!(
            verify(&altered, &keys(), &host, now),
            Err(TokenError::BadSignature)
        );
        // Unknown issuer: a different key, or a changed key id.
        let stranger = IssuerSecretKey::from_seed([8; 32]).unwrap();
        let foreign = stranger.issue(claims()).unwrap().to_bytes();
        assert_eq!(
            verify(&foreign, &keys(), &host, now),
            Err(TokenError::UnknownIssuer)
        );
        let mut altered = token.clone();
        altered[1] ^= 1;
        assert_eq!(
            verify(&altered, &keys(), &host, now),
            Err(TokenError::UnknownIssuer)
        );
        // A key id that matches a trusted key but a signature by another key.
        let mut forged = foreign.clone();
        forged[1..1 + KEY_ID_LEN].copy_from_slice(issuer().public_key().id());
        assert_eq!(
            verify(&forged, &keys(), &host, now),
            Err(TokenError::BadSignature)
        );
        // Malformed: truncated, trailing bytes, unknown version, empty tier.
        assert!(matches!(
            verify(&token[..token.len() - 1], &keys(), &host, now),
            Err(TokenError::Malformed(_))
        ));
        let mut long = token.clone();
        long.push(0);
        assert!(matches!(
            verify(&long, &keys(), &host, now),
            Err(TokenError::Malformed(_))
        ));
        let mut version = token.clone();
        version[0] = 2;
        assert!(matches!(
            verify(&version, &keys(), &host, now),
            Err(TokenError::Malformed(
                DecodeError::UnsupportedVersion { .. }
            ))
        ));
        assert!(matches!(
            verify(&[], &keys(), &host, now),
            Err(TokenError::Malformed(_))
        ));
        assert_eq!("hello".parse::<Token>(), Err(TokenError::NotAToken));
    }

    #[test]
    fn rotated_keys_are_all_accepted() {
        let old = issuer();
        let new = IssuerSecretKey::from_seed([9; 32]).unwrap();
        let file = format!(
            "# issuer keys, newest first\n{}\n\n  {}  \n",
            new.public_key(),
            old.public_key()
        );
        let keys = IssuerKeys::parse(&file).unwrap();
        assert_eq!(keys.keys().len(), 2);
        let host = claims().host_id;
        for signer in [&old, &new] {
            let token = signer.issue(claims()).unwrap().to_bytes();
            assert!(verify(&token, &keys, &host, 0).is_ok());
        }
        assert_eq!(IssuerKeys::parse("# nothing\n"), Err(IssuerKeyError::Empty));
        assert_eq!(
            IssuerKeys::parse(&format!("{}\nnot a key\n", old.public_key())),
            Err(IssuerKeyError::BadLine { line: 2 })
        );
    }

    #[test]
    fn key_files_round_trip_and_hide_the_secret() {
        let key = IssuerSecretKey::generate().unwrap();
        let back = IssuerSecretKey::from_key_file(&key.to_key_file()).unwrap();
        assert_eq!(back.public_key(), key.public_key());
        assert!(!format!("{key:?}").contains(&base32_encode(&key.seed)));
        assert!(IssuerSecretKey::from_key_file("").is_err());
        assert!(IssuerSecretKey::from_key_file("abc").is_err());
    }

    #[test]
    fn each_key_file_refuses_the_other_kinds_naming_the_right_file() {
        let key = issuer();
        let public_file = key.public_key().to_key_file();
        let secret_file = key.to_key_file();
        let host_file = crate::SecretKey::generate().unwrap().to_key_file();

        assert_eq!(IssuerKeys::parse(&public_file).unwrap(), keys());
        let err = IssuerKeys::parse(&secret_file).unwrap_err();
        assert_eq!(
            err,
            IssuerKeyError::WrongKind {
                found: KeyFileKind::IssuerSecret,
                want: KeyFileKind::IssuerPublic
            }
        );
        assert!(err.to_string().contains("FILE.pub"), "{err}");
        assert!(matches!(
            IssuerKeys::parse(&host_file),
            Err(IssuerKeyError::WrongKind {
                found: KeyFileKind::Identity,
                ..
            })
        ));

        let err = IssuerSecretKey::from_key_file(&public_file).unwrap_err();
        assert!(matches!(
            err,
            IssuerKeyError::WrongKind {
                found: KeyFileKind::IssuerPublic,
                want: KeyFileKind::IssuerSecret
            }
        ));
        assert!(err.to_string().contains("not FILE.pub"), "{err}");
        assert!(IssuerSecretKey::from_key_file(&host_file).is_err());
        // The public key file is no host key either.
        assert!(matches!(
            crate::SecretKey::from_key_file(&public_file),
            Err(KeyError::WrongKind {
                found: KeyFileKind::IssuerPublic,
                want: KeyFileKind::Identity
            })
        ));
    }

    #[test]
    fn a_token_missing_characters_is_called_damaged_not_a_non_token() {
        let text = issuer().issue(claims()).unwrap().to_string();
        for cut in 1..=8 {
            let err = text[..text.len() - cut].parse::<Token>().unwrap_err();
            assert_eq!(err, TokenError::Damaged, "cut {cut}");
            assert!(!err.to_string().contains("start with"), "{err}");
        }
        assert_eq!("hello".parse::<Token>(), Err(TokenError::NotAToken));
    }

    #[test]
    fn tier_names_are_bounded() {
        let mut long = claims();
        long.tier = "x".repeat(MAX_TIER_LEN + 1);
        assert!(issuer().issue(long).is_err());
        let mut empty = claims();
        empty.tier = String::new();
        assert!(issuer().issue(empty).is_err());
        let mut max = claims();
        max.tier = "x".repeat(MAX_TIER_LEN);
        assert_eq!(issuer().issue(max).unwrap().to_bytes().len(), MAX_TOKEN_LEN);
    }

    proptest! {
        #[test]
        fn issued_tokens_round_trip_and_verify(
            host in any::<[u8; 32]>(),
            expires in 1u64..,
            tier in "[a-z0-9_-]{1,32}",
        ) {
            let claims = Claims { host_id: HostId::from_bytes(host), expires, tier };
            let token = issuer().issue(claims.clone()).unwrap();
            let parsed: Token = token.to_string().parse().unwrap();
            prop_assert_eq!(&parsed, &token);
            prop_assert_eq!(
                verify(&token.to_bytes(), &keys(), &claims.host_id, expires - 1),
                Ok(claims)
            );
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = verify(&bytes, &keys(), &claims().host_id, 0);
        }
    }
}
