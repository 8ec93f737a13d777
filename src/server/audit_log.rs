//! The audit log file (cargo feature `server`): one JSON line per request, each chained to the
//! one before by a MAC under a key derived from the root key, synced in groups by one
//! background thread, its head recorded in every zone's store; and [`verify`], which checks a
//! log and names the first line changed, removed or reordered.
//!
//! A line is the JSON of its fields in a fixed order, `mac` last:
//!
//! ```text
//! {"seq":7,"time":"2026-01-01T00:00:00Z","zone":"ch-gva-2","operation":"encrypt","key":"0190…",
//!  "outcome":"ok","status":200,"actor":"EXOlocal0000","mac":"…"}
//! ```
//!
//! `mac` is the base64 of HMAC-SHA256, under the key [`Purpose::AuditChain`] derives, of two
//! length-framed parts ([`MacKey::tag`]): the previous line's MAC (32 zero bytes before line 1)
//! and the line's own bytes up to `,"mac"` with the closing `}`. The first line of each file
//! also names the previous line's MAC in `prev`, so a file can be checked on its own.
//! docs/design.md ("Audit") records the choices.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::core::KeyId;
use crate::crypto::{MacKey, Purpose, RootKey};
use crate::{AuditEvent, AuditHead, Kms, OUTCOME_OK};

/// Length of a chain MAC.
const MAC_LEN: usize = 32;
/// The MAC before line 1.
const GENESIS: [u8; MAC_LEN] = [0; MAC_LEN];
/// What precedes the MAC at the end of every line.
const MAC_FIELD: &[u8] = b",\"mac\":\"";
/// Length of a MAC in base64.
const MAC_B64_LEN: usize = 44;
/// Longest line [`AuditLog::open`] reads back from the end of a file.
const MAX_LINE: u64 = 64 * 1024;
/// The operation of the line written each time a log is opened.
pub const OPEN_OPERATION: &str = "audit-open";
/// The operation of the line written by [`AuditLog::reopen`].
pub const REOPEN_OPERATION: &str = "audit-reopen";

/// What one request did, as the audit log records it. Never a plaintext, ciphertext, context
/// or key material: no field could hold one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditLine {
    /// When the request was answered.
    pub time: Timestamp,
    /// The zone it was made to.
    pub zone: String,
    /// The API's `operationId` (or keylife's route name).
    pub operation: String,
    /// The key the request named, if any.
    pub key: Option<KeyId>,
    /// `ok`, or the code of the problem answered.
    pub outcome: String,
    /// The HTTP status answered.
    pub status: u16,
    /// The key's `revision.seq` after the request, when known.
    pub revision: Option<u64>,
    /// The API key that signed the request (for a refused authentication: the one it named,
    /// if any).
    pub actor: Option<String>,
    /// For a refused authentication, its reason class: `missing`, `malformed`, `unknown-key`,
    /// `bad-signature`, `expired`, `too-far-ahead`, `replayed`.
    pub auth: Option<String>,
}

impl AuditLine {
    /// The line of a request whose call made `event` and was answered with `status`.
    #[must_use]
    pub fn from_event(event: &AuditEvent, status: u16) -> AuditLine {
        AuditLine {
            time: event.time,
            zone: event.zone.clone(),
            operation: event.operation.name().to_owned(),
            key: event.key,
            outcome: event.outcome.to_owned(),
            status,
            revision: event.revision,
            actor: event.actor.clone(),
            auth: None,
        }
    }
}

/// A line as written, `mac` aside: the fields in their order in the file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    seq: u64,
    time: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    zone: Option<String>,
    operation: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<KeyId>,
    outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    revision: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    actor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auth: Option<String>,
    /// The previous line's MAC, in base64: on the first line of a file only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prev: Option<String>,
}

impl Record {
    fn of(seq: u64, line: AuditLine) -> Record {
        Record {
            seq,
            time: line.time,
            zone: Some(line.zone),
            operation: line.operation,
            key: line.key,
            outcome: line.outcome,
            status: Some(line.status),
            revision: line.revision,
            actor: line.actor,
            auth: line.auth,
            prev: None,
        }
    }

    /// The line the log writes for itself when it opens a file or reopens one.
    fn chain(seq: u64, operation: &str, time: Timestamp, prev: Option<&[u8; MAC_LEN]>) -> Record {
        Record {
            seq,
            time,
            zone: None,
            operation: operation.to_owned(),
            key: None,
            outcome: OUTCOME_OK.to_owned(),
            status: None,
            revision: None,
            actor: None,
            auth: None,
            prev: prev.map(|mac| BASE64.encode(mac)),
        }
    }

    /// The line's bytes with its MAC chained to `prev`, newline included, and the MAC.
    fn seal(&self, key: &MacKey, prev: &[u8; MAC_LEN]) -> Result<(Vec<u8>, [u8; MAC_LEN]), String> {
        let canonical = serde_json::to_vec(self).map_err(|error| error.to_string())?;
        let mac = key.tag(&[&prev[..], &canonical]);
        let mut line = canonical;
        line.pop(); // the closing brace
        line.extend_from_slice(MAC_FIELD);
        line.extend_from_slice(BASE64.encode(mac).as_bytes());
        line.extend_from_slice(b"\"}\n");
        Ok((line, mac))
    }
}

/// Why the audit log refused or failed. State changes must be refused while
/// [`AuditLog::is_healthy`] is false.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// Writing or syncing the file, or recording the head in a store, failed: the lines not
    /// yet synced are lost, and the log refuses new ones until [`AuditLog::reopen`].
    #[error("the audit log cannot be written: {detail}")]
    Failed {
        /// What failed.
        detail: String,
    },
    /// The log is closing.
    #[error("the audit log is closed")]
    Closed,
    /// The file cannot be opened, or it and the stores do not continue one chain.
    #[error("cannot open the audit log: {detail}")]
    Open {
        /// Why.
        detail: String,
    },
}

/// A line's place in the log, to wait for with [`AuditLog::synced`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    /// Bumped at each failure: the lines not synced are lost and their numbers given again.
    epoch: u64,
    seq: u64,
}

impl Ticket {
    /// The line's number (`seq`).
    #[must_use]
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

/// An audit log file being written: see the [module](self).
pub struct AuditLog {
    inner: Arc<Inner>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

struct Inner {
    key: MacKey,
    path: PathBuf,
    zones: Vec<Arc<Kms>>,
    state: Mutex<State>,
    /// Wakes the writer.
    work: Condvar,
    /// Wakes the blocking waiters.
    done: Condvar,
    /// Wakes the async waiters.
    notify: tokio::sync::Notify,
    /// The file; held by whoever writes to it (the writer for a group, `reopen`).
    io: Mutex<Io>,
    /// Groups synced so far.
    groups: std::sync::atomic::AtomicU64,
}

struct Io {
    file: File,
    /// The file's length after its last synced line.
    synced_len: u64,
    /// The file was created (or was empty): its directory entry must be synced once.
    new: bool,
}

struct State {
    /// The last line appended.
    head: (u64, [u8; MAC_LEN]),
    /// The last line synced, its head recorded in every store.
    synced: (u64, [u8; MAC_LEN]),
    /// Lines appended and not yet taken by a writer.
    queue: Vec<u8>,
    epoch: u64,
    /// The last synced line of each past epoch.
    epoch_ends: Vec<u64>,
    failed: Option<String>,
    closing: bool,
}

/// A `Mutex` that guards state completed before every unlock: a panic elsewhere leaves it
/// consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl State {
    /// A write failed: the lines not synced are lost; new ones are refused until reopen.
    fn fail(&mut self, detail: String) {
        self.epoch_ends.push(self.synced.0);
        self.epoch += 1;
        self.queue.clear();
        self.head = self.synced;
        self.failed = Some(detail);
    }

    /// The outcome of `ticket`, if known.
    fn outcome(&self, ticket: Ticket) -> Option<Result<(), AuditError>> {
        let failed = || AuditError::Failed {
            detail: self
                .failed
                .clone()
                .unwrap_or_else(|| "an earlier write failed before this line was synced".into()),
        };
        if ticket.epoch < self.epoch {
            let end = self.epoch_ends.get(usize::try_from(ticket.epoch).ok()?)?;
            return Some(if ticket.seq <= *end {
                Ok(())
            } else {
                Err(failed())
            });
        }
        if self.synced.0 >= ticket.seq {
            Some(Ok(()))
        } else if self.closing && self.queue.is_empty() && self.head.0 < ticket.seq {
            Some(Err(AuditError::Closed))
        } else {
            None
        }
    }
}

impl AuditLog {
    /// Opens (or creates, mode 0600) the audit log `path` for the `zones` of this process,
    /// with the chain key derived from `root`, and starts its writer thread. It continues the
    /// chain: from the file's last line if it has one (checked against the line before it),
    /// else from the head recorded in the stores (a new file after the last one was moved
    /// away), else from the start. A file that ends before the head a store recorded was cut
    /// off, and is refused; so is one whose last line does not verify, unless it is the head
    /// the stores recorded (after a root-key rotation, the last line before it was chained
    /// under the old root key: the chain goes on from it under the new one). A torn last line
    /// (written, never synced: a crash) is cut away. Returns once its first line, an
    /// `audit-open` line, is synced.
    pub fn open(
        path: impl AsRef<Path>,
        root: &RootKey,
        zones: Vec<Arc<Kms>>,
    ) -> Result<Arc<AuditLog>, AuditError> {
        let key = MacKey::derive(root, Purpose::AuditChain);
        let path = path.as_ref().to_path_buf();
        let open_error = |detail: String| AuditError::Open { detail };
        let mut recorded: Option<(String, AuditHead)> = None;
        for kms in &zones {
            let head = kms.audit_head().map_err(|error| {
                open_error(format!("the audit head of zone {}: {error}", kms.zone()))
            })?;
            match (head, &recorded) {
                (None, _) => {}
                (Some(head), Some((_, known))) if head.seq < known.seq => {}
                (Some(head), Some((zone, known))) if head.seq == known.seq => {
                    if head.mac != known.mac {
                        return Err(open_error(format!(
                            "zones {zone} and {} recorded different lines {} as the audit \
                             head: they were not audited by one log",
                            kms.zone(),
                            head.seq
                        )));
                    }
                }
                (Some(head), _) => recorded = Some((kms.zone().to_owned(), head)),
            }
        }
        let (file, tail, _) = open_file(&path, &key, None)
            .map_err(|detail| open_error(format!("{}: {detail}", path.display())))?;
        let synced_len = tail.len;
        if !tail.verified {
            continue_across_rotation(&path, tail.last, recorded.as_ref(), &zones)
                .map_err(open_error)?;
        }
        let (start, new) = match (tail.last, recorded) {
            (Some(last), Some((zone, head))) if last.0 < head.seq => {
                return Err(open_error(format!(
                    "{} ends at line {} but zone {zone} recorded line {} as its head: it was \
                     cut off (keylife audit verify names what is missing; move the file away \
                     to start a new one that continues from the recorded head)",
                    path.display(),
                    last.0,
                    head.seq
                )));
            }
            (Some(last), Some((zone, head))) if last.0 == head.seq && last.1 != head.mac => {
                return Err(open_error(format!(
                    "line {} of {} is not the line zone {zone} recorded as its head",
                    last.0,
                    path.display()
                )));
            }
            (Some(last), _) => (last, false),
            (None, Some((_, head))) => ((head.seq, head.mac), true),
            (None, None) => ((0, GENESIS), true),
        };
        let inner = Arc::new(Inner {
            key,
            path,
            zones,
            state: Mutex::new(State {
                head: start,
                synced: start,
                queue: Vec::new(),
                epoch: 0,
                epoch_ends: Vec::new(),
                failed: None,
                closing: false,
            }),
            work: Condvar::new(),
            done: Condvar::new(),
            notify: tokio::sync::Notify::new(),
            io: Mutex::new(Io {
                file,
                synced_len,
                new,
            }),
            groups: std::sync::atomic::AtomicU64::new(0),
        });
        let ticket = inner
            .append_record(|seq, prev| {
                let record =
                    Record::chain(seq, OPEN_OPERATION, Timestamp::now(), new.then_some(prev));
                Ok(record)
            })
            .map_err(|error| open_error(error.to_string()))?;
        let thread = {
            let inner = Arc::clone(&inner);
            std::thread::Builder::new()
                .name("keylife-audit".to_owned())
                .spawn(move || inner.run())
                .map_err(|error| open_error(format!("cannot start the writer thread: {error}")))?
        };
        let log = Arc::new(AuditLog {
            inner,
            writer: Mutex::new(Some(thread)),
        });
        log.wait_synced(ticket)?;
        Ok(log)
    }

    /// Appends `line` to the chain and hands it to the writer: no I/O, a MAC and a copy under
    /// a lock. [`AuditLog::synced`] tells when it is on disk. Refused while the log is not
    /// healthy.
    pub fn append(&self, line: AuditLine) -> Result<Ticket, AuditError> {
        self.inner
            .append_record(move |seq, _| Ok(Record::of(seq, line)))
    }

    /// Resolves once the line of `ticket` is synced (`fdatasync`) and the head it is part of
    /// recorded in every zone's store; an error if its group failed (the line is lost).
    pub async fn synced(&self, ticket: Ticket) -> Result<(), AuditError> {
        loop {
            let notified = self.inner.notify.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if let Some(outcome) = lock(&self.inner.state).outcome(ticket) {
                return outcome;
            }
            notified.await;
        }
    }

    /// [`AuditLog::synced`], blocking the thread.
    pub fn wait_synced(&self, ticket: Ticket) -> Result<(), AuditError> {
        let mut state = lock(&self.inner.state);
        loop {
            if let Some(outcome) = state.outcome(ticket) {
                return outcome;
            }
            state = self
                .inner
                .done
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Whether lines are accepted: false after a failure (until a successful
    /// [`AuditLog::reopen`]) and once closing. State changes must be refused while false.
    #[must_use]
    pub fn is_healthy(&self) -> bool {
        let state = lock(&self.inner.state);
        state.failed.is_none() && !state.closing
    }

    /// The last line appended: its number.
    #[must_use]
    pub fn head(&self) -> u64 {
        lock(&self.inner.state).head.0
    }

    /// Reopens the file at the log's path (after logrotate moved it away, on SIGHUP): the lines
    /// appended before are written to the old file first; the chain goes on in the file now at
    /// the path with an `audit-reopen` line, which names the previous line's MAC (`prev`) when
    /// it starts the file. The same file still at the path is continued; a failed log is cut
    /// back to its last synced line. A file at the path that is neither empty nor the one being
    /// written is refused. Clears a failure once the `audit-reopen` line is synced.
    pub fn reopen(&self) -> Result<(), AuditError> {
        self.inner.reopen()
    }

    /// The groups of lines written and synced so far (one `fdatasync` of the file each).
    #[must_use]
    pub fn groups(&self) -> u64 {
        self.inner.groups.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The path of the log.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.inner.path
    }
}

impl fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = lock(&self.inner.state);
        f.debug_struct("AuditLog")
            .field("path", &self.inner.path)
            .field("head", &state.head.0)
            .field("synced", &state.synced.0)
            .field("failed", &state.failed)
            .finish_non_exhaustive()
    }
}

impl Drop for AuditLog {
    /// Writes and syncs what was appended, then stops the writer.
    fn drop(&mut self) {
        lock(&self.inner.state).closing = true;
        self.inner.work.notify_all();
        if let Some(thread) = lock(&self.writer).take() {
            let _ = thread.join();
        }
        self.inner.done.notify_all();
        self.inner.notify.notify_waiters();
    }
}

impl Inner {
    /// Appends the record `make` builds for the next line number (given the previous MAC).
    fn append_record(
        &self,
        make: impl FnOnce(u64, &[u8; MAC_LEN]) -> Result<Record, AuditError>,
    ) -> Result<Ticket, AuditError> {
        let mut state = lock(&self.state);
        if let Some(detail) = &state.failed {
            return Err(AuditError::Failed {
                detail: detail.clone(),
            });
        }
        if state.closing {
            return Err(AuditError::Closed);
        }
        let seq = state.head.0 + 1;
        let record = make(seq, &state.head.1)?;
        let (bytes, mac) = record
            .seal(&self.key, &state.head.1)
            .map_err(|detail| AuditError::Failed { detail })?;
        state.queue.extend_from_slice(&bytes);
        state.head = (seq, mac);
        let ticket = Ticket {
            epoch: state.epoch,
            seq,
        };
        drop(state);
        self.work.notify_one();
        Ok(ticket)
    }

    /// The writer thread: one group at a time, every line queued at its start.
    fn run(&self) {
        loop {
            {
                let mut state = lock(&self.state);
                while state.queue.is_empty() && !state.closing {
                    state = self
                        .work
                        .wait(state)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                if state.queue.is_empty() {
                    return;
                }
            }
            let mut io = lock(&self.io);
            self.write_queued(&mut io);
        }
    }

    /// Takes the queued lines, writes them, syncs, records the head; wakes the waiters.
    fn write_queued(&self, io: &mut Io) {
        let (bytes, last, epoch) = {
            let mut state = lock(&self.state);
            (std::mem::take(&mut state.queue), state.head, state.epoch)
        };
        if bytes.is_empty() {
            return;
        }
        let result = self.write_group(io, &bytes, last);
        let mut state = lock(&self.state);
        if state.epoch == epoch {
            match result {
                Ok(()) => state.synced = last,
                Err(detail) => state.fail(detail),
            }
        }
        drop(state);
        self.wake();
    }

    fn wake(&self) {
        self.done.notify_all();
        self.notify.notify_waiters();
    }

    /// Writes `bytes` (lines up to `last`) to the file, syncs it, and records `last` in every
    /// zone's store.
    fn write_group(
        &self,
        io: &mut Io,
        bytes: &[u8],
        last: (u64, [u8; MAC_LEN]),
    ) -> Result<(), String> {
        let path = self.path.display();
        io.file
            .write_all(bytes)
            .map_err(|error| format!("cannot write {path}: {error}"))?;
        io.file
            .sync_data()
            .map_err(|error| format!("cannot sync {path}: {error}"))?;
        self.groups
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if io.new {
            if let Some(dir) = self.path.parent() {
                let dir = if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                };
                File::open(dir)
                    .and_then(|dir| dir.sync_all())
                    .map_err(|error| format!("cannot sync the directory of {path}: {error}"))?;
            }
            io.new = false;
        }
        let head = AuditHead {
            seq: last.0,
            mac: last.1,
        };
        for kms in &self.zones {
            kms.record_audit_head(head).map_err(|error| {
                format!(
                    "cannot record the audit head in zone {}: {error}",
                    kms.zone()
                )
            })?;
        }
        // Only now: a group whose head was not recorded is cut away by a reopen.
        io.synced_len += bytes.len() as u64;
        Ok(())
    }

    fn reopen(&self) -> Result<(), AuditError> {
        let mut io = lock(&self.io);
        // What was appended so far goes to the file being written, until none is left.
        loop {
            let empty = lock(&self.state).queue.is_empty();
            if empty {
                break;
            }
            self.write_queued(&mut io);
        }
        let (file, tail, same) =
            open_file(&self.path, &self.key, Some(&io.file)).map_err(|detail| {
                AuditError::Open {
                    detail: format!("{}: {detail}", self.path.display()),
                }
            })?;
        let failed = lock(&self.state).failed.is_some();
        if same {
            if failed {
                // Cut back to the last synced line: a torn group is not left in the chain.
                io.file
                    .set_len(io.synced_len)
                    .map_err(|error| AuditError::Failed {
                        detail: format!("cannot cut {} back: {error}", self.path.display()),
                    })?;
            } else {
                io.synced_len = tail.len;
            }
        } else if tail.len > 0 {
            return Err(AuditError::Open {
                detail: format!(
                    "{} is neither empty nor the file being written",
                    self.path.display()
                ),
            });
        } else {
            io.file = file;
            io.synced_len = 0;
            io.new = true;
        }
        let starts_file = io.synced_len == 0;
        let (bytes, last, epoch) = {
            let mut state = lock(&self.state);
            state.failed = None;
            let seq = state.head.0 + 1;
            let prev = state.head.1;
            let record = Record::chain(
                seq,
                REOPEN_OPERATION,
                Timestamp::now(),
                starts_file.then_some(&prev),
            );
            let (bytes, mac) = record
                .seal(&self.key, &prev)
                .map_err(|detail| AuditError::Failed { detail })?;
            state.head = (seq, mac);
            (bytes, (seq, mac), state.epoch)
        };
        let result = self.write_group(&mut io, &bytes, last);
        let mut state = lock(&self.state);
        let outcome = if state.epoch != epoch {
            Err(AuditError::Failed {
                detail: "a write failed while reopening".to_owned(),
            })
        } else {
            match result {
                Ok(()) => {
                    state.synced = last;
                    Ok(())
                }
                Err(detail) => {
                    state.fail(detail.clone());
                    Err(AuditError::Failed { detail })
                }
            }
        };
        drop(state);
        drop(io);
        self.wake();
        self.work.notify_one();
        outcome
    }
}

/// Accepts a file whose last line `last` does not verify under the chain key only when it is
/// the head the stores `recorded` (authenticated under the root key in force) and every zone
/// that recorded it has it marked by a root-key rotation: the file was written under the root
/// key before the rotation, and the chain goes on from that line under the new key (`keylife
/// audit verify` checks the lines before with the old key).
fn continue_across_rotation(
    path: &Path,
    last: Option<(u64, [u8; MAC_LEN])>,
    recorded: Option<&(String, AuditHead)>,
    zones: &[Arc<Kms>],
) -> Result<(), String> {
    let marked = || {
        zones.iter().all(|kms| match kms.audit_head() {
            Ok(Some(head)) if Some(head.seq) == last.map(|l| l.0) => {
                kms.audit_head_rotated().unwrap_or(false)
            }
            Ok(_) => true,
            Err(_) => false,
        })
    };
    match (last, recorded) {
        (Some(last), Some((_, head))) if last == (head.seq, head.mac) && marked() => Ok(()),
        (last, _) => Err(format!(
            "{}: its last line{} does not verify: the file was changed, or it belongs to \
             another root key (keylife audit verify names the first bad line; after a \
             root-key rotation, the file may end only at the head the stores recorded)",
            path.display(),
            last.map(|(seq, _)| format!(" (line {seq})"))
                .unwrap_or_default()
        )),
    }
}

/// The end of a log file as [`open_file`] found it.
struct Tail {
    /// Its length, a torn last line cut away.
    len: u64,
    /// Its last line's number and MAC.
    last: Option<(u64, [u8; MAC_LEN])>,
    /// Whether the last line's MAC verifies under the chain key (it may be a line of the
    /// root key before a rotation: see [`AuditLog::open`]).
    verified: bool,
}

/// Opens `path` for appending (created with mode 0600). When it is `current` (the file being
/// written), returns it as it is, with `true`. Else locks it (one writer per file), cuts a
/// torn last line away, and reads its last line, checked against the line before it (or its
/// `prev`).
fn open_file(
    path: &Path,
    key: &MacKey,
    current: Option<&File>,
) -> Result<(File, Tail, bool), String> {
    let mut options = OpenOptions::new();
    options.read(true).append(true).create(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(path).map_err(|error| error.to_string())?;
    let len = file.metadata().map_err(|error| error.to_string())?.len();
    if current.is_some_and(|current| same_file(current, &file)) {
        return Ok((
            file,
            Tail {
                len,
                last: None,
                verified: true,
            },
            true,
        ));
    }
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err("another audit log is writing it (the file is locked)".to_owned());
        }
        Err(std::fs::TryLockError::Error(error)) => {
            return Err(format!("cannot lock it: {error}"));
        }
    }
    let (file, tail) = read_tail(file, len, key)?;
    Ok((file, tail, false))
}

/// Cuts a torn last line of `file` (`len` bytes) away and reads its last line, checked.
fn read_tail(mut file: File, len: u64, key: &MacKey) -> Result<(File, Tail), String> {
    if len == 0 {
        return Ok((
            file,
            Tail {
                len,
                last: None,
                verified: true,
            },
        ));
    }
    let start = len.saturating_sub(2 * MAX_LINE);
    let mut buffer = Vec::new();
    file.seek(SeekFrom::Start(start))
        .and_then(|_| file.read_to_end(&mut buffer))
        .map_err(|error| error.to_string())?;
    // A torn last line (no newline) was never synced: cut it away.
    let complete = buffer
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    if complete < buffer.len() {
        if complete == 0 && start > 0 {
            return Err("its last line is longer than 64 KiB".to_owned());
        }
        let kept = start + complete as u64;
        file.set_len(kept).map_err(|error| error.to_string())?;
        buffer.truncate(complete);
        if kept == 0 {
            return Ok((
                file,
                Tail {
                    len: 0,
                    last: None,
                    verified: true,
                },
            ));
        }
    }
    let len = start + buffer.len() as u64;
    let body = &buffer[..buffer.len() - 1];
    let (before, last) = match body.iter().rposition(|&b| b == b'\n') {
        Some(i) => (Some(&body[..i]), &body[i + 1..]),
        None if start == 0 => (None, body),
        None => return Err("its last line is longer than 64 KiB".to_owned()),
    };
    let last = parse_line(last).map_err(|problem| format!("its last line {problem}"))?;
    let prev = match (&last.prev, before) {
        (Some(prev), _) => *prev,
        (None, Some(before)) => {
            let line = before.rsplit(|&b| b == b'\n').next().unwrap_or(before);
            parse_line(line)
                .map_err(|problem| format!("its line before the last {problem}"))?
                .mac
        }
        (None, None) => {
            return Err("its only line names no previous line (`prev`)".to_owned());
        }
    };
    let verified = key.verify(&[&prev[..], &last.canonical], &last.mac);
    Ok((
        file,
        Tail {
            len,
            last: Some((last.record.seq, last.mac)),
            verified,
        },
    ))
}

#[cfg(unix)]
fn same_file(a: &File, b: &File) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (a.metadata(), b.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_: &File, b: &File) -> bool {
    // Without inode numbers: a file with lines at the path is taken as the one being written.
    b.metadata().map(|m| m.len() > 0).unwrap_or(false)
}

/// A line read back.
struct Parsed {
    record: Record,
    /// The bytes the MAC covers.
    canonical: Vec<u8>,
    mac: [u8; MAC_LEN],
    /// `prev`, decoded.
    prev: Option<[u8; MAC_LEN]>,
}

/// Splits `line` (without its newline) into its canonical bytes and MAC and parses it. The
/// error says what is wrong, to follow "line N ".
fn parse_line(line: &[u8]) -> Result<Parsed, String> {
    let tail_len = MAC_FIELD.len() + MAC_B64_LEN + 2;
    let malformed = |what: &str| format!("is malformed: {what}");
    if line.len() < tail_len || !line.ends_with(b"\"}") {
        return Err(malformed("it does not end with its `mac`"));
    }
    let split = line.len() - tail_len;
    if &line[split..split + MAC_FIELD.len()] != MAC_FIELD {
        return Err(malformed("it does not end with its `mac`"));
    }
    let mac_b64 = &line[split + MAC_FIELD.len()..line.len() - 2];
    let mac: [u8; MAC_LEN] = BASE64
        .decode(mac_b64)
        .ok()
        .and_then(|mac| mac.try_into().ok())
        .ok_or_else(|| malformed("its `mac` is not the base64 of 32 bytes"))?;
    let mut canonical = line[..split].to_vec();
    canonical.push(b'}');
    let record: Record =
        serde_json::from_slice(&canonical).map_err(|error| malformed(&error.to_string()))?;
    let prev = match &record.prev {
        None => None,
        Some(prev) => Some(
            BASE64
                .decode(prev)
                .ok()
                .and_then(|prev| <[u8; MAC_LEN]>::try_from(prev).ok())
                .ok_or_else(|| malformed("its `prev` is not the base64 of 32 bytes"))?,
        ),
    };
    Ok(Parsed {
        record,
        canonical,
        mac,
        prev,
    })
}

/// What is wrong with a line, for [`VerifyError::Line`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Damage {
    /// Its bytes are not those its MAC was made over.
    Changed,
    /// Lines before it are missing.
    Removed,
    /// It is not in its place.
    Reordered,
    /// It is not a line of the format (or not complete).
    Malformed,
}

/// Why [`verify`] refused a log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// A line is wrong: the first one found.
    #[error("{file} line {line}: {detail}")]
    Line {
        /// The file.
        file: String,
        /// The line number in the file, from 1.
        line: u64,
        /// What is wrong.
        damage: Damage,
        /// Said in words.
        detail: String,
    },
    /// The log ends before the head a store recorded.
    #[error(
        "the log ends at line {ends} but the store of zone {zone} recorded line {recorded} (cut off)"
    )]
    CutOff {
        /// The zone whose store recorded the head.
        zone: String,
        /// The last line of the log (`seq`).
        ends: u64,
        /// The line the store recorded.
        recorded: u64,
    },
    /// The line a store recorded as its head is not the one in the log.
    #[error(
        "line {seq} of the log is not the line the store of zone {zone} recorded as its head \
         (the log was replaced or rewritten)"
    )]
    NotTheHead {
        /// The zone.
        zone: String,
        /// The line.
        seq: u64,
    },
    /// A file cannot be read, or holds no line.
    #[error("{file}: {detail}")]
    Unreadable {
        /// The file.
        file: String,
        /// Why.
        detail: String,
    },
}

/// What [`verify`] found in a good log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The number (`seq`) of the first line.
    pub first: u64,
    /// The number of the last line.
    pub last: u64,
    /// The lines read.
    pub lines: u64,
    /// Each store's recorded head checked: its zone and line.
    pub heads: Vec<(String, u64)>,
    /// Where the chain moved to a later root key (after a root-key rotation), in order: the
    /// line (`seq`) from which it was in force, and its position among the keys given to
    /// [`verify_across`] (from 0). Empty when one key made the whole log.
    pub key_changes: Vec<(u64, usize)>,
}

/// Checks the audit log `files` (in order: a rotated file before the one that continues it)
/// with the chain key derived from `root`: every line is whole, numbered one more than the one
/// before, and its MAC verifies over the previous line's MAC and its own bytes; the first line
/// of the first file starts the chain (line 1, or a `prev` naming the line before). Then each
/// of `heads` (a zone and the head its store recorded) must be a line of the log, with the
/// same MAC. The error names the first bad line.
pub fn verify(
    root: &RootKey,
    files: &[PathBuf],
    heads: &[(String, AuditHead)],
) -> Result<Verified, VerifyError> {
    verify_across(std::slice::from_ref(root), files, heads)
}

/// [`verify`] of a log that spans root-key rotations, with the root keys it was written under,
/// oldest first. Each line must verify under the key in force: the first line read under any
/// of them, every later line under the same key as the line before, or under a later key
/// (never an earlier one) at an `audit-open` line, the first line a server writes when it
/// starts, as it does under its new key after a rotation. [`Verified::key_changes`] says
/// where the chain moved to a later key.
pub fn verify_across(
    roots: &[RootKey],
    files: &[PathBuf],
    heads: &[(String, AuditHead)],
) -> Result<Verified, VerifyError> {
    let keys: Vec<MacKey> = roots
        .iter()
        .map(|root| MacKey::derive(root, Purpose::AuditChain))
        .collect();
    let mut in_force: Option<usize> = None;
    let mut key_changes = Vec::new();
    let mut chain: Option<(u64, [u8; MAC_LEN])> = None;
    let mut first = None;
    let mut lines = 0;
    let mut seen_heads: Vec<Option<[u8; MAC_LEN]>> = vec![None; heads.len()];
    for path in files {
        let name = path.display().to_string();
        let unreadable = |detail: String| VerifyError::Unreadable {
            file: name.clone(),
            detail,
        };
        let file = File::open(path).map_err(|error| unreadable(error.to_string()))?;
        let mut reader = BufReader::new(file);
        let mut buffer = Vec::new();
        let mut number = 0u64;
        loop {
            buffer.clear();
            let read = reader
                .read_until(b'\n', &mut buffer)
                .map_err(|error| unreadable(error.to_string()))?;
            if read == 0 {
                break;
            }
            number += 1;
            let bad = |damage: Damage, detail: String| VerifyError::Line {
                file: name.clone(),
                line: number,
                damage,
                detail,
            };
            if buffer.last() != Some(&b'\n') {
                return Err(bad(
                    Damage::Malformed,
                    "is incomplete (no newline: cut off mid-line)".to_owned(),
                ));
            }
            let parsed = parse_line(&buffer[..buffer.len() - 1])
                .map_err(|detail| bad(Damage::Malformed, detail))?;
            let seq = parsed.record.seq;
            let prev = match (chain, parsed.prev) {
                (None, None) => {
                    return Err(bad(
                        Damage::Removed,
                        format!(
                            "(line {seq} of the log) starts the file but names no previous \
                             line: the lines before it were removed"
                        ),
                    ));
                }
                (None, Some(prev)) => {
                    if seq == 1 && prev != GENESIS {
                        return Err(bad(
                            Damage::Changed,
                            "is line 1 but names a previous line".to_owned(),
                        ));
                    }
                    first = Some(seq);
                    prev
                }
                (Some((last, mac)), named) => {
                    let expected = last + 1;
                    if seq != expected {
                        return Err(out_of_place(path, number, seq, expected, &bad));
                    }
                    if named.is_some_and(|named| named != mac) {
                        return Err(bad(
                            Damage::Changed,
                            format!(
                                "(line {seq} of the log) names another previous line than \
                                 the one before it"
                            ),
                        ));
                    }
                    mac
                }
            };
            let from = in_force.unwrap_or(0);
            let under = (from..keys.len())
                .find(|&k| keys[k].verify(&[&prev[..], &parsed.canonical], &parsed.mac));
            match (in_force, under) {
                (_, None) => {
                    return Err(bad(
                        Damage::Changed,
                        format!("(line {seq} of the log) was changed: its MAC does not verify"),
                    ));
                }
                (Some(current), Some(next)) if next > current => {
                    if parsed.record.operation != OPEN_OPERATION {
                        return Err(bad(
                            Damage::Changed,
                            format!(
                                "(line {seq} of the log) verifies only under a later root key \
                                 but is not an {OPEN_OPERATION} line (the chain moves to a new \
                                 root key only when the server starts): it was changed"
                            ),
                        ));
                    }
                    key_changes.push((seq, next));
                    in_force = Some(next);
                }
                (_, Some(next)) => in_force = Some(next),
            }
            for (index, (_, head)) in heads.iter().enumerate() {
                if head.seq == seq {
                    seen_heads[index] = Some(parsed.mac);
                }
            }
            chain = Some((seq, parsed.mac));
            lines += 1;
        }
    }
    let (Some((last, _)), Some(first)) = (chain, first) else {
        return Err(VerifyError::Unreadable {
            file: files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            detail: "holds no line".to_owned(),
        });
    };
    let mut checked = Vec::new();
    for ((zone, head), seen) in heads.iter().zip(seen_heads) {
        if head.seq > last {
            return Err(VerifyError::CutOff {
                zone: zone.clone(),
                ends: last,
                recorded: head.seq,
            });
        }
        // A head before the first line read is in an earlier file: not checked.
        if head.seq >= first {
            if seen != Some(head.mac) {
                return Err(VerifyError::NotTheHead {
                    zone: zone.clone(),
                    seq: head.seq,
                });
            }
            checked.push((zone.clone(), head.seq));
        }
    }
    Ok(Verified {
        first,
        last,
        lines,
        heads: checked,
        key_changes,
    })
}

/// The error of line `number` of `path`, numbered `seq` where `expected` was due: a later line
/// of the file holding `expected` means reordered lines, none means removed ones.
fn out_of_place(
    path: &Path,
    number: u64,
    seq: u64,
    expected: u64,
    bad: &dyn Fn(Damage, String) -> VerifyError,
) -> VerifyError {
    if seq < expected {
        return bad(
            Damage::Reordered,
            format!(
                "is line {seq} of the log, after line {}: reordered or repeated",
                expected - 1
            ),
        );
    }
    let later = File::open(path).ok().and_then(|file| {
        BufReader::new(file)
            .split(b'\n')
            .enumerate()
            .skip(usize::try_from(number).unwrap_or(usize::MAX))
            .find_map(|(index, line)| {
                let parsed = parse_line(&line.ok()?).ok()?;
                (parsed.record.seq == expected).then_some(index + 1)
            })
    });
    match later {
        Some(at) => bad(
            Damage::Reordered,
            format!(
                "is line {seq} of the log where line {expected} was due; line {expected} is at line {at} of the file (reordered)"
            ),
        ),
        None => bad(
            Damage::Removed,
            if seq == expected + 1 {
                format!("is line {seq} of the log: line {expected} was removed")
            } else {
                format!(
                    "is line {seq} of the log: lines {expected} to {} were removed",
                    seq - 1
                )
            },
        ),
    }
}
