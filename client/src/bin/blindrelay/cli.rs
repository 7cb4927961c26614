//! The command line: every command, its flags and their parsers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use blindrelay_client::{HostId, PathPreference, RelayUrl, Ticket, Token, TransportPreference};
use blindrelay_protocol::duration::parse_duration;
use blindrelay_protocol::resume::MAX_REPLAY_WINDOW;
use clap::{Parser, Subcommand, ValueEnum};

/// blindrelay: reach a home media server from anywhere, through a relay that cannot
/// read the traffic.
#[derive(Debug, Parser)]
#[command(name = "blindrelay", version)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

// Parsed once at start and taken apart at once: the size of the largest variant
// costs nothing, and boxing it would only make the match noisier.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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
    Host(HostArgs),
    /// Connect to a host as a player: every TCP connection to --listen becomes one
    /// end-to-end encrypted session to the host.
    Connect(ConnectArgs),
    /// See it work: a relay, a host, a file server and a player on this machine, in
    /// one process; fetches a film through them, prints the links (the player's, a
    /// browser's, the host's panel), and runs until Ctrl-C.
    Demo(DemoArgs),
}

/// `blindrelay host`'s command line: where its settings come from, and the flags
/// that override them.
#[derive(Debug, clap::Args)]
pub(crate) struct HostArgs {
    /// A TOML file with any of the settings below, for a host run as a service
    /// (docs/configuration.md, "The host's config file"). A flag beats its
    /// environment variable (named beside it), which beats the file.
    #[arg(long, value_name = "FILE", env = "BLINDRELAY_HOST_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    /// Check the settings from flags, environment and file, print them, and exit.
    #[arg(long)]
    pub(crate) check_config: bool,
    #[command(flatten)]
    pub(crate) flags: HostFlags,
}

/// `blindrelay connect`'s command line.
#[derive(Debug, clap::Args)]
pub(crate) struct ConnectArgs {
    /// The host's ticket (printed by `blindrelay host`).
    pub(crate) ticket: Ticket,
    /// Local TCP address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    pub(crate) listen: SocketAddr,
    /// The player's secret key; a fresh one is made for this run if omitted.
    #[arg(long)]
    pub(crate) key: Option<PathBuf>,
    /// Which paths to use: `auto` (direct first, relay after --relay-delay; the
    /// first to connect wins), `direct` or `relay`.
    #[arg(long, default_value = "auto")]
    pub(crate) path: PathPreference,
    /// In `auto`, how long the direct attempts run alone before the relay joins
    /// the race (such as 250ms or 1s).
    #[arg(long, default_value = "250ms", value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) relay_delay: Duration,
    /// How to reach the relay: `auto` (QUIC, then TLS over TCP and WebSocket when
    /// UDP does not get through), `quic`, `tcp` or `websocket`.
    #[arg(long, default_value = "auto")]
    pub(crate) transport: TransportPreference,
    /// How long a session whose path broke (a relay restart, a lost network) is
    /// kept while a new path is sought: the application sees a pause, not an
    /// error. `0s` opens sessions that cannot be resumed.
    #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) resume_window: Duration,
    /// The bytes each resumable session keeps until the host acknowledges them
    /// (64KiB to 16MiB): a session's memory, and how far a writer runs ahead of
    /// the host's reads.
    #[arg(long, default_value = "4MiB", value_name = "SIZE", value_parser = parse_replay_window)]
    pub(crate) replay_window: usize,
    /// Do not punch direct paths to hosts: sessions stay on the path that won the
    /// race (without it, a relayed session's host is offered a punched direct
    /// path, and sessions move to it when the two NATs allow).
    #[arg(long, env = "BLINDRELAY_NO_PUNCH", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub(crate) no_punch: Option<bool>,
}

/// `blindrelay demo`'s command line.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// Where the relay's certificate, the host's key and the served film are
    /// kept from one run to the next [default: $XDG_STATE_HOME/blindrelay/demo
    /// or ~/.local/state/blindrelay/demo].
    #[arg(long, value_name = "DIR")]
    pub(crate) state_dir: Option<PathBuf>,
    /// Serve this folder instead of the built-in film.
    #[arg(long, value_name = "DIR", conflicts_with = "forward")]
    pub(crate) serve: Option<PathBuf>,
    /// Forward sessions to this service instead, such as a media server's HTTP
    /// port (`127.0.0.1:8096` for Jellyfin).
    #[arg(long, value_name = "ADDR", value_parser = parse_service)]
    pub(crate) forward: Option<String>,
    /// Fetch, check that it arrived byte-exact, and exit: 0 when it did, non-zero
    /// with the reason otherwise.
    #[arg(long)]
    pub(crate) check: bool,
}

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
    /// How long a session whose path broke is kept for its player to resume it
    /// (such as 30s; `0s`: sessions cannot be resumed) [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration,
          env = "BLINDRELAY_HOST_RESUME_WINDOW")]
    pub(crate) resume_window: Option<Duration>,
    /// The bytes each resumable session keeps until its player acknowledges them
    /// (64KiB to 16MiB) [default: 4MiB].
    #[arg(long, value_name = "SIZE", value_parser = parse_replay_window,
          env = "BLINDRELAY_HOST_REPLAY_WINDOW")]
    pub(crate) replay_window: Option<usize>,
    /// Refuse players' punch sessions: no direct path is punched to this host, and
    /// no unadvertised listener is opened for one.
    #[arg(long, env = "BLINDRELAY_HOST_NO_PUNCH", value_name = "BOOL", num_args = 0..=1,
          require_equals = true, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub(crate) no_punch: Option<bool>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Role {
    Host,
    Player,
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
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

/// A `--forward` target: `HOST:PORT` with a port number, HOST an IP address (IPv6 in
/// brackets) or a name. Names are resolved when a session connects, not here.
pub(crate) fn parse_service(text: &str) -> Result<String, String> {
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

/// A replay window (PROTOCOL.md 10.8): a size such as `4MiB`, from one frame's
/// worth (64KiB) to the protocol's largest (16MiB).
pub(crate) fn parse_replay_window(text: &str) -> Result<usize, String> {
    const MIN: usize = 64 * 1024;
    let size = text
        .parse::<blindrelay_relay::units::ByteSize>()
        .map_err(|err| err.to_string())?;
    match usize::try_from(size.0) {
        Ok(size) if (MIN..=MAX_REPLAY_WINDOW).contains(&size) => Ok(size),
        _ => Err(format!(
            "the replay window must be 64KiB to 16MiB, got {text:?}"
        )),
    }
}

/// A token's validity in whole seconds, in the duration syntax of every flag
/// (`90s`, `15m`, `1h`, `30d`).
pub(crate) fn parse_ttl(text: &str) -> Result<u64, String> {
    let ttl = parse_duration(text).map_err(|err| err.to_string())?;
    if ttl < Duration::from_secs(1) {
        return Err("the validity must be at least 1s".to_owned());
    }
    Ok(ttl.as_secs())
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
