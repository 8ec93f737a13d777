//! The receiving side of a link between processes: `POST` [`REPLICATION_UPDATE_PATH`]
//! (an origin's update for this zone's replica, [`Kms::receive`](crate::Kms::receive)) and
//! `POST` [`REPLICATION_ROTATION_PATH`] (a replica's request for a new version of one of this
//! zone's origin keys, [`Kms::retire_version`](crate::Kms::retire_version)).
//!
//! Both are signed like every request, by a link credential (the `replicate` grant, its
//! `zones=` naming the zones it speaks for); their signatures are refused when replayed. The
//! body is decoded with the link keys of the signer's secret ([`wire`]): an update must be
//! addressed to this zone, come from a zone the credential speaks for, and its material must
//! unwrap. The answer is authenticated under the same link keys, over the request's signature,
//! so that the sender can tell it from a forged or replayed one.
//!
//! [`REPLICATION_UPDATE_PATH`]: super::REPLICATION_UPDATE_PATH
//! [`REPLICATION_ROTATION_PATH`]: super::REPLICATION_ROTATION_PATH

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};

use super::extract::{Signed, Zone, ok_no_store};
use super::problem::Problem;
use crate::{Error, wire};

/// `POST /keylife/v1/replication/update`.
pub(crate) async fn receive_update(State(zone): State<Arc<Zone>>, call: Signed) -> Response {
    answer(move || {
        let (key, signature) = link_of(&call)?;
        // Who sent it is looked at before any material is unwrapped.
        let sealed = wire::read_update(&call.body, call.kms.zone())?;
        let snapshot = sealed.snapshot();
        // A peer speaks for zones of other processes only, whatever its globs match: the
        // zones served here reach each other in-process.
        if !call.grants.speaks_for(&snapshot.origin_zone)
            || zone.served.contains(&snapshot.origin_zone)
        {
            return Err(Error::Forbidden {
                operation: crate::Operation::ReceiveUpdate.name(),
                id: Some(snapshot.id),
            });
        }
        let update = sealed.open(key)?;
        let ack = call.kms.receive(&update)?;
        Ok(wire::encode_ack(&ack, signature, key))
    })
    .await
}

/// `POST /keylife/v1/replication/rotation`.
pub(crate) async fn retire_version(State(zone): State<Arc<Zone>>, call: Signed) -> Response {
    answer(move || {
        let (key, signature) = link_of(&call)?;
        let request = wire::decode_rotation(&call.body, call.kms.zone())?;
        let forbidden = Error::Forbidden {
            operation: crate::Operation::RetireVersion.name(),
            id: Some(request.id),
        };
        // The credential must speak for a zone that holds a replica of this origin key. The
        // look is made on the zone's own handle: it is not the caller's call.
        let details = match zone.kms.get_key(request.id) {
            Ok(details) => details,
            Err(Error::KeyNotFound { .. }) => return Err(forbidden),
            Err(error) => return Err(error),
        };
        let speaks =
            details.key.origin_zone == zone.kms.zone()
                && details.key.replicas.iter().any(|replica| {
                    call.grants.speaks_for(replica) && !zone.served.contains(replica)
                });
        if !speaks {
            return Err(forbidden);
        }
        call.kms.retire_version(request.id, request.version)?;
        Ok(wire::encode_rotation_done(signature, key))
    })
    .await
}

/// The link keys and signature the extractor kept for a replication message.
fn link_of(call: &Signed) -> Result<(&crate::crypto::LinkKey, &[u8]), Error> {
    call.link
        .as_ref()
        .map(|(key, signature)| (key, signature.as_slice()))
        .ok_or(Error::Forbidden {
            operation: "replication",
            id: None,
        })
}

/// Runs `work` (which writes to the store and waits for the disk) on the blocking pool and
/// answers its bytes as `application/octet-stream`, or its error as a problem.
async fn answer<F>(work: F) -> Response
where
    F: FnOnce() -> Result<Vec<u8>, Error> + Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(bytes)) => ok_no_store(bytes.into(), "application/octet-stream"),
        Ok(Err(error)) => Problem::from(error).into_response(),
        Err(_) => Problem::internal("the replication message failed unexpectedly").into_response(),
    }
}
