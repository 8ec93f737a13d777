//! Fault injection: a backend that fails its Nth commit, either before applying it (`storage`:
//! nothing happened) or after applying it but before it is known durable (`not-durable`, as
//! sled does when its flush fails), under every operation of `Kms` that writes, at every
//! commit that operation makes.
//!
//! For each case (a table below) a dry run on a healthy backend counts the operation's commits
//! and records the state it leads to. Then, for each commit N and each kind of failure:
//! - before applying: the call fails with `storage`; the store is byte for byte as before; the
//!   key reads exactly as before (get-kms-key, list-kms-keys) and encrypts and decrypts as its
//!   status says, and a key the failed batch would have created is unknown to the `Kms` too;
//!   the same call then succeeds and leads to the dry run's state (the key, the replica, and
//!   every entry of the store, ids and random material aside), which a fresh `Kms` over the
//!   store also sees. A commit made after the change is durable (a replica's delivery state,
//!   recorded by the background delivery the operation queued, which is waited for) does not
//!   fail the call: the next sync catches up.
//!
//! The dry run also checks that a destroyed key leaves nothing in the store but its tombstone
//! (a replicated key), and a separate test that an unchanged key is not written at all.
//! - after applying: the call fails with `not-durable` (or, for the bookkeeping after a durable
//!   change, succeeds), and the `Kms` refuses every call with `not-durable` and writes nothing
//!   more; reopened over the same backend, the store holds exactly the old state plus the
//!   failed batch, the key is either as before or as after (never a mix), and everything works.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use keylife::store::{Backend, Entries, MemoryBackend, Store, Table, Write};
use keylife::{
    CreateKey, DataKeySpec, Error, KeyDetails, KeyId, KeyStatus, KeySummary, Kms, KmsOptions,
    Limits, LocalLink, ManualClock,
};

use common::{root, start};

const ZONE: &str = "ch-gva-2";
const REPLICA_ZONE: &str = "de-fra-1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The commit fails before anything is applied: `storage`.
    BeforeApply,
    /// The commit is applied, then its flush fails: `not-durable`.
    AfterApply,
}

/// Every table's entries, in [`Table::ALL`] order.
type Dump = Vec<Entries>;

fn dump(backend: &dyn Backend) -> Dump {
    Table::ALL
        .iter()
        .map(|table| backend.scan(*table, &[], None, usize::MAX).unwrap())
        .collect()
}

/// `dump` with `batch` applied (what a store holds after the batch went through).
fn dump_with(dump: &Dump, batch: &[Write]) -> Dump {
    let memory = MemoryBackend::new();
    let mut load = Vec::new();
    for (table, entries) in Table::ALL.iter().zip(dump) {
        for (key, value) in entries {
            load.push(Write::Put {
                table: *table,
                key: key.clone(),
                value: value.clone(),
            });
        }
    }
    memory.commit(&load).unwrap();
    memory.commit(batch).unwrap();
    self::dump(&memory)
}

/// The store as the `Kms` reads it, with what differs between runs blanked: the ids of the
/// subject and the bystander replaced by placeholders, sealed material, the root-key check
/// value and the store id (random) by their length. Reservations are returned apart: a failed encryption counts, so a retry
/// may reserve a little more than a healthy run.
type Shape = (Vec<(Table, Vec<u8>, Vec<u8>)>, Vec<(Vec<u8>, u64)>);

fn shape(env: &Env, s: &Subject) -> Shape {
    let mut ids = vec![(s.bystander.0, 0xbb)];
    if let Some(id) = s.id.or_else(|| env.store().id_by_name(s.name).unwrap()) {
        ids.push((id, 0xaa));
    }
    let blank = |bytes: &[u8]| {
        let mut out = bytes.to_vec();
        for (id, tag) in &ids {
            let id = id.as_bytes();
            let mut i = 0;
            while i + id.len() <= out.len() {
                if &out[i..i + id.len()] == id {
                    out[i..i + id.len()].fill(*tag);
                    i += id.len();
                } else {
                    i += 1;
                }
            }
        }
        out
    };
    let mut entries = Vec::new();
    let mut reserved = Vec::new();
    for (table, rows) in Table::ALL.iter().zip(env.view_dump()) {
        for (key, value) in rows {
            let value = match table {
                // The seal ids in a record are random: zeroed.
                Table::Keys => {
                    let id = KeyId::from_bytes(key.as_slice().try_into().unwrap());
                    let (record, seal_ids) =
                        keylife::store::codec::decode_record_sealed(id, &value).unwrap();
                    let zeros = vec![[0; 16]; seal_ids.len()];
                    blank(&keylife::store::codec::encode_record_sealed(&record, &zeros).unwrap())
                }
                Table::Materials => value.len().to_be_bytes().to_vec(),
                Table::Meta if key == b"root-check" || key == b"store-id" => {
                    value.len().to_be_bytes().to_vec()
                }
                Table::Usage => {
                    let count = u64::from_be_bytes(value.as_slice().try_into().unwrap());
                    reserved.push((blank(&key), count));
                    Vec::new()
                }
                _ => blank(&value),
            };
            entries.push((*table, blank(&key), value));
        }
    }
    entries.sort();
    reserved.sort();
    (entries, reserved)
}

/// `got` is the store `want` is, reservations at least as far.
fn assert_shape(got: &Shape, want: &Shape, what: &str) {
    assert_eq!(got.0.len(), want.0.len(), "{what}: entries in the store");
    for (got, want) in got.0.iter().zip(&want.0) {
        assert_eq!(got, want, "{what}: store entry");
    }
    assert_eq!(got.1.len(), want.1.len(), "{what}: reservations");
    for ((key, got), (_, want)) in got.1.iter().zip(&want.1) {
        assert!(
            got >= want,
            "{what}: {got} encryptions reserved at {key:?}, a healthy run has {want}"
        );
    }
}

/// The injected failure, once it happened.
struct Fired {
    /// The store just before the failing commit.
    before: Dump,
    /// The batch of the failing commit.
    batch: Vec<Write>,
}

#[derive(Default)]
struct FaultState {
    /// Commits since the last `arm` or `count_from_zero`.
    commits: usize,
    armed: Option<(usize, Mode)>,
    fired: Option<Fired>,
}

/// A [`MemoryBackend`] whose Nth commit after [`Faulty::arm`] fails.
#[derive(Default)]
struct Faulty {
    inner: MemoryBackend,
    state: Mutex<FaultState>,
}

impl Faulty {
    fn arm(&self, n: usize, mode: Mode) {
        let mut state = self.state.lock().unwrap();
        *state = FaultState {
            commits: 0,
            armed: Some((n, mode)),
            fired: None,
        };
    }

    fn disarm(&self) -> Option<Fired> {
        let mut state = self.state.lock().unwrap();
        state.armed = None;
        state.fired.take()
    }

    fn count_from_zero(&self) {
        self.state.lock().unwrap().commits = 0;
    }

    fn commits(&self) -> usize {
        self.state.lock().unwrap().commits
    }
}

impl Backend for Faulty {
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
        let mut state = self.state.lock().unwrap();
        state.commits += 1;
        let Some((n, mode)) = state.armed else {
            return self.inner.commit(batch);
        };
        if state.commits != n {
            return self.inner.commit(batch);
        }
        state.fired = Some(Fired {
            before: dump(&self.inner),
            batch: batch.to_vec(),
        });
        match mode {
            Mode::BeforeApply => Err(Error::Storage {
                detail: format!("injected failure of commit {n} before applying"),
            }),
            Mode::AfterApply => {
                self.inner.commit(batch)?;
                Err(Error::NotDurable {
                    detail: format!("injected flush failure of commit {n}"),
                })
            }
        }
    }
}

/// One store, its clock, and for the replication cases a second zone on a link.
struct Env {
    backend: Arc<Faulty>,
    clock: ManualClock,
    limits: Limits,
    link: Option<Arc<LocalLink>>,
    /// The replica zone (in memory, never faulty; the link holds it weakly).
    replica: Option<Arc<Kms>>,
    kms: Option<Kms>,
}

impl Env {
    fn new(case: &Case) -> Env {
        let clock = ManualClock::new(start());
        let link = case.replicated.then(LocalLink::new);
        let replica = link.as_ref().map(|link| {
            let replica = Arc::new(
                Kms::open_in_memory(
                    root(2),
                    KmsOptions::new(REPLICA_ZONE)
                        .clock(clock.clone())
                        .link(link.clone()),
                )
                .unwrap(),
            );
            link.attach(&replica);
            replica
        });
        let mut env = Env {
            backend: Arc::new(Faulty::default()),
            clock,
            limits: case.limits,
            link,
            replica,
            kms: None,
        };
        env.kms = Some(env.open());
        env
    }

    fn open(&self) -> Kms {
        let mut options = KmsOptions::new(ZONE)
            .clock(self.clock.clone())
            .limits(self.limits);
        if let Some(link) = &self.link {
            options = options.link(link.clone());
        }
        Kms::with_backend(self.backend.clone(), root(1), options).unwrap()
    }

    fn kms(&self) -> &Kms {
        self.kms.as_ref().unwrap()
    }

    /// Drops the `Kms` (only one may serve a backend) and opens a new one over the store.
    fn reopen(&mut self) {
        drop(self.kms.take());
        self.kms = Some(self.open());
    }

    fn store(&self) -> Store {
        let backend: Arc<dyn Backend> = self.backend.clone();
        common::view(&backend)
    }

    fn dump(&self) -> Dump {
        dump(&self.backend.inner)
    }

    /// The store as the `Kms` reads it: values without their tags, no state record.
    fn view_dump(&self) -> Dump {
        let backend: Arc<dyn Backend> = self.backend.clone();
        let (view, _) = keylife::store::AuthenticatedBackend::open(backend, &root(1)).unwrap();
        dump(&view)
    }
}

/// The key an operation works on, and ciphertexts to check it (and a bystander) with.
struct Subject {
    name: &'static str,
    /// Known once created (before the operation for every case but creation).
    id: Option<KeyId>,
    /// (ciphertext, plaintext) under the subject.
    sealed: Vec<(Vec<u8>, Vec<u8>)>,
    /// Another key, enabled, that no operation touches, and a ciphertext of it.
    bystander: (KeyId, Vec<u8>),
}

impl Subject {
    fn id(&self) -> KeyId {
        self.id.expect("the subject exists")
    }
}

struct Case {
    name: &'static str,
    limits: Limits,
    /// A second zone on a link, for replication.
    replicated: bool,
    /// The subject's deletion is due before the operation: any read through the `Kms`
    /// destroys it, so its state is read from the store.
    due: bool,
    /// Commits of the operation on a healthy store.
    commits: usize,
    /// The first `change_commits` commits make the change: their failure fails the call. The
    /// ones after record deliveries to replicas, after the change is durable.
    change_commits: usize,
    setup: fn(&mut Env) -> Subject,
    op: fn(&Env, &Subject) -> Result<(), Error>,
}

// ----- setups -------------------------------------------------------------------------

/// A bystander key (automatic rotation off, so that nothing of it is ever due) and its
/// ciphertext.
fn bystander(env: &Env) -> (KeyId, Vec<u8>) {
    let kms = env.kms();
    let id = kms.create_key(&CreateKey::new("bystander")).unwrap().id;
    kms.disable_key_rotation(id, None).unwrap();
    (id, kms.encrypt(id, b"bystander", None).unwrap().ciphertext)
}

fn no_key(env: &mut Env) -> Subject {
    Subject {
        name: "new",
        id: None,
        sealed: Vec::new(),
        bystander: bystander(env),
    }
}

/// Key `k` (multi-zone in the replicated cases), enabled, with one ciphertext.
fn key(env: &mut Env) -> Subject {
    let bystander = bystander(env);
    let kms = env.kms();
    let id = kms
        .create_key(&CreateKey::new("k").multi_zone(env.link.is_some()))
        .unwrap()
        .id;
    let sealed = kms.encrypt(id, b"k-1", Some(b"ctx")).unwrap().ciphertext;
    Subject {
        name: "k",
        id: Some(id),
        sealed: vec![(sealed, b"k-1".to_vec())],
        bystander,
    }
}

fn disabled_key(env: &mut Env) -> Subject {
    let subject = key(env);
    env.kms().disable_key(subject.id(), None).unwrap();
    subject
}

fn key_without_rotation(env: &mut Env) -> Subject {
    let subject = key(env);
    env.kms().disable_key_rotation(subject.id(), None).unwrap();
    subject
}

fn key_pending_deletion(env: &mut Env) -> Subject {
    let subject = key(env);
    env.kms()
        .schedule_key_deletion(subject.id(), Some(7), None)
        .unwrap();
    subject
}

/// A key whose encryption budget (2 per version) is spent: its next encryption rotates it.
fn key_with_budget_spent(env: &mut Env) -> Subject {
    let mut subject = key(env);
    let sealed = env
        .kms()
        .encrypt(subject.id(), b"k-2", Some(b"ctx"))
        .unwrap()
        .ciphertext;
    subject.sealed.push((sealed, b"k-2".to_vec()));
    subject
}

/// A key in a freshly opened `Kms`: its first encryption extends the durable reservation.
fn key_after_reopen(env: &mut Env) -> Subject {
    let subject = key(env);
    env.reopen();
    subject
}

fn key_rotation_due(env: &mut Env) -> Subject {
    let subject = key(env);
    env.clock.advance_days(366);
    subject
}

fn key_deletion_due(env: &mut Env) -> Subject {
    let subject = key_pending_deletion(env);
    env.clock.advance_days(7);
    subject
}

fn replicated_key(env: &mut Env) -> Subject {
    let subject = key(env);
    env.kms()
        .replicate_key(subject.id(), REPLICA_ZONE, None)
        .unwrap();
    subject
}

fn replicated_key_deletion_due(env: &mut Env) -> Subject {
    let subject = replicated_key(env);
    env.kms()
        .schedule_key_deletion(subject.id(), Some(7), None)
        .unwrap();
    env.clock.advance_days(7);
    subject
}

// ----- operations ---------------------------------------------------------------------

/// Runs the case's setup and waits for the deliveries it queued in the background.
fn set_up(case: &Case, env: &mut Env) -> Subject {
    let subject = (case.setup)(env);
    env.kms().wait_for_deliveries();
    subject
}

/// Runs the case's operation, then waits for the deliveries to replicas it queued in the
/// background: their commits are the operation's last ones.
fn operate(case: &Case, env: &Env, s: &Subject) -> Result<(), Error> {
    let result = (case.op)(env, s);
    env.kms().wait_for_deliveries();
    result
}

/// A call that must not find the key (it destroys it on the way): not-found is success.
fn destroys(result: Result<(), Error>, id: KeyId) -> Result<(), Error> {
    match result {
        Err(Error::KeyNotFound { id: gone }) if gone == id => Ok(()),
        Ok(()) => panic!("key {id}, due for deletion, was found"),
        Err(error) => Err(error),
    }
}

/// run_due, failing with the first key's error if one failed.
fn run_due(env: &Env, s: &Subject) -> Result<(), Error> {
    let report = env.kms().run_due()?;
    if let Some((id, error)) = report.failed.first() {
        assert_eq!(*id, s.id(), "only the subject is due");
        return Err(error.clone());
    }
    assert_eq!(report.rotated.len() + report.deleted.len(), 1, "{report:?}");
    Ok(())
}

fn cases() -> Vec<Case> {
    let base = Case {
        name: "",
        limits: Limits::default(),
        replicated: false,
        due: false,
        commits: 1,
        change_commits: 1,
        setup: key,
        op: |_, _| Ok(()),
    };
    let small_budget = Limits {
        max_encryptions_per_version: 2,
        ..Limits::default()
    };
    vec![
        Case {
            name: "create_key",
            setup: no_key,
            op: |env, _| {
                env.kms()
                    .create_key(&CreateKey::new("new").description("d"))
                    .map(drop)
            },
            ..base
        },
        Case {
            name: "enable_key",
            setup: disabled_key,
            op: |env, s| env.kms().enable_key(s.id(), None).map(drop),
            ..base
        },
        Case {
            name: "disable_key",
            op: |env, s| env.kms().disable_key(s.id(), None).map(drop),
            ..base
        },
        Case {
            name: "rotate_key",
            op: |env, s| env.kms().rotate_key(s.id(), None).map(drop),
            ..base
        },
        Case {
            name: "enable_key_rotation",
            setup: key_without_rotation,
            op: |env, s| {
                env.kms()
                    .enable_key_rotation(s.id(), Some(90), None)
                    .map(drop)
            },
            ..base
        },
        Case {
            name: "disable_key_rotation",
            op: |env, s| env.kms().disable_key_rotation(s.id(), None).map(drop),
            ..base
        },
        Case {
            name: "schedule_key_deletion",
            op: |env, s| {
                env.kms()
                    .schedule_key_deletion(s.id(), Some(7), None)
                    .map(drop)
            },
            ..base
        },
        Case {
            name: "cancel_key_deletion",
            setup: key_pending_deletion,
            op: |env, s| env.kms().cancel_key_deletion(s.id(), None).map(drop),
            ..base
        },
        Case {
            name: "encrypt spending the budget (rotates by itself)",
            limits: small_budget,
            setup: key_with_budget_spent,
            op: |env, s| env.kms().encrypt(s.id(), b"k-3", None).map(drop),
            ..base
        },
        Case {
            name: "generate_data_key spending the budget (rotates by itself)",
            limits: small_budget,
            setup: key_with_budget_spent,
            op: |env, s| {
                env.kms()
                    .generate_data_key(s.id(), DataKeySpec::Aes256, None)
                    .map(drop)
            },
            ..base
        },
        Case {
            name: "re_encrypt onto a key whose budget is spent (rotates it)",
            limits: small_budget,
            setup: key_with_budget_spent,
            op: |env, s| {
                let (bystander, sealed) = &s.bystander;
                env.kms()
                    .re_encrypt(*bystander, sealed, None, s.id(), None)
                    .map(drop)
            },
            ..base
        },
        Case {
            name: "first encrypt after open (extends the reservation)",
            setup: key_after_reopen,
            op: |env, s| env.kms().encrypt(s.id(), b"k-2", None).map(drop),
            ..base
        },
        Case {
            name: "run_due with an automatic rotation due",
            setup: key_rotation_due,
            op: run_due,
            ..base
        },
        Case {
            name: "run_due with a deletion due",
            due: true,
            setup: key_deletion_due,
            op: run_due,
            ..base
        },
        Case {
            name: "get_key of a key whose deletion is due (destroys it)",
            due: true,
            setup: key_deletion_due,
            op: |env, s| destroys(env.kms().get_key(s.id()).map(drop), s.id()),
            ..base
        },
        Case {
            name: "list_keys with a key whose deletion is due (destroys it)",
            due: true,
            setup: key_deletion_due,
            op: |env, s| {
                let listed = env.kms().list_keys()?;
                assert!(listed.kms_keys.iter().all(|k| k.id != s.id()));
                Ok(())
            },
            ..base
        },
        Case {
            name: "decrypt with a key whose deletion is due (destroys it)",
            due: true,
            setup: key_deletion_due,
            op: |env, s| {
                let result = env.kms().decrypt(s.id(), &s.sealed[0].0, Some(b"ctx"));
                destroys(result.map(drop), s.id())
            },
            ..base
        },
        Case {
            name: "replicate_key",
            replicated: true,
            commits: 2,
            op: |env, s| {
                env.kms()
                    .replicate_key(s.id(), REPLICA_ZONE, None)
                    .map(drop)
            },
            ..base
        },
        Case {
            name: "disable_key of a replicated key",
            replicated: true,
            commits: 2,
            setup: replicated_key,
            op: |env, s| env.kms().disable_key(s.id(), None).map(drop),
            ..base
        },
        Case {
            name: "rotate_key of a replicated key",
            replicated: true,
            commits: 2,
            setup: replicated_key,
            op: |env, s| env.kms().rotate_key(s.id(), None).map(drop),
            ..base
        },
        Case {
            name: "run_due destroying a replicated key",
            replicated: true,
            due: true,
            commits: 2,
            setup: replicated_key_deletion_due,
            op: run_due,
            ..base
        },
    ]
}

// ----- what is checked ----------------------------------------------------------------

fn normalized(mut key: KeySummary) -> KeySummary {
    key.id = KeyId::from_bytes([0; 16]);
    key
}

/// The subject as stored (no side effect), id blanked: comparable across runs.
fn stored(env: &Env, s: &Subject) -> Option<KeySummary> {
    let store = env.store();
    let id = match s.id {
        Some(id) => id,
        None => store.id_by_name(s.name).unwrap()?,
    };
    let record = store.load(id).unwrap()?;
    Some(normalized(KeySummary::from(&record)))
}

/// The subject as get-kms-key shows it, id blanked (only for a key not due for deletion).
fn served(env: &Env, s: &Subject) -> Option<KeyDetails> {
    let id = match s.id {
        Some(id) => id,
        None => env.store().id_by_name(s.name).unwrap()?,
    };
    match env.kms().get_key(id) {
        Ok(mut details) => {
            details.key = normalized(details.key);
            Some(details)
        }
        Err(Error::KeyNotFound { .. }) => None,
        Err(error) => panic!("get_key {id}: {error}"),
    }
}

/// Brings replicas up to date (for the replication cases), so that the delivery states are
/// comparable.
fn settle(env: &Env, what: &str) {
    if env.link.is_some() {
        let report = env.kms().sync().unwrap();
        assert!(report.failed.is_empty(), "{what}: sync: {report:?}");
    }
}

/// The key encrypts and decrypts as its state says, and the bystander is untouched. With
/// `probe`, a new encryption too (not in the small-budget cases, where it would rotate).
fn check_crypto(env: &Env, s: &Subject, state: Option<&KeySummary>, probe: bool, what: &str) {
    let kms = env.kms();
    let (bystander, sealed) = &s.bystander;
    assert_eq!(
        kms.decrypt(*bystander, sealed, None)
            .unwrap_or_else(|e| panic!("{what}: the bystander does not decrypt: {e}"))
            .plaintext
            .as_bytes(),
        b"bystander",
        "{what}"
    );
    let Some(id) = s.id.or_else(|| env.store().id_by_name(s.name).unwrap()) else {
        assert!(state.is_none(), "{what}");
        return;
    };
    let refusal = match state.map(|k| k.status) {
        None => Some("key-not-found"),
        Some(KeyStatus::Enabled) => None,
        Some(KeyStatus::Disabled) => Some("key-disabled"),
        Some(KeyStatus::PendingDeletion) => Some("key-pending-deletion"),
    };
    for (ciphertext, plaintext) in &s.sealed {
        match (refusal, kms.decrypt(id, ciphertext, Some(b"ctx"))) {
            (None, Ok(opened)) => {
                assert_eq!(opened.plaintext.as_bytes(), plaintext.as_slice(), "{what}");
            }
            (Some(code), Err(e)) => assert_eq!(e.code(), code, "{what}: decrypt: {e}"),
            (want, got) => panic!("{what}: decrypt: expected {want:?}, got {got:?}"),
        }
    }
    if probe {
        match (refusal, kms.encrypt(id, b"probe", None)) {
            (None, Ok(sealed)) => {
                let version = u32::from_be_bytes(sealed.ciphertext[17..21].try_into().unwrap());
                assert_eq!(
                    version,
                    state.unwrap().material.version,
                    "{what}: encrypt uses the newest stored version"
                );
                let opened = kms.decrypt(id, &sealed.ciphertext, None).unwrap();
                assert_eq!(opened.plaintext.as_bytes(), b"probe", "{what}");
            }
            (Some(code), Err(e)) => assert_eq!(e.code(), code, "{what}: encrypt: {e}"),
            (want, got) => panic!("{what}: encrypt: expected {want:?}, got {got:?}"),
        }
    }
}

/// Every kind of call, for a `Kms` that must refuse them all.
fn every_call(env: &Env, s: &Subject) -> Vec<(&'static str, Result<(), Error>)> {
    let kms = env.kms();
    let id = s.id.unwrap_or(s.bystander.0);
    let (bystander, sealed) = &s.bystander;
    vec![
        ("get_key", kms.get_key(id).map(drop)),
        ("list_keys", kms.list_keys().map(drop)),
        ("list_key_rotations", kms.list_key_rotations(id).map(drop)),
        ("encrypt", kms.encrypt(*bystander, b"p", None).map(drop)),
        ("decrypt", kms.decrypt(*bystander, sealed, None).map(drop)),
        (
            "re_encrypt",
            kms.re_encrypt(*bystander, sealed, None, *bystander, None)
                .map(drop),
        ),
        (
            "generate_data_key",
            kms.generate_data_key(*bystander, DataKeySpec::Aes256, None)
                .map(drop),
        ),
        (
            "create_key",
            kms.create_key(&CreateKey::new("refused")).map(drop),
        ),
        ("enable_key", kms.enable_key(id, None).map(drop)),
        ("disable_key", kms.disable_key(*bystander, None).map(drop)),
        ("rotate_key", kms.rotate_key(*bystander, None).map(drop)),
        (
            "enable_key_rotation",
            kms.enable_key_rotation(*bystander, None, None).map(drop),
        ),
        (
            "disable_key_rotation",
            kms.disable_key_rotation(id, None).map(drop),
        ),
        (
            "schedule_key_deletion",
            kms.schedule_key_deletion(*bystander, None, None).map(drop),
        ),
        (
            "cancel_key_deletion",
            kms.cancel_key_deletion(id, None).map(drop),
        ),
        ("run_due", kms.run_due().map(drop)),
        ("sync", kms.sync().map(drop)),
        (
            "replicate_key",
            kms.replicate_key(id, REPLICA_ZONE, None).map(drop),
        ),
    ]
}

/// What a healthy run of a case leads to.
struct Reference {
    stored: Option<KeySummary>,
    served: Option<KeyDetails>,
    /// The key as the replica zone holds it (replication cases).
    replica: Option<KeySummary>,
    /// The store.
    shape: Shape,
}

/// The subject as the replica zone holds it, id blanked.
fn replicated(env: &Env, s: &Subject) -> Option<KeySummary> {
    let replica = env.replica.as_ref()?;
    let id = s.id?;
    match replica.get_key(id) {
        Ok(details) => Some(normalized(details.key)),
        Err(Error::KeyNotFound { .. }) => None,
        Err(error) => panic!("replica get_key {id}: {error}"),
    }
}

/// Runs `case` on a healthy store: counts its commits and records where it leads.
fn dry_run(case: &Case) -> Reference {
    let mut env = Env::new(case);
    let s = set_up(case, &mut env);
    env.backend.count_from_zero();
    operate(case, &env, &s).unwrap_or_else(|e| panic!("{}: healthy run: {e}", case.name));
    assert_eq!(
        env.backend.commits(),
        case.commits,
        "{}: commits of the operation",
        case.name
    );
    settle(&env, case.name);
    if let (None, Some(id)) = (stored(&env, &s), s.id) {
        // A destroyed key leaves nothing behind but its tombstone (for a replicated key).
        let id = id.as_bytes();
        for (table, entries) in Table::ALL.iter().zip(env.dump()) {
            for (key, value) in entries {
                let mentions = |bytes: &[u8]| bytes.windows(id.len()).any(|w| w == id);
                assert!(
                    *table == Table::Gone || !(mentions(&key) || mentions(&value)),
                    "{}: the destroyed key is still in table {}",
                    case.name,
                    table.name()
                );
                assert!(
                    !(*table == Table::Names && key == s.name.as_bytes()),
                    "{}: the destroyed key's name is still taken",
                    case.name
                );
            }
        }
    }
    Reference {
        stored: stored(&env, &s),
        served: served(&env, &s),
        replica: replicated(&env, &s),
        shape: shape(&env, &s),
    }
}

fn fault_run(case: &Case, reference: &Reference, n: usize, mode: Mode) {
    let what = format!("{} / commit {n} of {} / {mode:?}", case.name, case.commits);
    let what = what.as_str();
    let probe = case.limits == Limits::default();
    let mut env = Env::new(case);
    let s = set_up(case, &mut env);
    let dump_before = env.dump();
    let stored_before = stored(&env, &s);
    let (served_before, list_before) = if case.due {
        (None, None)
    } else {
        (served(&env, &s), Some(env.kms().list_keys().unwrap()))
    };

    env.backend.arm(n, mode);
    let result = operate(case, &env, &s);
    let fired = env
        .backend
        .disarm()
        .unwrap_or_else(|| panic!("{what}: the operation made fewer than {n} commits"));
    let change_failed = n <= case.change_commits;

    match mode {
        Mode::BeforeApply if change_failed => {
            let err = result.expect_err(what);
            assert_eq!(err.code(), "storage", "{what}: {err}");
            assert!(
                env.dump() == dump_before,
                "{what}: the store changed after a commit that failed before applying"
            );
            assert_eq!(stored(&env, &s), stored_before, "{what}: stored key");
            if !case.due {
                assert_eq!(served(&env, &s), served_before, "{what}: get_key");
                assert_eq!(
                    Some(env.kms().list_keys().unwrap()),
                    list_before,
                    "{what}: list_keys"
                );
                check_crypto(&env, &s, stored_before.as_ref(), probe, what);
            }
            // A key the failed batch would have written and that is not in the store is not
            // in the Kms either (a key created in memory only would answer by its id).
            for write in &fired.batch {
                if let Write::Put {
                    table: Table::Keys,
                    key,
                    ..
                } = write
                {
                    let id = KeyId::from_bytes(key.as_slice().try_into().unwrap());
                    if env.store().load(id).unwrap().is_none() {
                        for (call, result) in [
                            ("get_key", env.kms().get_key(id).map(drop)),
                            ("encrypt", env.kms().encrypt(id, b"p", None).map(drop)),
                        ] {
                            assert_eq!(
                                result,
                                Err(Error::KeyNotFound { id }),
                                "{what}: {call} of the key the failed batch wrote"
                            );
                        }
                    }
                }
            }
        }
        Mode::BeforeApply => {
            // Bookkeeping after the durable change: the call succeeded; the next sync (forced)
            // delivers again.
            result.unwrap_or_else(|e| panic!("{what}: {e}"));
        }
        Mode::AfterApply => {
            if change_failed {
                let err = result.expect_err(what);
                assert_eq!(err.code(), "not-durable", "{what}: {err}");
            } else {
                result.unwrap_or_else(|e| panic!("{what}: {e}"));
            }
            for (call, result) in every_call(&env, &s) {
                match result {
                    Err(e) if e.code() == "not-durable" => {}
                    other => panic!("{what}: {call} after not-durable: {other:?}"),
                }
            }
            // Nothing was written after the failure: the store is the old one plus the failed
            // batch, no more, no less.
            assert!(
                env.dump() == dump_with(&fired.before, &fired.batch),
                "{what}: the store is not the old state plus the failed batch"
            );
            env.reopen();
            let now = stored(&env, &s);
            assert!(
                now == stored_before || now == reference.stored,
                "{what}: after reopening, the key is neither as before nor as after: \
                 {now:#?}\nbefore: {stored_before:#?}\nafter: {:#?}",
                reference.stored
            );
            if case.due {
                // The deletion, if not made yet, is made by the next run.
                env.kms().run_due().unwrap();
                assert_eq!(stored(&env, &s), None, "{what}: destroyed after reopening");
                settle(&env, what);
                assert_eq!(
                    replicated(&env, &s),
                    reference.replica,
                    "{what}: the replica after reopening"
                );
                assert_shape(&shape(&env, &s), &reference.shape, what);
            } else {
                settle(&env, what);
                let want = if now == stored_before && stored_before != reference.stored {
                    &served_before
                } else {
                    &reference.served
                };
                assert_eq!(&served(&env, &s), want, "{what}: get_key after reopening");
                if want == &reference.served {
                    assert_eq!(
                        replicated(&env, &s),
                        reference.replica,
                        "{what}: the replica after reopening"
                    );
                    assert_shape(&shape(&env, &s), &reference.shape, what);
                }
                check_crypto(&env, &s, now.as_ref(), probe, what);
            }
            env.kms()
                .create_key(&CreateKey::new("after-reopen"))
                .unwrap_or_else(|e| panic!("{what}: the reopened Kms works: {e}"));
            return;
        }
    }

    // The Kms goes on: the same call succeeds now (unless the call already did), and leads
    // where the healthy run did; a fresh Kms over the store agrees.
    if change_failed {
        operate(case, &env, &s).unwrap_or_else(|e| panic!("{what}: the same call again: {e}"));
    }
    settle(&env, what);
    assert_eq!(
        stored(&env, &s),
        reference.stored,
        "{what}: stored key after"
    );
    assert_eq!(served(&env, &s), reference.served, "{what}: get_key after");
    assert_eq!(
        replicated(&env, &s),
        reference.replica,
        "{what}: the replica after"
    );
    assert_shape(&shape(&env, &s), &reference.shape, what);
    check_crypto(&env, &s, reference.stored.as_ref(), probe, what);
    env.reopen();
    assert_eq!(
        served(&env, &s),
        reference.served,
        "{what}: get_key after reopening"
    );
    check_crypto(&env, &s, reference.stored.as_ref(), probe, what);
}

#[test]
fn every_commit_of_every_write_can_fail() {
    let mut runs = BTreeMap::new();
    for case in cases() {
        let reference = dry_run(&case);
        assert!(case.commits >= 1, "{}", case.name);
        for n in 1..=case.commits {
            for mode in [Mode::BeforeApply, Mode::AfterApply] {
                fault_run(&case, &reference, n, mode);
                *runs.entry(case.name).or_insert(0) += 1;
            }
        }
    }
    eprintln!(
        "fault runs: {} cases, {} runs",
        runs.len(),
        runs.values().sum::<usize>()
    );
}

#[test]
fn an_unchanged_key_is_not_written() {
    // `already-applied` answers (and refusals) make no commit at all, so they cannot fail on
    // a commit.
    let case = Case {
        name: "no-op",
        limits: Limits::default(),
        replicated: false,
        due: false,
        commits: 0,
        change_commits: 0,
        setup: disabled_key,
        op: |_, _| Ok(()),
    };
    let mut env = Env::new(&case);
    let s = set_up(&case, &mut env);
    let kms = env.kms();
    env.backend.count_from_zero();
    kms.disable_key(s.id(), None).unwrap();
    assert_eq!(
        kms.enable_key(s.bystander.0, None).unwrap().status,
        keylife::SuccessStatus::AlreadyApplied
    );
    assert!(kms.rotate_key(s.id(), None).is_err());
    assert!(kms.cancel_key_deletion(s.id(), None).is_err());
    assert!(kms.create_key(&CreateKey::new("k")).is_err());
    kms.run_due().unwrap();
    kms.list_keys().unwrap();
    kms.encrypt(s.bystander.0, b"p", None).unwrap();
    assert_eq!(env.backend.commits(), 0);
}
