//! The shell. [`Kms`] ([`handle`]) is a thin facade: a handle on one zone with a [`Caller`],
//! whose check sees every call first, and then hands the call to one of three parts with one
//! job each, wired by [`zone`]:
//! - the lifecycle ([`lifecycle`]): creates, changes and destroys keys, runs what is due;
//! - the crypto path ([`crypto_path`], over the key states of [`cache`]): encrypt, decrypt,
//!   re-encrypt, generate-data-key, the encryption budget and its reservations;
//! - the replicator ([`replicator`]): owns the [`Link`], delivers in the background (a change
//!   is answered once durable; a slow zone delays no answer), receives.
//!
//! They share the store and its durability latch, the sealer, the clock and the key locks
//! ([`shared`]). [`options`] holds what a `Kms` is opened with; [`due`] the background loop.

mod audit;
mod cache;
mod caller;
mod clock;
mod crypto_path;
mod due;
mod handle;
mod import;
mod lifecycle;
mod link;
mod options;
mod replicator;
mod report;
mod restore;
mod shared;
mod zone;

pub use audit::{AuditEvent, AuditHead, AuditSink, OUTCOME_OK};
pub use caller::{Access, Caller, Operation, Target};
pub use clock::{Clock, ManualClock, SystemClock};
pub use due::{DueRun, DueRunner};
pub use handle::Kms;
pub use import::{ImportOutcome, Imported, KeyImport};
pub use link::{Link, ReplicaUpdate, wire};
pub use options::{KmsOptions, Limits, RESERVATION_BLOCK};
pub use replicator::LocalLink;
pub use report::{DueReport, SyncReport};
pub use restore::{BackupSummary, RestoreOptions, RestoreReport};
