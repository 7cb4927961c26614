//! `blindrelay host`'s settings: flags, then environment, then the config file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use blindrelay_client::{RelayUrl, Token, TransportPreference};
use blindrelay_protocol::duration::{format_duration, parse_duration};
use blindrelay_protocol::resume::{DEFAULT_REPLAY_WINDOW, DEFAULT_RESUME_WINDOW};
use tracing::warn;

use crate::cli::{parse_replay_window, parse_service, HostFlags};
use crate::host_file;
use crate::keys::read_key;
use crate::token::TokenWatch;

/// `blindrelay host`'s settings in effect: flags, then environment, then the file.
pub(crate) struct HostSettings {
    pub(crate) key: PathBuf,
    pub(crate) make_key: bool,
    pub(crate) relay: Option<RelayUrl>,
    pub(crate) forward: String,
    pub(crate) direct: Option<SocketAddr>,
    pub(crate) advertise: Vec<SocketAddr>,
    pub(crate) enable_relay: bool,
    pub(crate) token: Option<Token>,
    pub(crate) token_file: Option<PathBuf>,
    pub(crate) authorized_players: Option<PathBuf>,
    pub(crate) pid_file: Option<PathBuf>,
    pub(crate) panel: Option<SocketAddr>,
    pub(crate) panel_allow_remote: bool,
    pub(crate) relay_state: Option<PathBuf>,
    pub(crate) transport: TransportPreference,
    pub(crate) resume_window: Duration,
    pub(crate) replay_window: usize,
    pub(crate) punch: bool,
}

impl HostSettings {
    pub(crate) fn merge(flags: HostFlags, file: host_file::HostFile) -> Result<Self> {
        let key = flags.key.or(file.key).context(
            "give the host's key: --key FILE (or `key` in the config file); \
             `blindrelay keygen --out FILE` makes one, or add --make-key",
        )?;
        let forward = match flags.forward {
            Some(forward) => forward,
            None => {
                let text = file.forward.context(
                    "give the local service: --forward HOST:PORT (or `forward` in the \
                     config file), e.g. 127.0.0.1:8096 for Jellyfin",
                )?;
                parse_service(&text).map_err(|err| {
                    anyhow::anyhow!("forward = {text:?} in the config file: {err}")
                })?
            }
        };
        let relay = match flags.relay {
            Some(relay) => Some(relay),
            None => file
                .relay
                .as_deref()
                .map(|text| {
                    text.parse::<RelayUrl>().map_err(|err| {
                        anyhow::anyhow!("relay = {text:?} in the config file: {err}")
                    })
                })
                .transpose()?,
        };
        let transport = match flags.transport {
            Some(transport) => transport,
            None => file
                .transport
                .as_deref()
                .map(|text| {
                    text.parse::<TransportPreference>().map_err(|err| {
                        anyhow::anyhow!("transport = {text:?} in the config file: {err}")
                    })
                })
                .transpose()?
                .unwrap_or_default(),
        };
        let resume_window = match flags.resume_window {
            Some(window) => window,
            None => file
                .resume_window
                .as_deref()
                .map(|text| {
                    parse_duration(text).map_err(|err| {
                        anyhow::anyhow!("resume_window = {text:?} in the config file: {err}")
                    })
                })
                .transpose()?
                .unwrap_or(DEFAULT_RESUME_WINDOW),
        };
        let replay_window = match flags.replay_window {
            Some(window) => window,
            None => file
                .replay_window
                .as_deref()
                .map(|text| {
                    parse_replay_window(text).map_err(|err| {
                        anyhow::anyhow!("replay_window = {text:?} in the config file: {err}")
                    })
                })
                .transpose()?
                .unwrap_or(DEFAULT_REPLAY_WINDOW),
        };
        let direct = flags.direct.or(file.direct);
        let advertise = if flags.advertise.is_empty() {
            file.advertise.unwrap_or_default()
        } else {
            flags.advertise
        };
        if !advertise.is_empty() && direct.is_none() {
            bail!("advertised direct addresses need a direct listener: give --direct ADDR (or `direct`)");
        }
        let panel = flags.panel.or(file.panel);
        let panel_allow_remote = flags
            .panel_allow_remote
            .or(file.panel_allow_remote)
            .unwrap_or(false);
        if panel_allow_remote && panel.is_none() {
            bail!("panel_allow_remote needs a panel: give --panel ADDR (or `panel`)");
        }
        // A token given as a flag or in the environment beats a token file named in
        // the config file.
        let token_file = match &flags.token {
            Some(_) => None,
            None => flags.token_file.or(file.token_file),
        };
        Ok(Self {
            key,
            make_key: flags.make_key.or(file.make_key).unwrap_or(false),
            relay,
            forward,
            direct,
            advertise,
            enable_relay: !flags.no_relay.unwrap_or(false) && file.enable_relay.unwrap_or(true),
            token: flags.token,
            token_file,
            authorized_players: flags.authorized_players.or(file.authorized_players),
            pid_file: flags.pid_file.or(file.pid_file),
            panel,
            panel_allow_remote,
            relay_state: flags.relay_state.or(file.relay_state),
            transport,
            resume_window,
            replay_window,
            punch: !flags.no_punch.unwrap_or(false) && file.punch.unwrap_or(true),
        })
    }

    /// `--check-config`: checks what can be checked without starting (the key, the
    /// token file, the panel's address), prints the settings, and exits.
    pub(crate) fn check(&self) -> Result<()> {
        if self.key.exists() {
            read_key(&self.key)?;
        } else if !self.make_key {
            bail!(
                "no key at {}: make it with `blindrelay keygen --out {}`, or add --make-key",
                self.key.display(),
                self.key.display()
            );
        }
        if self.token_file.is_some() {
            TokenWatch::open(self.token_file.clone())?;
        }
        if let Some(addr) = self.panel {
            check_panel_addr(addr, self.panel_allow_remote)?;
        }
        if self.relay.is_none() && self.direct.is_none() {
            bail!("give --relay, --direct or both: nothing could reach this host");
        }
        println!("configuration is valid");
        let path = |path: &Option<PathBuf>| {
            path.as_ref()
                .map(|p| format!("{:?}", p.display().to_string()))
        };
        println!("key = {:?}", self.key.display().to_string());
        println!("make_key = {}", self.make_key);
        let lines = [
            (
                "relay",
                self.relay
                    .as_ref()
                    .map(|relay| format!("{:?}", relay.to_string())),
            ),
            ("forward", Some(format!("{:?}", self.forward))),
            ("direct", self.direct.map(|addr| format!("\"{addr}\""))),
            ("enable_relay", Some(self.enable_relay.to_string())),
            (
                "token",
                self.token.as_ref().map(|_| "(given; not shown)".to_owned()),
            ),
            ("token_file", path(&self.token_file)),
            ("authorized_players", path(&self.authorized_players)),
            ("pid_file", path(&self.pid_file)),
            ("panel", self.panel.map(|addr| format!("\"{addr}\""))),
            (
                "panel_allow_remote",
                Some(self.panel_allow_remote.to_string()),
            ),
            ("relay_state", path(&self.relay_state)),
            ("transport", Some(format!("\"{}\"", self.transport))),
            (
                "resume_window",
                Some(format!("\"{}\"", format_duration(self.resume_window))),
            ),
            (
                "replay_window",
                Some(format!(
                    "\"{}\"",
                    blindrelay_relay::units::ByteSize(self.replay_window as u64)
                )),
            ),
            ("punch", Some(self.punch.to_string())),
        ];
        for (name, value) in lines {
            match value {
                Some(value) => println!("{name} = {value}"),
                None => println!("# {name}: not set"),
            }
        }
        if !self.advertise.is_empty() {
            let list: Vec<String> = self
                .advertise
                .iter()
                .map(|addr| format!("\"{addr}\""))
                .collect();
            println!("advertise = [{}]", list.join(", "));
        }
        Ok(())
    }
}

/// Refuses a panel address off loopback unless asked for, and warns when it is.
pub(crate) fn check_panel_addr(addr: SocketAddr, allow_remote: bool) -> Result<()> {
    if addr.ip().is_loopback() {
        return Ok(());
    }
    if !allow_remote {
        bail!(
            "--panel {addr} is not a loopback address: the panel would be reachable from \
             the network, over plain HTTP; use 127.0.0.1:PORT, or add --panel-allow-remote \
             if you mean it"
        );
    }
    warn!(
        %addr,
        "the panel listens beyond this machine, over plain HTTP: anyone who can watch \
         that network can read its access token; prefer 127.0.0.1 and an SSH tunnel"
    );
    Ok(())
}
