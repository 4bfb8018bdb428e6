//! `/organizations/{orgId}/webhooks-outbound`: create, list, read, update, delete a webhook
//! and reveal its secret (SPEC §2).

use axum::{
    body::Body,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
    Json,
};
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{
    error::{ApiError, FieldError},
    extract::{parse_object, read_body, read_optional_body, OrgAccess},
    AppState, Envelope,
};
use crate::domain::{
    time::Timestamp,
    webhook::{self, check_header, Format, Headers, Status, WebhookSecret, WebhookUrl},
};
use crate::store::{UpdateResult, Webhook, WebhookUpdate};

/// A webhook as the API shows it; the secret only in the create answer.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WebhookView {
    id: Uuid,
    organization_id: Uuid,
    name: String,
    description: Option<String>,
    url: String,
    events: Vec<String>,
    format: Format,
    status: Status,
    disabled_reason: Option<String>,
    disabled_at: Option<Timestamp>,
    headers: Headers,
    created_at: Timestamp,
    updated_at: Timestamp,
    /// Only in the create answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

impl From<&Webhook> for WebhookView {
    fn from(w: &Webhook) -> Self {
        Self {
            id: w.id,
            organization_id: w.org_id,
            name: w.name.clone(),
            description: w.description.clone(),
            url: w.url.clone(),
            events: w.events.clone(),
            format: w.format,
            status: w.status,
            disabled_reason: w.disabled_reason.clone(),
            disabled_at: w.disabled_at,
            headers: w.headers.clone(),
            created_at: w.created_at,
            updated_at: w.updated_at,
            secret: None,
        }
    }
}

/// The writable fields present in a create or update body, each already validated.
#[derive(Default)]
struct Changes {
    name: Option<String>,
    description: Option<Option<String>>,
    url: Option<WebhookUrl>,
    events: Option<Vec<String>>,
    format: Option<Format>,
    status: Option<Status>,
    headers: Option<Headers>,
}

/// Validates every field of a body, collecting all problems into one 422.
fn parse_changes(state: &AppState, body: Map<String, Value>, creating: bool) -> Result<Changes, ApiError> {
    let mut c = Changes::default();
    let mut errors = Vec::new();
    let mut fail = |field: &str, message: String| errors.push(FieldError::new(field, message));
    for (key, value) in body {
        match (key.as_str(), value) {
            ("name", Value::String(s)) => match webhook::parse_name(&s) {
                Ok(v) => c.name = Some(v),
                Err(m) => fail("name", m),
            },
            ("description", Value::Null) => c.description = Some(None),
            ("description", Value::String(s)) => match webhook::parse_description(&s) {
                Ok(v) => c.description = Some(Some(v)),
                Err(m) => fail("description", m),
            },
            ("url", Value::String(s)) => match WebhookUrl::parse(&s, &state.allow) {
                Ok(v) => c.url = Some(v),
                Err(m) => fail("url", m),
            },
            ("events", Value::Array(items)) => match parse_events(state, items) {
                Ok(v) => c.events = Some(v),
                Err(m) => fail("events", m),
            },
            ("format", Value::String(s)) => match Format::parse(&s) {
                Ok(v) => c.format = Some(v),
                Err(m) => fail("format", m),
            },
            ("status", Value::String(s)) => match Status::parse(&s) {
                Ok(Status::Disabled) if creating => fail("status", "a new webhook is `active` or `paused`".into()),
                Ok(v) => c.status = Some(v),
                Err(m) => fail("status", m),
            },
            ("headers", Value::Null) => c.headers = Some(Headers::new()),
            ("headers", Value::Object(map)) => match parse_headers(map) {
                Ok(v) => c.headers = Some(v),
                Err(m) => fail("headers", m),
            },
            ("name" | "url" | "format" | "status", _) => fail(&key, "must be a string".into()),
            ("description", _) => fail(&key, "must be a string or null".into()),
            ("events", _) => fail(&key, "must be an array of strings".into()),
            ("headers", _) => fail(&key, "must be an object of strings".into()),
            _ => fail(&key, "unknown field".into()),
        }
    }
    if creating {
        for (field, present) in [("name", c.name.is_some()), ("url", c.url.is_some()), ("events", c.events.is_some())] {
            if !present && !errors.iter().any(|e| e.field == field) {
                errors.push(FieldError::new(field, "is required"));
            }
        }
    }
    if errors.is_empty() {
        Ok(c)
    } else {
        Err(ApiError::invalid(errors))
    }
}

fn parse_events(state: &AppState, items: Vec<Value>) -> Result<Vec<String>, String> {
    if items.is_empty() || items.len() > webhook::EVENTS_MAX {
        return Err(format!("must hold 1 to {} entries", webhook::EVENTS_MAX));
    }
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        let Value::String(s) = item else {
            return Err("must be an array of strings".into());
        };
        state.catalogue.check_subscription(&s)?;
        if out.contains(&s) {
            return Err(format!("`{s}` is listed twice"));
        }
        out.push(s);
    }
    Ok(out)
}

fn parse_headers(map: Map<String, Value>) -> Result<Headers, String> {
    if map.len() > webhook::HEADERS_MAX {
        return Err(format!("at most {} headers", webhook::HEADERS_MAX));
    }
    let mut out = Headers::new();
    for (name, value) in map {
        let Value::String(value) = value else {
            return Err(format!("header `{}` must have a string value", name.escape_debug()));
        };
        check_header(&name, &value)?;
        if out.keys().any(|k| k.eq_ignore_ascii_case(&name)) {
            return Err(format!("header `{name}` is listed twice"));
        }
        out.insert(name, value);
    }
    Ok(out)
}

async fn find(state: &AppState, access: &OrgAccess) -> Result<Webhook, ApiError> {
    let id = access.id()?;
    state.store.get_webhook(access.org, id).await?.ok_or_else(|| ApiError::NotFound("no such webhook".into()))
}

#[utoipa::path(get, path = "/organizations/{orgId}/webhooks-outbound", tag = "webhooks", params(("orgId" = Uuid, Path, description = "The organization")),
    responses((status = 200, description = "The organization's webhooks, never with their secrets", body = Envelope<Vec<WebhookView>>), (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody)))]
pub(crate) async fn list(State(state): State<AppState>, access: OrgAccess) -> Result<impl IntoResponse, ApiError> {
    let hooks = state.store.list_webhooks(access.org).await?;
    Ok(Json(Envelope::new(hooks.iter().map(WebhookView::from).collect::<Vec<_>>())))
}

#[utoipa::path(get, path = "/organizations/{orgId}/webhooks-outbound/{id}", tag = "webhooks", params(("orgId" = Uuid, Path, description = "The organization"), ("id" = Uuid, Path, description = "The webhook")),
    responses((status = 200, description = "One webhook", body = Envelope<WebhookView>), (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody), (status = 404, body = super::openapi::ErrorBody)))]
pub(crate) async fn get(State(state): State<AppState>, access: OrgAccess) -> Result<impl IntoResponse, ApiError> {
    let hook = find(&state, &access).await?;
    Ok(Json(Envelope::new(WebhookView::from(&hook))))
}

#[utoipa::path(post, path = "/organizations/{orgId}/webhooks-outbound", tag = "webhooks", params(("orgId" = Uuid, Path, description = "The organization")),
    request_body = super::openapi::CreateWebhook,
    responses((status = 201, description = "Created; the only answer besides `/secret` that shows the secret", body = Envelope<WebhookView>), (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody),
        (status = 413, body = super::openapi::ErrorBody), (status = 415, body = super::openapi::ErrorBody), (status = 422, body = super::openapi::ErrorBody)))]
pub(crate) async fn create(
    State(state): State<AppState>,
    access: OrgAccess,
    headers: HeaderMap,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let bytes = read_body(&headers, body, state.max_body).await?;
    let c = parse_changes(&state, parse_object(&bytes)?, true)?;
    let now = Timestamp::now();
    let (Some(name), Some(url), Some(events)) = (c.name, c.url, c.events) else {
        return Err(ApiError::field("body", "name, url and events are required"));
    };
    let hook = Webhook {
        id: Uuid::now_v7(),
        org_id: access.org,
        name,
        description: c.description.flatten(),
        url: url.as_str().to_string(),
        events,
        format: c.format.unwrap_or(Format::Json),
        status: c.status.unwrap_or(Status::Active),
        disabled_reason: None,
        disabled_at: None,
        headers: c.headers.unwrap_or_default(),
        secret: WebhookSecret::generate(),
        created_at: now,
        updated_at: now,
        version: 0,
    };
    state.store.insert_webhook(&hook).await?;
    tracing::info!(webhook_id = %hook.id, org_id = %hook.org_id, "webhook created");
    let mut view = WebhookView::from(&hook);
    view.secret = Some(hook.secret.expose().to_string());
    Ok((StatusCode::CREATED, Json(Envelope::new(view))))
}

#[utoipa::path(patch, path = "/organizations/{orgId}/webhooks-outbound/{id}", tag = "webhooks", params(("orgId" = Uuid, Path, description = "The organization"), ("id" = Uuid, Path, description = "The webhook")),
    request_body = super::openapi::UpdateWebhook,
    responses((status = 200, description = "Updated", body = Envelope<WebhookView>), (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody), (status = 404, body = super::openapi::ErrorBody),
        (status = 413, body = super::openapi::ErrorBody), (status = 415, body = super::openapi::ErrorBody), (status = 422, body = super::openapi::ErrorBody)))]
pub(crate) async fn update(
    State(state): State<AppState>,
    access: OrgAccess,
    headers: HeaderMap,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let mut hook = find(&state, &access).await?;
    let bytes = read_body(&headers, body, state.max_body).await?;
    let changes = parse_changes(&state, parse_object(&bytes)?, false)?;
    // Optimistic concurrency: the update applies to the version it was computed from; when
    // another write (a PATCH, or the worker disabling the webhook) came first, re-read and
    // apply the same changes again, so no change is lost and no transition is undone.
    for attempt in 0..32u64 {
        if attempt > 0 {
            // Spread the retries of requests that keep colliding.
            tokio::time::sleep(std::time::Duration::from_millis(rand::random::<u64>() % (2 * attempt))).await;
        }
        let update = changes.apply(hook, Timestamp::now());
        match state.store.update_webhook(&update).await? {
            UpdateResult::Applied => return Ok(Json(Envelope::new(WebhookView::from(&update.webhook)))),
            UpdateResult::Missing => return Err(ApiError::NotFound("no such webhook".into())),
            UpdateResult::Stale => hook = find(&state, &access).await?,
        }
    }
    Err(ApiError::Conflict("the webhook is being changed by other requests; try again".into()))
}

impl Changes {
    /// The update these changes make to `hook`, with the side effects of a status change.
    fn apply(&self, mut hook: Webhook, now: Timestamp) -> WebhookUpdate {
        let before = hook.status;
        if let Some(v) = &self.name {
            hook.name = v.clone();
        }
        if let Some(v) = &self.description {
            hook.description = v.clone();
        }
        if let Some(v) = &self.url {
            hook.url = v.as_str().to_string();
        }
        if let Some(v) = &self.events {
            hook.events = v.clone();
        }
        if let Some(v) = self.format {
            hook.format = v;
        }
        if let Some(v) = &self.headers {
            hook.headers = v.clone();
        }
        hook.updated_at = now;
        let mut update = WebhookUpdate { webhook: hook, cancel_open_deliveries: false, reset_failures: false };
        if let Some(status) = self.status.filter(|s| *s != before) {
            let w = &mut update.webhook;
            w.status = status;
            if status == Status::Disabled {
                w.disabled_reason = Some("disabled through the API".into());
                w.disabled_at = Some(now);
                update.cancel_open_deliveries = true;
            } else if before == Status::Disabled {
                w.disabled_reason = None;
                w.disabled_at = None;
                update.reset_failures = true;
            }
        }
        update
    }
}

#[utoipa::path(delete, path = "/organizations/{orgId}/webhooks-outbound/{id}", tag = "webhooks", params(("orgId" = Uuid, Path, description = "The organization"), ("id" = Uuid, Path, description = "The webhook")),
    responses((status = 204, description = "Deleted; its pending deliveries are cancelled"), (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody), (status = 404, body = super::openapi::ErrorBody)))]
pub(crate) async fn delete(State(state): State<AppState>, access: OrgAccess) -> Result<impl IntoResponse, ApiError> {
    let id = access.id()?;
    if !state.store.delete_webhook(access.org, id, Timestamp::now()).await? {
        return Err(ApiError::NotFound("no such webhook".into()));
    }
    tracing::info!(webhook_id = %id, org_id = %access.org, "webhook deleted");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct SecretView {
    secret: String,
}

#[utoipa::path(get, path = "/organizations/{orgId}/webhooks-outbound/{id}/secret", tag = "webhooks", params(("orgId" = Uuid, Path, description = "The organization"), ("id" = Uuid, Path, description = "The webhook")),
    responses((status = 200, description = "The signing secret", body = Envelope<SecretView>), (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody), (status = 404, body = super::openapi::ErrorBody)))]
pub(crate) async fn secret(State(state): State<AppState>, access: OrgAccess) -> Result<impl IntoResponse, ApiError> {
    let hook = find(&state, &access).await?;
    Ok(Json(Envelope::new(SecretView { secret: hook.secret.expose().to_string() })))
}

/// The longest grace period a rotation may ask for.
const MAX_ROTATION_GRACE: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);

#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RotatedView {
    /// The new signing secret.
    secret: String,
    /// Until then the previous secret signs too (a second `v1,` in `webhook-signature`).
    previous_secret_expires_at: Timestamp,
}

#[utoipa::path(post, path = "/organizations/{orgId}/webhooks-outbound/{id}/secret/rotate", tag = "webhooks",
    params(("orgId" = Uuid, Path, description = "The organization"), ("id" = Uuid, Path, description = "The webhook")),
    request_body(content = Option<super::openapi::RotateSecret>, description = "Optional: `{\"gracePeriod\": \"24h\"}`"),
    responses((status = 200, description = "The new secret; the previous one keeps signing until `previousSecretExpiresAt`", body = Envelope<RotatedView>),
        (status = 401, body = super::openapi::ErrorBody), (status = 403, body = super::openapi::ErrorBody), (status = 404, body = super::openapi::ErrorBody),
        (status = 415, body = super::openapi::ErrorBody), (status = 422, body = super::openapi::ErrorBody)))]
pub(crate) async fn rotate_secret(
    State(state): State<AppState>,
    access: OrgAccess,
    headers: HeaderMap,
    body: Body,
) -> Result<impl IntoResponse, ApiError> {
    let hook = find(&state, &access).await?;
    let mut grace = state.rotation_grace;
    if let Some(bytes) = read_optional_body(&headers, body, state.max_body).await? {
        let mut errors = Vec::new();
        for (name, value) in parse_object(&bytes)? {
            match (name.as_str(), value) {
                ("gracePeriod", Value::String(text)) => match humantime::parse_duration(text.trim()) {
                    Ok(d) if d <= MAX_ROTATION_GRACE => grace = d,
                    Ok(_) => errors.push(FieldError::new("gracePeriod", "must be at most 7 days")),
                    Err(_) => errors.push(FieldError::new("gracePeriod", "must be a duration such as `24h` or `30m`")),
                },
                ("gracePeriod", _) => errors.push(FieldError::new("gracePeriod", "must be a string such as `24h`")),
                (other, _) => errors.push(FieldError::new(other, "unknown field")),
            }
        }
        if !errors.is_empty() {
            return Err(ApiError::invalid(errors));
        }
    }
    let secret = WebhookSecret::generate();
    let now = Timestamp::now();
    let until = now.plus(grace);
    if !state.store.rotate_secret(access.org, hook.id, &secret, until, now).await? {
        return Err(ApiError::NotFound("no such webhook".into()));
    }
    tracing::info!(webhook_id = %hook.id, org_id = %access.org, "webhook secret rotated");
    Ok(Json(Envelope::new(RotatedView { secret: secret.expose().to_string(), previous_secret_expires_at: until })))
}
