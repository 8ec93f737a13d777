//! `keylife root-key rotate` killed with SIGKILL at many instants spread over its whole run, on
//! a store of 1,000 keys with a ciphertext of each: after every kill the store opens with
//! exactly one of the two root keys (the other is refused with `wrong-root-key`), every check
//! of an open passes (tags, state digest, witness), and every ciphertext decrypts. The next
//! rotation starts from whichever key holds the store.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::root;
use keylife::store::Engine;
use keylife::{CreateKey, KeyId, Kms, KmsOptions, Limits};

const BIN: &str = env!("CARGO_BIN_EXE_keylife");
const KEYS: usize = 1000;
const THREADS: usize = 8;
/// Kill instants, spread evenly from 0 to 1.25 times an unkilled run.
const KILLS: usize = 32;

struct Store {
    data: PathBuf,
    dir: PathBuf,
    /// The root key files: root(1) and root(2).
    files: [PathBuf; 2],
    sealed: Vec<(KeyId, Vec<u8>, usize)>,
}

fn options() -> KmsOptions {
    KmsOptions::new("z").limits(Limits {
        key_quota: KEYS + 10,
        ..Limits::default()
    })
}

fn make_store(base: &Path, engine: Engine) -> Store {
    let data = base.join("data");
    let dir = data.join("z");
    let kms = Arc::new(Kms::open(&dir, root(1), options().engine(engine)).unwrap());
    // Created from several threads, so that their commits are grouped.
    let sealed: Vec<(KeyId, Vec<u8>, usize)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let kms = Arc::clone(&kms);
                scope.spawn(move || {
                    (t..KEYS)
                        .step_by(THREADS)
                        .map(|n| {
                            let id = kms.create_key(&CreateKey::new(format!("k{n}"))).unwrap().id;
                            let c = kms.encrypt(id, &n.to_be_bytes(), None).unwrap();
                            (id, c.ciphertext, n)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    drop(kms);
    let files = [1u8, 2].map(|byte| {
        let file = base.join(format!("root-{byte}.key"));
        std::fs::write(&file, BASE64.encode([byte; 32]) + "\n").unwrap();
        file
    });
    Store {
        data,
        dir,
        files,
        sealed,
    }
}

/// Which root key (0: root(1), 1: root(2)) opens the store, checking that the other is
/// refused with `wrong-root-key` and that every ciphertext decrypts under the one that opens.
fn holder(store: &Store, context: &str) -> usize {
    // One at a time (a store has one user): each open's outcome, the store closed after.
    let outcomes = [1u8, 2].map(|byte| Kms::open(&store.dir, root(byte), options()).map(drop));
    let index = match outcomes {
        [Ok(()), Err(other)] => {
            assert_eq!(other.code(), "wrong-root-key", "{context}: root 2: {other}");
            0
        }
        [Err(other), Ok(())] => {
            assert_eq!(other.code(), "wrong-root-key", "{context}: root 1: {other}");
            1
        }
        [Ok(()), Ok(())] => panic!("{context}: both root keys open the store"),
        [Err(one), Err(two)] => {
            panic!("{context}: neither root key opens the store: {one} / {two}")
        }
    };
    let kms = Kms::open(
        &store.dir,
        root(u8::try_from(index).unwrap() + 1),
        options(),
    )
    .unwrap();
    for (id, ciphertext, n) in &store.sealed {
        let opened = kms
            .decrypt(*id, ciphertext, None)
            .unwrap_or_else(|e| panic!("{context}: key {id}: {e}"));
        assert_eq!(opened.plaintext.as_bytes(), n.to_be_bytes(), "{context}");
    }
    assert_eq!(kms.list_keys().unwrap().kms_keys.len(), KEYS, "{context}");
    index
}

/// Starts `keylife root-key rotate` from key `from` to the other.
fn start_rotation(store: &Store, from: usize) -> std::process::Child {
    Command::new(BIN)
        .arg("root-key")
        .arg("rotate")
        .arg("--data")
        .arg(&store.data)
        .arg("--zone")
        .arg("z")
        .arg("--root-key-file")
        .arg(&store.files[from])
        .arg("--new-root-key-file")
        .arg(&store.files[1 - from])
        .env_remove("KEYLIFE_ROOT_KEY")
        .env_remove("KEYLIFE_DATA")
        .env_remove("KEYLIFE_ZONE")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn killed_at_many_instants(engine: Engine) {
    let base = tempfile::tempdir().unwrap();
    let store = make_store(base.path(), engine);
    assert_eq!(store.sealed.len(), KEYS);
    assert_eq!(holder(&store, "before"), 0);

    // One run to its end: how long a rotation takes.
    let started = Instant::now();
    let status = start_rotation(&store, 0).wait().unwrap();
    let full = started.elapsed();
    assert!(status.success(), "an unkilled rotation failed");
    let mut current = holder(&store, "after a whole run");
    assert_eq!(current, 1, "the rotation completed");

    let mut rotated = 0;
    let kill_at = |at: Duration, current: &mut usize| {
        let mut child = start_rotation(&store, *current);
        std::thread::sleep(at);
        let _ = child.kill();
        let status = child.wait().unwrap();
        let context = format!("{engine}, killed at {at:?} of {full:?} ({status})");
        let now = holder(&store, &context);
        let completed = now != *current;
        *current = now;
        completed
    };
    for point in 0..KILLS {
        let at = full.mul_f64(1.25 * point as f64 / (KILLS - 1) as f64);
        rotated += usize::from(kill_at(at, &mut current));
    }
    // On a loaded machine the runs after the first may all be slower than it: kill later
    // until one completes (a few times at most), so that the kills land on both sides. (A
    // run of the whole suite, with other builds on the machine, failed this test once.)
    let mut later = 2.0;
    while rotated == 0 && later <= 16.0 {
        rotated += usize::from(kill_at(full.mul_f64(later), &mut current));
        later *= 2.0;
    }
    // And the other way (the first run was the slow one): kill at once until one does not.
    let mut tries = 0;
    while rotated == KILLS && tries < 4 {
        if !kill_at(Duration::ZERO, &mut current) {
            rotated -= 1;
        }
        tries += 1;
    }
    // The kills landed on both sides of the commit.
    assert!(rotated > 0, "{engine}: no killed run completed ({full:?})");
    assert!(
        rotated < KILLS,
        "{engine}: every killed run completed ({full:?})"
    );
    eprintln!(
        "{engine}: a rotation of {KEYS} keys took {full:?}; {rotated} of {KILLS} killed runs completed"
    );
}

#[test]
fn a_rotation_killed_at_any_instant_leaves_one_key_and_every_ciphertext_sled() {
    killed_at_many_instants(Engine::Sled);
}

#[test]
fn a_rotation_killed_at_any_instant_leaves_one_key_and_every_ciphertext_redb() {
    killed_at_many_instants(Engine::Redb);
}
