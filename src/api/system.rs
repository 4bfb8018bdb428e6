//! Operational endpoints: `/health` (alive), `/ready` (database reachable), `/metrics`
//! (Prometheus text) and `/openapi.json`.

use axum::{
    extract::State,
    http::header,
    response::{IntoResponse, Response},
    Json,
};
use serde_json::json;

use super::{error::ApiError, AppState};

pub(crate) async fn health() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

pub(crate) async fn ready(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    state.store.ping().await.map_err(|e| ApiError::Unavailable(format!("database unreachable: {e}")))?;
    Ok(Json(json!({ "status": "ready" })))
}

pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    let text = state.metrics.as_ref().map(|h| h.render()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

pub(crate) async fn openapi() -> impl IntoResponse {
    Json(super::openapi::document())
}

pub(crate) async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}
