//! The commands on a local store: `keylife key ...`, `encrypt`, `decrypt`,
//! `generate-data-key`.
//!
//! Each command opens the stores of the data directory the way `keylife serve` does (`DATA/ZONE`
//! per zone, every zone found there connected by one [`keylife::LocalLink`], so replicas follow
//! their origin at once), runs what is due (automatic rotations, final deletions, waiting
//! deliveries to replicas, as the server does every second), performs one operation in the
//! chosen zone and prints its answer: a human listing by default, the API's JSON with `--json`.
//!
//! Errors go to standard error as `keylife: MESSAGE [CODE]` (CODE is the library's stable
//! [`keylife::Error::code`]; configuration and I/O problems have none) with exit status 1. clap
//! reports usage errors itself, with exit status 2.

use crate::table;

use std::fmt;
use std::io::{self, IsTerminal as _, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use clap::{Args, Subcommand};
use jiff::Timestamp;
use keylife::api::KeySummary;
use keylife::server::config::{self, ConfigError, RootKeyBytes};
use keylife::{
    CreateKey, DataKeySpec, Error, KeyDetails, KeyId, KeyStatus, Kms, RotationResponse,
    SuccessStatus,
};
use serde::Serialize;
use zeroize::Zeroizing;

use self::table::{Table, fields};

/// The zone of a data directory that holds no store yet (the library's default zone).
const DEFAULT_ZONE: &str = "local";

/// Appended to the help of every local command.
const AFTER_HELP: &str = "\
The store is DATA/ZONE, as `keylife serve` lays it out; stop the server first (a store has \
one user at a time). Every zone under DATA is opened too, so replicas follow their origin \
at once. Automatic rotations and deletions that are due are run first.

Exit status: 0 on success; 1 when the store or the operation refused, with \
`keylife: MESSAGE [CODE]` on standard error; 2 for a malformed command line.";

/// Commands on a local store.
#[derive(Debug, Subcommand)]
pub(crate) enum LocalCommand {
    /// Manage keys: create, list, get, enable, disable, rotate, schedule or cancel deletion, replicate.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Encrypt bytes (a file or standard input) with a key; writes the raw ciphertext.
    ///
    /// The ciphertext is 49 bytes longer than the plaintext and names its key and material
    /// version; `keylife decrypt` opens it with the same key and context.
    #[command(after_help = AFTER_HELP)]
    Encrypt(EncryptArgs),
    /// Decrypt a ciphertext (a file or standard input); writes the plaintext bytes.
    ///
    /// The ciphertext is one made by `keylife encrypt` or the API's encrypt, in any zone that
    /// holds the key.
    /// Every material version of the key decrypts. A damaged ciphertext or a wrong context
    /// is `invalid-ciphertext`; a ciphertext of another key is `incorrect-key`.
    #[command(after_help = AFTER_HELP)]
    Decrypt(DecryptArgs),
    /// Generate a data key, in the clear and encrypted under a key.
    ///
    /// Both are printed in base64. Use the clear data key and keep only its encrypted form:
    /// `keylife decrypt --base64` gives the data key back from the encrypted form (the
    /// `ciphertext` value, or `--json` and its `ciphertext` member).
    #[command(after_help = AFTER_HELP)]
    GenerateDataKey(DataKeyArgs),
}

/// `keylife key ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum KeyCommand {
    /// Create a key: enabled, material version 1, automatic rotation every 365 days.
    #[command(after_help = AFTER_HELP)]
    Create(CreateArgs),
    /// List the zone's keys, replicas included, by id (ids are UUIDv7: about creation order).
    #[command(after_help = AFTER_HELP)]
    List(ListArgs),
    /// Show a key: status, newest material version, rotation settings, replicas.
    #[command(after_help = AFTER_HELP)]
    Get(IdArgs),
    /// Enable a disabled key (nothing changes if it is already enabled).
    #[command(after_help = AFTER_HELP)]
    Enable(IdArgs),
    /// Disable a key: it refuses encryption, decryption and rotation until enabled again.
    #[command(after_help = AFTER_HELP)]
    Disable(IdArgs),
    /// Rotate a key now: a new material version.
    ///
    /// The new version encrypts from now on; older ones still decrypt. At most 10 manual
    /// rotations per key.
    #[command(after_help = AFTER_HELP)]
    Rotate(IdArgs),
    /// Turn automatic rotation on.
    ///
    /// The period is 90 to 2560 days (default 365); the next rotation is one period from now.
    /// Refused (`conflict`) if automatic rotation is already on.
    #[command(after_help = AFTER_HELP)]
    EnableRotation(EnableRotationArgs),
    /// Turn automatic rotation off.
    ///
    /// Refused (`conflict`) if it is already off.
    #[command(after_help = AFTER_HELP)]
    DisableRotation(IdArgs),
    /// List a key's rotations: material versions 2 and up, oldest first.
    #[command(after_help = AFTER_HELP)]
    ListRotations(IdArgs),
    /// Schedule a key's deletion.
    ///
    /// The key is destroyed 7 to 30 days (default 30) from now; until then it refuses every
    /// use but `cancel-deletion`. Its replicas follow.
    #[command(after_help = AFTER_HELP)]
    ScheduleDeletion(ScheduleDeletionArgs),
    /// Cancel a scheduled deletion.
    ///
    /// The key becomes disabled: enable it to use it again.
    #[command(after_help = AFTER_HELP)]
    CancelDeletion(IdArgs),
    /// Replicate a multi-zone key to another zone.
    ///
    /// The target zone's store, DATA/ZONE, is created if missing. The replica has the same id
    /// and material; it follows every later rotation and deletion of the key, and its enabled
    /// or disabled status is its own.
    #[command(after_help = AFTER_HELP)]
    Replicate(ReplicateArgs),
}

/// Where the store is, and how to print the answer: the options of every local command.
#[derive(Debug, Args)]
#[command(next_help_heading = "Store")]
pub(crate) struct StoreArgs {
    /// Data directory: the store of zone ZONE is the subdirectory DIR/ZONE, as with `keylife
    /// serve`. `key create` (and `key replicate` for its target) creates a zone's store when
    /// missing; the other commands need an existing one.
    #[arg(long, value_name = "DIR", env = "KEYLIFE_DATA")]
    data: PathBuf,
    /// The zone to act in. Default: the one zone whose store is in DIR, or `local` if DIR
    /// holds none yet. Required when DIR holds several zones.
    #[arg(long, value_name = "NAME", env = "KEYLIFE_ZONE")]
    zone: Option<String>,
    /// File holding the root key (base64 of 32 bytes on one line, as `keylife root-key
    /// generate` prints it); else the environment variable KEYLIFE_ROOT_KEY. The root key is
    /// never taken from a command-line value.
    #[arg(long, value_name = "FILE")]
    root_key_file: Option<PathBuf>,
    /// Print the API's JSON answer instead of a human listing.
    #[arg(long, help_heading = "Output")]
    json: bool,
}

/// `key create`.
#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    /// The key's name: 1 to 256 characters, unique in the zone.
    #[arg(long)]
    name: String,
    /// A description, up to 1024 characters.
    #[arg(long)]
    description: Option<String>,
    /// Allow the key to be replicated to other zones (`key replicate`); only set at creation.
    #[arg(long)]
    multi_zone: bool,
    #[command(flatten)]
    store: StoreArgs,
}

/// `key list`.
#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    store: StoreArgs,
}

/// The commands that take just a key id.
#[derive(Debug, Args)]
pub(crate) struct IdArgs {
    /// The key's id, a UUID (as `key create` and `key list` show it).
    #[arg(value_name = "ID")]
    id: String,
    #[command(flatten)]
    store: StoreArgs,
}

/// `key enable-rotation`.
#[derive(Debug, Args)]
pub(crate) struct EnableRotationArgs {
    /// The key's id, a UUID.
    #[arg(value_name = "ID")]
    id: String,
    /// Days between automatic rotations: 90 to 2560 (default 365).
    #[arg(long, value_name = "DAYS")]
    period: Option<u32>,
    #[command(flatten)]
    store: StoreArgs,
}

/// `key schedule-deletion`.
#[derive(Debug, Args)]
pub(crate) struct ScheduleDeletionArgs {
    /// The key's id, a UUID.
    #[arg(value_name = "ID")]
    id: String,
    /// Days until the key is destroyed: 7 to 30 (default 30).
    #[arg(long, value_name = "N")]
    days: Option<u32>,
    #[command(flatten)]
    store: StoreArgs,
}

/// `key replicate`.
#[derive(Debug, Args)]
pub(crate) struct ReplicateArgs {
    /// The key's id, a UUID; the key must be multi-zone, enabled, and created in this zone.
    #[arg(value_name = "ID")]
    id: String,
    /// The zone to replicate to (not `--zone`, which is the key's own zone).
    #[arg(long, value_name = "ZONE")]
    to: String,
    #[command(flatten)]
    store: StoreArgs,
}

/// `encrypt`.
#[derive(Debug, Args)]
pub(crate) struct EncryptArgs {
    /// The key's id, a UUID.
    #[arg(long, value_name = "ID")]
    key: String,
    /// Encryption context: text bound to the ciphertext (additional authenticated data);
    /// decrypt must give the same. Absent and empty are the same.
    #[arg(long, value_name = "TEXT")]
    context: Option<String>,
    /// Read the plaintext from FILE (default, or `-`: standard input).
    #[arg(long, value_name = "FILE")]
    input: Option<PathBuf>,
    /// Write the ciphertext (with --json, the API's JSON answer) to FILE (default, or `-`:
    /// standard output).
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Write the ciphertext as base64 text (one line) rather than raw bytes.
    #[arg(long, conflicts_with = "json")]
    base64: bool,
    #[command(flatten)]
    store: StoreArgs,
}

/// `decrypt`.
#[derive(Debug, Args)]
pub(crate) struct DecryptArgs {
    /// The key's id, a UUID.
    #[arg(long, value_name = "ID")]
    key: String,
    /// Encryption context: the text given at encryption, if any.
    #[arg(long, value_name = "TEXT")]
    context: Option<String>,
    /// Read the ciphertext from FILE (default, or `-`: standard input).
    #[arg(long, value_name = "FILE")]
    input: Option<PathBuf>,
    /// Write the plaintext (with --json, the API's JSON answer) to FILE (default, or `-`:
    /// standard output). A new file is readable by its owner only; nothing is written if
    /// decryption fails.
    #[arg(long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// The ciphertext is base64 text (as `encrypt --base64` writes it), not raw bytes.
    #[arg(long)]
    base64: bool,
    #[command(flatten)]
    store: StoreArgs,
}

/// `generate-data-key`.
#[derive(Debug, Args)]
pub(crate) struct DataKeyArgs {
    /// The key's id, a UUID.
    #[arg(long, value_name = "ID")]
    key: String,
    /// Length of the data key in bytes: 1 to 1024. Default: 32, an AES-256 key.
    #[arg(long, value_name = "N")]
    bytes: Option<u32>,
    /// Encryption context bound to the encrypted data key; decrypt must give the same.
    #[arg(long, value_name = "TEXT")]
    context: Option<String>,
    #[command(flatten)]
    store: StoreArgs,
}

/// Runs a local command; prints the answer or the error, and gives the exit status.
pub(crate) fn run(command: LocalCommand) -> ExitCode {
    match execute(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("keylife: {failure}");
            ExitCode::FAILURE
        }
    }
}

/// Why a command failed. Its `Display` is the message after `keylife: `; none contains a
/// secret (the library's and the configuration's messages never do).
#[derive(Debug)]
enum Failure {
    /// The library refused: its message and stable code.
    Kms(Error),
    /// The configuration (root key, data directory, zones) is wrong.
    Config(ConfigError),
    /// Anything else: reading the input, writing the output.
    Other(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Kms(error) => write!(f, "{error} [{}]", error.code()),
            Failure::Config(error) => write!(f, "{error}"),
            Failure::Other(message) => f.write_str(message),
        }
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Failure {
        Failure::Kms(error)
    }
}

impl From<ConfigError> for Failure {
    fn from(error: ConfigError) -> Failure {
        Failure::Config(error)
    }
}

fn execute(command: LocalCommand) -> Result<(), Failure> {
    match command {
        LocalCommand::Key(command) => key(command),
        LocalCommand::Encrypt(args) => encrypt(args),
        LocalCommand::Decrypt(args) => decrypt(args),
        LocalCommand::GenerateDataKey(args) => generate_data_key(args),
    }
}

// ----- the store ------------------------------------------------------------------------

/// Which zone store a command may create. Only the commands that put a key in a zone create
/// its store, so that a mistyped `--zone` makes no empty store (which would also stop the
/// default zone from being found).
#[derive(Debug, Clone, Copy)]
enum NewStore<'a> {
    /// None: the chosen zone must have a store.
    Never,
    /// The chosen zone's (`key create`).
    Chosen,
    /// This zone's, besides the chosen one, which must exist (`key replicate --to`).
    Target(&'a str),
}

/// The zones of a data directory, opened and linked, and the one the command acts in.
struct Zones {
    zones: Vec<Arc<Kms>>,
    chosen: usize,
    /// The store directory this command created for a replication target, if any.
    created_target: Option<PathBuf>,
}

impl Zones {
    /// Opens every zone whose store is in `--data`, plus the chosen zone, and runs what is due
    /// in each. `new` says which store may be created.
    fn open(store: &StoreArgs, new: NewStore<'_>) -> Result<Zones, Failure> {
        let root_key = RootKeyBytes::load(store.root_key_file.as_deref())?;
        let data = &store.data;
        let existing = zone_stores(data)?;
        let chosen = match &store.zone {
            Some(zone) => zone.clone(),
            None => match existing.as_slice() {
                [] => DEFAULT_ZONE.to_owned(),
                [only] => only.clone(),
                several => {
                    return Err(Failure::Other(format!(
                        "{} holds the stores of several zones ({}): choose one with --zone or \
                         KEYLIFE_ZONE",
                        data.display(),
                        several.join(", ")
                    )));
                }
            },
        };
        config::check_zone_name(&chosen)?;
        let mut names = existing;
        let mut created_target = None;
        if !names.contains(&chosen) {
            if !matches!(new, NewStore::Chosen) {
                return Err(Failure::Other(if names.is_empty() {
                    format!(
                        "{} holds no key store yet: `keylife key create` makes one (in zone \
                         {chosen})",
                        data.display()
                    )
                } else {
                    format!(
                        "{} holds no store of zone {chosen} (its zones: {})",
                        data.display(),
                        names.join(", ")
                    )
                }));
            }
            names.push(chosen.clone());
        }
        if let NewStore::Target(target) = new {
            config::check_zone_name(target)?;
            if !names.iter().any(|name| name == target) {
                let dir = config::zone_dir(data, target);
                if !dir.exists() {
                    created_target = Some(dir);
                }
                names.push(target.to_owned());
            }
        }
        names.sort();
        let zones = config::open_zones(data, &names, &root_key)?;
        drop(root_key);
        for kms in &zones {
            keylife::server::run_due_logged(kms);
        }
        let chosen = zones
            .iter()
            .position(|kms| kms.zone() == chosen)
            .ok_or_else(|| Failure::Other(format!("zone {chosen} was not opened")))?;
        Ok(Zones {
            zones,
            chosen,
            created_target,
        })
    }

    /// The zone the command acts in.
    fn kms(&self) -> &Kms {
        &self.zones[self.chosen]
    }

    /// Closes every zone and removes the replication target's store if this command created
    /// it: after a refused replication it holds nothing.
    fn close_and_forget_target(self) {
        let Zones {
            zones,
            created_target,
            ..
        } = self;
        drop(zones);
        if let Some(dir) = created_target
            && let Err(error) = std::fs::remove_dir_all(&dir)
        {
            eprintln!(
                "keylife: warning: cannot remove the empty store {}: {error}",
                dir.display()
            );
        }
    }
}

/// The zones under `data` that hold a store (a subdirectory with a valid zone name and sled's
/// or keylife's files in it), sorted. None if `data` does not exist yet.
fn zone_stores(data: &Path) -> Result<Vec<String>, Failure> {
    if !data.exists() {
        return Ok(Vec::new());
    }
    if !data.is_dir() {
        return Err(Failure::Other(format!(
            "the data directory {} is not a directory",
            data.display()
        )));
    }
    Ok(config::existing_zones(data)?)
}

/// A key id from the command line; not a UUID is the API's `bad-request`.
fn key_id(text: &str) -> Result<KeyId, Failure> {
    Ok(KeyId::parse(text)?)
}

// ----- key management -------------------------------------------------------------------

fn key(command: KeyCommand) -> Result<(), Failure> {
    match command {
        KeyCommand::Create(args) => {
            let zones = Zones::open(&args.store, NewStore::Chosen)?;
            let mut request = CreateKey::new(args.name).multi_zone(args.multi_zone);
            if let Some(description) = args.description {
                request = request.description(description);
            }
            let created = zones.kms().create_key(&request)?;
            output(args.store.json, &created, || {
                let mut text = format!(
                    "Created key {} in zone {}.\n",
                    created.id, created.origin_zone
                );
                text.push_str(&fields(&[
                    ("id", created.id.to_string()),
                    ("name", created.name.clone()),
                    ("description", or_dash(created.description.as_deref())),
                    ("status", status(created.status)),
                    ("multi-zone", yes_no(created.multi_zone)),
                    ("origin-zone", created.origin_zone.clone()),
                    ("created-at", time(created.created_at)),
                    ("revision", created.revision.seq.to_string()),
                ]));
                text
            })
        }
        KeyCommand::List(args) => {
            let zones = Zones::open(&args.store, NewStore::Never)?;
            let list = zones.kms().list_keys()?;
            output(args.store.json, &list, || {
                if list.kms_keys.is_empty() {
                    return format!("No keys in zone {}.\n", zones.kms().zone());
                }
                let mut table = Table::new(&[
                    "ID", "NAME", "STATUS", "VERSION", "ROTATION", "ORIGIN", "REPLICAS",
                ]);
                for key in &list.kms_keys {
                    table.row(vec![
                        key.id.to_string(),
                        key.name.clone(),
                        status(key.status),
                        key.material.version.to_string(),
                        if key.rotation.automatic {
                            format!("every {}d", key.rotation.rotation_period)
                        } else {
                            "off".to_owned()
                        },
                        key.origin_zone.clone(),
                        list_or_dash(&key.replicas),
                    ]);
                }
                table.render()
            })
        }
        KeyCommand::Get(args) => {
            let id = key_id(&args.id)?;
            let zones = Zones::open(&args.store, NewStore::Never)?;
            let details = zones.kms().get_key(id)?;
            output(args.store.json, &details, || describe(&details))
        }
        KeyCommand::Enable(args) => {
            let id = key_id(&args.id)?;
            let zones = Zones::open(&args.store, NewStore::Never)?;
            let answer = zones.kms().enable_key(id, None)?;
            output(args.store.json, &answer, || match answer.status {
                SuccessStatus::AlreadyApplied => format!("Key {id} was already enabled.\n"),
                _ => format!("Key {id} enabled.\n"),
            })
        }
        KeyCommand::Disable(args) => {
            let id = key_id(&args.id)?;
            let zones = Zones::open(&args.store, NewStore::Never)?;
            let answer = zones.kms().disable_key(id, None)?;
            output(args.store.json, &answer, || match answer.status {
                SuccessStatus::AlreadyApplied => format!("Key {id} was already disabled.\n"),
                _ => format!("Key {id} disabled.\n"),
            })
        }
        KeyCommand::Rotate(args) => {
            let id = key_id(&args.id)?;
            let zones = Zones::open(&args.store, NewStore::Never)?;
            let answer = zones.kms().rotate_key(id, None)?;
            let version = if args.store.json {
                None
            } else {
                zones
                    .kms()
                    .get_key(id)
                    .ok()
                    .map(|key| key.key.material.version)
            };
            output(args.store.json, &answer, || {
                let headline = match version {
                    Some(version) => format!("Key {id} rotated: material version {version}.\n"),
                    None => format!("Key {id} rotated.\n"),
                };
                headline + &rotation(&answer)
            })
        }
        KeyCommand::EnableRotation(args) => {
            let id = key_id(&args.id)?;
            let zones = Zones::open(&args.store, NewStore::Never)?;
            let answer = zones.kms().enable_key_rotation(id, args.period, None)?;
            output(args.store.json, &answer, || {
                format!(
                    "Key {id}: automatic rotation every {} days.\n",
                    answer.rotation.rotation_period
                ) + &rotation(&answer)
            })
        }
        KeyCommand::DisableRotation(args) => {
            let id = key_id(&args.id)?;
            let zones = Zones::open(&args.store, NewStore::Never)?;
            let answer = zones.kms().disable_key_rotation(id, None)?;
            output(args.store.json, &answer, || {
                format!("Key {id}: automatic rotation disabled.\n") + &rotation(&answer)
            })
        }
        KeyCommand::ListRotations(args) => {
            let id = key_id(&args.id)?;
            let zones = Zones::open(&args.store, NewStore::Never)?;
            let list = zones.kms().list_key_rotations(id)?;
            output(args.store.json, &list, || {
                if list.rotations.is_empty() {
                    return format!(
                        "Key {id} has not been rotated: version 1 is its only version.\n"
                    );
                }
                let mut table = Table::new(&["VERSION", "ROTATED-AT", "AUTOMATIC"]);
                for entry in &list.rotations {
                    table.row(vec![
                        entry.version.to_string(),
                        time(entry.rotated_at),
                        yes_no(entry.automatic),
                    ]);
                }
                table.render()
            })
        }
        KeyCommand::ScheduleDeletion(args) => {
            let id = key_id(&args.id)?;
            let zones = Zones::open(&args.store, NewStore::Never)?;
            let answer = zones.kms().schedule_key_deletion(id, args.days, None)?;
            output(args.store.json, &answer, || {
                format!(
                    "Key {id} is pending deletion: it will be destroyed at {}.\n\
                     Until then, `keylife key cancel-deletion {id}` cancels the deletion.\n",
                    time(answer.delete_at)
                )
            })
        }
        KeyCommand::CancelDeletion(args) => {
            let id = key_id(&args.id)?;
            let zones = Zones::open(&args.store, NewStore::Never)?;
            let answer = zones.kms().cancel_key_deletion(id, None)?;
            output(args.store.json, &answer, || {
                format!(
                    "Key {id}: deletion cancelled; the key is disabled \
                     (`keylife key enable {id}` to use it again).\n"
                )
            })
        }
        KeyCommand::Replicate(args) => {
            let id = key_id(&args.id)?;
            let zones = Zones::open(&args.store, NewStore::Target(&args.to))?;
            let answer = match zones.kms().replicate_key(id, &args.to, None) {
                Ok(answer) => answer,
                Err(error) => {
                    zones.close_and_forget_target();
                    return Err(error.into());
                }
            };
            // The first delivery is made in the background at once: see it through.
            zones.kms().wait_for_deliveries();
            let state = if args.store.json {
                None
            } else {
                zones.kms().get_key(id).ok().and_then(|key| {
                    key.replicas_status
                        .into_iter()
                        .find(|replica| replica.zone == args.to)
                })
            };
            output(args.store.json, &answer, || {
                let mut text = format!("Key {id}: replica registered in zone {}.\n", args.to);
                if let Some(state) = &state {
                    text.push_str(&match &state.last_failure {
                        None => format!(
                            "Delivered: the replica is at the key's revision {}.\n",
                            state.last_applied_watermark
                        ),
                        Some(failure) => format!(
                            "Delivery failed ({}); the next command retries it.\n",
                            failure.error
                        ),
                    });
                }
                text
            })
        }
    }
}

/// The human listing of `key get`.
fn describe(details: &KeyDetails) -> String {
    let key: &KeySummary = &details.key;
    let mut pairs = vec![
        ("id", key.id.to_string()),
        ("name", key.name.clone()),
        ("description", or_dash(key.description.as_deref())),
        (
            "status",
            format!("{} since {}", status(key.status), time(key.status_since)),
        ),
    ];
    if let Some(delete_at) = key.delete_at {
        pairs.push(("delete-at", time(delete_at)));
    }
    pairs.extend([
        ("usage", api_name(&key.usage)),
        ("source", api_name(&key.source)),
        ("multi-zone", yes_no(key.multi_zone)),
        ("origin-zone", key.origin_zone.clone()),
        ("created-at", time(key.created_at)),
        (
            "revision",
            format!("{} at {}", key.revision.seq, time(key.revision.at)),
        ),
        (
            "material",
            format!(
                "version {}, made {} ({})",
                key.material.version,
                time(key.material.created_at),
                if key.material.automatic {
                    "automatic rotation"
                } else if key.material.version == 1 {
                    "creation"
                } else {
                    "manual rotation"
                }
            ),
        ),
        (
            "rotation",
            if key.rotation.automatic {
                format!(
                    "automatic, every {} days, next at {}",
                    key.rotation.rotation_period,
                    time(key.rotation.next_at)
                )
            } else {
                "manual only".to_owned()
            },
        ),
        ("manual-rotations", key.rotation.manual_count.to_string()),
        ("replicas", list_or_dash(&key.replicas)),
    ]);
    let mut text = fields(&pairs);
    if !details.replicas_status.is_empty() {
        let mut table = Table::new(&["REPLICA", "APPLIED-REVISION", "LAST-FAILURE"]);
        for replica in &details.replicas_status {
            table.row(vec![
                replica.zone.clone(),
                replica.last_applied_watermark.to_string(),
                replica.last_failure.as_ref().map_or_else(
                    || "-".to_owned(),
                    |failure| format!("{} at {}", failure.error, time(failure.failed_at)),
                ),
            ]);
        }
        text.push('\n');
        text.push_str(&table.render());
    }
    text
}

/// The human listing of a rotation answer.
fn rotation(answer: &RotationResponse) -> String {
    let rotation = &answer.rotation;
    fields(&[
        ("automatic", yes_no(rotation.automatic)),
        (
            "rotation-period",
            format!("{} days", rotation.rotation_period),
        ),
        ("next-at", time(rotation.next_at)),
        ("manual-count", rotation.manual_count.to_string()),
    ])
}

// ----- cryptography ---------------------------------------------------------------------

fn encrypt(args: EncryptArgs) -> Result<(), Failure> {
    let id = key_id(&args.key)?;
    let json = args.store.json;
    let to_stdout = is_stdio(args.output.as_deref());
    if to_stdout && !json && !args.base64 && io::stdout().is_terminal() {
        return Err(Failure::Other(
            "refusing to write a binary ciphertext to a terminal: give --output FILE, --base64 \
             or --json"
                .to_owned(),
        ));
    }
    let zones = Zones::open(&args.store, NewStore::Never)?;
    let kms = zones.kms();
    let plaintext = read_input(
        args.input.as_deref(),
        kms.limits().max_plaintext_bytes,
        "plaintext",
    )?;
    let sealed = kms.encrypt(id, &plaintext, context(args.context.as_deref()))?;
    drop(plaintext);
    let bytes = if json {
        json_text(&sealed)?.into_bytes()
    } else if args.base64 {
        format!("{}\n", BASE64.encode(&sealed.ciphertext)).into_bytes()
    } else {
        sealed.ciphertext
    };
    write_output(args.output.as_deref(), &bytes, false)
}

fn decrypt(args: DecryptArgs) -> Result<(), Failure> {
    let id = key_id(&args.key)?;
    let zones = Zones::open(&args.store, NewStore::Never)?;
    let kms = zones.kms();
    let largest = kms
        .limits()
        .max_plaintext_bytes
        .saturating_add(keylife::crypto::OVERHEAD);
    let ciphertext = if args.base64 {
        // Base64 takes 4 characters per 3 bytes; allow line breaks and spaces on top.
        let text = read_input(args.input.as_deref(), largest / 3 * 8 + 64, "ciphertext")?;
        let compact: Vec<u8> = text
            .iter()
            .copied()
            .filter(|byte| !byte.is_ascii_whitespace())
            .collect();
        BASE64.decode(compact).map_err(|_| Error::BadRequest {
            field: "ciphertext",
            reason: "is not valid base64 (--base64 was given)".to_owned(),
        })?
    } else {
        read_input(args.input.as_deref(), largest, "ciphertext")?.to_vec()
    };
    let opened = kms.decrypt(id, &ciphertext, context(args.context.as_deref()))?;
    if args.store.json {
        let text = Zeroizing::new(json_text(&opened)?);
        write_output(args.output.as_deref(), text.as_bytes(), true)
    } else {
        write_output(args.output.as_deref(), opened.plaintext.as_bytes(), true)
    }
}

fn generate_data_key(args: DataKeyArgs) -> Result<(), Failure> {
    let id = key_id(&args.key)?;
    let zones = Zones::open(&args.store, NewStore::Never)?;
    let spec = args.bytes.map_or(DataKeySpec::Aes256, DataKeySpec::Bytes);
    let data_key = zones
        .kms()
        .generate_data_key(id, spec, context(args.context.as_deref()))?;
    let text = if args.store.json {
        Zeroizing::new(json_text(&data_key)?)
    } else {
        let plaintext = Zeroizing::new(BASE64.encode(data_key.plaintext.as_bytes()));
        Zeroizing::new(fields(&[
            ("key", id.to_string()),
            ("bytes", data_key.plaintext.len().to_string()),
            ("plaintext", plaintext.to_string()),
            ("ciphertext", BASE64.encode(&data_key.ciphertext)),
        ]))
    };
    write_output(None, text.as_bytes(), true)
}

/// The encryption context of the command line: absent, or the text's bytes.
fn context(text: Option<&str>) -> Option<&[u8]> {
    text.map(str::as_bytes)
}

// ----- input and output -----------------------------------------------------------------

/// Standard input or output: no path, or `-`.
fn is_stdio(path: Option<&Path>) -> bool {
    path.is_none_or(|path| path == Path::new("-"))
}

/// Reads all of `path` (or standard input), refusing more than `largest` bytes as a
/// `bad-request` on `field` without reading the rest.
fn read_input(
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
fn write_output(path: Option<&Path>, bytes: &[u8], secret: bool) -> Result<(), Failure> {
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
fn json_text<T: Serialize>(value: &T) -> Result<String, Failure> {
    let mut text = serde_json::to_string_pretty(value)
        .map_err(|error| Failure::Other(format!("cannot write JSON: {error}")))?;
    text.push('\n');
    Ok(text)
}

/// Prints `value` as JSON, or the text `human` makes.
fn output<T: Serialize>(
    json: bool,
    value: &T,
    human: impl FnOnce() -> String,
) -> Result<(), Failure> {
    let text = if json { json_text(value)? } else { human() };
    write_output(None, text.as_bytes(), false)
}

// ----- formatting -----------------------------------------------------------------------

fn status(status: KeyStatus) -> String {
    api_name(&status)
}

/// The API's name of an enum value (`enabled`, `encrypt-decrypt`, ...): its JSON string.
fn api_name<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        _ => "?".to_owned(),
    }
}

/// A timestamp to the second, RFC 3339 UTC.
fn time(at: Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn yes_no(value: bool) -> String {
    if value { "yes" } else { "no" }.to_owned()
}

fn or_dash(text: Option<&str>) -> String {
    text.unwrap_or("-").to_owned()
}

fn list_or_dash(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_owned()
    } else {
        items.join(", ")
    }
}
