//! What a handler receives: a request whose signature checked out ([`Signed`]), with the key
//! id of its path for the routes under `/v2/kms-key/{id}` ([`KeyCall`]), and what it answers
//! ([`Json`]). Every refusal on the way is a [`Problem`].

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt as _;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use zeroize::Zeroizing;

use super::auth::{self, AuthError, Grants};
use super::keyring::Keyring;
use super::problem::Problem;
use super::replay::ReplayCache;
use super::request::Fields;
use super::slot::Slot;
use super::{BACKUP_PATH, REPLICATION_ROTATION_PATH, REPLICATION_UPDATE_PATH};
use crate::crypto::LinkKey;
use crate::server::audit_log::AuditLog;
use crate::{Caller, Error, KeyId, Kms, Operation};

/// What every handler of one zone shares.
pub(crate) struct Zone {
    pub(crate) kms: Arc<Kms>,
    pub(crate) credentials: Arc<Keyring>,
    pub(crate) max_body_bytes: usize,
    pub(crate) body_timeout: Duration,
    /// Bodies in memory beyond each connection's free share, in KiB, across every zone.
    pub(crate) body_budget: Arc<Semaphore>,
    /// How long a body may wait for its share of `body_budget`.
    pub(crate) budget_timeout: Duration,
    /// How far ahead a signature's `expires` may be, in seconds.
    pub(crate) max_validity_secs: i64,
    /// The signatures already used for state-changing requests, with `--refuse-replays`.
    pub(crate) replays: Option<Arc<ReplayCache>>,
    /// The signatures already used for replication messages: always kept.
    pub(crate) link_replays: Arc<ReplayCache>,
    /// The zones this server serves: a link credential never speaks for one of them.
    pub(crate) served: Arc<Vec<String>>,
    /// The audit log, if one is written.
    pub(crate) audit: Option<Arc<AuditLog>>,
    /// One permit: the backup being sent (`POST /keylife/v1/backup`), one at a time.
    pub(crate) backups: Arc<Semaphore>,
}

/// A request whose signature checked out: the zone as its signer (the API key is the
/// caller's actor, its grants the caller's check) and its body, wiped when dropped (it may hold
/// a plaintext or a data key in base64).
pub(crate) struct Signed {
    pub(crate) kms: Kms,
    pub(crate) body: Zeroizing<Vec<u8>>,
    /// What the signer may do.
    pub(crate) grants: Grants,
    /// For a replication message: the link keys of its signer's secret and the request's
    /// signature (what the answer's MAC covers).
    pub(crate) link: Option<(LinkKey, Vec<u8>)>,
    /// The body's share of the budget, given back when the request is done.
    _share: Option<OwnedSemaphorePermit>,
}

impl Signed {
    /// The body as a JSON object with the fields in `allowed` only.
    pub(crate) fn fields(&self, allowed: &[&'static str]) -> Result<Fields, Error> {
        Fields::parse(&self.body, allowed)
    }

    /// Refuses a body with any field: the operation takes none (empty or `{}`).
    pub(crate) fn no_fields(&self) -> Result<(), Error> {
        self.fields(&[]).map(drop)
    }

    /// Whether the body is large enough for its crypto to run off the async workers.
    pub(crate) fn is_large(&self) -> bool {
        self.body.len() > INLINE_BODY_BYTES
    }
}

/// Request bodies up to this size are handled on the async workers: their crypto takes
/// microseconds once the key is cached. Larger ones (up to the 4 MiB plaintext limit in base64)
/// go to the blocking pool, so that one big request does not stall the small ones.
const INLINE_BODY_BYTES: usize = 64 * 1024;

/// The share of a body (and of an answer) that needs no budget: each connection has one
/// request at a time, so with `--max-connections` 1024 these shares hold at most 64 MiB.
pub(crate) const FREE_SHARE_BYTES: usize = 64 * 1024;

/// The operation of a signed route of [`super::http::router`]: an API operation under
/// `/v2`, or [`Operation::Backup`] for `POST /keylife/v1/backup` (`None` for a path and method
/// that name none: the router answers those before any extractor runs).
pub(crate) fn operation_of(method: &Method, path: &str) -> Option<Operation> {
    let keylife = [
        (BACKUP_PATH, Operation::Backup),
        (REPLICATION_UPDATE_PATH, Operation::ReceiveUpdate),
        (REPLICATION_ROTATION_PATH, Operation::RetireVersion),
    ];
    if let Some((_, operation)) = keylife.iter().find(|(route, _)| *route == path) {
        return (method == Method::POST).then_some(*operation);
    }
    let rest = path.strip_prefix("/v2/kms-key")?;
    let mut segments = rest.strip_prefix('/').map(|rest| rest.split('/'));
    let (id, action) = match segments.as_mut() {
        None if rest.is_empty() => (None, None),
        None => return None,
        Some(segments) => (segments.next(), segments.next()),
    };
    // axum answers HEAD with the GET handler: it is the same operation.
    let method = if method == Method::HEAD {
        &Method::GET
    } else {
        method
    };
    Some(match (method, id, action) {
        (&Method::GET, None, None) => Operation::ListKeys,
        (&Method::POST, None, None) => Operation::CreateKey,
        (&Method::GET, Some(_), None) => Operation::GetKey,
        (_, Some(_), Some(action)) => match action {
            "list-key-rotations" => Operation::ListKeyRotations,
            "enable" => Operation::EnableKey,
            "disable" => Operation::DisableKey,
            "rotate" => Operation::RotateKey,
            "enable-key-rotation" => Operation::EnableKeyRotation,
            "disable-key-rotation" => Operation::DisableKeyRotation,
            "schedule-deletion" => Operation::ScheduleKeyDeletion,
            "cancel-deletion" => Operation::CancelKeyDeletion,
            "replicate" => Operation::ReplicateKey,
            "encrypt" => Operation::Encrypt,
            "decrypt" => Operation::Decrypt,
            "re-encrypt" => Operation::ReEncrypt,
            "generate-data-key" => Operation::GenerateDataKey,
            _ => return None,
        },
        _ => return None,
    })
}

/// Whether `operation` changes state: the replay cache holds its signatures. The crypto
/// operations do not (encrypt and generate-data-key make a new answer each time, and replaying
/// a decrypt gives the attacker nothing a captured answer does not). A backup changes nothing:
/// replaying one gives what the captured answer gives.
pub(crate) fn changes_state(operation: Operation) -> bool {
    !matches!(
        operation,
        Operation::Backup
            | Operation::Encrypt
            | Operation::Decrypt
            | Operation::ReEncrypt
            | Operation::GenerateDataKey
            | Operation::GetKey
            | Operation::ListKeys
            | Operation::ListKeyRotations
    )
}

/// Whether `operation` is a replication message from a zone in another process (the link's
/// routes outside `/v2`).
pub(crate) fn is_replication(operation: Operation) -> bool {
    matches!(
        operation,
        Operation::ReceiveUpdate | Operation::RetireVersion
    )
}

impl FromRequest<Arc<Zone>> for Signed {
    type Rejection = Problem;

    async fn from_request(request: Request, zone: &Arc<Zone>) -> Result<Signed, Problem> {
        let (parts, body) = request.into_parts();
        let limit = zone.max_body_bytes;
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        if declared.is_some_and(|length| length > limit as u64) {
            return Err(Problem::too_large(limit));
        }
        // What needs neither the body nor the key first: the header's form (401) and the
        // time window (403). Then every request reads its body within the stranger's share
        // and is HMAC'd, with a dummy secret when its key is unknown: the four 403s read alike.
        let authorization = parts
            .headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        let now = unix_now();
        let credentials = zone.credentials.current();
        let slot = parts.extensions.get::<Slot>();
        let refused = |error: AuthError| {
            if let Some(slot) = slot {
                let claimed = authorization.and_then(auth::claimed_key);
                slot.refused(claimed, error.reason_class());
            }
            Problem::from(&error)
        };
        let pending = credentials
            .check_header(authorization, now, zone.max_validity_secs)
            .map_err(refused)?;
        let (body, share) = read_body(body, zone).await?;
        let (method, path) = (&parts.method, parts.uri.path());
        let verified = pending
            .verify(method.as_str(), path, parts.uri.query(), &body)
            .map_err(refused)?;
        if let Some(slot) = slot {
            slot.signed_by(verified.key);
        }
        // Permissions next, before anything else is looked at: the operation and the zone
        // (the key's name is the library's check, with the key).
        // Every route that takes a signed request names an operation; one that does not
        // (a route added without its operation) is refused rather than let past the
        // permission and replay checks.
        let Some(operation) = operation_of(method, path) else {
            return Err(Problem::internal(format!(
                "no operation is known for {method} {path}: refused"
            )));
        };
        let grants = verified.grants;
        // A link credential's zones are the origin zones it speaks for, not zones it acts in:
        // its handler checks them against the message.
        let link = is_replication(operation);
        if !grants.allows_operation(operation) || !(link || grants.allows_zone(zone.kms.zone())) {
            return Err(Problem::from(Error::Forbidden {
                operation: operation.name(),
                id: None,
            }));
        }
        let replays = if link {
            Some(&zone.link_replays)
        } else {
            zone.replays.as_ref().filter(|_| changes_state(operation))
        };
        if let Some(replays) = replays
            && !replays.first_use(pending.signature(), verified.expires, now)
        {
            if let Some(slot) = slot {
                slot.refused(Some(verified.key.to_owned()), "replayed");
            }
            return Err(Problem::replayed());
        }
        let caller = Caller::new(verified.key);
        // A credential that may make this operation on every key in every zone needs no
        // check per call, nor does a link's message (its handler checks the zones it names);
        // any other has the library check its grants too.
        let caller = if link || (grants.is_unrestricted() && grants.allows_operation(operation)) {
            caller
        } else {
            let grants = grants.clone();
            caller.permit(move |access| grants.permits(access))
        };
        let kms = zone.kms.as_caller(caller);
        Ok(Signed {
            kms: match slot {
                Some(slot) => kms.with_audit(slot.sink()),
                None => kms,
            },
            body,
            grants: grants.clone(),
            link: link
                .then(|| credentials.link_key(verified.key))
                .flatten()
                .map(|key| (key, pending.signature().to_vec())),
            _share: share,
        })
    }
}

/// The body, within the size limit and the time limit. Beyond [`FREE_SHARE_BYTES`], it takes
/// its share of the zones' body budget as its bytes arrive (a request that announces 8 MiB and
/// sends nothing holds nothing), waiting for it at most `budget_timeout`.
async fn read_body(
    mut body: axum::body::Body,
    zone: &Zone,
) -> Result<(Zeroizing<Vec<u8>>, Option<OwnedSemaphorePermit>), Problem> {
    let deadline = tokio::time::Instant::now() + zone.body_timeout;
    let mut bytes = Zeroizing::new(Vec::new());
    let mut share: Option<OwnedSemaphorePermit> = None;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(Problem::body_timeout(zone.body_timeout)),
            Ok(None) => return Ok((bytes, share)),
            Ok(Some(Err(_))) => {
                return Err(Problem::from(Error::BadRequest {
                    field: "body",
                    reason: "could not be read: the connection or its framing failed".to_owned(),
                }));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let length = bytes.len() + data.len();
        if length > zone.max_body_bytes {
            return Err(Problem::too_large(zone.max_body_bytes));
        }
        take_share(&mut share, length, &zone.body_budget, zone.budget_timeout).await?;
        extend_wiping(&mut bytes, &data);
    }
}

/// Grows `share` to cover `length` bytes beyond the free share, waiting at most `timeout`.
pub(crate) async fn take_share(
    share: &mut Option<OwnedSemaphorePermit>,
    length: usize,
    budget: &Arc<Semaphore>,
    timeout: Duration,
) -> Result<(), Problem> {
    let needed = length.saturating_sub(FREE_SHARE_BYTES).div_ceil(1024);
    let held = share.as_ref().map_or(0, OwnedSemaphorePermit::num_permits);
    let Some(more) = needed.checked_sub(held).filter(|more| *more > 0) else {
        return Ok(());
    };
    let more = u32::try_from(more).map_err(|_| Problem::busy(timeout))?;
    let permit = match tokio::time::timeout(timeout, budget.clone().acquire_many_owned(more)).await
    {
        Ok(Ok(permit)) => permit,
        Ok(Err(_)) => return Err(Problem::internal("the server is stopping")),
        Err(_) => return Err(Problem::busy(timeout)),
    };
    match share {
        Some(held) => held.merge(permit),
        None => *share = Some(permit),
    }
    Ok(())
}

/// Appends `data` to `bytes`; when the buffer must grow, the old one is wiped (a plain `Vec`
/// would free it as it is).
fn extend_wiping(bytes: &mut Zeroizing<Vec<u8>>, data: &[u8]) {
    let length = bytes.len() + data.len();
    if length > bytes.capacity() {
        let mut grown = Zeroizing::new(Vec::with_capacity(length.max(2 * bytes.capacity())));
        grown.extend_from_slice(bytes);
        *bytes = grown;
    }
    bytes.extend_from_slice(data);
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
        })
}

/// A signed request to a route under `/v2/kms-key/{id}`, with that id. The id is checked
/// after the signature: an unsigned caller learns nothing from it.
pub(crate) struct KeyCall {
    pub(crate) id: KeyId,
    pub(crate) signed: Signed,
}

impl FromRequest<Arc<Zone>> for KeyCall {
    type Rejection = Problem;

    async fn from_request(request: Request, zone: &Arc<Zone>) -> Result<KeyCall, Problem> {
        let (mut parts, body) = request.into_parts();
        let path = path_id(&mut parts, zone).await;
        let operation = operation_of(&parts.method, parts.uri.path());
        let signed = Signed::from_request(Request::from_parts(parts, body), zone).await?;
        let id = KeyId::parse(&path?)?;
        // A credential restricted by names is refused before the body's fields are read, the
        // same whether the key exists or not (the library's check, with the key's name).
        if let Some(operation) = operation.filter(|_| signed.grants.restricts_names()) {
            signed.kms.may(operation, id)?;
        }
        Ok(KeyCall { id, signed })
    }
}

/// The `{id}` of the path; a segment that is not UTF-8 is a 400 naming `id`, not axum's
/// plain-text answer.
async fn path_id(parts: &mut Parts, zone: &Arc<Zone>) -> Result<String, Problem> {
    match Path::<String>::from_request_parts(parts, zone).await {
        Ok(Path(text)) => Ok(text),
        Err(_) => Err(Problem::from(Error::BadRequest {
            field: "id",
            reason: "must be a UUID, got a path segment that is not UTF-8".to_owned(),
        })),
    }
}

/// A 200 answer with the spec's JSON of a `T`, which no cache may keep (answers may carry
/// plaintexts and data keys). It is encoded where the value is made ([`Json::encode`]): for a
/// large answer, on the blocking pool rather than on the server's async threads. Its bytes are
/// wiped once sent ([`WipedChunks`]).
pub(crate) struct Json<T> {
    body: Result<Zeroizing<Vec<u8>>, serde_json::Error>,
    answer: PhantomData<fn() -> T>,
}

impl<T: Serialize> Json<T> {
    /// The answer `value`, encoded now.
    pub(crate) fn encode(value: &T) -> Json<T> {
        Json {
            body: serde_json::to_vec(value).map(Zeroizing::new),
            answer: PhantomData,
        }
    }
}

/// The pieces an answer is sent in: the body itself when it is one piece, else copies of 64 KiB
/// of it, each wiped when hyper drops
/// it; the whole body is wiped when the answer is done or dropped.
pub(crate) struct WipedChunks {
    body: Zeroizing<Vec<u8>>,
    sent: usize,
}

/// A piece of an answer, wiped on drop.
struct WipedChunk(Vec<u8>);

impl AsRef<[u8]> for WipedChunk {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for WipedChunk {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

const CHUNK_BYTES: usize = 64 * 1024;

impl hyper::body::Body for WipedChunks {
    type Data = hyper::body::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let start = self.sent;
        let end = self.body.len().min(start + CHUNK_BYTES);
        if start == end {
            return std::task::Poll::Ready(None);
        }
        // An answer of one piece (every small answer) is handed over as it is, not copied.
        let chunk = if start == 0 && end == self.body.len() {
            WipedChunk(std::mem::take(&mut *self.body))
        } else {
            self.sent = end;
            WipedChunk(self.body[start..end].to_vec())
        };
        let bytes = hyper::body::Bytes::from_owner(chunk);
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(bytes))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent == self.body.len()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact((self.body.len() - self.sent) as u64)
    }
}

/// A response body that holds its share of the body budget until it is sent or dropped.
struct Shared<B> {
    inner: B,
    _share: OwnedSemaphorePermit,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Shared<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(context)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Middleware: an answer larger than the free share takes its share of the body budget
/// (waiting at most `budget_timeout`, else 503) and holds it until it is sent, so that
/// answers nobody reads count against the same 64 MiB as request bodies.
pub(crate) async fn answers_within_budget(
    axum::extract::State(zone): axum::extract::State<Arc<Zone>>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let response = next.run(request).await;
    // keylife's answers all know their length; one that does not is not held back.
    let length = hyper::body::Body::size_hint(response.body())
        .exact()
        .and_then(|length| usize::try_from(length).ok())
        .unwrap_or(0);
    if length <= FREE_SHARE_BYTES {
        return response;
    }
    let mut share = None;
    match take_share(&mut share, length, &zone.body_budget, zone.budget_timeout).await {
        Ok(()) => match share {
            Some(share) => response.map(|inner| {
                axum::body::Body::new(Shared {
                    inner,
                    _share: share,
                })
            }),
            None => response,
        },
        Err(problem) => problem.into_response(),
    }
}

/// A 200 answer of `body` as `content_type`, never cached (every answer of keylife holds
/// what a cache should not keep).
pub(crate) fn ok_no_store(body: axum::body::Body, content_type: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

impl<T> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        match self.body {
            Ok(body) => ok_no_store(
                axum::body::Body::new(WipedChunks { body, sent: 0 }),
                "application/json",
            ),
            Err(error) => {
                Problem::internal(format!("cannot encode the answer: {error}")).into_response()
            }
        }
    }
}

/// What a handler answers.
pub(crate) type Answer<T> = Result<Json<T>, Problem>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_names_its_operation() {
        let id = "019b76da-a800-7463-a382-56a1e31aca28";
        let key = |action: &str| format!("/v2/kms-key/{id}/{action}");
        let cases = [
            (Method::GET, "/v2/kms-key".to_owned(), Operation::ListKeys),
            (Method::POST, "/v2/kms-key".to_owned(), Operation::CreateKey),
            (Method::GET, format!("/v2/kms-key/{id}"), Operation::GetKey),
            (
                Method::GET,
                key("list-key-rotations"),
                Operation::ListKeyRotations,
            ),
            (Method::POST, key("enable"), Operation::EnableKey),
            (Method::POST, key("disable"), Operation::DisableKey),
            (Method::POST, key("rotate"), Operation::RotateKey),
            (
                Method::POST,
                key("enable-key-rotation"),
                Operation::EnableKeyRotation,
            ),
            (
                Method::POST,
                key("disable-key-rotation"),
                Operation::DisableKeyRotation,
            ),
            (
                Method::POST,
                key("schedule-deletion"),
                Operation::ScheduleKeyDeletion,
            ),
            (
                Method::POST,
                key("cancel-deletion"),
                Operation::CancelKeyDeletion,
            ),
            (Method::POST, key("replicate"), Operation::ReplicateKey),
            (Method::POST, key("encrypt"), Operation::Encrypt),
            (Method::POST, key("decrypt"), Operation::Decrypt),
            (Method::POST, key("re-encrypt"), Operation::ReEncrypt),
            (
                Method::POST,
                key("generate-data-key"),
                Operation::GenerateDataKey,
            ),
            (Method::POST, BACKUP_PATH.to_owned(), Operation::Backup),
            (
                Method::POST,
                REPLICATION_UPDATE_PATH.to_owned(),
                Operation::ReceiveUpdate,
            ),
            (
                Method::POST,
                REPLICATION_ROTATION_PATH.to_owned(),
                Operation::RetireVersion,
            ),
        ];
        for (method, path, operation) in &cases {
            assert_eq!(
                operation_of(method, path),
                Some(*operation),
                "{method} {path}"
            );
        }
        let state_changes: Vec<&str> = cases
            .iter()
            .filter(|(_, _, operation)| changes_state(*operation))
            .map(|(_, _, operation)| operation.name())
            .collect();
        assert_eq!(state_changes.len(), 11, "{state_changes:?}");
        assert!(cases.iter().all(|(method, _, operation)| {
            !changes_state(*operation) || *method == Method::POST
        }));
        for (method, path) in [
            (Method::GET, "/v2".to_owned()),
            (Method::GET, "/v2/kms-keys".to_owned()),
            (Method::POST, key("explode")),
            (Method::GET, "/keylife/v1/health".to_owned()),
            (Method::GET, BACKUP_PATH.to_owned()),
            (Method::HEAD, BACKUP_PATH.to_owned()),
            (Method::POST, format!("{BACKUP_PATH}/x")),
            (Method::GET, REPLICATION_UPDATE_PATH.to_owned()),
            (Method::POST, "/keylife/v1/replication".to_owned()),
        ] {
            assert_eq!(operation_of(&method, &path), None, "{method} {path}");
        }
    }
}
