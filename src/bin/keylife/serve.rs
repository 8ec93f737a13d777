//! `keylife serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use keylife::server::config::{self, ConfigError, RootKeyBytes};
use keylife::server::{DEFAULT_MAX_BODY_BYTES, ServeOptions};

/// Serve Exoscale's KMS API over HTTP.
///
/// Each zone's API is at `http://ADDR/v2`, its store in `DATA/ZONE`. Requests must be signed
/// with `EXO2-HMAC-SHA256` by one of the credentials. SIGTERM or Ctrl-C stops accepting,
/// finishes the requests in flight and exits; every acknowledged change is on disk.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Data directory: each zone's store is the subdirectory named after the zone.
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// A zone and the address it is served on, `NAME=IP:PORT` (port 0 picks a free port);
    /// repeat for several zones, which replicate to each other.
    #[arg(long = "zone", value_name = "NAME=ADDR", required = true, value_parser = parse_zone)]
    zones: Vec<(String, SocketAddr)>,
    /// File holding the root key (base64 of 32 bytes on one line); else `KEYLIFE_ROOT_KEY`.
    #[arg(long, value_name = "FILE")]
    root_key_file: Option<PathBuf>,
    /// File of API credentials, one `KEY SECRET` pair per line (`#` starts a comment); else
    /// `KEYLIFE_CREDENTIALS`.
    #[arg(long, value_name = "FILE")]
    credentials_file: Option<PathBuf>,
    /// Largest request body in bytes; larger ones are answered 413.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: usize,
    /// Seconds the requests in flight may take after SIGTERM or Ctrl-C before their
    /// connections are dropped.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    shutdown_grace: u64,
    /// Worker threads of the server (default: one per CPU).
    #[arg(long, value_name = "N")]
    threads: Option<usize>,
}

fn parse_zone(text: &str) -> Result<(String, SocketAddr), String> {
    let (name, address) = text
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=IP:PORT, got {text:?}"))?;
    config::check_zone_name(name).map_err(|error| error.0)?;
    let address = address
        .parse()
        .map_err(|_| format!("zone {name}: {address:?} is not an IP:PORT address"))?;
    Ok((name.to_owned(), address))
}

pub(crate) fn run(args: ServeArgs) -> ExitCode {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.threads {
        runtime.worker_threads(threads.max(1));
    }
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("keylife: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => {
            eprintln!("keylife: stopped; every acknowledged change is on disk");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("keylife: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> Result<(), ConfigError> {
    let root_key = RootKeyBytes::load(args.root_key_file.as_deref())?;
    let credentials = Arc::new(config::load_credentials(args.credentials_file.as_deref())?);
    let names: Vec<String> = args.zones.iter().map(|(name, _)| name.clone()).collect();
    let zones = config::open_zones(&args.data, &names, &root_key)?;
    drop(root_key);
    let mut served = Vec::with_capacity(zones.len());
    for (kms, (name, address)) in zones.into_iter().zip(&args.zones) {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|error| {
                ConfigError(format!("zone {name}: cannot listen on {address}: {error}"))
            })?;
        let bound = listener
            .local_addr()
            .map_err(|error| ConfigError(format!("zone {name}: {error}")))?;
        // One line per zone on standard output, for scripts that start the server on port 0.
        println!("keylife: zone {name} serving http://{bound}/v2");
        served.push((kms, listener));
    }
    let options = ServeOptions {
        max_body_bytes: args.max_body_bytes,
        shutdown_grace: std::time::Duration::from_secs(args.shutdown_grace),
        ..ServeOptions::default()
    };
    keylife::server::serve(served, credentials, options, shutdown_signal())
        .await
        .map_err(|error| ConfigError(format!("serving failed: {error}")))
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    eprintln!("keylife: stopping: finishing the requests in flight");
}
