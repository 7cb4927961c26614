//! Helpers for the whole-system tests: start a relay, hosts and players on
//! loopback, talk raw protocol to the relay, make checkable byte streams, and run
//! the real binaries ([`process`]), in real networks where a test needs one ([`netns`]).
//!
//! The tests themselves are one binary, `tests/system/`, with a module per area.
//! What needs the relay's test-only splice tap lives there, not here: this library
//! is a normal dependency of the tests, and the tap must never be compiled into a
//! relay built for use.

#![warn(missing_docs)]

pub mod netns;
pub mod process;

use std::time::Duration;

use blindrelay_client::{
    BackoffConfig, HostAgent, HostConfig, HostState, Player, PlayerConfig, RelayUrl, SecretKey,
    SecureStream, TransportPreference,
};
use blindrelay_protocol::control::ControlMessage;
use blindrelay_protocol::registration::{HostRegistration, EXPORTER_LABEL, EXPORTER_LEN};
use blindrelay_protocol::HostId;
use blindrelay_relay::{Limits, Relay, RelayCertificate, RelayConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every wait in these tests is bounded by this; generous for a busy 2-core machine.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Taken first by the tests that flood a relay with hundreds of connections or
/// thousands of datagrams. `cargo test` runs two tests at once in one process; two
/// floods at once on a two-core machine starve each other's honest session and
/// each other's relay, and what each test shows is what one flood does to one relay.
pub async fn one_flood_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static FLOODS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    FLOODS.lock().await
}

/// Sends the libraries' logs to the test's captured output, at the level
/// `RUST_LOG` names (`warn` by default); once per process, later calls do nothing.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A relay config on an ephemeral loopback port with a fresh self-signed certificate,
/// and no limits: tests of other behaviour must not trip over rate caps, since every
/// test client shares 127.0.0.1. Tests of limits set the ones they test.
pub fn relay_config() -> RelayConfig {
    let certificate = RelayCertificate::self_signed(&["localhost"]).expect("certificate");
    let mut config = RelayConfig::new("127.0.0.1:0".parse().unwrap(), certificate);
    config.limits = Limits::unlimited();
    config
}

/// Starts a relay with [`relay_config`].
pub fn start_relay() -> Relay {
    init_tracing();
    Relay::spawn(relay_config()).expect("relay starts")
}

/// A host config that retries quickly, so reconnection tests stay short. It does
/// not punch: on one machine every punch succeeds, and a test of the relay wants
/// its sessions relayed (the punching tests switch it on, in namespaces with NATs).
pub fn host_config(key: SecretKey, relay: &RelayUrl) -> HostConfig {
    let mut config = HostConfig::new(key, relay.clone());
    config.punch = false;
    config.backoff = BackoffConfig {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(400),
    };
    config
}

/// Starts a host agent with a fresh key and waits until it is registered.
pub async fn start_host(relay: &RelayUrl) -> HostAgent {
    let agent = HostAgent::start(host_config(SecretKey::generate().unwrap(), relay))
        .expect("host agent starts");
    wait_for_state(&agent, |state| *state == HostState::Registered).await;
    agent
}

/// Starts a host agent with a fresh key that reaches the relay over `transport`,
/// and waits until it is registered.
pub async fn host_over(relay: &RelayUrl, transport: TransportPreference) -> HostAgent {
    let mut config = host_config(SecretKey::generate().unwrap(), relay);
    config.transport = transport;
    let agent = HostAgent::start(config).expect("host agent starts");
    wait_for_state(&agent, |state| *state == HostState::Registered).await;
    agent
}

/// Waits until `agent`'s state satisfies `want` (within [`PATIENCE`]) and returns it.
pub async fn wait_for_state(agent: &HostAgent, want: impl Fn(&HostState) -> bool) -> HostState {
    let mut states = agent.watch_state();
    let state = tokio::time::timeout(PATIENCE, states.wait_for(|state| want(state)))
        .await
        .expect("host reached the expected state in time")
        .expect("host agent still running")
        .clone();
    state
}

/// A player's defaults with `key`, but for punching, which is off (see
/// [`host_config`]).
pub fn player_config(key: SecretKey) -> PlayerConfig {
    let mut config = PlayerConfig::new(key);
    config.punch = false;
    config
}

/// A player with a fresh key and default settings (no punching).
pub fn player() -> Player {
    Player::new(player_config(SecretKey::generate().unwrap()))
}

/// A player with a fresh key whose relayed sessions go over `transport`.
pub fn player_over(transport: TransportPreference) -> Player {
    let mut config = player_config(SecretKey::generate().unwrap());
    config.transport = transport;
    Player::new(config)
}

/// Accepts every session on `agent` and echoes it back, until the agent stops.
pub fn spawn_echo_host(mut agent: HostAgent) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut sessions = tokio::task::JoinSet::new();
        while let Some(session) = agent.accept().await {
            sessions.spawn(echo(session));
        }
    })
}

/// Writes back everything `session` receives, then ends its sending side when the
/// peer ends theirs; a failed read or write ends it at once.
pub async fn echo(session: SecureStream) {
    let (mut reader, mut writer) = tokio::io::split(session);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                if writer.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
    let _ = writer.shutdown().await;
}

/// A reproducible pseudo-random byte stream (xorshift64*), so a receiver can check
/// gigabytes without either side holding them.
pub struct Pattern(u64);

impl Pattern {
    /// The stream for `seed`: the same seed always gives the same bytes.
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// Fills `buf` with the stream's next bytes (whole 8-byte words, the last one cut).
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let word = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

/// Writes `len` pattern bytes and shuts the writer down.
pub async fn write_pattern(
    writer: &mut (impl tokio::io::AsyncWrite + Unpin),
    seed: u64,
    len: u64,
) -> std::io::Result<()> {
    write_pattern_from(writer, &mut Pattern::new(seed), len).await?;
    writer.shutdown().await
}

/// Writes the next `len` bytes of `pattern` in 64 KiB blocks, leaving the writer open
/// (with 64 KiB-aligned lengths, a pattern written in parts reads as one).
pub async fn write_pattern_from(
    writer: &mut (impl tokio::io::AsyncWrite + Unpin),
    pattern: &mut Pattern,
    len: u64,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        pattern.fill(&mut buf[..n]);
        writer.write_all(&buf[..n]).await?;
        left -= n as u64;
    }
    Ok(())
}

/// Writes `len` pattern bytes on `writer` while a task reads them from `reader`, then
/// drops `writer` and `owner` (the writer's `Player` or `HostAgent`) at once; returns
/// what the reader got before a clean end.
pub async fn write_and_drop<T>(
    mut writer: SecureStream,
    mut reader: SecureStream,
    owner: T,
    seed: u64,
    len: u64,
) -> u64 {
    let reading = tokio::spawn(async move { read_pattern(&mut reader, seed).await });
    write_pattern(&mut writer, seed, len).await.unwrap();
    drop(writer);
    drop(owner);
    let received = tokio::time::timeout(PATIENCE, reading).await;
    received.expect("in time").unwrap().expect("a clean end")
}

/// Reads to a clean end and checks every byte against the pattern; returns the count.
///
/// Chunk boundaries on the reading side differ from the writer's, so the expected
/// bytes are generated in the writer's 64 KiB blocks and compared as a stream.
pub async fn read_pattern(
    reader: &mut (impl tokio::io::AsyncRead + Unpin),
    seed: u64,
) -> std::io::Result<u64> {
    let mut pattern = Pattern::new(seed);
    let mut expected = vec![0u8; 64 * 1024];
    let mut expected_pos = expected.len();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            return Ok(total);
        }
        let mut got = &buf[..n];
        while !got.is_empty() {
            if expected_pos == expected.len() {
                pattern.fill(&mut expected);
                expected_pos = 0;
            }
            let take = got.len().min(expected.len() - expected_pos);
            if got[..take] != expected[expected_pos..expected_pos + take] {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("byte mismatch near offset {total}"),
                ));
            }
            expected_pos += take;
            total += take as u64;
            got = &got[take..];
        }
    }
}

/// Opens a bare QUIC connection to the relay for speaking raw protocol.
pub async fn raw_connection(relay: &Relay) -> quinn::Connection {
    blindrelay_client::internal::connect_relay_raw(relay.url())
        .await
        .expect("raw connection to the relay")
}

/// Reads one control message from a raw stream.
pub async fn read_message(recv: &mut quinn::RecvStream) -> Option<ControlMessage> {
    blindrelay_client::internal::read_control(recv).await.ok()
}

/// Sends `bytes` on a new stream (finishing it if `finish`) and returns the relay's
/// first answer.
pub async fn raw_exchange(
    connection: &quinn::Connection,
    bytes: &[u8],
    finish: bool,
) -> Option<ControlMessage> {
    let (mut send, mut recv) = connection.open_bi().await.ok()?;
    let _ = send.write_all(bytes).await;
    if finish {
        let _ = send.finish();
    }
    tokio::time::timeout(PATIENCE, read_message(&mut recv))
        .await
        .expect("relay answers in time")
}

/// Runs the registration flow by hand on `connection`, proving with `prover` and the
/// keying material `exporter_from` exports. Returns the relay's verdict.
pub async fn register_by_hand(
    connection: &quinn::Connection,
    host_id: HostId,
    prover: &SecretKey,
    exporter_from: &quinn::Connection,
) -> (ControlMessage, quinn::SendStream) {
    let register = ControlMessage::register(host_id);
    let (verdict, send, _) = register_with(connection, register, prover, exporter_from).await;
    (verdict, send)
}

/// Sends `register` (a `Register`, with or without a token) on a new stream of
/// `connection` and runs the rest of the flow by hand. When the relay answers
/// anything but a challenge, that answer is returned at once; otherwise the verdict
/// on the proof. The registration lasts while the returned stream stays open.
pub async fn register_with(
    connection: &quinn::Connection,
    register: ControlMessage,
    prover: &SecretKey,
    exporter_from: &quinn::Connection,
) -> (ControlMessage, quinn::SendStream, quinn::RecvStream) {
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    send.write_all(&register.to_frame()).await.unwrap();
    let answer = tokio::time::timeout(PATIENCE, read_message(&mut recv))
        .await
        .expect("an answer in time")
        .expect("an answer");
    if !matches!(answer, ControlMessage::Challenge { .. }) {
        return (answer, send, recv);
    }
    let mut exporter = [0u8; EXPORTER_LEN];
    exporter_from
        .export_keying_material(&mut exporter, EXPORTER_LABEL, b"")
        .unwrap();
    // The host's machine, started for the prover's key; the `Register` it would
    // send is replaced by the one above, so a test can claim another host id.
    let (expect_challenge, _) = HostRegistration::start(prover, None);
    let (_, proof) = expect_challenge.handle(answer, &exporter).unwrap();
    send.write_all(&proof.to_frame()).await.unwrap();
    let verdict = read_message(&mut recv).await.expect("a verdict");
    (verdict, send, recv)
}

/// Starts a relay with `config` on `addr`, where a relay just stopped: quinn
/// releases the UDP port when its endpoint driver task ends, just after shutdown
/// returns, so the bind is retried briefly, as a restarting service would.
pub async fn respawn_relay(config: &RelayConfig, addr: std::net::SocketAddr) -> Relay {
    let mut config = config.clone();
    config.listen = addr;
    tokio::time::timeout(PATIENCE, async {
        loop {
            match Relay::spawn(config.clone()) {
                Ok(relay) => break relay,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .expect("the relay binds its old address again")
}
