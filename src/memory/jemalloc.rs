//! jemalloc's own counters: what the program holds, and what the allocator
//! keeps resident on its behalf.
//!
//! The figures mean something only when jemalloc is the global allocator.
//! This library does not install it; the binary does, and so must every
//! test or benchmark that reads these counters. Without it the readings
//! succeed but count only jemalloc's own few allocations.
//!
//! ```
//! #[global_allocator]
//! static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
//!
//! fn main() -> Result<(), memgate::memory::jemalloc::JemallocError> {
//!     let jemalloc = memgate::memory::Jemalloc::new()?;
//!     let stats = jemalloc.read()?;
//!     assert!(stats.allocated > 0);
//!     println!("{} bytes kept for reuse", stats.dirty());
//!     Ok(())
//! }
//! ```
//!
//! jemalloc caches its statistics: [`Jemalloc::read`] advances the epoch
//! first, then reads each counter through a management information base
//! (MIB) resolved once. On this machine the whole reading costs about 7 us,
//! nearly all of it the epoch (`benches/signals.rs`).

use serde::Serialize;
use thiserror::Error;

/// One reading of jemalloc's global counters. All sizes are in bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct JemallocStats {
    /// Bytes the program has allocated and not freed.
    pub allocated: u64,
    /// Bytes in pages that hold at least one allocation: `allocated` plus
    /// the unused space inside those pages.
    pub active: u64,
    /// Bytes in physically resident pages that jemalloc maps, including
    /// freed pages not yet returned to the OS. An upper bound that can
    /// overstate a little: a page counts as soon as jemalloc has touched it.
    pub resident: u64,
    /// Bytes of virtual memory jemalloc keeps mapped for reuse but has
    /// returned to the OS. Not resident; reported for completeness.
    pub retained: u64,
    /// Bytes jemalloc uses for its own bookkeeping.
    pub metadata: u64,
}

/// A failed jemalloc control (`mallctl`) call.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum JemallocError {
    /// A control resolved or read through tikv-jemalloc-ctl failed.
    #[cfg(target_os = "linux")]
    #[error("jemalloc control `{name}` failed: {cause}")]
    Ctl {
        /// The control's name, as in jemalloc's manual.
        name: &'static str,
        /// jemalloc's answer. Not a `source`: without its `use_std`
        /// feature, tikv-jemalloc-ctl's error does not implement
        /// `std::error::Error`, so it is shown in the message instead.
        cause: tikv_jemalloc_ctl::Error,
    },
    /// A control called through the raw `mallctl` function failed.
    #[error("jemalloc control `{name}` failed with error code {code}")]
    Mallctl {
        /// The control's name, as in jemalloc's manual.
        name: &'static str,
        /// The errno-style code `mallctl` returned.
        code: i32,
    },
    /// jemalloc is linked only on Linux targets.
    #[error("jemalloc is not available on this target")]
    Unsupported,
}

impl JemallocStats {
    /// Bytes held resident in freed pages that jemalloc keeps for reuse
    /// ("dirty" pages): `resident` minus `active` minus `metadata`, or 0 if
    /// the counters, read one after another, do not add up.
    ///
    /// A new allocation can reuse these pages without raising the resident
    /// set, and [`Jemalloc::purge`] returns them to the OS.
    pub fn dirty(&self) -> u64 {
        self.resident
            .saturating_sub(self.active)
            .saturating_sub(self.metadata)
    }
}

/// jemalloc's settings that decide how soon freed pages go back to the OS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Tuning {
    /// Whether jemalloc's background thread runs decay while the process
    /// is idle.
    pub background_thread: bool,
    /// Time for freed ("dirty") pages to be returned, in milliseconds;
    /// -1 means never.
    pub dirty_decay_ms: i64,
    /// Time for pages returned lazily ("muzzy") to be returned for good,
    /// in milliseconds.
    pub muzzy_decay_ms: i64,
}

impl std::fmt::Display for Tuning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "background_thread:{}, dirty_decay_ms:{}, muzzy_decay_ms:{}",
            self.background_thread, self.dirty_decay_ms, self.muzzy_decay_ms
        )
    }
}

#[cfg(target_os = "linux")]
pub use linux::{Jemalloc, enable_background_thread, reset_thread_peak, thread_peak};

#[cfg(not(target_os = "linux"))]
pub use unsupported::{Jemalloc, enable_background_thread, reset_thread_peak, thread_peak};

#[cfg(target_os = "linux")]
mod linux {
    use std::ffi::{CStr, c_int};
    use std::ptr;

    use tikv_jemalloc_ctl::{epoch, epoch_mib, raw, stats};

    use super::{JemallocError, JemallocStats};

    /// A reader of jemalloc's global counters, with each counter's MIB
    /// resolved once.
    #[derive(Clone, Copy)]
    pub struct Jemalloc {
        epoch: epoch_mib,
        allocated: stats::allocated_mib,
        active: stats::active_mib,
        resident: stats::resident_mib,
        retained: stats::retained_mib,
        metadata: stats::metadata_mib,
    }

    /// `arena.<i>.purge` with `i` = `MALLCTL_ARENAS_ALL` (4096), which
    /// purges every arena. A void control: jemalloc refuses it with EPERM
    /// unless both the old and the new value pointers are null, so
    /// `raw::write`, which passes a new value, cannot call it.
    const PURGE_ALL: &CStr = c"arena.4096.purge";

    /// Resets the calling thread's high-water mark; another void control.
    const THREAD_PEAK_RESET: &CStr = c"thread.peak.reset";

    /// The calling thread's high-water mark of net allocated bytes.
    const THREAD_PEAK_READ: &[u8] = b"thread.peak.read\0";

    impl Jemalloc {
        /// Resolves the MIBs of the epoch and of the five counters.
        ///
        /// # Errors
        ///
        /// [`JemallocError::Ctl`] if jemalloc was built without statistics.
        pub fn new() -> Result<Self, JemallocError> {
            Ok(Self {
                epoch: epoch::mib().map_err(ctl("epoch"))?,
                allocated: stats::allocated::mib().map_err(ctl("stats.allocated"))?,
                active: stats::active::mib().map_err(ctl("stats.active"))?,
                resident: stats::resident::mib().map_err(ctl("stats.resident"))?,
                retained: stats::retained::mib().map_err(ctl("stats.retained"))?,
                metadata: stats::metadata::mib().map_err(ctl("stats.metadata"))?,
            })
        }

        /// Refreshes jemalloc's cached statistics and reads the counters.
        ///
        /// The counters are read one after another while other threads
        /// allocate, so they need not add up exactly.
        ///
        /// # Errors
        ///
        /// [`JemallocError::Ctl`] if a control fails; not expected once
        /// [`Jemalloc::new`] has succeeded.
        pub fn read(&self) -> Result<JemallocStats, JemallocError> {
            self.epoch.advance().map_err(ctl("epoch"))?;
            Ok(JemallocStats {
                allocated: widen(self.allocated.read().map_err(ctl("stats.allocated"))?),
                active: widen(self.active.read().map_err(ctl("stats.active"))?),
                resident: widen(self.resident.read().map_err(ctl("stats.resident"))?),
                retained: widen(self.retained.read().map_err(ctl("stats.retained"))?),
                metadata: widen(self.metadata.read().map_err(ctl("stats.metadata"))?),
            })
        }

        /// Returns every arena's dirty pages to the OS at once.
        ///
        /// This takes each arena's lock and costs system calls in
        /// proportion to the pages returned; call it when memory is short,
        /// not on every tick. Memory given back must be faulted in again
        /// when reused, which is slow on some machines.
        ///
        /// # Errors
        ///
        /// [`JemallocError::Mallctl`] if jemalloc refuses the control.
        pub fn purge(&self) -> Result<(), JemallocError> {
            call_void(PURGE_ALL)
        }
    }

    impl std::fmt::Debug for Jemalloc {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Jemalloc").finish_non_exhaustive()
        }
    }

    /// Reads the calling thread's peak heap: the highest net number of bytes
    /// it has had allocated since the thread started or since
    /// [`reset_thread_peak`], to within about 100 KB.
    ///
    /// This measures a job's real heap peak: call [`reset_thread_peak`] on
    /// the job's blocking thread as the job starts and this as it ends.
    /// Memory freed on another thread than the one that allocated it (a
    /// request body handed over, say) lowers the other thread's count, not
    /// this one's.
    ///
    /// # Errors
    ///
    /// [`JemallocError::Ctl`] if jemalloc was built without statistics.
    pub fn thread_peak() -> Result<u64, JemallocError> {
        // SAFETY: `thread.peak.read` is a `uint64_t` control.
        unsafe { raw::read::<u64>(THREAD_PEAK_READ) }.map_err(ctl("thread.peak.read"))
    }

    /// Resets the calling thread's peak to its current net allocation; see
    /// [`thread_peak`].
    ///
    /// # Errors
    ///
    /// [`JemallocError::Mallctl`] if jemalloc refuses the control.
    pub fn reset_thread_peak() -> Result<(), JemallocError> {
        call_void(THREAD_PEAK_RESET)
    }

    /// Starts jemalloc's background thread and reports the decay settings
    /// in force. Without the thread, decay runs only when some thread
    /// allocates, so an idle process keeps what it freed.
    ///
    /// # Errors
    ///
    /// [`JemallocError::Ctl`] if jemalloc refuses; the process then runs
    /// without the thread.
    pub fn enable_background_thread() -> Result<super::Tuning, JemallocError> {
        tikv_jemalloc_ctl::background_thread::write(true).map_err(ctl("background_thread"))?;

        // SAFETY: both options are `ssize_t` controls.
        let dirty = unsafe { raw::read::<isize>(b"opt.dirty_decay_ms\0") };
        let muzzy = unsafe { raw::read::<isize>(b"opt.muzzy_decay_ms\0") };
        Ok(super::Tuning {
            background_thread: tikv_jemalloc_ctl::background_thread::read()
                .map_err(ctl("background_thread"))?,
            dirty_decay_ms: dirty.map_err(ctl("opt.dirty_decay_ms"))? as i64,
            muzzy_decay_ms: muzzy.map_err(ctl("opt.muzzy_decay_ms"))? as i64,
        })
    }

    /// Calls a control that takes and returns nothing.
    fn call_void(name: &'static CStr) -> Result<(), JemallocError> {
        // SAFETY: `name` is NUL-terminated, and void controls read and
        // write through none of the (null) pointers.
        let code: c_int = unsafe {
            tikv_jemalloc_sys::mallctl(
                name.as_ptr(),
                ptr::null_mut(),
                ptr::null_mut(),
                ptr::null_mut(),
                0,
            )
        };
        match code {
            0 => Ok(()),
            code => Err(JemallocError::Mallctl {
                name: name.to_str().expect("control names are ASCII"),
                code,
            }),
        }
    }

    fn ctl(name: &'static str) -> impl FnOnce(tikv_jemalloc_ctl::Error) -> JemallocError {
        move |cause| JemallocError::Ctl { name, cause }
    }

    /// jemalloc counts in `size_t`, which fits in 64 bits on every target
    /// Rust supports.
    fn widen(bytes: usize) -> u64 {
        u64::try_from(bytes).expect("usize fits in u64")
    }
}

#[cfg(not(target_os = "linux"))]
mod unsupported {
    use super::{JemallocError, JemallocStats};

    /// Stands in for the Linux reader; every call fails.
    #[derive(Clone, Copy, Debug)]
    pub struct Jemalloc {
        _private: (),
    }

    impl Jemalloc {
        /// # Errors
        ///
        /// Always [`JemallocError::Unsupported`].
        pub fn new() -> Result<Self, JemallocError> {
            Err(JemallocError::Unsupported)
        }

        /// # Errors
        ///
        /// Always [`JemallocError::Unsupported`].
        pub fn read(&self) -> Result<JemallocStats, JemallocError> {
            Err(JemallocError::Unsupported)
        }

        /// # Errors
        ///
        /// Always [`JemallocError::Unsupported`].
        pub fn purge(&self) -> Result<(), JemallocError> {
            Err(JemallocError::Unsupported)
        }
    }

    /// # Errors
    ///
    /// Always [`JemallocError::Unsupported`].
    pub fn thread_peak() -> Result<u64, JemallocError> {
        Err(JemallocError::Unsupported)
    }

    /// # Errors
    ///
    /// Always [`JemallocError::Unsupported`].
    pub fn enable_background_thread() -> Result<super::Tuning, JemallocError> {
        Err(JemallocError::Unsupported)
    }

    /// # Errors
    ///
    /// Always [`JemallocError::Unsupported`].
    pub fn reset_thread_peak() -> Result<(), JemallocError> {
        Err(JemallocError::Unsupported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirty_is_resident_beyond_active_and_metadata() {
        let stats = JemallocStats {
            resident: 100,
            active: 60,
            metadata: 10,
            ..JemallocStats::default()
        };
        assert_eq!(stats.dirty(), 30);
    }

    #[test]
    fn dirty_saturates_when_counters_do_not_add_up() {
        let stats = JemallocStats {
            resident: 50,
            active: 60,
            metadata: 10,
            ..JemallocStats::default()
        };
        assert_eq!(stats.dirty(), 0);
    }
}
