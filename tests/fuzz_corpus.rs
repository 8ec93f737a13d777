//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) through the fuzz targets' own
//! functions (`fuzz/src/targets.rs`, included as a module), so `cargo test` exercises every
//! target without cargo-fuzz or libFuzzer. A file that panics (a crash in keylife, or a
//! target's oracle or reference model disagreeing with keylife) fails its target's test, and
//! the message names the file.

#[path = "../fuzz/src/targets.rs"]
mod targets;

use std::collections::BTreeSet;
use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// Every fuzz target, as cargo-fuzz and `fuzz/corpus/` name them.
const TARGETS: [&str; 6] = [
    "decrypt",
    "envelope",
    "record",
    "lifecycle",
    "backup",
    "link",
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// Runs every file of `fuzz/corpus/<target>/` through `run`; fails naming each file that
/// panicked.
fn replay(target: &str, run: fn(&[u8])) {
    let dir = fuzz_dir().join("corpus").join(target);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no seed in {}", dir.display());
    let failed: Vec<String> = files
        .iter()
        .filter(|file| {
            let bytes = fs::read(file).expect("a readable seed");
            panic::catch_unwind(AssertUnwindSafe(|| run(&bytes))).is_err()
        })
        .map(|file| file.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} inputs of fuzz target `{target}` failed (panic messages above): {failed:#?}",
        failed.len(),
        files.len(),
    );
}

#[test]
fn decrypt_corpus() {
    replay("decrypt", targets::decrypt);
}

#[test]
fn envelope_corpus() {
    replay("envelope", targets::envelope);
}

#[test]
fn record_corpus() {
    replay("record", targets::record);
}

#[test]
fn lifecycle_corpus() {
    replay("lifecycle", targets::lifecycle);
}

#[test]
fn backup_corpus() {
    replay("backup", targets::backup);
}

#[test]
fn link_corpus() {
    replay("link", targets::link);
}

/// Every fuzz binary and every corpus is one of [`TARGETS`], each replayed by a test above.
#[test]
fn every_target_has_a_corpus_and_a_replay() {
    let names = |dir: &str, suffix: &str| -> BTreeSet<String> {
        fs::read_dir(fuzz_dir().join(dir))
            .unwrap_or_else(|e| panic!("cannot read fuzz/{dir}: {e}"))
            .map(|entry| entry.expect("a directory entry").file_name())
            .filter_map(|name| Some(name.to_str()?.strip_suffix(suffix)?.to_owned()))
            .collect()
    };
    let targets: BTreeSet<String> = TARGETS.iter().map(|&t| t.to_owned()).collect();
    assert_eq!(names("fuzz_targets", ".rs"), targets);
    assert_eq!(names("corpus", ""), targets);
}
