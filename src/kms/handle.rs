//! [`Kms`]: a handle on one zone, made by a [`Caller`]. Every method asks the caller's check,
//! then hands the call to the part that does it.

mod backup;
mod health;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use jiff::Timestamp;

use super::audit::{AuditEvent, AuditHead, AuditSink, OUTCOME_OK};
use super::caller::{Caller, Operation, Target};
use super::import::{ImportOutcome, Imported, KeyImport};
use super::lifecycle::Changed;
use super::link::ReplicaUpdate;
use super::options::{KmsOptions, Limits};
use super::report::{DueReport, SyncReport};
use super::zone::Zone;
use crate::Result;
use crate::api::{
    Ciphertext, CreatedKey, DataKey, DeletionScheduled, KeyDetails, KeyList, Plaintext,
    RotationList, RotationResponse, SuccessResponse, SuccessStatus,
};
use crate::core::replication::delivery::Ack;
use crate::core::{Command, CreateKey, DataKeySpec, DeletionDelay, KeyId, RotationPeriod};
use crate::crypto::RootKey;
use crate::store::{Backend, Engine, MemoryBackend};

/// An embedded key management service for one zone.
///
/// `Kms` is `Send + Sync`: share it (for example in an `Arc`) between threads. Every method
/// that changes a key returns once the change is durable; the key's replicas are brought up
/// to date in the background ([`Kms::sync`] does it now). Changes of one key are serialized;
/// the cryptographic operations read only memory and run in parallel. A `Kms` is a handle:
/// [`Kms::as_caller`] makes another on the same zone; the store closes with the last one (after
/// the delivery to a replica under way, if any: what is still queued stays owed in the store).
///
/// ```
/// use keylife::{CreateKey, Kms, KmsOptions, RootKey};
///
/// # fn main() -> Result<(), keylife::Error> {
/// let dir = tempfile::tempdir().unwrap();
/// let kms = Kms::open(dir.path(), RootKey::generate()?, KmsOptions::new("ch-gva-2"))?;
/// let key = kms.create_key(&CreateKey::new("payments"))?;
/// let sealed = kms.encrypt(key.id, b"card 4242", Some(b"order 17"))?;
/// let opened = kms.decrypt(key.id, &sealed.ciphertext, Some(b"order 17"))?;
/// assert_eq!(opened.plaintext.as_bytes(), b"card 4242");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Kms {
    zone: Arc<Zone>,
    caller: Caller,
    /// Where this handle's calls send their audit events: the zone's sink, then the handle's
    /// own; `None` (one branch per call) when there is neither.
    audit: Option<AuditSink>,
}

impl Kms {
    /// Opens the store in directory `path` with the engine it was created with, or creates
    /// one with `options.engine` (sled by default), sealed under `root`: one created with
    /// another root key is [`Error::WrongRootKey`](crate::Error::WrongRootKey), one in use
    /// elsewhere [`Error::StoreInUse`](crate::Error::StoreInUse), one whose bytes were
    /// changed behind keylife's back (or that lost commits) [`Error::Corrupt`](crate::Error::Corrupt),
    /// one created with another engine than an explicit `options.engine`
    /// [`Error::BadRequest`](crate::Error::BadRequest).
    pub fn open(path: impl AsRef<Path>, root: RootKey, options: KmsOptions) -> Result<Kms> {
        let backend = Engine::open(path.as_ref(), options.engine)?;
        Kms::with_backend(backend, root, options)
    }

    /// A `Kms` over a new, empty in-memory store: nothing survives it.
    pub fn open_in_memory(root: RootKey, options: KmsOptions) -> Result<Kms> {
        Kms::with_backend(Arc::new(MemoryBackend::new()), root, options)
    }

    /// A `Kms` over any [`Backend`] (initialized on first use, checked against `root` after).
    /// The root key is wiped when this returns.
    pub fn with_backend(backend: Arc<dyn Backend>, root: RootKey, opts: KmsOptions) -> Result<Kms> {
        let audit = opts.audit.clone();
        let zone = Arc::new(Zone::open(backend, root, opts)?);
        Ok(Kms {
            zone,
            caller: Caller::default(),
            audit,
        })
    }

    /// A handle on the same zone whose calls are made by `caller`: its actor names them, and
    /// its check, if any, sees each call before anything is done. A handle can only narrow:
    /// made from a restricted handle, it keeps that handle's check too.
    #[must_use]
    pub fn as_caller(&self, caller: Caller) -> Kms {
        let caller = caller.within(&self.caller);
        Kms {
            zone: Arc::clone(&self.zone),
            caller,
            audit: self.audit.clone(),
        }
    }

    /// Asks this handle's caller check whether it may make `operation` on key `id`, as the
    /// call itself would first (with the key's name, or none when the zone does not hold it),
    /// and does nothing else: no event, no change. A server uses it to refuse a call before it
    /// reads the call's arguments. `Ok` for a caller without a check.
    pub fn may(&self, operation: Operation, id: KeyId) -> Result<()> {
        self.ask_key(operation, id)
    }

    /// A handle on the same zone, with this handle's caller, whose calls also send their
    /// [`AuditEvent`] to `sink` (after the sinks this handle already has: the zone's
    /// [`KmsOptions::audit`], then any added before). A server makes one per request to see
    /// what the request's call did.
    #[must_use]
    pub fn with_audit(&self, sink: AuditSink) -> Kms {
        let audit = match &self.audit {
            None => sink,
            Some(first) => first.and(sink),
        };
        Kms {
            zone: Arc::clone(&self.zone),
            caller: self.caller.clone(),
            audit: Some(audit),
        }
    }

    /// A weak reference to this handle's zone (for [`LocalLink`](crate::LocalLink)): it
    /// does not keep the zone open.
    pub(super) fn downgrade(&self) -> WeakKms {
        WeakKms {
            zone: Arc::downgrade(&self.zone),
            caller: self.caller.clone(),
            audit: self.audit.clone(),
        }
    }

    /// The caller of this handle's calls.
    #[must_use]
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// The zone this `Kms` serves.
    #[must_use]
    pub fn zone(&self) -> &str {
        self.zone.shared.zone()
    }

    /// The limits in force.
    #[must_use]
    pub fn limits(&self) -> Limits {
        *self.zone.shared.limits()
    }

    /// The current time of this `Kms`'s clock.
    #[must_use]
    pub fn now(&self) -> Timestamp {
        self.zone.shared.now()
    }

    /// create-kms-key: a new enabled key with material version 1. Errors: `bad-request`
    /// (name or description length), `name-conflict`, `quota-exceeded`.
    pub fn create_key(&self, request: &CreateKey) -> Result<CreatedKey> {
        let result = self
            .ask(
                Operation::CreateKey,
                Target::NewKey {
                    name: &request.name,
                },
            )
            .and_then(|()| self.zone.lifecycle.create(request))
            .map(|record| CreatedKey::from(&record));
        if let Some(sink) = &self.audit {
            let (key, revision) = match &result {
                Ok(created) => (Some(created.id), Ok(Some(created.revision.seq))),
                Err(error) => (None, Err(error)),
            };
            self.emit(sink, Operation::CreateKey, (key, None), revision);
        }
        result
    }

    /// Imports one key with a fixed id and its material versions given (bring your own key):
    /// see [`Kms::import_keys`].
    pub fn import_key(&self, import: &KeyImport) -> Result<ImportOutcome> {
        let mut outcomes = self.import_keys(&[import])?;
        Ok(outcomes
            .pop()
            .map_or(ImportOutcome::AlreadyPresent, |imported| imported.outcome))
    }

    /// Imports keys with fixed ids and their material versions given, all or nothing: every
    /// key is checked first, then the new ones are written in one durable commit. A key is
    /// created with version 1 at its `created-at` and each later version recorded as an
    /// automatic rotation at its time (`manual-count` 0, `next-at` one period after the last
    /// version), and is shown as imported (`keylife-imported-versions`). A key this zone
    /// already holds with the same name and the same material in the imported versions is
    /// left as it is (`already-present`), whatever happened to it since. Errors, naming the
    /// key: `bad-request` (arguments, a material count other than the versions', an id or a
    /// name twice in `keys`), `conflict` (the key is held with other material or another name,
    /// is a replica here, or was deleted after being replicated), `name-conflict`,
    /// `quota-exceeded`; `permission-denied` first if the caller may not import every key.
    pub fn import_keys(&self, keys: &[&KeyImport]) -> Result<Vec<Imported>> {
        self.import_call(keys, true)
    }

    /// What [`Kms::import_keys`] would do, checked the same way, without writing anything
    /// (a seed applied to several zones checks every zone before it writes to any).
    pub fn check_import(&self, keys: &[&KeyImport]) -> Result<Vec<Imported>> {
        self.import_call(keys, false)
    }

    fn import_call(&self, keys: &[&KeyImport], write: bool) -> Result<Vec<Imported>> {
        let result = keys
            .iter()
            .try_for_each(|import| {
                self.ask(
                    Operation::ImportKey,
                    Target::NewKey {
                        name: &import.key.name,
                    },
                )
            })
            .and_then(|()| self.zone.lifecycle.import(keys, write))
            .map(|outcomes| (outcomes, None));
        let key = match keys {
            [one] => Some(one.key.id),
            _ => None,
        };
        self.audited(Operation::ImportKey, key, result)
    }

    /// get-kms-key; for an origin key, `replicas-status` tells how far each replica followed.
    pub fn get_key(&self, id: KeyId) -> Result<KeyDetails> {
        self.audited(Operation::GetKey, Some(id), self.get_key_call(id))
    }

    fn get_key_call(&self, id: KeyId) -> Result<(KeyDetails, Option<u64>)> {
        self.ask_key(Operation::GetKey, id)?;
        let record = self.zone.lifecycle.reap_or_load(id)?;
        let replicas_status = self.zone.replicator.replica_states(&record)?;
        let details = KeyDetails {
            replicas_status,
            ..KeyDetails::from(&record)
        };
        Ok((details, Some(record.revision().seq)))
    }

    /// list-kms-keys: every key of the zone, replicas included, in id order. A record that
    /// does not decode fails the listing (`corrupt-record` naming it); the other keys stay
    /// usable by id. Keys whose deletion is due are destroyed on the way.
    pub fn list_keys(&self) -> Result<KeyList> {
        let result = self
            .ask(Operation::ListKeys, Target::Zone)
            .and_then(|()| self.zone.lifecycle.list())
            .map(|kms_keys| (KeyList { kms_keys }, None));
        self.audited(Operation::ListKeys, None, result)
    }

    /// list-kms-key-rotations: versions 2 and up, oldest first. Works in every status.
    pub fn list_key_rotations(&self, id: KeyId) -> Result<RotationList> {
        let result = self
            .ask_key(Operation::ListKeyRotations, id)
            .and_then(|()| self.zone.lifecycle.reap_or_load(id))
            .map(|record| (RotationList::from(&record), Some(record.revision().seq)));
        self.audited(Operation::ListKeyRotations, Some(id), result)
    }

    /// enable-kms-key; `already-applied` if enabled. `expected_seq`, when given, must be the
    /// key's `revision.seq` (`revision-conflict`), here and in every method that changes a key.
    pub fn enable_key(&self, id: KeyId, expected_seq: Option<u64>) -> Result<SuccessResponse> {
        self.change_audited(id, Command::Enable, expected_seq, Changed::success)
    }

    /// disable-kms-key; `already-applied` if disabled.
    pub fn disable_key(&self, id: KeyId, expected_seq: Option<u64>) -> Result<SuccessResponse> {
        self.change_audited(id, Command::Disable, expected_seq, Changed::success)
    }

    /// schedule-kms-key-deletion: destroyed `days` (7–30, default 30) from now unless
    /// cancelled first. From `delete-at` on the key no longer exists: the first call that
    /// reaches it (or [`Kms::run_due`]) destroys it.
    pub fn schedule_key_deletion(
        &self,
        id: KeyId,
        days: Option<u32>,
        expected_seq: Option<u64>,
    ) -> Result<DeletionScheduled> {
        let result = (|| {
            self.ask_key(Operation::ScheduleKeyDeletion, id)?;
            let delay = DeletionDelay::from_request(days)?;
            let changed = self.apply(id, Command::ScheduleDeletion { delay }, expected_seq)?;
            let answer = DeletionScheduled::try_from(&changed.record)?;
            Ok((answer, Some(changed.record.revision().seq)))
        })();
        self.audited(Operation::ScheduleKeyDeletion, Some(id), result)
    }

    /// cancel-kms-key-deletion: the key becomes disabled. Too late once `delete-at` is past.
    pub fn cancel_key_deletion(
        &self,
        id: KeyId,
        expected_seq: Option<u64>,
    ) -> Result<SuccessResponse> {
        self.change_audited(id, Command::CancelDeletion, expected_seq, Changed::success)
    }

    /// rotate-kms-key: a manual rotation (at most 10 per key).
    pub fn rotate_key(&self, id: KeyId, expected_seq: Option<u64>) -> Result<RotationResponse> {
        self.change_audited(id, Command::Rotate, expected_seq, |changed| {
            RotationResponse::from(&changed.record)
        })
    }

    /// enable-kms-key-rotation every `days` (90–2560, default 365); the next rotation is one
    /// period from now.
    pub fn enable_key_rotation(
        &self,
        id: KeyId,
        days: Option<u32>,
        expected_seq: Option<u64>,
    ) -> Result<RotationResponse> {
        let result = (|| {
            self.ask_key(Operation::EnableKeyRotation, id)?;
            let period = RotationPeriod::from_request(days)?;
            let changed = self.apply(id, Command::EnableRotation { period }, expected_seq)?;
            let seq = changed.record.revision().seq;
            Ok((RotationResponse::from(&changed.record), Some(seq)))
        })();
        self.audited(Operation::EnableKeyRotation, Some(id), result)
    }

    /// disable-kms-key-rotation.
    pub fn disable_key_rotation(
        &self,
        id: KeyId,
        expected_seq: Option<u64>,
    ) -> Result<RotationResponse> {
        self.change_audited(id, Command::DisableRotation, expected_seq, |changed| {
            RotationResponse::from(&changed.record)
        })
    }

    /// replicate-kms-key: adds a replica of key `id` in `zone` (`target-registered`), made by
    /// the first delivery, in the background at once, retried by [`Kms::run_due`] and
    /// [`Kms::sync`] while it fails. Errors, in this order: `not-multi-zone`, `not-on-replica`,
    /// `invalid-argument` (the key's own zone, or one the link does not know), `conflict`
    /// (already replicated there), `key-pending-deletion`, `key-disabled`; `permission-denied` first if the
    /// caller may not.
    pub fn replicate_key(
        &self,
        id: KeyId,
        zone: &str,
        expected_seq: Option<u64>,
    ) -> Result<SuccessResponse> {
        let result = (|| {
            self.ask_key(Operation::ReplicateKey, id)?;
            let known = self.zone.replicator.knows(zone);
            let command = Command::Replicate {
                zone: zone.to_owned(),
                known,
            };
            let changed = self.apply(id, command, expected_seq)?;
            let answer = SuccessResponse {
                status: SuccessStatus::TargetRegistered,
            };
            Ok((answer, Some(changed.record.revision().seq)))
        })();
        self.audited(Operation::ReplicateKey, Some(id), result)
    }

    /// encrypt: seals `plaintext` under the newest version of key `id`, with `context` (absent
    /// and empty are the same) as additional authenticated data; no store read once the key
    /// is in memory. Errors: `key-not-found`, `key-disabled`, `key-pending-deletion`,
    /// `bad-request` (plaintext or context over the limits).
    pub fn encrypt(
        &self,
        id: KeyId,
        plaintext: &[u8],
        context: Option<&[u8]>,
    ) -> Result<Ciphertext> {
        let result = self
            .ask_key(Operation::Encrypt, id)
            .and_then(|()| self.zone.crypto.encrypt(id, plaintext, context));
        self.audited_crypto(Operation::Encrypt, (Some(id), None), result)
    }

    /// decrypt: opens a ciphertext of key `id` (any version) with its encryption's context.
    /// Errors: `incorrect-key` (made by another key); `invalid-ciphertext` for any damaged,
    /// truncated or forged ciphertext and for a wrong context; encrypt's status errors.
    pub fn decrypt(
        &self,
        id: KeyId,
        ciphertext: &[u8],
        context: Option<&[u8]>,
    ) -> Result<Plaintext> {
        let result = self
            .ask_key(Operation::Decrypt, id)
            .and_then(|()| self.zone.crypto.decrypt(id, ciphertext, context));
        self.audited_crypto(Operation::Decrypt, (Some(id), None), result)
    }

    /// re-encrypt: decrypts with key `from` and its context, encrypts with the newest version
    /// of key `to` and its context. Both keys must be enabled. The plaintext never leaves the
    /// call and is wiped.
    pub fn re_encrypt(
        &self,
        from: KeyId,
        ciphertext: &[u8],
        from_context: Option<&[u8]>,
        to: KeyId,
        to_context: Option<&[u8]>,
    ) -> Result<Ciphertext> {
        let result = self
            .ask_key(Operation::ReEncrypt, from)
            .and_then(|()| self.ask_key(Operation::ReEncrypt, to))
            .and_then(|()| {
                self.zone
                    .crypto
                    .re_encrypt((from, from_context), ciphertext, (to, to_context))
            });
        self.audited_crypto(Operation::ReEncrypt, (Some(from), Some(to)), result)
    }

    /// generate-data-key: a fresh data key from the OS random source (32 bytes for
    /// [`DataKeySpec::Aes256`], else 1–1024 bytes), in the clear (a wiping container) and
    /// encrypted under key `id` with `context`.
    pub fn generate_data_key(
        &self,
        id: KeyId,
        spec: DataKeySpec,
        context: Option<&[u8]>,
    ) -> Result<DataKey> {
        let result = self
            .ask_key(Operation::GenerateDataKey, id)
            .and_then(|()| self.zone.crypto.generate_data_key(id, spec, context));
        self.audited_crypto(Operation::GenerateDataKey, (Some(id), None), result)
    }

    /// Performs every automatic rotation and final deletion due at the clock's `now`, then the
    /// deliveries to replicas whose retry is due. Reads only the due part of the due-time
    /// index. One key's failure does not stop the others: it is in the report. An error means
    /// the caller may not (`permission-denied`), the zone stopped (`not-durable`) or the index itself
    /// could not be read.
    pub fn run_due(&self) -> Result<DueReport> {
        let result = (|| {
            self.ask(Operation::RunDue, Target::Zone)?;
            let mut report = self.zone.lifecycle.run_due()?;
            report.replication =
                self.zone
                    .replicator
                    .deliver_outbox(false)
                    .unwrap_or_else(|error| SyncReport {
                        unreadable: vec![error],
                        ..SyncReport::default()
                    });
            Ok((report, None))
        })();
        self.audited(Operation::RunDue, None, result)
    }

    /// Delivers every waiting update to every replica now, on this thread, retries in backoff
    /// included, once the background deliveries queued before this call are done.
    pub fn sync(&self) -> Result<SyncReport> {
        let result = self
            .ask(Operation::Sync, Target::Zone)
            .and_then(|()| self.zone.replicator.deliver_outbox(true))
            .map(|report| (report, None));
        self.audited(Operation::Sync, None, result)
    }

    /// Waits until the deliveries that changes made before this call queued in the background
    /// are done (delivered, or failed and recorded as `last-failure`). It delivers nothing
    /// itself; a test uses it to see a change's first delivery.
    pub fn wait_for_deliveries(&self) {
        self.zone.replicator.wait_idle();
    }

    /// Applies an update from a key's origin zone to this zone's replica (creates, updates or
    /// destroys it), each revision at most once; a destroyed key never comes back. Durable
    /// before it answers. A [`Link`](super::Link) calls it on the receiving side. Errors:
    /// `name-conflict`, `conflict` (this zone is the key's origin), the store's.
    pub fn receive(&self, update: &ReplicaUpdate) -> Result<Ack> {
        let id = update.snapshot().id;
        let result = self
            .ask_key(Operation::ReceiveUpdate, id)
            .and_then(|()| self.zone.replicator.receive(update))
            .map(|ack| (ack, Some(ack.applied_seq)));
        self.audited(Operation::ReceiveUpdate, Some(id), result)
    }

    /// The receiving side of [`Link::request_rotation`](super::Link::request_rotation): a
    /// replica spent the budget of version `version` of origin key `id`. Makes a new version
    /// (automatic) unless one was made since, and delivers it before answering, since the
    /// asking zone waits. Errors: rotation's.
    pub fn retire_version(&self, id: KeyId, version: u32) -> Result<()> {
        let result = self
            .change(id, Command::RetireExhausted { version }, None)
            .map(|changed| {
                self.zone
                    .replicator
                    .deliver_now(id, &changed.record.replica_zones());
                ((), Some(changed.record.revision().seq))
            });
        self.audited(Operation::RetireVersion, Some(id), result)
    }

    /// Durably records in this zone's store the head of an audit chain: its last line `seq`
    /// and that line's MAC (what an audit log that ends earlier was cut off from). The head
    /// only moves forward: a `seq` below the one recorded is `bad-request`; the same `seq`
    /// again must come with the same MAC. Not an [`Operation`] and not itself audited: it is
    /// the audit log's own bookkeeping; a handle with a check may not make it (`permission-denied`).
    /// Errors: the store's, `not-durable`.
    pub fn record_audit_head(&self, head: AuditHead) -> Result<()> {
        if self.caller.is_restricted() {
            return Err(crate::Error::Forbidden {
                operation: "record-audit-head",
                id: None,
            });
        }
        let shared = &self.zone.shared;
        let _order = shared.lock_audit_head();
        if let Some((seq, mac)) = shared.store().audit_head()? {
            if head.seq < seq || (head.seq == seq && head.mac != mac) {
                return Err(crate::Error::BadRequest {
                    field: "audit-head",
                    reason: format!(
                        "line {} does not follow the recorded head, line {seq}",
                        head.seq
                    ),
                });
            }
            if head.seq == seq {
                return Ok(());
            }
        }
        shared.write(|store| store.put_audit_head(head.seq, &head.mac))
    }

    /// The head of the audit chain recorded in this zone's store, if any.
    pub fn audit_head(&self) -> Result<Option<AuditHead>> {
        Ok(self
            .zone
            .shared
            .store()
            .audit_head()?
            .map(|(seq, mac)| AuditHead { seq, mac }))
    }

    /// Whether the recorded audit head is the last line chained under the root key before a
    /// root-key rotation ([`rotate_root_key`](crate::rotate_root_key) marks it; the next head
    /// recorded clears the mark): an audit log may go on from that line under the new key.
    pub fn audit_head_rotated(&self) -> Result<bool> {
        self.zone.shared.store().audit_head_rotated()
    }

    /// Sends the event of a call that returned `result` (with the key's revision after it) to
    /// this handle's sinks, if any, and returns its answer.
    #[inline]
    fn audited<T>(
        &self,
        operation: Operation,
        key: Option<KeyId>,
        result: Result<(T, Option<u64>)>,
    ) -> Result<T> {
        if let Some(sink) = &self.audit {
            let revision = result.as_ref().map(|(_, revision)| *revision);
            self.emit(sink, operation, (key, None), revision);
        }
        result.map(|(answer, _)| answer)
    }

    /// [`Kms::audited`] for the cryptographic operations: no revision, `keys` the key and
    /// re-encrypt's destination.
    #[inline]
    fn audited_crypto<T>(
        &self,
        operation: Operation,
        keys: (Option<KeyId>, Option<KeyId>),
        result: Result<T>,
    ) -> Result<T> {
        if let Some(sink) = &self.audit {
            self.emit(sink, operation, keys, result.as_ref().map(|_| None));
        }
        result
    }

    /// Asks the caller's check, then applies `command` to key `id`; the event names the
    /// command's operation and the key's revision after it.
    fn change_audited<T>(
        &self,
        id: KeyId,
        command: Command,
        expected_seq: Option<u64>,
        answer: impl FnOnce(&Changed) -> T,
    ) -> Result<T> {
        let operation = Operation::of(&command);
        let result = self
            .change(id, command, expected_seq)
            .map(|changed| (answer(&changed), Some(changed.record.revision().seq)));
        self.audited(operation, Some(id), result)
    }

    /// Makes and sends one event.
    #[inline(never)]
    fn emit(
        &self,
        sink: &AuditSink,
        operation: Operation,
        (key, destination): (Option<KeyId>, Option<KeyId>),
        outcome: std::result::Result<Option<u64>, &crate::Error>,
    ) {
        let (outcome, revision) = match outcome {
            Ok(revision) => (OUTCOME_OK, revision),
            Err(error) => (error.code(), None),
        };
        sink.send(&AuditEvent {
            time: self.now(),
            zone: self.zone().to_owned(),
            operation,
            key,
            destination,
            outcome,
            revision,
            actor: self.caller.actor().map(str::to_owned),
        });
    }

    /// Asks the caller's check about `operation` on `target`.
    fn ask(&self, operation: Operation, target: Target<'_>) -> Result<()> {
        self.zone.admit(&self.caller, operation, target)
    }

    /// Asks the caller's check about `operation` on key `id` (a caller without a check is not
    /// asked: the crypto path pays one branch).
    #[inline]
    fn ask_key(&self, operation: Operation, id: KeyId) -> Result<()> {
        if !self.caller.is_restricted() {
            return Ok(());
        }
        self.zone.admit_key(&self.caller, operation, id)
    }

    /// Asks the caller's check, then applies `command` to key `id`.
    fn change(&self, id: KeyId, command: Command, expected_seq: Option<u64>) -> Result<Changed> {
        self.ask_key(Operation::of(&command), id)?;
        self.apply(id, command, expected_seq)
    }

    /// Applies `command` to key `id` (the caller's check already asked: the commands whose
    /// arguments are checked after it).
    fn apply(&self, id: KeyId, command: Command, expected_seq: Option<u64>) -> Result<Changed> {
        self.zone.lifecycle.change(id, command, expected_seq)
    }
}

impl fmt::Debug for Kms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kms")
            .field("zone", &self.zone())
            .field("caller", &self.caller)
            .field("limits", &self.limits())
            .finish_non_exhaustive()
    }
}

/// A weak reference to a zone, with the caller of the handle it was made from.
#[derive(Clone)]
pub(super) struct WeakKms {
    zone: std::sync::Weak<Zone>,
    caller: Caller,
    audit: Option<AuditSink>,
}

impl WeakKms {
    /// A handle on the zone, if it is still open.
    pub(super) fn upgrade(&self) -> Option<Kms> {
        let zone = self.zone.upgrade()?;
        Some(Kms {
            zone,
            caller: self.caller.clone(),
            audit: self.audit.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn kms_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<super::Kms>();
    }
}
