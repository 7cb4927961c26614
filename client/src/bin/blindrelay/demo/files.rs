//! The demo's built-in service: a folder served over HTTP on loopback, with range
//! requests, as a media server serves its library.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower_http::services::ServeDir;

/// A folder served at `http://127.0.0.1:PORT/`, until dropped.
pub(crate) struct FileServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl FileServer {
    /// Serves `folder` (its `index.html` at `/`) on a free loopback port.
    pub(crate) async fn start(folder: PathBuf) -> Result<Self> {
        let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
            .await
            .context("cannot listen for the demo's file server")?;
        let addr = listener.local_addr()?;
        let app = axum::Router::new().fallback_service(ServeDir::new(folder));
        let task = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::warn!(%err, "the demo's file server stopped");
            }
        });
        Ok(Self { addr, task })
    }

    /// Where it listens.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
