//! The relay's host-id registry under contention.
//!
//! Measures the relay's own `Registry` (`relay/src/state/registry.rs`, through the relay's
//! `bench` feature): lookups by many threads at once while one thread keeps
//! registering and removing other hosts (registration churn), each lookup the one a
//! new session does (the map read, the `Arc` clone and the connection's closed
//! check).
//!
//! A registry entry holds a real `quinn::Connection`, so the benchmark starts a relay
//! on loopback and registers its hosts over `CONNECTIONS` connections to it,
//! round-robin. A real relay has one connection per host: here the closed check
//! meets the same few connection locks more often than it would there, so the
//! figures are if anything pessimistic for many threads.
//!
//! Run: `cargo bench -p blindrelay-bench --bench registry`
//!
//! `lookup/threads/T`: time per lookup with T threads looking up concurrently (the
//! throughput line is lookups per second over all threads), against 100,000
//! registered hosts. `session/threads/1`: a lookup plus a session counted against
//! the host and ended, as pairing does.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use blindrelay_protocol::HostId;
use blindrelay_relay::bench::LoopbackRegistry;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const HOSTS: usize = 100_000;
/// Loopback connections the registered hosts share.
const CONNECTIONS: usize = 64;

/// A distinct host id per `i`. Not derived from secret keys: X25519 clamping would
/// map eight neighbouring numbers to one key, and the registry would hold an eighth
/// of the hosts.
fn host_id(i: usize) -> HostId {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&(i as u64).to_le_bytes());
    HostId::from_bytes(bytes)
}

fn bench_lookup(c: &mut Criterion) {
    // The relay and its connections live on this runtime; lookups need none.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let registry = runtime
        .block_on(LoopbackRegistry::new(CONNECTIONS))
        .expect("a relay on loopback");
    let registry = Arc::new(registry);
    let ids: Arc<Vec<HostId>> = Arc::new((0..HOSTS).map(host_id).collect());
    for id in ids.iter() {
        registry.register(*id).expect("registered");
    }
    let churn_ids: Vec<HostId> = (HOSTS..HOSTS + 1024).map(host_id).collect();
    let mut group = c.benchmark_group("lookup");
    for threads in [1usize, 2, 4] {
        group.throughput(Throughput::Elements(threads as u64));
        group.bench_function(BenchmarkId::new("threads", threads), |b| {
            b.iter_custom(|iters| {
                let stop = Arc::new(AtomicBool::new(false));
                let churn = {
                    let (registry, stop, churn_ids) =
                        (registry.clone(), stop.clone(), churn_ids.clone());
                    std::thread::spawn(move || {
                        let mut live = std::collections::VecDeque::new();
                        let mut i = 0;
                        while !stop.load(Ordering::Relaxed) {
                            let id = churn_ids[i % churn_ids.len()];
                            let registration = registry.register(id).expect("registered");
                            live.push_back((id, registration));
                            if live.len() > 512 {
                                let (old, registration) = live.pop_front().expect("one");
                                registry.remove(&old, registration);
                            }
                            i += 1;
                        }
                        for (id, registration) in live {
                            registry.remove(&id, registration);
                        }
                    })
                };
                let barrier = Arc::new(Barrier::new(threads + 1));
                let workers: Vec<_> = (0..threads)
                    .map(|t| {
                        let (registry, ids, barrier) =
                            (registry.clone(), ids.clone(), barrier.clone());
                        std::thread::spawn(move || {
                            barrier.wait();
                            let mut k = t * 7919;
                            for _ in 0..iters {
                                k = (k + 104_729) % HOSTS;
                                black_box(registry.lookup(&ids[k]));
                            }
                        })
                    })
                    .collect();
                barrier.wait();
                let started = Instant::now();
                for worker in workers {
                    worker.join().expect("worker");
                }
                let spent = started.elapsed();
                stop.store(true, Ordering::Relaxed);
                churn.join().expect("churn");
                spent
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("session");
    group.throughput(Throughput::Elements(1));
    group.bench_function(BenchmarkId::new("threads", 1), |b| {
        let mut k = 0;
        b.iter(|| {
            k = (k + 104_729) % HOSTS;
            let session = registry.start_session(&ids[k]).expect("registered host");
            drop(black_box(session));
        });
    });
    group.finish();
    let closed = registry.closed_connections();
    assert!(closed.is_empty(), "closed connections: {closed:?}");
    assert_eq!(registry.len(), HOSTS, "every host still registered");
    drop(registry);
    drop(runtime);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    targets = bench_lookup
}
criterion_main!(benches);
