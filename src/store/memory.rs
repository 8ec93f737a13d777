//! The in-memory backend.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};

use super::backend::{Backend, Entries, Table, Write, decode_counter};
use crate::core::Error;

type Tables = [BTreeMap<Vec<u8>, Vec<u8>>; Table::ALL.len()];

/// A backend that keeps every table in memory, behind one lock. Commits are atomic; nothing
/// survives the process. Share it (in an `Arc`) between successive `Kms` instances to test
/// closing and reopening.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    tables: Mutex<Tables>,
}

impl MemoryBackend {
    /// An empty store.
    #[must_use]
    pub fn new() -> MemoryBackend {
        MemoryBackend::default()
    }

    fn lock(&self) -> MutexGuard<'_, Tables> {
        // A panic while holding the lock cannot leave a half-applied batch (a batch is worked
        // out on an overlay first), so the data behind a poisoned lock is consistent.
        self.tables
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `f` on the raw stored value at `key`, bypassing every check: for tests that damage
    /// stored bytes. Returns false if there is no such entry.
    pub fn danger_edit_raw(&self, table: Table, key: &[u8], f: impl FnOnce(&mut Vec<u8>)) -> bool {
        let mut tables = self.lock();
        match tables[table.index()].get_mut(key) {
            Some(value) => {
                f(value);
                true
            }
            None => false,
        }
    }
}

impl Backend for MemoryBackend {
    fn engine(&self) -> &'static str {
        "memory"
    }

    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.lock()[table.index()].get(key).cloned())
    }

    fn scan(
        &self,
        table: Table,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, Error> {
        if end.is_some_and(|end| end < start) {
            // An empty range; `BTreeMap::range` would panic on it.
            return Ok(Vec::new());
        }
        let tables = self.lock();
        let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(tables[table.index()]
            .range::<[u8], _>((Bound::Included(start), upper))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn commit(&self, batch: &[Write]) -> Result<(), Error> {
        let mut tables = self.lock();
        // Work out the batch's effect on an overlay first: if any write fails, nothing is
        // applied.
        let mut overlay: BTreeMap<(Table, Vec<u8>), Option<Vec<u8>>> = BTreeMap::new();
        for write in batch {
            match write {
                Write::Put { table, key, value } => {
                    overlay.insert((*table, key.clone()), Some(value.clone()));
                }
                Write::Delete { table, key } => {
                    overlay.insert((*table, key.clone()), None);
                }
                Write::AddCounter { table, key, delta } => {
                    let slot = (*table, key.clone());
                    let current = match overlay.get(&slot) {
                        Some(value) => value.clone(),
                        None => tables[table.index()].get(key).cloned(),
                    };
                    let current = match current {
                        Some(bytes) => decode_counter(*table, key, &bytes)?,
                        None => 0,
                    };
                    let next = current.saturating_add(*delta).to_be_bytes().to_vec();
                    overlay.insert(slot, Some(next));
                }
            }
        }
        for ((table, key), value) in overlay {
            match value {
                Some(value) => tables[table.index()].insert(key, value),
                None => tables[table.index()].remove(&key),
            };
        }
        Ok(())
    }
}
