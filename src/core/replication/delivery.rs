//! The origin's side of replication: how far each replica has followed, what one delivery
//! attempt ends in, and when a failed one is retried.
//!
//! A delivery sends a replica the key's current snapshot; the replica answers with an [`Ack`].
//! [`settle`] decides, from the origin's record of that replica ([`Delivery`]), what was sent,
//! the answer, the key's latest revision and the time, what the origin records and whether a
//! delivery is still owed. The shell loads, sends, calls [`settle`] and writes what it says.

use jiff::{SignedDuration, Timestamp};

use crate::core::error::{ConflictReason, Error};
use crate::core::id::KeyId;

/// How far one replica of an origin key has followed it: the origin's bookkeeping, not part of
/// the key (changing it leaves the key's revision as it is).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivery {
    /// The origin revision the replica confirmed having applied.
    pub confirmed_seq: u64,
    /// Material versions the replica confirmed holding: later deliveries carry only newer ones.
    pub confirmed_versions: u32,
    /// The last failed attempt, until an attempt succeeds.
    pub failure: Option<DeliveryFailure>,
    /// Failed attempts in a row.
    pub attempts: u32,
    /// When a retry is next due after failures (`None`: at once).
    pub retry_at: Option<Timestamp>,
}

/// A failed delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryFailure {
    /// The origin revision the delivery carried.
    pub attempted_seq: u64,
    /// What went wrong.
    pub error: String,
    /// When.
    pub failed_at: Timestamp,
}

/// A replica's answer to an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// The origin revision the replica holds after the update (if lower than the update's,
    /// the update was not applied).
    pub applied_seq: u64,
    /// Material versions the replica holds.
    pub versions: u32,
}

/// What one delivery attempt carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// The origin revision of the snapshot sent.
    pub seq: u64,
    /// Whether the snapshot announced the key's final deletion.
    pub deleted: bool,
}

/// How one delivery attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The replica holds the key's latest revision (or, for a deletion, knows the key is gone).
    Delivered,
    /// The replica applied what was sent, but the key changed meanwhile: deliver again.
    Behind,
    /// The attempt failed; it is recorded and retried after [`retry_delay`].
    Failed(Error),
}

/// What the origin records after an attempt ([`settle`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    /// The replica's new delivery state; `None` to forget the replica (the key is gone and
    /// the replica knows).
    pub delivery: Option<Delivery>,
    /// Whether a delivery is still owed to the replica (its outbox entry stays).
    pub owed: bool,
    /// How the attempt ended.
    pub outcome: Outcome,
}

/// The first retry waits this long; each further failure doubles it, up to [`RETRY_MAX`].
pub const RETRY_FIRST: SignedDuration = SignedDuration::from_secs(1);
/// The longest wait between retries.
pub const RETRY_MAX: SignedDuration = SignedDuration::from_secs(300);

/// How long to wait after `attempts` failures in a row before the next attempt: 1 s, doubled
/// with every further failure, at most [`RETRY_MAX`].
#[must_use]
pub fn retry_delay(attempts: u32) -> SignedDuration {
    let doublings = attempts.saturating_sub(1).min(16);
    RETRY_FIRST
        .checked_mul(1 << doublings)
        .unwrap_or(RETRY_MAX)
        .min(RETRY_MAX)
}

impl Delivery {
    /// Whether an attempt that respects the backoff may be made at `now`.
    #[must_use]
    pub fn retry_due(&self, now: Timestamp) -> bool {
        self.retry_at.is_none_or(|at| at <= now)
    }

    /// Whether the replica confirmed revision `latest_seq` of the live key, with no failure
    /// recorded since: a delivery would carry nothing it lacks.
    #[must_use]
    pub fn is_current(&self, latest_seq: u64) -> bool {
        self.failure.is_none() && self.confirmed_seq >= latest_seq
    }
}

/// Decides what the origin records after sending `sent` to a replica of key `id` whose state
/// was `delivery`, when the replica answered `answer` and the key's latest revision is
/// `latest_seq` (read after the answer: the key may have changed meanwhile; 0 if it is gone
/// and forgotten).
///
/// Rules: an answer at or above the revision sent confirms it. A confirmed deletion forgets
/// the replica. A confirmed revision resets the failures, and the replica is up to date when
/// it confirmed `latest_seq`; otherwise it is [`Outcome::Behind`] and stays owed. An answer
/// below the revision sent means the replica lacks material versions: it tells which it holds,
/// and the attempt fails with [`ConflictReason::ReplicaLacksVersions`]. Every failure counts,
/// is recorded with the revision it carried, stays owed (even when nothing else was owed, so
/// that a recorded failure is always retried) and is retried after [`retry_delay`].
#[must_use]
pub fn settle(
    id: KeyId,
    mut delivery: Delivery,
    sent: Sent,
    answer: Result<Ack, Error>,
    latest_seq: u64,
    now: Timestamp,
) -> Settlement {
    let failure = match answer {
        // No replica can hold a revision its origin never made: the origin's store went back
        // in time (an older copy of its whole directory). Reported as a failure, every time,
        // until the origin's revisions pass the replica's again.
        Ok(ack) if !sent.deleted && ack.applied_seq > latest_seq => {
            delivery.confirmed_versions = ack.versions;
            Error::Conflict {
                id,
                reason: ConflictReason::ReplicaAheadOfOrigin,
            }
        }
        Ok(ack) if ack.applied_seq >= sent.seq => {
            if sent.deleted {
                return Settlement {
                    delivery: None,
                    owed: false,
                    outcome: Outcome::Delivered,
                };
            }
            delivery.confirmed_seq = delivery.confirmed_seq.max(ack.applied_seq);
            delivery.confirmed_versions = ack.versions;
            delivery.failure = None;
            delivery.attempts = 0;
            delivery.retry_at = None;
            let up_to_date = delivery.confirmed_seq >= latest_seq;
            return Settlement {
                delivery: Some(delivery),
                owed: !up_to_date,
                outcome: if up_to_date {
                    Outcome::Delivered
                } else {
                    Outcome::Behind
                },
            };
        }
        Ok(ack) => {
            // The replica lacked material versions it was assumed to hold (for example its
            // store was replaced): the next attempt sends every version it lacks.
            delivery.confirmed_versions = ack.versions;
            Error::Conflict {
                id,
                reason: ConflictReason::ReplicaLacksVersions,
            }
        }
        Err(error) => error,
    };
    delivery.attempts = delivery.attempts.saturating_add(1);
    delivery.retry_at = now.checked_add(retry_delay(delivery.attempts)).ok();
    delivery.failure = Some(DeliveryFailure {
        attempted_seq: sent.seq,
        error: failure.to_string(),
        failed_at: now,
    });
    Settlement {
        delivery: Some(delivery),
        owed: true,
        outcome: Outcome::Failed(failure),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> KeyId {
        KeyId::from_bytes([7; 16])
    }

    fn now() -> Timestamp {
        "2026-03-01T12:00:00Z".parse().unwrap()
    }

    const LIVE: Sent = Sent {
        seq: 5,
        deleted: false,
    };

    const DELETION: Sent = Sent {
        seq: 8,
        deleted: true,
    };

    fn unreachable() -> Error {
        Error::ZoneUnreachable {
            zone: "de-fra-1".to_owned(),
            detail: "down".to_owned(),
        }
    }

    fn ack(applied_seq: u64, versions: u32) -> Result<Ack, Error> {
        Ok(Ack {
            applied_seq,
            versions,
        })
    }

    /// A replica that confirmed revision `seq` and `versions` material versions.
    fn confirmed(seq: u64, versions: u32) -> Delivery {
        Delivery {
            confirmed_seq: seq,
            confirmed_versions: versions,
            ..Delivery::default()
        }
    }

    fn failing() -> Delivery {
        Delivery {
            confirmed_seq: 2,
            confirmed_versions: 1,
            failure: Some(DeliveryFailure {
                attempted_seq: 4,
                error: "down".to_owned(),
                failed_at: now(),
            }),
            attempts: 3,
            retry_at: Some(now()),
        }
    }

    #[test]
    fn retry_delay_doubles_up_to_the_cap() {
        assert_eq!(retry_delay(1), SignedDuration::from_secs(1));
        assert_eq!(retry_delay(2), SignedDuration::from_secs(2));
        assert_eq!(retry_delay(5), SignedDuration::from_secs(16));
        assert_eq!(retry_delay(9), SignedDuration::from_secs(256));
        assert_eq!(retry_delay(10), RETRY_MAX);
        assert_eq!(retry_delay(u32::MAX), RETRY_MAX);
    }

    #[test]
    fn a_confirmed_latest_revision_clears_the_failures_and_the_debt() {
        let settled = settle(id(), failing(), LIVE, ack(5, 2), 5, now());
        assert_eq!(settled.outcome, Outcome::Delivered);
        assert!(!settled.owed);
        assert_eq!(
            settled.delivery,
            Some(Delivery {
                confirmed_seq: 5,
                confirmed_versions: 2,
                failure: None,
                attempts: 0,
                retry_at: None,
            })
        );
    }

    #[test]
    fn a_key_changed_meanwhile_leaves_the_replica_behind_and_owed() {
        let settled = settle(id(), Delivery::default(), LIVE, ack(5, 1), 6, now());
        assert_eq!(settled.outcome, Outcome::Behind);
        assert!(settled.owed);
        assert_eq!(settled.delivery.unwrap().confirmed_seq, 5);
    }

    #[test]
    fn a_confirmation_never_moves_back() {
        // A late answer to an older attempt confirms less than what is known.
        let settled = settle(id(), confirmed(9, 1), LIVE, ack(5, 1), 9, now());
        assert_eq!(settled.delivery.unwrap().confirmed_seq, 9);
        assert_eq!(settled.outcome, Outcome::Delivered);
    }

    #[test]
    fn a_confirmed_deletion_forgets_the_replica() {
        let settled = settle(id(), failing(), DELETION, ack(8, 0), 0, now());
        assert_eq!(
            settled,
            Settlement {
                delivery: None,
                owed: false,
                outcome: Outcome::Delivered,
            }
        );
    }

    #[test]
    fn a_failure_is_counted_recorded_owed_and_backed_off() {
        let error = unreachable();
        let settled = settle(id(), failing(), LIVE, Err(error.clone()), 5, now());
        assert_eq!(settled.outcome, Outcome::Failed(error.clone()));
        assert!(settled.owed);
        let delivery = settled.delivery.unwrap();
        assert_eq!(delivery.attempts, 4);
        assert_eq!(delivery.retry_at, Some(now() + retry_delay(4)));
        assert_eq!(delivery.confirmed_seq, 2, "a failure confirms nothing");
        assert_eq!(
            delivery.failure,
            Some(DeliveryFailure {
                attempted_seq: 5,
                error: error.to_string(),
                failed_at: now(),
            })
        );
    }

    #[test]
    fn a_failed_deletion_stays_owed() {
        let settled = settle(
            id(),
            Delivery::default(),
            DELETION,
            Err(unreachable()),
            0,
            now(),
        );
        assert!(settled.owed);
        assert_eq!(settled.delivery.unwrap().attempts, 1);
    }

    #[test]
    fn an_answer_below_the_revision_sent_fails_and_says_which_versions_the_replica_holds() {
        let settled = settle(id(), confirmed(0, 3), LIVE, ack(2, 1), 5, now());
        assert_eq!(
            settled.outcome,
            Outcome::Failed(Error::Conflict {
                id: id(),
                reason: ConflictReason::ReplicaLacksVersions,
            })
        );
        assert!(settled.owed);
        let delivery = settled.delivery.unwrap();
        assert_eq!(
            delivery.confirmed_versions, 1,
            "the next attempt sends versions 2 and up"
        );
        assert_eq!(delivery.attempts, 1);
    }

    #[test]
    fn a_replica_ahead_of_its_origin_is_reported_every_time() {
        // The replica holds revision 7; the origin's latest is 5 (its store went back).
        let settled = settle(id(), confirmed(5, 2), LIVE, ack(7, 2), 5, now());
        assert_eq!(
            settled.outcome,
            Outcome::Failed(Error::Conflict {
                id: id(),
                reason: ConflictReason::ReplicaAheadOfOrigin,
            })
        );
        assert!(
            settled.owed,
            "retried: it clears once the origin passes revision 7"
        );
        let delivery = settled.delivery.unwrap();
        assert_eq!(delivery.confirmed_seq, 5, "nothing newer is confirmed");
        assert_eq!(delivery.failure.unwrap().attempted_seq, LIVE.seq);
        // The same answer once the origin's revisions passed the replica's: delivered.
        let settled = settle(id(), confirmed(5, 2), LIVE, ack(7, 2), 7, now());
        assert_eq!(settled.outcome, Outcome::Delivered);
    }

    #[test]
    fn retries_wait_for_their_time() {
        let delivery = Delivery {
            retry_at: Some(now()),
            ..Delivery::default()
        };
        assert!(delivery.retry_due(now()));
        assert!(!delivery.retry_due(now() - SignedDuration::from_nanos(1)));
        assert!(Delivery::default().retry_due(now()));
    }

    #[test]
    fn a_replica_is_current_once_it_confirmed_the_latest_revision_without_failure_since() {
        let confirmed = Delivery {
            confirmed_seq: 5,
            ..Delivery::default()
        };
        assert!(confirmed.is_current(5));
        assert!(confirmed.is_current(4));
        assert!(!confirmed.is_current(6));
        let failed = settle(id(), confirmed, LIVE, Err(unreachable()), 5, now());
        assert!(
            !failed.delivery.unwrap().is_current(5),
            "a failure is retried"
        );
    }
}
