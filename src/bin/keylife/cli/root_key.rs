//! `keylife root-key rotate`: moves the stores of a data directory to a new root key.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Args;
use keylife::store::{AuthenticatedBackend, Engine, Opened};
use keylife::{Error, rotate_root_key};

use super::Failure;
use crate::config::{self, RootKeyBytes};

/// What `keylife root-key rotate` takes.
#[derive(Debug, Args)]
#[command(after_help = ROTATE_AFTER_HELP)]
pub(crate) struct RotateArgs {
    /// Data directory, as with `keylife serve`: the store of zone ZONE is DIR/ZONE.
    #[arg(long, value_name = "DIR", env = "KEYLIFE_DATA")]
    data: PathBuf,
    /// The zone whose store to rotate. Default: every zone whose store is in DIR (`keylife
    /// serve` opens them all with one root key).
    #[arg(long, value_name = "NAME", env = "KEYLIFE_ZONE")]
    zone: Option<String>,
    /// File holding the current (old) root key (base64 of 32 bytes); else the environment
    /// variable KEYLIFE_ROOT_KEY. The file is left as it is.
    #[arg(long, value_name = "OLD")]
    root_key_file: Option<PathBuf>,
    /// File holding the new root key (base64 of 32 bytes, as `keylife root-key generate`
    /// prints it).
    #[arg(long, value_name = "NEW")]
    new_root_key_file: PathBuf,
}

const ROTATE_AFTER_HELP: &str = "\
Stop the server first (a store has one user at a time), then start it with the new key.

The old root key file is left alone: deciding what becomes of it is the operator's. It is \
still needed to verify audit log lines written before the rotation (`keylife audit verify \
--root-key-file OLD --root-key-file NEW FILE...`) and to restore a backup taken before it; \
it no longer opens the rotated stores (`wrong-root-key`).

Exit status: 0 when every zone is under the new key; 1 otherwise, naming the zone and why; \
2 for a malformed command line.";

/// Runs `keylife root-key rotate`.
pub(crate) fn rotate(args: &RotateArgs) -> ExitCode {
    match rotate_zones(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("keylife: {failure}");
            ExitCode::FAILURE
        }
    }
}

fn rotate_zones(args: &RotateArgs) -> Result<(), Failure> {
    let old = RootKeyBytes::load(args.root_key_file.as_deref())?;
    let new = RootKeyBytes::load(Some(&args.new_root_key_file))?;
    let zones = match &args.zone {
        Some(zone) => {
            config::check_zone_name(zone)?;
            vec![zone.clone()]
        }
        None => config::existing_zones(&args.data)?,
    };
    if zones.is_empty() {
        return Err(Failure::Other(format!(
            "{} holds no zone's store",
            args.data.display()
        )));
    }
    let mut failed = 0;
    for zone in &zones {
        let dir = config::zone_dir(&args.data, zone);
        let started = Instant::now();
        match rotate_root_key(&dir, old.root_key(), new.root_key()) {
            Ok(done) => println!(
                "zone {zone} ({}, {}): root key rotated in {:.2} s, at commit {}: {} material \
                 versions sealed again, {} entries authenticated again; the old root key no \
                 longer opens it",
                dir.display(),
                done.engine,
                started.elapsed().as_secs_f64(),
                done.commit_seq,
                done.materials,
                done.entries,
            ),
            Err(Error::WrongRootKey) if opens_with(&dir, &new) => println!(
                "zone {zone} ({}): already under the new root key, left as it is",
                dir.display()
            ),
            Err(error) => {
                failed += 1;
                let hint = match &error {
                    Error::WrongRootKey => " (neither root key opens it)",
                    Error::StoreInUse { .. } => " (stop `keylife serve` or the other user first)",
                    Error::NotDurable { .. } => {
                        " (open it with either key: exactly one of them holds it)"
                    }
                    _ => "",
                };
                eprintln!(
                    "keylife: zone {zone}: cannot rotate the root key of {}: {error} [{}]{hint}",
                    dir.display(),
                    error.code()
                );
            }
        }
    }
    if failed > 0 {
        return Err(Failure::Other(format!(
            "{failed} of {} zone(s) not rotated; the others are under the new root key",
            zones.len()
        )));
    }
    println!(
        "the old root key file was left as it is: keep it to verify audit lines and restore \
         backups made before the rotation"
    );
    Ok(())
}

/// Whether the store in `dir` opens, with every check, under `root`.
fn opens_with(dir: &std::path::Path, root: &RootKeyBytes) -> bool {
    Engine::open(dir, None)
        .and_then(|engine| AuthenticatedBackend::open(engine, &root.root_key()))
        .is_ok_and(|(_, opened)| opened == Opened::Checked)
}
