//! Streams as the relay's flows see them, whatever transport carries them: the
//! [halves](halves) the splice joins, the [connection](link) a stream came on, a
//! door's [accepted stream](routed), the [control messages](control) on it, and a
//! QUIC connection's [receive window](window).

pub(crate) mod control;
pub(crate) mod halves;
pub(crate) mod link;
pub(crate) mod routed;
pub(crate) mod window;
