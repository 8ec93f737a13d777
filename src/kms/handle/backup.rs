//! [`Kms::backup`], [`Kms::inspect_backup`] and [`Kms::restore`]: a zone's image in a file, and
//! a new store built from one.

use std::io::{Read, Write};
use std::path::Path;

use super::Kms;
use crate::Result;
use crate::core::Error;
use crate::crypto::RootKey;
use crate::kms::caller::{Operation, Target};
use crate::kms::restore::{self, BackupSummary, RestoreOptions, RestoreReport};
use crate::store::backup::{BackupHeader, write_backup};
use crate::store::{Backend, STORE_FORMAT_V2, Table};

impl Kms {
    /// backup: writes a consistent image of this zone, as of one commit, to `out`: every key
    /// record, sealed material version (it stays sealed under the root key), index, encryption
    /// reservation and replica delivery state, with a header and a MAC over the whole file
    /// under a key derived from the root key (format: docs/design.md, "Backup and restore").
    ///
    /// The zone keeps serving: its writes wait while the entries are copied in memory
    /// ([`BackupSummary::writes_paused`]), its reads and cryptographic operations never do;
    /// the file is written after. Asked of the caller's check as
    /// [`Operation::Backup`](crate::Operation::Backup) on the zone.
    pub fn backup(&self, out: &mut dyn Write) -> Result<BackupSummary> {
        let result = (|| {
            self.ask(Operation::Backup, Target::Zone)?;
            self.zone.shared.live()?;
            let shared = &self.zone.shared;
            let snapshot = shared.authenticated().snapshot()?;
            let meta = |name: &[u8]| {
                snapshot
                    .entries
                    .iter()
                    .find(|(table, key, _)| *table == Table::Meta && key == name)
                    .map(|(_, _, value)| value.clone())
            };
            let root_check = meta(b"root-check").ok_or_else(|| Error::Corrupt {
                record: "store header".to_owned(),
                detail: "the root-key check value is missing".to_owned(),
            })?;
            let header = BackupHeader {
                store_format: STORE_FORMAT_V2,
                zone: self.zone().to_owned(),
                engine: Backend::engine(shared.authenticated()).to_owned(),
                seq: snapshot.seq,
                taken_at: self.now(),
                keys: snapshot
                    .entries
                    .iter()
                    .filter(|(table, _, _)| *table == Table::Keys)
                    .count() as u64,
                entries: snapshot.entries.len() as u64,
                store_id: snapshot.store_id,
                root_check,
            };
            let bytes = write_backup(out, &header, &snapshot.entries, shared.backup_mac())?;
            Ok((BackupSummary::new(&header, bytes, snapshot.paused), None))
        })();
        self.audited(Operation::Backup, None, result)
    }

    /// Reads the backup in `from` and checks it under `root`: its MAC over every byte, its
    /// header and every entry's framing. A root key other than the backup's is
    /// [`Error::WrongRootKey`]; a file changed anywhere, cut short or not a backup is
    /// [`Error::Corrupt`] on record `backup file`.
    /// The root key is wiped when this returns.
    pub fn inspect_backup(from: &mut dyn Read, root: RootKey) -> Result<BackupSummary> {
        let (backup, bytes) = restore::read(from, &root)?;
        Ok(BackupSummary::new(
            &backup.header,
            bytes,
            std::time::Duration::ZERO,
        ))
    }

    /// restore: builds a new store in directory `path` (absent, or empty) from the backup in
    /// `from`, with `options.engine` (any engine restores a backup of any other), under
    /// `root`, the backed-up store's root key. lifecycle.md, "Restore from a backup": every
    /// key, status, version, rotation setting, reservation and replica delivery state is the
    /// backup's; each origin key's revision continues
    /// [`RESTORE_MARGIN`](crate::core::restore::RESTORE_MARGIN) above the backup's, and its
    /// replicas are owed a delivery, so that they follow the restored origin.
    ///
    /// The file is authenticated before anything is written (see [`Kms::inspect_backup`]); a
    /// non-empty `path` is [`Error::BadRequest`] on field `path`. The store is built in a new
    /// directory beside `path`, checked as a whole, then renamed to `path`: on any error
    /// nothing is left behind, and a restore killed midway leaves `path` as it was (and a
    /// `.NAME.restoring-*` directory to remove). Open the result with [`Kms::open`]. The root
    /// key is wiped when this returns.
    pub fn restore(
        from: &mut dyn Read,
        path: impl AsRef<Path>,
        root: RootKey,
        options: &RestoreOptions,
    ) -> Result<RestoreReport> {
        restore::restore(from, path.as_ref(), &root, options)
    }
}
