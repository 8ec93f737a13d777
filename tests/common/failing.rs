//! A memory backend whose commits fail while told to (as a full disk would).

use std::sync::atomic::{AtomicBool, Ordering};

use keylife::Error;
use keylife::store::{Backend, Entries, MemoryBackend, Table, Write};

/// A [`MemoryBackend`] whose commits fail with a storage error while [`Failing::fail`] is on.
#[derive(Default)]
pub struct Failing {
    inner: MemoryBackend,
    failing: AtomicBool,
}

impl Failing {
    /// Commits fail from now on (`true`) or succeed again (`false`).
    pub fn fail(&self, on: bool) {
        self.failing.store(on, Ordering::SeqCst);
    }
}

impl Backend for Failing {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.inner.get(table, key)
    }

    fn scan(
        &self,
        table: Table,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, Error> {
        self.inner.scan(table, start, end, limit)
    }

    fn commit(&self, batch: &[Write]) -> Result<(), Error> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(Error::Storage {
                detail: "no space left".to_owned(),
            });
        }
        self.inner.commit(batch)
    }
}
