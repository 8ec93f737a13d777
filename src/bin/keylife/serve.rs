//! `keylife serve`.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use keylife::server::audit_log::AuditLog;
use keylife::server::{
    DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_CONNECTIONS, Events, Keyring, ServeOptions, Tls,
};
use keylife::store::Engine;

use crate::config::{self, ConfigError, RootKeyBytes};
use crate::log::{self, log};

/// Serve Exoscale's KMS API over HTTPS (or HTTP on loopback).
///
/// Each zone's API is at `https://ADDR/v2` with --tls-cert and --tls-key, else at
/// `http://ADDR/v2`; plain HTTP is refused on an address that is not loopback unless
/// --insecure-http is given. Each zone's store is in `DATA/ZONE`. Requests must be signed with
/// `EXO2-HMAC-SHA256` by one of the credentials; `GET /keylife/v1/health` is unsigned. SIGHUP
/// reloads the credentials file. SIGTERM or Ctrl-C stops accepting, finishes the requests in
/// flight and exits; every acknowledged change is on disk.
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
    /// Write an audit log: one JSON line per request (refused authentications included),
    /// chained by MACs under a key derived from the root key, its head recorded in every
    /// zone's store. State changes are answered once their line is synced and refused while
    /// the log cannot be written. SIGHUP reopens it (for logrotate). Check it with
    /// `keylife audit verify`.
    #[arg(long, value_name = "FILE")]
    audit_log: Option<PathBuf>,
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
    /// PEM file of the server's certificate chain (its own certificate first): every zone
    /// serves HTTPS. Needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM file of the certificate's private key (PKCS#8, PKCS#1 or SEC1). Needs --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve plain HTTP on addresses that are not loopback too (behind a TLS proxy on a
    /// trusted network): without TLS, only 127.0.0.0/8 and ::1 are served otherwise.
    #[arg(long)]
    insecure_http: bool,
    /// Connections open at once, across every zone; one more is closed as soon as it is
    /// accepted.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS,
          value_parser = parse_max_connections)]
    max_connections: usize,
    /// Seed file (JSON) applied at every start, before serving, to the zones served: keys
    /// with fixed ids, names and material. A key already present with the same material is
    /// left as it is; an error (naming the key) stops the start and applies nothing. With
    /// several zones, every key names its `zone`.
    #[arg(long, value_name = "FILE")]
    seed: Option<PathBuf>,
    /// A zone served by another `keylife serve` process, `NAME=URL`, URL being that zone's
    /// API URL as its process prints it (`http://ADDR/v2`, `https://ADDR/v2`); repeat for
    /// several. Keys of the zones served here replicate to it, and its keys to them, over an
    /// authenticated link (docs/design.md, "Replication between processes"). A zone may not be
    /// both served here and a peer.
    #[arg(long = "peer", value_name = "NAME=URL", value_parser = parse_peer)]
    peers: Vec<(String, String)>,
    /// File of the link credentials, one per peer zone: `ZONE KEY SECRET` lines (`#` starts a
    /// comment). This process signs its messages to ZONE with KEY and SECRET, and ZONE's
    /// process holds the same pair as `KEY SECRET operations=replicate zones=ZONES_SERVED_HERE`.
    /// Required with --peer.
    #[arg(long, value_name = "FILE")]
    peer_credentials_file: Option<PathBuf>,
    /// PEM file of the CA certificates an `https://` peer's certificate must chain to.
    #[arg(long, value_name = "FILE")]
    peer_ca_file: Option<PathBuf>,
    /// Seconds one replication message may wait for its peer's answer (the delivery is then
    /// recorded as failed and retried).
    #[arg(long, value_name = "SECS", default_value_t = keylife::server::peer::DEFAULT_PEER_TIMEOUT.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    peer_timeout: u64,
}

fn parse_peer(text: &str) -> Result<(String, String), String> {
    let (name, url) = text
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=URL, got {text:?}"))?;
    config::check_zone_name(name).map_err(|error| error.to_string())?;
    keylife::server::client::ApiUrl::parse(url).map_err(|error| format!("peer {name}: {error}"))?;
    Ok((name.to_owned(), url.to_owned()))
}

fn parse_max_connections(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(count) if count >= 1 => Ok(count),
        _ => Err(format!(
            "expected a number of connections, at least 1, got {text:?}"
        )),
    }
}

/// Refuses to serve plain HTTP on an address that is not loopback, unless `insecure` (the
/// signatures would cross the network in the clear, and can be replayed within their validity).
fn check_plain_http(zones: &[(String, SocketAddr)], insecure: bool) -> Result<(), ConfigError> {
    if insecure {
        return Ok(());
    }
    match zones
        .iter()
        .find(|(_, address)| !address.ip().to_canonical().is_loopback())
    {
        None => Ok(()),
        Some((name, address)) => Err(ConfigError::Invalid(format!(
            "zone {name}: refusing to serve plain HTTP on {address}, which is not a loopback \
             address: give --tls-cert FILE and --tls-key FILE to serve HTTPS, or \
             --insecure-http to serve plain HTTP anyway (behind a TLS proxy)"
        ))),
    }
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
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            config::warn_if_readable_by_others(key, "TLS key");
            Some(
                Tls::from_pem_files(cert, key)
                    .map_err(|error| ConfigError::Invalid(error.to_string()))?,
            )
        }
        // clap requires both or neither.
        _ => None,
    };
    if tls.is_none() {
        check_plain_http(&args.zones, args.insecure_http)?;
    }
    // The signal handlers exist before the first "serving" line: a SIGTERM sent as soon as
    // the server says it serves stops it gracefully, a SIGHUP reloads.
    let shutdown = shutdown_signal()?;
    let root_key = RootKeyBytes::load(args.root_key_file.as_deref())?;
    let keyring = Arc::new(Keyring::new(config::load_credentials(
        args.credentials_file.as_deref(),
    )?));
    let seed = args.seed.as_deref().map(config::load_seed).transpose()?;
    let names: Vec<String> = args.zones.iter().map(|(name, _)| name.clone()).collect();
    let peers = config::load_peers(
        &args.peers,
        args.peer_credentials_file.as_deref(),
        args.peer_ca_file.as_deref(),
        std::time::Duration::from_secs(args.peer_timeout),
    )?;
    let zones = config::open_zones_with_peers(&args.data, &names, &root_key, args.engine, peers)?;
    if let (Some(seed), Some(path)) = (&seed, &args.seed) {
        let handles: Vec<keylife::Kms> = zones.iter().map(|kms| keylife::Kms::clone(kms)).collect();
        let report = seed.apply(&handles).map_err(|error| {
            ConfigError::Invalid(format!(
                "the seed file {}: {error} [{}]",
                path.display(),
                error.code()
            ))
        })?;
        log::seeded(path, &report);
    }
    drop(seed);
    let audit = match &args.audit_log {
        Some(path) => Some(
            AuditLog::open(path, &root_key.root_key(), zones.clone()).map_err(|error| {
                ConfigError::Invalid(format!("the audit log {}: {error}", path.display()))
            })?,
        ),
        None => None,
    };
    drop(root_key);
    // What a SIGHUP does, in order: reload the credentials, reopen the audit log.
    let mut reloads: Vec<Reload> = vec![reload_credentials(
        Arc::clone(&keyring),
        args.credentials_file.clone(),
    )];
    if let Some(audit) = &audit {
        reloads.push(reopen_audit_log(Arc::downgrade(audit)));
    }
    on_hangup(reloads)?;
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
        let scheme = if tls.is_some() { "https" } else { "http" };
        let _ = writeln!(stdout, "keylife: zone {name} serving {scheme}://{bound}/v2");
        let _ = stdout.flush();
        served.push((kms, listener));
    }
    let options = ServeOptions {
        max_body_bytes: args.max_body_bytes,
        shutdown_grace: std::time::Duration::from_secs(args.shutdown_grace),
        max_signature_validity: std::time::Duration::from_secs(args.max_signature_validity),
        refuse_replays: args.refuse_replays,
        events: Events::new(log::server_event),
        tls,
        max_connections: args.max_connections,
        audit: audit.clone(),
        ..ServeOptions::default()
    };
    let served = keylife::server::serve(served, keyring, options, shutdown).await;
    // The last lines are written and synced when the log is dropped, before the stores close.
    drop(audit);
    served.map_err(|error| ConfigError::Invalid(format!("serving failed: {error}")))
}

/// At SIGHUP, reopens the audit log at its path (after logrotate moved the file away), with
/// a log line either way; a log already dropped (the server stopping) is left alone.
fn reopen_audit_log(audit: std::sync::Weak<AuditLog>) -> Reload {
    Box::new(move || {
        let Some(audit) = audit.upgrade() else {
            return;
        };
        match audit.reopen() {
            Ok(()) => log(format_args!(
                "keylife: SIGHUP: the audit log {} reopened",
                audit.path().display()
            )),
            Err(error) => log(format_args!(
                "keylife: SIGHUP: the audit log {} could not be reopened: {error}",
                audit.path().display()
            )),
        }
    })
}

/// Something a SIGHUP does.
type Reload = Box<dyn Fn() + Send + Sync>;

/// Reads the credentials again (from `file`, or `KEYLIFE_CREDENTIALS` without one) and puts
/// them in force; a set that does not load is refused and the current one kept. One log line
/// either way.
fn reload_credentials(keyring: Arc<Keyring>, file: Option<PathBuf>) -> Reload {
    Box::new(move || {
        let origin = file.as_deref().map_or_else(
            || "KEYLIFE_CREDENTIALS".to_owned(),
            |path: &Path| path.display().to_string(),
        );
        match config::load_credentials(file.as_deref()) {
            Ok(credentials) => {
                let count = credentials.len();
                keyring.replace(credentials);
                log(format_args!(
                    "keylife: SIGHUP: {count} credential(s) loaded from {origin}"
                ));
            }
            Err(error) => log(format_args!(
                "keylife: SIGHUP: the credentials are unchanged: {error}"
            )),
        }
    })
}

/// Runs `reloads` on the blocking pool at every SIGHUP. The handler is installed when this is
/// called.
#[cfg(unix)]
fn on_hangup(reloads: Vec<Reload>) -> Result<(), ConfigError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup())
        .map_err(|error| ConfigError::Invalid(format!("cannot handle signals: {error}")))?;
    let reloads = Arc::new(reloads);
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            let reloads = Arc::clone(&reloads);
            let _ = tokio::task::spawn_blocking(move || reloads.iter().for_each(|reload| reload()))
                .await;
        }
    });
    Ok(())
}

/// No SIGHUP outside unix: the reloads never run.
#[cfg(not(unix))]
fn on_hangup(reloads: Vec<Reload>) -> Result<(), ConfigError> {
    drop(reloads);
    Ok(())
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
