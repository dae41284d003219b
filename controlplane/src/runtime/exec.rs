//! Running a command in a running container: join its namespaces (like nsenter) and its root,
//! then fork the command there. `netbee exec` (the CLI) does it itself, with the caller's stdio;
//! the daemon's exec instances (docker's `exec`) through `netbee exec-in` (the spec in
//! `NETBEE_EXEC_SPEC`), a helper it spawns with the exec's terminal or pipes as stdio
//! ([`helper_main`]).
use std::{ffi::CString, fs::File, os::unix::fs::PermissionsExt as _};

use anyhow::{Context as _, Result, anyhow};
use nix::{
    sched::{CloneFlags, setns},
    sys::{
        signal::{SigHandler, Signal, signal},
        wait::{WaitStatus, waitpid},
    },
    unistd::{ForkResult, Gid, Uid, fchdir, fork},
};
use serde::{Deserialize, Serialize};

use super::process;

/// What `netbee exec-in` runs, as the daemon computed it (env, user and working directory
/// already the container's where the exec gave none).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExecSpec {
    /// The container's init (its namespaces and root are joined).
    pub pid: i32,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: String,
    /// stdin is a terminal: it becomes the command's controlling terminal.
    pub tty: bool,
}

/// `netbee exec-in`: runs before any async runtime exists; exits with the command's code
/// (126 when it could not be run, the reason on stderr, which is the exec's).
pub fn helper_main(spec: &str) -> i32 {
    let r = serde_json::from_str::<ExecSpec>(spec)
        .map_err(anyhow::Error::from)
        .and_then(|s| exec_in(s.pid, &s.cmd, &s.env, s.workdir.as_deref(), &s.user, s.tty));
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("netbee exec: {e:#}");
            126
        }
    }
}

/// Must run while the process is single-threaded (joining a mount namespace requires it).
/// `user` is resolved in the container's root, as for its main process; empty keeps root. With
/// `tty`, stdin is a terminal the command gets as its controlling one, in a session of its own.
pub fn exec_in(pid: i32, cmd: &[String], env: &[String], workdir: Option<&str>, user: &str, tty: bool) -> Result<i32> {
    if cmd.is_empty() {
        return Err(anyhow!("no command given"));
    }
    let kinds = [
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ];
    // open every namespace before entering any: /proc changes meaning after the mount switch
    let files: Vec<(File, CloneFlags, &str)> = kinds
        .iter()
        .map(|(k, f)| {
            File::open(format!("/proc/{pid}/ns/{k}"))
                .map(|file| (file, *f, *k))
                .with_context(|| format!("container process {pid} is gone"))
        })
        .collect::<Result<_>>()?;
    // the container's root as its init sees it (an image's pivoted root, or the node's)
    let root = File::open(format!("/proc/{pid}/root")).with_context(|| format!("container process {pid} is gone"))?;
    for (f, flag, k) in &files {
        setns(f, *flag).with_context(|| format!("joining the container's {k} namespace"))?;
    }
    // joining a mount namespace leaves this process at the namespace's first root; the
    // container's init may have pivoted into an image's root since
    fchdir(&root).context("entering the container's root")?;
    nix::unistd::chroot(".").context("entering the container's root")?;
    let user = if user.is_empty() {
        None
    } else {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        Some(process::resolve_user(user, &read("/etc/passwd"), &read("/etc/group")).map_err(|e| anyhow!(e))?)
    };
    let mut env = env.to_vec();
    if let Some(u) = &user
        && process::env_value(&env, "HOME").is_none()
    {
        env.push(format!("HOME={}", u.home));
    }
    // the program is looked up in the container's PATH and root; execvp's own lookup (in this
    // CLI's PATH) stays the fallback, as before images existed
    let path = process::env_value(&env, "PATH").unwrap_or("/usr/local/bin:/usr/bin:/bin").to_string();
    let found = process::lookup_program(&cmd[0], &path, |c| {
        std::fs::metadata(c).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    });
    let argv: Vec<CString> = cmd.iter().map(|a| CString::new(a.as_str())).collect::<Result<_, _>>()?;
    let envp: Vec<CString> = env.iter().map(|a| CString::new(a.as_str())).collect::<Result<_, _>>()?;
    let program = CString::new(found.map(|p| p.to_string_lossy().into_owned()).unwrap_or_else(|| cmd[0].clone()))?;
    // entering a PID namespace applies to children only
    match unsafe { fork() }? {
        ForkResult::Child => {
            // Rust ignores SIGPIPE, and an ignored signal stays ignored across exec
            // SAFETY: restores the default disposition in a single-threaded child
            let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
            if tty {
                let made = nix::unistd::setsid().map(drop).and_then(|_| super::pty::make_controlling(std::io::stdin()));
                if let Err(e) = made {
                    eprintln!("netbee exec: cannot take the terminal: {e}");
                    std::process::exit(126)
                }
            }
            if let Some(u) = &user {
                let groups: Vec<Gid> = u.groups.iter().map(|g| Gid::from_raw(*g)).collect();
                let switched = nix::unistd::setgroups(&groups)
                    .and_then(|_| nix::unistd::setgid(Gid::from_raw(u.gid)))
                    .and_then(|_| nix::unistd::setuid(Uid::from_raw(u.uid)));
                if let Err(e) = switched {
                    eprintln!("netbee exec: cannot run as user {user:?}: {e}");
                    std::process::exit(126)
                }
            }
            let _ = std::env::set_current_dir(workdir.unwrap_or("/"));
            let err = nix::unistd::execvpe(&program, &argv, &envp).unwrap_err();
            eprintln!("netbee exec: cannot run {:?}: {err}", cmd[0]);
            std::process::exit(if err == nix::errno::Errno::ENOENT { 127 } else { 126 })
        }
        ForkResult::Parent { child } => loop {
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, c)) => return Ok(c),
                Ok(WaitStatus::Signaled(_, s, _)) => return Ok(128 + s as i32),
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        },
    }
}
