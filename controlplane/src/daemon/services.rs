//! Replicated services: their records and tasks in the shared store (etcd in a swarm, the embedded
//! store on a lone node), the scheduler (on the elected leader) that places tasks, the agent (on
//! every node) that runs its tasks as containers, and the load-balancer programming that gives
//! every service a VIP per network and a routing-mesh port on every node.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::Ipv4Addr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anyhow::{Result, anyhow};
use chrono::{DateTime, Utc};
use netbee_abi::{Backend, BackendKey, FrontendKey, Service, svc_flags};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::{info, warn};

use super::{Daemon, ports::proto_num};
use crate::{
    api::{ApiError, ApiResult, ContainerCreate},
    cluster::{self, Availability, NodeRecord, Role},
    datapath::{ignore_missing, ip_be},
    model::{Driver, NetworkRecord, Status},
    names,
    portspec::Proto,
    store,
};

/// Datapath service ids of published container ports stay below this; services use the rest.
pub const SERVICE_ID_BASE: u32 = 32768;
const MAX_HISTORY: usize = 4;
/// How long a task leaving the load balancer keeps serving its established connections.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServicePort {
    pub published: u16,
    pub target: u16,
    pub proto: Proto,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub name: String,
    pub replicas: u64,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    /// Network ids; the first carries routing-mesh traffic.
    pub networks: Vec<String>,
    pub ports: Vec<ServicePort>,
    pub constraints: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Vip {
    pub network_id: String,
    pub ip: Ipv4Addr,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub id: String,
    pub spec: ServiceSpec,
    pub vips: Vec<Vip>,
    pub created: DateTime<Utc>,
    pub updated: DateTime<Utc>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    Assigned,
    Starting,
    Running,
    Shutdown,
    Failed,
    Orphaned,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TaskRecord {
    pub id: String,
    pub service_id: String,
    pub service_name: String,
    pub slot: u64,
    pub node_id: String,
    /// true = should run; false = should be (or has been) shut down.
    pub desired_running: bool,
    pub state: TaskState,
    pub message: String,
    pub container_id: Option<String>,
    pub addrs: Vec<(String, Ipv4Addr)>,
    pub created: DateTime<Utc>,
    pub updated: DateTime<Utc>,
}

/// A placement constraint: `node.labels.K==V`, `node.hostname!=H`, `node.role==manager`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Constraint {
    pub field: String,
    pub equal: bool,
    pub value: String,
}

pub fn parse_constraint(s: &str) -> Result<Constraint, String> {
    let (lhs, rhs, equal) = if let Some((l, r)) = s.split_once("==") {
        (l, r, true)
    } else if let Some((l, r)) = s.split_once("!=") {
        (l, r, false)
    } else {
        return Err(format!(
            "invalid constraint {s:?}: expected node.labels.KEY==VALUE, node.hostname==NAME or node.role==manager|worker (or !=)"
        ));
    };
    let (lhs, rhs) = (lhs.trim(), rhs.trim());
    // Another '=' makes the text ambiguous ("node.hostname!==m", "node.labels.k= ==v"), and a
    // key or value with one could not be written back as a constraint; docker refuses it too.
    if lhs.contains('=') || rhs.contains('=') {
        return Err(format!("invalid constraint {s:?}: '=' may appear only in the operator (== or !=)"));
    }
    let valid_field = lhs == "node.hostname"
        || lhs == "node.role"
        || lhs == "node.id"
        || lhs.strip_prefix("node.labels.").is_some_and(|k| !k.is_empty());
    if !valid_field {
        return Err(format!("invalid constraint {s:?}: unknown field {lhs:?}"));
    }
    if rhs.is_empty() {
        return Err(format!("invalid constraint {s:?}: missing value"));
    }
    if lhs == "node.role" && rhs != "manager" && rhs != "worker" {
        return Err(format!("invalid constraint {s:?}: node.role is manager or worker"));
    }
    Ok(Constraint { field: lhs.to_string(), equal, value: rhs.to_string() })
}

pub fn node_matches(n: &NodeRecord, cs: &[Constraint]) -> bool {
    cs.iter().all(|c| {
        let actual = match c.field.as_str() {
            "node.hostname" => Some(n.hostname.clone()),
            "node.id" => Some(n.id.clone()),
            "node.role" => Some(if n.role == Role::Manager { "manager".into() } else { "worker".into() }),
            f => f.strip_prefix("node.labels.").and_then(|k| n.labels.get(k).cloned()),
        };
        (actual.as_deref() == Some(c.value.as_str())) == c.equal
    })
}

/// Parses `P:T[/udp]` (and `T` alone is refused: the routing mesh needs a published port).
pub fn parse_service_port(s: &str) -> Result<ServicePort, String> {
    let (ports, proto) = match s.rsplit_once('/') {
        Some((p, pr)) => (p, pr.parse::<Proto>().map_err(|_| format!("invalid protocol in {s:?}: use tcp or udp"))?),
        None => (s, Proto::Tcp),
    };
    let (p, t) =
        ports.split_once(':').ok_or_else(|| format!("invalid publish {s:?}: expected PUBLISHED:TARGET[/udp]"))?;
    let parse = |x: &str| -> Result<u16, String> {
        match x.parse::<u32>() {
            Ok(v) if (1..=65535).contains(&v) => Ok(v as u16),
            _ => Err(format!("invalid port {x:?} in {s:?}: must be 1-65535")),
        }
    };
    Ok(ServicePort { published: parse(p)?, target: parse(t)?, proto })
}

/// Places one task: the eligible node running the fewest of this service's tasks, then the
/// fewest tasks overall, then by id (deterministic).
pub fn pick_node<'a>(
    eligible: &'a [NodeRecord],
    per_service: &HashMap<String, usize>,
    total: &HashMap<String, usize>,
) -> Option<&'a NodeRecord> {
    eligible.iter().min_by_key(|n| {
        (per_service.get(&n.id).copied().unwrap_or(0), total.get(&n.id).copied().unwrap_or(0), n.id.clone())
    })
}

impl Daemon {
    fn in_swarm(&self) -> bool {
        self.cluster.as_ref().is_some_and(|c| c.member().is_some())
    }

    fn my_node_id(&self) -> String {
        match &self.cluster {
            Some(c) if c.member().is_some() => c.node_id.clone(),
            _ => "local".into(),
        }
    }

    async fn shared_list<T: serde::de::DeserializeOwned + Clone + Send + Sync + 'static>(
        &self,
        kind: &str,
    ) -> Result<Vec<T>> {
        if self.in_swarm() {
            let c = self.cluster.as_ref().unwrap();
            return Ok(c.etcd.list(&format!("/netbee/{kind}/")).await?.into_iter().map(|(_, v)| v).collect());
        }
        self.store.list(if kind == "services" { store::SERVICES } else { store::TASKS })
    }

    async fn shared_put<T: Serialize>(&self, kind: &str, id: &str, v: &T) -> Result<()> {
        if self.in_swarm() {
            return self.cluster.as_ref().unwrap().etcd.put(&format!("/netbee/{kind}/{id}"), v).await;
        }
        self.store.put(if kind == "services" { store::SERVICES } else { store::TASKS }, id, v)
    }

    async fn shared_delete(&self, kind: &str, id: &str) -> Result<()> {
        if self.in_swarm() {
            return self.cluster.as_ref().unwrap().etcd.delete(&format!("/netbee/{kind}/{id}")).await;
        }
        self.store.delete(if kind == "services" { store::SERVICES } else { store::TASKS }, id)
    }

    /// Nodes that can run tasks, with liveness. A lone node is its own cluster.
    async fn cluster_nodes(&self) -> Result<(Vec<NodeRecord>, HashSet<String>)> {
        if !self.in_swarm() {
            let me = NodeRecord {
                id: "local".into(),
                hostname: self.cluster.as_ref().map(|c| c.hostname.clone()).unwrap_or_else(|| "local".into()),
                addr: self.node.uplink_ip,
                role: Role::Manager,
                availability: Availability::Active,
                labels: Default::default(),
                created: Utc::now(),
            };
            return Ok((vec![me], ["local".to_string()].into()));
        }
        let c = self.cluster.as_ref().unwrap();
        let nodes: Vec<NodeRecord> = c.etcd.list(cluster::NODES).await?.into_iter().map(|(_, n)| n).collect();
        let alive: HashSet<String> = c
            .etcd
            .keys(cluster::ALIVE)
            .await?
            .into_iter()
            .filter_map(|k| k.rsplit('/').next().map(String::from))
            .collect();
        Ok((nodes, alive))
    }

    fn is_scheduler(&self) -> bool {
        match &self.cluster {
            Some(c) if c.member().is_some() => c.is_leader.load(Ordering::Relaxed),
            _ => true,
        }
    }

    async fn find_service(&self, key: &str) -> ApiResult<ServiceRecord> {
        let all: Vec<ServiceRecord> = self.shared_list("services").await?;
        if let Some(s) = all.iter().find(|s| s.id == key || s.spec.name == key) {
            return Ok(s.clone());
        }
        let m: Vec<&ServiceRecord> = all.iter().filter(|s| !key.is_empty() && s.id.starts_with(key)).collect();
        match m.len() {
            1 => Ok(m[0].clone()),
            0 => Err(ApiError::not_found(format!("service {key} not found"))),
            _ => Err(ApiError::bad_request(format!("service {key} is ambiguous"))),
        }
    }

    async fn require_service_manager(&self) -> ApiResult<()> {
        if let Some(c) = &self.cluster
            && c.member().is_some()
        {
            let me: Option<NodeRecord> = c.etcd.get(&cluster::key_node(&c.node_id)).await?;
            if !me.is_some_and(|n| n.role == Role::Manager) {
                return Err(ApiError::bad_request(
                    "This node is not a swarm manager. Worker nodes can't be used to view or modify cluster state.",
                ));
            }
        }
        Ok(())
    }

    pub async fn service_create(&self, v: &Value) -> ApiResult<ServiceRecord> {
        self.require_service_manager().await?;
        let _g = self.svc_op.lock().await;
        let name = v["Name"].as_str().unwrap_or_default().to_string();
        names::validate_network_name(&name)
            .map_err(|e| ApiError::bad_request(e.replace("network name", "service name")))?;
        let replicas = parse_replicas(&v["Replicas"]).map_err(ApiError::bad_request)?.unwrap_or(1);
        let cmd: Vec<String> = strings(&v["Cmd"]);
        if cmd.is_empty() {
            return Err(ApiError::bad_request("no command specified for the service"));
        }
        let env = strings(&v["Env"]);
        let ports = strings(&v["Publish"])
            .iter()
            .map(|p| parse_service_port(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ApiError::bad_request)?;
        let constraints = strings(&v["Constraints"]);
        for c in &constraints {
            parse_constraint(c).map_err(ApiError::bad_request)?;
        }
        let all: Vec<ServiceRecord> = self.shared_list("services").await?;
        if all.iter().any(|s| s.spec.name == name) {
            return Err(ApiError::conflict(format!("service {name} already exists")));
        }
        self.check_ports_free(&ports, &all, None)?;
        let mut networks = Vec::new();
        for n in strings(&v["Networks"]) {
            let net = self.find_network(&n)?;
            if self.in_swarm() && net.driver != Driver::Overlay {
                return Err(ApiError::bad_request(format!(
                    "network {} cannot be used with services: only overlay networks span the swarm",
                    net.name
                )));
            }
            if !net.carries_containers() {
                return Err(ApiError::bad_request(format!("network {} cannot carry services", net.name)));
            }
            networks.push(net.id);
        }
        if networks.is_empty() {
            let default = if self.in_swarm() { self.ingress_network().await? } else { self.find_network("bridge")? };
            networks.push(default.id);
        }
        let id = names::new_id()[..25].to_string();
        let mut vips = Vec::new();
        for nid in &networks {
            let net = self.find_network(nid)?;
            let ip = if net.driver == Driver::Overlay {
                self.overlay_allocate(&net, None, &format!("vip-{id}")).await?
            } else {
                let _gl = self.op.lock().await;
                let mut net = self.find_network(nid)?;
                let ip = net.ipam.as_mut().unwrap().allocate().map_err(|e| ApiError::bad_request(e.to_string()))?;
                self.put_network(&net)?;
                ip
            };
            vips.push(Vip { network_id: nid.clone(), ip });
        }
        let rec = ServiceRecord {
            id: id.clone(),
            spec: ServiceSpec { name, replicas, cmd, env, networks, ports, constraints },
            vips,
            created: Utc::now(),
            updated: Utc::now(),
        };
        self.shared_put("services", &id, &rec).await?;
        self.services_changed.notify_waiters();
        Ok(rec)
    }

    fn check_ports_free(&self, ports: &[ServicePort], all: &[ServiceRecord], except: Option<&str>) -> ApiResult<()> {
        for p in ports {
            if let Some(o) = all
                .iter()
                .filter(|s| Some(s.id.as_str()) != except)
                .find(|s| s.spec.ports.iter().any(|q| q.published == p.published && q.proto == p.proto))
            {
                return Err(ApiError::conflict(format!(
                    "port {}/{} is already published by service {}",
                    p.published, p.proto, o.spec.name
                )));
            }
            if let Some(c) = self.containers()?.iter().find(|c| {
                c.state.status == Status::Running
                    && c.ports.iter().any(|b| b.binding.host_port == p.published && b.binding.proto == p.proto)
            }) {
                return Err(ApiError::conflict(format!(
                    "port {}/{} is already published by container {} on this node",
                    p.published, p.proto, c.name
                )));
            }
        }
        Ok(())
    }

    /// The swarm's `ingress` overlay: services without a network publish through it.
    async fn ingress_network(&self) -> ApiResult<NetworkRecord> {
        if let Ok(n) = self.find_network("ingress") {
            return Ok(n);
        }
        let req =
            crate::api::NetworkCreate { name: "ingress".into(), driver: Some("overlay".into()), ..Default::default() };
        let all = self.networks()?;
        let _g = self.op.lock().await;
        self.overlay_create(req, &all).await
    }

    pub async fn service_update(&self, key: &str, v: &Value) -> ApiResult<ServiceRecord> {
        self.require_service_manager().await?;
        let _g = self.svc_op.lock().await;
        let mut s = self.find_service(key).await?;
        if let Some(r) = parse_replicas(&v["Replicas"]).map_err(ApiError::bad_request)? {
            s.spec.replicas = r;
        }
        let add = strings(&v["PublishAdd"])
            .iter()
            .map(|p| parse_service_port(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ApiError::bad_request)?;
        let all: Vec<ServiceRecord> = self.shared_list("services").await?;
        self.check_ports_free(&add, &all, Some(&s.id))?;
        for p in add {
            if !s.spec.ports.contains(&p) {
                s.spec.ports.push(p);
            }
        }
        for r in strings(&v["PublishRm"]) {
            let (port, proto) = match r.split_once('/') {
                Some((p, pr)) => (
                    p.to_string(),
                    pr.parse::<Proto>().map_err(|_| ApiError::bad_request(format!("invalid protocol in {r:?}")))?,
                ),
                None => (r.clone(), Proto::Tcp),
            };
            let port: u16 = port
                .split(':')
                .next()
                .unwrap_or("")
                .parse()
                .map_err(|_| ApiError::bad_request(format!("invalid port {r:?}")))?;
            let before = s.spec.ports.len();
            s.spec.ports.retain(|p| !(p.published == port && p.proto == proto));
            if before == s.spec.ports.len() {
                return Err(ApiError::bad_request(format!("service {} does not publish {r}", s.spec.name)));
            }
        }
        let env_add = strings(&v["EnvAdd"]);
        let env_changed = !env_add.is_empty();
        for e in env_add {
            let k = e.split('=').next().unwrap_or("").to_string();
            s.spec.env.retain(|x| x.split('=').next() != Some(k.as_str()));
            s.spec.env.push(e);
        }
        s.updated = Utc::now();
        self.shared_put("services", &s.id, &s).await?;
        if env_changed {
            // a new environment needs new tasks: replace them one slot at a time through the scheduler
            for mut t in self
                .shared_list::<TaskRecord>("tasks")
                .await?
                .into_iter()
                .filter(|t| t.service_id == s.id && t.desired_running)
            {
                t.desired_running = false;
                t.message = "updated".into();
                self.shared_put("tasks", &t.id, &t).await?;
            }
        }
        self.services_changed.notify_waiters();
        Ok(s)
    }

    pub async fn service_remove(&self, key: &str) -> ApiResult<()> {
        self.require_service_manager().await?;
        let _g = self.svc_op.lock().await;
        let s = self.find_service(key).await?;
        self.shared_delete("services", &s.id).await?;
        for mut t in self.shared_list::<TaskRecord>("tasks").await?.into_iter().filter(|t| t.service_id == s.id) {
            t.desired_running = false;
            self.shared_put("tasks", &t.id, &t).await?;
        }
        for v in &s.vips {
            let _ = self.release_ip(&v.network_id, v.ip).await;
        }
        self.services_changed.notify_waiters();
        Ok(())
    }

    pub async fn service_list(&self) -> ApiResult<Vec<Value>> {
        let services: Vec<ServiceRecord> = self.shared_list("services").await?;
        let tasks: Vec<TaskRecord> = self.shared_list("tasks").await?;
        let mut out: Vec<Value> = services
            .iter()
            .map(|s| {
                let running = tasks.iter().filter(|t| t.service_id == s.id && t.desired_running && t.state == TaskState::Running).count();
                json!({
                    "ID": s.id, "Name": s.spec.name, "Mode": "replicated",
                    "Replicas": format!("{running}/{}", s.spec.replicas),
                    "Running": running, "Desired": s.spec.replicas,
                    "Command": s.spec.cmd.join(" "),
                    "Ports": s.spec.ports.iter().map(|p| format!("*:{}->{}/{}", p.published, p.target, p.proto)).collect::<Vec<_>>().join(", "),
                })
            })
            .collect();
        out.sort_by(|a, b| a["Name"].as_str().cmp(&b["Name"].as_str()));
        Ok(out)
    }

    pub async fn service_inspect(&self, key: &str) -> ApiResult<Value> {
        let s = self.find_service(key).await?;
        let nets = self.networks()?;
        let vips: Vec<Value> = s
            .vips
            .iter()
            .map(|v| {
                let net = nets.iter().find(|n| n.id == v.network_id);
                let prefix = net.and_then(|n| n.ipam.as_ref()).map(|i| i.config().subnet.prefix()).unwrap_or(32);
                json!({ "NetworkID": v.network_id, "NetworkName": net.map(|n| n.name.clone()), "Addr": format!("{}/{}", v.ip, prefix) })
            })
            .collect();
        Ok(json!({
            "ID": s.id,
            "CreatedAt": s.created, "UpdatedAt": s.updated,
            "Spec": {
                "Name": s.spec.name,
                "Mode": { "Replicated": { "Replicas": s.spec.replicas } },
                "TaskTemplate": {
                    "ContainerSpec": { "Command": s.spec.cmd, "Env": s.spec.env },
                    "Placement": { "Constraints": s.spec.constraints },
                    "Networks": s.spec.networks.iter().map(|n| json!({"Target": n})).collect::<Vec<_>>(),
                },
                "EndpointSpec": { "Mode": "vip", "Ports": s.spec.ports.iter().map(|p| json!({
                    "Protocol": p.proto, "TargetPort": p.target, "PublishedPort": p.published, "PublishMode": "ingress",
                })).collect::<Vec<_>>() },
            },
            "Endpoint": { "VirtualIPs": vips },
        }))
    }

    pub async fn service_tasks(&self, key: &str) -> ApiResult<Vec<Value>> {
        let s = self.find_service(key).await?;
        let (nodes, _) = self.cluster_nodes().await?;
        let mut tasks: Vec<TaskRecord> =
            self.shared_list::<TaskRecord>("tasks").await?.into_iter().filter(|t| t.service_id == s.id).collect();
        tasks.sort_by_key(|a| (a.slot, !a.desired_running, std::cmp::Reverse(a.created)));
        Ok(tasks
            .iter()
            .map(|t| {
                let node = nodes.iter().find(|n| n.id == t.node_id).map(|n| n.hostname.clone()).unwrap_or_else(|| t.node_id.clone());
                json!({
                    "ID": t.id, "Name": format!("{}.{}", t.service_name, t.slot), "Slot": t.slot, "Node": node,
                    "DesiredState": if t.desired_running { "Running" } else { "Shutdown" },
                    "CurrentState": title(t.state), "Since": t.updated, "Error": t.message,
                    "Addresses": t.addrs.iter().map(|(n, ip)| json!({"NetworkID": n, "Addr": ip.to_string()})).collect::<Vec<_>>(),
                })
            })
            .collect())
    }

    /// The scheduler, the node agent and the load-balancer programming, twice a second and on
    /// every change. Each pass recomputes from the shared store, so a missed event costs at most
    /// one period.
    pub async fn service_loop(self: Arc<Self>) {
        loop {
            if let Err(e) = self.service_pass().await {
                warn!("services: {e:#}");
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = self.services_changed.notified() => {}
            }
        }
    }

    async fn service_pass(self: &Arc<Self>) -> Result<()> {
        if self.in_swarm()
            || !self.store.list::<ServiceRecord>(store::SERVICES)?.is_empty()
            || !self.store.list::<TaskRecord>(store::TASKS)?.is_empty()
        {
            let services: Vec<ServiceRecord> = self.shared_list("services").await?;
            let (nodes, alive) = self.cluster_nodes().await?;
            if self.is_scheduler() {
                self.schedule(&services, &nodes, &alive).await?;
            }
            self.run_my_tasks(&services).await?;
            let tasks: Vec<TaskRecord> = self.shared_list("tasks").await?;
            self.program_services(&services, &tasks, &alive, &nodes)?;
            self.update_dns(&services, &tasks).await;
        } else {
            self.program_services(&[], &[], &HashSet::new(), &[])?;
            self.update_dns(&[], &[]).await;
        }
        Ok(())
    }

    async fn schedule(&self, services: &[ServiceRecord], nodes: &[NodeRecord], alive: &HashSet<String>) -> Result<()> {
        let mut tasks: Vec<TaskRecord> = self.shared_list("tasks").await?;
        let now = Utc::now();
        // tasks whose service is gone, whose node is gone/down/drained, or that failed: shut down
        for t in tasks.iter_mut().filter(|t| t.desired_running) {
            let node = nodes.iter().find(|n| n.id == t.node_id);
            let reason = if !services.iter().any(|s| s.id == t.service_id) {
                Some("service removed")
            } else if node.is_none() {
                Some("node removed")
            } else if !alive.contains(&t.node_id) {
                Some("node is down")
            } else if node.is_some_and(|n| n.availability == Availability::Drain) {
                Some("node drained")
            } else if t.state == TaskState::Failed {
                Some("task failed")
            } else {
                None
            };
            if let Some(r) = reason {
                t.desired_running = false;
                if !alive.contains(&t.node_id) && t.state == TaskState::Running {
                    t.state = TaskState::Orphaned;
                }
                t.message = r.to_string();
                t.updated = now;
                self.shared_put("tasks", &t.id, &*t).await?;
            }
        }
        let mut per_node_total: HashMap<String, usize> = HashMap::new();
        for t in tasks.iter().filter(|t| t.desired_running) {
            *per_node_total.entry(t.node_id.clone()).or_default() += 1;
        }
        for s in services {
            let constraints: Vec<Constraint> =
                s.spec.constraints.iter().filter_map(|c| parse_constraint(c).ok()).collect();
            let eligible: Vec<NodeRecord> = nodes
                .iter()
                .filter(|n| {
                    alive.contains(&n.id) && n.availability == Availability::Active && node_matches(n, &constraints)
                })
                .cloned()
                .collect();
            let mut per_service: HashMap<String, usize> = HashMap::new();
            let mut slots: HashSet<u64> = HashSet::new();
            for t in tasks.iter_mut().filter(|t| t.service_id == s.id && t.desired_running) {
                if t.slot > s.spec.replicas || slots.contains(&t.slot) {
                    t.desired_running = false;
                    t.message = "scaled down".into();
                    t.updated = now;
                    self.shared_put("tasks", &t.id, &*t).await?;
                    continue;
                }
                slots.insert(t.slot);
                *per_service.entry(t.node_id.clone()).or_default() += 1;
            }
            for slot in 1..=s.spec.replicas {
                if slots.contains(&slot) {
                    continue;
                }
                let Some(node) = pick_node(&eligible, &per_service, &per_node_total) else {
                    break;
                };
                let t = TaskRecord {
                    id: names::new_id()[..25].to_string(),
                    service_id: s.id.clone(),
                    service_name: s.spec.name.clone(),
                    slot,
                    node_id: node.id.clone(),
                    desired_running: true,
                    state: TaskState::Assigned,
                    message: String::new(),
                    container_id: None,
                    addrs: vec![],
                    created: now,
                    updated: now,
                };
                *per_service.entry(node.id.clone()).or_default() += 1;
                *per_node_total.entry(node.id.clone()).or_default() += 1;
                self.shared_put("tasks", &t.id, &t).await?;
                tasks.push(t);
            }
        }
        // keep a short history of shut-down tasks per slot (service ps shows it)
        let mut by_slot: BTreeMap<(String, u64), Vec<&TaskRecord>> = BTreeMap::new();
        for t in tasks.iter().filter(|t| {
            !t.desired_running && matches!(t.state, TaskState::Shutdown | TaskState::Failed | TaskState::Orphaned)
        }) {
            by_slot.entry((t.service_id.clone(), t.slot)).or_default().push(t);
        }
        for (_, mut old) in by_slot {
            old.sort_by_key(|t| std::cmp::Reverse(t.updated));
            for t in old.iter().skip(MAX_HISTORY) {
                self.shared_delete("tasks", &t.id).await?;
            }
        }
        for t in tasks.iter().filter(|t| !t.desired_running && !services.iter().any(|s| s.id == t.service_id)) {
            if matches!(t.state, TaskState::Shutdown | TaskState::Failed) {
                self.shared_delete("tasks", &t.id).await?;
            }
        }
        Ok(())
    }

    /// The node agent: start this node's assigned tasks, drain and stop the ones told to stop,
    /// report the ones that died.
    async fn run_my_tasks(self: &Arc<Self>, services: &[ServiceRecord]) -> Result<()> {
        let me = self.my_node_id();
        let tasks: Vec<TaskRecord> =
            self.shared_list::<TaskRecord>("tasks").await?.into_iter().filter(|t| t.node_id == me).collect();
        let containers = self.containers()?;
        let by_task: HashMap<String, &crate::model::ContainerRecord> = containers
            .iter()
            .filter_map(|c| c.config.labels.get("com.netbee.task.id").map(|t| (t.clone(), c)))
            .collect();
        for mut t in tasks {
            let ct = by_task.get(&t.id).copied();
            if t.desired_running {
                match (t.state, ct) {
                    (TaskState::Assigned, None) => {
                        let Some(s) = services.iter().find(|s| s.id == t.service_id) else { continue };
                        t.state = TaskState::Starting;
                        self.shared_put("tasks", &t.id, &t).await?;
                        match self.start_task(s, &t).await {
                            Ok((cid, addrs)) => {
                                t.container_id = Some(cid);
                                t.addrs = addrs;
                                t.state = TaskState::Running;
                            }
                            Err(e) => {
                                t.state = TaskState::Failed;
                                t.message = e.to_string();
                            }
                        }
                        t.updated = Utc::now();
                        self.shared_put("tasks", &t.id, &t).await?;
                    }
                    (TaskState::Running | TaskState::Starting, Some(c)) if c.state.status != Status::Running => {
                        t.state = TaskState::Failed;
                        t.message = format!("task exited with code {}", c.state.exit_code);
                        t.updated = Utc::now();
                        self.shared_put("tasks", &t.id, &t).await?;
                        let _ = self.container_remove(&c.id, true).await;
                    }
                    (TaskState::Running | TaskState::Starting, None) => {
                        t.state = TaskState::Failed;
                        t.message = "task container disappeared".into();
                        t.updated = Utc::now();
                        self.shared_put("tasks", &t.id, &t).await?;
                    }
                    _ => {}
                }
            } else if let Some(c) = ct {
                // out of every load balancer already (desired shutdown); let its connections end
                if !self.draining.lock().unwrap().insert(t.id.clone()) {
                    continue;
                }
                let d = self.clone();
                let cid = c.id.clone();
                let pid = c.state.pid;
                tokio::spawn(async move {
                    // every node's load balancer drops it within a pass (0.5 s) of the change
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
                    while established_connections(pid) > 0 && tokio::time::Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    let _ = d.container_stop(&cid, 10).await;
                    let _ = d.container_remove(&cid, true).await;
                    t.state = TaskState::Shutdown;
                    t.updated = Utc::now();
                    if let Err(e) = d.shared_put("tasks", &t.id, &t).await {
                        warn!(task = %t.id, "recording shutdown: {e:#}");
                    }
                    d.draining.lock().unwrap().remove(&t.id);
                });
            } else if matches!(
                t.state,
                TaskState::Running | TaskState::Starting | TaskState::Assigned | TaskState::Orphaned
            ) {
                t.state = TaskState::Shutdown;
                t.updated = Utc::now();
                self.shared_put("tasks", &t.id, &t).await?;
            }
        }
        Ok(())
    }

    async fn start_task(
        self: &Arc<Self>,
        s: &ServiceRecord,
        t: &TaskRecord,
    ) -> Result<(String, Vec<(String, Ipv4Addr)>)> {
        let name = format!("{}.{}.{}", s.spec.name, t.slot, &t.id[..12]);
        let mut labels = BTreeMap::new();
        labels.insert("com.netbee.task.id".to_string(), t.id.clone());
        labels.insert("com.netbee.service.id".to_string(), s.id.clone());
        labels.insert("com.netbee.service.name".to_string(), s.spec.name.clone());
        let req = ContainerCreate {
            name: Some(name),
            cmd: s.spec.cmd.clone(),
            env: s.spec.env.clone(),
            network: s.spec.networks.first().cloned(),
            labels,
            ..Default::default()
        };
        let c = self.container_create(req).await.map_err(|e| anyhow!("{e}"))?;
        for extra in s.spec.networks.iter().skip(1) {
            let req = crate::api::NetworkConnect { container: c.id.clone(), ..Default::default() };
            self.network_connect(extra, req).await.map_err(|e| anyhow!("{e}"))?;
        }
        if let Err(e) = self.container_start(&c.id).await {
            let _ = self.container_remove(&c.id, true).await;
            return Err(anyhow!("{e}"));
        }
        let c = self.find_container(&c.id).map_err(|e| anyhow!("{e}"))?;
        // a task joins the load balancers only once it accepts connections on its target ports
        let targets: Vec<u16> = s.spec.ports.iter().filter(|p| p.proto == Proto::Tcp).map(|p| p.target).collect();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !targets.iter().all(|p| listening(c.state.pid, *p)) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        info!(service = %s.spec.name, slot = t.slot, container = %c.name, "task running");
        Ok((c.id.clone(), c.endpoints.iter().map(|e| (e.network_id.clone(), e.ip)).collect()))
    }

    /// Programs every service's VIP frontends (one per network) and routing-mesh frontends
    /// (published ports on every node address) with the running tasks as backends, ordered by
    /// slot so the rotation is the same on every pass.
    fn program_services(
        &self,
        services: &[ServiceRecord],
        tasks: &[TaskRecord],
        alive: &HashSet<String>,
        nodes: &[NodeRecord],
    ) -> Result<()> {
        let nets = self.networks()?;
        let me = self.my_node_id();
        let mut dp = self.dp.lock().unwrap();
        // A task's address takes part only once this node delivers it to the task's node: the
        // lowest free address goes to the next task, so a replacement can get the address of a
        // lost node's task before the endpoint sync moves it, and would send its connections to
        // the old owner meanwhile.
        let delivered = |t: &TaskRecord, ip: Ipv4Addr| -> bool {
            let Ok(ep) = dp.endpoints.get(&ip_be(ip), 0) else { return false };
            if t.node_id == me || t.node_id == "local" {
                ep.ifindex != 0
            } else {
                ep.ifindex == 0 && nodes.iter().any(|n| n.id == t.node_id && u32::from(n.addr) == ep.node_ip)
            }
        };
        let mut want: Vec<(FrontendKey, u32, Vec<Backend>, u32)> = Vec::new();
        for s in services {
            let mut live: Vec<&TaskRecord> = tasks
                .iter()
                .filter(|t| t.service_id == s.id && t.desired_running && t.state == TaskState::Running)
                .filter(|t| alive.contains(&t.node_id) || t.node_id == "local")
                .collect();
            live.sort_by_key(|t| t.slot);
            let mesh_net = s.spec.networks.first();
            for p in &s.spec.ports {
                let backends: Vec<Backend> = live
                    .iter()
                    .filter_map(|t| t.addrs.iter().find(|(n, _)| Some(n) == mesh_net).map(|(_, ip)| (*t, *ip)))
                    .filter(|(t, ip)| delivered(t, *ip))
                    .map(|(_, ip)| Backend { addr: ip_be(ip), port: p.target.to_be(), _pad: 0 })
                    .collect();
                let key = FrontendKey { addr: 0, port: p.published.to_be(), proto: proto_num(p.proto), _pad: 0 };
                want.push((key, 0, backends, 0));
            }
            // a VIP balances every port (port 0 = keep the client's port), TCP and UDP, inside
            // its own network only
            for v in &s.vips {
                let net_id = nets.iter().find(|n| n.id == v.network_id).map(|n| n.net_id).unwrap_or(0);
                let backends: Vec<Backend> = live
                    .iter()
                    .filter_map(|t| t.addrs.iter().find(|(n, _)| *n == v.network_id).map(|(_, ip)| (*t, *ip)))
                    .filter(|(t, ip)| delivered(t, *ip))
                    .map(|(_, ip)| Backend { addr: ip_be(ip), port: 0, _pad: 0 })
                    .collect();
                for proto in [Proto::Tcp, Proto::Udp] {
                    let key = FrontendKey { addr: ip_be(v.ip), port: 0, proto: proto_num(proto), _pad: 0 };
                    want.push((key, net_id, backends.clone(), svc_flags::VIP));
                }
            }
        }
        let want_vips: HashMap<u32, u32> = services
            .iter()
            .flat_map(|s| s.vips.iter())
            .filter_map(|v| nets.iter().find(|n| n.id == v.network_id).map(|n| (ip_be(v.ip), n.net_id)))
            .collect();
        let have_vips: Vec<u32> = dp.vips.keys().filter_map(|k| k.ok()).collect();
        for k in have_vips.iter().filter(|k| !want_vips.contains_key(k)) {
            ignore_missing(dp.vips.remove(k))?;
        }
        for (k, v) in &want_vips {
            dp.vips.insert(*k, *v, 0)?;
        }
        // ids: keep the one a frontend already has (its round-robin cursor), else a free one
        let existing: HashMap<FrontendKey, Service> =
            dp.frontends.iter().filter_map(|r| r.ok()).filter(|(_, v)| v.id >= SERVICE_ID_BASE).collect();
        let mut used: HashSet<u32> = HashSet::new();
        let mut ids: Vec<u32> = Vec::new();
        for (k, ..) in &want {
            let id = existing.get(k).map(|s| s.id).filter(|id| !used.contains(id));
            ids.push(id.unwrap_or(0));
            if let Some(id) = id {
                used.insert(id);
            }
        }
        let mut next = SERVICE_ID_BASE;
        for id in ids.iter_mut().filter(|id| **id == 0) {
            while used.contains(&next) || existing.values().any(|s| s.id == next) {
                next += 1;
            }
            *id = next;
            used.insert(next);
        }
        for ((key, net_id, backends, flags), id) in want.iter().zip(&ids) {
            let old_count = existing.get(key).map(|s| s.count).unwrap_or(0);
            let count = backends.len() as u32;
            // grow: slots first, then the count; shrink: the count first, then the slots
            for (i, b) in backends.iter().enumerate() {
                dp.backends.insert(BackendKey { service: *id, slot: i as u32 + 1 }, *b, 0)?;
            }
            let svc = Service { id: *id, count, net_id: *net_id, flags: *flags };
            if existing.get(key) != Some(&svc) {
                dp.frontends.insert(*key, svc, 0)?;
            }
            for slot in count + 1..=old_count.max(count) {
                ignore_missing(dp.backends.remove(&BackendKey { service: *id, slot }))?;
            }
        }
        let want_keys: HashSet<FrontendKey> = want.iter().map(|(k, ..)| *k).collect();
        for (k, s) in &existing {
            if !want_keys.contains(k) {
                ignore_missing(dp.frontends.remove(k))?;
                for slot in 1..=s.count.max(1) {
                    ignore_missing(dp.backends.remove(&BackendKey { service: s.id, slot }))?;
                }
            }
        }
        Ok(())
    }
}

/// Whether a TCP socket listens on `port` in the container's network namespace.
fn listening(pid: i32, port: u16) -> bool {
    let Ok(t) = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")) else { return false };
    let want = format!("{port:04X}");
    t.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(3) == Some(&"0A") && f.get(1).and_then(|a| a.rsplit(':').next()) == Some(want.as_str())
    })
}

/// Established TCP connections in the container's network namespace (via its init's /proc).
fn established_connections(pid: i32) -> usize {
    if pid <= 0 {
        return 0;
    }
    let Ok(t) = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")) else { return 0 };
    t.lines().skip(1).filter(|l| l.split_whitespace().nth(3) == Some("01")).count()
}

fn title(s: TaskState) -> &'static str {
    match s {
        TaskState::Assigned => "Assigned",
        TaskState::Starting => "Starting",
        TaskState::Running => "Running",
        TaskState::Shutdown => "Shutdown",
        TaskState::Failed => "Failed",
        TaskState::Orphaned => "Orphaned",
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().filter_map(|x| x.as_str().map(String::from)).collect()
}

fn parse_replicas(v: &Value) -> Result<Option<u64>, String> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => match n.as_i64() {
            Some(i) if i >= 0 => Ok(Some(i as u64)),
            _ => Err(format!("invalid replicas value {n}: must be a non-negative integer")),
        },
        Value::String(s) => match s.trim().parse::<i64>() {
            Ok(i) if i >= 0 => Ok(Some(i as u64)),
            _ => Err(format!("invalid replicas value {s:?}: must be a non-negative integer")),
        },
        other => Err(format!("invalid replicas value {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, labels: &[(&str, &str)]) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            hostname: format!("h{id}"),
            addr: Ipv4Addr::LOCALHOST,
            role: Role::Worker,
            availability: Availability::Active,
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            created: Utc::now(),
        }
    }

    #[test]
    fn constraints_parse_and_match() {
        let c = parse_constraint("node.labels.zone==a").unwrap();
        assert!(node_matches(&node("1", &[("zone", "a")]), std::slice::from_ref(&c)));
        assert!(!node_matches(&node("1", &[("zone", "b")]), &[c]));
        let c = parse_constraint("node.hostname!=h2").unwrap();
        assert!(node_matches(&node("1", &[]), std::slice::from_ref(&c)));
        assert!(!node_matches(&node("2", &[]), &[c]));
        assert!(node_matches(&node("1", &[]), &[parse_constraint("node.role==worker").unwrap()]));
        // the last two: found by the constraints fuzz target (ambiguous '=')
        for bad in [
            "zone=a",
            "node.labels.==a",
            "node.color==red",
            "node.hostname==",
            "node.role==boss",
            "node.hostname!= =m",
            "node.labels.k= ==v",
        ] {
            assert!(parse_constraint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn service_ports() {
        assert_eq!(
            parse_service_port("80:8080").unwrap(),
            ServicePort { published: 80, target: 8080, proto: Proto::Tcp }
        );
        assert_eq!(parse_service_port("53:53/udp").unwrap().proto, Proto::Udp);
        for bad in ["80", "0:80", "80:70000", "a:b", "80:80/sctp"] {
            assert!(parse_service_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn replicas() {
        assert_eq!(parse_replicas(&json!(3)).unwrap(), Some(3));
        assert_eq!(parse_replicas(&json!("0")).unwrap(), Some(0));
        assert_eq!(parse_replicas(&Value::Null).unwrap(), None);
        assert!(parse_replicas(&json!(-1)).is_err());
        assert!(parse_replicas(&json!("-2")).is_err());
        assert!(parse_replicas(&json!("x")).is_err());
    }

    #[test]
    fn spreads_evenly_then_by_load() {
        let nodes = vec![node("a", &[]), node("b", &[]), node("c", &[])];
        let mut per_service = HashMap::new();
        let mut total: HashMap<String, usize> = HashMap::new();
        total.insert("a".into(), 5);
        let mut placed = Vec::new();
        for _ in 0..6 {
            let n = pick_node(&nodes, &per_service, &total).unwrap().id.clone();
            *per_service.entry(n.clone()).or_insert(0) += 1;
            *total.entry(n.clone()).or_insert(0) += 1;
            placed.push(n);
        }
        for id in ["a", "b", "c"] {
            assert_eq!(placed.iter().filter(|p| *p == id).count(), 2, "{placed:?}");
        }
        assert_ne!(placed[0], "a", "the busy node is used last among equals");
        assert!(pick_node(&[], &per_service, &total).is_none());
    }
}
