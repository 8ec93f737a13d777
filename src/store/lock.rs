//! keylife's own lock on a store directory, taken before an engine opens its files.
//!
//! While it is held, nobody else (another process, or another backend of this process) has the
//! store, so an engine's failure to take its own lock can only be a lock this process is still
//! letting go of (sled releases its lock when its background threads end, a moment after the
//! last handle is dropped): it is retried without reading the engine's message.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::core::Error;

/// The lock file in a store directory. It holds nothing; its lock is the point.
pub const LOCK_FILE: &str = "keylife.lock";

/// How long opening a store waits for a lock held by someone else before it answers
/// [`Error::StoreInUse`]: long enough for a store closed a moment ago to be released.
pub const LOCK_WAIT: Duration = Duration::from_secs(3);

/// An exclusive lock on a store directory, released when dropped.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Creates `dir` if missing (readable by its owner only: mode 0700 on unix) and locks it,
    /// waiting up to [`LOCK_WAIT`] for another holder to let go: [`Error::StoreInUse`] after
    /// that, [`Error::Storage`] if the file cannot be made or locked at all.
    pub fn acquire(dir: &Path) -> Result<DirLock, Error> {
        let io = |error: std::io::Error| Error::Storage {
            detail: format!("cannot lock the store at {}: {error}", dir.display()),
        };
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io)?;
            owner_only(dir, 0o700).map_err(io)?;
        }
        let mut options = OpenOptions::new();
        options.create(true).truncate(false).write(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(dir.join(LOCK_FILE)).map_err(io)?;
        retry_while_busy(|| match file.try_lock() {
            Ok(()) => Ok(Ok(())),
            Err(TryLockError::WouldBlock) => Ok(Err(Error::StoreInUse {
                store: dir.display().to_string(),
            })),
            Err(TryLockError::Error(error)) => Err(io(error)),
        })?;
        Ok(DirLock { _file: file })
    }
}

/// Sets the mode of `path` to `mode` (0700 for a directory, 0600 for a file: its owner
/// only), on unix; nothing elsewhere.
pub(crate) fn owner_only(path: &Path, mode: u32) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
    }
    #[cfg(not(unix))]
    {
        let _ = (path, mode);
        Ok(())
    }
}

/// Calls `attempt` until it succeeds (`Ok(Ok(value))`) or fails (`Err`), pausing between
/// attempts (5 ms, doubling up to 100 ms) while it reports the resource busy (`Ok(Err(busy))`),
/// for at most [`LOCK_WAIT`]: then the last `busy` error is the answer.
pub(crate) fn retry_while_busy<T>(
    mut attempt: impl FnMut() -> Result<Result<T, Error>, Error>,
) -> Result<T, Error> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        match attempt()? {
            Ok(value) => return Ok(value),
            Err(busy) if started.elapsed() >= LOCK_WAIT => return Err(busy),
            Err(_) => {
                thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_is_refused_as_in_use_and_free_once_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("zone");
        let first = DirLock::acquire(&store).unwrap();
        assert!(store.join(LOCK_FILE).is_file());
        let started = Instant::now();
        let refused = DirLock::acquire(&store).unwrap_err();
        assert!(started.elapsed() >= LOCK_WAIT, "it waited for the holder");
        assert_eq!(
            refused,
            Error::StoreInUse {
                store: store.display().to_string()
            }
        );
        drop(first);
        DirLock::acquire(&store).unwrap();
    }
}
