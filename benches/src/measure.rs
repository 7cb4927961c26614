//! CPU time and resident memory of a process, from /proc.
//!
//! `utime + stime` in /proc/PID/stat counts every thread of the process, live or
//! exited, in clock ticks (`getconf CLK_TCK`, 100 on Linux): a 10 ms resolution, fine
//! for phases of seconds. `VmRSS` in /proc/PID/status is the resident set in KiB.

use std::path::PathBuf;

/// Why a figure could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeasureError {
    /// The /proc file could not be read (process gone, or not Linux).
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file did not have the expected shape.
    #[error("cannot parse {path}")]
    Parse {
        /// The file.
        path: PathBuf,
    },
}

/// Reads one process's CPU time and memory.
#[derive(Debug, Clone)]
pub struct ProcessProbe {
    pid: u32,
    ticks_per_s: f64,
}

impl ProcessProbe {
    /// A probe of process `pid`.
    pub fn new(pid: u32) -> Self {
        Self {
            pid,
            ticks_per_s: clock_ticks_per_s(),
        }
    }

    /// A probe of this process.
    pub fn this_process() -> Self {
        Self::new(std::process::id())
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// User plus system CPU seconds used so far, all threads.
    pub fn cpu_seconds(&self) -> Result<f64, MeasureError> {
        let path = PathBuf::from(format!("/proc/{}/stat", self.pid));
        let text = read(&path)?;
        // The command name (field 2) may hold spaces and parentheses: count fields
        // from after its closing parenthesis, where field 3 (state) starts.
        let after = text
            .rfind(')')
            .map(|at| &text[at + 1..])
            .ok_or_else(|| MeasureError::Parse { path: path.clone() })?;
        let fields: Vec<&str> = after.split_whitespace().collect();
        let tick = |index: usize| -> Result<f64, MeasureError> {
            fields
                .get(index)
                .and_then(|field| field.parse::<u64>().ok())
                .map(|ticks| ticks as f64)
                .ok_or_else(|| MeasureError::Parse { path: path.clone() })
        };
        // utime is field 14 and stime field 15: indexes 11 and 12 from field 3.
        Ok((tick(11)? + tick(12)?) / self.ticks_per_s)
    }

    /// Resident memory in bytes.
    pub fn rss_bytes(&self) -> Result<u64, MeasureError> {
        let path = PathBuf::from(format!("/proc/{}/status", self.pid));
        let text = read(&path)?;
        text.lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .ok_or(MeasureError::Parse { path })
    }
}

fn read(path: &PathBuf) -> Result<String, MeasureError> {
    std::fs::read_to_string(path).map_err(|source| MeasureError::Read {
        path: path.clone(),
        source,
    })
}

/// Clock ticks per second of /proc's CPU times.
fn clock_ticks_per_s() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse::<f64>().ok())
        .filter(|ticks| *ticks > 0.0)
        // USER_HZ is 100 on every mainstream Linux architecture.
        .unwrap_or(100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let probe = ProcessProbe::this_process();
        let mut x = 0u64;
        for i in 0..10_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(probe.cpu_seconds().unwrap() >= 0.0);
        assert!(probe.rss_bytes().unwrap() > 1024 * 1024);
    }
}
