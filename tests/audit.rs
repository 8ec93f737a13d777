//! Audit events of the library: every call of a `Kms` handle sends exactly one `AuditEvent`
//! (operation, key, outcome, revision after, actor) to the zone's sink (`KmsOptions::audit`)
//! and to the handle's (`Kms::with_audit`); and the audit head recorded in a store.

mod common;

use std::sync::{Arc, Mutex};

use keylife::{
    AuditEvent, AuditHead, AuditSink, Caller, CreateKey, DataKeySpec, KeyId, Kms, KmsOptions,
    LocalLink, ManualClock, OUTCOME_OK, Operation,
};

use common::{root, start};

/// Events collected by a sink.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<AuditEvent>>>);

impl Seen {
    fn sink(&self) -> AuditSink {
        let seen = Arc::clone(&self.0);
        AuditSink::new(move |event| seen.lock().unwrap().push(event.clone()))
    }

    fn take(&self) -> Vec<AuditEvent> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }

    /// The one event sent since the last take.
    fn one(&self) -> AuditEvent {
        let mut events = self.take();
        assert_eq!(events.len(), 1, "expected exactly one event: {events:?}");
        events.remove(0)
    }
}

/// Two in-memory zones connected by a `LocalLink`, each with its own collecting sink.
struct Two {
    gva: Arc<Kms>,
    /// Kept open: the link holds zones weakly.
    _fra: Arc<Kms>,
    gva_seen: Seen,
    fra_seen: Seen,
    clock: ManualClock,
}

fn two_zones() -> Two {
    let link = LocalLink::new();
    let clock = ManualClock::new(start());
    let (gva_seen, fra_seen) = (Seen::default(), Seen::default());
    let open = |name: &str, byte: u8, seen: &Seen| {
        let options = KmsOptions::new(name)
            .clock(clock.clone())
            .link(link.clone())
            .audit(seen.sink());
        let kms = Arc::new(Kms::open_in_memory(root(byte), options).unwrap());
        link.attach(&kms);
        kms
    };
    let gva = open("ch-gva-2", 1, &gva_seen);
    let fra = open("de-fra-1", 2, &fra_seen);
    Two {
        gva,
        _fra: fra,
        gva_seen,
        fra_seen,
        clock,
    }
}

/// Checks the facts of `event`.
#[track_caller]
fn check(
    event: &AuditEvent,
    operation: Operation,
    key: Option<KeyId>,
    outcome: &str,
    revision: Option<u64>,
    actor: Option<&str>,
) {
    assert_eq!(event.operation, operation, "{event:?}");
    assert_eq!(event.key, key, "{event:?}");
    assert_eq!(event.outcome, outcome, "{event:?}");
    assert_eq!(event.revision, revision, "{event:?}");
    assert_eq!(event.actor.as_deref(), actor, "{event:?}");
    assert_eq!(event.zone, "ch-gva-2", "{event:?}");
    assert_eq!(event.is_ok(), outcome == OUTCOME_OK);
}

#[test]
fn each_of_the_16_operations_sends_one_event_with_its_facts() {
    let two = two_zones();
    let kms = two.gva.as_caller(Caller::new("svc-audit"));
    let seen = &two.gva_seen;
    let actor = Some("svc-audit");
    let ok = OUTCOME_OK;

    let key = kms
        .create_key(&CreateKey::new("app-a").multi_zone(true))
        .unwrap();
    let a = Some(key.id);
    let event = seen.one();
    check(&event, Operation::CreateKey, a, ok, Some(1), actor);
    assert_eq!(event.time, start());
    assert_eq!(event.destination, None);

    kms.get_key(key.id).unwrap();
    check(&seen.one(), Operation::GetKey, a, ok, Some(1), actor);
    kms.list_keys().unwrap();
    check(&seen.one(), Operation::ListKeys, None, ok, None, actor);
    kms.list_key_rotations(key.id).unwrap();
    check(
        &seen.one(),
        Operation::ListKeyRotations,
        a,
        ok,
        Some(1),
        actor,
    );
    kms.disable_key(key.id, None).unwrap();
    check(&seen.one(), Operation::DisableKey, a, ok, Some(2), actor);
    kms.enable_key(key.id, None).unwrap();
    check(&seen.one(), Operation::EnableKey, a, ok, Some(3), actor);
    // Already enabled: nothing changes, and the revision after is still 3.
    kms.enable_key(key.id, None).unwrap();
    check(&seen.one(), Operation::EnableKey, a, ok, Some(3), actor);
    kms.rotate_key(key.id, None).unwrap();
    check(&seen.one(), Operation::RotateKey, a, ok, Some(4), actor);
    // Automatic rotation is on by default.
    kms.disable_key_rotation(key.id, None).unwrap();
    check(
        &seen.one(),
        Operation::DisableKeyRotation,
        a,
        ok,
        Some(5),
        actor,
    );
    kms.enable_key_rotation(key.id, Some(90), None).unwrap();
    check(
        &seen.one(),
        Operation::EnableKeyRotation,
        a,
        ok,
        Some(6),
        actor,
    );
    kms.replicate_key(key.id, "de-fra-1", None).unwrap();
    check(&seen.one(), Operation::ReplicateKey, a, ok, Some(7), actor);

    let sealed = kms.encrypt(key.id, b"the plaintext", Some(b"ctx")).unwrap();
    check(&seen.one(), Operation::Encrypt, a, ok, None, actor);
    kms.decrypt(key.id, &sealed.ciphertext, Some(b"ctx"))
        .unwrap();
    check(&seen.one(), Operation::Decrypt, a, ok, None, actor);

    let other = kms.create_key(&CreateKey::new("app-b")).unwrap();
    check(
        &seen.one(),
        Operation::CreateKey,
        Some(other.id),
        ok,
        Some(1),
        actor,
    );
    kms.re_encrypt(key.id, &sealed.ciphertext, Some(b"ctx"), other.id, None)
        .unwrap();
    let event = seen.one();
    check(&event, Operation::ReEncrypt, a, ok, None, actor);
    assert_eq!(event.destination, Some(other.id));
    kms.generate_data_key(key.id, DataKeySpec::Aes256, None)
        .unwrap();
    check(&seen.one(), Operation::GenerateDataKey, a, ok, None, actor);

    kms.schedule_key_deletion(key.id, Some(7), None).unwrap();
    check(
        &seen.one(),
        Operation::ScheduleKeyDeletion,
        a,
        ok,
        Some(8),
        actor,
    );
    kms.cancel_key_deletion(key.id, None).unwrap();
    check(
        &seen.one(),
        Operation::CancelKeyDeletion,
        a,
        ok,
        Some(9),
        actor,
    );

    // The revisions named are the key's own.
    assert_eq!(two.gva.get_key(key.id).unwrap().key.revision.seq, 9);
    seen.take();

    // The zone's own calls: one event each, on the zone as a whole.
    kms.run_due().unwrap();
    check(&seen.one(), Operation::RunDue, None, ok, None, actor);
    kms.sync().unwrap();
    check(&seen.one(), Operation::Sync, None, ok, None, actor);

    // The replica received every update through the link, each an event of its zone, made
    // by the handle the link holds (no actor).
    let received = two.fra_seen.take();
    assert!(!received.is_empty());
    for event in &received {
        assert_eq!(event.operation, Operation::ReceiveUpdate, "{event:?}");
        assert_eq!(event.zone, "de-fra-1");
        assert_eq!(event.key, a);
        assert_eq!(event.actor, None);
    }
    assert_eq!(received.last().unwrap().revision, Some(9));

    // No event holds what a call carried.
    let everything = format!("{:?}", seen.take());
    assert!(!everything.contains("plaintext") && !everything.contains("ctx"));
}

#[test]
fn refused_calls_send_one_event_with_the_error_code() {
    let two = two_zones();
    let seen = &two.gva_seen;
    let key = two.gva.create_key(&CreateKey::new("app-a")).unwrap();
    seen.take();
    let missing = KeyId::from_bytes([7; 16]);

    // Not found: the id given, no revision.
    assert!(two.gva.get_key(missing).is_err());
    check(
        &seen.one(),
        Operation::GetKey,
        Some(missing),
        "key-not-found",
        None,
        None,
    );
    assert!(two.gva.encrypt(missing, b"x", None).is_err());
    check(
        &seen.one(),
        Operation::Encrypt,
        Some(missing),
        "key-not-found",
        None,
        None,
    );
    assert!(two.gva.rotate_key(missing, None).is_err());
    check(
        &seen.one(),
        Operation::RotateKey,
        Some(missing),
        "key-not-found",
        None,
        None,
    );

    // Out of range, refused by the rules, a stale revision.
    assert!(two.gva.enable_key_rotation(key.id, Some(5), None).is_err());
    let event = seen.one();
    check(
        &event,
        Operation::EnableKeyRotation,
        Some(key.id),
        "bad-request",
        None,
        None,
    );
    assert!(two.gva.disable_key_rotation(key.id, None).is_ok());
    seen.take();
    assert!(two.gva.disable_key(key.id, Some(1)).is_err());
    check(
        &seen.one(),
        Operation::DisableKey,
        Some(key.id),
        "revision-conflict",
        None,
        None,
    );
    assert!(two.gva.replicate_key(key.id, "de-fra-1", None).is_err());
    check(
        &seen.one(),
        Operation::ReplicateKey,
        Some(key.id),
        "not-multi-zone",
        None,
        None,
    );
    assert!(two.gva.create_key(&CreateKey::new("app-a")).is_err());
    check(
        &seen.one(),
        Operation::CreateKey,
        None,
        "name-conflict",
        None,
        None,
    );

    // Forbidden by the caller's check: the same event whether the key exists or not.
    let nobody = two.gva.as_caller(Caller::new("svc-none").permit(|_| false));
    let actor = Some("svc-none");
    assert!(nobody.encrypt(key.id, b"x", None).is_err());
    check(
        &seen.one(),
        Operation::Encrypt,
        Some(key.id),
        "permission-denied",
        None,
        actor,
    );
    assert!(nobody.encrypt(missing, b"x", None).is_err());
    check(
        &seen.one(),
        Operation::Encrypt,
        Some(missing),
        "permission-denied",
        None,
        actor,
    );
    assert!(nobody.create_key(&CreateKey::new("app-c")).is_err());
    check(
        &seen.one(),
        Operation::CreateKey,
        None,
        "permission-denied",
        None,
        actor,
    );
    assert!(nobody.list_keys().is_err());
    check(
        &seen.one(),
        Operation::ListKeys,
        None,
        "permission-denied",
        None,
        actor,
    );
    assert!(nobody.schedule_key_deletion(key.id, Some(7), None).is_err());
    check(
        &seen.one(),
        Operation::ScheduleKeyDeletion,
        Some(key.id),
        "permission-denied",
        None,
        actor,
    );
    assert!(nobody.run_due().is_err());
    check(
        &seen.one(),
        Operation::RunDue,
        None,
        "permission-denied",
        None,
        actor,
    );
    // re-encrypt refused on its destination: still one event, naming both keys.
    let source_only = two.gva.as_caller(Caller::new("svc-source").permit(
        move |access| matches!(access.target, keylife::Target::Key { id, .. } if id == key.id),
    ));
    let sealed = two.gva.encrypt(key.id, b"x", None).unwrap();
    seen.take();
    assert!(
        source_only
            .re_encrypt(key.id, &sealed.ciphertext, None, missing, None)
            .is_err()
    );
    let event = seen.one();
    check(
        &event,
        Operation::ReEncrypt,
        Some(key.id),
        "permission-denied",
        None,
        Some("svc-source"),
    );
    assert_eq!(event.destination, Some(missing));

    // A key whose deletion is due is gone for the call that reaches it.
    two.gva
        .schedule_key_deletion(key.id, Some(7), None)
        .unwrap();
    two.clock.advance_days(7);
    seen.take();
    assert!(two.gva.get_key(key.id).is_err());
    check(
        &seen.one(),
        Operation::GetKey,
        Some(key.id),
        "key-not-found",
        None,
        None,
    );
}

#[test]
fn with_audit_adds_a_sink_to_one_handle_and_its_descendants() {
    let two = two_zones();
    let request = Seen::default();
    let handle = two
        .gva
        .as_caller(Caller::new("EXOkey"))
        .with_audit(request.sink());
    let key = handle.create_key(&CreateKey::new("k")).unwrap();
    // Both the zone's sink and the handle's see the one call, the zone's first.
    let zone_event = two.gva_seen.one();
    let handle_event = request.one();
    assert_eq!(zone_event, handle_event);
    check(
        &handle_event,
        Operation::CreateKey,
        Some(key.id),
        OUTCOME_OK,
        Some(1),
        Some("EXOkey"),
    );

    // The zone's other handles do not send to it.
    two.gva.get_key(key.id).unwrap();
    assert_eq!(two.gva_seen.one().operation, Operation::GetKey);
    assert!(request.take().is_empty());

    // A handle made from it keeps it (and narrows its caller as usual).
    let narrowed = handle.as_caller(Caller::new("inner").permit(|_| false));
    assert!(narrowed.get_key(key.id).is_err());
    let event = request.one();
    check(
        &event,
        Operation::GetKey,
        Some(key.id),
        "permission-denied",
        None,
        Some("inner"),
    );
    assert_eq!(two.gva_seen.one(), event);

    // Stacked: both handle sinks see it, in the order added.
    let second = Seen::default();
    let stacked = handle.with_audit(second.sink());
    stacked.list_keys().unwrap();
    assert_eq!(request.one(), second.one());
    assert_eq!(two.gva_seen.one().operation, Operation::ListKeys);

    // A zone opened without a sink sends nothing, unless a handle asks.
    let quiet = Kms::open_in_memory(root(3), KmsOptions::new("quiet")).unwrap();
    quiet.create_key(&CreateKey::new("q")).unwrap();
    let own = Seen::default();
    quiet.with_audit(own.sink()).list_keys().unwrap();
    assert_eq!(own.one().operation, Operation::ListKeys);
    assert!(two.fra_seen.take().is_empty());
}

#[test]
fn retire_version_sends_one_event() {
    let two = two_zones();
    let key = two
        .gva
        .create_key(&CreateKey::new("app-a").multi_zone(true))
        .unwrap();
    two.gva_seen.take();
    two.gva.retire_version(key.id, 1).unwrap();
    let event = two.gva_seen.one();
    check(
        &event,
        Operation::RetireVersion,
        Some(key.id),
        OUTCOME_OK,
        Some(2),
        None,
    );
    assert!(
        two.gva
            .retire_version(KeyId::from_bytes([1; 16]), 1)
            .is_err()
    );
    assert_eq!(two.gva_seen.one().outcome, "key-not-found");
}

#[test]
fn the_audit_head_is_recorded_durably_and_only_moves_forward() {
    let dir = tempfile::tempdir().unwrap();
    let open = || Kms::open(dir.path(), root(1), KmsOptions::new("ch-gva-2")).unwrap();
    let kms = open();
    assert_eq!(kms.audit_head().unwrap(), None);
    let head = |seq, byte| AuditHead {
        seq,
        mac: [byte; 32],
    };
    kms.record_audit_head(head(3, 1)).unwrap();
    kms.record_audit_head(head(3, 1)).unwrap();
    kms.record_audit_head(head(5, 2)).unwrap();
    assert_eq!(kms.audit_head().unwrap(), Some(head(5, 2)));
    // Backwards, or the same line with another MAC: refused, and nothing changes.
    let error = kms.record_audit_head(head(4, 3)).unwrap_err();
    assert_eq!(error.code(), "bad-request");
    assert_eq!(
        kms.record_audit_head(head(5, 9)).unwrap_err().code(),
        "bad-request"
    );
    assert_eq!(kms.audit_head().unwrap(), Some(head(5, 2)));
    // Not by a handle with a check.
    let restricted = kms.as_caller(Caller::new("app").permit(|_| true));
    assert_eq!(
        restricted.record_audit_head(head(6, 1)).unwrap_err().code(),
        "permission-denied"
    );
    drop(restricted);
    drop(kms);
    // Durable, and authenticated like every stored value (the store opens, its digest adds up).
    assert_eq!(open().audit_head().unwrap(), Some(head(5, 2)));
}

#[test]
fn each_of_the_16_operations_refused_sends_one_event_with_its_code() {
    let two = two_zones();
    let seen = &two.gva_seen;
    let key = two.gva.create_key(&CreateKey::new("app-a")).unwrap();
    let missing = KeyId::from_bytes([7; 16]);
    seen.take();

    // Forbidden: every operation, on a key that exists.
    let nobody = two.gva.as_caller(Caller::new("svc-none").permit(|_| false));
    let mut operations = std::collections::HashSet::new();
    for (operation, (event, ok)) in all_16_one_by_one(&nobody, key.id, seen) {
        assert!(!ok, "{operation:?} was not refused");
        check(
            &event,
            operation,
            event.key,
            "permission-denied",
            None,
            Some("svc-none"),
        );
        if operation != Operation::CreateKey && operation != Operation::ListKeys {
            assert_eq!(event.key, Some(key.id), "{event:?}");
        }
        operations.insert(operation);
    }
    assert_eq!(operations.len(), 16);

    // Not found: every operation on a key, on an id the zone does not hold.
    for (operation, (event, ok)) in all_16_one_by_one(&two.gva, missing, seen) {
        if matches!(operation, Operation::CreateKey | Operation::ListKeys) {
            assert!(ok);
            continue;
        }
        assert!(!ok, "{operation:?} succeeded on a missing key");
        check(
            &event,
            operation,
            Some(missing),
            "key-not-found",
            None,
            None,
        );
    }
}

/// Makes each of the 16 operations on key `id` (re-encrypt from and to it), one at a time,
/// with the one event each call sent and whether it succeeded.
fn all_16_one_by_one(kms: &Kms, id: KeyId, seen: &Seen) -> Vec<(Operation, (AuditEvent, bool))> {
    (0..16)
        .map(|index| {
            seen.take();
            let (operation, ok) = all_16_nth(kms, id, index);
            (operation, (seen.one(), ok))
        })
        .collect()
}

/// Operation number `index` of the 16, made on key `id`: the operation, and whether it
/// succeeded.
fn all_16_nth(kms: &Kms, id: KeyId, index: usize) -> (Operation, bool) {
    let sealed = [0u8; 64];
    match index {
        0 => (
            Operation::CreateKey,
            kms.create_key(&CreateKey::new("app-new")).is_ok(),
        ),
        1 => (Operation::ListKeys, kms.list_keys().is_ok()),
        2 => (Operation::GetKey, kms.get_key(id).is_ok()),
        3 => (
            Operation::ListKeyRotations,
            kms.list_key_rotations(id).is_ok(),
        ),
        4 => (Operation::EnableKey, kms.enable_key(id, None).is_ok()),
        5 => (Operation::DisableKey, kms.disable_key(id, None).is_ok()),
        6 => (
            Operation::ScheduleKeyDeletion,
            kms.schedule_key_deletion(id, None, None).is_ok(),
        ),
        7 => (
            Operation::CancelKeyDeletion,
            kms.cancel_key_deletion(id, None).is_ok(),
        ),
        8 => (Operation::RotateKey, kms.rotate_key(id, None).is_ok()),
        9 => (
            Operation::EnableKeyRotation,
            kms.enable_key_rotation(id, None, None).is_ok(),
        ),
        10 => (
            Operation::DisableKeyRotation,
            kms.disable_key_rotation(id, None).is_ok(),
        ),
        11 => (
            Operation::ReplicateKey,
            kms.replicate_key(id, "de-fra-1", None).is_ok(),
        ),
        12 => (Operation::Encrypt, kms.encrypt(id, b"x", None).is_ok()),
        13 => (Operation::Decrypt, kms.decrypt(id, &sealed, None).is_ok()),
        14 => (
            Operation::ReEncrypt,
            kms.re_encrypt(id, &sealed, None, id, None).is_ok(),
        ),
        _ => (
            Operation::GenerateDataKey,
            kms.generate_data_key(id, DataKeySpec::Aes256, None).is_ok(),
        ),
    }
}
