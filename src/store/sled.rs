//! The sled backend: the default, on disk.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional as _};

use super::backend::{Backend, Entries, Table, Write, decode_counter};
use super::lock::{DirLock, owner_only, retry_while_busy};
use super::sync::{DataSync, Syncs};
use crate::core::Error;

/// A backend on a sled 0.34 database: one tree per [`Table`]; every commit is one sled
/// transaction over the trees, followed by a flush of the database and an `fdatasync` of its
/// data file (sled's flush alone ends in `sync_file_range`, which persists neither the file's
/// size nor the disk's write cache), and an `fsync` of the directory when sled created, renamed
/// or removed a file in it.
///
/// Commits are not grouped here: a `Kms` reaches its engine through
/// [`AuthenticatedBackend`](super::AuthenticatedBackend), which groups concurrent commits
/// into one engine commit (`store/group.rs`).
///
/// sled applies a transaction in memory before the flush makes it durable, and cannot take it
/// back: when the flush fails, the commit answers [`Error::NotDurable`] (not
/// [`Error::Storage`], which means nothing was applied).
#[derive(Debug)]
pub struct SledBackend {
    db: sled::Db,
    trees: Vec<sled::Tree>,
    /// The `fdatasync` of sled's data file (none for a database opened by the caller).
    sync: Option<DataSync>,
    /// The store's directory (none for a database opened by the caller).
    dir: Option<PathBuf>,
    /// The file that says this directory holds data ([`MARKER`]), and whether it exists.
    marker: Option<(PathBuf, AtomicBool)>,
    /// keylife's lock on the directory, released after sled's handle (fields drop in order).
    lock: Option<DirLock>,
}

/// A file written beside sled's own once a store's first commit is durable. sled's recovery
/// silently drops a log whose first message is damaged; without this file, such a store would
/// be taken for a new, empty one. With it, [`SledBackend::open`] refuses the store.
pub const MARKER: &str = "keylife-store";

impl SledBackend {
    /// Opens (or creates) the database in the directory `path`.
    ///
    /// keylife's own lock on the directory ([`DirLock`]) is taken first: a store another
    /// process or backend holds is [`Error::StoreInUse`] (after waiting up to
    /// [`LOCK_WAIT`](super::LOCK_WAIT) for it to be let go). With that lock held, sled's
    /// failure to take its own lock is a `Db` of this process still closing (sled releases
    /// its lock only when its background threads let go of the last handle, a moment after
    /// the `Db` was dropped): the open is retried, without reading sled's message, for up to
    /// [`LOCK_WAIT`](super::LOCK_WAIT) more, then sled's error is [`Error::Storage`].
    pub fn open(path: impl AsRef<Path>) -> Result<SledBackend, Error> {
        let path = path.as_ref();
        let lock = DirLock::acquire(path)?;
        // Every commit flushes, so sled's periodic flusher thread has nothing to do.
        let config = sled::Config::new().path(path).flush_every_ms(None);
        let db = retry_while_busy(|| match config.open() {
            Ok(db) => Ok(Ok(db)),
            // sled reports its lock as an I/O error of kind `Other` (sled 0.34,
            // `Config::try_lock`); with our lock held, only this process can hold it. Other
            // errors of that kind are retried too and, if they last, reported as they are.
            Err(sled::Error::Io(error)) if error.kind() == std::io::ErrorKind::Other => {
                Ok(Err(storage(sled::Error::Io(error))))
            }
            Err(error) => Err(storage(error)),
        })?;
        // sled creates its files with the process's umask: every file of a store is its
        // owner's only (a snapshot file sled writes while open or at close sits in the 0700
        // directory until the next open restricts it too).
        restrict_entries(path)?;
        let mut backend = SledBackend::from_db(db)?;
        backend.sync = Some(DataSync::open(path, &path.join("db"))?);
        backend.dir = Some(path.to_owned());
        let marker = path.join(MARKER);
        let marked = marker.exists();
        if marked && backend.tree(Table::Meta).is_empty() {
            return Err(Error::Corrupt {
                record: "store".to_owned(),
                detail: format!(
                    "{} held a keylife store, but sled recovered no data from it (its log is \
                     damaged); restore it from a backup",
                    path.display()
                ),
            });
        }
        backend.marker = Some((marker, AtomicBool::new(marked)));
        backend.lock = Some(lock);
        Ok(backend)
    }

    /// Writes [`MARKER`] once, after the first durable commit.
    fn mark(&self) -> Result<(), Error> {
        let Some((path, marked)) = &self.marker else {
            return Ok(());
        };
        if marked.load(Ordering::Acquire) {
            return Ok(());
        }
        let written = std::fs::File::create(path).and_then(|file| {
            std::io::Write::write_all(&mut &file, b"keylife store: do not delete\n")?;
            file.sync_all()?;
            // And the directory entry.
            std::fs::File::open(path.parent().unwrap_or(Path::new("."))).and_then(|d| d.sync_all())
        });
        written.map_err(|error| Error::NotDurable {
            detail: format!("could not write {}: {error}", path.display()),
        })?;
        marked.store(true, Ordering::Release);
        Ok(())
    }

    /// Uses an open sled database.
    pub fn from_db(db: sled::Db) -> Result<SledBackend, Error> {
        let trees = Table::ALL
            .iter()
            .map(|table| db.open_tree(table.name()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(storage)?;
        Ok(SledBackend {
            db,
            trees,
            sync: None,
            dir: None,
            marker: None,
            lock: None,
        })
    }

    fn tree(&self, table: Table) -> &sled::Tree {
        &self.trees[table.index()]
    }

    /// The syncs this backend made since it was opened: one `fdatasync` of sled's data file
    /// per commit (none for a database given to [`SledBackend::from_db`], whose
    /// directory this backend does not know).
    #[must_use]
    pub fn syncs(&self) -> Syncs {
        self.sync.as_ref().map(DataSync::count).unwrap_or_default()
    }

    /// sled's flush, then the `fdatasync` of its data file (and of the directory if needed).
    fn make_durable(&self) -> Result<(), String> {
        self.db.flush().map_err(|error| error.to_string())?;
        if let Some(sync) = &self.sync {
            sync.sync()?;
        }
        Ok(())
    }
}

/// Sets every entry of `dir` to its owner only: directories 0700, files 0600.
fn restrict_entries(dir: &Path) -> Result<(), Error> {
    let io = |error: std::io::Error| Error::Storage {
        detail: format!("cannot restrict the files of {}: {error}", dir.display()),
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let mode = if entry.file_type().map_err(io)?.is_dir() {
            0o700
        } else {
            0o600
        };
        owner_only(&entry.path(), mode).map_err(io)?;
    }
    Ok(())
}

fn storage(error: sled::Error) -> Error {
    Error::Storage {
        detail: error.to_string(),
    }
}

impl Backend for SledBackend {
    fn directory(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    fn engine(&self) -> &'static str {
        "sled"
    }

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.tree(table)
            .get(key)
            .map(|value| value.map(|v| v.to_vec()))
            .map_err(storage)
    }

    fn scan(
        &self,
        table: Table,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, Error> {
        let tree = self.tree(table);
        let iter = match end {
            Some(end) => tree.range(start..end),
            None => tree.range(start..),
        };
        iter.take(limit)
            .map(|entry| {
                entry
                    .map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .map_err(storage)
            })
            .collect()
    }

    fn commit(&self, batch: &[Write]) -> Result<(), Error> {
        if batch.is_empty() {
            // sled cannot run a transaction over no tree; nothing to do.
            return Ok(());
        }
        self.apply(batch)?;
        self.make_durable()
            .and_then(|()| self.mark().map_err(|error| error.to_string()))
            .map_err(|error| Error::NotDurable {
                detail: format!("the commit could not be made durable: {error}"),
            })
    }
}

impl SledBackend {
    /// Applies `batch` as one sled transaction over the trees it touches (not yet durable):
    /// a transaction costs more with every tree it spans.
    fn apply(&self, batch: &[Write]) -> Result<(), Error> {
        let mut slot = [usize::MAX; Table::ALL.len()];
        let mut touched = Vec::with_capacity(4);
        for write in batch {
            let (Write::Put { table, .. }
            | Write::Delete { table, .. }
            | Write::AddCounter { table, .. }) = write;
            if slot[table.index()] == usize::MAX {
                slot[table.index()] = touched.len();
                touched.push(self.trees[table.index()].clone());
            }
        }
        let result = touched.as_slice().transaction(|trees| {
            for write in batch {
                match write {
                    Write::Put { table, key, value } => {
                        trees[slot[table.index()]].insert(key.as_slice(), value.as_slice())?;
                    }
                    Write::Delete { table, key } => {
                        trees[slot[table.index()]].remove(key.as_slice())?;
                    }
                    Write::AddCounter { table, key, delta } => {
                        let tree = &trees[slot[table.index()]];
                        let current = match tree.get(key.as_slice())? {
                            Some(bytes) => decode_counter(*table, key, &bytes)
                                .map_err(ConflictableTransactionError::Abort)?,
                            None => 0,
                        };
                        let next = current.saturating_add(*delta).to_be_bytes();
                        tree.insert(key.as_slice(), &next[..])?;
                    }
                }
            }
            Ok(())
        });
        match result {
            Ok(()) => Ok(()),
            Err(TransactionError::Abort(error)) => Err(error),
            Err(TransactionError::Storage(error)) => Err(storage(error)),
        }
    }
}
