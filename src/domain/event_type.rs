//! The catalogue of event types and the subscription rules of SPEC §2/§3: a webhook
//! subscribes to exact known types, to family wildcards such as `email.*` (the family must
//! hold a known type), or to `*`. `webhook.test` is in the catalogue but can be neither
//! published nor subscribed to.

use std::collections::BTreeSet;

/// The event type only the test endpoint sends.
pub const TEST_EVENT: &str = "webhook.test";

/// Event types known when the configuration names none.
pub const DEFAULT_EVENT_TYPES: &[&str] = &[
    "email.sent",
    "email.delivered",
    "email.delivery_delayed",
    "email.opened",
    "email.clicked",
    "email.bounced",
    "email.complained",
    "email.failed",
    "contact.unsubscribed",
    TEST_EVENT,
];

/// The known event types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalogue {
    types: BTreeSet<String>,
}

impl Default for Catalogue {
    fn default() -> Self {
        Self::new(DEFAULT_EVENT_TYPES.iter().map(|s| s.to_string())).expect("the default types are well formed")
    }
}

impl Catalogue {
    /// Builds a catalogue; every name must look like `family.name` (lowercase letters,
    /// digits and `_`). `webhook.test` is always added.
    pub fn new(types: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let mut set = BTreeSet::new();
        for t in types {
            let t = t.trim().to_string();
            if t.is_empty() {
                continue;
            }
            if !is_well_formed(&t) {
                return Err(format!("event type {t:?} must look like `family.name` (lowercase letters, digits, `_`)"));
            }
            set.insert(t);
        }
        set.insert(TEST_EVENT.to_string());
        Ok(Self { types: set })
    }

    pub fn contains(&self, t: &str) -> bool {
        self.types.contains(t)
    }

    /// May `t` be published through `POST /organizations/{orgId}/events`?
    pub fn check_publishable(&self, t: &str) -> Result<(), String> {
        if t == TEST_EVENT {
            return Err(format!("`{TEST_EVENT}` is sent only by the test endpoint and cannot be published"));
        }
        if !self.contains(t) {
            return Err(format!("unknown event type `{t}`"));
        }
        Ok(())
    }

    /// Is `s` a valid entry of a webhook's `events` list?
    pub fn check_subscription(&self, s: &str) -> Result<(), String> {
        if s == "*" {
            return Ok(());
        }
        if s == TEST_EVENT {
            return Err(format!("`{TEST_EVENT}` cannot be subscribed to"));
        }
        if let Some(family) = s.strip_suffix(".*") {
            let prefix = format!("{family}.");
            let known = !family.is_empty() && self.types.iter().any(|t| t != TEST_EVENT && t.starts_with(&prefix));
            return if known { Ok(()) } else { Err(format!("no known event type in family `{family}`")) };
        }
        if self.contains(s) {
            Ok(())
        } else {
            Err(format!("unknown event type `{s}`"))
        }
    }

    pub fn types(&self) -> impl Iterator<Item = &str> {
        self.types.iter().map(String::as_str)
    }
}

fn is_well_formed(t: &str) -> bool {
    let mut parts = t.split('.');
    let ok = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    matches!((parts.next(), parts.next(), parts.next()), (Some(a), Some(b), None) if ok(a) && ok(b))
}

/// Does a webhook subscribed to `subscriptions` receive an event of type `event_type`?
pub fn matches<S: AsRef<str>>(subscriptions: &[S], event_type: &str) -> bool {
    subscriptions.iter().any(|s| {
        let s = s.as_ref();
        s == "*"
            || s == event_type
            || s.strip_suffix('*').is_some_and(|prefix| prefix.ends_with('.') && event_type.starts_with(prefix))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_family_and_star_subscriptions_match() {
        assert!(matches(&["email.delivered"], "email.delivered"));
        assert!(!matches(&["email.delivered"], "email.bounced"));
        assert!(matches(&["email.*"], "email.bounced"));
        assert!(!matches(&["email.*"], "contact.unsubscribed"));
        assert!(matches(&["*"], "contact.unsubscribed"));
        assert!(!matches::<&str>(&[], "email.sent"));
    }

    #[test]
    fn subscriptions_must_name_known_types_or_families() {
        let c = Catalogue::default();
        assert!(c.check_subscription("email.delivered").is_ok());
        assert!(c.check_subscription("email.*").is_ok());
        assert!(c.check_subscription("*").is_ok());
        assert!(c.check_subscription("sms.*").is_err());
        assert!(c.check_subscription("webhook.*").is_err());
        assert!(c.check_subscription("webhook.test").is_err());
        assert!(c.check_subscription("email.nope").is_err());
        assert!(c.check_subscription(".*").is_err());
    }

    #[test]
    fn the_test_event_is_never_publishable() {
        let c = Catalogue::default();
        assert!(c.check_publishable("webhook.test").is_err());
        assert!(c.check_publishable("email.sent").is_ok());
        assert!(c.check_publishable("email.unknown").is_err());
    }

    #[test]
    fn configured_catalogues_are_checked() {
        assert!(Catalogue::new(vec!["Bad Type".into()]).is_err());
        let c = Catalogue::new(vec!["sms.sent".into()]).unwrap();
        assert!(c.contains("sms.sent") && c.contains("webhook.test") && !c.contains("email.sent"));
    }
}
