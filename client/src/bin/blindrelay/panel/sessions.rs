//! The sessions a host has open now, for the panel: which path each runs on, which
//! player (its short key), how long it has run, how many bytes went each way and
//! how often it resumed on a new stream. Counts only; no payload is ever looked at.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use blindrelay_client::{SecureStream, SessionPath};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The open sessions, shared by the session tasks and the panel.
#[derive(Clone, Default)]
pub(crate) struct SessionTable {
    open: Arc<Mutex<BTreeMap<u64, Arc<SessionEntry>>>>,
}

/// One session's line in the table.
struct SessionEntry {
    /// Whether the session runs through the relay now (a resume may move it).
    relayed: AtomicBool,
    resumes: AtomicU32,
    player: String,
    started: Instant,
    to_player: AtomicU64,
    from_player: AtomicU64,
}

/// A session as the panel shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct SessionView {
    /// The number in the host's log lines.
    pub(crate) id: u64,
    /// `direct` or `relayed`: where it runs now.
    pub(crate) path: &'static str,
    /// How often it went on over a new stream (a relay restart, a path lost).
    pub(crate) resumes: u32,
    /// The player's short key.
    pub(crate) player: String,
    /// Whole seconds since the session opened.
    pub(crate) seconds: u64,
    /// Bytes from the local service to the player.
    pub(crate) bytes_to_player: u64,
    /// Bytes from the player to the local service.
    pub(crate) bytes_from_player: u64,
}

/// Keeps a session in the table until dropped.
pub(crate) struct OpenSession {
    table: SessionTable,
    id: u64,
    entry: Arc<SessionEntry>,
}

impl SessionTable {
    /// Adds session `id`; it leaves the table when the returned value is dropped.
    pub(crate) fn open(&self, id: u64, path: SessionPath, player: String) -> OpenSession {
        let entry = Arc::new(SessionEntry {
            relayed: AtomicBool::new(path == SessionPath::Relayed),
            resumes: AtomicU32::new(0),
            player,
            started: Instant::now(),
            to_player: AtomicU64::new(0),
            from_player: AtomicU64::new(0),
        });
        if let Ok(mut open) = self.open.lock() {
            open.insert(id, entry.clone());
        }
        OpenSession {
            table: self.clone(),
            id,
            entry,
        }
    }

    /// The sessions open now, oldest first.
    pub(crate) fn snapshot(&self) -> Vec<SessionView> {
        let Ok(open) = self.open.lock() else {
            return Vec::new();
        };
        open.iter()
            .map(|(id, entry)| SessionView {
                id: *id,
                path: path_name(entry.relayed.load(Ordering::Relaxed)),
                resumes: entry.resumes.load(Ordering::Relaxed),
                player: entry.player.clone(),
                seconds: entry.started.elapsed().as_secs(),
                bytes_to_player: entry.to_player.load(Ordering::Relaxed),
                bytes_from_player: entry.from_player.load(Ordering::Relaxed),
            })
            .collect()
    }
}

/// The panel's name for a path.
fn path_name(relayed: bool) -> &'static str {
    if relayed {
        "relayed"
    } else {
        "direct"
    }
}

impl OpenSession {
    /// Wraps the local service's side of the session: what is read from it goes to
    /// the player, what is written to it came from the player.
    pub(crate) fn count<T>(&self, service: T) -> Counted<T> {
        Counted {
            inner: service,
            entry: self.entry.clone(),
        }
    }

    /// Wraps the session itself: its path and resumes are kept up to date as it
    /// is read and written.
    pub(crate) fn watch(&self, session: SecureStream) -> Watched {
        Watched {
            inner: session,
            entry: self.entry.clone(),
        }
    }
}

/// A session whose path and resumes are noted in its entry at every read and write.
pub(crate) struct Watched {
    inner: SecureStream,
    entry: Arc<SessionEntry>,
}

impl Watched {
    fn note<T>(&self, polled: Poll<T>) -> Poll<T> {
        if polled.is_ready() {
            let relayed = self.inner.path() == SessionPath::Relayed;
            self.entry.relayed.store(relayed, Ordering::Relaxed);
            self.entry
                .resumes
                .store(self.inner.resumes(), Ordering::Relaxed);
        }
        polled
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.note(polled)
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note(polled)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        if let Ok(mut open) = self.table.open.lock() {
            open.remove(&self.id);
        }
    }
}

/// A stream whose bytes are counted into a session's entry.
pub(crate) struct Counted<T> {
    inner: T,
    entry: Arc<SessionEntry>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let read = (buf.filled().len() - before) as u64;
            self.entry.to_player.fetch_add(read, Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = polled {
            self.entry
                .from_player
                .fetch_add(written as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_are_counted_each_way_and_a_closed_session_leaves() {
        let table = SessionTable::default();
        let session = table.open(7, SessionPath::Relayed, "abcd".to_owned());
        let (service, mut far) = tokio::io::duplex(1024);
        let mut counted = session.count(service);
        counted.write_all(b"hello").await.expect("write");
        far.write_all(b"world!").await.expect("write");
        let mut got = [0u8; 6];
        counted.read_exact(&mut got).await.expect("read");
        let views = table.snapshot();
        assert_eq!(views.len(), 1);
        assert_eq!((views[0].id, views[0].path), (7, "relayed"));
        assert_eq!(views[0].bytes_from_player, 5);
        assert_eq!(views[0].bytes_to_player, 6);
        drop(session);
        assert!(table.snapshot().is_empty());
    }
}
