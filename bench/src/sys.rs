//! Process plumbing shared by every scenario: where a command runs (a netbee container, a lab
//! node, a plain namespace), long-running servers that die with their guard, commands with a
//! deadline, and wall-clock timing of one command.
//!
//! Baseline "containers" are plain network namespaces named `<lab prefix><tag>`: the lab's
//! teardown removes every namespace that starts with its prefix (and kills what runs inside), so
//! nothing made here outlives the [`netbee_lab::Lab`] it belongs to.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use netbee_lab::{Lab, Node, netbee_bin, wait_until};

/// A network namespace made by the benchmark inside a lab (a baseline's "container" or bridge
/// host). Commands enter it with `nsenter --net` (network namespace only, like [`Node::cmd`]).
#[derive(Clone, Debug)]
pub struct PlainNs {
    pub name: String,
}

impl PlainNs {
    /// Creates `<lab prefix><tag>` with `lo` up. Removed by the lab's teardown.
    pub fn create(lab: &Lab, tag: &str) -> Result<PlainNs> {
        let name = format!("{}{tag}", lab.prefix());
        ip(&["netns", "add", &name])?;
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        Ok(PlainNs { name })
    }

    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.name)).arg("--").arg(program);
        c.stdin(Stdio::null());
        c
    }

    pub fn sh(&self, script: &str) -> Result<String> {
        let mut c = self.cmd("bash");
        c.arg("-c").arg(script);
        check(c, Duration::from_secs(120))
    }
}

/// Where a benchmark client or server command runs.
pub enum Place<'a> {
    /// Inside a netbee container, through `netbee exec`.
    Container { node: &'a Node, name: String },
    /// In a plain namespace of the lab.
    Ns(PlainNs),
}

impl Place<'_> {
    pub fn cmd(&self, program: &str) -> Command {
        match self {
            Place::Container { node, name } => {
                // in the node's cgroup: a client left running is killed with the node
                let mut c = against(node, node.cmd(&netbee_bin().to_string_lossy()));
                c.args(["exec", name, program]);
                c
            }
            Place::Ns(ns) => ns.cmd(program),
        }
    }

    /// Waits until something listens on TCP `port` here.
    pub fn wait_listening(&self, port: u16, timeout: Duration) -> Result<()> {
        let filter = format!("sport = :{port}");
        wait_until(timeout, &format!("a listener on port {port}"), || {
            let mut c = self.cmd("ss");
            c.args(["-Hltn", &filter]);
            c.output().map(|o| o.status.success() && !o.stdout.trim_ascii().is_empty()).unwrap_or(false)
        })
    }
}

/// `netbee` CLI against a node's daemon, run inside the node's network namespace (what
/// [`Node::netbee`] does, but as a [`Command`] we can time), not its cgroup: every call is waited
/// for, and joining a cgroup costs an RCU grace period per call (see `Ns::cmd_in_netns`).
pub fn netbee_cmd(node: &Node) -> Command {
    against(node, node.cmd_in_netns(&netbee_bin().to_string_lossy()))
}

/// `c` talking to `node`'s daemon.
fn against(node: &Node, mut c: Command) -> Command {
    c.env("NETBEE_HOST", format!("unix://{}", node.socket().display())).stdin(Stdio::null());
    c
}

/// `ip ARGS` (always scoped with `-n` or `netns` by the callers).
pub fn ip(args: &[&str]) -> Result<String> {
    let mut c = Command::new("ip");
    c.args(args);
    check(c, Duration::from_secs(30))
}

/// Runs `cmd` with stdout/stderr captured, killing it after `timeout`.
pub fn output_with_timeout(mut cmd: Command, timeout: Duration) -> Result<Output> {
    let what = describe(&cmd);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().with_context(|| format!("spawning {what}"))?;
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => Ok(out.with_context(|| format!("waiting for {what}"))?),
        Err(_) => {
            // SAFETY: plain kill(2) of our own child, which has not been reaped (the waiting
            // thread still holds it), so the pid cannot have been reused.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = rx.recv_timeout(Duration::from_secs(5));
            bail!("{what} did not finish within {timeout:?}")
        }
    }
}

/// Runs `cmd`; its stdout on exit 0, an error with both outputs otherwise.
pub fn check(cmd: Command, timeout: Duration) -> Result<String> {
    let what = describe(&cmd);
    let out = output_with_timeout(cmd, timeout)?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim_end(),
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs an iperf3 client (`-J`) built by `mk` and returns its JSON. Between two tests iperf3's
/// server briefly has no listening socket (or is still busy with the last one), so a client
/// that follows another at once can be refused: such a start is retried for up to 2 s; any other
/// failure is an error.
pub fn iperf3_client(mk: impl Fn() -> Command, timeout: Duration) -> Result<String> {
    let not_ready = |text: &str| text.contains("Connection refused") || text.contains("server is busy");
    let start = Instant::now();
    loop {
        let (text, result) = match check(mk(), timeout) {
            Ok(out) => (out.clone(), crate::tools::iperf3_gbps(&out).map(|_| out)),
            Err(e) => (format!("{e:#}"), Err(e)),
        };
        match result {
            Err(_) if not_ready(&text) && start.elapsed() < Duration::from_secs(2) => {
                std::thread::sleep(Duration::from_millis(100))
            }
            r => return r,
        }
    }
}

/// Wall-clock seconds of one successful run of `cmd` (spawn to exit).
pub fn time_cmd(mut cmd: Command) -> Result<f64> {
    let what = describe(&cmd);
    cmd.stdout(Stdio::null()).stderr(Stdio::piped()).stdin(Stdio::null());
    let t0 = Instant::now();
    let out = cmd.output().with_context(|| format!("spawning {what}"))?;
    let dt = t0.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim_end());
    }
    Ok(dt)
}

pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    format!("`{s}`")
}

/// A background server process, killed (and reaped) when the guard drops. The lab's teardown
/// would kill it too; the guard just keeps rounds independent.
pub struct Server {
    what: String,
    child: Child,
}

impl Server {
    pub fn spawn(mut cmd: Command, log: &Path) -> Result<Server> {
        let what = describe(&cmd);
        let f = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null()).stdout(f.try_clone()?).stderr(f);
        let child = cmd.spawn().with_context(|| format!("spawning {what}"))?;
        Ok(Server { what, child })
    }

    /// Fails if the server has already exited (e.g. could not bind).
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(st) = self.child.try_wait()? {
            bail!("{} exited early ({st})", self.what);
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Retries `f` until it succeeds or `timeout` passes; returns the last error.
pub fn retry<T>(timeout: Duration, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let t0 = Instant::now();
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if t0.elapsed() > timeout => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// One CPU's time counters from `/proc/stat` (in USER_HZ ticks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTicks {
    /// Time spent in interrupts and softirqs (hardirq + softirq columns): where the kernel
    /// forwards packets, also when ksoftirqd runs them.
    pub irq: u64,
    /// Every column summed: elapsed time on that CPU.
    pub total: u64,
}

impl CpuTicks {
    /// The share of the time between `self` and `later` this CPU spent in (soft)irq, 0..=1.
    pub fn irq_share(&self, later: &CpuTicks) -> f64 {
        let total = later.total.saturating_sub(self.total);
        if total == 0 { 0.0 } else { later.irq.saturating_sub(self.irq) as f64 / total as f64 }
    }
}

/// The `cpuN` line of a `/proc/stat` text.
pub fn parse_cpu_ticks(stat: &str, cpu: usize) -> Result<CpuTicks> {
    let label = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(label.as_str()))
        .with_context(|| format!("/proc/stat has no {label} line"))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).map(|f| f.parse::<u64>()).collect::<Result<_, _>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice: already inside user/nice]
    if v.len() < 8 {
        bail!("short /proc/stat line: {line}");
    }
    Ok(CpuTicks { irq: v[5] + v[6], total: v[..8].iter().sum() })
}

pub fn cpu_ticks(cpu: usize) -> Result<CpuTicks> {
    parse_cpu_ticks(&std::fs::read_to_string("/proc/stat")?, cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_from_proc_stat() {
        let stat = "cpu  10 0 20 300 0 1 2 0 0 0\n\
                    cpu0 5 0 10 150 0 0 1 0 0 0\n\
                    cpu1 1524064 36057 208630 632386 5995 7 35262 1317 40 0\n\
                    intr 1 2 3\n";
        let t = parse_cpu_ticks(stat, 1).unwrap();
        assert_eq!(t, CpuTicks { irq: 35269, total: 1524064 + 36057 + 208630 + 632386 + 5995 + 7 + 35262 + 1317 });
        assert_eq!(parse_cpu_ticks(stat, 0).unwrap().irq, 1);
        assert!(parse_cpu_ticks(stat, 2).is_err(), "cpu2 must not match the cpu line or cpu1");
        let a = CpuTicks { irq: 100, total: 1000 };
        assert!((a.irq_share(&CpuTicks { irq: 175, total: 1100 }) - 0.75).abs() < 1e-9);
        assert_eq!(a.irq_share(&a), 0.0);
    }
}
