//! Real processes: builds the binaries and runs them as a user would, reading their
//! output line by line.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use blindrelay_client::RelayUrl;
use blindrelay_harness::{Process, Stderr};

use crate::PATIENCE;

/// Builds both binaries (a no-op when they are fresh) and returns their directory.
pub fn binaries() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/system-<hash> -> target/<profile>
    let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut build = Command::new(env!("CARGO"));
    // Run cargo as a user's shell would: variables cargo set for this test process
    // (CARGO_PKG_*, library paths, ...) would make build scripts rerun and rebuild
    // the whole dependency tree.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let keep = matches!(name.as_ref(), "CARGO_HOME" | "CARGO_TARGET_DIR");
        if !keep && (name.starts_with("CARGO") || name.starts_with("LD_LIBRARY_PATH")) {
            build.env_remove(name.as_ref());
        }
    }
    build.current_dir(workspace).args([
        "build",
        "--quiet",
        "--bin",
        "blindrelayd",
        "--bin",
        "blindrelay",
    ]);
    if dir.file_name().is_some_and(|name| name == "release") {
        build.arg("--release");
    }
    assert!(build.status().unwrap().success(), "binaries build");
    dir
}

/// A child process that is killed if the test fails before it ends it.
pub struct Proc {
    process: Process,
}

impl Proc {
    /// Starts `bin` with `args`, logging at `info` without colour, its stdout and
    /// stderr read line by line.
    pub fn start(bin: &Path, args: &[&str]) -> Self {
        Self::start_with_env(bin, args, &[])
    }

    /// Like [`Proc::start`], with extra environment variables.
    pub fn start_with_env(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(bin);
        command.args(args);
        Self::spawn(command, env)
    }

    /// Like [`Proc::start`], run under a command `prefix` that ends by executing
    /// what follows it in its own place, such as `ip netns exec NS`: the process
    /// id, signals and the kill on drop then reach `bin` itself.
    pub fn start_under(prefix: &[&str], bin: &Path, args: &[&str]) -> Self {
        let (program, prefix_args) = prefix.split_first().expect("a non-empty prefix");
        let mut command = Command::new(program);
        command.args(prefix_args).arg(bin).args(args);
        Self::spawn(command, &[])
    }

    /// Whether the process is still running (it has not exited, whatever way).
    pub fn running(&mut self) -> bool {
        self.process.try_wait().unwrap().is_none()
    }

    fn spawn(mut command: Command, env: &[(&str, &str)]) -> Self {
        // No punching (`--no-punch=false` switches it back on): on one machine every
        // punch succeeds, and a test of the relay wants its sessions relayed.
        command
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env("BLINDRELAY_NO_PUNCH", "true")
            .env("BLINDRELAY_HOST_NO_PUNCH", "true")
            .envs(env.iter().copied());
        Self {
            process: Process::spawn(&mut command, Stderr::Lines).unwrap(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.id()
    }

    /// The value of the next stdout line `name: value`.
    pub fn value(&self, name: &str) -> String {
        let line = self
            .process
            .stdout_line(PATIENCE)
            .expect("a line on stdout");
        line.strip_prefix(&format!("{name}: "))
            .unwrap_or_else(|| panic!("expected `{name}: ...`, got {line:?}"))
            .to_owned()
    }

    /// Waits for a stderr line containing `text`, and returns it.
    pub fn wait_log(&self, text: &str) -> String {
        self.wait_log_within(text, PATIENCE)
            .unwrap_or_else(|| panic!("no log line containing {text:?}"))
    }

    /// Waits at most `patience` for a stderr line containing `text`; `None` if none
    /// came (the lines read meanwhile are consumed).
    pub fn wait_log_within(&self, text: &str, patience: Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + patience;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = self.process.stderr_line(left)?;
            if line.contains(text) {
                return Some(line);
            }
        }
    }

    /// Reads stdout lines until one `wanted`, within [`PATIENCE`]: that line, and
    /// the lines before it. Fails naming `what` when none comes.
    fn next_line_where(&self, what: &str, wanted: impl Fn(&str) -> bool) -> (String, Vec<String>) {
        let deadline = std::time::Instant::now() + PATIENCE;
        let mut before = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let got = self
                .process
                .stdout_line(left)
                .unwrap_or_else(|| panic!("no stdout line {what} after {before:?}"));
            if wanted(&got) {
                return (got, before);
            }
            before.push(got);
        }
    }

    /// Waits for a stdout line that starts with `prefix`, skipping others, and
    /// returns it whole.
    pub fn wait_line_starting(&self, prefix: &str) -> String {
        let what = format!("starting {prefix:?}");
        self.next_line_where(&what, |line| line.starts_with(prefix))
            .0
    }

    /// Waits for the stdout line `line`; returns the lines before it.
    pub fn lines_until(&self, line: &str) -> Vec<String> {
        self.next_line_where(&format!("{line:?}"), |got| got == line)
            .1
    }

    /// Waits for the stdout line `line`, skipping others.
    pub fn wait_line(&self, line: &str) {
        self.next_line_where(&format!("{line:?}"), |got| got == line);
    }

    /// Sends a signal by name (`USR1`, ...) with the shell's `kill`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("sh")
            .args(["-c", &format!("kill -{name} {}", self.process.id())])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit, however it ends.
    pub fn wait_exit(mut self) {
        let exited = self.process.wait_within(PATIENCE).unwrap();
        assert!(exited.is_some(), "process did not exit in time");
    }

    /// Sends Ctrl-C (SIGINT) and waits for a clean exit.
    /// Returns the stderr lines no `wait_log` consumed.
    pub fn interrupt(mut self) -> Vec<String> {
        // The shell's own `kill`, so the test needs no extra package.
        let status = Command::new("sh")
            .args(["-c", &format!("kill -INT {}", self.process.id())])
            .status()
            .unwrap();
        assert!(status.success());
        let status = self.process.wait_within(PATIENCE).unwrap();
        let status = status.expect("process did not exit after Ctrl-C");
        assert!(status.success(), "clean exit after Ctrl-C, got {status}");
        // The reader thread sends every line before it sees the end of the pipe.
        self.process.rest_of_stderr()
    }
}

/// Makes a key for `role` (`host` or `player`) at `out` with `blindrelay keygen`, as
/// a user would; returns what it printed.
pub fn keygen(bin: &Path, out: &Path, role: &str) -> String {
    let made = Command::new(bin.join("blindrelay"))
        .args(["keygen", "--role", role, "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(made.status.success(), "keygen: {made:?}");
    String::from_utf8(made.stdout).unwrap()
}

/// `blindrelayd` on a free loopback port, and its URL with `localhost` for the
/// address: the name a share link for browsers needs, whose per-host origins are
/// `<host id>.localhost`.
pub fn relay_by_name(bin: &Path) -> (Proc, RelayUrl) {
    let relay = Proc::start(&bin.join("blindrelayd"), &["--listen", "127.0.0.1:0"]);
    let url: RelayUrl = relay.value("relay url").parse().unwrap();
    let by_name = RelayUrl::new("localhost", url.port(), url.pin().copied()).unwrap();
    (relay, by_name)
}

/// A process's resident memory, from /proc.
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .expect("VmRSS line");
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}
