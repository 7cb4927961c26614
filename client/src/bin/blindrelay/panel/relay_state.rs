//! Enable Relay as the owner last switched it, kept in a small file so that a
//! restart does not undo a choice made in the panel (or by signal).
//!
//! The file holds `on` or `off` on a line of its own; `#` lines are comments. It
//! is written atomically, like the authorized players file.

use std::path::{Path, PathBuf};

/// Why the Enable Relay state file was refused at start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RelayStateError {
    /// The file exists but could not be read.
    #[error("cannot read the Enable Relay state file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The file holds something other than `on` or `off`.
    #[error("{path}: expected `on` or `off`")]
    Invalid {
        /// The file.
        path: PathBuf,
    },
}

/// The state kept in `path`: `None` when there is no file yet.
pub(crate) fn load(path: &Path) -> Result<Option<bool>, RelayStateError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(RelayStateError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    let mut words = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'));
    match (words.next(), words.next()) {
        (Some("on"), None) => Ok(Some(true)),
        (Some("off"), None) => Ok(Some(false)),
        _ => Err(RelayStateError::Invalid {
            path: path.to_owned(),
        }),
    }
}

/// Keeps `enabled` in `path`, replacing the file atomically.
pub(crate) fn save(path: &Path, enabled: bool) -> std::io::Result<()> {
    let text = format!(
        "# Enable Relay of this host as last switched (panel or signal); read at start.\n{}\n",
        if enabled { "on" } else { "off" }
    );
    super::players::write_atomically(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_survives_a_save_and_a_bad_file_is_named() {
        let dir = std::env::temp_dir().join(format!("br-panel-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("host.key.relay-state");
        assert_eq!(load(&path).expect("no file yet"), None);
        save(&path, false).expect("saved");
        assert_eq!(load(&path).expect("read"), Some(false));
        save(&path, true).expect("saved");
        assert_eq!(load(&path).expect("read"), Some(true));
        std::fs::write(&path, "maybe\n").expect("write");
        let err = load(&path).expect_err("not on or off").to_string();
        assert!(err.contains("expected `on` or `off`"), "{err}");
        std::fs::write(&path, "on\noff\n").expect("write");
        assert!(load(&path).is_err(), "one word only");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
