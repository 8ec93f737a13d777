//! The routes: the 16 operations of Exoscale's KMS API under `/v2`, and keylife's health check,
//! backup and replication between processes under `/keylife/v1`. Each handler gets a signed request ([`Signed`], or
//! [`KeyCall`] with the path's key id), checks the body field by field, and answers the spec's
//! JSON or a problem document.

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::routing::{MethodRouter, get, post};
use serde::Serialize;

use super::extract::{Answer, Json, KeyCall, Signed, Zone, answers_within_budget};

use super::backup::backup;
use super::health::{HEALTH_PATH, Health, health};
use super::problem::Problem;
use super::replication::{receive_update, retire_version};
use super::{BACKUP_PATH, REPLICATION_ROTATION_PATH, REPLICATION_UPDATE_PATH};
use crate::api::{
    Ciphertext, CreatedKey, DataKey, DeletionScheduled, KeyDetails, KeyList, Plaintext,
    RotationList, RotationResponse, SuccessResponse,
};
use crate::core::KeyUsage;
use crate::core::limits::{DATA_KEY_BYTES, DELETION_DELAY, ROTATION_PERIOD};
use crate::{CreateKey, DataKeySpec, Error};

/// The router of one zone: every operation under `/v2`, the unsigned health check of every
/// zone of the process, problems for everything else.
pub(crate) fn router(zone: Arc<Zone>, zones: Arc<Health>) -> Router {
    let key_routes: [(&str, MethodRouter<Arc<Zone>>); 13] = [
        ("list-key-rotations", get(list_key_rotations)),
        ("enable", post(enable_key)),
        ("disable", post(disable_key)),
        ("rotate", post(rotate_key)),
        ("enable-key-rotation", post(enable_key_rotation)),
        ("disable-key-rotation", post(disable_key_rotation)),
        ("schedule-deletion", post(schedule_deletion)),
        ("cancel-deletion", post(cancel_deletion)),
        ("replicate", post(replicate_key)),
        ("encrypt", post(encrypt)),
        ("decrypt", post(decrypt)),
        ("re-encrypt", post(re_encrypt)),
        ("generate-data-key", post(generate_data_key)),
    ];
    let router = Router::new()
        .route("/v2/kms-key", get(list_keys).post(create_key))
        .route("/v2/kms-key/{id}", get(get_key))
        .route(HEALTH_PATH, get(health).with_state(zones))
        .route(BACKUP_PATH, post(backup))
        .route(REPLICATION_UPDATE_PATH, post(receive_update))
        .route(REPLICATION_ROTATION_PATH, post(retire_version));
    key_routes
        .into_iter()
        .fold(router, |router, (operation, handler)| {
            router.route(&format!("/v2/kms-key/{{id}}/{operation}"), handler)
        })
        .method_not_allowed_fallback(wrong_method)
        .fallback(no_route)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&zone),
            answers_within_budget,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&zone),
            super::audited::audited,
        ))
        .with_state(zone)
}

async fn no_route(request: Request) -> Problem {
    Problem::no_route(request.method().as_str(), request.uri().path())
}

async fn wrong_method(request: Request) -> Problem {
    Problem::wrong_method(request.method().as_str(), request.uri().path())
}

/// Runs `call` (which writes to the store and waits for the disk, or is large) and encodes
/// its answer on the blocking pool; a panic in it answers 500.
async fn blocking<T, F>(call: F) -> Answer<T>
where
    T: Serialize + 'static,
    F: FnOnce() -> Result<T, Error> + Send + 'static,
{
    let call = move || call().map(|answer| Json::encode(&answer));
    match tokio::task::spawn_blocking(call).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(Problem::internal("the operation failed unexpectedly")),
    }
}

/// Runs a crypto handler's `work` inline when its body is small (microseconds once the key
/// is cached), else on the blocking pool.
async fn crypto<T, F>(large: bool, work: F) -> Answer<T>
where
    T: Serialize + 'static,
    F: FnOnce() -> Result<T, Error> + Send + 'static,
{
    if large {
        blocking(work).await
    } else {
        Ok(Json::encode(&work()?))
    }
}

async fn create_key(call: Signed) -> Answer<CreatedKey> {
    let fields = call.fields(&["name", "description", "usage", "multi-zone"])?;
    let mut request = CreateKey::new(fields.required_string("name", "name")?);
    request.description = fields
        .string("description", "description")?
        .map(str::to_owned);
    request.usage = match fields.string("usage", "usage")? {
        None | Some("encrypt-decrypt") => KeyUsage::EncryptDecrypt,
        Some(other) => {
            return Err(Problem::from(Error::BadRequest {
                field: "usage",
                reason: format!("must be \"encrypt-decrypt\", got {}", Error::quote(other)),
            }));
        }
    };
    request.multi_zone = fields.boolean("multi-zone", "multi-zone")?.unwrap_or(false);
    request.validate()?;
    blocking(move || call.kms.create_key(&request)).await
}

/// list-kms-keys; a credential restricted to some names sees only the keys it may use.
async fn list_keys(call: Signed) -> Answer<KeyList> {
    call.no_fields()?;
    blocking(move || {
        let mut list = call.kms.list_keys()?;
        if call.grants.restricts_names() {
            list.kms_keys
                .retain(|key| call.grants.allows_name(Some(&key.name)));
        }
        Ok(list)
    })
    .await
}

async fn get_key(KeyCall { id, signed }: KeyCall) -> Answer<KeyDetails> {
    signed.no_fields()?;
    blocking(move || signed.kms.get_key(id)).await
}

async fn list_key_rotations(KeyCall { id, signed }: KeyCall) -> Answer<RotationList> {
    signed.no_fields()?;
    blocking(move || signed.kms.list_key_rotations(id)).await
}

async fn enable_key(KeyCall { id, signed }: KeyCall) -> Answer<SuccessResponse> {
    signed.no_fields()?;
    blocking(move || signed.kms.enable_key(id, None)).await
}

async fn disable_key(KeyCall { id, signed }: KeyCall) -> Answer<SuccessResponse> {
    signed.no_fields()?;
    blocking(move || signed.kms.disable_key(id, None)).await
}

async fn rotate_key(KeyCall { id, signed }: KeyCall) -> Answer<RotationResponse> {
    signed.no_fields()?;
    blocking(move || signed.kms.rotate_key(id, None)).await
}

async fn enable_key_rotation(KeyCall { id, signed }: KeyCall) -> Answer<RotationResponse> {
    let period = signed
        .fields(&["rotation-period"])?
        .integer(&ROTATION_PERIOD)?;
    blocking(move || signed.kms.enable_key_rotation(id, period, None)).await
}

async fn disable_key_rotation(KeyCall { id, signed }: KeyCall) -> Answer<RotationResponse> {
    signed.no_fields()?;
    blocking(move || signed.kms.disable_key_rotation(id, None)).await
}

async fn schedule_deletion(KeyCall { id, signed }: KeyCall) -> Answer<DeletionScheduled> {
    let delay = signed.fields(&["delay-days"])?.integer(&DELETION_DELAY)?;
    blocking(move || signed.kms.schedule_key_deletion(id, delay, None)).await
}

async fn cancel_deletion(KeyCall { id, signed }: KeyCall) -> Answer<SuccessResponse> {
    signed.no_fields()?;
    blocking(move || signed.kms.cancel_key_deletion(id, None)).await
}

async fn replicate_key(KeyCall { id, signed }: KeyCall) -> Answer<SuccessResponse> {
    let fields = signed.fields(&["zone"])?;
    let target = fields.required_string("zone", "zone")?.to_owned();
    // A credential restricted to some zones may not make a key live in another.
    if !signed.grants.allows_zone(&target) {
        return Err(Problem::from(Error::Forbidden {
            operation: crate::Operation::ReplicateKey.name(),
            id: Some(id),
        }));
    }
    blocking(move || signed.kms.replicate_key(id, &target, None)).await
}

// The crypto handlers read their fields where they run: for a large body, decoding base64
// is work for the blocking pool too.

async fn encrypt(KeyCall { id, signed }: KeyCall) -> Answer<Ciphertext> {
    crypto(signed.is_large(), move || {
        let (plaintext, context) = message(&signed, "plaintext")?;
        signed
            .kms
            .encrypt(id, &plaintext, context.as_deref().map(Vec::as_slice))
    })
    .await
}

async fn decrypt(KeyCall { id, signed }: KeyCall) -> Answer<Plaintext> {
    crypto(signed.is_large(), move || {
        let (ciphertext, context) = message(&signed, "ciphertext")?;
        signed
            .kms
            .decrypt(id, &ciphertext, context.as_deref().map(Vec::as_slice))
    })
    .await
}

/// The message of an encrypt or decrypt body (field `field`, required) and its context.
fn message(signed: &Signed, field: &'static str) -> Result<(Secret, Option<Secret>), Error> {
    let fields = signed.fields(&[field, "encryption-context"])?;
    let message = fields.required_bytes(field, field)?;
    Ok((
        message,
        fields.bytes("encryption-context", "encryption-context")?,
    ))
}

/// Decoded bytes that may be secret, wiped when dropped.
type Secret = zeroize::Zeroizing<Vec<u8>>;

async fn re_encrypt(KeyCall { id, signed }: KeyCall) -> Answer<Ciphertext> {
    crypto(signed.is_large(), move || {
        let mut fields = signed.fields(&["source", "destination"])?;
        let source_fields = &["key", "ciphertext", "encryption-context"];
        let source = fields.required_object("source", "source", "source.", source_fields)?;
        let destination_fields = &["key", "encryption-context"];
        let destination = fields.required_object(
            "destination",
            "destination",
            "destination.",
            destination_fields,
        )?;
        let source_key = source.required_key("key", "source.key")?;
        if source_key != id {
            return Err(Error::BadRequest {
                field: "source.key",
                reason: format!("must be the key of the path, {id}, got {source_key}"),
            });
        }
        let ciphertext = source.required_bytes("ciphertext", "source.ciphertext")?;
        let from = source.bytes("encryption-context", "source.encryption-context")?;
        let to_key = destination.required_key("key", "destination.key")?;
        let to = destination.bytes("encryption-context", "destination.encryption-context")?;
        let (from, to) = (
            from.as_deref().map(Vec::as_slice),
            to.as_deref().map(Vec::as_slice),
        );
        signed.kms.re_encrypt(id, &ciphertext, from, to_key, to)
    })
    .await
}

async fn generate_data_key(KeyCall { id, signed }: KeyCall) -> Answer<DataKey> {
    crypto(signed.is_large(), move || {
        let fields = signed.fields(&["key-spec", "bytes-count", "encryption-context"])?;
        let key_spec = fields.string("key-spec", "key-spec")?;
        let bytes_count = fields.integer(&DATA_KEY_BYTES)?;
        let spec = DataKeySpec::from_request(key_spec, bytes_count)?;
        let context = fields.bytes("encryption-context", "encryption-context")?;
        let context = context.as_deref().map(Vec::as_slice);
        signed.kms.generate_data_key(id, spec, context)
    })
    .await
}
