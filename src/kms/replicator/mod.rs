//! The replication part of the shell: it owns the [`Link`] to other zones, delivers updates
//! from this zone's origin keys to their replicas, and applies updates that arrive for this
//! zone's replicas.
//!
//! The protocol (docs/design.md, "Replication"): every change of a replicated origin key
//! marks each replica as owed a delivery, in the same durable commit as the change (the
//! outbox). A delivery sends the key's current snapshot with the material versions the replica
//! has not confirmed, and the replica answers with the origin revision it holds. What the
//! origin records of that answer is decided by the core
//! ([`crate::core::replication::delivery::settle`]). Deliveries run on a background thread
//! ([`Dispatcher`]) and, on demand, on the caller's ([`Replicator::sync`]); no lock is held
//! while a link carries a message.

mod local;
mod send;
mod worker;

pub use local::LocalLink;
pub(crate) use worker::Dispatcher;

use std::collections::HashMap;
use std::sync::Arc;

use self::send::{Attempt, Sender};
use super::cache::{Cache, Fresh};
use super::link::{Link, ReplicaUpdate};
use super::report::SyncReport;
use super::shared::Shared;
use crate::api::{ReplicaFailure, ReplicaState};
use crate::core::replication::delivery::{Ack, Delivery};
use crate::core::replication::{self, Follow, FollowContext, SnapshotBody};
use crate::core::{Error, KeyId, KeyRecord, Role};

/// Delivers this zone's updates and receives other zones'.
pub(super) struct Replicator {
    shared: Arc<Shared>,
    cache: Arc<Cache>,
    sender: Arc<Sender>,
    dispatcher: Arc<Dispatcher>,
}

impl Replicator {
    /// The sender for `link` and the dispatcher that runs it in the background: the
    /// lifecycle queues deliveries on the dispatcher.
    pub(super) fn parts(
        shared: &Arc<Shared>,
        link: Option<Arc<dyn Link>>,
    ) -> (Arc<Sender>, Arc<Dispatcher>) {
        let sender = Arc::new(Sender::new(Arc::clone(shared), link));
        let deliver = {
            let sender = Arc::clone(&sender);
            // The outcome is recorded in the store (or, if even that failed, the outbox entry
            // stays): `Kms::sync` and `Kms::run_due` retry from there.
            move |id, zone: &str| drop(sender.deliver_until_current(id, zone, false))
        };
        let dispatcher = Arc::new(Dispatcher::new(Arc::new(deliver)));
        (sender, dispatcher)
    }

    pub(super) fn new(
        shared: Arc<Shared>,
        cache: Arc<Cache>,
        (sender, dispatcher): (Arc<Sender>, Arc<Dispatcher>),
    ) -> Replicator {
        Replicator {
            shared,
            cache,
            sender,
            dispatcher,
        }
    }

    /// Whether the link knows `zone` (replicate-key accepts only such zones).
    pub(super) fn knows(&self, zone: &str) -> bool {
        self.sender.link().is_some_and(|link| link.knows(zone))
    }

    /// Waits for the background deliveries queued before this call, then delivers what waits in
    /// the outbox on this thread; with `force`, also to replicas still in backoff.
    pub(super) fn deliver_outbox(&self, force: bool) -> Result<SyncReport, Error> {
        self.shared.live()?;
        self.dispatcher.wait_idle();
        self.shared.live()?;
        let outbox = self.shared.store().outbox(usize::MAX)?;
        let mut report = SyncReport {
            unreadable: outbox.unreadable,
            ..SyncReport::default()
        };
        // A zone found out of reach in this pass is not tried again in it (unless forced): with
        // a link that waits its timeout for each message, one dead zone would otherwise hold
        // the pass (and the zone's next due run) for as many timeouts as keys are owed to it.
        // The entries stay in the outbox for the next pass. The other way round, a zone that
        // was out of reach and answers again is back: what it is owed goes in this pass, backoff
        // or not (the backoff grew while the zone was away, not because of these keys).
        let mut out_of_reach: Vec<String> = Vec::new();
        let mut back = self.sender.take_returned();
        let mut waiting = Vec::new();
        for (id, zone) in outbox.entries {
            if !force && out_of_reach.contains(&zone) {
                report.deferred.push((id, zone));
                continue;
            }
            let zone_force = force || back.contains(&zone);
            waiting.extend(self.attempt(id, zone, zone_force, &mut report, &mut out_of_reach));
            back.extend(self.sender.take_returned());
        }
        for (id, zone) in waiting {
            let gone_again = out_of_reach.contains(&zone);
            let entry = if back.contains(&zone) && !gone_again {
                self.attempt(id, zone, true, &mut report, &mut out_of_reach)
            } else {
                Some((id, zone))
            };
            report.deferred.extend(entry);
        }
        Ok(report)
    }

    /// One delivery of key `id` to `zone`, recorded in `report` (a zone found out of reach is
    /// added to `out_of_reach`); the entry back if it was not delivered for now (its retry not
    /// due, or the key changed meanwhile).
    fn attempt(
        &self,
        id: KeyId,
        zone: String,
        force: bool,
        report: &mut SyncReport,
        out_of_reach: &mut Vec<String>,
    ) -> Option<(KeyId, String)> {
        match self.sender.deliver_until_current(id, &zone, force) {
            Ok(Attempt::Delivered) => report.delivered.push((id, zone)),
            Ok(Attempt::Failed(error)) | Err(error) => {
                if matches!(error, Error::ZoneUnreachable { .. }) {
                    out_of_reach.push(zone.clone());
                }
                report.failed.push((id, zone, error));
            }
            Ok(Attempt::Deferred | Attempt::Behind) => return Some((id, zone)),
            Ok(Attempt::Nothing) => {}
        }
        None
    }

    /// Waits until the deliveries queued in the background before this call are done.
    pub(super) fn wait_idle(&self) {
        self.dispatcher.wait_idle();
    }

    /// Delivers key `id` to each of `zones` on this thread, unless its retry is not due.
    /// Failures are recorded for the retries.
    pub(super) fn deliver_now(&self, id: KeyId, zones: &[String]) {
        for zone in zones {
            // Recorded in the store by the delivery; a failure to record it leaves the outbox
            // entry in place, so the next sync retries.
            let _ = self.sender.deliver_until_current(id, zone, false);
        }
    }

    /// Asks zone `origin_zone`, through the link, for a new version of key `id` because
    /// `version` spent its encryption budget here.
    pub(super) fn request_rotation(
        &self,
        origin_zone: &str,
        id: KeyId,
        version: u32,
    ) -> Result<(), Error> {
        let link = self
            .sender
            .link()
            .ok_or_else(|| send::no_link(origin_zone))?;
        link.request_rotation(origin_zone, id, version)
    }

    /// Applies an update from a key's origin zone to this zone's replica of it (see
    /// [`Kms::receive`](crate::Kms::receive)).
    pub(super) fn receive(&self, update: &ReplicaUpdate) -> Result<Ack, Error> {
        self.shared.live()?;
        let store = self.shared.store();
        let snapshot = update.snapshot();
        let id = snapshot.id;
        let _key = self.shared.lock_key(id);
        if let Some(seq) = store.gone(id)? {
            return Ok(Ack {
                applied_seq: seq,
                versions: 0,
            });
        }
        let current = store.load(id)?;
        let name_taken = match &snapshot.body {
            SnapshotBody::Live(live) => store
                .id_by_name(&live.name)?
                .is_some_and(|other| other != id),
            SnapshotBody::Deleted => false,
        };
        let ctx = FollowContext {
            zone: self.shared.zone(),
            now: self.shared.now(),
            name_taken,
        };
        match replication::follow(current.as_ref(), snapshot, &ctx)? {
            Follow::Stale => Ok(held(current.as_ref())),
            Follow::Delete => {
                match &current {
                    Some(record) => self.cache.destroy(record, Some(snapshot.seq))?,
                    None => self.shared.write(|store| store.bury(id, snapshot.seq))?,
                }
                Ok(Ack {
                    applied_seq: snapshot.seq,
                    versions: 0,
                })
            }
            Follow::Write(record) => self.write_replica(update, current.as_ref(), &record),
        }
    }

    /// Writes `record`, the replica's new record, with the material versions it did not hold
    /// (with the key's lock held). An update that lacks one of them is not applied.
    fn write_replica(
        &self,
        update: &ReplicaUpdate,
        current: Option<&KeyRecord>,
        record: &KeyRecord,
    ) -> Result<Ack, Error> {
        let id = record.id();
        let before = current.map_or(0, |r| r.newest_material().version);
        let mut sealed = Vec::new();
        let mut newest = None;
        for meta in record.materials().iter().filter(|m| m.version > before) {
            let Some(material) = update.material(meta.version) else {
                return Ok(held(current));
            };
            sealed.push(self.shared.seal(id, meta.version, material)?);
            newest = Some(material);
        }
        self.shared
            .write(|store| store.put(current, record, &sealed))?;
        let fresh = newest.map(|material| Fresh {
            material: material.duplicate(),
            reserved: self.shared.limits().reservation_block(),
        });
        self.cache.refresh(record, fresh);
        Ok(held(Some(record)))
    }

    /// The delivery state of each replica of origin key `record`, in the order of its
    /// replicas.
    pub(super) fn replica_states(&self, record: &KeyRecord) -> Result<Vec<ReplicaState>, Error> {
        if record.role() != Role::Origin || record.replicas().is_empty() {
            return Ok(Vec::new());
        }
        let mut deliveries: HashMap<String, Delivery> = self
            .shared
            .store()
            .deliveries(record.id())?
            .into_iter()
            .collect();
        Ok(record
            .replica_zones()
            .into_iter()
            .map(|zone| {
                let delivery = deliveries.remove(&zone).unwrap_or_default();
                ReplicaState {
                    zone,
                    last_applied_watermark: delivery.confirmed_seq,
                    last_failure: delivery.failure.map(|f| ReplicaFailure {
                        attempted_watermark: f.attempted_seq,
                        error: f.error,
                        failed_at: f.failed_at,
                    }),
                }
            })
            .collect())
    }
}

/// The answer of a replica that holds `record` (none: nothing).
fn held(record: Option<&KeyRecord>) -> Ack {
    Ack {
        applied_seq: record.map_or(0, KeyRecord::applied_watermark),
        versions: record.map_or(0, |r| r.newest_material().version),
    }
}
