//! Who may come in and how much each may use: [admission](admission) (per-address
//! rates and counts, the caps on connections and handshakes, the session buffer
//! budget), the configured [limits](limits) and bandwidth [tiers](tiers), the
//! token [bucket](bucket) that paces a session, the [units](units) limits are
//! written in, and the [token issuers](token_issuers) a registration token is
//! checked against.

pub(crate) mod admission;
pub(crate) mod bucket;
pub mod limits;
pub(crate) mod tiers;
pub(crate) mod token_issuers;
pub mod units;
