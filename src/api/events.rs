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
use serde_json::{value::RawValue, Value};
use uuid::Uuid;

use super::{
    error::{ApiError, FieldError},
    extract::{parse_members, parse_members_of, parse_raw_members, read_body, Caller, OrgAccess},
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

/// A valid event of a publish request, before it gets its id.
struct ParsedEvent {
    org_id: Option<Uuid>,
    event_type: String,
    data: String,
    idempotency_key: Option<String>,
}

impl ParsedEvent {
    fn into_event(self, org_id: Uuid) -> NewEvent {
        NewEvent {
            id: Uuid::now_v7(),
            org_id: self.org_id.unwrap_or(org_id),
            event_type: self.event_type,
            data: self.data,
            idempotency_key: self.idempotency_key,
            created_at: Timestamp::now(),
        }
    }
}

/// Validates the members of one event object, collecting every problem. `extra` names the
/// members accepted besides `type`, `data` and `idempotencyKey` (the batch's
/// `organizationId`).
fn parse_event(
    state: &AppState,
    members: Vec<(String, Box<RawValue>, Value)>,
    extra: &[&str],
) -> Result<ParsedEvent, Vec<FieldError>> {
    let mut errors = Vec::new();
    let (mut event_type, mut data, mut key, mut org_id) = (None, None, None, None);
    for (name, raw, value) in members {
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
                Ok(()) => key = Some(k),
                Err(m) => errors.push(FieldError::new("idempotencyKey", m)),
            },
            ("idempotencyKey", Value::Null) => {}
            ("idempotencyKey", _) => errors.push(FieldError::new("idempotencyKey", "must be a string")),
            ("organizationId", Value::String(o)) if extra.contains(&"organizationId") => {
                match Uuid::try_parse(&o).ok().filter(|_| o.len() == 36) {
                    Some(o) => org_id = Some(o),
                    None => errors.push(FieldError::new("organizationId", "must be a hyphenated UUID")),
                }
            }
            ("organizationId", _) if extra.contains(&"organizationId") => {
                errors.push(FieldError::new("organizationId", "must be a UUID string"))
            }
            (other, _) => errors.push(FieldError::new(other, "unknown field")),
        }
    }
    let mut required = vec![("type", event_type.is_some()), ("data", data.is_some())];
    if extra.contains(&"organizationId") {
        required.push(("organizationId", org_id.is_some()));
    }
    for (field, present) in required {
        if !present && !errors.iter().any(|e| e.field == field) {
            errors.push(FieldError::new(field, "is required"));
        }
    }
    match (event_type, data) {
        (Some(event_type), Some(data)) if errors.is_empty() => {
            Ok(ParsedEvent { org_id, event_type, data, idempotency_key: key })
        }
        _ => Err(errors),
    }
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
    let members = parse_members(&bytes)?;
    let header_key = match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map_err(|_| "must be visible ASCII characters".to_string())
            .and_then(|k| check_idempotency_key(k).map(|()| Some(k.to_string()))),
    };
    let mut parsed = parse_event(&state, members, &[]);
    match (&header_key, &mut parsed) {
        (Err(m), Ok(_)) => parsed = Err(vec![FieldError::new("Idempotency-Key", m.clone())]),
        (Err(m), Err(errors)) => errors.push(FieldError::new("Idempotency-Key", m.clone())),
        (Ok(Some(h)), Ok(p)) => match &p.idempotency_key {
            Some(b) if b != h => {
                parsed = Err(vec![FieldError::new("idempotencyKey", "differs from the Idempotency-Key header")])
            }
            _ => p.idempotency_key = Some(h.clone()),
        },
        _ => {}
    }
    let parsed = parsed.map_err(ApiError::invalid)?;
    let event = parsed.into_event(access.org);
    let published = state.publisher.publish(event).await?;
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

/// `POST /events/batch` bodies may be larger than other API bodies: up to 1,000 events.
pub(crate) const BATCH_MAX_EVENTS: usize = 1000;
pub(crate) const BATCH_MAX_BODY: usize = 4 * 1024 * 1024;

/// One result of a batch, in the order of the request.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub(crate) enum BatchResult {
    Published {
        id: Uuid,
        deliveries: u32,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        duplicate: bool,
    },
    Failed {
        error: BatchError,
    },
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BatchError {
    status_code: u16,
    message: String,
    errors: Vec<FieldError>,
}

impl From<ApiError> for BatchError {
    fn from(e: ApiError) -> Self {
        let message = e.to_string();
        match e {
            ApiError::Validation { errors, .. } => BatchError { status_code: 422, message, errors },
            ApiError::BadRequest(_) => BatchError { status_code: 400, message, errors: vec![] },
            _ => BatchError { status_code: 422, message, errors: vec![] },
        }
    }
}

#[utoipa::path(post, path = "/events/batch", tag = "events",
    request_body = super::openapi::PublishBatch,
    responses((status = 200, description = "One result per event, in order; valid events are stored in one transaction", body = Envelope<Vec<BatchResult>>),
        (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody), (status = 413, body = super::openapi::ErrorBody),
        (status = 415, body = super::openapi::ErrorBody), (status = 422, body = super::openapi::ErrorBody)))]
pub(crate) async fn publish_batch(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    if caller.scope != Scope::Platform {
        return Err(ApiError::Forbidden("only a platform key may publish events".into()));
    }
    let bytes = read_body(&headers, body, BATCH_MAX_BODY).await?;
    // `events` stays raw here: each event's nesting and fields are checked on their own, so
    // an invalid event fails alone and every `data` is kept verbatim.
    let mut items: Option<Vec<Box<RawValue>>> = None;
    let mut errors = Vec::new();
    for (name, raw) in parse_raw_members(&bytes, "body")? {
        match (name.as_str(), serde_json::from_str::<Vec<Box<RawValue>>>(raw.get())) {
            ("events", Ok(list)) if (1..=BATCH_MAX_EVENTS).contains(&list.len()) => items = Some(list),
            ("events", Ok(_)) => {
                errors.push(FieldError::new("events", format!("must hold 1 to {BATCH_MAX_EVENTS} events")))
            }
            ("events", Err(_)) => errors.push(FieldError::new("events", "must be an array of events")),
            (other, _) => errors.push(FieldError::new(other, "unknown field")),
        }
    }
    let items = match items {
        Some(items) if errors.is_empty() => items,
        _ => {
            if errors.is_empty() {
                errors.push(FieldError::new("events", "is required"));
            }
            return Err(ApiError::invalid(errors));
        }
    };
    let mut valid = Vec::new();
    let mut slots: Vec<Result<usize, BatchError>> = Vec::with_capacity(items.len());
    for item in items {
        let parsed = parse_members_of(item.get().as_bytes(), "event").map_err(BatchError::from).and_then(|members| {
            parse_event(&state, members, &["organizationId"]).map_err(|e| BatchError::from(ApiError::invalid(e)))
        });
        slots.push(parsed.map(|p| {
            valid.push(p.into_event(Uuid::nil()));
            valid.len() - 1
        }));
    }
    let published = state.store.publish_batch(&valid, state.idempotency_window).await?;
    let fresh: u64 = published.iter().filter(|p| !p.duplicate).count() as u64;
    metrics::counter!("mosend_webhooks_events_published_total").increment(fresh);
    let results: Vec<BatchResult> = slots
        .into_iter()
        .map(|slot| match slot {
            Ok(i) => BatchResult::Published {
                id: published[i].id,
                deliveries: published[i].deliveries,
                duplicate: published[i].duplicate,
            },
            Err(error) => BatchResult::Failed { error },
        })
        .collect();
    Ok(Json(Envelope::new(results)))
}
