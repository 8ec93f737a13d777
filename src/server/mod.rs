//! The HTTP server of the `keylife` binary (cargo feature `server`): Exoscale's KMS API under
//! `/v2` for one or more zones, each on its own address, with Exoscale's request signing and
//! RFC 9457 problem documents.
//!
//! - [`auth`]: `EXO2-HMAC-SHA256` verification (and signing, for tests and load generators);
//! - [`Keyring`]: the credentials in force, replaceable while serving;
//! - [`Tls`]: the certificate and key for HTTPS;
//! - [`problem`]: the error documents;
//! - [`serve`]: runs the zones until a shutdown signal, reporting what happens as [`Event`]s.
//!
//! Dependencies point inward: this module uses [`Kms`] and its answers, never the reverse.
//! Reading configuration (files, environment) and logging belong to the binary.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use keylife::server::{Keyring, ServeOptions, Tls, auth::Credentials};
//! use keylife::{Kms, KmsOptions, RootKey};
//!
//! let kms = Arc::new(Kms::open("data/ch-gva-2", RootKey::generate()?, KmsOptions::new("ch-gva-2"))?);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! let credentials = Arc::new(Keyring::new(Credentials::new().with("EXOkey", "secret")));
//! // HTTPS; without `tls`, plain HTTP (for loopback or behind a TLS proxy).
//! let options = ServeOptions {
//!     tls: Some(Tls::from_pem_files("server.crt", "server.key")?),
//!     ..ServeOptions::default()
//! };
//! keylife::server::serve(
//!     vec![(kms, listener)],
//!     credentials,
//!     options,
//!     async { tokio::signal::ctrl_c().await.ok(); },
//! )
//! .await?;
//! # Ok(()) }
//! ```

pub mod audit_log;
mod audited;
pub mod auth;
mod backup;
pub mod client;
mod extract;
mod health;
mod http;
mod keyring;
pub mod peer;
pub mod problem;
mod replay;
mod replication;
mod request;
mod slot;
mod tls;

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::{DueRun, DueRunner, Kms};

pub use self::health::HEALTH_PATH;

/// The path of the backup route (`POST`, the `admin` grant), on every zone's address.
pub const BACKUP_PATH: &str = "/keylife/v1/backup";

/// The path where a zone receives replication updates from origin zones in other processes
/// (`POST`, a link credential: the `replicate` grant), on every zone's address.
pub const REPLICATION_UPDATE_PATH: &str = "/keylife/v1/replication/update";

/// The path where an origin zone receives a replica's request for a new version (`POST`, a
/// link credential), on every zone's address.
pub const REPLICATION_ROTATION_PATH: &str = "/keylife/v1/replication/rotation";
pub use self::keyring::Keyring;
use self::tls::WriteDeadline;
pub use self::tls::{Tls, TlsError};

/// The default limit of a request body: 8 MiB, room for the largest plaintext keylife
/// encrypts (4 MiB) in base64 (5.4 MiB) and its JSON.
pub const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// The default limit of connections open at once, across every zone of a server.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// Refused connections and accept failures are reported at most once per this interval
/// ([`Event::ConnectionsRefused`], [`Event::AcceptFailed`]): the first at once, then the
/// count since the last report.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// Something the server reports while it runs, for a log.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<'a> {
    /// Accepting a connection failed `count` times since the last report (out of file
    /// descriptors and the like); `last` is the latest failure. After each failure the
    /// server waits 50 ms and goes on. Reported at most once per [`REPORT_INTERVAL`].
    AcceptFailed {
        /// Failures since the last report.
        count: u64,
        /// The latest.
        last: &'a std::io::Error,
    },
    /// `count` connections were closed as soon as they were accepted since the last report,
    /// because `limit` connections were open ([`ServeOptions::max_connections`]). Reported at
    /// most once per [`REPORT_INTERVAL`].
    ConnectionsRefused {
        /// Connections refused since the last report.
        count: u64,
        /// The limit.
        limit: usize,
    },
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
    pub audit: Option<Arc<audit_log::AuditLog>>,
    /// After the shutdown signal, how long the requests in flight may take before their
    /// connections are dropped (a stalled client must not keep the server up). Default 10 s.
    pub shutdown_grace: Duration,
    /// Where the server reports what happens. Default: nowhere.
    pub events: Events,
    /// With a [`Tls`], every zone serves HTTPS (HTTP/1.1 over TLS); without, plain HTTP.
    /// Default: none.
    pub tls: Option<Tls>,
    /// How long a TLS handshake may take before its connection is dropped. Default 10 s.
    pub tls_handshake_timeout: Duration,
    /// Connections open at once across every zone (a TLS handshake under way counts). One
    /// more is closed as soon as it is accepted, reported as [`Event::ConnectionsRefused`].
    /// Default [`DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// How long a write to a client may make no progress (the client reads nothing of its
    /// answer) before its connection is dropped. Default 30 s.
    pub write_timeout: Duration,
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
            tls: None,
            tls_handshake_timeout: Duration::from_secs(10),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            write_timeout: Duration::from_secs(30),
        }
    }
}

impl ServeOptions {
    /// Refuses options that cannot work.
    fn check(&self) -> std::io::Result<()> {
        let refuse = |what: &str| {
            Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("ServeOptions::{what} must not be zero"),
            ))
        };
        if self.due_interval.is_zero() {
            return refuse("due_interval");
        }
        if self.max_connections == 0 {
            return refuse("max_connections");
        }
        if self.write_timeout.is_zero() {
            return refuse("write_timeout");
        }
        if self.tls_handshake_timeout.is_zero() {
            return refuse("tls_handshake_timeout");
        }
        Ok(())
    }
}

/// Serves each zone on its listener (`http://ADDR/v2`, or `https://` with
/// [`ServeOptions::tls`]) until `shutdown` completes, then stops accepting, lets the requests
/// in flight finish, and returns. Every change acknowledged to a client was durable before
/// its answer was sent; the stores close when the last `Arc<Kms>` is dropped. Every zone runs
/// [`Kms::run_due`] once (the zones in parallel) before any zone serves, then every
/// `due_interval` in the background (a [`DueRunner`] per zone), each run reported as an
/// [`Event::DueRun`]. Requests are checked against the credentials `keyring` holds when they
/// arrive. Every zone also answers [`HEALTH_PATH`], unsigned.
///
/// Responses go out with `TCP_NODELAY`: without it, Nagle's algorithm and the client's
/// delayed ACK hold a keep-alive response for about 40 ms.
pub async fn serve(
    zones: Vec<(Arc<Kms>, TcpListener)>,
    keyring: Arc<Keyring>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    options.check()?;
    let (stop, stopped) = watch::channel(false);
    let mut servers = tokio::task::JoinSet::new();
    let mut runners = Vec::with_capacity(zones.len());
    // Request bodies in memory at once, in KiB, across every zone.
    let body_budget = Arc::new(Semaphore::new(options.body_budget_bytes.div_ceil(1024)));
    let replays = options
        .refuse_replays
        .then(|| Arc::new(replay::ReplayCache::default()));
    // Replication messages are refused when replayed whatever `refuse_replays` says: every
    // message of a link is unique (its body holds random bytes of its own).
    let link_replays = Arc::new(replay::ReplayCache::default());
    let served: Arc<Vec<String>> =
        Arc::new(zones.iter().map(|(kms, _)| kms.zone().to_owned()).collect());
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
    let health = Arc::new(health::Health::new(
        zones.iter().map(|(kms, _)| Arc::clone(kms)).collect(),
    ));
    let limit = options.max_connections.min(Semaphore::MAX_PERMITS);
    let connections = Connections {
        slots: Arc::new(Semaphore::new(limit)),
        limit,
        tls: options.tls.as_ref().map(|tls| {
            (
                TlsAcceptor::from(Arc::clone(tls.config())),
                options.tls_handshake_timeout,
            )
        }),
        write_timeout: options.write_timeout,
        grace: options.shutdown_grace,
        tally: Arc::new(Tally::new(options.events.clone())),
    };
    let ticker = tokio::spawn(connections.tally.clone().tick());
    for (kms, listener) in zones {
        runners.push(DueRunner::start_with(
            &kms,
            options.due_interval,
            reporter(&kms),
        ));
        let zone = Arc::new(extract::Zone {
            kms,
            credentials: keyring.clone(),
            max_body_bytes: options.max_body_bytes,
            body_timeout: options.body_timeout,
            body_budget: body_budget.clone(),
            budget_timeout: options.budget_timeout,
            max_validity_secs,
            replays: replays.clone(),
            link_replays: link_replays.clone(),
            served: Arc::clone(&served),
            audit: options.audit.clone(),
            backups: Arc::new(Semaphore::new(1)),
        });
        servers.spawn(accept_loop(
            listener,
            http::router(zone, health.clone()),
            stopped.clone(),
            connections.clone(),
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
    ticker.abort();
    connections.tally.flush(Instant::now(), true);
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

/// What every accept loop of a server shares: the connection slots, TLS, the timeouts and the
/// tally of refusals.
#[derive(Clone)]
struct Connections {
    /// One permit per open connection, across every zone.
    slots: Arc<Semaphore>,
    limit: usize,
    /// The acceptor and its handshake timeout, when serving HTTPS.
    tls: Option<(TlsAcceptor, Duration)>,
    write_timeout: Duration,
    grace: Duration,
    tally: Arc<Tally>,
}

/// Accepts connections on `listener` until the stop, then waits for the connections to finish
/// their requests in flight, for at most `grace`, and drops the rest. It returns only when
/// every connection task has ended, so no request is handled after it.
async fn accept_loop(
    listener: TcpListener,
    router: axum::Router,
    mut stopped: watch::Receiver<bool>,
    shared: Connections,
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
                shared.tally.accept_failed(error, Instant::now());
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&shared.slots).try_acquire_owned() else {
            // Over the limit: closed at once, counted, not logged one by one.
            drop(stream);
            shared.tally.refused(shared.limit, Instant::now());
            continue;
        };
        // Best effort: a socket that refuses the option still serves, only slower.
        let _ = stream.set_nodelay(true);
        let stream = WriteDeadline::new(stream, shared.write_timeout);
        let service = TowerToHyperService::new(router.clone());
        let stop = stopped.clone();
        let tls = shared.tls.clone();
        connections.spawn(async move {
            match tls {
                None => serve_connection(TokioIo::new(stream), service, stop, permit).await,
                Some((acceptor, timeout)) => {
                    let mut handshake_stop = stop.clone();
                    let handshake = tokio::select! {
                        handshake = tokio::time::timeout(timeout, acceptor.accept(stream)) => handshake,
                        () = stopped_signal(&mut handshake_stop) => return,
                    };
                    // A failed or slow handshake is the client's problem: dropped, not logged.
                    if let Ok(Ok(stream)) = handshake {
                        serve_connection(TokioIo::new(stream), service, stop, permit).await;
                    }
                }
            }
        });
    }
    drop(listener);
    let drained = tokio::time::timeout(shared.grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        let open = connections.len();
        shared.tally.events.emit(&Event::ConnectionsDropped {
            open,
            grace: shared.grace,
        });
        connections.shutdown().await;
    }
    Ok(())
}

/// Serves HTTP/1.1 on one connection until it closes, or until the stop (then after its
/// request in flight). The connection's slot is released when this returns.
async fn serve_connection<I>(
    io: I,
    service: TowerToHyperService<axum::Router>,
    mut stop: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let connection = builder.serve_connection(io, service);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        () = stopped_signal(&mut stop) => {
            // Finish the request in flight, if any, then close.
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// Completes when the stop is sent (or its sender is gone).
async fn stopped_signal(stopped: &mut watch::Receiver<bool>) {
    let _ = stopped.wait_for(|stop| *stop).await;
}

/// Counts refused connections and accept failures and reports them as events, at most once
/// per [`REPORT_INTERVAL`] each: the first at once, later ones as a count when the interval
/// has passed (checked every second, and once when the server stops).
struct Tally {
    events: Events,
    state: Mutex<TallyState>,
}

#[derive(Default)]
struct TallyState {
    refused: Counter,
    limit: usize,
    failed: Counter,
    last_failure: Option<std::io::Error>,
}

#[derive(Default)]
struct Counter {
    /// Occurrences not reported yet.
    pending: u64,
    /// When the last report was made.
    reported: Option<Instant>,
}

impl Counter {
    /// Notes one occurrence; whether to report now.
    fn note(&mut self, now: Instant) -> Option<u64> {
        self.pending += 1;
        self.due(now, false)
    }

    /// The count to report now, if any: something is pending and the interval since the last
    /// report has passed (or `force`).
    fn due(&mut self, now: Instant, force: bool) -> Option<u64> {
        let quiet = self
            .reported
            .is_none_or(|at| now.saturating_duration_since(at) >= REPORT_INTERVAL);
        if self.pending == 0 || !(quiet || force) {
            return None;
        }
        self.reported = Some(now);
        Some(std::mem::take(&mut self.pending))
    }
}

impl Tally {
    fn new(events: Events) -> Tally {
        Tally {
            events,
            state: Mutex::new(TallyState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TallyState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn refused(&self, limit: usize, now: Instant) {
        let due = {
            let mut state = self.lock();
            state.limit = limit;
            state.refused.note(now)
        };
        if let Some(count) = due {
            self.events
                .emit(&Event::ConnectionsRefused { count, limit });
        }
    }

    fn accept_failed(&self, error: std::io::Error, now: Instant) {
        let due = {
            let mut state = self.lock();
            let due = state.failed.note(now);
            match due {
                Some(count) => Some((count, error)),
                None => {
                    state.last_failure = Some(error);
                    None
                }
            }
        };
        if let Some((count, last)) = due {
            self.events
                .emit(&Event::AcceptFailed { count, last: &last });
        }
    }

    /// Reports what is pending and due (everything pending, with `force`).
    fn flush(&self, now: Instant, force: bool) {
        let (refused, limit, failed) = {
            let mut state = self.lock();
            let refused = state.refused.due(now, force);
            let failed = state
                .failed
                .due(now, force)
                .and_then(|count| Some((count, state.last_failure.take()?)));
            (refused, state.limit, failed)
        };
        if let Some(count) = refused {
            self.events
                .emit(&Event::ConnectionsRefused { count, limit });
        }
        if let Some((count, last)) = failed {
            self.events
                .emit(&Event::AcceptFailed { count, last: &last });
        }
    }

    /// Reports the pending counts once their interval has passed; runs until aborted.
    async fn tick(self: Arc<Tally>) {
        let mut interval = tokio::time::interval(Duration::from_secs(1));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            self.flush(Instant::now(), false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_and_accept_failures_are_reported_at_most_once_per_interval() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let tally = Tally::new(Events::new(move |event| {
            let line = match event {
                Event::ConnectionsRefused { count, limit } => format!("refused {count} of {limit}"),
                Event::AcceptFailed { count, last } => format!("failed {count}: {last}"),
                _ => return,
            };
            sink.lock().unwrap().push(line);
        }));
        let start = Instant::now();
        let error = |text: &str| std::io::Error::other(text.to_owned());
        for i in 0..1000 {
            tally.refused(4, start + Duration::from_millis(i));
            tally.accept_failed(
                error(&format!("emfile {i}")),
                start + Duration::from_millis(i),
            );
        }
        // The first of each at once, nothing more within the interval.
        tally.flush(start + Duration::from_secs(9), false);
        assert_eq!(
            *seen.lock().unwrap(),
            ["refused 1 of 4", "failed 1: emfile 0"]
        );
        // Once the interval has passed, the rest as one count each, with the latest error.
        tally.flush(start + REPORT_INTERVAL, false);
        tally.flush(start + REPORT_INTERVAL + Duration::from_secs(1), false);
        assert_eq!(
            seen.lock().unwrap()[2..],
            ["refused 999 of 4", "failed 999: emfile 999"]
        );
        // The final flush reports whatever is left, interval or not.
        tally.refused(4, start + REPORT_INTERVAL + Duration::from_secs(2));
        tally.flush(start + REPORT_INTERVAL + Duration::from_secs(3), true);
        assert_eq!(seen.lock().unwrap()[4..], ["refused 1 of 4"]);
    }
}
