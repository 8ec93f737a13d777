//! The per-call context of a `Kms` handle (`Kms::as_caller`): its actor, and its check, which
//! sees every call (operation, zone, key and name) before anything is looked at or changed.
//! A refused call is `forbidden` (403), the same whether the key exists or not, and leaves
//! every key as it was.

mod common;

use std::sync::{Arc, Mutex};

use keylife::store::{Backend, MemoryBackend, Table};
use keylife::{
    Access, Caller, CreateKey, DataKeySpec, Error, KeyId, Kms, KmsOptions, LocalLink, Operation,
    Target,
};

use common::{memory_kms, root};

/// A caller that may only touch keys named `app-*` (and list), and records what it was asked.
fn app_only(seen: &Arc<Mutex<Vec<String>>>) -> Caller {
    let seen = Arc::clone(seen);
    Caller::new("svc-app").permit(move |access: &Access<'_>| {
        seen.lock().unwrap().push(describe(access));
        match access.target {
            Target::Zone => true,
            Target::NewKey { name }
            | Target::Key {
                name: Some(name), ..
            } => name.starts_with("app-"),
            Target::Key { name: None, .. } => false,
        }
    })
}

fn describe(access: &Access<'_>) -> String {
    let target = match access.target {
        Target::Zone => "zone".to_owned(),
        Target::NewKey { name } => format!("new {name}"),
        Target::Key { name, .. } => format!("key {}", name.unwrap_or("?")),
    };
    format!("{} {} {target}", access.zone, access.operation.name())
}

/// Every call a caller can make on key `id` (with `other` as the second key of re-encrypt),
/// as (operation name, result).
fn every_call(kms: &Kms, id: KeyId, other: KeyId, sealed: &[u8]) -> Vec<(&'static str, Error)> {
    let results: Vec<(&'static str, Result<(), Error>)> = vec![
        ("get-kms-key", kms.get_key(id).map(drop)),
        (
            "list-kms-key-rotations",
            kms.list_key_rotations(id).map(drop),
        ),
        ("enable-kms-key", kms.enable_key(id, None).map(drop)),
        ("disable-kms-key", kms.disable_key(id, None).map(drop)),
        ("rotate-kms-key", kms.rotate_key(id, None).map(drop)),
        (
            "enable-kms-key-rotation",
            kms.enable_key_rotation(id, Some(5), None).map(drop),
        ),
        (
            "disable-kms-key-rotation",
            kms.disable_key_rotation(id, None).map(drop),
        ),
        (
            "schedule-kms-key-deletion",
            kms.schedule_key_deletion(id, Some(99), None).map(drop),
        ),
        (
            "cancel-kms-key-deletion",
            kms.cancel_key_deletion(id, None).map(drop),
        ),
        (
            "replicate-kms-key",
            kms.replicate_key(id, "nowhere", None).map(drop),
        ),
        ("encrypt", kms.encrypt(id, b"x", None).map(drop)),
        ("decrypt", kms.decrypt(id, sealed, None).map(drop)),
        (
            "re-encrypt",
            kms.re_encrypt(id, sealed, None, other, None).map(drop),
        ),
        (
            "re-encrypt",
            kms.re_encrypt(other, sealed, None, id, None).map(drop),
        ),
        (
            "generate-data-key",
            kms.generate_data_key(id, DataKeySpec::Bytes(0), None)
                .map(drop),
        ),
    ];
    results
        .into_iter()
        .map(|(operation, result)| {
            let error = result.expect_err(operation);
            (operation, error)
        })
        .collect()
}

#[test]
fn a_refused_call_is_forbidden_before_anything_else_and_the_same_for_an_unknown_key() {
    let (kms, _clock) = memory_kms();
    let app = kms.create_key(&CreateKey::new("app-orders")).unwrap().id;
    let billing = kms.create_key(&CreateKey::new("billing")).unwrap().id;
    let sealed = kms.encrypt(billing, b"secret", None).unwrap().ciphertext;
    let before = kms.get_key(billing).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let restricted = kms.as_caller(app_only(&seen));
    let unknown = KeyId::parse("01900000-0000-7000-8000-000000000000").unwrap();
    for target in [billing, unknown] {
        for (operation, error) in every_call(&restricted, target, app, &sealed) {
            // Even the calls that would fail for another reason (a bad delay, an unknown
            // zone, a bad byte count, a missing key) are refused first, the same way.
            assert_eq!(
                error,
                Error::Forbidden {
                    operation,
                    id: Some(target)
                },
                "{operation} on {target}"
            );
            assert_eq!(error.code(), "permission-denied");
            assert_eq!(error.http_status(), 403);
            assert_eq!(
                error.to_string(),
                format!(
                    "permission denied: this credential may not call {operation} on key {target}"
                )
            );
        }
    }
    assert_eq!(kms.get_key(billing).unwrap(), before, "nothing changed");
    // The check saw the key's name for the key that exists, none for the unknown one.
    let seen = seen.lock().unwrap();
    assert!(
        seen.contains(&"ch-gva-2 encrypt key billing".to_owned()),
        "{seen:?}"
    );
    assert!(
        seen.contains(&"ch-gva-2 encrypt key ?".to_owned()),
        "{seen:?}"
    );
}

#[test]
fn an_allowed_caller_works_as_the_unrestricted_one() {
    let (kms, _clock) = memory_kms();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let restricted = kms.as_caller(app_only(&seen));
    assert_eq!(restricted.caller().actor(), Some("svc-app"));
    assert_eq!(kms.caller().actor(), None, "the first handle is unchanged");
    let created = restricted
        .create_key(&CreateKey::new("app-orders"))
        .unwrap();
    let id = created.id;
    let sealed = restricted.encrypt(id, b"pay", Some(b"ctx")).unwrap();
    let opened = restricted
        .decrypt(id, &sealed.ciphertext, Some(b"ctx"))
        .unwrap();
    assert_eq!(opened.plaintext.as_bytes(), b"pay");
    restricted.rotate_key(id, None).unwrap();
    restricted.disable_key(id, None).unwrap();
    restricted.enable_key(id, None).unwrap();
    assert_eq!(restricted.list_keys().unwrap().kms_keys.len(), 1);
    assert_eq!(
        restricted.list_key_rotations(id).unwrap().rotations.len(),
        1
    );
    restricted.run_due().unwrap();
    // Both handles see one zone: what one did, the other sees.
    assert_eq!(kms.get_key(id).unwrap().key.material.version, 2);
    // A new key whose name the check refuses is not created.
    assert_eq!(
        restricted.create_key(&CreateKey::new("billing")),
        Err(Error::Forbidden {
            operation: "create-kms-key",
            id: None
        })
    );
    assert!(
        kms.list_keys()
            .unwrap()
            .kms_keys
            .iter()
            .all(|k| k.name != "billing")
    );
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0], "ch-gva-2 create-kms-key new app-orders");
    assert!(
        seen.contains(&"ch-gva-2 list-kms-keys zone".to_owned()),
        "{seen:?}"
    );
    assert!(
        seen.contains(&"ch-gva-2 run-due zone".to_owned()),
        "{seen:?}"
    );
}

#[test]
fn re_encrypt_asks_for_both_keys() {
    let (kms, _clock) = memory_kms();
    let app = kms.create_key(&CreateKey::new("app-a")).unwrap().id;
    let other = kms.create_key(&CreateKey::new("other")).unwrap().id;
    let sealed = kms.encrypt(app, b"m", None).unwrap().ciphertext;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let restricted = kms.as_caller(app_only(&seen));
    // From an allowed key to a refused one: refused, naming the refused key.
    assert_eq!(
        restricted.re_encrypt(app, &sealed, None, other, None),
        Err(Error::Forbidden {
            operation: "re-encrypt",
            id: Some(other)
        })
    );
    let moved = kms.re_encrypt(app, &sealed, None, other, None).unwrap();
    assert_eq!(
        restricted.re_encrypt(other, &moved.ciphertext, None, app, None),
        Err(Error::Forbidden {
            operation: "re-encrypt",
            id: Some(other)
        })
    );
}

#[test]
fn an_unrestricted_caller_looks_nothing_up() {
    // A backend that counts reads: the check of a caller without one must cost none.
    #[derive(Default)]
    struct Counting {
        inner: MemoryBackend,
        reads: std::sync::atomic::AtomicUsize,
    }
    impl Backend for Counting {
        fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
            self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.inner.get(table, key)
        }
        fn scan(
            &self,
            table: Table,
            start: &[u8],
            end: Option<&[u8]>,
            limit: usize,
        ) -> Result<keylife::store::Entries, Error> {
            self.inner.scan(table, start, end, limit)
        }
        fn commit(&self, batch: &[keylife::store::Write]) -> Result<(), Error> {
            self.inner.commit(batch)
        }
    }
    let backend = Arc::new(Counting::default());
    let kms = Kms::with_backend(backend.clone(), root(1), KmsOptions::new("z")).unwrap();
    let reads = || backend.reads.load(std::sync::atomic::Ordering::SeqCst);
    // A key the zone does not hold: no cache answers for it, so every lookup reads the store.
    let unknown = KeyId::from_bytes([9; 16]);
    let reads_of = |handle: &Kms| {
        let before = reads();
        let refused = handle.encrypt(unknown, b"x", None).unwrap_err();
        assert_eq!(refused, Error::KeyNotFound { id: unknown });
        reads() - before
    };
    let plain = reads_of(&kms);
    let named = reads_of(&kms.as_caller(Caller::new("alice")));
    let checked = reads_of(&kms.as_caller(Caller::new("bob").permit(|_| true)));
    assert_eq!(named, plain, "a caller without a check looks nothing up");
    assert!(
        checked > named,
        "the check's lookup is counted: {checked} vs {named}"
    );
    // And with the key in memory, encrypting reads nothing at all.
    let named = kms.as_caller(Caller::new("alice"));
    let id = named.create_key(&CreateKey::new("k")).unwrap().id;
    let before = reads();
    for _ in 0..10 {
        named.encrypt(id, b"x", None).unwrap();
    }
    assert_eq!(
        reads(),
        before,
        "encrypting with a cached key reads nothing"
    );
}

#[test]
fn replication_traffic_is_asked_about_too() {
    let link = LocalLink::new();
    let origin =
        Arc::new(Kms::open_in_memory(root(2), KmsOptions::new("a").link(link.clone())).unwrap());
    link.attach(&origin);
    // The handle the link reaches zone b through refuses every update.
    let b = Kms::open_in_memory(root(3), KmsOptions::new("b").link(link.clone())).unwrap();
    let replica = Arc::new(b.as_caller(
        Caller::new("link").permit(|access| access.operation != Operation::ReceiveUpdate),
    ));
    link.attach(&replica);
    let id = origin
        .create_key(&CreateKey::new("k").multi_zone(true))
        .unwrap()
        .id;
    origin.replicate_key(id, "b", None).unwrap();
    let report = origin.sync().unwrap();
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert_eq!(
        report.failed[0].2,
        Error::Forbidden {
            operation: "receive-update",
            id: Some(id)
        }
    );
    assert_eq!(
        b.get_key(id),
        Err(Error::KeyNotFound { id }),
        "nothing arrived"
    );
}

#[test]
fn a_handle_made_from_a_restricted_one_stays_within_its_restriction() {
    let (kms, _clock) = memory_kms();
    let app = kms.create_key(&CreateKey::new("app-orders")).unwrap().id;
    let billing = kms.create_key(&CreateKey::new("billing")).unwrap().id;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let restricted = kms.as_caller(app_only(&seen));
    // Unrestricted, or restricted otherwise: the first check still applies.
    for escape in [
        restricted.as_caller(Caller::default()),
        restricted.as_caller(Caller::new("other").permit(|_| true)),
    ] {
        assert_eq!(
            escape.encrypt(billing, b"x", None).unwrap_err().code(),
            "permission-denied"
        );
        assert!(escape.encrypt(app, b"x", None).is_ok());
    }
    // Both checks apply: the narrower one refuses what the first allows.
    let narrower = restricted.as_caller(Caller::new("none").permit(|_| false));
    assert_eq!(
        narrower.encrypt(app, b"x", None).unwrap_err().code(),
        "permission-denied"
    );
    assert_eq!(narrower.caller().actor(), Some("none"));
}

/// A link that counts the questions it is asked.
#[derive(Debug, Default)]
struct Counting(std::sync::atomic::AtomicUsize);

impl keylife::Link for Counting {
    fn knows(&self, _: &str) -> bool {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        true
    }

    fn deliver(&self, zone: &str, _: &keylife::ReplicaUpdate) -> Result<keylife::Ack, Error> {
        Err(Error::ZoneUnreachable {
            zone: zone.to_owned(),
            detail: "no".to_owned(),
        })
    }

    fn request_rotation(&self, zone: &str, _: KeyId, _: u32) -> Result<(), Error> {
        Err(Error::ZoneUnreachable {
            zone: zone.to_owned(),
            detail: "no".to_owned(),
        })
    }
}

#[test]
fn replicate_key_asks_the_caller_before_the_link() {
    let link = Arc::new(Counting::default());
    let kms = Kms::open_in_memory(root(1), KmsOptions::new("z").link(link.clone())).unwrap();
    let refused = kms.as_caller(Caller::new("svc").permit(|_| false));
    let id = KeyId::from_bytes([9; 16]);
    assert_eq!(
        refused.replicate_key(id, "elsewhere", None),
        Err(Error::Forbidden {
            operation: "replicate-kms-key",
            id: Some(id)
        })
    );
    assert_eq!(link.0.load(std::sync::atomic::Ordering::SeqCst), 0);
}
