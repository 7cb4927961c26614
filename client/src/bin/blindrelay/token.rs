//! Registration tokens: `blindrelay token` for relay operators, and the host's
//! `--token-file`, read again when it changes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use blindrelay_client::Token;
use blindrelay_protocol::token::{Claims, IssuerSecretKey};
use tracing::{info, warn};

use crate::cli::TokenCommand;
use crate::keys::write_private;

/// Refuses a tier the relay's config file at `path` does not define: the relay would
/// refuse every token of it.
pub(crate) fn check_relay_has_tier(path: &Path, tier: &str) -> Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read relay config {}", path.display()))?;
    let config: toml::Table = text
        .parse()
        .with_context(|| format!("{} is not a relay config (TOML)", path.display()))?;
    let mut tiers: Vec<String> = config
        .get("tiers")
        .and_then(toml::Value::as_table)
        .map(|tiers| tiers.keys().cloned().collect())
        .unwrap_or_default();
    // Every relay has its default tier, configured or not.
    if !tiers.iter().any(|name| name == "default") {
        tiers.insert(0, "default".to_owned());
    }
    if tiers.iter().any(|name| name == tier) {
        return Ok(());
    }
    bail!(
        "{} defines no tier {tier:?}, so the relay would refuse this token; its tiers: {} \
         (add [tiers.{tier}] to it, or issue one of those)",
        path.display(),
        tiers.join(", ")
    )
}

pub(crate) fn token(command: TokenCommand) -> Result<()> {
    match command {
        TokenCommand::Keygen { out, force } => {
            let key = IssuerSecretKey::generate()?;
            let public = key.public_key();
            let mut pub_path = out.clone().into_os_string();
            pub_path.push(".pub");
            let pub_path = PathBuf::from(pub_path);
            write_private(&out, key.to_key_file().as_bytes(), force)?;
            let pub_text = public.to_key_file();
            if !force && pub_path.exists() {
                bail!("{} exists (use --force to overwrite)", pub_path.display());
            }
            std::fs::write(&pub_path, pub_text)
                .with_context(|| format!("cannot write {}", pub_path.display()))?;
            println!("issuer public key: {public}");
            println!("public key file: {}", pub_path.display());
            Ok(())
        }
        TokenCommand::Issue {
            issuer_key,
            host_id,
            ttl,
            tier,
            relay_config,
        } => {
            if let Some(path) = &relay_config {
                check_relay_has_tier(path, &tier)?;
            }
            let text = std::fs::read_to_string(&issuer_key)
                .with_context(|| format!("cannot read issuer key {}", issuer_key.display()))?;
            let key = IssuerSecretKey::from_key_file(&text)
                .with_context(|| format!("in issuer key file {}", issuer_key.display()))?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .context("the clock is before 1970")?
                .as_secs();
            let token = key.issue(Claims {
                host_id,
                expires: now.saturating_add(ttl),
                tier,
            })?;
            println!("{token}");
            // A relay refuses a token whose tier it does not have, and only the relay
            // knows its tiers: say what it needs, on stderr, away from the token.
            if token.claims_unverified().tier != "default" && relay_config.is_none() {
                eprintln!(
                    "note: the relay must define this tier in its config ([tiers.{}]), \
                     or it refuses the token as invalid",
                    token.claims_unverified().tier
                );
            }
            Ok(())
        }
    }
}

/// How often `--token-file` is looked at, and the token's expiry checked.
pub(crate) const TOKEN_POLL: Duration = Duration::from_secs(2);

/// How long before its expiry a token is warned about.
pub(crate) const TOKEN_WARNING: Duration = Duration::from_secs(7 * 24 * 3600);

/// The registration token of `--token-file`: read at start, read again when the
/// file changes, and its expiry announced ahead of time.
pub(crate) struct TokenWatch {
    pub(crate) path: Option<PathBuf>,
    pub(crate) text: String,
    pub(crate) token: Option<Token>,
    /// When the token in use was read (Unix seconds): its lifetime as this host
    /// knows it, for the warning.
    pub(crate) read_at: u64,
    pub(crate) warned: bool,
}

impl TokenWatch {
    /// Reads `path`, if given; an unreadable or invalid file at start is an error.
    pub(crate) fn open(path: Option<PathBuf>) -> Result<Self> {
        let mut watch = Self {
            path,
            text: String::new(),
            token: None,
            read_at: unix_now(),
            warned: false,
        };
        if let Some(path) = &watch.path {
            let text = match std::fs::read_to_string(path) {
                Ok(text) => text,
                // A service started before its owner put the token there: it is
                // read as soon as it appears.
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(watch),
                Err(err) => {
                    return Err(err)
                        .with_context(|| format!("cannot read the token file {}", path.display()))
                }
            };
            let token: Token = text
                .trim()
                .parse()
                .with_context(|| format!("no valid token in {}", path.display()))?;
            watch.text = text;
            watch.token = Some(token);
        }
        Ok(watch)
    }

    /// The token read from the file, if there is one.
    pub(crate) fn current(&self) -> Option<&Token> {
        self.token.as_ref()
    }

    /// Logs when `token` expires.
    pub(crate) fn announce(&self, token: &Token) {
        let expires = token.claims_unverified().expires;
        info!(expires, left = %until(expires), "registration token");
    }

    /// A new token when the file holds one; also warns once when the token in use
    /// is close to its expiry.
    pub(crate) fn check(&mut self) -> Option<Token> {
        let mut renewed = None;
        if let Some(path) = &self.path {
            if let Ok(text) = std::fs::read_to_string(path) {
                if text != self.text {
                    self.text = text;
                    match self.text.trim().parse::<Token>() {
                        Ok(token) => {
                            let expires = token.claims_unverified().expires;
                            let before = self
                                .token
                                .as_ref()
                                .map(|old| old.claims_unverified().expires);
                            if before.is_some_and(|before| expires < before) {
                                println!(
                                    "token: replaced by one that expires sooner, in {}",
                                    until(expires)
                                );
                            } else {
                                println!("token: renewed, expires in {}", until(expires));
                            }
                            self.announce(&token);
                            self.token = Some(token.clone());
                            self.read_at = unix_now();
                            self.warned = false;
                            renewed = Some(token);
                        }
                        Err(err) => {
                            warn!(%err, path = %path.display(), "the token file holds no valid token; keeping the one in use")
                        }
                    }
                }
            }
        }
        if let Some(token) = &self.token {
            let expires = token.claims_unverified().expires;
            let left = expires.saturating_sub(unix_now());
            // A week ahead, or at the last fifth of a shorter token's life: a token
            // made for an hour is not "expiring" the moment it arrives.
            let lifetime = expires.saturating_sub(self.read_at);
            let warn_at = TOKEN_WARNING.as_secs().min(lifetime / 5);
            if !self.warned && left > 0 && left < warn_at {
                self.warned = true;
                println!(
                    "token: expires in {}: ask the relay's operator for a new one",
                    until(expires)
                );
                warn!(left_secs = left, "the registration token expires soon");
            }
        }
        renewed
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// How long until Unix time `at`, in words.
pub(crate) fn until(at: u64) -> String {
    let left = at.saturating_sub(unix_now());
    match left {
        0 => "no time: it has expired".to_owned(),
        s if s < 120 => format!("{s} s"),
        s if s < 2 * 3600 => format!("{} min", s / 60),
        s if s < 2 * 86_400 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}
