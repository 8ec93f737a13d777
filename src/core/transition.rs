//! The lifecycle rules: one function per entry point, each pure.

use jiff::{SignedDuration, Timestamp};

use super::command::{Command, CreateContext, CreateKey, Event, Transition};
use super::error::{ConflictReason, Error};
use super::id::KeyId;
use super::limits::{
    DeletionDelay, MAX_MANUAL_ROTATIONS, ROTATION_PERIOD_DEFAULT_DAYS, RotationPeriod,
};
use super::record::{
    KeyRecord, KeySource, KeyUsage, MaterialMeta, ReplicaZone, Revision, Role, RotationConfig,
    Status,
};

/// `at` plus whole `days`, or a bad request if that leaves the representable time range
/// (only a clock set near the year 9999 can get there).
pub fn add_days(at: Timestamp, days: u32) -> Result<Timestamp, Error> {
    at.checked_add(SignedDuration::from_hours(i64::from(days) * 24))
        .map_err(|_| Error::BadRequest {
            field: "now",
            reason: format!("{at} plus {days} days is beyond the last representable time"),
        })
}

/// Whether a new key named `name` fits in `zone`: its name not taken by another key, and the
/// zone's (owned keys, quota) leaving room for one more.
pub(crate) fn check_room(
    name: &str,
    zone: &str,
    name_taken: bool,
    (origin_keys, quota): (usize, usize),
) -> Result<(), Error> {
    if name_taken {
        return Err(Error::NameConflict {
            name: name.to_owned(),
            zone: zone.to_owned(),
        });
    }
    if origin_keys >= quota {
        return Err(Error::QuotaExceeded {
            zone: zone.to_owned(),
            limit: quota,
        });
    }
    Ok(())
}

/// Makes the record of a new key: status enabled, material version 1 (not automatic),
/// automatic rotation every 365 days, revision 1, origin this zone.
///
/// Checks, in order: the name's length, the description's length, the name's uniqueness
/// (`ctx.name_taken`) and the zone's quota.
pub fn create_key(request: &CreateKey, ctx: &CreateContext<'_>) -> Result<KeyRecord, Error> {
    request.validate()?;
    check_room(
        &request.name,
        ctx.zone,
        ctx.name_taken,
        (ctx.origin_keys, ctx.quota),
    )?;
    let now = ctx.now;
    Ok(KeyRecord {
        id: ctx.id,
        name: request.name.clone(),
        description: request.description.clone(),
        usage: KeyUsage::EncryptDecrypt,
        source: KeySource::ExoscaleKms,
        multi_zone: request.multi_zone,
        origin_zone: ctx.zone.to_owned(),
        role: Role::Origin,
        status: Status::Enabled,
        status_since: now,
        created_at: now,
        revision: Revision { seq: 1, at: now },
        materials: vec![MaterialMeta {
            version: 1,
            created_at: now,
            automatic: false,
        }],
        rotation: RotationConfig {
            automatic: true,
            period_days: ROTATION_PERIOD_DEFAULT_DAYS,
            next_at: add_days(now, ROTATION_PERIOD_DEFAULT_DAYS)?,
            manual_count: 0,
        },
        replicas: Vec::new(),
        applied_watermark: 0,
        last_cancel_seq: 0,
        imported_versions: 0,
    })
}

/// Applies `command` to `record` at `now`.
///
/// First, a key whose deletion is due ([`deletion_due`]) is destroyed, whatever the command:
/// from `delete-at` on, the key no longer exists, even if no [`Command::RunDue`] ran yet
/// (the shell then answers key-not-found). Then, when `expected_seq` is given and is not the
/// record's `revision.seq`, nothing is applied and the answer is
/// [`Error::RevisionConflict`], before any other rule. Otherwise the rules of lifecycle.md
/// decide: the result is the new record and what happened, an unchanged key
/// (`already-applied`, or nothing due), the key's destruction, or the error of the rule
/// broken. The record given is never modified.
pub fn apply(
    record: &KeyRecord,
    command: &Command,
    now: Timestamp,
    expected_seq: Option<u64>,
) -> Result<Transition, Error> {
    if deletion_due(record, now) {
        return Ok(Transition::Deleted);
    }
    if let Some(expected) = expected_seq
        && expected != record.revision.seq
    {
        return Err(Error::RevisionConflict {
            id: record.id,
            expected,
            actual: record.revision.seq,
        });
    }
    match command {
        Command::Enable => enable(record, now),
        Command::Disable => disable(record, now),
        Command::ScheduleDeletion { delay } => schedule_deletion(record, *delay, now),
        Command::CancelDeletion => cancel_deletion(record, now),
        Command::Rotate => rotate_manually(record, now),
        Command::EnableRotation { period } => enable_rotation(record, *period, now),
        Command::DisableRotation => disable_rotation(record, now),
        Command::Replicate { zone, known } => replicate(record, zone, *known, now),
        Command::RunDue => run_due(record, now),
        Command::RetireExhausted { version } => retire_exhausted(record, *version, now),
    }
}

/// enable-kms-key.
fn enable(record: &KeyRecord, now: Timestamp) -> Result<Transition, Error> {
    match record.status {
        Status::Enabled => Ok(Transition::Unchanged),
        Status::Disabled => change(record, now, Event::Enabled, |next| {
            set_status(next, Status::Enabled, now);
            Ok(())
        }),
        Status::PendingDeletion { delete_at } => Err(pending(record.id, delete_at)),
    }
}

/// disable-kms-key.
fn disable(record: &KeyRecord, now: Timestamp) -> Result<Transition, Error> {
    match record.status {
        Status::Enabled => change(record, now, Event::Disabled, |next| {
            set_status(next, Status::Disabled, now);
            Ok(())
        }),
        Status::Disabled => Ok(Transition::Unchanged),
        Status::PendingDeletion { delete_at } => Err(pending(record.id, delete_at)),
    }
}

/// schedule-kms-key-deletion.
fn schedule_deletion(
    record: &KeyRecord,
    delay: DeletionDelay,
    now: Timestamp,
) -> Result<Transition, Error> {
    origin_only(record, "schedule-deletion")?;
    if let Status::PendingDeletion { delete_at } = record.status {
        return Err(pending(record.id, delete_at));
    }
    let delete_at = add_days(now, delay.days())?;
    change(
        record,
        now,
        Event::DeletionScheduled { delete_at },
        |next| {
            set_status(next, Status::PendingDeletion { delete_at }, now);
            Ok(())
        },
    )
}

/// cancel-kms-key-deletion: the key becomes disabled.
fn cancel_deletion(record: &KeyRecord, now: Timestamp) -> Result<Transition, Error> {
    origin_only(record, "cancel-deletion")?;
    match record.status {
        Status::PendingDeletion { .. } => change(record, now, Event::DeletionCancelled, |next| {
            set_status(next, Status::Disabled, now);
            next.last_cancel_seq = record.revision.seq.saturating_add(1);
            Ok(())
        }),
        _ => Err(Error::NotPendingDeletion { id: record.id }),
    }
}

/// rotate-kms-key: a manual rotation, at most [`MAX_MANUAL_ROTATIONS`] per key.
fn rotate_manually(record: &KeyRecord, now: Timestamp) -> Result<Transition, Error> {
    origin_only(record, "rotate")?;
    require_enabled(record)?;
    if record.rotation.manual_count >= MAX_MANUAL_ROTATIONS {
        return Err(Error::ManualRotationLimit {
            id: record.id,
            limit: MAX_MANUAL_ROTATIONS,
        });
    }
    rotate(record, now, false, |next| {
        next.rotation.manual_count += 1;
        Ok(())
    })
}

/// enable-kms-key-rotation; a conflict if automatic rotation is already on.
fn enable_rotation(
    record: &KeyRecord,
    period: RotationPeriod,
    now: Timestamp,
) -> Result<Transition, Error> {
    origin_only(record, "enable-key-rotation")?;
    require_enabled(record)?;
    if record.rotation.automatic {
        return Err(Error::Conflict {
            id: record.id,
            reason: ConflictReason::RotationAlreadyEnabled,
        });
    }
    let next_at = add_days(now, period.days())?;
    change(record, now, Event::RotationEnabled, |next| {
        next.rotation.automatic = true;
        next.rotation.period_days = period.days();
        next.rotation.next_at = next_at;
        Ok(())
    })
}

/// disable-kms-key-rotation; a conflict if automatic rotation is already off.
fn disable_rotation(record: &KeyRecord, now: Timestamp) -> Result<Transition, Error> {
    origin_only(record, "disable-key-rotation")?;
    require_enabled(record)?;
    if !record.rotation.automatic {
        return Err(Error::Conflict {
            id: record.id,
            reason: ConflictReason::RotationAlreadyDisabled,
        });
    }
    change(record, now, Event::RotationDisabled, |next| {
        next.rotation.automatic = false;
        Ok(())
    })
}

/// A new version because `version` spent its encryption budget, unless a newer one exists.
fn retire_exhausted(record: &KeyRecord, version: u32, now: Timestamp) -> Result<Transition, Error> {
    origin_only(record, "retire-exhausted-version")?;
    require_enabled(record)?;
    if record.newest_material().version != version {
        // Another call already made a newer version.
        return Ok(Transition::Unchanged);
    }
    rotate(record, now, true, |_| Ok(()))
}

/// replicate-kms-key, in the order of lifecycle.md: a multi-zone key, at its origin, to a
/// known zone other than its own, not twice, neither pending deletion nor disabled.
fn replicate(
    record: &KeyRecord,
    zone: &str,
    known: bool,
    now: Timestamp,
) -> Result<Transition, Error> {
    if !record.multi_zone {
        return Err(Error::NotMultiZone { id: record.id });
    }
    origin_only(record, "replicate")?;
    if zone == record.origin_zone {
        return Err(Error::InvalidArgument {
            field: "zone",
            reason: format!("{} is the key's own zone", Error::quote(zone)),
        });
    }
    if !known {
        return Err(Error::InvalidArgument {
            field: "zone",
            reason: format!("{} is not a known zone", Error::quote(zone)),
        });
    }
    if record.replicas.iter().any(|r| r.zone == zone) {
        return Err(Error::Conflict {
            id: record.id,
            reason: ConflictReason::AlreadyReplicated,
        });
    }
    require_enabled(record)?;
    change(record, now, Event::ReplicaAdded, |next| {
        next.replicas.push(ReplicaZone {
            zone: zone.to_owned(),
            since_seq: record.revision.seq.saturating_add(1),
        });
        Ok(())
    })
}

/// Whether the key's deletion is due at `now`: it is pending deletion with `delete-at <= now`,
/// in its origin zone (a replica's deletion follows its origin). Such a key is destroyed by
/// the first command that reaches it, [`Command::RunDue`] or any other.
#[must_use]
pub fn deletion_due(record: &KeyRecord, now: Timestamp) -> bool {
    record.role == Role::Origin
        && matches!(record.status, Status::PendingDeletion { delete_at } if delete_at <= now)
}

/// Performs the automatic rotation due at `now` (a due deletion was handled by [`apply`]).
/// A replica does nothing by itself: it follows its origin.
fn run_due(record: &KeyRecord, now: Timestamp) -> Result<Transition, Error> {
    if record.role == Role::Replica {
        return Ok(Transition::Unchanged);
    }
    match record.status {
        Status::Enabled if record.rotation.automatic && record.rotation.next_at <= now => {
            let next_at = add_days(now, record.rotation.period_days)?;
            rotate(record, now, true, |next| {
                next.rotation.next_at = next_at;
                Ok(())
            })
        }
        _ => Ok(Transition::Unchanged),
    }
}

/// When [`Command::RunDue`] will next have something to do for this key, if ever in its
/// current state: its `delete-at` while pending deletion, its `next-at` while enabled with
/// automatic rotation on. A disabled key has nothing due; once enabled again, a `next-at`
/// already past is due at once (as AWS KMS does). Replicas have nothing due of their own.
#[must_use]
pub fn next_due(record: &KeyRecord) -> Option<Timestamp> {
    if record.role == Role::Replica {
        return None;
    }
    match record.status {
        Status::PendingDeletion { delete_at } => Some(delete_at),
        Status::Enabled if record.rotation.automatic => Some(record.rotation.next_at),
        _ => None,
    }
}

/// Whether a key in `status` may encrypt, decrypt, re-encrypt and generate data keys:
/// only when enabled, whatever its role.
pub fn check_crypto(id: KeyId, status: Status) -> Result<(), Error> {
    match status {
        Status::Enabled => Ok(()),
        Status::Disabled => Err(Error::KeyDisabled { id }),
        Status::PendingDeletion { delete_at } => Err(pending(id, delete_at)),
    }
}

fn pending(id: KeyId, delete_at: Timestamp) -> Error {
    Error::KeyPendingDeletion { id, delete_at }
}

fn origin_only(record: &KeyRecord, operation: &'static str) -> Result<(), Error> {
    match record.role {
        Role::Origin => Ok(()),
        Role::Replica => Err(Error::NotOnReplica {
            id: record.id,
            origin_zone: record.origin_zone.clone(),
            operation,
        }),
    }
}

fn require_enabled(record: &KeyRecord) -> Result<(), Error> {
    check_crypto(record.id, record.status)
}

fn set_status(record: &mut KeyRecord, status: Status, now: Timestamp) {
    record.status = status;
    record.status_since = now;
}

/// A copy of `record` changed by `edit`, with the next revision.
fn change(
    record: &KeyRecord,
    now: Timestamp,
    event: Event,
    edit: impl FnOnce(&mut KeyRecord) -> Result<(), Error>,
) -> Result<Transition, Error> {
    let mut next = record.clone();
    edit(&mut next)?;
    next.revision = Revision {
        seq: record.revision.seq.checked_add(1).ok_or(Error::Conflict {
            id: record.id,
            reason: ConflictReason::RevisionsExhausted,
        })?,
        at: now,
    };
    Ok(Transition::Changed {
        record: Box::new(next),
        event,
    })
}

/// A copy of `record` with one more material version, changed further by `edit`.
fn rotate(
    record: &KeyRecord,
    now: Timestamp,
    automatic: bool,
    edit: impl FnOnce(&mut KeyRecord) -> Result<(), Error>,
) -> Result<Transition, Error> {
    let version = record
        .newest_material()
        .version
        .checked_add(1)
        .ok_or(Error::Conflict {
            id: record.id,
            reason: ConflictReason::VersionsExhausted,
        })?;
    change(record, now, Event::Rotated { version, automatic }, |next| {
        next.materials.push(MaterialMeta {
            version,
            created_at: now,
            automatic,
        });
        edit(next)
    })
}
