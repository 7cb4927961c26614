//! The relayed paths: through the ticket's relay, or the pool member that holds
//! the host ([`PoolWalk`]); over QUIC, TLS over TCP or WebSocket, raced as the
//! configuration allows; and, when the relay went away under the player, asking
//! again for a host that may still be registering ("host returning").

use std::sync::Arc;
use std::time::Duration;

use blindrelay_protocol::noise::{Hello, PlayerHandshake};
use blindrelay_protocol::{ControlMessage, ErrorCode, HostId, RelayUrl};
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tracing::debug;

use super::walk::PoolWalk;
use super::{ConnectError, Connector, PathPreference, PendingSession, SetupStreamError};
use crate::endpoint::{
    connect_relay, connect_relay_tcp, connect_relay_websocket, ConnectRelayError,
};
use crate::session::{RelayTransport, SessionEnded, SessionPath};
use crate::stream::SecureStream;
use crate::transports::{race, TransportPreference};
use crate::wire::{read_control, read_noise_message, WireError};

/// How long a player whose relay just restarted asks again for a host that is not
/// registered yet: hosts notice the restart at their next keep-alive and register
/// again within a few seconds.
const HOST_RETURN_WAIT: Duration = Duration::from_secs(5);

/// How often it asks in the meantime.
const HOST_RETURN_POLL: Duration = Duration::from_millis(250);

/// What a player asks a relay for: a session with `host_id`, opened by `hello`,
/// after following `redirects` pool redirects.
#[derive(Debug, Clone, Copy)]
pub(super) struct SessionAsk {
    pub(super) host_id: HostId,
    pub(super) hello: Hello,
    pub(super) redirects: u8,
}

impl Connector {
    /// A relayed session through `url`'s relay; when it belongs to a pool of relays
    /// and another member holds the host, through that member (PROTOCOL.md section
    /// 18.4): redirects are followed up to [`MAX_REDIRECTS`], after which the
    /// members named last are asked in turn, each answering for itself.
    pub(super) async fn connect_pooled(
        self: Arc<Self>,
        url: RelayUrl,
        host_id: HostId,
        hello: Hello,
    ) -> Result<SecureStream, ConnectError> {
        let mut walk = PoolWalk::new(url);
        while let Some((url, ask)) = walk.next(host_id, hello) {
            match self.clone().connect_relayed(url.clone(), ask).await {
                Ok(stream) => return Ok(stream),
                Err(err) => {
                    if let Some(err) = walk.failed(&url, err) {
                        return Err(err);
                    }
                }
            }
        }
        Err(walk.end(self.config.connect_timeout))
    }

    /// A relayed session over the transports the configuration allows. With
    /// [`TransportPreference::Auto`]: QUIC first, TLS over TCP after the fallback
    /// delay (at once when UDP to this relay was found broken lately, or as soon as
    /// QUIC fails), then WebSocket; the first session set up wins and the others are
    /// cancelled. A QUIC connection still being made when another transport wins
    /// goes on in the background, and once it is up new sessions take QUIC again.
    async fn connect_relayed(
        self: Arc<Self>,
        url: RelayUrl,
        host_id: SessionAsk,
    ) -> Result<SecureStream, ConnectError> {
        let auto = self.config.transport == TransportPreference::Auto;
        if auto && self.relays.live(&url).is_some() {
            return self.relayed_quic(&url, host_id).await;
        }
        // A connection that was there and closed: the relay went away under us.
        let relay_went_away = self.relays.went_away(&url);
        let transports = self.config.transport.transports();
        let step = self.config.tcp_delay;
        let first_step = if self.udp.is_broken(&url) {
            Duration::ZERO
        } else {
            step
        };
        let connector: &Connector = &self;
        let (url, shared) = (&url, &self);
        let attempts = transports
            .iter()
            .map(
                |&transport| -> crate::transports::Attempt<'_, SecureStream, ConnectError> {
                    match transport {
                        RelayTransport::Quic if auto => {
                            Box::pin(Arc::clone(shared).relayed_quic_meanwhile(
                                url.clone(),
                                host_id,
                                relay_went_away,
                            ))
                        }
                        RelayTransport::Quic => Box::pin(connector.relayed_quic(url, host_id)),
                        RelayTransport::Tcp | RelayTransport::WebSocket => {
                            Box::pin(connector.host_returning(relay_went_away, move || {
                                connector.relayed_framed(url, host_id, transport)
                            }))
                        }
                    }
                },
            )
            .collect();
        let raced = race(attempts, &[Duration::ZERO, first_step, step], |err| {
            !err.is_transport_failure()
        })
        .await;
        match raced {
            Ok((_, stream)) => {
                if auto && stream.relay_transport() == Some(RelayTransport::Quic) {
                    self.udp.set_working(url);
                } else if auto {
                    debug!(transport = ?stream.relay_transport(), "QUIC did not get through to the relay");
                    self.udp.set_broken(url);
                }
                Ok(stream)
            }
            Err(errors) => Err(most_telling(errors)),
        }
    }

    /// A relayed session over QUIC whose connection, made in a task of its own,
    /// outlives this attempt when another transport wins: new sessions take QUIC
    /// again as soon as it is up.
    async fn relayed_quic_meanwhile(
        self: Arc<Self>,
        url: RelayUrl,
        host_id: SessionAsk,
        relay_went_away: bool,
    ) -> Result<SecureStream, ConnectError> {
        let connecting = tokio::spawn({
            let (connector, url) = (self.clone(), url.clone());
            async move {
                let profile = connector.profile();
                connector
                    .relays
                    .get_or_connect(&url, || connect_relay(&connector.endpoints, &url, profile))
                    .await
            }
        });
        let connection = connecting.await??;
        self.host_returning(relay_went_away, || self.relayed_on(&connection, host_id))
            .await
    }

    /// A relayed session over QUIC, on the player's shared connection to the relay.
    async fn relayed_quic(
        &self,
        url: &RelayUrl,
        host_id: SessionAsk,
    ) -> Result<SecureStream, ConnectError> {
        let profile = self.profile();
        let connection = self
            .relays
            .get_or_connect(url, || connect_relay(&self.endpoints, url, profile))
            .await?;
        let first = self.relayed_on(&connection, host_id).await;
        if first.is_ok() || connection.close_reason().is_none() {
            return first;
        }
        // The shared connection died under this session, most likely a relay that
        // restarted (its stateless reset ends the old connection at our first
        // packet): once more on a new connection. Its host may still be registering
        // again, so an offline host is asked for again for a few seconds.
        debug!("relay connection lost; trying again on a new one");
        let connection = self
            .relays
            .get_or_connect(url, || connect_relay(&self.endpoints, url, profile))
            .await?;
        self.host_returning(true, || self.relayed_on(&connection, host_id))
            .await
    }

    /// Runs `attempt` once; or, when the relay went away under this player
    /// (restarted, or stopped), again while it says the host is offline, for
    /// [`HOST_RETURN_WAIT`]: the host may still be registering again. Then the host
    /// is reported as not back rather than as plainly offline.
    async fn host_returning<F, Fut>(
        &self,
        relay_went_away: bool,
        mut attempt: F,
    ) -> Result<SecureStream, ConnectError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<SecureStream, ConnectError>>,
    {
        if !relay_went_away {
            return attempt().await;
        }
        let deadline = tokio::time::Instant::now() + HOST_RETURN_WAIT;
        loop {
            match attempt().await {
                Err(ConnectError::Refused {
                    code: ErrorCode::HostOffline,
                    ..
                }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(HOST_RETURN_POLL).await;
                }
                Err(ConnectError::Refused {
                    code: ErrorCode::HostOffline,
                    ..
                }) => {
                    return Err(ConnectError::HostNotBack {
                        waited: HOST_RETURN_WAIT,
                    })
                }
                other => return other,
            }
        }
    }

    /// One relayed session attempt on a new stream of the QUIC `connection`.
    async fn relayed_on(
        &self,
        connection: &quinn::Connection,
        host_id: SessionAsk,
    ) -> Result<SecureStream, ConnectError> {
        let (send, recv) = connection.open_bi().await?;
        let pending = PendingSession::new(crate::linger::halves(send, recv));
        self.session_through_relay(pending, host_id, RelayTransport::Quic)
            .await
    }

    /// A relayed session over a stream transport (TLS over TCP, or WebSocket in
    /// it): a connection of its own, which carries just this session.
    async fn relayed_framed(
        &self,
        url: &RelayUrl,
        host_id: SessionAsk,
        transport: RelayTransport,
    ) -> Result<SecureStream, ConnectError> {
        let config = blindrelay_transport::Config {
            idle_timeout: self.config.idle_timeout,
            keep_alive: Some(self.config.keep_alive),
            ..Default::default()
        };
        let framed = match transport {
            RelayTransport::WebSocket => connect_relay_websocket(url, config).await?,
            _ => connect_relay_tcp(url, config).await?,
        };
        let pending = PendingSession::new(crate::linger::framed_halves(framed.send, framed.recv));
        self.session_through_relay(pending, host_id, transport)
            .await
    }

    /// Asks the relay for a session with `host_id` on a new stream, and runs the
    /// player's side of the Noise handshake through it.
    async fn session_through_relay(
        &self,
        mut pending: PendingSession,
        host_id: SessionAsk,
        carried_by: RelayTransport,
    ) -> Result<SecureStream, ConnectError> {
        let (send, recv) = pending.streams();
        let SessionAsk {
            host_id,
            hello,
            redirects,
        } = host_id;
        let mut handshake = PlayerHandshake::with_hello(&self.config.key, &host_id, hello)?;
        let mut out = BytesMut::new();
        ControlMessage::Connect { host_id, redirects }.encode(&mut out);
        handshake.write_hello(&mut out)?;
        // If the relay refuses, it may stop our stream before the hello is through;
        // its answer is still waiting to be read, so a failed write is not the end.
        let written = send.write_all(&out).await;

        let (session_id, limits) = match read_control(recv).await {
            Ok(ControlMessage::Connected { session_id, limits }) => (session_id, limits),
            Ok(ControlMessage::Error { code, reason }) => {
                return Err(ConnectError::Refused { code, reason })
            }
            Ok(ControlMessage::Redirect { members }) => {
                return Err(ConnectError::Redirected { members })
            }
            Ok(other) => {
                return Err(ConnectError::UnexpectedAnswer {
                    message: other.name(),
                })
            }
            Err(err) => {
                written.map_err(SetupStreamError::Write)?;
                return Err(SetupStreamError::from(err).into());
            }
        };
        let reply = read_noise_message(recv).await.map_err(host_left)?;
        let expect_verdict = handshake.read_reply(&reply)?;
        let (transport, writer, reader) = self.read_verdict(expect_verdict, pending).await?;
        debug!(session_id, host = %host_id.short(), %limits, transport = %carried_by, "relayed session established");
        Ok(SecureStream::new(
            reader,
            writer,
            transport,
            SessionPath::Relayed,
            session_id,
            BytesMut::new(),
        )
        .with_limits(limits)
        .with_relay_transport(carried_by))
    }
}

fn host_left(err: WireError) -> ConnectError {
    let peer_gone = match &err {
        WireError::Io(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<SessionEnded>())
            .is_some_and(|ended| *ended == SessionEnded::PeerGone),
        _ => false,
    };
    if peer_gone {
        return ConnectError::Refused {
            code: ErrorCode::HostUnreachable,
            reason: "the host left the relay during set-up".to_owned(),
        };
    }
    SetupStreamError::Read(err).into()
}

/// Of the failures of every transport tried, in the order tried, the one that
/// says most: the first that is not a timeout (a timeout only says nothing came).
fn most_telling(errors: Vec<ConnectError>) -> ConnectError {
    let timeout = |err: &ConnectError| {
        matches!(
            err,
            ConnectError::Relay(ConnectRelayError::Timeout(_)) | ConnectError::Timeout(_)
        )
    };
    let first_telling = errors.iter().position(|err| !timeout(err)).unwrap_or(0);
    errors
        .into_iter()
        .nth(first_telling)
        .unwrap_or(ConnectError::NoPath {
            preference: PathPreference::RelayOnly,
        })
}
