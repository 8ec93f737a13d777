//! Crash test, on each engine: a writer process makes durable changes to a store and
//! acknowledges each one on stdout once the call returned `Ok`; the test kills it with SIGKILL
//! at random moments, reopens the store each time (which checks it as a whole: every entry's
//! MAC, the state digest, the sequence against the witness) and checks that every
//! acknowledged change is there and every acknowledged ciphertext decrypts.
//!
//! The writer is this test binary itself: [`crash_writer`] is a no-op unless
//! `KEYLIFE_CRASH_WRITER` names a store directory, and the parent test runs the binary again
//! with `--exact crash_writer` and that variable set. The writer never exits by itself.
//!
//! Lines of the writer (one `write` each, flushed at once):
//! - `ready`: the store is open;
//! - `begin <op> <target>`: a call is about to start;
//! - `ack create <id> <name>`, `ack rotate <id> <version>`, `ack disable <id>`,
//!   `ack enable <id>`, `ack schedule <id> <delete-at>`, `ack cancel <id>`,
//!   `ack rotation-on <id>`, `ack rotation-off <id>`,
//!   `ack encrypt <id> <hex ciphertext> <hex plaintext> <hex context or ->`: it returned `Ok`.
//!
//! `KEYLIFE_CRASH_ROUNDS` overrides the number of rounds (default 60).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufRead, BufReader, Write as _};
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use keylife::store::Engine;
use keylife::{CreateKey, KeyId, KeyStatus, KeySummary, Kms, KmsOptions, Limits};

use common::root;

const WRITER_TEST: &str = "crash_writer";
const ENV_DIR: &str = "KEYLIFE_CRASH_WRITER";
const ENV_SEED: &str = "KEYLIFE_CRASH_SEED";
const ENV_ROUND: &str = "KEYLIFE_CRASH_ROUND";
const ENV_ROUNDS: &str = "KEYLIFE_CRASH_ROUNDS";
const ENV_ENGINE: &str = "KEYLIFE_CRASH_ENGINE";
const ZONE: &str = "ch-gva-2";
const ROOT_BYTE: u8 = 42;
/// Scheduled deletions wait this long: nothing is destroyed during the test.
const DELETION_DAYS: u32 = 30;
/// The writer stops creating keys once the store holds this many.
const MAX_KEYS: usize = 100;
/// Manual rotations allowed per key (keylife's limit).
const MAX_MANUAL_ROTATIONS: u32 = 10;

/// splitmix64: a small deterministic generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap()
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    if text == "-" {
        return Vec::new();
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// The material version named in a ciphertext's header.
fn ciphertext_version(ciphertext: &[u8]) -> u32 {
    u32::from_be_bytes(ciphertext[17..21].try_into().unwrap())
}

fn options(limits: Limits) -> KmsOptions {
    KmsOptions::new(ZONE).limits(limits)
}

// ----- the writer ---------------------------------------------------------------------

/// One line to stdout, in one write, flushed: what the parent reads after the kill.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    out.write_all(format!("{line}\n").as_bytes()).unwrap();
    out.flush().unwrap();
}

/// What the writer knows of a key (it is the only writer, so it knows exactly).
struct WriterKey {
    id: KeyId,
    status: KeyStatus,
    manual_rotations: u32,
    automatic_rotation: bool,
}

#[derive(Clone, Copy)]
enum Op {
    Create,
    Rotate,
    Disable,
    Enable,
    Schedule,
    Cancel,
    RotationOn,
    RotationOff,
    Encrypt,
}

impl Op {
    /// Operations and their weights.
    const WEIGHTED: [(Op, u64); 9] = [
        (Op::Create, 3),
        (Op::Rotate, 3),
        (Op::Disable, 2),
        (Op::Enable, 3),
        (Op::Schedule, 1),
        (Op::Cancel, 1),
        (Op::RotationOn, 1),
        (Op::RotationOff, 1),
        (Op::Encrypt, 8),
    ];

    fn applies(self, key: &WriterKey) -> bool {
        let enabled = key.status == KeyStatus::Enabled;
        match self {
            Op::Create => false,
            Op::Rotate => enabled && key.manual_rotations < MAX_MANUAL_ROTATIONS,
            Op::Disable | Op::Encrypt => enabled,
            Op::Enable => key.status == KeyStatus::Disabled,
            Op::Schedule => key.status != KeyStatus::PendingDeletion,
            Op::Cancel => key.status == KeyStatus::PendingDeletion,
            Op::RotationOn => enabled && !key.automatic_rotation,
            Op::RotationOff => enabled && key.automatic_rotation,
        }
    }
}

/// Runs the writer if this process was started as one (else does nothing).
#[test]
fn crash_writer() {
    let Ok(dir) = std::env::var(ENV_DIR) else {
        return;
    };
    let seed: u64 = std::env::var(ENV_SEED).unwrap().parse().unwrap();
    let round: u64 = std::env::var(ENV_ROUND).unwrap().parse().unwrap();
    write_forever(Path::new(&dir), seed, round);
}

/// Writer threads in `round`: two rounds in three run several, so that concurrent durable
/// changes (which the sled backend groups under one flush) are killed too.
fn writer_threads(round: u64) -> usize {
    if round.is_multiple_of(3) { 1 } else { 4 }
}

fn write_forever(dir: &Path, seed: u64, round: u64) -> ! {
    // A panic in any writer thread ends the process at once (SIGABRT), so that the parent
    // sees it rather than a kill.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        std::process::abort();
    }));
    // Every other round spends a version's encryption budget every few encryptions, so that
    // encrypt rotates by itself (a durable write on the encrypt path); the others run with the
    // default budget, where the first encryption after opening extends the reservation (also a
    // durable write).
    let limits = Limits {
        key_quota: 100_000,
        max_encryptions_per_version: if round % 2 == 1 { 3 } else { 1 << 32 },
        ..Limits::default()
    };
    let engine: Engine = std::env::var(ENV_ENGINE).unwrap().parse().unwrap();
    let kms =
        Kms::open(dir, root(ROOT_BYTE), options(limits).engine(engine)).expect("the writer opens");
    let threads = writer_threads(round);
    // Each thread owns the keys at its positions: no two threads change one key.
    let mut owned: Vec<Vec<WriterKey>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, k) in kms
        .list_keys()
        .expect("the writer lists")
        .kms_keys
        .into_iter()
        .enumerate()
    {
        owned[i % threads].push(WriterKey {
            id: k.id,
            status: k.status,
            manual_rotations: k.rotation.manual_count,
            automatic_rotation: k.rotation.automatic,
        });
    }
    let keys = AtomicUsize::new(owned.iter().map(Vec::len).sum());
    // On a line of its own: the test harness printed `test crash_writer ... ` before.
    say("\nready");
    thread::scope(|scope| {
        let mut owned = owned.into_iter().enumerate();
        let (_, first) = owned.next().unwrap();
        for (t, mine) in owned {
            let (kms, keys) = (&kms, &keys);
            scope.spawn(move || write_stream(kms, t, mine, Rng(seed ^ t as u64), round, keys));
        }
        write_stream(&kms, 0, first, Rng(seed), round, &keys)
    })
}

/// One thread's endless stream of operations on its own keys.
fn write_stream(
    kms: &Kms,
    thread: usize,
    mut keys: Vec<WriterKey>,
    mut rng: Rng,
    round: u64,
    total_keys: &AtomicUsize,
) -> ! {
    let mut created = 0_u64;
    loop {
        // Now and then a pause, as a service has between requests: a kill then lands after an
        // acknowledgement with nothing else running, where an acknowledged change that was not
        // made durable (only applied in memory) is lost for sure.
        if rng.below(3) == 0 {
            thread::sleep(Duration::from_micros(rng.between(100, 3000)));
        }
        let total: u64 = Op::WEIGHTED.iter().map(|(_, w)| w).sum();
        let mut pick = rng.between(0, total - 1);
        let op = Op::WEIGHTED
            .iter()
            .find(|(_, w)| {
                if pick < *w {
                    true
                } else {
                    pick -= w;
                    false
                }
            })
            .unwrap()
            .0;
        if let Op::Create = op {
            if !keys.is_empty() && total_keys.load(Ordering::Relaxed) >= MAX_KEYS {
                continue;
            }
            let name = format!("r{round}-t{thread}-k{created}");
            created += 1;
            say(&format!("begin create {name}"));
            let key = kms
                .create_key(&CreateKey::new(name.clone()).description(format!("round {round}")))
                .unwrap_or_else(|e| panic!("create {name}: {e}"));
            say(&format!("ack create {} {name}", key.id));
            total_keys.fetch_add(1, Ordering::Relaxed);
            keys.push(WriterKey {
                id: key.id,
                status: KeyStatus::Enabled,
                manual_rotations: 0,
                automatic_rotation: true,
            });
            continue;
        }
        let candidates: Vec<usize> = (0..keys.len()).filter(|&i| op.applies(&keys[i])).collect();
        if candidates.is_empty() {
            continue;
        }
        let key = &mut keys[candidates[rng.below(candidates.len())]];
        let id = key.id;
        let fail = |what: &str, e: keylife::Error| -> ! { panic!("{what} {id}: {e}") };
        match op {
            Op::Create => unreachable!(),
            Op::Rotate => {
                say(&format!("begin rotate {id}"));
                kms.rotate_key(id, None)
                    .unwrap_or_else(|e| fail("rotate", e));
                key.manual_rotations += 1;
                let version = kms
                    .get_key(id)
                    .unwrap_or_else(|e| fail("get", e))
                    .key
                    .material
                    .version;
                say(&format!("ack rotate {id} {version}"));
            }
            Op::Disable => {
                say(&format!("begin disable {id}"));
                kms.disable_key(id, None)
                    .unwrap_or_else(|e| fail("disable", e));
                key.status = KeyStatus::Disabled;
                say(&format!("ack disable {id}"));
            }
            Op::Enable => {
                say(&format!("begin enable {id}"));
                kms.enable_key(id, None)
                    .unwrap_or_else(|e| fail("enable", e));
                key.status = KeyStatus::Enabled;
                say(&format!("ack enable {id}"));
            }
            Op::Schedule => {
                say(&format!("begin schedule {id}"));
                let scheduled = kms
                    .schedule_key_deletion(id, Some(DELETION_DAYS), None)
                    .unwrap_or_else(|e| fail("schedule", e));
                key.status = KeyStatus::PendingDeletion;
                say(&format!("ack schedule {id} {}", scheduled.delete_at));
            }
            Op::Cancel => {
                say(&format!("begin cancel {id}"));
                kms.cancel_key_deletion(id, None)
                    .unwrap_or_else(|e| fail("cancel", e));
                key.status = KeyStatus::Disabled;
                say(&format!("ack cancel {id}"));
            }
            Op::RotationOn => {
                say(&format!("begin rotation-on {id}"));
                kms.enable_key_rotation(id, Some(365), None)
                    .unwrap_or_else(|e| fail("rotation-on", e));
                key.automatic_rotation = true;
                say(&format!("ack rotation-on {id}"));
            }
            Op::RotationOff => {
                say(&format!("begin rotation-off {id}"));
                kms.disable_key_rotation(id, None)
                    .unwrap_or_else(|e| fail("rotation-off", e));
                key.automatic_rotation = false;
                say(&format!("ack rotation-off {id}"));
            }
            Op::Encrypt => {
                let plaintext_len = rng.below(64);
                let plaintext = rng.bytes(plaintext_len);
                let context_len = rng.below(3) * 8;
                let context = rng.bytes(context_len);
                say(&format!("begin encrypt {id}"));
                let sealed = kms
                    .encrypt(id, &plaintext, Some(&context))
                    .unwrap_or_else(|e| fail("encrypt", e))
                    .ciphertext;
                let context_hex = if context.is_empty() {
                    "-".to_owned()
                } else {
                    hex(&context)
                };
                let plaintext_hex = if plaintext.is_empty() {
                    "-".to_owned()
                } else {
                    hex(&plaintext)
                };
                say(&format!(
                    "ack encrypt {id} {} {plaintext_hex} {context_hex}",
                    hex(&sealed)
                ));
            }
        }
    }
}

// ----- the parent ---------------------------------------------------------------------

/// A writer process, killed and reaped when dropped (so that a failing test leaves none).
struct Writer {
    child: Option<Child>,
}

impl Writer {
    fn kill(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        // SIGKILL on Unix. An error means the child is gone already (it exited by itself):
        // `wait` reports how.
        let _ = child.kill();
        child.wait().unwrap()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What one round of the writer printed, and how it ended.
struct RoundOutput {
    lines: Vec<String>,
    /// Killed before it printed `ready`.
    before_ready: bool,
}

/// Runs the writer on `store` and kills it at a moment drawn from `rng`.
fn run_writer(
    engine: Engine,
    store: &Path,
    stderr_path: &Path,
    round: u64,
    rng: &mut Rng,
) -> RoundOutput {
    let exe = std::env::current_exe().unwrap();
    let child = Command::new(exe)
        .args(["--exact", WRITER_TEST, "--nocapture", "--test-threads=1"])
        .env(ENV_DIR, store)
        .env(ENV_ENGINE, engine.name())
        .env(ENV_SEED, rng.next().to_string())
        .env(ENV_ROUND, round.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(File::create(stderr_path).unwrap()))
        .spawn()
        .unwrap();
    let mut writer = Writer { child: Some(child) };
    let stdout = writer.child.as_mut().unwrap().stdout.take().unwrap();
    let (ready_tx, ready_rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut lines = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                // A line cut by the kill (no newline) was not acknowledged.
                Ok(_) if !line.ends_with('\n') => break,
                Ok(_) => {
                    let text = line.trim_end().to_owned();
                    if text == "ready" {
                        let _ = ready_tx.send(());
                    }
                    lines.push(text);
                }
            }
        }
        lines
    });

    // One round in four is killed at a time counted from the start (it may land while the
    // process starts, while sled recovers, or while the store is opened); the others from the
    // moment the store is open, in the middle of the stream of operations.
    let from_start = rng.below(4) == 0;
    if from_start {
        thread::sleep(Duration::from_millis(rng.between(2, 80)));
    } else {
        ready_rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                let status = writer.kill();
                panic!(
                    "round {round}: the writer did not get ready ({status}): {}",
                    std::fs::read_to_string(stderr_path).unwrap_or_default()
                )
            });
        thread::sleep(Duration::from_millis(rng.between(1, 150)));
    }
    let status = writer.kill();
    let lines = reader.join().unwrap();
    assert_eq!(
        status.signal(),
        Some(9),
        "round {round}: the writer must die only of SIGKILL, it ended with {status}; \
         stderr:\n{}",
        std::fs::read_to_string(stderr_path).unwrap_or_default()
    );
    let before_ready = !lines.iter().any(|l| l == "ready");
    RoundOutput {
        lines,
        before_ready,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Enabled,
    Disabled,
    Pending(Timestamp),
}

impl Status {
    fn of(key: &KeySummary) -> Status {
        match key.status {
            KeyStatus::Enabled => Status::Enabled,
            KeyStatus::Disabled => Status::Disabled,
            KeyStatus::PendingDeletion => Status::Pending(key.delete_at.unwrap()),
        }
    }
}

/// What the acknowledgements say of a key.
#[derive(Debug, Clone)]
struct ModelKey {
    name: String,
    status: Status,
    /// The newest material version is at least this.
    version: u32,
    automatic_rotation: bool,
}

/// An acknowledged ciphertext.
struct Sealed {
    id: KeyId,
    ciphertext: Vec<u8>,
    plaintext: Vec<u8>,
    context: Vec<u8>,
    round: u64,
}

#[derive(Default)]
struct Model {
    keys: BTreeMap<KeyId, ModelKey>,
    sealed: Vec<Sealed>,
}

#[derive(Default, Debug)]
struct Stats {
    rounds: u64,
    kills_after_an_ack: u64,
    kills_mid_operation: u64,
    kills_before_ready: u64,
    acks_checked: u64,
    ciphertexts_decrypted: u64,
    in_flight_changes_found_applied: u64,
    /// Rounds with several writer threads, and kills with two calls or more in flight.
    concurrent_rounds: u64,
    kills_with_concurrent_calls: u64,
}

/// The calls that were running when the writer was killed: by target (key id, or name for a
/// creation), the operation of a `begin` with no `ack` after it. Each writer thread has at
/// most one, on its own keys.
fn in_flight(lines: &[String]) -> HashMap<String, String> {
    let mut running = HashMap::new();
    for line in lines {
        let words: Vec<&str> = line.split(' ').collect();
        match words[..] {
            ["begin", op, target] => {
                running.insert(target.to_owned(), op.to_owned());
            }
            ["ack", "create", _, name] => {
                running.remove(name);
            }
            ["ack", _, id, ..] => {
                running.remove(id);
            }
            _ => {}
        }
    }
    running
}

/// Folds one round's acknowledgements into the model; returns how many there were.
fn apply_acks(model: &mut Model, lines: &[String], round: u64) -> u64 {
    let mut acks = 0;
    for line in lines.iter().filter(|l| l.starts_with("ack ")) {
        acks += 1;
        let words: Vec<&str> = line.split(' ').collect();
        let id = KeyId::parse(words[2]).unwrap();
        if words[1] == "create" {
            let previous = model.keys.insert(
                id,
                ModelKey {
                    name: words[3].to_owned(),
                    status: Status::Enabled,
                    version: 1,
                    automatic_rotation: true,
                },
            );
            assert!(previous.is_none(), "round {round}: {line}: created twice");
            continue;
        }
        let key = model
            .keys
            .get_mut(&id)
            .unwrap_or_else(|| panic!("round {round}: {line}: a key the test never saw"));
        match words[1] {
            "rotate" => key.version = key.version.max(words[3].parse().unwrap()),
            "disable" | "cancel" => key.status = Status::Disabled,
            "enable" => key.status = Status::Enabled,
            "schedule" => key.status = Status::Pending(words[3].parse().unwrap()),
            "rotation-on" => key.automatic_rotation = true,
            "rotation-off" => key.automatic_rotation = false,
            "encrypt" => {
                let ciphertext = unhex(words[3]);
                key.version = key.version.max(ciphertext_version(&ciphertext));
                model.sealed.push(Sealed {
                    id,
                    ciphertext,
                    plaintext: unhex(words[4]),
                    context: unhex(words[5]),
                    round,
                });
            }
            other => panic!("round {round}: unknown acknowledgement {other}"),
        }
    }
    acks
}

fn decrypts(kms: &Kms, sealed: &Sealed, when: &str) {
    let opened = kms
        .decrypt(sealed.id, &sealed.ciphertext, Some(&sealed.context))
        .unwrap_or_else(|e| {
            panic!(
                "{when}: a ciphertext acknowledged in round {} (key {}, version {}) does not \
                 decrypt: {e}",
                sealed.round,
                sealed.id,
                ciphertext_version(&sealed.ciphertext)
            )
        });
    assert_eq!(
        opened.plaintext.as_bytes(),
        sealed.plaintext.as_slice(),
        "{when}: wrong plaintext for a ciphertext of round {}",
        sealed.round
    );
}

/// Checks the reopened store against the model (every acknowledged change present, the call
/// in flight either applied or not), then takes the store's state as the model's.
fn check_round(kms: &Kms, model: &mut Model, output: &RoundOutput, round: u64, stats: &mut Stats) {
    let acks = apply_acks(model, &output.lines, round);
    stats.acks_checked += acks;
    let flight = in_flight(&output.lines);
    if acks > 0 {
        stats.kills_after_an_ack += 1;
    }
    if !flight.is_empty() {
        stats.kills_mid_operation += 1;
    }
    if writer_threads(round) > 1 {
        stats.concurrent_rounds += 1;
    }
    if flight.len() > 1 {
        stats.kills_with_concurrent_calls += 1;
    }
    if output.before_ready {
        stats.kills_before_ready += 1;
    }
    let listed = kms
        .list_keys()
        .unwrap_or_else(|e| panic!("round {round}: list_keys after reopening: {e}"))
        .kms_keys;
    let actual: HashMap<KeyId, &KeySummary> = listed.iter().map(|k| (k.id, k)).collect();
    let flight_on = |id: KeyId| flight.get(&id.to_string()).map(String::as_str);
    for (id, want) in &model.keys {
        let got = actual.get(id).unwrap_or_else(|| {
            panic!(
                "round {round}: key {id} ({}) was acknowledged but is gone",
                want.name
            )
        });
        let what = format!("round {round}: key {id} ({})", want.name);
        assert_eq!(got.name, want.name, "{what}: name");
        // Only the call in flight may have changed the key beyond its acknowledged state.
        let status = Status::of(got);
        let status_ok = status == want.status
            || match (flight_on(*id), want.status, status) {
                (Some("disable"), Status::Enabled, Status::Disabled)
                | (Some("enable"), Status::Disabled, Status::Enabled)
                | (Some("cancel"), Status::Pending(_), Status::Disabled) => true,
                (Some("schedule"), Status::Enabled | Status::Disabled, Status::Pending(at)) => {
                    got.status_since
                        .checked_add(jiff::SignedDuration::from_hours(
                            24 * i64::from(DELETION_DAYS),
                        ))
                        .ok()
                        == Some(at)
                }
                _ => false,
            };
        assert!(
            status_ok,
            "{what}: status {status:?}, acknowledged {:?} (in flight: {flight:?})",
            want.status
        );
        let rotation_ok = got.rotation.automatic == want.automatic_rotation
            || matches!(
                (flight_on(*id), want.automatic_rotation),
                (Some("rotation-on"), false) | (Some("rotation-off"), true)
            );
        assert!(
            rotation_ok,
            "{what}: automatic rotation {}, acknowledged {} (in flight: {flight:?})",
            got.rotation.automatic, want.automatic_rotation
        );
        // One thread changes a key, and reports the version of each rotation and encryption:
        // only a call in flight can have made one more.
        let unacknowledged = u32::from(matches!(flight_on(*id), Some("rotate" | "encrypt")));
        assert!(
            (want.version..=want.version + unacknowledged).contains(&got.material.version),
            "{what}: newest material version {}, but version {} was acknowledged (in flight: \
             {flight:?})",
            got.material.version,
            want.version
        );
        if status != want.status || got.rotation.automatic != want.automatic_rotation {
            stats.in_flight_changes_found_applied += 1;
        }
    }
    // A key the model does not know can only be the one whose creation was in flight.
    for key in &listed {
        if model.keys.contains_key(&key.id) {
            continue;
        }
        assert!(
            flight.get(&key.name).is_some_and(|op| op == "create"),
            "round {round}: key {} ({}) exists but its creation was neither acknowledged nor \
             in flight ({flight:?})",
            key.id,
            key.name
        );
        stats.in_flight_changes_found_applied += 1;
        model.keys.insert(
            key.id,
            ModelKey {
                name: key.name.clone(),
                status: Status::Enabled,
                version: 1,
                automatic_rotation: true,
            },
        );
    }
    // From here on, the store's state is the truth the next rounds build on.
    for key in &listed {
        let model_key = model.keys.get_mut(&key.id).unwrap();
        model_key.status = Status::of(key);
        model_key.version = key.material.version;
        model_key.automatic_rotation = key.rotation.automatic;
    }
    // This round's ciphertexts, and a sample of older ones, decrypt where the key is enabled
    // (the rest wait for the end, where every key is enabled first).
    let mut sample = Rng(round.wrapping_mul(31) ^ 0xDEC0DE);
    let enabled = |id: &KeyId| model.keys[id].status == Status::Enabled;
    for sealed in &model.sealed {
        if enabled(&sealed.id) && (sealed.round == round || sample.below(20) == 0) {
            decrypts(kms, sealed, &format!("round {round}"));
            stats.ciphertexts_decrypted += 1;
        }
    }
}

fn rounds() -> u64 {
    std::env::var(ENV_ROUNDS).map_or(60, |n| n.parse().unwrap())
}

fn open(store: &Path, round: u64) -> Kms {
    Kms::open(store, root(ROOT_BYTE), options(Limits::default())).unwrap_or_else(|e| {
        panic!("round {round}: the store does not open after the kill: {e} ({e:?})")
    })
}

#[test]
fn acknowledged_changes_survive_sigkill_sled() {
    acknowledged_changes_survive_sigkill(Engine::Sled);
}

#[test]
fn acknowledged_changes_survive_sigkill_redb() {
    acknowledged_changes_survive_sigkill(Engine::Redb);
}

fn acknowledged_changes_survive_sigkill(engine: Engine) {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let store: PathBuf = dir.path().join("store");
    let stderr_path = dir.path().join("writer.stderr");
    let mut model = Model::default();
    let mut stats = Stats::default();
    let rounds = rounds();
    for round in 0..rounds {
        let mut rng = Rng(round.wrapping_mul(0x1000_0001) ^ 0xC0FFEE);
        let output = run_writer(engine, &store, &stderr_path, round, &mut rng);
        let kms = open(&store, round);
        check_round(&kms, &mut model, &output, round, &mut stats);
        drop(kms);
        stats.rounds += 1;
    }

    // Every key enabled (the last changes of the test), then every ciphertext decrypts.
    let kms = open(&store, rounds);
    for (id, key) in &model.keys {
        if let Status::Pending(_) = key.status {
            kms.cancel_key_deletion(*id, None).unwrap();
        }
        if key.status != Status::Enabled {
            kms.enable_key(*id, None).unwrap();
        }
    }
    for sealed in &model.sealed {
        decrypts(&kms, sealed, "at the end");
        stats.ciphertexts_decrypted += 1;
    }
    // The store was created with the engine asked for (and reopened with it after each kill).
    assert_eq!(keylife::store::Engine::detect(&store), Some(engine));
    eprintln!(
        "crash test, {engine}: {} rounds, {} kills after at least one ack, {} kills mid-operation, {} \
         kills before the store was open; {} rounds with {} writer threads, {} kills with \
         several calls in flight; {} acks checked, {} in-flight changes found applied; {} keys, \
         {} acknowledged ciphertexts, {} decryptions; {:.1} s",
        stats.rounds,
        stats.kills_after_an_ack,
        stats.kills_mid_operation,
        stats.kills_before_ready,
        stats.concurrent_rounds,
        writer_threads(1),
        stats.kills_with_concurrent_calls,
        stats.acks_checked,
        stats.in_flight_changes_found_applied,
        model.keys.len(),
        model.sealed.len(),
        stats.ciphertexts_decrypted,
        started.elapsed().as_secs_f64()
    );
    assert!(stats.rounds >= 50.min(rounds), "{stats:?}");
    if rounds >= 50 {
        // The kills must land in the stream of operations, not only around it.
        assert!(
            stats.kills_after_an_ack >= rounds / 2,
            "too few kills after an acknowledgement: {stats:?}"
        );
        assert!(
            stats.kills_mid_operation >= rounds / 4,
            "too few kills in the middle of an operation: {stats:?}"
        );
    }
}
