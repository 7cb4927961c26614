//! The quick start, as a user runs it: real `blindrelayd` and `blindrelay` processes,
//! an HTTP media service with range requests behind the host, HTTP clients in front
//! of the player, Ctrl-C, and a relay restart with the same certificate files; the
//! mistakes a new user makes (key files of the wrong kind, a README followed literally).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use blindrelay_tests::process::{binaries, Proc};
use blindrelay_tests::Pattern;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A minimal HTTP/1.1 file server over the folder `root` with `Range: bytes=a-b`
/// support, standing in for a media server's HTTP port (or `python3 -m http.server
/// --directory root`): it serves the files in `root` and nothing outside it.
async fn media_server(root: PathBuf) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            let root = root.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let request = String::from_utf8_lossy(&request).to_string();
                let name = request
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("/")
                    .trim_start_matches('/')
                    .to_owned();
                let file = (!name.split('/').any(|part| part == ".." || part.is_empty()))
                    .then(|| std::fs::read(root.join(&name)).ok())
                    .flatten();
                let Some(file) = file else {
                    let _ = tcp
                        .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .await;
                    let _ = tcp.shutdown().await;
                    return;
                };
                let request = request.to_ascii_lowercase();
                let range = request.lines().find_map(|line| {
                    let spec = line.strip_prefix("range: bytes=")?;
                    let (a, b) = spec.trim().split_once('-')?;
                    Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?))
                });
                let (status, body, extra) = match range {
                    Some((a, b)) => (
                        "206 Partial Content",
                        &file[a..=b],
                        format!("Content-Range: bytes {a}-{b}/{}\r\n", file.len()),
                    ),
                    None => ("200 OK", &file[..], String::new()),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
                    body.len()
                );
                let _ = tcp.write_all(head.as_bytes()).await;
                let _ = tcp.write_all(body).await;
                let _ = tcp.shutdown().await;
            });
        }
    });
    addr
}

/// A `media` folder in `dir` holding `movie.mkv`, served by a [`media_server`].
async fn serve_movie(dir: &Path, movie: &[u8]) -> SocketAddr {
    let media = dir.join("media");
    std::fs::create_dir_all(&media).unwrap();
    std::fs::write(media.join("movie.mkv"), movie).unwrap();
    media_server(media).await
}

/// GETs `/movie.mkv` through `addr`, optionally a byte range; returns status and body.
async fn get(addr: SocketAddr, range: Option<(usize, usize)>) -> (String, Vec<u8>) {
    get_path(addr, "/movie.mkv", range).await
}

/// GETs `path` through `addr`, optionally a byte range; returns status and body.
async fn get_path(
    addr: SocketAddr,
    path: &str,
    range: Option<(usize, usize)>,
) -> (String, Vec<u8>) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let range = range
        .map(|(a, b)| format!("Range: bytes={a}-{b}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: media\r\n{range}\r\n");
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tcp.read_to_end(&mut response).await.unwrap();
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("HTTP head");
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let status = head.lines().next().unwrap_or_default().to_owned();
    (status, response[split + 4..].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_start_works_as_documented() {
    let bin = binaries();
    let dir = std::env::temp_dir().join(format!("blindrelay-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Keys in a folder of their own, apart from the folder the service serves.
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    // The relay keeps its certificate in a state folder from the first start on.
    let state = dir.join("relay-state");

    let mut movie = vec![0u8; 24 << 20];
    Pattern::new(42).fill(&mut movie);
    let media = serve_movie(&dir, &movie).await;

    // 1. The relay.
    let relay_args = |listen: &str| {
        vec![
            "--listen".to_owned(),
            listen.to_owned(),
            "--state-dir".to_owned(),
            state.display().to_string(),
        ]
    };
    let args = relay_args("127.0.0.1:0");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let relay = Proc::start(&bin.join("blindrelayd"), &args);
    let url = relay.value("relay url");
    assert!(
        url.starts_with("blindrelay://127.0.0.1:") && url.contains("?pin="),
        "{url}"
    );

    // 2. A host identity, private to its owner.
    let host_key = keys.join("host.key");
    let keygen = Command::new(bin.join("blindrelay"))
        .args(["keygen", "--out", host_key.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(keygen.status.success());
    let keygen_out = String::from_utf8(keygen.stdout).unwrap();
    let host_id = keygen_out
        .trim()
        .strip_prefix("host id: ")
        .unwrap()
        .to_owned();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&host_key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let again = Command::new(bin.join("blindrelay"))
        .args(["keygen", "--out", host_key.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        !again.status.success(),
        "keygen never overwrites a key silently"
    );

    // 3. The host, forwarding to the media server, its pid in a file for signals.
    let forward = media.to_string();
    let pid_file = dir.join("host.pid");
    let host = Proc::start(
        &bin.join("blindrelay"),
        &[
            "host",
            "--key",
            host_key.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
            "--relay",
            &url,
            "--forward",
            &forward,
        ],
    );
    assert_eq!(host.value("host id"), host_id);
    let ticket = host.value("ticket");
    host.wait_log("reachable through the relay");
    let pid = std::fs::read_to_string(&pid_file).expect("pid file written");
    assert_eq!(pid.trim(), host.pid().to_string());

    // 4. The player.
    let player = Proc::start(
        &bin.join("blindrelay"),
        &["connect", &ticket, "--listen", "127.0.0.1:0"],
    );
    let listen: SocketAddr = player.value("listening on").parse().unwrap();

    // Whole file, a range, and several at once.
    let (status, body) = get(listen, None).await;
    assert!(status.contains("200"), "{status}");
    assert!(body == movie, "whole file byte for byte");
    // What the ticket reaches is the served folder, and no key is in it.
    for path in [
        "/host.key",
        "/keys/host.key",
        "/../keys/host.key",
        "/relay.key",
    ] {
        let (status, _) = get_path(listen, path, None).await;
        assert!(status.contains("404"), "{path}: {status}");
    }
    let (status, body) = get(listen, Some((1_000_000, 1_999_999))).await;
    assert!(status.contains("206"), "{status}");
    assert_eq!(body, movie[1_000_000..2_000_000]);
    let many = (0..8u64).map(|i| {
        let (a, b) = (
            (i as usize) << 20,
            ((i as usize + 1) << 20) - 1 + i as usize,
        );
        tokio::spawn(async move { (a, b, get(listen, Some((a, b))).await) })
    });
    for task in many {
        let (a, b, (status, body)) = task.await.unwrap();
        assert!(status.contains("206"));
        assert_eq!(body, movie[a..=b]);
    }

    // 5. The relay restarts with the same state folder and address: the host
    //    registers again by itself and the same player keeps working.
    let port = url
        .trim_start_matches("blindrelay://127.0.0.1:")
        .split('?')
        .next()
        .unwrap()
        .to_owned();
    relay.interrupt();
    // The relay drains on Ctrl-C: the host is told it is going away.
    host.wait_log("the relay is going away");
    let args = relay_args(&format!("127.0.0.1:{port}"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let relay = Proc::start(&bin.join("blindrelayd"), &args);
    assert_eq!(
        relay.value("relay url"),
        url,
        "the kept certificate, the same URL"
    );
    host.wait_log("reachable through the relay");
    let (status, body) = get(listen, Some((5, 104))).await;
    assert!(status.contains("206"), "{status}");
    assert_eq!(body, movie[5..105]);

    // 6. Ctrl-C ends each of them cleanly, and the host removes its pid file.
    player.interrupt();
    host.interrupt();
    assert!(!pid_file.exists(), "pid file removed at exit");
    relay.interrupt();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A fresh host key file in `dir`, made by `blindrelay keygen`.
fn keygen(bin: &Path, dir: &Path) -> PathBuf {
    let key = dir.join("host.key");
    blindrelay_tests::process::keygen(bin, &key, "host");
    key
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_only_host_works_through_the_cli() {
    let bin = binaries();
    let dir = std::env::temp_dir().join(format!("blindrelay-cli-direct-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let host_key = keygen(&bin, &dir);
    let mut movie = vec![0u8; 4 << 20];
    Pattern::new(7).fill(&mut movie);
    let media = serve_movie(&dir, &movie).await;

    // No relay anywhere: the host listens directly and Enable Relay is off. The
    // service is named as people name it, by host name.
    let forward = format!("localhost:{}", media.port());
    let host = Proc::start(
        &bin.join("blindrelay"),
        &[
            "host",
            "--key",
            host_key.to_str().unwrap(),
            "--forward",
            &forward,
            "--direct",
            "127.0.0.1:0",
            "--no-relay",
        ],
    );
    host.value("host id");
    let ticket = host.value("ticket");
    let direct: SocketAddr = host.value("direct").parse().unwrap();
    assert_ne!(direct.port(), 0);
    assert_eq!(host.value("relay"), "disabled");
    let parsed: blindrelay_client::Ticket = ticket.parse().unwrap();
    assert_eq!(parsed.relay(), None);
    assert_eq!(parsed.direct_addrs(), [direct]);

    let player = Proc::start(
        &bin.join("blindrelay"),
        &[
            "connect",
            &ticket,
            "--listen",
            "127.0.0.1:0",
            "--path",
            "direct",
        ],
    );
    let listen: SocketAddr = player.value("listening on").parse().unwrap();
    let (status, body) = get(listen, None).await;
    assert!(status.contains("200"), "{status}");
    assert!(body == movie, "whole file byte for byte");
    let (status, body) = get(listen, Some((1000, 1999))).await;
    assert!(status.contains("206"), "{status}");
    assert_eq!(body, movie[1000..2000]);
    player.wait_log("session open");

    // SIGUSR2 asks for a relay this host does not have: it says so.
    host.signal("USR2");
    host.wait_log("there is no relay to enable");

    // A player that asks for the relay path with this ticket is refused at start.
    let err = refused(
        &bin.join("blindrelay"),
        &[
            "connect",
            &ticket,
            "--listen",
            "127.0.0.1:0",
            "--path",
            "relay",
        ],
    );
    assert!(err.contains("this ticket names no relay"), "{err}");

    player.interrupt();
    host.interrupt();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enable_relay_switches_on_a_running_host_by_signal() {
    let bin = binaries();
    let dir = std::env::temp_dir().join(format!("blindrelay-cli-switch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let host_key = keygen(&bin, &dir);
    let movie = vec![42u8; 100_000];
    let media = serve_movie(&dir, &movie).await;

    let relay = Proc::start(&bin.join("blindrelayd"), &["--listen", "127.0.0.1:0"]);
    let url = relay.value("relay url");
    let forward = media.to_string();
    let host = Proc::start(
        &bin.join("blindrelay"),
        &[
            "host",
            "--key",
            host_key.to_str().unwrap(),
            "--relay",
            &url,
            "--forward",
            &forward,
        ],
    );
    host.value("host id");
    let ticket = host.value("ticket");
    host.wait_line("relay: registered");
    // This ticket has no direct address: `--path direct` is refused at start.
    let err = refused(
        &bin.join("blindrelay"),
        &[
            "connect",
            &ticket,
            "--listen",
            "127.0.0.1:0",
            "--path",
            "direct",
        ],
    );
    assert!(err.contains("this ticket has no direct address"), "{err}");
    let player = Proc::start(
        &bin.join("blindrelay"),
        &[
            "connect",
            &ticket,
            "--listen",
            "127.0.0.1:0",
            "--path",
            "relay",
        ],
    );
    let listen: SocketAddr = player.value("listening on").parse().unwrap();
    let (status, body) = get(listen, Some((0, 99))).await;
    assert!(status.contains("206"), "{status}");
    assert_eq!(body, movie[..100]);

    // SIGUSR1: Enable Relay off. The player is told why its sessions cannot open.
    host.signal("USR1");
    host.wait_line("relay: disabled");
    relay.wait_log("host unregistered");
    let mut tcp = TcpStream::connect(listen).await.unwrap();
    // The player resets the connection as soon as the session is refused, which
    // may be before this request is written.
    let _ = tcp
        .write_all(b"GET /movie.mkv HTTP/1.1\r\nHost: media\r\n\r\n")
        .await;
    let mut response = Vec::new();
    let _ = tcp.read_to_end(&mut response).await;
    assert!(response.is_empty(), "no session, so no answer");
    player.wait_log("host not reachable: relay disabled or host offline");

    // SIGUSR2: on again, and the same player gets through.
    host.signal("USR2");
    host.wait_line("relay: registered");
    let (status, body) = get(listen, Some((5, 104))).await;
    assert!(status.contains("206"), "{status}");
    assert_eq!(body, movie[5..105]);

    player.interrupt();
    host.interrupt();
    relay.interrupt();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_requires_tokens_admits_only_hosts_with_one() {
    let bin = binaries();
    let dir = std::env::temp_dir().join(format!("blindrelay-cli-tokens-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let blindrelay = |args: &[&str]| {
        let out = Command::new(bin.join("blindrelay"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "blindrelay {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };

    // The operator's issuer key: private signing key, public key file for relays.
    let issuer = dir.join("issuer.key");
    let out = blindrelay(&["token", "keygen", "--out", issuer.to_str().unwrap()]);
    assert!(out.starts_with("issuer public key: "), "{out}");
    let issuer_pub = dir.join("issuer.key.pub");
    assert!(std::fs::read_to_string(&issuer_pub).unwrap().contains(
        out.lines()
            .next()
            .unwrap()
            .trim_start_matches("issuer public key: ")
    ));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&issuer).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // An open relay says so loudly; this one requires tokens.
    let open = Proc::start(&bin.join("blindrelayd"), &["--listen", "127.0.0.1:0"]);
    open.wait_log("OPEN RELAY");
    drop(open);
    let relay = Proc::start(
        &bin.join("blindrelayd"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--token-issuer-pub",
            issuer_pub.to_str().unwrap(),
        ],
    );
    let url = relay.value("relay url");

    let host_key = dir.join("host.key");
    let host_id = blindrelay(&["keygen", "--out", host_key.to_str().unwrap()])
        .trim()
        .strip_prefix("host id: ")
        .unwrap()
        .to_owned();
    let token = blindrelay(&[
        "token",
        "issue",
        "--issuer-key",
        issuer.to_str().unwrap(),
        "--host-id",
        &host_id,
        "--ttl",
        "1h",
    ]);
    let token = token.trim();
    assert!(token.starts_with("brk"), "{token}");
    // A tier other than the default one needs the relay's config: the issuer is told.
    let free = Command::new(bin.join("blindrelay"))
        .args(["token", "issue", "--issuer-key", issuer.to_str().unwrap()])
        .args(["--host-id", &host_id, "--ttl", "1h", "--tier", "free"])
        .output()
        .unwrap();
    assert!(free.status.success());
    let note = String::from_utf8(free.stderr).unwrap();
    assert!(note.contains("[tiers.free]"), "{note}");
    assert!(String::from_utf8(free.stdout).unwrap().starts_with("brk"));
    // Given the relay's config, a tier it does not define is refused, naming the
    // ones it does; one it defines is issued.
    let relay_config = dir.join("relay-tiers.toml");
    std::fs::write(&relay_config, "[tiers.pro]\nrate = \"1Gbit\"\n").unwrap();
    let refused = Command::new(bin.join("blindrelay"))
        .args(["token", "issue", "--issuer-key", issuer.to_str().unwrap()])
        .args(["--host-id", &host_id, "--ttl", "1h", "--tier", "free"])
        .args(["--relay-config", relay_config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(refused.stdout.is_empty(), "no token printed");
    let err = String::from_utf8(refused.stderr).unwrap();
    assert!(
        err.contains("no tier \"free\"") && err.contains("default, pro"),
        "{err}"
    );
    let pro = Command::new(bin.join("blindrelay"))
        .args(["token", "issue", "--issuer-key", issuer.to_str().unwrap()])
        .args(["--host-id", &host_id, "--ttl", "1h", "--tier", "pro"])
        .args(["--relay-config", relay_config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(pro.status.success());
    assert!(String::from_utf8(pro.stdout).unwrap().starts_with("brk"));

    let host_args = |token: Option<&str>| {
        let mut args = vec![
            "host".to_owned(),
            "--key".to_owned(),
            host_key.display().to_string(),
            "--relay".to_owned(),
            url.clone(),
            "--forward".to_owned(),
            "127.0.0.1:9".to_owned(),
        ];
        if let Some(token) = token {
            args.extend(["--token".to_owned(), token.to_owned()]);
        }
        args
    };
    let relay_states = |host: &Proc| loop {
        let state = host.value("relay");
        if !state.starts_with("connecting") {
            break state;
        }
    };

    // Without a token the host is refused and says why; it waits for a token.
    let args = host_args(None);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let refused = Proc::start(&bin.join("blindrelay"), &args);
    refused.value("host id");
    refused.value("ticket");
    let state = relay_states(&refused);
    assert!(
        state.starts_with("token required") && state.contains("--token-file FILE"),
        "{state}"
    );

    // With its token it registers.
    let args = host_args(Some(token));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let host = Proc::start(&bin.join("blindrelay"), &args);
    host.value("host id");
    host.value("ticket");
    assert_eq!(relay_states(&host), "registered");

    // A player key for the authorized players list.
    let player_key = dir.join("player.key");
    let out = blindrelay(&[
        "keygen",
        "--out",
        player_key.to_str().unwrap(),
        "--role",
        "player",
    ]);
    let listed: blindrelay_client::PublicKey = out
        .trim()
        .strip_prefix("player key: ")
        .unwrap()
        .parse()
        .unwrap();
    let key =
        blindrelay_client::SecretKey::from_key_file(&std::fs::read_to_string(&player_key).unwrap())
            .unwrap();
    assert_eq!(listed, key.public_key());
    host.interrupt();

    // A token file, read again when it changes: an expired token ends only the relay
    // registration (the host goes on, direct listener and all), and a renewed one
    // brings it back without a restart.
    let token_file = dir.join("host.token");
    let issue_for = |ttl: &str| {
        blindrelay(&[
            "token",
            "issue",
            "--issuer-key",
            issuer.to_str().unwrap(),
            "--host-id",
            &host_id,
            "--ttl",
            ttl,
        ])
    };
    std::fs::write(&token_file, issue_for("3s").trim()).unwrap();
    let renewing = Proc::start(
        &bin.join("blindrelay"),
        &[
            "host",
            "--key",
            host_key.to_str().unwrap(),
            "--relay",
            &url,
            "--direct",
            "127.0.0.1:0",
            "--forward",
            "127.0.0.1:9",
            "--token-file",
            token_file.to_str().unwrap(),
        ],
    );
    renewing.wait_line("relay: registered");
    renewing.wait_line("relay: token expired");
    std::fs::write(&token_file, issue_for("1h").trim()).unwrap();
    let renewed = renewing.wait_line_starting("token: renewed, expires in ");
    assert!(renewed.ends_with(" min"), "{renewed}");
    // A fresh one-hour token is not "expiring" the moment it arrives.
    let between = renewing.lines_until("relay: registered");
    assert!(
        !between
            .iter()
            .any(|line| line.starts_with("token: expires in")),
        "{between:?}"
    );
    // A token that expires sooner than the one in use is said to.
    std::fs::write(&token_file, issue_for("30m").trim()).unwrap();
    renewing.wait_line_starting("token: replaced by one that expires sooner, in ");
    renewing.interrupt();

    relay.interrupt();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The relay's settings come from a flag, else its environment variable, else the
/// config file: shown for a boolean (which a flag or variable can turn off) and a
/// value, as `--check-config` prints them.
#[test]
fn relay_flags_beat_the_environment_which_beats_the_file() {
    let bin = binaries();
    let dir = std::env::temp_dir().join(format!("blindrelay-merge-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("relay.toml");
    std::fs::write(&file, "log_full_ip = true\ndrain_timeout = \"1m\"\n").unwrap();
    let check = |flags: &[&str], env: &[(&str, &str)]| {
        let mut command = Command::new(bin.join("blindrelayd"));
        command
            .args(["--config", file.to_str().unwrap(), "--check-config"])
            .args(flags)
            .env_remove("BLINDRELAY_LOG_FULL_IP")
            .env_remove("BLINDRELAY_DRAIN_TIMEOUT");
        for (name, value) in env {
            command.env(name, value);
        }
        let output = command.output().unwrap();
        let stdout = String::from_utf8(output.stdout).unwrap();
        assert!(output.status.success(), "{flags:?} {env:?}: {stdout}");
        let line = |key: &str| {
            stdout
                .lines()
                .find_map(|line| line.strip_prefix(&format!("{key} = ")))
                .unwrap_or_else(|| panic!("{key} printed: {stdout}"))
                .to_owned()
        };
        (line("log_full_ip"), line("drain_timeout"))
    };
    let file_only = check(&[], &[]);
    assert_eq!(file_only, ("true".into(), "\"1m\"".into()));
    let env = [
        ("BLINDRELAY_LOG_FULL_IP", "false"),
        ("BLINDRELAY_DRAIN_TIMEOUT", "10s"),
    ];
    assert_eq!(check(&[], &env), ("false".into(), "\"10s\"".into()));
    assert_eq!(
        check(&["--log-full-ip=true", "--drain-timeout", "250ms"], &env),
        ("true".into(), "\"250ms\"".into())
    );
    assert_eq!(
        check(&["--log-full-ip=false"], &[]),
        ("false".into(), "\"1m\"".into()),
        "a flag turns off the file's true"
    );

    let refused = Command::new(bin.join("blindrelayd"))
        .args(["--check-config", "--drain-timeout", "10M"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8(refused.stderr).unwrap();
    assert!(stderr.contains("ms, s, m, h or d"), "{stderr}");
    assert!(stderr.contains("--drain-timeout"), "{stderr}");

    // The same bad value from the environment is blamed on the variable, not on a
    // flag nobody typed.
    let refused = Command::new(bin.join("blindrelayd"))
        .arg("--check-config")
        .env("BLINDRELAY_DRAIN_TIMEOUT", "10M")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8(refused.stderr).unwrap();
    assert!(
        stderr.contains("in the environment variable BLINDRELAY_DRAIN_TIMEOUT"),
        "{stderr}"
    );
    assert!(stderr.contains("ms, s, m, h or d"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Runs `bin` with `args`, expects it to fail at start, and returns its stderr. A
/// command that keeps running instead is killed after a generous deadline.
fn refused(bin: &Path, args: &[&str]) -> String {
    let mut child = Command::new(bin)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + blindrelay_tests::PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?} kept running instead of refusing to start");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{args:?} refused: {stderr}");
    stderr
}

/// Every key file says what it is, and each command refuses a file of another kind
/// with a message that names the file it wants, before it does anything else.
#[test]
fn key_files_of_the_wrong_kind_are_refused_naming_the_right_one() {
    let bin = binaries();
    let dir = std::env::temp_dir().join(format!("blindrelay-cli-kinds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let issuer = dir.join("issuer.key");
    let out = Command::new(bin.join("blindrelay"))
        .args(["token", "keygen", "--out", issuer.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let issuer_pub = dir.join("issuer.key.pub");
    let host_key = keygen(&bin, &dir);
    let (issuer, issuer_pub, host_key) = (
        issuer.to_str().unwrap(),
        issuer_pub.to_str().unwrap(),
        host_key.to_str().unwrap(),
    );
    let host_id =
        blindrelay_client::SecretKey::from_key_file(&std::fs::read_to_string(host_key).unwrap())
            .unwrap()
            .host_id()
            .to_string();

    // A relay given the issuer's secret key (or a host key) as its issuer list.
    let relay = bin.join("blindrelayd");
    for (wrong, is) in [
        (issuer, "token issuer's secret signing key"),
        (host_key, "host or player secret key"),
    ] {
        let err = refused(
            &relay,
            &["--listen", "127.0.0.1:0", "--token-issuer-pub", wrong],
        );
        assert!(err.contains(is), "{err}");
        assert!(err.contains("give FILE.pub"), "{err}");
    }

    // A token signed with the public key file (or a host key).
    let cli = bin.join("blindrelay");
    for (wrong, is) in [
        (issuer_pub, "token issuer's public key file"),
        (host_key, "host or player secret key"),
    ] {
        let err = refused(
            &cli,
            &[
                "token",
                "issue",
                "--issuer-key",
                wrong,
                "--host-id",
                &host_id,
                "--ttl",
                "1h",
            ],
        );
        assert!(err.contains(is), "{err}");
        assert!(err.contains("(FILE itself, not FILE.pub)"), "{err}");
    }

    // A host whose key is one of the issuer's files.
    for (wrong, is) in [
        (issuer_pub, "token issuer's public key file"),
        (issuer, "token issuer's secret signing key"),
    ] {
        let err = refused(
            &cli,
            &[
                "host",
                "--key",
                wrong,
                "--forward",
                "127.0.0.1:9",
                "--direct",
                "127.0.0.1:0",
            ],
        );
        assert!(err.contains(is), "{err}");
        assert!(err.contains("blindrelay keygen --out FILE"), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A host owner pastes the line the player printed into authorized_players; a player
/// without `--key` is warned that its key will not last; the host logs the whole key
/// of a player it refused, so its owner can add it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorized_players_take_the_printed_line_and_refusals_name_the_key() {
    let bin = binaries();
    let dir = std::env::temp_dir().join(format!("blindrelay-cli-authz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let host_key = keygen(&bin, &dir);
    let movie = vec![9u8; 10_000];
    let media = serve_movie(&dir, &movie).await;

    let player_key = dir.join("player.key");
    let out = Command::new(bin.join("blindrelay"))
        .args([
            "keygen",
            "--role",
            "player",
            "--out",
            player_key.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    assert!(printed.starts_with("player key: "), "{printed}");
    let authorized = dir.join("authorized_players");
    std::fs::write(&authorized, format!("# the laptop\n{printed}")).unwrap();

    let forward = media.to_string();
    let host = Proc::start(
        &bin.join("blindrelay"),
        &[
            "host",
            "--key",
            host_key.to_str().unwrap(),
            "--forward",
            &forward,
            "--direct",
            "127.0.0.1:0",
            "--authorized-players",
            authorized.to_str().unwrap(),
        ],
    );
    host.value("host id");
    let ticket = host.value("ticket");
    host.value("direct");
    let player_args = |key: Option<&Path>| {
        let mut args = vec![
            "connect".to_owned(),
            ticket.clone(),
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--path".to_owned(),
            "direct".to_owned(),
        ];
        if let Some(key) = key {
            args.extend(["--key".to_owned(), key.display().to_string()]);
        }
        args
    };

    // The listed player is served.
    let args = player_args(Some(&player_key));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let listed = Proc::start(&bin.join("blindrelay"), &args);
    let listen: SocketAddr = listed.value("listening on").parse().unwrap();
    assert_eq!(
        format!("player key: {}\n", listed.value("player key")),
        printed
    );
    let (status, body) = get(listen, None).await;
    assert!(status.contains("200"), "{status}");
    assert_eq!(body, movie);

    // A player with a key of the moment is warned, and refused by the host, whose
    // log names its whole key.
    let args = player_args(None);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let stranger = Proc::start(&bin.join("blindrelay"), &args);
    let listen: SocketAddr = stranger.value("listening on").parse().unwrap();
    let key = stranger.value("player key");
    let warning = stranger.wait_log("ephemeral");
    assert!(
        warning.contains("blindrelay keygen --role player"),
        "{warning}"
    );
    let mut tcp = TcpStream::connect(listen).await.unwrap();
    tcp.write_all(b"GET /movie.mkv HTTP/1.1\r\nHost: media\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    let _ = tcp.read_to_end(&mut response).await;
    assert!(response.is_empty(), "refused, so no answer");
    host.wait_log(&format!("player={key}"));

    stranger.interrupt();
    listed.interrupt();
    host.interrupt();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The README's quick start, read as a user reads it: the file server serves a
/// folder of its own and no key is written into it; the file the player fetches is
/// made first; the host is signalled through its pid file, never a process search;
/// the programs are put on the PATH before an example calls them by name.
#[test]
fn the_readme_quick_start_exposes_no_key_and_fetches_a_file_it_made() {
    let readme = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap()
            .join("README.md"),
    )
    .unwrap();
    let mut commands = Vec::new();
    let mut in_code = false;
    for line in readme.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        } else if in_code && !line.trim_start().starts_with('#') {
            commands.push(line);
        }
    }
    let words = |line: &str| -> Vec<String> {
        line.split('#')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .map(|word| word.trim_matches(|c| c == '"' || c == '\'').to_owned())
            .collect()
    };

    let served = commands
        .iter()
        .find(|line| line.contains("http.server"))
        .map(|line| words(line))
        .and_then(|words| {
            let at = words.iter().position(|word| word == "--directory")?;
            words.get(at + 1).cloned()
        })
        .expect("the file server is given a folder of its own (--directory)");
    let served_prefix = format!("{}/", served.trim_end_matches('/'));
    // Every key and certificate of the quick start lies in a folder that is not the
    // served one.
    let quick_start = &readme[readme.find("## Quick start").unwrap()..];
    let quick_start = &quick_start[..quick_start[3..].find("\n## ").unwrap()];
    // Its commands, not the prose between them.
    let mut in_code = false;
    let quick_start: String = quick_start
        .lines()
        .filter(|line| {
            if line.starts_with("```") {
                in_code = !in_code;
                return false;
            }
            in_code
        })
        .collect::<Vec<_>>()
        .join("\n");
    for needle in ["keygen --out", "-keyout", "--cert", "--key", "--state-dir"] {
        for (at, _) in quick_start.match_indices(needle) {
            let path = words(&quick_start[at + needle.len()..])
                .into_iter()
                .next()
                .unwrap_or_default();
            assert!(
                path.contains('/') && !path.starts_with(&served_prefix),
                "{needle} {path}: keys belong in a folder of their own"
            );
        }
    }

    // `curl -o NAME URL/FILE` fetches a file an earlier command wrote into the
    // served folder.
    let fetch = commands
        .iter()
        .position(|line| line.contains("curl -o"))
        .expect("the quick start fetches a file");
    let file = commands[fetch]
        .split_whitespace()
        .find(|word| word.starts_with("http://"))
        .and_then(|url| url.rsplit('/').next())
        .unwrap()
        .to_owned();
    assert!(
        commands[..fetch]
            .iter()
            .any(|line| line.contains(&format!("> {served_prefix}{file}"))),
        "{file} is made in {served} before it is fetched"
    );

    // Signals go to the pid the host wrote, not to whatever a pattern matches.
    assert!(!readme.contains("pgrep"), "no process search");
    let pid_file = commands
        .iter()
        .flat_map(|line| {
            let words = words(line);
            words
                .iter()
                .position(|word| word == "--pid-file")
                .and_then(|at| words.get(at + 1).cloned())
        })
        .next()
        .expect("the host is started with --pid-file");
    assert!(readme.contains(&format!("kill -USR1 \"$(cat {pid_file})\"")));

    // Bare `blindrelay` only after the README says how to install it.
    let install = readme
        .find("cargo install --locked --path client")
        .expect("says how to put blindrelay on the PATH");
    let install = readme[..install].lines().count();
    let mut in_code = false;
    let first_bare = readme
        .lines()
        .position(|line| {
            if line.starts_with("```") {
                in_code = !in_code;
            }
            in_code && line.starts_with("blindrelay")
        })
        .expect("examples call blindrelay");
    assert!(
        install < first_bare,
        "installed before it is called by name"
    );
}

/// A relay URL without the pin of a self-signed relay: the host does not just retry
/// in silence, it says the certificate is not trusted and what to do. And a local
/// service that does not answer is reported at start.
#[test]
fn a_relay_url_without_its_pin_and_a_silent_service_are_explained_at_start() {
    let bin = binaries();
    let relay = Proc::start(&bin.join("blindrelayd"), &["--listen", "127.0.0.1:0"]);
    let url = relay.value("relay url");
    let unpinned = url.split('?').next().unwrap().to_owned();
    let dir = std::env::temp_dir().join(format!("blindrelay-unpinned-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = dir.join("host.key");
    let keygen = Command::new(bin.join("blindrelay"))
        .args(["keygen", "--out", key.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(keygen.status.success());
    let host = Proc::start(
        &bin.join("blindrelay"),
        &[
            "host",
            "--key",
            key.to_str().unwrap(),
            "--relay",
            &unpinned,
            "--forward",
            "127.0.0.1:9",
        ],
    );
    host.value("host id");
    host.value("ticket");
    // Nothing listens on port 9 here: the owner is told at start, not by players.
    host.wait_log("the local service does not answer");
    let state = loop {
        let state = host.value("relay");
        if !state.starts_with("connecting") {
            break state;
        }
    };
    assert!(
        state.starts_with("relay certificate not trusted") && state.contains("?pin="),
        "{state}"
    );
    host.interrupt();
    // The pin of another certificate (the relay restarted without its state folder,
    // say): said as such, with what to do, not retried in silence.
    let other = Proc::start(&bin.join("blindrelayd"), &["--listen", "127.0.0.1:0"]);
    let other_pin = other
        .value("relay url")
        .split_once('?')
        .unwrap()
        .1
        .to_owned();
    other.interrupt();
    let repinned = format!("{unpinned}?{other_pin}");
    let host = Proc::start(
        &bin.join("blindrelay"),
        &[
            "host",
            "--key",
            key.to_str().unwrap(),
            "--relay",
            &repinned,
            "--forward",
            "127.0.0.1:9",
        ],
    );
    host.value("host id");
    host.value("ticket");
    let state = loop {
        let state = host.value("relay");
        if !state.starts_with("connecting") {
            break state;
        }
    };
    assert!(
        state.starts_with("relay certificate does not match the pin")
            && state.contains("--state-dir"),
        "{state}"
    );
    host.interrupt();
    relay.interrupt();
    let _ = std::fs::remove_dir_all(&dir);
}

/// GETs `/movie.mkv` through the player at `listen` and reads to the end of the
/// connection; returns how the read ended and what arrived.
async fn get_to_the_end(listen: SocketAddr) -> (std::io::Result<usize>, Vec<u8>) {
    let mut tcp = TcpStream::connect(listen).await.unwrap();
    tcp.write_all(b"GET /movie.mkv HTTP/1.1\r\nHost: media\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    let read = tokio::time::timeout(blindrelay_tests::PATIENCE, tcp.read_to_end(&mut reply))
        .await
        .expect("the player answers in time");
    (read, reply)
}

/// Starts `blindrelay host` with a fresh key on `relay_url`, forwarding to
/// `forward`, and waits until it is registered; returns it and its ticket.
fn host_forwarding_to(bin: &Path, dir: &Path, relay_url: &str, forward: &str) -> (Proc, String) {
    // A key of its own each time: keygen never overwrites.
    let dir = dir.join(format!("host-{}", fastrand::u32(..)));
    std::fs::create_dir_all(&dir).unwrap();
    let key = keygen(bin, &dir);
    let host = Proc::start(
        &bin.join("blindrelay"),
        &[
            "host",
            "--key",
            key.to_str().unwrap(),
            "--relay",
            relay_url,
            "--forward",
            forward,
        ],
    );
    host.value("host id");
    let ticket = host.value("ticket");
    host.wait_line("relay: registered");
    (host, ticket)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_player_is_told_when_the_hosts_service_is_down_and_when_the_relay_cuts_a_session() {
    let bin = binaries();
    let dir = std::env::temp_dir().join(format!("blindrelay-told-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    // A host whose media server is not running: the player's log says so, and the
    // application reading through the player gets a reset, not an empty reply.
    let relay = Proc::start(&bin.join("blindrelayd"), &["--listen", "127.0.0.1:0"]);
    let url = relay.value("relay url");
    let (host, ticket) = host_forwarding_to(&bin, &dir, &url, "127.0.0.1:9");
    let player = Proc::start(
        &bin.join("blindrelay"),
        &["connect", &ticket, "--listen", "127.0.0.1:0"],
    );
    let listen: SocketAddr = player.value("listening on").parse().unwrap();
    let (read, reply) = get_to_the_end(listen).await;
    assert!(
        read.is_err(),
        "a reset, not a clean empty reply: {read:?} {reply:?}"
    );
    host.wait_log("cannot reach the local service");
    // Said as the session's end, or, when the host's reset overtakes its Noise
    // reply at the relay, as the reason no session opened.
    let logs = player.interrupt();
    assert!(
        logs.iter()
            .any(|line| line.contains("could not reach the service")
                && (line.contains("session cut short") || line.contains("cannot open a session"))),
        "{logs:#?}"
    );
    host.interrupt();
    relay.interrupt();

    // A relay that ends a session at its byte limit: both ends say so.
    let relay = Proc::start(
        &bin.join("blindrelayd"),
        &["--listen", "127.0.0.1:0", "--sessions-max-bytes", "64KiB"],
    );
    let url = relay.value("relay url");
    let movie = vec![7u8; 1 << 20];
    let media = serve_movie(&dir, &movie).await;
    let (host, ticket) = host_forwarding_to(&bin, &dir, &url, &media.to_string());
    let player = Proc::start(
        &bin.join("blindrelay"),
        &["connect", &ticket, "--listen", "127.0.0.1:0"],
    );
    let listen: SocketAddr = player.value("listening on").parse().unwrap();
    let (read, reply) = get_to_the_end(listen).await;
    assert!(read.is_err(), "a cut download reads as an error: {read:?}");
    assert!(reply.len() < movie.len());
    let told = player.wait_log("session cut short");
    assert!(told.contains("maximum bytes"), "{told}");
    let told = host.wait_log("session cut short");
    assert!(told.contains("maximum bytes"), "{told}");
    player.interrupt();
    host.interrupt();
    relay.interrupt();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_public_name_on_a_self_signed_certificate_is_warned_about() {
    let bin = binaries();
    let relay = Proc::start(
        &bin.join("blindrelayd"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--public-name",
            "relay.example.net",
        ],
    );
    let warning = relay.wait_log("--public-name with a self-signed certificate");
    assert!(warning.contains("will not verify"), "{warning}");
    // The URL it prints has no pin, which is why no client would trust it.
    let url = relay.value("relay url");
    assert!(!url.contains("pin="), "{url}");
    relay.interrupt();
}

/// `blindrelay demo --check`: relay, host, file server and player in one process; the
/// film arrives byte-exact through the relay, every link is printed, and a second run
/// keeps the relay's identity (its pin) from the state folder. A service that does
/// not answer fails the check with the reason and a non-zero exit.
#[test]
fn the_demo_fetches_its_film_through_the_relay_and_says_so() {
    let bin = binaries();
    let dir = std::env::temp_dir().join(format!("blindrelay-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let state = dir.join("state");
    let demo = |extra: &[&str]| {
        let output = Command::new(bin.join("blindrelay"))
            .args(["demo", "--check", "--state-dir", state.to_str().unwrap()])
            .args(extra)
            .env_remove("RUST_BACKTRACE")
            .output()
            .unwrap();
        let stdout = String::from_utf8(output.stdout).unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status, stdout, stderr)
    };
    let value = |stdout: &str, name: &str| {
        stdout
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name}: line in\n{stdout}"))
            .to_owned()
    };
    let (status, stdout, stderr) = demo(&[]);
    assert!(status.success(), "{stdout}\n{stderr}");
    let check = value(&stdout, "check");
    assert!(
        check.starts_with("/blindrelay-demo.webm arrived byte-exact through the relay"),
        "{check}"
    );
    assert!(value(&stdout, "player").starts_with("http://127.0.0.1:"));
    assert!(value(&stdout, "panel").starts_with("http://127.0.0.1:"));
    let web = value(&stdout, "web");
    assert!(
        web.starts_with("https://") && web.contains(".localhost:"),
        "{web}"
    );
    let browser = value(&stdout, "browser");
    assert!(
        browser.starts_with("chromium --ignore-certificate-errors-spki-list=")
            && browser.contains(&web),
        "{browser}"
    );
    let pin = |stdout: &str| {
        value(stdout, "relay url")
            .split_once('?')
            .unwrap()
            .1
            .to_owned()
    };
    let first_pin = pin(&stdout);

    // The same relay identity the next time; a dead service is a failed check.
    let (status, stdout, _) = demo(&["--forward", "127.0.0.1:9"]);
    assert!(!status.success(), "{stdout}");
    assert_eq!(pin(&stdout), first_pin, "the kept certificate");
    let check = value(&stdout, "check");
    assert!(check.starts_with("failed: "), "{check}");

    // Without --check it stays up, and Ctrl-C stops relay, host and player at once.
    let running = Proc::start(
        &bin.join("blindrelay"),
        &["demo", "--state-dir", state.to_str().unwrap()],
    );
    running.wait_line("demo: running; Ctrl-C stops it");
    let interrupted = std::time::Instant::now();
    running.interrupt();
    assert!(
        interrupted.elapsed() < std::time::Duration::from_secs(5),
        "stopped in {:?}",
        interrupted.elapsed()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The dead ends a new user met, each with what to do: an error is one line without a
/// backtrace even under `RUST_BACKTRACE=1`; a relay whose port another program holds
/// for TCP says which protocol and how to move it, once; a host given a list of
/// authorized players that does not exist yet makes it, and says so.
#[test]
fn dead_ends_say_what_to_do() {
    let bin = binaries();
    let dir = std::env::temp_dir().join(format!("blindrelay-dead-ends-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    let missing = Command::new(bin.join("blindrelay"))
        .args([
            "host",
            "--key",
            dir.join("no.key").to_str().unwrap(),
            "--direct",
            "127.0.0.1:0",
            "--forward",
            "127.0.0.1:9",
        ])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(stderr.matches("Error: ").count(), 1, "{stderr}");
    assert!(!stderr.to_lowercase().contains("backtrace"), "{stderr}");

    // A TCP port taken by something else, its UDP port free.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let relay = Command::new(bin.join("blindrelayd"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert!(!relay.status.success());
    let stderr = String::from_utf8_lossy(&relay.stderr);
    assert!(
        stderr.contains(&format!("127.0.0.1:{port} (TCP)")),
        "{stderr}"
    );
    assert!(stderr.contains("--listen-tcp"), "{stderr}");
    assert_eq!(stderr.matches("in use").count(), 1, "said once: {stderr}");
    drop(taken);

    let key = keygen(&bin, &dir);
    let list = dir.join("authorized_players");
    let host = Proc::start(
        &bin.join("blindrelay"),
        &[
            "host",
            "--key",
            key.to_str().unwrap(),
            "--direct",
            "127.0.0.1:0",
            "--forward",
            "127.0.0.1:9",
            "--authorized-players",
            list.to_str().unwrap(),
        ],
    );
    let made = host.value("authorized players");
    assert!(
        made.starts_with(&format!("made {}", list.display())),
        "{made}"
    );
    host.value("host id");
    let ticket = host.value("ticket");
    let text = std::fs::read_to_string(&list).unwrap();
    assert!(text.lines().all(|line| line.starts_with('#')), "{text}");

    // A player's key given to `host`, and a host's to `connect`, are refused.
    let player_key = dir.join("player.key");
    let made = Command::new(bin.join("blindrelay"))
        .args([
            "keygen",
            "--role",
            "player",
            "--out",
            player_key.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(made.status.success());
    let as_host = Command::new(bin.join("blindrelay"))
        .args([
            "host",
            "--key",
            player_key.to_str().unwrap(),
            "--direct",
            "127.0.0.1:0",
        ])
        .args(["--forward", "127.0.0.1:9"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&as_host.stderr);
    assert!(
        !as_host.status.success() && stderr.contains("is a player's key"),
        "{stderr}"
    );
    let as_player = Command::new(bin.join("blindrelay"))
        .args([
            "connect",
            &ticket,
            "--key",
            key.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&as_player.stderr);
    assert!(
        !as_player.status.success() && stderr.contains("is a host's key"),
        "{stderr}"
    );
    host.interrupt();

    // Enable Relay off, and no direct listener: said to leave the host unreachable.
    let unreachable = Proc::start(
        &bin.join("blindrelay"),
        &[
            "host",
            "--key",
            key.to_str().unwrap(),
            "--relay",
            "blindrelay://localhost:9?pin=aibaeaqcaibaeaqcaibaeaqcaibaeaqcaibaeaqcaibaeaqcaiba",
            "--no-relay",
            "--forward",
            "127.0.0.1:9",
        ],
    );
    unreachable.wait_line("relay: disabled");
    unreachable.wait_log("no direct listener: unreachable until Enable Relay is on again");
    unreachable.interrupt();
    let _ = std::fs::remove_dir_all(&dir);
}

/// `blindrelay host --config FILE`, as a service runs it: a flag beats its
/// environment variable, which beats the file; unknown keys are refused; file names
/// are read from the file's folder; `--check-config` says what is in effect; on the
/// first start the key is made (`make_key`) and the host registers, waiting for a
/// token file that is not there yet.
#[test]
fn a_host_runs_from_its_config_file_with_flags_and_environment_over_it() {
    let bin = binaries();
    let dir = std::env::temp_dir().join(format!("blindrelay-host-config-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let relay = Proc::start(&bin.join("blindrelayd"), &["--listen", "127.0.0.1:0"]);
    let url = relay.value("relay url");
    let config = dir.join("host.toml");
    std::fs::write(
        &config,
        format!(
            "key = \"state/host.key\"\nmake_key = true\nrelay = \"{url}\"\n\
             forward = \"127.0.0.1:8096\"\ntoken_file = \"state/host.token\"\n\
             panel = \"127.0.0.1:0\"\nresume_window = \"5s\"\nreplay_window = \"1MiB\"\n"
        ),
    )
    .unwrap();
    let check = |flags: &[&str], env: &[(&str, &str)]| {
        let mut command = Command::new(bin.join("blindrelay"));
        command
            .args([
                "host",
                "--config",
                config.to_str().unwrap(),
                "--check-config",
            ])
            .args(flags)
            .env_remove("BLINDRELAY_HOST_FORWARD");
        for (name, value) in env {
            command.env(name, value);
        }
        let output = command.output().unwrap();
        let stdout = String::from_utf8(output.stdout).unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status.success(), stdout, stderr)
    };
    let (ok, stdout, stderr) = check(&[], &[]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("forward = \"127.0.0.1:8096\""), "{stdout}");
    let key = dir.join("state").join("host.key");
    assert!(
        stdout.contains(&format!("key = {:?}", key.display().to_string())),
        "the file's folder: {stdout}"
    );
    let env = [("BLINDRELAY_HOST_FORWARD", "127.0.0.1:9000")];
    let (_, stdout, _) = check(&[], &env);
    assert!(stdout.contains("forward = \"127.0.0.1:9000\""), "{stdout}");
    let (_, stdout, _) = check(&["--forward", "127.0.0.1:7000"], &env);
    assert!(stdout.contains("forward = \"127.0.0.1:7000\""), "{stdout}");
    assert!(stdout.contains("resume_window = \"5s\""), "{stdout}");
    let env = [("BLINDRELAY_HOST_RESUME_WINDOW", "0s")];
    let (_, stdout, _) = check(&[], &env);
    assert!(stdout.contains("resume_window = \"0\""), "{stdout}");
    let (_, stdout, _) = check(&["--resume-window", "1m"], &env);
    assert!(stdout.contains("resume_window = \"1m\""), "{stdout}");
    assert!(stdout.contains("replay_window = \"1MiB\""), "{stdout}");
    let env = [("BLINDRELAY_HOST_REPLAY_WINDOW", "256KiB")];
    let (_, stdout, _) = check(&[], &env);
    assert!(stdout.contains("replay_window = \"256KiB\""), "{stdout}");
    // A window past what the protocol lets a peer read ahead is refused.
    let (ok, _, stderr) = check(&["--replay-window", "32MiB"], &env);
    assert!(!ok && stderr.contains("64KiB to 16MiB"), "{stderr}");
    assert!(!key.exists(), "--check-config makes nothing");

    // A key file from before key files named their role (the header and the key,
    // nothing else) is still taken.
    std::fs::create_dir_all(key.parent().unwrap()).unwrap();
    let old = blindrelay_client::SecretKey::generate()
        .unwrap()
        .to_key_file();
    assert!(!old.contains("role"), "{old}");
    std::fs::write(&key, old).unwrap();
    let (ok, stdout, stderr) = check(&[], &[]);
    assert!(ok, "an old key file: {stdout}{stderr}");
    std::fs::remove_file(&key).unwrap();

    // A key the file does not know is refused, naming it.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}forwrad = \"x\"\n")).unwrap();
    let (ok, _, stderr) = check(&[], &[]);
    assert!(
        !ok && stderr.contains("unknown field `forwrad`"),
        "{stderr}"
    );
    std::fs::write(&config, text).unwrap();

    // The first start: the key is made, the token is waited for, the host registers.
    let host = Proc::start(
        &bin.join("blindrelay"),
        &["host", "--config", config.to_str().unwrap()],
    );
    assert_eq!(host.value("key"), format!("made {}", key.display()));
    assert!(host.value("token").starts_with(&format!(
        "none in {} yet; read as soon as it is there",
        dir.join("state").join("host.token").display()
    )));
    host.value("host id");
    host.wait_line("relay: registered");
    assert!(key.exists());
    host.interrupt();
    relay.interrupt();
    let _ = std::fs::remove_dir_all(&dir);
}
