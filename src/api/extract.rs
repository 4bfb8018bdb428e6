//! Request extraction in the order SPEC §2 fixes: 401 (no or bad key) → 400 (bad UUID in
//! the path) → 403 (key not for this organization) → 404 → 415 → 413 → 400 (malformed
//! JSON) → 422. The extractors here cover the first three; handlers look the resource up
//! (404) before they read the body with [`read_body`].

use axum::{
    body::Body,
    extract::{FromRequestParts, RawPathParams},
    http::{header, request::Parts, HeaderMap},
};
use http_body_util::BodyExt;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::{value::RawValue, Map, Value};
use uuid::Uuid;

use super::{
    error::{ApiError, FieldError},
    AppState,
};
use crate::domain::api_key::{PresentedKey, Scope};

/// The authenticated caller.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caller {
    pub scope: Scope,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let presented = presented_key(&parts.headers)?;
        let key = PresentedKey::parse(presented).ok_or_else(|| ApiError::Unauthorized("malformed API key".into()))?;
        let record = state.keys.find(state.store.as_ref(), key.prefix).await?;
        match record {
            Some(r) if r.revoked_at.is_none() && key.matches(&r.secret_hash) => {
                if let Some(limiter) = &state.limiter {
                    if let Err(not_until) = limiter.check_key(&r.prefix) {
                        use governor::clock::{Clock, DefaultClock};
                        let wait = not_until.wait_time_from(DefaultClock::default().now());
                        return Err(ApiError::RateLimited(wait.as_secs().max(1)));
                    }
                }
                Ok(Caller { scope: r.scope })
            }
            _ => Err(ApiError::Unauthorized("invalid or revoked API key".into())),
        }
    }
}

fn presented_key(headers: &HeaderMap) -> Result<&str, ApiError> {
    let from_header = headers
        .get("x-api-key")
        .map(|v| v.to_str().map(str::trim).map_err(|_| ApiError::Unauthorized("malformed API key".into())))
        .transpose()?;
    let from_bearer = bearer(headers)?;
    match (from_header, from_bearer) {
        (Some(a), Some(b)) if a != b => {
            Err(ApiError::Unauthorized("X-Api-Key and Authorization carry different keys".into()))
        }
        (Some(key), _) | (None, Some(key)) => Ok(key),
        (None, None) => {
            Err(ApiError::Unauthorized("missing API key: send `X-Api-Key` or `Authorization: Bearer`".into()))
        }
    }
}

fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v.to_str().map_err(|_| ApiError::Unauthorized("malformed Authorization header".into()))?;
        let (scheme, token) = v.trim().split_once(' ').unwrap_or((v, ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(ApiError::Unauthorized("Authorization must use the Bearer scheme".into()));
        }
        return Ok(Some(token.trim()));
    }
    Ok(None)
}

impl Caller {
    pub(crate) fn may_manage(&self, org: Uuid) -> bool {
        match self.scope {
            Scope::Platform => true,
            Scope::Organization(own) => own == org,
        }
    }
}

/// Reads the path parameters as UUIDs, in order, naming the first bad one.
async fn path_uuids(parts: &mut Parts, state: &AppState) -> Result<Vec<(String, Uuid)>, ApiError> {
    let raw = RawPathParams::from_request_parts(parts, state)
        .await
        .map_err(|_| ApiError::BadRequest("the path is not valid UTF-8".into()))?;
    raw.iter()
        .map(|(name, value)| {
            // Only the hyphenated form: one resource, one URL.
            Uuid::try_parse(value)
                .ok()
                .filter(|_| value.len() == 36)
                .map(|u| (name.to_string(), u))
                .ok_or_else(|| ApiError::BadRequest(format!("`{name}` in the path must be a hyphenated UUID")))
        })
        .collect()
}

fn param(params: &[(String, Uuid)], name: &str) -> Result<Uuid, ApiError> {
    params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, u)| *u)
        .ok_or_else(|| ApiError::NotFound(format!("no `{name}` in this path")))
}

/// An authenticated caller allowed to act for the organization in the path.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OrgAccess {
    pub caller: Caller,
    pub org: Uuid,
    /// Every UUID path parameter other than `orgId`, by name.
    id: Option<Uuid>,
    sub_id: Option<Uuid>,
}

impl OrgAccess {
    /// The `{id}` path parameter.
    pub(crate) fn id(&self) -> Result<Uuid, ApiError> {
        self.id.ok_or_else(|| ApiError::NotFound("no webhook id in this path".into()))
    }

    /// The `{deliveryId}` path parameter.
    pub(crate) fn sub_id(&self) -> Result<Uuid, ApiError> {
        self.sub_id.ok_or_else(|| ApiError::NotFound("no delivery id in this path".into()))
    }
}

impl FromRequestParts<AppState> for OrgAccess {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        let params = path_uuids(parts, state).await?;
        let org = param(&params, "orgId")?;
        if !caller.may_manage(org) {
            return Err(ApiError::Forbidden("this API key may not act for this organization".into()));
        }
        Ok(OrgAccess { caller, org, id: param(&params, "id").ok(), sub_id: param(&params, "deliveryId").ok() })
    }
}

/// Reads a JSON request body: 415 unless the content type is JSON, 413 past `limit` bytes.
pub(crate) async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !is_json(content_type) {
        return Err(ApiError::UnsupportedMediaType(
            "the body must be JSON, sent with `Content-Type: application/json`".into(),
        ));
    }
    let too_large = || ApiError::PayloadTooLarge(format!("the body must be at most {} KiB", limit / 1024));
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut body = body;
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ApiError::BadRequest("the request body could not be read".into()))?;
        if let Some(data) = frame.data_ref() {
            if bytes.len() + data.len() > limit {
                return Err(too_large());
            }
            bytes.extend_from_slice(data);
        }
    }
    Ok(bytes)
}

/// Reads a body that may be absent: no content type and no bytes is `None`; anything else
/// must be a JSON body as [`read_body`] requires.
pub(crate) async fn read_optional_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Option<Vec<u8>>, ApiError> {
    if headers.contains_key(header::CONTENT_TYPE) {
        return read_body(headers, body, limit).await.map(Some);
    }
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ApiError::BadRequest("the request body could not be read".into()))?;
        if frame.data_ref().is_some_and(|d| !d.is_empty()) {
            return Err(ApiError::UnsupportedMediaType(
                "the body must be JSON, sent with `Content-Type: application/json`".into(),
            ));
        }
    }
    Ok(None)
}

fn is_json(content_type: &str) -> bool {
    let mut parts = content_type.split(';');
    let essence = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let json = essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"));
    // JSON is UTF-8 (RFC 8259); any other declared charset is not what we parse.
    let utf8 = parts.all(|p| match p.split_once('=') {
        Some((k, v)) if k.trim().eq_ignore_ascii_case("charset") => {
            matches!(v.trim().trim_matches('"').to_ascii_lowercase().as_str(), "utf-8" | "utf8")
        }
        _ => true,
    });
    json && utf8
}

/// JSON nested deeper than this is refused (serde_json's own recursion limit).
pub(crate) const MAX_JSON_DEPTH: usize = 128;

/// Maps a JSON parse error: bad syntax is 400; a well-formed body of the wrong shape, or
/// nested too deeply, is 422.
pub(crate) fn json_error(field: &str, e: &serde_json::Error) -> ApiError {
    if e.to_string().starts_with("recursion limit exceeded") {
        return ApiError::field(field, format!("is nested more than {MAX_JSON_DEPTH} levels deep"));
    }
    match e.classify() {
        serde_json::error::Category::Data => ApiError::field(field, "must be a JSON object"),
        _ => ApiError::BadRequest(format!("malformed JSON: {e}")),
    }
}

/// The top-level members of a JSON object, in order, with their values as raw JSON text
/// (so a value can be kept verbatim).
struct Members(Vec<(String, Box<RawValue>)>);

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<String, Box<RawValue>>()? {
                    out.push(entry);
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Parses the body as a JSON object whose members each appear once (a repeated member is
/// 422, never "the last one wins"), and whose values are valid JSON nested at most
/// [`MAX_JSON_DEPTH`] levels. Returns each member with its raw text and parsed value.
pub(crate) fn parse_members(bytes: &[u8]) -> Result<Vec<(String, Box<RawValue>, Value)>, ApiError> {
    parse_members_of(bytes, "body")
}

/// [`parse_members`] for a JSON object named `what` in error messages (`body`, `event`).
pub(crate) fn parse_members_of(bytes: &[u8], what: &str) -> Result<Vec<(String, Box<RawValue>, Value)>, ApiError> {
    parse_raw_members(bytes, what)?
        .into_iter()
        .map(|(name, raw)| match serde_json::from_str::<Value>(raw.get()) {
            Ok(value) => Ok((name, raw, value)),
            Err(e) => Err(json_error(&name, &e)),
        })
        .collect()
}

/// The members of a JSON object as raw JSON text, each given once; values are not parsed
/// (nor their nesting checked).
pub(crate) fn parse_raw_members(bytes: &[u8], what: &str) -> Result<Vec<(String, Box<RawValue>)>, ApiError> {
    let Members(members) = serde_json::from_slice(bytes).map_err(|e| json_error(what, &e))?;
    let mut errors = Vec::new();
    let mut out: Vec<(String, Box<RawValue>)> = Vec::with_capacity(members.len());
    for (name, raw) in members {
        if out.iter().any(|(n, _)| *n == name) {
            errors.push(FieldError::new(&name, "is given more than once"));
        } else {
            out.push((name, raw));
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ApiError::invalid(errors))
    }
}

/// Parses the body as a JSON object (see [`parse_members`]).
pub(crate) fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    Ok(parse_members(bytes)?.into_iter().map(|(name, _, value)| (name, value)).collect())
}
