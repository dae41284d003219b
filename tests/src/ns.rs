//! A network namespace of the lab, and ways to run things inside it.

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::util;

/// A named network namespace (`/run/netns/<name>`) created by the lab.
#[derive(Debug)]
pub struct Ns {
    name: String,
    addr: Option<Ipv4Addr>,
    /// Set for nodes: everything started via [`Ns::cmd`] also joins the node
    /// cgroup, so that `cgroup.kill` at teardown reaches it.
    cgroup: Option<PathBuf>,
}

impl Ns {
    pub(crate) fn new(name: String, addr: Option<Ipv4Addr>, cgroup: Option<PathBuf>) -> Ns {
        Ns { name, addr, cgroup }
    }

    /// The netns name, usable with `ip -n`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The underlay address on `eth0`. Panics for the underlay namespace
    /// itself, which has no address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr.unwrap_or_else(|| panic!("netns {} has no underlay address", self.name))
    }

    pub(crate) fn path(&self) -> PathBuf {
        netns_path(&self.name)
    }

    /// A command that runs in this namespace. Only the network namespace is
    /// switched (unlike `ip netns exec`, which also remounts /sys in a private
    /// mount namespace), so mounts made by the child stay visible to the lab
    /// and get cleaned up with it. For nodes the child also joins the node
    /// cgroup.
    pub fn cmd(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        enter_in_child(&mut cmd, &self.path(), self.cgroup.as_deref());
        cmd
    }

    /// A command that runs in this network namespace but stays in the caller's cgroup: for a
    /// short command the caller waits for (a CLI call timed by the bench). Moving a process into a
    /// cgroup waits for an RCU grace period, 2 ms on a quiet machine and tens on a busy one; a
    /// user's shell on a node does not pay it per command.
    pub fn cmd_in_netns(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        enter_in_child(&mut cmd, &self.path(), None);
        cmd
    }

    /// Runs `bash -c script` in this namespace and returns its stdout.
    pub fn sh(&self, script: &str) -> Result<String> {
        let mut cmd = self.cmd("bash");
        cmd.arg("-c").arg(script);
        let out = cmd.output().with_context(|| format!("spawning bash in netns {}", self.name))?;
        if !out.status.success() {
            anyhow::bail!("in netns {}: `{script}` failed: {}", self.name, util::format_output(&out));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `f` on a fresh thread that has entered this network namespace, so
    /// sockets it opens live there (and keep living there when returned).
    /// Panics in `f` propagate to the caller.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
        let name = self.name.clone();
        let handle = std::thread::Builder::new()
            .name(format!("netns-{name}"))
            .spawn(move || {
                enter_thread(&path).unwrap_or_else(|e| panic!("entering netns {name}: {e:#}"));
                f()
            })
            .expect("spawning netns thread");
        match handle.join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    }

    /// Turns off TX checksum offload on an interface in this namespace; veth
    /// pairs otherwise hand out packets with partial checksums that eBPF
    /// programs rewriting headers can trip over.
    pub fn disable_tx_offload(&self, ifname: &str) -> Result<()> {
        let mut cmd = self.cmd("ethtool");
        cmd.args(["-K", ifname, "tx", "off"]);
        util::check_output(cmd).with_context(|| format!("disabling tx offload on {ifname} in netns {}", self.name))?;
        Ok(())
    }
}

pub(crate) fn netns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// Moves the calling thread into a network namespace.
pub(crate) fn enter_thread(path: &Path) -> Result<()> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("setns({})", path.display()))?;
    Ok(())
}

/// Arranges for the child (between fork and exec) to enter the network
/// namespace at `netns` and, if given, the cgroup directory `cgroup`.
pub(crate) fn enter_in_child(cmd: &mut Command, netns: &Path, cgroup: Option<&Path>) {
    // Paths are prepared here because the pre_exec hook must not allocate:
    // the parent is multi-threaded, so only async-signal-safe calls are allowed.
    let netns = util::cstring(netns);
    let procs = cgroup.map(|c| util::cstring(&c.join("cgroup.procs")));
    // SAFETY: the hook only calls open/setns/write/close, which are
    // async-signal-safe, and touches no memory shared with other threads.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(netns.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let rc = libc::setns(fd, libc::CLONE_NEWNET);
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            if rc != 0 {
                return Err(err);
            }
            if let Some(procs) = &procs {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0" means the writing process itself.
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if n != 1 {
                    return Err(err);
                }
            }
            Ok(())
        });
    }
}
