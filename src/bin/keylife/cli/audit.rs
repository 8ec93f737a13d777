//! `keylife audit verify`: checks an audit log's chain and, with `--data`, the head each
//! zone's store recorded.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use keylife::server::audit_log::{self, VerifyError};
use keylife::{Error, Kms, KmsOptions};

use super::Failure;
use crate::config::{self, RootKeyBytes};

/// `keylife audit ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Check an audit log written by `keylife serve --audit-log`.
    ///
    /// Every line must be whole, numbered one more than the line before, and its MAC (under a
    /// key derived from the root key) must verify over the previous line's MAC and its own
    /// bytes. The first line changed, removed or out of order is named. With --data, the
    /// head each zone's store recorded must be a line of the log: a log that ends before it
    /// was cut off. Give a rotated file before the file that continues it.
    ///
    /// After a root-key rotation (`keylife root-key rotate`), give --root-key-file once per
    /// key, oldest first: each line must verify under the key in force, which moves to the
    /// next key (never back) only at the `audit-open` line of a server started with it.
    ///
    /// Exit status: 0 when the log is intact; 1 naming the first bad line (or the cut), or when
    /// a file or store cannot be read; 2 for a malformed command line.
    Verify(VerifyArgs),
}

/// What `keylife audit verify` takes.
#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// File holding the root key the server ran with (base64 of 32 bytes); else the
    /// environment variable KEYLIFE_ROOT_KEY. For a log spanning root-key rotations, give
    /// each key the log was written under, oldest first (the stores of --data open with the
    /// last).
    #[arg(long, value_name = "FILE")]
    root_key_file: Vec<PathBuf>,
    /// The server's data directory: check the log against the audit head each zone's store
    /// recorded (stop the server first: a store has one user at a time).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// The log's files, oldest first.
    #[arg(value_name = "FILE", required = true)]
    files: Vec<PathBuf>,
}

/// Runs `keylife audit ...`.
pub(super) fn run(command: AuditCommand) -> Result<(), Failure> {
    match command {
        AuditCommand::Verify(args) => verify(&args),
    }
}

fn verify(args: &VerifyArgs) -> Result<(), Failure> {
    let roots = match args.root_key_file.as_slice() {
        [] => vec![RootKeyBytes::load(None)?],
        files => files
            .iter()
            .map(|file| RootKeyBytes::load(Some(file)))
            .collect::<Result<Vec<_>, _>>()?,
    };
    // The stores are under the newest key.
    let root = roots
        .last()
        .unwrap_or_else(|| unreachable!("one key at least"));
    let mut heads = Vec::new();
    let mut without = Vec::new();
    if let Some(data) = &args.data {
        let zones = config::existing_zones(data)?;
        if zones.is_empty() {
            return Err(Failure::Other(format!(
                "{} holds no zone's store",
                data.display()
            )));
        }
        for zone in zones {
            let dir = config::zone_dir(data, &zone);
            let kms = Kms::open(&dir, root.root_key(), KmsOptions::new(zone.clone())).map_err(
                |error| match error {
                    Error::StoreInUse { .. } => Failure::Other(format!(
                        "zone {zone}: the store {} is in use: stop the server first (a store \
                         has one user at a time) [store-in-use]",
                        dir.display()
                    )),
                    error => Failure::Other(format!(
                        "zone {zone}: cannot open {}: {error} [{}]",
                        dir.display(),
                        error.code()
                    )),
                },
            )?;
            match kms.audit_head()? {
                Some(head) => heads.push((zone, head)),
                None => without.push(zone),
            }
        }
    }
    let keys: Vec<_> = roots.iter().map(RootKeyBytes::root_key).collect();
    let verified = audit_log::verify_across(&keys, &args.files, &heads)
        .map_err(|error: VerifyError| Failure::Other(error.to_string()))?;
    let files = args
        .files
        .iter()
        .map(|file| file.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "{files}: lines {} to {} ({} lines), the chain verifies",
        verified.first, verified.last, verified.lines
    );
    for (seq, key) in &verified.key_changes {
        println!(
            "from line {seq}: the chain goes on under root key {} of those given (a rotation)",
            key + 1
        );
    }
    for (zone, seq) in &verified.heads {
        println!("zone {zone}: its store recorded line {seq} as the head: found, the same line");
    }
    for (zone, head) in &heads {
        if !verified.heads.iter().any(|(z, _)| z == zone) {
            println!(
                "zone {zone}: its store recorded line {} as the head, before these files \
                 (not checked)",
                head.seq
            );
        }
    }
    for zone in without {
        println!("zone {zone}: its store recorded no audit head");
    }
    Ok(())
}
