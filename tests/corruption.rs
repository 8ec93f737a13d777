//! Damaged stored bytes: a typed error for that key, never a panic, the other keys untouched.

mod common;

use std::sync::Arc;

use keylife::store::{MemoryBackend, Table};
use keylife::{CreateKey, Error};

use common::{kms_on, start};

fn material_key(id: keylife::KeyId, version: u32) -> Vec<u8> {
    let mut key = id.as_bytes().to_vec();
    key.extend_from_slice(&version.to_be_bytes());
    key
}

#[test]
fn a_damaged_record_fails_only_its_key() {
    let backend = Arc::new(MemoryBackend::new());
    let clock = keylife::ManualClock::new(start());
    let kms = kms_on(backend.clone(), &clock, Default::default());
    let bad = kms.create_key(&CreateKey::new("bad")).unwrap();
    let good = kms.create_key(&CreateKey::new("good")).unwrap();
    let sealed = kms.encrypt(good.id, b"p", None).unwrap().ciphertext;
    drop(kms);

    assert!(
        backend.danger_edit_raw(Table::Keys, bad.id.as_bytes(), |bytes| {
            bytes.truncate(bytes.len() / 2)
        })
    );
    let kms = kms_on(backend.clone(), &clock, Default::default());
    let err = kms.get_key(bad.id).unwrap_err();
    assert_eq!(err.code(), "corrupt-record");
    assert!(err.to_string().contains(&bad.id.to_string()), "{err}");
    assert_eq!(
        kms.encrypt(bad.id, b"p", None).unwrap_err().code(),
        "corrupt-record"
    );
    assert_eq!(
        kms.disable_key(bad.id, None).unwrap_err().code(),
        "corrupt-record"
    );
    assert_eq!(kms.list_keys().unwrap_err().code(), "corrupt-record");

    // The other key works in every way.
    assert_eq!(
        kms.decrypt(good.id, &sealed, None)
            .unwrap()
            .plaintext
            .as_bytes(),
        b"p"
    );
    kms.rotate_key(good.id, None).unwrap();
    kms.encrypt(good.id, b"q", None).unwrap();

    // A due run reports the damaged key (its due entry is intact) and does the rest.
    kms.schedule_key_deletion(good.id, Some(7), None).unwrap();
    clock.advance_days(400);
    let report = kms.run_due().unwrap();
    assert_eq!(report.deleted, vec![good.id]);
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].0, bad.id);
    assert_eq!(report.failed[0].1.code(), "corrupt-record");
}

#[test]
fn damaged_or_moved_material_fails_only_its_key() {
    let backend = Arc::new(MemoryBackend::new());
    let clock = keylife::ManualClock::new(start());
    let kms = kms_on(backend.clone(), &clock, Default::default());
    let a = kms.create_key(&CreateKey::new("a")).unwrap();
    let b = kms.create_key(&CreateKey::new("b")).unwrap();
    let sealed_b = kms.encrypt(b.id, b"b", None).unwrap().ciphertext;
    drop(kms);

    // Flip one bit of a's sealed material: it no longer authenticates under the root key.
    assert!(
        backend.danger_edit_raw(Table::Materials, &material_key(a.id, 1), |bytes| bytes
            [20] ^=
            1)
    );
    let kms = kms_on(backend.clone(), &clock, Default::default());
    let err = kms.encrypt(a.id, b"a", None).unwrap_err();
    assert_eq!(err.code(), "corrupt-record");
    assert!(
        err.to_string().contains(&format!("material {}/v1", a.id)),
        "{err}"
    );
    assert_eq!(
        kms.decrypt(b.id, &sealed_b, None)
            .unwrap()
            .plaintext
            .as_bytes(),
        b"b"
    );
    drop(kms);

    // Put b's sealed material in a's place: sealing binds a blob to its key, so it is refused.
    let mut moved = Vec::new();
    assert!(
        backend.danger_edit_raw(Table::Materials, &material_key(b.id, 1), |bytes| moved =
            bytes.clone())
    );
    assert!(
        backend.danger_edit_raw(Table::Materials, &material_key(a.id, 1), |bytes| *bytes =
            moved.clone())
    );
    let kms = kms_on(backend, &clock, Default::default());
    assert_eq!(
        kms.encrypt(a.id, b"a", None).unwrap_err().code(),
        "corrupt-record"
    );
    assert!(matches!(
        kms.decrypt(a.id, &sealed_b, None).unwrap_err(),
        Error::Corrupt { .. }
    ));
    assert_eq!(
        kms.decrypt(b.id, &sealed_b, None)
            .unwrap()
            .plaintext
            .as_bytes(),
        b"b"
    );
}
