//! The delivery status machine and the outcome of one attempt (SPEC §2, §4).
//!
//! An attempt's result is data, not an error: a small stable set of outcome codes, stored
//! with the attempt, that decides what happens next.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Before the first attempt, or held while the webhook is paused.
    Pending,
    /// A failed attempt with another scheduled.
    Retrying,
    Succeeded,
    /// Attempts exhausted, or the receiver answered 410.
    Failed,
    /// The webhook was deleted or disabled.
    Cancelled,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Retrying => "retrying",
            DeliveryStatus::Succeeded => "succeeded",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => DeliveryStatus::Pending,
            "retrying" => DeliveryStatus::Retrying,
            "succeeded" => DeliveryStatus::Succeeded,
            "failed" => DeliveryStatus::Failed,
            "cancelled" => DeliveryStatus::Cancelled,
            _ => return None,
        })
    }
}

/// What one attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx answer.
    Success,
    /// 410 Gone: fail at once and disable the webhook.
    Gone,
    /// Any other HTTP status, 3xx included (redirects are never followed).
    HttpStatus,
    /// The whole attempt outlasted the delivery timeout.
    Timeout,
    /// The receiver's name did not resolve.
    Dns,
    /// The connection was refused, reset or failed its TLS handshake.
    Connect,
    /// The address is forbidden by the SSRF rules.
    Blocked,
    /// Anything else the HTTP client reported (malformed response, protocol error).
    Protocol,
}

impl Outcome {
    /// The stable code stored with the attempt.
    pub fn code(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Gone => "gone",
            Outcome::HttpStatus => "http_status",
            Outcome::Timeout => "timeout",
            Outcome::Dns => "dns",
            Outcome::Connect => "connect",
            Outcome::Blocked => "blocked",
            Outcome::Protocol => "protocol",
        }
    }
}
