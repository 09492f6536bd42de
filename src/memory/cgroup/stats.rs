//! What a memory cgroup holds: its files parsed as text, per version.

use super::{CgroupError, CgroupStats, Pressure, parse_error};
use crate::memory::file::{KernelFile, ParseError, keyed_value, parse_u64};

/// v1 limit values at or above this mean "no limit". The kernel writes
/// unlimited as the largest page-aligned value below 2^63
/// (9223372036854771712 with 4 KiB pages); 2^62 leaves room for any page
/// size and is far above any memory a machine has.
const V1_UNLIMITED: u64 = 1 << 62;

/// Reads a v1 cgroup: usage, limit, `memory.stat` and `memory.oom_control`.
pub(super) fn read_v1(
    usage: &KernelFile,
    limit: &KernelFile,
    stat: &KernelFile,
    oom_control: &KernelFile,
    buf: &mut Vec<u8>,
) -> Result<CgroupStats, CgroupError> {
    let usage = read_parsed(usage, buf, parse_u64)?;
    let own_limit = read_parsed(limit, buf, parse_u64)?;
    let stat = read_parsed(stat, buf, parse_v1_stat)?;
    let oom_kills = read_parsed(oom_control, buf, |text| {
        Ok(keyed_value(text, "oom_kill")?.unwrap_or(0))
    })?;

    // The hierarchical limit includes the ancestors' limits.
    let limit = own_limit.min(stat.hierarchical_limit.unwrap_or(u64::MAX));
    Ok(CgroupStats {
        usage,
        limit: (limit < V1_UNLIMITED).then_some(limit),
        inactive_file: stat.inactive_file,
        working_set: usage.saturating_sub(stat.inactive_file),
        oom_kills,
        pressure: None,
    })
}

/// Reads a v2 cgroup: `memory.current`, each `memory.max` up the tree,
/// `memory.stat` and `memory.events`.
pub(super) fn read_v2(
    current: &KernelFile,
    limits: &[KernelFile],
    stat: &KernelFile,
    events: &KernelFile,
    buf: &mut Vec<u8>,
) -> Result<CgroupStats, CgroupError> {
    let usage = read_parsed(current, buf, parse_u64)?;
    let mut limit = None;
    for file in limits {
        if let Some(max) = read_parsed(file, buf, parse_v2_max)? {
            limit = Some(limit.map_or(max, |tightest: u64| tightest.min(max)));
        }
    }
    let inactive_file = read_parsed(stat, buf, |text| {
        keyed_value(text, "inactive_file")?.ok_or(ParseError::MissingKey("inactive_file"))
    })?;
    let oom_kills = read_parsed(events, buf, |text| {
        Ok(keyed_value(text, "oom_kill")?.unwrap_or(0))
    })?;

    Ok(CgroupStats {
        usage,
        limit,
        inactive_file,
        working_set: usage.saturating_sub(inactive_file),
        oom_kills,
        pressure: None,
    })
}

/// What v1's `memory.stat` contributes to a reading.
#[derive(Debug, PartialEq, Eq)]
struct V1Stat {
    inactive_file: u64,
    hierarchical_limit: Option<u64>,
}

/// Reads `total_inactive_file`, which includes descendants (what the
/// kubelet uses), falling back to the cgroup's own `inactive_file`.
fn parse_v1_stat(text: &str) -> Result<V1Stat, ParseError> {
    let inactive_file = match keyed_value(text, "total_inactive_file")? {
        Some(bytes) => bytes,
        None => keyed_value(text, "inactive_file")?
            .ok_or(ParseError::MissingKey("total_inactive_file"))?,
    };
    Ok(V1Stat {
        inactive_file,
        hierarchical_limit: keyed_value(text, "hierarchical_memory_limit")?,
    })
}

/// Parses v2's `memory.max`: bytes, or `max` for no limit.
fn parse_v2_max(text: &str) -> Result<Option<u64>, ParseError> {
    match text.trim() {
        "max" => Ok(None),
        bytes => parse_u64(bytes).map(Some),
    }
}

/// Parses `memory.pressure`, both its `some` and its `full` line.
pub(super) fn parse_pressure(text: &str) -> Result<Pressure, ParseError> {
    let some = parse_pressure_line(text, "some")?;
    let full = parse_pressure_line(text, "full")?;
    Ok(Pressure {
        some_avg10: some.avg10,
        some_avg60: some.avg60,
        some_avg300: some.avg300,
        some_total_us: some.total,
        full_avg10: full.avg10,
        full_avg60: full.avg60,
        full_avg300: full.avg300,
        full_total_us: full.total,
    })
}

/// One line of a PSI file: `some avg10=0.00 avg60=0.00 avg300=0.00 total=0`.
struct PressureLine {
    avg10: f64,
    avg60: f64,
    avg300: f64,
    total: u64,
}

fn parse_pressure_line(text: &str, kind: &'static str) -> Result<PressureLine, ParseError> {
    let line = text
        .lines()
        .find(|line| line.split_whitespace().next() == Some(kind))
        .ok_or(ParseError::MissingKey(kind))?;
    let field = |name: &'static str| {
        line.split_whitespace()
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
            .ok_or_else(|| ParseError::MissingField {
                field: name,
                line: line.to_owned(),
            })
    };
    let percent = |name| {
        let value = field(name)?;
        value
            .parse::<f64>()
            .map_err(|_| ParseError::NotANumber(value.to_owned()))
    };
    Ok(PressureLine {
        avg10: percent("avg10")?,
        avg60: percent("avg60")?,
        avg300: percent("avg300")?,
        total: parse_u64(field("total")?)?,
    })
}

/// Reads `file` and parses its text, naming the file in either error.
pub(super) fn read_parsed<T>(
    file: &KernelFile,
    buf: &mut Vec<u8>,
    parse: impl FnOnce(&str) -> Result<T, ParseError>,
) -> Result<T, CgroupError> {
    let text = file.read(buf).map_err(|source| CgroupError::Read {
        path: file.path().to_path_buf(),
        source,
    })?;
    parse(text).map_err(parse_error(file.path().to_path_buf()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_stat_prefers_the_hierarchical_total() {
        let stat = "inactive_file 10\nhierarchical_memory_limit 512\ntotal_inactive_file 30\n";
        assert_eq!(
            parse_v1_stat(stat),
            Ok(V1Stat {
                inactive_file: 30,
                hierarchical_limit: Some(512)
            })
        );
    }

    #[test]
    fn v1_stat_falls_back_to_the_cgroups_own_inactive_file() {
        assert_eq!(
            parse_v1_stat("inactive_file 10\n"),
            Ok(V1Stat {
                inactive_file: 10,
                hierarchical_limit: None
            })
        );
        assert_eq!(
            parse_v1_stat("cache 1\n"),
            Err(ParseError::MissingKey("total_inactive_file"))
        );
    }

    #[test]
    fn v2_max_word_means_unlimited() {
        assert_eq!(parse_v2_max("max\n"), Ok(None));
        assert_eq!(parse_v2_max("2147483648\n"), Ok(Some(2 << 30)));
        assert!(parse_v2_max("lots\n").is_err());
    }

    #[test]
    fn pressure_reads_both_lines() {
        let text = "some avg10=1.50 avg60=0.25 avg300=0.05 total=123456\n\
                    full avg10=0.75 avg60=0.10 avg300=0.00 total=6543\n";
        assert_eq!(
            parse_pressure(text),
            Ok(Pressure {
                some_avg10: 1.5,
                some_avg60: 0.25,
                some_avg300: 0.05,
                some_total_us: 123_456,
                full_avg10: 0.75,
                full_avg60: 0.1,
                full_avg300: 0.0,
                full_total_us: 6543,
            })
        );
    }

    #[test]
    fn pressure_without_full_line_or_field_is_a_parse_error() {
        let some_only = "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(
            parse_pressure(some_only),
            Err(ParseError::MissingKey("full"))
        );
        let no_total = "some avg10=0.00 avg60=0.00 avg300=0.00\n";
        assert!(matches!(
            parse_pressure(no_total),
            Err(ParseError::MissingField { field: "total", .. })
        ));
    }
}
