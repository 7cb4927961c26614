//! When a command stops, and what it leaves behind meanwhile (a pid file).

use std::path::PathBuf;

use anyhow::{Context, Result};

/// The host's process id in a file, for scripts that signal it; removed when the
/// host exits (cleanly or with an error; not when killed outright).
pub(crate) struct PidFile(PathBuf);

impl PidFile {
    pub(crate) fn create(path: PathBuf) -> Result<Self> {
        std::fs::write(&path, format!("{}\n", std::process::id()))
            .with_context(|| format!("cannot write pid file {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Ctrl-C (SIGINT), listened for from the moment this is made, for the whole run:
/// made before the first line a script acts on is printed, so an interrupt sent
/// right after that line ends the program cleanly rather than by the signal's
/// default action, and one between two turns of a loop is not lost.
pub(crate) struct Interrupt {
    #[cfg(unix)]
    signal: tokio::signal::unix::Signal,
}

impl Interrupt {
    pub(crate) fn new() -> Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                signal: signal(SignalKind::interrupt()).context("cannot handle Ctrl-C")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// The next interrupt.
    pub(crate) async fn recv(&mut self) {
        #[cfg(unix)]
        {
            self.signal.recv().await;
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// When a command stops: at Ctrl-C, or, inside `blindrelay demo`, when the demo
/// says so.
pub(crate) struct Stop(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>);

impl Stop {
    /// At the next Ctrl-C (SIGINT), listened for from now on.
    pub(crate) fn interrupt() -> Result<Self> {
        let mut interrupt = Interrupt::new()?;
        Ok(Self(Box::pin(async move { interrupt.recv().await })))
    }

    /// Once `stopped` reads `true` (or its sender is gone).
    pub(crate) fn when(mut stopped: tokio::sync::watch::Receiver<bool>) -> Self {
        Self(Box::pin(async move {
            let _ = stopped.wait_for(|stopped| *stopped).await;
        }))
    }
}

impl std::future::Future for Stop {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        self.0.as_mut().poll(cx)
    }
}
