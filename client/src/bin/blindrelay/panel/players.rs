//! The `authorized_players` file as the panel edits it: one player added or removed
//! at a time, every other line (comments, blank lines, the owner's order) kept as it
//! was, and the new text written atomically (a temporary file renamed over the old
//! one) so that the host, which re-reads the file at each handshake, never sees half
//! a file.
//!
//! The line rules are those of [`blindrelay_client::parse_authorized_players`]: a
//! key, optionally after the `player key:` label the player prints, and an optional
//! `#` comment, which the panel shows as the player's note.

use std::io::Write;
use std::path::Path;

use blindrelay_client::PublicKey;

/// How the player CLI labels its key; accepted in front of a pasted key.
const PLAYER_KEY_LABEL: &str = "player key:";

/// Longest note the panel writes after a key.
pub(crate) const MAX_NOTE: usize = 80;

/// One listed player.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct ListedPlayer {
    /// The player's key, as `blindrelay connect` prints it.
    pub(crate) key: String,
    /// The comment after the key on its line, if any.
    pub(crate) note: String,
}

/// Why a player key or note from the panel was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum EntryError {
    /// The text is not one player key.
    #[error("not a player key: expected the 52 base32 characters `blindrelay connect` prints (optionally after `player key:`)")]
    BadKey,
    /// The note has a line break or another control character, or is too long.
    #[error(
        "the note must be one line of at most {MAX_NOTE} characters, without control characters"
    )]
    BadNote,
}

/// The players listed in `text`, in file order, with their notes; `Err` holds the
/// first bad line number (1-based), as the host's own reader would report it.
pub(crate) fn list(text: &str) -> Result<Vec<ListedPlayer>, usize> {
    let mut players = Vec::new();
    // Keys seen so far: a list of hundreds is checked in one pass, not one per key.
    let mut seen = std::collections::HashSet::new();
    for (i, line) in text.lines().enumerate() {
        match line_key(line) {
            LineKey::None => {}
            LineKey::Bad => return Err(i + 1),
            LineKey::Key(key, note) => {
                if seen.insert(key) {
                    players.push(ListedPlayer {
                        key: key.to_string(),
                        note: note.to_owned(),
                    });
                }
            }
        }
    }
    Ok(players)
}

/// Parses a player key as a person pastes it: surrounding blanks and the `player
/// key:` label allowed, and spaces between its characters (the browser player
/// shows it in groups of four, which a person may type as they read them), nothing
/// else (one key, one line).
pub(crate) fn parse_key(text: &str) -> Result<PublicKey, EntryError> {
    let text = text.trim();
    if text.contains(['\n', '\r', '#']) {
        return Err(EntryError::BadKey);
    }
    let text = text
        .strip_prefix(PLAYER_KEY_LABEL)
        .map_or(text, str::trim_start);
    let key: String = text.split([' ', '\t']).collect();
    key.parse().map_err(|_| EntryError::BadKey)
}

/// Checks a note: it becomes a comment on the key's line, so a line break in it
/// could smuggle a second key into the file.
pub(crate) fn check_note(note: &str) -> Result<&str, EntryError> {
    let note = note.trim();
    if note.chars().count() > MAX_NOTE || note.chars().any(char::is_control) {
        return Err(EntryError::BadNote);
    }
    Ok(note)
}

/// `text` with `key` added at the end (after a note, if any); `None` when the key
/// is listed already.
pub(crate) fn with_added(text: &str, key: &PublicKey, note: &str) -> Option<String> {
    if text
        .lines()
        .any(|line| matches!(line_key(line), LineKey::Key(listed, _) if listed == *key))
    {
        return None;
    }
    let mut out = text.to_owned();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    if note.is_empty() {
        out.push_str(&format!("{key}\n"));
    } else {
        out.push_str(&format!("{key}  # {note}\n"));
    }
    Some(out)
}

/// `text` without the lines that list `key` (a key's own comment goes with it);
/// `None` when the key is not listed.
pub(crate) fn without(text: &str, key: &PublicKey) -> Option<String> {
    let mut removed = false;
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        if matches!(line_key(line), LineKey::Key(listed, _) if listed == *key) {
            removed = true;
        } else {
            out.push_str(line);
        }
    }
    removed.then_some(out)
}

/// Replaces `path` with `text` atomically: a temporary file in the same folder,
/// flushed to disk, given the old file's permissions, then renamed over it. A crash
/// leaves the old file or the new one, never a mix.
pub(crate) fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&temp)?;
        if let Ok(meta) = std::fs::metadata(path) {
            file.set_permissions(meta.permissions())?;
        }
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

enum LineKey<'a> {
    /// A blank or comment-only line.
    None,
    /// A line that is not a key.
    Bad,
    /// A key and the comment after it.
    Key(PublicKey, &'a str),
}

fn line_key(line: &str) -> LineKey<'_> {
    let (body, note) = line.split_once('#').unwrap_or((line, ""));
    let body = body.trim();
    if body.is_empty() {
        return LineKey::None;
    }
    let body = body
        .strip_prefix(PLAYER_KEY_LABEL)
        .map_or(body, str::trim_start);
    match body.parse() {
        Ok(key) => LineKey::Key(key, note.trim()),
        Err(_) => LineKey::Bad,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blindrelay_client::{parse_authorized_players, SecretKey};

    fn key() -> PublicKey {
        SecretKey::generate().expect("key").public_key()
    }

    #[test]
    fn adding_and_removing_keeps_every_other_line() {
        let (a, b) = (key(), key());
        let text = format!("# my players\n\n{a}   # alice's phone\n# end");
        let added = with_added(&text, &b, "bob").expect("b is new");
        assert_eq!(
            added,
            format!("# my players\n\n{a}   # alice's phone\n# end\n{b}  # bob\n")
        );
        assert_eq!(with_added(&added, &b, ""), None, "listed once");
        let keys = parse_authorized_players(&added).expect("the host reads it");
        assert!(keys.contains(&a) && keys.contains(&b));

        let removed = without(&added, &a).expect("a is listed");
        assert_eq!(removed, format!("# my players\n\n# end\n{b}  # bob\n"));
        assert_eq!(without(&removed, &a), None);
        assert_eq!(
            list(&removed).expect("valid"),
            vec![ListedPlayer {
                key: b.to_string(),
                note: "bob".to_owned()
            }]
        );
    }

    #[test]
    fn pasted_keys_and_notes_are_checked() {
        let a = key();
        assert_eq!(parse_key(&format!("  player key: {a}\n")), Ok(a));
        let text = a.to_string();
        let grouped: Vec<&str> = (0..text.len())
            .step_by(4)
            .map(|at| &text[at..(at + 4).min(text.len())])
            .collect();
        assert_eq!(parse_key(&grouped.join(" ")), Ok(a), "in the page's groups");
        assert_eq!(parse_key(&text[..51]), Err(EntryError::BadKey));
        assert_eq!(parse_key("bob"), Err(EntryError::BadKey));
        assert_eq!(
            parse_key(&format!("{a}\n{}", key())),
            Err(EntryError::BadKey),
            "one key at a time"
        );
        assert_eq!(parse_key(&format!("{a} # x")), Err(EntryError::BadKey));
        assert_eq!(check_note(" alice "), Ok("alice"));
        let smuggled = format!("x\n{}", key());
        assert_eq!(check_note(&smuggled), Err(EntryError::BadNote));
        assert_eq!(check_note(&"n".repeat(81)), Err(EntryError::BadNote));
    }

    #[test]
    fn a_bad_line_is_named_like_the_host_names_it() {
        let a = key();
        assert_eq!(list(&format!("{a}\nnot a key\n")), Err(2));
        assert_eq!(
            parse_authorized_players(&format!("{a}\nnot a key\n")),
            Err(2)
        );
    }

    #[test]
    fn the_file_is_replaced_whole_with_its_permissions() {
        let dir = std::env::temp_dir().join(format!("br-panel-players-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("authorized_players");
        std::fs::write(&path, "# old\n").expect("write");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        }
        write_atomically(&path, "# new\n").expect("written");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "# new\n");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o640);
        }
        let left: Vec<_> = std::fs::read_dir(&dir).expect("dir").collect();
        assert_eq!(left.len(), 1, "no temporary file left behind");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
