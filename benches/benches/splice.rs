//! The relay's splice loop, end to end: one session through an in-process relay
//! (every limit off), player and host speaking the raw protocol over QUIC on
//! loopback, no Noise, so what is measured is QUIC on both hops plus the splice.
//!
//! Run: `cargo bench -p blindrelay-bench --bench splice`
//!
//! `splice/player_to_host_1MiB`: time to move 1 MiB from the player to the host
//! through the relay (64 KiB writes), relay, player and host sharing the machine.

use std::time::{Duration, Instant};

use blindrelay_bench::raw::RegistrationPool;
use blindrelay_client::internal::read_control;
use blindrelay_protocol::ControlMessage;
use blindrelay_relay::{Limits, Relay, RelayCertificate, RelayConfig};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const MIB: usize = 1 << 20;

async fn read_message(recv: &mut quinn::RecvStream) -> ControlMessage {
    read_control(recv).await.expect("a control message")
}

fn bench_splice(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (relay, mut player_send, mut host_recv, _keep) = runtime.block_on(async {
        let mut config = RelayConfig::new(
            "127.0.0.1:0".parse().expect("addr"),
            RelayCertificate::self_signed(&["localhost"]).expect("certificate"),
        );
        config.limits = Limits::unlimited();
        let relay = Relay::spawn(config).expect("relay");
        let pool = RegistrationPool::new(relay.url(), 1).await.expect("pool");
        let host = pool.register().await.expect("registration");
        let player = blindrelay_client::internal::connect_relay_raw(relay.url())
            .await
            .expect("player connection");
        let (mut player_send, mut player_recv) = player.open_bi().await.expect("stream");
        // `Connect`, then the hello every player sends at once (an empty Noise
        // message: nothing here speaks Noise), which the host takes first.
        let mut connect = ControlMessage::connect(*host.host_id()).to_frame().to_vec();
        connect.extend_from_slice(&[0, 0]);
        player_send.write_all(&connect).await.expect("connect");
        let (host_send, mut host_recv) = host.connection().accept_bi().await.expect("incoming");
        assert!(matches!(
            read_message(&mut host_recv).await,
            ControlMessage::Incoming { .. }
        ));
        let mut hello = [0u8; 2];
        host_recv.read_exact(&mut hello).await.expect("hello");
        assert!(matches!(
            read_message(&mut player_recv).await,
            ControlMessage::Connected { .. }
        ));
        (
            relay,
            player_send,
            host_recv,
            (pool, host, player, player_recv, host_send),
        )
    });
    let chunk = vec![0x5au8; 64 * 1024];
    let mut sink = vec![0u8; 64 * 1024];
    let mut group = c.benchmark_group("splice");
    group.throughput(Throughput::Bytes(MIB as u64));
    group.bench_function("player_to_host_1MiB", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let started = Instant::now();
                let total = iters as usize * MIB;
                let write = async {
                    for _ in 0..total / chunk.len() {
                        player_send.write_all(&chunk).await.expect("write");
                    }
                };
                let read = async {
                    let mut got = 0;
                    while got < total {
                        got += host_recv
                            .read(&mut sink)
                            .await
                            .expect("read")
                            .expect("not finished");
                    }
                };
                tokio::join!(write, read);
                started.elapsed()
            })
        })
    });
    group.finish();
    drop(relay);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(10);
    targets = bench_splice
}
criterion_main!(benches);
