//! A memory backend whose commits fail while told to (as a full disk, or a failed sync, would).

use std::sync::atomic::{AtomicU8, Ordering};

use keylife::Error;
use keylife::store::{Backend, Entries, MemoryBackend, Table, Write};

const WORKS: u8 = 0;
const REFUSES: u8 = 1;
const NOT_DURABLE: u8 = 2;

/// A [`MemoryBackend`] whose commits fail while [`Failing::fail`] or
/// [`Failing::fail_after_applying`] is on.
#[derive(Default)]
pub struct Failing {
    inner: MemoryBackend,
    mode: AtomicU8,
}

impl Failing {
    /// Commits are refused with a storage error, nothing applied (`true`), or succeed again
    /// (`false`).
    pub fn fail(&self, on: bool) {
        self.mode
            .store(if on { REFUSES } else { WORKS }, Ordering::SeqCst);
    }

    /// Commits are applied, then answered `not-durable` (a sync that failed).
    pub fn fail_after_applying(&self) {
        self.mode.store(NOT_DURABLE, Ordering::SeqCst);
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
        match self.mode.load(Ordering::SeqCst) {
            REFUSES => Err(Error::Storage {
                detail: "no space left".to_owned(),
            }),
            NOT_DURABLE => {
                self.inner.commit(batch)?;
                Err(Error::NotDurable {
                    detail: "injected sync failure".to_owned(),
                })
            }
            _ => self.inner.commit(batch),
        }
    }
}
