//! Reloading the certificate: on SIGHUP, or when its files change.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use blindrelay_relay::{Relay, RelayCertificate};
use tracing::{info, warn};

/// How often the certificate files are checked for changes.
pub(crate) const CERTIFICATE_POLL: Duration = Duration::from_secs(10);

/// Loads the certificate files and serves new connections with them; on failure (a
/// file half written, say) keeps the current certificate.
pub(crate) fn reload_certificate(relay: &mut Relay, (cert, key): &(PathBuf, PathBuf)) {
    let loaded = RelayCertificate::from_pem_files(cert, key)
        .and_then(|certificate| relay.reload_certificate(certificate).cloned());
    match loaded {
        Ok(url) => {
            info!(%url, "certificate reloaded; open connections keep theirs");
            println!("relay url: {url}");
        }
        Err(err) => warn!(%err, "certificate not reloaded; keeping the current one"),
    }
}

/// Notices when either certificate file's modification time or size changes.
pub(crate) struct FileWatch {
    files: [PathBuf; 2],
    seen: [Option<(std::time::SystemTime, u64)>; 2],
}

impl FileWatch {
    pub(crate) fn new(cert: &std::path::Path, key: &std::path::Path) -> Self {
        let files = [cert.to_owned(), key.to_owned()];
        let seen = files.clone().map(|file| stamp(&file));
        Self { files, seen }
    }

    pub(crate) fn changed(&mut self) -> bool {
        let now = self.files.clone().map(|file| stamp(&file));
        let changed = now != self.seen;
        self.seen = now;
        changed
    }
}

fn stamp(file: &std::path::Path) -> Option<(std::time::SystemTime, u64)> {
    let meta = std::fs::metadata(file).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// SIGHUP, as a stream of events (never fires where there are no such signals).
pub(crate) struct Hangup(#[cfg(unix)] tokio::signal::unix::Signal);

impl Hangup {
    pub(crate) async fn next(&mut self) {
        #[cfg(unix)]
        {
            if self.0.recv().await.is_some() {
                return;
            }
        }
        std::future::pending::<()>().await
    }
}

pub(crate) fn hangup_signal() -> Result<Hangup> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Hangup(
            signal(SignalKind::hangup()).context("listening for SIGHUP")?,
        ))
    }
    #[cfg(not(unix))]
    {
        Ok(Hangup())
    }
}
