//! `netbee shim SPEC`: the per-container supervisor. Runs before any async runtime exists (it
//! must be single-threaded to unshare a mount namespace).
use std::{
    ffi::CString,
    fs::{File, OpenOptions},
    io::{IoSlice, IoSliceMut, Write as _},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::{
            fs::{DirBuilderExt as _, PermissionsExt as _},
            net::UnixListener,
        },
    },
    path::Path,
    sync::atomic::{AtomicI32, Ordering},
};

use anyhow::{Context as _, Result, anyhow};
use nix::{
    fcntl::{FcntlArg, FdFlag, OFlag, fcntl},
    mount::{MsFlags, mount},
    sched::{CloneFlags, setns, unshare},
    sys::{
        signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction},
        socket::{AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, socketpair},
        wait::{WaitStatus, waitpid},
    },
    unistd::{ForkResult, Gid, Pid, Uid, dup2_stderr, dup2_stdin, dup2_stdout, fork, pipe2, setsid},
};

use super::{ExitRecord, ShimSpec, process, pty, rootfs, shim_io};

/// Entry point. Reports "SHIM_PID INIT_PID" (host PIDs) or "error: ..." as one line on stdout.
pub fn main(spec_path: &Path) -> ! {
    let spec: ShimSpec = match std::fs::read(spec_path)
        .map_err(anyhow::Error::from)
        .and_then(|b| serde_json::from_slice(&b).map_err(Into::into))
    {
        Ok(s) => s,
        Err(e) => report_and_exit(&format!("error: reading {}: {e}", spec_path.display())),
    };
    // Detach: the daemon waits for this first process only; the real shim is reparented to init
    // (or the nearest subreaper) and survives the daemon.
    match unsafe { fork() } {
        Ok(ForkResult::Parent { .. }) => std::process::exit(0),
        Ok(ForkResult::Child) => {}
        Err(e) => report_and_exit(&format!("error: fork: {e}")),
    }
    let _ = setsid();
    match supervise(&spec) {
        Ok(code) => std::process::exit(code),
        Err(e) => report_and_exit(&format!("error: {e:#}")),
    }
}

fn report_and_exit(line: &str) -> ! {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    std::process::exit(1)
}

fn supervise(spec: &ShimSpec) -> Result<i32> {
    // the attach point the daemon bound (passed as an inherited descriptor, see `spawn_shim`);
    // none of the container's processes may keep it
    let listener = match spec.attach_fd {
        Some(fd) => {
            // SAFETY: the daemon passed this descriptor for the shim to own
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            fcntl(&fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).context("the attach point's descriptor")?;
            Some(UnixListener::from(fd))
        }
        None => None,
    };
    if let Some(ns) = &spec.netns {
        let f = File::open(ns).with_context(|| format!("opening {}", ns.display()))?;
        setns(&f, CloneFlags::CLONE_NEWNET).context("joining the container's network namespace")?;
    }
    // The mount namespace is the init's own (see `prepare_and_start`): `pivot_root` moves the
    // root of every process in the namespace, and this supervisor must keep the node's root to
    // record the exit status in the container's directory.
    unshare(CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWPID)
        .context("creating uts/ipc/pid namespaces")?;
    let stdio = Stdio::new(spec)?;
    // A start failure (a missing program or working directory, a refused hostname) is reported
    // through this pipe, so the daemon's `start` fails with the reason instead of a container
    // that exits 127 at once. Its write end closes on the program's exec (O_CLOEXEC): end of file
    // with nothing read means the program runs.
    let (failure_r, failure_w) = pipe2(OFlag::O_CLOEXEC).context("creating a pipe")?;
    let (init, stdio) = match unsafe { fork() }.context("forking the container's init")? {
        ForkResult::Child => {
            drop(failure_r);
            drop(listener);
            let code = match container_init(spec, failure_w, stdio.container_side()) {
                Ok(code) => code,
                Err(e) => {
                    let _ = OpenOptions::new()
                        .append(true)
                        .create(true)
                        .open(&spec.stderr)
                        .and_then(|mut f| writeln!(f, "netbee: {e:#}"));
                    127
                }
            };
            std::process::exit(code)
        }
        ForkResult::Parent { child } => (child, stdio.shim_side()),
    };
    drop(failure_w);
    let mut failure = String::new();
    let _ = std::io::Read::read_to_string(&mut File::from(failure_r), &mut failure);
    if !failure.is_empty() {
        let _ = waitpid(init, None);
        return Err(anyhow!("{}", failure.trim()));
    }
    let outputs = match stdio.outputs() {
        Ok(o) => o,
        Err(e) => {
            let _ = nix::sys::signal::kill(init, Signal::SIGKILL);
            let _ = waitpid(init, None);
            return Err(e);
        }
    };
    {
        let mut out = std::io::stdout();
        writeln!(out, "{} {}", std::process::id(), init.as_raw())?;
        out.flush()?;
    }
    // Nobody reads our stdout any more; keep the fd valid but disconnected from the daemon.
    let devnull = File::open("/dev/null")?;
    dup2_stdout(&devnull)?;
    dup2_stderr(&devnull)?;
    // the container's output to its logs and attached clients, their input to it, until it exits
    let code = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the shim's event loop")?
        .block_on(shim_io::relay(spec, init, listener, outputs))?;
    let rec = ExitRecord { exit_code: code, finished_at: chrono::Utc::now() };
    let tmp = spec.exit_file.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(&rec)?)?;
    std::fs::rename(&tmp, &spec.exit_file)?;
    Ok(0)
}

/// The container's standard streams: pipes whose other ends the shim keeps (stdin only with
/// `OpenStdin`, else /dev/null), or, with `Tty`, a socket over which the init sends the master
/// of the terminal it opens in the container's devpts (the slave is then all three).
enum Stdio {
    Pipes { stdin: Option<(OwnedFd, OwnedFd)>, stdout: (OwnedFd, OwnedFd), stderr: (OwnedFd, OwnedFd) },
    Tty { shim: OwnedFd, init: OwnedFd },
}

/// The container's side of [`Stdio`], in the init.
pub(super) enum ContainerStdio {
    Pipes { stdin: Option<OwnedFd>, stdout: OwnedFd, stderr: OwnedFd },
    Tty { to_shim: OwnedFd },
}

/// The shim's side of [`Stdio`] once the init forked.
enum ShimStdio {
    Pipes { stdin: Option<OwnedFd>, stdout: OwnedFd, stderr: OwnedFd },
    Tty { from_init: OwnedFd },
}

/// What the shim relays: the terminal's master, or the pipes.
pub(super) enum Outputs {
    Pipes { stdin: Option<OwnedFd>, stdout: OwnedFd, stderr: OwnedFd },
    Tty { master: OwnedFd },
}

impl Stdio {
    fn new(spec: &ShimSpec) -> Result<Stdio> {
        let pipe = || pipe2(OFlag::O_CLOEXEC).context("creating a pipe");
        if spec.tty {
            let (shim, init) = socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC)
                .context("socketpair")?;
            return Ok(Stdio::Tty { shim, init });
        }
        Ok(Stdio::Pipes { stdin: if spec.open_stdin { Some(pipe()?) } else { None }, stdout: pipe()?, stderr: pipe()? })
    }

    fn container_side(self) -> ContainerStdio {
        match self {
            Stdio::Pipes { stdin, stdout, stderr } => {
                ContainerStdio::Pipes { stdin: stdin.map(|(r, _)| r), stdout: stdout.1, stderr: stderr.1 }
            }
            Stdio::Tty { init, .. } => ContainerStdio::Tty { to_shim: init },
        }
    }

    fn shim_side(self) -> ShimStdio {
        match self {
            Stdio::Pipes { stdin, stdout, stderr } => {
                ShimStdio::Pipes { stdin: stdin.map(|(_, w)| w), stdout: stdout.0, stderr: stderr.0 }
            }
            Stdio::Tty { shim, .. } => ShimStdio::Tty { from_init: shim },
        }
    }
}

impl ShimStdio {
    /// Once the program runs: the terminal's master has been sent by then.
    fn outputs(self) -> Result<Outputs> {
        match self {
            ShimStdio::Pipes { stdin, stdout, stderr } => Ok(Outputs::Pipes { stdin, stdout, stderr }),
            ShimStdio::Tty { from_init } => Ok(Outputs::Tty { master: receive_fd(&from_init)? }),
        }
    }
}

fn send_fd(sock: &OwnedFd, fd: &OwnedFd) -> Result<()> {
    let fds = [fd.as_raw_fd()];
    nix::sys::socket::sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(b"t")],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .context("passing the terminal to the shim")?;
    Ok(())
}

fn receive_fd(sock: &OwnedFd) -> Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = nix::sys::socket::recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .context("receiving the container's terminal")?;
    for c in msg.cmsgs().context("receiving the container's terminal")? {
        if let ControlMessageOwned::ScmRights(fds) = c
            && let Some(fd) = fds.first()
        {
            // SAFETY: SCM_RIGHTS installed this descriptor in this process
            return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
        }
    }
    Err(anyhow!("the container's init sent no terminal"))
}

static MAIN_PID: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward_signal(sig: libc::c_int) {
    let pid = MAIN_PID.load(Ordering::Relaxed);
    if pid > 0 {
        unsafe { libc::kill(pid, sig) };
    }
}

/// PID 1 of the container: prepares the filesystem view, starts the command and forwards signals
/// to it (the kernel ignores signals a PID 1 has no handler for, so `stop` would otherwise wait
/// for its timeout on programs like `sleep`).
fn container_init(spec: &ShimSpec, failure: OwnedFd, stdio: ContainerStdio) -> Result<i32> {
    let mut failure = File::from(failure);
    match prepare_and_start(spec, &mut failure, stdio) {
        Ok(main) => {
            // the program runs: the report channel closes here (init's copy) and at its exec
            drop(failure);
            reap_until(main)
        }
        Err(e) => {
            let _ = write!(failure, "{e:#}");
            Err(e)
        }
    }
}

/// Prepares the container's filesystem view, then forks and execs its program; returns the
/// program's pid. A failure of the program's own start is written to `failure` by the child.
fn prepare_and_start(spec: &ShimSpec, failure: &mut File, stdio: ContainerStdio) -> Result<Pid> {
    unshare(CloneFlags::CLONE_NEWNS).context("creating the mount namespace")?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .context("making / private")?;
    nix::unistd::sethostname(&spec.hostname).context("setting the hostname")?;
    let etc = [
        (spec.hosts.as_path(), "/etc/hosts"),
        (spec.resolv.as_path(), "/etc/resolv.conf"),
        (spec.hostname_file.as_path(), "/etc/hostname"),
    ];
    match &spec.rootfs {
        Some(r) => rootfs::enter(r, &etc)?,
        None => host_root(&etc)?,
    }
    // the program's stdin, stdout and stderr
    let (stdin, stdout, stderr, tty) = match stdio {
        ContainerStdio::Pipes { stdin, stdout, stderr } => {
            let stdin = match stdin {
                Some(s) => s,
                None => File::open("/dev/null").context("opening /dev/null")?.into(),
            };
            (stdin, stdout, stderr, false)
        }
        ContainerStdio::Tty { to_shim } => {
            // a terminal of the container's own devpts (its `tty` names a device it sees); the
            // shim keeps the master
            let (master, slave) = pty::open_in(Path::new("/"))?;
            if let Some((rows, cols)) = spec.console_size {
                pty::set_size(&slave, rows, cols)?;
            }
            send_fd(&to_shim, &master)?;
            (slave.try_clone()?, slave.try_clone()?, slave, true)
        }
    };
    // The image's root (or the node's for `-u` on image `host`) names the users; the process
    // of image `host` without `-u` keeps the shim's identity, as it always had.
    let image_mode = spec.rootfs.is_some();
    let user = if image_mode || !spec.user.is_empty() {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        Some(process::resolve_user(&spec.user, &read("/etc/passwd"), &read("/etc/group")).map_err(|e| anyhow!(e))?)
    } else {
        None
    };
    let mut env = spec.env.clone();
    if let Some(u) = &user
        && process::env_value(&env, "HOME").is_none()
    {
        env.push(format!("HOME={}", u.home));
    }
    if image_mode && let Some(w) = &spec.workdir {
        // docker creates a missing working directory in the container's writable layer
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(w)
            .with_context(|| format!("creating the working directory {w:?}"))?;
    }
    // Inside an image the program is looked up in the container's PATH; `host` keeps execvp's
    // lookup in the shim's PATH, as before images existed.
    let program = match spec.cmd.first() {
        None => return Err(anyhow!("no command given")),
        Some(p) if !image_mode => p.clone(),
        Some(p) => {
            let path = process::env_value(&env, "PATH")
                .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
            let found = process::lookup_program(p, path, |c| {
                std::fs::metadata(c).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            });
            match found {
                Some(f) => f.to_string_lossy().into_owned(),
                None => return Err(anyhow!("cannot run {p:?}: executable file not found in $PATH")),
            }
        }
    };
    let program = CString::new(program)?;
    let argv: Vec<CString> = spec.cmd.iter().map(|a| CString::new(a.as_str())).collect::<Result<_, _>>()?;
    let envp: Vec<CString> = env.iter().map(|a| CString::new(a.as_str())).collect::<Result<_, _>>()?;

    let handler = SigAction::new(SigHandler::Handler(forward_signal), SaFlags::SA_RESTART, SigSet::empty());
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP, Signal::SIGQUIT, Signal::SIGUSR1, Signal::SIGUSR2] {
        unsafe { sigaction(s, &handler) }?;
    }
    match unsafe { fork() }? {
        ForkResult::Child => {
            let dflt = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
            // SIGPIPE too: the shim ignores it (as Rust programs do), and an ignored signal
            // stays ignored across exec
            for s in [
                Signal::SIGTERM,
                Signal::SIGINT,
                Signal::SIGHUP,
                Signal::SIGQUIT,
                Signal::SIGUSR1,
                Signal::SIGUSR2,
                Signal::SIGPIPE,
            ] {
                let _ = unsafe { sigaction(s, &dflt) };
            }
            if tty {
                // its own session, the terminal its controlling one: ^C reaches it, job
                // control works
                setsid()?;
                pty::make_controlling(&stdin)?;
            }
            dup2_stdin(&stdin)?;
            dup2_stdout(&stdout)?;
            dup2_stderr(&stderr)?;
            drop((stdin, stdout, stderr));
            if let Some(u) = &user
                && let Err(e) = switch_user(u)
            {
                let _ = write!(failure, "cannot run as user {:?}: {e:#}", spec.user);
                std::process::exit(127)
            }
            let dir = spec.workdir.as_deref().unwrap_or("/");
            if let Err(e) = std::env::set_current_dir(dir) {
                let _ = write!(failure, "the working directory {dir:?} cannot be used: {e}");
                std::process::exit(127)
            }
            let err = if image_mode {
                nix::unistd::execve(&program, &argv, &envp).unwrap_err()
            } else {
                nix::unistd::execvpe(&program, &argv, &envp).unwrap_err()
            };
            let why = match err {
                nix::errno::Errno::ENOENT => "executable file not found".to_string(),
                e => e.desc().to_lowercase(),
            };
            let _ = write!(failure, "cannot run {:?}: {why}", spec.cmd[0]);
            std::process::exit(if err == nix::errno::Errno::ENOENT { 127 } else { 126 })
        }
        ForkResult::Parent { child } => {
            MAIN_PID.store(child.as_raw(), Ordering::Relaxed);
            drop((stdin, stdout, stderr));
            Ok(child)
        }
    }
}

/// The node's root with netbee's `/etc` files bound over the node's (image `host`).
fn host_root(etc: &[(&Path, &str)]) -> Result<()> {
    for (src, dst) in etc {
        mount(Some(*src), *dst, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .with_context(|| format!("bind-mounting {} on {dst}", src.display()))?;
    }
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("proc"), "/proc", Some("proc"), nosuid, None::<&str>).context("mounting /proc")?;
    // sysfs shows the namespace's own interfaces; not essential, so failure is tolerated
    let _ = mount(Some("sysfs"), "/sys", Some("sysfs"), nosuid | MsFlags::MS_RDONLY, None::<&str>);
    Ok(())
}

/// Groups first: once the uid is not 0 the process may no longer change them.
fn switch_user(u: &process::ExecUser) -> Result<()> {
    let groups: Vec<Gid> = u.groups.iter().map(|g| Gid::from_raw(*g)).collect();
    nix::unistd::setgroups(&groups).context("setgroups")?;
    nix::unistd::setgid(Gid::from_raw(u.gid)).context("setgid")?;
    nix::unistd::setuid(Uid::from_raw(u.uid)).context("setuid")?;
    Ok(())
}

/// Reaps every child (orphans are re-parented to PID 1) until the main process exits.
fn reap_until(main: Pid) -> Result<i32> {
    loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(WaitStatus::Exited(p, c)) if p == main => return Ok(c),
            Ok(WaitStatus::Signaled(p, s, _)) if p == main => return Ok(128 + s as i32),
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(anyhow!("waiting for the main process: {e}")),
        }
    }
}
