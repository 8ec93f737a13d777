//! Out-of-range and malformed arguments: a typed error naming the field and the bound, never
//! a panic, and no change to the key asked or to any other key.

mod common;

use keylife::{CreateKey, DataKeySpec, Error, KeyId, Kms, KmsOptions, Limits};

use common::{memory_kms, root};

fn bad_request(result: Result<impl std::fmt::Debug, Error>) -> (&'static str, String) {
    match result {
        Err(Error::BadRequest { field, reason }) => (field, reason),
        other => panic!("expected a bad request, got {other:?}"),
    }
}

/// Runs `f` and checks that no key of `kms` changed.
fn leaves_everything_unchanged(kms: &Kms, f: impl FnOnce()) {
    let before = kms.list_keys().unwrap();
    f();
    assert_eq!(kms.list_keys().unwrap(), before);
}

#[test]
fn names_and_descriptions_out_of_range() {
    let (kms, _) = memory_kms();
    kms.create_key(&CreateKey::new("existing")).unwrap();
    leaves_everything_unchanged(&kms, || {
        let (field, reason) = bad_request(kms.create_key(&CreateKey::new("")));
        assert_eq!(field, "name");
        assert!(reason.contains("between 1 and 256"), "{reason}");
        let (field, reason) = bad_request(kms.create_key(&CreateKey::new("n".repeat(257))));
        assert_eq!(field, "name");
        assert!(reason.contains("got 257"), "{reason}");
        let long = CreateKey::new("ok").description("d".repeat(1025));
        let (field, reason) = bad_request(kms.create_key(&long));
        assert_eq!(field, "description");
        assert!(reason.contains("1024"), "{reason}");
    });
    // The bounds themselves are allowed, counted in characters.
    kms.create_key(&CreateKey::new("é".repeat(256)).description("ü".repeat(1024)))
        .unwrap();
    kms.create_key(&CreateKey::new("x")).unwrap();
}

#[test]
fn duplicate_names_and_quota() {
    let clock = keylife::ManualClock::new(common::start());
    let limits = Limits {
        key_quota: 2,
        ..Limits::default()
    };
    let kms =
        Kms::open_in_memory(root(1), KmsOptions::new("z").clock(clock).limits(limits)).unwrap();
    kms.create_key(&CreateKey::new("a")).unwrap();
    leaves_everything_unchanged(&kms, || {
        let err = kms.create_key(&CreateKey::new("a")).unwrap_err();
        assert_eq!(
            err,
            Error::NameConflict {
                name: "a".into(),
                zone: "z".into()
            }
        );
        assert_eq!(err.http_status(), 409);
    });
    kms.create_key(&CreateKey::new("b")).unwrap();
    leaves_everything_unchanged(&kms, || {
        let err = kms.create_key(&CreateKey::new("c")).unwrap_err();
        assert_eq!(
            err,
            Error::QuotaExceeded {
                zone: "z".into(),
                limit: 2
            }
        );
        assert!(err.to_string().contains('2'));
    });
}

#[test]
fn delays_periods_and_byte_counts_out_of_range() {
    let (kms, _) = memory_kms();
    let key = kms.create_key(&CreateKey::new("k")).unwrap();
    kms.disable_key_rotation(key.id, None).unwrap();
    leaves_everything_unchanged(&kms, || {
        for days in [0, 6, 31, u32::MAX] {
            let (field, reason) = bad_request(kms.schedule_key_deletion(key.id, Some(days), None));
            assert_eq!(field, "delay-days");
            assert!(reason.contains("between 7 and 30"), "{reason}");
        }
        for days in [0, 89, 2561, u32::MAX] {
            let (field, reason) = bad_request(kms.enable_key_rotation(key.id, Some(days), None));
            assert_eq!(field, "rotation-period");
            assert!(reason.contains("between 90 and 2560"), "{reason}");
        }
        for count in [0, 1025, u32::MAX] {
            let (field, reason) =
                bad_request(kms.generate_data_key(key.id, DataKeySpec::Bytes(count), None));
            assert_eq!(field, "bytes-count");
            assert!(reason.contains("between 1 and 1024"), "{reason}");
        }
        let (field, _) = bad_request(DataKeySpec::from_request(Some("AES-256"), Some(32)));
        assert_eq!(field, "key-spec");
        let (field, _) = bad_request(DataKeySpec::from_request(Some("AES-128"), None));
        assert_eq!(field, "key-spec");
    });
    // The bounds are allowed.
    kms.enable_key_rotation(key.id, Some(90), None).unwrap();
    kms.disable_key_rotation(key.id, None).unwrap();
    kms.enable_key_rotation(key.id, Some(2560), None).unwrap();
    kms.schedule_key_deletion(key.id, Some(7), None).unwrap();
}

#[test]
fn oversized_plaintext_context_and_ciphertext() {
    let clock = keylife::ManualClock::new(common::start());
    let limits = Limits {
        max_plaintext_bytes: 64,
        max_context_bytes: 16,
        ..Limits::default()
    };
    let kms =
        Kms::open_in_memory(root(1), KmsOptions::new("z").clock(clock).limits(limits)).unwrap();
    let key = kms.create_key(&CreateKey::new("k")).unwrap();
    let sealed = kms
        .encrypt(key.id, &[1; 64], Some(&[2; 16]))
        .unwrap()
        .ciphertext;
    leaves_everything_unchanged(&kms, || {
        let (field, reason) = bad_request(kms.encrypt(key.id, &[1; 65], None));
        assert_eq!(field, "plaintext");
        assert!(reason.contains("at most 64 bytes, got 65"), "{reason}");
        let (field, _) = bad_request(kms.encrypt(key.id, b"p", Some(&[2; 17])));
        assert_eq!(field, "encryption-context");
        let (field, _) = bad_request(kms.decrypt(key.id, &sealed, Some(&[2; 17])));
        assert_eq!(field, "encryption-context");
        let mut long = sealed.clone();
        long.push(0);
        let (field, _) = bad_request(kms.decrypt(key.id, &long, Some(&[2; 16])));
        assert_eq!(field, "ciphertext");
        let (field, _) =
            bad_request(kms.generate_data_key(key.id, DataKeySpec::Aes256, Some(&[0; 17])));
        assert_eq!(field, "encryption-context");
    });
    assert_eq!(
        kms.decrypt(key.id, &sealed, Some(&[2; 16]))
            .unwrap()
            .plaintext
            .as_bytes(),
        &[1; 64]
    );
}

#[test]
fn unknown_and_malformed_key_ids() {
    let (kms, _) = memory_kms();
    let known = kms.create_key(&CreateKey::new("k")).unwrap();
    let sealed = kms.encrypt(known.id, b"p", None).unwrap().ciphertext;
    let unknown = KeyId::parse("01900000-0000-7000-8000-000000000000").unwrap();
    let not_found = Error::KeyNotFound { id: unknown };
    leaves_everything_unchanged(&kms, || {
        assert_eq!(kms.get_key(unknown).unwrap_err(), not_found);
        assert_eq!(kms.enable_key(unknown, None).unwrap_err(), not_found);
        assert_eq!(kms.disable_key(unknown, None).unwrap_err(), not_found);
        assert_eq!(kms.rotate_key(unknown, None).unwrap_err(), not_found);
        assert_eq!(
            kms.enable_key_rotation(unknown, None, None).unwrap_err(),
            not_found
        );
        assert_eq!(
            kms.disable_key_rotation(unknown, None).unwrap_err(),
            not_found
        );
        assert_eq!(kms.list_key_rotations(unknown).unwrap_err(), not_found);
        assert_eq!(
            kms.schedule_key_deletion(unknown, None, None).unwrap_err(),
            not_found
        );
        assert_eq!(
            kms.cancel_key_deletion(unknown, None).unwrap_err(),
            not_found
        );
        assert_eq!(kms.encrypt(unknown, b"p", None).unwrap_err(), not_found);
        assert_eq!(kms.decrypt(unknown, &sealed, None).unwrap_err(), not_found);
        assert_eq!(
            kms.generate_data_key(unknown, DataKeySpec::Aes256, None)
                .unwrap_err(),
            not_found
        );
        assert_eq!(
            kms.re_encrypt(unknown, &sealed, None, known.id, None)
                .unwrap_err(),
            not_found
        );
        assert_eq!(
            kms.re_encrypt(known.id, &sealed, None, unknown, None)
                .unwrap_err(),
            not_found
        );
        assert_eq!(not_found.http_status(), 404);
    });
    for text in ["", "nope", "0190-0000", &"f".repeat(5000)] {
        let err = KeyId::parse(text).unwrap_err();
        assert!(
            matches!(err, Error::BadRequest { field: "id", .. }),
            "{err:?}"
        );
        assert_eq!(err.http_status(), 400);
    }
}

#[test]
fn stale_revisions_are_refused_and_change_nothing() {
    let (kms, _) = memory_kms();
    let key = kms.create_key(&CreateKey::new("k")).unwrap();
    assert_eq!(key.revision.seq, 1);
    leaves_everything_unchanged(&kms, || {
        let err = kms.disable_key(key.id, Some(2)).unwrap_err();
        assert_eq!(
            err,
            Error::RevisionConflict {
                id: key.id,
                expected: 2,
                actual: 1
            }
        );
        assert_eq!(err.http_status(), 409);
        assert!(kms.rotate_key(key.id, Some(0)).is_err());
        assert!(kms.schedule_key_deletion(key.id, None, Some(5)).is_err());
    });
    kms.disable_key(key.id, Some(1)).unwrap();
    assert_eq!(kms.get_key(key.id).unwrap().key.revision.seq, 2);
}

#[test]
fn invalid_options_are_refused_at_open() {
    let err = Kms::open_in_memory(root(1), KmsOptions::new("")).unwrap_err();
    assert!(
        matches!(err, Error::BadRequest { field: "zone", .. }),
        "{err:?}"
    );
    for budget in [0, (1u64 << 32) + 1] {
        let limits = Limits {
            max_encryptions_per_version: budget,
            ..Limits::default()
        };
        let err = Kms::open_in_memory(root(1), KmsOptions::new("z").limits(limits)).unwrap_err();
        assert!(
            matches!(
                err,
                Error::BadRequest {
                    field: "max-encryptions-per-version",
                    ..
                }
            ),
            "{err:?}"
        );
    }
}

#[test]
fn error_messages_name_the_key_and_never_a_secret() {
    let (kms, _) = memory_kms();
    let key = kms.create_key(&CreateKey::new("k")).unwrap();
    let sealed = kms
        .encrypt(key.id, b"TOP-SECRET", Some(b"CTX-SECRET"))
        .unwrap()
        .ciphertext;
    kms.disable_key(key.id, None).unwrap();
    let messages = [
        kms.decrypt(key.id, &sealed, Some(b"CTX-SECRET"))
            .unwrap_err()
            .to_string(),
        kms.encrypt(key.id, b"TOP-SECRET", None)
            .unwrap_err()
            .to_string(),
    ];
    for message in messages {
        assert!(message.contains(&key.id.to_string()), "{message}");
        assert!(!message.contains("SECRET"), "{message}");
    }
}
