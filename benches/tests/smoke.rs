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
