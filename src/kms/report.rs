//! What [`Kms::run_due`](crate::Kms::run_due) and [`Kms::sync`](crate::Kms::sync) report.

use crate::core::{Error, KeyId};

/// What one [`Kms::run_due`](crate::Kms::run_due) did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DueReport {
    /// Keys rotated automatically.
    pub rotated: Vec<KeyId>,
    /// Keys destroyed because their deletion was due.
    pub deleted: Vec<KeyId>,
    /// Keys whose due work failed (for example a storage error); they stay due and are
    /// retried by the next run. The other keys were not affected.
    pub failed: Vec<(KeyId, Error)>,
    /// Entries of the due index that name no key (only a damaged store has them); skipped.
    pub unreadable: Vec<Error>,
    /// The deliveries to replicas that were waiting (retries in backoff left for later).
    pub replication: SyncReport,
}

/// What one [`Kms::sync`](crate::Kms::sync) (or the replication part of
/// [`Kms::run_due`](crate::Kms::run_due)) did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    /// Replicas brought up to date (key, zone).
    pub delivered: Vec<(KeyId, String)>,
    /// Deliveries that failed; each is recorded as the replica's `last-failure` and retried.
    pub failed: Vec<(KeyId, String, Error)>,
    /// Replicas left for later: their retry is not due yet.
    pub deferred: Vec<(KeyId, String)>,
    /// Entries of the outbox that name no key and zone (a damaged store): skipped.
    pub unreadable: Vec<Error>,
}
