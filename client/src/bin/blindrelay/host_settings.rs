//! `blindrelay host`'s settings: flags, then environment, then the config file.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use blindrelay_client::{RelayUrl, Token, TransportPreference};

use crate::cli::parse_service;
use crate::host::check_panel_addr;
use crate::host_file;
use crate::keys::read_key;
use crate::token::TokenWatch;

/// `blindrelay host`'s settings as flags and environment give them, before the file.
#[derive(Debug, clap::Args)]
pub(crate) struct HostFlags {
    /// The host's secret key (from `blindrelay keygen`).
    #[arg(long, value_name = "FILE", env = "BLINDRELAY_HOST_KEY")]
    pub(crate) key: Option<PathBuf>,
    /// Make the --key file when it does not exist yet, as a service's first start
    /// needs (its host id is printed as always).
    #[arg(long, env = "BLINDRELAY_HOST_MAKE_KEY", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub(crate) make_key: Option<bool>,
    /// The relay URL (as `blindrelayd` prints it). Without it the host is
    /// reachable only directly.
    #[arg(long, env = "BLINDRELAY_HOST_RELAY")]
    pub(crate) relay: Option<RelayUrl>,
    /// Local TCP service that sessions are forwarded to, e.g. a media server:
    /// `HOST:PORT`, where HOST is an address or a name (resolved at each session,
    /// so `localhost:8096` follows whatever it resolves to).
    #[arg(long, value_name = "HOST:PORT", value_parser = parse_service, env = "BLINDRELAY_HOST_FORWARD")]
    pub(crate) forward: Option<String>,
    /// Also listen for players directly (QUIC on this UDP address; port 0 picks
    /// one). Its address goes into the ticket.
    #[arg(long, value_name = "ADDR", env = "BLINDRELAY_HOST_DIRECT")]
    pub(crate) direct: Option<SocketAddr>,
    /// Direct address to put in the ticket instead of the bound one (repeatable,
    /// or comma-separated; for a forwarded port or a host bound to 0.0.0.0).
    #[arg(
        long,
        value_name = "ADDR",
        value_delimiter = ',',
        env = "BLINDRELAY_HOST_ADVERTISE"
    )]
    pub(crate) advertise: Vec<SocketAddr>,
    /// Start with Enable Relay off: never contact the relay until switched on
    /// (SIGUSR2, or the panel).
    #[arg(long, env = "BLINDRELAY_HOST_NO_RELAY", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub(crate) no_relay: Option<bool>,
    /// Registration token from the relay's operator (`brk...`), for a relay that
    /// requires one.
    #[arg(long, conflicts_with = "token_file", env = "BLINDRELAY_HOST_TOKEN")]
    pub(crate) token: Option<Token>,
    /// Read the registration token from FILE, and again whenever it changes: a
    /// renewed token takes effect without a restart. An expired one ends only
    /// the relay registration; direct sessions go on.
    #[arg(long, value_name = "FILE", env = "BLINDRELAY_HOST_TOKEN_FILE")]
    pub(crate) token_file: Option<PathBuf>,
    /// Serve only the players whose keys this file lists (one per line, `#`
    /// comments; re-read when it changes; made empty if missing). Without it
    /// every player is served.
    #[arg(long, value_name = "FILE", env = "BLINDRELAY_HOST_AUTHORIZED_PLAYERS")]
    pub(crate) authorized_players: Option<PathBuf>,
    /// Write the host's process id to FILE (removed on exit), for signals:
    /// `kill -USR1 "$(cat FILE)"`.
    #[arg(long, value_name = "FILE", env = "BLINDRELAY_HOST_PID_FILE")]
    pub(crate) pid_file: Option<PathBuf>,
    /// Serve the host owner's panel, a local web page and JSON API, on ADDR
    /// (`--panel` alone: a free port on 127.0.0.1). Its link, with the access
    /// token every call needs, is printed as `panel: http://.../#token=...`.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:0",
          env = "BLINDRELAY_HOST_PANEL")]
    pub(crate) panel: Option<SocketAddr>,
    /// Let --panel listen on an address other than loopback. The panel speaks
    /// plain HTTP: anyone on that network who sees a request sees the token.
    #[arg(long, env = "BLINDRELAY_HOST_PANEL_ALLOW_REMOTE", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub(crate) panel_allow_remote: Option<bool>,
    /// Keep Enable Relay, as last switched by the panel or a signal, in FILE and
    /// start with it (unless --no-relay). With --panel it defaults to the key
    /// file's name followed by `.relay-state`.
    #[arg(long, value_name = "FILE", env = "BLINDRELAY_HOST_RELAY_STATE")]
    pub(crate) relay_state: Option<PathBuf>,
    /// How to reach the relay: `auto` (QUIC, then TLS over TCP and WebSocket when
    /// UDP does not get through), `quic`, `tcp` or `websocket` [default: auto].
    #[arg(long, env = "BLINDRELAY_HOST_TRANSPORT")]
    pub(crate) transport: Option<TransportPreference>,
}

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
