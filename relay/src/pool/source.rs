//! Where the member list comes from: a file, or DNS SRV records.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tracing::warn;

use super::{member_name, MemberSource, MAX_MEMBERS};

/// Why the member list could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SourceError {
    #[error("member file: {0}")]
    File(#[from] std::io::Error),
    #[error("DNS: {0}")]
    Dns(#[from] hickory_resolver::ResolveError),
    #[error("the list names {0} members, more than {MAX_MEMBERS}")]
    TooMany(usize),
}

/// The member list's source, ready to read.
pub(crate) enum Source {
    File(PathBuf),
    Dns {
        name: String,
        resolver: Box<hickory_resolver::TokioResolver>,
        member_domain: Option<String>,
    },
}

impl Source {
    pub(crate) fn new(source: &MemberSource) -> Self {
        match source {
            MemberSource::File(path) => Self::File(path.clone()),
            MemberSource::Dns {
                name,
                server,
                member_domain,
            } => Self::Dns {
                name: name.clone(),
                resolver: Box::new(resolver(*server)),
                member_domain: member_domain.clone(),
            },
        }
    }

    /// The listed member names, canonical; names that are not `host:port` are
    /// skipped with a warning.
    pub(crate) async fn read(&self) -> Result<Vec<String>, SourceError> {
        let names: Vec<String> = match self {
            Self::File(path) => {
                // A small file, read at each refresh: blocking briefly is cheaper than a
                // thread hop.
                let text = std::fs::read_to_string(path)?;
                text.lines()
                    .map(|line| line.split('#').next().unwrap_or("").trim())
                    .filter(|line| !line.is_empty())
                    .map(str::to_owned)
                    .collect()
            }
            Self::Dns {
                name,
                resolver,
                member_domain,
            } => {
                let records = resolver.srv_lookup(name.as_str()).await?;
                records
                    .iter()
                    .map(|srv| {
                        let target = srv.target().to_ascii();
                        let target = target.trim_end_matches('.');
                        let host = match member_domain {
                            Some(domain) => {
                                let label = target.split('.').next().unwrap_or(target);
                                format!("{label}.{}", domain.trim_matches('.'))
                            }
                            None => target.to_owned(),
                        };
                        format!("{host}:{}", srv.port())
                    })
                    .collect()
            }
        };
        if names.len() > MAX_MEMBERS {
            return Err(SourceError::TooMany(names.len()));
        }
        let mut members = Vec::with_capacity(names.len());
        for name in names {
            match member_name(&name) {
                Ok(member) => members.push(member),
                Err(err) => warn!(%err, "skipping a pool member"),
            }
        }
        Ok(members)
    }
}

/// A resolver that asks `server` (or the system's servers) and caches nothing: the
/// list must follow membership, not a TTL.
fn resolver(server: Option<SocketAddr>) -> hickory_resolver::TokioResolver {
    use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
    use hickory_resolver::name_server::TokioConnectionProvider;
    let provider = TokioConnectionProvider::default();
    let mut builder = match server {
        Some(server) => {
            let servers =
                NameServerConfigGroup::from_ips_clear(&[server.ip()], server.port(), true);
            hickory_resolver::Resolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], servers),
                provider,
            )
        }
        None => hickory_resolver::Resolver::builder_tokio().unwrap_or_else(|err| {
            warn!(%err, "cannot read the system's resolver configuration; using its defaults");
            hickory_resolver::Resolver::builder_with_config(ResolverConfig::default(), provider)
        }),
    };
    builder.options_mut().cache_size = 0;
    builder.options_mut().timeout = Duration::from_secs(2);
    builder.options_mut().attempts = 2;
    builder.build()
}
