//! The fuzz targets of keylife, as plain functions over bytes: `fuzz_targets/*.rs` hand them
//! to libFuzzer, and the main crate's `tests/fuzz_corpus.rs` replays `corpus/` through them.

#![forbid(unsafe_code)]

pub mod targets;
