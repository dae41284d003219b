//! `netbee exec`: the CLI joins the container's namespaces itself (like nsenter) and runs the
//! command, so stdio and the exit code are the caller's without streaming through the daemon.
use std::{ffi::CString, fs::File};

use anyhow::{Context as _, Result, anyhow};
use nix::{
    sched::{CloneFlags, setns},
    sys::wait::{WaitStatus, waitpid},
    unistd::{ForkResult, fork},
};

/// Must run while the process is single-threaded (joining a mount namespace requires it).
pub fn exec_in(pid: i32, cmd: &[String], env: &[String], workdir: Option<&str>) -> Result<i32> {
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
    for (f, flag, k) in &files {
        setns(f, *flag).with_context(|| format!("joining the container's {k} namespace"))?;
    }
    let argv: Vec<CString> = cmd.iter().map(|a| CString::new(a.as_str())).collect::<Result<_, _>>()?;
    let envp: Vec<CString> = env.iter().map(|a| CString::new(a.as_str())).collect::<Result<_, _>>()?;
    // entering a PID namespace applies to children only
    match unsafe { fork() }? {
        ForkResult::Child => {
            let _ = std::env::set_current_dir(workdir.unwrap_or("/"));
            let err = nix::unistd::execvpe(&argv[0], &argv, &envp).unwrap_err();
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
