//! Registration tokens on the relay: the issuer keys it trusts (the token format
//! itself is `blindrelay_protocol::token`), and the check it runs
//! on a token once the host has proved it holds its host id's key.
//!
//! A relay started with `--token-issuer-pub FILE` (config key `token_issuer_pub`)
//! admits only hosts that present a token signed by one of the keys in that file
//! (one base32 Ed25519 public key per line, `#` comments; several keys let the
//! operator rotate). Without it the relay is open: any host that proves its key may
//! register, and `blindrelayd` warns about it at start.
//!
//! The checks themselves are the registration machine's
//! ([`blindrelay_protocol::registration`]): the token is read with `Register` but
//! checked only after the proof, so someone who does not hold a host id's key learns
//! nothing about tokens for it; only a missing token is refused at once, which says
//! nothing about any host. The token's
//! tier names the host's bandwidth tier and wins over `[host_tiers]`. A tier the
//! relay does not have is refused (`TokenInvalid`) rather than mapped to the default
//! tier, which may be more generous than what the issuer granted.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use blindrelay_protocol::token::{IssuerKeyError, IssuerKeys};

/// Why the issuer file could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenConfigError {
    /// The file could not be read.
    #[error("cannot read token issuer file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The file holds something other than issuer public keys.
    #[error("invalid token issuer file {path}: {source}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: IssuerKeyError,
    },
}

/// Reads an issuer public key file.
pub fn load_issuer_keys(path: &Path) -> Result<IssuerKeys, TokenConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    IssuerKeys::parse(&text).map_err(|source| TokenConfigError::Invalid {
        path: path.to_owned(),
        source,
    })
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use blindrelay_protocol::token::IssuerSecretKey;

    #[test]
    fn a_missing_or_unreadable_issuer_file_is_named() {
        let err = load_issuer_keys(Path::new("/nonexistent/issuer.pub")).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/issuer.pub"), "{err}");
        let dir = std::env::temp_dir().join(format!("br-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("issuer.pub");
        std::fs::write(&path, "# only comments\n").expect("write");
        assert!(matches!(
            load_issuer_keys(&path),
            Err(TokenConfigError::Invalid {
                source: IssuerKeyError::Empty,
                ..
            })
        ));
        let issuer = IssuerSecretKey::generate().expect("key");
        std::fs::write(&path, format!("{}\n", issuer.public_key())).expect("write");
        assert_eq!(load_issuer_keys(&path).expect("valid").keys().len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
