//! Registration: how a host proves to the relay that it holds its host id's private key.
//!
//! The flow runs on the first bidirectional stream the host opens on its QUIC
//! connection to the relay:
//!
//! ```text
//! host  -> relay   Register  { host id H }
//! relay -> host    Challenge { E }          E: fresh X25519 key, this registration only
//! host  -> relay   Proof     { mac }
//! relay -> host    Registered               or Error { ProofFailed }
//! ```
//!
//! `mac = HMAC-SHA256(key = X25519(h, E), PROOF_CONTEXT || X || H || E)` where `h` is
//! the host's secret key and `X` is 32 bytes of TLS keying material exported from this
//! QUIC connection with [`EXPORTER_LABEL`] and an empty context (RFC 5705 / RFC 8446
//! section 7.5). The relay computes the same key as `X25519(e, H)`.
//!
//! Why it holds:
//! - only the holder of `h` (or of `e`, which never leaves the relay) can compute the
//!   key, so a registration cannot be forged from the public host id;
//! - `X` differs on every TLS connection and `E` on every registration, so a proof
//!   captured on one connection (by a middlebox, or by a malicious relay replaying to
//!   another relay) is worthless on any other;
//! - a low-order `H` or `E` would make the "shared" key all zeros, known to everyone;
//!   both sides refuse it.
//!
//! Both sides of the flow are state machines here, with no I/O: a driver reads a
//! message, hands it to the state it holds together with this connection's exported
//! keying material, and gets the next state and the message to write (or the
//! outcome). Each state is consumed by its `handle`, so a message can only be
//! answered in the order the flow allows.
//!
//! - The host: [`HostRegistration::start`] → [`ExpectChallenge`] →
//!   [`ExpectRegistered`] → registered, or a [`HostRegistrationError`].
//! - The relay: [`RelayRegistration::start`] → [`ExpectProof`] → [`Admitted`], or a
//!   [`Refusal`] whose [`Refusal::to_message`] is the one `Error` the relay sends.

use ring::hmac;

use crate::control::{ControlMessage, PROOF_LEN};
use crate::error::ErrorCode;
use crate::keys::{HostId, KeyError, PublicKey, SecretKey};
use crate::token::{self, Claims, IssuerKeys, TokenError};

/// Label for the TLS keying-material exporter that binds a proof to its connection.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-blindrelay-registration";

/// Bytes of keying material exported for a proof.
pub const EXPORTER_LEN: usize = 32;

/// Domain separation for the proof MAC.
pub const PROOF_CONTEXT: &[u8] = b"blindrelay/1 registration proof";

/// Why a registration proof could not be made or was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// A key in the exchange is a low-order point, which would make the MAC key public.
    #[error("refusing a low-order X25519 key in the registration proof")]
    LowOrderKey,
    /// The MAC does not verify: the host does not hold the host id's private key, or
    /// the proof was made for another connection.
    #[error("registration proof does not match the host id")]
    Mismatch,
    /// The relay could not make its ephemeral key.
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// The relay's side of one registration: holds the ephemeral secret until the proof
/// arrives, then is dropped.
#[derive(Debug)]
pub struct RelayChallenge {
    host_id: HostId,
    ephemeral: SecretKey,
}

impl RelayChallenge {
    /// Starts a registration for the claimed `host_id`; returns the challenge to send.
    pub fn new(host_id: HostId) -> Result<(Self, ControlMessage), ProofError> {
        let ephemeral = SecretKey::generate()?;
        let message = ControlMessage::Challenge {
            relay_ephemeral: ephemeral.public_key(),
        };
        Ok((Self { host_id, ephemeral }, message))
    }

    /// The host id this registration claims.
    pub fn host_id(&self) -> &HostId {
        &self.host_id
    }

    /// Checks the host's proof against this connection's exported keying material.
    pub fn verify(
        &self,
        exporter: &[u8; EXPORTER_LEN],
        mac: &[u8; PROOF_LEN],
    ) -> Result<(), ProofError> {
        let shared = self
            .ephemeral
            .diffie_hellman(self.host_id.public_key())
            .ok_or(ProofError::LowOrderKey)?;
        let key = hmac::Key::new(hmac::HMAC_SHA256, &shared);
        let message = proof_message(exporter, &self.host_id, &self.ephemeral.public_key());
        // Constant-time comparison inside ring.
        hmac::verify(&key, &message, mac).map_err(|_| ProofError::Mismatch)
    }
}

/// The host's side: the proof answering `relay_ephemeral` on the connection whose
/// exported keying material is `exporter`.
pub fn prove(
    host_key: &SecretKey,
    relay_ephemeral: &PublicKey,
    exporter: &[u8; EXPORTER_LEN],
) -> Result<[u8; PROOF_LEN], ProofError> {
    let shared = host_key
        .diffie_hellman(relay_ephemeral)
        .ok_or(ProofError::LowOrderKey)?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, &shared);
    let tag = hmac::sign(
        &key,
        &proof_message(exporter, &host_key.host_id(), relay_ephemeral),
    );
    let mut mac = [0u8; PROOF_LEN];
    mac.copy_from_slice(tag.as_ref());
    Ok(mac)
}

/// The host's side of a registration, before `Register` is sent.
pub struct HostRegistration;

impl HostRegistration {
    /// Starts registering `key`'s host id, presenting `token` (binary form) where the
    /// relay requires one. Returns the state that waits for the relay's challenge and
    /// the `Register` to send.
    pub fn start(key: &SecretKey, token: Option<Vec<u8>>) -> (ExpectChallenge<'_>, ControlMessage) {
        Self::start_redirected(key, token, 0)
    }

    /// Like [`HostRegistration::start`], at a pool member the host reached by
    /// following `redirects` redirects (PROTOCOL.md section 18.4).
    pub fn start_redirected(
        key: &SecretKey,
        token: Option<Vec<u8>>,
        redirects: u8,
    ) -> (ExpectChallenge<'_>, ControlMessage) {
        let register = ControlMessage::Register {
            host_id: key.host_id(),
            token,
            redirects,
        };
        (ExpectChallenge { key }, register)
    }
}

/// The host has sent `Register` and waits for the relay's `Challenge`.
pub struct ExpectChallenge<'a> {
    key: &'a SecretKey,
}

impl ExpectChallenge<'_> {
    /// Handles the relay's answer to `Register` on the connection whose exported
    /// keying material is `exporter`: a challenge yields the `Proof` to send and the
    /// state that waits for the verdict; an `Error` is the relay's refusal.
    pub fn handle(
        self,
        message: ControlMessage,
        exporter: &[u8; EXPORTER_LEN],
    ) -> Result<(ExpectRegistered, ControlMessage), HostRegistrationError> {
        match message {
            ControlMessage::Challenge { relay_ephemeral } => {
                let mac = prove(self.key, &relay_ephemeral, exporter)?;
                Ok((ExpectRegistered(()), ControlMessage::Proof { mac }))
            }
            other => Err(HostRegistrationError::from_answer(other, "Challenge")),
        }
    }
}

/// The host has sent its `Proof` and waits for the verdict.
pub struct ExpectRegistered(());

impl ExpectRegistered {
    /// Handles the relay's verdict: `Registered` means the host is reachable for as
    /// long as its registration stream stays open.
    pub fn handle(self, message: ControlMessage) -> Result<(), HostRegistrationError> {
        match message {
            ControlMessage::Registered => Ok(()),
            other => Err(HostRegistrationError::from_answer(other, "Registered")),
        }
    }
}

/// Why a host's registration did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HostRegistrationError {
    /// The relay refused the registration, with its code and words.
    #[error("the relay refused the registration: {code} ({reason})")]
    Refused {
        /// Machine-readable reason.
        code: ErrorCode,
        /// The relay's words.
        reason: String,
    },
    /// The relay answered with a message that has no place at this step.
    #[error("expected {expected} from the relay, got {got}")]
    Unexpected {
        /// The message the flow expects here.
        expected: &'static str,
        /// The message that came instead.
        got: &'static str,
    },
    /// The proof could not be made (the relay's challenge key is low-order).
    #[error(transparent)]
    Proof(#[from] ProofError),
}

impl HostRegistrationError {
    fn from_answer(message: ControlMessage, expected: &'static str) -> Self {
        match message {
            ControlMessage::Error { code, reason } => Self::Refused { code, reason },
            other => Self::Unexpected {
                expected,
                got: other.name(),
            },
        }
    }
}

/// The relay's side of a registration, from the `Register` it has read.
pub struct RelayRegistration;

impl RelayRegistration {
    /// Starts the relay's side for a `Register { host_id, token }`. `issuers` are the
    /// token issuers the relay trusts, or `None` on a relay that admits hosts without
    /// tokens. Returns the state that waits for the proof and the `Challenge` to send.
    ///
    /// A missing token is refused at once: it says nothing about any host. A present
    /// token is checked only after the proof, so someone who does not hold the host
    /// id's key learns nothing about the tokens issued for it.
    pub fn start(
        host_id: HostId,
        token: Option<Vec<u8>>,
        issuers: Option<&IssuerKeys>,
    ) -> Result<(ExpectProof<'_>, ControlMessage), Refusal> {
        if issuers.is_some() && token.is_none() {
            return Err(Refusal::TokenRequired);
        }
        let (challenge, message) = RelayChallenge::new(host_id).map_err(Refusal::Proof)?;
        Ok((
            ExpectProof {
                challenge,
                token,
                issuers,
            },
            message,
        ))
    }
}

/// The relay has sent its `Challenge` and waits for the host's `Proof`.
pub struct ExpectProof<'a> {
    challenge: RelayChallenge,
    token: Option<Vec<u8>>,
    issuers: Option<&'a IssuerKeys>,
}

impl ExpectProof<'_> {
    /// The host id this registration claims.
    pub fn host_id(&self) -> &HostId {
        self.challenge.host_id()
    }

    /// Handles the host's answer on the connection whose exported keying material is
    /// `exporter`, at Unix time `now` (for the token's expiry).
    pub fn handle(
        self,
        message: ControlMessage,
        exporter: &[u8; EXPORTER_LEN],
        now: u64,
    ) -> Result<Admitted, Refusal> {
        let ControlMessage::Proof { mac } = message else {
            return Err(Refusal::ExpectedProof {
                got: message.name(),
            });
        };
        self.challenge
            .verify(exporter, &mac)
            .map_err(Refusal::Proof)?;
        let host_id = *self.challenge.host_id();
        let claims = match self.issuers {
            Some(issuers) => {
                let token = self.token.as_deref().ok_or(Refusal::TokenRequired)?;
                Some(token::verify(token, issuers, &host_id, now).map_err(Refusal::Token)?)
            }
            None => None,
        };
        Ok(Admitted { host_id, claims })
    }
}

/// A registration whose host proved it holds its key, with its token's claims on a
/// relay that requires tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// The host id, now proved.
    pub host_id: HostId,
    /// The verified token's claims (tier, expiry), or `None` on an open relay.
    pub claims: Option<Claims>,
}

/// Why the relay refuses a registration. [`Refusal::to_message`] is what it sends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The relay admits only hosts with a registration token, and none was sent.
    #[error("this relay admits only hosts with a registration token")]
    TokenRequired,
    /// The host sent something other than a proof after the challenge (or nothing
    /// readable in time: the driver says what came).
    #[error("expected a Proof, got {got}")]
    ExpectedProof {
        /// What came instead.
        got: &'static str,
    },
    /// The proof does not verify, or involves a low-order key, or the relay could
    /// not make its challenge.
    #[error(transparent)]
    Proof(ProofError),
    /// The registration token was refused.
    #[error(transparent)]
    Token(TokenError),
    /// The token names a tier the relay does not have. Refused rather than mapped to
    /// a default, which may be more generous than what the issuer granted.
    #[error("the token's tier {tier:?} is not configured on this relay")]
    UnknownTier {
        /// The tier the token names.
        tier: String,
    },
}

impl Refusal {
    /// The error code sent with this refusal.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::TokenRequired => ErrorCode::TokenRequired,
            Self::ExpectedProof { .. } => ErrorCode::BadRequest,
            Self::Proof(ProofError::Key(_)) => ErrorCode::Internal,
            Self::Proof(_) => ErrorCode::ProofFailed,
            Self::Token(err) => err.code(),
            Self::UnknownTier { .. } => ErrorCode::TokenInvalid,
        }
    }

    /// The `Error` message the relay sends for this refusal.
    pub fn to_message(&self) -> ControlMessage {
        ControlMessage::error(self.code(), self.to_string())
    }
}

/// The relay's check of a `Renew` on a running registration of `host_id`
/// (PROTOCOL.md section 8.9): the new token's claims, whose expiry the registration
/// takes; `None` on a relay without issuer keys, where a renewal changes nothing; or
/// the refusal, which ends the registration. No proof is asked again: the stream is
/// the proved registration's.
pub fn check_renewal(
    token: &[u8],
    issuers: Option<&IssuerKeys>,
    host_id: &HostId,
    now: u64,
) -> Result<Option<Claims>, Refusal> {
    let Some(issuers) = issuers else {
        return Ok(None);
    };
    token::verify(token, issuers, host_id, now)
        .map(Some)
        .map_err(Refusal::Token)
}

fn proof_message(
    exporter: &[u8; EXPORTER_LEN],
    host_id: &HostId,
    ephemeral: &PublicKey,
) -> Vec<u8> {
    [
        PROOF_CONTEXT,
        exporter,
        host_id.as_bytes(),
        ephemeral.as_bytes(),
    ]
    .concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn challenge_for(host_id: HostId) -> (RelayChallenge, PublicKey) {
        let (challenge, message) = RelayChallenge::new(host_id).unwrap();
        let ControlMessage::Challenge { relay_ephemeral } = message else {
            panic!("expected a challenge, got {message:?}");
        };
        (challenge, relay_ephemeral)
    }

    #[test]
    fn the_key_holder_proves_possession() {
        let host = SecretKey::generate().unwrap();
        let (challenge, ephemeral) = challenge_for(host.host_id());
        let exporter = [5u8; EXPORTER_LEN];
        let mac = prove(&host, &ephemeral, &exporter).unwrap();
        assert_eq!(challenge.verify(&exporter, &mac), Ok(()));
    }

    #[test]
    fn someone_without_the_key_is_refused() {
        let host = SecretKey::generate().unwrap();
        let impostor = SecretKey::generate().unwrap();
        let (challenge, ephemeral) = challenge_for(host.host_id());
        let exporter = [5u8; EXPORTER_LEN];
        let mac = prove(&impostor, &ephemeral, &exporter).unwrap();
        assert_eq!(challenge.verify(&exporter, &mac), Err(ProofError::Mismatch));
    }

    #[test]
    fn a_proof_from_another_connection_is_refused() {
        let host = SecretKey::generate().unwrap();
        let (challenge, ephemeral) = challenge_for(host.host_id());
        let mac = prove(&host, &ephemeral, &[1u8; EXPORTER_LEN]).unwrap();
        assert_eq!(
            challenge.verify(&[2u8; EXPORTER_LEN], &mac),
            Err(ProofError::Mismatch)
        );
    }

    #[test]
    fn a_proof_for_another_challenge_is_refused() {
        let host = SecretKey::generate().unwrap();
        let (first, ephemeral) = challenge_for(host.host_id());
        let (second, _) = challenge_for(host.host_id());
        let exporter = [5u8; EXPORTER_LEN];
        let mac = prove(&host, &ephemeral, &exporter).unwrap();
        assert_eq!(first.verify(&exporter, &mac), Ok(()));
        assert_eq!(second.verify(&exporter, &mac), Err(ProofError::Mismatch));
    }

    #[test]
    fn low_order_host_ids_cannot_register() {
        // With the all-zero key the DH output is zero for everyone: anybody could
        // compute the "proof". The relay must refuse before comparing MACs.
        let (challenge, _) = challenge_for(HostId::from_bytes([0; 32]));
        let exporter = [5u8; EXPORTER_LEN];
        let key = hmac::Key::new(hmac::HMAC_SHA256, &[0u8; 32]);
        let forged = hmac::sign(
            &key,
            &proof_message(
                &exporter,
                challenge.host_id(),
                &challenge.ephemeral.public_key(),
            ),
        );
        let mut mac = [0u8; PROOF_LEN];
        mac.copy_from_slice(forged.as_ref());
        assert_eq!(
            challenge.verify(&exporter, &mac),
            Err(ProofError::LowOrderKey)
        );
    }

    #[test]
    fn hosts_refuse_a_low_order_challenge() {
        let host = SecretKey::generate().unwrap();
        assert_eq!(
            prove(&host, &PublicKey::from_bytes([0; 32]), &[0; EXPORTER_LEN]),
            Err(ProofError::LowOrderKey)
        );
    }
    // The two machines driven against each other, as the relay and a host do over a
    // connection, with no I/O.

    const EXPORTER: [u8; EXPORTER_LEN] = [7; EXPORTER_LEN];

    struct Issuer {
        secret: crate::token::IssuerSecretKey,
        keys: IssuerKeys,
    }

    fn issuer() -> Issuer {
        let secret = crate::token::IssuerSecretKey::from_seed([9; 32]).unwrap();
        let keys = IssuerKeys::new(vec![secret.public_key()]);
        Issuer { secret, keys }
    }

    fn token_for(issuer: &Issuer, host_id: HostId, expires: u64, tier: &str) -> Vec<u8> {
        let claims = Claims {
            host_id,
            expires,
            tier: tier.to_owned(),
        };
        issuer.secret.issue(claims).unwrap().to_bytes()
    }

    #[test]
    fn a_renewal_takes_a_token_for_the_same_host_and_refuses_others_with_their_code() {
        let issuer = issuer();
        let host = HostId::from_bytes([1; 32]);
        let now = 1_000;
        let renewed = token_for(&issuer, host, now + 60, "gold");
        let claims = check_renewal(&renewed, Some(&issuer.keys), &host, now)
            .unwrap()
            .expect("claims on a relay with issuers");
        assert_eq!((claims.expires, claims.tier.as_str()), (now + 60, "gold"));
        // A relay without issuers has nothing to check and nothing to change.
        assert_eq!(check_renewal(&renewed, None, &host, now), Ok(None));
        let other = HostId::from_bytes([2; 32]);
        let cases = [
            (renewed.clone(), other, now, ErrorCode::TokenWrongHost),
            (renewed.clone(), host, now + 60, ErrorCode::TokenExpired),
            (renewed[..20].to_vec(), host, now, ErrorCode::TokenMalformed),
            (
                token_for(&Issuer::other(), host, now + 60, "gold"),
                host,
                now,
                ErrorCode::TokenInvalid,
            ),
        ];
        for (token, host_id, at, code) in cases {
            let refusal = check_renewal(&token, Some(&issuer.keys), &host_id, at).unwrap_err();
            assert_eq!(refusal.code(), code, "{refusal}");
        }
    }

    impl Issuer {
        /// An issuer the relay does not know.
        fn other() -> Self {
            let secret = crate::token::IssuerSecretKey::from_seed([10; 32]).unwrap();
            let keys = IssuerKeys::new(vec![secret.public_key()]);
            Self { secret, keys }
        }
    }

    /// Runs a whole registration: the host's messages go to the relay's machine and
    /// back. `host_exporter` lets a test prove for another connection.
    fn run(
        host: &SecretKey,
        token: Option<Vec<u8>>,
        issuers: Option<&IssuerKeys>,
        host_exporter: &[u8; EXPORTER_LEN],
        now: u64,
    ) -> (Result<Admitted, Refusal>, Result<(), HostRegistrationError>) {
        let (expect_challenge, register) = HostRegistration::start(host, token);
        let ControlMessage::Register { host_id, token, .. } = register else {
            panic!("the host starts with Register, got {register:?}");
        };
        let (expect_proof, challenge) = match RelayRegistration::start(host_id, token, issuers) {
            Ok(next) => next,
            Err(refusal) => {
                let at_host = expect_challenge.handle(refusal.to_message(), host_exporter);
                return (Err(refusal), at_host.map(|_| ()));
            }
        };
        let (expect_registered, proof) = expect_challenge.handle(challenge, host_exporter).unwrap();
        let verdict = expect_proof.handle(proof, &EXPORTER, now);
        let answer = match &verdict {
            Ok(_) => ControlMessage::Registered,
            Err(refusal) => refusal.to_message(),
        };
        (verdict, expect_registered.handle(answer))
    }

    #[test]
    fn a_host_registers_on_an_open_relay() {
        let host = SecretKey::from_bytes([1; 32]);
        let (relay, at_host) = run(&host, None, None, &EXPORTER, 0);
        assert_eq!(
            relay,
            Ok(Admitted {
                host_id: host.host_id(),
                claims: None
            })
        );
        assert_eq!(at_host, Ok(()));
    }

    #[test]
    fn a_host_registers_with_a_valid_token() {
        let issuer = issuer();
        let host = SecretKey::from_bytes([1; 32]);
        let token = token_for(&issuer, host.host_id(), 100, "gold");
        let (relay, at_host) = run(&host, Some(token), Some(&issuer.keys), &EXPORTER, 50);
        let admitted = relay.unwrap();
        assert_eq!(admitted.claims.unwrap().tier, "gold");
        assert_eq!(at_host, Ok(()));
    }

    /// A refusal case: name, token, issuers, the host's exporter, the code expected.
    type Case<'a> = (
        &'a str,
        Option<Vec<u8>>,
        Option<&'a IssuerKeys>,
        [u8; 32],
        ErrorCode,
    );

    /// Every refusal the machines can reach, with the code the host is told.
    #[test]
    fn every_refusal_reaches_the_host_with_its_code() {
        let issuer = issuer();
        let host = SecretKey::from_bytes([1; 32]);
        let other = SecretKey::from_bytes([2; 32]).host_id();
        let keys = Some(&issuer.keys);
        let valid = token_for(&issuer, host.host_id(), 100, "default");
        let mut tampered = valid.clone();
        *tampered.last_mut().unwrap() ^= 1;
        let cases: Vec<Case<'_>> = vec![
            ("no token", None, keys, EXPORTER, ErrorCode::TokenRequired),
            (
                "another connection",
                None,
                None,
                [8; 32],
                ErrorCode::ProofFailed,
            ),
            (
                "malformed token",
                Some(vec![1, 2, 3]),
                keys,
                EXPORTER,
                ErrorCode::TokenMalformed,
            ),
            (
                "expired token",
                Some(token_for(&issuer, host.host_id(), 10, "default")),
                keys,
                EXPORTER,
                ErrorCode::TokenExpired,
            ),
            (
                "another host's token",
                Some(token_for(&issuer, other, 100, "default")),
                keys,
                EXPORTER,
                ErrorCode::TokenWrongHost,
            ),
            (
                "tampered token",
                Some(tampered),
                keys,
                EXPORTER,
                ErrorCode::TokenInvalid,
            ),
        ];
        for (case, token, issuers, exporter, code) in cases {
            let (relay, at_host) = run(&host, token, issuers, &exporter, 50);
            let refusal = relay.expect_err(case);
            assert_eq!(refusal.code(), code, "{case}: {refusal}");
            assert_eq!(
                at_host,
                Err(HostRegistrationError::Refused {
                    code,
                    reason: refusal.to_string()
                }),
                "{case}"
            );
        }
    }

    #[test]
    fn an_impostor_is_refused() {
        // Register claims the victim's id; the proof is made with the impostor's key.
        let victim = SecretKey::from_bytes([1; 32]).host_id();
        let impostor = SecretKey::from_bytes([3; 32]);
        let (expect_proof, challenge) = RelayRegistration::start(victim, None, None).unwrap();
        let (expect_challenge, _) = HostRegistration::start(&impostor, None);
        let (_, proof) = expect_challenge.handle(challenge, &EXPORTER).unwrap();
        let refusal = expect_proof.handle(proof, &EXPORTER, 0).unwrap_err();
        assert_eq!(refusal, Refusal::Proof(ProofError::Mismatch));
        assert_eq!(refusal.code(), ErrorCode::ProofFailed);
    }

    #[test]
    fn a_low_order_host_id_is_refused_and_a_low_order_challenge_is_not_answered() {
        let (expect_proof, _) =
            RelayRegistration::start(HostId::from_bytes([0; 32]), None, None).unwrap();
        let refusal = expect_proof
            .handle(
                ControlMessage::Proof {
                    mac: [0; PROOF_LEN],
                },
                &EXPORTER,
                0,
            )
            .unwrap_err();
        assert_eq!(refusal, Refusal::Proof(ProofError::LowOrderKey));

        let host = SecretKey::from_bytes([1; 32]);
        let (expect_challenge, _) = HostRegistration::start(&host, None);
        let low_order = ControlMessage::Challenge {
            relay_ephemeral: PublicKey::from_bytes([0; 32]),
        };
        assert!(matches!(
            expect_challenge.handle(low_order, &EXPORTER),
            Err(HostRegistrationError::Proof(ProofError::LowOrderKey))
        ));
    }

    #[test]
    fn a_message_out_of_order_is_refused_by_either_side() {
        let host = SecretKey::from_bytes([1; 32]);
        let (expect_proof, _) = RelayRegistration::start(host.host_id(), None, None).unwrap();
        let refusal = expect_proof
            .handle(ControlMessage::register(host.host_id()), &EXPORTER, 0)
            .unwrap_err();
        assert_eq!(refusal, Refusal::ExpectedProof { got: "Register" });
        assert_eq!(refusal.code(), ErrorCode::BadRequest);

        let (expect_challenge, _) = HostRegistration::start(&host, None);
        assert_eq!(
            expect_challenge
                .handle(ControlMessage::Registered, &EXPORTER)
                .err(),
            Some(HostRegistrationError::Unexpected {
                expected: "Challenge",
                got: "Registered"
            })
        );
    }

    #[test]
    fn an_unknown_tier_is_refused_as_an_invalid_token() {
        let refusal = Refusal::UnknownTier {
            tier: "platinum".to_owned(),
        };
        let ControlMessage::Error { code, reason } = refusal.to_message() else {
            panic!("a refusal is an Error message");
        };
        assert_eq!(code, ErrorCode::TokenInvalid);
        assert!(reason.contains("platinum"), "{reason}");
    }
}
