//! The routes: the 16 operations of Exoscale's KMS API under `/v2`, each a signed request
//! whose body is checked field by field and whose answer is the spec's JSON or a problem
//! document.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use serde::Serialize;
use zeroize::Zeroizing;

use crate::core::KeyUsage;
use crate::core::limits::{DATA_KEY_BYTES, DELETION_DELAY, ROTATION_PERIOD};
use crate::{CreateKey, DataKeySpec, Error, KeyId, Kms};

use super::auth::Credentials;
use super::problem::Problem;
use super::request::Fields;

/// What every handler of one zone shares.
pub(crate) struct Zone {
    pub(crate) kms: Arc<Kms>,
    pub(crate) credentials: Arc<Credentials>,
    pub(crate) max_body_bytes: usize,
    pub(crate) body_timeout: std::time::Duration,
    pub(crate) body_budget: Arc<tokio::sync::Semaphore>,
}

type Shared = State<Arc<Zone>>;

/// The `{id}` of the path, checked in the handler after the signature: a rejection here
/// (a segment that is not UTF-8) becomes a 400 naming `id`, not axum's plain-text answer.
type PathId = Result<Path<String>, PathRejection>;

/// The router of one zone: every operation under `/v2`, problems for everything else.
pub(crate) fn router(zone: Arc<Zone>) -> Router {
    Router::new()
        .route("/v2/kms-key", get(list_keys).post(create_key))
        .route("/v2/kms-key/{id}", get(get_key))
        .route(
            "/v2/kms-key/{id}/list-key-rotations",
            get(list_key_rotations),
        )
        .route("/v2/kms-key/{id}/enable", post(enable_key))
        .route("/v2/kms-key/{id}/disable", post(disable_key))
        .route("/v2/kms-key/{id}/rotate", post(rotate_key))
        .route(
            "/v2/kms-key/{id}/enable-key-rotation",
            post(enable_key_rotation),
        )
        .route(
            "/v2/kms-key/{id}/disable-key-rotation",
            post(disable_key_rotation),
        )
        .route(
            "/v2/kms-key/{id}/schedule-deletion",
            post(schedule_deletion),
        )
        .route("/v2/kms-key/{id}/cancel-deletion", post(cancel_deletion))
        .route("/v2/kms-key/{id}/replicate", post(replicate_key))
        .route("/v2/kms-key/{id}/encrypt", post(encrypt))
        .route("/v2/kms-key/{id}/decrypt", post(decrypt))
        .route("/v2/kms-key/{id}/re-encrypt", post(re_encrypt))
        .route(
            "/v2/kms-key/{id}/generate-data-key",
            post(generate_data_key),
        )
        .method_not_allowed_fallback(wrong_method)
        .fallback(no_route)
        .with_state(zone)
}

async fn no_route(request: Request) -> Problem {
    Problem::no_route(request.method().as_str(), request.uri().path())
}

async fn wrong_method(request: Request) -> Problem {
    Problem::wrong_method(request.method().as_str(), request.uri().path())
}

/// The body of a request whose signature checked out, wiped when dropped (it may hold a
/// plaintext or a data key in base64).
pub(crate) struct Signed(Zeroizing<Vec<u8>>);

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
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| {
                i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
            });
        // Everything that needs no body first: an unsigned or unknown caller is refused
        // before a byte of its body is read or held.
        let pending = zone
            .credentials
            .check_header(
                parts
                    .headers
                    .get(header::AUTHORIZATION)
                    .map(HeaderValue::as_bytes),
                now,
            )
            .map_err(|error| Problem::from(&error))?;
        // This request's share of the memory for bodies, held until its body is checked.
        let share = declared.map_or(limit, |length| usize::try_from(length).unwrap_or(limit));
        let kib = u32::try_from(share.div_ceil(1024).clamp(1, super::BODY_BUDGET_KIB))
            .unwrap_or(u32::MAX);
        let _permit = zone
            .body_budget
            .acquire_many(kib)
            .await
            .map_err(|_| Problem::new("internal", 500, "the server is stopping".to_owned()))?;
        let limited = Limited::new(body, limit);
        let body = match tokio::time::timeout(zone.body_timeout, limited.collect()).await {
            Ok(Ok(collected)) => Zeroizing::new(Vec::from(collected.to_bytes())),
            Ok(Err(error)) if error.is::<LengthLimitError>() => {
                return Err(Problem::too_large(limit));
            }
            Ok(Err(_)) => {
                return Err(Problem::from(&Error::BadRequest {
                    field: "body",
                    reason: "could not be read: the connection or its framing failed".to_owned(),
                }));
            }
            Err(_) => return Err(Problem::body_timeout(zone.body_timeout)),
        };
        pending
            .verify(
                parts.method.as_str(),
                parts.uri.path(),
                parts.uri.query(),
                &body,
            )
            .map_err(|error| Problem::from(&error))?;
        Ok(Signed(body))
    }
}

/// Request bodies up to this size are handled on the async workers: their crypto takes
/// microseconds once the key is cached. Larger ones (up to the 4 MiB plaintext limit in base64)
/// go to the blocking pool, so that one big request does not stall the small ones.
const INLINE_BODY_BYTES: usize = 64 * 1024;

/// Runs a crypto handler's work inline, or on the blocking pool when its body is `large`.
async fn crypto<F>(large: bool, work: F) -> Response
where
    F: FnOnce() -> Response + Send + 'static,
{
    if large {
        off_workers(work).await
    } else {
        work()
    }
}

/// Runs `work` on the blocking pool; a panic in it answers 500.
async fn off_workers<F>(work: F) -> Response
where
    F: FnOnce() -> Response + Send + 'static,
{
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|_| {
        Problem::new(
            "internal",
            500,
            "the operation failed unexpectedly".to_owned(),
        )
        .into_response()
    })
}

/// A 200 answer with the spec's JSON.
fn json<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut response = (StatusCode::OK, body).into_response();
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            // Answers may carry plaintexts and data keys: no cache may keep them.
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(error) => Problem::new(
            "internal",
            500,
            format!("cannot encode the answer: {error}"),
        )
        .into_response(),
    }
}

fn answer<T: Serialize>(result: Result<T, Error>) -> Response {
    match result {
        Ok(value) => json(&value),
        Err(error) => Problem::from(&error).into_response(),
    }
}

/// Runs `call` (which writes to the store and waits for the disk) off the async workers.
async fn blocking<T, F>(call: F) -> Response
where
    T: Serialize + Send + 'static,
    F: FnOnce() -> Result<T, Error> + Send + 'static,
{
    off_workers(move || answer(call())).await
}

macro_rules! try_or_answer {
    ($result:expr) => {
        match $result {
            Ok(value) => value,
            Err(error) => return Problem::from(&error).into_response(),
        }
    };
}

/// The path's key id, or a 400 naming `id`.
macro_rules! id_or_answer {
    ($id:expr) => {
        match $id {
            Ok(Path(text)) => try_or_answer!(KeyId::parse(&text)),
            Err(_) => {
                return Problem::from(&Error::BadRequest {
                    field: "id",
                    reason: "must be a UUID, got a path segment that is not UTF-8".to_owned(),
                })
                .into_response();
            }
        }
    };
}

/// A request without fields: its body must be empty or `{}`.
fn no_fields(body: &[u8]) -> Result<(), Error> {
    Fields::parse(body, &[]).map(drop)
}

async fn create_key(State(zone): Shared, Signed(body): Signed) -> Response {
    let fields = try_or_answer!(Fields::parse(
        &body,
        &["name", "description", "usage", "multi-zone"]
    ));
    let request = try_or_answer!(create_request(&fields));
    blocking(move || zone.kms.create_key(&request)).await
}

fn create_request(fields: &Fields) -> Result<CreateKey, Error> {
    let mut request = CreateKey::new(fields.required_string("name", "name")?);
    request.description = fields
        .string("description", "description")?
        .map(str::to_owned);
    match fields.string("usage", "usage")? {
        None | Some("encrypt-decrypt") => request.usage = KeyUsage::EncryptDecrypt,
        Some(other) => {
            return Err(Error::BadRequest {
                field: "usage",
                reason: format!("must be \"encrypt-decrypt\", got {}", Error::quote(other)),
            });
        }
    }
    request.multi_zone = fields.boolean("multi-zone", "multi-zone")?.unwrap_or(false);
    request.validate()?;
    Ok(request)
}

async fn list_keys(State(zone): Shared, Signed(body): Signed) -> Response {
    try_or_answer!(no_fields(&body));
    blocking(move || zone.kms.list_keys()).await
}

async fn get_key(State(zone): Shared, id: PathId, Signed(body): Signed) -> Response {
    let id = id_or_answer!(id);
    try_or_answer!(no_fields(&body));
    blocking(move || zone.kms.get_key(id)).await
}

async fn list_key_rotations(State(zone): Shared, id: PathId, Signed(body): Signed) -> Response {
    let id = id_or_answer!(id);
    try_or_answer!(no_fields(&body));
    blocking(move || zone.kms.list_key_rotations(id)).await
}

async fn enable_key(State(zone): Shared, id: PathId, Signed(body): Signed) -> Response {
    let id = id_or_answer!(id);
    try_or_answer!(no_fields(&body));
    blocking(move || zone.kms.enable_key(id, None)).await
}

async fn disable_key(State(zone): Shared, id: PathId, Signed(body): Signed) -> Response {
    let id = id_or_answer!(id);
    try_or_answer!(no_fields(&body));
    blocking(move || zone.kms.disable_key(id, None)).await
}

async fn rotate_key(State(zone): Shared, id: PathId, Signed(body): Signed) -> Response {
    let id = id_or_answer!(id);
    try_or_answer!(no_fields(&body));
    blocking(move || zone.kms.rotate_key(id, None)).await
}

async fn enable_key_rotation(State(zone): Shared, id: PathId, Signed(body): Signed) -> Response {
    let id = id_or_answer!(id);
    let fields = try_or_answer!(Fields::parse(&body, &["rotation-period"]));
    let period = try_or_answer!(fields.integer(&ROTATION_PERIOD));
    blocking(move || zone.kms.enable_key_rotation(id, period, None)).await
}

async fn disable_key_rotation(State(zone): Shared, id: PathId, Signed(body): Signed) -> Response {
    let id = id_or_answer!(id);
    try_or_answer!(no_fields(&body));
    blocking(move || zone.kms.disable_key_rotation(id, None)).await
}

async fn schedule_deletion(State(zone): Shared, id: PathId, Signed(body): Signed) -> Response {
    let id = id_or_answer!(id);
    let fields = try_or_answer!(Fields::parse(&body, &["delay-days"]));
    let delay = try_or_answer!(fields.integer(&DELETION_DELAY));
    blocking(move || zone.kms.schedule_key_deletion(id, delay, None)).await
}

async fn cancel_deletion(State(zone): Shared, id: PathId, Signed(body): Signed) -> Response {
    let id = id_or_answer!(id);
    try_or_answer!(no_fields(&body));
    blocking(move || zone.kms.cancel_key_deletion(id, None)).await
}

async fn replicate_key(State(zone): Shared, id: PathId, Signed(body): Signed) -> Response {
    let id = id_or_answer!(id);
    let fields = try_or_answer!(Fields::parse(&body, &["zone"]));
    let target = try_or_answer!(fields.required_string("zone", "zone")).to_owned();
    blocking(move || zone.kms.replicate_key(id, &target, None)).await
}

async fn encrypt(State(zone): Shared, id: PathId, Signed(body): Signed) -> Response {
    let large = body.len() > INLINE_BODY_BYTES;
    crypto(large, move || {
        let id = id_or_answer!(id);
        let fields = try_or_answer!(Fields::parse(&body, &["plaintext", "encryption-context"]));
        let plaintext = try_or_answer!(fields.required_bytes("plaintext", "plaintext"));
        let context = try_or_answer!(fields.bytes("encryption-context", "encryption-context"));
        answer(
            zone.kms
                .encrypt(id, &plaintext, context.as_deref().map(Vec::as_slice)),
        )
    })
    .await
}

async fn decrypt(State(zone): Shared, id: PathId, Signed(body): Signed) -> Response {
    let large = body.len() > INLINE_BODY_BYTES;
    crypto(large, move || {
        let id = id_or_answer!(id);
        let fields = try_or_answer!(Fields::parse(&body, &["ciphertext", "encryption-context"]));
        let ciphertext = try_or_answer!(fields.required_bytes("ciphertext", "ciphertext"));
        let context = try_or_answer!(fields.bytes("encryption-context", "encryption-context"));
        answer(
            zone.kms
                .decrypt(id, &ciphertext, context.as_deref().map(Vec::as_slice)),
        )
    })
    .await
}

async fn re_encrypt(State(zone): Shared, id: PathId, Signed(body): Signed) -> Response {
    let large = body.len() > INLINE_BODY_BYTES;
    crypto(large, move || {
        let id = id_or_answer!(id);
        let mut fields = try_or_answer!(Fields::parse(&body, &["source", "destination"]));
        let source = try_or_answer!(fields.required_object(
            "source",
            "source",
            "source.",
            &["key", "ciphertext", "encryption-context"]
        ));
        let destination = try_or_answer!(fields.required_object(
            "destination",
            "destination",
            "destination.",
            &["key", "encryption-context"]
        ));
        let source_key = try_or_answer!(source.required_key("key", "source.key"));
        if source_key != id {
            return Problem::from(&Error::BadRequest {
                field: "source.key",
                reason: format!("must be the key of the path, {id}, got {source_key}"),
            })
            .into_response();
        }
        let ciphertext = try_or_answer!(source.required_bytes("ciphertext", "source.ciphertext"));
        let source_context =
            try_or_answer!(source.bytes("encryption-context", "source.encryption-context"));
        let destination_key = try_or_answer!(destination.required_key("key", "destination.key"));
        let destination_context = try_or_answer!(
            destination.bytes("encryption-context", "destination.encryption-context")
        );
        answer(zone.kms.re_encrypt(
            id,
            &ciphertext,
            source_context.as_deref().map(Vec::as_slice),
            destination_key,
            destination_context.as_deref().map(Vec::as_slice),
        ))
    })
    .await
}

async fn generate_data_key(State(zone): Shared, id: PathId, Signed(body): Signed) -> Response {
    let large = body.len() > INLINE_BODY_BYTES;
    crypto(large, move || {
        let id = id_or_answer!(id);
        let fields = try_or_answer!(Fields::parse(
            &body,
            &["key-spec", "bytes-count", "encryption-context"]
        ));
        let key_spec = try_or_answer!(fields.string("key-spec", "key-spec"));
        let bytes_count = try_or_answer!(fields.integer(&DATA_KEY_BYTES));
        let spec = try_or_answer!(DataKeySpec::from_request(key_spec, bytes_count));
        let context = try_or_answer!(fields.bytes("encryption-context", "encryption-context"));
        answer(
            zone.kms
                .generate_data_key(id, spec, context.as_deref().map(Vec::as_slice)),
        )
    })
    .await
}
