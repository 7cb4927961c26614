//! The settings in effect: the command line laid over the config file, logging,
//! what `--check-config` prints, and the relay's configuration built from them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use blindrelay_protocol::token::IssuerKeys;
use blindrelay_relay::units::{ByteSize, Span};
use blindrelay_relay::{
    privacy, ConfigFile, Limits, LogFormat, OnOff, PoolConfig, RelayCertificate, RelayConfig,
    TcpListen, DEFAULT_LISTEN,
};
use tracing::{info, warn};

use crate::flags::Args;

/// How long a stopping relay lets running sessions finish, unless configured.
pub(crate) const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The settings in effect, each taken once from where it is given: a flag (or its
/// environment variable, which clap reads as the flag: flag > environment), else the
/// config file, else the default.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) listen: SocketAddr,
    pub(crate) listen_tcp: TcpListen,
    pub(crate) probe_port: Option<u16>,
    pub(crate) public_name: Option<String>,
    pub(crate) admin: Option<SocketAddr>,
    pub(crate) drain_timeout: Duration,
    pub(crate) workers: usize,
    pub(crate) log_format: LogFormat,
    pub(crate) log_full_ip: bool,
    pub(crate) cert_files: Option<(PathBuf, PathBuf)>,
    pub(crate) state_dir: Option<PathBuf>,
    pub(crate) token_issuer_pub: Option<PathBuf>,
    pub(crate) web: bool,
    pub(crate) limits: Limits,
    pub(crate) pool: Option<PoolConfig>,
}

impl Settings {
    /// Lays the command line over the file. Every flag is optional, booleans
    /// included, so a flag can turn off what the file turns on.
    pub(crate) fn merge(args: &Args, file: ConfigFile) -> Result<Self> {
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
            probe_port: args.probe_port.or(file.probe_port),
            public_name: args.public_name.clone().or(file.public_name),
            admin: args.admin.or(file.admin),
            drain_timeout: args
                .drain_timeout
                .or(file.drain_timeout)
                .map_or(DEFAULT_DRAIN_TIMEOUT, |span| span.0),
            workers: args
                .workers
                .or(file.workers)
                .or_else(|| std::thread::available_parallelism().ok())
                .map_or(1, std::num::NonZeroUsize::get),
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

    /// The keys registration tokens must be signed with, when tokens are required.
    pub(crate) fn token_issuers(&self) -> Result<Option<IssuerKeys>> {
        match &self.token_issuer_pub {
            Some(path) => Ok(Some(blindrelay_relay::load_issuer_keys(path)?)),
            None => Ok(None),
        }
    }

    /// What `--check-config` prints: the settings as a config file would set them,
    /// once the certificate files (if any) have been read.
    pub(crate) fn print_check(&self, token_issuers: Option<&IssuerKeys>) -> Result<()> {
        if let Some((cert, key)) = &self.cert_files {
            RelayCertificate::from_pem_files(cert, key)?;
        }
        println!("configuration is valid");
        println!("listen = \"{}\"", self.listen);
        match self.listen_tcp {
            TcpListen::SamePort => println!("listen_tcp = \"same\""),
            TcpListen::At(addr) => println!("listen_tcp = \"{addr}\""),
            TcpListen::Off => println!("listen_tcp = \"off\""),
        }
        match self.probe_port {
            Some(port) => println!("probe_port = {port}"),
            None => {
                println!("# no probe_port: clients cannot tell a NAT that maps per destination")
            }
        }
        println!("drain_timeout = \"{}\"", Span(self.drain_timeout));
        println!("workers = {}", self.workers);
        println!("log_full_ip = {}", self.log_full_ip);
        match &self.state_dir {
            Some(dir) => println!("state_dir = \"{}\"", dir.display()),
            None if self.cert_files.is_none() => {
                println!("# no state_dir: the self-signed certificate changes at every start")
            }
            None => {}
        }
        println!("web = \"{}\"", if self.web { "on" } else { "off" });
        match token_issuers {
            Some(keys) => println!(
                "# registration tokens required ({} issuer keys)",
                keys.keys().len()
            ),
            None => println!("# open: any host may register (no token_issuer_pub)"),
        }
        match &self.pool {
            Some(pool) => println!("# pool member {}", pool.member),
            None => println!("# not in a pool"),
        }
        print_limits(&self.limits)
    }

    /// The relay's configuration, with its certificate: from the files, kept in the
    /// state folder, or made in memory; what an operator should know about the
    /// choice is logged.
    pub(crate) fn relay_config(self, token_issuers: Option<IssuerKeys>) -> Result<RelayConfig> {
        let certificate = match &self.cert_files {
            Some((cert, key)) => RelayCertificate::from_pem_files(cert, key)?,
            None => self.self_signed()?,
        };
        let mut config = RelayConfig::new(self.listen, certificate);
        config.tcp = self.listen_tcp;
        config.probe_port = self.probe_port;
        config.public_name = self.public_name.clone();
        config.limits = self.limits;
        config.admin = self.admin;
        config.pool = self.pool;
        config.web = self.web;
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
        if self.listen.ip().is_unspecified() && self.public_name.is_none() {
            warn!(
                "listening on all interfaces without --public-name: the printed URL uses \
                 loopback; replace its address with one your hosts and players can reach"
            );
        }
        Ok(config)
    }

    /// A self-signed certificate: kept in the state folder, or made in memory.
    fn self_signed(&self) -> Result<RelayCertificate> {
        let name = self
            .public_name
            .clone()
            .unwrap_or_else(|| "localhost".to_owned());
        if let Some(name) = &self.public_name {
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
        let Some(dir) = &self.state_dir else {
            warn!(
                "no certificate given: using a self-signed certificate made in \
                 memory, so the relay's pin and URL change at every start; give \
                 --state-dir DIR to keep one"
            );
            return Ok(RelayCertificate::self_signed(&names)?);
        };
        let kept = RelayCertificate::kept_in(dir, &names)?;
        let dir = dir.display();
        if kept.made {
            info!(%dir, "made a self-signed certificate and kept it: the relay's URL stays the same across restarts");
        } else {
            info!(%dir, "using the self-signed certificate kept from an earlier start");
        }
        Ok(kept.certificate)
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), in `format`. Unless the
/// operator chose full addresses, the libraries that name peers in their detailed
/// logs are held back (see [`privacy::CAPPED_LOG_TARGETS`]).
pub(crate) fn init_logging(format: LogFormat, full_ip: bool) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

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
