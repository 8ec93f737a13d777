//! Backups of a zone and restores from them (docs/design.md, "Backup and restore"): the
//! summaries, and the building of a new store from a backup file.

use std::fmt;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;

use super::clock::{Clock, SystemClock};
use crate::core::restore::{RESTORE_MARGIN, deleted_since, restored};
use crate::core::{Error, KeyId, Role};
use crate::crypto::{MacKey, Purpose, RootKey, RootSealer, fill_from_os};
use crate::store::backup::{Backup, BackupEntry, BackupHeader, read_backup, read_header};
use crate::store::codec::{decode_record_sealed, encode_record_sealed, keys_entry_id, zone_key};
use crate::store::{AuthenticatedBackend, Backend, Engine, STORE_FORMAT_V2, Store, Table, Write};

/// Meta entries a restore does not copy: the target store writes its own.
const OWN_META: [&[u8]; 1] = [b"engine"];
/// Writes per commit while a restore builds its store.
const RESTORE_BATCH: usize = 4096;

/// What a backup file holds, as [`Kms::backup`](crate::Kms::backup) wrote it or
/// [`Kms::inspect_backup`](crate::Kms::inspect_backup) verified it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSummary {
    /// The zone backed up.
    pub zone: String,
    /// The engine the backup was taken from.
    pub engine: String,
    /// The commit sequence the image is of.
    pub commit_seq: u64,
    /// When the image was taken (the zone's clock).
    pub taken_at: Timestamp,
    /// The zone's keys, replicas included.
    pub keys: u64,
    /// Entries of the store in the file.
    pub entries: u64,
    /// Size of the file, in bytes.
    pub bytes: u64,
    /// How long the zone's writes waited while the image was read (zero for a summary of a
    /// file read back).
    pub writes_paused: Duration,
}

impl BackupSummary {
    pub(super) fn new(header: &BackupHeader, bytes: u64, writes_paused: Duration) -> Self {
        BackupSummary {
            zone: header.zone.clone(),
            engine: header.engine.clone(),
            commit_seq: header.seq,
            taken_at: header.taken_at,
            keys: header.keys,
            entries: header.entries,
            bytes,
            writes_paused,
        }
    }
}

impl fmt::Display for BackupSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "zone {}, {} keys ({} entries), commit {} of a {} store, taken at {}, {} bytes",
            self.zone,
            self.keys,
            self.entries,
            self.commit_seq,
            self.engine,
            self.taken_at,
            self.bytes
        )
    }
}

/// How [`Kms::restore`](crate::Kms::restore) builds its store.
#[derive(Clone)]
pub struct RestoreOptions {
    /// The engine of the new store; `None`: sled. Any engine restores a backup of any other:
    /// a restore is also how a store moves from one engine to another.
    pub engine: Option<Engine>,
    /// Where the time comes from (it tells which pending deletions passed since the backup).
    pub clock: Arc<dyn Clock>,
}

impl Default for RestoreOptions {
    fn default() -> RestoreOptions {
        RestoreOptions {
            engine: None,
            clock: Arc::new(SystemClock),
        }
    }
}

impl fmt::Debug for RestoreOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RestoreOptions")
            .field("engine", &self.engine)
            .field("clock", &self.clock)
            .finish()
    }
}

impl RestoreOptions {
    /// Builds the new store with `engine`.
    #[must_use]
    pub fn engine(mut self, engine: Engine) -> RestoreOptions {
        self.engine = Some(engine);
        self
    }

    /// Uses `clock` (for example a [`ManualClock`](crate::ManualClock)).
    #[must_use]
    pub fn clock(mut self, clock: impl Clock + 'static) -> RestoreOptions {
        self.clock = Arc::new(clock);
        self
    }
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    /// The backup restored.
    pub backup: BackupSummary,
    /// The new store's engine.
    pub engine: Engine,
    /// The zone's own keys, each moved [`RESTORE_MARGIN`] revisions up.
    pub origin_keys: u64,
    /// Replicas marked as owed a delivery: every replica of an origin key learns its new
    /// revision.
    pub replicas_owed: u64,
    /// How far each origin key's revision moved up.
    pub revision_margin: u64,
    /// Keys pending deletion in the backup whose deletion date has passed: they were destroyed
    /// after the backup, come back as they were, and are destroyed again at the zone's first
    /// due run (or first use).
    pub deleted_since_backup: Vec<KeyId>,
    /// Time taken, from reading the file to the new store checked.
    pub elapsed: Duration,
}

/// Reads and authenticates the backup in `from` under `root`: a root key other than the
/// backup's is [`Error::WrongRootKey`]; a file changed anywhere, cut short or not a backup is
/// [`Error::Corrupt`] on record `backup file`.
pub(super) fn read(from: &mut dyn Read, root: &RootKey) -> Result<(Backup, u64), Error> {
    let mut bytes = Vec::new();
    from.read_to_end(&mut bytes)
        .map_err(|error| Error::Storage {
            detail: format!("cannot read the backup: {error}"),
        })?;
    // The check value tells another root key from a damaged file: under the backup's own key
    // it opens, and a damaged file fails its MAC.
    let check_opens = read_header(&bytes)
        .is_ok_and(|header| RootSealer::new(root).verify_check_value(&header.root_check));
    let backup = match read_backup(&bytes, &MacKey::derive(root, Purpose::BackupMac)) {
        Err(_) if !check_opens => return Err(Error::WrongRootKey),
        read => read?,
    };
    if backup.header.store_format != STORE_FORMAT_V2 {
        return Err(Error::Corrupt {
            record: "backup file".to_owned(),
            detail: format!(
                "it holds a store of format {}; this version restores format {STORE_FORMAT_V2}",
                backup.header.store_format
            ),
        });
    }
    Ok((backup, bytes.len() as u64))
}

/// Builds a new store in `path` from `from` (see [`Kms::restore`](crate::Kms::restore)).
pub(super) fn restore(
    from: &mut dyn Read,
    path: &Path,
    root: &RootKey,
    options: &RestoreOptions,
) -> Result<RestoreReport, Error> {
    let started = Instant::now();
    check_target(path)?;
    let (backup, bytes) = read(from, root)?;
    let engine = options.engine.unwrap_or_default();
    let staging = staging_dir(path)?;
    let summary = BackupSummary::new(&backup.header, bytes, Duration::ZERO);
    let built = build(
        &staging,
        &backup,
        summary,
        root,
        engine,
        options.clock.now(),
    )
    .and_then(|report| {
        crate::store::sync_dir(&staging).map_err(|error| io_error("sync", &staging, &error))?;
        Ok(report)
    });
    let report = match built.and_then(|report| {
        place(&staging, path)?;
        Ok(report)
    }) {
        Ok(report) => report,
        Err(error) => {
            let _ = fs::remove_dir_all(&staging);
            return Err(error);
        }
    };
    Ok(RestoreReport {
        elapsed: started.elapsed(),
        ..report
    })
}

/// Refuses a target that holds anything: a restore builds a new store, never into an old one.
fn check_target(path: &Path) -> Result<(), Error> {
    match fs::read_dir(path) {
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => Err(Error::BadRequest {
                field: "path",
                reason: format!(
                    "{} is not empty: a restore builds a new store in an empty or absent \
                     directory",
                    path.display()
                ),
            }),
        },
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(Error::BadRequest {
            field: "path",
            reason: format!("{} cannot be read as a directory: {error}", path.display()),
        }),
    }
}

/// A new directory beside `path`, where the store is built before it takes `path`'s place.
fn staging_dir(path: &Path) -> Result<PathBuf, Error> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::BadRequest {
            field: "path",
            reason: format!("{} names no directory", path.display()),
        })?
        .to_string_lossy()
        .into_owned();
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(|error| io_error("create", &parent, &error))?;
    let mut random = [0u8; 6];
    fill_from_os(&mut random)?;
    let suffix: String = random.iter().map(|b| format!("{b:02x}")).collect();
    let staging = parent.join(format!(".{name}.restoring-{suffix}"));
    fs::create_dir(&staging).map_err(|error| io_error("create", &staging, &error))?;
    Ok(staging)
}

/// Moves the built store in `staging` to `path` (absent, or an empty directory, which the
/// rename replaces), and makes the move durable.
fn place(staging: &Path, path: &Path) -> Result<(), Error> {
    check_target(path)?;
    fs::rename(staging, path).map_err(|error| io_error("rename to", path, &error))?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        crate::store::sync_dir(parent).map_err(|error| io_error("sync", parent, &error))?;
    }
    Ok(())
}

fn io_error(what: &str, path: &Path, error: &std::io::Error) -> Error {
    Error::Storage {
        detail: format!("restore: cannot {what} {}: {error}", path.display()),
    }
}

/// Writes the backup's entries into a new store in `dir`, origin keys moved up and their
/// replicas owed a delivery, and checks the result by opening it as a whole.
fn build(
    dir: &Path,
    backup: &Backup,
    summary: BackupSummary,
    root: &RootKey,
    engine: Engine,
    now: Timestamp,
) -> Result<RestoreReport, Error> {
    let mut report = RestoreReport {
        backup: summary,
        engine,
        origin_keys: 0,
        replicas_owed: 0,
        revision_margin: RESTORE_MARGIN,
        deleted_since_backup: Vec::new(),
        elapsed: Duration::ZERO,
    };
    {
        let backend = Engine::open(dir, Some(engine))?;
        let (authenticated, _) = AuthenticatedBackend::open(backend, root)?;
        let authenticated = Arc::new(authenticated);
        let store = Store::new(Arc::clone(&authenticated) as Arc<dyn Backend>);
        store.initialize(backup.header.root_check.clone(), &backup.header.zone)?;
        let mut batch = Vec::with_capacity(RESTORE_BATCH);
        for entry in &backup.entries {
            restore_entry(entry, &backup.header, now, &mut batch, &mut report)?;
            if batch.len() >= RESTORE_BATCH {
                authenticated.commit(&batch)?;
                batch.clear();
            }
        }
        authenticated.commit(&batch)?;
    }
    // Opened as a whole: every tag, the digest and the witness checked again.
    let backend = Engine::open(dir, Some(engine))?;
    AuthenticatedBackend::open(backend, root)?;
    Ok(report)
}

/// The writes of one backup entry.
fn restore_entry(
    (table, key, value): &BackupEntry,
    header: &BackupHeader,
    now: Timestamp,
    batch: &mut Vec<Write>,
    report: &mut RestoreReport,
) -> Result<(), Error> {
    let mismatch = |what: &str| Error::Corrupt {
        record: "backup file".to_owned(),
        detail: format!("its {what} entry disagrees with its header"),
    };
    match table {
        Table::Meta if OWN_META.contains(&key.as_slice()) => return Ok(()),
        Table::Meta if key == b"zone" && value != header.zone.as_bytes() => {
            return Err(mismatch("zone"));
        }
        Table::Meta if key == b"root-check" && *value != header.root_check => {
            return Err(mismatch("root-check"));
        }
        Table::Meta if key == b"format" && value.as_slice() != [STORE_FORMAT_V2] => {
            return Err(mismatch("format"));
        }
        Table::Keys => {
            let id = keys_entry_id(key)?;
            let (record, seal_ids) = decode_record_sealed(id, value)?;
            if deleted_since(&record, now) {
                report.deleted_since_backup.push(id);
            }
            if record.role() == Role::Origin {
                report.origin_keys += 1;
                for replica in record.replicas() {
                    report.replicas_owed += 1;
                    batch.push(Write::Put {
                        table: Table::Outbox,
                        key: zone_key(id, &replica.zone),
                        value: Vec::new(),
                    });
                }
            }
            let record = restored(&record, RESTORE_MARGIN)?;
            batch.push(Write::Put {
                table: Table::Keys,
                key: key.clone(),
                value: encode_record_sealed(&record, &seal_ids)?,
            });
            return Ok(());
        }
        _ => {}
    }
    batch.push(Write::Put {
        table: *table,
        key: key.clone(),
        value: value.clone(),
    });
    Ok(())
}
