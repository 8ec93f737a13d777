//! The redb backend: one file, checksummed copy-on-write pages, a sync at every commit.

use std::fmt::Display;
use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ::redb::backends::FileBackend;
use ::redb::{
    BackendError, CommitError, DatabaseError, Durability, ReadableDatabase as _,
    ReadableTable as _, StorageBackend, TableDefinition, TableError, TableHandle as _,
};

use super::backend::{Backend, Entries, Table, Write, decode_counter};
use super::lock::{DirLock, retry_while_busy};
use super::sync::{Syncs, sync_dir};
use crate::core::Error;

/// The database file of a redb store, in the store's directory.
pub const REDB_FILE: &str = "keylife.redb";

/// The redb table of `table`: byte keys to byte values, named [`Table::name`].
fn definition(table: Table) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
    TableDefinition::new(table.name())
}

/// A backend on a redb 5 database: the file [`REDB_FILE`] in the store's directory, one redb
/// table per [`Table`] (all created when the database is opened), every commit one redb write
/// transaction committed with [`Durability::Immediate`]: redb writes the transaction's pages
/// and its commit slot, then `fdatasync`s the file before `commit` returns (one sync per
/// commit, and one more whenever the transaction had to grow the file; see
/// [`RedbBackend::syncs`]).
///
/// redb runs one write transaction at a time (a second `begin_write` waits for the first to
/// end), so concurrent commits are serialized, each paying its own sync; reads run beside
/// them on the last committed state.
///
/// A commit that fails before redb's own `commit` is aborted and nothing of it is applied
/// ([`Error::Storage`], or the batch's own error such as a counter that does not decode).
/// When redb's `commit` itself fails, the transaction may or may not have reached the disk,
/// and redb refuses further writes until the database is reopened: that is
/// [`Error::NotDurable`].
#[derive(Debug)]
pub struct RedbBackend {
    db: ::redb::Database,
    /// `fdatasync` calls redb made on the file.
    data_syncs: Arc<AtomicU64>,
    /// `fsync` calls of the directory made by this backend.
    dir_syncs: AtomicU64,
    /// The store's directory.
    dir: PathBuf,
    /// keylife's lock on the directory, released after redb's handle (fields drop in order).
    _lock: DirLock,
}

impl RedbBackend {
    /// Opens (or creates) the database in the directory `path`.
    ///
    /// keylife's own lock on the directory ([`DirLock`]) is taken first (creating the
    /// directory if needed, then restricted to its owner on unix): a store another process or
    /// backend holds is [`Error::StoreInUse`]. The file [`REDB_FILE`] is created if missing
    /// (readable and writable by its owner only, on unix), and the directory synced so that
    /// its entry survives a crash. With keylife's lock held, redb's refusal of a file it
    /// still has open can only be a database of this process still closing: it is retried
    /// for up to [`LOCK_WAIT`](super::LOCK_WAIT), then reported as [`Error::Storage`].
    pub fn open(path: impl AsRef<Path>) -> Result<RedbBackend, Error> {
        let dir = path.as_ref();
        let lock = DirLock::acquire(dir)?;
        let file_path = dir.join(REDB_FILE);
        let created = create_file(&file_path)?;
        let data_syncs = Arc::new(AtomicU64::new(0));
        let db = retry_while_busy(|| {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&file_path)
                .map_err(|error| Error::Storage {
                    detail: format!("cannot open {}: {error}", file_path.display()),
                })?;
            let backend = CountingFile {
                inner: FileBackend::new(file),
                syncs: Arc::clone(&data_syncs),
            };
            // A file changed outside redb may make a plain open panic (redb's documentation):
            // checking every page's checksum at open reports it as an error instead.
            let opened = guarded("open", || {
                Ok(::redb::Builder::new()
                    .set_check_integrity_on_open(true)
                    .create_with_backend(backend))
            })?;
            match opened {
                Ok(db) => Ok(Ok(db)),
                Err(error @ DatabaseError::DatabaseAlreadyOpen) => Ok(Err(storage(error))),
                Err(error) => Err(Error::Storage {
                    detail: format!("cannot open {}: {error}", file_path.display()),
                }),
            }
        })?;
        let backend = RedbBackend {
            db,
            data_syncs,
            dir_syncs: AtomicU64::new(0),
            dir: dir.to_owned(),
            _lock: lock,
        };
        backend.create_tables()?;
        if created {
            backend.dir_syncs.fetch_add(1, Ordering::Relaxed);
            sync_dir(dir).map_err(|error| Error::Storage {
                detail: format!("fsync of the directory {}: {error}", dir.display()),
            })?;
        }
        Ok(backend)
    }

    /// The syncs made since [`RedbBackend::open`]: `data` counts every `fdatasync` redb made
    /// of [`REDB_FILE`] (opening a database syncs it too), `dir` every `fsync` of the
    /// directory (one when the file was created).
    #[must_use]
    pub fn syncs(&self) -> Syncs {
        Syncs {
            data: self.data_syncs.load(Ordering::Relaxed),
            dir: self.dir_syncs.load(Ordering::Relaxed),
        }
    }

    /// Creates, in one durable transaction, every table the database does not have yet (all
    /// of them in a new database; none, and no write, in an existing one).
    fn create_tables(&self) -> Result<(), Error> {
        let existing: Vec<String> = self
            .db
            .begin_read()
            .map_err(storage)?
            .list_tables()
            .map_err(storage)?
            .map(|handle| handle.name().to_owned())
            .collect();
        if Table::ALL
            .iter()
            .all(|table| existing.iter().any(|name| name == table.name()))
        {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(storage)?;
        for table in Table::ALL {
            txn.open_table(definition(table)).map_err(storage)?;
        }
        txn.commit().map_err(storage)
    }

    /// Applies `batch` to the open tables of `txn`, in order.
    fn apply(txn: &::redb::WriteTransaction, batch: &[Write]) -> Result<(), Error> {
        let mut tables: [Option<::redb::Table<'_, &[u8], &[u8]>>; Table::ALL.len()] =
            Default::default();
        for write in batch {
            let (Write::Put { table, .. }
            | Write::Delete { table, .. }
            | Write::AddCounter { table, .. }) = write;
            let open = match &mut tables[table.index()] {
                Some(open) => open,
                slot @ None => slot.insert(txn.open_table(definition(*table)).map_err(storage)?),
            };
            match write {
                Write::Put { key, value, .. } => {
                    open.insert(key.as_slice(), value.as_slice())
                        .map_err(storage)?;
                }
                Write::Delete { key, .. } => {
                    open.remove(key.as_slice()).map_err(storage)?;
                }
                Write::AddCounter { table, key, delta } => {
                    let current = match open.get(key.as_slice()).map_err(storage)? {
                        Some(bytes) => decode_counter(*table, key, bytes.value())?,
                        None => 0,
                    };
                    let next = current.saturating_add(*delta).to_be_bytes();
                    open.insert(key.as_slice(), &next[..]).map_err(storage)?;
                }
            }
        }
        Ok(())
    }
}

/// Creates `path` if it does not exist (owner-only on unix): whether it did.
fn create_file(path: &Path) -> Result<bool, Error> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(true),
        Err(error) if error.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(error) => Err(Error::Storage {
            detail: format!("cannot create {}: {error}", path.display()),
        }),
    }
}

/// Runs a call into redb, turning a panic (redb panics on some damaged pages instead of
/// returning an error) into [`Error::Storage`].
fn guarded<T>(what: &str, call: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    guarded_as(what, |detail| Error::Storage { detail }, call)
}

/// [`guarded`], the panic reported as `on_panic` makes it.
fn guarded_as<T>(
    what: &str,
    on_panic: fn(String) -> Error,
    call: impl FnOnce() -> Result<T, Error>,
) -> Result<T, Error> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(call)).unwrap_or_else(|_| {
        Err(on_panic(format!(
            "redb panicked in {what}: its file is damaged"
        )))
    })
}

fn storage(error: impl Display) -> Error {
    Error::Storage {
        detail: format!("redb: {error}"),
    }
}

/// Whether reading `table` failed only because it does not exist (then it is empty).
fn missing(error: &TableError) -> bool {
    matches!(error, TableError::TableDoesNotExist(_))
}

impl Backend for RedbBackend {
    fn directory(&self) -> Option<&Path> {
        Some(&self.dir)
    }

    fn engine(&self) -> &'static str {
        "redb"
    }

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        guarded("get", || self.get_unguarded(table, key))
    }

    fn scan(
        &self,
        table: Table,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, Error> {
        guarded("scan", || self.scan_unguarded(table, start, end, limit))
    }

    fn commit(&self, batch: &[Write]) -> Result<(), Error> {
        // A panic inside redb's commit leaves it unknown whether the batch is durable.
        guarded_as(
            "commit",
            |detail| Error::NotDurable { detail },
            || self.commit_unguarded(batch),
        )
    }
}

impl RedbBackend {
    fn get_unguarded(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let txn = self.db.begin_read().map_err(storage)?;
        let open = match txn.open_table(definition(table)) {
            Ok(open) => open,
            Err(error) if missing(&error) => return Ok(None),
            Err(error) => return Err(storage(error)),
        };
        Ok(open
            .get(key)
            .map_err(storage)?
            .map(|value| value.value().to_vec()))
    }

    fn scan_unguarded(
        &self,
        table: Table,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, Error> {
        if limit == 0 || end.is_some_and(|end| end <= start) {
            // An empty range (redb would reject an inverted one).
            return Ok(Vec::new());
        }
        let txn = self.db.begin_read().map_err(storage)?;
        let open = match txn.open_table(definition(table)) {
            Ok(open) => open,
            Err(error) if missing(&error) => return Ok(Vec::new()),
            Err(error) => return Err(storage(error)),
        };
        let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
        open.range((Bound::Included(start), upper))
            .map_err(storage)?
            .take(limit)
            .map(|entry| {
                entry
                    .map(|(k, v)| (k.value().to_vec(), v.value().to_vec()))
                    .map_err(storage)
            })
            .collect()
    }

    fn commit_unguarded(&self, batch: &[Write]) -> Result<(), Error> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut txn = self.db.begin_write().map_err(storage)?;
        // redb's default, said explicitly: `commit` returns once the file is synced.
        let applied = txn
            .set_durability(Durability::Immediate)
            .map_err(storage)
            .and_then(|()| RedbBackend::apply(&txn, batch));
        if let Err(error) = applied {
            // Nothing of the batch is kept. An abort that fails leaves redb refusing writes
            // until the database is reopened; the batch was not applied either way.
            let _ = txn.abort();
            return Err(error);
        }
        match txn.commit() {
            Ok(()) => Ok(()),
            // Rolled back by redb.
            Err(error @ CommitError::TransactionPoisoned) => Err(storage(error)),
            Err(error) => Err(Error::NotDurable {
                detail: format!("redb could not commit: {error}"),
            }),
        }
    }
}

/// redb's file backend, counting the `fdatasync` calls redb makes.
#[derive(Debug)]
struct CountingFile {
    inner: FileBackend,
    syncs: Arc<AtomicU64>,
}

impl StorageBackend for CountingFile {
    fn len(&self) -> Result<u64, BackendError> {
        self.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), BackendError> {
        self.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), BackendError> {
        self.inner.set_len(len)
    }

    fn sync_data(&self) -> Result<(), BackendError> {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), BackendError> {
        self.inner.write(offset, data)
    }

    fn close(&self) -> Result<(), BackendError> {
        self.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.inner.query_lock_range(start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn the_file_and_a_new_directory_are_the_owners_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("store");
        let backend = RedbBackend::open(&dir).unwrap();
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700, "the directory");
        assert_eq!(mode(&dir.join(REDB_FILE)), 0o600, "the file");
        assert_eq!(backend.syncs().dir, 1, "the new file's entry is synced");
        drop(backend);
        // Reopened: nothing created, so no directory sync.
        let backend = RedbBackend::open(&dir).unwrap();
        assert_eq!(backend.syncs().dir, 0);
        assert_eq!(mode(&dir.join(REDB_FILE)), 0o600);
    }
}
