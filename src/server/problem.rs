//! RFC 9457 problem documents: every error the server answers, as
//! `application/problem+json` with `type`, `title`, `status` and `detail`, plus the extension
//! member `code`, keylife's stable machine code.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::Error;

use super::auth::AuthError;

/// The prefix of every problem `type`: a tag URI (RFC 4151), which RFC 9457 suggests for
/// types that are not meant to be dereferenced. The code follows it.
pub const TYPE_PREFIX: &str = "tag:keylife.dev,2026:problem:";

/// The media type of a problem document.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// A problem document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// `tag:keylife.dev,2026:problem:{code}`.
    #[serde(rename = "type")]
    pub type_: String,
    /// A short summary of the kind of problem: the same for every problem of one code.
    pub title: &'static str,
    /// The HTTP status.
    pub status: u16,
    /// What happened, naming the key, the field and the rule; never a secret.
    pub detail: String,
    /// keylife's machine code (`key-not-found`, `bad-request`, ...).
    pub code: &'static str,
}

impl Problem {
    /// A problem of code `code` with its title and status.
    #[must_use]
    pub fn new(code: &'static str, status: u16, detail: String) -> Problem {
        Problem {
            type_: format!("{TYPE_PREFIX}{code}"),
            title: title(code),
            status,
            detail,
            code,
        }
    }

    /// 404 for a path that names no operation.
    #[must_use]
    pub fn no_route(method: &str, path: &str) -> Problem {
        Problem::new(
            "not-found",
            404,
            format!("no operation at {method} {}", Error::quote(path)),
        )
    }

    /// 405 for a known path with the wrong method.
    #[must_use]
    pub fn wrong_method(method: &str, path: &str) -> Problem {
        Problem::new(
            "method-not-allowed",
            405,
            format!("{method} is not allowed on {}", Error::quote(path)),
        )
    }

    /// 413 for a body over the limit.
    #[must_use]
    pub fn too_large(limit: usize) -> Problem {
        Problem::new(
            "payload-too-large",
            413,
            format!("the request body is larger than {limit} bytes, the limit"),
        )
    }

    /// 408 for a body that did not arrive in time.
    #[must_use]
    pub fn body_timeout(limit: std::time::Duration) -> Problem {
        Problem::new(
            "request-timeout",
            408,
            format!(
                "the request body did not arrive within {} s",
                limit.as_secs()
            ),
        )
    }
}

impl From<&Error> for Problem {
    fn from(error: &Error) -> Problem {
        Problem::new(error.code(), error.http_status(), error.to_string())
    }
}

impl From<&AuthError> for Problem {
    fn from(error: &AuthError) -> Problem {
        Problem::new(error.code(), error.http_status(), error.to_string())
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if self.status == 401 {
            // RFC 9110 §11.6.1: a 401 names the scheme that authenticates.
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(super::auth::SCHEME),
            );
        }
        response
    }
}

/// The title of each code.
fn title(code: &str) -> &'static str {
    match code {
        "key-not-found" => "Key not found",
        "key-disabled" => "Key is disabled",
        "key-pending-deletion" => "Key is pending deletion",
        "not-pending-deletion" => "Key is not pending deletion",
        "not-on-replica" => "Not allowed on a replica",
        "not-multi-zone" => "Key is not multi-zone",
        "name-conflict" => "Name already in use",
        "conflict" => "Conflict",
        "invalid-argument" => "Invalid argument",
        "manual-rotation-limit" => "Manual rotation limit reached",
        "invalid-usage" => "Invalid key usage",
        "quota-exceeded" => "Key quota exceeded",
        "incorrect-key" => "Incorrect key",
        "invalid-ciphertext" => "Invalid ciphertext",
        "revision-conflict" => "Revision conflict",
        "bad-request" => "Bad request",
        "zone-unreachable" => "Zone unreachable",
        "rotation-pending" => "Rotation pending",
        "unauthorized" => "Unauthorized",
        "forbidden" => "Forbidden",
        "not-found" => "Not found",
        "method-not-allowed" => "Method not allowed",
        "payload-too-large" => "Payload too large",
        "request-timeout" => "Request timeout",
        _ => "Internal error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyId;

    #[test]
    fn every_contract_error_has_its_own_title() {
        let id = KeyId::from_bytes([1; 16]);
        for error in [
            Error::KeyNotFound { id },
            Error::KeyDisabled { id },
            Error::InvalidCiphertext,
            Error::BadRequest {
                field: "name",
                reason: "must not be empty".to_owned(),
            },
        ] {
            let problem = Problem::from(&error);
            assert_ne!(problem.title, "Internal error", "{}", error.code());
            assert_eq!(problem.type_, format!("{TYPE_PREFIX}{}", error.code()));
            assert_eq!(problem.status, error.http_status());
        }
    }

    #[test]
    fn the_document_has_the_four_members_of_rfc_9457() {
        let problem = Problem::new("key-not-found", 404, "key x not found".to_owned());
        let json: serde_json::Value = serde_json::to_value(&problem).unwrap();
        assert_eq!(json["type"], "tag:keylife.dev,2026:problem:key-not-found");
        assert_eq!(json["title"], "Key not found");
        assert_eq!(json["status"], 404);
        assert_eq!(json["detail"], "key x not found");
        assert_eq!(json["code"], "key-not-found");
    }
}
