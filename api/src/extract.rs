//! Query and path extractors whose rejections use the API's one error shape
//! (`{"error": {"code", "message", "details"}}`) and name the parameter, where
//! axum's own answer in plain text.

use axum::extract::{FromRequestParts, Path};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::error::ApiError;

/// The query string as `T`; a value of the wrong type, a repeated or an unknown
/// parameter is 422 `invalid_field` naming it. A parameter given empty
/// (`?limit=`, as forms send) is as if not given.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parse_query(parts.uri.query().unwrap_or("")).map(ApiQuery)
    }
}

/// Parses a query string, naming the parameter a refusal is about.
pub fn parse_query<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    let given = form_urlencoded::parse(query.as_bytes()).filter(|(_, value)| !value.is_empty());
    let given: Vec<_> = given.collect();
    let given = form_urlencoded::Serializer::new(String::new()).extend_pairs(given).finish();
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(given.as_bytes()));
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let message = err.into_inner().to_string();
        let field = if path == "." { field_in(&message).unwrap_or_else(|| "query".to_owned()) } else { path };
        ApiError::invalid_field(&field, message)
    })
}

/// The field a serde message names in backquotes (`duplicate field `x``,
/// `unknown field `x``), for errors raised before a field is entered.
fn field_in(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_owned()).filter(|f| !f.is_empty())
}

/// Path parameters as `T`; one that cannot be read (not UTF-8 once
/// percent-decoded, or not of `T`'s type) names nothing that exists: 404.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        use axum::extract::path::ErrorKind;
        use axum::extract::rejection::PathRejection;
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(value)) => Ok(ApiPath(value)),
            Err(PathRejection::FailedToDeserializePathParams(err)) => {
                let key = match err.kind() {
                    ErrorKind::ParseErrorAtKey { key, .. } | ErrorKind::InvalidUtf8InPathParam { key } => {
                        Some(key.clone())
                    }
                    ErrorKind::DeserializeError { key, .. } => Some(key.clone()),
                    _ => None,
                };
                let field = key.unwrap_or_else(|| "path".to_owned());
                Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("nothing is found at this path: the path parameter {field} cannot be read"),
                )
                .with_details(json!({"field": field})))
            }
            // A route without the parameters its handler reads: our bug.
            Err(other) => Err(ApiError::internal(other.body_text())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Params {
        limit: Option<u32>,
        summarize: Option<bool>,
    }

    fn refusal(query: &str) -> (u16, String, serde_json::Value) {
        let err = parse_query::<Params>(query).unwrap_err();
        (err.status.as_u16(), err.message, err.details.unwrap())
    }

    #[test]
    fn query_errors_name_the_parameter() {
        let (status, message, details) = refusal("summarize=null");
        assert_eq!(status, 422);
        assert!(message.starts_with("summarize: "), "{message}");
        assert_eq!(details, json!({"field": "summarize"}));
        assert_eq!(refusal("limit=-1").2, json!({"field": "limit"}));
        assert_eq!(refusal("limit=1&limit=2").2, json!({"field": "limit"}));
        assert_eq!(refusal("other=1").2, json!({"field": "other"}));
        assert!(parse_query::<Params>("limit=5&summarize=true").is_ok());
        assert!(parse_query::<Params>("").is_ok());
        // Empty is not given.
        let params = parse_query::<Params>("limit=&summarize=").unwrap();
        assert!(params.limit.is_none() && params.summarize.is_none());
    }
}
