//! Logging: `RUST_LOG` picks the level (default `info`), the configuration the format.
//! Metrics: one Prometheus recorder per process, rendered by `GET /metrics`.

use std::io::IsTerminal;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::{fmt, EnvFilter};

use crate::config::LogFormat;

/// Installs the global tracing subscriber; later calls do nothing.
pub fn init_logging(format: LogFormat) {
    // sqlx reports PostgreSQL's harmless NOTICEs ("relation … already exists, skipping") at
    // info; keep them out of the default log.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx::postgres::notice=warn"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// The process's Prometheus recorder, installed on first use. `None` when another recorder
/// was installed first (metrics then go there).
pub fn metrics_handle() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE.get_or_init(|| PrometheusBuilder::new().install_recorder().ok()).clone()
}
