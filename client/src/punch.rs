//! Hole punching (PROTOCOL.md 10.9), the parts host and player share: asking the
//! relay which address it sees, this machine's own address, reading and writing a
//! punch session's candidates, and the packets that open a NAT's mapping.
//!
//! A session starts relayed. Once it runs, the player opens a *punch session* to the
//! host through the relay (a Noise session whose hello asks for one), and the two
//! ends swap their candidates inside it: the address the relay observed for each
//! (its NAT's public mapping) and its own LAN address, so the relay learns no address
//! it did not already see. The host then sends small UDP packets from its one socket
//! to the player's candidates, which opens its NAT to the player, while the player
//! dials the host's candidates over QUIC from its own one socket, which opens the
//! player's NAT to the host. Between two home NATs (which keep one public port per
//! socket, whatever the destination) the player's dial gets through; between
//! symmetric NATs it cannot, and the session stays relayed. The direct connection is
//! a host's direct listener like any other: what authenticates the host on it is
//! the Noise handshake to its host id, and a path check binds that handshake to the
//! connection the player dialled ([`path_binding`]); running sessions move to it by
//! resuming
//! there (PROTOCOL.md 10.8).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use blindrelay_protocol::punch::{Candidates, PathCheck, Ready, BINDING_LABEL, BINDING_LEN};
use blindrelay_protocol::DecodeError;
use blindrelay_protocol::{codes, ControlMessage, RelayUrl};
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::endpoint::probe_client_config;
use crate::wire::{read_control, WireError};

/// How long an `Observe` may take before the client goes on without its answer.
pub(crate) const OBSERVE_TIMEOUT: Duration = Duration::from_secs(3);

/// How long each end waits for the other's candidates in a punch session.
pub(crate) const CANDIDATES_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the host sends a punch packet to each of the player's candidates, and
/// for how long: past the player's first QUIC Initial and its first retransmission.
pub(crate) const PUNCH_EVERY: Duration = Duration::from_millis(100);
pub(crate) const PUNCH_FOR: Duration = Duration::from_secs(3);

/// A punch packet: one byte, which no QUIC endpoint takes for a packet (a QUIC
/// packet is at least 21 bytes), so one that gets through is dropped unread.
const PUNCH_PACKET: [u8; 1] = [0];

/// Why the relay did not say which address it sees.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ObserveError {
    #[error("cannot open a stream: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("cannot ask: {0}")]
    Write(#[from] quinn::WriteError),
    #[error(transparent)]
    Read(#[from] WireError),
    /// A relay from before punching refuses the request.
    #[error("the relay answered {0}")]
    Unexpected(&'static str),
    #[error("no answer within {OBSERVE_TIMEOUT:?}")]
    Timeout,
}

/// What a relay said of a connection's address.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Observation {
    /// The address the relay sees the connection come from.
    pub addr: SocketAddr,
    /// The relay's probe port, where it has one.
    pub probe_port: Option<u16>,
}

/// Asks the relay at the other end of `connection` which address it sees this end
/// come from: its NAT's public mapping of the connection's socket.
pub(crate) async fn observe(connection: &quinn::Connection) -> Result<Observation, ObserveError> {
    let ask = async {
        let (mut send, mut recv) = connection.open_bi().await?;
        send.write_all(&ControlMessage::Observe.to_frame()).await?;
        let _ = send.finish();
        let addr = match read_control(&mut recv).await? {
            ControlMessage::Observed { addr } => addr,
            other => return Err(ObserveError::Unexpected(other.name())),
        };
        // A relay with a probe port says so next; one without ends the stream.
        let probe_port = match read_control(&mut recv).await {
            Ok(ControlMessage::ProbePort { port }) => Some(port),
            _ => None,
        };
        Ok(Observation { addr, probe_port })
    };
    tokio::time::timeout(OBSERVE_TIMEOUT, ask)
        .await
        .unwrap_or(Err(ObserveError::Timeout))
}

/// Whether this end's NAT maps each destination to a new public port: asks again
/// at the relay's probe port, from `endpoint` (the one `connection`, to the relay
/// at `url`, leaves from), and compares with what `seen` says. `None` where the
/// relay has no probe port, or the probe fails.
pub(crate) async fn maps_per_destination(
    endpoint: &quinn::Endpoint,
    connection: &quinn::Connection,
    url: &RelayUrl,
    seen: &Observation,
) -> Option<bool> {
    let port = seen.probe_port?;
    let to = SocketAddr::new(connection.remote_address().ip(), port);
    let config = probe_client_config(url).ok()?;
    let probe = async {
        let probe = endpoint
            .connect_with(config, to, url.host())
            .ok()?
            .await
            .ok()?;
        let again = observe(&probe).await.ok();
        probe.close(codes::close::NORMAL.into(), b"probed");
        again
    };
    let again = tokio::time::timeout(OBSERVE_TIMEOUT, probe).await.ok()??;
    Some(again.addr != seen.addr)
}

/// The addresses of `theirs` worth a punch packet or a dial from the side whose
/// candidates are `ours`. A side whose NAT maps each destination anew names its
/// observed address first only to say where its packets come from: no one else can
/// reach it there. When both sides' NATs do so and they are not behind the same
/// public address (where LAN addresses may meet), nothing is worth trying.
pub(crate) fn worth_trying(ours: &Candidates, theirs: &Candidates) -> Vec<SocketAddr> {
    if !theirs.per_destination {
        return theirs.addrs.clone();
    }
    let public = |candidates: &Candidates| candidates.addrs.first().map(SocketAddr::ip);
    if ours.per_destination && public(ours) != public(theirs) {
        return Vec::new();
    }
    theirs.addrs.iter().skip(1).copied().collect()
}

/// This machine's address on the route to `remote` with `port`: its LAN candidate.
/// "Connecting" a UDP socket only looks the route up; nothing is sent.
pub(crate) fn lan_candidate(remote: SocketAddr, port: u16) -> Option<SocketAddr> {
    let any: IpAddr = if remote.is_ipv6() {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    };
    let socket = std::net::UdpSocket::bind((any, 0)).ok()?;
    socket.connect(remote).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified() && !ip.is_loopback()).then_some(SocketAddr::new(ip, port))
}

/// Writes `candidates` on a punch session.
pub(crate) async fn send_candidates(
    stream: &mut (impl AsyncWrite + Unpin),
    candidates: &Candidates,
) -> std::io::Result<()> {
    send_message(stream, |out| candidates.encode(out)).await
}

/// Reads the other end's candidates from a punch session, within
/// [`CANDIDATES_TIMEOUT`].
pub(crate) async fn read_candidates(
    stream: &mut (impl AsyncRead + Unpin),
) -> std::io::Result<Candidates> {
    read_message(stream, Candidates::decode_frame).await
}

/// Writes a punched path's check (the host's answer on a direct connection).
pub(crate) async fn send_path_check(
    stream: &mut (impl AsyncWrite + Unpin),
    check: PathCheck,
) -> std::io::Result<()> {
    send_message(stream, |out| check.encode(out)).await
}

/// Reads the host's check of a punched path, within [`CANDIDATES_TIMEOUT`].
pub(crate) async fn read_path_check(
    stream: &mut (impl AsyncRead + Unpin),
) -> std::io::Result<PathCheck> {
    read_message(stream, PathCheck::decode_frame).await
}

/// Writes the player's [`Ready`] (its punch packets left; the host may dial).
pub(crate) async fn send_ready(stream: &mut (impl AsyncWrite + Unpin)) -> std::io::Result<()> {
    send_message(stream, |out| Ready.encode(out)).await
}

/// Writes one punch message, as `encode` appends it.
async fn send_message(
    stream: &mut (impl AsyncWrite + Unpin),
    encode: impl FnOnce(&mut BytesMut),
) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    encode(&mut out);
    stream.write_all(&out).await?;
    stream.flush().await
}

/// Reads the player's [`Ready`], within [`CANDIDATES_TIMEOUT`].
pub(crate) async fn read_ready(stream: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Ready> {
    read_message(stream, Ready::decode_frame).await
}

/// Reads one punch message with `decode_frame`, within [`CANDIDATES_TIMEOUT`].
async fn read_message<T>(
    stream: &mut (impl AsyncRead + Unpin),
    decode_frame: fn(&mut BytesMut) -> Result<Option<T>, DecodeError>,
) -> std::io::Result<T> {
    let read = async {
        let mut buf = BytesMut::new();
        loop {
            let decoded = decode_frame(&mut buf)
                .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidData, err))?;
            if let Some(message) = decoded {
                return Ok(message);
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    };
    tokio::time::timeout(CANDIDATES_TIMEOUT, read)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// What binds a punched path's check to `connection`: its TLS exporter, which
/// the two ends of one QUIC connection compute alike and the two connections of a
/// splice (player to splicer, splicer to host) do not.
pub(crate) fn path_binding(connection: &quinn::Connection) -> Option<PathCheck> {
    let mut binding = [0u8; BINDING_LEN];
    connection
        .export_keying_material(&mut binding, BINDING_LABEL, b"")
        .ok()?;
    Some(PathCheck { binding })
}

/// Sends punch packets from `socket` to each of `targets` every [`PUNCH_EVERY`]
/// for [`PUNCH_FOR`]: each opens (or keeps open) this end's NAT mapping toward that
/// address, so that the other end's QUIC Initial from there gets in.
pub(crate) async fn punch(socket: &std::net::UdpSocket, targets: &[SocketAddr]) {
    let rounds = (PUNCH_FOR.as_millis() / PUNCH_EVERY.as_millis()).max(1);
    let mut every = tokio::time::interval(PUNCH_EVERY);
    for _ in 0..rounds {
        every.tick().await;
        punch_once(socket, targets);
    }
}

/// One punch packet from `socket` to each of `targets`.
pub(crate) fn punch_once(socket: &std::net::UdpSocket, targets: &[SocketAddr]) {
    for target in targets {
        // The socket is the endpoint's own, non-blocking: a full send buffer drops
        // this packet, and the next round sends another.
        let _ = socket.send_to(&PUNCH_PACKET, target);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidates(addrs: &[&str], per_destination: bool) -> Candidates {
        Candidates::new(addrs.iter().map(|addr| addr.parse().unwrap()))
            .mapped_per_destination(per_destination)
    }

    #[test]
    fn an_address_a_nat_gave_only_the_relay_is_not_tried() {
        let home = candidates(&["198.51.100.1:4000", "192.168.1.2:4000"], false);
        let symmetric = candidates(&["203.0.113.9:5000", "10.0.0.7:5000"], true);
        let addrs = |c: &Candidates| c.addrs.clone();
        // An ordinary NAT's every address is worth trying, whoever asks.
        assert_eq!(worth_trying(&home, &home), addrs(&home));
        assert_eq!(worth_trying(&symmetric, &home), addrs(&home));
        // A symmetric one's public address is not; its LAN address is.
        assert_eq!(worth_trying(&home, &symmetric), addrs(&symmetric)[1..]);
        // Two symmetric NATs: nothing, unless they share the public address.
        let other = candidates(&["192.0.2.3:6000", "10.0.0.8:6000"], true);
        assert!(worth_trying(&other, &symmetric).is_empty());
        let same_nat = candidates(&["203.0.113.9:6001", "10.0.0.8:6001"], true);
        assert_eq!(worth_trying(&same_nat, &symmetric), addrs(&symmetric)[1..]);
    }
}
