//! A host that embeds blindrelay: registered with a relay, it answers each player's
//! session by sending back what it receives (an echo service where a media server
//! would be).
//!
//! ```sh
//! blindrelayd &                          # prints `relay url: URL`
//! cargo run -p blindrelay-client --example host -- URL
//! cargo run -p blindrelay-client --example player -- TICKET
//! ```

use anyhow::{Context, Result};
use blindrelay_client::{HostAgent, HostConfig, RelayUrl, SecretKey};

#[tokio::main]
async fn main() -> Result<()> {
    let relay: RelayUrl = std::env::args()
        .nth(1)
        .context("usage: host RELAY_URL")?
        .parse()?;
    // A real host keeps its key (`blindrelay keygen`): the host id, and so every
    // ticket, is its public half.
    let key = SecretKey::generate()?;
    let mut host = HostAgent::start(HostConfig::new(key, relay))?;
    println!("ticket: {}", host.ticket());

    // One `SecureStream` per player session, through the relay or directly,
    // decrypted here: plaintext bytes both ways.
    while let Some(session) = host.accept().await {
        println!("a player connected ({})", session.path());
        tokio::spawn(async move {
            let (mut from_player, mut to_player) = tokio::io::split(session);
            // Echo until the player ends its side; then end ours.
            if let Err(err) = tokio::io::copy(&mut from_player, &mut to_player).await {
                eprintln!("session ended: {err}");
            }
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut to_player).await;
        });
    }
    host.shutdown().await;
    Ok(())
}
