//! One attempt: render the body for the webhook's format, sign exactly those bytes, POST
//! them through the guarded client under a whole-attempt timeout, read at most 4 KiB of
//! the answer, and classify what happened into an [`Outcome`].

use std::time::{Duration, Instant, SystemTime};

use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use http_body_util::Full;

use crate::domain::{address::AllowList, delivery::Outcome, retry::parse_retry_after, time::Timestamp};
use crate::net::{self, ErrorKind};
use crate::store::ClaimedDelivery;

/// At most this many bytes of a response body are read and stored.
pub const RESPONSE_BODY_CAP: usize = 4096;

/// What one attempt came to.
#[derive(Debug, Clone)]
pub struct AttemptResult {
    pub attempted_at: Timestamp,
    pub duration_ms: i64,
    pub outcome: Outcome,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    pub response_body: Option<String>,
    pub retry_after: Option<Duration>,
}

/// Sends deliveries. Cheap to clone: the client's connection pools are shared.
#[derive(Clone)]
pub struct Dispatcher {
    client: net::HttpClient,
    allow: AllowList,
    timeout: Duration,
    user_agent: HeaderValue,
}

impl Dispatcher {
    /// `connections`: the most exchanges in flight at once, which is also how many
    /// keep-alive connections per receiver host are kept open.
    pub fn new(allow: AllowList, timeout: Duration, connections: usize) -> Result<Self, net::ClientError> {
        Ok(Self {
            client: net::build_client(&allow, timeout, connections)?,
            allow,
            timeout,
            user_agent: HeaderValue::from_static(concat!("Mosend-Webhooks/", env!("CARGO_PKG_VERSION"))),
        })
    }

    /// The longest an attempt takes.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Makes one attempt; never fails: every problem is an outcome.
    pub async fn attempt(&self, d: &ClaimedDelivery) -> AttemptResult {
        let attempted_at = Timestamp::now();
        let started = Instant::now();
        let exchange = tokio::time::timeout(self.timeout, self.exchange(d, attempted_at)).await;
        let duration_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        let mut result = AttemptResult {
            attempted_at,
            duration_ms,
            outcome: Outcome::Timeout,
            status_code: None,
            error: None,
            response_body: None,
            retry_after: None,
        };
        match exchange {
            Err(_) => {
                result.error =
                    Some(format!("timeout: no complete answer within {}", humantime::format_duration(self.timeout)));
            }
            Ok(Err((outcome, error))) => {
                result.outcome = outcome;
                result.error = Some(error);
            }
            Ok(Ok(answer)) => {
                let code = answer.status;
                result.status_code = Some(code);
                result.response_body = Some(storable_text(&answer.body));
                result.outcome = match code {
                    200..=299 => Outcome::Success,
                    410 => Outcome::Gone,
                    _ => Outcome::HttpStatus,
                };
                result.error = match code {
                    200..=299 => None,
                    300..=399 => Some(format!("HTTP {code}: redirects are not followed")),
                    410 => Some("HTTP 410 Gone: the receiver asked for no more deliveries".into()),
                    _ => Some(format!("HTTP {code}")),
                };
                if code == 429 || code == 503 {
                    result.retry_after = answer.retry_after;
                }
            }
        }
        result
    }

    async fn exchange(&self, d: &ClaimedDelivery, attempted_at: Timestamp) -> Result<Answer, (Outcome, String)> {
        let webhook = &d.webhook;
        let endpoint = webhook.url.as_ref().map_err(|e| (Outcome::Protocol, e.clone()))?;
        net::check_target(&endpoint.url, &self.allow).map_err(|b| (Outcome::Blocked, b.to_string()))?;
        // Rendered once per event and format, shared by the event's deliveries.
        let body = d.event.body(webhook.format).map_err(|e| (Outcome::Protocol, e.to_string()))?.clone();
        let mut request = http::Request::new(Full::new(body.clone()));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = endpoint.uri.clone();
        *request.headers_mut() = self.headers(d, attempted_at, &body);
        let response = self.client.request(request).await.map_err(|e| {
            let connecting = e.is_connect();
            classify(&e, connecting)
        })?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let body = net::read_capped(response.into_body(), RESPONSE_BODY_CAP).await.map_err(|e| classify(&e, false))?;
        Ok(Answer { status, retry_after, body })
    }

    fn headers(&self, d: &ClaimedDelivery, attempted_at: Timestamp, body: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::with_capacity(8 + d.webhook.headers.len());
        // Custom headers first, so ours win; their names and values were validated on write.
        for (name, value) in &d.webhook.headers {
            if let (Ok(n), Ok(v)) = (HeaderName::try_from(name.as_str()), HeaderValue::try_from(value.as_str())) {
                h.insert(n, v);
            }
        }
        let timestamp = attempted_at.unix_seconds();
        let event_id = d.event.id.to_string();
        let signer = &d.webhook.signer;
        // During a rotation the previous secret signs too: two space-separated `v1,` values.
        let standard = signer.standard(&event_id, timestamp, body);
        let mut put = |name: &'static str, value: String| {
            if let Ok(v) = HeaderValue::try_from(value) {
                h.insert(HeaderName::from_static(name), v);
            }
        };
        put("x-mosend-event", d.event.event_type.clone());
        put("x-mosend-delivery", d.id.to_string());
        put("x-mosend-signature", signer.mosend(body));
        put("webhook-id", event_id);
        put("webhook-timestamp", timestamp.to_string());
        put("webhook-signature", standard);
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(USER_AGENT, self.user_agent.clone());
        h
    }
}

struct Answer {
    status: u16,
    retry_after: Option<Duration>,
    body: Vec<u8>,
}

/// A receiver's bytes as text that every backend can store: UTF-8 with invalid bytes
/// replaced, and NUL (which PostgreSQL's TEXT refuses) replaced too.
fn storable_text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace('\0', "\u{fffd}")
}

fn classify(e: &(dyn std::error::Error + 'static), connecting: bool) -> (Outcome, String) {
    let (kind, message) = net::describe_error(e, connecting);
    let message = storable_text(message.as_bytes());
    let outcome = match kind {
        ErrorKind::Blocked => Outcome::Blocked,
        ErrorKind::Dns => Outcome::Dns,
        ErrorKind::Timeout => Outcome::Timeout,
        ErrorKind::Connect => Outcome::Connect,
        ErrorKind::Protocol => Outcome::Protocol,
    };
    (outcome, message)
}
