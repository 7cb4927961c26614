//! Per-message costs of the wire format and the Noise session.
//!
//! Run: `cargo bench -p blindrelay-bench --bench frames`
//!
//! * `control/*`: encoding a `Connect` frame and decoding an `Incoming` one (the
//!   per-session control messages the relay handles).
//! * `transport_64k/seal`, `transport_64k/open`: `protocol::noise::Transport` on one
//!   full data frame (65518 application bytes). `open` opens frames sealed beforehand
//!   in batches of 64, outside the timed part. Throughput counts application bytes.
//! * `write_64k/*`: one 64 KiB write sealed as a plain session does, as a resumable
//!   one does (its replay buffer keeps the copy it seals), and as resumable sessions
//!   did before (a copy kept, then another sealed): what resuming adds per byte.
//! * `handshake/ik_full`: a whole Noise IK handshake, both sides (player hello, host
//!   response, player reads the reply): what one session set-up costs in crypto.

use std::hint::black_box;
use std::time::{Duration, Instant};

use blindrelay_bench::noise_fixture::{keys, session};
use blindrelay_protocol::control::ControlMessage;
use blindrelay_protocol::noise::{
    split_frame, HostHandshake, Opened, PlayerHandshake, MAX_PLAINTEXT_LEN,
};
use blindrelay_protocol::resume::{ReplayBuffer, ACK_EVERY, DEFAULT_REPLAY_WINDOW};
use blindrelay_protocol::SessionLimits;
use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn bench_control(c: &mut Criterion) {
    let mut group = c.benchmark_group("control");
    group.throughput(Throughput::Elements(1));
    let (_, host_key) = keys();
    let connect = ControlMessage::connect(host_key.host_id());
    let mut out = BytesMut::with_capacity(64);
    group.bench_function("encode_connect", |b| {
        b.iter(|| {
            out.clear();
            black_box(&connect).encode(&mut out);
            black_box(&out);
        })
    });
    let incoming: Bytes = ControlMessage::Incoming {
        session_id: 0x0123_4567_89ab_cdef,
        limits: SessionLimits::NONE,
    }
    .to_frame();
    let body = incoming.slice(2..);
    group.bench_function("decode_incoming", |b| {
        b.iter(|| black_box(ControlMessage::decode(black_box(&body)).expect("decodes")))
    });
    group.finish();
}

fn bench_transport(c: &mut Criterion) {
    let mut group = c.benchmark_group("transport_64k");
    group.throughput(Throughput::Bytes(MAX_PLAINTEXT_LEN as u64));
    let data = vec![0xa5u8; MAX_PLAINTEXT_LEN];
    let (mut player, _) = session();
    let mut wire = BytesMut::with_capacity(2 * 65537);
    group.bench_function("seal", |b| {
        b.iter(|| {
            wire.clear();
            player.seal(black_box(&data), &mut wire).expect("seal");
            black_box(&wire);
        })
    });
    let (mut player, mut host) = session();
    group.bench_function("open", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let batch = left.min(64);
                let mut sealed = BytesMut::new();
                for _ in 0..batch {
                    player.seal(&data, &mut sealed).expect("seal");
                }
                let started = Instant::now();
                while let Some(frame) = split_frame(&mut sealed) {
                    match host.open(&frame).expect("open") {
                        Opened::Data(body) => {
                            black_box(body);
                        }
                        Opened::Rekeyed => {}
                        Opened::End | Opened::Ack(_) => {
                            unreachable!("no end or acknowledgement is sealed")
                        }
                    }
                }
                spent += started.elapsed();
                left -= batch;
            }
            spent
        })
    });
    group.finish();

    // A 64 KiB write (what the CLI's splice writes at once), sealed as a session
    // does: plain, resumable as sessions were sealed before (a copy kept, then
    // sealed), and resumable now (the copy kept is the one sealed). The replay
    // buffer is acknowledged every 256 KiB, as a reading peer would.
    let mut group = c.benchmark_group("write_64k");
    const WRITE: usize = 64 * 1024;
    group.throughput(Throughput::Bytes(WRITE as u64));
    let data = vec![0xa5u8; WRITE];
    let mut wire = BytesMut::with_capacity(2 * 65537);
    let (mut player, _) = session();
    group.bench_function("plain", |b| {
        b.iter(|| {
            wire.clear();
            for frame in black_box(&data).chunks(MAX_PLAINTEXT_LEN) {
                player.seal(frame, &mut wire).expect("seal");
            }
            black_box(&wire);
        })
    });
    let (mut player, _) = session();
    let mut replay = ReplayBuffer::new(DEFAULT_REPLAY_WINDOW);
    group.bench_function("resumable_copied_then_sealed", |b| {
        b.iter(|| {
            wire.clear();
            for frame in black_box(&data).chunks(MAX_PLAINTEXT_LEN) {
                replay.push(frame);
                player.seal(frame, &mut wire).expect("seal");
            }
            acknowledge_every_256k(&mut replay);
            black_box(&wire);
        })
    });
    let (mut player, _) = session();
    let mut replay = ReplayBuffer::new(DEFAULT_REPLAY_WINDOW);
    group.bench_function("resumable", |b| {
        b.iter(|| {
            wire.clear();
            let mut at = 0;
            while at < WRITE {
                at += player
                    .seal_kept(&black_box(&data)[at..], &mut replay, &mut wire)
                    .expect("seal");
            }
            acknowledge_every_256k(&mut replay);
            black_box(&wire);
        })
    });
    group.finish();
}

fn acknowledge_every_256k(replay: &mut ReplayBuffer) {
    if replay.held() as u64 >= ACK_EVERY {
        replay.acknowledge(replay.sent()).expect("acknowledge");
    }
}

fn bench_handshake(c: &mut Criterion) {
    let mut group = c.benchmark_group("handshake");
    group.throughput(Throughput::Elements(1));
    let (player_key, host_key) = keys();
    let host_id = host_key.host_id();
    group.bench_function("ik_full", |b| {
        b.iter(|| {
            let mut player = PlayerHandshake::new(&player_key, &host_id).expect("player");
            let mut wire = BytesMut::with_capacity(256);
            player.write_hello(&mut wire).expect("hello");
            let hello = split_frame(&mut wire).expect("hello frame");
            let host = HostHandshake::respond(&host_key, &hello, &mut wire).expect("respond");
            let reply = split_frame(&mut wire).expect("reply frame");
            black_box((player.read_reply(&reply).expect("reply"), host));
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    targets = bench_control, bench_transport, bench_handshake
}
criterion_main!(benches);
