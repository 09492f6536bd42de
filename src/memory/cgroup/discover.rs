//! Where this process's memory cgroup is: `/proc/self/cgroup` and
//! `/proc/self/mountinfo`, parsed as text.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::memory::file::ParseError;

/// A line of `/proc/self/cgroup`: `hierarchy-id:controllers:path`.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Membership<'a> {
    hierarchy: &'a str,
    controllers: &'a str,
    path: &'a str,
}

/// The parts of a `/proc/self/mountinfo` line that discovery needs.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Mount {
    /// The directory of the mounted filesystem shown at `mount_point`; for a
    /// cgroup filesystem, the cgroup path that the mount point stands for.
    root: PathBuf,
    mount_point: PathBuf,
    fs_type: String,
    super_options: String,
}

/// A cgroup directory, and the directory of the mount it was found under.
#[derive(Debug)]
pub(super) struct Located {
    pub(super) dir: PathBuf,
    pub(super) mount_dir: PathBuf,
}

/// Parses `/proc/self/cgroup`, one membership per hierarchy.
pub(super) fn parse_memberships(text: &str) -> Result<Vec<Membership<'_>>, ParseError> {
    text.lines()
        .filter(|line| !line.is_empty())
        .map(|line| {
            let mut fields = line.splitn(3, ':');
            let mut next = |field| {
                fields.next().ok_or_else(|| ParseError::MissingField {
                    field,
                    line: line.to_owned(),
                })
            };
            Ok(Membership {
                hierarchy: next("hierarchy-ID")?,
                controllers: next("controller-list")?,
                path: next("cgroup-path")?,
            })
        })
        .collect()
}

/// Parses `/proc/self/mountinfo`, one mount per line.
pub(super) fn parse_mountinfo(text: &str) -> Result<Vec<Mount>, ParseError> {
    text.lines()
        .filter(|line| !line.is_empty())
        .map(parse_mount)
        .collect()
}

/// Parses `36 35 98:0 /root /mnt opts optional... - fstype source supers`.
fn parse_mount(line: &str) -> Result<Mount, ParseError> {
    let missing = |field| ParseError::MissingField {
        field,
        line: line.to_owned(),
    };

    // Optional fields vary in number; a lone `-` ends them.
    let (before, after) = line.split_once(" - ").ok_or_else(|| missing("separator"))?;
    let mut before = before.split_whitespace().skip(3);
    let root = before.next().ok_or_else(|| missing("root"))?;
    let mount_point = before.next().ok_or_else(|| missing("mount point"))?;
    let mut after = after.split_whitespace();
    let fs_type = after.next().ok_or_else(|| missing("filesystem type"))?;
    let super_options = after.nth(1).ok_or_else(|| missing("super options"))?;

    Ok(Mount {
        root: unescape(root),
        mount_point: unescape(mount_point),
        fs_type: fs_type.to_owned(),
        super_options: super_options.to_owned(),
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\134` for a
/// backslash), which keep each field free of whitespace.
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|digits| {
            bytes[i] == b'\\' && digits.iter().all(|digit| (b'0'..=b'7').contains(digit))
        });
        let Some(digits) = octal else {
            out.push(bytes[i]);
            i += 1;
            continue;
        };
        let value = digits
            .iter()
            .fold(0u32, |acc, digit| acc * 8 + u32::from(digit - b'0'));

        // Three octal digits can exceed a byte; keep such text as it is.
        match u8::try_from(value) {
            Ok(byte) => out.push(byte),
            Err(_) => out.extend_from_slice(&bytes[i..i + 4]),
        }
        i += 4;
    }
    PathBuf::from(OsStr::from_bytes(&out))
}

/// Finds the v2 cgroup: the `0::/path` line under a `cgroup2` mount.
pub(super) fn locate_v2(
    memberships: &[Membership<'_>],
    mounts: &[Mount],
    root: &Path,
) -> Option<Located> {
    let membership = memberships
        .iter()
        .find(|line| line.hierarchy == "0" && line.controllers.is_empty())?;
    mounts
        .iter()
        .filter(|mount| mount.fs_type == "cgroup2")
        .find_map(|mount| locate(mount, membership.path, root))
}

/// Finds the v1 memory cgroup: the line whose controllers include `memory`,
/// under a `cgroup` mount with the `memory` super option.
pub(super) fn locate_v1(
    memberships: &[Membership<'_>],
    mounts: &[Mount],
    root: &Path,
) -> Option<Located> {
    let has_memory = |list: &str| list.split(',').any(|item| item == "memory");
    let membership = memberships
        .iter()
        .find(|line| has_memory(line.controllers))?;
    mounts
        .iter()
        .filter(|mount| mount.fs_type == "cgroup" && has_memory(&mount.super_options))
        .find_map(|mount| locate(mount, membership.path, root))
}

/// Where `cgroup_path` appears under `mount`, re-rooted under `root`, or
/// `None` when the mount does not show that cgroup.
fn locate(mount: &Mount, cgroup_path: &str, root: &Path) -> Option<Located> {
    // Paths outside the reader's cgroup namespace show as `/../..`; they
    // cannot be reached through any mount this process sees.
    let cgroup_path = Path::new(cgroup_path);
    if cgroup_path.components().any(|c| c == Component::ParentDir) {
        return None;
    }
    let relative = cgroup_path.strip_prefix(&mount.root).ok()?;
    let mount_dir = join_relative(root, &mount.mount_point);
    let dir = join_relative(&mount_dir, relative);
    Some(Located { dir, mount_dir })
}

/// Joins `path` under `base` even when `path` is absolute, without leaving
/// a trailing separator when `path` is empty or `/`.
fn join_relative(base: &Path, path: &Path) -> PathBuf {
    let relative = path.strip_prefix("/").unwrap_or(path);
    if relative.as_os_str().is_empty() {
        base.to_path_buf()
    } else {
        base.join(relative)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_CGROUP: &str = "\
9:name=systemd:/
4:memory:/process_api/9041
1:cpu:/
0::/
";

    const HYBRID_MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime shared:16 - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn memberships_keep_colons_inside_the_path() {
        let lines = parse_memberships("0::/a:b\n").expect("parses");
        assert_eq!(
            lines,
            [Membership {
                hierarchy: "0",
                controllers: "",
                path: "/a:b"
            }]
        );
    }

    #[test]
    fn membership_without_a_path_is_a_parse_error() {
        let error = parse_memberships("4:memory\n").expect_err("two fields only");
        assert!(matches!(
            error,
            ParseError::MissingField {
                field: "cgroup-path",
                ..
            }
        ));
    }

    #[test]
    fn mountinfo_skips_optional_fields_before_the_separator() {
        let mounts = parse_mountinfo(HYBRID_MOUNTINFO).expect("parses");
        assert_eq!(
            mounts[2],
            Mount {
                root: "/".into(),
                mount_point: "/sys/fs/cgroup/memory".into(),
                fs_type: "cgroup".into(),
                super_options: "rw,memory".into(),
            }
        );
    }

    #[test]
    fn mountinfo_line_without_separator_is_a_parse_error() {
        let error = parse_mountinfo("35 31 0:32 / /sys/fs/cgroup/memory rw\n").expect_err("no -");
        assert!(matches!(
            error,
            ParseError::MissingField {
                field: "separator",
                ..
            }
        ));
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/mnt/my\040disk"), PathBuf::from("/mnt/my disk"));
        assert_eq!(unescape(r"/a\134b"), PathBuf::from(r"/a\b"));
        assert_eq!(unescape(r"/keep\9"), PathBuf::from(r"/keep\9"));
        assert_eq!(unescape(r"/odd\777"), PathBuf::from(r"/odd\777"));
    }

    #[test]
    fn hybrid_layout_locates_v1_memory_and_the_unified_root() {
        let memberships = parse_memberships(HYBRID_CGROUP).expect("parses");
        let mounts = parse_mountinfo(HYBRID_MOUNTINFO).expect("parses");
        let root = Path::new("/fixture");

        let memory = locate_v1(&memberships, &mounts, root).expect("v1 memory");
        assert_eq!(
            memory.dir,
            PathBuf::from("/fixture/sys/fs/cgroup/memory/process_api/9041")
        );
        let unified = locate_v2(&memberships, &mounts, root).expect("v2");
        assert_eq!(unified.dir, PathBuf::from("/fixture/sys/fs/cgroup/unified"));
    }

    #[test]
    fn namespaced_mount_root_is_stripped_from_the_cgroup_path() {
        let mount = Mount {
            root: "/docker/abc".into(),
            mount_point: "/sys/fs/cgroup/memory".into(),
            fs_type: "cgroup".into(),
            super_options: "rw,memory".into(),
        };
        let own = locate(&mount, "/docker/abc", Path::new("/")).expect("own cgroup");
        assert_eq!(own.dir, PathBuf::from("/sys/fs/cgroup/memory"));
        let child = locate(&mount, "/docker/abc/job", Path::new("/")).expect("child");
        assert_eq!(child.dir, PathBuf::from("/sys/fs/cgroup/memory/job"));
    }

    #[test]
    fn cgroup_outside_the_mount_or_namespace_is_not_located() {
        let mount = Mount {
            root: "/docker/abc".into(),
            mount_point: "/sys/fs/cgroup".into(),
            fs_type: "cgroup2".into(),
            super_options: "rw".into(),
        };
        assert!(locate(&mount, "/docker/other", Path::new("/")).is_none());
        assert!(locate(&mount, "/docker/abcdef", Path::new("/")).is_none());
        assert!(locate(&mount, "/../../docker/abc", Path::new("/")).is_none());
    }

    #[test]
    fn v1_memory_needs_the_memory_super_option() {
        let memberships = parse_memberships("4:memory:/x\n").expect("parses");
        let mounts =
            parse_mountinfo("32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu,cpuacct\n")
                .expect("parses");
        assert!(locate_v1(&memberships, &mounts, Path::new("/")).is_none());
    }
}
