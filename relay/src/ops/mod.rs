//! What the relay tells its operator, and what it must never tell: the
//! [counters](stats), their [Prometheus rendering](metrics), and the
//! [privacy](privacy) rules for logs and labels.

pub(crate) mod metrics;
pub mod privacy;
pub(crate) mod stats;
