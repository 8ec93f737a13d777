//! Many threads on one key: no lost update, no panic, every ciphertext decrypts.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;

use keylife::{CreateKey, Error, Kms, KmsOptions, SuccessStatus};

use common::{memory_kms, root, start};

/// Counts the changes each thread made and checks them against the key's revision.
fn hammer(kms: Arc<Kms>) {
    let key = kms.create_key(&CreateKey::new("hot")).unwrap();
    let changes = Arc::new(AtomicU64::new(0));
    let rotations = Arc::new(AtomicU64::new(0));
    let ciphertexts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let kms = Arc::clone(&kms);
            let changes = Arc::clone(&changes);
            let rotations = Arc::clone(&rotations);
            let ciphertexts = Arc::clone(&ciphertexts);
            thread::spawn(move || {
                for i in 0..60u64 {
                    let changed = match (t + i) % 7 {
                        0 => kms
                            .enable_key(key.id, None)
                            .map(|r| r.status == SuccessStatus::Success),
                        1 => kms
                            .disable_key(key.id, None)
                            .map(|r| r.status == SuccessStatus::Success),
                        2 => kms.rotate_key(key.id, None).map(|_| {
                            rotations.fetch_add(1, Ordering::SeqCst);
                            true
                        }),
                        3 => kms
                            .enable_key_rotation(key.id, Some(90), None)
                            .map(|_| true),
                        4 => kms.disable_key_rotation(key.id, None).map(|_| true),
                        5 => {
                            // A read-modify-write with the revision as the token.
                            let seq = kms.get_key(key.id).unwrap().key.revision.seq;
                            kms.disable_key(key.id, Some(seq))
                                .map(|r| r.status == SuccessStatus::Success)
                        }
                        _ => {
                            // Enable, then encrypt; another thread may disable in between, so
                            // try again a few times. Each enable that changed the key counts.
                            let plaintext = (t * 1000 + i).to_be_bytes();
                            for _ in 0..50 {
                                if kms.enable_key(key.id, None).unwrap().status
                                    == SuccessStatus::Success
                                {
                                    changes.fetch_add(1, Ordering::SeqCst);
                                }
                                match kms.encrypt(key.id, &plaintext, Some(b"ctx")) {
                                    Ok(sealed) => {
                                        ciphertexts
                                            .lock()
                                            .unwrap()
                                            .push((plaintext, sealed.ciphertext));
                                        break;
                                    }
                                    Err(Error::KeyDisabled { .. }) => {}
                                    Err(other) => panic!("encrypt: {other}"),
                                }
                            }
                            Ok(false)
                        }
                    };
                    match changed {
                        Ok(true) => {
                            changes.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(false) => {}
                        // The refusals the rules allow under this mix.
                        Err(
                            Error::KeyDisabled { .. }
                            | Error::Conflict { .. }
                            | Error::ManualRotationLimit { .. }
                            | Error::RevisionConflict { .. },
                        ) => {}
                        Err(other) => panic!("unexpected error: {other}"),
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("no thread panicked");
    }
    let details = kms.get_key(key.id).unwrap();
    let changes = changes.load(Ordering::SeqCst);
    assert_eq!(
        details.key.revision.seq,
        1 + changes,
        "one revision per acknowledged change"
    );
    let rotations = rotations.load(Ordering::SeqCst);
    assert!(rotations <= 10);
    assert_eq!(details.key.rotation.manual_count as u64, rotations);
    assert_eq!(details.key.material.version as u64, 1 + rotations);
    kms.enable_key(key.id, None).unwrap();
    let ciphertexts = ciphertexts.lock().unwrap();
    assert!(!ciphertexts.is_empty());
    for (plaintext, ciphertext) in ciphertexts.iter() {
        let opened = kms.decrypt(key.id, ciphertext, Some(b"ctx")).unwrap();
        assert_eq!(opened.plaintext.as_bytes(), plaintext);
    }
}

#[test]
fn eight_threads_on_one_key_in_memory() {
    let (kms, _) = memory_kms();
    hammer(Arc::new(kms));
}

#[test]
fn eight_threads_on_one_key_on_sled() {
    let dir = tempfile::tempdir().unwrap();
    let clock = keylife::ManualClock::new(start());
    let kms = Kms::open(dir.path(), root(1), KmsOptions::new("z").clock(clock)).unwrap();
    hammer(Arc::new(kms));
}

#[test]
fn concurrent_creates_respect_names_and_quota() {
    let clock = keylife::ManualClock::new(start());
    let limits = keylife::Limits {
        key_quota: 20,
        ..Default::default()
    };
    let kms = Arc::new(
        Kms::open_in_memory(root(1), KmsOptions::new("z").clock(clock).limits(limits)).unwrap(),
    );
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let kms = Arc::clone(&kms);
            thread::spawn(move || {
                let mut created = 0;
                for i in 0..10 {
                    match kms.create_key(&CreateKey::new(format!("key-{i}"))) {
                        Ok(_) => created += 1,
                        Err(Error::NameConflict { .. }) => {}
                        Err(other) => panic!("{other}"),
                    }
                }
                created
            })
        })
        .collect();
    let created: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(created, 10, "each name created exactly once");
    assert_eq!(kms.list_keys().unwrap().kms_keys.len(), 10);
}
