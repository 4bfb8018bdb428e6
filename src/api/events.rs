//! `POST /organizations/{orgId}/events`: the platform publishes an event; it is stored with
//! one delivery per matching webhook before the answer (SPEC §3).

use axum::{
    body::Body,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
    Json,
};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::{
    error::{ApiError, FieldError},
    extract::{parse_members, read_body, OrgAccess},
    AppState, Envelope,
};
use crate::domain::{api_key::Scope, time::Timestamp};
use crate::store::NewEvent;

pub(crate) const IDEMPOTENCY_KEY_MAX: usize = 255;

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PublishedView {
    id: Uuid,
    #[serde(rename = "type")]
    event_type: String,
    created_at: Timestamp,
    deliveries: u32,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    duplicate: bool,
}

fn check_idempotency_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > IDEMPOTENCY_KEY_MAX {
        return Err(format!("must be 1 to {IDEMPOTENCY_KEY_MAX} characters"));
    }
    if !key.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err("must be visible ASCII characters without spaces".into());
    }
    Ok(())
}

#[utoipa::path(post, path = "/organizations/{orgId}/events", tag = "events", params(("orgId" = Uuid, Path, description = "The organization"),
        ("Idempotency-Key" = Option<String>, Header, description = "De-duplicates for 24 hours (or `idempotencyKey` in the body)")),
    request_body = super::openapi::PublishEvent,
    responses((status = 202, description = "Stored with its deliveries", body = Envelope<PublishedView>),
        (status = 200, description = "A duplicate of an event published with the same idempotency key", body = Envelope<PublishedView>),
        (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody), (status = 413, body = super::openapi::ErrorBody), (status = 415, body = super::openapi::ErrorBody),
        (status = 422, body = super::openapi::ErrorBody)))]
pub(crate) async fn publish(
    State(state): State<AppState>,
    access: OrgAccess,
    headers: HeaderMap,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    if access.caller.scope != Scope::Platform {
        return Err(ApiError::Forbidden("only a platform key may publish events".into()));
    }
    let bytes = read_body(&headers, body, state.max_body).await?;
    let mut errors = Vec::new();
    let mut event_type = None;
    let mut data = None;
    let mut body_key = None;
    for (name, raw, value) in parse_members(&bytes)? {
        match (name.as_str(), value) {
            ("type", Value::String(t)) => match state.catalogue.check_publishable(&t) {
                Ok(()) => event_type = Some(t),
                Err(m) => errors.push(FieldError::new("type", m)),
            },
            ("type", _) => errors.push(FieldError::new("type", "must be a string")),
            // Kept as the exact JSON text published, so receivers get it verbatim.
            ("data", Value::Object(_)) => data = Some(raw.get().to_string()),
            ("data", _) => errors.push(FieldError::new("data", "must be a JSON object")),
            ("idempotencyKey", Value::String(k)) => match check_idempotency_key(&k) {
                Ok(()) => body_key = Some(k),
                Err(m) => errors.push(FieldError::new("idempotencyKey", m)),
            },
            ("idempotencyKey", Value::Null) => {}
            ("idempotencyKey", _) => errors.push(FieldError::new("idempotencyKey", "must be a string")),
            (other, _) => errors.push(FieldError::new(other, "unknown field")),
        }
    }
    for (field, present) in [("type", event_type.is_some()), ("data", data.is_some())] {
        if !present && !errors.iter().any(|e| e.field == field) {
            errors.push(FieldError::new(field, "is required"));
        }
    }
    let header_key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => match v.to_str().map_err(|_| "must be visible ASCII characters".to_string()).and_then(|k| {
            check_idempotency_key(k)?;
            Ok(k.to_string())
        }) {
            Ok(k) => Some(k),
            Err(m) => {
                errors.push(FieldError::new("Idempotency-Key", m));
                None
            }
        },
    };
    if let (Some(h), Some(b)) = (&header_key, &body_key) {
        if h != b {
            errors.push(FieldError::new("idempotencyKey", "differs from the Idempotency-Key header"));
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::invalid(errors));
    }
    let (Some(event_type), Some(data)) = (event_type, data) else {
        return Err(ApiError::field("body", "type and data are required"));
    };
    let event = NewEvent {
        id: Uuid::now_v7(),
        org_id: access.org,
        event_type,
        data,
        idempotency_key: body_key.or(header_key),
        created_at: Timestamp::now(),
    };
    let published = state.store.publish_event(&event, state.idempotency_window).await?;
    metrics::counter!("mosend_webhooks_events_published_total").increment(u64::from(!published.duplicate));
    metrics::counter!("mosend_webhooks_deliveries_scheduled_total").increment(if published.duplicate {
        0
    } else {
        u64::from(published.deliveries)
    });
    let status = if published.duplicate { StatusCode::OK } else { StatusCode::ACCEPTED };
    let view = PublishedView {
        id: published.id,
        event_type: published.event_type,
        created_at: published.created_at,
        deliveries: published.deliveries,
        duplicate: published.duplicate,
    };
    Ok((status, Json(Envelope::new(view))))
}
