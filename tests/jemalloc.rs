//! jemalloc's counters, purge and per-thread peak, with jemalloc installed
//! as this test binary's allocator.
//!
//! The global counters see every thread, so the tests take a lock: the
//! test harness runs tests on parallel threads.

#![cfg(target_os = "linux")]

use std::sync::{Mutex, MutexGuard};

use memgate::memory::jemalloc::{reset_thread_peak, thread_peak};
use memgate::memory::{Jemalloc, MemorySource, Signal, SystemMemory};
use tokio::time::Instant;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const MIB: usize = 1 << 20;

static GLOBAL_COUNTERS: Mutex<()> = Mutex::new(());

fn exclusive() -> MutexGuard<'static, ()> {
    GLOBAL_COUNTERS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Allocates `count` blocks of 1 MiB and writes to every page of each, so
/// that they are resident and not just reserved.
///
/// 1 MiB blocks stay below jemalloc's 8 MiB oversize threshold: larger
/// ones go to a dedicated arena that returns them to the OS as soon as
/// they are freed, which would leave nothing for a purge to do.
fn touched_blocks(count: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|_| {
            let mut block = vec![0u8; MIB];
            for byte in block.iter_mut().step_by(4096) {
                *byte = 1;
            }
            block
        })
        .collect()
}

/// Small allocations move between threads' caches and the arenas in
/// batches, shifting `allocated` by a few kilobytes either way.
const CACHE_SLACK: u64 = 64 << 10;

#[test]
fn allocated_grows_by_what_the_program_holds_and_purge_lowers_resident() {
    let _guard = exclusive();
    let jemalloc = Jemalloc::new().expect("jemalloc statistics");
    let before = jemalloc.read().expect("readable");

    let blocks = touched_blocks(64);
    let holding = jemalloc.read().expect("readable");
    assert!(
        holding.allocated + CACHE_SLACK >= before.allocated + 64 * MIB as u64,
        "allocated went from {} to {}",
        before.allocated,
        holding.allocated
    );
    assert!(holding.resident >= before.resident + 64 * MIB as u64);

    // Freed, many pages stay resident as dirty pages until purged: about
    // 45 MiB on this machine, jemalloc's decay returning the rest at once.
    drop(blocks);
    let freed = jemalloc.read().expect("readable");
    assert!(freed.allocated + 60 * MIB as u64 <= holding.allocated);
    assert!(
        freed.dirty() >= 32 * MIB as u64,
        "dirty after free: {}",
        freed.dirty()
    );

    jemalloc.purge().expect("purge");
    let purged = jemalloc.read().expect("readable");
    assert!(
        purged.resident + 32 * MIB as u64 <= freed.resident,
        "resident went from {} to {} bytes",
        freed.resident,
        purged.resident
    );
    assert!(
        purged.dirty() < MIB as u64,
        "dirty after purge: {}",
        purged.dirty()
    );
}

#[test]
fn counters_are_consistent_with_each_other() {
    let _guard = exclusive();
    let stats = Jemalloc::new().expect("jemalloc").read().expect("readable");
    assert!(stats.allocated > 0);
    assert!(stats.active >= stats.allocated);
    assert!(stats.resident >= stats.active);
    assert!(stats.metadata > 0);
}

#[test]
fn thread_peak_sees_the_high_water_mark_and_resets() {
    // The peak is per thread, but its allocations would disturb the global
    // counters other tests read.
    let _guard = exclusive();
    std::thread::spawn(|| {
        reset_thread_peak().expect("reset");
        let blocks = touched_blocks(32);
        drop(blocks);
        let peak = thread_peak().expect("read");
        assert!(peak >= 32 * MIB as u64, "peak {peak}");
        assert!(peak < 40 * MIB as u64, "peak {peak}");

        reset_thread_peak().expect("reset");
        let after_reset = thread_peak().expect("read");
        assert!(after_reset < MIB as u64, "peak after reset {after_reset}");
    })
    .join()
    .expect("measuring thread");
}

#[test]
fn system_memory_purges_through_jemalloc() {
    let _guard = exclusive();
    let jemalloc = Jemalloc::new().expect("jemalloc");
    let mut memory = SystemMemory::new(None, None, Some(jemalloc));
    assert_eq!(memory.signal(), Signal::JemallocResident);
    assert!(memory.describe().jemalloc);

    let sample = memory.sample(Instant::now());
    let stats = sample.jemalloc.as_ref().expect("jemalloc read");
    assert_eq!(sample.working_set, stats.resident);
    assert!(memory.purge());
}

#[test]
fn c_allocations_of_libwebp_are_counted_too() {
    let _guard = exclusive();
    // jemalloc is built to serve C's malloc as well: an encoder's buffers
    // show in the job's peak and in every heap signal.
    let (width, height) = (1000u32, 1000u32);
    let pixels = vec![7u8; (width * height * 3) as usize];

    reset_thread_peak().unwrap();
    let encoded = webp::Encoder::from_rgb(&pixels, width, height)
        .encode_simple(false, 80.0)
        .unwrap();
    let peak = thread_peak().unwrap() as usize;
    drop(encoded);

    // libwebp holds about 6 bytes per pixel of a flat image while it
    // works; what Rust allocates here is the pixels, outside the window,
    // and nothing else.
    assert!(peak > 4 * MIB, "peak {peak} bytes");
}
