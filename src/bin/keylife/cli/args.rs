//! The command line of the local commands: what each takes.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use keylife::store::Engine;

/// The zone of a data directory that holds no store yet (the library's default zone).
pub(super) const DEFAULT_ZONE: &str = "local";

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
    /// Manage keys: create, list, get, enable, disable, rotate, schedule or cancel deletion,
    /// replicate.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Encrypt bytes (a file or standard input) with a key; writes the raw ciphertext.
    ///
    /// The ciphertext is 49 bytes longer than the plaintext and names its key and material
    /// version; `keylife decrypt` opens it with the same key and context.
    Encrypt(EncryptArgs),
    /// Decrypt a ciphertext (a file or standard input); writes the plaintext bytes.
    ///
    /// The ciphertext is one made by `keylife encrypt` or the API's encrypt, in any zone that
    /// holds the key.
    /// Every material version of the key decrypts. A damaged ciphertext or a wrong context
    /// is `invalid-ciphertext`; a ciphertext of another key is `incorrect-key`.
    Decrypt(DecryptArgs),
    /// Generate a data key, in the clear and encrypted under a key.
    ///
    /// Both are printed in base64. Use the clear data key and keep only its encrypted form:
    /// `keylife decrypt --base64` gives the data key back from the encrypted form (the
    /// `ciphertext` value, or `--json` and its `ciphertext` member).
    GenerateDataKey(DataKeyArgs),
    /// Check an audit log: `keylife audit verify`.
    #[command(subcommand)]
    Audit(super::audit::AuditCommand),
    /// Back up a zone's store to a file, or check a backup file (`keylife backup inspect`).
    ///
    /// The file holds every key, sealed material version (still sealed under the root key),
    /// index and replica delivery state as of one commit, and a MAC over all of it under a key
    /// derived from the root key. Restore it with `keylife restore`.
    ///
    /// Exit status: 0 on success; 1 when the store or the file refused; 2 for a malformed
    /// command line.
    Backup(super::backup::BackupArgs),
    /// Build a zone's store from a backup file, with either engine.
    ///
    /// The store is built beside DATA/ZONE, checked, then renamed into place: the target must
    /// be absent or empty, and a refused or interrupted restore leaves it as it was. Each of
    /// the zone's own keys continues 2^32 revisions above the backup's, so that replicas
    /// follow it again; what happened after the backup is lost.
    ///
    /// Exit status: 0 on success; 1 when the file does not verify under the root key, the
    /// target is not empty, or the store cannot be built; 2 for a malformed command line.
    Restore(super::backup::RestoreArgs),
}

/// `keylife key ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum KeyCommand {
    /// Create a key: enabled, material version 1, automatic rotation every 365 days.
    Create(CreateArgs),
    /// List the zone's keys, replicas included, by id (ids are UUIDv7: about creation order).
    List(ListArgs),
    /// Show a key: status, newest material version, rotation settings, replicas.
    Get(IdArgs),
    /// Enable a disabled key (nothing changes if it is already enabled).
    Enable(IdArgs),
    /// Disable a key: it refuses encryption, decryption and rotation until enabled again.
    Disable(IdArgs),
    /// Rotate a key now: a new material version.
    ///
    /// The new version encrypts from now on; older ones still decrypt. At most 10 manual
    /// rotations per key.
    Rotate(IdArgs),
    /// Turn automatic rotation on.
    ///
    /// The period is 90 to 2560 days (default 365); the next rotation is one period from now.
    /// Refused (`conflict`) if automatic rotation is already on.
    EnableRotation(EnableRotationArgs),
    /// Turn automatic rotation off.
    ///
    /// Refused (`conflict`) if it is already off.
    DisableRotation(IdArgs),
    /// List a key's rotations: material versions 2 and up, oldest first.
    ListRotations(IdArgs),
    /// Schedule a key's deletion.
    ///
    /// The key is destroyed 7 to 30 days (default 30) from now; until then it refuses every
    /// use but `cancel-deletion`. Its replicas follow.
    ScheduleDeletion(ScheduleDeletionArgs),
    /// Cancel a scheduled deletion.
    ///
    /// The key becomes disabled: enable it to use it again.
    CancelDeletion(IdArgs),
    /// Import keys from a seed file: fixed ids, names and material (bring your own key).
    ///
    /// The file is the JSON of `keylife serve --seed` (docs/design.md, "Seeded and imported
    /// keys"). A key without `zone` goes to the chosen zone, whose store is created if
    /// missing; a key naming a zone goes there (its store must be in DIR). Every key is
    /// checked before anything is written: a file with one bad key imports nothing. A key
    /// already present with the same material is left as it is, whatever happened to it
    /// since, so importing a file again changes nothing. Prints, per key, whether it was
    /// created or already present.
    Import(ImportArgs),
    /// Replicate a multi-zone key to another zone.
    ///
    /// The key must be multi-zone, enabled, and created in this zone. The target zone's
    /// store, DATA/ZONE, is created if missing. The replica has the same id and material; it follows every later rotation and deletion of the key, and its enabled
    /// or disabled status is its own.
    Replicate(ReplicateArgs),
}

/// Where the store is, and how to print the answer: the options of every local command. Each
/// names its heading (rather than `next_help_heading`, which would also head the options of a
/// command declared after them). Flattened into every local command, it also ends their help.
#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub(crate) struct StoreArgs {
    /// Data directory: the store of zone ZONE is the subdirectory DIR/ZONE, as with `keylife
    /// serve`. `key create` (and `key replicate` for its target) creates a zone's store when
    /// missing; the other commands need an existing one.
    #[arg(long, value_name = "DIR", env = "KEYLIFE_DATA", help_heading = "Store")]
    pub(super) data: PathBuf,
    /// The zone to act in. Default: the one zone whose store is in DIR, or `local` if DIR
    /// holds none yet. Required when DIR holds several zones.
    #[arg(
        long,
        value_name = "NAME",
        env = "KEYLIFE_ZONE",
        help_heading = "Store"
    )]
    pub(super) zone: Option<String>,
    /// File holding the root key (base64 of 32 bytes on one line, as `keylife root-key
    /// generate` prints it); else the environment variable KEYLIFE_ROOT_KEY. The root key is
    /// never taken from a command-line value.
    #[arg(long, value_name = "FILE", help_heading = "Store")]
    pub(super) root_key_file: Option<PathBuf>,
    /// The engine of a store this command creates: sled (the default) or redb. An existing
    /// store always opens with the engine it was created with; naming another is an error.
    #[arg(
        long,
        value_name = "ENGINE",
        env = "KEYLIFE_ENGINE",
        help_heading = "Store"
    )]
    pub(super) engine: Option<Engine>,
    /// Print the API's JSON answer instead of a human listing.
    #[arg(long, help_heading = "Output")]
    pub(super) json: bool,
}

/// `key create`.
#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    /// The key's name: 1 to 256 characters, unique in the zone.
    #[arg(long)]
    pub(super) name: String,
    /// A description, up to 1024 characters.
    #[arg(long)]
    pub(super) description: Option<String>,
    /// Allow the key to be replicated to other zones (`key replicate`); only set at creation.
    #[arg(long)]
    pub(super) multi_zone: bool,
    #[command(flatten)]
    pub(super) store: StoreArgs,
}

/// `key list`.
#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    pub(super) store: StoreArgs,
}

/// The commands that take just a key; the others that take a key start with these.
#[derive(Debug, Args)]
pub(crate) struct IdArgs {
    /// The key: its id (a UUID, as `key create` and `key list` show it) or its name.
    #[arg(value_name = "KEY")]
    pub(super) key: String,
    #[command(flatten)]
    pub(super) store: StoreArgs,
}

/// `key enable-rotation`.
#[derive(Debug, Args)]
pub(crate) struct EnableRotationArgs {
    #[command(flatten)]
    pub(super) target: IdArgs,
    /// Days between automatic rotations: 90 to 2560 (default 365).
    #[arg(long, value_name = "DAYS")]
    pub(super) period: Option<u32>,
}

/// `key schedule-deletion`.
#[derive(Debug, Args)]
pub(crate) struct ScheduleDeletionArgs {
    #[command(flatten)]
    pub(super) target: IdArgs,
    /// Days until the key is destroyed: 7 to 30 (default 30).
    #[arg(long, value_name = "N")]
    pub(super) days: Option<u32>,
}

/// `key import`.
#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    /// The seed file (JSON): `{"keys": [{"id", "name", "versions": [{"material" | "derive"}],
    /// ...}]}`.
    #[arg(long, value_name = "FILE")]
    pub(super) file: PathBuf,
    #[command(flatten)]
    pub(super) store: StoreArgs,
}

/// `key replicate`.
#[derive(Debug, Args)]
pub(crate) struct ReplicateArgs {
    #[command(flatten)]
    pub(super) target: IdArgs,
    /// The zone to replicate to (not `--zone`, which is the key's own zone).
    #[arg(long, value_name = "ZONE")]
    pub(super) to: String,
}

/// The key and the encryption context of `encrypt`, `decrypt` and `generate-data-key`.
#[derive(Debug, Args)]
pub(crate) struct CryptoArgs {
    /// The key: its id (a UUID) or its name.
    #[arg(long, value_name = "KEY")]
    pub(super) key: String,
    /// Encryption context: text bound to the ciphertext (additional authenticated data);
    /// decrypting needs the same. Absent and empty are the same.
    #[arg(long, value_name = "TEXT")]
    pub(super) context: Option<String>,
    #[command(flatten)]
    pub(super) store: StoreArgs,
}

/// `encrypt`.
#[derive(Debug, Args)]
pub(crate) struct EncryptArgs {
    #[command(flatten)]
    pub(super) crypto: CryptoArgs,
    /// Read the plaintext from FILE (default, or `-`: standard input).
    #[arg(long, value_name = "FILE")]
    pub(super) input: Option<PathBuf>,
    /// Write the ciphertext (with --json, the API's JSON answer) to FILE (default, or `-`:
    /// standard output).
    #[arg(long, value_name = "FILE")]
    pub(super) output: Option<PathBuf>,
    /// Write the ciphertext as base64 text (one line) rather than raw bytes.
    #[arg(long, conflicts_with = "json")]
    pub(super) base64: bool,
}

/// `decrypt`.
#[derive(Debug, Args)]
pub(crate) struct DecryptArgs {
    #[command(flatten)]
    pub(super) crypto: CryptoArgs,
    /// Read the ciphertext from FILE (default, or `-`: standard input).
    #[arg(long, value_name = "FILE")]
    pub(super) input: Option<PathBuf>,
    /// Write the plaintext (with --json, the API's JSON answer) to FILE (default, or `-`:
    /// standard output). A new file is readable by its owner only; nothing is written if
    /// decryption fails.
    #[arg(long, value_name = "FILE")]
    pub(super) output: Option<PathBuf>,
    /// The ciphertext is base64 text (as `encrypt --base64` writes it), not raw bytes.
    #[arg(long)]
    pub(super) base64: bool,
}

/// `generate-data-key`.
#[derive(Debug, Args)]
pub(crate) struct DataKeyArgs {
    #[command(flatten)]
    pub(super) crypto: CryptoArgs,
    /// Length of the data key in bytes: 1 to 1024. Default: 32, an AES-256 key.
    #[arg(long, value_name = "N")]
    pub(super) bytes: Option<u32>,
}
