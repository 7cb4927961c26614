//! `blindrelayd`: the relay daemon.
//!
//! With no arguments it starts a development relay on 127.0.0.1:4433 with a
//! self-signed certificate made in memory, and prints `relay url: URL` on stdout.
//! `--config FILE` reads a TOML file; every limit in it can also be given as a flag
//! (`[sessions] rate` is `--sessions-rate`), and flags win. Logs go to stderr
//! (`RUST_LOG` filters them).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use blindrelay_relay::units::{ByteSize, Rate, Span};
use blindrelay_relay::{
    privacy, ConfigFile, Limits, LogFormat, MemberSource, OnOff, PoolConfig, PoolFile, Relay,
    RelayCertificate, RelayConfig, TcpListen, DEFAULT_LISTEN,
};
use clap::Parser;
use tracing::{info, warn};

/// The blindrelay relay: pairs hosts and players and forwards end-to-end encrypted
/// sessions it cannot read.
#[derive(Debug, Parser)]
#[command(name = "blindrelayd", version)]
struct Args {
    /// TOML config file (see docs/configuration.md). Flags override its values.
    #[arg(long, value_name = "FILE", env = "BLINDRELAY_CONFIG")]
    config: Option<PathBuf>,

    /// Check the configuration, print the limits in effect, and exit.
    #[arg(long)]
    check_config: bool,

    /// UDP address to listen on [default: 127.0.0.1:4433].
    #[arg(long, env = "BLINDRELAY_LISTEN")]
    listen: Option<SocketAddr>,

    /// TLS-over-TCP listener for hosts and players whose networks block UDP: `same`
    /// (the --listen address, TCP) [default], `off`, or another address.
    #[arg(long, value_name = "ADDR|same|off", env = "BLINDRELAY_LISTEN_TCP")]
    listen_tcp: Option<TcpListen>,

    /// PEM certificate chain (leaf first). Without it, a self-signed certificate is
    /// kept in --state-dir, or made in memory at start.
    #[arg(long, env = "BLINDRELAY_CERT")]
    cert: Option<PathBuf>,

    /// PEM private key of --cert.
    #[arg(long, env = "BLINDRELAY_KEY")]
    key: Option<PathBuf>,

    /// Folder for the relay's self-signed certificate, made on the first start and
    /// reused after, so its pin and URL survive restarts (the only thing the relay
    /// writes). Without it, and without --cert, the certificate is made in memory
    /// and changes at every start.
    #[arg(long, value_name = "DIR", env = "BLINDRELAY_STATE_DIR")]
    state_dir: Option<PathBuf>,

    /// DNS name in the relay URL, for a certificate a public CA issued for that name.
    /// Without it the URL names the listen address and pins the certificate.
    #[arg(long, env = "BLINDRELAY_PUBLIC_NAME")]
    public_name: Option<String>,

    /// TCP address for /metrics, /healthz and /readyz (off unless given). Bind it to
    /// loopback or a private network.
    #[arg(long, value_name = "ADDR", env = "BLINDRELAY_ADMIN")]
    admin: Option<SocketAddr>,

    /// On SIGTERM or Ctrl-C, how long running sessions may go on while the relay
    /// drains [default: 30s]. A second signal stops at once.
    #[arg(long, value_name = "DURATION", env = "BLINDRELAY_DRAIN_TIMEOUT")]
    drain_timeout: Option<Span>,

    /// Log line format [default: text].
    #[arg(long, value_enum, env = "BLINDRELAY_LOG_FORMAT")]
    log_format: Option<LogFormat>,

    /// Log full client IP addresses (`--log-full-ip=false` turns off a config file's
    /// `true`). By default logs carry only their network part (/24, /48), and the
    /// QUIC and TLS libraries, whose detailed logs name peers, are held at warnings.
    #[arg(
        long,
        env = "BLINDRELAY_LOG_FULL_IP",
        value_name = "BOOL",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new(),
    )]
    log_full_ip: Option<bool>,

    /// Require registration tokens signed by a key in FILE (one base32 Ed25519 public
    /// key per line, from `blindrelay token keygen`). Without it any host may register.
    #[arg(long, value_name = "FILE", env = "BLINDRELAY_TOKEN_ISSUER_PUB")]
    token_issuer_pub: Option<PathBuf>,

    /// Serve the web player to browsers at https://<host id>.<relay name>/ on the TCP
    /// listener [default: on]. The certificate must cover *.<relay name> (a
    /// self-signed one does; with --public-name and a CA certificate, ask for the
    /// wildcard).
    #[arg(long, value_name = "on|off", env = "BLINDRELAY_WEB")]
    web: Option<OnOff>,

    #[command(flatten)]
    pool: PoolFlags,

    #[command(flatten)]
    limits: LimitFlags,
}

/// A pool of relays that acts as one (docs/operations.md, "Running a pool").
#[derive(Debug, Default, clap::Args)]
#[command(next_help_heading = "Pool")]
struct PoolFlags {
    /// This relay's name in its pool: host:port as clients reach it (for example
    /// relay-0.relay.example.net:443). Needs a member list.
    #[arg(long, value_name = "HOST:PORT", env = "BLINDRELAY_POOL_MEMBER")]
    pool_member: Option<String>,

    /// Read the pool's members from FILE (one host:port per line), every refresh.
    #[arg(long, value_name = "FILE", env = "BLINDRELAY_POOL_MEMBERS_FILE")]
    pool_members_file: Option<PathBuf>,

    /// Read the pool's members from the SRV records of NAME, every refresh.
    #[arg(long, value_name = "NAME", env = "BLINDRELAY_POOL_MEMBERS_DNS")]
    pool_members_dns: Option<String>,

    /// With --pool-members-dns: name each member by its SRV target's first label
    /// and this domain.
    #[arg(long, value_name = "DOMAIN", env = "BLINDRELAY_POOL_MEMBER_DOMAIN")]
    pool_member_domain: Option<String>,

    /// With --pool-members-dns: ask this DNS server instead of the system's.
    #[arg(long, value_name = "ADDR", env = "BLINDRELAY_POOL_DNS_SERVER")]
    pool_dns_server: Option<SocketAddr>,

    /// How often the member list is read and the members checked [default: 5s].
    #[arg(long, value_name = "DURATION", env = "BLINDRELAY_POOL_REFRESH")]
    pool_refresh: Option<Span>,

    /// Hosts told to move after a change of membership are spread over this long
    /// [default: 3s].
    #[arg(long, value_name = "DURATION", env = "BLINDRELAY_POOL_MOVE_JITTER")]
    pool_move_jitter: Option<Span>,
}

impl PoolFlags {
    /// The pool settings: these flags over the file's `[pool]`; `None` for a relay on
    /// its own.
    fn merge(&self, file: PoolFile) -> Result<Option<PoolConfig>> {
        let member = self.pool_member.clone().or(file.member);
        let members_file = self.pool_members_file.clone().or(file.members_file);
        let members_dns = self.pool_members_dns.clone().or(file.members_dns);
        let source = match (members_file, members_dns) {
            (Some(path), None) => Some(MemberSource::File(path)),
            (None, Some(name)) => Some(MemberSource::Dns {
                name,
                server: self.pool_dns_server.or(file.dns_server),
                member_domain: self.pool_member_domain.clone().or(file.member_domain),
            }),
            (None, None) => None,
            (Some(_), Some(_)) => {
                anyhow::bail!("a pool's members come from a file or from DNS, not both")
            }
        };
        let (member, source) = match (member, source) {
            (Some(member), Some(source)) => (member, source),
            (None, None) => return Ok(None),
            (Some(_), None) => anyhow::bail!(
                "pool member given without a member list: add members_file or members_dns"
            ),
            (None, Some(_)) => anyhow::bail!(
                "pool member list given without this relay's member name: add member \
                 (host:port as clients reach this relay)"
            ),
        };
        let mut config = PoolConfig::new(&member, source)?;
        if let Some(refresh) = self.pool_refresh.or(file.refresh) {
            anyhow::ensure!(
                !refresh.0.is_zero(),
                "the pool refresh must be longer than 0"
            );
            config.refresh = refresh.0;
        }
        if let Some(jitter) = self.pool_move_jitter.or(file.move_jitter) {
            config.move_jitter = jitter.0;
        }
        Ok(Some(config))
    }
}

/// Declares one flag per config key and how it overrides the file's value.
macro_rules! limit_flags {
    ($( $(#[doc = $doc:literal])* $flag:ident : $ty:ty => $section:ident . $key:ident, $env:literal; )*) => {
        /// Limits, each also a key of the config file.
        #[derive(Debug, Default, clap::Args)]
        #[command(next_help_heading = "Limits (0 turns a limit off; see docs/configuration.md)")]
        struct LimitFlags {
            $( $(#[doc = $doc])* #[arg(long, value_name = "VALUE", env = $env)] $flag: Option<$ty>, )*
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
    connections_max: u32 => connections.max, "BLINDRELAY_CONNECTIONS_MAX";
    /// [connections] per_ip: connections open at once per IPv4 address or IPv6 /64.
    connections_per_ip: u32 => connections.per_ip, "BLINDRELAY_CONNECTIONS_PER_IP";
    /// [connections] per_48: connections open at once per IPv6 /48.
    connections_per_48: u32 => connections.per_48, "BLINDRELAY_CONNECTIONS_PER_48";
    /// [connections] new_per_ip_per_s: new connections per second per address.
    connections_new_per_ip_per_s: u32 => connections.new_per_ip_per_s, "BLINDRELAY_CONNECTIONS_NEW_PER_IP_PER_S";
    /// [connections] new_per_ip_burst.
    connections_new_per_ip_burst: u32 => connections.new_per_ip_burst, "BLINDRELAY_CONNECTIONS_NEW_PER_IP_BURST";
    /// [connections] idle_timeout: close a connection without packets this long.
    connections_idle_timeout: Span => connections.idle_timeout, "BLINDRELAY_CONNECTIONS_IDLE_TIMEOUT";
    /// [connections] unregistered_idle_timeout: close a connection with no registration and no session this long.
    connections_unregistered_idle_timeout: Span => connections.unregistered_idle_timeout, "BLINDRELAY_CONNECTIONS_UNREGISTERED_IDLE_TIMEOUT";
    /// [connections] first_message_timeout.
    connections_first_message_timeout: Span => connections.first_message_timeout, "BLINDRELAY_CONNECTIONS_FIRST_MESSAGE_TIMEOUT";
    /// [connections] max_streams: streams a player may have open at once per connection.
    connections_max_streams: u32 => connections.max_streams, "BLINDRELAY_CONNECTIONS_MAX_STREAMS";
    /// [connections] send_window: unacknowledged bytes per connection.
    connections_send_window: ByteSize => connections.send_window, "BLINDRELAY_CONNECTIONS_SEND_WINDOW";
    /// [connections] max_handshakes: TLS handshakes in progress at once.
    connections_max_handshakes: u32 => connections.max_handshakes, "BLINDRELAY_CONNECTIONS_MAX_HANDSHAKES";
    /// [connections] handshake_timeout: abandon a handshake not complete this long.
    connections_handshake_timeout: Span => connections.handshake_timeout, "BLINDRELAY_CONNECTIONS_HANDSHAKE_TIMEOUT";
    /// [connections] max_tcp_handshakes: TLS handshakes in progress at once on the TCP listener.
    connections_max_tcp_handshakes: u32 => connections.max_tcp_handshakes, "BLINDRELAY_CONNECTIONS_MAX_TCP_HANDSHAKES";
    /// [connections] tcp_handshakes_per_ip: TLS handshakes in progress on the TCP listener per address.
    connections_tcp_handshakes_per_ip: u32 => connections.tcp_handshakes_per_ip, "BLINDRELAY_CONNECTIONS_TCP_HANDSHAKES_PER_IP";
    /// [connections] hello_timeout: a TCP connection must send its TLS ClientHello within this.
    connections_hello_timeout: Span => connections.hello_timeout, "BLINDRELAY_CONNECTIONS_HELLO_TIMEOUT";
    /// [connections] retry_threshold: handshakes in progress above which clients must prove their address (0: always).
    connections_retry_threshold: u32 => connections.retry_threshold, "BLINDRELAY_CONNECTIONS_RETRY_THRESHOLD";
    /// [registrations] per_ip_per_s: attempts per second per address (a failed proof costs two).
    registrations_per_ip_per_s: u32 => registrations.per_ip_per_s, "BLINDRELAY_REGISTRATIONS_PER_IP_PER_S";
    /// [registrations] per_ip_burst.
    registrations_per_ip_burst: u32 => registrations.per_ip_burst, "BLINDRELAY_REGISTRATIONS_PER_IP_BURST";
    /// [registrations] per_ip: registrations held at once per address.
    registrations_per_ip: u32 => registrations.per_ip, "BLINDRELAY_REGISTRATIONS_PER_IP";
    /// [registrations] per_48: registrations held at once per IPv6 /48.
    registrations_per_48: u32 => registrations.per_48, "BLINDRELAY_REGISTRATIONS_PER_48";
    /// [sessions] max: sessions open at once.
    sessions_max: u32 => sessions.max, "BLINDRELAY_SESSIONS_MAX";
    /// [sessions] buffer_budget: bytes all session buffers may hold.
    sessions_buffer_budget: ByteSize => sessions.buffer_budget, "BLINDRELAY_SESSIONS_BUFFER_BUDGET";
    /// [sessions] window: the relay's buffer per session and direction.
    sessions_window: ByteSize => sessions.window, "BLINDRELAY_SESSIONS_WINDOW";
    /// [sessions] new_per_ip_per_s: session requests per second per address.
    sessions_new_per_ip_per_s: u32 => sessions.new_per_ip_per_s, "BLINDRELAY_SESSIONS_NEW_PER_IP_PER_S";
    /// [sessions] new_per_ip_burst.
    sessions_new_per_ip_burst: u32 => sessions.new_per_ip_burst, "BLINDRELAY_SESSIONS_NEW_PER_IP_BURST";
    /// [sessions] per_ip: sessions open at once per player address.
    sessions_per_ip: u32 => sessions.per_ip, "BLINDRELAY_SESSIONS_PER_IP";
    /// [sessions] per_ip_per_host: sessions open at once per player address and host.
    sessions_per_ip_per_host: u32 => sessions.per_ip_per_host, "BLINDRELAY_SESSIONS_PER_IP_PER_HOST";
    /// [sessions] per_connection: sessions open at once per player connection.
    sessions_per_connection: u32 => sessions.per_connection, "BLINDRELAY_SESSIONS_PER_CONNECTION";
    /// [sessions] per_48: sessions open at once per IPv6 /48.
    sessions_per_48: u32 => sessions.per_48, "BLINDRELAY_SESSIONS_PER_48";
    /// [sessions] rate: bandwidth per session and direction, e.g. 40Mbit.
    sessions_rate: Rate => sessions.rate, "BLINDRELAY_SESSIONS_RATE";
    /// [sessions] burst.
    sessions_burst: ByteSize => sessions.burst, "BLINDRELAY_SESSIONS_BURST";
    /// [sessions] idle_timeout: end a session that moves no byte this long.
    sessions_idle_timeout: Span => sessions.idle_timeout, "BLINDRELAY_SESSIONS_IDLE_TIMEOUT";
    /// [sessions] stall_timeout: end a session whose reader leaves bytes unread this long.
    sessions_stall_timeout: Span => sessions.stall_timeout, "BLINDRELAY_SESSIONS_STALL_TIMEOUT";
    /// [sessions] max_duration.
    sessions_max_duration: Span => sessions.max_duration, "BLINDRELAY_SESSIONS_MAX_DURATION";
    /// [sessions] max_bytes: per direction.
    sessions_max_bytes: ByteSize => sessions.max_bytes, "BLINDRELAY_SESSIONS_MAX_BYTES";
    /// [sessions] open_host_stream_timeout.
    sessions_open_host_stream_timeout: Span => sessions.open_host_stream_timeout, "BLINDRELAY_SESSIONS_OPEN_HOST_STREAM_TIMEOUT";
    /// [hosts] max_sessions: sessions open at once per host.
    hosts_max_sessions: u32 => hosts.max_sessions, "BLINDRELAY_HOSTS_MAX_SESSIONS";
    /// [hosts] rate: bandwidth of all of a host's sessions, per direction.
    hosts_rate: Rate => hosts.rate, "BLINDRELAY_HOSTS_RATE";
    /// [hosts] burst.
    hosts_burst: ByteSize => hosts.burst, "BLINDRELAY_HOSTS_BURST";
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
    let args = parse_args();
    let file = match &args.config {
        Some(path) => ConfigFile::load(path)?,
        None => ConfigFile::default(),
    };
    let Settings {
        listen,
        listen_tcp,
        public_name,
        admin,
        drain_timeout,
        log_format,
        log_full_ip,
        cert_files,
        state_dir,
        token_issuer_pub,
        web,
        limits,
        pool,
    } = Settings::merge(&args, file)?;
    init_logging(log_format, log_full_ip)?;
    limits.validate()?;

    let token_issuers = match &token_issuer_pub {
        Some(path) => Some(blindrelay_relay::load_issuer_keys(path)?),
        None => None,
    };

    if args.check_config {
        if let Some((cert, key)) = &cert_files {
            RelayCertificate::from_pem_files(cert, key)?;
        }
        println!("configuration is valid");
        println!("listen = \"{listen}\"");
        match listen_tcp {
            TcpListen::SamePort => println!("listen_tcp = \"same\""),
            TcpListen::At(addr) => println!("listen_tcp = \"{addr}\""),
            TcpListen::Off => println!("listen_tcp = \"off\""),
        }
        println!("drain_timeout = \"{}\"", Span(drain_timeout));
        println!("log_full_ip = {log_full_ip}");
        match &state_dir {
            Some(dir) => println!("state_dir = \"{}\"", dir.display()),
            None if cert_files.is_none() => {
                println!("# no state_dir: the self-signed certificate changes at every start")
            }
            None => {}
        }
        println!("web = \"{}\"", if web { "on" } else { "off" });
        match &token_issuers {
            Some(keys) => println!(
                "# registration tokens required ({} issuer keys)",
                keys.keys().len()
            ),
            None => println!("# open: any host may register (no token_issuer_pub)"),
        }
        match &pool {
            Some(pool) => println!("# pool member {}", pool.member),
            None => println!("# not in a pool"),
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
            if let Some(name) = &public_name {
                // A URL without a pin is checked against the web's CAs, which never
                // issued this certificate: every client would refuse the relay.
                warn!(
                    %name,
                    "--public-name with a self-signed certificate: a URL without a pin \
                     will not verify; give --cert/--key from a CA for that name, or drop \
                     --public-name so the URL pins this certificate"
                );
            }
            let names = [name.as_str(), "localhost"];
            match &state_dir {
                Some(dir) => {
                    let kept = RelayCertificate::kept_in(dir, &names)?;
                    let dir = dir.display();
                    if kept.made {
                        info!(%dir, "made a self-signed certificate and kept it: the relay's URL stays the same across restarts");
                    } else {
                        info!(%dir, "using the self-signed certificate kept from an earlier start");
                    }
                    kept.certificate
                }
                None => {
                    warn!(
                        "no certificate given: using a self-signed certificate made in \
                         memory, so the relay's pin and URL change at every start; give \
                         --state-dir DIR to keep one"
                    );
                    RelayCertificate::self_signed(&names)?
                }
            }
        }
    };
    let mut config = RelayConfig::new(listen, certificate);
    config.tcp = listen_tcp;
    config.public_name = public_name.clone();
    config.limits = limits;
    config.admin = admin;
    config.pool = pool;
    config.web = web;

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

    // Listening for the stop signals before the URL is printed: whoever reads the
    // URL may signal at once, and a signal before the handlers would kill the relay
    // instead of draining it.
    let mut stop_signals = StopSignals::listen()?;
    let mut relay = Relay::spawn(config).context("starting the relay")?;
    println!("relay url: {}", relay.url());
    if let Some(addr) = relay.admin_addr() {
        println!("admin: {addr}");
    }

    // Until asked to stop: reload the certificate on SIGHUP or when its files change.
    let mut watch = cert_files
        .as_ref()
        .map(|(cert, key)| FileWatch::new(cert, key));
    let mut poll = tokio::time::interval(CERTIFICATE_POLL);
    let mut hangup = hangup_signal()?;
    loop {
        tokio::select! {
            () = stop_signals.next() => break,
            () = hangup.next() => {
                match &cert_files {
                    Some(files) => reload_certificate(&mut relay, files),
                    None => info!("SIGHUP: no certificate files to reload"),
                }
            }
            _ = poll.tick() => {
                if let (Some(watch), Some(files)) = (watch.as_mut(), &cert_files) {
                    if watch.changed() {
                        info!("certificate files changed");
                        reload_certificate(&mut relay, files);
                    }
                }
            }
        }
    }
    info!("draining: press Ctrl-C again (or send SIGTERM again) to stop at once");
    let closer = relay.closer();
    tokio::select! {
        () = relay.drain(drain_timeout) => {}
        () = stop_signals.next() => {
            info!("stopping at once");
            closer.close_now().await;
        }
    }
    Ok(())
}

/// The command line and environment, with a bad value from an environment variable
/// reported as that variable: clap reads `BLINDRELAY_LISTEN` as `--listen` and
/// would blame a flag that nobody typed.
fn parse_args() -> Args {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    use clap::CommandFactory;
    let err = match Args::try_parse() {
        Ok(args) => return args,
        Err(err) => err,
    };
    let Some(ContextValue::String(arg)) = err.get(ContextKind::InvalidArg) else {
        err.exit()
    };
    if !matches!(
        err.kind(),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation
    ) {
        err.exit()
    }
    // `--listen <LISTEN>` -> `listen`
    let long = arg
        .strip_prefix("--")
        .and_then(|rest| rest.split([' ', '=']).next())
        .unwrap_or_default();
    let command = Args::command();
    let env = command
        .get_arguments()
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_env())
        .map(|env| env.to_string_lossy().into_owned());
    let typed = std::env::args()
        .skip(1)
        .any(|word| word == format!("--{long}") || word.starts_with(&format!("--{long}=")));
    match env {
        Some(env) if !typed && std::env::var_os(&env).is_some() => {
            let text = err.render().to_string().replacen(
                &format!("for '{arg}'"),
                &format!("in the environment variable {env} (read as {arg})"),
                1,
            );
            eprint!("{text}");
            std::process::exit(2);
        }
        _ => err.exit(),
    }
}

/// The settings in effect, each taken once from where it is given: a flag (or its
/// environment variable, which clap reads as the flag: flag > environment), else the
/// config file, else the default.
#[derive(Debug)]
struct Settings {
    listen: SocketAddr,
    listen_tcp: TcpListen,
    public_name: Option<String>,
    admin: Option<SocketAddr>,
    drain_timeout: Duration,
    log_format: LogFormat,
    log_full_ip: bool,
    cert_files: Option<(PathBuf, PathBuf)>,
    state_dir: Option<PathBuf>,
    token_issuer_pub: Option<PathBuf>,
    web: bool,
    limits: Limits,
    pool: Option<PoolConfig>,
}

impl Settings {
    /// Lays the command line over the file. Every flag is optional, booleans
    /// included, so a flag can turn off what the file turns on.
    fn merge(args: &Args, file: ConfigFile) -> Result<Self> {
        let mut limits = file.limits();
        args.limits.apply(&mut limits);
        let cert_files = match (
            args.cert.clone().or(file.cert),
            args.key.clone().or(file.key),
        ) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => anyhow::bail!("a certificate needs both cert and key"),
        };
        Ok(Self {
            listen: args.listen.or(file.listen).unwrap_or(DEFAULT_LISTEN),
            listen_tcp: args
                .listen_tcp
                .or(file.listen_tcp)
                .unwrap_or(TcpListen::SamePort),
            public_name: args.public_name.clone().or(file.public_name),
            admin: args.admin.or(file.admin),
            drain_timeout: args
                .drain_timeout
                .or(file.drain_timeout)
                .map_or(DEFAULT_DRAIN_TIMEOUT, |span| span.0),
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            log_full_ip: args.log_full_ip.or(file.log_full_ip).unwrap_or(false),
            cert_files,
            state_dir: args.state_dir.clone().or(file.state_dir),
            token_issuer_pub: args.token_issuer_pub.clone().or(file.token_issuer_pub),
            web: args.web.or(file.web).is_none_or(OnOff::is_on),
            limits,
            pool: args.pool.merge(file.pool)?,
        })
    }
}

/// How often the certificate files are checked for changes.
const CERTIFICATE_POLL: Duration = Duration::from_secs(10);

/// Loads the certificate files and serves new connections with them; on failure (a
/// file half written, say) keeps the current certificate.
fn reload_certificate(relay: &mut Relay, (cert, key): &(PathBuf, PathBuf)) {
    let loaded = RelayCertificate::from_pem_files(cert, key)
        .and_then(|certificate| relay.reload_certificate(certificate).cloned());
    match loaded {
        Ok(url) => {
            info!(%url, "certificate reloaded; open connections keep theirs");
            println!("relay url: {url}");
        }
        Err(err) => warn!(%err, "certificate not reloaded; keeping the current one"),
    }
}

/// Notices when either certificate file's modification time or size changes.
struct FileWatch {
    files: [PathBuf; 2],
    seen: [Option<(std::time::SystemTime, u64)>; 2],
}

impl FileWatch {
    fn new(cert: &std::path::Path, key: &std::path::Path) -> Self {
        let files = [cert.to_owned(), key.to_owned()];
        let seen = files.clone().map(|file| stamp(&file));
        Self { files, seen }
    }

    fn changed(&mut self) -> bool {
        let now = self.files.clone().map(|file| stamp(&file));
        let changed = now != self.seen;
        self.seen = now;
        changed
    }
}

fn stamp(file: &std::path::Path) -> Option<(std::time::SystemTime, u64)> {
    let meta = std::fs::metadata(file).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// SIGHUP, as a stream of events (never fires where there are no such signals).
struct Hangup(#[cfg(unix)] tokio::signal::unix::Signal);

impl Hangup {
    async fn next(&mut self) {
        #[cfg(unix)]
        {
            if self.0.recv().await.is_some() {
                return;
            }
        }
        std::future::pending::<()>().await
    }
}

fn hangup_signal() -> Result<Hangup> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Hangup(
            signal(SignalKind::hangup()).context("listening for SIGHUP")?,
        ))
    }
    #[cfg(not(unix))]
    {
        Ok(Hangup())
    }
}

/// How long a stopping relay lets running sessions finish, unless configured.
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), in `format`. Unless the
/// operator chose full addresses, the libraries that name peers in their detailed
/// logs are held back (see [`privacy::CAPPED_LOG_TARGETS`]).
fn init_logging(format: LogFormat, full_ip: bool) -> Result<()> {
    privacy::log_full_addresses(full_ip);
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if !full_ip {
        for directive in privacy::CAPPED_LOG_TARGETS {
            filter = filter.add_directive(directive.parse().context("log filter")?);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only where a person reads them, not in files or journals.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
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

/// SIGINT (Ctrl-C) and SIGTERM, listened for from the moment this is made.
struct StopSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn listen() -> Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                interrupt: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
                terminate: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(Self {})
        }
    }

    /// The next stop signal.
    async fn next(&mut self) {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => {}
                _ = self.terminate.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn file(text: &str) -> ConfigFile {
        ConfigFile::parse(text).expect("a valid config file")
    }

    fn merged(flags: &[&str], text: &str) -> Settings {
        let args =
            Args::try_parse_from(std::iter::once("blindrelayd").chain(flags.iter().copied()))
                .expect("valid flags");
        Settings::merge(&args, file(text)).expect("settings")
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Args::command().debug_assert();
    }

    #[test]
    fn a_flag_turns_off_what_the_file_turns_on() {
        let on = "log_full_ip = true\n";
        assert!(merged(&[], on).log_full_ip, "the file alone");
        assert!(!merged(&["--log-full-ip=false"], on).log_full_ip);
        assert!(!merged(&["--log-full-ip=no"], on).log_full_ip);
        assert!(merged(&["--log-full-ip"], "log_full_ip = false\n").log_full_ip);
        assert!(merged(&["--log-full-ip=true"], "").log_full_ip);
        assert!(!merged(&[], "").log_full_ip, "off by default");
        // A bare flag never swallows the next argument as its value.
        let settings = merged(&["--log-full-ip", "--drain-timeout", "5s"], "");
        assert!(settings.log_full_ip);
        assert_eq!(settings.drain_timeout, Duration::from_secs(5));
    }

    #[test]
    fn a_flag_wins_over_the_file_and_the_file_over_the_default() {
        let text =
            "drain_timeout = \"1m\"\nlisten = \"127.0.0.1:5000\"\n[hosts]\nmax_sessions = 3\n";
        let settings = merged(&[], text);
        assert_eq!(settings.drain_timeout, Duration::from_secs(60));
        assert_eq!(settings.listen, "127.0.0.1:5000".parse().expect("address"));
        assert_eq!(settings.limits.hosts.max_sessions, 3);

        let settings = merged(
            &["--drain-timeout", "250ms", "--hosts-max-sessions", "9"],
            text,
        );
        assert_eq!(settings.drain_timeout, Duration::from_millis(250));
        assert_eq!(settings.limits.hosts.max_sessions, 9);
        assert_eq!(settings.listen, "127.0.0.1:5000".parse().expect("address"));

        let settings = merged(&[], "");
        assert_eq!(settings.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
        assert_eq!(settings.listen, DEFAULT_LISTEN);
    }

    #[test]
    fn a_certificate_needs_both_files_from_wherever_they_come() {
        let args = Args::try_parse_from(["blindrelayd", "--cert", "c.pem"]).expect("flags");
        assert!(Settings::merge(&args, file("")).is_err());
        let both = Settings::merge(&args, file("key = \"k.pem\"\n")).expect("settings");
        assert_eq!(
            both.cert_files,
            Some((PathBuf::from("c.pem"), PathBuf::from("k.pem")))
        );
    }

    #[test]
    fn duration_flags_refuse_ambiguous_units() {
        let err = Args::try_parse_from(["blindrelayd", "--sessions-max-duration", "10M"])
            .expect_err("months or minutes?");
        assert!(err.to_string().contains("ms, s, m, h or d"), "{err}");
    }
}
