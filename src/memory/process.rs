//! The process's own resident set, from `/proc/self/statm`.
//!
//! Resident set size counts every page of this process that sits in RAM:
//! heap, stacks, code and mapped files, but not page cache it caused, nor
//! other processes in the same container. Where no limited cgroup can be
//! read it is the best view of what this process costs the machine.

use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::file::{KernelFile, ParseError, parse_u64};

/// A reader of `/proc/self/statm`, held open for repeated reads.
#[derive(Debug)]
pub struct Statm {
    file: KernelFile,
    page_size: u64,
    buf: Vec<u8>,
}

/// Why the resident set could not be read.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StatmError {
    /// The file could not be opened or read (no `/proc`, as under some
    /// sandboxes and on non-Linux systems).
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file that failed.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The file's text does not have the expected fields.
    #[error("cannot parse {}: {source}", path.display())]
    Parse {
        /// The file that failed.
        path: PathBuf,
        /// What was wrong with its text.
        #[source]
        source: ParseError,
    },
}

impl Statm {
    /// Opens `/proc/self/statm`.
    ///
    /// # Errors
    ///
    /// [`StatmError::Read`] when the file cannot be opened.
    pub fn open() -> Result<Self, StatmError> {
        Self::open_at(Path::new("/proc/self/statm"))
    }

    /// Opens a `statm`-shaped file at `path`, for tests.
    ///
    /// # Errors
    ///
    /// [`StatmError::Read`] when the file cannot be opened.
    pub fn open_at(path: &Path) -> Result<Self, StatmError> {
        let file = KernelFile::open(path.to_path_buf()).map_err(|source| StatmError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self {
            file,
            page_size: page_size(),
            buf: Vec::new(),
        })
    }

    /// Reads the resident set size, in bytes.
    ///
    /// # Errors
    ///
    /// [`StatmError::Read`] or [`StatmError::Parse`]; never panics.
    pub fn rss(&mut self) -> Result<u64, StatmError> {
        let path = || self.file.path().to_path_buf();
        let text = self
            .file
            .read(&mut self.buf)
            .map_err(|source| StatmError::Read {
                path: path(),
                source,
            })?;
        parse_rss(text, self.page_size).map_err(|source| StatmError::Parse {
            path: path(),
            source,
        })
    }
}

/// The size of a memory page in bytes, which `statm` counts in.
#[cfg(target_os = "linux")]
pub fn page_size() -> u64 {
    // SAFETY: sysconf reads a constant of the running system and has no
    // preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };

    // sysconf reports failure as -1; the page size is always known on
    // Linux, but 4 KiB is what nearly every system uses if it ever is not.
    u64::try_from(size).unwrap_or(4096)
}

/// The size of a memory page in bytes. Only Linux has `statm`; elsewhere
/// [`Statm::open`] fails and this value is never used.
#[cfg(not(target_os = "linux"))]
pub fn page_size() -> u64 {
    4096
}

/// Parses `size resident shared text lib data dirty` (pages) into resident
/// bytes.
fn parse_rss(text: &str, page_size: u64) -> Result<u64, ParseError> {
    let pages = text
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| ParseError::MissingField {
            field: "resident",
            line: text.trim_end().to_owned(),
        })?;
    Ok(parse_u64(pages)?.saturating_mul(page_size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_is_the_second_field_times_the_page_size() {
        assert_eq!(parse_rss("765 410 381 5 0 123 0\n", 4096), Ok(410 * 4096));
        assert_eq!(parse_rss("765 410 381 5 0 123 0\n", 16384), Ok(410 * 16384));
    }

    #[test]
    fn statm_with_one_field_is_a_parse_error() {
        assert!(matches!(
            parse_rss("765\n", 4096),
            Err(ParseError::MissingField {
                field: "resident",
                ..
            })
        ));
        assert!(parse_rss("765 lots\n", 4096).is_err());
    }

    #[test]
    fn page_size_is_a_power_of_two() {
        assert!(page_size().is_power_of_two());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn own_rss_grows_when_memory_is_touched() {
        let mut statm = Statm::open().expect("/proc/self/statm");
        let before = statm.rss().expect("rss");

        // 64 MiB touched a page at a time, so every page is really resident.
        let mut block = vec![0u8; 64 << 20];
        for byte in block.iter_mut().step_by(4096) {
            *byte = 1;
        }
        let after = statm.rss().expect("rss");
        std::hint::black_box(&block);

        assert!(
            after >= before + (48 << 20),
            "rss went from {before} to {after} bytes"
        );
    }
}
