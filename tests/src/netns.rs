//! Real networks for the system tests: Linux network namespaces joined by veth
//! pairs, with nftables rulesets inside them, so a test can block, reject or cut
//! UDP exactly as a hotel or office network does, with the kernel doing it.
//!
//! Each [`Net`] owns its namespaces (names unique to this process and test) and a
//! scratch folder; dropping it, also when a test panics, kills every process still
//! inside its namespaces and then deletes them, which removes their veths, addresses,
//! routes and rules with them.
//!
//! The test process itself stays in the root namespace. Sockets it needs inside a
//! namespace (a service behind a host, a client in front of a player) are made on a
//! short-lived thread that joins the namespace ([`Net::enter`]): a socket belongs to
//! the namespace it was created in for its whole life, whichever thread uses it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::process::Proc;
use crate::PATIENCE;

/// Set to `1` where these tests must run (CI): a machine that cannot build
/// namespaces then fails them instead of skipping them.
pub const REQUIRED_VAR: &str = "BLINDRELAY_NETNS_REQUIRED";

/// One namespace of a [`Net`], by its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ns(String);

impl Ns {
    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.0
    }

    /// The command prefix that runs a program inside this namespace.
    pub fn prefix(&self) -> [&str; 4] {
        ["ip", "netns", "exec", &self.0]
    }
}

/// A set of network namespaces built for one test, deleted on drop.
pub struct Net {
    id: String,
    namespaces: Vec<Ns>,
    dir: PathBuf,
}

impl Net {
    /// A new, empty network, or `None` (after printing why) where this machine
    /// cannot build one: not root, or `ip` or `nft` missing. With
    /// `BLINDRELAY_NETNS_REQUIRED=1` that is a failure instead.
    pub fn try_new() -> Option<Self> {
        if let Err(why) = supported() {
            let required = std::env::var(REQUIRED_VAR).is_ok_and(|value| value == "1");
            assert!(!required, "{REQUIRED_VAR}=1 but {why}");
            println!("skipped: needs root, ip and nft ({why})");
            return None;
        }
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "brt{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(format!("blindrelay-{id}"));
        std::fs::create_dir_all(&dir).expect("scratch folder");
        Some(Self {
            id,
            namespaces: Vec::new(),
            dir,
        })
    }

    /// A scratch folder for this test's files (keys), removed on drop.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Adds a namespace named after `role`, with its loopback up.
    pub fn namespace(&mut self, role: &str) -> Ns {
        let ns = Ns(format!("{}-{role}", self.id));
        {
            // `ip netns add` sets up the shared mount for /run/netns on first use;
            // tests running in parallel take turns rather than race on it.
            let _turn = IP_NETNS
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            ip(&["netns", "add", ns.name()]);
        }
        // Recorded before anything else can fail, so drop deletes it.
        self.namespaces.push(ns.clone());
        ip(&["-n", ns.name(), "link", "set", "lo", "up"]);
        ns
    }

    /// Joins `a` and `b` with a veth pair on `10.77.<subnet>.0/24`: `a` gets `.1`,
    /// `b` gets `.2`. Returns the two addresses.
    pub fn link(&mut self, a: &Ns, b: &Ns, subnet: u8) -> (String, String) {
        let (a_if, b_if) = (format!("v{subnet}a"), format!("v{subnet}b"));
        // Made inside `a` and moved straight into `b`, so the pair's names never
        // meet another test's in the root namespace.
        ip(&[
            "-n",
            a.name(),
            "link",
            "add",
            &a_if,
            "type",
            "veth",
            "peer",
            "name",
            &b_if,
            "netns",
            b.name(),
        ]);
        let (a_addr, b_addr) = (format!("10.77.{subnet}.1"), format!("10.77.{subnet}.2"));
        for (ns, name, addr) in [(a, &a_if, &a_addr), (b, &b_if, &b_addr)] {
            ip(&[
                "-n",
                ns.name(),
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                name,
            ]);
            ip(&["-n", ns.name(), "link", "set", name, "up"]);
        }
        (a_addr, b_addr)
    }

    /// Gives `ns` the address `addr` (with its prefix, such as `10.0.0.1/32`) on its
    /// loopback: packets `ns` routes to it are then its own.
    pub fn add_local_address(&self, ns: &Ns, addr: &str) {
        ip(&["-n", ns.name(), "addr", "add", addr, "dev", "lo"]);
    }

    /// A service on `ns`'s loopback, as a host forwards to: for each connection it
    /// reads a request (length and seed, 8 bytes each, big-endian) and answers one
    /// byte `+` and then that many bytes of the seed's pattern. Needs a runtime.
    pub fn pattern_service(&self, ns: &Ns) -> SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = self.enter(ns, || std::net::TcpListener::bind("127.0.0.1:0").unwrap());
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut tcp, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut request = [0u8; 16];
                    if tcp.read_exact(&mut request).await.is_err() {
                        return;
                    }
                    let len = u64::from_be_bytes(request[..8].try_into().unwrap());
                    let seed = u64::from_be_bytes(request[8..].try_into().unwrap());
                    if tcp.write_all(b"+").await.is_ok() {
                        let _ = crate::write_pattern(&mut tcp, seed, len).await;
                    }
                });
            }
        });
        addr
    }

    /// Sends everything `ns` has no route for to `via`.
    pub fn default_route(&self, ns: &Ns, via: &str) {
        ip(&["-n", ns.name(), "route", "add", "default", "via", via]);
    }

    /// Sets the sysctl `key` to `value` inside `ns` (such as
    /// `net.ipv4.ip_forward`, which every new namespace starts with off).
    /// Written from a thread inside `ns`: `/proc/sys/net` shows the namespace of
    /// whoever opens it.
    pub fn sysctl(&self, ns: &Ns, key: &str, value: &str) {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        self.enter(ns, || std::fs::write(&path, value))
            .unwrap_or_else(|err| panic!("sysctl {key}={value} in {}: {err}", ns.name()));
    }

    /// Applies an nftables ruleset (in `nft -f` syntax) inside `ns`.
    pub fn nft(&self, ns: &Ns, ruleset: &str) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ip netns exec nft");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(ruleset.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "nft refused the ruleset: {}\n{ruleset}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts `bin` with `args` inside `ns` (see [`Proc::start_under`]), and
    /// returns once the process is inside: until `ip netns exec` has joined the
    /// namespace it is not listed there, and a drop in that moment would miss it.
    pub fn start(&self, ns: &Ns, bin: &Path, args: &[&str]) -> Proc {
        use std::os::unix::fs::MetadataExt;
        let mut proc = Proc::start_under(&ns.prefix(), bin, args);
        let inode = std::fs::metadata(Path::new("/run/netns").join(ns.name()))
            .expect("the namespace's file")
            .ino();
        let want = format!("net:[{inode}]");
        let link = format!("/proc/{}/ns/net", proc.pid());
        let deadline = Instant::now() + PATIENCE;
        while proc.running() {
            if std::fs::read_link(&link).is_ok_and(|ns| ns.as_os_str() == want.as_str()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not enter {}",
                bin.display(),
                ns.name()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        proc
    }

    /// Runs `f` on a thread inside `ns` and returns what it returns: sockets it
    /// makes stay in `ns` wherever they are used later.
    pub fn enter<T: Send>(&self, ns: &Ns, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = std::fs::File::open(Path::new("/run/netns").join(ns.name()))
                        .expect("the namespace's file");
                    // Only this thread moves; the test's other threads stay put.
                    rustix::thread::move_into_link_name_space(
                        std::os::fd::AsFd::as_fd(&file),
                        Some(rustix::thread::LinkNameSpaceType::Network),
                    )
                    .expect("setns into the namespace");
                    f()
                })
                .join()
                .expect("the thread inside the namespace")
        })
    }
}

/// What a home router does to its LAN's packets ([`Net::homes`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Nat {
    /// One public port per inside socket whatever the destination
    /// (endpoint-independent mapping); in only what answers a flow the inside
    /// opened.
    Home,
    /// A new random public port for each destination.
    Symmetric,
    /// One public port per inside socket, and in whatever comes to it from
    /// anywhere (endpoint-independent filtering): a "full cone", as a router with
    /// its one machine in a DMZ is.
    FullCone,
}

/// Where the player of [`Net::homes`] is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Player {
    /// In a home of its own, behind a router doing this.
    Behind(Nat),
    /// In the host's home, on another LAN of the host's router, which does not
    /// hairpin: a packet to its own public address is dropped.
    WithTheHost,
}

impl Nat {
    /// The router's ruleset, `wan` its public interface and `public` its address.
    /// Each router also drops what arrives unasked on its own public address:
    /// otherwise conntrack records a peer's early packet as a flow to the router,
    /// and the NAT then gives the inside's answer another port.
    fn ruleset(self, wan: &str, public: &str, inside: &str) -> String {
        let translate = match self {
            Self::Home | Self::FullCone => format!("oifname \"{wan}\" snat to {public}"),
            Self::Symmetric => format!("oifname \"{wan}\" snat to {public} fully-random"),
        };
        // A full cone sends what comes to any port of its public address to the
        // machine inside, on that port: the one the mapping kept.
        let (cone, cone_in) = match self {
            Self::FullCone => (
                format!(
                    "iifname \"{wan}\" ip daddr {public} udp dport 1024-65535 dnat to {inside}"
                ),
                format!("iifname \"{wan}\" ct status dnat accept"),
            ),
            Self::Home | Self::Symmetric => (String::new(), String::new()),
        };
        format!(
            "table ip nat {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    {cone}
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    {translate}
  }}
}}
table ip filter {{
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname \"{wan}\" ct state != {{ established, related }} drop
    iifname != \"{wan}\" ip daddr {public} drop
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    {cone_in}
    iifname \"{wan}\" ct state != {{ established, related }} drop
  }}
}}
"
        )
    }
}

/// The namespaces of [`Net::homes`].
pub struct HomeNets {
    /// The internet, where a relay listens on `relay_ip`.
    pub inet: Ns,
    /// An address of `inet` both homes reach.
    pub relay_ip: String,
    /// The host's machine, behind its router.
    pub host_ns: Ns,
    /// The router in front of the player.
    pub player_router: Ns,
    /// The player's machine.
    pub player_ns: Ns,
}

impl Net {
    /// Two homes and the internet between them: the host behind a router doing
    /// `host_nat`, the player where `player` says.
    ///
    /// ```text
    ///   host 10.77.3.2 -- ra (NAT to 10.77.1.2) --+
    ///                                             inet (10.77.1.1)
    /// player 10.77.4.2 -- rb (NAT to 10.77.2.2) --+
    /// ```
    pub fn homes(&mut self, host_nat: Nat, player: Player) -> HomeNets {
        let inet = self.namespace("inet");
        let ra = self.namespace("ra");
        let rb = self.namespace("rb");
        let host_ns = self.namespace("host");
        let player_ns = self.namespace("player");
        // `link` names the interfaces v<subnet>a and v<subnet>b.
        let (inet_a, ra_public) = self.link(&inet, &ra, 1);
        let (inet_b, rb_public) = self.link(&inet, &rb, 2);
        let (ra_lan, host_ip) = self.link(&ra, &host_ns, 3);
        let player_router = match player {
            Player::Behind(_) => rb.clone(),
            Player::WithTheHost => ra.clone(),
        };
        let (player_lan, player_ip) = self.link(&player_router, &player_ns, 4);
        for ns in [&inet, &ra, &rb] {
            self.sysctl(ns, "net.ipv4.ip_forward", "1");
        }
        self.default_route(&ra, &inet_a);
        self.default_route(&rb, &inet_b);
        self.default_route(&host_ns, &ra_lan);
        self.default_route(&player_ns, &player_lan);
        self.nft(&ra, &host_nat.ruleset("v1b", &ra_public, &host_ip));
        if let Player::Behind(player_nat) = player {
            self.nft(&rb, &player_nat.ruleset("v2b", &rb_public, &player_ip));
        }
        HomeNets {
            inet,
            relay_ip: inet_a,
            host_ns,
            player_router,
            player_ns,
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // A namespace whose processes live on would outlast `ip netns del`: kill
        // them first (only ours can be in these namespaces), and wait until they
        // are gone, bounded.
        for ns in &self.namespaces {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let pids = pids_in(ns);
                if pids.is_empty() || Instant::now() > deadline {
                    break;
                }
                for pid in pids {
                    let _ = Command::new("kill")
                        .args(["-KILL", &pid])
                        .stderr(Stdio::null())
                        .status();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _turn = IP_NETNS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for ns in &self.namespaces {
            let _ = Command::new("ip")
                .args(["netns", "del", ns.name()])
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Serialises `ip netns add` and `del` across the tests of this process.
static IP_NETNS: Mutex<()> = Mutex::new(());

/// Why this machine cannot build namespaces, if it cannot.
fn supported() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|err| err.to_string())?;
    // `Uid:` lists real, effective, saved and filesystem ids; effective counts.
    let euid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .unwrap_or("?");
    if euid != "0" {
        return Err(format!("running as uid {euid}"));
    }
    for (tool, flag) in [("ip", "-V"), ("nft", "--version")] {
        let runs = Command::new(tool)
            .arg(flag)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !runs {
            return Err(format!("`{tool}` not found"));
        }
    }
    Ok(())
}

/// Runs `ip` with `args` and fails the test, naming the command, if it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The processes inside `ns`.
fn pids_in(ns: &Ns) -> Vec<String> {
    Command::new("ip")
        .args(["netns", "pids", ns.name()])
        .output()
        .map(|out| {
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}
