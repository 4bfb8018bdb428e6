//! The body of a delivery in each format (SPEC §4). The event's `data` is stored as the
//! JSON text it was published with and embedded as is, so the bytes signed are exactly the
//! bytes sent, and the same on every retry.

use serde::Serialize;
use serde_json::value::RawValue;

use super::{time::Timestamp, webhook::Format};

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
}
