//! What a handler receives: a request whose signature checked out ([`Signed`]), with the key
//! id of its path for the routes under `/v2/kms-key/{id}` ([`KeyCall`]), and what it answers
//! ([`Json`]). Every refusal on the way is a [`Problem`].

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use serde::Serialize;
use zeroize::Zeroizing;

use super::keyring::Keyring;
use super::problem::Problem;
use super::request::Fields;
use crate::{Caller, Error, KeyId, Kms};

/// What every handler of one zone shares.
pub(crate) struct Zone {
    pub(crate) kms: Arc<Kms>,
    pub(crate) credentials: Arc<Keyring>,
    pub(crate) max_body_bytes: usize,
    pub(crate) body_timeout: std::time::Duration,
    pub(crate) body_budget: Arc<tokio::sync::Semaphore>,
}

/// A request whose signature checked out: the zone as its signer (the API key is the
/// caller's actor) and its body, wiped when dropped (it may hold a plaintext or a data key
/// in base64).
pub(crate) struct Signed {
    pub(crate) kms: Kms,
    pub(crate) body: Zeroizing<Vec<u8>>,
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
        // Everything that needs no body first: an unsigned or unknown caller is refused
        // before a byte of its body is read or held.
        let authorization = parts
            .headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        let credentials = zone.credentials.current();
        let pending = credentials
            .check_header(authorization, unix_now())
            .map_err(|error| Problem::from(&error))?;
        // This request's share of the memory for bodies, held until its body is checked.
        let share = declared.map_or(limit, |length| usize::try_from(length).unwrap_or(limit));
        let kib = u32::try_from(share.div_ceil(1024).clamp(1, super::BODY_BUDGET_KIB))
            .unwrap_or(u32::MAX);
        let _permit = zone
            .body_budget
            .acquire_many(kib)
            .await
            .map_err(|_| Problem::internal("the server is stopping"))?;
        let body = read_body(body, zone).await?;
        let signer = pending
            .verify(
                parts.method.as_str(),
                parts.uri.path(),
                parts.uri.query(),
                &body,
            )
            .map_err(|error| Problem::from(&error))?;
        let kms = zone.kms.as_caller(Caller::new(signer));
        Ok(Signed { kms, body })
    }
}

/// The body, within the size limit and the time limit.
async fn read_body(body: axum::body::Body, zone: &Zone) -> Result<Zeroizing<Vec<u8>>, Problem> {
    let limited = Limited::new(body, zone.max_body_bytes);
    match tokio::time::timeout(zone.body_timeout, limited.collect()).await {
        Ok(Ok(collected)) => Ok(Zeroizing::new(Vec::from(collected.to_bytes()))),
        Ok(Err(error)) if error.is::<LengthLimitError>() => {
            Err(Problem::too_large(zone.max_body_bytes))
        }
        Ok(Err(_)) => Err(Problem::from(Error::BadRequest {
            field: "body",
            reason: "could not be read: the connection or its framing failed".to_owned(),
        })),
        Err(_) => Err(Problem::body_timeout(zone.body_timeout)),
    }
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
        let signed = Signed::from_request(Request::from_parts(parts, body), zone).await?;
        Ok(KeyCall {
            id: KeyId::parse(&path?)?,
            signed,
        })
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
/// large answer, on the blocking pool rather than on the server's async threads.
pub(crate) struct Json<T> {
    body: Result<Vec<u8>, serde_json::Error>,
    answer: PhantomData<fn() -> T>,
}

impl<T: Serialize> Json<T> {
    /// The answer `value`, encoded now.
    pub(crate) fn encode(value: &T) -> Json<T> {
        Json {
            body: serde_json::to_vec(value),
            answer: PhantomData,
        }
    }
}

impl<T> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        match self.body {
            Ok(body) => {
                let mut response = (StatusCode::OK, body).into_response();
                let headers = response.headers_mut();
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                response
            }
            Err(error) => {
                Problem::internal(format!("cannot encode the answer: {error}")).into_response()
            }
        }
    }
}

/// What a handler answers.
pub(crate) type Answer<T> = Result<Json<T>, Problem>;
