//! What a routed stream becomes: a host's [registration](registration), a player's
//! [session](session) paired with its host, and the [splice](splice) that forwards
//! the session's bytes between the two without reading them.

pub(crate) mod registration;
pub(crate) mod session;
pub(crate) mod splice;
