//! The `overlay` driver: swarm-wide networks over VXLAN. The network's record, its VNI and every
//! address lease live in etcd (create-if-absent keys, so two managers cannot take the same one);
//! each node keeps a copy of the records (`CachedOverlay`) and programs the endpoints of other
//! nodes (ENDPOINTS entries with their node's underlay address) from etcd. Containers attach as on
//! a bridge network (`kernel.rs`), with room for the VXLAN header, and register their endpoint in
//! etcd so every other node can reach and name them.
use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    sync::Arc,
};

use anyhow::{Context as _, Result, anyhow};
use async_trait::async_trait;
use aya::programs::TcAttachType;
use netbee_abi::{Endpoint as DpEndpoint, config, net_flags};
use serde_json::{Value, json};

use super::{Attach, Context, NetworkDriver, Scope, kernel};
use crate::{
    api::{ApiError, ApiResult, ErrorKind, NetworkCreate},
    cluster::{self, ClusterState, etcd::Etcd},
    datapath::ip_be,
    ipam::{self, Allocator},
    lookup,
    model::{CachedOverlay, ContainerRecord, Endpoint, Membership, NetworkRecord, NodeRecord, RemoteEndpoint, Role, Status},
    names,
    store::Store,
};

/// The collect_md VXLAN device every overlay shares (the VNI travels in the tunnel key).
pub const VXLAN_DEVICE: &str = "nbvxlan0";
/// Room for the VXLAN header on a 1500-byte underlay.
const MTU: u32 = 1450;

pub struct Overlay;

#[async_trait]
impl NetworkDriver for Overlay {
    fn name(&self) -> &'static str {
        "overlay"
    }

    fn scope(&self) -> Scope {
        Scope::Swarm
    }

    fn mtu(&self) -> u32 {
        MTU
    }

    fn inspect_options(&self, net: &NetworkRecord) -> Value {
        json!({ "com.docker.network.driver.overlay.vxlanid_list": net.vni.to_string() })
    }

    /// The VXLAN device and its ingress program, on every node started with a cluster store.
    async fn prepare_node(&self, cx: &Context<'_>) -> Result<()> {
        if cx.cluster.is_none() {
            return Ok(());
        }
        let vx = cx.nl.ensure_vxlan(VXLAN_DEVICE, netbee_abi::VXLAN_PORT, MTU).await?;
        let mut dp = cx.dp.lock().unwrap();
        dp.set_config(config::VXLAN_IFINDEX, vx as u64)?;
        dp.attach_tc("tc_overlay_ingress", VXLAN_DEVICE, TcAttachType::Ingress, "overlay-ingress")
    }

    async fn create(&self, cx: &Context<'_>, req: &NetworkCreate, existing: &[NetworkRecord]) -> ApiResult<NetworkRecord> {
        let (c, _) = member(cx).map_err(|_| {
            ApiError::bad_request(
                "overlay networks need a swarm: start the daemon with --cluster-store and run `netbee swarm init` or `netbee swarm join`",
            )
        })?;
        require_manager(c).await?;
        // decide from the whole set, commit only if no other manager committed meanwhile
        let rec = loop {
            let seen = c.etcd.guard_revision(cluster::NETWORKS_GUARD).await?;
            let overlays: Vec<NetworkRecord> =
                c.etcd.list(cluster::NETWORKS).await?.into_iter().map(|(_, n)| n).collect();
            if overlays.iter().any(|n| n.name == req.name) {
                return Err(ApiError::conflict(format!("network with name {} already exists", req.name)));
            }
            let taken = super::taken_subnets(cx, &[overlays.as_slice(), existing].concat());
            let cfg = ipam::pool_config(
                req.subnet.as_deref(),
                req.gateway.as_deref(),
                req.ip_range.as_deref(),
                &taken,
                &ipam::overlay_default_pools(),
            )
            .map_err(ApiError::from)?;
            let used: HashSet<u32> = overlays.iter().map(|n| n.vni).collect();
            let vni = (cluster::FIRST_VNI + 1..).find(|v| !used.contains(v)).expect("a free VNI");
            let rec = NetworkRecord {
                id: names::new_id(),
                name: req.name.clone(),
                driver: self.name().into(),
                created: chrono::Utc::now(),
                internal: req.internal,
                net_id: vni,
                ipam: Some(Allocator::new(cfg)),
                labels: req.labels.clone(),
                vni,
            };
            if c.etcd.put_guarded(cluster::NETWORKS_GUARD, seen, &cluster::key_network(&rec.id), &rec).await? {
                break rec;
            }
        };
        cx.store.put(&CachedOverlay(rec.clone()))?;
        c.overlay_changes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.setup(cx, &rec).await?;
        c.sync_now.notify_waiters();
        Ok(rec)
    }

    async fn remove(&self, cx: &Context<'_>, net: &NetworkRecord) -> ApiResult<()> {
        let (c, _) = member(cx)?;
        require_manager(c).await?;
        let users: Vec<String> = c
            .etcd
            .list::<RemoteEndpoint>(cluster::ENDPOINTS)
            .await?
            .into_iter()
            .filter(|(_, e)| e.network_id == net.id)
            .map(|(_, e)| e.container_name)
            .collect();
        super::refuse_in_use(net, &users)?;
        c.etcd.delete(&cluster::key_network(&net.id)).await?;
        c.etcd.delete_prefix(&ipam_prefix(&net.id)).await?;
        c.overlay_changes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.teardown(cx, net).await?;
        cx.store.delete::<CachedOverlay>(&net.id)?;
        c.sync_now.notify_waiters();
        Ok(())
    }

    async fn setup(&self, cx: &Context<'_>, net: &NetworkRecord) -> Result<()> {
        kernel::setup_network(cx.nl, cx.dp, net, net_flags::OVERLAY).await
    }

    async fn teardown(&self, cx: &Context<'_>, net: &NetworkRecord) -> Result<()> {
        kernel::teardown_network(cx.nl, cx.dp, net).await
    }

    /// Leases an address cluster-wide (create-if-absent in etcd).
    async fn allocate(
        &self,
        cx: &Context<'_>,
        net: &NetworkRecord,
        want: Option<Ipv4Addr>,
        owner: &str,
    ) -> ApiResult<Ipv4Addr> {
        let (c, _) = member(cx)?;
        let ipam = net.ipam.as_ref().ok_or_else(|| ApiError::bad_request("network has no addresses"))?;
        if let Some(ip) = want {
            let mut probe = ipam.clone();
            probe.reserve(ip).map_err(ApiError::from)?;
            if !c.etcd.create(&cluster::key_ipam(&net.id, ip), &json!({"owner": owner})).await? {
                return Err(ApiError::conflict(format!("address {ip} is already in use on network {}", net.name)));
            }
            return Ok(ip);
        }
        let mut probe = ipam.clone();
        for k in c.etcd.keys(&ipam_prefix(&net.id)).await? {
            if let Some(Ok(ip)) = k.rsplit('/').next().map(str::parse) {
                let _ = probe.reserve(ip);
            }
        }
        loop {
            let ip = probe.allocate().map_err(ApiError::from)?;
            if c.etcd.create(&cluster::key_ipam(&net.id, ip), &json!({"owner": owner})).await? {
                return Ok(ip);
            }
        }
    }

    async fn release(&self, cx: &Context<'_>, net: &NetworkRecord, ip: Ipv4Addr) -> Result<()> {
        let Some(c) = cx.cluster else { return Ok(()) };
        c.etcd.delete(&cluster::key_endpoint(&net.id, ip)).await?;
        c.etcd.delete(&cluster::key_ipam(&net.id, ip)).await
    }

    async fn attach(&self, cx: &Context<'_>, net: &NetworkRecord, a: &Attach<'_>) -> Result<()> {
        kernel::attach_endpoint(cx.nl, cx.dp, a.ns_path, net, a.ep, a.default_route, a.backend).await?;
        let (c, m) = member(cx).map_err(|e| anyhow!("{e}"))?;
        register_endpoint(c, &m, a.container, a.ep).await
    }
}

fn ipam_prefix(network_id: &str) -> String {
    format!("/netbee/ipam/{network_id}/")
}

fn member<'a>(cx: &Context<'a>) -> ApiResult<(&'a ClusterState, Membership)> {
    let c = cx.cluster.ok_or_else(|| ApiError::unavailable(cluster::NO_CLUSTER_STORE))?;
    let m = c.member().ok_or_else(|| ApiError::unavailable(cluster::NOT_MEMBER))?;
    Ok((c, m))
}

async fn require_manager(c: &ClusterState) -> ApiResult<()> {
    match c.etcd.get::<NodeRecord>(&cluster::key_node(&c.node_id)).await? {
        Some(n) if n.role == Role::Manager => Ok(()),
        Some(_) => Err(ApiError::unavailable(cluster::NOT_MANAGER)),
        None => Err(ApiError::unavailable("this node was removed from the swarm")),
    }
}

/// Publishes a local endpoint in etcd: every other node programs it and resolves its names.
async fn register_endpoint(c: &ClusterState, m: &Membership, ct: &ContainerRecord, e: &Endpoint) -> Result<()> {
    let aliases =
        ct.attachments.iter().find(|a| a.network_id == e.network_id).map(|a| a.aliases.clone()).unwrap_or_default();
    let rec = RemoteEndpoint {
        network_id: e.network_id.clone(),
        ip: e.ip,
        mac: e.mac,
        node_id: c.node_id.clone(),
        node_addr: m.advertise,
        container_id: ct.id.clone(),
        container_name: ct.name.clone(),
        aliases,
    };
    c.etcd.put(&cluster::key_endpoint(&e.network_id, e.ip), &rec).await.context("registering the endpoint in etcd")
}

/// The overlays this node knows (as last synced from etcd).
pub(super) fn cached(store: &Store) -> Result<Vec<NetworkRecord>> {
    Ok(store.list::<CachedOverlay>()?.into_iter().map(|c| c.0).collect())
}

/// What the cluster says about overlays, read from etcd before the operation lock is taken.
pub struct ClusterView {
    overlays: Vec<NetworkRecord>,
    /// Shared with the listing: an endpoint unchanged since the last read is the same `Arc`.
    endpoints: Vec<Arc<RemoteEndpoint>>,
}

impl ClusterView {
    /// Read from this node's copy of the store: the cluster sync that reads it runs on the
    /// copy's changes.
    pub async fn read(etcd: &Etcd) -> Result<ClusterView> {
        Ok(ClusterView {
            overlays: etcd.list_copy(cluster::NETWORKS).await?.into_iter().map(|(_, n)| n).collect(),
            endpoints: etcd.list_copy_shared(cluster::ENDPOINTS).await?,
        })
    }

    /// Every overlay endpoint of the swarm, this node's included.
    pub fn endpoints(&self) -> &[Arc<RemoteEndpoint>] {
        &self.endpoints
    }
}

/// Makes this node's overlays and remote endpoints match the cluster view, and re-registers the
/// endpoints of local containers etcd lost (a restarted etcd, a lost write). Idempotent. True
/// when the remote endpoints changed.
pub async fn sync_cluster_view<'a>(
    cx: &Context<'_>,
    view: &ClusterView,
    containers: impl Iterator<Item = &'a ContainerRecord>,
) -> Result<bool> {
    let (c, m) = member(cx).map_err(|e| anyhow!("{e}"))?;
    let known = cached(cx.store)?;
    for n in &view.overlays {
        Overlay.setup(cx, n).await?;
        // a write (a committed transaction) only when the copy differs: this runs on every
        // cluster event, on every node
        if !known.iter().any(|k| k == n) {
            cx.store.put(&CachedOverlay(n.clone()))?;
        }
    }
    for n in known.iter().filter(|k| !view.overlays.iter().any(|o| o.id == k.id)) {
        Overlay.teardown(cx, n).await?;
        cx.store.delete::<CachedOverlay>(&n.id)?;
    }
    // looked up once each: searching the list for every local endpoint cost local × cluster
    let registered: foldhash::HashSet<(&str, Ipv4Addr)> =
        view.endpoints.iter().map(|r| (r.network_id.as_str(), r.ip)).collect();
    for ct in containers.filter(|ct| ct.state.status == Status::Running) {
        for e in &ct.endpoints {
            if view.overlays.iter().any(|o| o.id == e.network_id)
                && !registered.contains(&(e.network_id.as_str(), e.ip))
            {
                register_endpoint(c, &m, ct, e).await?;
            }
        }
    }
    let nets: HashMap<&str, u32> = view.overlays.iter().map(|n| (n.id.as_str(), n.net_id)).collect();
    let remote: Vec<(u32, DpEndpoint)> = view
        .endpoints
        .iter()
        .filter(|e| e.node_id != c.node_id)
        .filter_map(|e| {
            let net_id = *nets.get(e.network_id.as_str())?;
            let entry = DpEndpoint {
                ifindex: 0,
                net_id,
                mac: e.mac,
                host_mac: [0; 6],
                node_ip: u32::from(e.node_addr),
                flags: 0,
            };
            Some((ip_be(e.ip), entry))
        })
        .collect();
    cx.dp.lock().unwrap().sync_remote_endpoints(&remote)
}

/// The swarm's overlay that `key` names (its name, id or a unique id prefix) as etcd has it now,
/// made known and set up on this node (its cluster sync may not have caught up yet); None if
/// there is none.
pub async fn adopt_swarm_network(cx: &Context<'_>, key: &str) -> ApiResult<Option<NetworkRecord>> {
    let (c, _) = member(cx)?;
    let overlays: Vec<NetworkRecord> = c.etcd.list(cluster::NETWORKS).await?.into_iter().map(|(_, n)| n).collect();
    let found = match lookup::find(&overlays, key) {
        Ok(n) => Some(n.clone()),
        Err(e) if e.kind == ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    if let Some(n) = &found {
        c.overlay_changes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        cx.store.put(&CachedOverlay(n.clone()))?;
        Overlay.setup(cx, n).await?;
    }
    Ok(found)
}

/// Leaving the swarm: the overlays and every remote endpoint leave this node.
pub async fn leave_swarm(cx: &Context<'_>) -> Result<()> {
    for n in cached(cx.store)? {
        let _ = Overlay.teardown(cx, &n).await;
        cx.store.delete::<CachedOverlay>(&n.id)?;
    }
    cx.dp.lock().unwrap().sync_remote_endpoints(&[]).map(|_| ())
}

/// A node removed from the swarm: its endpoints, their address leases and its host-port claims go
/// with it.
pub async fn forget_node(etcd: &Etcd, node_id: &str) -> Result<()> {
    etcd.delete(&cluster::key_host_ports(node_id)).await?;
    for (k, e) in etcd.list::<RemoteEndpoint>(cluster::ENDPOINTS).await? {
        if e.node_id == node_id {
            etcd.delete(&k).await?;
            etcd.delete(&cluster::key_ipam(&e.network_id, e.ip)).await?;
        }
    }
    Ok(())
}
