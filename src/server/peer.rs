//! [`PeerLink`]: the [`Link`] between zones served by different processes, over HTTP(S).
//!
//! Zones of this process are reached through a [`LocalLink`], as before; a zone named as a
//! peer (`keylife serve --peer ZONE=URL`) is reached at its API address with the signed client
//! of [`super::client`]: an update is `POST`ed to [`REPLICATION_UPDATE_PATH`] and a rotation
//! request to [`REPLICATION_ROTATION_PATH`], signed by the link credential this process holds
//! for that zone, their bodies in the [`wire`] format with material wrapped under
//! the keys derived from that credential's secret. An answer counts only if its MAC verifies
//! under the same keys over the request's signature: a forged or replayed acknowledgement
//! cannot clear the outbox.
//!
//! [`Link`] is synchronous (the delivery thread, `run_due` and `sync` call it), the client
//! asynchronous: the link owns a small runtime of its own and the calling thread waits for its
//! answer, so it may be called from any thread, a server's workers included.
//!
//! ```no_run
//! # fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use keylife::server::client::ApiCredential;
//! use keylife::server::peer::{Peer, PeerLink, PeerOptions};
//! use keylife::{Kms, KmsOptions, LocalLink, RootKey};
//!
//! let local = LocalLink::new();
//! let link = PeerLink::new(
//!     Arc::clone(&local),
//!     vec![Peer {
//!         zone: "de-fra-1".to_owned(),
//!         url: "http://127.0.0.1:8081/v2".to_owned(),
//!         credential: ApiCredential::new("EXOlink", "link secret"),
//!     }],
//!     PeerOptions::default(),
//! )?;
//! let kms = Kms::open("data/ch-gva-2", RootKey::generate()?, KmsOptions::new("ch-gva-2").link(link))?;
//! local.attach(&kms);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::client::{ApiCredential, Client, ClientError, ClientOptions};
use super::{REPLICATION_ROTATION_PATH, REPLICATION_UPDATE_PATH};
use crate::crypto::LinkKey;
use crate::wire::{self, RotationRequest};
use crate::{Ack, Error, KeyId, Link, LocalLink, ReplicaUpdate};

/// The default of [`PeerOptions::timeout`]: how long one message may wait for its answer.
pub const DEFAULT_PEER_TIMEOUT: Duration = Duration::from_secs(15);

/// The most characters of a peer's refusal kept in `last-failure`.
const MAX_DETAIL_CHARS: usize = 512;

/// The most bytes of an answer read (an acknowledgement is [`wire::ACK_LEN`] bytes).
const MAX_ANSWER_BYTES: usize = 1024;

/// A zone served by another process. `Debug` shows the credential's key, not its secret.
#[derive(Debug)]
pub struct Peer {
    /// The zone.
    pub zone: String,
    /// Its API URL, as its `keylife serve` prints it (`http://ADDR/v2`, `https://ADDR/v2`).
    pub url: String,
    /// The link credential this process signs its messages to the zone with; the zone's
    /// process holds it with the `replicate` grant.
    pub credential: ApiCredential,
}

/// How a [`PeerLink`] connects.
#[derive(Clone)]
pub struct PeerOptions {
    /// PEM text of the CA certificates an `https://` peer's certificate must chain to
    /// (`--peer-ca-file`): required for HTTPS peers.
    pub ca_pem: Option<Vec<u8>>,
    /// How long one message may wait for its answer (its connection at most 5 s of it).
    /// Default [`DEFAULT_PEER_TIMEOUT`].
    pub timeout: Duration,
}

impl Default for PeerOptions {
    fn default() -> PeerOptions {
        PeerOptions {
            ca_pem: None,
            timeout: DEFAULT_PEER_TIMEOUT,
        }
    }
}

impl fmt::Debug for PeerOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerOptions")
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "..."))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// One peer zone: its client and the link keys of its credential.
struct PeerZone {
    client: Client,
    keys: LinkKey,
    /// How long one message may take, answer included ([`PeerOptions::timeout`]).
    timeout: Duration,
}

/// The link of a process whose zones replicate to zones of other processes (see the module).
pub struct PeerLink {
    local: Arc<LocalLink>,
    peers: HashMap<String, PeerZone>,
    runtime: LinkRuntime,
}

impl fmt::Debug for PeerLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut peers: Vec<_> = self
            .peers
            .iter()
            .map(|(zone, peer)| format!("{zone}={}", peer.client.url()))
            .collect();
        peers.sort();
        f.debug_struct("PeerLink")
            .field("local", &self.local)
            .field("peers", &peers)
            .finish()
    }
}

impl PeerLink {
    /// A link reaching the zones attached to `local` in this process and each of `peers`
    /// over HTTP(S). Errors: a peer named twice, a URL that is not an API URL, an `https://`
    /// peer without [`PeerOptions::ca_pem`], the runtime not starting. A peer zone also served
    /// by this process is refused where the zones are configured (`keylife serve`): `local`
    /// may gain zones later.
    pub fn new(
        local: Arc<LocalLink>,
        peers: Vec<Peer>,
        options: PeerOptions,
    ) -> Result<Arc<PeerLink>, ClientError> {
        let client_options = ClientOptions {
            ca_pem: options.ca_pem.clone(),
            connect_timeout: options.timeout.min(Duration::from_secs(5)),
            idle_timeout: options.timeout,
            ..ClientOptions::default()
        };
        let mut zones = HashMap::with_capacity(peers.len());
        for peer in peers {
            if zones.contains_key(&peer.zone) {
                return Err(ClientError::Url {
                    url: peer.url,
                    reason: format!("zone {} is named as a peer twice", peer.zone),
                });
            }
            let keys = LinkKey::derive(peer.credential.secret());
            let client = Client::new(&peer.url, peer.credential, client_options.clone())?;
            zones.insert(
                peer.zone,
                PeerZone {
                    client,
                    keys,
                    timeout: options.timeout,
                },
            );
        }
        Ok(Arc::new(PeerLink {
            local,
            peers: zones,
            runtime: LinkRuntime::start()?,
        }))
    }

    /// The zones named as peers, sorted.
    #[must_use]
    pub fn peer_zones(&self) -> Vec<String> {
        let mut zones: Vec<String> = self.peers.keys().cloned().collect();
        zones.sort();
        zones
    }

    fn peer(&self, zone: &str) -> Option<&PeerZone> {
        // A zone of this process is reached in-process even if it is also named as a peer
        // (`keylife serve` refuses that configuration).
        if self.local.knows(zone) {
            return None;
        }
        self.peers.get(zone)
    }
}

impl Link for PeerLink {
    fn knows(&self, zone: &str) -> bool {
        self.local.knows(zone) || self.peers.contains_key(zone)
    }

    fn deliver(&self, zone: &str, update: &ReplicaUpdate) -> Result<Ack, Error> {
        let Some(peer) = self.peer(zone) else {
            return self.local.deliver(zone, update);
        };
        let body = wire::encode_update(update, zone, &peer.keys)?;
        let (answer, signature) = self.runtime.run(zone, async {
            exchange(peer, zone, REPLICATION_UPDATE_PATH, body).await
        })?;
        wire::decode_ack(&answer, &signature, &peer.keys).map_err(|error| refused(zone, &error))
    }

    fn request_rotation(&self, zone: &str, id: KeyId, version: u32) -> Result<(), Error> {
        let Some(peer) = self.peer(zone) else {
            return self.local.request_rotation(zone, id, version);
        };
        let body = wire::encode_rotation(&RotationRequest {
            origin: zone.to_owned(),
            id,
            version,
        })?;
        let (answer, signature) = self.runtime.run(zone, async {
            exchange(peer, zone, REPLICATION_ROTATION_PATH, body).await
        })?;
        wire::decode_rotation_done(&answer, &signature, &peer.keys)
            .map_err(|error| refused(zone, &error))
    }
}

/// A peer's answer that is not its authenticated answer, as the replica's failure.
fn refused(zone: &str, error: &Error) -> Error {
    Error::ZoneRefused {
        zone: zone.to_owned(),
        detail: error.to_string(),
    }
}

/// Sends `body` to `path` of `peer` and returns the answer's bytes (2xx) and the request's
/// signature. A peer out of reach is [`Error::ZoneUnreachable`]; one that answers with a
/// refusal is [`Error::ZoneRefused`] with its status, code and detail.
async fn exchange(
    peer: &PeerZone,
    zone: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<(Vec<u8>, Vec<u8>), Error> {
    // One deadline for the whole message: the client's own timeouts bound each read, and a
    // peer that sends its answer a byte at a time must not hold the delivery for longer.
    tokio::time::timeout(peer.timeout, exchange_once(peer, zone, path, body))
        .await
        .unwrap_or_else(|_| {
            Err(Error::ZoneUnreachable {
                zone: zone.to_owned(),
                detail: format!("no whole answer within {:?}", peer.timeout),
            })
        })
}

async fn exchange_once(
    peer: &PeerZone,
    zone: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<(Vec<u8>, Vec<u8>), Error> {
    let unreachable = |error: ClientError| Error::ZoneUnreachable {
        zone: zone.to_owned(),
        detail: error.to_string(),
    };
    let (answer, signature) = peer
        .client
        .send_signed("POST", path, "application/octet-stream", body)
        .await
        .map_err(unreachable)?;
    let answer = match answer.success().await {
        Ok(answer) => answer,
        Err(ClientError::Refused {
            status,
            code,
            detail,
            ..
        }) => {
            return Err(Error::ZoneRefused {
                zone: zone.to_owned(),
                detail: format!(
                    "{status} {}: {}",
                    code.as_deref().unwrap_or("(no code)"),
                    // The peer's words, kept short: they are shown as `last-failure`.
                    detail.chars().take(MAX_DETAIL_CHARS).collect::<String>()
                ),
            });
        }
        Err(error) => return Err(unreachable(error)),
    };
    let bytes = answer.bytes(MAX_ANSWER_BYTES).await.map_err(unreachable)?;
    Ok((bytes, signature))
}

/// The link's own runtime: the calling thread waits for what it runs there. Shut down in the
/// background when the link is dropped (which may happen inside another runtime).
struct LinkRuntime(Option<tokio::runtime::Runtime>);

impl LinkRuntime {
    fn start() -> Result<LinkRuntime, ClientError> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("keylife-link")
            .enable_all()
            .build()
            .map(|runtime| LinkRuntime(Some(runtime)))
            .map_err(|error| ClientError::Http {
                addr: "the link".to_owned(),
                detail: format!("cannot start its runtime: {error}"),
            })
    }

    /// Runs `work` on the link's runtime and waits for it on this thread.
    fn run<T, F>(&self, zone: &str, work: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, Error>> + Send,
    {
        let closed = || Error::ZoneUnreachable {
            zone: zone.to_owned(),
            detail: "the link is closed".to_owned(),
        };
        let runtime = self.0.as_ref().ok_or_else(closed)?;
        if tokio::runtime::Handle::try_current().is_err() {
            return runtime.block_on(work);
        }
        // Inside another runtime (a server's worker asking for a rotation, its blocking
        // pool) a runtime cannot be entered: a thread of its own waits instead. `work` borrows
        // from the caller, who waits here until it is done: the scoped thread ends before this
        // returns.
        std::thread::scope(|scope| {
            scope
                .spawn(|| runtime.block_on(work))
                .join()
                .unwrap_or_else(|_| Err(closed()))
        })
    }
}

impl Drop for LinkRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}
