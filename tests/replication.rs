//! Multi-zone replication: the scenario of the issue, and one test per refusal.

mod common;

use common::Zones;
use keylife::{CreateKey, Error, SuccessStatus};

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
