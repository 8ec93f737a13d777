//! `GET /keylife/v1/health`, unsigned: whether every zone of the process can serve
//! ([`Kms::health`]). 200 with `{"status":"ok","zones":[...]}` (the zones served, in the
//! order given), else 503, a problem document naming the zones that cannot serve. It tells
//! nothing else: no key, no version, no reason beyond the zone's name.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::extract::Json;
use super::problem::{Problem, TYPE_PREFIX};
use crate::Kms;

/// The path of the health check, on every zone's address.
pub const HEALTH_PATH: &str = "/keylife/v1/health";

/// Every zone of the process, for the health check of each.
pub(crate) struct Health {
    zones: Vec<Arc<Kms>>,
}

impl Health {
    pub(crate) fn new(zones: Vec<Arc<Kms>>) -> Health {
        Health { zones }
    }
}

/// The handler. The checks read each store's header, so they run on the blocking pool.
pub(crate) async fn health(State(health): State<Arc<Health>>) -> Response {
    let checked = tokio::task::spawn_blocking(move || {
        let names: Vec<String> = health
            .zones
            .iter()
            .map(|kms| kms.zone().to_owned())
            .collect();
        let failing: Vec<String> = health
            .zones
            .iter()
            .filter(|kms| kms.health().is_err())
            .map(|kms| kms.zone().to_owned())
            .collect();
        (names, failing)
    })
    .await;
    let (names, failing) = match checked {
        Ok(checked) => checked,
        Err(_) => return unavailable("the health check failed unexpectedly".to_owned()),
    };
    if !failing.is_empty() {
        return unavailable(format!("zone {} cannot serve", failing.join(", zone ")));
    }
    let body = serde_json::json!({ "status": "ok", "zones": names });
    Json::encode(&body).into_response()
}

/// 503 `unavailable` with `detail`.
fn unavailable(detail: String) -> Response {
    let code = "unavailable";
    let mut response = Problem {
        type_: format!("{TYPE_PREFIX}{code}"),
        title: "Service unavailable",
        status: 503,
        detail,
        code,
    }
    .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
