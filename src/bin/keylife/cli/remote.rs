//! `keylife backup --url URL --out FILE [--ca-file PEM]`: the backup of a running zone,
//! fetched with `POST /keylife/v1/backup`, signed with the credential of the environment
//! (`EXOSCALE_API_KEY`, `EXOSCALE_API_SECRET`, the variables Exoscale's own tools read).

use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::Path;

use keylife::server::BACKUP_PATH;
use keylife::server::client::{ApiCredential, Client, ClientOptions};
use keylife::store::backup::read_header;

use super::Failure;
use super::io::write_atomically;

/// The variable holding the API key.
const KEY_ENV: &str = "EXOSCALE_API_KEY";
/// The variable holding its secret.
const SECRET_ENV: &str = "EXOSCALE_API_SECRET";

/// The most bytes a backup's header takes (its zone and root check are at most 64 KiB each).
const MAX_HEADER_BYTES: u64 = 132 * 1024;

/// Fetches the backup of the zone at `url` into `out`, written beside it and renamed once
/// complete (a refusal, a cut or a file that is not a backup leaves nothing under its name);
/// prints what the header says.
pub(super) fn backup(url: &str, ca_file: Option<&Path>, out: &Path) -> Result<(), Failure> {
    let credential = credential()?;
    let options = match ca_file {
        Some(path) => ClientOptions::with_ca_file(path).map_err(other)?,
        None => ClientOptions::default(),
    };
    let client = Client::new(url, credential, options).map_err(other)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| Failure::Other(format!("cannot start the HTTP client: {error}")))?;
    let (bytes, header) = write_atomically(out, |file| {
        let bytes = runtime
            .block_on(async {
                let answer = client.send("POST", BACKUP_PATH, Vec::new()).await?;
                answer.success().await?.copy_to(file).await
            })
            .map_err(other)?;
        // What came is a backup: its header reads (its MAC needs the root key).
        let mut head = Vec::new();
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.take(MAX_HEADER_BYTES).read_to_end(&mut head))
            .map_err(|error| {
                Failure::Other(format!("cannot read back {}: {error}", out.display()))
            })?;
        let header = read_header(&head).map_err(|error| {
            Failure::Other(format!(
                "{} answered something that is not a keylife backup: {error} [{}]",
                client.url(),
                error.code()
            ))
        })?;
        Ok((bytes, header))
    })?;
    println!(
        "{}: zone {}, {} keys ({} entries), commit {} of a {} store, taken at {}, {bytes} bytes, \
         from {url} (its MAC is checked by `keylife backup inspect` with the root key)",
        out.display(),
        header.zone,
        header.keys,
        header.entries,
        header.seq,
        header.engine,
        header.taken_at,
    );
    Ok(())
}

/// The credential of the environment; its secret is wiped once the client is dropped.
fn credential() -> Result<ApiCredential, Failure> {
    let read = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|value| !value.is_empty())
            .ok_or_else(|| {
                Failure::Other(format!(
                    "backup --url signs its request with the credential in {KEY_ENV} and \
                 {SECRET_ENV} (a credential with the `admin` grant): {name} is not set"
                ))
            })
    };
    let key = read(KEY_ENV)?;
    let secret = zeroize::Zeroizing::new(read(SECRET_ENV)?);
    Ok(ApiCredential::new(key, secret.as_bytes()))
}

fn other(error: impl std::fmt::Display) -> Failure {
    Failure::Other(error.to_string())
}
