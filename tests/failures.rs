//! Failures at the edges: a deletion already due, a backend write that fails before or after
//! applying, two `Kms` on one backend, a store reopened for another zone.

mod common;

use std::sync::Arc;

use keylife::store::{Backend, MemoryBackend};
use keylife::{CreateKey, Error, Kms, KmsOptions, Limits, ManualClock};

use common::{kms_on, root, start};

#[test]
fn a_key_is_gone_from_delete_at_on_even_without_run_due() {
    let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let clock = ManualClock::new(start());
    let kms = kms_on(Arc::clone(&backend), &clock, Limits::default());
    let keys: Vec<_> = (0..4)
        .map(|i| kms.create_key(&CreateKey::new(format!("k{i}"))).unwrap().id)
        .collect();
    let sealed = kms.encrypt(keys[1], b"p", None).unwrap().ciphertext;
    for id in &keys {
        kms.schedule_key_deletion(*id, Some(7), None).unwrap();
    }
    clock.advance_days(7);
    // Too late to cancel: the key no longer exists, and cancelling does not bring it back.
    assert_eq!(
        kms.cancel_key_deletion(keys[0], None).unwrap_err(),
        Error::KeyNotFound { id: keys[0] }
    );
    assert_eq!(
        kms.enable_key(keys[0], None).unwrap_err(),
        Error::KeyNotFound { id: keys[0] }
    );
    // Every kind of call finds it gone.
    assert_eq!(
        kms.decrypt(keys[1], &sealed, None).unwrap_err(),
        Error::KeyNotFound { id: keys[1] }
    );
    assert_eq!(
        kms.get_key(keys[2]).unwrap_err(),
        Error::KeyNotFound { id: keys[2] }
    );
    assert!(kms.list_keys().unwrap().kms_keys.is_empty());
    // And it is destroyed in the store, material included; run_due has nothing left.
    let store = common::view(&backend);
    for id in &keys {
        assert_eq!(store.load(*id).unwrap(), None);
        assert!(store.load_material(*id, 1).is_err());
    }
    assert!(kms.run_due().unwrap().deleted.is_empty());
}

#[test]
fn one_nanosecond_before_delete_at_the_deletion_can_be_cancelled() {
    let (kms, clock) = common::memory_kms();
    let key = kms.create_key(&CreateKey::new("k")).unwrap();
    kms.schedule_key_deletion(key.id, Some(7), None).unwrap();
    clock.advance_days(7);
    clock.advance(jiff::SignedDuration::from_nanos(-1));
    kms.cancel_key_deletion(key.id, None).unwrap();
    clock.advance_days(30);
    assert!(kms.run_due().unwrap().deleted.is_empty());
    assert_eq!(
        kms.get_key(key.id).unwrap().key.status,
        keylife::KeyStatus::Disabled
    );
}

// Failed writes and flushes of every mutating call: tests/faults.rs.

#[test]
fn one_backend_serves_one_kms_at_a_time() {
    let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let clock = ManualClock::new(start());
    let first = kms_on(Arc::clone(&backend), &clock, Limits::default());
    let second = Kms::with_backend(Arc::clone(&backend), root(1), KmsOptions::new("ch-gva-2"));
    let err = second.unwrap_err();
    assert!(matches!(err, Error::StoreInUse { .. }), "{err:?}");
    assert_eq!(err.code(), "store-in-use");
    assert!(err.to_string().contains("already in use"), "{err}");
    drop(first);
    kms_on(backend, &clock, Limits::default());
}

#[test]
fn a_store_serves_the_zone_it_was_created_for() {
    let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    drop(Kms::with_backend(Arc::clone(&backend), root(1), KmsOptions::new("ch-gva-2")).unwrap());
    let err =
        Kms::with_backend(Arc::clone(&backend), root(1), KmsOptions::new("de-fra-1")).unwrap_err();
    assert!(
        matches!(err, Error::BadRequest { field: "zone", .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("ch-gva-2"), "{err}");
    Kms::with_backend(backend, root(1), KmsOptions::new("ch-gva-2")).unwrap();
}
