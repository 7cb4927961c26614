//! The probe port (PROTOCOL.md 10.9): a second UDP port on the relay's address
//! whose QUIC connections may ask `Observe` once and nothing else.
//!
//! A client that asks on its relay connection and then here, from the same socket,
//! learns whether its NAT gave the two destinations one public port or two: one
//! that maps each destination anew ("symmetric") makes the address the relay saw
//! useless to anyone else, and the client skips the punches that would need it.
//! Connections here count against the same caps as any (one admission for both
//! ports), and each lives for one exchange, within the handshake and first-message
//! deadlines.

use std::sync::Arc;

use blindrelay_protocol::{codes, ControlMessage, ErrorCode};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::debug;

use crate::ops::privacy::redact;
use crate::ops::stats::Stats;
use crate::policy::admission::{self, ConnectionPermit, Door, Place};
use crate::state::RelayState;
use crate::stream::control::{read_message, refuse};
use crate::stream::halves::{StreamRecv, StreamSend};

/// Accepts probe connections until the relay shuts down.
pub(crate) async fn serve(
    endpoint: quinn::Endpoint,
    state: Arc<RelayState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                if state.is_draining() {
                    Stats::bump(&state.stats.connections_refused_draining);
                    incoming.refuse();
                    continue;
                }
                match state.admission.admit_connection(incoming.remote_address(), Door::Quic) {
                    Ok(permit) => {
                        connections.spawn(answer(incoming, permit, state.clone()));
                    }
                    Err(refusal) => {
                        state.stats.connection_refused(refusal);
                        debug!(peer = %redact(incoming.remote_address()), ?refusal, "probe connection refused");
                        if refusal == admission::Refusal::TooManyHandshakes {
                            incoming.ignore();
                        } else {
                            incoming.refuse();
                        }
                    }
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    endpoint.close(codes::close::RELAY_SHUTDOWN.into(), b"relay shutting down");
    connections.shutdown().await;
}

/// One probe connection: its handshake within the handshake deadline, then one
/// `Observe` and its answer within the first-message deadline; then it is closed.
async fn answer(incoming: quinn::Incoming, permit: ConnectionPermit, state: Arc<RelayState>) {
    let limits = &state.config.limits.connections;
    let connection = match tokio::time::timeout(limits.handshake_timeout.0, incoming).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(_)) => return,
        Err(_) => {
            Stats::bump(&state.stats.connections_handshake_timed_out);
            return;
        }
    };
    if permit.establish() != Place::Within {
        // Past the cap, a probe is the first thing to go.
        Stats::bump(&state.stats.connections_at_capacity);
        connection.close(
            codes::close::AT_CAPACITY.into(),
            b"relay at capacity: try again later",
        );
        return;
    }
    let exchange = async {
        let Ok((send, recv)) = connection.accept_bi().await else {
            return;
        };
        let (mut send, mut recv) = (StreamSend::Quic(send), StreamRecv::Quic(recv));
        let answer = match read_message(&mut recv).await {
            Ok(ControlMessage::Observe) => {
                Stats::bump(&state.stats.addresses_observed);
                ControlMessage::Observed {
                    addr: connection.remote_address(),
                }
            }
            _ => {
                Stats::bump(&state.stats.bad_requests);
                ControlMessage::error(ErrorCode::BadRequest, "the probe port answers Observe only")
            }
        };
        refuse(&mut send, &mut recv, &answer).await;
        // The client closes once it has read the answer.
        connection.closed().await;
    };
    if tokio::time::timeout(limits.first_message_timeout.0, exchange)
        .await
        .is_err()
    {
        debug!("a probe connection ran out of time");
        connection.close(codes::close::IDLE.into(), b"probe: one Observe, in time");
    }
}
