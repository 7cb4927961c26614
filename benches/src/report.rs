//! What a run reports: every figure under a stable key, the run's parameters and
//! machine, a table for people, and series over time for plots. The same structure
//! is the `--json` file, and `report` renders JSON files into `BENCHMARKS.md`, so
//! the record is never typed by hand.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::machine::Machine;

/// One run of one scenario.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// `throughput`, `latency`, `setup`, `idle` or `soak`.
    pub scenario: String,
    /// When the run started (RFC 3339, UTC).
    pub date: String,
    /// The exact command line.
    pub command: String,
    /// The machine it ran on.
    pub machine: Machine,
    /// Where the relay ran: a child process of the harness, or a remote URL.
    pub relay: String,
    /// Every knob of the scenario.
    pub params: Value,
    /// Every figure, flat, under stable keys (`relay_gbps`, `relay_p99_us`, ...).
    /// A figure that could not be measured is `null`.
    #[serde(flatten)]
    pub figures: BTreeMap<String, Value>,
    /// The human table.
    pub table: Table,
    /// Caveats of this run (figures unavailable, errors seen).
    pub notes: Vec<String>,
    /// Figures over time, for `--plot`.
    pub series: Vec<Series>,
}

/// A table: a header row and rows of cells.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Table {
    /// Column names.
    pub headers: Vec<String>,
    /// Rows, each as long as `headers`.
    pub rows: Vec<Vec<String>>,
}

/// Values over time: (seconds since the phase started, value).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Series {
    /// What is plotted, e.g. "relay Gbit/s".
    pub name: String,
    /// The unit of the values, which also picks the plot panel.
    pub unit: String,
    /// The points.
    pub points: Vec<(f64, f64)>,
}

impl Table {
    /// A table with these column names.
    pub fn new(headers: &[&str]) -> Self {
        Self {
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Aligned columns for a terminal.
    pub fn to_text(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                if let Some(width) = widths.get_mut(i) {
                    *width = (*width).max(cell.chars().count());
                }
            }
        }
        let line = |cells: &[String]| {
            let mut out = String::new();
            for (i, cell) in cells.iter().enumerate() {
                let width = widths.get(i).copied().unwrap_or(0);
                if i == 0 {
                    let _ = write!(out, "{cell:<width$}");
                } else {
                    let _ = write!(out, "  {cell:>width$}");
                }
            }
            out.trim_end().to_owned()
        };
        let mut out = line(&self.headers);
        out.push('\n');
        out.push_str(
            &"-".repeat(widths.iter().sum::<usize>() + 2 * widths.len().saturating_sub(1)),
        );
        for row in &self.rows {
            out.push('\n');
            out.push_str(&line(row));
        }
        out
    }

    /// A Markdown table.
    pub fn to_markdown(&self) -> String {
        let mut out = format!("| {} |\n", self.headers.join(" | "));
        let _ = writeln!(
            out,
            "|{}",
            self.headers
                .iter()
                .enumerate()
                .map(|(i, _)| if i == 0 { "---|" } else { "---:|" })
                .collect::<String>()
        );
        for row in &self.rows {
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
        out
    }
}

impl Report {
    /// A report of `scenario` with no figures yet.
    pub fn new(scenario: &str, machine: Machine, relay: String, params: Value) -> Self {
        Self {
            scenario: scenario.to_owned(),
            date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            command: command_line(),
            machine,
            relay,
            params,
            figures: BTreeMap::new(),
            table: Table::default(),
            notes: Vec::new(),
            series: Vec::new(),
        }
    }

    /// Records a figure; `None` (not measurable in this run) becomes `null`.
    pub fn figure(&mut self, key: &str, value: Option<f64>) {
        let value = value
            .filter(|v| v.is_finite())
            .map(|v| Value::from((v * 1e4).round() / 1e4))
            .unwrap_or(Value::Null);
        self.figures.insert(key.to_owned(), value);
    }

    /// Files every figure whose key starts with `from` followed by `_` under `to`
    /// as well (`relay_quic_gbps` as `relay_gbps`), so the first relayed path of a
    /// run keeps the keys scripts read from runs before there was a choice.
    pub fn alias(&mut self, from: &str, to: &str) {
        let prefix = format!("{from}_");
        let copies: Vec<(String, Value)> = self
            .figures
            .iter()
            .filter_map(|(key, value)| {
                let rest = key.strip_prefix(&prefix)?;
                Some((format!("{to}_{rest}"), value.clone()))
            })
            .collect();
        self.figures.extend(copies);
    }

    /// A figure as a number, if present and not null.
    pub fn number(&self, key: &str) -> Option<f64> {
        self.figures.get(key).and_then(Value::as_f64)
    }

    /// Adds a note.
    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    /// What the terminal shows at the end of a run.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "{} — {}\nmachine: {} (load at start {})\nrelay: {}\n\n{}\n",
            self.scenario,
            self.date,
            self.machine.summary(),
            self.machine.load_at_start,
            self.relay,
            self.table.to_text()
        );
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        out
    }
}

/// The command line as typed (program name without its directory).
fn command_line() -> String {
    let mut args = std::env::args();
    let program = args
        .next()
        .map(|p| {
            std::path::Path::new(&p)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or(p)
        })
        .unwrap_or_default();
    std::iter::once(program)
        .chain(args.map(|a| if a.contains(' ') { format!("'{a}'") } else { a }))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Formats a number for tables: `-` when missing, otherwise `digits` decimals.
pub fn cell(value: Option<f64>, digits: usize) -> String {
    match value {
        Some(v) if v.is_finite() => format!("{v:.digits$}"),
        _ => "-".to_owned(),
    }
}

/// `a / b` when both are known and `b` is not zero.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
    }
}

/// The median of some values.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len() % 2 == 0 {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    })
}
