//! What machine a run was made on, recorded with every result so runs can be
//! compared: cores, CPU model, memory, kernel, and the load when the run started
//! (other work on a shared machine moves every figure).

use serde::{Deserialize, Serialize};

/// The machine a run was made on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    /// Cores this process may use.
    pub cores: usize,
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: String,
    /// Total memory, GiB.
    pub memory_gib: f64,
    /// Kernel release.
    pub kernel: String,
    /// /proc/loadavg (1, 5, 15 minutes) when the run started.
    pub load_at_start: String,
}

impl Machine {
    /// Reads the machine's description; fields that cannot be read say "unknown".
    pub fn detect() -> Self {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let cpu_model = cpuinfo
            .lines()
            .find_map(|line| {
                let (key, value) = line.split_once(':')?;
                (key.trim() == "model name").then(|| value.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let memory_kib: f64 = read("/proc/meminfo")
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        let load: Vec<String> = read("/proc/loadavg")
            .split_whitespace()
            .take(3)
            .map(str::to_owned)
            .collect();
        Self {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            memory_gib: (memory_kib / (1024.0 * 1024.0) * 10.0).round() / 10.0,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            load_at_start: load.join(" "),
        }
    }

    /// One line for tables: "2 cores, AMD EPYC, 23.4 GiB".
    pub fn summary(&self) -> String {
        format!(
            "{} cores, {}, {} GiB",
            self.cores, self.cpu_model, self.memory_gib
        )
    }
}
