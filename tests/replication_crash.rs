//! Crash tests for multi-zone replication: the origin and the replicas (sled stores) are
//! closed and reopened while deliveries are pending; after reopening and a sync, nothing is
//! missing (lifecycle.md, "Multi-zone replication": no change of the origin is ever skipped or
//! lost, across restarts of either side).
//!
//! Three zones `a` (the origin), `b` and `c`, each a sled store in its own directory under its
//! own root key, share one manual clock and one [`FaultLink`]. Closing a zone drops its only
//! `Kms` handle (the link holds zones weakly), which closes the store: messages to it then fail
//! as unreachable until it is reopened and attached again.

mod common;

use std::sync::Arc;

use common::fault::{Fault, FaultLink};
use common::{root, start};
use jiff::SignedDuration;
use keylife::{
    CreateKey, Error, KeyDetails, KeyId, KeyStatus, Kms, KmsOptions, LocalLink, ManualClock,
    SyncReport,
};
use tempfile::TempDir;

const A: usize = 0;
const B: usize = 1;
const C: usize = 2;
const ALL: [usize; 3] = [A, B, C];
const NAMES: [&str; 3] = ["a", "b", "c"];

/// Longer than the longest retry backoff (300 s): after it, a change is pushed at once again.
const PAST_BACKOFF: SignedDuration = SignedDuration::from_secs(301);

/// The three zones: their stores, and the `Kms` of each zone that is open.
struct Cluster {
    clock: ManualClock,
    link: Arc<FaultLink>,
    dirs: [TempDir; 3],
    kms: [Option<Arc<Kms>>; 3],
}

impl Cluster {
    /// Three new, open zones.
    fn new() -> Cluster {
        let mut cluster = Cluster {
            clock: ManualClock::new(start()),
            link: FaultLink::new(LocalLink::new()),
            dirs: [(); 3].map(|()| tempfile::tempdir().unwrap()),
            kms: [None, None, None],
        };
        cluster.open(&ALL);
        cluster
    }

    /// Opens the stores of `zones` (closed) and attaches them to the link.
    fn open(&mut self, zones: &[usize]) {
        for &i in zones {
            assert!(self.kms[i].is_none(), "zone {} is open", NAMES[i]);
            let kms = Kms::open(
                self.dirs[i].path(),
                root(u8::try_from(i).unwrap() + 1),
                KmsOptions::new(NAMES[i])
                    .clock(self.clock.clone())
                    .link(self.link.clone()),
            )
            .unwrap_or_else(|e| panic!("reopening zone {}: {e}", NAMES[i]));
            let kms = Arc::new(kms);
            self.link.inner().attach(&kms);
            self.kms[i] = Some(kms);
        }
    }

    /// Closes `zones` (open): drops their `Kms`, which must be the last handle. The
    /// deliveries the open zones have under way finish first (one may hold a handle on a zone
    /// it delivers to); what is owed stays owed.
    fn close(&mut self, zones: &[usize]) {
        for kms in self.kms.iter().flatten() {
            kms.wait_for_deliveries();
        }
        for &i in zones {
            let kms = self.kms[i]
                .take()
                .unwrap_or_else(|| panic!("zone {} is closed", NAMES[i]));
            let kms = Arc::into_inner(kms).expect("the cluster holds the only handle on a zone");
            drop(kms);
        }
    }

    /// Closes `zones` (all at once, as a crash would), then reopens them.
    fn restart(&mut self, zones: &[usize]) {
        self.close(zones);
        self.open(zones);
    }

    fn is_open(&self, i: usize) -> bool {
        self.kms[i].is_some()
    }

    /// The open zone `i`.
    fn zone(&self, i: usize) -> &Kms {
        self.kms[i]
            .as_deref()
            .unwrap_or_else(|| panic!("zone {} is closed", NAMES[i]))
    }

    /// Moves the clock past every retry backoff.
    fn past_backoff(&self) {
        self.clock.advance(PAST_BACKOFF);
    }
}

/// Creates multi-zone key `name` in `a`, replicates it to `replicas` (open and reachable) and
/// checks that they hold it.
fn create_replicated(cluster: &Cluster, name: &str, replicas: &[usize]) -> KeyId {
    let a = cluster.zone(A);
    let id = a
        .create_key(&CreateKey::new(name).multi_zone(true))
        .unwrap()
        .id;
    for &r in replicas {
        a.replicate_key(id, NAMES[r], None).unwrap();
    }
    a.wait_for_deliveries();
    let expected: Vec<_> = replicas.iter().map(|&r| (r, KeyStatus::Enabled)).collect();
    assert_converged(cluster, id, &expected);
    id
}

/// Checks that every replica of origin key `id` holds the origin's latest revision: the same
/// material versions, rotation settings and deletion schedule, each replica in the status
/// given; and that the origin's bookkeeping shows each at the origin's `revision.seq`, with no
/// failure.
fn assert_converged(cluster: &Cluster, id: KeyId, replicas: &[(usize, KeyStatus)]) {
    let a = cluster.zone(A);
    let origin = a.get_key(id).unwrap();
    let seq = origin.key.revision.seq;
    let zones: Vec<&str> = replicas.iter().map(|&(r, _)| NAMES[r]).collect();
    assert_eq!(origin.key.replicas, zones, "the origin's replicas");
    let status_zones: Vec<&str> = origin
        .replicas_status
        .iter()
        .map(|state| state.zone.as_str())
        .collect();
    assert_eq!(status_zones, zones, "{:?}", origin.replicas_status);
    for state in &origin.replicas_status {
        assert_eq!(
            state.last_applied_watermark, seq,
            "replica {} is behind the origin's revision {seq}: {state:?}",
            state.zone
        );
        assert_eq!(state.last_failure, None, "replica {}", state.zone);
    }
    let rotations = a.list_key_rotations(id).unwrap();
    for &(r, status) in replicas {
        let kms = cluster.zone(r);
        let got = kms
            .get_key(id)
            .unwrap_or_else(|e| panic!("zone {} lacks key {id}: {e}", NAMES[r]))
            .key;
        let zone = NAMES[r];
        assert_eq!(got.origin_zone, "a", "zone {zone}");
        assert_eq!(got.name, origin.key.name, "zone {zone}");
        assert!(got.multi_zone, "zone {zone}");
        assert_eq!(got.material, origin.key.material, "zone {zone}");
        assert_eq!(got.rotation, origin.key.rotation, "zone {zone}");
        assert_eq!(got.delete_at, origin.key.delete_at, "zone {zone}");
        assert_eq!(got.replicas, origin.key.replicas, "zone {zone}");
        assert_eq!(got.status, status, "status in zone {zone}");
        assert_eq!(
            kms.list_key_rotations(id).unwrap(),
            rotations,
            "zone {zone}"
        );
    }
}

/// Checks that nothing waits in `a`'s outbox: a sync has nothing to do.
fn assert_nothing_pending(cluster: &Cluster) {
    assert_eq!(cluster.zone(A).sync().unwrap(), SyncReport::default());
}

/// The replica state of `zone` in `details` (an origin key's).
fn replica_state<'d>(details: &'d KeyDetails, zone: &str) -> &'d keylife::api::ReplicaState {
    details
        .replicas_status
        .iter()
        .find(|state| state.zone == zone)
        .unwrap_or_else(|| panic!("no replica state for {zone}: {details:?}"))
}

/// A ciphertext and what it must open to.
#[derive(Debug)]
struct Sealed {
    id: KeyId,
    made_in: usize,
    plaintext: Vec<u8>,
    context: Vec<u8>,
    ciphertext: Vec<u8>,
}

impl Sealed {
    /// Encrypts message number `n` with key `id` in zone `zone`.
    fn new(cluster: &Cluster, zone: usize, id: KeyId, n: usize) -> Result<Sealed, Error> {
        let plaintext = format!("message {n} from {}", NAMES[zone]).into_bytes();
        let context = format!("context {n}").into_bytes();
        let ciphertext = cluster
            .zone(zone)
            .encrypt(id, &plaintext, Some(&context))?
            .ciphertext;
        Ok(Sealed {
            id,
            made_in: zone,
            plaintext,
            context,
            ciphertext,
        })
    }

    /// The material version it was made with.
    fn version(&self) -> u32 {
        keylife::crypto::Header::parse(&self.ciphertext)
            .unwrap()
            .0
            .version
    }

    fn open_in(&self, cluster: &Cluster, zone: usize) -> Result<Vec<u8>, Error> {
        let opened = cluster
            .zone(zone)
            .decrypt(self.id, &self.ciphertext, Some(&self.context))?;
        Ok(opened.plaintext.as_bytes().to_vec())
    }

    /// Checks that it decrypts in `zone`.
    fn assert_opens_in(&self, cluster: &Cluster, zone: usize) {
        let opened = self.open_in(cluster, zone).unwrap_or_else(|e| {
            panic!(
                "zone {} cannot decrypt v{} ciphertext of {} made in {}: {e}",
                NAMES[zone],
                self.version(),
                self.id,
                NAMES[self.made_in]
            )
        });
        assert_eq!(opened, self.plaintext);
    }
}

#[test]
fn origin_restarts_with_deliveries_pending() {
    let mut cluster = Cluster::new();
    let id = create_replicated(&cluster, "payments", &[B, C]);
    let mut sealed = vec![Sealed::new(&cluster, A, id, 0).unwrap()];

    // c is cut off; every message to b meets a fault, the last one held back.
    cluster.link.cut("c");
    for fault in [
        Fault::Delay,
        Fault::LoseAnswer,
        Fault::Drop,
        Fault::Duplicate,
        Fault::Delay,
        Fault::Drop,
        Fault::LoseAnswer,
        Fault::Drop,
        Fault::Delay,
    ] {
        cluster.link.script("b", fault);
    }
    {
        let a = cluster.zone(A);
        // Each change is pushed at once (the clock moves past the backoff between them).
        let changes: [&dyn Fn() -> Result<(), Error>; 9] = [
            &|| a.rotate_key(id, None).map(drop),
            &|| a.disable_key_rotation(id, None).map(drop),
            &|| a.schedule_key_deletion(id, Some(7), None).map(drop),
            &|| a.cancel_key_deletion(id, None).map(drop),
            &|| a.enable_key(id, None).map(drop),
            &|| a.rotate_key(id, None).map(drop),
            &|| a.enable_key_rotation(id, Some(90), None).map(drop),
            &|| a.disable_key(id, None).map(drop),
            &|| a.enable_key(id, None).map(drop),
        ];
        for (n, change) in changes.iter().enumerate() {
            change().unwrap();
            a.wait_for_deliveries();
            cluster.past_backoff();
            if n == 0 || n == 5 {
                sealed.push(Sealed::new(&cluster, A, id, n + 1).unwrap());
            }
        }
    }
    assert_eq!(cluster.link.held(), 3, "{:?}", cluster.link.counts());
    assert_eq!(
        sealed.iter().map(Sealed::version).collect::<Vec<_>>(),
        [1, 2, 3]
    );

    // Before the crash: both replicas are behind, each with its failure recorded.
    let before = cluster.zone(A).get_key(id).unwrap();
    let seq = before.key.revision.seq;
    assert_eq!(seq, 3 + 9, "create, two replicate-key, nine changes");
    for zone in ["b", "c"] {
        let state = replica_state(&before, zone);
        assert!(state.last_applied_watermark < seq, "{state:?}");
        let failure = state.last_failure.as_ref().expect("a failure is recorded");
        assert_eq!(failure.attempted_watermark, seq, "{state:?}");
    }
    assert_eq!(replica_state(&before, "c").last_applied_watermark, 3);

    // The origin crashes, and the network with it.
    cluster.link.lose_held();
    cluster.restart(&[A]);
    assert_eq!(
        cluster.zone(A).get_key(id).unwrap(),
        before,
        "the key and its replicas' bookkeeping survive the restart"
    );
    let c_before = cluster.zone(C).get_key(id).unwrap().key;
    assert_eq!(c_before.material.version, 1, "c got nothing yet");
    assert_eq!(c_before.rotation.manual_count, 0);

    cluster.link.heal("c");
    let report = cluster.zone(A).sync().unwrap();
    assert_eq!(report.failed, vec![], "{report:?}");
    assert_eq!(
        report.delivered,
        vec![(id, "b".to_owned()), (id, "c".to_owned())]
    );
    // The cancelled deletion disabled both replicas, though c never saw it scheduled; a's own
    // disable and enable are not theirs.
    assert_eq!(
        cluster.zone(A).get_key(id).unwrap().key.status,
        KeyStatus::Enabled
    );
    assert_converged(
        &cluster,
        id,
        &[(B, KeyStatus::Disabled), (C, KeyStatus::Disabled)],
    );
    let origin = cluster.zone(A).get_key(id).unwrap().key;
    assert_eq!(origin.material.version, 3);
    assert!(origin.rotation.automatic);
    assert_eq!(origin.rotation.rotation_period, 90);
    assert_eq!(origin.rotation.manual_count, 2);
    assert_nothing_pending(&cluster);

    // Every ciphertext made in a before the crash decrypts in b and c once they are enabled.
    for r in [B, C] {
        assert_eq!(
            sealed[0].open_in(&cluster, r).unwrap_err(),
            Error::KeyDisabled { id }
        );
        cluster.zone(r).enable_key(id, None).unwrap();
        for s in &sealed {
            s.assert_opens_in(&cluster, r);
        }
    }
    // And the replicas encrypt with the newest version, which every zone opens.
    let from_b = Sealed::new(&cluster, B, id, 99).unwrap();
    assert_eq!(from_b.version(), 3);
    for zone in ALL {
        from_b.assert_opens_in(&cluster, zone);
    }
}

#[test]
fn replicas_restart_with_deliveries_pending() {
    let mut cluster = Cluster::new();
    let id = create_replicated(&cluster, "orders", &[B, C]);
    let mut sealed = vec![Sealed::new(&cluster, A, id, 0).unwrap()];

    // Delivered partly: c gets the rotation and the rotation settings, b's message is held.
    cluster.link.script("b", Fault::Delay);
    cluster.zone(A).rotate_key(id, None).unwrap();
    cluster.zone(A).wait_for_deliveries();
    cluster.zone(A).disable_key_rotation(id, None).unwrap();
    cluster.zone(A).wait_for_deliveries();
    assert_eq!(cluster.link.held(), 1);
    assert_eq!(cluster.zone(B).get_key(id).unwrap().key.material.version, 1);
    let c_seen = cluster.zone(C).get_key(id).unwrap().key;
    assert_eq!(c_seen.material.version, 2);
    assert!(!c_seen.rotation.automatic);

    // Both replicas crash with the message to b in flight, which is lost.
    cluster.close(&[B, C]);
    cluster.link.lose_held();

    // Changes while they are closed: every delivery fails and is recorded.
    cluster.past_backoff();
    cluster.zone(A).rotate_key(id, None).unwrap();
    sealed.push(Sealed::new(&cluster, A, id, 1).unwrap());
    cluster
        .zone(A)
        .enable_key_rotation(id, Some(180), None)
        .unwrap();
    let report = cluster.zone(A).sync().unwrap();
    assert_eq!(report.delivered, vec![]);
    let failed: Vec<_> = report
        .failed
        .iter()
        .map(|(key, zone, error)| (*key, zone.as_str(), error.code()))
        .collect();
    assert_eq!(
        failed,
        vec![(id, "b", "zone-unreachable"), (id, "c", "zone-unreachable")]
    );
    let at_a = cluster.zone(A).get_key(id).unwrap();
    let seq = at_a.key.revision.seq;
    assert_eq!(seq, 3 + 4, "create, two replicate-key, four changes");
    for (zone, applied) in [("b", 3), ("c", 5)] {
        let state = replica_state(&at_a, zone);
        assert_eq!(state.last_applied_watermark, applied, "{state:?}");
        let failure = state
            .last_failure
            .as_ref()
            .unwrap_or_else(|| panic!("no failure recorded for {zone}: {state:?}"));
        assert_eq!(failure.attempted_watermark, seq, "{state:?}");
        assert!(
            failure
                .error
                .contains(&format!("zone {zone} is unreachable"))
                && failure.error.contains("closed"),
            "{failure:?}"
        );
        assert_eq!(failure.failed_at, cluster.zone(A).now());
    }

    // Reopened, the replicas hold what they had before the crash, and nothing more until the
    // origin delivers.
    cluster.open(&[B, C]);
    assert_eq!(cluster.zone(B).get_key(id).unwrap().key.material.version, 1);
    assert_eq!(cluster.zone(C).get_key(id).unwrap().key.material.version, 2);
    let report = cluster.zone(A).sync().unwrap();
    assert_eq!(report.failed, vec![], "{report:?}");
    assert_eq!(
        report.delivered,
        vec![(id, "b".to_owned()), (id, "c".to_owned())]
    );
    let expected = [(B, KeyStatus::Enabled), (C, KeyStatus::Enabled)];
    assert_converged(&cluster, id, &expected);
    assert_eq!(cluster.zone(B).get_key(id).unwrap().key.material.version, 3);
    for r in [B, C] {
        for s in &sealed {
            s.assert_opens_in(&cluster, r);
        }
    }

    // Everything restarts once more: the cleared failures and the replicas stay as they are.
    cluster.restart(&ALL);
    assert_converged(&cluster, id, &expected);
    assert_nothing_pending(&cluster);
    let from_c = Sealed::new(&cluster, C, id, 2).unwrap();
    assert_eq!(from_c.version(), 3);
    for zone in ALL {
        for s in sealed.iter().chain([&from_c]) {
            s.assert_opens_in(&cluster, zone);
        }
    }
}

/// A small deterministic generator (splitmix64), so that the rounds are the same every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n`.
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n).unwrap()).unwrap()
    }

    /// True one time in `n`.
    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    /// The zones of `zones` whose bit is set in a random mask.
    fn subset(&mut self, zones: &[usize]) -> Vec<usize> {
        let mask = self.next();
        zones
            .iter()
            .copied()
            .filter(|&z| mask & (1 << z) != 0)
            .collect()
    }
}

/// What the test expects of one origin key.
#[derive(Debug)]
struct Model {
    id: KeyId,
    status: KeyStatus,
    automatic: bool,
    manual_rotations: u32,
    replicas: Vec<usize>,
    /// The status each replica reaches once it has followed the origin (by zone).
    replica_status: [KeyStatus; 3],
}

impl Model {
    fn expected_replicas(&self) -> Vec<(usize, KeyStatus)> {
        self.replicas
            .iter()
            .map(|&r| (r, self.replica_status[r]))
            .collect()
    }
}

/// A change the origin can make to a key.
#[derive(Debug, Clone, Copy)]
enum Change {
    Rotate,
    EnableRotation,
    DisableRotation,
    Disable,
    Enable,
    Schedule,
    Cancel,
    ReplicateTo(usize),
}

/// The changes `a` accepts for `model`'s key.
fn possible_changes(model: &Model) -> Vec<Change> {
    let mut changes = Vec::new();
    match model.status {
        KeyStatus::Enabled => {
            if model.manual_rotations < 10 {
                changes.push(Change::Rotate);
            }
            changes.push(if model.automatic {
                Change::DisableRotation
            } else {
                Change::EnableRotation
            });
            changes.push(Change::Disable);
            changes.push(Change::Schedule);
            for zone in [B, C] {
                if !model.replicas.contains(&zone) {
                    changes.push(Change::ReplicateTo(zone));
                }
            }
        }
        KeyStatus::Disabled => {
            changes.push(Change::Enable);
            changes.push(Change::Schedule);
        }
        KeyStatus::PendingDeletion => changes.push(Change::Cancel),
    }
    changes
}

/// Makes `change` at `a` and follows it in `model`.
fn make_change(cluster: &Cluster, model: &mut Model, change: Change) {
    let a = cluster.zone(A);
    let id = model.id;
    match change {
        Change::Rotate => {
            a.rotate_key(id, None).unwrap();
            model.manual_rotations += 1;
        }
        Change::EnableRotation => {
            a.enable_key_rotation(id, Some(90), None).unwrap();
            model.automatic = true;
        }
        Change::DisableRotation => {
            a.disable_key_rotation(id, None).unwrap();
            model.automatic = false;
        }
        Change::Disable => {
            a.disable_key(id, None).unwrap();
            model.status = KeyStatus::Disabled;
        }
        Change::Enable => {
            a.enable_key(id, None).unwrap();
            model.status = KeyStatus::Enabled;
        }
        Change::Schedule => {
            a.schedule_key_deletion(id, Some(7), None).unwrap();
            model.status = KeyStatus::PendingDeletion;
            for &r in &model.replicas {
                model.replica_status[r] = KeyStatus::PendingDeletion;
            }
        }
        Change::Cancel => {
            a.cancel_key_deletion(id, None).unwrap();
            model.status = KeyStatus::Disabled;
            for &r in &model.replicas {
                model.replica_status[r] = KeyStatus::Disabled;
            }
        }
        Change::ReplicateTo(zone) => {
            a.replicate_key(id, NAMES[zone], None).unwrap();
            model.replicas.push(zone);
            model.replica_status[zone] = KeyStatus::Enabled;
        }
    }
    // The change's deliveries are made in the background at once: see them through.
    a.wait_for_deliveries();
}

/// Whether replica `zone` of `model`'s key is known at the origin to hold its latest revision.
fn confirmed_current(cluster: &Cluster, model: &Model, zone: usize) -> bool {
    let details = cluster.zone(A).get_key(model.id).unwrap();
    replica_state(&details, NAMES[zone]).last_applied_watermark == details.key.revision.seq
}

/// Every key's view in every open zone (to compare before and after late messages).
fn views(cluster: &Cluster, models: &[Model]) -> Vec<Result<KeyDetails, Error>> {
    models
        .iter()
        .flat_map(|m| ALL.map(|z| cluster.zone(z).get_key(m.id)))
        .collect()
}

#[test]
fn everything_restarts_repeatedly() {
    const ROUNDS: usize = 10;
    let mut cluster = Cluster::new();
    let mut rng = Rng(0x6b65_796c_6966_6533);
    // k1 is replicated to b and c at once; k2 only to b, and to c during the rounds.
    let mut models = vec![
        Model {
            id: create_replicated(&cluster, "k1", &[B, C]),
            status: KeyStatus::Enabled,
            automatic: true,
            manual_rotations: 0,
            replicas: vec![B, C],
            replica_status: [KeyStatus::Enabled; 3],
        },
        Model {
            id: create_replicated(&cluster, "k2", &[B]),
            status: KeyStatus::Enabled,
            automatic: true,
            manual_rotations: 0,
            replicas: vec![B],
            replica_status: [KeyStatus::Enabled; 3],
        },
    ];
    let mut sealed: Vec<Sealed> = Vec::new();
    // What the rounds exercised, checked at the end so that the schedule stays meaningful.
    let mut origin_crashes_with_pending = 0;
    let mut replica_crashes_with_pending = 0;
    let mut failed_while_closed = 0;
    let mut sealed_in_replicas = 0;

    for round in 0..ROUNDS {
        cluster.past_backoff();
        for zone in [B, C] {
            let faults = [
                None,
                Some(Fault::Drop),
                Some(Fault::Delay),
                Some(Fault::LoseAnswer),
                Some(Fault::Duplicate),
            ];
            if let Some(fault) = faults[rng.below(faults.len())] {
                cluster.link.script(NAMES[zone], fault);
            }
        }
        let cut = rng.one_in(4).then(|| [B, C][rng.below(2)]);
        if let Some(zone) = cut {
            cluster.link.cut(NAMES[zone]);
        }
        // Some replicas are down while the origin changes.
        let down = rng.subset(&[B, C]);
        cluster.close(&down);

        let model = &mut models[rng.below(2)];
        let changes = possible_changes(model);
        let change = changes[rng.below(changes.len())];
        make_change(&cluster, model, change);
        for &zone in &down {
            if model.replicas.contains(&zone) {
                let details = cluster.zone(A).get_key(model.id).unwrap();
                let state = replica_state(&details, NAMES[zone]);
                if let Some(failure) = &state.last_failure {
                    assert_ne!(state.last_applied_watermark, details.key.revision.seq);
                    assert!(!failure.error.is_empty());
                    failed_while_closed += 1;
                }
            }
        }

        // Encrypt in a, and in an open replica if it can (its status is its own).
        for model in &models {
            if model.status == KeyStatus::Enabled {
                sealed.push(Sealed::new(&cluster, A, model.id, sealed.len()).unwrap());
            }
            let zone = [B, C][rng.below(2)];
            if cluster.is_open(zone) && model.replicas.contains(&zone) {
                match Sealed::new(&cluster, zone, model.id, sealed.len()) {
                    Ok(s) => {
                        sealed.push(s);
                        sealed_in_replicas += 1;
                    }
                    Err(e) => assert!(
                        matches!(
                            e.code(),
                            "key-disabled" | "key-pending-deletion" | "key-not-found"
                        ),
                        "zone {} refused to encrypt: {e}",
                        NAMES[zone]
                    ),
                }
            }
        }

        // A replica up to date and disabled by a cancelled deletion is enabled again (its own
        // status); one up to date and enabled is sometimes disabled.
        for model in &mut models {
            for &zone in &model.replicas.clone() {
                if !cluster.is_open(zone) || !confirmed_current(&cluster, model, zone) {
                    continue;
                }
                let status = cluster.zone(zone).get_key(model.id).unwrap().key.status;
                assert_eq!(status, model.replica_status[zone], "round {round}");
                match status {
                    KeyStatus::Disabled if rng.one_in(2) => {
                        cluster.zone(zone).enable_key(model.id, None).unwrap();
                        model.replica_status[zone] = KeyStatus::Enabled;
                    }
                    KeyStatus::Enabled if rng.one_in(4) => {
                        cluster.zone(zone).disable_key(model.id, None).unwrap();
                        model.replica_status[zone] = KeyStatus::Disabled;
                    }
                    _ => {}
                }
            }
        }

        // The crash: a random subset of the zones goes down with the replicas already down,
        // sometimes with the network; then every zone comes back.
        let crashed = rng.subset(&[A, B, C]);
        let pending = models.iter().any(|m| {
            let details = cluster.zone(A).get_key(m.id).unwrap();
            details
                .replicas_status
                .iter()
                .any(|s| s.last_applied_watermark < details.key.revision.seq)
        });
        if pending && crashed.contains(&A) {
            origin_crashes_with_pending += 1;
        }
        if pending && (crashed.contains(&B) || crashed.contains(&C) || !down.is_empty()) {
            replica_crashes_with_pending += 1;
        }
        if rng.one_in(2) {
            cluster.link.lose_held();
        }
        let crashed: Vec<usize> = crashed.into_iter().filter(|z| !down.contains(z)).collect();
        cluster.close(&crashed);
        let mut reopen = down.clone();
        reopen.extend(&crashed);
        cluster.open(&reopen);
        if let Some(zone) = cut {
            cluster.link.heal(NAMES[zone]);
        }

        // Sometimes the origin syncs, sometimes its due runner retries, sometimes late
        // messages arrive, sometimes nothing happens.
        match rng.below(4) {
            0 => {
                cluster.zone(A).sync().unwrap();
            }
            1 => {
                cluster.zone(A).run_due().unwrap();
            }
            2 => {
                cluster.link.release(round);
            }
            _ => {}
        }
    }

    // The end: the network heals, everything restarts once more, and a sync brings every
    // replica up to date.
    cluster.link.heal_all();
    cluster.restart(&ALL);
    let report = cluster.zone(A).sync().unwrap();
    assert_eq!(report.failed, vec![], "{report:?}");
    for model in &models {
        assert_converged(&cluster, model.id, &model.expected_replicas());
        let origin = cluster.zone(A).get_key(model.id).unwrap().key;
        assert_eq!(origin.status, model.status);
        assert_eq!(origin.rotation.automatic, model.automatic);
        assert_eq!(origin.rotation.manual_count, model.manual_rotations);
        assert_eq!(origin.material.version, model.manual_rotations + 1);
    }
    assert_nothing_pending(&cluster);
    // Late messages still held change nothing.
    let settled = views(&cluster, &models);
    cluster.link.release(7);
    assert_eq!(
        views(&cluster, &models),
        settled,
        "late messages undid something"
    );

    // Every ciphertext decrypts in every zone holding its key where that key is enabled, and
    // is refused by its status elsewhere.
    for s in &sealed {
        let model = models.iter().find(|m| m.id == s.id).unwrap();
        let holders = std::iter::once((A, model.status)).chain(model.expected_replicas());
        for (zone, status) in holders {
            match status {
                KeyStatus::Enabled => s.assert_opens_in(&cluster, zone),
                KeyStatus::Disabled => assert_eq!(
                    s.open_in(&cluster, zone).unwrap_err().code(),
                    "key-disabled"
                ),
                KeyStatus::PendingDeletion => assert_eq!(
                    s.open_in(&cluster, zone).unwrap_err().code(),
                    "key-pending-deletion"
                ),
            }
        }
    }
    // Then enabled everywhere, every ciphertext decrypts everywhere.
    for model in &mut models {
        if model.status == KeyStatus::PendingDeletion {
            make_change(&cluster, model, Change::Cancel);
        }
        if model.status == KeyStatus::Disabled {
            make_change(&cluster, model, Change::Enable);
        }
    }
    cluster.zone(A).sync().unwrap();
    for model in &mut models {
        assert_converged(&cluster, model.id, &model.expected_replicas());
        for &zone in &model.replicas {
            cluster.zone(zone).enable_key(model.id, None).unwrap();
            model.replica_status[zone] = KeyStatus::Enabled;
        }
    }
    for s in &sealed {
        let model = models.iter().find(|m| m.id == s.id).unwrap();
        s.assert_opens_in(&cluster, A);
        for &zone in &model.replicas {
            s.assert_opens_in(&cluster, zone);
        }
    }

    assert!(
        origin_crashes_with_pending > 0
            && replica_crashes_with_pending > 0
            && failed_while_closed > 0
            && sealed_in_replicas > 0,
        "the rounds no longer exercise what they should: {origin_crashes_with_pending} origin \
         crashes and {replica_crashes_with_pending} replica crashes with deliveries pending, \
         {failed_while_closed} failures while closed, {sealed_in_replicas} encryptions in \
         replicas"
    );
    assert_eq!(models[1].replicas, [B, C], "k2 was replicated to c");
}

#[test]
fn a_deletion_waiting_for_a_replica_survives_restarts() {
    let mut cluster = Cluster::new();
    let a = cluster.zone(A);
    let id = a
        .create_key(&CreateKey::new("doomed").multi_zone(true))
        .unwrap()
        .id;
    // The first message to each replica, which creates it and carries every material version,
    // is held back, to arrive after the deletion.
    cluster.link.script("b", Fault::Delay);
    cluster.link.script("c", Fault::Delay);
    a.replicate_key(id, "b", None).unwrap();
    a.replicate_key(id, "c", None).unwrap();
    a.wait_for_deliveries();
    assert_eq!(cluster.link.held(), 2);
    a.sync().unwrap();
    assert_converged(
        &cluster,
        id,
        &[(B, KeyStatus::Enabled), (C, KeyStatus::Enabled)],
    );
    let old = Sealed::new(&cluster, A, id, 0).unwrap();
    cluster.zone(A).rotate_key(id, None).unwrap();

    // The deletion is scheduled and delivered to both replicas.
    let scheduled = cluster
        .zone(A)
        .schedule_key_deletion(id, Some(7), None)
        .unwrap();
    let report = cluster.zone(A).sync().unwrap();
    assert_eq!(report.failed, vec![], "{report:?}");
    let pending = [
        (B, KeyStatus::PendingDeletion),
        (C, KeyStatus::PendingDeletion),
    ];
    assert_converged(&cluster, id, &pending);
    assert_eq!(
        cluster.zone(C).get_key(id).unwrap().key.delete_at,
        Some(scheduled.delete_at)
    );

    // c is cut off when the deletion happens: b follows, c waits.
    cluster.link.cut("c");
    cluster.clock.advance_days(8);
    let report = cluster.zone(A).run_due().unwrap();
    assert_eq!(report.deleted, vec![id]);
    assert_eq!(
        cluster.zone(A).get_key(id).unwrap_err(),
        Error::KeyNotFound { id }
    );
    assert_eq!(
        cluster.zone(B).get_key(id).unwrap_err(),
        Error::KeyNotFound { id }
    );
    let at_c = cluster.zone(C).get_key(id).unwrap().key;
    assert_eq!(
        at_c.status,
        KeyStatus::PendingDeletion,
        "a replica waits for its origin"
    );
    let report = cluster.zone(A).sync().unwrap();
    assert_eq!(report.delivered, vec![]);
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert_eq!((report.failed[0].0, report.failed[0].1.as_str()), (id, "c"));

    // a and c crash with the deletion still waiting for c.
    cluster.restart(&[A, C]);
    assert_eq!(
        cluster.zone(A).get_key(id).unwrap_err(),
        Error::KeyNotFound { id }
    );
    assert_eq!(
        cluster.zone(C).get_key(id).unwrap().key.status,
        KeyStatus::PendingDeletion
    );
    let report = cluster.zone(A).sync().unwrap();
    assert_eq!(report.failed.len(), 1, "still waiting for c: {report:?}");

    cluster.link.heal("c");
    let report = cluster.zone(A).sync().unwrap();
    assert_eq!(report.failed, vec![], "{report:?}");
    assert_eq!(report.delivered, vec![(id, "c".to_owned())]);
    for zone in ALL {
        let kms = cluster.zone(zone);
        assert_eq!(kms.get_key(id).unwrap_err(), Error::KeyNotFound { id });
        assert_eq!(kms.list_keys().unwrap().kms_keys, vec![]);
        assert_eq!(
            old.open_in(&cluster, zone).unwrap_err(),
            Error::KeyNotFound { id }
        );
    }
    assert_nothing_pending(&cluster);

    // The old messages arrive late: the key does not come back, not even after a restart.
    assert_eq!(cluster.link.release(0), 2);
    for restarted in [false, true] {
        if restarted {
            cluster.restart(&ALL);
        }
        for zone in ALL {
            let kms = cluster.zone(zone);
            assert_eq!(kms.get_key(id).unwrap_err(), Error::KeyNotFound { id });
            assert_eq!(kms.list_keys().unwrap().kms_keys, vec![]);
        }
        assert_nothing_pending(&cluster);
    }
}

/// lifecycle.md: a cancelled deletion disables the replicas, and no change of the origin is
/// skipped across restarts. A replica whose zone was closed from replicate-key until after a
/// deletion was scheduled and cancelled must end as one reached all along: disabled. (A
/// cancellation older than replicate-key is not the new replica's: it starts enabled.)
#[test]
fn a_replica_first_reached_after_a_cancelled_deletion_is_disabled() {
    // The cancellation comes after replicate-key: c ends disabled, reached at once or late.
    for reached_late in [false, true] {
        let mut cluster = Cluster::new();
        let id = create_replicated(&cluster, "late", &[B]);
        if reached_late {
            cluster.close(&[C]);
        }
        cluster.zone(A).replicate_key(id, "c", None).unwrap();
        cluster
            .zone(A)
            .schedule_key_deletion(id, Some(7), None)
            .unwrap();
        cluster.zone(A).cancel_key_deletion(id, None).unwrap();
        if reached_late {
            cluster.open(&[C]);
        }
        cluster.zone(A).sync().unwrap();
        assert_eq!(
            cluster.zone(C).get_key(id).unwrap().key.status,
            KeyStatus::Disabled,
            "c reached {}",
            if reached_late { "late" } else { "at once" }
        );
        assert_converged(
            &cluster,
            id,
            &[(B, KeyStatus::Disabled), (C, KeyStatus::Disabled)],
        );
    }

    // The cancellation comes before replicate-key: c starts enabled, however late.
    let mut cluster = Cluster::new();
    let id = create_replicated(&cluster, "early", &[B]);
    cluster.close(&[C]);
    let a = cluster.zone(A);
    a.schedule_key_deletion(id, Some(7), None).unwrap();
    a.cancel_key_deletion(id, None).unwrap();
    a.enable_key(id, None).unwrap();
    a.replicate_key(id, "c", None).unwrap();
    a.rotate_key(id, None).unwrap();
    cluster.open(&[C]);
    cluster.zone(A).sync().unwrap();
    assert_converged(
        &cluster,
        id,
        &[(B, KeyStatus::Disabled), (C, KeyStatus::Enabled)],
    );
}
