//! The splice: forwards a session's bytes between the player's stream and the host's.
//!
//! Each direction is one loop: take the next chunk quinn has received, hand that same
//! chunk to the other stream. No parsing, no copy beyond quinn's own buffers, and at
//! most one chunk in flight per direction: when the receiving side's flow-control
//! window is full, `write_chunk` waits, this loop stops reading, and QUIC flow control
//! pushes back on the sender. A slow reader slows its writer; it never grows the
//! relay.
//!
//! Ends travel across: a clean finish becomes a finish, a reset becomes a reset with
//! the same code, a stop-sending becomes a stop-sending with the same code, and a lost
//! connection becomes [`codes::stream::PEER_GONE`] on the other side. Since the session
//! is end-to-end encrypted with an authenticated end of stream, a finish the relay
//! invents is detected by player and host as truncation.

use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(feature = "splice-tap")]
use std::sync::Arc;

use blindrelay_protocol::codes;
use quinn::{ReadError, VarInt, WriteError};

use crate::connection::Shared;

/// Largest chunk taken from quinn at once.
const MAX_CHUNK: usize = 64 * 1024;

/// One side of a session: the two halves of its QUIC stream.
pub(crate) struct Side {
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
}

/// Bytes forwarded in each direction.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Totals {
    pub player_to_host: u64,
    pub host_to_player: u64,
}

/// Which way a chunk travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the player to the host.
    PlayerToHost,
    /// From the host to the player.
    HostToPlayer,
}

/// Sees every chunk the splice forwards. Exists so tests can prove that what the
/// relay handles is ciphertext; compiled only with the `splice-tap` feature.
#[cfg(feature = "splice-tap")]
pub trait SpliceTap: Send + Sync {
    /// Called with each chunk before it is forwarded.
    fn observe(&self, direction: Direction, chunk: &[u8]);
}

/// Forwards both directions until both have ended.
pub(crate) async fn run(player: Side, host: Side, shared: &Shared) -> Totals {
    let stats = &shared.stats;
    let (player_to_host, host_to_player) = tokio::join!(
        pump(
            player.recv,
            host.send,
            Direction::PlayerToHost,
            &stats.bytes_player_to_host,
            shared,
        ),
        pump(
            host.recv,
            player.send,
            Direction::HostToPlayer,
            &stats.bytes_host_to_player,
            shared,
        ),
    );
    Totals {
        player_to_host,
        host_to_player,
    }
}

async fn pump(
    mut from: quinn::RecvStream,
    mut to: quinn::SendStream,
    direction: Direction,
    counter: &AtomicU64,
    shared: &Shared,
) -> u64 {
    #[cfg(feature = "splice-tap")]
    let tap: Option<Arc<dyn SpliceTap>> = shared.config.tap.clone();
    #[cfg(not(feature = "splice-tap"))]
    let _ = (shared, direction);

    let peer_gone = VarInt::from_u32(codes::stream::PEER_GONE);
    // The receiver may stop reading while we wait for the sender: pass that on at
    // once instead of at our next write.
    let stopped = to.stopped();
    tokio::pin!(stopped);
    let mut total = 0u64;
    loop {
        let read = tokio::select! {
            read = from.read_chunk(MAX_CHUNK, true) => read,
            stop = &mut stopped => {
                let code = stop.ok().flatten().unwrap_or(peer_gone);
                let _ = from.stop(code);
                return total;
            }
        };
        match read {
            Ok(Some(chunk)) => {
                #[cfg(feature = "splice-tap")]
                if let Some(tap) = &tap {
                    tap.observe(direction, &chunk.bytes);
                }
                let len = chunk.bytes.len() as u64;
                match to.write_chunk(chunk.bytes).await {
                    Ok(()) => {
                        total += len;
                        counter.fetch_add(len, Ordering::Relaxed);
                    }
                    Err(WriteError::Stopped(code)) => {
                        let _ = from.stop(code);
                        return total;
                    }
                    Err(_) => {
                        let _ = from.stop(peer_gone);
                        return total;
                    }
                }
            }
            Ok(None) => {
                let _ = to.finish();
                return total;
            }
            Err(ReadError::Reset(code)) => {
                let _ = to.reset(code);
                return total;
            }
            Err(_) => {
                let _ = to.reset(peer_gone);
                return total;
            }
        }
    }
}
