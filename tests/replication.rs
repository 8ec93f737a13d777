//! Multi-zone replication: the scenario of the issue, and one test per refusal.

mod common;

use common::Zones;
use keylife::{CreateKey, Error, Kms, SuccessStatus};

const A: usize = 0;
const B: usize = 1;
const C: usize = 2;

fn three_zones() -> Zones {
    Zones::memory(&["ch-gva-2", "de-fra-1", "at-vie-1"])
}

#[test]
fn scenario_replicate_rotate_delete_across_three_zones() {
    let zones = three_zones();
    let (a, b, c) = (zones.zone(A), zones.zone(B), zones.zone(C));
    let key = a
        .create_key(&CreateKey::new("payments").multi_zone(true))
        .unwrap();
    let id = key.id;

    // Replicate to B and C: target-registered; the replicas exist once synced.
    for zone in ["de-fra-1", "at-vie-1"] {
        assert_eq!(
            a.replicate_key(id, zone, None).unwrap().status,
            SuccessStatus::TargetRegistered
        );
    }
    a.sync().unwrap();
    let origin = a.get_key(id).unwrap();
    assert_eq!(origin.key.replicas, vec!["de-fra-1", "at-vie-1"]);
    assert_eq!(
        origin.key.revision.seq, 3,
        "create, then two replicate changes"
    );
    for state in &origin.replicas_status {
        assert_eq!(state.last_applied_watermark, 3, "{state:?}");
        assert_eq!(state.last_failure, None);
    }
    for replica in [b, c] {
        let got = replica.get_key(id).unwrap();
        assert_eq!(got.key.origin_zone, "ch-gva-2");
        assert_eq!(got.key.name, "payments");
        assert!(got.key.multi_zone);
        assert_eq!(got.key.material.version, 1);
        assert_eq!(got.key.rotation, origin.key.rotation);
        assert_eq!(
            got.replicas_status,
            vec![],
            "bookkeeping lives at the origin"
        );
        assert_eq!(replica.list_keys().unwrap().kms_keys.len(), 1);
    }

    // Encrypt in A, decrypt in B and C.
    let sealed = a.encrypt(id, b"card 4242", Some(b"order 17")).unwrap();
    for replica in [b, c] {
        let opened = replica
            .decrypt(id, &sealed.ciphertext, Some(b"order 17"))
            .unwrap();
        assert_eq!(opened.plaintext.as_bytes(), b"card 4242");
    }

    // Rotate in A: once synced, B encrypts with version 2 and everyone decrypts it.
    a.rotate_key(id, None).unwrap();
    a.sync().unwrap();
    assert_eq!(b.get_key(id).unwrap().key.material.version, 2);
    let from_b = b.encrypt(id, b"from b", None).unwrap();
    assert_eq!(
        keylife::crypto::Header::parse(&from_b.ciphertext)
            .unwrap()
            .0
            .version,
        2
    );
    for zone in [a, b, c] {
        assert_eq!(
            zone.decrypt(id, &from_b.ciphertext, None)
                .unwrap()
                .plaintext
                .as_bytes(),
            b"from b"
        );
        assert_eq!(
            zone.decrypt(id, &sealed.ciphertext, Some(b"order 17"))
                .unwrap()
                .plaintext
                .as_bytes(),
            b"card 4242"
        );
    }
    let seq = a.get_key(id).unwrap().key.revision.seq;
    for state in a.get_key(id).unwrap().replicas_status {
        assert_eq!(state.last_applied_watermark, seq);
    }

    // Schedule deletion in A: the replicas follow; cancel: both sides disabled.
    let scheduled = a.schedule_key_deletion(id, Some(7), None).unwrap();
    a.sync().unwrap();
    for replica in [b, c] {
        let got = replica.get_key(id).unwrap().key;
        assert_eq!(got.status, keylife::KeyStatus::PendingDeletion);
        assert_eq!(got.delete_at, Some(scheduled.delete_at));
        assert_eq!(
            replica.encrypt(id, b"x", None).unwrap_err().code(),
            "key-pending-deletion"
        );
    }
    a.cancel_key_deletion(id, None).unwrap();
    a.sync().unwrap();
    for zone in [a, b, c] {
        assert_eq!(
            zone.get_key(id).unwrap().key.status,
            keylife::KeyStatus::Disabled
        );
    }

    // Final deletion removes the key in every zone.
    a.enable_key(id, None).unwrap();
    a.schedule_key_deletion(id, Some(7), None).unwrap();
    a.sync().unwrap();
    zones.clock.advance_days(7);
    let report = a.run_due().unwrap();
    assert_eq!(report.deleted, vec![id]);
    assert_eq!(report.replication.failed, vec![]);
    for zone in [a, b, c] {
        assert!(matches!(zone.get_key(id), Err(Error::KeyNotFound { .. })));
        assert_eq!(zone.list_keys().unwrap().kms_keys.len(), 0);
    }
    // Nothing is left to deliver.
    assert_eq!(a.sync().unwrap(), keylife::SyncReport::default());
}

/// Zones A, B, C with one multi-zone key made in A and replicated to B (synced).
fn replicated() -> (Zones, keylife::KeyId) {
    let zones = three_zones();
    let id = zones
        .zone(A)
        .create_key(&CreateKey::new("orders").multi_zone(true))
        .unwrap()
        .id;
    zones.zone(A).replicate_key(id, "de-fra-1", None).unwrap();
    zones.zone(A).sync().unwrap();
    assert!(zones.zone(B).get_key(id).is_ok());
    (zones, id)
}

fn assert_not_on_replica<T: std::fmt::Debug>(result: Result<T, Error>, operation: &str) {
    match result {
        Err(Error::NotOnReplica {
            origin_zone,
            operation: got,
            ..
        }) => {
            assert_eq!(origin_zone, "ch-gva-2");
            assert_eq!(got, operation);
        }
        other => panic!("expected not-on-replica for {operation}, got {other:?}"),
    }
}

#[test]
fn rotate_on_replica_is_refused() {
    let (zones, id) = replicated();
    assert_not_on_replica(zones.zone(B).rotate_key(id, None), "rotate");
}

#[test]
fn enable_rotation_on_replica_is_refused() {
    let (zones, id) = replicated();
    zones.zone(A).disable_key_rotation(id, None).unwrap();
    zones.zone(A).sync().unwrap();
    assert_not_on_replica(
        zones.zone(B).enable_key_rotation(id, Some(90), None),
        "enable-key-rotation",
    );
}

#[test]
fn disable_rotation_on_replica_is_refused() {
    let (zones, id) = replicated();
    assert_not_on_replica(
        zones.zone(B).disable_key_rotation(id, None),
        "disable-key-rotation",
    );
}

#[test]
fn schedule_deletion_on_replica_is_refused() {
    let (zones, id) = replicated();
    assert_not_on_replica(
        zones.zone(B).schedule_key_deletion(id, Some(7), None),
        "schedule-deletion",
    );
}

#[test]
fn cancel_deletion_on_replica_is_refused() {
    let (zones, id) = replicated();
    zones.zone(A).schedule_key_deletion(id, None, None).unwrap();
    zones.zone(A).sync().unwrap();
    assert_not_on_replica(
        zones.zone(B).cancel_key_deletion(id, None),
        "cancel-deletion",
    );
}

#[test]
fn replicate_from_replica_is_refused() {
    let (zones, id) = replicated();
    assert_not_on_replica(
        zones.zone(B).replicate_key(id, "at-vie-1", None),
        "replicate",
    );
}

#[test]
fn crypto_operations_work_on_replica() {
    let (zones, id) = replicated();
    let (a, b) = (zones.zone(A), zones.zone(B));
    let other = b.create_key(&CreateKey::new("local to b")).unwrap().id;
    let sealed = b.encrypt(id, b"made in b", Some(b"ctx")).unwrap();
    assert_eq!(
        b.decrypt(id, &sealed.ciphertext, Some(b"ctx"))
            .unwrap()
            .plaintext
            .as_bytes(),
        b"made in b"
    );
    assert_eq!(
        a.decrypt(id, &sealed.ciphertext, Some(b"ctx"))
            .unwrap()
            .plaintext
            .as_bytes(),
        b"made in b"
    );
    let moved = b
        .re_encrypt(id, &sealed.ciphertext, Some(b"ctx"), other, None)
        .unwrap();
    assert_eq!(
        b.decrypt(other, &moved.ciphertext, None)
            .unwrap()
            .plaintext
            .as_bytes(),
        b"made in b"
    );
    let data_key = b
        .generate_data_key(id, keylife::DataKeySpec::Aes256, None)
        .unwrap();
    assert_eq!(
        a.decrypt(id, &data_key.ciphertext, None).unwrap().plaintext,
        data_key.plaintext
    );
}

#[test]
fn replica_enable_and_disable_are_its_own() {
    let (zones, id) = replicated();
    let (a, b) = (zones.zone(A), zones.zone(B));
    let replica_seq = b.get_key(id).unwrap().key.revision.seq;
    assert_eq!(
        b.disable_key(id, Some(replica_seq)).unwrap().status,
        SuccessStatus::Success
    );
    a.sync().unwrap();
    assert_eq!(
        a.get_key(id).unwrap().key.status,
        keylife::KeyStatus::Enabled
    );
    assert_eq!(
        a.sync().unwrap(),
        keylife::SyncReport::default(),
        "nothing to send"
    );
    // And the origin's disable does not disable the replica.
    b.enable_key(id, None).unwrap();
    a.disable_key(id, None).unwrap();
    a.sync().unwrap();
    assert_eq!(
        b.get_key(id).unwrap().key.status,
        keylife::KeyStatus::Enabled
    );
    assert!(b.encrypt(id, b"still works", None).is_ok());
    // The origin's revision moved; the replica confirmed it.
    let origin = a.get_key(id).unwrap();
    assert_eq!(
        origin.replicas_status[0].last_applied_watermark,
        origin.key.revision.seq
    );
}

#[test]
fn replicate_a_single_zone_key_is_refused() {
    let zones = three_zones();
    let id = zones
        .zone(A)
        .create_key(&CreateKey::new("local"))
        .unwrap()
        .id;
    assert!(matches!(
        zones.zone(A).replicate_key(id, "de-fra-1", None),
        Err(Error::NotMultiZone { .. })
    ));
}

#[test]
fn replicate_to_own_zone_is_invalid() {
    let (zones, id) = replicated();
    assert!(matches!(
        zones.zone(A).replicate_key(id, "ch-gva-2", None),
        Err(Error::InvalidArgument { field: "zone", .. })
    ));
}

#[test]
fn replicate_to_unknown_zone_is_invalid() {
    let (zones, id) = replicated();
    let err = zones
        .zone(A)
        .replicate_key(id, "xx-nowhere-9", None)
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidArgument { field: "zone", .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("xx-nowhere-9"), "{err}");
}

#[test]
fn replicate_without_a_link_is_invalid() {
    let (kms, _clock) = common::memory_kms();
    let id = kms
        .create_key(&CreateKey::new("k").multi_zone(true))
        .unwrap()
        .id;
    assert!(matches!(
        kms.replicate_key(id, "de-fra-1", None),
        Err(Error::InvalidArgument { field: "zone", .. })
    ));
}

#[test]
fn replicate_twice_to_one_zone_is_a_conflict() {
    let (zones, id) = replicated();
    let before = zones.zone(A).get_key(id).unwrap().key.revision;
    assert!(matches!(
        zones.zone(A).replicate_key(id, "de-fra-1", None),
        Err(Error::Conflict { .. })
    ));
    assert_eq!(zones.zone(A).get_key(id).unwrap().key.revision, before);
}

#[test]
fn replicate_while_pending_deletion_is_refused() {
    let (zones, id) = replicated();
    zones.zone(A).schedule_key_deletion(id, None, None).unwrap();
    assert!(matches!(
        zones.zone(A).replicate_key(id, "at-vie-1", None),
        Err(Error::KeyPendingDeletion { .. })
    ));
}

#[test]
fn replicate_while_disabled_is_refused() {
    let (zones, id) = replicated();
    zones.zone(A).disable_key(id, None).unwrap();
    assert!(matches!(
        zones.zone(A).replicate_key(id, "at-vie-1", None),
        Err(Error::KeyDisabled { .. })
    ));
    assert!(zones.zone(C).get_key(id).is_err());
}

#[test]
fn list_keys_shows_replicas_with_their_origin_and_quota_ignores_them() {
    let (zones, id) = replicated();
    let b = zones.zone(B);
    let own = b.create_key(&CreateKey::new("b's own")).unwrap().id;
    let listed = b.list_keys().unwrap().kms_keys;
    assert_eq!(listed.len(), 2);
    let replica = listed.iter().find(|k| k.id == id).unwrap();
    assert_eq!(replica.origin_zone, "ch-gva-2");
    assert_eq!(replica.replicas, vec!["de-fra-1"]);
    let mine = listed.iter().find(|k| k.id == own).unwrap();
    assert_eq!(mine.origin_zone, "de-fra-1");
    // Names are unique among the zone's keys, replicas included.
    assert!(matches!(
        b.create_key(&CreateKey::new("orders")),
        Err(Error::NameConflict { .. })
    ));
}

#[test]
fn replica_quota_does_not_count_replicas() {
    let clock = keylife::ManualClock::new(common::start());
    let link = keylife::LocalLink::new();
    let open = |zone: &str, quota: usize| {
        let kms = std::sync::Arc::new(
            keylife::Kms::open_in_memory(
                common::root(3),
                keylife::KmsOptions::new(zone)
                    .clock(clock.clone())
                    .link(link.clone())
                    .limits(keylife::Limits {
                        key_quota: quota,
                        ..keylife::Limits::default()
                    }),
            )
            .unwrap(),
        );
        link.attach(&kms);
        kms
    };
    let a = open("a", 10);
    let b = open("b", 1);
    let id = a
        .create_key(&CreateKey::new("r").multi_zone(true))
        .unwrap()
        .id;
    a.replicate_key(id, "b", None).unwrap();
    a.sync().unwrap();
    assert!(b.get_key(id).is_ok());
    assert!(
        b.create_key(&CreateKey::new("own")).is_ok(),
        "the replica is not counted"
    );
    assert!(matches!(
        b.create_key(&CreateKey::new("second")),
        Err(Error::QuotaExceeded { .. })
    ));
}

#[test]
fn name_taken_in_target_zone_is_a_recorded_failure_until_resolved() {
    let zones = three_zones();
    let (a, b) = (zones.zone(A), zones.zone(B));
    let squatter = b.create_key(&CreateKey::new("shared")).unwrap().id;
    let id = a
        .create_key(&CreateKey::new("shared").multi_zone(true))
        .unwrap()
        .id;
    assert_eq!(
        a.replicate_key(id, "de-fra-1", None).unwrap().status,
        SuccessStatus::TargetRegistered
    );
    let report = a.sync().unwrap();
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].2.code(), "name-conflict");
    let state = &a.get_key(id).unwrap().replicas_status[0];
    assert_eq!(state.last_applied_watermark, 0);
    let failure = state.last_failure.as_ref().expect("failure recorded");
    assert_eq!(failure.attempted_watermark, 2);
    assert!(failure.error.contains("shared"), "{}", failure.error);
    assert_eq!(failure.failed_at, keylife::Clock::now(&zones.clock));
    // Free the name in B; the next sync delivers and clears the failure.
    b.schedule_key_deletion(squatter, Some(7), None).unwrap();
    zones.clock.advance_days(7);
    b.run_due().unwrap();
    a.sync().unwrap();
    let state = &a.get_key(id).unwrap().replicas_status[0];
    assert_eq!(state.last_failure, None);
    assert_eq!(state.last_applied_watermark, 2);
    assert_eq!(b.get_key(id).unwrap().key.name, "shared");
}

#[test]
fn failed_deliveries_back_off_in_run_due_but_not_in_sync() {
    let (zones, faulty) = Zones::faulty(&["ch-gva-2", "de-fra-1"]);
    let a = zones.zone(A);
    let id = a
        .create_key(&CreateKey::new("k").multi_zone(true))
        .unwrap()
        .id;
    faulty.cut("de-fra-1");
    a.replicate_key(id, "de-fra-1", None).unwrap();
    a.wait_for_deliveries();
    assert_eq!(faulty.counts().cut_off, 1, "the first attempt is immediate");
    // The retry is not due yet: run_due leaves it for later.
    let report = a.run_due().unwrap();
    assert_eq!(
        report.replication.deferred,
        vec![(id, "de-fra-1".to_owned())]
    );
    assert_eq!(faulty.counts().cut_off, 1);
    // One second later it is due (first retry after 1 s), and fails again.
    zones.clock.advance(jiff::SignedDuration::from_secs(1));
    assert_eq!(a.run_due().unwrap().replication.failed.len(), 1);
    assert_eq!(faulty.counts().cut_off, 2);
    // Now the wait is 2 s: 1 s later it is still deferred.
    zones.clock.advance(jiff::SignedDuration::from_secs(1));
    assert_eq!(a.run_due().unwrap().replication.deferred.len(), 1);
    // sync does not wait.
    faulty.heal("de-fra-1");
    let report = a.sync().unwrap();
    assert_eq!(report.delivered, vec![(id, "de-fra-1".to_owned())]);
    assert!(zones.zone(B).get_key(id).is_ok());
    assert_eq!(a.get_key(id).unwrap().replicas_status[0].last_failure, None);
}

#[test]
fn a_zone_out_of_reach_is_tried_once_per_due_run_and_other_zones_go_on() {
    let (zones, faulty) = Zones::faulty(&["ch-gva-2", "de-fra-1", "at-vie-1"]);
    let a = zones.zone(A);
    faulty.cut("de-fra-1");
    let ids: Vec<_> = (0..5)
        .map(|i| {
            let id = a
                .create_key(&CreateKey::new(format!("k{i}")).multi_zone(true))
                .unwrap()
                .id;
            a.replicate_key(id, "de-fra-1", None).unwrap();
            a.replicate_key(id, "at-vie-1", None).unwrap();
            id
        })
        .collect();
    a.wait_for_deliveries();
    let before = faulty.counts().cut_off;
    // The reachable zone got its deliveries at once, in the background.
    for &id in &ids {
        assert!(zones.zone(C).get_key(id).is_ok());
    }
    // Every retry is due; the pass tries the cut zone once and defers the rest of its keys.
    zones.clock.advance(jiff::SignedDuration::from_secs(1));
    let report = a.run_due().unwrap();
    assert_eq!(faulty.counts().cut_off, before + 1, "{report:?}");
    assert_eq!(report.replication.failed.len(), 1, "{report:?}");
    assert_eq!(report.replication.deferred.len(), 4, "{report:?}");
    // The deferred keys stay owed: sync (forced) tries each of them.
    let report = a.sync().unwrap();
    assert_eq!(report.failed.len(), 5, "{report:?}");
    assert_eq!(faulty.counts().cut_off, before + 6);
    faulty.heal("de-fra-1");
    assert_eq!(a.sync().unwrap().delivered.len(), 5);
    for &id in &ids {
        assert!(zones.zone(B).get_key(id).is_ok());
    }
}

#[test]
fn a_zone_that_answers_again_gets_everything_it_is_owed_in_that_pass() {
    let (zones, faulty) = Zones::faulty(&["ch-gva-2", "de-fra-1"]);
    let a = zones.zone(A);
    faulty.cut("de-fra-1");
    let replicated = |name: &str| {
        let id = a
            .create_key(&CreateKey::new(name).multi_zone(true))
            .unwrap()
            .id;
        a.replicate_key(id, "de-fra-1", None).unwrap();
        id
    };
    let early: Vec<_> = (0..4).map(|i| replicated(&format!("early{i}"))).collect();
    // Failed attempts in a row grow the early keys' backoff to 8 s.
    for _ in 0..3 {
        assert_eq!(a.sync().unwrap().failed.len(), 4);
    }
    // A later key, failed once: its retry is due after 1 s, the early keys' are not.
    let late = replicated("late");
    a.wait_for_deliveries();
    faulty.heal("de-fra-1");
    zones.clock.advance(jiff::SignedDuration::from_secs(1));
    let report = a.run_due().unwrap();
    // The late key's retry finds the zone back: the early keys go in the same pass.
    assert_eq!(report.replication.delivered.len(), 5, "{report:?}");
    assert!(report.replication.deferred.is_empty(), "{report:?}");
    for id in early.into_iter().chain([late]) {
        assert!(zones.zone(B).get_key(id).is_ok());
        assert_eq!(a.get_key(id).unwrap().replicas_status[0].last_failure, None);
    }
}

#[test]
fn replica_status_serializes_with_the_spec_field_names() {
    let (zones, faulty) = Zones::faulty(&["ch-gva-2", "de-fra-1"]);
    let a = zones.zone(A);
    let id = a
        .create_key(&CreateKey::new("k").multi_zone(true))
        .unwrap()
        .id;
    faulty.cut("de-fra-1");
    a.replicate_key(id, "de-fra-1", None).unwrap();
    a.wait_for_deliveries();
    let json = serde_json::to_value(a.get_key(id).unwrap()).unwrap();
    assert_eq!(json["replicas"], serde_json::json!(["de-fra-1"]));
    let state = &json["replicas-status"][0];
    assert_eq!(state["zone"], "de-fra-1");
    assert_eq!(state["last-applied-watermark"], 0);
    assert_eq!(state["last-failure"]["attempted-watermark"], 2);
    assert!(
        state["last-failure"]["error"]
            .as_str()
            .unwrap()
            .contains("de-fra-1")
    );
    assert_eq!(state["last-failure"]["failed-at"], "2026-01-01T00:00:00Z");
}

/// A link that carries every message back to the sending zone itself.
#[derive(Debug, Default)]
struct Loopback(std::sync::OnceLock<std::sync::Weak<keylife::Kms>>);

impl keylife::Link for Loopback {
    fn knows(&self, _zone: &str) -> bool {
        true
    }

    fn deliver(&self, _zone: &str, update: &keylife::ReplicaUpdate) -> Result<keylife::Ack, Error> {
        let kms = self.0.get().and_then(std::sync::Weak::upgrade).unwrap();
        kms.receive(update)
    }

    fn request_rotation(
        &self,
        _zone: &str,
        _id: keylife::KeyId,
        _version: u32,
    ) -> Result<(), Error> {
        Err(Error::ZoneUnreachable {
            zone: "loopback".to_owned(),
            detail: "not carried".to_owned(),
        })
    }
}

#[test]
fn an_update_arriving_at_its_own_origin_is_refused() {
    let loopback = std::sync::Arc::new(Loopback::default());
    let a = std::sync::Arc::new(
        keylife::Kms::open_in_memory(
            common::root(4),
            keylife::KmsOptions::new("ch-gva-2").link(loopback.clone()),
        )
        .unwrap(),
    );
    loopback.0.set(std::sync::Arc::downgrade(&a)).unwrap();
    let id = a
        .create_key(&CreateKey::new("k").multi_zone(true))
        .unwrap()
        .id;
    let before = a.get_key(id).unwrap().key;
    a.replicate_key(id, "de-fra-1", None).unwrap();
    let report = a.sync().unwrap();
    assert_eq!(report.failed.len(), 1);
    assert_eq!(report.failed[0].2.code(), "conflict");
    // The origin key is untouched by its own update: still an origin, one change later.
    let after = a.get_key(id).unwrap();
    assert_eq!(after.key.origin_zone, "ch-gva-2");
    assert_eq!(after.key.revision.seq, before.revision.seq + 1);
    assert!(after.replicas_status[0].last_failure.is_some());
}

/// A new multi-zone key of `origin` named `name`, replicated to `zone`, its first delivery
/// made (delivered, or failed and recorded).
fn replicated_key(origin: &Kms, name: &str, zone: &str) -> keylife::KeyId {
    let id = origin
        .create_key(&CreateKey::new(name).multi_zone(true))
        .unwrap()
        .id;
    origin.replicate_key(id, zone, None).unwrap();
    origin.wait_for_deliveries();
    id
}

fn budget_zones(budget: u64) -> (Zones, std::sync::Arc<common::fault::FaultLink>) {
    budget_zones_named(&["ch-gva-2", "de-fra-1"], budget)
}

fn budget_zones_named(
    names: &[&str],
    budget: u64,
) -> (Zones, std::sync::Arc<common::fault::FaultLink>) {
    Zones::faulty_with(
        names,
        keylife::Limits {
            max_encryptions_per_version: budget,
            ..keylife::Limits::default()
        },
    )
}

#[test]
fn a_replica_that_spends_its_budget_gets_a_new_version_from_its_origin() {
    let (zones, faulty) = budget_zones(2);
    let (a, b) = (zones.zone(A), zones.zone(B));
    let id = replicated_key(a, "hot", "de-fra-1");
    let messages = faulty.counts().passed;
    let version = |ciphertext: &[u8]| {
        keylife::crypto::Header::parse(ciphertext)
            .unwrap()
            .0
            .version
    };
    let sealed: Vec<_> = (0..3)
        .map(|i| b.encrypt(id, &[i], None).unwrap().ciphertext)
        .collect();
    assert_eq!(
        sealed.iter().map(|c| version(c)).collect::<Vec<_>>(),
        [1, 1, 2]
    );
    // The origin made version 2 (automatic, as for its own spent budget) and delivered it.
    let origin = a.get_key(id).unwrap();
    assert_eq!(origin.key.material.version, 2);
    assert!(origin.key.material.automatic);
    assert_eq!(
        origin.replicas_status[0].last_applied_watermark,
        origin.key.revision.seq
    );
    // One message carried it: the delivery the rotation queued found it delivered already.
    a.wait_for_deliveries();
    assert_eq!(faulty.counts().passed - messages, 1);
    for (i, ciphertext) in sealed.iter().enumerate() {
        assert_eq!(
            a.decrypt(id, ciphertext, None)
                .unwrap()
                .plaintext
                .as_bytes(),
            [i as u8]
        );
    }
}

#[test]
fn a_replica_whose_origin_is_unreachable_answers_rotation_pending() {
    let (zones, faulty) = budget_zones(1);
    let (a, b) = (zones.zone(A), zones.zone(B));
    let id = replicated_key(a, "hot", "de-fra-1");
    b.encrypt(id, b"first", None).unwrap();
    faulty.cut("ch-gva-2");
    let err = b.encrypt(id, b"second", None).unwrap_err();
    assert!(
        matches!(&err, Error::RotationPending { version: 1, origin_zone, .. } if origin_zone == "ch-gva-2"),
        "{err:?}"
    );
    assert_eq!(err.http_status(), 503);
    assert_eq!(
        a.get_key(id).unwrap().key.material.version,
        1,
        "no rotation happened"
    );
    faulty.heal("ch-gva-2");
    let sealed = b.encrypt(id, b"third", None).unwrap();
    assert_eq!(
        keylife::crypto::Header::parse(&sealed.ciphertext)
            .unwrap()
            .0
            .version,
        2
    );
}

/// A link that runs a hook once, before carrying the next message; messages sent while the
/// hook runs are lost.
#[derive(Default)]
struct Interposer {
    inner: std::sync::Arc<keylife::LocalLink>,
    hook: std::sync::Mutex<Option<Box<dyn FnOnce() + Send>>>,
    in_hook: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Interposer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Interposer")
    }
}

impl keylife::Link for Interposer {
    fn knows(&self, zone: &str) -> bool {
        self.inner.knows(zone)
    }

    fn deliver(&self, zone: &str, update: &keylife::ReplicaUpdate) -> Result<keylife::Ack, Error> {
        use std::sync::atomic::Ordering;
        if self.in_hook.load(Ordering::SeqCst) {
            return Err(Error::ZoneUnreachable {
                zone: zone.to_owned(),
                detail: "lost while the hook ran".to_owned(),
            });
        }
        let hook = self.hook.lock().unwrap().take();
        if let Some(hook) = hook {
            self.in_hook.store(true, Ordering::SeqCst);
            hook();
            self.in_hook.store(false, Ordering::SeqCst);
        }
        self.inner.deliver(zone, update)
    }

    fn request_rotation(&self, zone: &str, id: keylife::KeyId, version: u32) -> Result<(), Error> {
        self.inner.request_rotation(zone, id, version)
    }
}

#[test]
fn a_deletion_made_while_an_older_update_is_in_flight_still_reaches_the_replica() {
    let interposer = std::sync::Arc::new(Interposer::default());
    let local = std::sync::Arc::clone(&interposer.inner);
    let zones = Zones::on(&["ch-gva-2", "de-fra-1"], interposer.clone(), |kms| {
        local.attach(kms);
    });
    let (a, b) = (std::sync::Arc::clone(&zones.kms[A]), zones.zone(B));
    let id = replicated_key(&a, "k", "de-fra-1");
    assert!(b.get_key(id).is_ok());
    // The delivery of the next change is overtaken: before it arrives, the key is scheduled
    // for deletion and destroyed at the origin, and the news of both is lost.
    let clock = zones.clock.clone();
    let origin = std::sync::Arc::clone(&a);
    *interposer.hook.lock().unwrap() = Some(Box::new(move || {
        origin.schedule_key_deletion(id, Some(7), None).unwrap();
        clock.advance_days(7);
        assert_eq!(origin.run_due().unwrap().deleted, vec![id]);
    }));
    a.disable_key(id, None).unwrap();
    // The old update was applied and answered; the destruction must still be delivered.
    a.sync().unwrap();
    assert!(
        matches!(b.get_key(id), Err(Error::KeyNotFound { .. })),
        "{:?}",
        b.get_key(id)
    );
    assert_eq!(a.sync().unwrap(), keylife::SyncReport::default());
}

/// Found by tests/replication_model.rs: a replica asks for a version the origin already has;
/// the origin delivers to its replicas before answering. A replica that holds the latest
/// revision is sent nothing (the extra message could only fail and need retrying); the one
/// that missed it is retried and cleared like any other.
#[test]
fn a_replica_asking_for_a_version_the_origin_has_is_delivered_it_and_current_ones_nothing() {
    let (zones, faulty) = budget_zones_named(&["a", "b", "c"], 1);
    let (a, b) = (zones.zone(0), zones.zone(1));
    let id = a
        .create_key(&CreateKey::new("n0").multi_zone(true))
        .unwrap()
        .id;
    a.replicate_key(id, "b", None).unwrap(); // seq 2, delivered to b
    a.wait_for_deliveries();
    faulty.cut("b");
    a.rotate_key(id, None).unwrap(); // seq 3: b misses it
    a.wait_for_deliveries();
    a.replicate_key(id, "c", None).unwrap(); // seq 4: c is up to date
    a.wait_for_deliveries();
    faulty.script("c", common::fault::Fault::Drop);
    b.encrypt(id, b"x", None).unwrap(); // spends b's budget of version 1
    // b asks the origin, which already has version 2: it delivers to b (cut), not to c.
    assert_eq!(
        b.encrypt(id, b"x", None).unwrap_err().code(),
        "rotation-pending"
    );
    a.wait_for_deliveries();
    let states = a.get_key(id).unwrap().replicas_status;
    assert!(states[0].last_failure.is_some(), "{states:?}");
    assert_eq!(states[1].last_failure, None, "{states:?}");
    assert_eq!(faulty.counts().dropped, 0, "no message was sent to c");
    faulty.heal_all();
    zones.clock.advance(jiff::SignedDuration::from_mins(10));
    let report = a.run_due().unwrap().replication;
    assert_eq!(report.failed, vec![]);
    assert_eq!(report.delivered, vec![(id, "b".to_owned())], "{report:?}");
    let details = a.get_key(id).unwrap();
    for state in &details.replicas_status {
        assert_eq!(state.last_failure, None, "{state:?}");
        assert_eq!(state.last_applied_watermark, details.key.revision.seq);
    }
    assert_eq!(a.sync().unwrap(), keylife::SyncReport::default());
}

#[test]
fn a_change_is_answered_while_its_delivery_is_stuck() {
    let gate = std::sync::Arc::new(common::gate::Gate::default());
    let local = std::sync::Arc::clone(&gate.inner);
    let zones = Zones::on(&["ch-gva-2", "de-fra-1"], gate.clone(), |kms| {
        local.attach(kms);
    });
    let (a, b) = (zones.zone(A), zones.zone(B));
    let id = replicated_key(a, "k", "de-fra-1");
    assert_eq!(b.get_key(id).unwrap().key.material.version, 1);
    // The zone stops answering: every change of the key is still answered, durable, and
    // its delivery waits at the gate.
    gate.set_closed(true);
    let rotated = a.rotate_key(id, None).unwrap();
    assert_eq!(
        gate.wait_held(1),
        1,
        "the delivery of the rotation waits at the gate"
    );
    a.disable_key_rotation(id, None).unwrap();
    assert_eq!(rotated.rotation.manual_count, 1);
    assert_eq!(a.get_key(id).unwrap().key.material.version, 2);
    assert!(a.encrypt(id, b"meanwhile", None).is_ok());
    assert_eq!(
        b.get_key(id).unwrap().key.material.version,
        1,
        "not delivered yet"
    );
    gate.set_closed(false);
    a.wait_for_deliveries();
    assert!(!gate.timed_out(), "a change waited for its delivery");
    let replica = b.get_key(id).unwrap().key;
    assert_eq!(replica.material.version, 2);
    assert!(!replica.rotation.automatic);
    let origin = a.get_key(id).unwrap();
    assert_eq!(
        origin.replicas_status[0].last_applied_watermark,
        origin.key.revision.seq
    );
}

/// An origin whose store went back to an older copy (a memory store has no witness to catch
/// it) learns it from its replica, which holds a newer revision: the delivery fails and says
/// so in replicas-status, until the origin's revisions pass the replica's again.
#[test]
fn a_replica_ahead_of_its_rolled_back_origin_is_reported() {
    use keylife::store::{Backend, MemoryBackend, Table, Write};
    use keylife::{KmsOptions, LocalLink, ManualClock};
    use std::sync::Arc;

    let clock = ManualClock::new(common::start());
    let link = LocalLink::new();
    let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
    let open_origin = || {
        let options = KmsOptions::new("ch-gva-2")
            .clock(clock.clone())
            .link(link.clone());
        let kms = Arc::new(Kms::with_backend(backend.clone(), common::root(1), options).unwrap());
        link.attach(&kms);
        kms
    };
    let replica = Arc::new(
        Kms::open_in_memory(
            common::root(2),
            KmsOptions::new("de-fra-1")
                .clock(clock.clone())
                .link(link.clone()),
        )
        .unwrap(),
    );
    link.attach(&replica);
    let origin = open_origin();
    let id = replicated_key(&origin, "k", "de-fra-1");
    let dump = |backend: &dyn Backend| -> Vec<(Table, Vec<u8>, Vec<u8>)> {
        Table::ALL
            .iter()
            .flat_map(|t| {
                backend
                    .scan(*t, &[], None, usize::MAX)
                    .unwrap()
                    .into_iter()
                    .map(|(k, v)| (*t, k, v))
            })
            .collect()
    };
    let older = dump(&*backend);
    let before = origin.get_key(id).unwrap().key.revision.seq;
    origin.disable_key(id, None).unwrap();
    origin.enable_key(id, None).unwrap();
    origin.wait_for_deliveries();
    let status = origin.get_key(id).unwrap().replicas_status;
    assert_eq!(status[0].last_applied_watermark, before + 2, "{status:?}");
    drop(origin);

    // The origin's store put back, as a whole, to the copy taken before the two changes.
    let mut writes: Vec<Write> = dump(&*backend)
        .into_iter()
        .map(|(table, key, _)| Write::Delete { table, key })
        .collect();
    writes.extend(
        older
            .into_iter()
            .map(|(table, key, value)| Write::Put { table, key, value }),
    );
    backend.commit(&writes).unwrap();
    let origin = open_origin();
    assert_eq!(origin.get_key(id).unwrap().key.revision.seq, before);

    origin.disable_key(id, None).unwrap();
    origin.wait_for_deliveries();
    let status = origin.get_key(id).unwrap().replicas_status;
    let failure = status[0]
        .last_failure
        .as_ref()
        .expect("the delivery failed");
    assert!(
        failure
            .error
            .contains("newer revision of the key than this origin"),
        "{failure:?}"
    );
    assert_eq!(status[0].last_applied_watermark, before);

    // Once the origin's revisions pass the replica's, deliveries succeed again.
    origin.enable_key(id, None).unwrap();
    origin.rotate_key(id, None).unwrap();
    clock.advance_days(1); // past the failed delivery's backoff
    origin.sync().unwrap();
    let status = origin.get_key(id).unwrap().replicas_status;
    assert_eq!(status[0].last_failure, None, "{status:?}");
    assert_eq!(status[0].last_applied_watermark, before + 3);
    assert_eq!(replica.get_key(id).unwrap().key.material.version, 2);
}
