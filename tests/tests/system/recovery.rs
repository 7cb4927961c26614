//! A relay that dies or restarts: hosts and players come back by themselves within
//! seconds, not at the 30 s idle timeout. The relay runs as a real `blindrelayd`
//! process with certificate files, so a restart keeps its URL.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use blindrelay_client::{HostAgent, HostState, Player, SecretKey, SecureStream, Ticket};
use blindrelay_tests::process::{binaries, keygen, Proc};
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
        // One folder per relay: the tests of one process run side by side.
        let dir = std::env::temp_dir().join(format!(
            "br-recovery-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
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
    // Default host and player settings, as a user runs them, but for punching:
    // on one machine the session would go direct and never meet the restart.
    let mut config =
        blindrelay_client::HostConfig::new(SecretKey::generate().unwrap(), url.clone());
    config.punch = false;
    let host = HostAgent::start(config).unwrap();
    wait_for_state(&host, |state| *state == HostState::Registered).await;
    let ticket = host.ticket().clone();
    let _echo = spawn_echo_host(host);
    let player = Player::new(blindrelay_tests::player_config(
        SecretKey::generate().unwrap(),
    ));
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

/// Bytes of the film the resume tests download.
const FILM: u64 = 200 << 20;

/// A media server in miniature: answers every request with `len` bytes of `seed`'s
/// pattern, as one HTTP response.
async fn serve_film(len: u64, seed: u64) -> std::net::SocketAddr {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if tcp.read_exact(&mut byte).await.is_err() {
                        return;
                    }
                    head.push(byte[0]);
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
                );
                if tcp.write_all(answer.as_bytes()).await.is_ok() {
                    let _ = write_pattern(&mut tcp, seed, len).await;
                }
            });
        }
    });
    addr
}

/// A film downloading with curl through `blindrelay connect` and `blindrelay host`
/// (each given `flags` besides its own), rate-limited so that it spans what the
/// test does to the relay once 16 MiB arrived.
struct Download {
    host: Proc,
    player: Proc,
    curl: std::process::Child,
    out: std::path::PathBuf,
}

async fn start_download(relay: &RelayProcess, flags: &[&str]) -> Download {
    let bin = binaries();
    let url = relay.url().to_string();
    let host_key = relay.dir.join("host.key");
    keygen(&bin, &host_key, "host");
    let media = serve_film(FILM, 27).await.to_string();
    let mut args = vec![
        "host",
        "--key",
        host_key.to_str().unwrap(),
        "--relay",
        &url,
        "--forward",
        &media,
    ];
    args.extend(flags);
    let host = Proc::start(&bin.join("blindrelay"), &args);
    host.value("host id");
    let ticket = host.value("ticket");
    host.wait_log("reachable through the relay");
    let mut args = vec!["connect", &ticket, "--listen", "127.0.0.1:0"];
    args.extend(flags);
    let player = Proc::start(&bin.join("blindrelay"), &args);
    let listen = player.value("listening on");
    let out = relay.dir.join("film.bin");
    let curl = std::process::Command::new("curl")
        .args(["-sS", "--limit-rate", "25M", "-o"])
        .arg(&out)
        .arg(format!("http://{listen}/film"))
        .spawn()
        .expect("curl runs");
    tokio::time::timeout(PATIENCE, async {
        while std::fs::metadata(&out).map_or(0, |m| m.len()) < 16 << 20 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the download starts");
    Download {
        host,
        player,
        curl,
        out,
    }
}

impl Download {
    /// Waits (at most `patience`) for curl to exit: its status.
    async fn curl_exit(self, patience: Duration) -> (std::process::ExitStatus, Proc, Proc) {
        let Download {
            host,
            player,
            mut curl,
            ..
        } = self;
        let status =
            tokio::time::timeout(patience, tokio::task::spawn_blocking(move || curl.wait()))
                .await
                .expect("curl ends")
                .unwrap()
                .unwrap();
        (status, host, player)
    }
}

/// The download goes on across `event` (done to the relay mid-film): curl must
/// exit 0 with every byte, and both ends say they resumed.
async fn a_download_survives(event: impl FnOnce(&mut RelayProcess)) {
    let mut relay = RelayProcess::start();
    let download = start_download(&relay, &[]).await;
    let out = download.out.clone();

    event(&mut relay);

    let (status, host, player) = download.curl_exit(Duration::from_secs(90)).await;
    if !status.success() {
        let (player, host) = (player.interrupt(), host.interrupt());
        panic!(
            "curl: {status}\nplayer:\n{}\nhost:\n{}",
            player.join("\n"),
            host.join("\n")
        );
    }
    let got = std::fs::read(&out).unwrap();
    let mut expected = vec![0u8; FILM as usize];
    Pattern::new(27).fill(&mut expected);
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "the film is byte-exact");
    let resumed = player.wait_log("session resumed");
    println!("player: {resumed}");
    host.wait_log("session resumed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_goes_on_when_the_relay_is_killed_and_started_again() {
    init_tracing();
    a_download_survives(|relay| {
        relay.kill();
        relay.spawn();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_goes_on_across_a_drain_shorter_than_it() {
    init_tracing();
    // The drain's deadline (5 s) ends the session mid-film; the relay that starts
    // next takes it on.
    a_download_survives(|relay| {
        relay.terminate();
        relay.spawn();
    })
    .await;
}

/// `--resume-window` on both ends: a relay that does not come back ends the
/// download once the window is over, each end saying why, and well before the
/// default 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_ends_at_the_resume_window_the_flags_set() {
    init_tracing();
    let mut relay = RelayProcess::start();
    let download = start_download(&relay, &["--resume-window", "2s"]).await;
    relay.kill();
    let killed = Instant::now();
    let (status, host, player) = download.curl_exit(PATIENCE).await;
    let took = killed.elapsed();
    assert!(!status.success(), "curl cannot have every byte");
    // Noticing the relay gone (the 5 s idle timeout), then the 2 s window; the
    // default window would take 35 s.
    assert!(
        took < Duration::from_secs(12),
        "ended {took:?} after the kill"
    );
    let said = "could not be reached again within 2s";
    let told = [&player, &host].map(|end| end.wait_log_within(said, PATIENCE).is_some());
    if told != [true, true] {
        let (player, host) = (player.interrupt(), host.interrupt());
        panic!(
            "told (player, host): {told:?}\nplayer:\n{}\nhost:\n{}",
            player.join("\n"),
            host.join("\n")
        );
    }
}
