//! How soon freed memory goes back to the OS with memgate's jemalloc
//! settings: `cargo bench --bench decay`.
//!
//! Allocates and touches 512 MiB in buffers of one size, frees them, and
//! prints the process's resident set every 50 ms for three seconds; once
//! with jemalloc's background thread, as the binary runs, and once without.

use std::time::{Duration, Instant};

#[cfg(target_os = "linux")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The binary's start-up options (`src/main.rs`).
#[cfg(target_os = "linux")]
#[unsafe(export_name = "malloc_conf")]
pub static MALLOC_CONF: &[u8; 37] = b"dirty_decay_ms:1000,muzzy_decay_ms:0\0";

const MIB: usize = 1 << 20;

fn rss_mib() -> u64 {
    let mut statm = memgate::memory::process::Statm::open().expect("statm");
    statm.rss().expect("rss") >> 20
}

/// Frees 512 MiB in buffers of `size` and reports when the resident set
/// falls back.
fn free_and_watch(size: usize) {
    let buffers: Vec<Vec<u8>> = (0..512 * MIB / size).map(|_| vec![1u8; size]).collect();
    let before = rss_mib();
    drop(buffers);

    let freed_at = Instant::now();
    let mut timeline = Vec::new();
    while freed_at.elapsed() < Duration::from_secs(3) {
        timeline.push((freed_at.elapsed().as_millis(), rss_mib()));
        std::thread::sleep(Duration::from_millis(50));
    }
    let settled = timeline.last().map_or(0, |&(_, rss)| rss);
    let half = timeline
        .iter()
        .find(|&&(_, rss)| rss <= (before + settled) / 2);
    let done = timeline.iter().find(|&&(_, rss)| rss <= settled + 8);
    println!(
        "  {:>3} MiB buffers: {before} MiB resident before the free, half returned at {:?} ms, \
         all at {:?} ms (settled at {settled} MiB)",
        size / MIB,
        half.map(|h| h.0),
        done.map(|d| d.0),
    );
}

fn main() {
    // `cargo test --benches` runs bench targets with `--bench` absent:
    // nothing to measure then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    for background in [false, true] {
        if background {
            memgate::memory::jemalloc::enable_background_thread().expect("background thread");
        }
        println!("background thread: {background}");
        for size in [4 * MIB, 150 * MIB] {
            free_and_watch(size);
        }
    }
}
