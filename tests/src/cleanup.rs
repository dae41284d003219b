//! Teardown of a lab, shared by `Drop for Lab` and [`sweep_stale`].
//!
//! Teardown is driven by the lab's prefix, not only by what the `Lab` value
//! remembers: namespaces are found under `/run/netns/<prefix>*`, cgroups
//! under `<cgroup2>/netbee-lab/<prefix>`, mounts under the lab dir. That way
//! a lab whose setup failed half way, or whose owner process died, is
//! removed just as completely as a healthy one.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Result;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::node::Node;
use crate::{LAB_ROOT, cgroup, mounts, util};

const CGROUP_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) struct Teardown<'a> {
    pub prefix: &'a str,
    pub dir: PathBuf,
    pub cgroup_base: Option<PathBuf>,
    pub nodes: &'a [Node],
}

impl Teardown<'_> {
    /// Every step is best effort: a failure is reported and the next step
    /// still runs, because a half-cleaned lab is worse than a noisy one.
    pub(crate) fn run(&self) {
        let cgroups = self.cgroup_base.as_deref().map(cgroup::subtree_deepest_first).unwrap_or_default();

        // cgroup.kill reaches the daemon and every container it started,
        // wherever in the subtree they were placed.
        for cg in &cgroups {
            let _ = std::fs::write(cg.join("cgroup.kill"), "1");
        }
        for node in self.nodes {
            if let Err(e) = node.kill_daemon() {
                eprintln!("netbee-lab: killing daemon of {}: {e:#}", node.name());
            }
        }

        let namespaces = lab_namespaces(self.prefix);
        let me = std::process::id();
        for ns in &namespaces {
            let Ok(out) = util::ip(&["netns", "pids", ns]) else {
                continue;
            };
            for pid in out.split_whitespace().filter_map(|p| p.parse::<u32>().ok()) {
                // A test may have moved its main thread into a lab netns.
                if pid != me && pid > 1 {
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                }
            }
        }

        let started = Instant::now();
        while cgroups.iter().any(|c| cgroup::is_populated(c)) {
            if started.elapsed() > CGROUP_DRAIN_TIMEOUT {
                eprintln!("netbee-lab: {}: cgroups still populated after {CGROUP_DRAIN_TIMEOUT:?}", self.prefix);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }

        // Unmount before deleting namespaces: bind-mounted netns files keep
        // container namespaces (and their veths) alive.
        let left = mounts::unmount_all_under(&self.dir);

        for ns in &namespaces {
            if let Err(e) = util::ip(&["netns", "del", ns]) {
                eprintln!("netbee-lab: {e:#}");
                let p = crate::ns::netns_path(ns);
                let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
                let _ = std::fs::remove_file(&p);
            }
        }

        for cg in &cgroups {
            if let Err(e) = std::fs::remove_dir(cg)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                eprintln!("netbee-lab: rmdir {}: {e}", cg.display());
            }
        }

        // remove_dir_all does not stop at mount points; deleting through a
        // leftover bind mount could destroy files that are not the lab's.
        if !left.is_empty() {
            eprintln!("netbee-lab: not removing {}: still mounted: {left:?}", self.dir.display());
        } else if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("netbee-lab: rm -r {}: {e}", self.dir.display());
        }
    }
}

/// Namespaces belonging to a lab. All prefixes have the same length, so a
/// name starting with one prefix can never belong to another lab.
pub(crate) fn lab_namespaces(prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    v.sort();
    v
}

/// "nbl" followed by 5 of [a-z0-9].
pub(crate) fn is_prefix(s: &str) -> bool {
    s.len() == crate::PREFIX_LEN
        && s.starts_with("nbl")
        && s.bytes().skip(3).all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// The start time (clock ticks since boot) of a live process, None if it
/// does not exist or is a zombie. Used to tell a lab's owner from a later
/// process that reused its pid.
pub(crate) fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") || fields.first() == Some(&"X") {
        return None;
    }
    // Field 22 of stat; `rest` starts at field 3.
    fields.get(19)?.parse().ok()
}

fn owner_alive(dir: &Path) -> bool {
    let Some(pid) = std::fs::read_to_string(dir.join("owner.pid")).ok().and_then(|s| s.trim().parse::<u32>().ok())
    else {
        // Labs appear atomically with owner.pid (see Lab::new), so a lab dir
        // without one is debris.
        return false;
    };
    let Some(start) = process_start_time(pid) else {
        return false;
    };
    match std::fs::read_to_string(dir.join("owner.start")) {
        Ok(s) => s.trim().parse::<u64>().ok() == Some(start),
        Err(_) => true,
    }
}

/// The creating pid of a temporary `.<prefix>.<pid>.tmp` lab dir.
fn half_made_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?.strip_suffix(".tmp")?;
    let (prefix, pid) = rest.split_once('.')?;
    if !is_prefix(prefix) {
        return None;
    }
    pid.parse().ok()
}

/// Removes what is left of labs whose owner process is gone: lab dirs whose
/// `owner.pid` is dead, and namespaces or cgroups with a lab prefix but no
/// lab dir. Uses the same steps as dropping a `Lab`.
pub fn sweep_stale() -> Result<()> {
    let cg_parent = cgroup::cgroup2_root().ok().map(|r| r.join(crate::CGROUP_PARENT));
    let mut stale: Vec<String> = Vec::new();

    for e in std::fs::read_dir(LAB_ROOT).into_iter().flatten().flatten() {
        let Ok(name) = e.file_name().into_string() else {
            continue;
        };
        if is_prefix(&name) && !owner_alive(&e.path()) {
            stale.push(name);
        } else if let Some(pid) = half_made_owner(&name)
            && process_start_time(pid).is_none()
        {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    let orphan = |p: &str| is_prefix(p) && !Path::new(LAB_ROOT).join(p).exists();
    for e in std::fs::read_dir("/run/netns").into_iter().flatten().flatten() {
        let Ok(name) = e.file_name().into_string() else {
            continue;
        };
        if let Some(p) = name.get(..crate::PREFIX_LEN)
            && name.len() > p.len()
            && orphan(p)
        {
            stale.push(p.to_string());
        }
    }
    if let Some(parent) = &cg_parent {
        for e in std::fs::read_dir(parent).into_iter().flatten().flatten() {
            let Ok(name) = e.file_name().into_string() else {
                continue;
            };
            if orphan(&name) {
                stale.push(name);
            }
        }
    }
    stale.sort();
    stale.dedup();

    for prefix in &stale {
        eprintln!("netbee-lab: sweeping stale lab {prefix}");
        Teardown {
            prefix,
            dir: Path::new(LAB_ROOT).join(prefix),
            cgroup_base: cg_parent.as_ref().map(|p| p.join(prefix)),
            nodes: &[],
        }
        .run();
    }
    Ok(())
}
