//! Operations on a large store: `Kms::backup` (with how long writes waited) and `Kms::restore`
//! of 100,000 keys on each engine. The stores are those of the `scale` benchmark (built once in
//! Cargo's target tmp directory, reused across runs). Each backup's size and write pause is
//! printed to standard error.
//!
//! Environment: `KEYLIFE_BENCH_SCALE=100000` (store sizes), `KEYLIFE_BENCH_ENGINES=sled,redb`.

use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};
use keylife::store::Engine;
use keylife::{Kms, ManualClock, RestoreOptions};

#[path = "common.rs"]
mod common;

fn operations(c: &mut Criterion) {
    let sizes = common::sizes(&[100_000]);
    let engines = common::engines();
    let mut group = c.benchmark_group("operations");
    group.sample_size(10).sampling_mode(SamplingMode::Flat);
    for &engine in &engines {
        for &keys in &sizes {
            let dir = common::store_dir(engine, keys);
            let started = Instant::now();
            common::build_store(&dir, keys, engine);
            eprintln!(
                "{engine} store of {keys} keys ready in {:?}",
                started.elapsed()
            );
            let clock = ManualClock::new(common::start());
            let kms = common::open(&dir, keys, &clock);
            let mut file = Vec::new();
            group.bench_function(format!("backup_{engine}_{keys}"), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        file.clear();
                        let started = Instant::now();
                        let summary = kms.backup(&mut file).unwrap();
                        total += started.elapsed();
                        eprintln!(
                            "backup_{engine}_{keys}: {} bytes, {} entries, writes paused {:?}",
                            summary.bytes, summary.entries, summary.writes_paused
                        );
                    }
                    total
                });
            });
            drop(kms);
            for target in Engine::ALL {
                group.bench_function(format!("restore_{engine}_to_{target}_{keys}"), |b| {
                    b.iter_custom(|iters| {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            let out = tempfile::tempdir().unwrap();
                            let options = RestoreOptions::default().engine(target);
                            let started = Instant::now();
                            let report = Kms::restore(
                                &mut file.as_slice(),
                                out.path().join("zone"),
                                common::root(),
                                &options,
                            )
                            .unwrap();
                            total += started.elapsed();
                            assert_eq!(report.backup.keys, keys as u64);
                        }
                        total
                    });
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, operations);
criterion_main!(benches);
