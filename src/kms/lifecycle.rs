//! The lifecycle part of the shell: creates keys, applies the core's changes, destroys keys,
//! and runs what is due. Each change is load → decide (core) → new material if a version was
//! added → one durable commit → the cached state swapped, under the key's lock; then the
//! key's replicas, if any, are handed to the replicator's queue.

use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use uuid::Uuid;

use super::cache::{Cache, Fresh};
use super::import::{ImportOutcome, Imported, KeyImport};
use super::replicator::Dispatcher;
use super::report::DueReport;
use super::shared::{Shared, lock};
use crate::api::{KeySummary, SuccessResponse, SuccessStatus};
use crate::core::{
    self, Command, ConflictReason, CreateContext, CreateKey, Error, Event, ImportContext, KeyId,
    KeyRecord, Role, Transition,
};
use crate::store::NewMaterial;

/// What [`Lifecycle::change`] did to a key.
#[derive(Debug)]
pub(super) struct Changed {
    /// The record after the change (the one before when nothing changed or the key was
    /// destroyed).
    pub(super) record: KeyRecord,
    /// What happened.
    pub(super) effect: Effect,
}

impl Changed {
    /// The answer of enable, disable and cancel-deletion: `already-applied` when nothing
    /// changed.
    pub(super) fn success(&self) -> SuccessResponse {
        let status = match self.effect {
            Effect::Unchanged => SuccessStatus::AlreadyApplied,
            _ => SuccessStatus::Success,
        };
        SuccessResponse { status }
    }
}

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Effect {
    /// Nothing: the key was already in the asked state, or nothing was due.
    Unchanged,
    /// The key changed.
    Changed(Event),
    /// The key's deletion was due: it is destroyed.
    Deleted,
}

/// Creates, changes and destroys the keys of one zone.
pub(super) struct Lifecycle {
    shared: Arc<Shared>,
    cache: Arc<Cache>,
    outbox: Arc<Dispatcher>,
    /// Orders creations, so that name uniqueness and the quota are checked and written
    /// atomically.
    create_lock: Mutex<()>,
}

impl Lifecycle {
    pub(super) fn new(shared: Arc<Shared>, cache: Arc<Cache>, outbox: Arc<Dispatcher>) -> Self {
        Lifecycle {
            shared,
            cache,
            outbox,
            create_lock: Mutex::new(()),
        }
    }

    /// create-kms-key: the record of a new enabled key with material version 1, durable.
    pub(super) fn create(&self, request: &CreateKey) -> Result<KeyRecord, Error> {
        self.shared.live()?;
        // The core checks these too; checking first spares the store an oversized lookup.
        request.validate()?;
        let _create = lock(&self.create_lock);
        let store = self.shared.store();
        let now = self.shared.now();
        let id = new_key_id(now);
        let record = core::create_key(
            request,
            &CreateContext {
                id,
                zone: self.shared.zone(),
                now,
                origin_keys: store.origin_keys()?,
                quota: self.shared.limits().key_quota,
                name_taken: store.id_by_name(&request.name)?.is_some(),
            },
        )?;
        let _key = self.shared.lock_key(id);
        let (material, sealed) = self.shared.new_material(id, 1)?;
        self.shared
            .write(|store| store.put(None, &record, std::slice::from_ref(&sealed)))?;
        // The key exists from here on: a caching failure must not turn into an error (the key
        // would then load on first use), and with fresh material nothing is read anyway.
        self.cache.refresh(
            &record,
            Some(Fresh {
                material,
                reserved: sealed.reserved,
            }),
        );
        Ok(record)
    }

    /// Imports `keys` (bring your own key): every key is checked first (its arguments, that
    /// its material is one per version, no id or name twice in `keys`, a key already held
    /// must be the same key with the same material in the imported versions, a free name, the
    /// quota), then every new key is written in one durable commit; with `write` false
    /// nothing is written. Either every key is imported or the answer is the first error and
    /// nothing changed. A key already held is left alone.
    pub(super) fn import(&self, keys: &[&KeyImport], write: bool) -> Result<Vec<Imported>, Error> {
        self.shared.live()?;
        let _create = lock(&self.create_lock);
        let _keys = self
            .shared
            .lock_keys(keys.iter().map(|import| import.key.id));
        let store = self.shared.store();
        let now = self.shared.now();
        let mut origin_keys = store.origin_keys()?;
        let mut outcomes = Vec::with_capacity(keys.len());
        let mut created: Vec<(KeyRecord, &KeyImport)> = Vec::new();
        for (index, import) in keys.iter().enumerate() {
            let request = &import.key;
            let id = request.id;
            request.validate(now)?;
            if import.materials.len() != request.versions.len() {
                return Err(Error::BadRequest {
                    field: "materials",
                    reason: format!(
                        "key {id} has {} versions and {} materials: one per version",
                        request.versions.len(),
                        import.materials.len()
                    ),
                });
            }
            if let Some(earlier) = keys[..index]
                .iter()
                .find(|earlier| earlier.key.id == id || earlier.key.name == request.name)
            {
                return Err(Error::BadRequest {
                    field: "keys",
                    reason: format!(
                        "key {id} ({}) and key {} ({}) have the same id or name",
                        Error::quote(&request.name),
                        earlier.key.id,
                        Error::quote(&earlier.key.name)
                    ),
                });
            }
            let outcome = match store.load(id)? {
                Some(record) => {
                    let versions = core::check_reimport(&record, request)?;
                    for (version, material) in (1..=versions).zip(&import.materials) {
                        if !self.shared.unseal(id, version)?.same_as(material) {
                            return Err(Error::Conflict {
                                id,
                                reason: ConflictReason::ImportedMaterialDiffers,
                            });
                        }
                    }
                    ImportOutcome::AlreadyPresent
                }
                None => {
                    if store.gone(id)?.is_some() {
                        return Err(Error::Conflict {
                            id,
                            reason: ConflictReason::ImportOfGoneKey,
                        });
                    }
                    let record = core::import_key(
                        request,
                        &ImportContext {
                            zone: self.shared.zone(),
                            now,
                            origin_keys,
                            quota: self.shared.limits().key_quota,
                            name_taken: store.id_by_name(&request.name)?.is_some(),
                        },
                    )?;
                    origin_keys += 1;
                    created.push((record, import));
                    ImportOutcome::Created
                }
            };
            outcomes.push(Imported {
                id,
                name: request.name.clone(),
                outcome,
            });
        }
        if !write || created.is_empty() {
            return Ok(outcomes);
        }
        let mut sealed: Vec<Vec<NewMaterial>> = Vec::with_capacity(created.len());
        for (record, import) in &created {
            let mut versions = Vec::with_capacity(import.materials.len());
            for (meta, material) in record.materials().iter().zip(&import.materials) {
                versions.push(self.shared.seal(record.id(), meta.version, material)?);
            }
            sealed.push(versions);
        }
        let batch: Vec<(&KeyRecord, &[NewMaterial])> = created
            .iter()
            .zip(&sealed)
            .map(|((record, _), materials)| (record, materials.as_slice()))
            .collect();
        self.shared.write(|store| store.put_new(&batch))?;
        Ok(outcomes)
    }

    /// The record of key `id`, read under the key's lock (so that a change still being made
    /// durable is not seen). A key whose deletion is due is destroyed now (its replicas are
    /// told) and is not found.
    pub(super) fn reap_or_load(&self, id: KeyId) -> Result<KeyRecord, Error> {
        self.shared.live()?;
        let record = {
            let _key = self.shared.lock_key(id);
            let record = self.shared.load(id)?;
            if !core::deletion_due(&record, self.shared.now()) {
                return Ok(record);
            }
            self.destroy_origin(&record)?;
            record
        };
        self.outbox.push(id, record.replica_zones());
        Err(Error::KeyNotFound { id })
    }

    /// Every key of the zone, replicas included, in id order. Keys whose deletion is due are
    /// destroyed on the way and not listed.
    pub(super) fn list(&self) -> Result<Vec<KeySummary>, Error> {
        self.shared.live()?;
        let now = self.shared.now();
        let mut keys = Vec::new();
        for record in self.shared.store().list(None, usize::MAX)? {
            if core::deletion_due(&record, now) {
                match self.reap_or_load(record.id()) {
                    Err(Error::KeyNotFound { .. }) => continue,
                    Err(error) => return Err(error),
                    Ok(record) => keys.push(KeySummary::from(&record)),
                }
            } else {
                keys.push(KeySummary::from(&record));
            }
        }
        Ok(keys)
    }

    /// Applies `command` to key `id` under its lock: load, decide (core), generate material
    /// if a version was added, write durably, then update the cache. A key whose deletion is
    /// due is destroyed, and then not found for any command but [`Command::RunDue`].
    ///
    /// Once the change is durable and the lock released, the key's replicas, if any, are
    /// queued for delivery: the answer does not wait for them.
    pub(super) fn change(
        &self,
        id: KeyId,
        command: Command,
        expected_seq: Option<u64>,
    ) -> Result<Changed, Error> {
        let run_due = command == Command::RunDue;
        let changed = self.change_locked(id, &command, expected_seq)?;
        if changed.record.role() == Role::Origin && changed.effect != Effect::Unchanged {
            self.outbox.push(id, changed.record.replica_zones());
        }
        if !run_due && changed.effect == Effect::Deleted {
            return Err(Error::KeyNotFound { id });
        }
        Ok(changed)
    }

    fn change_locked(
        &self,
        id: KeyId,
        command: &Command,
        expected_seq: Option<u64>,
    ) -> Result<Changed, Error> {
        self.shared.live()?;
        let _key = self.shared.lock_key(id);
        let before = self.shared.load(id)?;
        match core::apply(&before, command, self.shared.now(), expected_seq)? {
            Transition::Unchanged => Ok(Changed {
                record: before,
                effect: Effect::Unchanged,
            }),
            Transition::Changed { record, event } => {
                let fresh = match event {
                    Event::Rotated { version, .. } => Some(self.shared.new_material(id, version)?),
                    _ => None,
                };
                let sealed = fresh
                    .as_ref()
                    .map(|(_, sealed)| std::slice::from_ref(sealed));
                self.shared
                    .write(|store| store.put(Some(&before), &record, sealed.unwrap_or_default()))?;
                let fresh = fresh.map(|(material, sealed)| Fresh {
                    material,
                    reserved: sealed.reserved,
                });
                self.cache.refresh(&record, fresh);
                Ok(Changed {
                    record: *record,
                    effect: Effect::Changed(event),
                })
            }
            Transition::Deleted => {
                self.destroy_origin(&before)?;
                Ok(Changed {
                    record: before,
                    effect: Effect::Deleted,
                })
            }
        }
    }

    /// Destroys origin key `record` (with its lock held). A key with replicas is remembered
    /// as gone, and its replicas as waiting for the news.
    fn destroy_origin(&self, record: &KeyRecord) -> Result<(), Error> {
        let gone = (!record.replicas().is_empty())
            .then(|| core::replication::deletion_snapshot(record).seq);
        self.cache.destroy(record, gone)
    }

    /// Performs every automatic rotation and final deletion due at the clock's `now`. One
    /// key's failure does not stop the others; it is in the report. An error is returned only
    /// when the due-time index itself cannot be read.
    pub(super) fn run_due(&self) -> Result<DueReport, Error> {
        self.shared.live()?;
        let due = self.shared.store().due(self.shared.now(), usize::MAX)?;
        let mut report = DueReport {
            unreadable: due.unreadable,
            ..DueReport::default()
        };
        for id in due.ids {
            match self.change(id, Command::RunDue, None) {
                Ok(changed) => match changed.effect {
                    Effect::Changed(Event::Rotated { .. }) => report.rotated.push(id),
                    Effect::Deleted => report.deleted.push(id),
                    _ => {}
                },
                // Deleted between the index read and now: nothing left to do.
                Err(Error::KeyNotFound { .. }) => {}
                Err(error) => report.failed.push((id, error)),
            }
        }
        Ok(report)
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
