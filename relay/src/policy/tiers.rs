//! Tiers: different bandwidth and session limits for different hosts.
//!
//! The `[sessions]` and `[hosts]` sections of the config are the default tier. A
//! `[tiers.NAME]` section overrides any of their per-host values for the hosts put in
//! that tier, and `[host_tiers]` puts host ids in tiers. A registration token names
//! its host's tier too, and the token's tier wins (see `crate::policy::token_issuers`). A relay can
//! so cap strangers at what Plex's relay allows and let its owner's friends stream 4K.

use std::collections::{BTreeMap, HashMap};
use std::num::{NonZeroU32, NonZeroU64};
use std::sync::Arc;
use std::time::Duration;

use blindrelay_protocol::{HostId, SessionLimits};

use crate::policy::limits::{Limits, TierConfig, TiersError, DEFAULT_TIER};

/// The limits one host and its sessions run under, resolved from the configuration:
/// a limit that is off is `None` here, never a zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tier {
    pub name: String,
    pub session_rate: u64,
    pub session_burst: u64,
    pub max_duration: Option<Duration>,
    pub max_bytes: Option<NonZeroU64>,
    pub host_rate: u64,
    pub host_burst: u64,
    pub host_max_sessions: Option<NonZeroU32>,
    /// Relay-wide, the same in every tier; here so a session's announcement is
    /// built from one place.
    pub idle_timeout: Option<Duration>,
    pub stall_timeout: Option<Duration>,
}

impl Tier {
    fn resolve(name: &str, limits: &Limits, config: &TierConfig) -> Self {
        let s = &limits.sessions;
        let h = &limits.hosts;
        Self {
            name: name.to_owned(),
            session_rate: config.session_rate.unwrap_or(s.rate).0,
            session_burst: config.session_burst.unwrap_or(s.burst).0,
            max_duration: limit(config.max_duration.unwrap_or(s.max_duration).0),
            max_bytes: NonZeroU64::new(config.max_bytes.unwrap_or(s.max_bytes).0),
            host_rate: config.host_rate.unwrap_or(h.rate).0,
            host_burst: config.host_burst.unwrap_or(h.burst).0,
            host_max_sessions: NonZeroU32::new(config.host_max_sessions.unwrap_or(h.max_sessions)),
            idle_timeout: limit(s.idle_timeout.0),
            stall_timeout: limit(s.stall_timeout.0),
        }
    }

    /// What a session of this tier is told when it opens.
    pub(crate) fn announced(&self) -> SessionLimits {
        // On the wire, 0 is "no limit".
        let secs = |duration: Option<Duration>| {
            duration.map_or(0, |duration| {
                u32::try_from(duration.as_secs()).unwrap_or(u32::MAX)
            })
        };
        SessionLimits {
            rate: self.session_rate,
            host_rate: self.host_rate,
            max_bytes: self.max_bytes.map_or(0, NonZeroU64::get),
            max_duration_secs: secs(self.max_duration),
            idle_timeout_secs: secs(self.idle_timeout),
            stall_timeout_secs: secs(self.stall_timeout),
        }
    }
}

/// A duration limit as the configuration writes it (zero is off), resolved.
fn limit(duration: Duration) -> Option<Duration> {
    (!duration.is_zero()).then_some(duration)
}

/// Every tier, and which host is in which.
#[derive(Debug)]
pub(crate) struct Tiers {
    default: Arc<Tier>,
    by_host: HashMap<HostId, Arc<Tier>>,
    by_name: HashMap<String, Arc<Tier>>,
}

impl Tiers {
    /// Resolves the tiers of `limits`, which [`Limits::validate`] has accepted.
    pub(crate) fn new(limits: &Limits) -> Result<Self, TiersError> {
        let default = Arc::new(Tier::resolve(DEFAULT_TIER, limits, &TierConfig::default()));
        let named: BTreeMap<&str, Arc<Tier>> = limits
            .tiers
            .iter()
            .map(|(name, config)| (name.as_str(), Arc::new(Tier::resolve(name, limits, config))))
            .collect();
        let mut by_host = HashMap::new();
        for (host_id, tier) in limits.host_tiers()? {
            let tier = named.get(tier).cloned().unwrap_or_else(|| default.clone());
            by_host.insert(host_id, tier);
        }
        let mut by_name: HashMap<String, Arc<Tier>> = named
            .into_iter()
            .map(|(name, tier)| (name.to_owned(), tier))
            .collect();
        by_name
            .entry(DEFAULT_TIER.to_owned())
            .or_insert_with(|| default.clone());
        Ok(Self {
            default,
            by_host,
            by_name,
        })
    }

    /// The tier called `name` (`default` included), as a registration token names it.
    pub(crate) fn named(&self, name: &str) -> Option<Arc<Tier>> {
        self.by_name.get(name).cloned()
    }

    /// The tier of `host_id`.
    pub(crate) fn of(&self, host_id: &HostId) -> Arc<Tier> {
        self.by_host.get(host_id).unwrap_or(&self.default).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blindrelay_protocol::SecretKey;

    #[test]
    fn a_tier_overrides_only_what_it_names() {
        let key = SecretKey::generate().expect("key");
        let text = format!(
            "[sessions]\nrate = \"100Mbit\"\nmax_bytes = \"1GiB\"\n\
             [tiers.free]\nsession_rate = \"2Mbit\"\nhost_max_sessions = 2\n\
             [host_tiers]\n\"{}\" = \"free\"\n",
            key.host_id()
        );
        let limits: Limits = toml::from_str(&text).expect("valid");
        let tiers = Tiers::new(&limits).expect("resolves");
        let free = tiers.of(&key.host_id());
        assert_eq!(free.name, "free");
        assert_eq!(free.session_rate, 250_000);
        assert_eq!(free.host_max_sessions, NonZeroU32::new(2));
        assert_eq!(
            free.max_bytes,
            NonZeroU64::new(1 << 30),
            "kept from [sessions]"
        );
        let stranger = SecretKey::generate().expect("key").host_id();
        let default = tiers.of(&stranger);
        assert_eq!(default.name, DEFAULT_TIER);
        assert_eq!(default.session_rate, 12_500_000);
        assert_eq!(free.announced().rate, 250_000);
        assert_eq!(tiers.named("free").expect("named").session_rate, 250_000);
        assert_eq!(
            tiers.named(DEFAULT_TIER).expect("default").name,
            DEFAULT_TIER
        );
        assert!(tiers.named("gold").is_none());
    }

    #[test]
    fn unknown_tiers_and_bad_host_ids_are_named() {
        let key = SecretKey::generate().expect("key");
        let mut limits = Limits::default();
        limits
            .host_tiers
            .insert(key.host_id().to_string(), "gold".to_owned());
        let err = Tiers::new(&limits).expect_err("no such tier");
        assert_eq!(
            err,
            TiersError::UnknownTier {
                tier: "gold".to_owned()
            }
        );
        let mut limits = Limits::default();
        limits
            .host_tiers
            .insert("not-a-host".to_owned(), DEFAULT_TIER.to_owned());
        let err = Tiers::new(&limits).expect_err("bad id");
        assert!(
            matches!(&err, TiersError::NotAHostId { host, .. } if host == "not-a-host"),
            "{err}"
        );
    }
}
