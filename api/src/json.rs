//! A JSON body extractor whose rejections use the API's error shape and name
//! the offending field (`plan.nodes[2].id`), as serde alone does not.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::error::ApiError;

/// `Json<T>` with useful errors. Also keeps the raw bytes for idempotency.
pub struct ApiJson<T> {
    pub value: T,
    pub raw: Bytes,
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with the header Content-Type: application/json",
            ));
        }
        let raw = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::body_too_large()
            } else {
                ApiError::new(StatusCode::BAD_REQUEST, "unreadable_body", rejection.body_text())
            }
        })?;
        let value = parse(&raw)?;
        Ok(ApiJson { value, raw })
    }
}

/// Whether the Content-Type names JSON (`application/json`, `…+json`).
pub fn is_json(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|ct| {
            let mime = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            mime == "application/json" || mime.ends_with("+json")
        })
        .unwrap_or(false)
}

/// Parses JSON, mapping syntax errors to 400 and shape errors to 422 with the
/// path of the field.
pub fn parse<T: DeserializeOwned>(raw: &[u8]) -> Result<T, ApiError> {
    // Every body is an object, but serde's derived structs also read an
    // array as their fields in order: refuse it, as the document says.
    if raw.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(match serde_json::from_slice::<serde::de::IgnoredAny>(raw) {
            Err(err) => {
                ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", format!("the body is not valid JSON: {err}"))
            }
            Ok(_) => ApiError::invalid_field("body", "expected a JSON object, not an array"),
        });
    }
    let mut value: serde_json::Value = serde_json::from_slice(raw).map_err(|err| {
        ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", format!("the body is not valid JSON: {err}"))
    })?;
    whole_numbers(&mut value);
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let field = if path == "." { "body".to_owned() } else { path };
        let message = strip_position(&inner.to_string());
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", format!("{field}: {message}"))
            .with_details(json!({"field": field}))
    })
}

/// JSON Schema's `integer` is any number without a fraction, `2.0` too, as
/// JSON itself makes no difference; serde's integers take only `2`. Numbers
/// without a fraction that fit an integer become one.
fn whole_numbers(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64()
                && f.fract() == 0.0
                && f.abs() < 9_007_199_254_740_992.0
            {
                // In range, the cast is exact.
                *n = serde_json::Number::from(f as i64);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(whole_numbers),
        serde_json::Value::Object(map) => map.values_mut().for_each(whole_numbers),
        _ => {}
    }
}

/// serde_json appends " at line L column C"; the field path says more.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        inner: Vec<Inner>,
    }

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        n: u32,
    }

    fn check(body: &str, status: u16, message: &str) {
        let err = parse::<Outer>(body.as_bytes()).unwrap_err();
        assert_eq!(err.status.as_u16(), status, "{}", err.message);
        assert_eq!(err.message, message);
    }

    #[test]
    fn errors_name_the_field() {
        check(r#"{"inner": [{"n": 1}, {"n": "x"}]}"#, 422, "inner[1].n: invalid type: string \"x\", expected u32");
        check(r#"{"inner": [], "extra": 1}"#, 422, "extra: unknown field `extra`, expected `inner`");
        check(r#"{}"#, 422, "body: missing field `inner`");
        check(r#"{"inner": [}"#, 400, "the body is not valid JSON: expected value at line 1 column 12");
        // Regression (issue 13, defect 9): arrays where an object is required were read as its fields.
        check(r#" [[{"n": 1}]]"#, 422, "body: expected a JSON object, not an array");
        check(r#"[[{"n": 1}"#, 400, "the body is not valid JSON: EOF while parsing a list at line 1 column 10");
        // Regression (issue 13, defect 9): 179.0 is an integer to JSON Schema (and the document).
        assert!(parse::<Outer>(br#"{"inner": [{"n": 179.0}]}"#).is_ok());
        check(r#"{"inner": [{"n": 1.5}]}"#, 422, "inner[0].n: invalid type: floating point `1.5`, expected u32");
    }
}
