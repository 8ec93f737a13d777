//! Restore from a backup (lifecycle.md, "Restore from a backup"): what a restored record
//! becomes. Pure: the shell reads the backup and writes the new store.

use jiff::Timestamp;

use super::{Error, KeyRecord, Role, deletion_due};

/// How far a restored origin key's `revision.seq` moves up: above every revision it can have
/// announced after the backup (one per change of the key), so that replicas which confirmed
/// newer revisions follow the restored origin again.
pub const RESTORE_MARGIN: u64 = 1 << 32;

/// `record` as a restore writes it. An origin key continues `margin` revisions above the
/// backup's; a replica keeps its origin's revision (its origin decides what comes next).
/// Everything else (status, versions, rotation, replicas) is the backup's.
pub fn restored(record: &KeyRecord, margin: u64) -> Result<KeyRecord, Error> {
    let mut restored = record.clone();
    if record.role == Role::Origin {
        restored.revision.seq =
            record
                .revision
                .seq
                .checked_add(margin)
                .ok_or_else(|| Error::Corrupt {
                    record: format!("key {}", record.id),
                    detail: format!(
                        "its revision {} cannot move {margin} revisions up",
                        record.revision.seq
                    ),
                })?;
    }
    Ok(restored)
}

/// Whether origin key `record`, pending deletion in the backup, had its deletion date pass by
/// `now`: it was destroyed after the backup, and comes back as it was (pending deletion, past
/// its date), to be destroyed again at the zone's first due run or use.
#[must_use]
pub fn deleted_since(record: &KeyRecord, now: Timestamp) -> bool {
    deletion_due(record, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{
        Command, CreateContext, CreateKey, DeletionDelay, Transition, apply, create_key,
    };

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap()
    }

    fn origin() -> KeyRecord {
        let ctx = CreateContext {
            id: crate::core::KeyId::from_bytes([7; 16]),
            zone: "ch-gva-2",
            now: at(1_000_000),
            origin_keys: 0,
            quota: 10,
            name_taken: false,
        };
        create_key(&CreateKey::new("k"), &ctx).unwrap()
    }

    #[test]
    fn an_origin_key_moves_up_by_the_margin_and_keeps_the_rest() {
        let record = origin();
        let after = restored(&record, RESTORE_MARGIN).unwrap();
        assert_eq!(after.revision.seq, record.revision.seq + (1 << 32));
        assert_eq!(after.revision.at, record.revision.at);
        let mut same = after.clone();
        same.revision = record.revision;
        assert_eq!(same, record, "nothing but the revision's seq changes");
    }

    #[test]
    fn a_replica_keeps_its_origins_revision() {
        let mut record = origin();
        record.role = Role::Replica;
        record.applied_watermark = 9;
        assert_eq!(restored(&record, RESTORE_MARGIN).unwrap(), record);
    }

    #[test]
    fn a_revision_that_cannot_move_up_is_refused_not_wrapped() {
        let mut record = origin();
        record.revision.seq = u64::MAX - 5;
        assert!(matches!(
            restored(&record, RESTORE_MARGIN),
            Err(Error::Corrupt { .. })
        ));
    }

    #[test]
    fn deleted_since_is_a_pending_deletion_whose_date_passed() {
        let record = origin();
        assert!(!deleted_since(&record, at(9_000_000_000)));
        let delay = DeletionDelay::new(7).unwrap();
        let command = Command::ScheduleDeletion { delay };
        let Transition::Changed {
            record: pending, ..
        } = apply(&record, &command, at(1_000_010), None).unwrap()
        else {
            panic!("schedule-deletion changes the key")
        };
        let delete_at = 1_000_010 + 7 * 86_400;
        assert!(!deleted_since(&pending, at(delete_at - 1)));
        assert!(deleted_since(&pending, at(delete_at)));
    }
}
