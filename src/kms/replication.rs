//! Multi-zone replication in the shell: the [`Link`] between zones, replicate-key, delivery of
//! updates from an origin to its replicas, and their reception.
//!
//! The protocol (docs/design.md, "Replication"): every change of a replicated origin key
//! marks each replica as behind, in the same durable commit as the change (the outbox). A
//! delivery sends the key's current [`Snapshot`] with the material versions the replica has
//! not confirmed, and the replica answers with the origin revision it holds ([`Ack`]). The
//! origin clears the mark when the replica holds its latest revision, and otherwise records
//! the failure and retries with backoff. No lock is held while a link carries a message.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock, Weak};

use jiff::SignedDuration;

use super::{Applied, Kms};
use crate::api::{SuccessResponse, SuccessStatus};
use crate::core::replication::{self, Follow, FollowContext, Snapshot, SnapshotBody};
use crate::core::{self, Command, Error, KeyId, KeyRecord, Role};
use crate::crypto::MaterialKey;
use crate::store::{Delivery, DeliveryFailure, NewMaterial};

/// Carries replication updates from one zone to the others.
///
/// keylife ships [`LocalLink`], which connects `Kms` instances of one process; a network
/// link implements the same two methods, calling [`Kms::receive`] on the other side.
pub trait Link: Send + Sync + fmt::Debug {
    /// Whether `zone` is a zone this link can carry updates to (reachable or not right now):
    /// replicate-key accepts only such zones.
    fn knows(&self, zone: &str) -> bool;

    /// Delivers `update` to zone `zone` and returns its answer. A zone that cannot be reached
    /// or does not answer is [`Error::ZoneUnreachable`]; the zone's own refusals come back as
    /// its errors.
    fn deliver(&self, zone: &str, update: &ReplicaUpdate) -> Result<Ack, Error>;

    /// Asks zone `zone`, the origin of key `id`, for a new material version because
    /// `version` used its encryption budget in this zone: the receiving side calls
    /// [`Kms::retire_version`]. The new version reaches this zone as a normal update.
    fn request_rotation(&self, zone: &str, id: KeyId, version: u32) -> Result<(), Error>;
}

/// One replication message: the replicated state of an origin key at one revision, and the
/// material versions the receiving replica may not hold yet, in wiping containers.
pub struct ReplicaUpdate {
    snapshot: Snapshot,
    materials: Vec<(u32, MaterialKey)>,
}

impl ReplicaUpdate {
    /// The replicated state carried.
    #[must_use]
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The material versions carried (not the material).
    #[must_use]
    pub fn material_versions(&self) -> Vec<u32> {
        self.materials.iter().map(|(version, _)| *version).collect()
    }

    fn material(&self, version: u32) -> Option<&MaterialKey> {
        self.materials
            .iter()
            .find(|(v, _)| *v == version)
            .map(|(_, material)| material)
    }
}

impl Clone for ReplicaUpdate {
    /// Copies the material into new wiping containers: a link may have to send a message
    /// again.
    fn clone(&self) -> ReplicaUpdate {
        ReplicaUpdate {
            snapshot: self.snapshot.clone(),
            materials: self
                .materials
                .iter()
                .map(|(version, material)| (*version, material.duplicate()))
                .collect(),
        }
    }
}

impl fmt::Debug for ReplicaUpdate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicaUpdate")
            .field("snapshot", &self.snapshot)
            .field("material_versions", &self.material_versions())
            .finish()
    }
}

/// A replica's answer to an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// The origin revision the replica holds after the update (if lower than the update's,
    /// the update was not applied).
    pub applied_seq: u64,
    /// Material versions the replica holds.
    pub versions: u32,
}

/// The in-process [`Link`]: connects `Kms` instances of one program by zone name.
///
/// A zone is known once [`LocalLink::attach`]ed, and stays known when its `Kms` is dropped
/// (it is then unreachable until a new `Kms` of that zone is attached). The link holds its
/// `Kms` weakly, so that dropping a `Kms` closes it.
///
/// ```
/// use std::sync::Arc;
/// use keylife::{CreateKey, Kms, KmsOptions, LocalLink, RootKey};
///
/// # fn main() -> Result<(), keylife::Error> {
/// let link = LocalLink::new();
/// let zone = |name: &str| -> Result<Arc<Kms>, keylife::Error> {
///     let kms = Arc::new(Kms::open_in_memory(
///         RootKey::generate()?,
///         KmsOptions::new(name).link(link.clone()),
///     )?);
///     link.attach(&kms);
///     Ok(kms)
/// };
/// let (gva, fra) = (zone("ch-gva-2")?, zone("de-fra-1")?);
/// let key = gva.create_key(&CreateKey::new("orders").multi_zone(true))?;
/// gva.replicate_key(key.id, "de-fra-1", None)?;
/// let sealed = gva.encrypt(key.id, b"data", None)?;
/// assert_eq!(fra.decrypt(key.id, &sealed.ciphertext, None)?.plaintext.as_bytes(), b"data");
/// assert_eq!(fra.get_key(key.id)?.key.origin_zone, "ch-gva-2");
/// # Ok(())
/// # }
/// ```
#[derive(Default)]
pub struct LocalLink {
    zones: RwLock<HashMap<String, Weak<Kms>>>,
}

impl LocalLink {
    /// A link with no zone.
    #[must_use]
    pub fn new() -> Arc<LocalLink> {
        Arc::new(LocalLink::default())
    }

    /// Connects `kms` under its zone name, replacing an earlier `Kms` of that zone.
    pub fn attach(&self, kms: &Arc<Kms>) {
        self.zones
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(kms.zone().to_owned(), Arc::downgrade(kms));
    }

    fn zone(&self, zone: &str) -> Option<Option<Arc<Kms>>> {
        self.zones
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(zone)
            .map(Weak::upgrade)
    }
}

impl fmt::Debug for LocalLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let zones = self
            .zones
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut names: Vec<_> = zones.keys().collect();
        names.sort();
        f.debug_struct("LocalLink").field("zones", &names).finish()
    }
}

impl Link for LocalLink {
    fn knows(&self, zone: &str) -> bool {
        self.zone(zone).is_some()
    }

    fn deliver(&self, zone: &str, update: &ReplicaUpdate) -> Result<Ack, Error> {
        self.reach(zone)?.receive(update)
    }

    fn request_rotation(&self, zone: &str, id: KeyId, version: u32) -> Result<(), Error> {
        self.reach(zone)?.retire_version(id, version)
    }
}

impl LocalLink {
    fn reach(&self, zone: &str) -> Result<Arc<Kms>, Error> {
        let unreachable = |detail: &str| Error::ZoneUnreachable {
            zone: zone.to_owned(),
            detail: detail.to_owned(),
        };
        match self.zone(zone) {
            Some(Some(kms)) => Ok(kms),
            Some(None) => Err(unreachable("its Kms is closed")),
            None => Err(unreachable("no such zone on this link")),
        }
    }
}

/// What one [`Kms::sync`] (or the replication part of [`Kms::run_due`]) did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// Replicas brought up to date (key, zone).
    pub delivered: Vec<(KeyId, String)>,
    /// Deliveries that failed; each is recorded as the replica's `last-failure` and retried.
    pub failed: Vec<(KeyId, String, Error)>,
    /// Replicas left for later: their retry is not due yet.
    pub deferred: Vec<(KeyId, String)>,
    /// Entries of the outbox that name no key and zone (a damaged store): skipped.
    pub unreadable: Vec<Error>,
}

/// The outcome of one delivery attempt.
enum Outcome {
    Delivered,
    Failed(Error),
    Deferred,
    /// Delivered, but the key changed meanwhile: deliver again.
    Behind,
    /// Nothing to deliver (the key has no such replica any more).
    Nothing,
}

/// The first retry waits this long; each further failure doubles it, up to [`RETRY_MAX`].
const RETRY_FIRST: SignedDuration = SignedDuration::from_secs(1);
/// The longest wait between retries.
const RETRY_MAX: SignedDuration = SignedDuration::from_secs(300);

fn retry_delay(attempts: u32) -> SignedDuration {
    let doublings = attempts.saturating_sub(1).min(16);
    RETRY_FIRST
        .checked_mul(1 << doublings)
        .unwrap_or(RETRY_MAX)
        .min(RETRY_MAX)
}

impl Kms {
    /// replicate-kms-key: adds a replica of key `id` in `zone` and answers
    /// `target-registered`. The replica is created by the first delivery, attempted at once;
    /// if that fails it is retried by [`Kms::run_due`] and [`Kms::sync`].
    ///
    /// Errors, in this order: [`Error::NotMultiZone`], [`Error::NotOnReplica`],
    /// [`Error::InvalidArgument`] (the key's own zone, or a zone the link does not know),
    /// [`Error::Conflict`] (already replicated there), [`Error::KeyPendingDeletion`],
    /// [`Error::KeyDisabled`].
    pub fn replicate_key(
        &self,
        id: KeyId,
        zone: &str,
        expected_seq: Option<u64>,
    ) -> Result<SuccessResponse, Error> {
        let known = self.link.as_ref().is_some_and(|link| link.knows(zone));
        let command = Command::Replicate {
            zone: zone.to_owned(),
            known,
        };
        self.mutate(id, command, expected_seq)?;
        Ok(SuccessResponse {
            status: SuccessStatus::TargetRegistered,
        })
    }

    /// Version `version` of key `id` used its encryption budget in this zone. An origin key
    /// gets a new version at once. A replica asks its origin through the link, which makes
    /// the version and delivers it (with [`LocalLink`], before answering); if it has not
    /// arrived, the answer is [`Error::RotationPending`].
    #[cold]
    pub(super) fn retire(&self, id: KeyId, version: u32) -> Result<(), Error> {
        let record = self.read(id)?;
        if record.role() == Role::Origin {
            self.mutate(id, Command::RetireExhausted { version }, None)?;
            return Ok(());
        }
        let pending = Error::RotationPending {
            id,
            version,
            origin_zone: record.origin_zone().to_owned(),
        };
        let Some(link) = self.link.as_ref() else {
            return Err(pending);
        };
        // Whatever went wrong on the way, the caller's answer is the same: not yet.
        if link
            .request_rotation(record.origin_zone(), id, version)
            .is_err()
            || self.usable(id)?.budget.version <= version
        {
            return Err(pending);
        }
        Ok(())
    }

    /// The receiving side of [`Link::request_rotation`]: a replica zone spent the encryption
    /// budget of version `version` of origin key `id`. Makes a new version (recorded as
    /// automatic) unless one was made since, and brings the replicas up to date.
    ///
    /// Errors: those of rotation ([`Error::KeyDisabled`], [`Error::KeyPendingDeletion`],
    /// [`Error::NotOnReplica`] if this zone is not the key's origin).
    pub fn retire_version(&self, id: KeyId, version: u32) -> Result<(), Error> {
        let applied = self.mutate(id, Command::RetireExhausted { version }, None)?;
        if matches!(applied.transition, core::Transition::Unchanged) {
            // A newer version exists already: the asking replica is behind.
            self.push(id, &applied.after().replica_zones());
        }
        Ok(())
    }

    /// Delivers every waiting update to every replica now, retries whose backoff has not
    /// expired included. [`Kms::run_due`] does the same but respects the backoff.
    pub fn sync(&self) -> Result<SyncReport, Error> {
        self.deliver_outbox(true)
    }

    /// Delivers what waits in the outbox; with `force`, also to replicas still in backoff.
    pub(super) fn deliver_outbox(&self, force: bool) -> Result<SyncReport, Error> {
        self.live()?;
        let outbox = self.store.outbox(usize::MAX)?;
        let mut report = SyncReport {
            unreadable: outbox.unreadable,
            ..SyncReport::default()
        };
        for (id, zone) in outbox.entries {
            match self.deliver_until_current(id, &zone, force) {
                Ok(Outcome::Delivered) => report.delivered.push((id, zone)),
                Ok(Outcome::Failed(error)) | Err(error) => report.failed.push((id, zone, error)),
                Ok(Outcome::Deferred | Outcome::Behind) => report.deferred.push((id, zone)),
                Ok(Outcome::Nothing) => {}
            }
        }
        Ok(report)
    }

    /// After a change of origin key `id` (with no lock held): tries to bring each replica in
    /// `zones` up to date at once, unless its retry is not due. Failures are recorded for
    /// the retries; the change itself is already durable and stands.
    pub(super) fn push(&self, id: KeyId, zones: &[String]) {
        for zone in zones {
            // Recorded in the store by `deliver`; a failure to record it leaves the outbox
            // entry in place, so the next sync retries.
            let _ = self.deliver_until_current(id, zone, false);
        }
    }

    /// Delivers again while the key changes during its deliveries, a few times at most.
    fn deliver_until_current(&self, id: KeyId, zone: &str, force: bool) -> Result<Outcome, Error> {
        const PASSES: usize = 4;
        let mut outcome = self.deliver(id, zone, force)?;
        for _ in 1..PASSES {
            if !matches!(outcome, Outcome::Behind) {
                break;
            }
            outcome = self.deliver(id, zone, force)?;
        }
        Ok(outcome)
    }

    /// The zones to push to after `applied` (a change of an origin key with replicas).
    pub(super) fn push_zones(applied: &Applied) -> Vec<String> {
        let record = applied.after();
        if record.role() == Role::Origin
            && !matches!(applied.transition, core::Transition::Unchanged)
        {
            record.replica_zones()
        } else {
            Vec::new()
        }
    }

    /// One delivery to key `id`'s replica in `zone`: build the update under the key's lock,
    /// send it without any lock, record the answer under the lock.
    fn deliver(&self, id: KeyId, zone: &str, force: bool) -> Result<Outcome, Error> {
        let Some(link) = self.link.as_ref() else {
            return Ok(Outcome::Failed(Error::ZoneUnreachable {
                zone: zone.to_owned(),
                detail: "this Kms has no link to other zones".to_owned(),
            }));
        };
        let update = {
            let _key = self.lock_key(id);
            let Some(delivery) = self.store.delivery(id, zone)? else {
                // No such replica (any more): drop the stale mark.
                self.written(self.store.settle(id, zone, None, false))?;
                return Ok(Outcome::Nothing);
            };
            if !force && delivery.retry_at.is_some_and(|at| at > self.clock.now()) {
                return Ok(Outcome::Deferred);
            }
            match self.store.load(id)? {
                Some(record) if record.role() == Role::Origin => {
                    self.live_update(&record, delivery.confirmed_versions)?
                }
                _ => match self.store.gone(id)? {
                    Some(seq) => ReplicaUpdate {
                        snapshot: Snapshot {
                            id,
                            origin_zone: self.zone.clone(),
                            seq,
                            body: SnapshotBody::Deleted,
                        },
                        materials: Vec::new(),
                    },
                    None => {
                        self.written(self.store.settle(id, zone, None, false))?;
                        return Ok(Outcome::Nothing);
                    }
                },
            }
        };
        let sent_seq = update.snapshot.seq;
        let deleted = matches!(update.snapshot.body, SnapshotBody::Deleted);
        let answer = link.deliver(zone, &update);
        drop(update);

        let _key = self.lock_key(id);
        let Some(mut delivery) = self.store.delivery(id, zone)? else {
            return Ok(Outcome::Nothing);
        };
        let now = self.clock.now();
        let failure = match answer {
            Ok(ack) if ack.applied_seq >= sent_seq => {
                if deleted {
                    self.written(self.store.settle(id, zone, None, false))?;
                    return Ok(Outcome::Delivered);
                }
                delivery.confirmed_seq = delivery.confirmed_seq.max(ack.applied_seq);
                delivery.confirmed_versions = ack.versions;
                delivery.failure = None;
                delivery.attempts = 0;
                delivery.retry_at = None;
                // A change made meanwhile (the destruction included) keeps the mark for the
                // next delivery.
                let latest = match self.store.load(id)? {
                    Some(record) => record.revision().seq,
                    None => self.store.gone(id)?.unwrap_or(0),
                };
                let up_to_date = delivery.confirmed_seq >= latest;
                self.written(self.store.settle(id, zone, Some(&delivery), !up_to_date))?;
                return Ok(if up_to_date {
                    Outcome::Delivered
                } else {
                    Outcome::Behind
                });
            }
            Ok(ack) => {
                // The replica lacked material versions it was assumed to hold (for example
                // its store was replaced): the next attempt sends every version it lacks.
                delivery.confirmed_versions = ack.versions;
                Error::Conflict {
                    id,
                    reason: "the replica did not apply the update: it lacks material versions; \
                             they are sent again",
                }
            }
            Err(error) => error,
        };
        delivery.attempts = delivery.attempts.saturating_add(1);
        delivery.retry_at = now.checked_add(retry_delay(delivery.attempts)).ok();
        delivery.failure = Some(DeliveryFailure {
            attempted_seq: sent_seq,
            error: failure.to_string(),
            failed_at: now,
        });
        // A recorded failure is always retried, even of a delivery nothing was owed for.
        self.written(self.store.settle(id, zone, Some(&delivery), true))?;
        Ok(Outcome::Failed(failure))
    }

    /// The update for a replica of origin key `record` that holds its first `held` material
    /// versions: the snapshot, and the material of the later versions, unsealed from the store.
    fn live_update(&self, record: &KeyRecord, held: u32) -> Result<ReplicaUpdate, Error> {
        let id = record.id();
        let mut materials = Vec::new();
        for meta in record.materials().iter().filter(|m| m.version > held) {
            let sealed = self.store.load_material(id, meta.version)?;
            let material = self.sealer.open_material(id, meta.version, &sealed)?;
            materials.push((meta.version, material));
        }
        Ok(ReplicaUpdate {
            snapshot: replication::snapshot(record),
            materials,
        })
    }

    /// Applies an update from a key's origin zone to this zone's replica of it: creates the
    /// replica, brings it up to the update's revision, or destroys it. Applies each revision
    /// at most once: an update not newer than what the replica holds changes nothing, and a
    /// destroyed key never comes back. Durable before it answers.
    ///
    /// This is what a [`Link`] calls on the receiving side. Errors: [`Error::NameConflict`]
    /// (another key of this zone has the name), [`Error::Conflict`] (this zone is the key's
    /// origin), and the store's errors.
    pub fn receive(&self, update: &ReplicaUpdate) -> Result<Ack, Error> {
        self.live()?;
        let snapshot = &update.snapshot;
        let id = snapshot.id;
        let _key = self.lock_key(id);
        if let Some(seq) = self.store.gone(id)? {
            return Ok(Ack {
                applied_seq: seq,
                versions: 0,
            });
        }
        let current = self.store.load(id)?;
        let name_taken = match &snapshot.body {
            SnapshotBody::Live(live) => self
                .store
                .id_by_name(&live.name)?
                .is_some_and(|other| other != id),
            SnapshotBody::Deleted => false,
        };
        let ctx = FollowContext {
            zone: &self.zone,
            now: self.clock.now(),
            name_taken,
        };
        let held = |record: Option<&KeyRecord>| Ack {
            applied_seq: record.map_or(0, KeyRecord::applied_watermark),
            versions: record.map_or(0, |r| r.newest_material().version),
        };
        match replication::follow(current.as_ref(), snapshot, &ctx)? {
            Follow::Stale => Ok(held(current.as_ref())),
            Follow::Delete => {
                match &current {
                    Some(record) => self.destroy(record, Some(snapshot.seq))?,
                    None => self.written(self.store.bury(id, snapshot.seq))?,
                }
                Ok(Ack {
                    applied_seq: snapshot.seq,
                    versions: 0,
                })
            }
            Follow::Write(record) => {
                let before = current.as_ref().map_or(0, |r| r.newest_material().version);
                let mut sealed = Vec::new();
                let mut newest = None;
                for meta in record.materials().iter().filter(|m| m.version > before) {
                    let Some(material) = update.material(meta.version) else {
                        return Ok(held(current.as_ref()));
                    };
                    sealed.push(NewMaterial {
                        version: meta.version,
                        sealed: self.sealer.seal_material(id, meta.version, material)?,
                        reserved: self.reservation_block(),
                    });
                    newest = Some(material);
                }
                self.written(self.store.put(current.as_ref(), &record, &sealed))?;
                let fresh = newest.map(|material| (material.duplicate(), self.reservation_block()));
                self.refresh_cache(&record, fresh);
                Ok(held(Some(&record)))
            }
        }
    }

    /// The delivery state of each replica of origin key `record`, in the order of its
    /// replicas.
    pub(super) fn replica_states(
        &self,
        record: &KeyRecord,
    ) -> Result<Vec<crate::api::ReplicaState>, Error> {
        if record.role() != Role::Origin || record.replicas().is_empty() {
            return Ok(Vec::new());
        }
        let mut deliveries: HashMap<String, Delivery> =
            self.store.deliveries(record.id())?.into_iter().collect();
        Ok(record
            .replica_zones()
            .into_iter()
            .map(|zone| {
                let delivery = deliveries.remove(&zone).unwrap_or_default();
                crate::api::ReplicaState {
                    zone,
                    last_applied_watermark: delivery.confirmed_seq,
                    last_failure: delivery.failure.map(|f| crate::api::ReplicaFailure {
                        attempted_watermark: f.attempted_seq,
                        error: f.error,
                        failed_at: f.failed_at,
                    }),
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_up_to_the_cap() {
        assert_eq!(retry_delay(1), SignedDuration::from_secs(1));
        assert_eq!(retry_delay(2), SignedDuration::from_secs(2));
        assert_eq!(retry_delay(5), SignedDuration::from_secs(16));
        assert_eq!(retry_delay(9), SignedDuration::from_secs(256));
        assert_eq!(retry_delay(10), RETRY_MAX);
        assert_eq!(retry_delay(u32::MAX), RETRY_MAX);
    }

    #[test]
    fn update_debug_shows_no_material() {
        let material = MaterialKey::generate().unwrap();
        let update = ReplicaUpdate {
            snapshot: Snapshot {
                id: KeyId::from_bytes([1; 16]),
                origin_zone: "a".to_owned(),
                seq: 3,
                body: SnapshotBody::Deleted,
            },
            materials: vec![(1, material)],
        };
        let shown = format!("{update:?}");
        assert!(shown.contains("material_versions: [1]"), "{shown}");
        assert!(!shown.contains("KeyBytes"), "{shown}");
    }
}
