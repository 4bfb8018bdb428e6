//! The one mapping from errors to HTTP answers. Every error body has the SPEC §2 shape:
//! `{"statusCode", "error", "message", "errors"?, "path", "timestamp"}`.
//!
//! Handlers return [`ApiError`]; its `IntoResponse` sets the status and attaches an
//! [`ErrorInfo`], and the [`render_errors`] middleware, which knows the request path,
//! writes the body. Error answers produced outside our handlers (axum's 405, a caught
//! panic) get the same shape from the same middleware. Internal errors are logged with
//! their cause and never leak it.

use axum::{
    body::Body,
    extract::Request,
    http::{header, HeaderValue, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde::Serialize;

use crate::domain::time::Timestamp;
use crate::store::StoreError;

/// One field's problem in a 422 answer.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{message}")]
    Validation { message: String, errors: Vec<FieldError> },
    #[error("too many requests for this API key; retry after {0} s")]
    RateLimited(u64),
    #[error("service unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ApiError {
    /// A 422 listing field errors.
    pub fn invalid(errors: Vec<FieldError>) -> Self {
        let message = match errors.as_slice() {
            [one] => format!("{}: {}", one.field, one.message),
            _ => format!("{} fields are invalid", errors.len()),
        };
        ApiError::Validation { message, errors }
    }

    /// A 422 about one field.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        Self::invalid(vec![FieldError::new(field, message)])
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Validation { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// What the middleware needs to write an error body.
#[derive(Debug, Clone)]
pub struct ErrorInfo {
    message: String,
    errors: Option<Vec<FieldError>>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry_after = match self {
            ApiError::RateLimited(secs) => Some(secs),
            _ => None,
        };
        let info = match self {
            ApiError::Store(e) => {
                tracing::error!(error = %e, "internal error");
                ErrorInfo { message: "internal error; it has been logged".into(), errors: None }
            }
            ApiError::Validation { message, errors } => ErrorInfo { message, errors: Some(errors) },
            other => ErrorInfo { message: other.to_string(), errors: None },
        };
        let mut response = status.into_response();
        if let Some(secs) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response.extensions_mut().insert(info);
        response
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ErrorBody<'a> {
    status_code: u16,
    error: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<&'a [FieldError]>,
    path: &'a str,
    timestamp: Timestamp,
}

/// Writes the SPEC error body on every 4xx/5xx answer.
pub async fn render_errors(request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    let info = parts
        .extensions
        .remove::<ErrorInfo>()
        .unwrap_or_else(|| ErrorInfo { message: default_message(status).to_string(), errors: None });
    let body = ErrorBody {
        status_code: status.as_u16(),
        error: status.canonical_reason().unwrap_or("Error"),
        message: &info.message,
        errors: info.errors.as_deref(),
        path: &path,
        timestamp: Timestamp::now(),
    };
    let bytes = serde_json::to_vec(&body).expect("an error body of strings serialises");
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(bytes))
}

fn default_message(status: StatusCode) -> &'static str {
    match status {
        StatusCode::NOT_FOUND => "no such resource",
        StatusCode::METHOD_NOT_ALLOWED => "method not allowed on this path",
        StatusCode::INTERNAL_SERVER_ERROR => "internal error; it has been logged",
        _ => "request refused",
    }
}
