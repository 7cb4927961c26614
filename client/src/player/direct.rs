//! The direct path: a QUIC connection to an address in the ticket, and a session
//! stream that starts with the Noise hello (there is no relay to address).

use std::net::SocketAddr;
use std::sync::Arc;

use blindrelay_protocol::noise::{Hello, PlayerHandshake};
use blindrelay_protocol::HostId;
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tracing::debug;

use super::{ConnectError, Connector, DirectConnectError, PendingSession, SetupStreamError};
use crate::endpoint::{direct_client_config, DIRECT_SERVER_NAME};
use crate::session::SessionPath;
use crate::stream::SecureStream;
use crate::wire::read_noise_message;

impl Connector {
    /// A direct session with the host at `addr`, within the direct timeout.
    pub(super) async fn connect_direct(
        self: Arc<Self>,
        addr: SocketAddr,
        host_id: HostId,
        hello: Hello,
        path: SessionPath,
    ) -> Result<SecureStream, ConnectError> {
        self.direct_session(addr, None, host_id, hello, path).await
    }

    /// Like [`Connector::connect_direct`], on a `connection` already made (one the
    /// host dialled).
    pub(super) async fn connect_on(
        self: Arc<Self>,
        connection: quinn::Connection,
        host_id: HostId,
        hello: Hello,
        path: SessionPath,
    ) -> Result<SecureStream, ConnectError> {
        let addr = connection.remote_address();
        self.direct_session(addr, Some(connection), host_id, hello, path)
            .await
    }

    async fn direct_session(
        self: Arc<Self>,
        addr: SocketAddr,
        made: Option<quinn::Connection>,
        host_id: HostId,
        hello: Hello,
        path: SessionPath,
    ) -> Result<SecureStream, ConnectError> {
        let timeout = self.config.direct_timeout;
        let direct_error = |source: DirectConnectError| ConnectError::Direct { addr, source };
        let attempt = async {
            let connection = match made {
                Some(connection) => connection,
                None => self
                    .direct
                    .get_or_connect(&addr, || self.connect_host(addr))
                    .await
                    .map_err(direct_error)?,
            };
            let (send, recv) = connection
                .open_bi()
                .await
                .map_err(|err| direct_error(err.into()))?;
            let mut pending = PendingSession::new(crate::linger::halves(send, recv));
            let (send, recv) = pending.streams();
            let mut handshake = PlayerHandshake::with_hello(&self.config.key, &host_id, hello)?;
            let mut out = BytesMut::new();
            handshake.write_hello(&mut out)?;
            send.write_all(&out)
                .await
                .map_err(SetupStreamError::Write)?;
            let reply = read_noise_message(recv)
                .await
                .map_err(SetupStreamError::Read)?;
            let expect_verdict = handshake.read_reply(&reply)?;
            let (transport, writer, reader) = self.read_verdict(expect_verdict, pending).await?;
            debug!(%addr, host = %host_id.short(), "direct session established");
            Ok(SecureStream::new(
                reader,
                writer,
                transport,
                path,
                0,
                BytesMut::new(),
            ))
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .unwrap_or_else(|_| Err(direct_error(DirectConnectError::Timeout(timeout))))
    }

    /// Opens a QUIC connection to a host's direct listener.
    pub(super) async fn connect_host(
        &self,
        addr: SocketAddr,
    ) -> Result<quinn::Connection, DirectConnectError> {
        let endpoint = self.endpoints.for_remote(addr)?;
        let config = direct_client_config(self.profile())?;
        Ok(endpoint
            .connect_with(config, addr, DIRECT_SERVER_NAME)?
            .await?)
    }
}
