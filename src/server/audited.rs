//! The audit log of the server (`ServeOptions::audit`, `keylife serve --audit-log`): one line
//! per request, written by a middleware around each zone's router.
//!
//! The middleware gives the request a [`Slot`]; the extractor fills it with who signed (or,
//! for a refused authentication, the key the header named and the reason class), and the
//! request's `Kms` handle sends its call's [`AuditEvent`] there (outcome, revision after).
//! When the answer is made, the middleware appends the line; a state change that succeeded is
//! answered only once its line is synced. While the log cannot be written, state changes are
//! refused before they run (503 `audit-unavailable`); reads and crypto are served, and their
//! lines are lost until the log is reopened (choice, design.md "Audit"). A backup is treated as
//! a state change here: refused while the log cannot be written, its answer started only once
//! its line is synced (design.md "Backup over HTTP").

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;

use super::HEALTH_PATH;
use super::extract::{Zone, changes_state, operation_of};
use super::problem::{Problem, ProblemCode};
use super::slot::Slot;
use crate::server::audit_log::{AuditLine, AuditLog};
use crate::{KeyId, OUTCOME_OK, Operation};

/// Middleware: one audit line per request (see the module).
pub(crate) async fn audited(
    State(zone): State<Arc<Zone>>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(log) = zone.audit.clone() else {
        return next.run(request).await;
    };
    let path = request.uri().path().to_owned();
    // The health check is not audited: probes every few seconds would fill the log.
    if path == HEALTH_PATH {
        return next.run(request).await;
    }
    let operation = operation_of(request.method(), &path);
    let changes = operation.is_some_and(changes_state);
    if changes && !log.is_healthy() {
        return Problem::audit_unavailable(false).into_response();
    }
    if operation == Some(Operation::Backup) && !log.is_healthy() {
        return Problem::audit_unavailable_for_backup().into_response();
    }
    let slot = Slot::default();
    request.extensions_mut().insert(slot.clone());
    // The request and its line run in a task of their own: a client that goes away drops
    // this future, and a change already handed to the blocking pool would then be applied
    // with no line. The task is not cancelled with the connection.
    let task = tokio::spawn(write_line(zone, log, request, next, slot, path, operation));
    match task.await {
        Ok(response) => response,
        Err(_) => Problem::internal("the request failed unexpectedly").into_response(),
    }
}

/// Runs the request, then appends its line (waiting for its sync for a state change).
async fn write_line(
    zone: Arc<Zone>,
    log: Arc<AuditLog>,
    request: Request,
    next: Next,
    slot: Slot,
    path: String,
    operation: Option<crate::Operation>,
) -> Response {
    let changes = operation.is_some_and(changes_state);
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let outcome = response
        .extensions()
        .get::<ProblemCode>()
        .map_or(OUTCOME_OK, |code| code.0);
    let learned = slot.take();
    let line = match learned.event {
        Some(event) => {
            let mut line = AuditLine::from_event(&event, status);
            // The answer's outcome: the call's, or what went wrong after it.
            line.outcome = outcome.to_owned();
            line
        }
        None => AuditLine {
            time: Timestamp::now(),
            zone: zone.kms.zone().to_owned(),
            operation: operation.map_or_else(|| capped(&path), |o| o.name().to_owned()),
            key: path_key(&path),
            outcome: outcome.to_owned(),
            status,
            revision: None,
            actor: learned.actor.as_deref().map(capped),
            auth: learned.auth.map(str::to_owned),
        },
    };
    // A backup hands out the whole zone (sealed): like a state change, its answer starts only
    // once its line is on disk.
    let backup = operation == Some(Operation::Backup);
    let acknowledged = (changes || backup) && status == 200;
    let unavailable = || {
        if backup {
            Problem::audit_unavailable_for_backup().into_response()
        } else {
            Problem::audit_unavailable(true).into_response()
        }
    };
    match log.append(line) {
        Ok(ticket) if acknowledged => match log.synced(ticket).await {
            Ok(()) => response,
            Err(_) => unavailable(),
        },
        Ok(_) => response,
        Err(_) if acknowledged => unavailable(),
        Err(_) => response,
    }
}

/// The longest text from the request (a path, a claimed key) a line copies: a stranger's
/// request cannot make a line longer than a few hundred bytes.
const MAX_COPIED: usize = 128;

/// `text` up to [`MAX_COPIED`] bytes (on a character boundary), marked `…` when cut.
fn capped(text: &str) -> String {
    if text.len() <= MAX_COPIED {
        return text.to_owned();
    }
    let mut end = MAX_COPIED;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// The key id of a path under `/v2/kms-key/{id}`, if it is one.
fn path_key(path: &str) -> Option<KeyId> {
    let id = path.strip_prefix("/v2/kms-key/")?.split('/').next()?;
    KeyId::parse(id).ok()
}
