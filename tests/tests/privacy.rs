//! The relay cannot decrypt: what it forwards is ciphertext.
//!
//! The relay is built with its test-only splice tap, which records every chunk the
//! splice handles. A player sends a known plaintext marker; the host receives it; the
//! marker never appears in what the relay saw, in either direction.

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MARKER: &[u8] = b"PLAINTEXT-MARKER-the-relay-must-never-see-this";

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_only_ever_sees_ciphertext() {
    let (relay, tap) = start_relay_with_tap();
    let mut host = start_host(relay.url()).await;
    let ticket = host.ticket().clone();
    let player = player();

    let (player_side, host_side) = tokio::join!(player.connect(&ticket), host.accept());
    let (mut player_side, mut host_side) = (player_side.unwrap(), host_side.unwrap());

    let message: Vec<u8> = MARKER.repeat(1000);
    player_side.write_all(&message).await.unwrap();
    player_side.shutdown().await.unwrap();
    let mut received = Vec::new();
    host_side.read_to_end(&mut received).await.unwrap();
    assert_eq!(received, message, "the host gets the plaintext");

    host_side.write_all(MARKER).await.unwrap();
    host_side.shutdown().await.unwrap();
    let mut answer = Vec::new();
    player_side.read_to_end(&mut answer).await.unwrap();
    assert_eq!(answer, MARKER);

    let up = tap.player_to_host.lock().unwrap().clone();
    let down = tap.host_to_player.lock().unwrap().clone();
    // The tap really saw the session: at least as many bytes as were sent.
    assert!(up.len() >= message.len(), "tap saw {} bytes", up.len());
    assert!(down.len() >= MARKER.len());
    assert!(
        !contains(&up, MARKER),
        "marker visible to the relay, player to host"
    );
    assert!(
        !contains(&down, MARKER),
        "marker visible to the relay, host to player"
    );
    // Not even a fragment long enough to recognise.
    assert!(!contains(&up, &MARKER[..16]));
}
