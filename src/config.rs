//! One typed [`Config`], read from command-line flags, then `MOSEND_WEBHOOKS_*`
//! environment variables, then an optional TOML file (`--config` or
//! `MOSEND_WEBHOOKS_CONFIG`), then defaults, and validated once at start.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::domain::{address::AllowList, event_type::Catalogue, retry::RetrySchedule};
use crate::store::{DisablePolicy, EncryptionKey};

/// Every setting, as given by flags and environment (clap) or by the TOML file (serde).
/// Each is optional here; [`Config::resolve`] applies the precedence and the defaults.
#[derive(Debug, Default, Clone, clap::Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// `sqlite://path` (relative or absolute; created if missing) or `postgres://…`.
    #[arg(long, env = "MOSEND_WEBHOOKS_DATABASE_URL", global = true)]
    pub database_url: Option<String>,
    /// Address the API listens on.
    #[arg(long, env = "MOSEND_WEBHOOKS_LISTEN", global = true)]
    pub listen: Option<String>,
    /// Delays between attempts, e.g. `5s,5m,30m,2h,5h,10h,10h`.
    #[arg(long, env = "MOSEND_WEBHOOKS_RETRY_SCHEDULE", global = true)]
    pub retry_schedule: Option<String>,
    /// Whole-attempt timeout, e.g. `10s`.
    #[arg(long, env = "MOSEND_WEBHOOKS_DELIVERY_TIMEOUT", global = true)]
    pub delivery_timeout: Option<String>,
    /// CIDRs webhooks may reach despite the SSRF rules, e.g. `127.0.0.0/8,::1/128`.
    #[arg(long, env = "MOSEND_WEBHOOKS_ALLOWED_PRIVATE_CIDRS", global = true)]
    pub allowed_private_cidrs: Option<String>,
    /// Disable a webhook whose attempts have all failed for this long, e.g. `5d`.
    #[arg(long, env = "MOSEND_WEBHOOKS_DISABLE_AFTER", global = true)]
    pub disable_after: Option<String>,
    /// ... and failed at least this many times.
    #[arg(long, env = "MOSEND_WEBHOOKS_DISABLE_MIN_ATTEMPTS", global = true)]
    pub disable_min_attempts: Option<u32>,
    /// The event-type catalogue, comma-separated (`webhook.test` is always added).
    #[arg(long, env = "MOSEND_WEBHOOKS_EVENT_TYPES", global = true)]
    pub event_types: Option<String>,
    /// Attempts in flight at once, in all.
    #[arg(long, env = "MOSEND_WEBHOOKS_MAX_IN_FLIGHT", global = true)]
    pub max_in_flight: Option<usize>,
    /// Attempts in flight at once for one webhook.
    #[arg(long, env = "MOSEND_WEBHOOKS_PER_WEBHOOK_CONCURRENCY", global = true)]
    pub per_webhook_concurrency: Option<u32>,
    /// Deliveries claimed per batch.
    #[arg(long, env = "MOSEND_WEBHOOKS_CLAIM_BATCH", global = true)]
    pub claim_batch: Option<u32>,
    /// How often the worker looks for due deliveries when not woken, e.g. `500ms`.
    #[arg(long, env = "MOSEND_WEBHOOKS_POLL_INTERVAL", global = true)]
    pub poll_interval: Option<String>,
    /// Lease = delivery timeout + this margin (at most 30s, SPEC §4).
    #[arg(long, env = "MOSEND_WEBHOOKS_LEASE_MARGIN", global = true)]
    pub lease_margin: Option<String>,
    /// `pretty` or `json`.
    #[arg(long, env = "MOSEND_WEBHOOKS_LOG_FORMAT", global = true)]
    pub log_format: Option<String>,
    /// Requests per second each API key may make (0: no limit).
    #[arg(long, env = "MOSEND_WEBHOOKS_RATE_LIMIT", global = true)]
    pub rate_limit: Option<u32>,
    /// Requests a key may make at once above its rate.
    #[arg(long, env = "MOSEND_WEBHOOKS_RATE_LIMIT_BURST", global = true)]
    pub rate_limit_burst: Option<u32>,
    /// How long an API key read from the database is trusted before it is read again, e.g.
    /// `1s` (`0s`: read it on every request). A revoked key stops working within this time.
    #[arg(long, env = "MOSEND_WEBHOOKS_API_KEY_CACHE_TTL", global = true)]
    pub api_key_cache_ttl: Option<String>,
    /// How long a rotated-out secret keeps signing beside the new one, e.g. `24h`.
    #[arg(long, env = "MOSEND_WEBHOOKS_SECRET_ROTATION_GRACE", global = true)]
    pub secret_rotation_grace: Option<String>,
    /// Events, deliveries and attempts older than this are purged, e.g. `30d`.
    #[arg(long, env = "MOSEND_WEBHOOKS_RETENTION", global = true)]
    pub retention: Option<String>,
    /// How often the worker purges expired history, e.g. `10m`.
    #[arg(long, env = "MOSEND_WEBHOOKS_RETENTION_INTERVAL", global = true)]
    pub retention_interval: Option<String>,
    /// Standard base64 of 32 bytes sealing webhook secrets at rest. Without it, SQLite
    /// uses (and first creates) the key file `<database>.key`.
    #[arg(long, env = "MOSEND_WEBHOOKS_ENCRYPTION_KEY", global = true, hide_env_values = true)]
    pub encryption_key: Option<Redacted>,
}

/// A secret setting as given (flag, environment or file): `Debug` never shows it.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Redacted(pub String);

impl std::fmt::Debug for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl std::str::FromStr for Redacted {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Redacted(s.to_string()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Only the HTTP API.
    Api,
    /// Only the delivery worker.
    Worker,
    /// Both (the default).
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: String,
    pub listen: SocketAddr,
    pub retry_schedule: RetrySchedule,
    pub delivery_timeout: Duration,
    pub allowed_private_cidrs: AllowList,
    pub disable: DisablePolicy,
    pub catalogue: Catalogue,
    pub max_in_flight: usize,
    pub per_webhook_concurrency: u32,
    pub claim_batch: u32,
    pub poll_interval: Duration,
    pub lease_margin: Duration,
    pub log_format: LogFormat,
    pub idempotency_window: Duration,
    pub encryption_key: Option<EncryptionKey>,
    pub retention: Duration,
    pub retention_interval: Duration,
    pub secret_rotation_grace: Duration,
    pub api_key_cache_ttl: Duration,
    /// Requests per second per API key, and the burst above it; `None`: no limit.
    pub rate_limit: Option<(NonZeroU32, NonZeroU32)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the configuration file {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("the configuration file {0} is not valid: {1}")]
    Parse(PathBuf, toml::de::Error),
    #[error("invalid {0}: {1}")]
    Invalid(&'static str, String),
}

pub const DEFAULT_DATABASE_URL: &str = "sqlite://mosend-webhooks.db";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

fn duration(name: &'static str, value: Option<String>, default: &str) -> Result<Duration, ConfigError> {
    let text = value.unwrap_or_else(|| default.to_string());
    humantime::parse_duration(text.trim()).map_err(|e| ConfigError::Invalid(name, format!("`{text}`: {e}")))
}

impl Config {
    /// Applies flags/env > file > defaults. `file` is the TOML file, if one was named.
    pub fn resolve(given: Settings, file: Option<PathBuf>) -> Result<Self, ConfigError> {
        let from_file = match &file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.clone(), e))?;
                toml::from_str::<Settings>(&text).map_err(|e| ConfigError::Parse(path.clone(), e))?
            }
            None => Settings::default(),
        };
        let s = merge(given, from_file);
        let listen_text = s.listen.unwrap_or_else(|| DEFAULT_LISTEN.into());
        let listen = listen_text
            .parse()
            .map_err(|_| ConfigError::Invalid("listen", format!("`{listen_text}` is not an address:port")))?;
        let retry_schedule =
            RetrySchedule::parse(s.retry_schedule.as_deref().unwrap_or(crate::domain::retry::DEFAULT_SCHEDULE))
                .map_err(|e| ConfigError::Invalid("retry schedule", e))?;
        let delivery_timeout = duration("delivery timeout", s.delivery_timeout, "10s")?;
        if delivery_timeout.is_zero() {
            return Err(ConfigError::Invalid("delivery timeout", "must be more than zero".into()));
        }
        let allowed_private_cidrs = AllowList::parse(s.allowed_private_cidrs.as_deref().unwrap_or(""))
            .map_err(|e| ConfigError::Invalid("allowed private CIDRs", e))?;
        let catalogue = match s.event_types {
            Some(list) => Catalogue::new(list.split(',').map(str::to_string))
                .map_err(|e| ConfigError::Invalid("event types", e))?,
            None => Catalogue::default(),
        };
        let lease_margin = duration("lease margin", s.lease_margin, "10s")?;
        if lease_margin > Duration::from_secs(30) {
            return Err(ConfigError::Invalid("lease margin", "must be at most 30s".into()));
        }
        let log_format = match s.log_format.as_deref().unwrap_or("pretty") {
            "pretty" => LogFormat::Pretty,
            "json" => LogFormat::Json,
            other => return Err(ConfigError::Invalid("log format", format!("`{other}`: use pretty or json"))),
        };
        let positive = |name: &'static str, v: u64| {
            if v == 0 {
                Err(ConfigError::Invalid(name, "must be at least 1".into()))
            } else {
                Ok(())
            }
        };
        let max_in_flight = s.max_in_flight.unwrap_or(256);
        let per_webhook_concurrency = s.per_webhook_concurrency.unwrap_or(32);
        let claim_batch = s.claim_batch.unwrap_or(64);
        positive("max in flight", max_in_flight as u64)?;
        positive("per-webhook concurrency", u64::from(per_webhook_concurrency))?;
        positive("claim batch", u64::from(claim_batch))?;
        Ok(Config {
            database_url: s.database_url.unwrap_or_else(|| DEFAULT_DATABASE_URL.into()),
            listen,
            retry_schedule,
            delivery_timeout,
            allowed_private_cidrs,
            disable: DisablePolicy {
                after: duration("disable after", s.disable_after, "5d")?,
                min_attempts: s.disable_min_attempts.unwrap_or(10),
            },
            catalogue,
            max_in_flight,
            per_webhook_concurrency,
            claim_batch,
            poll_interval: duration("poll interval", s.poll_interval, "500ms")?,
            lease_margin,
            log_format,
            idempotency_window: Duration::from_secs(24 * 3600),
            retention: duration("retention", s.retention, "30d")?,
            secret_rotation_grace: duration("secret rotation grace", s.secret_rotation_grace, "24h")?,
            api_key_cache_ttl: duration("API key cache TTL", s.api_key_cache_ttl, "1s")?,
            rate_limit: NonZeroU32::new(s.rate_limit.unwrap_or(10_000)).map(|rate| {
                let twice = NonZeroU32::new(rate.get().saturating_mul(2)).unwrap_or(rate);
                let burst = s.rate_limit_burst.and_then(NonZeroU32::new).unwrap_or(twice);
                (rate, burst)
            }),
            retention_interval: duration("retention interval", s.retention_interval, "10m")?,
            encryption_key: s
                .encryption_key
                .map(|k| EncryptionKey::parse(&k.0))
                .transpose()
                .map_err(|e| ConfigError::Invalid("encryption key", e))?,
        })
    }

    /// The defaults, as `serve` with no configuration uses them.
    pub fn defaults() -> Self {
        Self::resolve(Settings::default(), None).expect("the defaults are valid")
    }
}

fn merge(first: Settings, second: Settings) -> Settings {
    Settings {
        database_url: first.database_url.or(second.database_url),
        listen: first.listen.or(second.listen),
        retry_schedule: first.retry_schedule.or(second.retry_schedule),
        delivery_timeout: first.delivery_timeout.or(second.delivery_timeout),
        allowed_private_cidrs: first.allowed_private_cidrs.or(second.allowed_private_cidrs),
        disable_after: first.disable_after.or(second.disable_after),
        disable_min_attempts: first.disable_min_attempts.or(second.disable_min_attempts),
        event_types: first.event_types.or(second.event_types),
        max_in_flight: first.max_in_flight.or(second.max_in_flight),
        per_webhook_concurrency: first.per_webhook_concurrency.or(second.per_webhook_concurrency),
        claim_batch: first.claim_batch.or(second.claim_batch),
        poll_interval: first.poll_interval.or(second.poll_interval),
        lease_margin: first.lease_margin.or(second.lease_margin),
        log_format: first.log_format.or(second.log_format),
        encryption_key: first.encryption_key.or(second.encryption_key),
        retention: first.retention.or(second.retention),
        secret_rotation_grace: first.secret_rotation_grace.or(second.secret_rotation_grace),
        api_key_cache_ttl: first.api_key_cache_ttl.or(second.api_key_cache_ttl),
        rate_limit: first.rate_limit.or(second.rate_limit),
        rate_limit_burst: first.rate_limit_burst.or(second.rate_limit_burst),
        retention_interval: first.retention_interval.or(second.retention_interval),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_spec() {
        let c = Config::defaults();
        assert_eq!(c.database_url, "sqlite://mosend-webhooks.db");
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.delivery_timeout, Duration::from_secs(10));
        assert_eq!(c.retry_schedule.max_attempts(), 8);
        assert!(c.allowed_private_cidrs.is_empty());
        assert_eq!(c.disable.after, Duration::from_secs(5 * 86_400));
        assert_eq!(c.disable.min_attempts, 10);
    }

    #[test]
    fn flags_and_env_win_over_the_file_which_wins_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9999\"\ndelivery_timeout = \"3s\"\n").unwrap();
        let given = Settings { delivery_timeout: Some("7s".into()), ..Default::default() };
        let c = Config::resolve(given, Some(path)).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9999");
        assert_eq!(c.delivery_timeout, Duration::from_secs(7));
    }

    #[test]
    fn debug_of_the_settings_never_shows_the_encryption_key() {
        let key = EncryptionKey::generate().to_base64();
        let s = Settings { encryption_key: Some(Redacted(key.clone())), ..Default::default() };
        assert!(!format!("{s:?}").contains(&key));
        let c = Config::resolve(s, None).unwrap();
        assert!(!format!("{c:?}").contains(&key));
    }

    #[test]
    fn bad_values_are_named() {
        let bad = Settings { retry_schedule: Some("1s,soon".into()), ..Default::default() };
        assert!(Config::resolve(bad, None).unwrap_err().to_string().contains("retry schedule"));
        let bad = Settings { allowed_private_cidrs: Some("nope".into()), ..Default::default() };
        assert!(Config::resolve(bad, None).is_err());
    }
}
