//! Seeded and imported keys (issue 13, item 4): a committed ciphertext fixture made without
//! keylife (tests/fixtures/seed/make.py) decrypts from a store seeded with its seed file; a
//! seed applied again changes nothing, even after the key changed; conflicts name the key;
//! a file with one bad key applies nothing; two stores seeded from one file decrypt each
//! other's ciphertexts.

mod common;

use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use jiff::Timestamp;
use keylife::{
    ConflictReason, Error, ImportKey, ImportOutcome, KeyId, KeyImport, Kms, KmsOptions,
    ManualClock, MaterialKey, RootKey, Seed,
};
use serde_json::{Value, json};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/seed")
        .join(name)
}

fn read_json(name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(fixture(name)).unwrap()).unwrap()
}

fn now() -> Timestamp {
    "2026-03-01T12:00:00Z".parse().unwrap()
}

fn root(byte: u8) -> RootKey {
    RootKey::from_bytes(&mut [byte; 32])
}

fn zone(name: &str, root_byte: u8) -> (Kms, ManualClock) {
    let clock = ManualClock::new(now());
    let kms =
        Kms::open_in_memory(root(root_byte), KmsOptions::new(name).clock(clock.clone())).unwrap();
    (kms, clock)
}

fn seed(value: &Value) -> Result<Seed, Error> {
    Seed::from_json(value.to_string().as_bytes())
}

fn fixture_seed() -> Seed {
    Seed::from_json(&std::fs::read(fixture("seed.json")).unwrap()).unwrap()
}

const PAYMENTS: &str = "019b5a2e-7c00-7000-8000-00000000f001";
const ORDERS: &str = "019b5a2e-7c00-7000-8000-00000000f002";

fn id(text: &str) -> KeyId {
    KeyId::parse(text).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

/// Every key's get-kms-key answer, as JSON: what a second application must leave as it is.
fn state(kms: &Kms) -> Vec<Value> {
    kms.list_keys()
        .unwrap()
        .kms_keys
        .iter()
        .map(|key| serde_json::to_value(kms.get_key(key.id).unwrap()).unwrap())
        .collect()
}

#[test]
fn the_committed_fixture_decrypts_from_a_seeded_store() {
    let (kms, _) = zone("ch-gva-2", 1);
    let report = fixture_seed().apply(std::slice::from_ref(&kms)).unwrap();
    assert_eq!(report.keys.len(), 2);
    assert!(
        report
            .keys
            .iter()
            .all(|key| key.outcome == ImportOutcome::Created)
    );
    let fixtures = read_json("ciphertexts.json");
    let fixtures = fixtures.as_array().unwrap();
    assert_eq!(fixtures.len(), 4);
    for entry in fixtures {
        let key = id(entry["key"].as_str().unwrap());
        let ciphertext = BASE64
            .decode(entry["ciphertext"].as_str().unwrap())
            .unwrap();
        let plaintext = BASE64.decode(entry["plaintext"].as_str().unwrap()).unwrap();
        let context = entry
            .get("context")
            .map(|c| BASE64.decode(c.as_str().unwrap()).unwrap());
        let opened = kms
            .decrypt(key, &ciphertext, context.as_deref())
            .unwrap_or_else(|e| panic!("{entry}: {e}"));
        assert_eq!(opened.plaintext.as_bytes(), plaintext.as_slice(), "{entry}");
        // The context is bound: another one is refused.
        let wrong = kms.decrypt(key, &ciphertext, Some(b"another context"));
        assert_eq!(wrong.unwrap_err(), Error::InvalidCiphertext);
    }
}

#[test]
fn derived_material_is_the_fixture_s_independent_derivation() {
    // material.json is make.py's HKDF (Python's hmac and hashlib): a key imported with that
    // material opens what keylife's own derivation sealed, and the reverse.
    let (kms, _) = zone("ch-gva-2", 1);
    fixture_seed().apply(std::slice::from_ref(&kms)).unwrap();
    let (byok, _) = zone("ch-gva-2", 2);
    let materials = read_json("material.json");
    for (index, key) in [PAYMENTS, ORDERS].into_iter().enumerate() {
        let versions: Vec<MaterialKey> = materials
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["key"] == key)
            .map(|m| {
                MaterialKey::from_slice(&BASE64.decode(m["material"].as_str().unwrap()).unwrap())
                    .unwrap()
            })
            .collect();
        let import = KeyImport {
            key: ImportKey::new(id(key), format!("byok-{index}"), versions.len()),
            materials: versions,
        };
        byok.import_key(&import).unwrap();
        let sealed = kms.encrypt(id(key), b"both ways", None).unwrap();
        let opened = byok.decrypt(id(key), &sealed.ciphertext, None).unwrap();
        assert_eq!(opened.plaintext.as_bytes(), b"both ways");
        let back = byok.encrypt(id(key), b"and back", None).unwrap();
        let opened = kms.decrypt(id(key), &back.ciphertext, None).unwrap();
        assert_eq!(opened.plaintext.as_bytes(), b"and back");
    }
}

#[test]
fn a_seeded_key_has_the_versions_times_and_settings_of_its_file() {
    let (kms, _) = zone("ch-gva-2", 1);
    fixture_seed().apply(std::slice::from_ref(&kms)).unwrap();
    let details = kms.get_key(id(PAYMENTS)).unwrap();
    assert_eq!(details.key.name, "fixture-payments");
    assert_eq!(
        details.key.created_at,
        "2025-01-01T00:00:00Z".parse().unwrap()
    );
    assert_eq!(details.key.material.version, 2);
    assert!(details.key.material.automatic);
    assert_eq!(details.key.rotation.manual_count, 0);
    assert_eq!(
        details.key.rotation.next_at,
        "2027-01-01T00:00:00Z".parse::<Timestamp>().unwrap()
    );
    assert_eq!(details.imported_versions, Some(2));
    let json = serde_json::to_value(&details).unwrap();
    assert_eq!(json["source"], "exoscale-kms");
    assert_eq!(json["keylife-imported-versions"], 2);
    let rotations = kms.list_key_rotations(id(PAYMENTS)).unwrap();
    assert_eq!(rotations.rotations.len(), 1);
    assert_eq!(
        rotations.rotations[0].rotated_at,
        "2026-01-01T00:00:00Z".parse::<Timestamp>().unwrap()
    );
    let orders = kms.get_key(id(ORDERS)).unwrap();
    assert!(orders.key.multi_zone);
    assert!(!orders.key.rotation.automatic);
    assert_eq!(orders.key.created_at, now());
    // A key keylife created is not marked.
    let created = kms.create_key(&keylife::CreateKey::new("own")).unwrap();
    let json = serde_json::to_value(kms.get_key(created.id).unwrap()).unwrap();
    assert!(json.get("keylife-imported-versions").is_none(), "{json}");
}

#[test]
fn a_seed_applied_again_changes_nothing_even_after_the_key_changed() {
    let (kms, clock) = zone("ch-gva-2", 1);
    let zones = std::slice::from_ref(&kms);
    fixture_seed().apply(zones).unwrap();
    let before = state(&kms);
    let again = fixture_seed().apply(zones).unwrap();
    assert!(
        again
            .keys
            .iter()
            .all(|key| key.outcome == ImportOutcome::AlreadyPresent),
        "{again:?}"
    );
    assert_eq!(
        state(&kms),
        before,
        "the second application changed the store"
    );

    clock.advance_days(1);
    kms.rotate_key(id(PAYMENTS), None).unwrap();
    kms.disable_key(id(PAYMENTS), None).unwrap();
    kms.disable_key_rotation(id(ORDERS), None).unwrap_err(); // already off: conflict
    let changed = state(&kms);
    let again = fixture_seed().apply(zones).unwrap();
    assert!(
        again
            .keys
            .iter()
            .all(|key| key.outcome == ImportOutcome::AlreadyPresent)
    );
    assert_eq!(state(&kms), changed, "the key was not left as it is");
    let payments = kms.get_key(id(PAYMENTS)).unwrap();
    assert_eq!(payments.key.material.version, 3);
    assert_eq!(payments.key.status, keylife::KeyStatus::Disabled);
}

/// The fixture's file with `edit` applied to it.
fn edited(edit: impl FnOnce(&mut Value)) -> Value {
    let mut value = read_json("seed.json");
    edit(&mut value);
    value
}

#[test]
fn other_material_for_the_same_id_is_a_conflict_naming_the_key() {
    let (kms, _) = zone("ch-gva-2", 1);
    let zones = std::slice::from_ref(&kms);
    fixture_seed().apply(zones).unwrap();
    let before = state(&kms);
    let other = edited(|v| v["keys"][0]["versions"][1]["material"] = json!(b64(&[9; 32])));
    let error = seed(&other).unwrap().apply(zones).unwrap_err();
    assert_eq!(
        error,
        Error::Conflict {
            id: id(PAYMENTS),
            reason: ConflictReason::ImportedMaterialDiffers
        }
    );
    assert!(error.to_string().contains(PAYMENTS), "{error}");
    let other = edited(|v| v["keys"][1]["versions"][0]["derive"] = json!("fixture three"));
    let error = seed(&other).unwrap().apply(zones).unwrap_err();
    assert!(
        matches!(error, Error::Conflict { id: named, reason: ConflictReason::ImportedMaterialDiffers } if named == id(ORDERS)),
        "{error:?}"
    );
    // The same id under another name.
    let renamed = edited(|v| v["keys"][1]["name"] = json!("renamed"));
    let error = seed(&renamed).unwrap().apply(zones).unwrap_err();
    assert!(
        matches!(
            error,
            Error::Conflict {
                reason: ConflictReason::ImportedNameDiffers,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(state(&kms), before);
}

#[test]
fn a_name_taken_by_another_key_is_a_name_conflict() {
    let (kms, _) = zone("ch-gva-2", 1);
    kms.create_key(&keylife::CreateKey::new("fixture-orders"))
        .unwrap();
    let error = fixture_seed()
        .apply(std::slice::from_ref(&kms))
        .unwrap_err();
    assert_eq!(
        error,
        Error::NameConflict {
            name: "fixture-orders".to_owned(),
            zone: "ch-gva-2".to_owned()
        }
    );
    // The other key of the file was not created either.
    assert_eq!(
        kms.get_key(id(PAYMENTS)).unwrap_err().code(),
        "key-not-found"
    );
}

#[test]
fn a_file_with_one_bad_key_applies_nothing() {
    // Each case breaks the second key only; the first must be absent afterwards.
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "bad base64",
            edited(|v| v["keys"][1]["versions"][0] = json!({"material": "not base64!"})),
            "keys[1].versions[0].material",
        ),
        (
            "31 bytes",
            edited(|v| v["keys"][1]["versions"][0] = json!({"material": b64(&[1; 31])})),
            "keys[1].versions[0].material",
        ),
        (
            "bad id",
            edited(|v| v["keys"][1]["id"] = json!("019b-not-a-uuid")),
            "keys[1].id",
        ),
        (
            "rotated-at going back",
            edited(|v| {
                v["keys"][1]["versions"] = json!([
                    {"derive": "a", "created-at": "2026-01-01T00:00:00Z"},
                    {"derive": "b", "rotated-at": "2025-01-01T00:00:00Z"},
                ])
            }),
            "keys[1].versions",
        ),
        (
            "unknown field",
            edited(|v| v["keys"][1]["colour"] = json!("blue")),
            "keys[1]",
        ),
        (
            "unknown field in a version",
            edited(|v| v["keys"][1]["versions"][0]["rotation-at"] = json!("2026-01-01T00:00:00Z")),
            "keys[1].versions[0]",
        ),
        (
            "rotation period out of range",
            edited(|v| v["keys"][1]["rotation"] = json!({"rotation-period": 10})),
            "keys[1].rotation.rotation-period",
        ),
        (
            "both derive and material",
            edited(|v| v["keys"][1]["versions"][0]["material"] = json!(b64(&[1; 32]))),
            "keys[1].versions[0]",
        ),
        (
            "no version",
            edited(|v| v["keys"][1]["versions"] = json!([])),
            "keys[1].versions",
        ),
        (
            "a zone not served",
            edited(|v| v["keys"][1]["zone"] = json!("de-fra-1")),
            "keys[1].zone",
        ),
    ];
    for (case, file, at) in cases {
        let (kms, _) = zone("ch-gva-2", 1);
        let error = seed(&file)
            .and_then(|seed| seed.apply(std::slice::from_ref(&kms)))
            .unwrap_err();
        match &error {
            Error::InvalidSeed { at: found, .. } => assert_eq!(found, at, "{case}: {error}"),
            other => panic!("{case}: {other:?}"),
        }
        assert_eq!(error.code(), "invalid-seed");
        assert!(
            !error.to_string().contains(&b64(&[1; 31])),
            "{case}: the message shows material: {error}"
        );
        assert!(kms.list_keys().unwrap().kms_keys.is_empty(), "{case}");
    }

    // Conflicts with the store are found before anything is written, too: a key already
    // there with other material, a name taken, the zone's quota.
    let (kms, _) = zone("ch-gva-2", 1);
    let orders_only = edited(|v| {
        let orders = v["keys"][1].clone();
        v["keys"] = json!([orders]);
    });
    seed(&orders_only)
        .unwrap()
        .apply(std::slice::from_ref(&kms))
        .unwrap();
    let conflicting = edited(|v| v["keys"][1]["versions"][0]["derive"] = json!("other"));
    let error = seed(&conflicting)
        .unwrap()
        .apply(std::slice::from_ref(&kms))
        .unwrap_err();
    assert!(matches!(error, Error::Conflict { .. }), "{error:?}");
    assert_eq!(
        kms.get_key(id(PAYMENTS)).unwrap_err().code(),
        "key-not-found",
        "the good key of a file with a conflict was created"
    );

    let clock = ManualClock::new(now());
    let small = Kms::open_in_memory(
        root(1),
        KmsOptions::new("ch-gva-2")
            .clock(clock)
            .limits(keylife::Limits {
                key_quota: 1,
                ..keylife::Limits::default()
            }),
    )
    .unwrap();
    let error = fixture_seed()
        .apply(std::slice::from_ref(&small))
        .unwrap_err();
    assert!(
        matches!(error, Error::QuotaExceeded { limit: 1, .. }),
        "{error:?}"
    );
    assert!(small.list_keys().unwrap().kms_keys.is_empty());
}

#[test]
fn keys_go_to_the_zone_they_name_and_a_failing_zone_stops_every_zone() {
    let (a, _) = zone("ch-gva-2", 1);
    let (b, _) = zone("de-fra-1", 1);
    let zones = [a.clone(), b.clone()];
    // Several zones: every key must name one.
    let error = fixture_seed().apply(&zones).unwrap_err();
    assert!(
        matches!(&error, Error::InvalidSeed { at, .. } if at == "keys[0].zone"),
        "{error:?}"
    );
    // A conflict in the second zone: nothing is written in the first either.
    b.create_key(&keylife::CreateKey::new("fixture-orders"))
        .unwrap();
    let split = edited(|v| {
        v["keys"][0]["zone"] = json!("ch-gva-2");
        v["keys"][1]["zone"] = json!("de-fra-1");
    });
    let error = seed(&split).unwrap().apply(&zones).unwrap_err();
    assert!(matches!(error, Error::NameConflict { .. }), "{error:?}");
    assert!(a.list_keys().unwrap().kms_keys.is_empty());
    // With the name free, each key lands in its zone.
    let moved = edited(|v| {
        v["keys"][0]["zone"] = json!("ch-gva-2");
        v["keys"][1]["zone"] = json!("de-fra-1");
        v["keys"][1]["name"] = json!("fixture-orders-2");
    });
    let report = seed(&moved).unwrap().apply(&zones).unwrap();
    let placed: Vec<(&str, KeyId)> = report
        .keys
        .iter()
        .map(|k| (k.zone.as_str(), k.id))
        .collect();
    assert_eq!(
        placed,
        [("ch-gva-2", id(PAYMENTS)), ("de-fra-1", id(ORDERS))]
    );
    assert!(a.get_key(id(ORDERS)).is_err());
    assert!(b.get_key(id(PAYMENTS)).is_err());
}

#[test]
fn two_stores_seeded_from_one_file_decrypt_each_other_s_ciphertexts() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(now());
    // Two stores, two engines, two root keys: the material comes from the file alone.
    let first = Kms::open(
        dir.path().join("one"),
        root(1),
        KmsOptions::new("ch-gva-2").clock(clock.clone()),
    )
    .unwrap();
    let second = Kms::open(
        dir.path().join("two"),
        root(2),
        KmsOptions::new("ch-gva-2")
            .clock(clock.clone())
            .engine(keylife::store::Engine::Redb),
    )
    .unwrap();
    for kms in [&first, &second] {
        fixture_seed().apply(std::slice::from_ref(kms)).unwrap();
    }
    for key in [PAYMENTS, ORDERS] {
        let a = first.encrypt(id(key), b"from one", Some(b"ctx")).unwrap();
        let b = second.encrypt(id(key), b"from two", Some(b"ctx")).unwrap();
        assert_eq!(
            second
                .decrypt(id(key), &a.ciphertext, Some(b"ctx"))
                .unwrap()
                .plaintext
                .as_bytes(),
            b"from one"
        );
        assert_eq!(
            first
                .decrypt(id(key), &b.ciphertext, Some(b"ctx"))
                .unwrap()
                .plaintext
                .as_bytes(),
            b"from two"
        );
    }
    // And after a reopen, the seeded keys are still there and the seed still applies.
    drop(first);
    let first = Kms::open(
        dir.path().join("one"),
        root(1),
        KmsOptions::new("ch-gva-2").clock(clock),
    )
    .unwrap();
    let report = fixture_seed().apply(std::slice::from_ref(&first)).unwrap();
    assert!(
        report
            .keys
            .iter()
            .all(|k| k.outcome == ImportOutcome::AlreadyPresent)
    );
}

#[test]
fn material_never_shows_in_debug_or_errors() {
    let secret = b64(&[0x5a; 32]);
    let file = json!({"keys": [{"id": PAYMENTS, "name": "k", "versions": [{"material": secret}]}]});
    let parsed = seed(&file).unwrap();
    let printed = format!("{parsed:?}");
    assert!(
        !printed.contains(&secret) && !printed.contains("90, 90"),
        "{printed}"
    );
    // A material put where a boolean goes: serde's message does not quote it.
    let misplaced = json!({"keys": [{"id": PAYMENTS, "name": "k", "multi-zone": secret, "versions": [{"derive": "x"}]}]});
    let error = seed(&misplaced).unwrap_err();
    assert!(!error.to_string().contains(&secret), "{error}");
    assert!(
        matches!(&error, Error::InvalidSeed { at, .. } if at == "keys[0]"),
        "{error:?}"
    );
}

#[test]
fn a_deleted_replicated_key_is_not_imported_again_and_a_replica_is_refused() {
    let zones = common::Zones::memory(&["ch-gva-2", "de-fra-1"]);
    zones.clock.set(now());
    let (origin, replica) = (zones.zone(0), zones.zone(1));
    let orders_only = edited(|v| {
        let orders = v["keys"][1].clone();
        v["keys"] = json!([orders]);
    });
    seed(&orders_only)
        .unwrap()
        .apply(std::slice::from_ref(origin))
        .unwrap();
    origin.replicate_key(id(ORDERS), "de-fra-1", None).unwrap();
    origin.sync().unwrap();
    assert_eq!(
        replica.get_key(id(ORDERS)).unwrap().imported_versions,
        Some(1),
        "the replica shows the key as imported too"
    );
    // The replica zone holds the key as a replica: the seed is refused there.
    let error = seed(&orders_only)
        .unwrap()
        .apply(std::slice::from_ref(replica))
        .unwrap_err();
    assert_eq!(
        error,
        Error::Conflict {
            id: id(ORDERS),
            reason: ConflictReason::ImportOverReplica
        }
    );
    // Deleted at its origin once replicated: gone for good.
    origin
        .schedule_key_deletion(id(ORDERS), Some(7), None)
        .unwrap();
    zones.clock.advance_days(7);
    origin.run_due().unwrap();
    origin.sync().unwrap();
    let error = seed(&orders_only)
        .unwrap()
        .apply(std::slice::from_ref(origin))
        .unwrap_err();
    assert_eq!(
        error,
        Error::Conflict {
            id: id(ORDERS),
            reason: ConflictReason::ImportOfGoneKey
        }
    );
}

#[test]
fn a_deleted_key_that_was_never_replicated_is_seeded_again() {
    // design.md's choice: nothing remembers such a key, so the next application creates it.
    let (kms, clock) = zone("ch-gva-2", 1);
    let zones = std::slice::from_ref(&kms);
    fixture_seed().apply(zones).unwrap();
    kms.schedule_key_deletion(id(ORDERS), Some(7), None)
        .unwrap();
    // Pending deletion: left as it is.
    let report = fixture_seed().apply(zones).unwrap();
    assert_eq!(report.keys[1].outcome, ImportOutcome::AlreadyPresent);
    assert_eq!(
        kms.get_key(id(ORDERS)).unwrap().key.status,
        keylife::KeyStatus::PendingDeletion
    );
    clock.advance_days(7);
    kms.run_due().unwrap();
    let report = fixture_seed().apply(zones).unwrap();
    assert_eq!(report.keys[1].outcome, ImportOutcome::Created);
    assert_eq!(report.keys[0].outcome, ImportOutcome::AlreadyPresent);
}
