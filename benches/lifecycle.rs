//! Durable commits and mutations, each against its baselines measured in the same run:
//!
//! - `baseline`: an append of a key record's size to a plain file + `fdatasync`, and the
//!   witness's own sync (a 60-byte `pwrite` at offset 0 or 60, in turn, + `fdatasync` of a
//!   small file, as the authenticated store does after each commit group);
//! - `auth`: what authentication costs on its own: `AuthenticatedBackend::commit` of one Put
//!   over a `MemoryBackend` against `MemoryBackend::commit` of the same Put;
//! - `durable/<engine>`, for sled and redb: the engine's own durable commit of one Put of a
//!   key record's size (`SledBackend::commit`, `RedbBackend::commit`), and of the batches the
//!   authenticated store hands the engine for that Put (`..._authenticated_shape`: the Put
//!   with its tag and the state record, two tables) and about for a `create_key`
//!   (`..._create_shape`: six Puts over five tables), and the same on a store of 10,000 keys
//!   (`..._populated`: a record rewritten, a new key's writes); for sled also the by-hand commit
//!   (`insert`, `flush`, `fdatasync` of sled's `db` file) and the issue-4 baseline (`insert`,
//!   `flush`, no `fdatasync`); the one Put through an `AuthenticatedBackend` over the
//!   engine; durable `enable_key` / `disable_key`, `rotate_key` and `create_key` through a
//!   `Kms` on the engine, in that order, then enable/disable again on the store the others
//!   filled with thousands of keys (`enable_disable_key_after_create`);
//! - `threads/<engine>`: enable/disable from 8 threads on 8 keys against 1 thread.
//!
//! After each part it prints a `keylife-syncs:` line to stdout: the commits (or mutations)
//! and the syncs they made, so that syncs per commit and mutations per commit group show.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use keylife::store::{
    AuthenticatedBackend, Backend, Engine, MemoryBackend, RedbBackend, SledBackend, Table, Write,
};
use keylife::{CreateKey, KeyId, KeyStatus, Kms, KmsOptions};

#[path = "common.rs"]
mod common;

type Group<'a> = BenchmarkGroup<'a, criterion::measurement::WallTime>;

/// Length of the stored record of a fresh key named `bench`: the baselines write a value of
/// the same size.
fn record_len() -> usize {
    let record = keylife::core::create_key(
        &CreateKey::new("bench"),
        &keylife::core::CreateContext {
            id: KeyId::from_bytes([1; 16]),
            zone: "bench",
            now: common::start(),
            origin_keys: 0,
            quota: 1,
            name_taken: false,
        },
    )
    .unwrap();
    keylife::store::codec::encode_record(&record).unwrap().len()
}

/// One Put of `value` at a key id in the keys table: the shape of an enable/disable.
fn put(value: &[u8]) -> Write {
    Write::Put {
        table: Table::Keys,
        key: vec![1; 16],
        value: value.to_vec(),
    }
}

/// Two values of the same length that differ, written in turn.
fn values(len: usize) -> [Vec<u8>; 2] {
    [vec![0x5a; len], vec![0xa5; len]]
}

/// Two batches of one Put of a key record's size, written in turn.
fn one_put(len: usize) -> [Vec<Write>; 2] {
    values(len).map(|value| vec![put(&value)])
}

/// About what the authenticated store hands its engine for a `create_key`: six Puts over five
/// tables (the record, its name, its sealed material and its encryption reservation, each
/// with its tag; the key counter and the state record in the meta table).
fn create_shape(len: usize) -> [Vec<Write>; 2] {
    [0x5au8, 0xa5].map(|byte| {
        let put = |table, key: &[u8], len: usize| Write::Put {
            table,
            key: key.to_vec(),
            value: vec![byte; len],
        };
        vec![
            put(Table::Keys, &[1; 16], len + 32),
            put(Table::Names, b"bench", 16 + 32),
            put(
                Table::Materials,
                &[1; 20],
                keylife::crypto::SEALED_MATERIAL_LEN + 32,
            ),
            put(Table::Usage, &[1; 20], 8 + 32),
            put(Table::Meta, b"origin-keys", 8 + 32),
            put(Table::Meta, b"state", 41),
        ]
    })
}

/// What the authenticated store hands its engine for one such Put: the Put with its 32-byte
/// tag, and the state record (format, sequence, tag: 41 bytes) in the meta table.
fn authenticated_shape(len: usize) -> [Vec<Write>; 2] {
    values(len + 32).map(|value| {
        vec![
            put(&value),
            Write::Put {
                table: Table::Meta,
                key: b"state".to_vec(),
                value: value[..41].to_vec(),
            },
        ]
    })
}

/// Prints what a part of the benchmark did, for scripts/perf_report.py.
fn report(what: &str, fields: &[(&str, u64)]) {
    let fields: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!("keylife-syncs: {what} {}", fields.join(" "));
}

/// A store directory's entries settle: the engines `fsync` the directory at each sync while
/// its times are less than a second old (a file was just created there). Measure after.
fn settle() {
    std::thread::sleep(Duration::from_millis(1100));
}

/// An engine opened on a directory, kept typed to read its sync counts.
#[derive(Clone)]
enum Disk {
    Sled(Arc<SledBackend>),
    Redb(Arc<RedbBackend>),
}

impl Disk {
    fn open(engine: Engine, dir: &Path) -> Disk {
        match engine {
            Engine::Sled => Disk::Sled(Arc::new(SledBackend::open(dir).unwrap())),
            Engine::Redb => Disk::Redb(Arc::new(RedbBackend::open(dir).unwrap())),
        }
    }

    fn backend(&self) -> Arc<dyn Backend> {
        match self {
            Disk::Sled(b) => b.clone(),
            Disk::Redb(b) => b.clone(),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Disk::Sled(_) => "sled",
            Disk::Redb(_) => "redb",
        }
    }

    /// (`fdatasync` of the data file, `fsync` of the directory) so far.
    fn syncs(&self) -> (u64, u64) {
        let s = match self {
            Disk::Sled(b) => b.syncs(),
            Disk::Redb(b) => b.syncs(),
        };
        (s.data, s.dir)
    }
}

/// Runs `commit` once per iteration with two batches in turn (after a first commit and a
/// pause, see [`settle`]), and reports the syncs `syncs` counted over every run (warm-up
/// included).
fn bench_commit(
    group: &mut Group<'_>,
    name: &str,
    what: &str,
    commit: &dyn Fn(&[Write]) -> Result<(), keylife::Error>,
    syncs: &dyn Fn() -> Vec<(&'static str, u64)>,
    batches: &[Vec<Write>; 2],
) {
    // The first commit creates files (sled's marker, the store id): measure after it.
    commit(&batches[1]).unwrap();
    settle();
    let before = syncs();
    let mut n = 0u64;
    group.bench_function(name, |b| {
        b.iter(|| {
            n += 1;
            commit(&batches[(n % 2) as usize]).unwrap();
        });
    });
    let after = syncs();
    let mut fields = vec![("commits", n)];
    for ((name, a), (_, b)) in after.into_iter().zip(before) {
        fields.push((name, a - b));
    }
    report(what, &fields);
}

fn baselines(c: &mut Criterion, dir: &Path, len: usize) {
    let mut group = c.benchmark_group("baseline");
    group.sample_size(20);
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("append"))
        .unwrap();
    let record = vec![0x5a; len];
    group.bench_function("file_append_fdatasync", |b| {
        b.iter(|| {
            file.write_all(&record).unwrap();
            file.sync_data().unwrap();
        });
    });
    drop(file);

    // The witness: two 60-byte slots, written in turn at offset 0 and 60, each write synced.
    let witness = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(dir.join("witness"))
        .unwrap();
    witness.set_len(120).unwrap();
    witness.sync_all().unwrap();
    File::open(dir).unwrap().sync_all().unwrap();
    let slot = [0x33u8; 60];
    let mut seq = 0u64;
    group.bench_function("witness_pwrite_fdatasync", |b| {
        b.iter(|| {
            seq += 1;
            std::os::unix::fs::FileExt::write_all_at(&witness, &slot, (seq % 2) * 60).unwrap();
            witness.sync_data().unwrap();
        });
    });
    group.finish();
}

/// The authentication's own cost: no disk.
fn authentication(c: &mut Criterion, len: usize) {
    let mut group = c.benchmark_group("auth");
    let memory = MemoryBackend::new();
    bench_commit(
        &mut group,
        "memory_commit",
        "engine=memory bench=engine_commit",
        &|batch| memory.commit(batch),
        &Vec::new,
        &one_put(len),
    );
    let (auth, _) =
        AuthenticatedBackend::open(Arc::new(MemoryBackend::new()), &common::root()).unwrap();
    bench_commit(
        &mut group,
        "memory_authenticated_commit",
        "engine=memory bench=authenticated_commit",
        &|batch| auth.commit(batch),
        &Vec::new,
        &one_put(len),
    );
    group.finish();
}

/// sled committed by hand: one `insert`, sled's `flush`, and (with `sync`) an `fdatasync`
/// of sled's `db` file.
fn sled_by_hand(group: &mut Group<'_>, dir: &Path, len: usize, sync: bool) {
    let db = sled::Config::new()
        .path(dir)
        .flush_every_ms(None)
        .open()
        .unwrap();
    let tree = db.open_tree("keys").unwrap();
    let data = File::open(dir.join("db")).unwrap();
    let values = values(len);
    settle();
    let mut n = 0u64;
    let name = if sync {
        "sled_insert_flush_fdatasync"
    } else {
        "sled_insert_flush"
    };
    group.bench_function(name, |b| {
        b.iter(|| {
            n += 1;
            tree.insert([1u8; 16], values[(n % 2) as usize].as_slice())
                .unwrap();
            db.flush().unwrap();
            if sync {
                data.sync_data().unwrap();
            }
        });
    });
}

/// Durable enable/disable of `key` in turn, one per iteration.
fn toggle(group: &mut Group<'_>, kms: &Kms, disk: &Disk, key: KeyId, name: &str) {
    let mut on = kms.get_key(key).unwrap().key.status == KeyStatus::Enabled;
    let mut n = 0u64;
    let before = disk.syncs();
    group.bench_function(name, |b| {
        b.iter(|| {
            on = !on;
            n += 1;
            if on {
                kms.enable_key(key, None).unwrap()
            } else {
                kms.disable_key(key, None).unwrap()
            }
        });
    });
    let after = disk.syncs();
    report(
        &format!("engine={} bench={name}", disk.name()),
        &[("commits", n), ("data_syncs", after.0 - before.0)],
    );
}

/// Entries per table of the populated engine store: about the keys the `Kms` benchmarks
/// below leave in theirs.
const POPULATED: u64 = 10_000;

/// The writes of key number `i` of a populated store, about as the authenticated store
/// writes a new key (the record, its name, material and reservation, each with its tag; the
/// key counter and the state record in the meta table), the record's value starting with
/// `byte`.
fn key_writes(i: u64, len: usize, byte: u8) -> Vec<Write> {
    let mut id = [0u8; 16];
    id[8..].copy_from_slice(&i.to_be_bytes());
    let mut version = id.to_vec();
    version.extend_from_slice(&1u32.to_be_bytes());
    let put = |table, key: Vec<u8>, len: usize| Write::Put {
        table,
        key,
        value: vec![byte; len],
    };
    vec![
        put(Table::Keys, id.to_vec(), len + 32),
        put(Table::Names, format!("key-{i}").into_bytes(), 16 + 32),
        put(
            Table::Materials,
            version.clone(),
            keylife::crypto::SEALED_MATERIAL_LEN + 32,
        ),
        put(Table::Usage, version, 8 + 32),
        put(Table::Meta, b"origin-keys".to_vec(), 8 + 32),
        put(Table::Meta, b"state".to_vec(), 41),
    ]
}

/// The engine's own commits on a store of [`POPULATED`] keys (4 tables of that many entries,
/// written in a few large commits first): the record of a key in the middle rewritten, as an
/// enable/disable does, and a new key's writes, as a `create_key` does.
fn populated(group: &mut Group<'_>, engine: Engine, dir: &Path, len: usize) {
    let name = engine.name();
    let disk = Disk::open(engine, dir);
    for chunk in (0..POPULATED).collect::<Vec<_>>().chunks(1000) {
        let batch: Vec<Write> = chunk
            .iter()
            .flat_map(|&i| key_writes(i, len, 0x11))
            .collect();
        disk.backend().commit(&batch).unwrap();
    }
    let middle = POPULATED / 2;
    let record = |byte| key_writes(middle, len, byte)[..1].to_vec();
    bench_commit(
        group,
        "engine_commit_populated",
        &format!("engine={name} bench=engine_commit_populated"),
        &|batch| disk.backend().commit(batch),
        &|| vec![("data_syncs", disk.syncs().0)],
        &[record(0x5a), record(0xa5)],
    );
    let mut next = POPULATED;
    let before = disk.syncs().0;
    let mut n = 0u64;
    group.bench_function("engine_commit_create_shape_populated", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                next += 1;
                let batch = key_writes(next, len, 0x22);
                let started = Instant::now();
                disk.backend().commit(&batch).unwrap();
                total += started.elapsed();
            }
            n += iters;
            total
        });
    });
    report(
        &format!("engine={name} bench=engine_commit_create_shape_populated"),
        &[("commits", n), ("data_syncs", disk.syncs().0 - before)],
    );
}

fn engine(c: &mut Criterion, engine: Engine, dir: &Path, len: usize) {
    let name = engine.name();
    let mut group = c.benchmark_group(format!("durable/{name}"));
    group.sample_size(20);

    // The engine's own durable commit of one Put.
    let raw = Disk::open(engine, &dir.join("raw"));
    bench_commit(
        &mut group,
        "engine_commit",
        &format!("engine={name} bench=engine_commit"),
        &|batch| raw.backend().commit(batch),
        &|| {
            let (data, dir) = raw.syncs();
            vec![("data_syncs", data), ("dir_syncs", dir)]
        },
        &one_put(len),
    );
    // The engine's commit of what the authenticated store writes for that Put.
    bench_commit(
        &mut group,
        "engine_commit_authenticated_shape",
        &format!("engine={name} bench=engine_commit_authenticated_shape"),
        &|batch| raw.backend().commit(batch),
        &|| {
            let (data, dir) = raw.syncs();
            vec![("data_syncs", data), ("dir_syncs", dir)]
        },
        &authenticated_shape(len),
    );
    bench_commit(
        &mut group,
        "engine_commit_create_shape",
        &format!("engine={name} bench=engine_commit_create_shape"),
        &|batch| raw.backend().commit(batch),
        &|| {
            let (data, dir) = raw.syncs();
            vec![("data_syncs", data), ("dir_syncs", dir)]
        },
        &create_shape(len),
    );
    drop(raw);
    populated(&mut group, engine, &dir.join("populated"), len);
    if engine == Engine::Sled {
        sled_by_hand(&mut group, &dir.join("hand"), len, true);
        sled_by_hand(&mut group, &dir.join("hand-nosync"), len, false);
    }

    // The same Put through the authenticated store over the engine (MACs, digest, state
    // record, witness sync).
    let disk = Disk::open(engine, &dir.join("auth"));
    let (auth, _) = AuthenticatedBackend::open(disk.backend(), &common::root()).unwrap();
    bench_commit(
        &mut group,
        "authenticated_commit",
        &format!("engine={name} bench=authenticated_commit"),
        &|batch| auth.commit(batch),
        &|| {
            let (data, dir) = disk.syncs();
            vec![
                ("data_syncs", data),
                ("dir_syncs", dir),
                ("witness_syncs", auth.witness_syncs().data),
                ("witness_dir_syncs", auth.witness_syncs().dir),
            ]
        },
        &one_put(len),
    );
    drop(auth);
    drop(disk);

    // Durable mutations through a Kms on the engine.
    let disk = Disk::open(engine, &dir.join("kms"));
    let kms = Kms::with_backend(
        disk.backend(),
        common::root(),
        KmsOptions::new("bench").limits(common::limits(1_000_000)),
    )
    .unwrap();
    let key = kms.create_key(&CreateKey::new("bench")).unwrap().id;
    settle();
    // On a store of one key (the engine's commit above is on a store of one entry).
    toggle(&mut group, &kms, &disk, key, "enable_disable_key");
    // Rotation is limited to 10 manual rotations per key: a fresh key (made outside the
    // measured time) every 10 rotations.
    let mut current = key;
    let mut used = 10;
    let mut fresh = 0u64;
    group.bench_function("rotate_key", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                if used == 10 {
                    fresh += 1;
                    current = kms
                        .create_key(&CreateKey::new(format!("r{fresh}")))
                        .unwrap()
                        .id;
                    used = 0;
                }
                let started = Instant::now();
                kms.rotate_key(current, None).unwrap();
                total += started.elapsed();
                used += 1;
            }
            total
        });
    });
    let mut i = 0u64;
    let before = disk.syncs();
    group.bench_function("create_key", |b| {
        b.iter(|| {
            i += 1;
            kms.create_key(&CreateKey::new(format!("k{i}"))).unwrap()
        });
    });
    let after = disk.syncs();
    report(
        &format!("engine={name} bench=create_key"),
        &[("commits", i), ("data_syncs", after.0 - before.0)],
    );
    // Again, on the store that the benchmarks above filled with thousands of keys.
    let keys = fresh + i + 1;
    toggle(
        &mut group,
        &kms,
        &disk,
        key,
        "enable_disable_key_after_create",
    );
    report(
        &format!("engine={name} bench=store_size"),
        &[("keys", keys)],
    );
    group.finish();

    // The same mutation (enable/disable) from 1 and from 8 threads, each on its own key.
    let keys: Vec<_> = (0..8)
        .map(|t| kms.create_key(&CreateKey::new(format!("t{t}"))).unwrap().id)
        .collect();
    let mut group = c.benchmark_group(format!("threads/{name}"));
    group.sample_size(10);
    for threads in [1usize, 8] {
        let mutations = AtomicU64::new(0);
        let before = disk.syncs();
        group.throughput(Throughput::Elements(threads as u64));
        group.bench_function(format!("enable_disable_x{threads}"), |b| {
            b.iter_custom(|iters| {
                let started = Instant::now();
                std::thread::scope(|scope| {
                    for &key in &keys[..threads] {
                        let kms = &kms;
                        scope.spawn(move || {
                            for k in 0..iters {
                                if k % 2 == 0 {
                                    kms.disable_key(key, None).unwrap();
                                } else {
                                    kms.enable_key(key, None).unwrap();
                                }
                            }
                        });
                    }
                });
                let elapsed = started.elapsed();
                mutations.fetch_add(iters * threads as u64, Ordering::Relaxed);
                elapsed
            });
        });
        let after = disk.syncs();
        report(
            &format!("engine={name} bench=enable_disable_x{threads}"),
            &[
                ("commits", mutations.load(Ordering::Relaxed)),
                ("data_syncs", after.0 - before.0),
            ],
        );
    }
    group.finish();
}

fn lifecycle(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let len = record_len();
    baselines(c, dir.path(), len);
    authentication(c, len);
    for e in Engine::ALL {
        let engine_dir = dir.path().join(e.name());
        std::fs::create_dir_all(&engine_dir).unwrap();
        engine(c, e, &engine_dir, len);
    }
}

criterion_group!(benches, lifecycle);
criterion_main!(benches);
