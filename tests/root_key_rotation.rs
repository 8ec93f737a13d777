//! Root-key rotation (`keylife::rotate_root_key`), on both engines: every key, status,
//! version, rotation setting, replica delivery state, audit head and ciphertext made before is
//! there after, under the new root key only; a wrong old key, a store in use, an empty
//! directory and the same key again are refused and change nothing. The rotation killed at
//! many instants is `tests/root_key_rotation_kill.rs`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use common::{root, start};
use keylife::store::{Backend, Engine, MemoryBackend, Table};
use keylife::{
    AuditHead, CreateKey, Kms, KmsOptions, LocalLink, ManualClock, RootKey, rotate_root_key,
};

const CONTEXT: &[u8] = b"ctx";

/// A ciphertext made before the rotation: its key, bytes and context.
type Sealed = (keylife::KeyId, Vec<u8>, Option<&'static [u8]>);

/// Every raw entry of the engine in `dir` (tags included), by table, and the witness file.
type Raw = (BTreeMap<(Table, Vec<u8>), Vec<u8>>, Vec<u8>);

fn raw(dir: &Path) -> Raw {
    let engine = Engine::open(dir, None).unwrap();
    let mut entries = BTreeMap::new();
    for table in Table::ALL {
        for (key, value) in engine.scan(table, &[], None, usize::MAX).unwrap() {
            entries.insert((table, key), value);
        }
    }
    let witness = std::fs::read(dir.join(keylife::store::WITNESS_FILE)).unwrap();
    (entries, witness)
}

fn options(zone: &str, clock: &ManualClock, engine: Engine) -> KmsOptions {
    KmsOptions::new(zone).clock(clock.clone()).engine(engine)
}

/// What a zone shows of itself: each key's details and rotations, the listing, the head.
fn snapshot(kms: &Kms) -> (String, Option<AuditHead>) {
    let list = kms.list_keys().unwrap();
    let mut text = format!("{list:?}\n");
    for key in &list.kms_keys {
        text += &format!("{:?}\n", kms.get_key(key.id).unwrap());
        text += &format!("{:?}\n", kms.list_key_rotations(key.id).unwrap());
    }
    (text, kms.audit_head().unwrap())
}

/// A zone `a` with keys in every state (versions, rotation settings, disabled, pending
/// deletion, one replicated to zone `b` with its delivery state), an audit head, and a
/// ciphertext of every key made before; returns the ciphertexts (key, ciphertext, plaintext).
fn populate(data: &Path, clock: &ManualClock, engine: Engine) -> Vec<Sealed> {
    let link = LocalLink::new();
    let a = Kms::open(
        data.join("a"),
        root(1),
        options("a", clock, engine).link(link.clone()),
    )
    .unwrap();
    link.attach(&a);
    let b = Kms::open(
        data.join("b"),
        root(1),
        options("b", clock, engine).link(link.clone()),
    )
    .unwrap();
    link.attach(&b);
    let mut sealed = Vec::new();
    for n in 0..12 {
        let mut request = CreateKey::new(format!("key-{n}"));
        request.multi_zone = n == 0;
        request.description = Some(format!("key number {n}"));
        let id = a.create_key(&request).unwrap().id;
        let text = format!("v1 of {n}");
        let c = a.encrypt(id, text.as_bytes(), None).unwrap();
        sealed.push((id, c.ciphertext, None));
        for _ in 0..n % 3 {
            a.rotate_key(id, None).unwrap();
            let c = a.encrypt(id, b"later", Some(CONTEXT)).unwrap();
            sealed.push((id, c.ciphertext, Some(CONTEXT)));
        }
        match n % 4 {
            1 => drop(a.disable_key(id, None).unwrap()),
            2 => drop(a.schedule_key_deletion(id, Some(7), None).unwrap()),
            3 => drop(a.disable_key_rotation(id, None).unwrap()),
            _ => {}
        }
    }
    a.replicate_key(sealed[0].0, "b", None).unwrap();
    a.sync().unwrap();
    a.wait_for_deliveries();
    a.record_audit_head(AuditHead {
        seq: 42,
        mac: [7; 32],
    })
    .unwrap();
    sealed
}

/// Decrypts every ciphertext whose key is enabled; counts them.
fn decrypt_all(kms: &Kms, sealed: &[Sealed]) -> usize {
    let mut opened = 0;
    for (id, ciphertext, context) in sealed {
        if kms.get_key(*id).unwrap().key.status != keylife::KeyStatus::Enabled {
            continue;
        }
        kms.decrypt(*id, ciphertext, *context)
            .unwrap_or_else(|e| panic!("key {id}: {e}"));
        opened += 1;
    }
    opened
}

fn open(dir: &Path, key: RootKey, clock: &ManualClock) -> keylife::Result<Kms> {
    Kms::open(dir, key, KmsOptions::new("a").clock(clock.clone()))
}

#[test]
fn a_rotated_store_keeps_everything_and_opens_only_with_the_new_key() {
    for engine in Engine::ALL {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().join("a");
        let clock = ManualClock::new(start());
        let sealed = populate(data.path(), &clock, engine);
        let kms = open(&dir, root(1), &clock).unwrap();
        let before = snapshot(&kms);
        assert!(!kms.audit_head_rotated().unwrap());
        assert!(before.0.contains("PendingDeletion") && before.0.contains("Disabled"));
        assert!(
            before.0.contains("ReplicaState { zone: \"b\""),
            "{}",
            before.0
        );
        drop(kms);
        let (raw_before, _) = raw(&dir);

        let done = rotate_root_key(&dir, root(1), root(2)).unwrap();
        assert_eq!(done.zone, "a");
        assert_eq!(done.engine, engine.name());
        // 12 keys, versions 1 + (n % 3) rotations each: 12 + (0+1+2)*4.
        assert_eq!(done.materials, 24, "{engine}");
        assert_eq!(
            done.entries,
            raw_before.len() - 1,
            "every entry but the state record"
        );

        // Every stored value was written again: no raw entry (tag included) is the same, and
        // each sealed material is another blob (resealed, not only tagged again).
        let (raw_after, _) = raw(&dir);
        assert_eq!(
            raw_after.keys().collect::<Vec<_>>(),
            raw_before.keys().collect::<Vec<_>>(),
            "the same entries"
        );
        for (entry, value) in &raw_after {
            assert_ne!(
                Some(value),
                raw_before.get(entry),
                "{entry:?} was not rewritten"
            );
            if entry.0 == Table::Materials {
                let old = &raw_before[entry];
                assert_ne!(old[..old.len() - 32], value[..value.len() - 32], "resealed");
            }
        }

        let refused = open(&dir, root(1), &clock).unwrap_err();
        assert_eq!(refused.code(), "wrong-root-key", "{engine}: {refused}");
        let kms = open(&dir, root(2), &clock).unwrap();
        assert_eq!(snapshot(&kms), before, "{engine}: every record as it was");
        // The audit head is marked as chained under the old key, until the next one.
        assert!(kms.audit_head_rotated().unwrap());
        kms.record_audit_head(AuditHead {
            seq: 43,
            mac: [8; 32],
        })
        .unwrap();
        assert!(!kms.audit_head_rotated().unwrap());
        assert!(decrypt_all(&kms, &sealed) >= 10);
        // The new key seals new material too.
        let id = sealed[0].0;
        kms.rotate_key(id, None).unwrap();
        let fresh = kms.encrypt(id, b"after", None).unwrap();
        drop(kms);

        // And again, to a third key.
        let done = rotate_root_key(&dir, root(2), root(3)).unwrap();
        assert_eq!(done.materials, 25);
        for old in [root(1), root(2)] {
            assert_eq!(
                open(&dir, old, &clock).unwrap_err(),
                keylife::Error::WrongRootKey
            );
        }
        let kms = open(&dir, root(3), &clock).unwrap();
        decrypt_all(&kms, &sealed);
        kms.decrypt(id, &fresh.ciphertext, None).unwrap();
        // The replica in zone b (still under root 1) follows its rotated origin.
        let b = Kms::open(
            data.path().join("b"),
            root(1),
            KmsOptions::new("b").clock(clock.clone()),
        )
        .unwrap();
        b.decrypt(id, &sealed[0].1, None).unwrap();
    }
}

#[test]
fn a_wrong_old_key_or_the_same_key_changes_nothing() {
    for engine in Engine::ALL {
        let data = tempfile::tempdir().unwrap();
        let dir = data.path().join("a");
        let clock = ManualClock::new(start());
        let sealed = populate(data.path(), &clock, engine);
        let before = raw(&dir);

        let error = rotate_root_key(&dir, root(9), root(2)).unwrap_err();
        assert_eq!(error, keylife::Error::WrongRootKey, "{engine}");
        assert!(
            raw(&dir) == before,
            "{engine}: a wrong old key changed the store"
        );

        let error = rotate_root_key(&dir, root(1), root(1)).unwrap_err();
        assert_eq!(error.code(), "invalid-argument", "{engine}: {error}");
        assert!(error.to_string().contains("current root key"), "{error}");
        assert!(
            raw(&dir) == before,
            "{engine}: the same key changed the store"
        );

        let kms = open(&dir, root(1), &clock).unwrap();
        decrypt_all(&kms, &sealed);
    }
}

#[test]
fn a_store_in_use_or_no_store_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().join("a");
    let clock = ManualClock::new(start());
    let kms = open(&dir, root(1), &clock).unwrap();
    kms.create_key(&CreateKey::new("k")).unwrap();
    let error = rotate_root_key(&dir, root(1), root(2)).unwrap_err();
    assert_eq!(error.code(), "store-in-use", "{error}");
    drop(kms);
    open(&dir, root(1), &clock).unwrap();

    let empty = data.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let error = rotate_root_key(&empty, root(1), root(2)).unwrap_err();
    assert_eq!(error.code(), "invalid-argument", "{error}");
    assert!(
        std::fs::read_dir(&empty).unwrap().next().is_none(),
        "nothing created"
    );
}

#[test]
fn a_store_of_another_backend_rotates_too() {
    let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let clock = ManualClock::new(start());
    let kms = Kms::with_backend(
        backend.clone(),
        root(1),
        KmsOptions::new("m").clock(clock.clone()),
    )
    .unwrap();
    let id = kms.create_key(&CreateKey::new("k")).unwrap().id;
    let sealed = kms.encrypt(id, b"x", None).unwrap();
    clock.advance_days(1);
    drop(kms);
    let done = keylife::store::rotate_root_key_of(backend.clone(), root(1), root(2)).unwrap();
    assert_eq!((done.engine, done.materials), ("memory", 1));
    let error = Kms::with_backend(backend.clone(), root(1), KmsOptions::new("m")).unwrap_err();
    assert_eq!(error.code(), "wrong-root-key");
    let kms = Kms::with_backend(backend, root(2), KmsOptions::new("m")).unwrap();
    assert_eq!(
        kms.decrypt(id, &sealed.ciphertext, None)
            .unwrap()
            .plaintext
            .as_bytes(),
        b"x"
    );
}

/// The states a crash can leave, made by hand from copies: the engine's files before the
/// rotation's commit with the witness after its early write (a crash between the two) opens
/// with the old key only, and goes on under it; the engine's files after the commit with the
/// witness as it was before the rotation (what a rotation writing its witness slot only after
/// the commit would leave at a crash between them) opens with neither key: that is why the
/// new key's slot is written first.
#[test]
fn the_witness_is_written_before_the_commit_and_agrees_with_either_outcome() {
    for engine in Engine::ALL {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("a");
        let clock = ManualClock::new(start());
        let sealed = populate(base.path(), &clock, engine);
        let before = base.path().join("before");
        common::copy_dir(&dir, &before);
        rotate_root_key(&dir, root(1), root(2)).unwrap();

        let witness = keylife::store::WITNESS_FILE;
        // Killed after the witness write, before the commit.
        let early = base.path().join("early");
        common::copy_dir(&before, &early);
        std::fs::copy(dir.join(witness), early.join(witness)).unwrap();
        assert_eq!(
            open(&early, root(2), &clock).unwrap_err(),
            keylife::Error::WrongRootKey,
            "{engine}"
        );
        let kms = open(&early, root(1), &clock).unwrap();
        decrypt_all(&kms, &sealed);
        kms.create_key(&CreateKey::new("after the crash")).unwrap();
        drop(kms);
        open(&early, root(1), &clock).unwrap();
        // And rotated again from there.
        rotate_root_key(&early, root(1), root(2)).unwrap();
        decrypt_all(&open(&early, root(2), &clock).unwrap(), &sealed);

        // The commit made, the witness as before the rotation: refused by both keys.
        let late = base.path().join("late");
        common::copy_dir(&dir, &late);
        std::fs::copy(before.join(witness), late.join(witness)).unwrap();
        assert_eq!(
            open(&late, root(1), &clock).unwrap_err(),
            keylife::Error::WrongRootKey
        );
        let error = open(&late, root(2), &clock).unwrap_err();
        assert_eq!(error.code(), "corrupt-record", "{engine}: {error}");
        assert!(error.to_string().contains("witness"), "{error}");
    }
}
