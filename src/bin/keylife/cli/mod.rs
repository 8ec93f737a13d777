//! The commands on a local store: `keylife key ...`, `encrypt`, `decrypt`,
//! `generate-data-key`, `audit verify`, `backup`, `restore`.
//!
//! Each command opens the stores of the data directory the way `keylife serve` does (`DATA/ZONE`
//! per zone, every zone found there connected by one [`keylife::LocalLink`], so replicas follow
//! their origin at once), runs what is due (automatic rotations, final deletions, waiting
//! deliveries to replicas, as the server does every second), performs one operation in the
//! chosen zone and prints its answer: a human listing by default, the API's JSON with `--json`.
//! A command that takes a key takes its id or its name (names are unique in a zone).
//!
//! Errors go to standard error as `keylife: MESSAGE [CODE]` (CODE is the library's stable
//! [`keylife::Error::code`]; configuration and I/O problems have none) with exit status 1. clap
//! reports usage errors itself, with exit status 2.
//!
//! - [`args`]: what each command takes; [`zones`]: the stores and the key a command names;
//! - [`key`]: `keylife key ...`; [`crypto`]: encrypt, decrypt, generate-data-key;
//! - [`io`]: reading inputs and writing outputs; [`format`] and [`table`]: human listings;
//! - [`audit`]: `keylife audit verify`; [`backup`]: `keylife backup`, `keylife restore`;
//! - [`remote`]: `keylife backup --url`, a running zone's backup over HTTP.

mod args;
mod audit;
mod backup;
mod crypto;
mod format;
mod io;
mod key;
mod remote;
pub(crate) mod root_key;
mod table;
mod zones;

use std::fmt;
use std::process::ExitCode;

use keylife::Error;

pub(crate) use self::args::LocalCommand;
use crate::config::ConfigError;

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
    /// No key of the zone has this id or name (`key-not-found`, as the library says it).
    NoSuchKey {
        /// The id or name given.
        key: String,
        /// The zone.
        zone: String,
    },
    /// Anything else: reading the input, writing the output.
    Other(String),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Kms(error) => write!(f, "{error} [{}]", error.code()),
            Failure::Config(error) => write!(f, "{error}"),
            Failure::NoSuchKey { key, zone } => write!(
                f,
                "no key with the id or name {key:?} in zone {zone} [key-not-found]"
            ),
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
        LocalCommand::Key(command) => key::run(command),
        LocalCommand::Encrypt(args) => crypto::encrypt(args),
        LocalCommand::Decrypt(args) => crypto::decrypt(args),
        LocalCommand::GenerateDataKey(args) => crypto::generate_data_key(args),
        LocalCommand::Audit(command) => audit::run(command),
        LocalCommand::Backup(args) => backup::backup(args),
        LocalCommand::Restore(args) => backup::restore(&args),
    }
}
