//! A store of format 1 (values without tags), made by the code of commit 3a3a093, opens with
//! today's code: it is authenticated in one commit (the migration), keeps every key with its
//! id, name and status, and the ciphertexts the old code made still decrypt.
//!
//! The store is tests/fixtures/format1_store.txt: every entry of every table of the old code's
//! `MemoryBackend`, dumped by a program run at that commit (the file's comments say how). It
//! is loaded raw, unauthenticated, into a fresh `MemoryBackend`: that is the old store.
//!
//! Not tested here: damage to a format-1 store before its migration. A format-1 store has no
//! tags and no state digest, so a byte flipped in one of its records cannot be told from a
//! genuine value; the migration authenticates whatever it finds. Only what the records'
//! own decoding and the root key's check value refuse is refused (a flipped sealed material
//! fails its AEAD when it is used, not at open).

mod common;

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use keylife::store::{AuthenticatedBackend, Backend, MemoryBackend, Opened, Table, Write};
use keylife::{CreateKey, Error, KeyId, Kms, KmsOptions, ManualClock, RootKey};

const FIXTURE: &str = include_str!("fixtures/format1_store.txt");
/// The length of a record's tag in a store of format 2.
const TAG_LEN: usize = 32;

/// One ciphertext the old code made.
struct Sealed {
    key: String,
    ciphertext: Vec<u8>,
    plaintext: Vec<u8>,
    context: Option<Vec<u8>>,
}

/// One key of the old store, as its `list_keys` answered.
struct Recorded {
    name: String,
    id: KeyId,
    status: String,
}

/// The fixture, parsed.
struct Fixture {
    entries: Vec<(Table, Vec<u8>, Vec<u8>)>,
    sealed: Vec<Sealed>,
    keys: Vec<Recorded>,
}

impl Fixture {
    fn parse() -> Fixture {
        let mut fixture = Fixture {
            entries: Vec::new(),
            sealed: Vec::new(),
            keys: Vec::new(),
        };
        for line in FIXTURE.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            match fields.as_slice() {
                ["#", "ciphertext", key, ciphertext, plaintext, context] => {
                    fixture.sealed.push(Sealed {
                        key: (*key).to_owned(),
                        ciphertext: unhex(ciphertext),
                        plaintext: unhex(plaintext),
                        context: (*context != "-").then(|| unhex(context)),
                    });
                }
                ["#", "key", name, id, status] => fixture.keys.push(Recorded {
                    name: (*name).to_owned(),
                    id: id.parse().unwrap(),
                    status: (*status).to_owned(),
                }),
                ["#", ..] | [] => {}
                [table, key, value] => {
                    let table = *Table::ALL
                        .iter()
                        .find(|t| t.name() == *table)
                        .unwrap_or_else(|| panic!("unknown table in {line:?}"));
                    fixture.entries.push((table, unhex(key), unhex(value)));
                }
                _ => panic!("a fixture line that is neither a comment nor an entry: {line:?}"),
            }
        }
        assert_eq!(fixture.sealed.len(), 2, "two ciphertexts recorded");
        assert_eq!(fixture.keys.len(), 4, "four keys recorded");
        fixture
    }

    /// A fresh `MemoryBackend` holding the fixture's entries as they are (format 1), written
    /// in one commit.
    fn load(&self) -> Arc<MemoryBackend> {
        let backend = Arc::new(MemoryBackend::new());
        let batch: Vec<Write> = self
            .entries
            .iter()
            .map(|(table, key, value)| Write::Put {
                table: *table,
                key: key.clone(),
                value: value.clone(),
            })
            .collect();
        backend.commit(&batch).unwrap();
        assert_eq!(dump(&backend), self.entries, "loaded as recorded");
        assert_eq!(
            backend.get(Table::Meta, b"format").unwrap().as_deref(),
            Some(&[1u8][..]),
            "the fixture is a store of format 1"
        );
        backend
    }

    fn key(&self, name: &str) -> &Recorded {
        self.keys
            .iter()
            .find(|key| key.name == name)
            .unwrap_or_else(|| panic!("no key {name} in the fixture"))
    }
}

/// `-` is the empty value.
fn unhex(text: &str) -> Vec<u8> {
    if text == "-" {
        return Vec::new();
    }
    assert_eq!(text.len() % 2, 0, "odd hex {text:?}");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// Every raw entry of every table, in table order.
fn dump(backend: &MemoryBackend) -> Vec<(Table, Vec<u8>, Vec<u8>)> {
    Table::ALL
        .iter()
        .flat_map(|&table| {
            backend
                .scan(table, &[], None, usize::MAX)
                .unwrap()
                .into_iter()
                .map(move |(key, value)| (table, key, value))
        })
        .collect()
}

fn root(byte: u8) -> RootKey {
    RootKey::from_bytes(&mut [byte; 32])
}

fn day_after_start() -> Timestamp {
    common::start() + SignedDuration::from_hours(24)
}

fn open(backend: &Arc<MemoryBackend>, root: RootKey) -> Result<Kms, Error> {
    Kms::with_backend(
        backend.clone(),
        root,
        KmsOptions::new("ch-gva-2").clock(ManualClock::new(day_after_start())),
    )
}

fn status_name(status: keylife::KeyStatus) -> String {
    serde_json::to_value(status)
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn a_format_1_store_opens_with_every_key_and_its_ciphertexts_decrypt() {
    let fixture = Fixture::parse();
    let backend = fixture.load();
    let kms = open(&backend, root(7)).unwrap();

    // The migration happened in the open: the format entry is 2 with its tag.
    let format = backend.get(Table::Meta, b"format").unwrap().unwrap();
    assert_eq!(format.len(), 1 + TAG_LEN, "format entry {format:02x?}");
    assert_eq!(format[0], 2, "format entry {format:02x?}");

    // Every key, with its id, name and status.
    let listed = kms.list_keys().unwrap().kms_keys;
    assert_eq!(listed.len(), fixture.keys.len(), "{listed:#?}");
    for recorded in &fixture.keys {
        let key = listed
            .iter()
            .find(|key| key.id == recorded.id)
            .unwrap_or_else(|| panic!("key {} ({}) not listed", recorded.name, recorded.id));
        assert_eq!(key.name, recorded.name);
        assert_eq!(
            status_name(key.status),
            recorded.status,
            "{}",
            recorded.name
        );
        assert_eq!(key.origin_zone, "ch-gva-2");
    }

    // alpha: versions 1 and 2, its description; both old ciphertexts decrypt.
    let alpha = fixture.key("alpha").id;
    let rotations = kms.list_key_rotations(alpha).unwrap().rotations;
    let versions: Vec<u32> = rotations.iter().map(|r| r.version).collect();
    assert_eq!(
        versions,
        vec![2],
        "versions 2 and up: alpha has versions 1 and 2"
    );
    let details = kms.get_key(alpha).unwrap().key;
    assert_eq!(details.material.version, 2);
    assert_eq!(details.description.as_deref(), Some("first"));
    for sealed in &fixture.sealed {
        let id = fixture.key(&sealed.key).id;
        let opened = kms
            .decrypt(id, &sealed.ciphertext, sealed.context.as_deref())
            .unwrap_or_else(|e| panic!("old ciphertext of {}: {e}", sealed.key));
        assert_eq!(opened.plaintext.as_bytes(), sealed.plaintext.as_slice());
    }
    let fresh = kms.encrypt(alpha, b"alpha-new", Some(b"n")).unwrap();
    assert_eq!(
        kms.decrypt(alpha, &fresh.ciphertext, Some(b"n"))
            .unwrap()
            .plaintext
            .as_bytes(),
        b"alpha-new"
    );

    // beta: still disabled, still multi-zone.
    let beta = fixture.key("beta").id;
    let details = kms.get_key(beta).unwrap().key;
    assert_eq!(details.status, keylife::KeyStatus::Disabled);
    assert!(details.multi_zone);
    assert_eq!(
        kms.encrypt(beta, b"x", None).unwrap_err().code(),
        "key-disabled"
    );

    // gamma: pending deletion, due 7 days after the start.
    let gamma = fixture.key("gamma").id;
    let details = kms.get_key(gamma).unwrap().key;
    assert_eq!(details.status, keylife::KeyStatus::PendingDeletion);
    assert_eq!(
        details.delete_at,
        Some(common::start() + SignedDuration::from_hours(7 * 24))
    );
    assert_eq!(
        kms.encrypt(gamma, b"x", None).unwrap_err().code(),
        "key-pending-deletion"
    );

    // delta: version 2, its replica in de-fra-1 still known at the origin.
    let delta = fixture.key("delta").id;
    let details = kms.get_key(delta).unwrap();
    assert_eq!(details.key.material.version, 2);
    assert_eq!(details.key.replicas, vec!["de-fra-1"]);
    let zones: Vec<&str> = details
        .replicas_status
        .iter()
        .map(|s| s.zone.as_str())
        .collect();
    assert_eq!(zones, vec!["de-fra-1"], "{:?}", details.replicas_status);

    // A new key can be created.
    let created = kms.create_key(&CreateKey::new("epsilon")).unwrap();
    let sealed = kms.encrypt(created.id, b"eps", None).unwrap();
    assert_eq!(
        kms.decrypt(created.id, &sealed.ciphertext, None)
            .unwrap()
            .plaintext
            .as_bytes(),
        b"eps"
    );
    assert_eq!(kms.list_keys().unwrap().kms_keys.len(), 5);

    // Changes rewrite the old records in today's format: the versions the old code sealed
    // still open.
    kms.rotate_key(alpha, None).unwrap();
    kms.enable_key(beta, None).unwrap();
    let v3 = kms.encrypt(alpha, b"alpha-v3", None).unwrap();
    for sealed in &fixture.sealed {
        let id = fixture.key(&sealed.key).id;
        let opened = kms
            .decrypt(id, &sealed.ciphertext, sealed.context.as_deref())
            .unwrap_or_else(|e| panic!("old ciphertext of {} after a rotation: {e}", sealed.key));
        assert_eq!(opened.plaintext.as_bytes(), sealed.plaintext.as_slice());
    }
    drop(kms);

    // A second open finds an authenticated store and checks it as a whole.
    let (_, opened) = AuthenticatedBackend::open(backend.clone(), &root(7)).unwrap();
    assert_eq!(opened, Opened::Checked);
    let format = backend.get(Table::Meta, b"format").unwrap().unwrap();
    assert_eq!((format.len(), format[0]), (1 + TAG_LEN, 2));

    // And the Kms reopens it with everything.
    let kms = open(&backend, root(7)).unwrap();
    assert_eq!(kms.list_keys().unwrap().kms_keys.len(), 5);
    for sealed in &fixture.sealed {
        let id = fixture.key(&sealed.key).id;
        let opened = kms
            .decrypt(id, &sealed.ciphertext, sealed.context.as_deref())
            .unwrap_or_else(|e| panic!("old ciphertext of {} after a reopen: {e}", sealed.key));
        assert_eq!(opened.plaintext.as_bytes(), sealed.plaintext.as_slice());
    }
    assert_eq!(
        kms.decrypt(alpha, &v3.ciphertext, None)
            .unwrap()
            .plaintext
            .as_bytes(),
        b"alpha-v3"
    );
    assert_eq!(kms.get_key(alpha).unwrap().key.material.version, 3);
    assert_eq!(
        kms.get_key(beta).unwrap().key.status,
        keylife::KeyStatus::Enabled
    );
    assert_eq!(
        kms.get_key(gamma).unwrap().key.status,
        keylife::KeyStatus::PendingDeletion
    );
}

#[test]
fn the_migration_keeps_every_value_and_adds_only_the_store_id_and_state() {
    let fixture = Fixture::parse();
    let backend = fixture.load();
    let (authenticated, opened) = AuthenticatedBackend::open(backend.clone(), &root(7)).unwrap();
    assert_eq!(opened, Opened::Migrated);
    assert_eq!(authenticated.commit_seq(), 1, "one commit");

    // Through the authenticated store, every entry reads as the old code wrote it, except the
    // format, now 2; raw, each value carries a tag.
    for (table, key, value) in &fixture.entries {
        let read = authenticated.get(*table, key).unwrap();
        let expected = if *table == Table::Meta && key == b"format" {
            vec![2]
        } else {
            value.clone()
        };
        assert_eq!(
            read.as_ref(),
            Some(&expected),
            "{} {key:02x?}",
            table.name()
        );
        let raw = backend.get(*table, key).unwrap().unwrap();
        assert_eq!(
            raw.len(),
            expected.len() + TAG_LEN,
            "{} {key:02x?}",
            table.name()
        );
        assert_eq!(&raw[..expected.len()], expected.as_slice());
    }
    let mut added: Vec<(Table, Vec<u8>)> = dump(&backend)
        .into_iter()
        .filter(|(table, key, _)| {
            !fixture
                .entries
                .iter()
                .any(|(t, k, _)| t == table && k == key)
        })
        .map(|(table, key, _)| (table, key))
        .collect();
    added.sort();
    assert_eq!(
        added,
        vec![
            (Table::Meta, b"state".to_vec()),
            (Table::Meta, b"store-id".to_vec()),
        ]
    );
    drop(authenticated);

    let (_, opened) = AuthenticatedBackend::open(backend.clone(), &root(7)).unwrap();
    assert_eq!(opened, Opened::Checked);
}

#[test]
fn the_wrong_root_key_is_refused_and_nothing_is_migrated() {
    let fixture = Fixture::parse();
    let backend = fixture.load();

    let error = open(&backend, root(9)).unwrap_err();
    assert!(matches!(error, Error::WrongRootKey), "{error:?}");
    assert_eq!(dump(&backend), fixture.entries, "the store is as loaded");

    let error = AuthenticatedBackend::open(backend.clone(), &root(9)).unwrap_err();
    assert!(matches!(error, Error::WrongRootKey), "{error:?}");
    assert_eq!(dump(&backend), fixture.entries, "the store is as loaded");

    // The right key still migrates it afterwards.
    let kms = open(&backend, root(7)).unwrap();
    assert_eq!(kms.list_keys().unwrap().kms_keys.len(), fixture.keys.len());
}
