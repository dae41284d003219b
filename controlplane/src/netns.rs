//! Network namespaces as files: a container's namespace is bind-mounted onto a file under the
//! daemon's state directory (as `ip netns add` does under /run/netns), so it outlives every
//! process and the daemon can reach it again after a restart.
use std::{
    fs::File,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use nix::{
    mount::{MntFlags, MsFlags, mount, umount2},
    sched::{CloneFlags, setns, unshare},
};

/// Creates a fresh network namespace pinned at `path`.
pub fn create(path: &Path) -> Result<()> {
    if path.exists() && is_mounted(path) {
        bail!("network namespace {} already exists", path.display());
    }
    File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let target = path.to_path_buf();
    // unshare() switches the calling thread only; a throwaway thread keeps the daemon's threads
    // in the node's namespace.
    std::thread::spawn(move || -> Result<()> {
        unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
        mount(Some("/proc/thread-self/ns/net"), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .with_context(|| format!("bind-mounting the new namespace on {}", target.display()))?;
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("netns creation thread panicked"))??;
    Ok(())
}

pub fn remove(path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    if is_mounted(path) {
        umount2(path, MntFlags::MNT_DETACH).with_context(|| format!("unmounting {}", path.display()))?;
    }
    std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    Ok(())
}

pub fn is_mounted(path: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    let p = mountinfo_escape(&path.to_string_lossy());
    mounts.lines().any(|l| l.split(' ').nth(4) == Some(p.as_str()))
}

/// A path as /proc/self/mountinfo writes it: space, tab, newline and backslash as octal escapes
/// (a state directory with a space in its path used to look unmounted, leaking its mounts).
fn mountinfo_escape(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        match c {
            ' ' => out.push_str("\\040"),
            '\t' => out.push_str("\\011"),
            '\n' => out.push_str("\\012"),
            '\\' => out.push_str("\\134"),
            c => out.push(c),
        }
    }
    out
}

/// Runs `f` on a new thread that has entered the namespace at `path`, with its own
/// single-threaded tokio runtime (so netlink sockets opened inside belong to that namespace).
pub fn run_in<T, F, Fut>(path: PathBuf, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>>,
{
    std::thread::spawn(move || -> Result<T> {
        let ns = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("entering network namespace {}", path.display()))?;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("namespace worker thread panicked"))?
}

#[cfg(test)]
mod tests {
    #[test]
    fn mountinfo_escapes() {
        assert_eq!(super::mountinfo_escape("/var/lib/net bee\\x"), "/var/lib/net\\040bee\\134x");
        assert_eq!(super::mountinfo_escape("/plain"), "/plain");
    }
}
