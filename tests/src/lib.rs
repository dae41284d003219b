//! The netbee test lab: a whole cluster on one machine, built from network
//! namespaces.
//!
//! A [`Lab`] owns:
//! * an *underlay* namespace `<prefix>u` holding a Linux bridge `br0`, which
//!   plays the physical network;
//! * *nodes* (`<prefix>n1`, ...), each a namespace whose `eth0` is plugged
//!   into the bridge with address `10.77.0.(11+k)/24`, with its own state dir
//!   and cgroup, running one `netbee daemon`;
//! * *external clients* (`<prefix>x1`, ...) on the same bridge with addresses
//!   `10.77.0.(101+k)/24`.
//!
//! Nothing touches the machine's own interfaces, routes or firewall: links
//! are created directly inside lab namespaces (`ip -n <underlay> link add`),
//! so traffic never leaves them. Dropping the `Lab` (also while a test
//! panics) removes everything it made; [`sweep_stale`] removes what labs of
//! crashed test processes left behind. Each lab has a random prefix, so labs
//! from concurrently running tests never collide.
//!
//! Requires root (namespaces, cgroups, mounts).

mod cgroup;
mod cleanup;
mod docker;
mod mounts;
mod netbee;
mod node;
mod ns;
mod util;

#[cfg(test)]
mod tests;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rand::Rng;

pub use cgroup::cgroup2_root;
pub use cleanup::sweep_stale;
pub use docker::{Docker, docker_cli_present, unix_now};
pub use netbee::{
    assert_round_robin, hosts, http_hostname, single_node_lab, start_load, swarm_lab, swarm_lab_with, whoami_field,
};
pub use node::Node;
pub use ns::Ns;

/// Parent of every lab's directory.
pub(crate) const LAB_ROOT: &str = "/tmp/netbee-lab";
/// Parent, below the cgroup2 root, of every lab's cgroup.
pub(crate) const CGROUP_PARENT: &str = "netbee-lab";
pub(crate) const PREFIX_LEN: usize = 8;

const UNDERLAY_BRIDGE: &str = "br0";
const NODE_HOST_BASE: u8 = 11;
const EXTERNAL_HOST_BASE: u8 = 101;
const LINK_UP_TIMEOUT: Duration = Duration::from_secs(5);

/// The `netbee` binary under test: `$NETBEE_BIN`, else the workspace's
/// `target/release/netbee`.
pub fn netbee_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NETBEE_BIN") {
        return PathBuf::from(p);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).join("target/release/netbee")
}

/// Polls `f` every 50 ms until it returns true, or fails after `timeout`
/// with an error naming `what`.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) -> Result<()> {
    let started = Instant::now();
    loop {
        if f() {
            return Ok(());
        }
        if started.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A lab: underlay, nodes and external clients. Dropping it tears all of it
/// down.
pub struct Lab {
    prefix: String,
    test_name: String,
    dir: PathBuf,
    cgroup_base: PathBuf,
    underlay: Ns,
    nodes: Vec<Node>,
    externals: Vec<Ns>,
    etcd: Vec<EtcdMember>,
}

/// An etcd member of the lab (its process dies with the lab's namespaces on cleanup).
#[derive(Debug)]
struct EtcdMember {
    ns: Ns,
    args: Vec<String>,
    child: Option<std::process::Child>,
}

impl Lab {
    /// Creates an empty lab (just the underlay bridge). `test_name` is only
    /// used in diagnostics. Sweeps leftovers of dead labs first.
    pub fn new(test_name: &str) -> Result<Lab> {
        if !nix::unistd::geteuid().is_root() {
            bail!("the netbee lab needs root (network namespaces, cgroups, mounts)");
        }
        if let Err(e) = sweep_stale() {
            eprintln!("netbee-lab: sweeping stale labs: {e:#}");
        }
        let cgroup_root = cgroup2_root()?;
        std::fs::create_dir_all(LAB_ROOT).with_context(|| format!("mkdir {LAB_ROOT}"))?;

        let (prefix, dir) = create_lab_dir(test_name)?;
        let mut lab = Lab {
            underlay: Ns::new(format!("{prefix}u"), None, None),
            cgroup_base: cgroup_root.join(CGROUP_PARENT).join(&prefix),
            prefix,
            test_name: test_name.to_string(),
            dir,
            nodes: Vec::new(),
            externals: Vec::new(),
            etcd: Vec::new(),
        };
        // From here on any error drops `lab`, which removes what was made.
        lab.setup_underlay()?;
        Ok(lab)
    }

    fn setup_underlay(&mut self) -> Result<()> {
        std::fs::create_dir_all(&self.cgroup_base).with_context(|| format!("mkdir {}", self.cgroup_base.display()))?;
        let u = self.underlay.name().to_string();
        util::ip(&["netns", "add", &u])?;
        util::ip(&["-n", &u, "link", "set", "lo", "up"])?;
        util::ip(&["-n", &u, "link", "add", UNDERLAY_BRIDGE, "type", "bridge"])?;
        util::ip(&["-n", &u, "link", "set", UNDERLAY_BRIDGE, "up"])?;
        // The bridge plays a switch: frames crossing it skip the host's netfilter hooks
        // (br_netfilter is on by default in every namespace), which a real switch does not run.
        self.underlay.sh("for f in iptables ip6tables arptables; do p=/proc/sys/net/bridge/bridge-nf-call-$f; \
             [ ! -e $p ] || echo 0 > $p; done")?;
        Ok(())
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `/tmp/netbee-lab/<prefix>/`, holding `owner.pid` and one dir per node.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn test_name(&self) -> &str {
        &self.test_name
    }

    /// The namespace holding the underlay bridge `br0`.
    pub fn underlay(&self) -> &Ns {
        &self.underlay
    }

    /// Adds node `name` (e.g. "n1"): namespace `<prefix><name>`, underlay
    /// address `10.77.0.(11+k)/24` on `eth0` for the k-th node (from 0),
    /// IPv4 forwarding on, state dir `<lab dir>/<name>/` and cgroup
    /// `<cgroup2>/netbee-lab/<prefix>/<name>`. No daemon is started.
    pub fn add_node(&mut self, name: &str) -> Result<&Node> {
        self.check_new_name(name)?;
        let k = self.nodes.len();
        if k >= usize::from(EXTERNAL_HOST_BASE - NODE_HOST_BASE) {
            bail!("too many nodes");
        }
        let addr = Ipv4Addr::new(10, 77, 0, NODE_HOST_BASE + k as u8);
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let cg = self.cgroup_base.join(name);
        std::fs::create_dir_all(&cg).with_context(|| format!("mkdir {}", cg.display()))?;
        let ns = Ns::new(format!("{}{name}", self.prefix), Some(addr), Some(cg.clone()));
        self.plug(&ns, name)?;
        util::ip(&["netns", "exec", ns.name(), "sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        self.nodes.push(Node::new(ns, name.to_string(), dir, cg));
        Ok(self.nodes.last().expect("just pushed"))
    }

    /// Adds external client `name` (e.g. "x1"): namespace `<prefix><name>`
    /// with `10.77.0.(101+k)/24` on `eth0` for the k-th external (from 0).
    pub fn add_external(&mut self, name: &str) -> Result<&Ns> {
        self.check_new_name(name)?;
        let k = self.externals.len();
        if k >= usize::from(255 - EXTERNAL_HOST_BASE) {
            bail!("too many external clients");
        }
        let addr = Ipv4Addr::new(10, 77, 0, EXTERNAL_HOST_BASE + k as u8);
        let ns = Ns::new(format!("{}{name}", self.prefix), Some(addr), None);
        self.plug(&ns, name)?;
        self.externals.push(ns);
        Ok(self.externals.last().expect("just pushed"))
    }

    /// Starts an etcd cluster of `members` (1 or 3) on the underlay, each member in its own
    /// namespace `<prefix>e<k>` at 10.77.0.(2+k), data under the lab dir. Returns the
    /// `--cluster-store` value for daemons (`etcd://ADDR:2379,...`).
    pub fn start_etcd(&mut self, members: usize) -> Result<String> {
        let addrs: Vec<Ipv4Addr> = (0..members).map(|k| Ipv4Addr::new(10, 77, 0, 2 + k as u8)).collect();
        let initial: Vec<String> =
            addrs.iter().enumerate().map(|(k, a)| format!("e{}=http://{a}:2380", k + 1)).collect();
        for (k, addr) in addrs.iter().enumerate() {
            let name = format!("e{}", k + 1);
            let ns = Ns::new(format!("{}{name}", self.prefix), Some(*addr), None);
            self.plug(&ns, &name)?;
            let data = self.dir.join(&name);
            let args = vec![
                format!("--name={name}"),
                format!("--data-dir={}", data.display()),
                format!("--listen-client-urls=http://{addr}:2379"),
                format!("--advertise-client-urls=http://{addr}:2379"),
                format!("--listen-peer-urls=http://{addr}:2380"),
                format!("--initial-advertise-peer-urls=http://{addr}:2380"),
                format!("--initial-cluster={}", initial.join(",")),
                "--initial-cluster-state=new".to_string(),
                "--initial-cluster-token=netbee-lab".to_string(),
            ];
            self.etcd.push(EtcdMember { ns, args, child: None });
            self.start_etcd_member(k)?;
        }
        let endpoints: Vec<String> = addrs.iter().map(|a| format!("{a}:2379")).collect();
        let ep = endpoints.join(",");
        wait_until(Duration::from_secs(20), "etcd healthy", || {
            std::process::Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &ep, "--dial-timeout=1s", "endpoint", "health"])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        })
        .or_else(|_| {
            // etcdctl runs in our namespace, which cannot reach the underlay: ask from inside
            wait_until(Duration::from_secs(20), "etcd healthy (from its namespace)", || {
                self.etcd[0]
                    .ns
                    .sh(&format!("ETCDCTL_API=3 etcdctl --endpoints {ep} --dial-timeout=1s endpoint health"))
                    .is_ok()
            })
        })?;
        Ok(format!("etcd://{ep}"))
    }

    fn start_etcd_member(&mut self, k: usize) -> Result<()> {
        let m = &mut self.etcd[k];
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join(format!("etcd{}.log", k + 1)))?;
        let child =
            m.ns.cmd("etcd")
                .args(&m.args)
                .stdin(std::process::Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("starting etcd (is etcd-server installed? cargo xtask setup)")?;
        m.child = Some(child);
        Ok(())
    }

    /// Kills etcd member `k` (0-based) with SIGKILL.
    pub fn kill_etcd(&mut self, k: usize) -> Result<()> {
        if let Some(mut c) = self.etcd[k].child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    /// Starts a killed etcd member again on its data directory.
    pub fn restart_etcd(&mut self, k: usize) -> Result<()> {
        self.kill_etcd(k)?;
        self.start_etcd_member(k)
    }

    /// The namespace of etcd member `k` (0-based).
    pub fn etcd_ns(&self, k: usize) -> &Ns {
        &self.etcd[k].ns
    }

    /// The node called `name`; panics if there is none.
    pub fn node(&self, name: &str) -> &Node {
        self.nodes.iter().find(|n| n.short_name() == name).unwrap_or_else(|| {
            let known: Vec<&str> = self.nodes.iter().map(|n| n.short_name()).collect();
            panic!("lab {} has no node {name:?} (nodes: {known:?})", self.prefix)
        })
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The external client called `name`; panics if there is none.
    pub fn external(&self, name: &str) -> &Ns {
        let full = format!("{}{name}", self.prefix);
        self.externals
            .iter()
            .find(|x| x.name() == full)
            .unwrap_or_else(|| panic!("lab {} has no external client {name:?}", self.prefix))
    }

    fn check_new_name(&self, name: &str) -> Result<()> {
        // The name doubles as the veth name inside the underlay (<= 15
        // bytes) and must not clash with the bridge or the underlay netns.
        let valid = !name.is_empty()
            && name.len() <= 7
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && !["u", "lo", UNDERLAY_BRIDGE].contains(&name);
        if !valid {
            bail!("invalid lab member name {name:?}: use 1-7 of [a-z0-9], not u/lo/br0");
        }
        let full = format!("{}{name}", self.prefix);
        if self.nodes.iter().any(|n| n.name() == full) || self.externals.iter().any(|x| x.name() == full) {
            bail!("lab {} already has a member {name:?}", self.prefix);
        }
        Ok(())
    }

    /// Creates namespace `ns` and plugs its `eth0` into the underlay bridge
    /// through a veth whose underlay end is called `host_if`.
    fn plug(&self, ns: &Ns, host_if: &str) -> Result<()> {
        util::ip(&["netns", "add", ns.name()])?;
        self.wire(ns, host_if)
    }

    /// Deletes node `name`'s uplink and creates it anew, as a NIC reset would: the same name,
    /// address and underlay port, a new interface index.
    pub fn replug_node(&self, name: &str) -> Result<()> {
        let node = self.node(name);
        util::ip(&["-n", node.name(), "link", "del", "eth0"])?;
        self.wire(node, name)
    }

    /// `eth0` in `ns`, its peer `host_if` on the underlay bridge.
    fn wire(&self, ns: &Ns, host_if: &str) -> Result<()> {
        let u = self.underlay.name();
        let n = ns.name();
        // Created from inside the underlay namespace, so the pair never
        // exists in the machine's own namespace.
        util::ip(&["-n", u, "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", n])?;
        util::ip(&["-n", u, "link", "set", host_if, "master", UNDERLAY_BRIDGE, "up"])?;
        util::ip(&["-n", n, "link", "set", "lo", "up"])?;
        let cidr = format!("{}/24", ns.addr());
        util::ip(&["-n", n, "addr", "add", &cidr, "dev", "eth0"])?;
        util::ip(&["-n", n, "link", "set", "eth0", "up"])?;
        wait_until(LINK_UP_TIMEOUT, &format!("eth0 in {n} to be up"), || {
            util::ip(&["-n", n, "-o", "link", "show", "eth0"]).map(|s| s.contains("state UP")).unwrap_or(false)
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for node in &self.nodes {
                eprintln!(
                    "===== netbee-lab {} ({}): last 60 lines of daemon.log of node {} =====",
                    self.prefix,
                    self.test_name,
                    node.short_name()
                );
                let log = node.dir().join("daemon.log");
                if log.exists() {
                    eprintln!("{}", util::tail_lines(&log, 60));
                } else {
                    eprintln!("(no daemon.log)");
                }
            }
        }
        for m in &mut self.etcd {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        cleanup::Teardown {
            prefix: &self.prefix,
            dir: self.dir.clone(),
            cgroup_base: Some(self.cgroup_base.clone()),
            nodes: &self.nodes,
        }
        .run();
    }
}

/// Picks an unused prefix and creates its lab dir with `owner.pid` already
/// inside: the dir is filled under a temporary name and renamed into place,
/// so `sweep_stale` in another process never sees a lab without an owner.
fn create_lab_dir(test_name: &str) -> Result<(String, PathBuf)> {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let me = std::process::id();
    for _ in 0..100 {
        let suffix: String = (0..PREFIX_LEN - 3).map(|_| CHARS[rng.random_range(0..CHARS.len())] as char).collect();
        let prefix = format!("nbl{suffix}");
        let dir = Path::new(LAB_ROOT).join(&prefix);
        if dir.exists() || !cleanup::lab_namespaces(&prefix).is_empty() {
            continue;
        }
        let tmp = Path::new(LAB_ROOT).join(format!(".{prefix}.{me}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir(&tmp).with_context(|| format!("mkdir {}", tmp.display()))?;
        let fill = || -> std::io::Result<()> {
            std::fs::write(tmp.join("owner.pid"), format!("{me}\n"))?;
            if let Some(start) = cleanup::process_start_time(me) {
                std::fs::write(tmp.join("owner.start"), format!("{start}\n"))?;
            }
            std::fs::write(tmp.join("test_name"), format!("{test_name}\n"))?;
            Ok(())
        };
        if let Err(e) = fill() {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e).context("writing lab owner files");
        }
        // rename(2) onto an existing non-empty dir fails, so a prefix raced
        // by another process is simply retried.
        match std::fs::rename(&tmp, &dir) {
            Ok(()) => return Ok((prefix, dir)),
            Err(_) => {
                let _ = std::fs::remove_dir_all(&tmp);
            }
        }
    }
    bail!("could not find a free lab prefix")
}

/// A test image archive made by `cargo xtask setup` (`busybox-1.tar`, `busybox-2.tar`,
/// `busybox-entrypoint.tar` under `target/test-images/`).
pub fn test_image(file: &str) -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).join("target/test-images").join(file)
}
