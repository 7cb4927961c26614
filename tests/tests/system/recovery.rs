//! A relay that dies or restarts: hosts and players come back by themselves within
//! seconds, not at the 30 s idle timeout. The relay runs as a real `blindrelayd`
//! process with certificate files, so a restart keeps its URL.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use blindrelay_client::{
    HostAgent, HostState, Player, PlayerConfig, SecretKey, SecureStream, Ticket,
};
use blindrelay_tests::process::{binaries, Proc};
use blindrelay_tests::*;
use tokio::io::AsyncWriteExt;

/// A relay process on a fixed port with certificate files, restartable as the same
/// relay.
struct RelayProcess {
    args: Vec<String>,
    proc: Option<Proc>,
    url: Option<blindrelay_client::RelayUrl>,
    dir: std::path::PathBuf,
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl RelayProcess {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("br-recovery-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) =
            blindrelay_relay::RelayCertificate::self_signed_pem(&["localhost"]).unwrap();
        let cert_path = dir.join("relay.crt");
        let key_path = dir.join("relay.key");
        std::fs::write(&cert_path, cert).unwrap();
        std::fs::write(&key_path, key).unwrap();
        // A port of our own, free for UDP and TCP (the relay listens on both), kept
        // for every restart: outside the kernel's range of ephemeral ports, so no
        // other test's outgoing connection takes its TCP number between restarts.
        let port = (0..1000)
            .map(|_| fastrand::u16(20_000..32_000))
            .find(|&port| {
                UdpSocket::bind(("127.0.0.1", port)).is_ok()
                    && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            })
            .expect("a free port");
        let args = vec![
            "--listen".to_owned(),
            format!("127.0.0.1:{port}"),
            "--cert".to_owned(),
            cert_path.display().to_string(),
            "--key".to_owned(),
            key_path.display().to_string(),
            "--drain-timeout".to_owned(),
            "5s".to_owned(),
        ];
        let mut relay = Self {
            args,
            proc: None,
            url: None,
            dir,
        };
        relay.spawn();
        relay
    }

    fn spawn(&mut self) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let proc = Proc::start(&binaries().join("blindrelayd"), &args);
        // Printed once the relay listens.
        self.url = Some(proc.value("relay url").parse().unwrap());
        self.proc = Some(proc);
    }

    fn url(&self) -> blindrelay_client::RelayUrl {
        self.url.clone().unwrap()
    }

    /// Kills the relay with SIGKILL: no close, no goodbye.
    fn kill(&mut self) {
        let proc = self.proc.take().unwrap();
        proc.signal("KILL");
        drop(proc);
    }

    /// Stops the relay with SIGTERM and waits for it to exit (a drain).
    fn terminate(&mut self) {
        let proc = self.proc.take().unwrap();
        proc.signal("TERM");
        proc.wait_exit();
    }
}

/// Moves `len` bytes through an echo host and back, exactly.
async fn echo_round(session: SecureStream, seed: u64, len: u64) {
    let (mut read, mut write) = tokio::io::split(session);
    let writes = async {
        write_pattern_from(&mut write, &mut Pattern::new(seed), len).await?;
        write.shutdown().await
    };
    let (written, echoed) = tokio::join!(writes, read_pattern(&mut read, seed));
    written.unwrap();
    assert_eq!(echoed.unwrap(), len);
}

/// How long after `since` a new session through the relay first succeeds, trying
/// one every 100 ms.
async fn first_session_after(player: &Player, ticket: &Ticket, since: Instant) -> Duration {
    tokio::time::timeout(PATIENCE, async {
        loop {
            let attempt = tokio::time::timeout(Duration::from_secs(5), player.connect(ticket));
            if let Ok(Ok(session)) = attempt.await {
                echo_round(session, 1, 64 << 10).await;
                return since.elapsed();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("a session through the restarted relay")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_and_players_are_back_within_seconds_of_a_relay_restart() {
    init_tracing();
    let mut relay = RelayProcess::start();
    let url = relay.url();
    // Default host and player settings, as a user runs them.
    let host = HostAgent::start(blindrelay_client::HostConfig::new(
        SecretKey::generate().unwrap(),
        url.clone(),
    ))
    .unwrap();
    wait_for_state(&host, |state| *state == HostState::Registered).await;
    let ticket = host.ticket().clone();
    let _echo = spawn_echo_host(host);
    let player = Player::new(PlayerConfig::new(SecretKey::generate().unwrap()));
    let session = player.connect(&ticket).await.unwrap();
    echo_round(session, 1, 64 << 10).await;

    // Killed and started again at once: the host and the player's shared
    // connection are stale, and find out at their next packet.
    relay.kill();
    relay.spawn();
    assert_eq!(relay.url(), url, "the same relay URL after a restart");
    let restarted = Instant::now();
    let after_kill = first_session_after(&player, &ticket, restarted).await;

    // Stopped cleanly (SIGTERM: a drain) and started again.
    relay.terminate();
    relay.spawn();
    let restarted = Instant::now();
    let after_term = first_session_after(&player, &ticket, restarted).await;

    eprintln!("back after kill -9: {after_kill:?}; after SIGTERM: {after_term:?}");
    // The targets are 3 s and 2 s (docs/operations.md records what this machine
    // measured); the bound here leaves room for a busy machine, and is far below
    // the 30 s idle timeout the ends used to wait for.
    assert!(after_kill < Duration::from_secs(8), "{after_kill:?}");
    assert!(after_term < Duration::from_secs(8), "{after_term:?}");
}
