//! Large stores: `Kms::open` on 10k and 100k keys, `run_due` on 100k keys with nothing due
//! and with 1% due, `list_keys` on 100k keys. The stores are built once (without flushing
//! each change) in Cargo's target tmp directory and reused across runs.

use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use keylife::ManualClock;

#[path = "common.rs"]
mod common;

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn scale(c: &mut Criterion) {
    let sizes: Vec<usize> = std::env::var("KEYLIFE_BENCH_SCALE")
        .map(|s| s.split(',').map(|n| n.parse().unwrap()).collect())
        .unwrap_or_else(|_| vec![10_000, 100_000]);
    let largest = *sizes.iter().max().unwrap();
    for &keys in &sizes {
        let started = Instant::now();
        common::build_store(&common::store_dir(keys), keys);
        eprintln!("store of {keys} keys ready in {:?}", started.elapsed());
    }

    let mut group = c.benchmark_group("scale");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    for &keys in &sizes {
        let dir = common::store_dir(keys);
        group.bench_function(format!("open_{keys}"), |b| {
            b.iter(|| {
                let clock = ManualClock::new(common::start());
                common::open(&dir, keys, &clock)
            });
        });
    }

    let dir = common::store_dir(largest);
    let clock = ManualClock::new(common::start());
    let kms = common::open(&dir, largest, &clock);
    group.bench_function(format!("run_due_nothing_due_{largest}"), |b| {
        b.iter(|| {
            let report = kms.run_due().unwrap();
            assert!(report.rotated.is_empty());
        });
    });
    group.bench_function(format!("list_keys_{largest}"), |b| {
        b.iter(|| kms.list_keys().unwrap().kms_keys.len());
    });
    drop(kms);

    // 1% due: on a copy (it changes the store), each iteration moves the clock by 90 days,
    // which makes the same 1% of keys due again.
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&dir, copy.path());
    let clock = ManualClock::new(common::start());
    let kms = common::open(copy.path(), largest, &clock);
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(1));
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
