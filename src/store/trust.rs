//! The authenticated store: a [`Backend`] over an engine that authenticates every stored byte,
//! the store's state as a whole, and its commit sequence.
//!
//! - **Each value** is stored as `value ‖ tag`, the tag an HMAC-SHA256 (under a key derived from
//!   the root key) of store id ‖ table ‖ entry key ‖ value. A read whose tag does not verify is
//!   [`Error::Corrupt`] naming the entry; nothing above this layer sees an unchecked byte.
//! - **The state as a whole**: the digest is the sum, modulo 2^256, of a keyed pseudo-random
//!   function of (table, entry key, tag) over every entry. Each commit updates it with the
//!   entries it changes and writes, in the same engine commit, the state record: the commit
//!   sequence and a MAC of (store id, sequence, digest). The digest itself is never stored. At
//!   open the digest is recomputed from every entry and checked against the state record: an
//!   entry rolled back to an older authentic value, removed or added does not add up.
//! - **The sequence** is also written to a witness file beside the engine's files, synced after
//!   each commit group. At open the store's sequence must be at least the witness's: a store
//!   that lost a tail of commits (an engine whose recovery dropped them) is refused.
//!
//! Commits are grouped ([`CommitGroup`]): the leader works out every queued batch against the
//! current values, then makes one engine commit and one witness sync for the group.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::STORE_FORMAT_V2;
use super::backend::{Backend, CheckedEntries, Entries, Table, Write, decode_counter};
use super::group::{CommitGroup, Outcomes, Queued};
use super::sync::{Syncs, sync_dir};
use crate::core::{Error, KeyId};
use crate::crypto::derive::TAG_LEN;
use crate::crypto::{MacKey, Purpose, RootKey, RootSealer, fill_from_os};

/// The store id's entry in [`Table::Meta`]: 16 random bytes fixed when the store is created.
pub const META_STORE_ID: &[u8] = b"store-id";
/// The state record's entry in [`Table::Meta`]: format, commit sequence, MAC of the digest.
/// It carries its own MAC and is not part of the digest.
pub const META_STATE: &[u8] = b"state";
/// The root key's check value in [`Table::Meta`] (written by [`Store`](super::Store)).
const META_ROOT_CHECK: &[u8] = b"root-check";
/// The store's format in [`Table::Meta`] (written by [`Store`](super::Store)).
const META_FORMAT: &[u8] = b"format";
/// The witness file in a store's directory.
pub const WITNESS_FILE: &str = "keylife-witness";

const STATE_FORMAT_V1: u8 = 1;
const STATE_LEN: usize = 1 + 8 + TAG_LEN;
const WITNESS_MAGIC: &[u8; 4] = b"KLW1";
/// One slot of the witness file: magic, store id, sequence, tag. Two slots, written in turn,
/// so that a torn write leaves the other intact.
const WITNESS_SLOT: usize = 4 + 16 + 8 + TAG_LEN;

/// The keys of the authenticated store, derived from the root key.
#[derive(Debug, Clone)]
struct Keys {
    record: MacKey,
    digest: MacKey,
    state: MacKey,
    witness: MacKey,
}

impl Keys {
    fn derive(root: &RootKey) -> Keys {
        Keys {
            record: MacKey::derive(root, Purpose::RecordMac),
            digest: MacKey::derive(root, Purpose::StateDigest),
            state: MacKey::derive(root, Purpose::StateMac),
            witness: MacKey::derive(root, Purpose::Witness),
        }
    }
}

/// A sum modulo 2^256 of 32-byte values (four little-endian 64-bit limbs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Digest([u64; 4]);

impl Digest {
    fn limbs(bytes: &[u8; TAG_LEN]) -> [u64; 4] {
        let mut limbs = [0; 4];
        for (limb, chunk) in limbs.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            *limb = u64::from_le_bytes(word);
        }
        limbs
    }

    fn add(&mut self, bytes: &[u8; TAG_LEN]) {
        let mut carry = false;
        for (limb, other) in self.0.iter_mut().zip(Digest::limbs(bytes)) {
            let (sum, c1) = limb.overflowing_add(other);
            let (sum, c2) = sum.overflowing_add(u64::from(carry));
            *limb = sum;
            carry = c1 || c2;
        }
    }

    fn sub(&mut self, bytes: &[u8; TAG_LEN]) {
        let mut borrow = false;
        for (limb, other) in self.0.iter_mut().zip(Digest::limbs(bytes)) {
            let (diff, b1) = limb.overflowing_sub(other);
            let (diff, b2) = diff.overflowing_sub(u64::from(borrow));
            *limb = diff;
            borrow = b1 || b2;
        }
    }

    fn to_bytes(self) -> [u8; 32] {
        let mut bytes = [0; 32];
        for (chunk, limb) in bytes.chunks_exact_mut(8).zip(self.0) {
            chunk.copy_from_slice(&limb.to_le_bytes());
        }
        bytes
    }
}

/// Where the store's commits stand: the last commit's sequence and the digest of the entries.
#[derive(Debug, Clone, Copy, Default)]
struct State {
    seq: u64,
    digest: Digest,
}

/// A store authenticated under keys derived from its root key (see the module's doc).
pub struct AuthenticatedBackend {
    engine: Arc<dyn Backend>,
    keys: Keys,
    store_id: [u8; 16],
    state: Mutex<State>,
    group: CommitGroup,
    witness: Option<Witness>,
}

impl std::fmt::Debug for AuthenticatedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthenticatedBackend")
            .field("engine", &self.engine.engine())
            .field("seq", &self.lock_state().seq)
            .finish_non_exhaustive()
    }
}

/// What [`AuthenticatedBackend::open`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opened {
    /// An empty engine: a new store.
    New,
    /// An authenticated store, checked as a whole.
    Checked,
    /// A store of format 1 (values without tags), now authenticated in one commit.
    Migrated,
}

impl AuthenticatedBackend {
    /// Opens the store in `engine` under `root`: checks the root key's check value
    /// ([`Error::WrongRootKey`]), every entry's tag, the state digest, and the sequence against
    /// the witness file in the engine's [`directory`](Backend::directory) (if it has one), and
    /// refuses a store that fails any of them with [`Error::Corrupt`] saying what. A store of
    /// format 1 (before values were authenticated) is authenticated in one durable commit.
    pub fn open(
        engine: Arc<dyn Backend>,
        root: &RootKey,
    ) -> Result<(AuthenticatedBackend, Opened), Error> {
        let keys = Keys::derive(root);
        let sealer = RootSealer::new(root);
        let witness = match engine.directory() {
            Some(dir) => Some(Witness::open(dir, keys.witness.clone())?),
            None => None,
        };
        let raw_id = engine.get(Table::Meta, META_STORE_ID)?;
        let raw_check = engine.get(Table::Meta, META_ROOT_CHECK)?;
        let mut backend = AuthenticatedBackend {
            engine,
            keys,
            store_id: [0; 16],
            state: Mutex::new(State::default()),
            group: CommitGroup::default(),
            witness,
        };
        let opened = match (raw_id, raw_check) {
            (None, None) => {
                backend.open_new(backend.read_witness()?)?;
                Opened::New
            }
            (None, Some(_)) if !backend.is_format_1()? => {
                return Err(corrupt_store("its store id is missing"));
            }
            (None, Some(check)) => {
                if !sealer.verify_check_value(&check) {
                    return Err(Error::WrongRootKey);
                }
                backend.migrate(backend.read_witness()?)?;
                Opened::Migrated
            }
            (Some(raw_id), check) => {
                backend.store_id = raw_id
                    .get(..16)
                    .and_then(|id| id.try_into().ok())
                    .unwrap_or_default();
                let check = check.as_deref().and_then(split_tag).map(|(value, _)| value);
                if !check.is_some_and(|check| sealer.verify_check_value(check)) {
                    // Under this root key the store id authenticates: the key is right and
                    // the check value was changed.
                    return Err(match backend.verify(Table::Meta, META_STORE_ID, &raw_id) {
                        Ok(_) => corrupt_store("its root-key check value was changed"),
                        Err(_) => Error::WrongRootKey,
                    });
                }
                backend.check(backend.read_witness()?)?;
                Opened::Checked
            }
        };
        Ok((backend, opened))
    }

    /// The syncs of the witness file since open (none without a witness).
    #[must_use]
    pub fn witness_syncs(&self) -> Syncs {
        self.witness
            .as_ref()
            .map(|w| Syncs {
                data: w.syncs.load(Ordering::Relaxed),
                dir: 0,
            })
            .unwrap_or_default()
    }

    /// The sequence of the last commit.
    #[must_use]
    pub fn commit_seq(&self) -> u64 {
        self.lock_state().seq
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        // Updated in one assignment: never half-written.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new store: nothing in the engine. Its id is the witness's if an earlier open left one
    /// (and no commit followed), else fresh; a witness that saw commits means the engine lost
    /// them all.
    fn open_new(&mut self, found: Option<WitnessSlot>) -> Result<(), Error> {
        if let Some(table) = self.first_nonempty_table()? {
            return Err(corrupt_store(&format!(
                "the {} table holds entries, but the store has no id: it was not written by \
                 keylife",
                table.name()
            )));
        }
        match found {
            Some(slot) if slot.seq > 0 => {
                return Err(corrupt_store(&format!(
                    "its witness saw commit {}, but the store holds nothing: every commit was \
                     lost; restore it from a backup",
                    slot.seq
                )));
            }
            Some(slot) => self.store_id = slot.store_id,
            None => {
                fill_from_os(&mut self.store_id)?;
                self.write_witness(0)
                    .map_err(|detail| Error::Storage { detail })?;
            }
        }
        Ok(())
    }

    /// Authenticates a store of format 1 (values without tags) in one durable commit: every
    /// entry is written again with its tag, with the store id and the state record.
    fn migrate(&mut self, found: Option<WitnessSlot>) -> Result<(), Error> {
        fill_from_os(&mut self.store_id)?;
        let mut writes = Vec::new();
        let mut state = State::default();
        for table in Table::ALL {
            for (key, value) in self.engine.scan(table, &[], None, usize::MAX)? {
                // The store's format moves to 2 in the same commit.
                let value = if table == Table::Meta && key == META_FORMAT {
                    vec![STORE_FORMAT_V2]
                } else {
                    value
                };
                writes.push(self.sealed_put(table, key, &value, &mut state.digest));
            }
        }
        if let Some(slot) = found {
            state.seq = slot.seq;
        }
        writes.push(self.sealed_put(
            Table::Meta,
            META_STORE_ID.to_vec(),
            &self.store_id.clone(),
            &mut state.digest,
        ));
        state.seq += 1;
        writes.push(self.state_write(state));
        self.engine.commit(&writes)?;
        self.write_witness(state.seq)
            .map_err(|detail| Error::NotDurable { detail })?;
        *self.lock_state() = state;
        Ok(())
    }

    /// Checks every entry's tag and the digest against the state record, and the sequence
    /// against the witness.
    fn check(&mut self, found: Option<WitnessSlot>) -> Result<(), Error> {
        let mut digest = Digest::default();
        let mut damaged = Vec::new();
        let mut count = 0usize;
        for table in Table::ALL {
            let mut start = Vec::new();
            loop {
                let page = self.engine.scan(table, &start, None, 4096)?;
                let Some((last, _)) = page.last() else { break };
                start.clone_from(last);
                start.push(0);
                for (key, raw) in &page {
                    if table == Table::Meta && key == META_STATE {
                        continue;
                    }
                    count += 1;
                    match self.verify(table, key, raw) {
                        Ok(_) => digest.add(&self.element(table, key, raw)),
                        Err(error) => damaged.push(error),
                    }
                }
            }
        }
        if let Some(first) = damaged.first() {
            return Err(corrupt_store(&format!(
                "{} of its {count} entries do not authenticate (changed outside keylife), the \
                 first: {first}; restore it from a backup",
                damaged.len()
            )));
        }
        let raw = self
            .engine
            .get(Table::Meta, META_STATE)?
            .ok_or_else(|| corrupt_store("its state record is missing"))?;
        let seq = match raw.as_slice() {
            [STATE_FORMAT_V1, rest @ ..] if raw.len() == STATE_LEN => {
                let mut seq = [0; 8];
                seq.copy_from_slice(&rest[..8]);
                u64::from_be_bytes(seq)
            }
            _ => return Err(corrupt_store("its state record is malformed")),
        };
        let state = State { seq, digest };
        if !self
            .keys
            .state
            .verify(&self.state_parts(state), &raw[1 + 8..])
        {
            return Err(corrupt_store(&format!(
                "its {count} entries do not add up to its authenticated state (commit {seq}): \
                 an entry was rolled back to an older value, removed or added, or the state \
                 record was; restore it from a backup"
            )));
        }
        if let Some(slot) = found {
            if slot.store_id != self.store_id {
                return Err(corrupt_store("its witness file belongs to another store"));
            }
            if slot.seq > seq {
                return Err(corrupt_store(&format!(
                    "it is at commit {seq} but its witness saw commit {}: {} acknowledged \
                     commit(s) were lost (the engine's recovery dropped them); restore it from \
                     a backup",
                    slot.seq,
                    slot.seq - seq
                )));
            }
        } else if self.witness.is_some() {
            return Err(corrupt_store(&format!(
                "its witness file {WITNESS_FILE} is missing: whether commits were lost cannot \
                 be told; restore it from a backup"
            )));
        }
        if found.is_some_and(|slot| slot.seq < seq) {
            self.write_witness(seq)
                .map_err(|detail| Error::Storage { detail })?;
        }
        *self.lock_state() = state;
        Ok(())
    }

    /// Whether the engine holds a store of format 1: its format entry is the one byte 1, with
    /// no tag.
    fn is_format_1(&self) -> Result<bool, Error> {
        Ok(self.engine.get(Table::Meta, META_FORMAT)?.as_deref() == Some(&[1u8][..]))
    }

    fn first_nonempty_table(&self) -> Result<Option<Table>, Error> {
        for table in Table::ALL {
            if !self.engine.scan(table, &[], None, 1)?.is_empty() {
                return Ok(Some(table));
            }
        }
        Ok(None)
    }

    /// The tag of `value` stored at `key` in `table`.
    fn tag(&self, table: Table, key: &[u8], value: &[u8]) -> [u8; TAG_LEN] {
        let table_byte = [table as u8];
        self.keys
            .record
            .tag(&[&self.store_id[..], &table_byte, key, value])
    }

    /// The value of a stored entry after its tag verified, or `Corrupt` naming the entry.
    fn verify<'a>(&self, table: Table, key: &[u8], raw: &'a [u8]) -> Result<&'a [u8], Error> {
        let table_byte = [table as u8];
        match split_tag(raw) {
            Some((value, tag))
                if self
                    .keys
                    .record
                    .verify(&[&self.store_id[..], &table_byte, key, value], tag) =>
            {
                Ok(value)
            }
            _ => Err(Error::Corrupt {
                record: describe(table, key),
                detail: "does not authenticate under the root key (changed outside keylife)"
                    .to_owned(),
            }),
        }
    }

    /// The digest's element of a stored entry (its raw bytes, tag included).
    fn element(&self, table: Table, key: &[u8], raw: &[u8]) -> [u8; TAG_LEN] {
        let table_byte = [table as u8];
        self.keys.digest.tag(&[&table_byte, key, raw])
    }

    /// `value` with its tag, as a write; its element is added to `digest`.
    fn sealed_put(&self, table: Table, key: Vec<u8>, value: &[u8], digest: &mut Digest) -> Write {
        let raw = self.seal(table, &key, value);
        digest.add(&self.element(table, &key, &raw));
        Write::Put {
            table,
            key,
            value: raw,
        }
    }

    fn seal(&self, table: Table, key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut raw = Vec::with_capacity(value.len() + TAG_LEN);
        raw.extend_from_slice(value);
        raw.extend_from_slice(&self.tag(table, key, value));
        raw
    }

    /// What the state record's tag covers: store id, sequence, digest.
    fn state_parts(&self, state: State) -> [Vec<u8>; 3] {
        [
            self.store_id.to_vec(),
            state.seq.to_be_bytes().to_vec(),
            state.digest.to_bytes().to_vec(),
        ]
    }

    /// The state record of `state`.
    fn state_write(&self, state: State) -> Write {
        let tag = self.keys.state.tag(&self.state_parts(state));
        let mut value = Vec::with_capacity(STATE_LEN);
        value.push(STATE_FORMAT_V1);
        value.extend_from_slice(&state.seq.to_be_bytes());
        value.extend_from_slice(&tag);
        Write::Put {
            table: Table::Meta,
            key: META_STATE.to_vec(),
            value,
        }
    }

    /// The witness's slot, if the store has a witness and it holds one. Read only after the
    /// root key was checked: under another root key no slot verifies.
    fn read_witness(&self) -> Result<Option<WitnessSlot>, Error> {
        Ok(self
            .witness
            .as_ref()
            .map(Witness::read)
            .transpose()?
            .flatten())
    }

    fn write_witness(&self, seq: u64) -> Result<(), String> {
        match &self.witness {
            Some(witness) => witness.write(&self.store_id, seq),
            None => Ok(()),
        }
    }

    /// The leader's work: each batch worked out against the current values (a batch that
    /// fails applies nothing), then one engine commit of every change with the new state
    /// record, then the witness.
    fn commit_group(&self, group: Vec<Queued>) -> Outcomes {
        let mut state = self.lock_state();
        let mut changes = Changes::default();
        let mut outcomes = Vec::with_capacity(group.len());
        let mut applied = Vec::new();
        for (ticket, batch) in group {
            match self.work_out(&batch, &mut changes) {
                Ok(()) => applied.push(ticket),
                Err(error) => outcomes.push((ticket, Err(error))),
            }
        }
        if applied.is_empty() {
            return outcomes;
        }
        let mut next = *state;
        if next.seq == 0 {
            // The store's first commit: its id goes with it.
            let id = self.store_id;
            if let Err(error) = changes.put(self, Table::Meta, META_STORE_ID, &id) {
                outcomes.extend(applied.into_iter().map(|t| (t, Err(error.clone()))));
                return outcomes;
            }
        }
        let mut writes = Vec::with_capacity(changes.finals.len() + 1);
        for ((table, key), (original, fin)) in changes.finals {
            if let Some(raw) = &original {
                next.digest.sub(&self.element(table, &key, raw));
            }
            writes.push(match fin {
                Some(raw) => {
                    next.digest.add(&self.element(table, &key, &raw));
                    Write::Put {
                        table,
                        key,
                        value: raw,
                    }
                }
                None => Write::Delete { table, key },
            });
        }
        next.seq += 1;
        writes.push(self.state_write(next));
        let outcome = match self.engine.commit(&writes) {
            Ok(()) => {
                *state = next;
                self.write_witness(next.seq)
                    .map_err(|detail| Error::NotDurable {
                        detail: format!("the witness could not be written: {detail}"),
                    })
            }
            Err(error @ Error::NotDurable { .. }) => {
                *state = next;
                Err(error)
            }
            Err(error) => Err(error),
        };
        outcomes.extend(applied.into_iter().map(|t| (t, outcome.clone())));
        outcomes
    }

    /// Works `batch` out into `changes`, or leaves `changes` as it was and says why not.
    fn work_out(&self, batch: &[Write], changes: &mut Changes) -> Result<(), Error> {
        let mut mine = changes.clone();
        for write in batch {
            match write {
                Write::Put { table, key, value } => mine.put(self, *table, key, value)?,
                Write::Delete { table, key } => mine.delete(self, *table, key)?,
                Write::AddCounter { table, key, delta } => {
                    let current = match mine.current(self, *table, key)? {
                        Some(raw) => {
                            let value = self.verify(*table, key, &raw)?;
                            decode_counter(*table, key, value)?
                        }
                        None => 0,
                    };
                    let next = current.saturating_add(*delta).to_be_bytes();
                    mine.put(self, *table, key, &next)?;
                }
            }
        }
        *changes = mine;
        Ok(())
    }
}

/// What [`AuthenticatedBackend::rekey`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rekeyed {
    /// The entries written again under the new keys (the state record aside).
    pub(crate) entries: usize,
    /// The sequence of the commit that did it.
    pub(crate) seq: u64,
}

impl AuthenticatedBackend {
    /// Moves the whole store to the root key `new`, in one engine commit: every entry is read
    /// (its tag verified under the current keys), given its new value by `value_of` (`None`:
    /// unchanged; the root-key check value is this layer's and replaced here), tagged under the
    /// keys derived from `new` with the same store id, and written with the state record of
    /// the next sequence under `new`.
    ///
    /// Crash safety: before that commit, the witness slot of the next sequence is written
    /// under `new`'s witness key and synced, into the slot the current sequence is not in. A
    /// crash before the commit leaves the store as it was (its own slot still verifies under
    /// the old key; the new slot does not and is ignored), and `new` is refused by the
    /// root-key check; after it, `new` opens the store at the next sequence, its slot there,
    /// and the old key is refused. After an error other than [`Error::NotDurable`] nothing was
    /// committed. The backend is consumed: its keys are the old ones.
    pub(crate) fn rekey(
        self,
        new: &RootKey,
        mut value_of: impl FnMut(Table, &[u8], &[u8]) -> Result<Option<Vec<u8>>, Error>,
    ) -> Result<Rekeyed, Error> {
        let state = *self.lock_state();
        // A view of this store under the new keys: the same id and engine, no witness of its
        // own (its slot is written below, through a handle with the new witness key).
        let next = AuthenticatedBackend {
            engine: Arc::clone(&self.engine),
            keys: Keys::derive(new),
            store_id: self.store_id,
            state: Mutex::new(State::default()),
            group: CommitGroup::default(),
            witness: None,
        };
        let check = RootSealer::new(new).check_value()?;
        let mut found_check = false;
        let mut digest = Digest::default();
        let mut writes = Vec::new();
        for table in Table::ALL {
            let mut start = Vec::new();
            loop {
                let page = self.engine.scan(table, &start, None, 4096)?;
                let Some((last, _)) = page.last() else { break };
                start.clone_from(last);
                start.push(0);
                for (key, raw) in page {
                    if table == Table::Meta && key == META_STATE {
                        continue;
                    }
                    let value = self.verify(table, &key, &raw)?;
                    let value = if table == Table::Meta && key == META_ROOT_CHECK {
                        found_check = true;
                        check.clone()
                    } else {
                        value_of(table, &key, value)?.unwrap_or_else(|| value.to_vec())
                    };
                    writes.push(next.sealed_put(table, key, &value, &mut digest));
                }
            }
        }
        if !found_check {
            return Err(corrupt_store("its root-key check value is missing"));
        }
        let entries = writes.len();
        let rotated = State {
            seq: state.seq + 1,
            digest,
        };
        writes.push(next.state_write(rotated));
        if let Some(dir) = self.engine.directory() {
            let witness = Witness::open(dir, next.keys.witness.clone())?;
            witness
                .write(&self.store_id, rotated.seq)
                .map_err(|detail| Error::Storage {
                    detail: format!("the witness could not be written: {detail}"),
                })?;
        }
        self.engine.commit(&writes)?;
        Ok(Rekeyed {
            entries,
            seq: rotated.seq,
        })
    }
}

/// The changes of a group so far: for each entry touched, its raw value before the group and
/// its raw value now (`None`: absent).
#[derive(Default, Clone)]
struct Changes {
    finals: BTreeMap<(Table, Vec<u8>), Change>,
}

/// An entry's raw value before the group, and now (`None`: absent).
type Change = (Option<Vec<u8>>, Option<Vec<u8>>);

impl Changes {
    /// The raw value of an entry now (this group's changes, else the engine's).
    fn current(
        &mut self,
        backend: &AuthenticatedBackend,
        table: Table,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.slot(backend, table, key)?.1.clone())
    }

    fn slot(
        &mut self,
        backend: &AuthenticatedBackend,
        table: Table,
        key: &[u8],
    ) -> Result<&mut Change, Error> {
        let entry = (table, key.to_vec());
        if !self.finals.contains_key(&entry) {
            let original = backend.engine.get(table, key)?;
            self.finals
                .insert(entry.clone(), (original.clone(), original));
        }
        Ok(self
            .finals
            .get_mut(&entry)
            .unwrap_or_else(|| unreachable!()))
    }

    fn put(
        &mut self,
        backend: &AuthenticatedBackend,
        table: Table,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), Error> {
        reserved(table, key)?;
        let raw = backend.seal(table, key, value);
        self.slot(backend, table, key)?.1 = Some(raw);
        Ok(())
    }

    fn delete(
        &mut self,
        backend: &AuthenticatedBackend,
        table: Table,
        key: &[u8],
    ) -> Result<(), Error> {
        reserved(table, key)?;
        self.slot(backend, table, key)?.1 = None;
        Ok(())
    }
}

/// Refuses a write of the state record (this layer's own).
fn reserved(table: Table, key: &[u8]) -> Result<(), Error> {
    if table == Table::Meta && key == META_STATE {
        return Err(Error::Storage {
            detail: "the meta entry \"state\" is reserved to the authenticated store".to_owned(),
        });
    }
    Ok(())
}

impl Backend for AuthenticatedBackend {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        if table == Table::Meta && key == META_STATE {
            return Ok(None);
        }
        match self.engine.get(table, key)? {
            None => Ok(None),
            Some(raw) => self.verify(table, key, &raw).map(|v| Some(v.to_vec())),
        }
    }

    fn scan(
        &self,
        table: Table,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, Error> {
        self.scan_each(table, start, end, limit)?
            .into_iter()
            .map(|(key, value)| Ok((key, value?)))
            .collect()
    }

    fn scan_each(
        &self,
        table: Table,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<CheckedEntries, Error> {
        // The state record is not an entry of the caller's: one more, then left out.
        let extra = usize::from(table == Table::Meta);
        let raw = self
            .engine
            .scan(table, start, end, limit.saturating_add(extra))?;
        Ok(raw
            .into_iter()
            .filter(|(key, _)| !(table == Table::Meta && key == META_STATE))
            .take(limit)
            .map(|(key, raw)| {
                let value = self.verify(table, &key, &raw).map(<[u8]>::to_vec);
                (key, value)
            })
            .collect())
    }

    fn commit(&self, batch: &[Write]) -> Result<(), Error> {
        self.group
            .commit(batch, &mut |group| self.commit_group(group))
    }

    fn directory(&self) -> Option<&Path> {
        self.engine.directory()
    }

    fn engine(&self) -> &'static str {
        self.engine.engine()
    }
}

/// A consistent image of an [`AuthenticatedBackend`]: every entry as of one commit, each value
/// checked against its tag (see [`AuthenticatedBackend::snapshot`]).
#[derive(Debug)]
pub struct Snapshot {
    /// The commit sequence the image is of.
    pub seq: u64,
    /// The store's id.
    pub store_id: [u8; 16],
    /// Every entry, table by table in [`Table::ALL`] order, in key order within a table: the
    /// values without their tags. The store id and the state record, this layer's own, are
    /// left out.
    pub entries: Vec<(Table, Vec<u8>, Vec<u8>)>,
    /// How long commits waited while the image was read.
    pub paused: std::time::Duration,
}

impl AuthenticatedBackend {
    /// A consistent image of the store as of its last commit. Commits wait while the raw
    /// entries are copied (reads never wait: they take no lock); the tags are checked after,
    /// and an entry that does not authenticate fails the whole image with
    /// [`Error::Corrupt`] naming it.
    pub fn snapshot(&self) -> Result<Snapshot, Error> {
        let started = std::time::Instant::now();
        let (seq, raw) = {
            // Every commit group holds this lock from its first read to its witness: while it
            // is held the engine is between two commits.
            let state = self.lock_state();
            let mut raw = Vec::with_capacity(Table::ALL.len());
            for table in Table::ALL {
                raw.push((table, self.engine.scan(table, &[], None, usize::MAX)?));
            }
            (state.seq, raw)
        };
        let paused = started.elapsed();
        let mut entries = Vec::with_capacity(raw.iter().map(|(_, e)| e.len()).sum());
        for (table, page) in raw {
            for (key, raw) in page {
                if table == Table::Meta && (key == META_STATE || key == META_STORE_ID) {
                    continue;
                }
                let value = self.verify(table, &key, &raw)?.to_vec();
                entries.push((table, key, value));
            }
        }
        Ok(Snapshot {
            seq,
            store_id: self.store_id,
            entries,
            paused,
        })
    }
}

/// `raw` split into value and tag.
fn split_tag(raw: &[u8]) -> Option<(&[u8], &[u8])> {
    raw.len().checked_sub(TAG_LEN).map(|at| raw.split_at(at))
}

/// The store refused as a whole: "stored state of the store is corrupt: ...".
fn corrupt_store(detail: &str) -> Error {
    Error::Corrupt {
        record: "state of the store".to_owned(),
        detail: detail.to_owned(),
    }
}

/// What an entry is, for an error: the key it belongs to where the entry key starts with one.
fn describe(table: Table, key: &[u8]) -> String {
    let id = key
        .get(..16)
        .and_then(|id| <[u8; 16]>::try_from(id).ok())
        .map(KeyId::from_bytes);
    let rest = key.get(16..).unwrap_or_default();
    let version = <[u8; 4]>::try_from(rest).map(u32::from_be_bytes);
    match (table, id, version) {
        (Table::Keys, Some(id), _) if rest.is_empty() => format!("key {id}"),
        (Table::Materials, Some(id), Ok(v)) => format!("material {id}/v{v}"),
        (Table::Usage, Some(id), Ok(v)) => format!("encryption count {id}/v{v}"),
        (Table::Gone, Some(id), _) if rest.is_empty() => format!("tombstone of key {id}"),
        (Table::Replicas | Table::Outbox, Some(id), _) => format!(
            "{} entry {id}/{}",
            table.name(),
            Error::quote(&String::from_utf8_lossy(rest))
        ),
        (Table::Names, _, _) => format!(
            "name index entry {}",
            Error::quote(&String::from_utf8_lossy(key))
        ),
        (Table::Meta, _, _) => format!(
            "store header entry {}",
            Error::quote(&String::from_utf8_lossy(key))
        ),
        (Table::Due, _, _) => match key.get(12..28).and_then(|id| <[u8; 16]>::try_from(id).ok()) {
            Some(id) => format!("due index entry of key {}", KeyId::from_bytes(id)),
            None => "due index entry".to_owned(),
        },
        _ => format!("{} entry of {} bytes", table.name(), key.len()),
    }
}

/// The witness file: the store's id and last commit sequence, tagged, in two slots.
struct Witness {
    path: PathBuf,
    file: Mutex<File>,
    /// `fdatasync` calls of the file. The directory is the engine's to sync: the witness is
    /// created (and its entry synced) once, and never renamed.
    syncs: AtomicU64,
    key: MacKey,
}

/// One valid slot of the witness file.
#[derive(Debug, Clone, Copy)]
struct WitnessSlot {
    store_id: [u8; 16],
    seq: u64,
}

impl Witness {
    /// Opens (or creates, mode 0600, with an `fsync` of the directory) the witness in `dir`.
    fn open(dir: &Path, key: MacKey) -> Result<Witness, Error> {
        let path = dir.join(WITNESS_FILE);
        let io = |error: std::io::Error| Error::Storage {
            detail: format!("cannot open the witness {}: {error}", path.display()),
        };
        let existed = path.exists();
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(&path).map_err(io)?;
        if !existed {
            file.sync_all().map_err(io)?;
            sync_dir(dir).map_err(io)?;
        }
        Ok(Witness {
            path,
            file: Mutex::new(file),
            syncs: AtomicU64::new(0),
            key,
        })
    }

    /// The slot with the highest sequence among those whose tag verifies; `None` for an empty
    /// file; `Corrupt` for a file with content but no valid slot.
    fn read(&self) -> Result<Option<WitnessSlot>, Error> {
        let mut bytes = Vec::new();
        let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.read_to_end(&mut bytes))
            .map_err(|error| Error::Storage {
                detail: format!("cannot read the witness {}: {error}", self.path.display()),
            })?;
        if bytes.is_empty() {
            return Ok(None);
        }
        let best = bytes
            .chunks_exact(WITNESS_SLOT)
            .filter_map(|slot| self.parse(slot))
            .max_by_key(|slot| slot.seq);
        match best {
            Some(slot) => Ok(Some(slot)),
            None => Err(corrupt_store(&format!(
                "its witness file {} does not authenticate under the root key",
                self.path.display()
            ))),
        }
    }

    fn parse(&self, slot: &[u8]) -> Option<WitnessSlot> {
        let (body, tag) = slot.split_at(WITNESS_SLOT - TAG_LEN);
        if &body[..4] != WITNESS_MAGIC || !self.key.verify(&[body], tag) {
            return None;
        }
        Some(WitnessSlot {
            store_id: body[4..20].try_into().ok()?,
            seq: u64::from_be_bytes(body[20..28].try_into().ok()?),
        })
    }

    /// Writes `seq` into slot `seq % 2` and syncs the file.
    fn write(&self, store_id: &[u8; 16], seq: u64) -> Result<(), String> {
        let mut slot = Vec::with_capacity(WITNESS_SLOT);
        slot.extend_from_slice(WITNESS_MAGIC);
        slot.extend_from_slice(store_id);
        slot.extend_from_slice(&seq.to_be_bytes());
        let tag = self.key.tag(&[&slot]);
        slot.extend_from_slice(&tag);
        let offset = (seq % 2) * WITNESS_SLOT as u64;
        let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| file.write_all(&slot))
            .map_err(|error| format!("write of {}: {error}", self.path.display()))?;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        file.sync_data()
            .map_err(|error| format!("fdatasync of {}: {error}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_add_and_sub_are_inverse_and_carry() {
        let mut d = Digest::default();
        let max = [0xff; 32];
        let one = {
            let mut b = [0; 32];
            b[0] = 1;
            b
        };
        d.add(&max);
        d.add(&one);
        assert_eq!(d, Digest::default(), "2^256 - 1 + 1 wraps to 0");
        d.sub(&one);
        assert_eq!(d.to_bytes(), max);
        d.add(&one);
        let mut e = Digest::default();
        e.add(&[7; 32]);
        e.add(&[9; 32]);
        e.sub(&[7; 32]);
        let mut f = Digest::default();
        f.add(&[9; 32]);
        assert_eq!(e, f);
    }
}
