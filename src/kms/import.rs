//! What [`Kms::import_keys`](crate::Kms::import_keys) takes and answers: a key to import with
//! its material in the clear (in wiping containers), and whether it was created or was already
//! there.

use crate::core::{ImportKey, KeyId};
use crate::crypto::MaterialKey;

/// A key to import: its id, metadata and version times ([`ImportKey`]), and the material of
/// each version, version 1 first (one per entry of `key.versions`). The material is wiped when
/// this is dropped and never printed.
#[derive(Debug)]
pub struct KeyImport {
    /// The key without its material.
    pub key: ImportKey,
    /// The material of each version, version 1 first.
    pub materials: Vec<MaterialKey>,
}

/// What an import did to one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImportOutcome {
    /// The zone did not hold the key: it was created.
    Created,
    /// The zone already held the key with the same material in the imported versions: it was
    /// left as it is, whatever happened to it since it was imported.
    AlreadyPresent,
}

impl ImportOutcome {
    /// `created` or `already-present`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            ImportOutcome::Created => "created",
            ImportOutcome::AlreadyPresent => "already-present",
        }
    }
}

/// One key's outcome: which key, and what happened to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// The key.
    pub id: KeyId,
    /// Its name.
    pub name: String,
    /// What happened.
    pub outcome: ImportOutcome,
}
