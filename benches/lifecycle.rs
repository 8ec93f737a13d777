//! Durable mutations against a raw sled insert + flush of a record of the same size, and the
//! same mutations from 8 threads on different keys against 1 thread, in the same run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keylife::{CreateKey, Kms, KmsOptions};

#[path = "common.rs"]
mod common;

/// Length of the stored record of a fresh key named `bench`: the raw baseline writes a value
/// of the same size.
fn record_len() -> usize {
    let record = keylife::core::create_key(
        &CreateKey::new("bench"),
        &keylife::core::CreateContext {
            id: keylife::KeyId::from_bytes([1; 16]),
            zone: "bench",
            now: common::start(),
            origin_keys: 0,
            quota: 1,
            name_taken: false,
        },
    )
    .unwrap();
    keylife::store::codec::encode_record(&record).unwrap().len()
}

fn lifecycle(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let kms = Kms::open(
        dir.path().join("kms"),
        common::root(),
        KmsOptions::new("bench").limits(common::limits(1_000_000)),
    )
    .unwrap();
    let raw_db = sled::Config::new()
        .path(dir.path().join("raw"))
        .flush_every_ms(None)
        .open()
        .unwrap();
    let raw_tree = raw_db.open_tree("keys").unwrap();
    let key = kms.create_key(&CreateKey::new("bench")).unwrap().id;
    let value = vec![0x5a; record_len()];

    let mut group = c.benchmark_group("durable");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(4));
    let mut n = 0u64;
    group.bench_function("raw_sled_insert_flush", |b| {
        b.iter(|| {
            n += 1;
            raw_tree.insert(n.to_be_bytes(), value.as_slice()).unwrap();
            raw_db.flush().unwrap();
        });
    });
    let mut i = 0u64;
    group.bench_function("create_key", |b| {
        b.iter(|| {
            i += 1;
            kms.create_key(&CreateKey::new(format!("k{i}"))).unwrap()
        });
    });
    let mut on = true;
    group.bench_function("enable_disable_key", |b| {
        b.iter(|| {
            on = !on;
            if on {
                kms.enable_key(key, None).unwrap()
            } else {
                kms.disable_key(key, None).unwrap()
            }
        });
    });
    kms.enable_key(key, None).unwrap();
    // Rotation is limited to 10 manual rotations per key: rotate fresh keys.
    let fresh: Vec<_> = (0..2000)
        .map(|j| kms.create_key(&CreateKey::new(format!("r{j}"))).unwrap().id)
        .collect();
    let mut r = 0usize;
    group.bench_function("rotate_key", |b| {
        b.iter(|| {
            r += 1;
            kms.rotate_key(fresh[(r / 10) % fresh.len()], None)
        });
    });
    group.finish();

    // The same mutation (enable/disable) from 1 and from 8 threads, each on its own keys.
    let kms = Arc::new(kms);
    let keys: Vec<_> = (0..8)
        .map(|t| kms.create_key(&CreateKey::new(format!("t{t}"))).unwrap().id)
        .collect();
    let mut group = c.benchmark_group("durable_threads");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(4));
    for threads in [1usize, 8] {
        group.throughput(Throughput::Elements(threads as u64));
        group.bench_function(format!("enable_disable_x{threads}"), |b| {
            b.iter_custom(|iters| {
                let started = Instant::now();
                std::thread::scope(|scope| {
                    for &key in &keys[..threads] {
                        let kms = &kms;
                        scope.spawn(move || {
                            for k in 0..iters {
                                if k % 2 == 0 {
                                    kms.disable_key(key, None).unwrap();
                                } else {
                                    kms.enable_key(key, None).unwrap();
                                }
                            }
                        });
                    }
                });
                started.elapsed()
            });
        });
    }
    group.finish();
}

criterion_group!(benches, lifecycle);
criterion_main!(benches);
