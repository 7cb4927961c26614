//! `blindrelay connect`: every TCP connection to the local port becomes one
//! end-to-end encrypted session to the host.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use blindrelay_client::{PathPreference, Player, PlayerConfig, SecretKey, Ticket};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::cli::{ConnectArgs, Role};
use crate::host::{next_local_id, relay_session};
use crate::keys::read_key_as;
use crate::splice::{splice_tcp, Ended};
use crate::stop::Stop;

/// `blindrelay connect`: the player's key and paths checked against the ticket,
/// then every connection to `--listen` forwarded until Ctrl-C.
pub(crate) async fn run(args: ConnectArgs) -> Result<()> {
    let ConnectArgs {
        ticket,
        listen,
        key,
        path,
        relay_delay,
        transport,
        resume_window,
        replay_window,
        no_punch,
    } = args;
    let key = match key {
        Some(path) => read_key_as(&path, Role::Player)?,
        None => {
            // Without a lasting key, no host can list this player: say so before
            // someone pastes a key that is gone at the next run.
            warn!(
                "no --key: this player's key is ephemeral (a new one every run), so \
                 a host's authorized_players cannot list it; make a lasting one with \
                 `blindrelay keygen --role player --out player.key` and pass \
                 --key player.key"
            );
            SecretKey::generate()?
        }
    };
    // A path the ticket has no route for would fail every connection later, one by
    // one: refuse it now, saying what the ticket holds.
    match path {
        PathPreference::RelayOnly if ticket.relay().is_none() => bail!(
            "--path relay, but this ticket names no relay (its host runs without \
             --relay): use --path direct or auto, or a ticket from a host started \
             with --relay"
        ),
        PathPreference::DirectOnly if ticket.direct_addrs().is_empty() => bail!(
            "--path direct, but this ticket has no direct address (its host runs \
             without --direct): use --path relay or auto, or a ticket from a host \
             started with --direct"
        ),
        _ => {}
    }
    let mut config = PlayerConfig::new(key);
    config.path = path;
    config.transport = transport;
    config.relay_delay = relay_delay;
    config.resume_window = resume_window;
    config.replay_window = replay_window;
    config.punch = !no_punch.unwrap_or(false);
    let stop = Stop::interrupt()?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    connect(ticket, listener, config, stop).await
}

pub(crate) async fn connect(
    ticket: Ticket,
    listener: TcpListener,
    config: PlayerConfig,
    mut stop: Stop,
) -> Result<()> {
    let player = std::sync::Arc::new(Player::new(config));
    println!("listening on: {}", listener.local_addr()?);
    // The host's owner lists this key to let the player in.
    println!("player key: {}", player.public_key());
    info!(host = %ticket.host_id().short(), "each connection becomes a session to the host");

    let ticket = std::sync::Arc::new(ticket);
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (mut tcp, _) = match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        warn!(%err, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let (player, ticket) = (player.clone(), ticket.clone());
                let local_id = next_local_id();
                sessions.spawn(async move {
                    match player.connect(&ticket).await {
                        Ok(mut session) => {
                            info!(local_id, session = relay_session(&session), path = %session.route(), "session open");
                            if splice_tcp(local_id, &mut session, &mut tcp).await == Ended::CutShort {
                                // A reset, not a clean end: the application reading
                                // this socket must not take a cut download for a
                                // whole one.
                                let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
                            }
                        }
                        Err(err) => {
                            warn!(%err, "cannot open a session");
                            // A reset, not an empty reply: the application asked for
                            // something and got nothing.
                            let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
                        }
                    }
                });
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            () = &mut stop => {
                info!("shutting down");
                sessions.shutdown().await;
                player.close().await;
                return Ok(());
            }
        }
    }
}
