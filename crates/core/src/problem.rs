//! RFC 9457 problem+json: the one shape of every error the ledger answers.
//!
//! Handlers return [`Problem`]; the gateway's outer middleware adds the request id
//! and turns any other error response (unknown route, body too large, framework
//! rejections) into the same shape, so clients parse one format. The Magento module
//! shows these bodies to merchants in its dead-letter view, so `detail` always says
//! what to do next.

use std::{borrow::Cow, sync::Arc};

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";
const TYPE_BASE: &str = "https://ledger.byte8.io/problems/";

/// An error answer. Build with the constructors, refine with the `with_*` methods.
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    /// Stable machine code in snake_case; also the last segment of `type`.
    pub code: Cow<'static, str>,
    /// What went wrong and what to do about it, for a human.
    pub detail: String,
    /// Per-field validation errors.
    pub errors: Vec<FieldError>,
    /// Seconds after which a retry makes sense (sets `Retry-After`).
    pub retry_after: Option<u32>,
    /// Extra members (RFC 9457 §3.2 extensions).
    pub extensions: Map<String, Value>,
    /// What caused a 5xx, for the log line the gateway writes once per answer (with the
    /// request id); never in the body. A thin pointer, so errors stay small to return.
    cause: Option<Arc<String>>,
}

/// One invalid field. `field` is a JSON pointer-ish dotted path into the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    /// Stable machine code, e.g. `required`, `invalid_format`, `not_in_reference`.
    pub code: String,
    pub message: String,
}

/// The JSON body of a problem answer.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProblemBody {
    /// URI naming the problem type; ends with `code`.
    #[serde(rename = "type")]
    pub type_uri: String,
    /// Short summary of the HTTP status.
    pub title: String,
    pub status: u16,
    /// Human explanation that says what to fix.
    pub detail: String,
    /// Stable machine code.
    pub code: String,
    /// The request id (also in the `x-request-id` header); quote it to support.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Per-field validation errors, when the request body or query was invalid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    #[serde(flatten)]
    #[schema(ignore)]
    pub extensions: Map<String, Value>,
}

impl Problem {
    pub fn new(status: StatusCode, code: impl Into<Cow<'static, str>>, detail: impl Into<String>) -> Self {
        Self {
            status,
            code: code.into(),
            detail: detail.into(),
            errors: Vec::new(),
            retry_after: None,
            extensions: Map::new(),
            cause: None,
        }
    }

    pub fn bad_request(code: impl Into<Cow<'static, str>>, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    /// 422 with per-field errors; `detail` summarises them.
    pub fn validation(errors: Vec<FieldError>) -> Self {
        let detail = match errors.as_slice() {
            [one] => format!("{}: {}", one.field, one.message),
            many => format!("{} fields are invalid; see `errors`.", many.len()),
        };
        Self {
            errors,
            ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", detail)
        }
    }

    pub fn unauthorized(code: impl Into<Cow<'static, str>>, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, detail)
    }

    pub fn forbidden(code: impl Into<Cow<'static, str>>, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, detail)
    }

    pub fn not_found(code: impl Into<Cow<'static, str>>, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, detail)
    }

    pub fn conflict(code: impl Into<Cow<'static, str>>, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, detail)
    }

    /// 429: the caller is over a limit; it may try again after `retry_after` seconds.
    pub fn too_many(code: impl Into<Cow<'static, str>>, detail: impl Into<String>, retry_after: u32) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, code, detail)
        }
    }

    /// 503: a transient condition; the client should retry after `retry_after` seconds.
    pub fn unavailable(code: impl Into<Cow<'static, str>>, detail: impl Into<String>, retry_after: u32) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, detail)
        }
    }

    /// 500 for a bug or an unexpected state. The cause is logged once, with the request
    /// id, by the gateway's outer middleware; the answer carries only the request id.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "An unexpected error occurred. It has been logged; quote the request id when contacting support.",
        )
        .with_cause(cause)
    }

    /// Keeps what caused this answer for the log (see [`Problem::cause`]).
    pub fn with_cause(mut self, cause: impl std::fmt::Display) -> Self {
        self.cause = Some(Arc::new(cause.to_string()));
        self
    }

    /// What caused a 5xx, for the log; never part of the answer.
    pub fn cause(&self) -> Option<&str> {
        self.cause.as_deref().map(String::as_str)
    }

    pub fn with_field(mut self, field: impl Into<String>, code: impl Into<String>, message: impl Into<String>) -> Self {
        self.errors.push(FieldError {
            field: field.into(),
            code: code.into(),
            message: message.into(),
        });
        self
    }

    pub fn with_extension(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.extensions.insert(key.into(), value.into());
        self
    }

    pub fn body(&self, request_id: Option<String>) -> ProblemBody {
        ProblemBody {
            type_uri: format!("{TYPE_BASE}{}", self.code),
            title: self.status.canonical_reason().unwrap_or("Error").to_owned(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            code: self.code.to_string(),
            request_id,
            errors: self.errors.clone(),
            extensions: self.extensions.clone(),
        }
    }

    /// Renders the response; `request_id` is known only to the outer middleware.
    pub fn to_response(&self, request_id: Option<String>) -> Response {
        let body = serde_json::to_vec(&self.body(request_id)).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_CONTENT_TYPE));
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut response = self.to_response(None);
        // The outer middleware re-renders with the request id.
        response.extensions_mut().insert(self);
        response
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.detail)
    }
}

impl std::error::Error for Problem {}

impl From<sqlx::Error> for Problem {
    fn from(err: sqlx::Error) -> Self {
        if crate::db::is_transient(&err) {
            Self::unavailable(
                "database_unavailable",
                "The ledger cannot reach its database right now. Nothing was changed; retry shortly.",
                5,
            )
            .with_cause(err)
        } else {
            Self::internal(err)
        }
    }
}

impl From<anyhow::Error> for Problem {
    fn from(err: anyhow::Error) -> Self {
        match err.downcast::<sqlx::Error>() {
            Ok(db) => db.into(),
            Err(other) => Self::internal(format!("{other:#}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_type_code_and_fields() {
        let p = Problem::validation(vec![FieldError {
            field: "magento_base_url".into(),
            code: "invalid_format".into(),
            message: "must be an absolute https URL".into(),
        }])
        .with_extension("hint", "see docs");
        let body = serde_json::to_value(p.body(Some("req-1".into()))).unwrap();
        assert_eq!(body["type"], "https://ledger.byte8.io/problems/validation_failed");
        assert_eq!(body["status"], 422);
        assert_eq!(body["title"], "Unprocessable Entity");
        assert_eq!(body["request_id"], "req-1");
        assert_eq!(body["errors"][0]["field"], "magento_base_url");
        assert_eq!(body["hint"], "see docs");
        assert_eq!(body["detail"], "magento_base_url: must be an absolute https URL");
    }

    #[test]
    fn an_internal_cause_is_kept_for_the_log_and_never_rendered() {
        let p = Problem::internal("relation \"jobs\" does not exist");
        assert_eq!(p.cause(), Some("relation \"jobs\" does not exist"));
        let body = serde_json::to_string(&p.body(Some("req-1".into()))).unwrap();
        assert!(!body.contains("jobs"), "{body}");
        assert!(!p.to_string().contains("jobs"), "{p}");
    }

    #[test]
    fn response_sets_content_type_and_retry_after() {
        let r = Problem::unavailable("busy", "try later", 7).to_response(None);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[header::CONTENT_TYPE], PROBLEM_CONTENT_TYPE);
        assert_eq!(r.headers()[header::RETRY_AFTER], "7");
    }
}
