//! A node of the lab: a network namespace plus a cgroup, a state directory
//! and (optionally) a running `netbee daemon`.

use std::fs::OpenOptions;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::ns::Ns;
use crate::{netbee_bin, util};

const READY_TIMEOUT: Duration = Duration::from_secs(20);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);

#[derive(Debug)]
pub struct Node {
    ns: Ns,
    short_name: String,
    dir: PathBuf,
    cgroup: PathBuf,
    daemon: Mutex<Option<Child>>,
    daemon_args: Mutex<Vec<String>>,
    /// Soft open-file limit the daemon starts with (None: inherited).
    open_files: Mutex<Option<u64>>,
}

impl Deref for Node {
    type Target = Ns;
    fn deref(&self) -> &Ns {
        &self.ns
    }
}

impl Node {
    pub(crate) fn new(ns: Ns, short_name: String, dir: PathBuf, cgroup: PathBuf) -> Node {
        Node {
            ns,
            short_name,
            dir,
            cgroup,
            daemon: Mutex::new(None),
            daemon_args: Mutex::new(Vec::new()),
            open_files: Mutex::new(None),
        }
    }

    /// Extra arguments for every later `start_daemon` (e.g. `--cluster-store`).
    /// Starts later daemons with this soft open-file limit (the hard limit is left as it is), as
    /// a service manager's default of 1024 would.
    pub fn set_open_file_limit(&self, soft: u64) {
        *self.open_files.lock().unwrap_or_else(|p| p.into_inner()) = Some(soft);
    }

    pub fn set_daemon_args(&self, args: &[&str]) {
        *self.daemon_args.lock().unwrap_or_else(|p| p.into_inner()) = args.iter().map(|s| s.to_string()).collect();
    }

    /// The node name as given to `Lab::add_node` (e.g. "n1").
    pub fn short_name(&self) -> &str {
        &self.short_name
    }

    /// The node's state directory, passed to the daemon as `--node-dir`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The daemon's API socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("netbee.sock")
    }

    /// The node's cgroup v2 directory; the daemon and every container it
    /// starts live at or below it.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }

    /// The daemon's log so far (empty if it never ran).
    pub fn daemon_log(&self) -> String {
        std::fs::read(self.log_path()).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    pub(crate) fn daemon_slot(&self) -> MutexGuard<'_, Option<Child>> {
        // A test that panicked while holding the lock must not stop cleanup.
        self.daemon.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The daemon's pid, if this node started one that has not been stopped.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon_slot().as_ref().map(|c| c.id())
    }

    /// Starts `netbee daemon` in the node's netns and cgroup and waits until
    /// its API answers `version`.
    pub fn start_daemon(&self) -> Result<()> {
        let mut slot = self.daemon_slot();
        if let Some(child) = slot.as_mut() {
            if child.try_wait()?.is_none() {
                bail!("daemon on {} is already running (pid {})", self.name(), child.id());
            }
            *slot = None;
        }
        let bin = netbee_bin();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .with_context(|| format!("opening {}", self.log_path().display()))?;
        let mut cmd = self.cmd(&bin.to_string_lossy());
        cmd.arg("daemon")
            .arg("--node-dir")
            .arg(&self.dir)
            .args(["--uplink", "eth0"])
            .arg("--cgroup")
            .arg(&self.cgroup)
            .args(["--hostname", &self.short_name])
            .args(self.daemon_args.lock().unwrap_or_else(|p| p.into_inner()).iter())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        if let Some(soft) = *self.open_files.lock().unwrap_or_else(|p| p.into_inner()) {
            // SAFETY: between fork and exec only getrlimit/setrlimit run, both async-signal-safe
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                    if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    lim.rlim_cur = soft.min(lim.rlim_max);
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().with_context(|| format!("spawning {} daemon on {}", bin.display(), self.name()))?;
        *slot = Some(child);

        let started = Instant::now();
        loop {
            let child = slot.as_mut().expect("daemon slot filled above");
            if let Some(status) = child.try_wait()? {
                *slot = None;
                bail!(
                    "netbee daemon on {} exited during startup ({status}); last lines of {}:\n{}",
                    self.name(),
                    self.log_path().display(),
                    util::tail_lines(&self.log_path(), 40)
                );
            }
            if self.api_answers(&bin) {
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                // Leave no half-started daemon behind: the caller gets an error
                // and would not know to stop it.
                let _ = child.kill();
                let _ = child.wait();
                *slot = None;
                bail!(
                    "netbee daemon on {} did not answer `version` within {READY_TIMEOUT:?}; last lines of {}:\n{}",
                    self.name(),
                    self.log_path().display(),
                    util::tail_lines(&self.log_path(), 40)
                );
            }
            std::thread::sleep(POLL);
        }
    }

    fn api_answers(&self, bin: &Path) -> bool {
        let mut cmd = self.cmd(&bin.to_string_lossy());
        cmd.arg("-H")
            .arg(format!("unix://{}", self.socket().display()))
            .arg("version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd.status().map(|s| s.success()).unwrap_or(false)
    }

    /// Loses the whole node at once: the daemon and every container (all in the node's cgroup).
    pub fn kill_everything(&self) -> Result<()> {
        std::fs::write(self.cgroup.join("cgroup.kill"), "1")
            .with_context(|| format!("killing everything in {}", self.cgroup.display()))?;
        if let Some(mut child) = self.daemon_slot().take() {
            let _ = child.wait();
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL if the daemon has not exited after 10 s.
    pub fn stop_daemon(&self) -> Result<()> {
        let mut slot = self.daemon_slot();
        let Some(mut child) = slot.take() else {
            return Ok(());
        };
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let started = Instant::now();
        while started.elapsed() < STOP_TIMEOUT {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(POLL);
        }
        eprintln!("netbee-lab: daemon on {} ignored SIGTERM for {STOP_TIMEOUT:?}; killing", self.name());
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// SIGKILL, as a crash would.
    pub fn kill_daemon(&self) -> Result<()> {
        let mut slot = self.daemon_slot();
        let Some(mut child) = slot.take() else {
            return Ok(());
        };
        // kill() on an already-exited (unreaped) child is harmless.
        let _ = child.kill();
        child.wait()?;
        Ok(())
    }

    pub fn restart_daemon(&self) -> Result<()> {
        self.stop_daemon()?;
        self.start_daemon()
    }

    fn cli(&self, args: &[&str]) -> Command {
        let mut cmd = self.cmd(&netbee_bin().to_string_lossy());
        cmd.args(args).env("NETBEE_HOST", format!("unix://{}", self.socket().display())).stdin(Stdio::null());
        cmd
    }

    /// Runs the CLI against this node's daemon; `Ok(stdout)` on exit 0.
    pub fn netbee(&self, args: &[&str]) -> Result<String> {
        let out = self.netbee_output(args);
        if !out.status.success() {
            bail!("netbee {args:?} on {} failed: {}", self.name(), util::format_output(&out));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs the CLI and returns its raw output, for tests expecting failure.
    /// Panics if the binary cannot be spawned at all, so that a missing build
    /// is never mistaken for an expected failure.
    pub fn netbee_output(&self, args: &[&str]) -> Output {
        self.cli(args).output().unwrap_or_else(|e| {
            panic!("cannot run {} (NETBEE_BIN / cargo build --release?): {e}", netbee_bin().display())
        })
    }
}
