//! Backup and restore (lifecycle.md, "Restore from a backup"; docs/design.md, "Backup and
//! restore"): a backup taken under load is exactly the store at its commit, a restore gives it
//! back on either engine, a changed file is refused, and replicas follow a restored origin.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{root, start};
use keylife::core::restore::{RESTORE_MARGIN, restored};
use keylife::core::{KeyId, Role};
use keylife::crypto::{MacKey, Purpose};
use keylife::store::backup::{BackupEntry, read_backup};
use keylife::store::codec::{decode_record_sealed, encode_record_sealed, zone_key};
use keylife::store::{Backend, Engine, Entries, MemoryBackend, Table, Write};
use keylife::{
    CreateKey, Error, Kms, KmsOptions, Limits, LocalLink, ManualClock, RestoreOptions, RootKey,
};

/// Limits that let the load tests create many keys.
fn roomy() -> Limits {
    Limits {
        key_quota: 100_000,
        ..Limits::default()
    }
}

fn options(zone: &str, clock: &ManualClock) -> KmsOptions {
    KmsOptions::new(zone).clock(clock.clone()).limits(roomy())
}

fn backup(kms: &Kms) -> Vec<u8> {
    let mut out = Vec::new();
    let summary = kms.backup(&mut out).unwrap();
    assert_eq!(summary.bytes, out.len() as u64);
    out
}

/// The entries of backup file `bytes`, authenticated under `root`.
fn entries(bytes: &[u8], root: RootKey) -> (u64, Vec<BackupEntry>) {
    let backup = read_backup(bytes, &MacKey::derive(&root, Purpose::BackupMac)).unwrap();
    (backup.header.seq, backup.entries)
}

/// What a store restored `times` times from the image `entries` must hold: each origin key
/// `times` margins up, each replica of an origin key owed a delivery; the engine entry, the
/// target's own, left out.
fn expected_after_restore(entries: &[BackupEntry], times: u64) -> Vec<BackupEntry> {
    let mut expected = Vec::new();
    for (table, key, value) in entries {
        match table {
            Table::Meta if key == b"engine" => {}
            Table::Keys => {
                let id = KeyId::from_bytes(key.as_slice().try_into().unwrap());
                let (record, seals) = decode_record_sealed(id, value).unwrap();
                if record.role() == Role::Origin {
                    for replica in record.replicas() {
                        expected.push((Table::Outbox, zone_key(id, &replica.zone), Vec::new()));
                    }
                }
                let moved = restored(&record, RESTORE_MARGIN * times).unwrap();
                expected.push((
                    *table,
                    key.clone(),
                    encode_record_sealed(&moved, &seals).unwrap(),
                ));
            }
            _ => expected.push((*table, key.clone(), value.clone())),
        }
    }
    normalize(expected)
}

/// `entries` without the engine entry, sorted and without duplicates (as a store holds them).
fn normalize(mut entries: Vec<BackupEntry>) -> Vec<BackupEntry> {
    entries.retain(|(table, key, _)| !(*table == Table::Meta && key == b"engine"));
    entries.sort();
    entries.dedup();
    entries
}

/// An engine whose every commit is recorded, in commit order, to rebuild any commit's state.
struct Recorder {
    inner: Arc<dyn Backend>,
    log: Mutex<Vec<Vec<Write>>>,
}

impl Backend for Recorder {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.inner.get(table, key)
    }

    fn scan(
        &self,
        table: Table,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, Error> {
        self.inner.scan(table, start, end, limit)
    }

    fn commit(&self, batch: &[Write]) -> Result<(), Error> {
        // The authenticated layer commits one group at a time: the log's order is the
        // commits' order.
        let mut log = self.log.lock().unwrap();
        self.inner.commit(batch)?;
        log.push(batch.to_vec());
        Ok(())
    }

    fn directory(&self) -> Option<&Path> {
        self.inner.directory()
    }

    fn engine(&self) -> &'static str {
        self.inner.engine()
    }
}

impl Recorder {
    /// The entries of the store as of commit `seq` (its state record names it), replayed into
    /// memory from the log, each value without its tag: what a backup of that commit holds.
    fn state_at(&self, seq: u64) -> Vec<BackupEntry> {
        let replay = MemoryBackend::new();
        let mut found = false;
        for batch in self.log.lock().unwrap().iter() {
            replay.commit(batch).unwrap();
            let state = batch.iter().find_map(|write| match write {
                Write::Put {
                    table: Table::Meta,
                    key,
                    value,
                } if key == b"state" => Some(value),
                _ => None,
            });
            if state.is_some_and(|value| value[1..9] == seq.to_be_bytes()) {
                found = true;
                break;
            }
        }
        assert!(found, "commit {seq} is in the log");
        let mut entries = Vec::new();
        for table in Table::ALL {
            for (key, raw) in replay.scan(table, &[], None, usize::MAX).unwrap() {
                if table == Table::Meta && (key == b"state" || key == b"store-id") {
                    continue;
                }
                let value = raw[..raw.len() - 32].to_vec();
                entries.push((table, key, value));
            }
        }
        entries
    }
}

/// Restores `bytes` into `dir` with `engine` under `root(1)` and opens the result.
fn restore_and_open(bytes: &[u8], dir: &Path, engine: Engine, clock: &ManualClock) -> Kms {
    let restoring = RestoreOptions::default()
        .engine(engine)
        .clock(clock.clone());
    let report = Kms::restore(&mut &bytes[..], dir, root(1), &restoring).unwrap();
    assert_eq!(report.engine, engine);
    assert_eq!(report.revision_margin, RESTORE_MARGIN);
    Kms::open(dir, root(1), options(&report.backup.zone, clock)).unwrap()
}

#[test]
fn a_backup_under_an_eight_thread_write_load_restores_exactly_its_commit_on_both_engines() {
    for engine in Engine::ALL {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(start());
        let recorder = Arc::new(Recorder {
            inner: Engine::open(&dir.path().join("source"), Some(engine)).unwrap(),
            log: Mutex::new(Vec::new()),
        });
        let kms = Arc::new(
            Kms::with_backend(recorder.clone(), root(1), options("ch-gva-2", &clock)).unwrap(),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let sealed = Arc::new(Mutex::new(Vec::new()));
        let writers: Vec<_> = (0..8)
            .map(|thread| {
                let (kms, stop, sealed) = (kms.clone(), stop.clone(), sealed.clone());
                std::thread::spawn(move || {
                    let mut round = 0u32;
                    while !stop.load(Ordering::Relaxed) && round < 400 {
                        let key = kms
                            .create_key(&CreateKey::new(format!("t{thread}-{round}")))
                            .unwrap();
                        let ciphertext = kms.encrypt(key.id, b"before", None).unwrap().ciphertext;
                        sealed.lock().unwrap().push((key.id, ciphertext));
                        kms.disable_key(key.id, None).unwrap();
                        if round.is_multiple_of(3) {
                            kms.enable_key(key.id, None).unwrap();
                            kms.rotate_key(key.id, None).unwrap();
                        }
                        round += 1;
                    }
                    round
                })
            })
            .collect();
        // Let the load build up, then take the backup while it runs.
        while sealed.lock().unwrap().len() < 40 {
            std::thread::sleep(Duration::from_millis(5));
        }
        // Every ciphertext listed here was made before the backup began.
        let made_before: Vec<_> = sealed.lock().unwrap().clone();
        let bytes = backup(&kms);
        stop.store(true, Ordering::Relaxed);
        let rounds: u32 = writers.into_iter().map(|w| w.join().unwrap()).sum();
        let (seq, image) = entries(&bytes, root(1));
        let after = kms.list_keys().unwrap().kms_keys.len();
        assert!(
            (image.iter().filter(|(t, _, _)| *t == Table::Keys).count()) < after,
            "{engine}: the writes went on after the backup ({rounds} rounds)"
        );
        assert_eq!(
            image,
            recorder.state_at(seq),
            "{engine}: the image is commit {seq}"
        );
        drop(kms);

        for target in Engine::ALL {
            let restored_dir = dir.path().join(format!("restored-{target}"));
            let kms = restore_and_open(&bytes, &restored_dir, target, &clock);
            let (_, again) = entries(&backup(&kms), root(1));
            assert_eq!(
                normalize(again),
                expected_after_restore(&image, 1),
                "{engine} restored into {target}"
            );
            for (id, ciphertext) in &made_before {
                let opened = kms.decrypt(*id, ciphertext, None);
                // Keys disabled at the backup refuse; every other one decrypts.
                match opened {
                    Ok(plain) => assert_eq!(plain.plaintext.as_bytes(), b"before"),
                    Err(error) => assert_eq!(error.code(), "key-disabled", "{error}"),
                }
            }
        }
    }
}

/// Keys in every state a zone can hold: enabled, disabled, rotated, automatic rotation on,
/// pending deletion; with ciphertexts.
fn varied_zone(kms: &Kms) -> Vec<(KeyId, Vec<u8>)> {
    // Imported keys too (their records carry the imported versions' count).
    let seed = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/seed/seed.json"
    ));
    keylife::Seed::from_json(&seed.unwrap())
        .unwrap()
        .apply(std::slice::from_ref(kms))
        .unwrap();
    let mut sealed = Vec::new();
    for i in 0u32..12 {
        let key = kms.create_key(&CreateKey::new(format!("k{i}"))).unwrap();
        if i.is_multiple_of(3) {
            kms.rotate_key(key.id, None).unwrap();
        }
        sealed.push((
            key.id,
            kms.encrypt(key.id, b"payload", Some(b"ctx"))
                .unwrap()
                .ciphertext,
        ));
        match i % 4 {
            1 => drop(kms.disable_key(key.id, None).unwrap()),
            2 => drop(kms.schedule_key_deletion(key.id, Some(7), None).unwrap()),
            3 => drop(kms.disable_key_rotation(key.id, None).unwrap()),
            _ => {}
        }
    }
    sealed
}

#[test]
fn sled_to_redb_to_sled_round_trip_is_equal() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(start());
    let sled = Kms::open(
        dir.path().join("a"),
        root(1),
        options("z", &clock).engine(Engine::Sled),
    )
    .unwrap();
    let sealed = varied_zone(&sled);
    let first = backup(&sled);
    let (_, image) = entries(&first, root(1));
    drop(sled);

    let redb = restore_and_open(&first, &dir.path().join("b"), Engine::Redb, &clock);
    let second = backup(&redb);
    drop(redb);
    let back = restore_and_open(&second, &dir.path().join("c"), Engine::Sled, &clock);
    assert_eq!(Engine::detect(&dir.path().join("b")), Some(Engine::Redb));
    assert_eq!(Engine::detect(&dir.path().join("c")), Some(Engine::Sled));
    let (_, twice) = entries(&backup(&back), root(1));
    assert_eq!(normalize(twice), expected_after_restore(&image, 2));
    for (id, ciphertext) in &sealed {
        let key = back.get_key(*id).unwrap();
        match back.decrypt(*id, ciphertext, Some(b"ctx")) {
            Ok(plain) => assert_eq!(plain.plaintext.as_bytes(), b"payload"),
            Err(error) => assert_ne!(key.key.status, keylife::api::KeyStatus::Enabled, "{error}"),
        }
    }
}

#[test]
fn a_flipped_byte_anywhere_is_refused_and_a_refused_restore_leaves_nothing() {
    let (kms, clock) = common::memory_kms();
    varied_zone(&kms);
    let bytes = backup(&kms);
    assert!(bytes.len() > 4000, "a file of {} bytes", bytes.len());
    for at in 0..bytes.len() {
        let mut changed = bytes.clone();
        changed[at] ^= 1;
        let error = Kms::inspect_backup(&mut &changed[..], root(1)).unwrap_err();
        assert!(
            matches!(error, Error::Corrupt { .. } | Error::WrongRootKey),
            "byte {at}: {error}"
        );
    }
    assert_eq!(
        Kms::inspect_backup(&mut &bytes[..bytes.len() - 1], root(1))
            .unwrap_err()
            .code(),
        "corrupt-record"
    );
    let dir = tempfile::tempdir().unwrap();
    let options = RestoreOptions::default().clock(clock.clone());
    for at in (0..bytes.len()).step_by(bytes.len() / 9) {
        let mut changed = bytes.clone();
        changed[at] ^= 0x80;
        let target = dir.path().join(format!("at-{at}"));
        assert!(Kms::restore(&mut &changed[..], &target, root(1), &options).is_err());
        assert!(!target.exists(), "byte {at}: nothing is built");
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no staging directory is left behind"
    );
    // The same file, unchanged, restores.
    Kms::restore(&mut &bytes[..], dir.path().join("ok"), root(1), &options).unwrap();
}

#[test]
fn a_wrong_root_key_or_a_non_empty_target_is_refused() {
    let (kms, clock) = common::memory_kms();
    varied_zone(&kms);
    let bytes = backup(&kms);
    let dir = tempfile::tempdir().unwrap();
    let options = RestoreOptions::default().clock(clock);
    let target = dir.path().join("zone");
    let error = Kms::restore(&mut &bytes[..], &target, root(2), &options).unwrap_err();
    assert!(matches!(error, Error::WrongRootKey), "{error}");
    assert!(matches!(
        Kms::inspect_backup(&mut &bytes[..], root(2)).unwrap_err(),
        Error::WrongRootKey
    ));
    assert!(!target.exists());

    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("something"), b"x").unwrap();
    let error = Kms::restore(&mut &bytes[..], &target, root(1), &options).unwrap_err();
    assert!(
        matches!(error, Error::BadRequest { field: "path", .. }),
        "{error}"
    );
    assert_eq!(
        std::fs::read_dir(&target).unwrap().count(),
        1,
        "the target is untouched"
    );

    // An empty directory is fine: the store takes its place.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    Kms::restore(&mut &bytes[..], &empty, root(1), &options).unwrap();
    assert!(Engine::detect(&empty).is_some());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        2,
        "no staging left"
    );
}

#[test]
fn versions_made_after_the_backup_are_gone_and_pending_deletions_that_passed_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(start());
    let kms = Kms::open(dir.path().join("a"), root(1), options("z", &clock)).unwrap();
    let kept = kms.create_key(&CreateKey::new("kept")).unwrap();
    let doomed = kms.create_key(&CreateKey::new("doomed")).unwrap();
    kms.schedule_key_deletion(doomed.id, Some(7), None).unwrap();
    let before = kms.encrypt(kept.id, b"v1", None).unwrap().ciphertext;
    let bytes = backup(&kms);
    kms.rotate_key(kept.id, None).unwrap();
    let after = kms.encrypt(kept.id, b"v2", None).unwrap().ciphertext;
    drop(kms);

    clock.advance(jiff::SignedDuration::from_hours(8 * 24));
    let restoring = RestoreOptions::default().clock(clock.clone());
    let report = Kms::restore(&mut &bytes[..], dir.path().join("b"), root(1), &restoring).unwrap();
    assert_eq!(report.deleted_since_backup, vec![doomed.id]);
    assert_eq!(report.backup.keys, 2);
    assert_eq!(report.origin_keys, 2);
    let kms = Kms::open(dir.path().join("b"), root(1), options("z", &clock)).unwrap();
    assert_eq!(
        kms.decrypt(kept.id, &before, None)
            .unwrap()
            .plaintext
            .as_bytes(),
        b"v1"
    );
    assert_eq!(
        kms.decrypt(kept.id, &after, None).unwrap_err().code(),
        "invalid-ciphertext"
    );
    assert_eq!(kms.get_key(kept.id).unwrap().key.material.version, 1);
}

/// Two zones on disk, ch-gva-2 and de-fra-1, joined by a [`LocalLink`].
struct Pair {
    dir: tempfile::TempDir,
    clock: ManualClock,
    link: Arc<LocalLink>,
}

impl Pair {
    fn new() -> Pair {
        Pair {
            dir: tempfile::tempdir().unwrap(),
            clock: ManualClock::new(start()),
            link: LocalLink::new(),
        }
    }

    /// Opens (or creates) the store `name` of the pair's directory for `zone`, on the link.
    fn open(&self, name: &str, zone: &str) -> Kms {
        let options = options(zone, &self.clock).link(self.link.clone());
        let kms = Kms::open(self.dir.path().join(name), root(1), options).unwrap();
        self.link.attach(&kms);
        kms
    }

    /// The two zones, with a multi-zone key of ch-gva-2 replicated to de-fra-1.
    fn replicated(&self) -> (Kms, Kms, keylife::api::CreatedKey) {
        let origin = self.open("gva", "ch-gva-2");
        let replica = self.open("fra", "de-fra-1");
        let key = origin
            .create_key(&CreateKey {
                multi_zone: true,
                ..CreateKey::new("shared")
            })
            .unwrap();
        origin.replicate_key(key.id, "de-fra-1", None).unwrap();
        origin.sync().unwrap();
        (origin, replica, key)
    }
}

#[test]
fn replicas_follow_a_restored_origin() {
    let pair = Pair::new();
    let (origin, replica, key) = pair.replicated();
    let bytes = backup(&origin);
    let at_backup = origin.get_key(key.id).unwrap().key.revision.seq;
    // After the backup: the deletion is scheduled, and the replica follows.
    origin
        .schedule_key_deletion(key.id, Some(30), None)
        .unwrap();
    origin.sync().unwrap();
    assert_eq!(
        replica.get_key(key.id).unwrap().key.status,
        keylife::api::KeyStatus::PendingDeletion
    );
    drop(origin);

    let options = RestoreOptions::default().clock(pair.clock.clone());
    let report = Kms::restore(
        &mut &bytes[..],
        pair.dir.path().join("gva2"),
        root(1),
        &options,
    )
    .unwrap();
    assert_eq!(report.replicas_owed, 1);
    let origin = pair.open("gva2", "ch-gva-2");
    let restored = origin.get_key(key.id).unwrap();
    assert_eq!(restored.key.revision.seq, at_backup + RESTORE_MARGIN);
    assert_eq!(restored.key.status, keylife::api::KeyStatus::Enabled);
    let report = origin.sync().unwrap();
    assert_eq!(
        report.delivered,
        vec![(key.id, "de-fra-1".to_owned())],
        "{report:?}"
    );
    let follower = replica.get_key(key.id).unwrap();
    assert_ne!(
        follower.key.status,
        keylife::api::KeyStatus::PendingDeletion
    );
    let status = &origin.get_key(key.id).unwrap().replicas_status;
    assert_eq!(status.len(), 1);
    assert_eq!(
        status[0].last_applied_watermark,
        at_backup + RESTORE_MARGIN,
        "{status:?}"
    );
}

/// The limit design.md names: a replica that holds versions made after the backup refuses the
/// restored origin (versions are never taken away), and the origin shows it.
#[test]
fn a_replica_ahead_in_versions_refuses_the_restored_origin_and_the_origin_shows_it() {
    let pair = Pair::new();
    let (origin, replica, key) = pair.replicated();
    let bytes = backup(&origin);
    origin.rotate_key(key.id, None).unwrap();
    origin.sync().unwrap();
    assert_eq!(replica.get_key(key.id).unwrap().key.material.version, 2);
    drop(origin);

    let options = RestoreOptions::default().clock(pair.clock.clone());
    Kms::restore(
        &mut &bytes[..],
        pair.dir.path().join("gva2"),
        root(1),
        &options,
    )
    .unwrap();
    let origin = pair.open("gva2", "ch-gva-2");
    let report = origin.sync().unwrap();
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert_eq!(report.failed[0].2.code(), "conflict", "{report:?}");
    let status = &origin.get_key(key.id).unwrap().replicas_status;
    assert!(status[0].last_failure.is_some(), "{status:?}");
    assert_eq!(replica.get_key(key.id).unwrap().key.material.version, 2);
}

/// A backup is asked of the caller's check (`backup`, on the zone) and sends its audit event.
#[test]
fn a_backup_is_asked_of_the_callers_check_and_audited() {
    use keylife::{AuditSink, Caller, Operation, Target};
    let (kms, _) = common::memory_kms();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = {
        let seen = seen.clone();
        AuditSink::new(move |event| seen.lock().unwrap().push(event.clone()))
    };
    let refused = kms
        .with_audit(sink.clone())
        .as_caller(Caller::new("ops").permit(|access| access.operation != Operation::Backup));
    let mut out = Vec::new();
    let error = refused.backup(&mut out).unwrap_err();
    assert_eq!(error.code(), "permission-denied");
    assert!(out.is_empty(), "nothing is written for a refused caller");
    let allowed =
        kms.with_audit(sink)
            .as_caller(Caller::new("ops").permit(|access| {
                access.operation == Operation::Backup && access.target == Target::Zone
            }));
    allowed.backup(&mut out).unwrap();
    let events = seen.lock().unwrap();
    let outcomes: Vec<_> = events
        .iter()
        .map(|e| (e.operation, e.outcome, e.actor.as_deref()))
        .collect();
    assert_eq!(
        outcomes,
        vec![
            (Operation::Backup, "permission-denied", Some("ops")),
            (Operation::Backup, "ok", Some("ops"))
        ]
    );
}

/// A backup stays bound to the root key it was taken under: after a rotation it restores under
/// the old key only, and the restored store can be rotated in turn.
#[test]
fn a_backup_taken_before_a_root_key_rotation_restores_under_the_old_key() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(start());
    let kms = Kms::open(dir.path().join("a"), root(1), options("z", &clock)).unwrap();
    let sealed = varied_zone(&kms);
    let bytes = backup(&kms);
    drop(kms);
    keylife::rotate_root_key(dir.path().join("a"), root(1), root(2)).unwrap();
    let restore_options = RestoreOptions::default().clock(clock.clone());
    let error = Kms::restore(
        &mut &bytes[..],
        dir.path().join("b"),
        root(2),
        &restore_options,
    )
    .unwrap_err();
    assert!(matches!(error, Error::WrongRootKey), "{error}");
    Kms::restore(
        &mut &bytes[..],
        dir.path().join("b"),
        root(1),
        &restore_options,
    )
    .unwrap();
    keylife::rotate_root_key(dir.path().join("b"), root(1), root(2)).unwrap();
    let kms = Kms::open(dir.path().join("b"), root(2), options("z", &clock)).unwrap();
    let (id, ciphertext) = &sealed[0];
    assert_eq!(
        kms.decrypt(*id, ciphertext, Some(b"ctx"))
            .unwrap()
            .plaintext
            .as_bytes(),
        b"payload"
    );
}

/// A backend whose scan of the materials table, once armed, stops until the test lets it go:
/// a backup held in the middle of copying the entries.
struct Paused {
    inner: MemoryBackend,
    armed: AtomicBool,
    entered: Mutex<std::sync::mpsc::Sender<()>>,
    release: Mutex<std::sync::mpsc::Receiver<()>>,
}

impl Backend for Paused {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.inner.get(table, key)
    }

    fn scan(
        &self,
        table: Table,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, Error> {
        if table == Table::Materials && self.armed.swap(false, Ordering::SeqCst) {
            self.entered.lock().unwrap().send(()).unwrap();
            self.release.lock().unwrap().recv().unwrap();
        }
        self.inner.scan(table, start, end, limit)
    }

    fn commit(&self, batch: &[Write]) -> Result<(), Error> {
        self.inner.commit(batch)
    }
}

/// While a backup copies the entries, reads and crypto are answered (they take no lock) and a
/// change waits: the image does not hold it, the store does once the copy is done.
#[test]
fn reads_and_crypto_go_on_while_a_backup_copies_and_a_change_waits_for_it() {
    use std::sync::mpsc::channel;
    let (entered_tx, entered) = channel();
    let (release, release_rx) = channel();
    let backend = Arc::new(Paused {
        inner: MemoryBackend::new(),
        armed: AtomicBool::new(false),
        entered: Mutex::new(entered_tx),
        release: Mutex::new(release_rx),
    });
    let clock = ManualClock::new(start());
    let kms = Arc::new(Kms::with_backend(backend.clone(), root(1), options("z", &clock)).unwrap());
    let key = kms.create_key(&CreateKey::new("k")).unwrap();
    let sealed = kms.encrypt(key.id, b"x", None).unwrap().ciphertext;

    backend.armed.store(true, Ordering::SeqCst);
    let backing_up = {
        let kms = kms.clone();
        std::thread::spawn(move || backup(&kms))
    };
    entered.recv_timeout(Duration::from_secs(30)).unwrap();
    // The backup is inside its copy. Reads and crypto run on another thread, so that a lock
    // they should not take fails the test instead of hanging it.
    let (done_tx, done) = channel();
    {
        let kms = kms.clone();
        let sealed = sealed.clone();
        std::thread::spawn(move || {
            kms.get_key(key.id).unwrap();
            kms.list_key_rotations(key.id).unwrap();
            let again = kms.encrypt(key.id, b"y", None).unwrap().ciphertext;
            assert_eq!(
                kms.decrypt(key.id, &sealed, None)
                    .unwrap()
                    .plaintext
                    .as_bytes(),
                b"x"
            );
            assert_eq!(
                kms.decrypt(key.id, &again, None)
                    .unwrap()
                    .plaintext
                    .as_bytes(),
                b"y"
            );
            done_tx.send(()).unwrap();
        });
    }
    done.recv_timeout(Duration::from_secs(30))
        .expect("reads and crypto are answered while the backup copies");
    let rotating = {
        let kms = kms.clone();
        std::thread::spawn(move || kms.rotate_key(key.id, None).unwrap())
    };
    // Time for the rotation to reach its commit (were it not held, it would commit now and its
    // material would be in the copy, which reads the materials table after this).
    std::thread::sleep(Duration::from_millis(300));
    assert!(!rotating.is_finished(), "the rotation waits for the copy");
    release.send(()).unwrap();
    let bytes = backing_up.join().unwrap();
    rotating.join().unwrap();

    let (_, image) = entries(&bytes, root(1));
    let versions = image
        .iter()
        .filter(|(table, _, _)| *table == Table::Materials)
        .count();
    assert_eq!(
        versions, 1,
        "the rotation waited for the copy: it is not in the image"
    );
    assert_eq!(kms.get_key(key.id).unwrap().key.material.version, 2);
}
