//! Making an engine's writes durable: `fdatasync` of its data file after each commit group, and
//! `fsync` of its directory whenever the directory's entries changed (a file created, renamed or
//! removed). Every sync goes through [`DataSync`], which counts them: tests assert on the count.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use crate::core::Error;

/// How long after a directory changed its times are trusted to show the next change.
const SETTLED: std::time::Duration = std::time::Duration::from_secs(1);

/// Syncs one engine's data file and its directory, counting what it does.
#[derive(Debug)]
pub(crate) struct DataSync {
    file: File,
    file_path: PathBuf,
    dir: PathBuf,
    /// The directory's modification and change times when it was last synced, if they were
    /// then at least [`SETTLED`] in the past (so that a later change shows as a later time).
    dir_seen: Mutex<Option<(SystemTime, SystemTime)>>,
    data_syncs: AtomicU64,
    dir_syncs: AtomicU64,
}

/// How many syncs a backend made (see [`SledBackend::syncs`](super::SledBackend::syncs)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Syncs {
    /// `fdatasync` calls of the engine's data file.
    pub data: u64,
    /// `fsync` calls of the store's directory.
    pub dir: u64,
}

impl DataSync {
    /// Opens `file` (which the engine already created) in `dir` for syncing, and syncs the
    /// directory once: the engine may just have created its files.
    pub(crate) fn open(dir: &Path, file: &Path) -> Result<DataSync, Error> {
        let handle = File::open(file).map_err(|error| Error::Storage {
            detail: format!("cannot open {} to sync it: {error}", file.display()),
        })?;
        let sync = DataSync {
            file: handle,
            file_path: file.to_owned(),
            dir: dir.to_owned(),
            dir_seen: Mutex::new(None),
            data_syncs: AtomicU64::new(0),
            dir_syncs: AtomicU64::new(0),
        };
        sync.sync_dir_if_changed()
            .map_err(|detail| Error::Storage { detail })?;
        Ok(sync)
    }

    /// `fdatasync` of the data file, then `fsync` of the directory if its entries changed since
    /// it was last synced. The error says which failed.
    pub(crate) fn sync(&self) -> Result<(), String> {
        self.data_syncs.fetch_add(1, Ordering::Relaxed);
        self.file
            .sync_data()
            .map_err(|error| format!("fdatasync of {}: {error}", self.file_path.display()))?;
        self.sync_dir_if_changed()
    }

    /// `fsync` of the directory unless its modification and change times are those seen at an
    /// earlier sync that happened well after them: an entry created, renamed or removed since
    /// then would have moved them. File systems keep these times at a coarse tick, so a
    /// directory changed less than [`SETTLED`] before a sync is synced again at the next one.
    fn sync_dir_if_changed(&self) -> Result<(), String> {
        let io = |what: &str, error: std::io::Error| {
            format!("{what} of the directory {}: {error}", self.dir.display())
        };
        let meta = std::fs::metadata(&self.dir).map_err(|e| io("stat", e))?;
        let stamp = (
            meta.modified().map_err(|e| io("stat", e))?,
            ctime(&meta).map_err(|e| io("stat", e))?,
        );
        let mut seen = self.dir_seen.lock().unwrap_or_else(|e| e.into_inner());
        if *seen == Some(stamp) {
            return Ok(());
        }
        self.dir_syncs.fetch_add(1, Ordering::Relaxed);
        sync_dir(&self.dir).map_err(|e| io("fsync", e))?;
        let settled = SystemTime::now()
            .duration_since(stamp.0.max(stamp.1))
            .is_ok_and(|age| age >= SETTLED);
        *seen = settled.then_some(stamp);
        Ok(())
    }

    /// The syncs made so far.
    pub(crate) fn count(&self) -> Syncs {
        Syncs {
            data: self.data_syncs.load(Ordering::Relaxed),
            dir: self.dir_syncs.load(Ordering::Relaxed),
        }
    }
}

/// `fsync` of a directory: makes the creation, renaming or removal of its entries durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(unix)]
fn ctime(meta: &std::fs::Metadata) -> std::io::Result<SystemTime> {
    use std::os::unix::fs::MetadataExt as _;
    let nanos = u32::try_from(meta.ctime_nsec()).unwrap_or(0);
    let seconds = u64::try_from(meta.ctime()).unwrap_or(0);
    Ok(SystemTime::UNIX_EPOCH + std::time::Duration::new(seconds, nanos))
}

#[cfg(not(unix))]
fn ctime(meta: &std::fs::Metadata) -> std::io::Result<SystemTime> {
    meta.created()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_directory_is_synced_only_when_its_entries_change() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data");
        std::fs::write(&file, b"x").unwrap();
        // A directory changed just now is synced at every sync until its times settle.
        let sync = DataSync::open(dir.path(), &file).unwrap();
        assert_eq!(sync.count(), Syncs { data: 0, dir: 1 });
        sync.sync().unwrap();
        assert_eq!(sync.count(), Syncs { data: 1, dir: 2 });
        std::thread::sleep(SETTLED + std::time::Duration::from_millis(50));
        sync.sync().unwrap();
        sync.sync().unwrap();
        sync.sync().unwrap();
        assert_eq!(
            sync.count(),
            Syncs { data: 4, dir: 3 },
            "settled: synced once more"
        );
        std::fs::write(dir.path().join("new"), b"y").unwrap();
        sync.sync().unwrap();
        assert_eq!(sync.count(), Syncs { data: 5, dir: 4 }, "a new entry");
    }
}
