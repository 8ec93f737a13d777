//! The HTTP server of the `keylife` binary (cargo feature `server`): Exoscale's KMS API under
//! `/v2` for one or more zones, each on its own address, with Exoscale's request signing and
//! RFC 9457 problem documents.
//!
//! - [`auth`]: `EXO2-HMAC-SHA256` verification (and signing, for tests and load generators);
//! - [`problem`]: the error documents;
//! - [`serve`]: runs the zones until a shutdown signal, reporting what happens as [`Event`]s.
//!
//! Dependencies point inward: this module uses [`Kms`] and its answers, never the reverse.
//! Reading configuration (files, environment) and logging belong to the binary.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use keylife::server::{ServeOptions, auth::Credentials};
//! use keylife::{Kms, KmsOptions, RootKey};
//!
//! let kms = Arc::new(Kms::open("data/ch-gva-2", RootKey::generate()?, KmsOptions::new("ch-gva-2"))?);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! let credentials = Arc::new(Credentials::new().with("EXOkey", "secret"));
//! keylife::server::serve(
//!     vec![(kms, listener)],
//!     credentials,
//!     ServeOptions::default(),
//!     async { tokio::signal::ctrl_c().await.ok(); },
//! )
//! .await?;
//! # Ok(()) }
//! ```

mod audited;
pub mod auth;
mod extract;
mod http;
pub mod problem;
mod replay;
mod request;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::{DueRun, DueRunner, Kms};

use self::auth::Credentials;

/// The default limit of a request body: 8 MiB, room for the largest plaintext keylife
/// encrypts (4 MiB) in base64 (5.4 MiB) and its JSON.
pub const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Something the server reports while it runs, for a log.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<'a> {
    /// Accepting a connection failed (out of file descriptors and the like); the server
    /// waits 50 ms and goes on.
    AcceptFailed(&'a std::io::Error),
    /// After the shutdown signal, `open` connections were still busy when the grace period
    /// ended: they were dropped.
    ConnectionsDropped {
        /// How many.
        open: usize,
        /// The grace period.
        grace: Duration,
    },
    /// A run of what is due in zone `zone` ([`Kms::run_due`]) ended: one when serving starts,
    /// then one every `due_interval`.
    DueRun {
        /// The zone.
        zone: &'a str,
        /// What the run did (its failures stay due), why it could not run, or its panic.
        run: &'a DueRun,
    },
}

/// Where a server's [`Event`]s go; the default drops them.
#[derive(Clone, Default)]
pub struct Events(Option<Arc<Sink>>);

type Sink = dyn Fn(&Event<'_>) + Send + Sync;

impl Events {
    /// Hands every event to `sink`, on the thread where it happens.
    pub fn new(sink: impl Fn(&Event<'_>) + Send + Sync + 'static) -> Events {
        Events(Some(Arc::new(sink)))
    }

    fn emit(&self, event: &Event<'_>) {
        if let Some(sink) = &self.0 {
            sink(event);
        }
    }
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Events(sink)"
        } else {
            "Events(dropped)"
        })
    }
}

/// How a server runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Largest request body; a larger one is answered 413. Default
    /// [`DEFAULT_MAX_BODY_BYTES`].
    pub max_body_bytes: usize,
    /// How often each zone runs [`Kms::run_due`] (due rotations and deletions, replication
    /// retries). Default one second.
    pub due_interval: Duration,
    /// How long a request body may take to arrive; a slower one is answered 408. Default 30 s.
    pub body_timeout: Duration,
    /// The memory for request and response bodies beyond each connection's free 64 KiB,
    /// across all zones, in bytes. Default [`BODY_BUDGET_KIB`] KiB (64 MiB).
    pub body_budget_bytes: usize,
    /// How long a body may wait for its share of `body_budget_bytes` before it is answered
    /// 503. Default 5 s.
    pub budget_timeout: Duration,
    /// How far ahead a signature's `expires` may be; further is refused (403). Default
    /// [`auth::DEFAULT_MAX_VALIDITY_SECS`] (15 minutes).
    pub max_signature_validity: Duration,
    /// Refuse a signature already used for a state-changing request (every POST but
    /// encrypt, decrypt, re-encrypt and generate-data-key) while it is valid, across all zones
    /// (403 `request-replayed`). Off by default: Exoscale's clients send byte-identical
    /// signatures for identical calls made in the same second.
    pub refuse_replays: bool,
    /// The audit log every zone writes one line per request to; `None` (the default) writes
    /// none. A state change is answered only once its line is synced; while the log cannot be
    /// written, state changes are refused.
    pub audit: Option<Arc<crate::audit_log::AuditLog>>,
    /// After the shutdown signal, how long the requests in flight may take before their
    /// connections are dropped (a stalled client must not keep the server up). Default 10 s.
    pub shutdown_grace: Duration,
    /// Where the server reports what happens. Default: nowhere.
    pub events: Events,
}

impl Default for ServeOptions {
    fn default() -> ServeOptions {
        ServeOptions {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            due_interval: Duration::from_secs(1),
            body_timeout: Duration::from_secs(30),
            body_budget_bytes: BODY_BUDGET_KIB * 1024,
            budget_timeout: Duration::from_secs(5),
            max_signature_validity: Duration::from_secs(
                auth::DEFAULT_MAX_VALIDITY_SECS.unsigned_abs(),
            ),
            refuse_replays: false,
            audit: None,
            shutdown_grace: Duration::from_secs(10),
            events: Events::default(),
        }
    }
}

/// Serves each zone on its listener (`http://ADDR/v2`) until `shutdown` completes, then stops
/// accepting, lets the requests in flight finish, and returns. Every change acknowledged to a
/// client was durable before its answer was sent; the stores close when the last `Arc<Kms>`
/// is dropped. Every zone runs [`Kms::run_due`] once (the zones in parallel) before any zone
/// serves, then every `due_interval` in the background (a [`DueRunner`] per zone), each run
/// reported as an [`Event::DueRun`].
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
    let mut runners = Vec::with_capacity(zones.len());
    // Request bodies in memory at once, in KiB, across every zone.
    let body_budget = Arc::new(Semaphore::new(options.body_budget_bytes.div_ceil(1024)));
    let replays = options
        .refuse_replays
        .then(|| Arc::new(replay::ReplayCache::default()));
    let max_validity_secs =
        i64::try_from(options.max_signature_validity.as_secs()).unwrap_or(i64::MAX);
    let reporter = |kms: &Kms| {
        let events = options.events.clone();
        let zone = kms.zone().to_owned();
        move |run: DueRun| {
            events.emit(&Event::DueRun {
                zone: &zone,
                run: &run,
            })
        }
    };
    // What came due while the server was down, in every zone at once, before any zone serves.
    let first_runs: Vec<_> = zones
        .iter()
        .map(|(kms, _)| {
            let (kms, report) = (Arc::clone(kms), reporter(kms));
            tokio::task::spawn_blocking(move || report(DueRun::of(&kms)))
        })
        .collect();
    for run in first_runs {
        let _ = run.await;
    }
    for (kms, listener) in zones {
        runners.push(DueRunner::start_with(
            &kms,
            options.due_interval,
            reporter(&kms),
        ));
        let zone = Arc::new(extract::Zone {
            kms,
            credentials: credentials.clone(),
            max_body_bytes: options.max_body_bytes,
            body_timeout: options.body_timeout,
            body_budget: body_budget.clone(),
            budget_timeout: options.budget_timeout,
            max_validity_secs,
            replays: replays.clone(),
            audit: options.audit.clone(),
        });
        servers.spawn(accept_loop(
            listener,
            http::router(zone),
            stopped.clone(),
            (options.shutdown_grace, options.events.clone()),
        ));
    }
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
    // The servers are done: stop the background work, after a run in progress.
    let _ =
        tokio::task::spawn_blocking(move || runners.into_iter().for_each(DueRunner::stop)).await;
    result
}

/// The default of [`ServeOptions::body_budget_bytes`], in KiB: request and response bodies
/// held in memory at once across all zones beyond each connection's free 64 KiB, 64 MiB. A request body takes its share as its bytes
/// arrive (not from its `Content-Length`), a large answer when it is made; each waits for it
/// at most [`ServeOptions::budget_timeout`].
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
    (grace, events): (Duration, Events),
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
                events.emit(&Event::AcceptFailed(&error));
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
        let open = connections.len();
        events.emit(&Event::ConnectionsDropped { open, grace });
        connections.shutdown().await;
    }
    Ok(())
}

/// Completes when the stop is sent (or its sender is gone).
async fn stopped_signal(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}
