//! Who may reach a host: a host with an authorized players list serves the players
//! it names, on both paths, refuses the others with "not authorized" after the Noise
//! handshake, picks up changes to the file, and the relay cannot tell a refused
//! session from a served one by the bytes it forwards or by how the streams end.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use blindrelay_client::{
    AuthorizedPlayers, ConnectError, HostAgent, HostConfig, HostState, PathPreference, Player,
    PlayerAuthorization, SecretKey,
};
use blindrelay_relay::{Direction, Relay, StreamEnd};
use blindrelay_tests::*;
use tokio::io::AsyncWriteExt;

use crate::tap::start_relay_with_tap;

fn player_with(key: &SecretKey) -> Player {
    Player::new(blindrelay_tests::player_config(key.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_listed_players_are_served_on_both_paths_and_the_list_reloads() {
    let relay = start_relay();
    let dir = std::env::temp_dir().join(format!("br-authorized-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("authorized_players");
    let (alice, bob) = (
        SecretKey::generate().unwrap(),
        SecretKey::generate().unwrap(),
    );
    std::fs::write(
        &file,
        format!("# my players\n{}  # alice\n", alice.public_key()),
    )
    .unwrap();

    let mut config = host_config(SecretKey::generate().unwrap(), relay.url())
        .with_direct("127.0.0.1:0".parse().unwrap());
    config.players = PlayerAuthorization::File(AuthorizedPlayers::open(&file).unwrap());
    let agent = HostAgent::start(config).expect("host agent starts");
    wait_for_state(&agent, |state| *state == HostState::Registered).await;
    let ticket = agent.ticket().clone();
    let _echo = spawn_echo_host(agent);

    for path in [PathPreference::RelayOnly, PathPreference::DirectOnly] {
        let session = player_with(&alice)
            .connect_via(&ticket, path)
            .await
            .unwrap_or_else(|err| panic!("alice via {path}: {err}"));
        let (mut read, mut write) = tokio::io::split(session);
        let (sent, echoed) = tokio::join!(
            write_pattern(&mut write, 9, 100_000),
            read_pattern(&mut read, 9)
        );
        sent.unwrap();
        assert_eq!(echoed.unwrap(), 100_000, "alice via {path}");

        match player_with(&bob).connect_via(&ticket, path).await {
            Err(ConnectError::NotAuthorized { player }) => {
                assert_eq!(player, bob.public_key(), "the error names bob's key")
            }
            other => panic!("bob via {path}: expected NotAuthorized, got {other:?}"),
        }
    }

    // The owner adds bob: his next session is served, without restarting the host.
    std::fs::write(
        &file,
        format!("{}\n{}  # bob\n", alice.public_key(), bob.public_key()),
    )
    .unwrap();
    let session = player_with(&bob)
        .connect_via(&ticket, PathPreference::RelayOnly)
        .await
        .expect("bob is served once listed");
    drop(session);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_forwards_the_same_bytes_and_ends_for_a_refused_player_as_for_a_served_one() {
    let mut seen = Vec::new();
    for allowed in [true, false] {
        let (relay, tap): (Relay, _) = start_relay_with_tap();
        let player_key = SecretKey::generate().unwrap();
        let mut config: HostConfig = host_config(SecretKey::generate().unwrap(), relay.url());
        let keys: HashSet<_> = if allowed {
            [player_key.public_key()].into_iter().collect()
        } else {
            HashSet::new()
        };
        config.players = PlayerAuthorization::Keys(Arc::new(keys));
        let agent = HostAgent::start(config).expect("host agent starts");
        wait_for_state(&agent, |state| *state == HostState::Registered).await;
        let ticket = agent.ticket().clone();
        let _echo = spawn_echo_host(agent);
        // Kept until the end: a player that closes its relay connection at once would
        // have the relay tear the session down before it has seen both ends.
        let player = player_with(&player_key);
        match player.connect(&ticket).await {
            // A served player that leaves at once: its end, then gone.
            Ok(mut session) if allowed => session.shutdown().await.unwrap(),
            Err(ConnectError::NotAuthorized { .. }) if !allowed => {}
            other => panic!("allowed = {allowed}: {other:?}"),
        }
        // Both directions end, however they end.
        tokio::time::timeout(PATIENCE, async {
            while tap.ends.lock().unwrap().len() < 2 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "allowed = {allowed}: both directions end; ended so far: {:?}",
                tap.ends.lock().unwrap()
            )
        });
        let mut ends = tap.ends.lock().unwrap().clone();
        ends.sort_by_key(|(direction, _)| *direction == Direction::HostToPlayer);
        let to_host = tap.player_to_host.lock().unwrap().len();
        let to_player = tap.host_to_player.lock().unwrap().len();
        seen.push(((to_host, to_player), ends));
    }
    assert_eq!(
        seen[0], seen[1],
        "served vs refused: (player→host, host→player) bytes, and how each direction ended"
    );
    // Hello (2 + 128: the reference player offers to resume, PROTOCOL.md 10.8) and
    // the player's end (2 + 17) one way; reply (2 + 48), verdict (2 + 18) and the
    // host's end (2 + 17) the other; both streams finished.
    assert_eq!(seen[0].0, (130 + 19, 70 + 19));
    assert_eq!(
        seen[0].1,
        [
            (Direction::PlayerToHost, StreamEnd::Finished),
            (Direction::HostToPlayer, StreamEnd::Finished)
        ]
    );
}
