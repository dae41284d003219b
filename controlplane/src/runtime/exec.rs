//! `netbee exec`: the CLI joins the container's namespaces itself (like nsenter) and runs the
//! command, so stdio and the exit code are the caller's without streaming through the daemon.
use std::{ffi::CString, fs::File, os::unix::fs::PermissionsExt as _};

use anyhow::{Context as _, Result, anyhow};
use nix::{
    sched::{CloneFlags, setns},
    sys::wait::{WaitStatus, waitpid},
    unistd::{ForkResult, Gid, Uid, fchdir, fork},
};

use super::process;

/// Must run while the process is single-threaded (joining a mount namespace requires it).
/// `user` is resolved in the container's root, as for its main process; empty keeps root.
pub fn exec_in(pid: i32, cmd: &[String], env: &[String], workdir: Option<&str>, user: &str) -> Result<i32> {
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
