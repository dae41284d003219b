//! `netbee daemon`: owns the node's store, datapath and containers, and serves the API.
pub mod api_tls;
mod attach;
mod containers;
mod engine;
mod events;
mod exec;
mod images;
mod monitor;
mod names;
mod networks;
mod observe;
mod ownership;
mod ports;
mod reconcile;
mod server;
pub mod services;
mod swarm;
mod system;
mod usage;

use crate::cluster::etcd::Reads;
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
    api::ApiResult,
    cluster::ClusterState,
    datapath::{Datapath, default_timeouts, ip_be},
    images::{ImageStore, RegistryConfig},
    lookup,
    model::{ContainerRecord, NetworkRecord},
    netlink::Netlink,
    network,
    store::{Shared, Store},
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
    /// Start over an empty or lost store even though the node has state of an earlier one
    /// (which start-up then removes).
    pub discard_state: bool,
    /// Registries (`HOST:PORT`) spoken to in plain HTTP (`--insecure-registry`).
    pub insecure_registries: Vec<String>,
    /// Where to serve Prometheus metrics (`--metrics-addr`); None serves none.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// The API on TCP behind TLS with client certificates (`--api-tcp`); None serves it only on
    /// the unix socket.
    pub api_tls: Option<api_tls::ApiTls>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MeshRouting {
    /// Every routing-mesh packet to another node goes through the VXLAN tunnel.
    Tunnel,
    /// Plain frames between L2-adjacent nodes that are both `native`.
    Native,
}

pub struct NodeInfo {
    pub uplink: String,
    pub uplink_ip: Ipv4Addr,
    /// Registered with the node's liveness (native mesh routing only) so L2-adjacent peers send
    /// it routing-mesh frames natively and it accepts theirs.
    pub uplink_mac: Option<[u8; 6]>,
}

/// The daemon: the node's store, kernel handles and cluster connection, shared by every
/// operation. Its operations live in the files of this module, one concern each.
pub struct Daemon {
    cfg: DaemonConfig,
    store: Arc<Store>,
    /// The node's images (`<root>/images`, records in `store`): what containers resolve at
    /// create and stack as their root at start.
    images: ImageStore,
    nl: Netlink,
    dp: std::sync::Mutex<Datapath>,
    /// Serializes every state-changing operation on the node: each one reads, changes the kernel,
    /// and commits, with no interleaving to reason about. Taken after `services.op`, never before.
    op: tokio::sync::Mutex<()>,
    node: NodeInfo,
    cluster: Option<Arc<ClusterState>>,
    /// Conntrack entries the garbage collector removed since start.
    ct_gc_removed: std::sync::atomic::AtomicU64,
    /// Exit codes of auto-removed containers, for `wait` callers that arrive after the removal.
    removed_exits: std::sync::Mutex<std::collections::HashMap<String, i32>>,
    services: services::ServiceState,
    dns: names::DnsState,
    /// `netbee monitor`: the ring buffer's reader and the attached monitors.
    monitor: monitor::MonitorHub,
    /// `netbee events`: what changed on this node.
    events: events::EventBus,
    /// Clients attached to containers not running yet (`docker run` attaches, then starts).
    attaches: attach::PendingAttaches,
    /// docker's exec instances (in memory, as docker's).
    execs: exec::Execs,
}

pub async fn run(cfg: DaemonConfig) -> Result<()> {
    for d in [cfg.root.clone(), cfg.root.join("containers"), cfg.root.join("netns")] {
        crate::paths::make_dir(&d)?;
    }
    let _claims = ownership::claim(&cfg.root, &cfg.socket, &cfg.bpffs)?;
    raise_fd_limit();
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").context("enabling IPv4 forwarding")?;
    let store = Arc::new(Store::open(&cfg.root.join("netbee.redb"))?);
    let mut dp = Datapath::load(&cfg.bpffs, cfg.conntrack_size)?;
    let pinned_endpoints = dp.pinned_links()?.iter().filter(|p| p.starts_with("ep-")).count();
    ownership::check_store_matches_node(&store, &cfg.root, pinned_endpoints, cfg.discard_state)?;
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
    dp.set_config(config::UPLINK_IP, ip_be(uplink_ip) as u64)?;
    dp.set_config(config::NODE_UNDERLAY_IP, u32::from(uplink_ip) as u64)?;
    dp.set_config(config::NODE_NETNS_COOKIE, netns_cookie()?)?;
    dp.set_config(config::MESH_NATIVE, (cfg.mesh_routing == MeshRouting::Native) as u64)?;
    // CONFIG is pinned: monitors of a daemon that died attached are gone
    dp.set_config(config::MONITOR, 0)?;
    let monitor_maps = dp.take_monitor_maps();
    for (k, v) in default_timeouts() {
        dp.set_config(k, v)?;
    }
    attach_uplink(&mut dp, &uplink, up.index)?;
    match cfg.cgroup.clone().or_else(cgroup2_root).map(Ok).unwrap_or_else(|| mount_cgroup2(&cfg.root)) {
        Ok(cg) => dp.attach_sock_hooks(&cg)?,
        Err(e) => warn!("node-local clients cannot reach published ports: {e:#}"),
    }
    let cluster = match &cfg.cluster_store {
        None => None,
        Some(eps) => {
            let node_id = match store.meta::<String>("node_id")? {
                Some(id) => id,
                None => {
                    let id = crate::names::new_id()[..25].to_string();
                    store.set_meta("node_id", &id)?;
                    id
                }
            };
            let hostname = cfg.hostname.clone().unwrap_or_else(|| {
                nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default()
            });
            let membership = store.meta("membership")?;
            Some(Arc::new(ClusterState::new(eps.clone(), node_id, hostname, membership)))
        }
    };
    let images =
        ImageStore::open(&cfg.root, store.clone(), RegistryConfig { insecure: cfg.insecure_registries.clone() })
            .context("opening the image store")?;
    let daemon = Arc::new(Daemon {
        cfg: cfg.clone(),
        store,
        images,
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
        attaches: Default::default(),
        execs: Default::default(),
        services: Default::default(),
        dns: Default::default(),
        monitor: monitor::MonitorHub::new(monitor_maps),
        events: Default::default(),
    });
    network::prepare_node(&daemon.net_cx()).await?;
    network::ensure_predefined(&daemon.net_cx()).await?;
    daemon.reconcile().await.context("reconciling the kernel with the store")?;
    daemon.refresh_node_addrs().await?;
    daemon.start_monitors().await?;
    if daemon.cluster.as_ref().is_some_and(|c| c.member().is_some()) {
        daemon.start_member_tasks();
    }
    tokio::spawn(reconcile::conntrack_gc(daemon.clone()));
    tokio::spawn(reconcile::heal_loop(daemon.clone()));
    tokio::spawn(daemon.clone().service_loop());
    if let Some(addr) = cfg.metrics_addr {
        // bound before the daemon says it is ready, so a wrong address fails the start
        let d = daemon.clone();
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("--metrics-addr {addr}"))?;
        tokio::spawn(async move {
            if let Err(e) = observe::serve_metrics(d, listener).await {
                warn!("metrics server stopped: {e:#}");
            }
        });
    }
    info!(root = %cfg.root.display(), socket = %cfg.socket.display(), "netbee daemon ready");
    server::serve(daemon).await
}

/// The uplink's programs (published ports, masquerade, the routing mesh) and its ifindex in the
/// datapath's configuration: at start-up, and again when the uplink is re-created.
fn attach_uplink(dp: &mut Datapath, uplink: &str, index: u32) -> Result<()> {
    dp.set_config(config::UPLINK_IFINDEX, index as u64)?;
    dp.attach_tc("tc_uplink_ingress", uplink, TcAttachType::Ingress, "uplink-ingress")?;
    dp.attach_tc("tc_uplink_egress", uplink, TcAttachType::Egress, "uplink-egress")
}

/// The daemon holds a descriptor per running container (the pidfd it waits on): with the usual
/// soft limit of 1024 a node would stop near a thousand containers. The hard limit is the
/// administrator's; the soft one is raised to it.
fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write the struct this function owns
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                warn!("raising the open-file limit: {}", std::io::Error::last_os_error());
            }
        }
    }
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
    let mut len = size_of::<u64>() as libc::socklen_t;
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let rc = unsafe {
        libc::getsockopt(s.as_raw_fd(), libc::SOL_SOCKET, SO_NETNS_COOKIE, &mut cookie as *mut u64 as *mut _, &mut len)
    };
    if rc != 0 {
        bail!("SO_NETNS_COOKIE: {}", std::io::Error::last_os_error());
    }
    Ok(cookie)
}

/// The cgroup v2 hierarchy this process sees mounted, if any.
fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find(|l| l.split(' ').nth(2) == Some("cgroup2")).and_then(|l| l.split(' ').nth(1)).map(PathBuf::from)
}

/// A cgroup v2 hierarchy of the daemon's own, at `<root>/cgroup2`, when none is visible: a
/// v1-only host, or a hybrid host's `/sys/fs/cgroup/unified` hidden by `ip netns exec` (which
/// remounts /sys). The unified hierarchy exists in every kernel with cgroup v2; its root holds
/// every process, and the socket hooks act only on this node's network namespace.
fn mount_cgroup2(root: &Path) -> Result<PathBuf> {
    let dir = root.join("cgroup2");
    crate::paths::make_dir(&dir)?;
    let st = nix::sys::statfs::statfs(&dir).with_context(|| format!("statfs {}", dir.display()))?;
    if st.filesystem_type().0 as i64 != crate::datapath::CGROUP2_SUPER_MAGIC {
        nix::mount::mount(Some("cgroup2"), &dir, Some("cgroup2"), nix::mount::MsFlags::empty(), None::<&str>)
            .with_context(|| {
                format!("no cgroup v2 hierarchy is mounted, and mounting one at {} failed", dir.display())
            })?;
        info!(at = %dir.display(), "mounted a cgroup v2 hierarchy for the socket hooks");
    }
    Ok(dir)
}

impl Daemon {
    /// What the network drivers work with.
    fn net_cx(&self) -> network::Context<'_> {
        network::Context {
            nl: &self.nl,
            dp: &self.dp,
            store: &self.store,
            cluster: self.cluster.as_deref(),
            avoid: &[],
        }
    }

    /// Where services and tasks live: etcd in a swarm, the embedded store on a lone node.
    fn shared(&self) -> Shared<'_> {
        self.shared_read(Reads::Linearizable)
    }

    /// The same records for the loops the cluster store's changes wake: read from this node's
    /// copy of the store (its own writes included), no round trip to etcd per list.
    fn shared_copy(&self) -> Shared<'_> {
        self.shared_read(Reads::Copy)
    }

    fn shared_read(&self, reads: Reads) -> Shared<'_> {
        match &self.cluster {
            Some(c) if c.member().is_some() => Shared::Cluster(&c.etcd, reads),
            _ => Shared::Local(&self.store),
        }
    }

    /// Local networks and the cluster's overlays (as last synced from etcd).
    pub fn networks(&self) -> Result<Vec<NetworkRecord>> {
        network::all(&self.store)
    }

    pub fn containers(&self) -> Result<Vec<ContainerRecord>> {
        self.store.list()
    }

    /// This node's containers by id, without copying them (the store keeps the table decoded):
    /// for the paths every operation takes.
    pub fn containers_shared(&self) -> Result<crate::store::Listed<ContainerRecord>> {
        self.store.list_shared()
    }

    /// Finds a network by full id, name, or unique id prefix.
    pub fn find_network(&self, key: &str) -> ApiResult<NetworkRecord> {
        Ok(lookup::find(&self.networks()?, key)?.clone())
    }

    pub fn find_container(&self, key: &str) -> ApiResult<ContainerRecord> {
        let all = self.containers_shared()?;
        let all: Vec<&ContainerRecord> = all.values().collect();
        Ok((*lookup::find(&all, key)?).clone())
    }

    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.cfg.root.join("containers").join(id)
    }

    pub fn netns_path(&self, id: &str) -> PathBuf {
        self.cfg.root.join("netns").join(id)
    }

    pub fn put_container(&self, c: &ContainerRecord) -> Result<()> {
        self.store.put(c)
    }

    /// Published ports answer on every address of the node (uplink and gateways).
    pub async fn refresh_node_addrs(&self) -> Result<()> {
        let addrs: Vec<Ipv4Addr> =
            self.nl.ipv4_addrs().await?.into_iter().map(|(_, ip, _)| ip).filter(|ip| !ip.is_loopback()).collect();
        let want: Vec<(u32, u32)> = addrs.iter().map(|a| (ip_be(*a), 1)).collect();
        crate::datapath::sync(&mut self.dp.lock().unwrap().node_addrs, &want, |_, _| true)
    }
}
