//! Discovery and reading of memory signals, against fixture trees under
//! `tests/data/cgroup` and against this machine.
//!
//! Each fixture holds a fake `proc/self` (`cgroup`, `mountinfo`) and the
//! cgroup directories its mountinfo points at, rooted in the fixture
//! directory; see `tests/data/cgroup/README.md` for the figures.

use std::fs;
use std::path::{Path, PathBuf};

use memgate::memory::cgroup::CgroupError;
use memgate::memory::process::Statm;
use memgate::memory::{
    Cgroup, CgroupVersion, MemorySource, ParseError, Pressure, Signal, SystemMemory,
};
use tokio::time::Instant;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/cgroup")
        .join(name)
}

/// Discovers the cgroup of a fixture tree rooted at `root`.
fn discover_in(root: &Path) -> Result<Cgroup, CgroupError> {
    Cgroup::discover_at(&root.join("proc/self"), root)
}

fn discover(name: &str) -> Cgroup {
    discover_in(&fixture(name)).unwrap_or_else(|error| panic!("{name}: {error}"))
}

/// Copies a fixture into a temporary directory, for tests that change it.
fn scratch_copy(name: &str) -> tempfile::TempDir {
    let scratch = tempfile::tempdir().expect("temporary directory");
    copy_tree(&fixture(name), scratch.path());
    scratch
}

fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create directory");
    for entry in fs::read_dir(from).expect("read fixture directory") {
        let entry = entry.expect("directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).expect("copy fixture file");
        }
    }
}

fn statm() -> Statm {
    Statm::open().expect("/proc/self/statm")
}

#[test]
fn v2_layout_reads_current_max_stat_events_and_pressure() {
    let mut cgroup = discover("v2");
    let dir = fixture("v2").join("sys/fs/cgroup/system.slice/memgate.service");
    assert_eq!(cgroup.version(), CgroupVersion::V2);
    assert_eq!(cgroup.dir(), dir);
    assert_eq!(
        cgroup.pressure_file(),
        Some(dir.join("memory.pressure").as_path())
    );

    let stats = cgroup.read().expect("readable");
    assert_eq!(stats.usage, GIB);
    assert_eq!(stats.limit, Some(2 * GIB));
    assert_eq!(stats.inactive_file, 256 * MIB);
    assert_eq!(stats.oom_kills, 1);
    assert_eq!(
        stats.pressure,
        Some(Pressure {
            some_avg10: 1.25,
            some_avg60: 0.5,
            some_avg300: 0.1,
            some_total_us: 4_000_000,
            full_avg10: 0.25,
            full_avg60: 0.05,
            full_avg300: 0.0,
            full_total_us: 900_000,
        })
    );
}

#[test]
fn v1_layout_reads_usage_limit_stat_and_oom_control() {
    let mut cgroup = discover("v1");
    assert_eq!(cgroup.version(), CgroupVersion::V1);
    assert_eq!(
        cgroup.dir(),
        fixture("v1").join("sys/fs/cgroup/memory/memgate")
    );

    // The 0:: line names a v2 cgroup, but no cgroup2 mount shows it.
    assert_eq!(cgroup.pressure_file(), None);

    let stats = cgroup.read().expect("readable");
    assert_eq!(stats.usage, 768 * MIB);
    assert_eq!(stats.limit, Some(GIB));
    assert_eq!(stats.inactive_file, 128 * MIB, "total_inactive_file");
    assert_eq!(stats.oom_kills, 3);
    assert_eq!(stats.pressure, None);
}

#[test]
fn hybrid_layout_reads_v1_usage_and_v2_pressure() {
    let mut cgroup = discover("hybrid");
    let root = fixture("hybrid");
    assert_eq!(cgroup.version(), CgroupVersion::V1);
    assert_eq!(
        cgroup.dir(),
        root.join("sys/fs/cgroup/memory/system.slice/memgate.service")
    );
    assert_eq!(
        cgroup.pressure_file(),
        Some(
            root.join("sys/fs/cgroup/unified/system.slice/memgate.service/memory.pressure")
                .as_path()
        )
    );

    let stats = cgroup.read().expect("readable");
    assert_eq!(stats.usage, 768 * MIB);
    assert_eq!(stats.limit, Some(1536 * MIB));
    let pressure = stats.pressure.expect("pressure from the unified mount");
    assert_eq!(pressure.some_avg10, 3.5);
    assert_eq!(pressure.full_total_us, 3_000_000);
}

#[test]
fn v1_near_2_pow_63_limit_means_unlimited() {
    let stats = discover("unlimited_v1").read().expect("readable");
    assert_eq!(stats.limit, None);
    assert_eq!(stats.usage, 4_341_760);
}

#[test]
fn v1_limit_just_below_2_pow_62_is_a_limit() {
    let scratch = scratch_copy("unlimited_v1");
    let dir = scratch.path().join("sys/fs/cgroup/memory/process_api/9041");
    let limit = (1u64 << 62) - 4096;
    fs::write(dir.join("memory.limit_in_bytes"), format!("{limit}\n")).expect("write");
    let stat = fs::read_to_string(dir.join("memory.stat")).expect("read");
    let stat = stat.replace("hierarchical_memory_limit 9223372036854771712", "");
    fs::write(dir.join("memory.stat"), stat).expect("write");

    let stats = discover_in(scratch.path())
        .expect("found")
        .read()
        .expect("readable");
    assert_eq!(stats.limit, Some(limit));
}

#[test]
fn v1_limit_of_an_ancestor_binds_through_the_hierarchical_limit() {
    let scratch = scratch_copy("v1");
    let dir = scratch.path().join("sys/fs/cgroup/memory/memgate");
    fs::write(dir.join("memory.limit_in_bytes"), "9223372036854771712\n").expect("write");

    // memory.stat still reports the 1 GiB hierarchical limit.
    let stats = discover_in(scratch.path())
        .expect("found")
        .read()
        .expect("readable");
    assert_eq!(stats.limit, Some(GIB));
}

#[test]
fn v2_max_means_unlimited() {
    let mut cgroup = discover("unlimited_v2");
    assert_eq!(cgroup.version(), CgroupVersion::V2);
    let stats = cgroup.read().expect("readable");
    assert_eq!(stats.limit, None);
    assert_eq!(stats.usage, 50 * MIB);
}

#[test]
fn v2_limit_is_the_tightest_memory_max_among_ancestors() {
    let scratch = scratch_copy("v2");
    let slice = scratch.path().join("sys/fs/cgroup/system.slice");
    fs::write(slice.join("memory.max"), format!("{}\n", GIB)).expect("write");

    let stats = discover_in(scratch.path())
        .expect("found")
        .read()
        .expect("readable");
    assert_eq!(stats.limit, Some(GIB));
}

#[test]
fn working_set_subtracts_inactive_file() {
    let v2 = discover("v2").read().expect("readable");
    assert_eq!(v2.working_set, GIB - 256 * MIB);
    let v1 = discover("v1").read().expect("readable");
    assert_eq!(v1.working_set, 768 * MIB - 128 * MIB);
}

#[test]
fn working_set_saturates_at_zero() {
    let scratch = scratch_copy("v2");
    let dir = scratch
        .path()
        .join("sys/fs/cgroup/system.slice/memgate.service");
    fs::write(dir.join("memory.current"), "1000\n").expect("write");

    let stats = discover_in(scratch.path())
        .expect("found")
        .read()
        .expect("readable");
    assert_eq!(stats.working_set, 0);
}

#[test]
fn namespaced_mount_root_is_stripped_from_the_cgroup_path() {
    let mut cgroup = discover("namespaced");
    assert_eq!(cgroup.version(), CgroupVersion::V2);
    assert_eq!(cgroup.dir(), fixture("namespaced").join("sys/fs/cgroup"));

    let stats = cgroup.read().expect("readable");
    assert_eq!(stats.limit, Some(512 * MIB));
    assert_eq!(stats.working_set, 256 * MIB - 32 * MIB);
}

#[test]
fn missing_cgroup_is_not_found() {
    let error = discover_in(&fixture("missing")).expect_err("no cgroup mounts");
    assert!(matches!(error, CgroupError::NotFound), "{error}");
}

#[test]
fn missing_proc_files_are_a_read_error() {
    let empty = tempfile::tempdir().expect("temporary directory");
    let error = discover_in(empty.path()).expect_err("nothing there");
    assert!(
        matches!(&error, CgroupError::Read { path, .. } if path.ends_with("proc/self/cgroup")),
        "{error}"
    );
}

#[test]
fn missing_cgroup_file_at_discovery_is_a_read_error_naming_it() {
    let scratch = scratch_copy("v1");
    let dir = scratch.path().join("sys/fs/cgroup/memory/memgate");
    fs::remove_file(dir.join("memory.oom_control")).expect("remove");

    let error = discover_in(scratch.path()).expect_err("a file is missing");
    assert!(
        matches!(&error, CgroupError::Read { path, .. } if path.ends_with("memory.oom_control")),
        "{error}"
    );
}

#[test]
fn missing_pressure_file_leaves_pressure_out() {
    let scratch = scratch_copy("v2");
    let dir = scratch
        .path()
        .join("sys/fs/cgroup/system.slice/memgate.service");
    fs::remove_file(dir.join("memory.pressure")).expect("remove");

    let mut cgroup = discover_in(scratch.path()).expect("found");
    assert_eq!(cgroup.pressure_file(), None);
    assert_eq!(cgroup.read().expect("readable").pressure, None);
}

#[test]
fn file_emptied_after_discovery_is_a_parse_error_not_a_panic() {
    let scratch = scratch_copy("v2");
    let mut cgroup = discover_in(scratch.path()).expect("found");
    let current = cgroup.dir().join("memory.current");
    fs::write(&current, "").expect("truncate");

    let error = cgroup.read().expect_err("nothing to parse");
    assert!(
        matches!(
            &error,
            CgroupError::Parse { path, source: ParseError::NotANumber(text) }
                if *path == current && text.is_empty()
        ),
        "{error}"
    );
}

/// Removing a cgroup makes the kernel fail reads through handles opened
/// before; only a real cgroup filesystem shows this (an unlinked regular
/// file stays readable), so this test makes a child of its own v1 memory
/// cgroup, which needs root.
#[test]
fn file_removed_after_discovery_is_an_error_not_a_panic() {
    let Some(child) = ChildCgroup::create() else {
        return;
    };
    let mut cgroup =
        Cgroup::discover_at(child.proc_self.path(), Path::new("/")).expect("child found");
    assert_eq!(cgroup.dir(), child.dir);
    cgroup.read().expect("readable while it exists");

    child.remove();
    let error = cgroup.read().expect_err("the cgroup is gone");
    assert!(matches!(error, CgroupError::Read { .. }), "{error}");
}

#[test]
fn missing_cgroup_falls_back_to_process_rss() {
    let mut memory = SystemMemory::new(None, Some(statm()), None);
    assert_eq!(memory.signal(), Signal::ProcessRss);
    assert_eq!(memory.limit(), None);

    let sample = memory.sample(Instant::now());
    let rss = sample.process_rss.expect("rss readable");
    assert_eq!(sample.signal, Signal::ProcessRss);
    assert_eq!(sample.working_set, rss);
    assert!(sample.cgroup.is_none());
}

#[test]
fn unlimited_cgroup_steers_by_process_rss() {
    let mut memory = SystemMemory::new(Some(discover("unlimited_v2")), Some(statm()), None);
    assert_eq!(memory.signal(), Signal::ProcessRss);
    assert_eq!(memory.limit(), None);

    // The cgroup is still read, for the logs and the state snapshot.
    let sample = memory.sample(Instant::now());
    assert_eq!(sample.cgroup.expect("cgroup read").usage, 50 * MIB);
    assert_eq!(Some(sample.working_set), sample.process_rss);
}

#[test]
fn limited_cgroup_steers_by_its_working_set() {
    let mut memory = SystemMemory::new(Some(discover("v2")), Some(statm()), None);
    assert_eq!(memory.signal(), Signal::CgroupWorkingSet);
    assert_eq!(memory.limit(), Some(2 * GIB));

    let sample = memory.sample(Instant::now());
    assert_eq!(sample.signal, Signal::CgroupWorkingSet);
    assert_eq!(sample.working_set, GIB - 256 * MIB);
    assert!(sample.process_rss.is_some());
}

#[test]
fn unreadable_steering_signal_keeps_the_last_good_working_set() {
    let scratch = scratch_copy("v2");
    let cgroup = discover_in(scratch.path()).expect("found");
    let current = cgroup.dir().join("memory.current");
    let mut memory = SystemMemory::new(Some(cgroup), Some(statm()), None);
    let first = memory.sample(Instant::now());
    assert_eq!(memory.read_failures(), 0);

    // Two failed reads: the signal stays, the value repeats, and the
    // other readings carry on.
    fs::write(&current, "garbage\n").expect("corrupt");
    for failures in 1..=2 {
        let sample = memory.sample(Instant::now());
        assert!(sample.cgroup.is_none());
        assert!(sample.process_rss.is_some());
        assert_eq!(sample.signal, Signal::CgroupWorkingSet);
        assert_eq!(sample.working_set, first.working_set);
        assert_eq!(memory.read_failures(), failures);
    }

    // Reads recover with the new value.
    fs::write(&current, format!("{}\n", 3 * GIB / 2)).expect("repair");
    let sample = memory.sample(Instant::now());
    assert_eq!(sample.working_set, 3 * GIB / 2 - 256 * MIB);
    assert_eq!(memory.read_failures(), 2);
}

#[test]
fn a_blind_cgroup_still_sees_the_process_grow() {
    let scratch = scratch_copy("v2");
    let cgroup = discover_in(scratch.path()).expect("found");
    let statm_path = scratch.path().join("statm");
    let pages = |bytes: u64| bytes / memgate::memory::process::page_size();
    let write_rss = |bytes: u64| {
        let text = format!(
            "{} {} 100 10 0 {} 0\n",
            pages(4 * GIB),
            pages(bytes),
            pages(bytes)
        );
        fs::write(&statm_path, text).expect("write statm");
    };
    write_rss(100 * MIB);
    let statm = Statm::open_at(&statm_path).expect("statm");
    let mut memory = SystemMemory::new(Some(cgroup), Some(statm), None);
    let first = memory.sample(Instant::now()).working_set;
    assert!(first > 100 * MIB, "the cgroup's working set, not the RSS");

    // The cgroup becomes unreadable; the process stays below the last
    // good value, which repeats.
    let current = scratch
        .path()
        .join("sys/fs/cgroup/system.slice/memgate.service/memory.current");
    fs::write(&current, "garbage\n").expect("corrupt memory.current");
    assert_eq!(memory.sample(Instant::now()).working_set, first);

    // The process grows past it: the working set follows.
    write_rss(first + 300 * MIB);
    let blind = memory.sample(Instant::now());
    assert_eq!(blind.signal, Signal::CgroupWorkingSet);
    assert!(blind.cgroup.is_none());
    assert_eq!(blind.working_set, first + 300 * MIB);
}

#[test]
fn cgroup_unreadable_at_construction_cannot_steer() {
    let scratch = scratch_copy("v2");
    let cgroup = discover_in(scratch.path()).expect("found");
    fs::write(cgroup.dir().join("memory.stat"), "nothing useful\n").expect("corrupt");

    let memory = SystemMemory::new(Some(cgroup), Some(statm()), None);
    assert_eq!(memory.signal(), Signal::ProcessRss);
    assert_eq!(memory.limit(), None);
    assert_eq!(memory.read_failures(), 1);
}

#[test]
fn describe_names_the_cgroup_the_limit_and_the_signal() {
    let memory = SystemMemory::new(Some(discover("hybrid")), Some(statm()), None);
    let detection = memory.describe();
    assert_eq!(detection.cgroup_version, Some(CgroupVersion::V1));
    assert_eq!(detection.limit, Some(1536 * MIB));
    assert_eq!(detection.signal, Signal::CgroupWorkingSet);
    assert!(!detection.jemalloc);

    let line = detection.to_string();
    assert!(line.starts_with("cgroup v1 at "), "{line}");
    assert!(
        line.ends_with("; limit 1.5 GiB; steering by cgroup_working_set"),
        "{line}"
    );
}

#[test]
fn purge_without_jemalloc_attempts_nothing() {
    let mut memory = SystemMemory::new(None, Some(statm()), None);
    assert!(!memory.purge());
}

/// The layout of the machines this service is developed on: v1 memory,
/// plus a unified mount carrying pressure.
#[test]
fn this_machine_has_the_hybrid_layout() {
    if !Path::new("/sys/fs/cgroup/memory").is_dir() {
        println!("skipped: /sys/fs/cgroup/memory is absent, not the hybrid layout");
        return;
    }
    let mut cgroup = Cgroup::discover().expect("discovered");
    assert_eq!(cgroup.version(), CgroupVersion::V1);

    let own = own_v1_memory_path().expect("a memory line in /proc/self/cgroup");
    assert_eq!(
        cgroup.dir(),
        Path::new("/sys/fs/cgroup/memory").join(&own[1..])
    );
    let pressure = cgroup
        .pressure_file()
        .expect("pressure from the unified mount");
    assert!(
        pressure.starts_with("/sys/fs/cgroup/unified"),
        "{}",
        pressure.display()
    );

    let stats = cgroup.read().expect("readable");
    assert!(stats.usage > 0);
    assert!(stats.working_set <= stats.usage);
    assert!(stats.pressure.is_some());
}

#[test]
fn detect_on_this_machine_steers_by_a_signal_it_can_read() {
    let mut memory = SystemMemory::detect();
    let sample = memory.sample(Instant::now());
    println!("{}", memory.describe());

    // Only a limited cgroup may steer; an unlimited one is shared.
    match memory.limit() {
        Some(_) => assert_eq!(memory.signal(), Signal::CgroupWorkingSet),
        None => assert_eq!(memory.signal(), Signal::ProcessRss),
    }
    assert!(sample.process_rss.is_some_and(|rss| rss > 0));
    assert!(sample.working_set > 0);
    assert_eq!(sample.cgroup.is_some(), memory.cgroup().is_some());
    assert_eq!(memory.read_failures(), 0);
}

/// The cgroup path of this process in the v1 memory hierarchy.
fn own_v1_memory_path() -> Option<String> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then(|| path.to_owned())
    })
}

/// An empty child of this process's v1 memory cgroup, with a fake
/// `/proc/self` naming it as this process's cgroup. Removed on drop.
struct ChildCgroup {
    dir: PathBuf,
    proc_self: tempfile::TempDir,
}

impl ChildCgroup {
    /// Returns `None`, saying why, where a child cannot be made.
    fn create() -> Option<Self> {
        let Some(own) = own_v1_memory_path() else {
            println!("skipped: no v1 memory cgroup on this machine");
            return None;
        };
        let parent = Path::new("/sys/fs/cgroup/memory").join(own.trim_start_matches('/'));
        let name = format!("memgate-test-{}", std::process::id());
        let dir = parent.join(&name);
        if let Err(error) = fs::create_dir(&dir) {
            println!("skipped: cannot create {}: {error}", dir.display());
            return None;
        }

        let proc_self = tempfile::tempdir().expect("temporary directory");
        let membership = format!("4:memory:{}/{name}\n", own.trim_end_matches('/'));
        fs::write(proc_self.path().join("cgroup"), membership).expect("write cgroup");
        fs::copy("/proc/self/mountinfo", proc_self.path().join("mountinfo"))
            .expect("copy mountinfo");
        Some(Self { dir, proc_self })
    }

    fn remove(&self) {
        fs::remove_dir(&self.dir).expect("remove the empty child cgroup");
    }
}

impl Drop for ChildCgroup {
    fn drop(&mut self) {
        // Already gone when the test removed it; nothing else to undo.
        let _ = fs::remove_dir(&self.dir);
    }
}
