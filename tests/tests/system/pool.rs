//! A pool of relays that acts as one: each host is held by its owner (rendezvous
//! hashing over the member names), whichever member it or its players enter by;
//! members that join or drain move only the hosts they must; a member whose view
//! lags still gets players through; membership read from a file or from DNS.
//!
//! The relays are real relays on loopback sockets, one per member, sharing one
//! certificate (as a pool's members do), each on a port of its own.

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use blindrelay_client::{HostAgent, HostState, RelayUrl, SecretKey, Ticket};
use blindrelay_protocol::placement;
use blindrelay_protocol::{ControlMessage, ErrorCode, HostId};
use blindrelay_relay::{MemberSource, PoolConfig, Relay, RelayCertificate};
use blindrelay_tests::*;

/// How often test members read their list: quick, so a change is seen at once.
const REFRESH: Duration = Duration::from_millis(200);

/// How long a test host takes to reach its owner after a change, at most: the
/// refresh, the jitter and a registration, with room for a busy machine.
const SETTLE: Duration = Duration::from_secs(5);

/// A port free for UDP and TCP on 127.0.0.1, outside the kernel's ephemeral range.
fn free_port() -> u16 {
    (0..1000)
        .map(|_| fastrand::u16(20_000..32_000))
        .find(|&port| {
            UdpSocket::bind(("127.0.0.1", port)).is_ok()
                && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
        })
        .expect("a free port")
}

/// Relays of one pool on loopback, reading their members from files in a folder of
/// their own.
struct Pool {
    dir: PathBuf,
    certificate: RelayCertificate,
    members: Vec<Member>,
}

struct Member {
    name: String,
    relay: Option<Relay>,
}

impl Drop for Pool {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Pool {
    /// No members yet.
    fn empty() -> Self {
        init_tracing();
        let dir = std::env::temp_dir().join(format!(
            "br-pool-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self {
            dir,
            certificate: RelayCertificate::self_signed(&["localhost"]).unwrap(),
            members: Vec::new(),
        }
    }

    /// `n` members, all listed in the shared member file.
    async fn start(n: usize) -> Self {
        let mut pool = Self::empty();
        for _ in 0..n {
            pool.add_member(None);
        }
        pool.write_members(&pool.names());
        pool.wait_views(n).await;
        pool
    }

    fn shared_file(&self) -> PathBuf {
        self.dir.join("members")
    }

    fn names(&self) -> Vec<String> {
        self.members.iter().map(|m| m.name.clone()).collect()
    }

    fn write_members(&self, names: &[String]) {
        write_list(&self.shared_file(), names);
    }

    /// Starts one more member (not yet listed), reading `file` or the shared file.
    fn add_member(&mut self, file: Option<PathBuf>) -> usize {
        let source = MemberSource::File(file.unwrap_or_else(|| self.shared_file()));
        self.add_member_from(source)
    }

    fn add_member_from(&mut self, source: MemberSource) -> usize {
        let (relay, name) = loop {
            let port = free_port();
            let name = format!("127.0.0.1:{port}");
            let mut config = relay_config();
            config.listen = format!("127.0.0.1:{port}").parse().unwrap();
            config.certificate = self.certificate.clone();
            let mut pool = PoolConfig::new(&name, source.clone()).unwrap();
            pool.refresh = REFRESH;
            pool.move_jitter = Duration::from_millis(300);
            config.pool = Some(pool);
            if let Ok(relay) = Relay::spawn(config) {
                break (relay, name);
            }
        };
        self.members.push(Member {
            name,
            relay: Some(relay),
        });
        self.members.len() - 1
    }

    fn relay(&self, i: usize) -> &Relay {
        self.members[i].relay.as_ref().expect("a running member")
    }

    fn url(&self, i: usize) -> RelayUrl {
        self.relay(i).url().clone()
    }

    fn running(&self) -> impl Iterator<Item = (usize, &Relay)> {
        self.members
            .iter()
            .enumerate()
            .filter_map(|(i, m)| m.relay.as_ref().map(|relay| (i, relay)))
    }

    /// Waits until every running member sees `n` members.
    async fn wait_views(&self, n: usize) {
        wait_until("every member sees the pool", || {
            self.running()
                .all(|(_, relay)| relay.stats().pool_members == n as u64)
        })
        .await;
    }

    /// The member index that owns `host_id` among `names`.
    fn owner_among(&self, host_id: &HostId, names: &[String]) -> usize {
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let owner = placement::owner(host_id, &names).unwrap().unwrap();
        self.members.iter().position(|m| m.name == owner).unwrap()
    }

    /// How many of `hosts` each member (running or not) should hold when the
    /// members are `names`.
    fn placed(
        &self,
        hosts: &[(HostId, Ticket, tokio::task::JoinHandle<()>)],
        names: &[String],
    ) -> Vec<u64> {
        let mut counts = vec![0u64; self.members.len()];
        for (host_id, _, _) in hosts {
            counts[self.owner_among(host_id, names)] += 1;
        }
        counts
    }

    /// How many hosts each member holds now.
    fn held(&self) -> Vec<u64> {
        self.members
            .iter()
            .map(|m| m.relay.as_ref().map_or(0, |r| r.stats().registered_hosts))
            .collect()
    }
}

fn write_list(path: &Path, names: &[String]) {
    // Written whole and renamed into place, so a member never reads half a list.
    let partial = path.with_extension("partial");
    std::fs::write(&partial, format!("# pool members\n{}\n", names.join("\n"))).unwrap();
    std::fs::rename(partial, path).unwrap();
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The fixed key of test host `i`.
fn host_key(i: u8) -> SecretKey {
    let mut bytes = [0x40; 32];
    // Not the first byte: X25519 clears its low bits.
    bytes[5] = i;
    SecretKey::from_bytes(bytes)
}

/// Starts host `i` with `entry` as its ticket's relay, echoing every session.
async fn start_pool_host(i: u8, entry: &RelayUrl) -> (HostId, Ticket, tokio::task::JoinHandle<()>) {
    let agent = HostAgent::start(host_config(host_key(i), entry)).unwrap();
    wait_for_state(&agent, |state| *state == HostState::Registered).await;
    let (host_id, ticket) = (*agent.host_id(), agent.ticket().clone());
    (host_id, ticket, spawn_echo_host(agent))
}

/// `ticket` with `entry` as its relay: what a player holding the pool's name gets
/// when the name resolves to that member.
fn entering_at(ticket: &Ticket, entry: &RelayUrl) -> Ticket {
    Ticket::new(*ticket.host_id(), entry.clone(), Vec::new()).unwrap()
}

/// One session through `ticket` that moves `len` bytes each way, byte-exact.
async fn echo_session(player: &blindrelay_client::Player, ticket: &Ticket, seed: u64, len: u64) {
    let session = tokio::time::timeout(PATIENCE, player.connect(ticket))
        .await
        .expect("a session in time")
        .expect("the player reaches the host");
    let (mut read, mut write) = tokio::io::split(session);
    let (sent, got) = tokio::join!(
        write_pattern(&mut write, seed, len),
        read_pattern(&mut read, seed)
    );
    sent.unwrap();
    assert_eq!(got.unwrap(), len, "the echo comes back whole");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_host_ends_at_its_owner_and_every_player_reaches_it() {
    const HOSTS: u8 = 60;
    let pool = Pool::start(3).await;
    let names = pool.names();
    let mut hosts = Vec::new();
    for i in 0..HOSTS {
        let entry = pool.url(fastrand::usize(0..3));
        hosts.push(start_pool_host(i, &entry).await);
    }
    let expected = pool.placed(&hosts, &names);
    wait_until("every host is held by its owner", || {
        pool.held() == expected
    })
    .await;
    // Each member's share is binomial (60 hosts, 1/3 each, members named by
    // ports that change every run): 10 to 30 missed about one run in a few
    // hundred; below 5 or above 40 is a one-in-a-million draw, which a placement
    // that favours a member does every time.
    for &count in &expected {
        assert!(
            (5..=40).contains(&count),
            "placement is balanced: {expected:?}"
        );
    }
    let redirected: u64 = pool
        .running()
        .map(|(_, r)| r.stats().pool_redirects_register)
        .sum();
    assert!(
        redirected > 0,
        "hosts that entered at another member were redirected"
    );

    // Every host, through every member.
    let player = player();
    for (n, (_, ticket, _)) in hosts.iter().enumerate() {
        for entry in 0..3 {
            let ticket = entering_at(ticket, &pool.url(entry));
            echo_session(&player, &ticket, (n * 3 + entry) as u64, 16 * 1024).await;
        }
    }
    let sessions: u64 = pool.running().map(|(_, r)| r.stats().sessions_opened).sum();
    assert_eq!(sessions, u64::from(HOSTS) * 3);
    let connect_redirects: u64 = pool
        .running()
        .map(|(_, r)| r.stats().pool_redirects_connect)
        .sum();
    assert_eq!(
        connect_redirects,
        u64::from(HOSTS) * 2,
        "one redirect for each session that entered at a member other than the owner"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_says_nothing_about_whether_the_host_exists() {
    let pool = Pool::start(3).await;
    let names = pool.names();
    // A host and the member that does not own it.
    let key = host_key(7);
    let host_id = key.host_id();
    let owner = pool.owner_among(&host_id, &names);
    let other = (owner + 1) % 3;
    let ask = |redirects: u8| ControlMessage::Connect { host_id, redirects }.to_frame();

    let connection = raw_connection(pool.relay(other)).await;
    let before = raw_exchange(&connection, &ask(0), true)
        .await
        .expect("an answer");
    let ControlMessage::Redirect { members } = &before else {
        panic!("a member that does not own the host redirects, got {before:?}");
    };
    assert_eq!(members[0], names[owner], "to the owner first");
    assert_eq!(members.len(), 3);

    let (_, ticket, _echo) = start_pool_host(7, &pool.url(owner)).await;
    let after = raw_exchange(&connection, &ask(0), true)
        .await
        .expect("an answer");
    assert_eq!(
        before.to_frame(),
        after.to_frame(),
        "the same bytes whether the host is registered or not"
    );
    // Past the redirect limit the member answers for itself.
    let limit = raw_exchange(&connection, &ask(placement::MAX_REDIRECTS), true)
        .await
        .expect("an answer");
    // (It refuses the bare `Connect` for its missing Noise hello: no redirect.)
    assert!(
        matches!(
            limit,
            ControlMessage::Error {
                code: ErrorCode::BadRequest,
                ..
            }
        ),
        "got {limit:?}"
    );
    // And a player entering there is redirected once, then served.
    echo_session(&player(), &entering_at(&ticket, &pool.url(other)), 1, 4096).await;
}

/// A member that holds a host it does not own (registered there past the redirect
/// limit, as while members' views disagree) serves it where it is, and still
/// redirects a host it does not hold whether that host exists elsewhere or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_serves_a_host_it_holds_but_does_not_own() {
    let pool = Pool::start(3).await;
    let names = pool.names();
    let key = host_key(8);
    let host_id = key.host_id();
    let owner = pool.owner_among(&host_id, &names);
    let other = (owner + 1) % 3;
    let connection = raw_connection(pool.relay(other)).await;
    let ask = ControlMessage::connect(host_id).to_frame();
    let before = raw_exchange(&connection, &ask, true)
        .await
        .expect("an answer");
    assert!(
        matches!(before, ControlMessage::Redirect { .. }),
        "{before:?}"
    );

    let held = raw_connection(pool.relay(other)).await;
    let register = ControlMessage::Register {
        host_id,
        token: None,
        redirects: placement::MAX_REDIRECTS,
    };
    let (verdict, _registration, _) = register_with(&held, register, &key, &held).await;
    assert_eq!(verdict, ControlMessage::Registered, "served past the limit");
    // Held here: the Connect is this member's to answer (a bare one, without its
    // Noise hello, is refused for that), not redirected to the owner.
    let after = raw_exchange(&connection, &ask, true)
        .await
        .expect("an answer");
    assert!(
        matches!(
            after,
            ControlMessage::Error {
                code: ErrorCode::BadRequest,
                ..
            }
        ),
        "a held host is served where it is, got {after:?}"
    );
    // A host this member does not hold is sent on as before (to its owner, or, owned
    // here, to the members ranked after this one).
    let stranger = ControlMessage::connect(host_key(9).host_id()).to_frame();
    let answer = raw_exchange(&connection, &stranger, true)
        .await
        .expect("an answer");
    assert!(
        matches!(answer, ControlMessage::Redirect { .. }),
        "{answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_member_hands_its_hosts_over_and_others_are_untouched() {
    const HOSTS: u8 = 30;
    const LEN: u64 = 8 << 20;
    let mut pool = Pool::start(3).await;
    let names = pool.names();
    let mut hosts = Vec::new();
    for i in 0..HOSTS {
        hosts.push(start_pool_host(i, &pool.url(usize::from(i) % 3)).await);
    }
    let owners: Vec<usize> = hosts
        .iter()
        .map(|(id, _, _)| pool.owner_among(id, &names))
        .collect();
    let mut expected = vec![0u64; 3];
    owners.iter().for_each(|&o| expected[o] += 1);
    wait_until("placement settles", || pool.held() == expected).await;

    // One running session on each member, through a host it owns: each writes its
    // second half only once the drain has begun.
    let player = Arc::new(player());
    let mut running = Vec::new();
    for member in 0..3 {
        let at = owners
            .iter()
            .position(|&o| o == member)
            .expect("each member owns a host");
        let session = player
            .connect(&entering_at(&hosts[at].1, &pool.url(member)))
            .await
            .expect("a session");
        running.push(session);
    }
    let (go_tx, go) = tokio::sync::watch::channel(false);
    let mut transfers = tokio::task::JoinSet::new();
    for (member, session) in running.into_iter().enumerate() {
        let mut go = go.clone();
        transfers.spawn(async move {
            let (mut read, mut write) = tokio::io::split(session);
            let reading = tokio::spawn(async move { read_pattern(&mut read, member as u64).await });
            let mut pattern = Pattern::new(member as u64);
            write_pattern_from(&mut write, &mut pattern, LEN / 2)
                .await
                .unwrap();
            go.wait_for(|go| *go).await.unwrap();
            write_pattern_from(&mut write, &mut pattern, LEN / 2)
                .await
                .unwrap();
            tokio::io::AsyncWriteExt::shutdown(&mut write)
                .await
                .unwrap();
            (member, reading.await.unwrap())
        });
    }

    let drained = 0;
    let relay = pool.members[drained].relay.take().unwrap();
    let started = Instant::now();
    let drain = tokio::spawn(relay.drain(Duration::from_secs(60)));
    let survivors: Vec<String> = names
        .iter()
        .filter(|n| **n != names[drained])
        .cloned()
        .collect();
    let after = pool.placed(&hosts, &survivors);
    wait_until("the drained member's hosts are at their next owner", || {
        pool.held() == after
    })
    .await;
    let moved_in = started.elapsed();
    assert!(moved_in < SETTLE, "hosts moved in {moved_in:?}");

    // Players reach every host, the moved ones at their new owner.
    for (n, (_, ticket, _)) in hosts.iter().enumerate() {
        echo_session(
            &player,
            &entering_at(ticket, &pool.url(1 + n % 2)),
            n as u64,
            4096,
        )
        .await;
    }
    // The running sessions, the drained member's included, finish byte-exact, and the
    // drained member stops once its last session has ended.
    assert!(
        !drain.is_finished(),
        "a session still runs on the draining member"
    );
    go_tx.send_replace(true);
    while let Some(done) = transfers.join_next().await {
        let (member, got) = done.unwrap();
        assert_eq!(
            got.unwrap(),
            LEN,
            "the session on member {member} finished whole"
        );
    }
    tokio::time::timeout(PATIENCE, drain)
        .await
        .expect("the drained member stops after its last session")
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "well before the grace deadline"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_member_takes_its_share_and_nothing_else_moves() {
    const HOSTS: u8 = 60;
    let mut pool = Pool::start(3).await;
    let names = pool.names();
    let mut hosts = Vec::new();
    for i in 0..HOSTS {
        hosts.push(start_pool_host(i, &pool.url(usize::from(i) % 3)).await);
    }
    let expected = pool.placed(&hosts, &names);
    wait_until("placement settles", || pool.held() == expected).await;

    let fourth = pool.add_member(None);
    let names4 = pool.names();
    let stays: Vec<bool> = hosts
        .iter()
        .map(|(id, _, _)| pool.owner_among(id, &names4) == pool.owner_among(id, &names))
        .collect();
    let moving = stays.iter().filter(|stay| !**stay).count();
    assert!(
        moving * 100 < usize::from(HOSTS) * 40,
        "{moving} of {HOSTS} hosts would move"
    );
    assert!(moving > 0, "the new member owns some hosts");

    // Sessions with unmoved hosts run across the change.
    let player = Arc::new(player());
    let mut sessions = tokio::task::JoinSet::new();
    for (n, (_, ticket, _)) in hosts.iter().enumerate().filter(|(n, _)| stays[*n]).take(6) {
        let session = player.connect(ticket).await.expect("a session");
        sessions.spawn(async move {
            let (mut read, mut write) = tokio::io::split(session);
            let (sent, got) = tokio::join!(
                async {
                    // Half before the change is seen, half after.
                    let mut pattern = Pattern::new(n as u64);
                    write_pattern_from(&mut write, &mut pattern, 1 << 20).await?;
                    tokio::time::sleep(REFRESH * 5).await;
                    write_pattern_from(&mut write, &mut pattern, 1 << 20).await?;
                    tokio::io::AsyncWriteExt::shutdown(&mut write).await
                },
                read_pattern(&mut read, n as u64),
            );
            sent.unwrap();
            assert_eq!(got.unwrap(), 2 << 20);
        });
    }
    let listed = Instant::now();
    pool.write_members(&names4);
    pool.wait_views(4).await;
    let after = pool.placed(&hosts, &names4);
    wait_until("the moved hosts are at the new member", || {
        pool.held() == after
    })
    .await;
    // A moved host ends its old registration itself once it is registered with its
    // new owner, well before the 10 s after which the old member lets it go anyway.
    let settled = listed.elapsed();
    assert!(
        settled < Duration::from_secs(7),
        "the moves took {settled:?}"
    );
    assert_eq!(after[fourth] as usize, moving);
    let told: u64 = pool
        .running()
        .map(|(_, r)| r.stats().pool_moved_membership)
        .sum();
    // Each moving host is told once; one that reaches the new member before the
    // new member has read the new list is sent back, and told once more a few
    // refreshes later. Nobody else is told anything.
    assert!(
        (moving..=2 * moving).contains(&(told as usize)),
        "{told} hosts told to move for {moving} that move"
    );
    while let Some(done) = sessions.join_next().await {
        done.unwrap();
    }
    for (n, (_, ticket, _)) in hosts.iter().enumerate().take(12) {
        echo_session(
            &player,
            &entering_at(ticket, &pool.url(n % 4)),
            n as u64,
            4096,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_a_stale_list_still_gets_players_through_and_converges() {
    const HOSTS: u8 = 30;
    // Three members; the first reads a list of its own that still lacks the third.
    let mut pool = Pool::empty();
    let stale_file = pool.dir.join("stale");
    let stale = pool.add_member(Some(stale_file.clone()));
    pool.add_member(None);
    pool.add_member(None);
    let all = pool.names();
    write_list(&stale_file, &all[..2]);
    pool.write_members(&all);
    wait_until("the views settle", || {
        pool.relay(stale).stats().pool_members == 2
            && pool.relay(1).stats().pool_members == 3
            && pool.relay(2).stats().pool_members == 3
    })
    .await;

    let mut hosts = Vec::new();
    for i in 0..HOSTS {
        hosts.push(start_pool_host(i, &pool.url(usize::from(i) % 3)).await);
    }
    wait_until("every host is registered somewhere", || {
        pool.held().iter().sum::<u64>() == u64::from(HOSTS)
    })
    .await;
    // Every host is reachable through every member, however the views disagree.
    let player = player();
    for (n, (_, ticket, _)) in hosts.iter().enumerate() {
        for entry in 0..3 {
            echo_session(
                &player,
                &entering_at(ticket, &pool.url(entry)),
                n as u64,
                4096,
            )
            .await;
        }
    }
    // Once the stale member reads the full list, every host ends at its owner.
    write_list(&stale_file, &all);
    let expected = pool.placed(&hosts, &all);
    wait_until("placement converges", || pool.held() == expected).await;
}

/// dnsmasq on a loopback port, answering the pool's SRV records from `records`
/// (target, port); restarted to change them.
struct Dns {
    proc: Option<std::process::Child>,
}

impl Dns {
    const NAME: &'static str = "_blindrelay._udp.pool.test";

    fn start(port: u16, records: &[(String, u16)]) -> Option<Self> {
        let mut args = vec![
            "--keep-in-foreground".to_owned(),
            "--no-resolv".to_owned(),
            "--no-hosts".to_owned(),
            "--no-daemon".to_owned(),
            "--bind-interfaces".to_owned(),
            "--listen-address=127.0.0.1".to_owned(),
            format!("--port={port}"),
            "--user=root".to_owned(),
            "--pid-file".to_owned(),
        ];
        for (target, target_port) in records {
            args.push(format!("--srv-host={},{target},{target_port}", Self::NAME));
        }
        let proc = std::process::Command::new("dnsmasq")
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        Some(Self { proc: Some(proc) })
    }

    fn stop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            let _ = proc.kill();
            let _ = proc.wait();
        }
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_read_from_dns_place_hosts_and_follow_a_removal() {
    const HOSTS: u8 = 30;
    if std::process::Command::new("dnsmasq")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var_os("BLINDRELAY_DNS_REQUIRED").is_none(),
            "dnsmasq is required here (apt-get install dnsmasq-base)"
        );
        eprintln!("skipped: dnsmasq is not installed");
        return;
    }
    init_tracing();
    let dns_port = free_port();
    let server = format!("127.0.0.1:{dns_port}").parse().unwrap();
    let source = MemberSource::Dns {
        name: Dns::NAME.to_owned(),
        server: Some(server),
        member_domain: None,
    };
    let mut pool = Pool::empty();
    for _ in 0..3 {
        pool.add_member_from(source.clone());
    }
    // The SRV targets are names that read as the members' loopback addresses, so
    // clients on this machine need no resolver of their own to reach them.
    let records = |pool: &Pool| -> Vec<(String, u16)> {
        pool.running()
            .map(|(_, relay)| ("127.0.0.1".to_owned(), relay.local_addr().port()))
            .collect()
    };
    let mut dns = Dns::start(dns_port, &records(&pool)).expect("dnsmasq starts");
    pool.wait_views(3).await;
    let names = pool.names();

    let mut hosts = Vec::new();
    for i in 0..HOSTS {
        hosts.push(start_pool_host(i, &pool.url(usize::from(i) % 3)).await);
    }
    let expected = pool.placed(&hosts, &names);
    wait_until("every host is held by its owner", || {
        pool.held() == expected
    })
    .await;

    // One member leaves the DNS records, as a pod that is no longer ready does: it
    // is out of every view, its own included, and its hosts move.
    let remaining: Vec<(String, u16)> = records(&pool).into_iter().take(2).collect();
    dns.stop();
    let _dns = Dns::start(dns_port, &remaining).expect("dnsmasq restarts");
    pool.wait_views(2).await;
    let left: Vec<String> = names[..2].to_vec();
    let after = pool.placed(&hosts, &left);
    wait_until(
        "the hosts of the removed member are at their next owner",
        || {
            let held = pool.held();
            eprintln!("held {held:?}, want {after:?}");
            held == after
        },
    )
    .await;
    let player = player();
    for (n, (_, ticket, _)) in hosts.iter().enumerate().take(10) {
        echo_session(
            &player,
            &entering_at(ticket, &pool.url(n % 2)),
            n as u64,
            4096,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_whose_ticket_names_a_member_gone_for_good_registers_with_the_others() {
    let mut pool = Pool::start(3).await;
    let names = pool.names();
    // A host that enters by member 0 and is owned by member 1.
    let i = (0..=255u8)
        .find(|&i| pool.owner_among(&host_key(i).host_id(), &names) == 1)
        .expect("a host member 1 owns");
    let (_, ticket, _echo) = start_pool_host(i, &pool.url(0)).await;
    wait_until("the host is at its owner", || pool.held()[1] == 1).await;
    // Its entry member goes away for good; then its owner stops abruptly.
    drop(pool.members[0].relay.take());
    drop(pool.members[1].relay.take());
    wait_until("the host registers with the last member", || {
        pool.held()[2] == 1
    })
    .await;
    echo_session(&player(), &entering_at(&ticket, &pool.url(2)), 9, 4096).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_ignores_its_move_holds_the_draining_member_ten_seconds_at_most() {
    let mut pool = Pool::start(2).await;
    let names = pool.names();
    // A host member 0 owns, registered by hand, that never answers a Move.
    let key = (0..=255u8)
        .map(host_key)
        .find(|key| pool.owner_among(&key.host_id(), &names) == 0)
        .expect("a host member 0 owns");
    let connection = raw_connection(pool.relay(0)).await;
    let (verdict, _send, mut recv) = register_with(
        &connection,
        ControlMessage::register(key.host_id()),
        &key,
        &connection,
    )
    .await;
    assert_eq!(verdict, ControlMessage::Registered);

    let relay = pool.members[0].relay.take().unwrap();
    let stats = relay.stats();
    assert_eq!(stats.registered_hosts, 1);
    let started = Instant::now();
    let drain = tokio::spawn(relay.drain(Duration::from_secs(120)));
    let told = tokio::time::timeout(PATIENCE, read_message(&mut recv))
        .await
        .expect("told in time");
    let Some(ControlMessage::Move { members }) = told else {
        panic!("a draining pool member tells its host to move, got {told:?}");
    };
    assert_eq!(members, vec![names[1].clone()], "to its next owner");
    // The host keeps its stream open and says nothing: the member ends the
    // registration at its deadline, and its drain finishes long before its own.
    tokio::time::timeout(PATIENCE, drain)
        .await
        .expect("the drain is not held by a silent host")
        .unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(20), "held {took:?}");
}

/// The member that holds a host dies under a running download (its tasks end, and
/// the operator's list drops it, as a health check would): host and player each
/// find the host's next owner, the session resumes there, and the download goes on
/// byte-exact (PROTOCOL.md 10.8).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_goes_on_through_the_next_owner_when_its_member_dies() {
    const LEN: u64 = 32 << 20;
    let mut pool = Pool::start(3).await;
    let names = pool.names();
    // A host whose owner is not the member it and its player enter by.
    let entry = 0;
    let (host, owner) = (0..)
        .map(|i: u8| (i, pool.owner_among(&host_key(i).host_id(), &names)))
        .find(|&(_, owner)| owner != entry)
        .unwrap();
    let (host_id, ticket, _echo) = start_pool_host(host, &pool.url(entry)).await;
    wait_until("the host is at its owner", || pool.held()[owner] == 1).await;

    let player = player();
    let session = tokio::time::timeout(
        PATIENCE,
        player.connect(&entering_at(&ticket, &pool.url(entry))),
    )
    .await
    .expect("a session in time")
    .expect("a session");
    assert!(session.resumable());
    let (mut read, mut write) = tokio::io::split(session);
    let (go_tx, mut go) = tokio::sync::watch::channel(false);
    let writer = tokio::spawn(async move {
        let mut pattern = Pattern::new(5);
        write_pattern_from(&mut write, &mut pattern, LEN / 4)
            .await
            .unwrap();
        go.wait_for(|go| *go).await.unwrap();
        write_pattern_from(&mut write, &mut pattern, LEN * 3 / 4)
            .await
            .unwrap();
        tokio::io::AsyncWriteExt::shutdown(&mut write)
            .await
            .unwrap();
        write
    });
    let reader = tokio::spawn(async move {
        let got = read_pattern(&mut read, 5).await;
        (got, read)
    });
    wait_until("the first quarter went through the owner", || {
        pool.relay(owner).stats().bytes_host_to_player >= LEN / 8
    })
    .await;

    // The rest is written as the owner dies.
    go_tx.send_replace(true);
    drop(pool.members[owner].relay.take());
    let survivors: Vec<String> = names
        .iter()
        .filter(|name| **name != names[owner])
        .cloned()
        .collect();
    pool.write_members(&survivors);
    let next = pool.owner_among(&host_id, &survivors);

    let (got, read) = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("the download finishes")
        .unwrap();
    assert_eq!(got.expect("every byte, in order"), LEN);
    let write = writer.await.unwrap();
    let session = read.unsplit(write);
    assert_eq!(session.resumes(), 1, "resumed once");
    assert!(
        pool.relay(next).stats().bytes_host_to_player > 0,
        "the rest came through the next owner"
    );
}

/// Two members that disagree for good, as a member taken out of the list but still
/// running does: the one that no longer lists itself sends every host to the other,
/// and the other sends this host back. The host counts the redirects it followed in
/// its hello, and after [`placement::MAX_REDIRECTS`] the member it reaches registers
/// it where it is: no endless round between the two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_that_send_a_host_to_each_other_register_it_after_the_redirect_limit() {
    let mut pool = Pool::empty();
    let (file_a, file_b) = (pool.dir.join("a"), pool.dir.join("b"));
    let a = pool.add_member(Some(file_a.clone()));
    let b = pool.add_member(Some(file_b.clone()));
    let names = pool.names();
    write_list(&file_a, &names);
    write_list(&file_b, &names[a..=a]);
    wait_until("each member reads its list", || {
        pool.relay(a).stats().pool_members == 2 && pool.relay(b).stats().pool_members == 1
    })
    .await;
    // A host that `a` sends to `b`, which sends it back.
    let i = (0..=u8::MAX)
        .find(|i| pool.owner_among(&host_key(*i).host_id(), &names) == b)
        .expect("a host b owns");
    let (_, _, echo) = start_pool_host(i, &pool.url(a)).await;
    assert_eq!(pool.held().iter().sum::<u64>(), 1);
    let redirected: u64 = pool
        .running()
        .map(|(_, relay)| relay.stats().pool_redirects_register)
        .sum();
    assert_eq!(redirected, u64::from(placement::MAX_REDIRECTS));
    echo.abort();
}
