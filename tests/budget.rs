//! The encryption budget of a material version: counted, made durable in reserved blocks,
//! never going backwards across reopen, and answered by an automatic rotation.

mod common;

use keylife::{CreateKey, Limits, RESERVATION_BLOCK};

use common::{kms_on, memory, start};

fn version_of(ciphertext: &[u8]) -> u32 {
    u32::from_be_bytes(ciphertext[17..21].try_into().unwrap())
}

fn limits(budget: u64) -> Limits {
    Limits {
        max_encryptions_per_version: budget,
        ..Limits::default()
    }
}

#[test]
fn a_spent_budget_rotates_the_key_automatically() {
    let backend = memory();
    let clock = keylife::ManualClock::new(start());
    let kms = kms_on(backend, &clock, limits(5));
    let key = kms.create_key(&CreateKey::new("k")).unwrap();
    let mut sealed = Vec::new();
    for i in 0..5u8 {
        let ciphertext = kms.encrypt(key.id, &[i], None).unwrap().ciphertext;
        assert_eq!(version_of(&ciphertext), 1);
        sealed.push(ciphertext);
    }
    let before = kms.get_key(key.id).unwrap();
    let sixth = kms.encrypt(key.id, b"6", None).unwrap().ciphertext;
    assert_eq!(
        version_of(&sixth),
        2,
        "the 6th encryption uses a new version"
    );
    let after = kms.get_key(key.id).unwrap();
    assert_eq!(after.key.material.version, 2);
    assert!(
        after.key.material.automatic,
        "recorded as an automatic rotation"
    );
    assert_eq!(after.key.rotation.manual_count, 0, "not a manual rotation");
    assert_eq!(
        after.key.rotation.next_at, before.key.rotation.next_at,
        "schedule kept"
    );
    assert_eq!(after.key.revision.seq, before.key.revision.seq + 1);
    for (i, ciphertext) in sealed.iter().enumerate() {
        assert_eq!(
            kms.decrypt(key.id, ciphertext, None)
                .unwrap()
                .plaintext
                .as_bytes(),
            &[i as u8]
        );
    }
    // Data keys count too.
    for _ in 0..4 {
        kms.generate_data_key(key.id, keylife::DataKeySpec::Aes256, None)
            .unwrap();
    }
    let next = kms.encrypt(key.id, b"x", None).unwrap().ciphertext;
    assert_eq!(version_of(&next), 3, "1 + 4 encryptions spent version 2");
}

#[test]
fn the_count_never_goes_backwards_across_reopen() {
    let backend = memory();
    let clock = keylife::ManualClock::new(start());
    let budget = 2 * RESERVATION_BLOCK;
    let kms = kms_on(backend.clone(), &clock, limits(budget));
    let key = kms.create_key(&CreateKey::new("k")).unwrap();
    let store = common::view(&backend);
    assert_eq!(
        store.reserved(key.id, 1).unwrap(),
        RESERVATION_BLOCK,
        "first block reserved at creation"
    );
    kms.encrypt(key.id, b"a", None).unwrap();
    assert_eq!(
        store.reserved(key.id, 1).unwrap(),
        RESERVATION_BLOCK,
        "no write inside a block"
    );
    drop(kms);

    // After reopening, every reserved encryption counts as done: the next one reserves anew.
    let kms = kms_on(backend.clone(), &clock, limits(budget));
    kms.encrypt(key.id, b"b", None).unwrap();
    assert_eq!(
        store.reserved(key.id, 1).unwrap(),
        budget,
        "count resumed from the reservation"
    );
    drop(kms);

    // The whole budget is now reserved: the first encryption after reopening rotates.
    let kms = kms_on(backend, &clock, limits(budget));
    let ciphertext = kms.encrypt(key.id, b"c", None).unwrap().ciphertext;
    assert_eq!(version_of(&ciphertext), 2);
    assert_eq!(store.reserved(key.id, 2).unwrap(), RESERVATION_BLOCK);
}

#[test]
fn deleting_a_key_removes_its_reservations() {
    let backend = memory();
    let clock = keylife::ManualClock::new(start());
    let kms = kms_on(backend.clone(), &clock, limits(3));
    let key = kms.create_key(&CreateKey::new("k")).unwrap();
    for _ in 0..4 {
        kms.encrypt(key.id, b"x", None).unwrap();
    }
    let store = common::view(&backend);
    assert_eq!(store.reserved(key.id, 2).unwrap(), 3);
    kms.schedule_key_deletion(key.id, Some(7), None).unwrap();
    clock.advance_days(7);
    assert_eq!(kms.run_due().unwrap().deleted, vec![key.id]);
    assert_eq!(store.reserved(key.id, 1).unwrap(), 0);
    assert_eq!(store.reserved(key.id, 2).unwrap(), 0);
}
