//! Set-up shared by the benchmarks (included with `#[path]`, not a benchmark itself).
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use keylife::store::{Backend, Entries, SledBackend, Table, Write};
use keylife::{CreateKey, Error, Kms, KmsOptions, Limits, ManualClock, RootKey};

/// The root key of every benchmark store.
pub fn root() -> RootKey {
    RootKey::from_bytes(&mut [42; 32])
}

/// The start of every benchmark clock.
pub fn start() -> jiff::Timestamp {
    "2026-01-01T00:00:00Z".parse().unwrap()
}

/// Limits that let a zone hold `keys` keys.
pub fn limits(keys: usize) -> Limits {
    Limits {
        key_quota: keys.max(1000),
        ..Limits::default()
    }
}

/// A sled backend whose commits are not flushed: only for building large stores quickly
/// before a measurement (the store is flushed once at the end by dropping it).
pub struct Unsynced {
    trees: Vec<sled::Tree>,
    db: sled::Db,
}

impl Unsynced {
    pub fn open(path: &Path) -> Unsynced {
        let db = sled::Config::new()
            .path(path)
            .flush_every_ms(None)
            .open()
            .unwrap();
        let trees = Table::ALL
            .iter()
            .map(|t| db.open_tree(t.name()).unwrap())
            .collect();
        Unsynced { trees, db }
    }
}

impl Drop for Unsynced {
    fn drop(&mut self) {
        self.db.flush().unwrap();
    }
}

impl Backend for Unsynced {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.trees[table.index()]
            .get(key)
            .unwrap()
            .map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        table: Table,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, Error> {
        let tree = &self.trees[table.index()];
        let iter = match end {
            Some(end) => tree.range(start..end),
            None => tree.range(start..),
        };
        Ok(iter
            .take(limit)
            .map(|e| e.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap())
            .collect())
    }

    fn commit(&self, batch: &[Write]) -> Result<(), Error> {
        for write in batch {
            match write {
                Write::Put { table, key, value } => {
                    self.trees[table.index()]
                        .insert(key.as_slice(), value.as_slice())
                        .unwrap();
                }
                Write::Delete { table, key } => {
                    self.trees[table.index()].remove(key.as_slice()).unwrap();
                }
                Write::AddCounter { table, key, delta } => {
                    let tree = &self.trees[table.index()];
                    let current = tree
                        .get(key.as_slice())
                        .unwrap()
                        .map_or(0, |b| i64::from_be_bytes(b.as_ref().try_into().unwrap()));
                    tree.insert(key.as_slice(), &(current + delta).to_be_bytes()[..])
                        .unwrap();
                }
            }
        }
        Ok(())
    }
}

/// Builds (once per directory) a sled store of `keys` keys, every 100th with automatic
/// rotation every 90 days and the others with automatic rotation off, so that moving the
/// clock by 90 days makes exactly 1% of the keys due.
pub fn build_store(dir: &Path, keys: usize) {
    let marker = dir.join("built");
    if marker.exists() {
        return;
    }
    let clock = ManualClock::new(start());
    {
        let kms = Kms::with_backend(
            Arc::new(Unsynced::open(dir)),
            root(),
            KmsOptions::new("bench").clock(clock).limits(limits(keys)),
        )
        .unwrap();
        for i in 0..keys {
            let id = kms
                .create_key(&CreateKey::new(format!("key-{i}")))
                .unwrap()
                .id;
            if i % 100 == 0 {
                kms.disable_key_rotation(id, None).unwrap();
                kms.enable_key_rotation(id, Some(90), None).unwrap();
            } else {
                kms.disable_key_rotation(id, None).unwrap();
            }
        }
    }
    std::fs::write(marker, b"").unwrap();
}

/// Opens the store in `dir` with the real (durable) sled backend and a manual clock.
pub fn open(dir: &Path, keys: usize, clock: &ManualClock) -> Kms {
    Kms::with_backend(
        Arc::new(SledBackend::open(dir).unwrap()),
        root(),
        KmsOptions::new("bench")
            .clock(clock.clone())
            .limits(limits(keys)),
    )
    .unwrap()
}

/// Where the benchmark stores live between runs (built once; removed by `cargo clean`).
pub fn store_dir(keys: usize) -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("keylife-bench-{keys}"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
