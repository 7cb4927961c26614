//! Bare connections to the relay's TCP port for tests that play clients by hand: TLS
//! that offers the ALPN a test names (without checking the certificate: these tests
//! are about what the relay does with the bytes, not who it is), from a chosen
//! loopback address where a test is about per-address limits, and on any of the
//! three transports behind one type.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use blindrelay_client::TransportPreference;
use blindrelay_relay::Relay;
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;

/// A TLS client session over `tcp` offering `alpn`; fails where the relay drops the
/// connection before its handshake (a refused connection).
pub async fn try_tls_to(tcp: TcpStream, alpn: &[u8]) -> std::io::Result<TlsStream<TcpStream>> {
    tokio_rustls::TlsConnector::from(Arc::new(client_config(alpn)))
        .connect(server_name(), tcp)
        .await
}

/// The first bytes a TLS client offering `alpn` sends: its ClientHello, as records.
pub fn client_hello(alpn: &[u8]) -> Vec<u8> {
    let mut client =
        rustls::ClientConnection::new(Arc::new(client_config(alpn)), server_name()).unwrap();
    let mut hello = Vec::new();
    client.write_tls(&mut hello).unwrap();
    hello
}

fn client_config(alpn: &[u8]) -> rustls::ClientConfig {
    blindrelay_transport::danger::client_config(alpn)
}

fn server_name() -> rustls::pki_types::ServerName<'static> {
    rustls::pki_types::ServerName::try_from("localhost").unwrap()
}

/// Like [`try_tls_to`], for tests in which the relay has no reason to refuse.
pub async fn tls_to(tcp: TcpStream, alpn: &[u8]) -> TlsStream<TcpStream> {
    try_tls_to(tcp, alpn).await.expect("TLS to the relay")
}

/// A TCP connection to `to` from the loopback address `local`.
pub async fn tcp_from(to: SocketAddr, local: IpAddr) -> std::io::Result<TcpStream> {
    let socket = match local {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind((local, 0).into())?;
    socket.connect(to).await
}

/// A WebSocket at the relay's path over `tls` (which offered `http/1.1`).
pub async fn upgrade(
    tls: TlsStream<TcpStream>,
) -> Result<WebSocketStream<TlsStream<TcpStream>>, tokio_tungstenite::tungstenite::Error> {
    let request = format!("wss://localhost{}", blindrelay_transport::websocket::PATH);
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        request,
        tls,
        Some(blindrelay_transport::websocket::config()),
    )
    .await?;
    Ok(ws)
}

/// A bare connection to the relay on one of its transports, holding its place in
/// the relay's counts until closed or dropped.
pub enum RawConnection {
    /// A QUIC connection.
    Quic(quinn::Connection),
    /// TLS over TCP with the ALPN `blindrelay/1`.
    Tcp(Box<TlsStream<TcpStream>>),
    /// A WebSocket over TLS.
    WebSocket(Box<WebSocketStream<TlsStream<TcpStream>>>),
}

impl RawConnection {
    /// Opens one from `local` on `transport` (`Auto` means QUIC), and returns why
    /// not where the relay refuses it.
    pub async fn open_from(
        relay: &Relay,
        transport: TransportPreference,
        local: IpAddr,
    ) -> Result<Self, String> {
        if transport == TransportPreference::Tcp || transport == TransportPreference::WebSocket {
            let tcp = tcp_from(relay.tcp_addr().expect("a TCP listener"), local)
                .await
                .map_err(|err| err.to_string())?;
            if transport == TransportPreference::Tcp {
                let tls = try_tls_to(tcp, blindrelay_protocol::ALPN).await;
                return Ok(Self::Tcp(Box::new(tls.map_err(|err| err.to_string())?)));
            }
            let tls = try_tls_to(tcp, blindrelay_transport::websocket::HTTP_ALPN).await;
            let ws = upgrade(tls.map_err(|err| err.to_string())?).await;
            return Ok(Self::WebSocket(Box::new(
                ws.map_err(|err| err.to_string())?,
            )));
        }
        blindrelay_client::internal::connect_relay_raw_from(relay.url(), local)
            .await
            .map(Self::Quic)
            .map_err(|err| err.to_string())
    }

    /// Closes it: a QUIC close, or the end of the TCP connection.
    pub fn close(self) {
        match self {
            Self::Quic(connection) => connection.close(0u32.into(), b"done"),
            Self::Tcp(tls) => drop(tls),
            Self::WebSocket(ws) => drop(ws),
        }
    }
}
