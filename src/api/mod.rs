//! The management and publishing HTTP API (axum): routes, shared state, and the success
//! envelope `{"data", "timestamp"}`. Errors are mapped in one place, `error.rs`; request
//! extraction in the order SPEC §2 fixes lives in `extract.rs`; one file per resource.
//!
//! It depends on `domain` and `store`, never on `delivery`.

mod deliveries;
pub mod error;
mod events;
mod extract;
pub mod keys;
mod openapi;
pub mod serve;
mod system;
mod webhooks;

use std::sync::Arc;
use std::time::Duration;

use axum::{
    middleware,
    routing::{get, post},
    Router,
};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tower_http::{
    catch_panic::CatchPanicLayer,
    timeout::{RequestBodyTimeoutLayer, TimeoutLayer},
    trace::TraceLayer,
};

use crate::domain::{address::AllowList, event_type::Catalogue, time::Timestamp};
use crate::store::{Publisher, Store};

/// API request bodies are at most this large (SPEC §2).
pub const MAX_BODY_BYTES: usize = 256 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    /// Single-event publishes, committed in groups.
    pub publisher: Publisher,
    pub catalogue: Arc<Catalogue>,
    pub allow: AllowList,
    pub metrics: Option<PrometheusHandle>,
    pub max_body: usize,
    pub idempotency_window: Duration,
    /// Default grace period of a rotated-out secret.
    pub rotation_grace: Duration,
    /// API keys read recently (a revoked key stops working within its time to live).
    pub keys: Arc<keys::KeyCache>,
    /// Requests per API key (by prefix), when limited.
    pub limiter: Option<Arc<governor::DefaultKeyedRateLimiter<String>>>,
}

/// The success envelope.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Envelope<T> {
    data: T,
    timestamp: Timestamp,
}

impl<T> Envelope<T> {
    pub fn new(data: T) -> Self {
        Self { data, timestamp: Timestamp::now() }
    }
}

pub fn router(state: AppState) -> Router {
    let base = "/organizations/{orgId}/webhooks-outbound";
    Router::new()
        .route(base, get(webhooks::list).post(webhooks::create))
        .route(&format!("{base}/{{id}}"), get(webhooks::get).patch(webhooks::update).delete(webhooks::delete))
        .route(&format!("{base}/{{id}}/secret"), get(webhooks::secret))
        .route(&format!("{base}/{{id}}/secret/rotate"), post(webhooks::rotate_secret))
        .route(&format!("{base}/{{id}}/deliveries"), get(deliveries::list))
        .route(&format!("{base}/{{id}}/deliveries/{{deliveryId}}/attempts"), get(deliveries::attempts))
        .route("/organizations/{orgId}/events", post(events::publish))
        .route("/events/batch", post(events::publish_batch))
        .route("/health", get(system::health))
        .route("/ready", get(system::ready))
        .route("/metrics", get(system::metrics))
        .route("/openapi.json", get(system::openapi))
        .fallback(system::not_found)
        .with_state(state)
        .layer(CatchPanicLayer::new())
        // A client that trickles its body, or a request that takes too long, is cut off.
        .layer(RequestBodyTimeoutLayer::new(Duration::from_secs(10)))
        .layer(TimeoutLayer::with_status_code(axum::http::StatusCode::REQUEST_TIMEOUT, Duration::from_secs(30)))
        .layer(middleware::from_fn(error::render_errors))
        .layer(TraceLayer::new_for_http())
}
