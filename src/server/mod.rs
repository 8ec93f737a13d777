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

use axum::serve::ListenerExt as _;
use tokio::net::TcpListener;
use tokio::sync::watch;

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
    let (stop, stopped) = watch::channel(false);
    let mut servers = tokio::task::JoinSet::new();
    let mut kmses = Vec::with_capacity(zones.len());
    for (kms, listener) in zones {
        kmses.push(kms.clone());
        let zone = Arc::new(http::Zone {
            kms,
            credentials: credentials.clone(),
            max_body_bytes: options.max_body_bytes,
            body_timeout: options.body_timeout,
        });
        let router = http::router(zone);
        let listener = listener.tap_io(|tcp| {
            // Best effort: a socket that refuses the option still serves, only slower.
            let _ = tcp.set_nodelay(true);
        });
        let mut stopped = stopped.clone();
        servers.spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                })
                .await
        });
    }
    let due = tokio::spawn(run_due_loop(kmses, options.due_interval, stopped.clone()));
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let mut result = Ok(());
    let mut stopped_at = stopped.clone();
    let mut deadline = std::pin::pin!(async move {
        let _ = stopped_at.wait_for(|stop| *stop).await;
        tokio::time::sleep(options.shutdown_grace).await;
    });
    loop {
        tokio::select! {
            joined = servers.join_next() => match joined {
                None => break,
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(error))) => result = Err(error),
                Some(Err(error)) => result = Err(std::io::Error::other(error)),
            },
            () = &mut deadline => {
                // The grace period is over: stop waiting for stalled connections. Their
                // tasks end with the runtime; a write already started still completes, and
                // only acknowledged changes were promised.
                eprintln!(
                    "keylife: {} s after the stop, connections still open are dropped",
                    options.shutdown_grace.as_secs()
                );
                servers.abort_all();
                break;
            }
        }
    }
    // The servers are done: stop the background work and wait for a run in progress.
    let _ = due.await;
    result
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
            _ = stopped.wait_for(|stop| *stop) => return,
        }
        for kms in &zones {
            let kms = kms.clone();
            let zone = kms.zone().to_owned();
            match tokio::task::spawn_blocking(move || kms.run_due()).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => eprintln!("keylife: zone {zone}: run_due failed: {error}"),
                Err(_) => eprintln!("keylife: zone {zone}: run_due panicked"),
            }
        }
        if *stopped.borrow() {
            return;
        }
    }
}
