//! Locating the cgroup v2 hierarchy the nodes' cgroups live in.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Where the lab mounts its own cgroup2 when the machine has none mounted.
const FALLBACK_MOUNT: &str = "/run/netbee-lab-cgroup2";

/// Finds a mounted cgroup2 hierarchy (hybrid machines mount it at
/// `/sys/fs/cgroup/unified`); if there is none, mounts one at
/// `/run/netbee-lab-cgroup2` and returns that.
pub fn cgroup2_root() -> Result<PathBuf> {
    if let Some(p) = find_cgroup2_mount()? {
        return Ok(p);
    }
    std::fs::create_dir_all(FALLBACK_MOUNT).with_context(|| format!("mkdir {FALLBACK_MOUNT}"))?;
    nix::mount::mount(Some("cgroup2"), FALLBACK_MOUNT, Some("cgroup2"), nix::mount::MsFlags::empty(), None::<&str>)
        .with_context(|| format!("mounting cgroup2 at {FALLBACK_MOUNT}"))?;
    Ok(PathBuf::from(FALLBACK_MOUNT))
}

fn find_cgroup2_mount() -> Result<Option<PathBuf>> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    for line in mounts.lines() {
        let mut f = line.split_whitespace();
        let (_src, target, fstype) = (f.next(), f.next(), f.next());
        if let (Some(target), Some("cgroup2")) = (target, fstype) {
            let p = PathBuf::from(crate::mounts::unescape(target));
            if p.join("cgroup.procs").exists() {
                return Ok(Some(p));
            }
        }
    }
    Ok(None)
}

/// Every cgroup directory at or below `base`, deepest first (the order rmdir
/// needs, since a cgroup with children cannot be removed).
pub(crate) fn subtree_deepest_first(base: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    walk(&e.path(), out);
                }
            }
        }
        out.push(dir.to_path_buf());
    }
    let mut out = Vec::new();
    if base.is_dir() {
        walk(base, &mut out);
    }
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out
}

pub(crate) fn is_populated(cg: &Path) -> bool {
    std::fs::read_to_string(cg.join("cgroup.procs")).map(|s| !s.trim().is_empty()).unwrap_or(false)
}
