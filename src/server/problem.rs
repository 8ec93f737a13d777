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
    /// A problem of code `code`, titled `title`, with HTTP status `status`.
    fn new(code: &'static str, title: &'static str, status: u16, detail: String) -> Problem {
        Problem {
            type_: format!("{TYPE_PREFIX}{code}"),
            title,
            status,
            detail,
            code,
        }
    }

    /// 404 for a path that names no operation.
    #[must_use]
    pub fn no_route(method: &str, path: &str) -> Problem {
        let detail = format!("no operation at {method} {}", Error::quote(path));
        Problem::new("not-found", "Not found", 404, detail)
    }

    /// 405 for a known path with the wrong method.
    #[must_use]
    pub fn wrong_method(method: &str, path: &str) -> Problem {
        let detail = format!("{method} is not allowed on {}", Error::quote(path));
        Problem::new("method-not-allowed", "Method not allowed", 405, detail)
    }

    /// 413 for a body over the limit.
    #[must_use]
    pub fn too_large(limit: usize) -> Problem {
        let detail = format!("the request body is larger than {limit} bytes, the limit");
        Problem::new("payload-too-large", "Payload too large", 413, detail)
    }

    /// 408 for a body that did not arrive in time.
    #[must_use]
    pub fn body_timeout(limit: std::time::Duration) -> Problem {
        let detail = format!(
            "the request body did not arrive within {} s",
            limit.as_secs()
        );
        Problem::new("request-timeout", "Request timeout", 408, detail)
    }

    /// 403 for a state-changing request whose signature was already used
    /// (`--refuse-replays`).
    #[must_use]
    pub fn replayed() -> Problem {
        let detail = "this signature was already used for a state-changing request; sign the \
                      request again after the next second (a signature changes only with its \
                      expiry second) and resend it"
            .to_owned();
        Problem::new("request-replayed", "Request replayed", 403, detail)
    }

    /// 503 when the memory for request or response bodies stayed taken for `waited`: the
    /// server is busy with large bodies; retry later.
    #[must_use]
    pub fn busy(waited: std::time::Duration) -> Problem {
        let detail = format!(
            "the server's memory for bodies stayed in use for {} ms; retry later",
            waited.as_millis()
        );
        Problem::new("server-busy", "Server busy", 503, detail)
    }

    /// 503 for a backup asked while another backup of `zone` is being sent: a zone sends one
    /// at a time (each holds an image of the whole zone in memory); retry when it is done.
    #[must_use]
    pub fn backup_running(zone: &str) -> Problem {
        let detail = format!(
            "a backup of zone {zone} is being sent: a zone sends one backup at a time; retry \
             when it is done"
        );
        Problem::new("server-busy", "Server busy", 503, detail)
    }

    /// The audit log cannot be written: 503 for a state change refused before it ran, 500 for
    /// one that was `applied` but whose audit line could not be synced (not acknowledged).
    #[must_use]
    pub fn audit_unavailable(applied: bool) -> Problem {
        if applied {
            let detail = "the change was applied but its audit line could not be written, so it \
                          is not acknowledged; state changes are refused until the audit log \
                          is reopened"
                .to_owned();
            Problem::new("audit-unavailable", "Audit log unavailable", 500, detail)
        } else {
            let detail = "the audit log cannot be written: state changes are refused until it is \
                          reopened (nothing was changed)"
                .to_owned();
            Problem::new("audit-unavailable", "Audit log unavailable", 503, detail)
        }
    }

    /// 503 for a backup while the audit log cannot be written (or its line could not be
    /// synced): a backup always leaves its line; nothing was sent.
    #[must_use]
    pub fn audit_unavailable_for_backup() -> Problem {
        let detail = "the audit log cannot be written: backups are refused until it is reopened \
                      (nothing was sent)"
            .to_owned();
        Problem::new("audit-unavailable", "Audit log unavailable", 503, detail)
    }

    /// 500 for a failure of the server itself (not of the KMS): `detail` says what.
    #[must_use]
    pub fn internal(detail: impl Into<String>) -> Problem {
        Problem::new("internal", "Internal error", 500, detail.into())
    }
}

impl From<&Error> for Problem {
    fn from(error: &Error) -> Problem {
        let (code, title, status) = (error.code(), error.title(), error.http_status());
        Problem::new(code, title, status, error.to_string())
    }
}

impl From<Error> for Problem {
    fn from(error: Error) -> Problem {
        Problem::from(&error)
    }
}

impl From<&AuthError> for Problem {
    fn from(error: &AuthError) -> Problem {
        let (code, title) = error.code_and_title();
        Problem::new(code, title, error.http_status(), error.to_string())
    }
}

/// The code of a problem answer, in the response's extensions (for the audit log).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProblemCode(pub(crate) &'static str);

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        response.extensions_mut().insert(ProblemCode(self.code));
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if self.status == 503 {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_is_an_rfc_9457_document_with_its_code() {
        // The contract: key not found is a 404 naming the key; a store failure is a 500.
        let id = crate::KeyId::from_bytes([1; 16]);
        let document = |error: &Error| serde_json::to_value(Problem::from(error)).unwrap();
        let not_found = document(&Error::KeyNotFound { id });
        assert_eq!(
            not_found["type"],
            "tag:keylife.dev,2026:problem:key-not-found"
        );
        assert_eq!(not_found["title"], "Key not found");
        assert_eq!(not_found["status"], 404);
        assert_eq!(not_found["code"], "key-not-found");
        let detail = not_found["detail"].as_str().unwrap();
        assert!(detail.contains(&id.to_string()), "{detail}");
        let storage = document(&Error::Storage {
            detail: "disk full".to_owned(),
        });
        assert_eq!(storage["title"], "Internal error");
        assert_eq!(storage["status"], 500);
        assert_eq!(storage["code"], "storage");
        assert!(storage["detail"].as_str().unwrap().contains("disk full"));
    }

    #[test]
    fn auth_errors_have_their_own_titles() {
        for (error, title) in [
            (AuthError::Missing, "Unauthorized"),
            (AuthError::Malformed("x"), "Unauthorized"),
            (AuthError::UnknownKey, "Forbidden"),
            (AuthError::BadSignature, "Forbidden"),
            (AuthError::Expired, "Forbidden"),
            (AuthError::TooLong, "Forbidden"),
        ] {
            assert_eq!(Problem::from(&error).title, title, "{error:?}");
        }
    }

    #[test]
    fn the_document_has_the_four_members_of_rfc_9457() {
        let problem = Problem::from(&Error::KeyNotFound {
            id: crate::KeyId::from_bytes([1; 16]),
        });
        let json: serde_json::Value = serde_json::to_value(&problem).unwrap();
        assert_eq!(json["type"], "tag:keylife.dev,2026:problem:key-not-found");
        assert_eq!(json["title"], "Key not found");
        assert_eq!(json["status"], 404);
        assert_eq!(
            json["detail"],
            "key 01010101-0101-0101-0101-010101010101 not found"
        );
        assert_eq!(json["code"], "key-not-found");
    }
}
