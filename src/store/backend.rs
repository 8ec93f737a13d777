//! The storage trait: a few tables of ordered byte keys, read one at a time or by range, and
//! changed only by atomic, durable batches.

use crate::core::Error;

/// The tables of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Key id (16 bytes) → encoded key record.
    Keys,
    /// Key id (16 bytes) + version (4 bytes, big-endian) → sealed material.
    Materials,
    /// Key name (UTF-8) → key id.
    Names,
    /// Due time (12 bytes, ordered) + key id → nothing: the due-time index.
    Due,
    /// Key id + version → encryptions reserved under that version (u64, big-endian).
    Usage,
    /// Store-wide values: format version, root-key check value, counters.
    Meta,
    /// Key id + zone → delivery state of that zone's replica (at the origin).
    Replicas,
    /// Key id + zone → nothing: the replica has not confirmed the key's latest revision (at
    /// the origin). Written with every change of a replicated key, in the same batch.
    Outbox,
    /// Key id → the revision of its final deletion: the key was replicated and is gone; late
    /// updates must not bring it back.
    Gone,
}

impl Table {
    /// Every table, in a fixed order.
    pub const ALL: [Table; 9] = [
        Table::Keys,
        Table::Materials,
        Table::Names,
        Table::Due,
        Table::Usage,
        Table::Meta,
        Table::Replicas,
        Table::Outbox,
        Table::Gone,
    ];

    /// The table's name in a backend (sled tree name).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Table::Keys => "keys",
            Table::Materials => "materials",
            Table::Names => "names",
            Table::Due => "due",
            Table::Usage => "usage",
            Table::Meta => "meta",
            Table::Replicas => "replicas",
            Table::Outbox => "outbox",
            Table::Gone => "gone",
        }
    }

    /// The table's position in [`Table::ALL`].
    #[must_use]
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// Entries read by [`Backend::scan`]: (key, value) pairs in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Entries read by [`Backend::scan_each`]: each value, or why it cannot be trusted.
pub type CheckedEntries = Vec<(Vec<u8>, Result<Vec<u8>, Error>)>;

/// One change of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Sets `key` to `value`.
    Put {
        /// The table.
        table: Table,
        /// The entry's key.
        key: Vec<u8>,
        /// The new value.
        value: Vec<u8>,
    },
    /// Removes `key` (nothing happens if it is absent).
    Delete {
        /// The table.
        table: Table,
        /// The entry's key.
        key: Vec<u8>,
    },
    /// Adds `delta` to the signed 64-bit big-endian counter at `key` (absent counts as 0),
    /// reading and writing inside the batch's transaction so that concurrent batches never
    /// lose an update.
    AddCounter {
        /// The table.
        table: Table,
        /// The counter's key.
        key: Vec<u8>,
        /// What to add.
        delta: i64,
    },
}

/// A storage backend. keylife ships two: [`crate::store::SledBackend`] (the default, on
/// disk) and [`crate::store::MemoryBackend`] (for tests and ephemeral use). One conformance
/// suite runs on both.
pub trait Backend: Send + Sync {
    /// The value at `key`, if any.
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, Error>;

    /// Entries with `start <= key < end` (no upper bound when `end` is `None`), in key order,
    /// at most `limit` of them.
    fn scan(
        &self,
        table: Table,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, Error>;

    /// As [`Backend::scan`], but an entry whose value fails a check of the backend's (its tag,
    /// in an [`AuthenticatedBackend`](super::AuthenticatedBackend)) is returned with its
    /// error instead of failing the whole scan: for indexes whose entries are worked through
    /// one at a time, where one damaged entry must not stop the others.
    fn scan_each(
        &self,
        table: Table,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<CheckedEntries, Error> {
        Ok(self
            .scan(table, start, end, limit)?
            .into_iter()
            .map(|(key, value)| (key, Ok(value)))
            .collect())
    }

    /// Applies every write of `batch`, in order, as one atomic change, and makes it durable
    /// before returning `Ok`: after `Ok` a crash of the process loses none of it. After
    /// [`Error::NotDurable`] the batch was applied but may not survive a crash (the caller must
    /// stop using the store until it is reopened); after any other error none of it happened.
    fn commit(&self, batch: &[Write]) -> Result<(), Error>;

    /// The directory that holds the engine's files, where keylife keeps the store's witness
    /// file (see [`AuthenticatedBackend`](super::AuthenticatedBackend)); `None` for a backend
    /// without files of its own (in memory, or an engine handed over by the caller).
    fn directory(&self) -> Option<&std::path::Path> {
        None
    }

    /// The engine's name, recorded in the store when it is created: `sled`, `redb`,
    /// `memory`, or another name for a backend of the caller's.
    fn engine(&self) -> &'static str {
        "custom"
    }
}

/// Reads a counter value written by [`Write::AddCounter`].
pub(crate) fn decode_counter(table: Table, key: &[u8], bytes: &[u8]) -> Result<i64, Error> {
    let array: [u8; 8] = bytes.try_into().map_err(|_| Error::Corrupt {
        record: format!("counter {}/{}", table.name(), String::from_utf8_lossy(key)),
        detail: format!("expected 8 bytes, found {}", bytes.len()),
    })?;
    Ok(i64::from_be_bytes(array))
}
