//! Key files: made with mode 0600, marked with whose key they are, and read back
//! refusing the other role's.

use std::path::Path;

use anyhow::{bail, Context, Result};
use blindrelay_client::SecretKey;
use tracing::warn;

use crate::cli::Role;

pub(crate) fn keygen(out: &Path, force: bool, role: Role) -> Result<()> {
    let key = SecretKey::generate()?;
    // A comment after the header says whose key it is (readers skip comments), so
    // that `host` and `connect` can refuse the other's (PROTOCOL.md 3.3).
    write_private(out, key_file(&key, role).as_bytes(), force)?;
    match role {
        Role::Host => println!("host id: {}", key.host_id()),
        Role::Player => println!("player key: {}", key.public_key()),
    }
    Ok(())
}

/// Writes a secret file readable by its owner only.
pub(crate) fn write_private(path: &Path, contents: &[u8], force: bool) -> Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        let mut file = options.open(path).with_context(|| {
            format!(
                "cannot create {} (use --force to overwrite)",
                path.display()
            )
        })?;
        // `mode` applies only to new files; make an overwritten one private too.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(contents)?;
    }
    #[cfg(not(unix))]
    {
        let mut file = options
            .open(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        file.write_all(contents)?;
    }
    Ok(())
}

/// `key`'s file, with a comment after its header that says whose key it is (readers
/// skip comments), so that `host` and `connect` can refuse the other's (PROTOCOL.md
/// 3.3).
pub(crate) fn key_file(key: &SecretKey, role: Role) -> String {
    key.to_key_file()
        .replacen('\n', &format!("\n{ROLE_PREFIX}{}\n", role.word()), 1)
}

/// The comment line `keygen` writes after a key file's header: `# role: host`.
pub(crate) const ROLE_PREFIX: &str = "# role: ";

impl Role {
    pub(crate) fn word(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::Player => "player",
        }
    }
}

/// Reads the key file at `path` for `role`: a file `keygen` marked as the other
/// role's is refused with what to do (a file without the mark, from before it or
/// written by hand, is taken as it is).
pub(crate) fn read_key_as(path: &Path, role: Role) -> Result<SecretKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read key file {}", path.display()))?;
    let marked = text
        .lines()
        .find_map(|line| line.trim().strip_prefix(ROLE_PREFIX).map(str::trim));
    match (role, marked) {
        (Role::Host, Some("player")) => bail!(
            "{} is a player's key (made with `keygen --role player`): a host needs its own, \
             made with `blindrelay keygen --out host.key`",
            path.display()
        ),
        (Role::Player, Some("host")) => bail!(
            "{} is a host's key: a player needs its own (`blindrelay keygen --role player \
             --out player.key`), and a host's key belongs on the host's machine only",
            path.display()
        ),
        _ => read_key(path),
    }
}

pub(crate) fn read_key(path: &Path) -> Result<SecretKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read key file {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)?.permissions().mode();
        if mode & 0o077 != 0 {
            warn!(
                "key file {} is readable by others (mode {:o}); run chmod 600 on it",
                path.display(),
                mode & 0o777
            );
        }
    }
    SecretKey::from_key_file(&text).with_context(|| format!("in key file {}", path.display()))
}
