//! A webhook's fields and their rules (SPEC §2): each validated input is parsed into a
//! type that can only hold a valid value, and each parser returns the message a person
//! reads in the 422 body.

use std::collections::BTreeMap;
use std::fmt;

use base64::{engine::general_purpose::STANDARD, Engine as _};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use url::{Host, Url};

use super::address::AllowList;

pub const NAME_MAX: usize = 100;
pub const DESCRIPTION_MAX: usize = 500;
pub const URL_MAX: usize = 2048;
pub const EVENTS_MAX: usize = 50;
pub const HEADERS_MAX: usize = 20;
pub const HEADER_NAME_MAX: usize = 64;
pub const HEADER_VALUE_MAX: usize = 1024;

/// Header names a webhook may not set, compared case-insensitively; `webhook-*` and
/// `x-mosend-*` are refused by prefix.
const RESERVED_HEADERS: &[&str] =
    &["host", "content-type", "content-length", "transfer-encoding", "connection", "user-agent"];

/// Hop-by-hop and protocol-changing headers (RFC 9110 §7.6.1, §10.1.1): they describe one
/// connection, not the message, so a webhook may not set them either.
const HOP_BY_HOP_HEADERS: &[&str] =
    &["keep-alive", "proxy-connection", "te", "trailer", "upgrade", "expect", "proxy-authorization"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    Json,
    StandardWebhooks,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::StandardWebhooks => "standard-webhooks",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "json" => Ok(Format::Json),
            "standard-webhooks" => Ok(Format::StandardWebhooks),
            _ => Err("must be `json` or `standard-webhooks`".into()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Active,
    Paused,
    Disabled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Paused => "paused",
            Status::Disabled => "disabled",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "active" => Ok(Status::Active),
            "paused" => Ok(Status::Paused),
            "disabled" => Ok(Status::Disabled),
            _ => Err("must be `active`, `paused` or `disabled`".into()),
        }
    }
}

/// `name`: 1–100 characters after trimming.
pub fn parse_name(s: &str) -> Result<String, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("must not be empty".into());
    }
    if t.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    if t.chars().count() > NAME_MAX {
        return Err(format!("must be at most {NAME_MAX} characters"));
    }
    Ok(t.to_string())
}

/// `description`: at most 500 characters.
pub fn parse_description(s: &str) -> Result<String, String> {
    if s.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) {
        return Err("must not contain control characters other than line breaks and tabs".into());
    }
    if s.chars().count() > DESCRIPTION_MAX {
        return Err(format!("must be at most {DESCRIPTION_MAX} characters"));
    }
    Ok(s.to_string())
}

/// An absolute `http(s)://` URL without credentials whose host is not a literal forbidden
/// address (or `localhost`) unless the operator's allow-list admits it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl(Url);

impl WebhookUrl {
    pub fn parse(s: &str, allow: &AllowList) -> Result<Self, String> {
        if s.chars().count() > URL_MAX {
            return Err(format!("must be at most {URL_MAX} characters"));
        }
        let url = Url::parse(s.trim()).map_err(|e| format!("is not an absolute URL ({e})"))?;
        // What is stored and sent is the normalised, percent-encoded form: it obeys the limit too.
        if url.as_str().len() > URL_MAX {
            return Err(format!("must be at most {URL_MAX} characters once percent-encoded"));
        }
        if url.port() == Some(0) {
            return Err("must not use port 0".into());
        }
        if !matches!(url.scheme(), "http" | "https") {
            return Err("must use http:// or https://".into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not contain credentials".into());
        }
        if url.fragment().is_some() {
            return Err("must not contain a fragment".into());
        }
        match url.host() {
            None => return Err("must have a host".into()),
            Some(Host::Ipv4(ip)) => allow.check(ip.into()).map_err(|e| format!("targets a forbidden address: {e}"))?,
            Some(Host::Ipv6(ip)) => allow.check(ip.into()).map_err(|e| format!("targets a forbidden address: {e}"))?,
            Some(Host::Domain(d)) => {
                let d = d.trim_end_matches('.').to_ascii_lowercase();
                if (d == "localhost" || d.ends_with(".localhost")) && allow.is_empty() {
                    return Err("targets localhost, which is forbidden".into());
                }
            }
        }
        Ok(Self(url))
    }

    /// Wraps a URL read back from the store, validated when it was written.
    pub fn from_stored(s: &str) -> Option<Self> {
        Url::parse(s).ok().map(Self)
    }

    pub fn as_url(&self) -> &Url {
        &self.0
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

/// Checks a custom header's name and value (SPEC §2 `headers`).
pub fn check_header(name: &str, value: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > HEADER_NAME_MAX {
        return Err(format!("header names must be 1–{HEADER_NAME_MAX} characters"));
    }
    // RFC 9110 token characters.
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if !name.bytes().all(tchar) {
        return Err(format!("header name `{}` is not an HTTP token", name.escape_debug()));
    }
    let lower = name.to_ascii_lowercase();
    if RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with("webhook-") || lower.starts_with("x-mosend-") {
        return Err(format!("header `{name}` is set by the service and cannot be overridden"));
    }
    if HOP_BY_HOP_HEADERS.contains(&lower.as_str()) {
        return Err(format!("header `{name}` controls the connection and cannot be set"));
    }
    if value.len() > HEADER_VALUE_MAX {
        return Err(format!("header `{name}` value must be at most {HEADER_VALUE_MAX} characters"));
    }
    // Visible ASCII and spaces inside the value; no control characters (CR/LF included).
    if !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Err(format!("header `{name}` value must be visible ASCII characters"));
    }
    if value.starts_with(' ') || value.ends_with(' ') {
        return Err(format!("header `{name}` value must not start or end with a space"));
    }
    Ok(())
}

/// Custom headers, ordered by name for stable output.
pub type Headers = BTreeMap<String, String>;

/// A webhook's signing secret: `whsec_` + standard base64 of 24–64 random bytes. `Debug`
/// redacts it so it can never reach a log line by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(String);

impl WebhookSecret {
    /// A new secret of 32 random bytes from the OS generator.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(format!("whsec_{}", STANDARD.encode(bytes)))
    }

    /// Accepts a stored or configured secret after checking its shape.
    pub fn parse(s: &str) -> Result<Self, String> {
        let key = decode_key(s)?;
        if !(24..=64).contains(&key.len()) {
            return Err("a secret holds 24 to 64 bytes".into());
        }
        Ok(Self(s.to_string()))
    }

    /// The whole secret string, as sent to its owner and used for `X-MoSend-Signature`.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The key bytes of the Standard Webhooks signature (base64-decoded part after `whsec_`).
    pub fn key_bytes(&self) -> Vec<u8> {
        decode_key(&self.0).unwrap_or_default()
    }
}

fn decode_key(s: &str) -> Result<Vec<u8>, String> {
    let b64 = s.strip_prefix("whsec_").ok_or("a secret starts with `whsec_`")?;
    STANDARD.decode(b64).map_err(|_| "a secret is `whsec_` + standard base64".to_string())
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_absolute_http_without_credentials() {
        let none = AllowList::default();
        assert!(WebhookUrl::parse("https://example.com/hook", &none).is_ok());
        assert!(WebhookUrl::parse("http://example.com:8080/h?x=1", &none).is_ok());
        for bad in [
            "ftp://example.com",
            "example.com/hook",
            "https://user:pw@example.com",
            "https://user@example.com",
            "https://127.0.0.1/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://0177.0.0.1/",
            "http://[::1]/",
            "http://[::ffff:7f00:1]/",
            "http://localhost/",
            "http://api.localhost./",
            "http://10.0.0.1/",
            "http://169.254.169.254/latest",
            "javascript:alert(1)",
            "",
        ] {
            assert!(WebhookUrl::parse(bad, &none).is_err(), "{bad} should be refused");
        }
        let long = format!("https://example.com/{}", "a".repeat(URL_MAX));
        assert!(WebhookUrl::parse(&long, &none).is_err());
        // Counted in characters, and again once percent-encoded.
        assert!(WebhookUrl::parse(&format!("https://example.com/{}", "é".repeat(1500)), &none).is_err());
        assert!(WebhookUrl::parse(&format!("https://example.com/{}", "é".repeat(300)), &none).is_ok());
        assert!(WebhookUrl::parse("https://example.com:0/", &none).is_err());
    }

    /// The address rules on URLs as users type them: every spelling of a forbidden address
    /// is refused, public addresses and names are accepted (names are judged again on their
    /// resolved addresses at connect time).
    #[test]
    fn url_host_spellings_table() {
        let none = AllowList::default();
        let refused = [
            "http://127.0.0.1/",
            "http://127.1/",
            "http://127.0.1/",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0x7f.0.0.1/",
            "http://0177.0.0.1/",
            "http://017700000001/",
            "http://0x7f.1/",
            "http://127.000.000.001/",
            "http://0/",
            "http://0.0.0.0/",
            "http://0x0/",
            "http://10.0.0.1/",
            "http://012.0.0.1/",
            "http://167772161/",
            "http://172.16.0.1/",
            "http://172.31.255.254/",
            "http://192.168.0.1/",
            "http://3232235521/",
            "http://0xc0a80001/",
            "http://169.254.169.254/",
            "http://2852039166/",
            "http://0xa9fea9fe/",
            "http://100.64.0.1/",
            "http://100.127.255.254/",
            "http://224.0.0.1/",
            "http://239.255.255.250/",
            "http://255.255.255.255/",
            "http://240.0.0.1/",
            "http://192.0.2.1/",
            "http://198.51.100.1/",
            "http://203.0.113.1/",
            "http://198.18.0.1/",
            "http://[::1]/",
            "http://[::]/",
            "http://[0:0:0:0:0:0:0:1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://[::ffff:10.0.0.1]/",
            "http://[::ffff:169.254.169.254]/",
            "http://[::127.0.0.1]/",
            "http://[::a00:1]/",
            "http://[64:ff9b::7f00:1]/",
            "http://[64:ff9b::10.0.0.1]/",
            "http://[64:ff9b:1::1]/",
            "http://[2002:7f00:1::]/",
            "http://[2002:a00:1::1]/",
            "http://[fe80::1]/",
            "http://[febf::1]/",
            "http://[fc00::1]/",
            "http://[fd00:ec2::254]/",
            "http://[ff02::1]/",
            "http://[2001:db8::1]/",
            "http://[100::1]/",
            "http://[fec0::1]/",
            "http://localhost/",
            "http://LOCALHOST/",
            "http://localhost./",
            "http://api.localhost/",
            "http://a.b.localhost./",
            "http://127.0.0.1.:8080/",
            "http://[fe80::1%25eth0]/",
            "https://user@example.com/",
            "http://:80/",
            "ftp://example.com/",
        ];
        for url in refused {
            assert!(WebhookUrl::parse(url, &none).is_err(), "{url} should be refused");
        }
        let accepted = [
            "https://example.com/hook",
            "https://8.8.8.8/",
            "http://134744072/",
            "http://0x08080808/",
            "https://1.1.1.1:8443/x",
            "http://172.32.0.1/",
            "http://100.128.0.1/",
            "http://192.169.0.1/",
            "http://[2606:4700:4700::1111]/",
            "http://[::ffff:8.8.8.8]/",
            "http://[64:ff9b::808:808]/",
            "https://localhost.example.com/",
            "https://xn--mnchen-3ya.de/",
            "https://EXAMPLE.com./",
            "http://example.com:65535/",
        ];
        for url in accepted {
            assert!(WebhookUrl::parse(url, &none).is_ok(), "{url} should be accepted");
        }
        assert!(refused.len() + accepted.len() >= 60);
    }

    #[test]
    fn the_allow_list_admits_local_targets() {
        let allow = AllowList::parse("127.0.0.0/8").unwrap();
        assert!(WebhookUrl::parse("http://127.0.0.1:9000/", &allow).is_ok());
        assert!(WebhookUrl::parse("http://localhost:9000/", &allow).is_ok());
        assert!(WebhookUrl::parse("http://10.0.0.1/", &allow).is_err());
    }

    #[test]
    fn header_rules() {
        assert!(check_header("X-Team", "mail").is_ok());
        assert!(check_header("Content-Type", "x").is_err());
        assert!(check_header("webhook-id", "x").is_err());
        assert!(check_header("X-MoSend-Foo", "x").is_err());
        assert!(check_header("Bad Name", "x").is_err());
        assert!(check_header("X-A", "line\r\nInjected: 1").is_err());
        assert!(check_header(&"a".repeat(65), "x").is_err());
        assert!(check_header("X-A", &"v".repeat(1025)).is_err());
        for hop in ["Upgrade", "TE", "Keep-Alive", "Proxy-Connection", "Expect", "Trailer"] {
            assert!(check_header(hop, "x").is_err(), "{hop}");
        }
        assert!(check_header("X-A", " padded ").is_err());
    }

    #[test]
    fn secrets_have_the_whsec_shape_and_redact_in_debug() {
        let s = WebhookSecret::generate();
        assert!(s.expose().starts_with("whsec_"));
        assert_eq!(s.key_bytes().len(), 32);
        assert!(WebhookSecret::parse(s.expose()).is_ok());
        assert!(!format!("{s:?}").contains(s.expose()));
        assert!(WebhookSecret::parse("whsec_c2hvcnQ=").is_err());
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(parse_name("  hi ").unwrap(), "hi");
        assert!(parse_name("   ").is_err());
        assert!(parse_name(&"é".repeat(101)).is_err());
        assert!(parse_name(&"é".repeat(100)).is_ok());
        assert!(parse_name("a\u{0}b").is_err());
        assert!(parse_description("line\nbreak\ttab").is_ok());
        assert!(parse_description("bell\u{7}").is_err());
    }
}
