//! `blindrelay`: make a host or player identity, run a host, connect to one as a
//! player, for a relay operator make an issuer key and registration tokens, or see
//! it all work on one machine (`demo`).
//!
//! Results that scripts read go to stdout as `name: value` lines; logs go to stderr
//! (`RUST_LOG` filters them).

mod demo;
mod host_file;
mod panel;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use blindrelay_client::Abandon;
use blindrelay_client::{
    AuthorizedPlayers, HostAgent, HostConfig, HostId, HostState, PathPreference, Player,
    PlayerAuthorization, PlayerConfig, RelayUrl, SecretKey, SecureStream, Ticket, Token,
    TransportPreference,
};
use blindrelay_protocol::codes;
use blindrelay_protocol::duration::parse_duration;
use blindrelay_protocol::token::{Claims, IssuerSecretKey};
use clap::{Parser, Subcommand, ValueEnum};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

/// blindrelay: reach a home media server from anywhere, through a relay that cannot
/// read the traffic.
#[derive(Debug, Parser)]
#[command(name = "blindrelay", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start and taken apart at once: the size of the largest variant
// costs nothing, and boxing it would only make the match noisier.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Make an identity (an X25519 key): a host's, printing its host id, or a
    /// player's, printing the player key a host owner puts in authorized_players.
    Keygen {
        /// Where to write the secret key (created with mode 0600).
        #[arg(long)]
        out: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
        /// Whose key it is; only changes what is printed.
        #[arg(long, value_enum, default_value = "host")]
        role: Role,
    },
    /// Registration tokens, for relay operators: make the issuer key, issue tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Run a host: be reachable through a relay and/or directly, and forward every
    /// session, decrypted, to a local TCP service.
    ///
    /// With --panel, the host owner switches Enable Relay, shares the ticket and
    /// edits the authorized players from a local web page (or its JSON API). On
    /// Unix, SIGUSR1 switches Enable Relay off on the running host and SIGUSR2
    /// switches it on again. The relay state is printed on stdout (`relay: ...`) and
    /// logged at every change.
    Host {
        /// A TOML file with any of the settings below, for a host run as a service
        /// (docs/configuration.md, "The host's config file"). A flag beats its
        /// environment variable (named beside it), which beats the file.
        #[arg(long, value_name = "FILE", env = "BLINDRELAY_HOST_CONFIG")]
        config: Option<PathBuf>,
        /// Check the settings from flags, environment and file, print them, and exit.
        #[arg(long)]
        check_config: bool,
        /// The host's secret key (from `blindrelay keygen`).
        #[arg(long, value_name = "FILE", env = "BLINDRELAY_HOST_KEY")]
        key: Option<PathBuf>,
        /// Make the --key file when it does not exist yet, as a service's first start
        /// needs (its host id is printed as always).
        #[arg(long, env = "BLINDRELAY_HOST_MAKE_KEY", value_name = "BOOL", num_args = 0..=1,
              require_equals = true, default_missing_value = "true",
              value_parser = clap::builder::BoolishValueParser::new())]
        make_key: Option<bool>,
        /// The relay URL (as `blindrelayd` prints it). Without it the host is
        /// reachable only directly.
        #[arg(long, env = "BLINDRELAY_HOST_RELAY")]
        relay: Option<RelayUrl>,
        /// Local TCP service that sessions are forwarded to, e.g. a media server:
        /// `HOST:PORT`, where HOST is an address or a name (resolved at each session,
        /// so `localhost:8096` follows whatever it resolves to).
        #[arg(long, value_name = "HOST:PORT", value_parser = parse_service, env = "BLINDRELAY_HOST_FORWARD")]
        forward: Option<String>,
        /// Also listen for players directly (QUIC on this UDP address; port 0 picks
        /// one). Its address goes into the ticket.
        #[arg(long, value_name = "ADDR", env = "BLINDRELAY_HOST_DIRECT")]
        direct: Option<SocketAddr>,
        /// Direct address to put in the ticket instead of the bound one (repeatable,
        /// or comma-separated; for a forwarded port or a host bound to 0.0.0.0).
        #[arg(
            long,
            value_name = "ADDR",
            value_delimiter = ',',
            env = "BLINDRELAY_HOST_ADVERTISE"
        )]
        advertise: Vec<SocketAddr>,
        /// Start with Enable Relay off: never contact the relay until switched on
        /// (SIGUSR2, or the panel).
        #[arg(long, env = "BLINDRELAY_HOST_NO_RELAY", value_name = "BOOL", num_args = 0..=1,
              require_equals = true, default_missing_value = "true",
              value_parser = clap::builder::BoolishValueParser::new())]
        no_relay: Option<bool>,
        /// Registration token from the relay's operator (`brk...`), for a relay that
        /// requires one.
        #[arg(long, conflicts_with = "token_file", env = "BLINDRELAY_HOST_TOKEN")]
        token: Option<Token>,
        /// Read the registration token from FILE, and again whenever it changes: a
        /// renewed token takes effect without a restart. An expired one ends only
        /// the relay registration; direct sessions go on.
        #[arg(long, value_name = "FILE", env = "BLINDRELAY_HOST_TOKEN_FILE")]
        token_file: Option<PathBuf>,
        /// Serve only the players whose keys this file lists (one per line, `#`
        /// comments; re-read when it changes; made empty if missing). Without it
        /// every player is served.
        #[arg(long, value_name = "FILE", env = "BLINDRELAY_HOST_AUTHORIZED_PLAYERS")]
        authorized_players: Option<PathBuf>,
        /// Write the host's process id to FILE (removed on exit), for signals:
        /// `kill -USR1 "$(cat FILE)"`.
        #[arg(long, value_name = "FILE", env = "BLINDRELAY_HOST_PID_FILE")]
        pid_file: Option<PathBuf>,
        /// Serve the host owner's panel, a local web page and JSON API, on ADDR
        /// (`--panel` alone: a free port on 127.0.0.1). Its link, with the access
        /// token every call needs, is printed as `panel: http://.../#token=...`.
        #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:0",
              env = "BLINDRELAY_HOST_PANEL")]
        panel: Option<SocketAddr>,
        /// Let --panel listen on an address other than loopback. The panel speaks
        /// plain HTTP: anyone on that network who sees a request sees the token.
        #[arg(long, env = "BLINDRELAY_HOST_PANEL_ALLOW_REMOTE", value_name = "BOOL", num_args = 0..=1,
              require_equals = true, default_missing_value = "true",
              value_parser = clap::builder::BoolishValueParser::new())]
        panel_allow_remote: Option<bool>,
        /// Keep Enable Relay, as last switched by the panel or a signal, in FILE and
        /// start with it (unless --no-relay). With --panel it defaults to the key
        /// file's name followed by `.relay-state`.
        #[arg(long, value_name = "FILE", env = "BLINDRELAY_HOST_RELAY_STATE")]
        relay_state: Option<PathBuf>,
        /// How to reach the relay: `auto` (QUIC, then TLS over TCP and WebSocket when
        /// UDP does not get through), `quic`, `tcp` or `websocket` [default: auto].
        #[arg(long, env = "BLINDRELAY_HOST_TRANSPORT")]
        transport: Option<TransportPreference>,
    },
    /// Connect to a host as a player: every TCP connection to --listen becomes one
    /// end-to-end encrypted session to the host.
    Connect {
        /// The host's ticket (printed by `blindrelay host`).
        ticket: Ticket,
        /// Local TCP address to listen on.
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
        /// The player's secret key; a fresh one is made for this run if omitted.
        #[arg(long)]
        key: Option<PathBuf>,
        /// Which paths to use: `auto` (direct first, relay after --relay-delay; the
        /// first to connect wins), `direct` or `relay`.
        #[arg(long, default_value = "auto")]
        path: PathPreference,
        /// In `auto`, how long the direct attempts run alone before the relay joins
        /// the race (such as 250ms or 1s).
        #[arg(long, default_value = "250ms", value_name = "DURATION", value_parser = parse_duration)]
        relay_delay: Duration,
        /// How to reach the relay: `auto` (QUIC, then TLS over TCP and WebSocket when
        /// UDP does not get through), `quic`, `tcp` or `websocket`.
        #[arg(long, default_value = "auto")]
        transport: TransportPreference,
    },
    /// See it work: a relay, a host, a file server and a player on this machine, in
    /// one process; fetches a film through them, prints the links (the player's, a
    /// browser's, the host's panel), and runs until Ctrl-C.
    Demo {
        /// Where the relay's certificate, the host's key and the served film are
        /// kept from one run to the next [default: $XDG_STATE_HOME/blindrelay/demo
        /// or ~/.local/state/blindrelay/demo].
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// Serve this folder instead of the built-in film.
        #[arg(long, value_name = "DIR", conflicts_with = "forward")]
        serve: Option<PathBuf>,
        /// Forward sessions to this service instead, such as a media server's HTTP
        /// port (`127.0.0.1:8096` for Jellyfin).
        #[arg(long, value_name = "ADDR", value_parser = parse_service)]
        forward: Option<String>,
        /// Fetch, check that it arrived byte-exact, and exit: 0 when it did, non-zero
        /// with the reason otherwise.
        #[arg(long)]
        check: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Role {
    Host,
    Player,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Make an issuer signing key (Ed25519): writes FILE (mode 0600) and FILE.pub,
    /// the public key that relays list in --token-issuer-pub.
    Keygen {
        /// Where to write the signing key.
        #[arg(long)]
        out: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Sign a registration token for one host id and print it on stdout.
    Issue {
        /// The issuer signing key (from `blindrelay token keygen`).
        #[arg(long)]
        issuer_key: PathBuf,
        /// The host id the token admits.
        #[arg(long)]
        host_id: HostId,
        /// How long the token is valid (such as 1h or 30d; at least 1s).
        #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
        ttl: u64,
        /// The bandwidth tier the host gets (a [tiers.NAME] of the relay's config).
        #[arg(long, default_value = "default")]
        tier: String,
        /// The relay's config file: refuse a tier it does not define, instead of
        /// printing a token the relay will refuse.
        #[arg(long, value_name = "FILE")]
        relay_config: Option<PathBuf>,
    },
}

/// Runs the command; an error is printed as its chain of causes, one line, without
/// a backtrace even where `RUST_BACKTRACE` is set (a developer's machine often has
/// it): what went wrong and what to do, not where in the code.
fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("Error: cannot start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("Error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only where a person reads them, not in files or journals.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match Cli::parse().command {
        Command::Keygen { out, force, role } => keygen(&out, force, role),
        Command::Token { command } => token(command),
        Command::Host {
            config,
            check_config,
            key,
            make_key,
            relay,
            forward,
            direct,
            advertise,
            no_relay,
            token,
            token_file,
            authorized_players,
            pid_file,
            panel,
            panel_allow_remote,
            relay_state,
            transport,
        } => {
            let file = match &config {
                Some(path) => host_file::HostFile::load(path)?,
                None => host_file::HostFile::default(),
            };
            let settings = HostSettings::merge(
                HostFlags {
                    key,
                    make_key,
                    relay,
                    forward,
                    direct,
                    advertise,
                    no_relay,
                    token,
                    token_file,
                    authorized_players,
                    pid_file,
                    panel,
                    panel_allow_remote,
                    relay_state,
                    transport,
                },
                file,
            )?;
            if check_config {
                return settings.check();
            }
            run_host(settings).await
        }
        Command::Connect {
            ticket,
            listen,
            key,
            path,
            relay_delay,
            transport,
        } => {
            let key = match key {
                Some(path) => read_key_as(&path, Role::Player)?,
                None => {
                    // Without a lasting key, no host can list this player: say so
                    // before someone pastes a key that is gone at the next run.
                    warn!(
                        "no --key: this player's key is ephemeral (a new one every run), so \
                         a host's authorized_players cannot list it; make a lasting one with \
                         `blindrelay keygen --role player --out player.key` and pass \
                         --key player.key"
                    );
                    SecretKey::generate()?
                }
            };
            // A path the ticket has no route for would fail every connection later,
            // one by one: refuse it now, saying what the ticket holds.
            match path {
                PathPreference::RelayOnly if ticket.relay().is_none() => bail!(
                    "--path relay, but this ticket names no relay (its host runs without \
                     --relay): use --path direct or auto, or a ticket from a host started \
                     with --relay"
                ),
                PathPreference::DirectOnly if ticket.direct_addrs().is_empty() => bail!(
                    "--path direct, but this ticket has no direct address (its host runs \
                     without --direct): use --path relay or auto, or a ticket from a host \
                     started with --direct"
                ),
                _ => {}
            }
            let mut config = PlayerConfig::new(key);
            config.path = path;
            config.transport = transport;
            config.relay_delay = relay_delay;
            let stop = Stop::interrupt()?;
            let listener = TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            connect(ticket, listener, config, stop).await
        }
        Command::Demo {
            state_dir,
            serve,
            forward,
            check,
        } => {
            let args = demo::DemoArgs {
                state_dir,
                serve,
                forward,
                check,
            };
            demo::demo(args, Stop::interrupt()?).await
        }
    }
}

/// `blindrelay host`'s settings as flags and environment give them, before the file.
struct HostFlags {
    key: Option<PathBuf>,
    make_key: Option<bool>,
    relay: Option<RelayUrl>,
    forward: Option<String>,
    direct: Option<SocketAddr>,
    advertise: Vec<SocketAddr>,
    no_relay: Option<bool>,
    token: Option<Token>,
    token_file: Option<PathBuf>,
    authorized_players: Option<PathBuf>,
    pid_file: Option<PathBuf>,
    panel: Option<SocketAddr>,
    panel_allow_remote: Option<bool>,
    relay_state: Option<PathBuf>,
    transport: Option<TransportPreference>,
}

/// `blindrelay host`'s settings in effect: flags, then environment, then the file.
struct HostSettings {
    key: PathBuf,
    make_key: bool,
    relay: Option<RelayUrl>,
    forward: String,
    direct: Option<SocketAddr>,
    advertise: Vec<SocketAddr>,
    enable_relay: bool,
    token: Option<Token>,
    token_file: Option<PathBuf>,
    authorized_players: Option<PathBuf>,
    pid_file: Option<PathBuf>,
    panel: Option<SocketAddr>,
    panel_allow_remote: bool,
    relay_state: Option<PathBuf>,
    transport: TransportPreference,
}

impl HostSettings {
    fn merge(flags: HostFlags, file: host_file::HostFile) -> Result<Self> {
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
    fn check(&self) -> Result<()> {
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

/// Runs `blindrelay host` with `settings`.
async fn run_host(settings: HostSettings) -> Result<()> {
    let HostSettings {
        key,
        make_key,
        relay,
        forward,
        direct,
        advertise,
        enable_relay,
        token,
        token_file,
        authorized_players,
        pid_file,
        panel,
        panel_allow_remote,
        relay_state,
        transport,
    } = settings;
    if let Some(addr) = panel {
        check_panel_addr(addr, panel_allow_remote)?;
    }
    if make_key && !key.exists() {
        if let Some(folder) = key.parent().filter(|folder| !folder.as_os_str().is_empty()) {
            std::fs::create_dir_all(folder)
                .with_context(|| format!("cannot make the key's folder {}", folder.display()))?;
        }
        let made = SecretKey::generate()?;
        write_private(&key, key_file(&made, Role::Host).as_bytes(), false)?;
        println!("key: made {}", key.display());
    }
    let relay_state = relay_state.or_else(|| {
        panel.map(|_| {
            let mut path = key.clone().into_os_string();
            path.push(".relay-state");
            PathBuf::from(path)
        })
    });
    let key = read_key_as(&key, Role::Host)?;
    let has_relay = relay.is_some();
    let mut config = match (relay, direct) {
        (Some(relay), _) => HostConfig::new(key, relay),
        (None, Some(direct)) => HostConfig::direct_only(key, direct),
        (None, None) => {
            bail!("give --relay, --direct or both: nothing could reach this host")
        }
    };
    config.direct = direct;
    config.advertise = advertise;
    config.transport = transport;
    config.enable_relay = enable_relay;
    if let Some(path) = &relay_state {
        let kept = panel::load_relay_state(path)?;
        if let (Some(enabled), true) = (kept, enable_relay) {
            info!(enabled, file = %path.display(), "Enable Relay as last switched");
            config.enable_relay = enabled;
        }
    }
    let token_watch = TokenWatch::open(token_file)?;
    if let (Some(path), None) = (&token_watch.path, token_watch.current()) {
        println!(
            "token: none in {} yet; read as soon as it is there (a relay that requires \
             one refuses this host until then)",
            path.display()
        );
    }
    config.token = token.or_else(|| token_watch.current().cloned());
    let mut players = None;
    if let Some(path) = authorized_players {
        if !path.exists() {
            // A new host's list: made empty, to fill from the panel or by hand.
            write_private(&path, AUTHORIZED_PLAYERS_HEADER.as_bytes(), false)?;
            println!(
                "authorized players: made {} (empty: every player is refused until \
                 its key is added, here or in the panel)",
                path.display()
            );
        }
        let list = AuthorizedPlayers::open(&path)?;
        info!(path = %path.display(), players = list.len(), "serving only authorized players");
        players = Some(list.clone());
        config.players = PlayerAuthorization::File(list);
    }
    let _pid_file = pid_file.map(PidFile::create).transpose()?;
    // Listened for before anything is printed: a script that acts on our first lines
    // may send it at once.
    let stop = Stop::interrupt()?;
    host(
        config,
        HostRun {
            forward,
            has_relay,
            token_watch,
            panel,
            relay_state,
            players,
            registered: None,
        },
        stop,
    )
    .await
}

fn keygen(out: &Path, force: bool, role: Role) -> Result<()> {
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

/// Refuses a tier the relay's config file at `path` does not define: the relay would
/// refuse every token of it.
fn check_relay_has_tier(path: &Path, tier: &str) -> Result<()> {
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

fn token(command: TokenCommand) -> Result<()> {
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

/// A `--forward` target: `HOST:PORT` with a port number, HOST an IP address (IPv6 in
/// brackets) or a name. Names are resolved when a session connects, not here.
fn parse_service(text: &str) -> Result<String, String> {
    if text.parse::<SocketAddr>().is_ok() {
        return Ok(text.to_owned());
    }
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("expected HOST:PORT (such as localhost:8096), got {text:?}"))?;
    port.parse::<u16>().map_err(|_| {
        format!("{port:?} is not a port number (HOST:PORT, such as localhost:8096)")
    })?;
    let name_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_');
    if !name_ok {
        return Err(format!(
            "{host:?} is neither an IP address nor a host name (HOST:PORT, such as localhost:8096)"
        ));
    }
    Ok(text.to_owned())
}

/// A token's validity in whole seconds, in the duration syntax of every flag
/// (`90s`, `15m`, `1h`, `30d`).
fn parse_ttl(text: &str) -> Result<u64, String> {
    let ttl = parse_duration(text).map_err(|err| err.to_string())?;
    if ttl < Duration::from_secs(1) {
        return Err("the validity must be at least 1s".to_owned());
    }
    Ok(ttl.as_secs())
}

/// Writes a secret file readable by its owner only.
fn write_private(path: &Path, contents: &[u8], force: bool) -> Result<()> {
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
fn key_file(key: &SecretKey, role: Role) -> String {
    key.to_key_file()
        .replacen('\n', &format!("\n{ROLE_PREFIX}{}\n", role.word()), 1)
}

/// The comment line `keygen` writes after a key file's header: `# role: host`.
const ROLE_PREFIX: &str = "# role: ";

impl Role {
    fn word(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::Player => "player",
        }
    }
}

/// Reads the key file at `path` for `role`: a file `keygen` marked as the other
/// role's is refused with what to do (a file without the mark, from before it or
/// written by hand, is taken as it is).
fn read_key_as(path: &Path, role: Role) -> Result<SecretKey> {
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

fn read_key(path: &Path) -> Result<SecretKey> {
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

/// Refuses a panel address off loopback unless asked for, and warns when it is.
fn check_panel_addr(addr: SocketAddr, allow_remote: bool) -> Result<()> {
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

/// What a list of authorized players made by `blindrelay host` starts with.
const AUTHORIZED_PLAYERS_HEADER: &str = "\
# The players this host serves: one player key per line (as `blindrelay connect`
# or the browser page prints it), then an optional `# note`. Re-read when it changes.
";

/// How `blindrelay host` runs, beside the agent's own config.
struct HostRun {
    /// The local service sessions are forwarded to.
    forward: String,
    /// Whether a relay was given at all.
    has_relay: bool,
    /// The registration token file.
    token_watch: TokenWatch,
    /// Where to serve the panel, if anywhere.
    panel: Option<SocketAddr>,
    /// Where Enable Relay is kept across restarts, if anywhere.
    relay_state: Option<PathBuf>,
    /// The authorized players file, if the host has one.
    players: Option<AuthorizedPlayers>,
    /// Told the ticket once the host is first registered with its relay.
    registered: Option<tokio::sync::oneshot::Sender<Ticket>>,
}

async fn host(config: HostConfig, run: HostRun, mut stop: Stop) -> Result<()> {
    let HostRun {
        forward,
        has_relay,
        mut token_watch,
        panel: panel_addr,
        relay_state,
        players,
        mut registered,
    } = run;
    // Listened for before anything is printed: a script that acts on our first
    // lines may send it at once.
    let mut switch = RelaySwitch::new()?;
    let forward: std::sync::Arc<str> = forward.into();
    check_service(&forward).await;
    let token = config.token.clone();
    let relay = config.relay.clone();
    let mut agent = HostAgent::start(config)?;
    println!("host id: {}", agent.host_id());
    println!("ticket: {}", agent.ticket());
    if let Some(relay) = &relay {
        // Once, at start: a link is printed only where the relay was seen to serve
        // the player on this host's origin. The ticket goes in the fragment, which
        // browsers never send to the relay.
        match blindrelay_client::web_link(relay, agent.host_id()).await {
            Ok(link) => println!("web: {link}#{}", agent.ticket()),
            Err(err) => info!("no link for browsers: {err}"),
        }
    }
    if let Some(direct) = agent.direct_addr() {
        println!("direct: {direct}");
    }
    let sessions_open = panel::SessionTable::default();
    let (relay_enabled, relay_enabled_rx) = tokio::sync::watch::channel(agent.relay_enabled());
    // Without a panel the sender stays here, so the loop's receiver just waits.
    let (panel_tx, mut panel_commands) = tokio::sync::mpsc::channel(8);
    let _panel = match panel_addr {
        Some(addr) => {
            let view = panel::HostView {
                host_id: agent.host_id().to_string(),
                ticket: agent.ticket().to_string(),
                relay,
                direct: agent.ticket().direct_addrs().to_vec(),
                state: agent.watch_state(),
                retry_at: agent.watch_retry(),
                relay_transport: agent.watch_relay_transport(),
                relay_enabled: relay_enabled_rx,
                players,
                sessions: sessions_open.clone(),
                commands: panel_tx.clone(),
            };
            let panel = panel::Panel::start(addr, view).await?;
            println!("panel: {}", panel.url());
            Some(panel)
        }
        None => None,
    };
    if let Some(token) = &token {
        token_watch.announce(token);
    }
    let mut state = agent.watch_state();
    let mut sessions = JoinSet::new();
    let mut shown = None;
    // Not at once: the first lines a script reads are the host's and its state's.
    let mut token_poll =
        tokio::time::interval_at(tokio::time::Instant::now() + TOKEN_POLL, TOKEN_POLL);
    let stopped = loop {
        let now = state.borrow_and_update().clone();
        if shown.as_ref() != Some(&now) {
            // `relay: connecting (attempt 3)`, `relay: registered`, `relay: disabled`
            // (scripts match these lines; the transport is in the log).
            println!("relay: {now}");
            shown = Some(now.clone());
            match &now {
                HostState::Registered => {
                    if let Some(registered) = registered.take() {
                        let _ = registered.send(agent.ticket().clone());
                    }
                    let transport = agent.relay_transport().map(|t| t.to_string());
                    info!(
                        transport,
                        "relay state: registered; reachable through the relay"
                    )
                }
                HostState::Connecting { attempt } => info!(attempt, "relay state: connecting"),
                HostState::Disabled if agent.direct_addr().is_some() => {
                    info!("relay state: disabled; reachable only directly")
                }
                HostState::Disabled => warn!(
                    "relay state: disabled, and no direct listener: unreachable until Enable \
                     Relay is on again (the panel's switch, or SIGUSR2)"
                ),
                HostState::Stopped { .. } => break now,
                _ => {}
            }
        }
        tokio::select! {
            session = agent.accept() => match session {
                Some(session) => {
                    let local_id = next_local_id();
                    info!(local_id, session = relay_session(&session), path = %session.route(), player = %session.peer().short(), "session open");
                    let open = sessions_open.open(local_id, path_name(&session), session.peer().short());
                    sessions.spawn(forward_to_service(session, forward.clone(), open, local_id));
                }
                None => break agent.state(),
            },
            changed = state.changed() => {
                if changed.is_err() {
                    break agent.state();
                }
            }
            enable = switch.next() => {
                info!(enable, "Enable Relay switched by signal");
                switch_relay(&agent, enable, has_relay, relay_state.as_deref(), &relay_enabled);
            }
            Some(command) = panel_commands.recv() => match command {
                panel::PanelCommand::SetRelay { enabled, done } => {
                    info!(enable = enabled, "Enable Relay switched from the panel");
                    switch_relay(&agent, enabled, has_relay, relay_state.as_deref(), &relay_enabled);
                    let _ = done.send(());
                }
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            _ = token_poll.tick() => {
                if let Some(token) = token_watch.check() {
                    agent.set_token(token);
                }
            }
            () = &mut stop => {
                info!("shutting down");
                agent.shutdown().await;
                return Ok(());
            }
        }
    };
    // The agent may stop between two looks at its state (its session channel closes
    // first): still tell scripts how it ended.
    if shown.as_ref() != Some(&stopped) {
        println!("relay: {stopped}");
    }
    match stopped {
        HostState::Stopped { reason } => bail!("host stopped: {reason}"),
        other => bail!("host stopped unexpectedly in state {other:?}"),
    }
}

/// Switches Enable Relay, whoever asked (a signal or the panel): one path, so the
/// two cannot disagree. The new state is kept in `relay_state`, if given, and shown
/// to the panel through `shown`.
fn switch_relay(
    agent: &HostAgent,
    enable: bool,
    has_relay: bool,
    relay_state: Option<&Path>,
    shown: &tokio::sync::watch::Sender<bool>,
) {
    if enable && !has_relay {
        warn!(
            "this host was started without --relay: there is no relay to \
             enable; restart it with --relay URL to be reachable through one"
        );
    }
    agent.set_relay_enabled(enable);
    shown.send_replace(agent.relay_enabled());
    if let Some(path) = relay_state {
        if let Err(err) = panel::save_relay_state(path, enable) {
            warn!(%err, file = %path.display(), "cannot keep Enable Relay for the next start");
        }
    }
}

async fn forward_to_service(
    mut session: SecureStream,
    service: std::sync::Arc<str>,
    open: panel::OpenSession,
    local_id: u64,
) {
    let tcp = match TcpStream::connect(&*service).await {
        Ok(tcp) => tcp,
        Err(err) => {
            warn!(local_id, %err, "cannot reach the local service; telling the player");
            // Said to the player with the session's end, rather than an empty
            // session it would take for an empty reply.
            let (mut reader, mut writer) = session.into_inner();
            writer.abandon(codes::stream::SERVICE_UNAVAILABLE);
            reader.abandon(codes::stream::SERVICE_UNAVAILABLE);
            return;
        }
    };
    let _ = tcp.set_nodelay(true);
    // A session cut short resets the service's connection, as below for players.
    let socket = socket2::SockRef::from(&tcp).try_clone().ok();
    let mut tcp = open.count(tcp);
    if splice_tcp(local_id, &mut session, &mut tcp).await == Ended::CutShort {
        if let Some(socket) = socket {
            let _ = socket.set_linger(Some(Duration::ZERO));
        }
    }
}

/// The path a session came by, as the panel names it.
fn path_name(session: &SecureStream) -> &'static str {
    match session.path() {
        blindrelay_client::SessionPath::Relayed => "relayed",
        _ => "direct",
    }
}

/// Warns at start when the local service does not take a connection: every player
/// would otherwise get an empty reply, and nothing would say why.
async fn check_service(service: &str) {
    let connect = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(service));
    match connect.await {
        Ok(Ok(_)) => info!(service, "the local service answers"),
        Ok(Err(err)) => warn!(
            service,
            %err,
            "the local service does not answer: players get empty replies until it does"
        ),
        Err(_) => warn!(
            service,
            "the local service did not answer within 2 s: players get empty replies until it does"
        ),
    }
}

/// A number for each session this process opens, for its log lines: the relay's
/// session id exists only on relayed sessions (a direct one has none), and
/// "session=0" on every direct session told the reader nothing.
fn next_local_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The relay's id for a relayed session, to match the relay's log; `None` (no
/// field in the log line) for a direct one.
fn relay_session(session: &SecureStream) -> Option<u64> {
    (session.path() == blindrelay_client::SessionPath::Relayed).then(|| session.session_id())
}

/// How often `--token-file` is looked at, and the token's expiry checked.
const TOKEN_POLL: Duration = Duration::from_secs(2);

/// How long before its expiry a token is warned about.
const TOKEN_WARNING: Duration = Duration::from_secs(7 * 24 * 3600);

/// The registration token of `--token-file`: read at start, read again when the
/// file changes, and its expiry announced ahead of time.
struct TokenWatch {
    path: Option<PathBuf>,
    text: String,
    token: Option<Token>,
    /// When the token in use was read (Unix seconds): its lifetime as this host
    /// knows it, for the warning.
    read_at: u64,
    warned: bool,
}

impl TokenWatch {
    /// Reads `path`, if given; an unreadable or invalid file at start is an error.
    fn open(path: Option<PathBuf>) -> Result<Self> {
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
    fn current(&self) -> Option<&Token> {
        self.token.as_ref()
    }

    /// Logs when `token` expires.
    fn announce(&self, token: &Token) {
        let expires = token.claims_unverified().expires;
        info!(expires, left = %until(expires), "registration token");
    }

    /// A new token when the file holds one; also warns once when the token in use
    /// is close to its expiry.
    fn check(&mut self) -> Option<Token> {
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
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// How long until Unix time `at`, in words.
fn until(at: u64) -> String {
    let left = at.saturating_sub(unix_now());
    match left {
        0 => "no time: it has expired".to_owned(),
        s if s < 120 => format!("{s} s"),
        s if s < 2 * 3600 => format!("{} min", s / 60),
        s if s < 2 * 86_400 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86_400),
    }
}

/// The host's process id in a file, for scripts that signal it; removed when the
/// host exits (cleanly or with an error; not when killed outright).
struct PidFile(PathBuf);

impl PidFile {
    fn create(path: PathBuf) -> Result<Self> {
        std::fs::write(&path, format!("{}\n", std::process::id()))
            .with_context(|| format!("cannot write pid file {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Ctrl-C (SIGINT), listened for from the moment this is made, for the whole run:
/// made before the first line a script acts on is printed, so an interrupt sent
/// right after that line ends the program cleanly rather than by the signal's
/// default action, and one between two turns of a loop is not lost.
struct Interrupt {
    #[cfg(unix)]
    signal: tokio::signal::unix::Signal,
}

impl Interrupt {
    fn new() -> Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                signal: signal(SignalKind::interrupt()).context("cannot handle Ctrl-C")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// The next interrupt.
    async fn recv(&mut self) {
        #[cfg(unix)]
        {
            self.signal.recv().await;
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// When a command stops: at Ctrl-C, or, inside `blindrelay demo`, when the demo
/// says so.
struct Stop(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>);

impl Stop {
    /// At the next Ctrl-C (SIGINT), listened for from now on.
    fn interrupt() -> Result<Self> {
        let mut interrupt = Interrupt::new()?;
        Ok(Self(Box::pin(async move { interrupt.recv().await })))
    }

    /// Once `stopped` reads `true` (or its sender is gone).
    fn when(mut stopped: tokio::sync::watch::Receiver<bool>) -> Self {
        Self(Box::pin(async move {
            let _ = stopped.wait_for(|stopped| *stopped).await;
        }))
    }
}

impl std::future::Future for Stop {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

/// Enable Relay switched by signals: SIGUSR1 off, SIGUSR2 on (Unix only).
struct RelaySwitch {
    #[cfg(unix)]
    off: tokio::signal::unix::Signal,
    #[cfg(unix)]
    on: tokio::signal::unix::Signal,
}

impl RelaySwitch {
    fn new() -> Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                off: signal(SignalKind::user_defined1()).context("cannot handle SIGUSR1")?,
                on: signal(SignalKind::user_defined2()).context("cannot handle SIGUSR2")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// The next switch: `false` for off, `true` for on.
    async fn next(&mut self) -> bool {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.off.recv() => false,
                _ = self.on.recv() => true,
            }
        }
        #[cfg(not(unix))]
        std::future::pending().await
    }
}

async fn connect(
    ticket: Ticket,
    listener: TcpListener,
    config: PlayerConfig,
    mut stop: Stop,
) -> Result<()> {
    let player = std::sync::Arc::new(Player::new(config));
    println!("listening on: {}", listener.local_addr()?);
    // The host's owner lists this key to let the player in.
    println!("player key: {}", player.public_key());
    info!(host = %ticket.host_id().short(), "each connection becomes a session to the host");

    let ticket = std::sync::Arc::new(ticket);
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (mut tcp, _) = match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        warn!(%err, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let (player, ticket) = (player.clone(), ticket.clone());
                let local_id = next_local_id();
                sessions.spawn(async move {
                    match player.connect(&ticket).await {
                        Ok(mut session) => {
                            info!(local_id, session = relay_session(&session), path = %session.route(), "session open");
                            if splice_tcp(local_id, &mut session, &mut tcp).await == Ended::CutShort {
                                // A reset, not a clean end: the application reading
                                // this socket must not take a cut download for a
                                // whole one.
                                let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
                            }
                        }
                        Err(err) => {
                            warn!(%err, "cannot open a session");
                            // A reset, not an empty reply: the application asked for
                            // something and got nothing.
                            let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
                        }
                    }
                });
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            () = &mut stop => {
                info!("shutting down");
                sessions.shutdown().await;
                player.close().await;
                return Ok(());
            }
        }
    }
}

/// Copies both ways until both directions have ended (half-close passes through).
/// How a session spliced to a local TCP connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// Both sides ended cleanly.
    Cleanly,
    /// The session failed (cut by the relay, the other side gone, truncated): the
    /// local connection must be reset, not closed, or its application would take
    /// what it got for the whole.
    CutShort,
}

async fn splice_tcp(
    local_id: u64,
    session: &mut (impl AsyncRead + AsyncWrite + Unpin),
    tcp: &mut (impl AsyncRead + AsyncWrite + Unpin),
) -> Ended {
    const BUF: usize = 64 * 1024;
    match tokio::io::copy_bidirectional_with_sizes(session, tcp, BUF, BUF).await {
        // Named from the local connection's side (the service on a host, the
        // application on a player): what the session delivered to it, and took from it.
        Ok((to_local, from_local)) => {
            debug!(local_id, to_local, from_local, "session ended");
            Ended::Cleanly
        }
        // Cut from outside the session (a relay limit, the other side gone): the
        // person at either end wants to know why their download stopped.
        Err(err)
            if err
                .get_ref()
                .is_some_and(|inner| inner.is::<blindrelay_client::SessionEnded>()) =>
        {
            warn!(local_id, %err, "session cut short");
            Ended::CutShort
        }
        Err(err) => {
            debug!(local_id, %err, "session ended with an error");
            Ended::CutShort
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn forward_takes_host_names_as_well_as_addresses() {
        for ok in [
            "localhost:8096",
            "127.0.0.1:8096",
            "[::1]:8096",
            "media-box.lan:80",
        ] {
            assert_eq!(parse_service(ok).as_deref(), Ok(ok));
        }
        for bad in ["localhost", "localhost:http", ":8096", "a b:1", "::1:8096"] {
            assert!(parse_service(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_take_the_shared_syntax_and_refuse_ambiguous_units() {
        let err = Cli::try_parse_from(["blindrelay", "connect", "--relay-delay", "10M", "x"])
            .expect_err("months or minutes?");
        let text = err.to_string();
        assert!(text.contains("unknown unit \"M\""), "{text}");
        assert!(text.contains("ms, s, m, h or d"), "{text}");
        let err = Cli::try_parse_from(["blindrelay", "connect", "--relay-delay", "250", "x"])
            .expect_err("a bare number has no unit");
        assert!(err.to_string().contains("has no unit"), "{err}");

        assert_eq!(parse_ttl("30d"), Ok(30 * 86_400));
        assert_eq!(parse_ttl("1h 30m"), Ok(5400));
        assert!(parse_ttl("2 weeks").is_err());
        assert!(parse_ttl("500ms").is_err(), "under a second");
    }
}
