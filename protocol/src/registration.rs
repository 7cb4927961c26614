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

use ring::hmac;

use crate::control::{ControlMessage, PROOF_LEN};
use crate::keys::{HostId, KeyError, PublicKey, SecretKey};

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
}
