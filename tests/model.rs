//! A state-machine property test: random sequences of every operation, clock jumps,
//! `run_due` and close/reopen, run against a `Kms` and against a reference model written
//! from lifecycle.md. After each step: the outcome is the model's, every key's fields are the
//! model's (so `revision.seq` rose by exactly one per change), every ciphertext made so far
//! decrypts to its plaintext while its key is enabled (across rotations and reopens) and
//! gives the status error otherwise, and a deleted key (or one whose `delete-at` has passed)
//! is not found.

mod common;

use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use keylife::store::{Backend, MemoryBackend};
use keylife::{
    CreateKey, DataKeySpec, Error, KeyId, KeyStatus, Kms, KmsOptions, Limits, ManualClock,
    SuccessStatus,
};
use proptest::prelude::*;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};

/// Keys the test zone may own: small, so that the quota is reached.
const QUOTA: usize = 5;
/// Encryptions per material version: small, so that budget rotations happen. The reservation
/// block is then the whole budget, so after a reopen a version counts as spent.
const BUDGET: u64 = 4;

fn days(n: i64) -> SignedDuration {
    SignedDuration::from_hours(24 * n)
}

// ----- the reference model ------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MStatus {
    Enabled,
    Disabled,
    Pending(Timestamp),
}

#[derive(Clone, Debug)]
struct MKey {
    name: String,
    multi_zone: bool,
    deleted: bool,
    status: MStatus,
    status_since: Timestamp,
    /// (created_at, automatic) of versions 1, 2, ...
    versions: Vec<(Timestamp, bool)>,
    automatic: bool,
    period: u32,
    next_at: Timestamp,
    manual_count: u32,
    seq: u64,
    revision_at: Timestamp,
    /// Encryptions counted under the newest version.
    used: u64,
}

impl MKey {
    fn change(&mut self, now: Timestamp) {
        self.seq += 1;
        self.revision_at = now;
    }

    fn set_status(&mut self, status: MStatus, now: Timestamp) {
        self.status = status;
        self.status_since = now;
    }

    fn add_version(&mut self, now: Timestamp, automatic: bool) {
        self.versions.push((now, automatic));
        self.used = 0;
    }

    /// The error of a crypto operation or rotation on this key, if any.
    fn refusal(&self) -> Option<&'static str> {
        match self.status {
            _ if self.deleted => Some("key-not-found"),
            MStatus::Enabled => None,
            MStatus::Disabled => Some("key-disabled"),
            MStatus::Pending(_) => Some("key-pending-deletion"),
        }
    }
}

/// What an operation answered, reduced to what the model predicts.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    Success,
    AlreadyApplied,
    Err(&'static str),
}

#[derive(Clone, Debug)]
struct Model {
    now: Timestamp,
    keys: Vec<MKey>,
    /// The key of each ciphertext made so far, in order.
    ciphertexts: Vec<usize>,
    last: Outcome,
}

impl Model {
    /// An encryption under key `k` (already checked usable): spends the budget, rotating
    /// first if it is spent.
    fn encrypt(&mut self, k: usize) {
        let now = self.now;
        let key = &mut self.keys[k];
        if key.used >= BUDGET {
            key.add_version(now, true);
            key.change(now);
        }
        key.used += 1;
    }

    /// The common checks of enable/disable-rotation and rotate.
    fn rotation_refusal(&self, k: usize) -> Option<&'static str> {
        self.keys[k].refusal()
    }
}

#[derive(Clone, Debug)]
enum Op {
    Create {
        name: String,
        multi_zone: bool,
    },
    Enable(usize),
    Disable(usize),
    Schedule(usize, Option<u32>),
    Cancel(usize),
    Rotate(usize),
    EnableRotation(usize, Option<u32>),
    DisableRotation(usize),
    StaleDisable(usize),
    Encrypt {
        key: usize,
        plaintext: Vec<u8>,
        context: Option<Vec<u8>>,
    },
    DataKey {
        key: usize,
        context: Option<Vec<u8>>,
    },
    ReEncrypt {
        ciphertext: usize,
        to: usize,
        context: Option<Vec<u8>>,
    },
    Advance(SignedDuration),
    RunDue,
    Reopen,
}

struct Reference;

fn name_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(vec!["a", "b", "c", "d", "e", "f", "g"]).prop_map(str::to_owned),
        1 => Just(String::new()),
        1 => Just("n".repeat(257)),
    ]
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

fn context() -> impl Strategy<Value = Option<Vec<u8>>> {
    prop::option::of(bytes(8))
}

impl ReferenceStateMachine for Reference {
    type State = Model;
    type Transition = Op;

    fn init_state() -> BoxedStrategy<Model> {
        Just(Model {
            now: common::start(),
            keys: Vec::new(),
            ciphertexts: Vec::new(),
            last: Outcome::Ok,
        })
        .boxed()
    }

    fn transitions(state: &Model) -> BoxedStrategy<Op> {
        let create = (name_strategy(), any::<bool>())
            .prop_map(|(name, multi_zone)| Op::Create { name, multi_zone });
        let advance = prop::sample::select(vec![
            SignedDuration::from_hours(1),
            days(1),
            days(6),
            days(7),
            days(8),
            days(30),
            days(31),
            days(90),
            days(365),
            days(400),
        ])
        .prop_map(Op::Advance);
        if state.keys.is_empty() {
            return prop_oneof![4 => create, 1 => advance, 1 => Just(Op::RunDue), 1 => Just(Op::Reopen)]
                .boxed();
        }
        let n = state.keys.len();
        let k = 0..n;
        let delay =
            prop::option::of(prop_oneof![6 => 7u32..=30, 1 => Just(6u32), 1 => Just(31u32)]);
        let period =
            prop::option::of(prop_oneof![6 => 90u32..=2560, 1 => Just(89u32), 1 => Just(2561u32)]);
        let mut ops = vec![
            (3, create.boxed()),
            (2, advance.boxed()),
            (2, Just(Op::RunDue).boxed()),
            (1, Just(Op::Reopen).boxed()),
            (3, k.clone().prop_map(Op::Enable).boxed()),
            (3, k.clone().prop_map(Op::Disable).boxed()),
            (
                2,
                (k.clone(), delay)
                    .prop_map(|(k, d)| Op::Schedule(k, d))
                    .boxed(),
            ),
            (2, k.clone().prop_map(Op::Cancel).boxed()),
            (3, k.clone().prop_map(Op::Rotate).boxed()),
            (
                2,
                (k.clone(), period)
                    .prop_map(|(k, p)| Op::EnableRotation(k, p))
                    .boxed(),
            ),
            (2, k.clone().prop_map(Op::DisableRotation).boxed()),
            (1, k.clone().prop_map(Op::StaleDisable).boxed()),
            (
                5,
                (k.clone(), bytes(64), context())
                    .prop_map(|(key, plaintext, context)| Op::Encrypt {
                        key,
                        plaintext,
                        context,
                    })
                    .boxed(),
            ),
            (
                1,
                (k.clone(), context())
                    .prop_map(|(key, context)| Op::DataKey { key, context })
                    .boxed(),
            ),
        ];
        if !state.ciphertexts.is_empty() {
            ops.push((
                2,
                (0..state.ciphertexts.len(), k, context())
                    .prop_map(|(ciphertext, to, context)| Op::ReEncrypt {
                        ciphertext,
                        to,
                        context,
                    })
                    .boxed(),
            ));
        }
        prop::strategy::Union::new_weighted(ops).boxed()
    }

    fn preconditions(state: &Model, op: &Op) -> bool {
        let n = state.keys.len();
        match op {
            Op::Enable(k)
            | Op::Disable(k)
            | Op::Schedule(k, _)
            | Op::Cancel(k)
            | Op::Rotate(k)
            | Op::EnableRotation(k, _)
            | Op::DisableRotation(k)
            | Op::StaleDisable(k)
            | Op::Encrypt { key: k, .. }
            | Op::DataKey { key: k, .. } => *k < n,
            Op::ReEncrypt { ciphertext, to, .. } => {
                *ciphertext < state.ciphertexts.len() && *to < n
            }
            Op::Create { .. } | Op::Advance(_) | Op::RunDue | Op::Reopen => true,
        }
    }

    fn apply(mut state: Model, op: &Op) -> Model {
        let now = state.now;
        state.last = match op {
            Op::Create { name, multi_zone } => {
                let chars = name.chars().count();
                let live = state.keys.iter().filter(|k| !k.deleted);
                if !(1..=256).contains(&chars) {
                    Outcome::Err("bad-request")
                } else if live.clone().any(|k| &k.name == name) {
                    Outcome::Err("name-conflict")
                } else if live.count() >= QUOTA {
                    Outcome::Err("quota-exceeded")
                } else {
                    state.keys.push(MKey {
                        name: name.clone(),
                        multi_zone: *multi_zone,
                        deleted: false,
                        status: MStatus::Enabled,
                        status_since: now,
                        versions: vec![(now, false)],
                        automatic: true,
                        period: 365,
                        next_at: now + days(365),
                        manual_count: 0,
                        seq: 1,
                        revision_at: now,
                        used: 0,
                    });
                    Outcome::Ok
                }
            }
            Op::Enable(k) => {
                let key = &mut state.keys[*k];
                match key.status {
                    _ if key.deleted => Outcome::Err("key-not-found"),
                    MStatus::Pending(_) => Outcome::Err("key-pending-deletion"),
                    MStatus::Enabled => Outcome::AlreadyApplied,
                    MStatus::Disabled => {
                        key.set_status(MStatus::Enabled, now);
                        key.change(now);
                        Outcome::Success
                    }
                }
            }
            Op::Disable(k) => {
                let key = &mut state.keys[*k];
                match key.status {
                    _ if key.deleted => Outcome::Err("key-not-found"),
                    MStatus::Pending(_) => Outcome::Err("key-pending-deletion"),
                    MStatus::Disabled => Outcome::AlreadyApplied,
                    MStatus::Enabled => {
                        key.set_status(MStatus::Disabled, now);
                        key.change(now);
                        Outcome::Success
                    }
                }
            }
            Op::StaleDisable(k) => {
                if state.keys[*k].deleted {
                    Outcome::Err("key-not-found")
                } else {
                    Outcome::Err("revision-conflict")
                }
            }
            Op::Schedule(k, delay) => {
                let delay = delay.unwrap_or(30);
                let key = &mut state.keys[*k];
                if !(7..=30).contains(&delay) {
                    Outcome::Err("bad-request")
                } else if key.deleted {
                    Outcome::Err("key-not-found")
                } else if let MStatus::Pending(_) = key.status {
                    Outcome::Err("key-pending-deletion")
                } else {
                    key.set_status(MStatus::Pending(now + days(i64::from(delay))), now);
                    key.change(now);
                    Outcome::Ok
                }
            }
            Op::Cancel(k) => {
                let key = &mut state.keys[*k];
                match key.status {
                    _ if key.deleted => Outcome::Err("key-not-found"),
                    MStatus::Pending(_) => {
                        key.set_status(MStatus::Disabled, now);
                        key.change(now);
                        Outcome::Success
                    }
                    _ => Outcome::Err("not-pending-deletion"),
                }
            }
            Op::Rotate(k) => match state.rotation_refusal(*k) {
                Some(error) => Outcome::Err(error),
                None if state.keys[*k].manual_count >= 10 => Outcome::Err("manual-rotation-limit"),
                None => {
                    let key = &mut state.keys[*k];
                    key.add_version(now, false);
                    key.manual_count += 1;
                    key.change(now);
                    Outcome::Ok
                }
            },
            Op::EnableRotation(k, period) => {
                let period = period.unwrap_or(365);
                if !(90..=2560).contains(&period) {
                    Outcome::Err("bad-request")
                } else {
                    match state.rotation_refusal(*k) {
                        Some(error) => Outcome::Err(error),
                        None if state.keys[*k].automatic => Outcome::Err("conflict"),
                        None => {
                            let key = &mut state.keys[*k];
                            key.automatic = true;
                            key.period = period;
                            key.next_at = now + days(i64::from(period));
                            key.change(now);
                            Outcome::Ok
                        }
                    }
                }
            }
            Op::DisableRotation(k) => match state.rotation_refusal(*k) {
                Some(error) => Outcome::Err(error),
                None if !state.keys[*k].automatic => Outcome::Err("conflict"),
                None => {
                    let key = &mut state.keys[*k];
                    key.automatic = false;
                    key.change(now);
                    Outcome::Ok
                }
            },
            Op::Encrypt { key: k, .. } | Op::DataKey { key: k, .. } => {
                match state.keys[*k].refusal() {
                    Some(error) => Outcome::Err(error),
                    None => {
                        state.encrypt(*k);
                        state.ciphertexts.push(*k);
                        Outcome::Ok
                    }
                }
            }
            Op::ReEncrypt { ciphertext, to, .. } => {
                let from = state.ciphertexts[*ciphertext];
                match state.keys[from].refusal().or(state.keys[*to].refusal()) {
                    Some(error) => Outcome::Err(error),
                    None => {
                        state.encrypt(*to);
                        state.ciphertexts.push(*to);
                        Outcome::Ok
                    }
                }
            }
            Op::Advance(by) => {
                state.now = now + *by;
                Outcome::Ok
            }
            Op::RunDue => {
                for key in state.keys.iter_mut().filter(|k| !k.deleted) {
                    match key.status {
                        MStatus::Pending(at) if at <= now => key.deleted = true,
                        MStatus::Enabled if key.automatic && key.next_at <= now => {
                            key.add_version(now, true);
                            key.next_at = now + days(i64::from(key.period));
                            key.change(now);
                        }
                        _ => {}
                    }
                }
                Outcome::Ok
            }
            Op::Reopen => {
                // Every reservation counts as spent after a reopen; with the block equal to
                // the budget, every newest version is spent.
                for key in &mut state.keys {
                    key.used = BUDGET;
                }
                Outcome::Ok
            }
        };
        // From `delete-at` on a key no longer exists, run_due or not: the next call that
        // reaches it (here, the checks after this step) finds it gone.
        let now = state.now;
        for key in &mut state.keys {
            if matches!(key.status, MStatus::Pending(at) if at <= now) {
                key.deleted = true;
            }
        }
        state
    }
}

// ----- the system under test ----------------------------------------------------------

/// Where the `Kms` under test keeps its store.
trait Storage: 'static {
    /// A handle that outlives each `Kms`.
    type Handle;
    fn fresh() -> Self::Handle;
    fn open(handle: &Self::Handle, clock: &ManualClock) -> Kms;
}

fn options(clock: &ManualClock) -> KmsOptions {
    KmsOptions::new("ch-gva-2")
        .clock(clock.clone())
        .limits(Limits {
            key_quota: QUOTA,
            max_encryptions_per_version: BUDGET,
            ..Limits::default()
        })
}

struct Memory;
impl Storage for Memory {
    type Handle = Arc<dyn Backend>;
    fn fresh() -> Arc<dyn Backend> {
        Arc::new(MemoryBackend::new())
    }
    fn open(handle: &Arc<dyn Backend>, clock: &ManualClock) -> Kms {
        Kms::with_backend(Arc::clone(handle), common::root(9), options(clock)).unwrap()
    }
}

struct Sled;
impl Storage for Sled {
    type Handle = (tempfile::TempDir, PathBuf);
    fn fresh() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        (dir, path)
    }
    fn open(handle: &(tempfile::TempDir, PathBuf), clock: &ManualClock) -> Kms {
        Kms::open(&handle.1, common::root(9), options(clock))
            .unwrap_or_else(|e| panic!("reopen: {e}"))
    }
}

struct Sut<S: Storage> {
    handle: S::Handle,
    clock: ManualClock,
    kms: Option<Kms>,
    ids: Vec<KeyId>,
    /// Every ciphertext made.
    ciphertexts: Vec<Made>,
}

/// A ciphertext made during the test: (key index, plaintext, context, ciphertext).
type Made = (usize, Vec<u8>, Option<Vec<u8>>, Vec<u8>);

impl<S: Storage> Sut<S> {
    fn kms(&self) -> &Kms {
        self.kms.as_ref().unwrap()
    }
}

struct KmsTest<S>(PhantomData<S>);

fn outcome<T>(result: Result<T, Error>) -> Outcome {
    match result {
        Ok(_) => Outcome::Ok,
        Err(error) => Outcome::Err(error.code()),
    }
}

fn success(result: Result<keylife::SuccessResponse, Error>) -> Outcome {
    match result {
        Ok(response) => match response.status {
            SuccessStatus::Success => Outcome::Success,
            SuccessStatus::AlreadyApplied => Outcome::AlreadyApplied,
            SuccessStatus::TargetRegistered => Outcome::Err("unexpected target-registered"),
        },
        Err(error) => Outcome::Err(error.code()),
    }
}

impl<S: Storage> StateMachineTest for KmsTest<S> {
    type SystemUnderTest = Sut<S>;
    type Reference = Reference;

    fn init_test(model: &Model) -> Sut<S> {
        let handle = S::fresh();
        let clock = ManualClock::new(model.now);
        let kms = S::open(&handle, &clock);
        Sut {
            handle,
            clock,
            kms: Some(kms),
            ids: Vec::new(),
            ciphertexts: Vec::new(),
        }
    }

    fn apply(mut sut: Sut<S>, model: &Model, op: Op) -> Sut<S> {
        let got = match &op {
            Op::Create { name, multi_zone } => {
                let result = sut
                    .kms()
                    .create_key(&CreateKey::new(name.clone()).multi_zone(*multi_zone));
                if let Ok(created) = &result {
                    sut.ids.push(created.id);
                }
                outcome(result)
            }
            Op::Enable(k) => success(sut.kms().enable_key(sut.ids[*k], None)),
            Op::Disable(k) => success(sut.kms().disable_key(sut.ids[*k], None)),
            Op::StaleDisable(k) => {
                let id = sut.ids[*k];
                let seq = sut
                    .kms()
                    .get_key(id)
                    .map(|d| d.key.revision.seq)
                    .unwrap_or(0);
                success(sut.kms().disable_key(id, Some(seq + 1)))
            }
            Op::Schedule(k, delay) => {
                outcome(sut.kms().schedule_key_deletion(sut.ids[*k], *delay, None))
            }
            Op::Cancel(k) => success(sut.kms().cancel_key_deletion(sut.ids[*k], None)),
            Op::Rotate(k) => outcome(sut.kms().rotate_key(sut.ids[*k], None)),
            Op::EnableRotation(k, period) => {
                outcome(sut.kms().enable_key_rotation(sut.ids[*k], *period, None))
            }
            Op::DisableRotation(k) => outcome(sut.kms().disable_key_rotation(sut.ids[*k], None)),
            Op::Encrypt {
                key,
                plaintext,
                context,
            } => {
                let result = sut
                    .kms()
                    .encrypt(sut.ids[*key], plaintext, context.as_deref());
                if let Ok(sealed) = &result {
                    sut.ciphertexts.push((
                        *key,
                        plaintext.clone(),
                        context.clone(),
                        sealed.ciphertext.clone(),
                    ));
                }
                outcome(result)
            }
            Op::DataKey { key, context } => {
                let result = sut.kms().generate_data_key(
                    sut.ids[*key],
                    DataKeySpec::Aes256,
                    context.as_deref(),
                );
                if let Ok(data_key) = &result {
                    assert_eq!(data_key.plaintext.len(), 32);
                    sut.ciphertexts.push((
                        *key,
                        data_key.plaintext.as_bytes().to_vec(),
                        context.clone(),
                        data_key.ciphertext.clone(),
                    ));
                }
                outcome(result)
            }
            Op::ReEncrypt {
                ciphertext,
                to,
                context,
            } => {
                let (from, plaintext, old_context, sealed) = sut.ciphertexts[*ciphertext].clone();
                let result = sut.kms().re_encrypt(
                    sut.ids[from],
                    &sealed,
                    old_context.as_deref(),
                    sut.ids[*to],
                    context.as_deref(),
                );
                if let Ok(moved) = &result {
                    sut.ciphertexts.push((
                        *to,
                        plaintext,
                        context.clone(),
                        moved.ciphertext.clone(),
                    ));
                }
                outcome(result)
            }
            Op::Advance(by) => {
                sut.clock.advance(*by);
                Outcome::Ok
            }
            Op::RunDue => {
                let report = sut.kms().run_due().unwrap();
                assert!(report.failed.is_empty(), "{report:?}");
                Outcome::Ok
            }
            Op::Reopen => {
                drop(sut.kms.take());
                sut.kms = Some(S::open(&sut.handle, &sut.clock));
                Outcome::Ok
            }
        };
        assert_eq!(got, model.last, "outcome of {op:?}");
        sut
    }

    fn check_invariants(sut: &Sut<S>, model: &Model) {
        let kms = sut.kms();
        assert_eq!(sut.ids.len(), model.keys.len());
        for (id, key) in sut.ids.iter().zip(&model.keys) {
            if key.deleted {
                assert_eq!(
                    kms.get_key(*id).unwrap_err(),
                    Error::KeyNotFound { id: *id }
                );
                continue;
            }
            let got = kms.get_key(*id).unwrap().key;
            assert_eq!(got.name, key.name);
            assert_eq!(got.multi_zone, key.multi_zone);
            let (status, delete_at) = match key.status {
                MStatus::Enabled => (KeyStatus::Enabled, None),
                MStatus::Disabled => (KeyStatus::Disabled, None),
                MStatus::Pending(at) => (KeyStatus::PendingDeletion, Some(at)),
            };
            assert_eq!(got.status, status, "status of {}", key.name);
            assert_eq!(got.delete_at, delete_at);
            assert_eq!(got.status_since, key.status_since);
            assert_eq!(got.revision.seq, key.seq, "revision of {}", key.name);
            assert_eq!(got.revision.at, key.revision_at);
            let (created_at, automatic) = *key.versions.last().unwrap();
            assert_eq!(got.material.version as usize, key.versions.len());
            assert_eq!(got.material.created_at, created_at);
            assert_eq!(got.material.automatic, automatic);
            assert_eq!(got.rotation.automatic, key.automatic);
            assert_eq!(got.rotation.rotation_period, key.period);
            assert_eq!(got.rotation.next_at, key.next_at);
            assert_eq!(got.rotation.manual_count, key.manual_count);
            let rotations = kms.list_key_rotations(*id).unwrap().rotations;
            let expected: Vec<_> = key
                .versions
                .iter()
                .enumerate()
                .skip(1)
                .map(|(i, (at, auto))| (i as u32 + 1, *at, *auto))
                .collect();
            let got: Vec<_> = rotations
                .iter()
                .map(|r| (r.version, r.rotated_at, r.automatic))
                .collect();
            assert_eq!(got, expected);
        }
        let live = model.keys.iter().filter(|k| !k.deleted).count();
        assert_eq!(kms.list_keys().unwrap().kms_keys.len(), live);
        assert_eq!(sut.ciphertexts.len(), model.ciphertexts.len());
        for (k, plaintext, context, ciphertext) in &sut.ciphertexts {
            let result = kms.decrypt(sut.ids[*k], ciphertext, context.as_deref());
            match model.keys[*k].refusal() {
                None => assert_eq!(result.unwrap().plaintext.as_bytes(), plaintext.as_slice()),
                Some(code) => assert_eq!(result.unwrap_err().code(), code),
            }
        }
    }
}

prop_state_machine! {
    #![proptest_config(ProptestConfig {
        cases: 1024,
        max_shrink_iters: 4096,
        .. ProptestConfig::default()
    })]

    #[test]
    fn model_on_memory_store(sequential 1..60 => KmsTest<Memory>);
}

prop_state_machine! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        max_shrink_iters: 1024,
        .. ProptestConfig::default()
    })]

    #[test]
    fn model_on_sled_store(sequential 1..40 => KmsTest<Sled>);
}
