//! `blindrelayd`: the relay daemon.
//!
//! With no arguments it starts a development relay on 127.0.0.1:4433 with a
//! self-signed certificate made in memory, and prints `relay url: URL` on stdout.
//! `--config FILE` reads a TOML file; every limit in it can also be given as a flag
//! (`[sessions] rate` is `--sessions-rate`), and flags win. Logs go to stderr
//! (`RUST_LOG` filters them).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use blindrelay_relay::units::{ByteSize, Rate, Span};
use blindrelay_relay::{ConfigFile, Limits, Relay, RelayCertificate, RelayConfig, DEFAULT_LISTEN};
use clap::Parser;
use tracing::{info, warn};

/// The blindrelay relay: pairs hosts and players and forwards end-to-end encrypted
/// sessions it cannot read.
#[derive(Debug, Parser)]
#[command(name = "blindrelayd", version)]
struct Args {
    /// TOML config file (see docs/configuration.md). Flags override its values.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Check the configuration, print the limits in effect, and exit.
    #[arg(long)]
    check_config: bool,

    /// UDP address to listen on [default: 127.0.0.1:4433].
    #[arg(long)]
    listen: Option<SocketAddr>,

    /// PEM certificate chain (leaf first). Without it, a self-signed certificate is
    /// made in memory at start.
    #[arg(long)]
    cert: Option<PathBuf>,

    /// PEM private key of --cert.
    #[arg(long)]
    key: Option<PathBuf>,

    /// DNS name in the relay URL, for a certificate a public CA issued for that name.
    /// Without it the URL names the listen address and pins the certificate.
    #[arg(long)]
    public_name: Option<String>,

    /// Require registration tokens signed by a key in FILE (one base32 Ed25519 public
    /// key per line, from `blindrelay token keygen`). Without it any host may register.
    #[arg(long, value_name = "FILE")]
    token_issuer_pub: Option<PathBuf>,

    #[command(flatten)]
    limits: LimitFlags,
}

/// Declares one flag per config key and how it overrides the file's value.
macro_rules! limit_flags {
    ($( $(#[doc = $doc:literal])* $flag:ident : $ty:ty => $section:ident . $key:ident, )*) => {
        /// Limits, each also a key of the config file.
        #[derive(Debug, Default, clap::Args)]
        #[command(next_help_heading = "Limits (0 turns a limit off; see docs/configuration.md)")]
        struct LimitFlags {
            $( $(#[doc = $doc])* #[arg(long, value_name = "VALUE")] $flag: Option<$ty>, )*
        }

        impl LimitFlags {
            fn apply(&self, limits: &mut Limits) {
                $( if let Some(value) = self.$flag { limits.$section.$key = value; } )*
            }
        }
    };
}

limit_flags! {
    /// [connections] max: connections open at once.
    connections_max: u32 => connections.max,
    /// [connections] per_ip: connections open at once per IPv4 address or IPv6 /64.
    connections_per_ip: u32 => connections.per_ip,
    /// [connections] new_per_ip_per_s: new connections per second per address.
    connections_new_per_ip_per_s: u32 => connections.new_per_ip_per_s,
    /// [connections] new_per_ip_burst.
    connections_new_per_ip_burst: u32 => connections.new_per_ip_burst,
    /// [connections] idle_timeout: close a connection without packets this long.
    connections_idle_timeout: Span => connections.idle_timeout,
    /// [connections] unregistered_idle_timeout: close a connection with no registration and no session this long.
    connections_unregistered_idle_timeout: Span => connections.unregistered_idle_timeout,
    /// [connections] first_message_timeout.
    connections_first_message_timeout: Span => connections.first_message_timeout,
    /// [connections] max_streams: streams open at once per connection.
    connections_max_streams: u32 => connections.max_streams,
    /// [connections] send_window: unacknowledged bytes per connection.
    connections_send_window: ByteSize => connections.send_window,
    /// [registrations] per_ip_per_s: attempts per second per address (a failed proof costs two).
    registrations_per_ip_per_s: u32 => registrations.per_ip_per_s,
    /// [registrations] per_ip_burst.
    registrations_per_ip_burst: u32 => registrations.per_ip_burst,
    /// [sessions] max: sessions open at once.
    sessions_max: u32 => sessions.max,
    /// [sessions] buffer_budget: bytes all session buffers may hold.
    sessions_buffer_budget: ByteSize => sessions.buffer_budget,
    /// [sessions] window: the relay's buffer per session and direction.
    sessions_window: ByteSize => sessions.window,
    /// [sessions] new_per_ip_per_s: session requests per second per address.
    sessions_new_per_ip_per_s: u32 => sessions.new_per_ip_per_s,
    /// [sessions] new_per_ip_burst.
    sessions_new_per_ip_burst: u32 => sessions.new_per_ip_burst,
    /// [sessions] rate: bandwidth per session and direction, e.g. 40Mbit.
    sessions_rate: Rate => sessions.rate,
    /// [sessions] burst.
    sessions_burst: ByteSize => sessions.burst,
    /// [sessions] idle_timeout: end a session that moves no byte this long.
    sessions_idle_timeout: Span => sessions.idle_timeout,
    /// [sessions] stall_timeout: end a session whose reader leaves bytes unread this long.
    sessions_stall_timeout: Span => sessions.stall_timeout,
    /// [sessions] max_duration.
    sessions_max_duration: Span => sessions.max_duration,
    /// [sessions] max_bytes: per direction.
    sessions_max_bytes: ByteSize => sessions.max_bytes,
    /// [sessions] open_host_stream_timeout.
    sessions_open_host_stream_timeout: Span => sessions.open_host_stream_timeout,
    /// [hosts] max_sessions: sessions open at once per host.
    hosts_max_sessions: u32 => hosts.max_sessions,
    /// [hosts] rate: bandwidth of all of a host's sessions, per direction.
    hosts_rate: Rate => hosts.rate,
    /// [hosts] burst.
    hosts_burst: ByteSize => hosts.burst,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only where a person reads them, not in files or journals.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();

    let file = match &args.config {
        Some(path) => ConfigFile::load(path)?,
        None => ConfigFile::default(),
    };
    let mut limits = file.limits();
    args.limits.apply(&mut limits);
    limits.validate().map_err(anyhow::Error::msg)?;
    let listen = args.listen.or(file.listen).unwrap_or(DEFAULT_LISTEN);
    let public_name = args.public_name.clone().or(file.public_name.clone());
    let cert_files = match (args.cert.or(file.cert), args.key.or(file.key)) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => anyhow::bail!("a certificate needs both cert and key"),
    };

    let token_issuers = match args
        .token_issuer_pub
        .as_ref()
        .or(file.token_issuer_pub.as_ref())
    {
        Some(path) => Some(blindrelay_relay::load_issuer_keys(path)?),
        None => None,
    };

    if args.check_config {
        if let Some((cert, key)) = &cert_files {
            RelayCertificate::from_pem_files(cert, key)?;
        }
        println!("configuration is valid");
        println!("listen = \"{listen}\"");
        match &token_issuers {
            Some(keys) => println!(
                "# registration tokens required ({} issuer keys)",
                keys.keys().len()
            ),
            None => println!("# open: any host may register (no token_issuer_pub)"),
        }
        print_limits(&limits)?;
        return Ok(());
    }

    let certificate = match &cert_files {
        Some((cert, key)) => RelayCertificate::from_pem_files(cert, key)?,
        None => {
            let name = public_name
                .clone()
                .unwrap_or_else(|| "localhost".to_owned());
            info!("no certificate given: using a self-signed certificate made in memory");
            RelayCertificate::self_signed(&[name.as_str(), "localhost"])?
        }
    };
    let mut config = RelayConfig::new(listen, certificate);
    config.public_name = public_name.clone();
    config.limits = limits;
    match &token_issuers {
        Some(keys) => info!(
            issuer_keys = keys.keys().len(),
            "registration tokens required"
        ),
        None => warn!(
            "OPEN RELAY: any host that holds its key may register and use this relay's \
             bandwidth; give --token-issuer-pub FILE (or token_issuer_pub) to require \
             registration tokens"
        ),
    }
    config.token_issuers = token_issuers;
    if listen.ip().is_unspecified() && public_name.is_none() {
        warn!(
            "listening on all interfaces without --public-name: the printed URL uses \
             loopback; replace its address with one your hosts and players can reach"
        );
    }

    let relay = Relay::spawn(config).context("starting the relay")?;
    println!("relay url: {}", relay.url());

    shutdown_signal().await;
    info!("shutting down");
    relay.shutdown().await;
    Ok(())
}

/// Prints the limits in effect as a config file would set them.
fn print_limits(limits: &Limits) -> Result<()> {
    print!(
        "{}",
        toml::to_string(limits).context("printing the limits")?
    );
    println!(
        "# each session reserves {} of the buffer budget",
        ByteSize(limits.session_buffer())
    );
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
