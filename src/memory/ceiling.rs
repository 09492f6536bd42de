//! The ceiling: how much memory the service lets its working set reach.
//!
//! This plays the part `GOMEMLIMIT` plays for Go's collector: a soft target
//! below the hard limit, which the controller steers under by admitting
//! fewer jobs (and purging freed pages) as the working set nears it. It is
//! set either as an absolute size or as a share of the container's limit;
//! where no limit can be detected (a developer's machine, Cloud Run gen1) a
//! configured fallback limit stands in.

use std::fmt;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// How the ceiling is chosen: the `[memory]` section of the configuration.
///
/// # Examples
///
/// ```
/// use memgate::memory::{Ceiling, CeilingSettings, CeilingSource};
///
/// // A 2 GiB container with the default ratio of 0.92.
/// let ceiling = Ceiling::resolve(&CeilingSettings::default(), Some(2 << 30))?;
/// assert_eq!(ceiling.source, CeilingSource::RatioOfContainerLimit);
/// assert_eq!(ceiling.bytes, 1_975_684_956);
/// # Ok::<(), memgate::memory::CeilingError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CeilingSettings {
    /// Absolute ceiling, such as `"1800MiB"` or a number of bytes. When set
    /// it wins over `ceiling_ratio`. Must be above zero and at most the
    /// container limit (or `fallback_limit` when none is detected).
    /// Default: unset.
    #[serde(
        serialize_with = "crate::size::serialize_option",
        skip_serializing_if = "Option::is_none"
    )]
    pub ceiling: Option<ByteSize>,

    /// Ceiling as a fraction of the container limit, used when `ceiling` is
    /// unset. Range: above 0, at most 1. Default: 0.92, which leaves room
    /// for the kernel's own charges (page tables, socket buffers) and for
    /// the growth between two samples, 50 ms apart.
    pub ceiling_ratio: f64,

    /// The limit assumed when no container limit is detected, such as
    /// `"2GiB"`; `ceiling_ratio` then applies to it. Set it to the memory
    /// the service may really use. Must be above zero. Default: 2 GiB.
    #[serde(serialize_with = "crate::size::serialize")]
    pub fallback_limit: ByteSize,
}

/// The ceiling the controller steers under, and where it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Ceiling {
    /// The ceiling itself, in bytes.
    pub bytes: u64,
    /// The limit the ceiling was checked against or derived from, in bytes:
    /// the container limit when one was detected, else the fallback limit.
    pub limit: u64,
    /// Which setting produced `bytes`.
    pub source: CeilingSource,
}

/// Which setting produced a [`Ceiling`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CeilingSource {
    /// `memory.ceiling` was set.
    Absolute,
    /// `memory.ceiling_ratio` of the detected container limit.
    RatioOfContainerLimit,
    /// `memory.ceiling_ratio` of `memory.fallback_limit`, since no
    /// container limit was detected.
    RatioOfFallbackLimit,
}

/// A [`CeilingSettings`] that cannot produce a ceiling. Each message names
/// the configuration key at fault and its value.
#[derive(Clone, Debug, Error, PartialEq)]
#[non_exhaustive]
pub enum CeilingError {
    /// `memory.ceiling` is zero.
    #[error("memory.ceiling must be above zero, got {}", ByteSize(0))]
    ZeroCeiling,
    /// `memory.ceiling` exceeds the limit it must fit under.
    #[error(
        "memory.ceiling must not exceed the {limit_kind} of {}, got {}",
        ByteSize(*limit),
        ByteSize(*ceiling)
    )]
    CeilingAboveLimit {
        /// The configured ceiling, in bytes.
        ceiling: u64,
        /// The limit it exceeds, in bytes.
        limit: u64,
        /// Which limit: the container's or the fallback.
        limit_kind: LimitKind,
    },
    /// `memory.ceiling_ratio` is not a number in (0, 1].
    #[error("memory.ceiling_ratio must be above 0 and at most 1, got {0}")]
    RatioOutOfRange(f64),
    /// `memory.fallback_limit` is zero.
    #[error("memory.fallback_limit must be above zero, got {}", ByteSize(0))]
    ZeroFallbackLimit,
    /// `memory.ceiling_ratio` of a tiny limit rounds down to nothing.
    #[error(
        "memory.ceiling_ratio of {ratio} leaves no memory out of the {limit_kind} of {}",
        ByteSize(*limit)
    )]
    EmptyCeiling {
        /// The configured ratio.
        ratio: f64,
        /// The limit it was applied to, in bytes.
        limit: u64,
        /// Which limit: the container's or the fallback.
        limit_kind: LimitKind,
    },
}

/// Which limit a ceiling was held against, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitKind {
    /// The limit detected on the container's memory cgroup.
    ContainerLimit,
    /// `memory.fallback_limit`, used when no container limit was detected.
    FallbackLimit,
}

/// The default `memory.ceiling_ratio`.
const DEFAULT_RATIO: f64 = 0.92;

/// The default `memory.fallback_limit`: the smallest Cloud Run instance that
/// comfortably fits the heavy media jobs this service runs.
const DEFAULT_FALLBACK_LIMIT: ByteSize = ByteSize::gib(2);

impl Default for CeilingSettings {
    fn default() -> Self {
        Self {
            ceiling: None,
            ceiling_ratio: DEFAULT_RATIO,
            fallback_limit: DEFAULT_FALLBACK_LIMIT,
        }
    }
}

impl Ceiling {
    /// Chooses the ceiling from `settings` and the container limit detected
    /// at startup (`None` when there is none).
    ///
    /// An absolute `memory.ceiling` wins; otherwise `memory.ceiling_ratio`
    /// applies to the container limit, or to `memory.fallback_limit` when
    /// no limit was detected. Every setting is checked, including those
    /// that end up unused, so that a typo never waits for another machine
    /// to surface.
    ///
    /// # Errors
    ///
    /// A [`CeilingError`] naming the key at fault: a ratio outside (0, 1]
    /// or not a number, a zero fallback limit, a zero absolute ceiling, an
    /// absolute ceiling above the limit, or a ratio that leaves nothing.
    pub fn resolve(
        settings: &CeilingSettings,
        detected_limit: Option<u64>,
    ) -> Result<Self, CeilingError> {
        settings.validate()?;
        let (limit, limit_kind) = match detected_limit {
            Some(limit) => (limit, LimitKind::ContainerLimit),
            None => (settings.fallback_limit.as_u64(), LimitKind::FallbackLimit),
        };

        match settings.ceiling {
            Some(ceiling) => absolute(ceiling.as_u64(), limit, limit_kind),
            None => ratio_of(settings.ceiling_ratio, limit, limit_kind),
        }
    }
}

impl CeilingSettings {
    /// Checks each setting on its own, before any is used. Whether an
    /// absolute ceiling fits under the limit is known only once the limit
    /// is detected, in [`Ceiling::resolve`].
    ///
    /// # Errors
    ///
    /// A [`CeilingError`] naming the key: a ratio outside (0, 1] or not a
    /// number, a zero fallback limit, a zero absolute ceiling.
    pub fn validate(&self) -> Result<(), CeilingError> {
        // Written so that NaN fails too: every comparison with it is false.
        let ratio = self.ceiling_ratio;
        if !(ratio > 0.0 && ratio <= 1.0) {
            return Err(CeilingError::RatioOutOfRange(ratio));
        }
        if self.fallback_limit.as_u64() == 0 {
            return Err(CeilingError::ZeroFallbackLimit);
        }
        if self.ceiling.is_some_and(|ceiling| ceiling.as_u64() == 0) {
            return Err(CeilingError::ZeroCeiling);
        }
        Ok(())
    }
}

fn absolute(ceiling: u64, limit: u64, limit_kind: LimitKind) -> Result<Ceiling, CeilingError> {
    if ceiling > limit {
        return Err(CeilingError::CeilingAboveLimit {
            ceiling,
            limit,
            limit_kind,
        });
    }
    Ok(Ceiling {
        bytes: ceiling,
        limit,
        source: CeilingSource::Absolute,
    })
}

fn ratio_of(ratio: f64, limit: u64, limit_kind: LimitKind) -> Result<Ceiling, CeilingError> {
    // An f64 holds byte counts exactly up to 8 PiB; the product is rounded
    // down so that the ceiling never exceeds the share asked for. The `as`
    // conversion saturates, and `ratio <= 1` keeps the result within `limit`.
    let bytes = (limit as f64 * ratio).floor() as u64;
    let bytes = bytes.min(limit);
    if bytes == 0 {
        return Err(CeilingError::EmptyCeiling {
            ratio,
            limit,
            limit_kind,
        });
    }

    let source = match limit_kind {
        LimitKind::ContainerLimit => CeilingSource::RatioOfContainerLimit,
        LimitKind::FallbackLimit => CeilingSource::RatioOfFallbackLimit,
    };
    Ok(Ceiling {
        bytes,
        limit,
        source,
    })
}

impl fmt::Display for Ceiling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}, limit {})",
            ByteSize(self.bytes),
            self.source,
            ByteSize(self.limit)
        )
    }
}

impl fmt::Display for CeilingSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Absolute => "memory.ceiling",
            Self::RatioOfContainerLimit => "memory.ceiling_ratio of the container limit",
            Self::RatioOfFallbackLimit => "memory.ceiling_ratio of memory.fallback_limit",
        })
    }
}

impl fmt::Display for LimitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ContainerLimit => "container limit",
            Self::FallbackLimit => "memory.fallback_limit",
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;

    fn absolute_settings(ceiling: ByteSize) -> CeilingSettings {
        CeilingSettings {
            ceiling: Some(ceiling),
            ..CeilingSettings::default()
        }
    }

    fn ratio_settings(ratio: f64) -> CeilingSettings {
        CeilingSettings {
            ceiling_ratio: ratio,
            ..CeilingSettings::default()
        }
    }

    /// The settings as they sit in the configuration file.
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        memory: CeilingSettings,
    }

    #[test]
    fn defaults_are_ninety_percent_of_the_limit_and_a_two_gib_fallback() {
        let settings = CeilingSettings::default();
        assert_eq!(settings.ceiling, None);
        assert_eq!(settings.ceiling_ratio, 0.92);
        assert_eq!(settings.fallback_limit, ByteSize::gib(2));
    }

    #[test]
    fn absolute_ceiling_wins_over_the_ratio() {
        let settings = absolute_settings(ByteSize::mib(1800));
        let ceiling = Ceiling::resolve(&settings, Some(2 * GIB)).expect("valid");
        assert_eq!(
            ceiling,
            Ceiling {
                bytes: 1800 * MIB,
                limit: 2 * GIB,
                source: CeilingSource::Absolute,
            }
        );
    }

    #[test]
    fn absolute_ceiling_equal_to_the_limit_is_allowed() {
        let settings = absolute_settings(ByteSize::gib(2));
        let ceiling = Ceiling::resolve(&settings, Some(2 * GIB)).expect("valid");
        assert_eq!(ceiling.bytes, 2 * GIB);
    }

    #[test]
    fn absolute_ceiling_above_the_container_limit_is_an_error() {
        let settings = absolute_settings(ByteSize::gib(3));
        let error = Ceiling::resolve(&settings, Some(2 * GIB)).expect_err("above");
        assert_eq!(
            error.to_string(),
            "memory.ceiling must not exceed the container limit of 2.0 GiB, got 3.0 GiB"
        );
    }

    #[test]
    fn absolute_ceiling_above_the_fallback_limit_is_an_error_without_a_container_limit() {
        let settings = absolute_settings(ByteSize::gib(3));
        let error = Ceiling::resolve(&settings, None).expect_err("above fallback");
        assert_eq!(
            error.to_string(),
            "memory.ceiling must not exceed the memory.fallback_limit of 2.0 GiB, got 3.0 GiB"
        );
    }

    #[test]
    fn absolute_ceiling_of_zero_is_an_error() {
        let settings = absolute_settings(ByteSize(0));
        let error = Ceiling::resolve(&settings, Some(2 * GIB)).expect_err("zero");
        assert_eq!(error, CeilingError::ZeroCeiling);
        assert_eq!(
            error.to_string(),
            "memory.ceiling must be above zero, got 0 B"
        );
    }

    #[test]
    fn ratio_applies_to_the_container_limit() {
        let ceiling = Ceiling::resolve(&ratio_settings(0.5), Some(2 * GIB)).expect("valid");
        assert_eq!(ceiling.bytes, GIB);
        assert_eq!(ceiling.limit, 2 * GIB);
        assert_eq!(ceiling.source, CeilingSource::RatioOfContainerLimit);
    }

    #[test]
    fn ratio_applies_to_the_fallback_limit_without_a_container_limit() {
        let settings = CeilingSettings {
            ceiling_ratio: 0.5,
            fallback_limit: ByteSize::gib(4),
            ..CeilingSettings::default()
        };
        let ceiling = Ceiling::resolve(&settings, None).expect("valid");
        assert_eq!(ceiling.bytes, 2 * GIB);
        assert_eq!(ceiling.limit, 4 * GIB);
        assert_eq!(ceiling.source, CeilingSource::RatioOfFallbackLimit);
    }

    #[test]
    fn ratio_of_one_is_the_whole_limit() {
        let ceiling = Ceiling::resolve(&ratio_settings(1.0), Some(2 * GIB)).expect("valid");
        assert_eq!(ceiling.bytes, 2 * GIB);
    }

    #[test]
    fn ratio_outside_zero_to_one_is_an_error_naming_the_key() {
        for ratio in [0.0, -0.5, 1.01, f64::INFINITY] {
            let error = Ceiling::resolve(&ratio_settings(ratio), Some(GIB)).expect_err("range");
            assert_eq!(error, CeilingError::RatioOutOfRange(ratio));
            assert!(
                error
                    .to_string()
                    .starts_with("memory.ceiling_ratio must be")
            );
        }
        let error = Ceiling::resolve(&ratio_settings(1.5), Some(GIB)).expect_err("range");
        assert_eq!(
            error.to_string(),
            "memory.ceiling_ratio must be above 0 and at most 1, got 1.5"
        );
    }

    #[test]
    fn nan_ratio_is_an_error() {
        let error = Ceiling::resolve(&ratio_settings(f64::NAN), Some(GIB)).expect_err("nan");
        assert!(matches!(error, CeilingError::RatioOutOfRange(ratio) if ratio.is_nan()));
    }

    #[test]
    fn bad_ratio_is_an_error_even_when_the_absolute_ceiling_is_set() {
        let settings = CeilingSettings {
            ceiling: Some(ByteSize::gib(1)),
            ceiling_ratio: 2.0,
            ..CeilingSettings::default()
        };
        let error = Ceiling::resolve(&settings, Some(2 * GIB)).expect_err("ratio");
        assert_eq!(error, CeilingError::RatioOutOfRange(2.0));
    }

    #[test]
    fn fallback_limit_of_zero_is_an_error_even_with_a_container_limit() {
        let settings = CeilingSettings {
            fallback_limit: ByteSize(0),
            ..CeilingSettings::default()
        };
        let error = Ceiling::resolve(&settings, Some(2 * GIB)).expect_err("zero");
        assert_eq!(
            error.to_string(),
            "memory.fallback_limit must be above zero, got 0 B"
        );
    }

    #[test]
    fn ratio_that_rounds_to_nothing_is_an_error() {
        let error = Ceiling::resolve(&ratio_settings(0.1), Some(5)).expect_err("empty");
        assert_eq!(
            error.to_string(),
            "memory.ceiling_ratio of 0.1 leaves no memory out of the container limit of 5 B"
        );
    }

    #[test]
    fn settings_read_from_the_memory_section() {
        let file: File = toml::from_str(
            "[memory]\nceiling = \"1800MiB\"\nceiling_ratio = 0.8\nfallback_limit = \"4GiB\"\n",
        )
        .expect("valid toml");
        assert_eq!(
            file.memory,
            CeilingSettings {
                ceiling: Some(ByteSize::mib(1800)),
                ceiling_ratio: 0.8,
                fallback_limit: ByteSize::gib(4),
            }
        );
    }

    #[test]
    fn missing_keys_take_their_defaults() {
        let file: File = toml::from_str("[memory]\nceiling_ratio = 0.75\n").expect("valid toml");
        assert_eq!(file.memory.ceiling, None);
        assert_eq!(file.memory.fallback_limit, ByteSize::gib(2));
    }

    #[test]
    fn unknown_key_is_rejected() {
        let error =
            toml::from_str::<File>("[memory]\nceiling_ration = 0.75\n").expect_err("misspelt key");
        assert!(error.to_string().contains("ceiling_ration"), "{error}");
    }

    #[test]
    fn settings_round_trip_through_toml_to_the_byte() {
        let settings = absolute_settings(ByteSize::mib(1800));
        let text = toml::to_string(&settings).expect("serializes");
        assert!(text.contains("ceiling = 1887436800"), "{text}");
        let back: CeilingSettings = toml::from_str(&text).expect("deserializes");
        assert_eq!(back, settings);
    }

    #[test]
    fn display_names_the_source_and_the_limit() {
        let ceiling = Ceiling::resolve(&CeilingSettings::default(), None).expect("valid");
        assert_eq!(
            ceiling.to_string(),
            "1.8 GiB (memory.ceiling_ratio of memory.fallback_limit, limit 2.0 GiB)"
        );
    }

    proptest! {
        #[test]
        fn ratio_ceiling_is_never_above_the_limit_nor_zero(
            limit in 1u64 << 20..1u64 << 50,
            ratio in 0.001f64..=1.0,
        ) {
            let ceiling = Ceiling::resolve(&ratio_settings(ratio), Some(limit)).expect("valid");
            prop_assert!(ceiling.bytes <= limit);
            prop_assert!(ceiling.bytes > 0);
            prop_assert_eq!(ceiling.bytes, (limit as f64 * ratio).floor() as u64);
        }
    }
}
