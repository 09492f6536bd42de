//! The synthetic job of the load tests: a job of known memory and CPU
//! cost, so that the gate and the controller can be measured without
//! images.
//!
//! It allocates `mib` MiB and writes every page of it, so that the memory
//! is really resident, waits `io_ms` ms with it held, as a job reading its
//! input from object storage or writing its output does, then spends about
//! `cpu_ms` ms of the thread's own CPU time reading that buffer. CPU time,
//! not wall time: when more jobs run than there are cores, each job takes
//! longer, as real CPU-bound work does.

use std::time::Duration;

use serde::Serialize;

use super::query::Query;
use super::{Cancel, JobError, ParamError};

/// The class the synthetic job's costs are learned under.
pub const CLASS: &str = "synthetic";

const MIB: u64 = 1 << 20;

/// Memory a synthetic job holds besides its buffer: its stack frames and
/// the report. Measured with `thread.peak`: under 4 KiB.
const OVERHEAD_BYTES: u64 = 64 << 10;

/// The buffer is written and read in chunks of this size, with a cancel
/// check after each.
const CHUNK_BYTES: usize = 1 << 20;

/// What the synthetic job is asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntheticParams {
    /// Memory to allocate and touch. MiB, 0 to 1,048,576.
    pub mib: u64,
    /// CPU time to spend over the buffer. Milliseconds, 0 to 600,000.
    pub cpu_ms: u64,
    /// Time to wait with the memory held, using no CPU. Milliseconds, 0 to
    /// 600,000.
    pub io_ms: u64,
    /// Panic once the memory is allocated, to test that a panicking job
    /// returns its reservation and leaves the server serving.
    pub panic: bool,
}

impl SyntheticParams {
    /// Reads `mib`, `cpu_ms`, `io_ms` (each 0 by default) and `panic`
    /// (default false) from a query string.
    ///
    /// # Errors
    ///
    /// A [`ParamError`] naming a parameter that is unknown, repeated,
    /// malformed or out of range.
    pub fn from_query(query: Option<&str>) -> Result<Self, ParamError> {
        let query = Query::parse(query, &["mib", "cpu_ms", "io_ms", "panic"])?;
        Ok(Self {
            mib: query.number("mib", 0..=1 << 20)?.unwrap_or(0),
            cpu_ms: query.number("cpu_ms", 0..=600_000)?.unwrap_or(0),
            io_ms: query.number("io_ms", 0..=600_000)?.unwrap_or(0),
            panic: query.flag("panic")?.unwrap_or(false),
        })
    }
}

/// The memory a synthetic job needs, in bytes: its buffer and a little
/// more.
pub fn estimate(params: &SyntheticParams) -> u64 {
    params.mib * MIB + OVERHEAD_BYTES
}

/// What a synthetic job answers.
#[derive(Clone, Debug, Serialize)]
pub struct SyntheticReport {
    /// Memory allocated and touched, in MiB.
    pub mib: u64,
    /// CPU time asked for, in milliseconds.
    pub cpu_ms: u64,
    /// Time spent waiting with the memory held, in milliseconds.
    pub io_ms: u64,
    /// CPU time the thread really spent, in milliseconds.
    pub cpu_used_ms: u64,
    /// A sum over the buffer, so that the work cannot be optimised away.
    pub checksum: u64,
}

/// Runs a synthetic job on the current thread.
///
/// # Errors
///
/// [`JobError::Cancelled`] when `cancel` is raised; the job checks it
/// after every MiB written or read and every 10 ms of waiting.
///
/// # Panics
///
/// When `params.panic` asks for it, once the memory is allocated.
pub fn run(params: &SyntheticParams, cancel: &Cancel) -> Result<SyntheticReport, JobError> {
    let clock = ThreadClock::start();
    let buffer = touch(params.mib, cancel)?;
    assert!(!params.panic, "the synthetic job was asked to panic");

    wait(Duration::from_millis(params.io_ms), cancel)?;

    let budget = Duration::from_millis(params.cpu_ms);
    let checksum = spend(&buffer, budget, &clock, cancel)?;
    Ok(SyntheticReport {
        mib: params.mib,
        cpu_ms: params.cpu_ms,
        io_ms: params.io_ms,
        cpu_used_ms: clock.elapsed().as_millis() as u64,
        checksum,
    })
}

/// Sleeps for `time`, checking `cancel` every 10 ms.
fn wait(time: Duration, cancel: &Cancel) -> Result<(), JobError> {
    const SLICE: Duration = Duration::from_millis(10);

    let mut left = time;
    while !left.is_zero() {
        let slice = left.min(SLICE);
        std::thread::sleep(slice);
        left -= slice;
        cancel.check()?;
    }
    Ok(())
}

/// Allocates `mib` MiB and writes every byte, so that every page is
/// resident.
fn touch(mib: u64, cancel: &Cancel) -> Result<Vec<u8>, JobError> {
    let bytes = usize::try_from(mib * MIB)
        .map_err(|_| JobError::TooLarge(format!("{mib} MiB do not fit in memory here")))?;
    let mut buffer = Vec::with_capacity(bytes);
    while buffer.len() < bytes {
        let next = (buffer.len() + CHUNK_BYTES).min(bytes);
        // The pattern varies with the position so that no page is all
        // zeros, which some kernels could merge.
        buffer.resize(next, (next / CHUNK_BYTES) as u8 | 1);
        cancel.check()?;
    }
    Ok(buffer)
}

/// Reads the buffer (or a small block when it is empty) chunk after
/// chunk, round and round, until `clock` has passed `budget`. The clock
/// is read after every chunk, not every pass: a pass over a large buffer
/// takes longer than many budgets. Returns a sum of the bytes read.
fn spend(
    buffer: &[u8],
    budget: Duration,
    clock: &ThreadClock,
    cancel: &Cancel,
) -> Result<u64, JobError> {
    static EMPTY: [u8; CHUNK_BYTES / 16] = [1; CHUNK_BYTES / 16];
    let data = if buffer.is_empty() {
        &EMPTY[..]
    } else {
        buffer
    };

    let mut sum = 0u64;
    for chunk in data.chunks(CHUNK_BYTES).cycle() {
        if clock.elapsed() >= budget {
            break;
        }
        let part = chunk.iter().fold(0u64, |acc, &b| {
            acc.wrapping_mul(31).wrapping_add(u64::from(b))
        });
        sum = sum.wrapping_add(std::hint::black_box(part));
        cancel.check()?;
    }
    Ok(sum)
}

/// CPU time of the current thread since `start`.
struct ThreadClock(Duration);

impl ThreadClock {
    fn start() -> Self {
        Self(thread_cpu_time())
    }

    fn elapsed(&self) -> Duration {
        thread_cpu_time().saturating_sub(self.0)
    }
}

#[cfg(target_os = "linux")]
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to write into.
    let read = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    if read != 0 {
        return Duration::ZERO;
    }
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Where the thread's CPU time cannot be read, wall time stands in.
#[cfg(not(target_os = "linux"))]
fn thread_cpu_time() -> Duration {
    use std::sync::OnceLock;
    use std::time::Instant;

    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_default_to_an_empty_job() {
        let params = SyntheticParams::from_query(None).unwrap();
        assert_eq!(
            params,
            SyntheticParams {
                mib: 0,
                cpu_ms: 0,
                io_ms: 0,
                panic: false
            }
        );
    }

    #[test]
    fn parameters_out_of_range_are_refused_by_name() {
        let err = SyntheticParams::from_query(Some("mib=99999999")).unwrap_err();
        assert_eq!(err.parameter, "mib");
        let err = SyntheticParams::from_query(Some("cpu_ms=-1")).unwrap_err();
        assert_eq!(err.parameter, "cpu_ms");
    }

    #[test]
    fn the_job_touches_its_memory_and_spends_its_cpu() {
        let params = SyntheticParams::from_query(Some("mib=3&cpu_ms=30")).unwrap();
        let report = run(&params, &Cancel::new()).unwrap();
        assert_eq!(report.mib, 3);
        assert!(report.cpu_used_ms >= 30, "{report:?}");
        assert!(estimate(&params) >= 3 * MIB);
    }

    #[test]
    fn the_job_waits_with_its_memory_held() {
        let params = SyntheticParams::from_query(Some("mib=1&io_ms=40")).unwrap();
        let started = std::time::Instant::now();
        let report = run(&params, &Cancel::new()).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(40));
        assert_eq!(report.io_ms, 40);
    }

    #[test]
    fn a_cancelled_job_stops_waiting_and_working() {
        let cancel = Cancel::new();
        cancel.cancel();
        for query in ["io_ms=600000", "mib=4&cpu_ms=600000"] {
            let params = SyntheticParams::from_query(Some(query)).unwrap();
            let outcome = run(&params, &cancel);
            assert!(matches!(outcome, Err(JobError::Cancelled)), "{query}");
        }
    }
}
