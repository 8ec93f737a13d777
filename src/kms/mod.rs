//! The shell: [`Kms`] owns the store, the clock, the random source, the cipher cache and the
//! root key, and runs the core's rules against them.

mod cache;
mod clock;
mod due;
mod replication;

pub use clock::{Clock, ManualClock, SystemClock};
pub use due::{DueReport, DueRunner};
pub use replication::{Ack, Link, LocalLink, ReplicaUpdate, SyncReport};

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use jiff::Timestamp;
use uuid::Uuid;

use std::sync::atomic::Ordering;

use self::cache::{Budget, Cache, KeyState};
use crate::api::{
    Ciphertext, CreatedKey, DataKey, DeletionScheduled, KeyDetails, KeyList, KeySummary, Plaintext,
    RotationList, RotationResponse, SuccessResponse, SuccessStatus,
};
use crate::core::limits::{
    DEFAULT_KEY_QUOTA, DEFAULT_MAX_CONTEXT_BYTES, DEFAULT_MAX_PLAINTEXT_BYTES,
    MAX_ENCRYPTIONS_PER_VERSION,
};
use crate::core::{
    self, Command, CreateContext, CreateKey, DataKeySpec, DeletionDelay, Error, Event, KeyId,
    KeyRecord, RotationPeriod, Transition,
};
use crate::crypto::{
    self, Header, MaterialKey, OVERHEAD, RootKey, RootSealer, SecretBytes, envelope,
};
use crate::store::{
    Backend, MemoryBackend, NewMaterial, STORE_FORMAT_V1, SledBackend, Store, StoreHeader,
};

/// Encryptions reserved durably at a time under one material version: encrypt writes to the
/// store once per this many encryptions (and once after each open), never otherwise.
pub const RESERVATION_BLOCK: u64 = 1 << 20;

/// Number of key locks; keys are spread over them by id.
const KEY_LOCK_STRIPES: usize = 256;

/// Bounds a `Kms` enforces that are options rather than contract constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Keys the zone may own, replicas not counted. Default 1000.
    pub key_quota: usize,
    /// Largest plaintext of encrypt, in bytes. Default 4 MiB.
    pub max_plaintext_bytes: usize,
    /// Largest encryption context, in bytes. Default 8 KiB.
    pub max_context_bytes: usize,
    /// Encryptions under one material version before keylife rotates the key by itself:
    /// 1 to 2^32. Default 2^32 (see docs/design.md, "Nonce budget"); lower it to test.
    pub max_encryptions_per_version: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            key_quota: DEFAULT_KEY_QUOTA,
            max_plaintext_bytes: DEFAULT_MAX_PLAINTEXT_BYTES,
            max_context_bytes: DEFAULT_MAX_CONTEXT_BYTES,
            max_encryptions_per_version: MAX_ENCRYPTIONS_PER_VERSION,
        }
    }
}

/// How to open a [`Kms`].
#[derive(Clone)]
pub struct KmsOptions {
    /// The zone this `Kms` serves: the origin zone of the keys it creates. Default `local`.
    pub zone: String,
    /// Where the time comes from. Default [`SystemClock`].
    pub clock: Arc<dyn Clock>,
    /// Quota and size limits.
    pub limits: Limits,
    /// How updates reach the replicas of this zone's keys, and which zones exist. Default
    /// none: keys cannot be replicated.
    pub link: Option<Arc<dyn Link>>,
}

impl KmsOptions {
    /// Options for zone `zone`, every other option at its default.
    #[must_use]
    pub fn new(zone: impl Into<String>) -> KmsOptions {
        KmsOptions {
            zone: zone.into(),
            ..KmsOptions::default()
        }
    }

    /// Uses `clock` (for example a [`ManualClock`]).
    #[must_use]
    pub fn clock(mut self, clock: impl Clock + 'static) -> KmsOptions {
        self.clock = Arc::new(clock);
        self
    }

    /// Uses `limits`.
    #[must_use]
    pub fn limits(mut self, limits: Limits) -> KmsOptions {
        self.limits = limits;
        self
    }

    /// Reaches other zones through `link` (for example a [`LocalLink`]).
    #[must_use]
    pub fn link(mut self, link: Arc<dyn Link>) -> KmsOptions {
        self.link = Some(link);
        self
    }
}

impl Default for KmsOptions {
    fn default() -> KmsOptions {
        KmsOptions {
            zone: "local".to_owned(),
            clock: Arc::new(SystemClock),
            limits: Limits::default(),
            link: None,
        }
    }
}

impl fmt::Debug for KmsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KmsOptions")
            .field("zone", &self.zone)
            .field("clock", &self.clock)
            .field("limits", &self.limits)
            .field("link", &self.link)
            .finish()
    }
}

/// An embedded key management service for one zone.
///
/// `Kms` is `Send + Sync`: share it (for example in an `Arc`) between threads. Every method
/// that changes a key returns only once the change is durable. Changes of one key are
/// serialized; the cryptographic operations read only memory and run in parallel.
///
/// ```
/// use keylife::{CreateKey, Kms, KmsOptions, RootKey};
///
/// # fn main() -> Result<(), keylife::Error> {
/// let dir = tempfile::tempdir().unwrap();
/// let kms = Kms::open(dir.path(), RootKey::generate()?, KmsOptions::new("ch-gva-2"))?;
/// let key = kms.create_key(&CreateKey::new("payments"))?;
/// let sealed = kms.encrypt(key.id, b"card 4242", Some(b"order 17"))?;
/// let opened = kms.decrypt(key.id, &sealed.ciphertext, Some(b"order 17"))?;
/// assert_eq!(opened.plaintext.as_bytes(), b"card 4242");
/// # Ok(())
/// # }
/// ```
pub struct Kms {
    /// First, so that it is released before the backend is freed (fields drop in order): a
    /// backend opened meanwhile at the same address is not refused as in use.
    _claim: Claim,
    zone: String,
    store: Store,
    sealer: RootSealer,
    clock: Arc<dyn Clock>,
    limits: Limits,
    link: Option<Arc<dyn Link>>,
    cache: Cache,
    key_locks: Box<[Mutex<()>]>,
    create_lock: Mutex<()>,
    /// Set when a change could not be made durable: every call is refused from then on.
    failed: AtomicBool,
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
            Err(Error::Storage {
                detail: "this backend is already in use by another Kms; drop that one first"
                    .to_owned(),
            })
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        lock(&CLAIMED).remove(&self.0);
    }
}

impl fmt::Debug for Kms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kms")
            .field("zone", &self.zone)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The mutexes of `Kms` guard no data of their own (they order operations), so a panic
    // in another thread leaves nothing inconsistent behind them.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a change did, with the record before it.
struct Applied {
    before: KeyRecord,
    transition: Transition,
}

impl Applied {
    fn success(&self) -> SuccessResponse {
        SuccessResponse {
            status: match self.transition {
                Transition::Unchanged => SuccessStatus::AlreadyApplied,
                _ => SuccessStatus::Success,
            },
        }
    }

    /// The record after the change (the one before if nothing changed).
    fn after(&self) -> &KeyRecord {
        match &self.transition {
            Transition::Changed { record, .. } => record,
            _ => &self.before,
        }
    }
}

impl Kms {
    /// Opens (or creates) the sled store in directory `path`, sealed under `root_key`.
    ///
    /// A store created with another root key is refused with [`Error::WrongRootKey`].
    pub fn open(
        path: impl AsRef<Path>,
        root_key: RootKey,
        options: KmsOptions,
    ) -> Result<Kms, Error> {
        let backend = SledBackend::open(path)?;
        Kms::with_backend(Arc::new(backend), root_key, options)
    }

    /// A `Kms` over a new, empty in-memory store: nothing survives it.
    pub fn open_in_memory(root_key: RootKey, options: KmsOptions) -> Result<Kms, Error> {
        Kms::with_backend(Arc::new(MemoryBackend::new()), root_key, options)
    }

    /// A `Kms` over any [`Backend`] (initialized on first use, checked against `root_key`
    /// after). The root key is wiped when this returns.
    pub fn with_backend(
        backend: Arc<dyn Backend>,
        root_key: RootKey,
        options: KmsOptions,
    ) -> Result<Kms, Error> {
        let KmsOptions {
            zone,
            clock,
            limits,
            link,
        } = options;
        if zone.is_empty() {
            return Err(Error::BadRequest {
                field: "zone",
                reason: "must not be empty".to_owned(),
            });
        }
        if !(1..=MAX_ENCRYPTIONS_PER_VERSION).contains(&limits.max_encryptions_per_version) {
            return Err(Error::out_of_range(
                "max-encryptions-per-version",
                1,
                MAX_ENCRYPTIONS_PER_VERSION,
                "",
                limits.max_encryptions_per_version,
            ));
        }
        let claim = Claim::take(&backend)?;
        let sealer = RootSealer::new(&root_key);
        drop(root_key);
        let store = Store::new(backend);
        match store.header()? {
            None => store.initialize(sealer.check_value()?, &zone)?,
            Some(StoreHeader { format, .. }) if format != STORE_FORMAT_V1 => {
                return Err(Error::Corrupt {
                    record: "store header".to_owned(),
                    detail: format!("unknown store format {format}"),
                });
            }
            Some(header) => {
                if !sealer.verify_check_value(&header.root_check) {
                    return Err(Error::WrongRootKey);
                }
                if header.zone != zone {
                    return Err(Error::BadRequest {
                        field: "zone",
                        reason: format!(
                            "this store serves zone {}, not {}",
                            Error::quote(&header.zone),
                            Error::quote(&zone)
                        ),
                    });
                }
            }
        }
        Ok(Kms {
            _claim: claim,
            zone,
            store,
            sealer,
            clock,
            limits,
            link,
            cache: Cache::default(),
            key_locks: (0..KEY_LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            create_lock: Mutex::new(()),
            failed: AtomicBool::new(false),
        })
    }

    /// The zone this `Kms` serves.
    #[must_use]
    pub fn zone(&self) -> &str {
        &self.zone
    }

    /// The limits in force.
    #[must_use]
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The current time of this `Kms`'s clock.
    #[must_use]
    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    fn lock_key(&self, id: KeyId) -> MutexGuard<'_, ()> {
        let bytes = id.as_bytes();
        // The low bytes of a v7 UUID are random: a good spread.
        let stripe = usize::from(u16::from_be_bytes([bytes[14], bytes[15]])) % KEY_LOCK_STRIPES;
        lock(&self.key_locks[stripe])
    }

    /// Refuses every call once a change could not be made durable.
    fn live(&self) -> Result<(), Error> {
        if self.failed.load(Ordering::Relaxed) {
            Err(Error::NotDurable {
                detail: "an earlier change could not be made durable".to_owned(),
            })
        } else {
            Ok(())
        }
    }

    /// Passes on the result of a write, stopping this `Kms` if the write's durability is
    /// unknown (the change is applied in the backend but may be lost in a crash).
    fn written<T>(&self, result: Result<T, Error>) -> Result<T, Error> {
        if let Err(Error::NotDurable { .. }) = &result {
            self.failed.store(true, Ordering::Relaxed);
        }
        result
    }

    fn reservation_block(&self) -> u64 {
        RESERVATION_BLOCK.min(self.limits.max_encryptions_per_version)
    }

    // ----- key management -------------------------------------------------------------

    /// create-kms-key: a new enabled key with material version 1.
    ///
    /// Errors: [`Error::BadRequest`] (name or description length), [`Error::NameConflict`],
    /// [`Error::QuotaExceeded`].
    pub fn create_key(&self, request: &CreateKey) -> Result<CreatedKey, Error> {
        self.live()?;
        // The core checks these too; checking first spares the store an oversized lookup.
        request.validate()?;
        let _create = lock(&self.create_lock);
        let now = self.clock.now();
        let id = new_key_id(now);
        let record = core::create_key(
            request,
            &CreateContext {
                id,
                zone: &self.zone,
                now,
                origin_keys: self.store.origin_keys()?,
                quota: self.limits.key_quota,
                name_taken: self.store.id_by_name(&request.name)?.is_some(),
            },
        )?;
        let _key = self.lock_key(id);
        let (material, sealed) = self.new_material(&record, 1)?;
        self.written(self.store.put(None, &record, std::slice::from_ref(&sealed)))?;
        // The key exists from here on: a caching failure must not turn into an error (the key
        // would then load on first use), and with fresh material nothing is read anyway.
        let _ = self.load_state(&record, None, Some((material, sealed.reserved)));
        Ok(CreatedKey::from(&record))
    }

    /// get-kms-key.
    ///
    /// For an origin key with replicas, `replicas-status` tells how far each has followed.
    pub fn get_key(&self, id: KeyId) -> Result<KeyDetails, Error> {
        let record = self.read(id)?;
        let mut details = KeyDetails::from(&record);
        details.replicas_status = self.replica_states(&record)?;
        Ok(details)
    }

    /// list-kms-keys: every key of the zone, replicas included, in id order.
    ///
    /// A stored record that does not decode fails the listing with [`Error::Corrupt`] naming
    /// it; every other key stays usable by id. Keys whose deletion is due are destroyed on the
    /// way and not listed.
    pub fn list_keys(&self) -> Result<KeyList, Error> {
        self.live()?;
        let now = self.clock.now();
        let mut kms_keys = Vec::new();
        for record in self.store.list(None, usize::MAX)? {
            if core::deletion_due(&record, now) {
                match self.read(record.id()) {
                    Err(Error::KeyNotFound { .. }) => continue,
                    Err(error) => return Err(error),
                    Ok(record) => kms_keys.push(KeySummary::from(&record)),
                }
            } else {
                kms_keys.push(KeySummary::from(&record));
            }
        }
        Ok(KeyList { kms_keys })
    }

    /// list-kms-key-rotations: versions 2 and up, oldest first. Works in every status.
    pub fn list_key_rotations(&self, id: KeyId) -> Result<RotationList, Error> {
        Ok(RotationList::from(&self.read(id)?))
    }

    /// enable-kms-key. `already-applied` if enabled.
    ///
    /// `expected_seq`, when given, must be the key's `revision.seq`
    /// ([`Error::RevisionConflict`] otherwise); the same holds for every mutating method.
    pub fn enable_key(
        &self,
        id: KeyId,
        expected_seq: Option<u64>,
    ) -> Result<SuccessResponse, Error> {
        Ok(self.mutate(id, Command::Enable, expected_seq)?.success())
    }

    /// disable-kms-key. `already-applied` if disabled.
    pub fn disable_key(
        &self,
        id: KeyId,
        expected_seq: Option<u64>,
    ) -> Result<SuccessResponse, Error> {
        Ok(self.mutate(id, Command::Disable, expected_seq)?.success())
    }

    /// schedule-kms-key-deletion: the key is destroyed `delay_days` (7–30, default 30) from
    /// now, unless the deletion is cancelled first. From `delete-at` on, the key no longer
    /// exists: the first call that reaches it (or [`Kms::run_due`]) destroys it.
    pub fn schedule_key_deletion(
        &self,
        id: KeyId,
        delay_days: Option<u32>,
        expected_seq: Option<u64>,
    ) -> Result<DeletionScheduled, Error> {
        let delay = DeletionDelay::from_request(delay_days)?;
        let applied = self.mutate(id, Command::ScheduleDeletion { delay }, expected_seq)?;
        let delete_at = applied.after().status().delete_at();
        // The transition to pending deletion always sets `delete_at`.
        delete_at
            .map(|delete_at| DeletionScheduled { delete_at })
            .ok_or(Error::NotPendingDeletion { id })
    }

    /// cancel-kms-key-deletion: the key becomes disabled. Too late once `delete-at` is past.
    pub fn cancel_key_deletion(
        &self,
        id: KeyId,
        expected_seq: Option<u64>,
    ) -> Result<SuccessResponse, Error> {
        Ok(self
            .mutate(id, Command::CancelDeletion, expected_seq)?
            .success())
    }

    /// rotate-kms-key: a manual rotation (at most 10 per key).
    pub fn rotate_key(
        &self,
        id: KeyId,
        expected_seq: Option<u64>,
    ) -> Result<RotationResponse, Error> {
        let applied = self.mutate(id, Command::Rotate, expected_seq)?;
        Ok(rotation_response(applied.after()))
    }

    /// enable-kms-key-rotation with a period of `rotation_period` days (90–2560, default
    /// 365); the next rotation is one period from now.
    pub fn enable_key_rotation(
        &self,
        id: KeyId,
        rotation_period: Option<u32>,
        expected_seq: Option<u64>,
    ) -> Result<RotationResponse, Error> {
        let period = RotationPeriod::from_request(rotation_period)?;
        let applied = self.mutate(id, Command::EnableRotation { period }, expected_seq)?;
        Ok(rotation_response(applied.after()))
    }

    /// disable-kms-key-rotation.
    pub fn disable_key_rotation(
        &self,
        id: KeyId,
        expected_seq: Option<u64>,
    ) -> Result<RotationResponse, Error> {
        let applied = self.mutate(id, Command::DisableRotation, expected_seq)?;
        Ok(rotation_response(applied.after()))
    }

    fn load(&self, id: KeyId) -> Result<KeyRecord, Error> {
        self.store.load(id)?.ok_or(Error::KeyNotFound { id })
    }

    /// The record of key `id` for a read, under the key's lock (so that a change still being
    /// made durable is not seen). A key whose deletion is due is destroyed now and is not
    /// found.
    fn read(&self, id: KeyId) -> Result<KeyRecord, Error> {
        self.live()?;
        let record = {
            let _key = self.lock_key(id);
            let record = self.load(id)?;
            if !core::deletion_due(&record, self.clock.now()) {
                return Ok(record);
            }
            self.destroy_origin(&record)?;
            record
        };
        self.push(id, &record.replica_zones());
        Err(Error::KeyNotFound { id })
    }

    /// Destroys origin key `record` (with its lock held): store first, then memory. A key
    /// with replicas is remembered as gone, and its replicas as waiting for the news.
    fn destroy_origin(&self, record: &KeyRecord) -> Result<(), Error> {
        let gone = (!record.replicas().is_empty())
            .then(|| core::replication::deletion_snapshot(record).seq);
        self.destroy(record, gone)
    }

    /// Destroys key `record` (with its lock held), remembering it as gone since origin
    /// revision `gone` if given.
    fn destroy(&self, record: &KeyRecord, gone: Option<u64>) -> Result<(), Error> {
        self.written(self.store.delete(record, gone))?;
        self.cache.remove(record.id());
        Ok(())
    }

    /// Applies `command` to key `id` under its lock: load, decide (core), generate material
    /// if a version was added, write durably, then update the cache. A key whose deletion is
    /// due is destroyed, and then not found for any command but [`Command::RunDue`].
    ///
    /// Once the change is durable and the lock released, the key's replicas, if any, are
    /// brought up to date (see [`Kms::sync`]).
    fn mutate(
        &self,
        id: KeyId,
        command: Command,
        expected_seq: Option<u64>,
    ) -> Result<Applied, Error> {
        let run_due = command == Command::RunDue;
        let applied = self.mutate_locked(id, command, expected_seq)?;
        self.push(id, &Kms::push_zones(&applied));
        if !run_due && matches!(applied.transition, Transition::Deleted) {
            return Err(Error::KeyNotFound { id });
        }
        Ok(applied)
    }

    fn mutate_locked(
        &self,
        id: KeyId,
        command: Command,
        expected_seq: Option<u64>,
    ) -> Result<Applied, Error> {
        self.live()?;
        let _key = self.lock_key(id);
        let before = self.load(id)?;
        let transition = core::apply(&before, &command, self.clock.now(), expected_seq)?;
        match &transition {
            Transition::Unchanged => {}
            Transition::Changed { record, event } => {
                let fresh = match *event {
                    Event::Rotated { version, .. } => Some(self.new_material(record, version)?),
                    _ => None,
                };
                let sealed = fresh
                    .as_ref()
                    .map(|(_, sealed)| std::slice::from_ref(sealed));
                self.written(
                    self.store
                        .put(Some(&before), record, sealed.unwrap_or_default()),
                )?;
                self.refresh_cache(record, fresh.map(|(m, sealed)| (m, sealed.reserved)));
            }
            Transition::Deleted => self.destroy_origin(&before)?,
        }
        Ok(Applied { before, transition })
    }

    /// Fresh material for `version` of `record`, and its sealed form with its first
    /// reservation.
    fn new_material(
        &self,
        record: &KeyRecord,
        version: u32,
    ) -> Result<(MaterialKey, NewMaterial), Error> {
        let material = MaterialKey::generate()?;
        let sealed = self.sealer.seal_material(record.id(), version, &material)?;
        Ok((
            material,
            NewMaterial {
                version,
                sealed,
                reserved: self.reservation_block(),
            },
        ))
    }

    /// Brings the cached state of key `record` up to the record just written (with the key's
    /// lock held, after the write). A key not in memory stays out of it, unless a version was
    /// added: then it is loaded now, so that the new version's budget starts from zero rather
    /// than from its first reservation. If the state cannot be built, the key is dropped from
    /// memory and loads from the store on first use.
    fn refresh_cache(&self, record: &KeyRecord, fresh: Option<(MaterialKey, u64)>) {
        let old = self.cache.get(record.id());
        if old.is_none() && fresh.is_none() {
            return;
        }
        if self.load_state(record, old.as_deref(), fresh).is_err() {
            self.cache.remove(record.id());
        }
    }

    /// The cached state of key `id`, loading it on first use.
    fn state(&self, id: KeyId) -> Result<Arc<KeyState>, Error> {
        if let Some(state) = self.cache.get(id) {
            return Ok(state);
        }
        let _key = self.lock_key(id);
        if let Some(state) = self.cache.get(id) {
            return Ok(state);
        }
        let record = self.load(id)?;
        self.load_state(&record, None, None)
    }

    /// The cached state of key `id` if the key may be used for cryptography. A key pending
    /// deletion whose `delete-at` has passed is destroyed now and is not found.
    fn usable(&self, id: KeyId) -> Result<Arc<KeyState>, Error> {
        let state = self.state(id)?;
        match core::check_crypto(id, state.status) {
            Ok(()) => Ok(state),
            Err(refusal @ Error::KeyPendingDeletion { delete_at, .. })
                if delete_at <= self.clock.now() =>
            {
                // `read` destroys the key if its deletion is due (not for a replica).
                self.read(id)?;
                Err(refusal)
            }
            Err(refusal) => Err(refusal),
        }
    }

    /// Builds and caches the state of `record` (with its key's lock held). Each version's
    /// cipher is the `fresh` material for the newest version if given, else the one `old`
    /// already holds, else unsealed from the store. The newest version's budget is new with
    /// `fresh`, kept from `old` if `old` counted that version, else read from the store: then
    /// everything reserved counts as used, so that after a crash the count never goes back.
    fn load_state(
        &self,
        record: &KeyRecord,
        old: Option<&KeyState>,
        fresh: Option<(MaterialKey, u64)>,
    ) -> Result<Arc<KeyState>, Error> {
        let id = record.id();
        let newest = record.newest_material().version;
        let mut ciphers = Vec::with_capacity(record.materials().len());
        for meta in record.materials() {
            let known = old.and_then(|old| old.ciphers.get(ciphers.len()));
            let cipher = match (&fresh, known) {
                (Some((material, _)), _) if meta.version == newest => Arc::new(material.cipher()),
                (_, Some(known)) => Arc::clone(known),
                _ => {
                    let sealed = self.store.load_material(id, meta.version)?;
                    let material = self.sealer.open_material(id, meta.version, &sealed)?;
                    Arc::new(material.cipher())
                }
            };
            ciphers.push(cipher);
        }
        let budget = match (fresh, old) {
            (Some((_, reserved)), _) => Arc::new(Budget::new(newest, 0, reserved)),
            (None, Some(old)) if old.budget.version == newest => Arc::clone(&old.budget),
            (None, _) => {
                let reserved = self.store.reserved(id, newest)?;
                Arc::new(Budget::new(newest, reserved, reserved))
            }
        };
        let newest_cipher = ciphers.last().cloned().ok_or_else(|| Error::Corrupt {
            record: format!("key {id}"),
            detail: "has no material version".to_owned(),
        })?;
        Ok(self.cache.insert(KeyState {
            id,
            status: record.status(),
            ciphers,
            newest: newest_cipher,
            budget,
        }))
    }

    // ----- cryptographic operations ---------------------------------------------------

    fn check_plaintext(&self, plaintext: &[u8]) -> Result<(), Error> {
        check_len(
            "plaintext",
            plaintext.len(),
            self.limits.max_plaintext_bytes,
        )
    }

    fn context<'a>(&self, context: Option<&'a [u8]>) -> Result<&'a [u8], Error> {
        let context = context.unwrap_or_default();
        check_len(
            "encryption-context",
            context.len(),
            self.limits.max_context_bytes,
        )?;
        Ok(context)
    }

    fn check_ciphertext(&self, ciphertext: &[u8]) -> Result<(), Error> {
        check_len(
            "ciphertext",
            ciphertext.len(),
            self.limits.max_plaintext_bytes.saturating_add(OVERHEAD),
        )
    }

    /// encrypt: seals `plaintext` under the newest material version of key `id`, with
    /// `context` (absent and empty are the same) as additional authenticated data.
    ///
    /// Reads no store and builds no cipher once the key is in memory. Errors:
    /// [`Error::KeyNotFound`], [`Error::KeyDisabled`], [`Error::KeyPendingDeletion`],
    /// [`Error::BadRequest`] (plaintext or context over the limits).
    pub fn encrypt(
        &self,
        id: KeyId,
        plaintext: &[u8],
        context: Option<&[u8]>,
    ) -> Result<Ciphertext, Error> {
        self.live()?;
        self.check_plaintext(plaintext)?;
        let context = self.context(context)?;
        let ciphertext = self.seal(self.usable(id)?, plaintext, context)?;
        Ok(Ciphertext { ciphertext })
    }

    /// decrypt: opens a ciphertext made by key `id` (any of its material versions) with the
    /// context given at encryption.
    ///
    /// Errors: [`Error::IncorrectKey`] when the ciphertext names another key;
    /// [`Error::InvalidCiphertext`] for every damaged, truncated or forged ciphertext and for a
    /// wrong context; the status errors of encrypt.
    pub fn decrypt(
        &self,
        id: KeyId,
        ciphertext: &[u8],
        context: Option<&[u8]>,
    ) -> Result<Plaintext, Error> {
        self.live()?;
        self.check_ciphertext(ciphertext)?;
        let context = self.context(context)?;
        let state = self.usable(id)?;
        let plaintext = open(&state, ciphertext, context)?;
        Ok(Plaintext { plaintext })
    }

    /// re-encrypt: decrypts with key `source` and `source_context`, and encrypts the
    /// plaintext with the newest material of key `destination` and `destination_context`.
    /// Both keys must be enabled. The plaintext never leaves the call and is wiped.
    pub fn re_encrypt(
        &self,
        source: KeyId,
        ciphertext: &[u8],
        source_context: Option<&[u8]>,
        destination: KeyId,
        destination_context: Option<&[u8]>,
    ) -> Result<Ciphertext, Error> {
        self.live()?;
        self.check_ciphertext(ciphertext)?;
        let source_context = self.context(source_context)?;
        let destination_context = self.context(destination_context)?;
        let source_state = self.usable(source)?;
        let destination_state = self.usable(destination)?;
        let plaintext = open(&source_state, ciphertext, source_context)?;
        let ciphertext = self.seal(destination_state, plaintext.as_bytes(), destination_context)?;
        Ok(Ciphertext { ciphertext })
    }

    /// generate-data-key: a fresh data key from the operating system's random source (32
    /// bytes for [`DataKeySpec::Aes256`], else `bytes-count` bytes, 1–1024), returned in the
    /// clear (in a wiping container) and encrypted under key `id` with `context`.
    pub fn generate_data_key(
        &self,
        id: KeyId,
        spec: DataKeySpec,
        context: Option<&[u8]>,
    ) -> Result<DataKey, Error> {
        self.live()?;
        let spec = spec.checked()?;
        let context = self.context(context)?;
        // Refuse before generating anything if the key cannot be used.
        let state = self.usable(id)?;
        let mut plaintext = SecretBytes::new(vec![0; spec.byte_len()]);
        crypto::fill_from_os(plaintext.as_mut_slice())?;
        let ciphertext = self.seal(state, plaintext.as_bytes(), context)?;
        Ok(DataKey {
            plaintext,
            ciphertext,
        })
    }

    /// Encrypts under the newest version of a usable key (`state`, from [`Kms::usable`]),
    /// counting the encryption against the version's budget and rotating the key when the
    /// budget is spent.
    fn seal(
        &self,
        mut state: Arc<KeyState>,
        plaintext: &[u8],
        context: &[u8],
    ) -> Result<Vec<u8>, Error> {
        let id = state.id;
        // Each pass either encrypts or makes a new version; more than a few passes happen only
        // when concurrent calls spend each new version's budget first.
        const PASSES: usize = 8;
        for _ in 0..PASSES {
            let budget = &state.budget;
            let count = budget.used.fetch_add(1, Ordering::Relaxed);
            if count >= self.limits.max_encryptions_per_version {
                self.retire(id, budget.version)?;
                state = self.usable(id)?;
                continue;
            }
            // Acquire pairs with the Release below: a reservation seen is durable.
            if count >= budget.reserved.load(Ordering::Acquire) {
                self.extend_reservation(&state, count)?;
            }
            let header = Header {
                key_id: id,
                version: budget.version,
                nonce: crypto::message_nonce(),
            };
            return envelope::seal(&state.newest, &header, plaintext, context);
        }
        Err(Error::Conflict {
            id,
            reason: "concurrent calls spent the encryption budget of every new version; retry",
        })
    }

    /// Makes encryption number `count` (0-based) of the newest version durable before it
    /// happens, reserving a block at a time.
    #[cold]
    fn extend_reservation(&self, state: &KeyState, count: u64) -> Result<(), Error> {
        let budget = &state.budget;
        let _extend = lock(&budget.extend);
        let reserved = budget.reserved.load(Ordering::Acquire);
        if count < reserved {
            return Ok(());
        }
        let _key = self.lock_key(state.id);
        if self.cache.get(state.id).is_none() {
            // Deleted meanwhile: do not write an entry for a key that is gone.
            return Err(Error::KeyNotFound { id: state.id });
        }
        let next = count
            .saturating_add(self.reservation_block())
            .min(self.limits.max_encryptions_per_version);
        self.written(self.store.reserve(state.id, budget.version, next))?;
        budget.reserved.store(next, Ordering::Release);
        Ok(())
    }
}

/// Opens `ciphertext` with a key state: parse, check the key id, pick the version, open.
fn open(state: &KeyState, ciphertext: &[u8], context: &[u8]) -> Result<SecretBytes, Error> {
    let (header, _) = Header::parse(ciphertext).map_err(|_| Error::InvalidCiphertext)?;
    if header.key_id != state.id {
        return Err(Error::IncorrectKey { id: state.id });
    }
    let cipher = state
        .cipher(header.version)
        .ok_or(Error::InvalidCiphertext)?;
    envelope::open(cipher, &header, ciphertext, context)
}

fn check_len(field: &'static str, len: usize, max: usize) -> Result<(), Error> {
    if len <= max {
        Ok(())
    } else {
        Err(Error::BadRequest {
            field,
            reason: format!("must be at most {max} bytes, got {len}"),
        })
    }
}

fn rotation_response(record: &KeyRecord) -> RotationResponse {
    RotationResponse {
        rotation: record.rotation().into(),
    }
}

/// A version-7 UUID for a key created at `now` (the `Kms` clock, so that ids sort like
/// `created-at`), with 74 random bits.
fn new_key_id(now: Timestamp) -> KeyId {
    let seconds = u64::try_from(now.as_second()).unwrap_or(0);
    let nanos = u32::try_from(now.subsec_nanosecond()).unwrap_or(0);
    let ts = uuid::Timestamp::from_unix(uuid::NoContext, seconds, nanos);
    KeyId::from_uuid(Uuid::new_v7(ts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kms_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Kms>();
    }
}
