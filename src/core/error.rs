//! The one error type of keylife.
//!
//! It lives in the core because the core decides most of its conditions; the shell adds the few
//! that come from storage, the operating system and the caller ([`Error::WrongRootKey`],
//! [`Error::Corrupt`], [`Error::Storage`], [`Error::StoreInUse`], [`Error::RandomSource`],
//! [`Error::Forbidden`]). Every variant has a stable machine code ([`Error::code`]), the HTTP
//! status of lifecycle.md ([`Error::http_status`]) and a short title ([`Error::title`]).

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
    /// The key's state does not allow the change, and saying `already-applied` would be wrong:
    /// [`ConflictReason`] says which rule (automatic rotation already on or off, a zone
    /// replicated twice, a counter exhausted, a replication update that does not fit).
    #[error("key {id}: {reason}")]
    Conflict {
        /// The key.
        id: KeyId,
        /// Which rule.
        reason: ConflictReason,
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
    /// A zone in another process answered a replication message with a refusal, or with an
    /// answer that is not its authenticated answer. Recorded as a replica's `last-failure`;
    /// the delivery is retried.
    #[error("zone {zone} refused: {detail}")]
    ZoneRefused {
        /// The zone.
        zone: String,
        /// Its answer (status, code and detail of its problem document), or what is wrong with
        /// the answer.
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
    /// Reserved: the operation needs a key of usage `encrypt-decrypt`. Every key keylife creates
    /// has that usage, so this version never returns it; it is kept so that the error
    /// vocabulary is the contract's. (A `usage` other than `encrypt-decrypt` in a request is
    /// [`Error::BadRequest`] naming the field.)
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
    /// The store is held by another user: another process, or another `Kms` of this process.
    /// Nothing was opened; the store is free again once that user closes it.
    #[error("the store {store} is already in use by another process or Kms")]
    StoreInUse {
        /// Which store: its directory, or "this backend".
        store: String,
    },
    /// The caller's check ([`crate::Caller::permit`]) refused the call before anything was
    /// looked at or changed. The answer is the same whether the key exists or not.
    #[error("permission denied: this credential may not call {operation}{}", key_suffix(.id))]
    Forbidden {
        /// The refused operation, as named in the API (`encrypt`, `rotate-kms-key`, ...).
        operation: &'static str,
        /// The key the call named, if it named one.
        id: Option<KeyId>,
    },
    /// A seed file is malformed or one of its values is out of range; nothing of it was
    /// applied.
    #[error("invalid seed: `{at}` {reason}")]
    InvalidSeed {
        /// Where in the file: `keys[3].versions[1].material`, `keys[0].name`, `keys`, ...
        at: String,
        /// The rule broken, with the allowed range and what was given (never the material).
        reason: String,
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
        self.names().0
    }

    /// A short summary of the kind of error, the same for every error of one code: the
    /// `title` of the HTTP problem document. The failures of the store and the operating
    /// system (HTTP 500) share one title, `Internal error`: what to do about them is the
    /// operator's business, and their code and detail say which.
    #[must_use]
    pub fn title(&self) -> &'static str {
        self.names().1
    }

    /// The code and the title, written side by side.
    fn names(&self) -> (&'static str, &'static str) {
        const INTERNAL: &str = "Internal error";
        use Error::*;
        match self {
            KeyNotFound { .. } => ("key-not-found", "Key not found"),
            KeyDisabled { .. } => ("key-disabled", "Key is disabled"),
            KeyPendingDeletion { .. } => ("key-pending-deletion", "Key is pending deletion"),
            NotPendingDeletion { .. } => ("not-pending-deletion", "Key is not pending deletion"),
            NotOnReplica { .. } => ("not-on-replica", "Not allowed on a replica"),
            NotMultiZone { .. } => ("not-multi-zone", "Key is not multi-zone"),
            NameConflict { .. } => ("name-conflict", "Name already in use"),
            Conflict { .. } => ("conflict", "Conflict"),
            InvalidArgument { .. } => ("invalid-argument", "Invalid argument"),
            ManualRotationLimit { .. } => {
                ("manual-rotation-limit", "Manual rotation limit reached")
            }
            InvalidUsage { .. } => ("invalid-usage", "Invalid key usage"),
            QuotaExceeded { .. } => ("quota-exceeded", "Key quota exceeded"),
            IncorrectKey { .. } => ("incorrect-key", "Incorrect key"),
            InvalidCiphertext => ("invalid-ciphertext", "Invalid ciphertext"),
            RevisionConflict { .. } => ("revision-conflict", "Revision conflict"),
            BadRequest { .. } => ("bad-request", "Bad request"),
            WrongRootKey => ("wrong-root-key", INTERNAL),
            Corrupt { .. } => ("corrupt-record", INTERNAL),
            Storage { .. } => ("storage", INTERNAL),
            NotDurable { .. } => ("not-durable", INTERNAL),
            RandomSource { .. } => ("random-source", INTERNAL),
            ZoneUnreachable { .. } => ("zone-unreachable", "Zone unreachable"),
            ZoneRefused { .. } => ("zone-refused", "Zone refused"),
            RotationPending { .. } => ("rotation-pending", "Rotation pending"),
            StoreInUse { .. } => ("store-in-use", "Store in use"),
            Forbidden { .. } => ("permission-denied", "Permission denied"),
            InvalidSeed { .. } => ("invalid-seed", "Invalid seed"),
        }
    }

    /// The HTTP status lifecycle.md gives this error: 404 for key not found; 409 for name
    /// conflict, conflict and revision conflict; 403 for a call the caller may not make; 400
    /// for the other contract errors; 500 for the conditions of the store and the operating
    /// system, which are not the caller's fault; 503 for what passes (a zone out of reach, a
    /// rotation under way, a store in use).
    #[must_use]
    pub fn http_status(&self) -> u16 {
        match self {
            Error::KeyNotFound { .. } => 404,
            Error::Forbidden { .. } => 403,
            Error::NameConflict { .. }
            | Error::Conflict { .. }
            | Error::RevisionConflict { .. } => 409,
            Error::WrongRootKey
            | Error::Corrupt { .. }
            | Error::Storage { .. }
            | Error::NotDurable { .. }
            | Error::RandomSource { .. } => 500,
            Error::ZoneUnreachable { .. }
            | Error::ZoneRefused { .. }
            | Error::RotationPending { .. }
            | Error::StoreInUse { .. } => 503,
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
}

fn key_suffix(id: &Option<KeyId>) -> String {
    id.map(|id| format!(" on key {id}")).unwrap_or_default()
}

/// Which rule an [`Error::Conflict`] broke. Its `Display` is the rule in words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConflictReason {
    /// enable-key-rotation while automatic rotation is on.
    RotationAlreadyEnabled,
    /// disable-key-rotation while automatic rotation is off.
    RotationAlreadyDisabled,
    /// replicate-key to a zone that already holds a replica.
    AlreadyReplicated,
    /// The key's `revision.seq` reached `u64::MAX`: it cannot change any more.
    RevisionsExhausted,
    /// The key's material version reached `u32::MAX`: it cannot rotate any more.
    VersionsExhausted,
    /// A replication update reached the key's origin zone (or came from this zone).
    UpdateAtOrigin,
    /// A replication update for a key this zone does not hold does not list this zone among
    /// the key's replicas.
    NotAReplicaZone,
    /// A replication update names another origin zone than the one of the replica this zone
    /// holds: only the key's own origin zone updates or destroys its replicas.
    OtherOrigin,
    /// A replication update has fewer material versions than the replica holds.
    FewerVersions,
    /// A replica did not apply an update because it lacks material versions the origin
    /// thought it held; the next delivery sends them again.
    ReplicaLacksVersions,
    /// Concurrent encryptions spent the budget of every new material version before this
    /// call could use one; retrying succeeds.
    BudgetRace,
    /// A replica holds a newer revision of the key than its origin: the origin's store went
    /// back in time (put back from an older copy of its whole directory).
    ReplicaAheadOfOrigin,
    /// An import of a key this zone already holds with other material in the imported
    /// versions (or fewer imported versions, or material keylife generated).
    ImportedMaterialDiffers,
    /// An import of a key this zone already holds under another name.
    ImportedNameDiffers,
    /// An import of a key this zone holds as a replica of another zone's key.
    ImportOverReplica,
    /// An import of a replicated key that was deleted: a deleted key's id never comes back.
    ImportOfGoneKey,
}

impl ConflictReason {
    /// The rule in words.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            ConflictReason::RotationAlreadyEnabled => "automatic rotation is already enabled",
            ConflictReason::RotationAlreadyDisabled => "automatic rotation is already disabled",
            ConflictReason::AlreadyReplicated => "the key is already replicated to this zone",
            ConflictReason::RevisionsExhausted => "the revision counter is exhausted",
            ConflictReason::VersionsExhausted => "the material version counter is exhausted",
            ConflictReason::UpdateAtOrigin => {
                "this zone holds the key as an origin key (created, seeded or imported here), \
                 not as a replica: it does not follow another zone's updates"
            }
            ConflictReason::NotAReplicaZone => {
                "the update does not list this zone among the key's replicas"
            }
            ConflictReason::OtherOrigin => {
                "the update comes from another zone than the key's origin zone: only the \
                 origin updates or destroys its replicas"
            }
            ConflictReason::FewerVersions => {
                "the update has fewer material versions than the replica"
            }
            ConflictReason::ReplicaLacksVersions => {
                "the replica did not apply the update: it lacks material versions; they are \
                 sent again"
            }
            ConflictReason::BudgetRace => {
                "concurrent calls spent the encryption budget of every new version; retry"
            }
            ConflictReason::ImportedMaterialDiffers => {
                "the key exists with other material than the import gives"
            }
            ConflictReason::ImportedNameDiffers => {
                "the key exists under another name than the import gives"
            }
            ConflictReason::ImportOverReplica => {
                "the key is a replica of another zone's key here: it cannot be imported"
            }
            ConflictReason::ImportOfGoneKey => {
                "the key was deleted after it was replicated: its id is never used again"
            }
            ConflictReason::ReplicaAheadOfOrigin => {
                "the replica holds a newer revision of the key than this origin: this zone's \
                 store was put back to an older copy"
            }
        }
    }
}

impl std::fmt::Display for ConflictReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod examples {
    //! One error of each variant, for the tests that must cover them all.

    use super::*;

    /// How many variants [`Error`] has.
    const VARIANTS: usize = 27;

    /// The position of `error`'s variant. The match has no wildcard: a new variant does not
    /// compile until it has a position here, and [`one_of_each`] then needs an example of it.
    pub(crate) fn index(error: &Error) -> usize {
        match error {
            Error::KeyNotFound { .. } => 0,
            Error::KeyDisabled { .. } => 1,
            Error::KeyPendingDeletion { .. } => 2,
            Error::NotPendingDeletion { .. } => 3,
            Error::NotOnReplica { .. } => 4,
            Error::NotMultiZone { .. } => 5,
            Error::NameConflict { .. } => 6,
            Error::Conflict { .. } => 7,
            Error::InvalidArgument { .. } => 8,
            Error::ManualRotationLimit { .. } => 9,
            Error::ZoneUnreachable { .. } => 10,
            Error::RotationPending { .. } => 11,
            Error::InvalidUsage { .. } => 12,
            Error::QuotaExceeded { .. } => 13,
            Error::IncorrectKey { .. } => 14,
            Error::InvalidCiphertext => 15,
            Error::RevisionConflict { .. } => 16,
            Error::BadRequest { .. } => 17,
            Error::WrongRootKey => 18,
            Error::Corrupt { .. } => 19,
            Error::Storage { .. } => 20,
            Error::NotDurable { .. } => 21,
            Error::StoreInUse { .. } => 22,
            Error::Forbidden { .. } => 23,
            Error::RandomSource { .. } => 24,
            Error::InvalidSeed { .. } => 25,
            Error::ZoneRefused { .. } => 26,
        }
    }

    /// One error of every variant, in [`index`] order.
    fn one_of_each() -> Vec<Error> {
        let id = KeyId::from_bytes([1; 16]);
        let at = Timestamp::UNIX_EPOCH;
        let text = || "x".to_owned();
        let all = vec![
            Error::KeyNotFound { id },
            Error::KeyDisabled { id },
            Error::KeyPendingDeletion { id, delete_at: at },
            Error::NotPendingDeletion { id },
            Error::NotOnReplica {
                id,
                origin_zone: text(),
                operation: "rotate",
            },
            Error::NotMultiZone { id },
            Error::NameConflict {
                name: text(),
                zone: text(),
            },
            Error::Conflict {
                id,
                reason: ConflictReason::AlreadyReplicated,
            },
            Error::InvalidArgument {
                field: "zone",
                reason: text(),
            },
            Error::ManualRotationLimit { id, limit: 10 },
            Error::ZoneUnreachable {
                zone: text(),
                detail: text(),
            },
            Error::RotationPending {
                id,
                version: 1,
                origin_zone: text(),
            },
            Error::InvalidUsage { id },
            Error::QuotaExceeded {
                zone: text(),
                limit: 1,
            },
            Error::IncorrectKey { id },
            Error::InvalidCiphertext,
            Error::RevisionConflict {
                id,
                expected: 1,
                actual: 2,
            },
            Error::BadRequest {
                field: "name",
                reason: text(),
            },
            Error::WrongRootKey,
            Error::Corrupt {
                record: text(),
                detail: text(),
            },
            Error::Storage { detail: text() },
            Error::NotDurable { detail: text() },
            Error::StoreInUse { store: text() },
            Error::Forbidden {
                operation: "encrypt",
                id: Some(id),
            },
            Error::RandomSource { detail: text() },
            Error::InvalidSeed {
                at: text(),
                reason: text(),
            },
            Error::ZoneRefused {
                zone: text(),
                detail: text(),
            },
        ];
        let positions: Vec<usize> = all.iter().map(index).collect();
        assert_eq!(positions, (0..VARIANTS).collect::<Vec<_>>());
        all
    }

    #[test]
    fn every_variant_has_its_own_code_and_title() {
        let all = one_of_each();
        let mut codes: Vec<&str> = all.iter().map(Error::code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), VARIANTS, "one code per variant");
        // Every title but the one of the store's and the OS's failures (500) is its own.
        let internal: Vec<&str> = all
            .iter()
            .filter(|e| e.title() == "Internal error")
            .map(Error::code)
            .collect();
        assert_eq!(
            internal,
            [
                "wrong-root-key",
                "corrupt-record",
                "storage",
                "not-durable",
                "random-source"
            ]
        );
        let mut titles: Vec<&str> = all.iter().map(Error::title).collect();
        titles.sort_unstable();
        titles.dedup();
        assert_eq!(titles.len(), VARIANTS - internal.len() + 1);
        for error in &all {
            assert!(!error.title().is_empty(), "{}", error.code());
            assert!(
                (400..600).contains(&error.http_status()),
                "{}",
                error.code()
            );
            let internal = error.title() == "Internal error";
            assert_eq!(internal, error.http_status() == 500, "{}", error.code());
        }
    }
}
