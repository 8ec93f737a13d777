//! The HTTP server of the `keylife` binary (cargo feature `server`): Exoscale's KMS API under
//! `/v2` for one or more zones, each on its own address, with Exoscale's request signing and
//! RFC 9457 problem documents.
//!
//! - [`auth`]: `EXO2-HMAC-SHA256` verification (and signing, for tests and load generators);
//! - [`config`]: the root key, the credentials and the zones' stores;
//! - [`problem`]: the error documents;
//! - [`serve`]: runs the zones until a shutdown signal.
//!
//! Dependencies point inward: this module uses [`Kms`] and its answers, never the reverse.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use keylife::server::{ServeOptions, auth::Credentials, config};
//!
//! let root_key = config::RootKeyBytes::load(None)?; // KEYLIFE_ROOT_KEY
//! let zones = config::open_zones("data".as_ref(), &["ch-gva-2".to_owned()], &root_key)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! let credentials = Arc::new(Credentials::new().with("EXOkey", "secret"));
//! keylife::server::serve(
//!     zones.into_iter().zip([listener]).collect(),
//!     credentials,
//!     ServeOptions::default(),
//!     async { tokio::signal::ctrl_c().await.ok(); },
//! )
//! .await?;
//! # Ok(()) }
//! ```

pub mod auth;
pub mod config;
mod http;
pub mod problem;
mod request;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::Kms;

use self::auth::Credentials;

/// The default limit of a request body: 8 MiB, room for the largest plaintext keylife
/// encrypts (4 MiB) in base64 (5.4 MiB) and its JSON.
pub const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// How a server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeOptions {
    /// Largest request body; a larger one is answered 413. Default
    /// [`DEFAULT_MAX_BODY_BYTES`].
    pub max_body_bytes: usize,
    /// How often each zone runs [`Kms::run_due`] (due rotations and deletions, replication
    /// retries). Default one second.
    pub due_interval: Duration,
    /// How long a request body may take to arrive; a slower one is answered 408. Default 30 s.
    pub body_timeout: Duration,
    /// After the shutdown signal, how long the requests in flight may take before their
    /// connections are dropped (a stalled client must not keep the server up). Default 10 s.
    pub shutdown_grace: Duration,
}

impl Default for ServeOptions {
    fn default() -> ServeOptions {
        ServeOptions {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            due_interval: Duration::from_secs(1),
            body_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Serves each zone on its listener (`http://ADDR/v2`) until `shutdown` completes, then stops
/// accepting, lets the requests in flight finish, and returns. Every change acknowledged to a
/// client was durable before its answer was sent; the stores close when the last `Arc<Kms>`
/// is dropped. In the background, every `due_interval`, each zone runs [`Kms::run_due`].
///
/// Responses go out with `TCP_NODELAY`: without it, Nagle's algorithm and the client's
/// delayed ACK hold a keep-alive response for about 40 ms.
pub async fn serve(
    zones: Vec<(Arc<Kms>, TcpListener)>,
    credentials: Arc<Credentials>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if options.due_interval.is_zero() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "ServeOptions::due_interval must not be zero",
        ));
    }
    let (stop, stopped) = watch::channel(false);
    let mut servers = tokio::task::JoinSet::new();
    let mut kmses = Vec::with_capacity(zones.len());
    // Request bodies in memory at once, in KiB, across every zone.
    let body_budget = Arc::new(Semaphore::new(BODY_BUDGET_KIB));
    for (kms, listener) in zones {
        kmses.push(kms.clone());
        let zone = Arc::new(http::Zone {
            kms,
            credentials: credentials.clone(),
            max_body_bytes: options.max_body_bytes,
            body_timeout: options.body_timeout,
            body_budget: body_budget.clone(),
        });
        servers.spawn(accept_loop(
            listener,
            http::router(zone),
            stopped.clone(),
            options.shutdown_grace,
        ));
    }
    let due = tokio::spawn(run_due_loop(kmses, options.due_interval, stopped.clone()));
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let mut result = Ok(());
    while let Some(joined) = servers.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(error)) => result = Err(error),
            Err(error) => result = Err(std::io::Error::other(error)),
        }
    }
    // The servers are done: stop the background work and wait for a run in progress.
    let _ = due.await;
    result
}

/// Request bodies held in memory at once across all zones, in KiB: 64 MiB. A request waits
/// for its share (its `Content-Length`, or the body limit when it has none) before its body is
/// read, after its `Authorization` header has been checked.
pub const BODY_BUDGET_KIB: usize = 64 * 1024;

/// How long the headers of a request may take to arrive.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Accepts connections on `listener` until the stop, then waits for the connections to finish
/// their requests in flight, for at most `grace`, and drops the rest. It returns only when
/// every connection task has ended, so no request is handled after it.
async fn accept_loop(
    listener: TcpListener,
    router: axum::Router,
    mut stopped: watch::Receiver<bool>,
    grace: Duration,
) -> std::io::Result<()> {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stopped_signal(&mut stopped) => break,
        };
        while connections.try_join_next().is_some() {}
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                log(format_args!("keylife: accept failed: {error}"));
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Best effort: a socket that refuses the option still serves, only slower.
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let mut stop = stopped.clone();
        connections.spawn(async move {
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = stopped_signal(&mut stop) => {
                    // Finish the request in flight, if any, then close.
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    drop(listener);
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        log(format_args!(
            "keylife: {} s after the stop, {} connection(s) still open are dropped",
            grace.as_secs(),
            connections.len()
        ));
        connections.shutdown().await;
    }
    Ok(())
}

/// Runs what is due in `kms` ([`Kms::run_due`]: rotations, deletions, replication retries)
/// and logs on stderr what failed; the failures stay due. The server calls it every
/// `due_interval`, the command line before each command.
pub fn run_due_logged(kms: &Kms) {
    let zone = kms.zone();
    match kms.run_due() {
        Ok(report) => {
            for (id, error) in &report.failed {
                log(format_args!(
                    "keylife: zone {zone}: the due work of key {id} failed: {error} [{}]",
                    error.code()
                ));
            }
            for (id, target, error) in &report.replication.failed {
                log(format_args!(
                    "keylife: zone {zone}: key {id} did not reach its replica in zone {target}: \
                     {error} [{}]",
                    error.code()
                ));
            }
        }
        Err(error) => log(format_args!(
            "keylife: zone {zone}: cannot run the due rotations and deletions: {error} [{}]",
            error.code()
        )),
    }
}

/// Completes when the stop is sent (or its sender is gone).
async fn stopped_signal(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

/// A line on standard error; a closed or full stderr is not a reason to stop serving.
pub fn log(line: std::fmt::Arguments<'_>) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

async fn run_due_loop(
    zones: Vec<Arc<Kms>>,
    interval: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = stopped_signal(&mut stopped) => return,
        }
        for kms in &zones {
            let kms = kms.clone();
            let zone = kms.zone().to_owned();
            if tokio::task::spawn_blocking(move || run_due_logged(&kms))
                .await
                .is_err()
            {
                log(format_args!("keylife: zone {zone}: run_due panicked"));
            }
        }
        if *stopped.borrow() {
            return;
        }
    }
}
