//! A player that embeds blindrelay: it opens an end-to-end encrypted session to the
//! host its ticket names (directly when it can, through the relay otherwise), sends
//! a line, and prints what comes back. Run the `host` example first.

use anyhow::{Context, Result};
use blindrelay_client::{Player, PlayerConfig, SecretKey, Ticket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() -> Result<()> {
    let ticket: Ticket = std::env::args()
        .nth(1)
        .context("usage: player TICKET")?
        .parse()?;
    // A host that lists its players (authorized_players) knows them by this key's
    // public half: a real player keeps it (`blindrelay keygen --role player`).
    let player = Player::new(PlayerConfig::new(SecretKey::generate()?));
    let mut session = player.connect(&ticket).await?;
    println!("connected ({})", session.path());

    session
        .write_all(b"hello through a relay that cannot read this\n")
        .await?;
    // `shutdown` sends the authenticated end of the stream: the host knows nothing
    // was cut off, and ends its side in turn.
    session.shutdown().await?;
    let mut answer = String::new();
    session.read_to_string(&mut answer).await?;
    print!("the host answered: {answer}");
    player.close().await;
    Ok(())
}
