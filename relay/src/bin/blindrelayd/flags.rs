//! The command line: every setting as a flag (and its environment variable), the
//! limits one flag per config key, and errors that name the variable a bad value
//! came from.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;
use blindrelay_relay::units::{ByteSize, Rate, Span};
use blindrelay_relay::{Limits, LogFormat, MemberSource, OnOff, PoolConfig, PoolFile, TcpListen};
use clap::Parser;

/// The blindrelay relay: pairs hosts and players and forwards end-to-end encrypted
/// sessions it cannot read.
#[derive(Debug, Parser)]
#[command(name = "blindrelayd", version)]
pub(crate) struct Args {
    /// TOML config file (see docs/configuration.md). Flags override its values.
    #[arg(long, value_name = "FILE", env = "BLINDRELAY_CONFIG")]
    pub(crate) config: Option<PathBuf>,

    /// Check the configuration, print the limits in effect, and exit.
    #[arg(long)]
    pub(crate) check_config: bool,

    /// UDP address to listen on [default: 127.0.0.1:4433].
    #[arg(long, env = "BLINDRELAY_LISTEN")]
    pub(crate) listen: Option<SocketAddr>,

    /// TLS-over-TCP listener for hosts and players whose networks block UDP: `same`
    /// (the --listen address, TCP) [default], `off`, or another address.
    #[arg(long, value_name = "ADDR|same|off", env = "BLINDRELAY_LISTEN_TCP")]
    pub(crate) listen_tcp: Option<TcpListen>,

    /// A second UDP port on the --listen address that only says which address a
    /// client comes from, so that clients behind NATs that map each destination
    /// anew skip hole punches that cannot work (off unless given).
    #[arg(long, value_name = "PORT", env = "BLINDRELAY_PROBE_PORT")]
    pub(crate) probe_port: Option<u16>,

    /// PEM certificate chain (leaf first). Without it, a self-signed certificate is
    /// kept in --state-dir, or made in memory at start.
    #[arg(long, env = "BLINDRELAY_CERT")]
    pub(crate) cert: Option<PathBuf>,

    /// PEM private key of --cert.
    #[arg(long, env = "BLINDRELAY_KEY")]
    pub(crate) key: Option<PathBuf>,

    /// Folder for the relay's self-signed certificate, made on the first start and
    /// reused after, so its pin and URL survive restarts (the only thing the relay
    /// writes). Without it, and without --cert, the certificate is made in memory
    /// and changes at every start.
    #[arg(long, value_name = "DIR", env = "BLINDRELAY_STATE_DIR")]
    pub(crate) state_dir: Option<PathBuf>,

    /// DNS name in the relay URL, for a certificate a public CA issued for that name.
    /// Without it the URL names the listen address and pins the certificate.
    #[arg(long, env = "BLINDRELAY_PUBLIC_NAME")]
    pub(crate) public_name: Option<String>,

    /// TCP address for /metrics, /healthz and /readyz (off unless given). Bind it to
    /// loopback or a private network.
    #[arg(long, value_name = "ADDR", env = "BLINDRELAY_ADMIN")]
    pub(crate) admin: Option<SocketAddr>,

    /// On SIGTERM or Ctrl-C, how long running sessions may go on while the relay
    /// drains [default: 30s]. A second signal stops at once.
    #[arg(long, value_name = "DURATION", env = "BLINDRELAY_DRAIN_TIMEOUT")]
    pub(crate) drain_timeout: Option<Span>,

    /// Threads that run the relay: connections, sessions and their encryption spread
    /// over them [default: the cores this process may use, as its CPU affinity and
    /// cgroup quota allow].
    #[arg(long, value_name = "N", env = "BLINDRELAY_WORKERS")]
    pub(crate) workers: Option<std::num::NonZeroUsize>,

    /// Log line format [default: text].
    #[arg(long, value_enum, env = "BLINDRELAY_LOG_FORMAT")]
    pub(crate) log_format: Option<LogFormat>,

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
    pub(crate) log_full_ip: Option<bool>,

    /// Require registration tokens signed by a key in FILE (one base32 Ed25519 public
    /// key per line, from `blindrelay token keygen`). Without it any host may register.
    #[arg(long, value_name = "FILE", env = "BLINDRELAY_TOKEN_ISSUER_PUB")]
    pub(crate) token_issuer_pub: Option<PathBuf>,

    /// Serve the web player to browsers at https://<host id>.<relay name>/ on the TCP
    /// listener [default: on]. The certificate must cover *.<relay name> (a
    /// self-signed one does; with --public-name and a CA certificate, ask for the
    /// wildcard).
    #[arg(long, value_name = "on|off", env = "BLINDRELAY_WEB")]
    pub(crate) web: Option<OnOff>,

    #[command(flatten)]
    pub(crate) pool: PoolFlags,

    #[command(flatten)]
    pub(crate) limits: LimitFlags,
}

/// A pool of relays that acts as one (docs/operations.md, "Running a pool").
#[derive(Debug, Default, clap::Args)]
#[command(next_help_heading = "Pool")]
pub(crate) struct PoolFlags {
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
    pub(crate) fn merge(&self, file: PoolFile) -> Result<Option<PoolConfig>> {
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
        pub(crate) struct LimitFlags {
            $( $(#[doc = $doc])* #[arg(long, value_name = "VALUE", env = $env)] $flag: Option<$ty>, )*
        }

        impl LimitFlags {
            pub(crate) fn apply(&self, limits: &mut Limits) {
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

/// The command line and environment, with a bad value from an environment variable
/// reported as that variable: clap reads `BLINDRELAY_LISTEN` as `--listen` and
/// would blame a flag that nobody typed.
pub(crate) fn parse_args() -> Args {
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
