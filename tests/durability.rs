//! What a call acknowledged is there after the `Kms` is dropped and the sled store reopened;
//! a store opens only under its own root key.

mod common;

use std::sync::Arc;

use keylife::store::{Backend, Table, Write};

use keylife::{CreateKey, Error, Kms, KmsOptions, ManualClock};

use common::{root, start};

fn open(dir: &std::path::Path, root_byte: u8, clock: &ManualClock) -> Result<Kms, Error> {
    Kms::open(
        dir,
        root(root_byte),
        KmsOptions::new("ch-gva-2").clock(clock.clone()),
    )
}

#[test]
fn every_acknowledged_change_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(start());
    let kms = open(dir.path(), 7, &clock).unwrap();
    let plain = kms
        .create_key(&CreateKey::new("plain").description("kept"))
        .unwrap();
    let rotated = kms
        .create_key(&CreateKey::new("rotated").multi_zone(true))
        .unwrap();
    let disabled = kms.create_key(&CreateKey::new("disabled")).unwrap();
    let doomed = kms.create_key(&CreateKey::new("doomed")).unwrap();
    let gone = kms.create_key(&CreateKey::new("gone")).unwrap();

    let early = kms
        .encrypt(rotated.id, b"v1", Some(b"c"))
        .unwrap()
        .ciphertext;
    kms.rotate_key(rotated.id, None).unwrap();
    kms.disable_key_rotation(rotated.id, None).unwrap();
    let late = kms.encrypt(rotated.id, b"v2", None).unwrap().ciphertext;
    let plain_ct = kms.encrypt(plain.id, b"p", None).unwrap().ciphertext;
    kms.disable_key(disabled.id, None).unwrap();
    kms.schedule_key_deletion(doomed.id, Some(10), None)
        .unwrap();
    kms.schedule_key_deletion(gone.id, Some(7), None).unwrap();
    clock.advance_days(8);
    assert_eq!(kms.run_due().unwrap().deleted, vec![gone.id]);

    let before = kms.list_keys().unwrap();
    drop(kms);

    let kms = open(dir.path(), 7, &clock).unwrap();
    assert_eq!(kms.list_keys().unwrap(), before, "every record as it was");
    assert_eq!(
        kms.get_key(gone.id).unwrap_err(),
        Error::KeyNotFound { id: gone.id }
    );
    assert_eq!(
        kms.decrypt(rotated.id, &early, Some(b"c"))
            .unwrap()
            .plaintext
            .as_bytes(),
        b"v1"
    );
    assert_eq!(
        kms.decrypt(rotated.id, &late, None)
            .unwrap()
            .plaintext
            .as_bytes(),
        b"v2"
    );
    assert_eq!(
        kms.decrypt(plain.id, &plain_ct, None)
            .unwrap()
            .plaintext
            .as_bytes(),
        b"p"
    );
    assert_eq!(
        kms.list_key_rotations(rotated.id).unwrap().rotations.len(),
        1
    );
    // The due index survived too: the pending deletion still happens on time.
    clock.advance_days(2);
    assert_eq!(kms.run_due().unwrap().deleted, vec![doomed.id]);
    // The name of a deleted key is free again, and the quota counter followed.
    kms.create_key(&CreateKey::new("gone")).unwrap();
    assert_eq!(kms.list_keys().unwrap().kms_keys.len(), 4);
}

#[test]
fn the_wrong_root_key_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(start());
    let kms = open(dir.path(), 1, &clock).unwrap();
    let key = kms.create_key(&CreateKey::new("k")).unwrap();
    let sealed = kms.encrypt(key.id, b"p", None).unwrap().ciphertext;
    drop(kms);

    let err = open(dir.path(), 2, &clock).unwrap_err();
    assert_eq!(err, Error::WrongRootKey);
    assert_eq!(err.code(), "wrong-root-key");

    // The refusal changed nothing: the right key still opens everything.
    let kms = open(dir.path(), 1, &clock).unwrap();
    assert_eq!(
        kms.decrypt(key.id, &sealed, None)
            .unwrap()
            .plaintext
            .as_bytes(),
        b"p"
    );
}

#[test]
fn a_new_store_remembers_its_root_key_before_any_key_exists() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(start());
    drop(open(dir.path(), 3, &clock).unwrap());
    assert_eq!(
        open(dir.path(), 4, &clock).unwrap_err(),
        Error::WrongRootKey
    );
    assert!(open(dir.path(), 3, &clock).is_ok());
}

#[test]
fn a_store_in_use_is_refused_and_free_again_once_closed() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(start());
    let first = open(dir.path(), 1, &clock).unwrap();
    let err = open(dir.path(), 1, &clock).unwrap_err();
    assert_eq!(
        err,
        Error::StoreInUse {
            store: dir.path().display().to_string()
        }
    );
    assert_eq!(err.code(), "store-in-use");
    assert!(err.to_string().contains("in use"), "{err}");
    drop(first);
    // Closing and reopening at once, again and again, works: the lock is waited for.
    for round in 0..20 {
        let kms = open(dir.path(), 1, &clock).unwrap();
        kms.create_key(&CreateKey::new(format!("k{round}")))
            .unwrap();
    }
    assert_eq!(
        open(dir.path(), 1, &clock)
            .unwrap()
            .list_keys()
            .unwrap()
            .kms_keys
            .len(),
        20
    );
}

/// Every commit of a sled store ends in an `fdatasync` of sled's data file: one per commit,
/// from one thread or several.
#[test]
fn every_sled_commit_is_synced() {
    use keylife::store::SledBackend;
    let dir = tempfile::tempdir().unwrap();
    let backend = SledBackend::open(dir.path()).unwrap();
    let before = backend.syncs();
    assert!(
        before.dir >= 1,
        "the directory sled just filled is synced at open"
    );
    for i in 0..10 {
        backend.commit(&[put(i)]).unwrap();
        assert_eq!(backend.syncs().data, before.data + u64::from(i) + 1);
    }
    // Several threads: still one sync per commit (grouping is the authenticated store's).
    let backend = std::sync::Arc::new(backend);
    let start = backend.syncs().data;
    commit_from_8_threads(&(backend.clone() as Arc<dyn Backend>), 1000);
    assert_eq!(backend.syncs().data - start, 200);
}

/// Every commit of a redb store is one redb write transaction committed with
/// `Durability::Immediate`: redb 5 writes the transaction's pages and its commit slot, then
/// makes one `fdatasync` of its file before `commit` returns (a 1-phase commit: its commit
/// slots are checksummed). A transaction that has to grow the file syncs once more, right
/// after extending it (so that a header naming the larger layout never outlives a lost
/// extension); shrinking the file costs no sync. redb runs one write transaction at a time, so
/// concurrent commits are not grouped: each pays its own sync.
#[test]
fn every_redb_commit_is_synced() {
    use keylife::store::{REDB_FILE, RedbBackend};
    let dir = tempfile::tempdir().unwrap();
    let backend = RedbBackend::open(dir.path().join("store")).unwrap();
    let file = dir.path().join("store").join(REDB_FILE);
    let len = || std::fs::metadata(&file).unwrap().len();
    let before = backend.syncs();
    assert_eq!(
        before.dir, 1,
        "the new file's directory entry is synced at open"
    );
    assert!(before.data >= 1, "redb syncs the file it initializes");
    let mut grown = 0;
    for i in 0..200 {
        let (synced, size) = (backend.syncs().data, len());
        backend.commit(&[put(i)]).unwrap();
        let grew = len() > size;
        grown += u64::from(grew);
        assert_eq!(
            backend.syncs().data - synced,
            1 + u64::from(grew),
            "commit {i}: one sync, and one more if the file grew"
        );
    }
    assert!(grown >= 1, "200 commits grew the file ({} bytes)", len());
    assert_eq!(
        backend.syncs().dir,
        before.dir,
        "commits never sync the directory"
    );
    // An empty batch is no transaction at all.
    let synced = backend.syncs().data;
    backend.commit(&[]).unwrap();
    assert_eq!(backend.syncs().data, synced);

    let backend = std::sync::Arc::new(backend);
    let start = backend.syncs().data;
    commit_from_8_threads(&(backend.clone() as Arc<dyn Backend>), 1000);
    let synced = backend.syncs().data - start;
    // One each, plus a few for the growth of the file (it doubles while small).
    assert!(
        (200..=210).contains(&synced),
        "{synced} syncs for 200 commits"
    );
}

/// 8 threads × 25 commits of one Put each through `backend`, keys from `first` on; then every
/// one is there.
fn commit_from_8_threads(backend: &Arc<dyn Backend>, first: u32) {
    let before = backend
        .scan(Table::Keys, &[], None, usize::MAX)
        .unwrap()
        .len();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let backend = backend.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    backend.commit(&[put(first + t * 100 + i)]).unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let after = backend
        .scan(Table::Keys, &[], None, usize::MAX)
        .unwrap()
        .len();
    assert_eq!(after - before, 200);
}

fn put(i: u32) -> Write {
    Write::Put {
        table: Table::Keys,
        key: i.to_be_bytes().to_vec(),
        value: vec![1; 100],
    }
}

/// Reads an engine's count of data syncs.
type SyncCount = Box<dyn Fn() -> u64>;

/// Concurrent commits through the authenticated store (as every `Kms` makes them) are grouped:
/// one engine commit, one engine sync and one witness sync per group, fewer than commits.
#[test]
fn concurrent_commits_share_a_sync_per_group() {
    use keylife::store::{AuthenticatedBackend, RedbBackend, SledBackend};
    let dir = tempfile::tempdir().unwrap();
    let sled = Arc::new(SledBackend::open(dir.path().join("sled")).unwrap());
    let redb = Arc::new(RedbBackend::open(dir.path().join("redb")).unwrap());
    let engines: [(Arc<dyn Backend>, SyncCount); 2] = [
        (sled.clone(), Box::new(move || sled.syncs().data)),
        (redb.clone(), Box::new(move || redb.syncs().data)),
    ];
    for (engine, engine_syncs) in engines {
        let name = engine.engine();
        let (authenticated, _) = AuthenticatedBackend::open(engine, &root(7)).unwrap();
        let authenticated = Arc::new(authenticated);
        let (syncs, witness) = (engine_syncs(), authenticated.witness_syncs().data);
        commit_from_8_threads(&(authenticated.clone() as Arc<dyn Backend>), 0);
        let (syncs, witness) = (
            engine_syncs() - syncs,
            authenticated.witness_syncs().data - witness,
        );
        let groups = authenticated.commit_seq();
        assert_eq!(witness, groups, "{name}: one witness sync per group");
        assert!(
            groups < 200 && syncs < 200,
            "{name}: 200 commits in {groups} groups, {syncs} engine syncs"
        );
    }
}

/// A store keeps the engine it was created with: reopened without an engine it opens with its
/// own, and an explicit other engine is refused on field `engine`.
#[test]
fn a_store_opens_with_the_engine_it_was_created_with() {
    use keylife::store::Engine;
    for (engine, other) in [(Engine::Redb, Engine::Sled), (Engine::Sled, Engine::Redb)] {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(start());
        let options = || KmsOptions::new("ch-gva-2").clock(clock.clone());
        let kms = Kms::open(dir.path(), root(7), options().engine(engine)).unwrap();
        let key = kms.create_key(&CreateKey::new("k")).unwrap();
        drop(kms);
        assert_eq!(Engine::detect(dir.path()), Some(engine));
        let kms = Kms::open(dir.path(), root(7), options()).unwrap();
        assert_eq!(kms.get_key(key.id).unwrap().key.name, "k");
        drop(kms);
        let Err(error) = Kms::open(dir.path(), root(7), options().engine(other)) else {
            panic!("{engine} store opened as {other}");
        };
        match error {
            Error::BadRequest { field, reason } => {
                assert_eq!(field, "engine");
                assert!(
                    reason.contains(&format!("created with {engine}, not {other}")),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}

/// A store's directory is its owner's only (0700), and so is every file keylife and the
/// engine keep in it (0600), whatever the process's umask.
#[cfg(unix)]
#[test]
fn store_files_are_the_owners_only() {
    use keylife::store::Engine;
    use std::os::unix::fs::PermissionsExt as _;
    for engine in Engine::ALL {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("zone");
        let clock = ManualClock::new(start());
        for run in 0..2 {
            let options = KmsOptions::new("ch-gva-2")
                .clock(clock.clone())
                .engine(engine);
            let kms = Kms::open(&dir, root(7), options).unwrap();
            let key = kms.create_key(&CreateKey::new(format!("k{run}"))).unwrap();
            kms.rotate_key(key.id, None).unwrap();
            clock.advance_days(1);
        }
        let mode =
            |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700, "{engine}: the directory");
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let want = if entry.file_type().unwrap().is_dir() {
                0o700
            } else {
                0o600
            };
            files.push(entry.file_name());
            assert_eq!(
                mode(&entry.path()),
                want,
                "{engine}: {}",
                entry.path().display()
            );
        }
        assert!(files.len() >= 3, "{engine}: {files:?}");
    }
}
