//! Tests of the replication rules (replicate-key in `apply`, `snapshot`, `follow`).
//!
//! Against docs lifecycle.md, "Multi-zone replication" and the "replica key" columns of its
//! tables: replicate-key's checks and their order, the `last_cancel_seq` that cancel-deletion
//! records, what a snapshot carries, and how a replica follows snapshots delivered late,
//! twice or out of order.

use jiff::{SignedDuration, Timestamp};

use super::replication::{
    Follow, FollowContext, LiveKey, Snapshot, SnapshotBody, deletion_snapshot, follow, snapshot,
};
use super::tests::{changed, changed_with_event};
use super::*;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The origin zone of the keys replicated here.
const ORIGIN: &str = "de-fra-1";
/// The zone receiving snapshots (and the usual replication target).
const HERE: &str = "ch-gva-2";
/// A third zone.
const OTHER: &str = "at-vie-1";

/// The time keys are created at.
fn t0() -> Timestamp {
    "2026-01-01T00:00:00Z".parse::<Timestamp>().unwrap()
}

/// Replica zones, each with the origin revision that added it.
fn zones(list: &[(&str, u64)]) -> Vec<ReplicaZone> {
    list.iter()
        .map(|(zone, since_seq)| ReplicaZone {
            zone: (*zone).to_owned(),
            since_seq: *since_seq,
        })
        .collect()
}

/// `t0` plus `n` days.
fn day(n: i64) -> Timestamp {
    t0() + SignedDuration::from_hours(n * 24)
}

fn key_id() -> KeyId {
    KeyId::parse("0190b6a4-2a3c-7d4e-8f00-112233445566").unwrap()
}

fn delay(n: u32) -> DeletionDelay {
    DeletionDelay::new(n).unwrap()
}

fn period(n: u32) -> RotationPeriod {
    RotationPeriod::new(n).unwrap()
}

/// A multi-zone key fresh from `create_key` in zone `ORIGIN`: enabled, revision 1, no replicas.
fn origin() -> KeyRecord {
    let request = CreateKey::new("backups")
        .description("nightly backups")
        .multi_zone(true);
    let ctx = CreateContext {
        id: key_id(),
        zone: ORIGIN,
        now: t0(),
        origin_keys: 0,
        quota: 1000,
        name_taken: false,
    };
    create_key(&request, &ctx).unwrap()
}

fn with_status(mut record: KeyRecord, status: Status) -> KeyRecord {
    record.status = status;
    record
}

fn pending_delete_at() -> Timestamp {
    day(30)
}

fn pending_status() -> Status {
    Status::PendingDeletion {
        delete_at: pending_delete_at(),
    }
}

/// `record` as this zone's replica of it.
fn as_replica(mut record: KeyRecord) -> KeyRecord {
    record.role = Role::Replica;
    record
}

/// The replicate command to a known `zone`.
fn replicate_to(zone: &str) -> Command {
    Command::Replicate {
        zone: zone.to_owned(),
        known: true,
    }
}

/// Applies `command` at `at` without an expected revision, checking that the input record is
/// left as it was.
fn run(record: &KeyRecord, command: &Command, at: Timestamp) -> Result<Transition, Error> {
    let before = record.clone();
    let result = apply(record, command, at, None);
    assert_eq!(*record, before, "apply modified its input record");
    result
}

/// The receiving context in zone `HERE` at `now`.
fn here(now: Timestamp) -> FollowContext<'static> {
    FollowContext {
        zone: HERE,
        now,
        name_taken: false,
    }
}

/// The record of a `Follow::Write`; panics on anything else.
fn written(result: Result<Follow, Error>) -> KeyRecord {
    match result {
        Ok(Follow::Write(record)) => *record,
        other => panic!("expected Follow::Write, got {other:?}"),
    }
}

/// The live body of a snapshot; panics on a deletion.
fn live(snapshot: &Snapshot) -> &LiveKey {
    match &snapshot.body {
        SnapshotBody::Live(live) => live,
        SnapshotBody::Deleted => panic!("expected a live snapshot, got {snapshot:?}"),
    }
}

fn material(version: u32, at: Timestamp, automatic: bool) -> MaterialMeta {
    MaterialMeta {
        version,
        created_at: at,
        automatic,
    }
}

/// An origin snapshot at `seq` whose every replicated field differs from `origin()`'s:
/// three material versions, other rotation settings, two replica zones, a past cancellation.
fn rich_snapshot(seq: u64) -> Snapshot {
    Snapshot {
        id: key_id(),
        origin_zone: ORIGIN.to_owned(),
        seq,
        body: SnapshotBody::Live(LiveKey {
            name: "archives".to_owned(),
            description: Some("cold archives".to_owned()),
            usage: KeyUsage::EncryptDecrypt,
            source: KeySource::ExoscaleKms,
            created_at: day(-100),
            materials: vec![
                material(1, day(-100), false),
                material(2, day(-50), false),
                material(3, day(-5), true),
            ],
            rotation: RotationConfig {
                automatic: false,
                period_days: 90,
                next_at: day(40),
                manual_count: 1,
            },
            delete_at: None,
            last_cancel_seq: 0,
            replicas: zones(&[(HERE, 2), (OTHER, 3)]),
            imported_versions: 2,
        }),
    }
}

/// `snapshot` with its live body edited by `edit`.
fn edited(mut snapshot: Snapshot, edit: impl FnOnce(&mut LiveKey)) -> Snapshot {
    match &mut snapshot.body {
        SnapshotBody::Live(live) => edit(live),
        SnapshotBody::Deleted => panic!("cannot edit a deletion snapshot"),
    }
    snapshot
}

/// A replica of `origin()` held in `HERE`: created at `t0`, its own revision 3 (at day 1,
/// like its `status_since`), having applied origin revision 5, with `origin()`'s
/// replicated fields and `status`.
fn replica(status: Status) -> KeyRecord {
    let mut record = as_replica(origin());
    record.replicas = zones(&[(HERE, 2)]);
    record.status = status;
    record.status_since = day(1);
    record.revision = Revision { seq: 3, at: day(1) };
    record.applied_watermark = 5;
    record
}

// ---------------------------------------------------------------------------------------------
// replicate-key
// ---------------------------------------------------------------------------------------------

#[test]
fn replicate_requires_a_multi_zone_key() {
    let mut record = origin();
    record.multi_zone = false;
    let err = run(&record, &replicate_to(HERE), day(1)).unwrap_err();
    assert_eq!(err, Error::NotMultiZone { id: key_id() });
    assert_eq!(err.code(), "not-multi-zone");
}

#[test]
fn replicate_on_a_replica_is_not_on_replica() {
    let record = replica(Status::Enabled);
    assert_eq!(
        run(&record, &replicate_to(OTHER), day(2)),
        Err(Error::NotOnReplica {
            id: key_id(),
            origin_zone: ORIGIN.to_owned(),
            operation: "replicate",
        })
    );
}

#[test]
fn replicate_to_the_key_own_zone_is_invalid_argument() {
    // Known or not to the link, the key's own zone is refused as such: "other than its own"
    // is checked before "known", and the message names that rule either way.
    let reasons: Vec<String> = [true, false]
        .into_iter()
        .map(|known| {
            let command = Command::Replicate {
                zone: ORIGIN.to_owned(),
                known,
            };
            match run(&origin(), &command, day(1)).unwrap_err() {
                Error::InvalidArgument { field, reason } => {
                    assert_eq!(field, "zone");
                    assert!(reason.contains(ORIGIN), "{reason:?} does not name the zone");
                    reason
                }
                other => panic!("expected InvalidArgument on zone, got {other:?}"),
            }
        })
        .collect();
    assert_eq!(reasons[0], reasons[1]);
}

#[test]
fn replicate_to_an_unknown_zone_is_invalid_argument() {
    let command = Command::Replicate {
        zone: "xx-nowhere-9".to_owned(),
        known: false,
    };
    let err = run(&origin(), &command, day(1)).unwrap_err();
    assert_eq!(err.code(), "invalid-argument");
    match err {
        Error::InvalidArgument { field, reason } => {
            assert_eq!(field, "zone");
            assert!(reason.contains("xx-nowhere-9"), "{reason:?}");
        }
        other => panic!("expected InvalidArgument on zone, got {other:?}"),
    }
}

#[test]
fn replicate_twice_to_a_zone_is_conflict() {
    let once = changed(run(&origin(), &replicate_to(HERE), day(1)).unwrap());
    let err = run(&once, &replicate_to(HERE), day(2)).unwrap_err();
    assert!(
        matches!(err, Error::Conflict { id, .. } if id == key_id()),
        "{err:?}"
    );
    assert_eq!(err.http_status(), 409);
    // Among several replicas too.
    let twice = changed(run(&once, &replicate_to(OTHER), day(2)).unwrap());
    assert!(matches!(
        run(&twice, &replicate_to(HERE), day(3)),
        Err(Error::Conflict { .. })
    ));
}

#[test]
fn replicate_pending_deletion_is_refused() {
    let record = with_status(origin(), pending_status());
    assert_eq!(
        run(&record, &replicate_to(HERE), day(1)),
        Err(Error::KeyPendingDeletion {
            id: key_id(),
            delete_at: pending_delete_at(),
        })
    );
}

#[test]
fn replicate_disabled_is_refused() {
    let record = with_status(origin(), Status::Disabled);
    assert_eq!(
        run(&record, &replicate_to(HERE), day(1)),
        Err(Error::KeyDisabled { id: key_id() })
    );
}

#[test]
fn replicate_appends_the_zone_and_changes_nothing_else() {
    let mut before = origin();
    before.replicas = zones(&[(OTHER, 2)]);
    before.revision = Revision { seq: 4, at: day(1) };
    before.last_cancel_seq = 2;
    let (after, event) = changed_with_event(run(&before, &replicate_to(HERE), day(3)).unwrap());
    assert_eq!(event, Event::ReplicaAdded);
    let mut expected = before.clone();
    expected.replicas = zones(&[(OTHER, 2), (HERE, 5)]);
    expected.revision = Revision { seq: 5, at: day(3) };
    assert_eq!(after, expected);
}

#[test]
fn replicate_checks_in_the_documented_order() {
    // Each case breaks the rule it expects and some later ones: the first broken rule of
    // "multi-zone, origin, own zone, known zone, not twice, not pending, not disabled" wins.
    let not_multi_zone = |mut r: KeyRecord| {
        r.multi_zone = false;
        r
    };
    let replicated_here = |mut r: KeyRecord| {
        r.replicas = zones(&[(HERE, 2)]);
        r
    };
    let unknown_here = Command::Replicate {
        zone: HERE.to_owned(),
        known: false,
    };
    let unknown_own = Command::Replicate {
        zone: ORIGIN.to_owned(),
        known: false,
    };
    let cases: Vec<(&str, KeyRecord, Command, &str)> = vec![
        (
            "not multi-zone, disabled",
            not_multi_zone(with_status(origin(), Status::Disabled)),
            replicate_to(HERE),
            "not-multi-zone",
        ),
        (
            "not multi-zone, replica, unknown own zone, twice, pending",
            not_multi_zone(replicated_here(as_replica(with_status(
                origin(),
                pending_status(),
            )))),
            unknown_own.clone(),
            "not-multi-zone",
        ),
        (
            "replica, own zone, disabled",
            as_replica(with_status(origin(), Status::Disabled)),
            replicate_to(ORIGIN),
            "not-on-replica",
        ),
        (
            "replica, unknown zone, twice, pending",
            replicated_here(as_replica(with_status(origin(), pending_status()))),
            unknown_here.clone(),
            "not-on-replica",
        ),
        (
            "own zone, disabled",
            with_status(origin(), Status::Disabled),
            replicate_to(ORIGIN),
            "invalid-argument",
        ),
        (
            "unknown zone, disabled",
            with_status(origin(), Status::Disabled),
            unknown_here.clone(),
            "invalid-argument",
        ),
        (
            "unknown zone, twice, pending",
            replicated_here(with_status(origin(), pending_status())),
            unknown_here,
            "invalid-argument",
        ),
        (
            "twice, pending",
            replicated_here(with_status(origin(), pending_status())),
            replicate_to(HERE),
            "conflict",
        ),
        (
            "twice, disabled",
            replicated_here(with_status(origin(), Status::Disabled)),
            replicate_to(HERE),
            "conflict",
        ),
    ];
    for (case, record, command, code) in cases {
        // Before the deletion is due, so that the key still exists.
        let err = run(&record, &command, day(2)).unwrap_err();
        assert_eq!(err.code(), code, "{case}: {err:?}");
    }
}

#[test]
fn replicate_expected_seq_mismatch_is_revision_conflict_first() {
    let at_seq_5 = |mut r: KeyRecord| {
        r.revision.seq = 5;
        r
    };
    let mut not_multi_zone = origin();
    not_multi_zone.multi_zone = false;
    let cases: Vec<(&str, KeyRecord, Command)> = vec![
        ("would succeed", origin(), replicate_to(HERE)),
        (
            "would be not multi-zone",
            not_multi_zone,
            replicate_to(HERE),
        ),
        (
            "would be not on replica",
            as_replica(origin()),
            replicate_to(HERE),
        ),
        ("would be own zone", origin(), replicate_to(ORIGIN)),
        (
            "would be unknown zone",
            origin(),
            Command::Replicate {
                zone: OTHER.to_owned(),
                known: false,
            },
        ),
        (
            "would be disabled",
            with_status(origin(), Status::Disabled),
            replicate_to(HERE),
        ),
        (
            "would be pending",
            with_status(origin(), pending_status()),
            replicate_to(HERE),
        ),
    ];
    for (case, record, command) in cases {
        let record = at_seq_5(record);
        for expected in [0, 4, 6] {
            assert_eq!(
                apply(&record, &command, day(2), Some(expected)),
                Err(Error::RevisionConflict {
                    id: key_id(),
                    expected,
                    actual: 5,
                }),
                "{case}, expected {expected}"
            );
        }
    }
    // The matching revision applies.
    let record = at_seq_5(origin());
    let after = changed(apply(&record, &replicate_to(HERE), day(2), Some(5)).unwrap());
    assert_eq!(after.revision.seq, 6);
    assert_eq!(after.replicas, zones(&[(HERE, 6)]));
}

// ---------------------------------------------------------------------------------------------
// last_cancel_seq
// ---------------------------------------------------------------------------------------------

#[test]
fn cancel_deletion_sets_last_cancel_seq_to_the_new_revision() {
    let mut before = with_status(origin(), pending_status());
    before.revision = Revision { seq: 7, at: day(1) };
    before.last_cancel_seq = 3;
    let (after, event) =
        changed_with_event(run(&before, &Command::CancelDeletion, day(2)).unwrap());
    assert_eq!(event, Event::DeletionCancelled);
    assert_eq!(after.last_cancel_seq, after.revision.seq);
    let mut expected = before.clone();
    expected.status = Status::Disabled;
    expected.status_since = day(2);
    expected.revision = Revision { seq: 8, at: day(2) };
    expected.last_cancel_seq = 8;
    assert_eq!(after, expected);
}

#[test]
fn other_changes_leave_last_cancel_seq_alone() {
    let base = |status: Status| {
        let mut r = with_status(origin(), status);
        r.revision.seq = 6;
        r.last_cancel_seq = 4;
        r
    };
    let mut no_auto = base(Status::Enabled);
    no_auto.rotation.automatic = false;
    let cases: Vec<(&str, KeyRecord, Command, Timestamp)> = vec![
        ("enable", base(Status::Disabled), Command::Enable, day(1)),
        ("disable", base(Status::Enabled), Command::Disable, day(1)),
        (
            "schedule-deletion",
            base(Status::Disabled),
            Command::ScheduleDeletion { delay: delay(7) },
            day(1),
        ),
        ("rotate", base(Status::Enabled), Command::Rotate, day(1)),
        (
            "enable-key-rotation",
            no_auto,
            Command::EnableRotation { period: period(90) },
            day(1),
        ),
        (
            "disable-key-rotation",
            base(Status::Enabled),
            Command::DisableRotation,
            day(1),
        ),
        (
            "replicate",
            base(Status::Enabled),
            replicate_to(HERE),
            day(1),
        ),
        ("run-due", base(Status::Enabled), Command::RunDue, day(400)),
        (
            "retire-exhausted",
            base(Status::Enabled),
            Command::RetireExhausted { version: 1 },
            day(1),
        ),
    ];
    for (case, record, command, at) in cases {
        let after = changed(run(&record, &command, at).unwrap());
        assert_eq!(after.revision.seq, 7, "{case}");
        assert_eq!(after.last_cancel_seq, 4, "{case}");
    }
}

// ---------------------------------------------------------------------------------------------
// snapshot and deletion_snapshot
// ---------------------------------------------------------------------------------------------

#[test]
fn snapshot_carries_every_replicated_field() {
    let mut record = origin();
    record.name = "archives".to_owned();
    record.description = Some("cold archives".to_owned());
    record.created_at = day(-100);
    record.materials = vec![
        material(1, day(-100), false),
        material(2, day(-50), false),
        material(3, day(-5), true),
    ];
    record.rotation = RotationConfig {
        automatic: false,
        period_days: 90,
        next_at: day(40),
        manual_count: 1,
    };
    record.replicas = zones(&[(HERE, 2), (OTHER, 3)]);
    record.revision = Revision { seq: 9, at: day(3) };
    record.last_cancel_seq = 6;
    record.imported_versions = 2;
    record.status = Status::PendingDeletion { delete_at: day(20) };
    record.status_since = day(3);
    assert_eq!(
        snapshot(&record),
        edited(rich_snapshot(9), |live| {
            live.delete_at = Some(day(20));
            live.last_cancel_seq = 6;
        })
    );
    // A key without a scheduled deletion carries none.
    record.status = Status::Enabled;
    assert_eq!(live(&snapshot(&record)).delete_at, None);
}

#[test]
fn snapshot_does_not_carry_enable_or_disable() {
    let mut enabled = origin();
    enabled.replicas = zones(&[(HERE, 2)]);
    enabled.revision = Revision { seq: 4, at: day(1) };
    let mut disabled = with_status(enabled.clone(), Status::Disabled);
    disabled.status_since = day(2);
    disabled.revision.at = day(2);
    let snap = snapshot(&enabled);
    assert_eq!(snap.seq, 4);
    assert_eq!(snapshot(&disabled), snap);
    assert_eq!(live(&snap).delete_at, None);
}

#[test]
fn deletion_snapshot_is_one_revision_after_the_last() {
    let mut record = with_status(origin(), pending_status());
    record.revision.seq = 9;
    assert_eq!(
        deletion_snapshot(&record),
        Snapshot {
            id: key_id(),
            origin_zone: ORIGIN.to_owned(),
            seq: 10,
            body: SnapshotBody::Deleted,
        }
    );
}

// ---------------------------------------------------------------------------------------------
// follow: a first snapshot
// ---------------------------------------------------------------------------------------------

#[test]
fn follow_without_a_replica_creates_one() {
    let snap = edited(rich_snapshot(9), |live| live.last_cancel_seq = 0);
    let record = written(follow(None, &snap, &here(day(4))));
    assert_eq!(
        record,
        KeyRecord {
            id: key_id(),
            name: "archives".to_owned(),
            description: Some("cold archives".to_owned()),
            usage: KeyUsage::EncryptDecrypt,
            source: KeySource::ExoscaleKms,
            multi_zone: true,
            origin_zone: ORIGIN.to_owned(),
            role: Role::Replica,
            status: Status::Enabled,
            status_since: day(4),
            created_at: day(-100),
            revision: Revision { seq: 1, at: day(4) },
            materials: live(&snap).materials.clone(),
            rotation: live(&snap).rotation,
            replicas: zones(&[(HERE, 2), (OTHER, 3)]),
            applied_watermark: 9,
            last_cancel_seq: 0,
            imported_versions: 2,
        }
    );
    // Every replicated field of the snapshot is the replica's.
    assert_eq!(snapshot(&record).body, snap.body);
}

#[test]
fn follow_without_a_replica_of_a_key_pending_deletion_creates_it_pending() {
    let snap = edited(rich_snapshot(9), |live| {
        live.delete_at = Some(day(20));
        live.last_cancel_seq = 4;
    });
    let record = written(follow(None, &snap, &here(day(4))));
    assert_eq!(
        record.status,
        Status::PendingDeletion { delete_at: day(20) }
    );
    assert_eq!(record.status_since, day(4));
    assert_eq!(record.revision, Revision { seq: 1, at: day(4) });
    assert_eq!(record.applied_watermark, 9);
    assert_eq!(record.last_cancel_seq, 4);
    assert_eq!(snapshot(&record).body, snap.body);
}

#[test]
fn follow_without_a_replica_whose_name_is_taken_is_name_conflict() {
    let ctx = FollowContext {
        name_taken: true,
        ..here(day(4))
    };
    let err = follow(None, &rich_snapshot(9), &ctx).unwrap_err();
    assert_eq!(
        err,
        Error::NameConflict {
            name: "archives".to_owned(),
            zone: HERE.to_owned(),
        }
    );
}

#[test]
fn follow_a_snapshot_from_this_zone_is_conflict() {
    let mut snap = rich_snapshot(9);
    snap.origin_zone = HERE.to_owned();
    let deleted = Snapshot {
        body: SnapshotBody::Deleted,
        ..snap.clone()
    };
    let current = replica(Status::Enabled);
    for (case, current, snap) in [
        ("no record", None, &snap),
        ("a replica", Some(&current), &snap),
        ("deletion, no record", None, &deleted),
        ("deletion, a replica", Some(&current), &deleted),
    ] {
        assert!(
            matches!(
                follow(current, snap, &here(day(4))),
                Err(Error::Conflict { id, .. }) if id == key_id()
            ),
            "{case}"
        );
    }
}

#[test]
fn follow_onto_an_origin_key_is_conflict() {
    // This zone owns a key with that id: no snapshot changes or destroys it.
    let mut own = origin();
    own.origin_zone = HERE.to_owned();
    let deleted = Snapshot {
        body: SnapshotBody::Deleted,
        ..rich_snapshot(9)
    };
    for snap in [rich_snapshot(9), deleted] {
        assert!(
            matches!(
                follow(Some(&own), &snap, &here(day(4))),
                Err(Error::Conflict { .. })
            ),
            "{snap:?}"
        );
    }
}

#[test]
fn follow_from_another_origin_than_the_replicas_is_conflict() {
    // A zone naming itself the origin of another zone's key may neither update nor destroy
    // the replica, however new its revision.
    let current = replica(Status::Enabled);
    let mut live = rich_snapshot(u64::MAX);
    live.origin_zone = "zz-other-1".to_owned();
    let deleted = Snapshot {
        body: SnapshotBody::Deleted,
        ..live.clone()
    };
    for snap in [live, deleted] {
        assert_eq!(
            follow(Some(&current), &snap, &here(day(4))),
            Err(Error::Conflict {
                id: current.id,
                reason: ConflictReason::OtherOrigin,
            }),
            "{snap:?}"
        );
    }
    // From its own origin, the same snapshot is followed.
    assert!(follow(Some(&current), &rich_snapshot(9), &here(day(4))).is_ok());
}

// ---------------------------------------------------------------------------------------------
// follow: a replica's later snapshots
// ---------------------------------------------------------------------------------------------

#[test]
fn follow_snapshot_not_newer_than_the_watermark_is_stale() {
    let current = replica(Status::Enabled);
    for seq in [5, 4, 1] {
        assert_eq!(
            follow(Some(&current), &rich_snapshot(seq), &here(day(4))),
            Ok(Follow::Stale),
            "seq {seq}"
        );
    }
    // Stale wins over the other rules: a late snapshot is not checked further.
    let ctx = FollowContext {
        name_taken: true,
        ..here(day(4))
    };
    let fewer = edited(rich_snapshot(5), |live| live.materials.truncate(0));
    assert_eq!(follow(Some(&current), &fewer, &ctx), Ok(Follow::Stale));
}

#[test]
fn follow_newer_snapshot_replaces_replicated_fields_and_raises_the_replica_own_revision() {
    let current = replica(Status::Enabled);
    let snap = rich_snapshot(6);
    let after = written(follow(Some(&current), &snap, &here(day(4))));
    let mut expected = current.clone();
    expected.name = "archives".to_owned();
    expected.description = Some("cold archives".to_owned());
    expected.created_at = day(-100);
    expected.materials = live(&snap).materials.clone();
    expected.rotation = live(&snap).rotation;
    expected.replicas = zones(&[(HERE, 2), (OTHER, 3)]);
    expected.revision = Revision { seq: 4, at: day(4) };
    expected.applied_watermark = 6;
    expected.imported_versions = 2;
    assert_eq!(after, expected);
    // The replica's revision counts its own changes, not the origin's.
    let far = written(follow(Some(&current), &rich_snapshot(60), &here(day(4))));
    assert_eq!(far.revision, Revision { seq: 4, at: day(4) });
    assert_eq!(far.applied_watermark, 60);
}

#[test]
fn follow_keeps_the_replica_own_enabled_or_disabled_status() {
    for status in [Status::Enabled, Status::Disabled] {
        let current = replica(status);
        let after = written(follow(Some(&current), &rich_snapshot(8), &here(day(4))));
        assert_eq!(after.status, status);
        assert_eq!(after.status_since, day(1), "{status:?}: status_since moved");
    }
}

#[test]
fn follow_scheduled_deletion_makes_the_replica_pending() {
    let snap = edited(rich_snapshot(8), |live| live.delete_at = Some(day(20)));
    for status in [Status::Enabled, Status::Disabled, pending_status()] {
        let after = written(follow(Some(&replica(status)), &snap, &here(day(4))));
        assert_eq!(
            after.status,
            Status::PendingDeletion { delete_at: day(20) },
            "{status:?}"
        );
        assert_eq!(after.status_since, day(4), "{status:?}");
    }
    // Already pending at that very time: the status did not change, nor its start.
    let same = replica(Status::PendingDeletion { delete_at: day(20) });
    let after = written(follow(Some(&same), &snap, &here(day(4))));
    assert_eq!(after.status, same.status);
    assert_eq!(after.status_since, day(1));
}

#[test]
fn follow_pending_replica_whose_origin_is_no_longer_pending_becomes_disabled() {
    // Whether or not the snapshot's cancellation is newer than the replica's watermark.
    for last_cancel_seq in [0, 5, 6] {
        let snap = edited(rich_snapshot(6), |live| {
            live.last_cancel_seq = last_cancel_seq
        });
        let after = written(follow(
            Some(&replica(pending_status())),
            &snap,
            &here(day(4)),
        ));
        assert_eq!(
            after.status,
            Status::Disabled,
            "cancel at {last_cancel_seq}"
        );
        assert_eq!(after.status_since, day(4));
        assert_eq!(after.last_cancel_seq, last_cancel_seq);
    }
}

#[test]
fn follow_missed_schedule_and_cancel_disables_an_enabled_replica() {
    // The replica applied revision 5 and missed 6 (scheduled) and 7 (cancelled).
    let snap = edited(rich_snapshot(8), |live| live.last_cancel_seq = 7);
    let after = written(follow(
        Some(&replica(Status::Enabled)),
        &snap,
        &here(day(4)),
    ));
    assert_eq!(after.status, Status::Disabled);
    assert_eq!(after.status_since, day(4));
    assert_eq!(after.last_cancel_seq, 7);
    // Just past the watermark is missed too.
    let snap = edited(rich_snapshot(8), |live| live.last_cancel_seq = 6);
    let after = written(follow(
        Some(&replica(Status::Enabled)),
        &snap,
        &here(day(4)),
    ));
    assert_eq!(after.status, Status::Disabled);
    // A disabled replica stays disabled, since the same time.
    let after = written(follow(
        Some(&replica(Status::Disabled)),
        &snap,
        &here(day(4)),
    ));
    assert_eq!(after.status, Status::Disabled);
    assert_eq!(after.status_since, day(1));
}

#[test]
fn follow_cancellation_already_applied_keeps_the_replica_own_status() {
    // The replica applied the cancellation (revision 5 or earlier) and was enabled since.
    for last_cancel_seq in [5, 4, 1] {
        let snap = edited(rich_snapshot(8), |live| {
            live.last_cancel_seq = last_cancel_seq
        });
        let after = written(follow(
            Some(&replica(Status::Enabled)),
            &snap,
            &here(day(4)),
        ));
        assert_eq!(after.status, Status::Enabled, "cancel at {last_cancel_seq}");
        assert_eq!(after.status_since, day(1));
    }
}

#[test]
fn follow_snapshot_with_fewer_material_versions_is_conflict() {
    let mut current = replica(Status::Enabled);
    current.materials = vec![
        material(1, t0(), false),
        material(2, day(1), false),
        material(3, day(2), false),
        material(4, day(3), false),
    ];
    let err = follow(Some(&current), &rich_snapshot(8), &here(day(4))).unwrap_err();
    assert!(
        matches!(err, Error::Conflict { id, .. } if id == key_id()),
        "{err:?}"
    );
    // As many versions is fine.
    current.materials.truncate(3);
    written(follow(Some(&current), &rich_snapshot(8), &here(day(4))));
}

#[test]
fn follow_deletion_destroys_the_replica() {
    let mut gone = with_status(origin(), pending_status());
    gone.revision.seq = 9;
    let snap = deletion_snapshot(&gone);
    for status in [Status::Enabled, Status::Disabled, pending_status()] {
        assert_eq!(
            follow(Some(&replica(status)), &snap, &here(day(4))),
            Ok(Follow::Delete),
            "{status:?}"
        );
    }
    // A zone that never held the key remembers that it is gone.
    assert_eq!(follow(None, &snap, &here(day(4))), Ok(Follow::Delete));
    // Even where another key has its name: nothing is created.
    let ctx = FollowContext {
        name_taken: true,
        ..here(day(4))
    };
    assert_eq!(follow(None, &snap, &ctx), Ok(Follow::Delete));
}

// ---------------------------------------------------------------------------------------------
// Sequences: any delivery order ends in the same replica
// ---------------------------------------------------------------------------------------------

/// Delivers `snapshots` in that order to `replica`, one day apart from `start`; every
/// snapshot is either stale or written, and a written one raises the replica's revision by 1.
fn deliver(mut replica: KeyRecord, snapshots: &[&Snapshot], start: Timestamp) -> KeyRecord {
    for (i, snap) in snapshots.iter().enumerate() {
        let at = start + SignedDuration::from_hours(24 * i64::try_from(i).unwrap());
        match follow(Some(&replica), snap, &here(at)).unwrap() {
            Follow::Stale => assert!(
                snap.seq <= replica.applied_watermark,
                "newer snapshot {} ignored",
                snap.seq
            ),
            Follow::Write(next) => {
                assert!(
                    snap.seq > replica.applied_watermark,
                    "stale {snap:?} applied"
                );
                assert_eq!(next.revision.seq, replica.revision.seq + 1);
                replica = *next;
            }
            Follow::Delete => panic!("live snapshot {snap:?} deleted the replica"),
        }
    }
    replica
}

/// The origin's history: a multi-zone key replicated to `HERE` (the first snapshot, which
/// creates the replica), then one origin command per step, with the expected status of a
/// replica that never changed its own status.
fn origin_history() -> (Snapshot, Vec<(&'static str, Snapshot, Status)>) {
    let steps: Vec<(&str, Command, Option<Status>)> = vec![
        ("rotate", Command::Rotate, None),
        ("disable-key-rotation", Command::DisableRotation, None),
        (
            "schedule-deletion",
            Command::ScheduleDeletion { delay: delay(7) },
            Some(Status::PendingDeletion { delete_at: day(11) }),
        ),
        (
            "cancel-deletion",
            Command::CancelDeletion,
            Some(Status::Disabled),
        ),
        ("enable", Command::Enable, None),
        (
            "enable-key-rotation",
            Command::EnableRotation { period: period(90) },
            None,
        ),
        ("replicate", replicate_to(OTHER), None),
        ("rotate again", Command::Rotate, None),
        ("disable", Command::Disable, None),
        (
            "schedule-deletion again",
            Command::ScheduleDeletion { delay: delay(7) },
            Some(Status::PendingDeletion { delete_at: day(18) }),
        ),
    ];
    let mut record = changed(run(&origin(), &replicate_to(HERE), day(1)).unwrap());
    let first = snapshot(&record);
    let mut status = Status::Enabled;
    let mut history = Vec::new();
    for (i, (case, command, replica_status)) in steps.into_iter().enumerate() {
        let at = day(2 + i64::try_from(i).unwrap());
        record = changed(run(&record, &command, at).unwrap_or_else(|e| panic!("{case}: {e}")));
        if let Some(replica_status) = replica_status {
            status = replica_status;
        }
        history.push((case, snapshot(&record), status));
    }
    (first, history)
}

#[test]
fn replica_ends_the_same_whatever_the_delivery_order() {
    let (first, history) = origin_history();
    let start = written(follow(None, &first, &here(day(1))));
    assert_eq!(start.status, Status::Enabled);
    // Every prefix of the history, delivered in several orders after the first snapshot.
    for end in 1..=history.len() {
        let snaps: Vec<&Snapshot> = history[..end].iter().map(|(_, s, _)| s).collect();
        let (case, last, status) = &history[end - 1];
        let in_order = snaps.clone();
        let reverse: Vec<&Snapshot> = snaps.iter().rev().copied().collect();
        let duplicates: Vec<&Snapshot> = snaps
            .iter()
            .enumerate()
            .flat_map(|(i, s)| [*s, *s, snaps[i / 2]])
            .chain([snaps[0], last])
            .collect();
        let only_last = vec![last];
        let odd_then_even: Vec<&Snapshot> = snaps
            .iter()
            .skip(1)
            .step_by(2)
            .chain(snaps.iter().step_by(2))
            .copied()
            .collect();
        let orders = [
            ("in order", in_order),
            ("reverse", reverse),
            ("duplicates", duplicates),
            ("only the last", only_last),
            ("odd then even", odd_then_even),
        ];
        for (order, deliveries) in orders {
            let replica = deliver(start.clone(), &deliveries, day(40));
            let what = format!("after {case}, delivered {order}");
            // Every replicated field is the origin's latest.
            assert_eq!(snapshot(&replica).body, last.body, "{what}");
            assert_eq!(replica.applied_watermark, last.seq, "{what}");
            assert_eq!(replica.status, *status, "{what}");
            assert_eq!(replica.status.delete_at(), live(last).delete_at, "{what}");
            assert_eq!(replica.role, Role::Replica, "{what}");
            assert_eq!(replica.origin_zone, ORIGIN, "{what}");
        }
    }
    // The last state in detail: three material versions, rotation every 90 days, two
    // replicas, pending deletion, and the cancellation remembered.
    let (_, last, _) = history.last().unwrap();
    let live = live(last);
    assert_eq!(live.materials.len(), 3);
    assert_eq!(live.rotation.period_days, 90);
    assert!(live.rotation.automatic);
    assert_eq!(live.replicas, zones(&[(HERE, 2), (OTHER, 9)]));
    assert_eq!(live.delete_at, Some(day(18)));
    assert_eq!(live.last_cancel_seq, 6);
}

/// lifecycle.md: "Rotations, rotation settings, scheduled deletion, cancellation (the replica
/// becomes disabled) and final deletion follow the origin", and "no change of the origin is
/// ever skipped or lost". The shell sends the key's current snapshot, so a zone that could not
/// be reached between replicate-key and a cancelled deletion receives, as its first snapshot,
/// one made after the cancellation. Its replica must end as it would have had the zone been
/// reachable all along: disabled.
#[test]
fn replica_first_reached_after_a_cancelled_deletion_is_disabled_like_one_reached_before() {
    let replicated = changed(run(&origin(), &replicate_to(HERE), day(1)).unwrap());
    let scheduled = changed(
        run(
            &replicated,
            &Command::ScheduleDeletion { delay: delay(7) },
            day(2),
        )
        .unwrap(),
    );
    let cancelled = changed(run(&scheduled, &Command::CancelDeletion, day(3)).unwrap());
    // Reachable all along: created enabled, then pending, then disabled.
    let reached = written(follow(None, &snapshot(&replicated), &here(day(1))));
    let reached = deliver(
        reached,
        &[&snapshot(&scheduled), &snapshot(&cancelled)],
        day(2),
    );
    assert_eq!(reached.status, Status::Disabled);
    // Reached only after the cancellation.
    let late = written(follow(None, &snapshot(&cancelled), &here(day(4))));
    assert_eq!(snapshot(&late).body, snapshot(&reached).body);
    assert_eq!(
        late.status, reached.status,
        "a replica first reached after the cancellation missed it"
    );
}

/// The other side of the rule above: a cancellation older than replicate-key is none of the
/// new replica's business. The origin was enabled again (replicate-key refuses a disabled
/// key), and the replica starts enabled, however late it is first reached.
#[test]
fn replica_first_reached_after_a_cancel_older_than_replicate_is_enabled() {
    let scheduled = changed(
        run(
            &origin(),
            &Command::ScheduleDeletion { delay: delay(7) },
            day(1),
        )
        .unwrap(),
    );
    let cancelled = changed(run(&scheduled, &Command::CancelDeletion, day(2)).unwrap());
    let enabled = changed(run(&cancelled, &Command::Enable, day(3)).unwrap());
    let replicated = changed(run(&enabled, &replicate_to(HERE), day(4)).unwrap());
    let rotated = changed(run(&replicated, &Command::Rotate, day(5)).unwrap());
    assert_eq!(live(&snapshot(&rotated)).last_cancel_seq, 3);
    for first in [snapshot(&replicated), snapshot(&rotated)] {
        let record = written(follow(None, &first, &here(day(6))));
        assert_eq!(
            record.status,
            Status::Enabled,
            "first reached at {}",
            first.seq
        );
    }
}

#[test]
fn follow_creating_a_replica_in_a_zone_the_snapshot_does_not_list_is_conflict() {
    let snap = edited(rich_snapshot(9), |live| {
        live.replicas = zones(&[(OTHER, 3)]);
    });
    assert!(matches!(
        follow(None, &snap, &here(day(4))),
        Err(Error::Conflict { .. })
    ));
}

#[test]
fn follow_creating_a_replica_uses_its_own_zone_entry_for_cancelled_deletions() {
    // Cancelled at origin revision 4: after HERE joined (2) but before OTHER did (6).
    let snap = edited(rich_snapshot(9), |live| {
        live.replicas = zones(&[(HERE, 2), (OTHER, 6)]);
        live.last_cancel_seq = 4;
    });
    assert_eq!(
        written(follow(None, &snap, &here(day(4)))).status,
        Status::Disabled
    );
    let there = FollowContext {
        zone: OTHER,
        now: day(4),
        name_taken: false,
    };
    assert_eq!(written(follow(None, &snap, &there)).status, Status::Enabled);
}
