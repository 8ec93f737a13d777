//! What the `keylife` binary reads before it opens anything: the root key, the API
//! credentials, the zones and their stores.
//!
//! The root key comes from a file or the `KEYLIFE_ROOT_KEY` environment variable, never from a
//! command-line value (visible to every user in `ps`). It is base64 of 32 bytes on one line, as
//! `keylife root-key generate` prints it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use zeroize::Zeroizing;

use keylife::server::auth::Credentials;
use keylife::server::client::{ApiCredential, ClientOptions};
use keylife::server::peer::{Peer, PeerLink, PeerOptions};
use keylife::store::Engine;
use keylife::{Error, Kms, KmsOptions, LocalLink, RootKey};

use crate::log::log;

/// The environment variable that may hold the root key instead of a file.
const ROOT_KEY_ENV: &str = "KEYLIFE_ROOT_KEY";
/// The environment variable that may hold the credentials instead of a file.
const CREDENTIALS_ENV: &str = "KEYLIFE_CREDENTIALS";

/// A configuration problem, for the operator. It never contains a secret.
#[derive(Debug)]
pub(crate) enum ConfigError {
    /// The configuration itself is wrong: the message names the file or variable.
    Invalid(String),
    /// A zone's store could not be opened.
    Store {
        /// The zone.
        zone: String,
        /// Its store directory.
        dir: PathBuf,
        /// Why.
        error: Error,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Invalid(message) => f.write_str(message),
            ConfigError::Store { zone, dir, error } => {
                let (dir, code) = (dir.display(), error.code());
                write!(
                    f,
                    "cannot open the store of zone {zone} in {dir}: {error} [{code}]"
                )?;
                if let Error::StoreInUse { .. } = error {
                    // keylife's lock: a running `keylife serve` (or another command) holds it.
                    f.write_str(" (stop `keylife serve` or the other user of the store first)")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// The 32 bytes of a root key, read once and copied into a [`RootKey`] per zone. Wiped on drop;
/// `Debug` shows nothing.
pub(crate) struct RootKeyBytes(Zeroizing<Vec<u8>>);

impl fmt::Debug for RootKeyBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RootKeyBytes(<redacted>)")
    }
}

impl RootKeyBytes {
    /// Reads the root key from `file`, or else from `KEYLIFE_ROOT_KEY`.
    pub(crate) fn load(file: Option<&Path>) -> Result<RootKeyBytes, ConfigError> {
        match file {
            Some(path) => {
                warn_if_readable_by_others(path, "root key");
                let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|error| {
                    ConfigError::Invalid(format!(
                        "cannot read the root key file {}: {error}",
                        path.display()
                    ))
                })?);
                RootKeyBytes::parse(&text, &format!("the root key file {}", path.display()))
            }
            None => match std::env::var(ROOT_KEY_ENV) {
                Ok(text) => {
                    let text = Zeroizing::new(text);
                    RootKeyBytes::parse(&text, ROOT_KEY_ENV)
                }
                Err(_) => Err(ConfigError::Invalid(format!(
                    "no root key: give --root-key-file FILE or set {ROOT_KEY_ENV} \
                     (`keylife root-key generate` makes one)"
                ))),
            },
        }
    }

    /// Parses base64 of exactly 32 bytes (surrounding whitespace ignored); `origin` names where
    /// the text came from, for the error.
    pub(crate) fn parse(text: &str, origin: &str) -> Result<RootKeyBytes, ConfigError> {
        let bytes = Zeroizing::new(BASE64.decode(text.trim()).map_err(|_| {
            ConfigError::Invalid(format!("{origin}: the root key must be base64 of 32 bytes"))
        })?);
        if bytes.len() != 32 {
            return Err(ConfigError::Invalid(format!(
                "{origin}: the root key must be base64 of 32 bytes, got {} bytes",
                bytes.len()
            )));
        }
        Ok(RootKeyBytes(bytes))
    }

    /// A [`RootKey`] with these bytes.
    pub(crate) fn root_key(&self) -> RootKey {
        // The length was checked when the bytes were read.
        RootKey::from_slice(&self.0).unwrap_or_else(|_| unreachable!("checked length"))
    }

    /// A new random root key, as base64 (for `keylife root-key generate`).
    pub(crate) fn generate_base64() -> Result<Zeroizing<String>, Error> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        keylife::crypto::fill_from_os(bytes.as_mut())?;
        Ok(Zeroizing::new(BASE64.encode(bytes.as_ref())))
    }
}

/// Reads the API credentials from `file`, or else from `KEYLIFE_CREDENTIALS` (same format:
/// one `KEY SECRET` pair per line, `#` starts a comment).
pub(crate) fn load_credentials(file: Option<&Path>) -> Result<Credentials, ConfigError> {
    if let Some(path) = file {
        warn_if_readable_by_others(path, "credentials");
    }
    let (text, origin) = match file {
        Some(path) => (
            Zeroizing::new(std::fs::read_to_string(path).map_err(|error| {
                ConfigError::Invalid(format!(
                    "cannot read the credentials file {}: {error}",
                    path.display()
                ))
            })?),
            format!("the credentials file {}", path.display()),
        ),
        None => match std::env::var(CREDENTIALS_ENV) {
            Ok(text) => (Zeroizing::new(text), CREDENTIALS_ENV.to_owned()),
            Err(_) => {
                return Err(ConfigError::Invalid(format!(
                    "no credentials: give --credentials-file FILE or set {CREDENTIALS_ENV}"
                )));
            }
        },
    };
    Credentials::parse(&text).map_err(|error| ConfigError::Invalid(format!("{origin}: {error}")))
}

/// The peers of `keylife serve --peer ZONE=URL ...`, each with its link credential from the
/// peer credentials file (`ZONE KEY SECRET` lines, `#` comments): every peer needs one line,
/// and a line naming no peer is an error (a zone misspelt on either side).
pub(crate) fn load_peers(
    peers: &[(String, String)],
    credentials_file: Option<&Path>,
    ca_file: Option<&Path>,
    timeout: std::time::Duration,
) -> Result<Option<(Vec<Peer>, PeerOptions)>, ConfigError> {
    if peers.is_empty() {
        if credentials_file.is_some() || ca_file.is_some() {
            return Err(ConfigError::Invalid(
                "--peer-credentials-file and --peer-ca-file need at least one --peer".to_owned(),
            ));
        }
        return Ok(None);
    }
    let Some(path) = credentials_file else {
        return Err(ConfigError::Invalid(
            "--peer needs --peer-credentials-file FILE: the link credential (`ZONE KEY SECRET`) \
             this process signs its messages to each peer zone with"
                .to_owned(),
        ));
    };
    warn_if_readable_by_others(path, "peer credentials");
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|error| {
        ConfigError::Invalid(format!(
            "cannot read the peer credentials file {}: {error}",
            path.display()
        ))
    })?);
    let invalid = |line: usize, what: String| {
        ConfigError::Invalid(format!(
            "the peer credentials file {}, line {line}: {what}",
            path.display()
        ))
    };
    let mut credentials: Vec<(String, ApiCredential)> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let words: Vec<&str> = line
            .split_whitespace()
            .take_while(|word| !word.starts_with('#'))
            .collect();
        let [zone, key, secret] = words.as_slice() else {
            if words.is_empty() {
                continue;
            }
            // The words are not echoed: one may be a secret.
            return Err(invalid(
                index + 1,
                format!("expected `ZONE KEY SECRET`, got {} words", words.len()),
            ));
        };
        if !peers.iter().any(|(peer, _)| peer == zone) {
            return Err(invalid(
                index + 1,
                format!("zone {zone} is not named by any --peer"),
            ));
        }
        if credentials.iter().any(|(seen, _)| seen == zone) {
            return Err(invalid(index + 1, format!("zone {zone} is given twice")));
        }
        credentials.push((
            (*zone).to_owned(),
            ApiCredential::new(*key, secret.as_bytes()),
        ));
    }
    let ca_pem = match ca_file {
        Some(path) => {
            ClientOptions::with_ca_file(path)
                .map_err(|error| ConfigError::Invalid(format!("--peer-ca-file: {error}")))?
                .ca_pem
        }
        None => None,
    };
    let mut resolved = Vec::with_capacity(peers.len());
    for (zone, url) in peers {
        if resolved.iter().any(|peer: &Peer| &peer.zone == zone) {
            return Err(ConfigError::Invalid(format!(
                "zone {zone} is named by --peer twice"
            )));
        }
        let index = credentials
            .iter()
            .position(|(seen, _)| seen == zone)
            .ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "the peer credentials file {} has no line for zone {zone} (`{zone} KEY \
                     SECRET`)",
                    path.display()
                ))
            })?;
        let (_, credential) = credentials.swap_remove(index);
        resolved.push(Peer {
            zone: zone.clone(),
            url: url.clone(),
            credential,
        });
    }
    Ok(Some((resolved, PeerOptions { ca_pem, timeout })))
}

/// Warns on stderr when the secrets file `path` may be read by other users than its owner
/// (Unix permissions); serving goes on.
pub(crate) fn warn_if_readable_by_others(path: &Path, what: &str) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(metadata) = std::fs::metadata(path)
            && metadata.permissions().mode() & 0o077 != 0
        {
            log(format_args!(
                "keylife: warning: the {what} file {} has mode {:o}: not only its owner \
                 can read it; `chmod 600` it",
                path.display(),
                metadata.permissions().mode() & 0o777
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = (path, what);
}

/// The store directory of `zone` under the data directory: `DATA/ZONE`.
#[must_use]
pub(crate) fn zone_dir(data: &Path, zone: &str) -> PathBuf {
    data.join(zone)
}

/// Checks a zone name: 1 to 64 characters among ASCII letters, digits, `-` and `_` (it names a
/// directory).
pub(crate) fn check_zone_name(zone: &str) -> Result<(), ConfigError> {
    let valid = !zone.is_empty()
        && zone.len() <= 64
        && zone
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(ConfigError::Invalid(format!(
            "invalid zone name {zone:?}: 1 to 64 characters among letters, digits, `-` and `_`"
        )))
    }
}

/// Opens the store of every zone in `zones` under `data` (`DATA/ZONE`, created if missing,
/// with `engine`), all sealed under `root_key` and connected by one [`LocalLink`], so that
/// keys replicate between them as in the library.
pub(crate) fn open_zones(
    data: &Path,
    zones: &[String],
    root_key: &RootKeyBytes,
    engine: Option<Engine>,
) -> Result<Vec<Arc<Kms>>, ConfigError> {
    open_zones_with_peers(data, zones, root_key, engine, None)
}

/// [`open_zones`], the zones also reaching `peers` (zones of other processes) over HTTP(S).
/// A zone both opened here and named as a peer is a configuration error.
pub(crate) fn open_zones_with_peers(
    data: &Path,
    zones: &[String],
    root_key: &RootKeyBytes,
    engine: Option<Engine>,
    peers: Option<(Vec<Peer>, PeerOptions)>,
) -> Result<Vec<Arc<Kms>>, ConfigError> {
    let local = LocalLink::new();
    let link: Arc<dyn keylife::Link> = match peers {
        None => local.clone(),
        Some((peers, options)) => {
            if let Some(peer) = peers.iter().find(|peer| zones.contains(&peer.zone)) {
                return Err(ConfigError::Invalid(format!(
                    "zone {} is both served here (--zone) and named as a peer (--peer): a \
                     zone is served by one process",
                    peer.zone
                )));
            }
            PeerLink::new(local.clone(), peers, options)
                .map_err(|error| ConfigError::Invalid(format!("--peer: {error}")))?
        }
    };
    let mut opened = Vec::with_capacity(zones.len());
    for zone in zones {
        check_zone_name(zone)?;
        if opened.iter().any(|kms: &Arc<Kms>| kms.zone() == zone) {
            return Err(ConfigError::Invalid(format!("zone {zone} is given twice")));
        }
        let dir = zone_dir(data, zone);
        std::fs::create_dir_all(&dir).map_err(|error| {
            ConfigError::Invalid(format!("cannot create {}: {error}", dir.display()))
        })?;
        let mut options = KmsOptions::new(zone.clone()).link(Arc::clone(&link));
        options.engine = engine;
        let kms =
            Kms::open(&dir, root_key.root_key(), options).map_err(|error| ConfigError::Store {
                zone: zone.clone(),
                dir: dir.clone(),
                error,
            })?;
        let kms = Arc::new(kms);
        local.attach(&kms);
        opened.push(kms);
    }
    Ok(opened)
}

/// Whether `dir` holds a zone's store: an engine's files, keylife's witness (written when a
/// store is created, [`keylife::store::WITNESS_FILE`]) or its older marker file
/// ([`keylife::store::MARKER`]).
pub(crate) fn is_zone_store(dir: &Path) -> bool {
    Engine::detect(dir).is_some()
        || dir.join(keylife::store::WITNESS_FILE).is_file()
        || dir.join(keylife::store::MARKER).is_file()
}

/// The zones that have a store under `data`: its subdirectories with a valid zone name that
/// hold a store ([`is_zone_store`]), sorted.
pub(crate) fn existing_zones(data: &Path) -> Result<Vec<String>, ConfigError> {
    let entries = std::fs::read_dir(data).map_err(|error| {
        ConfigError::Invalid(format!("cannot read {}: {error}", data.display()))
    })?;
    let mut zones = Vec::new();
    for entry in entries.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false)
            && let Some(name) = entry.file_name().to_str()
            && check_zone_name(name).is_ok()
            && is_zone_store(&entry.path())
        {
            zones.push(name.to_owned());
        }
    }
    zones.sort();
    Ok(zones)
}

/// Reads and checks the seed file at `path` (its bytes are wiped once parsed; a file others
/// may read is used with a warning, as it may hold key material).
pub(crate) fn load_seed(path: &Path) -> Result<keylife::Seed, ConfigError> {
    warn_if_readable_by_others(path, "seed");
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|error| {
        ConfigError::Invalid(format!(
            "cannot read the seed file {}: {error}",
            path.display()
        ))
    })?);
    keylife::Seed::from_json(&bytes).map_err(|error| {
        ConfigError::Invalid(format!(
            "the seed file {}: {error} [{}]",
            path.display(),
            error.code()
        ))
    })
}
