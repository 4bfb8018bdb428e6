//! The body of a delivery in each format (SPEC §4). The event's `data` is stored as the
//! JSON text it was published with and embedded as is, so the bytes signed are exactly the
//! bytes sent, and the same on every retry.

use std::sync::OnceLock;

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;
use uuid::Uuid;

use super::{time::Timestamp, webhook::Format};

/// An event as its deliveries send it. The deliveries of one event handed over by a publish
/// share one, so its data is held once and each format's body is rendered once, by the first
/// attempt that needs it, whatever the number of webhooks.
#[derive(Debug)]
pub struct OutboundEvent {
    pub id: Uuid,
    pub event_type: String,
    /// The published `data` object, as stored.
    pub data: String,
    pub created_at: Timestamp,
    /// The rendered body per format (`Format::index`), or why it cannot be rendered.
    bodies: [OnceLock<Result<Bytes, String>>; 2],
}

impl OutboundEvent {
    pub fn new(id: Uuid, event_type: String, data: String, created_at: Timestamp) -> Self {
        Self { id, event_type, data, created_at, bodies: Default::default() }
    }

    /// The request body for `format`; an error if the stored data is not JSON.
    pub fn body(&self, format: Format) -> Result<&Bytes, &str> {
        let slot = &self.bodies[match format {
            Format::Json => 0,
            Format::StandardWebhooks => 1,
        }];
        slot.get_or_init(|| {
            let data: &RawValue =
                serde_json::from_str(&self.data).map_err(|e| format!("stored event data is not JSON: {e}"))?;
            Ok(Bytes::from(render(format, &self.id.to_string(), &self.event_type, self.created_at, data)))
        })
        .as_ref()
        .map_err(String::as_str)
    }
}

#[derive(Serialize)]
struct JsonBody<'a> {
    id: &'a str,
    event: &'a str,
    created_at: String,
    data: &'a RawValue,
}

#[derive(Serialize)]
struct StandardBody<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    timestamp: String,
    data: &'a RawValue,
}

/// Renders the request body of an event for `format`.
pub fn render(format: Format, event_id: &str, event_type: &str, created_at: Timestamp, data: &RawValue) -> Vec<u8> {
    let result = match format {
        Format::Json => {
            serde_json::to_vec(&JsonBody { id: event_id, event: event_type, created_at: created_at.to_rfc3339(), data })
        }
        Format::StandardWebhooks => {
            serde_json::to_vec(&StandardBody { kind: event_type, timestamp: created_at.to_rfc3339(), data })
        }
    };
    // Serialising strings and an already-valid raw JSON value cannot fail.
    result.expect("serialising a payload of strings and raw JSON cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_formats_embed_data_verbatim() {
        let data = RawValue::from_string(r#"{"to":"a@b.c","n":1}"#.into()).unwrap();
        let json = render(Format::Json, "e1", "email.sent", Timestamp(0), &data);
        assert_eq!(
            json,
            br#"{"id":"e1","event":"email.sent","created_at":"1970-01-01T00:00:00.000Z","data":{"to":"a@b.c","n":1}}"#
        );
        let std = render(Format::StandardWebhooks, "e1", "email.sent", Timestamp(0), &data);
        assert_eq!(std, br#"{"type":"email.sent","timestamp":"1970-01-01T00:00:00.000Z","data":{"to":"a@b.c","n":1}}"#);
    }

    #[test]
    fn an_outbound_event_renders_each_format_once_and_refuses_data_that_is_not_json() {
        let id = Uuid::now_v7();
        let e = OutboundEvent::new(id, "email.sent".into(), r#"{"n":1}"#.into(), Timestamp(0));
        let data = RawValue::from_string(r#"{"n":1}"#.into()).unwrap();
        for format in [Format::Json, Format::StandardWebhooks] {
            let first = e.body(format).unwrap().clone();
            assert_eq!(first, render(format, &id.to_string(), "email.sent", Timestamp(0), &data));
            // The second call hands out the same bytes, not a new rendering.
            assert_eq!(e.body(format).unwrap().as_ptr(), first.as_ptr());
        }
        let bad = OutboundEvent::new(id, "email.sent".into(), "{not json".into(), Timestamp(0));
        assert!(bad.body(Format::Json).unwrap_err().starts_with("stored event data is not JSON"));
    }
}
