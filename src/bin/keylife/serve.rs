//! `keylife serve`.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use keylife::server::{DEFAULT_MAX_BODY_BYTES, Events, ServeOptions};
use keylife::store::Engine;

use crate::config::{self, ConfigError, RootKeyBytes};
use crate::log::{self, log};

/// Serve Exoscale's KMS API over HTTP.
///
/// Each zone's API is at `http://ADDR/v2`, its store in `DATA/ZONE`. Requests must be signed
/// with `EXO2-HMAC-SHA256` by one of the credentials. SIGTERM or Ctrl-C stops accepting,
/// finishes the requests in flight and exits; every acknowledged change is on disk.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Data directory: each zone's store is the subdirectory named after the zone.
    #[arg(long, value_name = "DIR", env = "KEYLIFE_DATA")]
    data: PathBuf,
    /// A zone and the address it is served on, `NAME=IP:PORT` (port 0 picks a free port);
    /// repeat for several zones, which replicate to each other.
    #[arg(long = "zone", value_name = "NAME=ADDR", required = true, value_parser = parse_zone)]
    zones: Vec<(String, SocketAddr)>,
    /// File holding the root key (base64 of 32 bytes on one line); else `KEYLIFE_ROOT_KEY`.
    #[arg(long, value_name = "FILE")]
    root_key_file: Option<PathBuf>,
    /// The engine of the zone stores this creates: sled (the default) or redb. An existing
    /// store always opens with the engine it was created with; naming another is an error.
    #[arg(long, value_name = "ENGINE", env = "KEYLIFE_ENGINE")]
    engine: Option<Engine>,
    /// File of API credentials, one per line, `KEY SECRET [operations=L] [names=L]
    /// [zones=L]` (`#` starts a comment); else `KEYLIFE_CREDENTIALS`.
    #[arg(long, value_name = "FILE")]
    credentials_file: Option<PathBuf>,
    /// Longest validity accepted for a request signature, in seconds: a signature whose
    /// `expires` is further ahead is refused (403). Exoscale's clients sign for 600 s.
    #[arg(long, value_name = "SECS", default_value_t = keylife::server::auth::DEFAULT_MAX_VALIDITY_SECS.unsigned_abs())]
    max_signature_validity: u64,
    /// Refuse a signature already used for a state-changing request (every POST but encrypt,
    /// decrypt, re-encrypt and generate-data-key) while it is valid, across all zones: 403
    /// `request-replayed`. Off by default, since Exoscale's clients send identical signatures
    /// for identical calls made in the same second.
    #[arg(long)]
    refuse_replays: bool,
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
    config::check_zone_name(name).map_err(|error| error.to_string())?;
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
            log(format_args!("keylife: cannot start the runtime: {error}"));
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => {
            log(format_args!(
                "keylife: stopped; every acknowledged change is on disk"
            ));
            ExitCode::SUCCESS
        }
        Err(error) => {
            log(format_args!("keylife: {error}"));
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> Result<(), ConfigError> {
    // The signal handlers exist before the first "serving" line: a SIGTERM sent as soon as
    // the server says it serves stops it gracefully.
    let shutdown = shutdown_signal()?;
    let root_key = RootKeyBytes::load(args.root_key_file.as_deref())?;
    let credentials = Arc::new(config::load_credentials(args.credentials_file.as_deref())?);
    let names: Vec<String> = args.zones.iter().map(|(name, _)| name.clone()).collect();
    let zones = config::open_zones(&args.data, &names, &root_key, args.engine)?;
    drop(root_key);
    let mut served = Vec::with_capacity(zones.len());
    for (kms, (name, address)) in zones.into_iter().zip(&args.zones) {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|error| {
                ConfigError::Invalid(format!("zone {name}: cannot listen on {address}: {error}"))
            })?;
        let bound = listener
            .local_addr()
            .map_err(|error| ConfigError::Invalid(format!("zone {name}: {error}")))?;
        // One line per zone on standard output, for scripts that start the server on port 0.
        // A closed standard output is not a reason to refuse to serve.
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "keylife: zone {name} serving http://{bound}/v2");
        let _ = stdout.flush();
        served.push((kms, listener));
    }
    let options = ServeOptions {
        max_body_bytes: args.max_body_bytes,
        shutdown_grace: std::time::Duration::from_secs(args.shutdown_grace),
        max_signature_validity: std::time::Duration::from_secs(args.max_signature_validity),
        refuse_replays: args.refuse_replays,
        events: Events::new(log::server_event),
        ..ServeOptions::default()
    };
    keylife::server::serve(served, credentials, options, shutdown)
        .await
        .map_err(|error| ConfigError::Invalid(format!("serving failed: {error}")))
}

/// Completes at Ctrl-C (SIGINT) or SIGTERM. The handlers are installed when this is called,
/// not when the future is first polled.
#[cfg(unix)]
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, ConfigError> {
    use tokio::signal::unix::{SignalKind, signal};
    let install = |kind: SignalKind| {
        signal(kind)
            .map_err(|error| ConfigError::Invalid(format!("cannot handle signals: {error}")))
    };
    let mut interrupt = install(SignalKind::interrupt())?;
    let mut terminate = install(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        log(format_args!(
            "keylife: stopping: finishing the requests in flight"
        ));
    })
}

/// Completes at Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, ConfigError> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
