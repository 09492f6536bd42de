//! What the service tells its operator: logs and metrics.
//!
//! Logs go to stdout, as text for a terminal (`log.format = "text"`) or as
//! JSON lines in Cloud Logging's shape (`log.format = "json"`, see
//! [`logs`]). [`metrics`] keeps the Prometheus registry served on
//! `/metrics`.

use std::io::IsTerminal;

use thiserror::Error;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::ParseError;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, LogSettings};

pub mod logs;
pub mod metrics;

/// Logs that could not be set up.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum InitError {
    /// `log.level` (or `RUST_LOG`) is not a valid filter.
    #[error("log.level: {0}")]
    Level(#[from] ParseError),
    /// A global subscriber was installed before.
    #[error("logs were already set up: {0}")]
    AlreadySet(String),
}

/// Installs the global tracing subscriber. `RUST_LOG`, when set, overrides
/// the configured level. With the JSON format, the Cloud project that
/// qualifies trace ids is read once, here, from `GOOGLE_CLOUD_PROJECT`.
///
/// # Errors
///
/// When the level is not a valid filter, or a subscriber was already
/// installed.
pub fn init(settings: &LogSettings) -> Result<(), InitError> {
    let filter = match std::env::var(EnvFilter::DEFAULT_ENV) {
        Ok(from_env) => EnvFilter::try_new(from_env),
        Err(_) => EnvFilter::try_new(&settings.level),
    }?;

    let installed = match settings.format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            // Colour codes only for a terminal, not for a file or a pipe.
            .with_ansi(std::io::stdout().is_terminal())
            .try_init()
            .map_err(|e| e.to_string()),
        LogFormat::Json => tracing_subscriber::registry()
            .with(filter)
            .with(logs::CloudLogging::from_env())
            .try_init()
            .map_err(|e| e.to_string()),
    };
    installed.map_err(InitError::AlreadySet)?;

    log_panics();
    Ok(())
}

/// Routes panic messages through the logs. A job that panics is caught and
/// answered 500, but the default hook would print its message as a bare
/// stderr line, which a collector reading JSON cannot place or rank.
fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let location = info.location().map(ToString::to_string);
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let thread = std::thread::current();
        tracing::error!(
            panic = message,
            location,
            thread = thread.name().unwrap_or("unnamed"),
            "a thread panicked"
        );
    }));
}
