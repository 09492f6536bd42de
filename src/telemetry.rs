//! Logs: tracing to stdout, as text for a terminal or JSON for collectors.

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// Installs the global tracing subscriber. `RUST_LOG`, when set, overrides
/// the configured level.
///
/// # Errors
///
/// When the level is not a valid filter, or a subscriber was already
/// installed.
pub fn init(settings: &LogSettings) -> Result<(), String> {
    let filter = match std::env::var(EnvFilter::DEFAULT_ENV) {
        Ok(from_env) => EnvFilter::try_new(from_env),
        Err(_) => EnvFilter::try_new(&settings.level),
    }
    .map_err(|e| format!("log.level: {e}"))?;

    // TODO: the JSON lines use tracing's field names (`level`, `fields`),
    // which Cloud Logging does not lift into `severity` and `message`. A
    // formatter writing Cloud Logging's shape would fix it.
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let installed = match settings.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    installed.map_err(|e| e.to_string())
}
