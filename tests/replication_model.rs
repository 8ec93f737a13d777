//! A property test of multi-zone replication: random operation sequences at the origin (and a
//! few at the replicas) with random link faults (drop, lost answer, duplicate, delay; zones cut
//! off and healed), late out-of-order releases, syncs, due runs and clock jumps. Zone "a" is the
//! origin of every key; "b" and "c" hold replicas. A quarter of the cases use a tiny encryption
//! budget, so that replicas ask their origin for new versions.
//!
//! During the run: no operation panics, and every refusal is a contract error (never a store
//! error, never zone-unreachable); a replica answers rotation-pending only for a reason (a fault
//! on the way, a retry still in backoff, an origin that cannot rotate).
//!
//! At the end, links healed and the longest backoff waited out, the origin's `run_due` alone
//! must bring every replica up to date (a sync after it has nothing left to do); the messages
//! still held are then delivered late and out of order, and must change nothing. Then, for
//! every key: a key gone at the origin is gone everywhere; otherwise every replica has the
//! origin's material versions, rotations, rotation settings, deletion state (pending iff the
//! origin is, same `delete-at`) and replicas, the origin shows for it a watermark equal to its
//! `revision.seq` and no failure, no other zone holds the key, a replica whose last own change
//! was a disable (or that a cancelled deletion disabled) is disabled, and each zone's encrypt
//! follows the status it shows. Finally every key not pending deletion is enabled everywhere
//! and every ciphertext made anywhere decrypts, to its plaintext, in every zone holding it.
//!
//! The one test runs the cases itself (rather than through `proptest!`) so that it can print
//! once, at the end, what the cases covered (visible with `-- --nocapture`) and check that
//! every kind of fault was actually injected. `PROPTEST_CASES` overrides the number of cases;
//! failures are not persisted.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::Zones;
use common::fault::{Counts, Fault, FaultLink};
use jiff::SignedDuration;
use keylife::{
    CreateKey, Error, KeyId, KeyStatus, Kms, KmsOptions, Limits, LocalLink, ManualClock,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

/// The zones, the origin first.
const ZONES: [&str; 3] = ["a", "b", "c"];
/// The origin zone's index.
const ORIGIN: usize = 0;
/// Keys created at the start of each case at most (a case starts with 1 to this many).
const INITIAL_KEYS: usize = 3;
/// Keys created per case at most.
const MAX_KEYS: usize = 5;
/// Key names in use: fewer than keys, so that names are reused after a deletion.
const NAMES: usize = 4;
/// Cases run by default.
const CASES: u32 = 256;
/// Operations per case at most.
const MAX_OPS: usize = 60;

/// Error codes that are not contract refusals: an operation must never answer them here.
const FORBIDDEN: [&str; 6] = [
    "storage",
    "corrupt-record",
    "not-durable",
    "random-source",
    "wrong-root-key",
    "zone-unreachable",
];

#[derive(Clone, Debug)]
enum Op {
    /// Create a key named `n{name}` at the origin (multi-zone or not): names are reused,
    /// so a new key may take the name of one deleted at the origin but not yet at a replica.
    Create {
        name: usize,
        multi_zone: bool,
    },
    /// Replicate key `key` (an index into the keys created so far, modulo their number) from
    /// the origin to zone `zone` (the origin itself now and then: a refusal).
    Replicate {
        key: usize,
        zone: usize,
    },
    /// The origin-only operations, tried in `zone` (mostly the origin; elsewhere a refusal).
    Rotate {
        key: usize,
        zone: usize,
    },
    EnableRotation {
        key: usize,
        zone: usize,
        period: u32,
    },
    DisableRotation {
        key: usize,
        zone: usize,
    },
    ScheduleDeletion {
        key: usize,
        zone: usize,
        days: u32,
    },
    CancelDeletion {
        key: usize,
        zone: usize,
    },
    /// Enable and disable in `zone`: a replica's status is its own.
    Enable {
        key: usize,
        zone: usize,
    },
    Disable {
        key: usize,
        zone: usize,
    },
    /// Moves the shared clock (makes rotations, deletions and retries due).
    AdvanceDays(u32),
    AdvanceSecs(u32),
    RunDue {
        zone: usize,
    },
    Sync,
    List {
        zone: usize,
    },
    /// Encrypts `times` times with key `key` in `zone` (spending its encryption budget).
    Encrypt {
        key: usize,
        zone: usize,
        times: usize,
        plaintext: Vec<u8>,
        context: Option<Vec<u8>>,
    },
    /// The next message to replica zone `zone` meets `fault`.
    Fault {
        zone: usize,
        fault: Fault,
    },
    Cut {
        zone: usize,
    },
    Heal {
        zone: usize,
    },
    /// Delivers the held messages, permuted by the seed.
    Release(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let key = || 0..MAX_KEYS;
    let any_zone = || 0..ZONES.len();
    let replica = || 1..ZONES.len();
    let origin_mostly = || prop_oneof![6 => Just(ORIGIN), 1 => 1..ZONES.len()];
    let fault = prop::sample::select(vec![
        Fault::Drop,
        Fault::LoseAnswer,
        Fault::Duplicate,
        Fault::Delay,
    ]);
    prop_oneof![
        2 => (0..NAMES, prop::bool::weighted(0.8))
            .prop_map(|(name, multi_zone)| Op::Create { name, multi_zone }),
        6 => (key(), prop_oneof![6 => replica(), 1 => Just(ORIGIN)])
            .prop_map(|(key, zone)| Op::Replicate { key, zone }),
        3 => (key(), origin_mostly()).prop_map(|(key, zone)| Op::Rotate { key, zone }),
        2 => (key(), origin_mostly(), 90u32..=2560)
            .prop_map(|(key, zone, period)| Op::EnableRotation { key, zone, period }),
        2 => (key(), origin_mostly()).prop_map(|(key, zone)| Op::DisableRotation { key, zone }),
        2 => (key(), origin_mostly(), 7u32..=30)
            .prop_map(|(key, zone, days)| Op::ScheduleDeletion { key, zone, days }),
        2 => (key(), origin_mostly()).prop_map(|(key, zone)| Op::CancelDeletion { key, zone }),
        3 => (key(), any_zone()).prop_map(|(key, zone)| Op::Enable { key, zone }),
        3 => (key(), any_zone()).prop_map(|(key, zone)| Op::Disable { key, zone }),
        3 => prop_oneof![3 => 0u32..=10, 1 => 0u32..=400].prop_map(Op::AdvanceDays),
        1 => (0u32..=600).prop_map(Op::AdvanceSecs),
        2 => any_zone().prop_map(|zone| Op::RunDue { zone }),
        3 => Just(Op::Sync),
        1 => any_zone().prop_map(|zone| Op::List { zone }),
        5 => (
            (key(), any_zone(), prop_oneof![3 => Just(1usize), 1 => 2usize..=4]),
            prop::collection::vec(any::<u8>(), 0..32),
            prop::option::of(prop::collection::vec(any::<u8>(), 0..8)),
        )
            .prop_map(|((key, zone, times), plaintext, context)| Op::Encrypt {
                key,
                zone,
                times,
                plaintext,
                context,
            }),
        8 => (replica(), fault).prop_map(|(zone, fault)| Op::Fault { zone, fault }),
        2 => replica().prop_map(|zone| Op::Cut { zone }),
        2 => replica().prop_map(|zone| Op::Heal { zone }),
        2 => (0usize..64).prop_map(Op::Release),
    ]
}

// ----- what the cases covered ---------------------------------------------------------

static CASES_RUN: AtomicUsize = AtomicUsize::new(0);
static OPS_RUN: AtomicUsize = AtomicUsize::new(0);
static REFUSALS: AtomicUsize = AtomicUsize::new(0);
static KEYS_CREATED: AtomicUsize = AtomicUsize::new(0);
static REPLICAS_CHECKED: AtomicUsize = AtomicUsize::new(0);
static DECRYPTS_CHECKED: AtomicUsize = AtomicUsize::new(0);
static ROTATIONS_PENDING: AtomicUsize = AtomicUsize::new(0);
static PASSED: AtomicUsize = AtomicUsize::new(0);
static DROPPED: AtomicUsize = AtomicUsize::new(0);
static ANSWERS_LOST: AtomicUsize = AtomicUsize::new(0);
static DUPLICATED: AtomicUsize = AtomicUsize::new(0);
static DELAYED: AtomicUsize = AtomicUsize::new(0);
static RELEASED: AtomicUsize = AtomicUsize::new(0);
static CUT_OFF: AtomicUsize = AtomicUsize::new(0);

fn add(counter: &AtomicUsize, n: usize) {
    counter.fetch_add(n, Ordering::Relaxed);
}

fn total(counter: &AtomicUsize) -> usize {
    counter.load(Ordering::Relaxed)
}

fn record_counts(counts: Counts) {
    add(&PASSED, counts.passed);
    add(&DROPPED, counts.dropped);
    add(&ANSWERS_LOST, counts.answers_lost);
    add(&DUPLICATED, counts.duplicated);
    add(&DELAYED, counts.delayed);
    add(&RELEASED, counts.released);
    add(&CUT_OFF, counts.cut_off);
}

// ----- one case -----------------------------------------------------------------------

/// A ciphertext made during the case, with what it must decrypt to.
struct Sealed {
    key: KeyId,
    zone: usize,
    plaintext: Vec<u8>,
    context: Option<Vec<u8>>,
    ciphertext: Vec<u8>,
}

struct Case {
    zones: Zones,
    link: Arc<FaultLink>,
    /// Whether encryption budgets are small: a replica that spends one asks its origin for
    /// a new version, and is refused (rotation-pending) until it has it.
    small_budget: bool,
    /// Every key created at the origin, in order.
    keys: Vec<KeyId>,
    sealed: Vec<Sealed>,
    /// Replicas (key, zone) that must end disabled unless their origin ends pending
    /// deletion: their last own status change was a disable, or the origin cancelled a
    /// deletion after replicating the key there and they were not enabled since. (A
    /// replica's status is its own, but a cancelled deletion disables it once it applies the
    /// cancellation, or when it is first reached after it.)
    must_be_disabled: BTreeMap<(KeyId, usize), bool>,
}

/// Passes on a success; a refusal is fine if it is a contract error.
fn allowed<T>(what: &str, result: Result<T, Error>) -> Result<Option<T>, TestCaseError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(error) => {
            prop_assert!(
                !FORBIDDEN.contains(&error.code()),
                "{what}: not a contract refusal: {error} ({})",
                error.code()
            );
            add(&REFUSALS, 1);
            Ok(None)
        }
    }
}

/// The refusal must be key-not-found.
fn not_found<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, Error>,
) -> Result<(), TestCaseError> {
    match result {
        Err(error) => {
            prop_assert_eq!(error.code(), "key-not-found", "{}: {}", what, error);
            Ok(())
        }
        Ok(value) => Err(TestCaseError::fail(format!(
            "{what}: expected key-not-found, got {value:?}"
        ))),
    }
}

impl Case {
    /// Three in-memory zones on one faulty link and one clock (as `Zones::faulty`), with
    /// `budget` encryptions per material version if given (else the default, never spent).
    fn new(budget: Option<u64>) -> Case {
        let link = FaultLink::new(LocalLink::new());
        let clock = ManualClock::new(common::start());
        let limits = Limits {
            max_encryptions_per_version: budget
                .unwrap_or(Limits::default().max_encryptions_per_version),
            ..Limits::default()
        };
        let kms = ZONES
            .iter()
            .zip(10u8..)
            .map(|(zone, root)| {
                let options = KmsOptions::new(*zone)
                    .clock(clock.clone())
                    .limits(limits)
                    .link(link.clone());
                let kms = Arc::new(Kms::open_in_memory(common::root(root), options).unwrap());
                link.inner().attach(&kms);
                kms
            })
            .collect();
        Case {
            zones: Zones {
                clock,
                link: link.clone(),
                kms,
            },
            small_budget: budget.is_some(),
            link,
            keys: Vec::new(),
            sealed: Vec::new(),
            must_be_disabled: BTreeMap::new(),
        }
    }

    fn zone(&self, i: usize) -> &Kms {
        self.zones.zone(i)
    }

    fn origin(&self) -> &Kms {
        self.zone(ORIGIN)
    }

    fn key(&self, k: usize) -> Option<KeyId> {
        (!self.keys.is_empty()).then(|| self.keys[k % self.keys.len()])
    }

    /// Syncs the origin: the call itself never fails, and a failed delivery is an error of the
    /// link or a contract refusal, never of a store.
    fn sync(&self) -> Result<keylife::SyncReport, TestCaseError> {
        let report = self
            .origin()
            .sync()
            .map_err(|e| TestCaseError::fail(format!("sync: {e}")))?;
        prop_assert!(report.unreadable.is_empty(), "sync: {report:?}");
        for (id, zone, error) in &report.failed {
            prop_assert!(
                matches!(error.code(), "zone-unreachable" | "conflict"),
                "sync: delivery of {id} to {zone} failed with {error} ({})",
                error.code()
            );
        }
        Ok(report)
    }

    fn run_due(&self, zone: usize) -> Result<keylife::DueReport, TestCaseError> {
        let report = self
            .zone(zone)
            .run_due()
            .map_err(|e| TestCaseError::fail(format!("run_due in {}: {e}", ZONES[zone])))?;
        prop_assert!(
            report.failed.is_empty() && report.unreadable.is_empty(),
            "run_due in {}: {report:?}",
            ZONES[zone]
        );
        prop_assert!(report.replication.unreadable.is_empty(), "{report:?}");
        for (id, to, error) in &report.replication.failed {
            prop_assert!(
                matches!(error.code(), "zone-unreachable" | "conflict"),
                "run_due: delivery of {id} to {to} failed with {error} ({})",
                error.code()
            );
        }
        Ok(report)
    }

    /// Runs `op`, then waits for the deliveries it queued in the background, so that a case
    /// replays the same way every time (the faults scripted on the link meet the same
    /// messages).
    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let result = self.run(op);
        self.wait_for_deliveries();
        result
    }

    /// Waits for the deliveries every zone queued in the background.
    fn wait_for_deliveries(&self) {
        for zone in &self.zones.kms {
            zone.wait_for_deliveries();
        }
    }

    fn run(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Create { name, multi_zone } => {
                if self.keys.len() < MAX_KEYS {
                    let name = format!("n{name}");
                    let request = CreateKey::new(name).multi_zone(*multi_zone);
                    if let Some(created) = allowed("create", self.origin().create_key(&request))? {
                        self.keys.push(created.id);
                        add(&KEYS_CREATED, 1);
                    }
                }
            }
            Op::Replicate { key, zone } => {
                if let Some(id) = self.key(*key) {
                    allowed(
                        "replicate",
                        self.origin().replicate_key(id, ZONES[*zone], None),
                    )?;
                }
            }
            Op::Rotate { key, zone } => {
                if let Some(id) = self.key(*key) {
                    allowed("rotate", self.zone(*zone).rotate_key(id, None))?;
                }
            }
            Op::EnableRotation { key, zone, period } => {
                if let Some(id) = self.key(*key) {
                    allowed(
                        "enable-rotation",
                        self.zone(*zone)
                            .enable_key_rotation(id, Some(*period), None),
                    )?;
                }
            }
            Op::DisableRotation { key, zone } => {
                if let Some(id) = self.key(*key) {
                    allowed(
                        "disable-rotation",
                        self.zone(*zone).disable_key_rotation(id, None),
                    )?;
                }
            }
            Op::ScheduleDeletion { key, zone, days } => {
                if let Some(id) = self.key(*key) {
                    allowed(
                        "schedule-deletion",
                        self.zone(*zone)
                            .schedule_key_deletion(id, Some(*days), None),
                    )?;
                }
            }
            Op::CancelDeletion { key, zone } => {
                if let Some(id) = self.key(*key) {
                    // The zones replicating the key before the cancellation: each replica
                    // ends disabled, whether it was reached before it or only after.
                    let before: Vec<usize> = match self.origin().get_key(id) {
                        Ok(origin) => (1..ZONES.len())
                            .filter(|&z| origin.key.replicas.iter().any(|r| r == ZONES[z]))
                            .collect(),
                        Err(_) => Vec::new(),
                    };
                    let result = self.zone(*zone).cancel_key_deletion(id, None);
                    if allowed("cancel-deletion", result)?.is_some() {
                        for z in before {
                            self.must_be_disabled.insert((id, z), true);
                        }
                    }
                }
            }
            Op::Enable { key, zone } => {
                if let Some(id) = self.key(*key)
                    && allowed("enable", self.zone(*zone).enable_key(id, None))?.is_some()
                {
                    self.must_be_disabled.insert((id, *zone), false);
                }
            }
            Op::Disable { key, zone } => {
                if let Some(id) = self.key(*key)
                    && allowed("disable", self.zone(*zone).disable_key(id, None))?.is_some()
                {
                    self.must_be_disabled.insert((id, *zone), true);
                }
            }
            Op::AdvanceDays(days) => self.zones.clock.advance_days(*days),
            Op::AdvanceSecs(secs) => self
                .zones
                .clock
                .advance(SignedDuration::from_secs(i64::from(*secs))),
            Op::RunDue { zone } => {
                self.run_due(*zone)?;
            }
            Op::Sync => {
                self.sync()?;
            }
            Op::List { zone } => {
                allowed("list", self.zone(*zone).list_keys())?;
            }
            Op::Encrypt {
                key,
                zone,
                times,
                plaintext,
                context,
            } => {
                if let Some(id) = self.key(*key) {
                    for _ in 0..*times {
                        // The link's counts before this encryption are its own: no delivery
                        // of an earlier one is still under way.
                        self.wait_for_deliveries();
                        let faults = self.link.counts();
                        let result = self.zone(*zone).encrypt(id, plaintext, context.as_deref());
                        if let Err(error) = &result
                            && error.code() == "rotation-pending"
                        {
                            self.check_rotation_pending(id, *zone, faults)?;
                        }
                        if let Some(sealed) = allowed("encrypt", result)? {
                            self.sealed.push(Sealed {
                                key: id,
                                zone: *zone,
                                plaintext: plaintext.clone(),
                                context: context.clone(),
                                ciphertext: sealed.ciphertext,
                            });
                        }
                    }
                }
            }
            Op::Fault { zone, fault } => self.link.script(ZONES[*zone], *fault),
            Op::Cut { zone } => self.link.cut(ZONES[*zone]),
            Op::Heal { zone } => self.link.heal(ZONES[*zone]),
            Op::Release(order) => {
                self.link.release(*order);
            }
        }
        Ok(())
    }

    /// Encryption in replica zone `z` answered rotation-pending: its budget is spent and
    /// the new version asked of the origin did not arrive. Only a fault of the link on the
    /// way, a delivery to `z` still in backoff (a failure recorded less than 5 minutes ago)
    /// or an origin that cannot rotate (not enabled) excuse that.
    fn check_rotation_pending(
        &self,
        id: KeyId,
        z: usize,
        faults: Counts,
    ) -> Result<(), TestCaseError> {
        add(&ROTATIONS_PENDING, 1);
        prop_assert!(z != ORIGIN, "rotation-pending at the origin");
        let fates = |counts: Counts| Counts {
            passed: 0,
            ..counts
        };
        if fates(self.link.counts()) != fates(faults) {
            return Ok(());
        }
        let Ok(origin) = self.origin().get_key(id) else {
            return Ok(());
        };
        // A retry waits at most 5 minutes (design.md): a failure older than that is due.
        let backoff = self.origin().now() - SignedDuration::from_mins(5);
        let in_backoff = origin
            .replicas_status
            .iter()
            .filter(|s| s.zone == ZONES[z])
            .filter_map(|s| s.last_failure.as_ref())
            .any(|failure| failure.failed_at > backoff);
        prop_assert!(
            origin.key.status != KeyStatus::Enabled || in_backoff,
            "encrypt in {} answered rotation-pending with a sound link and an enabled origin: {:?}",
            ZONES[z],
            origin
        );
        Ok(())
    }

    /// Heals every link and waits out the longest retry backoff (5 minutes, design.md); then
    /// the origin's due runner alone must bring every replica up to date, leaving nothing to
    /// a sync. Then releases the held messages (late, out of order, after the replicas are up
    /// to date): they must change nothing. And syncs again.
    fn settle(&self, order: usize) -> Result<(), TestCaseError> {
        self.link.heal_all();
        self.zones.clock.advance(SignedDuration::from_mins(5));
        let due = self.run_due(ORIGIN)?;
        prop_assert!(
            due.replication.failed.is_empty() && due.replication.deferred.is_empty(),
            "run_due after healing and waiting out the backoff: {:?}",
            due
        );
        let first = self.sync()?;
        prop_assert!(
            first.delivered.is_empty() && first.failed.is_empty(),
            "run_due left deliveries to sync: {first:?}"
        );
        let before = self.replica_keys()?;
        let released = self.link.release(order);
        // Every replica holds its origin's latest revision: each late message is stale (or
        // about a key gone) and changes nothing, not even a replica's own revision.
        prop_assert_eq!(
            self.replica_keys()?,
            before,
            "{} late messages changed a replica that was up to date",
            released
        );
        let report = self.sync()?;
        prop_assert!(
            report.failed.is_empty(),
            "the second sync after healing still fails: {report:?}"
        );
        prop_assert_eq!(self.link.held(), 0);
        Ok(())
    }

    /// What the replica zones list, every field included.
    fn replica_keys(&self) -> Result<Vec<Vec<keylife::KeySummary>>, TestCaseError> {
        (1..ZONES.len())
            .map(|z| {
                self.zone(z)
                    .list_keys()
                    .map(|list| list.kms_keys)
                    .map_err(|e| TestCaseError::fail(format!("list in {}: {e}", ZONES[z])))
            })
            .collect()
    }

    /// Every replica of every key still at the origin has converged to it; a key gone at the
    /// origin is gone everywhere; no zone holds a key it should not.
    fn check_converged(&mut self) -> Result<(), TestCaseError> {
        let mut expected: Vec<BTreeSet<KeyId>> = vec![BTreeSet::new(); ZONES.len()];
        for &id in &self.keys {
            let origin = match self.origin().get_key(id) {
                Ok(origin) => origin,
                Err(error) => {
                    prop_assert_eq!(error.code(), "key-not-found", "origin get {}", id);
                    for (z, name) in ZONES.iter().enumerate() {
                        not_found(&format!("{id} deleted at the origin, in {name}"), {
                            self.zone(z).get_key(id)
                        })?;
                    }
                    continue;
                }
            };
            expected[ORIGIN].insert(id);
            let o = &origin.key;
            let seq = o.revision.seq;
            prop_assert_eq!(&o.origin_zone, ZONES[ORIGIN]);
            let rotations = self
                .origin()
                .list_key_rotations(id)
                .map_err(|e| TestCaseError::fail(format!("origin rotations of {id}: {e}")))?;
            prop_assert_eq!(
                origin
                    .replicas_status
                    .iter()
                    .map(|s| s.zone.as_str())
                    .collect::<Vec<_>>(),
                o.replicas.iter().map(String::as_str).collect::<Vec<_>>(),
                "replicas-status of {}",
                id
            );
            for state in &origin.replicas_status {
                prop_assert_eq!(
                    state.last_applied_watermark,
                    seq,
                    "watermark of {} in {}: {:?}",
                    id,
                    &state.zone,
                    &origin
                );
                prop_assert!(
                    state.last_failure.is_none(),
                    "failure left for {id} in {}: {origin:?}",
                    state.zone
                );
            }
            for (z, name) in ZONES.iter().enumerate().skip(1) {
                if !o.replicas.iter().any(|r| r == name) {
                    not_found(&format!("{id} never replicated to {name}"), {
                        self.zone(z).get_key(id)
                    })?;
                    continue;
                }
                expected[z].insert(id);
                add(&REPLICAS_CHECKED, 1);
                let replica = self.zone(z).get_key(id).map_err(|e| {
                    TestCaseError::fail(format!(
                        "replica of {id} in {name}: {e}; origin {origin:?}"
                    ))
                })?;
                let r = &replica.key;
                let context = format!("replica of {id} in {name}: {r:?}\norigin: {o:?}");
                prop_assert_eq!(r.id, o.id, "{}", &context);
                prop_assert_eq!(&r.name, &o.name, "{}", &context);
                prop_assert_eq!(&r.description, &o.description, "{}", &context);
                prop_assert_eq!(r.usage, o.usage, "{}", &context);
                prop_assert_eq!(r.source, o.source, "{}", &context);
                prop_assert!(r.multi_zone, "{}", &context);
                prop_assert_eq!(&r.origin_zone, ZONES[ORIGIN], "{}", &context);
                prop_assert_eq!(r.created_at, o.created_at, "{}", &context);
                prop_assert_eq!(r.material, o.material, "material: {}", &context);
                prop_assert_eq!(r.rotation, o.rotation, "rotation: {}", &context);
                prop_assert_eq!(r.delete_at, o.delete_at, "delete-at: {}", &context);
                prop_assert_eq!(
                    r.status == KeyStatus::PendingDeletion,
                    o.status == KeyStatus::PendingDeletion,
                    "pending deletion: {}",
                    &context
                );
                if o.status != KeyStatus::PendingDeletion
                    && self.must_be_disabled.get(&(id, z)) == Some(&true)
                {
                    prop_assert_eq!(r.status, KeyStatus::Disabled, "status: {}", &context);
                }
                prop_assert_eq!(&r.replicas, &o.replicas, "replicas: {}", &context);
                prop_assert!(
                    replica.replicas_status.is_empty(),
                    "bookkeeping lives at the origin: {}",
                    &context
                );
                let replica_rotations = self
                    .zone(z)
                    .list_key_rotations(id)
                    .map_err(|e| TestCaseError::fail(format!("rotations of {context}: {e}")))?;
                prop_assert_eq!(&replica_rotations, &rotations, "rotations: {}", &context);
            }
        }
        // Each zone's cryptography follows the status it shows (its memory follows its store),
        // and what it encrypts is remembered for the decryptions.
        for (z, held) in expected.iter().enumerate() {
            for &id in held {
                self.check_usable(id, z)?;
            }
        }
        for (z, name) in ZONES.iter().enumerate() {
            let listed: BTreeSet<KeyId> = self
                .zone(z)
                .list_keys()
                .map_err(|e| TestCaseError::fail(format!("list in {name}: {e}")))?
                .kms_keys
                .iter()
                .map(|k| k.id)
                .collect();
            prop_assert_eq!(&listed, &expected[z], "keys held in {}", name);
        }
        Ok(())
    }

    /// Encrypts with key `id` in zone `z`: allowed if and only if it is enabled there, else
    /// refused for its status.
    fn check_usable(&mut self, id: KeyId, z: usize) -> Result<(), TestCaseError> {
        let kms = self.zone(z);
        let status = kms
            .get_key(id)
            .map_err(|e| TestCaseError::fail(format!("{id} in {}: {e}", ZONES[z])))?
            .key
            .status;
        let origin_status = self
            .origin()
            .get_key(id)
            .map_err(|e| TestCaseError::fail(format!("{id} at the origin: {e}")))?
            .key
            .status;
        let plaintext = format!("{id} in {}", ZONES[z]).into_bytes();
        let result = kms.encrypt(id, &plaintext, Some(b"check"));
        // With a small budget the encryption may have made a new version at the origin, whose
        // delivery runs in the background: see it through, as after every step.
        self.wait_for_deliveries();
        let what = format!("encrypt with {id} ({status:?}) in {}", ZONES[z]);
        match (status, result) {
            (KeyStatus::Enabled, Ok(sealed)) => self.sealed.push(Sealed {
                key: id,
                zone: z,
                plaintext,
                context: Some(b"check".to_vec()),
                ciphertext: sealed.ciphertext,
            }),
            (KeyStatus::Disabled, Err(error)) => {
                prop_assert_eq!(error.code(), "key-disabled", "{}", what);
            }
            (KeyStatus::PendingDeletion, Err(error)) => {
                prop_assert_eq!(error.code(), "key-pending-deletion", "{}", what);
            }
            // A replica whose budget is spent while its origin cannot rotate (disabled there).
            (KeyStatus::Enabled, Err(error))
                if self.small_budget
                    && z != ORIGIN
                    && error.code() == "rotation-pending"
                    && origin_status != KeyStatus::Enabled => {}
            (_, result) => {
                return Err(TestCaseError::fail(format!(
                    "{what}: {:?}",
                    result.map(|_| ())
                )));
            }
        }
        Ok(())
    }

    /// Enables every key that is not pending deletion (the origin first, then sync, then its
    /// replicas), checks the convergence again, and decrypts every ciphertext made during
    /// the case in every zone that holds its key.
    fn check_ciphertexts(&mut self) -> Result<(), TestCaseError> {
        let mut usable = Vec::new();
        for &id in &self.keys {
            let Ok(origin) = self.origin().get_key(id) else {
                continue;
            };
            match origin.key.status {
                KeyStatus::PendingDeletion => continue,
                KeyStatus::Disabled => {
                    self.origin()
                        .enable_key(id, None)
                        .map_err(|e| TestCaseError::fail(format!("enable {id} at origin: {e}")))?;
                }
                KeyStatus::Enabled => {}
            }
            usable.push((id, origin.key.replicas));
        }
        let report = self.sync()?;
        prop_assert!(report.failed.is_empty(), "sync after enabling: {report:?}");
        self.check_converged()?;
        for (id, replicas) in &usable {
            for (z, name) in ZONES.iter().enumerate().skip(1) {
                if replicas.iter().any(|r| r == name) {
                    self.zone(z).enable_key(*id, None).map_err(|e| {
                        TestCaseError::fail(format!("enable replica of {id} in {name}: {e}"))
                    })?;
                }
            }
        }
        for sealed in &self.sealed {
            let Some((_, replicas)) = usable.iter().find(|(id, _)| *id == sealed.key) else {
                continue;
            };
            for (z, name) in ZONES.iter().enumerate() {
                if z != ORIGIN && !replicas.iter().any(|r| r == name) {
                    continue;
                }
                add(&DECRYPTS_CHECKED, 1);
                let opened = self
                    .zone(z)
                    .decrypt(sealed.key, &sealed.ciphertext, sealed.context.as_deref())
                    .map_err(|e| {
                        TestCaseError::fail(format!(
                            "a ciphertext of {} made in {} does not decrypt in {name}: {e}",
                            sealed.key, ZONES[sealed.zone]
                        ))
                    })?;
                prop_assert_eq!(
                    opened.plaintext.as_bytes(),
                    sealed.plaintext.as_slice(),
                    "ciphertext of {} made in {}, opened in {}",
                    sealed.key,
                    ZONES[sealed.zone],
                    name
                );
            }
        }
        Ok(())
    }
}

fn run_case(
    budget: Option<u64>,
    initial: &[bool],
    ops: &[Op],
    order: usize,
) -> Result<(), TestCaseError> {
    let mut case = Case::new(budget);
    let result = (|| {
        for (name, &multi_zone) in initial.iter().enumerate() {
            case.step(&Op::Create { name, multi_zone })?;
        }
        for op in ops {
            case.step(op)?;
        }
        case.settle(order)?;
        case.check_converged()?;
        case.check_ciphertexts()
    })();
    add(&CASES_RUN, 1);
    add(&OPS_RUN, ops.len());
    record_counts(case.link.counts());
    result
}

#[test]
fn replicas_converge_under_link_faults() {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(CASES);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        prop_oneof![3 => Just(None), 1 => (1u64..=4).prop_map(Some)],
        prop::collection::vec(prop::bool::weighted(0.85), 1..=INITIAL_KEYS),
        prop::collection::vec(op(), 1..=MAX_OPS),
        0usize..64,
    );
    let result = runner.run(&strategy, |(budget, initial, ops, order)| {
        run_case(budget, &initial, &ops, order)
    });
    eprintln!(
        "replication model: {} cases, {} ops, {} keys, {} refusals ({} rotation-pending), {} \
         messages, {} replicas and {} decryptions checked; faults: dropped={} lost-answer={} duplicated={} delayed={} \
         released={} cut-off={}",
        total(&CASES_RUN),
        total(&OPS_RUN),
        total(&KEYS_CREATED),
        total(&REFUSALS),
        total(&ROTATIONS_PENDING),
        total(&PASSED)
            + total(&DROPPED)
            + total(&ANSWERS_LOST)
            + total(&DUPLICATED)
            + total(&DELAYED)
            + total(&CUT_OFF),
        total(&REPLICAS_CHECKED),
        total(&DECRYPTS_CHECKED),
        total(&DROPPED),
        total(&ANSWERS_LOST),
        total(&DUPLICATED),
        total(&DELAYED),
        total(&RELEASED),
        total(&CUT_OFF),
    );
    match result {
        Ok(()) => {}
        Err(TestError::Fail(reason, (budget, initial, ops, order))) => panic!(
            "{reason}\nminimal failing case: encryption budget {budget:?}, keys created first \
             (multi-zone?) {initial:?}, final release order {order}, ops:\n{ops:#?}"
        ),
        Err(TestError::Abort(reason)) => panic!("aborted: {reason}"),
    }
    if cases >= 64 {
        for (fate, counter) in [
            ("dropped", &DROPPED),
            ("lost-answer", &ANSWERS_LOST),
            ("duplicated", &DUPLICATED),
            ("delayed", &DELAYED),
            ("released", &RELEASED),
            ("cut-off", &CUT_OFF),
        ] {
            assert!(total(counter) > 0, "no message was {fate} over the run");
        }
        assert!(total(&REPLICAS_CHECKED) > 0 && total(&DECRYPTS_CHECKED) > 0);
    }
}
