//! The OpenAPI 3.1 description served at `/openapi.json`, generated from the handlers'
//! annotations. The request-body types here exist only to describe what the handlers
//! accept; the handlers validate bodies field by field to report every problem at once.

use std::collections::BTreeMap;

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::domain::webhook::{Format, Status};

/// The error body of every 4xx and 5xx answer.
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "camelCase")]
pub(crate) struct ErrorBody {
    status_code: u16,
    error: String,
    message: String,
    errors: Option<Vec<super::error::FieldError>>,
    path: String,
    timestamp: crate::domain::time::Timestamp,
}

/// `POST /organizations/{orgId}/webhooks-outbound`. Unknown fields are refused.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct CreateWebhook {
    /// 1–100 characters after trimming.
    name: String,
    /// At most 500 characters.
    description: Option<String>,
    /// Absolute http(s) URL, at most 2048 characters, no credentials.
    url: String,
    /// 1–50 unique entries: known types, `family.*`, or `*`.
    events: Vec<String>,
    format: Option<Format>,
    /// `active` (default) or `paused`.
    status: Option<Status>,
    /// At most 20 custom request headers.
    headers: Option<BTreeMap<String, String>>,
}

/// `PATCH /organizations/{orgId}/webhooks-outbound/{id}`: any subset, validated as on create.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct UpdateWebhook {
    name: Option<String>,
    description: Option<String>,
    url: Option<String>,
    events: Option<Vec<String>>,
    format: Option<Format>,
    status: Option<Status>,
    headers: Option<BTreeMap<String, String>>,
}

/// `POST /organizations/{orgId}/events` (platform key only).
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "camelCase")]
pub(crate) struct PublishEvent {
    /// A known, publishable event type.
    #[schema(rename = "type")]
    event_type: String,
    /// Any JSON object, delivered verbatim.
    data: serde_json::Value,
    idempotency_key: Option<String>,
}

/// One event of `POST /events/batch`.
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "camelCase")]
pub(crate) struct BatchEvent {
    organization_id: uuid::Uuid,
    #[schema(rename = "type")]
    event_type: String,
    data: serde_json::Value,
    idempotency_key: Option<String>,
}

/// `POST /events/batch` (platform key only): 1 to 1,000 events, body up to 4 MiB.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct PublishBatch {
    events: Vec<BatchEvent>,
}

/// `POST …/{id}/secret/rotate` (the body is optional).
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "camelCase")]
pub(crate) struct RotateSecret {
    /// How long the previous secret keeps signing, e.g. `24h` (default from configuration; at most 7 days).
    grace_period: Option<String>,
}

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("apiKey", SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-Api-Key"))));
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Mosend outbound webhooks", description = "Register webhooks, publish events, read delivery history."),
    paths(
        super::webhooks::list,
        super::webhooks::create,
        super::webhooks::get,
        super::webhooks::update,
        super::webhooks::delete,
        super::webhooks::secret,
        super::webhooks::rotate_secret,
        super::deliveries::list,
        super::deliveries::attempts,
        super::events::publish,
        super::events::publish_batch,
    ),
    modifiers(&Security),
    security(("apiKey" = []), ("bearer" = []))
)]
struct ApiDoc;

pub(crate) fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
