//! What every part of one zone's shell shares: the store and its durability latch, the root
//! key's sealer, the clock, the limits and the per-key locks.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use jiff::Timestamp;

use super::clock::Clock;
use super::options::{KmsOptions, Limits};
use crate::core::{Error, KeyId, KeyRecord};
use crate::crypto::{MacKey, MaterialKey, Purpose, RootKey, RootSealer};
use crate::store::{
    AuthenticatedBackend, Backend, NewMaterial, STORE_FORMAT_V2, Store, StoreHeader,
};

/// Number of key locks; keys are spread over them by id.
const KEY_LOCK_STRIPES: usize = 256;

/// The zone's store, sealer, clock, limits and key locks.
pub(super) struct Shared {
    /// First, so that it is released before the backend is freed (fields drop in order): a
    /// backend opened meanwhile at the same address is not refused as in use.
    _claim: Claim,
    zone: String,
    limits: Limits,
    clock: Arc<dyn Clock>,
    store: Store,
    /// The same backend as `store`'s, typed: for consistent images ([`AuthenticatedBackend::snapshot`]).
    authenticated: Arc<AuthenticatedBackend>,
    /// The key of a backup's MAC, derived from the root key at open.
    backup_mac: MacKey,
    sealer: RootSealer,
    key_locks: Box<[Mutex<()>]>,
    /// Set when a change could not be made durable: every call is refused from then on.
    failed: AtomicBool,
    /// Orders the recordings of the audit head (read, compare, write).
    audit_head: Mutex<()>,
}

impl Shared {
    /// Claims `backend`, opens it as an [`AuthenticatedBackend`] (which checks it as a whole,
    /// or migrates a store of format 1), initializes it on first use and checks it against
    /// `root_key` and the zone of `options` after. The root key is wiped when this returns.
    pub(super) fn open(
        backend: Arc<dyn Backend>,
        root_key: RootKey,
        options: &KmsOptions,
    ) -> Result<Shared, Error> {
        options.check()?;
        let claim = Claim::take(&backend)?;
        let (authenticated, _) = AuthenticatedBackend::open(backend, &root_key)?;
        let sealer = RootSealer::new(&root_key);
        let backup_mac = MacKey::derive(&root_key, Purpose::BackupMac);
        drop(root_key);
        let authenticated = Arc::new(authenticated);
        let store = Store::new(Arc::clone(&authenticated) as Arc<dyn Backend>);
        let zone = &options.zone;
        match store.header()? {
            None => store.initialize(sealer.check_value()?, zone)?,
            Some(StoreHeader { format, .. }) if format != STORE_FORMAT_V2 => {
                return Err(Error::Corrupt {
                    record: "store header".to_owned(),
                    detail: format!("unknown store format {format}"),
                });
            }
            Some(header) => {
                if !sealer.verify_check_value(&header.root_check) {
                    return Err(Error::WrongRootKey);
                }
                if &header.zone != zone {
                    return Err(Error::BadRequest {
                        field: "zone",
                        reason: format!(
                            "this store serves zone {}, not {}",
                            Error::quote(&header.zone),
                            Error::quote(zone)
                        ),
                    });
                }
            }
        }
        Ok(Shared {
            _claim: claim,
            zone: zone.clone(),
            limits: options.limits,
            clock: Arc::clone(&options.clock),
            store,
            authenticated,
            backup_mac,
            sealer,
            key_locks: (0..KEY_LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            failed: AtomicBool::new(false),
            audit_head: Mutex::new(()),
        })
    }

    /// The zone served.
    pub(super) fn zone(&self) -> &str {
        &self.zone
    }

    /// The limits in force.
    pub(super) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The clock's time.
    pub(super) fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// The store, for reads. Writes go through [`Shared::write`].
    pub(super) fn store(&self) -> &Store {
        &self.store
    }

    /// The authenticated backend under the store, for consistent images.
    pub(super) fn authenticated(&self) -> &AuthenticatedBackend {
        &self.authenticated
    }

    /// The key of a backup's MAC.
    pub(super) fn backup_mac(&self) -> &MacKey {
        &self.backup_mac
    }

    /// The lock that orders the changes of key `id` (one of [`KEY_LOCK_STRIPES`]).
    pub(super) fn lock_key(&self, id: KeyId) -> MutexGuard<'_, ()> {
        lock(&self.key_locks[stripe(id)])
    }

    /// The locks of every key of `ids` at once: each stripe taken once, in stripe order (the
    /// order every caller of this takes them in, so that two never wait for each other).
    pub(super) fn lock_keys(
        &self,
        ids: impl IntoIterator<Item = KeyId>,
    ) -> Vec<MutexGuard<'_, ()>> {
        let stripes: BTreeSet<usize> = ids.into_iter().map(stripe).collect();
        stripes
            .into_iter()
            .map(|stripe| lock(&self.key_locks[stripe]))
            .collect()
    }

    /// The lock that orders the recordings of the audit head.
    pub(super) fn lock_audit_head(&self) -> MutexGuard<'_, ()> {
        lock(&self.audit_head)
    }

    /// Refuses every call once a change could not be made durable.
    pub(super) fn live(&self) -> Result<(), Error> {
        if self.failed.load(Ordering::Acquire) {
            Err(Error::NotDurable {
                detail: "an earlier change could not be made durable".to_owned(),
            })
        } else {
            Ok(())
        }
    }

    /// Runs a write of the store, unless this zone was stopped; stops it if the write's
    /// durability is unknown (the change is applied in the backend but may be lost in a
    /// crash). Every write goes through here, so none happens once `not-durable` was reported,
    /// whatever the caller checked before it took its locks.
    pub(super) fn write<T>(
        &self,
        write: impl FnOnce(&Store) -> Result<T, Error>,
    ) -> Result<T, Error> {
        self.live()?;
        let result = write(&self.store);
        if let Err(Error::NotDurable { .. }) = &result {
            self.failed.store(true, Ordering::Release);
        }
        result
    }

    /// The record of key `id`, or [`Error::KeyNotFound`].
    pub(super) fn load(&self, id: KeyId) -> Result<KeyRecord, Error> {
        self.store.load(id)?.ok_or(Error::KeyNotFound { id })
    }

    /// Fresh material for version `version` of key `id`, and its sealed form with its first
    /// reservation.
    pub(super) fn new_material(
        &self,
        id: KeyId,
        version: u32,
    ) -> Result<(MaterialKey, NewMaterial), Error> {
        let material = MaterialKey::generate()?;
        let sealed = self.seal(id, version, &material)?;
        Ok((material, sealed))
    }

    /// `material`, version `version` of key `id`, sealed for the store with its first
    /// reservation.
    pub(super) fn seal(
        &self,
        id: KeyId,
        version: u32,
        material: &MaterialKey,
    ) -> Result<NewMaterial, Error> {
        let mut seal_id = [0; 16];
        crate::crypto::fill_from_os(&mut seal_id)?;
        Ok(NewMaterial {
            version,
            sealed: self.sealer.seal_material(id, version, &seal_id, material)?,
            reserved: self.limits.reservation_block(),
            seal_id,
        })
    }

    /// Version `version` of key `id`, read from the store and unsealed under the seal id its
    /// record names.
    pub(super) fn unseal(&self, id: KeyId, version: u32) -> Result<MaterialKey, Error> {
        let seal_id = self.store.seal_id(id, version)?;
        let sealed = self.store.load_material(id, version)?;
        self.sealer.open_material(id, version, &seal_id, &sealed)
    }
}

/// The key lock of key `id`: one of [`KEY_LOCK_STRIPES`].
fn stripe(id: KeyId) -> usize {
    let bytes = id.as_bytes();
    // The low bytes of a v7 UUID are random: a good spread.
    usize::from(u16::from_be_bytes([bytes[14], bytes[15]])) % KEY_LOCK_STRIPES
}

/// Takes a lock that orders operations and guards no data of its own: a panic in another
/// thread leaves nothing inconsistent behind it.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Backends in use by a live `Kms` in this process, by address: two `Kms` over one backend
/// would each keep their own locks, cache and encryption counts, and undo each other.
static CLAIMED: Mutex<BTreeSet<usize>> = Mutex::new(BTreeSet::new());

/// A backend claimed by one `Kms`, released when that `Kms` drops.
struct Claim(usize);

impl Claim {
    fn take(backend: &Arc<dyn Backend>) -> Result<Claim, Error> {
        let address = Arc::as_ptr(backend).cast::<()>() as usize;
        if lock(&CLAIMED).insert(address) {
            Ok(Claim(address))
        } else {
            Err(Error::StoreInUse {
                store: "behind this backend".to_owned(),
            })
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        lock(&CLAIMED).remove(&self.0);
    }
}
