//! # keylife
//!
//! A key management service that runs inside your process: keys with a lifecycle (enabled,
//! disabled, pending deletion), versioned material with manual and automatic rotation,
//! scheduled deletion with cancel, and AES-256-GCM encrypt, decrypt, re-encrypt and
//! generate-data-key, persisted in an embedded sled store sealed under a root key. Its
//! behaviour and data shapes are those of Exoscale's KMS API.
//!
//! ```
//! use keylife::{CreateKey, Kms, KmsOptions, ManualClock, RootKey};
//!
//! # fn main() -> Result<(), keylife::Error> {
//! let clock = ManualClock::new("2026-01-01T00:00:00Z".parse().unwrap());
//! let kms = Kms::open_in_memory(RootKey::generate()?, KmsOptions::new("ch-gva-2").clock(clock.clone()))?;
//! let key = kms.create_key(&CreateKey::new("backups"))?;
//! let old = kms.encrypt(key.id, b"secret", None)?;
//! kms.rotate_key(key.id, None)?;
//! // Every version still decrypts.
//! assert_eq!(kms.decrypt(key.id, &old.ciphertext, None)?.plaintext.as_bytes(), b"secret");
//! kms.schedule_key_deletion(key.id, Some(7), None)?;
//! clock.advance_days(7);
//! assert_eq!(kms.run_due()?.deleted, vec![key.id]);
//! assert_eq!(kms.get_key(key.id).unwrap_err().code(), "key-not-found");
//! # Ok(())
//! # }
//! ```
//!
//! The crate is layered, dependencies pointing inward:
//! - [`core`]: the pure lifecycle rules (no clock, no randomness, no I/O);
//! - [`crypto`]: secret containers, the AEAD seam, the ciphertext format, sealing at rest;
//! - [`store`]: the storage trait, its sled and in-memory backends, the typed store;
//! - [`Kms`]: the shell that ties them together; [`api`]: what it returns;
//! - `server` (cargo feature `server`): the HTTP API of the `keylife` binary, outermost, with
//!   `server::audit_log`, the chained audit log file it writes.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod api;
pub mod core;
pub mod crypto;
mod kms;
pub mod seed;
#[cfg(feature = "server")]
pub mod server;
pub mod store;

pub use crate::api::{
    Ciphertext, CreatedKey, DataKey, DeletionScheduled, KeyDetails, KeyList, KeyStatus, KeySummary,
    Plaintext, RotationList, RotationResponse, SuccessResponse, SuccessStatus,
};
/// `Result` with keylife's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub use crate::core::replication::delivery::Ack;
pub use crate::core::{
    ConflictReason, CreateKey, DataKeySpec, Error, ImportKey, ImportRotation, ImportStatus,
    ImportVersion, KeyId,
};
pub use crate::crypto::{MaterialKey, RootKey, SecretBytes};
pub use crate::kms::{
    Access, AuditEvent, AuditHead, AuditSink, BackupSummary, Caller, Clock, DueReport, DueRun,
    DueRunner, ImportOutcome, Imported, KeyImport, Kms, KmsOptions, Limits, Link, LocalLink,
    ManualClock, OUTCOME_OK, Operation, RESERVATION_BLOCK, ReplicaUpdate, RestoreOptions,
    RestoreReport, SyncReport, SystemClock, Target, wire,
};
pub use crate::seed::{Seed, SeedApplied, SeedReport};
pub use crate::store::{RootKeyRotation, rotate_root_key};
