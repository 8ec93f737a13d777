//! Set-up shared by the benchmarks (included with `#[path]`, not a benchmark itself).
#![allow(dead_code)]

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use keylife::store::{Backend, DirLock, Engine, Entries, REDB_FILE, Table, Write};
use keylife::{CreateKey, Error, Kms, KmsOptions, Limits, ManualClock, RootKey};
use redb::{ReadableDatabase as _, ReadableTable as _};

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
/// before a measurement (the store is flushed once at the end by dropping it). It names its
/// directory, so that the [`AuthenticatedBackend`](keylife::store::AuthenticatedBackend) a
/// `Kms` wraps it in keeps the store's witness file there, as over a real [`SledBackend`]
/// (a store built without it would be refused by a later `Kms::open`: "witness file missing").
///
/// [`SledBackend`]: keylife::store::SledBackend
pub struct Unsynced {
    trees: Vec<sled::Tree>,
    db: sled::Db,
    dir: PathBuf,
    _lock: DirLock,
}

impl Unsynced {
    pub fn open(path: &Path) -> Unsynced {
        let lock = DirLock::acquire(path).unwrap();
        let db = sled::Config::new()
            .path(path)
            .flush_every_ms(None)
            .open()
            .unwrap();
        let trees = Table::ALL
            .iter()
            .map(|t| db.open_tree(t.name()).unwrap())
            .collect();
        Unsynced {
            trees,
            db,
            dir: path.to_owned(),
            _lock: lock,
        }
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

    fn directory(&self) -> Option<&Path> {
        Some(&self.dir)
    }

    fn engine(&self) -> &'static str {
        "sled"
    }
}

/// The redb table of `table`, as [`RedbBackend`](keylife::store::RedbBackend) names it.
fn redb_table(table: Table) -> redb::TableDefinition<'static, &'static [u8], &'static [u8]> {
    redb::TableDefinition::new(table.name())
}

/// Durable redb commits every this many commits of [`UnsyncedRedb`]: a redb file reuses the
/// pages freed by non-durable commits only after a durable one.
const REDB_DURABLE_EVERY: u64 = 1024;

/// A redb backend whose commits are not synced ([`redb::Durability::None`], with a durable
/// commit every [`REDB_DURABLE_EVERY`] and one when dropped): the redb counterpart of
/// [`Unsynced`], with the same file and tables as
/// [`RedbBackend`](keylife::store::RedbBackend), which opens the store afterwards.
pub struct UnsyncedRedb {
    db: redb::Database,
    commits: AtomicU64,
    dir: PathBuf,
    _lock: DirLock,
}

impl UnsyncedRedb {
    pub fn open(path: &Path) -> UnsyncedRedb {
        let lock = DirLock::acquire(path).unwrap();
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(path.join(REDB_FILE)).unwrap();
        let db = redb::Builder::new()
            .create_with_backend(redb::backends::FileBackend::new(file))
            .unwrap();
        // Every table, as RedbBackend::open would create them.
        let txn = db.begin_write().unwrap();
        for table in Table::ALL {
            txn.open_table(redb_table(table)).unwrap();
        }
        txn.commit().unwrap();
        UnsyncedRedb {
            db,
            commits: AtomicU64::new(0),
            dir: path.to_owned(),
            _lock: lock,
        }
    }
}

impl Drop for UnsyncedRedb {
    fn drop(&mut self) {
        // A durable commit makes every non-durable one before it durable.
        let mut txn = self.db.begin_write().unwrap();
        txn.set_durability(redb::Durability::Immediate).unwrap();
        txn.commit().unwrap();
    }
}

impl Backend for UnsyncedRedb {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let txn = self.db.begin_read().unwrap();
        let open = txn.open_table(redb_table(table)).unwrap();
        Ok(open.get(key).unwrap().map(|v| v.value().to_vec()))
    }

    fn scan(
        &self,
        table: Table,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, Error> {
        if limit == 0 || end.is_some_and(|end| end <= start) {
            return Ok(Vec::new());
        }
        let txn = self.db.begin_read().unwrap();
        let open = txn.open_table(redb_table(table)).unwrap();
        let upper = end.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        Ok(open
            .range((std::ops::Bound::Included(start), upper))
            .unwrap()
            .take(limit)
            .map(|e| {
                e.map(|(k, v)| (k.value().to_vec(), v.value().to_vec()))
                    .unwrap()
            })
            .collect())
    }

    fn commit(&self, batch: &[Write]) -> Result<(), Error> {
        let n = self.commits.fetch_add(1, Ordering::Relaxed) + 1;
        let mut txn = self.db.begin_write().unwrap();
        if !n.is_multiple_of(REDB_DURABLE_EVERY) {
            txn.set_durability(redb::Durability::None).unwrap();
        }
        {
            for write in batch {
                match write {
                    Write::Put { table, key, value } => {
                        let mut open = txn.open_table(redb_table(*table)).unwrap();
                        open.insert(key.as_slice(), value.as_slice()).unwrap();
                    }
                    Write::Delete { table, key } => {
                        let mut open = txn.open_table(redb_table(*table)).unwrap();
                        open.remove(key.as_slice()).unwrap();
                    }
                    Write::AddCounter { table, key, delta } => {
                        let mut open = txn.open_table(redb_table(*table)).unwrap();
                        let current = open
                            .get(key.as_slice())
                            .unwrap()
                            .map_or(0, |b| i64::from_be_bytes(b.value().try_into().unwrap()));
                        open.insert(key.as_slice(), &(current + delta).to_be_bytes()[..])
                            .unwrap();
                    }
                }
            }
        }
        txn.commit().unwrap();
        Ok(())
    }

    fn directory(&self) -> Option<&Path> {
        Some(&self.dir)
    }

    fn engine(&self) -> &'static str {
        "redb"
    }
}

/// Threads that build a store: their commits are grouped, so that the witness file (synced
/// after each commit group) costs one sync per group rather than per change.
const BUILD_THREADS: usize = 4;

/// Builds (once per directory) a store of `keys` keys on `engine`, every 100th with automatic
/// rotation every 90 days and the others with automatic rotation off, so that moving the
/// clock by 90 days makes exactly 1% of the keys due. Built through a `Kms` (so authenticated,
/// with its witness) over a non-durable engine ([`Unsynced`], [`UnsyncedRedb`]), from
/// [`BUILD_THREADS`] threads.
pub fn build_store(dir: &Path, keys: usize, engine: Engine) {
    let marker = dir.join("built");
    if marker.exists() {
        return;
    }
    let clock = ManualClock::new(start());
    {
        let backend: Arc<dyn Backend> = match engine {
            Engine::Sled => Arc::new(Unsynced::open(dir)),
            Engine::Redb => Arc::new(UnsyncedRedb::open(dir)),
        };
        let kms = Kms::with_backend(
            backend,
            root(),
            KmsOptions::new("bench").clock(clock).limits(limits(keys)),
        )
        .unwrap();
        std::thread::scope(|scope| {
            for t in 0..BUILD_THREADS {
                let kms = &kms;
                scope.spawn(move || {
                    for i in (t..keys).step_by(BUILD_THREADS) {
                        let id = kms
                            .create_key(&CreateKey::new(format!("key-{i}")))
                            .unwrap()
                            .id;
                        kms.disable_key_rotation(id, None).unwrap();
                        if i % 100 == 0 {
                            kms.enable_key_rotation(id, Some(90), None).unwrap();
                        }
                    }
                });
            }
        });
    }
    std::fs::write(marker, b"").unwrap();
}

/// Opens the store in `dir` with `Kms::open` (the engine it was created with, durable) and a
/// manual clock.
pub fn open(dir: &Path, keys: usize, clock: &ManualClock) -> Kms {
    Kms::open(
        dir,
        root(),
        KmsOptions::new("bench")
            .clock(clock.clone())
            .limits(limits(keys)),
    )
    .unwrap()
}

/// Where the benchmark store of `keys` keys on `engine` lives between runs (built once;
/// removed by `cargo clean`). `v2`: stores of the authenticated format, with their witness.
pub fn store_dir(engine: Engine, keys: usize) -> PathBuf {
    let parent = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(parent).unwrap();
    parent.join(format!("keylife-bench-v2-{engine}-{keys}"))
}

/// Copies directory `from` (a closed store) to `to`, recursively.
pub fn copy_dir(from: &Path, to: &Path) {
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

/// The store sizes of `KEYLIFE_BENCH_SCALE` (comma-separated), else `default`.
pub fn sizes(default: &[usize]) -> Vec<usize> {
    std::env::var("KEYLIFE_BENCH_SCALE")
        .map(|s| s.split(',').map(|n| n.parse().unwrap()).collect())
        .unwrap_or_else(|_| default.to_vec())
}

/// The engines of `KEYLIFE_BENCH_ENGINES` (comma-separated), else every engine.
pub fn engines() -> Vec<Engine> {
    std::env::var("KEYLIFE_BENCH_ENGINES")
        .map(|s| s.split(',').map(|n| n.parse().unwrap()).collect())
        .unwrap_or_else(|_| Engine::ALL.to_vec())
}
