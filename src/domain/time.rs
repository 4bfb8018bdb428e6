//! Timestamps: stored as Unix milliseconds, shown as RFC 3339 UTC with milliseconds and `Z`
//! (`2026-05-01T03:42:18.123Z`), as SPEC §2 requires.

use serde::{Serialize, Serializer};
use time::{format_description::BorrowedFormatItem, macros::format_description, OffsetDateTime};

const RFC3339_MILLIS: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// A point in time with millisecond precision, serialised as an RFC 3339 string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub fn now() -> Self {
        Timestamp(now_ms())
    }

    pub fn millis(self) -> i64 {
        self.0
    }

    /// Whole seconds since the Unix epoch (the `webhook-timestamp` header).
    pub fn unix_seconds(self) -> i64 {
        self.0.div_euclid(1000)
    }

    pub fn plus(self, d: std::time::Duration) -> Self {
        Timestamp(self.0.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
    }

    pub fn minus(self, d: std::time::Duration) -> Self {
        Timestamp(self.0.saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
    }

    pub fn to_rfc3339(self) -> String {
        let nanos = i128::from(self.0) * 1_000_000;
        match OffsetDateTime::from_unix_timestamp_nanos(nanos) {
            Ok(t) => t.format(RFC3339_MILLIS).unwrap_or_default(),
            // Out of the representable range: only reachable with a corrupted clock or row.
            Err(_) => String::from("1970-01-01T00:00:00.000Z"),
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl utoipa::PartialSchema for Timestamp {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .examples(["2026-05-01T03:42:18.123Z"])
            .into()
    }
}

impl utoipa::ToSchema for Timestamp {}

/// Milliseconds since the Unix epoch, from the system clock.
pub fn now_ms() -> i64 {
    let now = OffsetDateTime::now_utc();
    i64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(Timestamp(1_777_606_938_123).to_rfc3339(), "2026-05-01T03:42:18.123Z");
        assert_eq!(Timestamp(0).to_rfc3339(), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn unix_seconds_floor() {
        assert_eq!(Timestamp(1_999).unix_seconds(), 1);
    }
}
