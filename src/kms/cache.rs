//! The in-memory state of the crypto path: per key, its name, status and one ready cipher per
//! material version, and the encryption budget of the newest version.
//!
//! A [`KeyState`] is an immutable snapshot; a change of the key builds a new one (reusing the
//! ciphers) and swaps it in after the change is durable, with the key's lock held. The crypto
//! path takes a read lock only long enough to clone an `Arc`. A key is destroyed through the
//! cache ([`Cache::destroy`]): in the store, then in memory.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::shared::Shared;
use crate::core::{Error, KeyId, KeyRecord, Status};
use crate::crypto::{Cipher, MaterialKey};

/// The encryption count of one material version, with the part of it made durable.
#[derive(Debug)]
pub(super) struct Budget {
    /// The version counted.
    pub(super) version: u32,
    /// Encryptions started under the version (an upper bound of those done).
    pub(super) used: AtomicU64,
    /// Encryptions durably reserved: `used` may grow up to this without a write.
    pub(super) reserved: AtomicU64,
    /// Serializes the writes that extend `reserved`.
    pub(super) extend: Mutex<()>,
}

impl Budget {
    /// A budget whose first `reserved` encryptions are already durably reserved; `used`
    /// starts at `used`.
    fn new(version: u32, used: u64, reserved: u64) -> Budget {
        Budget {
            version,
            used: AtomicU64::new(used),
            reserved: AtomicU64::new(reserved),
            extend: Mutex::new(()),
        }
    }
}

/// What the crypto path needs of one key.
#[derive(Debug)]
pub(super) struct KeyState {
    pub(super) id: KeyId,
    /// The key's name (names never change), for the caller's check.
    pub(super) name: Arc<str>,
    pub(super) status: Status,
    /// `ciphers[v - 1]` is the cipher of material version `v`.
    ciphers: Vec<Arc<Cipher>>,
    /// The cipher of the newest version (also the last of `ciphers`): the one that encrypts.
    pub(super) newest: Arc<Cipher>,
    /// The budget of the newest version.
    pub(super) budget: Arc<Budget>,
}

impl KeyState {
    /// The cipher of `version`, if the key has that version.
    pub(super) fn cipher(&self, version: u32) -> Option<&Cipher> {
        let index = usize::try_from(version.checked_sub(1)?).ok()?;
        self.ciphers.get(index).map(Arc::as_ref)
    }
}

/// The material of a version just made (or just received), with the encryptions reserved for
/// it in the same commit: its budget starts from zero, not from that reservation.
pub(super) struct Fresh {
    pub(super) material: MaterialKey,
    pub(super) reserved: u64,
}

/// Key states by id.
pub(super) struct Cache {
    shared: Arc<Shared>,
    states: RwLock<HashMap<KeyId, Arc<KeyState>>>,
}

impl Cache {
    pub(super) fn new(shared: Arc<Shared>) -> Cache {
        Cache {
            shared,
            states: RwLock::default(),
        }
    }

    /// The state of key `id` if it is in memory.
    pub(super) fn get(&self, id: KeyId) -> Option<Arc<KeyState>> {
        self.read().get(&id).cloned()
    }

    /// The state of key `id`, loading it on first use (every version unsealed).
    pub(super) fn state(&self, id: KeyId) -> Result<Arc<KeyState>, Error> {
        if let Some(state) = self.get(id) {
            return Ok(state);
        }
        let _key = self.shared.lock_key(id);
        if let Some(state) = self.get(id) {
            return Ok(state);
        }
        let record = self.shared.load(id)?;
        self.build(&record, None, None)
    }

    /// Brings the state of key `record` up to the record just written (with the key's lock
    /// held, after the write). A key not in memory stays out of it, unless a version was
    /// added (`fresh`): then it is loaded now, so that the new version's budget starts from
    /// zero rather than from its first reservation. If the state cannot be built, the key is
    /// dropped from memory and loads from the store on first use.
    pub(super) fn refresh(&self, record: &KeyRecord, fresh: Option<Fresh>) {
        let old = self.get(record.id());
        if old.is_none() && fresh.is_none() {
            return;
        }
        if self.build(record, old.as_deref(), fresh).is_err() {
            self.forget(record.id());
        }
    }

    /// Destroys key `record` (with its lock held): in the store first, so that a failure
    /// leaves the key whole, then in memory. With `gone`, the store remembers the key as gone
    /// since that origin revision.
    pub(super) fn destroy(&self, record: &KeyRecord, gone: Option<u64>) -> Result<(), Error> {
        self.shared.write(|store| store.delete(record, gone))?;
        self.forget(record.id());
        Ok(())
    }

    /// Drops key `id` from memory.
    fn forget(&self, id: KeyId) {
        self.write().remove(&id);
    }

    /// Builds and caches the state of `record` (with its key's lock held). Each version's
    /// cipher is the `fresh` material for the newest version if given, else the one `old`
    /// already holds, else unsealed from the store. The newest version's budget is new with
    /// `fresh`, kept from `old` if `old` counted that version, else read from the store: then
    /// everything reserved counts as used, so that after a crash the count never goes back.
    fn build(
        &self,
        record: &KeyRecord,
        old: Option<&KeyState>,
        fresh: Option<Fresh>,
    ) -> Result<Arc<KeyState>, Error> {
        let id = record.id();
        let newest = record.newest_material().version;
        let mut ciphers = Vec::with_capacity(record.materials().len());
        for meta in record.materials() {
            let known = old.and_then(|old| old.ciphers.get(ciphers.len()));
            let cipher = match (&fresh, known) {
                (Some(fresh), _) if meta.version == newest => Arc::new(fresh.material.cipher()),
                (_, Some(known)) => Arc::clone(known),
                _ => Arc::new(self.shared.unseal(id, meta.version)?.cipher()),
            };
            ciphers.push(cipher);
        }
        let budget = match (fresh, old) {
            (Some(fresh), _) => Arc::new(Budget::new(newest, 0, fresh.reserved)),
            (None, Some(old)) if old.budget.version == newest => Arc::clone(&old.budget),
            (None, _) => {
                let reserved = self.shared.store().reserved(id, newest)?;
                Arc::new(Budget::new(newest, reserved, reserved))
            }
        };
        let newest_cipher = ciphers.last().cloned().ok_or_else(|| Error::Corrupt {
            record: format!("key {id}"),
            detail: "has no material version".to_owned(),
        })?;
        let state = Arc::new(KeyState {
            id,
            name: old.map_or_else(|| Arc::from(record.name()), |old| Arc::clone(&old.name)),
            status: record.status(),
            ciphers,
            newest: newest_cipher,
            budget,
        });
        self.write().insert(id, Arc::clone(&state));
        Ok(state)
    }

    fn read(&self) -> RwLockReadGuard<'_, HashMap<KeyId, Arc<KeyState>>> {
        // The map is only ever replaced entry by entry; a panic elsewhere cannot leave it
        // half-changed, so a poisoned lock still guards consistent data.
        self.states.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<KeyId, Arc<KeyState>>> {
        self.states.write().unwrap_or_else(PoisonError::into_inner)
    }
}
