//! What a daemon may consider its own, checked before it touches anything. Start-up reconcile
//! removes every netbee-named kernel object its store does not know, so two things must never
//! happen: two daemons managing one network namespace (each would remove the other's interfaces)
//! or one bpffs (pinned links and maps), and a daemon starting over an empty or lost store while
//! the node still runs what an earlier store described (it would cut every container off).
use std::{
    fs::File,
    io::Write as _,
    os::{fd::AsRawFd as _, unix::fs::FileTypeExt as _},
    path::Path,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    model::{ContainerRecord, NetworkRecord},
    store::Store,
};

/// Locks held for the daemon's lifetime (released by the kernel when the process ends).
pub struct Claims {
    _files: Vec<File>,
}

/// Claims the state directory, this network namespace and the bpffs, and checks the socket path,
/// refusing with a message that names the other daemon when any is taken.
pub fn claim(root: &Path, socket: &Path, bpffs: &Path) -> Result<Claims> {
    let files = vec![lock_file(&root.join("daemon.lock"), root)?, lock_netns()?, lock_bpffs(bpffs)?];
    check_socket(socket)?;
    Ok(Claims { _files: files })
}

/// Takes an exclusive lock on the state directory's lock file and writes who holds it, or says
/// who does.
fn lock_file(path: &Path, root: &Path) -> Result<File> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening the lock file {}", path.display()))?;
    if !try_lock(&f) {
        let holder = std::fs::read_to_string(path).unwrap_or_default();
        bail!("another netbee daemon ({}) is already using {}", holder.trim(), root.display());
    }
    f.set_len(0)?;
    write!(f, "pid {}", std::process::id())?;
    Ok(f)
}

/// The network namespace's own file: every process in the namespace opens the same inode, so
/// the lock is per namespace, needs no file of ours, and ends with the process.
fn lock_netns() -> Result<File> {
    let f = File::open("/proc/self/ns/net").context("opening this process's network namespace")?;
    if !try_lock(&f) {
        bail!(
            "another netbee daemon already manages this network namespace: two daemons would remove each other's interfaces and links"
        );
    }
    Ok(f)
}

/// The bpffs is locked as a directory (it holds only BPF objects).
fn lock_bpffs(dir: &Path) -> Result<File> {
    crate::datapath::ensure_bpffs(dir)?;
    let f = File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
    if !try_lock(&f) {
        bail!(
            "another netbee daemon already uses the bpffs at {}: its pinned links and maps are that daemon's",
            dir.display()
        );
    }
    Ok(f)
}

fn try_lock(f: &File) -> bool {
    // SAFETY: flock on a descriptor this function borrows; no memory is involved
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// The API socket path must be free or a stale socket: never a regular file (it would be
/// deleted) and never a socket another daemon answers on (it would be taken over).
fn check_socket(socket: &Path) -> Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(socket) else { return Ok(()) };
    if !meta.file_type().is_socket() {
        bail!("--socket {} exists and is not a socket: refusing to replace it", socket.display());
    }
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        bail!("another netbee daemon answers on {}: choose another --socket", socket.display());
    }
    Ok(())
}

/// Refuses to start over a store that knows no container while the node still has containers,
/// namespaces or endpoint links of an earlier state (the store was emptied, deleted or replaced):
/// start-up reconcile would remove them all. `discard` is the operator's decision to do exactly
/// that and begin empty.
pub fn check_store_matches_node(store: &Store, root: &Path, pinned_endpoints: usize, discard: bool) -> Result<()> {
    let containers = store.list::<ContainerRecord>()?.len();
    let user_networks = store.list::<NetworkRecord>()?.len();
    if containers > 0 || user_networks > 0 || discard {
        return Ok(());
    }
    let count = |dir: &str| std::fs::read_dir(root.join(dir)).map(|d| d.count()).unwrap_or(0);
    let (dirs, namespaces) = (count("containers"), count("netns"));
    if dirs == 0 && namespaces == 0 && pinned_endpoints == 0 {
        return Ok(());
    }
    bail!(
        "the state database {} is empty or new, but this node still has what an earlier one described \
         ({dirs} container directories, {namespaces} container network namespaces, {pinned_endpoints} pinned endpoint links): \
         starting would remove their networking. Restore the database, or start with --discard-state to remove that state and begin empty",
        root.join("netbee.redb").display()
    )
}
