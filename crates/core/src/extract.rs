//! Request extractors whose rejections are problem+json with field paths.

use axum::{
    body::Bytes,
    extract::{FromRequest, Request},
    http::header,
};
use serde::de::DeserializeOwned;

use crate::{FieldError, Problem};

/// Like `axum::Json`, but a bad body answers 422 naming the field at fault and a
/// wrong content type answers 415, both as problem+json.
#[derive(Debug, Clone)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| {
                ct.split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
            });
        if !is_json {
            return Err(Problem::new(
                axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Send the body as JSON with `Content-Type: application/json`.",
            ));
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|rejection| Problem::new(rejection.status(), "invalid_body", rejection.body_text()))?;
        parse(&bytes).map(Json)
    }
}

/// Parses JSON into `T`, reporting the failing field as a [`FieldError`].
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return Problem::bad_request("invalid_json", format!("The body is not valid JSON: {inner}."));
        }
        let message = strip_position(&inner.to_string());
        // "missing field `email`" is reported at the parent; name the field itself.
        let missing = message
            .strip_prefix("missing field `")
            .and_then(|m| m.split('`').next());
        let field = match (path.as_str(), missing) {
            (".", Some(name)) => name.to_owned(),
            (".", None) => "body".to_owned(),
            (parent, Some(name)) => format!("{parent}.{name}"),
            (parent, None) => parent.to_owned(),
        };
        let code = if message.starts_with("missing field") {
            "required"
        } else {
            "invalid"
        };
        Problem::validation(vec![FieldError {
            field,
            code: code.to_owned(),
            message,
        }])
    })
}

/// serde_json appends "at line 1 column 17"; the field path already says where.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Body {
        email: String,
        nested: Nested,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Nested {
        count: u32,
    }

    #[test]
    fn errors_name_the_field() {
        let p = parse::<Body>(br#"{"email":"a@b.c","nested":{"count":"x"}}"#).unwrap_err();
        assert_eq!(p.status.as_u16(), 422);
        assert_eq!(p.errors[0].field, "nested.count");
        assert!(!p.errors[0].message.contains("line"), "{}", p.errors[0].message);
        let p = parse::<Body>(br#"{"nested":{"count":1}}"#).unwrap_err();
        assert_eq!(
            (p.errors[0].field.as_str(), p.errors[0].code.as_str()),
            ("email", "required")
        );
        assert!(p.errors[0].message.contains("email"));
        let p = parse::<Body>(b"{not json").unwrap_err();
        assert_eq!(p.code, "invalid_json");
    }
}
