//! A container's root filesystem: the image's layers under an overlayfs with the container's
//! writable layer on top, netbee's `/etc` files, `/proc`, `/sys` and a minimal `/dev` inside it,
//! entered with `pivot_root`. Runs in the container's init, in its own mount namespace, so
//! nothing here is visible in the node's mount table; the mounts live as long as the container's
//! processes hold the namespace.
use std::{
    fs::{self, File},
    os::unix::fs::{DirBuilderExt as _, symlink},
    path::{Component, Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use serde::{Deserialize, Serialize};

/// The directories of a container's overlayfs root.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RootfsSpec {
    /// The image's unpacked layers, topmost first (overlayfs `lowerdir` order).
    pub lower: Vec<PathBuf>,
    /// The container's writable layer, kept until the container is removed.
    pub upper: PathBuf,
    /// overlayfs' scratch directory, on the same filesystem as `upper`.
    pub work: PathBuf,
    /// Where the stack is mounted and what becomes `/`.
    pub merged: PathBuf,
}

impl RootfsSpec {
    /// The layout under a container's directory: `rootfs/{upper,work,merged}`.
    pub fn in_container_dir(dir: &Path, lower: Vec<PathBuf>) -> Self {
        let r = dir.join("rootfs");
        RootfsSpec { lower, upper: r.join("upper"), work: r.join("work"), merged: r.join("merged") }
    }
}

/// The mount data the kernel accepts at most (one page, with its terminating NUL).
pub const MOUNT_DATA_MAX: usize = 4095;

/// overlayfs mount options and the directory they are relative to, if any.
#[derive(Debug, PartialEq, Eq)]
pub struct OverlayOptions {
    pub data: String,
    /// Set when absolute paths did not fit: the mount must be made from this directory.
    pub chdir: Option<PathBuf>,
}

/// Builds `lowerdir=a:b,upperdir=u,workdir=w`. Images with many layers under a long state
/// directory outgrow one page of mount data; then the paths are written relative to their
/// common parent, which the caller makes its working directory for the mount.
pub fn overlay_options(r: &RootfsSpec, max: usize) -> Result<OverlayOptions> {
    if r.lower.is_empty() {
        bail!("an overlayfs root needs at least one lower layer");
    }
    for p in r.lower.iter().chain([&r.upper, &r.work]) {
        let s = p.to_str().ok_or_else(|| anyhow!("layer path {} is not UTF-8", p.display()))?;
        // ',' separates options and ':' lower layers; the kernel's escapes differ between
        // versions, so such paths are refused rather than guessed at
        if s.contains([',', ':', '\\']) || !p.is_absolute() {
            bail!("layer path {s:?} cannot be given to overlayfs (it must be absolute, without ',', ':' or '\\')");
        }
    }
    let build = |f: &dyn Fn(&Path) -> String| {
        let lower: Vec<String> = r.lower.iter().map(|p| f(p)).collect();
        format!("lowerdir={},upperdir={},workdir={}", lower.join(":"), f(&r.upper), f(&r.work))
    };
    let data = build(&|p| p.display().to_string());
    if data.len() <= max {
        return Ok(OverlayOptions { data, chdir: None });
    }
    let base = r.lower.iter().chain([&r.upper, &r.work]).fold(None::<PathBuf>, |acc, p| {
        let parent = p.parent().unwrap_or(p).to_path_buf();
        Some(match acc {
            None => parent,
            Some(a) => common_ancestor(&a, &parent),
        })
    });
    let base = base.expect("at least one path");
    let data = build(&|p| p.strip_prefix(&base).expect("under the common ancestor").display().to_string());
    if data.len() > max {
        bail!(
            "the image's {} layers do not fit in one overlayfs mount ({} bytes of options, the kernel takes {max})",
            r.lower.len(),
            data.len()
        );
    }
    Ok(OverlayOptions { data, chdir: Some(base) })
}

fn common_ancestor(a: &Path, b: &Path) -> PathBuf {
    a.components().zip(b.components()).take_while(|(x, y)| x == y).map(|(x, _)| x).collect()
}

/// Mounts the root, fills it and pivots into it. `etc_files` are (source on the node, path in
/// the container) pairs bind-mounted read-write, as docker's hosts/resolv.conf/hostname.
pub fn enter(r: &RootfsSpec, etc_files: &[(&Path, &str)]) -> Result<()> {
    let opts = overlay_options(r, MOUNT_DATA_MAX)?;
    if let Some(dir) = &opts.chdir {
        std::env::set_current_dir(dir).with_context(|| format!("entering {}", dir.display()))?;
    }
    mount(Some("overlay"), &r.merged, Some("overlay"), MsFlags::empty(), Some(opts.data.as_str()))
        .with_context(|| format!("mounting the overlayfs root on {}", r.merged.display()))?;
    let root = &r.merged;
    for (src, dst) in etc_files {
        let target = prepare(root, dst, Kind::File)?;
        mount(Some(*src), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .with_context(|| format!("bind-mounting {} on {dst}", src.display()))?;
    }
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let proc = prepare(root, "/proc", Kind::Dir)?;
    mount(Some("proc"), &proc, Some("proc"), nosuid, None::<&str>).context("mounting /proc")?;
    let sys = prepare(root, "/sys", Kind::Dir)?;
    // sysfs shows the network namespace's own interfaces; not essential (as on the host's root)
    let _ = mount(Some("sysfs"), &sys, Some("sysfs"), nosuid | MsFlags::MS_RDONLY, None::<&str>);
    minimal_dev(root)?;
    pivot(root)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
}

/// The host path of `inside` (an absolute path in the container), made to exist as a `kind`
/// without following symlinks: the image is untrusted, and before `pivot_root` a symlink such
/// as `/etc/hosts -> /etc/shadow` would resolve on the node's root. Symlinks on the way are
/// replaced (in the container's writable layer) by a directory or an empty file.
fn prepare(root: &Path, inside: &str, kind: Kind) -> Result<PathBuf> {
    let rel = Path::new(inside);
    let parts: Vec<_> = rel.components().filter(|c| matches!(c, Component::Normal(_))).collect();
    if parts.len() != rel.components().filter(|c| !matches!(c, Component::RootDir)).count() || parts.is_empty() {
        bail!("{inside:?} is not a plain absolute path");
    }
    let mut path = root.to_path_buf();
    for (i, part) in parts.iter().enumerate() {
        path.push(part);
        let want = if i + 1 == parts.len() { kind } else { Kind::Dir };
        match fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => {
                fs::remove_file(&path).with_context(|| format!("replacing the symlink {}", path.display()))?;
                create(&path, want)?;
            }
            Ok(m) if (want == Kind::Dir) != m.is_dir() => {
                bail!("{inside:?} in the image is not a {}", if want == Kind::Dir { "directory" } else { "file" })
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(&path, want)?,
            Err(e) => return Err(anyhow!("examining {}: {e}", path.display())),
        }
    }
    Ok(path)
}

fn create(path: &Path, kind: Kind) -> Result<()> {
    match kind {
        Kind::Dir => fs::DirBuilder::new().mode(0o755).create(path),
        Kind::File => File::create(path).map(drop),
    }
    .with_context(|| format!("creating {}", path.display()))
}

/// docker's minimal /dev: a tmpfs with the harmless device nodes (bound from the node's), a
/// private devpts, /dev/shm and the fd links.
fn minimal_dev(root: &Path) -> Result<()> {
    let dev = prepare(root, "/dev", Kind::Dir)?;
    mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )
    .context("mounting /dev")?;
    for node in ["null", "zero", "full", "random", "urandom", "tty"] {
        let target = dev.join(node);
        File::create(&target).with_context(|| format!("creating /dev/{node}"))?;
        mount(Some(Path::new("/dev").join(node).as_path()), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .with_context(|| format!("binding /dev/{node}"))?;
    }
    let pts = dev.join("pts");
    fs::DirBuilder::new().mode(0o755).create(&pts)?;
    // newinstance: the container's ptys are its own, not the node's
    mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )
    .context("mounting /dev/pts")?;
    symlink("pts/ptmx", dev.join("ptmx"))?;
    let shm = dev.join("shm");
    fs::DirBuilder::new().mode(0o1777).create(&shm)?;
    mount(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
    )
    .context("mounting /dev/shm")?;
    for (link, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlink(to, dev.join(link)).with_context(|| format!("creating /dev/{link}"))?;
    }
    Ok(())
}

/// Makes `root` the process's `/`. `pivot_root(".", ".")` stacks the old root on top of the new
/// one, so it can be detached at once, with no directory left in the container's writable layer
/// to hold it (pivot_root(2), "NOTES").
fn pivot(root: &Path) -> Result<()> {
    std::env::set_current_dir(root).with_context(|| format!("entering {}", root.display()))?;
    nix::unistd::pivot_root(".", ".").context("pivot_root into the container's root")?;
    umount2(".", MntFlags::MNT_DETACH).context("detaching the node's root")?;
    std::env::set_current_dir("/")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(base: &str, layers: usize) -> RootfsSpec {
        let lower = (0..layers).map(|i| PathBuf::from(format!("{base}/images/layers/{i:064}"))).collect();
        RootfsSpec::in_container_dir(&PathBuf::from(format!("{base}/containers/abc")), lower)
    }

    #[test]
    fn options_name_every_layer_topmost_first() {
        let o = overlay_options(&spec("/var/lib/netbee", 2), MOUNT_DATA_MAX).unwrap();
        let l0 = format!("/var/lib/netbee/images/layers/{:064}", 0);
        let l1 = format!("/var/lib/netbee/images/layers/{:064}", 1);
        assert_eq!(
            o.data,
            format!(
                "lowerdir={l0}:{l1},upperdir=/var/lib/netbee/containers/abc/rootfs/upper,workdir=/var/lib/netbee/containers/abc/rootfs/work"
            )
        );
        assert_eq!(o.chdir, None);
    }

    #[test]
    fn long_options_become_relative_to_the_common_parent() {
        let s = spec("/a/very/long/state/directory/of/a/node/in/a/lab/with/many/parts", 40);
        assert!(overlay_options(&s, MOUNT_DATA_MAX).is_ok());
        let o = overlay_options(&s, MOUNT_DATA_MAX).unwrap();
        let base = PathBuf::from("/a/very/long/state/directory/of/a/node/in/a/lab/with/many/parts");
        assert_eq!(o.chdir.as_deref(), Some(base.as_path()));
        assert!(o.data.starts_with(&format!("lowerdir=images/layers/{:064}:", 0)), "{}", o.data);
        assert!(o.data.ends_with(",upperdir=containers/abc/rootfs/upper,workdir=containers/abc/rootfs/work"));
        assert!(o.data.len() <= MOUNT_DATA_MAX);
    }

    #[test]
    fn options_that_never_fit_are_refused_clearly() {
        let e = overlay_options(&spec("/r", 200), MOUNT_DATA_MAX).unwrap_err().to_string();
        assert!(e.contains("200 layers do not fit"), "{e}");
    }

    #[test]
    fn unusable_paths_are_refused() {
        let mut s = spec("/r", 1);
        s.lower[0] = PathBuf::from("/r/a:b");
        assert!(overlay_options(&s, MOUNT_DATA_MAX).unwrap_err().to_string().contains("cannot be given"));
        s.lower.clear();
        assert!(overlay_options(&s, MOUNT_DATA_MAX).is_err());
    }

    #[test]
    fn prepared_paths_never_leave_the_root() {
        let dir = std::env::temp_dir().join(format!("netbee-prepare-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let outside = dir.join("outside");
        fs::create_dir_all(dir.join("root")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("hosts"), "secret").unwrap();
        let root = dir.join("root");
        // /etc -> the outside directory, as an image could ship it
        symlink(&outside, root.join("etc")).unwrap();
        let p = prepare(&root, "/etc/hosts", Kind::File).unwrap();
        assert_eq!(p, root.join("etc/hosts"));
        assert!(fs::symlink_metadata(root.join("etc")).unwrap().is_dir());
        assert_eq!(fs::read_to_string(outside.join("hosts")).unwrap(), "secret");
        symlink("/etc/passwd", root.join("etc/resolv.conf")).unwrap();
        let p = prepare(&root, "/etc/resolv.conf", Kind::File).unwrap();
        assert!(fs::symlink_metadata(&p).unwrap().is_file());
        assert!(prepare(&root, "/etc/hosts/x", Kind::Dir).is_err());
        assert!(prepare(&root, "/../x", Kind::Dir).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
