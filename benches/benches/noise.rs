//! Cipher choice for the Noise session, measured on one core.
//!
//! Run: `cargo bench -p blindrelay-bench --bench noise`
//!
//! * `transport_encrypt/*`: `snow::TransportState::write_message` of one maximum-size
//!   Noise message (65519 plaintext bytes -> 65535 ciphertext bytes), per resolver and
//!   cipher. Throughput counts plaintext bytes.
//! * `blindrelay_transport/*`: `protocol::noise::Transport` (AESGCM, ring): `seal` of
//!   one full data frame (`MAX_PLAINTEXT_LEN` = 65518 application bytes), and `seal`
//!   plus the peer's `open`. Throughput counts application bytes.
//! * `handshake/host_respond`: `HostHandshake::respond` to one player hello (read
//!   `-> e, es, s, ss`, write `<- e, ee, se`, split). The same hello is answered every
//!   iteration; the host keeps no replay state, so each answer costs a full response.

use std::hint::black_box;
use std::time::Duration;

use blindrelay_bench::noise_fixture::{keys, session};
use blindrelay_protocol::noise::{
    split_frame, HostHandshake, Opened, PlayerHandshake, MAX_PLAINTEXT_LEN,
};
use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use snow::resolvers::{BoxedCryptoResolver, DefaultResolver, FallbackResolver, RingResolver};

/// Largest Noise message and the plaintext that fills it.
const MAX_MESSAGE: usize = 65535;
const TAG: usize = 16;
const PAYLOAD: usize = MAX_MESSAGE - TAG;

#[derive(Clone, Copy)]
enum Backend {
    /// snow's pure-Rust resolver for everything (chacha20poly1305 / aes-gcm crates).
    Default,
    /// ring for the cipher, snow's default resolver for X25519 and BLAKE2s (ring has
    /// neither); what `snow::Builder::new` picks with `ring-accelerated`.
    Ring,
}

fn resolver(backend: Backend) -> BoxedCryptoResolver {
    match backend {
        Backend::Default => Box::new(DefaultResolver),
        Backend::Ring => Box::new(FallbackResolver::new(
            Box::new(RingResolver),
            Box::new(DefaultResolver),
        )),
    }
}

/// Runs an IK handshake with `backend` for both sides; returns the initiator's
/// transport state (the one that encrypts in the benchmark).
fn transport(cipher: &str, backend: Backend) -> snow::TransportState {
    let name = format!("Noise_IK_25519_{cipher}_BLAKE2s");
    let params = || -> snow::params::NoiseParams { name.parse().expect("valid Noise name") };
    let builder = || snow::Builder::with_resolver(params(), resolver(backend));
    let initiator_keys = builder().generate_keypair().expect("keypair");
    let responder_keys = builder().generate_keypair().expect("keypair");

    let mut initiator = builder()
        .local_private_key(&initiator_keys.private)
        .and_then(|b| b.remote_public_key(&responder_keys.public))
        .and_then(|b| b.build_initiator())
        .expect("initiator");
    let mut responder = builder()
        .local_private_key(&responder_keys.private)
        .and_then(|b| b.build_responder())
        .expect("responder");

    let mut msg = [0u8; 256];
    let mut scratch = [0u8; 256];
    let len = initiator.write_message(&[], &mut msg).expect("hello");
    responder
        .read_message(&msg[..len], &mut scratch)
        .expect("read hello");
    let len = responder.write_message(&[], &mut msg).expect("reply");
    initiator
        .read_message(&msg[..len], &mut scratch)
        .expect("read reply");
    initiator.into_transport_mode().expect("transport")
}

fn bench_transport_encrypt(c: &mut Criterion) {
    let mut group = c.benchmark_group("transport_encrypt");
    group.throughput(Throughput::Bytes(PAYLOAD as u64));
    let plaintext = vec![0xa5u8; PAYLOAD];
    let mut ciphertext = vec![0u8; MAX_MESSAGE];
    for (label, cipher, backend) in [
        ("ChaChaPoly/default", "ChaChaPoly", Backend::Default),
        ("ChaChaPoly/ring", "ChaChaPoly", Backend::Ring),
        ("AESGCM/ring", "AESGCM", Backend::Ring),
        ("AESGCM/default", "AESGCM", Backend::Default),
    ] {
        let mut state = transport(cipher, backend);
        group.bench_function(BenchmarkId::from_parameter(label), |b| {
            b.iter(|| {
                let len = state
                    .write_message(black_box(&plaintext), &mut ciphertext)
                    .expect("encrypt");
                debug_assert_eq!(len, MAX_MESSAGE);
                black_box(&ciphertext[..len]);
            })
        });
    }
    group.finish();
}

fn bench_blindrelay_transport(c: &mut Criterion) {
    let mut group = c.benchmark_group("blindrelay_transport");
    group.throughput(Throughput::Bytes(MAX_PLAINTEXT_LEN as u64));
    let data = vec![0xa5u8; MAX_PLAINTEXT_LEN];

    let (mut player, _host) = session();
    let mut wire = BytesMut::with_capacity(2 * (2 + MAX_MESSAGE));
    group.bench_function("seal", |b| {
        b.iter(|| {
            wire.clear();
            player.seal(black_box(&data), &mut wire).expect("seal");
            black_box(&wire);
        })
    });

    let (mut player, mut host) = session();
    let mut wire = BytesMut::with_capacity(2 * (2 + MAX_MESSAGE));
    group.bench_function("seal_open", |b| {
        b.iter(|| {
            player.seal(black_box(&data), &mut wire).expect("seal");
            // Every 2^16 messages a rekey frame precedes the data frame.
            while let Some(frame) = split_frame(&mut wire) {
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
        })
    });
    group.finish();
}

fn bench_handshake(c: &mut Criterion) {
    let mut group = c.benchmark_group("handshake");
    group.throughput(Throughput::Elements(1));
    let (player_key, host_key) = keys();
    let mut player = PlayerHandshake::new(&player_key, &host_key.host_id()).expect("player");
    let mut wire = BytesMut::new();
    player.write_hello(&mut wire).expect("hello");
    let hello = split_frame(&mut wire).expect("hello frame");
    let mut out = BytesMut::with_capacity(256);
    group.bench_function("host_respond", |b| {
        b.iter(|| {
            out.clear();
            let transport =
                HostHandshake::respond(&host_key, black_box(&hello), &mut out).expect("respond");
            black_box((transport, &out));
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
    targets = bench_transport_encrypt, bench_blindrelay_transport, bench_handshake
}
criterion_main!(benches);
