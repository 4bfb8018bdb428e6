//! A webhook's delivery history, newest first, with filters and cursor pagination, and the
//! attempts of one delivery.

use axum::{
    extract::{RawQuery, State},
    response::IntoResponse,
    Json,
};
use serde::Serialize;
use uuid::Uuid;

use super::{
    error::{ApiError, FieldError},
    extract::OrgAccess,
    AppState, Envelope,
};
use crate::domain::{delivery::DeliveryStatus, time::Timestamp};
use crate::store::{Attempt, Delivery, DeliveryQuery};

pub(crate) const LIMIT_DEFAULT: u32 = 50;
pub(crate) const LIMIT_MAX: u32 = 250;

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeliveryView {
    id: Uuid,
    webhook_id: Uuid,
    event_id: Uuid,
    event_type: String,
    status: DeliveryStatus,
    attempts: u32,
    last_status_code: Option<u16>,
    last_error: Option<String>,
    last_response_body: Option<String>,
    last_duration_ms: Option<i64>,
    next_attempt_at: Option<Timestamp>,
    created_at: Timestamp,
    updated_at: Timestamp,
    delivered_at: Option<Timestamp>,
}

impl From<Delivery> for DeliveryView {
    fn from(d: Delivery) -> Self {
        Self {
            id: d.id,
            webhook_id: d.webhook_id,
            event_id: d.event_id,
            event_type: d.event_type,
            status: d.status,
            attempts: d.attempts,
            last_status_code: d.last_status_code,
            last_error: d.last_error,
            last_response_body: d.last_response_body,
            last_duration_ms: d.last_duration_ms,
            next_attempt_at: d.next_attempt_at,
            created_at: d.created_at,
            updated_at: d.updated_at,
            delivered_at: d.delivered_at,
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Page<T> {
    data: Vec<T>,
    next_cursor: Option<String>,
    timestamp: Timestamp,
}

fn parse_query(raw: Option<&str>) -> Result<DeliveryQuery, ApiError> {
    let mut q = DeliveryQuery { limit: LIMIT_DEFAULT, ..Default::default() };
    let mut errors = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    for (name, value) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        if seen.iter().any(|s| *s == name) {
            errors.push(FieldError::new(name.as_ref(), "is given more than once"));
            continue;
        }
        seen.push(name.to_string());
        match name.as_ref() {
            "status" => match DeliveryStatus::parse(&value) {
                Some(s) => q.status = Some(s),
                None => {
                    errors.push(FieldError::new("status", "must be pending, retrying, succeeded, failed or cancelled"))
                }
            },
            "eventType" if value.len() <= 100 && value.bytes().all(|b| b.is_ascii_graphic()) => {
                q.event_type = Some(value.into_owned())
            }
            "eventType" => {
                errors.push(FieldError::new("eventType", "must be an event type (at most 100 visible characters)"))
            }
            "limit" => match value.parse::<u32>() {
                Ok(n) if (1..=LIMIT_MAX).contains(&n) => q.limit = n,
                _ => errors.push(FieldError::new("limit", format!("must be a whole number from 1 to {LIMIT_MAX}"))),
            },
            "cursor" => match Uuid::try_parse(&value) {
                Ok(id) => q.before = Some(id),
                Err(_) => errors.push(FieldError::new("cursor", "is not a cursor this API returned")),
            },
            other => errors.push(FieldError::new(other, "unknown query parameter")),
        }
    }
    if errors.is_empty() {
        Ok(q)
    } else {
        Err(ApiError::invalid(errors))
    }
}

async fn ensure_webhook(state: &AppState, access: &OrgAccess) -> Result<Uuid, ApiError> {
    let id = access.id()?;
    match state.store.get_webhook(access.org, id).await? {
        Some(_) => Ok(id),
        None => Err(ApiError::NotFound("no such webhook".into())),
    }
}

#[utoipa::path(get, path = "/organizations/{orgId}/webhooks-outbound/{id}/deliveries", tag = "deliveries",
    params(("orgId" = Uuid, Path, description = "The organization"), ("id" = Uuid, Path, description = "The webhook"),
        ("status" = Option<DeliveryStatus>, Query, description = "Only deliveries in this status"),
        ("eventType" = Option<String>, Query, description = "Only deliveries of this event type"),
        ("limit" = Option<u32>, Query, description = "Page size, 1 to 250 (default 50)"),
        ("cursor" = Option<String>, Query, description = "`nextCursor` of the previous page")),
    responses((status = 200, description = "Newest first", body = Page<DeliveryView>), (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody), (status = 404, body = super::openapi::ErrorBody),
        (status = 422, body = super::openapi::ErrorBody)))]
pub(crate) async fn list(
    State(state): State<AppState>,
    access: OrgAccess,
    RawQuery(raw): RawQuery,
) -> Result<impl IntoResponse, ApiError> {
    let webhook_id = ensure_webhook(&state, &access).await?;
    let mut query = parse_query(raw.as_deref())?;
    let limit = query.limit;
    // One row more than asked tells whether there is a next page.
    query.limit += 1;
    let mut rows = state.store.list_deliveries(webhook_id, &query).await?;
    let next_cursor = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|d| d.id.to_string())
    } else {
        None
    };
    Ok(Json(Page {
        data: rows.into_iter().map(DeliveryView::from).collect(),
        next_cursor,
        timestamp: Timestamp::now(),
    }))
}

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AttemptView {
    id: Uuid,
    delivery_id: Uuid,
    attempted_at: Timestamp,
    duration_ms: i64,
    status_code: Option<u16>,
    outcome: String,
    error: Option<String>,
    response_body: Option<String>,
}

impl From<Attempt> for AttemptView {
    fn from(a: Attempt) -> Self {
        Self {
            id: a.id,
            delivery_id: a.delivery_id,
            attempted_at: a.attempted_at,
            duration_ms: a.duration_ms,
            status_code: a.status_code,
            outcome: a.outcome,
            error: a.error,
            response_body: a.response_body,
        }
    }
}

/// `GET …/{id}/deliveries/{deliveryId}/attempts`: every attempt of one delivery, oldest first.
#[utoipa::path(get, path = "/organizations/{orgId}/webhooks-outbound/{id}/deliveries/{deliveryId}/attempts", tag = "deliveries",
    params(("orgId" = Uuid, Path, description = "The organization"), ("id" = Uuid, Path, description = "The webhook"), ("deliveryId" = Uuid, Path, description = "The delivery")),
    responses((status = 200, description = "Every attempt, oldest first", body = Envelope<Vec<AttemptView>>), (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody),
        (status = 404, body = super::openapi::ErrorBody)))]
pub(crate) async fn attempts(State(state): State<AppState>, access: OrgAccess) -> Result<impl IntoResponse, ApiError> {
    let webhook_id = ensure_webhook(&state, &access).await?;
    let delivery_id = access.sub_id()?;
    if state.store.get_delivery(webhook_id, delivery_id).await?.is_none() {
        return Err(ApiError::NotFound("no such delivery".into()));
    }
    let attempts = state.store.list_attempts(delivery_id).await?;
    Ok(Json(Envelope::new(attempts.into_iter().map(AttemptView::from).collect::<Vec<_>>())))
}
