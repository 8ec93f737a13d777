//! The one error type of keylife.
//!
//! It lives in the core because the core decides most of its conditions; the shell adds the few
//! that come from storage and the operating system ([`Error::WrongRootKey`], [`Error::Corrupt`],
//! [`Error::Storage`], [`Error::RandomSource`]). Every variant has a stable machine code
//! ([`Error::code`]) and the HTTP status of lifecycle.md ([`Error::http_status`]).

use jiff::Timestamp;

use super::id::KeyId;

/// Everything that can go wrong in keylife.
///
/// Messages name the key and the rule or range that was broken; they never contain key
/// material, plaintexts or data keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key does not exist in this zone: it was never created here, or it was deleted.
    #[error("key {id} not found")]
    KeyNotFound {
        /// The key asked for.
        id: KeyId,
    },
    /// The operation needs an enabled key and this one is disabled.
    #[error("key {id} is disabled: enable it first")]
    KeyDisabled {
        /// The disabled key.
        id: KeyId,
    },
    /// The key is scheduled for deletion; only cancel-deletion (and reads) are allowed.
    #[error("key {id} is pending deletion (deleted at {delete_at}): cancel the deletion first")]
    KeyPendingDeletion {
        /// The key.
        id: KeyId,
        /// When the key will be destroyed.
        delete_at: Timestamp,
    },
    /// cancel-deletion on a key that is not pending deletion.
    #[error("key {id} is not pending deletion")]
    NotPendingDeletion {
        /// The key.
        id: KeyId,
    },
    /// The operation is only allowed in the key's origin zone, and this key is a replica.
    #[error("key {id} is a replica of zone {origin_zone}: {operation} is only allowed there")]
    NotOnReplica {
        /// The replica key.
        id: KeyId,
        /// The zone that owns the key.
        origin_zone: String,
        /// The refused operation, as named in the API (`rotate`, `schedule-deletion`, ...).
        operation: &'static str,
    },
    /// Replication of a key that was not created as `multi-zone`.
    #[error("key {id} is not a multi-zone key")]
    NotMultiZone {
        /// The key.
        id: KeyId,
    },
    /// create-key with a name that another key of this zone (replicas included) already has.
    #[error("a key named {name:?} already exists in zone {zone}")]
    NameConflict {
        /// The name asked for.
        name: String,
        /// The zone.
        zone: String,
    },
    /// The key is already in the asked configuration where that is an error, not
    /// `already-applied` (enable-key-rotation when rotation is on, disable when it is off,
    /// replicate to a zone twice).
    #[error("key {id}: {reason}")]
    Conflict {
        /// The key.
        id: KeyId,
        /// Which rule: for example "automatic rotation is already enabled".
        reason: &'static str,
    },
    /// An argument is well-formed but names something that cannot be used (for example an
    /// unknown replication zone).
    #[error("invalid argument `{field}`: {reason}")]
    InvalidArgument {
        /// The argument, by its API name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The 11th manual rotation of a key.
    #[error("key {id} reached the limit of {limit} manual rotations")]
    ManualRotationLimit {
        /// The key.
        id: KeyId,
        /// The limit ([`crate::core::limits::MAX_MANUAL_ROTATIONS`]).
        limit: u32,
    },
    /// A replica zone could not be reached (or did not answer) through the link. Recorded as
    /// a replica's `last-failure`; the delivery is retried.
    #[error("zone {zone} is unreachable: {detail}")]
    ZoneUnreachable {
        /// The zone.
        zone: String,
        /// What the link saw.
        detail: String,
    },
    /// A replica's newest material version used its encryption budget in this zone, and the
    /// new version it asked its origin zone for has not arrived yet. Retry shortly.
    #[error(
        "key {id}: version {version} used its encryption budget in this zone; a new version \
         was asked of the origin zone {origin_zone}: retry shortly"
    )]
    RotationPending {
        /// The replica key.
        id: KeyId,
        /// The spent version.
        version: u32,
        /// The zone that must rotate the key.
        origin_zone: String,
    },
    /// The operation needs a key of usage `encrypt-decrypt`. Every key keylife creates has that
    /// usage, so this version never returns it; it exists so that the error vocabulary is the
    /// contract's.
    #[error("key {id}: the operation needs a key with usage encrypt-decrypt")]
    InvalidUsage {
        /// The key.
        id: KeyId,
    },
    /// create-key when the zone already holds its quota of keys (replicas not counted).
    #[error("zone {zone} already holds {limit} keys, its quota")]
    QuotaExceeded {
        /// The zone.
        zone: String,
        /// The quota.
        limit: usize,
    },
    /// decrypt or re-encrypt of a ciphertext whose header names another key than the one asked.
    #[error("the ciphertext was not made by key {id}")]
    IncorrectKey {
        /// The key asked to decrypt.
        id: KeyId,
    },
    /// The ciphertext is damaged, truncated, forged, of an unknown format or material version,
    /// or the encryption context is not the one used to encrypt. Deliberately says nothing more.
    #[error("invalid ciphertext")]
    InvalidCiphertext,
    /// A mutating call carried an expected `revision.seq` that is not the key's.
    #[error("key {id} is at revision {actual}, not the expected {expected}")]
    RevisionConflict {
        /// The key.
        id: KeyId,
        /// The revision the caller expected.
        expected: u64,
        /// The key's revision.
        actual: u64,
    },
    /// An argument is malformed or out of its range.
    #[error("bad request: `{field}` {reason}")]
    BadRequest {
        /// The argument, by its API name (`name`, `delay-days`, `rotation-period`, ...).
        field: &'static str,
        /// The rule broken, with the allowed range and what was given.
        reason: String,
    },
    /// The store was sealed under another root key. Detected at open by a sealed check value.
    #[error("the root key does not open this store (it was created with another root key)")]
    WrongRootKey,
    /// Stored bytes that do not decode or do not authenticate. Other records stay usable.
    #[error("stored {record} is corrupt: {detail}")]
    Corrupt {
        /// Which record: for example "key 0190…" or "material 0190…/v2".
        record: String,
        /// What failed.
        detail: String,
    },
    /// The storage backend failed (I/O error, disk full, ...). Nothing of the call was applied.
    #[error("storage error: {detail}")]
    Storage {
        /// The backend's message.
        detail: String,
    },
    /// The backend applied a change but could not make it durable (a failed flush or
    /// `fsync`): whether it survives a crash is unknown. The `Kms` then refuses every call
    /// with this error until it is reopened; after reopening, the store is in a consistent
    /// state, with or without that change.
    #[error("the store could not make a change durable ({detail}); reopen it")]
    NotDurable {
        /// What failed.
        detail: String,
    },
    /// The operating system's random source failed; nothing was generated or written.
    #[error("the operating system's random source failed: {detail}")]
    RandomSource {
        /// The source's message.
        detail: String,
    },
}

impl Error {
    /// The stable machine code of this error, for logs, metrics and the HTTP layer.
    ///
    /// Codes never change once released; new conditions get new codes.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Error::KeyNotFound { .. } => "key-not-found",
            Error::KeyDisabled { .. } => "key-disabled",
            Error::KeyPendingDeletion { .. } => "key-pending-deletion",
            Error::NotPendingDeletion { .. } => "not-pending-deletion",
            Error::NotOnReplica { .. } => "not-on-replica",
            Error::NotMultiZone { .. } => "not-multi-zone",
            Error::NameConflict { .. } => "name-conflict",
            Error::Conflict { .. } => "conflict",
            Error::InvalidArgument { .. } => "invalid-argument",
            Error::ManualRotationLimit { .. } => "manual-rotation-limit",
            Error::InvalidUsage { .. } => "invalid-usage",
            Error::QuotaExceeded { .. } => "quota-exceeded",
            Error::IncorrectKey { .. } => "incorrect-key",
            Error::InvalidCiphertext => "invalid-ciphertext",
            Error::RevisionConflict { .. } => "revision-conflict",
            Error::BadRequest { .. } => "bad-request",
            Error::WrongRootKey => "wrong-root-key",
            Error::Corrupt { .. } => "corrupt-record",
            Error::Storage { .. } => "storage",
            Error::NotDurable { .. } => "not-durable",
            Error::RandomSource { .. } => "random-source",
            Error::ZoneUnreachable { .. } => "zone-unreachable",
            Error::RotationPending { .. } => "rotation-pending",
        }
    }

    /// The HTTP status lifecycle.md gives this error: 404 for key not found; 409 for name
    /// conflict, conflict and revision conflict; 400 for the other contract errors; 500 for the
    /// conditions of the store and the operating system, which are not the caller's fault.
    #[must_use]
    pub fn http_status(&self) -> u16 {
        match self {
            Error::KeyNotFound { .. } => 404,
            Error::NameConflict { .. }
            | Error::Conflict { .. }
            | Error::RevisionConflict { .. } => 409,
            Error::WrongRootKey
            | Error::Corrupt { .. }
            | Error::Storage { .. }
            | Error::NotDurable { .. }
            | Error::RandomSource { .. } => 500,
            Error::ZoneUnreachable { .. } | Error::RotationPending { .. } => 503,
            _ => 400,
        }
    }

    /// Untrusted text shortened for quoting in a message.
    pub(crate) fn quote(text: &str) -> String {
        const MAX: usize = 64;
        if text.chars().count() <= MAX {
            format!("{text:?}")
        } else {
            let short: String = text.chars().take(MAX).collect();
            format!("{short:?}…")
        }
    }

    /// A bad-request error for `field` whose value is outside `min..=max`.
    pub(crate) fn out_of_range(
        field: &'static str,
        min: impl std::fmt::Display,
        max: impl std::fmt::Display,
        unit: &str,
        got: impl std::fmt::Display,
    ) -> Error {
        Error::BadRequest {
            field,
            reason: format!("must be between {min} and {max}{unit}, got {got}"),
        }
    }
}
