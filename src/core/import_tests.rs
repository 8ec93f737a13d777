//! The record of an imported key, and the re-import rule, against lifecycle.md and the issue:
//! version 1 is the creation, later versions automatic rotations at their times,
//! `manual-count` 0, `next-at` one period after the last version.

use jiff::{SignedDuration, Timestamp};

use super::{
    Command, ConflictReason, Error, ImportContext, ImportKey, ImportRotation, ImportStatus,
    ImportVersion, KeyId, KeyRecord, RotationPeriod, Status, Transition, apply, check_reimport,
    import_key, next_due,
};

const ZONE: &str = "ch-gva-2";

fn now() -> Timestamp {
    "2026-03-01T12:00:00Z".parse().unwrap()
}

fn at(text: &str) -> Timestamp {
    text.parse().unwrap()
}

fn id() -> KeyId {
    KeyId::parse("019b0000-0000-7000-8000-000000000001").unwrap()
}

fn ctx() -> ImportContext<'static> {
    ImportContext {
        zone: ZONE,
        now: now(),
        origin_keys: 0,
        quota: 1000,
        name_taken: false,
    }
}

fn request(times: &[Option<&str>]) -> ImportKey {
    let mut request = ImportKey::new(id(), "payments", times.len());
    for (version, time) in request.versions.iter_mut().zip(times) {
        *version = ImportVersion { at: time.map(at) };
    }
    request
}

fn imported(request: &ImportKey) -> KeyRecord {
    import_key(request, &ctx()).unwrap()
}

#[test]
fn one_version_is_a_key_created_now_with_the_given_id() {
    let record = imported(&request(&[None]));
    assert_eq!(record.id(), id());
    assert_eq!(record.name(), "payments");
    assert_eq!(record.origin_zone(), ZONE);
    assert_eq!(record.status(), Status::Enabled);
    assert_eq!(record.created_at(), now());
    assert_eq!(record.revision().seq, 1);
    assert_eq!(record.materials().len(), 1);
    let v1 = record.materials()[0];
    assert_eq!((v1.version, v1.created_at, v1.automatic), (1, now(), false));
    let rotation = record.rotation();
    assert!(rotation.automatic);
    assert_eq!(rotation.period_days, 365);
    assert_eq!(rotation.manual_count, 0);
    assert_eq!(
        rotation.next_at,
        now() + SignedDuration::from_hours(365 * 24)
    );
    assert_eq!(record.imported_versions(), 1);
    assert!(record.replicas().is_empty());
}

#[test]
fn later_versions_are_automatic_rotations_at_their_times() {
    // Version 1 without a time: created at the first rotation's time (no later than it).
    let record = imported(&request(&[
        None,
        Some("2025-01-01T00:00:00Z"),
        Some("2026-01-01T00:00:00Z"),
    ]));
    let versions: Vec<(u32, Timestamp, bool)> = record
        .materials()
        .iter()
        .map(|m| (m.version, m.created_at, m.automatic))
        .collect();
    assert_eq!(
        versions,
        [
            (1, at("2025-01-01T00:00:00Z"), false),
            (2, at("2025-01-01T00:00:00Z"), true),
            (3, at("2026-01-01T00:00:00Z"), true),
        ]
    );
    assert_eq!(record.created_at(), at("2025-01-01T00:00:00Z"));
    assert_eq!(record.rotation().manual_count, 0);
    // next-at follows the last rotation: 2026-01-01 + 365 days.
    assert_eq!(record.rotation().next_at, at("2027-01-01T00:00:00Z"));
    assert_eq!(next_due(&record), Some(at("2027-01-01T00:00:00Z")));
    assert_eq!(record.imported_versions(), 3);
    // The status and the revision are the import's.
    assert_eq!(record.status_since(), now());
    assert_eq!(record.revision().at, now());
}

#[test]
fn a_version_without_a_time_was_made_at_the_import() {
    let record = imported(&request(&[Some("2025-06-01T00:00:00Z"), None]));
    assert_eq!(record.materials()[0].created_at, at("2025-06-01T00:00:00Z"));
    assert_eq!(record.materials()[1].created_at, now());
    assert_eq!(
        record.rotation().next_at,
        now() + SignedDuration::from_hours(365 * 24)
    );
}

#[test]
fn an_overdue_rotation_happens_at_the_next_run_due() {
    let mut request = request(&[None, Some("2024-01-01T00:00:00Z")]);
    request.rotation = ImportRotation {
        automatic: true,
        period: RotationPeriod::new(90).unwrap(),
    };
    let record = imported(&request);
    assert_eq!(record.rotation().next_at, at("2024-03-31T00:00:00Z"));
    match apply(&record, &Command::RunDue, now(), None).unwrap() {
        Transition::Changed { record, .. } => {
            assert_eq!(record.materials().len(), 3);
            assert!(record.materials()[2].automatic);
            assert_eq!(record.imported_versions(), 2, "version 3 is keylife's own");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn settings_status_and_description_are_the_requests() {
    let mut request = request(&[None]);
    request.status = ImportStatus::Disabled;
    request.multi_zone = true;
    request.description = Some("card numbers".to_owned());
    request.rotation = ImportRotation {
        automatic: false,
        period: RotationPeriod::new(90).unwrap(),
    };
    let record = imported(&request);
    assert_eq!(record.status(), Status::Disabled);
    assert!(record.multi_zone());
    assert_eq!(record.description(), Some("card numbers"));
    assert!(!record.rotation().automatic);
    assert_eq!(record.rotation().period_days, 90);
    assert_eq!(next_due(&record), None, "a disabled key has nothing due");
}

#[test]
fn times_must_not_go_back_nor_be_in_the_future() {
    let back = import_key(
        &request(&[
            None,
            Some("2026-01-01T00:00:00Z"),
            Some("2025-01-01T00:00:00Z"),
        ]),
        &ctx(),
    )
    .unwrap_err();
    match &back {
        Error::BadRequest { field, reason } => {
            assert_eq!(*field, "versions");
            assert!(reason.contains("version 3's rotated-at"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let future = import_key(&request(&[None, Some("2027-01-01T00:00:00Z")]), &ctx()).unwrap_err();
    assert!(
        matches!(&future, Error::BadRequest { field: "versions", reason } if reason.contains("after now")),
        "{future:?}"
    );
    // A version without a time (now) after one with a past time is fine; one with a past
    // time after one without (now) goes back.
    assert!(
        import_key(
            &request(&[None, None, Some("2025-01-01T00:00:00Z")]),
            &ctx()
        )
        .is_err()
    );
}

#[test]
fn arguments_are_checked_with_their_bounds() {
    let none = import_key(&request(&[]), &ctx()).unwrap_err();
    assert!(
        matches!(&none, Error::BadRequest { field: "versions", reason } if reason.contains("between 1 and 1000")),
        "{none:?}"
    );
    let mut nil = request(&[None]);
    nil.id = KeyId::from_bytes([0; 16]);
    assert!(matches!(
        import_key(&nil, &ctx()),
        Err(Error::BadRequest { field: "id", .. })
    ));
    let mut long = request(&[None]);
    long.name = "x".repeat(257);
    assert!(matches!(
        import_key(&long, &ctx()),
        Err(Error::BadRequest { field: "name", .. })
    ));
}

#[test]
fn name_and_quota_are_checked_as_for_create() {
    let taken = import_key(
        &request(&[None]),
        &ImportContext {
            name_taken: true,
            ..ctx()
        },
    );
    assert!(
        matches!(taken, Err(Error::NameConflict { .. })),
        "{taken:?}"
    );
    let full = import_key(
        &request(&[None]),
        &ImportContext {
            origin_keys: 3,
            quota: 3,
            ..ctx()
        },
    );
    assert!(
        matches!(full, Err(Error::QuotaExceeded { limit: 3, .. })),
        "{full:?}"
    );
}

#[test]
fn reimport_leaves_a_changed_key_alone_and_refuses_another_key() {
    let request = request(&[None, Some("2026-01-01T00:00:00Z")]);
    let record = imported(&request);
    assert_eq!(check_reimport(&record, &request), Ok(2));
    // Disabled and rotated further since: still the same key.
    let Transition::Changed {
        record: disabled, ..
    } = apply(&record, &Command::Disable, now(), None).unwrap()
    else {
        panic!("disable changes the key")
    };
    assert_eq!(check_reimport(&disabled, &request), Ok(2));
    // A seed with one version fewer compares that one.
    let shorter = self::request(&[None]);
    assert_eq!(check_reimport(&record, &shorter), Ok(1));

    let conflict = |result: Result<u32, Error>| match result {
        Err(Error::Conflict { id: named, reason }) => {
            assert_eq!(named, id());
            reason
        }
        other => panic!("{other:?}"),
    };
    let mut renamed = request.clone();
    renamed.name = "orders".to_owned();
    assert_eq!(
        conflict(check_reimport(&record, &renamed)),
        ConflictReason::ImportedNameDiffers
    );
    let longer = self::request(&[None, None, None]);
    assert_eq!(
        conflict(check_reimport(&record, &longer)),
        ConflictReason::ImportedMaterialDiffers
    );
    let mut replica = record.clone();
    replica.role = super::Role::Replica;
    assert_eq!(
        conflict(check_reimport(&replica, &request)),
        ConflictReason::ImportOverReplica
    );
    let mut created = record;
    created.imported_versions = 0;
    assert_eq!(
        conflict(check_reimport(&created, &shorter)),
        ConflictReason::ImportedMaterialDiffers
    );
}
