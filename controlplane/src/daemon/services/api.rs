//! The service API: create, update, rm, ls, inspect, and the task list `service ps` shows.
use chrono::Utc;

use crate::{
    api::{
        self, ApiError, ApiResult, EndpointPortConfig, EndpointSpec, EndpointVirtualIp, ErrorKind,
        NetworkAttachmentConfig, Replicas, Service, ServiceCreateRequest, ServiceEndpoint, ServiceMode,
        ServiceModeReplicated, ServiceSummary, ServiceUpdateRequest, Task, TaskAddress, TaskSpec,
        TaskSpecContainerSpec, TaskSpecPlacement,
    },
    cluster,
    daemon::Daemon,
    images::HOST_IMAGE,
    model::{HostPorts, NetworkRecord, ServicePort, ServiceRecord, ServiceSpec, Status, TaskRecord, TaskState, Vip},
    names,
    network::{self, Scope},
    portspec::Proto,
    store::Shared,
};

use super::scheduler::parse_constraint;

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

/// Service names are unique in the swarm.
fn check_name_free(name: &str, all: &[ServiceRecord]) -> ApiResult<()> {
    if all.iter().any(|s| s.spec.name == name) {
        return Err(ApiError::conflict(format!("service {name} already exists")));
    }
    Ok(())
}

impl Daemon {
    pub async fn service_create(&self, req: ServiceCreateRequest) -> ApiResult<ServiceRecord> {
        self.require_service_manager().await?;
        let _g = self.services.op.lock().await;
        let ServiceCreateRequest { name, image, replicas, publish, networks: wanted, constraints, env, cmd } = req;
        names::validate_network_name(&name)
            .map_err(|e| ApiError::bad_request(e.replace("network name", "service name")))?;
        let replicas = parse_replicas(replicas.as_ref()).map_err(ApiError::bad_request)?.unwrap_or(1);
        if image.is_empty() {
            return Err(ApiError::bad_request("no image specified for the service"));
        }
        // an image's command is known only where its tasks pull it; `host` has none
        if image == HOST_IMAGE && cmd.is_empty() {
            return Err(ApiError::bad_request("no command specified for the service"));
        }
        let ports = publish
            .iter()
            .map(|p| parse_service_port(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ApiError::bad_request)?;
        for c in &constraints {
            parse_constraint(c).map_err(ApiError::bad_request)?;
        }
        // refuse early what is already taken; the decision is made again under the guard below
        let all: Vec<ServiceRecord> = self.shared().list::<ServiceRecord>().await?;
        check_name_free(&name, &all)?;
        self.check_ports_free(&ports, &all, &self.other_nodes_host_ports().await?, None)?;
        let mut networks = Vec::new();
        for n in wanted {
            let net = {
                let _g = self.op.lock().await;
                self.find_network_or_adopt(&n).await?
            };
            if self.in_swarm() && net.scope() != Scope::Swarm {
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
            let ip = {
                let _g = self.op.lock().await;
                net.driver().allocate(&self.net_cx(), &net, None, &format!("vip-{id}")).await?
            };
            vips.push(Vip { network_id: nid.clone(), ip });
        }
        let rec = ServiceRecord {
            id: id.clone(),
            spec: ServiceSpec { name, image, replicas, cmd, env, networks, ports, constraints },
            vips,
            created: Utc::now(),
            updated: Utc::now(),
        };
        // name and ports are decided from the whole set and committed only if no other manager
        // committed meanwhile; a loser gives its addresses back
        let committed = loop {
            let seen = self.shared().guard_revision(cluster::SERVICES_GUARD).await?;
            let all: Vec<ServiceRecord> = self.shared().list::<ServiceRecord>().await?;
            let other_nodes = self.other_nodes_host_ports().await?;
            if let Err(e) = check_name_free(&rec.spec.name, &all)
                .and_then(|_| self.check_ports_free(&rec.spec.ports, &all, &other_nodes, None))
            {
                break Err(e);
            }
            match self.shared().put_guarded(cluster::SERVICES_GUARD, seen, &rec).await {
                Ok(true) => break Ok(()),
                Ok(false) => continue,
                Err(e) => break Err(e.into()),
            }
        };
        if let Err(e) = committed {
            for v in &rec.vips {
                let _ = self.release_ip(&v.network_id, v.ip).await;
            }
            return Err(e);
        }
        // its name resolves to its VIPs when the command returns
        self.note_service(&rec.id, Some(&rec)).await;
        self.services.changed.notify_waiters();
        Ok(rec)
    }

    /// Other nodes' published host ports (a swarm's; none on a lone node).
    pub(in crate::daemon) async fn other_nodes_host_ports(&self) -> ApiResult<Vec<HostPorts>> {
        let (Shared::Cluster(etcd), Some(cluster)) = (self.shared(), &self.cluster) else { return Ok(Vec::new()) };
        let mine = cluster::key_host_ports(&cluster.node_id);
        Ok(etcd
            .list::<HostPorts>(cluster::HOST_PORTS)
            .await?
            .into_iter()
            .filter(|(k, _)| *k != mine)
            .map(|(_, h)| h)
            .collect())
    }

    /// Refuses published ports that a service (other than `except`) or a container on any node
    /// (`other_nodes`: their claims; this node's own containers are read here) already publishes.
    pub(in crate::daemon) fn check_ports_free(
        &self,
        ports: &[ServicePort],
        all: &[ServiceRecord],
        other_nodes: &[HostPorts],
        except: Option<&str>,
    ) -> ApiResult<()> {
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
            for n in other_nodes {
                if let Some(c) = n.ports.iter().find(|c| c.port == p.published && c.proto == p.proto) {
                    return Err(ApiError::conflict(format!(
                        "port {}/{} is already published by container {} on node {}",
                        p.published, p.proto, c.container, n.hostname
                    )));
                }
            }
        }
        Ok(())
    }

    /// The swarm's `ingress` overlay: services without a network publish through it. Created by
    /// the first such service; when managers race to create it, one wins and the others use it.
    pub(in crate::daemon) async fn ingress_network(&self) -> ApiResult<NetworkRecord> {
        if let Ok(n) = self.find_network("ingress") {
            return Ok(n);
        }
        let req =
            api::NetworkCreateRequest { name: "ingress".into(), driver: Some("overlay".into()), ..Default::default() };
        let _g = self.op.lock().await;
        match self.network_create_locked(req).await {
            Err(e) if e.kind == ErrorKind::Conflict => {
                network::adopt_swarm_network(&self.net_cx(), "ingress").await?.ok_or(e)
            }
            r => r,
        }
    }

    pub async fn service_update(&self, key: &str, req: ServiceUpdateRequest) -> ApiResult<ServiceRecord> {
        self.require_service_manager().await?;
        let _g = self.services.op.lock().await;
        let mut s = self.find_service(key).await?;
        if let Some(r) = parse_replicas(req.replicas.as_ref()).map_err(ApiError::bad_request)? {
            s.spec.replicas = r;
        }
        let add = req
            .publish_add
            .iter()
            .map(|p| parse_service_port(p))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ApiError::bad_request)?;
        let all: Vec<ServiceRecord> = self.shared().list::<ServiceRecord>().await?;
        self.check_ports_free(&add, &all, &self.other_nodes_host_ports().await?, Some(&s.id))?;
        for p in &add {
            if !s.spec.ports.contains(p) {
                s.spec.ports.push(p.clone());
            }
        }
        for r in req.publish_rm {
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
        let env_add = req.env_add;
        let env_changed = !env_add.is_empty();
        for e in env_add {
            let k = e.split('=').next().unwrap_or("").to_string();
            s.spec.env.retain(|x| x.split('=').next() != Some(k.as_str()));
            s.spec.env.push(e);
        }
        s.updated = Utc::now();
        if add.is_empty() {
            self.shared().put(&s).await?;
        } else {
            // new published ports are decided under the services guard, as at create
            loop {
                let seen = self.shared().guard_revision(cluster::SERVICES_GUARD).await?;
                let all: Vec<ServiceRecord> = self.shared().list::<ServiceRecord>().await?;
                self.check_ports_free(&add, &all, &self.other_nodes_host_ports().await?, Some(&s.id))?;
                if self.shared().put_guarded(cluster::SERVICES_GUARD, seen, &s).await? {
                    break;
                }
            }
        }
        if env_changed {
            // a new environment needs new tasks: replace them one slot at a time through the scheduler
            for mut t in self
                .shared()
                .list::<TaskRecord>()
                .await?
                .into_iter()
                .filter(|t| t.service_id == s.id && t.desired_running)
            {
                t.desired_running = false;
                t.message = "updated".into();
                self.shared().put(&t).await?;
            }
        }
        self.services.changed.notify_waiters();
        Ok(s)
    }

    pub async fn service_remove(&self, key: &str) -> ApiResult<()> {
        self.require_service_manager().await?;
        let _g = self.services.op.lock().await;
        let s = self.find_service(key).await?;
        self.shared().delete::<ServiceRecord>(&s.id).await?;
        for mut t in self.shared().list::<TaskRecord>().await?.into_iter().filter(|t| t.service_id == s.id) {
            t.desired_running = false;
            self.shared().put(&t).await?;
        }
        for v in &s.vips {
            let _ = self.release_ip(&v.network_id, v.ip).await;
        }
        // its name and `tasks.` name go when the command returns
        self.note_service(&s.id, None).await;
        self.services.changed.notify_waiters();
        Ok(())
    }

    pub async fn service_list(&self) -> ApiResult<Vec<ServiceSummary>> {
        let services: Vec<ServiceRecord> = self.shared().list::<ServiceRecord>().await?;
        let tasks: Vec<TaskRecord> = self.shared().list::<TaskRecord>().await?;
        let mut out: Vec<ServiceSummary> = services
            .iter()
            .map(|s| {
                let running = tasks
                    .iter()
                    .filter(|t| t.service_id == s.id && t.desired_running && t.state == TaskState::Running)
                    .count() as u64;
                ServiceSummary {
                    id: s.id.clone(),
                    name: s.spec.name.clone(),
                    mode: "replicated".into(),
                    replicas: format!("{running}/{}", s.spec.replicas),
                    running,
                    desired: s.spec.replicas,
                    command: s.spec.cmd.join(" "),
                    ports: s
                        .spec
                        .ports
                        .iter()
                        .map(|p| format!("*:{}->{}/{}", p.published, p.target, p.proto))
                        .collect::<Vec<_>>()
                        .join(", "),
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub async fn service_inspect(&self, key: &str) -> ApiResult<Service> {
        let s = self.find_service(key).await?;
        let nets = self.networks()?;
        let virtual_ips: Vec<EndpointVirtualIp> = s
            .vips
            .iter()
            .map(|v| {
                let net = nets.iter().find(|n| n.id == v.network_id);
                let prefix = net.and_then(|n| n.ipam.as_ref()).map(|i| i.config().subnet.prefix()).unwrap_or(32);
                EndpointVirtualIp {
                    network_id: v.network_id.clone(),
                    network_name: net.map(|n| n.name.clone()),
                    addr: format!("{}/{}", v.ip, prefix),
                }
            })
            .collect();
        Ok(Service {
            id: s.id,
            created_at: s.created,
            updated_at: s.updated,
            spec: api::ServiceSpec {
                name: s.spec.name,
                mode: ServiceMode { replicated: ServiceModeReplicated { replicas: s.spec.replicas } },
                task_template: TaskSpec {
                    container_spec: TaskSpecContainerSpec { image: s.spec.image, command: s.spec.cmd, env: s.spec.env },
                    placement: TaskSpecPlacement { constraints: s.spec.constraints },
                    networks: s.spec.networks.into_iter().map(|target| NetworkAttachmentConfig { target }).collect(),
                },
                endpoint_spec: EndpointSpec {
                    mode: "vip".into(),
                    ports: s
                        .spec
                        .ports
                        .iter()
                        .map(|p| EndpointPortConfig {
                            protocol: p.proto,
                            target_port: p.target,
                            published_port: p.published,
                            publish_mode: "ingress".into(),
                        })
                        .collect(),
                },
            },
            endpoint: ServiceEndpoint { virtual_ips },
        })
    }

    pub async fn service_tasks(&self, key: &str) -> ApiResult<Vec<Task>> {
        let s = self.find_service(key).await?;
        let (nodes, _) = self.cluster_nodes().await?;
        let mut tasks: Vec<TaskRecord> =
            self.shared().list::<TaskRecord>().await?.into_iter().filter(|t| t.service_id == s.id).collect();
        tasks.sort_by_key(|a| (a.slot, !a.desired_running, std::cmp::Reverse(a.created)));
        Ok(tasks
            .iter()
            .map(|t| {
                let node = nodes
                    .iter()
                    .find(|n| n.id == t.node_id)
                    .map(|n| n.hostname.clone())
                    .unwrap_or_else(|| t.node_id.clone());
                Task {
                    id: t.id.clone(),
                    name: format!("{}.{}", t.service_name, t.slot),
                    slot: t.slot,
                    node,
                    desired_state: if t.desired_running { "Running" } else { "Shutdown" }.into(),
                    current_state: title(t.state).into(),
                    since: t.updated,
                    error: t.message.clone(),
                    addresses: t
                        .addrs
                        .iter()
                        .map(|(n, ip)| TaskAddress { network_id: n.clone(), addr: ip.to_string() })
                        .collect(),
                }
            })
            .collect())
    }
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

/// The most replicas a service may have. Every replica is a task record in the shared store and a
/// container on some node; a typo (`--replicas 100000`, `scale web=99999999999`) must be refused at
/// once rather than make the scheduler write records for minutes.
pub const MAX_REPLICAS: u64 = 10_000;

/// A request's replica count: absent is None, anything but an integer from 0 to `MAX_REPLICAS`
/// an error.
fn parse_replicas(v: Option<&Replicas>) -> Result<Option<u64>, String> {
    match v.map(Replicas::count).transpose()? {
        Some(n) if n > MAX_REPLICAS => {
            Err(format!("invalid replicas value {n}: a service has at most {MAX_REPLICAS} replicas"))
        }
        n => Ok(n),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

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

    fn replicas_of(v: Value) -> Result<Option<u64>, String> {
        let req: ServiceUpdateRequest = serde_json::from_value(json!({ "Replicas": v })).unwrap();
        parse_replicas(req.replicas.as_ref())
    }

    #[test]
    fn replicas() {
        assert_eq!(replicas_of(json!(3)).unwrap(), Some(3));
        assert_eq!(replicas_of(json!("0")).unwrap(), Some(0));
        assert_eq!(replicas_of(json!(" 4 ")).unwrap(), Some(4));
        assert_eq!(replicas_of(Value::Null).unwrap(), None);
        assert_eq!(parse_replicas(None).unwrap(), None);
        assert!(replicas_of(json!(-1)).is_err());
        assert!(replicas_of(json!(1.5)).is_err());
        assert!(replicas_of(json!(u64::MAX)).is_err());
        assert!(replicas_of(json!("-2")).is_err());
        assert!(replicas_of(json!("x")).is_err());
        assert_eq!(replicas_of(json!(MAX_REPLICAS)).unwrap(), Some(MAX_REPLICAS));
        let e = replicas_of(json!(100_000)).unwrap_err();
        assert!(e.contains("at most 10000 replicas"), "{e}");
        assert!(replicas_of(json!("99999999999")).is_err());
    }
}
