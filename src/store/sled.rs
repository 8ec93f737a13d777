//! The sled backend: the default, on disk.

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional as _};

use super::backend::{Backend, Entries, Table, Write, decode_counter};
use crate::core::Error;

/// A backend on a sled 0.34 database: one tree per [`Table`]; every commit is one sled
/// transaction over the trees it touches, followed by a flush of the database.
///
/// sled applies a transaction in memory before the flush makes it durable, and cannot take it
/// back: when the flush fails, the commit answers [`Error::NotDurable`] (not
/// [`Error::Storage`], which means nothing was applied).
#[derive(Debug)]
pub struct SledBackend {
    db: sled::Db,
    trees: Vec<sled::Tree>,
}

impl SledBackend {
    /// Opens (or creates) the database in the directory `path`.
    ///
    /// sled locks the directory for one `Db` at a time and releases the lock only when its
    /// background threads let go of the last handle, a moment after the previous `Db` was
    /// dropped. So a lock held by someone else is waited for up to [`LOCK_WAIT`] before the
    /// store is reported in use.
    pub fn open(path: impl AsRef<Path>) -> Result<SledBackend, Error> {
        let path = path.as_ref();
        // Every commit flushes, so sled's periodic flusher thread has nothing to do.
        let config = sled::Config::new().path(path).flush_every_ms(None);
        let started = Instant::now();
        let mut pause = Duration::from_millis(5);
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(sled::Error::Io(error)) if is_lock_conflict(&error) => {
                    if started.elapsed() >= LOCK_WAIT {
                        return Err(Error::Storage {
                            detail: format!(
                                "the store at {} is in use (another process or Kms holds \
                                 its lock): {error}",
                                path.display()
                            ),
                        });
                    }
                    thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                Err(error) => return Err(storage(error)),
            }
        };
        SledBackend::from_db(db)
    }

    /// Uses an open sled database.
    pub fn from_db(db: sled::Db) -> Result<SledBackend, Error> {
        let trees = Table::ALL
            .iter()
            .map(|table| db.open_tree(table.name()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(storage)?;
        Ok(SledBackend { db, trees })
    }

    fn tree(&self, table: Table) -> &sled::Tree {
        &self.trees[table.index()]
    }
}

/// How long [`SledBackend::open`] waits for a store's lock to be released.
pub const LOCK_WAIT: Duration = Duration::from_secs(3);

/// Whether sled failed to open because another `Db` holds the directory's lock. sled reports
/// it only as an I/O error of kind `Other` with this message (sled 0.34, `Config::try_lock`).
fn is_lock_conflict(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::Other
        && error.to_string().contains("could not acquire lock")
}

fn storage(error: sled::Error) -> Error {
    Error::Storage {
        detail: error.to_string(),
    }
}

impl Backend for SledBackend {
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
        let result = self.trees.as_slice().transaction(|trees| {
            for write in batch {
                match write {
                    Write::Put { table, key, value } => {
                        trees[table.index()].insert(key.as_slice(), value.as_slice())?;
                    }
                    Write::Delete { table, key } => {
                        trees[table.index()].remove(key.as_slice())?;
                    }
                    Write::AddCounter { table, key, delta } => {
                        let tree = &trees[table.index()];
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
            Ok(()) => {}
            Err(TransactionError::Abort(error)) => return Err(error),
            Err(TransactionError::Storage(error)) => return Err(storage(error)),
        }
        self.db.flush().map_err(|error| Error::NotDurable {
            detail: format!("sled could not flush: {error}"),
        })?;
        Ok(())
    }
}
