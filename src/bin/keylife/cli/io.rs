//! Reading a command's input and writing its output.

use std::fs::File;
use std::io::{self, Read as _, Write as _};
use std::path::Path;

use keylife::Error;
use serde::Serialize;
use zeroize::Zeroizing;

use super::Failure;

/// Standard input or output: no path, or `-`.
pub(super) fn is_stdio(path: Option<&Path>) -> bool {
    path.is_none_or(|path| path == Path::new("-"))
}

/// Reads all of `path` (or standard input), refusing more than `largest` bytes as a
/// `bad-request` on `field` without reading the rest.
pub(super) fn read_input(
    path: Option<&Path>,
    largest: usize,
    field: &'static str,
) -> Result<Zeroizing<Vec<u8>>, Failure> {
    let mut bytes = Zeroizing::new(Vec::new());
    let limit = u64::try_from(largest).unwrap_or(u64::MAX).saturating_add(1);
    let read = match path {
        Some(path) if !is_stdio(Some(path)) => std::fs::File::open(path)
            .and_then(|file| file.take(limit).read_to_end(&mut bytes))
            .map_err(|error| Failure::Other(format!("cannot read {}: {error}", path.display()))),
        _ => io::stdin()
            .lock()
            .take(limit)
            .read_to_end(&mut bytes)
            .map_err(|error| Failure::Other(format!("cannot read standard input: {error}"))),
    };
    read?;
    if bytes.len() > largest {
        return Err(Failure::Kms(Error::BadRequest {
            field,
            reason: format!("must be at most {largest} bytes, got more"),
        }));
    }
    Ok(bytes)
}

/// Writes `bytes` to `path`, or to standard output.
///
/// A file is written whole or not at all: the bytes go to a new temporary file beside it
/// (readable by its owner only), are synced, the file is renamed over `path`, and the
/// directory is synced. So a failed write leaves `path` as it was, an existing file's looser
/// permissions are not kept for a plaintext, and a symbolic link at `path` is replaced rather
/// than written through. Files that are not `secret` (ciphertexts) are made readable by all,
/// as usual.
pub(super) fn write_output(path: Option<&Path>, bytes: &[u8], secret: bool) -> Result<(), Failure> {
    match path {
        Some(path) if !is_stdio(Some(path)) => {
            let failed = |error: io::Error| {
                Failure::Other(format!("cannot write {}: {error}", path.display()))
            };
            let dir = path
                .parent()
                .filter(|dir| !dir.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let mut file = tempfile::Builder::new()
                .prefix(".keylife-")
                .tempfile_in(dir)
                .map_err(failed)?;
            file.write_all(bytes).map_err(failed)?;
            #[cfg(unix)]
            if !secret {
                use std::os::unix::fs::PermissionsExt as _;
                file.as_file()
                    .set_permissions(std::fs::Permissions::from_mode(0o644))
                    .map_err(failed)?;
            }
            #[cfg(not(unix))]
            let _ = secret;
            file.as_file().sync_all().map_err(failed)?;
            file.persist(path).map_err(|error| failed(error.error))?;
            // The rename is durable once the directory is: only then is the file "written".
            #[cfg(unix)]
            std::fs::File::open(dir)
                .and_then(|dir| dir.sync_all())
                .map_err(failed)?;
            Ok(())
        }
        _ => {
            let mut stdout = io::stdout().lock();
            stdout
                .write_all(bytes)
                .and_then(|()| stdout.flush())
                .map_err(|error| Failure::Other(format!("cannot write standard output: {error}")))
        }
    }
}

/// The pretty JSON of an answer, with a final newline.
pub(super) fn json_text<T: Serialize>(value: &T) -> Result<String, Failure> {
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|error| Failure::Other(format!("cannot write JSON: {error}")))?;
    text.push('\n');
    Ok(text)
}

/// Prints `value` as JSON, or the text `human` makes.
pub(super) fn output<T: Serialize>(
    json: bool,
    value: &T,
    human: impl FnOnce() -> String,
) -> Result<(), Failure> {
    let text = if json { json_text(value)? } else { human() };
    write_output(None, text.as_bytes(), false)
}

/// Writes `path` through `write` into a new file beside it (mode 0600), synced, then renamed
/// over `path`: a failed or interrupted backup never leaves a partial file under its name.
pub(super) fn write_atomically<T>(
    path: &Path,
    write: impl FnOnce(&mut File) -> Result<T, Failure>,
) -> Result<T, Failure> {
    let failed =
        |error: std::io::Error| Failure::Other(format!("cannot write {}: {error}", path.display()));
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // tempfile creates its files with mode 0600.
    let mut file = tempfile::Builder::new()
        .prefix(".keylife-backup-")
        .tempfile_in(dir)
        .map_err(failed)?;
    let value = write(file.as_file_mut())?;
    file.as_file_mut().flush().map_err(failed)?;
    file.as_file().sync_all().map_err(failed)?;
    file.persist(path).map_err(|error| failed(error.error))?;
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(failed)?;
    Ok(value)
}
