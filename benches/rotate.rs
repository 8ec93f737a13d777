//! Root-key rotation of a large store: the time of `keylife::rotate_root_key` and the peak
//! memory of the process during it (Linux: the high-water mark is reset with
//! `/proc/self/clear_refs` just before, then read from `VmHWM` in `/proc/self/status`), on a
//! copy of the benchmark store of `benches/scale.rs` (built once, reused).
//!
//! Environment: `KEYLIFE_BENCH_SCALE=100000` (store sizes, comma-separated),
//! `KEYLIFE_BENCH_ENGINES=sled,redb`. Run: `cargo bench --bench rotate` (release), or
//! `KEYLIFE_BENCH_SCALE=10000 cargo test --bench rotate` for a debug build.

use std::time::Instant;

use keylife::RootKey;

#[path = "common.rs"]
mod common;

/// The process's `VmHWM` or `VmRSS` in MiB (Linux), if readable.
fn memory(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() {
    let sizes = common::sizes(&[100_000]);
    let engines = common::engines();
    for &engine in &engines {
        for &keys in &sizes {
            let built = common::store_dir(engine, keys);
            common::build_store(&built, keys, engine);
            let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
            let dir = work.path().join("store");
            common::copy_dir(&built, &dir);
            let _ = std::fs::remove_file(dir.join(keylife::store::LOCK_FILE));
            // For comparison: an open, which reads and checks every entry too.
            let _ = std::fs::write("/proc/self/clear_refs", "5");
            let before_open = memory("VmRSS:");
            let started = Instant::now();
            drop(common::open(
                &dir,
                keys,
                &keylife::ManualClock::new(common::start()),
            ));
            let open_took = started.elapsed();
            let open_peak = memory("VmHWM:");
            let _ = std::fs::write("/proc/self/clear_refs", "5");
            let before = memory("VmRSS:");
            let started = Instant::now();
            let done =
                keylife::rotate_root_key(&dir, common::root(), RootKey::from_bytes(&mut [7; 32]))
                    .unwrap();
            let took = started.elapsed();
            let peak = memory("VmHWM:");
            println!(
                "{engine}, {keys} keys: rotated in {took:.2?} ({} entries, {} materials); \
                 memory before {:.0} MiB, peak during {:.0} MiB; an open took {open_took:.2?}, \
                 memory before {:.0} MiB, peak during {:.0} MiB",
                done.entries,
                done.materials,
                before.unwrap_or(f64::NAN),
                peak.unwrap_or(f64::NAN),
                before_open.unwrap_or(f64::NAN),
                open_peak.unwrap_or(f64::NAN),
            );
        }
    }
}
