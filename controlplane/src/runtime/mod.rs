//! Containers as Linux namespaces around an image's root filesystem (or the node's own root for
//! the reserved image `host`). The daemon never is the parent of a
//! container: a detached shim creates the namespaces, forks the container's init (PID 1 inside,
//! which forwards signals and reaps orphans), waits for it and records its exit status in a file.
//! The daemon can therefore stop, crash or upgrade while containers keep running, and re-adopt
//! them from the store, the shim's PID and the exit file.
pub mod attach;
pub mod exec;
pub mod process;
pub mod pty;
pub mod rootfs;
pub mod shim;
mod shim_io;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Everything the shim needs, written by the daemon to `<container dir>/shim.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShimSpec {
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub hostname: String,
    /// Network namespace to join; None keeps the node's (`--network host`).
    pub netns: Option<PathBuf>,
    pub hosts: PathBuf,
    pub resolv: PathBuf,
    pub hostname_file: PathBuf,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    pub workdir: Option<String>,
    pub exit_file: PathBuf,
    /// The image's overlayfs root to pivot into; None runs on the node's root (image `host`).
    #[serde(default)]
    pub rootfs: Option<rootfs::RootfsSpec>,
    /// `uid[:gid]` or `name[:group]`, resolved inside the container's root; empty is root.
    #[serde(default)]
    pub user: String,
    /// docker's `Tty`: the program's stdin, stdout and stderr are a terminal whose master the
    /// shim keeps; its output goes to `stdout` (the log) as it comes.
    #[serde(default)]
    pub tty: bool,
    /// docker's `OpenStdin`: a pipe (or the terminal) the shim writes attached clients' input to;
    /// otherwise stdin is /dev/null.
    #[serde(default)]
    pub open_stdin: bool,
    /// The terminal's first size (rows, columns), docker's `ConsoleSize`.
    #[serde(default)]
    pub console_size: Option<(u16, u16)>,
    /// The inherited descriptor of the container's attach point (`attach::SOCKET`, bound by the
    /// daemon, which may have connected clients to it already); None: no attach point.
    #[serde(default)]
    pub attach_fd: Option<i32>,
}

/// How the container's main process ended, as the shim records it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExitRecord {
    pub exit_code: i32,
    pub finished_at: chrono::DateTime<chrono::Utc>,
}

/// Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat): with the PID
/// it identifies a process even after PID reuse.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm may contain spaces and parentheses: fields start after the last ')'
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

pub fn process_alive(pid: i32, start_time: u64) -> bool {
    pid > 0 && process_start_time(pid) == Some(start_time)
}
