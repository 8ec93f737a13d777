//! Unit tests of the pure core against docs lifecycle.md: every cell of its "Status
//! transitions", "Rotation" and "Cryptographic operations" tables, and the rules under
//! "Objects", "Create" and "Idempotency".

use jiff::{SignedDuration, Timestamp};

use super::limits::{self, DEFAULT_KEY_QUOTA, MAX_MANUAL_ROTATIONS};
use super::*;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const ZONE: &str = "ch-gva-2";
const ORIGIN_ZONE: &str = "de-fra-1";

/// The fixed time keys are created at.
fn now() -> Timestamp {
    "2026-01-01T00:00:00Z".parse::<Timestamp>().unwrap()
}

/// A later time, at which commands are applied (so that `revision.at` visibly moves).
fn later() -> Timestamp {
    now() + days(10)
}

fn days(n: i64) -> SignedDuration {
    SignedDuration::from_hours(n * 24)
}

fn nanos(n: i64) -> SignedDuration {
    SignedDuration::from_nanos(n)
}

fn key_id() -> KeyId {
    KeyId::parse("0190b6a4-2a3c-7d4e-8f00-112233445566").unwrap()
}

fn ctx() -> CreateContext<'static> {
    CreateContext {
        id: key_id(),
        zone: ZONE,
        now: now(),
        origin_keys: 0,
        quota: DEFAULT_KEY_QUOTA,
        name_taken: false,
    }
}

/// A fresh key made by `create_key`: enabled, automatic rotation on.
fn fresh() -> KeyRecord {
    create_key(&CreateKey::new("backups"), &ctx()).unwrap()
}

fn disabled() -> KeyRecord {
    let mut record = fresh();
    record.status = Status::Disabled;
    record
}

fn pending_delete_at() -> Timestamp {
    now() + days(30)
}

fn pending() -> KeyRecord {
    let mut record = fresh();
    record.status = Status::PendingDeletion {
        delete_at: pending_delete_at(),
    };
    record
}

fn as_replica(mut record: KeyRecord) -> KeyRecord {
    record.role = Role::Replica;
    record.origin_zone = ORIGIN_ZONE.to_owned();
    record
}

fn replica() -> KeyRecord {
    as_replica(fresh())
}

fn without_auto_rotation(mut record: KeyRecord) -> KeyRecord {
    record.rotation.automatic = false;
    record
}

fn delay(n: u32) -> DeletionDelay {
    DeletionDelay::new(n).unwrap()
}

fn period(n: u32) -> RotationPeriod {
    RotationPeriod::new(n).unwrap()
}

/// Applies `command` at `at` without an expected revision, checking that the input record is
/// left as it was.
fn run(record: &KeyRecord, command: Command, at: Timestamp) -> Result<Transition, Error> {
    let before = record.clone();
    let result = apply(record, &command, at, None);
    assert_eq!(*record, before, "apply modified its input record");
    result
}

/// The new record and the event of a `Transition::Changed`; panics on anything else.
pub(super) fn changed_with_event(transition: Transition) -> (KeyRecord, Event) {
    match transition {
        Transition::Changed { record, event } => (*record, event),
        other => panic!("expected Transition::Changed, got {other:?}"),
    }
}

/// The new record of a `Transition::Changed`; panics on anything else.
pub(super) fn changed(transition: Transition) -> KeyRecord {
    changed_with_event(transition).0
}

/// `before` with the next revision at `at`, further edited by `edit`: the record a change is
/// expected to produce.
fn expected(before: &KeyRecord, at: Timestamp, edit: impl FnOnce(&mut KeyRecord)) -> KeyRecord {
    let mut next = before.clone();
    edit(&mut next);
    next.revision = Revision {
        seq: before.revision.seq + 1,
        at,
    };
    next
}

fn assert_unchanged(result: Result<Transition, Error>) {
    assert_eq!(result, Ok(Transition::Unchanged));
}

fn assert_key_disabled(result: Result<Transition, Error>) {
    assert_eq!(result, Err(Error::KeyDisabled { id: key_id() }));
}

fn assert_key_pending(result: Result<Transition, Error>) {
    assert_eq!(
        result,
        Err(Error::KeyPendingDeletion {
            id: key_id(),
            delete_at: pending_delete_at(),
        })
    );
}

fn assert_not_on_replica(result: Result<Transition, Error>, operation: &'static str) {
    assert_eq!(
        result,
        Err(Error::NotOnReplica {
            id: key_id(),
            origin_zone: ORIGIN_ZONE.to_owned(),
            operation,
        })
    );
}

fn assert_bad_request(err: Error, expected_field: &str, mentions: &[&str]) {
    match &err {
        Error::BadRequest { field, reason } => {
            assert_eq!(*field, expected_field, "{err:?}");
            for bound in mentions {
                assert!(
                    reason.contains(bound),
                    "reason {reason:?} does not mention {bound:?}"
                );
            }
        }
        other => panic!("expected BadRequest on {expected_field}, got {other:?}"),
    }
    assert_eq!(err.code(), "bad-request");
}

// ---------------------------------------------------------------------------------------------
// Status transitions: enable
// ---------------------------------------------------------------------------------------------

#[test]
fn enable_on_enabled_is_already_applied() {
    assert_unchanged(run(&fresh(), Command::Enable, later()));
}

#[test]
fn enable_on_disabled_becomes_enabled() {
    let before = disabled();
    let (after, event) = changed_with_event(run(&before, Command::Enable, later()).unwrap());
    assert_eq!(event, Event::Enabled);
    assert_eq!(
        after,
        expected(&before, later(), |r| {
            r.status = Status::Enabled;
            r.status_since = later();
        })
    );
}

#[test]
fn enable_on_pending_deletion_is_refused() {
    assert_key_pending(run(&pending(), Command::Enable, later()));
}

#[test]
fn enable_on_replica_is_allowed() {
    let before = as_replica(disabled());
    let (after, event) = changed_with_event(run(&before, Command::Enable, later()).unwrap());
    assert_eq!(event, Event::Enabled);
    assert_eq!(
        after,
        expected(&before, later(), |r| {
            r.status = Status::Enabled;
            r.status_since = later();
        })
    );
    assert_eq!(after.role, Role::Replica);
    // An enabled replica is already in the asked state.
    assert_unchanged(run(&replica(), Command::Enable, later()));
}

// ---------------------------------------------------------------------------------------------
// Status transitions: disable
// ---------------------------------------------------------------------------------------------

#[test]
fn disable_on_enabled_becomes_disabled() {
    let before = fresh();
    let (after, event) = changed_with_event(run(&before, Command::Disable, later()).unwrap());
    assert_eq!(event, Event::Disabled);
    assert_eq!(
        after,
        expected(&before, later(), |r| {
            r.status = Status::Disabled;
            r.status_since = later();
        })
    );
}

#[test]
fn disable_on_disabled_is_already_applied() {
    assert_unchanged(run(&disabled(), Command::Disable, later()));
}

#[test]
fn disable_on_pending_deletion_is_refused() {
    assert_key_pending(run(&pending(), Command::Disable, later()));
}

#[test]
fn disable_on_replica_is_allowed() {
    let before = replica();
    let (after, event) = changed_with_event(run(&before, Command::Disable, later()).unwrap());
    assert_eq!(event, Event::Disabled);
    assert_eq!(
        after,
        expected(&before, later(), |r| {
            r.status = Status::Disabled;
            r.status_since = later();
        })
    );
    assert_unchanged(run(&as_replica(disabled()), Command::Disable, later()));
}

// ---------------------------------------------------------------------------------------------
// Status transitions: schedule-deletion
// ---------------------------------------------------------------------------------------------

#[test]
fn schedule_deletion_on_enabled_becomes_pending_with_delete_at() {
    for n in [7, 19, 30] {
        let before = fresh();
        let cmd = Command::ScheduleDeletion { delay: delay(n) };
        let (after, event) = changed_with_event(run(&before, cmd, later()).unwrap());
        let delete_at = later() + days(i64::from(n));
        assert_eq!(event, Event::DeletionScheduled { delete_at }, "delay {n}");
        assert_eq!(after.status.delete_at(), Some(delete_at), "delay {n}");
        assert_eq!(
            after,
            expected(&before, later(), |r| {
                r.status = Status::PendingDeletion { delete_at };
                r.status_since = later();
            }),
            "delay {n}"
        );
    }
}

#[test]
fn schedule_deletion_default_delay_is_30_days() {
    let cmd = Command::ScheduleDeletion {
        delay: DeletionDelay::default(),
    };
    let after = changed(run(&fresh(), cmd, later()).unwrap());
    assert_eq!(
        after.status,
        Status::PendingDeletion {
            delete_at: later() + days(30)
        }
    );
}

#[test]
fn schedule_deletion_on_disabled_becomes_pending_with_delete_at() {
    let before = disabled();
    let cmd = Command::ScheduleDeletion { delay: delay(7) };
    let (after, event) = changed_with_event(run(&before, cmd, later()).unwrap());
    let delete_at = later() + days(7);
    assert_eq!(event, Event::DeletionScheduled { delete_at });
    assert_eq!(
        after,
        expected(&before, later(), |r| {
            r.status = Status::PendingDeletion { delete_at };
            r.status_since = later();
        })
    );
}

#[test]
fn schedule_deletion_on_pending_deletion_is_refused() {
    let cmd = Command::ScheduleDeletion { delay: delay(7) };
    assert_key_pending(run(&pending(), cmd, later()));
}

#[test]
fn schedule_deletion_on_replica_is_refused() {
    let cmd = Command::ScheduleDeletion { delay: delay(7) };
    assert_not_on_replica(run(&replica(), cmd.clone(), later()), "schedule-deletion");
    assert_not_on_replica(
        run(&as_replica(disabled()), cmd, later()),
        "schedule-deletion",
    );
}

// ---------------------------------------------------------------------------------------------
// Status transitions: cancel-deletion
// ---------------------------------------------------------------------------------------------

#[test]
fn cancel_deletion_on_enabled_is_refused() {
    assert_eq!(
        run(&fresh(), Command::CancelDeletion, later()),
        Err(Error::NotPendingDeletion { id: key_id() })
    );
}

#[test]
fn cancel_deletion_on_disabled_is_refused() {
    assert_eq!(
        run(&disabled(), Command::CancelDeletion, later()),
        Err(Error::NotPendingDeletion { id: key_id() })
    );
}

#[test]
fn cancel_deletion_on_pending_becomes_disabled_not_enabled() {
    let before = pending();
    let (after, event) =
        changed_with_event(run(&before, Command::CancelDeletion, later()).unwrap());
    assert_eq!(event, Event::DeletionCancelled);
    assert_eq!(after.status, Status::Disabled);
    assert_eq!(after.status.delete_at(), None);
    assert_eq!(
        after,
        expected(&before, later(), |r| {
            r.status = Status::Disabled;
            r.status_since = later();
            // Replicas that miss this revision still learn that a deletion was cancelled.
            r.last_cancel_seq = before.revision.seq + 1;
        })
    );
}

#[test]
fn cancel_deletion_of_a_key_scheduled_while_enabled_leaves_it_disabled() {
    let scheduled = changed(
        run(
            &fresh(),
            Command::ScheduleDeletion { delay: delay(7) },
            later(),
        )
        .unwrap(),
    );
    let at = later() + days(1);
    let after = changed(run(&scheduled, Command::CancelDeletion, at).unwrap());
    assert_eq!(after.status, Status::Disabled);
    assert_eq!(after.status_since, at);
    assert_eq!(after.revision.seq, scheduled.revision.seq + 1);
}

#[test]
fn cancel_deletion_on_replica_is_refused() {
    assert_not_on_replica(
        run(&replica(), Command::CancelDeletion, later()),
        "cancel-deletion",
    );
    assert_not_on_replica(
        run(&as_replica(pending()), Command::CancelDeletion, later()),
        "cancel-deletion",
    );
}

// ---------------------------------------------------------------------------------------------
// Status transitions: deletion due
// ---------------------------------------------------------------------------------------------

#[test]
fn deletion_due_does_nothing_on_enabled() {
    // Nothing is due: no deletion scheduled, automatic rotation off.
    let record = without_auto_rotation(fresh());
    assert_unchanged(run(&record, Command::RunDue, now() + days(3000)));
}

#[test]
fn deletion_due_does_nothing_on_disabled() {
    assert_unchanged(run(&disabled(), Command::RunDue, now() + days(3000)));
}

#[test]
fn deletion_due_on_pending_destroys_the_key_when_delete_at_reached() {
    let record = pending();
    let delete_at = pending_delete_at();
    assert_eq!(
        run(&record, Command::RunDue, delete_at),
        Ok(Transition::Deleted),
        "delete_at == now is due"
    );
    assert_eq!(
        run(&record, Command::RunDue, delete_at + nanos(1)),
        Ok(Transition::Deleted),
        "delete_at < now is due"
    );
    assert_eq!(
        run(&record, Command::RunDue, delete_at + days(400)),
        Ok(Transition::Deleted),
        "long past delete_at is due"
    );
}

#[test]
fn deletion_due_on_pending_not_before_delete_at() {
    let record = pending();
    assert_unchanged(run(
        &record,
        Command::RunDue,
        pending_delete_at() - nanos(1),
    ));
    assert_unchanged(run(&record, Command::RunDue, later()));
}

#[test]
fn deletion_due_on_replica_follows_its_origin() {
    let record = as_replica(pending());
    assert_unchanged(run(&record, Command::RunDue, pending_delete_at()));
    assert_unchanged(run(&record, Command::RunDue, pending_delete_at() + days(1)));
}

// ---------------------------------------------------------------------------------------------
// Rotation: manual rotate
// ---------------------------------------------------------------------------------------------

#[test]
fn rotate_on_enabled_adds_a_manual_version() {
    let before = fresh();
    let (after, event) = changed_with_event(run(&before, Command::Rotate, later()).unwrap());
    assert_eq!(
        event,
        Event::Rotated {
            version: 2,
            automatic: false
        }
    );
    assert_eq!(
        after.newest_material(),
        MaterialMeta {
            version: 2,
            created_at: later(),
            automatic: false,
        }
    );
    assert_eq!(after.rotation.manual_count, 1);
    assert_eq!(after.rotation.next_at, before.rotation.next_at);
    assert_eq!(
        after,
        expected(&before, later(), |r| {
            r.materials.push(MaterialMeta {
                version: 2,
                created_at: later(),
                automatic: false,
            });
            r.rotation.manual_count = 1;
        })
    );
}

#[test]
fn rotate_on_disabled_is_refused() {
    assert_key_disabled(run(&disabled(), Command::Rotate, later()));
}

#[test]
fn rotate_on_pending_deletion_is_refused() {
    assert_key_pending(run(&pending(), Command::Rotate, later()));
}

#[test]
fn rotate_on_replica_is_refused() {
    assert_not_on_replica(run(&replica(), Command::Rotate, later()), "rotate");
}

#[test]
fn eleventh_manual_rotation_is_refused() {
    assert_eq!(MAX_MANUAL_ROTATIONS, 10);
    let mut record = fresh();
    for i in 1..=10u32 {
        let at = now() + days(i64::from(i));
        let (next, event) = changed_with_event(run(&record, Command::Rotate, at).unwrap());
        assert_eq!(
            event,
            Event::Rotated {
                version: i + 1,
                automatic: false
            }
        );
        assert_eq!(next.rotation.manual_count, i);
        record = next;
    }
    // Versions start at 1 and are numbered 1, 2, 3, ... without reuse.
    let versions: Vec<u32> = record.materials.iter().map(|m| m.version).collect();
    assert_eq!(versions, (1..=11).collect::<Vec<u32>>());
    assert_eq!(
        run(&record, Command::Rotate, now() + days(20)),
        Err(Error::ManualRotationLimit {
            id: key_id(),
            limit: 10
        })
    );
}

#[test]
fn manual_rotation_limit_counts_only_manual_rotations() {
    let mut record = fresh();
    record.rotation.manual_count = 9;
    // An automatic rotation does not count.
    let due = record.rotation.next_at;
    record = changed(run(&record, Command::RunDue, due).unwrap());
    assert_eq!(record.rotation.manual_count, 9);
    // The 10th manual rotation is still allowed, the 11th is not.
    record = changed(run(&record, Command::Rotate, due).unwrap());
    assert_eq!(record.rotation.manual_count, 10);
    assert!(matches!(
        run(&record, Command::Rotate, due),
        Err(Error::ManualRotationLimit { limit: 10, .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// Rotation: enable-key-rotation
// ---------------------------------------------------------------------------------------------

#[test]
fn enable_rotation_on_enabled_sets_period_and_next_at() {
    for days_n in [90u32, 365, 2560] {
        let before = without_auto_rotation(fresh());
        let cmd = Command::EnableRotation {
            period: period(days_n),
        };
        let (after, event) = changed_with_event(run(&before, cmd, later()).unwrap());
        assert_eq!(event, Event::RotationEnabled, "period {days_n}");
        assert_eq!(
            after,
            expected(&before, later(), |r| {
                r.rotation.automatic = true;
                r.rotation.period_days = days_n;
                r.rotation.next_at = later() + days(i64::from(days_n));
            }),
            "period {days_n}"
        );
    }
}

#[test]
fn enable_rotation_default_period_is_365_days() {
    let before = without_auto_rotation(fresh());
    let cmd = Command::EnableRotation {
        period: RotationPeriod::from_request(None).unwrap(),
    };
    let after = changed(run(&before, cmd, later()).unwrap());
    assert_eq!(after.rotation.period_days, 365);
    assert_eq!(after.rotation.next_at, later() + days(365));
}

#[test]
fn enable_rotation_when_already_automatic_is_conflict() {
    let cmd = Command::EnableRotation { period: period(90) };
    let err = run(&fresh(), cmd, later()).unwrap_err();
    assert!(
        matches!(err, Error::Conflict { id, .. } if id == key_id()),
        "{err:?}"
    );
    assert_eq!(err.http_status(), 409);
}

#[test]
fn enable_rotation_on_disabled_is_refused() {
    let cmd = Command::EnableRotation { period: period(90) };
    assert_key_disabled(run(&without_auto_rotation(disabled()), cmd, later()));
}

#[test]
fn enable_rotation_on_pending_deletion_is_refused() {
    let cmd = Command::EnableRotation { period: period(90) };
    assert_key_pending(run(&without_auto_rotation(pending()), cmd, later()));
}

#[test]
fn enable_rotation_on_replica_is_refused() {
    let cmd = Command::EnableRotation { period: period(90) };
    assert_not_on_replica(
        run(&without_auto_rotation(replica()), cmd, later()),
        "enable-key-rotation",
    );
}

// ---------------------------------------------------------------------------------------------
// Rotation: disable-key-rotation
// ---------------------------------------------------------------------------------------------

#[test]
fn disable_rotation_on_enabled_turns_it_off_keeping_next_at() {
    let before = fresh();
    let (after, event) =
        changed_with_event(run(&before, Command::DisableRotation, later()).unwrap());
    assert_eq!(event, Event::RotationDisabled);
    assert!(!after.rotation.automatic);
    assert_eq!(after.rotation.next_at, before.rotation.next_at);
    assert_eq!(
        after,
        expected(&before, later(), |r| r.rotation.automatic = false)
    );
}

#[test]
fn disable_rotation_when_already_off_is_conflict() {
    let err = run(
        &without_auto_rotation(fresh()),
        Command::DisableRotation,
        later(),
    )
    .unwrap_err();
    assert!(
        matches!(err, Error::Conflict { id, .. } if id == key_id()),
        "{err:?}"
    );
}

#[test]
fn disable_rotation_on_disabled_is_refused() {
    assert_key_disabled(run(&disabled(), Command::DisableRotation, later()));
}

#[test]
fn disable_rotation_on_pending_deletion_is_refused() {
    assert_key_pending(run(&pending(), Command::DisableRotation, later()));
}

#[test]
fn disable_rotation_on_replica_is_refused() {
    assert_not_on_replica(
        run(&replica(), Command::DisableRotation, later()),
        "disable-key-rotation",
    );
}

// ---------------------------------------------------------------------------------------------
// Rotation: automatic rotation due
// ---------------------------------------------------------------------------------------------

#[test]
fn automatic_rotation_due_on_enabled_adds_an_automatic_version() {
    let before = fresh();
    let due = before.rotation.next_at;
    assert_eq!(due, now() + days(365));
    // Exactly at next_at and some time after it: next_at = now + period, not old next_at + period.
    for at in [due, due + days(3)] {
        let (after, event) = changed_with_event(run(&before, Command::RunDue, at).unwrap());
        assert_eq!(
            event,
            Event::Rotated {
                version: 2,
                automatic: true
            }
        );
        assert_eq!(
            after,
            expected(&before, at, |r| {
                r.materials.push(MaterialMeta {
                    version: 2,
                    created_at: at,
                    automatic: true,
                });
                r.rotation.next_at = at + days(365);
            })
        );
        assert_eq!(after.rotation.manual_count, 0);
    }
}

#[test]
fn automatic_rotation_not_due_before_next_at() {
    let before = fresh();
    assert_unchanged(run(
        &before,
        Command::RunDue,
        before.rotation.next_at - nanos(1),
    ));
}

#[test]
fn automatic_rotation_uses_the_key_period() {
    let before = changed(
        run(
            &without_auto_rotation(fresh()),
            Command::EnableRotation { period: period(90) },
            now(),
        )
        .unwrap(),
    );
    let due = now() + days(90);
    assert_eq!(before.rotation.next_at, due);
    let after = changed(run(&before, Command::RunDue, due).unwrap());
    assert_eq!(after.rotation.next_at, due + days(90));
    assert_eq!(after.newest_material().version, 2);
    assert!(after.newest_material().automatic);
}

#[test]
fn automatic_rotation_not_done_when_rotation_is_off() {
    let record = without_auto_rotation(fresh());
    assert_unchanged(run(
        &record,
        Command::RunDue,
        record.rotation.next_at + days(1),
    ));
}

#[test]
fn automatic_rotation_not_done_while_disabled_then_done_after_enable() {
    let record = disabled();
    let due = record.rotation.next_at;
    let at = due + days(5);
    assert_unchanged(run(&record, Command::RunDue, at));
    // Enabled again: next_at is not moved, so the rotation is due at once.
    let enabled = changed(run(&record, Command::Enable, at).unwrap());
    assert_eq!(enabled.rotation.next_at, due);
    assert_eq!(next_due(&enabled), Some(due));
    let rotate_at = at + nanos(1);
    let (rotated, event) = changed_with_event(run(&enabled, Command::RunDue, rotate_at).unwrap());
    assert_eq!(
        event,
        Event::Rotated {
            version: 2,
            automatic: true
        }
    );
    assert_eq!(rotated.rotation.next_at, rotate_at + days(365));
    assert_eq!(rotated.revision.seq, enabled.revision.seq + 1);
}

#[test]
fn automatic_rotation_not_done_while_pending_deletion() {
    let mut record = pending();
    // Rotation was due before the deletion is.
    record.rotation.next_at = now() + days(5);
    assert_unchanged(run(&record, Command::RunDue, now() + days(6)));
}

#[test]
fn automatic_rotation_on_replica_follows_its_origin() {
    let record = replica();
    assert_unchanged(run(
        &record,
        Command::RunDue,
        record.rotation.next_at + days(1),
    ));
}

// ---------------------------------------------------------------------------------------------
// Cryptographic operations
// ---------------------------------------------------------------------------------------------

#[test]
fn crypto_allowed_when_enabled() {
    assert_eq!(check_crypto(key_id(), Status::Enabled), Ok(()));
}

#[test]
fn crypto_refused_when_disabled() {
    assert_eq!(
        check_crypto(key_id(), Status::Disabled),
        Err(Error::KeyDisabled { id: key_id() })
    );
}

#[test]
fn crypto_refused_when_pending_deletion() {
    assert_eq!(
        check_crypto(
            key_id(),
            Status::PendingDeletion {
                delete_at: pending_delete_at()
            }
        ),
        Err(Error::KeyPendingDeletion {
            id: key_id(),
            delete_at: pending_delete_at()
        })
    );
}

// ---------------------------------------------------------------------------------------------
// Create
// ---------------------------------------------------------------------------------------------

#[test]
fn create_key_defaults() {
    let record = fresh();
    assert_eq!(
        record,
        KeyRecord {
            id: key_id(),
            name: "backups".to_owned(),
            description: None,
            usage: KeyUsage::EncryptDecrypt,
            source: KeySource::ExoscaleKms,
            multi_zone: false,
            origin_zone: ZONE.to_owned(),
            role: Role::Origin,
            status: Status::Enabled,
            status_since: now(),
            created_at: now(),
            revision: Revision { seq: 1, at: now() },
            materials: vec![MaterialMeta {
                version: 1,
                created_at: now(),
                automatic: false,
            }],
            rotation: RotationConfig {
                automatic: true,
                period_days: 365,
                next_at: now() + days(365),
                manual_count: 0,
            },
            replicas: Vec::new(),
            applied_watermark: 0,
            last_cancel_seq: 0,
            imported_versions: 0,
        }
    );
    assert_eq!(record.usage.as_str(), "encrypt-decrypt");
    assert_eq!(record.status.as_str(), "enabled");
}

#[test]
fn create_key_keeps_description_and_multi_zone() {
    let request = CreateKey::new("k")
        .description("for backups")
        .multi_zone(true);
    let record = create_key(&request, &ctx()).unwrap();
    assert_eq!(record.description(), Some("for backups"));
    assert!(record.multi_zone);
    assert_eq!(record.name(), "k");
}

#[test]
fn create_key_name_length_counts_characters() {
    let cases: [(&str, String, bool); 7] = [
        ("empty", String::new(), false),
        ("one char", "a".to_owned(), true),
        ("256 ascii", "a".repeat(256), true),
        ("256 two-byte chars", "é".repeat(256), true),
        ("256 four-byte chars", "🔑".repeat(256), true),
        ("257 ascii", "a".repeat(257), false),
        ("257 two-byte chars", "é".repeat(257), false),
    ];
    for (case, name, ok) in cases {
        let result = create_key(&CreateKey::new(name.clone()), &ctx());
        if ok {
            assert_eq!(
                result.map(|r| r.name).as_deref(),
                Ok(name.as_str()),
                "{case}"
            );
        } else {
            let err = result.unwrap_err();
            assert_bad_request(err, "name", &["1", "256"]);
        }
    }
}

#[test]
fn create_key_description_at_most_1024_characters() {
    let cases: [(&str, String, bool); 5] = [
        ("empty", String::new(), true),
        ("1024 ascii", "d".repeat(1024), true),
        ("1024 three-byte chars", "€".repeat(1024), true),
        ("1025 ascii", "d".repeat(1025), false),
        ("1025 three-byte chars", "€".repeat(1025), false),
    ];
    for (case, description, ok) in cases {
        let request = CreateKey::new("k").description(description.clone());
        let result = create_key(&request, &ctx());
        if ok {
            assert_eq!(
                result.unwrap().description.as_deref(),
                Some(description.as_str()),
                "{case}"
            );
        } else {
            assert_bad_request(result.unwrap_err(), "description", &["1024"]);
        }
    }
}

#[test]
fn create_key_name_taken_is_name_conflict() {
    let context = CreateContext {
        name_taken: true,
        ..ctx()
    };
    let err = create_key(&CreateKey::new("backups"), &context).unwrap_err();
    assert_eq!(
        err,
        Error::NameConflict {
            name: "backups".to_owned(),
            zone: ZONE.to_owned(),
        }
    );
    assert_eq!(err.http_status(), 409);
}

#[test]
fn create_key_quota() {
    assert_eq!(DEFAULT_KEY_QUOTA, 1000);
    let below = CreateContext {
        origin_keys: 999,
        ..ctx()
    };
    assert!(create_key(&CreateKey::new("k"), &below).is_ok());
    for origin_keys in [1000, 1001] {
        let full = CreateContext {
            origin_keys,
            ..ctx()
        };
        assert_eq!(
            create_key(&CreateKey::new("k"), &full),
            Err(Error::QuotaExceeded {
                zone: ZONE.to_owned(),
                limit: 1000,
            }),
            "{origin_keys} keys"
        );
    }
    // A configured quota.
    let small = CreateContext {
        origin_keys: 5,
        quota: 5,
        ..ctx()
    };
    assert_eq!(
        create_key(&CreateKey::new("k"), &small),
        Err(Error::QuotaExceeded {
            zone: ZONE.to_owned(),
            limit: 5,
        })
    );
}

// ---------------------------------------------------------------------------------------------
// Ranges of the checked types
// ---------------------------------------------------------------------------------------------

#[test]
fn deletion_delay_range_7_to_30() {
    for n in [7, 8, 29, 30] {
        assert_eq!(DeletionDelay::new(n).unwrap().days(), n);
    }
    for n in [0, 6, 31, 1000] {
        assert_bad_request(
            DeletionDelay::new(n).unwrap_err(),
            "delay-days",
            &["7", "30"],
        );
    }
    assert_eq!(DeletionDelay::from_request(None).unwrap().days(), 30);
    assert_eq!(DeletionDelay::default().days(), 30);
    assert_eq!(DeletionDelay::from_request(Some(7)).unwrap().days(), 7);
    assert_bad_request(
        DeletionDelay::from_request(Some(6)).unwrap_err(),
        "delay-days",
        &["7", "30"],
    );
}

#[test]
fn rotation_period_range_90_to_2560() {
    for n in [90, 91, 365, 2559, 2560] {
        assert_eq!(RotationPeriod::new(n).unwrap().days(), n);
    }
    for n in [0, 89, 2561] {
        assert_bad_request(
            RotationPeriod::new(n).unwrap_err(),
            "rotation-period",
            &["90", "2560"],
        );
    }
    assert_eq!(RotationPeriod::from_request(None).unwrap().days(), 365);
    assert_eq!(RotationPeriod::default().days(), 365);
    assert_bad_request(
        RotationPeriod::from_request(Some(2561)).unwrap_err(),
        "rotation-period",
        &["90", "2560"],
    );
}

#[test]
fn data_key_spec_neither_means_aes_256() {
    let spec = DataKeySpec::from_request(None, None).unwrap();
    assert_eq!(spec, DataKeySpec::Aes256);
    assert_eq!(spec.byte_len(), 32);
}

#[test]
fn data_key_spec_aes_256_gives_32_bytes() {
    let spec = DataKeySpec::from_request(Some("AES-256"), None).unwrap();
    assert_eq!(spec, DataKeySpec::Aes256);
    assert_eq!(spec.byte_len(), 32);
}

#[test]
fn data_key_spec_both_is_bad_request() {
    for count in [1, 32, 5000] {
        let err = DataKeySpec::from_request(Some("AES-256"), Some(count)).unwrap_err();
        assert!(matches!(err, Error::BadRequest { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.contains("key-spec"), "{message}");
        assert!(message.contains("bytes-count"), "{message}");
    }
}

#[test]
fn data_key_spec_bytes_count_1_to_1024() {
    for count in [1, 2, 32, 1023, 1024] {
        let spec = DataKeySpec::from_request(None, Some(count)).unwrap();
        assert_eq!(spec, DataKeySpec::Bytes(count));
        assert_eq!(spec.byte_len(), count as usize);
    }
    for count in [0, 1025, u32::MAX] {
        assert_bad_request(
            DataKeySpec::from_request(None, Some(count)).unwrap_err(),
            "bytes-count",
            &["1", "1024"],
        );
    }
}

#[test]
fn data_key_spec_other_key_spec_is_refused() {
    for other in ["AES-128", "aes256", "", "RSA-2048"] {
        assert_bad_request(
            DataKeySpec::from_request(Some(other), None).unwrap_err(),
            "key-spec",
            &["AES-256"],
        );
    }
}

#[test]
fn name_and_description_checks_name_their_field() {
    assert_bad_request(limits::check_name("").unwrap_err(), "name", &["256"]);
    assert!(limits::check_name(&"ж".repeat(256)).is_ok());
    assert_bad_request(
        limits::check_description(&"x".repeat(1025)).unwrap_err(),
        "description",
        &["1024"],
    );
}

// ---------------------------------------------------------------------------------------------
// Revision and idempotency
// ---------------------------------------------------------------------------------------------

#[test]
fn every_change_raises_revision_by_exactly_one_and_stamps_now() {
    // A walk through every kind of change, at strictly increasing times.
    let steps: [(&str, Command); 11] = [
        ("disable", Command::Disable),
        ("enable", Command::Enable),
        ("rotate", Command::Rotate),
        ("disable-key-rotation", Command::DisableRotation),
        (
            "enable-key-rotation",
            Command::EnableRotation { period: period(90) },
        ),
        ("retire-exhausted", Command::RetireExhausted { version: 2 }),
        (
            "schedule-deletion",
            Command::ScheduleDeletion { delay: delay(7) },
        ),
        ("cancel-deletion", Command::CancelDeletion),
        ("enable again", Command::Enable),
        ("run-due rotation", Command::RunDue),
        (
            "schedule-deletion again",
            Command::ScheduleDeletion { delay: delay(7) },
        ),
    ];
    let mut record = fresh();
    let mut at = now();
    for (i, (case, command)) in steps.into_iter().enumerate() {
        at = if case == "run-due rotation" {
            // Make the automatic rotation due.
            record.rotation.next_at
        } else {
            at + days(1) + nanos(i64::try_from(i).unwrap())
        };
        let next = changed(run(&record, command, at).unwrap());
        assert_eq!(
            next.revision,
            Revision {
                seq: record.revision.seq + 1,
                at
            },
            "{case}"
        );
        record = next;
    }
    assert_eq!(record.revision.seq, 12);
}

#[test]
fn already_applied_and_nothing_due_change_nothing() {
    // `Unchanged` carries no record: the caller keeps the key exactly as it was.
    let cases: [(&str, KeyRecord, Command); 4] = [
        ("enable on enabled", fresh(), Command::Enable),
        ("disable on disabled", disabled(), Command::Disable),
        ("run-due with nothing due", fresh(), Command::RunDue),
        (
            "retire an older version",
            changed(run(&fresh(), Command::Rotate, later()).unwrap()),
            Command::RetireExhausted { version: 1 },
        ),
    ];
    for (case, record, command) in cases {
        let seq = record.revision.seq;
        assert_eq!(
            apply(&record, &command, later(), Some(seq)),
            Ok(Transition::Unchanged),
            "{case}"
        );
    }
}

#[test]
fn expected_seq_mismatch_is_revision_conflict_before_any_other_rule() {
    let cases: [(&str, KeyRecord, Command); 8] = [
        ("would succeed: disable", fresh(), Command::Disable),
        ("would succeed: rotate", fresh(), Command::Rotate),
        ("would be already-applied: enable", fresh(), Command::Enable),
        (
            "would be already-applied: disable",
            disabled(),
            Command::Disable,
        ),
        ("would be key pending deletion", pending(), Command::Disable),
        ("would be key disabled", disabled(), Command::Rotate),
        (
            "would be not pending deletion",
            fresh(),
            Command::CancelDeletion,
        ),
        (
            "would be not on replica",
            replica(),
            Command::ScheduleDeletion { delay: delay(7) },
        ),
    ];
    for (case, mut record, command) in cases {
        record.revision.seq = 5;
        for expected_seq in [4, 6, 0] {
            let before = record.clone();
            // Just before the deletion is due: at it, the key no longer exists.
            let at = pending_delete_at() - nanos(1);
            let err = apply(&record, &command, at, Some(expected_seq));
            assert_eq!(record, before, "{case}: input modified");
            let err = err.unwrap_err();
            assert_eq!(
                err,
                Error::RevisionConflict {
                    id: key_id(),
                    expected: expected_seq,
                    actual: 5,
                },
                "{case}, expected {expected_seq}"
            );
            assert_eq!(err.http_status(), 409);
        }
    }
}

#[test]
fn matching_expected_seq_applies() {
    let before = fresh();
    let after = changed(apply(&before, &Command::Disable, later(), Some(1)).unwrap());
    assert_eq!(after.status, Status::Disabled);
    assert_eq!(after.revision.seq, 2);
    let again = changed(apply(&after, &Command::Enable, later() + days(1), Some(2)).unwrap());
    assert_eq!(again.status, Status::Enabled);
    assert_eq!(again.revision.seq, 3);
    // The matching revision does not bypass the other rules.
    assert_eq!(
        apply(&pending(), &Command::Disable, later(), Some(1)),
        Err(Error::KeyPendingDeletion {
            id: key_id(),
            delete_at: pending_delete_at(),
        })
    );
}

#[test]
fn apply_never_modifies_its_input() {
    let records = [
        ("enabled", fresh()),
        ("enabled, rotation off", without_auto_rotation(fresh())),
        ("disabled", disabled()),
        ("pending", pending()),
        ("replica", replica()),
        ("disabled replica", as_replica(disabled())),
    ];
    let commands = [
        Command::Enable,
        Command::Disable,
        Command::ScheduleDeletion { delay: delay(7) },
        Command::CancelDeletion,
        Command::Rotate,
        Command::EnableRotation { period: period(90) },
        Command::DisableRotation,
        Command::RunDue,
        Command::RetireExhausted { version: 1 },
    ];
    let mut changes = 0;
    for (case, record) in &records {
        for command in &commands {
            // Far enough in the future that deletion and rotation are due.
            for at in [later(), now() + days(1000)] {
                let snapshot = record.clone();
                let result = apply(record, command, at, None);
                assert_eq!(*record, snapshot, "{case}, {}", command.name());
                if let Ok(Transition::Changed { record: next, .. }) = result {
                    assert_ne!(*next, snapshot, "{case}, {}", command.name());
                    changes += 1;
                }
            }
        }
    }
    assert!(changes > 0, "no command changed anything");
}

// ---------------------------------------------------------------------------------------------
// next_due
// ---------------------------------------------------------------------------------------------

#[test]
fn next_due_enabled_with_automatic_rotation_is_next_at() {
    let record = fresh();
    assert_eq!(next_due(&record), Some(now() + days(365)));
}

#[test]
fn next_due_enabled_without_automatic_rotation_is_none() {
    assert_eq!(next_due(&without_auto_rotation(fresh())), None);
}

#[test]
fn next_due_disabled_is_none() {
    assert_eq!(next_due(&disabled()), None);
}

#[test]
fn next_due_pending_deletion_is_delete_at() {
    assert_eq!(next_due(&pending()), Some(pending_delete_at()));
    // Even with automatic rotation off or an earlier next_at.
    let mut record = without_auto_rotation(pending());
    record.rotation.next_at = now() + days(1);
    assert_eq!(next_due(&record), Some(pending_delete_at()));
}

#[test]
fn next_due_replica_is_none() {
    assert_eq!(next_due(&replica()), None);
    assert_eq!(next_due(&as_replica(pending())), None);
}

// ---------------------------------------------------------------------------------------------
// RetireExhausted
// ---------------------------------------------------------------------------------------------

#[test]
fn retire_exhausted_newest_version_adds_an_automatic_version() {
    let mut before = fresh();
    before.rotation.manual_count = 3;
    let (after, event) =
        changed_with_event(run(&before, Command::RetireExhausted { version: 1 }, later()).unwrap());
    assert_eq!(
        event,
        Event::Rotated {
            version: 2,
            automatic: true
        }
    );
    assert_eq!(
        after,
        expected(&before, later(), |r| {
            r.materials.push(MaterialMeta {
                version: 2,
                created_at: later(),
                automatic: true,
            });
        })
    );
    assert_eq!(after.rotation.manual_count, 3);
    assert_eq!(after.rotation.next_at, before.rotation.next_at);
}

#[test]
fn retire_exhausted_when_a_newer_version_exists_is_unchanged() {
    let rotated = changed(run(&fresh(), Command::Rotate, later()).unwrap());
    assert_eq!(rotated.newest_material().version, 2);
    assert_unchanged(run(
        &rotated,
        Command::RetireExhausted { version: 1 },
        later() + days(1),
    ));
    // The newest one still retires.
    let retired = changed(
        run(
            &rotated,
            Command::RetireExhausted { version: 2 },
            later() + days(1),
        )
        .unwrap(),
    );
    assert_eq!(retired.newest_material().version, 3);
}

#[test]
fn retire_exhausted_on_disabled_is_refused() {
    assert_key_disabled(run(
        &disabled(),
        Command::RetireExhausted { version: 1 },
        later(),
    ));
}

#[test]
fn retire_exhausted_on_pending_deletion_is_refused() {
    assert_key_pending(run(
        &pending(),
        Command::RetireExhausted { version: 1 },
        later(),
    ));
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

#[test]
fn error_http_status_follows_the_contract() {
    let id = key_id();
    let cases: [(Error, u16, &str); 7] = [
        (Error::KeyNotFound { id }, 404, "key-not-found"),
        (
            Error::NameConflict {
                name: "n".to_owned(),
                zone: ZONE.to_owned(),
            },
            409,
            "name-conflict",
        ),
        (
            Error::Conflict {
                id,
                reason: ConflictReason::AlreadyReplicated,
            },
            409,
            "conflict",
        ),
        (
            Error::RevisionConflict {
                id,
                expected: 1,
                actual: 2,
            },
            409,
            "revision-conflict",
        ),
        (Error::KeyDisabled { id }, 400, "key-disabled"),
        (
            Error::ManualRotationLimit { id, limit: 10 },
            400,
            "manual-rotation-limit",
        ),
        (
            Error::QuotaExceeded {
                zone: ZONE.to_owned(),
                limit: 1000,
            },
            400,
            "quota-exceeded",
        ),
    ];
    for (err, status, code) in cases {
        assert_eq!(err.http_status(), status, "{err:?}");
        assert_eq!(err.code(), code, "{err:?}");
    }
}

// ---------------------------------------------------------------------------------------
// A due deletion comes before everything else
// ---------------------------------------------------------------------------------------

/// From `delete-at` on the key no longer exists: every command that reaches it destroys it,
/// even with a stale expected revision, and even cancel-deletion can no longer save it.
#[test]
fn a_due_deletion_precedes_every_command() {
    let commands = [
        Command::Enable,
        Command::Disable,
        Command::ScheduleDeletion { delay: delay(7) },
        Command::CancelDeletion,
        Command::Rotate,
        Command::EnableRotation {
            period: RotationPeriod::default(),
        },
        Command::DisableRotation,
        Command::RunDue,
        Command::RetireExhausted { version: 1 },
    ];
    let record = pending();
    assert!(deletion_due(&record, pending_delete_at()));
    assert!(!deletion_due(&record, pending_delete_at() - nanos(1)));
    for command in commands {
        for expected_seq in [None, Some(record.revision.seq), Some(99)] {
            assert_eq!(
                run(&record, command.clone(), pending_delete_at()),
                Ok(Transition::Deleted),
                "{command:?}"
            );
            assert_eq!(
                apply(
                    &record,
                    &command,
                    pending_delete_at() + nanos(1),
                    expected_seq
                ),
                Ok(Transition::Deleted),
                "{command:?} with {expected_seq:?}"
            );
        }
    }
    // One nanosecond before, cancel-deletion still saves it.
    let saved = changed(
        run(
            &record,
            Command::CancelDeletion,
            pending_delete_at() - nanos(1),
        )
        .unwrap(),
    );
    assert_eq!(saved.status, Status::Disabled);
    // A replica's deletion follows its origin: nothing happens by itself.
    assert!(!deletion_due(&as_replica(pending()), pending_delete_at()));
}
