//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::Arc;

use jiff::Timestamp;
use keylife::store::{Backend, MemoryBackend};
use keylife::{Kms, KmsOptions, Limits, ManualClock, RootKey};

/// The start of every manual clock.
pub fn start() -> Timestamp {
    "2026-01-01T00:00:00Z".parse().unwrap()
}

/// A fixed root key derived from `byte`.
pub fn root(byte: u8) -> RootKey {
    RootKey::from_bytes(&mut [byte; 32])
}

/// A Kms over a fresh in-memory store with a manual clock.
pub fn memory_kms() -> (Kms, ManualClock) {
    let clock = ManualClock::new(start());
    let kms =
        Kms::open_in_memory(root(1), KmsOptions::new("ch-gva-2").clock(clock.clone())).unwrap();
    (kms, clock)
}

/// A Kms over `backend` with `limits` and `clock`.
pub fn kms_on(backend: Arc<dyn Backend>, clock: &ManualClock, limits: Limits) -> Kms {
    Kms::with_backend(
        backend,
        root(1),
        KmsOptions::new("ch-gva-2")
            .clock(clock.clone())
            .limits(limits),
    )
    .unwrap()
}

/// A fresh in-memory backend.
pub fn memory() -> Arc<dyn Backend> {
    Arc::new(MemoryBackend::new())
}
