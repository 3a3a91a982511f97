//! Auth0-shaped answers: the Management API error body
//! `{"statusCode","error","message","errorCode"}`, the Authentication API error body
//! `{"error","error_description"}`, and the RFC 3339 timestamps Auth0 writes.

use axum::Json;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::macros::format_description;

use super::limits::RateHeaders;

/// A Management API error answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub error_code: Option<&'static str>,
    /// Auth0 repeats the reason of a 401 under `attributes.error`.
    pub attributes: Option<Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>, code: &'static str) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            error_code: Some(code),
            attributes: None,
        }
    }

    pub fn bad_request(message: impl Into<String>, code: &'static str) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message, code)
    }

    pub fn invalid_query(message: impl Into<String>) -> ApiError {
        ApiError::bad_request(
            format!("Query validation error: {}", message.into()),
            "invalid_query_string",
        )
    }

    pub fn not_found(message: impl Into<String>, code: &'static str) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message, code)
    }

    /// A path or method the Management API does not have.
    pub fn no_route() -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: "Not Found".into(),
            error_code: None,
            attributes: None,
        }
    }

    pub fn unauthorized(message: &str) -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: message.into(),
            error_code: None,
            attributes: Some(json!({ "error": message })),
        }
    }

    pub fn missing_authentication() -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: "Missing authentication".into(),
            error_code: None,
            attributes: None,
        }
    }

    pub fn too_many_requests() -> ApiError {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "Global limit has been reached",
            "too_many_requests",
        )
    }

    pub fn internal() -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: "Internal Server Error".into(),
            error_code: None,
            attributes: None,
        }
    }

    pub fn body(&self) -> Value {
        let mut body = json!({
            "statusCode": self.status.as_u16(),
            "error": self.status.canonical_reason().unwrap_or("Error"),
            "message": self.message,
        });
        if let Some(code) = self.error_code {
            body["errorCode"] = json!(code);
        }
        if let Some(attributes) = &self.attributes {
            body["attributes"] = attributes.clone();
        }
        body
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

/// An Authentication API (`/oauth/token`) error answer.
pub(crate) fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({ "error": error, "error_description": description })),
    )
        .into_response()
}

/// The JSON type name Auth0's payload validator uses in its messages.
pub(crate) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(number) if number.is_i64() || number.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// `2024-03-02T09:15:00.000Z`: UTC, always three fraction digits, as Auth0 writes timestamps.
pub(crate) fn rfc3339_millis(at: OffsetDateTime) -> String {
    let format =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    at.to_offset(time::UtcOffset::UTC)
        .format(&format)
        .unwrap_or_else(|_| String::from("1970-01-01T00:00:00.000Z"))
}

pub(crate) fn now_rfc3339() -> String {
    rfc3339_millis(OffsetDateTime::now_utc())
}

/// Random `[A-Za-z0-9]` text for ids and tokens.
pub(crate) fn random_text(length: usize) -> String {
    std::iter::repeat_with(fastrand::alphanumeric)
        .take(length)
        .collect()
}

/// An answer with Auth0's rate-limit headers (`x-ratelimit-limit`, `-remaining`, `-reset`).
pub(crate) fn with_rate_headers(mut response: Response, rate: RateHeaders) -> Response {
    let headers = response.headers_mut();
    headers.insert("x-ratelimit-limit", HeaderValue::from(rate.limit));
    headers.insert("x-ratelimit-remaining", HeaderValue::from(rate.remaining));
    headers.insert("x-ratelimit-reset", HeaderValue::from(rate.reset));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_have_millis_and_z() {
        let at = OffsetDateTime::from_unix_timestamp(1_709_370_900).unwrap();
        assert_eq!(rfc3339_millis(at), "2024-03-02T09:15:00.000Z");
    }

    #[test]
    fn error_bodies_are_auth0_shaped() {
        let body = ApiError::not_found("The user does not exist.", "inexistent_user").body();
        assert_eq!(
            body,
            json!({"statusCode": 404, "error": "Not Found",
                   "message": "The user does not exist.", "errorCode": "inexistent_user"})
        );
        let body = ApiError::unauthorized("Invalid token").body();
        assert_eq!(body["attributes"], json!({"error": "Invalid token"}));
        assert!(body.get("errorCode").is_none());
    }
}
