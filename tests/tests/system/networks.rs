//! The real binaries on real networks that break UDP: a relay, a host and a player,
//! each in a network namespace of its own, with nftables rules that drop, reject or
//! cut UDP the way hotel, office and mobile networks do. A player or host on such a
//! network still reaches the relay over TLS/TCP by itself, moves data byte-exact,
//! and says which transport it used; whoever is on an open network keeps QUIC.
//!
//! These need root, `ip` and `nft`; without them each test prints why and passes,
//! unless `BLINDRELAY_NETNS_REQUIRED=1` (CI) makes that a failure.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use blindrelay_tests::netns::{Net, Ns};
use blindrelay_tests::process::{binaries, Proc};
use blindrelay_tests::read_pattern;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a player on a broken network moves: enough to cross many TLS records, Noise
/// frames and splice chunks and to fill every window on the way.
const BULK: u64 = 64 << 20;

/// What an honest session beside moves: enough to see it work, cheap enough to repeat.
const SMALL: u64 = 1 << 20;

/// The relay's port, UDP and TCP: 443, so that "only HTTPS" is the literal rule.
/// Each relay has a namespace of its own, so no two tests share it.
const RELAY_PORT: u16 = 443;

/// The relay's address on the host's link; the player reaches it through its
/// default route, as any public address.
const RELAY_IP: &str = "10.77.1.1";

/// Every transfer ends within this, however slow the machine.
const TRANSFER_DEADLINE: Duration = Duration::from_secs(120);

/// Three namespaces (relay, host side, player side) with the relay reachable from
/// both sides, a running `blindrelayd`, and a service in the host's namespace.
struct World {
    // Processes before the network: fields drop in order, and a namespace is
    // deleted only once what runs inside it has been killed (the network's drop
    // would kill them too; this keeps it the ordinary path).
    relay: Proc,
    url: String,
    service: SocketAddr,
    bin: PathBuf,
    relay_ns: Ns,
    host_ns: Ns,
    player_ns: Ns,
    net: Net,
}

impl World {
    /// The world, or `None` where this machine cannot build namespaces.
    async fn build() -> Option<Self> {
        let mut net = Net::try_new()?;
        let bin = binaries();
        let relay_ns = net.namespace("relay");
        let host_ns = net.namespace("host");
        let player_ns = net.namespace("player");
        let (relay_to_host, _) = net.link(&relay_ns, &host_ns, 1);
        let (relay_to_player, _) = net.link(&relay_ns, &player_ns, 2);
        assert_eq!(relay_to_host, RELAY_IP);
        net.default_route(&host_ns, &relay_to_host);
        net.default_route(&player_ns, &relay_to_player);
        let listen = format!("{RELAY_IP}:{RELAY_PORT}");
        let relay = net.start(&relay_ns, &bin.join("blindrelayd"), &["--listen", &listen]);
        let url = relay.value("relay url");
        assert!(url.starts_with(&format!("blindrelay://{listen}?")), "{url}");
        let service = net.pattern_service(&host_ns);
        Some(Self {
            relay,
            url,
            service,
            bin,
            relay_ns,
            host_ns,
            player_ns,
            net,
        })
    }

    /// Starts `blindrelay host` in the host's namespace, forwarding to the service,
    /// and waits for its registration. Returns it, its ticket and the log line that
    /// says it registered (with its transport).
    fn start_host(&self, transport: &str) -> (Proc, String, String) {
        let key = self.net.dir().join("host.key");
        let keygen = Command::new(self.bin.join("blindrelay"))
            .args(["keygen", "--out", key.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(keygen.status.success(), "keygen");
        let forward = self.service.to_string();
        let host = self.net.start(
            &self.host_ns,
            &self.bin.join("blindrelay"),
            &[
                "host",
                "--key",
                key.to_str().unwrap(),
                "--relay",
                &self.url,
                "--forward",
                &forward,
                "--transport",
                transport,
            ],
        );
        host.value("host id");
        let ticket = host.value("ticket");
        let registered = host.wait_log("relay state: registered");
        (host, ticket, registered)
    }

    /// Starts `blindrelay connect` in `ns` and returns it, the address it listens on
    /// (inside `ns`) and when it was started.
    fn start_player(&self, ns: &Ns, ticket: &str, transport: &str) -> (Proc, SocketAddr, Instant) {
        let started = Instant::now();
        let player = self.net.start(
            ns,
            &self.bin.join("blindrelay"),
            &[
                "connect",
                ticket,
                "--listen",
                "127.0.0.1:0",
                "--transport",
                transport,
            ],
        );
        let listen = player.value("listening on").parse().unwrap();
        (player, listen, started)
    }

    /// A player on an open network (the relay's own namespace, which no rule
    /// touches) fetches [`SMALL`] bytes from the host over QUIC: whatever broke for
    /// the other ends, the relay and host still serve everyone else.
    async fn honest_session_beside(&self, ticket: &str) {
        let (mut player, listen, started) = self.start_player(&self.relay_ns, ticket, "auto");
        let fetched = fetch(&self.net, &self.relay_ns, listen, SMALL, 7, started).await;
        assert_eq!(fetched.total, SMALL, "the honest session is byte-exact");
        let open = player.wait_log("session open");
        assert!(logs(&open, "path", "relayed/quic"), "{open}");
        assert!(player.running());
    }
}

/// What a fetch through a player got.
struct Fetched {
    /// From the player's start to the first byte of the reply.
    first_byte: Duration,
    /// Pattern bytes received, all checked, before a clean end.
    total: u64,
}

/// Opens a TCP connection to `addr` from inside `ns`, asks the service for `len`
/// bytes of `seed`'s pattern, and reads and checks them to a clean end.
async fn fetch(
    net: &Net,
    ns: &Ns,
    addr: SocketAddr,
    len: u64,
    seed: u64,
    started: Instant,
) -> Fetched {
    let mut tcp = connect_in(net, ns, addr).await;
    request(&mut tcp, len, seed).await;
    tokio::time::timeout(TRANSFER_DEADLINE, async {
        let mut first = [0u8; 1];
        tcp.read_exact(&mut first)
            .await
            .expect("the reply's first byte");
        assert_eq!(&first, b"+");
        let first_byte = started.elapsed();
        let total = read_pattern(&mut tcp, seed)
            .await
            .expect("byte-exact to a clean end");
        Fetched { first_byte, total }
    })
    .await
    .expect("the transfer ends in time")
}

async fn connect_in(net: &Net, ns: &Ns, addr: SocketAddr) -> tokio::net::TcpStream {
    let tcp = net.enter(ns, || std::net::TcpStream::connect(addr).expect("connect"));
    tcp.set_nonblocking(true).unwrap();
    tokio::net::TcpStream::from_std(tcp).unwrap()
}

async fn request(tcp: &mut tokio::net::TcpStream, len: u64, seed: u64) {
    let mut request = [0u8; 16];
    request[..8].copy_from_slice(&len.to_be_bytes());
    request[8..].copy_from_slice(&seed.to_be_bytes());
    tcp.write_all(&request).await.unwrap();
}

/// Whether a log line has the field `name` with `value`, as tracing writes it:
/// bare for a displayed value, quoted for a string.
fn logs(line: &str, name: &str, value: &str) -> bool {
    line.split_whitespace()
        .any(|field| field == format!("{name}={value}") || field == format!("{name}=\"{value}\""))
}

/// One table with one filter chain on `hook` holding `rule`.
fn ruleset(hook: &str, rule: &str) -> String {
    format!(
        "table inet netfault {{\n  chain {hook} {{\n    type filter hook {hook} priority 0; policy accept;\n    {rule}\n  }}\n}}\n"
    )
}

/// A host on an open network; the player's side filtered by `ruleset` in
/// `filtered`; the player (`--transport auto`) connects within 2 s of its start and
/// fetches [`BULK`] bytes byte-exact over TCP; an honest session beside still works.
/// Returns the host, still running, and its ticket.
async fn a_player_behind(world: &mut World, filtered: &Ns, ruleset: &str) -> (Proc, String) {
    let (mut host, ticket, registered) = world.start_host("auto");
    assert!(logs(&registered, "transport", "quic"), "{registered}");
    world.net.nft(filtered, ruleset);
    let (mut player, listen, started) = world.start_player(&world.player_ns, &ticket, "auto");
    let fetched = fetch(&world.net, &world.player_ns, listen, BULK, 1, started).await;
    assert_eq!(fetched.total, BULK);
    println!(
        "first byte {:?} after the player's start",
        fetched.first_byte
    );
    assert!(
        fetched.first_byte < Duration::from_secs(2),
        "first byte {:?} after the player's start",
        fetched.first_byte
    );
    let open = player.wait_log("session open");
    assert!(logs(&open, "path", "relayed/tcp"), "{open}");
    world.honest_session_beside(&ticket).await;
    assert!(world.relay.running(), "the relay still runs");
    assert!(host.running() && player.running());
    (host, ticket)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_udp_is_dropped_a_player_moves_64_mib_over_tcp() {
    let Some(mut world) = World::build().await else {
        return;
    };
    let rule = format!("ip daddr {RELAY_IP} udp dport {RELAY_PORT} drop");
    let filtered = world.player_ns.clone();
    a_player_behind(&mut world, &filtered, &ruleset("output", &rule)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_udp_is_rejected_a_player_moves_64_mib_over_tcp() {
    let Some(mut world) = World::build().await else {
        return;
    };
    // At the relay's edge, for the player's network only: ICMP port unreachable.
    let rule = format!(
        "ip saddr 10.77.2.0/24 udp dport {RELAY_PORT} reject with icmpx type port-unreachable"
    );
    let filtered = world.relay_ns.clone();
    a_player_behind(&mut world, &filtered, &ruleset("input", &rule)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_large_udp_datagrams_die_a_player_moves_64_mib_over_tcp() {
    let Some(mut world) = World::build().await else {
        return;
    };
    // QUIC pads a client's Initial to 1200 bytes; smaller datagrams still pass.
    let rule = format!("ip daddr {RELAY_IP} udp length > 1000 drop");
    let filtered = world.player_ns.clone();
    a_player_behind(&mut world, &filtered, &ruleset("output", &rule)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_only_https_passes_a_player_on_auto_moves_64_mib_over_tcp_and_one_on_websocket_too() {
    let Some(mut world) = World::build().await else {
        return;
    };
    let rule =
        format!("ip daddr {RELAY_IP} tcp dport {RELAY_PORT} accept\n    ip daddr {RELAY_IP} drop");
    let filtered = world.player_ns.clone();
    let (mut host, ticket) =
        a_player_behind(&mut world, &filtered, &ruleset("output", &rule)).await;
    // Forced onto WebSocket, a player behind the same rule gets through too.
    let (mut player, listen, started) = world.start_player(&world.player_ns, &ticket, "websocket");
    let fetched = fetch(&world.net, &world.player_ns, listen, BULK, 3, started).await;
    assert_eq!(fetched.total, BULK);
    let open = player.wait_log("session open");
    assert!(logs(&open, "path", "relayed/websocket"), "{open}");
    let host_open = host.wait_log("session open");
    assert!(logs(&host_open, "path", "relayed/quic"), "{host_open}");
    assert!(world.relay.running() && host.running() && player.running());
}

/// A ruleset for the host's namespace that drops UDP between it and the relay,
/// both ways, as a firewall that blocks UDP does.
fn host_udp_cut() -> String {
    format!(
        "table inet netfault {{
  chain output {{
    type filter hook output priority 0; policy accept;
    ip daddr {RELAY_IP} udp dport {RELAY_PORT} drop
  }}
  chain input {{
    type filter hook input priority 0; policy accept;
    ip saddr {RELAY_IP} udp sport {RELAY_PORT} drop
  }}
}}
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_the_hosts_udp_is_dropped_it_registers_over_tcp_and_quic_and_websocket_players_reach_it(
) {
    let Some(mut world) = World::build().await else {
        return;
    };
    world.net.nft(&world.host_ns, &host_udp_cut());
    let (mut host, ticket, registered) = world.start_host("auto");
    assert!(logs(&registered, "transport", "tcp"), "{registered}");
    // The player's network is open: it keeps QUIC, whatever the host uses.
    let (mut player, listen, started) = world.start_player(&world.player_ns, &ticket, "auto");
    let fetched = fetch(&world.net, &world.player_ns, listen, BULK, 2, started).await;
    assert_eq!(fetched.total, BULK);
    let open = player.wait_log("session open");
    assert!(logs(&open, "path", "relayed/quic"), "{open}");
    let host_open = host.wait_log("session open");
    assert!(logs(&host_open, "path", "relayed/tcp"), "{host_open}");
    // A player forced onto WebSocket reaches the same host.
    let (mut ws_player, listen, started) =
        world.start_player(&world.player_ns, &ticket, "websocket");
    let fetched = fetch(&world.net, &world.player_ns, listen, BULK, 3, started).await;
    assert_eq!(fetched.total, BULK);
    let open = ws_player.wait_log("session open");
    assert!(logs(&open, "path", "relayed/websocket"), "{open}");
    let host_open = host.wait_log("session open");
    assert!(logs(&host_open, "path", "relayed/tcp"), "{host_open}");
    assert!(world.relay.running() && host.running() && player.running());
    assert!(ws_player.running());
}

/// How soon a host whose UDP is cut must be registered again, over TCP: it notices
/// 3.5 s without a packet from the relay (which answers its keep-alive every 2 s),
/// then QUIC gets a 250 ms head start before TCP.
const CUT_NOTICED: Duration = Duration::from_secs(5);

/// A host with no session at all: nothing but its keep-alives and the relay's
/// answers cross its connection, so QUIC's own timers (its idle timeout, far
/// longer) would notice a cut only late. Its silence watchdog notices it at
/// 3.5 s, and it is registered over TCP within the same bound as a busy host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_an_idle_hosts_udp_is_cut_its_watchdog_moves_it_to_tcp_in_seconds() {
    let Some(mut world) = World::build().await else {
        return;
    };
    let (mut host, _ticket, registered) = world.start_host("auto");
    assert!(logs(&registered, "transport", "quic"), "{registered}");
    // Idle a while, so the cut falls between keep-alives of a settled connection.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    world.net.nft(&world.host_ns, &host_udp_cut());
    let cut = Instant::now();
    let again = host.wait_log("relay state: registered");
    let took = cut.elapsed();
    println!("the idle host registered again {took:?} after the cut");
    assert!(logs(&again, "transport", "tcp"), "{again}");
    assert!(
        took < CUT_NOTICED,
        "registered again {took:?} after the cut"
    );
    assert!(world.relay.running() && host.running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_udp_is_cut_mid_session_the_host_registers_again_over_tcp_and_new_sessions_work() {
    let Some(mut world) = World::build().await else {
        return;
    };
    let (mut host, ticket, registered) = world.start_host("auto");
    assert!(logs(&registered, "transport", "quic"), "{registered}");
    let (mut player, listen, _) = world.start_player(&world.player_ns, &ticket, "auto");
    // A session in the middle of a transfer: some bytes read, the rest waiting.
    let mut running = connect_in(&world.net, &world.player_ns, listen).await;
    request(&mut running, BULK, 3).await;
    let mut head = vec![0u8; 1 + 64 * 1024];
    tokio::time::timeout(TRANSFER_DEADLINE, running.read_exact(&mut head))
        .await
        .expect("the first bytes in time")
        .expect("the first bytes");
    let open = player.wait_log("session open");
    assert!(logs(&open, "path", "relayed/quic"), "{open}");

    world.net.nft(&world.host_ns, &host_udp_cut());
    let cut = Instant::now();
    let again = host.wait_log("relay state: registered");
    let took = cut.elapsed();
    println!("registered again {took:?} after the cut");
    assert!(logs(&again, "transport", "tcp"), "{again}");
    assert!(
        took < CUT_NOTICED,
        "registered again {took:?} after the cut"
    );

    // The session that ran over the lost connection goes on: the player resumes it
    // through the relay, which now reaches the host over TCP, and the application
    // reads every byte, in order, to a clean end (PROTOCOL.md 10.8).
    let mut rest = Vec::new();
    tokio::time::timeout(TRANSFER_DEADLINE, running.read_to_end(&mut rest))
        .await
        .expect("the resumed session ends in time")
        .expect("a clean end, not an error");
    let mut expected = vec![0u8; BULK as usize];
    blindrelay_tests::Pattern::new(3).fill(&mut expected);
    let got = [&head[1..], &rest[..]].concat();
    assert!(
        got == expected,
        "{} of {BULK} bytes, byte-exact, across the cut",
        got.len()
    );
    let resumed = host.wait_log("session resumed");
    assert!(logs(&resumed, "route", "relayed/tcp"), "{resumed}");

    // New sessions work: the player, on an open network, over QUIC; the host over
    // TCP.
    let fetched = fetch(
        &world.net,
        &world.player_ns,
        listen,
        4 << 20,
        4,
        Instant::now(),
    )
    .await;
    assert_eq!(fetched.total, 4 << 20);
    let open = player.wait_log("session open");
    assert!(logs(&open, "path", "relayed/quic"), "{open}");
    let host_open = host.wait_log("session open");
    assert!(logs(&host_open, "path", "relayed/tcp"), "{host_open}");

    // UDP comes back: the host, trying QUIC every 10 s, moves its registration to
    // it, and the next session's host side is QUIC again. A probe already under way
    // when the rule goes may still time out (4 s), so this can take two probes.
    world.net.nft(&world.host_ns, "flush ruleset\n");
    host.wait_log_within("moved the registration to it", Duration::from_secs(40))
        .expect("the registration moves back to QUIC");
    let fetched = fetch(
        &world.net,
        &world.player_ns,
        listen,
        1 << 20,
        5,
        Instant::now(),
    )
    .await;
    assert_eq!(fetched.total, 1 << 20);
    let host_open = host.wait_log("session open");
    assert!(logs(&host_open, "path", "relayed/quic"), "{host_open}");
    assert!(world.relay.running() && host.running() && player.running());
}

#[test]
fn a_failing_test_leaves_no_namespace_and_no_process_behind() {
    let mut inside: Option<(Proc, String)> = None;
    let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let Some(mut net) = Net::try_new() else {
            return;
        };
        let ns = net.namespace("doomed");
        // Held outside the failing scope, so only the network's drop can end it.
        let sleeper = net.start(&ns, std::path::Path::new("sleep"), &["600"]);
        inside = Some((sleeper, ns.name().to_owned()));
        panic!("a test fails with a process in its namespace");
    }));
    let Some((mut sleeper, name)) = inside else {
        return; // skipped: no namespaces here
    };
    assert!(failed.is_err());
    assert!(!sleeper.running(), "the process inside was killed");
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(
        !list.split_whitespace().any(|listed| listed == name),
        "{name} is gone: {list}"
    );
}
