//! Which players a host serves: every player, or only those whose Noise static public
//! key is on its list.
//!
//! The check runs on the host, end to end, after the Noise handshake: the relay
//! never learns the player's key (IK hides it) nor the verdict. A refused player
//! gets the authenticated "not authorized" verdict, a frame of exactly the size of
//! a welcome (see [`blindrelay_protocol::noise`]), so the relay cannot tell refused
//! sessions from served ones by what it forwards.
//!
//! The `authorized_players` file has one base32 player key per line (what
//! `blindrelay keygen --role player` and `blindrelay connect` print, with or without
//! their `player key:` label); `#` starts a
//! comment, on its own line or after a key, and blank lines are ignored. The file is
//! checked for changes (modification time and size) at every handshake and read
//! again when it changed, so adding or removing a player takes effect for the next
//! session without restarting the host. A file that becomes unreadable or invalid
//! keeps the last good list in force, with a warning: an editor's half-written save
//! must neither lock every player out nor let everyone in.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use blindrelay_protocol::PublicKey;
use tracing::{info, warn};

/// Who may open sessions to a host.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum PlayerAuthorization {
    /// Every player that completes the handshake (anyone with the ticket).
    #[default]
    Open,
    /// Only these keys (a fixed list, for applications that keep their own).
    Keys(Arc<HashSet<PublicKey>>),
    /// Only the keys in an `authorized_players` file, reloaded when it changes.
    File(AuthorizedPlayers),
}

impl PlayerAuthorization {
    /// Whether the player with static key `player` may open a session.
    pub fn allows(&self, player: &PublicKey) -> bool {
        match self {
            Self::Open => true,
            Self::Keys(keys) => keys.contains(player),
            Self::File(file) => file.allows(player),
        }
    }
}

/// Why an `authorized_players` file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorizedPlayersError {
    /// The file could not be read.
    #[error("cannot read authorized players file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// A line is not a player key.
    #[error("{path} line {line}: not a player key (52 base32 characters)")]
    BadLine {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
}

/// An `authorized_players` file and the keys last read from it. Clones share the
/// same list.
#[derive(Clone)]
pub struct AuthorizedPlayers {
    path: Arc<PathBuf>,
    state: Arc<Mutex<Loaded>>,
}

struct Loaded {
    keys: HashSet<PublicKey>,
    stamp: Option<(SystemTime, u64)>,
}

impl std::fmt::Debug for AuthorizedPlayers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorizedPlayers")
            .field("path", &self.path)
            .field("players", &self.len())
            .finish()
    }
}

impl AuthorizedPlayers {
    /// Reads `path` now; a missing or invalid file is an error here, at start.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, AuthorizedPlayersError> {
        let path = path.into();
        let stamp = stamp(&path);
        let keys = read(&path)?;
        Ok(Self {
            path: Arc::new(path),
            state: Arc::new(Mutex::new(Loaded { keys, stamp })),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many players the list holds now.
    pub fn len(&self) -> usize {
        self.state.lock().map(|state| state.keys.len()).unwrap_or(0)
    }

    /// Whether the list is empty (every player refused).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `player` is on the list, reading the file again first if it changed.
    pub fn allows(&self, player: &PublicKey) -> bool {
        // A poisoned lock means a panic while holding it; refuse rather than guess.
        let Ok(mut state) = self.state.lock() else {
            return false;
        };
        let now = stamp(&self.path);
        if now != state.stamp {
            state.stamp = now;
            match read(&self.path) {
                Ok(keys) => {
                    info!(path = %self.path.display(), players = keys.len(), "authorized players reloaded");
                    state.keys = keys;
                }
                Err(err) => warn!(%err, "keeping the previous authorized players"),
            }
        }
        state.keys.contains(player)
    }

    /// Reads the file again now, whatever its modification time says, and returns
    /// how many players it lists: for a writer in this process (the host's panel)
    /// that wants its change in force before the next handshake. An unreadable or
    /// invalid file is an error and keeps the list in force.
    pub fn reload(&self) -> Result<usize, AuthorizedPlayersError> {
        // The stamp first: a change after it is seen at the next check.
        let now = stamp(&self.path);
        let keys = read(&self.path)?;
        let count = keys.len();
        if let Ok(mut state) = self.state.lock() {
            state.stamp = now;
            state.keys = keys;
        }
        Ok(count)
    }
}

/// How the player CLI labels a player key on stdout.
const PLAYER_KEY_LABEL: &str = "player key:";

/// Parses the text of an `authorized_players` file; `Err` holds the bad line number.
pub fn parse_authorized_players(text: &str) -> Result<HashSet<PublicKey>, usize> {
    let mut keys = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        // The line `blindrelay keygen --role player` and `blindrelay connect` print,
        // pasted whole, is as good as the bare key.
        let line = line
            .strip_prefix(PLAYER_KEY_LABEL)
            .map_or(line, str::trim_start);
        keys.insert(line.parse().map_err(|_| i + 1)?);
    }
    Ok(keys)
}

fn read(path: &Path) -> Result<HashSet<PublicKey>, AuthorizedPlayersError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuthorizedPlayersError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_authorized_players(&text).map_err(|line| AuthorizedPlayersError::BadLine {
        path: path.to_owned(),
        line,
    })
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use blindrelay_protocol::SecretKey;

    fn key() -> PublicKey {
        SecretKey::generate().expect("key").public_key()
    }

    #[test]
    fn comments_and_blank_lines_are_ignored_and_bad_lines_named() {
        let (a, b) = (key(), key());
        let text = format!("# my players\n\n{a}   # alice's phone\n  {b}\n");
        let keys = parse_authorized_players(&text).expect("valid");
        assert_eq!(keys.len(), 2);
        assert!(keys.contains(&a) && keys.contains(&b));
        assert_eq!(parse_authorized_players(&format!("{a}\nbob\n")), Err(2));
    }

    #[test]
    fn the_line_the_player_prints_is_accepted_whole() {
        let (a, b) = (key(), key());
        let text = format!("player key: {a}\nplayer key:{b}  # laptop\n");
        let keys = parse_authorized_players(&text).expect("valid");
        assert!(keys.contains(&a) && keys.contains(&b));
        assert_eq!(
            parse_authorized_players(&format!("host id: {a}\n")),
            Err(1),
            "only the player's own label"
        );
    }

    #[test]
    fn the_file_is_read_again_when_it_changes_and_kept_when_it_breaks() {
        let dir = std::env::temp_dir().join(format!("br-authorized-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("authorized_players");
        let (a, b) = (key(), key());
        std::fs::write(&path, format!("{a}\n")).expect("write");
        let list = AuthorizedPlayers::open(&path).expect("opens");
        assert!(list.allows(&a));
        assert!(!list.allows(&b));
        std::fs::write(&path, format!("{a}\n{b}\n")).expect("write");
        assert!(list.allows(&b), "a change is picked up at the next check");
        std::fs::write(&path, format!("{b}\nnot a key at all\n")).expect("write");
        assert!(list.allows(&a), "an invalid file keeps the last good list");
        std::fs::remove_file(&path).expect("remove");
        assert!(list.allows(&a), "a missing file keeps the last good list");
        std::fs::write(&path, "# nobody\n").expect("write");
        assert!(!list.allows(&a) && !list.allows(&b));
        assert!(AuthorizedPlayers::open(dir.join("missing")).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
