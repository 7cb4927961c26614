//! A QUIC connection's receive window, opened while it carries sessions: an idle
//! host or player holds a small window, a connection with sessions its share of
//! the sessions' budget reservations.

use std::sync::Arc;

use crate::endpoint::quic::{CONNECTION_WINDOW_STREAMS, INITIAL_CONNECTION_WINDOW};
use crate::policy::limits::Limits;

/// A connection's receive window: [`INITIAL_CONNECTION_WINDOW`] while it carries no
/// session, the full window (its share of the sessions' budget reservations) while
/// it carries at least one.
pub(crate) struct ReceiveWindow {
    connection: quinn::Connection,
    full: quinn::VarInt,
    /// Sessions on the connection; changed under the lock so that the window set
    /// last always matches the count.
    sessions: std::sync::Mutex<u32>,
}

impl ReceiveWindow {
    /// The window of `connection`, which starts at [`INITIAL_CONNECTION_WINDOW`]
    /// (see [`transport_config`](crate::endpoint::quic::transport_config)).
    pub(crate) fn new(connection: quinn::Connection, limits: &Limits) -> Arc<Self> {
        let full = limits
            .sessions
            .window
            .0
            .saturating_mul(CONNECTION_WINDOW_STREAMS);
        Arc::new(Self {
            connection,
            // Validated limits keep this far below QUIC's maximum.
            full: quinn::VarInt::from_u64(full).unwrap_or(quinn::VarInt::MAX),
            sessions: std::sync::Mutex::new(0),
        })
    }

    /// Counts one more session on the connection until the grant is dropped; the
    /// first opens the full window.
    pub(crate) fn open_session(self: &Arc<Self>) -> WindowGrant {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        *sessions += 1;
        if *sessions == 1 {
            self.connection.set_receive_window(self.full);
        }
        WindowGrant(self.clone())
    }
}

/// One session's hold on its connection's full receive window.
pub(crate) struct WindowGrant(Arc<ReceiveWindow>);

impl Drop for WindowGrant {
    fn drop(&mut self) {
        let window = &self.0;
        let mut sessions = window.sessions.lock().unwrap_or_else(|p| p.into_inner());
        *sessions = sessions.saturating_sub(1);
        if *sessions == 0 {
            window
                .connection
                .set_receive_window(INITIAL_CONNECTION_WINDOW.into());
        }
    }
}
