//! What one reading of each memory signal costs on this machine.
//!
//! The controller samples every 50 ms, so a full sample should stay in the
//! tens of microseconds. `cgroup/reopen_each_file` reads the same files by
//! path, to show what keeping the handles open saves.

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use memgate::memory::jemalloc::thread_peak;
use memgate::memory::process::Statm;
use memgate::memory::{Cgroup, CgroupVersion, Jemalloc, MemorySource, SystemMemory};
use tokio::time::Instant;

// The counters mean something only with jemalloc as the allocator.
#[cfg(target_os = "linux")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn jemalloc(c: &mut Criterion) {
    let Ok(jemalloc) = Jemalloc::new() else {
        eprintln!("skipped jemalloc benchmarks: no jemalloc on this target");
        return;
    };
    c.bench_function("jemalloc/read", |b| b.iter(|| black_box(jemalloc.read())));
    c.bench_function("jemalloc/thread_peak", |b| {
        b.iter(|| black_box(thread_peak()))
    });
}

fn cgroup(c: &mut Criterion) {
    let mut cgroup = match Cgroup::discover() {
        Ok(cgroup) => cgroup,
        Err(error) => {
            eprintln!("skipped cgroup benchmarks: {error}");
            return;
        }
    };
    eprintln!("{cgroup}");
    c.bench_function("cgroup/read", |b| b.iter(|| black_box(cgroup.read())));

    let paths = file_paths(&cgroup);
    c.bench_function("cgroup/reopen_each_file", |b| {
        b.iter(|| {
            for path in &paths {
                black_box(std::fs::read_to_string(path).ok());
            }
        })
    });
}

fn process(c: &mut Criterion) {
    let Ok(mut statm) = Statm::open() else {
        eprintln!("skipped process benchmark: no /proc/self/statm");
        return;
    };
    c.bench_function("process/statm", |b| b.iter(|| black_box(statm.rss())));
}

fn system(c: &mut Criterion) {
    let mut memory = SystemMemory::detect();
    eprintln!("{}", memory.describe());
    c.bench_function("system/sample", |b| {
        b.iter(|| black_box(memory.sample(Instant::now())))
    });
}

/// The files [`Cgroup::read`] reads, by path.
fn file_paths(cgroup: &Cgroup) -> Vec<PathBuf> {
    let names: &[&str] = match cgroup.version() {
        CgroupVersion::V1 => &[
            "memory.usage_in_bytes",
            "memory.limit_in_bytes",
            "memory.stat",
            "memory.oom_control",
        ],
        CgroupVersion::V2 => &[
            "memory.current",
            "memory.max",
            "memory.stat",
            "memory.events",
        ],
    };
    let mut paths: Vec<PathBuf> = names.iter().map(|name| cgroup.dir().join(name)).collect();
    paths.extend(cgroup.pressure_file().map(PathBuf::from));
    paths
}

criterion_group!(signals, jemalloc, cgroup, process, system);
criterion_main!(signals);
