//! Fixed keys and a finished Noise session, shared by the criterion benchmarks.

use blindrelay_protocol::noise::{
    split_frame, HostHandshake, PlayerHandshake, Transport, VerdictOpened,
};
use blindrelay_protocol::SecretKey;
use bytes::BytesMut;

/// The player's and the host's static keys (fixed, so runs are comparable).
pub fn keys() -> (SecretKey, SecretKey) {
    (
        SecretKey::from_bytes([1; 32]),
        SecretKey::from_bytes([2; 32]),
    )
}

/// A session after the IK handshake between [`keys`]: (player, host) transports.
pub fn session() -> (Transport, Transport) {
    let (player_key, host_key) = keys();
    let mut player = PlayerHandshake::new(&player_key, &host_key.host_id()).expect("player");
    let mut wire = BytesMut::new();
    player.write_hello(&mut wire).expect("hello");
    let hello = split_frame(&mut wire).expect("hello frame");
    let host = HostHandshake::respond(&host_key, &hello, &mut wire).expect("respond");
    let host = host.welcome(&mut wire).expect("welcome");
    let reply = split_frame(&mut wire).expect("reply frame");
    let player = player.read_reply(&reply).expect("reply");
    let verdict = split_frame(&mut wire).expect("verdict frame");
    match player.open_verdict(&verdict).expect("verdict") {
        VerdictOpened::Welcome(player) => (player, host),
        _ => unreachable!("the host welcomed the player"),
    }
}
