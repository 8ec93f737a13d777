//! The replication rules: what an origin key sends to its replicas, and how a replica follows.
//!
//! Replication is state-based. Every change of an origin key with replicas is followed by a
//! [`Snapshot`] of the part of the key that replicas follow, stamped with the origin's
//! `revision.seq`. A replica applies a snapshot only if it is newer than the last one it
//! applied ([`follow`]), so repeated, late and out-of-order deliveries do no harm, and a
//! replica that missed some snapshots catches up with the next one: each snapshot carries
//! everything the skipped ones did (a cancelled deletion is carried by `last_cancel_seq`).
//!
//! [`delivery`] holds the origin's side: how it tracks each replica, what it makes of a
//! replica's answer, and when it retries.

pub mod delivery;

use jiff::Timestamp;

use crate::core::error::{ConflictReason, Error};
use crate::core::id::KeyId;
use crate::core::record::{
    KeyRecord, KeySource, KeyUsage, MaterialMeta, ReplicaZone, Revision, Role, RotationConfig,
    Status,
};

/// The replicated state of an origin key at one of its revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The key.
    pub id: KeyId,
    /// The key's origin zone.
    pub origin_zone: String,
    /// The origin's `revision.seq` this snapshot shows.
    pub seq: u64,
    /// The key at that revision, or its final deletion.
    pub body: SnapshotBody,
}

/// What a [`Snapshot`] says about the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotBody {
    /// The key exists at the origin.
    Live(LiveKey),
    /// The key was destroyed at the origin: the replica is destroyed too. Always the last
    /// snapshot of a key.
    Deleted,
}

/// The fields of an origin key that its replicas follow. Status is not among them: a
/// replica's enable and disable are its own; only a scheduled deletion (`delete_at`) and its
/// cancellation (`last_cancel_seq`) reach the replica's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveKey {
    /// The key's name.
    pub name: String,
    /// The key's description.
    pub description: Option<String>,
    /// The key's usage.
    pub usage: KeyUsage,
    /// Where the material comes from.
    pub source: KeySource,
    /// When the key was created.
    pub created_at: Timestamp,
    /// Every material version, oldest first.
    pub materials: Vec<MaterialMeta>,
    /// The rotation settings.
    pub rotation: RotationConfig,
    /// When the key is destroyed, while its deletion is scheduled.
    pub delete_at: Option<Timestamp>,
    /// The origin revision of the last cancelled deletion (0 if none).
    pub last_cancel_seq: u64,
    /// The zones holding a replica, each with the revision that added it.
    pub replicas: Vec<ReplicaZone>,
    /// How many of the first material versions were imported (0 for a created key).
    pub imported_versions: u32,
}

/// The snapshot of origin key `record` at its current revision.
#[must_use]
pub fn snapshot(record: &KeyRecord) -> Snapshot {
    Snapshot {
        id: record.id,
        origin_zone: record.origin_zone.clone(),
        seq: record.revision.seq,
        body: SnapshotBody::Live(LiveKey {
            name: record.name.clone(),
            description: record.description.clone(),
            usage: record.usage,
            source: record.source,
            created_at: record.created_at,
            materials: record.materials.clone(),
            rotation: record.rotation,
            delete_at: record.status.delete_at(),
            last_cancel_seq: record.last_cancel_seq,
            replicas: record.replicas.clone(),
            imported_versions: record.imported_versions,
        }),
    }
}

/// The snapshot announcing the destruction of origin key `record`: one revision after its
/// last.
#[must_use]
pub fn deletion_snapshot(record: &KeyRecord) -> Snapshot {
    Snapshot {
        id: record.id,
        origin_zone: record.origin_zone.clone(),
        seq: record.revision.seq.saturating_add(1),
        body: SnapshotBody::Deleted,
    }
}

/// What the shell knows about the receiving zone when a snapshot arrives.
#[derive(Debug, Clone, Copy)]
pub struct FollowContext<'a> {
    /// The receiving zone.
    pub zone: &'a str,
    /// The time of arrival.
    pub now: Timestamp,
    /// Whether another key of this zone already has the snapshot's name.
    pub name_taken: bool,
}

/// What a replica does with a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Follow {
    /// The replica already applied this revision or a later one: nothing to do.
    Stale,
    /// Write this record (new, or replacing the replica's). Its material versions beyond
    /// those the replica held must come with the snapshot.
    Write(Box<KeyRecord>),
    /// Destroy the replica (or, if this zone never held it, remember that it is gone).
    Delete,
}

/// How a replica follows `snapshot`, given its current record (`None` if this zone holds no
/// such key).
///
/// Rules: a snapshot not newer than the replica's `applied_watermark` is [`Follow::Stale`];
/// [`SnapshotBody::Deleted`] destroys the replica. A newer live snapshot replaces every
/// replicated field; the status follows the origin's deletion: pending deletion while the
/// origin's is scheduled; disabled if a deletion was cancelled since the replica's last
/// applied revision (or the replica was pending deletion and the origin no longer is);
/// otherwise the replica keeps its own status. Each applied snapshot is a change of the
/// replica: its own `revision.seq` grows by one.
///
/// Errors: [`Error::Conflict`] if this zone owns a key with that id, the snapshot says it
/// comes from this zone, or it names another origin than the replica's; [`Error::NameConflict`] when creating a replica whose name another
/// key of this zone has.
pub fn follow(
    current: Option<&KeyRecord>,
    snapshot: &Snapshot,
    ctx: &FollowContext<'_>,
) -> Result<Follow, Error> {
    if snapshot.origin_zone == ctx.zone || current.is_some_and(|record| record.role == Role::Origin)
    {
        return Err(Error::Conflict {
            id: snapshot.id,
            reason: ConflictReason::UpdateAtOrigin,
        });
    }
    // A replica follows its own origin only: a zone may not update, or destroy, a replica of
    // another zone's key by naming itself its origin.
    if current.is_some_and(|record| record.origin_zone != snapshot.origin_zone) {
        return Err(Error::Conflict {
            id: snapshot.id,
            reason: ConflictReason::OtherOrigin,
        });
    }
    let live = match &snapshot.body {
        SnapshotBody::Deleted => return Ok(Follow::Delete),
        SnapshotBody::Live(live) => live,
    };
    if current.is_some_and(|record| record.applied_watermark >= snapshot.seq) {
        return Ok(Follow::Stale);
    }
    let now = ctx.now;
    let Some(current) = current else {
        // The zone's own entry says since when it is a replica: a deletion scheduled and
        // cancelled since then disables the new replica, as it would have had it been
        // reached at once.
        let Some(me) = live.replicas.iter().find(|r| r.zone == ctx.zone) else {
            return Err(Error::Conflict {
                id: snapshot.id,
                reason: ConflictReason::NotAReplicaZone,
            });
        };
        if ctx.name_taken {
            return Err(Error::NameConflict {
                name: live.name.clone(),
                zone: ctx.zone.to_owned(),
            });
        }
        let status = match live.delete_at {
            Some(delete_at) => Status::PendingDeletion { delete_at },
            None if live.last_cancel_seq > me.since_seq => Status::Disabled,
            None => Status::Enabled,
        };
        return Ok(Follow::Write(Box::new(replica_record(
            snapshot,
            live,
            status,
            now,
            Revision { seq: 1, at: now },
        ))));
    };
    let status = match (live.delete_at, current.status) {
        (Some(delete_at), _) => Status::PendingDeletion { delete_at },
        (None, Status::PendingDeletion { .. }) => Status::Disabled,
        (None, _) if live.last_cancel_seq > current.applied_watermark => Status::Disabled,
        (None, own) => own,
    };
    let status_since = if status == current.status {
        current.status_since
    } else {
        now
    };
    let revision = Revision {
        seq: current.revision.seq.checked_add(1).ok_or(Error::Conflict {
            id: current.id,
            reason: ConflictReason::RevisionsExhausted,
        })?,
        at: now,
    };
    let record = replica_record(snapshot, live, status, status_since, revision);
    // Material versions are never taken away, whatever a snapshot says.
    if record.materials.len() < current.materials.len() {
        return Err(Error::Conflict {
            id: current.id,
            reason: ConflictReason::FewerVersions,
        });
    }
    Ok(Follow::Write(Box::new(record)))
}

fn replica_record(
    snapshot: &Snapshot,
    live: &LiveKey,
    status: Status,
    status_since: Timestamp,
    revision: Revision,
) -> KeyRecord {
    KeyRecord {
        id: snapshot.id,
        name: live.name.clone(),
        description: live.description.clone(),
        usage: live.usage,
        source: live.source,
        multi_zone: true,
        origin_zone: snapshot.origin_zone.clone(),
        role: Role::Replica,
        status,
        status_since,
        created_at: live.created_at,
        revision,
        materials: live.materials.clone(),
        rotation: live.rotation,
        replicas: live.replicas.clone(),
        applied_watermark: snapshot.seq,
        last_cancel_seq: live.last_cancel_seq,
        imported_versions: live.imported_versions,
    }
}
