//! Network drivers: how a network and a container's attachment to it exist, on this node and in
//! the cluster. Everything that depends on the kind of network lives in this directory; the
//! daemon asks a network's driver (`NetworkRecord::driver`) and never branches on the kind.
//!
//! - `bridge.rs`: node-local networks; addresses from the record's own allocator (embedded store).
//! - `overlay.rs`: swarm-wide networks over VXLAN; record, VNI and address leases in etcd, remote
//!   endpoints programmed from etcd.
//! - `host.rs`, `null.rs`: the predefined `host` and `none` modes (no interface of their own).
//! - `kernel.rs`: the kernel side every container-carrying driver shares (gateway device, map
//!   entries, a container's veth with `tc_from_container`).
//!
//! A new driver is one file here implementing [`NetworkDriver`] plus its line in `drivers!`.
use std::{collections::HashSet, net::Ipv4Addr, path::Path, sync::Mutex};

use anyhow::{Result, anyhow};
use async_trait::async_trait;
use ipnetwork::Ipv4Network;
use serde_json::Value;

use crate::{
    api::{ApiError, ApiResult, NetworkCreate},
    cluster::ClusterState,
    datapath::Datapath,
    model::{ContainerRecord, Endpoint, NetworkRecord},
    netlink::Netlink,
    store::Store,
};

pub mod kernel;

/// Declares the driver modules and the registry from one list: `name_of_module: DriverType`.
macro_rules! drivers {
    ($($module:ident: $driver:ident),* $(,)?) => {
        $(mod $module;)*
        /// Every driver, by the name users give with `--driver`.
        static DRIVERS: &[&dyn NetworkDriver] = &[$(&$module::$driver),*];
    };
}

drivers!(bridge: Bridge, overlay: Overlay, host: Host, null: Null);

/// Where a network exists: on one node, or on every node of the swarm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Local,
    Swarm,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Local => "local",
            Scope::Swarm => "swarm",
        }
    }
}

/// What a driver works with: the node's kernel handles, its store, and the cluster (if the daemon
/// was started with a cluster store).
pub struct Context<'a> {
    pub nl: &'a Netlink,
    pub dp: &'a Mutex<Datapath>,
    pub store: &'a Store,
    pub cluster: Option<&'a ClusterState>,
    /// Subnets a network created in this context must not overlap besides the known networks:
    /// the node's own for a user's `network create`, none for the predefined networks.
    pub avoid: &'a [(String, Ipv4Network)],
}

/// A container's interface being attached: where, with which address, and for whom.
pub struct Attach<'a> {
    pub container: &'a ContainerRecord,
    pub ep: &'a Endpoint,
    /// The container's network namespace.
    pub ns_path: &'a Path,
    pub default_route: bool,
    /// Load balancers may send it translated flows (published ports, service task).
    pub backend: bool,
}

/// A kind of network. Allocation and removal keep the driver's records (embedded store or etcd)
/// durable before the kernel is touched; `setup`/`teardown`/`attach`/`detach` make this node's
/// kernel objects and are idempotent (start-up and the cluster sync call them again).
#[async_trait]
pub trait NetworkDriver: Send + Sync {
    /// The name users give with `--driver` and that `network ls` shows.
    fn name(&self) -> &'static str;
    fn scope(&self) -> Scope;
    /// Whether containers attach to its networks (host and none are modes, not networks).
    fn carries_containers(&self) -> bool {
        true
    }
    /// MTU of container interfaces on its networks.
    fn mtu(&self) -> u32 {
        1500
    }
    /// Driver-specific `Options` of `network inspect`, as docker shows them (none for a bridge).
    fn inspect_options(&self, _net: &NetworkRecord) -> Value {
        serde_json::json!({})
    }
    /// Node-wide objects the driver needs before its first network (called once at start-up).
    async fn prepare_node(&self, _cx: &Context<'_>) -> Result<()> {
        Ok(())
    }
    /// Validates the request, allocates the network (id, subnet, datapath id) and records it.
    /// `existing` are all networks this node knows. Called with the daemon's operation lock held.
    async fn create(
        &self,
        cx: &Context<'_>,
        req: &NetworkCreate,
        existing: &[NetworkRecord],
    ) -> ApiResult<NetworkRecord>;
    /// Forgets the network (refused while endpoints use it) and removes it from this node.
    async fn remove(&self, cx: &Context<'_>, net: &NetworkRecord) -> ApiResult<()>;
    /// Makes the network exist on this node.
    async fn setup(&self, _cx: &Context<'_>, _net: &NetworkRecord) -> Result<()> {
        Ok(())
    }
    /// Removes the network from this node.
    async fn teardown(&self, _cx: &Context<'_>, _net: &NetworkRecord) -> Result<()> {
        Ok(())
    }
    /// Takes an address on the network (`want`, or the next free one) for `owner`.
    async fn allocate(
        &self,
        _cx: &Context<'_>,
        net: &NetworkRecord,
        _want: Option<Ipv4Addr>,
        _owner: &str,
    ) -> ApiResult<Ipv4Addr> {
        Err(ApiError::bad_request(format!("network {} has no addresses", net.name)))
    }
    /// Gives an address back (nothing when the network is already gone).
    async fn release(&self, _cx: &Context<'_>, _net: &NetworkRecord, _ip: Ipv4Addr) -> Result<()> {
        Ok(())
    }
    /// Start-up: the addresses in use are exactly `in_use` (interrupted starts and stops leave
    /// allocations behind). Only drivers whose allocations live on this node act.
    async fn reconcile_addresses(
        &self,
        _cx: &Context<'_>,
        _net: &NetworkRecord,
        _in_use: &HashSet<Ipv4Addr>,
    ) -> Result<()> {
        Ok(())
    }
    /// Creates the container's interface on the network.
    async fn attach(&self, cx: &Context<'_>, net: &NetworkRecord, a: &Attach<'_>) -> Result<()> {
        kernel::attach_endpoint(cx.nl, cx.dp, a.ns_path, net, a.ep, a.default_route, a.backend).await
    }
    /// Removes what `attach` made; safe on a half-made or already removed endpoint.
    async fn detach(&self, cx: &Context<'_>, _net: &NetworkRecord, ep: &Endpoint) -> Result<()> {
        kernel::detach_endpoint(cx.nl, cx.dp, ep).await
    }
}

/// The driver called `name`.
pub fn driver(name: &str) -> Option<&'static dyn NetworkDriver> {
    DRIVERS.iter().copied().find(|d| d.name() == name)
}

impl NetworkRecord {
    /// This network's driver. A record names only registered drivers (`create` checks), so an
    /// unknown name is a store written by a newer netbee: it is treated as a mode without
    /// interfaces rather than failing every listing.
    pub fn driver(&self) -> &'static dyn NetworkDriver {
        driver(&self.driver).unwrap_or(&null::Null)
    }

    pub fn carries_containers(&self) -> bool {
        self.driver().carries_containers()
    }

    pub fn scope(&self) -> Scope {
        self.driver().scope()
    }

    pub fn mtu(&self) -> u32 {
        self.driver().mtu()
    }

    /// Name of the node-side device holding the gateway address.
    pub fn device(&self) -> String {
        format!("nbn{}", &self.id[..12])
    }

    pub fn gateway(&self) -> Option<Ipv4Addr> {
        self.ipam.as_ref().map(|i| i.config().gateway)
    }
}

/// The networks every node has from its first start: `bridge` (docker's default, 172.17.0.0/16),
/// `host` and `none`.
pub const PREDEFINED: [&str; 3] = ["bridge", "host", "none"];

/// Every network this node knows: its own and the swarm's (as last synced from etcd).
pub fn all(store: &Store) -> Result<Vec<NetworkRecord>> {
    let mut nets: Vec<NetworkRecord> = store.list()?;
    nets.extend(overlay::cached(store)?);
    Ok(nets)
}

/// Subnets a new network must not overlap: every network this node knows and what the caller
/// asked to avoid (`Context::avoid`).
fn taken_subnets(cx: &Context<'_>, existing: &[NetworkRecord]) -> Vec<(String, Ipv4Network)> {
    existing
        .iter()
        .filter_map(|n| n.ipam.as_ref().map(|i| (n.name.clone(), i.config().subnet)))
        .chain(cx.avoid.iter().cloned())
        .collect()
}

/// The networks of the node's own interfaces and loopback: a user's network there would put
/// the LAN gateway's address on its gateway device and cut the node off.
pub async fn node_subnets(nl: &Netlink) -> Result<Vec<(String, Ipv4Network)>> {
    let names: std::collections::HashMap<u32, String> =
        nl.links().await?.into_iter().map(|l| (l.index, l.name)).collect();
    let mut out = Vec::new();
    for (index, ip, prefix) in nl.ipv4_addrs().await? {
        let name = names.get(&index).cloned().unwrap_or_default();
        // the gateway devices of netbee's own networks are known networks already
        if ip.is_loopback() || name.starts_with("nbn") {
            continue;
        }
        let net = Ipv4Network::new(ip, prefix)?;
        out.push((format!("the node's own network on {name}"), Ipv4Network::new(net.network(), prefix)?));
    }
    out.push(("loopback".into(), Ipv4Network::new(Ipv4Addr::new(127, 0, 0, 0), 8)?));
    Ok(out)
}

/// Creates the predefined networks this node's store lacks (first start).
pub async fn ensure_predefined(cx: &Context<'_>) -> Result<()> {
    let have = all(cx.store)?;
    for (name, driver) in [("bridge", "bridge"), ("host", "host"), ("none", "null")] {
        if have.iter().any(|n| n.name == name) {
            continue;
        }
        let req = NetworkCreate {
            name: name.into(),
            driver: Some(driver.into()),
            subnet: (name == "bridge").then(|| bridge::DEFAULT_SUBNET.into()),
            ..Default::default()
        };
        let d = self::driver(driver).ok_or_else(|| anyhow!("no {driver} driver"))?;
        d.create(cx, &req, &have).await.map_err(|e| anyhow!("creating the predefined network {name}: {e}"))?;
    }
    Ok(())
}

/// Node-wide setup of every driver, at start-up.
pub async fn prepare_node(cx: &Context<'_>) -> Result<()> {
    for d in DRIVERS {
        d.prepare_node(cx).await?;
    }
    Ok(())
}

pub use overlay::{ClusterView, adopt_swarm_network, forget_node, leave_swarm, sync_cluster_view};

/// `create` of a mode driver (host, none): only its predefined instance exists.
fn create_mode(
    cx: &Context<'_>,
    driver: &'static str,
    req: &NetworkCreate,
    existing: &[NetworkRecord],
) -> ApiResult<NetworkRecord> {
    if existing.iter().any(|n| n.driver == driver) {
        return Err(ApiError::bad_request(format!("only one instance of \"{driver}\" network is allowed")));
    }
    let rec = NetworkRecord {
        id: crate::names::new_id(),
        name: req.name.clone(),
        driver: driver.into(),
        created: chrono::Utc::now(),
        internal: false,
        net_id: 0,
        ipam: None,
        labels: req.labels.clone(),
        vni: 0,
    };
    cx.store.put(&rec)?;
    Ok(rec)
}

/// `network rm` of a network containers still use (named in `users`).
pub fn refuse_in_use(net: &NetworkRecord, users: &[String]) -> ApiResult<()> {
    if users.is_empty() {
        return Ok(());
    }
    Err(ApiError::conflict(format!(
        "error while removing network: network {} has active endpoints ({})",
        net.name,
        users.join(", ")
    )))
}

pub fn predefined_error(net: &NetworkRecord) -> ApiError {
    ApiError::bad_request(format!("{} is a pre-defined network and cannot be removed", net.name))
}
