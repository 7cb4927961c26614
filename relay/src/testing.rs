//! What the relay's unit tests build streams and state from: in-memory stream
//! transports (framed pipes) instead of sockets, a relay state with chosen limits,
//! admitted connections, and control messages read off a pipe's far end.

use std::net::SocketAddr;
use std::sync::Arc;

use blindrelay_protocol::control::{self, ControlMessage};
use blindrelay_transport::{framed, Config, Connection, FramedRecv, FramedSend};

use crate::config::RelayConfig;
use crate::endpoint::tls::RelayCertificate;
use crate::policy::admission::{ConnectionPermit, Door};
use crate::policy::limits::Limits;
use crate::state::RelayState;
use crate::stream::halves::{StreamRecv, StreamSend};

/// A player's address.
pub(crate) const PLAYER: &str = "192.0.2.10:5000";
/// A host's address.
pub(crate) const HOST: &str = "198.51.100.7:6000";

/// The far end of an in-memory stream transport, kept so the relay's end stays
/// open.
pub(crate) type Peer = (FramedSend, FramedRecv, Connection);

/// A relay's state with `limits`, and a configuration otherwise default.
pub(crate) fn state(limits: Limits) -> Arc<RelayState> {
    state_with(limits, |_| {})
}

/// Like [`state`], with the configuration changed by `change` first.
pub(crate) fn state_with(limits: Limits, change: impl FnOnce(&mut RelayConfig)) -> Arc<RelayState> {
    let certificate = RelayCertificate::self_signed(&["localhost"]).expect("a certificate");
    let mut config = RelayConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), certificate);
    config.limits = limits;
    change(&mut config);
    Arc::new(RelayState::new(config).expect("valid limits"))
}

/// The relay's halves of an in-memory stream transport, its connection, and the
/// peer's end.
pub(crate) fn pipe() -> (StreamSend, StreamRecv, Connection, Peer) {
    let (near, far) = tokio::io::duplex(64 * 1024);
    let (send, recv, connection) = framed(near, Config::default());
    let peer = framed(far, Config::default());
    (
        StreamSend::Framed(send),
        StreamRecv::Framed(recv),
        connection,
        peer,
    )
}

/// A connection from `addr` admitted through the TCP door and established.
pub(crate) fn admitted(state: &RelayState, addr: &str) -> Arc<ConnectionPermit> {
    let permit = state
        .admission
        .admit_connection(addr.parse().expect("an address"), Door::Tcp)
        .expect("admitted");
    permit.establish();
    Arc::new(permit)
}

/// Reads one control message off the far end of a pipe.
pub(crate) async fn read_control(recv: &mut FramedRecv) -> ControlMessage {
    let mut got = Vec::new();
    loop {
        if got.len() >= 2 {
            let len = control::frame_len([got[0], got[1]]).expect("a frame length");
            if got.len() >= 2 + len {
                return ControlMessage::decode(&got[2..2 + len]).expect("a message");
            }
        }
        let chunk = recv.read_chunk(4096).await.expect("readable");
        got.extend_from_slice(&chunk.expect("more bytes"));
    }
}
