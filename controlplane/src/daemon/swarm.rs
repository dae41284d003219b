//! Cluster membership and overlay networks on top of etcd: `swarm init|join|leave|join-token`,
//! `node ls|inspect|update|promote|demote|rm`, liveness by lease, leader election, and the sync
//! loop that turns the cluster's overlays and endpoints into this node's kernel state.
use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow};
use axum::{Json, Router, routing::post};
use futures::StreamExt as _;
use netbee_abi::{Endpoint as DpEndpoint, MacKey};
use serde_json::{Value, json};
use tracing::{info, warn};

use super::Daemon;
use crate::{
    api::{ApiError, ApiResult, NetworkCreate},
    cluster::{self, Availability, ClusterInfo, Liveness, Membership, NodeRecord, RemoteEndpoint, Role, etcd::Etcd},
    datapath::{ignore_missing, ip_be},
    ipam::{self, Allocator},
    model::{ContainerRecord, Driver, Endpoint, NetworkRecord, Status},
    names,
    network::bridge,
    store,
};

/// What a daemon started with `--cluster-store` keeps about the cluster.
pub struct ClusterState {
    pub etcd: Etcd,
    pub node_id: String,
    pub hostname: String,
    pub membership: std::sync::RwLock<Option<Membership>>,
    pub is_leader: std::sync::atomic::AtomicBool,
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    sync_now: tokio::sync::Notify,
}

impl ClusterState {
    pub fn new(
        endpoints: Vec<String>,
        node_id: String,
        hostname: String,
        membership: Option<Membership>,
    ) -> ClusterState {
        ClusterState {
            etcd: Etcd::new(endpoints),
            node_id,
            hostname,
            membership: std::sync::RwLock::new(membership),
            is_leader: Default::default(),
            tasks: Default::default(),
            sync_now: Default::default(),
        }
    }

    pub fn member(&self) -> Option<Membership> {
        self.membership.read().unwrap().clone()
    }
}

const NOT_MANAGER: &str = "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. Please run this command on a manager node or promote the current node to a manager.";
const NOT_MEMBER: &str = "This node is not a swarm manager. Use \"netbee swarm init\" or \"netbee swarm join\" to connect this node to swarm and try again.";

impl Daemon {
    pub fn cluster(&self) -> ApiResult<&Arc<ClusterState>> {
        self.cluster.as_ref().ok_or_else(|| {
            ApiError::bad_request("this daemon has no cluster store: start it with --cluster-store etcd://ADDR:2379")
        })
    }

    fn member(&self) -> ApiResult<(&Arc<ClusterState>, Membership)> {
        let c = self.cluster()?;
        let m = c.member().ok_or_else(|| ApiError::bad_request(NOT_MEMBER))?;
        Ok((c, m))
    }

    async fn require_manager(&self) -> ApiResult<&Arc<ClusterState>> {
        let (c, _) = self.member()?;
        let me: Option<NodeRecord> = c.etcd.get(&cluster::key_node(&c.node_id)).await?;
        match me {
            Some(n) if n.role == Role::Manager => Ok(c),
            Some(_) => Err(ApiError::bad_request(NOT_MANAGER)),
            None => Err(ApiError::bad_request("this node was removed from the swarm")),
        }
    }

    async fn local_addr(&self, want: Option<&str>) -> ApiResult<Ipv4Addr> {
        let addrs: Vec<Ipv4Addr> = self.nl.ipv4_addrs().await?.into_iter().map(|(_, ip, _)| ip).collect();
        match want {
            None => Ok(self.node.uplink_ip),
            Some(s) => {
                let ip: Ipv4Addr = s
                    .split(':')
                    .next()
                    .unwrap_or_default()
                    .parse()
                    .map_err(|_| ApiError::bad_request(format!("invalid advertise address {s:?}")))?;
                if !addrs.contains(&ip) {
                    return Err(ApiError::bad_request(format!(
                        "advertise address {ip} is not an address of this node"
                    )));
                }
                Ok(ip)
            }
        }
    }

    pub async fn swarm_init(self: &Arc<Self>, advertise: Option<&str>) -> ApiResult<Value> {
        let _g = self.op.lock().await;
        let c = self.cluster()?.clone();
        if c.member().is_some() {
            return Err(ApiError::conflict(
                "This node is already part of a swarm. Use \"netbee swarm leave\" to leave this swarm and join another one.",
            ));
        }
        let addr = self.local_addr(advertise).await?;
        let id = names::new_id();
        let info = ClusterInfo {
            id: id.clone(),
            created: chrono::Utc::now(),
            worker_token: cluster::new_token(&id),
            manager_token: cluster::new_token(&id),
        };
        if !c.etcd.create(&cluster::key_cluster(), &info).await? {
            return Err(ApiError::conflict(format!(
                "a swarm already exists in the cluster store {}: join it with \"netbee swarm join\"",
                c.etcd.endpoints().join(",")
            )));
        }
        self.become_member(&c, &info, addr, Role::Manager).await?;
        Ok(json!({
            "ClusterID": id,
            "NodeID": c.node_id,
            "JoinCommand": format!("netbee swarm join --token {} {addr}:{}", info.worker_token, cluster::JOIN_PORT),
        }))
    }

    async fn become_member(
        self: &Arc<Self>,
        c: &Arc<ClusterState>,
        info: &ClusterInfo,
        addr: Ipv4Addr,
        role: Role,
    ) -> Result<()> {
        let rec = NodeRecord {
            id: c.node_id.clone(),
            hostname: c.hostname.clone(),
            addr,
            role,
            availability: Availability::Active,
            labels: Default::default(),
            created: chrono::Utc::now(),
        };
        c.etcd.put(&cluster::key_node(&c.node_id), &rec).await?;
        let m = Membership { cluster_id: info.id.clone(), advertise: addr };
        self.store.put(store::META, "membership", &m)?;
        *c.membership.write().unwrap() = Some(m);
        self.start_member_tasks();
        info!(node = %c.node_id, %addr, ?role, "joined the swarm");
        Ok(())
    }

    pub async fn swarm_join(self: &Arc<Self>, token: &str, remote: &str, advertise: Option<&str>) -> ApiResult<()> {
        let _g = self.op.lock().await;
        let c = self.cluster()?.clone();
        if c.member().is_some() {
            return Err(ApiError::conflict(
                "This node is already part of a swarm. Use \"netbee swarm leave\" to leave this swarm and join another one.",
            ));
        }
        let (ip, port) = cluster::parse_manager_addr(remote).map_err(ApiError::bad_request)?;
        let addr = self.local_addr(advertise).await?;
        let answer = join_request(ip, port, token).await.map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
        let role = if answer["Role"] == "manager" { Role::Manager } else { Role::Worker };
        let info: ClusterInfo = c
            .etcd
            .get(&cluster::key_cluster())
            .await?
            .ok_or_else(|| ApiError::bad_request("the cluster store holds no swarm"))?;
        if answer["ClusterID"] != json!(info.id) {
            return Err(ApiError::bad_request(format!(
                "the manager at {remote} belongs to another swarm than this daemon's cluster store"
            )));
        }
        self.become_member(&c, &info, addr, role).await?;
        Ok(())
    }

    pub async fn swarm_leave(self: &Arc<Self>, force: bool) -> ApiResult<()> {
        let _g = self.op.lock().await;
        let (c, _) = self.member()?;
        let c = c.clone();
        let nodes: Vec<(String, NodeRecord)> = c.etcd.list(cluster::NODES).await?;
        let me = nodes.iter().find(|(_, n)| n.id == c.node_id).map(|(_, n)| n.clone());
        let managers = nodes.iter().filter(|(_, n)| n.role == Role::Manager).count();
        if !force && me.as_ref().is_some_and(|m| m.role == Role::Manager) && managers == 1 && nodes.len() > 1 {
            return Err(ApiError::bad_request(
                "You are attempting to leave the swarm on a node that is its last manager: the other nodes would be left without one. Promote another node first, or use --force.",
            ));
        }
        let on_overlays: Vec<String> = self
            .containers()?
            .into_iter()
            .filter(|ct| {
                ct.state.status == Status::Running && ct.endpoints.iter().any(|e| self.is_overlay(&e.network_id))
            })
            .map(|ct| ct.name)
            .collect();
        if !on_overlays.is_empty() && !force {
            return Err(ApiError::bad_request(format!(
                "containers on overlay networks are running here ({}): stop them or use --force",
                on_overlays.join(", ")
            )));
        }
        self.stop_member_tasks();
        let mine: Vec<(String, RemoteEndpoint)> = c.etcd.list(cluster::ENDPOINTS).await.unwrap_or_default();
        for (k, e) in mine {
            if e.node_id == c.node_id {
                let _ = c.etcd.delete(&k).await;
            }
        }
        c.etcd.delete(&cluster::key_alive(&c.node_id)).await?;
        c.etcd.delete(&cluster::key_node(&c.node_id)).await?;
        self.store.delete(store::META, "membership")?;
        *c.membership.write().unwrap() = None;
        c.is_leader.store(false, Ordering::Relaxed);
        for n in self.store.list::<NetworkRecord>(store::OVERLAYS)? {
            let _ = bridge::teardown_network(&self.nl, &self.dp, &n).await;
            self.store.delete(store::OVERLAYS, &n.id)?;
        }
        self.apply_remote_endpoints(&[], "")?;
        self.apply_peer_nodes(&c.node_id, &[], &[])?;
        info!("left the swarm");
        Ok(())
    }

    pub async fn join_token(&self, role: &str) -> ApiResult<Value> {
        let c = self.require_manager().await?;
        let info: ClusterInfo =
            c.etcd.get(&cluster::key_cluster()).await?.ok_or_else(|| ApiError::bad_request("no swarm in the store"))?;
        let token = match role {
            "worker" => info.worker_token,
            "manager" => info.manager_token,
            r => return Err(ApiError::bad_request(format!("unknown role {r:?}: use worker or manager"))),
        };
        let addr = c.member().map(|m| m.advertise).unwrap_or(self.node.uplink_ip);
        Ok(json!({
            "Token": token,
            "JoinCommand": format!("netbee swarm join --token {token} {addr}:{}", cluster::JOIN_PORT),
        }))
    }

    /// Nodes with their liveness and manager status, as `node ls` shows them.
    pub async fn node_list(&self) -> ApiResult<Vec<Value>> {
        let c = self.require_manager().await?;
        let nodes: Vec<(String, NodeRecord)> = c.etcd.list(cluster::NODES).await?;
        let alive: HashSet<String> = c
            .etcd
            .keys(cluster::ALIVE)
            .await?
            .into_iter()
            .filter_map(|k| k.rsplit('/').next().map(String::from))
            .collect();
        let leader = self.leader_id().await;
        let mut out: Vec<Value> = nodes
            .into_iter()
            .map(|(_, n)| {
                let up = alive.contains(&n.id);
                let manager_status = match n.role {
                    Role::Worker => "",
                    Role::Manager if leader.as_deref() == Some(n.id.as_str()) => "Leader",
                    Role::Manager if up => "Reachable",
                    Role::Manager => "Unreachable",
                };
                json!({
                    "ID": n.id,
                    "Self": n.id == c.node_id,
                    "Description": { "Hostname": n.hostname },
                    "Spec": { "Role": n.role, "Availability": n.availability, "Labels": n.labels },
                    "Status": { "State": if up { "ready" } else { "down" }, "Addr": n.addr.to_string() },
                    "ManagerStatus": manager_status,
                    "CreatedAt": n.created,
                })
            })
            .collect();
        out.sort_by(|a, b| a["Description"]["Hostname"].as_str().cmp(&b["Description"]["Hostname"].as_str()));
        Ok(out)
    }

    async fn leader_id(&self) -> Option<String> {
        let c = self.cluster.as_ref()?;
        let mut client = c.etcd.client().await.ok()?;
        let r = tokio::time::timeout(Duration::from_secs(2), client.leader(cluster::ELECTION)).await.ok()?.ok()?;
        r.kv().map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
    }

    async fn find_node(&self, c: &ClusterState, key: &str) -> ApiResult<NodeRecord> {
        let nodes: Vec<(String, NodeRecord)> = c.etcd.list(cluster::NODES).await?;
        let m: Vec<NodeRecord> = nodes
            .into_iter()
            .map(|(_, n)| n)
            .filter(|n| n.id == key || n.hostname == key || (!key.is_empty() && n.id.starts_with(key)))
            .collect();
        match m.len() {
            1 => Ok(m[0].clone()),
            0 => Err(ApiError::not_found(format!("node {key} not found"))),
            _ => Err(ApiError::bad_request(format!("node {key} is ambiguous ({} matches found)", m.len()))),
        }
    }

    pub async fn node_inspect(&self, key: &str) -> ApiResult<Value> {
        let c = self.require_manager().await?;
        let n = self.find_node(c, key).await?;
        let list = self.node_list().await?;
        list.into_iter()
            .find(|v| v["ID"] == json!(n.id))
            .ok_or_else(|| ApiError::not_found(format!("node {key} not found")))
    }

    pub async fn node_update(
        &self,
        key: &str,
        availability: Option<&str>,
        label_add: &[String],
        label_rm: &[String],
    ) -> ApiResult<()> {
        let c = self.require_manager().await?;
        let mut n = self.find_node(c, key).await?;
        if let Some(a) = availability {
            n.availability = Availability::parse(a).map_err(ApiError::bad_request)?;
        }
        for l in label_add {
            let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
            if k.is_empty() {
                return Err(ApiError::bad_request(format!("invalid label {l:?}")));
            }
            n.labels.insert(k.to_string(), v.to_string());
        }
        for k in label_rm {
            n.labels.remove(k);
        }
        c.etcd.put(&cluster::key_node(&n.id), &n).await?;
        c.sync_now.notify_waiters();
        Ok(())
    }

    pub async fn node_set_role(&self, key: &str, role: Role) -> ApiResult<()> {
        let c = self.require_manager().await?;
        let mut n = self.find_node(c, key).await?;
        if role == Role::Worker && n.role == Role::Manager {
            let managers = c
                .etcd
                .list::<NodeRecord>(cluster::NODES)
                .await?
                .into_iter()
                .filter(|(_, n)| n.role == Role::Manager)
                .count();
            if managers <= 1 {
                return Err(ApiError::bad_request(format!(
                    "rpc error: attempting to demote the last manager of the swarm ({})",
                    n.hostname
                )));
            }
        }
        n.role = role;
        c.etcd.put(&cluster::key_node(&n.id), &n).await?;
        Ok(())
    }

    pub async fn node_remove(&self, key: &str, force: bool) -> ApiResult<()> {
        let c = self.require_manager().await?;
        let n = self.find_node(c, key).await?;
        let up = c.etcd.get::<Value>(&cluster::key_alive(&n.id)).await?.is_some();
        if up && !force {
            return Err(ApiError::bad_request(format!("node {} is not down and can't be removed", n.hostname)));
        }
        if n.id == c.node_id {
            return Err(ApiError::bad_request("a node cannot remove itself: use \"netbee swarm leave\""));
        }
        if n.role == Role::Manager {
            let managers = c
                .etcd
                .list::<NodeRecord>(cluster::NODES)
                .await?
                .into_iter()
                .filter(|(_, n)| n.role == Role::Manager)
                .count();
            if managers <= 1 {
                return Err(ApiError::bad_request("cannot remove the last manager of the swarm"));
            }
        }
        for (k, e) in c.etcd.list::<RemoteEndpoint>(cluster::ENDPOINTS).await? {
            if e.node_id == n.id {
                c.etcd.delete(&k).await?;
                c.etcd.delete(&cluster::key_ipam(&e.network_id, e.ip)).await?;
            }
        }
        c.etcd.delete(&cluster::key_node(&n.id)).await?;
        c.etcd.delete(&cluster::key_alive(&n.id)).await?;
        Ok(())
    }

    pub fn start_member_tasks(self: &Arc<Self>) {
        let Some(c) = self.cluster.clone() else { return };
        let mut tasks = c.tasks.lock().unwrap();
        for t in tasks.drain(..) {
            t.abort();
        }
        let d = self.clone();
        tasks.push(tokio::spawn(async move { d.liveness_loop().await }));
        let d = self.clone();
        tasks.push(tokio::spawn(async move { d.sync_loop().await }));
        let d = self.clone();
        tasks.push(tokio::spawn(async move { d.join_server().await }));
    }

    fn stop_member_tasks(&self) {
        if let Some(c) = &self.cluster {
            for t in c.tasks.lock().unwrap().drain(..) {
                t.abort();
            }
        }
    }

    /// Keeps this node's liveness key alive under a lease; managers campaign for leadership with
    /// the same lease, so a dead daemon loses both at once.
    async fn liveness_loop(self: Arc<Self>) {
        let c = self.cluster.clone().expect("cluster");
        loop {
            if let Err(e) = self.liveness_once(&c).await {
                warn!("cluster liveness: {e:#}");
            }
            c.is_leader.store(false, Ordering::Relaxed);
            c.etcd.reset().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn liveness_once(&self, c: &Arc<ClusterState>) -> Result<()> {
        let lease = c.etcd.grant(cluster::LIVENESS_TTL).await?;
        let alive = Liveness { since: chrono::Utc::now(), uplink_mac: self.node.uplink_mac };
        c.etcd.put_leased(&cluster::key_alive(&c.node_id), &alive, lease).await?;
        let mut client = c.etcd.client().await?;
        let (mut keeper, mut stream) = client.lease_keep_alive(lease).await?;
        let me: Option<NodeRecord> = c.etcd.get(&cluster::key_node(&c.node_id)).await?;
        let campaign = if me.is_some_and(|n| n.role == Role::Manager) {
            let (c2, mut client2) = (c.clone(), client.clone());
            Some(tokio::spawn(async move {
                if client2.campaign(cluster::ELECTION, c2.node_id.clone(), lease).await.is_ok() {
                    c2.is_leader.store(true, Ordering::Relaxed);
                    info!("elected cluster leader");
                }
            }))
        } else {
            None
        };
        let result = async {
            loop {
                keeper.keep_alive().await?;
                match tokio::time::timeout(Duration::from_secs(3), stream.message()).await {
                    Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                    Ok(Ok(_)) => return Err(anyhow!("lease expired")),
                    Ok(Err(e)) => return Err(e.into()),
                    Err(_) => return Err(anyhow!("no keepalive answer from etcd")),
                }
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
        }
        .await;
        if let Some(t) = campaign {
            t.abort();
        }
        result
    }

    /// Watches the cluster prefix and re-applies the whole cluster view on any change (and every
    /// few seconds regardless), so a missed event or an etcd restart heals by itself.
    async fn sync_loop(self: Arc<Self>) {
        let c = self.cluster.clone().expect("cluster");
        loop {
            let watch = async {
                let mut client = c.etcd.client().await?;
                let mut stream =
                    client.watch(cluster::WATCH_PREFIX, Some(etcd_client::WatchOptions::new().with_prefix())).await?;
                self.full_sync().await?;
                loop {
                    tokio::select! {
                        m = stream.next() => match m {
                            Some(Ok(_)) => {}
                            Some(Err(e)) => return Err(anyhow::Error::from(e)),
                            None => return Err(anyhow!("watch closed")),
                        },
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                        _ = c.sync_now.notified() => {}
                    }
                    self.full_sync().await?;
                }
                #[allow(unreachable_code)]
                Ok::<(), anyhow::Error>(())
            };
            if let Err(e) = watch.await {
                warn!("cluster sync: {e:#}");
                c.etcd.reset().await;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Makes the node's overlay networks and remote endpoints match etcd.
    pub async fn full_sync(&self) -> Result<()> {
        let c = self.cluster.as_ref().expect("cluster");
        let overlays: Vec<NetworkRecord> = c.etcd.list(cluster::NETWORKS).await?.into_iter().map(|(_, n)| n).collect();
        let endpoints: Vec<RemoteEndpoint> =
            c.etcd.list(cluster::ENDPOINTS).await?.into_iter().map(|(_, e)| e).collect();
        let nodes: Vec<(String, NodeRecord)> = c.etcd.list(cluster::NODES).await?;
        let alive: Vec<(String, Liveness)> = c.etcd.list(cluster::ALIVE).await?;
        let _g = self.op.lock().await;
        let known: Vec<NetworkRecord> = self.store.list(store::OVERLAYS)?;
        for n in &overlays {
            bridge::setup_network(&self.nl, &self.dp, n).await?;
            self.store.put(store::OVERLAYS, &n.id, n)?;
        }
        for n in known.iter().filter(|k| !overlays.iter().any(|o| o.id == k.id)) {
            bridge::teardown_network(&self.nl, &self.dp, n).await?;
            self.store.delete(store::OVERLAYS, &n.id)?;
        }
        // re-register what runs here (a restarted etcd, a lost write): idempotent
        for ct in self.containers()? {
            if ct.state.status != Status::Running {
                continue;
            }
            for e in &ct.endpoints {
                if overlays.iter().any(|o| o.id == e.network_id)
                    && !endpoints.iter().any(|r| r.ip == e.ip && r.network_id == e.network_id)
                {
                    self.register_endpoint(&ct, e).await?;
                }
            }
        }
        let nets: HashMap<String, u32> = overlays.iter().map(|n| (n.id.clone(), n.net_id)).collect();
        let remote: Vec<RemoteEndpoint> =
            endpoints.into_iter().filter(|e| e.node_id != c.node_id && nets.contains_key(&e.network_id)).collect();
        let ids: Vec<(RemoteEndpoint, u32)> = remote
            .into_iter()
            .map(|e| {
                let id = nets[&e.network_id];
                (e, id)
            })
            .collect();
        self.apply_remote_endpoints(&ids, &c.node_id)?;
        self.apply_peer_nodes(&c.node_id, &nodes, &alive)?;
        drop(_g);
        self.refresh_node_addrs().await?;
        Ok(())
    }

    /// Programs remote endpoints (ifindex 0, their node's underlay address) and removes the
    /// remote ones no longer listed. Local endpoints are never touched here.
    fn apply_remote_endpoints(&self, remote: &[(RemoteEndpoint, u32)], _me: &str) -> Result<()> {
        let mut dp = self.dp.lock().unwrap();
        let want: HashSet<u32> = remote.iter().map(|(e, _)| ip_be(e.ip)).collect();
        let stale: Vec<u32> = dp
            .endpoints
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(k, v)| v.ifindex == 0 && !want.contains(k))
            .map(|(k, _)| k)
            .collect();
        for k in stale {
            ignore_missing(dp.endpoints.remove(&k))?;
        }
        for (e, net_id) in remote {
            let entry = DpEndpoint {
                ifindex: 0,
                net_id: *net_id,
                mac: e.mac,
                host_mac: [0; 6],
                node_ip: u32::from(e.node_addr),
                flags: 0,
            };
            if dp.endpoints.get(&ip_be(e.ip), 0).ok() != Some(entry) {
                dp.endpoints.insert(ip_be(e.ip), entry, 0)?;
            }
        }
        Ok(())
    }

    /// Makes PEER_NODES the live peers that registered an uplink MAC (they run native mesh
    /// routing), or nothing when this node does not: the routing mesh reaches their tasks
    /// natively when they share the uplink's L2 segment (the datapath checks that per packet
    /// with a FIB lookup) and accepts native mesh frames only from them.
    fn apply_peer_nodes(&self, me: &str, nodes: &[(String, NodeRecord)], alive: &[(String, Liveness)]) -> Result<()> {
        let alive = if self.node.uplink_mac.is_some() { alive } else { &[] };
        let want: HashMap<[u8; 6], u32> = alive
            .iter()
            .filter_map(|(key, l)| {
                let id = key.rsplit('/').next()?;
                let node = nodes.iter().find(|(_, n)| n.id == id && id != me)?;
                Some((l.uplink_mac?, u32::from(node.1.addr)))
            })
            .filter(|(mac, _)| Some(*mac) != self.node.uplink_mac)
            .collect();
        let mut dp = self.dp.lock().unwrap();
        let have: Vec<(MacKey, u32)> = dp.peer_nodes.iter().filter_map(|r| r.ok()).collect();
        for (k, v) in &have {
            if want.get(&k.mac) != Some(v) {
                ignore_missing(dp.peer_nodes.remove(k))?;
            }
        }
        for (mac, ip) in want {
            let k = MacKey { mac, _pad: [0; 2] };
            if !have.contains(&(k, ip)) {
                dp.peer_nodes.insert(k, ip, 0)?;
            }
        }
        Ok(())
    }

    /// Answers join requests on the advertise address of a manager: the token is the credential.
    async fn join_server(self: Arc<Self>) {
        let c = self.cluster.clone().expect("cluster");
        let Some(m) = c.member() else { return };
        let d = self.clone();
        let app = Router::new()
            .route(
                "/join",
                post(move |Json(body): Json<Value>| {
                    let d = d.clone();
                    async move {
                        let c = d.cluster.clone().expect("cluster");
                        let token = body["Token"].as_str().unwrap_or_default().to_string();
                        let info: Option<ClusterInfo> = c.etcd.get(&cluster::key_cluster()).await.ok().flatten();
                        match info {
                            Some(i) if token_matches(&token, &i.worker_token) => {
                                Ok(Json(json!({"ClusterID": i.id, "Role": "worker"})))
                            }
                            Some(i) if token_matches(&token, &i.manager_token) => {
                                Ok(Json(json!({"ClusterID": i.id, "Role": "manager"})))
                            }
                            Some(_) => Err(ApiError {
                                status: axum::http::StatusCode::FORBIDDEN,
                                message: "invalid join token".into(),
                            }),
                            None => Err(ApiError::bad_request("this manager's swarm no longer exists")),
                        }
                    }
                }),
            )
            // a join request is one short JSON object: anything larger is refused (413) unread
            .layer(axum::extract::DefaultBodyLimit::max(JOIN_BODY_LIMIT));
        // only a manager listens: a worker has no TCP listener at all, and a demoted manager closes
        // its join port
        loop {
            if is_manager(&c).await == Some(true) {
                match tokio::net::TcpListener::bind((m.advertise, cluster::JOIN_PORT)).await {
                    Ok(l) => {
                        let c2 = c.clone();
                        let demoted = async move {
                            while is_manager(&c2).await != Some(false) {
                                tokio::time::sleep(Duration::from_secs(2)).await;
                            }
                            info!("no longer a manager: closing the join port");
                        };
                        let _ = axum::serve(l, app.clone()).with_graceful_shutdown(demoted).await;
                    }
                    Err(e) => warn!("join listener on {}:{}: {e}", m.advertise, cluster::JOIN_PORT),
                }
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    pub fn is_overlay(&self, network_id: &str) -> bool {
        self.store.get::<NetworkRecord>(store::OVERLAYS, network_id).ok().flatten().is_some()
    }

    pub(super) async fn overlay_create(&self, req: NetworkCreate, all: &[NetworkRecord]) -> ApiResult<NetworkRecord> {
        let c = self.require_manager().await?;
        let overlays: Vec<NetworkRecord> = c.etcd.list(cluster::NETWORKS).await?.into_iter().map(|(_, n)| n).collect();
        if overlays.iter().any(|n| n.name == req.name) {
            return Err(ApiError::conflict(format!("network with name {} already exists", req.name)));
        }
        let mut existing: Vec<(String, ipnetwork::Ipv4Network)> =
            overlays.iter().filter_map(|n| n.ipam.as_ref().map(|i| (n.name.clone(), i.config().subnet))).collect();
        existing.extend(all.iter().filter_map(|n| n.ipam.as_ref().map(|i| (n.name.clone(), i.config().subnet))));
        let cfg = ipam::pool_config(
            req.subnet.as_deref(),
            req.gateway.as_deref(),
            req.ip_range.as_deref(),
            &existing,
            &ipam::overlay_default_pools(),
        )
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let used: HashSet<u32> = overlays.iter().map(|n| n.vni).collect();
        let mut vni = cluster::FIRST_VNI + 1;
        loop {
            if !used.contains(&vni) && c.etcd.create(&cluster::key_vni(vni), &json!({"network": req.name})).await? {
                break;
            }
            vni += 1;
        }
        let rec = NetworkRecord {
            id: names::new_id(),
            name: req.name.clone(),
            driver: Driver::Overlay,
            created: chrono::Utc::now(),
            internal: req.internal,
            net_id: vni,
            ipam: Some(Allocator::new(cfg)),
            labels: req.labels,
            vni,
        };
        c.etcd.put(&cluster::key_network(&rec.id), &rec).await?;
        self.store.put(store::OVERLAYS, &rec.id, &rec)?;
        bridge::setup_network(&self.nl, &self.dp, &rec).await?;
        c.sync_now.notify_waiters();
        Ok(rec)
    }

    pub(super) async fn overlay_remove(&self, net: &NetworkRecord) -> ApiResult<()> {
        let c = self.require_manager().await?;
        let users: Vec<String> = c
            .etcd
            .list::<RemoteEndpoint>(cluster::ENDPOINTS)
            .await?
            .into_iter()
            .filter(|(_, e)| e.network_id == net.id)
            .map(|(_, e)| e.container_name)
            .collect();
        if !users.is_empty() {
            return Err(ApiError::conflict(format!(
                "error while removing network: network {} has active endpoints ({})",
                net.name,
                users.join(", ")
            )));
        }
        c.etcd.delete(&cluster::key_network(&net.id)).await?;
        c.etcd.delete(&cluster::key_vni(net.vni)).await?;
        c.etcd.delete_prefix(&format!("/netbee/ipam/{}/", net.id)).await?;
        bridge::teardown_network(&self.nl, &self.dp, net).await?;
        self.store.delete(store::OVERLAYS, &net.id)?;
        c.sync_now.notify_waiters();
        Ok(())
    }

    /// Leases an address on an overlay, cluster-wide (create-if-absent in etcd).
    pub(super) async fn overlay_allocate(
        &self,
        net: &NetworkRecord,
        want: Option<Ipv4Addr>,
        owner: &str,
    ) -> ApiResult<Ipv4Addr> {
        let (c, _) = self.member()?;
        let ipam = net.ipam.as_ref().ok_or_else(|| ApiError::bad_request("network has no addresses"))?;
        if let Some(ip) = want {
            let mut probe = ipam.clone();
            probe.reserve(ip).map_err(|e| ApiError::bad_request(e.to_string()))?;
            if !c.etcd.create(&cluster::key_ipam(&net.id, ip), &json!({"owner": owner})).await? {
                return Err(ApiError::conflict(format!("address {ip} is already in use on network {}", net.name)));
            }
            return Ok(ip);
        }
        let taken: HashSet<String> = c
            .etcd
            .keys(&format!("/netbee/ipam/{}/", net.id))
            .await?
            .into_iter()
            .filter_map(|k| k.rsplit('/').next().map(String::from))
            .collect();
        let mut probe = ipam.clone();
        for t in &taken {
            if let Ok(ip) = t.parse() {
                let _ = probe.reserve(ip);
            }
        }
        loop {
            let ip = probe.allocate().map_err(|e| ApiError::bad_request(e.to_string()))?;
            if c.etcd.create(&cluster::key_ipam(&net.id, ip), &json!({"owner": owner})).await? {
                return Ok(ip);
            }
        }
    }

    pub(super) async fn overlay_release(&self, network_id: &str, ip: Ipv4Addr) -> Result<()> {
        let Some(c) = &self.cluster else { return Ok(()) };
        c.etcd.delete(&cluster::key_endpoint(network_id, ip)).await?;
        c.etcd.delete(&cluster::key_ipam(network_id, ip)).await
    }

    pub(super) async fn register_endpoint(&self, ct: &ContainerRecord, e: &Endpoint) -> Result<()> {
        let c = self.cluster.as_ref().ok_or_else(|| anyhow!("no cluster"))?;
        let m = c.member().ok_or_else(|| anyhow!("not in a swarm"))?;
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

    /// The `Node` section of a container's inspect output when in a swarm.
    pub fn node_info(&self) -> Option<Value> {
        let c = self.cluster.as_ref()?;
        let m = c.member()?;
        Some(json!({ "ID": c.node_id, "Name": c.hostname, "Addr": m.advertise.to_string() }))
    }
}

/// Whether this node is a manager of the swarm; None while etcd cannot tell (a transient error
/// neither opens nor closes the join port).
async fn is_manager(c: &ClusterState) -> Option<bool> {
    let me: Option<NodeRecord> = c.etcd.get(&cluster::key_node(&c.node_id)).await.ok()?;
    Some(me.is_some_and(|n| n.role == Role::Manager))
}

/// The largest join request body the join port reads.
const JOIN_BODY_LIMIT: usize = 4096;

/// Whether a presented join token is `real`, in time that depends only on the real token's length
/// (public: every token has the same format), never on where the two differ, so timing the
/// answers of the join port cannot recover a token byte by byte.
fn token_matches(presented: &str, real: &str) -> bool {
    let (p, r) = (presented.as_bytes(), real.as_bytes());
    let mut diff = p.len() ^ r.len();
    for (i, &b) in r.iter().enumerate() {
        diff |= usize::from(p.get(i).copied().unwrap_or(0) ^ b);
        diff = std::hint::black_box(diff);
    }
    diff == 0 && !r.is_empty()
}

/// The join handshake with a manager: POST /join {Token} on its advertise address.
async fn join_request(ip: Ipv4Addr, port: u16, token: &str) -> Result<Value> {
    use http_body_util::{BodyExt as _, Full};
    let stream = tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect((ip, port)))
        .await
        .map_err(|_| anyhow!("could not reach the manager at {ip}:{port}: timed out"))?
        .with_context(|| format!("could not reach the manager at {ip}:{port}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let body = serde_json::to_vec(&json!({ "Token": token }))?;
    let req = hyper::Request::post(format!("http://{ip}:{port}/join"))
        .header("host", format!("{ip}:{port}"))
        .header("content-type", "application/json")
        .body(Full::new(hyper::body::Bytes::from(body)))?;
    let resp = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req))
        .await
        .map_err(|_| anyhow!("the manager at {ip}:{port} did not answer"))??;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if !status.is_success() {
        return Err(anyhow!(
            "the manager at {ip}:{port} refused to join: {}",
            v["message"].as_str().unwrap_or("unknown error")
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::token_matches;

    #[test]
    fn join_tokens_match_only_exactly() {
        let real = "SWMTKN-1-abcdefghijklmnopqrstuvwxy-0123456789abcdef012345678";
        assert!(token_matches(real, real));
        assert!(!token_matches("", real));
        assert!(!token_matches(&real[..real.len() - 1], real), "a prefix");
        assert!(!token_matches(&format!("{real}0"), real), "an extension");
        assert!(!token_matches(&real.replace('8', "9"), real), "last byte differs");
        assert!(!token_matches(&real.replacen('S', "T", 1), real), "first byte differs");
        assert!(!token_matches("", ""), "an empty token never matches");
    }
}
