//! One delivery attempt to one replica: load (under the key's lock) → send (no lock held) →
//! the core's decision ([`delivery::settle`]) → settle (under the key's lock, one commit).

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, ThreadId};

use crate::core::replication::delivery::{self, Sent};
use crate::core::replication::{self, Snapshot, SnapshotBody};
use crate::core::{Error, KeyId, KeyRecord, Role};
use crate::kms::link::{Link, ReplicaUpdate};
use crate::kms::shared::{Shared, lock};

/// How one attempt ended, as the replicator reports it.
#[derive(Debug)]
pub(super) enum Attempt {
    /// The replica holds the key's latest revision (or knows the key is gone).
    Delivered,
    /// Recorded as the replica's `last-failure`; retried after a backoff.
    Failed(Error),
    /// The replica's retry is not due yet.
    Deferred,
    /// Delivered, but the key changed meanwhile: deliver again.
    Behind,
    /// Nothing to deliver: the key has no such replica any more, or the replica holds its
    /// latest revision.
    Nothing,
}

/// What the first step found.
enum Loaded {
    Send(Box<ReplicaUpdate>),
    Deferred,
    Nothing,
}

/// Sends updates to replicas through the link, one attempt at a time per replica.
pub(crate) struct Sender {
    shared: Arc<Shared>,
    link: Option<Arc<dyn Link>>,
    /// The (key, zone) pairs being delivered, and by which thread: an attempt for a pair
    /// another thread delivers waits for it, so that two threads never record one replica's
    /// answers out of order. The same thread may deliver a pair again while delivering it
    /// (a link that makes the origin change and deliver before it carries a message).
    busy: Mutex<HashMap<(KeyId, String), ThreadId>>,
    freed: Condvar,
    /// The zones whose last message, for any key, found them out of reach (`true`), and
    /// those that answered again since (`false`) until [`Sender::take_returned`] takes them.
    reach: Mutex<HashMap<String, bool>>,
}

impl Sender {
    pub(crate) fn new(shared: Arc<Shared>, link: Option<Arc<dyn Link>>) -> Sender {
        Sender {
            shared,
            link,
            busy: Mutex::default(),
            freed: Condvar::new(),
            reach: Mutex::default(),
        }
    }

    /// The zones that answered again after being out of reach, since the last call.
    pub(super) fn take_returned(&self) -> Vec<String> {
        let mut reach = lock(&self.reach);
        let returned = reach
            .iter()
            .filter(|(_, away)| !**away)
            .map(|(zone, _)| zone.clone())
            .collect();
        reach.retain(|_, away| *away);
        returned
    }

    /// The link, if this zone has one.
    pub(super) fn link(&self) -> Option<&Arc<dyn Link>> {
        self.link.as_ref()
    }

    /// Delivers again while the key changes during its deliveries, a few times at most.
    pub(super) fn deliver_until_current(
        &self,
        id: KeyId,
        zone: &str,
        force: bool,
    ) -> Result<Attempt, Error> {
        const PASSES: usize = 4;
        let mut attempt = self.deliver(id, zone, force)?;
        for _ in 1..PASSES {
            if !matches!(attempt, Attempt::Behind) {
                break;
            }
            attempt = self.deliver(id, zone, force)?;
        }
        Ok(attempt)
    }

    /// One delivery to key `id`'s replica in `zone`; with `force`, even while its retry is
    /// not due. Nothing is attempted once a change could not be made durable.
    fn deliver(&self, id: KeyId, zone: &str, force: bool) -> Result<Attempt, Error> {
        let Some(link) = self.link.as_ref() else {
            return Ok(Attempt::Failed(no_link(zone)));
        };
        let _pair = self.claim(id, zone);
        self.shared.live()?;
        let update = match self.load(id, zone, force)? {
            Loaded::Send(update) => update,
            Loaded::Deferred => return Ok(Attempt::Deferred),
            Loaded::Nothing => return Ok(Attempt::Nothing),
        };
        let sent = Sent {
            seq: update.snapshot().seq,
            deleted: matches!(update.snapshot().body, SnapshotBody::Deleted),
        };
        let answer = link.deliver(zone, &update);
        drop(update);
        {
            let mut reach = lock(&self.reach);
            if matches!(answer, Err(Error::ZoneUnreachable { .. })) {
                reach.insert(zone.to_owned(), true);
            } else if let Some(away) = reach.get_mut(zone) {
                *away = false;
            }
        }
        self.settle(id, zone, sent, answer)
    }

    /// Under the key's lock: the replica's state and the update it needs (the key's snapshot
    /// with the material versions it has not confirmed, or the key's deletion).
    fn load(&self, id: KeyId, zone: &str, force: bool) -> Result<Loaded, Error> {
        let store = self.shared.store();
        let _key = self.shared.lock_key(id);
        let Some(delivery) = store.delivery(id, zone)? else {
            // No such replica (any more): drop the stale mark.
            self.shared
                .write(|store| store.settle(id, zone, None, false))?;
            return Ok(Loaded::Nothing);
        };
        if !force && !delivery.retry_due(self.shared.now()) {
            return Ok(Loaded::Deferred);
        }
        match store.load(id)? {
            Some(record) if record.role() == Role::Origin => {
                if delivery.is_current(record.revision().seq) {
                    // Delivered meanwhile (a retired version is delivered before the asking
                    // replica is answered; a sync): the queued delivery has nothing to send.
                    return Ok(Loaded::Nothing);
                }
                let update = self.live_update(&record, delivery.confirmed_versions)?;
                Ok(Loaded::Send(Box::new(update)))
            }
            _ => match store.gone(id)? {
                Some(seq) => Ok(Loaded::Send(Box::new(ReplicaUpdate::new(
                    Snapshot {
                        id,
                        origin_zone: self.shared.zone().to_owned(),
                        seq,
                        body: SnapshotBody::Deleted,
                    },
                    Vec::new(),
                )))),
                None => {
                    self.shared
                        .write(|store| store.settle(id, zone, None, false))?;
                    Ok(Loaded::Nothing)
                }
            },
        }
    }

    /// The update for a replica of origin key `record` that holds its first `held` material
    /// versions: the snapshot, and the material of the later versions, unsealed from the store.
    fn live_update(&self, record: &KeyRecord, held: u32) -> Result<ReplicaUpdate, Error> {
        let id = record.id();
        let mut materials = Vec::new();
        for meta in record.materials().iter().filter(|m| m.version > held) {
            materials.push((meta.version, self.shared.unseal(id, meta.version)?));
        }
        Ok(ReplicaUpdate::new(replication::snapshot(record), materials))
    }

    /// Under the key's lock: records what the core decides of `answer`, in one commit.
    fn settle(
        &self,
        id: KeyId,
        zone: &str,
        sent: Sent,
        answer: Result<delivery::Ack, Error>,
    ) -> Result<Attempt, Error> {
        let store = self.shared.store();
        let _key = self.shared.lock_key(id);
        let Some(state) = store.delivery(id, zone)? else {
            return Ok(Attempt::Nothing);
        };
        // A change made meanwhile (the destruction included) keeps the replica owed.
        let latest = match store.load(id)? {
            Some(record) => record.revision().seq,
            None => store.gone(id)?.unwrap_or(0),
        };
        let settled = delivery::settle(id, state, sent, answer, latest, self.shared.now());
        self.shared
            .write(|store| store.settle(id, zone, settled.delivery.as_ref(), settled.owed))?;
        Ok(match settled.outcome {
            delivery::Outcome::Delivered => Attempt::Delivered,
            delivery::Outcome::Behind => Attempt::Behind,
            delivery::Outcome::Failed(error) => Attempt::Failed(error),
        })
    }

    /// Waits until no other thread delivers to key `id`'s replica in `zone`, and marks it
    /// as this thread's until the returned guard drops.
    fn claim(&self, id: KeyId, zone: &str) -> PairGuard<'_> {
        let pair = (id, zone.to_owned());
        let me = thread::current().id();
        let mut busy = lock(&self.busy);
        loop {
            match busy.get(&pair) {
                None => break,
                Some(owner) if *owner == me => {
                    return PairGuard {
                        sender: self,
                        pair: None,
                    };
                }
                Some(_) => {
                    busy = self
                        .freed
                        .wait(busy)
                        .unwrap_or_else(PoisonError::into_inner)
                }
            }
        }
        busy.insert(pair.clone(), me);
        PairGuard {
            sender: self,
            pair: Some(pair),
        }
    }
}

/// A (key, zone) pair being delivered (`None`: already this thread's, further out); freed on
/// drop, even if the delivery panicked.
struct PairGuard<'a> {
    sender: &'a Sender,
    pair: Option<(KeyId, String)>,
}

impl Drop for PairGuard<'_> {
    fn drop(&mut self) {
        if let Some(pair) = self.pair.take() {
            lock(&self.sender.busy).remove(&pair);
            self.sender.freed.notify_all();
        }
    }
}

/// What a zone without a link answers for a message to `zone`.
pub(super) fn no_link(zone: &str) -> Error {
    Error::ZoneUnreachable {
        zone: zone.to_owned(),
        detail: "this Kms has no link to other zones".to_owned(),
    }
}
