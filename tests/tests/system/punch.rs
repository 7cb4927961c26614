//! Hole punching through real NATs (PROTOCOL.md 10.9): a host and a player, each
//! behind a router namespace that translates its LAN to one public address, reach
//! a relay on the "internet" between them; `blindrelay host` and `blindrelay
//! connect` run as users run them, with punching on.
//!
//! ```text
//!   host 10.77.3.2 -- ra (NAT to 10.77.1.2) --+
//!                                             inet (relay on 10.77.1.1)
//! player 10.77.4.2 -- rb (NAT to 10.77.2.2) --+
//! ```
//!
//! A "home" router keeps one public port per inside socket whatever the
//! destination (endpoint-independent mapping) and lets in only what answers a flow
//! the inside opened; a "symmetric" one picks a new random port per destination,
//! so the address the relay observed is useless to anyone else. Each router also
//! drops what arrives unasked on its own public address: otherwise conntrack
//! records a peer's early packet as a flow to the router, and the NAT then gives
//! the inside's answer another port.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blindrelay_relay::Relay;
use blindrelay_tests::netns::{HomeNets, Nat, Net, Ns, Player};
use blindrelay_tests::process::{binaries, Proc};
use blindrelay_tests::{read_pattern, relay_config, PATIENCE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: u64 = 1 << 20;

/// The two homes and the internet between them. Fields drop in order: processes
/// and the relay before the namespaces they run in.
struct Homes {
    host: Proc,
    ticket: String,
    relay: Relay,
    bin: std::path::PathBuf,
    inet: Ns,
    host_ns: Ns,
    player_router: Ns,
    player_ns: Ns,
    net: Net,
}

impl Homes {
    /// The topology with the host's router doing `host_nat` and the player where
    /// `player` says, a relay in the middle and `blindrelay host` running behind
    /// its router, registered; `None` where namespaces cannot be built here.
    async fn build(host_nat: Nat, player: Player) -> Option<Self> {
        Self::build_with(host_nat, player, &[]).await
    }

    /// Like [`Homes::build`], with more flags for `blindrelay host`.
    async fn build_with(host_nat: Nat, player: Player, host_flags: &[&str]) -> Option<Self> {
        Self::build_full(host_nat, player, host_flags, false).await
    }

    /// The host behind a symmetric NAT, the player where `player` says, and the
    /// relay with a probe port; once the host has learnt what its NAT does.
    async fn probed_behind_symmetric(player: Player) -> Option<Self> {
        let homes = Self::build_full(Nat::Symmetric, player, &[], true).await?;
        homes
            .host
            .wait_log("this host's NAT maps each destination to a new port");
        Some(homes)
    }

    /// Like [`Homes::build_with`], the relay with a probe port if `probe`.
    async fn build_full(
        host_nat: Nat,
        player: Player,
        host_flags: &[&str],
        probe: bool,
    ) -> Option<Self> {
        let mut net = Net::try_new()?;
        let bin = binaries();
        let HomeNets {
            inet,
            relay_ip,
            host_ns,
            player_router,
            player_ns,
        } = net.homes(host_nat, player);

        // The relay, in-process with its sockets in `inet`: its counters say what
        // crossed it.
        let mut config = relay_config();
        config.listen = format!("{relay_ip}:0").parse().unwrap();
        config.probe_port = probe.then_some(0);
        let handle = tokio::runtime::Handle::current();
        let relay = net.enter(&inet, || {
            let _runtime = handle.enter();
            Relay::spawn(config).expect("the relay starts")
        });
        let service = net.pattern_service(&host_ns);
        let key = net.dir().join("host.key");
        blindrelay_tests::process::keygen(&bin, &key, "host");
        let (url, forward) = (relay.url().to_string(), service.to_string());
        let mut args = vec![
            "host",
            "--key",
            key.to_str().unwrap(),
            "--relay",
            &url,
            "--forward",
            &forward,
            "--transport",
            "quic",
            "--no-punch=false",
        ];
        args.extend_from_slice(host_flags);
        let host = net.start(&host_ns, &bin.join("blindrelay"), &args);
        host.value("host id");
        let ticket = host.value("ticket");
        host.wait_log("relay state: registered");
        Some(Self {
            host,
            ticket,
            relay,
            bin,
            inet,
            host_ns,
            player_router,
            player_ns,
            net,
        })
    }

    /// `blindrelay connect` behind the player's router reaching the relay over
    /// `transport`, punching; returns it and the address it listens on.
    fn start_player(&self, transport: &str) -> (Proc, SocketAddr) {
        let player = self.net.start(
            &self.player_ns,
            &self.bin.join("blindrelay"),
            &[
                "connect",
                &self.ticket,
                "--listen",
                "127.0.0.1:0",
                "--transport",
                transport,
                "--no-punch=false",
            ],
        );
        let listen = player.value("listening on").parse().unwrap();
        (player, listen)
    }

    /// Bytes the relay forwarded from hosts to players so far.
    fn relayed(&self) -> u64 {
        self.relay.stats().bytes_host_to_player
    }
}

/// A request for `len` bytes of `seed`'s pattern through the player at `addr`, from
/// inside `ns`; the reply's pattern is read by the caller (its `+` is read here).
async fn ask(net: &Net, ns: &Ns, addr: SocketAddr, len: u64, seed: u64) -> tokio::net::TcpStream {
    let tcp = net.enter(ns, || std::net::TcpStream::connect(addr).expect("connect"));
    tcp.set_nonblocking(true).unwrap();
    let mut tcp = tokio::net::TcpStream::from_std(tcp).unwrap();
    let mut request = [0u8; 16];
    request[..8].copy_from_slice(&len.to_be_bytes());
    request[8..].copy_from_slice(&seed.to_be_bytes());
    tcp.write_all(&request).await.unwrap();
    let mut plus = [0u8; 1];
    tcp.read_exact(&mut plus)
        .await
        .expect("the reply's first byte");
    assert_eq!(&plus, b"+");
    tcp
}

/// Reads the rest of a reply whose first bytes were `first`, and checks the whole
/// against `seed`'s pattern to a clean end.
async fn finish(tcp: tokio::net::TcpStream, seed: u64, first: &[u8]) -> u64 {
    let mut whole = first.chain(tcp);
    tokio::time::timeout(PATIENCE, read_pattern(&mut whole, seed))
        .await
        .expect("the transfer ends in time")
        .expect("byte-exact to a clean end")
}

/// Home NAT on both sides: a running 64 MiB download moves to the punched direct
/// path within seconds and finishes byte-exact, its later bytes bypassing the
/// relay; the next session starts direct.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn between_two_home_nats_a_running_download_moves_to_a_punched_direct_path() {
    blindrelay_tests::init_tracing();
    let Some(homes) = Homes::build(Nat::Home, Player::Behind(Nat::Home)).await else {
        return;
    };
    let (player, listen) = homes.start_player("quic");
    const LEN: u64 = 64 * MIB;
    let started = Instant::now();
    let mut tcp = ask(&homes.net, &homes.player_ns, listen, LEN, 11).await;
    // Read slowly (at most 6.4 MiB/s) until the path has changed, so that most of
    // the download is still to come then, and at full speed after. The player
    // moves a session when it next reads it, as an application that reads does.
    let switched = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn({
        let switched = switched.clone();
        async move {
            let (mut first, mut chunk) = (Vec::new(), vec![0u8; 64 * 1024]);
            while !switched.load(Ordering::Acquire) && (first.len() as u64) < LEN / 2 {
                let n = tcp.read(&mut chunk).await.expect("the download goes on");
                assert!(n > 0, "the download ended early");
                first.extend_from_slice(&chunk[..n]);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            finish(tcp, 11, &first).await
        }
    });
    let open = player.wait_log("session open");
    assert!(open.contains("path=relayed"), "{open}");
    player.wait_log("direct path to the host punched");
    let punched = started.elapsed();
    let moved = player.wait_log("session resumed");
    assert!(moved.contains("over direct (punched)"), "{moved}");
    assert!(
        punched < Duration::from_secs(5),
        "punched {punched:?} after the download started"
    );
    let relayed_at_switch = homes.relayed();
    switched.store(true, Ordering::Release);
    assert_eq!(reader.await.unwrap(), LEN);
    // What was in flight on the relayed stream when the host took the new one.
    let relayed_after = homes.relayed() - relayed_at_switch;
    println!(
        "punched {punched:?} after the download started; relayed {relayed_at_switch} bytes \
         before the switch, {relayed_after} after, of {LEN}"
    );
    assert!(
        relayed_after < 4 * MIB,
        "{relayed_after} bytes crossed the relay after the switch"
    );
    assert!(
        relayed_at_switch < LEN / 2,
        "{relayed_at_switch} of {LEN} bytes relayed before the switch"
    );
    // The relay counted the move, from the relayed stream's MOVED reset.
    let stats = homes.relay.stats();
    assert_eq!(stats.sessions_moved_direct, 1, "{stats:?}");
    // A new session goes straight to the punched path.
    let tcp = ask(&homes.net, &homes.player_ns, listen, MIB, 12).await;
    assert_eq!(finish(tcp, 12, &[]).await, MIB);
    let second = player.wait_log("session open");
    assert!(second.contains("path=direct (punched)"), "{second}");
    assert!(homes
        .host
        .wait_log("punching toward a player")
        .contains("candidates"));

    // The direct path dies (UDP between the two homes dropped on the internet; the
    // relay, local to it, is still reached): new sessions go through the relay at
    // once, and the player forgets the path.
    homes.net.nft(&homes.inet, CUT);
    let cut = Instant::now();
    let tcp = ask(&homes.net, &homes.player_ns, listen, MIB, 13).await;
    assert_eq!(finish(tcp, 13, &[]).await, MIB);
    let third = player.wait_log("session open");
    assert!(third.contains("path=relayed"), "{third}");
    assert!(
        cut.elapsed() < Duration::from_secs(10),
        "a relayed session {:?} after the cut",
        cut.elapsed()
    );
    player.wait_log("the punched direct path closed");
}

/// Drops UDP forwarded between the two homes' public addresses.
const CUT: &str = "table ip cut {
  chain forward {
    type filter hook forward priority filter; policy accept;
    ip saddr 10.77.1.0/24 ip daddr 10.77.2.0/24 meta l4proto udp drop
    ip saddr 10.77.2.0/24 ip daddr 10.77.1.0/24 meta l4proto udp drop
  }
}
";

/// A symmetric NAT on the player's side, or on both: the address the relay saw is
/// not the one the host's packets would reach, so punching fails after its three
/// attempts, and the download goes on relayed, byte-exact.
async fn stays_relayed_behind(host_nat: Nat, player_nat: Nat) {
    blindrelay_tests::init_tracing();
    let Some(homes) = Homes::build(host_nat, Player::Behind(player_nat)).await else {
        return;
    };
    let (player, listen) = homes.start_player("quic");
    const LEN: u64 = 16 * MIB;
    let mut tcp = ask(&homes.net, &homes.player_ns, listen, LEN, 21).await;
    let mut first = vec![0u8; MIB as usize];
    tcp.read_exact(&mut first).await.unwrap();
    let gave_up = player.wait_log("no direct path to the host");
    assert!(gave_up.contains("sessions stay relayed"), "{gave_up}");
    assert_eq!(finish(tcp, 21, &first).await, LEN);
    assert!(homes.relayed() >= LEN, "every byte was relayed");
    // The next session goes through the relay at once: no new round within the
    // minute.
    let tcp = ask(&homes.net, &homes.player_ns, listen, MIB, 22).await;
    assert_eq!(finish(tcp, 22, &[]).await, MIB);
    let second = player.wait_log("session open");
    assert!(second.contains("path=relayed"), "{second}");
    // The session asked the relay whether this player's addresses changed; they
    // did not, so no second round runs within the minute.
    assert!(
        player
            .wait_log_within("punching again", Duration::from_secs(1))
            .is_none(),
        "no second round ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_symmetric_nat_the_session_stays_relayed_after_three_attempts() {
    stays_relayed_behind(Nat::Home, Nat::Symmetric).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn between_two_symmetric_nats_the_session_stays_relayed_after_three_attempts() {
    stays_relayed_behind(Nat::Symmetric, Nat::Symmetric).await;
}

/// A host behind a symmetric NAT and a player behind a full cone: the player's
/// dial cannot reach the host (its NAT gave the relay a port no one else may use),
/// but the host's can reach the player, so the second attempt, roles swapped, gets
/// through and new sessions go direct.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_a_symmetric_nat_the_host_dials_a_full_cone_player_with_roles_swapped() {
    blindrelay_tests::init_tracing();
    // With the relay's probe port: the host learns its NAT maps per destination,
    // the player that its own does not, and neither gives up.
    let Some(homes) = Homes::probed_behind_symmetric(Player::Behind(Nat::FullCone)).await else {
        return;
    };
    let (player, listen) = homes.start_player("quic");
    let tcp = ask(&homes.net, &homes.player_ns, listen, MIB, 41).await;
    assert_eq!(finish(tcp, 41, &[]).await, MIB);
    let open = player.wait_log("session open");
    assert!(open.contains("path=relayed"), "{open}");
    player.wait_log("direct path to the host punched");
    // The player's own attempt came first and failed; the host then dialled.
    assert!(homes
        .host
        .wait_log("punching toward a player")
        .contains("candidates"));
    homes
        .host
        .wait_log("dialling a player for a direct path (roles swapped)");
    let relayed = homes.relayed();
    let tcp = ask(&homes.net, &homes.player_ns, listen, 8 * MIB, 42).await;
    assert_eq!(finish(tcp, 42, &[]).await, 8 * MIB);
    let second = player.wait_log("session open");
    assert!(second.contains("path=direct (punched)"), "{second}");
    let after = homes.relayed() - relayed;
    assert!(
        after < 64 * 1024,
        "{after} bytes of the second session relayed"
    );
}

/// With the relay's probe port, each side learns that its NAT maps each destination
/// anew, and says so in its candidates: the player gives up at the first exchange,
/// without a dial (which would take 3 s to fail) or the host's punch packets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_probe_port_two_symmetric_nats_skip_the_punch_that_cannot_work() {
    blindrelay_tests::init_tracing();
    let Some(homes) = Homes::probed_behind_symmetric(Player::Behind(Nat::Symmetric)).await else {
        return;
    };
    let (player, listen) = homes.start_player("quic");
    const LEN: u64 = 4 * MIB;
    let mut tcp = ask(&homes.net, &homes.player_ns, listen, LEN, 61).await;
    let mut first = vec![0u8; MIB as usize];
    tcp.read_exact(&mut first).await.unwrap();
    player.wait_log("session open");
    let opened = Instant::now();
    let gave_up = player.wait_log("no direct path to the host");
    assert!(
        gave_up.contains("both NATs map each destination to a new port"),
        "{gave_up}"
    );
    assert!(
        opened.elapsed() < Duration::from_secs(3),
        "gave up {:?} after the session opened",
        opened.elapsed()
    );
    assert_eq!(finish(tcp, 61, &first).await, LEN);
    assert!(homes.relayed() >= LEN, "every byte was relayed");
    assert!(
        homes
            .host
            .wait_log_within("punching toward a player", Duration::from_secs(1))
            .is_none(),
        "the host sent no punch packets"
    );
}

/// The relay's probe port, on loopback: the main port's `Observe` names it, it
/// answers `Observe` from the same socket with the same address (no NAT here), and
/// it refuses anything else and anyone who says nothing, each within the deadlines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_port_answers_observe_and_nothing_else() {
    use blindrelay_protocol::{ControlMessage, ErrorCode, HostId};
    use blindrelay_relay::units::Span;
    blindrelay_tests::init_tracing();
    let mut config = relay_config();
    config.probe_port = Some(0);
    config.limits.connections.first_message_timeout = Span(Duration::from_secs(1));
    let relay = Relay::spawn(config).unwrap();
    let probe = relay.probe_addr().expect("a probe port");
    assert_eq!(probe.ip(), relay.local_addr().ip());
    let (endpoint, main) =
        blindrelay_client::internal::relay_endpoint_raw(relay.url(), "127.0.0.1".parse().unwrap())
            .await
            .unwrap();
    let ask = |connection: quinn::Connection, message: ControlMessage| async move {
        let (mut send, mut recv) = connection.open_bi().await.unwrap();
        send.write_all(&message.to_frame()).await.unwrap();
        let _ = send.finish();
        let first = blindrelay_tests::read_message(&mut recv).await;
        let second = blindrelay_tests::read_message(&mut recv).await;
        (first, second)
    };
    let host = relay.url().host().to_owned();
    let on_main = endpoint.connect(main, &host).unwrap().await.unwrap();
    let (observed, next) = ask(on_main.clone(), ControlMessage::Observe).await;
    let Some(ControlMessage::Observed { addr }) = observed else {
        panic!("{observed:?}");
    };
    assert_eq!(addr, endpoint.local_addr().unwrap());
    assert_eq!(next, Some(ControlMessage::ProbePort { port: probe.port() }));
    // Asked again at the probe port from the same socket: the same address, and
    // nothing after it.
    let on_probe = endpoint.connect(probe, &host).unwrap().await.unwrap();
    let (again, next) = ask(on_probe, ControlMessage::Observe).await;
    assert_eq!(again, Some(ControlMessage::Observed { addr }));
    assert_eq!(next, None);
    // Anything else is refused there.
    for message in [
        ControlMessage::Connect {
            host_id: HostId::from_bytes([7; 32]),
            redirects: 0,
        },
        ControlMessage::Register {
            host_id: HostId::from_bytes([7; 32]),
            token: None,
            redirects: 0,
        },
    ] {
        let on_probe = endpoint.connect(probe, &host).unwrap().await.unwrap();
        let (refused, _) = ask(on_probe, message).await;
        assert!(
            matches!(
                &refused,
                Some(ControlMessage::Error {
                    code: ErrorCode::BadRequest,
                    ..
                })
            ),
            "{refused:?}"
        );
    }
    // A probe connection that asks nothing is closed within the handshake and
    // first-message deadlines (10 s and 1 s here), not held.
    let silent = endpoint.connect(probe, &host).unwrap().await.unwrap();
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(20), silent.closed())
        .await
        .expect("the silent probe connection is closed");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    // Each probe and main-port Observe was counted.
    assert_eq!(relay.stats().addresses_observed, 2);
}

/// Player and host behind the same router, which does not hairpin: the host's
/// public address is of no use from inside, its LAN address is, and wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_the_same_nat_without_hairpinning_the_lan_candidate_wins() {
    blindrelay_tests::init_tracing();
    let Some(homes) = Homes::build(Nat::Home, Player::WithTheHost).await else {
        return;
    };
    let (player, listen) = homes.start_player("quic");
    let tcp = ask(&homes.net, &homes.player_ns, listen, MIB, 31).await;
    assert_eq!(finish(tcp, 31, &[]).await, MIB);
    player.wait_log("direct path to the host punched");
    let relayed = homes.relayed();
    let tcp = ask(&homes.net, &homes.player_ns, listen, 8 * MIB, 32).await;
    assert_eq!(finish(tcp, 32, &[]).await, 8 * MIB);
    // At most the first session's last acknowledgements came after.
    let after = homes.relayed() - relayed;
    assert!(
        after < 64 * 1024,
        "{after} bytes of the second session relayed"
    );
}

/// UDP blocked on the player's side: it reaches the relay over TLS/TCP, attempts
/// no punch, and its session goes on relayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_udp_is_blocked_no_punch_is_attempted_and_the_session_goes_on() {
    blindrelay_tests::init_tracing();
    let Some(homes) = Homes::build(Nat::Home, Player::Behind(Nat::Home)).await else {
        return;
    };
    homes.net.nft(&homes.player_ns, NO_UDP_OUT);
    let (player, listen) = homes.start_player("auto");
    const LEN: u64 = 8 * MIB;
    let tcp = ask(&homes.net, &homes.player_ns, listen, LEN, 41).await;
    assert_eq!(finish(tcp, 41, &[]).await, LEN);
    let open = player.wait_log("session open");
    assert!(open.contains("path=relayed/tcp"), "{open}");
    assert!(homes.relayed() >= LEN);
    // A round of attempts would end in one of these within a few seconds.
    assert!(
        player
            .wait_log_within("direct path to the host", Duration::from_secs(4))
            .is_none(),
        "no punch was attempted"
    );
    assert_eq!(
        homes.relay.stats().addresses_observed,
        1,
        "only the host asked"
    );
}

/// Someone on the player's side answers at one of the host's candidates: the
/// player's router takes the host's LAN address for itself, and a host with
/// another key listens there. Its QUIC handshake succeeds (a direct path takes
/// any certificate), so only the Noise handshake to the host id tells it apart:
/// the path is not taken, and the session stays relayed. (Behind a symmetric NAT,
/// so that the real path cannot win first.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impostor_answering_at_a_candidate_is_not_taken_for_the_host() {
    blindrelay_tests::init_tracing();
    const PORT: &str = "41641";
    let direct = format!("0.0.0.0:{PORT}");
    let Some(homes) = Homes::build_with(
        Nat::Home,
        Player::Behind(Nat::Symmetric),
        &["--direct", &direct],
    )
    .await
    else {
        return;
    };
    // The host's LAN address, hijacked on the player's side, with an impostor on
    // the host's port.
    let host_lan = "10.77.3.2";
    homes
        .net
        .add_local_address(&homes.player_router, &format!("{host_lan}/32"));
    let impostor_key = homes.net.dir().join("impostor.key");
    blindrelay_tests::process::keygen(&homes.bin, &impostor_key, "host");
    let blindrelay = homes.bin.join("blindrelay");
    let impostor = homes.net.start(
        &homes.player_router,
        std::path::Path::new("/usr/bin/env"),
        &[
            "RUST_LOG=debug",
            blindrelay.to_str().unwrap(),
            "host",
            "--key",
            impostor_key.to_str().unwrap(),
            "--direct",
            &format!("{host_lan}:{PORT}"),
            "--forward",
            "127.0.0.1:9",
        ],
    );
    impostor.wait_log("listening directly");
    let (player, listen) = homes.start_player("quic");
    const LEN: u64 = 4 * MIB;
    let tcp = ask(&homes.net, &homes.player_ns, listen, LEN, 51).await;
    assert_eq!(finish(tcp, 51, &[]).await, LEN);
    let gave_up = player.wait_log("no direct path to the host");
    assert!(
        !gave_up.contains("punched"),
        "the impostor was not taken for the host: {gave_up}"
    );
    // The impostor was reached, and could not answer the handshake.
    impostor.wait_log("refusing a session");
    assert!(homes.relayed() >= LEN, "the session stayed relayed");
}

/// Someone on the player's side answers at one of the host's candidates and
/// carries what it gets on to the real host over a QUIC connection of its own: a
/// splice. The Noise handshake to the host id gets through it, so only the
/// connection's binding (PROTOCOL.md 10.9) tells it apart: the host's exporter is
/// the splice's upstream connection's, not the player's. The path is not taken,
/// and the session stays relayed. (Behind a symmetric NAT, so that the real path
/// cannot win first.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_splice_answering_at_a_candidate_is_not_taken_for_the_direct_path() {
    blindrelay_tests::init_tracing();
    const PORT: u16 = 41642;
    let direct = format!("0.0.0.0:{PORT}");
    // A ticket naming a port its router does not forward: the session starts
    // relayed, and the host's LAN address is a candidate only punching dials.
    let advertise = format!("10.77.1.2:{PORT}");
    let Some(mut homes) = Homes::build_with(
        Nat::Home,
        Player::Behind(Nat::Symmetric),
        &["--direct", &direct, "--advertise", &advertise],
    )
    .await
    else {
        return;
    };
    // The host's LAN address, hijacked on the player's side, and a wire from there
    // to the host's machine that only the splice uses (10.77.9.1 to 10.77.9.2).
    homes
        .net
        .add_local_address(&homes.player_router, "10.77.3.2/32");
    homes.net.link(&homes.player_router, &homes.host_ns, 9);
    let splice = Splice::start(
        &homes.net,
        &homes.player_router,
        SocketAddr::from(([10, 77, 3, 2], PORT)),
        SocketAddr::from(([10, 77, 9, 2], PORT)),
    );
    let (player, listen) = homes.start_player("quic");
    const LEN: u64 = 4 * MIB;
    let tcp = ask(&homes.net, &homes.player_ns, listen, LEN, 52).await;
    assert_eq!(finish(tcp, 52, &[]).await, LEN);
    let gave_up = player.wait_log("no direct path to the host");
    assert!(
        !gave_up.contains("punched"),
        "the splice was not taken for the direct path: {gave_up}"
    );
    // The splice carried the checks to the host, and the host's answers back: the
    // Noise handshake got through, the binding did not.
    assert!(splice.streams.load(Ordering::Relaxed) >= 1);
    assert!(splice.answered.load(Ordering::Relaxed) > 0);
    assert!(homes.relayed() >= LEN, "the session stayed relayed");
}

/// A QUIC splice: accepts direct connections at `listen` with a certificate of its
/// own and carries each stream on to `upstream` over a connection it opens there.
struct Splice {
    streams: Arc<AtomicU64>,
    /// Bytes the upstream end answered.
    answered: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Splice {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Splice {
    fn start(net: &Net, ns: &Ns, listen: SocketAddr, upstream: SocketAddr) -> Self {
        use quinn::rustls;
        use rustls::pki_types::pem::PemObject;
        let (cert, key) = blindrelay_relay::RelayCertificate::self_signed_pem(&["splice"]).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![rustls::pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap();
        tls.alpn_protocols = vec![blindrelay_protocol::DIRECT_ALPN.to_vec()];
        let server = quinn::ServerConfig::with_crypto(Arc::new(
            quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap(),
        ));
        let client = quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(
                blindrelay_transport::danger::client_config(blindrelay_protocol::DIRECT_ALPN),
            )
            .unwrap(),
        ));
        let (down, up) = net.enter(ns, || {
            (
                std::net::UdpSocket::bind(listen).unwrap(),
                std::net::UdpSocket::bind("0.0.0.0:0").unwrap(),
            )
        });
        let runtime = Arc::new(quinn::TokioRuntime);
        let down =
            quinn::Endpoint::new(Default::default(), Some(server), down, runtime.clone()).unwrap();
        let mut up = quinn::Endpoint::new(Default::default(), None, up, runtime).unwrap();
        up.set_default_client_config(client);
        let (streams, answered) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (counted, answers) = (streams.clone(), answered.clone());
        let task = tokio::spawn(async move {
            while let Some(incoming) = down.accept().await {
                let (up, counted, answers) = (up.clone(), counted.clone(), answers.clone());
                tokio::spawn(async move {
                    let Ok(player) = incoming.await else { return };
                    let Ok(host) = up.connect(upstream, "host").unwrap().await else {
                        return;
                    };
                    while let Ok((mut to_player, mut from_player)) = player.accept_bi().await {
                        let Ok((mut to_host, mut from_host)) = host.open_bi().await else {
                            return;
                        };
                        counted.fetch_add(1, Ordering::Relaxed);
                        let answers = answers.clone();
                        tokio::spawn(async move {
                            let _ = tokio::io::copy(&mut from_player, &mut to_host).await;
                            let _ = to_host.finish();
                        });
                        tokio::spawn(async move {
                            let mut chunk = [0u8; 4096];
                            while let Ok(Some(n)) = from_host.read(&mut chunk).await {
                                answers.fetch_add(n as u64, Ordering::Relaxed);
                                if to_player.write_all(&chunk[..n]).await.is_err() {
                                    return;
                                }
                            }
                            let _ = to_player.finish();
                        });
                    }
                });
            }
        });
        Self {
            streams,
            answered,
            task,
        }
    }
}

/// Drops every UDP packet leaving the player's machine.
const NO_UDP_OUT: &str = "table ip noudp {
  chain output {
    type filter hook output priority filter; policy accept;
    meta l4proto udp drop
  }
}
";
