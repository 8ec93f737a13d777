//! Large stores: `Kms::open` on 10k and 100k keys on each engine (sled and redb); on sled,
//! `run_due` on 100k keys with nothing due and with 1% due, and `list_keys` on 100k keys. The
//! stores are built once (without syncing each change) in Cargo's target tmp directory and
//! reused across runs.
//!
//! Environment: `KEYLIFE_BENCH_SCALE=10000,100000` (store sizes; the largest is the one of
//! `run_due` and `list_keys`), `KEYLIFE_BENCH_ENGINES=sled,redb` (engines of the `open`
//! benchmarks; `run_due` and `list_keys` run on the first).

use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use keylife::ManualClock;

#[path = "common.rs"]
mod common;

fn scale(c: &mut Criterion) {
    let sizes = common::sizes(&[10_000, 100_000]);
    let engines = common::engines();
    let largest = *sizes.iter().max().unwrap();
    for &engine in &engines {
        for &keys in &sizes {
            let started = Instant::now();
            common::build_store(&common::store_dir(engine, keys), keys, engine);
            eprintln!(
                "{engine} store of {keys} keys ready in {:?}",
                started.elapsed()
            );
        }
    }

    let mut group = c.benchmark_group("scale");
    group.sample_size(10).sampling_mode(SamplingMode::Flat);
    for &engine in &engines {
        for &keys in &sizes {
            let dir = common::store_dir(engine, keys);
            // The open alone: each store is dropped, and its engine let go of its files,
            // outside the measured time.
            group.bench_function(format!("open_{engine}_{keys}"), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let clock = ManualClock::new(common::start());
                        let started = Instant::now();
                        let kms = common::open(&dir, keys, &clock);
                        total += started.elapsed();
                        drop(kms);
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    total
                });
            });
        }
    }

    let engine = engines[0];
    let dir = common::store_dir(engine, largest);
    let clock = ManualClock::new(common::start());
    let kms = common::open(&dir, largest, &clock);
    group.sampling_mode(SamplingMode::Auto);
    group.bench_function(format!("run_due_nothing_due_{largest}"), |b| {
        b.iter(|| {
            let report = kms.run_due().unwrap();
            assert!(report.rotated.is_empty());
        });
    });
    group.sampling_mode(SamplingMode::Flat);
    group.bench_function(format!("list_keys_{largest}"), |b| {
        b.iter(|| kms.list_keys().unwrap().kms_keys.len());
    });
    drop(kms);

    // 1% due: on a copy (it changes the store), each iteration moves the clock by 90 days,
    // which makes the same 1% of keys due again.
    std::thread::sleep(Duration::from_millis(100));
    let copy = tempfile::tempdir().unwrap();
    common::copy_dir(&dir, copy.path());
    let clock = ManualClock::new(common::start());
    let kms = common::open(copy.path(), largest, &clock);
    group.bench_function(format!("run_due_1pct_due_{largest}"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                clock.advance_days(90);
                let started = Instant::now();
                let report = kms.run_due().unwrap();
                total += started.elapsed();
                assert_eq!(report.rotated.len(), largest / 100);
            }
            total
        });
    });
    group.finish();
}

criterion_group!(benches, scale);
criterion_main!(benches);
