//! Smoke test of the load generator: every scenario, tiny and short, against a relay
//! it starts itself; the JSON has the stable keys with sane values, and `report`
//! renders it. Debug builds: the figures mean nothing, only their presence does.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_blindrelay-bench"))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("blindrelay-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Runs `scenario` with `args` and returns its JSON.
fn run(scenario: &str, args: &[&str]) -> (PathBuf, Value) {
    let json = scratch(&format!("{scenario}.json"));
    let output = bench()
        .arg(scenario)
        .args(["--duration", "700ms", "--warmup", "200ms", "--json"])
        .arg(&json)
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{scenario} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let value: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(value["scenario"], scenario);
    assert!(value["machine"]["cores"].as_u64().unwrap() >= 1);
    assert!(value["command"].as_str().unwrap().contains(scenario));
    assert_eq!(value["errors"].as_f64(), Some(0.0), "{value:#}");
    (json, value)
}

fn positive(value: &Value, key: &str) -> f64 {
    let number = value[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {value:#}"));
    assert!(number > 0.0, "{key} = {number}");
    number
}

#[test]
fn throughput_latency_and_report() {
    let (throughput, value) = run("throughput", &["--write-size", "16384"]);
    for key in [
        "relay_gbps",
        "direct_gbps",
        "splice_gbps",
        "relay_cpu_s_per_gib",
    ] {
        positive(&value, key);
    }
    let (latency, value) = run("latency", &["--rate", "200"]);
    for key in ["relay_p99_us", "direct_p99_us", "splice_p99_us"] {
        positive(&value, key);
    }
    let markdown = bench()
        .arg("report")
        .arg(&throughput)
        .arg(&latency)
        .output()
        .unwrap();
    assert!(markdown.status.success());
    let text = String::from_utf8(markdown.stdout).unwrap();
    assert!(text.contains("### throughput"), "{text}");
    assert!(text.contains("added p99"), "{text}");
}

/// `scale` runs a relay on each thread count, as its runtime counts them, and
/// compares them.
#[test]
fn scale_compares_relays_on_one_thread_and_on_two() {
    let (_, value) = run(
        "scale",
        &[
            "--workers",
            "1,2",
            "--sessions",
            "2",
            "--transport",
            "quic,tcp",
        ],
    );
    for path in ["relay_quic", "relay_tcp"] {
        for workers in [1, 2] {
            positive(&value, &format!("{path}_w{workers}_gbps"));
            positive(&value, &format!("{path}_w{workers}_cpu_s_per_gib"));
        }
        assert_eq!(value[format!("{path}_w1_speedup")].as_f64(), Some(1.0));
        positive(&value, &format!("{path}_w2_efficiency"));
        positive(&value, &format!("{path}_w1_cores_busy"));
    }
    assert_eq!(value["relay_w1_threads"].as_f64(), Some(1.0));
    assert_eq!(value["relay_w2_threads"].as_f64(), Some(2.0));
}

#[test]
fn setup_counts_sessions_and_registrations() {
    let (_, value) = run(
        "setup",
        &["--sessions", "4", "--hosts", "1", "--players", "2"],
    );
    positive(&value, "sessions_per_s");
    positive(&value, "registrations_per_s");
    positive(&value, "relay_sessions_per_relay_cpu_s");
}

#[test]
fn idle_and_soak_measure_relay_memory() {
    let (_, value) = run("idle", &["--registrations", "100", "--endpoints", "4"]);
    positive(&value, "bytes_per_registration");
    assert_eq!(value["registered"].as_f64(), Some(100.0));
    let (_, value) = run("idle", &["--registrations", "50", "--transport", "tcp"]);
    positive(&value, "bytes_per_registration");
    assert_eq!(value["registered"].as_f64(), Some(50.0));
    let (_, value) = run(
        "soak",
        &[
            "--registrations",
            "20",
            "--sessions",
            "1",
            "--churn-rate",
            "5",
            "--ping-rate",
            "50",
        ],
    );
    positive(&value, "relay_rss_max_bytes");
}

#[test]
fn each_transport_gets_its_own_relayed_path_in_one_run() {
    let (_, value) = run(
        "throughput",
        &[
            "--write-size",
            "16384",
            "--transport",
            "quic,tcp",
            "--mixed",
            "--paths",
            "splice,relay",
        ],
    );
    for key in [
        "relay_quic_gbps",
        "relay_tcp_gbps",
        "relay_host_quic_player_tcp_gbps",
        "relay_host_tcp_player_quic_gbps",
        "relay_tcp_cpu_s_per_gib",
        "relay_tcp_cpu_vs_splice",
        "relay_tcp_vs_splice",
    ] {
        positive(&value, key);
    }
    // The first transport named keeps the keys of runs before there was a choice.
    assert_eq!(value["relay_gbps"], value["relay_quic_gbps"]);
    assert_eq!(
        value["params"]["transports"],
        serde_json::json!(["quic", "tcp"])
    );

    let (_, value) = run(
        "latency",
        &[
            "--rate",
            "200",
            "--transport",
            "tcp",
            "--paths",
            "direct,relay",
        ],
    );
    positive(&value, "relay_tcp_p99_us");
    assert_eq!(value["relay_p99_us"], value["relay_tcp_p99_us"]);
    assert!(value["relay_quic_p99_us"].is_null());
    assert!(value["added_p99_us"].is_number(), "{value:#}");

    let (_, value) = run(
        "setup",
        &[
            "--sessions",
            "2",
            "--hosts",
            "1",
            "--players",
            "1",
            "--transport",
            "tcp",
            "--paths",
            "relay",
            "--no-registrations",
        ],
    );
    positive(&value, "relay_tcp_sessions_per_s");
    positive(&value, "relay_tcp_sessions_per_relay_cpu_s");
}

#[test]
fn an_unknown_transport_is_refused() {
    let output = bench()
        .args(["throughput", "--transport", "udp"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("udp"), "{stderr}");
}

#[test]
fn a_pool_measures_sessions_at_the_owner_and_redirected_once() {
    let (json, value) = run(
        "setup",
        &[
            "--pool",
            "3",
            "--sessions",
            "2",
            "--hosts",
            "1",
            "--players",
            "1",
            "--paths",
            "relay",
            "--transport",
            "quic,tcp",
        ],
    );
    for key in [
        "relay_quic_sessions_per_s",
        "relay_quic_redirected_sessions_per_s",
        "relay_tcp_redirected_sessions_per_s",
        "relay_quic_redirected_vs_owner_sessions",
        "relay_quic_redirected_entry_cpu_ms_each",
        "relay_quic_redirected_owner_cpu_ms_each",
        "redirect_exchange_p50_ms",
    ] {
        positive(&value, key);
    }
    // Entering at the owner takes no redirect; entering elsewhere exactly one, as
    // the members themselves counted.
    for transport in ["quic", "tcp"] {
        assert_eq!(
            value[format!("relay_{transport}_sessions_redirects_each")].as_f64(),
            Some(0.0),
            "{value:#}"
        );
        assert_eq!(
            value[format!("relay_{transport}_redirected_sessions_redirects_each")].as_f64(),
            Some(1.0),
            "{value:#}"
        );
    }
    assert!(value["relay_quic_redirected_added_round_trips"].is_number());
    let markdown = bench().arg("report").arg(&json).output().unwrap();
    assert!(markdown.status.success());
    let text = String::from_utf8(markdown.stdout).unwrap();
    assert!(text.contains("pool of 3 (QUIC)"), "{text}");
    assert!(text.contains("pool of 3 (TLS/TCP)"), "{text}");
}

#[test]
fn a_pool_is_started_by_the_harness_only_when_no_relay_is_named() {
    let output = bench()
        .args([
            "setup",
            "--pool",
            "3",
            "--relay",
            "blindrelay://127.0.0.1:1",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--pool"), "{stderr}");
    let output = bench().args(["setup", "--pool", "1"]).output().unwrap();
    assert!(!output.status.success());
}

/// Three `serve-relay` children as one pool, as an operator's pool would be: the
/// harness pointed at one member by `--relay` must not assume that member holds
/// the hosts.
#[test]
fn a_remote_pool_entered_at_one_member_works() {
    let dir = scratch("remote-pool");
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = blindrelay_relay::RelayCertificate::self_signed_pem(&["localhost"]).unwrap();
    std::fs::write(dir.join("cert.pem"), cert).unwrap();
    std::fs::write(dir.join("key.pem"), key).unwrap();
    let members_file = dir.join("members");
    let mut members = Vec::new();
    for _ in 0..3 {
        members.push(PoolChild::start(&dir, &members_file));
    }
    let names: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
    std::fs::write(dir.join("members.partial"), names.join("\n") + "\n").unwrap();
    std::fs::rename(dir.join("members.partial"), &members_file).unwrap();
    for member in &mut members {
        assert_eq!(member.ask("members 3"), "members 3");
    }
    let url = members[0].url.clone();
    let (_, value) = run(
        "setup",
        &[
            "--relay",
            &url,
            "--sessions",
            "2",
            "--hosts",
            "3",
            "--players",
            "1",
            "--paths",
            "relay",
        ],
    );
    positive(&value, "relay_quic_sessions_per_s");
    positive(&value, "registrations_per_s");
    // Two thirds of fresh host ids belong to another member: their registrations
    // were redirected and followed, not counted as errors (checked by `run`).
    positive(&value, "registrations_redirects_each");
    let redirected: u64 = members
        .iter_mut()
        .map(|m| {
            let stats = m.ask("stats");
            blindrelay_bench::relay_process::PoolStats::parse(&stats)
                .unwrap_or_else(|| panic!("{stats}"))
                .redirects_register
        })
        .sum();
    assert!(redirected > 0, "no member redirected a registration");
}

/// A `serve-relay` pool member, stopped (stdin closed, then killed) on drop.
struct PoolChild {
    child: std::process::Child,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    name: String,
    url: String,
}

impl PoolChild {
    fn start(dir: &std::path::Path, members_file: &std::path::Path) -> Self {
        use std::io::BufRead;
        let mut child = bench()
            .arg("serve-relay")
            .arg("--certificate")
            .arg(dir.join("cert.pem"))
            .arg("--private-key")
            .arg(dir.join("key.pem"))
            .arg("--pool-members-file")
            .arg(members_file)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut name, mut url) = (None, None);
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(rest) = line.strip_prefix("pool member: ") {
                name = Some(rest.to_owned());
            } else if let Some(rest) = line.strip_prefix("relay url: ") {
                url = Some(rest.to_owned());
            } else if line == "ready" {
                break;
            }
        }
        Self {
            child,
            lines,
            name: name.expect("a member name"),
            url: url.expect("a relay url"),
        }
    }

    /// One command and its reply (the child bounds its own waits).
    fn ask(&mut self, command: &str) -> String {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{command}").unwrap();
        stdin.flush().unwrap();
        self.lines.next().unwrap().unwrap()
    }
}

impl Drop for PoolChild {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `punch` builds its two homes in network namespaces (root, `ip` and `nft`), where
/// the machine allows it (always in CI, which sets `BLINDRELAY_NETNS_REQUIRED`), and
/// reports that the path was punched and every download moved to it (each lasts
/// 4 s, read at 4 MiB/s: time enough to punch on a loaded machine).
#[test]
fn punch_reports_the_punched_path_and_the_sessions_that_moved() {
    // The scenario runs `blindrelay` from beside the harness: build it there, as
    // the system tests do (a fresh checkout's `cargo test` builds only the harness).
    let bin_dir = blindrelay_tests::process::binaries();
    assert_eq!(
        Some(bin_dir.as_path()),
        std::path::Path::new(env!("CARGO_BIN_EXE_blindrelay-bench")).parent()
    );
    let output = bench()
        .args([
            "punch",
            "--sessions",
            "2",
            "--bytes",
            "16MiB",
            "--rate",
            "4MiB",
        ])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    let required = std::env::var("BLINDRELAY_NETNS_REQUIRED").is_ok_and(|v| v == "1");
    if !output.status.success() && stderr.contains("cannot be built here") && !required {
        eprintln!("skipped: {stderr}");
        return;
    }
    assert!(output.status.success(), "punch failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("path punched: yes"), "{stdout}");
    assert!(stdout.contains("sessions moved to it: 2 of 2"), "{stdout}");
}
