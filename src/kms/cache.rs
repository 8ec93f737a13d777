//! The in-memory state of the crypto path: per key, its status and one ready cipher per
//! material version, and the encryption budget of the newest version.
//!
//! A [`KeyState`] is an immutable snapshot; a change of the key builds a new one (reusing the
//! ciphers) and swaps it in after the change is durable. The crypto path takes a read lock
//! only long enough to clone an `Arc`.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};

use crate::core::{KeyId, Status};
use crate::crypto::Cipher;

/// The encryption count of one material version, with the part of it made durable.
#[derive(Debug)]
pub(crate) struct Budget {
    /// The version counted.
    pub(crate) version: u32,
    /// Encryptions started under the version (an upper bound of those done).
    pub(crate) used: AtomicU64,
    /// Encryptions durably reserved: `used` may grow up to this without a write.
    pub(crate) reserved: AtomicU64,
    /// Serializes the writes that extend `reserved`.
    pub(crate) extend: Mutex<()>,
}

impl Budget {
    /// A budget whose first `reserved` encryptions are already durably reserved; `used`
    /// starts at `used`.
    pub(crate) fn new(version: u32, used: u64, reserved: u64) -> Budget {
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
pub(crate) struct KeyState {
    pub(crate) id: KeyId,
    pub(crate) status: Status,
    /// `ciphers[v - 1]` is the cipher of material version `v`.
    pub(crate) ciphers: Vec<Arc<Cipher>>,
    /// The cipher of the newest version (also the last of `ciphers`): the one that encrypts.
    pub(crate) newest: Arc<Cipher>,
    /// The budget of the newest version.
    pub(crate) budget: Arc<Budget>,
}

impl KeyState {
    /// The cipher of `version`, if the key has that version.
    pub(crate) fn cipher(&self, version: u32) -> Option<&Cipher> {
        let index = usize::try_from(version.checked_sub(1)?).ok()?;
        self.ciphers.get(index).map(Arc::as_ref)
    }
}

/// Key states by id.
#[derive(Debug, Default)]
pub(crate) struct Cache {
    states: RwLock<HashMap<KeyId, Arc<KeyState>>>,
}

impl Cache {
    pub(crate) fn get(&self, id: KeyId) -> Option<Arc<KeyState>> {
        self.read().get(&id).cloned()
    }

    pub(crate) fn insert(&self, state: KeyState) -> Arc<KeyState> {
        let state = Arc::new(state);
        self.write().insert(state.id, Arc::clone(&state));
        state
    }

    pub(crate) fn remove(&self, id: KeyId) {
        self.write().remove(&id);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<KeyId, Arc<KeyState>>> {
        // The map is only ever replaced entry by entry; a panic elsewhere cannot leave it
        // half-changed, so a poisoned lock still guards consistent data.
        self.states
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<KeyId, Arc<KeyState>>> {
        self.states
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
