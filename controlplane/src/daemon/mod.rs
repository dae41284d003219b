//! `netbee daemon`: owns the node's store, datapath and containers, and serves the API.
mod containers;
mod names;
mod networks;
mod ports;
mod reconcile;
mod server;
pub mod services;
pub mod swarm;

use std::{
    net::Ipv4Addr,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context as _, Result, anyhow, bail};
use aya::programs::TcAttachType;
use netbee_abi::config;
use tracing::{info, warn};

use crate::{
    api::{ApiError, ApiResult},
    datapath::{Datapath, default_timeouts, ip_be},
    model::{ContainerRecord, NetworkRecord},
    netlink::Netlink,
    store::{self, Store},
};

#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub root: PathBuf,
    pub socket: PathBuf,
    pub bpffs: PathBuf,
    pub uplink: Option<String>,
    pub cgroup: Option<PathBuf>,
    pub conntrack_size: u32,
    /// Name shown by `node ls` (default: the system hostname).
    pub hostname: Option<String>,
    /// etcd endpoints (`--cluster-store`); None runs the node alone on its embedded store.
    pub cluster_store: Option<Vec<String>>,
    pub mesh_routing: MeshRouting,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MeshRouting {
    /// Every routing-mesh packet to another node goes through the VXLAN tunnel.
    Tunnel,
    /// Plain frames between L2-adjacent nodes that are both `native`.
    Native,
}

/// The collect_md VXLAN device every overlay shares (the VNI travels in the tunnel key).
pub const VXLAN_DEVICE: &str = "nbvxlan0";

pub struct NodeInfo {
    pub uplink: String,
    pub uplink_ip: Ipv4Addr,
    /// Registered with the node's liveness (native mesh routing only) so L2-adjacent peers send
    /// it routing-mesh frames natively and it accepts theirs.
    pub uplink_mac: Option<[u8; 6]>,
}

pub struct Daemon {
    pub cfg: DaemonConfig,
    pub store: Store,
    pub nl: Netlink,
    pub dp: std::sync::Mutex<Datapath>,
    /// Serializes every state-changing operation: each one reads, changes the kernel, and
    /// commits, with no interleaving to reason about.
    pub op: tokio::sync::Mutex<()>,
    pub node: NodeInfo,
    pub cluster: Option<Arc<swarm::ClusterState>>,
    /// Conntrack entries the garbage collector removed since start.
    pub ct_gc_removed: std::sync::atomic::AtomicU64,
    /// Exit codes of auto-removed containers, for `wait` callers that arrive after the removal.
    pub removed_exits: std::sync::Mutex<std::collections::HashMap<String, i32>>,
    /// Serializes service create/update/rm (the scheduler reads what they write).
    pub svc_op: tokio::sync::Mutex<()>,
    pub services_changed: tokio::sync::Notify,
    /// Tasks whose containers are being drained and stopped.
    pub draining: std::sync::Mutex<std::collections::HashSet<String>>,
    pub names: Arc<names::NameTable>,
    pub dns_servers: std::sync::Mutex<std::collections::HashMap<Ipv4Addr, crate::dns::DnsServer>>,
}

pub async fn run(cfg: DaemonConfig) -> Result<()> {
    for d in [cfg.root.clone(), cfg.root.join("containers"), cfg.root.join("netns")] {
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    let _lock = lock_root(&cfg.root)?;
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").context("enabling IPv4 forwarding")?;
    let store = Store::open(&cfg.root.join("netbee.redb"))?;
    let mut dp = Datapath::load(&cfg.bpffs, cfg.conntrack_size)?;
    let nl = Netlink::open()?;
    let uplink = match &cfg.uplink {
        Some(u) => u.clone(),
        None => default_route_device().context("finding the uplink (pass --uplink)")?,
    };
    let up = nl.require_link(&uplink).await.with_context(|| format!("uplink {uplink}"))?;
    let uplink_ip = nl
        .ipv4_addrs()
        .await?
        .into_iter()
        .find(|(i, _, _)| *i == up.index)
        .map(|(_, ip, _)| ip)
        .ok_or_else(|| anyhow!("uplink {uplink} has no IPv4 address"))?;
    dp.set_config(config::UPLINK_IFINDEX, up.index as u64)?;
    dp.set_config(config::UPLINK_IP, ip_be(uplink_ip) as u64)?;
    dp.set_config(config::NODE_UNDERLAY_IP, u32::from(uplink_ip) as u64)?;
    dp.set_config(config::NODE_NETNS_COOKIE, netns_cookie()?)?;
    dp.set_config(config::MESH_NATIVE, (cfg.mesh_routing == MeshRouting::Native) as u64)?;
    for (k, v) in default_timeouts() {
        dp.set_config(k, v)?;
    }
    dp.attach_tc("tc_uplink_ingress", &uplink, TcAttachType::Ingress, "uplink-ingress")?;
    dp.attach_tc("tc_uplink_egress", &uplink, TcAttachType::Egress, "uplink-egress")?;
    match cfg.cgroup.clone().or_else(crate::daemon::cgroup2_root) {
        Some(cg) => dp.attach_sock_hooks(&cg)?,
        None => warn!("no cgroup v2 hierarchy: node-local clients cannot reach published ports"),
    }
    let cluster = match &cfg.cluster_store {
        None => None,
        Some(eps) => {
            let vx = nl.ensure_vxlan(VXLAN_DEVICE, netbee_abi::VXLAN_PORT, 1450).await?;
            dp.set_config(config::VXLAN_IFINDEX, vx as u64)?;
            dp.attach_tc("tc_overlay_ingress", VXLAN_DEVICE, TcAttachType::Ingress, "overlay-ingress")?;
            let node_id = match store.get::<String>(store::META, "node_id")? {
                Some(id) => id,
                None => {
                    let id = crate::names::new_id()[..25].to_string();
                    store.put(store::META, "node_id", &id)?;
                    id
                }
            };
            let hostname = cfg.hostname.clone().unwrap_or_else(|| {
                nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default()
            });
            let membership = store.get(store::META, "membership")?;
            Some(Arc::new(swarm::ClusterState::new(eps.clone(), node_id, hostname, membership)))
        }
    };
    let daemon = Arc::new(Daemon {
        cfg: cfg.clone(),
        store,
        nl,
        dp: std::sync::Mutex::new(dp),
        op: tokio::sync::Mutex::new(()),
        node: NodeInfo {
            uplink,
            uplink_ip,
            uplink_mac: if cfg.mesh_routing == MeshRouting::Native { up.mac } else { None },
        },
        cluster,
        ct_gc_removed: Default::default(),
        removed_exits: Default::default(),
        svc_op: Default::default(),
        services_changed: Default::default(),
        draining: Default::default(),
        names: Default::default(),
        dns_servers: Default::default(),
    });
    daemon.ensure_predefined_networks().await?;
    daemon.reconcile().await.context("reconciling the kernel with the store")?;
    daemon.refresh_node_addrs().await?;
    daemon.start_monitors().await?;
    if daemon.cluster.as_ref().is_some_and(|c| c.member().is_some()) {
        daemon.start_member_tasks();
    }
    tokio::spawn(reconcile::conntrack_gc(daemon.clone()));
    tokio::spawn(daemon.clone().service_loop());
    info!(root = %cfg.root.display(), socket = %cfg.socket.display(), "netbee daemon ready");
    server::serve(daemon).await
}

/// One daemon per state directory: a second one would fight over the same kernel objects.
fn lock_root(root: &Path) -> Result<std::fs::File> {
    let f = std::fs::File::create(root.join("daemon.lock"))?;
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!("another netbee daemon is already using {}", root.display());
    }
    Ok(f)
}

fn default_route_device() -> Result<String> {
    let routes = std::fs::read_to_string("/proc/net/route")?;
    for l in routes.lines().skip(1) {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() > 2 && f[1] == "00000000" {
            return Ok(f[0].to_string());
        }
    }
    bail!("no default route")
}

/// The cookie the socket hooks compare against to act only on the node's own sockets.
fn netns_cookie() -> Result<u64> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let rc = unsafe {
        libc::getsockopt(s.as_raw_fd(), libc::SOL_SOCKET, SO_NETNS_COOKIE, &mut cookie as *mut u64 as *mut _, &mut len)
    };
    if rc != 0 {
        bail!("SO_NETNS_COOKIE: {}", std::io::Error::last_os_error());
    }
    Ok(cookie)
}

pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find(|l| l.split(' ').nth(2) == Some("cgroup2")).and_then(|l| l.split(' ').nth(1)).map(PathBuf::from)
}

impl Daemon {
    /// Local networks and the cluster's overlays (as last synced from etcd).
    pub fn networks(&self) -> Result<Vec<NetworkRecord>> {
        let mut all: Vec<NetworkRecord> = self.store.list(store::NETWORKS)?;
        all.extend(self.store.list::<NetworkRecord>(store::OVERLAYS)?);
        Ok(all)
    }

    pub fn containers(&self) -> Result<Vec<ContainerRecord>> {
        self.store.list(store::CONTAINERS)
    }

    /// Finds a network by full id, name, or unique id prefix.
    pub fn find_network(&self, key: &str) -> ApiResult<NetworkRecord> {
        let all = self.networks()?;
        if let Some(n) = all.iter().find(|n| n.id == key || n.name == key) {
            return Ok(n.clone());
        }
        let m: Vec<_> = all.iter().filter(|n| !key.is_empty() && n.id.starts_with(key)).collect();
        match m.len() {
            1 => Ok(m[0].clone()),
            0 => Err(ApiError::not_found(format!("network {key} not found"))),
            _ => Err(ApiError::bad_request(format!("network {key} is ambiguous ({} matches found)", m.len()))),
        }
    }

    pub fn find_container(&self, key: &str) -> ApiResult<ContainerRecord> {
        let all = self.containers()?;
        if let Some(c) = all.iter().find(|c| c.id == key || c.name == key) {
            return Ok(c.clone());
        }
        let m: Vec<_> = all.iter().filter(|c| !key.is_empty() && c.id.starts_with(key)).collect();
        match m.len() {
            1 => Ok(m[0].clone()),
            0 => Err(ApiError::not_found(format!("No such container: {key}"))),
            _ => Err(ApiError::bad_request(format!("container {key} is ambiguous ({} matches found)", m.len()))),
        }
    }

    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.cfg.root.join("containers").join(id)
    }

    pub fn netns_path(&self, id: &str) -> PathBuf {
        self.cfg.root.join("netns").join(id)
    }

    pub fn put_container(&self, c: &ContainerRecord) -> Result<()> {
        self.store.put(store::CONTAINERS, &c.id, c)
    }

    pub fn put_network(&self, n: &NetworkRecord) -> Result<()> {
        self.store.put(store::NETWORKS, &n.id, n)
    }

    /// Published ports answer on every address of the node (uplink and gateways).
    pub async fn refresh_node_addrs(&self) -> Result<()> {
        let addrs: Vec<Ipv4Addr> =
            self.nl.ipv4_addrs().await?.into_iter().map(|(_, ip, _)| ip).filter(|ip| !ip.is_loopback()).collect();
        let mut dp = self.dp.lock().unwrap();
        let want: std::collections::HashSet<u32> = addrs.iter().map(|a| ip_be(*a)).collect();
        let have: Vec<u32> = dp.node_addrs.keys().filter_map(|k| k.ok()).collect();
        for k in have.iter().filter(|k| !want.contains(k)) {
            crate::datapath::ignore_missing(dp.node_addrs.remove(k))?;
        }
        for k in want {
            dp.node_addrs.insert(k, 1, 0)?;
        }
        Ok(())
    }
}
