//! The relay's configuration: what [`Relay::spawn`](crate::Relay::spawn) takes, and
//! the TOML file `blindrelayd --config` reads.
//!
//! The file is strict: an unknown key is an error that names it, and a missing file
//! is an error, never a silent fallback to defaults.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use blindrelay_protocol::{IssuerKeys, RelayUrl};
use serde::Deserialize;

use crate::endpoint::tls::{RelayCertificate, TlsError};
use crate::policy::limits::{
    ConnectionLimits, HostLimits, Limits, RegistrationLimits, SessionLimitsConfig, SharedAddresses,
    TierConfig,
};

/// Default address of a development relay.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 4433);

/// Everything a relay needs to start.
#[derive(Clone)]
#[non_exhaustive]
pub struct RelayConfig {
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// Where the relay listens for TLS over TCP, for hosts and players whose
    /// networks block UDP.
    pub tcp: TcpListen,
    /// A second UDP port on `listen`'s address that answers `Observe` and nothing
    /// else (PROTOCOL.md 10.9), so that clients can tell whether their NAT maps
    /// each destination anew and skip punches that cannot work; 0 picks one. Off
    /// unless given.
    pub probe_port: Option<u16>,
    /// The TLS certificate and key.
    pub certificate: RelayCertificate,
    /// DNS name clients reach the relay by, when its certificate is issued by a public
    /// CA for that name. Without it, the relay's URL pins its certificate instead.
    pub public_name: Option<String>,
    /// Every limit the relay enforces.
    pub limits: Limits,
    /// TCP address of the admin listener (`/metrics`, `/healthz`, `/readyz`); none
    /// unless asked for.
    pub admin: Option<SocketAddr>,
    /// Registration tokens: `Some` admits only hosts with a token signed by one of
    /// these issuer keys; `None` is open mode (any host that proves its key).
    pub token_issuers: Option<IssuerKeys>,
    /// This relay's place in a pool of relays; `None` for a relay on its own.
    pub pool: Option<crate::pool::PoolConfig>,
    /// Whether the TLS listener serves the web player to browsers (at
    /// `https://<host id>.<relay name>/`); the WebSocket transport is served either
    /// way.
    pub web: bool,
}

impl RelayConfig {
    /// A configuration with default limits, listening on `listen` with `certificate`.
    pub fn new(listen: SocketAddr, certificate: RelayCertificate) -> Self {
        Self {
            listen,
            tcp: TcpListen::SamePort,
            probe_port: None,
            certificate,
            public_name: None,
            limits: Limits::default(),
            admin: None,
            token_issuers: None,
            pool: None,
            web: true,
        }
    }

    /// The relay's DNS names, under which each host has its web origin
    /// `<host id>.<name>`: the public name, or `localhost` for a relay without one
    /// (browsers resolve every `*.localhost` to loopback).
    pub(crate) fn web_names(&self) -> Vec<String> {
        match &self.public_name {
            Some(name) => vec![name.to_ascii_lowercase()],
            None => vec!["localhost".to_owned()],
        }
    }

    /// The URL that reaches a relay with this configuration bound at `local_addr`.
    pub(crate) fn url(&self, local_addr: SocketAddr) -> Result<RelayUrl, TlsError> {
        let url = match &self.public_name {
            Some(name) => RelayUrl::new(name, local_addr.port(), None),
            None => {
                // An unspecified address is not something a client can dial; on one
                // machine, loopback reaches it.
                let ip = match local_addr.ip() {
                    ip if !ip.is_unspecified() => ip,
                    IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
                };
                RelayUrl::new(
                    &ip.to_string(),
                    local_addr.port(),
                    Some(self.certificate.pin()),
                )
            }
        };
        url.map_err(|err| TlsError::PublicName(err.to_string()))
    }
}

/// Where the relay listens for TLS over TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpListen {
    /// The UDP listen address, same port number: clients find it from the relay URL
    /// alone. With port 0, both get the same free port.
    SamePort,
    /// Another address, for an operator who maps the relay URL's port to it (a load
    /// balancer or a port forward): clients still dial the URL's port.
    At(SocketAddr),
    /// No TCP listener: QUIC only.
    Off,
}

impl std::str::FromStr for TcpListen {
    type Err = String;

    /// `off`, `same` (the UDP address), or an address.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "off" => Ok(Self::Off),
            "same" => Ok(Self::SamePort),
            addr => addr.parse().map(Self::At).map_err(|_| {
                format!("{addr:?} is not `off`, `same` or an address like 0.0.0.0:443")
            }),
        }
    }
}

impl<'de> Deserialize<'de> for TcpListen {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A switch in the config file and on the command line: `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnOff {
    /// Switched on.
    On,
    /// Switched off.
    Off,
}

impl OnOff {
    /// Whether it is on.
    pub fn is_on(self) -> bool {
        self == Self::On
    }
}

impl std::str::FromStr for OnOff {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            other => Err(format!("{other:?} is not `on` or `off`")),
        }
    }
}

impl<'de> Deserialize<'de> for OnOff {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The config file (see `docs/configuration.md` for every key and its default).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ConfigFile {
    /// UDP address to listen on.
    pub listen: Option<SocketAddr>,
    /// TLS-over-TCP listener: `same` (default), `off`, or an address.
    pub listen_tcp: Option<TcpListen>,
    /// See [`RelayConfig::probe_port`].
    pub probe_port: Option<u16>,
    /// PEM certificate chain.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// Folder that keeps the self-signed certificate across restarts.
    pub state_dir: Option<PathBuf>,
    /// DNS name in the relay URL.
    pub public_name: Option<String>,
    /// TCP address of the admin listener.
    pub admin: Option<SocketAddr>,
    /// How long a stopping relay lets running sessions finish.
    pub drain_timeout: Option<crate::policy::units::Span>,
    /// Threads that run the relay (default: the cores the process may use).
    pub workers: Option<std::num::NonZeroUsize>,
    /// Log line format.
    pub log_format: Option<LogFormat>,
    /// Log full client addresses instead of their network part.
    pub log_full_ip: Option<bool>,
    /// Issuer public key file: when set, hosts need a registration token.
    pub token_issuer_pub: Option<PathBuf>,
    /// Whether the web player is served: `on` (default) or `off`.
    pub web: Option<OnOff>,
    /// `[connections]`.
    #[serde(default)]
    pub connections: ConnectionLimits,
    /// `[registrations]`.
    #[serde(default)]
    pub registrations: RegistrationLimits,
    /// `[sessions]`.
    #[serde(default)]
    pub sessions: SessionLimitsConfig,
    /// `[hosts]`.
    #[serde(default)]
    pub hosts: HostLimits,
    /// `[shared_addresses]`.
    #[serde(default)]
    pub shared_addresses: SharedAddresses,
    /// `[tiers.NAME]`.
    #[serde(default)]
    pub tiers: BTreeMap<String, TierConfig>,
    /// `[host_tiers]`.
    #[serde(default)]
    pub host_tiers: BTreeMap<String, String>,
    /// `[pool]`.
    #[serde(default)]
    pub pool: PoolFile,
}

/// The `[pool]` table: this relay's place in a pool of relays.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct PoolFile {
    /// This relay's member name, `host:port` as clients reach it.
    pub member: Option<String>,
    /// A file listing the members, one `host:port` per line.
    pub members_file: Option<PathBuf>,
    /// A DNS name whose SRV records list the members.
    pub members_dns: Option<String>,
    /// With `members_dns`: members are named by their SRV target's first label and
    /// this domain.
    pub member_domain: Option<String>,
    /// With `members_dns`: the DNS server to ask instead of the system's.
    pub dns_server: Option<SocketAddr>,
    /// How often the list is read and the members probed.
    pub refresh: Option<crate::policy::units::Span>,
    /// Over how long hosts told to move are spread.
    pub move_jitter: Option<crate::policy::units::Span>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Why a config file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has a key or value the relay does not know.
    #[error("invalid config file {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong and where.
        message: String,
    },
}

impl ConfigFile {
    /// Reads and parses `path`. Relative file names in it (`cert`, `key`,
    /// `state_dir`, `token_issuer_pub`) are taken from the file's own folder, as a person who
    /// writes `cert = "relay.crt"` next to the certificate means, not from whatever
    /// directory the relay happens to be started in.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut file = Self::parse(&text).map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        let base = path.parent().unwrap_or(Path::new(""));
        for file_name in [
            &mut file.cert,
            &mut file.key,
            &mut file.state_dir,
            &mut file.token_issuer_pub,
            &mut file.pool.members_file,
        ]
        .into_iter()
        .flatten()
        {
            if file_name.is_relative() {
                *file_name = base.join(&*file_name);
            }
        }
        Ok(file)
    }

    /// Parses the text of a config file.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|err| {
            let message = err.to_string();
            // `listen = 127.0.0.1:4433` reads to TOML as a broken number.
            if message.contains("invalid float") || message.contains("invalid number") {
                format!(
                    "{message}\naddresses, sizes, rates and durations are TOML strings: \
                     put them in quotes (listen = \"127.0.0.1:4433\", drain_timeout = \"30s\")"
                )
            } else {
                message
            }
        })
    }

    /// The limits the file sets (defaults for what it leaves out).
    pub fn limits(&self) -> Limits {
        Limits {
            connections: self.connections.clone(),
            registrations: self.registrations.clone(),
            sessions: self.sessions.clone(),
            hosts: self.hosts.clone(),
            shared_addresses: self.shared_addresses.clone(),
            tiers: self.tiers.clone(),
            host_tiers: self.host_tiers.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_without_quotes_is_told_to_take_them() {
        let err = ConfigFile::parse("listen = 127.0.0.1:4433\n").unwrap_err();
        assert!(err.contains("put them in quotes"), "{err}");
        let err = ConfigFile::parse("drain_timeout = 30 s\n").unwrap_err();
        assert!(!err.is_empty());
        assert!(ConfigFile::parse("listen = \"127.0.0.1:4433\"\n").is_ok());
    }

    #[test]
    fn a_full_file_parses() {
        let file = ConfigFile::parse(
            r#"
            listen = "0.0.0.0:4433"
            public_name = "relay.example.net"
            token_issuer_pub = "/etc/blindrelay/issuer.pub"
            [connections]
            max = 100
            [sessions]
            rate = "2Mbit"
            [hosts]
            rate = "20Mbit"
            "#,
        )
        .expect("valid");
        assert_eq!(file.listen, Some("0.0.0.0:4433".parse().expect("addr")));
        assert_eq!(
            file.token_issuer_pub.as_deref(),
            Some(Path::new("/etc/blindrelay/issuer.pub"))
        );
        let limits = file.limits();
        assert_eq!(limits.connections.max, 100);
        assert_eq!(limits.sessions.rate.0, 250_000);
        assert_eq!(limits.hosts.rate.0, 2_500_000);
        assert_eq!(limits.registrations, RegistrationLimits::default());
    }

    #[test]
    fn unknown_keys_and_sections_are_named() {
        let err = ConfigFile::parse("lisen = \"0.0.0.0:1\"").expect_err("refused");
        assert!(err.contains("lisen"), "{err}");
        let err = ConfigFile::parse("[session]\nrate = 1").expect_err("refused");
        assert!(err.contains("session"), "{err}");
    }

    /// The first TOML block after `heading` in docs/configuration.md.
    fn documented_block(heading: &str) -> &'static str {
        let doc = include_str!("../../docs/configuration.md");
        doc.split(heading)
            .nth(1)
            .and_then(|section| section.split("```toml\n").nth(1))
            .and_then(|rest| rest.split("```").next())
            .unwrap_or_else(|| panic!("a toml block under {heading:?}"))
    }

    /// The documented defaults are the defaults: the reference's example file parses
    /// to exactly what the code uses.
    #[test]
    fn the_documented_defaults_are_the_defaults() {
        let block = documented_block("## Every key, with its default");
        let file = ConfigFile::parse(block).expect("the documented file parses");
        assert_eq!(file.listen, Some(DEFAULT_LISTEN));
        assert_eq!(file.web, Some(OnOff::On));
        assert!(
            RelayConfig::new(
                DEFAULT_LISTEN,
                RelayCertificate::self_signed(&["localhost"]).expect("certificate")
            )
            .web
        );
        assert_eq!(file.limits(), Limits::default());
    }

    #[test]
    fn the_documented_tier_example_is_valid() {
        let block = documented_block("### Bandwidth tiers");
        let limits = ConfigFile::parse(block).expect("parses").limits();
        limits.validate().expect("valid");
        assert_eq!(limits.tiers.len(), 2);
        assert_eq!(limits.host_tiers.len(), 1);
    }

    #[test]
    fn relative_file_names_are_taken_from_the_config_files_folder() {
        let dir = std::env::temp_dir().join(format!("br-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("relay.toml");
        std::fs::write(
            &path,
            "cert = \"relay.crt\"\nkey = \"keys/relay.key\"\n\
             token_issuer_pub = \"/etc/blindrelay/issuer.key.pub\"\n",
        )
        .expect("write");
        let file = ConfigFile::load(&path).expect("loads");
        assert_eq!(file.cert, Some(dir.join("relay.crt")));
        assert_eq!(file.key, Some(dir.join("keys/relay.key")));
        assert_eq!(
            file.token_issuer_pub.as_deref(),
            Some(Path::new("/etc/blindrelay/issuer.key.pub")),
            "absolute names stay as written"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let err =
            ConfigFile::load(Path::new("/nonexistent/blindrelayd.toml")).expect_err("refused");
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
    }

    #[test]
    fn a_probe_port_is_a_port_number() {
        let parse = |text: &str| ConfigFile::parse(text).map(|file| file.probe_port);
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("probe_port = 4434"), Ok(Some(4434)));
        assert!(parse("probe_port = 70000").is_err());
        assert!(parse("probe_port = \"127.0.0.1:4434\"").is_err());
    }

    #[test]
    fn the_tcp_listener_is_the_udp_port_by_default_and_can_move_or_go() {
        let parse = |text: &str| ConfigFile::parse(text).map(|file| file.listen_tcp);
        assert_eq!(parse(""), Ok(None));
        assert_eq!(
            parse("listen_tcp = \"same\""),
            Ok(Some(TcpListen::SamePort))
        );
        assert_eq!(parse("listen_tcp = \"off\""), Ok(Some(TcpListen::Off)));
        assert_eq!(
            parse("listen_tcp = \"0.0.0.0:443\""),
            Ok(Some(TcpListen::At("0.0.0.0:443".parse().expect("addr"))))
        );
        let err = parse("listen_tcp = \"443\"").expect_err("refused");
        assert!(err.contains("not `off`, `same` or an address"), "{err}");
    }

    #[tokio::test]
    async fn a_relay_listens_on_tcp_at_its_udp_port_unless_told_not_to() {
        let certificate = RelayCertificate::self_signed(&["localhost"]).expect("certificate");
        let config = RelayConfig::new("127.0.0.1:0".parse().expect("addr"), certificate.clone());
        let relay = crate::Relay::spawn(config).expect("relay starts");
        let tcp = relay.tcp_addr().expect("a TCP listener");
        assert_eq!(tcp.port(), relay.local_addr().port());
        assert!(tokio::net::TcpStream::connect(tcp).await.is_ok());

        let mut config = RelayConfig::new("127.0.0.1:0".parse().expect("addr"), certificate);
        config.tcp = TcpListen::Off;
        let relay = crate::Relay::spawn(config).expect("relay starts");
        assert_eq!(relay.tcp_addr(), None);
    }
}
