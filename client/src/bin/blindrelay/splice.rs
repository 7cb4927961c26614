//! A session and a TCP connection, copied both ways.

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, warn};

/// Copies both ways until both directions have ended (half-close passes through).
/// How a session spliced to a local TCP connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// Both sides ended cleanly.
    Cleanly,
    /// The session failed (cut by the relay, the other side gone, truncated): the
    /// local connection must be reset, not closed, or its application would take
    /// what it got for the whole.
    CutShort,
}

pub(crate) async fn splice_tcp(
    local_id: u64,
    session: &mut (impl AsyncRead + AsyncWrite + Unpin),
    tcp: &mut (impl AsyncRead + AsyncWrite + Unpin),
) -> Ended {
    const BUF: usize = 64 * 1024;
    match tokio::io::copy_bidirectional_with_sizes(session, tcp, BUF, BUF).await {
        // Named from the local connection's side (the service on a host, the
        // application on a player): what the session delivered to it, and took from it.
        Ok((to_local, from_local)) => {
            debug!(local_id, to_local, from_local, "session ended");
            Ended::Cleanly
        }
        // Cut from outside the session (a relay limit, the other side gone, a path
        // that did not come back within the resume window): the person at either
        // end wants to know why their download stopped.
        Err(err)
            if err.get_ref().is_some_and(|inner| {
                inner.is::<blindrelay_client::SessionEnded>()
                    || inner.is::<blindrelay_client::ResumeError>()
            }) =>
        {
            warn!(local_id, %err, "session cut short");
            Ended::CutShort
        }
        Err(err) => {
            debug!(local_id, %err, "session ended with an error");
            Ended::CutShort
        }
    }
}
