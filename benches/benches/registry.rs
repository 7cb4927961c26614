//! A host-id registry under contention.
//!
//! The relay's registry (`relay/src/registry.rs`) is crate-private, so this measures
//! the same pattern rather than the relay's own type: a `DashMap<HostId,
//! Arc<Entry>>` with default sharding, looked up by many threads at once while one
//! thread keeps registering and removing other hosts (registration churn). Each
//! lookup clones the `Arc`, as the relay does to start a session.
//!
//! Run: `cargo bench -p blindrelay-bench --bench registry`
//!
//! `lookup/T threads`: time per lookup with T threads looking up concurrently (the
//! throughput line is lookups per second over all threads), against 100,000
//! registered hosts.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use blindrelay_protocol::{HostId, SecretKey};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dashmap::DashMap;

/// Stands in for the relay's per-host state.
struct Entry {
    sessions: std::sync::atomic::AtomicU32,
}

const HOSTS: usize = 100_000;

fn host_id(i: usize) -> HostId {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&(i as u64).to_le_bytes());
    bytes[31] = 0x40;
    SecretKey::from_bytes(bytes).host_id()
}

fn bench_lookup(c: &mut Criterion) {
    let registry: Arc<DashMap<HostId, Arc<Entry>>> = Arc::new(DashMap::new());
    let ids: Arc<Vec<HostId>> = Arc::new((0..HOSTS).map(host_id).collect());
    for id in ids.iter() {
        registry.insert(*id, Arc::new(Entry { sessions: 0.into() }));
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
                        let mut i = 0;
                        while !stop.load(Ordering::Relaxed) {
                            let id = churn_ids[i % churn_ids.len()];
                            registry.insert(id, Arc::new(Entry { sessions: 0.into() }));
                            registry.remove(&churn_ids[(i + 512) % churn_ids.len()]);
                            i += 1;
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
                                let entry = registry.get(&ids[k]).map(|e| e.value().clone());
                                if let Some(entry) = entry {
                                    black_box(entry.sessions.load(Ordering::Relaxed));
                                }
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
