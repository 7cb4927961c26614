//! The progress bar: on stderr, and only when stderr is a terminal, so scripts and
//! CI logs get the final table alone.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar over the whole run, in seconds of planned measurement.
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    /// A bar for a run planned to take `total`.
    pub fn new(total: Duration) -> Self {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(total.as_millis() as u64), target);
        if let Ok(style) =
            ProgressStyle::with_template("{elapsed_precise} [{wide_bar}] {percent:>3}% {msg}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        Self { bar }
    }

    /// A bar that never draws (tests, nested runs).
    pub fn hidden() -> Self {
        Self {
            bar: ProgressBar::hidden(),
        }
    }

    /// Says what runs now.
    pub fn message(&self, text: impl Into<String>) {
        self.bar.set_message(text.into());
    }

    /// Counts `step` of the planned time as done.
    pub fn advance(&self, step: Duration) {
        self.bar.inc(step.as_millis() as u64);
    }

    /// Removes the bar before the results are printed.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
