//! `blindrelay host --config FILE`: the host's settings in a TOML file, for a host
//! run as a service (systemd, a container), with the relay's conventions: a flag
//! beats its environment variable (`BLINDRELAY_HOST_*`), which beats the file;
//! unknown keys are errors; relative file names are read from the file's own
//! folder; `--check-config` prints what is in effect and exits.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

/// The file's keys (docs/configuration.md, "The host's config file").
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HostFile {
    /// The host's secret key file.
    pub key: Option<PathBuf>,
    /// Make the key file when it does not exist yet (a service's first start).
    pub make_key: Option<bool>,
    /// The relay URL.
    pub relay: Option<String>,
    /// The local service sessions are forwarded to (`HOST:PORT`).
    pub forward: Option<String>,
    /// The direct listener's UDP address.
    pub direct: Option<SocketAddr>,
    /// Direct addresses for the ticket instead of the bound one.
    pub advertise: Option<Vec<SocketAddr>>,
    /// Enable Relay at start (`false`: as `--no-relay`).
    pub enable_relay: Option<bool>,
    /// The registration token file, read again when it changes.
    pub token_file: Option<PathBuf>,
    /// The authorized players file.
    pub authorized_players: Option<PathBuf>,
    /// The process id file.
    pub pid_file: Option<PathBuf>,
    /// The panel's address.
    pub panel: Option<SocketAddr>,
    /// Let the panel listen beyond loopback.
    pub panel_allow_remote: Option<bool>,
    /// Where Enable Relay is kept across restarts.
    pub relay_state: Option<PathBuf>,
    /// How to reach the relay: `auto`, `quic`, `tcp` or `websocket`.
    pub transport: Option<String>,
    /// How long a session whose path broke is kept for its player to resume it
    /// (`"30s"`; `"0s"`: sessions cannot be resumed).
    pub resume_window: Option<String>,
    /// The bytes each resumable session keeps until its player acknowledges them
    /// (`"4MiB"`).
    pub replay_window: Option<String>,
    /// Hole punching (`false`: as `--no-punch`).
    pub punch: Option<bool>,
}

impl HostFile {
    /// Reads and parses `path`; relative file names in it are taken from its folder.
    pub(crate) fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the config file {}", path.display()))?;
        let mut file: Self = toml::from_str(&text)
            .map_err(|err| anyhow::anyhow!("{}: {}", path.display(), err.to_string().trim_end()))?;
        let base = path.parent().unwrap_or(Path::new(""));
        for name in [
            &mut file.key,
            &mut file.token_file,
            &mut file.authorized_players,
            &mut file.pid_file,
            &mut file.relay_state,
        ]
        .into_iter()
        .flatten()
        {
            if name.is_relative() {
                *name = base.join(&*name);
            }
        }
        Ok(file)
    }
}
