//! The configuration: an embedded default, a file, and the environment.
//!
//! Sources, each overriding the one before:
//!
//! 1. `config/default.toml`, embedded in the binary;
//! 2. a TOML file named by `--config` or `MEMGATE_CONFIG`;
//! 3. environment variables `MEMGATE__SECTION__KEY`, for example
//!    `MEMGATE__MEMORY__CEILING=1800MiB`;
//! 4. `PORT`, as Cloud Run sets it, for `server.port`.
//!
//! Unknown keys and values out of range are errors that name the key.

use std::path::Path;

use config::{Environment, File, FileFormat};
use serde::{Deserialize, Serialize};

use crate::controller::ControllerSettings;
use crate::gate::GateSettings;
use crate::memory::CeilingSettings;
use crate::server::ServerSettings;

/// The embedded default configuration.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// The environment variable that names a configuration file.
pub const CONFIG_ENV: &str = "MEMGATE_CONFIG";

/// memgate's whole configuration.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The ceiling, `[memory]`.
    pub memory: CeilingSettings,
    /// The admission gate, `[gate]`.
    pub gate: GateSettings,
    /// The controller, `[controller]`.
    pub controller: ControllerSettings,
    /// The HTTP server, `[server]`.
    pub server: ServerSettings,
    /// Logging, `[log]`.
    pub log: LogSettings,
}

/// Settings of the logs, the `[log]` section.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `text` for a terminal, `json` for log collectors.
    pub format: LogFormat,
    /// The default level or a tracing filter; `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".to_owned(),
        }
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A source could not be read or parsed, or a key is unknown or has
    /// the wrong type.
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// A value is out of its range.
    #[error("configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Loads the configuration from the embedded default, `file` when
    /// given, and the process's environment.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the key at fault.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let port = std::env::var("PORT").ok();
        Self::load_from(file, Environment::with_prefix("MEMGATE"), port.as_deref())
    }

    /// As [`Config::load`], with the environment and `PORT` given, for
    /// tests.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the key at fault.
    pub fn load_from(
        file: Option<&Path>,
        env: Environment,
        port: Option<&str>,
    ) -> Result<Self, ConfigError> {
        let mut builder =
            config::Config::builder().add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml));
        if let Some(file) = file {
            builder = builder.add_source(File::from(file).format(FileFormat::Toml));
        }

        // "__" separates the prefix and the sections: keys themselves
        // contain single underscores.
        let env = env.prefix_separator("__").separator("__").try_parsing(true);
        builder = builder.add_source(env);

        // `PORT` has no prefix: it is the platform's, not memgate's.
        if let Some(port) = port {
            let port: u16 = port
                .trim()
                .parse()
                .map_err(|_| ConfigError::Invalid(format!("PORT: {port:?} is not a port")))?;
            builder = builder.set_override("server.port", port)?;
        }
        let config: Self = builder.build()?.try_deserialize()?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every range that the types do not.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming the key. Whether the ceiling fits
    /// under the limit is checked when it is resolved against the
    /// detected limit.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.memory
            .validate()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        self.gate.validate().map_err(ConfigError::Invalid)?;
        self.controller.validate().map_err(ConfigError::Invalid)?;
        self.server.validate().map_err(ConfigError::Invalid)?;
        Ok(())
    }

    /// The configuration as TOML, as `memgate config` prints it.
    ///
    /// # Errors
    ///
    /// Only if a value cannot be written as TOML, which would be a bug.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string_pretty(self)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> Environment {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Environment::with_prefix("MEMGATE").source(Some(map))
    }

    #[test]
    fn embedded_default_equals_the_built_in_defaults() {
        let loaded = Config::load_from(None, env(&[]), None).unwrap();
        assert_eq!(loaded, Config::default());
    }

    #[test]
    fn environment_overrides_keys_with_underscores() {
        let loaded = Config::load_from(
            None,
            env(&[
                ("MEMGATE__MEMORY__CEILING", "1800MiB"),
                ("MEMGATE__GATE__MAX_QUEUE", "7"),
                ("MEMGATE__CONTROLLER__HIGH_WATERMARK", "0.9"),
                ("MEMGATE__SERVER__MAX_BODY", "32MiB"),
            ]),
            None,
        )
        .unwrap();
        assert_eq!(loaded.server.max_body.as_u64(), 32 << 20);
        assert_eq!(
            loaded.memory.ceiling.map(|c| c.as_u64()),
            Some(1800 * 1024 * 1024)
        );
        assert_eq!(loaded.gate.max_queue, 7);
        assert_eq!(loaded.controller.high_watermark, 0.9);
    }

    #[test]
    fn a_file_overrides_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memgate.toml");
        std::fs::write(&path, "[gate]\nmax_running = 3\n").unwrap();

        let loaded = Config::load_from(Some(&path), env(&[]), None).unwrap();
        assert_eq!(loaded.gate.max_running, 3);
        assert_eq!(loaded.gate.max_queue, 64, "other keys keep the default");
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err =
            Config::load_from(None, env(&[("MEMGATE__GATE__MAX_QEUE", "7")]), None).unwrap_err();
        assert!(err.to_string().contains("max_qeue"), "{err}");
    }

    #[test]
    fn out_of_range_values_are_refused_by_key() {
        let err = Config::load_from(
            None,
            env(&[("MEMGATE__CONTROLLER__LOW_WATERMARK", "0.99")]),
            None,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("controller.low_watermark"),
            "{err}"
        );

        let err =
            Config::load_from(None, env(&[("MEMGATE__GATE__MIN_RUNNING", "0")]), None).unwrap_err();
        assert!(err.to_string().contains("gate.min_running"), "{err}");
    }

    #[test]
    fn port_overrides_the_configured_port() {
        let loaded = Config::load_from(None, env(&[]), Some("9123")).unwrap();
        assert_eq!(loaded.server.port, 9123);

        let err = Config::load_from(None, env(&[]), Some("http")).unwrap_err();
        assert!(err.to_string().contains("PORT"), "{err}");
    }

    #[test]
    fn refusal_status_is_503_or_429() {
        let err = Config::load_from(
            None,
            env(&[("MEMGATE__SERVER__REFUSAL_STATUS", "500")]),
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("server.refusal_status"), "{err}");
    }

    #[test]
    fn printed_configuration_loads_back_to_itself() {
        let config =
            Config::load_from(None, env(&[("MEMGATE__MEMORY__CEILING", "1800MiB")]), None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("printed.toml");
        std::fs::write(&path, config.to_toml().unwrap()).unwrap();

        assert_eq!(
            Config::load_from(Some(&path), env(&[]), None).unwrap(),
            config
        );
    }
}
