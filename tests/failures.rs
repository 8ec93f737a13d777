//! Failures at the edges: a deletion already due, a backend write that fails before or after
//! applying, two `Kms` on one backend, a store reopened for another zone.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use keylife::store::{Backend, Entries, MemoryBackend, Store, Table, Write};
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
    let store = Store::new(backend);
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

/// A backend that fails its `fail_at`-th commit (1-based), either before applying it
/// (`Storage`) or after (`NotDurable`, as sled does when its flush fails).
struct Faulty {
    inner: MemoryBackend,
    commits: AtomicUsize,
    fail_at: usize,
    apply_first: bool,
}

impl Backend for Faulty {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.inner.get(table, key)
    }
    fn scan(
        &self,
        table: Table,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, Error> {
        self.inner.scan(table, start, end, limit)
    }
    fn commit(&self, batch: &[Write]) -> Result<(), Error> {
        if self.commits.fetch_add(1, Ordering::SeqCst) + 1 != self.fail_at {
            return self.inner.commit(batch);
        }
        if self.apply_first {
            self.inner.commit(batch)?;
            Err(Error::NotDurable {
                detail: "injected flush failure".into(),
            })
        } else {
            Err(Error::Storage {
                detail: "injected write failure".into(),
            })
        }
    }
}

fn faulty(fail_at: usize, apply_first: bool) -> Arc<Faulty> {
    Arc::new(Faulty {
        inner: MemoryBackend::new(),
        commits: AtomicUsize::new(0),
        fail_at,
        apply_first,
    })
}

#[test]
fn a_write_that_fails_before_applying_changes_nothing_and_the_kms_goes_on() {
    // Commits: 1 initialize, 2 create, 3 rotate (fails).
    let backend = faulty(3, false);
    let clock = ManualClock::new(start());
    let kms = kms_on(backend.clone(), &clock, Limits::default());
    let key = kms.create_key(&CreateKey::new("k")).unwrap();
    let sealed = kms.encrypt(key.id, b"v1", None).unwrap().ciphertext;
    let before = kms.get_key(key.id).unwrap();
    assert_eq!(kms.rotate_key(key.id, None).unwrap_err().code(), "storage");
    assert_eq!(
        kms.get_key(key.id).unwrap(),
        before,
        "the key is exactly as before"
    );
    let again = kms.encrypt(key.id, b"again", None).unwrap().ciphertext;
    assert_eq!(
        u32::from_be_bytes(again[17..21].try_into().unwrap()),
        1,
        "still version 1"
    );
    // The Kms keeps working.
    kms.rotate_key(key.id, None).unwrap();
    assert_eq!(kms.get_key(key.id).unwrap().key.material.version, 2);
    assert_eq!(
        kms.decrypt(key.id, &sealed, None)
            .unwrap()
            .plaintext
            .as_bytes(),
        b"v1"
    );
}

#[test]
fn a_write_of_unknown_durability_stops_the_kms_until_reopened() {
    // Commits: 1 initialize, 2 create, 3 rotate (applied, then "flush" fails).
    let backend = faulty(3, true);
    let clock = ManualClock::new(start());
    let kms = kms_on(backend.clone(), &clock, Limits::default());
    let key = kms.create_key(&CreateKey::new("k")).unwrap();
    let sealed = kms.encrypt(key.id, b"v1", None).unwrap().ciphertext;
    assert_eq!(
        kms.rotate_key(key.id, None).unwrap_err().code(),
        "not-durable"
    );
    // Nothing may build on a change that might be lost: every call is refused...
    for err in [
        kms.encrypt(key.id, b"p", None).map(|_| ()).unwrap_err(),
        kms.decrypt(key.id, &sealed, None).map(|_| ()).unwrap_err(),
        kms.get_key(key.id).map(|_| ()).unwrap_err(),
        kms.list_keys().map(|_| ()).unwrap_err(),
        kms.disable_key(key.id, None).map(|_| ()).unwrap_err(),
        kms.create_key(&CreateKey::new("other"))
            .map(|_| ())
            .unwrap_err(),
        kms.run_due().map(|_| ()).unwrap_err(),
    ] {
        assert_eq!(err.code(), "not-durable", "{err}");
    }
    // ...until the store is opened again, in a consistent state.
    drop(kms);
    let kms = kms_on(backend, &clock, Limits::default());
    assert_eq!(
        kms.decrypt(key.id, &sealed, None)
            .unwrap()
            .plaintext
            .as_bytes(),
        b"v1"
    );
    kms.encrypt(key.id, b"p", None).unwrap();
}

#[test]
fn one_backend_serves_one_kms_at_a_time() {
    let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let clock = ManualClock::new(start());
    let first = kms_on(Arc::clone(&backend), &clock, Limits::default());
    let second = Kms::with_backend(Arc::clone(&backend), root(1), KmsOptions::new("ch-gva-2"));
    let err = second.unwrap_err();
    assert_eq!(err.code(), "storage");
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
