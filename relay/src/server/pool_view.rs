//! The task that keeps a pool member's view: it reads the member list, probes the
//! members and sets the view, for as long as the relay runs.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tracing::{info, warn};

use crate::pool::{Pool, Prober, Source, PROBES_MISSED};
use crate::state::RelayState;

/// Reads the member list every refresh, probes the members and updates the view,
/// until the relay stops (the task is aborted with it). A draining relay takes
/// itself out of its view at once.
pub(crate) async fn keep_view(pool: Arc<Pool>, endpoint: quinn::Endpoint, state: Arc<RelayState>) {
    let mut draining = state.draining_watch();
    let stats = &state.stats;
    let prober = Prober::new(endpoint);
    let source = Source::new(&pool.config().members);
    let mut listed: Option<Vec<String>> = None;
    let mut first = true;
    // Probes each listed member has missed in a row.
    let mut missed: HashMap<String, u32> = HashMap::new();
    loop {
        match source.read().await {
            Ok(members) => listed = Some(members),
            Err(err) => warn!(%err, "cannot read the pool's member list; keeping the last view"),
        }
        if let Some(listed) = &listed {
            let me = pool.me();
            let others: Vec<&str> = listed
                .iter()
                .map(String::as_str)
                .filter(|name| *name != me)
                .collect();
            // At start the listed members are taken as they are: a relay that
            // starts with its pool must not hold every host until it has probed.
            let mut alive: Vec<String> = if first {
                others.iter().map(|name| (*name).to_owned()).collect()
            } else {
                let answered = prober.alive(&others).await;
                // One missed probe is not enough to leave the view (a busy member,
                // a lost packet): moving its hosts away and back costs more than
                // a refresh of patience. Two in a row are.
                missed.retain(|name, _| others.contains(&name.as_str()));
                others
                    .iter()
                    .filter(|name| {
                        let count = missed.entry((**name).to_owned()).or_insert(0);
                        *count = if answered.iter().any(|a| a == **name) {
                            0
                        } else {
                            count.saturating_add(1)
                        };
                        *count < PROBES_MISSED
                    })
                    .map(|name| (*name).to_owned())
                    .collect()
            };
            // A member that is no longer listed is out of the pool: it hands its
            // hosts over as a draining one does.
            if listed.iter().any(|name| name == me) && !*draining.borrow() {
                alive.push(me.to_owned());
            }
            let count = alive.len();
            if pool.set_view(alive) {
                info!(members = count, "pool view changed");
            }
            stats.pool_members.store(count as u64, Ordering::Relaxed);
            first = false;
        }
        tokio::select! {
            () = tokio::time::sleep(pool.config().refresh) => {}
            Ok(()) = draining.changed() => {
                if *draining.borrow() {
                    let without_me: Vec<String> = pool
                        .members()
                        .iter()
                        .filter(|name| *name != pool.me())
                        .cloned()
                        .collect();
                    stats.pool_members.store(without_me.len() as u64, Ordering::Relaxed);
                    pool.set_view(without_me);
                }
            }
        }
    }
}
