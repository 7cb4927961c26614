//! The relay's state: what every connection task of one relay shares.
//!
//! The configuration it runs with, the registry of hosts, admission (per-address
//! rates and counts, the session buffer budget), bandwidth tiers, counters, and
//! whether the relay is draining. Handlers take the parts they use; nothing here
//! does I/O.

pub(crate) mod dials;
pub(crate) mod registry;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::{watch, Notify};

use crate::config::RelayConfig;
use crate::ops::stats::{Stats, StatsSnapshot};
use crate::policy::admission::Admission;
use crate::policy::limits::TiersError;
use crate::policy::tiers::Tiers;
use crate::pool::Pool;
use crate::state::dials::PendingDials;
use crate::state::registry::Registry;

/// State every connection task of one relay shares.
pub(crate) struct RelayState {
    pub config: RelayConfig,
    pub registry: Registry,
    pub admission: Arc<Admission>,
    pub tiers: Tiers,
    pub stats: Stats,
    /// Sessions waiting for a stream-transport host's connection.
    pub dials: Arc<PendingDials>,
    /// This relay's pool, when it is a member of one.
    pub pool: Option<Arc<Pool>>,
    /// True once the relay has begun to drain: no new connections or registrations,
    /// running sessions go on.
    draining: watch::Sender<bool>,
    /// Woken whenever the last active session ends or a registration is removed,
    /// which is what a drain waits for.
    pub drain_progress: Notify,
    /// Sees every chunk the splice forwards; installed by a test through
    /// [`crate::Relay::install_splice_tap`], in builds with the `splice-tap` feature.
    #[cfg(feature = "splice-tap")]
    pub splice_tap: std::sync::OnceLock<Arc<dyn crate::flows::splice::SpliceTap>>,
}

impl RelayState {
    /// State for a relay with `config`, whose limits have been validated.
    pub(crate) fn new(config: RelayConfig) -> Result<Self, TiersError> {
        Ok(Self {
            admission: Arc::new(Admission::new(&config.limits)),
            tiers: Tiers::new(&config.limits)?,
            pool: config.pool.clone().map(|pool| Arc::new(Pool::new(pool))),
            config,
            registry: Registry::default(),
            stats: Stats::default(),
            dials: Arc::default(),
            draining: watch::channel(false).0,
            drain_progress: Notify::new(),
            #[cfg(feature = "splice-tap")]
            splice_tap: std::sync::OnceLock::new(),
        })
    }

    /// Starts draining (see [`crate::Relay::drain`]).
    pub(crate) fn start_draining(&self) {
        self.draining.send_replace(true);
    }

    pub(crate) fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Whether the relay drains, as it changes.
    pub(crate) fn draining_watch(&self) -> watch::Receiver<bool> {
        self.draining.subscribe()
    }

    /// Resolves once the relay drains.
    pub(crate) async fn draining(&self) {
        let mut draining = self.draining.subscribe();
        // The sender lives in `self`, so this only returns when draining.
        let _ = draining.wait_for(|draining| *draining).await;
    }

    /// Sessions being forwarded now.
    pub(crate) fn active_sessions(&self) -> u64 {
        self.stats.sessions_active.load(Ordering::Acquire)
    }

    /// A random id for a new session. Random, not counted, so the ids a host or
    /// player sees tell nothing about how many sessions the relay carries.
    pub(crate) fn new_session_id(&self) -> u64 {
        fastrand::u64(1..)
    }

    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        let budget = self.config.limits.sessions.buffer_budget.0;
        self.stats
            .snapshot(self.registry.len(), &self.admission, budget)
    }
}
