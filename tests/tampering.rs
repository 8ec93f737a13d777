//! Ciphertexts that were damaged, truncated, forged, or made by another key, and wrong
//! contexts: each gives the error lifecycle.md names, and nothing else.

mod common;

use keylife::crypto::{HEADER_LEN, OVERHEAD};
use keylife::{CreateKey, DataKeySpec, Error};

use common::memory_kms;

#[test]
fn round_trip_with_and_without_context() {
    let (kms, _) = memory_kms();
    let key = kms.create_key(&CreateKey::new("k")).unwrap();
    for plaintext in [&b""[..], b"x", &[7u8; 1000][..]] {
        let sealed = kms.encrypt(key.id, plaintext, Some(b"ctx")).unwrap();
        assert_eq!(sealed.ciphertext.len(), plaintext.len() + OVERHEAD);
        let opened = kms
            .decrypt(key.id, &sealed.ciphertext, Some(b"ctx"))
            .unwrap();
        assert_eq!(opened.plaintext.as_bytes(), plaintext);
    }
    // Absent and empty contexts are the same.
    let sealed = kms.encrypt(key.id, b"p", None).unwrap();
    assert_eq!(
        kms.decrypt(key.id, &sealed.ciphertext, Some(b""))
            .unwrap()
            .plaintext
            .as_bytes(),
        b"p"
    );
    let sealed = kms.encrypt(key.id, b"p", Some(b"")).unwrap();
    assert_eq!(
        kms.decrypt(key.id, &sealed.ciphertext, None)
            .unwrap()
            .plaintext
            .as_bytes(),
        b"p"
    );
}

#[test]
fn two_encryptions_of_one_plaintext_differ() {
    let (kms, _) = memory_kms();
    let key = kms.create_key(&CreateKey::new("k")).unwrap();
    let a = kms.encrypt(key.id, b"same", None).unwrap();
    let b = kms.encrypt(key.id, b"same", None).unwrap();
    assert_ne!(a.ciphertext, b.ciphertext, "nonces must differ");
    assert_eq!(
        a.ciphertext[..21],
        b.ciphertext[..21],
        "same format, key and version"
    );
}

#[test]
fn every_single_byte_flip_is_refused_with_the_right_error() {
    let (kms, _) = memory_kms();
    let key = kms.create_key(&CreateKey::new("k")).unwrap();
    let sealed = kms
        .encrypt(key.id, b"attack at dawn", Some(b"ctx"))
        .unwrap()
        .ciphertext;
    for index in 0..sealed.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut damaged = sealed.clone();
            damaged[index] ^= mask;
            let err = kms.decrypt(key.id, &damaged, Some(b"ctx")).unwrap_err();
            if (1..17).contains(&index) {
                // The key-id field no longer names this key: the header says another key made
                // it, which is what "incorrect key" reports.
                assert_eq!(
                    err,
                    Error::IncorrectKey { id: key.id },
                    "byte {index} ^ {mask:#x}"
                );
            } else {
                assert_eq!(err, Error::InvalidCiphertext, "byte {index} ^ {mask:#x}");
            }
        }
    }
}

#[test]
fn truncations_and_extensions_are_invalid_ciphertext() {
    let (kms, _) = memory_kms();
    let key = kms.create_key(&CreateKey::new("k")).unwrap();
    let sealed = kms
        .encrypt(key.id, b"attack at dawn", None)
        .unwrap()
        .ciphertext;
    for len in 0..sealed.len() {
        let err = kms.decrypt(key.id, &sealed[..len], None).unwrap_err();
        assert_eq!(err, Error::InvalidCiphertext, "truncated to {len}");
    }
    let mut longer = sealed.clone();
    longer.push(0);
    assert_eq!(
        kms.decrypt(key.id, &longer, None).unwrap_err(),
        Error::InvalidCiphertext
    );
    // A header alone, a header with a forged all-zero body and tag.
    let mut forged = sealed[..HEADER_LEN].to_vec();
    forged.extend_from_slice(&[0; 16]);
    assert_eq!(
        kms.decrypt(key.id, &forged, None).unwrap_err(),
        Error::InvalidCiphertext
    );
}

#[test]
fn wrong_context_is_invalid_ciphertext() {
    let (kms, _) = memory_kms();
    let key = kms.create_key(&CreateKey::new("k")).unwrap();
    let sealed = kms
        .encrypt(key.id, b"p", Some(b"tenant=1"))
        .unwrap()
        .ciphertext;
    for context in [
        None,
        Some(&b""[..]),
        Some(b"tenant=2"),
        Some(b"tenant=1 "),
        Some(b"tenant="),
    ] {
        assert_eq!(
            kms.decrypt(key.id, &sealed, context).unwrap_err(),
            Error::InvalidCiphertext,
            "context {context:?}"
        );
    }
}

#[test]
fn another_keys_ciphertext_is_incorrect_key() {
    let (kms, _) = memory_kms();
    let a = kms.create_key(&CreateKey::new("a")).unwrap();
    let b = kms.create_key(&CreateKey::new("b")).unwrap();
    let sealed = kms.encrypt(a.id, b"p", None).unwrap().ciphertext;
    assert_eq!(
        kms.decrypt(b.id, &sealed, None).unwrap_err(),
        Error::IncorrectKey { id: b.id }
    );
    // Rewriting the key id to b's makes the header authenticate under nothing.
    let mut rewritten = sealed.clone();
    rewritten[1..17].copy_from_slice(b.id.as_bytes());
    assert_eq!(
        kms.decrypt(b.id, &rewritten, None).unwrap_err(),
        Error::InvalidCiphertext
    );
    // re-encrypt with the wrong source key is refused the same way.
    let err = kms.re_encrypt(b.id, &sealed, None, a.id, None).unwrap_err();
    assert_eq!(err, Error::IncorrectKey { id: b.id });
}

#[test]
fn unknown_format_and_unknown_version_are_invalid_ciphertext() {
    let (kms, _) = memory_kms();
    let key = kms.create_key(&CreateKey::new("k")).unwrap();
    let sealed = kms.encrypt(key.id, b"p", None).unwrap().ciphertext;
    let mut format = sealed.clone();
    format[0] = 2;
    assert_eq!(
        kms.decrypt(key.id, &format, None).unwrap_err(),
        Error::InvalidCiphertext
    );
    for version in [0u32, 2, u32::MAX] {
        let mut other = sealed.clone();
        other[17..21].copy_from_slice(&version.to_be_bytes());
        assert_eq!(
            kms.decrypt(key.id, &other, None).unwrap_err(),
            Error::InvalidCiphertext,
            "version {version}"
        );
    }
}

#[test]
fn the_opaque_error_says_nothing_more() {
    let message = Error::InvalidCiphertext.to_string();
    assert_eq!(message, "invalid ciphertext");
}

#[test]
fn rotation_keeps_old_versions_decrypting_and_encrypts_with_the_newest() {
    let (kms, _) = memory_kms();
    let key = kms.create_key(&CreateKey::new("k")).unwrap();
    let mut sealed = Vec::new();
    for round in 0..4u8 {
        let ciphertext = kms.encrypt(key.id, &[round], None).unwrap().ciphertext;
        let version = u32::from_be_bytes(ciphertext[17..21].try_into().unwrap());
        assert_eq!(
            version,
            u32::from(round) + 1,
            "encrypts with the newest version"
        );
        sealed.push((round, ciphertext));
        kms.rotate_key(key.id, None).unwrap();
    }
    for (round, ciphertext) in &sealed {
        assert_eq!(
            kms.decrypt(key.id, ciphertext, None)
                .unwrap()
                .plaintext
                .as_bytes(),
            &[*round]
        );
    }
}

#[test]
fn re_encrypt_moves_a_ciphertext_between_keys_and_contexts() {
    let (kms, _) = memory_kms();
    let a = kms.create_key(&CreateKey::new("a")).unwrap();
    let b = kms.create_key(&CreateKey::new("b")).unwrap();
    let sealed = kms
        .encrypt(a.id, b"payload", Some(b"old"))
        .unwrap()
        .ciphertext;
    let moved = kms
        .re_encrypt(a.id, &sealed, Some(b"old"), b.id, Some(b"new"))
        .unwrap()
        .ciphertext;
    assert_eq!(&moved[1..17], b.id.as_bytes());
    assert_eq!(
        kms.decrypt(b.id, &moved, Some(b"new"))
            .unwrap()
            .plaintext
            .as_bytes(),
        b"payload"
    );
    assert_eq!(
        kms.decrypt(b.id, &moved, Some(b"old")).unwrap_err(),
        Error::InvalidCiphertext
    );
    assert_eq!(
        kms.re_encrypt(a.id, &sealed, Some(b"wrong"), b.id, None)
            .unwrap_err(),
        Error::InvalidCiphertext
    );
    // Both keys must be enabled.
    kms.disable_key(b.id, None).unwrap();
    assert_eq!(
        kms.re_encrypt(a.id, &sealed, Some(b"old"), b.id, None)
            .unwrap_err(),
        Error::KeyDisabled { id: b.id }
    );
    kms.enable_key(b.id, None).unwrap();
    kms.disable_key(a.id, None).unwrap();
    assert_eq!(
        kms.re_encrypt(a.id, &sealed, Some(b"old"), b.id, None)
            .unwrap_err(),
        Error::KeyDisabled { id: a.id }
    );
}

#[test]
fn data_keys_decrypt_to_their_plaintext() {
    let (kms, _) = memory_kms();
    let key = kms.create_key(&CreateKey::new("k")).unwrap();
    for (spec, len) in [
        (DataKeySpec::Aes256, 32),
        (DataKeySpec::Bytes(1), 1),
        (DataKeySpec::Bytes(1024), 1024),
    ] {
        let data_key = kms.generate_data_key(key.id, spec, Some(b"ctx")).unwrap();
        assert_eq!(data_key.plaintext.len(), len);
        let opened = kms
            .decrypt(key.id, &data_key.ciphertext, Some(b"ctx"))
            .unwrap();
        assert_eq!(opened.plaintext.as_bytes(), data_key.plaintext.as_bytes());
    }
    let a = kms
        .generate_data_key(key.id, DataKeySpec::Aes256, None)
        .unwrap();
    let b = kms
        .generate_data_key(key.id, DataKeySpec::Aes256, None)
        .unwrap();
    assert_ne!(a.plaintext.as_bytes(), b.plaintext.as_bytes());
}

#[test]
fn crypto_is_refused_by_status() {
    let (kms, _) = memory_kms();
    let key = kms.create_key(&CreateKey::new("k")).unwrap();
    let sealed = kms.encrypt(key.id, b"p", None).unwrap().ciphertext;
    kms.disable_key(key.id, None).unwrap();
    let disabled = Error::KeyDisabled { id: key.id };
    assert_eq!(kms.encrypt(key.id, b"p", None).unwrap_err(), disabled);
    assert_eq!(kms.decrypt(key.id, &sealed, None).unwrap_err(), disabled);
    assert_eq!(
        kms.generate_data_key(key.id, DataKeySpec::Aes256, None)
            .unwrap_err(),
        disabled
    );
    assert_eq!(
        kms.re_encrypt(key.id, &sealed, None, key.id, None)
            .unwrap_err(),
        disabled
    );
    let scheduled = kms.schedule_key_deletion(key.id, None, None).unwrap();
    let pending = Error::KeyPendingDeletion {
        id: key.id,
        delete_at: scheduled.delete_at,
    };
    assert_eq!(kms.encrypt(key.id, b"p", None).unwrap_err(), pending);
    assert_eq!(kms.decrypt(key.id, &sealed, None).unwrap_err(), pending);
    assert_eq!(
        kms.generate_data_key(key.id, DataKeySpec::Aes256, None)
            .unwrap_err(),
        pending
    );
    // Cancelled: disabled; enabled again: the old ciphertext still opens.
    kms.cancel_key_deletion(key.id, None).unwrap();
    assert_eq!(kms.decrypt(key.id, &sealed, None).unwrap_err(), disabled);
    kms.enable_key(key.id, None).unwrap();
    assert_eq!(
        kms.decrypt(key.id, &sealed, None)
            .unwrap()
            .plaintext
            .as_bytes(),
        b"p"
    );
}
