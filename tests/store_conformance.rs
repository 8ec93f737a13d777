//! One conformance suite for the storage layer, run identically on every backend.
//!
//! Every `check_*` function takes `open`, which returns a backend over the same storage each
//! time it is called (for sled and redb: the same directory, so the previous handle must be
//! dropped first; for memory: a fresh, empty backend). The `conformance!` macro at the end
//! instantiates every check for `SledBackend` and `RedbBackend` (each in a temporary
//! directory) and for `MemoryBackend`. Durability across a reopen is checked for the engines
//! on disk only.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use keylife::core::{
    Command, CreateContext, CreateKey, DeletionDelay, KeyId, KeyRecord, Status, Transition,
    add_days, apply, create_key, next_due,
};
use keylife::store::{
    Backend, MemoryBackend, NewMaterial, RedbBackend, STORE_FORMAT_V2, SledBackend, Store,
    StoreHeader, Table, Write,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

type Open<'a> = &'a dyn Fn() -> Arc<dyn Backend>;

/// `(start, end, limit)` of a scan.
type ScanCase<'a> = (&'a [u8], Option<&'a [u8]>, usize);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

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

fn add(table: Table, key: &[u8], delta: i64) -> Write {
    Write::AddCounter {
        table,
        key: key.to_vec(),
        delta,
    }
}

fn counter(backend: &dyn Backend, table: Table, key: &[u8]) -> Option<i64> {
    backend.get(table, key).unwrap().map(|bytes| {
        let array: [u8; 8] = bytes
            .as_slice()
            .try_into()
            .unwrap_or_else(|_| panic!("counter of {} bytes: {bytes:?}", bytes.len()));
        i64::from_be_bytes(array)
    })
}

fn all(backend: &dyn Backend, table: Table) -> Vec<(Vec<u8>, Vec<u8>)> {
    backend.scan(table, &[], None, usize::MAX).unwrap()
}

fn t0() -> Timestamp {
    Timestamp::new(1_700_000_000, 0).unwrap()
}

fn nanos(n: i64) -> SignedDuration {
    SignedDuration::from_nanos(n)
}

fn id(byte: u8) -> KeyId {
    KeyId::from_bytes([byte; 16])
}

fn new_key(id: KeyId, name: &str, now: Timestamp) -> KeyRecord {
    create_key(
        &CreateKey::new(name).description(format!("the key {name}")),
        &CreateContext {
            id,
            zone: "ch-gva-2",
            now,
            origin_keys: 0,
            quota: 1000,
            name_taken: false,
        },
    )
    .unwrap()
}

fn changed(record: &KeyRecord, command: Command, now: Timestamp) -> KeyRecord {
    match apply(record, &command, now, Some(record.revision().seq)).unwrap() {
        Transition::Changed { record, .. } => *record,
        other => panic!("{command:?} did not change the key: {other:?}"),
    }
}

fn material(version: u32, seed: u8, reserved: u64) -> NewMaterial {
    // A seal id no key id of these tests contains.
    let mut seal_id = [0xee; 16];
    seal_id[0] = seed;
    seal_id[12..].copy_from_slice(&version.to_be_bytes());
    NewMaterial {
        version,
        sealed: (0..48u8).map(|i| i.wrapping_mul(7) ^ seed).collect(),
        reserved,
        seal_id,
    }
}

/// Creates a key and writes it with material version 1, as the shell does.
fn create_stored(store: &Store, id: KeyId, name: &str, now: Timestamp) -> (KeyRecord, NewMaterial) {
    let record = new_key(id, name, now);
    let material = material(1, id.as_bytes()[0], 4096);
    store
        .put(None, &record, std::slice::from_ref(&material))
        .unwrap();
    (record, material)
}

fn far_future() -> Timestamp {
    add_days(t0(), 10_000).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Raw backend
// ---------------------------------------------------------------------------------------------

fn check_get_absent_is_none(open: Open) {
    let backend = open();
    for table in Table::ALL {
        assert_eq!(backend.get(table, b"absent").unwrap(), None, "{table:?}");
        assert!(all(&*backend, table).is_empty(), "{table:?} starts empty");
    }
    backend
        .commit(&[put(Table::Keys, b"present", b"v")])
        .unwrap();
    assert_eq!(backend.get(Table::Keys, b"absent").unwrap(), None);
    assert_eq!(backend.get(Table::Keys, b"presen").unwrap(), None, "prefix");
    assert_eq!(
        backend.get(Table::Keys, b"present\0").unwrap(),
        None,
        "extension"
    );
}

fn check_put_then_get(open: Open) {
    let backend = open();
    backend
        .commit(&[
            put(Table::Keys, b"k1", b"one"),
            put(Table::Keys, b"k2", b""),
            put(Table::Keys, &[0xff; 40], &[0u8; 5000]),
        ])
        .unwrap();
    assert_eq!(
        backend.get(Table::Keys, b"k1").unwrap(),
        Some(b"one".to_vec())
    );
    assert_eq!(
        backend.get(Table::Keys, b"k2").unwrap(),
        Some(Vec::new()),
        "an empty value is present, not absent"
    );
    assert_eq!(
        backend.get(Table::Keys, &[0xff; 40]).unwrap(),
        Some(vec![0u8; 5000])
    );
    // Overwrite.
    backend.commit(&[put(Table::Keys, b"k1", b"uno")]).unwrap();
    assert_eq!(
        backend.get(Table::Keys, b"k1").unwrap(),
        Some(b"uno".to_vec())
    );
    // Writes of one batch apply in order: the last write of a key wins.
    backend
        .commit(&[
            put(Table::Keys, b"k3", b"first"),
            put(Table::Keys, b"k3", b"second"),
            del(Table::Keys, b"k4"),
            put(Table::Keys, b"k4", b"after-delete"),
            put(Table::Keys, b"k5", b"before-delete"),
            del(Table::Keys, b"k5"),
        ])
        .unwrap();
    assert_eq!(
        backend.get(Table::Keys, b"k3").unwrap(),
        Some(b"second".to_vec())
    );
    assert_eq!(
        backend.get(Table::Keys, b"k4").unwrap(),
        Some(b"after-delete".to_vec())
    );
    assert_eq!(backend.get(Table::Keys, b"k5").unwrap(), None);
    // An empty batch is a no-op.
    backend.commit(&[]).unwrap();
    assert_eq!(all(&*backend, Table::Keys).len(), 5);
}

fn check_delete(open: Open) {
    let backend = open();
    backend
        .commit(&[put(Table::Names, b"a", b"1"), put(Table::Names, b"b", b"2")])
        .unwrap();
    backend.commit(&[del(Table::Names, b"a")]).unwrap();
    assert_eq!(backend.get(Table::Names, b"a").unwrap(), None);
    assert_eq!(
        backend.get(Table::Names, b"b").unwrap(),
        Some(b"2".to_vec()),
        "a delete touches only its key"
    );
    // Deleting an absent key (never written, or already deleted) succeeds and changes nothing.
    backend.commit(&[del(Table::Names, b"never")]).unwrap();
    backend.commit(&[del(Table::Names, b"a")]).unwrap();
    // An absent delete does not abort the rest of its batch.
    backend
        .commit(&[del(Table::Names, b"zz"), put(Table::Names, b"c", b"3")])
        .unwrap();
    assert_eq!(
        all(&*backend, Table::Names),
        vec![
            (b"b".to_vec(), b"2".to_vec()),
            (b"c".to_vec(), b"3".to_vec())
        ]
    );
}

fn check_scan_order_range_limit(open: Open) {
    let backend = open();
    // Written out of order, with keys that differ in length and in high bytes.
    let keys: Vec<Vec<u8>> = vec![
        vec![0x80],
        vec![0x01, 0x00],
        vec![0xff, 0xff],
        vec![0x01],
        vec![0x7f, 0xff, 0xff],
        vec![0x00],
        vec![0x01, 0xff],
        vec![0x80, 0x00],
    ];
    let batch: Vec<Write> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| put(Table::Due, k, &[u8::try_from(i).unwrap()]))
        .collect();
    backend.commit(&batch).unwrap();
    let mut sorted = keys.clone();
    sorted.sort();
    let value_of =
        |k: &[u8]| vec![u8::try_from(keys.iter().position(|x| x == k).unwrap()).unwrap()];
    let expected = |start: &[u8], end: Option<&[u8]>, limit: usize| -> Vec<(Vec<u8>, Vec<u8>)> {
        sorted
            .iter()
            .filter(|k| k.as_slice() >= start && end.is_none_or(|end| k.as_slice() < end))
            .take(limit)
            .map(|k| (k.clone(), value_of(k)))
            .collect()
    };

    let everything = backend.scan(Table::Due, &[], None, usize::MAX).unwrap();
    let got_keys: Vec<&Vec<u8>> = everything.iter().map(|(k, _)| k).collect();
    assert_eq!(got_keys, sorted.iter().collect::<Vec<_>>(), "byte order");
    assert_eq!(everything, expected(&[], None, usize::MAX));

    let cases: &[ScanCase] = &[
        // start is inclusive, end exclusive.
        (&[0x01], Some(&[0x80]), usize::MAX),
        (&[0x01], Some(&[0x80, 0x00]), usize::MAX),
        (&[0x01, 0x00], Some(&[0x01, 0xff]), usize::MAX),
        // bounds that are not stored keys
        (&[0x00, 0x00], Some(&[0x7f]), usize::MAX),
        (&[0x02], None, usize::MAX),
        // limits
        (&[], None, 0),
        (&[], None, 1),
        (&[], None, 3),
        (&[0x01], Some(&[0xff]), 2),
        (&[0x01], None, 4),
        // empty ranges
        (&[0x01], Some(&[0x01]), usize::MAX),
        (&[0xff, 0xff, 0x00], None, usize::MAX),
    ];
    for &(start, end, limit) in cases {
        assert_eq!(
            backend.scan(Table::Due, start, end, limit).unwrap(),
            expected(start, end, limit),
            "scan start={start:?} end={end:?} limit={limit}"
        );
    }
    assert_eq!(backend.scan(Table::Due, &[], None, 3).unwrap().len(), 3);
    assert_eq!(
        backend.scan(Table::Due, &[0x01], None, 4).unwrap()[0].0,
        vec![0x01]
    );
    assert!(
        backend
            .scan(Table::Due, &[0x01], Some(&[0x01]), 10)
            .unwrap()
            .is_empty()
    );
}

/// `start <= key < end` holds for no key when `start > end`: the answer is empty, on both
/// backends alike (not an error, not a panic).
fn check_scan_inverted_range_is_empty(open: Open) {
    let backend = open();
    backend
        .commit(&[
            put(Table::Keys, &[0x01], b"a"),
            put(Table::Keys, &[0x05], b"b"),
            put(Table::Keys, &[0x09], b"c"),
        ])
        .unwrap();
    let inverted = backend.scan(Table::Keys, &[0x09], Some(&[0x01]), 10);
    assert_eq!(inverted.unwrap(), vec![], "scan [0x09, 0x01)");
    let inverted = backend.scan(Table::Keys, &[0x05, 0x00], Some(&[0x05]), 10);
    assert_eq!(inverted.unwrap(), vec![], "scan [0x05 0x00, 0x05)");
    // The backend still answers normally afterwards.
    assert_eq!(backend.scan(Table::Keys, &[], None, 10).unwrap().len(), 3);
}

fn check_tables_are_independent(open: Open) {
    let backend = open();
    let batch: Vec<Write> = Table::ALL
        .iter()
        .map(|t| put(*t, b"same", t.name().as_bytes()))
        .collect();
    backend.commit(&batch).unwrap();
    for table in Table::ALL {
        assert_eq!(
            backend.get(table, b"same").unwrap(),
            Some(table.name().as_bytes().to_vec()),
            "{table:?}"
        );
        assert_eq!(all(&*backend, table).len(), 1, "{table:?}");
    }
    backend.commit(&[del(Table::Materials, b"same")]).unwrap();
    assert_eq!(backend.get(Table::Materials, b"same").unwrap(), None);
    for table in Table::ALL {
        if table != Table::Materials {
            assert_eq!(
                backend.get(table, b"same").unwrap(),
                Some(table.name().as_bytes().to_vec()),
                "deleting in materials touched {table:?}"
            );
        }
    }
    backend.commit(&[add(Table::Usage, b"n", 5)]).unwrap();
    assert_eq!(counter(&*backend, Table::Usage, b"n"), Some(5));
    assert_eq!(backend.get(Table::Meta, b"n").unwrap(), None);
}

fn check_batch_is_atomic(open: Open) {
    let backend = open();
    backend
        .commit(&[
            put(Table::Meta, b"bad-counter", b"abc"),
            put(Table::Keys, b"existing", b"old"),
            put(Table::Usage, b"doomed", b"still-here"),
            add(Table::Meta, b"good-counter", 10),
        ])
        .unwrap();
    let snapshot: Vec<_> = Table::ALL.iter().map(|t| all(&*backend, *t)).collect();

    let err = backend
        .commit(&[
            put(Table::Keys, b"new", b"value"),
            put(Table::Keys, b"existing", b"overwritten"),
            del(Table::Usage, b"doomed"),
            put(Table::Names, b"name", b"id"),
            add(Table::Meta, b"good-counter", 5),
            add(Table::Meta, b"fresh-counter", 1),
            add(Table::Meta, b"bad-counter", 1),
            put(Table::Materials, b"after", b"the failure"),
        ])
        .unwrap_err();
    assert_eq!(err.code(), "corrupt-record", "{err}");

    let after: Vec<_> = Table::ALL.iter().map(|t| all(&*backend, *t)).collect();
    assert_eq!(after, snapshot, "a failed batch changed the store");
    assert_eq!(backend.get(Table::Keys, b"new").unwrap(), None);
    assert_eq!(
        backend.get(Table::Keys, b"existing").unwrap(),
        Some(b"old".to_vec())
    );
    assert_eq!(
        backend.get(Table::Usage, b"doomed").unwrap(),
        Some(b"still-here".to_vec())
    );
    assert_eq!(backend.get(Table::Names, b"name").unwrap(), None);
    assert_eq!(counter(&*backend, Table::Meta, b"good-counter"), Some(10));
    assert_eq!(backend.get(Table::Meta, b"fresh-counter").unwrap(), None);
    assert_eq!(backend.get(Table::Materials, b"after").unwrap(), None);

    // Counter values of other wrong lengths fail too; the 8-byte boundary is exact.
    for len in [0usize, 7, 9] {
        backend
            .commit(&[put(Table::Meta, b"len", &vec![0; len])])
            .unwrap();
        let err = backend
            .commit(&[put(Table::Keys, b"x", b"y"), add(Table::Meta, b"len", 1)])
            .unwrap_err();
        assert_eq!(err.code(), "corrupt-record", "{len} bytes: {err}");
        assert_eq!(backend.get(Table::Keys, b"x").unwrap(), None, "{len} bytes");
        assert_eq!(
            backend.get(Table::Meta, b"len").unwrap(),
            Some(vec![0; len])
        );
    }

    // The backend stays usable after a failed batch.
    backend
        .commit(&[put(Table::Keys, b"new", b"value")])
        .unwrap();
    assert_eq!(
        backend.get(Table::Keys, b"new").unwrap(),
        Some(b"value".to_vec())
    );
}

fn check_add_counter(open: Open) {
    let backend = open();
    backend.commit(&[add(Table::Meta, b"c", 3)]).unwrap();
    assert_eq!(
        counter(&*backend, Table::Meta, b"c"),
        Some(3),
        "starts from 0"
    );
    assert_eq!(
        backend.get(Table::Meta, b"c").unwrap(),
        Some(3i64.to_be_bytes().to_vec()),
        "stored as 8 big-endian bytes"
    );
    backend.commit(&[add(Table::Meta, b"c", -5)]).unwrap();
    assert_eq!(
        counter(&*backend, Table::Meta, b"c"),
        Some(-2),
        "negative delta"
    );
    backend.commit(&[add(Table::Meta, b"neg", -1)]).unwrap();
    assert_eq!(counter(&*backend, Table::Meta, b"neg"), Some(-1));
    backend.commit(&[add(Table::Meta, b"zero", 0)]).unwrap();
    assert_eq!(
        counter(&*backend, Table::Meta, b"zero"),
        Some(0),
        "adding 0 to an absent counter stores 0"
    );

    // Inside one batch, a counter sees the batch's earlier writes.
    backend
        .commit(&[add(Table::Meta, b"c", 10), add(Table::Meta, b"c", 10)])
        .unwrap();
    assert_eq!(counter(&*backend, Table::Meta, b"c"), Some(18));
    backend
        .commit(&[
            put(Table::Meta, b"c", &100i64.to_be_bytes()),
            add(Table::Meta, b"c", 1),
        ])
        .unwrap();
    assert_eq!(counter(&*backend, Table::Meta, b"c"), Some(101));
    backend
        .commit(&[del(Table::Meta, b"c"), add(Table::Meta, b"c", 7)])
        .unwrap();
    assert_eq!(
        counter(&*backend, Table::Meta, b"c"),
        Some(7),
        "restarts from 0"
    );
    backend
        .commit(&[add(Table::Meta, b"c", 1), put(Table::Meta, b"c", b"xyz")])
        .unwrap();
    assert_eq!(
        backend.get(Table::Meta, b"c").unwrap(),
        Some(b"xyz".to_vec()),
        "a later put wins over an earlier counter"
    );

    // Saturating at the ends of i64.
    backend
        .commit(&[
            add(Table::Meta, b"max", i64::MAX),
            add(Table::Meta, b"max", 1),
        ])
        .unwrap();
    assert_eq!(counter(&*backend, Table::Meta, b"max"), Some(i64::MAX));
    backend
        .commit(&[
            add(Table::Meta, b"min", i64::MIN),
            add(Table::Meta, b"min", -1),
        ])
        .unwrap();
    assert_eq!(counter(&*backend, Table::Meta, b"min"), Some(i64::MIN));
}

fn check_concurrent_counters(open: Open) {
    const THREADS: usize = 8;
    const INCREMENTS: usize = 100;
    let backend = open();
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let backend = Arc::clone(&backend);
            scope.spawn(move || {
                for i in 0..INCREMENTS {
                    let own = format!("t{thread}-{i}");
                    backend
                        .commit(&[
                            put(Table::Usage, own.as_bytes(), b"x"),
                            add(Table::Meta, b"shared", 1),
                            add(Table::Meta, format!("t{thread}").as_bytes(), 1),
                        ])
                        .unwrap();
                }
            });
        }
    });
    let total = i64::try_from(THREADS * INCREMENTS).unwrap();
    assert_eq!(
        counter(&*backend, Table::Meta, b"shared"),
        Some(total),
        "lost updates"
    );
    for thread in 0..THREADS {
        assert_eq!(
            counter(&*backend, Table::Meta, format!("t{thread}").as_bytes()),
            Some(i64::try_from(INCREMENTS).unwrap())
        );
    }
    assert_eq!(all(&*backend, Table::Usage).len(), THREADS * INCREMENTS);
}

/// Random batches against a model of ordered maps: after every commit, every table and a
/// random scan agree with the model; a batch that fails changes nothing.
fn check_random_batches_match_model(open: Open) {
    let backend = open();
    let model: RefCell<[BTreeMap<Vec<u8>, Vec<u8>>; Table::ALL.len()]> =
        RefCell::new(Default::default());

    let table = proptest::sample::select(Table::ALL.to_vec());
    let key = proptest::collection::vec(
        proptest::sample::select(vec![0x00u8, 0x01, 0x7f, 0x80, 0xff]),
        1..4,
    );
    let value = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..12),
        any::<i64>().prop_map(|n| n.to_be_bytes().to_vec()),
    ];
    let delta = prop_oneof![-3i64..4, Just(i64::MAX), Just(i64::MIN)];
    let write = prop_oneof![
        3 => (table.clone(), key.clone(), value).prop_map(|(table, key, value)| Write::Put { table, key, value }),
        1 => (table.clone(), key.clone()).prop_map(|(table, key)| Write::Delete { table, key }),
        2 => (table.clone(), key.clone(), delta).prop_map(|(table, key, delta)| Write::AddCounter { table, key, delta }),
    ];
    let batches = proptest::collection::vec(proptest::collection::vec(write, 0..6), 1..6);
    let scan = (table, key.clone(), proptest::option::of(key), 0usize..8);

    let mut runner = TestRunner::new(Config {
        cases: 48,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&(batches, scan), |(batches, (table, start, end, limit))| {
            let mut model = model.borrow_mut();
            for batch in &batches {
                let mut next = model.clone();
                let mut ok = true;
                for write in batch {
                    match write {
                        Write::Put { table, key, value } => {
                            next[table.index()].insert(key.clone(), value.clone());
                        }
                        Write::Delete { table, key } => {
                            next[table.index()].remove(key);
                        }
                        Write::AddCounter { table, key, delta } => {
                            let current = match next[table.index()].get(key) {
                                None => Some(0),
                                Some(bytes) => <[u8; 8]>::try_from(bytes.as_slice())
                                    .ok()
                                    .map(i64::from_be_bytes),
                            };
                            match current {
                                Some(current) => {
                                    next[table.index()].insert(
                                        key.clone(),
                                        current.saturating_add(*delta).to_be_bytes().to_vec(),
                                    );
                                }
                                None => ok = false,
                            }
                        }
                    }
                }
                let result = backend.commit(batch);
                prop_assert_eq!(result.is_ok(), ok, "batch {:?}: {:?}", batch, result);
                if ok {
                    *model = next;
                }
                for t in Table::ALL {
                    let expected: Vec<(Vec<u8>, Vec<u8>)> = model[t.index()]
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    prop_assert_eq!(all(&*backend, t), expected, "table {:?}", t);
                }
            }
            if end.as_ref().is_none_or(|end| *end >= start) {
                let expected: Vec<(Vec<u8>, Vec<u8>)> = model[table.index()]
                    .iter()
                    .filter(|(k, _)| **k >= start && end.as_ref().is_none_or(|e| *k < e))
                    .take(limit)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                prop_assert_eq!(
                    backend.scan(table, &start, end.as_deref(), limit).unwrap(),
                    expected
                );
            }
            Ok(())
        })
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Typed store
// ---------------------------------------------------------------------------------------------

fn check_store_put_and_load(open: Open) {
    let store = Store::new(open());
    let key_id = id(0x42);
    assert_eq!(store.load(key_id).unwrap(), None);
    assert_eq!(store.id_by_name("alpha").unwrap(), None);
    assert_eq!(store.origin_keys().unwrap(), 0);
    assert_eq!(store.reserved(key_id, 1).unwrap(), 0);
    let err = store.load_material(key_id, 1).unwrap_err();
    assert_eq!(err.code(), "corrupt-record", "{err}");

    let now = Timestamp::new(1_700_000_000, 123_456_789).unwrap();
    let (record, v1) = create_stored(&store, key_id, "alpha", now);
    assert_eq!(store.load(key_id).unwrap(), Some(record.clone()));
    assert_eq!(store.load_material(key_id, 1).unwrap(), v1.sealed);
    assert_eq!(store.id_by_name("alpha").unwrap(), Some(key_id));
    assert_eq!(store.id_by_name("alph").unwrap(), None);
    assert_eq!(store.origin_keys().unwrap(), 1);
    assert_eq!(store.reserved(key_id, 1).unwrap(), v1.reserved);
    assert_eq!(store.reserved(key_id, 2).unwrap(), 0);
    assert!(store.load_material(key_id, 2).is_err());
    assert_eq!(store.list(None, 10).unwrap(), vec![record.clone()]);

    // A second key counts too.
    let (other, _) = create_stored(&store, id(0x07), "beta", now);
    assert_eq!(store.origin_keys().unwrap(), 2);
    assert_eq!(store.id_by_name("beta").unwrap(), Some(other.id()));

    // Replacing the record (a rotation with material v2) keeps the count and the name.
    let rotated = changed(&record, Command::Rotate, now + nanos(1_000));
    let v2 = material(2, 0x99, 8192);
    store
        .put(Some(&record), &rotated, std::slice::from_ref(&v2))
        .unwrap();
    assert_eq!(store.load(key_id).unwrap(), Some(rotated.clone()));
    assert_eq!(store.load_material(key_id, 1).unwrap(), v1.sealed);
    assert_eq!(store.load_material(key_id, 2).unwrap(), v2.sealed);
    assert_eq!(store.reserved(key_id, 1).unwrap(), v1.reserved);
    assert_eq!(store.reserved(key_id, 2).unwrap(), v2.reserved);
    assert_eq!(store.origin_keys().unwrap(), 2);
    assert_eq!(store.id_by_name("alpha").unwrap(), Some(key_id));
    // Each version's seal id is kept in the record, the first one across the rotation.
    assert_ne!(v1.seal_id, v2.seal_id);
    assert_eq!(store.seal_id(key_id, 1).unwrap(), v1.seal_id);
    assert_eq!(store.seal_id(key_id, 2).unwrap(), v2.seal_id);
    assert_eq!(
        store.seal_id(key_id, 3).unwrap_err().code(),
        "corrupt-record"
    );
    assert_eq!(
        store.seal_id(id(0x99), 1).unwrap_err(),
        keylife::Error::KeyNotFound { id: id(0x99) }
    );
}

fn check_store_due_boundary(open: Open) {
    let store = Store::new(open());
    let created = Timestamp::new(1_700_000_000, 500).unwrap();
    let (record, _) = create_stored(&store, id(0x11), "rotating", created);
    let due_at = next_due(&record).unwrap();
    assert_eq!(due_at, add_days(created, 365).unwrap());
    assert_eq!(due_at, created + SignedDuration::from_hours(365 * 24));

    assert!(store.due(created, 10).unwrap().ids.is_empty());
    assert!(
        store.due(due_at - nanos(1), 10).unwrap().ids.is_empty(),
        "due one nanosecond early"
    );
    assert_eq!(store.due(due_at, 10).unwrap().ids, vec![record.id()]);
    assert_eq!(
        store.due(due_at + nanos(1), 10).unwrap().ids,
        vec![record.id()]
    );
    assert_eq!(store.due(far_future(), 10).unwrap().ids, vec![record.id()]);
    assert!(
        store.due(far_future(), 0).unwrap().ids.is_empty(),
        "limit 0"
    );

    // Several keys: earliest first, limit respected, each only once it is due.
    let (later, _) = create_stored(&store, id(0x01), "later", created + nanos(2));
    let (earlier, _) = create_stored(&store, id(0xee), "earlier", created - nanos(3));
    let later_due = next_due(&later).unwrap();
    let earlier_due = next_due(&earlier).unwrap();
    assert_eq!(store.due(earlier_due - nanos(1), 10).unwrap().ids, vec![]);
    assert_eq!(store.due(earlier_due, 10).unwrap().ids, vec![earlier.id()]);
    assert_eq!(
        store.due(due_at, 10).unwrap().ids,
        vec![earlier.id(), record.id()]
    );
    assert_eq!(
        store.due(later_due, 10).unwrap().ids,
        vec![earlier.id(), record.id(), later.id()]
    );
    assert_eq!(
        store.due(far_future(), 2).unwrap().ids,
        vec![earlier.id(), record.id()]
    );
}

fn check_store_due_follows_changes(open: Open) {
    let backend = open();
    let store = Store::new(Arc::clone(&backend));
    let created = t0();
    let (record, _) = create_stored(&store, id(0x21), "doomed", created);
    let rotation_at = next_due(&record).unwrap();

    let now = add_days(created, 1).unwrap();
    let pending = changed(
        &record,
        Command::ScheduleDeletion {
            delay: DeletionDelay::new(7).unwrap(),
        },
        now,
    );
    let delete_at = add_days(now, 7).unwrap();
    assert_eq!(pending.status(), Status::PendingDeletion { delete_at });
    assert_eq!(next_due(&pending), Some(delete_at));
    store.put(Some(&record), &pending, &[]).unwrap();
    assert_eq!(store.load(record.id()).unwrap(), Some(pending.clone()));

    assert!(store.due(delete_at - nanos(1), 10).unwrap().ids.is_empty());
    assert_eq!(store.due(delete_at, 10).unwrap().ids, vec![record.id()]);
    assert_eq!(
        store
            .due(add_days(rotation_at, 1).unwrap(), 10)
            .unwrap()
            .ids,
        vec![record.id()],
        "past both the delete time and the old rotation time: exactly once"
    );
    assert_eq!(
        all(&*backend, Table::Due).len(),
        1,
        "stale due entries: {:?}",
        all(&*backend, Table::Due)
    );

    // Cancelling leaves the key disabled: nothing is due any more.
    let cancelled = changed(&pending, Command::CancelDeletion, now + nanos(5));
    assert_eq!(next_due(&cancelled), None);
    store.put(Some(&pending), &cancelled, &[]).unwrap();
    assert!(store.due(far_future(), 10).unwrap().ids.is_empty());
    assert!(all(&*backend, Table::Due).is_empty());

    // Enabling again brings back the (already past) rotation time.
    let enabled = changed(&cancelled, Command::Enable, now + nanos(6));
    store.put(Some(&cancelled), &enabled, &[]).unwrap();
    assert_eq!(store.due(rotation_at - nanos(1), 10).unwrap().ids, vec![]);
    assert_eq!(store.due(rotation_at, 10).unwrap().ids, vec![record.id()]);
    assert_eq!(all(&*backend, Table::Due).len(), 1);
    // A change that keeps the due time (disable rotation is not it; a manual rotation is)
    // leaves exactly one entry.
    let rotated = changed(&enabled, Command::Rotate, now + nanos(7));
    assert_eq!(next_due(&rotated), next_due(&enabled));
    store
        .put(Some(&enabled), &rotated, &[material(2, 3, 0)])
        .unwrap();
    assert_eq!(store.due(far_future(), 10).unwrap().ids, vec![record.id()]);
    assert_eq!(all(&*backend, Table::Due).len(), 1);
}

fn check_store_list(open: Open) {
    let store = Store::new(open());
    assert!(store.list(None, 10).unwrap().is_empty());
    let bytes = [0x90u8, 0x05, 0xff, 0x30, 0x00, 0x61];
    let mut records = Vec::new();
    for (i, b) in bytes.iter().enumerate() {
        let (record, _) = create_stored(
            &store,
            id(*b),
            &format!("key-{i}"),
            t0() + nanos(i64::from(*b)),
        );
        records.push(record);
    }
    records.sort_by_key(KeyRecord::id);

    assert_eq!(store.list(None, 100).unwrap(), records, "id order");
    assert_eq!(store.list(None, 0).unwrap(), vec![]);
    assert_eq!(store.list(None, 2).unwrap(), records[..2].to_vec());

    // Pages of 2 cover everything exactly once, in order.
    let mut paged = Vec::new();
    let mut after = None;
    for _ in 0..=records.len() {
        let page = store.list(after, 2).unwrap();
        assert!(page.len() <= 2);
        if page.is_empty() {
            break;
        }
        after = Some(page.last().unwrap().id());
        paged.extend(page);
        assert!(
            paged.len() <= records.len(),
            "pages repeat records: {paged:?}"
        );
    }
    assert_eq!(paged, records);
    assert_eq!(
        store.list(after, 2).unwrap(),
        vec![],
        "a page after the last"
    );

    // `after` is exclusive, and need not be a stored id.
    assert_eq!(
        store.list(Some(records[2].id()), 100).unwrap(),
        records[3..].to_vec()
    );
    assert_eq!(
        store.list(Some(id(0x31)), 100).unwrap(),
        records
            .iter()
            .filter(|r| r.id() > id(0x31))
            .cloned()
            .collect::<Vec<_>>()
    );
    assert_eq!(store.list(Some(records[5].id()), 100).unwrap(), vec![]);
}

fn check_store_delete(open: Open) {
    let backend = open();
    let store = Store::new(Arc::clone(&backend));
    let (keep, keep_material) = create_stored(&store, id(0x50), "keep", t0());
    let (record, _) = create_stored(&store, id(0x51), "gone", t0());
    let rotated = changed(&record, Command::Rotate, t0() + nanos(10));
    store
        .put(Some(&record), &rotated, &[material(2, 8, 77)])
        .unwrap();
    store.reserve(record.id(), 1, 9999).unwrap();
    assert_eq!(store.origin_keys().unwrap(), 2);
    assert_eq!(store.due(far_future(), 10).unwrap().ids.len(), 2);

    store.delete(&rotated, None).unwrap();

    let gone = record.id();
    assert_eq!(store.load(gone).unwrap(), None);
    assert_eq!(store.id_by_name("gone").unwrap(), None);
    assert!(store.load_material(gone, 1).is_err());
    assert!(store.load_material(gone, 2).is_err());
    assert_eq!(store.reserved(gone, 1).unwrap(), 0);
    assert_eq!(store.reserved(gone, 2).unwrap(), 0);
    assert_eq!(store.origin_keys().unwrap(), 1);
    assert_eq!(store.due(far_future(), 10).unwrap().ids, vec![keep.id()]);
    assert_eq!(store.list(None, 10).unwrap(), vec![keep.clone()]);
    // Nothing of the deleted key is left in any table.
    for table in Table::ALL {
        for (key, value) in all(&*backend, table) {
            let mentions = |bytes: &[u8]| bytes.windows(16).any(|w| w == gone.as_bytes());
            assert!(
                !mentions(&key) && !mentions(&value),
                "{table:?} still holds {key:?} => {value:?}"
            );
        }
    }
    assert_eq!(backend.get(Table::Names, b"gone").unwrap(), None);

    // The other key is untouched.
    assert_eq!(store.load(keep.id()).unwrap(), Some(keep.clone()));
    assert_eq!(
        store.load_material(keep.id(), 1).unwrap(),
        keep_material.sealed
    );
    assert_eq!(
        store.reserved(keep.id(), 1).unwrap(),
        keep_material.reserved
    );
    assert_eq!(store.id_by_name("keep").unwrap(), Some(keep.id()));

    // A key pending deletion loses its delete-time entry too.
    let pending = changed(
        &keep,
        Command::ScheduleDeletion {
            delay: DeletionDelay::new(30).unwrap(),
        },
        t0() + nanos(20),
    );
    store.put(Some(&keep), &pending, &[]).unwrap();
    store.delete(&pending, None).unwrap();
    assert_eq!(store.origin_keys().unwrap(), 0);
    assert!(store.due(far_future(), 10).unwrap().ids.is_empty());
    for table in [
        Table::Keys,
        Table::Materials,
        Table::Names,
        Table::Due,
        Table::Usage,
    ] {
        assert!(all(&*backend, table).is_empty(), "{table:?} not empty");
    }
}

fn check_store_reserve(open: Open) {
    let store = Store::new(open());
    let (record, material) = create_stored(&store, id(0x60), "counted", t0());
    assert_eq!(store.reserved(record.id(), 1).unwrap(), material.reserved);
    store.reserve(record.id(), 1, 1 << 20).unwrap();
    assert_eq!(store.reserved(record.id(), 1).unwrap(), 1 << 20);
    store.reserve(record.id(), 1, u64::MAX).unwrap();
    assert_eq!(store.reserved(record.id(), 1).unwrap(), u64::MAX);
    // Per version and per key.
    store.reserve(record.id(), 3, 12).unwrap();
    assert_eq!(store.reserved(record.id(), 3).unwrap(), 12);
    assert_eq!(store.reserved(record.id(), 2).unwrap(), 0);
    assert_eq!(store.reserved(id(0x61), 1).unwrap(), 0);
    // The record is not touched by a reservation.
    assert_eq!(store.load(record.id()).unwrap(), Some(record));
}

fn check_store_corrupt_record(open: Open) {
    let backend = open();
    let store = Store::new(Arc::clone(&backend));
    let (healthy, healthy_material) = create_stored(&store, id(0x10), "healthy", t0());
    let (victim, _) = create_stored(&store, id(0x20), "victim", t0());
    let (after, _) = create_stored(&store, id(0x30), "after", t0());
    let bad = victim.id();

    let valid_for_other = keylife::store::codec::encode_record(&healthy).unwrap();
    let garbage: Vec<Vec<u8>> = vec![
        b"\xde\xad\xbe\xef garbage".to_vec(),
        Vec::new(),
        vec![keylife::store::codec::RECORD_FORMAT_V1],
        vec![keylife::store::codec::RECORD_FORMAT_V1, 0xff, 0xff, 0xff],
        // A well-formed record, but of another key.
        valid_for_other,
    ];
    for bytes in garbage {
        backend
            .commit(&[Write::Put {
                table: Table::Keys,
                key: bad.as_bytes().to_vec(),
                value: bytes.clone(),
            }])
            .unwrap();
        let err = store.load(bad).unwrap_err();
        assert_eq!(err.code(), "corrupt-record", "{bytes:?}: {err}");
        assert!(
            err.to_string().contains(&bad.to_string()),
            "the message does not name {bad}: {err}"
        );
        let err = store.list(None, 10).unwrap_err();
        assert_eq!(err.code(), "corrupt-record", "list: {err}");
        assert!(
            err.to_string().contains(&bad.to_string()),
            "the list error does not name {bad}: {err}"
        );
        // Other records stay usable.
        assert_eq!(store.load(healthy.id()).unwrap(), Some(healthy.clone()));
        assert_eq!(
            store.load_material(healthy.id(), 1).unwrap(),
            healthy_material.sealed
        );
        assert_eq!(store.load(after.id()).unwrap(), Some(after.clone()));
        assert_eq!(store.list(None, 1).unwrap(), vec![healthy.clone()]);
        assert_eq!(store.list(Some(bad), 10).unwrap(), vec![after.clone()]);
        assert_eq!(store.id_by_name("victim").unwrap(), Some(bad));
    }

    // A change over the damaged record is refused: the record holds the seal ids of its
    // versions, which a blind overwrite would lose (and with them the material).
    let err = store.put(Some(&victim), &victim, &[]).unwrap_err();
    assert_eq!(err.code(), "corrupt-record", "{err}");
    assert!(err.to_string().contains(&bad.to_string()), "{err}");
    // Once the record is good again, changes go on.
    store.delete(&victim, None).unwrap();
    store.put(None, &victim, &[]).unwrap();
    assert_eq!(store.load(bad).unwrap(), Some(victim.clone()));
    assert_eq!(store.list(None, 10).unwrap(), vec![healthy, victim, after]);
}

fn check_store_header(open: Open) {
    let backend = open();
    let store = Store::new(Arc::clone(&backend));
    assert_eq!(store.header().unwrap(), None);
    store
        .initialize(b"check-value".to_vec(), "ch-gva-2")
        .unwrap();
    assert_eq!(
        store.header().unwrap(),
        Some(StoreHeader {
            format: STORE_FORMAT_V2,
            root_check: b"check-value".to_vec(),
            zone: "ch-gva-2".to_owned(),
        })
    );
    // Keys may be added to an initialized store.
    create_stored(&store, id(0x70), "fine", t0());

    // A header missing one of its parts is corrupt.
    backend.commit(&[del(Table::Meta, b"root-check")]).unwrap();
    assert_eq!(store.header().unwrap_err().code(), "corrupt-record");
}

fn check_store_refuses_headerless_keys(open: Open) {
    let backend = open();
    let store = Store::new(Arc::clone(&backend));
    create_stored(&store, id(0x71), "orphan", t0());
    assert_eq!(store.header().unwrap(), None);
    let err = store.initialize(b"check".to_vec(), "ch-gva-2").unwrap_err();
    assert_eq!(err.code(), "corrupt-record", "{err}");
    assert_eq!(
        store.header().unwrap(),
        None,
        "a refused initialize wrote a header"
    );
    assert_eq!(backend.get(Table::Meta, b"format").unwrap(), None);
    assert_eq!(backend.get(Table::Meta, b"root-check").unwrap(), None);
    assert_eq!(backend.get(Table::Meta, b"zone").unwrap(), None);
}

// ---------------------------------------------------------------------------------------------
// Engines on disk only: durability across a reopen
// ---------------------------------------------------------------------------------------------

#[test]
fn sled_backend_durable_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    check_durable_across_reopen(&|| -> Arc<dyn Backend> {
        Arc::new(SledBackend::open(&path).unwrap())
    });
}

#[test]
fn redb_backend_durable_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    check_durable_across_reopen(&|| -> Arc<dyn Backend> {
        Arc::new(RedbBackend::open(&path).unwrap())
    });
}

/// Writes through one backend, drops it, and finds everything through the next `open()`.
fn check_durable_across_reopen(open: Open) {
    let created = t0();
    let (record, pending, material, doomed) = {
        let backend = open();
        let store = Store::new(Arc::clone(&backend));
        store
            .initialize(b"root-check".to_vec(), "de-fra-1")
            .unwrap();
        let (record, material) = create_stored(&store, id(0x80), "durable", created);
        let pending = changed(
            &record,
            Command::ScheduleDeletion {
                delay: DeletionDelay::new(10).unwrap(),
            },
            created + nanos(1),
        );
        store.put(Some(&record), &pending, &[]).unwrap();
        store.reserve(record.id(), 1, 123_456).unwrap();
        let (doomed, _) = create_stored(&store, id(0x81), "deleted", created);
        store.delete(&doomed, None).unwrap();
        backend
            .commit(&[
                put(Table::Usage, b"raw", b"bytes"),
                add(Table::Meta, b"ctr", -4),
            ])
            .unwrap();
        drop(store);
        drop(backend);
        (record, pending, material, doomed)
    };

    let backend = open();
    let store = Store::new(Arc::clone(&backend));
    assert_eq!(
        store.header().unwrap(),
        Some(StoreHeader {
            format: STORE_FORMAT_V2,
            root_check: b"root-check".to_vec(),
            zone: "de-fra-1".to_owned(),
        })
    );
    assert_eq!(store.load(record.id()).unwrap(), Some(pending.clone()));
    assert_eq!(
        store.load_material(record.id(), 1).unwrap(),
        material.sealed
    );
    assert_eq!(store.id_by_name("durable").unwrap(), Some(record.id()));
    assert_eq!(store.origin_keys().unwrap(), 1);
    assert_eq!(store.reserved(record.id(), 1).unwrap(), 123_456);
    let delete_at = add_days(created + nanos(1), 10).unwrap();
    assert!(store.due(delete_at - nanos(1), 10).unwrap().ids.is_empty());
    assert_eq!(store.due(far_future(), 10).unwrap().ids, vec![record.id()]);
    assert_eq!(store.list(None, 10).unwrap(), vec![pending]);
    assert_eq!(store.load(doomed.id()).unwrap(), None);
    assert_eq!(store.id_by_name("deleted").unwrap(), None);
    assert_eq!(
        backend.get(Table::Usage, b"raw").unwrap(),
        Some(b"bytes".to_vec())
    );
    assert_eq!(counter(&*backend, Table::Meta, b"ctr"), Some(-4));
    // Still writable after the reopen.
    create_stored(&store, id(0x82), "again", created);
    assert_eq!(store.origin_keys().unwrap(), 2);
}

// ---------------------------------------------------------------------------------------------
// Instantiation for every backend
// ---------------------------------------------------------------------------------------------

macro_rules! conformance {
    ($($check:ident),* $(,)?) => {
        mod sled_backend {
            use super::*;

            fn run(check: fn(Open)) {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("db");
                let open = || -> Arc<dyn Backend> { Arc::new(SledBackend::open(&path).unwrap()) };
                check(&open);
            }

            $(
                #[test]
                fn $check() {
                    run(super::$check);
                }
            )*
        }

        mod redb_backend {
            use super::*;

            fn run(check: fn(Open)) {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("db");
                let open = || -> Arc<dyn Backend> { Arc::new(RedbBackend::open(&path).unwrap()) };
                check(&open);
            }

            $(
                #[test]
                fn $check() {
                    run(super::$check);
                }
            )*
        }

        mod memory_backend {
            use super::*;

            fn run(check: fn(Open)) {
                let open = || -> Arc<dyn Backend> { Arc::new(MemoryBackend::new()) };
                check(&open);
            }

            $(
                #[test]
                fn $check() {
                    run(super::$check);
                }
            )*
        }
    };
}

conformance!(
    check_get_absent_is_none,
    check_put_then_get,
    check_delete,
    check_scan_order_range_limit,
    check_scan_inverted_range_is_empty,
    check_tables_are_independent,
    check_batch_is_atomic,
    check_add_counter,
    check_concurrent_counters,
    check_random_batches_match_model,
    check_store_put_and_load,
    check_store_due_boundary,
    check_store_due_follows_changes,
    check_store_list,
    check_store_delete,
    check_store_reserve,
    check_store_corrupt_record,
    check_store_header,
    check_store_refuses_headerless_keys,
);
