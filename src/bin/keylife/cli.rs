//! The commands on a local store: `keylife key ...`, `encrypt`, `decrypt`,
//! `generate-data-key`. (Placeholder: being written.)

use std::process::ExitCode;

use clap::Subcommand;

/// Commands on a local store.
#[derive(Debug, Subcommand)]
pub(crate) enum LocalCommand {}

pub(crate) fn run(command: LocalCommand) -> ExitCode {
    match command {}
}
