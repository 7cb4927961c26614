//! `blindrelay-bench`: the load generator operators run against a relay, and the
//! pieces the criterion micro-benchmarks share with it.
//!
//! The binary (`src/main.rs`) runs one scenario ([`scenario`]) against a relay it
//! starts as a child process ([`relay_process`]) or a remote one, measures the same
//! load on the direct path and through a plain TCP splice ([`tcp_splice`]) in the same
//! run, and writes a [`report::Report`]: a table on the terminal, `--json` for
//! scripts, and `report` turns JSON files into `BENCHMARKS.md`.

#![forbid(unsafe_code)]

pub mod fixture;
pub mod machine;
pub mod measure;
pub mod noise_fixture;
pub mod plot;
pub mod progress;
pub mod punch;
pub mod raw;
pub mod record;
pub mod relay_process;
pub mod report;
pub mod scenario;
pub mod tcp_splice;
pub mod transport;
