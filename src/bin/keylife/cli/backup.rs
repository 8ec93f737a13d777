//! `keylife backup`, `keylife backup inspect` and `keylife restore`: a zone's store to a file
//! and back (docs/design.md, "Backup and restore").

use std::ffi::OsStr;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use keylife::store::Engine;
use keylife::store::backup::read_header;
use keylife::{BackupSummary, Error, Kms, KmsOptions, RestoreOptions, RootKey};

use super::Failure;
use super::io::write_atomically;
use crate::config::{self, RootKeyBytes};

/// `keylife backup ...`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(crate) struct BackupArgs {
    #[command(subcommand)]
    command: Option<BackupCommand>,
    /// Data directory holding the zone's store (DIR/ZONE), as with `keylife serve`. Stop the
    /// server first: a store has one user at a time.
    #[arg(long, value_name = "DIR", env = "KEYLIFE_DATA")]
    data: Option<PathBuf>,
    /// The zone to back up. Default: the one zone whose store is in DIR.
    #[arg(long, value_name = "NAME", env = "KEYLIFE_ZONE")]
    zone: Option<String>,
    /// File holding the root key (base64 of 32 bytes); else KEYLIFE_ROOT_KEY.
    #[arg(long, value_name = "FILE")]
    root_key_file: Option<PathBuf>,
    /// Back up a running zone instead: its API URL as `keylife serve` prints it
    /// (`http://ADDR/v2`, `https://ADDR/v2`). The request is signed with the credential in
    /// EXOSCALE_API_KEY and EXOSCALE_API_SECRET, which needs the `admin` grant; no root key is
    /// needed (the file's MAC is checked by `backup inspect` or `restore`).
    /// --data and --zone are refused with it (KEYLIFE_DATA and KEYLIFE_ZONE are ignored).
    #[arg(long, value_name = "URL", conflicts_with = "root_key_file")]
    url: Option<String>,
    /// With an https:// URL: PEM file of the CA certificates the server's certificate must
    /// chain to (required for HTTPS: no platform root store is read).
    #[arg(long, value_name = "PEM", requires = "url")]
    ca_file: Option<PathBuf>,
    /// The backup file to write (created, mode 0600, replaced only once complete).
    #[arg(long, value_name = "FILE", required = true)]
    out: Option<PathBuf>,
}

/// `keylife backup inspect`.
#[derive(Debug, Subcommand)]
enum BackupCommand {
    /// Verify a backup file under the root key and summarise it.
    ///
    /// Checks the MAC over every byte and every entry's framing. Exit status: 0 when the file
    /// verifies; 1 when it does not (changed, cut short, not a backup, another root key).
    Inspect(InspectArgs),
}

/// What `keylife backup inspect` takes.
#[derive(Debug, Args)]
struct InspectArgs {
    /// File holding the root key the backed-up store was sealed under; else KEYLIFE_ROOT_KEY.
    #[arg(long, value_name = "FILE")]
    root_key_file: Option<PathBuf>,
    /// The backup file.
    #[arg(value_name = "FILE")]
    file: PathBuf,
}

/// What `keylife restore` takes.
#[derive(Debug, Args)]
pub(crate) struct RestoreArgs {
    /// The backup file (made by `keylife backup`).
    #[arg(long, value_name = "FILE")]
    from: PathBuf,
    /// Data directory: the store is built in DIR/ZONE, ZONE being the backup's zone, which
    /// must be absent or empty.
    #[arg(long, value_name = "DIR", env = "KEYLIFE_DATA")]
    data: PathBuf,
    /// File holding the backed-up store's root key; else KEYLIFE_ROOT_KEY.
    #[arg(long, value_name = "FILE")]
    root_key_file: Option<PathBuf>,
    /// The new store's engine: sled (the default) or redb, whatever the backup's was.
    #[arg(long, value_name = "ENGINE")]
    engine: Option<Engine>,
}

/// Runs `keylife backup ...`.
pub(super) fn backup(args: BackupArgs) -> Result<(), Failure> {
    if let Some(BackupCommand::Inspect(inspect)) = args.command {
        return self::inspect(&inspect);
    }
    if let Some(url) = args.url.as_deref() {
        // clap counts a value from the environment as given: tell them apart here, so that
        // KEYLIFE_DATA set for the local commands does not refuse --url.
        for (option, value, variable) in [
            (
                "--data",
                args.data.as_deref().map(Path::as_os_str),
                "KEYLIFE_DATA",
            ),
            (
                "--zone",
                args.zone.as_deref().map(OsStr::new),
                "KEYLIFE_ZONE",
            ),
        ] {
            if value.is_some() && value != std::env::var_os(variable).as_deref() {
                return Err(Failure::Other(format!(
                    "--url backs up a running zone: {option} (a local store) cannot be used \
                     with it"
                )));
            }
        }
        let out = args
            .out
            .as_deref()
            .ok_or_else(|| Failure::Other("give the backup file with --out FILE".to_owned()))?;
        return super::remote::backup(url, args.ca_file.as_deref(), out);
    }
    let data = args.data.as_deref().ok_or_else(|| {
        Failure::Other("give the data directory with --data DIR (or KEYLIFE_DATA)".to_owned())
    })?;
    let out = args
        .out
        .as_deref()
        .ok_or_else(|| Failure::Other("give the backup file with --out FILE".to_owned()))?;
    let root = RootKeyBytes::load(args.root_key_file.as_deref())?;
    let zone = one_zone(data, args.zone.as_deref())?;
    let dir = config::zone_dir(data, &zone);
    let kms = Kms::open(&dir, root.root_key(), KmsOptions::new(zone.clone()))
        .map_err(|error| open_failure(&zone, &dir, error))?;
    drop(root);
    let summary = write_atomically(out, |file| kms.backup(file).map_err(Failure::Kms))?;
    println!(
        "{}: {summary}; writes paused {:.1} ms",
        out.display(),
        summary.writes_paused.as_secs_f64() * 1000.0
    );
    Ok(())
}

/// Runs `keylife backup inspect`.
fn inspect(args: &InspectArgs) -> Result<(), Failure> {
    let root = RootKeyBytes::load(args.root_key_file.as_deref())?;
    let summary = read_summary(&args.file, root.root_key())?;
    println!("{}: verifies; {summary}", args.file.display());
    Ok(())
}

/// Runs `keylife restore`.
pub(super) fn restore(args: &RestoreArgs) -> Result<(), Failure> {
    let root = RootKeyBytes::load(args.root_key_file.as_deref())?;
    let bytes = std::fs::read(&args.from)
        .map_err(|error| Failure::Other(format!("cannot read {}: {error}", args.from.display())))?;
    // The zone, hence the target, comes from the header; the restore authenticates the whole
    // file before it writes anything.
    let zone = read_header(&bytes)?.zone;
    config::check_zone_name(&zone)?;
    let target = config::zone_dir(&args.data, &zone);
    let options = RestoreOptions {
        engine: args.engine,
        ..RestoreOptions::default()
    };
    let report = Kms::restore(&mut bytes.as_slice(), &target, root.root_key(), &options)?;
    let summary = &report.backup;
    println!(
        "restored zone {} from {} (commit {}, taken at {}) into {} with {}: {} keys, {} of \
         them this zone's own, moved {} revisions up; {} replicas owed a delivery; {:.2} s",
        summary.zone,
        args.from.display(),
        summary.commit_seq,
        summary.taken_at,
        target.display(),
        report.engine,
        report.backup.keys,
        report.origin_keys,
        report.revision_margin,
        report.replicas_owed,
        report.elapsed.as_secs_f64()
    );
    if !report.deleted_since_backup.is_empty() {
        println!(
            "keys destroyed after the backup (their deletion date has passed), back as pending \
             deletion until the zone's first due run:"
        );
        for id in &report.deleted_since_backup {
            println!("  {id}");
        }
    }
    Ok(())
}

/// The backup in `path`, verified under `root`.
fn read_summary(path: &Path, root: RootKey) -> Result<BackupSummary, Failure> {
    let mut file = BufReader::new(open(path)?);
    Kms::inspect_backup(&mut file, root).map_err(|error| {
        Failure::Other(match error {
            // Neither the check value nor the MAC verifies: told apart from damage only by
            // likelihood.
            Error::WrongRootKey => format!(
                "{}: does not verify: it was taken under another root key (or its header was \
                 damaged) [{}]",
                path.display(),
                error.code()
            ),
            error => format!(
                "{}: does not verify: {error} [{}]",
                path.display(),
                error.code()
            ),
        })
    })
}

fn open(path: &Path) -> Result<File, Failure> {
    File::open(path)
        .map_err(|error| Failure::Other(format!("cannot read {}: {error}", path.display())))
}

/// The zone of `data` to act on: `zone`, else the only one there.
fn one_zone(data: &Path, zone: Option<&str>) -> Result<String, Failure> {
    if let Some(zone) = zone {
        config::check_zone_name(zone)?;
        return Ok(zone.to_owned());
    }
    let zones = config::existing_zones(data)?;
    match zones.as_slice() {
        [only] => Ok(only.clone()),
        [] => Err(Failure::Other(format!(
            "{} holds no zone's store (DIR/ZONE)",
            data.display()
        ))),
        several => Err(Failure::Other(format!(
            "{} holds the stores of several zones ({}): choose one with --zone",
            data.display(),
            several.join(", ")
        ))),
    }
}

fn open_failure(zone: &str, dir: &Path, error: Error) -> Failure {
    match error {
        Error::StoreInUse { .. } => Failure::Other(format!(
            "zone {zone}: the store {} is in use: stop the server first (a store has one user \
             at a time), or back it up over HTTP with --url [store-in-use]",
            dir.display()
        )),
        error => Failure::Other(format!(
            "zone {zone}: cannot open {}: {error} [{}]",
            dir.display(),
            error.code()
        )),
    }
}
