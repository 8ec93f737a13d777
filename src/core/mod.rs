//! The pure lifecycle core.
//!
//! Everything here is deterministic: no clock, no random source, no store, no cipher. The time
//! (`now`) and whatever the rules need to know about the zone come in as arguments; a new
//! record and what happened, or a typed [`Error`], come out. The shell ([`crate::Kms`]) loads,
//! calls these functions, generates material when a version is added, and writes.
//!
//! - [`create_key`] makes the record of a new key.
//! - [`apply`] decides every change of an existing key ([`Command`]), including what is due
//!   at `now` ([`Command::RunDue`]).
//! - [`next_due`] says when a key next needs [`Command::RunDue`]: the store indexes keys by it.
//! - [`deletion_due`] says whether a key's deletion is due: from then on it no longer exists.
//! - [`check_crypto`] says whether a key may be used for cryptographic operations.
//! - [`import_key`] makes the record of a key brought in with a fixed id and its versions;
//!   [`check_reimport`] says whether a key already present may be left alone by the same import.

mod command;
mod error;
mod id;
mod import;
pub mod limits;
mod record;
pub mod replication;
pub mod restore;
mod transition;

#[cfg(test)]
mod import_tests;
#[cfg(test)]
mod replication_tests;
#[cfg(test)]
mod tests;

pub use command::{Command, CreateContext, CreateKey, Event, Transition};
pub use error::{ConflictReason, Error};
pub use id::KeyId;
pub use import::{
    ImportContext, ImportKey, ImportRotation, ImportStatus, ImportVersion, check_reimport,
    import_key,
};
pub use limits::{DataKeySpec, DeletionDelay, RotationPeriod};
pub use record::{
    KeyRecord, KeySource, KeyUsage, MaterialMeta, ReplicaZone, Revision, Role, RotationConfig,
    Status,
};
pub use transition::{add_days, apply, check_crypto, create_key, deletion_due, next_due};
