//! `keylife`: serves Exoscale's KMS API over HTTP (`keylife serve`), or acts on a local store
//! from a shell (`keylife key ...`, `keylife encrypt`, ...). Built with the cargo feature
//! `server`.
//!
//! Exit codes: 0 on success, 1 when the operation or the store refused, 2 for a usage error.

#![forbid(unsafe_code)]

mod cli;
mod config;
mod log;
mod serve;

use std::io::Write as _;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use config::RootKeyBytes;

/// An embedded key management service with the semantics of Exoscale's KMS API.
#[derive(Debug, Parser)]
#[command(name = "keylife", version, propagate_version = true)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve Exoscale's KMS API over HTTP or HTTPS, one address per zone.
    Serve(serve::ServeArgs),
    /// Root key utilities.
    #[command(subcommand)]
    RootKey(RootKeyCommand),
    #[command(flatten)]
    Local(cli::LocalCommand),
}

#[derive(Debug, Subcommand)]
enum RootKeyCommand {
    /// Print a new random root key (base64 of 32 bytes) on standard output.
    ///
    /// Store it in a file readable only by the server's user, away from the data directory:
    /// `keylife root-key generate > root.key && chmod 600 root.key`.
    Generate,
    /// Move the stores of a data directory to a new root key.
    ///
    /// Every material version is sealed again and every stored value authenticated again
    /// under the new root key, in one durable commit per zone: killed at any instant, a store
    /// opens afterwards with exactly one of the two keys, whole. A zone already under the new
    /// key is left as it is, so the command can be run again after an interruption.
    Rotate(cli::root_key::RotateArgs),
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Command::Serve(serve) => serve::run(serve),
        Command::RootKey(RootKeyCommand::Generate) => {
            let written = RootKeyBytes::generate_base64()
                .map_err(|error| error.to_string())
                .and_then(|text| {
                    let mut stdout = std::io::stdout().lock();
                    writeln!(stdout, "{}", text.as_str())
                        .and_then(|()| stdout.flush())
                        .map_err(|error| format!("cannot write the root key: {error}"))
                });
            match written {
                Ok(()) => ExitCode::SUCCESS,
                Err(message) => {
                    log::log(format_args!("keylife: {message}"));
                    ExitCode::FAILURE
                }
            }
        }
        Command::RootKey(RootKeyCommand::Rotate(args)) => cli::root_key::rotate(&args),
        Command::Local(command) => cli::run(command),
    }
}
