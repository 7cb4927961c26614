//! The relay's splice tap, seen from the tests: a recorder of what the relay
//! forwards. It is here, in the test binary, and not in the helper library, because
//! only the tests' dev-dependency on the relay turns the `splice-tap` feature on.

use std::sync::{Arc, Mutex};

use blindrelay_relay::{Direction, Relay, SpliceTap, StreamEnd};
use blindrelay_tests::{init_tracing, relay_config};

/// Records everything the relay forwards, per direction, and how each direction ended.
#[derive(Default)]
pub struct RecordingTap {
    /// Every chunk the relay forwarded from the player to the host, in order.
    pub player_to_host: Mutex<Vec<u8>>,
    /// Every chunk the relay forwarded from the host to the player, in order.
    pub host_to_player: Mutex<Vec<u8>>,
    /// How each direction ended, in the order they did.
    pub ends: Mutex<Vec<(Direction, StreamEnd)>>,
}

impl SpliceTap for RecordingTap {
    fn observe(&self, direction: Direction, chunk: &[u8]) {
        let buf = match direction {
            Direction::PlayerToHost => &self.player_to_host,
            Direction::HostToPlayer => &self.host_to_player,
        };
        buf.lock().unwrap().extend_from_slice(chunk);
    }

    fn ended(&self, direction: Direction, end: StreamEnd) {
        self.ends.lock().unwrap().push((direction, end));
    }
}

/// Starts a relay like [`blindrelay_tests::start_relay`], with a [`RecordingTap`]
/// installed before any session can reach its splice.
pub fn start_relay_with_tap() -> (Relay, Arc<RecordingTap>) {
    init_tracing();
    let tap = Arc::new(RecordingTap::default());
    let relay = Relay::spawn(relay_config()).expect("relay starts");
    if relay.install_splice_tap(tap.clone()).is_err() {
        panic!("a fresh relay has no tap yet");
    }
    (relay, tap)
}
