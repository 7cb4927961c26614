//! The simplest possible relay, as a baseline: a plain TCP splice with
//! `tokio::io::copy_bidirectional`, no TLS, no Noise, no limits.
//!
//! Each side connects and sends an 8-byte token; the two connections that sent the
//! same token are spliced. The harness drives it with the same payload as the relay
//! (application bytes, sent in clear since there is no Noise here), so it shows what
//! moving bytes through one more process costs on this machine with nothing else.

use std::collections::HashMap;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Buffer of each direction of `copy_bidirectional_with_sizes` unless told otherwise:
/// 64 KiB moves about twice what tokio's default 8 KiB does on loopback.
pub const DEFAULT_BUFFER: usize = 64 * 1024;

/// Listens on `listen` and splices token-matched pairs until the returned task is
/// dropped or aborted.
pub async fn start(
    listen: SocketAddr,
    buffer: usize,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    Ok((addr, tokio::spawn(run(listener, buffer))))
}

/// Connects both ends of one spliced pair: (player side, host side).
pub async fn connect_pair(addr: SocketAddr, token: u64) -> std::io::Result<(TcpStream, TcpStream)> {
    let mut player = TcpStream::connect(addr).await?;
    player.set_nodelay(true)?;
    player.write_all(&token.to_le_bytes()).await?;
    let mut host = TcpStream::connect(addr).await?;
    host.set_nodelay(true)?;
    host.write_all(&token.to_le_bytes()).await?;
    Ok((player, host))
}

async fn run(listener: TcpListener, buffer: usize) {
    let (named_tx, mut named) = mpsc::channel::<(u64, TcpStream)>(1024);
    let mut tasks = JoinSet::new();
    let mut waiting: HashMap<u64, TcpStream> = HashMap::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((mut stream, _)) = accepted else { continue };
                let named_tx = named_tx.clone();
                tasks.spawn(async move {
                    let _ = stream.set_nodelay(true);
                    let mut token = [0u8; 8];
                    if stream.read_exact(&mut token).await.is_ok() {
                        let _ = named_tx.send((u64::from_le_bytes(token), stream)).await;
                    }
                });
            }
            Some((token, stream)) = named.recv() => {
                match waiting.remove(&token) {
                    Some(mut first) => {
                        let mut second = stream;
                        tasks.spawn(async move {
                            let _ = tokio::io::copy_bidirectional_with_sizes(
                                &mut first, &mut second, buffer, buffer,
                            )
                            .await;
                        });
                    }
                    None => {
                        waiting.insert(token, stream);
                    }
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pairs_are_spliced_both_ways() {
        let (addr, _task) = start("127.0.0.1:0".parse().unwrap(), 4096).await.unwrap();
        let (mut player, mut host) = connect_pair(addr, 7).await.unwrap();
        player.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        host.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        host.write_all(b"world").await.unwrap();
        player.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"world");
    }
}
