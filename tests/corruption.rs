//! Stored bytes changed behind keylife's back: damaged, rolled back, removed, added, or lost
//! with a tail of commits. Every stored value carries a MAC under a key derived from the root
//! key, and the store's state as a whole is authenticated (a digest of every entry, with the
//! commit sequence) and witnessed (a file synced after each commit group): see
//! docs/design.md, "The authenticated store".
//!
//! - At open, on each engine (memory, sled, redb): every byte of every stored value and entry
//!   key, damaged one at a time, and every entry removed, duplicated or put back to an older
//!   value, makes the open fail with `corrupt-record`.
//! - While a `Kms` serves (memory): damage answers `corrupt-record` for the key it belongs to,
//!   or changes nothing a call shows (the entry is not read, or was read before); the
//!   neighbouring key never notices; the next open refuses the store.
//! - Bytes of the engines' own files damaged: the store is refused, or opens with everything
//!   acknowledged intact; never with something lost.

mod common;

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use keylife::store::{
    Backend, Entries, MemoryBackend, RedbBackend, SledBackend, Table, WITNESS_FILE, Write,
};
use keylife::{Clock as _, CreateKey, Error, KeyId, Kms, KmsOptions, LocalLink, ManualClock};

use common::start;

const ZONE: &str = "ch-gva-2";
const REPLICA_ZONE: &str = "de-fra-1";

/// The engines a store can live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    Memory,
    Sled,
    Redb,
}

impl Engine {
    /// A raw engine (no authentication): at `dir`, or in memory.
    fn open(self, dir: &Path) -> Arc<dyn Backend> {
        match self {
            Engine::Memory => Arc::new(MemoryBackend::new()),
            Engine::Sled => Arc::new(SledBackend::open(dir).unwrap()),
            Engine::Redb => Arc::new(RedbBackend::open(dir).unwrap()),
        }
    }
}

fn options(clock: &ManualClock) -> KmsOptions {
    KmsOptions::new(ZONE).clock(clock.clone())
}

fn open_kms(backend: &Arc<dyn Backend>, clock: &ManualClock) -> Result<Kms, Error> {
    Kms::with_backend(backend.clone(), common::root(1), options(clock))
}

fn material_key(id: KeyId, version: u32) -> Vec<u8> {
    let mut key = id.as_bytes().to_vec();
    key.extend_from_slice(&version.to_be_bytes());
    key
}

/// Every table's raw entries (tags included), in `Table::ALL` order.
type Dump = Vec<Entries>;

fn dump(backend: &dyn Backend) -> Dump {
    Table::ALL
        .iter()
        .map(|table| backend.scan(*table, &[], None, usize::MAX).unwrap())
        .collect()
}

fn put(table: Table, key: &[u8], value: &[u8]) -> Write {
    Write::Put {
        table,
        key: key.to_vec(),
        value: value.to_vec(),
    }
}

fn del(table: Table, key: &[u8]) -> Write {
    Write::Delete {
        table,
        key: key.to_vec(),
    }
}

/// A store with key `victim` (multi-zone, two material versions, replicated to a second zone
/// whose last delivery failed: a delivery state and an outbox entry), key `other` (its
/// neighbour) and key `dead` (replicated, then destroyed: a tombstone), written by a `Kms`
/// that is closed again.
struct Fixture {
    /// The raw engine, kept open; every `Kms` of the test is opened over it.
    backend: Arc<dyn Backend>,
    _dir: tempfile::TempDir,
    clock: ManualClock,
    victim: KeyId,
    other: KeyId,
    dead: KeyId,
    /// Ciphertexts of the victim under versions 1 and 2, with their plaintexts.
    victim_sealed: Vec<(Vec<u8>, &'static [u8])>,
    other_sealed: Vec<u8>,
}

fn fixture(engine: Engine) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let backend = engine.open(&dir.path().join("store"));
    let clock = ManualClock::new(start());
    let link = LocalLink::new();
    let replica = Arc::new(
        Kms::open_in_memory(
            common::root(2),
            KmsOptions::new(REPLICA_ZONE)
                .clock(clock.clone())
                .link(link.clone()),
        )
        .unwrap(),
    );
    link.attach(&replica);
    let kms = Kms::with_backend(
        backend.clone(),
        common::root(1),
        options(&clock).link(link.clone()),
    )
    .unwrap();
    let victim = kms
        .create_key(
            &CreateKey::new("victim")
                .description("damaged")
                .multi_zone(true),
        )
        .unwrap()
        .id;
    let v1 = kms.encrypt(victim, b"v1", Some(b"c")).unwrap().ciphertext;
    kms.rotate_key(victim, None).unwrap();
    let v2 = kms.encrypt(victim, b"v2", Some(b"c")).unwrap().ciphertext;
    kms.replicate_key(victim, REPLICA_ZONE, None).unwrap();
    let other = kms.create_key(&CreateKey::new("other")).unwrap().id;
    let other_sealed = kms.encrypt(other, b"o", None).unwrap().ciphertext;
    let dead = kms
        .create_key(&CreateKey::new("dead").multi_zone(true))
        .unwrap()
        .id;
    kms.replicate_key(dead, REPLICA_ZONE, None).unwrap();
    kms.schedule_key_deletion(dead, Some(7), None).unwrap();
    clock.advance_days(7);
    assert_eq!(kms.run_due().unwrap().deleted, vec![dead]);
    kms.wait_for_deliveries();
    // The replica zone goes away: the next change of the victim waits in the outbox, with
    // the failure in its delivery state.
    drop(replica);
    kms.disable_key_rotation(victim, None).unwrap();
    kms.enable_key_rotation(victim, Some(90), None).unwrap();
    kms.wait_for_deliveries();
    drop(kms);
    let fixture = Fixture {
        backend,
        _dir: dir,
        clock,
        victim,
        other,
        dead,
        victim_sealed: vec![(v1, b"v1"), (v2, b"v2")],
        other_sealed,
    };
    let store = common::view(&fixture.backend);
    assert!(store.gone(dead).unwrap().is_some());
    assert_eq!(store.outbox(10).unwrap().entries.len(), 1);
    assert!(store.delivery(victim, REPLICA_ZONE).unwrap().is_some());
    fixture
}

/// One way to change the stored bytes of an entry behind keylife's back.
#[derive(Debug, Clone, Copy)]
enum Damage {
    /// XOR the stored value's byte `at` with `mask`.
    Flip { at: usize, mask: u8 },
    /// Cut the stored value to `len` bytes.
    Truncate { len: usize },
    /// Add a byte to the stored value.
    Append,
    /// Move the entry under its key with byte `at` XORed with `mask`.
    MoveKey { at: usize, mask: u8 },
    /// Copy the entry under its key with byte `at` XORed with `mask` (an entry added).
    CopyKey { at: usize, mask: u8 },
    /// Remove the entry.
    Remove,
}

/// Damages of an entry whose stored value (tag included) has `len` bytes and whose key
/// `key_len`: every byte of both, with each of `masks`.
fn damages(len: usize, key_len: usize, masks: &[u8]) -> Vec<Damage> {
    let mut all = Vec::new();
    for at in 0..len {
        all.extend(masks.iter().map(|&mask| Damage::Flip { at, mask }));
    }
    let mut cuts = vec![0, 1, len / 2, len.saturating_sub(1)];
    cuts.retain(|&cut| cut < len);
    cuts.dedup();
    all.extend(cuts.into_iter().map(|len| Damage::Truncate { len }));
    all.push(Damage::Append);
    for at in 0..key_len {
        all.extend(masks.iter().map(|&mask| Damage::MoveKey { at, mask }));
    }
    all.push(Damage::CopyKey { at: 0, mask: 1 });
    all.push(Damage::Remove);
    all
}

/// The raw writes that apply `damage` to entry (`table`, `key`) holding `value`, and those
/// that undo it.
fn damage_writes(
    table: Table,
    key: &[u8],
    value: &[u8],
    damage: Damage,
) -> (Vec<Write>, Vec<Write>) {
    let restore = vec![put(table, key, value)];
    let other_key = |at: usize, mask: u8| {
        let mut moved = key.to_vec();
        moved[at] ^= mask;
        moved
    };
    match damage {
        Damage::Flip { at, mask } => {
            let mut bytes = value.to_vec();
            bytes[at] ^= mask;
            (vec![put(table, key, &bytes)], restore)
        }
        Damage::Truncate { len } => (vec![put(table, key, &value[..len])], restore),
        Damage::Append => {
            let mut bytes = value.to_vec();
            bytes.push(0);
            (vec![put(table, key, &bytes)], restore)
        }
        Damage::MoveKey { at, mask } => {
            let moved = other_key(at, mask);
            (
                vec![del(table, key), put(table, &moved, value)],
                vec![del(table, &moved), put(table, key, value)],
            )
        }
        Damage::CopyKey { at, mask } => {
            let copy = other_key(at, mask);
            (vec![put(table, &copy, value)], vec![del(table, &copy)])
        }
        Damage::Remove => (vec![del(table, key)], restore),
    }
}

/// Per table: damages refused at open, and those that opened (each a failure).
#[derive(Default)]
struct OpenTally {
    refused: usize,
    opened: Vec<String>,
}

/// Every damage of every stored entry, applied to the closed store one at a time: the next
/// open must refuse the store with `corrupt-record`. Prints the count per table.
fn every_damage_is_refused_at_open(engine: Engine, masks: &[u8]) {
    let fx = fixture(engine);
    let clean = dump(&*fx.backend);
    let mut tallies: BTreeMap<&'static str, OpenTally> = BTreeMap::new();
    let mut entries = 0;
    for (table, rows) in Table::ALL.iter().zip(&clean) {
        for (key, value) in rows {
            entries += 1;
            for damage in damages(value.len(), key.len(), masks) {
                let (apply, undo) = damage_writes(*table, key, value, damage);
                fx.backend.commit(&apply).unwrap();
                let tally = tallies.entry(table.name()).or_default();
                match open_kms(&fx.backend, &fx.clock) {
                    Err(error) if error.code() == "corrupt-record" => tally.refused += 1,
                    other => tally.opened.push(format!(
                        "{} {:?} {damage:?}: {:?}",
                        table.name(),
                        String::from_utf8_lossy(key),
                        other.map(drop)
                    )),
                }
                fx.backend.commit(&undo).unwrap();
            }
        }
    }
    assert_eq!(dump(&*fx.backend), clean, "every damage was undone");
    open_kms(&fx.backend, &fx.clock).expect("the undamaged store opens");
    eprintln!("{engine:?}: {entries} entries; damages refused at open / opened, by table");
    let mut opened = Vec::new();
    for (table, tally) in &tallies {
        eprintln!("  {table:9} {:5} / {}", tally.refused, tally.opened.len());
        opened.extend(tally.opened.iter().cloned());
    }
    assert!(
        opened.is_empty(),
        "{} damaged stores opened:\n{}",
        opened.len(),
        opened.join("\n")
    );
}

#[test]
fn every_damaged_byte_of_a_memory_store_is_refused_at_open() {
    every_damage_is_refused_at_open(Engine::Memory, &[0x01, 0x80, 0xff]);
}

#[test]
fn every_damaged_byte_of_a_sled_store_is_refused_at_open() {
    every_damage_is_refused_at_open(Engine::Sled, &[0x01]);
}

#[test]
fn every_damaged_byte_of_a_redb_store_is_refused_at_open() {
    every_damage_is_refused_at_open(Engine::Redb, &[0x01]);
}

/// Older authentic values put back, entries removed, and a lost tail of commits: refused at
/// open, with a message that says which.
fn rollback_is_refused(engine: Engine) {
    let fx = fixture(engine);
    let before = dump(&*fx.backend);
    let kms = open_kms(&fx.backend, &fx.clock).unwrap();
    kms.disable_key(fx.victim, None).unwrap();
    for _ in 0..3 {
        kms.encrypt(fx.other, b"x", None).unwrap();
    }
    kms.rotate_key(fx.other, None).unwrap();
    drop(kms);
    let after = dump(&*fx.backend);
    let old = |table: Table, key: &[u8]| {
        before[table.index()]
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{table:?} {key:?} before"))
    };
    let rolled_back = "rolled back to an older value, removed or added";
    let cases: Vec<(&str, Vec<Write>)> = vec![
        (
            "the disabled victim's record put back to when it was enabled",
            vec![put(
                Table::Keys,
                fx.victim.as_bytes(),
                &old(Table::Keys, fx.victim.as_bytes()),
            )],
        ),
        (
            "other's record put back to before its rotation, its version 2 removed",
            vec![
                put(
                    Table::Keys,
                    fx.other.as_bytes(),
                    &old(Table::Keys, fx.other.as_bytes()),
                ),
                del(Table::Materials, &material_key(fx.other, 2)),
                del(Table::Usage, &material_key(fx.other, 2)),
            ],
        ),
        ("other's name removed", vec![del(Table::Names, b"other")]),
    ];
    for (what, writes) in cases {
        fx.backend.commit(&writes).unwrap();
        let error = open_kms(&fx.backend, &fx.clock).map(drop).unwrap_err();
        assert_eq!(
            error.code(),
            "corrupt-record",
            "{engine:?}: {what}: {error}"
        );
        assert!(
            error.to_string().contains(rolled_back),
            "{engine:?}: {what}: {error}"
        );
        restore(&*fx.backend, &after);
        open_kms(&fx.backend, &fx.clock).expect("restored");
    }
    // The whole store put back, its state record included: for an engine with files, the
    // witness saw the later commits.
    restore(&*fx.backend, &before);
    match (engine, open_kms(&fx.backend, &fx.clock)) {
        (Engine::Memory, Ok(kms)) => {
            // No witness in memory: a whole store put back is an older store (documented).
            assert_eq!(
                kms.get_key(fx.victim).unwrap().key.status,
                keylife::KeyStatus::Enabled
            );
        }
        (Engine::Memory, Err(error)) => panic!("memory: {error}"),
        (_, Ok(_)) => panic!("{engine:?}: a store rolled back as a whole opened"),
        (_, Err(error)) => {
            assert_eq!(error.code(), "corrupt-record", "{error}");
            let message = error.to_string();
            assert!(
                message.contains("witness saw commit") && message.contains("were lost"),
                "{message}"
            );
        }
    }
}

/// Makes the engine hold exactly `dump`.
fn restore(backend: &dyn Backend, dump: &Dump) {
    let mut writes = Vec::new();
    for (table, rows) in Table::ALL.iter().zip(self::dump(backend)) {
        writes.extend(rows.into_iter().map(|(key, _)| del(*table, &key)));
    }
    for (table, rows) in Table::ALL.iter().zip(dump) {
        writes.extend(rows.iter().map(|(key, value)| put(*table, key, value)));
    }
    backend.commit(&writes).unwrap();
}

#[test]
fn rolled_back_or_removed_entries_are_refused_at_open_memory() {
    rollback_is_refused(Engine::Memory);
}

#[test]
fn rolled_back_or_removed_entries_are_refused_at_open_sled() {
    rollback_is_refused(Engine::Sled);
}

#[test]
fn rolled_back_or_removed_entries_are_refused_at_open_redb() {
    rollback_is_refused(Engine::Redb);
}

// ----- damage while a Kms serves --------------------------------------------------------

/// What a call answered, comparable across stores: the error code, or the value.
fn outcome<T: std::fmt::Debug>(result: Result<T, Error>) -> String {
    match result {
        Ok(value) => format!("{value:?}"),
        Err(error) => format!("error {}", error.code()),
    }
}

/// The victim probed through every kind of call by `kms`, in order (reads, then changes,
/// then the due run a year later); `other` checked on the way (a panic if it is affected).
fn probe(
    kms: &Kms,
    fx: &Fixture,
    other_before: &keylife::KeyDetails,
) -> Vec<(&'static str, String)> {
    let names = |id: KeyId| {
        if id == fx.victim {
            "victim".to_owned()
        } else if id == fx.other {
            "other".to_owned()
        } else if id == fx.dead {
            "dead".to_owned()
        } else {
            format!("unknown {id}")
        }
    };
    let check_other = |when: &str| {
        assert_eq!(
            &kms.get_key(fx.other).expect("other: get_key"),
            other_before,
            "other: get_key {when}"
        );
        let opened = kms
            .decrypt(fx.other, &fx.other_sealed, None)
            .expect("other: decrypt");
        assert_eq!(opened.plaintext.as_bytes(), b"o", "other: decrypt {when}");
        let sealed = kms.encrypt(fx.other, b"o2", None).expect("other: encrypt");
        kms.decrypt(fx.other, &sealed.ciphertext, None)
            .expect("other: decrypt a new ciphertext");
    };
    let v = fx.victim;
    let mut out = Vec::new();
    out.push(("get_key", outcome(kms.get_key(v))));
    out.push(("list_key_rotations", outcome(kms.list_key_rotations(v))));
    for (i, (sealed, plaintext)) in fx.victim_sealed.iter().enumerate() {
        let opened = kms
            .decrypt(v, sealed, Some(b"c"))
            .map(|p| p.plaintext.as_bytes() == *plaintext);
        out.push((["decrypt v1", "decrypt v2"][i], outcome(opened)));
    }
    let round_trip = kms.encrypt(v, b"new", None).and_then(|sealed| {
        let opened = kms.decrypt(v, &sealed.ciphertext, None)?;
        Ok((
            u32::from_be_bytes(sealed.ciphertext[17..21].try_into().unwrap()),
            opened.plaintext.as_bytes() == b"new",
        ))
    });
    out.push(("encrypt", outcome(round_trip)));
    out.push(("list_keys", outcome(kms.list_keys())));
    out.push((
        "create_key with its name",
        outcome(kms.create_key(&CreateKey::new("victim")).map(|_| ())),
    ));
    check_other("after the victim's reads");
    // A year later: the automatic rotations are due (other's too, so `other` is compared no
    // more, only used).
    fx.clock.advance_days(400);
    let report = kms.run_due().expect("run_due reads the index");
    assert!(
        report.rotated.contains(&fx.other),
        "other: rotated when due"
    );
    let ids = |ids: &[KeyId]| ids.iter().map(|id| names(*id)).collect::<Vec<_>>();
    let codes = |errors: &[Error]| errors.iter().map(Error::code).collect::<Vec<_>>();
    out.push((
        "run_due",
        format!(
            "rotated {:?} deleted {:?} failed {:?} unreadable {:?} delivery failed {:?} \
             unreadable outbox {:?}",
            ids(&report.rotated),
            ids(&report.deleted),
            report
                .failed
                .iter()
                .map(|(id, e)| format!("{} {}", names(*id), e.code()))
                .collect::<Vec<_>>(),
            codes(&report.unreadable),
            report
                .replication
                .failed
                .iter()
                .map(|(id, zone, e)| format!("{} {zone} {}", names(*id), e.code()))
                .collect::<Vec<_>>(),
            codes(&report.replication.unreadable),
        ),
    ));
    out.push(("rotate_key", outcome(kms.rotate_key(v, None))));
    out.push(("disable_key", outcome(kms.disable_key(v, None))));
    out.push(("enable_key", outcome(kms.enable_key(v, None))));
    kms.rotate_key(fx.other, None).expect("other: rotate");
    out.push(("get_key after", outcome(kms.get_key(v))));
    out
}

#[derive(Default)]
struct ServeTally {
    detected: usize,
    unchanged: usize,
    /// Removed, moved or added entries whose absence (or presence) showed in an answer.
    structural: usize,
    /// In-place damage that changed an answer without `corrupt-record`: each a failure.
    changed: Vec<String>,
}

#[test]
fn damage_while_serving_fails_only_its_key_and_the_next_open() {
    // Each damage is applied to the fixture's store right after a `Kms` opened it (the open
    // checks the whole store; nothing of the victim is cached yet), then the victim is
    // probed. For damage in place, a call answers `corrupt-record` (detected), or the same as
    // with the undamaged store (the damaged entry was not read, or was read before the
    // damage): no third outcome. An entry removed, moved or added reads as absent (or as
    // another entry) until the next open. Whatever the damage, `other` works throughout and
    // the next open refuses the store.
    let fx = fixture(Engine::Memory);
    let clean = dump(&*fx.backend);
    let start_time = fx.clock.now();
    let other_before = open_kms(&fx.backend, &fx.clock)
        .unwrap()
        .get_key(fx.other)
        .unwrap();
    let baseline = {
        let kms = open_kms(&fx.backend, &fx.clock).unwrap();
        let answers = probe(&kms, &fx, &other_before);
        drop(kms);
        restore(&*fx.backend, &clean);
        fx.clock.set(start_time);
        answers
    };
    assert!(
        baseline.iter().all(|(_, o)| !o.contains("corrupt-record")),
        "{baseline:#?}"
    );
    let victim_entries: Vec<(Table, Vec<u8>, Vec<u8>)> = Table::ALL
        .iter()
        .zip(&clean)
        .flat_map(|(table, rows)| {
            rows.iter()
                .map(move |(k, v)| (*table, k.clone(), v.clone()))
        })
        .filter(|(table, key, _)| {
            let id = fx.victim.as_bytes();
            *table != Table::Meta
                && (key.windows(16).any(|w| w == id)
                    || key == b"victim"
                    || key.windows(16).any(|w| w == fx.dead.as_bytes()))
        })
        .collect();
    assert_eq!(victim_entries.len(), 10, "{victim_entries:?}");

    let mut tallies: BTreeMap<&'static str, ServeTally> = BTreeMap::new();
    let mut failures = Vec::new();
    for (table, key, value) in &victim_entries {
        for damage in damages(value.len(), key.len(), &[0x01]) {
            let what = format!("{} {damage:?}", table.name());
            let kms = open_kms(&fx.backend, &fx.clock).unwrap();
            let (apply, _) = damage_writes(*table, key, value, damage);
            fx.backend.commit(&apply).unwrap();
            let result = catch_unwind(AssertUnwindSafe(|| probe(&kms, &fx, &other_before)));
            drop(kms);
            let reopened = open_kms(&fx.backend, &fx.clock).map(drop);
            restore(&*fx.backend, &clean);
            fx.clock.set(start_time);
            let answers = match result {
                Ok(answers) => answers,
                Err(panic) => {
                    let message = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_default();
                    failures.push(format!("{what}: {message}"));
                    continue;
                }
            };
            match reopened {
                Err(e) if e.code() == "corrupt-record" => {}
                other => failures.push(format!("{what}: the next open: {other:?}")),
            }
            let tally = tallies.entry(table.name()).or_default();
            let differs = answers
                .iter()
                .zip(&baseline)
                .find(|((_, a), (_, b))| a != b);
            let in_place = matches!(
                damage,
                Damage::Flip { .. } | Damage::Truncate { .. } | Damage::Append
            );
            match differs {
                None => tally.unchanged += 1,
                Some(((_, answer), _)) if answer.contains("corrupt-record") => {
                    tally.detected += 1;
                }
                // An entry removed, moved or added while the Kms serves reads as absent or
                // as another entry until the next open, which refuses the store (checked
                // above). Counted apart.
                Some(_) if !in_place => tally.structural += 1,
                Some(((call, answer), (_, want))) => tally
                    .changed
                    .push(format!("{what}: {call}: {answer}, undamaged: {want}")),
            }
        }
    }
    eprintln!(
        "damage while serving, by table: detected / unchanged / changed (in place) / \
         removed, moved or added and seen (each refused at the next open)"
    );
    for (table, tally) in &tallies {
        eprintln!(
            "  {table:9} {:4} / {:4} / {} / {}",
            tally.detected,
            tally.unchanged,
            tally.changed.len(),
            tally.structural
        );
        failures.extend(tally.changed.iter().cloned());
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn a_material_blob_moved_to_another_key_does_not_open() {
    let fx = fixture(Engine::Memory);
    let kms = open_kms(&fx.backend, &fx.clock).unwrap();
    // other's version 1 (value and tag) put in the victim's place while the Kms serves.
    let blob = fx
        .backend
        .get(Table::Materials, &material_key(fx.other, 1))
        .unwrap()
        .unwrap();
    fx.backend
        .commit(&[put(Table::Materials, &material_key(fx.victim, 1), &blob)])
        .unwrap();
    let error = kms
        .decrypt(fx.victim, &fx.victim_sealed[0].0, Some(b"c"))
        .unwrap_err();
    assert_eq!(error.code(), "corrupt-record");
    assert!(
        error
            .to_string()
            .contains(&format!("material {}/v1", fx.victim)),
        "{error}"
    );
    assert_eq!(
        kms.decrypt(fx.other, &fx.other_sealed, None)
            .unwrap()
            .plaintext
            .as_bytes(),
        b"o"
    );
}

// ----- damaged engine files ---------------------------------------------------------------

/// A closed store on disk with keys `victim` (two versions) and `other`, and their
/// ciphertexts.
struct DiskFixture {
    dir: tempfile::TempDir,
    pristine: PathBuf,
    victim_sealed: Vec<u8>,
    victim: KeyId,
    other: KeyId,
    other_sealed: Vec<u8>,
}

/// `reopened`: closed and opened again after the victim was made (sled then writes a
/// snapshot of its page table; `other` is made after it). Otherwise written by one `Kms`.
fn disk_fixture(engine: Engine, reopened: bool) -> DiskFixture {
    let dir = tempfile::tempdir().unwrap();
    let pristine = dir.path().join("pristine");
    let mut kms = open_disk(engine, &pristine, 1).unwrap();
    let victim = kms
        .create_key(&CreateKey::new("victim").description("damaged"))
        .unwrap()
        .id;
    kms.rotate_key(victim, None).unwrap();
    let victim_sealed = kms.encrypt(victim, b"v", None).unwrap().ciphertext;
    if reopened {
        drop(kms);
        kms = open_disk(engine, &pristine, 1).unwrap();
    }
    let other = kms.create_key(&CreateKey::new("other")).unwrap().id;
    let other_sealed = kms.encrypt(other, b"o", None).unwrap().ciphertext;
    drop(kms);
    DiskFixture {
        dir,
        pristine,
        victim,
        other,
        victim_sealed,
        other_sealed,
    }
}

fn open_disk(engine: Engine, path: &Path, root_byte: u8) -> Result<Kms, Error> {
    let backend: Arc<dyn Backend> = match engine {
        Engine::Sled => Arc::new(SledBackend::open(path)?),
        Engine::Redb => Arc::new(RedbBackend::open(path)?),
        Engine::Memory => unreachable!("on disk"),
    };
    Kms::with_backend(
        backend,
        common::root(root_byte),
        KmsOptions::new(ZONE).clock(ManualClock::new(start())),
    )
}

/// What opening a store whose files were damaged led to: refused (the code), or opened
/// with everything there ("intact"), or a description of what is missing.
fn open_damaged(engine: Engine, path: &Path, fx: &DiskFixture) -> String {
    let kms = match open_disk(engine, path, 1) {
        Err(error) => return format!("refused: {}", error.code()),
        Ok(kms) => kms,
    };
    let mut found = Vec::new();
    for (id, sealed, plaintext) in [
        (fx.victim, &fx.victim_sealed, b"v"),
        (fx.other, &fx.other_sealed, b"o"),
    ] {
        found.push(match kms.decrypt(id, sealed, None) {
            Ok(opened) if opened.plaintext.as_bytes() == plaintext => "ok".to_owned(),
            Ok(_) => "WRONG PLAINTEXT".to_owned(),
            Err(e) => e.code().to_owned(),
        });
    }
    let listed = match kms.list_keys() {
        Ok(list) => list.kms_keys.len().to_string(),
        Err(e) => e.code().to_owned(),
    };
    let described = format!("{listed} keys listed, decrypt: {}", found.join(" "));
    if described == "2 keys listed, decrypt: ok ok" {
        "opens intact".to_owned()
    } else {
        format!("OPENS WITH LOSS: {described}")
    }
}

/// Byte positions of a file of `len` bytes to damage: the first 8 KiB densely, the rest
/// sparsely (sled preallocates its segments; redb its regions).
fn positions(len: usize) -> Vec<usize> {
    let dense = len.min(8192);
    let mut all: Vec<usize> = (0..dense).step_by((dense / 96).max(1)).collect();
    all.extend((dense..len).step_by(len.div_ceil(48).max(1)));
    all
}

/// Bytes of the engine's own files flipped: the store is refused (`corrupt-record`, or
/// `storage` when the engine itself cannot read its files) or opens with everything; never
/// with something acknowledged missing, never a panic.
fn damaged_files_never_lose_silently(engine: Engine) {
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut losses = Vec::new();
    for reopened in [false, true] {
        let fx = disk_fixture(engine, reopened);
        let layout = if reopened { "reopened" } else { "one run" };
        let mut files: Vec<String> = std::fs::read_dir(&fx.pristine)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| {
                ["conf", "db", "keylife.redb", WITNESS_FILE].contains(&name.as_str())
                    || name.starts_with("snap.")
            })
            .collect();
        files.sort();
        assert!(!files.is_empty());
        for file in &files {
            let len = std::fs::metadata(fx.pristine.join(file)).unwrap().len();
            for at in positions(usize::try_from(len).unwrap()) {
                let copy = fx.dir.path().join(format!("{file}-{at}"));
                common::copy_dir(&fx.pristine, &copy);
                let mut bytes = std::fs::read(copy.join(file)).unwrap();
                bytes[at] ^= 0x55;
                std::fs::write(copy.join(file), &bytes).unwrap();
                let outcome = catch_unwind(AssertUnwindSafe(|| open_damaged(engine, &copy, &fx)))
                    .unwrap_or_else(|_| panic!("{layout}: {file} byte {at} damaged: a panic"));
                let file = if file.starts_with("snap.") {
                    "snap"
                } else {
                    file
                };
                if outcome.contains("LOSS") || outcome.contains("WRONG") {
                    losses.push(format!("{layout}, {file} byte {at}: {outcome}"));
                }
                *outcomes
                    .entry(format!("{layout}, {file}: {outcome}"))
                    .or_default() += 1;
                std::fs::remove_dir_all(&copy).unwrap();
            }
        }
    }
    eprintln!("{engine:?}: damaged files, by outcome:");
    for (outcome, count) in &outcomes {
        eprintln!("  {count:4}  {outcome}");
    }
    assert!(losses.is_empty(), "{}", losses.join("\n"));
}

#[test]
fn damaged_sled_files_are_refused_or_change_nothing() {
    damaged_files_never_lose_silently(Engine::Sled);
}

#[test]
fn damaged_redb_files_are_refused_or_change_nothing() {
    damaged_files_never_lose_silently(Engine::Redb);
}

#[test]
fn a_damaged_sled_log_is_not_taken_for_a_new_store() {
    // sled's recovery drops the whole log after a damaged first message, the store header
    // included: the witness (which saw commits) makes the open fail, under any root key.
    let fx = disk_fixture(Engine::Sled, false);
    let copy = fx.dir.path().join("damaged-start");
    common::copy_dir(&fx.pristine, &copy);
    let mut bytes = std::fs::read(copy.join("db")).unwrap();
    bytes[0] ^= 0x55;
    std::fs::write(copy.join("db"), &bytes).unwrap();
    for root in [1, 9] {
        match open_disk(Engine::Sled, &copy, root) {
            Err(error) => assert_eq!(error.code(), "corrupt-record", "{error}"),
            Ok(kms) => panic!(
                "a damaged store opened as a new store with {} keys",
                kms.list_keys().unwrap().kms_keys.len()
            ),
        }
    }
}

#[test]
fn engine_files_of_an_older_commit_are_refused() {
    // The engine's files copied back from an earlier moment, the witness left as it is: the
    // commits made since are lost, and the open says so. The whole directory copied back
    // (witness included) cannot be told from an older store: documented in design.md.
    for engine in [Engine::Sled, Engine::Redb] {
        let fx = disk_fixture(engine, false);
        let old = fx.dir.path().join("old");
        common::copy_dir(&fx.pristine, &old);
        let kms = open_disk(engine, &fx.pristine, 1).unwrap();
        kms.disable_key(fx.victim, None).unwrap();
        drop(kms);
        let witness = std::fs::read(fx.pristine.join(WITNESS_FILE)).unwrap();
        std::fs::remove_dir_all(&fx.pristine).unwrap();
        common::copy_dir(&old, &fx.pristine);
        let whole = open_disk(engine, &fx.pristine, 1).unwrap();
        assert_eq!(
            whole.get_key(fx.victim).unwrap().key.status,
            keylife::KeyStatus::Enabled,
            "{engine:?}: the whole directory rolled back opens as the older store"
        );
        drop(whole);
        std::fs::write(fx.pristine.join(WITNESS_FILE), witness).unwrap();
        let error = open_disk(engine, &fx.pristine, 1).map(drop).unwrap_err();
        assert_eq!(error.code(), "corrupt-record", "{engine:?}: {error}");
        assert!(
            error.to_string().contains("were lost"),
            "{engine:?}: {error}"
        );
    }
}
